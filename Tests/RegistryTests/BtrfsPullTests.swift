import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `strata pull` into a store of the btrfs driver, from a registry on
/// 127.0.0.1: a Debian tree's layers become subvolume snapshots, a
/// container of it runs and exports the tree the overlay driver gives;
/// a lazy pull is refused by name (it needs the union).
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct BtrfsPullTests {
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) { runProgram(MountEnvironment.binary, args) }

    @Test func aDebianTreePulledIntoBtrfsRunsAndExportsAsOnOverlay() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let image = "\(reg.host)/debian/mini:1"
        _ = try DebianTree.push(reg, t, compression: "none", as: image)
        let fs = try LoopFilesystem(sizeMiB: 1024)
        var trees: [[String: EntryState]] = []
        for driver in ["btrfs", "overlay"] {
            let root = "\(fs.mountpoint)/\(driver)"
            let pull = strata(["--storage-driver", driver, "pull", "--root", root, image])
            #expect(pull.status == 0, "\(pull.stderr)")
            let run = strata(["run", "--root", root, "--rm", image, "/bin/dash", "-c", "echo ran; ls /usr/bin | wc -l"])
            #expect(run.status == 0 && run.stdout.hasPrefix("ran\n"), "\(driver): \(run.stderr)")
            #expect(strata(["create", "--root", root, image, "--name", "c"]).status == 0)
            let tar = "\(fs.mountpoint)/\(driver).tar"
            let export = strata(["export", "--root", root, "-o", tar, "c"])
            #expect(export.status == 0, "\(export.stderr)")
            let out = "\(fs.mountpoint)/\(driver)-tree"
            mkdir(out, 0o755)
            #expect(runProgram("/bin/tar", ["--numeric-owner", "-xpf", tar, "-C", out]).status == 0)
            var tree = TreeSnapshot.take(out, times: false)
            for k in tree.keys { tree[k]?.nlink = 0 }
            trees.append(tree)
            #expect(strata(["check", "--root", root, "--content"]).status == 0)
        }
        #expect(trees[0].count > 500, "a Debian tree: \(trees[0].count) entries")
        for k in Set(trees[0].keys).union(trees[1].keys).sorted() where trees[0][k] != trees[1][k] {
            Issue.record("\(k): btrfs \(trees[0][k].map { "\($0)" } ?? "absent"), overlay \(trees[1][k].map { "\($0)" } ?? "absent")")
        }
        // Subvolumes, one per layer.
        let layers = (try? Sys.directoryNames(AT_FDCWD, "\(fs.mountpoint)/btrfs/btrfs/subvolumes")) ?? []
        #expect(layers.count >= 2, "\(layers)")
    }

    @Test func aLazyPullIsRefusedByName() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let load = strata(["image", "load", "--root", "\(t.path)/src", "-i", "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"])
        #expect(load.status == 0, "\(load.stderr)")
        let push = strata(["push", "--root", "\(t.path)/src", "--compression", "estargz", "localhost/eco/busybox:l3", "\(reg.host)/eco/lazy:1"])
        #expect(push.status == 0, "\(push.stderr)")
        let fs = try LoopFilesystem()
        let root = "\(fs.mountpoint)/store"
        let r = strata(["--storage-driver", "btrfs", "pull", "--lazy", "--root", root, "\(reg.host)/eco/lazy:1"])
        let lines = r.stderr.split(separator: "\n").filter { !$0.contains("blob") && !$0.hasPrefix("strata: manifest") && !$0.hasPrefix("strata: config") }
        #expect(r.status != 0 && r.stderr.contains("not available with the btrfs storage driver") && lines.count == 1, "\(r.stderr)")
        #expect(strata(["image", "ls", "--root", root]).stdout.split(separator: "\n").count == 1, "nothing pulled")
        // Without --lazy the same image is pulled in full.
        let full = strata(["pull", "--root", root, "\(reg.host)/eco/lazy:1"])
        #expect(full.status == 0, "\(full.stderr)")
        #expect(strata(["check", "--root", root, "--content"]).status == 0)
    }
}
