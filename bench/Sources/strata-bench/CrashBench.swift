import ArgumentParser
import Foundation
import Sys
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The crash harness at scale: the daemon SIGKILLed at hundreds of random
/// points across every kind of change, each checked after a remount
/// against the kernel's states (see TestSupport/CrashHarness.swift).
struct CrashBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crash",
        abstract: "Kill Strata's daemon at random points of copy-ups, renames, deletes and links; check nothing is lost or half-made."
    )

    @Option(help: "Kill points in all, spread over the cases.") var points = 204
    @Option(help: "Size of the big file copied up, in MiB.") var bigMib = 64
    @Option(help: "Where to put the layers (a disk-backed directory).") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?
    @Flag(help: "Print one line per kill point.") var verbose = false

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root: mounting needs it") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        guard access(bin, X_OK) == 0 else { throw ValidationError("no strata binary at \(bin); build it or pass --strata") }
        let root = try makeTemp(dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let harness = CrashHarness(binary: bin, scratch: root)
        let cases = CrashCases.all(bigMiB: bigMib)
        let each = max(1, (points + cases.count - 1) / cases.count)
        print("strata-bench crash: \(each * cases.count) kill points, \(each) per case; big file \(bigMib) MiB; layers in \(dir)")
        print("| operation | kills | survived | landed before / between / after | data lost |")
        print("|---|---|---|---|---|")
        var total = 0, survived = 0
        for c in cases {
            let outcomes = try harness.run(c, points: each) { line in if verbose { progress(line) } }
            let ok = outcomes.filter { $0.problems.isEmpty }
            let before = outcomes.filter { $0.state == "before" }.count
            let after = outcomes.filter { $0.state == "after" }.count
            let lost = outcomes.count - ok.count
            total += outcomes.count
            survived += ok.count
            print("| \(c.name)\(c.options.isEmpty ? "" : " (\(c.options.joined(separator: ",")))") | \(outcomes.count) | \(ok.count) | \(before) / \(outcomes.count - before - after) / \(after) | \(lost) |")
            for o in outcomes where !o.problems.isEmpty { progress("\(c.name) kill at \(o.delayMicros) µs: \(o.problems.joined(separator: "; "))") }
        }
        print("\(survived) passed, \(total - survived) failed")
        if survived != total { throw ExitCode(1) }
    }
}
