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

            Asks the daemon serving MOUNTPOINT (a union or loopback mount made by strata) \
            over its unix socket (/run/strata as root), without stopping it. Shows the \
            transport (/dev/fuse or io_uring), requests per opcode since the mount with \
            the daemon's mean and 99th-percentile time to answer them, the data it read \
            and wrote itself, its resident memory and open descriptors, and the union's \
            copy-ups, nodes, cached directory descriptors and listings held. \
            STRATA_STATS_AT_EXIT=FILE in a daemon's environment appends its last \
            statistics to FILE when it exits (for mounts too short-lived to ask).
            """
    )
    @Argument(help: "A mountpoint served by strata.") var mountpoint: String
    @Flag(help: "Print the daemon's JSON as it is.") var json = false

    func run() throws {
        var st = stat()
        if stat(mountpoint, &st) != 0 { throw fail("\(mountpoint): \(currentErrno())") }
        let path = Statistics.socketPath(dev: UInt64(st.st_dev))
        let socket: UniqueFD
        do throws(Errno) { socket = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue)) } catch { throw fail("socket: \(error)") }
        let fd = socket.raw
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { b in for (i, c) in bytes.prefix(b.count - 1).enumerated() { b[i] = c } }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        if !ok { throw fail("\(mountpoint) is not served by a strata daemon that answers (\(path): \(currentErrno()))") }
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
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
