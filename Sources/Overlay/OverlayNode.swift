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
    public var tableKey: InodeKey { state.withLock { $0.key } }

    public struct State: @unchecked Sendable {
        public internal(set) var parent: OverlayNode?
        var name: [UInt8]            // NUL-terminated
        /// Exists in the upper layer.
        public internal(set) var inUpper: Bool
        /// Top-most lower layer holding it (index into `Overlay.layers`).
        var lower: Int?
        /// Directories: lower layers that contribute entries, top first
        /// (cut below an opaque directory or a non-directory).
        var lowerDirs: [Int]
        /// Cached O_PATH descriptors of this directory, per layer.
        var fds: [Int: OwnedFD] = [:]
        /// Where the descriptor budget refused a cached descriptor: the
        /// directory's file handle per layer, which reopens it in one call
        /// however deep it is and whatever was renamed above it since.
        var handles: [Int: DirHandle] = [:]
        /// Real (dev, ino) of the top location, the key of the inode map.
        var key: InodeKey
        var unlinked = false
        /// An unlinked inode the kernel still holds (open files): how to reach it.
        var orphan: OwnedFD?
        /// Further names of an upper hard link (the first is parent/name).
        var others: [(OverlayNode, [UInt8])] = []
        /// Its open files (see `OpenFile`).
        var openFiles = OpenCounts()
        /// Merged listings its readers are part-way through.
        public var listings = Listings()
        /// Its listing, its entries resolved, made ahead of a walker that
        /// has not asked for it yet (see `ReadAhead`).
        var prepared: PreparedListing?
        /// Per lower layer, hashes of the names this directory holds there.
        /// Lower layers never change under a mount, so a name whose hash is
        /// absent is absent, and its lookup in that layer is skipped (a
        /// collision only costs the real lookup).
        var lowerNames: [Int: Set<UInt64>] = [:]
        /// A directory whose upper copy this mount made (copy-up or mkdir)
        /// with device whiteouts: nothing in it is a `.wh.` file (names of
        /// that form are refused through the union, and the layers do not
        /// change under a mount), so lookups skip that probe there.
        var upperHoldsNoWhFiles = false
        /// Whether this directory's upper copy is marked `overlay.impure`
        /// (it may hold entries the kernel copied up), once asked.
        var upperImpure: Bool?
        /// Per layer, whether this directory is marked to hold xattr whiteouts.
        var xwhiteouts: [Int: Bool] = [:]
        /// A renamed directory (redirect_dir=on): where its lower parts are,
        /// as path components from each lower layer's root. For a
        /// metadata-only copy (metacopy=on) moved or linked: where its data is.
        var redirect: [String]?
        /// Metadata only (metacopy=on): its data is the regular file at the
        /// same path (or at `redirect`) in lower layer `dataLayer`, until a
        /// write copies it up.
        var metacopy = false
        var dataLayer: Int?
        /// The data's block count, once asked (the data is in a lower layer).
        var dataBlocks: blkcnt_t?
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
            if s.isPrimary(p, n) && !s.unlinked { return true }
            if !stillNamed() { return false }
            if isDirectory || s.unlinked {
                s.parent = p
                s.name = n.bytesWithNUL
                s.unlinked = false
                return true
            }
            if s.others.contains(where: { $0.0 === p && $0.1.count == n.count + 1 && n.equals(prefixOf: $0.1) }) { return true }
            s.others.append((p, n.bytesWithNUL))
            return true
        }
    }

    /// Forgets the name (p, n); returns whether the inode has no name left.
    @discardableResult
    func removeName(_ p: OverlayNode, _ n: FileName) -> Bool {
        state.withLock { s in
            if s.isPrimary(p, n) {
                if s.others.isEmpty {
                    s.unlinked = true
                } else {
                    let next = s.others.removeFirst()
                    s.parent = next.0
                    s.name = next.1
                }
            } else {
                s.others.removeAll { $0.0 === p && $0.1.count == n.count + 1 && n.equals(prefixOf: $0.1) }
            }
            return s.unlinked
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

/// A directory's file handle (name_to_handle_at), kept inline: most are
/// 8 to 20 bytes.
struct DirHandle: Sendable {
    var bytes: [UInt8]
    var type: Int32
}

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
