import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata pull`: manifest (an index resolved to the platform), config and
/// missing layers into an OCI layout under the store's tmp, every digest and
/// size checked, then registered by the image loader. Blobs are fetched
/// three at a time into `.partial` files that a rerun resumes with Range.
public struct Puller: Sendable {
    public let store: Store
    public let client: RegistryClient
    public var platform = Puller.runningPlatform
    public var progress: @Sendable (String) -> Void = { _ in }

    public init(store: Store, client: RegistryClient) {
        self.store = store
        self.client = client
    }

    /// Manifests and indexes are small; a larger answer is not one (and
    /// would be held in memory whole).
    static let manifestLimit = 4 << 20

    /// A manifest must come as one: its content type one we asked for, or
    /// plain JSON whose mediaType is one.
    static func checkContentType(_ r: RegistryClient.Response, _ what: String) throws {
        let type = (r.headers["Content-Type"].first ?? "").split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        if RegistryClient.manifestTypes.contains(type) { return }
        if type.isEmpty || type == "application/json",
           let mt = (try? JSONDecoder().decode(OCI.Kind.self, from: r.body))?.mediaType,
           RegistryClient.manifestTypes.contains(mt) { return }
        throw RegistryError(.protocol, "\(what): the registry answered with content type \(type.isEmpty ? "(none)" : type), not an image manifest or index")
    }

    /// The image's manifest: the one `ref` names, or for an index the one
    /// for `platform`; checked against its digest wherever one is known.
    func manifest(_ ref: Reference) async throws -> Data {
        let accept = RegistryClient.manifestTypes.joined(separator: ", ")
        var r = try await client.request(.GET, "/v2/\(ref.repository)/manifests/\(ref.reference)", headers: [("Accept", accept)],
                                         maxBody: Self.manifestLimit)
        guard r.status == 200 else { throw RegistryClient.error(r.status, r.body, "\(ref)") }
        try Self.checkContentType(r, "\(ref)")
        if let d = ref.digest, Digest.of(r.body) != d { throw RegistryError(.corrupt, "\(ref): the manifest does not match its digest") }
        if let list = try decode(OCI.Kind.self, r.body, "manifest of \(ref)").manifests {
            guard let digest = Self.pick(list, platform: platform) else {
                let offered = list.compactMap { $0.platform?.name }.joined(separator: ", ")
                throw RegistryError(.noMatchingPlatform, "\(ref) has no image for \(platform) (it has \(offered.isEmpty ? "none named" : offered)); choose one with --platform")
            }
            r = try await client.request(.GET, "/v2/\(ref.repository)/manifests/\(digest)", headers: [("Accept", accept)],
                                         maxBody: Self.manifestLimit)
            guard r.status == 200 else { throw RegistryClient.error(r.status, r.body, "\(ref)@\(digest)") }
            try Self.checkContentType(r, "\(ref)@\(digest)")
            if Digest.of(r.body) != digest { throw RegistryError(.corrupt, "\(ref): the manifest for \(platform) does not match its digest") }
        }
        return r.body
    }

    public func pull(_ ref: Reference, lazy: Bool = false) async throws -> String {
        let r = (body: try await manifest(ref), ())
        let manifestData = r.body
        let manifest = try decode(OCI.Manifest.self, manifestData, "manifest of \(ref)")
        let cfgDigest = manifest.config.digest, layers = manifest.layers

        let dir = store.pullDirectory(String(Digest.hex(Digest.of(manifestData)).prefix(16)))
        // Two pulls of one image share this directory (it is what a rerun
        // resumes from): the second waits for the first, then finds its
        // layers in the store. Held until the pull ends; the kernel drops it
        // if the process dies.
        let lockFile = try openOwned(dir + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        let lockFD = lockFile.raw
        if flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
            progress("waiting for another pull of \(ref) into this store")
            if retryEINTR({ flock(lockFD, LOCK_EX) }) != 0 { throw RegistryError.last("\(dir).lock") }
        }
        try FileManager.default.createDirectory(atPath: "\(dir)/blobs/sha256", withIntermediateDirectories: true)
        let config = try await blob(ref, cfgDigest, size: Int(manifest.config.size), dir: dir).path
        let diffIDs = try decode(OCI.ImageConfig.self, try Data(contentsOf: URL(fileURLWithPath: config)), "config of \(ref)").diffIDs
        let chain = Digest.chainIDs(diffIDs)
        if layers.count != diffIDs.count {
            throw RegistryError(.corrupt, "\(ref): the config lists \(diffIDs.count) layers, the manifest \(layers.count)")
        }
        // What an earlier lazy pull left partial is completed here: the
        // rest of each blob, checked, fills the files still not fetched.
        if !lazy {
            for id in chain where store.storedLayer(id).isLazy {
                let f = try LazyFetcher(layer: store.storedLayer(id), options: client.options)
                progress("layer \(Digest.hex(f.source.diffID).prefix(12)): completing a lazy pull")
                do { try await f.complete(puller: self, ref: ref, progress: progress) } catch { await f.shutdown(); throw error }
                await f.shutdown()
            }
        }
        if lazy {
            let config = try Data(contentsOf: URL(fileURLWithPath: config))
            return try await pullLazily(ref, layers: layers, diffIDs: diffIDs, chain: chain, config: config, configDigest: cfgDigest, dir: dir)
        }
        // Layers already in the store are not downloaded again.
        var wanted: [(String, Int)] = []
        for (i, l) in layers.enumerated() {
            let d = l.digest
            if i < chain.count, try store.layer(chain[i]) != nil { progress("layer \(Digest.hex(d).prefix(12)): already present"); continue }
            wanted.append((d, Int(l.size)))
        }
        var verified: [String: String] = [:]
        try await withThrowingTaskGroup(of: (path: String, digest: String).self) { group in
            var next = 0
            for _ in 0..<min(3, wanted.count) {
                let (d, size) = wanted[next]; next += 1
                group.addTask { try await self.blob(ref, d, size: size, dir: dir) }
            }
            while let got = try await group.next() {
                verified[got.path] = got.digest
                if next < wanted.count {
                    let (d, size) = wanted[next]; next += 1
                    group.addTask { try await self.blob(ref, d, size: size, dir: dir) }
                }
            }
        }
        try manifestData.write(to: URL(fileURLWithPath: "\(dir)/blobs/sha256/\(Digest.hex(Digest.of(manifestData)))"))
        let index = OCI.Index(manifests: [OCI.Descriptor(
            mediaType: manifest.mediaType ?? OCI.manifestType, digest: Digest.of(manifestData), size: Int64(manifestData.count),
            annotations: ["io.containerd.image.name": ref.storeName])])
        try OCI.encode(index).write(to: URL(fileURLWithPath: "\(dir)/index.json"))
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: "\(dir)/oci-layout"))
        var loader = ImageLoader(store: store)
        loader.progress = progress
        loader.ownsFiles = true
        loader.verifiedDigests = verified
        let loaded: [ImageLoader.Loaded]
        do { loaded = try loader.load(directory: dir, source: "\(ref)") } catch { throw RegistryError(wrapping: error) }
        try? FileManager.default.removeItem(atPath: dir)
        for d in [cfgDigest] + layers.map(\.digest) {
            store.noteBlobSource(d, ref, progress: progress)
        }
        return loaded.first?.id ?? ""
    }

    /// One blob, verified; resumed from a `.partial` file when one is left.
    /// The digest is taken as the bytes arrive (after rehashing what a
    /// resumed file already holds), so a blob is never read back.
    func blob(_ ref: Reference, _ digest: String, size: Int, dir: String,
              yield: (@Sendable () async -> Void)? = nil) async throws -> (path: String, digest: String) {
        guard Digest.isValid(digest) else { throw RegistryError(.invalidReference, "\(ref): bad digest \(digest)") }
        let final = "\(dir)/blobs/sha256/\(Digest.hex(digest))"
        if FileManager.default.fileExists(atPath: final) { return (final, try Digest.ofFile(final)) }
        let partial = final + ".partial"
        var st = stat()
        var have: Int64 = lstat(partial, &st) == 0 ? Int64(st.st_size) : 0
        // A pull killed after the last byte and before the rename left it
        // all: asking for more would be a Range past the end (416).
        if size > 0 && have > Int64(size) { unlink(partial); have = 0 }
        let state = BlobState()
        if have > 0 { try state.absorb(file: partial, upTo: have) }
        let short = Digest.hex(digest).prefix(12)
        let whole = size > 0 ? " of \(size >> 20) MiB" : ""
        var from: Int64 = have
        if !(size > 0 && have == Int64(size)) {
            from = try await client.download("/v2/\(ref.repository)/blobs/\(digest)", to: partial, offset: have, yield: yield) { chunk in
                // A line every 32 MiB, so a long download shows it is moving.
                if let mib = state.add(chunk, reportEvery: 32 << 20) { progress("blob \(short): \(mib) MiB\(whole)") }
            }
            if from == 0 && have > 0 { state.reset(); try state.absorb(file: partial, upTo: Int64.max) }
        }
        let (got, total) = state.finish()
        if got != digest {
            unlink(partial)        // never resume from bytes that do not add up
            if have > 0 {
                // What was kept did not add up (a resumed file is taken on
                // trust until the end): once more, from the start.
                progress("blob \(short): the resumed download did not match its digest; downloading it again")
                return try await blob(ref, digest, size: size, dir: dir)
            }
            throw RegistryError(.corrupt, "blob \(digest) of \(ref) does not match its digest (got \(got)); refused")
        }
        if size >= 0, total != Int64(size) {
            unlink(partial)
            throw RegistryError(.corrupt, "blob \(digest) of \(ref) has \(total) bytes, the manifest says \(size)")
        }
        if rename(partial, final) != 0 { throw RegistryError.last("\(final)") }
        progress("blob \(short): \(total) bytes\(from > 0 ? " (resumed at \(from))" : "")")
        return (final, got)
    }

    /// The machine's platform in OCI terms (`uname -m` mapped as Go names it).
    public static var runningPlatform: String {
        var u = utsname()
        uname(&u)
        let m = withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        switch m {
        case "x86_64": return "linux/amd64"
        case "aarch64", "arm64": return "linux/arm64"
        case "armv7l": return "linux/arm/v7"
        case "armv6l": return "linux/arm/v6"
        case "i386", "i686": return "linux/386"
        default: return "linux/\(m)"
        }
    }

    /// The index entry for `platform` (`os/arch[/variant]`): os and
    /// architecture must match; without a variant asked for, an entry
    /// without one is preferred.
    public static func pick(_ list: [OCI.Descriptor], platform: String) -> String? {
        let want = platform.split(separator: "/").map(String.init)
        guard want.count >= 2 else { return nil }
        let candidates = list.filter { e in
            guard let p = e.platform, p.os == want[0], p.architecture == want[1] else { return false }
            if want.count > 2 { return p.variant == want[2] }
            return true
        }
        let plain = candidates.first { $0.platform?.variant == nil }
        return (plain ?? candidates.first)?.digest
    }

    func decode<T: Decodable>(_ type: T.Type, _ d: Data, _ what: String) throws -> T {
        do { return try OCI.decode(T.self, d, what) } catch { throw RegistryError(wrapping: error) }
    }
}

/// A blob's running digest and length while it downloads.
final class BlobState: @unchecked Sendable {
    private let lock = NSLock()
    private var hasher = Digest.Hasher()
    private var count: Int64 = 0

    func add(_ bytes: UnsafeRawBufferPointer) {
        lock.lock(); hasher.update(bytes); count += Int64(bytes.count); lock.unlock()
    }

    /// Adds a chunk; returns the MiB so far when it crossed a multiple of `every`.
    func add(_ bytes: UnsafeRawBufferPointer, reportEvery every: Int64) -> Int64? {
        lock.lock(); defer { lock.unlock() }
        let before = count
        hasher.update(bytes)
        count += Int64(bytes.count)
        return count / every != before / every ? count >> 20 : nil
    }

    func reset() { lock.lock(); hasher = Digest.Hasher(); count = 0; lock.unlock() }

    /// Hashes the first `limit` bytes of a file already on disk.
    func absorb(file: String, upTo limit: Int64) throws {
        let input = try openOwned(file, O_RDONLY | O_CLOEXEC)
        let fd = input.raw
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var left = limit
        while left > 0 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, Int(min(Int64($0.count), left))) }
            if n < 0 { throw RegistryError.last("\(file)") }
            if n == 0 { break }
            buf.withUnsafeBytes { add(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= Int64(n)
        }
    }

    func finish() -> (String, Int64) { lock.lock(); defer { lock.unlock() }; return (hasher.finalize(), count) }
}
