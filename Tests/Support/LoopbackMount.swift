import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// A `strata loopback` daemon started by a test in the foreground (so the
/// test owns its pid), unmounted and reaped at the end whatever happened.
public final class LoopbackMount: @unchecked Sendable {
    public let source: String
    public let mountpoint: String
    public let pid: pid_t
    private var reaped = false

    public init(source: String, mountpoint: String, options: [String] = []) throws {
        self.source = source
        self.mountpoint = mountpoint
        var args = ["strata", "loopback", "-f"]
        if !options.isEmpty { args += ["-o", options.joined(separator: ",")] }
        args += [source, mountpoint]
        pid = try Spawn.start(MountEnvironment.binary, args)
        guard waitFor(10, { isMountPoint(mountpoint) }) else {
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
            reaped = true
            throw SysError(.timedOut, "mount did not appear", mountpoint)
        }
    }

    /// Whether the daemon is still running.
    public var alive: Bool {
        if reaped { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { reaped = true; return false }
        return true
    }

    /// Waits for the daemon to end; its exit status, or nil on timeout.
    public func waitExit(_ seconds: Double) -> Int32? {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                reaped = true
                return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            }
            usleep(20_000)
        }
        return nil
    }

    public func unmount() {
        if isMountPoint(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        if !reaped && waitExit(5) == nil {
            kill(pid, SIGKILL)
            _ = waitExit(5)
        }
    }

    deinit { unmount() }
}
