import Synchronization

/// Requests seen, per opcode, counted by one worker: each worker has its
/// own, so counting costs an uncontended add on the request path, and a
/// reader sums the workers'.
final class RequestCounters: @unchecked Sendable {
    private let counts: UnsafeMutablePointer<Atomic<UInt64>>

    init() {
        counts = .allocate(capacity: Opcode.count)
        for i in 0..<Opcode.count { (counts + i).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: Opcode.count)
        counts.deallocate()
    }

    @inline(__always)
    func count(_ op: UInt32) {
        let i = Int(op)
        guard i < Opcode.count else { return }
        (counts + i).pointee.add(1, ordering: .relaxed)
    }

    func value(_ op: Int) -> UInt64 { (counts + op).pointee.load(ordering: .relaxed) }
}
