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
        redirect_dir=on|off, metacopy=on|off (metadata-only copy-up; turns redirect_dir on), \
        index=on|off (lower hard links stay linked across copy-up), xino=on|off|auto, timeout=SECONDS, \
        passthrough=on|off, threads=N and max_threads=N (/dev/fuse readers kept and at most; default 4 and 16), lazy_fetch=background|on_read and lazy_readahead=BYTES (layers pulled with --lazy), uring=auto|on|off (FUSE over io_uring), uring_depth=N, \
        uring_sched=idle|normal, readdirplus=always|auto, readdir_ahead=on|off (list the directories of a \
        listing ahead of a walker, on an idle CPU), noacl, and the generic rw, ro, dev, nodev, \
        suid, nosuid, exec, noexec, atime, noatime, allow_other, default_permissions. \
        squash_to_root, squash_to_uid=N, squash_to_gid=N (show every file as owned \
        by that id) and static_nlink (directories report one link) as in \
        fuse-overlayfs, and its uidmapping=ON_DISK:SHOWN:COUNT, gidmapping=... and \
        noxattrs=1, xattr_permissions=0. Not supported yet, refused by name: nfs_export, \
        verity, xattr_permissions=1|2.

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
    @ParentCommand var strata: Strata

    @Option(help: "For a container of an image pulled with --lazy: background (complete its layers while mounted, the default) or on-read (fetch only the files read).")
    var lazyFetch: LazyFetchMode = .background

    @Option(help: "For a container of an image pulled with --lazy: bytes of the following files fetched with each file read (default 1048576; 0: only the file).")
    var lazyReadahead: Int64?

    func run() throws {
        // Without -o the argument names a container of the store.
        if o.isEmpty {
            try mountContainer(mountpoint, driver: driver, root: root, global: strata, fuseOptions: try lazyOptions(lazyFetch, lazyReadahead))
            return
        }
        var union: UnionMount
        do throws(UsageError) {
            union = try UnionMount(options: o, mountpoint: mountpoint)
        } catch {
            throw fail("\(error)")
        }
        // Layers pulled lazily fetch their files from the registry.
        union.config.lazyData = RegistryLazyData()
        // Said once the mount serves, by the process that returns.
        union.mount.readyNote = UringSupport.offHint(union.session.uring).map { "strata: \($0)" }
        do throws(SysError) {
            try union.serve(foreground: f)
        } catch {
            throw fail("\(error)")
        }
    }
}
