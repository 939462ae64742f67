import Archive
import Foundation
import Sys
import SystemPackage
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
                let manifest = [OCI.DockerArchiveEntry(Config: cfgName, RepoTags: tags, Layers: layerNames)]
                try tar.add("manifest.json", data: OCI.encode(manifest))
            case .ociArchive:
                try tar.add("oci-layout", data: Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
                var layers: [OCI.Descriptor] = []
                for (f, d) in zip(layerFiles, diffIDs) {
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
    /// pipe): the archive is made whole in the store's scratch space first,
    /// so a refused save writes nothing at all to the descriptor.
    public func save(_ ref: String, toDescriptor out: Int32, format: ArchiveFormat) throws(StoreError) {
        let tmp = scratch("save", suffix: ".tar")
        defer { unlink(tmp) }
        try save(ref, to: tmp, format: format)
        let f: UniqueFD
        do throws(Errno) { f = try Sys.open(tmp, O_RDONLY | O_CLOEXEC) } catch { throw StoreError.failed("open \(tmp)", error) }
        let fd = f.raw
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = retryEINTR { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
            if n < 0 { throw StoreError.failed("read \(tmp)", currentErrno()) }
            if n == 0 { return }
            var done = 0
            while done < n {
                let w = retryEINTR { buf.withUnsafeBytes { write(out, $0.baseAddress.map { $0 + done }, n - done) } }
                if w < 0 { throw StoreError.failed("writing the archive of \(ref)", currentErrno()) }
                done += w
            }
        }
    }
}
