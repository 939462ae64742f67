import Sys
import SystemPackage

/// mergerfs's categories of functions: each function takes its category's
/// policy unless `func.NAME=POLICY` says otherwise.
public enum PoolCategory: String, Sendable, CaseIterable {
    case action, create, search

    var defaultPolicy: Policy {
        switch self {
        case .action: return .epall
        case .create: return .epmfs
        case .search: return .ff
        }
    }
}

/// The functions a policy decides, by mergerfs's names.
public enum PoolFunction: String, Sendable, CaseIterable {
    case chmod, chown, link, removexattr, rename, rmdir, setxattr, truncate, unlink, utimens
    case create, mkdir, mknod, symlink
    case access, getattr, getxattr, listxattr, open, readlink

    public var category: PoolCategory {
        switch self {
        case .chmod, .chown, .link, .removexattr, .rename, .rmdir, .setxattr, .truncate, .unlink, .utimens: return .action
        case .create, .mkdir, .mknod, .symlink: return .create
        case .access, .getattr, .getxattr, .listxattr, .open, .readlink: return .search
        }
    }
}

/// mergerfs's policies: how branches are filtered and ordered for a function.
public enum Policy: String, Sendable, CaseIterable {
    case all, epall, epff, eplfs, eplus, epmfs, eppfrd, eprand, erofs, ff, lfs, lus, mfs, newest, pfrd, rand

    static let notYet: Set<String> = ["msplfs", "msplus", "mspmfs", "msppfrd"]

    static func named(_ s: String) throws(UsageError) -> Policy {
        if let p = Policy(rawValue: s) { return p }
        if notYet.contains(s) { throw UsageError("mergerfs policy '\(s)' is not supported by strata pool yet") }
        throw UsageError("unknown policy '\(s)' (\(allCases.map(\.rawValue).joined(separator: ", ")))")
    }

    /// Path preserving: only branches where the path already exists.
    public var preservesPath: Bool { rawValue.hasPrefix("ep") }
}

/// What a policy knows of a branch for one call: its tag, whether its
/// filesystem is mounted read-only, its space, and whether (and how new)
/// the relative path is there.
public struct BranchState: Sendable {
    public var mode: BranchSpec.Mode
    public var readOnlyMount: Bool
    /// Bytes free for unprivileged users (f_bavail), as mergerfs counts.
    public var available: UInt64
    /// Bytes in use (f_blocks - f_bfree).
    public var used: UInt64
    public var minFreeSpace: UInt64
    /// The relative path the policy asks about exists on this branch.
    public var exists: Bool
    /// Its modification time, for `newest`.
    public var mtime: Int64

    public init(mode: BranchSpec.Mode, readOnlyMount: Bool = false, available: UInt64, used: UInt64, minFreeSpace: UInt64,
                exists: Bool, mtime: Int64 = 0) {
        self.mode = mode
        self.readOnlyMount = readOnlyMount
        self.available = available
        self.used = used
        self.minFreeSpace = minFreeSpace
        self.exists = exists
        self.mtime = mtime
    }
}

extension Policy {
    /// The branches (indexes, in the order to use them) `self` picks for
    /// `function` among `branches`, or the errno mergerfs answers: ENOENT
    /// when no branch has the path, else EROFS or ENOSPC after the last
    /// reason a branch was filtered out. `random` draws in 0..<n.
    public func select(_ function: PoolFunction, _ branches: [BranchState],
                       random: (Int) -> Int = { Int.random(in: 0..<$0) }) throws(Errno) -> [Int] {
        if self == .erofs { throw .readOnlyFileSystem }
        let category = function.category
        // Outside create, every policy keeps to existing paths.
        let needsPath = category != .create || preservesPath || self == .newest
        var lastFilter: Errno? = nil
        var eligible: [Int] = []
        for (i, b) in branches.enumerated() {
            if needsPath && !b.exists { continue }
            switch category {
            case .search:
                break
            case .action:
                if b.mode == .ro || b.readOnlyMount { lastFilter = .readOnlyFileSystem; continue }
            case .create:
                if b.mode == .ro || b.mode == .nc || b.readOnlyMount { lastFilter = .readOnlyFileSystem; continue }
                if b.available < b.minFreeSpace { lastFilter = .noSpace; continue }
            }
            eligible.append(i)
        }
        if eligible.isEmpty { throw lastFilter ?? .noSuchFileOrDirectory }
        // Ties go to the first branch in order, as mergerfs's strict comparisons do.
        func best(_ better: (BranchState, BranchState) -> Bool) -> [Int] {
            var pick = eligible[0]
            for i in eligible.dropFirst() where better(branches[i], branches[pick]) { pick = i }
            return [pick]
        }
        func weighted() -> [Int] {
            let total = eligible.reduce(UInt64(0)) { $0 &+ branches[$1].available }
            guard total > 0 else { return [eligible[0]] }
            // A draw in 0..<total, from draws the caller can fix in tests.
            var r = UInt64(random(Int(min(total, UInt64(Int.max)))))
            for i in eligible {
                if r < branches[i].available { return [i] }
                r -= branches[i].available
            }
            return [eligible[eligible.count - 1]]
        }
        switch self {
        case .erofs:
            throw .readOnlyFileSystem
        case .ff, .epff:
            return [eligible[0]]
        case .all, .epall:
            // Search takes the first found; create's `create` acts like ff
            // (one file); mkdir, mknod, symlink and every action on all.
            if category == .search || function == .create { return [eligible[0]] }
            return eligible
        case .mfs, .epmfs:
            return best { $0.available > $1.available }
        case .lfs, .eplfs:
            return best { $0.available < $1.available }
        case .lus, .eplus:
            return best { $0.used < $1.used }
        case .newest:
            // As mergerfs 2.33 compares: whole seconds, and a later branch
            // of the same second wins (it keeps scanning on equal times).
            return best { $0.mtime / 1_000_000_000 >= $1.mtime / 1_000_000_000 }
        case .rand, .eprand:
            return [eligible[random(eligible.count)]]
        case .pfrd, .eppfrd:
            return weighted()
        }
    }
}
