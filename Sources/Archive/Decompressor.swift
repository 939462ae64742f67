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
