import Archive
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Images out, as `docker save` archives or OCI archives that docker load,
/// podman load and skopeo read. Layers are the exact tars their diff IDs
/// name (kept at load and commit), so a save -> load round trip keeps every
/// digest.
extension Store {
    public enum ArchiveFormat: String, Sendable, CaseIterable {
        case dockerArchive = "docker-archive"
        case ociArchive = "oci-archive"
    }

    public func save(_ ref: String, to path: String, format: ArchiveFormat) throws(StoreError) {
        let img = try image(ref)
        guard let cfg = try? JSONSerialization.jsonObject(with: img.config) as? [String: Any],
              let diffIDs = (cfg["rootfs"] as? [String: Any])?["diff_ids"] as? [String] else {
            throw StoreError("image \(ref): config without rootfs.diff_ids")
        }
        let tags = (try images()).first { $0.0.id == img.id }?.1 ?? []
        var layerFiles: [String] = []
        for l in img.layerIDs {
            let f = layerArchivePath(l)
            guard access(f, R_OK) == 0 else { throw StoreError("layer \(l) has no kept archive; load the image again to save it") }
            layerFiles.append(f)
        }
        let tmp = path + ".partial-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let tar = try TarBuilder(path: tmp)
            switch format {
            case .dockerArchive:
                let cfgName = "\(Digest.hex(img.id)).json"
                try tar.add(cfgName, data: img.config)
                var layerNames: [String] = []
                for (f, d) in zip(layerFiles, diffIDs) {
                    let name = "\(Digest.hex(d)).tar"
                    try tar.add(name, file: f)
                    layerNames.append(name)
                }
                let manifest: [[String: Any]] = [["Config": cfgName, "RepoTags": tags, "Layers": layerNames]]
                try tar.add("manifest.json", data: (try? JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys])) ?? Data())
            case .ociArchive:
                try tar.add("oci-layout", data: Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
                var layers: [[String: Any]] = []
                for (f, d) in zip(layerFiles, diffIDs) {
                    var st = stat()
                    stat(f, &st)
                    try tar.add("blobs/sha256/\(Digest.hex(d))", file: f)
                    layers.append(["mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": Int(st.st_size)])
                }
                try tar.add("blobs/sha256/\(Digest.hex(img.id))", data: img.config)
                let manifest: [String: Any] = [
                    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": ["mediaType": "application/vnd.oci.image.config.v1+json", "digest": img.id, "size": img.config.count],
                    "layers": layers,
                ]
                let mdata = (try? JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys])) ?? Data()
                let mdigest = Digest.of(mdata)
                try tar.add("blobs/sha256/\(Digest.hex(mdigest))", data: mdata)
                var desc: [String: Any] = ["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": mdata.count]
                if let t = tags.first { desc["annotations"] = ["io.containerd.image.name": t, "org.opencontainers.image.ref.name": String(t.split(separator: ":").last ?? "latest")] }
                let index: [String: Any] = ["schemaVersion": 2, "manifests": [desc]]
                try tar.add("index.json", data: (try? JSONSerialization.data(withJSONObject: index, options: [.sortedKeys])) ?? Data())
            }
            try tar.finish()
        } catch {
            unlink(tmp)
            throw StoreError("saving \(ref): \(error)")
        }
        if rename(tmp, path) != 0 {
            let e = currentErrno()
            unlink(tmp)
            throw StoreError("\(path): \(e)")
        }
    }
}
