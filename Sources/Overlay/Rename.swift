import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// rename and rename2 (the kernel's ovl_rename): files copy up and move; a
/// source that also exists below leaves a whiteout, atomically where
/// RENAME_WHITEOUT is allowed; a directory that is merged or lower gives
/// EXDEV (without redirect_dir), so that `mv` falls back to copying.
extension Overlay {
    func setOpaque(_ dfd: Int32, _ name: String) {
        let path = "/proc/self/fd/\(dfd)/\(name)"
        if (try? PathXattr.set(path, opaqueXattr, "y")) == nil {
            _ = try? Sys.openat(dfd, name + "/" + OverlayFormat.opaqueName, O_WRONLY | O_CREAT | O_CLOEXEC, 0o000)
        }
    }

    /// Records a moved directory's lower path, absolute from the lower roots.
    func setRedirect(_ dfd: Int32, _ name: String, _ path: [String]) {
        let value = "/" + path.joined(separator: "/")
        try? PathXattr.set("/proc/self/fd/\(dfd)/\(name)", redirectXattr, value)
    }

    public func rename(_ p: OverlayNode, _ name: FileName, _ q: OverlayNode, _ newName: FileName, flags: UInt32) throws(Errno) {
        if isReadOnly { throw .readOnlyFileSystem }
        let known = Linux.RENAME_NOREPLACE | Linux.RENAME_EXCHANGE | Linux.RENAME_WHITEOUT
        if flags & ~known != 0 || flags & Linux.RENAME_WHITEOUT != 0 { throw .invalidArgument }
        let exchange = flags & Linux.RENAME_EXCHANGE != 0
        if exchange && flags & Linux.RENAME_NOREPLACE != 0 { throw .invalidArgument }
        // A `.wh.` name in the upper layer would act as a whiteout (as create refuses it).
        if OverlayFormat.isWhiteoutName(newName) { throw .invalidArgument }
        var src = try resolve(p, name)
        var dst: Found? = nil
        do throws(Errno) { dst = try resolve(q, newName) } catch .noSuchFileOrDirectory {}
        if flags & Linux.RENAME_NOREPLACE != 0 && dst != nil { throw .fileExists }
        if exchange && dst == nil { throw .noSuchFileOrDirectory }
        let srcDir = src.stat.st_mode & Linux.S_IFMT == Linux.S_IFDIR
        let dstDir = dst.map { $0.stat.st_mode & Linux.S_IFMT == Linux.S_IFDIR } ?? false
        // Two names of one upper inode: nothing to do (POSIX). Lower hard
        // links are separate inodes here, as in the kernel without index=on.
        if let d = dst, d.inUpper && src.inUpper, d.stat.st_ino == src.stat.st_ino && d.stat.st_dev == src.stat.st_dev { return }
        if !exchange, dst != nil {
            if srcDir && !dstDir { throw .notDirectory }
            if !srcDir && dstDir { throw .isDirectory }
        }
        func isMergedOrLower(_ f: Found) -> Bool { !f.inUpper || !f.lowerDirs.isEmpty }
        // Without redirect_dir, merged or lower directories do not move: EXDEV
        // makes mv copy them. With it, they move and record where their lower
        // parts are.
        if srcDir && isMergedOrLower(src) && !config.redirectDir { throw .improperLink }
        if exchange && dstDir, let d = dst, isMergedOrLower(d), !config.redirectDir { throw .improperLink }
        var dstNode: OverlayNode? = nil
        if dstDir && !exchange {
            let (dn, _) = try lookup(q, newName)
            dstNode = dn
        }
        defer { if let dn = dstNode { forget(dn.id, count: 1) } }
        // Only a merged or lower directory needs our emptiness check; for a
        // pure upper one the real rename answers (after the opaque mark, as
        // in the kernel).
        if let dn = dstNode, let d = dst, isMergedOrLower(d), !(try isEmptyMerged(dn)) { throw .directoryNotEmpty }

        let (sn, _) = try lookup(p, name)
        defer { forget(sn.id, count: 1) }
        try copyUp(sn, metadataOnly: true)
        try copyUp(q)
        // index=on: a name of an indexed inode moves as an upper link of it
        // (the kernel's ovl_link_up); an indexed inode that loses a name
        // to the rename counts one link less.
        if index != nil && !srcDir { src = try linkUpName(p, name, try resolve(p, name)) }
        var dstChange: NlinkChange? = nil
        if index != nil && !exchange && !dstDir, let d = dst {
            dst = try linkUpName(q, newName, try indexBeforeChange(q, newName, d))
            dstChange = dst.flatMap(beginNlinkChange)
        }
        var xn: OverlayNode? = nil
        if exchange {
            let (n2, _) = try lookup(q, newName)
            xn = n2
            try copyUp(n2, metadataOnly: true)
            if index != nil && !dstDir { dst = try linkUpName(q, newName, try resolve(q, newName)) }
        }
        defer { if let x = xn { forget(x.id, count: 1) } }
        // A directory moved over a directory that has lower parts must hide them.
        // The kernel marks a directory opaque when it moves into a merged
        // directory, so that a lower directory of its new name never merges
        // in; it does so before the rename, which may still fail.
        // A metadata-only copy that moves records where its data is, as a
        // moved directory records its lower parts.
        func isMetacopy(_ n: OverlayNode?) -> Bool { n.map { !$0.isDirectory && $0.state.withLock { $0.place.metacopy } } ?? false }
        let srcRedirect: [String]? = (srcDir && isMergedOrLower(src)) || isMetacopy(sn) ? lowerPath(sn) : nil
        let dstRedirect: [String]? = (exchange && dstDir && dst.map(isMergedOrLower) == true) || (exchange && isMetacopy(xn))
            ? xn.map(lowerPath) : nil
        let needOpaque = srcDir && srcRedirect == nil && !q.snapshot.place.lowerDirs.isEmpty
        let xOpaque = exchange && dstDir && dstRedirect == nil && !p.snapshot.place.lowerDirs.isEmpty
        let srcBelow = exchange ? false : try existsBelow(p, name)
        // Where their lower parts are, fixed before the names change.
        if srcRedirect != nil { pinLowerPaths(sn) }
        if dstRedirect != nil, let x = xn { pinLowerPaths(x) }
        try withDirFD(p, 0) { (sfd: Int32) throws(Errno) in
            try withDirFD(q, 0) { (dfd: Int32) throws(Errno) in
                var replaced = UniqueFD()
                if let d = dst, d.inUpper, !exchange {
                    if dstDir, isMergedOrLower(d), let dn = dstNode {
                        // Verified empty in the union: only whiteouts are left.
                        try withDirFD(dn, 0) { (cfd: Int32) throws(Errno) in
                            for e in try listRaw(cfd) { removeTree(cfd, e) }
                        }
                    }
                    replaced = (try? Sys.openat(dfd, newName.pointer, Linux.O_PATH | O_NOFOLLOW | O_CLOEXEC)) ?? UniqueFD()
                } else if !exchange {
                    _ = clearWhiteout(dfd, newName)
                }
                if needOpaque { setOpaque(sfd, name.string) }
                if xOpaque { setOpaque(dfd, newName.string) }
                // As the kernel does, the redirect goes on before the rename
                // (it names the directory's own lower path, true whether or
                // not the rename happens) and the whiteout with it
                // (RENAME_WHITEOUT), so that a daemon killed at any point
                // leaves the directory in one place: two names for one lower
                // directory are an upper the kernel refuses (ESTALE).
                if let r = srcRedirect { setRedirect(sfd, name.string, r) }
                if let r = dstRedirect { setRedirect(dfd, newName.string, r) }
                var kflags = exchange ? Linux.RENAME_EXCHANGE : 0
                let atomicWhiteout = srcBelow && deviceWhiteouts
                if atomicWhiteout { kflags |= Linux.RENAME_WHITEOUT }
                try Sys.renameat2(sfd, name.pointer, dfd, newName.pointer, flags: kflags)
                if let d = dst, replaced.isOpen { noteReplaced(d, q, newName, fd: replaced.release()) }
                if srcBelow && !deviceWhiteouts { try makeWhiteout(sfd, name) }
            }
        }
        endNlinkChange(dstChange, by: -1)
        sn.removeName(p, name)
        sn.addName(q, newName)
        if let r = srcRedirect { sn.state.withLock { $0.place.redirect = r } }
        if let r = dstRedirect, let x = xn { x.state.withLock { $0.place.redirect = r } }
        if needOpaque { sn.state.withLock { $0.place.lowerDirs = [] } }
        if let x = xn {
            x.removeName(q, newName)
            x.addName(p, name)
        }
    }
}
