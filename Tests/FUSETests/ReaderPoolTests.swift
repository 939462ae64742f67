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

/// A `BlockingFS` mounted and served by a session of its own, taken down
/// (blocked lookups let go first) when the test lets go of it.
final class PoolMount {
    let t = TempDir()
    let mnt: String
    let fs = BlockingFS()
    let session: Session<BlockingFS>
    private let method: MountMethod
    private var device: MountedDevice?
    private let done = DispatchSemaphore(value: 0)

    init(threads: Int, maxThreads: Int? = nil) throws {
        mnt = t.sub("mnt")
        let mounted = try Mounter.mount(MountConfig(mountpoint: mnt, fsname: "pooltest"))
        method = mounted.method
        var options = SessionOptions()
        options.uring = .off
        options.threads = threads
        if let maxThreads { options.maxThreads = maxThreads }
        session = Session(fs: fs, deviceFD: mounted.device.raw, options: options)
        device = consume mounted
        let (session, done) = (self.session, self.done)
        Thread { try? session.run(); done.signal() }.start()
    }

    deinit {
        for _ in 0..<16 { fs.gate.signal() }
        try? Mounter.unmount(mnt, method: method, lazy: true)
        _ = done.wait(timeout: .now() + 10)
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ReaderPoolTests {
    /// With two readers, three requests that block (a slow fsync, a lazy
    /// layer's fetch) must not stall the mount: readers are added while
    /// all are busy. A fixed pool of two fails at the third lookup.
    @Test func requestsThatBlockDoNotStallTheMount() throws {
        let m = try PoolMount(threads: 2, maxThreads: 8)
        let (mnt, fs, session) = (m.mnt, m.fs, m.session)
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
        withExtendedLifetime(m) {}
    }

    /// One caller at a time never needs more readers than the kept ones.
    @Test func aSerialCallerKeepsTheReadersItHas() throws {
        let m = try PoolMount(threads: 2)
        for i in 0..<2000 { #expect(FileOps(m.mnt).stat("a\(i % 50)") == nil) }
        #expect(m.session.pool.readers == 2)
    }
}
