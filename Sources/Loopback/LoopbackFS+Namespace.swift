import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension LoopbackFS {
    /// Runs a creating call in `parent`, sets the owner, and looks the new
    /// name up (taking the kernel's reference).
    private func made(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32 = 0, isDirectory: Bool,
                      _ call: (Int32, UInt32) -> Int32) throws(Errno) -> Entry {
        let p = try node(parent)
        return try withDirFD(p) { (pfd: Int32) throws(Errno) -> Entry in
            try check(call(pfd, creationMode(mode, umask: umask, parentFD: pfd)))
            setOwner(r, parentFD: pfd, name: name.pointer, fd: nil, mode: mode, isDirectory: isDirectory)
            return try lookupChild(p, name)
        }
    }

    public func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry {
        // The kernel's new_encode_dev back to a dev_t.
        let maj = (rdev & 0xfff00) >> 8, mnr = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
        let dev = Sys.makedev(maj, mnr)
        return try made(r, parent: parent, name: name, mode: mode, umask: umask, isDirectory: false) { mknodat($0, name.pointer, $1, dev_t(dev)) }
    }

    public func mkdir(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32) throws(Errno) -> Entry {
        try made(r, parent: parent, name: name, mode: mode, umask: umask, isDirectory: true) { mkdirat($0, name.pointer, $1) }
    }

    public func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry {
        try made(r, parent: parent, name: name, mode: Linux.S_IFLNK | 0o777, isDirectory: false) { pfd, _ in symlinkat(target.pointer, pfd, name.pointer) }
    }

    public func link(_ r: Request, node id: NodeID, newParent: NodeID, newName: Name) throws(Errno) -> Entry {
        let n = try node(id)
        let np = try node(newParent)
        return try withDirFD(np) { (pfd: Int32) throws(Errno) -> Entry in
            let rc: Int32
            if n.firstPlace != nil {
                rc = try at(n) { d, name, _ in linkat(d, name, pfd, newName.pointer, 0) }
            } else {
                // An O_TMPFILE or unlinked file: link it by its /proc descriptor.
                rc = try at(n) { d, name, _ in linkat(d, name, pfd, newName.pointer, Linux.AT_SYMLINK_FOLLOW) }
            }
            try check(rc)
            return try lookupChild(np, newName)
        }
    }

    /// Before a name goes away: if the kernel holds its inode and this is the
    /// inode's last name, keep a descriptor so fstat/getattr still work.
    private func willRemove(_ parent: Node, _ pfd: Int32, _ name: Name) {
        var st = Glibc.stat()
        guard fstatat(pfd, name.pointer, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0,
              let n = table.find(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino)) else { return }
        let left = n.removePlace(parent: parent, name: name)
        let isDir = st.st_mode & Linux.S_IFMT == Linux.S_IFDIR
        if isDir || st.st_nlink <= 1 || left == 0 {
            if !isDir && n.orphan.withLock({ $0 }) == nil {
                if let fd = try? Sys.openat(pfd, name.pointer, Linux.O_PATH | O_NOFOLLOW | O_CLOEXEC) {
                    let orphan = OwnedFD(fd)
                    n.orphan.withLock { $0 = orphan }
                }
            }
            if isDir || st.st_nlink <= 1 { table.detach(n) }
        }
    }

    public func unlink(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        let p = try node(parent)
        try withDirFD(p) { (pfd: Int32) throws(Errno) in
            willRemove(p, pfd, name)
            try check(unlinkat(pfd, name.pointer, 0))
        }
    }

    public func rmdir(_ r: Request, parent: NodeID, name: Name) throws(Errno) {
        let p = try node(parent)
        try withDirFD(p) { (pfd: Int32) throws(Errno) in
            try check(unlinkat(pfd, name.pointer, Linux.AT_REMOVEDIR))
        }
    }

    public func rename(_ r: Request, parent: NodeID, name: Name, newParent: NodeID, newName: Name, flags: UInt32) throws(Errno) {
        let p = try node(parent), np = try node(newParent)
        try withDirFD(p) { (pfd: Int32) throws(Errno) in
            try withDirFD(np) { (npfd: Int32) throws(Errno) in
                var sst = Glibc.stat(), dst = Glibc.stat()
                let haveSrc = fstatat(pfd, name.pointer, &sst, Linux.AT_SYMLINK_NOFOLLOW) == 0
                let haveDst = fstatat(npfd, newName.pointer, &dst, Linux.AT_SYMLINK_NOFOLLOW) == 0
                let exchange = flags & Linux.RENAME_EXCHANGE != 0
                let sameInode = haveSrc && haveDst && sst.st_ino == dst.st_ino && sst.st_dev == dst.st_dev
                if haveDst && !exchange && !sameInode {
                    willRemove(np, npfd, newName)
                }
                try Sys.renameat2(pfd, name.pointer, npfd, newName.pointer, flags: flags)
                if sameInode { return }
                let newPlace = Place(parent: np, name: newName.bytesWithNUL)
                let oldPlace = Place(parent: p, name: name.bytesWithNUL)
                if haveSrc, let s = table.find(dev: UInt64(sst.st_dev), ino: UInt64(sst.st_ino)) {
                    s.removePlace(parent: p, name: name)
                    s.addPlace(newPlace)
                }
                if exchange && haveDst, let d = table.find(dev: UInt64(dst.st_dev), ino: UInt64(dst.st_ino)) {
                    d.removePlace(parent: np, name: newName)
                    d.addPlace(oldPlace)
                }
            }
        }
    }
}
