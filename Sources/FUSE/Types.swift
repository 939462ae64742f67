import CFuseProto
import SystemPackage
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// A FUSE node id: the kernel's handle for an inode of ours. 1 is the root.
public typealias NodeID = UInt64

public extension NodeID {
    static let root: NodeID = 1
}

/// Who is asking: the credentials and process the kernel reports for the
/// request. Passed by value; building one allocates nothing.
public struct Request: Sendable {
    public let unique: UInt64
    public let uid: UInt32
    public let gid: UInt32
    public let pid: UInt32
}

/// A file name inside the request buffer, NUL-terminated by the kernel.
/// Valid only during the call it is passed to: copy it to keep it.
public typealias Name = FileName

/// Attributes as FUSE reports them; built from a `stat` without copying names.
public struct Attr: Sendable, Equatable {
    public var ino: UInt64 = 0
    public var size: UInt64 = 0
    public var blocks: UInt64 = 0
    public var atime: timespec = timespec()
    public var mtime: timespec = timespec()
    public var ctime: timespec = timespec()
    public var mode: UInt32 = 0
    public var nlink: UInt32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var rdev: UInt32 = 0
    public var blksize: UInt32 = 0

    public init() {}

    public init(_ st: stat) {
        ino = UInt64(st.st_ino)
        size = UInt64(st.st_size)
        blocks = UInt64(st.st_blocks)
        atime = st.st_atim
        mtime = st.st_mtim
        ctime = st.st_ctim
        mode = st.st_mode
        nlink = UInt32(truncatingIfNeeded: st.st_nlink)
        uid = st.st_uid
        gid = st.st_gid
        // The kernel's new_encode_dev: 12-bit major, 20-bit minor.
        let maj = Sys.major(UInt64(st.st_rdev)), mnr = Sys.minor(UInt64(st.st_rdev))
        rdev = (mnr & 0xff) | (maj << 8) | ((mnr & ~0xff) << 12)
        blksize = UInt32(truncatingIfNeeded: st.st_blksize)
    }

    public var fileType: UInt32 { mode & Linux.S_IFMT }
    public var isDirectory: Bool { fileType == Linux.S_IFDIR }

    public static func == (a: Attr, b: Attr) -> Bool {
        a.ino == b.ino && a.size == b.size && a.mode == b.mode && a.nlink == b.nlink
            && a.uid == b.uid && a.gid == b.gid && a.rdev == b.rdev
            && a.mtime.tv_sec == b.mtime.tv_sec && a.mtime.tv_nsec == b.mtime.tv_nsec
    }
}

/// How long the kernel may trust a name or attributes without asking again.
public struct CacheTimeout: Sendable {
    public var seconds: UInt64
    public var nanoseconds: UInt32
    public init(seconds: UInt64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
    public init(_ seconds: Double) {
        let s = max(0, seconds)
        self.seconds = UInt64(s)
        self.nanoseconds = UInt32((s - Double(UInt64(s))) * 1e9)
    }
    public static let zero = CacheTimeout(seconds: 0)
}

/// The answer to a lookup (and to mknod, mkdir, symlink, link, create).
/// `node == 0` is a negative entry: the kernel caches that the name is absent.
public struct Entry: Sendable {
    public var node: NodeID
    public var generation: UInt64 = 0
    public var attr: Attr
    public var entryTimeout: CacheTimeout
    public var attrTimeout: CacheTimeout

    public init(node: NodeID, attr: Attr, entryTimeout: CacheTimeout, attrTimeout: CacheTimeout) {
        self.node = node
        self.attr = attr
        self.entryTimeout = entryTimeout
        self.attrTimeout = attrTimeout
    }

    public static func negative(_ timeout: CacheTimeout) -> Entry {
        Entry(node: 0, attr: Attr(), entryTimeout: timeout, attrTimeout: .zero)
    }
}

/// What open, opendir and create hand back. `backingFD`, when set and the
/// session negotiated passthrough, is registered with the kernel so reads and
/// writes bypass the daemon; the file system keeps owning the descriptor.
public struct OpenReply: Sendable {
    public var handle: UInt64
    public var keepCache = false
    public var directIO = false
    public var cacheDir = false
    public var nonSeekable = false
    public var parallelDirectWrites = true
    /// No FLUSH on close (nothing to report for a read-only file).
    public var noFlush = false
    public var backingFD: Int32 = -1

    public init(handle: UInt64) { self.handle = handle }
}

/// Which attributes a setattr changes; `nil` fields stay as they are.
public struct SetAttrRequest: Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange?
    public var mtime: TimeChange?
    public var ctime: timespec?
    public var handle: UInt64?
    /// The kernel asks to drop setuid/setgid (handle_killpriv_v2).
    public var killSUIDGID = false

    public enum TimeChange: Sendable {
        case now
        case set(timespec)
    }

    public init() {}
}

/// The filesystem's figures for statfs.
public struct StatFS: Sendable {
    public var blocks: UInt64 = 0, bfree: UInt64 = 0, bavail: UInt64 = 0
    public var files: UInt64 = 0, ffree: UInt64 = 0
    public var bsize: UInt32 = 4096, namelen: UInt32 = 255, frsize: UInt32 = 4096

    public init() {}

    public init(_ s: statvfs) {
        blocks = UInt64(s.f_blocks); bfree = UInt64(s.f_bfree); bavail = UInt64(s.f_bavail)
        files = UInt64(s.f_files); ffree = UInt64(s.f_ffree)
        bsize = UInt32(truncatingIfNeeded: s.f_bsize); namelen = UInt32(truncatingIfNeeded: s.f_namemax)
        frsize = UInt32(truncatingIfNeeded: s.f_frsize)
    }
}

/// Result of a getxattr or listxattr call: with `size == 0` in the request,
/// only the needed length; else the bytes written into the reply buffer.
public enum XattrReply: Sendable {
    case size(Int)
    case data(Int)
}
