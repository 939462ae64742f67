import CStrata
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
            var names: Set<UInt64>? = l == 0 && upper != nil ? nil : Set<UInt64>()
            defer { if let names { n.state.withLock { $0.lowerNames[l] = names } } }
            try withDirFD(n, l) { (dfd: Int32) throws(Errno) in
                let fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if fd < 0 { throw currentErrno() }
                defer { close(fd) }
                let bufSize = 64 * 1024
                let buf = UnsafeMutableRawPointer.allocate(byteCount: bufSize, alignment: 8)
                defer { buf.deallocate() }
                while true {
                    let got = strata_getdents64(fd, buf, bufSize)
                    if got < 0 { throw currentErrno() }
                    if got == 0 { break }
                    var off = 0
                    while off < got {
                        let rec = buf + off
                        let ino = rec.load(as: UInt64.self)
                        let reclen = Int(rec.load(fromByteOffset: 16, as: UInt16.self))
                        let type = rec.load(fromByteOffset: 18, as: UInt8.self)
                        let cname = (rec + 19).assumingMemoryBound(to: CChar.self)
                        off += reclen
                        let len = strlen(cname)
                        names?.insert(Self.nameHash(FileName(pointer: cname, count: len)))
                        if (len == 1 && cname[0] == 0x2E) || (len == 2 && cname[0] == 0x2E && cname[1] == 0x2E) { continue }
                        let bytes = Array(UnsafeRawBufferPointer(start: cname, count: len))
                        if bytes.starts(with: whPrefix) {
                            // `.wh.NAME` hides NAME below; `.wh..wh..opq` marks opacity.
                            if bytes != opqName { seen.insert(Array(bytes.dropFirst(4))) }
                            continue
                        }
                        if seen.contains(bytes) { continue }
                        seen.insert(bytes)
                        if type == UInt8(DT_CHR) || type == UInt8(DT_UNKNOWN) {
                            var st = stat()
                            if fstatat(dfd, cname, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 && isWhiteout(st, dfd, cname) { continue }
                        }
                        var reported = inoFor(ino, layer: l)
                        if l == 0 && upper != nil && merged, let o = originIno(dfd, cname) { reported = o }
                        out.append(DirEntry(name: bytes, type: type, ino: reported))
                    }
                }
            }
        }
        return out
    }

    /// Whether the merged directory has no visible entry.
    func isEmptyMerged(_ n: OverlayNode) throws(Errno) -> Bool {
        try readDirectory(n).isEmpty
    }
}

let whPrefix: [UInt8] = Array(".wh.".utf8)
let opqName: [UInt8] = Array(".wh..wh..opq".utf8)
