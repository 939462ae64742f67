import Archive
import Foundation
import Store
#if canImport(Glibc)
import Glibc
#endif

/// One layer at a time, as a remote snapshotter (containerd) or an
/// additional layer store (containers/storage) is asked for it: the engine
/// names the image and one of its layers, and pulls every layer it is not
/// given itself. A layer with a table of contents is made from it here (its
/// files fetched on first read); one without is left to the engine, which
/// downloads and applies it as it always does.
public struct ImageDescription: Sendable {
    public let reference: Reference
    public let manifestDigest: String
    public let manifest: OCI.Manifest
    public let config: Data
    public let configDigest: String
    public let diffIDs: [String]
    /// The chain ID of each layer, bottom first.
    public let chain: [String]

    /// The index of the layer whose blob is `digest`.
    public func layerIndex(_ digest: String) -> Int? { manifest.layers.firstIndex { $0.digest == digest } }

    /// The layer's uncompressed size, when its pusher wrote it down
    /// (`io.containers.estargz.uncompressed-size`: Strata and stargz tools do,
    /// podman's zstd:chunked writer does not).
    public static func uncompressedSize(_ l: OCI.Descriptor) -> Int64? {
        l.annotations?[StargzTOC.uncompressedSizeAnnotation].flatMap { Int64($0) }.flatMap { $0 >= 0 ? $0 : nil }
    }

    /// Whether a layer is zstd:chunked (its TOC found by a position annotation).
    public static func isZstdChunked(_ l: OCI.Descriptor) -> Bool {
        StargzTOC.zstdPositionAnnotations.contains { l.annotations?[$0] != nil }
    }

    /// Whether a layer carries a table of contents that lets it be pulled lazily.
    public static func hasTOC(_ l: OCI.Descriptor) -> Bool {
        l.annotations?[StargzTOC.tocDigestAnnotation] != nil
            || (StargzTOC.zstdPositionAnnotations.contains { l.annotations?[$0] != nil }
                && StargzTOC.zstdChecksumAnnotations.contains { l.annotations?[$0] != nil })
    }
}

public enum LayerPullResult: String, Sendable, Equatable {
    /// Made from its TOC now; its files are fetched on first read.
    case lazy
    /// Already in the store (a `strata pull`, or an earlier lookup).
    case present
    /// No table of contents: the engine pulls it the usual way.
    case noTOC
}

extension Puller {
    /// The manifest and config of `ref` (the manifest `manifestDigest`
    /// names, when given: the one the engine resolved), each checked.
    public func describe(_ ref: Reference, manifestDigest: String? = nil) async throws -> ImageDescription {
        let data: Data
        if let manifestDigest {
            data = try await manifest(ref.withDigest(manifestDigest))
        } else {
            data = try await manifest(ref)
        }
        let m = try decode(OCI.Manifest.self, data, "manifest of \(ref)")
        let r = try await client.request(.GET, "/v2/\(ref.repository)/blobs/\(m.config.digest)", maxBody: Self.manifestLimit)
        guard r.status == 200 else { throw RegistryClient.error(r.status, r.body, "config of \(ref)") }
        if Digest.of(r.body) != m.config.digest { throw RegistryError(.corrupt, "\(ref): the config does not match its digest \(m.config.digest)") }
        let diffIDs = try decode(OCI.ImageConfig.self, r.body, "config of \(ref)").diffIDs
        if m.layers.count != diffIDs.count {
            throw RegistryError(.corrupt, "\(ref): the config lists \(diffIDs.count) layers, the manifest \(m.layers.count)")
        }
        return ImageDescription(reference: ref, manifestDigest: Digest.of(data), manifest: m, config: r.body, configDigest: m.config.digest,
                                diffIDs: diffIDs, chain: Digest.chainIDs(diffIDs))
    }

    /// Layer `index` of `image` into the store, lazily, if it has a TOC.
    /// It is recorded over the layer below when the store holds that one,
    /// else on its own (`Store.recordableParent`).
    public func pullLayer(_ image: ImageDescription, index i: Int) async throws -> LayerPullResult {
        let id = image.chain[i]
        do { if try store.layer(id) != nil { return .present } } catch { throw RegistryError(wrapping: error) }
        let l = image.manifest.layers[i]
        let parent = store.recordableParent(image.chain, i)
        let ref = image.reference
        if let tocDigest = l.annotations?[StargzTOC.tocDigestAnnotation] {
            try await lazyLayer(ref, l, tocDigest: tocDigest, diffID: image.diffIDs[i], chainID: id, parent: parent)
        } else if let position = StargzTOC.zstdPositionAnnotations.lazy.compactMap({ l.annotations?[$0] }).first,
                  let checksum = StargzTOC.zstdChecksumAnnotations.lazy.compactMap({ l.annotations?[$0] }).first {
            try await zstdChunkedLayer(ref, l, position: position, checksum: checksum, diffID: image.diffIDs[i], chainID: id, parent: parent)
        } else {
            return .noTOC
        }
        store.noteBlobSource(l.digest, ref, progress: progress)
        return .lazy
    }
}
