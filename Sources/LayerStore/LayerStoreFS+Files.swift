import FUSE
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Files and listings: a layer's are its union's; `info` and `blob` are
/// read by node (no handle), the directories above listed from their
/// children. Nothing above the layers can be written.
extension LayerStoreFS {
    public func open(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        if let (l, id) = route(node) { return try l.fs.open(r, node: id, flags: flags) }
        let n = try self.node(node)
        if n.isDirectory { throw .isDirectory }
        if flags & O_ACCMODE != O_RDONLY { throw .readOnlyFileSystem }
        var o = OpenReply(handle: 0)
        o.keepCache = true
        o.noFlush = true
        return o
    }

    public func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        if let (l, id) = route(node) { return try l.fs.read(r, node: id, handle: handle, offset: offset, buffer: buffer) }
        switch try self.node(node).kind {
        case .info(let l):
            guard offset < UInt64(l.info.count), let base = buffer.baseAddress else { return 0 }
            let n = min(buffer.count, l.info.count - Int(offset))
            l.info.withUnsafeBytes { src in
                if let s = src.baseAddress { base.copyMemory(from: s + Int(offset), byteCount: n) }
            }
            return n
        case .blob(let l):
            return try l.blob.read(offset: Int64(offset), into: buffer)
        default:
            throw .isDirectory
        }
    }

    public func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {
        if let (l, id) = route(node) { l.fs.release(r, node: id, handle: handle, flags: flags) }
    }

    public func flush(_ r: Request, node: NodeID, handle: UInt64) throws(Errno) {
        if let (l, id) = route(node) { try l.fs.flush(r, node: id, handle: handle) }
    }

    public func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        if let (l, id) = route(node) { try l.fs.fsync(r, node: id, handle: handle, dataOnly: dataOnly) }
    }

    public func lseek(_ r: Request, node: NodeID, handle: UInt64, offset: Int64, whence: Int32) throws(Errno) -> Int64 {
        if let (l, id) = route(node) { return try l.fs.lseek(r, node: id, handle: handle, offset: offset, whence: whence) }
        throw .noFunction
    }

    /// As the union answers: ENOSYS, after which the kernel sends no
    /// OPENDIR for any directory of the mount and caches listings itself.
    public func opendir(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        if let (l, id) = route(node) { return try l.fs.opendir(r, node: id, flags: flags) }
        throw .noFunction
    }

    public func releasedir(_ r: Request, node: NodeID, handle: UInt64) {
        if let (l, id) = route(node) { l.fs.releasedir(r, node: id, handle: handle) }
    }

    public func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {}

    public func readdir(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) {
        if let (l, id) = route(node) { try l.fs.readdir(r, node: id, handle: handle, offset: offset, into: &out); return }
        let n = try self.node(node)
        guard n.isDirectory else { throw .notDirectory }
        var names: [([UInt8], UInt64, UInt8)] = [(Array(".".utf8), n.id, UInt8(DT_DIR)), (Array("..".utf8), 1, UInt8(DT_DIR))]
        if case .layer(let l) = n.kind { names.append((Array("diff".utf8), l.slot << Self.slotShift | 1, UInt8(DT_DIR))) }
        let children = n.children.withLock { $0.values.sorted { $0.name.lexicographicallyPrecedes($1.name) } }
        for c in children { names.append((c.name, c.id, UInt8(c.isDirectory ? DT_DIR : DT_REG))) }
        var i = Int(offset)
        while i < names.count {
            let (name, ino, type) = names[i]
            let fits = name.withUnsafeBytes { out.add(name: $0, ino: ino, type: type, nextOffset: UInt64(i + 1)) }
            if !fits { return }
            i += 1
        }
    }

    public func getxattr(_ r: Request, node: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        if let (l, id) = route(node) { return try l.fs.getxattr(r, node: id, name: name, buffer: buffer) }
        throw .noData
    }

    public func listxattr(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        if let (l, id) = route(node) { return try l.fs.listxattr(r, node: id, buffer: buffer) }
        return .size(0)
    }

    // MARK: writes: a layer's union refuses them (it has no upper layer),
    // and so does everything above.

    public func setattr(_ r: Request, node: NodeID, changes: SetAttrRequest) throws(Errno) -> (Attr, CacheTimeout) {
        if let (l, id) = route(node) { return try l.fs.setattr(r, node: id, changes: changes) }
        throw .readOnlyFileSystem
    }
    public func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry { throw .readOnlyFileSystem }
    public func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry { throw .readOnlyFileSystem }
    public func mkdir(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32) throws(Errno) -> Entry { throw .readOnlyFileSystem }
    public func unlink(_ r: Request, parent: NodeID, name: Name) throws(Errno) { throw .readOnlyFileSystem }
    public func rename(_ r: Request, parent: NodeID, name: Name, newParent: NodeID, newName: Name, flags: UInt32) throws(Errno) { throw .readOnlyFileSystem }
    public func link(_ r: Request, node: NodeID, newParent: NodeID, newName: Name) throws(Errno) -> Entry { throw .readOnlyFileSystem }
    public func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) { throw .readOnlyFileSystem }
    public func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int { throw .readOnlyFileSystem }
    public func setxattr(_ r: Request, node: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) { throw .readOnlyFileSystem }
    public func removexattr(_ r: Request, node: NodeID, name: Name) throws(Errno) { throw .readOnlyFileSystem }
    public func fallocate(_ r: Request, node: NodeID, handle: UInt64, mode: Int32, offset: UInt64, length: UInt64) throws(Errno) { throw .readOnlyFileSystem }
    public func copyFileRange(_ r: Request, nodeIn: NodeID, handleIn: UInt64, offsetIn: UInt64,
                              nodeOut: NodeID, handleOut: UInt64, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        throw .readOnlyFileSystem
    }
}
