import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A borrowed, NUL-terminated file name: a pointer and a length, so that hot
/// paths pass names from request buffers to *at calls without copying.
public struct FileName: @unchecked Sendable {
    public let pointer: UnsafePointer<CChar>
    public let count: Int

    public init(pointer: UnsafePointer<CChar>, count: Int) {
        self.pointer = pointer
        self.count = count
    }

    public var string: String { String(cString: pointer) }
    public var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: count)) }
    public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }
    public func equals(_ other: [UInt8]) -> Bool { other.count == count && equals(prefixOf: other) }
    /// The bytes with the terminating NUL, to keep.
    public var bytesWithNUL: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: count + 1)) }

    public func equals(prefixOf other: [UInt8]) -> Bool {
        other.count >= count && other.withUnsafeBytes { b in
            guard let base = b.baseAddress else { return count == 0 }
            return memcmp(base, pointer, count) == 0
        }
    }

    public var isDotOrDotDot: Bool {
        (count == 1 && pointer[0] == 0x2E) || (count == 2 && pointer[0] == 0x2E && pointer[1] == 0x2E)
    }

    /// Calls `body` with a name built from a Swift string (tests, rare paths).
    public static func with<R>(_ s: String, _ body: (FileName) throws -> R) rethrows -> R {
        try s.withCString { try body(FileName(pointer: $0, count: strlen($0))) }
    }

    /// Calls `body` with `bytes` (no NUL) terminated on the stack: no heap
    /// allocation, for per-entry use on the readdir path.
    public static func with<R>(unterminated bytes: [UInt8], _ body: (FileName) throws -> R) rethrows -> R {
        try withUnsafeTemporaryAllocation(of: CChar.self, capacity: bytes.count + 1) { buf in
            guard let base = buf.baseAddress else { return try FileName.with("", body) }
            bytes.withUnsafeBytes { b in
                if let src = b.baseAddress { base.update(from: src.assumingMemoryBound(to: CChar.self), count: bytes.count) }
            }
            base[bytes.count] = 0
            return try body(FileName(pointer: base, count: bytes.count))
        }
    }

    /// Calls `body` with a stored NUL-terminated name.
    public static func with<R>(stored bytes: [UInt8], _ body: (FileName) throws -> R) rethrows -> R {
        try bytes.withUnsafeBufferPointer { b in
            try b.withMemoryRebound(to: CChar.self) { c in
                guard let base = c.baseAddress else { return try FileName.with("", body) }
                return try body(FileName(pointer: base, count: max(0, c.count - 1)))
            }
        }
    }
}

/// `withCString` and `withUnsafeBytes` take untyped-throwing closures; these
/// keep a typed `Errno` through them.
public func withCString<R: ~Copyable>(_ s: String, _ body: (UnsafePointer<CChar>) throws(Errno) -> R) throws(Errno) -> R {
    var result: R? = nil
    var failure = Errno.invalidArgument
    s.withCString { c in
        do throws(Errno) { result = try body(c) } catch { failure = error }
    }
    guard let r = result.take() else { throw failure }
    return r
}

/// Calls `body` with a stored NUL-terminated name as a C string.
public func withStoredName<R: ~Copyable>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws(Errno) -> R) throws(Errno) -> R {
    var result: R? = nil
    var failure = Errno.invalidArgument
    bytes.withUnsafeBytes { b in
        guard let c = b.baseAddress?.assumingMemoryBound(to: CChar.self) else { return }
        do throws(Errno) { result = try body(c) } catch { failure = error }
    }
    guard let r = result.take() else { throw failure }
    return r
}
