import CFuseProto
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot of what a mount's daemon is doing, as `strata stats` shows it.
public struct Statistics: Sendable {
    public var transport: String
    public var threads: Int
    public var `protocol`: String
    public var passthrough: Bool
    public var uptime: Duration
    public var requests: [RequestFigures]
    /// File data the daemon itself read and wrote (READ, WRITE); what
    /// passthrough moves never reaches it.
    public var bytesRead: UInt64
    public var bytesWritten: UInt64
    /// Requests answered on the io_uring queues (the rest came by /dev/fuse).
    public var ringRequests: UInt64
    public var filesystem: [(String, Int)]

    /// One opcode's requests: how many, and how long the daemon took to
    /// answer them (mean, and the bucket bound under which 99% fell).
    public struct RequestFigures: Sendable {
        public var name: String
        public var count: UInt64
        public var meanMicroseconds: Double
        public var p99Microseconds: UInt64
    }

    /// One JSON object; the process's own resident memory and open
    /// descriptors are read when it is made.
    public func json() -> String {
        func q(_ s: String) -> String {
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\\", "\"": out.append("\\"); out.unicodeScalars.append(u)
                case _ where u.value < 0x20:
                    // Control characters as \u00XX: JSON allows none raw.
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default: out.unicodeScalars.append(u)
                }
            }
            return out + "\""
        }
        let (rss, fds) = Self.process()
        let reqs = requests.map { r -> String in
            let tenths = Int((r.meanMicroseconds * 10).rounded())
            return "\(q(r.name)): {\"count\": \(r.count), \"mean_us\": \(tenths / 10).\(tenths % 10), \"p99_us\": \(r.p99Microseconds)}"
        }.joined(separator: ", ")
        let fsFigures = filesystem.map { "\(q($0.0)): \($0.1)" }.joined(separator: ", ")
        return """
            {"pid": \(getpid()), "transport": \(q(transport)), "threads": \(threads), "protocol": \(q(`protocol`)), \
            "passthrough": \(passthrough), "uptime_seconds": \(uptime.components.seconds), "rss_kib": \(rss), \
            "open_descriptors": \(fds), "bytes_read": \(bytesRead), "bytes_written": \(bytesWritten), "ring_requests": \(ringRequests), \
            "requests": {\(reqs)}, "filesystem": {\(fsFigures)}}
            """
    }

    /// Resident memory (KiB) and open descriptors of this process.
    static func process() -> (Int, Int) {
        var rss = 0
        if let s = readSmallFile("/proc/self/status"),
           let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) {
            rss = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        var fds = 0
        if let d = opendir("/proc/self/fd") {
            while let e = readdir(d) {
                if e.pointee.d_name.0 != 0x2E { fds += 1 }   // not "." or ".."
            }
            fds -= 1   // the listing's own descriptor
            closedir(d)
        }
        return (rss, fds)
    }

    /// Where the daemon of the mount whose root has device `dev` answers:
    /// /run/strata as root, else the user's runtime directory.
    public static func socketPath(dev: UInt64) -> String {
        let dir: String
        if geteuid() == 0 { dir = "/run/strata" } else if let x = getenv("XDG_RUNTIME_DIR") { dir = String(cString: x) + "/strata" } else { dir = "/tmp/strata-\(geteuid())" }
        return "\(dir)/fuse-\(Sys.major(dev))-\(Sys.minor(dev)).sock"
    }

    /// The device of the mount at `path`, from /proc/self/mountinfo (the
    /// last mount there wins). Not stat(2): a stat through the mount would
    /// hold it busy, and an unmount right after mounting (as podman does
    /// for a layer it only reads) would fail with EBUSY.
    static func deviceOfMount(_ path: String) -> UInt64? {
        guard let text = readSmallFile("/proc/self/mountinfo", limit: 16 << 20) else { return nil }
        var found: UInt64?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 5)
            guard f.count >= 5, unescapeMountinfo(f[4]) == path else { continue }
            let mm = f[2].split(separator: ":")
            if mm.count == 2, let ma = UInt32(mm[0]), let mi = UInt32(mm[1]) { found = Sys.makedev(ma, mi) }
        }
        return found
    }

    /// mountinfo writes space, tab, newline and backslash as `\ooo`.
    static func unescapeMountinfo(_ s: Substring) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Answers `strata stats` on a unix socket named after the mount's device:
/// each connection gets one JSON object and is closed.
final class StatsServer: @unchecked Sendable {
    private let server = AnswerSocket()

    /// Starts on its own thread, off the path of the first requests.
    func start(mountpoint: String, logger: @escaping @Sendable (String) -> Void, snapshot: @escaping @Sendable () -> String) {
        server.start(logger: logger, answer: snapshot, at: {
            guard let dev = Statistics.deviceOfMount(mountpoint) else {
                logger("stats: \(mountpoint) is not in /proc/self/mountinfo")
                return nil
            }
            let path = Statistics.socketPath(dev: dev)
            let dir = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
            mkdir(String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)]), 0o755)
            mkdir(dir, 0o700)
            return path
        })
    }

    func stop() { server.stop() }
}
