import Sys
import SystemPackage
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
    final class Child: @unchecked Sendable {
        private var ready: UniqueFD

        init(ready: consuming UniqueFD) { self.ready = ready }

        /// Releases the parent and silences output (nobody reads it now).
        func signalReady() {
            var b: UInt8 = 1
            let pipe = ready.release()
            _ = write(pipe.raw, &b, 1)
            _ = consume pipe
            if let null = try? Sys.open("/dev/null", O_RDWR | O_CLOEXEC) {
                dup2(null.raw, 1)
                dup2(null.raw, 2)
            }
        }
    }

    /// Forks. The parent waits for the child's word and exits: 0 when the
    /// mount serves; otherwise it undoes the mount and exits with the
    /// child's status (the child has printed why). Returns in the child.
    static func split(mountpoint: String, method: MountMethod, device: inout UniqueFD, readyNote: String? = nil) throws(SysError) -> Child {
        let threads = OSThread.count()
        guard threads == 1 else {
            throw SysError(.invalidArgument, "cannot go to the background with \(threads) threads running (use -f):", mountpoint)
        }
        var p: DescriptorPair
        do throws(Errno) { p = try Sys.pipe() } catch { throw SysError(error, "pipe", "") }
        let pid = fork()
        if pid < 0 { throw SysError.last("fork", "") }
        if pid == 0 {
            _ = p.read.release()
            setsid()
            if let null = try? Sys.open("/dev/null", O_RDONLY | O_CLOEXEC) { dup2(null.raw, 0) }
            return Child(ready: p.write.release())
        }
        _ = p.write.release()
        // Only the child may hold the connection: if it dies, the kernel
        // must see the device closed, or the mount would hang instead.
        _ = device.release()
        var b: UInt8 = 0
        let readEnd = p.read.raw
        let n = retryEINTR { read(readEnd, &b, 1) }
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
