import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A moved directory's lower parts are found by walking its redirect from
/// the root of each lower layer, and that walk must stop where the kernel's
/// ovl_lookup_layer stops: at a whiteout or a non-directory on the way (no
/// layer below counts), and after the layer where a directory on the way is
/// opaque. Layers here are u (upper), l1, l2, l3, top first.
extension KernelDifferentialTests {
    struct RedirectCase: CustomStringConvertible, Sendable {
        var description: String
        var build: @Sendable (String) -> Void
        /// Applied in turn; after each, every view is compared, then again
        /// after a remount (when moved directories are found from their
        /// redirects on disk, not from memory).
        var changes: [(String, @Sendable (FileOps) -> String)]
        var views: [(String, @Sendable (FileOps) -> String)]
    }

    static let redirectCases: [RedirectCase] = [
        // The case a differential run found: `b` is a file in l1, so b/f1 in
        // the upper is not merged; moved to sub/y it must not show l2's or
        // l3's b/f1.
        RedirectCase(description: "a file in a middle layer on the redirect's path", build: { base in
            Fixture.dir("\(base)/u/b"); Fixture.dir("\(base)/u/b/f1")
            Fixture.write("\(base)/l1/b", "a file")
            Fixture.dir("\(base)/l1/sub"); Fixture.dir("\(base)/l1/sub/y"); Fixture.write("\(base)/l1/sub/y/yy", "yy")
            Fixture.dir("\(base)/l2/b"); Fixture.dir("\(base)/l2/b/f1"); Fixture.write("\(base)/l2/b/f1/f2", "f2")
            Fixture.dir("\(base)/l3/b"); Fixture.dir("\(base)/l3/b/f1"); Fixture.write("\(base)/l3/b/f1/f1", "f1")
        }, changes: [
            ("exchange", { $0.rename("sub/y", "b/f1", flags: Linux.RENAME_EXCHANGE) }),
            ("exchange back", { $0.rename("sub/y", "b/f1", flags: Linux.RENAME_EXCHANGE) }),
            ("exchange again", { $0.rename("sub/y", "b/f1", flags: Linux.RENAME_EXCHANGE) }),
            ("move one away", { $0.rename("sub/y", "y2") }),
        ], views: [
            ("sub/y", { $0.ls("sub/y") + "|" + $0.read("sub/y/f1") + "|" + $0.read("sub/y/yy") }),
            ("b/f1", { $0.ls("b/f1") + "|" + $0.read("b/f1/f1") + "|" + $0.read("b/f1/yy") }),
            ("y2", { $0.ls("y2") + "|" + $0.read("y2/f1") + "|" + $0.read("y2/f2") }),
        ]),
        // l2 whites `d` out: l3's d/e is not part of d/e, before or after
        // the move.
        RedirectCase(description: "a whiteout in a middle layer on the redirect's path", build: { base in
            Fixture.dir("\(base)/l1/d"); Fixture.dir("\(base)/l1/d/e"); Fixture.write("\(base)/l1/d/e/e1", "e1")
            mknod("\(base)/l2/d", Linux.S_IFCHR, 0)
            Fixture.dir("\(base)/l3/d"); Fixture.dir("\(base)/l3/d/e"); Fixture.write("\(base)/l3/d/e/e3", "e3")
        }, changes: [
            ("move", { $0.rename("d/e", "moved") }),
            ("move again", { $0.mkdir("n") + $0.rename("moved", "n/e") }),
        ], views: [
            ("d/e", { $0.ls("d/e") }),
            ("moved", { $0.ls("moved") + "|" + $0.read("moved/e3") }),
            ("n/e", { $0.ls("n/e") + "|" + $0.read("n/e/e3") }),
        ]),
        // l2's `d` is opaque: l2's d/e counts, l3's does not.
        RedirectCase(description: "an opaque directory in a middle layer on the redirect's path", build: { base in
            Fixture.dir("\(base)/l1/d"); Fixture.dir("\(base)/l1/d/e"); Fixture.write("\(base)/l1/d/e/e1", "e1")
            Fixture.dir("\(base)/l2/d"); _ = lsetxattr("\(base)/l2/d", "trusted.overlay.opaque", "y", 1, 0)
            Fixture.dir("\(base)/l2/d/e"); Fixture.write("\(base)/l2/d/e/e2", "e2")
            Fixture.dir("\(base)/l3/d"); Fixture.dir("\(base)/l3/d/e"); Fixture.write("\(base)/l3/d/e/e3", "e3")
        }, changes: [
            ("move", { $0.rename("d/e", "moved") }),
        ], views: [
            ("d/e", { $0.ls("d/e") }),
            ("moved", { $0.ls("moved") + "|" + $0.read("moved/e2") + "|" + $0.read("moved/e3") }),
        ]),
        // The same opaque `d`, but without d/e in l2: the walk stops after
        // l2 all the same.
        RedirectCase(description: "an opaque directory without the name, in a middle layer", build: { base in
            Fixture.dir("\(base)/l1/d"); Fixture.dir("\(base)/l1/d/e"); Fixture.write("\(base)/l1/d/e/e1", "e1")
            Fixture.dir("\(base)/l2/d"); _ = lsetxattr("\(base)/l2/d", "trusted.overlay.opaque", "y", 1, 0)
            Fixture.dir("\(base)/l3/d"); Fixture.dir("\(base)/l3/d/e"); Fixture.write("\(base)/l3/d/e/e3", "e3")
        }, changes: [
            ("move", { $0.rename("d/e", "moved") }),
        ], views: [
            ("d/e", { $0.ls("d/e") }),
            ("moved", { $0.ls("moved") + "|" + $0.read("moved/e3") }),
        ]),
        // Nothing in the way: every layer holding the path merges.
        RedirectCase(description: "a path absent from a middle layer", build: { base in
            Fixture.dir("\(base)/l1/d"); Fixture.dir("\(base)/l1/d/e"); Fixture.write("\(base)/l1/d/e/e1", "e1")
            Fixture.dir("\(base)/l3/d"); Fixture.dir("\(base)/l3/d/e"); Fixture.write("\(base)/l3/d/e/e3", "e3")
        }, changes: [
            ("move", { $0.rename("d/e", "moved") }),
            ("remove an entry and move back", { $0.unlink("moved/e3") + $0.rename("moved", "d/e") }),
        ], views: [
            ("d/e", { $0.ls("d/e") + "|" + $0.read("d/e/e3") }),
            ("moved", { $0.ls("moved") + "|" + $0.read("moved/e3") }),
        ]),
    ]

    @Test(arguments: redirectCases)
    func aRedirectedLookupStopsWhereTheKernelsDoes(_ c: RedirectCase) throws {
        let pair = try UnionPair(redirectDir: true, build: c.build)
        defer { pair.unmount() }
        compare(pair, c.views.map { v in ("\(v.0) at first", { v.1($0) }) })
        for change in c.changes {
            compare(pair, [(change.0, { change.1($0) })])
            compare(pair, c.views.map { v in ("\(v.0) after '\(change.0)'", { v.1($0) }) })
            try pair.remount()
            compare(pair, c.views.map { v in ("\(v.0) after '\(change.0)', remounted", { v.1($0) }) })
        }
    }
}
