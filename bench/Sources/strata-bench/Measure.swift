import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Monotonic seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func time(_ body: () throws -> Void) rethrows -> Double {
    let t0 = now()
    try body()
    return now() - t0
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Results of one workload: seconds per round for each implementation.
struct Workload {
    let name: String
    /// Bytes moved per round (for throughput), or nil for a time-only workload.
    let bytes: Double?
    var seconds: [String: [Double]] = [:]

    /// Ratio to the baseline, paired round by round, then the median.
    func ratio(_ impl: String, to base: String) -> Double {
        guard let a = seconds[impl], let b = seconds[base] else { return .nan }
        return median(zip(a, b).map { $0 / $1 })
    }
}

func report(_ workloads: [Workload], impls: [String], base: String) -> String {
    let medians: String = impls.map { "\($0) median" }.joined(separator: " | ")
    let ratios: String = impls.filter { $0 != base }.map { "\($0) / \(base)" }.joined(separator: " | ")
    var out = "| workload | \(medians) | \(ratios) |\n"
    let columns: Int = 2 * impls.count
    out += "|" + String(repeating: "---|", count: columns) + "\n"
    for w in workloads {
        var row = "| \(w.name) |"
        for i in impls {
            let m = median(w.seconds[i] ?? [])
            if let b = w.bytes { row += String(format: " %.0f MB/s (%.3f s) |", b / m / 1e6, m) }
            else { row += String(format: " %.1f ms |", m * 1000) }
        }
        for i in impls where i != base {
            let r = w.ratio(i, to: base)
            // For throughput, report time ratios too: > 1 means slower.
            row += String(format: " %.2fx time |", r)
        }
        out += row + "\n"
    }
    return out
}
func progress(_ s: String) { printError("strata-bench: \(s)") }

/// Rounds over every implementation, the order rotated each round, so that
/// the machine's drift (a noisy neighbour, ext4 after a large deletion)
/// falls on each alike.
func rotatedRounds(_ rounds: Int, _ names: [String], _ body: (String) throws -> Void) rethrows {
    for round in 0..<rounds {
        progress("round \(round + 1)/\(rounds)")
        for k in 0..<names.count { try body(names[(k + round) % names.count]) }
    }
}

/// Seconds until the command's first byte of output (then it is let
/// finish, its output discarded).
func firstOutput(_ path: String, _ args: [String]) throws -> Double {
    var p: [Int32] = [-1, -1]
    guard pipe(&p) == 0 else { throw ValidationError("pipe") }
    _ = fcntl(p[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(p[1], F_SETFD, FD_CLOEXEC)
    let null = open("/dev/null", O_RDWR | O_CLOEXEC)
    defer { close(null) }
    let t0 = now()
    let pid = try Spawn.start(path, args, stdio: (null, p[1], null))
    close(p[1])
    var b: UInt8 = 0
    let n = read(p[0], &b, 1)
    let t = now() - t0
    var sink = [UInt8](repeating: 0, count: 4096)
    while read(p[0], &sink, sink.count) > 0 {}
    close(p[0])
    let status = Spawn.wait(pid)
    guard n == 1, status == 0 else { throw ValidationError("\(args.joined(separator: " ")) gave no output (exit \(status))") }
    return t
}
