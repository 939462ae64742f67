#if canImport(Glibc)
import Glibc
#endif

/// The whole of a small file such as one under /proc, or nil.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
    guard let file = try? Sys.open(path, O_RDONLY | O_CLOEXEC) else { return nil }
    let fd = file.raw
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while bytes.count < limit {
        let n = retryEINTR { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
        if n < 0 { return nil }
        if n == 0 { break }
        bytes += buf[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
