import CFuseProto

/// What was negotiated on INIT. The file system sees the kernel's offer in
/// `kernelFlags` and may clear bits in `wanted` before the reply goes out.
public struct Connection: Sendable {
    public let kernelMajor: UInt32
    public let kernelMinor: UInt32
    /// Flags the kernel offered (flags | flags2 << 32).
    public let kernelFlags: UInt64
    /// Flags we will ask for; the reply carries `wanted & kernelFlags`.
    public var wanted: UInt64
    public var maxWrite: UInt32
    public var maxReadahead: UInt32
    public var maxBackground: UInt16 = 64
    public var congestionThreshold: UInt16 = 48
    public var timeGranularity: UInt32 = 1
    /// Cache invalidations to the kernel, for a file system that changes
    /// what it showed (see `Notifier`).
    public let notifier: Notifier

    public var negotiated: UInt64 { wanted & kernelFlags }
    public func has(_ flag: UInt64) -> Bool { negotiated & flag != 0 }
    public var passthrough: Bool { has(UInt64(SF_PASSTHROUGH)) }

    init(major: UInt32, minor: UInt32, flags: UInt64, wanted: UInt64, maxWrite: UInt32, maxReadahead: UInt32, notifier: Notifier) {
        self.notifier = notifier
        kernelMajor = major
        kernelMinor = minor
        kernelFlags = flags
        self.wanted = wanted
        self.maxWrite = maxWrite
        self.maxReadahead = maxReadahead
    }
}

public enum InitFlag {
    public static let asyncRead = UInt64(SF_ASYNC_READ)
    public static let atomicOTrunc = UInt64(SF_ATOMIC_O_TRUNC)
    public static let bigWrites = UInt64(SF_BIG_WRITES)
    public static let dontMask = UInt64(SF_DONT_MASK)
    public static let autoInvalData = UInt64(SF_AUTO_INVAL_DATA)
    public static let doReaddirplus = UInt64(SF_DO_READDIRPLUS)
    public static let readdirplusAuto = UInt64(SF_READDIRPLUS_AUTO)
    public static let asyncDIO = UInt64(SF_ASYNC_DIO)
    public static let writebackCache = UInt64(SF_WRITEBACK_CACHE)
    public static let parallelDirops = UInt64(SF_PARALLEL_DIROPS)
    public static let handleKillprivV2 = UInt64(SF_HANDLE_KILLPRIV_V2)
    public static let posixACL = UInt64(SF_POSIX_ACL)
    public static let maxPages = UInt64(SF_MAX_PAGES)
    public static let cacheSymlinks = UInt64(SF_CACHE_SYMLINKS)
    public static let setxattrExt = UInt64(SF_SETXATTR_EXT)
    public static let initExt = UInt64(SF_INIT_EXT)
    public static let passthrough = UInt64(SF_PASSTHROUGH)
    public static let exportSupport = UInt64(SF_EXPORT_SUPPORT)
    public static let flockLocks = UInt64(SF_FLOCK_LOCKS)
    public static let posixLocks = UInt64(SF_POSIX_LOCKS)
    /// FUSE_OVER_IO_URING (6.14+): requests may be served on io_uring queues.
    public static let overIOURing: UInt64 = 1 << 41
}
