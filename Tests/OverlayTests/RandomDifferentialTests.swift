import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Seeded random operation sequences on the kernel's overlayfs and on
/// Strata: every errno must agree, then the trees. A failure prints the seed
/// and the shortest operation list found that still shows a difference.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct RandomDifferentialTests {
    struct Op: CustomStringConvertible {
        var kind: Int, a: String, b: String, n: Int
        var description: String {
            ["write", "append", "truncate", "chmod", "chown", "mkdir", "rmdir", "unlink", "rename", "rename-noreplace",
             "rename-exchange", "link", "symlink", "setxattr", "removexattr", "read", "ls"][kind] + "(\(a), \(b), \(n))"
        }
    }

    static let paths = ["a", "a/f1", "a/f2", "a/h1", "a/h2", "a/s", "a/sub", "a/sub/g", "a/sub/h", "a/top", "b", "b/keep",
                        "b/hidden", "d3only", "d3only/n", "dirover", "dirover/in", "fileover", "gone", "gone/z", "m2", "m2/f",
                        "many", "x", "wh-dev", "n1", "n2", "a/n3", "m2/n4", "b/n5", "nd", "nd/q", "a/sub/nd2"]

    struct SplitMix { var s: UInt64; mutating func next() -> UInt64 { s &+= 0x9E3779B97F4A7C15; var z = s; z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) &* 0x94D049BB133111EB; return z ^ (z >> 31) } }

    static func generate(seed: UInt64, count: Int) -> [Op] {
        var r = SplitMix(s: seed)
        return (0..<count).map { _ in
            Op(kind: Int(r.next() % 17), a: paths[Int(r.next() % UInt64(paths.count))],
               b: paths[Int(r.next() % UInt64(paths.count))], n: Int(r.next() % 1000))
        }
    }

    static func apply(_ op: Op, _ o: FileOps) -> String {
        let modes: [mode_t] = [0o600, 0o644, 0o755, 0o4755, 0o700]
        switch op.kind {
        case 0: return o.write(op.a, "w\(op.n)")
        case 1: return o.write(op.a, "+\(op.n)", flags: O_WRONLY | O_APPEND)
        case 2: return o.truncate(op.a, op.n % 7)
        case 3: return o.chmod(op.a, modes[op.n % modes.count])
        case 4: return o.lchown(op.a, uid_t(op.n % 2 * 1000), gid_t(op.n % 3 * 1000))
        case 5: return o.mkdir(op.a)
        case 6: return o.rmdir(op.a)
        case 7: return o.unlink(op.a)
        case 8: return o.rename(op.a, op.b)
        case 9: return o.rename(op.a, op.b, flags: Linux.RENAME_NOREPLACE)
        case 10: return o.rename(op.a, op.b, flags: Linux.RENAME_EXCHANGE)
        case 11: return o.link(op.a, op.b)
        case 12: return o.symlink("t\(op.n)", op.a)
        case 13: return o.setxattr(op.a, "user.r\(op.n % 3)", "v\(op.n)")
        case 14: return o.removexattr(op.a, "user.r\(op.n % 3)")
        case 15: return o.read(op.a)
        default: return o.ls(op.a)
        }
    }

    /// Runs `ops` on a fresh pair; returns the first difference, if any.
    /// With `index`, the upper layers are not compared (the kernel links up
    /// the name a change came through, Strata the inode's first name) and
    /// the merged views allow the one difference that follows from it.
    static func firstDifference(_ ops: [Op], redirectDir: Bool = false, metacopy: Bool = false, index: Bool = false) -> String? {
        guard let pair = try? UnionPair(redirectDir: redirectDir, metacopy: metacopy, index: index,
                                            build: index ? Fixture.buildWithLinks : Fixture.build) else { return "mount failed" }
        defer { pair.unmount() }
        let k = FileOps(pair.kernelMount), s = FileOps(pair.strataMount)
        for (i, op) in ops.enumerated() {
            let a = apply(op, k), b = apply(op, s)
            if a != b { return "op \(i) \(op): kernel \(a), strata \(b)" }
            // Now and then both are mounted anew: what was built in memory
            // must also be what a fresh lookup finds on disk (redirects,
            // opaque marks, whiteouts).
            if i % 400 == 399 {
                do { try pair.remount() } catch { return "remount after op \(i): \(error)" }
                let m = index ? pair.mergedDiffBeyondLinkUp() : pair.mergedDiff()
                if !m.isEmpty { return "after op \(i), remounted: \(m.prefix(5))" }
            }
        }
        let m = index ? pair.mergedDiffBeyondLinkUp() : pair.mergedDiff()
        if !m.isEmpty { return "merged: \(m.prefix(5))" }
        if index { return nil }
        let u = pair.upperDiff()
        if !u.isEmpty { return "upper: \(u.prefix(5))" }
        return nil
    }

    /// Delta debugging: drop chunks while a difference remains.
    static func minimize(_ ops: [Op], redirectDir: Bool = false, metacopy: Bool = false, index: Bool = false) -> [Op] {
        var cur = ops
        var chunk = max(1, cur.count / 2)
        var trials = 0
        while chunk >= 1 && trials < 300 {
            var i = 0
            var removed = false
            while i < cur.count && trials < 300 {
                var t = cur
                t.removeSubrange(i..<min(cur.count, i + chunk))
                trials += 1
                if firstDifference(t, redirectDir: redirectDir, metacopy: metacopy, index: index) != nil { cur = t; removed = true } else { i += chunk }
            }
            if !removed { chunk /= 2 }
        }
        return cur
    }

    static var seeds: [UInt64] {
        if let s = ProcessInfo.processInfo.environment["STRATA_SEEDS"] {
            return s.split(separator: ",").compactMap { UInt64($0) }
        }
        return [1, 2, 3, 20261127]
    }

    @Test(arguments: seeds)
    func randomSequenceMatchesTheKernel(_ seed: UInt64) throws {
        check(seed, redirectDir: false)
    }

    /// The same with redirect_dir=on on both: directories move.
    @Test(arguments: seeds)
    func randomSequenceWithRedirectDirMatchesTheKernel(_ seed: UInt64) throws {
        check(seed, redirectDir: true)
    }

    /// The same with metacopy=on on both: metadata changes leave the data
    /// below, writes bring it up, moves and links record where it is.
    /// (Seeds 4, 5 and 7 read a file soon after a metadata-only copy-up:
    /// they found a read served from the upper copy's holes.)
    @Test(arguments: seeds + [4, 5, 7])
    func randomSequenceWithMetacopyMatchesTheKernel(_ seed: UInt64) throws {
        check(seed, redirectDir: true, metacopy: true)
    }

    /// The same with index=on on both: lower hard links stay one inode.
    @Test(arguments: seeds)
    func randomSequenceWithIndexMatchesTheKernel(_ seed: UInt64) throws {
        check(seed, redirectDir: false, index: true)
    }

    /// index=on with redirect_dir=on: hard links in directories that move.
    @Test(arguments: seeds)
    func randomSequenceWithIndexAndRedirectDirMatchesTheKernel(_ seed: UInt64) throws {
        check(seed, redirectDir: true, index: true)
    }

    /// index=on with metacopy=on: indexed copies metadata only, then their data.
    @Test(arguments: seeds)
    func randomSequenceWithIndexAndMetacopyMatchesTheKernel(_ seed: UInt64) throws {
        check(seed, redirectDir: true, metacopy: true, index: true)
    }

    func check(_ seed: UInt64, redirectDir: Bool, metacopy: Bool = false, index: Bool = false) {
        let ops = Self.generate(seed: seed, count: 2000)
        guard let diff = Self.firstDifference(ops, redirectDir: redirectDir, metacopy: metacopy, index: index) else { return }
        let small = Self.minimize(ops, redirectDir: redirectDir, metacopy: metacopy, index: index)
        Issue.record("""
            seed \(seed)\(redirectDir ? " (redirect_dir=on)" : "")\(metacopy ? " (metacopy=on)" : "")\(index ? " (index=on)" : ""): \(diff)
            shortest sequence found (\(small.count) ops): \(small.map(\.description).joined(separator: "; "))
            then: \(Self.firstDifference(small, redirectDir: redirectDir, metacopy: metacopy, index: index) ?? "no difference")
            """)
    }
}
