import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Strata against the kernel's overlayfs on identical layers: every step's
/// result and errno, the merged trees and the upper layers must agree.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct KernelDifferentialTests {
    /// Runs each step on both mounts and expects the same answer; returns
    /// Strata's answers by label, for tests that also check the value.
    @discardableResult
    func compare(_ pair: UnionPair, _ steps: [(String, (FileOps) -> String)], trees: Bool = true,
                 sourceLocation: SourceLocation = #_sourceLocation) -> [String: String] {
        let k = FileOps(pair.kernelMount), s = FileOps(pair.strataMount)
        var answers: [String: String] = [:]
        for (label, step) in steps {
            let a = step(k), b = step(s)
            #expect(a == b, "\(label): kernel \(a), strata \(b)", sourceLocation: sourceLocation)
            answers[label] = b
        }
        if trees {
            #expect(pair.mergedDiff() == [], "merged views differ", sourceLocation: sourceLocation)
            #expect(pair.upperDiff() == [], "upper layers differ", sourceLocation: sourceLocation)
        }
        return answers
    }

    @Test func lookupRules() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        compare(pair, [
            ("top-most wins", { $0.read("a/f1") }),
            ("device whiteout hides", { $0.read("a/f2") }),
            ("whiteout of a file", { $0.read("wh-dev") }),
            ("opaque xattr hides below", { $0.ls("b") }),
            ("opaque dir hides below", { $0.ls("gone") }),
            ("file over a dir", { $0.read("fileover") }),
            ("nothing below a file", { $0.read("fileover/inside") }),
            ("dir over a file", { $0.ls("dirover") }),
            ("merged dir", { $0.ls("a") }),
            ("merged subdir", { $0.ls("a/sub") }),
            ("root", { $0.ls("") }),
            ("symlink", { $0.readlink("a/s") }),
            ("through symlink", { $0.read("a/s") }),
            ("xattr from the layer", { $0.getxattr("a/f1", "user.layer") }),
            ("hard link count", { "\($0.stat("a/h1")?.st_nlink ?? 0)" }),
        ])
    }

    @Test func copyUpWhiteoutsAndOpaque() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        compare(pair, [
            ("append copies up", { $0.write("a/f1", " more", flags: O_WRONLY | O_APPEND) }),
            ("read after", { $0.read("a/f1") }),
            ("chmod copies up", { $0.chmod("x", 0o640) }),
            ("chown copies up", { $0.lchown("a/sub/g", 42, 43) }),
            ("utimes copies up", { $0.utimens("d3only/n", 1_500_000_000, 5) }),
            ("setxattr copies up", { $0.setxattr("a/top", "user.k", "v") }),
            ("truncate copies up", { $0.truncate("many", 10) }),
            ("unlink lower file", { $0.unlink("a/f1") }),
            ("unlink again", { $0.unlink("a/f1") }),
            ("unlink upper-only", { $0.write("new", "n") + $0.unlink("new") }),
            ("rmdir non-empty merged", { $0.rmdir("a/sub") }),
            ("empty it", { $0.unlink("a/sub/g") + $0.unlink("a/sub/h") }),
            ("rmdir now empty", { $0.rmdir("a/sub") }),
            ("mkdir over whiteout is opaque", { $0.mkdir("a/sub") }),
            ("new dir is empty", { $0.ls("a/sub") }),
            ("recreate a file over a whiteout", { $0.write("a/f1", "again") }),
            ("rmdir lower dir", { $0.unlink("d3only/n") + $0.rmdir("d3only") }),
            ("rmdir a file", { $0.rmdir("x") }),
            ("unlink a dir", { $0.unlink("a") }),
            ("link a lower file", { $0.link("x", "x-link") }),
            ("symlink", { $0.symlink("../x", "a/sym") }),
            ("mknod fifo", { $0.mknod("fifo", Linux.S_IFIFO | 0o644) }),
            // A 0/0 device is a whiteout: the kernel refuses to make one (fsstress found this).
            ("mknod a whiteout device", { $0.mknod("wh-made", Linux.S_IFCHR | 0o644, 0) + " " + $0.ls("") }),
            ("mknod a real device", { $0.mknod("null-dev", Linux.S_IFCHR | 0o644, strata_makedev(1, 3)) }),
            ("private xattr hidden", { $0.listxattr("a/sub") }),
            ("overlay-named xattr is escaped", { $0.setxattr("a/top", "trusted.overlay.opaque", "y") }),
            ("and reads back", { $0.getxattr("a/top", "trusted.overlay.opaque") }),
            ("and lists", { $0.listxattr("a/top") }),
        ])
    }

    /// chown(path, -1, -1) by root reaches the daemon as a SETATTR with no
    /// field set; the kernel's overlayfs copies the file up and drops
    /// setuid (and setgid with group execute) as the upper ext4 does.
    @Test func chownThatChangesNothingDropsSetuidBelowAndAbove() throws {
        let modes: [mode_t] = [0o6755, 0o4755, 0o2755, 0o2745, 0o6711]
        let pair = try UnionPair { base in
            for (i, m) in modes.enumerated() {
                _ = FileOps("\(base)/l2").write("low\(i)", "l")
                _ = FileOps("\(base)/l2").chmod("low\(i)", m)
            }
            _ = FileOps("\(base)/l2").mkdir("sgid-dir", 0o2775)
            _ = FileOps("\(base)/l2").chmod("sgid-dir", 0o2775)
        }
        defer { pair.unmount() }
        var steps: [(String, (FileOps) -> String)] = []
        for (i, m) in modes.enumerated() {
            steps.append(("lower \(String(m, radix: 8)): chown -1 -1", { $0.lchown("low\(i)", .max, .max) + " " + $0.mode("low\(i)") }))
            steps.append(("upper \(String(m, radix: 8)): chown -1 -1", {
                $0.write("up\(i)", "u") + $0.chmod("up\(i)", m) + $0.lchown("up\(i)", .max, .max) + " " + $0.mode("up\(i)")
            }))
            steps.append(("upper \(String(m, radix: 8)): fchown -1 -1", {
                $0.chmod("up\(i)", m) + $0.fchown("up\(i)", .max, .max) + " " + $0.mode("up\(i)")
            }))
            steps.append(("upper \(String(m, radix: 8)): chown to the same owner", {
                $0.chmod("up\(i)", m) + $0.lchown("up\(i)", 0, 0) + " " + $0.mode("up\(i)")
            }))
        }
        steps.append(("setgid directory keeps its bit", { $0.lchown("sgid-dir", .max, .max) + " " + $0.mode("sgid-dir") }))
        compare(pair, steps)
        // Not only agreement: the bits are gone.
        #expect(FileOps(pair.strataMount).mode("low0") == "755")
        #expect(FileOps(pair.strataMount).mode("low3") == "2745")
        #expect(FileOps(pair.strataMount).mode("up1") == "755")
    }

    @Test(arguments: [false, true])
    func renames(redirectDir: Bool) throws {
        let pair = try UnionPair(redirectDir: redirectDir, build: Fixture.build)
        defer { pair.unmount() }
        let answers = compare(pair, [
            ("rename lower file", { $0.rename("a/f1", "a/moved") }),
            ("rename into other dir", { $0.rename("x", "a/x") }),
            ("rename over lower file", { $0.rename("a/top", "a/moved") }),
            ("noreplace", { $0.rename("a/moved", "a/h1", flags: Linux.RENAME_NOREPLACE) }),
            ("exchange", { $0.rename("a/moved", "a/h1", flags: Linux.RENAME_EXCHANGE) }),
            ("exchange with missing", { $0.rename("a/moved", "a/none", flags: Linux.RENAME_EXCHANGE) }),
            ("merged dir gives EXDEV", { $0.rename("a", "a2") }),
            ("lower-only dir gives EXDEV", { $0.rename("d3only", "d3") }),
            ("upper dir renames", { $0.mkdir("fresh") + $0.write("fresh/f", "1") + $0.rename("fresh", "fresh2") }),
            ("file over dir", { $0.rename("many", "a") }),
            ("dir over file", { $0.mkdir("up") + $0.rename("up", "many") }),
            ("rename onto a whiteout", { $0.rename("a/h2", "a/f2") }),
            ("self", { $0.rename("a/h1", "a/h1") }),
            ("missing source", { $0.rename("nope", "a/q") }),
            ("moved dir lists its lower entries", { $0.ls("a2") + "|" + $0.ls("d3") }),
            ("move it again", { $0.rename("a2", "fresh2/a3") + $0.ls("fresh2/a3") + $0.read("fresh2/a3/h1") }),
            ("and back over a whiteout", { $0.rename("fresh2/a3", "a") + $0.ls("a") }),
            ("rmdir a moved dir", { $0.rename("d3", "gone2") + $0.rmdir("gone2") + $0.unlink("gone2/n") + $0.rmdir("gone2") }),
        ])
        // Not only agreement: without redirect_dir a directory with lower
        // parts cannot move (mv then copies), with it the rename is done.
        #expect(answers["merged dir gives EXDEV"] == (redirectDir ? "ok" : "EXDEV"))
        #expect(answers["lower-only dir gives EXDEV"] == (redirectDir ? "ok" : "EXDEV"))
    }
}

extension KernelDifferentialTests {
    /// One name of a lower hard link written through the union becomes an
    /// inode of its own, as in the kernel without index=on: its own st_ino
    /// and a link count of 1, while the other name keeps the lower file's
    /// number and content, before a remount and after. `tar` of the merged
    /// view then archives the changed name with its new content; were the
    /// numbers the same it would write a link to the other name instead,
    /// losing the change.
    @Test func aCopiedUpHardLinkIsAnInodeOfItsOwn() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        func same(_ o: FileOps) -> String {
            guard let a = o.stat("a/h1"), let b = o.stat("a/h2") else { return "missing" }
            return a.st_ino == b.st_ino ? "one inode" : "two inodes"
        }
        func nlinks(_ o: FileOps) -> String { "\(o.stat("a/h1")?.st_nlink ?? 0)/\(o.stat("a/h2")?.st_nlink ?? 0)" }
        /// Which names `tar` stores as hard links.
        func tarLinks(_ o: FileOps) -> String {
            let r = runProgram("/bin/sh", ["-c", "tar -cf - -C '\(o.root)' a | tar -tvf - | grep ' link to ' | sed 's/.* a\\//a\\//'"])
            return r.stdout.isEmpty ? "no links" : r.stdout
        }
        /// The content `tar` stored under each name, extracted elsewhere.
        func tarContent(_ o: FileOps) -> String {
            let out = TempDir()
            _ = runProgram("/bin/sh", ["-c", "tar -cf - -C '\(o.root)' a | tar -xf - -C '\(out.path)'"])
            return FileOps(out.path).read("a/h1") + "|" + FileOps(out.path).read("a/h2")
        }
        let steps: [(String, (FileOps) -> String)] = [
            ("the names", same), ("link counts", nlinks), ("tar links", tarLinks),
            ("write one name", { $0.write("a/h1", "changed", flags: O_WRONLY | O_TRUNC) }),
            ("the names after", same), ("link counts after", nlinks),
            ("the other name's content", { $0.read("a/h2") }),
            ("tar links after", tarLinks), ("tar content after", tarContent),
        ]
        compare(pair, steps)
        // Remounted, the numbers come from the layers alone (no origin is
        // recorded for a broken link).
        try pair.remount()
        compare(pair, [("the names remounted", same), ("link counts remounted", nlinks), ("tar content remounted", tarContent)])
    }
}

extension KernelDifferentialTests {
    /// After copy-ups without index=on, Strata's upper carries the marks
    /// the kernel's does: `overlay.origin` on each copied-up object (not on
    /// a new one, nor on one name of a broken hard link), `overlay.impure`
    /// on the directories holding them, `overlay.uuid` on the upper root.
    /// The kernel, mounting Strata's layers, then reports the st_ino Strata
    /// reported: a layer moves between the two without changing it.
    @Test func theUpperCarriesTheKernelsMarks() throws {
        let pair = try UnionPair(build: Fixture.build)
        defer { pair.unmount() }
        compare(pair, [
            ("copy up a file", { $0.write("a/f1", "+", flags: O_WRONLY | O_APPEND) }),
            ("copy up a directory", { $0.chmod("a/sub", 0o750) }),
            ("copy up a symlink", { $0.lchown("a/s", 7, 7) }),
            ("break a hard link", { $0.write("a/h1", "x", flags: O_WRONLY | O_TRUNC) }),
            ("a new file", { $0.write("a/new", "n") }),
            ("a new directory", { $0.mkdir("fresh") }),
        ])
        let paths = ["", "a", "a/f1", "a/sub", "a/s", "a/h1", "a/new", "fresh"]
        func marks(_ upper: String) -> [String] {
            paths.map { p in
                let names = ["origin", "impure", "uuid"].filter { x in
                    lgetxattr(p.isEmpty ? upper : "\(upper)/\(p)", "trusted.overlay.\(x)", nil, 0) >= 0
                }
                return "\(p.isEmpty ? "/" : p): \(names.joined(separator: ","))"
            }
        }
        let k = marks(pair.kernelUpper), s = marks(pair.strataUpper)
        for (a, b) in zip(k, s) { #expect(a == b, "kernel \(a), strata \(b)") }
        // What each showed, then what the other shows over its layers: the
        // kernel over Strata's upper, Strata over the kernel's (whose
        // origins are handles), by stat and by readdir's d_ino.
        let inos = ["a/f1", "a/sub", "a/s", "a/h1", "a/new"]
        let strataShown = inos.map { FileOps(pair.strataMount).stat($0)?.st_ino ?? 0 }
        let kernelShown = inos.map { FileOps(pair.kernelMount).stat($0)?.st_ino ?? 0 }
        try pair.remountCrossed()
        let kernelSees = inos.map { FileOps(pair.kernelMount).stat($0)?.st_ino ?? 0 }
        #expect(strataShown == kernelSees, "st_ino \(inos): strata \(strataShown), the kernel over strata's layers \(kernelSees)")
        let strataSees = inos.map { FileOps(pair.strataMount).stat($0)?.st_ino ?? 0 }
        #expect(kernelShown == strataSees, "st_ino \(inos): kernel \(kernelShown), strata over the kernel's layers \(strataSees)")
        func dIno(_ m: String, _ path: String) -> UInt64 {
            let dir = (path as NSString).deletingLastPathComponent, base = (path as NSString).lastPathComponent
            guard let d = opendir("\(m)/\(dir)") else { return 0 }
            defer { closedir(d) }
            while let e = readdir(d) {
                let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
                if name == base { return UInt64(e.pointee.d_ino) }
            }
            return 0
        }
        #expect(inos.map { dIno(pair.strataMount, $0) } == strataSees.map { UInt64($0) }, "d_ino and st_ino under Strata over the kernel's layers")
        try pair.remount()
    }
}
