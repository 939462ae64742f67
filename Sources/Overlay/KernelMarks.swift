import CStrata
import Sys
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
        if CStrata.getxattr(root, uuidXattr, nil, 0) >= 0 || errno != ENODATA { return }
        if CStrata.getxattr(root, impureXattr, nil, 0) >= 0 { return }
        var uuid = [UInt8](repeating: 0, count: 16)
        for i in uuid.indices { uuid[i] = UInt8.random(in: 0...255) }
        uuid[6] = (uuid[6] & 0x0f) | 0x40       // a version 4 UUID, as uuid_gen makes
        uuid[8] = (uuid[8] & 0x3f) | 0x80
        _ = CStrata.setxattr(root, uuidXattr, uuid, uuid.count, 0)
    }

    /// The lower object's handle for `overlay.origin`, nil where its
    /// filesystem gives none (the kernel then records no origin either).
    func originHandle(_ dir: Int32, _ name: UnsafePointer<CChar>, layer: Int) -> [UInt8]? {
        guard layer > 0, layer < lowerUUIDs.count else { return nil }
        return Self.handle(dir, name, uuid: lowerUUIDs[layer], upper: false)
    }

    /// Marks the upper directory `dir` impure, once.
    func markImpure(_ dir: Int32) {
        if strata_lgetxattr_at(dir, ".", impureXattr, nil, 0) >= 0 { return }
        _ = strata_lsetxattr_at(dir, ".", impureXattr, "y", 1, 0)
    }
}
