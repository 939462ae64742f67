import CStrata
import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension LoopbackFS {
    func openReply(_ f: OpenFile, regular: Bool) -> OpenReply {
        var o = OpenReply(handle: f.handle)
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
        let fd: Int32
        if n.firstPlace == nil && n.id != NodeID.root, let o = n.orphan.withLock({ $0 }) {
            fd = "/proc/self/fd/\(o.raw)".withCString { Glibc.open($0, fl) }
        } else {
            fd = try at(n) { d, name, nofollow in openat(d, name, fl | (nofollow != 0 ? O_NOFOLLOW : 0)) }
        }
        if fd < 0 { throw currentErrno() }
        return openReply(OpenFile(fd: fd), regular: !mustSeeWrites(r, flags: flags, fd: fd))
    }

    public func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let p = try node(parent)
        return try withDirFD(p) { (pfd: Int32) throws(Errno) -> (Entry, OpenReply) in
            let fd = openat(pfd, name.pointer, (flags & ~O_NOCTTY) | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                            creationMode(mode, umask: umask, parentFD: pfd))
            if fd < 0 { throw currentErrno() }
            let f = OpenFile(fd: fd)
            setOwner(r, parentFD: pfd, name: nil, fd: fd, mode: mode, isDirectory: false)
            let e = try lookupChild(p, name)
            return (e, openReply(f, regular: !mustSeeWrites(r, flags: flags, fd: fd, mode: mode)))
        }
    }

    public func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        let p = try node(parent)
        return try withDirFD(p) { (pfd: Int32) throws(Errno) -> (Entry, OpenReply) in
            let fl = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_DIRECTORY)) | Linux.O_TMPFILE | O_CLOEXEC
            let fd = openat(pfd, ".", fl, creationMode(mode, umask: umask, parentFD: pfd))
            if fd < 0 { throw currentErrno() }
            let f = OpenFile(fd: fd)
            setOwner(r, parentFD: pfd, name: nil, fd: fd, mode: mode, isDirectory: false)
            var st = Glibc.stat()
            if fstat(fd, &st) != 0 { throw currentErrno() }
            let pathFD = Glibc.open("/proc/self/fd/\(fd)", Linux.O_PATH | O_CLOEXEC)
            if pathFD < 0 { throw currentErrno() }
            let n = table.referenceOrphan(st, fd: OwnedFD(pathFD))
            return (entry(n, st), openReply(f, regular: true))
        }
    }

    @inline(__always)
    func file(_ h: UInt64) throws(Errno) -> OpenFile {
        guard let f = OpenFile.from(h) else { throw .badFileDescriptor }
        return f
    }

    public func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let f = try file(handle)
        var done = 0
        while done < buffer.count {
            let n = pread(f.fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if strata_errno() == EINTR { continue }
                if done > 0 { break }
                throw currentErrno()
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int {
        let f = try file(handle)
        let n = retryEINTR { pwrite(f.fd, data.baseAddress, data.count, off_t(offset)) }
        if n < 0 { throw currentErrno() }
        return n
    }

    public func flush(_ r: Request, node: NodeID, handle: UInt64) throws(Errno) {
        // close() of a duplicate reports deferred write errors (NFS-style
        // sources) at the caller's close, as a native filesystem would.
        let f = try file(handle)
        let d = dup(f.fd)
        if d < 0 { throw currentErrno() }
        if close(d) != 0 { throw currentErrno() }
    }

    public func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {
        OpenFile.release(handle)
    }

    public func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        let f = try file(handle)
        if (dataOnly ? fdatasync(f.fd) : Glibc.fsync(f.fd)) != 0 { throw currentErrno() }
    }

    public func fallocate(_ r: Request, node: NodeID, handle: UInt64, mode: Int32, offset: UInt64, length: UInt64) throws(Errno) {
        let f = try file(handle)
        if strata_fallocate(f.fd, mode, Int64(offset), Int64(length)) != 0 { throw currentErrno() }
    }

    public func lseek(_ r: Request, node: NodeID, handle: UInt64, offset: Int64, whence: Int32) throws(Errno) -> Int64 {
        let f = try file(handle)
        let o = Glibc.lseek(f.fd, off_t(offset), whence)
        if o < 0 { throw currentErrno() }
        return Int64(o)
    }

    public func copyFileRange(_ r: Request, nodeIn: NodeID, handleIn: UInt64, offsetIn: UInt64,
                              nodeOut: NodeID, handleOut: UInt64, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        let fi = try file(handleIn), fo = try file(handleOut)
        var oi = Int64(offsetIn), oo = Int64(offsetOut)
        let n = strata_copy_file_range(fi.fd, &oi, fo.fd, &oo, Int(length), UInt32(flags))
        if n < 0 { throw currentErrno() }
        return n
    }
}
