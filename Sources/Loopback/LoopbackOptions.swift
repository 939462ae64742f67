import FUSE

/// What the loopback is told on the command line.
public struct LoopbackOptions: Sendable {
    /// How long the kernel may cache names and attributes. Long by default:
    /// the source must not change behind the mount (layers do not); pass a
    /// short timeout for a live directory.
    public var timeout = CacheTimeout(seconds: 86400)
    /// Cache negative lookups as long as positive ones.
    public var negativeTimeout = CacheTimeout(seconds: 86400)
    /// Keep file data in the page cache across opens.
    public var keepCache = true
    /// Register open files for kernel passthrough (read/write bypass us).
    public var passthrough = true
    /// How many directory descriptors may be cached (the rest are opened on
    /// demand from their parent).
    public var dirFDBudget = 4096
    /// Create files with the caller's uid/gid (when we run as root).
    public var ownerFromCaller = true

    public init() {}
}
