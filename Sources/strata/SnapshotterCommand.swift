import ArgumentParser
import Foundation
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
        Strata's union (fuse3.strata-overlay, run by mount.fuse3). Ends on SIGINT or SIGTERM.
        """
    )
    @OptionGroup var store: StoreOptions
    @Option(help: "The unix socket to serve on.") var address = "/run/strata/snapshotter.sock"
    @Option(help: "Mounts to answer: overlay (the kernel's overlayfs, default as root) or fuse (Strata's union).")
    var driver: String?

    func run() throws {
        let d = try chooseDriver(driver, global: store.strata.globalStorageDriver)
        let s = try store.open()
        let socket = address
        let failure = Locked<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                try await SnapshotServer.serve(store: s, socket: socket, fuse: d == .fuse) {
                    printError("strata: snapshotter serving \(socket) (\(d == .fuse ? "Strata's union" : "kernel overlayfs") mounts)")
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
