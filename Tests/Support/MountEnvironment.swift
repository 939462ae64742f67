import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Whether tests that mount can run, and where the `strata` binary is.
public enum MountEnvironment {
    /// Root and /dev/fuse: what a real mount needs.
    public static var available: Bool { geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0 }

    /// In CI (or with STRATA_REQUIRE_MOUNT=1) skipping a mount test is a failure.
    public static var required: Bool {
        ProcessInfo.processInfo.environment["STRATA_REQUIRE_MOUNT"] == "1"
            || ProcessInfo.processInfo.environment["CI"] == "true"
    }

    /// The package root, found from this file's location.
    public static var packageRoot: String {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }

    /// The shared image fixtures (busybox-l3 as a docker-save and an OCI
    /// archive): `STRATA_FIXTURES`, which scripts/test.sh sets, else
    /// `../shared/fixtures` beside the checkout.
    public static var fixtures: String {
        if let f = ProcessInfo.processInfo.environment["STRATA_FIXTURES"], !f.isEmpty { return f }
        return "\(packageRoot)/../shared/fixtures"
    }

    /// The built `strata` executable (STRATA_BIN overrides).
    public static var binary: String {
        if let b = ProcessInfo.processInfo.environment["STRATA_BIN"] { return b }
        for config in ["debug", "release"] {
            let p = "\(packageRoot)/.build/\(config)/strata"
            if access(p, X_OK) == 0 { return p }
        }
        return "\(packageRoot)/.build/debug/strata"
    }

    /// The lean mount program beside `binary`.
    public static var overlayBinary: String {
        let b = binary
        return String(b[..<(b.lastIndex(of: "/") ?? b.startIndex)]) + "/strata-overlay"
    }
}

/// A scratch directory removed at the end of the test, whatever happened.
public final class TempDir: @unchecked Sendable {
    public let path: String
    public init(_ tag: String = "strata-test") {
        var template = Array("/tmp/\(tag).XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = p.map { String(cString: $0) } ?? "/tmp/\(tag).\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        if p == nil { mkdir(path, 0o755) }
        chmod(path, 0o755)
    }
    public func sub(_ name: String) -> String {
        let p = "\(path)/\(name)"
        mkdir(p, 0o755)
        return p
    }
    /// Binds the directory on itself as a private mount. Other tests start
    /// podman, runc and `unshare -m`, whose new mount namespaces copy every
    /// mount; below a shared parent those copies are slaves of ours, and a
    /// plain umount2 of our mount fails with EBUSY whenever a copy is in
    /// use over there (the kernel's propagate_mount_busy). Below a private
    /// parent nothing propagates, so a test that asserts umount succeeds
    /// depends on no one else's mounts. `deinit` detaches the bind.
    @discardableResult
    public func isolate() -> Bool {
        mount(path, path, nil, UInt(MS_BIND), nil) == 0
            && mount(nil, path, nil, UInt(MS_PRIVATE), nil) == 0
    }
    deinit {
        // Never leave anything mounted below us; then remove the tree.
        for m in mountPoints(under: path).reversed() { umount2(m, Int32(MNT_DETACH)) }
        _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", path])
    }
}

/// Runs a program and captures its exit status, standard output and error.
/// Uses posix_spawn and waitpid directly: Foundation's Process waits on
/// SIGCHLD machinery that does not mix with the daemons tests start.
public func runProgram(_ path: String, _ args: [String], env: [String: String] = [:]) -> (status: Int32, stdout: String, stderr: String) {
    var o: [Int32] = [-1, -1], e: [Int32] = [-1, -1]
    guard pipe(&o) == 0, pipe(&e) == 0 else { return (127, "", "pipe failed") }
    for fd in o + e { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    let devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)
    defer { close(devnull) }
    let pid: pid_t
    do {
        pid = try Spawn.start(path, [path] + args, env: env, stdio: (devnull, o[1], e[1]))
    } catch {
        for fd in o + e { close(fd) }
        return (127, "", "\(error)")
    }
    close(o[1]); close(e[1])
    let out = Locked<[UInt8]>([])
    let done = DispatchSemaphore(value: 0)
    let outFD = o[0]
    Thread { out.withLock { $0 = drain(outFD) }; done.signal() }.start()
    let err = drain(e[0])
    done.wait()
    close(o[0]); close(e[0])
    let status = Spawn.wait(pid)
    return (status, String(decoding: out.withLock { $0 }, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

private func drain(_ fd: Int32) -> [UInt8] {
    var data: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buf, buf.count)
        if n > 0 { data += buf[0..<n] } else if n < 0 && errno == EINTR { continue } else { break }
    }
    return data
}

/// Polls until `cond` holds or `seconds` pass.
public func waitFor(_ seconds: Double, _ cond: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if cond() { return true }
        usleep(20_000)
    }
    return cond()
}

public func isMountPoint(_ path: String) -> Bool { strata_is_mount_root(path) != 0 }

/// /proc/self/mounts, whole. Foundation reads a /proc file as one page
/// (its size says 0), so with the mounts of parallel tests, or of a
/// machine running containers, the table it returns is cut short.
public func mountTable() -> String { readSmallFile("/proc/self/mounts", limit: 64 << 20) ?? "" }

/// The mount points at or below `path`, in the table's order (parents first).
public func mountPoints(under path: String) -> [String] {
    mountTable().split(separator: "\n").compactMap { line in
        let f = line.split(separator: " ")
        guard f.count > 1, f[1] == path || f[1].hasPrefix(path + "/") else { return nil }
        return String(f[1])
    }
}

/// Waits up to `seconds` for a child to end (after `signal`, when given),
/// then kills it: a test's daemons never outlive its teardown.
public func endChild(_ pid: pid_t, signal: Int32? = nil, seconds: Double) {
    guard pid > 0 else { return }
    if let signal { kill(pid, signal) }
    var st: Int32 = 0
    if waitFor(seconds, { waitpid(pid, &st, WNOHANG) == pid }) { return }
    kill(pid, SIGKILL)
    waitpid(pid, &st, 0)
}

/// A plain umount2 of `path`, retried while it is EBUSY for up to `seconds`.
/// Tests run in parallel with podman, runc and each other; a process that
/// walks through a mount for a moment holds it. Whatever held it is named
/// (processes whose cwd, root or descriptors lie below it, and mounts on
/// it), on standard error and in the result, so a lasting holder is found.
public func unmountNamingHolders(_ path: String, seconds: Double = 5) -> (status: Int32, errno: Int32, holders: String) {
    let end = Date().addingTimeInterval(seconds)
    var holders = ""
    while true {
        if umount2(path, 0) == 0 {
            if !holders.isEmpty {
                FileHandle.standardError.write(Data("umount of \(path) was busy for a while; held by: \(holders)\n".utf8))
            }
            return (0, 0, holders)
        }
        let e = errno
        if e != EBUSY || Date() >= end { return (-1, e, holders) }
        if holders.isEmpty { holders = holdersOf(path) }
        usleep(20_000)
    }
}

/// Who holds a mount: processes with their cwd, root or a descriptor below
/// it, and mounts stacked below it.
public func holdersOf(_ path: String) -> String {
    var found: [String] = []
    let fm = FileManager.default
    func below(_ link: String) -> Bool {
        guard let t = try? fm.destinationOfSymbolicLink(atPath: link) else { return false }
        return t == path || t.hasPrefix(path + "/")
    }
    for pid in (try? fm.contentsOfDirectory(atPath: "/proc")) ?? [] where pid.allSatisfy(\.isNumber) {
        let comm = readSmallFile("/proc/\(pid)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        for what in ["cwd", "root"] where below("/proc/\(pid)/\(what)") { found.append("\(pid) \(comm) \(what)") }
        for fd in (try? fm.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? [] where below("/proc/\(pid)/fd/\(fd)") {
            found.append("\(pid) \(comm) fd \(fd)")
        }
    }
    for m in mountPoints(under: path) where m != path { found.append("mount \(m)") }
    return found.isEmpty ? "nothing found in /proc (a passing walk, or another mount namespace)" : found.joined(separator: ", ")
}
