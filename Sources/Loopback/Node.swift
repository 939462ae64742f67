import FUSE
import Synchronization
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Where a node lives: a parent directory node and a NUL-terminated name.
struct Place: @unchecked Sendable {
    var parent: Node
    var name: [UInt8]   // with a trailing NUL, ready for *at calls
}

/// One inode the kernel knows. Found again by (parent, name) relative to a
/// directory descriptor, never by a path string: fds are kept only for a
/// bounded number of directories (the hard limit here is 20,000 open files,
/// so one fd per inode fails on a rootfs-sized tree).
final class Node: @unchecked Sendable {
    let id: NodeID
    let dev: UInt64
    let ino: UInt64
    let isDirectory: Bool
    /// O_PATH descriptor of a directory, when the cache budget allowed one.
    let dirFD: OwnedFD?
    /// Names of this inode (more than one for hard links); the first is used.
    let places: Mutex<[Place]>
    /// For an inode whose last name was removed while the kernel still holds
    /// it (an open unlinked file, an O_TMPFILE): a descriptor to reach it.
    let orphan: Mutex<OwnedFD?>
    /// Kernel lookup references; changed only under the table's ino lock.
    var lookups: UInt64 = 0
    var inInoMap = true

    init(id: NodeID, dev: UInt64, ino: UInt64, isDirectory: Bool, dirFD: OwnedFD?, place: Place?) {
        self.id = id
        self.dev = dev
        self.ino = ino
        self.isDirectory = isDirectory
        self.dirFD = dirFD
        self.places = Mutex(place.map { [$0] } ?? [])
        self.orphan = Mutex(nil)
    }

    var firstPlace: Place? { places.withLock { $0.first } }

    func addPlace(_ p: Place) {
        places.withLock { ps in
            if !ps.contains(where: { $0.parent === p.parent && $0.name == p.name }) { ps.append(p) }
        }
    }

    /// Whether (parent, name) is already one of this node's names; compares
    /// in place so that a repeated lookup allocates nothing.
    func hasPlace(parent: Node, name: Name) -> Bool {
        places.withLock { ps in
            ps.contains { $0.parent === parent && $0.name.count == name.count + 1
                && name.equals(prefixOf: $0.name) }
        }
    }

    /// Removes a name; returns how many names remain known.
    @discardableResult
    func removePlace(parent: Node, name: Name) -> Int {
        places.withLock { ps in
            ps.removeAll { $0.parent === parent && name.equals(Array($0.name.dropLast())) }
            return ps.count
        }
    }

    func setOnlyPlace(_ p: Place) { places.withLock { $0 = [p] } }

    /// Records a name a lookup found, if `stillNamed` (asked under the lock
    /// that renames take to move names) says it still leads here: the
    /// kernel revalidates names without the parent's lock, so a lookup can
    /// race a rename of that name, or an rmdir and a mkdir that reuses the
    /// inode number, and must not bring a stale name back.
    func addFoundPlace(_ p: Place, only: Bool, stillNamed: () -> Bool) {
        places.withLock { ps in
            guard stillNamed() else { return }
            if only { ps = [p] } else if !ps.contains(where: { $0.parent === p.parent && $0.name == p.name }) { ps.append(p) }
        }
    }
}

/// Nodes by id and by (dev, ino), split into shards so that concurrent
/// requests on different inodes do not contend on one lock.
final class NodeTable: @unchecked Sendable {
    static let shardCount = 64
    private let byID: [Locked<[NodeID: Node]>]
    private let byIno: [Locked<[InoKey: Node]>]
    private let nextID = Atomic<UInt64>(2)
    private let dirFDBudget: Int
    private let dirFDsInUse = Atomic<Int>(0)
    let root: Node

    struct InoKey: Hashable { let dev: UInt64; let ino: UInt64 }

    init(root: Node, dirFDBudget: Int) {
        byID = (0..<Self.shardCount).map { _ in Locked([:]) }
        byIno = (0..<Self.shardCount).map { _ in Locked([:]) }
        self.root = root
        self.dirFDBudget = dirFDBudget
        root.lookups = 1
        byID[Int(root.id % UInt64(Self.shardCount))].withLock { $0[root.id] = root }
    }

    @inline(__always)
    func get(_ id: NodeID) -> Node? {
        if id == NodeID.root { return root }
        return byID[Int(id % UInt64(Self.shardCount))].withLock { $0[id] }
    }

    /// Returns the node for a stat result, creating it if new, and counts one
    /// kernel lookup reference. `place` is recorded as one of its names.
    func reference(_ st: stat, parent: Node, name: Name, stillNamed: () -> Bool, dirFDOpener: () -> Int32) -> Node {
        let key = InoKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        let isDir = st.st_mode & Linux.S_IFMT == Linux.S_IFDIR
        let shard = byIno[Int(key.ino % UInt64(Self.shardCount))]
        if let n = shard.withLock({ m -> Node? in
            guard let n = m[key] else { return nil }
            n.lookups += 1
            return n
        }) {
            if !n.hasPlace(parent: parent, name: name) {
                n.addFoundPlace(Place(parent: parent, name: name.bytesWithNUL), only: isDir, stillNamed: stillNamed)
            }
            return n
        }
        let place = Place(parent: parent, name: name.bytesWithNUL)
        // New inode: open its directory fd (outside any lock) if budget allows.
        var fd: OwnedFD? = nil
        if isDir && dirFDsInUse.add(1, ordering: .relaxed).newValue <= dirFDBudget {
            let raw = dirFDOpener()
            if raw >= 0 { fd = DirFD(raw, counter: self) } else { dirFDsInUse.subtract(1, ordering: .relaxed) }
        } else if isDir {
            dirFDsInUse.subtract(1, ordering: .relaxed)
        }
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let fresh = Node(id: id, dev: key.dev, ino: key.ino, isDirectory: isDir, dirFD: fd, place: place)
        return shard.withLock { m -> Node in
            if let n = m[key] {     // lost a race with another lookup
                n.lookups += 1
                if !isDir && !n.hasPlace(parent: parent, name: name) { n.addFoundPlace(place, only: false, stillNamed: stillNamed) }
                return n
            }
            fresh.lookups = 1
            m[key] = fresh
            byID[Int(id % UInt64(Self.shardCount))].withLock { $0[id] = fresh }
            return fresh
        }
    }

    /// A node for an inode with no name (O_TMPFILE), reachable by `fd` only.
    func referenceOrphan(_ st: stat, fd: OwnedFD) -> Node {
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let n = Node(id: id, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino), isDirectory: false, dirFD: nil, place: nil)
        n.orphan.withLock { $0 = fd }
        let key = InoKey(dev: n.dev, ino: n.ino)
        byIno[Int(key.ino % UInt64(Self.shardCount))].withLock { m in
            n.lookups = 1
            m[key] = n
            byID[Int(id % UInt64(Self.shardCount))].withLock { $0[id] = n }
        }
        return n
    }

    /// The node currently known for an inode, without taking a reference.
    func find(dev: UInt64, ino: UInt64) -> Node? {
        byIno[Int(ino % UInt64(Self.shardCount))].withLock { $0[InoKey(dev: dev, ino: ino)] }
    }

    /// The inode lost its last name: a new inode may reuse its number.
    func detach(_ n: Node) {
        let key = InoKey(dev: n.dev, ino: n.ino)
        byIno[Int(key.ino % UInt64(Self.shardCount))].withLock { m in
            if m[key] === n { m[key] = nil }
            n.inInoMap = false
        }
    }

    func forget(_ id: NodeID, count: UInt64) {
        guard id != NodeID.root, let n = get(id) else { return }
        let key = InoKey(dev: n.dev, ino: n.ino)
        byIno[Int(key.ino % UInt64(Self.shardCount))].withLock { m in
            n.lookups = n.lookups > count ? n.lookups - count : 0
            if n.lookups == 0 {
                if m[key] === n { m[key] = nil }
                byID[Int(id % UInt64(Self.shardCount))].withLock { _ = $0.removeValue(forKey: id) }
            }
        }
    }

    fileprivate func releaseDirFD() { dirFDsInUse.subtract(1, ordering: .relaxed) }
}

/// A cached directory descriptor that returns its slot in the budget when closed.
private final class DirFD: OwnedFD, @unchecked Sendable {
    weak var counter: NodeTable?
    init(_ raw: Int32, counter: NodeTable) {
        self.counter = counter
        super.init(raw)
    }
    deinit { counter?.releaseDirFD() }
}
