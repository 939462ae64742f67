#if canImport(Glibc)
import Glibc
#endif
import Store
import Sys
import SystemPackage

/// A registry operation that failed: its kind, and one line saying what.
public struct RegistryError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// A reference or digest that is not one.
        case invalidReference
        /// The registry cannot be reached, or stopped answering.
        case network
        /// A login is wanted, or the credentials were refused.
        case unauthorized
        /// The registry answered with an error (its code, when it sent one).
        case http(status: Int, code: String?)
        /// Content that does not match its digest or size.
        case corrupt
        /// An index with no image for the platform asked for.
        case noMatchingPlatform
        /// An answer that breaks the distribution protocol.
        case `protocol`
        /// A CA certificate file that is not one.
        case certificate
        /// The local store failed.
        case store(StoreError.Kind)
        /// A system call, with its errno.
        case system(Errno)
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The system call just failed (errno read first, once).
    static func last(_ what: String) -> RegistryError {
        let e = currentErrno()
        return RegistryError(.system(e), "\(what): \(e)")
    }

    /// An error from the store (or already ours), its kind kept.
    init(wrapping error: any Error) {
        switch error {
        case let e as RegistryError: self = e
        case let e as StoreError: self.init(.store(e.kind), e.message)
        default: self.init(.store(.io), "\(error)")
        }
    }

    public var description: String { message }
}

extension RegistryError {
    static func failed(_ what: String, _ e: Errno) -> RegistryError { RegistryError(.system(e), "\(what): \(e)") }
}

/// Opens for the registry code: a failure names `what` (else the path).
func openOwned(_ path: String, _ flags: Int32, _ mode: mode_t = 0, what: String? = nil) throws(RegistryError) -> UniqueFD {
    do throws(Errno) { return try Sys.open(path, flags, mode) } catch { throw RegistryError.failed(what ?? path, error) }
}
