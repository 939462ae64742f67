import Archive
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata push`: every blob first (HEAD to skip what the registry has,
/// then POST, PATCH and PUT), the manifest last.
public struct Pusher: Sendable {
    public let store: Store
    public let client: RegistryClient
    public var progress: @Sendable (String) -> Void = { _ in }

    public init(store: Store, client: RegistryClient) {
        self.store = store
        self.client = client
    }

    /// How layers go to the registry.
    public enum Compression: String, Sendable, CaseIterable {
        /// The stored tar as it is (its digest is its diff ID).
        case none
        /// eStargz: gzip with a table of contents, so `pull --lazy` can
        /// fetch one file at a time; an ordinary tar+gzip for anyone else.
        case estargz
        /// zstd:chunked (containers/storage's): a zstd frame per file, the
        /// table of contents in a skippable frame; an ordinary tar+zstd.
        case zstdChunked = "zstd:chunked"
    }

    /// `prefetch`: paths in the image whose files an eStargz layer puts
    /// first, before its prefetch landmark (what a lazy pull fetches first).
    public func push(local: String, to ref: Reference, compression: Compression = .none, prefetch: [String] = []) async throws {
        if !prefetch.isEmpty && compression != .estargz {
            throw RegistryError(.store(.invalidInput), "--prefetch needs --compression estargz (a prefetch landmark is eStargz's)")
        }
        var prioritised: Set<String> = []
        let img: Store.ImageRecord
        do { img = try store.image(local) } catch { throw RegistryError(wrapping: error) }
        let diffIDs: [String]
        do { diffIDs = try store.config(of: img).diffIDs } catch { throw RegistryError(wrapping: error) }
        if let lazy = store.lazyLayers(of: img).first {
            throw RegistryError(.store(.invalidInput), "\(local) has layers not yet pulled in full (\(Digest.hex(lazy).prefix(12))); run 'strata pull' on it first")
        }
        var layers: [OCI.Descriptor] = []
        var newDiffIDs: [String] = []
        for (l, d) in zip(img.layerIDs, diffIDs) {
            let file = store.storedLayer(l).archive
            var st = stat()
            if stat(file, &st) != 0 { throw RegistryError(.store(.notFound), "layer \(d) of \(local) has no stored archive (\(currentErrno()))") }
            switch compression {
            case .none:
                try await upload(ref, digest: d, file: file, size: Int64(st.st_size))
                layers.append(OCI.Descriptor(mediaType: OCI.layerType, digest: d, size: Int64(st.st_size)))
                newDiffIDs.append(d)
            case .estargz, .zstdChunked:
                let zstd = compression == .zstdChunked
                let out = store.scratch("seekable")
                defer { unlink(out) }
                let r: EstargzWriter.Result
                do { r = try EstargzWriter.convert(tar: file, to: out, format: zstd ? .zstdChunked : .estargz, prioritised: prefetch) } catch {
                    throw RegistryError(.store(.archive), "layer \(d): \(error)")
                }
                progress("layer \(Digest.hex(d).prefix(12)): \(compression.rawValue) \(Digest.hex(r.blobDigest).prefix(12)), \(r.blobSize) bytes")
                try await upload(ref, digest: r.blobDigest, file: out, size: r.blobSize)
                var notes: [String: String]
                if zstd, let position = r.tocPosition {
                    // Both names: containers/storage reads the newer, podman 4 the older.
                    notes = [:]
                    for k in StargzTOC.zstdPositionAnnotations { notes[k] = position }
                    for k in StargzTOC.zstdChecksumAnnotations { notes[k] = r.tocDigest }
                    // What containers/storage's layer records need and the
                    // TOC does not tell (eStargz's name for it).
                    notes[StargzTOC.uncompressedSizeAnnotation] = String(r.tarSize)
                } else {
                    notes = [StargzTOC.tocDigestAnnotation: r.tocDigest, StargzTOC.uncompressedSizeAnnotation: String(r.tarSize)]
                }
                layers.append(OCI.Descriptor(mediaType: OCI.layerType + (zstd ? "+zstd" : "+gzip"), digest: r.blobDigest, size: r.blobSize,
                                             annotations: notes))
                newDiffIDs.append(r.diffID)
                prioritised.formUnion(r.prioritised)
            }
        }
        let wanted = Set(prefetch.map { StargzTOC.Entry(name: $0, type: "reg", mode: nil).path })
        if let missing = wanted.subtracting(prioritised).sorted().first {
            throw RegistryError(.store(.invalidInput), "--prefetch \(missing): no regular file of that name in \(local)'s layers; the manifest was not pushed")
        }
        // The TOC is an entry of the tar: an eStargz layer has its own diff
        // ID, and so the image its own config.
        var config = img.config, configDigest = img.id
        if newDiffIDs != diffIDs {
            // The config's own type keeps every field it does not know.
            var typed: OCI.ImageConfig
            do { typed = try OCI.decode(OCI.ImageConfig.self, img.config, "the config of \(local)") } catch {
                throw RegistryError(.store(error.kind), error.message)
            }
            typed.rootfs.diff_ids = newDiffIDs
            config = OCI.encode(typed)
            configDigest = Digest.of(config)
        }
        try await upload(ref, digest: configDigest, data: config)
        let body = OCI.encode(OCI.Manifest(config: OCI.Descriptor(mediaType: OCI.configType, digest: configDigest, size: Int64(config.count)),
                                           layers: layers))
        let r = try await client.request(.PUT, "/v2/\(ref.repository)/manifests/\(ref.tag ?? "latest")",
                                         headers: [("Content-Type", OCI.manifestType)], body: body)
        guard r.status == 201 || r.status == 200 else { throw RegistryClient.error(r.status, r.body, "manifest of \(ref)") }
        progress("pushed \(ref) \(Digest.of(body))")
    }

    /// The config: small, sent from memory.
    func upload(_ ref: Reference, digest: String, data: Data) async throws {
        let tmp = store.scratch("push")
        try data.write(to: URL(fileURLWithPath: tmp))
        defer { unlink(tmp) }
        try await upload(ref, digest: digest, file: tmp, size: Int64(data.count))
    }

    /// One blob: skipped when the registry has it, mounted from another
    /// repository of the registry that holds it (as recorded by earlier
    /// pulls and pushes), else streamed with POST, PATCH and PUT.
    func upload(_ ref: Reference, digest: String, file: String, size: Int64) async throws {
        let short = Digest.hex(digest).prefix(12)
        let head = try await client.request(.HEAD, "/v2/\(ref.repository)/blobs/\(digest)")
        if head.status == 200 {
            progress("blob \(short): already there")
            store.noteBlobSource(digest, ref, progress: progress)
            return
        }
        var location: String?
        let sources: [String]
        do { sources = try store.blobSources(digest, registry: ref.host) } catch {
            progress("warning: \(error.message); uploading blob \(short) instead of mounting it")
            sources = []
        }
        for from in sources where from != ref.repository {
            let m = try await client.request(.POST, "/v2/\(ref.repository)/blobs/uploads/?mount=\(digest)&from=\(from)")
            if m.status == 201 {
                progress("blob \(short): mounted from \(from)")
                store.noteBlobSource(digest, ref, progress: progress)
                return
            }
            // 202: the registry would not mount, and opened an upload instead.
            if m.status == 202, let loc = m.headers["Location"].first { location = loc; break }
        }
        if location == nil {
            let start = try await client.request(.POST, "/v2/\(ref.repository)/blobs/uploads/")
            guard start.status == 202, let loc = start.headers["Location"].first else { throw RegistryClient.error(start.status, start.body, "upload of \(digest)") }
            location = loc
        }
        guard let loc = location else { return }
        let patch = try await client.patch(loc, file: file, size: size)
        guard patch.status == 202, let loc2 = patch.headers["Location"].first else { throw RegistryClient.error(patch.status, patch.body, "upload of \(digest)") }
        let sep = loc2.contains("?") ? "&" : "?"
        let put = try await client.request(.PUT, "\(loc2)\(sep)digest=\(digest)")
        guard put.status == 201 else { throw RegistryClient.error(put.status, put.body, "upload of \(digest)") }
        store.noteBlobSource(digest, ref, progress: progress)
        progress("blob \(short): \(size) bytes pushed")
    }
}
