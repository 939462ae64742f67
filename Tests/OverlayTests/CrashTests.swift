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
        #expect(t.isolate(), "bind the scratch directory private: \(errno)")
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
        // its rings' exit work has cancelled the queued commands, which runs
        // after waitpid returns. A call made in that window is queued and
        // then ended by the teardown: ECANCELED when it reached a ring entry
        // of the dead task (fuse_uring_send_in_task), ECONNABORTED when the
        // abort ended it (fuse_abort_conn's end_requests). Every call must
        // fail at once with one of these; once the abort is done, every call
        // gets ENOTCONN, and that must come within two seconds.
        let teardown: Set<Int32> = [ENOTCONN, ECONNABORTED, ECANCELED]
        let n = read(open, &buf, 16)
        let readErrno = errno
        #expect(n < 0 && teardown.contains(readErrno), "read on the dead mount: \(n), errno \(readErrno)")
        close(open)
        var statErrno: Int32 = 0
        var seen: [Int32] = []
        repeat {
            var s = stat()
            let callStarted = Date()
            let r0 = stat("\(m)/f", &s)
            statErrno = errno
            #expect(Date().timeIntervalSince(callStarted) < 0.5, "a stat on the dead mount waited")
            #expect(r0 != 0 && teardown.contains(statErrno), "stat on the dead mount: \(r0), errno \(statErrno)")
            if r0 == 0 { break }
            seen.append(statErrno)
            if statErrno != ENOTCONN { usleep(1000) }
        } while statErrno != ENOTCONN && Date().timeIntervalSince(started) < 2
        #expect(statErrno == ENOTCONN, "the dead mount never settled on ENOTCONN: errnos \(seen)")
        #expect(Date().timeIntervalSince(started) < 2, "a call on the dead mount waited")
        let u = unmountNamingHolders(m)
        #expect(u.status == 0, "umount of the dead mount: \(String(cString: strerror(u.errno))); held by \(u.holders)")
        let r = runProgram(MountEnvironment.binary, ["mount", "-o", opts, m])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileOps(m).read("new") == "written before the kill")
        #expect(FileOps(m).read("f") == "lower\n")
    }
}
