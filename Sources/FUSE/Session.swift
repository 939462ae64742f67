import CFuseProto
import Logging
import Sys
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One FUSE connection: answers INIT, then serves requests on several
/// threads until the filesystem is unmounted.
///
/// Why we speak the protocol ourselves rather than link libfuse: Debian's
/// libfuse 3.14 has no passthrough (protocol 7.40) and no parallel direct
/// writes, both of which this kernel offers and Strata's speed depends on
/// (docs/ARCHITECTURE.md).
public final class Session<FS: FileSystem>: @unchecked Sendable {
    public let fs: FS
    public let options: SessionOptions
    let devFD: Int32
    let logger: Logger
    let backing = BackingTable()
    /// Set once INIT is answered; read by workers (no lock: written before
    /// the workers start).
    private(set) var connection: Connection?
    private(set) var proto: (major: UInt32, minor: UInt32) = (7, 0)

    /// The io_uring queues, one per possible CPU, when INIT negotiated them.
    private(set) var rings: [RingQueue<FS>] = []
    /// Why INIT could not be answered as the options demand (`uring=on`).
    private(set) var initFailure: SysError?

    /// Each worker's request counters, for `statistics()`.
    private let workers = Mutex<[RequestCounters]>([])
    /// The /dev/fuse readers: how many wait, when to start another.
    let pool: ReaderPool
    /// Readers started, and the cloned descriptors they read (closed once
    /// every reader has ended).
    private let readers = Mutex<(threads: [OSThread], fds: [OwnedFD])>(([], []))
    private let started = ContinuousClock.now

    /// What the connection has done so far, for `strata stats`: the
    /// transport, requests per opcode (all workers), and the filesystem's
    /// own figures.
    public func statistics() -> Statistics {
        let counters = workers.withLock { $0 }
        var requests: [Statistics.RequestFigures] = []
        for op in 0..<Opcode.count {
            let n = counters.reduce(UInt64(0)) { $0 + $1.value(op) }
            guard n > 0 else { continue }
            let ns = counters.reduce(UInt64(0)) { $0 + $1.totalNanoseconds(op) }
            // The 99th percentile's bucket: its upper bound in µs.
            var seen: UInt64 = 0, p99: UInt64 = 0
            for b in 0..<RequestCounters.buckets {
                seen += counters.reduce(UInt64(0)) { $0 + $1.bucket(op, b) }
                if seen * 100 >= n * 99 { p99 = UInt64(1) << b; break }
            }
            requests.append(.init(name: Opcode.name(op), count: n, meanMicroseconds: Double(ns) / Double(n) / 1000, p99Microseconds: p99))
        }
        let read = counters.reduce(UInt64(0)) { $0 + $1.bytesRead.load(ordering: .relaxed) }
        let written = counters.reduce(UInt64(0)) { $0 + $1.bytesWritten.load(ordering: .relaxed) }
        let onRings = rings.reduce(UInt64(0)) { sum, q in
            sum + (0..<Opcode.count).reduce(UInt64(0)) { $0 + q.worker.counters.value($1) }
        }
        let transport: String
        if rings.isEmpty {
            transport = "/dev/fuse"
        } else if let e = rings.lazy.compactMap(\.refusal).first {
            transport = "/dev/fuse (the kernel refused the io_uring queues: \(e))"
        } else {
            transport = "io_uring, \(rings.count) queues of \(options.uringDepth) entries (FORGET, INTERRUPT and notifications on /dev/fuse)"
        }
        return Statistics(transport: transport, threads: counters.count,
                          protocol: "7.\(proto.minor)", passthrough: passthroughOn,
                          uptime: started.duration(to: .now), requests: requests, bytesRead: read, bytesWritten: written, ringRequests: onRings,
                          filesystem: fs.statistics())
    }

    public init(fs: FS, deviceFD: Int32, options: SessionOptions, logger: Logger = Logger(label: "strata.fuse")) {
        self.fs = fs
        self.devFD = deviceFD
        self.options = options
        self.logger = logger
        self.pool = ReaderPool(limit: max(options.threads, options.maxThreads))
    }

    /// A handle to send cache invalidations on this connection.
    public var notifier: Notifier { Notifier(fd: devFD) }

    /// Serves until unmount. `ready` runs once INIT has been answered: the
    /// mount is then usable, which is when a backgrounding parent may exit.
    public func run(ready: () -> Void = {}) throws(SysError) {
        let first = Worker(session: self, fd: devFD)
        // INIT comes first on the original descriptor; only then do we know
        // the buffer sizes and may clone.
        try first.serveUntilInit()
        if let initFailure { throw initFailure }
        // Registration waits for INIT's answer; the kernel holds requests
        // until every queue has an entry, so start them before anything.
        var ringThreads = 0
        for q in rings {
            do {
                try q.start(idle: options.uringIdleThreads)
                ringThreads += 1
            } catch {
                // A queue that never registers would hang the mount; there
                // is no way back once INIT said io_uring, so stop here.
                logger.error("\(error)")
                throw error
            }
        }
        ready()
        // The first reader serves on the original descriptor; the others
        // each on a clone (so that their answers need no lock).
        workers.withLock { $0 = [first.counters] + rings.map(\.worker.counters) }
        // The kept readers count as waiting before the first starts: a
        // request it takes meanwhile must not look like all being busy.
        let kept = max(1, options.threads)
        for _ in 0..<kept {
            _ = pool.reserve()
            pool.waiting()
        }
        let t = try OSThread.start(name: "fuse-0", stackSize: Self.readerStack) { first.serve() }
        readers.withLock { $0.threads.append(t) }
        for _ in 1..<kept { addReader(counted: true) }
        // Readers may start readers while we wait: join until none is left.
        while let t = readers.withLock({ $0.threads.isEmpty ? nil : $0.threads.removeFirst() }) { t.join() }
        for q in rings { q.join() }
        readers.withLock { $0.fds = [] }
        fs.destroy()
    }

    static var readerStack: Int { 1 << 22 }

    /// Starts one more /dev/fuse reader, on a clone of the device
    /// descriptor; its slot in `pool` is already reserved (and, when
    /// `counted`, it already counts as waiting). A reader that cannot start
    /// is logged and the mount serves with those it has.
    func addReader(counted: Bool = false) {
        guard let clone = try? Sys.cloneFuseDevice(devFD) else {
            if counted { pool.left() }
            pool.failed()
            return
        }
        let device = OwnedFD(clone)
        let w = Worker(session: self, fd: device.raw)
        if !counted { pool.waiting() }
        let n = pool.readers
        do {
            let t = try OSThread.start(name: "fuse-\(n - 1)", stackSize: Self.readerStack) { w.serve() }
            readers.withLock { $0.threads.append(t); $0.fds.append(device) }
            workers.withLock { $0.append(w.counters) }
        } catch {
            pool.left()
            pool.failed()
            logger.warning("\(error)")
        }
    }

    func negotiate(_ inp: sf_init_in, _ out: inout sf_init_out) {
        let kernelFlags: UInt64
        if inp.flags & UInt32(truncatingIfNeeded: SF_INIT_EXT) != 0 {
            kernelFlags = UInt64(inp.flags) | (UInt64(inp.flags2) << 32)
        } else {
            kernelFlags = UInt64(inp.flags)
        }
        var wanted = InitFlag.asyncRead | InitFlag.atomicOTrunc | InitFlag.bigWrites
            | InitFlag.doReaddirplus | (options.readdirplusAlways ? 0 : InitFlag.readdirplusAuto) | InitFlag.asyncDIO
            | InitFlag.parallelDirops | InitFlag.handleKillprivV2 | InitFlag.maxPages
            | InitFlag.cacheSymlinks | InitFlag.initExt | InitFlag.setxattrExt
            | InitFlag.autoInvalData
        if options.posixACL { wanted |= InitFlag.posixACL | InitFlag.dontMask }
        if options.passthrough && geteuid() == 0 { wanted |= InitFlag.passthrough }
        if options.uring != .off {
            if kernelFlags & InitFlag.overIOURing == 0 {
                if options.uring == .on {
                    initFailure = SysError(.notSupported, "uring=on: the kernel does not offer FUSE over io_uring (needs 6.14+ and "
                                           + "/sys/module/fuse/parameters/enable_uring = Y; or use uring=auto)", "")
                }
            } else {
                wanted |= InitFlag.overIOURing
            }
        }
        var conn = Connection(major: inp.major, minor: inp.minor, flags: kernelFlags, wanted: wanted,
                              maxWrite: options.maxWrite, maxReadahead: inp.max_readahead, notifier: notifier)
        fs.initialize(&conn)
        if conn.has(InitFlag.overIOURing) && initFailure == nil {
            // Every queue is made before INIT is answered: once the answer
            // says io_uring, a queue that cannot exist would hang the mount.
            let payload = max(8192, Int((conn.maxWrite + 4095) / 4096) * 4096)
            do throws(SysError) {
                for cpu in 0..<RingQueue<FS>.possibleCPUs() {
                    let w = Worker(session: self, fd: devFD)
                    rings.append(try RingQueue(qid: cpu, depth: options.uringDepth, payloadSize: payload,
                                               worker: w, devFD: devFD, logger: logger))
                }
                if rings.isEmpty { throw SysError(.noSuchFileOrDirectory, "no CPUs listed in", "/sys/devices/system/cpu/possible") }
            } catch {
                rings = []
                conn.wanted &= ~InitFlag.overIOURing
                if options.uring == .on { initFailure = SysError(error.errno, "uring=on: \(error.operation)", error.path) }
                logger.warning("FUSE over io_uring not used: \(error)")
            }
        }
        connection = conn
        let minor = min(inp.minor, UInt32(SF_KERNEL_MINOR_VERSION))
        proto = (7, minor)
        let flags = conn.negotiated
        out.major = 7
        out.minor = minor
        out.max_readahead = conn.maxReadahead
        out.flags = UInt32(truncatingIfNeeded: flags)
        out.flags2 = UInt32(truncatingIfNeeded: flags >> 32)
        out.max_background = conn.maxBackground
        out.congestion_threshold = conn.congestionThreshold
        out.max_write = conn.maxWrite
        out.time_gran = conn.timeGranularity
        out.max_pages = UInt16(truncatingIfNeeded: (conn.maxWrite + 4095) / 4096)
        // Backing files live on ordinary filesystems: one level of stacking.
        out.max_stack_depth = conn.passthrough ? 1 : 0
        logger.debug("INIT kernel 7.\(inp.minor) flags \(String(kernelFlags, radix: 16)) -> 7.\(minor) \(String(flags, radix: 16))")
    }

    /// Whether setxattr requests carry the extended header.
    var setxattrExt: Bool { connection?.has(InitFlag.setxattrExt) ?? false }
    var passthroughOn: Bool { connection?.passthrough ?? false }
}
