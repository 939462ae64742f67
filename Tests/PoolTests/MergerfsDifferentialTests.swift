import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Strata's pool against Debian's mergerfs (2.33), in the style of the
/// union's comparison with the kernel: identical sets of tmpfs branches of
/// different sizes (20, 60 and 40 MiB, so that space-based policies decide),
/// the same operations through each mount under one policy, every result
/// compared, then each branch's tree.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct MergerfsDifferentialTests {
    /// Three tmpfs branches and a mountpoint; unmounted at the end.
    final class BranchSet {
        let dir: String
        var branches: [String] { ["\(dir)/b1", "\(dir)/b2", "\(dir)/b3"] }
        var mountpoint: String { "\(dir)/pool" }
        init(_ t: TempDir, _ name: String) throws {
            dir = t.sub(name)
            for (b, size) in zip(branches, ["20m", "60m", "40m"]) {
                mkdir(b, 0o755)
                try #require(runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", b]).status == 0)
            }
            mkdir(mountpoint, 0o755)
            // Some paths on some branches only: path preservation decides.
            for (b, paths) in [(branches[0], ["only1", "both/x"]), (branches[2], ["only3", "both/y"])] {
                for p in paths { try FileManager.default.createDirectory(atPath: "\(b)/\(p)", withIntermediateDirectories: true) }
            }
            _ = FileOps(branches[0]).write("only1/seed", "seed on 1")
            _ = FileOps(branches[2]).write("both/y/seed", "seed on 3")
        }
        func unmountAll() {
            umount2(mountpoint, Int32(MNT_DETACH))
            for b in branches { umount2(b, Int32(MNT_DETACH)) }
        }
    }

    /// The operations, the same for both mounts (a seeded generator).
    static func run(_ root: String, seed: UInt64) -> [String] {
        let f = FileOps(root)
        var rng = SplitMix(seed)
        var out: [String] = []
        let dirs = ["", "only1", "only3", "both", "both/x", "both/y", "new", "new/deep"]
        var files: [String] = ["only1/seed", "both/y/seed"]
        for step in 0..<120 {
            let d = dirs[Int(rng.next() % UInt64(dirs.count))]
            let name = (d.isEmpty ? "" : d + "/") + "f\(step)"
            switch rng.next() % 10 {
            case 0, 1, 2:
                // A file of up to 6 MiB: the small branch fills up.
                let size = Int(rng.next() % (6 << 20))
                out.append("create \(name): " + f.write(name, String(repeating: "z", count: size)))
                files.append(name)
            case 3:
                out.append("mkdir \(d)/d\(step): " + f.mkdir((d.isEmpty ? "" : d + "/") + "d\(step)"))
            case 4:
                guard let v = files.randomElement(using: &rng) else { continue }
                out.append("unlink \(v): " + f.unlink(v))
                files.removeAll { $0 == v }
            case 5:
                guard let v = files.randomElement(using: &rng) else { continue }
                let to = dirs[Int(rng.next() % UInt64(dirs.count))]
                let target = (to.isEmpty ? "" : to + "/") + "r\(step)"
                let r = f.rename(v, target)
                out.append("rename \(v) \(target): " + r)
                if r == "ok" { files.removeAll { $0 == v }; files.append(target) }
            case 6:
                guard let v = files.randomElement(using: &rng) else { continue }
                out.append("chmod \(v): " + f.chmod(v, 0o600))
            case 7:
                guard let v = files.randomElement(using: &rng) else { continue }
                out.append("link \(v): " + f.link(v, v + ".l"))
            case 8:
                guard let v = files.randomElement(using: &rng) else { continue }
                out.append("setxattr \(v): " + f.setxattr(v, "user.k", "v\(step)") + " " + f.getxattr(v, "user.k"))
            default:
                out.append("symlink \(name): " + f.symlink("target\(step)", name + ".s"))
            }
        }
        out.append("ls: " + f.ls("") + " | " + f.ls("both") + " | " + f.ls("new"))
        return out
    }

    /// Every policy whose choice does not depend on the clock: the random
    /// ones (rand, eprand, pfrd) are checked draw by draw in `PolicyTests`,
    /// and so is `newest`, which compares whole seconds of mtimes (run on
    /// two mounts one after the other, the same sequence crosses second
    /// boundaries at other steps, and a tie goes to the later branch).
    @Test(arguments: ["ff", "epff", "mfs", "epmfs", "lfs", "eplfs", "lus", "eplus", "all", "epall"])
    func sameResultsAndBranchesAsMergerfs(policy: String) throws {
        guard let mergerfs = Spawn.which("mergerfs") else { Issue.record("mergerfs missing: apt-get install mergerfs"); return }
        let t = TempDir()
        let theirs = try BranchSet(t, "mergerfs"), ours = try BranchSet(t, "strata")
        defer { theirs.unmountAll(); ours.unmountAll() }
        let opts = "category.create=\(policy),minfreespace=1M,cache.files=off,inodecalc=path-hash"
        let m = runProgram(mergerfs, ["-o", opts, theirs.branches.joined(separator: ":"), theirs.mountpoint])
        try #require(m.status == 0, "mergerfs: \(m.stderr)")
        let s = runProgram(MountEnvironment.binary, ["pool", "-o", opts, ours.branches.joined(separator: ":"), ours.mountpoint])
        try #require(s.status == 0, "strata pool: \(s.stderr)")
        let a = Self.run(theirs.mountpoint, seed: 42), b = Self.run(ours.mountpoint, seed: 42)
        for (x, y) in zip(a, b) where x != y {
            Issue.record("\(policy): mergerfs '\(x)', strata '\(y)'")
            break
        }
        #expect(a.count == b.count)
        for i in 0..<3 {
            let d = TreeSnapshot.diff(TreeSnapshot.take(theirs.branches[i], times: false), TreeSnapshot.take(ours.branches[i], times: false),
                                      labels: ("mergerfs", "strata"))
            #expect(d.isEmpty, "\(policy): branch \(i + 1): \(d.prefix(5))")
        }
    }
}

extension MergerfsDifferentialTests {
    /// mergerfs's fstab line works with the program's name changed:
    /// mount.fuse3 runs `strata-pool BRANCHES MOUNTPOINT -o OPTIONS`; bad
    /// options get one line and nothing is mounted.
    @Test func mergerfsCommandLineAndFstabForm() throws {
        let t = TempDir()
        let a = t.sub("a"), b = t.sub("b"), m = t.sub("m")
        let program = "\(t.path)/strata-pool"
        #expect(symlink(MountEnvironment.binary, program) == 0)
        let r = runProgram(program, ["\(a):\(b)=NC", m, "-o", "defaults,allow_other,use_ino,category.create=ff,minfreespace=1M,fsname=mypool"])
        try #require(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        let mounts = mountTable()
        #expect(mounts.contains("mypool \(m) fuse.strata-pool"), "\(mounts.split(separator: "\n").filter { $0.contains(m) })")
        #expect(FileOps(m).write("new", "data") == "ok")
        #expect(FileOps(a).read("new") == "data", "ff creates on the first branch; b is NC")
        umount2(m, 0)
        for (opts, says) in [("bogus=1", "bogus"), ("symlinkify=true", "symlinkify"), ("category.create=mspmfs", "mspmfs"),
                             ("minfreespace=lots", "minfreespace")] {
            let bad = runProgram(MountEnvironment.binary, ["pool", "-o", opts, "\(a):\(b)", m])
            #expect(bad.status != 0 && bad.stderr.contains(says) && bad.stderr.split(separator: "\n").count == 1, "\(opts): \(bad.stderr)")
            #expect(!Sys.isMountRoot(m))
        }
        // A branch that cannot be opened is named.
        let missing = "\(t.path)/not-there"
        let gone = runProgram(MountEnvironment.binary, ["pool", "-o", "minfreespace=1M", "\(a):\(missing)", m])
        #expect(gone.status != 0 && gone.stderr.contains(missing) && gone.stderr.split(separator: "\n").count == 1, "\(gone.stderr)")
        #expect(!Sys.isMountRoot(m))
    }
}

extension MergerfsDifferentialTests {
    /// The `.mergerfs` control file: its xattrs read the options, and
    /// change them and the branches while mounted.
    @Test func controlFileChangesPoliciesAndBranchesWhileMounted() throws {
        let t = TempDir()
        let a = t.sub("a"), b = t.sub("b"), c = t.sub("c"), m = t.sub("m")
        let r = runProgram(MountEnvironment.binary, ["pool", "-o", "category.create=ff,minfreespace=1M", "\(a):\(b)", m])
        try #require(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        let f = FileOps(m)
        #expect(f.getxattr(".mergerfs", "user.mergerfs.branches") == "\(a)=RW:\(b)=RW")
        #expect(f.getxattr(".mergerfs", "user.mergerfs.category.create") == "ff")
        #expect(f.getxattr(".mergerfs", "user.mergerfs.func.getattr") == "ff")
        #expect(f.stat(".mergerfs") != nil && !f.ls("").contains(".mergerfs"), "stat'able, not listed")
        #expect(f.write("one", "1") == "ok" && FileOps(a).read("one") == "1")
        // Drop the first branch, add a third: new files go to b, then c.
        #expect(f.setxattr(".mergerfs", "user.mergerfs.branches", "-<") == "ok")
        #expect(f.write("two", "2") == "ok" && FileOps(b).read("two") == "2")
        #expect(f.setxattr(".mergerfs", "user.mergerfs.branches", "+<\(c)") == "ok")
        #expect(f.getxattr(".mergerfs", "user.mergerfs.branches") == "\(c)=RW:\(b)=RW")
        #expect(f.write("three", "3") == "ok" && FileOps(c).read("three") == "3")
        // A policy changed at run time decides the next create.
        #expect(f.setxattr(".mergerfs", "user.mergerfs.func.create", "lfs") == "ok")
        #expect(f.getxattr(".mergerfs", "user.mergerfs.func.create") == "lfs")
        // mergerfs's manual: EINVAL on an informational key (2.33 itself
        // answers EROFS; the documentation is followed).
        #expect(f.setxattr(".mergerfs", "user.mergerfs.version", "x") == "EINVAL")
        #expect(f.setxattr(".mergerfs", "user.mergerfs.category.create", "nonsense") == "EINVAL")
        #expect(f.getxattr("one", "user.mergerfs.basepath") == "ENOENT" || f.getxattr("two", "user.mergerfs.basepath") == b)
    }
}

extension MergerfsDifferentialTests {
    /// moveonenospc: a write that fills the small branch moves the file to
    /// the branch with room and goes on; the writer sees no error. Both
    /// mounts end with the same branches.
    @Test func moveOnENOSPCMovesAFullFileAsMergerfs() throws {
        guard let mergerfs = Spawn.which("mergerfs") else { Issue.record("mergerfs missing: apt-get install mergerfs"); return }
        let t = TempDir()
        var results: [[String]] = []
        var trees: [[[String: EntryState]]] = []
        for (name, program) in [("mergerfs", mergerfs), ("strata", MountEnvironment.binary)] {
            let dir = t.sub(name)
            let small = "\(dir)/small", big = "\(dir)/big", m = "\(dir)/m"
            for (b, size) in [(small, "8m"), (big, "40m")] {
                mkdir(b, 0o755)
                try #require(runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", b]).status == 0)
            }
            mkdir(m, 0o755)
            defer { for p in [m, small, big] { umount2(p, Int32(MNT_DETACH)) } }
            mkdir("\(small)/dir", 0o750)
            let opts = "category.create=ff,minfreespace=1M,moveonenospc=true,cache.files=off"
            let args = program == mergerfs ? ["-o", opts, "\(small):\(big)", m] : ["pool", "-o", opts, "\(small):\(big)", m]
            let r = runProgram(program, args)
            try #require(r.status == 0, "\(name): \(r.stderr)")
            let f = FileOps(m)
            var out: [String] = []
            out.append(f.write("dir/grows", String(repeating: "g", count: 20 << 20)))
            out.append(f.read("dir/grows").count == 20 << 20 ? "read back" : "short")
            out.append(f.write("dir/small", "fits"))
            results.append(out)
            trees.append([TreeSnapshot.take(small, times: false), TreeSnapshot.take(big, times: false)])
            umount2(m, 0)
        }
        #expect(results[0] == results[1], "mergerfs \(results[0]), strata \(results[1])")
        #expect(results[1].first == "ok", "the writer saw no ENOSPC: \(results[1])")
        for i in 0..<2 {
            #expect(TreeSnapshot.diff(trees[0][i], trees[1][i], labels: ("mergerfs", "strata")).isEmpty,
                    "branch \(i): \(TreeSnapshot.diff(trees[0][i], trees[1][i], labels: ("mergerfs", "strata")).prefix(4))")
        }
    }
}

extension MergerfsDifferentialTests {
    /// Another user, through a pool mounted with allow_other: refused what
    /// the branch files' own modes refuse, and the owner of what it makes.
    @Test func otherUsersGetTheBranchesPermissions() throws {
        guard Spawn.which("setpriv") != nil else { Issue.record("util-linux (setpriv) missing"); return }
        let t = TempDir()
        chmod(t.path, 0o755)
        let a = t.sub("a"), m = t.sub("m")
        chmod(a, 0o755)
        _ = FileOps(a).write("roots", "root's")
        mkdir("\(a)/shared", 0o755)
        chmod("\(a)/shared", 0o1777)   // (mkdir applies the umask)
        let r = runProgram(MountEnvironment.binary, ["pool", "-o", "allow_other,minfreespace=1M", a, m])
        try #require(r.status == 0, "\(r.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        let rm = runProgram(nobody[0], Array(nobody.dropFirst()) + ["/bin/rm", "-f", "\(m)/roots"])
        #expect(rm.status != 0 && rm.stderr.contains("Permission denied"), "\(rm.stderr)")
        #expect(FileOps(a).read("roots") == "root's")
        let made = runProgram(nobody[0], Array(nobody.dropFirst()) + ["/bin/sh", "-c", "echo mine > \(m)/shared/mine"])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(FileOps(a).stat("shared/mine")?.st_uid == 65534)
    }
}

/// A small seeded generator: the same operations on both mounts.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
