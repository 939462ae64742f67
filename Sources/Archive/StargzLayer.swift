import CArchive
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The TOC as it arrives: the decompressed member at the TOC's offset,
/// which is the `stargz.index.json` tar entry (header, then the JSON).
public struct StargzTOCFile: Sendable {
    public var json: [UInt8]
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var mtime: Int

    /// Reads the tar entry at the start of `member` (a pax header before it
    /// is skipped); refuses anything that is not `stargz.index.json`.
    public init(member b: [UInt8], what: String) throws(ArchiveError) {
        var at = 0
        func octal(_ from: Int, _ len: Int) -> Int {
            var v = 0
            for c in b[(at + from)..<(at + from + len)] where c >= 0x30 && c <= 0x37 { v = v * 8 + Int(c - 0x30) }
            return v
        }
        while true {
            guard b.count >= at + 512 else { throw ArchiveError(what, "the TOC member is not a tar entry") }
            let flag = b[at + 156]
            if flag == UInt8(ascii: "x") || flag == UInt8(ascii: "g") {
                at += 512 + (octal(124, 12) + 511) / 512 * 512
                continue
            }
            break
        }
        let nameEnd = b[at..<(at + 100)].firstIndex(of: 0) ?? (at + 100)
        let name = String(decoding: b[at..<nameEnd], as: UTF8.self)
        guard name == StargzTOC.fileName || name == "./" + StargzTOC.fileName else {
            throw ArchiveError(what, "the entry at the TOC's offset is '\(name)', not \(StargzTOC.fileName)")
        }
        let size = octal(124, 12)
        guard b.count >= at + 512 + size else { throw ArchiveError(what, "the TOC entry is cut short", kind: .truncated) }
        json = Array(b[(at + 512)..<(at + 512 + size)])
        mode = UInt32(octal(100, 8))
        uid = UInt32(octal(108, 8))
        gid = UInt32(octal(116, 8))
        mtime = octal(136, 12)
    }
}

extension LayerApplier {
    /// A lazily pulled layer's tree from its TOC alone: every entry made
    /// as the archive would make it (the same rules, through the same
    /// code), regular files as holes of their size marked with their
    /// name, and `stargz.index.json` itself written out, as a full pull
    /// of the blob leaves it.
    /// `tocFile`: eStargz's TOC entry, written out; zstd:chunked has none
    /// (its TOC is in a skippable frame, outside the tar).
    public func apply(toc: StargzTOC, tocFile: StargzTOCFile?, to dest: String, markXattr: String) throws(ArchiveError) -> Stats {
        var made: [OpaquePointer] = []
        defer { for e in made { archive_entry_free(e) } }
        for t in toc.entries where t.type != "chunk" {
            guard let e = archive_entry_new() else { throw ArchiveError(t.name, "libarchive: out of memory") }
            made.append(e)
            try Self.describe(e, t)
        }
        var stats = try apply(entries: made, to: dest, markXattr: markXattr, mark: { e in
            archive_entry_pathname(e).map { StargzTOC.layerPath(String(cString: $0)) }
        })
        // The TOC's own entry, with its bytes (the only file whose data is
        // here from the start).
        guard let tocFile else { return stats }
        let tocOut = try openOwned("\(dest)/\(StargzTOC.fileName)", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600,
                                   doing: "create", label: StargzTOC.fileName)
        let fd = tocOut.raw
        let wrote = tocFile.json.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if wrote != tocFile.json.count { throw ArchiveError(StargzTOC.fileName, "write: \(currentErrno())") }
        if privileged { fchown(fd, tocFile.uid, tocFile.gid) }
        fchmod(fd, mode_t(tocFile.mode & 0o7777))
        let ts = [timespec(tv_sec: tocFile.mtime, tv_nsec: 0), timespec(tv_sec: tocFile.mtime, tv_nsec: 0)]
        futimens(fd, ts)
        stats.entries += 1
        stats.bytes += Int64(tocFile.json.count)
        return stats
    }

    static func describe(_ e: OpaquePointer, _ t: StargzTOC.Entry) throws(ArchiveError) {
        archive_entry_set_pathname(e, t.name)
        let perm = UInt32((t.mode ?? 0) & 0o7777)
        switch t.type {
        case "dir": archive_entry_set_filetype(e, UInt32(Linux.S_IFDIR))
        case "reg": archive_entry_set_filetype(e, UInt32(Linux.S_IFREG)); archive_entry_set_size(e, la_int64_t(t.size ?? 0))
        case "symlink":
            archive_entry_set_filetype(e, UInt32(Linux.S_IFLNK))
            archive_entry_set_symlink(e, t.linkName ?? "")
        case "hardlink":
            archive_entry_set_filetype(e, UInt32(Linux.S_IFREG))
            archive_entry_set_hardlink(e, t.linkName ?? "")
        case "char", "block":
            archive_entry_set_filetype(e, UInt32(t.type == "char" ? Linux.S_IFCHR : Linux.S_IFBLK))
            archive_entry_set_rdevmajor(e, dev_t(t.devMajor ?? 0))
            archive_entry_set_rdevminor(e, dev_t(t.devMinor ?? 0))
        case "fifo": archive_entry_set_filetype(e, UInt32(Linux.S_IFIFO))
        default: throw ArchiveError(t.name, "unknown TOC entry type '\(t.type)'")
        }
        archive_entry_set_perm(e, mode_t(perm))
        archive_entry_set_uid(e, la_int64_t(t.uid ?? 0))
        archive_entry_set_gid(e, la_int64_t(t.gid ?? 0))
        let (s, ns) = t.mtime
        archive_entry_set_mtime(e, time_t(s), ns)
        archive_entry_set_atime(e, time_t(s), ns)
        for (k, v) in t.xattrs ?? [:] {
            v.withUnsafeBytes { archive_entry_xattr_add_entry(e, k, $0.baseAddress, $0.count) }
        }
    }
}
