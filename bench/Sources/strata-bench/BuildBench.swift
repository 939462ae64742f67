import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Image builds as users run them: podman build and buildah bud with kernel
/// overlayfs, fuse-overlayfs and Strata as containers/storage's mount
/// program, in one run, rounds interleaved, medians. Each RUN command prints
/// its own time, so a step splits into the command and what
/// containers/storage does around it (with a mount program: its naive diff,
/// which mounts and walks the layer and its parent, and the commit).
struct BuildBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "podman build and buildah bud with kernel overlayfs, fuse-overlayfs and Strata as mount program."
    )

    @Option(help: "A root filesystem for the base image (e.g. made by 'debootstrap --variant=minbase bookworm DIR').") var rootfs: String
    @Option(help: "Rounds; medians are reported.") var rounds = 3
    @Option(help: "Where the storage goes: 'tmpfs' (a tmpfs mounted for the run) or a directory on disk.") var storage = "tmpfs"
    @Option(help: "Tools to build with: podman, buildah, or both.") var tool = "both"
    @Option(help: "fuse-overlayfs binary.") var fuseOverlayfs = "/usr/bin/fuse-overlayfs"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?
    @Flag(help: "Mount the kernel's overlayfs and Strata with metacopy=on (storage.conf's overlay.mountopt); fuse-overlayfs has no metacopy and runs as before.")
    var metacopy = false

    /// Each RUN wraps its command with a clock: `STEP-TIME <ms>`.
    static func run(_ command: String) -> String {
        "RUN s=$(date +%s%N); \(command); echo \"STEP-TIME $(( ($(date +%s%N)-s)/1000000 ))\""
    }

    static let dockerfiles: [(String, String)] = [
        ("three steps", """
            FROM localhost/minbase:1
            \(run("useradd -m builder && chown -R builder /usr/share && rm -rf /usr/share/doc /usr/share/man"))
            \(run("mkdir /data && for i in $(seq 1 2000); do echo $i > /data/f$i; done && cp -a /usr/lib /opt/lib"))
            \(run("find / -xdev -name '*.so*' > /tmp/list && rm -rf /opt/lib/x86_64-linux-gnu/perl-base /opt/lib/x86_64-linux-gnu/gconv"))
            """),
        ("package manager", """
            FROM localhost/minbase:1
            \(run("tar -C /usr/share -cf /tmp/pkg.tar . && mkdir /opt/pkg && tar -C /opt/pkg -xf /tmp/pkg.tar && rm /tmp/pkg.tar"))
            \(run("find /opt/pkg -type f | head -800 | while read f; do echo rewritten >> \"$f\"; done"))
            \(run("find /opt/pkg -type f | tail -800 | xargs rm -f && rm -rf /opt/pkg/locale"))
            """),
    ]

    struct Result { var total: Double; var steps: [(command: Double, outside: Double)] }

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root: podman's overlay driver needs it") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        guard access(bin, X_OK) == 0 else { throw ValidationError("no strata binary at \(bin); build it or pass --strata") }
        guard let podman = Spawn.which("podman") else { throw ValidationError("podman missing: apt-get install podman") }
        let buildah = Spawn.which("buildah")
        let tools = tool == "both" ? ["podman", "buildah"] : [tool]
        if tools.contains("buildah") && buildah == nil { throw ValidationError("buildah missing: apt-get install buildah") }
        let root = try makeTemp(storage == "tmpfs" ? "/tmp" : storage)
        var mountedTmpfs = false
        defer {
            if mountedTmpfs { umount2("\(root)/s", Int32(MNT_DETACH)) }
            _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root])
        }
        mkdir("\(root)/s", 0o755)
        if storage == "tmpfs" {
            guard try Spawn.run("/bin/mount", ["mount", "-t", "tmpfs", "-o", "size=12g", "tmpfs", "\(root)/s"]) == 0 else {
                throw ValidationError("cannot mount a tmpfs for the storage")
            }
            mountedTmpfs = true
        }
        // The lean mount program built beside `strata`.
        let program = String(bin[..<(bin.lastIndex(of: "/") ?? bin.startIndex)]) + "/strata-overlay"
        guard access(program, X_OK) == 0 else { throw ValidationError("no strata-overlay beside \(bin); swift build -c release") }
        // strata-uring: the same program on FUSE over io_uring (podman
        // passes its environment to the mount program); the kernel switch
        // is on for the run and put back after.
        let uringSwitch = try UringSwitch.turnOn()
        defer { uringSwitch.restore() }
        let meta = metacopy ? ["--storage-opt", "overlay.mountopt=nodev,metacopy=on"] : []
        let impls: [(String, [String])] = [
            ("kernel", meta),
            ("fuse-overlayfs", ["--storage-opt", "overlay.mount_program=\(fuseOverlayfs)"]),
            ("strata", ["--storage-opt", "overlay.mount_program=\(program)"] + meta),
            ("strata-uring", ["--storage-opt", "overlay.mount_program=\(program)"] + meta),
        ]
        func env(_ impl: String) -> [String: String] { ["STRATA_URING": impl == "strata-uring" ? "on" : "off"] }
        func storageArgs(_ impl: (String, [String])) -> [String] {
            ["--root", "\(root)/s/\(impl.0)/root", "--runroot", "\(root)/s/\(impl.0)/run", "--storage-driver", "overlay"] + impl.1
        }
        let baseTar = "\(root)/base.tar"
        guard try Spawn.run("/bin/tar", ["tar", "-C", rootfs, "-cf", baseTar, "."]) == 0 else { throw ValidationError("cannot tar \(rootfs)") }
        for impl in impls {
            let r = try shell("'\(podman)' \(storageArgs(impl).map { "'\($0)'" }.joined(separator: " ")) import '\(baseTar)' localhost/minbase:1 > /dev/null")
            guard r == 0 else { throw ValidationError("podman import into \(impl.0)'s storage failed") }
        }
        for (i, (_, text)) in Self.dockerfiles.enumerated() {
            mkdir("\(root)/ctx\(i)", 0o755)
            try text.write(toFile: "\(root)/ctx\(i)/Dockerfile", atomically: true, encoding: .utf8)
        }

        var results: [String: [Result]] = [:]   // "tool|dockerfile|impl"
        for round in 0..<rounds {
            for t in tools {
                for (i, (name, _)) in Self.dockerfiles.enumerated() {
                    // Rotate the order each round: no implementation always runs first.
                    for k in 0..<impls.count {
                        let impl = impls[(k + round) % impls.count]
                        let exe = t == "podman" ? podman : (buildah ?? "buildah")
                        let verb = t == "podman" ? ["build", "--no-cache", "--network", "none"] : ["bud", "--no-cache", "--network", "none"]
                        let args = storageArgs(impl) + verb + ["-t", "localhost/out:\(round)", "\(root)/ctx\(i)"]
                        let r = try timedBuild(exe, args, env: env(impl.0))
                        results["\(t)|\(name)|\(impl.0)", default: []].append(r)
                        progress("round \(round + 1) \(t) \(name) \(impl.0): \(String(format: "%.2f", r.total)) s")
                        _ = try shell("'\(exe)' \(storageArgs(impl).map { "'\($0)'" }.joined(separator: " ")) rmi -f localhost/out:\(round) > /dev/null 2>&1; "
                                      + "'\(podman)' \(storageArgs(impl).map { "'\($0)'" }.joined(separator: " ")) image prune -f > /dev/null 2>&1")
                    }
                }
            }
        }

        print("strata-bench build: \(rounds) rounds, medians; storage on \(storage); rootfs \(rootfs)\(metacopy ? "; kernel and Strata with metacopy=on" : "")")
        print("| tool | Dockerfile | kernel | fuse-overlayfs | strata | strata-uring | strata / kernel | strata / fuse-overlayfs | strata-uring / kernel | strata-uring / fuse-overlayfs |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        func med(_ key: String, _ f: (Result) -> Double) -> Double { median((results[key] ?? []).map(f)) }
        for t in tools {
            for (name, _) in Self.dockerfiles {
                let k = med("\(t)|\(name)|kernel", \.total), f = med("\(t)|\(name)|fuse-overlayfs", \.total)
                let s = med("\(t)|\(name)|strata", \.total), u = med("\(t)|\(name)|strata-uring", \.total)
                print(String(format: "| %@ | %@ | %.2f s | %.2f s | %.2f s | %.2f s | %.2fx | %.2fx | %.2fx | %.2fx |",
                             t, name, k, f, s, u, s / k, s / f, u / k, u / f))
            }
        }
        print("")
        print("Per step, medians: the RUN command itself / the rest of the step (containers/storage: mounts, diff, commit)")
        print("| tool | Dockerfile | step | kernel | fuse-overlayfs | strata | strata-uring | strata outside / kernel's | strata-uring outside / kernel's |")
        print("|---|---|---|---|---|---|---|---|---|")
        for t in tools {
            for (name, _) in Self.dockerfiles {
                let steps = results["\(t)|\(name)|kernel"]?.first?.steps.count ?? 0
                for st in 0..<steps {
                    func split(_ impl: String) -> (Double, Double) {
                        (med("\(t)|\(name)|\(impl)") { $0.steps.count > st ? $0.steps[st].command : .nan },
                         med("\(t)|\(name)|\(impl)") { $0.steps.count > st ? $0.steps[st].outside : .nan })
                    }
                    let k = split("kernel"), f = split("fuse-overlayfs"), s = split("strata"), u = split("strata-uring")
                    print(String(format: "| %@ | %@ | %d | %.2f / %.2f s | %.2f / %.2f s | %.2f / %.2f s | %.2f / %.2f s | %.2fx | %.2fx |",
                                 t, name, st + 2, k.0, k.1, f.0, f.1, s.0, s.1, u.0, u.1, s.1 / k.1, u.1 / k.1))
                }
            }
        }
    }

    func shell(_ script: String) throws -> Int32 { try Spawn.run("/bin/sh", ["sh", "-c", script]) }

    /// Runs one build, reading its output as it comes: a step lasts from
    /// its `STEP n/m` line to the next (the last to the end of the build).
    func timedBuild(_ exe: String, _ args: [String], env: [String: String]) throws -> Result {
        var p: [Int32] = [-1, -1]
        guard pipe(&p) == 0 else { throw ValidationError("pipe: \(currentErrno())") }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        let t0 = now()
        let pid = try Spawn.start(exe, [exe] + args, env: env, stdio: (null, p[1], p[1]))
        close(p[1])
        var stepStarts: [Double] = [], commands: [Double] = []
        var pending = ""
        var output = ""
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(p[0], $0.baseAddress, $0.count) }
            if n <= 0 { break }
            let at = now()
            pending += String(decoding: buf[0..<n], as: UTF8.self)
            while let nl = pending.firstIndex(of: "\n") {
                let line = String(pending[..<nl])
                pending = String(pending[pending.index(after: nl)...])
                output += line + "\n"
                if line.hasPrefix("STEP ") && !line.hasPrefix("STEP 1/") { stepStarts.append(at) }
                if line.hasPrefix("STEP-TIME "), let ms = Double(line.dropFirst(10)) { commands.append(ms / 1000) }
            }
        }
        close(p[0])
        let status = Spawn.wait(pid)
        let total = now() - t0
        guard status == 0 else { throw ValidationError("\(exe) \(args.joined(separator: " ")) failed (exit \(status)):\n\(output.suffix(2000))") }
        var steps: [(Double, Double)] = []
        for (i, start) in stepStarts.enumerated() {
            let end = i + 1 < stepStarts.count ? stepStarts[i + 1] : t0 + total
            let command = i < commands.count ? commands[i] : .nan
            steps.append((command, end - start - command))
        }
        return Result(total: total, steps: steps)
    }
}
