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

    public func push(local: String, to ref: Reference) async throws {
        let img: Store.ImageRecord
        do { img = try store.image(local) } catch { throw RegistryError("\(error)") }
        guard let cfg = try? JSONSerialization.jsonObject(with: img.config) as? [String: Any],
              let diffIDs = (cfg["rootfs"] as? [String: Any])?["diff_ids"] as? [String] else {
            throw RegistryError("image \(local): config without rootfs.diff_ids")
        }
        var layers: [[String: Any]] = []
        for (l, d) in zip(img.layerIDs, diffIDs) {
            let file = store.layerArchivePath(l)
            var st = stat()
            if stat(file, &st) != 0 { throw RegistryError("layer \(d) of \(local) has no stored archive (\(currentErrno()))") }
            try await upload(ref, digest: d, file: file, size: Int64(st.st_size))
            layers.append(["mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": Int(st.st_size)])
        }
        try await upload(ref, digest: img.id, data: img.config)
        let manifest: [String: Any] = [
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": ["mediaType": "application/vnd.oci.image.config.v1+json", "digest": img.id, "size": img.config.count],
            "layers": layers,
        ]
        let body = try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys])
        let r = try await client.request(.PUT, "/v2/\(ref.repository)/manifests/\(ref.tag ?? "latest")",
                                         headers: [("Content-Type", "application/vnd.oci.image.manifest.v1+json")], body: body)
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
            store.recordBlobSource(digest, registry: ref.host, repository: ref.repository)
            return
        }
        var location: String?
        for from in store.blobSources(digest, registry: ref.host) where from != ref.repository {
            let m = try await client.request(.POST, "/v2/\(ref.repository)/blobs/uploads/?mount=\(digest)&from=\(from)")
            if m.status == 201 {
                progress("blob \(short): mounted from \(from)")
                store.recordBlobSource(digest, registry: ref.host, repository: ref.repository)
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
        store.recordBlobSource(digest, registry: ref.host, repository: ref.repository)
        progress("blob \(short): \(size) bytes pushed")
    }
}
