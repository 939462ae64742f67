import Sys
import Tables
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One merged inode. Where it lives can change (copy-up moves it to the
/// upper layer); what the kernel sees of it (its number, its kind) does not.
public final class OverlayNode: TableNode, @unchecked Sendable {
    public let id: UInt64
    public let isDirectory: Bool
    /// The inode number reported: the origin's, so that copy-up keeps it,
    /// except for one name of a lower hard link copied up without
    /// index=on, which becomes its own inode (see `copyObject`).
    public var ino: UInt64 { inoValue.load(ordering: .relaxed) }
    let inoValue: Atomic<UInt64>
    public let state: Mutex<State>
    /// Serializes copy-up of this node: two concurrent copy-ups become one.
    let copyUpLock = Mutex<Void>(())
    /// Kernel references (lookups not yet forgotten), under the node's own
    /// lock (see `NodeReferences`: a copy-up moves the node to another key).
    public let references = NodeReferences()
    var isDead: Bool { references.isDead }
    /// Kernel references now (statistics and tests).
    public var lookupCount: UInt64 { references.count }
    /// The key of the node table: the real inode of its top location.
    public var tableKey: InodeKey { state.withLock { $0.place.key } }

    /// Everything that changes, under the node's one lock, in three parts
    /// with different lifetimes (the kernel's small `ovl_inode`, its
    /// `ovl_entry` and its per-open readdir cache play these roles).
    public struct State: @unchecked Sendable {
        /// Where it is: its names and its place in each layer. Changed by
        /// lookups, copy-up, renames and removals.
        public internal(set) var place: Place
        /// What was read at that place, to spare system calls; every entry
        /// can be read again, and `NodeCaches.placeMoved` drops what a move
        /// makes stale.
        var caches = NodeCaches()
        /// Its open files, by how each is served (see `OpenFile`).
        var opens = OpenCounts()
        /// Merged listings its readers are part-way through (see
        /// `Overlay.listing`).
        var listings = Listings()

        init(place: Place, fds: [Int: OwnedFD] = [:]) {
            self.place = place
            caches.fds = fds
        }
    }

    /// Where a merged inode is.
    public struct Place: @unchecked Sendable {
        public internal(set) var parent: OverlayNode?
        var name: [UInt8]            // NUL-terminated
        /// Exists in the upper layer.
        public internal(set) var inUpper: Bool
        /// Top-most lower layer holding it (index into `Overlay.layers`).
        var lower: Int?
        /// Directories: lower layers that contribute entries, top first
        /// (cut below an opaque directory or a non-directory).
        var lowerDirs: [Int]
        /// Real (dev, ino) of the top location, the key of the inode map.
        var key: InodeKey
        var unlinked = false
        /// An unlinked inode the kernel still holds (open files): how to reach it.
        var orphan: OwnedFD?
        /// Further names of an upper hard link (the first is parent/name).
        var others: [(OverlayNode, [UInt8])] = []
        /// A renamed directory (redirect_dir=on): where its lower parts are,
        /// as path components from each lower layer's root. For a
        /// metadata-only copy (metacopy=on) moved or linked: where its data is.
        var redirect: [String]?
        /// Metadata only (metacopy=on): its data is the regular file at the
        /// same path (or at `redirect`) in lower layer `dataLayer`, until a
        /// write copies it up.
        var metacopy = false
        var dataLayer: Int?
        /// Per lower layer, its path there when that is not the parent's
        /// path there and its name: below a redirect (its own, one met in a
        /// lower layer, or an ancestor's), for a directory's parts and a
        /// metadata-only copy's data.
        var lowerPaths: [Int: [String]] = [:]
        /// index=on: an indexed inode's entry in `workdir/index` (hex,
        /// NUL-terminated), its top location from then on.
        var indexName: [UInt8]?
        /// A lower non-directory's link count in its layer (index=on).
        var lowerNlink: UInt64 = 0

        /// The layer of its top location.
        var topLayer: Int { inUpper || indexName != nil ? 0 : lower ?? 0 }

        func isPrimary(_ p: OverlayNode, _ n: FileName) -> Bool {
            parent === p && name.count == n.count + 1 && n.equals(prefixOf: name)
        }
    }

    /// Records that (p, n) names this inode: a directory has one name, a
    /// file may have several (hard links). `stillNamed`, when given, is
    /// asked under the node's lock whether (p, n) still leads here: a
    /// lookup that raced a rename must not put back the name the rename
    /// took away (a rename updates names under the same lock, after the
    /// real rename). Returns whether the name was recorded.
    @discardableResult
    func addName(_ p: OverlayNode, _ n: FileName, stillNamed: () -> Bool = { true }) -> Bool {
        state.withLock { s in
            if s.place.isPrimary(p, n) && !s.place.unlinked { return true }
            if !stillNamed() { return false }
            if isDirectory || s.place.unlinked {
                s.place.parent = p
                s.place.name = n.bytesWithNUL
                s.place.unlinked = false
                return true
            }
            if s.place.others.contains(where: { $0.0 === p && $0.1.count == n.count + 1 && n.equals(prefixOf: $0.1) }) { return true }
            s.place.others.append((p, n.bytesWithNUL))
            return true
        }
    }

    /// Forgets the name (p, n); returns whether the inode has no name left.
    @discardableResult
    func removeName(_ p: OverlayNode, _ n: FileName) -> Bool {
        state.withLock { s in
            if s.place.isPrimary(p, n) {
                if s.place.others.isEmpty {
                    s.place.unlinked = true
                } else {
                    let next = s.place.others.removeFirst()
                    s.place.parent = next.0
                    s.place.name = next.1
                }
            } else {
                s.place.others.removeAll { $0.0 === p && $0.1.count == n.count + 1 && n.equals(prefixOf: $0.1) }
            }
            return s.place.unlinked
        }
    }

    init(id: UInt64, isDirectory: Bool, ino: UInt64, state: State) {
        self.id = id
        self.isDirectory = isDirectory
        self.inoValue = Atomic(ino)
        self.state = Mutex(state)
    }

    var snapshot: State { state.withLock { $0 } }
}

/// A directory's file handle (name_to_handle_at).
typealias DirHandle = KernelFileHandle

/// What identifies a merged inode. Upper entries and directories are keyed
/// by their real inode (hard links in the upper layer are one inode). A
/// lower non-directory is keyed by its name: without index=on the kernel
/// gives each name of a lower hard link its own inode, so that copying one
/// name up breaks the link rather than moving the other.
public struct InodeKey: TableKey {
    let dev: UInt64
    let ino: UInt64
    var parent: UInt64 = 0
    var name: [UInt8] = []

    /// The name stays out of the hash (Array hashes byte by byte, on every
    /// lookup); names of one lower hard link share a bucket, and equality
    /// still tells them apart.
    public func hash(into h: inout Hasher) {
        h.combine(dev)
        h.combine(ino)
        h.combine(parent)
    }

    public var shard: UInt64 { ino }
}
