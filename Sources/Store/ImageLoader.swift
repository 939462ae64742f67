import Archive
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `docker save` archives and OCI image layouts (as a tar, or a directory)
/// into the store; every digest is checked before anything is registered,
/// and layers already present are not extracted again.
public struct ImageLoader: Sendable {
    public let store: Store
    public var progress: @Sendable (String) -> Void = { _ in }
    /// The layer files are ours to move (a temporary unpacking or download),
    /// so an uncompressed layer moves into the store instead of being copied.
    public var ownsFiles = false
    /// Digests already taken of layer files (a pull hashes blobs as they
    /// arrive), so that they are not read a second time.
    public var verifiedDigests: [String: String] = [:]

    public init(store: Store) { self.store = store }

    public struct Loaded: Sendable {
        public var id: String
        public var tags: [String]
        public var newLayers: Int
        public var layers: Int
    }

    /// A tar archive: unpacked aside (as hostile input, like a layer), then read.
    public func load(archive: String) throws(StoreError) -> [Loaded] {
        let f: UniqueFD
        do throws(Errno) { f = try Sys.open(archive, O_RDONLY | O_CLOEXEC) } catch {
            throw StoreError(wrapping: ArchiveError(archive, "open: \(error)"))
        }
        return try load(fd: f.raw, label: archive)
    }

    /// The same from an open stream (`docker load < image.tar`): libarchive
    /// reads it front to back, so a pipe serves.
    public func load(fd: Int32, label: String) throws(StoreError) -> [Loaded] {
        let tmp = store.scratch("load")
        defer { removeTree(path: tmp) }
        var applier = LayerApplier()
        applier.deviceWhiteouts = false
        do { _ = try applier.apply(fd: fd, to: tmp, label: label) } catch { throw StoreError(wrapping: error) }
        var owning = self
        owning.ownsFiles = true
        return try owning.load(directory: tmp, source: label)
    }

    public func load(directory dir: String, source: String? = nil) throws(StoreError) -> [Loaded] {
        let label = source ?? dir
        if FileManager.default.fileExists(atPath: "\(dir)/index.json") { return try loadOCI(dir, label) }
        if FileManager.default.fileExists(atPath: "\(dir)/manifest.json") { return try loadDocker(dir, label) }
        throw StoreError(.invalidInput, "\(label): neither an OCI image layout (index.json) nor a docker save archive (manifest.json)")
    }

    func json<T: Decodable>(_ type: T.Type, _ path: String, _ label: String) throws(StoreError) -> T {
        let name = (path as NSString).lastPathComponent
        guard let d = FileManager.default.contents(atPath: path) else { throw StoreError(.invalidInput, "\(label): missing \(name)") }
        return try OCI.decode(T.self, d, "\(label): \(name)")
    }

    /// A path named inside the archive, kept inside it.
    func inside(_ dir: String, _ rel: String, _ label: String) throws(StoreError) -> String {
        if rel.hasPrefix("/") || rel.split(separator: "/").contains("..") { throw StoreError(.invalidInput, "\(label): path '\(rel)' leaves the archive") }
        return "\(dir)/\(rel)"
    }

    func loadDocker(_ dir: String, _ label: String) throws(StoreError) -> [Loaded] {
        let entries = try json([OCI.DockerArchiveEntry].self, "\(dir)/manifest.json", label)
        guard !entries.isEmpty else { throw StoreError(.invalidInput, "\(label): manifest.json lists no image") }
        var out: [Loaded] = []
        for m in entries {
            let cfgName = m.Config, layerNames = m.Layers
            let cfgPath = try inside(dir, cfgName, label)
            guard let config = FileManager.default.contents(atPath: cfgPath) else { throw StoreError(.invalidInput, "\(label): missing \(cfgName)") }
            let id = Digest.of(config)
            let named = (cfgName as NSString).lastPathComponent.replacingOccurrences(of: ".json", with: "")
            if named.count == 64 && Digest.hex(id) != named {
                throw StoreError(.corrupt, "\(label): config \(cfgName) does not match its digest (got \(id))")
            }
            let paths = try layerNames.map { (n: String) throws(StoreError) -> String in try inside(dir, n, label) }
            out.append(try register(config: config, id: id, layerFiles: paths, blobDigests: nil,
                                    tags: m.RepoTags ?? [], label: label))
        }
        return out
    }

    func loadOCI(_ dir: String, _ label: String) throws(StoreError) -> [Loaded] {
        let manifests = try json(OCI.Index.self, "\(dir)/index.json", label).manifests
        guard !manifests.isEmpty else { throw StoreError(.invalidInput, "\(label): index.json lists no manifest") }
        func blob(_ d: String) throws(StoreError) -> String {
            guard Digest.isValid(d) else { throw StoreError(.invalidInput, "\(label): bad digest '\(d)'") }
            return "\(dir)/blobs/sha256/\(Digest.hex(d))"
        }
        func verified(_ d: String) throws(StoreError) -> Data {
            let p = try blob(d)
            guard let data = FileManager.default.contents(atPath: p) else { throw StoreError(.invalidInput, "\(label): missing blob \(d)") }
            if Digest.of(data) != d { throw StoreError(.corrupt, "\(label): blob \(d) does not match its digest") }
            return data
        }
        var out: [Loaded] = []
        for desc in manifests {
            let md = desc.digest
            let mdata = try verified(md)
            let manifest = try OCI.decode(OCI.Manifest.self, mdata, "\(label): manifest \(md)")
            let cfg = manifest.config.digest
            let config = try verified(cfg)
            let digests = manifest.layers.map(\.digest)
            var tags: [String] = []
            if let ann = desc.annotations {
                if let name = ann["io.containerd.image.name"] { tags.append(name) }
                else if let ref = ann["org.opencontainers.image.ref.name"] { tags.append(ref.contains(":") || ref.contains("/") ? ref : "localhost/image:\(ref)") }
            }
            let files = try digests.map { (d: String) throws(StoreError) -> String in try blob(d) }
            out.append(try register(config: config, id: cfg, layerFiles: files, blobDigests: digests, tags: tags, label: label))
        }
        return out
    }

    /// Checks each layer against the config's diff IDs (and its blob digest
    /// for OCI), unpacks what is missing (several layers at once: unpacking
    /// is most of a load's time, and layers do not depend on each other on
    /// disk), then records them bottom first.
    func register(config: Data, id: String, layerFiles: [String], blobDigests: [String]?, tags: [String], label: String) throws(StoreError) -> Loaded {
        // Which layers are missing is only true while no other command adds
        // or removes layers: the whole registration holds the store's lock.
        try store.exclusively { () throws(StoreError) -> Loaded in
            try registerLocked(config: config, id: id, layerFiles: layerFiles, blobDigests: blobDigests, tags: tags, label: label)
        }
    }

    private func registerLocked(config: Data, id: String, layerFiles: [String], blobDigests: [String]?, tags: [String],
                                label: String) throws(StoreError) -> Loaded {
        let diffIDs = try OCI.decode(OCI.ImageConfig.self, config, "\(label): image config").diffIDs
        if diffIDs.count != layerFiles.count {
            throw StoreError(.invalidInput, "\(label): config lists \(diffIDs.count) layers, the manifest \(layerFiles.count)")
        }
        let chain = Digest.chainIDs(diffIDs)
        var wanted: [Int] = []
        for i in chain.indices {
            if try store.layer(chain[i]) != nil { progress("layer \(Digest.hex(diffIDs[i]).prefix(12)): already present") }
            else if !wanted.contains(where: { chain[$0] == chain[i] }) { wanted.append(i) }
        }
        let missing = wanted
        let results = Locked([Int: Result<Store.UnpackedLayer, StoreError>]())
        let say = Locked(progress)
        // A btrfs layer is a snapshot of its parent's: one after another.
        let workers = store.layout == .btrfs ? min(missing.count, 1)
            : min(missing.count, max(1, min(4, ProcessInfo.processInfo.activeProcessorCount)))
        let next = Locked(0)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let k: Int? = next.withLock { n in
                    defer { n += 1 }
                    return n < missing.count ? n : nil
                }
                guard let k else { return }
                let i = missing[k]
                let r = Result { () throws(StoreError) -> Store.UnpackedLayer in
                    try unpack(i, file: layerFiles[i], diffID: diffIDs[i], chainID: chain[i], parent: i > 0 ? chain[i - 1] : nil,
                               blob: blobDigests?[i], movable: ownsFiles && layerFiles.filter { $0 == layerFiles[i] }.count == 1,
                               label: label)
                }
                results.withLock { $0[i] = r }
                if case .success(let u) = r {
                    say.withLock {
                        $0("layer \(Digest.hex(u.diffID).prefix(12)): unpacked, \(u.stats.entries) entries")
                        if let w = u.stats.warning { $0("warning: layer \(Digest.hex(u.diffID).prefix(12)): \(w)") }
                    }
                }
            }
        }
        let done = results.withLock { $0 }
        if let failed = missing.first(where: { if case .failure = done[$0] { return true } else { return false } }),
           case .failure(let e) = done[failed] {
            for i in missing { if case .success = done[i] { store.discardUnpacked(chain[i]) } }
            throw e
        }
        killPoint("load-unpacked")
        var added = 0
        for i in missing {
            guard case .success(let u) = done[i] else { continue }
            do throws(StoreError) { try store.record(u, parent: store.recordableParent(chain, i), progress: progress) } catch {
                for j in missing where j >= i { store.discardUnpacked(chain[j]) }
                throw error
            }
            added += 1
        }
        killPoint("load-recorded")
        try store.addImage(id: id, config: config, chainIDs: chain, tags: tags)
        progress("loaded image \(Digest.hex(id).prefix(12)) \(tags.joined(separator: " "))")
        return Loaded(id: id, tags: tags, newLayers: added, layers: chain.count)
    }

    /// One layer file checked (blob digest, then diff ID) and unpacked.
    /// The uncompressed tar is what the store keeps; a file that is ours and
    /// named once moves there instead of being copied.
    func unpack(_ i: Int, file: String, diffID: String, chainID: String, parent: String?, blob: String?, movable: Bool,
                label: String) throws(StoreError) -> Store.UnpackedLayer {
        let stored: String
        if let known = verifiedDigests[file] { stored = known } else { stored = try Digest.ofFile(file) }
        if let blob, stored != blob {
            throw StoreError(.corrupt, "\(label): layer blob \(blob) does not match its digest")
        }
        if stored != diffID {
            // Compressed: decompressed once, hashed, kept and applied in one pass.
            let (u, diff) = try store.unpackCompressedLayer(blob: file, diffID: diffID, chainID: chainID, parent: parent)
            if diff != diffID {
                store.discardUnpacked(chainID)
                throw StoreError(.corrupt, "\(label): layer \(i + 1) has diff ID \(diff), the config says \(diffID)")
            }
            return u
        }
        let plain = store.scratch("layer", suffix: ".tar")
        defer { unlink(plain) }
        if !(movable && rename(file, plain) == 0) {
            do { try FileManager.default.copyItem(atPath: file, toPath: plain) } catch {
                throw StoreError(.archive, "\(label): copying layer \(i + 1): \(error)")
            }
        }
        return try store.unpackLayer(archive: plain, diffID: diffID, chainID: chainID, keepArchive: true, parent: parent)
    }
}
