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
