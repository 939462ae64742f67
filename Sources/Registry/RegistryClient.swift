import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The OCI distribution protocol over AsyncHTTPClient: requests with the
/// registry's auth challenges answered (anonymous, bearer tokens as Docker
/// Hub issues them, basic credentials), and registry errors as one line.
public final class RegistryClient: @unchecked Sendable {
    public let host: String
    let options: RegistryOptions
    let http: HTTPClient
    /// https or http, settled by the first request (see `resolveScheme`).
    private let settled = Locked<String?>(nil)
    var credentials: (user: String, password: String)?
    /// Shared by the concurrent blob downloads, any of which may answer a
    /// challenge: behind a lock.
    private let auth = Locked<String?>(nil)
    var authorization: String? {
        get { auth.withLock { $0 } }
        set { auth.withLock { $0 = newValue } }
    }

    public static let manifestTypes = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]

    /// HTTPS first, with certificates verified against the system's roots
    /// and the registry's own CA from `certs.d` (as podman and docker
    /// read them); plain HTTP only when HTTPS fails and the registry is this
    /// machine or `--insecure`, as docker does. Call `shutdown` when done.
    public init(host: String, options: RegistryOptions = RegistryOptions(), credentials: (String, String)?) throws {
        self.host = host
        self.options = options
        var tls = TLSConfiguration.makeClientConfiguration()
        let cas = options.caFiles(for: host)
        if !cas.isEmpty {
            var certs: [NIOSSLCertificate] = []
            for f in cas {
                do { certs += try NIOSSLCertificate.fromPEMFile(f) } catch { throw RegistryError(.certificate, "\(f): not a PEM certificate (\(error))") }
            }
            tls.additionalTrustRoots = [.certificates(certs)]
        }
        var config = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .follow(max: 5, allowCycles: false),
                                              timeout: .init(connect: .seconds(options.connectTimeout), read: .seconds(options.readTimeout)))
        // Redirects to other hosts (blob storage) are followed; the client
        // drops Authorization when the origin changes, so the registry's
        // credentials never reach another host.
        config.decompression = .disabled
        // A refused connection is an answer: said at once, as docker and
        // podman say it, instead of retried until the connect timeout
        // (10 s per scheme tried). A registry that goes away during a pull
        // is resumed by the next pull, and a lazy read gets EIO and tries
        // again at the next read.
        config.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
        self.credentials = credentials ?? Self.dockerConfigCredentials(host)
    }

    public func shutdown() async { try? await http.shutdown() }

    public var isLocal: Bool { Self.isLocal(host) }
    static func isLocal(_ host: String) -> Bool {
        host.hasPrefix("localhost") || host.hasPrefix("127.") || host.hasPrefix("[::1]")
    }

    /// The scheme this registry speaks. Where plain HTTP is allowed (this
    /// machine, `--insecure`), a port that answers a plain request as HTTP
    /// speaks HTTP; one that says it wants HTTPS (Go's and nginx's TLS
    /// servers answer so), or does not answer, speaks HTTPS. Asking over TLS
    /// first would wait out the connect timeout on a plain Go server, which
    /// never answers a ClientHello. Elsewhere only HTTPS is tried.
    func resolveScheme() async throws -> String {
        if let s = settled.withLock({ $0 }) { return s }
        if options.insecure || isLocal {
            if let r = try? await http.execute(HTTPClientRequest(url: "http://\(host)/v2/"), timeout: .seconds(30)) {
                let body = (try? await r.body.collect(upTo: 1 << 16)).map { String(buffer: $0) } ?? ""
                if !(r.status == .badRequest && body.contains("HTTPS")) {
                    settled.withLock { $0 = "http" }
                    return "http"
                }
            }
        }
        do {
            _ = try await http.execute(HTTPClientRequest(url: "https://\(host)/v2/"), timeout: .seconds(30))
        } catch {
            let why = describe(error)
            if why == "connection refused" { throw RegistryError(.network, "cannot connect to \(host): connection refused") }
            throw RegistryError(.network, "cannot reach \(host) over HTTPS: \(why)"
                + (why.contains("certificate") ? "; if it uses a private CA, put it in /etc/containers/certs.d/\(host)/ca.crt or pass --cert-dir DIR" : "")
                + (options.insecure || isLocal ? "" : "; for a plain-HTTP registry pass --insecure"))
        }
        settled.withLock { $0 = "https" }
        return "https"
    }

    /// What a transport error means, in a user's words.
    func describe(_ error: Error) -> String {
        let text = "\(error)"
        if let e = error as? HTTPClientError {
            if e == .readTimeout { return "no data for \(options.readTimeout) s (timed out)" }
            if e == .connectTimeout { return "connection timed out" }
        }
        if text.contains("Connection refused") { return "connection refused" }
        if text.contains("certificate") || text.contains("CERTIFICATE") { return "certificate not trusted (\(Self.short(text)))" }
        if text.contains("handshake") || text.contains("SSL") || text.contains("TLS") { return "TLS handshake failed (\(Self.short(text)))" }
        return Self.short(text)
    }

    static func short(_ s: String) -> String { s.count > 160 ? String(s.prefix(160)) + "…" : s }

    /// Basic credentials from ~/.docker/config.json (`auths.<host>.auth`).
    static func dockerConfigCredentials(_ host: String) -> (String, String)? {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
        guard let d = FileManager.default.contents(atPath: "\(home)/.docker/config.json"),
              let auths = (try? JSONDecoder().decode(DockerConfig.self, from: d))?.auths,
              let b64 = (auths[host] ?? auths["https://\(host)"])?.auth, let raw = Data(base64Encoded: b64),
              let s = String(data: raw, encoding: .utf8), let colon = s.firstIndex(of: ":") else { return nil }
        return (String(s[..<colon]), String(s[s.index(after: colon)...]))
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: HTTPHeaders
        public var body: Data
    }

    func url(_ path: String) async throws -> String {
        path.hasPrefix("http") ? path : "\(try await resolveScheme())://\(host)\(path)"
    }

    /// One request; a 401 is answered once through the challenge it carries.
    public func request(_ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: Data? = nil,
                        maxBody: Int = 64 << 20, timeout: Int64 = 300) async throws -> Response {
        let u = try await url(path)
        return try await send(timeout: .seconds(timeout), maxBody: maxBody, what: path) {
            var req = HTTPClientRequest(url: u)
            req.method = method
            for (k, v) in headers { req.headers.add(name: k, value: v) }
            if let body { req.body = .bytes(ByteBuffer(bytes: body)) }
            return req
        }
    }

    /// Bytes `from..<to` of a blob, by a Range request: a registry that
    /// sends anything but exactly those (206) is refused, not read whole.
    public func range(_ path: String, from: Int64, to: Int64, timeout: Int64 = 30) async throws -> Data {
        let r = try await request(.GET, path, headers: [("Range", "bytes=\(from)-\(to - 1)")], maxBody: Int(to - from) + 1, timeout: timeout)
        if r.status == 200 { throw RegistryError(.protocol, "\(host) does not serve Range requests [\(path)]; pull without --lazy") }
        guard r.status == 206 else { throw Self.error(r.status, r.body, "\(path) bytes \(from)-\(to - 1)") }
        guard r.body.count == Int(to - from) else {
            throw RegistryError(.protocol, "\(host) sent \(r.body.count) bytes for a Range of \(to - from) [\(path)]")
        }
        return r.body
    }

    /// PATCHes a file's bytes to an upload location, read from disk as the
    /// connection takes them (a layer is never held in memory whole).
    public func patch(_ location: String, file: String, size: Int64) async throws -> Response {
        let u = try await url(location)
        return try await send(timeout: .seconds(3600), maxBody: 1 << 20, what: location) {
            var req = HTTPClientRequest(url: u)
            req.method = .PATCH
            req.headers.add(name: "Content-Type", value: "application/octet-stream")
            req.body = .stream(FileChunks(path: file), length: .known(size))
            return req
        }
    }

    /// Sends what `make` builds (again, after answering a 401 challenge once)
    /// with the current authorization, and collects the response.
    private func send(timeout: TimeAmount, maxBody: Int, what: String, _ make: () -> HTTPClientRequest) async throws -> Response {
        var attempt = 0
        while true {
            var req = make()
            if let a = authorization { req.headers.replaceOrAdd(name: "Authorization", value: a) }
            let resp: HTTPClientResponse
            do { resp = try await http.execute(req, timeout: timeout) } catch {
                throw RegistryError(.network, "\(host): \(describe(error)) [\(what)]")
            }
            var buf: ByteBuffer
            do { buf = try await resp.body.collect(upTo: maxBody) } catch is NIOTooManyBytesError {
                throw RegistryError(.protocol, "\(host) answered \(what) with more than \(maxBody >> 20) MiB; refused")
            } catch {
                throw RegistryError(.network, "\(host): \(describe(error)) [\(what)]")
            }
            let data = Data(buf.readBytes(length: buf.readableBytes) ?? [])
            if resp.status.code == 401 && attempt == 0, let challenge = resp.headers["WWW-Authenticate"].first {
                try await answer(challenge)
                attempt += 1
                continue
            }
            return Response(status: Int(resp.status.code), headers: resp.headers, body: data)
        }
    }

    /// Streams a blob into `file` (appending from `offset` when the registry
    /// honours the Range), handing every chunk to `onChunk` as it is
    /// written: the caller hashes while the bytes are in memory. Returns the
    /// offset the body was written from (0 when the registry sent it all).
    /// `yield`: awaited between chunks; a background download waits there
    /// while reads that someone waits for use the link.
    public func download(_ path: String, to file: String, offset: Int64, yield: (@Sendable () async -> Void)? = nil,
                         onChunk: (UnsafeRawBufferPointer) -> Void) async throws -> Int64 {
        var attempt = 0
        let u = try await url(path)
        while true {
            var req = HTTPClientRequest(url: u)
            if let a = authorization { req.headers.replaceOrAdd(name: "Authorization", value: a) }
            if offset > 0 { req.headers.add(name: "Range", value: "bytes=\(offset)-") }
            let resp: HTTPClientResponse
            do { resp = try await http.execute(req, timeout: .seconds(3600)) } catch {
                throw RegistryError(.network, "\(host): \(describe(error)) [\(path)]")
            }
            if resp.status.code == 401 && attempt == 0, let challenge = resp.headers["WWW-Authenticate"].first {
                _ = try? await resp.body.collect(upTo: 1 << 20)
                try await answer(challenge)
                attempt += 1
                continue
            }
            guard resp.status.code == 200 || resp.status.code == 206 else {
                // The error's body is only a detail: a connection cut while
                // it comes still leaves the status to report.
                var b = (try? await resp.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
                throw Self.error(Int(resp.status.code), Data(b.readBytes(length: b.readableBytes) ?? []), path)
            }
            let from: Int64 = resp.status.code == 206 ? offset : 0
            let output = try openOwned(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            let fd = output.raw
            if ftruncate(fd, off_t(from)) != 0 || lseek(fd, off_t(from), SEEK_SET) < 0 {
                throw RegistryError.last("\(file)")
            }
            var received = from
            do {
                for try await chunk in resp.body {
                    if let yield { await yield() }
                    try chunk.withUnsafeReadableBytes { (bytes) throws(SysError) in
                        try Sys.writeAll(fd, bytes, path: file)
                        onChunk(bytes)
                    }
                    received += Int64(chunk.readableBytes)
                }
            } catch let e as SysError {
                throw RegistryError(wrapping: e)
            } catch {
                // What arrived is kept: the next pull resumes from it.
                throw RegistryError(.network, "\(host) stopped sending \(path) after \(received) bytes: \(describe(error)); run the pull again to resume")
            }
            return from
        }
    }

    /// `Bearer realm=...,service=...,scope=...`: fetch a token (with basic
    /// credentials when we have them); `Basic`: send the credentials.
    func answer(_ challenge: String) async throws {
        let lower = challenge.lowercased()
        if lower.hasPrefix("basic") {
            guard let c = credentials else { throw RegistryError(.unauthorized, "\(host): the registry wants a login (UNAUTHORIZED); pass --username and --password-stdin") }
            authorization = "Basic " + Data("\(c.user):\(c.password)".utf8).base64EncodedString()
            return
        }
        guard lower.hasPrefix("bearer") else { throw RegistryError(.protocol, "\(host): unknown auth challenge '\(challenge)'") }
        let params = Self.challengeParameters(String(challenge.dropFirst(6)))
        guard let realm = params["realm"], var comps = URLComponents(string: realm) else { throw RegistryError(.protocol, "\(host): bearer challenge without a realm") }
        var items = comps.queryItems ?? []
        if let s = params["service"] { items.append(URLQueryItem(name: "service", value: s)) }
        if let s = params["scope"] { items.append(URLQueryItem(name: "scope", value: s)) }
        comps.queryItems = items
        guard let tokenURL = comps.url?.absoluteString else { throw RegistryError(.protocol, "\(host): bad token realm \(realm)") }
        var req = HTTPClientRequest(url: tokenURL)
        if let c = credentials { req.headers.add(name: "Authorization", value: "Basic " + Data("\(c.user):\(c.password)".utf8).base64EncodedString()) }
        let resp: HTTPClientResponse
        do { resp = try await http.execute(req, timeout: .seconds(60)) } catch {
            throw RegistryError(.network, "token service of \(host): \(describe(error))")
        }
        var b: ByteBuffer
        do { b = try await resp.body.collect(upTo: 1 << 20) } catch {
            throw RegistryError(.network, "token service of \(host): \(describe(error))")
        }
        let data = Data(b.readBytes(length: b.readableBytes) ?? [])
        guard resp.status.code == 200, let j = try? JSONDecoder().decode(TokenAnswer.self, from: data),
              let token = j.token ?? j.access_token else {
            throw RegistryError(.unauthorized, credentials == nil
                ? "\(host): the registry's token service wants a login (HTTP \(resp.status.code)); pass --username and --password-stdin, or log in through ~/.docker/config.json"
                : "\(host): the registry's token service refused the credentials (HTTP \(resp.status.code)); check --username and the password")
        }
        authorization = "Bearer \(token)"
    }

    /// `key="value",key=value` pairs of a challenge; quoted values keep
    /// their commas (a push scope is `repository:name:pull,push`).
    public static func challengeParameters(_ s: String) -> [String: String] {
        var out: [String: String] = [:]
        var i = s.startIndex
        while i < s.endIndex {
            while i < s.endIndex, s[i] == " " || s[i] == "," { i = s.index(after: i) }
            guard let eq = s[i...].firstIndex(of: "=") else { break }
            let key = s[i..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            var j = s.index(after: eq)
            var value = ""
            if j < s.endIndex, s[j] == "\"" {
                j = s.index(after: j)
                while j < s.endIndex, s[j] != "\"" {
                    if s[j] == "\\", s.index(after: j) < s.endIndex { j = s.index(after: j) }
                    value.append(s[j])
                    j = s.index(after: j)
                }
                if j < s.endIndex { j = s.index(after: j) }
            } else {
                let end = s[j...].firstIndex(of: ",") ?? s.endIndex
                value = s[j..<end].trimmingCharacters(in: .whitespaces)
                j = end
            }
            out[key] = value
            i = j
        }
        return out
    }

    /// A registry error as one line: its code, message and what was asked.
    static func error(_ status: Int, _ body: Data, _ what: String) -> RegistryError {
        if let first = (try? JSONDecoder().decode(ErrorAnswer.self, from: body))?.errors.first, let code = first.code {
            let hint: String
            switch code {
            case "MANIFEST_UNKNOWN": hint = " (no such tag or digest)"
            case "BLOB_UNKNOWN": hint = " (the registry lacks a blob)"
            case "DENIED", "UNAUTHORIZED": hint = " (log in with --username/--password-stdin or ~/.docker/config.json)"
            case "TOOMANYREQUESTS": hint = " (rate limited; try again later)"
            default: hint = ""
            }
            return RegistryError(.http(status: status, code: code), "\(code): \(first.message ?? "")\(hint) [\(what)]")
        }
        return RegistryError(.http(status: status, code: nil), "HTTP \(status) for \(what)")
    }
}

/// A file as a sequence of 1 MiB buffers, for streamed request bodies.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String

    struct AsyncIterator: AsyncIteratorProtocol {
        let path: String
        /// Open from the first chunk until the last (or until the request
        /// drops the sequence).
        var file: OwnedFD?
        var done = false

        mutating func next() async throws -> ByteBuffer? {
            if done { return nil }
            let opened = try file ?? OwnedFD(openOwned(path, O_RDONLY | O_CLOEXEC))
            file = opened
            var buf = ByteBufferAllocator().buffer(capacity: 1 << 20)
            let fd = opened.raw
            let path = self.path
            let n = try buf.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 20) { p in
                let n = read(fd, p.baseAddress, p.count)
                if n < 0 { throw RegistryError.last("\(path): read") }
                return n
            }
            if n == 0 { file = nil; done = true; return nil }
            return buf
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(path: path) }
}

/// How to reach registries: `--insecure`, `--cert-dir`, `--timeout`.
public struct RegistryOptions: Sendable {
    /// Plain HTTP allowed when HTTPS fails (always for this machine).
    public var insecure = false
    /// A directory of CA certificates (`*.crt`), as podman's --cert-dir;
    /// without it, /etc/containers/certs.d/HOST and /etc/docker/certs.d/HOST.
    public var certDir: String?
    /// Seconds without a byte from the registry before giving up.
    public var readTimeout: Int64 = 30
    /// Seconds to keep trying to connect (the client retries a refused
    /// connection until then).
    public var connectTimeout: Int64 = 10

    public init() {}

    func caFiles(for host: String) -> [String] {
        let dirs = certDir.map { [$0] } ?? ["/etc/containers/certs.d/\(host)", "/etc/docker/certs.d/\(host)"]
        return dirs.flatMap { d in
            ((try? FileManager.default.contentsOfDirectory(atPath: d)) ?? []).filter { $0.hasSuffix(".crt") }.sorted().map { "\(d)/\($0)" }
        }
    }
}

/// ~/.docker/config.json, the part read here.
struct DockerConfig: Decodable {
    struct Auth: Decodable { var auth: String? }
    var auths: [String: Auth]?
}

/// A token service's answer (the distribution spec names it both ways).
struct TokenAnswer: Decodable {
    var token: String?
    var access_token: String?
}

/// A registry's error body: `{"errors": [{"code", "message"}]}`.
struct ErrorAnswer: Decodable {
    struct Entry: Decodable {
        var code: String?
        var message: String?
    }
    var errors: [Entry]
}
