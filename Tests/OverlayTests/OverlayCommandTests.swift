import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The union mount as tools invoke it, its on-disk format shared with the
/// kernel, and bad input refused with one line and nothing written.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct OverlayCommandTests {
    func layers(_ t: TempDir) -> (l1: String, l2: String, u: String, w: String, m: String) {
        let l1 = t.sub("l1"), l2 = t.sub("l2"), u = t.sub("u"), w = t.sub("w"), m = t.sub("m")
        _ = FileOps(l2).write("both", "l2"); _ = FileOps(l1).write("both", "l1")
        _ = FileOps(l2).write("onlyl2", "x"); _ = FileOps(l2).mkdir("d"); _ = FileOps(l2).write("d/f", "f")
        return (l1, l2, u, w, m)
    }

    /// An upper written by Strata, mounted by the kernel, shows the same
    /// merged view; and the other way round.
    @Test(arguments: [true, false])
    func upperLayersAreInterchangeableWithTheKernel(strataWrites: Bool) throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        let writer = strataWrites ? pair.strataMount : pair.kernelMount
        let o = FileOps(writer)
        _ = o.write("a/f1", "changed")
        _ = o.unlink("a/h1")
        _ = runProgram("/bin/rm", ["-rf", "\(writer)/a/sub"])
        _ = o.mkdir("a/sub")
        _ = o.write("a/sub/new", "n")
        _ = o.rename("x", "a/x2")
        _ = o.chmod("many", 0o600)
        _ = o.setxattr("a/top", "user.t", "v")
        _ = o.symlink("nowhere", "sl")
        let before = TreeSnapshot.take(writer, times: false)
        pair.unmount()
        // Mount the written layers with the other implementation.
        let side = strataWrites ? "s" : "k"
        let root = "\(pair.dir.path)/\(side)"
        let w2 = pair.dir.sub("w2-\(side)"), m2 = pair.dir.sub("m2-\(side)")
        let opts = "lowerdir=\(root)/l1:\(root)/l2:\(root)/l3,upperdir=\(root)/u,workdir=\(w2)"
        if strataWrites {
            let r = runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", opts + ",redirect_dir=off,index=off,xino=off", m2])
            #expect(r.status == 0, "\(r.stderr)")
        } else {
            let r = runProgram(MountEnvironment.binary, ["mount", "-o", opts, m2])
            #expect(r.status == 0, "\(r.stderr)")
        }
        defer { umount2(m2, Int32(MNT_DETACH)) }
        let after = TreeSnapshot.take(m2, times: false)
        #expect(TreeSnapshot.diff(before, after, labels: (strataWrites ? "strata" : "kernel", "remounted")) == [])
    }

    @Test(arguments: ["lean", "strata as strata-overlay"])
    func mountProgramInvocationAsContainersStorageDoesIt(_ program: String) throws {
        let t = TempDir()
        let (l1, l2, u, w, m) = layers(t)
        // containers/storage: l/SHORTID symlinks, relative paths, empty elements.
        let links = t.sub("l")
        symlink(l1, "\(links)/AAAA")
        symlink(l2, "\(links)/BBBB")
        let overlayBin: String
        if program == "lean" {
            overlayBin = MountEnvironment.overlayBinary
        } else {
            overlayBin = "\(t.path)/strata-overlay"
            symlink(MountEnvironment.binary, overlayBin)
        }
        let v = runProgram(overlayBin, ["--version"])
        #expect(v.status == 0 && v.stdout.contains("strata"))
        let opts = "lowerdir=l/AAAA:l/BBBB,upperdir=\(u),workdir=\(w),,volatile,"
        let r = runProgram("/bin/sh", ["-c", "cd \(t.path) && \(overlayBin) -o '\(opts)' \(m)"])
        defer { umount2(m, Int32(MNT_DETACH)) }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileOps(m).read("both") == "l1")
        #expect(FileOps(m).ls("") == "both,d,onlyl2")
        // Unmounted as podman does it.
        #expect(runProgram("/bin/fusermount3", ["-u", m]).status == 0)
        #expect(!isMountPoint(m))
    }

    /// podman mounts a parent layer, walks it and unmounts it at once: the
    /// daemon must hold nothing on the mount (it once stat'ed it from its
    /// statistics thread, which made a quick umount fail with EBUSY).
    @Test func mountThenUnmountAtOnceNeverBusy() throws {
        let t = TempDir()
        #expect(t.isolate(), "bind the scratch directory private: \(errno)")
        let (l1, l2, u, w, m) = layers(t)
        for i in 0..<30 {
            let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w)", m])
            #expect(r.status == 0, "\(r.stderr)")
            let rc = umount2(m, 0)
            let e = errno
            if rc != 0 { umount2(m, Int32(MNT_DETACH)) }
            #expect(rc == 0, "round \(i): umount: \(String(cString: strerror(e)))")
            if rc != 0 { break }
        }
        #expect(!isMountPoint(m))
    }

    /// A daemon gone to the background serves from threads started after
    /// the fork and ends cleanly: under load from several processes, then
    /// at unmount, where it writes its last statistics. Its main thread,
    /// whose cached thread id was the parent's, once trapped there in
    /// Swift's Mutex (a PI futex naming an exited process).
    @Test func aBackgroundDaemonServesUnderLoadAndEndsCleanly() throws {
        let t = TempDir()
        #expect(t.isolate(), "bind the scratch directory private: \(errno)")
        let (l1, l2, u, w, m) = layers(t)
        let statsFile = t.sub("stats") + "/last.json"
        for i in 0..<200 { _ = FileOps(l2).write("d/f\(i)", "x") }
        let r = runProgram(MountEnvironment.overlayBinary, ["-o", "lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w),timeout=0", m],
                           env: ["STRATA_STATS_AT_EXIT": statsFile])
        #expect(r.status == 0, "\(r.stderr)")
        defer { if isMountPoint(m) { umount2(m, Int32(MNT_DETACH)) } }
        // Four readers at once (xargs waits for them itself: a shell's `wait`
        // never wakes with SIGCHLD blocked, as the test runner's threads
        // pass it on).
        let reader = "for n in $(seq 1 40); do ls -l \(m)/d > /dev/null && cat \(m)/both > /dev/null || exit 1; done"
        let load = runProgram("/bin/sh", ["-c", "seq 1 4 | xargs -P 4 -n 1 /bin/sh -c '\(reader)' reader"])
        #expect(load.status == 0, "\(load.stderr)")
        #expect(umount2(m, 0) == 0)
        var written = ""
        for _ in 0..<100 where written.isEmpty {
            written = (try? String(contentsOfFile: statsFile, encoding: .utf8)) ?? ""
            if written.isEmpty { usleep(20_000) }
        }
        #expect(written.contains("\"mountpoint\": \"\(m)\""), "the daemon did not end cleanly: no statistics at exit")
    }

    /// The lean program's own command line: bad flags and options give one
    /// line and a non-zero exit, and nothing is mounted.
    @Test func leanProgramRefusesBadCommandLines() throws {
        let t = TempDir()
        let (l1, _, u, w, m) = layers(t)
        let cases: [([String], String)] = [
            ([m], "lowerdir"),
            (["-o", "lowerdir=\(l1)"], "mount point"),
            (["-o", "lowerdir=\(l1)", "-x", m], "-x"),
            (["-o"], "-o"),
            (["-o", "lowerdir=\(l1),frobnicate", m], "frobnicate"),
            (["-o", "lowerdir=\(t.path)/missing,upperdir=\(u),workdir=\(w)", m], "missing"),
            (["-o", "lowerdir=\(l1),upperdir=\(u)", m], "workdir"),
        ]
        for (args, word) in cases {
            let r = runProgram(MountEnvironment.overlayBinary, args)
            let lines = r.stderr.split(separator: "\n")
            #expect(r.status != 0, "\(args) should fail")
            #expect(lines.count == 1 && lines[0].contains(word), "\(args): '\(r.stderr)' should be one line naming '\(word)'")
            #expect(!isMountPoint(m))
        }
        let h = runProgram(MountEnvironment.overlayBinary, ["--help"])
        #expect(h.status == 0 && h.stdout.contains("lowerdir"))
    }

    @Test func mountDashTFuseStrata() throws {
        let t = TempDir()
        let (l1, l2, u, w, m) = layers(t)
        // mount(8) -> mount.fuse3 -> `strata SOURCE MOUNTPOINT -o OPTIONS`,
        // found in PATH; mount(8) clears PATH, so put it where helpers look.
        let bin = t.sub("bin")
        symlink(MountEnvironment.binary, "\(bin)/strata")
        let script = "mount --bind \(bin) /usr/local/sbin && mount -t fuse.strata -o lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w) strata \(m) && cat \(m)/both && grep -q ' \(m) fuse.strata ' /proc/self/mounts && umount \(m)"
        let r = runProgram("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c", script])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "l1")
    }

    @Test func badInputGivesOneLineAndWritesNothing() throws {
        let t = TempDir()
        let (l1, l2, u, w, m) = layers(t)
        let file = "\(t.path)/afile"
        _ = FileOps(t.path).write("afile", "x")
        let otherFS = t.sub("tmpfs")
        #expect(runProgram("/bin/mount", ["-t", "tmpfs", "none", otherFS]).status == 0)
        defer { umount2(otherFS, Int32(MNT_DETACH)) }
        let many = (0..<501).map { _ in l2 }.joined(separator: ":")
        let cases: [(String, String)] = [
            ("lowerdir=\(t.path)/missing", "missing"),
            ("lowerdir=\(file)", "not a directory"),
            ("upperdir=\(u),workdir=\(w)", "lowerdir"),
            ("lowerdir=\(l1),upperdir=\(u)", "workdir"),
            ("lowerdir=\(l1),upperdir=\(l1)/sub,workdir=\(w)", "sub"),
            ("lowerdir=\(t.path),upperdir=\(u),workdir=\(w)", "overlap"),
            ("lowerdir=\(l1),upperdir=\(u),workdir=\(otherFS)", "another filesystem"),
            ("lowerdir=\(many),upperdir=\(u),workdir=\(w)", "too many"),
            ("lowerdir=\(l1),frobnicate", "frobnicate"),
            ("lowerdir=\(l1),redirect_dir=follow", "redirect_dir"),
            ("lowerdir=\(l1),xattr_permissions=1", "xattr_permissions"),
            ("lowerdir=\(l1),uidmapping=0:1000", "uidmapping"),
            // The kernel's refusals, in its words.
            ("lowerdir=\(l1),upperdir=\(u),workdir=\(w),metacopy=on,redirect_dir=off", "conflicting options: metacopy=on,redirect_dir=off"),
            ("lowerdir=\(l1),upperdir=\(u),workdir=\(w),userxattr,metacopy=on", "conflicting options: userxattr,metacopy=on"),
            ("lowerdir=\(l1),metacopy=maybe", "metacopy"),
            ("lowerdir=\(l1),upperdir=\(u),workdir=\(w),userxattr,index=on", "conflicting options: userxattr,index=on"),
            ("lowerdir=\(l1),upperdir=\(u),workdir=\(w),index=maybe", "index"),
            ("lowerdir=\(l1),upperdir=\(u),workdir=\(w),nfs_export=on", "nfs_export"),
        ]
        _ = FileOps(l1).mkdir("sub")
        for (opts, word) in cases {
            let r = runProgram(MountEnvironment.binary, ["mount", "-o", opts, m])
            let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
            #expect(r.status != 0, "\(opts) should fail")
            #expect(first.lowercased().contains(word.lowercased()), "\(opts): '\(first)' should name '\(word)'")
            #expect(!isMountPoint(m))
        }
        // Nothing was written to any layer (not even workdir/work).
        #expect(FileOps(u).ls("") == "" && FileOps(w).ls("") == "" && FileOps(l1).ls("") == "both,sub")
        // A workdir in use by a running mount is refused.
        let first = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w)", m])
        #expect(first.status == 0)
        defer { umount2(m, Int32(MNT_DETACH)) }
        let m2 = t.sub("m2"), u2 = t.sub("u2")
        let second = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l1),upperdir=\(u2),workdir=\(w)", m2])
        #expect(second.status != 0 && second.stderr.contains("in use"), "\(second.stderr)")
        #expect(FileOps(u2).ls("") == "")
    }

    /// fuse-overlayfs's presentation options, as rootless podman uses them.
    @Test func idMappingSquashStaticNlinkAndNoXattrs() throws {
        let t = TempDir()
        let (l1, l2, u, w, m) = layers(t)
        var r = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w),uidmapping=0:1000:1,gidmapping=0:2000:1,static_nlink", m])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileOps(m).stat("both").map { ($0.st_uid, $0.st_gid) } ?? (0, 0) == (1000, 2000))
        #expect(FileOps(m).stat("d")?.st_nlink == 1)
        // Written back unmapped: shown uid 1000 is uid 0 on disk.
        #expect(FileOps(m).lchown("both", 1000, 2000) == "ok")
        #expect(FileOps(u).stat("both").map { ($0.st_uid, $0.st_gid) } ?? (9, 9) == (0, 0))
        umount2(m, Int32(MNT_DETACH))
        _ = waitFor(5) { !isMountPoint(m) }
        let w2 = t.sub("w2")
        r = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w2),squash_to_uid=7,squash_to_gid=8,noxattrs=1", m])
        defer { umount2(m, Int32(MNT_DETACH)) }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileOps(m).stat("onlyl2").map { ($0.st_uid, $0.st_gid) } ?? (0, 0) == (7, 8))
        #expect(FileOps(m).setxattr("onlyl2", "user.x", "y") == "EOPNOTSUPP")
    }

    /// A user without privileges mounts through fusermount3 and gets the
    /// rootless on-disk format: `.wh.` whiteouts, user.overlay.* with
    /// userxattr. (/dev/fuse gets Debian's 0666 in a private namespace.)
    @Test func unprivilegedUnionWritesTheRootlessFormat() throws {
        let t = TempDir()
        let (l1, l2, u, w, m) = layers(t)
        // A lower file big enough for passthrough, which an unprivileged
        // mount does not get: written while open, it must copy up as on the
        // kernel (no passthrough bookkeeping left to wait for).
        #expect(runProgram("/bin/dd", ["if=/dev/zero", "of=\(l2)/big", "bs=1M", "count=17", "status=none"]).status == 0)
        _ = runProgram("/bin/chown", ["-R", "65534:65534", t.path])
        let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups --"
        let script = """
        set -e
        mknod \(t.path)/fuse c 10 229 && chmod 666 \(t.path)/fuse && mount --bind \(t.path)/fuse /dev/fuse
        \(nobody) \(MountEnvironment.binary) mount -o lowerdir=\(l1):\(l2),upperdir=\(u),workdir=\(w),userxattr \(m) || exit 10
        grep " \(m) " /proc/self/mounts | grep -q user_id=65534 || exit 11
        \(nobody) sh -c 'echo new >> \(m)/both && rm \(m)/onlyl2 && rm -r \(m)/d && mkdir \(m)/d && ls \(m)' || exit 12
        \(nobody) /usr/bin/python3 -c "import os; r = os.open('\(m)/big', os.O_RDONLY); os.pread(r, 4096, 0); w = os.open('\(m)/big', os.O_WRONLY | os.O_APPEND); os.write(w, b'x')" || exit 14
        \(nobody) fusermount3 -u \(m) || exit 13
        """
        let r = runProgram("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c", script])
        #expect(r.status == 0, "exit \(r.status): \(r.stderr)")
        #expect(r.stdout == "big\nboth\nd\n")
        #expect(FileOps(u).stat("big")?.st_size == 17 * 1024 * 1024 + 1)
        #expect(FileOps(u).read("both") == "l1new\n")
        #expect(FileOps(u).stat(".wh.onlyl2") != nil)                       // rootless whiteout
        #expect(TreeSnapshot.xattrs("\(u)/d", ["user."])["user.overlay.opaque"] == Array("y".utf8))
        #expect(FileOps(u).stat("both")?.st_uid == 65534)
    }

    @Test func readOnlyUnionWithoutUpper() throws {
        let t = TempDir()
        let (l1, l2, _, _, m) = layers(t)
        let r = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l1):\(l2)", m])
        defer { umount2(m, Int32(MNT_DETACH)) }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileOps(m).read("both") == "l1")
        #expect(FileOps(m).write("new", "x") == "errno\(EROFS)")
        #expect(FileOps(m).unlink("both") == "errno\(EROFS)")
    }
}
