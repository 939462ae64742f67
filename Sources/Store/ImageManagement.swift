import Archive
import Foundation
import GRDB
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Tags, removal (a layer goes only when nothing uses it), history, space.
extension Store {
    public func tag(_ ref: String, as name: String) throws(StoreError) {
        try exclusively { () throws(StoreError) in try tagLocked(ref, as: name) }
    }

    private func tagLocked(_ ref: String, as name: String) throws(StoreError) {
        let img = try image(ref)
        let full = name.contains(":") ? name : name + ":latest"
        do { try db.queue.write { try TagRecord(name: full, image: img.id).save($0) } } catch { throw StoreError(wrapping: error) }
    }

    /// Removes a tag; the image goes with its last tag unless a container
    /// uses it; each of its layers goes unless another image uses it.
    public func removeImage(_ ref: String) throws(StoreError) -> [String] {
        try exclusively { () throws(StoreError) -> [String] in try removeImageLocked(ref) }
    }

    private func removeImageLocked(_ ref: String) throws(StoreError) -> [String] {
        let img = try image(ref)
        var removedLayers: [String] = []
        do {
            try db.queue.write { db in
                let isTag = try TagRecord.fetchOne(db, key: ref.contains(":") ? ref : ref + ":latest") != nil
                if isTag { _ = try TagRecord.deleteOne(db, key: ref.contains(":") ? ref : ref + ":latest") }
                let tagsLeft = try TagRecord.filter(Column("image") == img.id).fetchCount(db)
                if isTag && tagsLeft > 0 { return }
                if try ContainerRecord.filter(Column("image") == img.id).fetchCount(db) > 0 {
                    throw StoreError(.conflict, "image \(ref) is used by a container; remove the container first")
                }
                try TagRecord.filter(Column("image") == img.id).deleteAll(db)
                _ = try ImageRecord.deleteOne(db, key: img.id)
                // Layers other images, and snapshots (containerd's, the
                // layer store's), still show stay.
                let stillUsed = Set(try ImageRecord.fetchAll(db).flatMap(\.layerIDs))
                    .union(try String.fetchAll(db, sql: "SELECT layer FROM snapshot WHERE layer IS NOT NULL"))
                for l in img.layerIDs where !stillUsed.contains(l) {
                    _ = try LayerRecord.deleteOne(db, key: l)
                    removedLayers.append(l)
                }
            }
        } catch let e as StoreError { throw e } catch { throw StoreError(wrapping: error) }
        // The rows are gone first: a crash here leaves only unreferenced directories.
        killPoint("image-rm-rows")
        for l in removedLayers { storedLayer(l).removeFiles() }
        return removedLayers
    }

    public func history(_ ref: String) throws(StoreError) -> [(created: String, by: String, empty: Bool)] {
        let img = try image(ref)
        let cfg = try OCI.decode(OCI.ImageConfig.self, img.config, "image \(ref): config")
        return (cfg.history ?? []).reversed().map { ($0.created ?? "", $0.created_by ?? "", $0.empty_layer ?? false) }
    }

    /// Bytes under a directory, each inode counted once.
    func diskUsage(_ path: String, seen: inout Set<UInt64>) -> Int64 {
        var total: Int64 = 0
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return 0 }
        for n in names {
            var st = stat()
            guard lstat("\(path)/\(n)", &st) == 0, seen.insert(UInt64(st.st_ino)).inserted else { continue }
            total += Int64(st.st_blocks) * 512
            if st.st_mode & Linux.S_IFMT == Linux.S_IFDIR { total += diskUsage("\(path)/\(n)", seen: &seen) }
        }
        return total
    }

    public struct Usage: Sendable {
        public var images = 0, layers = 0, containers = 0
        /// Bytes of all layers, each counted once.
        public var layerBytes: Int64 = 0
        /// What the images would take if each kept its own copy of its layers.
        public var unsharedBytes: Int64 = 0
        public var containerBytes: Int64 = 0
    }

    public func usage() throws(StoreError) -> Usage {
        var u = Usage()
        let imgs = try images()
        let ctrs = try containers()
        var perLayer: [String: Int64] = [:]
        for (img, _) in imgs {
            for l in img.layerIDs where perLayer[l] == nil {
                var seen = Set<UInt64>()
                // A btrfs layer's subvolume holds its parents' files too
                // (their blocks shared): what it adds is its archive's size.
                perLayer[l] = layout == .btrfs ? (try layer(l))?.size ?? 0 : diskUsage(storedLayer(l).diff, seen: &seen)
            }
            u.unsharedBytes += img.layerIDs.reduce(0) { $0 + (perLayer[$1] ?? 0) }
        }
        u.images = imgs.count
        u.layers = perLayer.count
        u.layerBytes = perLayer.values.reduce(0, +)
        u.containers = ctrs.count
        for c in ctrs {
            if layout == .btrfs {
                u.containerBytes += try btrfsChanges(c).reduce(0) { $0 + $1.bytes }
                continue
            }
            var seen = Set<UInt64>()
            u.containerBytes += diskUsage(containerLayer(c).diff, seen: &seen)
        }
        return u
    }

    /// The container's whole root as one tar (mounted for the time it takes).
    public func export(_ c: ContainerRecord, to path: String, strataBinary: String) throws(StoreError) {
        let merged = mergedPath(c)
        let wasMounted = Sys.isMountRoot(merged)
        _ = try mount(c, driver: geteuid() == 0 ? .overlay : .fuse, strataBinary: strataBinary)
        defer { if !wasMounted { try? unmount(c) } }
        // Written beside the target and renamed over it when whole: a failed
        // export leaves neither a half archive nor a clobbered old one.
        let partial = "\(path).partial-\(getpid())"
        // Errors name the path the user gave, not the temporary beside it.
        let out = try openOwned(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644, what: "export to \(path)")
        var whole = false
        defer { if !whole { unlink(partial) } }
        do {
            try LayerWriter().write(directory: merged, to: out.raw)
            if fsync(out.raw) != 0 { throw StoreError.last("export to \(path)") }
        } catch let e as StoreError { throw e } catch { throw StoreError(.archive, "export \(c.name): \(error)") }
        do throws(Errno) { try out.close() } catch { throw StoreError.failed("export to \(path)", error) }
        if rename(partial, path) != 0 { throw StoreError.last("export to \(path)") }
        whole = true
    }
}
