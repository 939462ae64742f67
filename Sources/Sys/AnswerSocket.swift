import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A unix socket that gives each connection one answer and closes it: how
/// `strata stats` asks a mount's daemon or the snapshotter what it is doing,
/// without a protocol to speak or a request to parse.
public final class AnswerSocket: @unchecked Sendable {
    private let listening = Locked<(fd: OwnedFD, path: String)?>(nil)

    public init() {}

    /// Listens, on a thread of its own, at the path `where` gives (worked
    /// out on that thread: finding a mount's device can wait on the mount).
    public func start(logger: @escaping @Sendable (String) -> Void, answer: @escaping @Sendable () -> String,
                      at place: @escaping @Sendable () -> String?) {
        let thread = try? OSThread.start(name: "stats") { [self] in
            guard let path = place() else { return }
            unlink(path)
            guard let socket = try? Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue)) else { return }
            let fd = socket.raw
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                logger("stats socket \(path): the path is too long for a unix socket")
                return
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { b in for (i, c) in bytes.enumerated() { b[i] = c } }
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
            }
            guard ok, listen(fd, 8) == 0 else {
                logger("stats socket \(path): \(currentErrno())")
                return
            }
            let listener = OwnedFD(socket)
            listening.withLock { $0 = (listener, path) }
            while true {
                let client: UniqueFD
                do throws(Errno) { client = try Sys.accept(fd) } catch {
                    if error == .interrupted { continue }
                    break
                }
                let c = client.raw
                let text = Array((answer() + "\n").utf8)
                var done = 0
                while done < text.count {
                    let n = text.withUnsafeBytes { write(c, $0.baseAddress.map { $0 + done }, text.count - done) }
                    if n <= 0 { break }
                    done += n
                }
            }
        }
        thread?.detach()
    }

    /// Stops listening and removes the socket.
    public func stop() {
        if let l = listening.withLock({ $0 }) {
            shutdown(l.fd.raw, Int32(SHUT_RDWR))
            unlink(l.path)
        }
    }
}
