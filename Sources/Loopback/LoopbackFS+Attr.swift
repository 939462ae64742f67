import FUSE
import Sys
import Tables
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension LoopbackFS {
    public func setattr(_ r: Request, node id: NodeID, changes c: SetAttrRequest) throws(Errno) -> (Attr, CacheTimeout) {
        let n = try node(id)
        let file = c.handle.flatMap { try? files.get($0) }
        if let mode = c.mode {
            let rc: Int32
            if let f = file { rc = fchmod(f.fd, mode & 0o7777) }
            else { rc = try at(n) { d, name, _ in fchmodat(d, name, mode & 0o7777, 0) } }
            try check(rc)
        }
        if c.uid != nil || c.gid != nil {
            let uid = c.uid ?? UInt32.max, gid = c.gid ?? UInt32.max
            let rc = try at(n) { d, name, f in fchownat(d, name, uid, gid, f) }
            try check(rc)
        }
        if let size = c.size {
            if let f = file {
                try check(ftruncate(f.fd, off_t(size)))
            } else {
                let file = try UniqueFD(opened: at(n) { d, name, _ in openat(d, name, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) })
                let fd = file.raw
                try check(ftruncate(fd, off_t(size)))
            }
        }
        if c.atime != nil || c.mtime != nil {
            var ts = [timespec(tv_sec: 0, tv_nsec: Linux.UTIME_OMIT), timespec(tv_sec: 0, tv_nsec: Linux.UTIME_OMIT)]
            for (i, t) in [c.atime, c.mtime].enumerated() {
                switch t {
                case .none: break
                case .now?: ts[i].tv_nsec = Linux.UTIME_NOW
                case .set(let v)?: ts[i] = v
                }
            }
            let rc: Int32
            if let f = file { rc = futimens(f.fd, ts) }
            else { rc = try at(n) { d, name, f in utimensat(d, name, ts, f) } }
            try check(rc)
        }
        var st = Glibc.stat()
        if let f = file {
            try check(fstat(f.fd, &st))
        } else {
            st = try stat(n)
        }
        // We act as root, whose writes and truncates keep setuid/setgid: drop
        // them as the kernel would for the user (handle_killpriv_v2).
        if c.killSUIDGID && c.mode == nil && st.st_mode & Linux.S_IFMT == Linux.S_IFREG {
            var drop: UInt32 = 0o4000
            if st.st_mode & 0o010 != 0 { drop |= 0o2000 }
            if st.st_mode & drop != 0 {
                let mode = st.st_mode & 0o7777 & ~drop
                let rc: Int32
                if let f = file { rc = fchmod(f.fd, mode) } else { rc = try at(n) { d, name, _ in fchmodat(d, name, mode, 0) } }
                try check(rc)
                st.st_mode = (st.st_mode & ~0o7777) | mode
            }
        }
        return (Attr(st), options.timeout)
    }

    /// Gives a new inode the caller's owner. We create as root (so the
    /// source's own permission checks, already done by the kernel with
    /// default_permissions, do not trip over supplementary groups) and then
    /// chown: the gid stays the directory's when it is setgid, as the kernel
    /// would have chosen. chown clears setuid/setgid bits, so they are put back.
    func setOwner(_ r: Request, parentFD: Int32, name: UnsafePointer<CChar>?, fd: Int32?, mode: UInt32, isDirectory: Bool) {
        guard privileged && options.ownerFromCaller, r.uid != 0 || r.gid != 0 else { return }
        var pst = Glibc.stat()
        let setgidParent = fstat(parentFD, &pst) == 0 && pst.st_mode & 0o2000 != 0
        let gid = setgidParent ? UInt32.max : r.gid
        if let fd {
            _ = fchown(fd, r.uid, gid)
            if !isDirectory && mode & 0o6000 != 0 { _ = fchmod(fd, mode & 0o7777) }
        } else if let name {
            _ = fchownat(parentFD, name, r.uid, gid, Linux.AT_SYMLINK_NOFOLLOW)
            if !isDirectory && mode & 0o6000 != 0 && mode & Linux.S_IFMT != Linux.S_IFLNK {
                _ = fchmodat(parentFD, name, mode & 0o7777, 0)
            }
        }
    }
}
