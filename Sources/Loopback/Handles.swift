import FUSE
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// An open directory with its getdents64 buffer. The kernel serializes
/// readdir calls on one handle, so no lock is needed.
final class OpenDir: @unchecked Sendable {
    let fd: Int32
    private let owner: UniqueFD
    let buffer: UnsafeMutableRawPointer
    static let bufferSize = 32 * 1024
    var start = 0
    var end = 0
    /// Directory offset (a getdents d_off cookie) that `start` corresponds to.
    var position: UInt64 = 0

    init(_ owner: consuming UniqueFD) {
        self.fd = owner.raw
        self.owner = owner
        buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.bufferSize, alignment: 8)
    }
    deinit {
        buffer.deallocate()
    }

    /// Moves to a directory offset given by the kernel.
    func seek(_ offset: UInt64) {
        if offset == position { return }
        lseek(fd, off_t(Int64(bitPattern: offset)), SEEK_SET)
        start = 0
        end = 0
        position = offset
    }

    /// Refills the buffer; false at the end of the directory.
    func fill() throws(Errno) -> Bool {
        if start < end { return true }
        let n = try Sys.getdents(fd, buffer, OpenDir.bufferSize)
        start = 0
        end = n
        return n > 0
    }
}

import SystemPackage
