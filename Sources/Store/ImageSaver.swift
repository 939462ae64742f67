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
        let image = try savable(ref)
        let tmp = path + ".partial-\(UInt32.random(in: 0...UInt32.max))"
        do {
            try write(image, into: TarBuilder(path: tmp), format: format)
        } catch {
            unlink(tmp)
            throw StoreError(.archive, "saving \(ref): \(error)")
        }
        if rename(tmp, path) != 0 {
            let e = currentErrno()
            unlink(tmp)
            throw StoreError(.system(e), "\(path): \(e)")
        }
    }

    /// The same onto an open descriptor (`docker save IMAGE > file`, or a
    /// pipe), written as it is made. Everything that can refuse the save
    /// (no such image, a layer partly pulled or without its kept archive)
    /// is checked first, so a refused save writes nothing to it.
    public func save(_ ref: String, toDescriptor out: Int32, label: String, format: ArchiveFormat) throws(StoreError) {
        let image = try savable(ref)
        do { try write(image, into: TarBuilder(descriptor: out, label: label), format: format) } catch {
            throw StoreError(.archive, "saving \(ref): \(error)")
        }
    }

    /// An image with what its archive is made of.
    struct Savable {
        let img: ImageRecord
        let diffIDs: [String]
        let tags: [String]
        let layerFiles: [String]
    }

    func savable(_ ref: String) throws(StoreError) -> Savable {
        let img = try image(ref)
        let diffIDs = try OCI.decode(OCI.ImageConfig.self, img.config, "image \(ref): config").diffIDs
        let tags = (try images()).first { $0.0.id == img.id }?.1 ?? []
        var layerFiles: [String] = []
        for l in img.layerIDs {
            let layer = storedLayer(l)
            let f = layer.archive
            if layer.isLazy { throw StoreError(.invalidInput, "image \(ref): layer \(l) is partly pulled (pull --lazy); complete it with 'strata pull \(ref)' to save it") }
            guard access(f, R_OK) == 0 else { throw StoreError(.notFound, "layer \(l) has no kept archive; load the image again to save it") }
            layerFiles.append(f)
        }
        return Savable(img: img, diffIDs: diffIDs, tags: tags, layerFiles: layerFiles)
    }

    private func write(_ s: Savable, into tar: TarBuilder, format: ArchiveFormat) throws(ArchiveError) {
        let img = s.img, tags = s.tags
        switch format {
        case .dockerArchive:
            let cfgName = "\(Digest.hex(img.id)).json"
            try tar.add(cfgName, data: img.config)
            var layerNames: [String] = []
            for (f, d) in zip(s.layerFiles, s.diffIDs) {
                let name = "\(Digest.hex(d)).tar"
                try tar.add(name, file: f)
                layerNames.append(name)
            }
            let manifest = [OCI.DockerArchiveEntry(Config: cfgName, RepoTags: tags, Layers: layerNames)]
            try tar.add("manifest.json", data: OCI.encode(manifest))
        case .ociArchive:
            try tar.add("oci-layout", data: Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
            var layers: [OCI.Descriptor] = []
            for (f, d) in zip(s.layerFiles, s.diffIDs) {
                var st = stat()
                stat(f, &st)
                try tar.add("blobs/sha256/\(Digest.hex(d))", file: f)
                layers.append(OCI.Descriptor(mediaType: OCI.layerType, digest: d, size: Int64(st.st_size)))
            }
            try tar.add("blobs/sha256/\(Digest.hex(img.id))", data: img.config)
            let manifest = OCI.Manifest(config: OCI.Descriptor(mediaType: OCI.configType, digest: img.id, size: Int64(img.config.count)),
                                        layers: layers)
            let mdata = OCI.encode(manifest)
            let mdigest = Digest.of(mdata)
            try tar.add("blobs/sha256/\(Digest.hex(mdigest))", data: mdata)
            var desc = OCI.Descriptor(mediaType: OCI.manifestType, digest: mdigest, size: Int64(mdata.count))
            if let t = tags.first { desc.annotations = ["io.containerd.image.name": t, "org.opencontainers.image.ref.name": String(t.split(separator: ":").last ?? "latest")] }
            try tar.add("index.json", data: OCI.encode(OCI.Index(manifests: [desc])))
        }
        try tar.finish()
    }
}
