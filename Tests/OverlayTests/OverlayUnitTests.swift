import CStrata
import Foundation
import Overlay
import Sys
import SystemPackage
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The Overlay module on plain temporary directories: no FUSE, no mount.
@Suite struct OverlayUnitTests {
    func make(_ t: TempDir, upper: Bool = true) throws -> Overlay {
        let base = t.sub("base")
        for i in 1...3 { mkdir("\(base)/l\(i)", 0o755) }
        Fixture.build(base)
        var c = OverlayConfig()
        c.lowers = (1...3).map { "\(base)/l\($0)" }
        if upper {
            c.upper = t.sub("u")
            c.work = t.sub("w")
        }
        return try Overlay(c)
    }

    func names(_ o: Overlay, _ n: OverlayNode) throws -> [String] {
        try o.readDirectory(n).map { String(decoding: $0.name, as: UTF8.self) }.sorted()
    }

    func child(_ o: Overlay, _ p: OverlayNode, _ name: String) throws -> OverlayNode {
        try FileName.with(name) { fn in try o.lookup(p, fn).0 }
    }

    @Test func lookupFollowsTheRules() throws {
        let t = TempDir()
        let o = try make(t)
        #expect(try names(o, o.root) == ["a", "b", "d3only", "dirover", "fileover", "gone", "m2", "many", "wh-file", "x"])
        let a = try child(o, o.root, "a")
        #expect(try names(o, a) == ["f1", "h1", "h2", "s", "sub", "top"])     // f2 whited out
        #expect(try names(o, try child(o, o.root, "b")) == ["keep"])          // opaque
        #expect(try names(o, try child(o, o.root, "dirover")) == ["in"])      // dir over a file
        let f = try child(o, o.root, "fileover")
        #expect(!f.isDirectory)                                                // file over a dir
        #expect(throws: Errno.noSuchFileOrDirectory) { try FileName.with("wh-dev") { try o.lookup(o.root, $0) } }
        #expect(throws: Errno.fileNameTooLong) { try FileName.with(String(repeating: "n", count: 256)) { try o.lookup(o.root, $0) } }
    }

    @Test func copyUpBuildsInWorkAndKeepsAttributes() throws {
        let t = TempDir()
        let o = try make(t)
        let x = try child(o, o.root, "x")
        let before = try o.getattr(x)
        try o.copyUp(x)
        var st = stat()
        #expect(lstat("\(t.path)/u/x", &st) == 0)
        #expect(st.st_uid == 1000 && st.st_mode & 0o7777 == 0o600)
        #expect(st.st_mtim.tv_sec == before.st_mtim.tv_sec && st.st_mtim.tv_nsec == before.st_mtim.tv_nsec)
        #expect(try o.getattr(x).st_ino == before.st_ino)                      // the origin's number
        #expect(FileOps("\(t.path)/w/work").ls("") == "")                      // nothing left behind
        // A nested file copies its parents up first.
        let a = try child(o, o.root, "a"), sub = try child(o, a, "sub"), g = try child(o, sub, "g")
        try o.copyUp(g)
        #expect(FileOps("\(t.path)/u/a/sub").read("g") == "g")
    }

    @Test func concurrentCopyUpsBecomeOne() throws {
        let t = TempDir()
        let o = try make(t)
        let many = try child(o, o.root, "many")
        let errors = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            do { try o.copyUp(many) } catch { errors.withLock { $0 += 1 } }
        }
        #expect(errors.withLock { $0 } == 0)
        #expect(FileOps("\(t.path)/u").read("many").count == 100_000)
        #expect(FileOps("\(t.path)/w/work").ls("") == "")
    }

    @Test func deletesLeaveWhiteoutsAndMkdirOverOneIsOpaque() throws {
        let t = TempDir()
        let o = try make(t)
        let a = try child(o, o.root, "a")
        try FileName.with("f1") { try o.unlink(a, $0) }
        var st = stat()
        #expect(lstat("\(t.path)/u/a/f1", &st) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFCHR && st.st_rdev == 0)
        #expect(throws: Errno.directoryNotEmpty) { try FileName.with("sub") { try o.rmdir(a, $0) } }
        let who = Creator(uid: 0, gid: 0)
        try FileName.with("m2") { fn in
            let m2 = try o.lookup(o.root, fn).0
            try FileName.with("f") { try o.unlink(m2, $0) }
            try o.rmdir(o.root, fn)
            _ = try o.mkdir(o.root, fn, mode: 0o755, who: who)
        }
        #expect(TreeSnapshot.xattrs("\(t.path)/u/m2", ["trusted.overlay."])["trusted.overlay.opaque"] == Array("y".utf8))
        #expect(try names(o, try child(o, o.root, "m2")) == [])
    }

    @Test func renameOfAMergedDirectoryIsEXDEV() throws {
        let t = TempDir()
        let o = try make(t)
        #expect(throws: Errno.improperLink) {
            try FileName.with("a") { a in try FileName.with("a2") { try o.rename(o.root, a, o.root, $0, flags: 0) } }
        }
    }

    @Test func readOnlyUnionRefusesWrites() throws {
        let t = TempDir()
        let o = try make(t, upper: false)
        let x = try child(o, o.root, "x")
        #expect(throws: Errno.readOnlyFileSystem) { try o.copyUp(x) }
        #expect(throws: Errno.readOnlyFileSystem) { try FileName.with("x") { try o.unlink(o.root, $0) } }
    }

    @Test func setupErrorsNameTheProblem() throws {
        let t = TempDir()
        var c = OverlayConfig()
        c.lowers = ["\(t.path)/nope"]
        #expect { try Overlay(c) } throws: { "\($0)".contains("nope") }
        c.lowers = [t.sub("l")]
        c.upper = t.sub("u")
        #expect { try Overlay(c) } throws: { "\($0)".contains("workdir") }
        #expect(OverlayConfig.splitLowerdir("a\\:b:c") == ["a:b", "c"])
    }
}

extension OverlayUnitTests {
    /// index=on: a name linked up to an indexed inode and killed before its
    /// count was made relative to the upper again ("L+0" left on the entry)
    /// reports the union's count at every getattr, not the real one.
    @Test func aLinkUpKilledHalfWayKeepsTheUnionsCount() throws {
        let t = TempDir()
        let base = t.sub("base")
        for i in 1...3 { mkdir("\(base)/l\(i)", 0o755) }
        Fixture.build(base)
        var c = OverlayConfig()
        c.lowers = (1...3).map { "\(base)/l\($0)" }
        c.upper = t.sub("u")
        c.work = t.sub("w")
        c.index = true
        do {
            let o = try Overlay(c)
            var change = Overlay.AttrChange()
            change.mode = 0o600
            _ = try o.setattr(try child(o, try child(o, o.root, "a"), "h1"), change)     // into the index
        }
        let entries = try FileManager.default.contentsOfDirectory(atPath: "\(t.path)/w/index").filter { !$0.hasPrefix("#") }
        let entry = try #require(entries.count == 1 ? "\(t.path)/w/index/\(entries[0])" : nil, "index: \(entries)")
        // ovl_link_up's state between its link and its last count.
        #expect(lsetxattr(entry, "trusted.overlay.nlink", "L+0", 3, 0) == 0)
        #expect(link(entry, "\(t.path)/u/a/h2") == 0)
        let o = try Overlay(c)
        let a = try child(o, o.root, "a")
        for name in ["h1", "h2"] {
            let n = try child(o, a, name)
            #expect(try o.getattr(n).st_nlink == 2, "\(name)")
        }
    }
}
