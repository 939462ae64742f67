import Sys
import SystemPackage

/// Why a union cannot be set up: its kind, and one line naming the layer
/// or option.
public struct OverlaySetupError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// Options that are missing, malformed or do not go together.
        case invalidOptions
        /// A layer (upper, lower or work directory) that cannot be used, with
        /// the errno when a call failed on it.
        case layer(Errno?)
        /// Directories that must be apart overlap, or must share a
        /// filesystem and do not.
        case placement
        /// The workdir is held by another mount.
        case workdirInUse
        /// The upper was written by a volatile mount and may be inconsistent.
        case volatileDirty
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// A call on a layer just failed (errno read first, once).
    static func last(_ what: String) -> OverlaySetupError { failed(what, currentErrno()) }

    static func failed(_ what: String, _ e: Errno) -> OverlaySetupError { OverlaySetupError(.layer(e), "\(what): \(e)") }

    public var description: String { message }
}
