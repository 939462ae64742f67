import Crypto
import Foundation
import Sys
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The token service a registry configured with `auth: token` sends
/// clients to, as Docker Hub's auth.docker.io works: GET /token with basic
/// credentials and the scopes asked for, answered with an ES256 JWT whose
/// `x5c` header carries a certificate the registry trusts. Test-only, one
/// request per connection; its certificate comes from the openssl command.
final class TokenServer: @unchecked Sendable {
    let port: Int
    let certPath: String
    let issuer = "strata-test-issuer"
    let service = "strata-test-registry"
    private let listener: Int32
    private let key: P256.Signing.PrivateKey
    private let certDER: Data
    private let user: String, password: String
    private let thread: Thread
    /// Every scope a token was issued for, for the test to look at.
    let issued = Locked([String]())

    init(dir: String, user: String, password: String) throws {
        self.user = user
        self.password = password
        certPath = "\(dir)/token-cert.pem"
        let keyPath = "\(dir)/token-key.pem"
        let gen = runProgram("/usr/bin/openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                                 "-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", "/CN=strata-test-token"])
        guard gen.status == 0 else { throw TestFailure("openssl req: \(gen.stderr)") }
        key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: keyPath, encoding: .utf8))
        let pem = try String(contentsOfFile: certPath, encoding: .utf8)
        let b64 = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard let der = Data(base64Encoded: b64) else { throw TestFailure("certificate PEM unreadable") }
        certDER = der

        let lfd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        listener = lfd
        var one: Int32 = 1
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(lfd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(lfd, 16) == 0 else { throw TestFailure("token server: bind/listen failed") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(lfd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let fd = lfd
        let box = Unowned()
        thread = Thread {
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                box.server?.serve(c)
                close(c)
            }
        }
        box.server = self
        thread.start()
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    var realm: String { "http://127.0.0.1:\(port)/token" }

    private func serve(_ c: Int32) {
        var req = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while !(req.count >= 4 && Array(req.suffix(4)) == Array("\r\n\r\n".utf8)) {
            let n = read(c, &buf, buf.count)
            if n <= 0 { return }
            req += buf[0..<n]
        }
        let text = String(decoding: req, as: UTF8.self)
        let lines = text.split(separator: "\r\n")
        let target = lines.first?.split(separator: " ").dropFirst().first.map(String.init) ?? "/"
        let auth = lines.first { $0.lowercased().hasPrefix("authorization:") }
            .map { String($0.dropFirst("authorization:".count)).trimmingCharacters(in: .whitespaces) }
        let expected = "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
        guard auth == expected else {
            reply(c, 401, #"{"details":"bad credentials"}"#)
            return
        }
        let query = URLComponents(string: "http://x\(target)")?.queryItems ?? []
        var access: [[String: Any]] = []
        for scope in query.filter({ $0.name == "scope" }).compactMap(\.value) {
            let parts = scope.split(separator: ":")
            guard parts.count == 3 else { continue }
            access.append(["type": String(parts[0]), "name": String(parts[1]), "actions": parts[2].split(separator: ",").map(String.init)])
            issued.withLock { $0.append(scope) }
        }
        let now = Int(Date().timeIntervalSince1970)
        let header: [String: Any] = ["alg": "ES256", "typ": "JWT", "x5c": [certDER.base64EncodedString()]]
        let claims: [String: Any] = ["iss": issuer, "sub": user, "aud": service, "exp": now + 600, "nbf": now - 60, "iat": now,
                                     "jti": UUID().uuidString, "access": access]
        guard let h = try? JSONSerialization.data(withJSONObject: header), let p = try? JSONSerialization.data(withJSONObject: claims) else { return }
        let signing = Self.b64url(h) + "." + Self.b64url(p)
        guard let sig = try? key.signature(for: Data(signing.utf8)) else { return }
        let token = signing + "." + Self.b64url(sig.rawRepresentation)
        reply(c, 200, "{\"token\":\"\(token)\",\"expires_in\":600}")
    }

    private func reply(_ c: Int32, _ status: Int, _ body: String) {
        let r = "HTTP/1.1 \(status) \(status == 200 ? "OK" : "Unauthorized")\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        _ = r.withCString { write(c, $0, strlen($0)) }
    }

    static func b64url(_ d: Data) -> String {
        d.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}

/// Lets the accept thread reach the server without keeping it alive.
private final class Unowned: @unchecked Sendable { weak var server: TokenServer? }

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
