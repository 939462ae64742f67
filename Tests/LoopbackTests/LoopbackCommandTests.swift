import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The command as a user runs it: backgrounding, unmounting from outside,
/// signals, unprivileged mounts, and one clear line for bad input.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct LoopbackCommandTests {
    @Test func backgroundModeReturnsOnlyOnceTheMountIsReady() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        _ = FileOps(src).write("hello", "world")
        let r = runProgram(MountEnvironment.binary, ["loopback", src, mnt])
        defer { umount2(mnt, Int32(MNT_DETACH)) }
        #expect(r.status == 0, "stderr: \(r.stderr)")
        // No polling: on return the mount must already be there and serving.
        #expect(isMountPoint(mnt))
        #expect(FileOps(mnt).read("hello") == "world")
        #expect(umount(mnt) == 0)
        // The daemon ends on its own once unmounted.
        #expect(waitFor(5) { !daemonRunning(for: mnt) })
    }

    @Test func unmountFromOutsideEndsTheDaemon() throws {
        let t = TempDir()
        let m = try LoopbackMount(source: t.sub("src"), mountpoint: t.sub("mnt"))
        defer { m.unmount() }
        #expect(umount(m.mountpoint) == 0)
        #expect(m.waitExit(5) == 0)
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func signalUnmountsAndEnds(_ sig: Int32) throws {
        let t = TempDir()
        let m = try LoopbackMount(source: t.sub("src"), mountpoint: t.sub("mnt"))
        defer { m.unmount() }
        kill(m.pid, sig)
        #expect(m.waitExit(5) == 0)
        #expect(!isMountPoint(m.mountpoint))
    }

    /// Debian's udev makes /dev/fuse mode 0666 so that users can reach the
    /// setuid fusermount3; machines without udev (this VM, CI) leave it 0600.
    /// The test gives itself Debian's setting in a private mount namespace
    /// (a 0666 node bound over /dev/fuse), so nothing outside changes.
    @Test func unprivilegedUserMountsThroughFusermount3() throws {
        guard let unshare = Spawn.which("unshare"), Spawn.which("setpriv") != nil else {
            Issue.record("util-linux (unshare, setpriv) missing"); return
        }
        guard Spawn.which("fusermount3") != nil else { Issue.record("fusermount3 missing: apt-get install fuse3"); return }
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        _ = FileOps(src).write("owned", "by nobody")
        for p in [src, mnt, "\(src)/owned"] { chown(p, 65534, 65534) }
        let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups --"
        let script = """
        set -e
        mknod \(t.path)/fuse c 10 229 && chmod 666 \(t.path)/fuse && mount --bind \(t.path)/fuse /dev/fuse
        \(nobody) \(MountEnvironment.binary) loopback \(src) \(mnt) || exit 10
        grep " \(mnt) " /proc/self/mounts | grep -q user_id=65534 || exit 11
        [ "$(\(nobody) cat \(mnt)/owned)" = "by nobody" ] || exit 12
        \(nobody) sh -c 'echo new > \(mnt)/made' || exit 13
        \(nobody) fusermount3 -u \(mnt) || exit 14
        ! grep -q " \(mnt) " /proc/self/mounts || exit 15
        """
        let r = runProgram(unshare, ["-m", "--propagation", "private", "/bin/sh", "-c", script])
        #expect(r.status == 0, "step failed (exit \(r.status)): \(r.stderr)")
        #expect(FileOps(src).stat("made")?.st_uid == 65534)
        #expect(waitFor(5) { !daemonRunning(for: mnt) })
    }

    /// Each bad invocation: non-zero exit, a first line that names the
    /// problem, and nothing mounted or written.
    @Test func badArgumentsGiveOneClearLine() throws {
        let t = TempDir()
        let src = t.sub("src")
        _ = FileOps(src).write("keep", "me")
        let file = "\(t.path)/plainfile"
        _ = FileOps(t.path).write("plainfile", "x")
        let mounted = t.sub("mounted")
        let m = try LoopbackMount(source: t.sub("other"), mountpoint: mounted)
        defer { m.unmount() }
        let cases: [([String], String)] = [
            (["loopback", src], "mountpoint"),
            (["loopback", src, "\(t.path)/nope"], "nope"),
            (["loopback", src, file], "not a directory"),
            (["loopback", "\(t.path)/nosrc", t.sub("m1")], "nosrc"),
            (["loopback", file, t.sub("m2")], "plainfile"),
            (["loopback", src, mounted], "already mounted"),
            (["loopback", "-o", "frobnicate", src, t.sub("m3")], "frobnicate"),
            (["loopback", "-o", "threads=zero", src, t.sub("m4")], "threads"),
        ]
        for (args, word) in cases {
            let r = runProgram(MountEnvironment.binary, args)
            let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
            #expect(r.status != 0, "\(args) should fail")
            #expect(first.lowercased().contains(word.lowercased()), "\(args): first line '\(first)' should name '\(word)'")
        }
        #expect(FileOps(src).ls("") == "keep")
        for d in ["m1", "m2", "m3", "m4"] { #expect(!isMountPoint("\(t.path)/\(d)")) }
    }

    @Test func missingFuseDeviceIsNamed() throws {
        guard let unshare = Spawn.which("unshare") else { Issue.record("unshare (util-linux) missing"); return }
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        // A private mount namespace whose /dev has no fuse node.
        let script = "mount -t tmpfs none /dev && exec \(MountEnvironment.binary) loopback -f \(src) \(mnt)"
        let r = runProgram(unshare, ["-m", "--propagation", "private", "/bin/sh", "-c", script])
        #expect(r.status != 0)
        #expect(r.stderr.contains("/dev/fuse"), "stderr: \(r.stderr)")
        #expect(!isMountPoint(mnt))
    }

    /// A daemon started while another thread has a file open without
    /// O_CLOEXEC (as Foundation's reads leave them) must not keep that file,
    /// or the mount it lives on stays busy and cannot be unmounted.
    @Test func spawnedProgramsInheritOnlyWhatTheyAreGiven() throws {
        let t = TempDir()
        _ = FileOps(t.path).write("stray", "x")
        _ = FileOps(t.path).write("given", "y")
        let stray = open("\(t.path)/stray", O_RDONLY), given = open("\(t.path)/given", O_RDONLY)
        defer { close(stray); close(given) }
        // The child names what it holds at both numbers.
        let script = "readlink /proc/$$/fd/\(stray) > \(t.path)/seen-stray; readlink /proc/$$/fd/\(given) > \(t.path)/seen-given; true"
        let pid = try Spawn.start("/bin/sh", ["sh", "-c", script], inherit: [given])
        #expect(Spawn.wait(pid) == 0)
        #expect(!FileOps(t.path).read("seen-stray").contains("stray"))
        #expect(FileOps(t.path).read("seen-given").contains("given"))
    }

    @Test func versionAndHelp() {
        let v = runProgram(MountEnvironment.binary, ["--version"])
        #expect(v.status == 0 && v.stdout.hasPrefix("strata version"))
        let h = runProgram(MountEnvironment.binary, ["loopback", "--help"])
        #expect(h.status == 0 && h.stdout.contains("passthrough"))
    }
}

/// Whether some process still has `mountpoint` as an argument (our daemon).
func daemonRunning(for mountpoint: String) -> Bool {
    guard let pids = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return false }
    for p in pids where Int32(p) != nil && Int32(p) != getpid() {
        guard let d = FileManager.default.contents(atPath: "/proc/\(p)/cmdline") else { continue }
        let args = d.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        if args.contains(mountpoint) && args.contains(where: { $0.hasSuffix("strata") || $0 == "loopback" }) { return true }
    }
    return false
}
