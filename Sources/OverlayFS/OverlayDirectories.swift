import FUSE
import Overlay
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An open merged directory: the listing taken at opendir (and again on
/// rewind), so offsets stay stable while entries come and go, as on the
/// kernel's overlayfs.
final class OverlayDirHandle: @unchecked Sendable {
    var entries: [Overlay.DirEntry]
    init(_ e: [Overlay.DirEntry]) { entries = e }
}

extension OverlayFS {
    public func opendir(_ r: Request, node id: NodeID, flags: Int32) throws(Errno) -> OpenReply {
        let h = OverlayDirHandle(try overlay.readDirectory(try node(id)))
        var o = OpenReply(handle: UInt64(UInt(bitPattern: Unmanaged.passRetained(h).toOpaque())))
        o.cacheDir = true
        o.keepCache = true
        return o
    }

    func dirHandle(_ h: UInt64) throws(Errno) -> OverlayDirHandle {
        guard let p = UnsafeRawPointer(bitPattern: UInt(h)) else { throw .badFileDescriptor }
        return Unmanaged<OverlayDirHandle>.fromOpaque(p).takeUnretainedValue()
    }

    public func releasedir(_ r: Request, node: NodeID, handle: UInt64) {
        guard let p = UnsafeRawPointer(bitPattern: UInt(handle)) else { return }
        Unmanaged<OverlayDirHandle>.fromOpaque(p).release()
    }

    public func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {}

    /// Offsets: 1 after ".", 2 after "..", 2+i+1 after entry i.
    public func readdir(_ r: Request, node id: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) {
        let h = try dirHandle(handle)
        let dir = try node(id)
        if offset == 0 { h.entries = try overlay.readDirectory(dir) }
        var off = offset
        let dots: [[UInt8]] = [[0x2E], [0x2E, 0x2E]]
        while off < 2 {
            let name = dots[Int(off)]
            let fits = name.withUnsafeBytes { b in
                out.add(name: b, ino: off == 0 ? dir.ino : 1, type: UInt8(DT_DIR), nextOffset: off + 1,
                        entry: out.plus ? Entry(node: 0, attr: Attr(), entryTimeout: .zero, attrTimeout: .zero) : nil)
            }
            if !fits { return }
            off += 1
        }
        while Int(off - 2) < h.entries.count {
            let e = h.entries[Int(off - 2)]
            if !out.fits(nameLength: e.name.count) { return }
            var ent: Entry? = nil
            if out.plus {
                let looked: Entry? = FileName.with(stored: e.name + [0]) { fn in
                    guard let (n, st) = try? overlay.lookup(dir, fn) else { return nil }
                    return entry(n, st)
                }
                guard let l = looked else { off += 1; continue }    // gone since the listing
                ent = l
            }
            _ = e.name.withUnsafeBytes { out.add(name: $0, ino: ent?.attr.ino ?? e.ino, type: e.type, nextOffset: off + 1, entry: ent) }
            off += 1
        }
    }
}
