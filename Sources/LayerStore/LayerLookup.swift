import Foundation
import FUSE
import Overlay
import OverlayFS
import Registry
import Store
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The slow path of a lookup: a layer containers/storage asks for the first
/// time. The image's manifest and config are read once per reference; a
/// layer with a table of contents is pulled lazily into Strata's store
/// (`Puller.pullLayer`, as the containerd snapshotter does), committed as a
/// snapshot owned by the layer store (so `prune` and `check` see it, and
/// the containerd snapshotter does not list it), and served through a union
/// of its own. A layer without one is not here: containers/storage then
/// pulls it itself.
extension LayerStoreFS {
    func openStore() throws -> Store {
        try storeOnce.withLock { (s: inout Store?) throws -> Store in
            if let s { return s }
            let opened = try Store(root: options.storeRoot)
            try opened.refuseOnBtrfs("the layer store", because: "it serves the store's layers as the lower layers of a union; "
                                     + "give it a store made with --storage-driver overlay")
            s = opened
            return opened
        }
    }

    /// Runs async registry work from a FUSE worker, which waits for it.
    func waiting<R: Sendable>(_ body: @escaping @Sendable () async throws -> R) throws -> R {
        let result = Locked<Result<R, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                let v = try await body()
                result.withLock { $0 = .success(v) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
            done.signal()
        }
        done.wait()
        guard let r = result.withLock({ $0 }) else { throw Errno.ioError }
        return try r.get()
    }

    /// The layer `digest` of `reference`, made and served; nil when it has
    /// no table of contents or is not in the image.
    func resolve(_ refNode: VirtualNode, reference: String, digest: String) throws -> ServedLayer? {
        let store = try openStore()
        let ref = try Reference(reference)
        let client = try RegistryClient(host: ref.apiHost, options: options.registry, credentials: nil)
        var puller = Puller(store: store, client: client)
        puller.progress = options.progress
        let cached = refNode.description.withLock { $0 }
        let (desc, result): (ImageDescription, LayerPullResult?) = try waiting { [puller] in
            let d: ImageDescription
            if let cached { d = cached } else { d = try await puller.describe(ref) }
            guard let i = d.layerIndex(digest) else { return (d, nil) }
            return (d, try await puller.pullLayer(d, index: i))
        }
        refNode.description.withLock { $0 = desc }
        guard let result, let i = desc.layerIndex(digest) else {
            options.progress("\(reference): no layer \(digest) in its manifest")
            Task { await client.shutdown() }
            return nil
        }
        if result == .noTOC {
            options.progress("\(reference): layer \(digest) has no table of contents; containers/storage pulls it")
            Task { await client.shutdown() }
            return nil
        }
        let chainID = desc.chain[i]
        let layer = store.storedLayer(chainID)
        // Owned by the store's snapshot API: kept by prune, seen by check.
        let name = "layer-store/\(Data(reference.utf8).base64EncodedString())/\(digest)"
        try store.adoptLayerAsSnapshot(name, layer: chainID, parent: nil,
                                       labels: [SnapshotInfo.ownerLabel: "layer-store", "strata.io/reference": reference, "strata.io/digest": digest])
        recordImageIfWhole(store, desc)
        var config = OverlayConfig()
        if try !config.apply("lowerdir", layer.diff) { throw Errno.invalidArgument }
        for o in options.unionOptions {
            let kv = o.split(separator: "=", maxSplits: 1).map(String.init)
            if try !config.apply(kv[0], kv.count > 1 ? kv[1] : nil) { throw Errno.invalidArgument }
        }
        config.lazyData = options.lazyData
        let overlay = try Overlay(config)
        let fs = OverlayFS(overlay, passthrough: false)
        let l = desc.manifest.layers[i]
        let zstd = ImageDescription.isZstdChunked(l)
        let info = Self.infoJSON(compressedDigest: l.digest, compressedSize: l.size, diffID: desc.diffIDs[i],
                                 uncompressedSize: ImageDescription.uncompressedSize(l), zstd: zstd)
        let blob = BlobReader(client: client, repository: ref.repository, digest: l.digest, size: l.size)
        let served = try publish { slot in ServedLayer(slot: slot, fs: fs, reference: reference, digest: digest, info: info, blob: blob) }
        let slot = served.slot
        let notifier = self.notifier.withLock { $0 }
        overlay.attributesObserver.withLock { $0 = { id in _ = notifier?.invalidateInode(slot << Self.slotShift | id, offset: -1) } }
        overlay.started()
        options.progress("\(reference): layer \(digest) served \(layer.isLazy ? "lazily, its files fetched as read" : "from the store")")
        return served
    }

    /// containers/storage's layer JSON, the fields an additional layer
    /// store gives (the rest it fills itself). The uncompressed size comes
    /// from the layer's annotation. A layer without one (podman's own
    /// zstd:chunked) is left without it: -1, containers/storage's "unknown",
    /// makes podman 4.3 call the image corrupted and refuse to run it, and
    /// the size is not known before the whole blob is read. Pull, run,
    /// buildah and push then work; `podman save`, which writes the size
    /// into its tar, fails for such a layer ("write too long").
    static func infoJSON(compressedDigest: String, compressedSize: Int64, diffID: String, uncompressedSize: Int64?, zstd: Bool) -> [UInt8] {
        // containers/storage's archive.Compression: 2 gzip, 4 zstd.
        let text = #"{"compressed-diff-digest":"\#(compressedDigest)","compressed-size":\#(compressedSize),"diff-digest":"\#(diffID)",\#(uncompressedSize.map { "\"diff-size\":\($0)," } ?? "")"compression":\#(zstd ? 4 : 2)}"#
        return Array(text.utf8)
    }

    /// Once every layer of the image is in the store, the image is recorded
    /// as well (`strata image ls` shows it, `strata run` can use it).
    func recordImageIfWhole(_ store: Store, _ desc: ImageDescription) {
        guard desc.chain.allSatisfy({ ((try? store.layer($0)) ?? nil) != nil }) else { return }
        do {
            try store.exclusively { () throws(StoreError) in
                try store.addImage(id: desc.configDigest, config: desc.config, chainIDs: desc.chain, tags: [desc.reference.storeName])
            }
        } catch {
            options.progress("\(desc.reference): recording the image: \(error)")
        }
    }
}
