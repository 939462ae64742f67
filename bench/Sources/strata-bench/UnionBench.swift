import ArgumentParser
import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Strata against kernel overlayfs and fuse-overlayfs on the same layers in
/// one run: a source-tree-sized tree split into 3 lower layers plus a 1 GiB
/// file; each workload's ratio to the kernel is taken round by round.
struct UnionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "union",
        abstract: "Strata's union mount against kernel overlayfs and fuse-overlayfs."
    )

    @OptionGroup var layers: LayerBenchOptions
    @Option(help: "Size of the big file in MiB.") var sizeMib = 1024
    @Option(help: "Comma-separated implementations: kernel, strata (/dev/fuse), strata-uring (FUSE over io_uring), fuse-overlayfs, passthrough_hp-uring (libfuse's example server on io_uring over a flattened copy: no union work; needs --passthrough-hp).")
    var impls = "kernel,strata,strata-uring,fuse-overlayfs"
    @Option(help: "A strata binary built from another commit, run as implementations 'baseline' and 'baseline-uring': before and after a change in one run, paired by round.")
    var baseline: String?
    @Option(help: "libfuse 3.18's example/passthrough_hp, built with io_uring (never committed).") var passthroughHp: String?
    @Flag(help: "Skip the 128-layer lookup workload.") var noLayers = false

    func run() throws {
        let (bin, root) = try layers.prepare()
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let (entries, rounds, dir) = (layers.entries, layers.rounds, layers.dir)
        let names = impls.split(separator: ",").map(String.init)
        if names.contains("passthrough_hp-uring") && passthroughHp == nil {
            throw ValidationError("passthrough_hp-uring needs --passthrough-hp PATH (libfuse 3.18's example, built with io_uring)")
        }
        // The io_uring rows need the kernel's opt-in switch; set for the
        // run, put back after.
        let uringSwitch = names.contains(where: { $0.hasSuffix("-uring") }) ? try UringSwitch.turnOn() : nil
        defer { uringSwitch?.restore() }
        var setup = UnionSetup(root: root, strata: bin)
        setup.baseline = baseline
        setup.passthroughHP = passthroughHp
        progress("building \(entries) entries in 3 layers and a \(sizeMib) MiB file under \(root)")
        let files = setup.buildLayers(entries: entries, bigMiB: sizeMib)
        if passthroughHp != nil { setup.flatten() }
        var results: [String: Workload] = [:]
        let order = ["stat every file (walk), warm", "stat every file (walk), cold (fresh mount)", "readdir of a 10,000-entry merged dir",
                     "readdir + stat of it", "read every file, warm", "create 10,000 small files",
                     "delete a lower tree (whiteouts)", "append 1 byte to a \(sizeMib) MiB lower file (copy-up)",
                     "sequential read \(sizeMib) MiB, warm", "sequential write \(sizeMib) MiB",
                     "random 4 KiB O_DIRECT reads (4,000)", "mount + unmount, 3 layers (as podman: syscall or mount program)",
                     "walk with lstat + security.capability, fresh mount (naive diff)",
                     "first listing + stat of the 10,000-entry merged dir, fresh mount"]
        for o in order { results[o] = Workload(name: o, bytes: nil) }
        func record(_ w: String, _ impl: String, _ t: Double) { results[w]?.seconds[impl, default: []].append(t) }
        try rotatedRounds(rounds, names) { impl in
            let m = try setup.mount(impl)
            defer { setup.unmount(m) }
            // Cold: the first walk of a fresh mount.
            record(order[1], impl, time { walk(m) })
            record(order[0], impl, median((0..<3).map { _ in time { walk(m) } }))
            _ = listDir("\(m)/wide")
            record(order[2], impl, median((0..<3).map { _ in time { _ = listDir("\(m)/wide") } }))
            record(order[3], impl, median((0..<3).map { _ in time { statDir("\(m)/wide") } }))
            readAll(m, files.small)
            record(order[4], impl, median((0..<3).map { _ in time { readAll(m, files.small) } }))
            _ = readFile("\(m)/big")
            record(order[8], impl, median((0..<3).map { _ in time { _ = readFile("\(m)/big") } }))
            record(order[10], impl, time { randomDirect("\(m)/big", count: 4000, mib: sizeMib) })
            record(order[5], impl, time { createMany("\(m)/created", 10_000) })
            record(order[6], impl, time { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "\(m)/tree"]) })
            record(order[7], impl, time { appendByte("\(m)/big") })
            sync()
            record(order[9], impl, time { writeFile("\(m)/written", mib: sizeMib); fsyncPath("\(m)/written") })
            if impl != "passthrough_hp-uring" {
                record(order[11], impl, median(try (0..<10).map { _ in try setup.mountUnmountTime(impl) }))
            }
            let fresh = try setup.mount(impl)
            defer { setup.unmount(fresh) }
            record(order[12], impl, time { walkWithCapability(fresh) })
            let fresh2 = try setup.mount(impl)
            defer { setup.unmount(fresh2) }
            record(order[13], impl, time { statDir("\(fresh2)/wide") })
        }
        var growth: String = ""
        if !noLayers {
            progress("128 layers against 1")
            growth = try setup.layerGrowth(impls: names.filter { $0 != "passthrough_hp-uring" }, rounds: rounds)
        }
        let kernel = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        print("strata-bench union: \(files.all.count) files in 3 lower layers + \(sizeMib) MiB file; \(rounds) rounds; medians; ratio = time / kernel's, paired by round")
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, kernel \(kernel), layers on \(dir)")
        print(report(order.compactMap { results[$0] }, impls: names, base: names.contains("kernel") ? "kernel" : names[0]))
        print(growth)
    }
}



struct TreeFiles {
    var all: [String] = []
    var small: [String] = []
}

struct UnionSetup {
    let root: String
    let strata: String
    var baseline: String?
    var passthroughHP: String?
    var lowers: [String] { (1...3).map { "\(root)/l\($0)" } }

    /// A tree shaped like a distribution's: directories of ~10 files with
    /// sizes from 100 B to 64 KiB, spread over three layers, some files
    /// overridden in higher layers; a 10,000-entry directory merged from all
    /// three; a deletable tree; the big file in the bottom layer.
    func buildLayers(entries: Int, bigMiB: Int) -> TreeFiles {
        var files = TreeFiles()
        for l in lowers { mkdir(l, 0o755) }
        var rng = UInt64(42)
        func next() -> UInt64 { rng = rng &* 6364136223846793005 &+ 1442695040888963407; return rng >> 33 }
        let dirs = max(1, entries / 11)
        for d in 0..<dirs {
            let layer = lowers[d % 3]
            let dir = "usr/d\(d / 100)/s\(d)"
            _ = try? Spawn.run("/bin/mkdir", ["mkdir", "-p", "\(layer)/\(dir)"])
            for f in 0..<10 {
                let p = "\(dir)/f\(f)"
                let size = 100 << (next() % 10)
                let target = (f == 0 && d % 3 != 0) ? lowers[0] : layer
                if target != layer { _ = try? Spawn.run("/bin/mkdir", ["mkdir", "-p", "\(target)/\(dir)"]) }
                writeBytes("\(target)/\(p)", size)
                files.all.append(p)
                if d % 4 == 0 { files.small.append(p) }
            }
        }
        for l in lowers { mkdir("\(l)/wide", 0o755) }
        for i in 0..<10_000 { writeBytes("\(lowers[i % 3])/wide/entry-\(i)", 0) }
        _ = try? Spawn.run("/bin/mkdir", ["mkdir", "-p", "\(lowers[2])/tree"])
        for i in 0..<2000 {
            if i % 100 == 0 { mkdir("\(lowers[2])/tree/d\(i / 100)", 0o755) }
            writeBytes("\(lowers[2])/tree/d\(i / 100)/f\(i)", 10)
        }
        writeFile("\(lowers[2])/big", mib: bigMiB)
        fsyncPath("\(lowers[2])/big")
        // The tree just written is flushed before anything is timed: its
        // writeback would otherwise land in whichever rounds it meets.
        sync()
        return files
    }

    /// A fresh upper and mount for `impl`; returns the mount point.
    func mount(_ impl: String, lowerList: [String]? = nil, tag: String = "") throws -> String {
        let id = "\(impl)\(tag)-\(UInt32.random(in: 0...UInt32.max))"
        let u = "\(root)/u-\(id)", w = "\(root)/w-\(id)", m = "\(root)/m-\(id)"
        for d in [u, w, m] { mkdir(d, 0o755) }
        // Paths relative to the data directory: 128 absolute lowerdirs would
        // not fit in the kernel's one-page mount options (Docker's l/ links
        // exist for the same reason).
        let rel = { (p: String) in p.hasPrefix(root + "/") ? String(p.dropFirst(root.count + 1)) : p }
        let lowerdir = (lowerList ?? lowers).map(rel).joined(separator: ":")
        let opts = "lowerdir=\(lowerdir),upperdir=\(rel(u)),workdir=\(rel(w))"
        let command: String
        switch impl {
        case "kernel": command = "mount -t overlay overlay -o \(opts),redirect_dir=off,index=off,xino=off \(m)"
        case "strata": command = "\(strata) mount -o \(opts),uring=off \(m)"
        case "strata-uring": command = "\(strata) mount -o \(opts),uring=on \(m)"
        case "kernel-metacopy": command = "mount -t overlay overlay -o \(opts),metacopy=on,redirect_dir=on,index=off,xino=off \(m)"
        case "strata-metacopy": command = "\(strata) mount -o \(opts),metacopy=on,uring=off \(m)"
        case "strata-uring-metacopy": command = "\(strata) mount -o \(opts),metacopy=on,uring=on \(m)"
        case "baseline", "baseline-uring":
            guard let b = baseline else { throw ValidationError("'\(impl)' needs --baseline PATH") }
            command = "\(b) mount -o \(opts),uring=\(impl == "baseline" ? "off" : "on") \(m)"
        case "fuse-overlayfs": command = "/usr/bin/fuse-overlayfs -o \(opts),allow_other \(m) 2>/dev/null"
        case "passthrough_hp-uring":
            // No union: a hard-linked copy of the flattened layers.
            let src = "\(root)/flat-\(id)"
            guard try Spawn.run("/bin/cp", ["cp", "-al", "\(root)/flat", src]) == 0 else { throw ValidationError("cp -al of the flat tree failed") }
            command = "\(passthroughHP ?? "passthrough_hp") -o io_uring -o allow_other \(src) \(m)"
        default: throw ValidationError("unknown implementation \(impl)")
        }
        let status = try Spawn.run("/bin/sh", ["sh", "-c", "cd \(root) && \(command)"])
        guard status == 0 else { throw ValidationError("mounting \(impl) failed (exit \(status))") }
        return m
    }

    /// The merged view of the lower layers as one plain directory, for a
    /// FUSE server without union work (these layers hold no whiteouts).
    func flatten() {
        let flat = "\(root)/flat"
        mkdir(flat, 0o755)
        for l in lowers.reversed() { _ = try? Spawn.run("/bin/cp", ["cp", "-a", "\(l)/.", flat]) }
    }

    /// One mount and unmount as containers/storage does them: mount(2) for
    /// the kernel, the mount program (strata-overlay for Strata) otherwise,
    /// ready when the program returns; one stat of the root in between.
    func mountUnmountTime(_ impl: String) throws -> Double {
        let id = "mu-\(impl)-\(UInt32.random(in: 0...UInt32.max))"
        let u = "\(root)/u-\(id)", w = "\(root)/w-\(id)", m = "\(root)/m-\(id)"
        for d in [u, w, m] { mkdir(d, 0o755) }
        defer { for d in [u, w, m] { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", d]) } }
        let opts = "lowerdir=\(lowers.joined(separator: ":")),upperdir=\(u),workdir=\(w)"
        let program = impl.hasPrefix("baseline") ? (baseline ?? strata) : strata
        let overlayProgram = String(program[..<(program.lastIndex(of: "/") ?? program.startIndex)]) + "/strata-overlay"
        let t0 = now()
        switch impl {
        case "kernel":
            guard Glibc.mount("overlay", m, "overlay", 0, opts + ",redirect_dir=off,index=off,xino=off") == 0 else {
                throw ValidationError("mount(2) of overlay failed: \(currentErrno())")
            }
        case "strata", "strata-uring", "baseline", "baseline-uring":
            let o = opts + (impl.hasSuffix("-uring") ? ",uring=on" : ",uring=off")
            guard try Spawn.run(overlayProgram, ["strata-overlay", "-o", o, m]) == 0 else { throw ValidationError("strata-overlay failed") }
        case "fuse-overlayfs":
            guard try Spawn.run("/usr/bin/fuse-overlayfs", ["fuse-overlayfs", "-o", opts, m]) == 0 else { throw ValidationError("fuse-overlayfs failed") }
        default: throw ValidationError("unknown implementation \(impl)")
        }
        var st = stat()
        stat(m, &st)
        let rc = umount2(m, 0)
        let t = now() - t0
        if rc != 0 { umount2(m, Int32(MNT_DETACH)); throw ValidationError("umount \(m): \(currentErrno())") }
        return t
    }

    func unmount(_ m: String) {
        umount2(m, 0) == 0 ? () : { umount2(m, Int32(MNT_DETACH)); usleep(200_000) }()
        let base = (m as NSString).lastPathComponent.dropFirst(2)
        // Only the big files go now; the many small ones stay until the end,
        // so that deleting them does not slow the next implementation's
        // creates (journal-less ext4 scans recently freed inodes).
        for d in ["\(root)/u-\(base)", "\(root)/flat-\(base)"] where access(d, F_OK) == 0 {
            _ = try? Spawn.run("/usr/bin/find", ["find", d, "-type", "f", "-size", "+64M", "-delete"])
        }
    }

    /// Stat of 1,000 names in the bottom layer and 1,000 missing names on a
    /// fresh mount, with 128 layers against 1: how lookups grow with depth.
    func layerGrowth(impls: [String], rounds: Int) throws -> String {
        let bottom = "\(root)/deep-bottom"
        mkdir(bottom, 0o755)
        for i in 0..<1000 { writeBytes("\(bottom)/n\(i)", 1) }
        var empties: [String] = []
        for i in 0..<127 {
            let e = "\(root)/deep-\(i)"
            mkdir(e, 0o755)
            writeBytes("\(e)/unrelated\(i)", 1)
            empties.append(e)
        }
        var growth: [String: [Double]] = [:]
        for _ in 0..<rounds {
            for impl in impls {
                var t: [Int: Double] = [:]
                for depth in [1, 128] {
                    let layers = Array(empties.prefix(depth - 1)) + [bottom]
                    let m = try mount(impl, lowerList: layers, tag: "-\(depth)")
                    t[depth] = time {
                        var st = stat()
                        for i in 0..<1000 { _ = lstat("\(m)/n\(i)", &st); _ = lstat("\(m)/missing\(i)", &st) }
                    }
                    unmount(m)
                }
                if let a = t[1], let b = t[128] { growth[impl, default: []].append(b / a) }
            }
        }
        var out = "| 2,000 lookups on a fresh mount, 128 layers / 1 layer | " + impls.joined(separator: " | ") + " |\n|---|" + String(repeating: "---|", count: impls.count) + "\n| growth |"
        for i in impls { out += String(format: " %.2fx |", median(growth[i] ?? [])) }
        return out + "\n"
    }
}

func writeBytes(_ path: String, _ n: Int) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if n > 0 { _ = write(fd, buffer, min(n, 1 << 20)) }
    close(fd)
}

func fsyncPath(_ p: String) {
    let fd = open(p, O_RDONLY)
    fsync(fd)
    close(fd)
}

func listDir(_ p: String) -> Int {
    guard let d = opendir(p) else { return 0 }
    var n = 0
    while readdir(d) != nil { n += 1 }
    closedir(d)
    return n
}

func statDir(_ p: String) {
    guard let d = opendir(p) else { return }
    let fd = dirfd(d)
    var st = stat()
    while let e = readdir(d) {
        _ = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { fstatat(fd, $0, &st, Linux.AT_SYMLINK_NOFOLLOW) } }
    }
    closedir(d)
}

func readAll(_ root: String, _ paths: [String]) {
    for p in paths { _ = readFile("\(root)/\(p)") }
}

func createMany(_ dir: String, _ n: Int) {
    mkdir(dir, 0o755)
    for i in 0..<n {
        let fd = open("\(dir)/c\(i)", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = write(fd, buffer, 100)
        close(fd)
    }
}

func appendByte(_ p: String) {
    let fd = open(p, O_WRONLY | O_APPEND)
    _ = write(fd, buffer, 1)
    close(fd)
}

func randomDirect(_ p: String, count: Int, mib: Int) {
    let fd = open(p, O_RDONLY | Linux.O_DIRECT)
    guard fd >= 0 else { return }
    var r = UInt64(7)
    for _ in 0..<count {
        r = r &* 6364136223846793005 &+ 1442695040888963407
        let block = Int(r >> 33) % (mib * 256)
        _ = pread(fd, buffer, 4096, off_t(block * 4096))
    }
    close(fd)
}

/// containers/storage's naive diff walk (pkg/archive/changes.go,
/// collectFileInfo): lstat and the `security.capability` xattr of every entry.
func walkWithCapability(_ dir: String) {
    guard let d = opendir(dir) else { return }
    var st = stat()
    var subdirs: [String] = []
    var buf = [UInt8](repeating: 0, count: 256)
    while let e = readdir(d) {
        let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
        if name == "." || name == ".." { continue }
        let p = "\(dir)/\(name)"
        lstat(p, &st)
        _ = lgetxattr(p, "security.capability", &buf, buf.count)
        if st.st_mode & Linux.S_IFMT == Linux.S_IFDIR { subdirs.append(p) }
    }
    closedir(d)
    for s in subdirs { walkWithCapability(s) }
}

/// A find(1)-like walk: list each directory, lstat each entry, descend.
func walk(_ dir: String) {
    guard let d = opendir(dir) else { return }
    let fd = dirfd(d)
    var st = stat()
    var subdirs: [String] = []
    while let e = readdir(d) {
        let name = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
        if name == "." || name == ".." { continue }
        fstatat(fd, name, &st, Linux.AT_SYMLINK_NOFOLLOW)
        if st.st_mode & Linux.S_IFMT == Linux.S_IFDIR { subdirs.append(name) }
    }
    closedir(d)
    for s in subdirs { walk("\(dir)/\(s)") }
}

/// What the benchmarks on the union benchmark's layers share.
struct LayerBenchOptions: ParsableArguments {
    @Option(help: "Entries in the tree (split over 3 layers).") var entries = 16_000
    @Option(help: "Rounds; medians are reported.") var rounds = 3
    @Option(help: "Where to put the data (disk-backed).") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?

    /// Checks for root; the strata binary and a fresh data directory.
    func prepare() throws -> (binary: String, root: String) {
        guard geteuid() == 0 else { throw ValidationError("run as root") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        return (bin, try makeTemp(dir))
    }
}
