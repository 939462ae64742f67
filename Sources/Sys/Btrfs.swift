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

/// What btrfs itself records of changes (as `btrfs subvolume find-new`
/// reads it): every tree block written in a transaction carries its number,
/// so the items written since a snapshot was taken are found without
/// reading the rest of the tree.
extension Btrfs {
    /// The transaction that made the subvolume open as `fd` (a snapshot's
    /// origin), and its current generation.
    public static func transactions(_ fd: Int32) throws(Errno) -> (created: UInt64, generation: UInt64) {
        var o: UInt64 = 0, g: UInt64 = 0
        if strata_btrfs_subvol_transids(fd, &o, &g) != 0 { throw currentErrno() }
        return (o, g)
    }

    /// Inode numbers with items in tree blocks written at or after
    /// `transaction` (a superset of the changed ones: a block holds
    /// neighbours too). Commits the filesystem's transaction first, since
    /// the search reads the tree as committed.
    public static func inodesWritten(since transaction: UInt64, in fd: Int32) throws(Errno) -> Set<UInt64> {
        if strata_syncfs(fd) != 0 { throw currentErrno() }
        final class Found { var set = Set<UInt64>() }
        let found = Found()
        let r = withExtendedLifetime(found) {
            strata_btrfs_changed_inodes(fd, transaction, Unmanaged.passUnretained(found).toOpaque()) { ctx, ino in
                guard let ctx else { return }
                Unmanaged<Found>.fromOpaque(ctx).takeUnretainedValue().set.insert(ino)
            }
        }
        if r != 0 { throw currentErrno() }
        return found.set
    }

    /// Every path of inode `ino` in the subvolume open as `fd`, relative to
    /// its root; ENOENT when the inode is gone.
    public static func paths(of ino: UInt64, in fd: Int32) throws(Errno) -> [String] {
        var buf = [CChar](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBufferPointer { strata_btrfs_inode_paths(fd, ino, $0.baseAddress, $0.count) }
        if n < 0 { throw currentErrno() }
        var out: [String] = []
        var start = 0
        for _ in 0..<Int(n) {
            let end = buf[start...].firstIndex(of: 0) ?? buf.count
            out.append(String(decoding: buf[start..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            start = end + 1
        }
        return out
    }
}
