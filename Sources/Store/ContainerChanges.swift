import Archive
import Foundation
import GRDB
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What a container changed, read from its upper layer alone (never by
/// comparing whole trees), and turned into images and archives.
extension Store {
    public enum Change: Sendable, Equatable {
        case added(String), changed(String), deleted(String)
        /// The line `docker diff` prints.
        public var line: String {
            switch self {
            case .added(let p): return "A \(p)"
            case .changed(let p): return "C \(p)"
            case .deleted(let p): return "D \(p)"
            }
        }
    }

    func lowerDirs(_ c: ContainerRecord) throws(StoreError) -> [String] {
        let lower = try containerLayer(c).lowers()
        if lower.isEmpty { throw StoreError(.corrupt, "container \(c.name): missing lower file") }
        return lower.map { "\(overlayDir)/\($0)" }
    }

    /// A/C/D lines like `docker diff`: whiteouts are deletions, names that
    /// exist in a lower layer are changes, the rest additions.
    public func diff(_ c: ContainerRecord) throws(StoreError) -> [Change] {
        if layout == .btrfs { return try diffOnBtrfs(c) }
        let upper = containerLayer(c).diff
        let lowers = try lowerDirs(c)
        var out: [Change] = []
        func existsBelow(_ rel: String) -> Bool {
            var st = stat()
            return lowers.contains { lstat("\($0)/\(rel)", &st) == 0 }
        }
        func walk(_ rel: String) {
            let dir = rel.isEmpty ? upper : "\(upper)/\(rel)"
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for name in names.sorted() {
                let r = rel.isEmpty ? name : "\(rel)/\(name)"
                var st = stat()
                guard lstat("\(upper)/\(r)", &st) == 0 else { continue }
                let isDir = st.st_mode & Linux.S_IFMT == Linux.S_IFDIR
                if st.st_mode & Linux.S_IFMT == Linux.S_IFCHR && st.st_rdev == 0 {
                    out.append(.deleted("/" + r))
                } else if let wh = OverlayFormat.whiteout(name) {
                    if case .target(let gone) = wh { out.append(.deleted("/" + (rel.isEmpty ? "" : rel + "/") + gone)) }
                } else {
                    out.append(existsBelow(r) ? .changed("/" + r) : .added("/" + r))
                }
                if isDir { walk(r) }
            }
        }
        walk("")
        return out
    }

    /// The container's upper layer as a new layer on top of its image, and a
    /// new image with that layer added to the config's diff IDs and history.
    public func commit(_ c: ContainerRecord, tag: String, progress: (String) -> Void = { _ in }) throws(StoreError) -> String {
        try exclusively { () throws(StoreError) -> String in
            guard try findContainer(c.id) != nil else { throw StoreError(.notFound, "no container '\(c.name)' (see 'strata ls')") }
            return try commitLocked(c, tag: tag, progress: progress)
        }
    }

    private func commitLocked(_ c: ContainerRecord, tag: String, progress: (String) -> Void) throws(StoreError) -> String {
        let img = try image(Digest.hex(c.image))
        let tar = scratch("commit", suffix: ".tar")
        defer { unlink(tar) }
        do {
            let out = try openOwned(tar, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            do {
                if layout == .btrfs {
                    try LayerWriter().write(items: btrfsLayerItems(try btrfsChanges(c)), root: containerLayer(c).subvolume, to: out.raw)
                } else {
                    try LayerWriter().write(directory: containerLayer(c).diff, to: out.raw)
                }
            } catch let e as StoreError {
                throw e
            } catch {
                throw StoreError(.archive, "commit \(c.name): \(error)")
            }
            try out.close()
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError.failed(tar, error as? Errno ?? .ioError)
        }
        let diffID = try Digest.ofFile(tar)
        // Every field of the old config stays, those not named too.
        var cfg = try OCI.decode(OCI.ImageConfig.self, img.config, "image \(img.id): config")
        cfg.rootfs.diff_ids.append(diffID)
        let now = ISO8601DateFormatter().string(from: Date())
        cfg.created = now
        cfg.history = (cfg.history ?? []) + [OCI.History(created: now, createdBy: "strata commit \(c.name)")]
        let config = OCI.encode(cfg)
        let chain = Digest.chainIDs(cfg.diffIDs)
        try addLayer(archive: tar, diffID: diffID, chainID: chain[chain.count - 1], parent: chain.count > 1 ? chain[chain.count - 2] : nil,
                     keepArchive: true, progress: progress)
        killPoint("commit-layer")
        let id = Digest.of(config)
        try addImage(id: id, config: config, chainIDs: chain, tags: [tag.contains(":") ? tag : tag + ":latest"])
        return id
    }
}
