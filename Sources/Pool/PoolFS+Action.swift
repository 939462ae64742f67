import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The action category: applied on every branch the policy picks (epall by
/// default: every writable branch that has the path).
extension PoolFS {
    public func unlink(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        let path = RelPath.child(try node(parent).current, name.string)
        try onEach(try pick(.unlink, path)) { (b) throws(Errno) in _ = try check(path.withCString { unlinkat(b.fd, $0, 0) }) }
    }

    public func rmdir(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        let path = RelPath.child(try node(parent).current, name.string)
        try onEach(try pick(.rmdir, path)) { (b) throws(Errno) in
            _ = try check(path.withCString { unlinkat(b.fd, $0, Linux.AT_REMOVEDIR) })
        }
    }

    /// mergerfs's rename: on each branch the rename policy picks (those
    /// that have the source), within that branch; the destination's
    /// directory is cloned there, unless the create policy preserves paths,
    /// when a branch without it gives EXDEV (mergerfs 2.33 without
    /// ignorepponrename). Copies of the destination on other branches go,
    /// so that the new name shows the renamed file.
    public func rename(_ r: Request, parent: NodeID, name: Name, newParent: NodeID, newName: Name, flags: UInt32) throws(Errno) {
        if flags != 0 { throw .invalidArgument }
        let from = RelPath.child(try node(parent).current, name.string)
        let to = RelPath.child(try node(newParent).current, newName.string)
        let sources = try pick(.rename, from)
        let preserving = (options.policies[.create] ?? .epmfs).preservesPath
        let toDir = RelPath.parent(to)
        for b in sources where b.lstat(toDir) == nil {
            if preserving { throw .improperLink }
        }
        try onEach(sources) { (b) throws(Errno) in
            try clonePath(toDir, to: b)
            _ = try check(from.withCString { f in to.withCString { renameat(b.fd, f, b.fd, $0) } })
        }
        for b in branches where !sources.contains(where: { $0 === b }) && b.spec.mode != .ro {
            guard let st = b.lstat(to) else { continue }
            let isDir = st.st_mode & Linux.S_IFMT == Linux.S_IFDIR
            _ = to.withCString { unlinkat(b.fd, $0, isDir ? Linux.AT_REMOVEDIR : 0) }
        }
        if let n = nodes.find(PathKey(path: from)) {
            n.path.withLock { $0 = to }
            nodes.rekey(n, from: PathKey(path: from), to: PathKey(path: to))
        }
    }

    public func setattr(_ r: Request, node: NodeID, changes c: SetAttrRequest) throws(Errno) -> (Attr, CacheTimeout) {
        let path = try self.node(node).current
        let at = RelPath.at(path)
        if let size = c.size {
            if let h = c.handle, let f = try? files.get(h) {
                _ = try check(ftruncate(f.fd, off_t(size)))
            } else {
                try onEach(try pick(.truncate, path)) { (b) throws(Errno) in
                    let fd = try Sys.openat(b.fd, at, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
                    _ = try check(ftruncate(fd.raw, off_t(size)))
                }
            }
        }
        if let mode = c.mode {
            try onEach(try pick(.chmod, path)) { (b) throws(Errno) in _ = try check(at.withCString { fchmodat(b.fd, $0, mode & 0o7777, 0) }) }
        }
        if c.uid != nil || c.gid != nil {
            let uid = c.uid ?? UInt32.max, gid = c.gid ?? UInt32.max
            try onEach(try pick(.chown, path)) { (b) throws(Errno) in
                _ = try check(at.withCString { fchownat(b.fd, $0, uid, gid, Linux.AT_SYMLINK_NOFOLLOW) })
            }
        }
        if c.atime != nil || c.mtime != nil {
            func ts(_ t: SetAttrRequest.TimeChange?) -> timespec {
                switch t {
                case .none: return timespec(tv_sec: 0, tv_nsec: Linux.UTIME_OMIT)
                case .now: return timespec(tv_sec: 0, tv_nsec: Linux.UTIME_NOW)
                case .set(let v): return v
                }
            }
            var times = [ts(c.atime), ts(c.mtime)]
            try onEach(try pick(.utimens, path)) { (b) throws(Errno) in
                _ = try check(at.withCString { utimensat(b.fd, $0, &times, Linux.AT_SYMLINK_NOFOLLOW) })
            }
        }
        return (try found(path).0, attrTimeout)
    }

    // MARK: xattrs (mergerfs's own user.mergerfs.* names on files)

    static let basepath = "user.mergerfs.basepath", relpath = "user.mergerfs.relpath"
    static let fullpath = "user.mergerfs.fullpath", allpaths = "user.mergerfs.allpaths"

    /// user.mergerfs.basepath, relpath, fullpath and allpaths, as mergerfs
    /// answers them for a file.
    func mergerfsAttribute(_ key: String, _ path: String) throws(Errno) -> [UInt8]? {
        guard key.hasPrefix("user.mergerfs.") else { return nil }
        switch key {
        case Self.basepath: return Array(try found(path).1.spec.path.utf8)
        case Self.relpath: return Array(("/" + path).utf8)
        case Self.fullpath: return Array((try found(path).1.spec.path + "/" + path).utf8)
        case Self.allpaths:
            let all = branches.filter { $0.lstat(path) != nil }.map { $0.spec.path + "/" + path }
            return all.map { Array($0.utf8) }.joined(separator: [0]).map { $0 }
        default: throw .noData
        }
    }

    public func getxattr(_ r: Request, node: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        if node == Self.controlID { return try controlGet(name.string, into: buffer) }
        let path = try self.node(node).current
        if let v = try mergerfsAttribute(name.string, path) {
            if buffer.count == 0 { return .size(v.count) }
            guard v.count <= buffer.count, let base = buffer.baseAddress else { throw .outOfRange }
            v.withUnsafeBytes { if let s = $0.baseAddress { base.copyMemory(from: s, byteCount: v.count) } }
            return .data(v.count)
        }
        for b in try pick(.getxattr, path) {
            let n = try withCString(Self.xattrPath(b, path)) { (p) throws(Errno) -> Int in
                try PathXattr.get(p, name.pointer, into: buffer.count == 0 ? nil : buffer)
            }
            return buffer.count == 0 ? .size(n) : .data(n)
        }
        throw .noData
    }

    /// There are no *at calls for xattrs: the branch's descriptor names the
    /// file as /proc/self/fd/<branch>/<path>, the final name not followed.
    /// The root is `.../<branch>/.`: the l* calls on the magic link itself
    /// would act on the link (EOPNOTSUPP), and the kernel asks the root's
    /// ACL for every user who is not root.
    static func xattrPath(_ b: Branch, _ path: String) -> String {
        path.isEmpty ? "/proc/self/fd/\(b.fd)/." : "/proc/self/fd/\(b.fd)/\(path)"
    }

    public func listxattr(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        if node == Self.controlID { return try controlList(into: buffer) }
        let path = try self.node(node).current
        for b in try pick(.listxattr, path) {
            let n = try withCString(Self.xattrPath(b, path)) { (p) throws(Errno) -> Int in
                try PathXattr.list(p, into: buffer.count == 0 ? nil : buffer)
            }
            return buffer.count == 0 ? .size(n) : .data(n)
        }
        return .size(0)
    }

    public func setxattr(_ r: Request, node: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        if node == Self.controlID {
            if r.uid != 0 { throw .permissionDenied }
            try controlSet(name.string, String(decoding: value, as: UTF8.self))
            return
        }
        let path = try self.node(node).current
        if name.string.hasPrefix("user.mergerfs.") { throw .notSupported }
        try onEach(try pick(.setxattr, path)) { (b) throws(Errno) in
            try withCString(Self.xattrPath(b, path)) { (p) throws(Errno) in try PathXattr.set(p, name.pointer, value, flags: flags) }
        }
    }

    public func removexattr(_ r: Request, node: NodeID, name: Name) throws(Errno) {
        let path = try self.node(node).current
        try onEach(try pick(.removexattr, path)) { (b) throws(Errno) in
            try withCString(Self.xattrPath(b, path)) { (p) throws(Errno) in try PathXattr.remove(p, name.pointer) }
        }
    }
}
