import CFuseProto
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Requests that make, find, rename and remove names.
/// Each decodes its request's fixed part (its length was checked by
/// `dispatch`) and answers it.
extension Worker {
    func serveLookup(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        replyEntry(h.unique, try fs.lookup(r, parent: node, name: name(body, end)))
    }

    func serveForget(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        fs.forget(node, count: body.load(as: sf_forget_in.self).nlookup)
    }

    func serveBatchForget(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let count = Int(body.load(as: sf_batch_forget_in.self).count)
        var p = body + MemoryLayout<sf_batch_forget_in>.size
        for _ in 0..<count where p + MemoryLayout<sf_forget_one>.size <= end {
            let one = p.load(as: sf_forget_one.self)
            fs.forget(one.nodeid, count: one.nlookup)
            p += MemoryLayout<sf_forget_one>.size
        }
    }

    func serveSymlink(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let n = name(body, end)
        let target = name(body + n.count + 1, end)
        replyEntry(h.unique, try fs.symlink(r, parent: node, name: n, target: target))
    }

    func serveMknod(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_mknod_in.self)
        let n = name(body + MemoryLayout<sf_mknod_in>.size, end)
        replyEntry(h.unique, try fs.mknod(r, parent: node, name: n, mode: m.mode, rdev: m.rdev, umask: m.umask))
    }

    func serveMkdir(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_mkdir_in.self)
        let n = name(body + MemoryLayout<sf_mkdir_in>.size, end)
        replyEntry(h.unique, try fs.mkdir(r, parent: node, name: n, mode: m.mode, umask: m.umask))
    }

    func serveUnlink(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        try fs.unlink(r, parent: node, name: name(body, end))
        send(h.unique, payloadLength: 0)
    }

    func serveRmdir(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        try fs.rmdir(r, parent: node, name: name(body, end))
        send(h.unique, payloadLength: 0)
    }

    func serveRename(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_rename_in.self)
        let old = name(body + MemoryLayout<sf_rename_in>.size, end)
        let new = name(body + MemoryLayout<sf_rename_in>.size + old.count + 1, end)
        try fs.rename(r, parent: node, name: old, newParent: m.newdir, newName: new, flags: 0)
        send(h.unique, payloadLength: 0)
    }

    func serveRename2(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_rename2_in.self)
        let old = name(body + MemoryLayout<sf_rename2_in>.size, end)
        let new = name(body + MemoryLayout<sf_rename2_in>.size + old.count + 1, end)
        try fs.rename(r, parent: node, name: old, newParent: m.newdir, newName: new, flags: m.flags)
        send(h.unique, payloadLength: 0)
    }

    func serveLink(_ h: sf_in_header, _ r: Request, _ node: NodeID, _ body: UnsafeRawPointer, _ end: UnsafeRawPointer) throws(Errno) {
        let m = body.load(as: sf_link_in.self)
        let n = name(body + MemoryLayout<sf_link_in>.size, end)
        replyEntry(h.unique, try fs.link(r, node: m.oldnodeid, newParent: node, newName: n))
    }
}
