import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// From the start of a pull to a container's first output under containerd
/// (Debian's 1.6), the kubelet's way: CRI PullImage, then a container in the
/// k8s.io namespace. containerd's own overlayfs snapshotter against Strata's
/// with a full pull (the image as stored: uncompressed layers, as `strata push` gives them) and with lazy pulls (eStargz,
/// zstd:chunked), over the throttled link `lazy` uses. A fresh containerd
/// and store every round.
struct ContainerdBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "containerd",
        abstract: "containerd: CRI pull + first output, its overlayfs snapshotter against Strata's (full and lazy), over a throttled registry."
    )
    @OptionGroup var link: LinkBenchOptions

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root") }
        guard let containerd = Spawn.which("containerd") else {
            throw ValidationError("needs containerd (scripts/setup.sh installs it)")
        }
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let bin = link.strata ?? here + "/strata"
        let overlayBin = (bin as NSString).deletingLastPathComponent + "/strata-overlay"
        let top = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let criScript = top.deletingLastPathComponent().appendingPathComponent("Tests/cri/cri_pull.py").path
        for f in [criScript, overlayBin] where access(f, R_OK) != 0 { throw ValidationError("\(f) is missing") }
        let root = try makeTemp(link.dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let archive = try buildImageArchive(root, mib: 0, rootfs: link.rootfs)
        let registry = try ThrottledRegistry(root: root, mbit: link.mbit)
        defer { registry.stop() }
        let port = registry.port, proxyPort = registry.proxyPort
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        _ = quiet(bin, [bin, "image", "load", "--root", "\(root)/src", "-i", archive])
        for (tag, compression) in [("plain", "none"), ("estargz", "estargz"), ("zstd", "zstd:chunked")] {
            guard quiet(bin, [bin, "push", "--root", "\(root)/src", "--compression", compression, "localhost/bench:1",
                              "127.0.0.1:\(port)/bench/ctd:\(tag)"]) == 0 else { throw ValidationError("push of \(compression) failed") }
        }
        func fetched() -> Int64 { registry.fetched() }
        let host = "127.0.0.1:\(proxyPort)"
        // (implementation, snapshotter, image tag)
        let impls: [(String, String, String)] = [
            ("overlayfs snapshotter", "overlayfs", "plain"),
            ("strata, full pull", "strata", "plain"),
            ("strata, lazy eStargz", "strata", "estargz"),
            ("strata, lazy zstd:chunked", "strata", "zstd"),
        ]
        var w = Workload(name: "CRI pull + cat /etc/os-release", bytes: nil)
        var bytes: [String: [Double]] = [:]
        var n = 0
        try rotatedRounds(link.rounds, impls.map(\.0)) { name in
            guard let (_, snapshotter, tag) = impls.first(where: { $0.0 == name }) else { return }
            n += 1
            let d = "\(root)/run-\(n)"
            mkdir(d, 0o755)
            mkdir("\(d)/sbin", 0o755)
            symlink(bin, "\(d)/sbin/strata")
            symlink(overlayBin, "\(d)/sbin/strata-overlay")
            try """
            version = 2
            root = "\(d)/root"
            state = "\(d)/state"
            [grpc]
              address = "\(d)/containerd.sock"
            [proxy_plugins]
              [proxy_plugins.strata]
                type = "snapshot"
                address = "\(d)/strata.sock"
            [plugins."io.containerd.grpc.v1.cri"]
              [plugins."io.containerd.grpc.v1.cri".containerd]
                snapshotter = "\(snapshotter)"
                disable_snapshot_annotations = false
              [plugins."io.containerd.grpc.v1.cri".registry.mirrors."\(host)"]
                endpoint = ["http://\(host)"]

            """.write(toFile: "\(d)/config.toml", atomically: true, encoding: .utf8)
            let snap = try Spawn.start(bin, [bin, "snapshotter", "--root", "\(d)/strata", "--address", "\(d)/strata.sock"], stdio: (null, null, null))
            // mount.fuse3 runs strata with the shell's default PATH: in a mount
            // namespace of its own, /usr/local/sbin holds the binaries measured.
            let ctd = try Spawn.start("/usr/bin/unshare", ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                                                           "mount --bind '\(d)/sbin' /usr/local/sbin && exec '\(containerd)' --config '\(d)/config.toml'"],
                                      stdio: (null, null, null))
            defer {
                kill(ctd, SIGTERM); _ = Spawn.wait(ctd)
                kill(snap, SIGTERM); _ = Spawn.wait(snap)
                _ = try? Spawn.run("/usr/bin/pkill", ["pkill", "-f", "containerd-shim-runc-v2 -namespace .* -address \(d)/containerd.sock"])
            }
            let ctr = ["/usr/bin/nsenter", "-t", "\(ctd)", "-m", "/usr/bin/ctr", "-a", "\(d)/containerd.sock"]
            var ready = false
            for _ in 0..<100 {
                if quiet(ctr[0], ctr + ["version"]) == 0 { ready = true; break }
                usleep(100_000)
            }
            guard ready else { throw ValidationError("containerd did not answer in \(d)") }
            let image = "\(host)/bench/ctd:\(tag)"
            sync()
            let before = fetched()
            let t0 = now()
            let pull = Process()
            // Debian's python3, which has python3-grpcio and python3-grpc-tools.
            pull.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            pull.arguments = [criScript, "\(d)/containerd.sock", image]
            let errors = Pipe()
            pull.standardError = errors
            pull.standardOutput = FileHandle.nullDevice
            try pull.run()
            pull.waitUntilExit()
            guard pull.terminationStatus == 0 else {
                let why = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                throw ValidationError("CRI pull of \(image) with \(snapshotter) failed: \(why)")
            }
            let t = now() - t0 + (try firstOutput(ctr[0], ctr + ["-n", "k8s.io", "run", "--rm", "--snapshotter", snapshotter, image, "b\(n)", "cat", "/etc/os-release"]))
            w.seconds[name, default: []].append(t)
            bytes[name, default: []].append(Double(fetched() - before))
        }
        print("strata-bench containerd: containerd \(containerdVersion()), \(link.rounds) rounds, \(link.mbit) Mbit/s link; seconds from CRI PullImage to the container's first output, medians; ratios paired by round")
        print(report([w], impls: impls.map(\.0), base: "overlayfs snapshotter"))
        print("| bytes fetched (median) | " + impls.map(\.0).joined(separator: " | ") + " |")
        print("|---|---|---|---|---|")
        print("| CRI pull + cat /etc/os-release | " + impls.map { String(format: "%.1f MB", median(bytes[$0.0] ?? []) / 1e6) }.joined(separator: " | ") + " |")
    }

    func containerdVersion() -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/containerd")
        p.arguments = ["--version"]
        let out = Pipe()
        p.standardOutput = out
        guard (try? p.run()) != nil else { return "?" }
        p.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return text.split(separator: " ").dropFirst(2).first.map(String.init) ?? "?"
    }
}
