import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// An upper layer turned into a lower one (a committed container, or
/// unionmount-testsuite's --ov=N): the redirects, whiteouts and
/// metadata-only copies it holds are then met in a middle layer, where the
/// kernel follows a redirect as it does in the upper one.
extension KernelDifferentialTests {
    struct RotationCase: CustomStringConvertible, Sendable {
        var description: String
        var metacopy: Bool
        /// A step is a change, or nil: rotate the upper into the lowers.
        var steps: [(String, (@Sendable (FileOps) -> String)?)]
        var views: [(String, @Sendable (FileOps) -> String)]
    }

    static let rotationCases: [RotationCase] = [
        RotationCase(description: "a directory moved, then moved again from a middle layer", metacopy: false, steps: [
            ("move a merged directory", { $0.rename("a/sub", "a/sub2") }),
            ("rotate", nil),
            ("move it again", { $0.rename("a/sub2", "m2/sub3") }),
            ("rotate", nil),
            ("and back", { $0.rename("m2/sub3", "a/sub") }),
        ], views: [
            ("a", { $0.ls("a") + "|" + $0.ls("a/sub") + "|" + $0.ls("a/sub2") }),
            ("moved", { $0.ls("m2/sub3") + "|" + $0.read("m2/sub3/g") + "|" + $0.read("m2/sub3/h") }),
        ]),
        RotationCase(description: "a metadata-only copy renamed, then renamed back from a middle layer", metacopy: true, steps: [
            ("chown and rename", { $0.lchown("a/f1", 1000, 0) + $0.rename("a/f1", "a/no_f1") }),
            ("rotate", nil),
            ("rename back", { $0.rename("a/no_f1", "a/f1") }),
            ("rotate", nil),
            ("link it", { $0.link("a/f1", "a/f1-link") }),
            ("write it", { $0.write("a/f1-link", "+", flags: O_WRONLY | O_APPEND) }),
        ], views: [
            ("f1", { $0.read("a/f1") + "|" + $0.read("a/no_f1") + "|" + $0.read("a/f1-link") }),
            ("ls", { $0.ls("a") }),
        ]),
        RotationCase(description: "a metadata-only copy in a middle layer moved to another directory", metacopy: true, steps: [
            ("chmod", { $0.chmod("a/sub/g", 0o600) }),
            ("rotate", nil),
            ("move it", { $0.rename("a/sub/g", "m2/g") }),
            ("rotate", nil),
            ("move its directory", { $0.rename("a/sub", "sub9") }),
        ], views: [
            ("g", { $0.read("m2/g") + "|" + $0.read("a/sub/g") + "|" + $0.mode("m2/g") }),
            ("sub", { $0.ls("sub9") + "|" + $0.ls("a/sub") }),
        ]),
    ]

    @Test(arguments: rotationCases)
    func anUpperTurnedLowerIsReadAsTheKernelReadsIt(_ c: RotationCase) throws {
        let pair = try UnionPair(redirectDir: true, metacopy: c.metacopy, build: Fixture.build)
        defer { pair.unmount() }
        for (label, step) in c.steps {
            if let step {
                compare(pair, [(label, { step($0) })], trees: false)
            } else {
                try pair.rotate()
            }
            compare(pair, c.views.map { v in ("\(v.0) after '\(label)'", { v.1($0) }) })
        }
    }
}
