import Foundation
import Registry
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A layer's compressed blob, read by Range requests: the store keeps a
/// lazily pulled layer's files, not its compressed bytes, so `blob` (which
/// `podman save` and `podman push` read from start to end) is served from
/// the registry, a window at a time. One window is kept: a sequential
/// reader asks the registry once per window, not once per read.
final class BlobReader: @unchecked Sendable {
    let client: RegistryClient
    let path: String
    let size: Int64
    static let window: Int64 = 4 << 20
    private let kept = Locked<(start: Int64, data: Data)?>(nil)
    /// Compressed bytes fetched, for `strata stats`.
    let fetched = Locked<Int64>(0)

    init(client: RegistryClient, repository: String, digest: String, size: Int64) {
        self.client = client
        path = "/v2/\(repository)/blobs/\(digest)"
        self.size = size
    }

    /// Copies up to `buffer.count` bytes at `offset`; EIO when the registry
    /// cannot be reached (a later read tries again).
    func read(offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard offset < size, let base = buffer.baseAddress else { return 0 }
        let want = min(Int64(buffer.count), size - offset)
        var done: Int64 = 0
        while done < want {
            let at = offset + done
            let (start, data) = try window(containing: at)
            let from = Int(at - start)
            let n = min(Int(want - done), data.count - from)
            if n <= 0 { throw .ioError }
            data.withUnsafeBytes { src in
                if let s = src.baseAddress { (base + Int(done)).copyMemory(from: s + from, byteCount: n) }
            }
            done += Int64(n)
        }
        return Int(done)
    }

    private func window(containing at: Int64) throws(Errno) -> (Int64, Data) {
        if let k = kept.withLock({ $0 }), at >= k.start, at < k.start + Int64(k.data.count) { return (k.start, k.data) }
        let start = at / Self.window * Self.window
        let end = min(size, start + Self.window)
        let result = Locked<Result<Data, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let client = client, path = path
        Task {
            do {
                let d = try await client.range(path, from: start, to: end)
                result.withLock { $0 = .success(d) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
            done.signal()
        }
        done.wait()
        guard case .success(let data) = result.withLock({ $0 }), data.count == Int(end - start) else { throw .ioError }
        fetched.withLock { $0 += Int64(data.count) }
        kept.withLock { $0 = (start, data) }
        return (start, data)
    }
}
