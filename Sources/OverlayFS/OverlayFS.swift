import CStrata
import FUSE
import Overlay
import Sys
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
    /// Every open file's node and how the kernel serves it.
    let opened = Locked<[UInt64: (OverlayNode, IOMode)]>([:])

    public init(_ overlay: Overlay, passthrough: Bool) {
        self.overlay = overlay
        self.timeout = CacheTimeout(overlay.config.timeout)
        self.passthroughMode = Atomic(passthrough)
    }

    public func initialize(_ connection: inout Connection) {
        if !passthrough { connection.wanted &= ~InitFlag.passthrough }
        passthroughMode.store(connection.passthrough, ordering: .relaxed)
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
        let fd = c.handle.flatMap { try? FDHandle.from($0) }.flatMap { $0.writable ? $0.fd : nil }
        return (attr(try overlay.setattr(try node(id), a, fd: fd)), timeout)
    }

    public func readlink(_ r: Request, node id: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try overlay.readlink(try node(id), into: buffer)
    }

    public func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry {
        let (n, st, _) = try overlay.create(try node(parent), name, mode: Linux.S_IFLNK | 0o777,
                                            symlinkTarget: target.pointer, who: who(r))
        return entry(n, st)
    }

    public func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry {
        let maj = (rdev & 0xfff00) >> 8, mnr = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
        let (n, st, _) = try overlay.create(try node(parent), name, mode: mode & ~umask | (mode & Linux.S_IFMT),
                                            rdev: dev_t(strata_makedev(maj, mnr)), who: who(r))
        return entry(n, st)
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
    enum IOMode { case cached, passthroughLower, passthroughUpper }
    static let lowerPassthroughSize = 16 << 20

    func chooseMode(_ s: inout OverlayNode.State, wantPassthrough: Bool, inUpper: Bool) throws(Errno) -> IOMode {
        if s.upperPassthrough > 0 || s.lowerPassthrough > 0 {
            // The inode is bound to a backing file: only that one will do.
            if inUpper && s.upperPassthrough > 0 && wantPassthrough { return .passthroughUpper }
            if !inUpper && s.lowerPassthrough > 0 { return .passthroughLower }
            throw .textFileBusy
        }
        if s.cachedOpens > 0 || !wantPassthrough || !passthrough { return .cached }
        return inUpper ? .passthroughUpper : .passthroughLower
    }

    /// Records the open of `fd` on `n` with `mode` and builds the reply.
    func register(_ n: OverlayNode, fd: Int32, mode: IOMode, writable: Bool, keepCache: Bool, regular: Bool = true,
                  s: inout OverlayNode.State) -> OpenReply {
        let h = FDHandle(fd: fd, writable: writable)
        var o = OpenReply(handle: h.retainedHandle())
        o.keepCache = keepCache
        // No FLUSH on close: it would only close a duplicate of a descriptor
        // on the upper or a lower filesystem, which reports nothing there,
        // and costs every close() of a written file a round trip.
        o.noFlush = true
        s.opens += 1
        switch mode {
        case .cached:
            s.cachedOpens += 1
            if !s.inUpper && regular { s.lowerFDs.insert(fd) }
        case .passthroughLower:
            o.backingFD = fd
            s.lowerPassthrough += 1
        case .passthroughUpper:
            o.backingFD = fd
            s.upperPassthrough += 1
        }
        opened.withLock { $0[o.handle] = (n, mode) }
        return o
    }

    public func open(_ r: Request, node id: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        let n = try node(id)
        let fd = try overlay.open(n, flags: flags)
        let writable = flags & O_ACCMODE != O_RDONLY
        var st = stat()
        let isRegular = fstat(fd, &st) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFREG
        // Writes by users to setuid files must go through us (see Loopback).
        let suid = writable && r.uid != 0 && st.st_mode & 0o6000 != 0
        do {
            return try n.state.withLock { (s: inout OverlayNode.State) throws(Errno) -> OpenReply in
                guard isRegular else {
                    return register(n, fd: fd, mode: .cached, writable: writable, keepCache: true, regular: false, s: &s)
                }
                let want = !suid && (s.inUpper || flags & Linux.O_DIRECT != 0 || Int(st.st_size) >= Self.lowerPassthroughSize)
                let mode = try chooseMode(&s, wantPassthrough: want, inUpper: s.inUpper)
                if suid && mode != .cached { throw .textFileBusy }
                // A lower file never changes; an upper one may have been
                // written by passthrough behind the page cache.
                let keep = !s.inUpper || s.cachedOpens > 0
                return register(n, fd: fd, mode: mode, writable: writable, keepCache: keep, s: &s)
            }
        } catch {
            close(fd)
            throw error
        }
    }

    public func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let (n, st, fd) = try overlay.create(try node(parent), name, mode: (mode & ~umask) | Linux.S_IFREG,
                                             openFlags: flags, who: who(r))
        return (entry(n, st), openedNew(n, fd: fd, r, mode: mode, flags: flags))
    }

    public func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let (n, st, fd) = try overlay.tmpfile(try node(parent), mode: mode & ~umask, openFlags: flags, who: who(r))
        return (entry(n, st), openedNew(n, fd: fd, r, mode: mode, flags: flags))
    }

    /// A file just made in the upper layer: no other open can exist, so it
    /// gets passthrough unless a user's writes to a setuid file must pass
    /// through us.
    func openedNew(_ n: OverlayNode, fd: Int32, _ r: Request, mode: UInt32, flags: Int32) -> OpenReply {
        let suid = r.uid != 0 && mode & 0o6000 != 0
        return n.state.withLock { s in
            register(n, fd: fd, mode: passthrough && !suid ? .passthroughUpper : .cached,
                     writable: flags & O_ACCMODE != O_RDONLY, keepCache: true, s: &s)
        }
    }

    public func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {
        if let (n, mode) = opened.withLock({ $0.removeValue(forKey: handle) }) {
            let fd = (try? FDHandle.from(handle))?.fd ?? -1
            n.state.withLock { s in
                s.opens -= 1
                switch mode {
                case .cached: s.cachedOpens -= 1; s.lowerFDs.remove(fd)
                case .passthroughLower: s.lowerPassthrough -= 1
                case .passthroughUpper: s.upperPassthrough -= 1
                }
            }
        }
        FDHandle.release(handle)
    }

    public func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        if overlay.config.volatile { return }
        try FDHandle.from(handle).fsync(dataOnly: dataOnly)
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
        let n = try overlay.listxattr(try node(id), buffer)
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func removexattr(_ r: Request, node id: NodeID, name: Name) throws(Errno) {
        if overlay.config.noXattrs { throw .notSupported }
        try overlay.removexattr(try node(id), name.string)
    }
}
