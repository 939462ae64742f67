import Foundation
import GRDB
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The store's face to containerd (its `snapshots` package): a snapshot is
/// active (writable, made by `prepare`), a view (read-only, `view`) or
/// committed (`commit` of an active one); it may have a committed parent
/// and carries labels; `mounts` describes how to mount it, and the caller
/// performs the mount. Each snapshot owns a directory
/// `snapshots/<number>/{fs,work}` (short numbers, as containerd's own
/// overlayfs snapshotter: a stack of a hundred lowerdirs fits in the one
/// page the kernel takes for mount options).
public struct SnapshotInfo: Sendable, Equatable {
    public enum Kind: String, Sendable { case view, active, committed }
    public var name: String
    public var parent: String?
    public var kind: Kind
    public var created: Date
    public var updated: Date
    public var labels: [String: String]

    /// Snapshots that another front end of the store made (the layer store
    /// for containers/storage) carry this label, naming it. containerd is
    /// not shown them: its garbage collector removes the backend's
    /// snapshots it did not make.
    public static let ownerLabel = "strata.io/owner"
    /// Whether containerd's snapshotter may list it.
    public var isContainerd: Bool { labels[Self.ownerLabel] == nil }

    public init(name: String, parent: String?, kind: Kind, created: Date, updated: Date, labels: [String: String]) {
        self.name = name
        self.parent = parent
        self.kind = kind
        self.created = created
        self.updated = updated
        self.labels = labels
    }
}

/// A mount as the snapshotter describes it, for the caller to perform.
public struct SnapshotMount: Sendable, Equatable {
    public var type: String
    public var source: String
    public var options: [String]
}

/// Why a snapshot call was refused, in the terms containerd's errdefs
/// uses (the gRPC front end maps them to status codes).
public struct SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case notFound, alreadyExists, failedPrecondition, invalidArgument, `internal` }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

extension Store {
    struct SnapshotRecord: Codable, FetchableRecord, PersistableRecord {
        static let databaseTableName = "snapshot"
        var name: String
        var number: Int64
        var parent: String?
        var kind: String
        var created: Double
        var updated: Double
        var labels: String          // JSON object
        /// Bytes and inodes of a committed snapshot, measured at commit.
        var size: Int64
        var inodes: Int64
        /// The store layer (chain ID) a committed snapshot shows, if any.
        var layer: String? = nil

        func info() -> SnapshotInfo {
            let l = (try? JSONDecoder().decode([String: String].self, from: Data(labels.utf8))) ?? [:]
            return SnapshotInfo(name: name, parent: parent, kind: SnapshotInfo.Kind(rawValue: kind) ?? .active,
                                created: Date(timeIntervalSince1970: created), updated: Date(timeIntervalSince1970: updated), labels: l)
        }
    }

    var snapshotsDir: String { "\(root)/snapshots" }
    func snapshotDir(_ number: Int64) -> String { "\(snapshotsDir)/\(number)" }

    static func encodeLabels(_ l: [String: String]) -> String {
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        return (try? e.encode(l)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    func snapshotRecord(_ name: String) throws(SnapshotError) -> SnapshotRecord {
        let r: SnapshotRecord?
        do { r = try db.queue.read { try SnapshotRecord.fetchOne($0, key: name) } } catch {
            throw SnapshotError(.internal, "snapshot \(name): \(error)")
        }
        guard let r else { throw SnapshotError(.notFound, "snapshot \(name) does not exist") }
        return r
    }

    /// The committed snapshots below `parent`, top first.
    func snapshotChain(_ parent: String?) throws(SnapshotError) -> [SnapshotRecord] {
        var out: [SnapshotRecord] = []
        var next = parent
        while let p = next {
            let r = try snapshotRecord(p)
            out.append(r)
            next = r.parent
            if out.count > 500 { throw SnapshotError(.internal, "snapshot \(parent ?? ""): a parent chain of over 500 (a loop?)") }
        }
        return out
    }

    /// Runs `body` under the store's lock, its store errors as internal ones.
    func snapshotsLocked<R>(_ body: () throws(SnapshotError) -> R) throws(SnapshotError) -> R {
        var result: Result<R, SnapshotError>?
        do {
            try exclusively { () throws(StoreError) in
                do throws(SnapshotError) { result = .success(try body()) } catch { result = .failure(error) }
            }
        } catch {
            throw SnapshotError(.internal, error.description)
        }
        guard let result else { throw SnapshotError(.internal, "snapshot call did not run") }
        return try result.get()
    }

    // MARK: the verbs

    /// An active snapshot `key` over the committed `parent` (nil: empty).
    public func prepareSnapshot(_ key: String, parent: String?, labels: [String: String] = [:]) throws(SnapshotError) -> [SnapshotMount] {
        try createSnapshot(key, parent: parent, labels: labels, kind: .active)
    }

    /// A read-only snapshot `key` of `parent`.
    public func viewSnapshot(_ key: String, parent: String?, labels: [String: String] = [:]) throws(SnapshotError) -> [SnapshotMount] {
        try createSnapshot(key, parent: parent, labels: labels, kind: .view)
    }

    private func createSnapshot(_ key: String, parent: String?, labels: [String: String], kind: SnapshotInfo.Kind) throws(SnapshotError) -> [SnapshotMount] {
        guard !key.isEmpty else { throw SnapshotError(.invalidArgument, "a snapshot needs a key") }
        let parent = parent.flatMap { $0.isEmpty ? nil : $0 }
        return try snapshotsLocked { () throws(SnapshotError) -> [SnapshotMount] in
            if (try? snapshotRecord(key)) != nil { throw SnapshotError(.alreadyExists, "snapshot \(key) already exists") }
            if let parent {
                let p = try snapshotRecord(parent)
                guard p.kind == SnapshotInfo.Kind.committed.rawValue else {
                    throw SnapshotError(.invalidArgument, "parent \(parent) is not a committed snapshot")
                }
            }
            if mkdir(snapshotsDir, 0o700) != 0 && errno != EEXIST { throw SnapshotError(.internal, "\(snapshotsDir): \(currentErrno())") }
            let now = Date().timeIntervalSince1970
            let number: Int64
            do {
                number = try db.queue.write { db -> Int64 in
                    let n = (try Int64.fetchOne(db, sql: "SELECT MAX(number) FROM snapshot") ?? 0) + 1
                    try SnapshotRecord(name: key, number: n, parent: parent, kind: kind.rawValue, created: now, updated: now,
                                       labels: Self.encodeLabels(labels), size: 0, inodes: 0).insert(db)
                    return n
                }
            } catch {
                throw SnapshotError(.internal, "snapshot \(key): \(error)")
            }
            // The record first, then the directories: a crash in between
            // leaves a record whose directory `cleanupSnapshots` and the
            // next mkdir below tolerate; a directory without a record is
            // what Cleanup removes.
            let d = snapshotDir(number)
            if layout == .btrfs {
                try makeSnapshotSubvolume(key, in: d, parent: parent, readOnly: kind == .view)
                return try mounts(of: snapshotRecord(key))
            }
            for sub in [d, "\(d)/fs", "\(d)/work"] where mkdir(sub, 0o755) != 0 && errno != EEXIST {
                let e = currentErrno()
                try? removeSnapshotRecord(key)
                throw SnapshotError(.internal, "snapshot \(key): \(sub): \(e)")
            }
            return try mounts(of: snapshotRecord(key))
        }
    }

    public func snapshotMounts(_ key: String) throws(SnapshotError) -> [SnapshotMount] {
        let r = try snapshotRecord(key)
        guard r.kind != SnapshotInfo.Kind.committed.rawValue else {
            throw SnapshotError(.failedPrecondition, "snapshot \(key) is committed: mount an active snapshot or a view of it")
        }
        return try mounts(of: r)
    }

    /// How to mount a snapshot: containerd's overlayfs snapshotter's
    /// answers, or the same layers through Strata's union (`fuse`).
    func mounts(of r: SnapshotRecord) throws(SnapshotError) -> [SnapshotMount] {
        // A btrfs snapshot is the whole tree: bound, as containerd's btrfs snapshotter answers.
        if layout == .btrfs {
            let active = r.kind == SnapshotInfo.Kind.active.rawValue
            return [SnapshotMount(type: "bind", source: "\(snapshotDir(r.number))/fs", options: [active ? "rw" : "ro", "rbind"])]
        }
        let chain = try snapshotChain(r.parent)
        let own = snapshotDir(r.number)
        let lowers = chain.map(fsPath)
        // A layer whose files are fetched on first read cannot be a lower
        // layer of the kernel's overlayfs (it would read holes): such a
        // stack is mounted by Strata's union, `strata` run by mount.fuse3.
        let lazy = chain.contains { $0.layer.map { storedLayer($0).isLazy } ?? false }
        if r.kind == SnapshotInfo.Kind.active.rawValue {
            if lowers.isEmpty { return [SnapshotMount(type: "bind", source: "\(own)/fs", options: ["rw", "rbind"])] }
            return [SnapshotMount(type: lazy ? "fuse3.strata" : "overlay", source: "overlay",
                                  options: (lazy ? [] : ["index=off"]) + ["workdir=\(own)/work", "upperdir=\(own)/fs", "lowerdir=\(lowers.joined(separator: ":"))"])]
        }
        // A view: read-only.
        if lazy { return [SnapshotMount(type: "fuse3.strata", source: "overlay", options: ["lowerdir=\(lowers.joined(separator: ":"))"])] }
        if lowers.isEmpty { return [SnapshotMount(type: "bind", source: "\(own)/fs", options: ["ro", "rbind"])] }
        if lowers.count == 1 { return [SnapshotMount(type: "bind", source: lowers[0], options: ["ro", "rbind"])] }
        return [SnapshotMount(type: "overlay", source: "overlay", options: ["lowerdir=\(lowers.joined(separator: ":"))"])]
    }

    /// A committed snapshot's tree: its own fs/, or the store layer it shows.
    func fsPath(_ r: SnapshotRecord) -> String {
        if let l = r.layer { return storedLayer(l).tree }
        return "\(snapshotDir(r.number))/fs"
    }

    /// Whether a snapshot named `name` exists.
    public func hasSnapshot(_ name: String) -> Bool { (try? snapshotRecord(name)) != nil }

    /// The committed snapshot `name` showing the store's layer `layer` (a
    /// lazy pull brought it: containerd then skips the layer's download and
    /// apply). `parent` must be committed already.
    public func adoptLayerAsSnapshot(_ name: String, layer: String, parent: String?, labels: [String: String]) throws(SnapshotError) {
        try snapshotsLocked { () throws(SnapshotError) in
            if hasSnapshot(name) { return }
            guard (try? self.layer(layer)) != nil else { throw SnapshotError(.notFound, "layer \(layer) is not in the store") }
            if let parent {
                let p = try snapshotRecord(parent)
                guard p.kind == SnapshotInfo.Kind.committed.rawValue else { throw SnapshotError(.invalidArgument, "parent \(parent) is not committed") }
            }
            if mkdir(snapshotsDir, 0o700) != 0 && errno != EEXIST { throw SnapshotError(.internal, "\(snapshotsDir): \(currentErrno())") }
            let now = Date().timeIntervalSince1970
            let number: Int64
            do {
                number = try db.queue.write { db -> Int64 in
                    let n = (try Int64.fetchOne(db, sql: "SELECT MAX(number) FROM snapshot") ?? 0) + 1
                    try SnapshotRecord(name: name, number: n, parent: parent, kind: SnapshotInfo.Kind.committed.rawValue, created: now, updated: now,
                                       labels: Self.encodeLabels(labels), size: 0, inodes: 0, layer: layer).insert(db)
                    return n
                }
            } catch {
                throw SnapshotError(.internal, "snapshot \(name): \(error)")
            }
            let d = snapshotDir(number)
            if mkdir(d, 0o755) != 0 || symlink(storedLayer(layer).tree, "\(d)/fs") != 0 {
                let e = currentErrno()
                try? removeSnapshotRecord(name)
                throw SnapshotError(.internal, "snapshot \(name): \(d): \(e)")
            }
        }
    }

    /// The active snapshot `key` becomes the committed `name` (its
    /// directory stays; its usage is measured now, once).
    public func commitSnapshot(_ name: String, key: String, labels: [String: String] = [:]) throws(SnapshotError) {
        guard !name.isEmpty else { throw SnapshotError(.invalidArgument, "a committed snapshot needs a name") }
        try snapshotsLocked { () throws(SnapshotError) in
            let r = try snapshotRecord(key)
            guard r.kind == SnapshotInfo.Kind.active.rawValue else {
                throw SnapshotError(.failedPrecondition, "snapshot \(key) is not active: only an active snapshot can be committed")
            }
            if (try? snapshotRecord(name)) != nil { throw SnapshotError(.alreadyExists, "snapshot \(name) already exists") }
            if layout == .btrfs {
                // Sealed as a btrfs layer is: what is built on it snapshots it.
                do throws(Errno) {
                    let fs = try Sys.open("\(snapshotDir(r.number))/fs", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                    try Btrfs.setReadOnly(fs.raw, true)
                } catch {
                    throw SnapshotError(.internal, "commit \(key): sealing \(snapshotDir(r.number))/fs: \(error)")
                }
            }
            let (size, inodes) = try snapshotOwnUsage(r)
            var merged = r.info().labels
            for (k, v) in labels { merged[k] = v }
            let now = Date().timeIntervalSince1970
            do {
                try db.queue.write { db in
                    try db.execute(sql: "DELETE FROM snapshot WHERE name = ?", arguments: [key])
                    try SnapshotRecord(name: name, number: r.number, parent: r.parent, kind: SnapshotInfo.Kind.committed.rawValue,
                                       created: now, updated: now, labels: Self.encodeLabels(merged), size: size, inodes: inodes).insert(db)
                }
            } catch {
                throw SnapshotError(.internal, "commit \(key) as \(name): \(error)")
            }
            // The work directory is an active snapshot's only.
            removeTree(in: snapshotDir(r.number), "work")
        }
    }

    /// Removes a snapshot that nothing is built on.
    public func removeSnapshot(_ key: String) throws(SnapshotError) {
        try snapshotsLocked { () throws(SnapshotError) in
            let r = try snapshotRecord(key)
            let children: Int
            do { children = try db.queue.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM snapshot WHERE parent = ?", arguments: [key]) ?? 0 } } catch {
                throw SnapshotError(.internal, "snapshot \(key): \(error)")
            }
            if children > 0 { throw SnapshotError(.failedPrecondition, "snapshot \(key) has \(children) snapshot(s) built on it; remove those first") }
            try removeSnapshotRecord(key)
            removeTree(in: snapshotsDir, String(r.number))
        }
    }

    func removeSnapshotRecord(_ key: String) throws(SnapshotError) {
        do { _ = try db.queue.write { try SnapshotRecord.deleteOne($0, key: key) } } catch {
            throw SnapshotError(.internal, "snapshot \(key): \(error)")
        }
    }

    public func statSnapshot(_ key: String) throws(SnapshotError) -> SnapshotInfo { try snapshotRecord(key).info() }

    /// Replaces labels: every label (`paths` empty), or those named by
    /// `labels.KEY` paths (a named key absent from `info` is removed).
    /// Name, parent, kind and creation time do not change.
    public func updateSnapshot(_ info: SnapshotInfo, paths: [String]) throws(SnapshotError) -> SnapshotInfo {
        try snapshotsLocked { () throws(SnapshotError) -> SnapshotInfo in
            var r = try snapshotRecord(info.name)
            var labels = r.info().labels
            if paths.isEmpty {
                labels = info.labels
            } else {
                for p in paths {
                    if p == "labels" { labels = info.labels; continue }
                    guard p.hasPrefix("labels.") else { throw SnapshotError(.invalidArgument, "cannot update field \(p) of snapshot \(info.name)") }
                    let k = String(p.dropFirst(7))
                    labels[k] = info.labels[k]
                }
            }
            r.labels = Self.encodeLabels(labels)
            r.updated = Date().timeIntervalSince1970
            do { try db.queue.write { try r.update($0) } } catch { throw SnapshotError(.internal, "snapshot \(info.name): \(error)") }
            return r.info()
        }
    }

    /// Bytes and inodes a snapshot holds on its own (not its parents').
    public func snapshotUsage(_ key: String) throws(SnapshotError) -> (size: Int64, inodes: Int64) {
        let r = try snapshotRecord(key)
        if r.kind == SnapshotInfo.Kind.committed.rawValue { return (r.size, r.inodes) }
        return try snapshotOwnUsage(r)
    }

    /// Every snapshot, oldest first.
    public func snapshots() throws(SnapshotError) -> [SnapshotInfo] {
        do { return try db.queue.read { try SnapshotRecord.fetchAll($0, sql: "SELECT * FROM snapshot ORDER BY created, name") }.map { $0.info() } } catch {
            throw SnapshotError(.internal, "listing snapshots: \(error)")
        }
    }

    /// What `strata stats` tells of the snapshots: how many of each kind,
    /// the bytes committed ones hold (as measured at commit), and the
    /// store layers committed snapshots show.
    public func snapshotSummary() throws(SnapshotError) -> (kinds: [String: Int], committedBytes: Int64, layers: [String]) {
        let all: [SnapshotRecord]
        do { all = try db.queue.read { try SnapshotRecord.fetchAll($0) } } catch { throw SnapshotError(.internal, "listing snapshots: \(error)") }
        var kinds: [String: Int] = [:]
        for r in all { kinds[r.kind, default: 0] += 1 }
        return (kinds, all.reduce(0) { $0 + $1.size }, all.compactMap(\.layer))
    }

    /// Removes directories under `snapshots/` that no snapshot owns (what a
    /// crash between the record and its removal left). Returns their count.
    @discardableResult
    public func cleanupSnapshots() throws(SnapshotError) -> Int {
        try snapshotsLocked { () throws(SnapshotError) -> Int in
            let owned: Set<String>
            do { owned = Set(try db.queue.read { try Int64.fetchAll($0, sql: "SELECT number FROM snapshot") }.map(String.init)) } catch {
                throw SnapshotError(.internal, "listing snapshots: \(error)")
            }
            guard let list = try? Sys.directoryNames(AT_FDCWD, snapshotsDir) else { return 0 }
            var removed = 0
            for n in list where !owned.contains(n) {
                removeTree(in: snapshotsDir, n)
                removed += 1
            }
            return removed
        }
    }

    /// Bytes in use (allocated blocks) and inodes under `path`, as `du`
    /// counts them: hard links once.
    static func usage(of path: String) -> (Int64, Int64) {
        var size: Int64 = 0, inodes: Int64 = 0
        var seen = Set<UInt64>()
        func walk(_ dir: Int32) {
            guard let names = try? Sys.directoryNames(dir) else { return }
            for n in names {
                var st = stat()
                guard fstatat(dir, n, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                if st.st_nlink > 1 && !seen.insert(UInt64(st.st_ino)).inserted { continue }
                inodes += 1
                size += Int64(st.st_blocks) * 512
                if st.st_mode & Linux.S_IFMT == Linux.S_IFDIR, let sub = try? Sys.openat(dir, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) {
                    walk(sub.raw)
                }
            }
        }
        if let root = try? Sys.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) { walk(root.raw) }
        return (size, inodes)
    }
}
