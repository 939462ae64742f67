import CFuseProto
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Where and how to mount: the part of the mount options the kernel (or
/// fusermount3) sees, as opposed to what the filesystem itself interprets.
public struct MountConfig: Sendable {
    public var mountpoint: String
    /// What /proc/mounts shows as the source.
    public var fsname: String
    /// Shown as the type: `fuse.<subtype>`.
    public var subtype = "strata"
    /// A line for the user once the mount serves (from the process that
    /// returns to the shell), such as the io_uring hint.
    public var readyNote: String?
    public var allowOther = false
    public var defaultPermissions = true
    public var readOnly = false
    public var noSUID = false
    public var noDev = false
    public var noExec = false
    public var noATime = false
    public var maxRead: UInt32 = 1 << 20

    public init(mountpoint: String, fsname: String) {
        self.mountpoint = mountpoint
        self.fsname = fsname
    }
}

/// How a mount was made, which decides how to undo it.
public enum MountMethod: Sendable {
    case kernel       // mount(2), we are privileged
    case fusermount   // the setuid helper fusermount3 mounted for us
}

public enum Mounter {
    /// Checks the mount point and /dev/fuse, mounts, and returns the
    /// connected /dev/fuse descriptor.
    public static func mount(_ c: MountConfig) throws(SysError) -> MountedDevice {
        var st = stat()
        if stat(c.mountpoint, &st) != 0 { throw SysError.last("mount point", c.mountpoint) }
        if st.st_mode & Linux.S_IFMT != Linux.S_IFDIR { throw SysError(.notDirectory, "mount point", c.mountpoint) }
        if isMountPoint(c.mountpoint) { throw SysError(.resourceBusy, "mount point is already mounted:", c.mountpoint) }
        if access("/dev/fuse", F_OK) != 0 {
            throw SysError.last("no FUSE device (load the fuse module or pass --device /dev/fuse into the container)", "/dev/fuse")
        }
        if geteuid() == 0 {
            return MountedDevice(device: try kernelMount(c, rootMode: st.st_mode & Linux.S_IFMT), method: .kernel)
        }
        return MountedDevice(device: try fusermount(c), method: .fusermount)
    }

    static func kernelMount(_ c: MountConfig, rootMode: UInt32) throws(SysError) -> UniqueFD {
        let device: UniqueFD
        do throws(Errno) { device = try Sys.open("/dev/fuse", O_RDWR | O_CLOEXEC) } catch { throw SysError(error, "open", "/dev/fuse") }
        let fd = device.raw
        var data = "fd=\(fd),rootmode=\(String(rootMode, radix: 8)),user_id=\(getuid()),group_id=\(getgid())"
        if c.allowOther { data += ",allow_other" }
        if c.defaultPermissions { data += ",default_permissions" }
        data += ",max_read=\(c.maxRead)"
        var flags: UInt = 0
        if c.readOnly { flags |= UInt(MS_RDONLY) }
        if c.noSUID { flags |= UInt(MS_NOSUID) }
        if c.noDev { flags |= UInt(MS_NODEV) }
        if c.noExec { flags |= UInt(MS_NOEXEC) }
        if c.noATime { flags |= UInt(MS_NOATIME) }
        let type = "fuse.\(c.subtype)"
        if Glibc.mount(c.fsname, c.mountpoint, type, flags, data) != 0 { throw SysError.last("mount", c.mountpoint) }
        return device
    }

    /// Mounts through the setuid helper: it opens /dev/fuse, mounts, and
    /// hands the descriptor back over a socket named by _FUSE_COMMFD.
    static func fusermount(_ c: MountConfig) throws(SysError) -> UniqueFD {
        guard let helper = Spawn.which("fusermount3") else {
            throw SysError(.noSuchFileOrDirectory, "mounting without privileges needs fusermount3 (apt-get install fuse3):", "fusermount3")
        }
        var sv: DescriptorPair
        do throws(Errno) { sv = try Sys.socketPair() } catch { throw SysError(error, "socketpair", "") }
        let ours = sv.read.raw, theirs = sv.write.raw
        var opts = "rw,fsname=\(c.fsname),subtype=\(c.subtype)"
        if c.readOnly { opts = "ro" + opts.dropFirst(2) }
        if c.allowOther { opts += ",allow_other" }
        if c.defaultPermissions { opts += ",default_permissions" }
        if c.noExec { opts += ",noexec" }
        if c.noATime { opts += ",noatime" }
        opts += ",max_read=\(c.maxRead)"
        let pid: pid_t
        do {
            pid = try Spawn.start(helper, ["fusermount3", "-o", opts, "--", c.mountpoint],
                                  env: ["_FUSE_COMMFD": "\(theirs)"], inherit: [theirs])
        }
        // Ours to read from only once the helper holds its end.
        _ = sv.write.release()
        let received: UniqueFD?
        do throws(Errno) { received = try Sys.receiveDescriptor(ours) } catch { received = nil }
        let status = Spawn.wait(pid)
        guard let device = received else {
            throw SysError(.notPermitted, "fusermount3 failed (exit \(status)) to mount", c.mountpoint)
        }
        return device
    }

    /// Unmounts; `lazy` detaches even while the mount is busy.
    public static func unmount(_ mountpoint: String, method: MountMethod, lazy: Bool = true) throws(SysError) {
        switch method {
        case .kernel:
            if umount2(mountpoint, lazy ? Int32(MNT_DETACH) : 0) != 0 { throw SysError.last("umount", mountpoint) }
        case .fusermount:
            guard let helper = Spawn.which("fusermount3") else { throw SysError(.noSuchFileOrDirectory, "unmount needs", "fusermount3") }
            let status = try Spawn.run(helper, lazy ? ["fusermount3", "-u", "-z", "--", mountpoint] : ["fusermount3", "-u", "--", mountpoint])
            if status != 0 { throw SysError(.resourceBusy, "fusermount3 -u", mountpoint) }
        }
    }

    public static func isMountPointPath(_ path: String) -> Bool { isMountPoint(path) }

    /// Whether `path` is the root of a mount (statx's STATX_ATTR_MOUNT_ROOT).
    public static func isMountPoint(_ path: String) -> Bool {
        Sys.isMountRoot(path)
    }
}

/// A mounted FUSE file system's device descriptor (its only owner: the
/// connection ends when it closes) and how it was mounted.
public struct MountedDevice: ~Copyable {
    public var device: UniqueFD
    public let method: MountMethod
}
