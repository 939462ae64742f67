import Foundation
import Registry
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Lazy pulls of images that other tools made. `podman import` (like
/// `tar -C dir .` and many build tools) names members `./bin/busybox`;
/// every file of such an image must be served, not only those whose names
/// happen to match our own spelling.
extension RegistryTests {
    /// podman with a private store (vfs, so nothing of the machine's is used).
    struct Podman {
        let args: [String]
        let buildah: [String]
        init(_ t: TempDir) throws {
            guard let podman = Spawn.which("podman") else { throw TestFailure("podman missing: apt-get install podman") }
            guard let buildah = Spawn.which("buildah") else { throw TestFailure("buildah missing: apt-get install buildah") }
            let store = ["--root", "\(t.path)/podman/root", "--runroot", "\(t.path)/podman/run", "--storage-driver", "vfs"]
            args = [podman] + store
            self.buildah = [buildah] + store
        }
        @discardableResult
        func run(_ a: [String]) throws -> String {
            let r = runProgram(args[0], Array(args.dropFirst()) + a)
            guard r.status == 0 else { throw TestFailure("podman \(a.joined(separator: " ")): \(r.stderr)") }
            return r.stdout
        }
        @discardableResult
        func buildah(_ a: [String]) throws -> String {
            let r = runProgram(buildah[0], Array(buildah.dropFirst()) + a)
            guard r.status == 0 else { throw TestFailure("buildah \(a.joined(separator: " ")): \(r.stderr)") }
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    /// An image made by `podman import` of `tar -C rootfs .`: every member
    /// is named `./...`. Returns its local name in podman's store.
    func podmanImported(_ p: Podman, _ t: TempDir) throws -> String {
        try p.run(["load", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"])
        let c = try p.run(["create", "localhost/eco/busybox:l3", "true"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let rootfs = "\(t.path)/rootfs"
        mkdir(rootfs, 0o755)
        try p.run(["export", "-o", "\(t.path)/export.tar", c])
        #expect(runProgram("/bin/tar", ["-xf", "\(t.path)/export.tar", "-C", rootfs]).status == 0)
        #expect(runProgram("/bin/tar", ["-cf", "\(t.path)/dot.tar", "-C", rootfs, "."]).status == 0)
        let names = runProgram("/bin/tar", ["-tf", "\(t.path)/dot.tar"]).stdout
        #expect(names.contains("./bin/busybox"), "tar -C dir . did not write ./ names")
        try p.run(["import", "\(t.path)/dot.tar", "localhost/imported:1"])
        return "localhost/imported:1"
    }

    /// Pulls `image` lazily into `root` and checks that every file reads
    /// as a full pull's does (read through Strata's union, fetching on
    /// read) and that `busybox` runs from it.
    /// `loaded`: the reference tree is that image of the store `full`
    /// (already there) instead of a full pull of `image`.
    func expectLazyServesEverything(_ root: String, full: String, _ image: String, _ label: String, loaded: String? = nil) throws {
        if loaded == nil {
            let pullFull = strata(["pull", "--root", full, image])
            try #require(pullFull.status == 0, "\(label): full pull: \(pullFull.stderr)")
        }
        let reference = try mergedTree(full, loaded ?? image, times: true)
        let pull = strata(["pull", "--root", root, "--lazy", image])
        try #require(pull.status == 0, "\(label): lazy pull: \(pull.stderr)")
        #expect(!inspectLazy(root, image).isEmpty, "\(label): nothing was pulled lazily")
        let name = "c\(UInt32.random(in: 0...UInt32.max))"
        let m = try mountLazy(root, image, name, readahead: 0)
        defer { unmountLazy(root, name, m) }
        let run = runProgram("/usr/sbin/chroot", [m, "/bin/busybox", "sh", "-c", "echo ran"])
        #expect(run.status == 0 && run.stdout == "ran\n", "\(label): busybox from the lazy image: \(run.stderr)")
        var tree = TreeSnapshot.take(m, times: true)
        for k in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] { tree[k] = nil }
        #expect(TreeSnapshot.diff(reference, tree, labels: ("full pull", "lazy pull")) == [], "\(label)")
        let errors = runProgram("/usr/bin/find", ["\(root)/overlay", "-name", "errors.log"]).stdout
        #expect(errors.isEmpty, "\(label): the fetcher logged errors: \(errors)")
    }

    /// `podman import` (./ names), `podman commit`, buildah and umoci: each
    /// tool's image pulled lazily serves every file, in eStargz and
    /// zstd:chunked, whether Strata or podman wrote the seekable layers.
    @Test func lazyImagesMadeByOtherToolsServeEveryFile() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let p = try Podman(t)
        let imported = try podmanImported(p, t)
        let tls = "--tls-verify=false"
        /// podman's own image as `podman save` writes it, loaded into a
        /// store of its own: the reference for what podman pushed.
        func saved(_ local: String, _ store: String) throws -> String {
            try p.run(["save", "-o", "\(store).tar", local])
            let r = strata(["image", "load", "--root", store, "-i", "\(store).tar"])
            try #require(r.status == 0, "\(r.stderr)")
            return store
        }
        func push(_ local: String, _ ref: String, _ extra: [String] = [], to r: LocalRegistry? = nil) throws {
            try p.run(["push", tls] + extra + [local, "docker://\((r ?? reg).host)/\(ref)"])
        }
        // podman's own zstd:chunked of the imported image. podman 4.3 drops
        // the tar's record padding when it writes zstd:chunked, so the
        // blob no longer matches the config's diff ID and a full pull of
        // it is refused (as containerd refuses it); the lazy tree is
        // compared with the image as `podman save` writes it. (A second
        // push of the same layer as gzip could reuse the zstd blob.)
        let a = try saved(imported, "\(t.path)/a")
        try push(imported, "eco/imported:zc", ["--compression-format", "zstd:chunked"])
        try expectLazyServesEverything("\(t.path)/s1", full: a, "\(reg.host)/eco/imported:zc", "podman import, podman zstd:chunked",
                                       loaded: imported)
        // Strata's eStargz and zstd:chunked of the same image (its stored
        // tar keeps podman's ./ names).
        for (format, tag) in [("estargz", "e"), ("zstd:chunked", "z")] {
            let r = strata(["push", "--root", a, "--compression", format, imported, "\(reg.host)/eco/imported:\(tag)"])
            try #require(r.status == 0, "\(r.stderr)")
            try expectLazyServesEverything("\(t.path)/s-\(tag)", full: "\(t.path)/f-\(tag)", "\(reg.host)/eco/imported:\(tag)",
                                           "podman import, Strata \(format)")
        }
        // podman commit of a container that wrote a file.
        // (Limits podman can set under this machine's hard limits.)
        try p.run(["run", "--name", "w", "--net", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", imported, "/bin/sh", "-c", "echo committed > /committed; rm /bin/cat"])
        try p.run(["commit", "w", "localhost/committed:1"])
        // Each of podman's later pushes goes to a registry of its own:
        // podman 4.3 reuses a layer's blob already in the same registry
        // without its zstd:chunked annotations (and with the diff ID
        // mismatch above), an image no engine can pull in full.
        let reg2 = try LocalRegistry(), reg3 = try LocalRegistry()
        try push("localhost/committed:1", "eco/committed:zc", ["--compression-format", "zstd:chunked"], to: reg2)
        try expectLazyServesEverything("\(t.path)/s2", full: try saved("localhost/committed:1", "\(t.path)/f2"),
                                       "\(reg2.host)/eco/committed:zc", "podman commit", loaded: "localhost/committed:1")
        // buildah: from, copy, commit, pushed as zstd:chunked.
        let ctr = try p.buildah(["from", imported])
        try "added by buildah".write(toFile: "\(t.path)/added", atomically: false, encoding: .utf8)
        try p.buildah(["copy", ctr, "\(t.path)/added", "/srv/added"])
        try p.buildah(["commit", ctr, "localhost/built:1"])
        try push("localhost/built:1", "eco/built:zc", ["--compression-format", "zstd:chunked"], to: reg3)
        try expectLazyServesEverything("\(t.path)/s3", full: try saved("localhost/built:1", "\(t.path)/f3"),
                                       "\(reg3.host)/eco/built:zc", "buildah", loaded: "localhost/built:1")
        // umoci: unpack, change, repack an OCI layout; Strata re-pushes it
        // as eStargz.
        if let umoci = Spawn.which("umoci"), let skopeo = Spawn.which("skopeo") {
            let layout = "\(t.path)/oci"
            let exported = runProgram(skopeo, ["copy", "docker-archive:\(a).tar", "oci:\(layout):1"])
            #expect(exported.status == 0, "\(exported.stderr)")
            #expect(runProgram(umoci, ["unpack", "--image", "\(layout):1", "\(t.path)/bundle"]).status == 0)
            try "from umoci".write(toFile: "\(t.path)/bundle/rootfs/umoci-file", atomically: false, encoding: .utf8)
            let repack = runProgram(umoci, ["repack", "--image", "\(layout):2", "\(t.path)/bundle"])
            try #require(repack.status == 0, "umoci repack: \(repack.stderr)")
            // A registry of its own again: skopeo shares podman's blob
            // cache and would reuse the zstd blob pushed above.
            let reg4 = try LocalRegistry()
            let copied = runProgram(skopeo, ["copy", "--dest-tls-verify=false", "oci:\(layout):2", "docker://\(reg4.host)/eco/umoci:gz"])
            #expect(copied.status == 0, "\(copied.stderr)")
            let b = "\(t.path)/b"
            let pulled = strata(["pull", "--root", b, "\(reg4.host)/eco/umoci:gz"])
            #expect(pulled.status == 0, "\(pulled.stderr)")
            let r = strata(["push", "--root", b, "--compression", "estargz", "\(reg4.host)/eco/umoci:gz", "\(reg4.host)/eco/umoci:e"])
            try #require(r.status == 0, "\(r.stderr)")
            try expectLazyServesEverything("\(t.path)/s4", full: "\(t.path)/f4", "\(reg4.host)/eco/umoci:e", "umoci")
        } else {
            Issue.record("umoci or skopeo missing: apt-get install umoci skopeo")
        }
    }
}
