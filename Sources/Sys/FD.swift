import CStrata
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A descriptor shared by reference: its `UniqueFD` closes it when the last
/// holder lets go. Used where the descriptor's lifetime follows an object
/// (cached directories, layer roots, orphans) so that ARC, not
/// bookkeeping, decides when it is closed.
open class OwnedFD: @unchecked Sendable {
    public let raw: Int32
    private let fd: UniqueFD
    public init(_ fd: consuming UniqueFD) {
        raw = fd.raw
        self.fd = fd
    }
}

public enum Sys {
    /// Opens `path` (absolute or relative to the cwd) as a directory, without
    /// following a final symlink unless `follow` is set.
    public static func openDirectory(_ path: String, follow: Bool = true, pathOnly: Bool = true) throws(SysError) -> UniqueFD {
        var flags = O_DIRECTORY | O_CLOEXEC | (pathOnly ? Linux.O_PATH : O_RDONLY)
        if !follow { flags |= O_NOFOLLOW }
        do throws(Errno) {
            return try open(path, flags)
        } catch {
            throw SysError(error, "open", path)
        }
    }

    public static func fileStatus(_ path: String, follow: Bool = true) throws(SysError) -> Glibc.stat {
        var st = Glibc.stat()
        let r = follow ? stat(path, &st) : lstat(path, &st)
        if r != 0 { throw SysError.last("stat", path) }
        return st
    }

    public static func fileStatus(fd: Int32, path: String = "") throws(SysError) -> Glibc.stat {
        var st = Glibc.stat()
        if Glibc.fstat(fd, &st) != 0 { throw SysError.last("stat", path) }
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

    /// Takes `fd` for caching if the budget allows; nil leaves it with the
    /// caller, to use once.
    public func cache(_ fd: inout UniqueFD) -> OwnedFD? {
        if used.add(1, ordering: .relaxed).newValue > limit {
            used.subtract(1, ordering: .relaxed)
            return nil
        }
        return BudgetedFD(fd.release(), budget: self)
    }

    /// Opens a descriptor for caching only if the budget has room (no
    /// open at all past it); nil when there is no room or the open failed.
    public func cache(opening open: () throws(Errno) -> UniqueFD) -> OwnedFD? {
        if used.add(1, ordering: .relaxed).newValue > limit {
            used.subtract(1, ordering: .relaxed)
            return nil
        }
        do throws(Errno) {
            return BudgetedFD(try open(), budget: self)
        } catch {
            used.subtract(1, ordering: .relaxed)
            return nil
        }
    }

    fileprivate func release() { used.subtract(1, ordering: .relaxed) }
}

private final class BudgetedFD: OwnedFD, @unchecked Sendable {
    let budget: FDBudget
    init(_ fd: consuming UniqueFD, budget: FDBudget) {
        self.budget = budget
        super.init(fd)
    }
    deinit { budget.release() }
}
