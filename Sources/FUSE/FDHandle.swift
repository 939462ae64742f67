import CStrata
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An open file backed by a real descriptor: the common case for file
/// systems over real directories (loopback, overlay). Its address is the
/// FUSE file handle, so finding it on read and write is a pointer
/// conversion, not a table lookup; the descriptor closes with the last release.
public final class FDHandle: @unchecked Sendable {
    public let fd: Int32
    public let writable: Bool

    public init(fd: Int32, writable: Bool = true) {
        self.fd = fd
        self.writable = writable
    }
    deinit { close(fd) }

    /// Retains the handle until `release` and returns its FUSE number.
    public func retainedHandle() -> UInt64 { UInt64(UInt(bitPattern: Unmanaged.passRetained(self).toOpaque())) }

    @inline(__always)
    public static func from(_ h: UInt64) throws(Errno) -> FDHandle {
        guard let p = UnsafeRawPointer(bitPattern: UInt(h)) else { throw .badFileDescriptor }
        return Unmanaged<FDHandle>.fromOpaque(p).takeUnretainedValue()
    }

    public static func release(_ h: UInt64) {
        guard let p = UnsafeRawPointer(bitPattern: UInt(h)) else { return }
        Unmanaged<FDHandle>.fromOpaque(p).release()
    }

    // MARK: the file operations every fd-backed file system answers alike

    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if strata_errno() == EINTR { continue }
                if done > 0 { break }
                throw currentErrno()
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) throws(Errno) -> Int {
        let n = retryEINTR { pwrite(fd, data.baseAddress, data.count, off_t(offset)) }
        if n < 0 { throw currentErrno() }
        return n
    }

    /// close() of a duplicate reports deferred write errors (NFS-style
    /// sources) at the caller's close, as a native filesystem would.
    public func flush() throws(Errno) {
        let d = dup(fd)
        if d < 0 { throw currentErrno() }
        if close(d) != 0 { throw currentErrno() }
    }

    public func fsync(dataOnly: Bool) throws(Errno) {
        if (dataOnly ? fdatasync(fd) : Glibc.fsync(fd)) != 0 { throw currentErrno() }
    }

    public func fallocate(mode: Int32, offset: UInt64, length: UInt64) throws(Errno) {
        if strata_fallocate(fd, mode, Int64(offset), Int64(length)) != 0 { throw currentErrno() }
    }

    public func lseek(offset: Int64, whence: Int32) throws(Errno) -> Int64 {
        let o = Glibc.lseek(fd, off_t(offset), whence)
        if o < 0 { throw currentErrno() }
        return Int64(o)
    }

    public func copyRange(offsetIn: UInt64, to out: FDHandle, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        var oi = Int64(offsetIn), oo = Int64(offsetOut)
        let n = strata_copy_file_range(fd, &oi, out.fd, &oo, Int(length), UInt32(flags))
        if n < 0 { throw currentErrno() }
        return n
    }
}

/// A file system whose open files are `FDHandle`s: reads, writes and the
/// other per-file operations are the same for all of them, so they are
/// written once here.
public protocol FDBackedFileSystem: FileSystem {}

public extension FDBackedFileSystem {
    func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try FDHandle.from(handle).read(offset: offset, into: buffer)
    }

    func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int {
        try FDHandle.from(handle).write(offset: offset, data: data)
    }

    func flush(_ r: Request, node: NodeID, handle: UInt64) throws(Errno) { try FDHandle.from(handle).flush() }

    func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        try FDHandle.from(handle).fsync(dataOnly: dataOnly)
    }

    func fallocate(_ r: Request, node: NodeID, handle: UInt64, mode: Int32, offset: UInt64, length: UInt64) throws(Errno) {
        try FDHandle.from(handle).fallocate(mode: mode, offset: offset, length: length)
    }

    func lseek(_ r: Request, node: NodeID, handle: UInt64, offset: Int64, whence: Int32) throws(Errno) -> Int64 {
        try FDHandle.from(handle).lseek(offset: offset, whence: whence)
    }

    func copyFileRange(_ r: Request, nodeIn: NodeID, handleIn: UInt64, offsetIn: UInt64,
                       nodeOut: NodeID, handleOut: UInt64, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        try FDHandle.from(handleIn).copyRange(offsetIn: offsetIn, to: try FDHandle.from(handleOut), offsetOut: offsetOut,
                                              length: length, flags: flags)
    }
}
