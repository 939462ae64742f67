import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Brings in the data of a file of a partly pulled layer (`strata pull
/// --lazy`). The union knows only that such a layer's files may be holes
/// marked with the name of their data; where the data comes from (a
/// registry, by Range requests) is the caller's, so the union depends on
/// no network code.
public protocol LazyData: Sendable {
    /// Fills the file open as `fd` (readable) whose mark is `mark`, in the
    /// layer whose pull state is the directory `state` (and up to
    /// `readahead` bytes of the files after it); on return the data is
    /// there and the mark gone. Throws the errno the reader gets (EIO
    /// when the registry cannot be reached).
    func fill(state: String, fd: Int32, mark: String, readahead: Int64) throws(Errno)
    /// Starts completing these layers (pull states) in the background;
    /// called once the mount serves, in the daemon.
    func completeInBackground(states: [String])
    /// Compressed bytes fetched so far, for `strata stats`.
    func bytesFetched() -> Int
}

/// A partly pulled lower layer: where its pull state is, and the xattr
/// that marks its files still to fetch.
struct LazyLayer: Sendable {
    let state: String
    let xattr: String
}

extension Overlay {
    /// Whether a lower layer is partly pulled, and how its files are
    /// marked. The namespace was decided once, when the layer was pulled
    /// (`trusted.` by root, `user.` otherwise), and is read from the
    /// layer's root, not from this mount's `userxattr`: a mount that looked
    /// in the other namespace would serve the holes as zeros. The root is
    /// asked through its descriptor, so a layer named through a symlink
    /// (the store's `l/` short names) is still seen. A layer whose pull
    /// state is beside it but whose marks this caller cannot read (root's
    /// `trusted.` marks, asked by a user) is refused: it cannot be served.
    static func lazyLayer(_ l: Layer) throws(OverlaySetupError) -> LazyLayer? {
        let root = "/proc/self/fd/\(l.root.raw)"
        var buf = [UInt8](repeating: 0, count: 4096)
        for user in [false, true] {
            let name = OverlayFormat.xattr(OverlayFormat.lazyName, user: user)
            let n = buf.withUnsafeMutableBytes { (try? PathXattr.get(root, name, into: $0, follow: true)) ?? -1 }
            if n > 0 { return LazyLayer(state: String(decoding: buf[0..<n], as: UTF8.self), xattr: name) }
        }
        // Root reads every mark, so none found means none. A user may not:
        // the store's layout (overlay/<id>/{diff,link,lazy}) tells, and is
        // asked only then, not at every mount containers/storage makes.
        if geteuid() != 0 && faccessat(l.root.raw, "../lazy", F_OK, 0) == 0 && faccessat(l.root.raw, "../link", F_OK, 0) == 0 {
            throw OverlaySetupError(.invalidOptions, "lowerdir \(l.path) is a partly pulled layer (strata pull --lazy) whose marks "
                + "this user cannot read (they are trusted.* xattrs): mount it as root, or complete it first with 'strata pull IMAGE'")
        }
        return nil
    }

    /// The mount serves (FUSE INIT, in the daemon): start completing the
    /// partly pulled layers unless told to fetch only what is read.
    public func started() {
        guard hasLazyLayers, config.lazyBackground, let source = config.lazyData else { return }
        source.completeInBackground(states: lazyStates.compactMap { $0?.state })
    }

    /// Before a lower file's data is used (an open for reading, a copy-up):
    /// fetched if its layer is partly pulled and it is still a hole.
    @inline(__always)
    func fetchIfLazy(_ fd: Int32, layer: Int) throws(Errno) {
        guard hasLazyLayers, layer < lazyStates.count, let lazy = lazyStates[layer] else { return }
        try fetchLazy(fd, lazy)
    }

    private func fetchLazy(_ fd: Int32, _ lazy: LazyLayer) throws(Errno) {
        // Asked by size first: a file already fetched (the common case once
        // a container runs) costs one syscall and no buffer.
        guard let size = try? Sys.getxattr(fd: fd, lazy.xattr) else { return }     // no mark: the data is here
        var buf = [UInt8](repeating: 0, count: max(size, 1))
        // None now: filled in the meantime.
        guard let n = buf.withUnsafeMutableBytes({ b in try? Sys.getxattr(fd: fd, lazy.xattr, into: b) }) else { return }
        guard let source = config.lazyData else { throw .ioError }
        try source.fill(state: lazy.state, fd: fd, mark: String(decoding: buf[0..<n], as: UTF8.self), readahead: config.lazyReadahead)
        lazyFills.add(1, ordering: .relaxed)
    }
}
