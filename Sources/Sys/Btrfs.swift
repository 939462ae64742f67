import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Btrfs subvolumes through the kernel's ioctls, for the store's Btrfs
/// driver: each layer a snapshot of its parent, each container a writable
/// snapshot. The field has no Swift library for this, and spawning `btrfs`
/// per layer would cost a process each and give errors as text.
public enum Btrfs {
    /// The inode number of every subvolume's root directory
    /// (BTRFS_FIRST_FREE_OBJECTID): how a subvolume is told from a directory.
    public static let subvolumeRootInode: UInt = 256

    /// Whether the directory open as `fd` is the root of a btrfs subvolume.
    public static func isSubvolume(_ fd: Int32) -> Bool {
        guard let st = try? Sys.fstat(fd), st.st_ino == subvolumeRootInode else { return false }
        return (try? isBtrfs(fd)) == true
    }

    /// Whether `fd` is on a btrfs filesystem.
    public static func isBtrfs(_ fd: Int32) throws(Errno) -> Bool {
        let r = strata_is_btrfs(fd)
        if r < 0 { throw currentErrno() }
        return r == 1
    }

    /// A new, empty subvolume `name` in the directory `dir`.
    public static func createSubvolume(in dir: Int32, _ name: String) throws(Errno) {
        if strata_btrfs_subvol_create(dir, name) != 0 { throw currentErrno() }
    }

    /// A snapshot of the subvolume open as `source`, named `name` in `dir`;
    /// read-only for a layer, writable for a container.
    public static func snapshot(_ source: Int32, in dir: Int32, _ name: String, readOnly: Bool) throws(Errno) {
        if strata_btrfs_snapshot(source, dir, name, readOnly ? 1 : 0) != 0 { throw currentErrno() }
    }

    /// Seals the subvolume open as `fd` (a layer once applied), or opens it
    /// to writes again.
    public static func setReadOnly(_ fd: Int32, _ readOnly: Bool) throws(Errno) {
        if strata_btrfs_set_readonly(fd, readOnly ? 1 : 0) != 0 { throw currentErrno() }
    }

    /// Removes the subvolume `name` in `dir` (the kernel refuses one that
    /// holds other subvolumes, ENOTEMPTY, and one that is not a subvolume).
    public static func destroySubvolume(in dir: Int32, _ name: String) throws(Errno) {
        if strata_btrfs_subvol_destroy(dir, name) != 0 { throw currentErrno() }
    }
}
