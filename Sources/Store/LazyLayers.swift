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

    /// Why a btrfs store cannot hold a partly pulled layer.
    public static let lazyNeedsUnion = "a lazily pulled layer's files are fetched by Strata's union when first read, "
        + "and a btrfs container reads its own snapshot; pull without --lazy, or use a store made with --storage-driver overlay or fuse"

    public static let lazyXattr = OverlayFormat.xattr(OverlayFormat.lazyName, user: geteuid() != 0)

    /// Makes a layer from its TOC and records it (its files still holes).
    public func addLazyLayer(toc: StargzTOC, tocJSON: [UInt8], tocFile: StargzTOCFile?, source: LazySource, chainID: String, parent: String?,
                             progress: (String) -> Void = { _ in }) throws(StoreError) {
        try refuseOnBtrfs("lazy pulling", because: Self.lazyNeedsUnion)
        try exclusively { () throws(StoreError) in
            if try layer(chainID) != nil { return }
            let d = try freshLayerDir(chainID)
            let stats: LayerApplier.Stats
            do { stats = try LayerApplier().apply(toc: toc, tocFile: tocFile, to: "\(d)/diff", markXattr: Self.lazyXattr) } catch {
                discardUnpacked(chainID)
                throw StoreError(.archive, "layer \(source.diffID) (from its TOC): \(error)")
            }
            let layer = storedLayer(chainID)
            let state = layer.lazyState
            do {
                try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false)
                try Data(tocJSON).write(to: URL(fileURLWithPath: "\(state)/toc.json"))
                try JSONEncoder().encode(source).write(to: URL(fileURLWithPath: "\(state)/source.json"))
            } catch {
                discardUnpacked(chainID)
                throw StoreError(.io, "layer \(source.diffID): writing its pull state: \(error)")
            }
            do throws(Errno) { try PathXattr.set(layer.diff, Self.lazyXattr, state) } catch {
                discardUnpacked(chainID)
                throw StoreError.failed("layer \(source.diffID): marking it partly pulled", error)
            }
            try record(UnpackedLayer(diffID: source.diffID, chainID: chainID, stats: stats), parent: parent, progress: { _ in })
            progress("layer \(Digest.hex(source.diffID).prefix(12)): \(stats.entries) entries from its TOC, \(stats.bytes) bytes to fetch on first read")
        }
    }

    /// The partly pulled layers of an image, bottom first.
    public func lazyLayers(of img: ImageRecord) -> [String] { img.layerIDs.filter { storedLayer($0).isLazy } }
}
