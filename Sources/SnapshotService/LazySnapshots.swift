import Foundation
import Registry
import Store
import Sys

/// Lazy pulling as remote snapshotters do it: containerd's CRI plugin
/// labels each layer's Prepare with the image reference, the manifest, the
/// layer's digest and the target chain ID (`containerd.io/snapshot.ref`).
/// A layer with a table of contents (eStargz, zstd:chunked) is made from
/// it in the store (its TOC fetched, no blob) and committed as a snapshot
/// showing that layer, so containerd answers AlreadyExists for it and never
/// downloads the blob; its files are fetched when first read, by the union
/// `strata` mounts (the snapshots' mounts are then `fuse3.strata`). A layer
/// without a TOC is left to containerd, which pulls and applies it as
/// always (as stargz-snapshotter leaves it). A layer already in the store
/// (`strata pull`, `strata pull --lazy`) is found by its chain ID and
/// taken as it is.
public struct LazySnapshots: Sendable {
    public var registry: RegistryOptions
    public var progress: @Sendable (String) -> Void
    /// Added to the union's options where a stack holds lazy layers
    /// (`lazy_fetch=on_read`, `lazy_readahead=N`).
    public var mountOptions: [String]
    /// Manifests and configs already read, by image and manifest: one
    /// image's layers come as one Prepare each.
    let described = Locked<[String: ImageDescription]>([:])
    /// What was decided for each layer, for `strata stats`.
    public let counts = Locked<[LayerPullResult: Int]>([:])

    public init(registry: RegistryOptions, mountOptions: [String] = [], progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.registry = registry
        self.mountOptions = mountOptions
        self.progress = progress
    }

    static let targetLabel = "containerd.io/snapshot.ref"
    static let imageLabel = "containerd.io/snapshot/cri.image-ref"
    static let layerLabel = "containerd.io/snapshot/cri.layer-digest"
    static let manifestLabel = "containerd.io/snapshot/cri.manifest-digest"

    /// Whether `target` now exists as a committed snapshot (the caller then
    /// answers AlreadyExists).
    func prepare(store: Store, labels: [String: String], parent: String?) async throws -> Bool {
        guard let target = labels[Self.targetLabel], let image = labels[Self.imageLabel] else { return false }
        if store.hasSnapshot(target) { return true }
        var result = LayerPullResult.present
        if ((try? store.layer(target)) ?? nil) == nil {
            guard let digest = labels[Self.layerLabel] else { return false }
            let ref = try Reference(image)
            let client = try RegistryClient(host: ref.apiHost, options: registry, credentials: nil)
            var puller = Puller(store: store, client: client)
            puller.progress = progress
            do {
                let key = "\(image) \(labels[Self.manifestLabel] ?? "")"
                let desc: ImageDescription
                if let d = described.withLock({ $0[key] }) {
                    desc = d
                } else {
                    desc = try await puller.describe(ref, manifestDigest: labels[Self.manifestLabel])
                    described.withLock { $0[key] = desc }
                }
                guard let i = desc.layerIndex(digest), desc.chain[i] == target else {
                    await client.shutdown()
                    progress("snapshot \(target): layer \(digest) is not that chain's in \(image); containerd pulls it")
                    return false
                }
                result = try await puller.pullLayer(desc, index: i)
            } catch {
                await client.shutdown()
                throw error
            }
            await client.shutdown()
        }
        counts.withLock { $0[result, default: 0] += 1 }
        if result == .noTOC {
            progress("snapshot \(target): layer \(labels[Self.layerLabel] ?? "") has no table of contents; containerd pulls it")
            return false
        }
        let lazy = store.storedLayer(target).isLazy
        var own = labels
        own["containerd.io/snapshot/strata.lazy"] = lazy ? "true" : "false"
        try store.adoptLayerAsSnapshot(target, layer: target, parent: parent.flatMap { $0.isEmpty ? nil : $0 }, labels: own)
        progress("snapshot \(target): layer \(result == .lazy ? "pulled lazily" : "already in the store")")
        return true
    }
}
