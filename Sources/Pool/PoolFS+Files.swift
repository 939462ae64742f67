import Dispatch
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
        if node == Self.controlID { throw .notDirectory }
        let path = try self.node(node).current
        let calc = options.inodeCalc
        // The children's path hashes continue the directory's "path/".
        let prefixHash = InodeNumbers.fnv1a(path.isEmpty ? [] : Array((path + "/").utf8))
        var dirs: [(Branch, OwnedFD)] = []
        for b in branches {
            do throws(Errno) { dirs.append((b, OwnedFD(try Sys.openat(b.fd, RelPath.at(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)))) } catch {}
        }
        if dirs.isEmpty { throw .noSuchFileOrDirectory }
        // Each branch's raw entries are read at the same time (the disks
        // are separate, and each getdents of a large directory waits on its
        // own); they are merged in branch order afterwards.
        let raw = Locked<[[UInt8]]>(Array(repeating: [], count: dirs.count))
        let descriptors = dirs.map { $0.1.raw }
        // Only a large directory is worth the threads: most are a few
        // blocks (ext4's size says so), read faster in turn than handed off.
        let large = descriptors.count > 1 && descriptors.contains { ((try? Sys.fstat($0))?.st_size ?? 0) > 64 << 10 }
        let readBranch: @Sendable (Int) -> Void = { i in
            var out: [UInt8] = []
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 128 << 10, alignment: 8)
            defer { buffer.deallocate() }
            guard let base = buffer.baseAddress else { return }
            while let n = try? Sys.getdents(descriptors[i], base, buffer.count), n > 0 {
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
            raw.withLock { $0[i] = out }
        }
        if large {
            DispatchQueue.concurrentPerform(iterations: descriptors.count, execute: readBranch)
        } else {
            for i in descriptors.indices { readBranch(i) }
        }
        let records = raw.withLock { $0 }
        let listing = Listing(expecting: records.reduce(0) { $0 + $1.count / 24 }, dedupe: dirs.count > 1)
        for (i, (b, _)) in dirs.enumerated() {
            records[i].withUnsafeBytes { buffer in
                guard let base = buffer.baseAddress else { return }
                let n = buffer.count
                var off = 0
                while off + 19 <= n {
                    let ino = base.loadUnaligned(fromByteOffset: off, as: UInt64.self)
                    let reclen = Int(base.loadUnaligned(fromByteOffset: off + 16, as: UInt16.self))
                    if reclen == 0 { break }
                    let type = buffer[off + 18]
                    let nameStart = off + 19
                    var end = nameStart
                    while end < min(off + reclen, n) && buffer[end] != 0 { end += 1 }
                    off += reclen
                    let name = UnsafeRawBufferPointer(rebasing: buffer[nameStart..<end])
                    if (name.count == 1 && name[0] == 0x2E) || (name.count == 2 && name[0] == 0x2E && name[1] == 0x2E) { continue }
                    let isDir = type == UInt8(DT_DIR)
                    let pathHash = InodeNumbers.needsPath(calc, isDirectory: isDir) ? InodeNumbers.fnv1a(name, from: prefixHash) : 0
                    listing.add(name, ino: InodeNumbers.number(calc, pathHash: pathHash, dev: b.dev, ino: ino, isDirectory: isDir), type: type,
                                hash: InodeNumbers.fnv1a(name))
                }
            }
        }
        return OpenReply(handle: listings.insert(listing))
    }

    public func readdir(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) {
        let l = try listings.get(handle)
        var i = Int(offset)
        let dots: [[UInt8]] = [[0x2E], [0x2E, 0x2E]]
        let none = Entry(node: 0, attr: Attr(), entryTimeout: .zero, attrTimeout: .zero)
        while i < l.items.count + 2 {
            let fits: Bool
            if i < 2 {
                fits = dots[i].withUnsafeBytes { out.add(name: $0, ino: 1, type: UInt8(DT_DIR), nextOffset: UInt64(i + 1), entry: out.plus ? none : nil) }
            } else {
                let it = l.items[i - 2]
                let plus = out.plus
                fits = l.withName(i - 2) { out.add(name: $0, ino: it.ino, type: it.type, nextOffset: UInt64(i + 1), entry: plus ? none : nil) }
            }
            if !fits { return }
            i += 1
        }
    }

    public func releasedir(_ r: Request, node: NodeID, handle: UInt64) { _ = listings.remove(handle) }

    public func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {}
}
