import FUSE
import Overlay
import Sys
import Tables
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Serves an `Overlay` through FUSE: decodes nothing itself (the FUSE layer
/// does) and decides nothing about union semantics (the Overlay does); it
/// maps node ids to overlay nodes, errors to errnos and open files to handles.
public final class OverlayFS: FDBackedFileSystem, @unchecked Sendable {
    public let overlay: Overlay
    let timeout: CacheTimeout
    /// Asked for by the mount options, then narrowed to what INIT agreed
    /// (not as an unprivileged user, not on a kernel without it): the open
    /// bookkeeping must match how the kernel really serves files.
    private let passthroughMode: Atomic<Bool>
    var passthrough: Bool { passthroughMode.load(ordering: .relaxed) }
    /// Open files by FUSE handle (the union's own `OpenFile`s).
    public let files = HandleTable<OpenFile>(tag: 2)

    /// Serving is over (every reader has stopped): the workdir is free.
    public func destroy() { overlay.releaseWorkdir() }

    public init(_ overlay: Overlay, passthrough: Bool) {
        self.overlay = overlay
        self.timeout = CacheTimeout(overlay.config.timeout)
        self.passthroughMode = Atomic(passthrough)
    }

    public func initialize(_ connection: inout Connection) {
        if !passthrough { connection.wanted &= ~InitFlag.passthrough }
        passthroughMode.store(connection.passthrough, ordering: .relaxed)
        // Attributes only (a negative offset): the data is the same.
        let notifier = connection.notifier
        overlay.attributesObserver.withLock { $0 = { id in _ = notifier.invalidateInode(id, offset: -1) } }
        overlay.started()
    }

    @inline(__always)
    func node(_ id: NodeID) throws(Errno) -> OverlayNode {
        guard let n = overlay.node(id) else { throw .staleNFSFileHandle }
        return n
    }

    func entry(_ n: OverlayNode, _ st: stat) -> Entry {
        Entry(node: n.id, attr: attr(st), entryTimeout: timeout, attrTimeout: timeout)
    }

    /// Attributes as shown: the real ones, unless squash_* or static_nlink
    /// ask to present them otherwise.
    @inline(__always)
    func attr(_ st: stat) -> Attr {
        var a = Attr(st)
        let c = overlay.config
        if !c.uidMap.isEmpty { a.uid = OverlayConfig.show(a.uid, c.uidMap) }
        if !c.gidMap.isEmpty { a.gid = OverlayConfig.show(a.gid, c.gidMap) }
        if let u = c.squashUID { a.uid = u }
        if let g = c.squashGID { a.gid = g }
        if c.staticNlink && a.isDirectory { a.nlink = 1 }
        return a
    }

    func who(_ r: Request) -> Creator {
        let c = overlay.config
        return Creator(uid: OverlayConfig.store(r.uid, c.uidMap), gid: OverlayConfig.store(r.gid, c.gidMap))
    }

    public func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry {
        do throws(Errno) {
            let (n, st) = try overlay.lookup(try node(parent), name)
            return entry(n, st)
        } catch .noSuchFileOrDirectory {
            return .negative(timeout)
        }
    }

    public func forget(_ node: NodeID, count: UInt64) { overlay.forget(node, count: count) }

    public func statistics() -> [(String, Int)] { overlay.statistics() }

    public func getattr(_ r: Request, node id: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) {
        (attr(try overlay.getattr(try node(id))), timeout)
    }

    public func setattr(_ r: Request, node id: NodeID, changes c: SetAttrRequest) throws(Errno) -> (Attr, CacheTimeout) {
        var a = Overlay.AttrChange()
        a.mode = c.mode
        a.uid = c.uid.map { OverlayConfig.store($0, overlay.config.uidMap) }
        a.gid = c.gid.map { OverlayConfig.store($0, overlay.config.gidMap) }
        a.size = c.size.map { Int64($0) }
        func ts(_ t: SetAttrRequest.TimeChange?) -> timespec? {
            switch t {
            case .none: return nil
            case .now?: return timespec(tv_sec: 0, tv_nsec: Linux.UTIME_NOW)
            case .set(let v)?: return v
            }
        }
        a.atime = ts(c.atime)
        a.mtime = ts(c.mtime)
        a.killSUIDGID = c.killSUIDGID
        let fd = c.handle.flatMap { try? files.get($0) }.flatMap { $0.writable ? $0.fd : nil }
        return (attr(try overlay.setattr(try node(id), a, fd: fd)), timeout)
    }

    public func readlink(_ r: Request, node id: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try overlay.readlink(try node(id), into: buffer)
    }

    public func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry {
        let made = try overlay.create(try node(parent), name, mode: Linux.S_IFLNK | 0o777,
                                      symlinkTarget: target.pointer, who: who(r))
        return entry(made.node, made.stat)
    }

    public func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry {
        let maj = (rdev & 0xfff00) >> 8, mnr = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
        let made = try overlay.create(try node(parent), name, mode: mode & ~umask | (mode & Linux.S_IFMT),
                                      rdev: dev_t(Sys.makedev(maj, mnr)), who: who(r))
        return entry(made.node, made.stat)
    }

    public func mkdir(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32) throws(Errno) -> Entry {
        let (n, st) = try overlay.mkdir(try node(parent), name, mode: mode & ~umask, who: who(r))
        return entry(n, st)
    }

    public func unlink(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        try overlay.unlink(try node(parent), name)
    }

    public func rmdir(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        try overlay.rmdir(try node(parent), name)
    }

    public func rename(_ r: Request, parent: NodeID, name: Name, newParent: NodeID, newName: Name, flags: UInt32) throws(Errno) {
        try overlay.rename(try node(parent), name, try node(newParent), newName, flags: flags)
    }

    public func link(_ r: Request, node id: NodeID, newParent: NodeID, newName: Name) throws(Errno) -> Entry {
        let (n, st) = try overlay.link(try node(id), try node(newParent), newName)
        return entry(n, st)
    }

    /// How an open is served, decided under the node's lock from the opens
    /// already in place (the kernel refuses to mix passthrough and cached
    /// opens of one inode, and binds it to one backing file at a time).
    ///
    /// Lower files are read through the daemon and the page cache, not by
    /// passthrough: a lower file can be copied up while it is open, and only
    /// descriptors the daemon holds can be moved to the copy (as kernel
    /// overlayfs moves its open files). Warm reads never reach the daemon.
    /// Two exceptions, where passthrough's speed matters more: O_DIRECT
    /// opens, and lower files of `lowerPassthroughSize` or more (the kernel
    /// reads its own page cache at half the speed of ext4's). A copy-up of
    /// such a file waits for those readers (up to a second, then ETXTBSY).
    /// Upper files, which never move, use passthrough.
    static let lowerPassthroughSize = 16 << 20

    func serving(_ c: OpenChoice, wantPassthrough: Bool) throws(Errno) -> OpenFile.Serving {
        if c.passthroughUpper > 0 || c.passthroughLower > 0 {
            // The inode is bound to a backing file: only that one will do.
            if c.inUpper && c.passthroughUpper > 0 && wantPassthrough { return .passthroughUpper }
            if !c.inUpper && c.passthroughLower > 0 { return .passthroughLower }
            throw .textFileBusy
        }
        if c.daemon > 0 || !wantPassthrough || !passthrough { return .daemon }
        return c.inUpper ? .passthroughUpper : .passthroughLower
    }

    /// Files the open and builds the reply.
    func reply(_ f: OpenFile, keepCache: Bool) -> OpenReply {
        var o = OpenReply(handle: files.insert(f))
        o.keepCache = keepCache
        // No FLUSH on close: it would only close a duplicate of a descriptor
        // on the upper or a lower filesystem, which reports nothing there,
        // and costs every close() of a written file a round trip.
        o.noFlush = true
        if f.serving != .daemon { o.backingFD = f.fd }
        return o
    }

    public func open(_ r: Request, node id: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        let writable = flags & O_ACCMODE != O_RDONLY
        var keep = true
        var dropSetID = false
        let n = try node(id)
        let f = try overlay.open(n, flags: flags) { (c: OpenChoice) throws(Errno) -> OpenFile.Serving in
            guard c.isRegular else { return .daemon }
            // Writes by users to setuid files go through us (see Loopback):
            // passthrough writes run as the daemon, which keeps the bits.
            // But an inode another open has bound to passthrough cannot be
            // served otherwise (the kernel refuses the mix): the writer gets
            // passthrough too, and the bits are dropped now, at the open,
            // where the kernel drops them at the first write.
            let suid = writable && r.uid != 0 && c.mode & 0o6000 != 0
            let bound = c.passthroughUpper > 0 || c.passthroughLower > 0
            let want = (!suid || bound) && (c.inUpper || flags & Linux.O_DIRECT != 0 || c.size >= Int64(Self.lowerPassthroughSize))
            let mode = try serving(c, wantPassthrough: want)
            dropSetID = suid && mode != .daemon
            // A lower file never changes; an upper one may have been
            // written by passthrough behind the page cache.
            keep = !c.inUpper || c.daemon > 0
            return mode
        }
        if dropSetID {
            var change = Overlay.AttrChange()
            change.killSUIDGID = true
            do throws(Errno) {
                _ = try overlay.setattr(n, change, fd: f.fd)
            } catch {
                overlay.released(f)      // the open is refused whole
                throw error
            }
            overlay.attributesChanged(n)
        }
        return reply(f, keepCache: keep)
    }

    public func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        var made = try overlay.create(try node(parent), name, mode: (mode & ~umask) | Linux.S_IFREG,
                                      openFlags: flags, who: who(r))
        guard let fd = made.fd.take() else { throw .ioError }
        return (entry(made.node, made.stat), try openedNew(made.node, fd, made.stat, r, mode: mode, flags: flags))
    }

    public func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        var made = try overlay.tmpfile(try node(parent), mode: mode & ~umask, openFlags: flags, who: who(r))
        guard let fd = made.fd.take() else { throw .ioError }
        return (entry(made.node, made.stat), try openedNew(made.node, fd, made.stat, r, mode: mode, flags: flags))
    }

    /// A file just made in the upper layer: no other open can exist, so it
    /// gets passthrough unless a user's writes to a setuid file must pass
    /// through us.
    func openedNew(_ n: OverlayNode, _ fd: consuming UniqueFD, _ st: stat, _ r: Request, mode: UInt32, flags: Int32) throws(Errno) -> OpenReply {
        let suid = r.uid != 0 && mode & 0o6000 != 0
        let f = try overlay.adopt(n, fd, st, writable: flags & O_ACCMODE != O_RDONLY) { (_: OpenChoice) -> OpenFile.Serving in
            passthrough && !suid ? .passthroughUpper : .daemon
        }
        return reply(f, keepCache: true)
    }

    public func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {
        if let f = files.remove(handle) { overlay.released(f) }
    }

    public func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        if overlay.config.volatile { return }
        try files.get(handle).fsync(dataOnly: dataOnly)
    }

    public func statfs(_ r: Request, node: NodeID) throws(Errno) -> StatFS { StatFS(try overlay.statfs()) }

    public func setxattr(_ r: Request, node id: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        if overlay.config.noXattrs { throw .notSupported }
        try overlay.setxattr(try node(id), name.string, value, flags: flags)
    }

    public func getxattr(_ r: Request, node id: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        // No attribute, rather than unsupported: the kernel reads ACLs this
        // way on every permission check.
        if overlay.config.noXattrs { throw .noData }
        let n = try overlay.getxattr(try node(id), name, buffer)
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func listxattr(_ r: Request, node id: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        if overlay.config.noXattrs { return buffer.count == 0 ? .size(0) : .data(0) }
        let n = try overlay.listxattr(try node(id), buffer, hideTrusted: r.uid != 0)
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func removexattr(_ r: Request, node id: NodeID, name: Name) throws(Errno) {
        if overlay.config.noXattrs { throw .notSupported }
        try overlay.removexattr(try node(id), name.string)
    }
}
