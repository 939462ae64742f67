import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A branch of a mounted pool: its spec and its root, opened once; every
/// call reaches files by a path relative to this descriptor, never by the
/// branch's own path.
final class Branch: @unchecked Sendable {
    let spec: BranchSpec
    let root: OwnedFD
    let dev: UInt64

    init(_ spec: BranchSpec) throws(Errno) {
        self.spec = spec
        let fd = try Sys.open(spec.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        dev = UInt64(try Sys.fstat(fd.raw).st_dev)
        root = OwnedFD(fd)
    }

    var fd: Int32 { root.raw }

    /// f_bavail, used and read-only flag of the branch's filesystem.
    func space() -> (available: UInt64, used: UInt64, readOnly: Bool, stat: statvfs)? {
        var s = statvfs()
        guard fstatvfs(fd, &s) == 0 else { return nil }
        let unit = UInt64(s.f_frsize)
        return (UInt64(s.f_bavail) * unit, UInt64(s.f_blocks - s.f_bfree) * unit, s.f_flag & UInt(ST_RDONLY) != 0, s)
    }

    /// lstat of `path` (relative; "" is the branch's root).
    func lstat(_ path: String) -> stat? {
        RelPath.at(path).withCString { p -> stat? in
            var st = stat()
            return fstatat(fd, p, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
        }
    }
}

/// Relative paths: "" is the pool's root, "a/b" below it.
enum RelPath {
    static func child(_ parent: String, _ name: String) -> String { parent.isEmpty ? name : parent + "/" + name }
    static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[..<slash])
    }
    /// "" as "." for the *at calls.
    static func at(_ path: String) -> String { path.isEmpty ? "." : path }
}
