import SystemPackage

/// The merged listings of one directory that readers are part-way through.
///
/// The kernel opens directories without asking us (opendir answers ENOSYS
/// once, which saves a round trip per directory), so READDIR carries no
/// handle to tell two readers apart. Each reader's listing is instead named
/// by the offsets it is given: the listing's number in the high 31 bits, the
/// position in the low 32. A reader at offset 0 gets a new listing; one
/// that continues finds its own, even while another reader starts over.
public struct Listings: Sendable {
    private var held: [(id: UInt32, entries: [Overlay.DirEntry])] = []
    private var next: UInt32 = 1
    /// Readers that stop before the end leave their listing behind: a
    /// directory keeps at most this many, the oldest going first.
    static let limit = 8

    public init() {}

    /// A new listing, with its number.
    public mutating func start(_ entries: [Overlay.DirEntry]) -> UInt32 {
        let id = next
        next = next >= 0x7FFF_FFFF ? 1 : next + 1
        if held.count >= Self.limit { held.removeFirst() }
        held.append((id, entries))
        return id
    }

    /// The listing `id`, if still held.
    public func find(_ id: UInt32) -> [Overlay.DirEntry]? { held.first { $0.id == id }?.entries }

    /// Keeps `entries` as listing `id` (a reader whose listing was dropped
    /// continues in a fresh one under its number).
    public mutating func keep(_ id: UInt32, _ entries: [Overlay.DirEntry]) {
        if held.count >= Self.limit { held.removeFirst() }
        held.append((id, entries))
    }

    /// The reader reached the end: its listing is done with.
    public mutating func end(_ id: UInt32) { held.removeAll { $0.id == id } }

    public mutating func removeAll() { held.removeAll() }

    public var count: Int { held.count }
    public var isEmpty: Bool { held.isEmpty }
    public var entryCount: Int { held.reduce(0) { $0 + $1.entries.count } }

    /// The offset of position `index` in listing `id`.
    public static func offset(_ id: UInt32, _ index: Int) -> UInt64 { UInt64(id) << 32 | UInt64(index) }
    /// The listing and position an offset names.
    public static func split(_ offset: UInt64) -> (id: UInt32, index: Int) {
        (UInt32(truncatingIfNeeded: offset >> 32) & 0x7FFF_FFFF, Int(offset & 0xFFFF_FFFF))
    }
}

extension Overlay {
    /// The listing a READDIR at `offset` continues (see `Listings`): a new
    /// one at offset 0 (the one read ahead, if any), the reader's own
    /// after, read again if it was dropped.
    public func listing(_ dir: OverlayNode, offset: UInt64) throws(Errno) -> (id: UInt32, position: Int, entries: [DirEntry]) {
        let (id, position) = Listings.split(offset)
        if offset == 0 || id == 0 {
            let entries: [DirEntry]
            if let prepared = takePreparedListing(dir) { entries = prepared } else { entries = try readDirectory(dir) }
            return (dir.state.withLock { $0.listings.start(entries) }, position, entries)
        }
        if let held = dir.state.withLock({ $0.listings.find(id) }) { return (id, position, held) }
        let entries = try readDirectory(dir)
        dir.state.withLock { $0.listings.keep(id, entries) }
        return (id, position, entries)
    }

    /// The reader reached the end of listing `id`: the directory no longer
    /// holds its entries for as long as the kernel holds the node.
    public func endListing(_ dir: OverlayNode, _ id: UInt32) {
        dir.state.withLock { $0.listings.end(id) }
    }
}
