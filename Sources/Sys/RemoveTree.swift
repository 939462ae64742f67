import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Removes `name` under `dirFD`, recursively, never following symlinks.
/// With `device`, directories of another filesystem (something mounted
/// inside) are left alone, as `rm -rf --one-file-system` does.
/// A btrfs subvolume (a layer or container of the Btrfs driver, read-only
/// or not) is destroyed whole by the kernel instead of emptied file by file.
public func removeTree(_ dirFD: Int32, _ name: String, device: UInt64? = nil) {
    if unlinkat(dirFD, name, 0) == 0 { return }
    if let dir = try? Sys.openat(dirFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) {
        let st = try? Sys.fstat(dir.raw)
        // A subvolume met in place, not through a mount of it (a bind mount
        // of a container's subvolume is left alone like any mount).
        let subvolume = st?.st_ino == Btrfs.subvolumeRootInode && (try? Btrfs.isBtrfs(dir.raw)) == true
            && !Sys.isMountRoot("/proc/self/fd/\(dir.raw)")
        // Another filesystem mounted here, or a subvolume (it has a device
        // number of its own): only a subvolume is ours to remove.
        if let device, let st, UInt64(st.st_dev) != device, !subvolume { return }
        if subvolume {
            if (try? Btrfs.destroySubvolume(in: dirFD, name)) != nil { return }
            // The ioctl wants CAP_SYS_ADMIN (or a filesystem mounted with
            // user_subvol_rm_allowed). A user's own subvolume goes as
            // `rm -rf` takes it (Linux 4.18+ deletes an empty subvolume on
            // rmdir): made writable first, then emptied with its own
            // device number, which its files carry.
            _ = try? Btrfs.setReadOnly(dir.raw, false)
            if let names = try? Sys.directoryNames(dir.raw) {
                for n in names { removeTree(dir.raw, n, device: st.map { UInt64($0.st_dev) }) }
            }
        } else if let names = try? Sys.directoryNames(dir.raw) {
            for n in names { removeTree(dir.raw, n, device: device) }
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
    let parentFD: UniqueFD
    do throws(Errno) { parentFD = try Sys.open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } catch { return error == .noSuchFileOrDirectory }
    let pfd = parentFD.raw
    var st = stat()
    if fstatat(pfd, base, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0 { return errno == ENOENT }
    removeTree(pfd, base, device: UInt64(st.st_dev))
    return fstatat(pfd, base, &st, Linux.AT_SYMLINK_NOFOLLOW) != 0
}
