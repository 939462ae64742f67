import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// How a store keeps its layers, chosen when it is created and fixed from
/// then on (Docker's storage driver): as overlay2 does, each layer its own
/// diff and a container mounted as a union of them (by the kernel's
/// overlayfs or Strata's), or as its btrfs driver does, each layer a
/// subvolume snapshotted from its parent's and each container a writable
/// snapshot. The choice is written in `<root>/driver`; a store without that
/// file predates it and is an overlay one.
extension Store {
    public enum Layout: String, Sendable {
        case overlay
        case btrfs

        /// How `docker inspect` names it (`GraphDriver.Name`).
        public var graphDriverName: String { self == .overlay ? "overlay2" : "btrfs" }
    }

    /// The file naming the store's layout.
    static func layoutFile(_ root: String) -> String { "\(root)/driver" }

    /// The store's layout: the one it was created with, or `requested`'s
    /// for a new store (overlay when none is named). Naming a driver of
    /// another layout than the store's is refused by name, as is a btrfs
    /// store whose root is not on btrfs.
    static func settleLayout(root: String, requested: Driver?) throws(StoreError) -> Layout {
        let file = layoutFile(root)
        var recorded: Layout?
        if let text = try? String(contentsOfFile: file, encoding: .utf8) {
            let name = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard let l = Layout(rawValue: name) else {
                throw StoreError(.corrupt, "\(file) names the storage driver '\(name)', which this strata does not know")
            }
            recorded = l
        } else if access("\(root)/strata.db", F_OK) == 0 {
            recorded = .overlay
        }
        let layout: Layout
        if let recorded {
            if let requested, requested.layout != recorded {
                throw StoreError(.invalidInput, "the store at \(root) was created with the \(recorded.rawValue) storage driver and keeps it: "
                    + "drop --storage-driver \(requested.rawValue) (and STRATA_STORAGE_DRIVER), or give another --root for a store of that driver")
            }
            layout = recorded
        } else {
            layout = requested?.layout ?? .overlay
        }
        if layout == .btrfs { try requireBtrfs(root) }
        if recorded == nil {
            // The first command to create the store names its layout, the
            // file put in place whole (never seen empty); one creating it
            // at the same time finds the file and agrees or is refused.
            let tmp = "\(file).\(getpid())"
            do {
                try "\(layout.rawValue)\n".write(toFile: tmp, atomically: false, encoding: .utf8)
            } catch {
                throw StoreError(.io, "recording the store's driver in \(file): \(error.localizedDescription)")
            }
            defer { unlink(tmp) }
            do throws(Errno) { try Sys.renameat2(AT_FDCWD, tmp, AT_FDCWD, file, flags: Linux.RENAME_NOREPLACE) } catch {
                if error == .fileExists { return try settleLayout(root: root, requested: requested) }
                throw StoreError.failed("recording the store's driver in \(file)", error)
            }
        }
        return layout
    }

    /// The btrfs driver makes subvolumes under the root: it must be on btrfs.
    static func requireBtrfs(_ root: String) throws(StoreError) {
        let fd = try openOwned(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let isBtrfs: Bool
        do throws(Errno) { isBtrfs = try Btrfs.isBtrfs(fd.raw) } catch { throw StoreError.failed("statfs \(root)", error) }
        if !isBtrfs {
            throw StoreError(.invalidInput, "the store root \(root) is not on a btrfs filesystem, which the btrfs storage driver needs "
                + "(its layers are subvolumes): give a --root on btrfs, or use --storage-driver overlay")
        }
    }

    /// Where the btrfs driver keeps subvolumes (`btrfs/subvolumes/<id>`,
    /// as Docker's does) and each layer's other files (`btrfs/layers/<id>`).
    var subvolumesDir: String { "\(root)/btrfs/subvolumes" }
    var btrfsLayersDir: String { "\(root)/btrfs/layers" }

    /// The directory holding each layer's own directory.
    var layersDir: String { layout == .btrfs ? btrfsLayersDir : overlayDir }

    /// The directories a store of `layout` needs.
    static func directories(_ root: String, _ layout: Layout) -> [String] {
        switch layout {
        case .overlay: ["\(root)/overlay", "\(root)/overlay/l", "\(root)/tmp"]
        case .btrfs: ["\(root)/btrfs", "\(root)/btrfs/subvolumes", "\(root)/btrfs/layers", "\(root)/tmp"]
        }
    }

    /// One line refusing what the btrfs driver cannot do.
    public func refuseOnBtrfs(_ what: String, because why: String) throws(StoreError) {
        if layout == .btrfs {
            throw StoreError(.invalidInput, "\(what) is not available with the btrfs storage driver (the store at \(root)): \(why)")
        }
    }
}

extension Store.Driver {
    /// The store layout the driver mounts.
    public var layout: Store.Layout { self == .btrfs ? .btrfs : .overlay }
}
