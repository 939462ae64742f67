import CArchive
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Turns an upper directory into an OCI layer tar: 0/0 devices become
/// `.wh.NAME`, opaque marks `.wh..wh..opq`, overlay metadata is dropped. The
/// same tree always gives the same bytes (names sorted, PAX headers with
/// no user or group names, no access or change times), so diff IDs are
/// reproducible.
public struct LayerWriter: Sendable {
    public init() {}

    public func write(directory: String, to fd: Int32) throws(ArchiveError) {
        guard let a = archive_write_new() else { throw ArchiveError(directory, "libarchive: out of memory") }
        defer { archive_write_free(a) }
        // Full PAX: nanosecond mtimes and xattrs survive (no atime or ctime is set).
        archive_write_set_format_pax(a)
        archive_write_set_bytes_in_last_block(a, 1)
        if archive_write_open_fd(a, fd) != ARCHIVE_OK { throw ArchiveError(directory, errorString(a)) }
        let root: UniqueFD
        do throws(Errno) { root = try Sys.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } catch { throw ArchiveError(directory, "open: \(error)") }
        var links: [String: String] = [:]      // "dev:ino" of a multiply linked file -> first path
        try walk(a, root.raw, prefix: "", links: &links)
        if archive_write_close(a) != ARCHIVE_OK { throw ArchiveError(directory, errorString(a)) }
    }

    /// One entry of a layer given as a list of changes (the btrfs driver's
    /// commit), paths relative to the tree's root.
    public enum Item: Sendable, Equatable {
        /// The entry as it is in the tree (a directory without what it holds).
        case entry(String)
        /// A directory made again: the entry, then its opaque marker.
        case opaqueDirectory(String)
        /// A deletion: `.wh.NAME` beside where it was.
        case whiteout(String)
    }

    /// A layer tar of `items` (in tar order: a directory before what it
    /// holds), read from the tree at `root`; the same bytes for the same
    /// entries as `write(directory:)` gives for an upper directory.
    public func write(items: [Item], root rootPath: String, to fd: Int32) throws(ArchiveError) {
        guard let a = archive_write_new() else { throw ArchiveError(rootPath, "libarchive: out of memory") }
        defer { archive_write_free(a) }
        archive_write_set_format_pax(a)
        archive_write_set_bytes_in_last_block(a, 1)
        if archive_write_open_fd(a, fd) != ARCHIVE_OK { throw ArchiveError(rootPath, errorString(a)) }
        let root: UniqueFD
        do throws(Errno) { root = try Sys.open(rootPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } catch { throw ArchiveError(rootPath, "open: \(error)") }
        var links: [String: String] = [:]
        // The last parent opened: a directory's entries come together.
        var kept: (path: Substring, dir: OwnedFD)? = nil
        for item in items {
            let path: String
            switch item { case .entry(let p), .opaqueDirectory(let p), .whiteout(let p): path = p }
            let slash = path.lastIndex(of: "/")
            let parent = slash.map { path[..<$0] } ?? ""
            let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
            if case .whiteout = item {
                try emit(a, (slash == nil ? "" : "\(parent)/") + OverlayFormat.whiteoutName(for: name), type: Linux.S_IFREG, mode: 0o644,
                         st: nil, dfd: nil, name: nil)
                continue
            }
            if kept?.path != parent {
                kept = nil
                // Beneath the root, no symlink followed: the tree is a container's.
                do throws(Errno) {
                    let d = parent.isEmpty ? try Sys.openat(root.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                        : try Sys.openBeneath(root.raw, String(parent), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, noSymlinks: true)
                    kept = (parent, OwnedFD(d))
                } catch { throw ArchiveError(path, "open its directory: \(error)") }
            }
            guard let dfd = kept?.dir.raw else { continue }
            var st = stat()
            if fstatat(dfd, name, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 { throw ArchiveError(path, "stat: \(currentErrno())") }
            let type = st.st_mode & Linux.S_IFMT
            try emitEntry(a, path, st: st, dfd: dfd, name: name, links: &links)
            if case .opaqueDirectory = item, type == Linux.S_IFDIR {
                try emit(a, path + "/" + OverlayFormat.opaqueName, type: Linux.S_IFREG, mode: 0o644, st: nil, dfd: nil, name: nil)
            }
        }
        if archive_write_close(a) != ARCHIVE_OK { throw ArchiveError(rootPath, errorString(a)) }
    }

    private func names(_ dfd: Int32) throws(ArchiveError) -> [String] {
        let out: [String]
        do throws(Errno) { out = try Sys.directoryNames(dfd) } catch { throw ArchiveError("", "opendir: \(error)") }
        // Byte order, not locale order: the same on every machine.
        return out.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    private func walk(_ a: OpaquePointer, _ dfd: Int32, prefix: String, links: inout [String: String]) throws(ArchiveError) {
        for name in try names(dfd) {
            let path = prefix + name
            var st = stat()
            if fstatat(dfd, name, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 { throw ArchiveError(path, "stat: \(currentErrno())") }
            let type = st.st_mode & Linux.S_IFMT
            // A kernel whiteout is a 0/0 device, often with several links
            // (one shared inode): test for it before treating it as a link.
            if type == Linux.S_IFCHR && st.st_rdev == 0 {
                var w = st
                w.st_size = 0
                w.st_rdev = 0
                try emit(a, prefix + OverlayFormat.whiteoutName(for: name), type: Linux.S_IFREG, mode: 0o644, st: w, dfd: nil, name: nil)
                continue
            }
            try emitEntry(a, path, st: st, dfd: dfd, name: name, links: &links)
            if type == Linux.S_IFDIR {
                let sub: UniqueFD
                do throws(Errno) { sub = try Sys.openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) } catch { throw ArchiveError(path, "open: \(error)") }
                if isOpaque(dfd, name) {
                    try emit(a, path + "/" + OverlayFormat.opaqueName, type: Linux.S_IFREG, mode: 0o644, st: nil, dfd: nil, name: nil)
                }
                try walk(a, sub.raw, prefix: path + "/", links: &links)
            }
        }
    }

    /// One entry as it is on disk: a second name of a multiply linked file
    /// as a hard link to the first name written.
    private func emitEntry(_ a: OpaquePointer, _ path: String, st: stat, dfd: Int32, name: String,
                           links: inout [String: String]) throws(ArchiveError) {
        let type = st.st_mode & Linux.S_IFMT
        if type == Linux.S_IFREG && st.st_nlink > 1 {
            let key = "\(st.st_dev):\(st.st_ino)"
            if let first = links[key] {
                try emit(a, path, type: Linux.S_IFREG, mode: st.st_mode & 0o7777, st: st, dfd: dfd, name: name, hardlink: first)
                return
            }
            links[key] = path
        }
        try emit(a, type == Linux.S_IFDIR ? path + "/" : path, type: type, mode: st.st_mode & 0o7777, st: st, dfd: dfd, name: name)
    }

    private func isOpaque(_ dfd: Int32, _ name: String) -> Bool {
        var v: UInt8 = 0
        let p = "/proc/self/fd/\(dfd)/\(name)"
        for x in [OverlayFormat.xattr("opaque", user: false), OverlayFormat.xattr("opaque", user: true)] {
            let n = withUnsafeMutableBytes(of: &v) { b in (try? PathXattr.get(p, x, into: b)) ?? -1 }
            if n == 1 && v == UInt8(ascii: "y") { return true }
        }
        return false
    }

    private func emit(_ a: OpaquePointer, _ path: String, type: UInt32, mode: UInt32, st: stat?, dfd: Int32?, name: String?,
                      hardlink: String? = nil) throws(ArchiveError) {
        guard let e = archive_entry_new() else { throw ArchiveError(path, "libarchive: out of memory") }
        defer { archive_entry_free(e) }
        archive_entry_set_pathname(e, path)
        archive_entry_set_filetype(e, type)
        archive_entry_set_perm(e, mode_t(mode))
        if let st {
            archive_entry_set_uid(e, la_int64_t(st.st_uid))
            archive_entry_set_gid(e, la_int64_t(st.st_gid))
            archive_entry_set_mtime(e, st.st_mtim.tv_sec, st.st_mtim.tv_nsec)
            if type == Linux.S_IFREG && hardlink == nil { archive_entry_set_size(e, la_int64_t(st.st_size)) }
            if type == Linux.S_IFCHR || type == Linux.S_IFBLK {
                archive_entry_set_rdevmajor(e, dev_t(Sys.major(UInt64(st.st_rdev))))
                archive_entry_set_rdevminor(e, dev_t(Sys.minor(UInt64(st.st_rdev))))
            }
        } else {
            archive_entry_set_size(e, 0)
        }
        if let hardlink { archive_entry_set_hardlink(e, hardlink) }
        var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        if type == Linux.S_IFLNK, let dfd, let name {
            let n = readlinkat(dfd, name, &target, target.count - 1)
            if n < 0 { throw ArchiveError(path, "readlink: \(currentErrno())") }
            target[n] = 0
            archive_entry_set_symlink(e, target)
        }
        if let dfd, let name { addXattrs(e, "/proc/self/fd/\(dfd)/\(name)") }
        if archive_write_header(a, e) < ARCHIVE_WARN { throw ArchiveError(path, errorString(a)) }
        if type == Linux.S_IFREG && hardlink == nil, let dfd, let name, let st, st.st_size > 0 {
            let file: UniqueFD
            do throws(Errno) { file = try Sys.openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) } catch { throw ArchiveError(path, "open: \(error)") }
            try writeData(a, from: file.raw, entry: path)
        }
    }

    /// Every xattr but overlay metadata, sorted for stable output.
    private func addXattrs(_ e: OpaquePointer, _ path: String) {
        var list = [CChar](repeating: 0, count: 65536)
        let n = list.withUnsafeMutableBytes { b in (try? PathXattr.list(path, into: b)) ?? 0 }
        guard n > 0 else { return }
        let names = list[0..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }.sorted()
        var value = [UInt8](repeating: 0, count: 65536)
        for x in names where !OverlayFormat.isOverlayXattr(x) {
            if let m = value.withUnsafeMutableBytes({ b in try? PathXattr.get(path, x, into: b) }) { archive_entry_xattr_add_entry(e, x, value, m) }
        }
    }
}

/// Streams a file's bytes into the current archive entry.
func writeData(_ a: OpaquePointer, from fd: Int32, entry: String) throws(ArchiveError) {
    let size = 1 << 20
    let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
    defer { buf.deallocate() }
    while true {
        let n = read(fd, buf, size)
        if n < 0 { throw ArchiveError(entry, "read: \(currentErrno())") }
        if n == 0 { return }
        if archive_write_data(a, buf, n) < 0 { throw ArchiveError(entry, errorString(a)) }
    }
}
