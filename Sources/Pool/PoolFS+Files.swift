import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Open files and listings. A file's data goes to the branch's file by
/// passthrough when the kernel agreed to it (mergerfs 2.40's), else through
/// the daemon (FDBackedFileSystem's read and write).
extension PoolFS {
    func reply(_ f: PoolFile, regular: Bool) -> OpenReply {
        var o = OpenReply(handle: files.insert(f))
        switch options.cacheFiles {
        case .off: o.directIO = true
        case .full, .autoFull: o.keepCache = true
        case .partial, .libfuse: break
        }
        o.noFlush = true
        // moveonenospc needs to see a write's ENOSPC: writable files then
        // go through the daemon.
        let writable = f.flags & O_ACCMODE != O_RDONLY
        if regular && passthrough && options.cacheFiles != .off && !(writable && options.moveOnENOSPC != nil) { o.backingFD = f.fd }
        return o
    }

    public func open(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        if node == Self.controlID { throw .permissionDenied }
        let path = try self.node(node).current
        for b in try pick(.open, path) {
            let fd = try Sys.openat(b.fd, path, (flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC | O_NOFOLLOW)
            let regular = (try? Sys.fstat(fd.raw)).map { $0.st_mode & Linux.S_IFMT == Linux.S_IFREG } ?? false
            return reply(PoolFile(fd, branch: b, flags: flags), regular: regular)
        }
        throw .noSuchFileOrDirectory
    }

    public func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {
        guard let f = files.remove(handle) else { return }
        if options.dropCacheOnClose { _ = posix_fadvise(f.fd, 0, 0, POSIX_FADV_DONTNEED) }
    }

    /// Each name once, from the first branch (in order) that has it; inode
    /// numbers as `inodecalc` says (from the listing: no stat per entry).
    public func opendir(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        let path = try self.node(node).current
        var seen = Set<[UInt8]>()
        var items: [Listing.Item] = []
        var found = false
        for b in branches {
            guard let dir = try? Sys.openat(b.fd, RelPath.at(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW) else { continue }
            found = true
            var buf = [UInt8](repeating: 0, count: 32 << 10)
            while true {
                let n = buf.withUnsafeMutableBytes { p -> Int in
                    guard let base = p.baseAddress else { return 0 }
                    return (try? Sys.getdents(dir.raw, base, p.count)) ?? -1
                }
                if n < 0 { throw .ioError }
                if n <= 0 { break }
                var off = 0
                while off < n {
                    let reclen = Int(buf[off + 16]) | Int(buf[off + 17]) << 8
                    let ino = buf.withUnsafeBytes { $0.load(fromByteOffset: off, as: UInt64.self) }
                    let type = buf[off + 18]
                    var end = off + 19
                    while end < off + reclen && buf[end] != 0 { end += 1 }
                    let name = Array(buf[(off + 19)..<end])
                    off += reclen
                    if name == [0x2E] || name == [0x2E, 0x2E] { continue }
                    guard seen.insert(name).inserted else { continue }
                    let child = RelPath.child(path, String(decoding: name, as: UTF8.self))
                    items.append(Listing.Item(name: name, ino: InodeNumbers.number(options.inodeCalc, path: child, dev: b.dev, ino: ino,
                                                                                  isDirectory: type == UInt8(DT_DIR)), type: type))
                }
            }
        }
        if !found { throw .noSuchFileOrDirectory }
        return OpenReply(handle: listings.insert(Listing(items)))
    }

    public func readdir(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) {
        let l = try listings.get(handle)
        var i = Int(offset)
        let dots: [[UInt8]] = [[0x2E], [0x2E, 0x2E]]
        while i < l.items.count + 2 {
            let (name, ino, type) = i < 2 ? (dots[i], UInt64(1), UInt8(DT_DIR)) : (l.items[i - 2].name, l.items[i - 2].ino, l.items[i - 2].type)
            let fits = name.withUnsafeBytes {
                out.add(name: $0, ino: ino, type: type, nextOffset: UInt64(i + 1),
                        entry: out.plus ? Entry(node: 0, attr: Attr(), entryTimeout: .zero, attrTimeout: .zero) : nil)
            }
            if !fits { return }
            i += 1
        }
    }

    public func releasedir(_ r: Request, node: NodeID, handle: UInt64) { _ = listings.remove(handle) }

    public func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {}
}
