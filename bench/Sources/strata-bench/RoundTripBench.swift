import ArgumentParser
import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// What one FUSE round trip costs on this machine, and what that makes the
/// best ratio any FUSE union can reach on the per-file workloads of the
/// union benchmark: kernel overlayfs answers open, create and unlink without
/// leaving the kernel, while FUSE must ask the daemon a fixed number of
/// times per call (the protocol decides the count, not the daemon). The
/// floor is the kernel's time per call plus that many of the cheapest round
/// trips measured here.
struct RoundTripBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "roundtrip",
        abstract: "The cost of one FUSE round trip and the best per-file ratio it allows.",
        discussion: """
            Measures, in one run: a pipe ping-pong between two processes on one vCPU and on \
            two (the scheduler's floor for any request and answer between processes); a \
            getxattr that always reaches the daemon (the null FUSE round trip), with the \
            daemon free and with daemon and caller pinned to one vCPU (what per-CPU request \
            queues could give at best); and open, create and unlink per call on kernel \
            overlayfs and Strata.
            """
    )

    @Option(help: "Calls per measurement.") var calls = 2000
    @Option(help: "Rounds; medians are reported.") var rounds = 5
    @Option(help: "Where to put the data (disk-backed).") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?
    @Option(help: "A strata binary of another commit, measured beside this one (implementations baseline and baseline-uring).")
    var baseline: String?
    @Option(help: "libfuse 3.18's example/passthrough_hp built with io_uring, for its null round trip (never committed).")
    var passthroughHp: String?

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root: mounting and pinning the daemon need it") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        guard access(bin, X_OK) == 0 else { throw ValidationError("no strata binary at \(bin); build it or pass --strata") }
        guard ProcessInfo.processInfo.activeProcessorCount >= 2 else { throw ValidationError("needs at least 2 CPUs") }
        let root = try makeTemp(dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        var setup = UnionSetup(root: root, strata: bin)
        setup.passthroughHP = passthroughHp
        setup.baseline = baseline
        for l in setup.lowers { mkdir(l, 0o755) }
        mkdir("\(setup.lowers[0])/files", 0o755)
        mkdir("\(setup.lowers[2])/del", 0o755)
        for i in 0..<calls {
            writeBytes("\(setup.lowers[0])/files/f\(i)", 100)
            writeBytes("\(setup.lowers[2])/del/d\(i)", 10)
        }
        if passthroughHp != nil { setup.flatten() }
        let self_ = CommandLine.arguments[0]
        let uringSwitch = try UringSwitch.turnOn()
        defer { uringSwitch.restore() }
        var t: [String: [Double]] = [:]
        func record(_ k: String, _ seconds: Double, per n: Int) { t[k, default: []].append(seconds / Double(n) * 1e6) }
        for round in 0..<rounds {
            progress("round \(round + 1)/\(rounds)")
            record("pipe, same vCPU", try pingPong(self_, sameCPU: true), per: calls * 5)
            record("pipe, two vCPUs", try pingPong(self_, sameCPU: false), per: calls * 5)
            let impls = ["kernel", "strata", "strata-uring"] + (passthroughHp != nil ? ["passthrough_hp-uring"] : [])
                + (baseline != nil ? ["baseline", "baseline-uring"] : [])
            for k in 0..<impls.count {
                let impl = impls[(k + round) % impls.count]
                let m = try setup.mount(impl)
                defer { setup.unmount(m) }
                let probe = "\(m)/files/f0"
                record("null \(impl)", time { absentXattr(probe, calls * 5) }, per: calls * 5)
                if impl == "strata", let pid = daemonPID(mountpoint: m) {
                    pin(pid: pid, cpus: "0")
                    pin(pid: getpid(), cpus: "0")
                    record("null strata, same vCPU", time { absentXattr(probe, calls * 5) }, per: calls * 5)
                    pin(pid: pid, cpus: allCPUs)
                    pin(pid: getpid(), cpus: allCPUs)
                }
                let files = (0..<calls).map { "\(m)/files/f\($0)" }
                for p in files { _ = readFile(p) }
                record("open \(impl)", time { for p in files { _ = readFile(p) } }, per: calls)
                record("create \(impl)", time { createMany("\(m)/created", calls) }, per: calls)
                // As `rm -r` does: the listing brings the names in, so no
                // LOOKUP precedes each unlink.
                _ = listDir("\(m)/del")
                record("unlink \(impl)", time { for i in 0..<calls { unlink("\(m)/del/d\(i)") } }, per: calls)
            }
        }
        let kernel = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        print("strata-bench roundtrip: \(calls) calls per measurement, \(rounds) rounds, medians; machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, kernel \(kernel)")
        let m = { (k: String) in median(t[k] ?? []) }
        print("| round trip | µs |\n|---|---|")
        for k in ["pipe, same vCPU", "pipe, two vCPUs", "null kernel", "null strata", "null strata, same vCPU", "null strata-uring",
                  "null passthrough_hp-uring"] where t[k] != nil {
            print(String(format: "| %@ | %.1f |", k, m(k)))
        }
        // Round trips less what the kernel's own getxattr costs (the
        // daemon makes that call too): as /dev/fuse gives them today, and on
        // one vCPU, which only per-CPU request queues (FUSE over io_uring)
        // could give every call.
        let free = max(0, m("null strata") - m("null kernel"))
        let same = max(0, m("null strata, same vCPU") - m("null kernel"))
        print(String(format: "\nround trip beyond the kernel's own call: %.1f µs on /dev/fuse, %.1f µs on one vCPU\n", free, same))
        print("| per call (union benchmark workload) | round trips FUSE must make | kernel µs | strata µs | strata / kernel "
            + "| strata-uring µs | strata-uring / kernel | passthrough_hp-uring µs | floor with /dev/fuse round trips | floor with one-vCPU round trips | target |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        let rows: [(String, String, Int, String, String)] = [
            ("open", "open + read + close (read every file)", 1, "OPEN", "1.2x"),
            ("create", "create + write 100 B + close (create 10,000 files)", 4,
             "LOOKUP, CREATE, GETXATTR security.capability, GETATTR of the parent", "2.0x"),
            ("unlink", "unlink a listed lower file (delete a lower tree)", 2, "UNLINK, GETATTR of the parent", "2.0x"),
        ]
        for (k, name, trips, which, target) in rows {
            let kt = m("\(k) kernel"), st = m("\(k) strata"), ut = m("\(k) strata-uring"), pt = m("\(k) passthrough_hp-uring")
            let floor = { (rt: Double) in (kt + Double(trips) * rt) / kt }
            print(String(format: "| %@ | %d (%@) | %.1f | %.1f | %.2fx | %.1f | %.2fx | %.1f | %.2fx | %.2fx | %@ |", name, trips, which, kt, st, st / kt,
                         ut, ut / kt, pt, floor(free), floor(same), target))
        }
        print("\nfloor = (kernel µs + round trips × round trip µs) / kernel µs: the ratio of a daemon that costs nothing.")
        if baseline != nil {
            print("\n| per call, this build against --baseline | strata µs | baseline µs | ratio | strata-uring µs | baseline-uring µs | ratio |")
            print("|---|---|---|---|---|---|---|")
            for k in ["null", "open", "create", "unlink"] {
                let a = m("\(k) strata"), b = m("\(k) baseline"), c = m("\(k) strata-uring"), d = m("\(k) baseline-uring")
                print(String(format: "| %@ | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f |", k, a, b, a / b, c, d, c / d))
            }
        }
    }

    /// Times `calls * 5` one-byte exchanges with a child process.
    func pingPong(_ exe: String, sameCPU: Bool) throws -> Double {
        var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw ValidationError("pipe: \(String(cString: strerror(errno)))") }
        defer { for fd in toChild + fromChild { close(fd) } }
        let n = calls * 5
        pin(pid: getpid(), cpus: "0")
        defer { pin(pid: getpid(), cpus: allCPUs) }
        let pid = try Spawn.start("/usr/bin/taskset", ["taskset", "-c", sameCPU ? "0" : "1", exe, "echo-peer", "--count", "\(n)",
                                                      "--in", "\(toChild[0])", "--out", "\(fromChild[1])"],
                                  inherit: [toChild[0], fromChild[1]])
        var b: UInt8 = 1
        let seconds = time {
            for _ in 0..<n {
                _ = write(toChild[1], &b, 1)
                _ = read(fromChild[0], &b, 1)
            }
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return seconds
    }
}

/// The other end of the ping-pong (started pinned by taskset): echoes
/// `count` bytes, exits.
struct EchoPeer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo-peer", abstract: "Internal: the child of `roundtrip`'s pipe ping-pong.", shouldDisplay: false)
    @Option var count: Int
    @Option(name: .customLong("in")) var input: Int32
    @Option var out: Int32

    func run() throws {
        var b: UInt8 = 0
        for _ in 0..<count {
            guard read(input, &b, 1) == 1 else { break }
            _ = write(out, &b, 1)
        }
    }
}

func absentXattr(_ path: String, _ n: Int) {
    var b = [UInt8](repeating: 0, count: 64)
    for _ in 0..<n { _ = lgetxattr(path, "user.strata-bench-absent", &b, 64) }
}

/// The daemon serving `mountpoint`: the process whose command line names it.
func daemonPID(mountpoint: String) -> pid_t? {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
    for e in entries {
        guard let pid = pid_t(e),
              let cmd = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { continue }
        let args = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        if args.contains("mount"), args.last.map({ mountpoint.hasSuffix($0) }) == true { return pid }
    }
    return nil
}

/// Pins every thread of `pid` to `cpus` (a taskset(1) list), through
/// util-linux's taskset: Glibc does not export sched_setaffinity to Swift.
func pin(pid: pid_t, cpus: String) {
    _ = try? Spawn.run("/bin/sh", ["sh", "-c", "taskset -a -p -c \(cpus) \(pid) >/dev/null"])
}

var allCPUs: String { "0-\(ProcessInfo.processInfo.activeProcessorCount - 1)" }
