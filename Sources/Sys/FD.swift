import CStrata
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A file descriptor owned by exactly one object; closed on deinit. Used where
/// the descriptor's lifetime follows an object (open files, cached directories)
/// so that ARC, not bookkeeping, decides when it is closed.
open class OwnedFD: @unchecked Sendable {
    public let raw: Int32
    public init(_ raw: Int32) { self.raw = raw }
    /// Gives up ownership: the caller closes the descriptor.
    public func detach() -> Int32 { detached = true; return raw }
    private var detached = false
    deinit { if raw >= 0 && !detached { close(raw) } }
}

public enum Sys {
    /// Opens `path` (absolute or relative to the cwd) as a directory, without
    /// following a final symlink unless `follow` is set.
    public static func openDirectory(_ path: String, follow: Bool = true, pathOnly: Bool = true) throws(SysError) -> Int32 {
        var flags = O_DIRECTORY | O_CLOEXEC | (pathOnly ? Linux.O_PATH : O_RDONLY)
        if !follow { flags |= O_NOFOLLOW }
        let fd = open(path, flags)
        if fd < 0 { throw SysError.last("open", path) }
        return fd
    }

    public static func fileStatus(_ path: String, follow: Bool = true) throws(SysError) -> Glibc.stat {
        var st = Glibc.stat()
        let r = follow ? stat(path, &st) : lstat(path, &st)
        if r != 0 { throw SysError.last("stat", path) }
        return st
    }

    public static func fileStatus(fd: Int32, path: String = "") throws(SysError) -> Glibc.stat {
        var st = Glibc.stat()
        if fstat(fd, &st) != 0 { throw SysError.last("stat", path) }
        return st
    }

    /// Writes all of `bytes` to `fd`, retrying short writes.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String = "") throws(SysError) {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = retryEINTR { Glibc.write(fd, base + done, bytes.count - done) }
            if n < 0 { throw SysError.last("write", path) }
            done += n
        }
    }

    public static func realPath(_ path: String) throws(SysError) -> String {
        guard let p = realpath(path, nil) else { throw SysError.last("resolve", path) }
        defer { free(p) }
        return String(cString: p)
    }

    public static var isRoot: Bool { geteuid() == 0 }
}

/// A value behind a lock, as a class so that it can sit in arrays (Mutex
/// itself cannot be copied).
/// Inlinable: callers in other modules get the lock and their closure
/// specialised and inlined, not a generic call per request.
public final class Locked<Value>: @unchecked Sendable {
    @usableFromInline let mutex: Mutex<Value>
    public init(_ v: sending Value) { mutex = Mutex(v) }
    @inlinable @inline(__always)
    public func withLock<R>(_ body: (inout sending Value) throws -> sending R) rethrows -> sending R {
        try mutex.withLock(body)
    }
}

/// Writes a line to standard error without touching C's shared `stderr`.
public func printError(_ line: String) {
    var s = line
    if !s.hasSuffix("\n") { s += "\n" }
    s.withCString { p in _ = write(2, p, strlen(p)) }
}

/// A bound on cached descriptors (the hard limit on open files here is
/// 20,000, so caches must not grow with the tree).
public final class FDBudget: @unchecked Sendable {
    private let used = Atomic<Int>(0)
    public let limit: Int
    public init(limit: Int) { self.limit = limit }
    /// Descriptors cached now.
    public var inUse: Int { used.load(ordering: .relaxed) }

    /// Wraps `fd` for caching if the budget allows; nil means: use it once
    /// and close it.
    public func cache(_ fd: Int32) -> OwnedFD? {
        if used.add(1, ordering: .relaxed).newValue > limit {
            used.subtract(1, ordering: .relaxed)
            return nil
        }
        return BudgetedFD(fd, budget: self)
    }

    /// Opens a descriptor for caching only if the budget has room (no
    /// open at all past it); nil when there is no room or the open failed.
    public func cache(opening open: () -> Int32) -> OwnedFD? {
        if used.add(1, ordering: .relaxed).newValue > limit {
            used.subtract(1, ordering: .relaxed)
            return nil
        }
        let fd = open()
        if fd < 0 {
            used.subtract(1, ordering: .relaxed)
            return nil
        }
        return BudgetedFD(fd, budget: self)
    }

    fileprivate func release() { used.subtract(1, ordering: .relaxed) }
}

private final class BudgetedFD: OwnedFD, @unchecked Sendable {
    let budget: FDBudget
    init(_ raw: Int32, budget: FDBudget) {
        self.budget = budget
        super.init(raw)
    }
    deinit { budget.release() }
}
