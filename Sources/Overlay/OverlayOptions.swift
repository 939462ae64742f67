import Sys

/// The mount options of the kernel's overlayfs (its params.c) and of
/// fuse-overlayfs: the compatibility contract with the kernel, mount(8) and
/// containers/storage, so it lives with the union rather than with a command.
extension OverlayConfig {
    /// Applies one `key[=value]`; false when the key is not an overlay
    /// option (the caller tries the generic mount options, then refuses it).
    public mutating func apply(_ k: String, _ v: String?) throws(UsageError) -> Bool {
        func need() throws(UsageError) -> String {
            guard let v, !v.isEmpty else { throw UsageError("option '\(k)' needs a value") }
            return v
        }
        switch k {
        case "lowerdir":
            lowers = OverlayConfig.splitLowerdir(try need())
        case "upperdir": upper = try need()
        case "workdir": work = try need()
        case "userxattr": userXattr = true
        case "volatile": volatile = true
        case "fsync":
            guard v == "0" || v == "1" else { throw UsageError("option 'fsync' takes 0 or 1") }
            volatile = v == "0"
        case "timeout", "entry_timeout", "attr_timeout":
            guard let v, let d = Double(v), d >= 0, d < 1e9 else {
                throw UsageError("option '\(k)' needs a number of seconds, got '\(v ?? "")'")
            }
            timeout = d
        case "redirect_dir":
            switch v {
            case "on": redirectDir = true
            case "off": redirectDir = false
            default: throw UsageError("option 'redirect_dir=\(v ?? "")' is not supported (use on or off)")
            }
        case "metacopy":
            switch v {
            case "on": metacopy = true
            case "off": metacopy = false
            default: throw UsageError("option 'metacopy=\(v ?? "")' is not supported (use on or off)")
            }
        case "readdir_ahead":
            switch v {
            case "on": readdirAhead = true
            case "off": readdirAhead = false
            default: throw UsageError("option 'readdir_ahead=\(v ?? "")' is not supported (use on or off)")
            }
        case "lazy_readahead":
            guard let v, let n = Int64(v), n >= 0, n <= 64 << 20 else {
                throw UsageError("option 'lazy_readahead' takes a number of bytes from 0 to 67108864, got '\(v ?? "")'")
            }
            lazyReadahead = n
        case "lazy_fetch":
            switch v {
            case "background": lazyBackground = true
            case "on_read": lazyBackground = false
            default: throw UsageError("option 'lazy_fetch=\(v ?? "")' is not supported (use background or on_read)")
            }
        case "index":
            switch v {
            case "on": index = true
            case "off": index = false
            default: throw UsageError("option 'index=\(v ?? "")' is not supported (use on or off)")
            }
        case "nfs_export", "verity":
            // Off is the kernel's default and ours; the features themselves are not built.
            guard v == "off" else {
                throw UsageError("option '\(k)=\(v ?? "")' is not supported yet (use \(k)=off)")
            }
        case "xino":
            // xino: with layers on several filesystems, inode numbers always
            // carry the filesystem's index in their top bits (as xino=on and
            // xino=auto do; FUSE has one st_dev, so off cannot be honoured
            // differently and behaves the same).
            guard let v, ["off", "auto", "on"].contains(v) else {
                throw UsageError("option 'xino=\(v ?? "")' is not supported (use off, auto or on)")
            }
        case "squash_to_root":
            squashUID = 0
            squashGID = 0
        case "squash_to_uid", "squash_to_gid":
            guard let n = UInt32(try need()) else { throw UsageError("option '\(k)' needs a numeric id") }
            if k == "squash_to_uid" { squashUID = n } else { squashGID = n }
        case "static_nlink": staticNlink = true
        case "uidmapping", "gidmapping":
            guard let m = OverlayConfig.parseIDMap(try need()) else {
                throw UsageError("option '\(k)' takes ON_DISK:SHOWN:COUNT[:...], got '\(v ?? "")'")
            }
            if k == "uidmapping" { uidMap = m } else { gidMap = m }
        case "noxattrs":
            guard v == "1" || v == "0" || v == nil else { throw UsageError("option 'noxattrs' takes 0 or 1") }
            noXattrs = v != "0"
        case "xattr_permissions":
            // 0, fuse-overlayfs's default, keeps modes and owners on the files
            // themselves, as we do; 1 and 2 (kept in an override xattr) are not done yet.
            guard v == "0" else {
                throw UsageError("option 'xattr_permissions=\(v ?? "")' is not supported yet (only 0: modes and owners on the files)")
            }
        default:
            return false
        }
        return true
    }

    /// What must hold once every option is read.
    public func validate() throws(UsageError) {
        if lowers.isEmpty {
            throw UsageError("lowerdir is required: -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR]")
        }
        // The kernel's rules (params.c): metacopy follows redirects, which
        // it turns on unless told otherwise, and neither is trusted from
        // user.* xattrs an unprivileged user could forge.
        if metacopy && userXattr {
            throw UsageError("conflicting options: userxattr,metacopy=on (metadata-only copy-up is refused with user xattrs, as the kernel refuses it)")
        }
        if index && userXattr {
            throw UsageError("conflicting options: userxattr,index=on (the index is refused with user xattrs, as the kernel refuses it)")
        }
        if metacopy && redirectDirOption == false {
            throw UsageError("conflicting options: metacopy=on,redirect_dir=off (metacopy needs redirect_dir=on, or leave redirect_dir unset)")
        }
        if userXattr && redirectDirOption == true {
            throw UsageError("conflicting options: userxattr,redirect_dir=on (redirects are refused with user xattrs, as the kernel refuses them)")
        }
    }
}
