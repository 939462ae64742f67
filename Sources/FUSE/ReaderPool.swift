import Synchronization

/// How many threads wait on /dev/fuse, and when to start another.
///
/// /dev/fuse wakes the reader that has waited longest, so every reader
/// beyond what the CPUs can run at once is a thread woken cold, often on
/// the other CPU: on the 2-vCPU machine a getxattr round trip took 23.5 µs
/// with four readers and 20.3 µs with two (idle; 12.8 and 12.5 µs busy;
/// docs/BENCHMARKS.md). Fewer readers, though, let one blocking request
/// (an fsync, a lazy layer's fetch) hold up the mount, so a reader that
/// takes the last idle slot asks for one more, up to `limit`, as libfuse's
/// multi-threaded loop does. Readers so started stay until unmount: the
/// count only grows where requests really did block.
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
