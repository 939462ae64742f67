import Archive
import Foundation
import GRDB
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Layers pulled lazily (`strata pull --lazy`): their trees made from the
/// TOC at once, regular files as holes marked with their name, the data
/// fetched by the mount that reads them. A layer's pull state lives beside
/// its tree, `overlay/<id>/lazy/` (where the blob is and its TOC), and its
/// root carries Strata's mark naming that directory, which is how the union
/// knows it (the kernel driver cannot serve such a layer: see `mountLocked`).
extension Store {
    /// Where a lazily pulled layer's data is: enough for the mount to fetch
    /// a file with one Range request, and for `strata pull` to complete it.
    public struct LazySource: Codable, Sendable, Equatable {
        public var registry: String
        public var repository: String
        public var blob: String
        public var blobSize: Int64
        public var tocOffset: Int64
        public var diffID: String
        public var format: String
        public init(registry: String, repository: String, blob: String, blobSize: Int64, tocOffset: Int64, diffID: String, format: String) {
            self.registry = registry; self.repository = repository; self.blob = blob; self.blobSize = blobSize
            self.tocOffset = tocOffset; self.diffID = diffID; self.format = format
        }
    }

    public static let lazyXattr = OverlayFormat.xattr(OverlayFormat.lazyName, user: geteuid() != 0)

    public func lazyStateDir(_ id: String) -> String { "\(dir(id))/lazy" }
    public func layerDiffPath(_ id: String) -> String { "\(dir(id))/diff" }

    /// Whether a layer is still partly in the registry.
    public func isLazy(_ id: String) -> Bool {
        var st = stat()
        return lstat("\(lazyStateDir(id))/source.json", &st) == 0
    }

    public func lazySource(_ id: String) throws(StoreError) -> LazySource {
        let p = "\(lazyStateDir(id))/source.json"
        guard let d = FileManager.default.contents(atPath: p) else { throw StoreError.last(p) }
        do { return try JSONDecoder().decode(LazySource.self, from: d) } catch {
            throw StoreError(.corrupt, "\(p): unreadable (\(error)); remove the image and pull it again")
        }
    }

    public func lazyTOC(_ id: String) throws(StoreError) -> StargzTOC {
        let p = "\(lazyStateDir(id))/toc.json"
        guard let d = FileManager.default.contents(atPath: p) else { throw StoreError.last(p) }
        do { return try JSONDecoder().decode(StargzTOC.self, from: d) } catch {
            throw StoreError(.corrupt, "\(p): unreadable (\(error))")
        }
    }

    /// Makes a layer from its TOC and records it (its files still holes).
    public func addLazyLayer(toc: StargzTOC, tocJSON: [UInt8], tocFile: StargzTOCFile?, source: LazySource, chainID: String, parent: String?,
                             progress: (String) -> Void = { _ in }) throws(StoreError) {
        try exclusively { () throws(StoreError) in
            if try layer(chainID) != nil { return }
            let d = try freshLayerDir(chainID)
            let stats: LayerApplier.Stats
            do { stats = try LayerApplier().apply(toc: toc, tocFile: tocFile, to: "\(d)/diff", markXattr: Self.lazyXattr) } catch {
                discardUnpacked(chainID)
                throw StoreError(.archive, "layer \(source.diffID) (from its TOC): \(error)")
            }
            let state = lazyStateDir(chainID)
            do {
                try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false)
                try Data(tocJSON).write(to: URL(fileURLWithPath: "\(state)/toc.json"))
                try JSONEncoder().encode(source).write(to: URL(fileURLWithPath: "\(state)/source.json"))
            } catch {
                discardUnpacked(chainID)
                throw StoreError(.io, "layer \(source.diffID): writing its pull state: \(error)")
            }
            do throws(Errno) { try PathXattr.set("\(d)/diff", Self.lazyXattr, state) } catch {
                discardUnpacked(chainID)
                throw StoreError.failed("layer \(source.diffID): marking it partly pulled", error)
            }
            try record(UnpackedLayer(diffID: source.diffID, chainID: chainID, stats: stats), parent: parent, progress: { _ in })
            progress("layer \(Digest.hex(source.diffID).prefix(12)): \(stats.entries) entries from its TOC, \(stats.bytes) bytes to fetch on first read")
        }
    }

    /// How much of a partly pulled layer is here: bytes of regular files
    /// whose data was fetched, of all.
    public func lazyProgress(_ id: String) throws(StoreError) -> (local: Int64, total: Int64, files: Int, localFiles: Int) {
        let toc = try lazyTOC(id)
        let diff = layerDiffPath(id)
        let rootDir = try openOwned(diff, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let root = rootDir.raw
        var local: Int64 = 0, total: Int64 = 0, files = 0, localFiles = 0
        for e in toc.entries where e.type == "reg" && (e.size ?? 0) > 0 {
            let size = e.size ?? 0
            total += size
            files += 1
            // Opened beneath the layer, no symlink followed: a TOC's names
            // are the registry's, and must not lead out of the layer.
            guard let file = try? Sys.openBeneath(root, e.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, noSymlinks: true) else { continue }
            do throws(Errno) {
                _ = try Sys.getxattr(fd: file.raw, Self.lazyXattr)
            } catch {
                if error == .noData {
                    local += size
                    localFiles += 1
                }
            }
        }
        return (local, total, files, localFiles)
    }

    /// The last step of completing a layer: every file is here and the
    /// blob checked against its diff ID (by the caller), so the layer
    /// becomes an ordinary one, as a full pull leaves it (`layer.tar` kept
    /// for a push). Safe while a mount reads it: only marks go.
    public func finishLazyLayer(_ id: String, plainTar: String) throws(StoreError) {
        try exclusively { () throws(StoreError) in
            guard isLazy(id) else { return }
            let (_, _, files, localFiles) = try lazyProgress(id)
            if files != localFiles {
                throw StoreError(.corrupt, "layer \(id): \(files - localFiles) files are still not fetched; run 'strata pull' again")
            }
            if rename(plainTar, "\(dir(id))/layer.tar") != 0 { throw StoreError.last("keeping layer \(id)'s archive") }
            do throws(Errno) { try PathXattr.remove(layerDiffPath(id), Self.lazyXattr) } catch {
                if error != .noData { throw StoreError.failed("layer \(id): its mark", error) }
            }
            _ = removeTree(path: lazyStateDir(id))
        }
    }

    /// The partly pulled layers of an image, bottom first.
    public func lazyLayers(of img: ImageRecord) -> [String] { img.layerIDs.filter { isLazy($0) } }
}
