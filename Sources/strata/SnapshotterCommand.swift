import ArgumentParser
import Foundation
import Registry
import SnapshotService
import Store
import Sys

/// `strata snapshotter`: the store's snapshots served to containerd.
struct SnapshotterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshotter",
        abstract: "Serve containerd's snapshot API (a proxy snapshotter plugin) on a unix socket.",
        discussion: """
        containerd's config (version 2) names the socket:

          [proxy_plugins]
            [proxy_plugins.strata]
              type = "snapshot"
              address = "/run/strata/snapshotter.sock"

        then: ctr image pull --snapshotter strata IMAGE; ctr run --snapshotter strata IMAGE ID CMD.
        Snapshots live in the store's snapshots/ directory and survive restarts of either side.
        --driver overlay (default as root) answers kernel overlayfs mounts, as containerd's own
        overlayfs snapshotter; --driver fuse answers mounts that containerd performs through
        Strata's union (fuse3.strata-overlay, run by mount.fuse3). Layers that containerd's CRI
        plugin labels (disable_snapshot_annotations = false) are pulled lazily when the image
        has tables of contents (eStargz, zstd:chunked): their stacks mount as fuse3.strata, the
        strata binary fetching files as they are read (install it in /usr/local/bin). The
        registry options are strata pull's. Ends on SIGINT or SIGTERM.
        """
    )
    @OptionGroup var store: StoreOptions
    @Option(help: "The unix socket to serve on.") var address = "/run/strata/snapshotter.sock"
    @Option(help: "Mounts to answer: overlay (the kernel's overlayfs, default as root) or fuse (Strata's union); a btrfs store answers binds of its subvolumes.")
    var driver: String?
    @OptionGroup var registry: RegistryFlags
    @Flag(help: "Pull every layer the normal way, even when the CRI plugin's labels would let it be pulled lazily.")
    var noLazy = false
    @Option(help: "For lazily pulled layers: background (complete them while mounted, the default) or on-read (fetch only the files read).")
    var lazyFetch: LazyFetchMode = .background
    @Option(help: "For lazily pulled layers: bytes of the following files fetched with each file read (default 1048576; 0: only the file).")
    var lazyReadahead: Int64?

    func run() throws {
        let s = try store.open()
        let d = try chooseDriver(driver, global: store.strata.globalStorageDriver, store: s)
        if d.layout != s.layout {
            throw fail("the store at \(s.root) uses the \(s.layout.rawValue) storage driver: its snapshots cannot be mounted with \(d.rawValue) (drop --driver)")
        }
        let socket = address
        var lazy: LazySnapshots? = nil
        if s.layout == .btrfs && !noLazy {
            printError("strata: snapshotter: a btrfs store: every layer is pulled by containerd (\(Store.lazyNeedsUnion.prefix(while: { $0 != ";" })))")
        }
        if !noLazy && s.layout != .btrfs {
            lazy = LazySnapshots(registry: try registry.options(), mountOptions: try lazyOptions(lazyFetch, lazyReadahead),
                                 progress: { printError("strata: snapshotter: \($0)") })
        }
        let failure = Locked<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                try await SnapshotServer.serve(store: s, socket: socket, fuse: d == .fuse, lazy: lazy) {
                    printError("strata: snapshotter serving \(socket) (\(d == .fuse ? "Strata's union" : d == .btrfs ? "btrfs subvolume" : "kernel overlayfs") mounts)")
                }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
            done.signal()
        }
        done.wait()
        if let f = failure.withLock({ $0 }) { throw fail("snapshotter \(socket): \(f)") }
    }
}
