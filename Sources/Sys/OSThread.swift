import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A thread of the operating system. The mount path uses this rather than
/// Foundation's `Thread`: linking Foundation loads it and its ICU data at
/// every start, and containers/storage starts the mount program at every
/// layer it mounts (several per build step).
public struct OSThread: @unchecked Sendable {
    private let id: pthread_t

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Starts `body` on a new thread; `name` is cut to the kernel's 15 bytes.
    public static func start(name: String, stackSize: Int = 1 << 20,
                             _ body: @escaping @Sendable () -> Void) throws(SysError) -> OSThread {
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setstacksize(&attr, stackSize)
        let box = Unmanaged.passRetained(Body(body)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { arg in
            guard let arg else { return nil }
            Unmanaged<Body>.fromOpaque(arg).takeRetainedValue().run()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Body>.fromOpaque(box).release()
            throw SysError(Errno(rawValue: rc), "start thread", name)
        }
        _ = strata_set_thread_name(tid, String(name.utf8.prefix(15)) ?? "strata")
        return OSThread(id: tid)
    }

    /// Waits for the thread to end.
    public func join() { pthread_join(id, nil) }

    /// Lets the thread end on its own; nobody will join it.
    public func detach() { pthread_detach(id) }

    /// How many threads this process has now (/proc/self/task), so that a
    /// caller can check it is still single-threaded before `fork`.
    public static func count() -> Int {
        guard let d = opendir("/proc/self/task") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while let e = readdir(d) {
            if e.pointee.d_name.0 != 0x2E { n += 1 }   // not "." or ".."
        }
        return n
    }
}
