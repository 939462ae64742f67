import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// From the start of `podman pull` to a container's first output, over the
/// throttled link `lazy` uses: podman's own pull (gzip, and zstd:chunked
/// with containers/storage's partial pulls on), against podman with Strata's
/// layer store (eStargz and zstd:chunked, pulled lazily). A fresh podman
/// store, Strata store and layer store every round.
struct PodmanLazyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "podman-lazy",
        abstract: "podman: pull + first output, its own pull (gzip, zstd:chunked partial) against Strata's layer store, over a throttled registry."
    )
    @OptionGroup var link: LinkBenchOptions

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root") }
        guard let podman = Spawn.which("podman") else {
            throw ValidationError("needs podman (scripts/setup.sh installs it)")
        }
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let bin = link.strata ?? here + "/strata"
        guard access(bin, X_OK) == 0 else { throw ValidationError("\(bin) is missing") }
        let root = try makeTemp(link.dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let archive = try buildImageArchive(root, mib: 0, rootfs: link.rootfs)
        let registry = try ThrottledRegistry(root: root, mbit: link.mbit)
        defer { registry.stop() }
        let port = registry.port, proxyPort = registry.proxyPort
        // Strata pushes eStargz and zstd:chunked; podman pushes its own gzip.
        // (podman's own zstd:chunked push is not used: podman 4.3 reuses
        // the gzip blobs its blob cache knows in this registry instead of
        // compressing again, and has no --force-compression.)
        _ = quiet(bin, [bin, "image", "load", "--root", "\(root)/src", "-i", archive])
        for (tag, compression) in [("estargz", "estargz"), ("zstd", "zstd:chunked")] {
            guard quiet(bin, [bin, "push", "--root", "\(root)/src", "--compression", compression, "localhost/bench:1",
                              "127.0.0.1:\(port)/bench/pod:\(tag)"]) == 0 else { throw ValidationError("push of \(compression) failed") }
        }
        let srcPodman = [podman, "--root", "\(root)/podsrc/root", "--runroot", "\(root)/podsrc/run", "--storage-driver", "vfs"]
        guard quiet(podman, srcPodman + ["load", "-i", archive]) == 0 else { throw ValidationError("podman load failed") }
        for (tag, format) in [("gzip", "gzip")] {
            guard quiet(podman, srcPodman + ["push", "--tls-verify=false", "--compression-format", format, "localhost/bench:1",
                                             "docker://127.0.0.1:\(port)/bench/pod:\(tag)"]) == 0 else { throw ValidationError("podman push of \(format) failed") }
        }
        func fetched() -> Int64 { registry.fetched() }
        let host = "127.0.0.1:\(proxyPort)"
        // (implementation, image tag, layer store, partial pulls)
        let impls: [(String, String, Bool, Bool)] = [
            ("podman, gzip", "gzip", false, false),
            ("podman, zstd:chunked partial", "zstd", false, true),
            ("layer store, eStargz", "estargz", true, false),
            ("layer store, zstd:chunked", "zstd", true, false),
        ]
        var w = Workload(name: "podman pull + run cat /etc/os-release", bytes: nil)
        var bytes: [String: [Double]] = [:]
        var n = 0
        try rotatedRounds(link.rounds, impls.map(\.0)) { name in
            guard let (_, tag, layerStore, partial) = impls.first(where: { $0.0 == name }) else { return }
            n += 1
            let d = "\(root)/run-\(n)"
            mkdir(d, 0o755)
            mkdir("\(d)/layers", 0o755)
            var conf = "[storage]\ndriver = \"overlay\"\ngraphroot = \"\(d)/root\"\nrunroot = \"\(d)/run\"\n[storage.options]\n"
            if layerStore { conf += "additionallayerstores = [\"\(d)/layers:ref\"]\n" }
            if partial { conf += "pull_options = {enable_partial_images = \"true\", use_hard_links = \"false\", ostree_repos = \"\"}\n" }
            try conf.write(toFile: "\(d)/storage.conf", atomically: true, encoding: .utf8)
            let pod = ["/usr/bin/env", "CONTAINERS_STORAGE_CONF=\(d)/storage.conf", podman]
            defer {
                _ = quiet(pod[0], pod + ["rm", "-a", "-f"])
                _ = quiet(pod[0], pod + ["rmi", "-a", "-f"])
                umount2("\(d)/root/overlay", Int32(MNT_DETACH))
                if layerStore { _ = quiet(bin, [bin, "layer-store", "--unmount", "\(d)/layers"]); umount2("\(d)/layers", Int32(MNT_DETACH)) }
            }
            let image = "\(host)/bench/pod:\(tag)"
            sync()
            let before = fetched()
            let t0 = now()
            // The layer store's start counts: a user starts it once, but it
            // is part of what a first pull waits for here.
            if layerStore {
                guard quiet(bin, [bin, "layer-store", "--root", "\(d)/strata", "--lazy-fetch", "on-read", "\(d)/layers"]) == 0 else {
                    throw ValidationError("strata layer-store did not mount")
                }
            }
            guard quiet(pod[0], pod + ["pull", "-q", "--tls-verify=false", image]) == 0 else { throw ValidationError("podman pull of \(image) failed") }
            let t = now() - t0 + (try firstOutput(pod[0], pod + ["run", "--rm", "--net", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                                                 image, "cat", "/etc/os-release"]))
            w.seconds[name, default: []].append(t)
            bytes[name, default: []].append(Double(fetched() - before))
        }
        print("strata-bench podman-lazy: podman \(version(podman)), \(link.rounds) rounds, \(link.mbit) Mbit/s link; seconds from podman pull to the container's first output, medians; ratios paired by round")
        print(report([w], impls: impls.map(\.0), base: "podman, gzip"))
        print("| bytes fetched (median) | " + impls.map(\.0).joined(separator: " | ") + " |")
        print("|---|---|---|---|---|")
        print("| podman pull + run | " + impls.map { String(format: "%.1f MB", median(bytes[$0.0] ?? []) / 1e6) }.joined(separator: " | ") + " |")
    }

    func version(_ podman: String) -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: podman)
        p.arguments = ["--version"]
        let out = Pipe()
        p.standardOutput = out
        guard (try? p.run()) != nil else { return "?" }
        p.waitUntilExit()
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: " ").last.map { String($0.dropLast()) } ?? "?"
    }
}
