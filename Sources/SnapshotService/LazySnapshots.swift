import Foundation
import Registry
import Store

/// Lazy pulling as remote snapshotters do it: containerd's CRI plugin
/// labels each layer's Prepare with the image reference and the target
/// chain ID (`containerd.io/snapshot.ref`); when the image's layers carry a
/// table of contents (eStargz, zstd:chunked), the image is pulled lazily
/// into the store (manifest, config and each TOC: no layer blob) and the
/// target is committed as a snapshot showing that layer, so containerd
/// answers AlreadyExists for it and never downloads the blob. Files are
/// fetched when first read, by the union `strata` mounts (the snapshots'
/// mounts are then `fuse3.strata`).
///
/// Chosen for now: the whole image goes through one lazy pull (as `strata
/// pull --lazy`), so a layer without a TOC is pulled whole by the
/// snapshotter in that pass and taken over as well (containerd skips its
/// download either way), where stargz-snapshotter leaves such a layer to
/// containerd.
public struct LazySnapshots: Sendable {
    public var registry: RegistryOptions
    public var progress: @Sendable (String) -> Void
    /// Added to the union's options where a stack holds lazy layers
    /// (`lazy_fetch=on_read`, `lazy_readahead=N`).
    public var mountOptions: [String]

    public init(registry: RegistryOptions, mountOptions: [String] = [], progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.registry = registry
        self.mountOptions = mountOptions
        self.progress = progress
    }

    static let targetLabel = "containerd.io/snapshot.ref"
    static let imageLabel = "containerd.io/snapshot/cri.image-ref"

    /// Whether `target` now exists as a committed snapshot (the caller then
    /// answers AlreadyExists).
    func prepare(store: Store, labels: [String: String], parent: String?) async throws -> Bool {
        guard let target = labels[Self.targetLabel], let image = labels[Self.imageLabel] else { return false }
        if store.hasSnapshot(target) { return true }
        func inStore() -> Bool { ((try? store.layer(target)) ?? nil) != nil }
        if !inStore() {
            let ref = try Reference(image)
            let client = try RegistryClient(host: ref.apiHost, options: registry, credentials: nil)
            var puller = Puller(store: store, client: client)
            puller.progress = progress
            do {
                _ = try await puller.pull(ref, lazy: true)
            } catch {
                await client.shutdown()
                throw error
            }
            await client.shutdown()
        }
        guard inStore() else { return false }
        let lazy = store.isLazy(target)
        var own = labels
        own["containerd.io/snapshot/strata.lazy"] = lazy ? "true" : "false"
        try store.adoptLayerAsSnapshot(target, layer: target, parent: parent.flatMap { $0.isEmpty ? nil : $0 }, labels: own)
        progress("snapshot \(target): layer \(lazy ? "pulled lazily" : "already in the store")")
        return true
    }
}
