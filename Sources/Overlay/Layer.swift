import Synchronization
import CStrata
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// One directory of the union. Index 0 is the upper layer when there is one.
public final class Layer: Sendable {
    public let index: Int
    public let path: String
    public let root: OwnedFD
    public let dev: UInt64
    public let writable: Bool
    /// A readable descriptor of the root, opened on first use: the mount
    /// descriptor open_by_handle_at wants (it refuses an O_PATH one).
    private let handleMount = Mutex<Int32>(-1)

    init(index: Int, path: String, writable: Bool) throws(OverlaySetupError) {
        self.index = index
        self.path = path
        self.writable = writable
        let fd = Glibc.open(path, Linux.O_PATH | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            let e = currentErrno()
            throw OverlaySetupError(.layer(e), "\(writable ? "upperdir" : "lowerdir") \(path): \(e == .notDirectory ? "not a directory" : "\(e)")")
        }
        root = OwnedFD(fd)
        var st = stat()
        fstat(fd, &st)
        dev = UInt64(st.st_dev)
    }

    deinit { handleMount.withLock { if $0 >= 0 { close($0) } } }

    /// Opens a directory of this layer by its file handle; -1 and errno on failure.
    func open(handle h: DirHandle) -> Int32 { open(handle: h, flags: Linux.O_PATH | O_DIRECTORY | O_CLOEXEC) }

    /// Opens any object of this layer's filesystem by its file handle.
    func open(handle h: DirHandle, flags: Int32) -> Int32 {
        let mfd = handleMount.withLock { fd -> Int32 in
            if fd < 0 { fd = openat(root.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            return fd
        }
        if mfd < 0 { return -1 }
        return h.bytes.withUnsafeBufferPointer {
            strata_open_by_handle(mfd, $0.baseAddress, UInt32($0.count), h.type, flags)
        }
    }
}
