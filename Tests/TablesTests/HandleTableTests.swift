import SystemPackage
import Tables
import Testing

/// FUSE file handles are table indexes, not pointers: a handle the kernel
/// (or a bug) gives back after its release, or one of another table, must
/// give EBADF, never reach a freed or different object.
@Suite struct HandleTableTests {
    final class Box: @unchecked Sendable {
        let value: Int
        init(_ v: Int) { value = v }
    }

    @Test func aReleasedHandleIsRefusedEvenWhenItsSlotIsReused() throws {
        let t = HandleTable<Box>(tag: 1)
        let h = t.insert(Box(1))
        #expect(try t.get(h).value == 1)
        #expect(t.remove(h)?.value == 1)
        #expect(throws: Errno.badFileDescriptor) { try t.get(h) }
        // The slot is reused for the next object: the old handle still fails.
        let h2 = t.insert(Box(2))
        #expect(h2 != h)
        #expect(throws: Errno.badFileDescriptor) { try t.get(h) }
        #expect(try t.get(h2).value == 2)
        #expect(t.remove(h) == nil, "a stale release must not take the new object out")
        #expect(try t.get(h2).value == 2)
    }

    @Test func aHandleOfAnotherTableOrMadeUpIsRefused() throws {
        let files = HandleTable<Box>(tag: 1), dirs = HandleTable<Box>(tag: 3)
        let f = files.insert(Box(7))
        #expect(throws: Errno.badFileDescriptor) { try dirs.get(f) }
        for bogus: UInt64 in [0, 1, 0xFFFF_FFFF_FFFF_FFFF, f + 16, f ^ (1 << 32)] {
            #expect(throws: Errno.badFileDescriptor) { try files.get(bogus) }
        }
        #expect(try files.get(f).value == 7)
    }

    @Test func concurrentOpensAndReleasesKeepEveryObjectApart() async throws {
        let t = HandleTable<Box>(tag: 2)
        let bad = await withTaskGroup(of: Int.self) { g in
            for w in 0..<4 {
                g.addTask {
                    var bad = 0
                    for i in 0..<20_000 {
                        let v = w * 1_000_000 + i
                        let h = t.insert(Box(v))
                        if (try? t.get(h))?.value != v { bad += 1 }
                        if t.remove(h)?.value != v { bad += 1 }
                        if (try? t.get(h)) != nil { bad += 1 }
                    }
                    return bad
                }
            }
            return await g.reduce(0, +)
        }
        #expect(bad == 0)
        #expect(t.count == 0)
    }
}
