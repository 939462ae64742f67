import CArchive
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A plain tar of named files and byte strings, for image archives
/// (`docker save`, OCI archives): fixed modes, owners and times, so the same
/// image always gives the same archive.
public final class TarBuilder {
    private let a: OpaquePointer
    private let file: UniqueFD
    private let path: String

    public convenience init(path: String) throws(ArchiveError) {
        try self.init(owning: try openOwned(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644, doing: "create"), label: path)
    }

    /// Onto an open descriptor (standard output, a pipe), which stays open:
    /// the builder writes through a duplicate of it.
    public convenience init(descriptor fd: Int32, label: String) throws(ArchiveError) {
        let own: UniqueFD
        do throws(Errno) { own = try UniqueFD(opened: fcntl(fd, F_DUPFD_CLOEXEC, 0)) } catch { throw ArchiveError(label, "dup: \(error)") }
        try self.init(owning: own, label: label)
    }

    private init(owning file: consuming UniqueFD, label path: String) throws(ArchiveError) {
        self.path = path
        self.file = file
        guard let w = archive_write_new() else { throw ArchiveError(path, "libarchive: out of memory") }
        a = w
        archive_write_set_format_pax_restricted(a)
        if archive_write_open_fd(a, self.file.raw) != ARCHIVE_OK { throw ArchiveError(path, errorString(a)) }
    }

    deinit { archive_write_free(a) }

    private func header(_ name: String, size: Int64) throws(ArchiveError) {
        guard let e = archive_entry_new() else { throw ArchiveError(name, "libarchive: out of memory") }
        defer { archive_entry_free(e) }
        archive_entry_set_pathname(e, name)
        archive_entry_set_filetype(e, Linux.S_IFREG)
        archive_entry_set_perm(e, 0o444)
        archive_entry_set_size(e, la_int64_t(size))
        archive_entry_set_mtime(e, 0, 0)
        if archive_write_header(a, e) < ARCHIVE_WARN { throw ArchiveError(name, errorString(a)) }
    }

    public func add(_ name: String, data: Data) throws(ArchiveError) {
        try header(name, size: Int64(data.count))
        let r = data.withUnsafeBytes { archive_write_data(a, $0.baseAddress, $0.count) }
        if r < 0 { throw ArchiveError(name, errorString(a)) }
    }

    public func add(_ name: String, file: String) throws(ArchiveError) {
        let src = try openOwned(file, O_RDONLY | O_CLOEXEC, doing: "open")
        var st = stat()
        fstat(src.raw, &st)
        try header(name, size: Int64(st.st_size))
        try writeData(a, from: src.raw, entry: name)
    }

    public func finish() throws(ArchiveError) {
        if archive_write_close(a) != ARCHIVE_OK { throw ArchiveError(path, errorString(a)) }
    }
}
