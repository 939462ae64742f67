import CFuseProto
import Logging
import Sys
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// FUSE over io_uring (kernel 6.14+): one queue per possible CPU, each an
/// io_uring of 128-byte SQEs served by a thread pinned to its CPU, so that a
/// request and its answer wake each other on one CPU instead of crossing
/// vCPUs twice, as a /dev/fuse round trip does.
///
/// liburing does the ring itself (setup, SQE and CQE handling), called from
/// CStrata's uring.c; what it has no helper for is the FUSE command area of
/// the SQE, filled there too. The kernel's facts this relies on: requests arrive with their
/// fuse_in_header in `in_out`, the opcode's first argument in `op_in` and the
/// rest in the payload buffer; `in_header.len` is the /dev/fuse length of the
/// whole request, so the first argument's size is what remains of it.
final class RingQueue<FS: FileSystem>: RingReplies, @unchecked Sendable {
    let qid: Int
    /// The entry whose request the worker is answering.
    private var current = 0
    /// 0 registering, 1 serving (a request came), 2 the kernel refused the
    /// registration (it then serves on /dev/fuse).
    let state = Atomic<Int>(0)
    private var refusalErrno: Errno?
    /// Why the kernel refused the queue, once it has (read across threads).
    var refusal: Errno? { state.load(ordering: .acquiring) == 2 ? refusalErrno : nil }
    let worker: Worker<FS>
    let devFD: Int32
    private let ring: FuseRing
    private var entries: [RingEntry] = []
    private let logger: Logger
    private var thread: OSThread?

    /// Makes the ring and its buffers; nothing is registered yet (the kernel
    /// refuses that until INIT is answered).
    init(qid: Int, depth: Int, payloadSize: Int, worker: Worker<FS>, devFD: Int32, logger: Logger) throws(SysError) {
        self.qid = qid
        self.worker = worker
        self.devFD = devFD
        self.logger = logger
        do throws(Errno) {
            ring = try FuseRing(depth: depth)
        } catch {
            throw SysError(error, "io_uring setup for FUSE queue", "\(qid)")
        }
        defer { worker.ring = self }
        // STRATA_FAULT=uring-register: register payload buffers smaller than
        // the kernel's minimum, so that it refuses them (the fallback test).
        let size = getenv("STRATA_FAULT").map { String(cString: $0) } == "uring-register" ? 4096 : payloadSize
        entries = (0..<depth).map { _ in RingEntry(payloadSize: size) }
    }

    /// Registers every entry and serves until the connection ends, on a
    /// thread pinned to the queue's CPU.
    ///
    /// With `idle`, the thread runs under SCHED_IDLE. Why: the answer wakes
    /// the caller while this thread still runs on the caller's CPU, and the
    /// scheduler then moves the caller to another, idle CPU (a cross-CPU
    /// wake-up, an interrupt between vCPUs here), and the next request goes
    /// to that CPU's queue: the round trip costs as much as on /dev/fuse.
    /// A CPU that runs only SCHED_IDLE tasks counts as idle when placing a
    /// woken task, so the caller wakes where it slept and preempts us at
    /// once. Measured here (getxattr round trip, unpinned caller): 22.7 µs
    /// normal, 11.4 µs idle; under six CPU hogs on two CPUs 36 µs normal,
    /// 20 µs idle, 19 µs /dev/fuse, so busy CPUs did not starve it in those
    /// runs. `uring_sched=normal` keeps the default policy for a machine
    /// where they would.
    ///
    /// A CPU that is possible but offline, or outside our cpuset, refuses
    /// the pinning; its queue then gets no requests, or is served unpinned.
    func start(idle: Bool) throws(SysError) {
        thread = try OSThread.start(name: "fuse-ring-\(qid)", stackSize: 1 << 22) { [self] in
            OSThread.pinToCPU(qid)
            if idle { OSThread.scheduleIdle() }
            serve()
        }
    }

    func join() { thread?.join() }

    private func register(_ i: Int) -> Bool {
        ring.queue(.register, device: devFD, qid: qid, commitID: 0, iov: entries[i].iov, userData: UInt64(i))
    }

    private func serve() {
        for i in entries.indices { _ = register(i) }
        var active = entries.count
        var retries = 0
        while active > 0 {
            let rc = ring.submitAndWait(1)
            if rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
                logger.warning("FUSE ring \(qid): \(Errno(rawValue: -rc)); its requests go to /dev/fuse")
                return
            }
            while let (data, res) = ring.next() {
                let i = Int(data)
                guard i < entries.count else { continue }
                if res < 0 {
                    // Before INIT's answer has been processed the kernel says
                    // EAGAIN: register again. ENOTCONN/ENODEV: unmounted.
                    if (res == -EAGAIN || res == -EINTR) && retries < 10_000 {
                        retries += 1
                        usleep(100)
                        _ = register(i)
                    } else {
                        if state.load(ordering: .relaxed) == 0 && res != -ENOTCONN && res != -ENODEV {
                            // The kernel turned io_uring off for the connection.
                            refusalErrno = Errno(rawValue: -res)
                            state.store(2, ordering: .releasing)
                            logger.warning("FUSE ring \(qid): registration refused (\(Errno(rawValue: -res))); serving on /dev/fuse")
                        } else if state.load(ordering: .relaxed) != 2 && res != -ENOTCONN && res != -ENODEV && res != -ECONNABORTED {
                            logger.warning("FUSE ring \(qid): entry \(i): \(Errno(rawValue: -res))")
                        }
                        active -= 1
                    }
                    continue
                }
                if state.load(ordering: .relaxed) == 0 { state.store(1, ordering: .relaxed) }
                serveEntry(i)
            }
        }
    }

    /// Puts the request back together in front of its payload, lets the
    /// worker answer it, and queues the answer with the fetch of the next.
    private func serveEntry(_ i: Int) {
        let e = entries[i]
        let headerSize = MemoryLayout<sf_in_header>.size
        let raw = UnsafeMutableRawPointer(e.headers)
        let h = raw.load(as: sf_in_header.self)
        let payloadLength = Int(e.headers.pointee.ring_ent_in_out.payload_sz)
        let arg0 = Int(h.len) - headerSize - payloadLength
        guard arg0 >= 0, arg0 <= 128, payloadLength <= e.payloadSize else {
            commit(e, index: i, unique: h.unique, error: -EIO, length: 0)
            return
        }
        let start = e.payload - headerSize - arg0
        start.copyMemory(from: raw, byteCount: headerSize)
        (start + headerSize).copyMemory(from: raw + 128, byteCount: arg0)
        current = i
        worker.replied = false
        worker.dispatch(start, length: headerSize + arg0 + payloadLength)
        if !worker.replied {
            // Every request on a ring is answered, or its entry is lost.
            commit(e, index: i, unique: h.unique, error: -ENOSYS, length: 0)
        }
    }

    /// The worker's answer to the current request: the body is copied into
    /// the entry's payload (the worker builds answers in its own buffer, so
    /// an answer never overwrites the request it is still reading).
    func ringReply(unique: UInt64, error: Int32, body: UnsafeRawPointer, length: Int) {
        let e = entries[current]
        if length > e.payloadSize {
            commit(e, index: current, unique: unique, error: -EIO, length: 0)
            return
        }
        if length > 0 { e.payload.copyMemory(from: body, byteCount: length) }
        commit(e, index: current, unique: unique, error: error, length: length)
    }

    private func commit(_ e: RingEntry, index: Int, unique: UInt64, error: Int32, length: Int) {
        worker.replied = true
        let out = sf_out_header(len: UInt32(MemoryLayout<sf_out_header>.size + length), error: error, unique: unique)
        UnsafeMutableRawPointer(e.headers).storeBytes(of: out, as: sf_out_header.self)
        e.headers.pointee.ring_ent_in_out.payload_sz = UInt32(length)
        if !ring.queue(.commitAndFetch, device: devFD, qid: qid, commitID: unique, iov: nil, userData: UInt64(index)) {
            logger.error("FUSE ring \(qid): no room to answer request \(unique)")
        }
    }

    /// The CPUs the kernel makes queues for: every possible one
    /// (/sys/devices/system/cpu/possible, e.g. "0-1" or "0-3,6").
    static func possibleCPUs() -> Int {
        guard let s = readSmallFile("/sys/devices/system/cpu/possible") else { return 0 }
        var highest = -1
        for part in s.split(whereSeparator: { $0 == "," || $0 == "\n" }) {
            let bounds = part.split(separator: "-")
            if let last = bounds.last, let n = Int(last.trimmingCharacters(in: " ")) { highest = max(highest, n) }
        }
        return highest + 1
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Character) -> Substring {
        var s = self
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return s
    }
}

/// One registered buffer pair: the kernel's header block and the payload,
/// with room before the payload to put the request back together as
/// /dev/fuse would have delivered it (header, first argument, payload)
/// without copying the payload.
final class RingEntry: @unchecked Sendable {
    let headers: UnsafeMutablePointer<strata_uring_req_header>
    let block: UnsafeMutableRawPointer
    let payload: UnsafeMutableRawPointer
    let payloadSize: Int
    let iov: UnsafeMutablePointer<iovec>
    static let prefix = 4096

    init(payloadSize: Int) {
        self.payloadSize = payloadSize
        headers = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
            .bindMemory(to: strata_uring_req_header.self, capacity: 1)
        block = UnsafeMutableRawPointer.allocate(byteCount: Self.prefix + payloadSize, alignment: 4096)
        payload = block + Self.prefix
        iov = .allocate(capacity: 2)
        iov[0] = iovec(iov_base: UnsafeMutableRawPointer(headers), iov_len: MemoryLayout<strata_uring_req_header>.size)
        iov[1] = iovec(iov_base: payload, iov_len: payloadSize)
    }

    deinit {
        UnsafeMutableRawPointer(headers).deallocate()
        block.deallocate()
        iov.deallocate()
    }
}
