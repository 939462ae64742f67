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
/// Every holder leaves an intent file while it works (see `intents`), so a
/// command killed part way is undone by the next one, as a journal is
/// replayed: no command ever sees a directory that no row names.
///
/// Re-entrant within a process: a command that calls another locked
/// operation keeps the one lock. flock belongs to the open file, so the
/// descriptor stays open for the store's life and the lock is released
/// with it if the process dies.
final class StoreLock: @unchecked Sendable {
    private let fd: Int32
    private let owner: UniqueFD
    private let path: String
    private let inProcess = NSRecursiveLock()
    private var depth = 0
    /// `tmp/intents`: each holder of the lock leaves a file there while it
    /// changes the store. One found by the next holder belongs to a command
    /// that was killed part way: `recover` then removes what it half-made.
    private let intents: String
    private var intent: String?
    var recover: () -> Void = {}

    init(root: String) throws(StoreError) {
        path = "\(root)/lock"
        intents = "\(root)/tmp/intents"
        owner = try openOwned(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600, what: "cannot open the store lock \(path)")
        fd = owner.raw
        if mkdir(intents, 0o700) != 0 && errno != EEXIST { throw StoreError.last("cannot create \(intents)") }
    }

    /// Runs recovery if the lock is free right now; when another command
    /// holds it, that command (or the next one) recovers, and a reader that
    /// only opens the store does not wait for it.
    func recoverIfFree() {
        inProcess.lock()
        defer { inProcess.unlock() }
        guard depth == 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else { return }
        defer { flock(fd, LOCK_UN) }
        let left = interrupted
        if left.isEmpty { return }
        recover()
        for i in left { unlink("\(intents)/\(i)") }
    }

    /// Intents left by commands that died holding the lock.
    var interrupted: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: intents)) ?? []).sorted() }


    /// Runs `body` holding the lock; says once on stderr when it must wait.
    func exclusively<R>(recovering: Bool = true, _ body: () throws(StoreError) -> R) throws(StoreError) -> R {
        inProcess.lock()
        defer { inProcess.unlock() }
        if depth == 0 {
            // Most holders are done in milliseconds: say nothing for the
            // first second, then say once why the command is waiting.
            var tries = 0
            while flock(fd, LOCK_EX | LOCK_NB) != 0 {
                guard errno == EWOULDBLOCK || errno == EINTR else { throw StoreError.last("locking the store (\(path))") }
                tries += 1
                if tries < 100 { usleep(10_000); continue }
                FileHandle.standardError.write(Data("strata: waiting for another strata command to finish with the store (\(path))\n".utf8))
                if retryEINTR({ flock(fd, LOCK_EX) }) != 0 { throw StoreError.last("locking the store (\(path))") }
                break
            }
        }
        if depth == 0 {
            let left = recovering ? interrupted : []
            if !left.isEmpty {
                recover()
                for i in left { unlink("\(intents)/\(i)") }
            }
            if recovering {
                let mine = "\(intents)/p\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                _ = try? Sys.open(mine, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
                intent = mine
            }
        }
        depth += 1
        defer {
            depth -= 1
            if depth == 0 {
                if let i = intent { unlink(i) }
                intent = nil
                flock(fd, LOCK_UN)
            }
        }
        return try body()
    }
}

/// Named points inside the store's multi-step changes where a test can have
/// the process killed (`STRATA_KILL_AT=NAME` in its environment), to prove
/// that a command killed exactly there leaves nothing half-registered.
/// Random SIGKILLs from outside seldom land inside these windows, which
/// last a millisecond or less. Costs one environment lookup per point.
public func killPoint(_ name: StaticString) {
    guard let v = getenv("STRATA_KILL_AT") else { return }
    if String(cString: v) == name.description { kill(getpid(), SIGKILL) }
}
