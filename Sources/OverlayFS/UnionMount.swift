import FUSE
import Overlay
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// A union mount as the kernel's and fuse-overlayfs's command lines describe
/// it: `strata mount` and the lean `strata-overlay` both start here.
public struct UnionMount: Sendable {
    public var config: OverlayConfig
    public var mount: MountConfig
    public var session = SessionOptions()

    /// Reads `-o` lists: overlay options first, then the generic ones;
    /// anything else is refused by name.
    public init(options lists: [String], mountpoint: String) throws(UsageError) {
        config = OverlayConfig()
        mount = MountConfig(mountpoint: mountpoint, fsname: "strata")
        mount.allowOther = geteuid() == 0
        for (k, v) in MountOptionList(lists).items {
            if try config.apply(k, v) { continue }
            if try applyCommonOption(k, v, mount: &mount, session: &session) { continue }
            throw UsageError("unknown option '\(k)' (see 'strata mount --help')")
        }
        try config.validate()
        if config.upper == nil { mount.readOnly = true }
    }

    /// Opens the layers, mounts and serves until unmounted; in the
    /// background unless `foreground` (returning only in the daemon).
    public func serve(foreground: Bool) throws(SysError) {
        let config = config
        let passthrough = session.passthrough
        try Server.start(mount: mount, options: session, foreground: foreground) { () throws(SysError) in
            do {
                return OverlayFS(try Overlay(config), passthrough: passthrough)
            } catch {
                throw SysError(line: "\(error)")
            }
        }
    }
}
