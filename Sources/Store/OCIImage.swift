import Foundation

/// The OCI image formats (image-spec: config, manifest, index, descriptor)
/// and docker-save's manifest.json, decoded once with Codable.
///
/// Configs are rewritten (a commit appends a layer), so fields this code
/// does not name are kept as they came (`extra`) and written back: an image
/// committed here keeps its labels, ports, healthcheck and whatever a newer
/// spec adds.
public enum OCI {
    public static let manifestType = "application/vnd.oci.image.manifest.v1+json"
    public static let configType = "application/vnd.oci.image.config.v1+json"
    public static let layerType = "application/vnd.oci.image.layer.v1.tar"

    public struct Platform: Codable, Sendable, Equatable {
        public var architecture: String
        public var os: String
        public var variant: String?
        public init(architecture: String, os: String, variant: String? = nil) {
            self.architecture = architecture
            self.os = os
            self.variant = variant
        }
        public var name: String { "\(os)/\(architecture)" + (variant.map { "/\($0)" } ?? "") }
    }

    public struct Descriptor: Codable, Sendable {
        public var mediaType: String?
        public var digest: String
        public var size: Int64
        public var annotations: [String: String]?
        public var platform: Platform?
        public init(mediaType: String?, digest: String, size: Int64, annotations: [String: String]? = nil) {
            self.mediaType = mediaType
            self.digest = digest
            self.size = size
            self.annotations = annotations
        }
    }

    /// An image manifest (OCI or Docker schema 2: the same shape).
    public struct Manifest: Codable, Sendable {
        public var schemaVersion: Int
        public var mediaType: String?
        public var config: Descriptor
        public var layers: [Descriptor]
        public var annotations: [String: String]?
        public init(config: Descriptor, layers: [Descriptor]) {
            schemaVersion = 2
            mediaType = OCI.manifestType
            self.config = config
            self.layers = layers
        }
    }

    /// An image index or Docker manifest list.
    public struct Index: Codable, Sendable {
        public var schemaVersion: Int
        public var mediaType: String?
        public var manifests: [Descriptor]
        public init(manifests: [Descriptor]) {
            schemaVersion = 2
            self.manifests = manifests
        }
    }

    /// Just the media type, to tell a manifest from an index.
    public struct Kind: Decodable, Sendable {
        public var mediaType: String?
        public var manifests: [Descriptor]?
    }

    /// One entry of docker save's manifest.json.
    public struct DockerArchiveEntry: Codable, Sendable {
        public var Config: String
        public var RepoTags: [String]?
        public var Layers: [String]
    }

    public struct RootFS: Codable, Sendable {
        public var type: String
        public var diff_ids: [String]
    }

    public struct History: Codable, Sendable {
        public var created: String?
        public var created_by: String?
        public var author: String?
        public var comment: String?
        public var empty_layer: Bool?
        public init(created: String?, createdBy: String?, comment: String? = nil) {
            self.created = created
            self.created_by = createdBy
            self.comment = comment
        }
    }

    /// What a container runs (the config's `config`).
    public struct RunConfig: Codable, Sendable {
        public var User: String?
        public var Env: [String]?
        public var Entrypoint: [String]?
        public var Cmd: [String]?
        public var WorkingDir: String?
        public var extra: [String: JSONValue] = [:]

        enum Known: String, CaseIterable { case User, Env, Entrypoint, Cmd, WorkingDir }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            User = try c.decodeIfPresent(String.self, forKey: AnyKey("User"))
            Env = try c.decodeIfPresent([String].self, forKey: AnyKey("Env"))
            Entrypoint = try c.decodeIfPresent([String].self, forKey: AnyKey("Entrypoint"))
            Cmd = try c.decodeIfPresent([String].self, forKey: AnyKey("Cmd"))
            WorkingDir = try c.decodeIfPresent(String.self, forKey: AnyKey("WorkingDir"))
            extra = try decodeExtra(c, known: Known.allCases.map(\.rawValue))
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: AnyKey.self)
            try c.encodeIfPresent(User, forKey: AnyKey("User"))
            try c.encodeIfPresent(Env, forKey: AnyKey("Env"))
            try c.encodeIfPresent(Entrypoint, forKey: AnyKey("Entrypoint"))
            try c.encodeIfPresent(Cmd, forKey: AnyKey("Cmd"))
            try c.encodeIfPresent(WorkingDir, forKey: AnyKey("WorkingDir"))
            for (k, v) in extra { try c.encode(v, forKey: AnyKey(k)) }
        }
    }

    /// An image config. `rootfs.diff_ids` is the list of layers by content.
    public struct ImageConfig: Codable, Sendable {
        public var created: String?
        public var architecture: String?
        public var os: String?
        public var config: RunConfig?
        public var rootfs: RootFS
        public var history: [History]?
        public var extra: [String: JSONValue] = [:]

        public var diffIDs: [String] { rootfs.diff_ids }

        enum Known: String, CaseIterable { case created, architecture, os, config, rootfs, history }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            created = try c.decodeIfPresent(String.self, forKey: AnyKey("created"))
            architecture = try c.decodeIfPresent(String.self, forKey: AnyKey("architecture"))
            os = try c.decodeIfPresent(String.self, forKey: AnyKey("os"))
            config = try c.decodeIfPresent(RunConfig.self, forKey: AnyKey("config"))
            rootfs = try c.decode(RootFS.self, forKey: AnyKey("rootfs"))
            history = try c.decodeIfPresent([History].self, forKey: AnyKey("history"))
            extra = try decodeExtra(c, known: Known.allCases.map(\.rawValue))
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: AnyKey.self)
            try c.encodeIfPresent(created, forKey: AnyKey("created"))
            try c.encodeIfPresent(architecture, forKey: AnyKey("architecture"))
            try c.encodeIfPresent(os, forKey: AnyKey("os"))
            try c.encodeIfPresent(config, forKey: AnyKey("config"))
            try c.encode(rootfs, forKey: AnyKey("rootfs"))
            try c.encodeIfPresent(history, forKey: AnyKey("history"))
            for (k, v) in extra { try c.encode(v, forKey: AnyKey(k)) }
        }
    }

    /// Decodes `T` from `data`; the error names `what` and the first field
    /// that was missing or of the wrong type.
    public static func decode<T: Decodable>(_ type: T.Type, _ data: Data, _ what: String) throws(StoreError) -> T {
        do { return try JSONDecoder().decode(T.self, from: data) } catch let DecodingError.keyNotFound(key, ctx) {
            throw StoreError(.invalidInput, "\(what): no \((ctx.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."))")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw StoreError(.invalidInput, "\(what): \(ctx.codingPath.map(\.stringValue).joined(separator: ".")) is of the wrong type")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw StoreError(.invalidInput, "\(what): \(ctx.codingPath.map(\.stringValue).joined(separator: ".")) is null")
        } catch {
            throw StoreError(.invalidInput, "\(what): not valid JSON")
        }
    }

    /// Sorted keys, as the other tools write them, so a digest is stable.
    public static func encode<T: Encodable>(_ value: T) -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Only our own plain value types are encoded: this cannot fail.
        return (try? e.encode(value)) ?? Data()
    }
}

/// Any JSON value, for the fields of a config that are kept as they came.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .integer(i) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .integer(let i): try c.encode(i)
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

extension JSONValue {
    /// As `docker inspect` prints JSON (Go's MarshalIndent with four
    /// spaces): `"key": value`, one member per line, keys sorted, slashes
    /// as they are, empty arrays and objects as `[]` and `{}`.
    public func dockerFormatted(indent: String = "") -> String {
        let inner = indent + "    "
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return String(i)
        case .number(let d): return d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
        case .string(let s): return JSONValue.quoted(s)
        case .array(let a):
            if a.isEmpty { return "[]" }
            return "[\n" + a.map { inner + $0.dockerFormatted(indent: inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let o):
            if o.isEmpty { return "{}" }
            return "{\n" + o.keys.sorted().map { k in inner + JSONValue.quoted(k) + ": " + (o[k] ?? .null).dockerFormatted(indent: inner) }
                .joined(separator: ",\n") + "\n" + indent + "}"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "<": out += "\\u003c"      // as Go escapes them
            case ">": out += "\\u003e"
            case "&": out += "\\u0026"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

private func decodeExtra(_ c: KeyedDecodingContainer<AnyKey>, known: [String]) throws -> [String: JSONValue] {
    var extra: [String: JSONValue] = [:]
    for k in c.allKeys where !known.contains(k.stringValue) {
        extra[k.stringValue] = try c.decode(JSONValue.self, forKey: k)
    }
    return extra
}
