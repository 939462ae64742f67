import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The upper layer's filesystem full (a small tmpfs, out of space or of
/// inodes): copy-up, create, mkdir, rename and whiteouts fail with ENOSPC
/// exactly where the kernel's overlayfs fails, nothing half-made is visible,
/// work/ holds nothing, and once space is back the same calls work.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct FullDiskTests {
    /// Steps run on both mounts in turn; their results must agree.
    func steps(_ o: FileOps, _ free: () -> Void) -> [String] {
        var r: [String] = []
        r.append(o.write("filler", String(repeating: "f", count: 2_500_000)))
        r.append(o.write("big", "+", flags: O_WRONLY | O_APPEND))            // copy-up of 3 MB: ENOSPC
        r.append("\(o.stat("big")?.st_size ?? -1)")
        r.append(o.rename("big", "big-renamed"))                              // copy-up again: ENOSPC
        var made = 0
        while made < 200, o.write("n\(made)", "") == "ok" { made += 1 }       // until the inodes run out
        r.append(o.write("one-more", "x"))
        r.append(o.mkdir("newdir"))
        r.append(o.unlink("d/f1"))                                            // a whiteout needs an inode: ENOSPC
        r.append(o.rename("small", "small-renamed"))
        r.append(o.ls("d") + "|" + o.read("small"))
        free()
        for i in 0..<made { _ = o.unlink("n\(i)") }
        _ = o.unlink("filler")
        r.append(o.write("big", "+", flags: O_WRONLY | O_APPEND))            // space is back: all work
        r.append("\(o.stat("big")?.st_size ?? -1)")
        r.append(o.unlink("d/f1"))
        r.append(o.mkdir("newdir"))
        r.append(o.rename("small", "small-renamed"))
        r.append(o.ls(""))
        return r
    }

    @Test func enospcMatchesTheKernelAndTheMountRecovers() throws {
        let t = TempDir("strata-full")
        let l = t.sub("l")
        FileManager.default.createFile(atPath: "\(l)/big", contents: Data(repeating: 0x42, count: 3_000_000))
        FileManager.default.createFile(atPath: "\(l)/small", contents: Data("small\n".utf8))
        mkdir("\(l)/d", 0o755)
        for i in 1...3 { FileManager.default.createFile(atPath: "\(l)/d/f\(i)", contents: Data("\(i)\n".utf8)) }
        var results: [String: [String]] = [:]
        var works: [String: [String]] = [:]
        var trees: [String: [String: EntryState]] = [:]
        for side in ["kernel", "strata"] {
            let fs = t.sub("\(side)-fs"), m = t.sub("\(side)-m")
            #expect(runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=4m,nr_inodes=48", "tmpfs", fs]).status == 0)
            defer { umount2(fs, Int32(MNT_DETACH)) }
            mkdir("\(fs)/u", 0o755)
            mkdir("\(fs)/w", 0o755)
            let opts = "lowerdir=\(l),upperdir=\(fs)/u,workdir=\(fs)/w"
            let r = side == "kernel"
                ? runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", opts + ",redirect_dir=off,index=off,metacopy=off,xino=off", m])
                : runProgram(MountEnvironment.binary, ["mount", "-o", opts, m])
            try #require(r.status == 0, "\(side) mount: \(r.stderr)")
            defer { umount2(m, Int32(MNT_DETACH)) }
            results[side] = steps(FileOps(m)) {
                works[side] = ((try? FileManager.default.contentsOfDirectory(atPath: "\(fs)/w/work")) ?? []).filter { $0 != "#whiteout" }
            }
            trees[side] = TreeSnapshot.take(m, times: false)
        }
        let k = results["kernel"] ?? [], s = results["strata"] ?? []
        #expect(k.count == s.count)
        for (i, (a, b)) in zip(k, s).enumerated() { #expect(a == b, "step \(i): kernel \(a), strata \(b)") }
        // The copy-up and the whiteout failed for want of space, and worked once it was back.
        #expect(k.count == 15 && k[1] == "ENOSPC" && k[2] == "3000000" && k[6] == "ENOSPC" && k[9] == "ok" && k[10] == "3000001" && k[11] == "ok",
                "the disk did not fill where planned: \(k)")
        #expect(works["strata"] == [], "work/ holds leftovers of the failed copy-ups: \(works["strata"] ?? [])")
        #expect(TreeSnapshot.diff(trees["kernel"] ?? [:], trees["strata"] ?? [:], labels: ("kernel", "strata")) == [])
    }
}

/// EIO from the upper filesystem: an ext4 on a loop device whose backing
/// file is served by a Strata loopback that is then killed, so that every
/// write reaching the disk fails as on a dying device. Copy-up, create,
/// rename and whiteouts give the kernel's errors, nothing half-made is
/// visible, and the mount keeps serving what it can.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct FailingUpperTests {
    @Test func eioFromTheUpperMatchesTheKernel() throws {
        let t = TempDir("strata-eio")
        let (src, lb, x, l) = (t.sub("src"), t.sub("lb"), t.sub("x"), t.sub("l"))
        let (m, km) = (t.sub("m"), t.sub("km"))
        try #require(runProgram("/usr/bin/truncate", ["-s", "256M", "\(src)/img"]).status == 0)
        try #require(runProgram("/sbin/mkfs.ext4", ["-q", "-F", "-O", "^has_journal", "\(src)/img"]).status == 0)
        let lbPID = try Spawn.start(MountEnvironment.binary, ["strata", "loopback", "-f", "-o", "passthrough=off", src, lb])
        defer { kill(lbPID, SIGKILL); _ = Spawn.wait(lbPID); umount2(lb, Int32(MNT_DETACH)) }
        try #require(waitFor(10) { isMountPoint(lb) })
        let loop = runProgram("/sbin/losetup", ["-f", "--show", "--direct-io=off", "\(lb)/img"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(loop.hasPrefix("/dev/loop"), "losetup")
        defer { _ = runProgram("/sbin/losetup", ["-d", loop]) }
        try #require(runProgram("/bin/mount", ["-o", "errors=continue", loop, x]).status == 0)
        defer { umount2(x, Int32(MNT_DETACH)) }
        for d in ["u", "w", "ku", "kw"] { mkdir("\(x)/\(d)", 0o755) }
        FileManager.default.createFile(atPath: "\(l)/big", contents: Data((0..<8_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }))
        FileManager.default.createFile(atPath: "\(l)/small", contents: Data("small\n".utf8))
        mkdir("\(l)/d", 0o755)
        FileManager.default.createFile(atPath: "\(l)/d/f1", contents: Data("1\n".utf8))
        sync()
        let s = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(l),upperdir=\(x)/u,workdir=\(x)/w", m])
        try #require(s.status == 0, "\(s.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        try #require(runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o",
                                               "lowerdir=\(l),upperdir=\(x)/ku,workdir=\(x)/kw,index=off,metacopy=off,redirect_dir=off,xino=off", km]).status == 0)
        defer { umount2(km, Int32(MNT_DETACH)) }
        // The disk dies.
        kill(lbPID, SIGKILL)
        _ = Spawn.wait(lbPID)
        // What is defined once the disk is gone: a copy-up fsyncs its data
        // (both mounts do), so one always fails with EIO and leaves nothing
        // half-made. Whether a whiteout or a new file can be made depends
        // on which of the upper's blocks the page cache still holds (the
        // writes themselves only dirty the cache), which differs between
        // the two mounts and from run to run: those steps may succeed or
        // fail with EIO, on each mount on its own, and what the mount shows
        // afterwards must agree with its own answer. Any other errno fails.
        struct Run {
            var copyUp = "", size = "", rename = "", small = "", unlink = "", f1 = "", create = "", big = ""
        }
        func steps(_ o: FileOps) -> Run {
            var r = Run()
            r.copyUp = o.write("big", "+", flags: O_WRONLY | O_APPEND)
            r.size = "\(o.stat("big")?.st_size ?? -1)"
            r.rename = o.rename("small", "small2")                 // copy-up again
            r.small = o.read("small")
            r.unlink = o.unlink("d/f1")                            // a whiteout
            r.f1 = o.read("d/f1")
            r.create = o.write("new", "n")
            r.big = o.read("big").count == 8_000_000 ? "big intact" : "big changed"
            return r
        }
        for (label, mount) in [("kernel", km), ("strata", m)] {
            let o = FileOps(mount)
            let r = steps(o)
            #expect(r.copyUp == "EIO", "\(label): a copy-up on a dead disk answered \(r.copyUp)")
            #expect(r.size == "8000000" && r.big == "big intact", "\(label): \(r.size) \(r.big)")
            #expect(r.rename == "EIO" && r.small == "small\n", "\(label): rename \(r.rename), small \(r.small)")
            #expect(r.unlink == "ok" || r.unlink == "EIO", "\(label): unlink answered \(r.unlink)")
            #expect(r.f1 == (r.unlink == "ok" ? "ENOENT" : "1\n") || (r.unlink == "EIO" && r.f1 == "EIO"),
                    "\(label): after an unlink that answered \(r.unlink), d/f1 reads \(r.f1)")
            #expect(r.create == "ok" || r.create == "EIO", "\(label): create answered \(r.create)")
            if r.create == "ok" { #expect(o.read("new") == "n", "\(label): a created file reads \(o.read("new"))") }
            #expect(o.stat("small2") == nil, "\(label): a failed rename left small2")
        }
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: "\(x)/w/work")) ?? []).filter { $0 != "#whiteout" }
        #expect(left.isEmpty, "a failed copy-up left \(left) in work/")
    }
}
