import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The OCI distribution protocol over AsyncHTTPClient: requests with the
/// registry's auth challenges answered (anonymous, bearer tokens as Docker
/// Hub issues them, basic credentials), and registry errors as one line.
public final class RegistryClient: @unchecked Sendable {
    public let host: String
    let scheme: String
    let http = HTTPClient.shared
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

    /// HTTPS unless `insecure` or the host is this machine.
    public init(host: String, insecure: Bool, credentials: (String, String)?) {
        self.host = host
        let local = host.hasPrefix("localhost") || host.hasPrefix("127.") || host.hasPrefix("[::1]")
        scheme = insecure || local ? "http" : "https"
        self.credentials = credentials ?? Self.dockerConfigCredentials(host)
    }

    /// Basic credentials from ~/.docker/config.json (`auths.<host>.auth`).
    static func dockerConfigCredentials(_ host: String) -> (String, String)? {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
        guard let d = FileManager.default.contents(atPath: "\(home)/.docker/config.json"),
              let j = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
              let auths = j["auths"] as? [String: Any],
              let entry = (auths[host] ?? auths["https://\(host)"]) as? [String: Any],
              let b64 = entry["auth"] as? String, let raw = Data(base64Encoded: b64),
              let s = String(data: raw, encoding: .utf8), let colon = s.firstIndex(of: ":") else { return nil }
        return (String(s[..<colon]), String(s[s.index(after: colon)...]))
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: HTTPHeaders
        public var body: Data
    }

    func url(_ path: String) -> String { path.hasPrefix("http") ? path : "\(scheme)://\(host)\(path)" }

    /// One request; a 401 is answered once through the challenge it carries.
    public func request(_ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: Data? = nil,
                        maxBody: Int = 64 << 20) async throws -> Response {
        try await send(timeout: .seconds(300), maxBody: maxBody) {
            var req = HTTPClientRequest(url: self.url(path))
            req.method = method
            for (k, v) in headers { req.headers.add(name: k, value: v) }
            if let body { req.body = .bytes(ByteBuffer(bytes: body)) }
            return req
        }
    }

    /// PATCHes a file's bytes to an upload location, read from disk as the
    /// connection takes them (a layer is never held in memory whole).
    public func patch(_ location: String, file: String, size: Int64) async throws -> Response {
        try await send(timeout: .seconds(3600), maxBody: 1 << 20) {
            var req = HTTPClientRequest(url: self.url(location))
            req.method = .PATCH
            req.headers.add(name: "Content-Type", value: "application/octet-stream")
            req.body = .stream(FileChunks(path: file), length: .known(size))
            return req
        }
    }

    /// Sends what `make` builds (again, after answering a 401 challenge once)
    /// with the current authorization, and collects the response.
    private func send(timeout: TimeAmount, maxBody: Int, _ make: () -> HTTPClientRequest) async throws -> Response {
        var attempt = 0
        while true {
            var req = make()
            if let a = authorization { req.headers.replaceOrAdd(name: "Authorization", value: a) }
            let resp = try await http.execute(req, timeout: timeout)
            var buf = try await resp.body.collect(upTo: maxBody)
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
    public func download(_ path: String, to file: String, offset: Int64,
                         onChunk: (UnsafeRawBufferPointer) -> Void) async throws -> Int64 {
        var attempt = 0
        while true {
            var req = HTTPClientRequest(url: url(path))
            if let a = authorization { req.headers.replaceOrAdd(name: "Authorization", value: a) }
            if offset > 0 { req.headers.add(name: "Range", value: "bytes=\(offset)-") }
            let resp = try await http.execute(req, timeout: .seconds(3600))
            if resp.status.code == 401 && attempt == 0, let challenge = resp.headers["WWW-Authenticate"].first {
                _ = try await resp.body.collect(upTo: 1 << 20)
                try await answer(challenge)
                attempt += 1
                continue
            }
            guard resp.status.code == 200 || resp.status.code == 206 else {
                var b = try await resp.body.collect(upTo: 1 << 20)
                throw Self.error(Int(resp.status.code), Data(b.readBytes(length: b.readableBytes) ?? []), path)
            }
            let from: Int64 = resp.status.code == 206 ? offset : 0
            let fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            if fd < 0 { throw RegistryError("\(file): \(currentErrno())") }
            defer { close(fd) }
            if ftruncate(fd, off_t(from)) != 0 || lseek(fd, off_t(from), SEEK_SET) < 0 {
                throw RegistryError("\(file): \(currentErrno())")
            }
            for try await chunk in resp.body {
                try chunk.withUnsafeReadableBytes { (bytes) throws(SysError) in
                    try Sys.writeAll(fd, bytes, path: file)
                    onChunk(bytes)
                }
            }
            return from
        }
    }

    /// `Bearer realm=...,service=...,scope=...`: fetch a token (with basic
    /// credentials when we have them); `Basic`: send the credentials.
    func answer(_ challenge: String) async throws {
        let lower = challenge.lowercased()
        if lower.hasPrefix("basic") {
            guard let c = credentials else { throw RegistryError("\(host): the registry wants a login (UNAUTHORIZED); pass --username and --password-stdin") }
            authorization = "Basic " + Data("\(c.user):\(c.password)".utf8).base64EncodedString()
            return
        }
        guard lower.hasPrefix("bearer") else { throw RegistryError("\(host): unknown auth challenge '\(challenge)'") }
        let params = Self.challengeParameters(String(challenge.dropFirst(6)))
        guard let realm = params["realm"], var comps = URLComponents(string: realm) else { throw RegistryError("\(host): bearer challenge without a realm") }
        var items = comps.queryItems ?? []
        if let s = params["service"] { items.append(URLQueryItem(name: "service", value: s)) }
        if let s = params["scope"] { items.append(URLQueryItem(name: "scope", value: s)) }
        comps.queryItems = items
        guard let tokenURL = comps.url?.absoluteString else { throw RegistryError("\(host): bad token realm \(realm)") }
        var req = HTTPClientRequest(url: tokenURL)
        if let c = credentials { req.headers.add(name: "Authorization", value: "Basic " + Data("\(c.user):\(c.password)".utf8).base64EncodedString()) }
        let resp = try await http.execute(req, timeout: .seconds(60))
        var b = try await resp.body.collect(upTo: 1 << 20)
        let data = Data(b.readBytes(length: b.readableBytes) ?? [])
        guard resp.status.code == 200, let j = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let token = (j["token"] ?? j["access_token"]) as? String else {
            throw RegistryError(credentials == nil
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
        if let j = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
           let first = (j["errors"] as? [[String: Any]])?.first, let code = first["code"] as? String {
            let hint: String
            switch code {
            case "MANIFEST_UNKNOWN": hint = " (no such tag or digest)"
            case "BLOB_UNKNOWN": hint = " (the registry lacks a blob)"
            case "DENIED", "UNAUTHORIZED": hint = " (log in with --username/--password-stdin or ~/.docker/config.json)"
            case "TOOMANYREQUESTS": hint = " (rate limited; try again later)"
            default: hint = ""
            }
            return RegistryError("\(code): \(first["message"] as? String ?? "")\(hint) [\(what)]")
        }
        return RegistryError("HTTP \(status) for \(what)")
    }
}

/// A file as a sequence of 1 MiB buffers, for streamed request bodies.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String

    struct AsyncIterator: AsyncIteratorProtocol {
        let path: String
        var fd: Int32 = -1
        var done = false

        mutating func next() async throws -> ByteBuffer? {
            if done { return nil }
            if fd < 0 {
                fd = open(path, O_RDONLY | O_CLOEXEC)
                if fd < 0 { throw RegistryError("\(path): \(currentErrno())") }
            }
            var buf = ByteBufferAllocator().buffer(capacity: 1 << 20)
            let fd = self.fd
            let path = self.path
            let n = try buf.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 20) { p in
                let n = read(fd, p.baseAddress, p.count)
                if n < 0 { throw RegistryError("\(path): read: \(currentErrno())") }
                return n
            }
            if n == 0 { close(fd); self.fd = -1; done = true; return nil }
            return buf
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(path: path) }
}
