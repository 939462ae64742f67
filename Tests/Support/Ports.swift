import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP port on 127.0.0.1 for a test's server: below Linux's ephemeral
/// range (32768 and up), where the machine's own outgoing connections take
/// their local ports and could hold the one picked, and free when asked.
public func freeLoopbackPort() -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: 20000...32000)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if fd < 0 { return port }
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        if ok { return port }
    }
    return Int.random(in: 20000...32000)
}
