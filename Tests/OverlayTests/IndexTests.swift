import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// index=on against the kernel's overlayfs with index=on: lower hard links
/// stay one inode across copy-up, link counts follow every link, unlink and
/// rename, each view compared after the change and after a remount; at the
/// end each side's layers mounted by the other (the kernel's index format).
extension KernelDifferentialTests {
    static func indexBuild(_ base: String) {
        Fixture.build(base)
        // Three names of one file, one of them in another directory, in the
        // middle layer; two names of another in the bottom layer.
        for d in ["l2/hl", "l2/other", "l3/pair"] { mkdir("\(base)/\(d)", 0o755) }
        FileManager.default.createFile(atPath: "\(base)/l2/hl/a", contents: Data("shared data\n".utf8))
        link("\(base)/l2/hl/a", "\(base)/l2/hl/b")
        link("\(base)/l2/hl/a", "\(base)/l2/other/c")
        FileManager.default.createFile(atPath: "\(base)/l3/pair/p", contents: Data("pair\n".utf8))
        link("\(base)/l3/pair/p", "\(base)/l3/pair/q")
        FileManager.default.createFile(atPath: "\(base)/l3/pair/r", contents: Data("third\n".utf8))
        link("\(base)/l3/pair/r", "\(base)/l3/pair/s")
    }

    /// Which of `names` are one inode, as a user tells it: st_ino equal.
    static func sameInode(_ o: FileOps, _ names: [String]) -> String {
        let inos = names.map { o.stat($0).map { UInt64($0.st_ino) } }
        return names.indices.map { i in
            guard let x = inos[i] else { return "-" }
            return String(inos.firstIndex { $0 == x } ?? i)
        }.joined(separator: ",")
    }

    @Test func indexMatchesTheKernel() throws {
        try indexScenario(metacopy: false)
    }

    /// Both options together (the kernel allows it): the index then also
    /// holds what metadata-only copy-up leaves.
    @Test func indexWithMetacopyMatchesTheKernel() throws {
        try indexScenario(metacopy: true)
    }

    func indexScenario(metacopy: Bool) throws {
        let pair = try UnionPair(metacopy: metacopy, index: true, build: Self.indexBuild)
        defer { pair.unmount() }
        let names = ["hl/a", "hl/b", "other/c", "pair/p", "pair/q", "pair/r", "pair/s", "hl/new", "hl/moved", "pair/p2"]
        let changes: [(String, @Sendable (FileOps) -> String)] = [
            ("chmod one name", { $0.chmod("hl/b", 0o600) }),
            ("write through another", { $0.write("other/c", "rewritten\n", flags: O_WRONLY | O_TRUNC) }),
            ("link a new name", { $0.link("hl/a", "hl/new") }),
            ("unlink a lower name", { $0.unlink("hl/b") }),
            ("rename a lower name", { $0.rename("other/c", "hl/moved") }),
            ("unlink an upper name", { $0.unlink("hl/new") }),
            ("unlink a name never copied up", { $0.unlink("pair/p") }),
            ("rename over a lower hard link", { $0.rename("pair/r", "pair/q") }),
            ("link the last name of one", { $0.link("pair/q", "pair/p2") }),
            ("unlink every name of one", { $0.unlink("hl/a") + $0.unlink("hl/moved") }),
            ("unlink the rest", { $0.unlink("pair/q") + $0.unlink("pair/s") + $0.unlink("pair/p2") }),
        ]
        var views: [(String, @Sendable (FileOps) -> String)] = names.map { n -> (String, @Sendable (FileOps) -> String) in
            (n, { @Sendable o in Self.seen(o, n) })
        }
        views.append(("one inode", { @Sendable o in Self.sameInode(o, names) }))
        views.append(("hl", { @Sendable o in o.ls("hl") }))
        views.append(("pair", { @Sendable o in o.ls("pair") }))
        compare(pair, views.map { v in ("\(v.0) at first", { v.1($0) }) }, trees: false)
        for change in changes {
            compare(pair, [(change.0, { change.1($0) })], trees: false)
            compare(pair, views.map { v in ("\(v.0) after '\(change.0)'", { v.1($0) }) }, trees: false)
            try pair.remount()
            compare(pair, views.map { v in ("\(v.0) after '\(change.0)', remounted", { v.1($0) }) }, trees: false)
            #expect(pair.mergedDiffBeyondLinkUp() == [], "merged views differ after '\(change.0)'")
        }
        // Every name of both files is gone: so are their index entries.
        #expect(FileOps("\(pair.strataUpper)/../w/index").ls("") == "")
        #expect(FileOps("\(pair.kernelUpper)/../w/index").ls("") == "")
        try pair.remountCrossed()
        compare(pair, views.map { v in ("\(v.0), layers crossed", { v.1($0) }) }, trees: false)
        #expect(pair.mergedDiffBeyondLinkUp() == [], "merged views differ, layers crossed")
    }

    /// The index of each side, mounted by the other while some names are
    /// still indexed: the kernel finds Strata's entries (origin handles,
    /// link counts) and Strata the kernel's.
    /// With metacopy=on too, the entries of a chmod are metadata only.
    @Test(arguments: [false, true])
    func indexEntriesAreReadByTheOther(metacopy: Bool) throws {
        let pair = try UnionPair(metacopy: metacopy, index: true, build: Self.indexBuild)
        defer { pair.unmount() }
        let names = ["hl/a", "hl/b", "other/c", "pair/p", "pair/q", "hl/n2"]
        compare(pair, [("chmod", { $0.chmod("hl/a", 0o640) }), ("chown", { $0.lchown("pair/p", 1000, 1000) }),
                       ("write", { $0.write("pair/q", "new\n", flags: O_WRONLY | O_TRUNC) }),
                       ("unlink", { $0.unlink("hl/b") }), ("link", { $0.link("other/c", "hl/n2") })], trees: false)
        var views: [(String, @Sendable (FileOps) -> String)] = names.map { n -> (String, @Sendable (FileOps) -> String) in (n, { @Sendable o in Self.seen(o, n) }) }
        views.append(("one inode", { @Sendable o in Self.sameInode(o, names) }))
        try pair.remountCrossed()
        compare(pair, views.map { v in ("\(v.0), layers crossed", { v.1($0) }) }, trees: false)
        #expect(pair.mergedDiffBeyondLinkUp() == [])
        compare(pair, [("unlink after crossing", { $0.unlink("hl/a") + $0.unlink("pair/p") })], trees: false)
        compare(pair, views.map { v in ("\(v.0), crossed, after unlink", { v.1($0) }) }, trees: false)
        try pair.remount()
        compare(pair, views.map { v in ("\(v.0), back", { v.1($0) }) }, trees: false)
    }

    /// An upper made with index=on over other lower layers is refused, as
    /// the kernel refuses it (ESTALE), in one line; an index=off mount of it
    /// is not.
    @Test func anIndexOverOtherLayersIsRefused() throws {
        let t = TempDir("strata-index")
        for d in ["l", "l2", "u", "w", "m", "ku", "kw"] { mkdir("\(t.path)/\(d)", 0o755) }
        _ = FileOps("\(t.path)/l").write("f", "x")
        let first = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(t.path)/l,upperdir=\(t.path)/u,workdir=\(t.path)/w,index=on", "\(t.path)/m"])
        #expect(first.status == 0, "\(first.stderr)")
        umount2("\(t.path)/m", Int32(MNT_DETACH))
        #expect(waitFor(5) { !isMountPoint("\(t.path)/m") })
        let other = "lowerdir=\(t.path)/l2,upperdir=\(t.path)/u,workdir=\(t.path)/w"
        let k = runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", other + ",index=on", "\(t.path)/m"])
        #expect(k.status != 0, "the kernel mounted it")
        if k.status == 0 { umount2("\(t.path)/m", Int32(MNT_DETACH)) }
        var r: (status: Int32, stdout: String, stderr: String) = (0, "", "")
        for _ in 0..<50 {
            r = runProgram(MountEnvironment.binary, ["mount", "-o", other + ",index=on", "\(t.path)/m"])
            if !r.stderr.contains("in use") { break }
            usleep(100_000)
        }
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("other lower layers"), "\(r.stderr)")
        #expect(!isMountPoint("\(t.path)/m"))
        let off = runProgram(MountEnvironment.binary, ["mount", "-o", other + ",index=off", "\(t.path)/m"])
        #expect(off.status == 0, "\(off.stderr)")
        umount2("\(t.path)/m", Int32(MNT_DETACH))
    }
}

extension KernelDifferentialTests {
    /// Upper on a tmpfs (a UUID of its own), lower on the disk's
    /// filesystem: handles carry each filesystem's UUID, and the kernel
    /// keeps the index on over them (one lower filesystem, even without a
    /// UUID, is allowed), as Strata does; each mounts what the other wrote.
    @Test func anIndexAcrossFilesystems() throws {
        let t = TempDir("strata-index-fs")
        for d in ["l", "fs", "km", "sm"] { mkdir("\(t.path)/\(d)", 0o755) }
        #expect(runProgram("/bin/mount", ["-t", "tmpfs", "tmpfs", "\(t.path)/fs"]).status == 0)
        defer { umount2("\(t.path)/fs", Int32(MNT_DETACH)) }
        for d in ["ku", "kw", "su", "sw"] { mkdir("\(t.path)/fs/\(d)", 0o755) }
        _ = FileOps("\(t.path)/l").write("a", "linked\n")
        link("\(t.path)/l/a", "\(t.path)/l/b")
        func kernel(_ u: String, _ w: String) -> Bool {
            runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o",
                                      "lowerdir=\(t.path)/l,upperdir=\(t.path)/fs/\(u),workdir=\(t.path)/fs/\(w),index=on", "\(t.path)/km"]).status == 0
        }
        func strata(_ u: String, _ w: String) -> (status: Int32, stdout: String, stderr: String) {
            runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(t.path)/l,upperdir=\(t.path)/fs/\(u),workdir=\(t.path)/fs/\(w),index=on", "\(t.path)/sm"])
        }
        func unmountBoth() {
            umount2("\(t.path)/km", Int32(MNT_DETACH))
            umount2("\(t.path)/sm", Int32(MNT_DETACH))
            usleep(200_000)
        }
        defer { unmountBoth() }
        #expect(kernel("ku", "kw"))
        let s = strata("su", "sw")
        // No warning (the io_uring hint of a kernel that has it switched off aside).
        let warnings = s.stderr.split(separator: "\n").filter { !$0.contains("FUSE over io_uring is in this kernel") }
        #expect(s.status == 0 && warnings.isEmpty, "\(s.stderr)")
        for m in ["km", "sm"] {
            let o = FileOps("\(t.path)/\(m)")
            #expect(o.chmod("a", 0o600) == "ok")
            #expect(o.write("b", "more\n", flags: O_WRONLY | O_APPEND) == "ok")
        }
        func view(_ m: String) -> String {
            let o = FileOps("\(t.path)/\(m)")
            return ["a", "b"].map { KernelDifferentialTests.seen(o, $0) }.joined(separator: " ") + " " + KernelDifferentialTests.sameInode(o, ["a", "b"])
        }
        #expect(view("km") == view("sm"))
        #expect(FileOps("\(t.path)/fs/sw/index").ls("").count > 20, "no index entry")
        unmountBoth()
        // Crossed: the kernel over Strata's upper, Strata over the kernel's.
        #expect(kernel("su", "sw"))
        let c = strata("ku", "kw")
        #expect(c.status == 0, "\(c.stderr)")
        #expect(view("km") == view("sm"))
        #expect(FileOps("\(t.path)/km").read("a") == "linked\nmore\n")
    }
}

extension KernelDifferentialTests {
    /// index=on with metacopy=on: removing one name of a lower hard link
    /// (`rm -rf` of its directory) indexes its metadata alone, as the
    /// kernel does: an index entry marked `overlay.metacopy` holding no
    /// data, the other names still reading the data from below, before and
    /// after a remount.
    @Test func removingOneNameOfALowerHardLinkIndexesItsMetadataOnly() throws {
        let pair = try UnionPair(metacopy: true, index: true, build: Self.indexBuild)
        defer { pair.unmount() }
        compare(pair, [
            ("rm -rf one name's directory", { o in
                runProgram("/bin/rm", ["-rf", "\(o.root)/hl"]).status == 0 ? "ok" : "failed" }),
            ("the other name", { $0.read("other/c") }),
            ("its link count", { "\($0.stat("other/c")?.st_nlink ?? 0)" }),
        ])
        func indexEntries(_ upper: String) -> String {
            let dir = "\(upper)/../w/index"
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { !$0.hasPrefix("#") }.sorted()
            return names.map { n -> String in
                var st = stat()
                lstat("\(dir)/\(n)", &st)
                let meta = lgetxattr("\(dir)/\(n)", "trusted.overlay.metacopy", nil, 0) >= 0
                // A metadata-only entry is a hole of the data's size: no data blocks.
                return "\(st.st_size) bytes, \(meta ? "metadata only" : "data"), \(st.st_blocks <= 8 ? "no data blocks" : "\(st.st_blocks) blocks")"
            }.joined(separator: "; ")
        }
        #expect(indexEntries(pair.kernelUpper) == indexEntries(pair.strataUpper),
                "kernel: \(indexEntries(pair.kernelUpper)); strata: \(indexEntries(pair.strataUpper))")
        try pair.remount()
        compare(pair, [("the other name remounted", { $0.read("other/c") }), ("remounted count", { "\($0.stat("other/c")?.st_nlink ?? 0)" })])
    }

    /// Every whiteout is a link of one shared 0/0 device, kept where the
    /// kernel keeps it: in `work/index/` with index=on (the kernel's workdir
    /// is its indexdir then), in `work/work/` without. Removals of lower
    /// files, of names of a lower hard link, of an upper file over a lower
    /// one and of a merged directory each leave one more link of it.
    @Test(arguments: [false, true])
    func whiteoutsAreLinksOfTheSharedOneWhereTheKernelKeepsIt(index: Bool) throws {
        let pair = try UnionPair(metacopy: index, index: index, build: Self.indexBuild)
        defer { pair.unmount() }
        compare(pair, [
            ("rm a lower file", { $0.unlink("a/f2") }),
            ("rm -rf a lower hard link's directory", { o in
                runProgram("/bin/rm", ["-rf", "\(o.root)/hl"]).status == 0 ? "ok" : "failed" }),
            ("write a lower file", { $0.write("a/f1", "changed") }),
            ("rm it", { $0.unlink("a/f1") }),
            ("rm -rf a merged directory", { o in
                runProgram("/bin/rm", ["-rf", "\(o.root)/a"]).status == 0 ? "ok" : "failed" }),
        ])
        func whiteouts(_ upper: String) -> String {
            func devices(_ dir: String, recursive: Bool) -> [UInt64] {
                guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
                var out: [UInt64] = []
                for n in names {
                    var st = stat()
                    guard lstat("\(dir)/\(n)", &st) == 0 else { continue }
                    if st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 0 { out.append(UInt64(st.st_ino)) }
                    if recursive && st.st_mode & S_IFMT == S_IFDIR { out += devices("\(dir)/\(n)", recursive: true) }
                }
                return out
            }
            let made = devices(upper, recursive: true)
            let inIndex = Set(devices("\(upper)/../w/index", recursive: false))
            let inWork = Set(devices("\(upper)/../w/work", recursive: false))
            let inodes = Set(made)
            return "\(made.count) whiteouts, \(inodes.count) inode(s), shared one in "
                + (inodes.isSubset(of: inIndex) && !inIndex.isEmpty ? "index/" : inodes.isSubset(of: inWork) && !inWork.isEmpty ? "work/" : "neither")
        }
        let k = whiteouts(pair.kernelUpper), s = whiteouts(pair.strataUpper)
        #expect(k == s, "kernel: \(k); strata: \(s)")
        #expect(k.contains(index ? "index/" : "work/"), "the kernel: \(k)")
    }
}
