import Synchronization
import Sys
import SystemPackage
import Tables
#if canImport(Glibc)
import Glibc
#endif

/// An open file of the pool: a descriptor on the branch that holds it.
/// Both change when `moveonenospc` moves the file to another branch.
public final class PoolFile: DescriptorBacked, @unchecked Sendable {
    private let state: Mutex<(owner: OwnedFD, branch: Branch)>
    let flags: Int32

    init(_ owner: consuming UniqueFD, branch: Branch, flags: Int32 = O_RDONLY) {
        state = Mutex((OwnedFD(owner), branch))
        self.flags = flags
    }

    public var fd: Int32 { state.withLock { $0.owner.raw } }
    var branch: Branch { state.withLock { $0.branch } }

    /// The file now lives on `branch`, open as `owner`.
    func moved(to branch: Branch, _ owner: consuming UniqueFD) {
        let o = OwnedFD(owner)
        state.withLock { $0 = (o, branch) }
    }
}

/// A directory's merged listing, made at opendir: each name once, from the
/// first branch (in order) that has it. Names live in one byte buffer and
/// the items point into it: a 10,000-entry directory costs a few
/// allocations, not one per name.
final class Listing: @unchecked Sendable {
    struct Item { let start: Int32; let length: Int32; let ino: UInt64; let type: UInt8 }
    private(set) var bytes: [UInt8] = []
    private(set) var items: [Item] = []
    /// Open addressing over item indexes + 1 (0: empty), by name hash; only
    /// when several branches are merged.
    private var table: [Int32] = []
    private var mask = 0

    init(expecting n: Int, dedupe: Bool) {
        items.reserveCapacity(n)
        bytes.reserveCapacity(n * 16)
        if dedupe {
            var size = 16
            while size < n * 2 { size <<= 1 }
            table = [Int32](repeating: 0, count: size)
            mask = size - 1
        }
    }

    /// Adds a name unless present; `name` is a slice of a getdents buffer.
    func add(_ name: UnsafeRawBufferPointer, ino: UInt64, type: UInt8, hash: UInt64) {
        if !table.isEmpty {
            var slot = Int(truncatingIfNeeded: hash) & mask
            while table[slot] != 0 {
                if equal(items[Int(table[slot]) - 1], name) { return }
                slot = (slot + 1) & mask
            }
            if items.count * 2 >= table.count {
                grow()
                return add(name, ino: ino, type: type, hash: hash)
            }
            table[slot] = Int32(items.count + 1)
        }
        items.append(Item(start: Int32(bytes.count), length: Int32(name.count), ino: ino, type: type))
        bytes.append(contentsOf: name)
    }

    private func equal(_ it: Item, _ name: UnsafeRawBufferPointer) -> Bool {
        guard Int(it.length) == name.count else { return false }
        guard let n = name.baseAddress else { return true }
        return bytes.withUnsafeBytes { b in b.baseAddress.map { memcmp($0 + Int(it.start), n, name.count) == 0 } ?? false }
    }

    /// The name of item `i`, for a reply.
    func withName<R>(_ i: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let it = items[i]
        return bytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[Int(it.start)..<Int(it.start + it.length)])) }
    }

    private func grow() {
        let size = table.count * 2
        table = [Int32](repeating: 0, count: size)
        mask = size - 1
        for (i, it) in items.enumerated() {
            let h = bytes.withUnsafeBytes { InodeNumbers.fnv1a(UnsafeRawBufferPointer(rebasing: $0[Int(it.start)..<Int(it.start + it.length)])) }
            var slot = Int(truncatingIfNeeded: h) & mask
            while table[slot] != 0 { slot = (slot + 1) & mask }
            table[slot] = Int32(i + 1)
        }
    }
}
