import CStrata
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
    private struct Slot { var id: Int32; var opens: Int }
    private let slots = Mutex<[NodeID: Slot]>([:])
    private let handleToNode = Mutex<[UInt64: NodeID]>([:])

    /// Registers (or reuses) the backing id for `node`; nil if the kernel
    /// refused, in which case the open goes through the daemon.
    func acquire(devFD: Int32, node: NodeID, handle: UInt64, backingFD: Int32) -> Int32? {
        let id: Int32? = slots.withLock { slots -> Int32? in
            if var s = slots[node] {
                s.opens += 1
                slots[node] = s
                return s.id
            }
            let id = strata_fuse_backing_open(devFD, backingFD)
            if id <= 0 { return nil }
            slots[node] = Slot(id: id, opens: 1)
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
                _ = strata_fuse_backing_close(devFD, s.id)
                slots[node] = nil
            } else {
                slots[node] = s
            }
        }
    }
}
