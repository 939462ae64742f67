import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Backgrounding as mount helpers and containers/storage expect: the
/// command returns 0 once the mount answers, or non-zero with the daemon's
/// error line. We fork right after mount(2), while the process still has one
/// thread (as libfuse's fuse_daemonize does), so the mount program starts
/// once, not twice: containers/storage runs it for every layer it mounts.
enum Background {
    /// In the child, the pipe end on which to say "ready".
    struct Child {
        let readyFD: Int32

        /// Releases the parent and silences output (nobody reads it now).
        func signalReady() {
            var b: UInt8 = 1
            _ = write(readyFD, &b, 1)
            close(readyFD)
            let devnull = open("/dev/null", O_RDWR | O_CLOEXEC)
            if devnull >= 0 {
                dup2(devnull, 1)
                dup2(devnull, 2)
                close(devnull)
            }
        }
    }

    /// Forks. The parent waits for the child's word and exits: 0 when the
    /// mount serves; otherwise it undoes the mount and exits with the
    /// child's status (the child has printed why). Returns in the child.
    static func split(mountpoint: String, method: MountMethod, deviceFD: Int32, readyNote: String? = nil) throws(SysError) -> Child {
        let threads = OSThread.count()
        guard threads == 1 else {
            throw SysError(.invalidArgument, "cannot go to the background with \(threads) threads running (use -f):", mountpoint)
        }
        var p: [Int32] = [-1, -1]
        if pipe(&p) != 0 { throw SysError.last("pipe", "") }
        _ = fcntl(p[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(p[1], F_SETFD, FD_CLOEXEC)
        let pid = fork()
        if pid < 0 {
            close(p[0]); close(p[1])
            throw SysError.last("fork", "")
        }
        if pid == 0 {
            close(p[0])
            setsid()
            let devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)
            if devnull >= 0 { dup2(devnull, 0); close(devnull) }
            return Child(readyFD: p[1])
        }
        close(p[1])
        // Only the child may hold the connection: if it dies, the kernel
        // must see the device closed, or the mount would hang instead.
        close(deviceFD)
        var b: UInt8 = 0
        let n = retryEINTR { read(p[0], &b, 1) }
        if n == 1 {
            if let readyNote { printError(readyNote) }
            exit(0)
        }
        let status = Spawn.wait(pid)
        // Not probed first: a stat of a mount whose daemon died could block.
        try? Mounter.unmount(mountpoint, method: method, lazy: true)
        exit(status == 0 ? 1 : status)
    }
}
