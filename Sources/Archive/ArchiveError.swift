import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Why a layer archive was refused: the entry and the rule it broke, one line.
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, where a caller decides by it.
    public enum Kind: Sendable {
        /// A path goes through a symlink or a non-directory inside the layer.
        case throughNonDirectory
        /// The archive ends inside an entry.
        case truncated
        case other
    }
    public let entry: String
    public let message: String
    public let kind: Kind
    public init(_ entry: String, _ message: String, kind: Kind = .other) {
        self.entry = entry
        self.message = message
        self.kind = kind
    }
    public var description: String { entry.isEmpty ? message : "\(entry): \(message)" }
}

/// Opens `path` for the archive code: a failure is one error naming it
/// (`label`, else the path) and what was being done.
func openOwned(_ path: String, _ flags: Int32, _ mode: mode_t = 0, doing what: String, label: String? = nil) throws(ArchiveError) -> UniqueFD {
    do throws(Errno) {
        return try Sys.open(path, flags, mode)
    } catch {
        throw ArchiveError(label ?? path, "\(what): \(error)")
    }
}
