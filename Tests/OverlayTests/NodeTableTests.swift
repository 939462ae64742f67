@testable import Overlay
import Synchronization
import Tables
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The node table's reference counts (the kernel's lookups less its
/// FORGETs) against the copy-up that moves a node to another key.
@Suite struct NodeTableTests {
    func node(_ id: UInt64, _ key: InodeKey, parent: OverlayNode? = nil) -> OverlayNode {
        OverlayNode(id: id, isDirectory: false, ino: key.ino, state: .init(place: .init(
            parent: parent, name: [0x66, 0], inUpper: false, lower: 1, lowerDirs: [], key: key)))
    }

    /// A copy-up has given the node its upper key while a lookup that
    /// resolved the lower copy still references it by the old one; FORGETs
    /// arrive meanwhile. Each side's update must count: the two keys fall in
    /// different shards, so a count kept under the shard locks loses them.
    @Test func lateLookupAndForgetAcrossACopyUpKeepTheCount() async throws {
        let root = node(1, InodeKey(dev: 1, ino: 1))
        let table = NodeTable<OverlayNode>(root: root)
        let old = InodeKey(dev: 1, ino: 100), new = InodeKey(dev: 2, ino: 101)
        let n = table.reference(old) { node($0, old, parent: root) }
        let start: UInt64 = 1_000_000
        for _ in 1..<start { _ = table.reference(old) { node($0, old, parent: root) } }
        #expect(n.lookupCount == start)
        // The copy-up's first half: the node knows its new key, the table
        // still has it under the old one.
        n.state.withLock { $0.place.key = new }
        let rounds = 200_000
        await withTaskGroup(of: Void.self) { g in
            g.addTask {
                for _ in 0..<rounds {
                    let m = table.reference(old) { node($0, old, parent: root) }
                    precondition(m === n)
                }
            }
            g.addTask {
                for _ in 0..<rounds { table.forget(n.id, count: 1) }
            }
        }
        #expect(n.lookupCount == start, "lookups \(rounds), forgets \(rounds): the count must be back where it was")
        table.rekey(n, from: old, to: new)
        #expect(table.find(new) === n && table.find(old) == nil)
    }

    /// The last FORGET takes the node out; a lookup racing it gets either
    /// the live node or a fresh one, never a dead node.
    @Test func aLookupNeverGetsADeadNode() async throws {
        let root = node(1, InodeKey(dev: 1, ino: 1))
        let table = NodeTable<OverlayNode>(root: root)
        let key = InodeKey(dev: 1, ino: 200)
        let dead = await withTaskGroup(of: Int.self) { g in
            for _ in 0..<2 {
                g.addTask {
                    var dead = 0
                    for _ in 0..<50_000 {
                        let m = table.reference(key) { node($0, key, parent: root) }
                        if m.isDead { dead += 1 }
                        table.forget(m.id, count: 1)
                    }
                    return dead
                }
            }
            return await g.reduce(0, +)
        }
        #expect(dead == 0)
        #expect(table.find(key) == nil, "every reference was given back: nothing may stay in the table")
    }
}
