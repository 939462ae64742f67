import CFuseProto
import Sys
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Backing files registered for passthrough, one per node.
///
/// Why per node: the kernel binds an inode to a single backing object while
/// any passthrough open is active and refuses a second one with EBUSY, so all
/// concurrent opens of a node share one backing id, released with the last.
final class BackingTable: Sendable {
    private struct Slot { var id: Int32; var opens: Int; var dev: UInt64; var ino: UInt64 }
    private let slots = Mutex<[NodeID: Slot]>([:])
    private let handleToNode = Mutex<[UInt64: NodeID]>([:])

    /// Registers (or reuses) the backing id for `node`; nil if the kernel
    /// refused, in which case the open goes through the daemon.
    /// A node whose registered backing is another file (an overlay file
    /// opened read-only in a lower layer, then copied up and opened for
    /// writing) gets nil: reusing the id would send the writes to the lower
    /// file. The kernel then refuses that open (EIO) rather than corrupt a layer.
    func acquire(devFD: Int32, node: NodeID, handle: UInt64, backingFD: Int32) -> Int32? {
        var st = stat()
        if fstat(backingFD, &st) != 0 { return nil }
        let dev = UInt64(st.st_dev), ino = UInt64(st.st_ino)
        let id: Int32? = slots.withLock { slots -> Int32? in
            if var s = slots[node] {
                if s.dev != dev || s.ino != ino { return nil }
                s.opens += 1
                slots[node] = s
                return s.id
            }
            guard let id = try? FuseBacking.open(device: devFD, backingFD), id > 0 else { return nil }
            slots[node] = Slot(id: id, opens: 1, dev: dev, ino: ino)
            return id
        }
        if id != nil { handleToNode.withLock { $0[handle] = node } }
        return id
    }

    /// Drops one open of the node behind `handle`; closes the id with the last.
    func release(devFD: Int32, handle: UInt64) {
        guard let node = handleToNode.withLock({ $0.removeValue(forKey: handle) }) else { return }
        slots.withLock { slots in
            guard var s = slots[node] else { return }
            s.opens -= 1
            if s.opens == 0 {
                FuseBacking.close(device: devFD, id: s.id)
                slots[node] = nil
            } else {
                slots[node] = s
            }
        }
    }
}
