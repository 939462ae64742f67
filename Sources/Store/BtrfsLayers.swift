import Archive
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The btrfs driver's layers: each a subvolume, a snapshot of its parent's
/// with the layer applied onto it (whiteouts and opaque directories as
/// deletions, as Docker's btrfs driver does), sealed read-only. Made as
/// `<id>.partial` and renamed into place when sealed, so that a name
/// without `.partial` is always a whole layer; an unrecorded one is what
/// an interrupted command left, and `check` removes it.
extension Store {
    /// A writable subvolume for layer `id` to be applied into: a snapshot
    /// of `parent`'s (whose subvolume must be whole), or an empty one for
    /// a bottom layer. Returns its path.
    func beginSubvolume(_ id: String, parent: String?, label: String) throws(StoreError) -> String {
        let layer = storedLayer(id)
        let dir = try openOwned(subvolumesDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let partial = "\(layer.name).partial"
        removeTree(dir.raw, partial)
        do throws(Errno) {
            if let parent {
                let source = try Sys.open(storedLayer(parent).subvolume, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                try Btrfs.snapshot(source.raw, in: dir.raw, partial, readOnly: false)
            } else {
                try Btrfs.createSubvolume(in: dir.raw, partial)
            }
        } catch {
            throw StoreError.failed("\(label): making its subvolume \(subvolumesDir)/\(partial)\(parent == nil ? "" : " from its parent's")", error)
        }
        return "\(subvolumesDir)/\(partial)"
    }

    /// Seals layer `id`'s applied subvolume read-only and gives it its name.
    func sealSubvolume(_ id: String, label: String) throws(StoreError) {
        let layer = storedLayer(id)
        let dir = try openOwned(subvolumesDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let partial = "\(layer.name).partial"
        do throws(Errno) {
            let sv = try Sys.openat(dir.raw, partial, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            try Btrfs.setReadOnly(sv.raw, true)
            try Sys.renameat2(dir.raw, partial, dir.raw, layer.name, flags: Linux.RENAME_NOREPLACE)
        } catch {
            removeTree(dir.raw, partial)
            throw StoreError.failed("\(label): sealing its subvolume \(subvolumesDir)/\(partial)", error)
        }
        killPoint("layer-sealed")
    }

    /// Applies the archive open as `fd` as layer `id` over `parent`:
    /// the btrfs counterpart of unpacking into a fresh `diff/`.
    func applySubvolume(_ id: String, parent: String?, fd: Int32, label: String) throws(ArchiveError) -> LayerApplier.Stats {
        let target: String
        do { target = try beginSubvolume(id, parent: parent, label: label) } catch { throw ArchiveError(label, error.message) }
        let stats = try LayerApplier().apply(fd: fd, onto: target, label: label)
        do { try sealSubvolume(id, label: label) } catch { throw ArchiveError(label, error.message) }
        return stats
    }

    /// The same from an archive file.
    func applySubvolume(_ id: String, parent: String?, file: String, label: String) throws(ArchiveError) -> LayerApplier.Stats {
        let f: UniqueFD
        do throws(Errno) { f = try Sys.open(file, O_RDONLY | O_CLOEXEC) } catch { throw ArchiveError(file, "open: \(error)") }
        return try applySubvolume(id, parent: parent, fd: f.raw, label: label)
    }
}
