import FUSE
import Sys
import Tables
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Mirrors a directory: every request is carried out on the source tree,
/// relative to directory descriptors. Proves the FUSE layer, and is the
/// shape the union mount follows (a union of one writable layer is this).
public final class LoopbackFS: FDBackedFileSystem, @unchecked Sendable {
    public let source: String
    let options: LoopbackOptions
    let table: NodeTable<Node>
    /// Cached directory descriptors (the hard limit on open files here is
    /// 20,000, so one per directory would fail on a rootfs-sized tree).
    let dirFDs: FDBudget
    /// Open files and open directories, each by its FUSE handle.
    public let files = HandleTable<FDHandle>(tag: 1)
    let directories = HandleTable<OpenDir>(tag: 3)
    let rootFD: OwnedFD
    let rootProcPath: [CChar]
    let privileged = geteuid() == 0
    let dontMask = Locked(false)

    public init(source: String, options: LoopbackOptions = LoopbackOptions()) throws(SysError) {
        self.source = source
        self.options = options
        let owner = try Sys.openDirectory(source)
        let fd = owner.raw
        rootFD = OwnedFD(owner)
        let st = try Sys.fileStatus(fd: fd, path: source)
        let root = Node(id: NodeID.root, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino), isDirectory: true,
                        dirFD: rootFD, place: nil)
        table = NodeTable(root: root)
        dirFDs = FDBudget(limit: options.dirFDBudget)
        rootProcPath = Array("/proc/self/fd/\(fd)".utf8CString)
    }

    public func initialize(_ connection: inout Connection) {
        if !options.passthrough { connection.wanted &= ~InitFlag.passthrough }
        dontMask.withLock { $0 = connection.has(InitFlag.dontMask) }
    }

    /// The mode to create with. With POSIX ACLs negotiated the kernel leaves
    /// the umask to us (FUSE_DONT_MASK): a directory with a default ACL
    /// decides the mode itself, any other takes the caller's umask.
    func creationMode(_ mode: UInt32, umask: UInt32, parentFD: Int32) -> UInt32 {
        guard dontMask.withLock({ $0 }) else { return mode }
        let hasDefaultACL = "/proc/self/fd/\(parentFD)".withCString {
            ((try? PathXattr.get($0, "system.posix_acl_default", into: nil, follow: true)) ?? 0) > 0
        }
        return hasDefaultACL ? mode : mode & ~umask
    }

    // MARK: finding things

    @inline(__always)
    func node(_ id: NodeID) throws(Errno) -> Node {
        guard let n = table.get(id) else { throw .staleNFSFileHandle }
        return n
    }

    /// Calls `body` with a directory descriptor of `dir` (cached, or opened
    /// for the call from its parent).
    func withDirFD<R>(_ dir: Node, _ body: (Int32) throws(Errno) -> R) throws(Errno) -> R {
        if let fd = dir.dirFD { return try body(fd.raw) }
        let fd = try UniqueFD(opened: at(dir) { (d: Int32, n: UnsafePointer<CChar>, _: Int32) -> Int32 in
            openat(d, n, Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        })
        return try body(fd.raw)
    }

    /// Calls `body(dirfd, name, nofollow)` naming `node`: its parent's
    /// descriptor and its name, or for a node without a name (root, an
    /// unlinked open file) a /proc/self/fd path with `nofollow` = 0.
    func at<R>(_ node: Node, _ body: (Int32, UnsafePointer<CChar>, Int32) -> R) throws(Errno) -> R {
        if node.id == NodeID.root {
            return rootProcPath.withUnsafeBufferPointer { p in
                guard let base = p.baseAddress else { return body(AT_FDCWD, "", 0) }
                return body(AT_FDCWD, base, 0)
            }
        }
        if let place = node.firstPlace {
            return try withDirFD(place.parent) { (pfd: Int32) -> R in
                place.name.withUnsafeBufferPointer { p in
                    p.withMemoryRebound(to: CChar.self) { c in
                        guard let base = c.baseAddress else { return body(pfd, "", Linux.AT_SYMLINK_NOFOLLOW) }
                        return body(pfd, base, Linux.AT_SYMLINK_NOFOLLOW)
                    }
                }
            }
        }
        if let o = node.orphan.withLock({ $0 }) {
            return "/proc/self/fd/\(o.raw)".withCString { body(AT_FDCWD, $0, 0) }
        }
        throw .noSuchFileOrDirectory
    }

    /// Stats `node` without following symlinks.
    func stat(_ node: Node) throws(Errno) -> stat {
        var st = Glibc.stat()
        if let fd = node.dirFD {
            try check(fstat(fd.raw, &st))
            return st
        }
        if node.firstPlace == nil, let o = node.orphan.withLock({ $0 }) {
            try check(fstat(o.raw, &st))
            return st
        }
        let r = try at(node) { d, n, f in fstatat(d, n, &st, f) }
        try check(r)
        return st
    }

    func entry(_ n: Node, _ st: stat) -> Entry {
        Entry(node: n.id, attr: Attr(st), entryTimeout: options.timeout, attrTimeout: options.timeout)
    }

    /// Looks `name` up in `parent` and takes a kernel reference on the result.
    func lookupChild(_ parent: Node, _ name: Name) throws(Errno) -> Entry {
        try withDirFD(parent) { (pfd: Int32) throws(Errno) -> Entry in
            var st = Glibc.stat()
            try check(fstatat(pfd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW))
            let found = st
            let n = table.reference(st, parent: parent, name: name, budget: dirFDs, stillNamed: {
                var now = Glibc.stat()
                return fstatat(pfd, name.pointer, &now, Linux.AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == found.st_dev && now.st_ino == found.st_ino
            }) { () throws(Errno) -> UniqueFD in
                try Sys.openat(pfd, name.pointer, Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            return entry(n, st)
        }
    }

    // MARK: FileSystem

    public func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry {
        if name.count > 255 { throw .fileNameTooLong }
        do {
            return try lookupChild(try node(parent), name)
        } catch .noSuchFileOrDirectory where options.negativeTimeout.seconds > 0 {
            return .negative(options.negativeTimeout)
        }
    }

    public func forget(_ node: NodeID, count: UInt64) {
        table.forget(node, count: count)
    }

    public func getattr(_ r: Request, node id: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) {
        var st = Glibc.stat()
        if let h = handle, let f = try? files.get(h) {
            try check(fstat(f.fd, &st))
        } else {
            st = try stat(try node(id))
        }
        return (Attr(st), options.timeout)
    }

    public func readlink(_ r: Request, node id: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard let base = buffer.baseAddress?.assumingMemoryBound(to: CChar.self) else { throw .invalidArgument }
        let n = try check(try at(try node(id)) { d, name, _ in readlinkat(d, name, base, buffer.count) })
        return n
    }

    public func statfs(_ r: Request, node: NodeID) throws(Errno) -> StatFS {
        var s = statvfs()
        try check(fstatvfs(rootFD.raw, &s))
        return StatFS(s)
    }

    public func access(_ r: Request, node id: NodeID, mask: Int32) throws(Errno) {
        let rc = try at(try node(id)) { d, n, _ in faccessat(d, n, mask, 0) }
        try check(rc)
    }
}
