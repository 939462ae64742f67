import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A path inside a layer archive, checked: no `..`, and resolved from the
/// layer's directory descriptor one component at a time without following
/// any symlink, so no entry can reach outside the layer. A leading `/` or
/// `./` names the same path as none (as tar, Docker and containerd read
/// them): `/etc/x` is the layer's `etc/x`, never the host's.
struct LayerPath {
    let original: String
    let components: [String]

    init(_ raw: String) throws(ArchiveError) {
        original = raw
        var parts: [String] = []
        for c in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if c == "." { continue }
            if c == ".." { throw ArchiveError(raw, "'..' component in a layer archive") }
            if c.utf8.count > 255 { throw ArchiveError(raw, "name longer than 255 bytes") }
            parts.append(String(c))
        }
        components = parts
    }

    var isRoot: Bool { components.isEmpty }
    var name: String { components.last ?? "" }
    var parent: ArraySlice<String> { components.dropLast() }
}

/// Opens the directory `components` under `root` (O_PATH), creating missing
/// directories when asked; a symlink or a non-directory on the way is refused.
func openParent(_ root: Int32, _ components: ArraySlice<String>, entry: String, create: Bool) throws(ArchiveError) -> OwnedFD {
    var cur: UniqueFD
    do throws(Errno) { cur = try Sys.dup(root) } catch { throw ArchiveError(entry, "dup: \(error)") }
    let flags = Linux.O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
    func refusal(_ c: String, _ e: Errno) -> ArchiveError {
        if e == .notDirectory || e == .tooManySymbolicLinkLevels {
            return ArchiveError(entry, "path goes through a symlink or a non-directory ('\(c)'); refused", kind: .throughNonDirectory)
        }
        return ArchiveError(entry, "parent \(c): \(e)")
    }
    for c in components {
        var next: UniqueFD
        do throws(Errno) {
            next = try Sys.openat(cur.raw, c, flags)
        } catch {
            guard error == .noSuchFileOrDirectory && create else { throw refusal(c, error) }
            if mkdirat(cur.raw, c, 0o755) != 0 && currentErrno() != .fileExists {
                throw ArchiveError(entry, "creating parent \(c): \(currentErrno())")
            }
            do throws(Errno) { next = try Sys.openat(cur.raw, c, flags) } catch { throw refusal(c, error) }
        }
        cur = next
    }
    return OwnedFD(cur)
}
