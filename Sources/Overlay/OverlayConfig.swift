import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The union's shape, from mount options (the kernel's names).
public struct OverlayConfig: Sendable {
    /// Lower layers, top-most first.
    public var lowers: [String] = []
    public var upper: String?
    public var work: String?
    /// Overlay xattrs in the user. namespace (rootless), as the kernel's `userxattr`.
    public var userXattr = false
    /// No fsync to layers (the kernel's `volatile`).
    public var volatile = false
    /// How long the kernel may cache names and attributes (layers do not
    /// change under a mount, so long by default).
    public var timeout: Double = 86400
    public static let maxLowers = 500

    public init() {}

    /// Parses `lowerdir=` with the kernel's escapes: `\:` is a colon in a
    /// path, `\\` a backslash.
    public static func splitLowerdir(_ s: String) -> [String] {
        var out: [String] = []
        var cur = ""
        var esc = false
        for ch in s {
            if esc { cur.append(ch); esc = false; continue }
            if ch == "\\" { esc = true; continue }
            if ch == ":" { out.append(cur); cur = ""; continue }
            cur.append(ch)
        }
        out.append(cur)
        return out
    }

    /// The xattr prefix overlay metadata lives under.
    public var xattrPrefix: String { userXattr ? "user.overlay." : "trusted.overlay." }
}
