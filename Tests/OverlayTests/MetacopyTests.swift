import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// metacopy=on against the kernel's overlayfs with metacopy=on: every
/// change of a lower file's metadata, a move, a link, then a write, each
/// view compared after the change and again after a remount; at the end
/// each side's layers mounted by the other (the format is the kernel's).
extension KernelDifferentialTests {
    static func metacopyBuild(_ base: String) {
        Fixture.build(base)
        // A file big enough that copying its data would show.
        let fd = open("\(base)/l3/big", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        for i in 0..<4 {
            for j in 0..<chunk.count { chunk[j] = UInt8(truncatingIfNeeded: i &* 31 &+ j &* 7) }
            _ = chunk.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        }
        close(fd)
    }

    /// What a user sees of a path: content, mode, owner, size, links and
    /// blocks (the data's, for a metadata-only copy).
    static func seen(_ o: FileOps, _ p: String) -> String {
        guard let st = o.stat(p) else { return "ENOENT" }
        var content = "-"
        if st.st_mode & Linux.S_IFMT == Linux.S_IFREG {
            // The head and the tail: enough to tell whose data it is.
            let fd = open(o.path(p), O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return FileOps.errnoName(strata_errno()) }
            defer { close(fd) }
            var head = [UInt8](repeating: 0, count: 16), tail = [UInt8](repeating: 0, count: 16)
            let h = pread(fd, &head, 16, 0), t = pread(fd, &tail, 16, max(0, off_t(st.st_size) - 16))
            content = "\(head.prefix(max(0, h)))..\(tail.prefix(max(0, t)))"
        }
        // Blocks as what they say of the data (all there, or a sparse
        // copy's), not as a count that the layout of xattrs changes.
        let data = Int64(st.st_blocks) * 512 >= Int64(st.st_size) ? "data" : "sparse"
        return "\(content)|\(String(st.st_mode & 0o7777, radix: 8))|\(st.st_uid):\(st.st_gid)|\(st.st_size)|\(st.st_nlink)|\(data)"
    }

    @Test func metacopyMatchesTheKernel() throws {
        let pair = try UnionPair(metacopy: true, build: Self.metacopyBuild)
        defer { pair.unmount() }
        let changes: [(String, @Sendable (FileOps) -> String)] = [
            ("chown a lower file", { $0.lchown("big", 1000, 1000) }),
            ("chmod a lower file", { $0.chmod("many", 0o600) }),
            ("touch a lower file", { $0.utimens("a/sub/g", 1000, 0) }),
            ("set an xattr on a lower file", { $0.setxattr("x", "user.k", "v") }),
            ("rename a metadata-only copy in its directory", { $0.lchown("a/f1", 1000, 0) + $0.rename("a/f1", "a/f1m") }),
            ("move it to another directory", { $0.rename("a/f1m", "b/f1m") }),
            ("rename a lower file", { $0.rename("a/top", "top2") }),
            ("link a lower file", { $0.link("d3only/n", "n-link") }),
            ("chown one name of a lower hard link", { $0.lchown("a/h1", 1000, 1000) }),
            ("write to a metadata-only copy", { $0.write("many", "appended", flags: O_WRONLY | O_APPEND) }),
            ("truncate a lower file", { $0.truncate("x", 1) }),
            ("move a directory holding one", { $0.lchown("a/sub/h", 1000, 0) + $0.rename("a/sub", "sub2") }),
            ("write to a moved one", { $0.write("b/f1m", "new", flags: O_WRONLY | O_TRUNC) }),
            ("unlink one", { $0.unlink("top2") }),
        ]
        let views: [(String, @Sendable (FileOps) -> String)] = [
            ("big", { Self.seen($0, "big") }), ("many", { Self.seen($0, "many") }), ("g", { Self.seen($0, "a/sub/g") + Self.seen($0, "sub2/g") }),
            ("x", { Self.seen($0, "x") + $0.getxattr("x", "user.k") }), ("f1", { Self.seen($0, "a/f1") + Self.seen($0, "a/f1m") + Self.seen($0, "b/f1m") }),
            ("top", { Self.seen($0, "a/top") + Self.seen($0, "top2") }), ("n", { Self.seen($0, "d3only/n") + Self.seen($0, "n-link") }),
            ("h", { Self.seen($0, "a/h1") + Self.seen($0, "a/h2") }), ("sub", { Self.seen($0, "sub2/h") + $0.ls("sub2") + $0.ls("a") }),
        ]
        compare(pair, views.map { v in ("\(v.0) at first", { v.1($0) }) })
        for change in changes {
            // The trees once per change, after the remount.
            compare(pair, [(change.0, { change.1($0) })], trees: false)
            compare(pair, views.map { v in ("\(v.0) after '\(change.0)'", { v.1($0) }) }, trees: false)
            try pair.remount()
            compare(pair, views.map { v in ("\(v.0) after '\(change.0)', remounted", { v.1($0) }) })
        }
        // Not only agreement: the chown left the data below (the upper copy
        // is a sparse file of the size) and the write brought it up.
        var up = stat()
        #expect(lstat("\(pair.strataUpper)/big", &up) == 0 && up.st_size == 1 << 18 && up.st_blocks < 64)
        #expect(lgetxattr("\(pair.strataUpper)/big", "trusted.overlay.metacopy", nil, 0) == 0)
        #expect(lgetxattr("\(pair.strataUpper)/many", "trusted.overlay.metacopy", nil, 0) < 0)
        // Each side's layers mounted by the other show the same.
        try pair.remountCrossed()
        compare(pair, views.map { v in ("\(v.0), layers crossed", { v.1($0) }) })
    }

    /// Without metacopy=on, a metadata-only copy in the upper layer is
    /// refused as the kernel refuses it (EPERM), never shown as its empty
    /// upper file.
    @Test func aMetacopyUpperWithoutMetacopyIsRefused() throws {
        let pair = try UnionPair(metacopy: true, build: Self.metacopyBuild)
        defer { pair.unmount() }
        compare(pair, [("chown", { $0.lchown("big", 1000, 1000) })])
        pair.unmount()
        let pair2Options = ["lowerdir=\(pair.strataUpper)/../l1:\(pair.strataUpper)/../l2:\(pair.strataUpper)/../l3",
                            "upperdir=\(pair.strataUpper)", "workdir=\(pair.strataUpper)/../w", "redirect_dir=on"].joined(separator: ",")
        let m = "\(pair.strataUpper)/../m"
        let pid = try Spawn.start(MountEnvironment.binary, ["strata", "mount", "-f", "-o", pair2Options, m])
        defer {
            umount2(m, Int32(MNT_DETACH))
            var st: Int32 = 0
            waitpid(pid, &st, 0)
        }
        #expect(waitFor(10) { isMountPoint(m) })
        #expect(FileOps(m).read("big") == "EPERM")
        #expect(FileOps(m).read("a/top") == "top only")
    }
}
