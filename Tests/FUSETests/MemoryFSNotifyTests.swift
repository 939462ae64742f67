import CStrata
import Foundation
import Sys
import SystemPackage
import Testing
import TestSupport
@testable import FUSE
#if canImport(Glibc)
import Glibc
#endif

/// A tiny in-memory filesystem: the FUSE layer tested on its own, without
/// the loopback. Root holds "f" (node 2) and, when `gExists`, "g" (node 3).
final class MemoryFS: FileSystem, @unchecked Sendable {
    let content = Locked<[UInt8]>(Array("one".utf8))
    let gExists = Locked(false)
    let day = CacheTimeout(seconds: 86400)

    func attr(_ node: NodeID) -> Attr {
        var a = Attr()
        a.ino = node
        a.nlink = 1
        if node == 1 { a.mode = Linux.S_IFDIR | 0o755 } else {
            a.mode = Linux.S_IFREG | 0o644
            a.size = UInt64(node == 2 ? content.withLock { $0.count } : 0)
        }
        return a
    }

    func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry {
        if name.string == "f" { return Entry(node: 2, attr: attr(2), entryTimeout: day, attrTimeout: day) }
        if name.string == "g" && gExists.withLock({ $0 }) { return Entry(node: 3, attr: attr(3), entryTimeout: day, attrTimeout: day) }
        return .negative(day)
    }
    let getattrs = Locked(0)
    func getattr(_ r: Request, node: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) {
        getattrs.withLock { $0 += 1 }
        return (attr(node), day)
    }
    func open(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        var o = OpenReply(handle: node)
        o.keepCache = true
        return o
    }
    func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        content.withLock { c in
            let start = min(Int(offset), c.count), n = min(buffer.count, c.count - start)
            c.withUnsafeBytes { buffer.baseAddress?.copyMemory(from: $0.baseAddress! + start, byteCount: n) }
            return n
        }
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct MemoryFSNotifyTests {
    @Test func invalidationsReachTheKernelCaches() throws {
        let t = TempDir()
        let mnt = t.sub("mnt")
        let fs = MemoryFS()
        var config = MountConfig(mountpoint: mnt, fsname: "memtest")
        let mounted = try Mounter.mount(config)
        let (fd, method) = (mounted.device.raw, mounted.method)
        let session = Session(fs: fs, deviceFD: fd, options: SessionOptions())
        let done = DispatchSemaphore(value: 0)
        Thread { try? session.run(); done.signal() }.start()
        defer {
            try? Mounter.unmount(mnt, method: method)
            _ = done.wait(timeout: .now() + 5)
        }
        // (No read first: every read invalidates the cached atime, and with it
        // the next stat's attributes, unless the mount is read-only.)
        #expect(FileOps(mnt).stat("f")?.st_size == 3)
        fs.content.withLock { $0 = Array("two!".utf8) }
        let before = fs.getattrs.withLock { $0 }
        #expect(FileOps(mnt).stat("f")?.st_size == 3, "getattr calls: \(before) -> \(fs.getattrs.withLock { $0 })")     // attributes cached for a day
        #expect(session.notifier.invalidateInode(2) == nil)
        #expect(FileOps(mnt).stat("f")?.st_size == 4)
        #expect(FileOps(mnt).read("f") == "two!")    // inval_inode also dropped the data

        #expect(FileOps(mnt).stat("g") == nil)            // negative entry cached
        fs.gExists.withLock { $0 = true }
        #expect(FileOps(mnt).stat("g") == nil)
        #expect(session.notifier.invalidateEntry(parent: 1, name: "g") == nil)
        #expect(FileOps(mnt).stat("g")?.st_ino == 3)

        fs.gExists.withLock { $0 = false }
        #expect(session.notifier.delete(parent: 1, child: 3, name: "g") == nil)
        #expect(FileOps(mnt).stat("g") == nil)
        // Unimplemented operations answer ENOSYS (the kernel then reports it).
        #expect(FileOps(mnt).mkdir("d") == "ENOSYS")
    }
}
