import FUSE
import Foundation
import OverlayFS
import Registry
import Sys
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The directories and files containers/storage looks up in an additional
/// layer store, which exist only as the daemon answers them:
/// `base64(image reference)/sha256:DIGEST/{diff/,info,blob}`. `diff` is not
/// one of them: it is the root of the layer's own union (see
/// `LayerStoreFS`).
final class VirtualNode: @unchecked Sendable {
    enum Kind {
        case root
        case reference(String)
        case layer(ServedLayer)
        case info(ServedLayer)
        case blob(ServedLayer)
    }
    let id: UInt64
    let kind: Kind
    let name: [UInt8]
    /// Children by name: references under the root, layers under a
    /// reference. A layer's children are fixed (`diff`, `info`, `blob`).
    let children = Mutex<[[UInt8]: VirtualNode]>([:])
    /// A reference's manifest and config, read at its first layer lookup.
    let description = Mutex<ImageDescription?>(nil)

    init(id: UInt64, kind: Kind, name: [UInt8]) {
        self.id = id
        self.kind = kind
        self.name = name
    }

    var isDirectory: Bool {
        switch kind {
        case .root, .reference, .layer: return true
        case .info, .blob: return false
        }
    }
}

/// One layer the store serves: its union (read-only, the store's layer as
/// its only lower, files fetched on first read), what `info` says of it,
/// where `blob` reads from, and containers/storage's count of its uses.
final class ServedLayer: @unchecked Sendable {
    /// Node ids of this layer's union are `slot << LayerStoreFS.slotShift | id`.
    let slot: UInt64
    let fs: OverlayFS
    let reference: String
    let digest: String
    let info: [UInt8]
    let blob: BlobReader
    /// containers/storage's uses: +1 for each attempt to create `use` in the
    /// layer's directory, -1 for each rmdir of the directory (both answered
    /// ENOENT, which is how a store that counts says so).
    let uses = Atomic<Int>(0)

    init(slot: UInt64, fs: OverlayFS, reference: String, digest: String, info: [UInt8], blob: BlobReader) {
        self.slot = slot
        self.fs = fs
        self.reference = reference
        self.digest = digest
        self.info = info
        self.blob = blob
    }
}
