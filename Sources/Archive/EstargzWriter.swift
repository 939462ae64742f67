import CArchive
import Crypto
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Turns a layer's tar into an eStargz blob: still an ordinary gzip'd tar
/// (any client pulls it in full), but with a gzip member starting at every
/// file's data and every 4 MiB within it, `stargz.index.json` as the last
/// entry, and the footer that locates it. The tar is rewritten through
/// libarchive's pax writer, entry by entry, and cut into members here.
public enum EstargzWriter {
    public static let chunkSize: Int64 = 4 << 20

    /// The two seekable formats registries carry.
    public enum Format: Sendable {
        /// gzip members, the TOC as the tar's last entry, a 51-byte footer.
        case estargz
        /// zstd frames (containers/storage): the TOC in a skippable frame.
        case zstdChunked
    }

    public struct Result: Sendable {
        /// The digest of the compressed blob, as the manifest names it.
        public var blobDigest: String
        public var blobSize: Int64
        /// The digest of the tar inside (the new diff ID: the TOC is an entry).
        public var diffID: String
        public var tarSize: Int64
        /// eStargz: the TOC's digest. zstd:chunked: the compressed TOC's.
        public var tocDigest: String
        /// zstd:chunked: offset:length:uncompressed:1, for the annotation.
        public var tocPosition: String?
        /// The prioritised files found in this layer.
        public var prioritised: Set<String> = []
    }

    /// Receives what the tar writer produces: hashed as the diff ID and
    /// compressed into the current member.
    final class Sink {
        let gz: any MemberSink
        var tarHash = SHA256()
        var tarSize: Int64 = 0
        var failure: ArchiveError?
        init(_ gz: any MemberSink) { self.gz = gz }
    }

    /// `prioritised`: paths of regular files that go first, before the
    /// `.prefetch.landmark` (eStargz only): what a lazy pull fetches before
    /// anything else.
    public static func convert(tar input: String, to output: String, format: Format = .estargz,
                               prioritised: [String] = []) throws(ArchiveError) -> Result {
        let zstd = format == .zstdChunked
        if zstd && !prioritised.isEmpty { throw ArchiveError(output, "prioritised files are an eStargz feature (a prefetch landmark); zstd:chunked has none") }
        let outputFile = try openOwned(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600, doing: "create")
        let ofd = outputFile.raw
        guard let w = archive_write_new() else { throw ArchiveError(output, "libarchive: out of memory") }
        defer { archive_write_free(w) }
        archive_write_set_format_pax_restricted(w)
        // No blocking: every header and data write reaches the sink at once,
        // so a member can be cut exactly where a file's data begins.
        archive_write_set_bytes_per_block(w, 0)
        archive_write_set_bytes_in_last_block(w, 1)
        let sink = Sink(zstd ? ZstdFrameWriter(fd: ofd, path: output) : GzipMemberWriter(fd: ofd, path: output))
        let ctx = Unmanaged.passRetained(sink)
        defer { ctx.release() }
        if archive_write_open(w, ctx.toOpaque(), nil, estargzSinkWrite, nil) != ARCHIVE_OK { throw ArchiveError(output, errorString(w)) }
        func check(_ rc: Int32, _ what: String) throws(ArchiveError) {
            if let f = sink.failure { throw f }
            if rc < ARCHIVE_WARN { throw ArchiveError(what, errorString(w)) }
        }
        var toc = StargzTOC(version: 1, entries: [])
        let gz = sink.gz
        try gz.startMember()

        /// A landmark entry: 1 byte, 0xf, in a member of its own.
        func landmark(_ name: String) throws(ArchiveError) {
            guard let e = archive_entry_new() else { throw ArchiveError(name, "libarchive: out of memory") }
            defer { archive_entry_free(e) }
            archive_entry_set_pathname(e, name)
            archive_entry_set_filetype(e, UInt32(Linux.S_IFREG))
            archive_entry_set_perm(e, 0o644)
            archive_entry_set_size(e, 1)
            try check(archive_write_header(w, e), name)
            var lm = StargzTOC.Entry(name: name, type: "reg", mode: Int64(Linux.S_IFREG | 0o644))
            lm.size = 1; lm.uid = 0; lm.gid = 0
            try gz.startMember()
            lm.offset = gz.blobOffset
            let f: [UInt8] = [0x0f]
            let d = f.withUnsafeBytes { sha256Digest($0) }
            lm.digest = d; lm.chunkDigest = d
            _ = f.withUnsafeBytes { archive_write_data(w, $0.baseAddress, 1) }
            try check(archive_write_finish_entry(w), name)
            toc.entries.append(lm)
        }

        var buf = [UInt8](repeating: 0, count: 1 << 20)
        /// One pass over the input: with `only`, just those regular files
        /// (the prioritised ones); else everything but `skip`. Returns the
        /// names written.
        func copy(only: Set<String>?, skip: Set<String>) throws(ArchiveError) -> Set<String> {
            guard let r = archive_read_new() else { throw ArchiveError(input, "libarchive: out of memory") }
            defer { archive_read_free(r) }
            archive_read_support_filter_all(r)
            archive_read_support_format_tar(r)
            if archive_read_open_filename(r, input, 1 << 16) != ARCHIVE_OK { throw ArchiveError(input, "not a readable archive: \(errorString(r))") }
            var written: Set<String> = []
            var entry: OpaquePointer? = nil
            while true {
                let rc = archive_read_next_header(r, &entry)
                if rc == ARCHIVE_EOF { break }
                guard rc >= ARCHIVE_WARN, let e = entry else { throw ArchiveError(input, "corrupt archive: \(errorString(r))", kind: .truncated) }
                let name = archive_entry_pathname(e).map { String(cString: $0) } ?? ""
                archive_entry_sparse_clear(e)
                // Whole seconds, in the tar and the TOC alike: the pax writer
                // keeps a fraction only where it must write a pax header anyway,
                // and a lazily made tree must equal the archive's.
                archive_entry_set_mtime(e, archive_entry_mtime(e), 0)
                archive_entry_unset_atime(e)
                archive_entry_unset_ctime(e)
                var te = tocEntry(e, name: name)
                // zstd:chunked keeps the permission bits alone.
                if zstd { te.mode = (te.mode ?? 0) & 0o7777 }
                let base = te.path
                if base == StargzTOC.fileName || base == StargzTOC.noPrefetchLandmark || base == StargzTOC.prefetchLandmark { continue }
                if skip.contains(base) { continue }
                if let only, !(only.contains(base) && te.type == "reg") { continue }
                written.insert(base)
                try check(archive_write_header(w, e), name)
                let size = archive_entry_size(e)
                guard te.type == "reg", size > 0 else {
                    toc.entries.append(te)
                    try check(archive_write_finish_entry(w), name)
                    continue
                }
                var fileHash = SHA256()
                var chunkHash = SHA256()
                var chunks: [StargzTOC.Entry] = []
                var written: Int64 = 0
                while written < size {
                    if written % chunkSize == 0 {
                        if written > 0 { chunks[chunks.count - 1].chunkDigest = digestString(chunkHash); chunkHash = SHA256() }
                        try gz.startMember()
                        var c = written == 0 ? te : StargzTOC.Entry(name: te.name, type: "chunk", mode: zstd ? nil : te.mode)
                        c.offset = gz.blobOffset
                        c.chunkOffset = written == 0 ? nil : written
                        c.chunkSize = min(chunkSize, size - written)
                        chunks.append(c)
                    }
                    let want = Int(min(Int64(buf.count), chunkSize - written % chunkSize, size - written))
                    let n = buf.withUnsafeMutableBytes { archive_read_data(r, $0.baseAddress, want) }
                    if n < 0 { throw ArchiveError(name, "corrupt data: \(errorString(r))", kind: .truncated) }
                    if n == 0 { throw ArchiveError(name, "truncated data: \(written) of \(size) bytes", kind: .truncated) }
                    let wrote = buf.withUnsafeBytes { b in
                        let part = UnsafeRawBufferPointer(rebasing: b[0..<n])
                        fileHash.update(bufferPointer: part)
                        chunkHash.update(bufferPointer: part)
                        return archive_write_data(w, part.baseAddress, n)
                    }
                    if wrote != n { try check(ARCHIVE_FATAL, name) }
                    written += Int64(n)
                }
                chunks[chunks.count - 1].chunkDigest = digestString(chunkHash)
                if zstd {
                    // The data's last frame ends here: the padding and the next
                    // header go in a frame of their own.
                    try gz.startMember()
                    chunks[0].endOffset = gz.blobOffset
                } else {
                    // The spec's rule: the last chunk (or an unchunked file) says 0.
                    chunks[chunks.count - 1].chunkSize = 0
                }
                chunks[0].digest = digestString(fileHash)
                toc.entries += chunks
                try check(archive_write_finish_entry(w), name)
            }
            return written
        }
        var found: Set<String> = []
        let wanted = Set(prioritised.map { StargzTOC.Entry(name: $0, type: "reg", mode: nil).path })
        if wanted.isEmpty {
            // No prioritised files: the landmark says so, first (eStargz).
            if !zstd { try landmark(StargzTOC.noPrefetchLandmark) }
            _ = try copy(only: nil, skip: [])
        } else {
            // The prioritised files this layer has (the others are in other
            // layers), then the landmark after them.
            found = try copy(only: wanted, skip: [])
            try landmark(found.isEmpty ? StargzTOC.noPrefetchLandmark : StargzTOC.prefetchLandmark)
            _ = try copy(only: nil, skip: found)
        }

        // The TOC: its own member, then the end-of-archive blocks, the footer.
        let encoder = JSONEncoder()
        // Slashes as they are: containers/storage 4.3's TOC reader takes
        // Foundation's "\/" escape for a backslash and a separator, and
        // podman's partial pull then made `usr\` and `bin -> usr\/bin`.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json: Data
        do { json = try encoder.encode(toc) } catch { throw ArchiveError(output, "encoding the TOC: \(error)") }
        if zstd {
            // The end-of-archive blocks close the tar; the TOC follows in a
            // skippable frame (decompressors pass over it), then the footer.
            try check(archive_write_close(w), output)
            try gz.finishMember()
            let compressed = try ZstdFrameWriter.compress([UInt8](json), what: "\(output): TOC")
            let tocOffset = gz.blobOffset + 8
            try gz.writeRaw(ZstdChunkedTrailer.tocFrame(compressed))
            try gz.writeRaw(ZstdChunkedTrailer.footer(offset: tocOffset, length: Int64(compressed.count), uncompressed: Int64(json.count)))
            return Result(blobDigest: gz.blobDigest, blobSize: gz.blobOffset, diffID: digestString(sink.tarHash), tarSize: sink.tarSize,
                          tocDigest: compressed.withUnsafeBytes { sha256Digest($0) },
                          tocPosition: "\(tocOffset):\(compressed.count):\(json.count):1", prioritised: found)
        }
        try gz.startMember()
        let tocOffset = gz.blobOffset
        let te = archive_entry_new()
        defer { archive_entry_free(te) }
        archive_entry_set_pathname(te, StargzTOC.fileName)
        archive_entry_set_filetype(te, UInt32(Linux.S_IFREG))
        archive_entry_set_perm(te, 0o644)
        archive_entry_set_size(te, la_int64_t(json.count))
        try check(archive_write_header(w, te), StargzTOC.fileName)
        _ = json.withUnsafeBytes { archive_write_data(w, $0.baseAddress, json.count) }
        try check(archive_write_close(w), output)
        try gz.finishMember()
        try gz.writeRaw(StargzTOC.footer(tocOffset: tocOffset))
        return Result(blobDigest: gz.blobDigest, blobSize: gz.blobOffset, diffID: digestString(sink.tarHash),
                      tarSize: sink.tarSize, tocDigest: json.withUnsafeBytes { sha256Digest($0) }, tocPosition: nil, prioritised: found)
    }

    static func digestString(_ h: SHA256) -> String { "sha256:" + h.finalize().map { hex2($0) }.joined() }

    static func tocEntry(_ e: OpaquePointer, name: String) -> StargzTOC.Entry {
        let type = UInt32(archive_entry_filetype(e))
        var kind: String
        switch type {
        case Linux.S_IFDIR: kind = "dir"
        case Linux.S_IFLNK: kind = "symlink"
        case Linux.S_IFCHR: kind = "char"
        case Linux.S_IFBLK: kind = "block"
        case Linux.S_IFIFO: kind = "fifo"
        default: kind = "reg"
        }
        var t = StargzTOC.Entry(name: name, type: kind, mode: Int64(archive_entry_mode(e)))
        if let hl = archive_entry_hardlink(e) { t.type = "hardlink"; t.linkName = String(cString: hl) }
        if type == Linux.S_IFLNK, let s = archive_entry_symlink(e) { t.linkName = String(cString: s) }
        t.uid = Int(archive_entry_uid(e))
        t.gid = Int(archive_entry_gid(e))
        if let u = archive_entry_uname(e) { let s = String(cString: u); if !s.isEmpty { t.userName = s } }
        if let g = archive_entry_gname(e) { let s = String(cString: g); if !s.isEmpty { t.groupName = s } }
        if t.type == "reg" { t.size = Int64(archive_entry_size(e)) }
        if type == Linux.S_IFCHR || type == Linux.S_IFBLK {
            t.devMajor = Int(archive_entry_rdevmajor(e))
            t.devMinor = Int(archive_entry_rdevminor(e))
        }
        t.modtime = StargzTOC.formatTime(Int(archive_entry_mtime(e)), Int(archive_entry_mtime_nsec(e)))
        var xn: UnsafePointer<CChar>? = nil
        var xv: UnsafeRawPointer? = nil
        var xs = 0
        if archive_entry_xattr_reset(e) > 0 {
            var x: [String: Data] = [:]
            while archive_entry_xattr_next(e, &xn, &xv, &xs) == ARCHIVE_OK {
                guard let xn else { continue }
                x[String(cString: xn)] = xv.map { Data(bytes: $0, count: xs) } ?? Data()
            }
            if !x.isEmpty { t.xattrs = x }
        }
        return t
    }
}

/// libarchive's write callback (a C function: no captures; the sink comes
/// as the client pointer).
private func estargzSinkWrite(_ a: OpaquePointer?, _ client: UnsafeMutableRawPointer?, _ buf: UnsafeRawPointer?, _ len: Int) -> la_ssize_t {
    guard let client, let buf else { return 0 }
    let s = Unmanaged<EstargzWriter.Sink>.fromOpaque(client).takeUnretainedValue()
    let b = UnsafeRawBufferPointer(start: buf, count: len)
    s.tarHash.update(bufferPointer: b)
    s.tarSize += Int64(len)
    do { try s.gz.write(b) } catch { s.failure = error; return -1 }
    return la_ssize_t(len)
}
