import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A descriptor with exactly one owner, closed when the owner drops it
/// (swift-system's `FileDescriptor` is a plain number; this one cannot be
/// copied, so it can be neither leaked on an error path nor closed twice).
/// `take()` hands the number on to an owner that is not a value (an open
/// file object, a C call that takes ownership).
///
/// It is the only type that closes a descriptor: objects whose descriptor
/// lives as long as they do (`OwnedFD`, open files, locks) hold one.
public struct UniqueFD: ~Copyable, Sendable {
    public private(set) var raw: Int32

    public init(taking raw: Int32) { self.raw = raw }

    /// An owner that holds nothing yet (for a descriptor opened on one of
    /// several paths, such as copy-up's nameless or named copy).
    public init() { raw = -1 }

    public var isOpen: Bool { raw >= 0 }

    /// Wraps the result of an opening call: -1 becomes the thrown errno.
    public init(opened raw: Int32) throws(Errno) {
        if raw < 0 { throw currentErrno() }
        self.raw = raw
    }

    /// Gives up ownership: the caller closes the number.
    public consuming func take() -> Int32 {
        let r = raw
        discard self
        return r
    }

    /// Moves the descriptor out, leaving this owner empty (for an owner
    /// kept in a class or an inout, which cannot be consumed).
    public mutating func release() -> UniqueFD {
        let r = raw
        raw = -1
        return UniqueFD(taking: r)
    }

    /// Closes it now, reporting the error (a written file's last close can
    /// report a failed write-back, which a deinit would lose).
    public consuming func close() throws(Errno) {
        let r = take()
        if r >= 0 && Glibc.close(r) != 0 { throw currentErrno() }
    }

    deinit { if raw >= 0 { Glibc.close(raw) } }
}

/// A system call's -1 turned into the thrown errno (what ninety
/// `if r != 0 { throw currentErrno() }` wrote out by hand).
@inline(__always)
@discardableResult
public func check(_ r: Int32) throws(Errno) -> Int32 {
    if r < 0 { throw currentErrno() }
    return r
}

@inline(__always)
@discardableResult
public func check(_ r: Int) throws(Errno) -> Int {
    if r < 0 { throw currentErrno() }
    return r
}
