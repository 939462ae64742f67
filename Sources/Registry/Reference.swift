/// An image reference as docker and podman read it: `[host[:port]/]path[:tag][@digest]`;
/// no host means docker.io, and a one-part docker.io path gets `library/`.
public struct Reference: Sendable, CustomStringConvertible {
    public var host: String
    public var repository: String
    public var tag: String?
    public var digest: String?

    public init(_ s: String) throws(RegistryError) {
        var rest = Substring(s)
        if let at = rest.firstIndex(of: "@") {
            digest = String(rest[rest.index(after: at)...])
            rest = rest[..<at]
        }
        var parts = rest.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if parts.count > 1, let first = parts.first, first.contains(".") || first.contains(":") || first == "localhost" {
            host = first
            parts.removeFirst()
        } else {
            host = "docker.io"
        }
        var last = parts.removeLast()
        if let colon = last.lastIndex(of: ":") {
            tag = String(last[last.index(after: colon)...])
            last = String(last[..<colon])
        }
        parts.append(last)
        if host == "docker.io" && parts.count == 1 { parts.insert("library", at: 0) }
        repository = parts.joined(separator: "/")
        if repository.isEmpty || parts.contains(where: \.isEmpty) || repository.contains(where: { $0.isUppercase }) {
            throw RegistryError(.invalidReference, "'\(s)' is not an image reference (like host:port/name:tag or name@sha256:...)")
        }
        if tag == nil && digest == nil { tag = "latest" }
        if let d = digest, !d.hasPrefix("sha256:") { throw RegistryError(.invalidReference, "'\(s)': only sha256 digests are supported") }
    }

    /// The same repository at `digest` (the manifest an engine resolved).
    public func withDigest(_ d: String) -> Reference {
        var r = self
        r.digest = d
        return r
    }

    /// The registry API host (Docker Hub's differs from its name).
    public var apiHost: String { host == "docker.io" ? "registry-1.docker.io" : host }
    public var reference: String { digest ?? tag ?? "latest" }
    /// The name a pulled image is tagged with in the store.
    public var storeName: String { "\(host)/\(repository):\(tag ?? "latest")" }
    public var description: String { "\(host)/\(repository)" + (tag.map { ":\($0)" } ?? "") + (digest.map { "@\($0)" } ?? "") }
}
