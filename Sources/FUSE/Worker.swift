import CFuseProto
import Logging
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One serving thread: reads requests from its own /dev/fuse descriptor into
/// a buffer allocated once, decodes them in place and writes each reply from
/// a second buffer allocated once. Nothing on the lookup, getattr, read and
/// write paths allocates.
/// Where a ring worker's answers go (see `RingQueue`).
protocol RingReplies: AnyObject {
    func ringReply(unique: UInt64, error: Int32, body: UnsafeRawPointer, length: Int)
}

final class Worker<FS: FileSystem>: @unchecked Sendable {
    /// Set for a worker that serves a FUSE ring queue: answers go there
    /// rather than to /dev/fuse.
    unowned(unsafe) var ring: RingReplies?
    /// Whether the current request has been answered (ring workers check).
    var replied = false
    /// A /dev/fuse reader counted in the session's `ReaderPool`.
    var pooled = false
    let session: Session<FS>
    let fs: FS
    let fd: Int32
    let inBuf: UnsafeMutableRawPointer
    let counters = RequestCounters()
    let inSize: Int
    let outBuf: UnsafeMutableRawPointer
    let outSize: Int
    static var headerSize: Int { MemoryLayout<sf_out_header>.size }

    init(session: Session<FS>, fd: Int32) {
        self.session = session
        self.fs = session.fs
        self.fd = fd
        let payload = Int(session.options.maxWrite)
        inSize = payload + 4096 * 2
        outSize = payload + 4096 * 2
        inBuf = UnsafeMutableRawPointer.allocate(byteCount: inSize, alignment: 4096)
        outBuf = UnsafeMutableRawPointer.allocate(byteCount: outSize, alignment: 4096)
    }

    deinit {
        inBuf.deallocate()
        outBuf.deallocate()
    }

    /// Reads one request; returns its length, 0 when the filesystem is gone.
    private func receive() -> Int {
        while true {
            let n = Glibc.read(fd, inBuf, inSize)
            if n > 0 { return n }
            let e = currentErrno().rawValue
            // ENOENT: the request was interrupted before we read it.
            if n < 0 && (e == EINTR || e == EAGAIN || e == ENOENT) { continue }
            return 0
        }
    }

    func serveUntilInit() throws(SysError) {
        while true {
            let n = receive()
            if n == 0 { throw SysError(.operationNotSupportedByDevice, "read", "/dev/fuse (unmounted before INIT)") }
            let h = inBuf.load(as: sf_in_header.self)
            if h.opcode == UInt32(SF_INIT) {
                handleInit(h)
                return
            }
            sendError(h.unique, .ioError)
        }
    }

    /// Serves /dev/fuse until unmount (see `ReaderPool` for when a reader
    /// starts another).
    func serve() {
        let pool = session.pool
        pooled = true
        while true {
            let n = receive()
            if n == 0 { return }
            if pool.took() { session.addReader() }
            replied = false
            dispatch(inBuf, length: n)
            if !replied { pool.waiting() }
        }
    }

    // MARK: replies

    @inline(__always)
    var payload: UnsafeMutableRawPointer { outBuf + Self.headerSize }
    @inline(__always)
    var payloadCapacity: Int { outSize - Self.headerSize }

    @inline(__always)
    func send(_ unique: UInt64, payloadLength: Int) {
        if let ring {
            ring.ringReply(unique: unique, error: 0, body: payload, length: payloadLength)
            return
        }
        // Counted as waiting before the answer goes: the caller it wakes may
        // send its next request before this thread is back in read(), and
        // that must not look like every reader being busy.
        if pooled {
            replied = true
            session.pool.waiting()
        }
        let len = Self.headerSize + payloadLength
        outBuf.storeBytes(of: sf_out_header(len: UInt32(len), error: 0, unique: unique), as: sf_out_header.self)
        // ENOENT here means the request was interrupted meanwhile: nothing to do.
        _ = Glibc.write(fd, outBuf, len)
    }

    @inline(__always)
    func sendError(_ unique: UInt64, _ e: Errno) {
        if let ring {
            ring.ringReply(unique: unique, error: -e.rawValue, body: payload, length: 0)
            return
        }
        if pooled {
            replied = true
            session.pool.waiting()
        }
        var h = sf_out_header(len: UInt32(Self.headerSize), error: -e.rawValue, unique: unique)
        _ = Glibc.write(fd, &h, Self.headerSize)
    }

    @inline(__always)
    func reply<T>(_ unique: UInt64, _ value: T) {
        payload.storeBytes(of: value, as: T.self)
        send(unique, payloadLength: MemoryLayout<T>.size)
    }

    @inline(__always)
    func replyEntry(_ unique: UInt64, _ e: Entry) {
        var out = sf_entry_out()
        fillEntryOut(&out, e)
        reply(unique, out)
    }

    @inline(__always)
    func replyAttr(_ unique: UInt64, _ a: Attr, _ t: CacheTimeout) {
        var out = sf_attr_out()
        out.attr_valid = t.seconds
        out.attr_valid_nsec = t.nanoseconds
        fillAttr(&out.attr, a)
        reply(unique, out)
    }

    func openOut(node: NodeID, _ o: OpenReply) -> sf_open_out {
        var out = sf_open_out(fh: o.handle, open_flags: 0, backing_id: 0)
        if o.keepCache { out.open_flags |= UInt32(SF_FOPEN_KEEP_CACHE) }
        if o.directIO { out.open_flags |= UInt32(SF_FOPEN_DIRECT_IO) }
        if o.cacheDir { out.open_flags |= UInt32(SF_FOPEN_CACHE_DIR) }
        if o.nonSeekable { out.open_flags |= UInt32(SF_FOPEN_NONSEEKABLE) }
        if o.parallelDirectWrites { out.open_flags |= UInt32(SF_FOPEN_PARALLEL_DIRECT_WRITES) }
        if o.noFlush { out.open_flags |= UInt32(SF_FOPEN_NOFLUSH) }
        if o.backingFD >= 0 && session.passthroughOn,
           let id = session.backing.acquire(devFD: session.devFD, node: node, handle: o.handle, backingFD: o.backingFD) {
            // The kernel refuses (EIO) passthrough opens with any flag
            // outside PASSTHROUGH | DIRECT_IO | PARALLEL_DIRECT_WRITES | NOFLUSH.
            out.open_flags = UInt32(SF_FOPEN_PASSTHROUGH) | (o.parallelDirectWrites ? UInt32(SF_FOPEN_PARALLEL_DIRECT_WRITES) : 0)
                | (o.noFlush ? UInt32(SF_FOPEN_NOFLUSH) : 0)
            out.backing_id = id
        }
        return out
    }

    // MARK: decoding

    @inline(__always)
    func name(_ p: UnsafeRawPointer, _ end: UnsafeRawPointer) -> Name {
        let c = p.assumingMemoryBound(to: CChar.self)
        return Name(pointer: c, count: strnlen(c, end - p))
    }

    private func handleInit(_ h: sf_in_header) {
        let inp = (inBuf + MemoryLayout<sf_in_header>.size).load(as: sf_init_in.self)
        var out = sf_init_out()
        if inp.major < 7 {
            sendError(h.unique, .protocolNotSupported)
            return
        }
        if inp.major > 7 {
            // Ask the kernel to retry with our major version.
            out.major = 7
            out.minor = UInt32(SF_KERNEL_MINOR_VERSION)
            reply(h.unique, out)
            return
        }
        if inp.minor < 12 {
            // Kernels older than 2.6.29 speak layouts we do not encode.
            sendError(h.unique, .protocolNotSupported)
            return
        }
        session.negotiate(inp, &out)
        if session.initFailure != nil {
            // The mount fails (ECONNREFUSED) rather than serve otherwise
            // than the options demand; run() reports why.
            sendError(h.unique, .protocolNotSupported)
            return
        }
        // Before 7.23 the INIT reply was 24 bytes; the kernel rejects more.
        payload.storeBytes(of: out, as: sf_init_out.self)
        send(h.unique, payloadLength: inp.minor < 23 ? 24 : MemoryLayout<sf_init_out>.size)
    }

    /// Answers the request at `base` (read from /dev/fuse into `inBuf`, or
    /// put together in front of a ring entry's payload).
    func dispatch(_ base: UnsafeMutableRawPointer, length: Int) {
        let h = base.load(as: sf_in_header.self)
        let body = UnsafeRawPointer(base + MemoryLayout<sf_in_header>.size)
        let end = UnsafeRawPointer(base + min(length, Int(h.len)))
        let r = Request(unique: h.unique, uid: h.uid, gid: h.gid, pid: h.pid)
        let node = h.nodeid
        let started = RequestCounters.now()
        defer { counters.record(h.opcode, nanoseconds: RequestCounters.now() &- started) }
        if end - body < Opcode.minimumInput(Int(h.opcode)) {
            session.logger.warning("\(Opcode.name(Int(h.opcode))) request \(h.unique) is \(end - body) bytes, shorter than its fixed part")
            if h.opcode != UInt32(SF_FORGET) && h.opcode != UInt32(SF_BATCH_FORGET) { sendError(h.unique, .ioError) }
            return
        }
        if session.options.debug {
            session.logger.debug("op \(h.opcode) node \(node) unique \(h.unique) uid \(h.uid)")
        }
        do throws(Errno) {
            switch Int(h.opcode) {
            case SF_LOOKUP:
                try serveLookup(h, r, node, body, end)
            case SF_FORGET:
                try serveForget(h, r, node, body, end)
            case SF_BATCH_FORGET:
                try serveBatchForget(h, r, node, body, end)
            case SF_GETATTR:
                try serveGetattr(h, r, node, body, end)
            case SF_SETATTR:
                try serveSetattr(h, r, node, body, end)
            case SF_READLINK:
                try serveReadlink(h, r, node, body, end)
            case SF_SYMLINK:
                try serveSymlink(h, r, node, body, end)
            case SF_MKNOD:
                try serveMknod(h, r, node, body, end)
            case SF_MKDIR:
                try serveMkdir(h, r, node, body, end)
            case SF_UNLINK:
                try serveUnlink(h, r, node, body, end)
            case SF_RMDIR:
                try serveRmdir(h, r, node, body, end)
            case SF_RENAME:
                try serveRename(h, r, node, body, end)
            case SF_RENAME2:
                try serveRename2(h, r, node, body, end)
            case SF_LINK:
                try serveLink(h, r, node, body, end)
            case SF_OPEN:
                try serveOpen(h, r, node, body, end)
            case SF_CREATE, SF_TMPFILE:
                try serveCreate(h, r, node, body, end)
            case SF_READ:
                try serveRead(h, r, node, body, end)
            case SF_WRITE:
                try serveWrite(h, r, node, body, end)
            case SF_STATFS:
                try serveStatfs(h, r, node, body, end)
            case SF_RELEASE:
                try serveRelease(h, r, node, body, end)
            case SF_FSYNC:
                try serveFsync(h, r, node, body, end)
            case SF_SETXATTR:
                try serveSetxattr(h, r, node, body, end)
            case SF_GETXATTR, SF_LISTXATTR:
                try serveGetxattr(h, r, node, body, end)
            case SF_REMOVEXATTR:
                try serveRemovexattr(h, r, node, body, end)
            case SF_FLUSH:
                try serveFlush(h, r, node, body, end)
            case SF_OPENDIR:
                try serveOpendir(h, r, node, body, end)
            case SF_READDIR, SF_READDIRPLUS:
                try serveReaddir(h, r, node, body, end)
            case SF_RELEASEDIR:
                try serveReleasedir(h, r, node, body, end)
            case SF_FSYNCDIR:
                try serveFsyncdir(h, r, node, body, end)
            case SF_ACCESS:
                try serveAccess(h, r, node, body, end)
            case SF_INTERRUPT:
                // Every operation here runs to completion quickly (no blocking
                // locks are served), so an interrupt is answered by the
                // original request's reply; the protocol allows no reply here.
                break
            case SF_DESTROY:
                send(h.unique, payloadLength: 0)
            case SF_FALLOCATE:
                try serveFallocate(h, r, node, body, end)
            case SF_LSEEK:
                try serveLseek(h, r, node, body, end)
            case SF_COPY_FILE_RANGE:
                try serveCopyFileRange(h, r, node, body, end)
            case SF_INIT:
                sendError(h.unique, .protocolError)
            default:
                sendError(h.unique, .noFunction)
            }
        } catch {
            sendError(h.unique, error)
        }
    }

    /// Asks the file system to drop setuid/setgid, as a setattr would.
    func killPrivileges(_ r: Request, _ node: NodeID) {
        var c = SetAttrRequest()
        c.killSUIDGID = true
        _ = try? fs.setattr(r, node: node, changes: c)
    }

    func decodeSetattr(_ s: sf_setattr_in) -> SetAttrRequest {
        var c = SetAttrRequest()
        let v = s.valid
        if v & UInt32(SF_FATTR_MODE) != 0 { c.mode = s.mode }
        if v & UInt32(SF_FATTR_UID) != 0 { c.uid = s.uid }
        if v & UInt32(SF_FATTR_GID) != 0 { c.gid = s.gid }
        if v & UInt32(SF_FATTR_SIZE) != 0 { c.size = s.size }
        if v & UInt32(SF_FATTR_FH) != 0 { c.handle = s.fh }
        if v & UInt32(SF_FATTR_ATIME_NOW) != 0 { c.atime = .now }
        else if v & UInt32(SF_FATTR_ATIME) != 0 { c.atime = .set(timespec(tv_sec: Int(Int64(bitPattern: s.atime)), tv_nsec: Int(s.atimensec))) }
        if v & UInt32(SF_FATTR_MTIME_NOW) != 0 { c.mtime = .now }
        else if v & UInt32(SF_FATTR_MTIME) != 0 { c.mtime = .set(timespec(tv_sec: Int(Int64(bitPattern: s.mtime)), tv_nsec: Int(s.mtimensec))) }
        if v & UInt32(SF_FATTR_CTIME) != 0 { c.ctime = timespec(tv_sec: Int(Int64(bitPattern: s.ctime)), tv_nsec: Int(s.ctimensec)) }
        if v & UInt32(SF_FATTR_KILL_SUIDGID) != 0 { c.killSUIDGID = true }
        // A SETATTR that changes nothing is the kernel handing the clearing
        // of setuid/setgid to us: under handle_killpriv(_v2) fuse_setattr
        // strips ATTR_KILL_SUID/SGID and the mode computed from them, so
        // chown(path, -1, -1) (and a write that must drop the bits) arrives
        // with no field set. ext4 and the kernel's overlayfs clear them then.
        let changes = SF_FATTR_MODE | SF_FATTR_UID | SF_FATTR_GID | SF_FATTR_SIZE | SF_FATTR_ATIME | SF_FATTR_MTIME
            | SF_FATTR_ATIME_NOW | SF_FATTR_MTIME_NOW
        if v & UInt32(changes) == 0 { c.killSUIDGID = true }
        return c
    }
}
