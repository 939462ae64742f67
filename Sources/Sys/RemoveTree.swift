#if canImport(Glibc)
import Glibc
#endif

/// Removes `name` under `dirFD`, recursively, never following symlinks.
public func removeTree(_ dirFD: Int32, _ name: String) {
    if unlinkat(dirFD, name, 0) == 0 { return }
    let fd = openat(dirFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    if fd >= 0, let d = fdopendir(fd) {
        var names: [String] = []
        while let e = readdir(d) {
            let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if n != "." && n != ".." { names.append(n) }
        }
        for n in names { removeTree(dirfd(d), n) }
        closedir(d)
    }
    unlinkat(dirFD, name, Linux.AT_REMOVEDIR)
}
