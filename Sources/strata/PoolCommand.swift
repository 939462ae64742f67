import ArgumentParser
import FUSE
import Pool
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `strata pool`: several writable branches merged as mergerfs merges them.
struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Pool directories (disks) into one tree, with mergerfs's command line and policies.",
        discussion: """
        strata pool -o OPTIONS BRANCHES MOUNTPOINT
        BRANCHES: /mnt/disk1:/mnt/disk2=RW:/mnt/ro=RO:/mnt/nc=NC (globs expand: /mnt/disk*)

        mergerfs's options: category.create|action|search=POLICY, func.NAME=POLICY, \
        minfreespace=SIZE (default 4G), cache.files=libfuse|off|partial|full|auto-full, \
        dropcacheonclose=BOOL, inodecalc=passthrough|path-hash|devino-hash|hybrid-hash(32), \
        moveonenospc=BOOL|POLICY, fsname=NAME, allow_other, default_permissions (defaults, use_ino and libfuse's \
        tuning options are accepted). Policies: ff epff mfs epmfs lfs eplfs lus eplus rand \
        eprand pfrd eppfrd all epall newest erofs. Defaults: create epmfs, action epall, \
        search ff. Files answer user.mergerfs.basepath, relpath, fullpath and allpaths. \
        moveonenospc=true|POLICY moves a file whose write fills its branch and carries on. The \
        .mergerfs control file's user.mergerfs.* xattrs read and change options and branches while \
        mounted. An option strata pool does not support yet (symlinkify, msp* policies, ...) is \
        refused by name. Installed as \
        strata-pool, an fstab line of type fuse.strata-pool takes mergerfs's line as it is.
        """
    )
    @Option(name: .short, help: "Options, comma-separated (mergerfs's).") var o: [String] = []
    @Flag(name: .short, help: "Stay in the foreground.") var f = false
    @Argument(help: "The branches, ':'-separated, each PATH[=RW|RO|NC].") var branches: String
    @Argument(help: "Where to mount the pool.") var mountpoint: String

    func run() throws {
        var options: PoolOptions
        do throws(UsageError) { options = try PoolOptions.parse(options: o, branches: branches) } catch { throw fail("\(error)", code: 64) }
        var mount = MountConfig(mountpoint: mountpoint, fsname: options.fsname ?? options.branches.map(\.path).joined(separator: ":"))
        mount.subtype = "strata-pool"
        mount.allowOther = options.allowOther
        // The daemon acts on the branches with its own rights: the kernel
        // checks each caller's against the attributes the pool shows (the
        // branch files' own), always, where mergerfs switches to the
        // caller's ids per thread.
        mount.defaultPermissions = true
        mount.readOnly = options.readOnly
        let pool = options
        do throws(SysError) {
            try Server.start(mount: mount, options: SessionOptions(), foreground: f) { () throws(SysError) in
                try PoolFS(pool)
            }
        } catch {
            throw fail("\(error)")
        }
    }
}
