import ArgumentParser
import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Compares the loopback with and without passthrough against the plain
/// directory, on the same data, in one run: the machine is shared and noisy,
/// so only ratios taken round by round mean anything.
@main
struct BenchMain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata-bench",
        abstract: "Benchmarks, each comparing implementations in one run (run as root).",
        subcommands: [Bench.self, UnionBench.self, StoreBench.self, PullBench.self, RoundTripBench.self, CrashBench.self, SoakBench.self, BuildBench.self, MetacopyBench.self, LazyBench.self, ContainerdBench.self, PodmanLazyBench.self, PoolBench.self, DriversBench.self, EchoPeer.self],
        defaultSubcommand: Bench.self
    )
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loopback",
        abstract: "Strata's loopback (with and without passthrough) against the plain directory."
    )

    @Option(help: "Size of the sequential file in MiB.") var sizeMib = 1024
    @Option(help: "Number of files in the stat tree.") var files = 20_000
    @Option(help: "Rounds; medians are reported.") var rounds = 5
    @Option(help: "Where to put the data (a disk-backed directory).") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program).") var strata: String?

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root: mounting and passthrough need it") }
        let bin = strata ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/strata")
        guard access(bin, X_OK) == 0 else { throw ValidationError("no strata binary at \(bin); build it or pass --strata") }
        let root = try makeTemp(dir)
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let src = "\(root)/src"
        mkdir(src, 0o755)
        progress("creating \(files) files and a \(sizeMib) MiB file in \(src)")
        let paths = makeTree(src, files: files)
        makeBigFile("\(src)/big", mib: sizeMib)

        let impls = ["plain", "passthrough", "no-passthrough"]
        var mounts: [String: String] = ["plain": src]
        var mounted: [String] = []
        defer { for m in mounted { umount2(m, Int32(MNT_DETACH)) } }
        for (impl, opt) in [("passthrough", "passthrough=on"), ("no-passthrough", "passthrough=off")] {
            let mnt = "\(root)/mnt-\(impl)"
            mkdir(mnt, 0o755)
            let st = try Spawn.run(bin, ["strata", "loopback", "-o", opt, src, mnt])
            guard st == 0 else { throw ValidationError("mounting \(impl) failed (exit \(st))") }
            mounted.append(mnt)
            mounts[impl] = mnt
        }

        var write = Workload(name: "sequential write \(sizeMib) MiB (1 MiB writes, page cache)", bytes: Double(sizeMib) * 1048576)
        var read = Workload(name: "sequential read \(sizeMib) MiB, warm", bytes: Double(sizeMib) * 1048576)
        var stat = Workload(name: "stat \(paths.count) files, warm", bytes: nil)
        // Warm every cache once: page cache of the big file, dentries and attributes.
        for i in impls {
            guard let m = mounts[i] else { continue }
            _ = readFile("\(m)/big")
            statAll(m, paths)
        }
        for round in 0..<rounds {
            progress("round \(round + 1)/\(rounds)")
            // Rotate the order so no implementation always goes first.
            let order = (0..<impls.count).map { impls[($0 + round) % impls.count] }
            // Phases, so that one workload's aftermath (dirty pages, freed
            // memory) does not land in another's timing.
            for i in order {
                guard let m = mounts[i] else { continue }
                read.seconds[i, default: []].append(median((0..<3).map { _ in time { _ = readFile("\(m)/big") } }))
            }
            for i in order {
                guard let m = mounts[i] else { continue }
                stat.seconds[i, default: []].append(median((0..<3).map { _ in time { statAll(m, paths) } }))
            }
            for i in order {
                guard let m = mounts[i] else { continue }
                sync()   // no writeback of earlier work inside a timed region
                write.seconds[i, default: []].append(time { writeFile("\(m)/w-\(i)", mib: sizeMib) })
                unlink("\(m)/w-\(i)")
            }
        }
        let kernel = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        print("strata-bench: loopback vs plain directory; \(rounds) rounds, medians; ratios are time ratios paired round by round (1.00 = same as plain, lower is better)")
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, kernel \(kernel), data on \(dir)")
        print(report([write, read, stat], impls: impls, base: "plain"))
    }


}

func makeTemp(_ parent: String) throws -> String {
    var t = Array("\(parent)/strata-bench.XXXXXX".utf8CString)
    guard let p = t.withUnsafeMutableBufferPointer({ b in b.baseAddress.flatMap { mkdtemp($0) } }) else {
        throw ValidationError("cannot create a directory in \(parent)")
    }
    let dir = String(cString: p)
    // Spread what each implementation writes over ext4's block groups (see
    // Store.init): these machines' journal-less ext4 makes creates scan the
    // inodes deleted in the last minutes of their group.
    let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if fd >= 0 { _ = strata_set_topdir(fd); close(fd) }
    return dir
}

/// Files spread over directories of 100, like a source tree; returns their
/// paths relative to `root`.
func makeTree(_ root: String, files: Int) -> [String] {
    var paths: [String] = []
    let perDir = 100
    for d in 0..<(files + perDir - 1) / perDir {
        let dir = "d\(d / 20)/s\(d)"
        mkdir("\(root)/d\(d / 20)", 0o755)
        mkdir("\(root)/\(dir)", 0o755)
        for f in 0..<min(perDir, files - d * perDir) {
            let p = "\(dir)/file\(f).txt"
            let fd = open("\(root)/\(p)", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            _ = write(fd, p, p.utf8.count)
            close(fd)
            paths.append(p)
        }
    }
    return paths
}

func makeBigFile(_ path: String, mib: Int) {
    writeFile(path, mib: mib)
    let fd = open(path, O_RDONLY)
    fsync(fd)
    close(fd)
}

let chunk = 1 << 20
nonisolated(unsafe) let buffer: UnsafeMutableRawPointer = {
    let p = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    for i in 0..<(1 << 20) { p.storeBytes(of: UInt8(truncatingIfNeeded: i &* 7), toByteOffset: i, as: UInt8.self) }
    return p
}()

func writeFile(_ path: String, mib: Int) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    for _ in 0..<mib { _ = write(fd, buffer, chunk) }
    close(fd)
}

func readFile(_ path: String) -> Int {
    let fd = open(path, O_RDONLY)
    var total = 0
    while true {
        let n = read(fd, buffer, chunk)
        if n <= 0 { break }
        total += n
    }
    close(fd)
    return total
}

func statAll(_ root: String, _ paths: [String]) {
    let dfd = open(root, O_RDONLY | O_DIRECTORY)
    defer { close(dfd) }
    var st = stat()
    for p in paths { fstatat(dfd, p, &st, 0) }
}
