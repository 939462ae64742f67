import Archive
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What a btrfs container changed: its subvolume against its `-init`
/// subvolume, the snapshot it was made from. A snapshot keeps inode
/// numbers and times, so an entry with the same inode and the same change
/// time is untouched (every write, chmod, chown, xattr or link change sets
/// the change time, which no program can set back); one whose change time
/// moved is changed if what a layer records of it differs (type, mode,
/// owner, size, modification time, device, xattrs), as Docker's btrfs
/// driver decides: removing one hard link of a file moves the change time
/// of its other names, which are not changes. A directory is still
/// entered, since a file deep inside can change without its parents'
/// times moving.
struct BtrfsChange {
    enum Kind { case added, changed, deleted }
    let path: String       // relative to the container's root, no leading slash
    let kind: Kind
    /// A directory that was removed and made again (another inode): what
    /// the old one held is gone, as an overlay opaque directory says.
    var replacedDirectory = false
    /// Bytes of a regular file that was added or changed (its blocks).
    var bytes: Int64 = 0
}

/// How a btrfs container's changes are found: by walking both trees
/// whole, or by reading first which inodes btrfs wrote since the snapshot
/// (its generation numbers, as `find-new`) and walking only the
/// directories on the way to them. Both give the same list.
public enum BtrfsDiffMethod: String, Sendable, CaseIterable {
    case walk
    case generations
}

/// The paths worth looking at: those written since the snapshot (`dirty`;
/// a dirty directory's entries are all compared), and every directory on
/// the way to one.
struct BtrfsRelevance {
    var dirty = Set<String>()
    var onPath = Set<String>()

    init(dirty: Set<String>) {
        self.dirty = dirty
        for p in dirty {
            onPath.insert(p)
            var cur = Substring(p)
            while let slash = cur.lastIndex(of: "/") {
                cur = cur[..<slash]
                if !onPath.insert(String(cur)).inserted { break }
            }
        }
    }
}

enum BtrfsTreeDiff {
    /// How directories are opened for comparing: without updating their
    /// access times, which in a snapshot would be writes (a walk would
    /// rewrite the metadata of every directory it lists, and btrfs would
    /// then report them all as written since the snapshot).
    static let readOnly = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | Linux.O_NOATIME

    /// The changes from `old` to `new` (directories open for reading), in
    /// the order of a layer tar: byte-sorted names, a directory before
    /// what it holds. A directory is listed as changed when anything under
    /// it changed, as the overlay driver's upper directory holds it then.
    /// With `relevance`, only the paths it names are looked at.
    static func changes(new: Int32, old: Int32, relevance: BtrfsRelevance? = nil) throws(Errno) -> [BtrfsChange] {
        var out: [BtrfsChange] = []
        try walk(new: new, old: old, prefix: "", relevance: relevance, into: &out)
        return out
    }

    /// What btrfs wrote in the subvolume `new` since it was snapshotted:
    /// the paths of every inode in a tree block of a later transaction;
    /// nil when there are more than `limit` such inodes (naming each costs
    /// an ioctl, about 50 µs: past a few hundred, walking is as fast).
    static func written(_ new: Int32, limit: Int = .max) throws(Errno) -> BtrfsRelevance? {
        let made = try Btrfs.transactions(new).created
        let inodes = try Btrfs.inodesWritten(since: made + 1, in: new)
        if inodes.count > limit { return nil }
        var dirty = Set<String>()
        for ino in inodes where ino >= 256 && ino < UInt64.max - 255 {
            if ino == 256 {
                dirty.insert("")
                continue
            }
            do throws(Errno) { for p in try Btrfs.paths(of: ino, in: new) { dirty.insert(p) } } catch {
                // Gone since: its directory was written too.
                if error != .noSuchFileOrDirectory { throw error }
            }
        }
        return BtrfsRelevance(dirty: dirty)
    }

    private static func sortedNames(_ fd: Int32) throws(Errno) -> [String] {
        try Sys.directoryNames(fd, flags: Linux.O_NOATIME).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    private static func stat(_ dir: Int32, _ name: String) -> stat? {
        var st = Glibc.stat()
        return fstatat(dir, name, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    private static func isDirectory(_ st: stat) -> Bool { st.st_mode & Linux.S_IFMT == Linux.S_IFDIR }

    private static func bytes(_ st: stat) -> Int64 {
        st.st_mode & Linux.S_IFMT == Linux.S_IFREG ? Int64(st.st_blocks) * 512 : 0
    }

    /// What a layer tar records of an entry, equal in both (a directory's
    /// times and size follow its entries, which are compared themselves).
    private static func sameRecord(_ a: stat, _ b: stat, directory: Bool) -> Bool {
        guard a.st_mode == b.st_mode, a.st_uid == b.st_uid, a.st_gid == b.st_gid else { return false }
        if directory { return true }
        return a.st_size == b.st_size && a.st_rdev == b.st_rdev
            && a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec
    }

    private static func xattrs(_ dir: Int32, _ name: String) -> [String: [UInt8]] {
        let path = "/proc/self/fd/\(dir)/\(name)"
        var list = [UInt8](repeating: 0, count: 65536)
        let n = list.withUnsafeMutableBytes { (try? PathXattr.list(path, into: $0)) ?? 0 }
        var out: [String: [UInt8]] = [:]
        for x in list[0..<n].split(separator: 0) {
            let key = String(decoding: x, as: UTF8.self)
            var value = [UInt8](repeating: 0, count: 65536)
            if let m = value.withUnsafeMutableBytes({ try? PathXattr.get(path, key, into: $0) }) { out[key] = Array(value[0..<m]) }
        }
        return out
    }

    private static func sameXattrs(_ new: Int32, _ old: Int32, _ name: String) -> Bool { xattrs(new, name) == xattrs(old, name) }

    private static func walk(new: Int32, old: Int32?, prefix: String, relevance: BtrfsRelevance?,
                             into out: inout [BtrfsChange]) throws(Errno) {
        // In a directory that was written every entry counts; in one only
        // on the way to a written path, only the entries on that way.
        let every = relevance.map { $0.dirty.contains(prefix.isEmpty ? "" : String(prefix.dropLast())) } ?? true
        let newNames = try sortedNames(new)
        let oldNames = try old.map { (fd) throws(Errno) in try sortedNames(fd) } ?? []
        // Both lists sorted: merged in one pass.
        var i = 0, j = 0
        while i < newNames.count || j < oldNames.count {
            let name: String
            var inNew = false, inOld = false
            if j >= oldNames.count || (i < newNames.count && Array(newNames[i].utf8).lexicographicallyPrecedes(Array(oldNames[j].utf8))) {
                name = newNames[i]; inNew = true; i += 1
            } else if i >= newNames.count || newNames[i] != oldNames[j] {
                name = oldNames[j]; inOld = true; j += 1
            } else {
                name = newNames[i]; inNew = true; inOld = true; i += 1; j += 1
            }
            let path = prefix + name
            if !every, let relevance, !relevance.onPath.contains(path) { continue }
            guard inNew, let n = stat(new, name) else {
                out.append(BtrfsChange(path: path, kind: .deleted))
                continue
            }
            let o = inOld ? stat(old ?? -1, name) : nil
            guard let o, o.st_ino == n.st_ino, o.st_mode & Linux.S_IFMT == n.st_mode & Linux.S_IFMT else {
                // New, or replaced by another inode: all of it is new.
                out.append(BtrfsChange(path: path, kind: o == nil ? .added : .changed,
                                       replacedDirectory: o != nil && isDirectory(n), bytes: bytes(n)))
                if isDirectory(n) {
                    let sub = try Sys.openat(new, name, readOnly)
                    try walk(new: sub.raw, old: nil, prefix: path + "/", relevance: nil, into: &out)
                }
                continue
            }
            let untouched = n.st_ctim.tv_sec == o.st_ctim.tv_sec && n.st_ctim.tv_nsec == o.st_ctim.tv_nsec
            let same = untouched || (sameRecord(n, o, directory: isDirectory(n)) && sameXattrs(new, old ?? -1, name))
            if isDirectory(n), let old {
                var below: [BtrfsChange] = []
                let subNew = try Sys.openat(new, name, readOnly)
                let subOld = try Sys.openat(old, name, readOnly)
                try walk(new: subNew.raw, old: subOld.raw, prefix: path + "/", relevance: relevance, into: &below)
                if !same || !below.isEmpty {
                    out.append(BtrfsChange(path: path, kind: .changed))
                    out += below
                }
            } else if !same {
                out.append(BtrfsChange(path: path, kind: .changed, bytes: bytes(n)))
            }
        }
    }
}

extension Store {
    /// A btrfs container's changes since it was made.
    /// `method` named by the caller is used or fails. By default: the
    /// generations when little data waits to be written back and few
    /// inodes were written, else the walk. btrfs records a write in its tree only once the data is on
    /// disk, so reading its generations first commits the filesystem, which
    /// costs the writeback of every dirty page (280 ms for 15 MB just
    /// rewritten, where walking a 10,000-entry tree takes 40 to 100 ms);
    /// with the data written, it costs a few ms and does not grow with the
    /// tree (docs/BENCHMARKS.md, `strata-bench drivers`). Without
    /// CAP_SYS_ADMIN (resolving inodes to paths needs it), the walk.
    func btrfsChanges(_ c: ContainerRecord, method: BtrfsDiffMethod? = nil) throws(StoreError) -> [BtrfsChange] {
        let mine = containerLayer(c), initLayer = storedLayer("\(c.id)-init")
        let new = try openOwned(mine.subvolume, BtrfsTreeDiff.readOnly)
        let old = try openOwned(initLayer.subvolume, BtrfsTreeDiff.readOnly)
        var relevance: BtrfsRelevance?
        switch method {
        case nil:
            if Self.dirtyBytes() < Self.generationsDirtyLimit {
                relevance = (try? BtrfsTreeDiff.written(new.raw, limit: Self.generationsInodeLimit)) ?? nil
            }
        case .generations?:
            do throws(Errno) { relevance = try BtrfsTreeDiff.written(new.raw) } catch {
                throw StoreError.failed("container \(c.name): reading what btrfs wrote in \(mine.subvolume)", error)
            }
        case .walk?: break
        }
        do throws(Errno) { return try BtrfsTreeDiff.changes(new: new.raw, old: old.raw, relevance: relevance) } catch {
            throw StoreError.failed("container \(c.name): comparing \(mine.subvolume) with \(initLayer.subvolume)", error)
        }
    }

    /// Above this much data waiting for writeback, the walk is faster.
    static let generationsDirtyLimit: Int64 = 4 << 20
    /// Above this many inodes written, so is it.
    static let generationsInodeLimit = 256

    /// Bytes of data the kernel has yet to write back (/proc/meminfo's
    /// Dirty and Writeback), machine-wide: what a commit of the filesystem
    /// waits for at most.
    static func dirtyBytes() -> Int64 {
        guard let text = readSmallFile("/proc/meminfo") else { return .max }
        var kib: Int64 = 0
        for line in text.split(separator: "\n") where line.hasPrefix("Dirty:") || line.hasPrefix("Writeback:") {
            kib += Int64(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        return kib << 10
    }

    /// The same as a layer tar's entries: deletions as whiteouts, a
    /// replaced directory as an opaque one.
    func btrfsLayerItems(_ changes: [BtrfsChange]) -> [LayerWriter.Item] {
        changes.map { ch in
            switch ch.kind {
            case .deleted: .whiteout(ch.path)
            case .added, .changed: ch.replacedDirectory ? .opaqueDirectory(ch.path) : .entry(ch.path)
            }
        }
    }
}
