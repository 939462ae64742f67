import FUSE
import Synchronization
import Sys
import SystemPackage
import Tables
#if canImport(Glibc)
import Glibc
#endif

/// Several writable branches merged as mergerfs merges them: every file
/// lives whole on one branch (or several), a policy per function picks the
/// branch to create on, to act on or to find in, and nothing is copied up
/// or whited out. Served through Strata's FUSE layer with the node and
/// handle tables the union and the loopback use.
public final class PoolFS: FDBackedFileSystem, @unchecked Sendable {
    /// Options and branches, replaced whole when the `.mergerfs` control
    /// file changes them: a call takes one consistent copy (`config`), so a
    /// branch added or removed meanwhile never shifts the indexes a policy
    /// returned.
    struct Config: Sendable {
        var options: PoolOptions
        var branches: [Branch]
    }
    let configuration: Mutex<Config>
    var config: Config { configuration.withLock { $0 } }
    var options: PoolOptions { config.options }
    var branches: [Branch] { config.branches }
    let nodes: NodeTable<PoolNode>
    public let files = HandleTable<PoolFile>(tag: 4)
    let listings = HandleTable<Listing>(tag: 5)
    let attrTimeout = CacheTimeout(1)
    let started = timespec(tv_sec: time(nil), tv_nsec: 0)
    private let passthroughOn = Atomic<Bool>(false)
    var passthrough: Bool { passthroughOn.load(ordering: .relaxed) }

    /// A branch that cannot be opened is named in the error.
    public init(_ options: PoolOptions) throws(SysError) {
        let branches = try options.branches.map { (s) throws(SysError) in
            do throws(Errno) { return try Branch(s) } catch { throw SysError(error, "open branch", s.path) }
        }
        configuration = Mutex(Config(options: options, branches: branches))
        nodes = NodeTable(root: PoolNode(id: 1, path: ""))
    }

    public func initialize(_ connection: inout Connection) {
        // Plain READDIR, as mergerfs (readdirplus=false): a listing carries
        // no attributes here (they come from the getattr policy, per name),
        // and plain entries are a sixth the size: fewer round trips.
        connection.wanted &= ~(InitFlag.doReaddirplus | InitFlag.readdirplusAuto)
        passthroughOn.store(connection.passthrough, ordering: .relaxed)
    }

    public func statistics() -> [(String, Int)] {
        var n = 0
        nodes.forEach { _ in n += 1 }
        return [("branches", branches.count), ("nodes", n)]
    }

    @inline(__always)
    func node(_ id: NodeID) throws(Errno) -> PoolNode {
        guard let n = nodes.get(id) else { throw .staleNFSFileHandle }
        return n
    }

    // MARK: policies

    /// The state of every branch for `path` (its existence, mtime, space).
    func states(_ path: String, _ c: Config) -> [BranchState] {
        let options = c.options
        return c.branches.map { b in
            let st = b.lstat(path)
            let space = b.space()
            return BranchState(mode: b.spec.mode, readOnlyMount: space?.readOnly ?? false, available: space?.available ?? 0,
                               used: space?.used ?? 0, minFreeSpace: b.spec.minFreeSpace ?? options.minFreeSpace,
                               exists: st != nil, mtime: st.map { Int64($0.st_mtim.tv_sec) * 1_000_000_000 + Int64($0.st_mtim.tv_nsec) } ?? 0)
        }
    }

    /// The branches `function`'s policy picks for `path`.
    func pick(_ function: PoolFunction, _ path: String) throws(Errno) -> [Branch] {
        let c = config
        let policy = c.options.policies[function] ?? function.category.defaultPolicy
        // ff, the default search, needs no space figures: the first branch that has the path.
        if policy == .ff && function.category == .search {
            for b in c.branches where b.lstat(path) != nil { return [b] }
            throw .noSuchFileOrDirectory
        }
        return try policy.select(function, states(path, c)).map { c.branches[$0] }
    }

    /// Runs `body` on each branch; succeeds if one did, else throws the
    /// last error (mergerfs reports an action that worked anywhere).
    func onEach(_ bs: [Branch], _ body: (Branch) throws(Errno) -> Void) throws(Errno) {
        var last: Errno? = nil, done = false
        for b in bs {
            do throws(Errno) { try body(b); done = true } catch { last = error }
        }
        if !done, let last { throw last }
    }

    // MARK: attributes

    func attr(_ st: stat, path: String, branch: Branch) -> Attr {
        var a = Attr(st)
        a.ino = InodeNumbers.number(options.inodeCalc, path: path, dev: branch.dev, ino: UInt64(st.st_ino),
                                    isDirectory: st.st_mode & Linux.S_IFMT == Linux.S_IFDIR)
        return a
    }

    /// The attributes of `path` on the branch the getattr policy finds.
    func found(_ path: String) throws(Errno) -> (Attr, Branch) {
        for b in try pick(.getattr, path) {
            if let st = b.lstat(path) { return (attr(st, path: path, branch: b), b) }
        }
        throw .noSuchFileOrDirectory
    }

    func entry(_ path: String, _ a: Attr) -> Entry {
        let n = nodes.reference(PathKey(path: path)) { PoolNode(id: $0, path: path) }
        return Entry(node: n.id, attr: a, entryTimeout: attrTimeout, attrTimeout: attrTimeout)
    }

    public func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry {
        if parent == 1 && name.string == Self.controlName { return controlEntry() }
        let path = RelPath.child(try node(parent).current, name.string)
        do throws(Errno) {
            let (a, _) = try found(path)
            return entry(path, a)
        } catch .noSuchFileOrDirectory {
            return .negative(.zero)
        }
    }

    public func forget(_ node: NodeID, count: UInt64) {
        if node != Self.controlID { nodes.forget(node, count: count) }
    }

    public func getattr(_ r: Request, node: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) {
        if node == Self.controlID { return (controlAttr(), attrTimeout) }
        if let handle, let f = try? files.get(handle) {
            return (attr(try Sys.fstat(f.fd), path: try self.node(node).current, branch: f.branch), attrTimeout)
        }
        return (try found(try self.node(node).current).0, attrTimeout)
    }

    public func readlink(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let path = try self.node(node).current
        for b in try pick(.readlink, path) {
            guard let base = buffer.baseAddress?.assumingMemoryBound(to: CChar.self) else { throw .invalidArgument }
            return try check(path.withCString { readlinkat(b.fd, $0, base, buffer.count) })
        }
        throw .noSuchFileOrDirectory
    }

    public func access(_ r: Request, node: NodeID, mask: Int32) throws(Errno) {
        let path = try self.node(node).current
        for b in try pick(.access, path) {
            _ = try check(RelPath.at(path).withCString { faccessat(b.fd, $0, mask, 0x200 /* AT_EACCESS */) })
            return
        }
    }

    /// Each underlying filesystem once (mergerfs's `statfs=base`), in the
    /// smallest fragment size of them.
    public func statfs(_ r: Request, node: NodeID) throws(Errno) -> StatFS {
        var seen = Set<UInt64>()
        var out = StatFS()
        var unit: UInt64 = 0
        var figures: [statvfs] = []
        for b in branches where seen.insert(b.dev).inserted {
            guard let s = b.space()?.stat else { continue }
            figures.append(s)
            unit = unit == 0 ? UInt64(s.f_frsize) : min(unit, UInt64(s.f_frsize))
        }
        guard unit > 0 else { throw .ioError }
        for s in figures {
            let k = UInt64(s.f_frsize) / unit
            out.blocks += UInt64(s.f_blocks) * k
            out.bfree += UInt64(s.f_bfree) * k
            out.bavail += UInt64(s.f_bavail) * k
            out.files += UInt64(s.f_files)
            out.ffree += UInt64(s.f_ffree)
            out.namelen = min(out.namelen, UInt32(s.f_namemax))
        }
        out.bsize = UInt32(unit)
        out.frsize = UInt32(unit)
        return out
    }
}
