import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The create category: the policy picks the branch (or, for mkdir, mknod
/// and symlink under `all`/`epall`, branches); the parent path is cloned to
/// a branch that lacks it, from the branch that has it (mode, owner, times
/// and xattrs kept), as mergerfs clones it.
extension PoolFS {
    /// Makes `dir` (relative) exist on `target`, copying each missing level
    /// from a branch that has it.
    func clonePath(_ dir: String, to target: Branch) throws(Errno) {
        if dir.isEmpty || target.lstat(dir) != nil { return }
        try clonePath(RelPath.parent(dir), to: target)
        guard let source = branches.first(where: { $0 !== target && $0.lstat(dir).map { $0.st_mode & Linux.S_IFMT == Linux.S_IFDIR } == true }),
              let st = source.lstat(dir) else { throw .noSuchFileOrDirectory }
        try withCString(dir) { (p) throws(Errno) in
            if mkdirat(target.fd, p, st.st_mode & 0o7777) != 0 && currentErrno() != .fileExists { throw currentErrno() }
            _ = fchownat(target.fd, p, st.st_uid, st.st_gid, Linux.AT_SYMLINK_NOFOLLOW)
            _ = fchmodat(target.fd, p, st.st_mode & 0o7777, 0)
            copyXattrs(dir, from: source, to: target)
            var times = [st.st_atim, st.st_mtim]
            _ = utimensat(target.fd, p, &times, Linux.AT_SYMLINK_NOFOLLOW)
        }
    }

    func copyXattrs(_ path: String, from: Branch, to: Branch, as target: String? = nil) {
        let src = Self.xattrPath(from, path), dst = Self.xattrPath(to, target ?? path)
        var names = [UInt8](repeating: 0, count: 64 << 10)
        let n = names.withUnsafeMutableBytes { b in src.withCString { (try? PathXattr.list($0, into: b)) ?? 0 } }
        guard n > 0 else { return }
        var value = [UInt8](repeating: 0, count: 64 << 10)
        for name in names[0..<n].split(separator: 0) {
            let key = String(decoding: name, as: UTF8.self)
            let len = value.withUnsafeMutableBytes { b in src.withCString { s in key.withCString { (try? PathXattr.get(s, $0, into: b)) ?? -1 } } }
            guard len >= 0 else { continue }
            value.withUnsafeBytes { v in
                dst.withCString { d in key.withCString { try? PathXattr.set(d, $0, UnsafeRawBufferPointer(rebasing: v[0..<len]), flags: 0) } }
            }
        }
    }

    /// The branches to make `path` on: the create policy decides on the
    /// parent's path, as mergerfs's policies do.
    func createTargets(_ function: PoolFunction, _ path: String) throws(Errno) -> [Branch] {
        let parent = RelPath.parent(path)
        let c = config
        let policy = c.options.policies[function] ?? function.category.defaultPolicy
        let picked = try policy.select(function, states(parent, c)).map { c.branches[$0] }
        for b in picked { try clonePath(parent, to: b) }
        return picked
    }

    /// New entries belong to the caller, as on a native filesystem.
    func own(_ b: Branch, _ path: String, _ r: Request) {
        _ = path.withCString { fchownat(b.fd, $0, r.uid, r.gid, Linux.AT_SYMLINK_NOFOLLOW) }
    }

    func made(_ path: String, on b: Branch) throws(Errno) -> Entry {
        guard let st = b.lstat(path) else { throw .ioError }
        return entry(path, attr(st, path: path, branch: b))
    }

    public func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let path = RelPath.child(try node(parent).current, name.string)
        guard let b = try createTargets(.create, path).first else { throw .noSuchFileOrDirectory }
        let fd = try Sys.openat(b.fd, path, flags | O_CREAT | O_CLOEXEC, mode_t(mode & ~umask & 0o7777))
        own(b, path, r)
        let e = try made(path, on: b)
        return (e, reply(PoolFile(fd, branch: b, flags: flags), regular: true))
    }

    public func mkdir(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32) throws(Errno) -> Entry {
        let path = RelPath.child(try node(parent).current, name.string)
        let targets = try createTargets(.mkdir, path)
        try onEach(targets) { (b) throws(Errno) in
            _ = try check(path.withCString { mkdirat(b.fd, $0, mode_t(mode & ~umask & 0o7777)) })
            own(b, path, r)
        }
        guard let b = targets.first(where: { $0.lstat(path) != nil }) else { throw .ioError }
        return try made(path, on: b)
    }

    public func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry {
        let path = RelPath.child(try node(parent).current, name.string)
        let targets = try createTargets(.mknod, path)
        try onEach(targets) { (b) throws(Errno) in
            _ = try check(path.withCString { mknodat(b.fd, $0, mode_t(mode & ~(umask & 0o7777)), dev_t(rdev)) })
            own(b, path, r)
        }
        guard let b = targets.first(where: { $0.lstat(path) != nil }) else { throw .ioError }
        return try made(path, on: b)
    }

    public func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry {
        let path = RelPath.child(try node(parent).current, name.string)
        let targets = try createTargets(.symlink, path)
        try onEach(targets) { (b) throws(Errno) in
            _ = try check(path.withCString { symlinkat(target.pointer, b.fd, $0) })
            own(b, path, r)
        }
        guard let b = targets.first(where: { $0.lstat(path) != nil }) else { throw .ioError }
        return try made(path, on: b)
    }

    /// A hard link can only be made on a branch that has the file: each the
    /// link policy picks, the new name's directory cloned there.
    public func link(_ r: Request, node: NodeID, newParent: NodeID, newName: Name) throws(Errno) -> Entry {
        let old = try self.node(node).current
        let path = RelPath.child(try self.node(newParent).current, newName.string)
        let targets = try pick(.link, old)
        try onEach(targets) { (b) throws(Errno) in
            try clonePath(RelPath.parent(path), to: b)
            _ = try check(old.withCString { o in path.withCString { linkat(b.fd, o, b.fd, $0, 0) } })
        }
        guard let b = targets.first(where: { $0.lstat(path) != nil }) else { throw .ioError }
        return try made(path, on: b)
    }
}
