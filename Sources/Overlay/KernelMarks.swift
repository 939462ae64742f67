import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The marks the kernel's overlayfs leaves in an upper layer without
/// index=on, written the same way so that a layer moves between the two
/// without changing what programs see: `overlay.origin` on a copied-up
/// object (the lower object's file handle, the kernel's `struct ovl_fb`,
/// from which the kernel takes the st_ino it reports), `overlay.impure`
/// on the upper directory that holds it (its entries' d_ino need fixing),
/// and `overlay.uuid` on the upper root of a new overlay (kernel 6.6's
/// uuid=auto). Strata itself reads its own `overlay.strata.origin` (a
/// decimal inode number: no handle to decode on each lookup).
extension Overlay {
    var impureXattr: String { config.xattrPrefix + "impure" }
    var uuidXattr: String { config.xattrPrefix + "uuid" }

    /// At mount, as the kernel's ovl_init_uuid_xattr with uuid=auto: an
    /// upper root without a uuid gets a random one, unless it is marked
    /// impure (an older overlay, which the kernel leaves with a null uuid).
    func markUpperUUID(_ upper: Layer) {
        let root = "/proc/self/fd/\(upper.root.raw)"
        do throws(Errno) {
            _ = try PathXattr.get(root, uuidXattr, into: nil, follow: true)
            return
        } catch {
            if error != .noData { return }
        }
        if (try? PathXattr.get(root, impureXattr, into: nil, follow: true)) != nil { return }
        var uuid = [UInt8](repeating: 0, count: 16)
        for i in uuid.indices { uuid[i] = UInt8.random(in: 0...255) }
        uuid[6] = (uuid[6] & 0x0f) | 0x40       // a version 4 UUID, as uuid_gen makes
        uuid[8] = (uuid[8] & 0x3f) | 0x80
        try? PathXattr.set(root, uuidXattr, bytes: uuid, follow: true)
    }

    /// The lower object's handle for `overlay.origin`, nil where its
    /// filesystem gives none (the kernel then records no origin either).
    func originHandle(_ dir: Int32, _ name: UnsafePointer<CChar>, layer: Int) -> [UInt8]? {
        guard layer > 0, layer < lowerUUIDs.count else { return nil }
        return Self.handle(dir, name, uuid: lowerUUIDs[layer], upper: false)
    }

    /// The st_ino the kernel reports for an upper entry it copied up: its
    /// `overlay.origin` names the lower object by file handle. Asked only
    /// for entries without Strata's own origin, in directories marked
    /// impure (the kernel marks every directory that holds such an entry),
    /// so an upper the kernel wrote shows the numbers it showed there.
    func kernelOriginIno(_ dir: Int32, _ name: UnsafePointer<CChar>) -> UInt64? {
        guard !lowerUUIDs.isEmpty else { return nil }
        // On the stack: most entries asked (new files in an impure
        // directory) have no origin, and cost one getxattr, no allocation.
        let found = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 160) { buf -> (uuid: [UInt8], handle: DirHandle)? in
            let n = (try? Sys.getxattr(dir, name, kernelOriginXattr, into: UnsafeMutableRawBufferPointer(buf))) ?? -1
            guard n > 21, buf[0] == 0, buf[1] == Self.handleMagic else { return nil }
            let end = min(n, Int(buf[2]))
            guard end > 21 else { return nil }
            return (Array(buf[5..<21]), DirHandle(bytes: Array(buf[21..<end]), type: Int32(buf[4])))
        }
        guard let (uuid, handle) = found else { return nil }
        for l in layers where !l.writable && l.index < lowerUUIDs.count && lowerUUIDs[l.index] == uuid {
            guard let fd = try? l.open(handle: handle, flags: Linux.O_PATH | O_CLOEXEC) else { continue }
            if let st = try? Sys.fstat(fd.raw) { return inoFor(UInt64(st.st_ino), layer: l.index) }
        }
        return nil
    }

    /// Whether the upper directory `dir` is marked impure.
    func isImpure(_ dir: Int32) -> Bool {
        Sys.hasXattr(dir, ".", impureXattr)
    }

    /// Whether directory node `p`'s upper copy is marked impure, asked once
    /// per node: what the kernel wrote was there at mount, and the copies
    /// this mount makes carry Strata's own origin.
    func upperImpure(_ p: OverlayNode, _ pfd: Int32) -> Bool {
        if let known = p.state.withLock({ $0.caches.upperImpure }) { return known }
        let v = isImpure(pfd)
        p.state.withLock { $0.caches.upperImpure = v }
        return v
    }

    /// Marks the upper directory `dir` impure, once.
    func markImpure(_ dir: Int32) {
        if Sys.hasXattr(dir, ".", impureXattr) { return }
        try? Sys.setxattr(dir, ".", impureXattr, "y")
    }
}
