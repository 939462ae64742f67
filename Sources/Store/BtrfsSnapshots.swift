import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The snapshot API (containerd's model) on a btrfs store, as containerd's
/// own btrfs snapshotter does it: `snapshots/<n>/fs` is a subvolume, a
/// writable snapshot of the parent's for an active snapshot, a read-only
/// one for a view, sealed when committed; mounts are binds of it. The
/// layer store's and the command line's layers are the same subvolumes.
extension Store {
    func makeSnapshotSubvolume(_ key: String, in d: String, parent: String?, readOnly: Bool) throws(SnapshotError) {
        func failed(_ what: String, _ e: Errno) -> SnapshotError {
            try? removeSnapshotRecord(key)
            removeTree(path: d)
            return SnapshotError(.internal, "snapshot \(key): \(what): \(e)")
        }
        if mkdir(d, 0o755) != 0 && errno != EEXIST { throw failed(d, currentErrno()) }
        let dir: UniqueFD
        do throws(Errno) { dir = try Sys.open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } catch { throw failed(d, error) }
        removeTree(dir.raw, "fs")
        let parentTree = try parent.map { (p) throws(SnapshotError) in fsPath(try snapshotRecord(p)) }
        do throws(Errno) {
            if let parentTree {
                let source = try Sys.open(parentTree, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                try Btrfs.snapshot(source.raw, in: dir.raw, "fs", readOnly: readOnly)
            } else {
                try Btrfs.createSubvolume(in: dir.raw, "fs")
                if readOnly {
                    let fs = try Sys.openat(dir.raw, "fs", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                    try Btrfs.setReadOnly(fs.raw, true)
                }
            }
        } catch {
            throw failed("making its subvolume \(d)/fs\(parent.map { " from \($0)" } ?? "")", error)
        }
    }

    /// Bytes and inodes a snapshot holds on its own: on an overlay store
    /// its `fs/`; on btrfs, where `fs/` is the whole tree, what differs from
    /// its parent (compared as a container's changes are).
    func snapshotOwnUsage(_ r: SnapshotRecord) throws(SnapshotError) -> (Int64, Int64) {
        let fs = "\(snapshotDir(r.number))/fs"
        guard layout == .btrfs else { return Self.usage(of: fs) }
        guard let parent = r.parent else { return Self.usage(of: fs) }
        let parentTree = fsPath(try snapshotRecord(parent))
        do throws(Errno) {
            let new = try Sys.open(fs, BtrfsTreeDiff.readOnly)
            let old = try Sys.open(parentTree, BtrfsTreeDiff.readOnly)
            let changes = try BtrfsTreeDiff.changes(new: new.raw, old: old.raw)
            return (changes.reduce(0) { $0 + $1.bytes }, Int64(changes.count))
        } catch {
            throw SnapshotError(.internal, "snapshot \(r.name): measuring \(fs): \(error)")
        }
    }
}
