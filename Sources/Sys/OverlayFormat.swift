/// The kernel overlayfs's on-disk format, in one place for the union
/// (Overlay), the layer archives (Archive) and the store (Store): the names
/// that mark deletions and opacity in OCI layers and upper directories, and
/// the extended attributes the kernel reads.
public enum OverlayFormat {
    /// `.wh.NAME` hides NAME in the layers below (OCI layers; read in uppers too).
    public static let whiteoutPrefix = ".wh."
    public static let whiteoutPrefixBytes: [UInt8] = Array(whiteoutPrefix.utf8)
    /// `.wh..wh..opq` in a directory makes it opaque (OCI layers).
    public static let opaqueName = ".wh..wh..opq"
    public static let opaqueNameBytes: [UInt8] = Array(opaqueName.utf8)

    /// Whether a name starts with `.wh.`: compared in place, for the lookup
    /// and create paths.
    @inline(__always)
    public static func isWhiteoutName(_ n: FileName) -> Bool {
        n.count >= 4 && n.pointer[0] == 0x2E && n.pointer[1] == 0x77 && n.pointer[2] == 0x68 && n.pointer[3] == 0x2E
    }

    /// Strata's own mark (after the overlay prefix, so the union hides it
    /// and copy-up leaves it) on a partly pulled layer's root and on each of
    /// its files whose data is still in the registry.
    public static let lazyName = "strata.lazy"

    public static let trustedPrefix = "trusted.overlay."
    public static let userPrefix = "user.overlay."

    /// Where the overlay's xattrs live: `user.overlay.` with `userxattr`
    /// (rootless), else `trusted.overlay.`.
    public static func xattrPrefix(user: Bool) -> String { user ? userPrefix : trustedPrefix }

    /// `opaque` -> `trusted.overlay.opaque` (or `user.overlay.opaque`).
    public static func xattr(_ name: String, user: Bool) -> String { xattrPrefix(user: user) + name }

    /// An overlay xattr of either namespace (metadata, never layer content).
    public static func isOverlayXattr(_ name: String) -> Bool {
        name.hasPrefix(trustedPrefix) || name.hasPrefix(userPrefix)
    }

    /// The whiteout entry's name for NAME.
    public static func whiteoutName(for name: String) -> String { whiteoutPrefix + name }

    /// A `.wh.` entry: `.target(NAME)` for a whiteout of NAME, `.opaque` for
    /// the opaque mark; nil for an ordinary name.
    public static func whiteout(_ name: String) -> WhiteoutEntry? {
        guard name.hasPrefix(whiteoutPrefix) else { return nil }
        return name == opaqueName ? .opaque : .target(String(name.dropFirst(whiteoutPrefix.count)))
    }

    public enum WhiteoutEntry: Equatable, Sendable {
        case target(String)
        case opaque
    }
}
