import CStrata
import Foundation
import Sys
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
    public var requests: [(String, UInt64)]
    public var filesystem: [(String, Int)]

    /// One JSON object; the process's own resident memory and open
    /// descriptors are read when it is made.
    public func json() -> String {
        func q(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        let (rss, fds) = Self.process()
        let reqs = requests.map { "\(q($0.0)): \($0.1)" }.joined(separator: ", ")
        let fsFigures = filesystem.map { "\(q($0.0)): \($0.1)" }.joined(separator: ", ")
        return """
            {"pid": \(getpid()), "transport": \(q(transport)), "threads": \(threads), "protocol": \(q(`protocol`)), \
            "passthrough": \(passthrough), "uptime_seconds": \(uptime.components.seconds), "rss_kib": \(rss), \
            "open_descriptors": \(fds), "requests": {\(reqs)}, "filesystem": {\(fsFigures)}}
            """
    }

    /// Resident memory (KiB) and open descriptors of this process.
    static func process() -> (Int, Int) {
        var rss = 0
        if let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) {
            rss = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
        return (rss, fds)
    }

    /// Where the daemon of the mount whose root has device `dev` answers:
    /// /run/strata as root, else the user's runtime directory.
    public static func socketPath(dev: UInt64) -> String {
        let dir: String
        if geteuid() == 0 { dir = "/run/strata" } else if let x = getenv("XDG_RUNTIME_DIR") { dir = String(cString: x) + "/strata" } else { dir = "/tmp/strata-\(geteuid())" }
        return "\(dir)/fuse-\(strata_major(dev))-\(strata_minor(dev)).sock"
    }
}

/// Answers `strata stats` on a unix socket named after the mount's device:
/// each connection gets one JSON object and is closed.
final class StatsServer: @unchecked Sendable {
    private var listenFD: Int32 = -1
    private var path = ""

    /// Starts on its own thread: it must stat the mountpoint, which the
    /// workers answer.
    func start(mountpoint: String, logger: @escaping @Sendable (String) -> Void, snapshot: @escaping @Sendable () -> String) {
        let t = Thread { [self] in
            var st = stat()
            guard stat(mountpoint, &st) == 0 else { return }
            path = Statistics.socketPath(dev: UInt64(st.st_dev))
            let dir = (path as NSString).deletingLastPathComponent
            mkdir((dir as NSString).deletingLastPathComponent, 0o755)
            mkdir(dir, 0o700)
            unlink(path)
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { close(fd); return }
            withUnsafeMutableBytes(of: &addr.sun_path) { b in for (i, c) in bytes.enumerated() { b[i] = c } }
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
            }
            guard ok, listen(fd, 8) == 0 else {
                logger("stats socket \(path): \(currentErrno())")
                close(fd)
                return
            }
            listenFD = fd
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 {
                    if errno == EINTR { continue }
                    break
                }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                let text = Array((snapshot() + "\n").utf8)
                var done = 0
                while done < text.count {
                    let n = text.withUnsafeBytes { write(c, $0.baseAddress.map { $0 + done }, text.count - done) }
                    if n <= 0 { break }
                    done += n
                }
                close(c)
            }
        }
        t.name = "stats"
        t.start()
    }

    func stop() {
        if listenFD >= 0 {
            shutdown(listenFD, Int32(SHUT_RDWR))
            unlink(path)
        }
    }
}
