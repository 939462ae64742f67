import ArgumentParser
import FUSE
import Foundation
import LayerStore
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata layer-store`: Strata's lazy pulling for podman, buildah and
/// CRI-O, through containers/storage's additional layer store.
struct LayerStoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layer-store",
        abstract: "Serve lazily pulled layers to podman, buildah and CRI-O (containers/storage's additional layer store).",
        discussion: """
        storage.conf (podman's, buildah's or CRI-O's):

          [storage.options]
          additionallayerstores = ["/var/lib/strata-layers:ref"]

        then: strata layer-store /var/lib/strata-layers; podman pull IMAGE; podman run IMAGE ...
        For each layer podman looks up (base64(reference)/sha256:DIGEST/) the store reads the \
        image's manifest and config; a layer with a table of contents (eStargz, zstd:chunked) is \
        pulled lazily into Strata's store and served as diff/ (files fetched and checked when first \
        read, as strata pull --lazy), info and blob (the compressed layer, read from the registry); \
        a layer without one is answered 'not here', and podman pulls it itself. The layers stay in \
        Strata's store (strata image ls, check, prune). Returns once mounted, unless -f. \
        --unmount refuses while podman still uses layers of the store (one line, as a busy mount).
        """
    )
    @OptionGroup var store: StoreOptions
    @OptionGroup var registry: RegistryFlags
    @Option(help: "background (complete the layers while served, the default) or on-read (fetch only the files read).")
    var lazyFetch: LazyFetchMode = .background
    @Option(help: "Bytes of the following files fetched with each file read (default 1048576; 0: only the file).")
    var lazyReadahead: Int64?
    @Flag(name: .short, help: "Stay in the foreground.") var f = false
    @Flag(help: "Unmount the store at MOUNTPOINT, unless podman still uses its layers.") var unmount = false
    @Argument(help: "Where to mount the store (the path storage.conf names before ':ref').") var mountpoint: String

    func run() throws {
        if unmount { return try unmountStore() }
        let root = store.root ?? store.strata.globalRoot ?? Store.defaultRoot
        var st = stat()
        if stat(mountpoint, &st) != 0 || st.st_mode & S_IFMT != S_IFDIR {
            throw fail("\(mountpoint): not a directory (\(currentErrno())); create it first")
        }
        if Sys.isMountRoot(mountpoint) { throw fail("\(mountpoint) is already a mount point; unmount it first or choose another") }
        let options = LayerStoreOptions(storeRoot: root, registry: try registry.options(), unionOptions: try lazyOptions(lazyFetch, lazyReadahead),
                                        lazyData: RegistryLazyData(), progress: { printError("strata: layer-store: \($0)") })
        var mount = MountConfig(mountpoint: mountpoint, fsname: "strata-layer-store")
        mount.subtype = "strata-layer-store"
        mount.allowOther = geteuid() == 0
        var session = SessionOptions()
        session.passthrough = false
        do throws(SysError) {
            try Server.start(mount: mount, options: session, foreground: f) { () throws(SysError) in LayerStoreFS(options) }
        } catch {
            throw fail("\(error)")
        }
    }

    /// Asks the daemon how many layers podman uses (its statistics), and
    /// unmounts only when none.
    func unmountStore() throws {
        let r = runStats(mountpoint)
        if let uses = r?.filesystem["uses (containers/storage)"], uses > 0 {
            throw fail("\(mountpoint): podman still uses \(uses) layer\(uses == 1 ? "" : "s") of this store; remove its containers and images of them first")
        }
        if geteuid() != 0 {
            // A user's mount (fusermount3's): only the helper may undo it.
            do throws(SysError) { try Mounter.unmount(mountpoint, method: .fusermount, lazy: false) } catch {
                throw fail("\(mountpoint): busy (a container's root is mounted over its layers), or not this user's mount")
            }
            return
        }
        if umount2(mountpoint, 0) != 0 {
            let e = currentErrno()
            throw fail("\(mountpoint): \(e == .resourceBusy ? "busy (a container's root is mounted over its layers)" : "\(e)")")
        }
    }
}
