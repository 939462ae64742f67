import Foundation
import GRDB

/// Metadata in SQLite: every change is one transaction, so an interrupted
/// command never leaves a layer half-registered.
struct StoreDatabase {
    let queue: DatabaseQueue

    init(path: String) throws {
        var config = Configuration()
        // Other strata commands use the same database: wait for their
        // transactions (as podman and docker commands wait for each other)
        // instead of failing with "database is locked".
        config.busyMode = .timeout(120)
        queue = try DatabaseQueue(path: path, configuration: config)
    }

    /// Whether every migration has run: a reader, which takes no lock, asks
    /// this before the store's lock is needed for `migrate`.
    func isCurrent() throws -> Bool {
        try queue.read { try Self.migrator.hasCompletedMigrations($0) }
    }

    /// Runs the migrations not yet run (under the store's lock: two
    /// commands opening a new store at once would both run them).
    func migrate() throws { try Self.migrator.migrate(queue) }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "layer") { t in
                t.primaryKey("id", .text)                 // chain ID
                t.column("diffID", .text).notNull()
                t.column("parent", .text)
                t.column("link", .text).notNull()         // short name under overlay/l
                t.column("size", .integer).notNull()
                t.column("created", .double).notNull()
            }
            try db.create(table: "image") { t in
                t.primaryKey("id", .text)                 // config digest
                t.column("config", .blob).notNull()
                t.column("layers", .text).notNull()       // JSON array of chain IDs, bottom first
                t.column("created", .double).notNull()
            }
            try db.create(table: "tag") { t in
                t.primaryKey("name", .text)
                t.column("image", .text).notNull().references("image", onDelete: .cascade)
            }
            try db.create(table: "container") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("image", .text).notNull().references("image")
                t.column("created", .double).notNull()
            }
        }
        // Where blobs are known to live, so a push can mount them from
        // another repository of the same registry instead of uploading.
        m.registerMigration("v2") { db in
            try db.create(table: "blob_source") { t in
                t.column("digest", .text).notNull()
                t.column("registry", .text).notNull()
                t.column("repository", .text).notNull()
                t.primaryKey(["digest", "registry", "repository"])
            }
        }
        // containerd's snapshots (see Snapshots.swift): a name, the number
        // of its directory, its committed parent, its kind and labels.
        m.registerMigration("v3") { db in
            try db.create(table: "snapshot") { t in
                t.primaryKey("name", .text)
                t.column("number", .integer).notNull().unique()
                t.column("parent", .text)
                t.column("kind", .text).notNull()
                t.column("created", .double).notNull()
                t.column("updated", .double).notNull()
                t.column("labels", .text).notNull()
                t.column("size", .integer).notNull()
                t.column("inodes", .integer).notNull()
                // A committed snapshot that shows a layer of the store (one
                // a lazy pull brought): its chain ID; its fs/ is a link to it.
                t.column("layer", .text)
            }
            try db.create(index: "snapshot_parent", on: "snapshot", columns: ["parent"])
        }
        return m
    }
}
