import Sys

/// Why a union cannot be set up: one line naming the layer or option.
public struct OverlaySetupError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
