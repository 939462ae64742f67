import Synchronization
import Sys
import Tables
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Union semantics over real directories, following the kernel's overlayfs
/// (Documentation/filesystems/overlayfs.rst) and its on-disk format, so that
/// the kernel, fuse-overlayfs and Strata mount each other's layers. Knows
/// nothing of FUSE: every operation works on nodes and names and throws an
/// errno, so it can be tested on plain temporary directories.
///
/// Files mirror the kernel's split: Lookup (namei.c), CopyUp (copy_up.c),
/// Directory (dir.c), Readdir (readdir.c), Inode (inode.c).
public final class Overlay: @unchecked Sendable {
    public let config: OverlayConfig
    /// [upper] + lowers, top first.
    public let layers: [Layer]
    public let upper: Layer?
    /// `workdir/work`, where copy-ups and new directories are built.
    let work: OwnedFD?
    let workLock: OwnedFD?
    public let root: OverlayNode
    let table: NodeTable<OverlayNode>
    /// Directory descriptors cached per layer, bounded.
    let fdBudget: FDBudget
    /// Whether directories can be reopened by file handle here (root only).
    let handlesWork: Atomic<Bool>
    /// Files and directories copied up since the mount (for `strata stats`).
    let copyUps = Atomic<Int>(0)
    /// Whiteouts as 0/0 character devices (needs CAP_MKNOD); else `.wh.` files.
    let deviceWhiteouts: Bool
    let opaqueXattr: String
    let originXattr: String
    let whiteoutXattr: String
    let redirectXattr: String
    let metacopyXattr: String
    /// Per layer, its filesystem's UUID, for the handles of `overlay.origin`
    /// (empty for a read-only mount, which copies nothing up).
    let lowerUUIDs: [[UInt8]]
    /// Per layer, the pull state of a partly pulled one (nil: all here),
    /// with the xattr that marks its files.
    let lazyStates: [LazyLayer?]
    let hasLazyLayers: Bool
    /// Told when a node's attributes changed under the kernel's cached ones
    /// outside a request that answers with them (a lower hard link broken
    /// by copy-up, set-id bits dropped at an open): the FUSE bridge drops
    /// them. Rare, so a lock is cheap enough.
    public let attributesObserver = Mutex<(@Sendable (UInt64) -> Void)?>(nil)

    public func attributesChanged(_ n: OverlayNode) {
        if let observe = attributesObserver.withLock({ $0 }) { observe(n.id) }
    }

    /// Files of partly pulled layers filled since the mount.
    let lazyFills = Atomic<Int>(0)
    /// `workdir/index` with index=on (nil without, or where the kernel
    /// would fall back to index=off).
    let index: UnionIndex?
    /// Listings prepared ahead of walkers (nil with readdir_ahead=off).
    let readAhead: ReadAhead?
    /// The daemon's own ids, asked once (never changed while it serves):
    /// copy-up and create ask them on every call otherwise.
    let euid = geteuid(), egid = getegid()
    /// Copy-up's shortcut: whether files made in work/ take its group (setgid).
    let workIsSetgid: Bool
    /// The process's umask, read once at the first copy-up (the FUSE server
    /// sets it to 0 after the union is made); -1 until then.
    let umaskSeen = Atomic<Int32>(-1)
    public var firstLower: Int { upper == nil ? 0 : 1 }
    /// Per layer, the index of its filesystem among the union's (0 for the
    /// top layer's). With more than one, inode numbers carry it in their top
    /// byte (the kernel's xino), so files of different filesystems never
    /// share an st_ino: the dynamic loader, tar and du tell files apart by it.
    let fsIndex: [UInt64]

    /// Takes the workdir's lock. A daemon whose union was just unmounted
    /// keeps it for the few milliseconds it takes to exit (umount returns
    /// before the daemon has seen it), and podman may mount the same layer
    /// again at once: so wait up to two seconds before calling it in use.
    static func lockWorkdir(_ fd: Int32) -> Bool {
        // (The daemon also lets the lock go as soon as it has served its
        // last request, `releaseWorkdir`, not at the end of its exit.)
        for _ in 0..<2000 {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return true }
            if errno != EWOULDBLOCK && errno != EINTR { return false }
            usleep(1000)
        }
        return false
    }

    /// Lets another mount of the same workdir in (the kernel's overlayfs
    /// frees it at unmount): called once every request has been answered
    /// and no reader is left, so nothing writes to `work/` after it.
    public func releaseWorkdir() {
        if let l = workLock { flock(l.raw, LOCK_UN) }
    }

    public init(_ config: OverlayConfig) throws(OverlaySetupError) {
        self.config = config
        fdBudget = FDBudget(limit: config.cachedDirectories)
        handlesWork = Atomic(config.reopenByHandle)
        if config.lowers.isEmpty { throw OverlaySetupError(.invalidOptions, "lowerdir is required (lowerdir=DIR[:DIR...])") }
        if config.lowers.count > OverlayConfig.maxLowers {
            throw OverlaySetupError(.invalidOptions, "too many lower layers: \(config.lowers.count) (at most \(OverlayConfig.maxLowers))")
        }
        if (config.upper == nil) != (config.work == nil) {
            throw OverlaySetupError(.invalidOptions, config.upper == nil ? "workdir given without upperdir" : "upperdir needs a workdir (workdir=DIR on the same filesystem)")
        }
        for (i, l) in config.lowers.enumerated() where l.isEmpty {
            throw OverlaySetupError(.invalidOptions, "lowerdir: layer \(i + 1) is an empty path")
        }
        func real(_ p: String, _ what: String) throws(OverlaySetupError) -> String {
            do { return try Sys.realPath(p) } catch { throw OverlaySetupError(.layer(error.errno), "\(what) \(p): \(error.errno)") }
        }
        var ls: [Layer] = []
        var realPaths: [(String, String)] = []
        if let u = config.upper {
            let r = try real(u, "upperdir")
            ls.append(try Layer(index: 0, path: r, writable: true))
            realPaths.append(("upperdir", r))
        }
        for l in config.lowers {
            let r = try real(l, "lowerdir")
            ls.append(try Layer(index: ls.count, path: r, writable: false))
            realPaths.append(("lowerdir", r))
        }
        var workFD: OwnedFD? = nil, lockFD: OwnedFD? = nil
        var indexOpt: UnionIndex? = nil
        if let w = config.work, let upperLayer = ls.first {
            let r = try real(w, "workdir")
            func inside(_ a: String, _ b: String) -> Bool { a == b || a.hasPrefix(b + "/") }
            for (what, p) in realPaths.dropFirst() where inside(p, upperLayer.path) || inside(upperLayer.path, p) {
                throw OverlySetupErrorHelper.overlap("upperdir \(upperLayer.path)", "\(what) \(p)")
            }
            if inside(r, upperLayer.path) || inside(upperLayer.path, r) {
                throw OverlaySetupError(.placement, "workdir \(r) and upperdir \(upperLayer.path) must not contain each other")
            }
            let workdir: UniqueFD
            do throws(Errno) { workdir = try Sys.open(r, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } catch { throw OverlaySetupError.failed("workdir \(r)", error) }
            let wfd = workdir.raw
            lockFD = OwnedFD(workdir)
            let st = (try? Sys.fstat(wfd)) ?? stat()
            if UInt64(st.st_dev) != upperLayer.dev {
                throw OverlaySetupError(.placement, "workdir \(r) is on another filesystem than upperdir \(upperLayer.path); put both on one")
            }
            if !Self.lockWorkdir(wfd) {
                throw OverlaySetupError(.workdirInUse, "workdir \(r) is in use by another mount")
            }
            // Validation is over: from here on we may write.
            if mkdirat(wfd, "work", 0o700) != 0 && currentErrno() != .fileExists {
                throw OverlaySetupError.last("workdir \(r)/work")
            }
            do throws(Errno) {
                workFD = OwnedFD(try Sys.openat(wfd, "work", Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC))
            } catch {
                throw OverlaySetupError.failed("workdir \(r)/work", error)
            }
            if config.index, ls.count > 1 {
                indexOpt = try Self.openIndex(layers: ls, upper: upperLayer, workdir: wfd, workdirPath: r, prefix: config.xattrPrefix) {
                    let line = "strata: \($0)\n"
                    _ = line.withCString { write(2, $0, strlen($0)) }
                }
            }
        }
        index = indexOpt
        readAhead = config.readdirAhead && indexOpt == nil ? ReadAhead() : nil
        var wst = stat()
        workIsSetgid = workFD.map { fstat($0.raw, &wst) == 0 && wst.st_mode & 0o2000 != 0 } ?? false
        layers = ls
        var devs: [UInt64] = []
        fsIndex = ls.map { l in
            if let i = devs.firstIndex(of: l.dev) { return UInt64(i) }
            devs.append(l.dev)
            return UInt64(devs.count - 1)
        }
        upper = config.upper == nil ? nil : ls.first
        work = workFD
        workLock = lockFD
        let prefix = config.xattrPrefix
        opaqueXattr = prefix + "opaque"
        originXattr = prefix + "strata.origin"
        whiteoutXattr = prefix + "whiteout"
        redirectXattr = prefix + "redirect"
        metacopyXattr = prefix + "metacopy"
        lazyStates = try ls.map { (l: Layer) throws(OverlaySetupError) -> LazyLayer? in l.writable ? nil : try Self.lazyLayer(l) }
        hasLazyLayers = lazyStates.contains { $0 != nil }
        if hasLazyLayers && config.lazyData == nil, let i = lazyStates.firstIndex(where: { $0 != nil }) {
            throw OverlaySetupError(.invalidOptions, "lowerdir \(ls[i].path) is a partly pulled layer (strata pull --lazy): "
                + "mount it with 'strata mount CONTAINER --driver fuse', or complete it first with 'strata pull IMAGE'")
        }
        deviceWhiteouts = euid == 0 && !config.userXattr
        lowerUUIDs = config.upper == nil ? [] : ls.map { $0.writable ? [] : Self.fsUUID($0.root.raw) }

        // The root: merged across every layer (an opaque root is not a thing).
        var st = stat()
        let top = ls[0]
        fstat(top.root.raw, &st)
        let rootState = OverlayNode.State(
            place: OverlayNode.Place(
                parent: nil, name: [0], inUpper: upper != nil,
                lower: upper == nil ? 0 : (ls.count > 1 ? 1 : nil),
                lowerDirs: Array((upper == nil ? 0 : 1)..<ls.count),
                key: InodeKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))),
            fds: Dictionary(uniqueKeysWithValues: ls.map { ($0.index, $0.root) }))
        root = OverlayNode(id: 1, isDirectory: true, ino: UInt64(st.st_ino), state: rootState)
        table = NodeTable(root: root)
        readAhead?.overlay = self
        try checkVolatile(workdir: config.work ?? "")
        try cleanWork()
        if let u = upper { markUpperUUID(u) }
        if config.volatile, let w = work {
            // As the kernel does: an upper that a volatile mount wrote is
            // marked until someone decides it is intact.
            // The same marker, work/incompat/volatile/dirty, so that either
            // refuses an upper the other wrote as volatile.
            mkdirat(w.raw, "incompat", 0o700)
            mkdirat(w.raw, "incompat/volatile", 0o700)
            do throws(Errno) {
                _ = try Sys.openat(w.raw, "incompat/volatile/dirty", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            } catch {
                throw OverlaySetupError.failed("workdir \(config.work ?? ""): cannot mark it volatile", error)
            }
        }
    }

    /// The kernel refuses a workdir whose last mount was volatile
    /// (`work/incompat/volatile`): nothing was synced, so after a crash the
    /// upper may hold half-written files.
    private func checkVolatile(workdir: String) throws(OverlaySetupError) {
        guard let w = work else { return }
        var st = stat()
        if fstatat(w.raw, "incompat/volatile", &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 {
            throw OverlaySetupError(.volatileDirty, "workdir \(workdir) was used by a volatile mount, so its upper may be inconsistent: "
                + "use fresh upper and work directories, or remove \(workdir)/work/incompat/volatile if the system did not crash since")
        }
    }

    /// Leftovers of an interrupted copy-up are never visible (they were
    /// built in work/); remove them at mount, as the kernel does.
    private func cleanWork() throws(OverlaySetupError) {
        guard let w = work else { return }
        guard let names = try? Sys.directoryNames(w.raw) else { return }
        for name in names where name != sharedWhiteout && name != "incompat" { removeTree(w.raw, name) }
    }

    var isReadOnly: Bool { upper == nil }

    /// The umask, from /proc/self/status (umask(2) cannot be read without
    /// setting it, which would race other threads' creates).
    var processUmask: mode_t {
        let seen = umaskSeen.load(ordering: .relaxed)
        if seen >= 0 { return mode_t(seen) }
        var mask: Int32 = 0o022
        if let text = readSmallFile("/proc/self/status"),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Umask:") }),
           let v = Int32(String(line.dropFirst(6).filter { $0 != " " && $0 != "\t" }), radix: 8) {
            mask = v
        }
        umaskSeen.store(mask, ordering: .relaxed)
        return mode_t(mask)
    }

    /// What the union holds in memory, for `strata stats`: nodes the kernel
    /// references (each released by its FORGET), directory descriptors
    /// cached (bounded by the budget), directories reopened by handle, and
    /// merged listings kept for a reader that has not reached their end.
    public func statistics() -> [(String, Int)] {
        var nodes = 0, directories = 0, handles = 0, listings = 0, listed = 0
        table.forEach { n in
            nodes += 1
            if n.isDirectory { directories += 1 }
            n.state.withLock { s in
                handles += s.caches.handles.count
                listings += s.listings.count; listed += s.listings.entryCount
            }
        }
        return [("nodes", nodes), ("directory nodes", directories),
                ("cached directory descriptors", fdBudget.inUse), ("descriptor budget", fdBudget.limit),
                ("directories reopened by handle", handles), ("listings held", listings), ("entries in listings held", listed),
                ("copy-ups", copyUps.load(ordering: .relaxed)),
                ("listings read ahead", readAhead?.prepared.load(ordering: .relaxed) ?? 0),
                ("listings read ahead and used", readAhead?.used.load(ordering: .relaxed) ?? 0),
                ("lazy files fetched on read", lazyFills.load(ordering: .relaxed)),
                ("lazy bytes fetched", config.lazyData?.bytesFetched() ?? 0)]
    }

    @inline(__always)
    func inoFor(_ ino: UInt64, layer: Int) -> UInt64 {
        let fs = layer >= 0 && layer < fsIndex.count ? fsIndex[layer] : 0
        return fs == 0 || ino >> 56 != 0 ? ino : ino | (fs << 56)
    }
}

enum OverlySetupErrorHelper {
    static func overlap(_ a: String, _ b: String) -> OverlaySetupError {
        OverlaySetupError(.placement, "\(a) and \(b) overlap: one is inside the other")
    }
}
