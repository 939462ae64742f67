import CStrata
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
    public static func mount(_ c: MountConfig) throws(SysError) -> (fd: Int32, method: MountMethod) {
        var st = stat()
        if stat(c.mountpoint, &st) != 0 { throw SysError.last("mount point", c.mountpoint) }
        if st.st_mode & Linux.S_IFMT != Linux.S_IFDIR { throw SysError(.notDirectory, "mount point", c.mountpoint) }
        if isMountPoint(c.mountpoint) { throw SysError(.resourceBusy, "mount point is already mounted:", c.mountpoint) }
        if access("/dev/fuse", F_OK) != 0 {
            throw SysError.last("no FUSE device (load the fuse module or pass --device /dev/fuse into the container)", "/dev/fuse")
        }
        if geteuid() == 0 {
            return (try kernelMount(c, rootMode: st.st_mode & Linux.S_IFMT), .kernel)
        }
        return (try fusermount(c), .fusermount)
    }

    static func kernelMount(_ c: MountConfig, rootMode: UInt32) throws(SysError) -> Int32 {
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        if fd < 0 { throw SysError.last("open", "/dev/fuse") }
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
        if Glibc.mount(c.fsname, c.mountpoint, type, flags, data) != 0 {
            let e = SysError.last("mount", c.mountpoint)
            close(fd)
            throw e
        }
        return fd
    }

    /// Mounts through the setuid helper: it opens /dev/fuse, mounts, and
    /// hands the descriptor back over a socket named by _FUSE_COMMFD.
    static func fusermount(_ c: MountConfig) throws(SysError) -> Int32 {
        guard let helper = Spawn.which("fusermount3") else {
            throw SysError(.noSuchFileOrDirectory, "mounting without privileges needs fusermount3 (apt-get install fuse3):", "fusermount3")
        }
        var sv: [Int32] = [-1, -1]
        if socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) != 0 {
            throw SysError.last("socketpair", "")
        }
        defer { close(sv[0]) }
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
                                  env: ["_FUSE_COMMFD": "\(sv[1])"], inherit: [sv[1]])
        } catch {
            close(sv[1])
            throw error
        }
        close(sv[1])
        var fd: Int32 = -1
        let n = strata_recv_fd(sv[0], &fd)
        let status = Spawn.wait(pid)
        if n <= 0 || fd < 0 {
            throw SysError(.notPermitted, "fusermount3 failed (exit \(status)) to mount", c.mountpoint)
        }
        return fd
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
        strata_is_mount_root(path) != 0
    }
}
