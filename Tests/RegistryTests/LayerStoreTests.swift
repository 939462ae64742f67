import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `strata layer-store`, started by a test in the foreground with its own
/// store and mountpoint; its standard error is kept in `log`.
final class LayerStoreDaemon: @unchecked Sendable {
    let root: String
    let mountpoint: String
    let log: String
    let options: [String]
    var pid: pid_t = 0

    init(_ t: TempDir, options: [String] = []) throws {
        root = "\(t.path)/strata"
        mountpoint = t.sub("layers")
        log = "\(t.path)/layer-store.log"
        self.options = options
        try start()
    }

    func start() throws {
        let out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(out); close(null) }
        pid = try Spawn.start(MountEnvironment.binary, ["strata", "layer-store", "--root", root, "-f"] + options + [mountpoint],
                              stdio: (null, out, out))
        let p = pid
        let up = waitFor(30) {
            var status: Int32 = 0
            if waitpid(p, &status, WNOHANG) == p { return true }
            return Sys.isMountRoot(self.mountpoint)
        }
        guard up, Sys.isMountRoot(mountpoint) else { throw TestFailure("strata layer-store did not mount: \(text())") }
    }

    func text() -> String { (try? String(contentsOfFile: log, encoding: .utf8)).map { String($0.suffix(3000)) } ?? "" }

    /// SIGKILL: what a crash does; the mount is left without its daemon.
    func kill() {
        guard pid > 0 else { return }
        Glibc.kill(pid, SIGKILL)
        _ = Spawn.wait(pid)
        pid = 0
        umount2(mountpoint, Int32(MNT_DETACH))
    }

    func stop() {
        if Sys.isMountRoot(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        guard pid > 0 else { return }
        Glibc.kill(pid, SIGTERM)
        if !waitFor(10, { var s: Int32 = 0; return waitpid(self.pid, &s, WNOHANG) == self.pid }) {
            Glibc.kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
        }
        pid = 0
    }

    deinit { stop() }
}

/// podman (and buildah) with a private store whose storage.conf names the
/// layer store: the kernel's overlayfs as its driver, or Strata's union as
/// its mount_program.
struct EnginePodman {
    let conf: String
    let graphroot: String
    var env: [String: String] { ["CONTAINERS_STORAGE_CONF": conf] }

    init(_ t: TempDir, name: String, layerStore: String?, mountProgram: String? = nil, partialPulls: Bool = false) throws {
        graphroot = "\(t.path)/\(name)/root"
        conf = "\(t.path)/\(name).conf"
        var text = """
        [storage]
        driver = "overlay"
        graphroot = "\(graphroot)"
        runroot = "\(t.path)/\(name)/run"
        [storage.options]

        """
        if let layerStore { text += "additionallayerstores = [\"\(layerStore):ref\"]\n" }
        if partialPulls { text += "pull_options = {enable_partial_images = \"true\", use_hard_links = \"false\", ostree_repos = \"\"}\n" }
        if let mountProgram { text += "[storage.options.overlay]\nmount_program = \"\(mountProgram)\"\n" }
        try text.write(toFile: conf, atomically: true, encoding: .utf8)
    }

    static let runOptions = ["--net", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

    func podman(_ a: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(Spawn.which("podman") ?? "/usr/bin/podman", a, env: env)
    }

    func buildah(_ a: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(Spawn.which("buildah") ?? "/usr/bin/buildah", a, env: env)
    }

    /// Everything podman made goes, and the mounts its store keeps.
    func cleanup() {
        _ = podman(["rm", "-a", "-f"])
        _ = podman(["rmi", "-a", "-f"])
        for m in ["\(graphroot)/overlay"] where Sys.isMountRoot(m) { umount2(m, Int32(MNT_DETACH)) }
    }
}

/// Lazy pulling for podman, buildah and CRI-O: Strata as containers/storage's
/// additional layer store, against Debian's podman 4.3 and buildah.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct LayerStoreTests {
    /// The tree of `image` as podman mounts it (`podman image mount`).
    static func tree(_ p: EnginePodman, _ image: String, times: Bool = true) throws -> [String: EntryState] {
        let m = p.podman(["image", "mount", image])
        try #require(m.status == 0, "podman image mount: \(m.stderr)")
        defer { _ = p.podman(["image", "unmount", image]) }
        return TreeSnapshot.take(m.stdout.trimmingCharacters(in: .whitespacesAndNewlines), times: times)
    }

    /// podman pulls an image of tables of contents through the layer
    /// store: only the TOCs come from the registry, a container prints
    /// while the layers are still incomplete, the tree is a plain pull's,
    /// and save, push, buildah from/RUN/commit work on it.
    @Test(arguments: ["estargz", "zstd:chunked", "podman:zstd:chunked", "buildah:zstd:chunked", "skopeo:zstd:chunked"])
    func podmanPullsLazilyThroughTheLayerStore(compression: String) throws {
        let reg = try LocalRegistry(accessLog: true)
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/lazy/debian:\(compression.replacingOccurrences(of: ":", with: "-"))"
        let size = try DebianTree.push(reg, t, compression: compression, as: image)
        let store = try LayerStoreDaemon(t, options: ["--lazy-fetch", "on-read"])
        defer { store.stop() }
        let p = try EnginePodman(t, name: "lazy", layerStore: store.mountpoint)
        defer { p.cleanup() }
        let before = reg.bytesServed()
        let pull = p.podman(["pull", "-q", "--tls-verify=false", image])
        try #require(pull.status == 0, "podman pull: \(pull.stderr) \(store.text())")
        let fetched = reg.bytesServed() - before
        #expect(fetched < size / 20, "podman pull fetched \(fetched) of \(size) bytes: \(store.text())")
        #expect(store.text().contains("served lazily"), "\(store.text())")

        // A container prints before the layers are complete.
        let run = p.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "/bin/sh", "-c", "cat /etc/debian_version; head -1 /etc/group"])
        #expect(run.status == 0 && run.stdout.hasSuffix("root:x:0:\n"), "\(run.stdout) \(run.stderr) \(store.text())")
        let ls = runProgram(MountEnvironment.binary, ["image", "ls", "--root", store.root])
        #expect(ls.stdout.contains("partial: 2 layers"), "the image in Strata's store, partly here: \(ls.stdout)")

        // The tree equals a plain pull's (podman's own, no layer store).
        let plain = try EnginePodman(t, name: "plain", layerStore: nil)
        defer { plain.cleanup() }
        let plainPull = plain.podman(["pull", "-q", "--tls-verify=false", image])
        try #require(plainPull.status == 0, "\(plainPull.stderr)")
        #expect(TreeSnapshot.diff(try Self.tree(plain, image), try Self.tree(p, image), labels: ("plain pull", "layer store")) == [])

        // buildah from, a RUN step and a commit; podman push.
        let from = p.buildah(["from", "--pull-never", image])
        try #require(from.status == 0, "buildah from: \(from.stderr)")
        let c = from.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(p.buildah(["run", "--net", "none", c, "--", "/bin/sh", "-c", "echo built > /built; rm /etc/debian_version"]).status == 0)
        #expect(p.buildah(["commit", "-q", c, "localhost/built:1"]).status == 0)
        _ = p.buildah(["rm", c])
        let built = p.podman(["run", "--rm"] + EnginePodman.runOptions + ["localhost/built:1", "/bin/sh", "-c", "cat /built; cat /etc/debian_version 2>&1"])
        #expect(built.stdout.hasPrefix("built\n") && built.stdout.contains("No such file"), "\(built.stdout) \(built.stderr)")
        let push = p.podman(["push", "-q", "--tls-verify=false", image, "docker://\(reg.host)/again/debian:1"])
        #expect(push.status == 0, "podman push: \(push.stderr)")
        if compression.contains(":zstd:chunked") {
            // Not for the zstd:chunked that podman, buildah or skopeo write
            // (one writer, containers/storage's chunked compressor): its
            // layers name no uncompressed size, so podman 4.3 saves them
            // uncompressed, and the layer containers/storage decompresses
            // from that blob does not hash to the diff ID its config names
            // ("Digest did not match"). Pull, run, buildah and push above work.
            return
        }
        let x = t.sub("saved")
        if compression.contains("zstd") {
            // docker-archive has no zstd layers, and podman 4.3 will not
            // convert a layer it did not unpack itself ("docker-archive
            // doesn't support modifying existing images"): an OCI archive,
            // whose blobs are the registry's, each its digest.
            let save = p.podman(["save", "--format", "oci-archive", "-o", "\(t.path)/saved.tar", image])
            #expect(save.status == 0, "podman save: \(save.stderr.replacingOccurrences(of: "\n", with: " | "))")
            #expect(runProgram("/bin/tar", ["xf", "\(t.path)/saved.tar", "-C", x]).status == 0)
            let blobs = (try? FileManager.default.contentsOfDirectory(atPath: "\(x)/blobs/sha256")) ?? []
            #expect(blobs.count >= 4, "\(blobs)")
            for b in blobs {
                let sum = runProgram("/usr/bin/sha256sum", ["\(x)/blobs/sha256/\(b)"]).stdout.prefix(64)
                #expect(sum == b, "blob \(b) holds \(sum)")
            }
            return
        }
        let save = p.podman(["save", "-o", "\(t.path)/saved.tar", image])
        #expect(save.status == 0, "podman save: \(save.stderr)")
        // Each saved layer is the tar its diff ID names.
        #expect(runProgram("/bin/tar", ["xf", "\(t.path)/saved.tar", "-C", x]).status == 0)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(x)/manifest.json"))) as? [[String: Any]]
        let layers = manifest?.first?["Layers"] as? [String] ?? []
        #expect(layers.count == 2)
        for l in layers {
            let sum = runProgram("/usr/bin/sha256sum", ["\(x)/\(l)"]).stdout.prefix(64)
            #expect(l.hasPrefix(sum), "\(l) holds \(sum)")
        }
    }

    /// podman's own partial pull (containers/storage reads the TOC and
    /// fetches the files) of Strata's zstd:chunked layers gives the tree a
    /// plain pull gives. It did not while the TOC's slashes were escaped
    /// ("usr\/bin"): podman 4.3 made `usr\` and `bin -> usr\/bin`.
    @Test func podmansPartialPullOfStrataZstdChunkedGivesThePlainTree() throws {
        let reg = try LocalRegistry()
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/partial/debian:zstd"
        _ = try DebianTree.push(reg, t, compression: "zstd:chunked", as: image)
        let partial = try EnginePodman(t, name: "partial", layerStore: nil, partialPulls: true)
        defer { partial.cleanup() }
        let plain = try EnginePodman(t, name: "plain", layerStore: nil)
        defer { plain.cleanup() }
        for p in [partial, plain] {
            let pull = p.podman(["pull", "-q", "--tls-verify=false", image])
            try #require(pull.status == 0, "\(pull.stderr)")
        }
        let run = partial.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "cat", "/etc/debian_version"])
        #expect(run.status == 0, "\(run.stderr)")
        // Times and directories' groups aside: podman 4.3's partial pull
        // gives every file the time of the pull and every directory group
        // 0, for its own zstd:chunked images as well (var/local, root:staff
        // in Debian, comes out root:root).
        func comparable(_ t: [String: EntryState]) -> [String: EntryState] {
            t.mapValues { e in
                var e = e
                if e.type == Linux.S_IFDIR { e.gid = 0 }
                return e
            }
        }
        let differences = TreeSnapshot.diff(comparable(try Self.tree(plain, image, times: false)), comparable(try Self.tree(partial, image, times: false)),
                                            labels: ("plain pull", "partial pull"))
        #expect(differences.isEmpty, "\(differences.prefix(20))")
    }

    /// A layer without a table of contents is not in the store: podman
    /// downloads it itself, and the store holds nothing of it. What the
    /// store did hold is sound by `strata check` and survives `prune`.
    @Test func layersWithoutATOCAreLeftToPodman() throws {
        let reg = try LocalRegistry(accessLog: true)
        defer { reg.stop() }
        let t = TempDir()
        let plain = "\(reg.host)/lazy/debian:plain", lazy = "\(reg.host)/lazy/debian:estargz"
        let size = try DebianTree.push(reg, t, compression: "none", as: plain)
        let push = runProgram(MountEnvironment.binary, ["push", "--root", "\(t.path)/store", "--compression", "estargz", "localhost/debian:mini", lazy])
        try #require(push.status == 0, "\(push.stderr)")
        let store = try LayerStoreDaemon(t, options: ["--lazy-fetch", "on-read"])
        defer { store.stop() }
        let p = try EnginePodman(t, name: "lazy", layerStore: store.mountpoint)
        defer { p.cleanup() }
        let before = reg.bytesServed()
        try #require(p.podman(["pull", "-q", "--tls-verify=false", plain]).status == 0, "\(store.text())")
        #expect(reg.bytesServed() - before > Int64(size), "podman downloaded the plain layers itself")
        #expect(store.text().contains("has no table of contents"), "\(store.text())")
        let run = p.podman(["run", "--rm"] + EnginePodman.runOptions + [plain, "cat", "/etc/debian_version"])
        #expect(run.status == 0, "\(run.stderr)")
        // The lazy image beside it: in Strata's store, sound, kept by prune.
        try #require(p.podman(["pull", "-q", "--tls-verify=false", lazy]).status == 0, "\(store.text())")
        let check = runProgram(MountEnvironment.binary, ["check", "--root", store.root])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
        #expect(runProgram(MountEnvironment.binary, ["system", "prune", "--all", "--root", store.root]).status == 0)
        let again = p.podman(["run", "--rm"] + EnginePodman.runOptions + [lazy, "cat", "/etc/debian_version"])
        #expect(again.status == 0, "after prune: \(again.stderr) \(store.text())")
    }

    /// podman with Strata's union as its mount_program over the layer
    /// store's layers: the container's root is Strata's, its lower layers
    /// the store's, files fetched as read; a write and a delete work.
    @Test func strataOverlayAsMountProgramOverTheLayerStore() throws {
        let reg = try LocalRegistry(accessLog: true)
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/lazy/debian:mp"
        let size = try DebianTree.push(reg, t, compression: "estargz", as: image)
        let store = try LayerStoreDaemon(t, options: ["--lazy-fetch", "on-read"])
        defer { store.stop() }
        let p = try EnginePodman(t, name: "mp", layerStore: store.mountpoint, mountProgram: MountEnvironment.overlayBinary)
        defer { p.cleanup() }
        let before = reg.bytesServed()
        try #require(p.podman(["pull", "-q", "--tls-verify=false", image]).status == 0, "\(store.text())")
        #expect(reg.bytesServed() - before < Int64(size / 20))
        let run = p.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "/bin/sh", "-c",
                            "echo data > /tmp/w; cat /tmp/w; rm /etc/debian_version; cat /etc/debian_version 2>&1; head -1 /etc/group; while read l; do case \"$l\" in *' / / '*) echo \"$l\";; esac; done < /proc/self/mountinfo"])
        #expect(run.status == 0, "\(run.stderr) \(store.text())")
        #expect(run.stdout.hasPrefix("data\n") && run.stdout.contains("No such file") && run.stdout.contains("root:x:0:"), "\(run.stdout)")
        #expect(run.stdout.contains("fuse"), "the root is Strata's union: \(run.stdout)")
    }

    /// Rootless: a user mounts the layer store (fusermount3) and that
    /// user's podman pulls and runs through it. The user is nobody, with
    /// podman's single-id mapping (no subuid ranges here); /dev/fuse gets
    /// Debian udev's mode 0666 in a private mount namespace only.
    @Test func aUsersPodmanThroughTheUsersLayerStore() throws {
        guard let unshare = Spawn.which("unshare"), Spawn.which("setpriv") != nil, Spawn.which("fusermount3") != nil else {
            Issue.record("util-linux (unshare, setpriv) or fuse3 missing"); return
        }
        let reg = try LocalRegistry(accessLog: true)
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/lazy/debian:rootless"
        let size = try DebianTree.push(reg, t, compression: "estargz", as: image)
        chmod(t.path, 0o711)
        let rl = t.sub("rl")
        for d in ["home", "run", "layers"] { mkdir("\(rl)/\(d)", 0o700) }
        try """
        [storage]
        driver = "overlay"
        graphroot = "\(rl)/graph"
        runroot = "\(rl)/run/containers"
        [storage.options]
        additionallayerstores = ["\(rl)/layers:ref"]

        """.write(toFile: "\(rl)/storage.conf", atomically: true, encoding: .utf8)
        for p in [rl, "\(rl)/home", "\(rl)/run", "\(rl)/layers", "\(rl)/storage.conf"] { chown(p, 65534, 65534) }
        let user = "setpriv --reuid=65534 --regid=65534 --clear-groups -- env HOME=\(rl)/home XDG_RUNTIME_DIR=\(rl)/run CONTAINERS_STORAGE_CONF=\(rl)/storage.conf"
        let strata = MountEnvironment.binary
        let before = reg.bytesServed()
        let script = """
        mknod \(t.path)/fuse c 10 229 && chmod 666 \(t.path)/fuse && mount --bind \(t.path)/fuse /dev/fuse || exit 9
        \(user) \(strata) layer-store --root \(rl)/strata --lazy-fetch on-read \(rl)/layers || exit 10
        grep " \(rl)/layers " /proc/self/mounts | grep -q user_id=65534 || exit 11
        \(user) podman pull -q --tls-verify=false \(image) > /dev/null || exit 12
        out=$(\(user) podman run --rm --net none \(image) cat /etc/debian_version) || exit 13
        [ "$out" = "$(cat /etc/debian_version)" ] || exit 14
        \(user) podman rmi -a -f > /dev/null || exit 15
        \(user) \(strata) layer-store --unmount \(rl)/layers || exit 16
        ! grep -q " \(rl)/layers " /proc/self/mounts || exit 17
        """
        let r = runProgram(unshare, ["-m", "--propagation", "private", "/bin/sh", "-c", script])
        // podman's rootless pause process keeps the user's namespace; it is ours to end.
        if let pid = (try? String(contentsOfFile: "\(rl)/run/libpod/tmp/pause.pid", encoding: .utf8)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }), pid > 1 {
            kill(pid, SIGKILL)
        }
        #expect(r.status == 0, "step failed (exit \(r.status)): \(r.stderr.suffix(2000))")
        #expect(reg.bytesServed() - before < Int64(size / 4), "the user's pull fetched the TOCs and what was read, not the layers")
    }

    /// Faults: the registry away during a read (EIO for that file, the
    /// next read succeeds once it is back), a corrupted chunk (never
    /// served), the daemon killed (a clear error; restarted, it serves
    /// again, and podman's store is sound).
    @Test func faultsAreErrorsNeverWrongData() throws {
        let reg = try LocalRegistry(accessLog: true)
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/lazy/debian:faults"
        _ = try DebianTree.push(reg, t, compression: "estargz", as: image)
        let store = try LayerStoreDaemon(t, options: ["--lazy-fetch", "on-read", "--lazy-readahead", "0"])
        defer { store.stop() }
        let p = try EnginePodman(t, name: "lazy", layerStore: store.mountpoint)
        defer { p.cleanup() }
        try #require(p.podman(["pull", "-q", "--tls-verify=false", image]).status == 0, "\(store.text())")
        func read(_ file: String) -> (status: Int32, stdout: String, stderr: String) {
            p.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "/bin/sh", "-c", "cat \(file) > /dev/null && echo read"])
        }
        // The shell and its libraries fetched: they are read by every run below.
        let first = p.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "/bin/sh", "-c", "cat /etc/debian_version"])
        try #require(first.status == 0, "\(first.stderr) \(store.text())")
        // The registry away: an I/O error for a file not fetched yet; back, it reads.
        reg.stop()
        let gone = read("/usr/share/doc/coreutils/copyright")
        #expect(gone.status != 0 && (gone.stdout + gone.stderr).contains("Input/output error"), "\(gone.stdout) \(gone.stderr)")
        try reg.start()
        let back = read("/usr/share/doc/coreutils/copyright")
        #expect(back.status == 0 && back.stdout == "read\n", "\(back.stdout) \(back.stderr) \(store.text())")

        // A corrupted byte in the middle of the largest blob: the file whose
        // chunk it is reads as an error, never as other bytes.
        let find = runProgram("/usr/bin/find", ["\(reg.dir.path)/data", "-name", "data", "-type", "f", "-size", "+1M"])
        for blob in find.stdout.split(separator: "\n").map(String.init) {
            var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
            bytes[bytes.count / 2] ^= 0xff
            try bytes.write(to: URL(fileURLWithPath: blob))
        }
        let walk = #"walk() { for f in "$1"/*; do if [ -d "$f" ] && [ ! -L "$f" ]; then walk "$f"; elif [ -f "$f" ]; then cat "$f" > /dev/null || echo "failed $f"; fi; done; }; walk /usr; walk /etc"#
        let all = p.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "/bin/sh", "-c", walk])
        #expect((all.stdout + all.stderr).contains("Input/output error"), "no read failed: \(all.stdout) \(all.stderr)")
        #expect(store.text().contains("does not match its digest"), "\(store.text())")

        // The daemon killed: podman gets a clear error, not a hang; a new
        // daemon serves again and podman's store is unharmed.
        store.kill()
        let dead = read("/etc/debian_version")
        #expect(dead.status != 0, "a run with the layer store gone: \(dead.stdout)")
        try store.start()
        let again = p.podman(["run", "--rm"] + EnginePodman.runOptions + [image, "/bin/sh", "-c", "cat /etc/debian_version"])
        #expect(again.status == 0, "after a restart: \(again.stderr) \(store.text())")
        let check = p.podman(["image", "ls", "--format", "{{.Repository}}"])
        #expect(check.status == 0 && check.stdout.contains("lazy/debian"), "\(check.stdout) \(check.stderr)")
    }

    /// Unmounting while podman uses layers of the store is refused with one
    /// line; once podman let go, it unmounts.
    @Test func unmountIsRefusedWhilePodmanUsesItsLayers() throws {
        let reg = try LocalRegistry()
        defer { reg.stop() }
        let t = TempDir()
        let image = "\(reg.host)/lazy/debian:busy"
        _ = try DebianTree.push(reg, t, compression: "estargz", as: image)
        let store = try LayerStoreDaemon(t)
        defer { store.stop() }
        let p = try EnginePodman(t, name: "lazy", layerStore: store.mountpoint)
        defer { p.cleanup() }
        try #require(p.podman(["pull", "-q", "--tls-verify=false", image]).status == 0, "\(store.text())")
        let refused = runProgram(MountEnvironment.binary, ["layer-store", "--unmount", store.mountpoint])
        #expect(refused.status != 0 && refused.stderr.contains("podman still uses"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1, "one line: \(refused.stderr)")
        #expect(Sys.isMountRoot(store.mountpoint))
        _ = p.podman(["rmi", "-a", "-f"])
        let done = runProgram(MountEnvironment.binary, ["layer-store", "--unmount", store.mountpoint])
        #expect(done.status == 0, "\(done.stderr) \(store.text())")
        #expect(!Sys.isMountRoot(store.mountpoint))
    }
}
