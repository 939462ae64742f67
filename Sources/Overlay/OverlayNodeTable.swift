import Sys
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Live nodes by id and by the real inode of their top location, sharded so
/// that requests on different inodes do not contend.
final class OverlayNodeTable: @unchecked Sendable {
    static let shards = 64
    private let byID: [Locked<[UInt64: OverlayNode]>]
    private let byKey: [Locked<[InodeKey: OverlayNode]>]
    private let nextID = Atomic<UInt64>(2)
    let root: OverlayNode

    init(root: OverlayNode) {
        // Room for a few thousand nodes before any shard grows (a first
        // walk creates one per entry; growing rehashes the whole shard).
        byID = (0..<Self.shards).map { _ in Locked(Dictionary(minimumCapacity: 128)) }
        byKey = (0..<Self.shards).map { _ in Locked(Dictionary(minimumCapacity: 128)) }
        self.root = root
        root.setFirstReference()
    }

    @inline(__always)
    func get(_ id: UInt64) -> OverlayNode? {
        if id == 1 { return root }
        return byID[Int(id % UInt64(Self.shards))].withLock { $0[id] }
    }

    private func shard(_ k: InodeKey) -> Locked<[InodeKey: OverlayNode]> { byKey[Int(k.ino % UInt64(Self.shards))] }

    /// The live node for `key`, with one more reference; or a new one built
    /// by `make` (given its id).
    func reference(_ key: InodeKey, make: (UInt64) -> OverlayNode) -> OverlayNode {
        if key == root.snapshot.key { return root }
        let s = shard(key)
        if let n = s.withLock({ $0[key] }), n.retain() { return n }
        let fresh = make(nextID.add(1, ordering: .relaxed).oldValue)
        return s.withLock { m -> OverlayNode in
            // A node that died meanwhile (its last FORGET) is replaced.
            if let n = m[key], n.retain() { return n }
            fresh.setFirstReference()
            m[key] = fresh
            byID[Int(fresh.id % UInt64(Self.shards))].withLock { $0[fresh.id] = fresh }
            return fresh
        }
    }

    func find(_ key: InodeKey) -> OverlayNode? { shard(key).withLock { $0[key] } }

    /// `stale` (just referenced for `key`) stands for an inode that is gone:
    /// give its reference back and put a fresh node under the key. The stale
    /// node stays reachable by id for the kernel's remaining references.
    func replaceStale(_ stale: OverlayNode, _ key: InodeKey, make: (UInt64) -> OverlayNode) -> OverlayNode {
        let fresh = make(nextID.add(1, ordering: .relaxed).oldValue)
        let staleDied = stale.release(1)
        if staleDied {
            byID[Int(stale.id % UInt64(Self.shards))].withLock { _ = $0.removeValue(forKey: stale.id) }
        }
        return shard(key).withLock { m -> OverlayNode in
            if let current = m[key], current !== stale, current.retain() { return current }
            fresh.setFirstReference()
            m[key] = fresh
            byID[Int(fresh.id % UInt64(Self.shards))].withLock { $0[fresh.id] = fresh }
            return fresh
        }
    }

    /// Every live node (for statistics: takes each shard's lock in turn).
    func forEach(_ body: (OverlayNode) -> Void) {
        body(root)
        for s in byID { for n in s.withLock({ Array($0.values) }) { body(n) } }
    }

    /// The node's top location changed (copy-up): re-key it.
    func rekey(_ n: OverlayNode, from old: InodeKey, to new: InodeKey) {
        shard(old).withLock { if $0[old] === n { $0[old] = nil } }
        shard(new).withLock { if !n.isDead { $0[new] = n } }
    }

    /// The inode lost its last name: its number may be reused.
    func detach(_ n: OverlayNode) {
        let k = n.snapshot.key
        shard(k).withLock { if $0[k] === n { $0[k] = nil } }
    }

    func forget(_ id: UInt64, count: UInt64) {
        guard id != 1, let n = get(id), n.release(count) else { return }
        // Dead: no reference can be taken any more, so the maps may drop it
        // (a key already holding a newer node keeps it).
        let k = n.snapshot.key
        shard(k).withLock { m in if m[k] === n { m[k] = nil } }
        byID[Int(id % UInt64(Self.shards))].withLock { _ = $0.removeValue(forKey: id) }
    }
}
