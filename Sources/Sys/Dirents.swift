import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Every entry of a directory by getdents64, straight from the kernel's
/// records: inode, d_off, type and the name in place (valid during the
/// call only). `dirFD` may be an O_PATH descriptor; "." and ".." included.
public func forEachDirent(_ dirFD: Int32, _ body: (_ ino: UInt64, _ off: UInt64, _ type: UInt8, _ name: FileName) throws(Errno) -> Void) throws(Errno) {
    let dir = try Sys.openat(dirFD, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    let fd = dir.raw
    let size = 64 * 1024
    let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
    defer { buf.deallocate() }
    while true {
        let n = try Sys.getdents(fd, buf, size)
        if n == 0 { return }
        var off = 0
        while off < n {
            let rec = buf + off
            off += Int(rec.load(fromByteOffset: 16, as: UInt16.self))
            let c = (rec + 19).assumingMemoryBound(to: CChar.self)
            try body(rec.load(as: UInt64.self), rec.load(fromByteOffset: 8, as: UInt64.self),
                     rec.load(fromByteOffset: 18, as: UInt8.self), FileName(pointer: c, count: strlen(c)))
        }
    }
}
