#if canImport(Glibc)
import Glibc
#endif

/// Removes `name` under `dirFD`, recursively, never following symlinks.
/// With `device`, directories of another filesystem (something mounted
/// inside) are left alone, as `rm -rf --one-file-system` does.
public func removeTree(_ dirFD: Int32, _ name: String, device: UInt64? = nil) {
    if unlinkat(dirFD, name, 0) == 0 { return }
    let fd = openat(dirFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    if fd >= 0 {
        var st = stat()
        if let device, fstat(fd, &st) == 0, UInt64(st.st_dev) != device {
            close(fd)
            return
        }
        if let d = fdopendir(fd) {
            var names: [String] = []
            while let e = readdir(d) {
                let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
                if n != "." && n != ".." { names.append(n) }
            }
            for n in names { removeTree(dirfd(d), n, device: device) }
            closedir(d)
        } else {
            close(fd)
        }
    }
    unlinkat(dirFD, name, Linux.AT_REMOVEDIR)
}

/// Removes `path` as `rm -rf --one-file-system` would, without spawning it:
/// no symlink followed, no mounted filesystem inside entered. Returns
/// whether the path is gone (a missing path counts as gone).
@discardableResult
public func removeTree(path: String) -> Bool {
    let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    let slash = trimmed.lastIndex(of: "/")
    let parent = slash.map { $0 == trimmed.startIndex ? "/" : String(trimmed[..<$0]) } ?? "."
    let base = slash.map { String(trimmed[trimmed.index(after: $0)...]) } ?? trimmed
    guard !base.isEmpty, base != ".", base != ".." else { return false }
    let pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if pfd < 0 { return errno == ENOENT }
    defer { close(pfd) }
    var st = stat()
    if fstatat(pfd, base, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 { return errno == ENOENT }
    removeTree(pfd, base, device: UInt64(st.st_dev))
    return fstatat(pfd, base, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0
}
