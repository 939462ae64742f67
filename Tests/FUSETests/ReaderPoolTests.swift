import Foundation
import Sys
import SystemPackage
import Synchronization
import Testing
import TestSupport
@testable import FUSE
#if canImport(Glibc)
import Glibc
#endif

/// Lookups of names starting with "b" block until the test lets them go;
/// every other name answers at once.
final class BlockingFS: FileSystem, @unchecked Sendable {
    let entered = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)

    func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry {
        if name.string.hasPrefix("b") {
            entered.signal()
            gate.wait()
        }
        return .negative(.zero)
    }

    func getattr(_ r: Request, node: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) {
        var a = Attr()
        a.ino = node
        a.nlink = 2
        a.mode = Linux.S_IFDIR | 0o755
        return (a, .zero)
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ReaderPoolTests {
    /// With two readers, three requests that block (a slow fsync, a lazy
    /// layer's fetch) must not stall the mount: readers are added while
    /// all are busy. A fixed pool of two fails at the third lookup.
    @Test func requestsThatBlockDoNotStallTheMount() throws {
        let t = TempDir()
        let mnt = t.sub("mnt")
        let fs = BlockingFS()
        let mounted = try Mounter.mount(MountConfig(mountpoint: mnt, fsname: "pooltest"))
        let (fd, method) = (mounted.device.raw, mounted.method)
        var options = SessionOptions()
        options.uring = .off
        options.threads = 2
        options.maxThreads = 8
        let session = Session(fs: fs, deviceFD: fd, options: options)
        let done = DispatchSemaphore(value: 0)
        Thread { try? session.run(); done.signal() }.start()
        defer {
            for _ in 0..<16 { fs.gate.signal() }
            try? Mounter.unmount(mnt, method: method, lazy: true)
            _ = done.wait(timeout: .now() + 10)
        }
        #expect(FileOps(mnt).stat("a") == nil)
        for i in 0..<3 {
            let path = mnt + "/b\(i)"
            Thread { var st = stat(); _ = lstat(path, &st) }.start()
        }
        for i in 0..<3 {
            #expect(fs.entered.wait(timeout: .now() + 10) == .success, "blocked lookup \(i) never reached the file system")
        }
        let answered = DispatchSemaphore(value: 0)
        let path = mnt + "/c"
        Thread { var st = stat(); _ = lstat(path, &st); answered.signal() }.start()
        #expect(answered.wait(timeout: .now() + 10) == .success, "a lookup behind three blocked ones was not answered")
        #expect(session.pool.readers >= 4)
        #expect(session.pool.readers <= 8)
    }

    /// One caller at a time never needs more readers than the kept ones.
    @Test func aSerialCallerKeepsTheReadersItHas() throws {
        let t = TempDir()
        let mnt = t.sub("mnt")
        let fs = BlockingFS()
        let mounted = try Mounter.mount(MountConfig(mountpoint: mnt, fsname: "pooltest"))
        let (fd, method) = (mounted.device.raw, mounted.method)
        var options = SessionOptions()
        options.uring = .off
        options.threads = 2
        let session = Session(fs: fs, deviceFD: fd, options: options)
        let done = DispatchSemaphore(value: 0)
        Thread { try? session.run(); done.signal() }.start()
        defer {
            try? Mounter.unmount(mnt, method: method, lazy: true)
            _ = done.wait(timeout: .now() + 10)
        }
        for i in 0..<2000 { #expect(FileOps(mnt).stat("a\(i % 50)") == nil) }
        #expect(session.pool.readers == 2)
    }
}
