import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The same operations on a plain directory and on a loopback mount of an
/// identical copy must give the same results, errnos and trees; and the
/// mount's tree must be exactly its source's.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct LoopbackDifferentialTests {
    func script(_ o: FileOps) -> [String] {
        var r: [String] = []
        r.append(o.write("a", "alpha"))
        r.append(o.read("a"))
        r.append(o.mkdir("d"))
        r.append(o.mkdir("d"))                       // EEXIST
        r.append(o.write("d/f", "in dir"))
        r.append(o.chmod("d/f", 0o4751))
        r.append(o.lchown("d/f", 1000, 1001))
        r.append(o.utimens("d/f", 1_600_000_000, 123_456_789))
        r.append(o.symlink("../a", "d/s"))
        r.append(o.readlink("d/s"))
        r.append(o.read("d/s"))                      // through the symlink
        r.append(o.link("a", "d/hard"))
        r.append(o.write("b", "bravo"))
        r.append(o.rename("a", "b", flags: Linux.RENAME_NOREPLACE))   // EEXIST
        r.append(o.rename("a", "b", flags: Linux.RENAME_EXCHANGE))
        r.append(o.read("a") + "|" + o.read("b"))
        r.append(o.rename("b", "c"))
        r.append(o.rename("c", "a"))                 // replaces a
        r.append(o.rmdir("d"))                       // ENOTEMPTY
        r.append(o.unlink("d"))                      // EISDIR
        r.append(o.rmdir("a"))                       // ENOTDIR
        r.append(o.setxattr("a", "user.color", "blue"))
        r.append(o.setxattr("a", "user.color", "red", flags: Linux.XATTR_CREATE))  // EEXIST
        r.append(o.setxattr("a", "user.other", "x", flags: Linux.XATTR_REPLACE))    // ENODATA
        r.append(o.setxattr("a", "trusted.t", "tv"))
        r.append(o.getxattr("a", "user.color"))
        r.append(o.getxattr("a", "user.none"))       // ENODATA
        r.append(o.listxattr("a"))
        r.append(o.removexattr("a", "trusted.t"))
        r.append(o.removexattr("a", "trusted.t"))    // ENODATA
        r.append(o.truncate("a", 3))
        r.append(o.read("a"))
        r.append(o.truncate("a", 10_000))
        r.append(o.mknod("fifo", Linux.S_IFIFO | 0o640))
        r.append(o.mknod("chr", Linux.S_IFCHR | 0o600, strata_makedev(1, 3)))
        r.append(o.mknod("wh", Linux.S_IFCHR | 0o000, 0))
        r.append(o.read("missing"))                  // ENOENT
        r.append(o.unlink("missing/x"))              // ENOENT
        r.append(o.write(String(repeating: "n", count: 256), "x"))  // ENAMETOOLONG
        r.append(o.mkdir("e/f"))                     // ENOENT
        r.append(o.write("d/hard", "changed", flags: O_WRONLY | O_APPEND))
        r.append(o.read("a"))
        r.append(o.unlink("d/s"))
        r.append(o.mkdir("e", 0o2775))
        r.append(o.lchown("e", 0, 1234))
        r.append(o.chmod("e", 0o2775))
        r.append(o.mkdir("e/sub"))
        r.append(o.write("e/file", "g"))
        r.append(o.rename("e/file", "d/moved"))
        r.append(o.rename("e", "d/e2"))
        r.append(o.ls("d"))
        r.append(o.ls("d/e2"))
        // A chown that changes nothing still drops setuid, and setgid with
        // group execute, as ext4 does for root (a kept setuid bit after a
        // chown is a security defect).
        for (i, m) in [0o6755, 0o4755, 0o2755, 0o2745, 0o6711].enumerated() {
            r.append(o.write("sx\(i)", "s") + o.chmod("sx\(i)", mode_t(m)))
            r.append(o.lchown("sx\(i)", .max, .max) + " " + o.mode("sx\(i)"))
        }
        r.append(o.chmod("sx0", 0o6755) + o.fchown("sx0", .max, .max) + " " + o.mode("sx0"))
        r.append(o.chmod("sx0", 0o6755) + o.lchown("sx0", 0, 0) + " " + o.mode("sx0"))
        r.append(o.chmod("d/e2", 0o2775) + o.lchown("d/e2", .max, .max) + " " + o.mode("d/e2"))
        return r
    }

    @Test func sameResultsAsAPlainDirectory() throws {
        let t = TempDir()
        let ref = t.sub("ref"), src = t.sub("src"), mnt = t.sub("mnt")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        let want = script(FileOps(ref))
        let got = script(FileOps(mnt))
        for (i, (w, g)) in zip(want, got).enumerated() {
            #expect(w == g, "step \(i): plain directory gave \(w), loopback gave \(g)")
        }
        let refTree = TreeSnapshot.take(ref, times: false)
        let srcTree = TreeSnapshot.take(src, times: false)
        #expect(TreeSnapshot.diff(refTree, srcTree, labels: ("plain", "source")) == [])
        // The mount shows exactly its source, times included.
        let mntTree = TreeSnapshot.take(mnt), srcTimes = TreeSnapshot.take(src)
        #expect(TreeSnapshot.diff(srcTimes, mntTree, labels: ("source", "mount")) == [])
        // The explicitly set nanosecond mtime survived.
        #expect(FileOps(mnt).stat("d/f").map { $0.st_mtim.tv_nsec } == 123_456_789)
        // setgid directory: the new subdirectory inherited gid and the bit.
        let sub = FileOps(mnt).stat("d/e2/sub")
        #expect(sub.map { $0.st_gid } == 1234)
        #expect(sub.map { $0.st_mode & 0o2000 } == 0o2000)
    }

    @Test func inodeNumbersMatchSourceAndReaddir() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        for i in 0..<50 { _ = FileOps(src).write("f\(i)", "\(i)") }
        _ = FileOps(src).mkdir("dir")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        guard let d = opendir(mnt) else { Issue.record("opendir failed"); return }
        defer { closedir(d) }
        var seen = 0
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name == "." || name == ".." { continue }
            let st = FileOps(mnt).stat(name), sst = FileOps(src).stat(name)
            #expect(st?.st_ino == e.pointee.d_ino, "d_ino of \(name)")
            #expect(st?.st_ino == sst?.st_ino, "st_ino of \(name)")
            seen += 1
        }
        #expect(seen == 51)
    }
}
