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

    init(index: Int, path: String, writable: Bool) throws(OverlaySetupError) {
        self.index = index
        self.path = path
        self.writable = writable
        let fd = open(path, Linux.O_PATH | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 {
            let e = currentErrno()
            throw OverlaySetupError("\(writable ? "upperdir" : "lowerdir") \(path): \(e == .notDirectory ? "not a directory" : "\(e)")")
        }
        root = OwnedFD(fd)
        var st = stat()
        fstat(fd, &st)
        dev = UInt64(st.st_dev)
    }
}
