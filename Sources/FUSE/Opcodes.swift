import CStrata

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
}
