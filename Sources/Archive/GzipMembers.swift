import CZlib
import Crypto
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// A gzip stream written as separate members, so that a reader can start
/// decompressing at any member's first byte (eStargz puts one at every
/// file's data). zlib is used directly: libarchive's gzip filter writes
/// one member for the whole output and cannot be told where to cut.
final class GzipMemberWriter {
    private var z = z_stream()
    private var open = false
    private let fd: Int32
    private let path: String
    private var out = [UInt8](repeating: 0, count: 1 << 16)
    /// Bytes written to the blob so far: the offset where the next member starts.
    private(set) var blobOffset: Int64 = 0
    private var blobHash = SHA256()

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { if open { deflateEnd(&z) } }

    /// Ends the current member (if any) and starts another at `blobOffset`.
    func startMember() throws(ArchiveError) {
        if open { try finishMember() }
        z = z_stream()
        // windowBits 15 + 16: a gzip header and trailer around the deflate data.
        if deflateInit2_(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY,
                         ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) != Z_OK {
            throw ArchiveError(path, "zlib: cannot start a gzip member")
        }
        open = true
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        if !open { try startMember() }
        z.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
        z.avail_in = uInt(bytes.count)
        while z.avail_in > 0 { try pump(Z_NO_FLUSH) }
    }

    func finishMember() throws(ArchiveError) {
        guard open else { return }
        z.next_in = nil
        z.avail_in = 0
        while try pump(Z_FINISH) != Z_STREAM_END {}
        deflateEnd(&z)
        open = false
    }

    /// Bytes that go to the blob as they are (the eStargz footer).
    func writeRaw(_ bytes: [UInt8]) throws(ArchiveError) {
        try finishMember()
        try bytes.withUnsafeBufferPointer { (p) throws(ArchiveError) in try emit(UnsafeRawBufferPointer(p)) }
    }

    var blobDigest: String { "sha256:" + blobHash.finalize().map { hex2($0) }.joined() }

    @discardableResult
    private func pump(_ flush: Int32) throws(ArchiveError) -> Int32 {
        let produced: (Int32, Int) = out.withUnsafeMutableBytes { o in
            // A non-empty array's storage always has an address.
            guard let ob = o.baseAddress else { return (Z_STREAM_ERROR, 0) }
            z.next_out = ob.assumingMemoryBound(to: Bytef.self)
            z.avail_out = uInt(o.count)
            let r = deflate(&z, flush)
            return (r, o.count - Int(z.avail_out))
        }
        if produced.0 != Z_OK && produced.0 != Z_STREAM_END && produced.0 != Z_BUF_ERROR {
            throw ArchiveError(path, "zlib: deflate failed (\(produced.0))")
        }
        if produced.1 > 0 {
            let o = out
            try o.withUnsafeBufferPointer { (p) throws(ArchiveError) in try emit(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(p)[0..<produced.1])) }
        }
        return produced.0
    }

    private func emit(_ b: UnsafeRawBufferPointer) throws(ArchiveError) {
        do { try Sys.writeAll(fd, b, path: path) } catch { throw ArchiveError(path, "write: \(error)") }
        blobHash.update(bufferPointer: b)
        blobOffset += Int64(b.count)
    }
}

func hex2(_ b: UInt8) -> String {
    let d = Array("0123456789abcdef".utf8)
    return String(decoding: [d[Int(b >> 4)], d[Int(b & 15)]], as: UTF8.self)
}

/// The sha256 of bytes, as OCI writes digests.
public func sha256Digest(_ b: UnsafeRawBufferPointer) -> String {
    "sha256:" + SHA256.hash(data: b).map { hex2($0) }.joined()
}

public enum Gunzip {
    /// Decompresses gzip members from the start of `data` until `want`
    /// bytes came out (a file's chunk: the member holds more after it,
    /// the padding and the next entry's header), or the data ends.
    /// Refuses data that is not gzip or ends early.
    public static func prefix(_ data: UnsafeRawBufferPointer, want: Int, what: String) throws(ArchiveError) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: want)
        if want == 0 { return result }
        guard let input = data.baseAddress, data.count > 0 else { throw ArchiveError(what, "no gzip data", kind: .truncated) }
        var z = z_stream()
        if inflateInit2_(&z, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) != Z_OK {
            throw ArchiveError(what, "zlib: cannot start inflating")
        }
        defer { inflateEnd(&z) }
        var consumed = 0, produced = 0
        while produced < want {
            let r: Int32 = result.withUnsafeMutableBytes { o in
                guard let ob = o.baseAddress else { return Z_STREAM_ERROR }
                z.next_in = UnsafeMutablePointer(mutating: (input + consumed).assumingMemoryBound(to: Bytef.self))
                z.avail_in = uInt(data.count - consumed)
                z.next_out = (ob + produced).assumingMemoryBound(to: Bytef.self)
                z.avail_out = uInt(want - produced)
                let before = z.avail_in, outBefore = z.avail_out
                let r = inflate(&z, Z_NO_FLUSH)
                consumed += Int(before - z.avail_in)
                produced += Int(outBefore - z.avail_out)
                return r
            }
            if r == Z_STREAM_END {
                if produced >= want { break }
                // The next member goes on where this one ended.
                if consumed >= data.count { break }
                inflateReset(&z)
                continue
            }
            if r != Z_OK { throw ArchiveError(what, "corrupt gzip data (zlib \(r))") }
            if consumed >= data.count && produced < want { break }
        }
        if produced < want { throw ArchiveError(what, "gzip data ends after \(produced) of \(want) bytes", kind: .truncated) }
        return result
    }
}

extension Gunzip {
    /// Every byte of the gzip members in `data` (a TOC's member: its tar
    /// header, the JSON, the end-of-archive blocks), at most `limit`.
    public static func all(_ data: UnsafeRawBufferPointer, limit: Int, what: String) throws(ArchiveError) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var z = z_stream()
        if inflateInit2_(&z, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) != Z_OK {
            throw ArchiveError(what, "zlib: cannot start inflating")
        }
        defer { inflateEnd(&z) }
        guard let base = data.baseAddress else { return [] }
        var consumed = 0
        while consumed < data.count {
            let (r, n): (Int32, Int) = chunk.withUnsafeMutableBytes { o in
                guard let ob = o.baseAddress else { return (Z_STREAM_ERROR, 0) }
                z.next_in = UnsafeMutablePointer(mutating: (base + consumed).assumingMemoryBound(to: Bytef.self))
                z.avail_in = uInt(data.count - consumed)
                z.next_out = ob.assumingMemoryBound(to: Bytef.self)
                z.avail_out = uInt(o.count)
                let before = z.avail_in
                let r = inflate(&z, Z_NO_FLUSH)
                consumed += Int(before - z.avail_in)
                return (r, o.count - Int(z.avail_out))
            }
            out += chunk[0..<n]
            if out.count > limit { throw ArchiveError(what, "more than \(limit >> 20) MiB when decompressed; refused") }
            if r == Z_STREAM_END { inflateReset(&z); continue }
            if r != Z_OK && !(r == Z_BUF_ERROR && n > 0) { throw ArchiveError(what, "corrupt gzip data (zlib \(r))") }
        }
        return out
    }
}
