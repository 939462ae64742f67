import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Metadata-only copy-up (the kernel's metacopy=on, its copy_up.c and
/// ovl_lookup): a chown, chmod, utimes, xattr change, link or rename of a
/// lower regular file copies up its metadata alone, as a sparse file of the
/// right size marked `overlay.metacopy`; reads go on to the lower file
/// until the first open for writing copies the data in. The format is the
/// kernel's, so either mounts what the other wrote.
extension Overlay {
    /// Calls `body` with the directory and name of the node's data: the
    /// lower file for a metadata-only copy, else its top location.
    func withData<R: ~Copyable>(_ n: OverlayNode, _ body: (Int32, UnsafePointer<CChar>) throws(Errno) -> R) throws(Errno) -> R {
        let s = n.state.withLock { st in (metacopy: st.place.metacopy, layer: st.place.dataLayer, parent: st.place.parent, name: st.place.name,
                                          path: st.place.dataLayer.flatMap { st.place.lowerPaths[$0] }) }
        guard s.metacopy, let layer = s.layer else {
            return try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, _: Int) throws(Errno) -> R in try body(d, name) }
        }
        if let r = s.path, let last = r.last {
            // Moved or linked: the data is where the redirect says.
            guard let parentFD = try? openPath(layers[layer].root.raw, Array(r.dropLast())) else { throw .ioError }
            let pfd = parentFD.raw
            return try withCString(last) { (c: UnsafePointer<CChar>) throws(Errno) -> R in try body(pfd, c) }
        }
        guard let parent = s.parent else { throw .ioError }
        return try withDirFD(parent, layer) { (pfd: Int32) throws(Errno) -> R in
            try withStoredName(s.name) { (c: UnsafePointer<CChar>) throws(Errno) -> R in try body(pfd, c) }
        }
    }

    /// Opens the node's data (see `withData`), never following a symlink.
    func openData(_ n: OverlayNode, flags: Int32) throws(Errno) -> UniqueFD {
        let u = try withData(n) { (d: Int32, name: UnsafePointer<CChar>) throws(Errno) -> UniqueFD in
            try Sys.openat(d, name, d == AT_FDCWD ? flags | O_CLOEXEC : flags | O_NOFOLLOW | O_CLOEXEC)
        }
        if hasLazyLayers {
            let layer = n.state.withLock { $0.place.metacopy ? ($0.place.dataLayer ?? 0) : $0.place.topLayer }
            try fetchIfLazy(u.raw, layer: layer)
        }
        return u
    }

    /// The data's block count, which a metadata-only copy reports as its
    /// own (as the kernel's ovl_getattr does: `du` counts the data).
    /// Lower layers do not change under a mount, so the count is asked once.
    func dataBlocks(_ n: OverlayNode) -> blkcnt_t? {
        if let b = n.state.withLock({ $0.place.metacopy ? $0.caches.dataBlocks : nil }) { return b }
        var st = stat()
        let rc = try? withData(n) { (d: Int32, name: UnsafePointer<CChar>) -> Int32 in
            fstatat(d, name, &st, Linux.AT_SYMLINK_NOFOLLOW)
        }
        guard rc == 0 else { return nil }
        n.state.withLock { if $0.place.metacopy { $0.caches.dataBlocks = st.st_blocks } }
        return st.st_blocks
    }

    /// The data of a metadata-only copy brought up, as the kernel's
    /// ovl_copy_up_meta_inode_data does it: into the upper file in place,
    /// then the mark removed. Killed part-way, the mark is still there and
    /// the data still read from below; the next write copies it again.
    func copyUpData(_ n: OverlayNode) throws(Errno) {
        try waitForLowerPassthrough(n)
        try n.copyUpLock.withLock { (_: inout Void) throws(Errno) in
            guard n.state.withLock({ $0.place.metacopy }) else { return }
            let input = try openData(n, flags: O_RDONLY)
            try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, _: Int) throws(Errno) in
                let output = try Sys.openat(d, name, d == AT_FDCWD ? O_WRONLY | O_CLOEXEC : O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
                var before = stat(), data = stat()
                try check(fstat(output.raw, &before))
                try check(fstat(input.raw, &data))
                try copyData(from: input.raw, to: output.raw, size: Int64(data.st_size))
                // The copy is not a change the user made: the times stay.
                let times = [before.st_atim, before.st_mtim]
                _ = futimens(output.raw, times)
                if !config.volatile && fsync(output.raw) != 0 { throw currentErrno() }
                do throws(Errno) { try Sys.removexattr(fd: output.raw, metacopyXattr) } catch { if error != .noData { throw error } }
                n.state.withLock { s in
                    s.place.metacopy = false
                    s.place.dataLayer = nil
                    s.caches.dataBlocks = nil
                    // Readers through the daemon move to the copy.
                    moveFollowers(&s, to: d, name)
                }
            }
            copyUps.add(1, ordering: .relaxed)
        }
    }

    /// A metadata-only copy that moves or gains a name records where its
    /// data is, absolute from the lower roots (the kernel's ovl_set_redirect
    /// on a metacopy file), so that every name finds it.
    func redirectData(_ n: OverlayNode, _ dfd: Int32, _ name: String) -> [String]? {
        guard !n.isDirectory, n.state.withLock({ $0.place.metacopy }) else { return nil }
        let path = lowerPath(n)
        setRedirect(dfd, name, path)
        return path
    }

    /// Before a node moves: where its lower parts (a directory's layers, a
    /// metadata-only copy's data) are, so that they stay found after.
    func pinLowerPaths(_ n: OverlayNode) {
        let (layers, known) = n.state.withLock { s -> ([Int], [Int: [String]]) in
            (n.isDirectory ? s.place.lowerDirs : (s.place.metacopy ? s.place.dataLayer.map { [$0] } ?? [] : []), s.place.lowerPaths)
        }
        var paths = known
        for l in layers where paths[l] == nil { paths[l] = layerPath(n, l) }
        n.state.withLock { $0.place.lowerPaths = paths }
    }
}
