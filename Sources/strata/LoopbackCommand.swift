import ArgumentParser
import FUSE
import Logging
import Loopback
import Sys
#if canImport(Glibc)
import Glibc
#endif

struct LoopbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loopback",
        abstract: "Mirror a directory at a mount point through Strata's FUSE layer.",
        discussion: """
        Every operation on MOUNTPOINT is carried out on SOURCE. Returns once the \
        mount is ready and keeps serving in the background; unmount with \
        'umount MOUNTPOINT' (or 'fusermount3 -u MOUNTPOINT' without privileges).

        Options (-o, comma-separated): passthrough=on|off (kernel passthrough of \
        reads and writes, default on when root), threads=N (readers of /dev/fuse, default 4), max_threads=N (more are started while all are busy, up to N, default 16), \
        timeout=SECONDS (how long the kernel caches names and attributes, default \
        86400: the source must not change behind the mount), kernel_cache / \
        no_kernel_cache, allow_other, default_permissions, ro, rw, dev, nodev, \
        suid, nosuid, exec, noexec, atime, noatime, acl, noacl, fsname=NAME, debug.
        """
    )

    @Argument(help: "The directory to mirror.")
    var source: String

    @Argument(help: "Where to mount it (an existing empty directory).")
    var mountpoint: String

    @Option(name: .short, help: "Mount options, comma-separated (see above).")
    var o: [String] = []

    @Flag(name: .short, help: "Stay in the foreground.")
    var f = false

    func run() throws {
        var mount = MountConfig(mountpoint: mountpoint, fsname: source)
        var session = SessionOptions()
        var fsOptions = LoopbackOptions()
        mount.defaultPermissions = true
        mount.allowOther = geteuid() == 0
        do {
            for (k, v) in MountOptionList(o).items {
                if try applyCommonOption(k, v, mount: &mount, session: &session) { continue }
                switch k {
                case "timeout", "entry_timeout", "attr_timeout":
                    fsOptions.timeout = try parseTimeout(k, v)
                    fsOptions.negativeTimeout = fsOptions.timeout
                case "kernel_cache": fsOptions.keepCache = true
                case "no_kernel_cache": fsOptions.keepCache = false
                default: throw UsageError("unknown option '\(k)' (see 'strata loopback --help')")
                }
            }
        } catch {
            throw fail("\(error)")
        }
        fsOptions.passthrough = session.passthrough
        try serve(mount: mount, session: session) { () throws(SysError) in
            let src = try Sys.realPath(source)
            let st = try Sys.fileStatus(src)
            if st.st_mode & Linux.S_IFMT != Linux.S_IFDIR { throw SysError(.notDirectory, "source", source) }
            return try LoopbackFS(source: src, options: fsOptions)
        }
    }

    func serve<FS: FileSystem>(mount: MountConfig, session: SessionOptions, make: () throws(SysError) -> FS) throws {
        do throws(SysError) {
            try Server.start(mount: mount, options: session, foreground: f, make: make)
        } catch {
            throw fail("\(error)")
        }
    }
}
