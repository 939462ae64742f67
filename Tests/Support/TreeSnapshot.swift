import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Everything a user can observe of one entry, for comparing two trees.
public struct EntryState: Equatable, CustomStringConvertible, Sendable {
    public var type: UInt32
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: Int64
    public var nlink: UInt64
    public var rdev: UInt64
    public var mtimeNs: Int64?
    public var content: [UInt8]?
    public var link: String?
    public var xattrs: [String: [UInt8]]

    public var description: String {
        "type=\(String(type, radix: 8)) mode=\(String(mode, radix: 8)) uid=\(uid) gid=\(gid) size=\(size) nlink=\(nlink) rdev=\(rdev) mtime=\(mtimeNs.map(String.init) ?? "-") link=\(link ?? "-") xattrs=\(xattrs.keys.sorted()) content=\(content.map { "\($0.count)B" } ?? "-")"
    }
}

public enum TreeSnapshot {
    /// Walks `root` without following symlinks. `times` includes mtimes
    /// (directories' mtimes change with every entry, so they are left out).
    public static func take(_ root: String, times: Bool = true, xattrPrefixes: [String] = ["user.", "trusted.", "security."]) -> [String: EntryState] {
        var out: [String: EntryState] = [:]
        walk(root, "", &out, times: times, prefixes: xattrPrefixes)
        return out
    }

    private static func walk(_ root: String, _ rel: String, _ out: inout [String: EntryState], times: Bool, prefixes: [String]) {
        let dir = rel.isEmpty ? root : "\(root)/\(rel)"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
        for name in names.sorted() {
            let r = rel.isEmpty ? name : "\(rel)/\(name)"
            let p = "\(root)/\(r)"
            var st = stat()
            guard lstat(p, &st) == 0 else { continue }
            let type = st.st_mode & Linux.S_IFMT
            var e = EntryState(type: type, mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid,
                               size: type == Linux.S_IFDIR ? 0 : Int64(st.st_size), nlink: UInt64(st.st_nlink),
                               rdev: UInt64(st.st_rdev),
                               mtimeNs: times && type != Linux.S_IFDIR ? Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec) : nil,
                               content: nil, link: nil, xattrs: xattrs(p, prefixes))
            // Whiteouts' link counts depend on how many share one inode.
            if type == Linux.S_IFCHR && st.st_rdev == 0 { e.nlink = 0 }
            if type == Linux.S_IFREG { e.content = FileManager.default.contents(atPath: p).map { Array($0) } }
            if type == Linux.S_IFLNK { e.link = try? FileManager.default.destinationOfSymbolicLink(atPath: p) }
            out[r] = e
            if type == Linux.S_IFDIR { walk(root, r, &out, times: times, prefixes: prefixes) }
        }
    }

    public static func xattrs(_ path: String, _ prefixes: [String]) -> [String: [UInt8]] {
        var buf = [CChar](repeating: 0, count: 65536)
        let n = llistxattr(path, &buf, buf.count)
        guard n > 0 else { return [:] }
        var out: [String: [UInt8]] = [:]
        let names = buf[0..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        for name in names where prefixes.contains(where: { name.hasPrefix($0) }) {
            var v = [UInt8](repeating: 0, count: 65536)
            let m = lgetxattr(path, name, &v, v.count)
            out[name] = m >= 0 ? Array(v[0..<m]) : []
        }
        return out
    }

    /// Human-readable differences, empty when equal.
    public static func diff(_ a: [String: EntryState], _ b: [String: EntryState], labels: (String, String) = ("a", "b")) -> [String] {
        var out: [String] = []
        for k in Set(a.keys).union(b.keys).sorted() {
            switch (a[k], b[k]) {
            case let (x?, y?) where x != y: out.append("\(k): \(labels.0) \(x) != \(labels.1) \(y)")
            case (nil, _?): out.append("\(k): only in \(labels.1)")
            case (_?, nil): out.append("\(k): only in \(labels.0)")
            default: break
            }
        }
        return out
    }
}
