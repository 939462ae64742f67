import CFuseProto
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Requests seen and the time spent answering them, per opcode, kept by one
/// worker: each worker has its own, so counting costs uncontended atomic
/// adds on the request path, and a reader sums the workers'. Service times
/// go into power-of-two buckets (1 µs, 2 µs, 4 µs, ...), from which a
/// reader takes the mean and an upper bound of the 99th percentile.
final class RequestCounters: @unchecked Sendable {
    static let buckets = 32
    private let counts: UnsafeMutablePointer<Atomic<UInt64>>
    private let nanos: UnsafeMutablePointer<Atomic<UInt64>>
    private let histogram: UnsafeMutablePointer<Atomic<UInt64>>
    /// Bytes of file data the daemon itself read or wrote for READ and WRITE
    /// (passthrough data never reaches it).
    let bytesRead = Atomic<UInt64>(0)
    let bytesWritten = Atomic<UInt64>(0)

    init() {
        counts = .allocate(capacity: Opcode.count)
        nanos = .allocate(capacity: Opcode.count)
        histogram = .allocate(capacity: Opcode.count * Self.buckets)
        for i in 0..<Opcode.count {
            (counts + i).initialize(to: Atomic(0))
            (nanos + i).initialize(to: Atomic(0))
        }
        for i in 0..<(Opcode.count * Self.buckets) { (histogram + i).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: Opcode.count)
        nanos.deinitialize(count: Opcode.count)
        histogram.deinitialize(count: Opcode.count * Self.buckets)
        counts.deallocate()
        nanos.deallocate()
        histogram.deallocate()
    }

    /// A monotonic timestamp in nanoseconds (vDSO: no system call).
    @inline(__always)
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    @inline(__always)
    func record(_ op: UInt32, nanoseconds: UInt64) {
        let i = Int(op)
        guard i < Opcode.count else { return }
        (counts + i).pointee.add(1, ordering: .relaxed)
        (nanos + i).pointee.add(nanoseconds, ordering: .relaxed)
        let micros = nanoseconds / 1000
        let bucket = micros == 0 ? 0 : min(Self.buckets - 1, 64 - micros.leadingZeroBitCount)
        (histogram + i * Self.buckets + bucket).pointee.add(1, ordering: .relaxed)
    }

    func value(_ op: Int) -> UInt64 { (counts + op).pointee.load(ordering: .relaxed) }
    func totalNanoseconds(_ op: Int) -> UInt64 { (nanos + op).pointee.load(ordering: .relaxed) }
    func bucket(_ op: Int, _ b: Int) -> UInt64 { (histogram + op * Self.buckets + b).pointee.load(ordering: .relaxed) }
}
