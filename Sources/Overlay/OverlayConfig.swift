import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The union's shape, from mount options (the kernel's names).
public struct OverlayConfig: Sendable {
    /// Lower layers, top-most first.
    public var lowers: [String] = []
    public var upper: String?
    public var work: String?
    /// Overlay xattrs in the user. namespace (rootless), as the kernel's `userxattr`.
    public var userXattr = false
    /// Rename merged and lower directories, recording where their lower
    /// parts are in a redirect xattr (the kernel's redirect_dir=on). Unset,
    /// it follows metacopy, as the kernel turns redirects on for it.
    public var redirectDir: Bool {
        get { redirectDirOption ?? (metacopy && !userXattr) }
        set { redirectDirOption = newValue }
    }
    /// redirect_dir as given, nil when not given.
    public var redirectDirOption: Bool?
    /// Metadata-only copy-up (the kernel's metacopy=on): a change of owner,
    /// mode, times or xattrs copies the file's metadata up and leaves its
    /// data in the lower layer until it is opened for writing.
    public var metacopy = false
    /// The kernel's inodes index (index=on): lower hard links stay linked
    /// across copy-up (see `UnionIndex`).
    public var index = false
    /// No fsync to layers (the kernel's `volatile`).
    public var volatile = false
    /// Directories listed ahead of a walker on an idle CPU (`ReadAhead`);
    /// readdir_ahead=off turns it off.
    public var readdirAhead = true
    /// Where the data of partly pulled layers comes from (`strata mount`
    /// gives it; without it such a layer is refused at mount).
    public var lazyData: (any LazyData)?
    /// Whether a mount of partly pulled layers completes them in the
    /// background (`lazy_fetch=background`, the default) or fetches only
    /// what is read (`lazy_fetch=on_read`).
    public var lazyBackground = true
    /// Bytes of the files after a lazily fetched one (in the blob's order)
    /// that come in the same request (`lazy_readahead=BYTES`; 0: only the
    /// file read).
    public var lazyReadahead: Int64 = 1 << 20
    /// How long the kernel may cache names and attributes (layers do not
    /// change under a mount, so long by default).
    public var timeout: Double = 86400
    /// fuse-overlayfs's presentation options: every file shown as owned by
    /// this uid / gid (squash_to_root, squash_to_uid, squash_to_gid).
    public var squashUID: UInt32?
    public var squashGID: UInt32?
    /// Directories report one link (fuse-overlayfs's static_nlink).
    public var staticNlink = false
    /// fuse-overlayfs's uidmapping/gidmapping: ranges (on-disk id, shown id,
    /// count); ids are shown mapped and written back unmapped.
    public var uidMap: [IDRange] = []
    public var gidMap: [IDRange] = []
    /// No extended attributes at all (fuse-overlayfs's noxattrs=1).
    public var noXattrs = false
    /// Directory descriptors kept open at most: the machine's open-file
    /// limit (20,000 here, even for root) must also cover open files.
    public var cachedDirectories = 4096
    /// Past that budget, reopen directories by file handle (root only)
    /// rather than by walking names from a cached ancestor.
    public var reopenByHandle = true

    public struct IDRange: Sendable, Equatable {
        public var disk: UInt32, shown: UInt32, count: UInt32
        public init(disk: UInt32, shown: UInt32, count: UInt32) { self.disk = disk; self.shown = shown; self.count = count }
    }

    /// Parses `A:B:N[:A:B:N...]`; nil when malformed.
    public static func parseIDMap(_ s: String) -> [IDRange]? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false).map { UInt32($0) }
        guard !parts.isEmpty, parts.count % 3 == 0, parts.allSatisfy({ $0 != nil }) else { return nil }
        let v = parts.compactMap { $0 }
        return stride(from: 0, to: v.count, by: 3).map { IDRange(disk: v[$0], shown: v[$0 + 1], count: v[$0 + 2]) }
    }

    public static func show(_ id: UInt32, _ map: [IDRange]) -> UInt32 {
        for r in map where id >= r.disk && id - r.disk < r.count { return r.shown + (id - r.disk) }
        return id
    }

    public static func store(_ id: UInt32, _ map: [IDRange]) -> UInt32 {
        for r in map where id >= r.shown && id - r.shown < r.count { return r.disk + (id - r.shown) }
        return id
    }
    public static let maxLowers = 500

    public init() {}

    /// Parses `lowerdir=` with the kernel's escapes: `\:` is a colon in a
    /// path, `\\` a backslash.
    public static func splitLowerdir(_ s: String) -> [String] {
        var out: [String] = []
        var cur = ""
        var esc = false
        for ch in s {
            if esc { cur.append(ch); esc = false; continue }
            if ch == "\\" { esc = true; continue }
            if ch == ":" { out.append(cur); cur = ""; continue }
            cur.append(ch)
        }
        out.append(cur)
        return out
    }

    /// The xattr prefix overlay metadata lives under.
    public var xattrPrefix: String { OverlayFormat.xattrPrefix(user: userXattr) }
}
