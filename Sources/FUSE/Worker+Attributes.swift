import CFuseProto
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Attributes, extended attributes, statfs, access and readlink.
/// Each decodes its request's fixed part (its length was checked by
/// `dispatch`) and answers it.
extension Worker {
    func serveGetattr(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let g = body.load(as: sf_getattr_in.self)
        let fh: UInt64? = g.getattr_flags & UInt32(SF_GETATTR_FH) != 0 ? g.fh : nil
        let (a, t) = try fs.getattr(r, node: node, handle: fh)
        replyAttr(h.unique, a, t)
    }

    func serveSetattr(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let (a, t) = try fs.setattr(r, node: node, changes: decodeSetattr(body.load(as: sf_setattr_in.self)))
        replyAttr(h.unique, a, t)
    }

    func serveReadlink(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let n = try fs.readlink(r, node: node, buffer: UnsafeMutableRawBufferPointer(start: payload, count: min(payloadCapacity, 65536)))
        send(h.unique, payloadLength: n)
    }

    func serveStatfs(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let s = try fs.statfs(r, node: node)
        var k = sf_kstatfs()
        k.blocks = s.blocks; k.bfree = s.bfree; k.bavail = s.bavail
        k.files = s.files; k.ffree = s.ffree
        k.bsize = s.bsize; k.namelen = s.namelen; k.frsize = s.frsize
        reply(h.unique, sf_statfs_out(st: k))
    }

    func serveSetxattr(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
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
    }

    func serveGetxattr(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
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
    }

    func serveRemovexattr(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        try fs.removexattr(r, node: node, name: name(body, end))
        send(h.unique, payloadLength: 0)
    }

    func serveAccess(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        try fs.access(r, node: node, mask: Int32(bitPattern: body.load(as: sf_access_in.self).mask))
        send(h.unique, payloadLength: 0)
    }
}
