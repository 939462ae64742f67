import Synchronization
import Sys

/// The nodes the kernel knows, by id and by key, split into shards so that
/// requests on different inodes do not contend on one lock. One table
/// serves both file systems (go-fuse's bridge keeps one as well): the
/// loopback keys nodes by their real inode, the union by its `InodeKey`.
///
/// Node ids are never reused while the mount lives (a stale id is then
/// never another node); id 1 is the root.
public final class NodeTable<Node: TableNode>: @unchecked Sendable {
    public typealias Key = Node.Key
    // Inlinable where requests pass (get, reference, forget), so that each
    // file system gets code specialised for its node and key types.
    @usableFromInline static var shards: Int { 64 }
    @usableFromInline let byID: [Locked<[UInt64: Node]>]
    @usableFromInline let byKey: [Locked<[Key: Node]>]
    @usableFromInline let nextID = Atomic<UInt64>(2)
    public let root: Node
    /// The root's key, read once: the root never moves (it is the top of
    /// every layer), and reading it from the node would take the root's own
    /// lock on every lookup, one lock all lookups share.
    @usableFromInline let rootKey: Key

    public init(root: Node) {
        // Room for a few thousand nodes before any shard grows (a first
        // walk creates one per entry; growing rehashes the whole shard).
        byID = (0..<Self.shards).map { _ in Locked(Dictionary(minimumCapacity: 128)) }
        byKey = (0..<Self.shards).map { _ in Locked(Dictionary(minimumCapacity: 128)) }
        self.root = root
        rootKey = root.tableKey
        root.references.setFirst()
    }

    @inlinable @inline(__always)
    func idShard(_ id: UInt64) -> Locked<[UInt64: Node]> { byID[Int(id % UInt64(Self.shards))] }
    @inlinable @inline(__always)
    func keyShard(_ k: Key) -> Locked<[Key: Node]> {
        byKey[Int(k.shard % UInt64(Self.shards))]
    }

    @inlinable @inline(__always)
    public func get(_ id: UInt64) -> Node? {
        if id == 1 { return root }
        return idShard(id).withLock { $0[id] }
    }

    /// A fresh id for a node `make` builds.
    @inlinable
    func newID() -> UInt64 { nextID.add(1, ordering: .relaxed).oldValue }

    @inlinable
    func file(_ fresh: Node, _ key: Key, in m: inout [Key: Node]) -> Node {
        fresh.references.setFirst()
        m[key] = fresh
        idShard(fresh.id).withLock { $0[fresh.id] = fresh }
        return fresh
    }

    /// The live node for `key`, with one more reference; or a new one built
    /// by `make` (given its id), outside any lock.
    @inlinable
    public func reference(_ key: Key, make: (UInt64) -> Node) -> Node {
        if key == rootKey { return root }
        let s = keyShard(key)
        if let n = s.withLock({ $0[key] }), n.references.retain() { return n }
        let fresh = make(newID())
        return s.withLock { m -> Node in
            // A node that died meanwhile (its last FORGET) is replaced.
            if let n = m[key], n.references.retain() { return n }
            return file(fresh, key, in: &m)
        }
    }

    /// A node that no key leads to (an O_TMPFILE with no name yet), found
    /// only by id until it is filed under `key`.
    public func referenceUnnamed(_ key: Key, make: (UInt64) -> Node) -> Node {
        let fresh = make(newID())
        return keyShard(key).withLock { m in file(fresh, key, in: &m) }
    }

    @inlinable
    public func find(_ key: Key) -> Node? { keyShard(key).withLock { $0[key] } }

    /// `stale` (just referenced for `key`) stands for an inode that is gone:
    /// give its reference back and put a fresh node under the key. The stale
    /// node stays reachable by id for the kernel's remaining references.
    public func replaceStale(_ stale: Node, _ key: Key, make: (UInt64) -> Node) -> Node {
        let fresh = make(newID())
        if stale.references.release(1) {
            idShard(stale.id).withLock { _ = $0.removeValue(forKey: stale.id) }
        }
        return keyShard(key).withLock { m -> Node in
            if let current = m[key], current !== stale, current.references.retain() { return current }
            return file(fresh, key, in: &m)
        }
    }

    /// Every live node (for statistics: takes each shard's lock in turn).
    public func forEach(_ body: (Node) -> Void) {
        body(root)
        for s in byID { for n in s.withLock({ Array($0.values) }) where n !== root { body(n) } }
    }

    /// The node's key changed (an overlay copy-up): file it under the new one.
    public func rekey(_ n: Node, from old: Key, to new: Key) {
        keyShard(old).withLock { if $0[old] === n { $0[old] = nil } }
        keyShard(new).withLock { if !n.references.isDead { $0[new] = n } }
    }

    /// The inode lost its last name: its key may be reused by a new inode.
    public func detach(_ n: Node) {
        let k = n.tableKey
        keyShard(k).withLock { if $0[k] === n { $0[k] = nil } }
    }

    /// The kernel forgot `count` references; the last one removes the node.
    @inlinable
    public func forget(_ id: UInt64, count: UInt64) {
        guard id != 1, let n = get(id), n.references.release(count) else { return }
        // Dead: no reference can be taken any more, so the maps may drop it
        // (a key already holding a newer node keeps it).
        let k = n.tableKey
        keyShard(k).withLock { m in if m[k] === n { m[k] = nil } }
        idShard(id).withLock { _ = $0.removeValue(forKey: id) }
    }
}
