import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An open file whose reads and writes go to one real descriptor.
public protocol DescriptorBacked: AnyObject, Sendable {
    var fd: Int32 { get }
}

/// An open file backed by a real descriptor, which closes with the object:
/// the common case for file systems over real directories (loopback).
public final class FDHandle: DescriptorBacked, @unchecked Sendable {
    public let fd: Int32
    public let writable: Bool
    private let owner: UniqueFD

    public init(_ owner: consuming UniqueFD, writable: Bool = true) {
        self.fd = owner.raw
        self.writable = writable
        self.owner = owner
    }
}

/// The operations every fd-backed open file answers alike.
public extension DescriptorBacked {
    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if currentErrno() == .interrupted { continue }
                if done > 0 { break }
                throw currentErrno()
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) throws(Errno) -> Int {
        let n = try check(retryEINTR { pwrite(fd, data.baseAddress, data.count, off_t(offset)) })
        return n
    }

    /// close() of a duplicate reports deferred write errors (NFS-style
    /// sources) at the caller's close, as a native filesystem would.
    func flush() throws(Errno) {
        try Sys.dup(fd).close()
    }

    func fsync(dataOnly: Bool) throws(Errno) {
        try check((dataOnly ? fdatasync(fd) : Glibc.fsync(fd)))
    }

    func fallocate(mode: Int32, offset: UInt64, length: UInt64) throws(Errno) {
        try Sys.fallocate(fd, mode: mode, offset: Int64(offset), length: Int64(length))
    }

    func lseek(offset: Int64, whence: Int32) throws(Errno) -> Int64 {
        let o = try check(Glibc.lseek(fd, off_t(offset), whence))
        return Int64(o)
    }

    func copyRange(offsetIn: UInt64, to out: some DescriptorBacked, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        var oi = Int64(offsetIn), oo = Int64(offsetOut)
        return try Sys.copyFileRange(fd, &oi, out.fd, &oo, Int(length), flags: UInt32(flags))
    }
}

