import CStrata
#if canImport(Glibc)
import Glibc
#endif

/// Starting helper programs (fusermount3, mount, runc) with exact control
/// over which descriptors they inherit, which Foundation's Process does not give.
public enum Spawn {
    /// Starts `path` with `args` (argv[0] included), the current environment
    /// plus `env`, keeping `inherit` open in the child. Returns the pid.
    public static func start(_ path: String, _ args: [String], env: [String: String] = [:],
                             inherit: [Int32] = [], stdio: (Int32, Int32, Int32)? = nil,
                             cwd: String? = nil) throws(SysError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // A working directory for the child alone: relative paths in its
        // arguments (overlay's short lower links) resolve there, with no
        // shell to quote them for.
        if let cwd { _ = strata_spawn_addchdir(&actions, cwd) }
        for fd in inherit {
            // dup2 onto itself clears FD_CLOEXEC in the child.
            posix_spawn_file_actions_adddup2(&actions, fd, fd)
        }
        if let (i, o, e) = stdio {
            posix_spawn_file_actions_adddup2(&actions, i, 0)
            posix_spawn_file_actions_adddup2(&actions, o, 1)
            posix_spawn_file_actions_adddup2(&actions, e, 2)
        }
        // The child gets stdio and `inherit`, nothing else. Descriptors other
        // threads opened without O_CLOEXEC (Foundation's file reads do) would
        // otherwise live on in a long-running child: a daemon holding a file
        // of another mount keeps that mount busy, and its umount fails.
        // (glibc ignores closing a descriptor that is not open.)
        let kept = Set(inherit)
        let top = inherit.max() ?? 2
        if top > 2 {
            for fd in 3..<top where !kept.contains(fd) { posix_spawn_file_actions_addclose(&actions, fd) }
        }
        strata_spawn_addclosefrom(&actions, max(3, top + 1))
        var environment: [String: String] = [:]
        var i = 0
        while let p = environ[i] {
            let s = String(cString: p)
            if let eq = s.firstIndex(of: "=") { environment[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            i += 1
        }
        for (k, v) in env { environment[k] = v }
        let envStrings = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let rc = withCStrings(args) { argv in
            withCStrings(envStrings) { envp in
                posix_spawn(&pid, path, &actions, nil, argv, envp)
            }
        }
        if rc != 0 { throw SysError(.init(rawValue: rc), "spawn", path) }
        return pid
    }

    /// Waits for `pid`; returns its exit status (128+signal when killed).
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        if status & 0x7f == 0 { return (status >> 8) & 0xff }
        return 128 + (status & 0x7f)
    }

    /// Runs a program to completion; returns its exit status.
    public static func run(_ path: String, _ args: [String], env: [String: String] = [:], cwd: String? = nil) throws(SysError) -> Int32 {
        wait(try start(path, args, env: env, cwd: cwd))
    }

    /// Finds an executable in PATH (and the sbin directories mount helpers
    /// live in, which a minimal PATH may lack).
    public static func which(_ name: String) -> String? {
        let path = (getenv("PATH").map { String(cString: $0) } ?? "") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") {
            let p = "\(dir)/\(name)"
            if access(p, X_OK) == 0 { return p }
        }
        return nil
    }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeMutableBufferPointer { buf in
        // Never empty: it holds at least the terminating nil.
        guard let base = buf.baseAddress else { preconditionFailure("empty argv") }
        return body(base)
    }
}
