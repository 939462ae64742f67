import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// System calls as a test states them: each returns "ok", a value, or the
/// errno's name, so that the same call on two filesystems compares as text.
public struct FileOps: Sendable {
    public let root: String
    public init(_ root: String) { self.root = root }

    public func path(_ p: String) -> String { p.isEmpty ? root : "\(root)/\(p)" }

    static func result(_ r: Int) -> String { r < 0 ? errnoName(strata_errno()) : "ok" }

    public static func errnoName(_ e: Int32) -> String {
        let names: [Int32: String] = [ENOENT: "ENOENT", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR",
                                      ENOTEMPTY: "ENOTEMPTY", EINVAL: "EINVAL", EXDEV: "EXDEV", EPERM: "EPERM",
                                      EACCES: "EACCES", ENODATA: "ENODATA", ERANGE: "ERANGE", EBADF: "EBADF",
                                      ELOOP: "ELOOP", ENAMETOOLONG: "ENAMETOOLONG", EBUSY: "EBUSY", EMLINK: "EMLINK",
                                      EOPNOTSUPP: "EOPNOTSUPP", ENOSYS: "ENOSYS", EIO: "EIO", ENXIO: "ENXIO", ENOSPC: "ENOSPC",
                                      ENOTCONN: "ENOTCONN", EDQUOT: "EDQUOT"]
        return names[e] ?? "errno\(e)"
    }

    public func write(_ p: String, _ s: String, flags: Int32 = O_WRONLY | O_CREAT | O_TRUNC, mode: mode_t = 0o644) -> String {
        let fd = open(path(p), flags | O_CLOEXEC, mode)
        if fd < 0 { return Self.errnoName(strata_errno()) }
        defer { close(fd) }
        let n = s.withCString { Glibc.write(fd, $0, strlen($0)) }
        return n < 0 ? Self.errnoName(strata_errno()) : "ok"
    }
    public func read(_ p: String) -> String {
        guard let d = FileManager.default.contents(atPath: path(p)) else {
            let fd = open(path(p), O_RDONLY)
            let e = fd < 0 ? strata_errno() : EIO
            if fd >= 0 { close(fd) }
            return Self.errnoName(e)
        }
        return String(decoding: d, as: UTF8.self)
    }
    public func mkdir(_ p: String, _ mode: mode_t = 0o755) -> String { Self.result(Int(Glibc.mkdir(path(p), mode))) }
    public func rmdir(_ p: String) -> String { Self.result(Int(Glibc.rmdir(path(p)))) }
    public func unlink(_ p: String) -> String { Self.result(Int(Glibc.unlink(path(p)))) }
    public func symlink(_ target: String, _ p: String) -> String { Self.result(Int(Glibc.symlink(target, path(p)))) }
    public func link(_ a: String, _ b: String) -> String { Self.result(Int(Glibc.link(path(a), path(b)))) }
    public func chmod(_ p: String, _ m: mode_t) -> String { Self.result(Int(Glibc.chmod(path(p), m))) }
    public func lchown(_ p: String, _ u: uid_t, _ g: gid_t) -> String { Self.result(Int(Glibc.lchown(path(p), u, g))) }
    /// fchown through an open descriptor (the request then carries the file handle).
    public func fchown(_ p: String, _ u: uid_t, _ g: gid_t) -> String {
        let fd = open(path(p), O_RDONLY | O_CLOEXEC)
        if fd < 0 { return Self.errnoName(strata_errno()) }
        defer { close(fd) }
        return Self.result(Int(Glibc.fchown(fd, u, g)))
    }
    /// The permission bits, setuid/setgid/sticky included, in octal.
    public func mode(_ p: String) -> String { stat(p).map { String($0.st_mode & 0o7777, radix: 8) } ?? "ENOENT" }
    public func truncate(_ p: String, _ n: Int) -> String { Self.result(Int(Glibc.truncate(path(p), off_t(n)))) }
    public func rename(_ a: String, _ b: String, flags: UInt32 = 0) -> String {
        Self.result(Int(strata_renameat2(AT_FDCWD, path(a), AT_FDCWD, path(b), flags)))
    }
    public func mknod(_ p: String, _ mode: mode_t, _ dev: UInt64 = 0) -> String {
        Self.result(Int(Glibc.mknod(path(p), mode, dev_t(dev))))
    }
    public func utimens(_ p: String, _ sec: Int, _ nsec: Int) -> String {
        let ts = [timespec(tv_sec: sec, tv_nsec: nsec), timespec(tv_sec: sec, tv_nsec: nsec)]
        return Self.result(Int(utimensat(AT_FDCWD, path(p), ts, Linux.AT_SYMLINK_NOFOLLOW)))
    }
    public func setxattr(_ p: String, _ name: String, _ value: String, flags: Int32 = 0) -> String {
        Self.result(Int(value.withCString { lsetxattr(path(p), name, $0, strlen($0), flags) }))
    }
    public func getxattr(_ p: String, _ name: String) -> String {
        var b = [UInt8](repeating: 0, count: 4096)
        let n = lgetxattr(path(p), name, &b, b.count)
        return n < 0 ? Self.errnoName(strata_errno()) : String(decoding: b[0..<n], as: UTF8.self)
    }
    public func removexattr(_ p: String, _ name: String) -> String { Self.result(Int(lremovexattr(path(p), name))) }
    public func listxattr(_ p: String) -> String {
        var b = [CChar](repeating: 0, count: 4096)
        let n = llistxattr(path(p), &b, b.count)
        if n < 0 { return Self.errnoName(strata_errno()) }
        return b[0..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }.sorted().joined(separator: ",")
    }
    public func readlink(_ p: String) -> String {
        var b = [CChar](repeating: 0, count: 4096)
        let n = Glibc.readlink(path(p), &b, b.count)
        return n < 0 ? Self.errnoName(strata_errno()) : String(decoding: b[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    public func stat(_ p: String) -> Glibc.stat? {
        var st = Glibc.stat()
        return lstat(path(p), &st) == 0 ? st : nil
    }
    public func ls(_ p: String) -> String {
        ((try? FileManager.default.contentsOfDirectory(atPath: path(p))) ?? ["<error>"]).sorted().joined(separator: ",")
    }
}
