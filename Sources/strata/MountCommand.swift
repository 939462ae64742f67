import ArgumentParser
import FUSE
import Overlay
import OverlayFS
import Sys
#if canImport(Glibc)
import Glibc
#endif

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a union of directories, like the kernel's overlayfs, through FUSE.",
        discussion: """
        strata mount -o lowerdir=LOWER1:LOWER2,upperdir=UPPER,workdir=WORK MOUNTPOINT
        strata mount CONTAINER [--driver overlay|fuse]   (prints the merged path)

        lowerdir lists read-only layers top-most first (\\: escapes a colon). Without \
        upperdir and workdir the union is read-only. Writes copy files up into \
        upperdir; deletes leave whiteouts there; the on-disk format is the kernel's, \
        so kernel overlayfs can mount the same layers.

        Options: lowerdir, upperdir, workdir, userxattr, volatile, fsync=0, \
        redirect_dir=on|off, index=off, xino=on|off|auto, metacopy=off, timeout=SECONDS, \
        passthrough=on|off, threads=N, noacl, and the generic rw, ro, dev, nodev, \
        suid, nosuid, exec, noexec, atime, noatime, allow_other, default_permissions. \
        squash_to_root, squash_to_uid=N, squash_to_gid=N (show every file as owned \
        by that id) and static_nlink (directories report one link) as in \
        fuse-overlayfs, and its uidmapping=ON_DISK:SHOWN:COUNT, gidmapping=... and \
        noxattrs=1, xattr_permissions=0. Not supported yet, refused by name: index=on, \
        metacopy=on, xattr_permissions=1|2.

        Also installed as 'strata-overlay' for containers/storage's mount_program \
        (storage.conf: mount_program = "/usr/local/bin/strata-overlay").
        """
    )

    @Option(name: .short, help: "Mount options, comma-separated (see above).")
    var o: [String] = []

    @Flag(name: .short, help: "Stay in the foreground.")
    var f = false

    @Argument(help: "Where to mount the union (with -o), or a container to mount.")
    var mountpoint: String

    @Option(help: "For a container: overlay (kernel) or fuse (Strata); default overlay as root.")
    var driver: String?

    @Option(help: "For a container: the store's root directory.")
    var root: String?

    func run() throws {
        // Without -o the argument names a container of the store.
        if o.isEmpty {
            try mountContainer(mountpoint, driver: driver, root: root)
            return
        }
        var mount = MountConfig(mountpoint: mountpoint, fsname: "strata")
        var session = SessionOptions()
        mount.allowOther = geteuid() == 0
        var config = OverlayConfig()
        do throws(UsageError) {
            config = try parseOverlayOptions(o, mount: &mount, session: &session)
        } catch {
            throw fail("\(error)")
        }
        if config.upper == nil { mount.readOnly = true }
        let passthrough = session.passthrough
        try serveFileSystem(mount: mount, session: session, foreground: f) { () throws(SysError) in
            do {
                return OverlayFS(try Overlay(config), passthrough: passthrough)
            } catch {
                throw SysError(.invalidArgument, "\(error)", "")
            }
        }
    }
}

/// The kernel's and fuse-overlayfs's option names. Empty elements (`,,`,
/// a trailing comma) occur in what containers/storage passes and are skipped.
func parseOverlayOptions(_ lists: [String], mount: inout MountConfig, session: inout SessionOptions) throws(UsageError) -> OverlayConfig {
    var c = OverlayConfig()
    var sawLower = false
    for (k, v) in MountOptionList(lists).items {
        if try applyCommonOption(k, v, mount: &mount, session: &session) { continue }
        func need() throws(UsageError) -> String {
            guard let v, !v.isEmpty else { throw UsageError("option '\(k)' needs a value") }
            return v
        }
        switch k {
        case "lowerdir":
            c.lowers = OverlayConfig.splitLowerdir(try need())
            sawLower = true
        case "upperdir": c.upper = try need()
        case "workdir": c.work = try need()
        case "userxattr": c.userXattr = true
        case "volatile": c.volatile = true
        case "fsync":
            guard v == "0" || v == "1" else { throw UsageError("option 'fsync' takes 0 or 1") }
            c.volatile = v == "0"
        case "timeout", "entry_timeout", "attr_timeout":
            c.timeout = Double(try parseTimeout(k, v).seconds)
        case "redirect_dir":
            switch v {
            case "on": c.redirectDir = true
            case "off": c.redirectDir = false
            default: throw UsageError("option 'redirect_dir=\(v ?? "")' is not supported (use on or off)")
            }
        case "index", "metacopy", "xino":
            // xino: with layers on several filesystems, inode numbers always
            // carry the filesystem's index in their top bits (as xino=on and
            // xino=auto do; FUSE has one st_dev, so off cannot be honoured
            // differently and behaves the same).
            let allowed = k == "xino" ? ["off", "auto", "on"] : ["off"]
            guard let v, allowed.contains(v) else {
                throw UsageError("option '\(k)=\(v ?? "")' is not supported yet (use \(k)=off)")
            }
        case "squash_to_root":
            c.squashUID = 0
            c.squashGID = 0
        case "squash_to_uid", "squash_to_gid":
            guard let n = UInt32(try need()) else { throw UsageError("option '\(k)' needs a numeric id") }
            if k == "squash_to_uid" { c.squashUID = n } else { c.squashGID = n }
        case "static_nlink": c.staticNlink = true
        case "uidmapping", "gidmapping":
            guard let m = OverlayConfig.parseIDMap(try need()) else {
                throw UsageError("option '\(k)' takes ON_DISK:SHOWN:COUNT[:...], got '\(v ?? "")'")
            }
            if k == "uidmapping" { c.uidMap = m } else { c.gidMap = m }
        case "noxattrs":
            guard v == "1" || v == "0" || v == nil else { throw UsageError("option 'noxattrs' takes 0 or 1") }
            c.noXattrs = v != "0"
        case "xattr_permissions":
            // 0, fuse-overlayfs's default, keeps modes and owners on the files
            // themselves, as we do; 1 and 2 (kept in an override xattr) are not done yet.
            guard v == "0" else {
                throw UsageError("option 'xattr_permissions=\(v ?? "")' is not supported yet (only 0: modes and owners on the files)")
            }
        default:
            throw UsageError("unknown option '\(k)' (see 'strata mount --help')")
        }
    }
    if !sawLower { throw UsageError("lowerdir is required: -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR]") }
    return c
}
