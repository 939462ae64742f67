import CArchive
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Applies a layer archive (tar, any compression libarchive reads) to a new
/// directory in the overlay on-disk format: `.wh.NAME` becomes a whiteout,
/// `.wh..wh..opq` an opaque mark on its directory. Everything is built in a
/// sibling `.partial` directory and renamed into place, so a refused or
/// truncated archive leaves nothing behind.
public struct LayerApplier: Sendable {
    /// Whiteouts as 0/0 character devices (needs CAP_MKNOD) rather than `.wh.` files.
    public var deviceWhiteouts = geteuid() == 0
    /// Where the opaque mark goes: `trusted.overlay.opaque`, or the user
    /// namespace for rootless stores.
    public var opaqueXattr = OverlayFormat.xattr("opaque", user: geteuid() != 0)
    /// Owners and device nodes need root; without it they are skipped and counted.
    public var privileged = geteuid() == 0
    /// Whiteouts as deletions, as Docker's btrfs and vfs drivers apply a
    /// layer onto a copy of its parent: `.wh.NAME` removes NAME, an opaque
    /// marker removes what the directory held before this layer (see
    /// `apply(fd:onto:)`).
    public var whiteoutsAsDeletions = false

    public struct Stats: Sendable {
        public var entries = 0
        public var bytes: Int64 = 0
        public var whiteouts = 0
        public var opaque = 0
        /// Entries that need root (devices, owners) skipped when unprivileged.
        public var skipped = 0
        /// Whiteouts under a non-directory of the same layer (umoci writes a
        /// directory replaced by a file as the file, then whiteouts below
        /// it): they hide nothing, so they are dropped, and the first named.
        public var droppedWhiteouts = 0
        public var firstDroppedWhiteout: String?

        /// One line for the user about what was accepted but not applied.
        public var warning: String? {
            guard let first = firstDroppedWhiteout else { return nil }
            return "dropped \(droppedWhiteouts) whiteout\(droppedWhiteouts == 1 ? "" : "s") under a non-directory (first: \(first)); they hide nothing"
        }
    }

    public init() {}

    public func apply(file path: String, to dest: String) throws(ArchiveError) -> Stats {
        let file: UniqueFD
        do throws(Errno) { file = try Sys.open(path, O_RDONLY | O_CLOEXEC) } catch { throw ArchiveError(path, "open: \(error)") }
        return try apply(fd: file.raw, to: dest, label: path)
    }

    public func apply(fd: Int32, to dest: String, label: String = "layer") throws(ArchiveError) -> Stats {
        try intoStaging(dest) { (root: Int32, staging: String) throws(ArchiveError) -> Stats in
            try extract(fd: fd, root: root, rootPath: staging, label: label)
        }
    }

    /// Applies a layer onto `existing`, a writable copy of its parent's
    /// tree (a Btrfs snapshot), whiteouts as deletions. There is no staging:
    /// a refused archive leaves the copy half changed, and the caller drops
    /// the copy (a snapshot is cheap to make again).
    public func apply(fd: Int32, onto existing: String, label: String = "layer") throws(ArchiveError) -> Stats {
        var applier = self
        applier.whiteoutsAsDeletions = true
        let root: UniqueFD
        do throws(Errno) { root = try Sys.open(existing, Linux.O_PATH | O_DIRECTORY | O_CLOEXEC) } catch { throw ArchiveError(existing, "open: \(error)") }
        return try applier.extract(fd: fd, root: root.raw, rootPath: existing, label: label)
    }

    /// Builds a layer in a sibling `.partial` directory (its root given to
    /// `body` as a descriptor) and renames it into place once whole.
    private func intoStaging(_ dest: String, _ body: (Int32, String) throws(ArchiveError) -> Stats) throws(ArchiveError) -> Stats {
        var st = stat()
        if lstat(dest, &st) == 0 { throw ArchiveError(dest, "destination already exists") }
        let staging = dest + ".partial-\(UInt32.random(in: 0...UInt32.max))"
        if mkdir(staging, 0o755) != 0 { throw ArchiveError(staging, "mkdir: \(currentErrno())") }
        var ok = false
        defer { if !ok { removeTree(path: staging) } }
        let root: UniqueFD
        do throws(Errno) { root = try Sys.open(staging, Linux.O_PATH | O_DIRECTORY | O_CLOEXEC) } catch { throw ArchiveError(staging, "open: \(error)") }
        let stats = try body(root.raw, staging)
        do throws(Errno) {
            try Sys.renameat2(AT_FDCWD, staging, AT_FDCWD, dest, flags: Linux.RENAME_NOREPLACE)
        } catch {
            throw ArchiveError(dest, "rename into place: \(error)")
        }
        ok = true
        return stats
    }

    /// What applying keeps between entries.
    struct ApplyState {
        var stats = Stats()
        var dirTimes: [(ArraySlice<String>, String, timespec)] = []
        // The previous entry's parent, kept open: archives list a
        // directory's entries together, and resolving the parent from the
        // layer root costs an openat per component. It can never name a
        // replaced directory: replacing one needs an entry whose parent is
        // that directory's parent, which then becomes the kept one.
        var kept: (path: ArraySlice<String>, dir: OwnedFD)? = nil
        /// What this layer placed (for an opaque marker applied as
        /// deletions: the directory keeps these, loses the rest).
        var placed = Set<String>()
    }

    /// Where a regular file's data comes from: the archive being read, or
    /// nowhere yet (a lazily pulled layer: the file gets its size as a
    /// hole and `mark`, naming its data, until the data is fetched).
    enum FileData {
        case archive(OpaquePointer)
        case later(xattr: String, mark: (OpaquePointer) -> String?)
    }

    func extract(fd: Int32, root: Int32, rootPath: String, label: String) throws(ArchiveError) -> Stats {
        guard let a = archive_read_new() else { throw ArchiveError(label, "libarchive: out of memory") }
        defer { archive_read_free(a) }
        archive_read_support_filter_all(a)
        archive_read_support_format_tar(a)
        if archive_read_open_fd(a, fd, 1 << 16) != ARCHIVE_OK {
            throw ArchiveError(label, "not a readable archive: \(errorString(a))")
        }
        var state = ApplyState()
        var entry: OpaquePointer? = nil
        var lastName = ""
        while true {
            let r = archive_read_next_header(a, &entry)
            if r == ARCHIVE_EOF { break }
            if r < ARCHIVE_WARN || entry == nil {
                throw ArchiveError(lastName.isEmpty ? "" : "after \(lastName)",
                                   "corrupt or truncated archive\(lastName.isEmpty ? " in its first entry" : ""): \(errorString(a))",
                                   kind: .truncated)
            }
            guard let e = entry, let cpath = archive_entry_pathname(e) else { throw ArchiveError(label, "entry without a name") }
            lastName = String(cString: cpath)
            if try place(e, raw: lastName, root: root, state: &state, data: .archive(a)) { break }
        }
        finishDirectoryTimes(root: root, state)
        return state.stats
    }

    /// Applies entries that are described, not read (a TOC), as libarchive
    /// entries. Regular files are
    /// made as holes of their size, marked for their data (see `FileData`).
    public func apply(entries: [OpaquePointer], to dest: String,
                      markXattr: String, mark: @escaping (OpaquePointer) -> String?) throws(ArchiveError) -> Stats {
        try intoStaging(dest) { (root: Int32, _: String) throws(ArchiveError) -> Stats in
            var state = ApplyState()
            for e in entries {
                guard let cpath = archive_entry_pathname(e) else { throw ArchiveError(dest, "entry without a name") }
                _ = try place(e, raw: String(cString: cpath), root: root, state: &state, data: .later(xattr: markXattr, mark: mark))
            }
            finishDirectoryTimes(root: root, state)
            return state.stats
        }
    }

    /// Directory times last: creating their entries changed them.
    private func finishDirectoryTimes(root: Int32, _ state: ApplyState) {
        for (parentComponents, name, mtime) in state.dirTimes.reversed() {
            if let dir = try? openParent(root, parentComponents, entry: name, create: false) {
                let ts = [timespec(tv_sec: 0, tv_nsec: Linux.UTIME_OMIT), mtime]
                utimensat(dir.raw, name, ts, Linux.AT_SYMLINK_NOFOLLOW)
            }
        }
    }

    /// One entry into the layer. Returns true when the archive ended inside
    /// this entry's padding (accepted: see `copyData`) and nothing follows.
    private func place(_ e: OpaquePointer, raw: String, root: Int32, state: inout ApplyState,
                       data: FileData) throws(ArchiveError) -> Bool {
        let p = try LayerPath(raw)
        state.stats.entries += 1
        if p.isRoot { return false }
        let name = p.name
        let isWhiteout = name.hasPrefix(OverlayFormat.whiteoutPrefix)
        let parentDir: OwnedFD
        if let k = state.kept, k.path == p.parent {
            parentDir = k.dir
        } else {
            do throws(ArchiveError) {
                parentDir = try openParent(root, p.parent, entry: raw, create: true)
            } catch where isWhiteout && error.kind == .throughNonDirectory {
                // Nothing below a non-directory is looked up in a layer:
                // the whiteout hides nothing and nothing is written for it.
                state.stats.droppedWhiteouts += 1
                if state.stats.firstDroppedWhiteout == nil { state.stats.firstDroppedWhiteout = raw }
                return false
            }
            state.kept = (p.parent, parentDir)
        }
        let parent = parentDir.raw
        if isWhiteout && whiteoutsAsDeletions {
            try deletion(parent, name, dirPath: p.parent.joined(separator: "/"), entry: raw, state: &state)
            return false
        }
        if whiteoutsAsDeletions { state.placed.insert((p.parent + [name]).joined(separator: "/")) }
        if isWhiteout {
            try whiteout(parent, name, entry: raw, stats: &state.stats)
            // The whiteout keeps the entry's time, so a layer applies
            // to the same tree every time.
            let target: String? = if case .target(let t) = OverlayFormat.whiteout(name) { t } else { nil }
            if let target {
                let ts = [timespec(tv_sec: Int(archive_entry_mtime(e)), tv_nsec: Int(archive_entry_mtime_nsec(e))),
                          timespec(tv_sec: Int(archive_entry_mtime(e)), tv_nsec: Int(archive_entry_mtime_nsec(e)))]
                utimensat(parent, deviceWhiteouts ? target : name, ts, Linux.AT_SYMLINK_NOFOLLOW)
            }
            return false
        }
        if let hl = archive_entry_hardlink(e) {
            let target = try LayerPath(String(cString: hl))
            if target.isRoot { throw ArchiveError(raw, "hard link to the layer root") }
            let tparent = try openParent(root, target.parent, entry: raw, create: false)
            removeExisting(parent, name)
            if linkat(tparent.raw, target.name, parent, name, 0) != 0 {
                throw ArchiveError(raw, "hard link to \(target.original): \(currentErrno())")
            }
            return false
        }
        let type = UInt32(archive_entry_filetype(e))
        let mode = UInt32(archive_entry_perm(e))
        switch type {
        case Linux.S_IFREG:
            removeExisting(parent, name)
            let file: UniqueFD
            do throws(Errno) {
                file = try Sys.openat(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            } catch {
                throw ArchiveError(raw, "create: \(error)")
            }
            let out = file.raw
            let size = Int64(archive_entry_size(e))
            var ended = false
            switch data {
            case .archive(let a):
                let (copied, end) = try copyData(a, e, to: out, size: size, entry: raw)
                state.stats.bytes += copied
                ended = end
            case .later(let xattr, let mark):
                if size > 0, let m = mark(e) {
                    do throws(Errno) { try Sys.setxattr(fd: out, xattr, m) } catch {
                        throw ArchiveError(raw, "marking its data as not yet fetched: \(error)")
                    }
                }
                state.stats.bytes += size
            }
            if ftruncate(out, off_t(size)) != 0 { throw ArchiveError(raw, "truncate: \(currentErrno())") }
            if ended {
                // The last file's data is whole; only its padding and the
                // end-of-archive blocks are missing (umoci writes such
                // layers, podman loads them).
                try metadata(e, parent, name, type: type, mode: mode, entry: raw, stats: &state.stats)
                return true
            }
        case Linux.S_IFDIR:
            var st = stat()
            if fstatat(parent, name, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & Linux.S_IFMT != Linux.S_IFDIR {
                unlinkat(parent, name, 0)
            }
            if mkdirat(parent, name, 0o700) != 0 && currentErrno() != .fileExists { throw ArchiveError(raw, "mkdir: \(currentErrno())") }
        case Linux.S_IFLNK:
            guard let t = archive_entry_symlink(e) else { throw ArchiveError(raw, "symlink without a target") }
            removeExisting(parent, name)
            if symlinkat(t, parent, name) != 0 { throw ArchiveError(raw, "symlink: \(currentErrno())") }
        case Linux.S_IFCHR, Linux.S_IFBLK, Linux.S_IFIFO:
            if type != Linux.S_IFIFO && !privileged { state.stats.skipped += 1; return false }
            removeExisting(parent, name)
            let dev = Sys.makedev(UInt32(archive_entry_rdevmajor(e)), UInt32(archive_entry_rdevminor(e)))
            if mknodat(parent, name, type | mode, dev_t(dev)) != 0 { throw ArchiveError(raw, "mknod: \(currentErrno())") }
        default:
            state.stats.skipped += 1      // sockets have no place in a layer
            return false
        }
        try metadata(e, parent, name, type: type, mode: mode, entry: raw, stats: &state.stats)
        if type == Linux.S_IFDIR {
            state.dirTimes.append((p.parent, name, timespec(tv_sec: Int(archive_entry_mtime(e)), tv_nsec: Int(archive_entry_mtime_nsec(e)))))
        }
        return false
    }

    /// A whiteout applied as a deletion: `.wh.NAME` removes NAME (a tree
    /// with it); the opaque marker removes every child of its directory
    /// that this layer did not place.
    private func deletion(_ parent: Int32, _ name: String, dirPath: String, entry: String, state: inout ApplyState) throws(ArchiveError) {
        if name == OverlayFormat.opaqueName {
            let children: [String]
            do throws(Errno) { children = try Sys.directoryNames(parent) } catch { throw ArchiveError(entry, "opaque directory: \(error)") }
            for c in children where !state.placed.contains(dirPath.isEmpty ? c : dirPath + "/" + c) { removeExisting(parent, c) }
            state.stats.opaque += 1
            return
        }
        let target = try whiteoutTarget(name, entry: entry)
        removeExisting(parent, target)
        state.placed.remove(dirPath.isEmpty ? target : dirPath + "/" + target)
        state.stats.whiteouts += 1
    }

    /// The name a `.wh.NAME` entry deletes: one name in its directory,
    /// never empty, `.`, `..` or a path (hostile layers try all three).
    private func whiteoutTarget(_ name: String, entry: String) throws(ArchiveError) -> String {
        let target = String(name.dropFirst(4))
        if target.isEmpty { throw ArchiveError(entry, "whiteout '.wh.' names nothing") }
        if target == "." || target == ".." || target.contains("/") { throw ArchiveError(entry, "whiteout of '\(target)' is not a name") }
        return target
    }

    private func whiteout(_ parent: Int32, _ name: String, entry: String, stats: inout Stats) throws(ArchiveError) {
        if name == OverlayFormat.opaqueName {
            let path = "/proc/self/fd/\(parent)/."
            if (try? PathXattr.set(path, opaqueXattr, "y")) == nil {
                // Without xattrs, keep the OCI marker itself (Strata reads it).
                do throws(Errno) {
                    _ = try Sys.openat(parent, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0o000)
                } catch {
                    throw ArchiveError(entry, "opaque mark: \(error)")
                }
            }
            stats.opaque += 1
            return
        }
        let target = try whiteoutTarget(name, entry: entry)
        removeExisting(parent, target)
        if deviceWhiteouts {
            if mknodat(parent, target, Linux.S_IFCHR, 0) != 0 { throw ArchiveError(entry, "whiteout: \(currentErrno())") }
        } else {
            do throws(Errno) {
                _ = try Sys.openat(parent, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0o000)
            } catch {
                throw ArchiveError(entry, "whiteout: \(error)")
            }
        }
        stats.whiteouts += 1
    }

    /// Data blocks at their offsets: holes in the archive stay holes.
    /// Returns the bytes written and whether the archive ended right after
    /// them, inside the padding of the last block (a whole entry: accepted).
    /// A regular entry whose data stops short of its declared size is refused,
    /// so no file is ever filled out with bytes that were not in the archive.
    private func copyData(_ a: OpaquePointer, _ e: OpaquePointer, to out: Int32, size declared: Int64,
                          entry: String) throws(ArchiveError) -> (Int64, Bool) {
        var total: Int64 = 0
        var buf: UnsafeRawPointer? = nil
        var size = 0
        var offset: la_int64_t = 0
        let sparse = archive_entry_sparse_count(e) > 0
        while true {
            let r = archive_read_data_block(a, &buf, &size, &offset)
            if r == ARCHIVE_EOF { break }
            if r < ARCHIVE_WARN {
                if !sparse && total == declared && declared % 512 != 0 {
                    return (total, true)
                }
                throw ArchiveError(entry, "corrupt or truncated data (\(total) of \(declared) bytes): \(errorString(a))",
                                   kind: .truncated)
            }
            guard let b = buf, size > 0 else { continue }
            var done = 0
            while done < size {
                let n = pwrite(out, b + done, size - done, off_t(offset) + off_t(done))
                if n < 0 { throw ArchiveError(entry, "write: \(currentErrno())") }
                done += n
            }
            total += Int64(size)
        }
        if !sparse && total != declared {
            throw ArchiveError(entry, "truncated data: \(total) of \(declared) bytes", kind: .truncated)
        }
        return (total, false)
    }

    private func metadata(_ e: OpaquePointer, _ parent: Int32, _ name: String, type: UInt32, mode: UInt32,
                          entry: String, stats: inout Stats) throws(ArchiveError) {
        if privileged {
            if fchownat(parent, name, UInt32(archive_entry_uid(e)), UInt32(archive_entry_gid(e)), Linux.AT_SYMLINK_NOFOLLOW) != 0 {
                throw ArchiveError(entry, "chown: \(currentErrno())")
            }
        }
        if type != Linux.S_IFLNK && fchmodat(parent, name, mode & 0o7777, 0) != 0 {
            throw ArchiveError(entry, "chmod: \(currentErrno())")
        }
        var xname: UnsafePointer<CChar>? = nil
        var xvalue: UnsafeRawPointer? = nil
        var xsize = 0
        if archive_entry_xattr_reset(e) > 0 {
            let path = "/proc/self/fd/\(parent)/\(name)"
            while archive_entry_xattr_next(e, &xname, &xvalue, &xsize) == ARCHIVE_OK {
                guard let xn = xname else { continue }
                let n = String(cString: xn)
                // Overlay metadata never comes from an archive.
                if OverlayFormat.isOverlayXattr(n) { continue }
                do throws(Errno) {
                    try PathXattr.set(path, n, UnsafeRawBufferPointer(start: xvalue, count: xsize), flags: 0)
                } catch {
                    if !privileged && n.hasPrefix("trusted.") { stats.skipped += 1; continue }
                    throw ArchiveError(entry, "xattr \(n): \(error)")
                }
            }
        }
        if type != Linux.S_IFDIR {
            // Access time as Docker's and containerd's unpackers give it:
            // never before the modification time, so a layer's tar without
            // access times (most are) gives files read last when written,
            // not in 1970.
            let mtime = timespec(tv_sec: Int(archive_entry_mtime(e)), tv_nsec: Int(archive_entry_mtime_nsec(e)))
            var atime = timespec(tv_sec: Int(archive_entry_atime(e)), tv_nsec: Int(archive_entry_atime_nsec(e)))
            if archive_entry_atime_is_set(e) == 0 || (atime.tv_sec, atime.tv_nsec) < (mtime.tv_sec, mtime.tv_nsec) { atime = mtime }
            utimensat(parent, name, [atime, mtime], Linux.AT_SYMLINK_NOFOLLOW)
        }
    }

    private func removeExisting(_ parent: Int32, _ name: String) {
        var st = stat()
        guard fstatat(parent, name, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if st.st_mode & Linux.S_IFMT == Linux.S_IFDIR { removeTree(parent, name) } else { unlinkat(parent, name, 0) }
    }
}

func errorString(_ a: OpaquePointer) -> String {
    let text = archive_error_string(a).map { String(cString: $0) } ?? "unknown libarchive error"
    // libarchive's own words ("Write error") do not say why; its errno does.
    let e = archive_errno(a)
    return e > 0 && !text.contains(String(cString: strerror(e))) ? "\(text): \(String(cString: strerror(e)))" : text
}
