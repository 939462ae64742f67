import CFuseProto
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Opening, reading and syncing directories.
/// Each decodes its request's fixed part (its length was checked by
/// `dispatch`) and answers it.
extension Worker {
    func serveOpendir(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_open_in.self)
        var o = try fs.opendir(r, node: node, flags: Int32(bitPattern: m.flags))
        o.backingFD = -1
        reply(h.unique, openOut(node: node, o))
    }

    func serveReaddir(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_read_in.self)
        var w = DirentWriter(base: payload, capacity: min(Int(m.size), payloadCapacity),
                             plus: h.opcode == UInt32(SF_READDIRPLUS))
        try fs.readdir(r, node: node, handle: m.fh, offset: m.offset, into: &w)
        send(h.unique, payloadLength: w.used)
    }

    func serveReleasedir(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        fs.releasedir(r, node: node, handle: body.load(as: sf_release_in.self).fh)
        send(h.unique, payloadLength: 0)
    }

    func serveFsyncdir(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_fsync_in.self)
        try fs.fsyncdir(r, node: node, handle: m.fh, dataOnly: m.fsync_flags & 1 != 0)
        send(h.unique, payloadLength: 0)
    }
}
