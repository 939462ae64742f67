import Archive
import Foundation
import Store
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Fetches the data of a lazily pulled layer's files: one file at a time by
/// Range requests (each chunk checked against the TOC's digest before a
/// byte of it is written), or the whole blob to complete the layer.
public final class LazyFetcher: @unchecked Sendable {
    public let store: Store
    public let layer: StoredLayer
    public var layerID: String { layer.id }
    public let source: Store.LazySource
    let chunks: [String: [StargzTOC.Chunk]]
    /// The file names in the blob's order, landmark-prioritised files first.
    let order: [String]
    let index: [String: Int]
    let client: RegistryClient
    let blobPath: String
    /// The layer's tree, opened once: files are opened beneath it by name.
    let root: OwnedFD
    /// Compressed bytes fetched by Range requests, for `strata stats` and tests.
    public let bytesFetched = Locked<Int64>(0)

    public init(layer: StoredLayer, options: RegistryOptions) throws {
        self.store = layer.store
        self.layer = layer
        source = try layer.lazySource()
        let toc = try layer.lazyTOC()
        chunks = toc.chunks(tocOffset: source.tocOffset)
        var names: [String] = []
        for e in toc.entries where e.type == "reg" && (e.size ?? 0) > 0 { names.append(e.path) }
        order = names
        index = Dictionary(names.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        client = try RegistryClient(host: source.registry, options: options, credentials: nil)
        blobPath = "/v2/\(source.repository)/blobs/\(source.blob)"
        root = OwnedFD(try openOwned(layer.diff, Linux.O_PATH | O_DIRECTORY | O_CLOEXEC))
    }

    private var rootFD: Int32 { root.raw }

    public func shutdown() async { await client.shutdown() }

    /// The chunks of `name`, each checked to lie inside the blob's data.
    func plan(_ name: String) throws -> [StargzTOC.Chunk] {
        guard let cs = chunks[name], !cs.isEmpty else {
            throw RegistryError(.corrupt, "layer \(Digest.hex(source.diffID).prefix(12)): \(name) has no data in its TOC")
        }
        for c in cs where c.offset < 0 || c.end > source.tocOffset || c.end <= c.offset || c.size < 0 || c.size > 64 << 20 {
            throw RegistryError(.corrupt, "layer \(Digest.hex(source.diffID).prefix(12)): the TOC places \(name) outside the blob")
        }
        return cs
    }

    /// One chunk's bytes, decompressed and checked.
    func decode(_ c: StargzTOC.Chunk, _ compressed: Data, _ name: String) throws -> [UInt8] {
        let zstd = source.format == "zstd:chunked"
        let plain = try compressed.withUnsafeBytes { (b) throws -> [UInt8] in
            do {
                return zstd ? try Unzstd.decode(b, want: Int(c.size), what: name) : try Gunzip.prefix(b, want: Int(c.size), what: name)
            } catch { throw RegistryError(.corrupt, "\(name): \(error)") }
        }
        let got = plain.withUnsafeBytes { sha256Digest($0) }
        if got != c.digest {
            throw RegistryError(.corrupt, "\(name): a chunk at \(c.offset) of blob \(source.blob) does not match its digest in the TOC (got \(got)); refused")
        }
        return plain
    }

    /// Fills the file open as `fd` (the union's descriptor of it), named
    /// `name` in the TOC, from the registry, with the files after it in the
    /// blob's order up to `readahead` bytes in all: a walk reads files in
    /// about that order (the tar's), so one request serves many reads, and
    /// a lone read costs at most that much more. Two readers of one file wait for each other (a lock
    /// on the file); a mark goes only after the data is written and synced.
    public func fill(fd: Int32, name raw: String, readahead: Int64 = 0) async throws {
        // Layers pulled before marks were written as layer paths carry the
        // TOC's own spelling (`./bin/sh`).
        let name = StargzTOC.layerPath(raw)
        let writer = try openOwned("/proc/self/fd/\(fd)", O_WRONLY | O_CLOEXEC, what: "\(name): opening it to fill")
        let w = writer.raw
        if retryEINTR({ flock(w, LOCK_EX) }) != 0 { throw RegistryError.last("\(name): lock") }
        if !Self.marked(w) { return }
        let own = try plan(name)
        guard let first = own.first, let last = own.last else { return }
        var end = last.end
        var neighbours: [(String, [StargzTOC.Chunk])] = []
        if let i = index[name] {
            var j = i + 1
            while end - first.offset < readahead, j < order.count {
                let n = order[j]
                j += 1
                // Only files not here yet, and only while the request stays
                // within the read-ahead: a walk in another order than the
                // blob's must not fetch the same bytes twice.
                // (zstd:chunked puts the tar headers in frames between files:
                // a small gap, fetched along.)
                guard let cs = try? plan(n), let f = cs.first, let l = cs.last, f.offset >= end, f.offset - end <= 64 << 10,
                      l.end - first.offset <= readahead, isMarked(n) else { break }
                neighbours.append((n, cs))
                end = l.end
            }
        }
        let data = try await client.range(blobPath, from: first.offset, to: end, timeout: 20)
        bytesFetched.withLock { $0 += Int64(data.count) }
        try fillFrom(data, base: first.offset, w, name, own)
        // Neighbours are a bonus: one that is busy or fails is left for its
        // own read.
        for (n, cs) in neighbours {
            guard let file = try? openInLayer(n),
                  let writer = try? Sys.open("/proc/self/fd/\(file.raw)", O_WRONLY | O_CLOEXEC) else { continue }
            let nw = writer.raw
            if flock(nw, LOCK_EX | LOCK_NB) != 0 || !Self.marked(nw) { continue }
            try? fillFrom(data, base: first.offset, nw, n, cs)
        }
    }

    /// Writes a file's chunks from fetched bytes that start at blob offset
    /// `base`, each checked, then seals it (times, sync, mark).
    func fillFrom(_ data: Data, base: Int64, _ w: Int32, _ name: String, _ cs: [StargzTOC.Chunk]) throws {
        var st = stat()
        if fstat(w, &st) != 0 { throw RegistryError.last(name) }
        for c in cs {
            let slice = data.subdata(in: Int(c.offset - base)..<Int(c.end - base))
            try write(try decode(c, slice, name), to: w, at: c.fileOffset, name)
        }
        try seal(w, name, times: st)
    }

    /// Whether a file of the layer is still a hole (by name).
    func isMarked(_ name: String) -> Bool {
        guard let file = try? openInLayer(name) else { return false }
        return Self.marked(file.raw)
    }

    static func marked(_ fd: Int32) -> Bool {
        (try? Sys.getxattr(fd: fd, Store.lazyXattr)) != nil
    }

    func write(_ bytes: [UInt8], to fd: Int32, at offset: Int64, _ name: String) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { p -> Int in
                guard let base = p.baseAddress else { return 0 }
                return pwrite(fd, base + done, p.count - done, off_t(offset) + off_t(done))
            }
            if n < 0 { if errno == EINTR { continue }; throw RegistryError.last("\(name): write") }
            done += n
        }
    }

    /// The data is down: its times put back (the writes moved them; the
    /// layer's are the archive's), synced, and only then the mark removed.
    func seal(_ fd: Int32, _ name: String, times st: stat) throws {
        let ts = [st.st_atim, st.st_mtim]
        if futimens(fd, ts) != 0 { throw RegistryError.last("\(name): times") }
        if fdatasync(fd) != 0 { throw RegistryError.last("\(name): sync") }
        do throws(Errno) { try Sys.removexattr(fd: fd, Store.lazyXattr) } catch {
            if error != .noData { throw RegistryError.failed("\(name): removing its mark", error) }
        }
    }

    /// Opens a file of the layer's tree by its TOC name, never following a
    /// symlink (a hostile TOC may put one where a directory was).
    func openInLayer(_ name: String) throws(Errno) -> UniqueFD {
        try Sys.openBeneath(rootFD, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, noSymlinks: true)
    }

    /// Files before the prefetch landmark (those the image's builder marked
    /// as read first), fetched one by one by Range before anything else.
    public var prioritised: [String] {
        guard let i = order.firstIndex(of: StargzTOC.prefetchLandmark) else { return [] }
        return Array(order[..<i])
    }

    /// The whole layer, as a mount's background fetch does it: the
    /// prioritised files first, then the rest of the blob.
    public func completeLayer(yield: (@Sendable () async -> Void)? = nil, progress: @escaping @Sendable (String) -> Void) async throws {
        for name in prioritised {
            guard let file = try? openInLayer(name) else { continue }
            try await fill(fd: file.raw, name: name)
        }
        let ref = try Reference("\(source.registry)/\(source.repository)@\(source.blob)")
        try await complete(puller: Puller(store: store, client: client), ref: ref, yield: yield, progress: progress)
    }

    /// The rest of the layer: the whole blob downloaded (resumably, its
    /// digest checked), its tar checked against the diff ID, every file
    /// still a hole filled from it, and the layer made ordinary.
    public func complete(puller: Puller, ref: Reference, yield: (@Sendable () async -> Void)? = nil,
                         progress: @escaping @Sendable (String) -> Void) async throws {
        let short = Digest.hex(source.diffID).prefix(12)
        let dir = store.pullDirectory("lazy-" + String(Digest.hex(source.blob).prefix(16)))
        try FileManager.default.createDirectory(atPath: "\(dir)/blobs/sha256", withIntermediateDirectories: true)
        let final = "\(dir)/blobs/sha256/\(Digest.hex(source.blob))", partial = final + ".partial"
        // Files are filled while the blob arrives, each as soon as its data
        // is down (every chunk is checked against the TOC, so nothing waits
        // for the blob's own digest): a reader of the mount finds it here
        // instead of asking for it again.
        let finished = Locked(false)
        let download = Task { () throws -> String in
            defer { finished.withLock { $0 = true } }
            return try await puller.blob(ref, source.blob, size: Int(source.blobSize), dir: dir, yield: yield).path
        }
        var filled = 0
        var next = 0
        do {
            while next < order.count {
                guard let end = try plan(order[next]).last?.end else { next += 1; continue }
                var st = stat()
                let have: Int64 = stat(final, &st) == 0 || stat(partial, &st) == 0 ? Int64(st.st_size) : 0
                if have < end {
                    if finished.withLock({ $0 }) { break }
                    try await Task.sleep(nanoseconds: 20_000_000)
                    continue
                }
                // The final name once renamed, else the partial file.
                if try fillFromBlobFile(access(final, F_OK) == 0 ? final : partial, order[next]) { filled += 1 }
                if filled == 2 { killPoint("lazy-filled") }
                next += 1
            }
        } catch {
            download.cancel()
            throw error
        }
        let blob = try await download.value
        let plain = "\(dir)/layer.tar"
        let diff: String
        do { diff = try Digest.ofUncompressed(blob, copy: plain) } catch { throw RegistryError(wrapping: error) }
        if diff != source.diffID {
            throw RegistryError(.corrupt, "layer \(source.diffID): its blob decompresses to \(diff); refused")
        }
        // What the loop left (it stops when the download fails or ends).
        for name in order where try fillFromBlobFile(blob, name) { filled += 1 }
        do { try layer.finishLazy(plainTar: plain) } catch { throw RegistryError(wrapping: error) }
        _ = removeTree(path: dir)
        progress("layer \(short): complete (\(filled) files filled from the blob)")
    }

    private func openBlob(_ path: String) throws(RegistryError) -> UniqueFD {
        if let f = try? Sys.open(path, O_RDONLY | O_CLOEXEC) { return f }
        // Renamed to its final name since the caller looked.
        return try openOwned(path.hasSuffix(".partial") ? String(path.dropLast(8)) : path, O_RDONLY | O_CLOEXEC)
    }

    /// Fills one file of the layer from the blob (or the part of it down so
    /// far) on disk; false when it was here already.
    func fillFromBlobFile(_ path: String, _ name: String) throws -> Bool {
        let file: UniqueFD
        do throws(Errno) { file = try openInLayer(name) } catch {
            throw RegistryError.failed("layer \(Digest.hex(source.diffID).prefix(12)): \(name)", error)
        }
        let writer = try openOwned("/proc/self/fd/\(file.raw)", O_WRONLY | O_CLOEXEC, what: "\(name): opening it to fill")
        let w = writer.raw
        if retryEINTR({ flock(w, LOCK_EX) }) != 0 { throw RegistryError.last("\(name): lock") }
        if !Self.marked(w) { return false }
        let blobFile = try openBlob(path)
        let bfd = blobFile.raw
        let cs = try plan(name)
        guard let first = cs.first, let last = cs.last else { return false }
        var data = Data(count: Int(last.end - first.offset))
        let n = data.withUnsafeMutableBytes { pread(bfd, $0.baseAddress, $0.count, off_t(first.offset)) }
        if n != data.count { throw RegistryError(.corrupt, "\(path): short read at \(first.offset)") }
        try fillFrom(data, base: first.offset, w, name, cs)
        return true
    }
}
