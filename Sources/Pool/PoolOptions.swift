import Sys
#if canImport(Glibc)
import Glibc
#endif

/// A branch of a pool, as mergerfs writes it: `PATH[=MODE[,MINFREESPACE]]`.
public struct BranchSpec: Sendable, Equatable {
    public enum Mode: String, Sendable { case rw = "RW", ro = "RO", nc = "NC" }
    public var path: String
    public var mode: Mode
    /// This branch's own minimum free space for creates, if given.
    public var minFreeSpace: UInt64?
}

/// mergerfs's file-caching modes (`cache.files`).
public enum CacheFiles: String, Sendable, CaseIterable { case libfuse, off, partial, full, autoFull = "auto-full" }

/// mergerfs's inode calculations (`inodecalc`).
public enum InodeCalc: String, Sendable, CaseIterable {
    case passthrough, pathHash = "path-hash", pathHash32 = "path-hash32", devinoHash = "devino-hash"
    case devinoHash32 = "devino-hash32", hybridHash = "hybrid-hash", hybridHash32 = "hybrid-hash32"
}

/// What `strata pool` is told, in mergerfs's words: its command line
/// (`-o OPTIONS BRANCHES MOUNTPOINT`) and fstab form, so that a mergerfs
/// line works with the program's name changed. An option mergerfs has and
/// Strata does not is refused by name, never ignored.
public struct PoolOptions: Sendable {
    public var branches: [BranchSpec] = []
    /// The policy of each function, from `category.*` then `func.*`.
    public var policies: [PoolFunction: Policy] = Dictionary(uniqueKeysWithValues: PoolFunction.allCases.map { ($0, $0.category.defaultPolicy) })
    public var minFreeSpace: UInt64 = 4 << 30
    /// A write that fills its branch moves the file to the branch this
    /// policy picks, and carries on (`moveonenospc`; nil: off).
    public var moveOnENOSPC: Policy? = nil
    public var cacheFiles: CacheFiles = .libfuse
    public var dropCacheOnClose = false
    public var inodeCalc: InodeCalc = .hybridHash
    public var fsname: String? = nil
    public var allowOther = false
    public var defaultPermissions = false
    public var readOnly = false

    public init() {}

    /// mergerfs options Strata does not have yet, which a user may rely on:
    /// refused by name.
    static let notYet: Set<String> = [
        "symlinkify", "symlinkify_timeout", "nullrw", "ignorepponrename", "security_capability", "xattr", "link_cow",
        "statfs", "statfs_ignore", "nfsopenhack", "follow-symlinks", "link-exdev", "rename-exdev", "posix_acl",
        "cache.open", "cache.statfs", "cache.writeback", "cache.symlinks", "cache.readdir", "config", "branches-mount-timeout",
        "lazy-umount-mountpoint", "readahead", "fuse_msg_size", "srcmounts",
    ]
    /// Options mergerfs still accepts and ignores (deprecated, or libfuse's
    /// that Strata's FUSE layer decides itself).
    static let accepted: Set<String> = [
        "defaults", "use_ino", "hard_remove", "big_writes", "splice_move", "splice_read", "splice_write", "atomic_o_trunc",
        "auto_cache", "async_read", "sync_read", "kernel_cache", "direct_io", "noforget", "nonempty", "rw", "dev", "suid",
        "exec", "atime", "noatime", "nodev", "nosuid", "noexec", "auto", "noauto", "nofail", "user", "users", "_netdev",
        "threads", "read-thread-count", "process-thread-count", "cache.attr", "cache.entry", "cache.negative_entry",
    ]

    /// Reads `-o` lists (comma-separated, `key=value`) and the branch list.
    public static func parse(options lists: [String], branches: String) throws(UsageError) -> PoolOptions {
        var o = PoolOptions()
        for (k, v) in MountOptionList(lists).items { try o.apply(k, v) }
        o.branches = try parseBranches(branches)
        if o.branches.isEmpty { throw UsageError("no branches: give them as /a:/b=RO:/c=NC (globs allowed)") }
        return o
    }

    public mutating func apply(_ k: String, _ v: String?) throws(UsageError) {
        func value() throws(UsageError) -> String {
            guard let v, !v.isEmpty else { throw UsageError("option '\(k)' needs a value") }
            return v
        }
        func bool() throws(UsageError) -> Bool {
            switch v {
            case nil, "true", "1", "yes": return true
            case "false", "0", "no": return false
            default: throw UsageError("option '\(k)' takes true or false, got '\(v ?? "")'")
            }
        }
        if k.hasPrefix("category.") {
            let name = String(k.dropFirst(9))
            guard let c = PoolCategory(rawValue: name) else { throw UsageError("unknown category '\(name)' (action, create, search)") }
            let p = try Policy.named(try value())
            for f in PoolFunction.allCases where f.category == c { policies[f] = p }
            return
        }
        if k.hasPrefix("func.") {
            let name = String(k.dropFirst(5))
            guard let f = PoolFunction(rawValue: name) else { throw UsageError("unknown function '\(name)' in '\(k)'") }
            policies[f] = try Policy.named(try value())
            return
        }
        switch k {
        case "minfreespace": minFreeSpace = try Self.size(try value(), k)
        case "moveonenospc":
            switch v {
            case nil, "true": moveOnENOSPC = .mfs
            case "false": moveOnENOSPC = nil
            default: moveOnENOSPC = try Policy.named(try value())
            }
        case "cache.files":
            guard let c = CacheFiles(rawValue: try value()) else { throw UsageError("cache.files takes \(CacheFiles.allCases.map(\.rawValue).joined(separator: ", "))") }
            cacheFiles = c
        case "dropcacheonclose": dropCacheOnClose = try bool()
        case "inodecalc":
            guard let c = InodeCalc(rawValue: try value()) else { throw UsageError("inodecalc takes \(InodeCalc.allCases.map(\.rawValue).joined(separator: ", "))") }
            inodeCalc = c
        case "fsname": fsname = try value()
        case "allow_other": allowOther = true
        case "default_permissions": defaultPermissions = true
        case "ro": readOnly = true
        // mergerfs 2.33's older spellings of the categories.
        case "func.create", "create": try apply("category.create", v)
        case "action": try apply("category.action", v)
        case "search": try apply("category.search", v)
        default:
            if Self.accepted.contains(k) { return }
            if Self.notYet.contains(k) { throw UsageError("mergerfs option '\(k)' is not supported by strata pool yet") }
            throw UsageError("unknown option '\(k)' (see 'strata pool --help')")
        }
    }

    /// `1024`, `100K`, `10M`, `4G`, `1T` (powers of 1024, as mergerfs).
    static func size(_ s: String, _ what: String) throws(UsageError) -> UInt64 {
        let units: [Character: UInt64] = ["B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(s), unit: UInt64 = 1
        if let last = s.last, let u = units[Character(last.uppercased())] { unit = u; digits = digits.dropLast() }
        guard let n = UInt64(digits), n <= UInt64.max / unit else { throw UsageError("\(what) takes a size like 100M or 4G, got '\(s)'") }
        return n * unit
    }

    /// `:`-separated branches, each `PATH[=MODE[,MINFREESPACE]]`, a PATH
    /// with glob characters expanded at mount time (as mergerfs).
    static func parseBranches(_ text: String) throws(UsageError) -> [BranchSpec] {
        var out: [BranchSpec] = []
        for part in text.split(separator: ":", omittingEmptySubsequences: true).map(String.init) {
            var path = part, mode = BranchSpec.Mode.rw, minFree: UInt64? = nil
            if let eq = part.lastIndex(of: "=") {
                path = String(part[..<eq])
                let spec = part[part.index(after: eq)...].split(separator: ",").map(String.init)
                guard let m = spec.first.flatMap({ BranchSpec.Mode(rawValue: $0.uppercased()) }) else {
                    throw UsageError("branch '\(part)': the mode after '=' is RW, RO or NC")
                }
                mode = m
                if spec.count > 1 { minFree = try size(spec[1], "branch '\(part)' minfreespace") }
            }
            let paths = path.contains(where: { "*?[".contains($0) }) ? glob(path) : [path]
            if paths.isEmpty { throw UsageError("branch '\(path)': the glob matches no directory") }
            for p in paths {
                var st = stat()
                guard stat(p, &st) == 0, st.st_mode & Linux.S_IFMT == Linux.S_IFDIR else {
                    throw UsageError("branch '\(p)': not a directory (\(currentErrno()))")
                }
                out.append(BranchSpec(path: p, mode: mode, minFreeSpace: minFree))
            }
        }
        return out
    }

    static func glob(_ pattern: String) -> [String] {
        var g = glob_t()
        defer { globfree(&g) }
        guard Glibc.glob(pattern, GLOB_ONLYDIR, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }
}
