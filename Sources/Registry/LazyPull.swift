import Archive
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata pull --lazy`: the manifest, the config and each layer's TOC
/// only. A layer with a TOC (eStargz: the manifest's toc.digest
/// annotation) is made from it, its files holes until read; a layer
/// without one is pulled in full, as without --lazy.
extension Puller {
    func pullLazily(_ ref: Reference, layers: [OCI.Descriptor], diffIDs: [String], chain: [String], config: Data,
                    configDigest: String, dir: String) async throws -> String {
        do { try store.refuseOnBtrfs("pull --lazy", because: Store.lazyNeedsUnion) } catch { throw RegistryError(wrapping: error) }
        var partial = 0
        for (i, l) in layers.enumerated() {
            let short = Digest.hex(diffIDs[i]).prefix(12)
            if try store.layer(chain[i]) != nil { progress("layer \(short): already present"); continue }
            let parent = store.recordableParent(chain, i)
            if let tocDigest = l.annotations?[StargzTOC.tocDigestAnnotation] {
                try await lazyLayer(ref, l, tocDigest: tocDigest, diffID: diffIDs[i], chainID: chain[i], parent: parent)
                partial += 1
                continue
            }
            if let position = StargzTOC.zstdPositionAnnotations.lazy.compactMap({ l.annotations?[$0] }).first,
               let checksum = StargzTOC.zstdChecksumAnnotations.lazy.compactMap({ l.annotations?[$0] }).first {
                try await zstdChunkedLayer(ref, l, position: position, checksum: checksum, diffID: diffIDs[i], chainID: chain[i], parent: parent)
                partial += 1
                continue
            }
            progress("layer \(short): no table of contents (\(l.mediaType ?? "no media type")); pulled in full")
            let (path, _) = try await blob(ref, l.digest, size: Int(l.size), dir: dir)
            do {
                try store.exclusively { () throws(StoreError) in
                    if try store.layer(chain[i]) != nil { return }
                    let (u, diff) = try store.unpackCompressedLayer(blob: path, diffID: diffIDs[i], chainID: chain[i])
                    if diff != diffIDs[i] {
                        store.discardUnpacked(chain[i])
                        throw StoreError(.corrupt, "\(ref): layer \(l.digest) decompresses to \(diff), the config says \(diffIDs[i])")
                    }
                    try store.record(u, parent: parent, progress: progress)
                }
            } catch { throw RegistryError(wrapping: error) }
        }
        do {
            try store.exclusively { () throws(StoreError) in
                try store.addImage(id: configDigest, config: config, chainIDs: chain, tags: [ref.storeName])
            }
        } catch { throw RegistryError(wrapping: error) }
        try? FileManager.default.removeItem(atPath: dir)
        for d in [configDigest] + layers.map(\.digest) { store.noteBlobSource(d, ref, progress: progress) }
        progress("pulled \(ref) lazily: \(partial) of \(layers.count) layers partial; their files are fetched when first read, 'strata pull \(ref)' completes them")
        return configDigest
    }

    /// One layer from its TOC: the footer, then the TOC's member, by two
    /// Range requests; the TOC checked against the manifest's digest
    /// before anything is made from it.
    func lazyLayer(_ ref: Reference, _ l: OCI.Descriptor, tocDigest: String, diffID: String, chainID: String, parent: String?) async throws {
        let short = Digest.hex(diffID).prefix(12)
        let path = "/v2/\(ref.repository)/blobs/\(l.digest)"
        let footerSize = Int64(StargzTOC.footerSize)
        guard l.size > footerSize else { throw RegistryError(.corrupt, "\(ref): layer \(l.digest) is too small to be eStargz") }
        let footer = try await client.range(path, from: l.size - footerSize, to: l.size)
        guard let tocOffset = StargzTOC.tocOffset(footer: [UInt8](footer)), tocOffset >= 0, tocOffset < l.size - footerSize else {
            throw RegistryError(.corrupt, "\(ref): layer \(l.digest) names a TOC but has no eStargz footer")
        }
        let member = try await client.range(path, from: tocOffset, to: l.size - footerSize)
        let tocFile: StargzTOCFile
        do {
            let bytes = try member.withUnsafeBytes { (b) throws(ArchiveError) in try Gunzip.all(b, limit: 256 << 20, what: "TOC of \(l.digest)") }
            tocFile = try StargzTOCFile(member: bytes, what: "TOC of \(l.digest)")
        } catch { throw RegistryError(.corrupt, "\(ref): \(error)") }
        let got = tocFile.json.withUnsafeBytes { sha256Digest($0) }
        if got != tocDigest { throw RegistryError(.corrupt, "\(ref): the TOC of layer \(l.digest) does not match its digest (got \(got)); refused") }
        let toc: StargzTOC
        do { toc = try JSONDecoder().decode(StargzTOC.self, from: Data(tocFile.json)) } catch {
            throw RegistryError(.corrupt, "\(ref): the TOC of layer \(l.digest) is not valid JSON (\(error))")
        }
        guard toc.version == 1 else { throw RegistryError(.corrupt, "\(ref): TOC version \(toc.version) of layer \(l.digest) is not 1") }
        let source = Store.LazySource(registry: ref.apiHost, repository: ref.repository, blob: l.digest, blobSize: l.size,
                                      tocOffset: tocOffset, diffID: diffID, format: "estargz")
        progress("layer \(short): table of contents, \(toc.entries.count) entries (\(footer.count + member.count) bytes)")
        do { try store.addLazyLayer(toc: toc, tocJSON: tocFile.json, tocFile: tocFile, source: source, chainID: chainID, parent: parent, progress: progress) } catch {
            throw RegistryError(wrapping: error)
        }
    }

    /// A zstd:chunked layer (containers/storage, as podman pushes it): the
    /// TOC is a zstd frame inside a skippable frame, located by the
    /// manifest's position annotation (offset:length:uncompressed:type) and
    /// checked against its checksum annotation; one Range request.
    func zstdChunkedLayer(_ ref: Reference, _ l: OCI.Descriptor, position: String, checksum: String,
                          diffID: String, chainID: String, parent: String?) async throws {
        let short = Digest.hex(diffID).prefix(12)
        let parts = position.split(separator: ":").compactMap { Int64($0) }
        guard parts.count >= 3, parts[0] >= 8, parts[1] > 0, parts[0] + parts[1] <= l.size, parts[2] <= 256 << 20 else {
            throw RegistryError(.corrupt, "\(ref): layer \(l.digest) has a bad zstd:chunked manifest position '\(position)'")
        }
        let path = "/v2/\(ref.repository)/blobs/\(l.digest)"
        let compressed = try await client.range(path, from: parts[0], to: parts[0] + parts[1])
        let got = compressed.withUnsafeBytes { sha256Digest($0) }
        if got != checksum { throw RegistryError(.corrupt, "\(ref): the TOC of layer \(l.digest) does not match its checksum (got \(got)); refused") }
        let json: [UInt8]
        do { json = try compressed.withUnsafeBytes { (b) throws(ArchiveError) in try Unzstd.decode(b, want: nil, what: "TOC of \(l.digest)") } } catch {
            throw RegistryError(.corrupt, "\(ref): \(error)")
        }
        let toc: StargzTOC
        do { toc = try JSONDecoder().decode(StargzTOC.self, from: Data(json)) } catch {
            throw RegistryError(.corrupt, "\(ref): the TOC of layer \(l.digest) is not valid JSON (\(error))")
        }
        guard toc.version == 1 else { throw RegistryError(.corrupt, "\(ref): TOC version \(toc.version) of layer \(l.digest) is not 1") }
        // Data lies before the skippable frame that holds the TOC.
        let source = Store.LazySource(registry: ref.apiHost, repository: ref.repository, blob: l.digest, blobSize: l.size,
                                      tocOffset: parts[0] - 8, diffID: diffID, format: "zstd:chunked")
        progress("layer \(short): zstd:chunked table of contents, \(toc.entries.count) entries (\(compressed.count) bytes)")
        do { try store.addLazyLayer(toc: toc, tocJSON: json, tocFile: nil, source: source, chainID: chainID, parent: parent, progress: progress) } catch {
            throw RegistryError(wrapping: error)
        }
    }
}
