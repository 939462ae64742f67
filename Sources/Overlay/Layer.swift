import Synchronization
import Sys
import SystemPackage
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
    private let handleMount = Mutex<OwnedFD?>(nil)

    init(index: Int, path: String, writable: Bool) throws(OverlaySetupError) {
        self.index = index
        self.path = path
        self.writable = writable
        let fd: UniqueFD
        do throws(Errno) {
            fd = try Sys.open(path, Linux.O_PATH | O_DIRECTORY | O_CLOEXEC)
        } catch {
            throw OverlaySetupError(.layer(error), "\(writable ? "upperdir" : "lowerdir") \(path): \(error == .notDirectory ? "not a directory" : "\(error)")")
        }
        dev = UInt64((try? Sys.fstat(fd.raw))?.st_dev ?? 0)
        root = OwnedFD(fd)
    }

    /// Opens a directory of this layer by its file handle.
    func open(handle h: DirHandle) throws(Errno) -> UniqueFD { try open(handle: h, flags: Linux.O_PATH | O_DIRECTORY | O_CLOEXEC) }

    /// Opens any object of this layer's filesystem by its file handle.
    func open(handle h: DirHandle, flags: Int32) throws(Errno) -> UniqueFD {
        let mount = try handleMount.withLock { (m: inout OwnedFD?) throws(Errno) -> OwnedFD in
            if let m { return m }
            let opened = OwnedFD(try Sys.openat(root.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC))
            m = opened
            return opened
        }
        return try Sys.open(handle: h, mount: mount.raw, flags)
    }
}
