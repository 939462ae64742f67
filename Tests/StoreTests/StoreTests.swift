import Foundation
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The layer store on the shared fixtures: loading both formats, layers
/// shared between images, containers on both drivers, and refusing bad input.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct StoreTests {
    static var fixtures: String { MountEnvironment.fixtures }

    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    @Test func loadBothFormatsSharesLayersAndLaysOutLikeOverlay2() throws {
        let t = TempDir()
        let store = try Store(root: t.path)
        let a = try ImageLoader(store: store).load(archive: "\(Self.fixtures)/busybox-l3.docker.tar")
        let b = try ImageLoader(store: store).load(archive: "\(Self.fixtures)/busybox-l3.oci.tar")
        #expect(a.first?.newLayers == 3 && b.first?.newLayers == 0)      // content addressed
        #expect(a.first?.id == b.first?.id)                              // the same config
        let img = try store.image("localhost/eco/busybox:l3")
        #expect(img.layerIDs.count == 3)
        for (i, l) in img.layerIDs.enumerated() {
            let dir = "\(t.path)/overlay/\(Digest.hex(l))"
            let link = try String(contentsOfFile: "\(dir)/link", encoding: .utf8)
            #expect(link.count == 26)
            #expect(try Sys.realPath("\(t.path)/overlay/l/\(link)") == "\(dir)/diff")
            let lower = (try? String(contentsOfFile: "\(dir)/lower", encoding: .utf8)) ?? ""
            #expect(lower.split(separator: ":").count == i, "layer \(i) lists the layers below it")
        }
    }

    /// `--root` relative to the working directory: the mount runs in the
    /// layer directory, and the store's paths are absolute by then.
    @Test func aRelativeRootMountsAndCommits() throws {
        let t = TempDir()
        // Run from the temporary directory (not a chdir of this process,
        // which other suites share).
        func run(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
            let r = runProgram("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", t.path, MountEnvironment.binary] + args)
            #expect(r.status == 0, "strata \(args.joined(separator: " ")): \(r.stderr)")
            return r
        }
        _ = run(["image", "load", "--root", "rel", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"])
        _ = run(["create", "--root", "rel", "localhost/eco/busybox:l3", "--name", "c"])
        let merged = run(["mount", "--root", "rel", "c"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(merged.hasPrefix("/") && Sys.isMountRoot(merged), "\(merged)")
        _ = run(["commit", "--root", "rel", "c", "localhost/rel:1"])
        _ = run(["rm", "--root", "rel", "c"])
        _ = run(["check", "--root", "rel"])
    }

    @Test(arguments: ["overlay", "fuse"])
    func containersMountWithEitherDriver(_ driver: String) throws {
        let t = TempDir()
        #expect(strata(["image", "load", "--root", t.path, "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let c = strata(["create", "--root", t.path, "localhost/eco/busybox:l3", "--name", "c1"])
        #expect(c.status == 0, "\(c.stderr)")
        let m = strata(["mount", "--root", t.path, "c1", "--driver", driver])
        #expect(m.status == 0, "\(m.stderr)")
        let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(merged, Int32(MNT_DETACH)) }
        let o = FileOps(merged)
        #expect(o.ls("opt/app/conf") == "only.conf")
        #expect(o.ls("opt/app/l2") == "a,rel-link")
        #expect(o.read("opt/app/delete-me.txt") == "ENOENT")
        #expect(o.stat("etc/hostname")?.st_size == 0)                  // the init layer
        #expect(o.write("etc/motd", "container's own") == "ok")
        let id = c.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(FileOps("\(t.path)/overlay/\(id)/diff").read("etc/motd") == "container's own")
        #expect(strata(["umount", "--root", t.path, "c1"]).status == 0)
        #expect(!isMountPoint(merged))
        #expect(strata(["rm", "--root", t.path, "c1"]).status == 0)
        var st = stat()
        #expect(lstat("\(t.path)/overlay/\(id)", &st) != 0 && lstat("\(t.path)/overlay/\(id)-init", &st) != 0)
        #expect(strata(["ls", "--root", t.path]).stdout.split(separator: "\n").count == 1)
    }

    @Test func corruptedBlobIsRefusedAndNothingIsRegistered() throws {
        let t = TempDir()
        let layout = t.sub("layout")
        #expect(runProgram("/bin/tar", ["xf", "\(Self.fixtures)/busybox-l3.oci.tar", "-C", layout]).status == 0)
        // Flip a byte of the largest blob (the first layer).
        let blobs = try FileManager.default.contentsOfDirectory(atPath: "\(layout)/blobs/sha256")
        let biggest = try #require(blobs.max { (FileOps(layout).stat("blobs/sha256/\($0)")?.st_size ?? 0) < (FileOps(layout).stat("blobs/sha256/\($1)")?.st_size ?? 0) })
        let p = "\(layout)/blobs/sha256/\(biggest)"
        var data = try Data(contentsOf: URL(fileURLWithPath: p))
        data[data.count / 2] ^= 0xff
        try data.write(to: URL(fileURLWithPath: p))
        let r = strata(["image", "load", "--root", "\(t.path)/store", "--oci", layout])
        #expect(r.status != 0)
        #expect(r.stderr.contains("does not match its digest"), "\(r.stderr)")
        #expect(strata(["image", "ls", "--root", "\(t.path)/store"]).stdout.split(separator: "\n").count == 1)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(t.path)/store/overlay"))?.filter { $0 != "l" } == [])
    }

    /// A layer is recorded only with its links in place: when the short
    /// link cannot be made (here `overlay/l` is a file, not a directory),
    /// the load fails naming it and no layer row exists.
    @Test func aLayerWhoseLinkFailsIsNotRecorded() throws {
        let t = TempDir()
        _ = try Store(root: t.path)   // lays the store out
        #expect(Glibc.rmdir("\(t.path)/overlay/l") == 0)
        #expect(FileOps(t.path).write("overlay/l", "not a directory") == "ok")
        let r = strata(["image", "load", "--root", t.path, "-i", "\(Self.fixtures)/busybox-l3.docker.tar"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("short link"), "\(r.stderr)")
        #expect(try Store(root: t.path).allLayerIDs().isEmpty, "a layer row was recorded without its link")
        #expect(strata(["image", "ls", "--root", t.path]).stdout.split(separator: "\n").count == 1)
    }

    /// A hostile middle layer: the load fails with one line naming the
    /// entry, and the layers unpacked beside it (in parallel) are removed:
    /// nothing is registered, nothing is left in the store or outside it.
    @Test func aHostileLayerFailsTheLoadAndLeavesNothing() throws {
        let t = TempDir()
        let archive = "\(t.path)/hostile.tar"
        let script = """
        import tarfile, io, json, hashlib
        def layer(entries):
            b = io.BytesIO()
            with tarfile.open(fileobj=b, mode='w', format=tarfile.PAX_FORMAT) as t:
                for name, data in entries:
                    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
            return b.getvalue()
        layers = [layer([('a/one', b'1' * 100000)]), layer([('b/ok', b'ok'), ('../escape', b'out')]), layer([('c/three', b'3' * 100000)])]
        diffs = ['sha256:' + hashlib.sha256(l).hexdigest() for l in layers]
        cfg = json.dumps({'architecture': 'amd64', 'os': 'linux', 'rootfs': {'type': 'layers', 'diff_ids': diffs}}).encode()
        ch = hashlib.sha256(cfg).hexdigest()
        with tarfile.open('\(archive)', 'w') as t:
            def add(n, d):
                ti = tarfile.TarInfo(n); ti.size = len(d); t.addfile(ti, io.BytesIO(d))
            add(ch + '.json', cfg)
            for d, l in zip(diffs, layers): add(d[7:] + '.tar', l)
            add('manifest.json', json.dumps([{'Config': ch + '.json', 'RepoTags': ['localhost/hostile:1'], 'Layers': [d[7:] + '.tar' for d in diffs]}]).encode())
        """
        #expect(runProgram("/usr/bin/env", ["python3", "-c", script]).status == 0)
        let store = "\(t.path)/deep/store"
        let r = strata(["image", "load", "--root", store, "-i", archive])
        #expect(r.status != 0)
        // Progress lines, then one line for the error, naming the entry.
        let errors = r.stderr.split(separator: "\n").filter { !$0.contains(": unpacked,") && !$0.contains("loading") }
        #expect(errors.count == 1 && errors.first?.contains("../escape") == true, "\(r.stderr)")
        #expect(strata(["image", "ls", "--root", store]).stdout.split(separator: "\n").count == 1)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(store)/overlay"))?.filter { $0 != "l" } == [])
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(store)/overlay/l")) == [])
        var st = stat()
        for p in ["\(t.path)/deep/escape", "\(store)/escape", "\(store)/overlay/escape"] { #expect(lstat(p, &st) != 0, "\(p)") }
    }

    @Test func badInputIsOneLine() throws {
        let t = TempDir()
        let cases: [([String], String)] = [
            (["create", "--root", t.path, "no/such:image"], "no image"),
            (["mount", "--root", t.path, "nothing"], "no container"),
            (["image", "load", "--root", t.path], "-i"),
            (["image", "load", "--root", t.path, "-i", "/etc/hostname"], "hostname"),
            (["mount", "--root", t.path, "x", "--driver", "zfs"], "driver"),
        ]
        for (args, word) in cases {
            let r = strata(args)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.split(separator: "\n").first.map { $0.contains(word) } == true, "\(args): \(r.stderr)")
        }
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ContainerChangeTests {
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    @Test func diffCommitAndInspect() throws {
        let t = TempDir()
        let root = t.path
        #expect(strata(["image", "load", "--root", root, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c1"]).status == 0)
        let merged = strata(["mount", "--root", root, "c1"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(merged, Int32(MNT_DETACH)) }
        let o = FileOps(merged)
        #expect(o.write("new.txt", "added") == "ok")
        #expect(o.write("etc/motd", "changed") == "ok")
        #expect(o.unlink("opt/app/keep.txt") == "ok")
        #expect(runProgram("/bin/rm", ["-rf", "\(merged)/opt/app/l2"]).status == 0)
        #expect(o.mkdir("opt/app/l2") == "ok" && o.write("opt/app/l2/fresh", "f") == "ok")
        let before = TreeSnapshot.take(merged)

        let d = strata(["diff", "--root", root, "c1"]).stdout.split(separator: "\n").map(String.init)
        for line in ["A /new.txt", "C /etc", "C /etc/motd", "D /opt/app/keep.txt", "C /opt/app/l2", "A /opt/app/l2/fresh"] {
            #expect(d.contains(line), "diff lacks '\(line)': \(d)")
        }

        let commit = strata(["commit", "--root", root, "c1", "localhost/test:committed"])
        #expect(commit.status == 0, "\(commit.stderr)")
        #expect(strata(["create", "--root", root, "localhost/test:committed", "--name", "c2"]).status == 0)
        let m2 = strata(["mount", "--root", root, "c2", "--driver", "fuse"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(m2, Int32(MNT_DETACH)) }
        // Each container has its own init-layer placeholders; all else must match.
        let initFiles: Set<String> = ["etc/hostname", "etc/hosts", "etc/resolv.conf"]
        #expect(TreeSnapshot.diff(before, TreeSnapshot.take(m2), labels: ("container", "committed image"))
            .filter { !initFiles.contains(String($0.prefix { $0 != ":" })) } == [])

        let inspect = strata(["inspect", "--root", root, "c1"])
        // Paths as docker prints them: no escaped slashes.
        #expect(inspect.stdout.contains("\"MergedDir\"") && !inspect.stdout.contains("\\/"), "\(inspect.stdout.prefix(300))")
        // docker's layout: four spaces, "key": value.
        #expect(inspect.stdout.hasPrefix("[\n    {\n        \"") && inspect.stdout.contains("        \"Name\": \"c1\""),
                "\(inspect.stdout.prefix(200))")
        let json = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [[String: Any]]
        let data = (json?.first?["GraphDriver"] as? [String: Any])?["Data"] as? [String: String]
        #expect(data?["MergedDir"] == merged)
        #expect(data?["LowerDir"]?.split(separator: ":").count == 4)      // init + 3 image layers
        let img = try JSONSerialization.jsonObject(with: Data(strata(["inspect", "--root", root, "localhost/test:committed"]).stdout.utf8)) as? [[String: Any]]
        #expect(((img?.first?["RootFS"] as? [String: Any])?["Layers"] as? [String])?.count == 4)
    }

    /// podman's global form: `--storage-driver` before the subcommand picks
    /// how containers mount; a driver we do not have is one line and 125.
    @Test func theGlobalStorageDriverPicksTheMount() throws {
        let t = TempDir()
        let root = t.path
        let bad = strata(["--storage-driver", "vfs", "--root", root, "image", "ls"])
        #expect(bad.status == 125 && bad.stderr.split(separator: "\n").count == 1 && bad.stderr.contains("'vfs'"), "\(bad)")
        #expect(strata(["--root", root, "image", "load", "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["--root=\(root)", "create", "localhost/eco/busybox:l3", "--name", "c1"]).status == 0)
        for (driver, type) in [("fuse", "fuse.strata"), ("overlay", "overlay")] {
            let m = strata(["--storage-driver=\(driver)", "--root", root, "mount", "c1"])
            let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(m.status == 0, "\(m.stderr)")
            let mounts = mountTable()
            #expect(mounts.split(separator: "\n").contains { $0.split(separator: " ").count > 2 && $0.split(separator: " ")[1] == merged && $0.split(separator: " ")[2] == type },
                    "\(driver): \(merged) is not a \(type) mount")
            #expect(strata(["--root", root, "umount", "c1"]).status == 0)
            umount2(merged, Int32(MNT_DETACH))
        }
    }
}

/// Images move between Strata, podman and skopeo without changing a digest.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ImageInteropTests {
    func run(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    func imageID(_ root: String, _ ref: String) -> String? {
        let r = run(["inspect", "--root", root, ref])
        return (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])?.first?["Id"] as? String
    }

    @Test(arguments: ["docker-archive", "oci-archive"])
    func saveThenLoadKeepsEveryDigest(_ format: String) throws {
        let t = TempDir()
        let a = "\(t.path)/a", b = "\(t.path)/b", out = "\(t.path)/saved.tar"
        #expect(run(["image", "load", "--root", a, "-i", "\(StoreTests.fixtures)/busybox-l3.oci.tar"]).status == 0)
        let s = run(["image", "save", "--root", a, "--format", format, "-o", out, "localhost/image:busybox-l3"])
        #expect(s.status == 0, "\(s.stderr)")
        let l = run(["image", "load", "--root", b, "-i", out])
        #expect(l.status == 0, "\(l.stderr)")
        let id = imageID(a, "localhost/image:busybox-l3")
        #expect(id != nil && id == imageID(b, Digest.hex(id ?? "")))
        let again = "\(t.path)/again.tar"
        #expect(run(["image", "save", "--root", a, "--format", format, "-o", again, "localhost/image:busybox-l3"]).status == 0)
        #expect(runProgram("/usr/bin/cmp", [out, again]).status == 0, "save is not reproducible")
    }

    @Test func podmanAndSkopeoReadWhatStrataWritesAndTheOtherWayRound() throws {
        guard let podman = Spawn.which("podman"), let skopeo = Spawn.which("skopeo") else {
            Issue.record("podman and skopeo are needed (apt-get install podman skopeo)")
            return
        }
        let t = TempDir()
        let store = "\(t.path)/store"
        let pm = ["--root", "\(t.path)/podman", "--runroot", "\(t.path)/podman-run", "--storage-driver", "vfs"]
        #expect(run(["image", "load", "--root", store, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let saved = "\(t.path)/strata-saved.tar"
        #expect(run(["image", "save", "--root", store, "-o", saved, "localhost/eco/busybox:l3"]).status == 0)
        // podman load of Strata's archive; its tree is the image's.
        let pl = runProgram(podman, pm + ["load", "-i", saved])
        #expect(pl.status == 0, "podman load: \(pl.stderr)")
        let pmount = runProgram(podman, pm + ["image", "mount", "localhost/eco/busybox:l3"])
        #expect(pmount.status == 0, "podman image mount: \(pmount.stderr)")
        let podmanTree = pmount.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = runProgram(podman, pm + ["image", "unmount", "--all"]) }
        #expect(run(["create", "--root", store, "localhost/eco/busybox:l3", "--name", "c"]).status == 0)
        let merged = run(["mount", "--root", store, "c"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(merged, Int32(MNT_DETACH)) }
        // The container's init placeholders aside, and link counts: a union
        // reports a lower inode's count (a merged directory 1; opt/app/l2/a
        // keeps the 2 of its layer though layer 3 removed the other name),
        // podman's vfs driver a flattened copy's.
        let initFiles: Set<String> = ["etc/hostname", "etc/hosts", "etc/resolv.conf"]
        func normalized(_ tree: [String: EntryState]) -> [String: EntryState] {
            var out: [String: EntryState] = [:]
            for (k, var v) in tree where !initFiles.contains(k) {
                v.nlink = 0
                out[k] = v
            }
            return out
        }
        #expect(TreeSnapshot.diff(normalized(TreeSnapshot.take(podmanTree, times: false)),
                                  normalized(TreeSnapshot.take(merged, times: false)), labels: ("podman", "strata")) == [])
        // podman save and skopeo copy, loaded by Strata: the same image ID.
        let fromPodman = "\(t.path)/podman-saved.tar"
        #expect(runProgram(podman, pm + ["save", "--format", "docker-archive", "-o", fromPodman, "localhost/eco/busybox:l3"]).status == 0)
        let ociDir = "\(t.path)/skopeo-oci"
        let sk = runProgram(skopeo, ["copy", "docker-archive:\(saved)", "oci:\(ociDir):l3"])
        #expect(sk.status == 0, "skopeo: \(sk.stderr)")
        func diffIDs(_ root: String, _ ref: String) -> [String] {
            let r = run(["inspect", "--root", root, ref])
            let o = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])?.first
            return ((o?["RootFS"] as? [String: Any])?["Layers"] as? [String]) ?? []
        }
        let original = diffIDs(store, "localhost/eco/busybox:l3")
        #expect(original.count == 3)
        // skopeo rewrites the config for OCI (a new image ID); the layers,
        // named by their diff IDs, are the same bytes.
        for (i, (args, ref)) in [(["-i", fromPodman], "localhost/eco/busybox:l3"), (["--oci", ociDir], "localhost/image:l3")].enumerated() {
            let root = "\(t.path)/s\(i)"
            let r = run(["image", "load", "--root", root] + args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
            #expect(diffIDs(root, ref) == original, "\(args)")
        }
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ImageManagementTests {
    func run(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    @Test func tagRemoveHistoryDfAndExport() throws {
        let t = TempDir()
        let r = t.path
        let img = "localhost/eco/busybox:l3"
        #expect(run(["image", "load", "--root", r, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(run(["image", "tag", "--root", r, img, "other:1"]).status == 0)
        #expect(run(["image", "rm", "--root", r, "other:1"]).status == 0)
        #expect(run(["image", "ls", "--root", r]).stdout.contains("localhost/eco/busybox:l3"))      // still tagged
        // --root before the subcommand, as podman takes it.
        #expect(run(["--root", r, "image", "ls"]).stdout == run(["image", "ls", "--root", r]).stdout)
        #expect(run(["--root=\(r)", "ls"]).status == 0)
        #expect(!run(["image", "history", "--root", r, img]).stdout.isEmpty)

        #expect(run(["create", "--root", r, img, "--name", "c"]).status == 0)
        let merged = run(["mount", "--root", r, "c"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        _ = FileOps(merged).write("big", String(repeating: "b", count: 100_000))
        #expect(run(["umount", "--root", r, "c"]).status == 0)
        let inUse = run(["image", "rm", "--root", r, img])
        #expect(inUse.status != 0 && inUse.stderr.contains("used by a container"), "\(inUse.stderr)")

        let tar = "\(t.path)/export.tar"
        #expect(run(["export", "--root", r, "-o", tar, "c"]).status == 0)
        let listing = runProgram("/bin/tar", ["tf", tar]).stdout
        #expect(listing.contains("opt/app/conf/only.conf") && listing.contains("big") && !listing.contains("delete-me") && !listing.contains(".wh."))
        #expect(!isMountPoint(merged))                                   // export unmounted what it mounted

        #expect(run(["commit", "--root", r, "c", "committed:1"]).status == 0)
        let df = run(["df", "--root", r]).stdout
        #expect(df.contains("Layers       4") && df.contains("Images       2"), "\(df)")
        #expect(run(["rm", "--root", r, "c"]).status == 0)
        // The first image goes; its layers stay: the committed image uses them.
        #expect(run(["image", "rm", "--root", r, img]).stdout == "")
        #expect(run(["image", "rm", "--root", r, "committed:1"]).stdout.split(separator: "\n").count == 4)
        #expect((try FileManager.default.contentsOfDirectory(atPath: "\(r)/overlay")).sorted() == ["l"])
        #expect((try FileManager.default.contentsOfDirectory(atPath: "\(r)/overlay/l")) == [])
    }

    /// docker's short verbs, read as docker reads them, before or after
    /// the global options; `tag A B` is not taken for mount.fuse3's
    /// `SOURCE MOUNTPOINT`.
    @Test func dockersShortVerbsAreItsImageCommands() throws {
        let t = TempDir()
        let r = t.path
        let img = "localhost/eco/busybox:l3"
        #expect(run(["load", "--root", r, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(run(["--root", r, "tag", img, "short:1"]).status == 0)
        #expect(run(["--root", r, "images"]).stdout == run(["image", "ls", "--root", r]).stdout)
        #expect(run(["images", "--root", r]).stdout.contains("short:1"))
        #expect(run(["--root", r, "history", "short:1"]).stdout == run(["image", "history", "--root", r, img]).stdout)
        #expect(run(["--root", r, "save", "-o", "\(t.path)/saved.tar", "short:1"]).status == 0)
        #expect(run(["--root", r, "rmi", "short:1"]).status == 0)
        #expect(!run(["--root", r, "images"]).stdout.contains("short:1"))
        #expect(run(["--root", r, "ps"]).stdout == run(["--root", r, "ls"]).stdout)
        #expect(!isMountPoint("short:1"))
        // docker load < FILE and docker save IMAGE > FILE (or into a pipe).
        let other = "\(t.path)/other"
        let bin = MountEnvironment.binary
        let piped = runProgram("/bin/sh", ["-c", "\"$0\" --root \"$1\" save localhost/eco/busybox:l3 | \"$0\" --root \"$2\" load", bin, r, other])
        #expect(piped.status == 0 && piped.stdout.contains("Loaded image localhost/eco/busybox:l3"), "\(piped.stderr)")
        #expect(run(["--root", other, "images"]).stdout == run(["--root", r, "images", "--root", r]).stdout)
        let redirected = runProgram("/bin/sh", ["-c", "\"$0\" --root \"$1\" save --format oci-archive localhost/eco/busybox:l3 > \"$2\"",
                                                bin, other, "\(t.path)/out.tar"])
        #expect(redirected.status == 0, "\(redirected.stderr)")
        #expect(run(["load", "--root", "\(t.path)/third", "-i", "\(t.path)/out.tar"]).status == 0)
        // A refused save writes nothing; an empty standard input is one line.
        let refused = runProgram("/bin/sh", ["-c", "\"$0\" --root \"$1\" save nosuch:1 > \"$2\"", bin, r, "\(t.path)/none.tar"])
        var st = stat()
        #expect(refused.status != 0 && lstat("\(t.path)/none.tar", &st) == 0 && st.st_size == 0, "\(refused.stderr)")
        let empty = run(["--root", r, "load"])
        #expect(empty.status != 0 && empty.stderr.contains("no archive on standard input") && empty.stderr.split(separator: "\n").count == 1, "\(empty.stderr)")
        let garbage = runProgram("/bin/sh", ["-c", "echo garbage | \"$0\" --root \"$1\" load", bin, r])
        #expect(garbage.status != 0 && garbage.stderr.contains("standard input") && garbage.stderr.split(separator: "\n").count == 1, "\(garbage.stderr)")
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct RunTests {
    @Test(arguments: ["overlay", "fuse"])
    func runACommandInTheFixtureImageThroughRunc(_ driver: String) throws {
        guard Spawn.which("runc") != nil else { Issue.record("runc missing: apt-get install runc"); return }
        let t = TempDir()
        let r = t.path
        #expect(runProgram(MountEnvironment.binary, ["image", "load", "--root", r, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let out = runProgram(MountEnvironment.binary, ["run", "--root", r, "--driver", driver, "localhost/eco/busybox:l3", "--",
                                                       "/bin/busybox", "sh", "-c", "ls /opt/app/conf; test ! -e /var/log && echo no-var-log"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.stdout == "only.conf\nno-var-log\n")
        let failing = runProgram(MountEnvironment.binary, ["run", "--root", r, "--driver", driver, "localhost/eco/busybox:l3", "--", "/bin/busybox", "sh", "-c", "exit 7"])
        #expect(failing.status == 7)
        // Removed afterwards: no container, nothing mounted.
        #expect(runProgram(MountEnvironment.binary, ["ls", "--root", r]).stdout.split(separator: "\n").count == 1)
    }

    /// What runs and how, as docker run: the image's Cmd without a command
    /// (busybox's is /bin/sh, which reads the script from stdin here), its
    /// Env with -e on top, -w, -u by number and by the image's own names,
    /// -v read-only, and the name as hostname.
    @Test func runTakesDockersFlagsAndTheImagesDefaults() throws {
        guard Spawn.which("runc") != nil else { Issue.record("runc missing: apt-get install runc"); return }
        let t = TempDir()
        let r = t.path
        let img = "localhost/eco/busybox:l3"
        #expect(runProgram(MountEnvironment.binary, ["image", "load", "--root", r, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        func run(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
            runProgram(MountEnvironment.binary, ["run", "--root", r] + args)
        }
        let script = t.sub("in") + "/script"
        #expect(FileOps("/").write(String(script.dropFirst()), "echo from-stdin-sh\n") == "ok")
        let byDefault = runProgram("/bin/sh", ["-c", "\(MountEnvironment.binary) run --root \(r) \(img) < \(script)"])
        #expect(byDefault.status == 0 && byDefault.stdout == "from-stdin-sh\n", "\(byDefault.stderr)")
        let e = run(["-e", "FOO=bar", "-e", "PATH=/bin", img, "sh", "-c", "echo $FOO $PATH"])
        #expect(e.stdout == "bar /bin\n", "\(e.stderr)")
        #expect(run(["-w", "/tmp", img, "pwd"]).stdout == "/tmp\n")
        #expect(run(["-u", "1000:1001", img, "id", "-u"]).stdout == "1000\n")
        let named = run(["-u", "nobody", img, "id"])
        #expect(named.stdout.hasPrefix("uid=65534(nobody)"), "\(named.stdout)\(named.stderr)")
        let vol = t.sub("vol")
        #expect(FileOps(vol).write("f", "v") == "ok")
        let v = run(["-v", "\(vol):/mnt:ro", img, "sh", "-c", "cat /mnt/f; touch /mnt/g 2>/dev/null || echo ro"])
        #expect(v.stdout == "vro\n", "\(v.stderr)")
        #expect(run(["--name", "box1", img, "hostname"]).stdout == "box1\n")
        #expect(run(["-u", "nosuchuser", img, "true"]).stderr.contains("nosuchuser"))
        #expect(run(["--network", "bogus", img, "true"]).status != 0)
    }
}

/// The global options reach every subcommand: `strata --root DIR SUB ...`
/// works on DIR, never on the default store (a decoy here, through
/// STRATA_ROOT), with or without a command after the image.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct GlobalOptionTests {
    @Test func theGlobalRootReachesEverySubcommand() throws {
        guard Spawn.which("runc") != nil else { Issue.record("runc missing: apt-get install runc"); return }
        let t = TempDir()
        let r = t.sub("store"), decoy = t.sub("decoy")
        let img = "localhost/eco/busybox:l3"
        func g(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
            runProgram(MountEnvironment.binary, ["--root", r] + args, env: ["STRATA_ROOT": decoy])
        }
        func ok(_ args: [String]) {
            let x = g(args)
            #expect(x.status == 0, "strata --root DIR \(args.joined(separator: " ")): \(x.stderr)")
        }
        ok(["image", "load", "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"])
        #expect(g(["image", "ls"]).stdout.contains("localhost/eco/busybox"))
        ok(["image", "tag", img, "localhost/eco/again:1"])
        ok(["image", "history", img])
        let run = g(["run", img, "sh", "-c", "echo in-\"$0\"", "box"])
        #expect(run.status == 0 && run.stdout == "in-box\n", "run with a command: \(run.stderr)")
        let dashed = g(["run", "--rm", img, "--", "echo", "dashed"])
        #expect(dashed.status == 0 && dashed.stdout == "dashed\n", "run with --: \(dashed.stderr)")
        ok(["create", "--name", "c1", img])
        #expect(g(["ls"]).stdout.contains("c1"))
        let m = g(["mount", "c1"])
        #expect(m.status == 0, "\(m.stderr)")
        let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(FileOps(merged).write("new", "x") == "ok")
        ok(["umount", "c1"])
        umount2(merged, Int32(MNT_DETACH))
        #expect(g(["diff", "c1"]).stdout.contains("/new"))
        ok(["commit", "c1", "localhost/eco/committed:1"])
        ok(["inspect", "c1"])
        ok(["export", "-o", "\(t.path)/c1.tar", "c1"])
        ok(["image", "save", "-o", "\(t.path)/img.tar", img])
        ok(["df"])
        ok(["check"])
        ok(["rm", "c1"])
        ok(["image", "rm", "localhost/eco/again:1"])
        ok(["system", "prune"])
        // Nothing reached the decoy.
        #expect(FileOps(decoy).ls("") == "", "the default store was used: \(FileOps(decoy).ls(""))")
    }

    /// Each kind of failure ends in its own exit code (the README's table),
    /// with one line naming the problem.
    @Test func failuresEndInTheExitCodeOfTheirKind() throws {
        let t = TempDir()
        let r = t.sub("store")
        func code(_ args: [String]) -> Int32 {
            let x = runProgram(MountEnvironment.binary, args)
            #expect(x.stderr.split(separator: "\n").count == 1, "\(args): \(x.stderr)")
            return x.status
        }
        #expect(runProgram(MountEnvironment.binary, ["image", "load", "--root", r, "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(code(["image", "inspect", "--root", r, "localhost/no/such:1"]) == 3)
        #expect(runProgram(MountEnvironment.binary, ["create", "--root", r, "--name", "c1", "localhost/eco/busybox:l3"]).status == 0)
        #expect(code(["create", "--root", r, "--name", "c1", "localhost/eco/busybox:l3"]) == 4)
        #expect(code(["image", "load", "--root", r, "-i", "/etc/hostname"]) == 5)
        #expect(code(["pull", "--root", r, "127.0.0.1:1/eco/nothing:1"]) == 7)
        #expect(code(["--storage-driver", "vfs", "image", "ls"]) == 125)
        #expect(runProgram(MountEnvironment.binary, ["create", "--root", r]).status == 64)
    }

    /// An image whose config sets no PATH (podman import) runs a bare
    /// command with docker's default PATH; --rm is taken, --rm with
    /// --keep refused.
    @Test func anImageWithoutAPathGetsTheDefaultOne() throws {
        guard Spawn.which("runc") != nil, let podman = Spawn.which("podman") else { Issue.record("runc or podman missing"); return }
        let t = TempDir()
        let p = [podman, "--root", "\(t.path)/podman/root", "--runroot", "\(t.path)/podman/run", "--storage-driver", "vfs"]
        func pod(_ a: [String]) -> (status: Int32, stdout: String, stderr: String) { runProgram(p[0], Array(p.dropFirst()) + a) }
        #expect(pod(["load", "-i", "\(StoreTests.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let c = pod(["create", "localhost/eco/busybox:l3", "true"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(pod(["export", "-o", "\(t.path)/rootfs.tar", c]).status == 0)
        #expect(pod(["import", "\(t.path)/rootfs.tar", "localhost/nopath:1"]).status == 0)
        #expect(pod(["save", "-o", "\(t.path)/nopath.tar", "localhost/nopath:1"]).status == 0)
        let r = t.sub("store")
        #expect(runProgram(MountEnvironment.binary, ["image", "load", "--root", r, "-i", "\(t.path)/nopath.tar"]).status == 0)
        let cfg = runProgram(MountEnvironment.binary, ["image", "inspect", "--root", r, "localhost/nopath:1"]).stdout
        #expect(!cfg.contains("PATH="), "the imported image has a PATH after all")
        let out = runProgram(MountEnvironment.binary, ["run", "--root", r, "--rm", "localhost/nopath:1", "sh", "-c", "echo $PATH"])
        #expect(out.status == 0 && out.stdout == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", "\(out.stderr)")
        let both = runProgram(MountEnvironment.binary, ["run", "--root", r, "--rm", "--keep", "localhost/nopath:1", "true"])
        #expect(both.status != 0 && both.stderr.contains("--rm"), "\(both.stderr)")
        #expect(runProgram(MountEnvironment.binary, ["ls", "--root", r]).stdout.split(separator: "\n").count == 1)
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct CommitRoundTripTests {
    func run(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    /// A container's commit, saved and loaded into a fresh store, gives a
    /// container with the same tree as the one committed.
    @Test func commitAppliedInAFreshStoreGivesTheSameTree() throws {
        let t = TempDir()
        let a = "\(t.path)/a", b = "\(t.path)/b"
        #expect(run(["image", "load", "--root", a, "-i", "\(StoreTests.fixtures)/busybox-l3.oci.tar"]).status == 0)
        #expect(run(["create", "--root", a, "localhost/image:busybox-l3", "--name", "c"]).status == 0)
        let m = run(["mount", "--root", a, "c"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(m, Int32(MNT_DETACH)) }
        let o = FileOps(m)
        _ = o.write("opt/app/new", "n"); _ = o.unlink("etc/motd"); _ = o.chmod("opt/app/keep.txt", 0o600)
        _ = o.setxattr("opt/app/keep.txt", "user.mark", "1"); _ = o.symlink("/nowhere", "dangling")
        _ = runProgram("/bin/rm", ["-rf", "\(m)/opt/app/conf"]); _ = o.mkdir("opt/app/conf"); _ = o.write("opt/app/conf/x", "x")
        let before = TreeSnapshot.take(m)
        #expect(run(["commit", "--root", a, "c", "localhost/snap:1"]).status == 0)
        let saved = "\(t.path)/snap.tar"
        #expect(run(["image", "save", "--root", a, "-o", saved, "localhost/snap:1"]).status == 0)
        #expect(run(["image", "load", "--root", b, "-i", saved]).status == 0)
        #expect(run(["create", "--root", b, "localhost/snap:1", "--name", "d"]).status == 0)
        let m2 = run(["mount", "--root", b, "d"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(m2, Int32(MNT_DETACH)) }
        let initFiles: Set<String> = ["etc/hostname", "etc/hosts", "etc/resolv.conf"]
        #expect(TreeSnapshot.diff(before, TreeSnapshot.take(m2), labels: ("committed container", "fresh store"))
            .filter { !initFiles.contains(String($0.prefix { $0 != ":" })) } == [])
    }

    @Test func zstdAndGzipLayersLoad() throws {
        guard Spawn.which("zstd") != nil else { Issue.record("zstd missing: apt-get install zstd"); return }
        let t = TempDir()
        // An OCI layout whose layers are re-compressed with zstd.
        let layout = t.sub("layout")
        #expect(runProgram("/bin/tar", ["xf", "\(StoreTests.fixtures)/busybox-l3.oci.tar", "-C", layout]).status == 0)
        let src = TempDir()
        let store = "\(src.path)/s"
        #expect(run(["image", "load", "--root", store, "--oci", layout]).status == 0)
        let saved = "\(t.path)/plain.tar"
        #expect(run(["image", "save", "--root", store, "--format", "oci-archive", "-o", saved, "localhost/image:busybox-l3"]).status == 0)
        let plain = t.sub("plain")
        #expect(runProgram("/bin/tar", ["xf", saved, "-C", plain]).status == 0)
        // Compress each layer blob with zstd and point the manifest at it.
        let script = """
        import json, hashlib, os, subprocess
        d = '\(plain)'
        idx = json.load(open(d + '/index.json'))
        mdig = idx['manifests'][0]['digest'].split(':')[1]
        m = json.load(open(d + '/blobs/sha256/' + mdig))
        for l in m['layers']:
            raw = open(d + '/blobs/sha256/' + l['digest'].split(':')[1], 'rb').read()
            z = subprocess.run(['zstd', '-q', '-c'], input=raw, capture_output=True, check=True).stdout
            h = hashlib.sha256(z).hexdigest()
            open(d + '/blobs/sha256/' + h, 'wb').write(z)
            l['digest'] = 'sha256:' + h; l['size'] = len(z); l['mediaType'] = 'application/vnd.oci.image.layer.v1.tar+zstd'
        mb = json.dumps(m).encode(); mh = hashlib.sha256(mb).hexdigest()
        open(d + '/blobs/sha256/' + mh, 'wb').write(mb)
        idx['manifests'][0]['digest'] = 'sha256:' + mh; idx['manifests'][0]['size'] = len(mb)
        json.dump(idx, open(d + '/index.json', 'w'))
        """
        #expect(runProgram("/usr/bin/env", ["python3", "-c", script]).status == 0)
        let r = run(["image", "load", "--root", "\(t.path)/z", "--oci", plain])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("3 of 3 layers new"))
    }
}
