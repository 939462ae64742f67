import FUSE
import Sys
import Tables
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension LoopbackFS {
    func openReply(_ f: FDHandle, regular: Bool) -> OpenReply {
        var o = OpenReply(handle: files.insert(f))
        o.keepCache = options.keepCache
        if regular && options.passthrough { o.backingFD = f.fd }
        return o
    }

    /// Passthrough writes run with the daemon's credentials, so the kernel
    /// would not drop setuid/setgid when a user writes: such opens go
    /// through the daemon, which the kernel then tells to drop the bits.
    func mustSeeWrites(_ r: Request, flags: Int32, fd: Int32, mode: UInt32? = nil) -> Bool {
        guard r.uid != 0, flags & O_ACCMODE != O_RDONLY else { return false }
        if let mode { return mode & 0o6000 != 0 }
        var st = Glibc.stat()
        return fstat(fd, &st) == 0 && st.st_mode & 0o6000 != 0
    }

    public func open(_ r: Request, node id: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        let n = try node(id)
        let fl = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC
        let file: UniqueFD
        if n.firstPlace == nil && n.id != NodeID.root, let o = n.orphan.withLock({ $0 }) {
            file = try Sys.open("/proc/self/fd/\(o.raw)", fl)
        } else {
            file = try UniqueFD(opened: at(n) { d, name, nofollow in openat(d, name, fl | (nofollow != 0 ? O_NOFOLLOW : 0)) })
        }
        let fd = file.raw
        var o = openReply(FDHandle(file), regular: !mustSeeWrites(r, flags: flags, fd: fd))
        o.noFlush = flags & O_ACCMODE == O_RDONLY
        return o
    }

    public func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let p = try node(parent)
        return try withDirFD(p) { (pfd: Int32) throws(Errno) -> (Entry, OpenReply) in
            let f = FDHandle(try Sys.openat(pfd, name.pointer, (flags & ~O_NOCTTY) | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                                            creationMode(mode, umask: umask, parentFD: pfd)))
            let fd = f.fd
            setOwner(r, parentFD: pfd, name: nil, fd: fd, mode: mode, isDirectory: false)
            let e = try lookupChild(p, name)
            return (e, openReply(f, regular: !mustSeeWrites(r, flags: flags, fd: fd, mode: mode)))
        }
    }

    public func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let p = try node(parent)
        return try withDirFD(p) { (pfd: Int32) throws(Errno) -> (Entry, OpenReply) in
            let fl = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_DIRECTORY)) | Linux.O_TMPFILE | O_CLOEXEC
            let f = FDHandle(try Sys.openat(pfd, ".", fl, creationMode(mode, umask: umask, parentFD: pfd)))
            let fd = f.fd
            setOwner(r, parentFD: pfd, name: nil, fd: fd, mode: mode, isDirectory: false)
            let st = try Sys.fstat(fd)
            let n = table.referenceOrphan(st, fd: OwnedFD(try Sys.open("/proc/self/fd/\(fd)", Linux.O_PATH | O_CLOEXEC)))
            return (entry(n, st), openReply(f, regular: true))
        }
    }

    public func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {
        files.remove(handle)
    }

}
