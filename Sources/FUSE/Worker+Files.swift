import CFuseProto
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Requests on open files: open, create, read, write and the rest.
/// Each decodes its request's fixed part (its length was checked by
/// `dispatch`) and answers it.
extension Worker {
    func serveOpen(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_open_in.self)
        let o = try fs.open(r, node: node, flags: Int32(bitPattern: m.flags))
        // handle_killpriv_v2: an O_TRUNC open by a user drops setuid/setgid.
        if m.open_flags & UInt32(SF_OPEN_KILL_SUIDGID) != 0 { killPrivileges(r, node) }
        reply(h.unique, openOut(node: node, o))
    }

    func serveCreate(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
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
    }

    func serveRead(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_read_in.self)
        let cap = min(Int(m.size), payloadCapacity)
        let n = try fs.read(r, node: node, handle: m.fh, offset: m.offset,
                            buffer: UnsafeMutableRawBufferPointer(start: payload, count: cap))
        counters.bytesRead.add(UInt64(n), ordering: .relaxed)
        send(h.unique, payloadLength: n)
    }

    func serveWrite(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
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
    }

    func serveRelease(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_release_in.self)
        session.backing.release(devFD: session.devFD, handle: m.fh)
        fs.release(r, node: node, handle: m.fh, flags: Int32(bitPattern: m.flags))
        send(h.unique, payloadLength: 0)
    }

    func serveFsync(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_fsync_in.self)
        try fs.fsync(r, node: node, handle: m.fh, dataOnly: m.fsync_flags & 1 != 0)
        send(h.unique, payloadLength: 0)
    }

    func serveFlush(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        try fs.flush(r, node: node, handle: body.load(as: sf_flush_in.self).fh)
        send(h.unique, payloadLength: 0)
    }

    func serveFallocate(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_fallocate_in.self)
        try fs.fallocate(r, node: node, handle: m.fh, mode: Int32(bitPattern: m.mode), offset: m.offset, length: m.length)
        send(h.unique, payloadLength: 0)
    }

    func serveLseek(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_lseek_in.self)
        let off = try fs.lseek(r, node: node, handle: m.fh, offset: Int64(bitPattern: m.offset), whence: Int32(bitPattern: m.whence))
        reply(h.unique, sf_lseek_out(offset: UInt64(bitPattern: off)))
    }

    func serveCopyFileRange(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_copy_file_range_in.self)
        let n = try fs.copyFileRange(r, nodeIn: node, handleIn: m.fh_in, offsetIn: m.off_in,
                                     nodeOut: m.nodeid_out, handleOut: m.fh_out, offsetOut: m.off_out,
                                     length: m.len, flags: m.flags)
        reply(h.unique, sf_write_out(size: UInt32(truncatingIfNeeded: n), padding: 0))
    }
}
