import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An io_uring of 128-byte SQEs for FUSE's ring commands (liburing's, driven
/// from CStrata's uring.c: liburing has no helper for FUSE's command area).
/// The FUSE module's `RingQueue` serves requests through it.
public final class FuseRing: @unchecked Sendable {
    private let ring: OpaquePointer

    public init(depth: Int) throws(Errno) {
        var err: Int32 = 0
        guard let r = strata_ring_new(UInt32(depth), &err) else { throw Errno(rawValue: err) }
        ring = r
    }

    deinit { strata_ring_free(ring) }

    public enum Command: UInt32 {
        case register = 1            // FUSE_IO_URING_CMD_REGISTER
        case commitAndFetch = 2      // FUSE_IO_URING_CMD_COMMIT_AND_FETCH
    }

    /// Queues a command for queue `qid` (REGISTER with the entry's two
    /// iovecs, COMMIT_AND_FETCH with none); false when the ring is full.
    @inlinable
    public func queue(_ command: Command, device: Int32, qid: Int, commitID: UInt64,
                      iov: UnsafePointer<iovec>?, userData: UInt64) -> Bool {
        queueRaw(command.rawValue, device, UInt16(qid), commitID, iov, userData) == 0
    }

    @usableFromInline
    func queueRaw(_ op: UInt32, _ device: Int32, _ qid: UInt16, _ commitID: UInt64, _ iov: UnsafePointer<iovec>?, _ userData: UInt64) -> Int32 {
        strata_ring_fuse_cmd(ring, device, op, qid, commitID, iov, userData)
    }

    /// Submits what is queued and waits for `count` completions; the
    /// negative errno on failure.
    public func submitAndWait(_ count: Int) -> Int32 { strata_ring_submit_and_wait(ring, UInt32(count)) }

    /// The next completion, if any: its user data and result.
    public func next() -> (userData: UInt64, result: Int32)? {
        var data: UInt64 = 0
        var res: Int32 = 0
        return strata_ring_next(ring, &data, &res) == 1 ? (data, res) : nil
    }
}
