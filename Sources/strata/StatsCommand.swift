import ArgumentParser
import FUSE
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show what a Strata mount's daemon is doing: transport, requests, memory, nodes.",
        discussion: """
            strata stats MOUNTPOINT [--json]
            strata stats SNAPSHOTTER-SOCKET [--json]

            Asks the daemon serving MOUNTPOINT (a union or loopback mount made by strata) \
            over its unix socket (/run/strata as root), without stopping it. Shows the \
            transport (/dev/fuse or io_uring), requests per opcode since the mount with \
            the daemon's mean and 99th-percentile time to answer them, the data it read \
            and wrote itself, its resident memory and open descriptors, and the union's \
            copy-ups, nodes, cached directory descriptors and listings held. \
            STRATA_STATS_AT_EXIT=FILE in a daemon's environment appends its last \
            statistics to FILE when it exits (for mounts too short-lived to ask). \
            Given the socket of 'strata snapshotter' (its --address), shows its calls \
            per method, how each lazily labelled layer was decided, the snapshots by \
            kind and how much of the partly pulled layers they show is local.
            """
    )
    @Argument(help: "A mountpoint served by strata, or a 'strata snapshotter' socket.") var mountpoint: String
    @Flag(help: "Print the daemon's JSON as it is.") var json = false

    func run() throws {
        var st = stat()
        if stat(mountpoint, &st) != 0 { throw fail("\(mountpoint): \(currentErrno())") }
        if st.st_mode & S_IFMT == S_IFSOCK {
            let data = try ask("\(mountpoint).stats", what: "\(mountpoint) is not the socket of a running 'strata snapshotter'")
            if json { print(String(decoding: data, as: UTF8.self), terminator: ""); return }
            try printSnapshotter(data)
            return
        }
        let data = try ask(Statistics.socketPath(dev: UInt64(st.st_dev)), what: "\(mountpoint) is not served by a strata daemon that answers")
        if json { print(String(decoding: data, as: UTF8.self), terminator: ""); return }
        // (No key strategy: it would rename the opcode and figure names too.)
        guard let r = try? JSONDecoder().decode(StatsReport.self, from: data) else {
            throw fail("the daemon of \(mountpoint) answered something that is not its statistics")
        }
        print("mount       \(mountpoint)")
        print("daemon      pid \(r.pid), up \(r.uptimeSeconds) s, \(r.rssKib / 1024) MiB resident, \(r.openDescriptors) descriptors open")
        print("transport   \(r.transport), \(r.threads) threads, protocol \(r.protocol), passthrough \(r.passthrough ? "on" : "off")")
        if r.transport.hasPrefix("/dev/fuse"), let hint = UringSupport.offHint(.auto) {
            print("note        \(hint)")
        }
        if !r.filesystem.isEmpty {
            print("union")
            for (k, v) in r.filesystem.sorted(by: { $0.key < $1.key }) { print("  \(k.padding(toLength: 32, withPad: " ", startingAt: 0)) \(v)") }
        }
        print("data        \(r.bytesRead) bytes read and \(r.bytesWritten) written by the daemon (passthrough not counted)")
        print("requests                           count    mean µs   p99 µs (at most)")
        for (k, v) in r.requests.sorted(by: { $0.value.count > $1.value.count }) {
            print("  \(k.padding(toLength: 28, withPad: " ", startingAt: 0)) \(String(format: "%9d %10.1f %8d", v.count, v.meanUs, v.p99Us))")
        }
    }

    /// One connection to a daemon's statistics socket: it writes its JSON and closes.
    func ask(_ path: String, what: String) throws -> Data {
        do throws(Errno) { return try askDaemon(path) } catch { throw fail("\(what) (\(path): \(error))") }
    }

    func printSnapshotter(_ data: Data) throws {
        guard let r = try? JSONDecoder().decode(SnapshotterReport.self, from: data) else {
            throw fail("the snapshotter at \(mountpoint) answered something that is not its statistics")
        }
        print("snapshotter \(r.address)")
        print("daemon      pid \(r.pid), up \(r.uptimeSeconds) s, \(r.driver == "fuse" ? "Strata's union" : "kernel overlayfs") mounts")
        print("snapshots   " + r.snapshots.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
              + (r.snapshots.isEmpty ? "none" : "") + "; \(r.committedBytes >> 10) KiB committed")
        print("layers      \(r.layersShown) store layers shown, \(r.partialLayers) partly pulled (\(r.partialLocalBytes >> 10) of \(r.partialTotalBytes >> 10) KiB of file data local)")
        if let l = r.lazy {
            print("lazy        \(l.pulledLazily) layers pulled lazily, \(l.foundInStore) found in the store, \(l.leftToContainerd) without a TOC left to containerd")
        } else {
            print("lazy        off (--no-lazy)")
        }
        print("requests                           count   errors    mean µs    max µs")
        for (k, v) in r.requests.sorted(by: { $0.value.count > $1.value.count }) {
            print("  \(k.padding(toLength: 28, withPad: " ", startingAt: 0)) \(String(format: "%9d %8d %10.1f %9d", v.count, v.errors, v.meanUs, v.maxUs))")
        }
    }
}

/// What `strata snapshotter` answers on its statistics socket.
struct SnapshotterReport: Decodable {
    struct Calls: Decodable {
        var count: Int, errors: Int, meanUs: Double, maxUs: Int
        enum CodingKeys: String, CodingKey { case count, errors, meanUs = "mean_us", maxUs = "max_us" }
    }
    struct Lazy: Decodable {
        var pulledLazily: Int, foundInStore: Int, leftToContainerd: Int
        enum CodingKeys: String, CodingKey { case pulledLazily = "pulled_lazily", foundInStore = "found_in_store", leftToContainerd = "left_to_containerd" }
    }
    var pid: Int
    var address: String
    var driver: String
    var uptimeSeconds: Int
    var requests: [String: Calls]
    var snapshots: [String: Int]
    var committedBytes: Int64
    var layersShown: Int
    var partialLayers: Int
    var partialLocalBytes: Int64
    var partialTotalBytes: Int64
    var lazy: Lazy?
    enum CodingKeys: String, CodingKey {
        case pid, address, driver, requests, snapshots, lazy
        case uptimeSeconds = "uptime_seconds", committedBytes = "committed_bytes", layersShown = "layers_shown"
        case partialLayers = "partial_layers", partialLocalBytes = "partial_local_bytes", partialTotalBytes = "partial_total_bytes"
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        pid = try c.decode(Int.self, forKey: .pid)
        address = try c.decode(String.self, forKey: .address)
        driver = try c.decode(String.self, forKey: .driver)
        uptimeSeconds = try c.decode(Int.self, forKey: .uptimeSeconds)
        requests = try c.decode([String: Calls].self, forKey: .requests)
        snapshots = try c.decodeIfPresent([String: Int].self, forKey: .snapshots) ?? [:]
        committedBytes = try c.decodeIfPresent(Int64.self, forKey: .committedBytes) ?? 0
        layersShown = try c.decodeIfPresent(Int.self, forKey: .layersShown) ?? 0
        partialLayers = try c.decodeIfPresent(Int.self, forKey: .partialLayers) ?? 0
        partialLocalBytes = try c.decodeIfPresent(Int64.self, forKey: .partialLocalBytes) ?? 0
        partialTotalBytes = try c.decodeIfPresent(Int64.self, forKey: .partialTotalBytes) ?? 0
        lazy = try? c.decode(Lazy.self, forKey: .lazy)
    }
}

/// Reads what the daemon listening at `path` answers.
func askDaemon(_ path: String) throws(Errno) -> Data {
    let socket = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue))
    let fd = socket.raw
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { b in for (i, c) in bytes.prefix(b.count - 1).enumerated() { b[i] = c } }
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
    }
    if !ok { throw currentErrno() }
    var data = Data()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        data.append(contentsOf: buf[0..<n])
    }
    return data
}

/// The statistics of the daemon serving `mountpoint`, if one answers.
func runStats(_ mountpoint: String) -> StatsReport? {
    var st = stat()
    guard stat(mountpoint, &st) == 0, let data = try? askDaemon(Statistics.socketPath(dev: UInt64(st.st_dev))) else { return nil }
    return try? JSONDecoder().decode(StatsReport.self, from: data)
}

/// What a daemon answers `strata stats` with (FUSE's `Statistics.json`,
/// written without Foundation in the daemon), read back typed.
struct StatsReport: Decodable {
    struct Requests: Decodable {
        var count: Int
        var meanUs: Double
        var p99Us: Int
        enum CodingKeys: String, CodingKey { case count, meanUs = "mean_us", p99Us = "p99_us" }
    }
    var pid: Int
    var transport: String
    var threads: Int
    var `protocol`: String
    var passthrough: Bool
    var uptimeSeconds: Int
    var rssKib: Int
    var openDescriptors: Int
    var bytesRead: Int
    var bytesWritten: Int
    var ringRequests: Int
    var requests: [String: Requests]
    var filesystem: [String: Int]
    enum CodingKeys: String, CodingKey {
        case pid, transport, threads, `protocol`, passthrough, requests, filesystem
        case uptimeSeconds = "uptime_seconds", rssKib = "rss_kib", openDescriptors = "open_descriptors"
        case bytesRead = "bytes_read", bytesWritten = "bytes_written", ringRequests = "ring_requests"
    }
}
