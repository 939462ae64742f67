import FUSE
import Synchronization
import Sys
import SystemPackage
import Tables
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
final class Node: TableNode, @unchecked Sendable {
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
    /// Kernel lookup references, under the node's own lock.
    let references = NodeReferences()
    var tableKey: InoKey { InoKey(dev: dev, ino: ino) }

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

/// A real inode, the loopback's node key.
struct InoKey: TableKey {
    let dev: UInt64
    let ino: UInt64
    var shard: UInt64 { ino }
}

extension NodeTable where Node == Loopback.Node {
    /// Returns the node for a stat result, creating it if new, and counts one
    /// kernel lookup reference. (parent, name) is recorded as one of its
    /// names. A new directory gets a cached descriptor if `budget` allows.
    func reference(_ st: stat, parent: Node, name: Name, budget: FDBudget, stillNamed: () -> Bool,
                   dirFDOpener: () throws(Errno) -> UniqueFD) -> Node {
        let key = InoKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        let isDir = st.st_mode & Linux.S_IFMT == Linux.S_IFDIR
        let n = reference(key) { id in
            // A new inode: its directory descriptor is opened outside any lock.
            let fd = isDir ? budget.cache(opening: dirFDOpener) : nil
            return Node(id: id, dev: key.dev, ino: key.ino, isDirectory: isDir, dirFD: fd,
                        place: Place(parent: parent, name: name.bytesWithNUL))
        }
        if !n.hasPlace(parent: parent, name: name) {
            n.addFoundPlace(Place(parent: parent, name: name.bytesWithNUL), only: isDir, stillNamed: stillNamed)
        }
        return n
    }

    /// A node for an inode with no name (O_TMPFILE), reachable by `fd` only.
    func referenceOrphan(_ st: stat, fd: OwnedFD) -> Node {
        let key = InoKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        return referenceUnnamed(key) { id in
            let n = Node(id: id, dev: key.dev, ino: key.ino, isDirectory: false, dirFD: nil, place: nil)
            n.orphan.withLock { $0 = fd }
            return n
        }
    }

    /// The node currently known for an inode, without taking a reference.
    func find(dev: UInt64, ino: UInt64) -> Node? { find(InoKey(dev: dev, ino: ino)) }
}
