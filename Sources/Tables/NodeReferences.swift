import Synchronization

/// The kernel's lookup references to one node, under the node's own lock.
///
/// A node can move to another key of its table (an overlay copy-up moves it
/// from its lower to its upper inode), so the table's per-key locks cannot
/// guard the count: a late lookup by the old key and a FORGET by the new one
/// would update it under two locks. `dead` once the count reached zero: the
/// node is on its way out of the table and must not be referenced again.
public final class NodeReferences: Sendable {
    @usableFromInline let refs = Mutex<(count: UInt64, dead: Bool)>((0, false))

    public init() {}

    /// One more reference, unless the node already died.
    @inlinable
    public func retain() -> Bool {
        refs.withLock { r in
            if r.dead { return false }
            r.count += 1
            return true
        }
    }

    /// `n` references fewer; true when this was the last (the node died).
    @inlinable
    public func release(_ n: UInt64) -> Bool {
        refs.withLock { r in
            if r.dead { return false }
            r.count = r.count > n ? r.count - n : 0
            if r.count == 0 { r.dead = true }
            return r.dead
        }
    }

    /// The first reference of a node not yet in a table.
    public func setFirst() { refs.withLock { $0 = (1, false) } }

    public var isDead: Bool { refs.withLock { $0.dead } }
    /// References now (statistics and tests).
    public var count: UInt64 { refs.withLock { $0.count } }
}

/// What a `NodeTable` needs of its nodes: the id the kernel knows, the
/// references it holds, and the key the node is found by now.
public protocol TableNode: AnyObject, Sendable {
    associatedtype Key: TableKey
    var id: UInt64 { get }
    var references: NodeReferences { get }
    /// The key the node is filed under now (it may change: see `rekey`).
    var tableKey: Key { get }
}

/// A node's key, with a cheap number to pick its shard by (an inode number:
/// hashing the whole key twice per lookup would cost more than the lock).
public protocol TableKey: Hashable, Sendable {
    var shard: UInt64 { get }
}
