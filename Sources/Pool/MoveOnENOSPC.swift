import FUSE
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `moveonenospc`: a write that fails with ENOSPC or EDQUOT moves its file
/// to the branch the chosen policy (mfs by default) picks among those with
/// room for the file and the write, keeping its metadata, unlinks the
/// original and writes again, so the writer never sees the full disk.
extension PoolFS {
    public func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int {
        let f = try files.get(handle)
        do throws(Errno) {
            return try f.write(offset: offset, data: data)
        } catch {
            guard error == .noSpace || error == .diskQuotaExceeded, let policy = options.moveOnENOSPC else { throw error }
            try move(f, path: try self.node(node).current, policy: policy, need: offset + UInt64(data.count))
            return try f.write(offset: offset, data: data)
        }
    }

    func move(_ f: PoolFile, path: String, policy: Policy, need: UInt64) throws(Errno) {
        let c = config
        let from = f.branch
        let size = UInt64(try Sys.fstat(f.fd).st_size)
        // Every branch but this one that may take a new file of this size.
        var states = states(RelPath.parent(path), c)
        for (i, b) in c.branches.enumerated() {
            if b === from { states[i].mode = .nc }
            states[i].minFreeSpace = max(states[i].minFreeSpace, max(size, need) + (1 << 20))
        }
        let to = try c.branches[policy.select(.create, states).first ?? 0]
        try clonePath(RelPath.parent(path), to: to)
        let source = try Sys.openat(from.fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        let st = try Sys.fstat(source.raw)
        let temp = RelPath.child(RelPath.parent(path), ".strata-move-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let copy = try Sys.openat(to.fd, temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0o7777)
        do throws(Errno) {
            var inOff: Int64 = 0, outOff: Int64 = 0
            while inOff < Int64(st.st_size) {
                let n = try Sys.copyFileRange(source.raw, &inOff, copy.raw, &outOff, Int(min(Int64(1 << 30), Int64(st.st_size) - inOff)), flags: 0)
                if n == 0 { break }
            }
            _ = fchown(copy.raw, st.st_uid, st.st_gid)
            _ = fchmod(copy.raw, st.st_mode & 0o7777)
            copyXattrs(path, from: from, to: to, as: temp)
            var times = [st.st_atim, st.st_mtim]
            _ = futimens(copy.raw, &times)
            _ = try check(temp.withCString { t in path.withCString { renameat(to.fd, t, to.fd, $0) } })
        } catch {
            _ = temp.withCString { unlinkat(to.fd, $0, 0) }
            throw error
        }
        let reopened = try Sys.openat(to.fd, path, (f.flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC | O_NOFOLLOW)
        f.moved(to: to, reopened)
        _ = path.withCString { unlinkat(from.fd, $0, 0) }
    }
}
