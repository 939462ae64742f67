import CStrata
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
            let e = strata_errno()
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

    func serve() {
        while true {
            let n = receive()
            if n == 0 { return }
            dispatch(inBuf, length: n)
        }
    }

    // MARK: replies

    @inline(__always)
    private var payload: UnsafeMutableRawPointer { outBuf + Self.headerSize }
    @inline(__always)
    private var payloadCapacity: Int { outSize - Self.headerSize }

    @inline(__always)
    private func send(_ unique: UInt64, payloadLength: Int) {
        if let ring {
            ring.ringReply(unique: unique, error: 0, body: payload, length: payloadLength)
            return
        }
        let len = Self.headerSize + payloadLength
        outBuf.storeBytes(of: sf_out_header(len: UInt32(len), error: 0, unique: unique), as: sf_out_header.self)
        // ENOENT here means the request was interrupted meanwhile: nothing to do.
        _ = Glibc.write(fd, outBuf, len)
    }

    @inline(__always)
    private func sendError(_ unique: UInt64, _ e: Errno) {
        if let ring {
            ring.ringReply(unique: unique, error: -e.rawValue, body: payload, length: 0)
            return
        }
        var h = sf_out_header(len: UInt32(Self.headerSize), error: -e.rawValue, unique: unique)
        _ = Glibc.write(fd, &h, Self.headerSize)
    }

    @inline(__always)
    private func reply<T>(_ unique: UInt64, _ value: T) {
        payload.storeBytes(of: value, as: T.self)
        send(unique, payloadLength: MemoryLayout<T>.size)
    }

    @inline(__always)
    private func replyEntry(_ unique: UInt64, _ e: Entry) {
        var out = sf_entry_out()
        fillEntryOut(&out, e)
        reply(unique, out)
    }

    @inline(__always)
    private func replyAttr(_ unique: UInt64, _ a: Attr, _ t: CacheTimeout) {
        var out = sf_attr_out()
        out.attr_valid = t.seconds
        out.attr_valid_nsec = t.nanoseconds
        fillAttr(&out.attr, a)
        reply(unique, out)
    }

    private func openOut(node: NodeID, _ o: OpenReply) -> sf_open_out {
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
    private func name(_ p: UnsafeRawPointer, _ end: UnsafeRawPointer) -> Name {
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
                replyEntry(h.unique, try fs.lookup(r, parent: node, name: name(body, end)))
            case SF_FORGET:
                fs.forget(node, count: body.load(as: sf_forget_in.self).nlookup)
            case SF_BATCH_FORGET:
                let count = Int(body.load(as: sf_batch_forget_in.self).count)
                var p = body + MemoryLayout<sf_batch_forget_in>.size
                for _ in 0..<count where p + MemoryLayout<sf_forget_one>.size <= end {
                    let one = p.load(as: sf_forget_one.self)
                    fs.forget(one.nodeid, count: one.nlookup)
                    p += MemoryLayout<sf_forget_one>.size
                }
            case SF_GETATTR:
                let g = body.load(as: sf_getattr_in.self)
                let fh: UInt64? = g.getattr_flags & UInt32(SF_GETATTR_FH) != 0 ? g.fh : nil
                let (a, t) = try fs.getattr(r, node: node, handle: fh)
                replyAttr(h.unique, a, t)
            case SF_SETATTR:
                let (a, t) = try fs.setattr(r, node: node, changes: decodeSetattr(body.load(as: sf_setattr_in.self)))
                replyAttr(h.unique, a, t)
            case SF_READLINK:
                let n = try fs.readlink(r, node: node, buffer: UnsafeMutableRawBufferPointer(start: payload, count: min(payloadCapacity, 65536)))
                send(h.unique, payloadLength: n)
            case SF_SYMLINK:
                let n = name(body, end)
                let target = name(body + n.count + 1, end)
                replyEntry(h.unique, try fs.symlink(r, parent: node, name: n, target: target))
            case SF_MKNOD:
                let m = body.load(as: sf_mknod_in.self)
                let n = name(body + MemoryLayout<sf_mknod_in>.size, end)
                replyEntry(h.unique, try fs.mknod(r, parent: node, name: n, mode: m.mode, rdev: m.rdev, umask: m.umask))
            case SF_MKDIR:
                let m = body.load(as: sf_mkdir_in.self)
                let n = name(body + MemoryLayout<sf_mkdir_in>.size, end)
                replyEntry(h.unique, try fs.mkdir(r, parent: node, name: n, mode: m.mode, umask: m.umask))
            case SF_UNLINK:
                try fs.unlink(r, parent: node, name: name(body, end))
                send(h.unique, payloadLength: 0)
            case SF_RMDIR:
                try fs.rmdir(r, parent: node, name: name(body, end))
                send(h.unique, payloadLength: 0)
            case SF_RENAME:
                let m = body.load(as: sf_rename_in.self)
                let old = name(body + MemoryLayout<sf_rename_in>.size, end)
                let new = name(body + MemoryLayout<sf_rename_in>.size + old.count + 1, end)
                try fs.rename(r, parent: node, name: old, newParent: m.newdir, newName: new, flags: 0)
                send(h.unique, payloadLength: 0)
            case SF_RENAME2:
                let m = body.load(as: sf_rename2_in.self)
                let old = name(body + MemoryLayout<sf_rename2_in>.size, end)
                let new = name(body + MemoryLayout<sf_rename2_in>.size + old.count + 1, end)
                try fs.rename(r, parent: node, name: old, newParent: m.newdir, newName: new, flags: m.flags)
                send(h.unique, payloadLength: 0)
            case SF_LINK:
                let m = body.load(as: sf_link_in.self)
                let n = name(body + MemoryLayout<sf_link_in>.size, end)
                replyEntry(h.unique, try fs.link(r, node: m.oldnodeid, newParent: node, newName: n))
            case SF_OPEN:
                let m = body.load(as: sf_open_in.self)
                let o = try fs.open(r, node: node, flags: Int32(bitPattern: m.flags))
                // handle_killpriv_v2: an O_TRUNC open by a user drops setuid/setgid.
                if m.open_flags & UInt32(SF_OPEN_KILL_SUIDGID) != 0 { killPrivileges(r, node) }
                reply(h.unique, openOut(node: node, o))
            case SF_CREATE, SF_TMPFILE:
                let m = body.load(as: sf_create_in.self)
                let (e, o): (Entry, OpenReply)
                if h.opcode == UInt32(SF_CREATE) {
                    let n = name(body + MemoryLayout<sf_create_in>.size, end)
                    (e, o) = try fs.create(r, parent: node, name: n, mode: m.mode, umask: m.umask, flags: Int32(bitPattern: m.flags))
                } else {
                    (e, o) = try fs.tmpfile(r, parent: node, mode: m.mode, umask: m.umask, flags: Int32(bitPattern: m.flags))
                }
                var eo = sf_entry_out()
                fillEntryOut(&eo, e)
                payload.storeBytes(of: eo, as: sf_entry_out.self)
                (payload + MemoryLayout<sf_entry_out>.size).storeBytes(of: openOut(node: e.node, o), as: sf_open_out.self)
                send(h.unique, payloadLength: MemoryLayout<sf_entry_out>.size + MemoryLayout<sf_open_out>.size)
            case SF_READ:
                let m = body.load(as: sf_read_in.self)
                let cap = min(Int(m.size), payloadCapacity)
                let n = try fs.read(r, node: node, handle: m.fh, offset: m.offset,
                                    buffer: UnsafeMutableRawBufferPointer(start: payload, count: cap))
                counters.bytesRead.add(UInt64(n), ordering: .relaxed)
                send(h.unique, payloadLength: n)
            case SF_WRITE:
                let m = body.load(as: sf_write_in.self)
                // handle_killpriv_v2: the kernel flags writes that must drop
                // setuid/setgid (only when such bits are set, so rarely).
                if m.write_flags & UInt32(SF_WRITE_KILL_SUIDGID) != 0 { killPrivileges(r, node) }
                let data = body + MemoryLayout<sf_write_in>.size
                let size = min(Int(m.size), end - data)
                let n = try fs.write(r, node: node, handle: m.fh, offset: m.offset,
                                     data: UnsafeRawBufferPointer(start: data, count: size), flags: m.write_flags)
                counters.bytesWritten.add(UInt64(n), ordering: .relaxed)
                reply(h.unique, sf_write_out(size: UInt32(n), padding: 0))
            case SF_STATFS:
                let s = try fs.statfs(r, node: node)
                var k = sf_kstatfs()
                k.blocks = s.blocks; k.bfree = s.bfree; k.bavail = s.bavail
                k.files = s.files; k.ffree = s.ffree
                k.bsize = s.bsize; k.namelen = s.namelen; k.frsize = s.frsize
                reply(h.unique, sf_statfs_out(st: k))
            case SF_RELEASE:
                let m = body.load(as: sf_release_in.self)
                session.backing.release(devFD: session.devFD, handle: m.fh)
                fs.release(r, node: node, handle: m.fh, flags: Int32(bitPattern: m.flags))
                send(h.unique, payloadLength: 0)
            case SF_FSYNC:
                let m = body.load(as: sf_fsync_in.self)
                try fs.fsync(r, node: node, handle: m.fh, dataOnly: m.fsync_flags & 1 != 0)
                send(h.unique, payloadLength: 0)
            case SF_SETXATTR:
                let head = session.setxattrExt ? MemoryLayout<sf_setxattr_in>.size : 8
                guard end - body >= head else { throw .ioError }
                // Only size and flags: the first 8 bytes, present in both forms.
                let m = sf_setxattr_in(size: body.load(as: UInt32.self), flags: body.load(fromByteOffset: 4, as: UInt32.self),
                                       setxattr_flags: 0, padding: 0)
                let n = name(body + head, end)
                let value = body + head + n.count + 1
                let size = min(Int(m.size), max(0, end - value))
                try fs.setxattr(r, node: node, name: n, value: UnsafeRawBufferPointer(start: value, count: size),
                                flags: Int32(bitPattern: m.flags))
                send(h.unique, payloadLength: 0)
            case SF_GETXATTR, SF_LISTXATTR:
                let m = body.load(as: sf_getxattr_in.self)
                let cap = min(Int(m.size), payloadCapacity)
                let buf = UnsafeMutableRawBufferPointer(start: payload, count: cap)
                let res: XattrReply
                if h.opcode == UInt32(SF_GETXATTR) {
                    res = try fs.getxattr(r, node: node, name: name(body + MemoryLayout<sf_getxattr_in>.size, end), buffer: buf)
                } else {
                    res = try fs.listxattr(r, node: node, buffer: buf)
                }
                switch res {
                case .size(let n): reply(h.unique, sf_getxattr_out(size: UInt32(n), padding: 0))
                case .data(let n): send(h.unique, payloadLength: n)
                }
            case SF_REMOVEXATTR:
                try fs.removexattr(r, node: node, name: name(body, end))
                send(h.unique, payloadLength: 0)
            case SF_FLUSH:
                try fs.flush(r, node: node, handle: body.load(as: sf_flush_in.self).fh)
                send(h.unique, payloadLength: 0)
            case SF_OPENDIR:
                let m = body.load(as: sf_open_in.self)
                var o = try fs.opendir(r, node: node, flags: Int32(bitPattern: m.flags))
                o.backingFD = -1
                reply(h.unique, openOut(node: node, o))
            case SF_READDIR, SF_READDIRPLUS:
                let m = body.load(as: sf_read_in.self)
                var w = DirentWriter(base: payload, capacity: min(Int(m.size), payloadCapacity),
                                     plus: h.opcode == UInt32(SF_READDIRPLUS))
                try fs.readdir(r, node: node, handle: m.fh, offset: m.offset, into: &w)
                send(h.unique, payloadLength: w.used)
            case SF_RELEASEDIR:
                fs.releasedir(r, node: node, handle: body.load(as: sf_release_in.self).fh)
                send(h.unique, payloadLength: 0)
            case SF_FSYNCDIR:
                let m = body.load(as: sf_fsync_in.self)
                try fs.fsyncdir(r, node: node, handle: m.fh, dataOnly: m.fsync_flags & 1 != 0)
                send(h.unique, payloadLength: 0)
            case SF_ACCESS:
                try fs.access(r, node: node, mask: Int32(bitPattern: body.load(as: sf_access_in.self).mask))
                send(h.unique, payloadLength: 0)
            case SF_INTERRUPT:
                // Every operation here runs to completion quickly (no blocking
                // locks are served), so an interrupt is answered by the
                // original request's reply; the protocol allows no reply here.
                break
            case SF_DESTROY:
                send(h.unique, payloadLength: 0)
            case SF_FALLOCATE:
                let m = body.load(as: sf_fallocate_in.self)
                try fs.fallocate(r, node: node, handle: m.fh, mode: Int32(bitPattern: m.mode), offset: m.offset, length: m.length)
                send(h.unique, payloadLength: 0)
            case SF_LSEEK:
                let m = body.load(as: sf_lseek_in.self)
                let off = try fs.lseek(r, node: node, handle: m.fh, offset: Int64(bitPattern: m.offset), whence: Int32(bitPattern: m.whence))
                reply(h.unique, sf_lseek_out(offset: UInt64(bitPattern: off)))
            case SF_COPY_FILE_RANGE:
                let m = body.load(as: sf_copy_file_range_in.self)
                let n = try fs.copyFileRange(r, nodeIn: node, handleIn: m.fh_in, offsetIn: m.off_in,
                                             nodeOut: m.nodeid_out, handleOut: m.fh_out, offsetOut: m.off_out,
                                             length: m.len, flags: m.flags)
                reply(h.unique, sf_write_out(size: UInt32(truncatingIfNeeded: n), padding: 0))
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
    private func killPrivileges(_ r: Request, _ node: NodeID) {
        var c = SetAttrRequest()
        c.killSUIDGID = true
        _ = try? fs.setattr(r, node: node, changes: c)
    }

    private func decodeSetattr(_ s: sf_setattr_in) -> SetAttrRequest {
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
