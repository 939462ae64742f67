import Synchronization
import Sys
import SystemPackage

/// Open files (or directories) by FUSE file handle.
///
/// A handle is an index into this table with a generation and a tag, not a
/// pointer: a handle that is stale (already released) or of another table
/// (a file's handle given to a directory call) gives EBADF instead of
/// undefined behaviour, as go-fuse's table of open files does. Shards keep
/// concurrent opens and reads of different files off one lock.
///
/// Layout: tag (8 bits, never 0) | generation (24) | slot (28) | shard (4).
/// A slot's generation wraps after 16 million reuses of that one slot.
public final class HandleTable<Object: AnyObject & Sendable>: @unchecked Sendable {
    // Inlinable (with what it touches), so that the callers in FUSE,
    // Loopback and OverlayFS get code specialised for their object type: a
    // generic call across modules would go through witness tables on every
    // read and write.
    @usableFromInline struct Slot {
        @usableFromInline var object: Object?
        @usableFromInline var generation: UInt32
        @inlinable init(object: Object?, generation: UInt32) {
            self.object = object
            self.generation = generation
        }
    }
    @usableFromInline struct Shard {
        @usableFromInline var slots: [Slot] = []
        @usableFromInline var free: [Int] = []
        @inlinable init() {}
    }
    @usableFromInline static var shardBits: UInt64 { 4 }
    @usableFromInline static var shardCount: Int { 1 << Int(shardBits) }
    @usableFromInline let shards: [Locked<Shard>]
    @usableFromInline let tag: UInt8
    @usableFromInline let next = Atomic<UInt64>(0)

    /// `tag` tells this table's handles from another's (1-255).
    public init(tag: UInt8) {
        precondition(tag != 0, "handle tags start at 1: handle 0 means none")
        self.tag = tag
        shards = (0..<Self.shardCount).map { _ in Locked(Shard()) }
    }

    /// Files `object` and returns its handle; the table keeps it until `remove`.
    @inlinable
    public func insert(_ object: Object) -> UInt64 {
        let shard = Int(next.add(1, ordering: .relaxed).oldValue % UInt64(Self.shardCount))
        let (slot, generation) = shards[shard].withLock { s -> (Int, UInt32) in
            if let i = s.free.popLast() {
                s.slots[i].object = object
                return (i, s.slots[i].generation)
            }
            s.slots.append(Slot(object: object, generation: 0))
            return (s.slots.count - 1, 0)
        }
        return UInt64(tag) << 56 | UInt64(generation & 0xFF_FFFF) << 32
            | UInt64(slot) << Self.shardBits | UInt64(shard)
    }

    @usableFromInline struct Place {
        @usableFromInline let shard: Int, slot: Int, generation: UInt32
        @inlinable init(shard: Int, slot: Int, generation: UInt32) {
            self.shard = shard
            self.slot = slot
            self.generation = generation
        }
    }

    @inlinable @inline(__always)
    func place(_ handle: UInt64) -> Place? {
        guard UInt8(truncatingIfNeeded: handle >> 56) == tag else { return nil }
        let low = handle & 0xFFFF_FFFF
        return Place(shard: Int(low & (UInt64(Self.shardCount) - 1)), slot: Int(low >> Self.shardBits),
                     generation: UInt32(truncatingIfNeeded: handle >> 32) & 0xFF_FFFF)
    }

    /// The object filed under `handle`; EBADF when the handle is stale or
    /// not one of this table's.
    @inlinable @inline(__always)
    public func get(_ handle: UInt64) throws(Errno) -> Object {
        guard let p = place(handle) else { throw .badFileDescriptor }
        let o = shards[p.shard].withLock { s -> Object? in
            guard p.slot < s.slots.count, s.slots[p.slot].generation & 0xFF_FFFF == p.generation else { return nil }
            return s.slots[p.slot].object
        }
        guard let o else { throw .badFileDescriptor }
        return o
    }

    /// Takes the object out: its handle becomes stale at once.
    @inlinable @discardableResult
    public func remove(_ handle: UInt64) -> Object? {
        guard let p = place(handle) else { return nil }
        return shards[p.shard].withLock { s -> Object? in
            guard p.slot < s.slots.count, s.slots[p.slot].generation & 0xFF_FFFF == p.generation,
                  let o = s.slots[p.slot].object else { return nil }
            s.slots[p.slot].object = nil
            s.slots[p.slot].generation &+= 1
            s.free.append(p.slot)
            return o
        }
    }

    /// Open objects now (statistics).
    public var count: Int {
        shards.reduce(0) { n, s in n + s.withLock { $0.slots.count - $0.free.count } }
    }
}
