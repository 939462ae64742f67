import ArgumentParser
import Archive
import CStrata
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Loading an image and starting a container's root, against podman on the
/// same archive in one run.
struct StoreBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "strata image load and create+mount against podman load and podman create+mount."
    )
    @Option(help: "Image size in MiB, over 3 layers.") var sizeMib = 200
    @Option(help: "Rounds; medians are reported.") var rounds = 3
    @Option(help: "Where to put the data.") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?
    @Option(help: "A root filesystem to make the image from (e.g. made by 'debootstrap --variant=minbase bookworm DIR'); split into 3 layers: usr, etc+var, the rest. Default: synthetic files.") var rootfs: String?

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root") }
        guard let podman = Spawn.which("podman") else { throw ValidationError("podman is needed: apt-get install podman") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        let root = try makeTemp(dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        progress("building a 3-layer docker-save archive from \(rootfs ?? "\(sizeMib) MiB of synthetic files")")
        let archive = try buildImageArchive(root, mib: sizeMib, rootfs: rootfs)
        var st = stat()
        stat(archive, &st)
        var load = Workload(name: "load a \(Int(st.st_size) >> 20) MiB 3-layer image (\(rootfs == nil ? "synthetic" : "rootfs"))", bytes: nil)
        var start = Workload(name: "create + mount a container", bytes: nil)
        for round in 0..<rounds {
            progress("round \(round + 1)/\(rounds)")
            let s = "\(root)/strata-\(round)", p = "\(root)/podman-\(round)"
            let pm = [podman, "--root", "\(p)/root", "--runroot", "\(p)/run", "--storage-driver", "overlay"]
            let order = round % 2 == 0 ? ["strata", "podman"] : ["podman", "strata"]
            for impl in order {
                sync()
                if impl == "strata" {
                    load.seconds["strata", default: []].append(time { _ = quiet(bin, [bin, "image", "load", "--root", s, "-i", archive]) })
                    start.seconds["strata", default: []].append(time {
                        _ = quiet(bin, [bin, "create", "--root", s, "bench:1", "--name", "c"])
                        _ = quiet(bin, [bin, "mount", "--root", s, "c"])
                    })
                    _ = quiet(bin, [bin, "rm", "--root", s, "c"])
                } else {
                    load.seconds["podman", default: []].append(time { _ = quiet(podman, pm + ["load", "-q", "-i", archive]) })
                    start.seconds["podman", default: []].append(time {
                        _ = quiet(podman, pm + ["create", "--name", "c", "localhost/bench:1", "/bin/true"])
                        _ = quiet(podman, pm + ["mount", "c"])
                    })
                    _ = quiet(podman, pm + ["rm", "-f", "c"])
                    _ = quiet(podman, pm + ["rmi", "-a", "-f"])
                }
            }
        }
        print("strata-bench store: \(rounds) rounds, medians; ratio = strata time / podman time, paired by round")
        print(report([load, start], impls: ["podman", "strata"], base: "podman"))
    }

}

/// Three layers (from a root filesystem, or synthetic files), as a docker
/// save archive tagged localhost/bench:1.
func buildImageArchive(_ root: String, mib: Int, rootfs: String?) throws -> String {
    do {
        var diffIDs: [String] = []
        var tars: [String] = []
        var split: [[String]] = [["usr"], ["etc", "var"], []]
        if let rootfs {
            let top = try FileManager.default.contentsOfDirectory(atPath: rootfs)
            split[2] = top.filter { !["usr", "etc", "var"].contains($0) }
        }
        for l in 0..<3 {
            let d = "\(root)/src\(l)"
            mkdir(d, 0o755)
            if let rootfs {
                // Hard links: the layers share the tree's data without copying it.
                for entry in split[l] where access("\(rootfs)/\(entry)", F_OK) == 0 || lstatExists("\(rootfs)/\(entry)") {
                    _ = try Spawn.run("/bin/cp", ["cp", "-al", "\(rootfs)/\(entry)", "\(d)/"])
                }
            } else {
                let files = max(1, mib * 4 / 3)        // 256 KiB files
                for i in 0..<files {
                    if i % 100 == 0 { mkdir("\(d)/dir\(i / 100)", 0o755) }
                    writeBytes("\(d)/dir\(i / 100)/f\(l)-\(i)", 256 * 1024)
                }
            }
            let tar = "\(root)/layer\(l).tar"
            let fd = open(tar, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            try LayerWriter().write(directory: d, to: fd)
            close(fd)
            diffIDs.append(try Digest.ofFile(tar))
            tars.append(tar)
        }
        let config: [String: Any] = ["architecture": "amd64", "os": "linux", "config": ["Cmd": ["/bin/true"]],
                                     "rootfs": ["type": "layers", "diff_ids": diffIDs]]
        let cdata = try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])
        let out = "\(root)/image.tar"
        let tb = try TarBuilder(path: out)
        let cname = "\(Digest.hex(Digest.of(cdata))).json"
        try tb.add(cname, data: cdata)
        for (t, d) in zip(tars, diffIDs) { try tb.add("\(Digest.hex(d)).tar", file: t) }
        let manifest: [[String: Any]] = [["Config": cname, "RepoTags": ["localhost/bench:1"], "Layers": diffIDs.map { "\(Digest.hex($0)).tar" }]]
        try tb.add("manifest.json", data: try JSONSerialization.data(withJSONObject: manifest))
        try tb.finish()
        return out
    }
}

/// Runs a command with its output discarded: only its time matters here.
func quiet(_ path: String, _ args: [String]) -> Int32 {
    let null = open("/dev/null", O_RDWR | O_CLOEXEC)
    defer { close(null) }
    guard let pid = try? Spawn.start(path, args, stdio: (null, null, null)) else { return -1 }
    return Spawn.wait(pid)
}

func lstatExists(_ p: String) -> Bool {
    var st = stat()
    return lstat(p, &st) == 0
}
