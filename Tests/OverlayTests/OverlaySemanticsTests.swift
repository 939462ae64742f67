import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct OverlaySemanticsTests {
    func ino(_ p: String) -> UInt64? {
        var st = stat()
        return lstat(p, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    func dirInos(_ dir: String) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        // A directory that cannot be listed fails the test: an empty
        // listing would make every comparison below pass.
        guard let d = opendir(dir) else { Issue.record("opendir \(dir): errno \(errno)"); return out }
        defer { closedir(d) }
        while let e = readdir(d) {
            let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if n != "." && n != ".." { out[n] = UInt64(e.pointee.d_ino) }
        }
        return out
    }

    @Test func inodeNumbersSurviveCopyUpAndMatchReaddir() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        let m = pair.strataMount
        // Each inode must exist: two failed lstats would compare equal (nil).
        let before = try #require(ino("\(m)/a/f1"))
        #expect(FileOps(m).write("a/f1", "x", flags: O_WRONLY | O_APPEND) == "ok")
        #expect(ino("\(m)/a/f1") == before)                   // st_ino unchanged by copy-up
        let dirBefore = try #require(ino("\(m)/a/sub"))
        #expect(FileOps(m).chmod("a/sub", 0o700) == "ok")
        #expect(ino("\(m)/a/sub") == dirBefore)
        for dir in ["", "a", "a/sub", "b", "dirover"] {
            let listed = dirInos(dir.isEmpty ? m : "\(m)/\(dir)")
            #expect(!listed.isEmpty, "\(dir) lists nothing")
            for (name, dino) in listed {
                let path = dir.isEmpty ? "\(m)/\(name)" : "\(m)/\(dir)/\(name)"
                #expect(ino(path) == dino, "d_ino of \(path) is \(dino), st_ino \(ino(path) ?? 0)")
            }
        }
    }

    // Bugs of fuse-overlayfs 1.10 that Strata must not have, one test each.

    @Test func lowerFileNotReachableInARemovedAndRecreatedDirectory() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] {
            #expect(runProgram("/bin/rm", ["-rf", "\(m)/a/sub"]).status == 0)
            #expect(FileOps(m).mkdir("a/sub") == "ok")
            #expect(FileOps(m).read("a/sub/g") == "ENOENT")
            #expect(FileOps(m).ls("a/sub") == "")
        }
        #expect(pair.upperDiff() == [])
    }

    @Test func hardLinkedLowerFileHasItsLinkCountFromTheFirstStat() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        #expect(FileOps(pair.strataMount).stat("a/h2")?.st_nlink == 2)
        #expect(FileOps(pair.strataMount).stat("a/h1")?.st_nlink == 2)
    }

    @Test func readdirInodeEqualsStatInode() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        let m = pair.strataMount
        #expect(FileOps(m).write("a/h1", "x", flags: O_WRONLY | O_APPEND) == "ok")   // copied up
        let listed = dirInos("\(m)/a")
        #expect(listed["h1"] != nil, "a lists no h1")
        for (name, dino) in listed {
            #expect(ino("\(m)/a/\(name)") == dino, "\(name)")
        }
    }

    @Test func renameOverAWhiteoutHidesTheLowerFileWithoutANeedlessWhiteout() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] {
            #expect(FileOps(m).write("newfile", "new") == "ok")
            #expect(FileOps(m).rename("newfile", "a/f2") == "ok")      // a/f2 is whited out in l2
            #expect(FileOps(m).read("a/f2") == "new")
        }
        var st = stat()
        #expect(lstat("\(pair.strataUpper)/newfile", &st) != 0)        // newfile existed only in upper
        #expect(pair.upperDiff() == [])
        #expect(pair.mergedDiff() == [])
    }

    /// A file open for reading when another handle copies it up reads the
    /// copy afterwards, on the kernel and on Strata with or without
    /// passthrough (lower files are read through the daemon, whose
    /// descriptors move to the copy).
    @Test(arguments: [[String](), ["passthrough=off"]])
    func openFilesSurviveCopyUpOfAnotherHandle(_ options: [String]) throws {
        let pair = try UnionPair(strataOptions: options, build: Fixture.build)
        defer { pair.unmount() }
        for label in ["kernel", "strata"] {
            let m = label == "kernel" ? pair.kernelMount : pair.strataMount
            let ro = open("\(m)/x", O_RDONLY)
            #expect(ro >= 0)
            defer { close(ro) }
            var buf = [UInt8](repeating: 0, count: 64)
            #expect(pread(ro, &buf, 64, 0) > 0)
            #expect(FileOps(m).write("x", "rewritten", flags: O_WRONLY | O_TRUNC) == "ok", "\(label)")
            #expect(FileOps(m).write("x", "+", flags: O_WRONLY | O_APPEND) == "ok", "\(label)")
            #expect(chmod("\(m)/x", 0o600) == 0, "\(label)")
            let n = pread(ro, &buf, 64, 0)
            #expect(String(decoding: buf[0..<max(0, n)], as: UTF8.self) == "rewritten+", "\(label)")
            #expect(FileOps(m).read("x") == "rewritten+", "\(label)")
        }
        #expect(pair.upperDiff() == [])
        #expect(pair.mergedDiff() == [])
    }

    /// O_DIRECT readers of a lower file are served by passthrough, which
    /// the kernel cannot move to a copy: a copy-up while one is open is
    /// refused (ETXTBSY), never half-done, and works once it is closed.
    @Test func copyUpWhileADirectReaderIsOpenIsRefusedCleanly() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        let m = pair.strataMount
        let ro = open("\(m)/x", O_RDONLY | Linux.O_DIRECT)
        #expect(ro >= 0)
        #expect(FileOps(m).write("x", "new", flags: O_WRONLY | O_TRUNC) == "errno\(ETXTBSY)")
        var st = stat()
        #expect(lstat("\(pair.strataUpper)/x", &st) != 0)
        close(ro)
        #expect(FileOps(m).write("x", "new", flags: O_WRONLY | O_TRUNC) == "ok")
        #expect(FileOps(m).read("x") == "new")
    }

    @Test func ociWhiteoutFormatsAreRead() throws {
        let pair = try UnionPair { base in
            Fixture.dir("\(base)/l2/d"); Fixture.write("\(base)/l2/d/old", "old"); Fixture.write("\(base)/l2/gone", "gone")
            Fixture.dir("\(base)/l1/d"); Fixture.write("\(base)/l1/d/.wh..wh..opq", ""); Fixture.write("\(base)/l1/d/new", "new")
            Fixture.write("\(base)/l1/.wh.gone", "")
        }
        defer { pair.unmount() }
        let s = FileOps(pair.strataMount)
        #expect(s.ls("") == "d")
        #expect(s.ls("d") == "new")
        #expect(s.read("gone") == "ENOENT")
        #expect(s.write("gone", "back") == "ok")
        #expect(s.read("gone") == "back")
    }

    /// Xattr whiteouts (kernel 6.7+): an empty file with overlay.whiteout
    /// hides the name on lookup; listings hide it only in a directory marked
    /// overlay.opaque=x. Strata shows exactly what the kernel shows.
    @Test func xattrWhiteoutsInAMarkedDirectoryHideWhatIsBelow() throws {
        let pair = try UnionPair { base in
            for d in ["marked", "plain"] {
                Fixture.dir("\(base)/l2/\(d)"); Fixture.write("\(base)/l2/\(d)/gone", "gone"); Fixture.write("\(base)/l2/\(d)/kept", "kept")
                Fixture.dir("\(base)/l1/\(d)"); Fixture.write("\(base)/l1/\(d)/gone", ""); Fixture.write("\(base)/l1/\(d)/new", "new")
                #expect(setxattr("\(base)/l1/\(d)/gone", "trusted.overlay.whiteout", "", 0, 0) == 0)
            }
            #expect(setxattr("\(base)/l1/marked", "trusted.overlay.opaque", "x", 1, 0) == 0)
        }
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] {
            let ops = FileOps(m)
            #expect(ops.ls("marked") == "kept,new", "\(m)")
            #expect(ops.read("marked/gone") == "ENOENT", "\(m)")
            #expect(ops.ls("plain") == "gone,kept,new", "\(m)")
            #expect(ops.read("plain/gone") == "ENOENT", "\(m)")
            #expect(ops.write("marked/gone", "back") == "ok", "\(m)")
        }
        #expect(pair.mergedDiff() == [])
        #expect(pair.upperDiff() == [])
    }

    /// O_TMPFILE in a lower directory (copied up first): written, changed
    /// and linked into place through /proc, or dropped without a trace;
    /// the merged and upper trees end as the kernel's do.
    @Test func tmpfilesAreWrittenLinkedOrDroppedAsOnTheKernel() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] {
            let fd = open("\(m)/d3only", O_RDWR | Linux.O_TMPFILE, 0o640)
            #expect(fd >= 0, "\(m): errno \(errno)")
            guard fd >= 0 else { continue }
            #expect(write(fd, "temporary", 9) == 9)
            #expect(fchmod(fd, 0o600) == 0)
            #expect(fsetxattr(fd, "user.t", "v", 1, 0) == 0, "\(m): errno \(errno)")
            var st = stat()
            #expect(fstat(fd, &st) == 0 && st.st_size == 9 && st.st_mode & 0o777 == 0o600 && st.st_nlink == 0)
            #expect(linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, "\(m)/d3only/named", Linux.AT_SYMLINK_FOLLOW) == 0, "\(m): errno \(errno)")
            #expect(fstat(fd, &st) == 0 && st.st_nlink == 1)
            var byName = stat()
            #expect(stat("\(m)/d3only/named", &byName) == 0 && byName.st_ino == st.st_ino)
            close(fd)
            #expect(FileOps(m).read("d3only/named") == "temporary")
            let dropped = open("\(m)/a", O_WRONLY | Linux.O_TMPFILE, 0o600)
            #expect(dropped >= 0 && write(dropped, "x", 1) == 1)
            close(dropped)
        }
        #expect(pair.mergedDiff() == [])
        #expect(pair.upperDiff() == [])
    }

    /// Other users go through the kernel's permission checks, which read
    /// ACLs of every directory on the way (the root's too).
    @Test func otherUsersSeeTheSamePermissionsAsOnTheKernel() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        func asBin(_ m: String) -> String {
            let script = "stat -c %a:%u \(m)/a/f1 \(m)/x; cat \(m)/x; echo w >> \(m)/a/f1; echo rc=$?; ls \(m)/a | wc -l"
            let r = runProgram("/usr/bin/setpriv", ["--reuid=1", "--regid=1", "--clear-groups", "--", "/bin/sh", "-c", script])
            return r.stdout + r.stderr.replacingOccurrences(of: m, with: "M")
        }
        #expect(asBin(pair.kernelMount) == asBin(pair.strataMount))
    }

    /// A setuid file written by its unprivileged owner while another
    /// process holds it open: the write succeeds and S_ISUID goes, as in
    /// the kernel, whether the held file is in the upper layer (served by
    /// passthrough) or still below.
    @Test func aSetuidFileWrittenByItsOwnerWhileHeldOpenLosesTheBit() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] {
            let o = FileOps(m)
            #expect(o.write("upper-suid", "u") == "ok")                        // made in the upper
            for f in ["upper-suid", "x"] {                                   // x: a lower file
                #expect(o.lchown(f, 1, 1) == "ok" && o.chmod(f, 0o4755) == "ok")
            }
        }
        func asOwner(_ m: String, _ f: String) -> String {
            let held = open("\(m)/\(f)", O_RDONLY)
            defer { if held >= 0 { close(held) } }
            let r = runProgram("/usr/bin/setpriv", ["--reuid=1", "--regid=1", "--clear-groups", "--", "/bin/sh", "-c",
                                                    "echo more >> \(m)/\(f); echo rc=$?; stat -c %a \(m)/\(f); cat \(m)/\(f)"])
            return r.stdout + r.stderr.replacingOccurrences(of: m, with: "M")
        }
        for f in ["upper-suid", "x"] {
            let k = asOwner(pair.kernelMount, f), s = asOwner(pair.strataMount, f)
            #expect(k == s, "\(f): kernel \(k), strata \(s)")
            #expect(s.hasPrefix("rc=0\n755\n"), "\(f): \(s)")
        }
    }

    /// A user's listxattr lists no `trusted.*` names (they are root's; the
    /// kernel, like ext4, lists them only to CAP_SYS_ADMIN), of a lower
    /// file and of a copied-up one, where root still sees them all.
    @Test func usersAreNotListedTrustedXattrs() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] {
            #expect(setxattr("\(m)/a/top", "trusted.secret", "s", 1, 0) == 0)    // copied up
        }
        func asBin(_ m: String) -> String {
            let py = "import os; print(sorted(os.listxattr('\(m)/a/top')), sorted(os.listxattr('\(m)/a/f1')))"
            let r = runProgram("/usr/bin/setpriv", ["--reuid=1", "--regid=1", "--clear-groups", "--", "/usr/bin/python3", "-c", py])
            return r.stdout + r.stderr.replacingOccurrences(of: m, with: "M")
        }
        let k = asBin(pair.kernelMount), s = asBin(pair.strataMount)
        #expect(k == s, "kernel \(k), strata \(s)")
        #expect(!s.contains("trusted."), "\(s)")
        #expect(FileOps(pair.strataMount).listxattr("a/top").contains("trusted.secret"), "root no longer sees its xattr")
    }

    /// The upper on its own small tmpfs, the lower on the disk: statfs of
    /// the union must be the upper's (as the kernel's), which the two
    /// filesystems' sizes tell apart.
    @Test func statfsReportsTheUpperFilesystem() throws {
        let t = TempDir()
        let l = t.sub("l"), small = t.sub("small"), m = t.sub("m")
        _ = FileOps(l).write("f", "x")
        #expect(runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", small]).status == 0)
        defer { umount2(small, Int32(MNT_DETACH)) }
        _ = FileOps(small).mkdir("u"); _ = FileOps(small).mkdir("w")
        let r = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l),upperdir=\(small)/u,workdir=\(small)/w", m])
        #expect(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        var upper = statvfs(), lower = statvfs(), union = statvfs()
        #expect(statvfs(small, &upper) == 0 && statvfs(l, &lower) == 0 && statvfs(m, &union) == 0)
        #expect(upper.f_blocks != lower.f_blocks, "the test needs two filesystems of different sizes")
        #expect(union.f_blocks == upper.f_blocks && union.f_bsize == upper.f_bsize,
                "union \(union.f_blocks) blocks, upper \(upper.f_blocks), lower \(lower.f_blocks)")
    }
}

extension OverlaySemanticsTests {
    /// A descriptor held on a directory that is then removed (O_RDONLY or
    /// O_PATH; a directory of the upper layer, and one only below, which
    /// leaves a whiteout): what the kernel still serves through it, Strata
    /// serves too, and what it refuses, Strata refuses the same way.
    @Test func aDescriptorHeldOnARemovedDirectoryKeepsServing() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        func run(_ m: String) -> [String] {
            let o = FileOps(m)
            var out: [String] = []
            _ = o.unlink("d3only/n")
            _ = o.mkdir("fresh")
            for dir in ["fresh", "d3only"] {
                for (label, flags) in [("rdonly", O_RDONLY | O_DIRECTORY), ("path", Linux.O_PATH | O_DIRECTORY)] {
                    if label == "path" { _ = o.mkdir(dir) }
                    let fd = open("\(m)/\(dir)", flags | O_CLOEXEC)
                    guard fd >= 0 else { out.append("\(dir) \(label): open \(FileOps.errnoName(errno))"); continue }
                    defer { close(fd) }
                    let removed = o.rmdir(dir)
                    var st = stat()
                    let f = fstat(fd, &st) == 0 ? "ok type=\(st.st_mode & Linux.S_IFMT == Linux.S_IFDIR ? "dir" : "?") nlink=\(st.st_nlink)"
                        : FileOps.errnoName(errno)
                    var buf = [UInt8](repeating: 0, count: 4096)
                    let n = strata_getdents64(fd, &buf, buf.count)
                    let g = n >= 0 ? "ok \(n > 0 ? "entries" : "empty")" : FileOps.errnoName(errno)
                    let x = fsetxattr(fd, "user.held", "v", 1, 0) == 0 ? "ok" : FileOps.errnoName(errno)
                    let gx = fgetxattr(fd, "user.held", &buf, buf.count) >= 0 ? "ok" : FileOps.errnoName(errno)
                    out.append("\(dir) \(label): rmdir \(removed), fstat \(f), getdents \(g), fsetxattr \(x), fgetxattr \(gx)")
                }
            }
            return out
        }
        let k = run(pair.kernelMount), s = run(pair.strataMount)
        for (a, b) in zip(k, s) { #expect(a == b, "kernel: \(a)\nstrata: \(b)") }
    }
}
