import Synchronization

/// How many threads wait on /dev/fuse, and when to start another.
///
/// A fixed set of readers lets requests that block (an fsync, a lazy
/// layer's fetch, many callers at once) hold up the whole mount once every
/// reader has one, so a reader that takes the last waiting slot asks for
/// one more, up to `limit`, as libfuse's multi-threaded loop does. Readers
/// so started stay until unmount: the count only grows where requests
/// really did pile up.
///
/// How many to keep was measured on the 2-vCPU machine (docs/BENCHMARKS.md):
/// /dev/fuse wakes the reader that has waited longest, so fewer readers
/// wake warmer threads on a warm getxattr loop (two: 20.4 µs a round trip,
/// four: 23.5 µs), but a fresh mount's walk with lstat and getxattr went
/// the other way (two 536 ms, four 481 ms) and podman builds did not move
/// either way, idle or busy: four stay the default.
final class ReaderPool: Sendable {
    private let idle = Atomic<Int>(0)
    private let total = Atomic<Int>(0)
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// A reader is waiting (started, or back from a request).
    @inline(__always)
    func waiting() { idle.add(1, ordering: .relaxed) }

    /// A reader took a request. True when it was the last one waiting and
    /// there is room for another: the caller then starts one (and calls
    /// `started` or `failed`).
    @inline(__always)
    func took() -> Bool {
        guard idle.subtract(1, ordering: .relaxed).newValue <= 0 else { return false }
        return reserve()
    }

    /// Reserves a reader's slot; false when `limit` are running.
    func reserve() -> Bool {
        var n = total.load(ordering: .relaxed)
        while n < limit {
            let (exchanged, now) = total.compareExchange(expected: n, desired: n + 1, ordering: .relaxed)
            if exchanged { return true }
            n = now
        }
        return false
    }

    /// A reader counted as waiting will not wait after all (it could not
    /// start).
    func left() { idle.subtract(1, ordering: .relaxed) }

    /// A reader `took` asked for could not be started.
    func failed() { total.subtract(1, ordering: .relaxed) }

    var readers: Int { total.load(ordering: .relaxed) }
}
