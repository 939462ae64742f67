import FUSE
import Overlay
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension OverlayFS {
    /// Zero-message opendir: answering ENOSYS once makes the kernel stop
    /// sending OPENDIR and RELEASEDIR and cache every listing it reads
    /// (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR), invalidating it itself when
    /// the directory changes through the mount. A walk then costs no round
    /// trip per directory once listed.
    public func opendir(_ r: Request, node id: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        throw .noFunction
    }

    public func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {}

    public func releasedir(_ r: Request, node: NodeID, handle: UInt64) {}

    /// Offsets name the reader's listing and a position in it (see
    /// `Listings`): position 1 is after ".", 2 after "..", 2+i+1 after entry i.
    public func readdir(_ r: Request, node id: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) {
        let dir = try node(id)
        let (listing, position, entries) = try overlay.listing(dir, offset: offset)
        if position >= entries.count + 2 {
            // The end, which the kernel asks for last.
            overlay.endListing(dir, listing)
            return
        }
        var off = UInt64(position)
        let dots: [[UInt8]] = [[0x2E], [0x2E, 0x2E]]
        while off < 2 {
            let name = dots[Int(off)]
            let fits = name.withUnsafeBytes { b in
                out.add(name: b, ino: off == 0 ? dir.ino : 1, type: UInt8(DT_DIR), nextOffset: Listings.offset(listing, Int(off) + 1),
                        entry: out.plus ? Entry(node: 0, attr: Attr(), entryTimeout: .zero, attrTimeout: .zero) : nil)
            }
            if !fits { return }
            off += 1
        }
        // The directories this answer registers are listed next, ahead of
        // the walker that will ask (see Overlay's ReadAhead).
        let ahead = overlay.readsAhead
        var subdirectories: [OverlayNode] = []
        defer { if !subdirectories.isEmpty { overlay.readAhead(subdirectories) } }
        while Int(off - 2) < entries.count {
            let e = entries[Int(off - 2)]
            if !out.fits(nameLength: e.name.count) { return }
            var ent: Entry? = nil
            if out.plus {
                var looked: Entry? = nil
                if let (n, st) = try? overlay.lookup(dir, entry: e) {
                    looked = entry(n, st)
                    if ahead && n.isDirectory { subdirectories.append(n) }
                }
                // No entry (gone since the listing, or an xattr whiteout the
                // listing keeps, as the kernel's does): the name alone, which
                // node id 0 tells the kernel.
                ent = looked ?? Entry(node: 0, attr: Attr(), entryTimeout: .zero, attrTimeout: .zero)
            }
            let ino = (ent?.node ?? 0) != 0 ? (ent?.attr.ino ?? e.ino) : e.ino
            _ = e.name.withUnsafeBytes { out.add(name: $0, ino: ino, type: e.type, nextOffset: Listings.offset(listing, Int(off) + 1), entry: ent) }
            off += 1
        }
    }
}
