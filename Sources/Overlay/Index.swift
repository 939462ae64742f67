import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The kernel's inodes index (index=on; overlayfs.rst, "Inodes index"), in
/// its on-disk format so that either mounts what the other wrote:
///
/// - copying up one name of a lower hard link builds the copy as
///   `workdir/index/<hex of the lower file's handle>` and links the upper
///   name to it; every other name then shows that inode (its data, its
///   metadata), before and after its own copy-up;
/// - `overlay.origin` on the copy holds the lower file's handle (the
///   kernel's `struct ovl_fb`), `overlay.nlink` the union's link count
///   relative to the upper inode's ("U+N") or the lower one's ("L+N");
/// - the upper root's `overlay.origin` names the first lower layer's root and
///   the index directory's `overlay.upper` the upper root: a mount with other
///   layers than the index was made with is refused, as the kernel refuses it.
///
/// Only lower hard links are indexed (the kernel indexes every copy-up only
/// for nfs_export, which stays refused).
struct UnionIndex: @unchecked Sendable {
    let dir: OwnedFD
    /// Per layer, its filesystem's UUID (the kernel's s_uuid), as handles carry it.
    let uuids: [[UInt8]]
}

extension Overlay {
    /// Version 0 of the kernel's `struct ovl_fb`: version, magic, length,
    /// flags, handle type, the filesystem's UUID, then the handle itself.
    static let handleMagic: UInt8 = 0xfb
    static let handleFlagUpper: UInt8 = 1 << 2

    static func encodeHandle(_ raw: [UInt8], type: Int32, uuid: [UInt8], upper: Bool) -> [UInt8] {
        var fb: [UInt8] = [0, handleMagic, UInt8(5 + 16 + raw.count), upper ? handleFlagUpper : 0, UInt8(truncatingIfNeeded: type)]
        fb += uuid.count == 16 ? uuid : [UInt8](repeating: 0, count: 16)
        return fb + raw
    }

    /// The overlay handle of `dir/name` (of `dir` itself when `name` is nil).
    static func handle(_ dir: Int32, _ name: UnsafePointer<CChar>?, uuid: [UInt8], upper: Bool) -> [UInt8]? {
        guard let h = try? Sys.fileHandle(dir, name: name), h.bytes.count + 21 <= 255 else { return nil }
        return encodeHandle(h.bytes, type: h.type, uuid: uuid, upper: upper)
    }

    /// The index entry's name: the handle in lower-case hex, NUL-terminated.
    static func indexName(_ fh: [UInt8]) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(fh.count * 2 + 1)
        for b in fh { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        out.append(0)
        return out
    }

    /// `fd` may be an O_PATH descriptor (a layer's root), on which ioctls fail.
    static func fsUUID(_ fd: Int32) -> [UInt8] {
        let none = [UInt8](repeating: 0, count: 16)
        guard let d = try? Sys.openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) else { return none }
        return Sys.filesystemUUID(d.raw) ?? none
    }

    /// Sets the index up at mount (the kernel's ovl_get_indexdir): checks
    /// or records which layers the upper belongs to, creates `index/`, and
    /// removes what an interrupted copy-up or removal left there. Returns
    /// nil, with a warning, where the kernel falls back to index=off.
    static func openIndex(layers: [Layer], upper: Layer, workdir wfd: Int32, workdirPath: String, prefix: String,
                          warn: (String) -> Void) throws(OverlaySetupError) -> UnionIndex? {
        let uuids = layers.map { fsUUID($0.root.raw) }
        var seen: [UInt64: [UInt8]] = [:]
        for l in layers.dropFirst() {
            // The kernel's ovl_lower_uuid_ok: a handle names its filesystem
            // by UUID, so two lower filesystems (other than the upper's) with
            // one UUID, two without one among them, cannot both be used.
            if l.dev != upper.dev && seen[l.dev] == nil {
                if seen.values.contains(uuids[l.index]) {
                    warn("index=on: lowerdir \(l.path) is on a filesystem with the same UUID as another lower layer's; falling back to index=off")
                    return nil
                }
                seen[l.dev] = uuids[l.index]
            }
            guard handle(l.root.raw, nil, uuid: uuids[l.index], upper: false) != nil else {
                warn("index=on: lowerdir \(l.path) cannot give file handles; falling back to index=off")
                return nil
            }
        }
        guard let lowerRoot = handle(layers[1].root.raw, nil, uuid: uuids[1], upper: false),
              let upperRoot = handle(upper.root.raw, nil, uuid: uuids[0], upper: true) else {
            warn("index=on: upperdir \(upper.path) cannot give file handles; falling back to index=off")
            return nil
        }
        if !verifyOrSet(upper.root.raw, prefix + "origin", lowerRoot) {
            throw OverlaySetupError(.layer(.staleNFSFileHandle),
                "index=on: upperdir \(upper.path) was made over other lower layers (its origin is not the first lowerdir \(layers[1].path)); mount it with its own layers, or with index=off")
        }
        if mkdirat(wfd, "index", 0) != 0 && currentErrno() != .fileExists {
            throw OverlaySetupError.last("workdir \(workdirPath)/index")
        }
        let dir: OwnedFD
        do throws(Errno) {
            dir = OwnedFD(try Sys.openat(wfd, "index", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC))
        } catch {
            throw OverlaySetupError.failed("workdir \(workdirPath)/index", error)
        }
        let fd = dir.raw
        if !verifyOrSet(fd, prefix + "upper", upperRoot) {
            throw OverlaySetupError(.layer(.staleNFSFileHandle),
                "index=on: workdir \(workdirPath)/index belongs to another upperdir than \(upper.path); use this upper's own workdir, or an empty one")
        }
        cleanIndex(fd, nlinkXattr: prefix + "nlink")
        return UnionIndex(dir: dir, uuids: uuids)
    }

    /// Whether directory `dir`'s xattr `name` holds `value`; records it
    /// when absent. (`dir` may be O_PATH: the calls go through a real open.)
    static func verifyOrSet(_ dir: Int32, _ name: String, _ value: [UInt8]) -> Bool {
        guard let file = try? Sys.openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) else { return false }
        let fd = file.raw
        var buf = [UInt8](repeating: 0, count: 256)
        do throws(Errno) {
            let n = try Sys.getxattr(fd: fd, name, into: &buf)
            return Array(buf[0..<n]) == value
        } catch {
            guard error == .noData else { return false }
            return (try? Sys.setxattr(fd: fd, name, bytes: value)) != nil
        }
    }

    /// Removes leftovers (`#` names) and orphans: an entry that is its
    /// inode's only link and whose union link count is zero (every name
    /// removed while the removal of the entry itself was cut short).
    static func cleanIndex(_ fd: Int32, nlinkXattr: String) {
        guard let names = try? Sys.directoryNames(fd) else { return }
        var doomed: [String] = []
        for name in names {
            if name.hasPrefix("#") { doomed.append(name); continue }
            var st = stat()
            guard fstatat(fd, name, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & Linux.S_IFMT != Linux.S_IFDIR, st.st_nlink == 1 else { continue }
            switch readNlink(fd, name, nlinkXattr) {
            case nil: doomed.append(name)
            case .upper(let diff)?: if 1 + diff <= 0 { doomed.append(name) }
            case .lower?: break
            }
        }
        for n in doomed { removeTree(fd, n) }
    }

    /// `overlay.nlink`: the union's link count relative to the upper or the lower inode's.
    enum NlinkDiff: Equatable {
        case upper(Int)
        case lower(Int)
    }

    static func readNlink(_ dfd: Int32, _ name: UnsafePointer<CChar>, _ attr: String) -> NlinkDiff? {
        var buf = [UInt8](repeating: 0, count: 13)
        let n = buf.withUnsafeMutableBytes { (try? Sys.getxattr(dfd, name, attr, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<12]))) ?? -1 }
        guard n >= 3, buf[0] == UInt8(ascii: "U") || buf[0] == UInt8(ascii: "L"),
              buf[1] == UInt8(ascii: "+") || buf[1] == UInt8(ascii: "-"),
              let v = Int(String(decoding: buf[1..<n], as: UTF8.self)) else { return nil }
        return buf[0] == UInt8(ascii: "U") ? .upper(v) : .lower(v)
    }

    static func readNlink(_ dfd: Int32, _ name: String, _ attr: String) -> NlinkDiff? {
        name.withCString { readNlink(dfd, $0, attr) }
    }

    var nlinkXattr: String { config.xattrPrefix + "nlink" }
    var kernelOriginXattr: String { config.xattrPrefix + "origin" }

    /// Records the union's link count `nlink` relative to the real count
    /// `upperNlink`, as the kernel does before each change ("U+N").
    func writeNlink(_ dfd: Int32, _ name: UnsafePointer<CChar>, nlink: Int, upperNlink: Int) {
        writeNlinkDiff(dfd, name, "U", nlink - upperNlink)
    }

    /// `overlay.nlink` as the kernel writes it: "U" or "L", then a signed number.
    func writeNlinkDiff(_ dfd: Int32, _ name: UnsafePointer<CChar>, _ base: String, _ diff: Int) {
        let v = base + (diff >= 0 ? "+" : "") + String(diff)
        try? Sys.setxattr(dfd, name, nlinkXattr, v)
    }

    /// The index entry of the lower file `pfd/name` in layer `layer`: its
    /// name, and its stat when it exists.
    func indexEntry(_ pfd: Int32, _ name: UnsafePointer<CChar>, layer: Int) -> (name: [UInt8], stat: stat?)? {
        guard let index, let fh = Self.handle(pfd, name, uuid: index.uuids[layer], upper: false) else { return nil }
        let hex = Self.indexName(fh)
        var st = stat()
        let found = hex.withUnsafeBytes { b -> Bool in
            guard let c = b.baseAddress?.assumingMemoryBound(to: CChar.self) else { return false }
            return fstatat(index.dir.raw, c, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0
        }
        return (hex, found ? st : nil)
    }
}

extension Overlay {
    func readXattr(_ dfd: Int32, _ name: UnsafePointer<CChar>, _ attr: String) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBytes { (try? Sys.getxattr(dfd, name, attr, into: $0)) ?? -1 }
        return n > 0 ? Array(buf[0..<n]) : nil
    }

    /// The link count of `p/name` in the top-most lower layer that has it.
    func lowerNlink(_ p: OverlayNode, _ name: FileName) -> UInt64? {
        for l in p.state.withLock({ $0.place.lowerDirs }) {
            var st = stat()
            let found = (try? withDirFD(p, l) { (pfd: Int32) -> Bool in fstatat(pfd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 }) ?? false
            if found { return UInt64(st.st_nlink) }
        }
        return nil
    }

    /// The union's link count from `overlay.nlink` on `dfd/name`.
    func unionNlink(_ dfd: Int32, _ name: UnsafePointer<CChar>, upperNlink: UInt64, lowerNlink: () -> UInt64?) -> UInt64? {
        switch Self.readNlink(dfd, name, nlinkXattr) {
        case .upper(let d)?:
            let v = Int(upperNlink) + d
            return v > 0 ? UInt64(v) : nil
        case .lower(let d)?:
            guard let l = lowerNlink() else { return nil }
            let v = Int(l) + d
            return v > 0 ? UInt64(v) : nil
        case nil: return nil
        }
    }

    /// index=on: whether the non-directory found at `p/name` is indexed
    /// (the kernel's ovl_lookup_index), and then its index entry and the
    /// union's link count. A lower name whose inode was copied up through
    /// another name shows the copy (its data and metadata) with the lower
    /// file's inode number, as the kernel shows it.
    func findIndexed(_ p: OverlayNode, _ name: FileName, _ f: inout Found) throws(Errno) {
        guard let index else { return }
        if f.inUpper {
            guard f.stat.st_nlink > 1 else { return }
            let upperNlink = UInt64(f.stat.st_nlink)
            let r = try withDirFD(p, 0) { (pfd: Int32) -> (hex: [UInt8], nlink: UInt64?, lower: UInt64)? in
                guard let relative = Self.readNlink(pfd, name.pointer, nlinkXattr),
                      let fh = readXattr(pfd, name.pointer, kernelOriginXattr) else { return nil }
                // A count relative to the lower file's (left so by a link-up
                // killed half way) needs that count at every getattr too.
                var lower: UInt64 = 0
                if case .lower = relative { lower = lowerNlink(p, name) ?? 0 }
                return (Self.indexName(fh), unionNlink(pfd, name.pointer, upperNlink: upperNlink) { lower > 0 ? lower : nil }, lower)
            }
            guard let r else { return }
            f.indexName = r.hex
            f.lowerNlink = r.lower
            if let n = r.nlink { f.stat.st_nlink = nlink_t(n) }
            return
        }
        guard f.stat.st_nlink > 1, let l = f.lower, upper != nil else { return }
        f.lowerNlink = UInt64(f.stat.st_nlink)
        guard let e = try withDirFD(p, l, { (pfd: Int32) in indexEntry(pfd, name.pointer, layer: l) }), let ist = e.stat,
              ist.st_mode & Linux.S_IFMT == f.stat.st_mode & Linux.S_IFMT else { return }
        let lowerIno = f.stat.st_ino, lowerCount = f.lowerNlink
        f.indexName = e.name
        f.indexKey = InodeKey(dev: UInt64(ist.st_dev), ino: UInt64(ist.st_ino))
        // A metadata-only entry (metacopy=on): the data is this lower file,
        // a link of the entry's origin.
        if config.metacopy, try withStoredName(e.name, { (c: UnsafePointer<CChar>) -> Bool in hasXattr(index.dir.raw, c, metacopyXattr) }) {
            f.metacopy = true
            f.dataLayer = l
        }
        f.stat = ist
        f.stat.st_ino = lowerIno
        let n = try withStoredName(e.name) { (c: UnsafePointer<CChar>) -> UInt64? in
            unionNlink(index.dir.raw, c, upperNlink: UInt64(ist.st_nlink)) { lowerCount }
        }
        f.stat.st_nlink = nlink_t(n ?? lowerCount)
    }

    /// The union's link count of an indexed node whose top location shows
    /// `st` (getattr).
    func indexedNlink(_ n: OverlayNode, _ st: inout stat) {
        guard let index, let (hex, lower) = n.state.withLock({ s in s.place.indexName.map { ($0, s.place.lowerNlink) } }) else { return }
        let real = UInt64(st.st_nlink)
        let v = (try? withStoredName(hex) { (c: UnsafePointer<CChar>) -> UInt64? in
            unionNlink(index.dir.raw, c, upperNlink: real) { lower > 0 ? lower : nil }
        }) ?? nil
        if let v { st.st_nlink = nlink_t(v) }
    }

    /// The kernel keeps the union's link count N of an indexed inode
    /// relative to one real count, and every change here is made so that
    /// the relation holds after each single system call, whenever the daemon
    /// is killed: a name is removed or replaced only as an upper link of the
    /// inode (removing it changes N and the real count U together, so
    /// "U+d" stays true), and an upper link is added to an existing name
    /// (ovl_link_up: U changes alone) under "L+d", relative to the lower
    /// file's count, which nothing changes.
    struct NlinkChange {
        let hex: [UInt8]
        let nlink: Int
    }

    /// The union's count of the indexed inode behind `f` now, recorded
    /// relative to its real count, before a change of both.
    func beginNlinkChange(_ f: Found) -> NlinkChange? {
        guard let index, let hex = f.indexName else { return nil }
        return try? withStoredName(hex) { (c: UnsafePointer<CChar>) -> NlinkChange? in
            var st = stat()
            guard fstatat(index.dir.raw, c, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
            let lower = f.lowerNlink
            guard let n = unionNlink(index.dir.raw, c, upperNlink: UInt64(st.st_nlink), lowerNlink: { lower > 0 ? lower : nil }) else { return nil }
            if case .lower? = Self.readNlink(index.dir.raw, c, nlinkXattr) {
                writeNlink(index.dir.raw, c, nlink: Int(n), upperNlink: Int(st.st_nlink))
            }
            return NlinkChange(hex: hex, nlink: Int(n))
        }
    }

    /// After a change that took `-delta` names: with none left, the index
    /// entry goes (killed before, the mount's clean-up removes it: an
    /// orphan, as the kernel's ovl_indexdir_cleanup finds it).
    func endNlinkChange(_ c: NlinkChange?, by delta: Int) {
        guard let c, let index, c.nlink + delta <= 0 else { return }
        _ = try? withStoredName(c.hex) { (name: UnsafePointer<CChar>) in unlinkat(index.dir.raw, name, 0) }
    }

    /// Before one name of a lower hard link is removed or replaced, its
    /// inode goes into the index (the kernel's ovl_nlink_start copies it
    /// up), so that its other names keep one count. Returns the name
    /// resolved again.
    func indexBeforeChange(_ p: OverlayNode, _ name: FileName, _ f: Found) throws(Errno) -> Found {
        guard index != nil, !f.inUpper, f.indexName == nil, f.lowerNlink > 1 else { return f }
        let (n, _) = try lookup(p, name)
        defer { forget(n.id, count: 1) }
        // Only the count changes: with metacopy=on the kernel indexes the
        // metadata alone (its ovl_nlink_start), and so do we: removing one
        // name of a large lower hard link copies no data.
        try copyUp(n, metadataOnly: config.metacopy)
        return try resolve(p, name)
    }

    /// Gives a lower name of an indexed inode its own upper link (the
    /// kernel's ovl_link_up), before a change that removes or moves the
    /// name itself. The count is held relative to the lower file's across
    /// the link, then relative to the inode's own again.
    func linkUpName(_ p: OverlayNode, _ name: FileName, _ f: Found) throws(Errno) -> Found {
        guard let index, !f.inUpper, let hex = f.indexName else { return f }
        try copyUp(p)
        let lower = Int(f.lowerNlink)
        try withDirFD(p, 0) { (ufd: Int32) throws(Errno) in
            try withStoredName(hex) { (h: UnsafePointer<CChar>) throws(Errno) in
                var st = stat()
                try check(fstatat(index.dir.raw, h, &st, Linux.AT_SYMLINK_NOFOLLOW))
                let n = unionNlink(index.dir.raw, h, upperNlink: UInt64(st.st_nlink)) { lower > 0 ? UInt64(lower) : nil }
                if let n, lower > 0 { writeNlinkDiff(index.dir.raw, h, "L", Int(n) - lower) }
                try check(linkat(index.dir.raw, h, ufd, name.pointer, 0))
                if let n { writeNlink(index.dir.raw, h, nlink: Int(n), upperNlink: Int(st.st_nlink) + 1) }
            }
        }
        return try resolve(p, name)
    }
}
