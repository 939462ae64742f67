import CArchive
import Crypto
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Where a seekable layer's compressed members go: gzip members (eStargz)
/// or zstd frames (zstd:chunked). A member starts where the previous one
/// ended; `blobOffset` is where the next one starts.
protocol MemberSink: AnyObject {
    var blobOffset: Int64 { get }
    var blobDigest: String { get }
    func startMember() throws(ArchiveError)
    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError)
    func finishMember() throws(ArchiveError)
    func writeRaw(_ bytes: [UInt8]) throws(ArchiveError)
}

extension GzipMemberWriter: MemberSink {}

/// zstd:chunked's frames: a member's bytes are gathered (at most one chunk,
/// 4 MiB, or a run of tar headers) and compressed as one frame when it
/// ends, through libarchive's zstd filter.
final class ZstdFrameWriter: MemberSink {
    private let fd: Int32
    private let path: String
    private var pending: [UInt8] = []
    private(set) var blobOffset: Int64 = 0
    private var blobHash = SHA256()

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    var blobDigest: String { "sha256:" + blobHash.finalize().map { hex2($0) }.joined() }

    func startMember() throws(ArchiveError) { try finishMember() }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ArchiveError) { pending += bytes }

    func finishMember() throws(ArchiveError) {
        guard !pending.isEmpty else { return }
        let frame = try Self.compress(pending, what: path)
        pending.removeAll(keepingCapacity: true)
        try emit(frame)
    }

    func writeRaw(_ bytes: [UInt8]) throws(ArchiveError) {
        try finishMember()
        try emit(bytes)
    }

    private func emit(_ b: [UInt8]) throws(ArchiveError) {
        let n = b.withUnsafeBytes { p -> Int in
            guard let base = p.baseAddress else { return 0 }
            var done = 0
            while done < p.count {
                let w = Glibc.write(fd, base + done, p.count - done)
                if w < 0 { if errno == EINTR { continue }; return -1 }
                done += w
            }
            blobHash.update(bufferPointer: p)
            return done
        }
        if n < 0 { throw ArchiveError(path, "write: \(currentErrno())") }
        blobOffset += Int64(b.count)
    }

    /// One zstd frame of `data`.
    static func compress(_ data: [UInt8], what: String) throws(ArchiveError) -> [UInt8] {
        guard let a = archive_write_new() else { throw ArchiveError(what, "libarchive: out of memory") }
        defer { archive_write_free(a) }
        archive_write_add_filter_zstd(a)
        archive_write_set_format_raw(a)
        archive_write_set_bytes_per_block(a, 0)
        archive_write_set_bytes_in_last_block(a, 1)
        var out = [UInt8](repeating: 0, count: data.count + data.count / 64 + 4096)
        var used = 0
        let opened = out.withUnsafeMutableBytes { archive_write_open_memory(a, $0.baseAddress, $0.count, &used) }
        if opened != ARCHIVE_OK { throw ArchiveError(what, "zstd: \(errorString(a))") }
        guard let e = archive_entry_new() else { throw ArchiveError(what, "libarchive: out of memory") }
        defer { archive_entry_free(e) }
        archive_entry_set_filetype(e, UInt32(Linux.S_IFREG))
        archive_entry_set_size(e, la_int64_t(data.count))
        if archive_write_header(a, e) != ARCHIVE_OK { throw ArchiveError(what, "zstd: \(errorString(a))") }
        let n = data.withUnsafeBytes { archive_write_data(a, $0.baseAddress, $0.count) }
        if n != data.count || archive_write_close(a) != ARCHIVE_OK { throw ArchiveError(what, "zstd: \(errorString(a))") }
        return Array(out[0..<used])
    }
}

/// zstd:chunked's trailer: the TOC, compressed, in a skippable frame, then
/// a skippable frame saying where it is (as containers/storage writes it).
enum ZstdChunkedTrailer {
    static let skippableMagic: [UInt8] = [0x50, 0x2a, 0x4d, 0x18]
    static let footerMagic = Array("GnUlInUx".utf8)

    static func le64(_ v: Int64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: UInt64(bitPattern: v) >> (8 * UInt64($0))) } }
    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: UInt32(v) >> (8 * UInt32($0))) } }

    /// The skippable frame around the compressed TOC.
    static func tocFrame(_ compressed: [UInt8]) -> [UInt8] { skippableMagic + le32(compressed.count) + compressed }

    static func footer(offset: Int64, length: Int64, uncompressed: Int64) -> [UInt8] {
        skippableMagic + le32(40) + le64(offset) + le64(length) + le64(uncompressed) + le64(1) + footerMagic
    }
}
