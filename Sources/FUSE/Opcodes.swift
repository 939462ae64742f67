import CFuseProto

/// Names of the kernel's request opcodes (fuse_kernel.h), for statistics
/// and logs.
public enum Opcode {
    public static let count = 64

    public static func name(_ op: Int) -> String {
        switch op {
        case SF_LOOKUP: "LOOKUP"
        case SF_FORGET: "FORGET"
        case SF_GETATTR: "GETATTR"
        case SF_SETATTR: "SETATTR"
        case SF_READLINK: "READLINK"
        case SF_SYMLINK: "SYMLINK"
        case SF_MKNOD: "MKNOD"
        case SF_MKDIR: "MKDIR"
        case SF_UNLINK: "UNLINK"
        case SF_RMDIR: "RMDIR"
        case SF_RENAME: "RENAME"
        case SF_LINK: "LINK"
        case SF_OPEN: "OPEN"
        case SF_READ: "READ"
        case SF_WRITE: "WRITE"
        case SF_STATFS: "STATFS"
        case SF_RELEASE: "RELEASE"
        case SF_FSYNC: "FSYNC"
        case SF_SETXATTR: "SETXATTR"
        case SF_GETXATTR: "GETXATTR"
        case SF_LISTXATTR: "LISTXATTR"
        case SF_REMOVEXATTR: "REMOVEXATTR"
        case SF_FLUSH: "FLUSH"
        case SF_INIT: "INIT"
        case SF_OPENDIR: "OPENDIR"
        case SF_READDIR: "READDIR"
        case SF_RELEASEDIR: "RELEASEDIR"
        case SF_FSYNCDIR: "FSYNCDIR"
        case SF_GETLK: "GETLK"
        case SF_SETLK: "SETLK"
        case SF_SETLKW: "SETLKW"
        case SF_ACCESS: "ACCESS"
        case SF_CREATE: "CREATE"
        case SF_INTERRUPT: "INTERRUPT"
        case SF_BMAP: "BMAP"
        case SF_DESTROY: "DESTROY"
        case SF_IOCTL: "IOCTL"
        case SF_POLL: "POLL"
        case SF_BATCH_FORGET: "BATCH_FORGET"
        case SF_FALLOCATE: "FALLOCATE"
        case SF_READDIRPLUS: "READDIRPLUS"
        case SF_RENAME2: "RENAME2"
        case SF_LSEEK: "LSEEK"
        case SF_COPY_FILE_RANGE: "COPY_FILE_RANGE"
        case SF_SYNCFS: "SYNCFS"
        case SF_TMPFILE: "TMPFILE"
        case SF_STATX: "STATX"
        default: "OP\(op)"
        }
    }

    /// The fixed part an opcode's body must hold before anything is read
    /// from it (go-fuse's opcode table does the same): a shorter request is
    /// answered with EIO rather than read past its end. Names that follow
    /// are bounded by the request's length where they are read.
    @inline(__always)
    public static func minimumInput(_ op: Int) -> Int {
        switch op {
        case SF_FORGET: MemoryLayout<sf_forget_in>.size
        case SF_BATCH_FORGET: MemoryLayout<sf_batch_forget_in>.size
        case SF_GETATTR: MemoryLayout<sf_getattr_in>.size
        case SF_SETATTR: MemoryLayout<sf_setattr_in>.size
        case SF_MKNOD: MemoryLayout<sf_mknod_in>.size
        case SF_MKDIR: MemoryLayout<sf_mkdir_in>.size
        case SF_RENAME: MemoryLayout<sf_rename_in>.size
        case SF_RENAME2: MemoryLayout<sf_rename2_in>.size
        case SF_LINK: MemoryLayout<sf_link_in>.size
        case SF_OPEN, SF_OPENDIR: MemoryLayout<sf_open_in>.size
        case SF_CREATE, SF_TMPFILE: MemoryLayout<sf_create_in>.size
        case SF_READ, SF_READDIR, SF_READDIRPLUS: MemoryLayout<sf_read_in>.size
        case SF_WRITE: MemoryLayout<sf_write_in>.size
        case SF_RELEASE, SF_RELEASEDIR: MemoryLayout<sf_release_in>.size
        case SF_FLUSH: MemoryLayout<sf_flush_in>.size
        case SF_FSYNC, SF_FSYNCDIR: MemoryLayout<sf_fsync_in>.size
        // Without FUSE_SETXATTR_EXT the kernel sends the first 8 bytes only.
        case SF_SETXATTR: 8
        case SF_GETXATTR, SF_LISTXATTR: MemoryLayout<sf_getxattr_in>.size
        case SF_ACCESS: MemoryLayout<sf_access_in>.size
        case SF_INTERRUPT: MemoryLayout<sf_interrupt_in>.size
        case SF_FALLOCATE: MemoryLayout<sf_fallocate_in>.size
        case SF_LSEEK: MemoryLayout<sf_lseek_in>.size
        case SF_COPY_FILE_RANGE: MemoryLayout<sf_copy_file_range_in>.size
        default: 0
        }
    }
}
