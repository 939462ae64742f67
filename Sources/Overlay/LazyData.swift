import CStrata
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

extension Overlay {
    /// The pull state named on a lower layer's root, nil for an ordinary
    /// layer (one getxattr per layer, at mount).
    static func lazyState(of path: String, xattr: String) -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = lgetxattr(path, xattr, &buf, buf.count)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    /// The mount serves (FUSE INIT, in the daemon): start completing the
    /// partly pulled layers unless told to fetch only what is read.
    public func started() {
        guard hasLazyLayers, config.lazyBackground, let source = config.lazyData else { return }
        source.completeInBackground(states: lazyStates.compactMap { $0 })
    }

    /// Before a lower file's data is used (an open for reading, a copy-up):
    /// fetched if its layer is partly pulled and it is still a hole.
    @inline(__always)
    func fetchIfLazy(_ fd: Int32, layer: Int) throws(Errno) {
        guard hasLazyLayers, layer < lazyStates.count, let state = lazyStates[layer] else { return }
        try fetchLazy(fd, state: state)
    }

    private func fetchLazy(_ fd: Int32, state: String) throws(Errno) {
        // Asked by size first: a file already fetched (the common case once
        // a container runs) costs one syscall and no buffer.
        let size = fgetxattr(fd, lazyXattr, nil, 0)
        if size < 0 { return }     // no mark: the data is here
        var buf = [UInt8](repeating: 0, count: max(size, 1))
        let n = fgetxattr(fd, lazyXattr, &buf, buf.count)
        if n < 0 { return }        // filled in the meantime
        guard let source = config.lazyData else { throw .ioError }
        try source.fill(state: state, fd: fd, mark: String(decoding: buf[0..<n], as: UTF8.self), readahead: config.lazyReadahead)
        lazyFills.add(1, ordering: .relaxed)
    }
}
