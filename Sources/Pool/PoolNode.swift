import Synchronization
import Sys
import Tables

/// A node is a relative path of the pool (mergerfs is path based: each
/// branch holds the same path or not). Renames move a node to its new key.
struct PathKey: TableKey {
    let path: String
    var shard: UInt64 { UInt64(truncatingIfNeeded: path.hashValue) }
}

final class PoolNode: TableNode, @unchecked Sendable {
    let id: UInt64
    let references = NodeReferences()
    let path: Mutex<String>

    init(id: UInt64, path: String) {
        self.id = id
        self.path = Mutex(path)
    }

    var current: String { path.withLock { $0 } }
    var tableKey: PathKey { PathKey(path: current) }
}

/// Inode numbers as mergerfs's `inodecalc` makes them.
enum InodeNumbers {
    static let fnvStart: UInt64 = 0xcbf2_9ce4_8422_2325

    /// FNV-1a, continued from `h` (so that a listing hashes each child as
    /// its directory's hash followed by "/name", without building the path).
    static func fnv1a(_ bytes: some Sequence<UInt8>, from h: UInt64 = fnvStart) -> UInt64 {
        var h = h
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    /// Whether `calc` needs the entry's path (else its device and inode do).
    static func needsPath(_ calc: InodeCalc, isDirectory: Bool) -> Bool {
        switch calc {
        case .passthrough, .devinoHash, .devinoHash32: return false
        case .pathHash, .pathHash32: return true
        case .hybridHash, .hybridHash32: return isDirectory
        }
    }

    /// The number for an entry whose path hash (if needed) is `pathHash`.
    static func number(_ calc: InodeCalc, pathHash: UInt64, dev: UInt64, ino: UInt64, isDirectory: Bool) -> UInt64 {
        let h: UInt64
        if calc == .passthrough { return ino }
        if needsPath(calc, isDirectory: isDirectory) { h = pathHash } else { h = withUnsafeBytes(of: (dev, ino)) { fnv1a($0) } }
        let n = calc.rawValue.hasSuffix("32") ? h & 0xffff_ffff : h
        return n == 0 ? 1 : n
    }

    static func number(_ calc: InodeCalc, path: String, dev: UInt64, ino: UInt64, isDirectory: Bool) -> UInt64 {
        func devino() -> UInt64 {
            withUnsafeBytes(of: (dev, ino)) { fnv1a($0) }
        }
        let h: UInt64
        switch calc {
        case .passthrough: return ino
        case .pathHash, .pathHash32: h = fnv1a(path.utf8)
        case .devinoHash, .devinoHash32: h = devino()
        case .hybridHash, .hybridHash32: h = isDirectory ? fnv1a(path.utf8) : devino()
        }
        let n = calc.rawValue.hasSuffix("32") ? h & 0xffff_ffff : h
        return n == 0 ? 1 : n
    }
}
