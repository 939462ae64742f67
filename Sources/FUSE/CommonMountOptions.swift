import Sys

/// Options every Strata mount understands: the generic ones mount(8) passes
/// and our FUSE tuning. Returns false for a key it does not know.
public func applyCommonOption(_ key: String, _ value: String?, mount: inout MountConfig, session: inout SessionOptions) throws(UsageError) -> Bool {
    func flag() throws(UsageError) {
        if value != nil { throw UsageError("option '\(key)' takes no value") }
    }
    switch key {
    case "rw": try flag(); mount.readOnly = false
    case "ro": try flag(); mount.readOnly = true
    case "dev": try flag(); mount.noDev = false
    case "nodev": try flag(); mount.noDev = true
    case "suid": try flag(); mount.noSUID = false
    case "nosuid": try flag(); mount.noSUID = true
    case "exec": try flag(); mount.noExec = false
    case "noexec": try flag(); mount.noExec = true
    case "atime", "relatime", "strictatime": try flag(); mount.noATime = false
    case "noatime": try flag(); mount.noATime = true
    case "allow_other": try flag(); mount.allowOther = true
    case "default_permissions": try flag(); mount.defaultPermissions = true
    case "acl": try flag(); session.posixACL = true
    case "noacl": try flag(); session.posixACL = false
    case "debug": try flag(); session.debug = true
    case "fsname":
        guard let v = value, !v.isEmpty else { throw UsageError("option 'fsname' needs a value") }
        mount.fsname = v
    case "subtype":
        guard let v = value, !v.isEmpty else { throw UsageError("option 'subtype' needs a value") }
        mount.subtype = v
    case "threads":
        guard let v = value, let n = Int(v), (1...64).contains(n) else {
            throw UsageError("option 'threads' needs a number from 1 to 64, got '\(value ?? "")'")
        }
        session.threads = n
    case "max_threads":
        guard let v = value, let n = Int(v), (1...256).contains(n) else {
            throw UsageError("option 'max_threads' needs a number from 1 to 256, got '\(value ?? "")'")
        }
        session.maxThreads = n
    case "uring":
        guard let v = value, let mode = SessionOptions.UringMode(rawValue: v) else {
            throw UsageError("option 'uring' takes auto, on or off, got '\(value ?? "")'")
        }
        session.uring = mode
    case "readdirplus":
        switch value {
        case "always": session.readdirplusAlways = true
        case "auto": session.readdirplusAlways = false
        default: throw UsageError("option 'readdirplus' takes always or auto, got '\(value ?? "")'")
        }
    case "uring_sched":
        switch value {
        case "idle": session.uringIdleThreads = true
        case "normal": session.uringIdleThreads = false
        default: throw UsageError("option 'uring_sched' takes idle or normal, got '\(value ?? "")'")
        }
    case "uring_depth":
        guard let v = value, let n = Int(v), (1...256).contains(n) else {
            throw UsageError("option 'uring_depth' needs a number from 1 to 256, got '\(value ?? "")'")
        }
        session.uringDepth = n
    case "passthrough":
        switch value {
        case "on", nil: session.passthrough = true
        case "off": session.passthrough = false
        default: throw UsageError("option 'passthrough' takes on or off, got '\(value ?? "")'")
        }
    default:
        return false
    }
    return true
}

public func parseTimeout(_ key: String, _ value: String?) throws(UsageError) -> CacheTimeout {
    guard let v = value, let d = Double(v), d >= 0, d < 1e9 else {
        throw UsageError("option '\(key)' needs a number of seconds, got '\(value ?? "")'")
    }
    return CacheTimeout(d)
}
