import Synchronization
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Listings prepared ahead of a walker. A walk (find, du, containers/
/// storage's naive diff, tar) reads a directory, then each directory in it:
/// on a fresh mount every READDIRPLUS of those costs the daemon a merged
/// listing and a probe of each entry's layers, while the caller waits and
/// the other CPU idles. Once a listing has been answered, its directories
/// are listed and their entries resolved on a thread of their own, under
/// SCHED_IDLE (it takes only CPU time nobody else wants), so that the
/// READDIRPLUS that follows only registers nodes.
///
/// Only directories that are not in the upper layer are prepared, and a
/// prepared listing is used only if its directory is still not there:
/// lower layers never change under a mount, and any change below a
/// directory through the union copies the directory up first. Not with
/// index=on, where a copy-up of a hard link elsewhere changes what a lower
/// name shows.
final class ReadAhead: @unchecked Sendable {
    /// Directories waiting, the newest first (a depth-first walker wants
    /// the last listed next); bounded, the oldest dropped.
    private let pending = Mutex<[OverlayNode]>([])
    private let signal: UnsafeMutablePointer<sem_t>
    private let started = Atomic<Bool>(false)
    /// Entries held in prepared listings, against `maxEntries`.
    let heldEntries = Atomic<Int>(0)
    static let maxPending = 512
    static let maxEntries = 16_384
    /// Listings prepared, and of those used (statistics and tests).
    let prepared = Atomic<Int>(0)
    let used = Atomic<Int>(0)

    init() {
        signal = .allocate(capacity: 1)
        sem_init(signal, 0, 0)
    }

    deinit {
        sem_destroy(signal)
        signal.deallocate()
    }

    /// The union whose directories are prepared (set once it is whole).
    weak var overlay: Overlay?

    /// Queues directories to prepare; the thread starts with the first
    /// (never before the daemon has forked) and lives as long as the
    /// daemon.
    func enqueue(_ dirs: [OverlayNode]) {
        if dirs.isEmpty || heldEntries.load(ordering: .relaxed) >= Self.maxEntries { return }
        pending.withLock { q in
            q.append(contentsOf: dirs.reversed())
            if q.count > Self.maxPending { q.removeFirst(q.count - Self.maxPending) }
        }
        for _ in dirs { sem_post(signal) }
        if !started.exchange(true, ordering: .acquiringAndReleasing) {
            let t = try? OSThread.start(name: "read-ahead") { [self] in
                // On any CPU (a ring thread that starts it is pinned to its
                // own), and only when that CPU has nothing else to run.
                OSThread.unpin()
                OSThread.scheduleIdle()
                while true {
                    while sem_wait(signal) != 0 {}
                    guard let n = pending.withLock({ $0.popLast() }) else { continue }
                    overlay?.prepare(n)
                }
            }
            t?.detach()
        }
    }
}

/// One entry's resolution made ahead (a class: see `DirEntry.found`).
final class ResolvedAhead: @unchecked Sendable {
    let found: Overlay.Found
    init(_ found: Overlay.Found) { self.found = found }
}

/// A listing prepared ahead, counted against `ReadAhead.maxEntries` for as
/// long as it lives: taken by a reader, or dropped with its node.
final class PreparedListing: @unchecked Sendable {
    let entries: [Overlay.DirEntry]
    private let owner: ReadAhead

    init(_ entries: [Overlay.DirEntry], _ owner: ReadAhead) {
        self.entries = entries
        self.owner = owner
        owner.heldEntries.add(entries.count, ordering: .relaxed)
    }

    deinit { owner.heldEntries.subtract(entries.count, ordering: .relaxed) }
}

extension Overlay {
    /// What READDIRPLUS calls once it has answered: the directories among
    /// the nodes it registered are prepared next.
    public func readAhead(_ dirs: [OverlayNode]) { readAhead?.enqueue(dirs) }

    /// Whether listings are read ahead (readdir_ahead=on and index=off).
    public var readsAhead: Bool { readAhead != nil }

    /// Lists `n` and resolves each entry, keeping the results on the node
    /// for its next listing from offset 0.
    func prepare(_ n: OverlayNode) {
        guard let readAhead, !n.isDead else { return }
        let skip = n.state.withLock { s in (s.place.inUpper && upper != nil) || s.caches.prepared != nil || !s.listings.isEmpty }
        if skip { return }
        guard var entries = try? readDirectory(n) else { return }
        for i in entries.indices {
            FileName.with(unterminated: entries[i].name) { fn in
                entries[i].found = (try? resolve(n, fn)).map(ResolvedAhead.init)
            }
        }
        let listing = PreparedListing(entries, readAhead)
        let stored = n.state.withLock { s -> Bool in
            guard !(s.place.inUpper && upper != nil) && s.caches.prepared == nil && s.listings.isEmpty else { return false }
            s.caches.prepared = listing
            return true
        }
        if stored { readAhead.prepared.add(1, ordering: .relaxed) }
    }

    /// The listing prepared for `n`, if one is and it still holds; taken
    /// (a listing serves one reader).
    public func takePreparedListing(_ n: OverlayNode) -> [DirEntry]? {
        guard let readAhead else { return nil }
        let p = n.state.withLock { s -> PreparedListing? in
            let p = s.caches.prepared
            s.caches.prepared = nil
            return (s.place.inUpper && upper != nil) ? nil : p
        }
        guard let p else { return nil }
        readAhead.used.add(1, ordering: .relaxed)
        return p.entries
    }

    /// Looks up a listed entry: with what was prepared for it when its
    /// directory is still not in the upper layer, else by name.
    public func lookup(_ parent: OverlayNode, entry e: DirEntry) throws(Errno) -> (OverlayNode, stat) {
        let r = FileName.with(unterminated: e.name) { (fn: FileName) -> Result<(OverlayNode, stat), Errno> in
            if let f = e.found?.found, !parent.state.withLock({ $0.place.inUpper && upper != nil }) {
                return Result { () throws(Errno) in try lookup(parent, fn, resolved: f) }
            }
            return Result { () throws(Errno) in try lookup(parent, fn) }
        }
        return try r.get()
    }
}
