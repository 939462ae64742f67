import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Attributes, xattrs and opening (the kernel's inode.c and file.c).
extension Overlay {
    public func getattr(_ n: OverlayNode) throws(Errno) -> stat {
        var st = stat()
        if let o = n.state.withLock({ $0.place.unlinked ? $0.place.orphan : nil }) {
            try check(fstat(o.raw, &st))
            st.st_ino = ino_t(n.ino)
            if n.isDirectory { mergedNlink(&st, n) }
            return st
        }
        let rc = try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, _: Int) -> Int32 in
            fstatat(d, name, &st, d == AT_FDCWD ? 0 : Linux.AT_SYMLINK_NOFOLLOW)
        }
        try check(rc)
        st.st_ino = ino_t(n.ino)
        if n.isDirectory { mergedNlink(&st, n) }
        if !n.isDirectory && n.state.withLock({ $0.place.metacopy }), let b = dataBlocks(n) { st.st_blocks = b }
        if !n.isDirectory && index != nil { indexedNlink(n, &st) }
        return st
    }

    /// A directory made of more than one layer reports one link, as the
    /// kernel's overlayfs does: its true count is not known without a
    /// merged listing.
    func mergedNlink(_ st: inout stat, _ n: OverlayNode) {
        if n.state.withLock({ ($0.place.inUpper ? 1 : 0) + $0.place.lowerDirs.count }) > 1 { st.st_nlink = 1 }
    }

    public struct AttrChange: Sendable {
        public var mode: UInt32?
        public var uid: UInt32?
        public var gid: UInt32?
        public var size: Int64?
        public var atime: timespec?      // tv_nsec may be UTIME_NOW / UTIME_OMIT
        public var mtime: timespec?
        public var killSUIDGID = false
        public init() {}
    }

    /// chmod, chown, truncate, utimes: copy up, then change the upper copy.
    /// `fd`, when given, is an open upper descriptor of the node.
    public func setattr(_ n: OverlayNode, _ c: AttrChange, fd: Int32? = nil) throws(Errno) -> stat {
        // A size change needs the data (the kernel copies it for any
        // truncate); owner, mode and times need the metadata alone.
        try copyUp(n, metadataOnly: c.size == nil)
        try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, _: Int) throws(Errno) in
            let follow: Int32 = d == AT_FDCWD ? 0 : Linux.AT_SYMLINK_NOFOLLOW
            if c.uid != nil || c.gid != nil {
                try check(fchownat(d, name, c.uid ?? UInt32.max, c.gid ?? UInt32.max, follow))
            }
            if let m = c.mode, fchmodat(d, name, m & 0o7777, 0) != 0 { throw currentErrno() }
            if let size = c.size {
                if let fd {
                    try check(ftruncate(fd, off_t(size)))
                } else {
                    let file = try Sys.openat(d, name, O_WRONLY | O_CLOEXEC | O_NONBLOCK | (follow != 0 ? O_NOFOLLOW : 0))
                    let f = file.raw
                    try check(ftruncate(f, off_t(size)))
                }
            }
            if c.atime != nil || c.mtime != nil {
                let omit = timespec(tv_sec: 0, tv_nsec: Linux.UTIME_OMIT)
                let ts = [c.atime ?? omit, c.mtime ?? omit]
                try check(utimensat(d, name, ts, follow))
            }
            if c.killSUIDGID && c.mode == nil {
                var st = stat()
                if fstatat(d, name, &st, follow) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFREG {
                    var drop: UInt32 = 0o4000
                    if st.st_mode & 0o010 != 0 { drop |= 0o2000 }
                    if st.st_mode & drop != 0 && fchmodat(d, name, st.st_mode & 0o7777 & ~drop, 0) != 0 { throw currentErrno() }
                }
            }
        }
        return try getattr(n)
    }

    public func readlink(_ n: OverlayNode, into buf: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard let base = buf.baseAddress?.assumingMemoryBound(to: CChar.self) else { throw .invalidArgument }
        let r = try check(try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, _: Int) -> Int in readlinkat(d, name, base, buf.count) })
        return r
    }

    /// Opens the node: writes (and O_TRUNC) copy it up first; reads open the
    /// top layer's file, which may be a lower one.
    func openDescriptor(_ n: OverlayNode, flags: Int32) throws(Errno) -> UniqueFD {
        let writing = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if writing {
            if isReadOnly { throw .readOnlyFileSystem }
            try copyUp(n)
        }
        let fl = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC
        // A metadata-only copy is read from its data below.
        if !writing && !n.isDirectory && n.state.withLock({ $0.place.metacopy && !$0.place.unlinked }) { return try openData(n, flags: fl) }
        var layer = 0
        let u = try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, l: Int) throws(Errno) -> UniqueFD in
            layer = l
            return try Sys.openat(d, name, d == AT_FDCWD ? fl : fl | O_NOFOLLOW)
        }
        if hasLazyLayers && !n.isDirectory { try fetchIfLazy(u.raw, layer: layer) }
        return u
    }

    static let trustedBytes = Array("trusted.".utf8)

    /// Calls `body` with a path naming the node and whether the call must
    /// follow it: the root and nameless files are reached through their
    /// /proc links, which the l* calls would not follow.
    private func xattrPath(_ n: OverlayNode, _ body: (String, Bool) throws(Errno) -> Int) throws(Errno) -> Int {
        try atTop(n) { (d: Int32, name: UnsafePointer<CChar>, _: Int) throws(Errno) -> Int in
            try d == AT_FDCWD ? body(String(cString: name), true) : body("/proc/self/fd/\(d)/\(String(cString: name))", false)
        }
    }

    /// Names under the overlay prefix are the user's own when set through
    /// the union: stored escaped as `<prefix>overlay.<rest>` (the kernel's
    /// scheme since 6.7), so that they never act as overlay metadata.
    func storedXattrName(_ name: String) -> String {
        let p = config.xattrPrefix
        return name.hasPrefix(p) ? p + "overlay." + name.dropFirst(p.count) : name
    }

    /// The request's own name, on the path every file of a walk takes
    /// (containers/storage reads `security.capability` of each file): no
    /// string is made unless the name is in an overlay namespace.
    public func getxattr(_ n: OverlayNode, _ name: FileName, _ buf: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // Names in the overlay's namespaces may be ours or escaped; the rest
        // ("security.", "system.", other "user." and "trusted." names) are
        // passed through as they are.
        if Self.inOverlayNamespace(name) { return try getxattr(n, name.string, buf) }
        return try atTop(n) { (d: Int32, path: UnsafePointer<CChar>, _: Int) throws(Errno) -> Int in
            try d == AT_FDCWD ? PathXattr.get(path, name.pointer, into: buf, follow: true) : Sys.getxattr(d, path, name.pointer, into: buf)
        }
    }

    private static let fuseOverlayfsPrefixes = (Array("trusted.fuseoverlayfs.".utf8), Array("user.fuseoverlayfs.".utf8))
    private static let overlayNamespaces: [[UInt8]] = [
        Array(OverlayFormat.trustedPrefix.utf8), Array(OverlayFormat.userPrefix.utf8),
        Array("trusted.fuseoverlayfs.".utf8), Array("user.fuseoverlayfs.".utf8),
    ]

    /// Whether `name` starts with `trusted.overlay.`, `user.overlay.` or
    /// fuse-overlayfs's own prefixes (compared in place, no string made).
    static func inOverlayNamespace(_ name: FileName) -> Bool {
        for p in overlayNamespaces where name.count >= p.count {
            if p.withUnsafeBytes({ memcmp($0.baseAddress!, name.pointer, p.count) }) == 0 { return true }
        }
        return false
    }

    public func getxattr(_ n: OverlayNode, _ name: String, _ buf: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        if isPrivateXattr(name) && !name.hasPrefix(config.xattrPrefix) { throw .noData }
        let stored = storedXattrName(name)
        return try xattrPath(n) { (p, follow) throws(Errno) in try PathXattr.get(p, stored, into: buf, follow: follow) }
    }

    /// The names as the union shows them: the overlay's own hidden, the
    /// user's escaped ones unescaped. containers/storage lists the xattrs
    /// of every file it diffs, so this runs once per entry of a build's
    /// walk: the names are filtered in place, in an unzeroed buffer, with no
    /// string made (most files have none at all).
    /// `hideTrusted`: the caller is not root, and `trusted.*` names are
    /// not listed to it, as the kernel (and ext4 beneath it) lists them
    /// only to CAP_SYS_ADMIN: the daemon, root, sees them all.
    public func listxattr(_ n: OverlayNode, _ buf: UnsafeMutableRawBufferPointer, hideTrusted: Bool = false) throws(Errno) -> Int {
        try withUnsafeTemporaryAllocation(of: CChar.self, capacity: 65536) { (all: UnsafeMutableBufferPointer<CChar>) throws(Errno) -> Int in
            guard let base = all.baseAddress else { throw .noMemory }
            let into = UnsafeMutableRawBufferPointer(all)
            let len = try atTop(n) { (d: Int32, path: UnsafePointer<CChar>, _: Int) throws(Errno) -> Int in
                try d == AT_FDCWD ? PathXattr.list(path, into: into, follow: true) : Sys.listxattr(d, path, into: into)
            }
            if len == 0 { return 0 }
            let prefix = Array(config.xattrPrefix.utf8)
            let escaped = prefix + Array("overlay.".utf8)
            let raw = UnsafeRawBufferPointer(start: base, count: len)
            var total = 0
            var start = 0
            while start < len {
                var end = start
                while end < len && raw[end] != 0 { end += 1 }
                let name = UnsafeRawBufferPointer(rebasing: raw[start..<end])
                // Escaped (the user's own overlay-named xattr): shown without
                // the escape; ours: hidden; anything else as it is.
                var shown = name
                var drop = 0
                if hideTrusted && name.starts(with: Self.trustedBytes) {
                    shown = UnsafeRawBufferPointer(start: nil, count: 0)
                } else if name.starts(with: escaped) {
                    drop = escaped.count - prefix.count
                } else if name.starts(with: prefix) || name.starts(with: Self.fuseOverlayfsPrefixes.0)
                            || name.starts(with: Self.fuseOverlayfsPrefixes.1) {
                    // As isPrivateXattr: ours (this mount's namespace) and
                    // fuse-overlayfs's metadata.
                    shown = UnsafeRawBufferPointer(start: nil, count: 0)
                }
                if shown.count > 0 {
                    let size = shown.count - drop + 1
                    if buf.count > 0 {
                        guard total + size <= buf.count, let out = buf.baseAddress else { throw .outOfRange }
                        if drop > 0 {
                            (out + total).copyMemory(from: prefix, byteCount: prefix.count)
                            (out + total + prefix.count).copyMemory(from: shown.baseAddress! + escaped.count, byteCount: shown.count - escaped.count)
                        } else {
                            (out + total).copyMemory(from: shown.baseAddress!, byteCount: shown.count)
                        }
                        out.storeBytes(of: 0, toByteOffset: total + size - 1, as: UInt8.self)
                    }
                    total += size
                }
                start = end + 1
            }
            return total
        }
    }

    public func setxattr(_ n: OverlayNode, _ name: String, _ value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        try copyUp(n, metadataOnly: true)
        let stored = storedXattrName(name)
        _ = try xattrPath(n) { (p, follow) throws(Errno) in
            try PathXattr.set(p, stored, value, flags: flags, follow: follow)
            return 0
        }
    }

    public func removexattr(_ n: OverlayNode, _ name: String) throws(Errno) {
        let stored = storedXattrName(name)
        if !n.snapshot.place.inUpper {
            // Removing what is not there fails without a copy-up, as in the kernel.
            _ = try xattrPath(n) { (p, follow) throws(Errno) in try PathXattr.get(p, stored, into: nil, follow: follow) }
        }
        try copyUp(n, metadataOnly: true)
        _ = try xattrPath(n) { (p, follow) throws(Errno) in
            try PathXattr.remove(p, stored, follow: follow)
            return 0
        }
    }

    /// statfs reports the upper filesystem (the top lower without one).
    public func statfs() throws(Errno) -> statvfs {
        var s = statvfs()
        try check(fstatvfs(layers[0].root.raw, &s))
        return s
    }
}
