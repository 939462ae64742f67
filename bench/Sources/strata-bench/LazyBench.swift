import ArgumentParser
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Time from the command to a container's first output, over a registry
/// link of fixed bandwidth (a throttling proxy in front of Debian's
/// docker-registry on 127.0.0.1): a full pull then the run, against a lazy
/// pull then the run, for a command that reads little of the image and
/// one that reads all of it. Fresh stores every round; bytes fetched are
/// counted at the proxy.
struct LazyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lazy",
        abstract: "Full pull + run against lazy pull + run, to the container's first output, over a throttled registry."
    )
    @OptionGroup var link: LinkBenchOptions
    @Option(help: "Layer format pushed and pulled: estargz or zstd:chunked.") var format = "estargz"

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root") }
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let bin = link.strata ?? here + "/strata"
        let root = try makeTemp(link.dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let archive = try buildImageArchive(root, mib: 0, rootfs: link.rootfs)
        let registry = try ThrottledRegistry(root: root, mbit: link.mbit)
        defer { registry.stop() }
        let port = registry.port, proxyPort = registry.proxyPort
        // Pushed straight to the registry; pulled through the proxy.
        _ = quiet(bin, [bin, "image", "load", "--root", "\(root)/src", "-i", archive])
        guard quiet(bin, [bin, "push", "--root", "\(root)/src", "--compression", format, "localhost/bench:1", "127.0.0.1:\(port)/bench/lazy:1"]) == 0 else {
            throw ValidationError("push to the registry failed")
        }
        let ref = "127.0.0.1:\(proxyPort)/bench/lazy:1"
        func fetched() -> Int64 { registry.fetched() }

        let commands: [(String, [String])] = [
            ("echo (reads /bin/echo and libc)", ["/bin/echo", "ready"]),
            ("read every file, then echo", ["/bin/sh", "-c", "find / -xdev -type f -print0 | xargs -0 cat > /dev/null; echo ready"]),
        ]
        let impls = ["full pull + run", "lazy pull + run", "lazy pull + run (on-read)"]
        var workloads: [Workload] = []
        var bytes: [String: [String: [Int64]]] = [:]
        var pullShare: [String: [String: [Double]]] = [:]
        for (label, argv) in commands {
            var w = Workload(name: label, bytes: nil)
            var n = 0
            try rotatedRounds(link.rounds, impls) { impl in
                n += 1
                let store = "\(root)/store-\(workloads.count)-\(n)"
                let before = fetched()
                let pullArgs = [bin, "pull", "--root", store] + (impl == "full pull + run" ? [] : ["--lazy"]) + [ref]
                let runArgs = [bin, "run", "--root", store] + (impl.hasSuffix("(on-read)") ? ["--lazy-fetch", "on-read"] : []) + [ref, "--"] + argv
                sync()
                // The two commands back to back, as a user types them; the
                // pull's share is kept to say where the time goes.
                let t0 = now()
                guard quiet(bin, pullArgs) == 0 else { throw ValidationError("\(pullArgs.joined(separator: " ")) failed") }
                let pulled = now() - t0
                let t = pulled + (try firstOutput(bin, runArgs))
                w.seconds[impl, default: []].append(t)
                pullShare[label, default: [:]][impl, default: []].append(pulled)
                bytes[label, default: [:]][impl, default: []].append(fetched() - before)
                // Stores stay until the end (see PullBench on journal-less ext4).
            }
            workloads.append(w)
        }
        print("strata-bench lazy: \(format) layers, \(link.rounds) rounds, \(link.mbit) Mbit/s link; seconds to the container's first output, medians; ratios paired by round")
        print(report(workloads, impls: impls, base: "full pull + run"))
        print("| bytes fetched (median) | " + impls.joined(separator: " | ") + " |")
        print("|---|---|---|---|")
        for (label, _) in commands {
            let row = impls.map { impl -> String in
                let xs = (bytes[label]?[impl] ?? []).map(Double.init)
                return String(format: "%.1f MB", median(xs) / 1e6)
            }
            print("| \(label) | " + row.joined(separator: " | ") + " |")
        }
        print("")
        print("| of which the pull (median) | " + impls.joined(separator: " | ") + " |")
        print("|---|---|---|---|")
        for (label, _) in commands {
            let row = impls.map { String(format: "%.1f ms", median(pullShare[label]?[$0] ?? []) * 1000) }
            print("| \(label) | " + row.joined(separator: " | ") + " |")
        }
    }
}
