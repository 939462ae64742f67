#if canImport(Glibc)
import Glibc
#endif
import Archive
import GRDB
import Sys
import SystemPackage

/// A store operation that failed: what kind of failure (for callers that
/// decide by it, and for exit codes), and one line saying what and where.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// No such image, container or layer (or no kept archive of one).
        case notFound
        /// A name taken already; an image a container still uses.
        case conflict
        /// A name, archive, manifest or config that is not what it must be.
        case invalidInput
        /// Content that does not match its digest; store files missing.
        case corrupt
        /// An archive that could not be read or written.
        case archive
        /// The store's SQLite database.
        case database
        /// A mount of a container that failed.
        case mount
        /// A system call, with its errno.
        case system(Errno)
        /// Reading or writing a file, where no errno is known.
        case io
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The system call just failed (errno read first, once).
    static func last(_ what: String) -> StoreError {
        let e = currentErrno()
        return StoreError(.system(e), "\(what): \(e)")
    }

    /// An error from a layer below, its kind kept.
    init(wrapping error: any Error) {
        switch error {
        case let e as StoreError: self = e
        case let e as SysError: self.init(.system(e.errno), e.description)
        case let e as ArchiveError: self.init(.archive, e.description)
        case let e as DatabaseError: self.init(.database, "store database: \(e.message ?? "\(e.resultCode)")")
        default: self.init(.io, "\(error)")
        }
    }

    public var description: String { message }
}

extension StoreError {
    static func failed(_ what: String, _ e: Errno) -> StoreError { StoreError(.system(e), "\(what): \(e)") }
}

/// Opens for the store: a failure names the path (or `what`).
func openOwned(_ path: String, _ flags: Int32, _ mode: mode_t = 0, what: String? = nil) throws(StoreError) -> UniqueFD {
    do throws(Errno) { return try Sys.open(path, flags, mode) } catch { throw StoreError.failed(what ?? path, error) }
}

/// Removes `name` under the directory `dir`, when that opens.
func removeTree(in dir: String, _ name: String) {
    guard let d = try? Sys.open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) else { return }
    removeTree(d.raw, name)
}
