/// How a session serves: tuned by the command line's mount options.
public struct SessionOptions: Sendable {
    /// Worker threads, each with its own cloned /dev/fuse descriptor.
    public var threads = 4
    /// Ask for FUSE passthrough (kernel 6.9+, needs CAP_SYS_ADMIN).
    public var passthrough = true
    /// Negotiate POSIX ACL support: the kernel enforces ACLs and leaves the
    /// umask to the file system (on by default, as fuse-overlayfs; `noacl`).
    public var posixACL = true
    /// Largest read/write request, in bytes (1 MiB: max_pages 256).
    public var maxWrite: UInt32 = 1 << 20
    /// Log every request (slow; for debugging).
    public var debug = false

    public init() {}
}
