import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The daemon killed (SIGKILL) at random points of each kind of change:
/// after a remount every path is as before or as after, work/ is clean and
/// the kernel's overlayfs shows the same tree. A few points per case here;
/// `strata-bench crash` runs hundreds.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct CrashTests {
    @Test(arguments: CrashCases.all(bigMiB: 16).map(\.name))
    func killedMidOperationNothingHalfMadeIsVisible(_ name: String) throws {
        let t = TempDir("strata-crash")
        let harness = CrashHarness(binary: MountEnvironment.binary, scratch: t.path)
        let c = try #require(CrashCases.all(bigMiB: 16).first { $0.name == name })
        let outcomes = try harness.run(c, points: 3)
        for o in outcomes {
            #expect(o.problems.isEmpty, "kill at \(o.delayMicros) µs: \(o.problems)")
        }
    }

    /// A dead daemon: users of the mount get ENOTCONN at once (no hang),
    /// umount works, and a new mount over the same layers serves at once.
    @Test func aDeadDaemonGivesENOTCONNAndTheLayersMountAgain() throws {
        let t = TempDir("strata-dead")
        for d in ["l", "u", "w", "m"] { mkdir("\(t.path)/\(d)", 0o755) }
        FileManager.default.createFile(atPath: "\(t.path)/l/f", contents: Data("lower\n".utf8))
        let opts = "lowerdir=\(t.path)/l,upperdir=\(t.path)/u,workdir=\(t.path)/w"
        let m = "\(t.path)/m"
        let pid = try Spawn.start(MountEnvironment.binary, ["strata", "mount", "-f", "-o", opts, m])
        #expect(waitFor(10) { isMountPoint(m) })
        defer { umount2(m, Int32(MNT_DETACH)) }
        #expect(FileOps(m).write("new", "written before the kill") == "ok")
        let open = Glibc.open("\(m)/f", O_RDONLY | O_CLOEXEC)
        #expect(open >= 0)
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        var buf = [UInt8](repeating: 0, count: 16)
        let started = Date()
        // On io_uring the kernel drops the dead daemon's /dev/fuse only when
        // its ring's exit work has cancelled the queued commands, which runs
        // after waitpid returns: a call made in that window is queued, then
        // ended by the abort with ECONNABORTED (fuse_abort_conn's
        // end_requests). Either way the caller gets an error at once; once
        // the abort is done every call gets ENOTCONN, as the stat below.
        let n = read(open, &buf, 16)
        let readErrno = errno
        #expect(n < 0 && (readErrno == ENOTCONN || readErrno == ECONNABORTED),
                "read on the dead mount: \(n), errno \(readErrno)")
        close(open)
        var s = stat()
        let r0 = stat("\(m)/f", &s)
        let statErrno = errno
        #expect(r0 != 0 && statErrno == ENOTCONN, "stat on the dead mount: \(r0), errno \(statErrno)")
        #expect(Date().timeIntervalSince(started) < 2, "a call on the dead mount waited")
        #expect(umount2(m, 0) == 0, "umount of the dead mount: \(errno)")
        let r = runProgram(MountEnvironment.binary, ["mount", "-o", opts, m])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileOps(m).read("new") == "written before the kill")
        #expect(FileOps(m).read("f") == "lower\n")
    }
}
