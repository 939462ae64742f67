#if canImport(Glibc)
import Glibc
#endif

/// Linux constants that Swift's Glibc module leaves out (they sit behind
/// _GNU_SOURCE in the C headers). Values from the kernel's uapi headers.
public enum Linux {
    public static let S_IFMT: UInt32 = 0o170000
    public static let S_IFDIR: UInt32 = 0o040000
    public static let S_IFREG: UInt32 = 0o100000
    public static let S_IFLNK: UInt32 = 0o120000
    public static let S_IFCHR: UInt32 = 0o020000
    public static let S_IFBLK: UInt32 = 0o060000
    public static let S_IFIFO: UInt32 = 0o010000
    public static let S_IFSOCK: UInt32 = 0o140000
    public static let O_PATH: Int32 = 0o10000000
    public static let O_TMPFILE: Int32 = 0o20000000 | O_DIRECTORY
    public static let O_NOATIME: Int32 = 0o1000000
    public static let O_DIRECT: Int32 = 0o40000
    public static let AT_EMPTY_PATH: Int32 = 0x1000
    public static let AT_SYMLINK_NOFOLLOW: Int32 = 0x100
    public static let AT_REMOVEDIR: Int32 = 0x200
    public static let AT_SYMLINK_FOLLOW: Int32 = 0x400
    public static let RENAME_NOREPLACE: UInt32 = 1
    public static let RENAME_EXCHANGE: UInt32 = 2
    public static let RENAME_WHITEOUT: UInt32 = 4
    public static let SEEK_DATA: Int32 = 3
    public static let SEEK_HOLE: Int32 = 4
    public static let XATTR_CREATE: Int32 = 1
    public static let XATTR_REPLACE: Int32 = 2
    public static let UTIME_NOW: Int = (1 << 30) - 1
    public static let UTIME_OMIT: Int = (1 << 30) - 2
}
