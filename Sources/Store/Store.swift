import Archive
import Foundation
import GRDB
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The layer store, laid out like Docker's overlay2 so that the same tools
/// read it: `overlay/<id>/{diff,link,lower,work,merged}`, short links
/// `overlay/l/<26 chars> -> ../<id>/diff` so that long lowerdir lists fit in
/// one mount call, and `lower` naming the layers below, top first.
public final class Store: @unchecked Sendable {
    public let root: String
    /// Overlay or btrfs, fixed when the store was created (StoreLayout.swift).
    public let layout: Layout
    let db: StoreDatabase
    let lock: StoreLock
    var overlayDir: String { "\(root)/overlay" }

    /// A pull's resume directory, named by what is pulled: a second pull of
    /// the same manifest continues there.
    public func pullDirectory(_ key: String) -> String { "\(root)/tmp/pull-\(key)" }

    /// The default root: /var/lib/strata for root, else $XDG_DATA_HOME/strata.
    public static var defaultRoot: String {
        let env = ProcessInfo.processInfo.environment
        if let r = env["STRATA_ROOT"], !r.isEmpty { return r }
        if geteuid() == 0 { return "/var/lib/strata" }
        let data = env["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(env["HOME"] ?? "/tmp")/.local/share"
        return "\(data)/strata"
    }

    /// Opens (creating) the store at `root`. A command killed while it
    /// changed the store left an intent: unless `recovering` is false (what
    /// `strata check` asks, to report the store as it found it), what it
    /// half-made is undone here, before anything else reads the store.
    /// `driver`: the storage driver the user named, if any: it chooses a
    /// new store's layout, and one naming another than an existing store's
    /// is refused.
    public init(root: String, recovering: Bool = true, driver: Driver? = nil) throws(StoreError) {
        // Absolute: mounts run with the layer directory as their working
        // directory, where a relative root would name nothing.
        let root = root.hasPrefix("/") ? root : FileManager.default.currentDirectoryPath + "/" + root
        self.root = root
        let existed = access(root, F_OK) == 0
        do { try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw StoreError.last("cannot create the store at \(root)")
        }
        do { layout = try Self.settleLayout(root: root, requested: driver) } catch {
            // A refused new store leaves nothing behind.
            if !existed { rmdir(root) }
            throw error
        }
        for d in Self.directories(root, layout) {
            if mkdir(d, 0o700) != 0 && errno != EEXIST { throw StoreError.last("cannot create \(d)") }
        }
        // Each layer is a tree of its own: ext4 then spreads layers over block
        // groups instead of packing them beside their siblings, where a
        // group full of just-deleted inodes makes every create scan them
        // (journal-less ext4 skips inodes deleted in the last minutes).
        // Best effort: other filesystems do not have the flag.
        if layout == .overlay, let od = try? Sys.open("\(root)/overlay", O_RDONLY | O_DIRECTORY | O_CLOEXEC) { Sys.markTopDirectory(od.raw) }
        lock = try StoreLock(root: root)
        do { db = try StoreDatabase(path: "\(root)/strata.db") } catch {
            throw StoreError(.database, "store database \(root)/strata.db: \(error)")
        }
        // Migrations only when some are missing, and then under the lock;
        // a current store is opened without waiting for anyone. (SQLite
        // rolls back a migration that was killed: no intent needed.)
        // A store another command is creating this instant can fail the
        // lock-free check ("no such table: grdb_migrations" while its first
        // transaction commits): that counts as not current, and the locked
        // path below, which waits for that command, gives the real answer.
        let current = (try? db.isCurrent()) ?? false
        if !current {
            try lock.exclusively(recovering: false) { () throws(StoreError) in
                do { try db.migrate() } catch { throw StoreError(.database, "store database \(root)/strata.db: \(error)") }
            }
        }
        lock.recover = { [unowned self] in self.recoverInterrupted() }
        if recovering && !lock.interrupted.isEmpty { lock.recoverIfFree() }
    }

    /// Runs `body` holding the store's lock (see `StoreLock`).
    public func exclusively<R>(_ body: () throws(StoreError) -> R) throws(StoreError) -> R {
        try lock.exclusively(body)
    }

    static func shortLink() -> String {
        let chars = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        return String((0..<26).map { _ in chars[Int.random(in: 0..<chars.count)] })
    }

    public struct LayerRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "layer"
        public var id: String, diffID: String, parent: String?, link: String, size: Int64, created: Double
    }

    /// Every recorded layer's chain ID.
    public func allLayerIDs() throws(StoreError) -> [String] {
        do { return try db.queue.read { db in try String.fetchAll(db, sql: "SELECT id FROM layer ORDER BY id") } } catch {
            throw StoreError(.database, "reading layers: \(error)")
        }
    }

    public func layer(_ id: String) throws(StoreError) -> LayerRecord? {
        do { return try db.queue.read { try LayerRecord.fetchOne($0, key: id) } } catch { throw StoreError(wrapping: error) }
    }

    /// Registers a layer from its archive unless present: applied into
    /// `overlay/<chain id>/diff`, then recorded in one transaction.
    /// With `keepArchive` the (uncompressed) archive is moved into the layer
    /// as `layer.tar`, so that `image save` gives back the exact bytes its
    /// diff ID names.
    @discardableResult
    public func addLayer(archive: String, diffID: String, chainID: String, parent: String?, keepArchive: Bool = false,
                         progress: (String) -> Void = { _ in }) throws(StoreError) -> Bool {
        if try layer(chainID) != nil { return false }
        let u = try unpackLayer(archive: archive, diffID: diffID, chainID: chainID, keepArchive: keepArchive, parent: parent)
        try record(u, parent: parent, progress: progress)
        return true
    }

    /// A layer applied on disk but not yet recorded: nothing uses it, and an
    /// interrupted load leaves only a directory the next attempt removes.
    public struct UnpackedLayer: Sendable {
        public let diffID: String, chainID: String
        public let stats: LayerApplier.Stats
    }

    /// The slow half of adding a layer, safe to run for several layers at
    /// once on an overlay store: it touches only the layer's own directory.
    /// A btrfs store applies the layer onto a snapshot of its `parent`'s
    /// subvolume, which must be whole first: one layer after another.
    public func unpackLayer(archive: String, diffID: String, chainID: String, keepArchive: Bool,
                            parent: String? = nil) throws(StoreError) -> UnpackedLayer {
        let d = try freshLayerDir(chainID)
        let stats: LayerApplier.Stats
        do {
            stats = layout == .btrfs ? try applySubvolume(chainID, parent: parent, file: archive, label: "layer \(diffID)")
                : try LayerApplier().apply(file: archive, to: "\(d)/diff")
        } catch {
            discardUnpacked(chainID)
            throw StoreError(.archive, "layer \(diffID): \(error)")
        }
        if keepArchive && rename(archive, "\(d)/layer.tar") != 0 {
            discardUnpacked(chainID)
            throw StoreError.last("keeping layer \(diffID)")
        }
        return UnpackedLayer(diffID: diffID, chainID: chainID, stats: stats)
    }

    /// A compressed layer blob unpacked in one pass: a thread decompresses
    /// it (hashing the tar and keeping it as `layer.tar`) into a pipe that
    /// the applier reads, instead of writing the tar out and reading it back.
    /// Returns the layer and the tar's digest, which the caller checks
    /// against the diff ID (discarding the layer when it differs).
    public func unpackCompressedLayer(blob: String, diffID: String, chainID: String,
                                      parent: String? = nil) throws(StoreError) -> (UnpackedLayer, String) {
        let d = try freshLayerDir(chainID)
        var p: DescriptorPair
        do throws(Errno) { p = try Sys.pipe() } catch {
            discardUnpacked(chainID)
            throw StoreError(.io, "unpacking layer \(diffID) (\(blob)): pipe: \(error)")
        }
        // The applier may stop early (a hostile entry): the decompressor then
        // gets EPIPE, not a signal that would end the process.
        signal(SIGPIPE, SIG_IGN)
        // The writing end goes to the decompressing thread, its owner from
        // then on: it closes it when done, and the reader sees the end.
        let writeEnd = p.write.release().take()
        let reader = p.read.release()
        let readEnd = reader.raw
        let result = Locked<Result<String, StoreError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let plain = "\(d)/layer.tar"
        let t = Thread {
            let writer = UniqueFD(taking: writeEnd)
            let r = Result { () throws(StoreError) -> String in try Digest.ofUncompressed(blob, copy: plain, alsoTo: writer.raw) }
            _ = consume writer
            result.withLock { $0 = r }
            done.signal()
        }
        t.start()
        var applied: Result<LayerApplier.Stats, StoreError>
        var appliedTruncated = false
        do {
            applied = .success(layout == .btrfs ? try applySubvolume(chainID, parent: parent, fd: readEnd, label: "layer \(diffID)")
                : try LayerApplier().apply(fd: readEnd, to: "\(d)/diff", label: "layer \(diffID)"))
        } catch {
            applied = .failure(StoreError(.archive, "layer \(diffID): \(error)"))
            appliedTruncated = error.kind == .truncated
        }
        if case .success = applied {
            // The end-of-archive blocks the tar reader did not need.
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while buf.withUnsafeMutableBytes({ read(readEnd, $0.baseAddress, $0.count) }) > 0 {}
        }
        _ = consume reader
        done.wait()
        let digest = result.withLock { $0 } ?? .failure(StoreError(.archive, "decompressing layer \(diffID): no result"))
        do {
            let stats = try applied.get()
            let diff = try digest.get()
            return (UnpackedLayer(diffID: diffID, chainID: chainID, stats: stats), diff)
        } catch {
            discardUnpacked(chainID)
            // A decompression error explains an applier's "truncated archive";
            // any other refusal is the applier's own, and the decompressor's
            // error is only the broken pipe it left.
            if case .failure(let e) = digest, appliedTruncated || (try? applied.get()) != nil { throw e }
            throw error
        }
    }

    /// An empty directory for a layer about to be unpacked; whatever an
    /// interrupted load left there (never recorded, so never used) goes first.
    func freshLayerDir(_ chainID: String) throws(StoreError) -> String {
        let d = storedLayer(chainID).directory
        discardUnpacked(chainID)
        if mkdir(d, 0o700) != 0 { throw StoreError.last("\(d)") }
        return d
    }

    /// Removes a layer directory that was never recorded.
    public func discardUnpacked(_ chainID: String) {
        storedLayer(chainID).removeFiles()
    }

    /// The quick half: the short link, the `lower` file and the database row.
    public func record(_ u: UnpackedLayer, parent: String?, progress: (String) -> Void = { _ in }) throws(StoreError) {
        let layer = storedLayer(u.chainID)
        if layout == .btrfs {
            // A subvolume holds the layers below it: no links to name them.
            if let parent, try self.layer(parent) == nil {
                throw StoreError(.notFound, "layer \(Digest.hex(u.diffID).prefix(12)): its parent \(parent) is not in the store")
            }
            try insert(LayerRecord(id: u.chainID, diffID: u.diffID, parent: parent, link: "", size: u.stats.bytes, created: Date().timeIntervalSince1970))
            progress("layer \(Digest.hex(u.diffID).prefix(12)): \(u.stats.entries) entries, \(u.stats.bytes) bytes")
            return
        }
        // A layer is recorded only when its links are all in place: a row
        // without them would mount without its lower layers. What is left
        // after a failure is unnamed, and `strata check --repair` removes it.
        var below: [String] = []
        if let parent {
            guard let pr = try self.layer(parent) else {
                throw StoreError(.notFound, "layer \(Digest.hex(u.diffID).prefix(12)): its parent \(parent) is not in the store")
            }
            let p = storedLayer(parent)
            let further = try p.lowers()
            if pr.parent != nil && further.isEmpty {
                throw StoreError(.corrupt, "layer \(Digest.hex(u.diffID).prefix(12)): its parent's lower file \(p.directory)/lower is missing (see 'strata check')")
            }
            below = [try p.shortLower()] + further
        }
        try layer.link(below: below)
        killPoint("layer-links")
        guard let link = try? String(contentsOfFile: "\(layer.directory)/link", encoding: .utf8) else {
            throw StoreError.last("\(layer.directory)/link")
        }
        try insert(LayerRecord(id: u.chainID, diffID: u.diffID, parent: parent, link: link, size: u.stats.bytes, created: Date().timeIntervalSince1970))
        progress("layer \(Digest.hex(u.diffID).prefix(12)): \(u.stats.entries) entries, \(u.stats.bytes) bytes")
    }

    private func insert(_ rec: LayerRecord) throws(StoreError) {
        do { try db.queue.write { try rec.insert($0) } } catch { throw StoreError(.database, "recording layer \(rec.id): \(error)") }
    }

    /// Whether a layer's row names the layers below it: a bottom layer
    /// (its chain ID is its diff ID), or one with a parent.
    func isAttached(_ r: LayerRecord) -> Bool { r.parent != nil || r.id == r.diffID }

    /// The parent to record for layer `i` of `chain` when only some of the
    /// chain is in the store: the layer below if it is here and itself
    /// attached, else none. The snapshotter and the layer store pull one
    /// layer lazily over layers that containerd or containers/storage
    /// applied themselves, which the store does not hold: such a layer is
    /// recorded on its own, and attached when an image names its chain.
    public func recordableParent(_ chain: [String], _ i: Int) -> String? {
        guard i > 0, let r = try? layer(chain[i - 1]), isAttached(r) else { return nil }
        return r.id
    }

    /// Gives every layer of `chain` (bottom first, all in the store) the
    /// parent the chain names, where it was recorded on its own: its
    /// `lower` file and its row then name the layers below, as if it had
    /// been pulled with them. Bottom first, so each parent is attached
    /// before the layer above it reads its `lower` file.
    func attachLayers(_ chain: [String]) throws(StoreError) {
        // A btrfs layer is made from its parent's subvolume: never alone.
        if layout == .btrfs { return }
        for (i, id) in chain.enumerated() {
            guard var r = try layer(id) else { continue }
            let parent = i > 0 ? chain[i - 1] : nil
            if r.parent == parent { continue }
            guard let parent, let p = try layer(parent) else { continue }
            let pl = storedLayer(parent)
            let below = [try pl.shortLower()] + (p.parent == nil ? [] : try pl.lowers())
            let l = storedLayer(id)
            do { try below.joined(separator: ":").write(toFile: "\(l.directory)/lower", atomically: true, encoding: .utf8) } catch {
                throw StoreError(.io, "layer \(id): writing \(l.directory)/lower: \(error.localizedDescription)")
            }
            r.parent = parent
            do { try db.queue.write { try r.update($0) } } catch { throw StoreError(.database, "layer \(id): recording its parent: \(error)") }
        }
    }

    /// Notes that `registry/repository` holds the blob `digest`. A failure
    /// is thrown, not swallowed: the caller says it (the pull or push itself
    /// has succeeded; only a later push's cross-repository mount is lost).
    public func recordBlobSource(_ digest: String, registry: String, repository: String) throws(StoreError) {
        do {
            try db.queue.write { db in
                try db.execute(sql: "INSERT OR IGNORE INTO blob_source (digest, registry, repository) VALUES (?, ?, ?)",
                               arguments: [digest, registry, repository])
            }
        } catch { throw StoreError(wrapping: error) }
    }

    /// Repositories of `registry` known to hold `digest`.
    public func blobSources(_ digest: String, registry: String) throws(StoreError) -> [String] {
        do {
            return try db.queue.read { db in
                try String.fetchAll(db, sql: "SELECT repository FROM blob_source WHERE digest = ? AND registry = ? ORDER BY repository",
                                    arguments: [digest, registry])
            }
        } catch { throw StoreError(wrapping: error) }
    }

    public struct ImageRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "image"
        public var id: String, config: Data, layers: String, created: Double
        /// Its layers, bottom first; checked when the record is read
        /// (`image`, `images`), so a record in hand always has them.
        public var layerIDs: [String] { (try? JSONDecoder().decode([String].self, from: Data(layers.utf8))) ?? [] }

        func checked() throws(StoreError) -> ImageRecord {
            guard (try? JSONDecoder().decode([String].self, from: Data(layers.utf8))) != nil else {
                throw StoreError(.corrupt, "image \(id): its layer list in the store database is unreadable (see 'strata check')")
            }
            return self
        }
    }

    struct TagRecord: Codable, FetchableRecord, PersistableRecord {
        static let databaseTableName = "tag"
        var name: String, image: String
    }

    public func addImage(id: String, config: Data, chainIDs: [String], tags: [String]) throws(StoreError) {
        try attachLayers(chainIDs)
        let layers: String
        do { layers = String(decoding: try JSONEncoder().encode(chainIDs), as: UTF8.self) } catch {
            throw StoreError(.io, "recording image \(id): \(error)")
        }
        let rec = ImageRecord(id: id, config: config, layers: layers, created: Date().timeIntervalSince1970)
        do {
            try db.queue.write { db in
                try rec.save(db)
                for t in tags { try TagRecord(name: t, image: id).save(db) }
            }
        } catch { throw StoreError(.database, "recording image \(id): \(error)") }
    }

    public func images() throws(StoreError) -> [(ImageRecord, [String])] {
        let all: [(ImageRecord, [String])]
        do {
            all = try db.queue.read { db in
                try ImageRecord.fetchAll(db).map { img in
                    (img, try TagRecord.filter(Column("image") == img.id).fetchAll(db).map(\.name).sorted())
                }
            }
        } catch { throw StoreError(wrapping: error) }
        return try all.map { (img, tags) throws(StoreError) in (try img.checked(), tags) }
    }

    /// An image by tag (`name:tag`, `:latest` implied), full or short ID.
    public func image(_ ref: String) throws(StoreError) -> ImageRecord {
        do {
            let found = try db.queue.read { db -> ImageRecord? in
                let tag = ref.contains(":") && !ref.hasPrefix("sha256:") ? ref : ref + ":latest"
                // A short name finds a local image as podman does (localhost/NAME).
                if let t = try TagRecord.fetchOne(db, key: tag) ?? TagRecord.fetchOne(db, key: ref)
                    ?? TagRecord.fetchOne(db, key: "localhost/" + tag) {
                    return try ImageRecord.fetchOne(db, key: t.image)
                }
                let hex = Digest.hex(ref)
                guard hex.count >= 6 else { return nil }
                return try ImageRecord.filter(sql: "id LIKE ?", arguments: ["sha256:\(hex)%"]).fetchOne(db)
            }
            guard let img = found else { throw StoreError(.notFound, "no image '\(ref)' (see 'strata image ls')") }
            return try img.checked()
        } catch let e as StoreError { throw e } catch { throw StoreError(wrapping: error) }
    }
}
