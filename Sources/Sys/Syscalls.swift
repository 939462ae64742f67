import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Typed forms of the calls the file systems make on descriptors they
/// hold: a failure is the thrown errno, and the kernel interfaces Swift's
/// Glibc module does not export (xattrs at a directory and a name,
/// renameat2, file handles, FUSE's ioctls) are reached only here.
extension Sys {
    @inlinable
    public static func fstat(_ fd: Int32) throws(Errno) -> stat {
        var st = stat()
        if Glibc.fstat(fd, &st) != 0 { throw currentErrno() }
        return st
    }

    @inlinable
    public static func fstatat(_ dir: Int32, _ name: UnsafePointer<CChar>, _ flags: Int32 = Linux.AT_SYMLINK_NOFOLLOW) throws(Errno) -> stat {
        var st = stat()
        if Glibc.fstatat(dir, name, &st, flags) != 0 { throw currentErrno() }
        return st
    }

    /// lgetxattr of `name` under `dir` (`dir` may be O_PATH); into nil asks
    /// the size. Returns the value's length.
    @inlinable
    @discardableResult
    public static func getxattr(_ dir: Int32, _ name: UnsafePointer<CChar>, _ attr: UnsafePointer<CChar>,
                                into buffer: UnsafeMutableRawBufferPointer? = nil) throws(Errno) -> Int {
        let n = strata_lgetxattr_at(dir, name, attr, buffer?.baseAddress, buffer?.count ?? 0)
        if n < 0 { throw currentErrno() }
        return n
    }

    /// Whether `name` under `dir` has xattr `attr` (any error counts as no).
    @inlinable
    public static func hasXattr(_ dir: Int32, _ name: UnsafePointer<CChar>, _ attr: UnsafePointer<CChar>) -> Bool {
        strata_lgetxattr_at(dir, name, attr, nil, 0) >= 0
    }

    /// lsetxattr of `name` under `dir`.
    @inlinable
    public static func setxattr(_ dir: Int32, _ name: UnsafePointer<CChar>, _ attr: UnsafePointer<CChar>,
                                _ value: UnsafeRawBufferPointer, flags: Int32 = 0) throws(Errno) {
        if strata_lsetxattr_at(dir, name, attr, value.baseAddress, value.count, flags) != 0 { throw currentErrno() }
    }

    /// lsetxattr of a string value.
    public static func setxattr(_ dir: Int32, _ name: UnsafePointer<CChar>, _ attr: String, _ value: String, flags: Int32 = 0) throws(Errno) {
        var v = value
        let r = v.withUTF8 { b in attr.withCString { strata_lsetxattr_at(dir, name, $0, b.baseAddress, b.count, flags) } }
        if r != 0 { throw currentErrno() }
    }

    /// llistxattr of `name` under `dir`; into nil asks the size.
    @inlinable
    public static func listxattr(_ dir: Int32, _ name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer? = nil) throws(Errno) -> Int {
        let n = strata_llistxattr_at(dir, name, buffer?.baseAddress?.assumingMemoryBound(to: CChar.self), buffer?.count ?? 0)
        if n < 0 { throw currentErrno() }
        return n
    }

    @inlinable
    public static func renameat2(_ from: Int32, _ name: UnsafePointer<CChar>, _ to: Int32, _ newName: UnsafePointer<CChar>,
                                 flags: UInt32 = 0) throws(Errno) {
        if strata_renameat2(from, name, to, newName, flags) != 0 { throw currentErrno() }
    }

    /// The file handle of `fd` itself, or of `name` under it.
    public static func fileHandle(_ fd: Int32, name: UnsafePointer<CChar>? = nil) throws(Errno) -> KernelFileHandle {
        var buf = [UInt8](repeating: 0, count: 128)
        var len = UInt32(buf.count)
        var type: Int32 = 0
        let r = buf.withUnsafeMutableBufferPointer { b in
            name.map { strata_name_to_handle(fd, $0, b.baseAddress, &len, &type) } ?? strata_fd_to_handle(fd, b.baseAddress, &len, &type)
        }
        if r != 0 { throw currentErrno() }
        return KernelFileHandle(bytes: Array(buf.prefix(Int(len))), type: type)
    }

    /// The filesystem's UUID (FS_IOC_GETFSUUID); nil where it has none.
    public static func filesystemUUID(_ fd: Int32) -> [UInt8]? {
        var u = [UInt8](repeating: 0, count: 16)
        return strata_fs_uuid(fd, &u) == 0 ? u : nil
    }

    /// Shares `src`'s blocks with `dst` (FICLONE), where the filesystem can.
    public static func cloneFile(_ dst: Int32, from src: Int32) throws(Errno) {
        if strata_ficlone(dst, src) != 0 { throw currentErrno() }
    }

    @inlinable
    public static func copyFileRange(_ input: Int32, _ inOffset: inout Int64, _ output: Int32, _ outOffset: inout Int64,
                                     _ length: Int, flags: UInt32 = 0) throws(Errno) -> Int {
        let n = strata_copy_file_range(input, &inOffset, output, &outOffset, length, flags)
        if n < 0 { throw currentErrno() }
        return n
    }

    public static func fallocate(_ fd: Int32, mode: Int32, offset: Int64, length: Int64) throws(Errno) {
        if strata_fallocate(fd, mode, offset, length) != 0 { throw currentErrno() }
    }

    /// getdents64 into `buffer`: the bytes of records read, 0 at the end.
    @inlinable
    public static func getdents(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ size: Int) throws(Errno) -> Int {
        let n = strata_getdents64(fd, buffer, size)
        if n < 0 { throw currentErrno() }
        return Int(n)
    }

    /// Whether `path` is the root of a mount (statx's STATX_ATTR_MOUNT_ROOT).
    public static func isMountRoot(_ path: String) -> Bool { strata_is_mount_root(path) != 0 }

    /// Asks ext4's Orlov allocator to spread `fd`'s subdirectories
    /// (FS_IOC_SETFLAGS with FS_TOPDIR_FL); a filesystem without it ignores it.
    public static func markTopDirectory(_ fd: Int32) { _ = strata_set_topdir(fd) }

    @inlinable
    public static func makedev(_ major: UInt32, _ minor: UInt32) -> UInt64 { strata_makedev(major, minor) }
    @inlinable
    public static func major(_ dev: UInt64) -> UInt32 { strata_major(dev) }
    @inlinable
    public static func minor(_ dev: UInt64) -> UInt32 { strata_minor(dev) }

    /// Sets errno (a helper that cleans up after a failed call and must
    /// leave that call's errno for its caller).
    @inlinable
    public static func setErrno(_ e: Errno) { strata_set_errno(e.rawValue) }
}

/// The calling thread's placement.
extension OSThread {
    /// Keeps the calling thread on `cpu` (a FUSE ring queue serves its CPU).
    public static func pinToCPU(_ cpu: Int) { _ = strata_pin_to_cpu(Int32(cpu)) }
    /// Lets the calling thread run on any CPU again.
    public static func unpin() { _ = strata_unpin() }
    /// Puts the calling thread under SCHED_IDLE.
    public static func scheduleIdle() { _ = strata_sched_idle() }
}

/// FUSE's passthrough ioctls on the device descriptor.
public enum FuseBacking {
    /// Registers `fd` as a backing file; returns its id.
    public static func open(device: Int32, _ fd: Int32) throws(Errno) -> Int32 {
        let id = strata_fuse_backing_open(device, fd)
        if id < 0 { throw currentErrno() }
        return id
    }

    public static func close(device: Int32, id: Int32) { _ = strata_fuse_backing_close(device, id) }
}

/// Extended attributes by path (the l* calls unless `follow`), for names
/// that have no directory descriptor and name (a /proc/self/fd path).
public enum PathXattr {
    @inlinable
    public static func get(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer?,
                           follow: Bool = false) throws(Errno) -> Int {
        let n = follow ? CStrata.getxattr(path, name, buffer?.baseAddress, buffer?.count ?? 0)
                       : lgetxattr(path, name, buffer?.baseAddress, buffer?.count ?? 0)
        if n < 0 { throw currentErrno() }
        return n
    }

    @inlinable
    public static func set(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer, flags: Int32,
                           follow: Bool = false) throws(Errno) {
        let r = follow ? CStrata.setxattr(path, name, value.baseAddress, value.count, flags)
                       : lsetxattr(path, name, value.baseAddress, value.count, flags)
        if r != 0 { throw currentErrno() }
    }

    @inlinable
    public static func list(_ path: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer?, follow: Bool = false) throws(Errno) -> Int {
        let p = buffer?.baseAddress?.assumingMemoryBound(to: CChar.self)
        let n = follow ? CStrata.listxattr(path, p, buffer?.count ?? 0) : llistxattr(path, p, buffer?.count ?? 0)
        if n < 0 { throw currentErrno() }
        return n
    }

    @inlinable
    public static func remove(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, follow: Bool = false) throws(Errno) {
        let r = follow ? CStrata.removexattr(path, name) : lremovexattr(path, name)
        if r != 0 { throw currentErrno() }
    }
}

/// Extended attributes of an open descriptor.
extension Sys {
    @inlinable
    @discardableResult
    public static func getxattr(fd: Int32, _ attr: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer? = nil) throws(Errno) -> Int {
        let n = fgetxattr(fd, attr, buffer?.baseAddress, buffer?.count ?? 0)
        if n < 0 { throw currentErrno() }
        return n
    }

    @inlinable
    public static func setxattr(fd: Int32, _ attr: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer, flags: Int32 = 0) throws(Errno) {
        if fsetxattr(fd, attr, value.baseAddress, value.count, flags) != 0 { throw currentErrno() }
    }

    /// fsetxattr of a string value (an empty one for a bare mark).
    public static func setxattr(fd: Int32, _ attr: String, _ value: String, flags: Int32 = 0) throws(Errno) {
        var v = value
        let r = v.withUTF8 { b in fsetxattr(fd, attr, b.baseAddress, b.count, flags) }
        if r != 0 { throw currentErrno() }
    }

    @inlinable
    public static func removexattr(fd: Int32, _ attr: UnsafePointer<CChar>) throws(Errno) {
        if fremovexattr(fd, attr) != 0 { throw currentErrno() }
    }
}

extension PathXattr {
    /// lsetxattr (setxattr when `follow`) of a string value.
    public static func set(_ path: String, _ name: String, _ value: String, flags: Int32 = 0, follow: Bool = false) throws(Errno) {
        var v = value
        let r = v.withUTF8 { b in
            follow ? CStrata.setxattr(path, name, b.baseAddress, b.count, flags) : lsetxattr(path, name, b.baseAddress, b.count, flags)
        }
        if r != 0 { throw currentErrno() }
    }
}

/// Byte-array forms (Array's withUnsafeBytes does not keep a typed error).
extension Sys {
    public static func setxattr(fd: Int32, _ attr: UnsafePointer<CChar>, bytes: [UInt8], count: Int? = nil) throws(Errno) {
        let r = bytes.withUnsafeBytes { b in fsetxattr(fd, attr, b.baseAddress, min(count ?? b.count, b.count), 0) }
        if r != 0 { throw currentErrno() }
    }

    public static func setxattr(_ dir: Int32, _ name: UnsafePointer<CChar>, _ attr: UnsafePointer<CChar>, bytes: [UInt8]) throws(Errno) {
        let r = bytes.withUnsafeBytes { b in strata_lsetxattr_at(dir, name, attr, b.baseAddress, b.count, 0) }
        if r != 0 { throw currentErrno() }
    }

    /// fgetxattr into `buffer`; the value's length.
    public static func getxattr(fd: Int32, _ attr: UnsafePointer<CChar>, into buffer: inout [UInt8]) throws(Errno) -> Int {
        let n = buffer.withUnsafeMutableBytes { b in fgetxattr(fd, attr, b.baseAddress, b.count) }
        if n < 0 { throw currentErrno() }
        return n
    }
}

extension PathXattr {
    public static func set(_ path: String, _ name: String, bytes: [UInt8], count: Int? = nil, follow: Bool = false) throws(Errno) {
        let r = bytes.withUnsafeBytes { b in
            let n = min(count ?? b.count, b.count)
            return follow ? CStrata.setxattr(path, name, b.baseAddress, n, 0) : lsetxattr(path, name, b.baseAddress, n, 0)
        }
        if r != 0 { throw currentErrno() }
    }
}
