import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Name resolution across layers (the kernel's namei.c). Every component is
/// looked up relative to its parent's descriptor in that layer, with
/// O_NOFOLLOW: a symlink inside a layer is never followed while resolving.
extension Overlay {
    /// Calls `body` with an O_PATH descriptor of directory `n` in layer `l`.
    func withDirFD<R: ~Copyable>(_ n: OverlayNode, _ l: Int, _ body: (Int32) throws(Errno) -> R) throws(Errno) -> R {
        let (cached, handle) = n.state.withLock { ($0.caches.fds[l], $0.caches.handles[l]) }
        if let fd = cached { return try body(fd.raw) }
        var fd: UniqueFD
        if let h = handle, let byHandle = try? layers[l].open(handle: h) {
            fd = byHandle
        } else {
            let s = n.snapshot
            guard let parent = s.place.parent else { throw .noSuchFileOrDirectory }
            if let path = s.place.lowerPaths[l] {
                // Below a redirect: where the directory is in that layer.
                fd = try openPath(layers[l].root.raw, path)
            } else {
                fd = try withDirFD(parent, l) { (pfd: Int32) throws(Errno) -> UniqueFD in
                    try withStoredName(s.place.name) { (c) throws(Errno) -> UniqueFD in
                        try Sys.openat(pfd, c, Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    }
                }
            }
        }
        if let owned = fdBudget.cache(&fd) {
            n.state.withLock { $0.caches.fds[l] = owned }
            return try body(owned.raw)
        }
        // Over the budget: keep the directory's handle instead, so the next
        // open is one call rather than a walk of names from the nearest
        // cached ancestor (each a chance to meet a rename in flight).
        if handle == nil && handlesWork.load(ordering: .relaxed), let h = try? Sys.fileHandle(fd.raw) {
            // Only a handle that opens is worth keeping (open_by_handle_at
            // needs CAP_DAC_READ_SEARCH; rootless mounts walk names).
            do throws(Errno) {
                _ = try layers[l].open(handle: h)
                n.state.withLock { $0.caches.handles[l] = h }
            } catch {
                if error == .notPermitted { handlesWork.store(false, ordering: .relaxed) }
            }
        }
        return try body(fd.raw)
    }

    /// Opens a directory by components from `root`, never following a symlink.
    func openPath(_ root: Int32, _ components: [String]) throws(Errno) -> UniqueFD {
        var cur = try Sys.dup(root)
        for c in components {
            cur = try Sys.openat(cur.raw, c, Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
        return cur
    }

    /// Where a directory's lower parts are: its redirect, or its parent's
    /// lower path and its name.
    func lowerPath(_ n: OverlayNode) -> [String] {
        let s = n.snapshot
        if let r = s.place.redirect { return r }
        guard let p = s.place.parent else { return [] }
        return lowerPath(p) + [String(decoding: s.place.name.dropLast(), as: UTF8.self)]
    }

    /// The node's path in lower layer `l`, as lookups found it there.
    func layerPath(_ n: OverlayNode, _ l: Int) -> [String] {
        let s = n.state.withLock { (path: $0.place.lowerPaths[l], parent: $0.place.parent, name: $0.place.name) }
        if let p = s.path { return p }
        guard let parent = s.parent else { return [] }
        return layerPath(parent, l) + [String(decoding: s.name.dropLast(), as: UTF8.self)]
    }

    /// The redirect recorded on an upper directory, as components from the
    /// lower roots (an absolute value), or relative to `parentPath`.
    func readRedirect(_ pfd: Int32, _ name: UnsafePointer<CChar>, parentPath: () -> [String]) -> [String]? {
        // Read into the stack: most upper directories have no redirect, and
        // this runs on every lookup of one.
        let value = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { buf -> String? in
            let n = (try? Sys.getxattr(pfd, name, redirectXattr, into: UnsafeMutableRawBufferPointer(buf))) ?? -1
            return n > 0 ? String(decoding: UnsafeBufferPointer(rebasing: buf[0..<n]), as: UTF8.self) : nil
        }
        guard let v = value else { return nil }
        let parts = v.split(separator: "/").map(String.init)
        if parts.contains("..") || parts.isEmpty { return nil }
        return v.hasPrefix("/") ? parts : parentPath() + parts
    }

    /// Calls `body(parentFD, name, layer)` at the node's top location.
    func atTop<R: ~Copyable>(_ n: OverlayNode, _ body: (Int32, UnsafePointer<CChar>, Int) throws(Errno) -> R) throws(Errno) -> R {
        let s = n.state.withLock { (parent: $0.place.parent, name: $0.place.name, unlinked: $0.place.unlinked, orphan: $0.place.orphan, layer: $0.place.topLayer,
                                    indexName: $0.place.indexName) }
        let layer = s.layer
        if !s.unlinked, let hex = s.indexName, let index {
            // An indexed inode: its index entry is one of its links whatever
            // names it has in the upper layer now.
            return try withStoredName(hex) { (c: UnsafePointer<CChar>) throws(Errno) -> R in try body(index.dir.raw, c, 0) }
        }
        guard let parent = s.parent else {
            // The root: its own descriptor, named through /proc.
            return try withDirFD(n, layer) { (fd: Int32) throws(Errno) -> R in
                try withCString("/proc/self/fd/\(fd)") { (c: UnsafePointer<CChar>) throws(Errno) -> R in try body(AT_FDCWD, c, layer) }
            }
        }
        if s.unlinked {
            // An open file without a name (unlinked, or O_TMPFILE): its
            // descriptor, named through /proc.
            guard let o = s.orphan else { throw .noSuchFileOrDirectory }
            return try withCString("/proc/self/fd/\(o.raw)") { (c: UnsafePointer<CChar>) throws(Errno) -> R in try body(AT_FDCWD, c, 0) }
        }
        return try withDirFD(parent, layer) { (pfd: Int32) throws(Errno) -> R in
            try withStoredName(s.name) { (c: UnsafePointer<CChar>) throws(Errno) -> R in try body(pfd, c, layer) }
        }
    }

    /// Layers to search below directory `p`, top first.
    func searchLayers(_ s: OverlayNode.State) -> [Int] {
        s.place.inUpper && upper != nil ? [0] + s.place.lowerDirs : s.place.lowerDirs
    }

    /// A whiteout: a 0/0 character device, or an empty regular file with the
    /// overlay.whiteout xattr. The kernel (6.7+) honours the latter on every
    /// lookup, but hides it from listings only in a directory marked
    /// `overlay.opaque=x`; `marked` says which applies and is asked only for
    /// such a file.
    func isWhiteout(_ st: stat, _ pfd: Int32, _ name: UnsafePointer<CChar>, marked: @autoclosure () -> Bool) -> Bool {
        let type = st.st_mode & Linux.S_IFMT
        if type == Linux.S_IFCHR { return st.st_rdev == 0 }
        if type == Linux.S_IFREG && st.st_size == 0 && marked() {
            return hasXattr(pfd, name, whiteoutXattr) || hasXattr(pfd, name, otherWhiteoutXattr)
        }
        return false
    }

    var otherWhiteoutXattr: String { OverlayFormat.xattr("whiteout", user: !config.userXattr) }

    /// Whether the directory `dfd` (any descriptor, O_PATH too) carries the
    /// `overlay.opaque=x` mark: it may hold xattr whiteouts.
    func marksXWhiteouts(_ dfd: Int32) -> Bool {
        // getxattr, not lgetxattr: the /proc link leads to the descriptor's own file.
        let path = "/proc/self/fd/\(dfd)"
        var v: UInt8 = 0
        func marked(_ attr: String) -> Bool {
            withUnsafeMutableBytes(of: &v) { b in (try? PathXattr.get(path, attr, into: b, follow: true)) == 1 } && v == UInt8(ascii: "x")
        }
        return marked(opaqueXattrs.0) || marked(opaqueXattrs.1)
    }

    /// `marksXWhiteouts` for directory `n` in layer `l`, read once.
    func marksXWhiteouts(_ n: OverlayNode, _ l: Int) -> Bool {
        if let known = n.state.withLock({ $0.caches.xwhiteouts[l] }) { return known }
        let v = (try? withDirFD(n, l) { (fd: Int32) -> Bool in marksXWhiteouts(fd) }) ?? false
        n.state.withLock { $0.caches.xwhiteouts[l] = v }
        return v
    }

    func hasXattr(_ pfd: Int32, _ name: UnsafePointer<CChar>, _ attr: String) -> Bool {
        Sys.hasXattr(pfd, name, attr)
    }

    /// An opaque directory hides everything below it: the opaque xattr
    /// (either namespace is read) or a `.wh..wh..opq` entry inside.
    func isOpaque(_ pfd: Int32, _ name: UnsafePointer<CChar>) -> Bool { opaqueMark(pfd, name) == .opaque }

    enum OpaqueMark { case none, opaque, xwhiteouts }

    /// The directory's opaque mark: `y` (opaque, or a `.wh..wh..opq` inside)
    /// or `x` (not opaque, may hold xattr whiteouts).
    func opaqueMark(_ pfd: Int32, _ name: UnsafePointer<CChar>) -> OpaqueMark {
        // The two names in turn, without building an array on every lookup
        // of a directory.
        func mark(_ attr: String) -> UInt8 {
            var v: UInt8 = 0
            let n = withUnsafeMutableBytes(of: &v) { (try? Sys.getxattr(pfd, name, attr, into: $0)) ?? -1 }
            return n == 1 ? v : 0
        }
        let first = mark(opaqueXattrs.0)
        if first == UInt8(ascii: "y") { return .opaque }
        let second = mark(opaqueXattrs.1)
        if second == UInt8(ascii: "y") { return .opaque }
        let x = first == UInt8(ascii: "x") || second == UInt8(ascii: "x")
        return hasOpaqueMarker(pfd, name) ? .opaque : (x ? .xwhiteouts : .none)
    }

    /// Whether the directory holds a `.wh..wh..opq` marker (the OCI and
    /// fuse-overlayfs rootless format of an opaque directory).
    func hasOpaqueMarker(_ pfd: Int32, _ name: UnsafePointer<CChar>) -> Bool {
        // NAME/.wh..wh..opq, built on the stack; NAME was just seen to be a directory.
        let len = strlen(name)
        guard len + 13 < 256 else { return false }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: len + 14) { buf -> Bool in
            guard let b = buf.baseAddress else { return false }
            b.update(from: name, count: len)
            let tail: StaticString = "/.wh..wh..opq"
            tail.withUTF8Buffer { t in for i in 0..<t.count { b[len + i] = CChar(bitPattern: t[i]) } }
            b[len + 13] = 0
            var st = stat()
            return fstatat(pfd, b, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0
        }
    }

    /// Both namespaces are read, the mount's own first.
    var opaqueXattrs: (String, String) {
        (OverlayFormat.xattr("opaque", user: config.userXattr), OverlayFormat.xattr("opaque", user: !config.userXattr))
    }

    /// Whether `.wh.NAME` (the OCI / rootless whiteout) exists beside `name`.
    func hasWhiteoutFile(_ pfd: Int32, _ name: FileName) -> Bool {
        guard name.count + 4 < 256 else { return false }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: name.count + 5) { buf in
            guard let b = buf.baseAddress else { return false }
            b[0] = 0x2E; b[1] = 0x77; b[2] = 0x68; b[3] = 0x2E  // ".wh."
            (b + 4).update(from: name.pointer, count: name.count)
            b[name.count + 4] = 0
            var st = stat()
            return fstatat(pfd, b, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0
        }
    }

    /// FNV-1a over the name, optionally after the `.wh.` prefix; no allocation.
    @inline(__always)
    static func nameHash(_ name: FileName, whiteoutPrefix: Bool = false) -> UInt64 {
        var h: UInt64 = 0xcbf29ce484222325
        if whiteoutPrefix { for b: UInt8 in [0x2E, 0x77, 0x68, 0x2E] { h = (h ^ UInt64(b)) &* 0x100000001b3 } }
        for i in 0..<name.count { h = (h ^ UInt64(UInt8(bitPattern: name.pointer[i]))) &* 0x100000001b3 }
        return h
    }

    /// With this many layers below a directory, a lookup reads each lower
    /// layer's entries once rather than probing every layer per name.
    static let nameCacheLayers = 8

    /// Whether lower layer `l` of directory `p` may hold `name` (or its
    /// `.wh.` whiteout); true when unknown.
    func mayHold(_ p: OverlayNode, _ l: Int, _ name: FileName, _ hash: UInt64, _ whHash: UInt64) throws(Errno) -> Bool {
        if l == 0 && upper != nil { return true }
        if let set = p.state.withLock({ $0.caches.lowerNames[l] }) { return set.contains(hash) || set.contains(whHash) }
        guard p.state.withLock({ $0.place.lowerDirs.count }) >= Self.nameCacheLayers else { return true }
        let set = try withDirFD(p, l) { (fd: Int32) throws(Errno) -> Set<UInt64> in try namesIn(fd) }
        p.state.withLock { $0.caches.lowerNames[l] = set }
        return set.contains(hash) || set.contains(whHash)
    }

    /// The name hashes of a layer directory, from one pass of getdents.
    func namesIn(_ dfd: Int32) throws(Errno) -> Set<UInt64> {
        var set = Set<UInt64>()
        try forEachDirent(dfd) { _, _, _, name in set.insert(Self.nameHash(name)) }
        return set
    }

    /// The result of resolving a name: where it is and what it merges.
    struct Found {
        var stat: stat          // at the top location
        var inUpper: Bool
        var lower: Int?         // top-most lower layer holding it
        var lowerDirs: [Int]    // directories: contributing lower layers
        var redirect: [String]? = nil
        /// A metadata-only copy (metacopy=on) and the lower layer of its data.
        var metacopy = false
        var dataLayer: Int? = nil
        /// Per lower layer, where it is there when a redirect led elsewhere.
        var lowerPaths: [Int: [String]] = [:]
        /// Directories: the layers (of those looked at) marked `overlay.opaque=x`.
        var xwhiteouts: [Int] = []
        var checkedMarks: [Int] = []
        /// index=on: the inode is indexed, under this entry name (hex,
        /// NUL-terminated) in `workdir/index`; `stat` is then that inode's,
        /// with the origin's inode number and the union's link count.
        var indexName: [UInt8]? = nil
        /// The real inode of an indexed lower name: the table's key.
        var indexKey: InodeKey? = nil
        /// A lower non-directory's link count in its layer (index=on).
        var lowerNlink: UInt64 = 0
        /// The layer of its top location (a name outside the upper layer is
        /// in a lower one).
        var topLayer: Int { inUpper ? 0 : lower ?? 0 }
    }

    /// Where a redirect leads in the lower layers from layer `from` down:
    /// each layer holding the entry and the path it has there. Walked as the
    /// kernel's ovl_lookup_layer walks it: from each layer's root, component
    /// by component; a whiteout or a non-directory on the way ends the
    /// search (no layer below counts), an opaque directory on the way or at
    /// the end makes its layer the last. A redirect met in a lower layer (an
    /// upper that became a lower one) is followed for the layers below it,
    /// as the kernel follows one anywhere. For a directory every layer that
    /// merges is returned; for a metadata-only copy's data (`file`), the
    /// first regular file that is not one itself, or nothing.
    func redirectedLowers(_ start: [String], from: Int, file: Bool = false) -> [(layer: Int, path: [String])] {
        var path = start
        var out: [(layer: Int, path: [String])] = []
        guard !path.isEmpty else { return out }
        for l in max(from, firstLower)..<layers.count {
            var stop = false, opaqueOnTheWay = false
            let parentFD = walkToParent(layers[l].root.raw, Array(path.dropLast()), stop: &stop, opaque: &opaqueOnTheWay)
            if stop { return file ? [] : out }
            guard parentFD.isOpen else {
                if opaqueOnTheWay { return file ? [] : out }
                continue
            }
            let pfd = parentFD.raw
            let last = path[path.count - 1]
            var st = stat()
            if fstatat(pfd, last, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 {
                if opaqueOnTheWay || FileName.with(last, { hasWhiteoutFile(pfd, $0) }) { return file ? [] : out }
                continue
            }
            if isWhiteout(st, pfd, last, marked: true) { return file ? [] : out }
            let type = st.st_mode & Linux.S_IFMT
            if file {
                guard type == Linux.S_IFREG else { return [] }
                guard hasXattr(pfd, last, metacopyXattr) else { return [(l, path)] }
            } else {
                guard type == Linux.S_IFDIR else { return out }
                out.append((l, path))
                if opaqueOnTheWay || isOpaque(pfd, last) { return out }
            }
            if file && opaqueOnTheWay { return [] }
            // A redirect here leads the layers below elsewhere.
            if let r = readRedirect(pfd, last, parentPath: { Array(path.dropLast()) }) { path = r }
        }
        return file ? [] : out
    }

    /// Resolves `name` in directory `p` across layers. ENOENT when absent or
    /// whited out.
    /// What probing one layer for a name found (the kernel's
    /// ovl_lookup_single answers the same three ways).
    enum LayerProbe {
        /// Not in this layer: look further down.
        case absent
        /// A whiteout: the name is gone, whatever is below.
        case whiteout
        /// An entry; a directory may be opaque (nothing below merges) or
        /// marked to hold xattr whiteouts.
        case entry(opaque: Bool, xwhiteouts: Bool)
        /// A regular file holding metadata only (`overlay.metacopy`): its
        /// data is further down, at the same path or at `redirect`.
        case metacopy(redirect: [String]?)
    }

    func resolve(_ p: OverlayNode, _ name: FileName) throws(Errno) -> Found {
        var ignored = false
        return try resolve(p, name, upperWhiteout: &ignored)
    }

    /// `upperWhiteout` is set when the upper layer holds a whiteout for the
    /// name (what a create must clear first).
    func resolve(_ p: OverlayNode, _ name: FileName, upperWhiteout: inout Bool) throws(Errno) -> Found {
        var f = try resolveInLayers(p, name, upperWhiteout: &upperWhiteout)
        if index != nil && f.stat.st_mode & Linux.S_IFMT != Linux.S_IFDIR { try findIndexed(p, name, &f) }
        return f
    }

    private func resolveInLayers(_ p: OverlayNode, _ name: FileName, upperWhiteout: inout Bool) throws(Errno) -> Found {
        if name.count > 255 { throw .fileNameTooLong }
        // `.wh.` names are whiteout metadata in the formats we read: never
        // visible by name, as they are hidden in listings.
        if OverlayFormat.isWhiteoutName(name) {
            throw .noSuchFileOrDirectory
        }
        // Only what the search needs, not a copy of the whole state (each
        // of its arrays and dictionaries would be retained and released).
        let (searchUpper, lowerDirs, upperClean) = p.state.withLock { ($0.place.inUpper && upper != nil, $0.place.lowerDirs, $0.caches.upperHoldsNoWhFiles) }
        var found: Found? = nil
        let hash = Self.nameHash(name), whHash = Self.nameHash(name, whiteoutPrefix: true)
        layers: for i in (searchUpper ? -1 : 0)..<lowerDirs.count {
            let l = i < 0 ? 0 : lowerDirs[i]
            if !(try mayHold(p, l, name, hash, whHash)) { continue }
            // In the last layer searched, a `.wh.` file hides nothing that
            // is not already absent: the second probe is skipped there (a
            // directory made through the union searches its upper alone).
            let last = i == lowerDirs.count - 1
            var st = stat()
            var lowerRedirect: [String]? = nil
            let probe = try withDirFD(p, l) { (pfd: Int32) -> LayerProbe in
                if fstatat(pfd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 {
                    // An upper copy this mount made holds no `.wh.` files.
                    let clean = i < 0 && upperClean
                    return !last && !clean && hasWhiteoutFile(pfd, name) ? .whiteout : .absent
                }
                if isWhiteout(st, pfd, name.pointer, marked: true) { return .whiteout }
                if st.st_mode & Linux.S_IFMT == Linux.S_IFREG && mayBeMetacopy(l)
                    && hasXattr(pfd, name.pointer, metacopyXattr) {
                    return .metacopy(redirect: readRedirect(pfd, name.pointer) { l == 0 && upper != nil ? lowerPath(p) : layerPath(p, l) })
                }
                guard st.st_mode & Linux.S_IFMT == Linux.S_IFDIR else { return .entry(opaque: false, xwhiteouts: false) }
                // Most lower directories carry no xattrs at all: one
                // listxattr that says so answers both opaque reads and the
                // redirect read at once. (Upper copies made here carry
                // Strata's origin record, so the upper layer reads them.)
                let inLower = !(l == 0 && upper != nil)
                let bare = inLower && (try? Sys.listxattr(pfd, name.pointer)) == 0
                let mark = bare ? (hasOpaqueMarker(pfd, name.pointer) ? .opaque : .none) : opaqueMark(pfd, name.pointer)
                // A lower directory that was moved in an upper since made
                // a lower layer: the layers below continue at its redirect.
                if mark != .opaque && inLower && !bare {
                    lowerRedirect = readRedirect(pfd, name.pointer) { layerPath(p, l) }
                }
                switch mark {
                case .opaque: return .entry(opaque: true, xwhiteouts: false)
                case .xwhiteouts: return .entry(opaque: false, xwhiteouts: true)
                case .none: return .entry(opaque: false, xwhiteouts: false)
                }
            }
            let opaque: Bool, markedX: Bool
            var metacopy = false
            switch probe {
            case .absent: continue layers
            case .whiteout:                                       // nothing below counts
                if l == 0 && upper != nil { upperWhiteout = true }
                break layers
            case .entry(let o, let x): opaque = o; markedX = x
            case .metacopy(let r):
                // The kernel refuses to follow one it was not told to trust.
                if !config.metacopy { throw .notPermitted }
                opaque = false; markedX = false; metacopy = true
                var f: Found
                if let known = found {
                    // A middle layer's metadata-only copy: the data is further down still.
                    guard known.metacopy && known.dataLayer == nil else { break layers }
                    f = known
                    if f.lower == nil { f.lower = l }
                } else {
                    f = Found(stat: st, inUpper: l == 0 && upper != nil, lower: l == 0 && upper != nil ? nil : l, lowerDirs: [])
                    f.metacopy = true
                    // Only the upper's own redirect is the node's (what a
                    // later move records); one met below only leads there.
                    if l == 0 && upper != nil { f.redirect = r }
                }
                if let r {
                    // Moved or linked: its data is where the redirect says.
                    guard let d = redirectedLowers(r, from: l + 1, file: true).first else { throw .ioError }
                    f.dataLayer = d.layer
                    f.lowerPaths[d.layer] = d.path
                    if f.lower == nil { f.lower = d.layer }
                    return f
                }
                found = f
                continue layers
            }
            let isDir = st.st_mode & Linux.S_IFMT == Linux.S_IFDIR
            if found == nil && isDir && l == 0 && upper != nil && !opaque, let r = try withDirFD(p, 0, { (pfd: Int32) -> [String]? in
                readRedirect(pfd, name.pointer) { lowerPath(p) }
            }) {
                // A renamed directory: its lower parts are at the redirect.
                let lowers = redirectedLowers(r, from: firstLower)
                var f = Found(stat: st, inUpper: true, lower: lowers.first?.layer, lowerDirs: lowers.map(\.layer), redirect: r)
                for x in lowers { f.lowerPaths[x.layer] = x.path }
                return f
            }
            if var f = found, f.metacopy, f.dataLayer == nil {
                // A metadata-only copy's data: the first regular file below
                // that is not one itself (anything else: the data is lost).
                guard !metacopy, st.st_mode & Linux.S_IFMT == Linux.S_IFREG else { break }
                f.dataLayer = l
                if f.lower == nil { f.lower = l }
                found = f
                break
            }
            if var f = found {
                // Below a directory only directories merge; anything else ends it.
                guard isDir else { break }
                f.lowerDirs.append(l)
                if f.lower == nil { f.lower = l }
                f.checkedMarks.append(l)
                if markedX { f.xwhiteouts.append(l) }
                found = f
            } else {
                found = Found(stat: st, inUpper: l == 0 && upper != nil, lower: l == 0 && upper != nil ? nil : l,
                              lowerDirs: isDir && !(l == 0 && upper != nil) ? [l] : [])
                if isDir {
                    found?.checkedMarks = [l]
                    if markedX { found?.xwhiteouts = [l] }
                }
                if !isDir { break }
            }
            if opaque { break }                                   // opaque directory
            if let r = lowerRedirect, var f = found {
                // The layers below continue where this layer's redirect says.
                for x in redirectedLowers(r, from: l + 1) {
                    f.lowerDirs.append(x.layer)
                    f.lowerPaths[x.layer] = x.path
                }
                found = f
                break
            }
        }
        guard let f = found else { throw .noSuchFileOrDirectory }
        // Metadata whose data is not found: the kernel's EIO.
        if f.metacopy && f.dataLayer == nil { throw .ioError }
        return f
    }

    /// Whether a regular file in layer `l` must be asked for the metacopy
    /// mark: always in the upper layer (where a mount without metacopy=on
    /// must refuse one, as the kernel does), in lower layers with it on.
    @inline(__always)
    func mayBeMetacopy(_ l: Int) -> Bool { config.metacopy || (l == 0 && upper != nil) }

    /// Opens the directory `components` from `root` for a redirect's walk;
    /// an empty owner when absent in this layer; `stop` when a whiteout or a
    /// non-directory on the way ends the search in every layer below.
    func walkToParent(_ root: Int32, _ components: [String], stop: inout Bool, opaque: inout Bool) -> UniqueFD {
        guard var cur = try? Sys.dup(root) else { return UniqueFD() }
        for c in components {
            var st = stat()
            let fd = cur.raw
            if fstatat(fd, c, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 {
                stop = FileName.with(c) { hasWhiteoutFile(fd, $0) }
                return UniqueFD()
            }
            if isWhiteout(st, fd, c, marked: true) || st.st_mode & Linux.S_IFMT != Linux.S_IFDIR {
                stop = true
                return UniqueFD()
            }
            // An opaque directory on the way: this layer is the last.
            if isOpaque(fd, c) { opaque = true }
            guard let next = try? Sys.openat(fd, c, Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) else { return UniqueFD() }
            cur = next
        }
        return cur
    }

    /// The inode number to report for an entry at its top location: the
    /// origin recorded at copy-up, else its own.
    func reportedIno(_ f: Found, _ pfd: Int32, _ name: UnsafePointer<CChar>, parent: OverlayNode? = nil) -> UInt64 {
        guard f.inUpper else { return inoFor(UInt64(f.stat.st_ino), layer: f.topLayer) }
        if let o = originIno(pfd, name) { return o }
        // An upper the kernel wrote: its origin is a handle.
        if let p = parent, upperImpure(p, pfd), let k = kernelOriginIno(pfd, name) { return k }
        return inoFor(UInt64(f.stat.st_ino), layer: 0)
    }

    func originIno(_ pfd: Int32, _ name: UnsafePointer<CChar>) -> UInt64? {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { buf -> UInt64? in
            let n = (try? Sys.getxattr(pfd, name, originXattr, into: UnsafeMutableRawBufferPointer(buf))) ?? -1
            guard n > 0 else { return nil }
            var v: UInt64 = 0
            for i in 0..<n {
                let c = buf[i]
                guard c >= 0x30 && c <= 0x39 else { return nil }
                v = v &* 10 &+ UInt64(c - 0x30)
            }
            return v
        }
    }

    /// Looks `name` up in `parent` and takes a reference on the node.
    public func lookup(_ parent: OverlayNode, _ name: FileName) throws(Errno) -> (OverlayNode, stat) {
        guard parent.isDirectory else { throw .notDirectory }
        return try lookup(parent, name, resolved: try resolve(parent, name))
    }

    /// Registers a name already resolved (now, or ahead by `ReadAhead`).
    func lookup(_ parent: OverlayNode, _ name: FileName, resolved f: Found) throws(Errno) -> (OverlayNode, stat) {
        let topLayer = f.topLayer
        let ino = try withDirFD(parent, topLayer) { (pfd: Int32) -> UInt64 in reportedIno(f, pfd, name.pointer, parent: parent) }
        let n = register(parent, name, f, ino: ino)
        var out = f.stat
        out.st_ino = ino_t(n.ino)
        if n.isDirectory { mergedNlink(&out, n) }
        if f.metacopy, let b = dataBlocks(n) { out.st_blocks = b }
        return (n, out)
    }

    /// The node table's key for a resolved name. A lower file's key holds
    /// its name (each name its own inode, as in the kernel without
    /// index=on), except a lower hard link with index=on, which is one inode
    /// under all its names, as in the kernel with it.
    func nodeKey(_ f: Found, _ parent: OverlayNode, _ name: FileName) -> InodeKey {
        if let k = f.indexKey { return k }
        var key = InodeKey(dev: UInt64(f.stat.st_dev), ino: UInt64(f.stat.st_ino))
        // That one copy of the name then serves a new node too (arrays
        // share their storage until written).
        if f.stat.st_mode & Linux.S_IFMT != Linux.S_IFDIR && !f.inUpper && !(index != nil && f.lowerNlink > 1) {
            key.parent = parent.id
            key.name = name.bytesWithNUL
        }
        return key
    }

    /// Takes a reference on the node for a resolved name, making it if new.
    func register(_ parent: OverlayNode, _ name: FileName, _ f: Found, ino: UInt64) -> OverlayNode {
        let isDir = f.stat.st_mode & Linux.S_IFMT == Linux.S_IFDIR
        let key = nodeKey(f, parent, name)
        var made = false
        func make(_ id: UInt64) -> OverlayNode {
            made = true
            var place = OverlayNode.Place(
                parent: parent, name: key.name.isEmpty ? name.bytesWithNUL : key.name, inUpper: f.inUpper, lower: f.lower,
                lowerDirs: f.lowerDirs, key: key, redirect: f.redirect, metacopy: f.metacopy, dataLayer: f.dataLayer)
            place.lowerPaths = f.lowerPaths
            place.indexName = f.indexName
            place.lowerNlink = f.lowerNlink
            return OverlayNode(id: id, isDirectory: isDir, ino: ino, state: OverlayNode.State(place: place))
        }
        var n = table.reference(key, make: make)
        // A node found by the inode's number may be one whose removal we
        // missed, the number since reused by another inode: of another kind
        // (a file's node must never answer for a directory), or a directory
        // whose cached descriptor shows it removed. Such a node is left to
        // the kernel's remaining references and a fresh one made. (A name
        // that no longer resolves proves nothing: a rename may be moving it.)
        if !made && (n.isDirectory != isDir || (isDir && isRemovedDirectory(n))) {
            n = table.replaceStale(n, key, make: make)
        }
        // A known inode found under a name it does not have: a hard link, or
        // a name that is already stale. The kernel revalidates names without
        // the parent's lock, so a lookup can race a rename of the very name
        // it resolved, or an rmdir and a mkdir that reuses the inode number;
        // recording the old name would make the node unreachable (or lead to
        // another file) once its descriptors are not cached. So the name is
        // recorded only if it still leads to this inode, checked under the
        // node's lock, which renames also take to record a move.
        let recorded = n.addName(parent, name) {
            guard let now = try? resolve(parent, name) else { return false }
            return now.stat.st_dev == f.stat.st_dev && now.stat.st_ino == f.stat.st_ino
        }
        if let h = f.indexName, !made { n.state.withLock { $0.place.indexName = h } }
        if isDir && recorded {
            n.state.withLock { st in
                if st.place.redirect != f.redirect || st.place.lowerPaths != f.lowerPaths {
                    st.caches.placeMoved()
                    st.listings.removeAll()
                }
                st.place.lowerDirs = f.lowerDirs; st.place.inUpper = f.inUpper; st.place.lower = f.lower; st.place.redirect = f.redirect
                st.place.lowerPaths = f.lowerPaths
                // The marks read while resolving: listings need not read them again.
                for l in f.checkedMarks { st.caches.xwhiteouts[l] = f.xwhiteouts.contains(l) }
            }
        }
        return n
    }

    /// Whether a directory node's cached upper descriptor is of a directory
    /// that has been removed (no links left).
    func isRemovedDirectory(_ n: OverlayNode) -> Bool {
        guard let fd = n.state.withLock({ $0.caches.fds[0] }) else { return false }
        var st = stat()
        return fstat(fd.raw, &st) == 0 && st.st_nlink == 0
    }

    public func node(_ id: UInt64) -> OverlayNode? { table.get(id) }
    public func forget(_ id: UInt64, count: UInt64) { table.forget(id, count: count) }
}
