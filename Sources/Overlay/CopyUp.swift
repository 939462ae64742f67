import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Copy-up (the kernel's copy_up.c): parents first, then the object built in
/// `workdir/work` (data sparse-aware, by reflink where the filesystem can;
/// owner, mode, nanosecond times, xattrs) and renamed into place, so a crash
/// never shows a half-copied file. Two concurrent copy-ups become one.
extension Overlay {
    /// `metadataOnly`: the change needs only the metadata up (chown, chmod,
    /// utimes, xattrs, link, rename); with metacopy=on a regular file's data
    /// then stays below. Without it, or for a write, the data comes too.
    public func copyUp(_ n: OverlayNode, metadataOnly: Bool = false) throws(Errno) {
        guard upper != nil, let work else { throw .readOnlyFileSystem }
        let (inUpper, metacopy, indexed, lowerNlink) = n.state.withLock { ($0.place.inUpper, $0.place.metacopy, $0.place.indexName != nil, $0.place.lowerNlink) }
        // An indexed inode is up already too, in the index (its data, or
        // metadata only); a lower hard link goes there below.
        if inUpper || indexed {
            if metacopy && !metadataOnly { try copyUpData(n) }
            return
        }
        let indexing = index != nil && !n.isDirectory && lowerNlink > 1
        let metaOnly = metadataOnly && config.metacopy && !n.isDirectory
        // The kernel serves those opens from the lower file directly and
        // cannot be moved to another; refuse rather than split the file. The
        // kernel sends RELEASE after close() returns, so give a just-closed
        // reader up to a second first. (A metadata-only copy leaves the data
        // where they read it.)
        if !metaOnly { try waitForLowerPassthrough(n) }
        try n.copyUpLock.withLock { (_: inout Void) throws(Errno) in
            let s = n.snapshot
            if s.place.inUpper || s.place.indexName != nil { return }
            guard let parent = s.place.parent else { return }
            try copyUp(parent)
            try withDirFD(parent, s.place.topLayer) { (src: Int32) throws(Errno) in
                try withDirFD(parent, 0) { (dst: Int32) throws(Errno) in
                    try withStoredName(s.place.name) { (name: UnsafePointer<CChar>) throws(Errno) in
                        var into: [UInt8]? = nil
                        if indexing, let index {
                            guard let fh = Self.handle(src, name, uuid: index.uuids[s.place.topLayer], upper: false) else { throw .notSupported }
                            into = fh
                        }
                        try copyObject(n, from: src, to: dst, name: name, work: work.raw, metadataOnly: metaOnly, indexing: into)
                    }
                }
            }
        }
    }

    func waitForLowerPassthrough(_ n: OverlayNode) throws(Errno) {
        var waited = 0
        while n.state.withLock({ $0.opens.passthroughLower }) > 0 {
            if waited >= 1000 { throw .textFileBusy }
            usleep(1000)
            waited += 1
        }
    }

    /// `indexing`: the lower file's overlay handle; the copy is then built
    /// as its index entry and `dst/name` linked to it (index=on).
    private func copyObject(_ n: OverlayNode, from src: Int32, to dst: Int32, name: UnsafePointer<CChar>, work: Int32,
                            metadataOnly: Bool, indexing: [UInt8]? = nil) throws(Errno) {
        var st = stat()
        try check(fstatat(src, name, &st, Linux.AT_SYMLINK_NOFOLLOW))
        let type = st.st_mode & Linux.S_IFMT
        let metaOnly = metadataOnly && type == Linux.S_IFREG
        // Files and directories are finished through a descriptor of the
        // copy: no path (and no /proc path) is looked up again per call.
        var copy = UniqueFD()
        // A regular file is built nameless (O_TMPFILE, as the kernel's
        // ovl_copy_up_tmpfile does) and linked into place whole: no entry in
        // work/ to make, rename away or clean up after a crash. Where the
        // upper filesystem has no O_TMPFILE, a named file in work/.
        if type == Linux.S_IFREG {
            // Made with its permissions (the daemon's umask is 0), so that
            // most copies need no fchmod.
            do throws(Errno) {
                copy = try Sys.openat(work, ".", Linux.O_TMPFILE | O_WRONLY | O_CLOEXEC, st.st_mode & 0o777)
            } catch {
                guard error == .notSupported || error == .isDirectory || error == .invalidArgument else { throw error }
            }
        }
        let anon = copy.isOpen
        let tmp = anon ? "" : "#strata-\(n.id)-\(UInt32.random(in: 0...UInt32.max))"
        var built = false
        defer { if !built && !anon { removeTree(work, tmp) } }
        switch type {
        case Linux.S_IFDIR:
            try check(mkdirat(work, tmp, 0o700))
            copy = try Sys.openat(work, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        case Linux.S_IFREG where metaOnly:
            // The kernel's metadata-only copy: the size without the data (a
            // sparse file), marked so that lookups find the data below.
            if !anon { copy = try Sys.openat(work, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
            try check(ftruncate(copy.raw, off_t(st.st_size)))
            try Sys.setxattr(fd: copy.raw, metacopyXattr, "")
        case Linux.S_IFREG:
            // The data of a lower metadata-only copy is further down.
            let input = try openData(n, flags: O_RDONLY)
            if !anon { copy = try Sys.openat(work, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
            try copyData(from: input.raw, to: copy.raw, size: Int64(st.st_size))
        case Linux.S_IFLNK:
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let len = try check(readlinkat(src, name, &buf, buf.count - 1))
            buf[len] = 0
            try check(symlinkat(buf, work, tmp))
        default:
            try check(mknodat(work, tmp, st.st_mode, st.st_rdev))
        }
        // One name of a lower hard link, copied up without index=on, is a
        // file of its own from now on, as in the kernel (ovl_getattr keeps
        // the lower st_ino only for directories, single links and indexed
        // inodes): its own st_ino and link count, and no origin, so a
        // remount agrees. Keeping the twin's number would make `tar` and
        // naive diffs archive the changed name as a link to the other one.
        let breaksLink = type != Linux.S_IFDIR && st.st_nlink > 1 && indexing == nil
        // Otherwise record the origin's inode number so st_ino survives the
        // copy-up, and the kernel's handle of it (see KernelMarks), which an
        // indexed copy records on its index entry instead.
        let origin = String(n.ino)
        let kernelOrigin = breaksLink || indexing != nil ? nil : originHandle(src, name, layer: n.snapshot.place.topLayer)
        let times = [st.st_atim, st.st_mtim]
        let ofd = copy.raw
        if copy.isOpen {
            // A new file is the daemon's and its group's (work/ is ours,
            // not setgid); chown clears set-id bits, so the mode comes after.
            let owned = st.st_uid == euid && st.st_gid == egid && !workIsSetgid
            if !owned && fchown(ofd, st.st_uid, st.st_gid) != 0 && euid == 0 { throw currentErrno() }
            let made = anon ? st.st_mode & 0o777 & ~processUmask : 0o600
            if st.st_mode & 0o7777 != made { try check(fchmod(ofd, st.st_mode & 0o7777)) }
            try copyXattrs(from: src, name, to: ofd)
            if !breaksLink { try? Sys.setxattr(fd: ofd, originXattr, origin) }
            if let fh = kernelOrigin { try? Sys.setxattr(fd: ofd, kernelOriginXattr, bytes: fh) }
            try check(futimens(ofd, times))
        } else {
            if fchownat(work, tmp, st.st_uid, st.st_gid, Linux.AT_SYMLINK_NOFOLLOW) != 0 && euid == 0 { throw currentErrno() }
            if type != Linux.S_IFLNK { try check(fchmodat(work, tmp, st.st_mode & 0o7777, 0)) }
            try copyXattrs(from: "/proc/self/fd/\(src)/\(String(cString: name))", to: "/proc/self/fd/\(work)/\(tmp)")
            if !breaksLink { try? PathXattr.set("/proc/self/fd/\(work)/\(tmp)", originXattr, origin) }
            if let fh = kernelOrigin { try? Sys.setxattr(work, tmp, kernelOriginXattr, bytes: fh) }
            try check(utimensat(work, tmp, times, Linux.AT_SYMLINK_NOFOLLOW))
        }
        // As the kernel: the directory now holds an entry with an origin.
        if kernelOrigin != nil || indexing != nil { markImpure(dst) }
        if let fh = indexing, let index {
            try placeInIndex(index, fh, st, tmp: tmp, anon: anon, ofd: ofd, work: work, dst: dst, name: name)
            n.state.withLock { $0.place.indexName = Self.indexName(fh) }
        } else if anon {
            try linkNameless(ofd, dst, name)
        } else {
            try Sys.renameat2(work, tmp, dst, name, flags: Linux.RENAME_NOREPLACE)
        }
        built = true
        copyUps.add(1, ordering: .relaxed)
        var ust = stat()
        if copy.isOpen { fstat(ofd, &ust) } else { fstatat(dst, name, &ust, Linux.AT_SYMLINK_NOFOLLOW) }
        let old = n.snapshot.place.key
        let new = InodeKey(dev: UInt64(ust.st_dev), ino: UInt64(ust.st_ino))
        n.state.withLock { s in
            s.place.inUpper = true
            s.place.key = new
            if type == Linux.S_IFDIR && deviceWhiteouts { s.caches.upperHoldsNoWhFiles = true }
            if metaOnly {
                // Readers keep reading the data where it is.
                s.place.metacopy = true
                if s.place.dataLayer == nil {
                    s.place.dataLayer = s.place.lower
                    s.caches.dataBlocks = st.st_blocks          // the file just copied from
                }
                return
            }
            s.place.metacopy = false
            s.place.dataLayer = nil
            moveFollowers(&s, to: dst, name)
        }
        table.rekey(n, from: old, to: new)
        if breaksLink {
            n.inoValue.store(inoFor(UInt64(ust.st_ino), layer: 0), ordering: .relaxed)
            attributesChanged(n)
        }
    }

    /// The kernel's indexed copy-up: the copy, marked with its origin and a
    /// link count relative to the lower file's ("L+0", true whatever links
    /// the copy has), becomes the index entry, then the upper name is
    /// linked to it and the count recorded relative to the copy's own.
    private func placeInIndex(_ index: UnionIndex, _ fh: [UInt8], _ st: stat, tmp: String, anon: Bool, ofd: Int32, work: Int32,
                              dst: Int32, name: UnsafePointer<CChar>) throws(Errno) {
        try withStoredName(Self.indexName(fh)) { (hex: UnsafePointer<CChar>) throws(Errno) in
            let l0 = "L+0"
            if ofd >= 0 {
                try Sys.setxattr(fd: ofd, kernelOriginXattr, bytes: fh)
                try Sys.setxattr(fd: ofd, nlinkXattr, l0)
            } else {
                try Sys.setxattr(work, tmp, kernelOriginXattr, bytes: fh)
                try Sys.setxattr(work, tmp, nlinkXattr, l0)
            }
            if !config.volatile && ofd >= 0 { _ = fsync(ofd) }
            if anon {
                try linkNameless(ofd, index.dir.raw, hex)
            } else {
                try Sys.renameat2(work, tmp, index.dir.raw, hex, flags: Linux.RENAME_NOREPLACE)
            }
            if linkat(index.dir.raw, hex, dst, name, 0) != 0 {
                let e = currentErrno()
                unlinkat(index.dir.raw, hex, 0)
                throw e
            }
            writeNlink(index.dir.raw, hex, nlink: Int(st.st_nlink), upperNlink: 2)
        }
    }

    /// Gives the nameless file `fd` (O_TMPFILE) the name `dir/name`, never
    /// replacing one: by its descriptor where the process may (root), else
    /// through its /proc link.
    func linkNameless(_ fd: Int32, _ dir: Int32, _ name: UnsafePointer<CChar>) throws(Errno) {
        if linkat(fd, "", dir, name, Linux.AT_EMPTY_PATH) == 0 { return }
        let e = currentErrno()
        guard e == .noSuchFileOrDirectory || e == .notPermitted else { throw e }
        try check(linkat(AT_FDCWD, "/proc/self/fd/\(fd)", dir, name, Linux.AT_SYMLINK_FOLLOW))
    }

    /// Points the descriptors of readers served by the daemon at the upper
    /// copy `dir/name` (dup2), as the kernel switches its real file after a
    /// copy-up; called under the node's lock, once the data is there.
    func moveFollowers(_ s: inout OverlayNode.State, to dir: Int32, _ name: UnsafePointer<CChar>) {
        for fd in s.opens.following {
            if let copy = try? Sys.openat(dir, name, dir == AT_FDCWD ? O_RDONLY | O_CLOEXEC : O_RDONLY | O_NOFOLLOW | O_CLOEXEC) {
                dup2(copy.raw, fd)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
        }
    }

    /// Data: a reflink where the filesystem shares extents, else the data
    /// ranges only (holes stay holes), by copy_file_range.
    func copyData(from i: Int32, to o: Int32, size: Int64) throws(Errno) {
        if (try? Sys.cloneFile(o, from: i)) == nil {
            var pos: Int64 = 0
            while pos < size {
                let data = lseek(i, off_t(pos), Linux.SEEK_DATA)
                if data < 0 { break }                       // ENXIO: only a hole is left
                var hole = lseek(i, off_t(data), Linux.SEEK_HOLE)
                if hole < 0 { hole = off_t(size) }
                var inOff = Int64(data), outOff = Int64(data)
                while inOff < Int64(hole) {
                    let n: Int
                    do throws(Errno) {
                        n = try Sys.copyFileRange(i, &inOff, o, &outOff, Int(Int64(hole) - inOff))
                    } catch {
                        // Across filesystems (or where unsupported): plain copies.
                        guard error == .improperLink || error == .notSupported || error == .invalidArgument || error == .noFunction else { throw error }
                        try copyRange(i, o, from: inOff, to: Int64(hole))
                        break
                    }
                    if n == 0 { break }
                }
                pos = Int64(hole)
            }
            try check(ftruncate(o, off_t(size)))
        }
        if !config.volatile { try check(fsync(o)) }
    }

    private func copyRange(_ i: Int32, _ o: Int32, from start: Int64, to end: Int64) throws(Errno) {
        let size = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { buf.deallocate() }
        var pos = start
        while pos < end {
            let n = pread(i, buf, min(size, Int(end - pos)), off_t(pos))
            if n < 0 { if currentErrno() == .interrupted { continue }; throw currentErrno() }
            if n == 0 { break }
            var done = 0
            while done < n {
                let w = pwrite(o, buf + done, n - done, off_t(pos) + off_t(done))
                if w < 0 { if currentErrno() == .interrupted { continue }; throw currentErrno() }
                done += w
            }
            pos += Int64(n)
        }
    }

    /// Copies every xattr of `dir/name` but the overlay's own to the open
    /// copy `to` (listxattrat and getxattrat: no path through /proc).
    func copyXattrs(from dir: Int32, _ name: UnsafePointer<CChar>, to fd: Int32) throws(Errno) {
        try withUnsafeTemporaryAllocation(of: CChar.self, capacity: 65536) { (names: UnsafeMutableBufferPointer<CChar>) throws(Errno) in
            guard let base = names.baseAddress else { return }
            let len = (try? Sys.listxattr(dir, name, into: UnsafeMutableRawBufferPointer(names))) ?? 0
            if len <= 0 { return }
            var value = [UInt8](repeating: 0, count: 65536)
            var start = 0
            while start < len {
                let attr = base + start
                let l = strlen(attr)
                start += l + 1
                let key = String(cString: attr)
                if isPrivateXattr(key) { continue }
                guard let n = value.withUnsafeMutableBytes({ try? Sys.getxattr(dir, name, attr, into: $0) }) else { continue }
                do throws(Errno) {
                    try Sys.setxattr(fd: fd, attr, bytes: value, count: n)
                } catch {
                    // security.* may be refused by policy; anything else is real.
                    if !key.hasPrefix("security.") && error != .notSupported { throw error }
                }
            }
        }
    }

    /// Copies every xattr but the overlay's own.
    func copyXattrs(from: String, to: String) throws(Errno) {
        var names = [CChar](repeating: 0, count: 65536)
        let len = names.withUnsafeMutableBytes { b in (try? PathXattr.list(from, into: b)) ?? 0 }
        if len <= 0 { return }
        var value = [UInt8](repeating: 0, count: 65536)
        let list = names[0..<len].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        for name in list {
            if isPrivateXattr(name) { continue }
            guard let n = value.withUnsafeMutableBytes({ b in try? PathXattr.get(from, name, into: b) }) else { continue }
            do throws(Errno) {
                try PathXattr.set(to, name, bytes: value, count: n)
            } catch {
                // security.* may be refused by policy; anything else is real.
                if !name.hasPrefix("security.") && error != .notSupported { throw error }
            }
        }
    }

    /// Overlay metadata (not the user's escaped `<prefix>overlay.*` names),
    /// and fuse-overlayfs's own, which layers it wrote carry.
    public func isPrivateXattr(_ name: String) -> Bool {
        let p = config.xattrPrefix
        if name.hasPrefix("user.fuseoverlayfs.") || name.hasPrefix("trusted.fuseoverlayfs.") { return true }
        return name.hasPrefix(p) && !name.hasPrefix(p + "overlay.")
    }
}
