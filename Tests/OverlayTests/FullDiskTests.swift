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
