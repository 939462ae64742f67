import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Listings prepared ahead of a walker (Overlay's ReadAhead) must never
/// show a directory as it was before a change made through the union.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ReadAheadTests {
    /// Twenty lower directories, half of them merged over two layers.
    static func build(_ base: String) {
        _ = FileOps("\(base)/l2").mkdir("tree")
        _ = FileOps("\(base)/l1").mkdir("tree")
        for d in 0..<20 {
            _ = FileOps("\(base)/l2").mkdir("tree/d\(d)")
            if d < 10 { _ = FileOps("\(base)/l1").mkdir("tree/d\(d)") }
            for f in 0..<6 { _ = FileOps("\(base)/l2").write("tree/d\(d)/f\(f)", "lower \(d).\(f)") }
            _ = FileOps("\(base)/l2").mkdir("tree/d\(d)/sub")
            if d < 10 { _ = FileOps("\(base)/l1").write("tree/d\(d)/g", "top \(d)") }
        }
    }

    /// The figure `name` from `strata stats --json`.
    func statistic(_ m: String, _ name: String) -> Int {
        let out = runProgram(MountEnvironment.binary, ["stats", "--json", m]).stdout
        guard let r = out.range(of: "\"\(name)\": ") else { return -1 }
        return Int(out[r.upperBound...].prefix { $0.isNumber }) ?? -1
    }

    /// Lists `dir` once (READDIRPLUS registers its subdirectories, which
    /// are then prepared).
    func list(_ dir: String) -> Int {
        guard let d = opendir(dir) else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n
    }

    @Test func aListingPreparedAheadNeverShowsWhatChangedSince() throws {
        let pair = try UnionPair(layers: 2, build: Self.build)
        defer { pair.unmount() }
        for m in [pair.kernelMount, pair.strataMount] { #expect(list("\(m)/tree") == 22) }
        // The subdirectories were prepared on the daemon's idle thread.
        #expect(waitFor(5) { statistic(pair.strataMount, "listings read ahead") >= 15 },
                "read ahead: \(statistic(pair.strataMount, "listings read ahead"))")
        // Changes in prepared directories, through both unions.
        for m in [pair.kernelMount, pair.strataMount] {
            let ops = FileOps(m)
            #expect(ops.write("tree/d1/new", "made") == "ok")
            #expect(ops.unlink("tree/d2/f0") == "ok")
            #expect(ops.unlink("tree/d12/f5") == "ok")
            #expect(ops.rename("tree/d3/f1", "tree/d13/moved") == "ok")
            #expect(ops.chmod("tree/d14/f2", 0o600) == "ok")
            #expect(ops.write("tree/d15/f3", "longer than the lower file", flags: O_WRONLY | O_TRUNC) == "ok")
            #expect(ops.mkdir("tree/d16/made") == "ok")
            #expect(ops.rmdir("tree/d17/sub") == "ok")
            #expect(ops.unlink("tree/d4/g") == "ok")
        }
        let diff = pair.mergedDiff()
        #expect(diff.isEmpty, "\(diff.prefix(10))")
        // The walk above used prepared listings (else it proved nothing).
        #expect(statistic(pair.strataMount, "listings read ahead and used") >= 5)
        #expect(pair.upperDiff().isEmpty, "\(pair.upperDiff().prefix(10))")
    }

    @Test func readdirAheadOffPreparesNothing() throws {
        let pair = try UnionPair(layers: 2, strataOptions: ["readdir_ahead=off"], build: Self.build)
        defer { pair.unmount() }
        #expect(list("\(pair.strataMount)/tree") == 22)
        usleep(200_000)
        #expect(statistic(pair.strataMount, "listings read ahead") == 0)
        #expect(pair.mergedDiff().isEmpty)
    }
}
