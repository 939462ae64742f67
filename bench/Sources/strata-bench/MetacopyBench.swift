import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// metacopy=on: a change of metadata on lower files (an image build's
/// `chmod`, `chown -R`) with kernel overlayfs metacopy=on, Strata with
/// metacopy=on and Strata without it, on the union benchmark's layers; the
/// time of each and the upper layer's size after the chown.
struct MetacopyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metacopy",
        abstract: "chmod and chown of lower files: kernel and Strata with metacopy=on, Strata without."
    )

    @OptionGroup var layers: LayerBenchOptions
    @Option(help: "Comma-separated implementations: kernel-metacopy, strata-metacopy, strata-uring-metacopy, strata, strata-uring, kernel.")
    var impls = "kernel-metacopy,strata-uring-metacopy,strata-uring"

    func run() throws {
        let (bin, root) = try layers.prepare()
        defer { _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", root]) }
        let (entries, rounds) = (layers.entries, layers.rounds)
        let names = impls.split(separator: ",").map(String.init)
        let uringSwitch = names.contains(where: { $0.contains("-uring") }) ? try UringSwitch.turnOn() : nil
        defer { uringSwitch?.restore() }
        let setup = UnionSetup(root: root, strata: bin)
        progress("building \(entries) entries in 3 layers under \(root)")
        let files = setup.buildLayers(entries: entries, bigMiB: 64)
        let chmodSet = Array(files.small.prefix(500))
        let order = ["chmod of 500 lower files", "chown of every file (\(files.all.count))"]
        var sizes: [String: [Double]] = [:]
        var results: [String: Workload] = [:]
        for o in order { results[o] = Workload(name: o, bytes: nil) }
        try rotatedRounds(rounds, names) { impl in
            let m = try setup.mount(impl)
            defer { setup.unmount(m) }
            results[order[0]]?.seconds[impl, default: []].append(time {
                for f in chmodSet { _ = chmod("\(m)/\(f)", 0o640) }
            })
            results[order[1]]?.seconds[impl, default: []].append(time {
                for f in files.all { _ = lchown("\(m)/\(f)", 1000, 1000) }
            })
            // The upper is the mount's u- sibling (see UnionSetup.mount).
            let upper = m.replacingOccurrences(of: "/m-", with: "/u-")
            sync()
            sizes[impl, default: []].append(Double(diskUsage(upper)) / 1_048_576)
        }
        print("strata-bench metacopy: \(files.all.count) files in 3 lower layers (\(entries) entries, a 64 MiB file); \(rounds) rounds; medians; ratio = value / \(names[0])'s, paired by round")
        print(report(order.compactMap { results[$0] }, impls: names, base: names[0]))
        print("| upper layer after the chown (du) | " + names.map { String(format: "%.1f MiB", median(sizes[$0] ?? [])) }.joined(separator: " | ") + " |")
    }

    /// Bytes allocated under `path` (du), not following symlinks.
    func diskUsage(_ path: String) -> Int64 {
        var total: Int64 = 0
        guard let e = FileManager.default.enumerator(atPath: path) else { return 0 }
        for case let rel as String in e {
            var st = stat()
            if lstat("\(path)/\(rel)", &st) == 0 { total += Int64(st.st_blocks) * 512 }
        }
        return total
    }
}
