import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Who creates: new inodes get this owner (the daemon runs as root).
public struct Creator: Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) { self.uid = uid; self.gid = gid }
}

let sharedWhiteout = "#whiteout"

/// Creating, removing and renaming names (the kernel's dir.c).
extension Overlay {
    /// Whether a lower layer below `p` still has `name` (so removing it from
    /// the union needs a whiteout).
    func existsBelow(_ p: OverlayNode, _ name: FileName) throws(Errno) -> Bool {
        for l in p.state.withLock({ $0.place.lowerDirs }) {
            var st = stat()
            let probe = try withDirFD(p, l) { (pfd: Int32) -> LayerProbe in
                if fstatat(pfd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 {
                    return isWhiteout(st, pfd, name.pointer, marked: true) ? .whiteout : .entry(opaque: false, xwhiteouts: false)
                }
                return hasWhiteoutFile(pfd, name) ? .whiteout : .absent
            }
            switch probe {
            case .entry, .metacopy: return true
            case .whiteout: return false
            case .absent: continue
            }
        }
        return false
    }

    /// The kernel's work directory for whiteouts and entries on their way
    /// out: `index/` when index=on (the kernel's workdir is its indexdir
    /// then), else `work/`.
    var whiteoutWorkDir: Int32? { index?.dir.raw ?? work?.raw }

    /// Links the shared whiteout, a 0/0 device in the work directory, as
    /// `dir/name` (made first, or afresh at its link limit). False where no
    /// link can be made: the caller then makes a whiteout of its own.
    func linkSharedWhiteout(_ dir: Int32, _ name: UnsafePointer<CChar>) -> Bool {
        guard let w = whiteoutWorkDir else { return false }
        if linkat(w, sharedWhiteout, dir, name, 0) == 0 { return true }
        if currentErrno() == .fileExists { return false }
        // Missing, or at its link limit: make a fresh shared one.
        let tmp = "#whiteout-\(UInt32.random(in: 0...UInt32.max))"
        guard mknodat(w, tmp, Linux.S_IFCHR | 0o000, 0) == 0 else { return false }
        try? Sys.renameat2(w, tmp, w, sharedWhiteout)
        return linkat(w, sharedWhiteout, dir, name, 0) == 0
    }

    /// Writes a whiteout for `name` in the upper directory `ufd`. Device
    /// whiteouts are hard links to one shared 0/0 device in the work
    /// directory, as the kernel makes them since 5.8: a link costs far less
    /// than a new inode.
    func makeWhiteout(_ ufd: Int32, _ name: FileName) throws(Errno) {
        if deviceWhiteouts {
            if linkSharedWhiteout(ufd, name.pointer) { return }
            try check(mknodat(ufd, name.pointer, Linux.S_IFCHR | 0o000, 0))
        } else {
            let wh = OverlayFormat.whiteoutName(for: name.string)
            _ = try Sys.openat(ufd, wh, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o000)
        }
    }

    /// Removes whatever hides `name` in the upper directory (a whiteout
    /// device or `.wh.` file); returns whether there was one.
    func clearWhiteout(_ ufd: Int32, _ name: FileName) -> Bool {
        var st = stat()
        var had = false
        if fstatat(ufd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 && isWhiteout(st, ufd, name.pointer, marked: true) {
            unlinkat(ufd, name.pointer, 0)
            had = true
        }
        if name.count + 4 < 256 {
            let wh = OverlayFormat.whiteoutName(for: name.string)
            if unlinkat(ufd, wh, 0) == 0 { had = true }
        }
        return had
    }

    func setOwner(_ d: Int32, _ name: UnsafePointer<CChar>, _ who: Creator, isDirectory: Bool, mode: UInt32) {
        guard euid == 0, who.uid != 0 || who.gid != 0 else { return }
        var pst = stat()
        let setgidParent = fstat(d, &pst) == 0 && pst.st_mode & 0o2000 != 0
        _ = fchownat(d, name, who.uid, setgidParent ? UInt32.max : who.gid, Linux.AT_SYMLINK_NOFOLLOW)
        if !isDirectory && mode & 0o6000 != 0 && mode & Linux.S_IFMT != Linux.S_IFLNK {
            _ = fchmodat(d, name, mode & 0o7777, 0)
        }
    }

    /// Prepares `name` in `p` for a new object: the parent is copied up, the
    /// name must not exist in the union, and a whiteout there is cleared.
    /// Returns whether a whiteout was replaced.
    private func prepareCreate(_ p: OverlayNode, _ name: FileName) throws(Errno) -> Bool {
        if isReadOnly { throw .readOnlyFileSystem }
        if name.count > 255 { throw .fileNameTooLong }
        // A `.wh.` name in the upper layer would act as a whiteout.
        if OverlayFormat.isWhiteoutName(name) {
            throw .invalidArgument
        }
        var exists = true, whiteout = false
        do throws(Errno) {
            _ = try resolve(p, name, upperWhiteout: &whiteout)
        } catch .noSuchFileOrDirectory {
            exists = false
        }
        if exists { throw .fileExists }
        try copyUp(p)
        // Resolving probed the upper copy already: only a whiteout it met
        // there needs clearing (a fresh copy-up holds none).
        guard whiteout else { return false }
        return try withDirFD(p, 0) { (ufd: Int32) -> Bool in clearWhiteout(ufd, name) }
    }

    /// A file made through the union: its node, its attributes as shown,
    /// and, when it was opened in the making, its descriptor.
    public struct Created: ~Copyable {
        public let node: OverlayNode
        public let stat: stat
        public var fd: UniqueFD?
    }

    /// mknod, symlink and regular files: made in place in the upper directory.
    public func create(_ p: OverlayNode, _ name: FileName, mode: UInt32, rdev: dev_t = 0, symlinkTarget: UnsafePointer<CChar>? = nil,
                       openFlags: Int32? = nil, who: Creator) throws(Errno) -> Created {
        // A 0/0 character device is a whiteout in the upper layer: made
        // through the union it would hide its own name. The kernel refuses it.
        if mode & Linux.S_IFMT == Linux.S_IFCHR && rdev == 0 { throw .notPermitted }
        _ = try prepareCreate(p, name)
        var st = stat()
        let fd: UniqueFD? = try withDirFD(p, 0) { (ufd: Int32) throws(Errno) -> UniqueFD? in
            var fd: UniqueFD? = nil
            if let t = symlinkTarget {
                try check(symlinkat(t, ufd, name.pointer))
            } else if let fl = openFlags {
                fd = try Sys.openat(ufd, name.pointer, (fl & ~O_NOCTTY) | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode & 0o7777)
            } else {
                try check(mknodat(ufd, name.pointer, mode, rdev))
            }
            setOwner(ufd, name.pointer, who, isDirectory: false, mode: mode)
            try check(fstatat(ufd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW))
            return fd
        }
        // A new upper file: nothing below shows through a non-directory and
        // it has no origin, so the node is made from the stat at hand
        // instead of a second resolution across the layers.
        let f = Found(stat: st, inUpper: true, lower: nil, lowerDirs: [])
        let n = register(p, name, f, ino: inoFor(UInt64(st.st_ino), layer: 0))
        st.st_ino = ino_t(n.ino)
        return Created(node: n, stat: st, fd: fd)
    }

    /// O_TMPFILE: an unnamed file in the upper copy of `p` (copied up
    /// first, as the kernel does), reachable by its descriptor until linkat
    /// gives it a name.
    public func tmpfile(_ p: OverlayNode, mode: UInt32, openFlags: Int32, who: Creator) throws(Errno) -> Created {
        if isReadOnly { throw .readOnlyFileSystem }
        guard p.isDirectory else { throw .notDirectory }
        try copyUp(p)
        var st = stat()
        let fd = try withDirFD(p, 0) { (ufd: Int32) throws(Errno) -> UniqueFD in
            let fl = (openFlags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_DIRECTORY)) | Linux.O_TMPFILE | O_CLOEXEC
            let fd = try Sys.openat(ufd, ".", fl, mode & 0o7777)
            if euid == 0 && (who.uid != 0 || who.gid != 0) {
                var pst = stat()
                let setgid = fstat(ufd, &pst) == 0 && pst.st_mode & 0o2000 != 0
                _ = fchown(fd.raw, who.uid, setgid ? UInt32.max : who.gid)
                if mode & 0o6000 != 0 { _ = fchmod(fd.raw, mode & 0o7777) }
            }
            return fd
        }
        let pathFD = try Sys.open("/proc/self/fd/\(fd.raw)", Linux.O_PATH | O_CLOEXEC)
        try check(fstat(fd.raw, &st))
        let key = InodeKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        let ino = inoFor(UInt64(st.st_ino), layer: 0)
        let n = table.reference(key) { id in
            OverlayNode(id: id, isDirectory: false, ino: ino, state: .init(place: .init(
                parent: p, name: Array("#tmpfile".utf8) + [0], inUpper: true, lower: nil, lowerDirs: [], key: key, redirect: nil)))
        }
        let orphan = OwnedFD(pathFD)
        n.state.withLock { s in
            s.place.unlinked = true
            s.place.orphan = orphan
        }
        st.st_ino = ino_t(n.ino)
        return Created(node: n, stat: st, fd: fd)
    }

    /// mkdir: built in work/ (owner, mode, opaque mark when it replaces a
    /// whiteout) and renamed into place, so no half-made directory shows.
    public func mkdir(_ p: OverlayNode, _ name: FileName, mode: UInt32, who: Creator) throws(Errno) -> (OverlayNode, stat) {
        guard let work else { throw .readOnlyFileSystem }
        let replacedWhiteout = try prepareCreate(p, name)
        try withDirFD(p, 0) { (ufd: Int32) throws(Errno) in
            let tmp = "#strata-mkdir-\(UInt32.random(in: 0...UInt32.max))"
            try check(mkdirat(work.raw, tmp, mode & 0o7777))
            var done = false
            defer { if !done { removeTree(work.raw, tmp) } }
            // Inherit the setgid bit and group as mkdir in the upper would.
            var pst = stat()
            fstat(ufd, &pst)
            if pst.st_mode & 0o2000 != 0 {
                _ = fchownat(work.raw, tmp, UInt32.max, pst.st_gid, 0)
                _ = fchmodat(work.raw, tmp, (mode & 0o7777) | 0o2000, 0)
            }
            if euid == 0 && (who.uid != 0 || who.gid != 0) {
                _ = fchownat(work.raw, tmp, who.uid, pst.st_mode & 0o2000 != 0 ? UInt32.max : who.gid, 0)
            }
            // With redirect_dir the kernel marks every new directory of a
            // merged parent opaque: a directory moved there later must not
            // merge in what lies below the new one's name.
            if replacedWhiteout || (config.redirectDir && !p.snapshot.place.lowerDirs.isEmpty) {
                let path = "/proc/self/fd/\(work.raw)/\(tmp)"
                if (try? PathXattr.set(path, opaqueXattr, "y")) == nil {
                    _ = try Sys.openat(work.raw, "\(tmp)/\(OverlayFormat.opaqueName)", O_WRONLY | O_CREAT | O_CLOEXEC, 0o000)
                }
            }
            try Sys.renameat2(work.raw, tmp, ufd, name.pointer, flags: Linux.RENAME_NOREPLACE)
            done = true
        }
        let made = try lookup(p, name)
        if deviceWhiteouts { made.0.state.withLock { $0.caches.upperHoldsNoWhFiles = true } }
        return made
    }

    public func link(_ n: OverlayNode, _ p: OverlayNode, _ name: FileName) throws(Errno) -> (OverlayNode, stat) {
        if n.isDirectory { throw .notPermitted }
        _ = try prepareCreate(p, name)
        try copyUp(n, metadataOnly: true)
        // A metadata-only copy's new name must find its data too.
        if n.state.withLock({ $0.place.metacopy && $0.place.redirect == nil }) {
            let r = try atTop(n) { (d: Int32, old: UnsafePointer<CChar>, _: Int) -> [String]? in
                d == AT_FDCWD ? nil : redirectData(n, d, String(cString: old))
            }
            if let r {
                pinLowerPaths(n)
                n.state.withLock { $0.place.redirect = r }
            }
        }
        try atTop(n) { (d: Int32, old: UnsafePointer<CChar>, _: Int) throws(Errno) in
            try withDirFD(p, 0) { (ufd: Int32) throws(Errno) in
                // A nameless file is linked through its /proc link (O_TMPFILE).
                try check(linkat(d, old, ufd, name.pointer, d == AT_FDCWD ? Linux.AT_SYMLINK_FOLLOW : 0))
            }
        }
        return try lookup(p, name)
    }

    /// Marks the live node behind a name as gone, keeping a way to reach it
    /// for open descriptors.
    func noteRemoved(_ f: Found, _ p: OverlayNode, _ pfd: Int32, _ name: FileName) {
        guard let n = table.find(nodeKey(f, p, name)) else { return }
        if n.removeName(p, name) {
            // Open files keep their inode; so does a directory, which the
            // kernel still answers for through descriptors held on it
            // (fstat, xattrs; O_PATH ones too, which open nothing here), as
            // the kernel's overlayfs serves them from the removed real one.
            if n.isDirectory || n.state.withLock({ $0.opens.all }) > 0 {
                if let o = try? Sys.openat(pfd, name.pointer, Linux.O_PATH | O_NOFOLLOW | O_CLOEXEC) {
                    let orphan = OwnedFD(o)
                    n.state.withLock { $0.place.orphan = orphan }
                }
            }
            if f.stat.st_nlink <= 1 || n.isDirectory { table.detach(n) }
        }
    }

    /// After a rename replaced an upper entry: its inode loses that name;
    /// `fd` (O_PATH, taken before) keeps it reachable for open files.
    func noteReplaced(_ f: Found, _ p: OverlayNode, _ name: FileName, fd: consuming UniqueFD) {
        guard let n = table.find(InodeKey(dev: UInt64(f.stat.st_dev), ino: UInt64(f.stat.st_ino))) else { return }
        if n.removeName(p, name) {
            let orphan = OwnedFD(fd)
            n.state.withLock { $0.place.orphan = orphan }
            if f.stat.st_nlink <= 1 || n.isDirectory { table.detach(n) }
        }
    }

    public func unlink(_ p: OverlayNode, _ name: FileName) throws(Errno) {
        if isReadOnly { throw .readOnlyFileSystem }
        var f = try resolve(p, name)
        if f.stat.st_mode & Linux.S_IFMT == Linux.S_IFDIR { throw .isDirectory }
        if index != nil { f = try linkUpName(p, name, try indexBeforeChange(p, name, f)) }
        let change = beginNlinkChange(f)
        try remove(p, name, f, dir: false)
        endNlinkChange(change, by: -1)
    }

    public func rmdir(_ p: OverlayNode, _ name: FileName) throws(Errno) {
        if isReadOnly { throw .readOnlyFileSystem }
        let f = try resolve(p, name)
        if f.stat.st_mode & Linux.S_IFMT != Linux.S_IFDIR { throw .notDirectory }
        let (child, _) = try lookup(p, name)
        defer { forget(child.id, count: 1) }
        if !(try isEmptyMerged(child)) { throw .directoryNotEmpty }
        if f.inUpper, deviceWhiteouts, let work, try existsBelow(p, name) {
            // As the kernel's ovl_remove_and_whiteout: one rename leaves a
            // whiteout in the directory's place and moves the directory,
            // with the whiteouts it still holds, into work/, where it is
            // removed afterwards. Clearing those whiteouts first, then
            // removing the directory and then writing its whiteout, showed
            // the directory again with every lower file when killed between.
            try copyUp(p)
            try withDirFD(p, 0) { (ufd: Int32) throws(Errno) in
                noteRemoved(f, p, ufd, name)
                let (dir, tmp) = try replaceWithWhiteout(ufd, name, work: work.raw)
                removeTree(dir, tmp)
            }
            return
        }
        if f.inUpper {
            // Only hidden entries remain in the upper copy: clear them.
            try withDirFD(child, 0) { (cfd: Int32) throws(Errno) in
                for e in try listRaw(cfd) { removeTree(cfd, e) }
            }
        }
        try remove(p, name, f, dir: true)
    }

    private func remove(_ p: OverlayNode, _ name: FileName, _ f: Found, dir: Bool) throws(Errno) {
        try copyUp(p)
        // What resolving found already says whether a lower layer has the
        // name: a name outside the upper is in one, and so is a merged
        // directory's, unless its lower parts are elsewhere (a redirect:
        // then the name itself may be free below). Probing every layer
        // again is needed only for the upper entries left.
        var below = !f.inUpper || (f.lower != nil && f.redirect == nil && f.lowerPaths.isEmpty)
        if !below { below = try existsBelow(p, name) }
        try withDirFD(p, 0) { (ufd: Int32) throws(Errno) in
            if f.inUpper {
                noteRemoved(f, p, ufd, name)
                if below && deviceWhiteouts && !dir, let work {
                    // One step: the name becomes a whiteout as the file leaves.
                    let (dir, tmp) = try replaceWithWhiteout(ufd, name, work: work.raw)
                    unlinkat(dir, tmp, 0)
                    return
                }
                try check(unlinkat(ufd, name.pointer, dir ? Linux.AT_REMOVEDIR : 0))
            } else {
                let top = f.topLayer
                try withDirFD(p, top) { (lfd: Int32) in noteRemoved(f, p, lfd, name) }
            }
            if below || !f.inUpper { try makeWhiteout(ufd, name) }
        }
    }

    /// The upper entry `name` becomes a whiteout as it leaves, in one step,
    /// as the kernel's ovl_remove_and_whiteout: a link of the shared
    /// whiteout, made in the work directory, is exchanged with the entry,
    /// which is left there for the caller to remove. Where no link can be
    /// made, RENAME_WHITEOUT does the same with a whiteout of its own.
    func replaceWithWhiteout(_ ufd: Int32, _ name: FileName, work: Int32) throws(Errno) -> (dir: Int32, tmp: String) {
        let tmp = "#strata-rm-\(UInt32.random(in: 0...UInt32.max))"
        if let w = whiteoutWorkDir, linkSharedWhiteout(w, tmp) {
            do throws(Errno) {
                try Sys.renameat2(w, tmp, ufd, name.pointer, flags: Linux.RENAME_EXCHANGE)
            } catch {
                unlinkat(w, tmp, 0)
                throw error
            }
            return (w, tmp)
        }
        try Sys.renameat2(ufd, name.pointer, work, tmp, flags: Linux.RENAME_WHITEOUT)
        return (work, tmp)
    }

    func listRaw(_ dfd: Int32) throws(Errno) -> [String] { try Sys.directoryNames(dfd) }
}
