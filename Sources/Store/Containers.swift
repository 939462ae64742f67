import Foundation
import GRDB
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Containers: a thin writable layer over an image's layers, with Docker's
/// `-init` layer under it (placeholders for /etc/hosts, /etc/hostname and
/// /etc/resolv.conf); nothing of the image is copied.
extension Store {
    public struct ContainerRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
        public static let databaseTableName = "container"
        public var id: String, name: String, image: String, created: Double
    }

    public enum Driver: String, Sendable, CaseIterable {
        case overlay   // the kernel's overlayfs
        case fuse      // Strata's own FUSE mount
        case btrfs     // a bind mount of the container's subvolume (a btrfs store)
    }

    public func create(image ref: String, name: String?) throws(StoreError) -> ContainerRecord {
        try exclusively { () throws(StoreError) -> ContainerRecord in try createLocked(image: ref, name: name) }
    }

    private func createLocked(image ref: String, name: String?) throws(StoreError) -> ContainerRecord {
        let img = try image(ref)
        let id = Digest.hex(Digest.of(string: "\(img.id) \(UUID().uuidString)"))
        let cname = name ?? "strata-\(id.prefix(12))"
        if cname.isEmpty || cname.contains("/") || cname.hasPrefix(".") { throw StoreError(.invalidInput, "bad container name '\(cname)'") }
        if try findContainer(cname) != nil { throw StoreError(.conflict, "a container named '\(cname)' exists already") }
        for l in img.layerIDs where try layer(l) == nil { throw StoreError(.notFound, "image \(ref) lacks layer \(l); load it again") }
        if layout == .btrfs { return try createOnBtrfs(img, id: id, name: cname) }
        // The init layer, then the container layer, both over the image's:
        // two layers of the store, made and named as an image's are.
        var below: [String] = []
        for l in img.layerIDs.reversed() { below.append(try storedLayer(l).shortLower()) }
        let initLayer = storedLayer("\(id)-init"), cLayer = storedLayer(id)
        do {
            for d in [initLayer.directory, initLayer.diff, "\(initLayer.diff)/etc", initLayer.work,
                      cLayer.directory, cLayer.diff, cLayer.work, cLayer.merged] {
                try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: false)
            }
            for f in ["hosts", "hostname", "resolv.conf"] {
                FileManager.default.createFile(atPath: "\(initLayer.diff)/etc/\(f)", contents: Data(), attributes: [.posixPermissions: 0o644])
            }
            try initLayer.link(below: below)
            try cLayer.link(below: [try initLayer.shortLower()] + below)
            killPoint("create-dirs")
            let rec = ContainerRecord(id: id, name: cname, image: img.id, created: Date().timeIntervalSince1970)
            try db.queue.write { try rec.insert($0) }
            return rec
        } catch {
            for l in [initLayer, cLayer] { l.removeFiles() }
            throw StoreError(.archive, "creating container: \(error)")
        }
    }

    /// The container named `ref` (or whose ID starts with it, 6+ characters).
    public func container(_ ref: String) throws(StoreError) -> ContainerRecord {
        guard let c = try findContainer(ref) else { throw StoreError(.notFound, "no container '\(ref)' (see 'strata ls')") }
        return c
    }

    /// The same, nil when there is none (inspect falls back to images).
    public func findContainer(_ ref: String) throws(StoreError) -> ContainerRecord? {
        do {
            return try db.queue.read { db in
                try ContainerRecord.filter(Column("name") == ref).fetchOne(db)
                    ?? (ref.count >= 6 ? ContainerRecord.filter(sql: "id LIKE ?", arguments: ["\(ref)%"]).fetchOne(db) : nil)
            }
        } catch { throw StoreError(wrapping: error) }
    }

    public func containers() throws(StoreError) -> [ContainerRecord] {
        do { return try db.queue.read { try ContainerRecord.order(Column("created")).fetchAll($0) } } catch { throw StoreError(wrapping: error) }
    }

    /// The container's own (writable) layer; its `-init` layer is below it.
    public func containerLayer(_ c: ContainerRecord) -> StoredLayer { storedLayer(c.id) }

    public func mergedPath(_ c: ContainerRecord) -> String { containerLayer(c).merged }

    /// The overlay options, with short relative lower links: valid with the
    /// store's overlay directory as the working directory.
    func mountOptions(_ c: ContainerRecord) throws(StoreError) -> String {
        let l = containerLayer(c)
        let lower = try l.lowers()
        if lower.isEmpty { throw StoreError(.corrupt, "container \(c.name): missing lower file \(l.directory)/lower (see 'strata check')") }
        return "lowerdir=\(lower.joined(separator: ":")),upperdir=\(l.name)/diff,workdir=\(l.name)/work"
    }

    /// How to mount a container's root, as containerd's snapshotters say it:
    /// the store describes the mount; the caller (here `mountLocked`) makes
    /// it. Paths in `options` are relative to `workingDirectory` (short
    /// lower links keep long stacks within the kernel's one page of options).
    public struct MountDescription: Sendable, Equatable {
        public let type: String
        public let options: String
        public let workingDirectory: String
        public let target: String
    }

    public func mountDescription(_ c: ContainerRecord, driver: Driver) throws(StoreError) -> MountDescription {
        if layout == .btrfs {
            return MountDescription(type: "bind", options: "bind", workingDirectory: root, target: mergedPath(c))
        }
        return MountDescription(type: driver == .overlay ? "overlay" : "fuse.strata", options: try mountOptions(c),
                         workingDirectory: overlayDir, target: mergedPath(c))
    }

    /// Mounts the container's root and returns the merged path.
    /// `explicitDriver`: the user named the driver. A container of a partly
    /// pulled image (`pull --lazy`) mounts through Strata's union whatever the
    /// default, since the kernel's cannot fetch files; naming the kernel's
    /// driver for one is refused.
    /// `fuseOptions`: more options for Strata's union (`lazy_fetch=on_read`).
    public func mount(_ c: ContainerRecord, driver: Driver, strataBinary: String, explicitDriver: Bool = false,
                      fuseOptions: [String] = []) throws(StoreError) -> String {
        try exclusively { () throws(StoreError) -> String in
            // Removed while this command waited for the lock?
            guard try findContainer(c.id) != nil else { throw StoreError(.notFound, "no container '\(c.name)' (see 'strata ls')") }
            var driver = driver
            if driver.layout != layout {
                // The store's own driver, unless the user named another.
                if explicitDriver || driver == .btrfs {
                    throw StoreError(.invalidInput, "the store at \(root) uses the \(layout.rawValue) storage driver: "
                        + "its containers cannot be mounted with \(driver.rawValue) (drop --driver, or use a store made with it)")
                }
                driver = .btrfs
            }
            if driver == .overlay, let img = try? image(c.image), !lazyLayers(of: img).isEmpty {
                if explicitDriver {
                    throw StoreError(.invalidInput, "the image of \(c.name) is partly pulled (strata pull --lazy), which the kernel's overlayfs cannot serve: "
                        + "mount it with --driver fuse, or complete it first with 'strata pull'")
                }
                driver = .fuse
            }
            return try mountLocked(c, driver: driver, strataBinary: strataBinary, fuseOptions: fuseOptions)
        }
    }

    private func mountLocked(_ c: ContainerRecord, driver: Driver, strataBinary: String, fuseOptions: [String] = []) throws(StoreError) -> String {
        let merged = mergedPath(c)
        if Sys.isMountRoot(merged) { return merged }
        let m = try mountDescription(c, driver: driver)
        let status: Int32
        do {
            switch driver {
            case .overlay:
                status = try Spawn.run("/bin/mount", ["mount", "-t", m.type, "overlay", "-o", m.options, m.target], cwd: m.workingDirectory)
            case .fuse:
                status = try Spawn.run(strataBinary, ["strata", "mount", "-o", ([m.options] + fuseOptions).joined(separator: ","), m.target],
                                       cwd: m.workingDirectory)
            case .btrfs:
                return try mountOnBtrfs(c)
            }
        } catch { throw StoreError(.mount, "mount: \(error)") }
        if status != 0 { throw StoreError(.mount, "mounting container \(c.name) with the \(driver.rawValue) driver failed (exit \(status))") }
        return merged
    }

    public func unmount(_ c: ContainerRecord) throws(StoreError) {
        let merged = mergedPath(c)
        guard Sys.isMountRoot(merged) else { return }
        if umount2(merged, 0) != 0 && umount2(merged, Int32(MNT_DETACH)) != 0 { throw StoreError.last("umount \(merged)") }
    }

    public func remove(_ c: ContainerRecord) throws(StoreError) {
        try exclusively { () throws(StoreError) in try removeLocked(c) }
    }

    private func removeLocked(_ c: ContainerRecord) throws(StoreError) {
        guard try findContainer(c.id) != nil else { throw StoreError(.notFound, "no container '\(c.name)' (see 'strata ls')") }
        if layout == .btrfs { try releaseOnBtrfs(c) } else { try unmount(c) }
        // The row first: a command killed after it leaves only directories no
        // row names, which the next command removes; never a row without them.
        do { _ = try db.queue.write { try ContainerRecord.deleteOne($0, key: c.id) } } catch { throw StoreError(wrapping: error) }
        killPoint("rm-row")
        for l in [storedLayer(c.id), storedLayer("\(c.id)-init")] { l.removeFiles() }
    }
}

