import Foundation
import GRDB
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The btrfs driver's containers, as Docker's: an `-init` subvolume (a
/// snapshot of the image's top layer with empty /etc/hosts, /etc/hostname
/// and /etc/resolv.conf, sealed), and the container's own writable snapshot
/// of it. Nothing is copied: a write changes the container's blocks only.
/// Its root is bind-mounted on `btrfs/layers/<id>/merged` while in use,
/// so that a container in use is seen, and not destroyed under a process.
extension Store {
    func createOnBtrfs(_ img: ImageRecord, id: String, name: String) throws(StoreError) -> ContainerRecord {
        let initLayer = storedLayer("\(id)-init"), cLayer = storedLayer(id)
        let top = img.layerIDs.last
        do throws(StoreError) {
            for d in [cLayer.directory, cLayer.merged] where mkdir(d, 0o700) != 0 { throw StoreError.last(d) }
            let initRoot = try beginSubvolume(initLayer.id, parent: top, label: "container \(name)")
            let rootFD = try openOwned(initRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            try placeInitFiles(rootFD.raw, in: initRoot)
            try sealSubvolume(initLayer.id, label: "container \(name)")
            do throws(Errno) {
                let source = try Sys.open(initLayer.subvolume, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                let dir = try Sys.open(subvolumesDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                try Btrfs.snapshot(source.raw, in: dir.raw, cLayer.name, readOnly: false)
            } catch {
                throw StoreError.failed("container \(name): snapshotting \(initLayer.subvolume) as \(cLayer.subvolume)", error)
            }
            killPoint("create-dirs")
            let rec = ContainerRecord(id: id, name: name, image: img.id, created: Date().timeIntervalSince1970)
            do { try db.queue.write { try rec.insert($0) } } catch { throw StoreError(.database, "recording container \(name): \(error)") }
            return rec
        } catch {
            for l in [initLayer, cLayer] { l.removeFiles() }
            throw error
        }
    }

    /// Empty /etc/hosts, /etc/hostname and /etc/resolv.conf, as the
    /// overlay driver's `-init` layer has them (a runtime binds its own).
    private func placeInitFiles(_ root: Int32, in path: String) throws(StoreError) {
        if mkdirat(root, "etc", 0o755) != 0 && errno != EEXIST { throw StoreError.last("\(path)/etc") }
        let etc: UniqueFD
        do throws(Errno) { etc = try Sys.openBeneath(root, "etc", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, noSymlinks: true) } catch {
            throw StoreError.failed("\(path)/etc (the image's /etc must be a directory)", error)
        }
        for f in ["hosts", "hostname", "resolv.conf"] {
            // Whatever the image had there (a file, a symlink) gives way.
            unlinkat(etc.raw, f, 0)
            do throws(Errno) {
                let file = try Sys.openat(etc.raw, f, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
                fchmod(file.raw, 0o644)
            } catch {
                throw StoreError.failed("\(path)/etc/\(f)", error)
            }
        }
    }

    /// Binds the container's subvolume on its `merged` directory.
    func mountOnBtrfs(_ c: ContainerRecord) throws(StoreError) -> String {
        let merged = mergedPath(c)
        if Sys.isMountRoot(merged) { return merged }
        let sv = containerLayer(c).subvolume
        if Glibc.mount(sv, merged, nil, UInt(MS_BIND), nil) != 0 {
            let e = currentErrno()
            if e == .notPermitted {
                throw StoreError(.mount, "binding container \(c.name)'s subvolume on \(merged) needs root: run as root, "
                    + "or use the subvolume itself, \(sv), which is the container's root")
            }
            throw StoreError(.mount, "binding container \(c.name)'s subvolume \(sv) on \(merged): \(e)")
        }
        return merged
    }

    /// Unmounts the container's root; one that a process still uses is
    /// refused (its subvolume is not destroyed under the process).
    func releaseOnBtrfs(_ c: ContainerRecord) throws(StoreError) {
        let merged = mergedPath(c)
        guard Sys.isMountRoot(merged) else { return }
        if umount2(merged, 0) != 0 {
            let e = currentErrno()
            if e == .resourceBusy {
                throw StoreError(.conflict, "container \(c.name) is in use (a process has its root \(merged) open): stop what runs in it, then remove it")
            }
            throw StoreError.failed("umount \(merged)", e)
        }
    }

    /// `docker diff`'s lines for a btrfs container, found by `method` (the
    /// benchmark compares them; the store uses generations).
    public func diff(_ c: ContainerRecord, btrfs method: BtrfsDiffMethod) throws(StoreError) -> [Change] {
        try refuseUnlessBtrfs()
        return try diffOnBtrfs(c, method: method)
    }

    func refuseUnlessBtrfs() throws(StoreError) {
        if layout != .btrfs { throw StoreError(.invalidInput, "the store at \(root) uses the \(layout.rawValue) driver, not btrfs") }
    }

    /// `docker diff`'s lines for a btrfs container.
    func diffOnBtrfs(_ c: ContainerRecord, method: BtrfsDiffMethod? = nil) throws(StoreError) -> [Change] {
        try btrfsChanges(c, method: method).map { ch in
            switch ch.kind {
            case .added: .added("/" + ch.path)
            case .changed: .changed("/" + ch.path)
            case .deleted: .deleted("/" + ch.path)
            }
        }
    }
}
