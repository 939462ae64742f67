import Foundation

/// eStargz's table of contents (`stargz.index.json`, the estargz spec of
/// containerd/stargz-snapshotter): every tar entry and chunk of a layer,
/// with the offset of the gzip member that holds each file's data and the
/// digest of each chunk, so that one file can be fetched by a Range
/// request and checked on its own.
public struct StargzTOC: Codable, Sendable {
    public var version: Int
    public var entries: [Entry]

    public init(version: Int, entries: [Entry]) {
        self.version = version
        self.entries = entries
    }

    public static let fileName = "stargz.index.json"
    public static let prefetchLandmark = ".prefetch.landmark"
    public static let noPrefetchLandmark = ".no.prefetch.landmark"
    /// The manifest annotation that carries the TOC's digest.
    public static let tocDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"
    public static let uncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"
    public static let footerSize = 51
    /// zstd:chunked (containers/storage): where the TOC is and its digest.
    public static let zstdPositionAnnotations = ["io.github.containers.zstd-chunked.manifest-position",
                                                 "io.containers.zstd-chunked.manifest-position"]
    public static let zstdChecksumAnnotations = ["io.github.containers.zstd-chunked.manifest-checksum",
                                                 "io.containers.zstd-chunked.manifest-checksum"]

    public struct Entry: Codable, Sendable {
        public var name: String
        public var type: String
        public var size: Int64?
        public var modtime: String?
        public var linkName: String?
        /// Permission bits (eStargz adds the type's bits; a zstd:chunked
        /// chunk entry has none).
        public var mode: Int64?
        public var uid: Int?
        public var gid: Int?
        public var userName: String?
        public var groupName: String?
        public var devMajor: Int?
        public var devMinor: Int?
        public var xattrs: [String: Data]?
        public var digest: String?
        public var offset: Int64?
        public var chunkOffset: Int64?
        public var chunkSize: Int64?
        public var chunkDigest: String?
        /// zstd:chunked: where the file's last frame ends.
        public var endOffset: Int64?

        public init(name: String, type: String, mode: Int64?) {
            self.name = name
            self.type = type
            self.mode = mode
        }

        /// The name as a layer path (see `StargzTOC.layerPath`).
        public var path: String { StargzTOC.layerPath(name) }

        /// Seconds and nanoseconds of `modtime` (RFC 3339, UTC as written).
        public var mtime: (Int, Int) {
            guard let m = modtime, !m.isEmpty else { return (0, 0) }
            return StargzTOC.parseTime(m)
        }
    }

    /// A TOC or tar name as the layer path it means: tar and both TOC
    /// formats treat `./bin/sh`, `/bin/sh` and `bin/sh` as one path
    /// (`podman import`, `tar -C dir .` and many build tools write the
    /// first), so every name is matched in this form, marks included.
    public static func layerPath(_ name: String) -> String {
        var n = Substring(name)
        while true {
            if n.hasPrefix("./") { n = n.dropFirst(2) } else if n.hasPrefix("/") { n = n.dropFirst() } else { break }
        }
        while n.hasSuffix("/") { n = n.dropLast() }
        return n == "." ? "" : String(n)
    }

    /// One piece of a regular file's data: where its gzip member starts,
    /// where the next one does (the Range to fetch), where it goes in the
    /// file, how long it is and its digest.
    public struct Chunk: Sendable, Equatable {
        public var offset: Int64
        public var end: Int64
        public var fileOffset: Int64
        public var size: Int64
        public var digest: String
    }

    /// The chunks of every non-empty regular file, by the file's name, with
    /// the Range each needs (up to the next member in the blob; the TOC's
    /// own member for the last).
    public func chunks(tocOffset: Int64) -> [String: [Chunk]] {
        let offsets = Set(entries.compactMap { e in (e.type == "reg" || e.type == "chunk") && (e.size ?? 0) + (e.chunkSize ?? 0) > 0 ? e.offset : nil })
            .union([tocOffset]).sorted()
        func next(after o: Int64) -> Int64 {
            var lo = 0, hi = offsets.count
            while lo < hi { let m = (lo + hi) / 2; if offsets[m] <= o { lo = m + 1 } else { hi = m } }
            return lo < offsets.count ? offsets[lo] : tocOffset
        }
        var out: [String: [Chunk]] = [:]
        var current = "", fileSize: Int64 = 0, fileEnd: Int64? = nil
        func close() {
            // zstd:chunked says where the file's last frame ends (tar headers
            // are frames of their own between files).
            if let end = fileEnd, var cs = out[current], let last = cs.indices.last, end > cs[last].offset {
                cs[last].end = end
                out[current] = cs
            }
        }
        for e in entries {
            if e.type == "reg" {
                close()
                current = e.path
                fileSize = e.size ?? 0
                fileEnd = e.endOffset
                guard fileSize > 0, let o = e.offset else { continue }
                let size = e.chunkSize.flatMap { $0 > 0 ? $0 : nil } ?? fileSize
                out[current, default: []].append(Chunk(offset: o, end: next(after: o), fileOffset: 0, size: size,
                                                       digest: e.chunkDigest ?? e.digest ?? ""))
            } else if e.type == "chunk", let o = e.offset {
                let start = e.chunkOffset ?? 0
                let size = e.chunkSize.flatMap { $0 > 0 ? $0 : nil } ?? (fileSize - start)
                out[current, default: []].append(Chunk(offset: o, end: next(after: o), fileOffset: start, size: size,
                                                       digest: e.chunkDigest ?? ""))
            }
        }
        close()
        return out
    }

    static func parseTime(_ s: String) -> (Int, Int) {
        // 2019-08-20T10:30:43Z, or with a fraction: 2019-08-20T10:30:43.123456789Z
        let parts = s.split(whereSeparator: { !$0.isNumber }).map(String.init)
        guard parts.count >= 6, let y = Int32(parts[0]), let mo = Int32(parts[1]), let d = Int32(parts[2]),
              let h = Int32(parts[3]), let mi = Int32(parts[4]), let se = Int32(parts[5]) else { return (0, 0) }
        var t = tm()
        t.tm_year = y - 1900; t.tm_mon = mo - 1; t.tm_mday = d; t.tm_hour = h; t.tm_min = mi; t.tm_sec = se
        let secs = timegm(&t)
        var nanos = 0
        if s.contains("."), parts.count >= 7 { nanos = Int((parts[6] + "000000000").prefix(9)) ?? 0 }
        return (secs, nanos)
    }

    static func formatTime(_ secs: Int, _ nanos: Int) -> String {
        var t = tm()
        var s = time_t(secs)
        gmtime_r(&s, &t)
        let base = String(format: "%04d-%02d-%02dT%02d:%02d:%02d", Int(t.tm_year) + 1900, Int(t.tm_mon) + 1, Int(t.tm_mday),
                          Int(t.tm_hour), Int(t.tm_min), Int(t.tm_sec))
        if nanos == 0 { return base + "Z" }
        var frac = String(format: "%09d", nanos)
        while frac.hasSuffix("0") { frac.removeLast() }
        return base + "." + frac + "Z"
    }

    /// The TOC's offset from the 51-byte footer, or nil when the bytes are
    /// not an eStargz footer.
    public static func tocOffset(footer f: [UInt8]) -> Int64? {
        guard f.count == footerSize, f[0] == 0x1f, f[1] == 0x8b, f[3] & 4 != 0,
              f[10] == 26, f[11] == 0, f[12] == UInt8(ascii: "S"), f[13] == UInt8(ascii: "G"), f[14] == 22 else { return nil }
        let text = String(decoding: f[16..<38], as: UTF8.self)
        guard text.hasSuffix("STARGZ") else { return nil }
        return Int64(text.prefix(16), radix: 16)
    }

    static func footer(tocOffset: Int64) -> [UInt8] {
        var f: [UInt8] = [0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, UInt8(ascii: "S"), UInt8(ascii: "G"), 22, 0]
        f += Array(String(format: "%016llxSTARGZ", tocOffset).utf8)
        f += [0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]
        return f
    }
}
