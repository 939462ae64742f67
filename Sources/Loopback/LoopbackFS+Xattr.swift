import CStrata
import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Extended attributes. There are no *at variants in glibc, so each call
/// names the inode as /proc/self/fd/<parent fd>/<name>, resolved by the
/// kernel without following the final symlink (the l* calls).
extension LoopbackFS {
    private func withXattrPath<R>(_ id: NodeID, _ body: (UnsafePointer<CChar>, Bool) -> R) throws(Errno) -> R {
        let n = try node(id)
        return try at(n) { d, name, nofollow in
            if d == AT_FDCWD { return body(name, nofollow != 0) }
            var path = "/proc/self/fd/\(d)/"
            path += String(cString: name)
            return path.withCString { body($0, true) }
        }
    }

    public func setxattr(_ r: Request, node: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        let rc = try withXattrPath(node) { p, nofollow in
            nofollow ? lsetxattr(p, name.pointer, value.baseAddress, value.count, flags)
                     : CStrata.setxattr(p, name.pointer, value.baseAddress, value.count, flags)
        }
        try check(rc)
    }

    public func getxattr(_ r: Request, node: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        let n = try withXattrPath(node) { p, nofollow in
            nofollow ? lgetxattr(p, name.pointer, buffer.baseAddress, buffer.count)
                     : CStrata.getxattr(p, name.pointer, buffer.baseAddress, buffer.count)
        }
        if n < 0 { throw currentErrno() }
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func listxattr(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        let n = try withXattrPath(node) { p, nofollow in
            nofollow ? llistxattr(p, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
                     : CStrata.listxattr(p, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
        }
        if n < 0 { throw currentErrno() }
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func removexattr(_ r: Request, node: NodeID, name: Name) throws(Errno) {
        let rc = try withXattrPath(node) { p, nofollow in
            nofollow ? lremovexattr(p, name.pointer) : CStrata.removexattr(p, name.pointer)
        }
        try check(rc)
    }
}
