import CArchive

/// A compressed file (gzip, zstd, xz, bzip2, or none) read back as its
/// plain bytes, through libarchive's filters: a layer's diff ID is taken
/// over the uncompressed tar.
public final class Decompressor {
    private let a: OpaquePointer
    private let path: String

    public init(path: String) throws(ArchiveError) {
        guard let a = archive_read_new() else { throw ArchiveError(path, "libarchive: out of memory") }
        self.a = a
        self.path = path
        archive_read_support_filter_all(a)
        archive_read_support_format_raw(a)
        if archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK {
            throw ArchiveError(path, archive_error_string(a).map { String(cString: $0) } ?? "unreadable")
        }
        var entry: OpaquePointer? = nil
        guard archive_read_next_header(a, &entry) == ARCHIVE_OK else { throw ArchiveError(path, "empty or unreadable") }
    }

    deinit { archive_read_free(a) }

    /// Fills up to `size` bytes at `buf`; 0 at the end.
    public func read(_ buf: UnsafeMutableRawPointer, _ size: Int) throws(ArchiveError) -> Int {
        let n = archive_read_data(a, buf, size)
        if n < 0 {
            throw ArchiveError(path, "corrupt compressed data: \(archive_error_string(a).map { String(cString: $0) } ?? "")", kind: .truncated)
        }
        return n
    }
}

/// zstd frames from memory (zstd:chunked: each file's data, and the TOC,
/// are frames of their own), through libarchive's zstd filter.
public enum Unzstd {
    /// The first `want` bytes the frames at the start of `data` hold (all of
    /// them, up to `limit`, when `want` is nil).
    public static func decode(_ data: UnsafeRawBufferPointer, want: Int?, limit: Int = 256 << 20, what: String) throws(ArchiveError) -> [UInt8] {
        guard let a = archive_read_new() else { throw ArchiveError(what, "libarchive: out of memory") }
        defer { archive_read_free(a) }
        archive_read_support_filter_zstd(a)
        archive_read_support_format_raw(a)
        guard let base = data.baseAddress, data.count > 0,
              archive_read_open_memory(a, base, data.count) == ARCHIVE_OK else {
            throw ArchiveError(what, "not zstd data")
        }
        var entry: OpaquePointer? = nil
        guard archive_read_next_header(a, &entry) == ARCHIVE_OK else { throw ArchiveError(what, "not zstd data") }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        let cap = want ?? limit
        while out.count < cap {
            let n = buf.withUnsafeMutableBytes { archive_read_data(a, $0.baseAddress, min($0.count, cap - out.count)) }
            if n < 0 { throw ArchiveError(what, "corrupt zstd data: \(archive_error_string(a).map { String(cString: $0) } ?? "")") }
            if n == 0 { break }
            out += buf[0..<n]
        }
        if let want, out.count < want { throw ArchiveError(what, "zstd data ends after \(out.count) of \(want) bytes", kind: .truncated) }
        if want == nil && out.count >= limit { throw ArchiveError(what, "more than \(limit >> 20) MiB when decompressed; refused") }
        return out
    }
}
