#if canImport(Glibc)
import Glibc
#endif

/// How a session serves: tuned by the command line's mount options.
public struct SessionOptions: Sendable {
    /// /dev/fuse readers kept waiting, each on its own cloned descriptor
    /// (see `ReaderPool` for why four, measured against two).
    public var threads = 4
    /// More readers are started while all are busy, up to this many.
    public var maxThreads = 16
    /// Ask for FUSE passthrough (kernel 6.9+, needs CAP_SYS_ADMIN).
    public var passthrough = true
    /// Negotiate POSIX ACL support: the kernel enforces ACLs and leaves the
    /// umask to the file system (on by default, as fuse-overlayfs; `noacl`).
    public var posixACL = true
    /// Largest read/write request, in bytes (1 MiB: max_pages 256).
    public var maxWrite: UInt32 = 1 << 20
    /// Log every request (slow; for debugging).
    public var debug = false
    /// FUSE over io_uring: `auto` uses it when the kernel offers it, `on`
    /// fails the mount when it cannot, `off` stays on /dev/fuse.
    public var uring = UringMode.auto
    /// Every listing request is a READDIRPLUS (entries with their
    /// attributes), not only the first of a directory as the kernel's
    /// "auto" mode does: a reader that lists in small chunks before it
    /// stats (Go's Readdirnames reads 8 KiB at a time, and
    /// containers/storage's diff walks that way) otherwise pays one LOOKUP
    /// round trip per entry past the first chunk. `readdirplus=auto` for
    /// the kernel's mode.
    public var readdirplusAlways = true
    /// Requests each CPU's ring queue can hold at once.
    public var uringDepth = 8
    /// Ring threads under SCHED_IDLE, so that the caller they answer wakes
    /// on their CPU (see RingQueue); `uring_sched=normal` turns it off.
    public var uringIdleThreads = true

    public enum UringMode: String, Sendable { case auto, on, off }

    /// `STRATA_URING` (auto, on, off) sets the default for `uring=`, so that
    /// every mount of a session (or of the test suite's second pass) can be
    /// put on one transport without editing each command line.
    public init() {
        if let v = getenv("STRATA_URING"), let m = UringMode(rawValue: String(cString: v)) { uring = m }
    }
}
