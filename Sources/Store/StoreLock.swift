import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The store's lock: an flock on `ROOT/lock` that every command holds while
/// it changes directories and rows together (unpacking and recording
/// layers, creating and removing containers and images, pruning), as
/// containers/storage holds its layer store's lock. Reads need no lock:
/// SQLite gives them a consistent view, and a row is written only once its
/// directory is complete. Two loads of one image therefore run one after the
/// other, and the second finds every layer present.
///
/// Re-entrant within a process: a command that calls another locked
/// operation keeps the one lock. flock belongs to the open file, so the
/// descriptor stays open for the store's life and the lock is released
/// with it if the process dies.
final class StoreLock: @unchecked Sendable {
    private let fd: Int32
    private let path: String
    private let inProcess = NSRecursiveLock()
    private var depth = 0

    init(root: String) throws(StoreError) {
        path = "\(root)/lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd < 0 { throw StoreError("cannot open the store lock \(path): \(currentErrno())") }
    }

    deinit { close(fd) }

    /// Runs `body` holding the lock; says once on stderr when it must wait.
    func exclusively<R>(_ body: () throws(StoreError) -> R) throws(StoreError) -> R {
        inProcess.lock()
        defer { inProcess.unlock() }
        if depth == 0 {
            // Most holders are done in milliseconds: say nothing for the
            // first second, then say once why the command is waiting.
            var tries = 0
            while flock(fd, LOCK_EX | LOCK_NB) != 0 {
                guard errno == EWOULDBLOCK || errno == EINTR else { throw StoreError("locking the store (\(path)): \(currentErrno())") }
                tries += 1
                if tries < 100 { usleep(10_000); continue }
                FileHandle.standardError.write(Data("strata: waiting for another strata command to finish with the store (\(path))\n".utf8))
                if retryEINTR({ flock(fd, LOCK_EX) }) != 0 { throw StoreError("locking the store (\(path)): \(currentErrno())") }
                break
            }
        }
        depth += 1
        defer {
            depth -= 1
            if depth == 0 { flock(fd, LOCK_UN) }
        }
        return try body()
    }
}
