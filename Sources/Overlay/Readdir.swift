import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Merged directory listings (the kernel's readdir.c): every layer's
/// entries, top-most first, de-duplicated; whiteouts, `.wh.` entries and
/// opaque markers hidden; each entry's d_ino equal to what stat reports.
extension Overlay {
    public struct DirEntry: Sendable {
        public var name: [UInt8]     // no NUL
        public var type: UInt8       // DT_*
        public var ino: UInt64
        /// The entry resolved ahead of its READDIRPLUS (see `ReadAhead`),
        /// boxed: every listing carries the field, and a `Found` inline
        /// would make each entry ten times larger.
        var found: ResolvedAhead? = nil
    }

    public func readDirectory(_ n: OverlayNode) throws(Errno) -> [DirEntry] {
        guard n.isDirectory else { throw .notDirectory }
        let s = n.snapshot
        let layersHere = searchLayers(s)
        let merged = layersHere.count > 1
        var out: [DirEntry] = []
        var seen = Set<[UInt8]>()
        out.reserveCapacity(64)
        for l in layersHere {
            // Lower layers' names come for free here: keep them for lookups.
            // Only a complete pass may be kept: a partial set would hide names.
            var names: Set<UInt64>? = l == 0 && upper != nil ? nil : Set<UInt64>()
            try withDirFD(n, l) { (dfd: Int32) throws(Errno) in
                let marked = marksXWhiteouts(n, l)
                let impure = l == 0 && upper != nil && merged && upperImpure(n, dfd)
                try forEachDirent(dfd) { ino, _, type, name in
                    names?.insert(Self.nameHash(name))
                    if name.isDotOrDotDot { return }
                    let bytes = Array(name.buffer)
                    if bytes.starts(with: OverlayFormat.whiteoutPrefixBytes) {
                        // `.wh.NAME` hides NAME below; `.wh..wh..opq` marks opacity.
                        if merged && bytes != OverlayFormat.opaqueNameBytes { seen.insert(Array(bytes.dropFirst(4))) }
                        return
                    }
                    // One layer: nothing to de-duplicate or hide below.
                    if merged {
                        if seen.contains(bytes) { return }
                        seen.insert(bytes)
                    }
                    if type == UInt8(DT_CHR) || type == UInt8(DT_UNKNOWN) || (marked && type == UInt8(DT_REG)) {
                        var st = stat()
                        if fstatat(dfd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0
                            && isWhiteout(st, dfd, name.pointer, marked: marked) { return }
                    }
                    var reported = inoFor(ino, layer: l)
                    if l == 0 && upper != nil && merged {
                        if let o = originIno(dfd, name.pointer) { reported = o }
                        else if impure, let k = kernelOriginIno(dfd, name.pointer) { reported = k }
                    }
                    out.append(DirEntry(name: bytes, type: type, ino: reported))
                }
            }
            if let names { n.state.withLock { $0.caches.lowerNames[l] = names } }
        }
        return out
    }

    /// Whether the merged directory has no visible entry.
    func isEmptyMerged(_ n: OverlayNode) throws(Errno) -> Bool {
        try readDirectory(n).isEmpty
    }
}

