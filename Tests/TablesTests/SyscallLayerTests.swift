import Foundation
import Testing

/// Sys is the system-call layer (docs/ARCHITECTURE.md): only it reaches the
/// C shims, and `UniqueFD` is the only owner that closes a descriptor. These
/// read the sources, so a change that goes around the layer fails here.
@Suite struct SyscallLayerTests {
    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources")

    /// Every Swift file of the product outside Sys, with its lines.
    static func productFiles() throws -> [(String, [Substring])] {
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: sources.path) else { return [] }
        var out: [(String, [Substring])] = []
        for case let rel as String in walker where rel.hasSuffix(".swift") && !rel.hasPrefix("Sys/") {
            let text = try String(contentsOfFile: sources.appendingPathComponent(rel).path, encoding: .utf8)
            out.append((rel, text.split(separator: "\n", omittingEmptySubsequences: false)))
        }
        return out
    }

    /// Code only: comments and string literals' `//` are rare enough that
    /// a line whose code part is empty is skipped.
    static func code(_ line: Substring) -> Substring {
        let t = line.drop { $0 == " " }
        if t.hasPrefix("//") { return "" }
        return t
    }

    @Test func onlySysImportsOrCallsTheShims() throws {
        let files = try Self.productFiles()
        #expect(files.count > 50, "the sources were not found at \(Self.sources.path)")
        var offenders: [String] = []
        for (file, lines) in files {
            for (i, line) in lines.enumerated() {
                let c = Self.code(line)
                if c.hasPrefix("import CStrata") { offenders.append("\(file):\(i + 1): \(c)") }
                // A shim call: strata_name( (the FUSE ABI's struct names are types, not calls).
                if c.range(of: #"\bstrata_[a-z0-9_]+\("#, options: .regularExpression) != nil { offenders.append("\(file):\(i + 1): \(c)") }
            }
        }
        #expect(offenders.isEmpty, "outside Sys:\n\(offenders.joined(separator: "\n"))")
    }

    @Test func onlyUniqueFDClosesDescriptors() throws {
        var offenders: [String] = []
        for (file, lines) in try Self.productFiles() {
            for (i, line) in lines.enumerated() {
                let c = Self.code(line)
                if c.contains("func close(") { continue }
                if c.range(of: #"(^|[^A-Za-z0-9_.])close\([a-zA-Z]"#, options: .regularExpression) != nil {
                    offenders.append("\(file):\(i + 1): \(c)")
                }
            }
        }
        #expect(offenders.isEmpty, "descriptors closed by hand outside Sys:\n\(offenders.joined(separator: "\n"))")
    }
}
