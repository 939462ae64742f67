import Foundation
@testable import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The btrfs storage driver on a btrfs the test makes on a loop device:
/// the same steps on it and on the overlay driver give the same diff, the
/// same committed image and the same exported tree; a container in use is
/// not destroyed; what it cannot do is refused by name.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct BtrfsDriverTests {
    static var fixture: String { "\(MountEnvironment.fixtures)/busybox-l3.docker.tar" }

    func strata(_ args: [String], env: [String: String] = [:]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args, env: env)
    }

    @discardableResult
    func ok(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) -> String {
        let r = strata(args)
        #expect(r.status == 0, "strata \(args.joined(separator: " ")): \(r.stderr)", sourceLocation: sourceLocation)
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// What the test does in each container: every kind of change a layer records.
    static func change(_ root: String) {
        let f = FileOps(root)
        #expect(f.write("newfile", "hello") == "ok")
        #expect(f.write("etc/passwd", "extra:x:1000:1000::/:/bin/sh\n", flags: O_WRONLY | O_APPEND) == "ok")
        #expect(chmod("\(root)/etc/group", 0o600) == 0)
        #expect(unlink("\(root)/bin/ls") == 0, "one hard link of busybox goes; its other names are not changes")
        #expect(symlink("/newfile", "\(root)/usr/link") == 0)
        #expect(link("\(root)/newfile", "\(root)/newlink") == 0)
        // A directory removed and made again: what it held is gone.
        #expect(mkdir("\(root)/tmp/made", 0o750) == 0 && f.write("tmp/made/inside", "x") == "ok")
        #expect(removeTree(path: "\(root)/var"))
        #expect(mkdir("\(root)/var", 0o755) == 0 && f.write("var/fresh", "fresh") == "ok")
        #expect(runProgram("/usr/bin/setfattr", ["-h", "-n", "user.note", "-v", "v", "\(root)/etc/motd"]).status == 0)
    }

    /// A tree as a tar lists it, without times (the two runs differ in them).
    static func tree(of tar: String, in dir: String) -> [String: EntryState] {
        let out = "\(dir)/x-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(out, 0o755)
        let r = runProgram("/bin/tar", ["--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-xpf", tar, "-C", out])
        #expect(r.status == 0, "tar -x \(tar): \(r.stderr)")
        var t = TreeSnapshot.take(out, times: false)
        for k in t.keys { t[k]?.nlink = 0 }
        return t
    }

    @Test func theSameStepsGiveWhatTheOverlayDriverGives() throws {
        let fs = try LoopFilesystem(sizeMiB: 512)
        var diffs: [[String]] = [], exported: [[String: EntryState]] = [], layers: [Int] = []
        for driver in ["btrfs", "overlay"] {
            let root = "\(fs.mountpoint)/\(driver)"
            ok(["--storage-driver", driver, "image", "load", "--root", root, "-i", Self.fixture])
            ok(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"])
            let merged = ok(["mount", "--root", root, "c"])
            #expect(Sys.isMountRoot(merged))
            Self.change(merged)
            diffs.append(ok(["diff", "--root", root, "c"]).split(separator: "\n").map(String.init))
            ok(["commit", "--root", root, "c", "localhost/committed:1"])
            ok(["create", "--root", root, "localhost/committed:1", "--name", "d"])
            ok(["export", "--root", root, "-o", "\(fs.mountpoint)/\(driver).tar", "d"])
            exported.append(Self.tree(of: "\(fs.mountpoint)/\(driver).tar", in: fs.mountpoint))
            let inspect = ok(["image", "inspect", "--root", root, "localhost/committed:1"])
            layers.append(inspect.components(separatedBy: "sha256:").count)
            ok(["rm", "--root", root, "c", "d"])
            ok(["check", "--root", root, "--content"])
        }
        #expect(diffs[0] == diffs[1], "btrfs diff:\n\(diffs[0].joined(separator: "\n"))\noverlay diff:\n\(diffs[1].joined(separator: "\n"))")
        #expect(diffs[0].contains("D /bin/ls") && diffs[0].contains("A /newfile") && !diffs[0].contains("C /bin/cat"), "\(diffs[0])")
        #expect(exported[0].count > 100)
        for k in Set(exported[0].keys).union(exported[1].keys).sorted() where exported[0][k] != exported[1][k] {
            Issue.record("exported \(k): btrfs \(exported[0][k].map { "\($0)" } ?? "absent"), overlay \(exported[1][k].map { "\($0)" } ?? "absent")")
        }
        #expect(exported[0]["var/fresh"] != nil && exported[0]["bin/ls"] == nil && exported[0]["newlink"] != nil)
        #expect(layers[0] == layers[1])
    }

    /// btrfs's record of what it wrote since the snapshot (generations)
    /// finds what walking both trees finds, change after change: a deep
    /// write, a rename, a removed tree, a chmod, a link, nothing at all.
    @Test func generationsFindWhatTheWalkFinds() throws {
        let fs = try LoopFilesystem()
        let root = "\(fs.mountpoint)/store"
        ok(["--storage-driver", "btrfs", "image", "load", "--root", root, "-i", Self.fixture])
        ok(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"])
        let store = try Store(root: root)
        let c = try store.container("c")
        let merged = ok(["mount", "--root", root, "c"])
        func same(_ step: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let walked = try store.diff(c, btrfs: .walk).map(\.line)
            let found = try store.diff(c, btrfs: .generations).map(\.line)
            #expect(walked == found, "after \(step): walk \(walked), generations \(found)", sourceLocation: sourceLocation)
        }
        try same("nothing")
        #expect(try store.diff(c, btrfs: .generations).isEmpty)
        #expect(FileOps(merged).write("usr/first", "x") == "ok")
        try same("one new file")
        // What btrfs wrote names the change and its neighbours in the tree
        // blocks written (most of so small a tree), not the whole tree.
        let sv = try Sys.open(store.containerLayer(c).subvolume, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let written = try #require(try BtrfsTreeDiff.written(sv.raw))
        let all = TreeSnapshot.take(store.containerLayer(c).subvolume, times: false).count
        #expect(written.dirty.contains("usr/first") && written.dirty.count < all, "\(written.dirty.count) of \(all)")
        Self.change(merged)
        try same("every kind of change")
        let f = FileOps(merged)
        #expect(f.write("usr/deep-new", "x") == "ok")
        try same("a new file")
        #expect(f.write("etc/passwd", "y", flags: O_WRONLY | O_APPEND) == "ok")
        try same("an append")
        #expect(rename("\(merged)/etc", "\(merged)/etc-moved") == 0)
        try same("a renamed directory")
        #expect(chmod("\(merged)/bin/busybox", 0o700) == 0)
        try same("a chmod")
        #expect(unlink("\(merged)/bin/sh") == 0 && link("\(merged)/bin/busybox", "\(merged)/root/bb") == 0)
        try same("a link moved")
        #expect(removeTree(path: "\(merged)/usr"))
        try same("a removed tree")
        ok(["rm", "--root", root, "c"])
    }

    @Test func layersAreSubvolumesAndContainersWritableSnapshots() throws {
        let fs = try LoopFilesystem()
        let root = "\(fs.mountpoint)/store"
        ok(["--storage-driver", "btrfs", "image", "load", "--root", root, "-i", Self.fixture])
        #expect((try? String(contentsOfFile: "\(root)/driver", encoding: .utf8)) == "btrfs\n")
        let store = try Store(root: root)
        #expect(store.layout == .btrfs)
        let img = try store.image("localhost/eco/busybox:l3")
        for l in img.layerIDs {
            let sv = try Sys.open(store.storedLayer(l).subvolume, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            #expect(Btrfs.isSubvolume(sv.raw))
            // Sealed: EROFS.
            #expect(FileOps(store.storedLayer(l).subvolume).write("new", "x") == "errno30")
        }
        // Each layer holds the ones below it: the top one is the whole image.
        let top = store.storedLayer(img.layerIDs[img.layerIDs.count - 1]).subvolume
        #expect(access("\(top)/bin/busybox", F_OK) == 0)
        let id = ok(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"])
        let csv = try Sys.open("\(root)/btrfs/subvolumes/\(id)", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(Btrfs.isSubvolume(csv.raw))
        #expect((try? String(contentsOfFile: "\(root)/btrfs/subvolumes/\(id)/etc/hosts", encoding: .utf8)) == "")
        // inspect shows the driver as docker does.
        let inspect = ok(["inspect", "--root", root, "c"])
        let obj = (try JSONSerialization.jsonObject(with: Data(inspect.utf8)) as? [[String: Any]])?.first
        let gd = obj?["GraphDriver"] as? [String: Any]
        #expect(gd?["Name"] as? String == "btrfs" && gd?["Data"] is NSNull, "\(inspect)")
        // A container in use is not destroyed under the process.
        let merged = ok(["mount", "--root", root, "c"])
        let held = open(merged, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let busy = strata(["rm", "--root", root, "c"])
        #expect(busy.status != 0 && busy.stderr.contains("in use") && busy.stderr.split(separator: "\n").count == 1, "\(busy.stderr)")
        #expect(access("\(root)/btrfs/subvolumes/\(id)/etc", F_OK) == 0)
        close(held)
        ok(["rm", "--root", root, "c"])
        #expect(access("\(root)/btrfs/subvolumes/\(id)", F_OK) != 0 && access("\(root)/btrfs/subvolumes/\(id)-init", F_OK) != 0)
        // run: a container whose root is the snapshot, removed after.
        let run = strata(["run", "--root", root, "--rm", "localhost/eco/busybox:l3", "cat", "/etc/passwd"])
        #expect(run.status == 0 && run.stdout.contains("root:"), "\(run.stderr)")
        // df counts what each layer adds; image rm and prune destroy subvolumes.
        let df = ok(["df", "--root", root])
        #expect(df.contains("Layers       3"), "\(df)")
        ok(["image", "rm", "--root", root, "localhost/eco/busybox:l3"])
        #expect(((try? Sys.directoryNames(AT_FDCWD, "\(root)/btrfs/subvolumes")) ?? ["x"]).isEmpty)
        #expect(((try? Sys.directoryNames(AT_FDCWD, "\(root)/btrfs/layers")) ?? ["x"]).isEmpty)
        ok(["check", "--root", root])
        // prune: an image no container uses goes with -a, its subvolumes too.
        ok(["image", "load", "--root", root, "-i", Self.fixture])
        let pruned = ok(["image", "prune", "-a", "--root", root])
        #expect(pruned.contains("removed 1 image, 3 layers"), "\(pruned)")
        #expect(((try? Sys.directoryNames(AT_FDCWD, "\(root)/btrfs/subvolumes")) ?? ["x"]).isEmpty)
        ok(["check", "--root", root])
    }

    /// A layer whose subvolume is lost is made again from its kept tar;
    /// leftovers of an interrupted apply (a `.partial` subvolume, a layer
    /// no row names) are found and removed.
    @Test func checkMendsALostSubvolumeAndRemovesLeftovers() throws {
        let fs = try LoopFilesystem()
        let root = "\(fs.mountpoint)/store"
        ok(["--storage-driver", "btrfs", "image", "load", "--root", root, "-i", Self.fixture])
        let store = try Store(root: root)
        let top = store.storedLayer(try store.image("localhost/eco/busybox:l3").layerIDs[2])
        let before = TreeSnapshot.take(top.subvolume, times: false)
        let dir = try Sys.open("\(root)/btrfs/subvolumes", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try Btrfs.destroySubvolume(in: dir.raw, Digest.hex(top.id))
        try Btrfs.createSubvolume(in: dir.raw, "\(Digest.hex(top.id)).partial")
        let found = strata(["check", "--root", root])
        #expect(found.status != 0 && found.stdout.contains("mendable:") && found.stdout.contains("leftover:"), "\(found.stdout)")
        let repaired = strata(["check", "--root", root, "--repair"])
        #expect(repaired.status == 0, "\(repaired.stdout)")
        #expect(TreeSnapshot.take(top.subvolume, times: false) == before, "the layer's tree is made again as it was")
        let sv = try Sys.open(top.subvolume, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(Btrfs.isSubvolume(sv.raw) && FileOps(top.subvolume).write("x", "y") == "errno30", "a sealed subvolume")
        ok(["check", "--root", root, "--content"])
    }

    /// A store of a user who is not root, on a btrfs mounted without
    /// user_subvol_rm_allowed: the kernel refuses them the ioctl that
    /// destroys a subvolume, and rm, image rm and check --repair must still
    /// remove their own subvolumes (they once reported them deleted and
    /// left every one behind).
    @Test func aUserWhoIsNotRootRemovesTheirOwnSubvolumes() throws {
        guard let setpriv = Spawn.which("setpriv") else { Issue.record("setpriv (util-linux) missing"); return }
        let fs = try LoopFilesystem()
        let home = fs.sub("home")
        #expect(chown(home, 65534, 65534) == 0)
        let archive = "\(home)/busybox.tar"
        #expect((try? FileManager.default.copyItem(atPath: Self.fixture, toPath: archive)) != nil)
        chmod(archive, 0o644)
        let root = "\(home)/store"
        func user(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
            runProgram(setpriv, ["--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/env", "HOME=\(home)",
                                 MountEnvironment.binary] + args)
        }
        func ok(_ args: [String]) {
            let r = user(args)
            #expect(r.status == 0, "strata \(args.joined(separator: " ")) as nobody: \(r.stderr)")
        }
        ok(["--storage-driver", "btrfs", "image", "load", "--root", root, "-i", archive])
        ok(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"])
        ok(["commit", "--root", root, "c", "localhost/committed:1"])
        ok(["create", "--root", root, "localhost/committed:1", "--name", "d"])
        let m = user(["mount", "--root", root, "c"])
        #expect(m.status != 0 && m.stderr.contains("needs root") && m.stderr.split(separator: "\n").count == 1, "\(m.stderr)")
        func subvolumes() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/btrfs/subvolumes")) ?? []).sorted() }
        #expect(subvolumes().count == 8, "4 layers, 2 containers with their -init: \(subvolumes())")
        ok(["rm", "--root", root, "c", "d"])
        ok(["image", "rm", "--root", root, "localhost/committed:1", "localhost/eco/busybox:l3"])
        #expect(subvolumes().isEmpty, "left behind: \(subvolumes())")
        ok(["check", "--root", root])
        // A leftover (a layer made as root would be another user's: this is
        // one of theirs, as a killed load leaves it) goes at --repair.
        ok(["image", "load", "--root", root, "-i", archive])
        let store = try Store(root: root)
        let bottom = Digest.hex(try store.image("localhost/eco/busybox:l3").layerIDs[0])
        #expect(runProgram("/bin/mv", ["\(root)/btrfs/subvolumes/\(bottom)", "\(root)/btrfs/subvolumes/\(bottom).partial"]).status == 0)
        let repaired = user(["check", "--root", root, "--repair"])
        #expect(repaired.status == 0 && repaired.stdout.contains("repaired: removed") && !repaired.stdout.contains("could not"), "\(repaired.stdout)")
        #expect(!subvolumes().contains("\(bottom).partial"), "\(subvolumes())")
    }

    @Test func whatTheDriverCannotDoIsRefusedByName() throws {
        let fs = try LoopFilesystem()
        let root = "\(fs.mountpoint)/store"
        ok(["--storage-driver", "btrfs", "image", "load", "--root", root, "-i", Self.fixture])
        // Another driver for this store.
        for d in ["overlay", "fuse"] {
            let r = strata(["--storage-driver", d, "image", "ls", "--root", root])
            #expect(r.status != 0 && r.stderr.contains("created with the btrfs storage driver") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
            let e = strata(["image", "ls", "--root", root], env: ["STRATA_STORAGE_DRIVER": d])
            #expect(e.status != 0 && e.stderr.contains("btrfs storage driver"), "\(e.stderr)")
        }
        ok(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"])
        let m = strata(["mount", "--root", root, "--driver", "fuse", "c"])
        #expect(m.status != 0 && m.stderr.contains("btrfs storage driver") && m.stderr.split(separator: "\n").count == 1, "\(m.stderr)")
        ok(["rm", "--root", root, "c"])
        // An overlay store refuses btrfs.
        let other = "\(fs.mountpoint)/overlay-store"
        ok(["image", "load", "--root", other, "-i", Self.fixture])
        let b = strata(["--storage-driver", "btrfs", "image", "ls", "--root", other])
        #expect(b.status != 0 && b.stderr.contains("created with the overlay storage driver"), "\(b.stderr)")
        // A root that is not on btrfs: one line, nothing left.
        let t = TempDir()
        let r = strata(["--storage-driver", "btrfs", "image", "load", "--root", "\(t.path)/s", "-i", Self.fixture])
        #expect(r.status != 0 && r.stderr.contains("not on a btrfs filesystem") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(access("\(t.path)/s", F_OK) != 0, "a refused store leaves no directory")
        // A driver nobody knows.
        let bad = strata(["--storage-driver", "bogus", "image", "ls", "--root", root])
        #expect(bad.status != 0 && bad.stderr.contains("overlay") && bad.stderr.contains("btrfs"), "\(bad.stderr)")
        // Docker's names get a hint, from the option or the variable, and
        // a misspelt variable makes no store of the default driver.
        let z = strata(["image", "ls", "--root", "\(t.path)/z"], env: ["STRATA_STORAGE_DRIVER": "zfs"])
        #expect(z.status != 0 && z.stderr.contains("no ZFS driver") && z.stderr.split(separator: "\n").count == 1, "\(z.stderr)")
        #expect(access("\(t.path)/z", F_OK) != 0, "a refused variable leaves no store")
        let o2 = strata(["--storage-driver", "overlay2", "image", "ls", "--root", "\(t.path)/o"])
        #expect(o2.status != 0 && o2.stderr.contains("use overlay"), "\(o2.stderr)")
    }

    @Test func aFullBtrfsGivesOneLineAndLeavesNothingHalfMade() throws {
        let fs = try LoopFilesystem(sizeMiB: 128)
        let root = "\(fs.mountpoint)/store"
        ok(["--storage-driver", "btrfs", "image", "ls", "--root", root])
        // Fill the disk, leaving less than the image needs.
        let filler = "\(fs.mountpoint)/filler"
        let fd = open(filler, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        var chunk = [UInt8](repeating: 0xA5, count: 1 << 20)
        while chunk.withUnsafeMutableBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        fsync(fd)
        close(fd)
        sync()
        let load = strata(["image", "load", "--root", root, "-i", Self.fixture])
        #expect(load.status != 0)
        let lines = load.stderr.split(separator: "\n").filter { !$0.contains("unpacked") && !$0.contains("already present") }
        #expect(lines.count == 1 && lines[0].contains("No space left on device"), "\(load.stderr)")
        let check = strata(["check", "--root", root])
        let serious = check.stdout.split(separator: "\n").filter { !$0.hasPrefix("leftover:") && !$0.hasPrefix("store ") }
        #expect(serious.isEmpty, "\(check.stdout)")
        // Space back: the load works and the store is whole.
        unlink(filler)
        sync()
        ok(["image", "load", "--root", root, "-i", Self.fixture])
        ok(["check", "--root", root, "--content"])
        // A commit that does not fit: one line, nothing half-made, and it
        // works once there is room.
        ok(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"])
        let merged = ok(["mount", "--root", root, "c"])
        try #require(merged.hasSuffix("/merged") && Sys.isMountRoot(merged), "\(merged)")
        #expect(FileManager.default.createFile(atPath: "\(merged)/blob", contents: Data(repeating: 3, count: 8 << 20)))
        let fill = open(filler, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        while chunk.withUnsafeMutableBytes({ write(fill, $0.baseAddress, $0.count) }) > 0 {}
        fsync(fill)
        close(fill)
        sync()
        let commit = strata(["commit", "--root", root, "c", "localhost/too-big:1"])
        let commitLines = commit.stderr.split(separator: "\n")
        #expect(commit.status != 0 && commitLines.count == 1 && commit.stderr.contains("No space left on device"), "\(commit.stderr)")
        let after = strata(["check", "--root", root])
        #expect(after.stdout.split(separator: "\n").filter { !$0.hasPrefix("leftover:") && !$0.hasPrefix("store ") }.isEmpty, "\(after.stdout)")
        unlink(filler)
        sync()
        ok(["commit", "--root", root, "c", "localhost/too-big:1"])
        ok(["check", "--root", root, "--content"])
        chunk = []
    }
}
