import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An error from the operating system, with the operation and the path it
/// concerned, so that a message can say exactly what failed and where.
public struct SysError: Error, CustomStringConvertible, Sendable {
    public let errno: Errno
    public let operation: String
    public let path: String
    /// A line that already says everything (it names its own errno, or
    /// none applies): shown as it is, not followed by a second errno.
    public let line: String?

    public init(_ errno: Errno, _ operation: String, _ path: String) {
        self.errno = errno
        self.operation = operation
        self.path = path
        self.line = nil
    }

    /// An error whose message is complete, such as a union's setup error
    /// ("lowerdir /x: No such file or directory"), kept as one line.
    public init(line: String, errno: Errno = .invalidArgument) {
        self.errno = errno
        self.operation = line
        self.path = ""
        self.line = line
    }

    /// The current thread's errno, captured right after a failed call.
    public static func last(_ operation: String, _ path: String) -> SysError {
        SysError(Errno(rawValue: strata_errno()), operation, path)
    }

    public var description: String {
        if let line { return line }
        return path.isEmpty ? "\(operation): \(errno)" : "\(operation) \(path): \(errno)"
    }
}

/// A usage or input problem found before any system call: one line for the user.
public struct UsageError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Current errno as a typed value; for hot paths that must not build strings.
@inline(__always)
public func currentErrno() -> Errno { Errno(rawValue: strata_errno()) }

/// Retries a call while it fails with EINTR, the way every blocking syscall
/// here must be wrapped.
@inline(__always)
public func retryEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r >= 0 || strata_errno() != EINTR { return r }
    }
}
