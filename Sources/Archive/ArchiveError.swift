/// Why a layer archive was refused: the entry and the rule it broke, one line.
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    public let entry: String
    public let message: String
    public init(_ entry: String, _ message: String) {
        self.entry = entry
        self.message = message
    }
    public var description: String { entry.isEmpty ? message : "\(entry): \(message)" }
}
