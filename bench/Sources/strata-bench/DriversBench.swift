import ArgumentParser
import Foundation
import Store
import CStrata
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The btrfs storage driver against the overlay driver on the same btrfs
/// and on ext4, each on a loop device of its own made here: loading an
/// image, 100 containers each running a command, committing a container
/// that rewrote a tenth of the image, the space each step took, and how a
/// btrfs container's changes are found (walking both trees, or btrfs's
/// generation numbers).
struct DriversBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drivers",
        abstract: "btrfs driver on btrfs against the overlay driver on btrfs and on ext4: load, N containers run, a commit of 10%, space."
    )
    @Option(help: "Containers created and run in each round.") var containers = 100
    @Option(help: "Rounds; medians are reported, the order of drivers rotated each round.") var rounds = 3
    @Option(help: "Where the loop devices' image files go.") var dir = "/var/tmp"
    @Option(help: "Size of each loop filesystem in GiB (sparse files).") var sizeGib = 6
    @Option(help: "The strata binary (default: next to this program).") var strata: String?
    @Option(help: "A root filesystem to make the image from, split into 3 layers (default /var/tmp/minbase when it exists, made by 'debootstrap --variant=minbase bookworm DIR'; else synthetic files).")
    var rootfs: String?
    @Option(help: "Synthetic image size in MiB when there is no root filesystem.") var sizeMib = 200

    struct Setup {
        let name: String, fs: String, driver: String
    }

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root (loop devices, mounts)") }
        guard Spawn.which("runc") != nil else { throw ValidationError("runc is needed for strata run: apt-get install runc") }
        guard Spawn.which("mkfs.btrfs") != nil else { throw ValidationError("mkfs.btrfs is needed: apt-get install btrfs-progs") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        let tree = rootfs ?? (access("/var/tmp/minbase/usr", F_OK) == 0 ? "/var/tmp/minbase" : nil)
        let root = try makeTemp(dir)
        var loops: [LoopFS] = []
        defer {
            for l in loops { l.remove() }
            _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root])
        }
        progress("building a 3-layer image from \(tree ?? "\(sizeMib) MiB of synthetic files")")
        let archive = try buildImageArchive(root, mib: sizeMib, rootfs: tree)
        for fs in ["btrfs", "ext4"] { loops.append(try LoopFS(type: fs, in: root, gib: sizeGib)) }
        let mnt = Dictionary(uniqueKeysWithValues: loops.map { ($0.type, $0.mountpoint) })
        let setups = [Setup(name: "btrfs driver, btrfs", fs: "btrfs", driver: "btrfs"),
                      Setup(name: "overlay driver, btrfs", fs: "btrfs", driver: "overlay"),
                      Setup(name: "overlay driver, ext4", fs: "ext4", driver: "overlay")]
        let names = setups.map(\.name)
        var load = Workload(name: "image load", bytes: nil)
        var loadSynced = Workload(name: "image load, then its data written (syncfs)", bytes: nil)
        var runs = Workload(name: "\(containers) x strata run (create, mount, runc, /bin/true)", bytes: nil)
        var commit = Workload(name: "commit of a container that rewrote 10% of the image", bytes: nil)
        var diffDirtyWalk = Workload(name: "diff of a 10% rewrite just made, walking both trees", bytes: nil)
        var diffDirtyGen = Workload(name: "diff of a 10% rewrite just made, by generations (commits the filesystem first)", bytes: nil)
        let diffs = DiffTimes()
        var space: [String: [String: [Double]]] = [:]    // step -> setup -> MB
        var rewritten: [Double] = []
        var round = 0, btrfsRound = 0
        try rotatedRounds(rounds, names) { name in
            guard let s = setups.first(where: { $0.name == name }), let m = mnt[s.fs] else { return }
            round += 1
            let store = "\(m)/\(s.driver)-\(round)"
            let g = ["--storage-driver", s.driver]
            func used() -> Double {
                let fd = open(m, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if fd >= 0 { _ = strata_syncfs(fd); close(fd) }
                var v = statvfs()
                statvfs(m, &v)
                return Double(v.f_blocks - v.f_bfree) * Double(v.f_frsize) / 1e6
            }
            let u0 = used()
            let t0 = now()
            load.seconds[name, default: []].append(time { _ = quiet(bin, [bin] + g + ["image", "load", "--root", store, "-i", archive]) })
            let u1 = used()
            loadSynced.seconds[name, default: []].append(now() - t0)
            runs.seconds[name, default: []].append(time {
                for i in 0..<containers { _ = quiet(bin, [bin, "run", "--root", store, "--keep", "--name", "c\(i)", "localhost/bench:1", "/bin/true"]) }
            })
            let u2 = used()
            // A container that rewrites files making up a tenth of the image's bytes.
            _ = quiet(bin, [bin, "create", "--root", store, "localhost/bench:1", "--name", "big"])
            let merged = output(bin, [bin, "mount", "--root", store, "big"])
            rewritten.append(Double(rewriteTenth(merged)) / 1e6)
            commit.seconds[name, default: []].append(time { _ = quiet(bin, [bin, "commit", "--root", store, "big", "localhost/bench:2"]) })
            let u3 = used()
            if s.driver == "btrfs", let st = try? Store(root: store), let c = try? st.container("big") {
                btrfsRound += 1
                // Right after the writes, then with the data written back
                // (the order of the two methods turned each round).
                diffDirtyWalk.seconds[name, default: []].append(time { _ = try? st.diff(c, btrfs: .walk) })
                _ = quiet(bin, [bin, "create", "--root", store, "localhost/bench:1", "--name", "dirty"])
                let dirty = output(bin, [bin, "mount", "--root", store, "dirty"])
                _ = rewriteTenth(dirty)
                if let d = try? st.container("dirty") {
                    diffDirtyGen.seconds[name, default: []].append(time { _ = try? st.diff(d, btrfs: .generations) })
                }
                sync()
                let both: [(BtrfsDiffMethod, ReferenceWritableKeyPath<DiffTimes, Workload>)] = [(.walk, \.walk), (.generations, \.gen)]
                for (method, kp) in btrfsRound % 2 == 0 ? both : both.reversed() {
                    diffs[keyPath: kp].seconds[name, default: []].append(time { _ = try? st.diff(c, btrfs: method) })
                }
                diffs.auto.seconds[name, default: []].append(time { _ = try? st.diff(c) })
                _ = quiet(bin, [bin, "create", "--root", store, "localhost/bench:1", "--name", "one"])
                let one = output(bin, [bin, "mount", "--root", store, "one"])
                // Only inside the container's mounted root (see rewriteTenth).
                if one.hasSuffix("/merged") && Sys.isMountRoot(one) {
                    let fd = open("\(one)/etc/one-change", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
                    if fd >= 0 { close(fd) }
                }
                sync()
                if let c1 = try? st.container("one") {
                    let oneBoth: [(BtrfsDiffMethod, ReferenceWritableKeyPath<DiffTimes, Workload>)] = [(.walk, \.oneWalk), (.generations, \.oneGen)]
                    for (method, kp) in btrfsRound % 2 == 0 ? oneBoth : oneBoth.reversed() {
                        diffs[keyPath: kp].seconds[name, default: []].append(time { _ = try? st.diff(c1, btrfs: method) })
                    }
                    diffs.oneAuto.seconds[name, default: []].append(time { _ = try? st.diff(c1) })
                }
            }
            for (step, mb) in [("image", u1 - u0), ("\(containers) containers", u2 - u1), ("commit of 10%", u3 - u2)] {
                space[step, default: [:]][name, default: []].append(mb)
            }
            // The store goes; its filesystem is the driver's own, so the
            // next driver's round does not pay for this deletion.
            let ids = output(bin, [bin, "ls", "--root", store]).split(separator: "\n").dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) }
            _ = quiet(bin, [bin, "rm", "--root", store] + ids)
            _ = removeTree(path: store)
        }
        print("strata-bench drivers: \(rounds) rounds, medians; image \(tree.map { "from \($0)" } ?? "synthetic"), "
            + String(format: "%.0f MB rewritten for the commit; ", median(rewritten)) + "ratio = time / overlay driver on ext4, paired by round")
        print(report([load, loadSynced, runs, commit], impls: names, base: "overlay driver, ext4"))
        print("How a btrfs container's changes are found (btrfs driver only):")
        print(report([diffDirtyWalk, diffDirtyGen, diffs.walk, diffs.gen, diffs.auto, diffs.oneWalk, diffs.oneGen, diffs.oneAuto].map { w in
            var r = Workload(name: w.name, bytes: nil)
            r.seconds["btrfs driver, btrfs"] = w.seconds["btrfs driver, btrfs"]
            return r
        }, impls: ["btrfs driver, btrfs"], base: "btrfs driver, btrfs"))
        print("Space used on the filesystem by each step (statvfs, after syncfs), MB, medians:")
        print("| step | " + names.joined(separator: " | ") + " |")
        print("|---|" + String(repeating: "---|", count: names.count))
        for step in ["image", "\(containers) containers", "commit of 10%"] {
            print("| \(step) | " + names.map { String(format: "%.1f", median(space[step]?[$0] ?? [])) }.joined(separator: " | ") + " |")
        }
    }

    /// Rewrites (same size, new bytes) regular files in byte order of
    /// path until a tenth of the tree's file bytes is rewritten.
    func rewriteTenth(_ root: String) -> Int64 {
        // Only ever a container's mounted root: an empty or wrong path (a
        // failed mount) must not send the writes anywhere else.
        guard root.hasPrefix("/"), root.hasSuffix("/merged"), Sys.isMountRoot(root) else {
            progress("not rewriting \(root.isEmpty ? "(no path)" : root): not a mounted container root")
            return 0
        }
        var files: [(String, Int64)] = []
        func walk(_ rel: String) {
            let dir = rel.isEmpty ? root : "\(root)/\(rel)"
            guard let names = try? Sys.directoryNames(AT_FDCWD, dir) else { return }
            for n in names.sorted() {
                let r = rel.isEmpty ? n : "\(rel)/\(n)"
                var st = stat()
                guard lstat("\(root)/\(r)", &st) == 0 else { continue }
                if st.st_mode & S_IFMT == S_IFDIR { walk(r) } else if st.st_mode & S_IFMT == S_IFREG, st.st_size > 0 { files.append((r, Int64(st.st_size))) }
            }
        }
        walk("")
        let total = files.reduce(0) { $0 + $1.1 }
        var done: Int64 = 0
        var buf = [UInt8](repeating: 0x5A, count: 1 << 20)
        // Spread over the tree: every tenth file, then the next tenth, until
        // a tenth of the bytes is rewritten (not the first tenth of the tree).
        let order = (0..<10).flatMap { k in files.indices.filter { $0 % 10 == k } }
        for i in order where done < total / 10 {
            let f = files[i]
            let fd = open("\(root)/\(f.0)", O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            var left = f.1, off: Int64 = 0
            while left > 0 {
                let n = Int(min(left, Int64(buf.count)))
                let w = buf.withUnsafeMutableBytes { pwrite(fd, $0.baseAddress, n, off_t(off)) }
                if w <= 0 { break }
                left -= Int64(w)
                off += Int64(w)
            }
            close(fd)
            done += f.1
        }
        return done
    }

    func output(_ path: String, _ args: [String]) -> String {
        let t = "/tmp/strata-bench-out-\(getpid())"
        let fd = open(t, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null); unlink(t) }
        if let pid = try? Spawn.start(path, args, stdio: (null, fd, null)) { _ = Spawn.wait(pid) }
        close(fd)
        return ((try? String(contentsOfFile: t, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// The diff timings taken once the data is written back.
final class DiffTimes {
    var walk = Workload(name: "diff of the 10% rewrite once written back, walking both trees", bytes: nil)
    var gen = Workload(name: "diff of the 10% rewrite once written back, by generations", bytes: nil)
    var oneWalk = Workload(name: "diff of a one-file change once written back, walking both trees", bytes: nil)
    var oneGen = Workload(name: "diff of a one-file change once written back, by generations", bytes: nil)
    var auto = Workload(name: "diff of the 10% rewrite once written back, the store's choice", bytes: nil)
    var oneAuto = Workload(name: "diff of a one-file change once written back, the store's choice", bytes: nil)
}

/// A filesystem of `type` made on a loop device over a sparse file, with
/// direct I/O (its writes reach the file's disk, not the page cache of the
/// filesystem holding the file: writeback behaves as on a disk of its own);
/// removed (unmounted lazily, detached, deleted) at the end.
final class LoopFS {
    let type: String, mountpoint: String, image: String
    var device = ""

    init(type: String, in dir: String, gib: Int) throws {
        self.type = type
        image = "\(dir)/\(type).img"
        mountpoint = "\(dir)/\(type)"
        mkdir(mountpoint, 0o755)
        let fd = open(image, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0, ftruncate(fd, off_t(gib) << 30) == 0 else { throw ValidationError("cannot make \(image)") }
        close(fd)
        let mkfs = type == "btrfs" ? ["/usr/sbin/mkfs.btrfs", "-q", "-f", image] : ["/usr/sbin/mkfs.ext4", "-q", "-F", image]
        guard quiet(mkfs[0], mkfs) == 0 else { throw ValidationError("\(mkfs[0]) failed on \(image)") }
        let t = "\(dir)/losetup.out"
        let out = open(t, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if let pid = try? Spawn.start("/usr/sbin/losetup", ["losetup", "--direct-io=on", "-f", "--show", image], stdio: (-1, out, -1)) { _ = Spawn.wait(pid) }
        close(out)
        device = ((try? String(contentsOfFile: t, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        unlink(t)
        guard !device.isEmpty else { throw ValidationError("losetup failed for \(image)") }
        guard quiet("/bin/mount", ["mount", "-t", type, device, mountpoint]) == 0 else {
            remove()
            throw ValidationError("mount -t \(type) \(device) failed")
        }
    }

    func remove() {
        umount2(mountpoint, Int32(MNT_DETACH))
        if !device.isEmpty { _ = quiet("/usr/sbin/losetup", ["losetup", "-d", device]) }
        device = ""
        unlink(image)
    }
}
