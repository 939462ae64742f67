import Foundation
import Registry
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `strata push --compression estargz` and `strata pull --lazy` against
/// Debian's docker-registry on 127.0.0.1, whose access log counts the
/// bytes it served.
extension RegistryTests {
    /// An image with files worth fetching one at a time: 40 of 200 kB and
    /// one of 9 MB (three chunks) of random bytes, a hard link, a symlink,
    /// an xattr, an owner, and a whiteout of a busybox file. Returns the
    /// upper directory the files came from.
    func makeLazyImage(_ root: String, _ tag: String, files: Int = 40) throws -> String {
        #expect(strata(["image", "load", "--root", root, "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let name = "src-\(UInt32.random(in: 0...UInt32.max))"
        #expect(strata(["create", "--root", root, "--name", name, "localhost/eco/busybox:l3"]).status == 0)
        let upper = try containerUpper(root, name)
        mkdir("\(upper)/data", 0o755)
        for i in 1...files {
            #expect(runProgram("/bin/dd", ["if=/dev/urandom", "of=\(upper)/data/f\(i)", "bs=200000", "count=1", "status=none"]).status == 0)
        }
        #expect(runProgram("/bin/dd", ["if=/dev/urandom", "of=\(upper)/data/big", "bs=1M", "count=9", "status=none"]).status == 0)
        link("\(upper)/data/f1", "\(upper)/data/f1-link")
        symlink("f2", "\(upper)/data/f2-link")
        #expect(runProgram("/usr/bin/setfattr", ["-n", "user.origin", "-v", "lazy", "\(upper)/data/f3"]).status == 0)
        chown("\(upper)/data/f4", 1000, 1000)
        mkdir("\(upper)/bin", 0o755)
        mknod("\(upper)/bin/cat", S_IFCHR, 0)      // a whiteout: cat is gone
        #expect(strata(["commit", "--root", root, name, tag]).status == 0)
        return upper
    }

    /// An image made by `makeLazyImage`, pushed as eStargz to `reg` as
    /// eco/NAME:e and pulled lazily into a store of its own. Returns the
    /// files' source directory, the reference and the store.
    func lazilyPulled(_ reg: LocalRegistry, _ t: TempDir, _ name: String, files: Int, prefetch: [String] = []) throws -> (String, String, String) {
        let a = "\(t.path)/a", lazy = "\(t.path)/lazy"
        let upper = try makeLazyImage(a, "localhost/eco/\(name):1", files: files)
        let image = "\(reg.host)/eco/\(name):e"
        let push = strata(["push", "--root", a, "--compression", "estargz"] + prefetch.flatMap { ["--prefetch", $0] } + ["localhost/eco/\(name):1", image])
        #expect(push.status == 0, "\(push.stderr)")
        #expect(strata(["pull", "--root", lazy, "--lazy", image]).status == 0)
        return (upper, image, lazy)
    }

    func inspectLazy(_ root: String, _ image: String) -> [[String: Any]] {
        let out = strata(["image", "inspect", "--root", root, image]).stdout
        let o = (try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])?.first
        return (o?["Lazy"] as? [[String: Any]]) ?? []
    }

    /// The regular files of the layer whose TOC lists data/, in the blob's order.
    func topLayerOrder(_ root: String) throws -> [String] { try topLayer(root).names }

    /// That layer's ID and its regular files in the blob's order.
    func topLayer(_ root: String) throws -> (id: String, names: [String]) {
        let states = runProgram("/usr/bin/find", ["\(root)/overlay", "-maxdepth", "3", "-name", "toc.json", "-path", "*/lazy/*"])
        for p in states.stdout.split(separator: "\n").map(String.init) {
            let toc = try JSONDecoder().decode(TOCProbe.self, from: Data(contentsOf: URL(fileURLWithPath: p)))
            let names = toc.entries.filter { $0.type == "reg" }.map(\.name)
            // overlay/<hex>/lazy/toc.json
            let hex = URL(fileURLWithPath: p).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent
            if names.contains("data/f1") { return ("sha256:" + hex, names) }
        }
        throw TestFailure("no layer lists data/f1")
    }

    func localFiles(_ root: String, _ image: String) -> Int {
        inspectLazy(root, image).reduce(0) { $0 + (($1["LocalFiles"] as? Int) ?? 0) }
    }

    /// Mounts a container of `image` (Strata's union: the only one that can
    /// serve a partly pulled image) and returns its merged path.
    func mountLazy(_ root: String, _ image: String, _ name: String, fetch: String = "on-read", readahead: Int? = nil) throws -> String {
        guard strata(["create", "--root", root, "--name", name, image]).status == 0 else { throw TestFailure("create \(name)") }
        let m = strata(["mount", "--root", root, "--lazy-fetch", fetch, name] + (readahead.map { ["--lazy-readahead", "\($0)"] } ?? []))
        guard m.status == 0 else { throw TestFailure("mount \(name): \(m.stderr)") }
        return m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func unmountLazy(_ root: String, _ name: String, _ merged: String) {
        _ = strata(["umount", "--root", root, name])
        umount2(merged, Int32(MNT_DETACH))
    }

    @Test(arguments: ["estargz", "zstd:chunked"])
    func aLazyPullServesTheImageFetchingOnlyWhatIsRead(_ format: String) throws {
        let reg = try LocalRegistry(accessLog: true)
        let t = TempDir()
        let a = "\(t.path)/a", full = "\(t.path)/full", lazy = "\(t.path)/lazy"
        let upper = try makeLazyImage(a, "localhost/eco/lazy:1")
        let push = strata(["push", "--root", a, "--compression", format, "localhost/eco/lazy:1", "\(reg.host)/eco/lazy:e"])
        #expect(push.status == 0, "\(push.stderr)")
        let image = "\(reg.host)/eco/lazy:e"
        // skopeo, which knows nothing of eStargz, takes it as ordinary tar+gzip
        // layers and checks every digest and diff ID.
        if let skopeo = Spawn.which("skopeo") {
            let sk = runProgram(skopeo, ["copy", "--src-tls-verify=false", "docker://\(image)", "oci:\(t.path)/oci:1"])
            #expect(sk.status == 0, "\(sk.stderr)")
        }
        #expect(strata(["pull", "--root", full, image]).status == 0)
        let reference = try mergedTree(full, image, times: true)

        let before = reg.bytesServed()
        let pull = strata(["pull", "--root", lazy, "--lazy", image])
        #expect(pull.status == 0, "\(pull.stderr)")
        let pulled = reg.bytesServed() - before
        // Manifest, config, and each layer's footer and TOC: kilobytes of
        // the 17 MB the layers hold.
        #expect(pulled < 96 << 10, "a lazy pull fetched \(pulled) bytes")
        #expect(strata(["image", "ls", "--root", lazy]).stdout.contains("partial"))
        #expect(inspectLazy(lazy, image).count == 4 && localFiles(lazy, image) == 0)
        // The kernel's overlayfs cannot serve it: asking for it is refused.
        #expect(strata(["create", "--root", lazy, "--name", "k", image]).status == 0)
        let k = strata(["mount", "--root", lazy, "--driver", "overlay", "k"])
        #expect(k.status != 0 && k.stderr.contains("partly pulled"), "\(k.stderr)")

        var m = try mountLazy(lazy, image, "c", readahead: 0)
        defer { unmountLazy(lazy, "c", m) }
        // One file read: that file's bytes, and nothing of the others.
        var b0 = reg.bytesServed()
        #expect(FileManager.default.contents(atPath: "\(m)/data/f7") == FileManager.default.contents(atPath: "\(upper)/data/f7"))
        let one = reg.bytesServed() - b0
        #expect(one >= 200_000 && one < 200_000 + (16 << 10), "reading one 200 kB file fetched \(one) bytes")
        #expect(localFiles(lazy, image) == 1)
        // Listing, stat and readlink of every entry need nothing from the registry.
        b0 = reg.bytesServed()
        #expect(runProgram("/usr/bin/find", [m, "-ls"]).status == 0)
        #expect(reg.bytesServed() == b0)
        // The 9 MB file comes in its three chunks, each checked.
        #expect(FileManager.default.contents(atPath: "\(m)/data/big") == FileManager.default.contents(atPath: "\(upper)/data/big"))

        // With read-ahead (the default), a read brings the files after it in
        // the blob, up to 1 MiB in the same request.
        unmountLazy(lazy, "c", m)
        m = try mountLazy(lazy, image, "c2")
        defer { unmountLazy(lazy, "c2", m) }
        // A file followed in the blob by three others of 200 kB not yet read.
        let order = try topLayerOrder(lazy)
        let pick = try #require(order.indices.first { i in
            i + 3 < order.count && order[i...(i + 3)].allSatisfy { $0.hasPrefix("data/f") && !$0.hasSuffix("-link") && $0 != "data/f7" }
        }.map { order[$0] })
        let had = localFiles(lazy, image)
        b0 = reg.bytesServed()
        #expect(FileManager.default.contents(atPath: "\(m)/\(pick)") == FileManager.default.contents(atPath: "\(upper)/\(pick)"))
        let ahead = reg.bytesServed() - b0
        #expect(localFiles(lazy, image) >= had + 3 && ahead < 200_000 + (1 << 20) + (64 << 10),
                "read-ahead: \(localFiles(lazy, image) - had) files for \(ahead) bytes")

        // Every file read through the union: the same tree as the full pull.
        var tree = TreeSnapshot.take(m, times: true)
        for k in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] { tree[k] = nil }
        #expect(TreeSnapshot.diff(reference, tree, labels: ("full pull", "lazy pull")) == [])

        // A pull without --lazy completes the layers: ordinary ones, served
        // by the kernel's overlayfs too, identical to the full pull's.
        unmountLazy(lazy, "c2", m)
        let complete = strata(["pull", "--root", lazy, image])
        #expect(complete.status == 0 && complete.stderr.contains("complete"), "\(complete.stderr)")
        #expect(inspectLazy(lazy, image).isEmpty)
        #expect(!strata(["image", "ls", "--root", lazy]).stdout.contains("partial"))
        #expect(TreeSnapshot.diff(reference, try mergedTree(lazy, image, times: true), labels: ("full pull", "completed")) == [])
        #expect(strata(["check", "--root", lazy]).status == 0)
        // And it pushes like any other (every layer kept as its tar).
        #expect(strata(["push", "--root", lazy, image, "\(reg.host)/eco/again:1"]).status == 0)
    }

    /// A mount left running completes the layers by itself, the files the
    /// image marks as prioritised (`push --prefetch`) first.
    @Test func aMountedLazyImageCompletesInTheBackground() async throws {
        let reg = try LocalRegistry(accessLog: true)
        let t = TempDir()
        let (upper, image, lazy) = try lazilyPulled(reg, t, "bg", files: 8, prefetch: ["data/f6", "/data/f3"])
        // The prioritised files lead their layer, then the prefetch landmark.
        let (layer, order) = try topLayer(lazy)
        #expect(Set(order.prefix(2)) == ["data/f6", "data/f3"] && order.dropFirst(2).first == ".prefetch.landmark", "\(order.prefix(4))")
        let fetcher = try LazyFetcher(layer: try Store(root: lazy).storedLayer(layer), options: RegistryOptions())
        #expect(Set(fetcher.prioritised) == ["data/f6", "data/f3"])
        await fetcher.shutdown()
        // A file the image does not have, or a format without landmarks:
        // one line each, and no manifest.
        let missing = strata(["push", "--root", "\(t.path)/a", "--compression", "estargz", "--prefetch", "no/such",
                              "localhost/eco/bg:1", "\(reg.host)/eco/bad2:e"])
        #expect(missing.status != 0 && missing.stderr.contains("--prefetch no/such"), "\(missing.stderr)")
        let zstd = strata(["push", "--root", "\(t.path)/a", "--compression", "zstd:chunked", "--prefetch", "data/f1",
                           "localhost/eco/bg:1", "\(reg.host)/eco/bad3:e"])
        #expect(zstd.status != 0 && zstd.stderr.contains("needs --compression estargz"), "\(zstd.stderr)")
        let m = try mountLazy(lazy, image, "c", fetch: "background")
        defer { unmountLazy(lazy, "c", m) }
        let done = waitFor(60) { inspectLazy(lazy, image).isEmpty }
        #expect(done, "the layers were not completed: \(inspectLazy(lazy, image))")
        for i in 1...8 {
            #expect(FileManager.default.contents(atPath: "\(m)/data/f\(i)") == FileManager.default.contents(atPath: "\(upper)/data/f\(i)"))
        }
        #expect(strata(["check", "--root", lazy]).status == 0)
    }

    @Test func aCorruptChunkIsNeverServedAndARegistryThatGoesAwayGivesEIO() throws {
        let reg = try LocalRegistry(accessLog: true)
        let t = TempDir()
        let (upper, image, lazy) = try lazilyPulled(reg, t, "bad", files: 4)
        // Where data/f2 lies in the blob, from the layer's TOC; one byte of
        // its compressed data flipped in the registry's own storage.
        let states = runProgram("/usr/bin/find", ["\(lazy)/overlay", "-maxdepth", "3", "-name", "toc.json", "-path", "*/lazy/*"])
        var offset: Int64? = nil, blobDigest: String? = nil
        for p in states.stdout.split(separator: "\n").map(String.init) {
            let toc = try JSONDecoder().decode(TOCProbe.self, from: Data(contentsOf: URL(fileURLWithPath: p)))
            if let e = toc.entries.first(where: { $0.name == "data/f2" }), let o = e.offset {
                offset = o
                let src = try JSONDecoder().decode(Store.LazySource.self,
                                                   from: Data(contentsOf: URL(fileURLWithPath: p.replacingOccurrences(of: "toc.json", with: "source.json"))))
                blobDigest = src.blob
            }
        }
        let off = try #require(offset), digest = try #require(blobDigest)
        let hex = String(digest.dropFirst(7))
        let blob = "\(reg.dir.path)/data/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
        bytes[Int(off) + 5000] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: blob))

        let m = try mountLazy(lazy, image, "c", readahead: 0)
        defer { unmountLazy(lazy, "c", m) }
        let bad = runProgram("/bin/cat", ["\(m)/data/f2"])
        #expect(bad.status != 0 && bad.stderr.contains("Input/output error"), "\(bad.stderr)")
        let log = runProgram("/bin/sh", ["-c", "cat \(lazy)/overlay/*/lazy/errors.log"]).stdout
        #expect(log.contains("data/f2") && (log.contains("does not match") || log.contains("corrupt")), "\(log)")
        // Refused, not served: asked again, it is refused again.
        #expect(runProgram("/bin/cat", ["\(m)/data/f2"]).status != 0)
        #expect(FileManager.default.contents(atPath: "\(m)/data/f1") == FileManager.default.contents(atPath: "\(upper)/data/f1"))

        // The registry goes away: a file not yet here gives EIO, not a hang.
        reg.stop()
        let away = runProgram("/usr/bin/timeout", ["60", "/bin/cat", "\(m)/data/f3"])
        #expect(away.status == 1 && away.stderr.contains("Input/output error"), "status \(away.status): \(away.stderr)")
        // It comes back: the same read succeeds.
        try reg.start()
        #expect(FileManager.default.contents(atPath: "\(m)/data/f3") == FileManager.default.contents(atPath: "\(upper)/data/f3"))
        unmountLazy(lazy, "c", m)
        // Completing checks each whole blob: the three intact layers become
        // ordinary, the corrupt one is refused and stays as it was.
        let complete = strata(["pull", "--root", lazy, image])
        #expect(complete.status != 0 && complete.stderr.contains("does not match"), "\(complete.stderr)")
        #expect(inspectLazy(lazy, image).count == 1)
        #expect(strata(["image", "ls", "--root", lazy]).stdout.contains(image))
    }

    /// `strata pull` killed while it completes a lazy layer, and a mount's
    /// daemon killed while its background fetch fills files: either way the
    /// next pull finishes, and the tree is the full pull's.
    @Test func aCompletionKilledHalfWayFinishesWhenRunAgain() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let a = "\(t.path)/a", lazy = "\(t.path)/lazy", full = "\(t.path)/full"
        _ = try makeLazyImage(a, "localhost/eco/lazy:4", files: 6)
        #expect(strata(["push", "--root", a, "--compression", "estargz", "localhost/eco/lazy:4", "\(reg.host)/eco/kill:e"]).status == 0)
        let image = "\(reg.host)/eco/kill:e"
        #expect(strata(["pull", "--root", full, image]).status == 0)
        #expect(strata(["pull", "--root", lazy, "--lazy", image]).status == 0)
        let killed = runProgram(MountEnvironment.binary, ["pull", "--root", lazy, image], env: ["STRATA_KILL_AT": "lazy-filled"])
        #expect(killed.status != 0)
        #expect(!inspectLazy(lazy, image).isEmpty)
        let again = strata(["pull", "--root", lazy, image])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(inspectLazy(lazy, image).isEmpty)
        #expect(TreeSnapshot.diff(try mergedTree(full, image, times: true), try mergedTree(lazy, image, times: true)) == [])
        #expect(strata(["check", "--root", lazy]).status == 0)

        // The mount's daemon killed while its background fetch fills files:
        // the mount is gone, the store is whole, and a pull completes it.
        let lazy2 = "\(t.path)/lazy2"
        #expect(strata(["pull", "--root", lazy2, "--lazy", image]).status == 0)
        #expect(strata(["create", "--root", lazy2, "--name", "d", image]).status == 0)
        let m = runProgram(MountEnvironment.binary, ["mount", "--root", lazy2, "d"], env: ["STRATA_KILL_AT": "lazy-filled"])
        #expect(m.status == 0, "\(m.stderr)")
        let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = strata(["umount", "--root", lazy2, "d"]); umount2(merged, Int32(MNT_DETACH)) }
        // stat can be answered from the kernel's cache; an open must reach
        // the daemon, and a dead one gives ENOTCONN.
        var seen: Int32 = 0
        let died = waitFor(30) {
            let fd = open("\(merged)/etc/passwd", O_RDONLY | O_CLOEXEC)
            if fd >= 0 { close(fd); return false }
            seen = errno
            return seen == ENOTCONN
        }
        #expect(died, "the daemon was not killed at its kill point (\(merged): errno \(seen))")
        _ = strata(["umount", "--root", lazy2, "d"])
        #expect(!inspectLazy(lazy2, image).isEmpty)
        #expect(strata(["pull", "--root", lazy2, image]).status == 0)
        #expect(inspectLazy(lazy2, image).isEmpty)
        #expect(TreeSnapshot.diff(try mergedTree(full, image, times: true), try mergedTree(lazy2, image, times: true)) == [])
        #expect(strata(["check", "--root", lazy2]).status == 0)
    }
}

/// The part of a TOC a test reads.
struct TOCProbe: Decodable {
    struct Entry: Decodable { var name: String; var type: String; var offset: Int64? }
    var entries: [Entry]
}

extension RegistryTests {
    /// podman pushes zstd:chunked (containers/storage's format: a zstd frame
    /// per file, the TOC in a skippable frame); Strata pulls it lazily and
    /// serves the tree a full pull gives.
    @Test func podmansZstdChunkedImagesPullLazily() throws {
        guard let podman = Spawn.which("podman") else { Issue.record("podman missing: apt-get install podman"); return }
        let reg = try LocalRegistry(accessLog: true)
        let t = TempDir()
        let p = [podman, "--root", "\(t.path)/podman/root", "--runroot", "\(t.path)/podman/run", "--storage-driver", "vfs"]
        #expect(runProgram(p[0], Array(p.dropFirst()) + ["load", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let image = "\(reg.host)/eco/zstd:1"
        let push = runProgram(p[0], Array(p.dropFirst()) + ["push", "--tls-verify=false", "--compression-format", "zstd:chunked",
                                                            "localhost/eco/busybox:l3", "docker://\(image)"])
        #expect(push.status == 0, "\(push.stderr)")
        let full = "\(t.path)/full", lazy = "\(t.path)/lazy"
        #expect(strata(["pull", "--root", full, image]).status == 0)
        let reference = try mergedTree(full, image, times: true)
        let before = reg.bytesServed()
        let pull = strata(["pull", "--root", lazy, "--lazy", image])
        #expect(pull.status == 0 && pull.stderr.contains("zstd:chunked"), "\(pull.stderr)")
        #expect(reg.bytesServed() - before < 64 << 10)
        #expect(inspectLazy(lazy, image).count == 3)
        let m = try mountLazy(lazy, image, "c", readahead: 0)
        defer { unmountLazy(lazy, "c", m) }
        // busybox alone: its chunks, not the rest.
        let b0 = reg.bytesServed()
        #expect(runProgram("/usr/sbin/chroot", [m, "/bin/busybox", "true"]).status == 0)
        let got = reg.bytesServed() - b0
        #expect(got > 500_000 && got < 1_200_000, "busybox fetched \(got) bytes")
        var tree = TreeSnapshot.take(m, times: true)
        for k in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] { tree[k] = nil }
        #expect(TreeSnapshot.diff(reference, tree, labels: ("full pull", "lazy pull")) == [])
        unmountLazy(lazy, "c", m)
        let complete = strata(["pull", "--root", lazy, image])
        #expect(complete.status == 0, "\(complete.stderr)")
        #expect(inspectLazy(lazy, image).isEmpty)
        #expect(TreeSnapshot.diff(reference, try mergedTree(lazy, image, times: true)) == [])
    }
}

extension RegistryTests {
    /// Layers without a table of contents (here uncompressed, as a plain
    /// push sends them) are pulled in full by `pull --lazy`.
    @Test func layersWithoutATOCArePulledInFullByALazyPull() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/plain:1"]).status == 0)
        let pull = strata(["pull", "--root", "\(t.path)/b", "--lazy", "\(reg.host)/eco/plain:1"])
        #expect(pull.status == 0 && pull.stderr.contains("no table of contents"), "\(pull.stderr)")
        #expect(inspectLazy("\(t.path)/b", "\(reg.host)/eco/plain:1").isEmpty)
        #expect(TreeSnapshot.diff(try mergedTree("\(t.path)/a", "localhost/eco/busybox:l3", times: true),
                                  try mergedTree("\(t.path)/b", "\(reg.host)/eco/plain:1", times: true)) == [])
    }
}
