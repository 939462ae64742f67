import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension LoopbackFS {
    public func opendir(_ r: Request, node id: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        let n = try node(id)
        let fd: UniqueFD
        if let d = n.dirFD {
            fd = try Sys.openat(d.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        } else {
            fd = try UniqueFD(opened: at(n) { d, name, _ in openat(d, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW) })
        }
        var o = OpenReply(handle: directories.insert(OpenDir(fd)))
        o.cacheDir = options.keepCache
        o.keepCache = options.keepCache
        return o
    }

    public func releasedir(_ r: Request, node: NodeID, handle: UInt64) {
        directories.remove(handle)
    }

    public func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        let d = try directories.get(handle)
        try check((dataOnly ? fdatasync(d.fd) : Glibc.fsync(d.fd)))
    }

    /// Streams getdents64 records into the reply. Offsets are the source
    /// filesystem's own d_off cookies, so telldir/seekdir stay stable.
    public func readdir(_ r: Request, node id: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) {
        let d = try directories.get(handle)
        let parent = out.plus ? try node(id) : nil
        d.seek(offset)
        while try d.fill() {
            let rec = d.buffer + d.start
            let ino = rec.load(as: UInt64.self)
            let off = rec.load(fromByteOffset: 8, as: UInt64.self)
            let reclen = Int(rec.load(fromByteOffset: 16, as: UInt16.self))
            let type = rec.load(fromByteOffset: 18, as: UInt8.self)
            let namePtr = (rec + 19).assumingMemoryBound(to: CChar.self)
            let nameLen = strlen(namePtr)
            let name = Name(pointer: namePtr, count: nameLen)
            if !out.fits(nameLength: nameLen) { return }
            var e: Entry? = nil
            if let parent {
                if name.isDotOrDotDot {
                    e = Entry(node: 0, attr: Attr(), entryTimeout: .zero, attrTimeout: .zero)
                } else {
                    // A name removed since getdents read it is skipped.
                    e = try? lookupChild(parent, name)
                    if e == nil {
                        d.start += reclen
                        d.position = off
                        continue
                    }
                }
            }
            // d_ino 0 would make libc skip the entry: "." and ".." keep the source's.
            let dino = e.map { $0.node == 0 ? ino : $0.attr.ino } ?? ino
            out.add(name: name.buffer, ino: dino, type: type, nextOffset: off, entry: e)
            d.start += reclen
            d.position = off
        }
    }
}
