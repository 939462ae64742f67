import Foundation
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Debian's containerd (1.6), started with its own root, state and socket,
/// with `strata snapshotter` as a proxy plugin: images pulled from a
/// registry on 127.0.0.1 and containers run through it, compared with
/// containerd's own overlayfs snapshotter.
final class Containerd: @unchecked Sendable {
    let dir: TempDir
    var containerdPID: pid_t = 0
    var snapshotterPID: pid_t = 0
    let driver: String
    /// Snapshots of lazily pulled layers mount as fuse3.strata, which
    /// mount.fuse3 runs from the default PATH: containerd then gets the
    /// mount namespace the fuse driver gets.
    var lazyMounts: Bool { criRegistry != nil }
    var criRegistry: String?
    var snapshotterOptions: [String] = []
    var socket: String { "\(dir.path)/containerd.sock" }
    var snapshotterSocket: String { "\(dir.path)/strata.sock" }
    var strataRoot: String { rootOverride ?? "\(dir.path)/strata" }
    /// A store elsewhere (on a btrfs the test made, for the btrfs driver).
    var rootOverride: String?

    /// `criRegistry`: the CRI plugin pulls into Strata (snapshot labels on)
    /// and reaches that registry over plain HTTP.
    init(driver: String = "overlay", criRegistry: String? = nil, snapshotterOptions: [String] = [], strataRoot: String? = nil) throws {
        dir = TempDir("strata-containerd")
        rootOverride = strataRoot
        self.driver = driver
        self.criRegistry = criRegistry
        self.snapshotterOptions = snapshotterOptions
        var cri = ""
        if let host = criRegistry {
            cri = """
            [plugins."io.containerd.grpc.v1.cri"]
              [plugins."io.containerd.grpc.v1.cri".containerd]
                snapshotter = "strata"
                disable_snapshot_annotations = false
              [plugins."io.containerd.grpc.v1.cri".registry.mirrors."\(host)"]
                endpoint = ["http://\(host)"]

            """
        }
        let config = """
        version = 2
        root = "\(dir.path)/root"
        state = "\(dir.path)/state"
        [grpc]
          address = "\(socket)"
        [proxy_plugins]
          [proxy_plugins.strata]
            type = "snapshot"
            address = "\(snapshotterSocket)"

        """ + cri
        try config.write(toFile: "\(dir.path)/config.toml", atomically: true, encoding: .utf8)
        try startSnapshotter()
        try startContainerd()
    }

    func startSnapshotter() throws {
        let log = open("\(dir.path)/snapshotter.log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(log) }
        // The btrfs driver is the store's, chosen when it is made.
        let how = driver == "btrfs" ? ["--storage-driver", "btrfs", "snapshotter"] : ["snapshotter", "--driver", driver]
        snapshotterPID = try Spawn.start(MountEnvironment.binary, ["strata"] + how + ["--root", strataRoot, "--address", snapshotterSocket]
                                         + snapshotterOptions, stdio: (-1, log, log))
        guard waitFor(20, { access(self.snapshotterSocket, F_OK) == 0 }) else {
            throw SysError(.timedOut, "strata snapshotter did not serve \(snapshotterSocket): \(self.log(of: "snapshotter.log"))", "")
        }
    }

    func startContainerd() throws {
        guard let bin = Spawn.which("containerd") else { throw SysError(.noSuchFileOrDirectory, "containerd missing: apt-get install containerd", "") }
        let log = open("\(dir.path)/containerd.log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(log) }
        if driver == "fuse" || lazyMounts {
            // containerd performs a fuse3.strata-overlay mount through
            // mount.fuse3, which runs strata-overlay with the shell's default
            // PATH: in a mount namespace of its own, /usr/local/sbin holds
            // the strata-overlay under test (the machine's stays untouched).
            let sbin = "\(dir.path)/sbin"
            mkdir(sbin, 0o755)
            let overlay = (MountEnvironment.binary as NSString).deletingLastPathComponent + "/strata-overlay"
            symlink(overlay, "\(sbin)/strata-overlay")
            symlink(MountEnvironment.binary, "\(sbin)/strata")
            // The new namespace starts with a copy of every mount, other
            // tests' included: those copies go at once (lazily), or they
            // would hold other tests' overlays busy (an index=on upper
            // cannot be mounted again while a copy lives) and their FUSE
            // daemons up after those tests unmount.
            let script = "awk '{print $2}' /proc/self/mounts | grep '^/tmp/' | grep -v '^\(dir.path)' | sort -r | "
                + "while read m; do umount -l \"$m\" 2>/dev/null; done; "
                + "mount --bind '\(sbin)' /usr/local/sbin && exec '\(bin)' --config '\(dir.path)/config.toml'"
            containerdPID = try Spawn.start("/usr/bin/unshare", ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script],
                                            stdio: (-1, log, log))
        } else {
            containerdPID = try Spawn.start(bin, [bin, "--config", "\(dir.path)/config.toml"], stdio: (-1, log, log))
        }
        guard waitFor(30, { self.ctr(["version"]).status == 0 }) else {
            throw SysError(.timedOut, "containerd did not answer on \(socket)", "")
        }
    }

    func log(of name: String) -> String { (try? String(contentsOfFile: "\(dir.path)/\(name)", encoding: .utf8)).map { String($0.suffix(2000)) } ?? "" }

    /// ctr mounts snapshots itself too (`run` reads the image's users):
    /// with the fuse driver it runs in containerd's mount namespace.
    func ctr(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        if (driver == "fuse" || lazyMounts) && containerdPID > 0 {
            return runProgram("/usr/bin/nsenter", ["-t", "\(containerdPID)", "-m", "/usr/bin/ctr", "-a", socket] + args)
        }
        return runProgram("/usr/bin/ctr", ["-a", socket] + args)
    }

    static func stop(_ pid: inout pid_t) {
        endChild(pid, signal: SIGTERM, seconds: 10)
        pid = 0
    }

    func stop() {
        Self.stop(&containerdPID)
        Self.stop(&snapshotterPID)
        // Whatever containerd left mounted under our directories (a task's
        // rootfs, if a test failed half-way), lazily.
        for m in mountPoints(under: dir.path).reversed() { umount2(m, Int32(MNT_DETACH)) }
        // containerd's shims outlive it; they are ours (started for our tasks).
        _ = runProgram("/usr/bin/pkill", ["-f", "containerd-shim-runc-v2 -namespace .* -address \(socket)"])
        // Union daemons mount.fuse3 started for our snapshots (a mount left
        // in containerd's own namespace would keep them alive).
        _ = runProgram("/usr/bin/pkill", ["-f", "strata-overlay .*\(dir.path)/strata/"])
        _ = runProgram("/usr/bin/pkill", ["-f", "strata mount .*\(dir.path)/strata/"])
        _ = runProgram("/usr/bin/pkill", ["-f", "strata .*overlay .*\(dir.path)/strata/"])
    }

    deinit { stop() }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ContainerdTests {
    /// busybox (the fixture) pushed to a fresh registry.
    static func registryWithBusybox() throws -> LocalRegistry {
        let reg = try LocalRegistry()
        let t = TempDir()
        let strata = MountEnvironment.binary
        #expect(runProgram(strata, ["image", "load", "--root", t.path, "-i", "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let p = runProgram(strata, ["push", "--root", t.path, "localhost/eco/busybox:l3", "\(reg.host)/busybox:l3"])
        #expect(p.status == 0, "\(p.stderr)")
        return reg
    }

    /// `image` pulled with Strata's snapshotter and containerd's own
    /// overlayfs, and the same container run on both: output, a write, a
    /// delete, and the tree.
    static func pullAndRunOnBoth(_ c: Containerd, _ image: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for snapshotter in ["strata", "overlayfs"] {
            let pull = c.ctr(["image", "pull", "--plain-http", "--snapshotter", snapshotter, image])
            #expect(pull.status == 0, "pull with \(snapshotter): \(pull.stderr) \(c.log(of: "snapshotter.log"))", sourceLocation: sourceLocation)
        }
        // The results go to a file on a bound host directory, not through
        // ctr's stdout: `ctr run` cancels copying the task's output when it
        // exits, and now and then drops its last line (seen with
        // containerd's own overlayfs snapshotter).
        let script = "(echo hello; echo data > /tmp/w; cat /tmp/w; rm /bin/echo; ls /bin/echo 2>&1; find / -xdev | sort | md5sum) > /out/result 2>&1"
        var outputs: [String: String] = [:]
        for snapshotter in ["strata", "overlayfs"] {
            let out = "\(c.dir.path)/out-\(snapshotter)"
            mkdir(out, 0o777)
            let run = c.ctr(["run", "--rm", "--snapshotter", snapshotter, "--mount", "type=bind,src=\(out),dst=/out,options=rbind:rw",
                             image, "t-\(snapshotter)", "sh", "-c", script])
            #expect(run.status == 0, "run with \(snapshotter): \(run.stderr) \(c.log(of: "snapshotter.log"))", sourceLocation: sourceLocation)
            outputs[snapshotter] = (try? String(contentsOfFile: "\(out)/result", encoding: .utf8)) ?? ""
        }
        #expect(outputs["strata"]?.hasPrefix("hello\ndata\nls: /bin/echo: No such file or directory\n") == true
                && outputs["strata"]?.hasSuffix("  -\n") == true, "\(outputs["strata"] ?? "")", sourceLocation: sourceLocation)
        #expect(outputs["strata"] == outputs["overlayfs"], sourceLocation: sourceLocation)
    }

    @Test func ctrPullsAndRunsThroughStrataAsThroughItsOwnOverlayfs() throws {
        let reg = try Self.registryWithBusybox()
        defer { reg.stop() }
        let c = try Containerd()
        defer { c.stop() }
        let image = "\(reg.host)/busybox:l3"
        #expect(c.ctr(["plugins", "ls"]).stdout.contains("io.containerd.snapshotter.v1    strata"))
        Self.pullAndRunOnBoth(c, image)

        // ctr's snapshot commands.
        let ls = c.ctr(["snapshots", "--snapshotter", "strata", "ls"])
        #expect(ls.status == 0 && ls.stdout.split(separator: "\n").count == 4, "three committed layers and the header: \(ls.stdout)")
        let tree = c.ctr(["snapshots", "--snapshotter", "strata", "tree"])
        #expect(tree.status == 0 && tree.stdout.contains("\\_"))
        // KEY PARENT KIND rows: the bottom layer has no parent, the top is no one's parent.
        let rows = ls.stdout.split(separator: "\n").dropFirst().map { $0.split(separator: " ").map(String.init) }
        let bottom = try #require(rows.first { $0.count == 2 }?.first, "\(ls.stdout)")
        let parents = Set(rows.compactMap { $0.count == 3 ? $0[1] : nil })
        let topLayer = try #require(rows.first { !parents.contains($0[0]) }?.first, "\(ls.stdout)")
        let info = c.ctr(["snapshots", "--snapshotter", "strata", "info", bottom])
        #expect(info.status == 0 && info.stdout.lowercased().contains("\"kind\": \"committed\""), "\(info.stdout)")
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "usage"]).status == 0)
        // A layer others are built on cannot go (FailedPrecondition).
        let rm = c.ctr(["snapshots", "--snapshotter", "strata", "rm", bottom])
        #expect(rm.status != 0 && rm.stderr.contains("failed precondition"), "\(rm.stderr)")
        // A writable snapshot of the image, changed, and its diff.
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "prepare", "work", topLayer]).status == 0)
        let mounts = c.ctr(["snapshots", "--snapshotter", "strata", "mounts", "/mnt", "work"])
        #expect(mounts.stdout.contains("mount -t overlay"), "\(mounts.stdout)")
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "rm", "work"]).status == 0)

        // Both restarted: every snapshot as before, and a container runs.
        Containerd.stop(&c.containerdPID)
        Containerd.stop(&c.snapshotterPID)
        try c.startSnapshotter()
        try c.startContainerd()
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "ls"]).stdout == ls.stdout)
        let again = c.ctr(["run", "--rm", "--snapshotter", "strata", image, "t-again", "cat", "/etc/passwd"])
        #expect(again.status == 0 && again.stdout.contains("root:"), "\(again.stderr)")
    }

    /// A store of the btrfs driver behind containerd: each layer containerd
    /// applies is a subvolume snapshot of its parent's, each container a
    /// writable snapshot, bound as containerd's own btrfs snapshotter does;
    /// containers give what they give on containerd's overlayfs.
    @Test func ctrRunsOnABtrfsStoreAsOnItsOwnOverlayfs() throws {
        let reg = try Self.registryWithBusybox()
        defer { reg.stop() }
        let fs = try LoopFilesystem(sizeMiB: 512)
        let c = try Containerd(driver: "btrfs", strataRoot: "\(fs.mountpoint)/strata")
        defer { c.stop() }
        let image = "\(reg.host)/busybox:l3"
        Self.pullAndRunOnBoth(c, image)
        // Three committed layers, each a sealed subvolume.
        let ls = c.ctr(["snapshots", "--snapshotter", "strata", "ls"])
        let rows = ls.stdout.split(separator: "\n").dropFirst().map { $0.split(separator: " ").map(String.init) }
        #expect(rows.count == 3, "\(ls.stdout)")
        let subvolumes = ((try? Sys.directoryNames(AT_FDCWD, "\(fs.mountpoint)/strata/snapshots")) ?? []).filter { n in
            guard let d = try? Sys.open("\(fs.mountpoint)/strata/snapshots/\(n)/fs", O_RDONLY | O_DIRECTORY | O_CLOEXEC) else { return false }
            return Btrfs.isSubvolume(d.raw)
        }
        #expect(subvolumes.count == 3, "\(subvolumes)")
        let parents = Set(rows.compactMap { $0.count == 3 ? $0[1] : nil })
        let top = try #require(rows.first { !parents.contains($0[0]) }?.first, "\(ls.stdout)")
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "prepare", "work", top]).status == 0)
        let mounts = c.ctr(["snapshots", "--snapshotter", "strata", "mounts", "/mnt", "work"])
        #expect(mounts.stdout.contains("mount -t bind") && mounts.stdout.contains("rw"), "\(mounts.stdout)")
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "rm", "work"]).status == 0)
        #expect(c.ctr(["snapshots", "--snapshotter", "strata", "usage"]).status == 0)
        #expect(runProgram(MountEnvironment.binary, ["check", "--root", "\(fs.mountpoint)/strata"]).status == 0)
    }

    /// `--driver fuse`: the containers' roots are Strata's union, which
    /// containerd mounts through mount.fuse3 (as fuse-overlayfs-snapshotter's).
    @Test func theFuseDriverRunsContainersOnStrataUnion() throws {
        let reg = try Self.registryWithBusybox()
        defer { reg.stop() }
        let c = try Containerd(driver: "fuse")
        defer { c.stop() }
        let image = "\(reg.host)/busybox:l3"
        let pull = c.ctr(["image", "pull", "--plain-http", "--snapshotter", "strata", image])
        #expect(pull.status == 0, "\(pull.stderr)")
        // Results through a bound file, not ctr's stdout (see pullAndRunOnBoth).
        let out = "\(c.dir.path)/out-fuse"
        mkdir(out, 0o777)
        let run = c.ctr(["run", "--rm", "--snapshotter", "strata", "--mount", "type=bind,src=\(out),dst=/out,options=rbind:rw", image, "t-fuse",
                         "sh", "-c", "(echo data > /tmp/w; cat /tmp/w; rm /bin/echo; ls /bin/echo 2>&1; grep ' / / ' /proc/self/mountinfo) > /out/result 2>&1"])
        #expect(run.status == 0, "\(run.stderr) \(c.log(of: "containerd.log"))")
        let result = (try? String(contentsOfFile: "\(out)/result", encoding: .utf8)) ?? ""
        #expect(result.hasPrefix("data\nls: /bin/echo: No such file or directory\n"), "\(result)")
        #expect(result.contains("fuse.strata"), "the root is Strata's union: \(result)")
    }

    /// The snapshotter's statistics (`strata stats SOCKET --json`).
    func stats(_ c: Containerd) throws -> [String: Any] {
        let r = runProgram(MountEnvironment.binary, ["stats", c.snapshotterSocket, "--json"])
        try #require(r.status == 0, "strata stats: \(r.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    }

    /// The kubelet's path: PullImage through containerd's CRI plugin of a
    /// Debian tree. eStargz and zstd:chunked: the snapshotter fetches the
    /// manifest, the config and each layer's table of contents, no whole
    /// blob, and a container of it in the k8s.io namespace reads its files
    /// while the layers are still incomplete (fetched as read). A layer
    /// without a table of contents (`none`) is left to containerd, which
    /// downloads and applies it as with any snapshotter. `podman:zstd:chunked`:
    /// the same tree pushed by podman, whose zstd:chunked writer is
    /// containers/storage's, not ours.
    @Test(arguments: ["estargz", "zstd:chunked", "podman:zstd:chunked", "none"])
    func criPullsLazilyAndAContainerReadsIt(compression: String) throws {
        let reg = try LocalRegistry(accessLog: true)
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/lazy/debian:\(compression.replacingOccurrences(of: ":", with: "-"))"
        let size = try DebianTree.push(reg, t, compression: compression, as: image)
        let pushed = reg.bytesServed()
        let c = try Containerd(criRegistry: reg.host, snapshotterOptions: ["--lazy-fetch", "on-read"])
        defer { c.stop() }
        let script = ((#filePath as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent + "/cri/cri_pull.py"
        let pull = runProgram("/usr/bin/python3", [script, c.socket, image])
        #expect(pull.status == 0, "CRI PullImage: \(pull.stderr) \(c.log(of: "snapshotter.log"))")
        let fetched = reg.bytesServed() - pushed
        let ls = c.ctr(["-n", "k8s.io", "snapshots", "--snapshotter", "strata", "ls"])
        #expect(ls.stdout.split(separator: "\n").count == 3, "two layers and the header: \(ls.stdout)")
        let before = try stats(c)
        let lazyCounts = before["lazy"] as? [String: Int] ?? [:]
        let run = c.ctr(["-n", "k8s.io", "run", "--rm", "--snapshotter", "strata", image, "t-lazy", "/bin/sh", "-c",
                         "cat /etc/debian_version; /usr/bin/head -1 /etc/group; echo ran"])
        #expect(run.status == 0 && run.stdout.contains("\nroot:x:0:\nran"), "\(run.stdout) \(run.stderr) \(c.log(of: "snapshotter.log"))")
        let version = try String(contentsOfFile: "/etc/debian_version", encoding: .utf8)
        #expect(run.stdout.hasPrefix(version), "\(run.stdout)")
        if compression == "none" {
            // containerd pulled both layers itself; the store holds none.
            #expect(fetched > size, "containerd downloads the layers: \(fetched) of \(size) bytes")
            #expect(lazyCounts["left_to_containerd"] == 2, "\(before)")
            #expect(runProgram(MountEnvironment.binary, ["image", "ls", "--root", c.strataRoot]).status == 0)
            #expect((before["layers_shown"] as? Int) == 0, "\(before)")
            return
        }
        // The tree is about 34 MB; a lazy pull reads manifests, the config
        // and each TOC.
        #expect(fetched < size / 20, "CRI pull fetched \(fetched) of \(size) bytes; snapshotter: \(c.log(of: "snapshotter.log"))")
        #expect(lazyCounts["pulled_lazily"] == 2, "\(before)")
        #expect(reg.bytesServed() - pushed > fetched, "the files were fetched when read")
        // Read before the layers were complete: only what the command read is here.
        let after = try stats(c)
        let local = after["partial_local_bytes"] as? Int ?? -1, total = after["partial_total_bytes"] as? Int ?? 0
        #expect(after["partial_layers"] as? Int == 2 && local > 0 && local < total / 2, "\(after)")
        let requests = after["requests"] as? [String: [String: Any]] ?? [:]
        #expect((requests["Prepare"]?["count"] as? Int ?? 0) >= 3, "\(requests)")
        // strata check sees what the snapshotter made, and finds it sound.
        let check = runProgram(MountEnvironment.binary, ["check", "--root", c.strataRoot])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
        // The registry gone: a file not fetched yet is an I/O error, never zeros.
        reg.stop()
        let gone = c.ctr(["-n", "k8s.io", "run", "--rm", "--snapshotter", "strata", image, "t-gone", "/bin/sh", "-c",
                          "cat /usr/share/doc/coreutils/copyright /usr/lib/x86_64-linux-gnu/libc.so.6 > /dev/null"])
        #expect(gone.status != 0 && (gone.stdout + gone.stderr).contains("Input/output error"), "\(gone.stdout) \(gone.stderr)")
    }
}
