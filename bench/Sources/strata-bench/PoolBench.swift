import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata pool` against mergerfs and unionfs-fuse (Debian's) on the union
/// benchmark's tree, as three branches; the native filesystem (the same
/// files in one directory) as the floor. Every implementation gets fresh
/// branches each round (hard-linked copies: the workloads only add, remove
/// and write new files), implementations rotated round by round.
struct PoolBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "strata pool against mergerfs and unionfs-fuse (and the native filesystem) on three branches."
    )
    @OptionGroup var layers: LayerBenchOptions
    @Option(help: "Size of the big file in MiB.") var sizeMib = 512
    @Option(help: "Comma-separated implementations: native, strata, mergerfs, unionfs-fuse.") var impls = "native,strata,mergerfs,unionfs-fuse"
    @Option(help: "Options given to both strata pool and mergerfs.") var options = "category.create=epmfs,minfreespace=1G,cache.files=partial"

    func run() throws {
        let (bin, root) = try layers.prepare()
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let names = impls.split(separator: ",").map(String.init)
        for (n, tool) in [("mergerfs", "mergerfs"), ("unionfs-fuse", "unionfs")] where names.contains(n) && Spawn.which(tool) == nil {
            throw ValidationError("\(n) is missing: apt-get install \(n)")
        }
        let setup = UnionSetup(root: root, strata: bin)
        progress("building \(layers.entries) entries in 3 branches and a \(sizeMib) MiB file under \(root)")
        let files = setup.buildLayers(entries: layers.entries, bigMiB: sizeMib)
        let order = ["stat every file (walk), cold (fresh mount)", "stat every file (walk), warm", "readdir of a 10,000-entry merged dir",
                     "read every file, warm", "create 10,000 small files", "delete a tree of 2,000 files",
                     "sequential read \(sizeMib) MiB, warm", "sequential write \(sizeMib) MiB", "random 4 KiB O_DIRECT reads (4,000)",
                     "copy a tree into the pool (cp -a, 2,000 files)"]
        var results: [String: Workload] = [:]
        for o in order { results[o] = Workload(name: o, bytes: nil) }
        func record(_ w: String, _ impl: String, _ t: Double) { results[w]?.seconds[impl, default: []].append(t) }
        var n = 0
        try rotatedRounds(layers.rounds, names) { impl in
            n += 1
            let d = "\(root)/run-\(n)"
            mkdir(d, 0o755)
            defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", d]) }
            let branches = (1...3).map { "\(d)/b\($0)" }
            for (l, b) in zip(setup.lowers, branches) {
                guard try Spawn.run("/bin/cp", ["cp", "-al", l, b]) == 0 else { throw ValidationError("cp -al \(l) failed") }
            }
            let m = "\(d)/pool"
            mkdir(m, 0o755)
            let spec = branches.joined(separator: ":")
            func mount() throws {
                let command: String
                switch impl {
                case "native":
                    // The floor: the three branches' files in one directory.
                    for b in branches.reversed() { _ = try? Spawn.run("/bin/cp", ["cp", "-al", "\(b)/.", m]) }
                    return
                case "strata": command = "'\(bin)' pool -o \(options) \(spec) \(m)"
                case "mergerfs": command = "mergerfs -o \(options) \(spec) \(m)"
                case "unionfs-fuse": command = "unionfs -o allow_other,use_ino \(branches.map { "\($0)=RW" }.joined(separator: ":")) \(m)"
                default: throw ValidationError("unknown implementation \(impl)")
                }
                guard try Spawn.run("/bin/sh", ["sh", "-c", command]) == 0 else { throw ValidationError("mounting \(impl) failed") }
            }
            func unmount() {
                if impl == "native" { return }
                _ = try? Spawn.run("/bin/umount", ["umount", m])
                if Sys.isMountRoot(m) { _ = try? Spawn.run("/bin/umount", ["umount", "-l", m]) }
            }
            try mount()
            record(order[0], impl, time { walk(m) })
            record(order[1], impl, median((0..<3).map { _ in time { walk(m) } }))
            _ = listDir("\(m)/wide")
            record(order[2], impl, median((0..<3).map { _ in time { _ = listDir("\(m)/wide") } }))
            readAll(m, files.small)
            record(order[3], impl, median((0..<3).map { _ in time { readAll(m, files.small) } }))
            _ = readFile("\(m)/big")
            record(order[6], impl, median((0..<3).map { _ in time { _ = readFile("\(m)/big") } }))
            record(order[8], impl, time { randomDirect("\(m)/big", count: 4000, mib: sizeMib) })
            record(order[4], impl, time { createMany("\(m)/created", 10_000) })
            record(order[5], impl, time { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "\(m)/tree"]) })
            sync()
            record(order[7], impl, time { writeFile("\(m)/written", mib: sizeMib); fsyncPath("\(m)/written") })
            sync()
            record(order[9], impl, time { _ = try? Spawn.run("/bin/cp", ["cp", "-a", "\(setup.lowers[2])/tree", "\(m)/copied"]); sync() })
            unmount()
        }
        let kernel = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        print("strata-bench pool: \(files.all.count) files in 3 branches + \(sizeMib) MiB file; \(layers.rounds) rounds; medians; ratio = time / mergerfs's, paired by round; options: \(options)")
        print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, kernel \(kernel), branches on \(layers.dir)")
        print(report(order.compactMap { results[$0] }, impls: names, base: names.contains("mergerfs") ? "mergerfs" : names[0]))
    }
}
