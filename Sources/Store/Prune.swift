import Foundation
import GRDB
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `image prune` and `system prune`: what no image or container uses goes,
/// under the store's lock, so a command running beside it either finds what
/// it needs or finds it gone, never half-gone.
extension Store {
    public struct Pruned: Sendable {
        public var images: [String] = []
        public var layers: [String] = []
        public var leftovers: [String] = []
        public var bytes: Int64 = 0
    }

    /// Images without a tag (`all`: every image) that no container uses,
    /// then every layer no image uses.
    public func pruneImages(all: Bool) throws(StoreError) -> Pruned {
        try exclusively { () throws(StoreError) -> Pruned in try pruneLocked(all: all) }
    }

    /// `pruneImages(all: false)`, then what interrupted commands left
    /// (directories and short links no row names, scratch files of
    /// processes that are gone). Containers are not touched: `strata rm`.
    public func pruneSystem(all: Bool) throws(StoreError) -> Pruned {
        try exclusively { () throws(StoreError) -> Pruned in
            var p = try pruneLocked(all: all)
            for problem in try check(content: false) {
                if case .remove(let path) = problem.fix, !path.isEmpty { p.leftovers.append(path) }
            }
            recoverInterrupted()
            return p
        }
    }

    private func pruneLocked(all: Bool) throws(StoreError) -> Pruned {
        var out = Pruned()
        do {
            try db.queue.write { db in
                let used = Set(try ContainerRecord.fetchAll(db).map(\.image))
                let tagged = Set(try TagRecord.fetchAll(db).map(\.image))
                for img in try ImageRecord.fetchAll(db) where !used.contains(img.id) && (all || !tagged.contains(img.id)) {
                    try TagRecord.filter(Column("image") == img.id).deleteAll(db)
                    _ = try ImageRecord.deleteOne(db, key: img.id)
                    out.images.append(img.id)
                }
                // containerd's snapshots that show store layers need them too.
                let shown = try String.fetchAll(db, sql: "SELECT layer FROM snapshot WHERE layer IS NOT NULL")
                let needed = Set(try ImageRecord.fetchAll(db).flatMap(\.layerIDs) + shown)
                // A layer is kept while an image needs it or a layer above it.
                var keep = needed
                let layers = try LayerRecord.fetchAll(db)
                let byID = Dictionary(layers.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
                for id in needed {
                    var cur = byID[id]?.parent
                    while let p = cur, keep.insert(p).inserted { cur = byID[p]?.parent }
                }
                for l in layers where !keep.contains(l.id) {
                    _ = try LayerRecord.deleteOne(db, key: l.id)
                    out.layers.append(l.id)
                    // What a btrfs layer's subvolume adds to its parent's.
                    if layout == .btrfs { out.bytes += l.size }
                }
            }
        } catch let e as StoreError { throw e } catch { throw StoreError(.database, "pruning: \(error)") }
        // Rows first, then directories: a kill between leaves leftovers the
        // next command removes.
        for l in out.layers {
            let layer = storedLayer(l)
            var seen = Set<UInt64>()
            out.bytes += diskUsage(layer.directory, seen: &seen)
            layer.removeFiles()
        }
        return out
    }
}
