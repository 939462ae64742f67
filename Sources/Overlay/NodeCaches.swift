import Sys
#if canImport(Glibc)
import Glibc
#endif

/// What a node read from its layers, kept to spare system calls. Lower
/// layers do not change under a mount, so an entry stays true for as long
/// as the node stays where it is; when a lookup finds a directory standing
/// for other lower places (a redirect set or found), `placeMoved` drops
/// everything read at the old ones in one step.
struct NodeCaches {
    /// O_PATH descriptors of this directory, per layer.
    var fds: [Int: OwnedFD] = [:]
    /// Where the descriptor budget refused a cached descriptor: the
    /// directory's file handle per layer, which reopens it in one call
    /// however deep it is and whatever was renamed above it since.
    var handles: [Int: DirHandle] = [:]
    /// Per lower layer, hashes of the names this directory holds there: a
    /// name whose hash is absent is absent, and its lookup in that layer is
    /// skipped (a collision only costs the real lookup).
    var lowerNames: [Int: Set<UInt64>] = [:]
    /// Per layer, whether this directory is marked to hold xattr whiteouts.
    var xwhiteouts: [Int: Bool] = [:]
    /// Its listing, its entries resolved, made ahead of a walker that has
    /// not asked for it yet (see `ReadAhead`).
    var prepared: PreparedListing?
    /// A directory whose upper copy this mount made (copy-up or mkdir)
    /// with device whiteouts: nothing in it is a `.wh.` file (names of
    /// that form are refused through the union), so lookups skip that probe.
    var upperHoldsNoWhFiles = false
    /// Whether this directory's upper copy is marked `overlay.impure` (it
    /// may hold entries the kernel copied up), once asked.
    var upperImpure: Bool?
    /// A metadata-only copy's data block count, once asked (the data is in
    /// a lower layer; a copy-up or a new data layer drops it).
    var dataBlocks: blkcnt_t?

    /// The node now stands for other places in the layers: what was read
    /// at the old ones goes (whether the upper copy is impure or free of
    /// `.wh.` files is about that copy, which a redirect does not move).
    mutating func placeMoved() {
        fds = [:]
        handles = [:]
        lowerNames = [:]
        xwhiteouts = [:]
        prepared = nil
    }
}
