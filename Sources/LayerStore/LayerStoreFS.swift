import FUSE
import Foundation
import OverlayFS
import Registry
import Store
import Sys
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// containers/storage's additional layer store, served through FUSE: the
/// directories it looks up (`base64(reference)/sha256:DIGEST/`) are made as
/// it asks, and each layer's `diff/` is the root of a read-only union of
/// that one layer (`OverlayFS` over `Overlay`, the code `strata mount`
/// runs), which fetches a lazily pulled file on its first read.
///
/// One session serves them all: node ids carry the layer's slot in their
/// top bits (`slot << slotShift | id`, slot 0 for the directories above),
/// so a request goes to its layer's union without a lookup, and a layer's
/// union numbers its nodes as it always does. READDIRPLUS is off, so no
/// listing hands the kernel a node id the store did not translate.
public final class LayerStoreFS: FileSystem, @unchecked Sendable {
    static let slotShift: UInt64 = 40
    static let innerMask: UInt64 = (1 << slotShift) - 1
    static let maxLayers = 1 << 16

    let options: LayerStoreOptions
    let root = VirtualNode(id: 1, kind: .root, name: [])
    /// Directories and files above the layers' unions, by node id.
    let virtual = Mutex<[UInt64: VirtualNode]>([:])
    let nextID = Atomic<UInt64>(2)
    /// The served layers by slot (1-based); written under `adding`, read
    /// without a lock once `published` says the slot is there.
    let slots: UnsafeMutablePointer<Unmanaged<ServedLayer>?>
    let published = Atomic<Int>(0)
    let adding = Mutex<Void>(())
    /// One first lookup of a layer at a time (each is a few registry requests).
    let resolving = NSLock()
    let storeOnce = Mutex<Store?>(nil)
    let notifier = Mutex<Notifier?>(nil)
    let started = timespec(tv_sec: time(nil), tv_nsec: 0)
    let timeout = CacheTimeout(60)

    public init(_ options: LayerStoreOptions) {
        self.options = options
        slots = UnsafeMutablePointer.allocate(capacity: Self.maxLayers)
        slots.initialize(repeating: nil, count: Self.maxLayers)
    }

    deinit {
        for i in 0..<published.load(ordering: .acquiring) { slots[i]?.release() }
        slots.deallocate()
    }

    public func initialize(_ connection: inout Connection) {
        // Listings carry names and inode numbers only (see above); file data
        // goes through the daemon, which fetches what is missing.
        connection.wanted &= ~(InitFlag.doReaddirplus | InitFlag.readdirplusAuto | InitFlag.passthrough)
        let n = connection.notifier
        notifier.withLock { $0 = n }
    }

    public func destroy() {}

    public func statistics() -> [(String, Int)] {
        let count = published.load(ordering: .acquiring)
        var uses = 0, blob = 0
        for i in 0..<count {
            guard let l = slots[i]?.takeUnretainedValue() else { continue }
            uses += l.uses.load(ordering: .relaxed)
            blob += Int(l.blob.fetched.withLock { $0 })
        }
        return [("layers served", count), ("uses (containers/storage)", uses), ("blob bytes fetched", blob),
                ("references", root.children.withLock { $0.count })]
    }

    // MARK: routing

    /// The layer whose union holds node `id`, and the id in that union.
    @inline(__always)
    func route(_ id: NodeID) -> (ServedLayer, NodeID)? {
        let slot = Int(id >> Self.slotShift)
        guard slot > 0, slot <= published.load(ordering: .acquiring), let l = slots[slot - 1] else { return nil }
        return (l.takeUnretainedValue(), id & Self.innerMask)
    }

    @inline(__always)
    func outer(_ e: Entry, _ l: ServedLayer) -> Entry {
        var e = e
        if e.node != 0 { e.node = l.slot << Self.slotShift | e.node }
        return e
    }

    /// Adds a layer in the next slot.
    func publish(_ make: (UInt64) -> ServedLayer) throws(Errno) -> ServedLayer {
        try adding.withLock { _ throws(Errno) -> ServedLayer in
            let n = published.load(ordering: .relaxed)
            guard n < Self.maxLayers else { throw .noSpace }
            let l = make(UInt64(n + 1))
            slots[n] = Unmanaged.passRetained(l)
            published.store(n + 1, ordering: .releasing)
            return l
        }
    }

    func node(_ id: NodeID) throws(Errno) -> VirtualNode {
        if id == 1 { return root }
        guard let n = virtual.withLock({ $0[id] }) else { throw .staleNFSFileHandle }
        return n
    }

    func make(_ kind: VirtualNode.Kind, _ name: [UInt8]) -> VirtualNode {
        let n = VirtualNode(id: nextID.add(1, ordering: .relaxed).oldValue, kind: kind, name: name)
        virtual.withLock { $0[n.id] = n }
        return n
    }

    func attr(_ n: VirtualNode) -> Attr {
        var a = Attr()
        a.ino = n.id
        a.mtime = started
        a.atime = started
        a.ctime = started
        a.uid = geteuid()
        a.gid = getegid()
        a.blksize = 4096
        switch n.kind {
        case .root, .reference, .layer:
            a.mode = Linux.S_IFDIR | 0o755
            a.nlink = 2
        case .info(let l):
            a.mode = Linux.S_IFREG | 0o444
            a.nlink = 1
            a.size = UInt64(l.info.count)
        case .blob(let l):
            a.mode = Linux.S_IFREG | 0o444
            a.nlink = 1
            a.size = UInt64(l.blob.size)
        }
        a.blocks = (a.size + 511) / 512
        return a
    }

    func entry(_ n: VirtualNode) -> Entry { Entry(node: n.id, attr: attr(n), entryTimeout: timeout, attrTimeout: timeout) }

    // MARK: names

    public func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry {
        if let (l, id) = route(parent) { return outer(try l.fs.lookup(r, parent: id, name: name), l) }
        let p = try node(parent)
        let key = name.bytes
        if let c = p.children.withLock({ $0[key] }) { return entry(c) }
        switch p.kind {
        case .root:
            // A reference, base64 as containers/storage writes it: made at
            // once; the registry is asked when one of its layers is.
            guard let decoded = Data(base64Encoded: Data(key)), let text = String(data: decoded, encoding: .utf8) else { return .negative(.zero) }
            // containers/image names a docker reference `//host/name:tag`
            // within its transport, and `docker://host/name:tag` whole.
            var reference = text
            for prefix in ["docker://", "//"] where reference.hasPrefix(prefix) { reference = String(reference.dropFirst(prefix.count)) }
            guard (try? Reference(reference)) != nil else {
                options.progress("\(text): not an image reference; nothing is looked up under it")
                return .negative(.zero)
            }
            let n = p.children.withLock { c in
                if let existing = c[key] { return existing }
                let made = make(.reference(reference), key)
                c[key] = made
                return made
            }
            return entry(n)
        case .reference(let reference):
            let digest = name.string
            guard digest.hasPrefix("sha256:"), digest.count == 71 else { return .negative(.zero) }
            resolving.lock()
            defer { resolving.unlock() }
            if let c = p.children.withLock({ $0[key] }) { return entry(c) }
            let served: ServedLayer?
            do { served = try resolve(p, reference: reference, digest: digest) } catch {
                options.progress("\(reference): layer \(digest): \(error)")
                // Not here, as far as containers/storage is concerned: it
                // pulls the layer itself.
                return .negative(.zero)
            }
            guard let served else { return .negative(.zero) }
            let layerNode = make(.layer(served), key)
            let info = make(.info(served), Array("info".utf8)), blob = make(.blob(served), Array("blob".utf8))
            layerNode.children.withLock { $0 = [info.name: info, blob.name: blob] }
            p.children.withLock { $0[key] = layerNode }
            return entry(layerNode)
        case .layer(let l):
            if name.equals(Array("diff".utf8)) {
                let (a, t) = try l.fs.getattr(r, node: 1, handle: nil)
                return Entry(node: l.slot << Self.slotShift | 1, attr: a, entryTimeout: t, attrTimeout: t)
            }
            return .negative(.zero)
        case .info, .blob:
            throw .notDirectory
        }
    }

    public func forget(_ node: NodeID, count: UInt64) {
        // The union's root is kept by the union itself.
        if let (l, id) = route(node), id != 1 { l.fs.forget(id, count: count) }
    }

    public func getattr(_ r: Request, node: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) {
        if let (l, id) = route(node) { return try l.fs.getattr(r, node: id, handle: handle) }
        return (attr(try self.node(node)), timeout)
    }

    public func readlink(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        if let (l, id) = route(node) { return try l.fs.readlink(r, node: id, buffer: buffer) }
        throw .invalidArgument
    }

    public func access(_ r: Request, node: NodeID, mask: Int32) throws(Errno) {
        if let (l, id) = route(node) { try l.fs.access(r, node: id, mask: mask); return }
        if mask & W_OK != 0 { throw .readOnlyFileSystem }
    }

    public func statfs(_ r: Request, node: NodeID) throws(Errno) -> StatFS {
        var s = statvfs()
        if statvfs(options.storeRoot, &s) != 0 { return StatFS() }
        return StatFS(s)
    }

    // MARK: containers/storage's use count

    /// `use` created in a layer's directory: one more use; ENOENT says the
    /// store counts (containers/storage's notifyUseAdditionalLayer).
    public func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) {
        if let (l, id) = route(parent) {
            let (e, o) = try l.fs.create(r, parent: id, name: name, mode: mode, umask: umask, flags: flags)
            return (outer(e, l), o)
        }
        if case .layer(let l) = try node(parent).kind, name.equals(Array("use".utf8)) {
            let n = l.uses.add(1, ordering: .relaxed).newValue
            options.progress("\(l.reference): layer \(l.digest) in use (\(n))")
            throw .noSuchFileOrDirectory
        }
        throw .readOnlyFileSystem
    }

    /// A layer's directory removed: one use less (containers/storage's
    /// notifyReleaseAdditionalLayer); answered ENOENT likewise.
    public func rmdir(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        if let (l, id) = route(parent) { try l.fs.rmdir(r, parent: id, name: name); return }
        let p = try node(parent)
        if case .reference = p.kind, let c = p.children.withLock({ $0[name.bytes] }), case .layer(let l) = c.kind {
            var now = l.uses.load(ordering: .relaxed)
            while now > 0 {
                let (done, seen) = l.uses.compareExchange(expected: now, desired: now - 1, ordering: .relaxed)
                if done { break }
                now = seen
            }
            options.progress("\(l.reference): layer \(l.digest) released (\(max(0, now - 1)) uses left)")
            throw .noSuchFileOrDirectory
        }
        throw .readOnlyFileSystem
    }

    public func unmountRefusal() -> String? {
        let n = usesOutstanding
        return n > 0 ? "containers/storage still uses \(n) of its layers (remove podman's containers and images of them first)" : nil
    }

    /// Layers containers/storage still uses (`use` minus releases).
    public var usesOutstanding: Int {
        var n = 0
        for i in 0..<published.load(ordering: .acquiring) { n += slots[i]?.takeUnretainedValue().uses.load(ordering: .relaxed) ?? 0 }
        return n
    }
}
