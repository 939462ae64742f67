import CFuseProto
#if canImport(Glibc)
import Glibc
#endif

/// Packs directory entries into the reply buffer in the kernel's layout
/// (`fuse_dirent`, or `fuse_direntplus` for READDIRPLUS), 8-byte aligned.
public struct DirentWriter {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    public private(set) var used = 0
    /// READDIRPLUS: every entry carries attributes and a lookup reference.
    public let plus: Bool

    init(base: UnsafeMutableRawPointer, capacity: Int, plus: Bool) {
        self.base = base
        self.capacity = capacity
        self.plus = plus
    }

    @inline(__always)
    static func recordSize(nameLength: Int, plus: Bool) -> Int {
        let head = plus ? MemoryLayout<sf_direntplus>.size : MemoryLayout<sf_dirent>.size
        return (head + nameLength + 7) & ~7
    }

    /// Whether an entry with a name of that length still has room.
    public func fits(nameLength: Int) -> Bool {
        used + Self.recordSize(nameLength: nameLength, plus: plus) <= capacity
    }

    /// Appends one entry; returns false (and writes nothing) when full.
    /// `nextOffset` is the offset a later readdir passes to continue after
    /// this entry. `type` is the DT_* value. In plus mode `entry` is required
    /// (node 0 for "." and "..", which the kernel does not instantiate).
    @discardableResult
    public mutating func add(name: UnsafeRawBufferPointer, ino: UInt64, type: UInt8, nextOffset: UInt64, entry: Entry? = nil) -> Bool {
        let size = Self.recordSize(nameLength: name.count, plus: plus)
        guard used + size <= capacity, let src = name.baseAddress else { return false }
        var p = base + used
        if plus {
            var e = sf_entry_out()
            if let entry {
                fillEntryOut(&e, entry)
            }
            p.storeBytes(of: e, as: sf_entry_out.self)
            p += MemoryLayout<sf_entry_out>.size
        }
        let d = sf_dirent(ino: ino, off: nextOffset, namelen: UInt32(name.count), type: UInt32(type))
        p.storeBytes(of: d, as: sf_dirent.self)
        p += MemoryLayout<sf_dirent>.size
        p.copyMemory(from: src, byteCount: name.count)
        let pad = size - (p - (base + used)) - name.count
        if pad > 0 { (p + name.count).initializeMemory(as: UInt8.self, repeating: 0, count: pad) }
        used += size
        return true
    }
}

@inline(__always)
func fillAttr(_ a: inout sf_attr, _ s: Attr) {
    a.ino = s.ino; a.size = s.size; a.blocks = s.blocks
    a.atime = UInt64(bitPattern: Int64(s.atime.tv_sec)); a.atimensec = UInt32(truncatingIfNeeded: s.atime.tv_nsec)
    a.mtime = UInt64(bitPattern: Int64(s.mtime.tv_sec)); a.mtimensec = UInt32(truncatingIfNeeded: s.mtime.tv_nsec)
    a.ctime = UInt64(bitPattern: Int64(s.ctime.tv_sec)); a.ctimensec = UInt32(truncatingIfNeeded: s.ctime.tv_nsec)
    a.mode = s.mode; a.nlink = s.nlink; a.uid = s.uid; a.gid = s.gid; a.rdev = s.rdev
    a.blksize = s.blksize; a.flags = 0
}

@inline(__always)
func fillEntryOut(_ e: inout sf_entry_out, _ s: Entry) {
    e.nodeid = s.node
    e.generation = s.generation
    e.entry_valid = s.entryTimeout.seconds
    e.entry_valid_nsec = s.entryTimeout.nanoseconds
    e.attr_valid = s.attrTimeout.seconds
    e.attr_valid_nsec = s.attrTimeout.nanoseconds
    fillAttr(&e.attr, s.attr)
}
