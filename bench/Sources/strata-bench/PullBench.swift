import ArgumentParser
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Pulling one image from a registry on 127.0.0.1 into empty storage:
/// strata pull against skopeo copy (to an OCI layout) and podman pull, in
/// one run, medians and ratios.
struct PullBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "strata pull against skopeo copy and podman pull from Debian's docker-registry on 127.0.0.1."
    )
    @Option(help: "Image size in MiB, over 3 layers (synthetic, unless --rootfs).") var sizeMib = 200
    @Option(help: "A root filesystem to make the image from (see 'store --help').") var rootfs: String?
    @Option(help: "Rounds; medians are reported.") var rounds = 3
    @Option(help: "Where to put the data.") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?
    @Flag(help: "Push the image with gzip-compressed layers (skopeo --dest-compress), as registries usually hold them.") var gzip = false

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root") }
        guard let registry = Spawn.which("docker-registry"), let skopeo = Spawn.which("skopeo"), let podman = Spawn.which("podman") else {
            throw ValidationError("needs docker-registry, skopeo and podman (apt-get install docker-registry skopeo podman)")
        }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        let root = try makeTemp(dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let archive = try buildImageArchive(root, mib: sizeMib, rootfs: rootfs)
        let port = Int.random(in: 20000...32000)   // below the ephemeral range
        try "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: \(root)/registry\nhttp:\n  addr: 127.0.0.1:\(port)\nlog:\n  level: error\n"
            .write(toFile: "\(root)/registry.yml", atomically: true, encoding: .utf8)
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        let reg = try Spawn.start(registry, [registry, "serve", "\(root)/registry.yml"], stdio: (null, null, null))
        defer { kill(reg, SIGTERM); _ = Spawn.wait(reg); close(null) }
        usleep(500_000)
        let ref = "127.0.0.1:\(port)/bench/image:1"
        _ = quiet(bin, [bin, "image", "load", "--root", "\(root)/src", "-i", archive])
        let pushed = gzip
            ? quiet(skopeo, [skopeo, "copy", "--dest-tls-verify=false", "--dest-compress", "--dest-compress-format", "gzip",
                             "docker-archive:\(archive)", "docker://\(ref)"])
            : quiet(bin, [bin, "push", "--root", "\(root)/src", "localhost/bench:1", ref])
        guard pushed == 0 else { throw ValidationError("push to the registry failed") }
        var pull = Workload(name: "pull a 3-layer image (\(rootfs == nil ? "\(sizeMib) MiB synthetic" : "rootfs"), \(gzip ? "gzip" : "uncompressed") layers)", bytes: nil)
        for round in 0..<rounds {
            progress("round \(round + 1)/\(rounds)")
            let impls = ["strata", "skopeo", "podman"]
            for k in 0..<3 {
                let impl = impls[(k + round) % 3]
                let out = "\(root)/\(impl)-\(round)"
                sync()
                let t: Double
                switch impl {
                case "strata": t = time { _ = quiet(bin, [bin, "pull", "--root", out, ref]) }
                case "skopeo": t = time { _ = quiet(skopeo, [skopeo, "copy", "--src-tls-verify=false", "docker://\(ref)", "oci:\(out):1"]) }
                default: t = time { _ = quiet(podman, [podman, "--root", "\(out)/root", "--runroot", "\(out)/run", "--storage-driver", "overlay", "pull", "--tls-verify=false", ref]) }
                }
                pull.seconds[impl, default: []].append(t)
                // Outputs stay until the end: on journal-less ext4 (these
                // machines) creating files right after deleting thousands
                // scans the freed inodes, which would charge one
                // implementation for the previous one's cleanup.
            }
        }
        print("strata-bench pull: \(rounds) rounds, medians; ratios are times against skopeo copy, paired by round")
        print(report([pull], impls: ["skopeo", "podman", "strata"], base: "skopeo"))
    }
}
