import Archive
import Foundation
import GRDB
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The layer store, laid out like Docker's overlay2 so that the same tools
/// read it: `overlay/<id>/{diff,link,lower,work,merged}`, short links
/// `overlay/l/<26 chars> -> ../<id>/diff` so that long lowerdir lists fit in
/// one mount call, and `lower` naming the layers below, top first.
public final class Store: @unchecked Sendable {
    public let root: String
    let db: StoreDatabase
    var overlayDir: String { "\(root)/overlay" }

    /// The default root: /var/lib/strata for root, else $XDG_DATA_HOME/strata.
    public static var defaultRoot: String {
        let env = ProcessInfo.processInfo.environment
        if let r = env["STRATA_ROOT"], !r.isEmpty { return r }
        if geteuid() == 0 { return "/var/lib/strata" }
        let data = env["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(env["HOME"] ?? "/tmp")/.local/share"
        return "\(data)/strata"
    }

    public init(root: String) throws(StoreError) {
        self.root = root
        do { try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw StoreError("cannot create the store at \(root): \(currentErrno())")
        }
        for d in ["\(root)/overlay", "\(root)/overlay/l", "\(root)/tmp"] {
            if mkdir(d, 0o700) != 0 && errno != EEXIST { throw StoreError("cannot create \(d): \(currentErrno())") }
        }
        do { db = try StoreDatabase(path: "\(root)/strata.db") } catch { throw StoreError("store database \(root)/strata.db: \(error)") }
    }

    func dir(_ id: String) -> String { "\(overlayDir)/\(Digest.hex(id))" }

    static func shortLink() -> String {
        let chars = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        return String((0..<26).map { _ in chars[Int.random(in: 0..<chars.count)] })
    }

    public struct LayerRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "layer"
        public var id: String, diffID: String, parent: String?, link: String, size: Int64, created: Double
    }

    public func layer(_ id: String) throws(StoreError) -> LayerRecord? {
        do { return try db.queue.read { try LayerRecord.fetchOne($0, key: id) } } catch { throw StoreError("\(error)") }
    }

    /// Registers a layer from its archive unless present: applied into
    /// `overlay/<chain id>/diff` (built aside and renamed into place), then
    /// recorded in one transaction.
    @discardableResult
    /// With `keepArchive` the (uncompressed) archive is moved into the layer
    /// as `layer.tar`, so that `image save` gives back the exact bytes its
    /// diff ID names.
    public func addLayer(archive: String, diffID: String, chainID: String, parent: String?, keepArchive: Bool = false,
                         progress: (String) -> Void = { _ in }) throws(StoreError) -> Bool {
        if try layer(chainID) != nil { return false }
        let d = dir(chainID)
        // Left by an interrupted load: never registered, so never used.
        _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", d])
        if mkdir(d, 0o700) != 0 { throw StoreError("\(d): \(currentErrno())") }
        let stats: LayerApplier.Stats
        do { stats = try LayerApplier().apply(file: archive, to: "\(d)/diff") } catch {
            _ = try? Spawn.run("/bin/rm", ["rm", "-rf", "--one-file-system", d])
            throw StoreError("layer \(diffID): \(error)")
        }
        if keepArchive && rename(archive, "\(d)/layer.tar") != 0 {
            throw StoreError("keeping layer \(diffID): \(currentErrno())")
        }
        let link = Self.shortLink()
        symlink("../\(Digest.hex(chainID))/diff", "\(overlayDir)/l/\(link)")
        try? link.write(toFile: "\(d)/link", atomically: true, encoding: .utf8)
        if let parent, let p = try layer(parent) {
            let below = [p.link] + ((try? String(contentsOfFile: "\(dir(parent))/lower", encoding: .utf8))?
                .split(separator: ":").map { String($0.dropFirst(2)) } ?? [])
            try? below.map { "l/\($0)" }.joined(separator: ":").write(toFile: "\(d)/lower", atomically: true, encoding: .utf8)
        }
        let rec = LayerRecord(id: chainID, diffID: diffID, parent: parent, link: link, size: stats.bytes, created: Date().timeIntervalSince1970)
        do { try db.queue.write { try rec.insert($0) } } catch { throw StoreError("recording layer \(chainID): \(error)") }
        progress("layer \(Digest.hex(diffID).prefix(12)): \(stats.entries) entries, \(stats.bytes) bytes")
        return true
    }

    public struct ImageRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "image"
        public var id: String, config: Data, layers: String, created: Double
        public var layerIDs: [String] { (try? JSONDecoder().decode([String].self, from: Data(layers.utf8))) ?? [] }
    }

    struct TagRecord: Codable, FetchableRecord, PersistableRecord {
        static let databaseTableName = "tag"
        var name: String, image: String
    }

    public func addImage(id: String, config: Data, chainIDs: [String], tags: [String]) throws(StoreError) {
        let layers = String(decoding: (try? JSONEncoder().encode(chainIDs)) ?? Data("[]".utf8), as: UTF8.self)
        let rec = ImageRecord(id: id, config: config, layers: layers, created: Date().timeIntervalSince1970)
        do {
            try db.queue.write { db in
                try rec.save(db)
                for t in tags { try TagRecord(name: t, image: id).save(db) }
            }
        } catch { throw StoreError("recording image \(id): \(error)") }
    }

    public func images() throws(StoreError) -> [(ImageRecord, [String])] {
        do {
            return try db.queue.read { db in
                try ImageRecord.fetchAll(db).map { img in
                    (img, try TagRecord.filter(Column("image") == img.id).fetchAll(db).map(\.name).sorted())
                }
            }
        } catch { throw StoreError("\(error)") }
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
            guard let img = found else { throw StoreError("no image '\(ref)' (see 'strata image ls')") }
            return img
        } catch let e as StoreError { throw e } catch { throw StoreError("\(error)") }
    }
}
