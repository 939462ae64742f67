import CStrata
import FUSE
import Foundation
import Sys
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// FUSE over io_uring: the transport itself. The whole suite also runs a
/// second time on the rings (scripts/test.sh: STRATA_URING=on with the
/// kernel switch on), which covers the semantics; these cover what only the
/// rings have: negotiation, fallback, a killed daemon, teardown.
/// The switch's path as a C string made before any signal handler needs it.
nonisolated(unsafe) let uringSwitchPathC: UnsafeMutablePointer<CChar> = strdup(UringSupport.switchPath)!

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct UringTests {
    /// Turns the kernel's opt-in switch on for the test process (mounts
    /// that do not ask for io_uring are unaffected) and puts it back when
    /// the process exits.
    static let switchOn: Bool = {
        guard let v = readSmallFile(UringSupport.switchPath) else { return false }
        if v.hasPrefix("Y") { return true }
        guard FileOps("/").write(String(UringSupport.switchPath.dropFirst()), "Y", flags: O_WRONLY) == "ok" else { return false }
        atexit { _ = FileOps("/").write(String(UringSupport.switchPath.dropFirst()), "N", flags: O_WRONLY) }
        // A run ended by a signal (a reader of its output that went away,
        // ^C, a timeout) skips atexit: put the switch back there too.
        for sig in [SIGINT, SIGTERM, SIGPIPE, SIGHUP] {
            signal(sig) { sig in
                let fd = open(uringSwitchPathC, O_WRONLY | O_CLOEXEC)
                if fd >= 0 { _ = write(fd, "N", 1); close(fd) }
                signal(sig, SIG_DFL)
                raise(sig)
            }
        }
        return readSmallFile(UringSupport.switchPath)?.hasPrefix("Y") == true
    }()

    func layers(_ t: TempDir) -> (String, String, String, String) {
        let l = t.sub("l"), u = t.sub("u"), w = t.sub("w"), m = t.sub("m")
        _ = FileOps(l).write("f", "lower")
        _ = FileOps(l).mkdir("d")
        for i in 0..<50 { _ = FileOps(l).write("d/e\(i)", "\(i)") }
        return (l, u, w, m)
    }

    func stats(_ m: String) -> (pid: pid_t, json: String) {
        let r = runProgram(MountEnvironment.binary, ["stats", "--json", m])
        guard let range = r.stdout.range(of: "\"pid\": ") else { return (0, r.stdout + r.stderr) }
        let digits = r.stdout[range.upperBound...].prefix { $0.isNumber }
        return (pid_t(digits) ?? 0, r.stdout)
    }

    /// Whether the daemon has exited (a zombie counts: it was reparented
    /// to init when the mount command returned, and init reaps it later).
    func waitGone(_ pid: pid_t, seconds: Int) -> Bool {
        for _ in 0..<(seconds * 100) {
            guard let s = readSmallFile("/proc/\(pid)/stat") else { return true }
            if let close = s.lastIndex(of: ")"), s[s.index(close, offsetBy: 2)] == "Z" { return true }
            usleep(10_000)
        }
        return false
    }

    @Test func servesOnTheRingsAndSaysSo() throws {
        #expect(Self.switchOn, "cannot turn on \(UringSupport.switchPath)")
        let t = TempDir()
        #expect(t.isolate(), "bind the scratch directory private: \(errno)")
        let (l, u, w, m) = layers(t)
        let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l),upperdir=\(u),workdir=\(w),uring=on", m])
        #expect(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        let fs = FileOps(m)
        #expect(fs.read("f") == "lower")
        #expect(fs.write("f", "+upper", flags: O_WRONLY | O_APPEND) == "ok")
        #expect(fs.read("f") == "lower+upper")
        #expect(FileOps(u).read("f") == "lower+upper")
        #expect(fs.ls("d").split(separator: ",").count == 50)
        #expect(fs.unlink("d/e1") == "ok")
        let (pid, json) = stats(m)
        #expect(json.contains("\"transport\": \"io_uring"), "\(json)")
        #expect(json.contains("\"LOOKUP\""), "\(json)")
        #expect(umount2(m, 0) == 0)
        #expect(pid > 0 && waitGone(pid, seconds: 10), "the daemon did not exit after unmount")
    }

    @Test func refusedRegistrationFallsBackToDevFuse() throws {
        #expect(Self.switchOn)
        let t = TempDir()
        let (l, u, w, m) = layers(t)
        let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l),upperdir=\(u),workdir=\(w),uring=on", m],
                           env: ["STRATA_FAULT": "uring-register"])
        #expect(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        #expect(FileOps(m).read("f") == "lower")
        #expect(FileOps(m).write("new", "x") == "ok")
        let (_, json) = stats(m)
        #expect(json.contains("refused the io_uring queues"), "\(json)")
        #expect(r.stderr.split(separator: "\n").count <= 2, "one line per refused queue at most: \(r.stderr)")
    }

    /// A killed daemon leaves callers with ENOTCONN, not a hang.
    @Test func killedDaemonGivesENOTCONN() throws {
        #expect(Self.switchOn)
        let t = TempDir()
        let (l, u, w, m) = layers(t)
        let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l),upperdir=\(u),workdir=\(w),uring=on", m])
        #expect(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        let (pid, json) = stats(m)
        #expect(pid > 0, "\(json)")
        kill(pid, SIGKILL)
        #expect(waitGone(pid, seconds: 10))
        // In a child with a deadline: a hang must fail the test, not stall it.
        let s = runProgram("/usr/bin/timeout", ["5", "/usr/bin/stat", m])
        #expect(s.status != 124, "stat hung on a killed daemon's mount")
        // ENOTCONN when the kernel sees /dev/fuse closed first; ECONNABORTED
        // or ECANCELED when io_uring's cancellation of the dead daemon's
        // queues ends the request first: in every case an error at once.
        #expect(s.status != 0)
        #expect(["not connected", "connection abort", "Operation canceled"].contains { s.stderr.contains($0) }, "\(s.stderr)")
    }

    /// Unmounting while requests are being served tears the rings down: the
    /// daemon exits, and no thread, descriptor or mapping outlives it.
    @Test func unmountWithRequestsInFlight() throws {
        #expect(Self.switchOn)
        let t = TempDir()
        let (l, u, w, m) = layers(t)
        for i in 0..<2000 { _ = FileOps(l).write("d/many\(i)", "x") }
        let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l),upperdir=\(u),workdir=\(w),uring=on", m])
        #expect(r.status == 0, "\(r.stderr)")
        let (pid, _) = stats(m)
        #expect(pid > 0)
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        // Two walkers hammering the mount, one per CPU queue.
        let script = "while true; do find \(m) -xdev >/dev/null 2>&1; cat \(m)/d/* >/dev/null 2>&1; done"
        let walkers = try (0..<2).map { _ in try Spawn.start("/bin/sh", ["sh", "-c", script], stdio: (null, null, null)) }
        usleep(300_000)
        #expect(umount2(m, Int32(MNT_DETACH)) == 0)
        #expect(waitGone(pid, seconds: 10), "the daemon did not exit after unmount with requests in flight")
        for p in walkers {
            kill(p, SIGKILL)
            _ = Spawn.wait(p)
        }
        #expect(!isMountPoint(m))
    }

    @Test func uringOnNamesTheSwitchWhenItIsOff() throws {
        let t = TempDir()
        #expect(FileOps(t.path).write("off", "N\n") == "ok")
        let why = UringSupport.missing(switchPath: "\(t.path)/off")
        #expect(why?.contains(UringSupport.switchPath) == true && why?.contains("echo Y") == true, "\(why ?? "nil")")
        #expect(UringSupport.missing(switchPath: "\(t.path)/absent")?.contains("6.14") == true)
        #expect(FileOps(t.path).write("on", "Y\n") == "ok")
        #expect(UringSupport.missing(switchPath: "\(t.path)/on") == nil)
        // And on the command line: a bad value is refused by name.
        let (l, u, w, m) = layers(t)
        let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l),upperdir=\(u),workdir=\(w),uring=sometimes", m])
        #expect(r.status != 0 && r.stderr.contains("uring"), "\(r.stderr)")
        #expect(!isMountPoint(m))
    }
}
