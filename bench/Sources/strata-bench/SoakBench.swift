import ArgumentParser
import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// A long run, not a timed test: fsstress in rounds on a union of a real
/// root filesystem's layers, the daemon's resident memory, descriptors and
/// nodes sampled every few seconds. After warm-up none may keep growing:
/// nodes follow what the kernel still references (its FORGETs honoured),
/// descriptors stay under the budget, memory follows nodes. Then a walk of a
/// 200,000-entry tree under the machine's open-file limit.
struct SoakBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "fsstress for a long time on a union of a root filesystem's layers, sampling the daemon's memory, descriptors and nodes."
    )

    @Option(help: "A root filesystem (e.g. made by 'debootstrap --variant=minbase bookworm DIR'); split into 3 layers: usr, etc+var, the rest.")
    var rootfs: String
    @Option(help: "xfstests' fsstress binary (ltp/fsstress, built as its README says).") var fsstress: String
    @Option(help: "Minutes to run.") var minutes = 30.0
    @Option(help: "Stop earlier once this many fsstress operations ran.") var ops = 1_000_000
    @Option(help: "fsstress processes.") var procs = 4
    @Option(help: "Operations per fsstress process and round (each round's tree is removed after it).") var perRound = 25_000
    @Option(help: "Seconds between samples.") var every = 5.0
    @Option(help: "Entries in the tree walked at the end (0: no walk).") var walk = 200_000
    @Option(help: "Where to put the layers (a disk-backed directory).") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?

    struct Sample { var t: Double; var rss: Int; var fds: Int; var nodes: Int; var dirFDs: Int; var handles: Int }

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root: mounting needs it") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        guard access(bin, X_OK) == 0 else { throw ValidationError("no strata binary at \(bin); build it or pass --strata") }
        guard access(fsstress, X_OK) == 0 else { throw ValidationError("no fsstress at \(fsstress)") }
        let root = try makeTemp(dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let layers = ["usr", "etc+var", "rest"].map { "\(root)/\($0)" }
        for l in layers { mkdir(l, 0o755) }
        let top = try FileManager.default.contentsOfDirectory(atPath: rootfs)
        for e in top {
            let l = e == "usr" ? layers[0] : (e == "etc" || e == "var") ? layers[1] : layers[2]
            _ = try Spawn.run("/bin/cp", ["cp", "-a", "\(rootfs)/\(e)", "\(l)/"])
        }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let (u, w, m) = ("\(root)/upper", "\(root)/work", "\(root)/merged")
        for d in [u, w, m] { mkdir(d, 0o755) }
        let st = try Spawn.run(bin, ["strata", "mount", "-o", "lowerdir=\(layers[2]):\(layers[1]):\(layers[0]),upperdir=\(u),workdir=\(w)", m])
        guard st == 0 else { throw ValidationError("strata mount failed (exit \(st))") }
        defer { umount2(m, Int32(MNT_DETACH)) }

        func sample(_ t0: Double, of mnt: String? = nil) -> Sample? {
            let r = try? captureOutput(bin, ["strata", "stats", "--json", mnt ?? m])
            guard let data = r?.data(using: .utf8), let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
            let fs = o["filesystem"] as? [String: Any] ?? [:]
            func n(_ v: Any?) -> Int { (v as? NSNumber)?.intValue ?? 0 }
            return Sample(t: now() - t0, rss: n(o["rss_kib"]), fds: n(o["open_descriptors"]), nodes: n(fs["nodes"]),
                          dirFDs: n(fs["cached directory descriptors"]), handles: n(fs["directories reopened by handle"]))
        }

        print("strata-bench soak: fsstress -p \(procs), \(perRound) ops per process and round, on 3 layers of \(rootfs); up to \(minutes) min or \(ops) ops")
        let t0 = now()
        var samples: [Sample] = []
        var done = 0, round = 0, failures = 0
        var roundEnds: [Sample] = []
        mkdir("\(m)/soak", 0o755)
        var nextSample = 0.0
        while now() - t0 < minutes * 60 && done < ops {
            let d = "\(m)/soak/r\(round)"
            let pid = try Spawn.start(fsstress, ["fsstress", "-d", d, "-p", "\(procs)", "-n", "\(perRound)", "-s", "\(round + 1)"],
                                      stdio: (null, null, 2))
            while true {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid {
                    if status != 0 { failures += 1; progress("fsstress round \(round) exited with status \(status)") }
                    break
                }
                if now() - t0 >= nextSample {
                    if let s = sample(t0) { samples.append(s) }
                    nextSample += every
                }
                usleep(100_000)
            }
            // The whole tree must still be reachable, then it goes.
            let find = Spawn.wait(try Spawn.start("/usr/bin/find", ["find", d, "-ls"], stdio: (null, null, 2)))
            if find != 0 { failures += 1; progress("find over round \(round)'s tree failed (exit \(find))") }
            _ = try Spawn.run("/bin/rm", ["rm", "-rf", d])
            if let s = sample(t0) { samples.append(s); roundEnds.append(s) }
            done += procs * perRound
            round += 1
            progress("round \(round): \(done) operations, \(Int(now() - t0)) s, \(samples.last.map { "rss \($0.rss / 1024) MiB, \($0.nodes) nodes, \($0.fds) fds" } ?? "")")
        }

        // fsstress builds a tree each round and the round's end removes it:
        // nodes and descriptors rise and fall with it. What must not grow is
        // each round's peak and what is left after the removal; memory is
        // compared after the first round (warm-up).
        let rounds = roundEnds.count
        print("")
        print("\(done) fsstress operations in \(round) rounds, \(Int(now() - t0)) s, \(samples.count) samples, \(failures) failures")
        print("| round | peak nodes | peak descriptors | nodes after removal | descriptors after removal | resident MiB after |")
        print("|---|---|---|---|---|---|")
        var start = 0.0
        var peaks: [(Int, Int)] = []
        for (i, end) in roundEnds.enumerated() {
            let within = samples.filter { $0.t >= start && $0.t <= end.t }
            let pn = within.map(\.nodes).max() ?? 0, pf = within.map(\.fds).max() ?? 0
            peaks.append((pn, pf))
            print("| \(i + 1) | \(pn) | \(pf) | \(end.nodes) | \(end.fds) | \(String(format: "%.1f", Double(end.rss) / 1024)) |")
            start = end.t
        }
        if rounds >= 3 {
            func pct(_ a: Int, _ b: Int) -> String { a == 0 ? "-" : String(format: "%+.1f%%", Double(b - a) * 100 / Double(a)) }
            let first = roundEnds[1], last = roundEnds[rounds - 1]
            let peakNodes = peaks.dropFirst().map(\.0), peakFDs = peaks.dropFirst().map(\.1)
            print("after warm-up (round 2 -> \(rounds)): resident memory \(pct(first.rss, last.rss)); "
                  + "round peaks: nodes \(peakNodes.min() ?? 0)-\(peakNodes.max() ?? 0), descriptors \(peakFDs.min() ?? 0)-\(peakFDs.max() ?? 0); "
                  + "after removal: nodes \(roundEnds.dropFirst().map(\.nodes).max() ?? 0) at most, descriptors \(roundEnds.dropFirst().map(\.fds).max() ?? 0) at most")
        }

        if walk > 0 {
            // A lower layer of `walk` entries, walked on a fresh mount with
            // the open-file limit at its hard maximum (20,000 here): never EMFILE.
            umount2(m, Int32(MNT_DETACH))
            let big = "\(root)/walk-layer"
            mkdir(big, 0o755)
            let perDir = 100
            for i in 0..<(walk / perDir) {
                let d = "\(big)/d\(i / 100)/e\(i % 100)"
                _ = try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
                for j in 0..<(perDir - 1) { close(open("\(d)/f\(j)", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)) }
            }
            let m2 = "\(root)/walk"
            mkdir(m2, 0o755)
            let st2 = try Spawn.run(bin, ["strata", "mount", "-o", "lowerdir=\(big):\(layers[0])", m2])
            guard st2 == 0 else { throw ValidationError("strata mount of the walk tree failed") }
            defer { umount2(m2, Int32(MNT_DETACH)) }
            var lim = rlimit()
            getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &lim)
            let errFile = "\(root)/walk.err"
            let t1 = now()
            let rc = try Spawn.run("/bin/sh", ["sh", "-c", "find '\(m2)' | wc -l > '\(root)/walk.count' 2> '\(errFile)'"])
            let count = (try? String(contentsOfFile: "\(root)/walk.count", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            let errors = (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? ""
            let s = sample(t0, of: m2)
            print("walk of \(count) entries (daemon's open-file limit \(lim.rlim_cur)/\(lim.rlim_max)): exit \(rc), \(String(format: "%.1f", now() - t1)) s, \(errors.contains("Too many open files") ? "EMFILE" : "no EMFILE"), daemon \(s.map { "\($0.fds) fds, \($0.nodes) nodes, \($0.rss / 1024) MiB" } ?? "?")")
        }
    }
}

/// Runs a program and returns what it printed.
func captureOutput(_ path: String, _ args: [String]) throws -> String {
    var p: [Int32] = [-1, -1]
    guard pipe(&p) == 0 else { throw ValidationError("pipe: \(currentErrno())") }
    let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
    defer { close(null) }
    let pid = try Spawn.start(path, args, stdio: (null, p[1], 2))
    close(p[1])
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(p[0], $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    close(p[0])
    _ = Spawn.wait(pid)
    return String(decoding: out, as: UTF8.self)
}
