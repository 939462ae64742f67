import Archive
import Crypto
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 digests in the OCI form `sha256:<hex>`.
public enum Digest {
    public static func of(_ data: Data) -> String {
        "sha256:" + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// A digest taken piece by piece, as bytes arrive from the network.
    public struct Hasher {
        var h = SHA256()
        public init() {}
        public mutating func update(_ bytes: UnsafeRawBufferPointer) { h.update(bufferPointer: bytes) }
        public func finalize() -> String { "sha256:" + h.finalize().map { String(format: "%02x", $0) }.joined() }
    }

    public static func of(string: String) -> String { of(Data(string.utf8)) }

    /// The digest of a file's bytes as stored.
    public static func ofFile(_ path: String) throws(StoreError) -> String {
        let file = try openOwned(path, O_RDONLY | O_CLOEXEC)
        let fd = file.raw
        return try stream { (buf, size) throws(StoreError) -> Int in
            let n = read(fd, buf, size)
            if n < 0 { throw StoreError.last("\(path): read") }
            return n
        }
    }

    /// Hashes what `next` fills a 1 MiB buffer with until it returns 0,
    /// handing each chunk to `each` too.
    static func stream(_ next: (UnsafeMutableRawPointer, Int) throws(StoreError) -> Int,
                       each: (UnsafeRawBufferPointer) throws(StoreError) -> Void = { _ throws(StoreError) in }) throws(StoreError) -> String {
        var h = SHA256()
        let size = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { buf.deallocate() }
        while true {
            let n = try next(buf, size)
            if n == 0 { break }
            let chunk = UnsafeRawBufferPointer(start: buf, count: n)
            h.update(bufferPointer: chunk)
            try each(chunk)
        }
        return "sha256:" + h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// The digest of a file after decompression (gzip, zstd, ...): a
    /// layer's diff ID is taken over the uncompressed tar.
    /// `copy`, when given, receives the uncompressed bytes (the layer tar as
    /// its diff ID names it, kept for `image save`).
    /// `alsoTo`, when given, is a descriptor (a pipe to an unpacker) that
    /// receives the same bytes as they come.
    public static func ofUncompressed(_ path: String, copy: String? = nil, alsoTo tee: Int32 = -1) throws(StoreError) -> String {
        let copyFile = try copy.map { (c) throws(StoreError) -> OwnedFD in OwnedFD(try openOwned(c, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)) }
        let out: Int32 = copyFile?.raw ?? -1
        let plain: Decompressor
        do { plain = try Decompressor(path: path) } catch { throw StoreError(.archive, error.description) }
        return try stream({ (buf, size) throws(StoreError) -> Int in
            do throws(ArchiveError) { return try plain.read(buf, size) } catch { throw StoreError(.archive, error.description) }
        }, each: { (chunk) throws(StoreError) in
            if out >= 0 {
                do { try Sys.writeAll(out, chunk, path: copy ?? "") } catch { throw StoreError(wrapping: error) }
            }
            if tee >= 0 {
                do { try Sys.writeAll(tee, chunk, path: "unpacker") } catch { throw StoreError(wrapping: error) }
            }
        })
    }

    /// Chain IDs name a layer by everything below it (OCI image spec).
    public static func chainIDs(_ diffIDs: [String]) -> [String] {
        var out: [String] = []
        for d in diffIDs {
            out.append(out.last.map { of(string: "\($0) \(d)") } ?? d)
        }
        return out
    }

    /// The hex part, for directory names.
    public static func hex(_ d: String) -> String { d.hasPrefix("sha256:") ? String(d.dropFirst(7)) : d }

    public static func isValid(_ d: String) -> Bool {
        let h = hex(d)
        return d.hasPrefix("sha256:") && h.count == 64 && h.allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }
}
