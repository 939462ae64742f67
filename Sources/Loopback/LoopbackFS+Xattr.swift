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
    private func withXattrPath<R>(_ id: NodeID, _ body: (UnsafePointer<CChar>, Bool) throws(Errno) -> R) throws(Errno) -> R {
        let n = try node(id)
        let result: Result<R, Errno> = try at(n) { d, name, nofollow in
            if d == AT_FDCWD { return Result { () throws(Errno) -> R in try body(name, nofollow != 0) } }
            var path = "/proc/self/fd/\(d)/"
            path += String(cString: name)
            return path.withCString { p in Result { () throws(Errno) -> R in try body(p, true) } }
        }
        return try result.get()
    }

    public func setxattr(_ r: Request, node: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        try withXattrPath(node) { (p, nofollow) throws(Errno) in
            try PathXattr.set(p, name.pointer, value, flags: flags, follow: !nofollow)
        }
    }

    public func getxattr(_ r: Request, node: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        let n = try withXattrPath(node) { (p, nofollow) throws(Errno) in
            try PathXattr.get(p, name.pointer, into: buffer, follow: !nofollow)
        }
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func listxattr(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        let n = try withXattrPath(node) { (p, nofollow) throws(Errno) in
            try PathXattr.list(p, into: buffer, follow: !nofollow)
        }
        return buffer.count == 0 ? .size(n) : .data(n)
    }

    public func removexattr(_ r: Request, node: NodeID, name: Name) throws(Errno) {
        try withXattrPath(node) { (p, nofollow) throws(Errno) in
            try PathXattr.remove(p, name.pointer, follow: !nofollow)
        }
    }
}
