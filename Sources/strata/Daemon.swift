import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Backgrounding, as mount helpers and podman expect: the command returns 0
/// only once the mount is ready, and non-zero with the daemon's error line
/// when mounting failed. We re-execute ourselves rather than fork, since
/// forking a multi-threaded Swift process is unsafe.
enum Daemon {
    static let readyEnv = "STRATA_READY_FD"

    /// In the parent: starts the child and waits for its verdict. Never returns.
    static func startAndWait() -> Never {
        var p: [Int32] = [-1, -1]
        if pipe(&p) != 0 {
            printError("strata: pipe: \(currentErrno())")
            exit(1)
        }
        _ = fcntl(p[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(p[1], F_SETFD, FD_CLOEXEC)
        let args = CommandLine.arguments
        let devnull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let pid: pid_t
        do {
            pid = try Spawn.start("/proc/self/exe", args, env: [readyEnv: "\(p[1])"], inherit: [p[1]],
                                  stdio: (devnull, 1, 2))
        } catch {
            printError("strata: \(error)")
            exit(1)
        }
        close(p[1])
        var b: UInt8 = 0
        let n = retryEINTR { read(p[0], &b, 1) }
        if n == 1 { exit(0) }
        let status = Spawn.wait(pid)
        exit(status == 0 ? 1 : status)
    }

    /// The descriptor to report readiness on, when we are the background child.
    static var readyFD: Int32? {
        guard let v = getenv(readyEnv), let fd = Int32(String(cString: v)) else { return nil }
        return fd
    }

    /// In the child: detach from the terminal's session.
    static func detach() {
        unsetenv(readyEnv)
        setsid()
    }

    /// In the child, once mounted: release the parent and silence output.
    static func signalReady(_ fd: Int32) {
        var b: UInt8 = 1
        _ = write(fd, &b, 1)
        close(fd)
        let devnull = open("/dev/null", O_RDWR)
        if devnull >= 0 {
            dup2(devnull, 1)
            dup2(devnull, 2)
            close(devnull)
        }
    }
}
