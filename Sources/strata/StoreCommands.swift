import ArgumentParser
import FUSE
import Foundation
import Registry
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Where the store lives: --root, else STRATA_ROOT, else the default.
struct StoreOptions: ParsableArguments {
    @Option(help: "The store's root directory (default /var/lib/strata as root, $XDG_DATA_HOME/strata otherwise; STRATA_ROOT overrides).")
    var root: String?
    @ParentCommand var strata: Strata

    func open(recovering: Bool = true) throws -> Store {
        try Self.open(root: root ?? strata.globalRoot, recovering: recovering, global: strata)
    }

    /// The store, created with the storage driver named (`--storage-driver`,
    /// else STRATA_STORAGE_DRIVER) if it is new; one naming another
    /// driver than an existing store's is refused.
    static func open(root: String?, recovering: Bool = true, global: Strata? = nil) throws -> Store {
        let env = ProcessInfo.processInfo.environment["STRATA_STORAGE_DRIVER"].flatMap { $0.isEmpty ? nil : $0 }
        if global?.globalStorageDriver == nil, let env, Store.Driver(rawValue: env) == nil {
            // A misspelt variable would otherwise make a store of the default driver.
            throw fail(unknownDriver("STRATA_STORAGE_DRIVER", env))
        }
        let named = (global?.globalStorageDriver ?? env).flatMap { Store.Driver(rawValue: $0) }
        do { return try Store(root: root ?? Store.defaultRoot, recovering: recovering, driver: named) } catch { throw fail("\(error)") }
    }
}

func storeCall<T>(_ body: () throws(StoreError) -> T) throws -> T {
    do { return try body() } catch { throw fail(error) }
}

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Images: load, list, save, tag, remove, history, prune.",
        subcommands: [ImageLoad.self, ImageList.self, ImageInspect.self, ImageSave.self, ImageTag.self, ImageRemove.self, ImageHistory.self,
                      ImagePrune.self]
    )
}

struct ImageLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Load a docker-save archive or an OCI image layout (tar or directory).",
        discussion: "Every digest is checked; layers already in the store are not extracted again."
    )
    @OptionGroup var store: StoreOptions
    @Option(name: .shortAndLong, help: "A docker save archive or an OCI archive (tar); without it (and --oci), standard input, as docker load reads it.")
    var input: String?
    @Option(help: "An OCI image layout directory.") var oci: String?

    func run() throws {
        if input != nil && oci != nil { throw fail("give one of -i FILE or --oci DIR, not both (see 'strata image load --help')") }
        if input == nil && oci == nil {
            // A terminal, /dev/null or an empty file: nothing was piped in.
            var st = stat()
            let nothing = isatty(0) != 0 || fstat(0, &st) != 0 || (st.st_mode & S_IFMT) == S_IFCHR
                || ((st.st_mode & S_IFMT) == S_IFREG && st.st_size == 0)
            if nothing { throw fail("no archive on standard input: give -i FILE or --oci DIR, or pipe one in (strata load < image.tar)") }
        }
        var loader = ImageLoader(store: try store.open())
        loader.progress = { printError("strata: \($0)") }
        let loaded = try storeCall { () throws(StoreError) in
            if let input { return try loader.load(archive: input) }
            if let oci { return try loader.load(directory: oci) }
            return try loader.load(fd: 0, label: "standard input")
        }
        for l in loaded { print("Loaded image \(l.tags.first ?? l.id) (\(l.newLayers) of \(l.layers) layers new)") }
    }
}

struct ImageList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List images.", aliases: ["list"])
    @OptionGroup var store: StoreOptions

    func run() throws {
        let s = try store.open()
        print("IMAGE ID       LAYERS  TAGS")
        for (img, tags) in try storeCall({ () throws(StoreError) in try s.images() }) {
            // A lazily pulled image says how much of it is here.
            var local = ""
            let lazy = s.lazyLayers(of: img)
            if !lazy.isEmpty {
                var have: Int64 = 0, all: Int64 = 0
                for id in lazy { if let p = try? s.storedLayer(id).lazyProgress() { have += p.local; all += p.total } }
                local = "  (partial: \(lazy.count) layer\(lazy.count == 1 ? "" : "s"), \(have >> 10) of \(all >> 10) KiB of file data local)"
            }
            print("\(Digest.hex(img.id).prefix(12))   \(String(img.layerIDs.count).padding(toLength: 6, withPad: " ", startingAt: 0))  \(tags.joined(separator: ", "))\(local)")
        }
    }
}

struct CreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a container (a thin writable layer) from an image.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Image tag or ID.") var image: String
    @Option(help: "Container name (default strata-<id>).") var name: String?

    func run() throws {
        let s = try store.open()
        let c = try storeCall { () throws(StoreError) in try s.create(image: image, name: name) }
        print(c.id)
    }
}

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List containers (docker ps -a).", aliases: ["ps"])
    @OptionGroup var store: StoreOptions

    func run() throws {
        let s = try store.open()
        print("CONTAINER ID   NAME                 IMAGE          MOUNTED")
        for c in try storeCall({ () throws(StoreError) in try s.containers() }) {
            let mounted = Mounter.isMountPointPath(s.mergedPath(c)) ? s.mergedPath(c) : "-"
            print("\(c.id.prefix(12))   \(c.name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(Digest.hex(c.image).prefix(12))   \(mounted)")
        }
    }
}

struct UmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "umount", abstract: "Unmount a container's root.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Container name or ID.") var container: String

    func run() throws {
        let s = try store.open()
        try storeCall { () throws(StoreError) in
            let c = try s.container(container)
            try s.unmount(c)
        }
    }
}

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a container (unmounting it first).")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Container names or IDs.") var containers: [String]

    func run() throws {
        let s = try store.open()
        for ref in containers {
            try storeCall { () throws(StoreError) in
                let c = try s.container(ref)
                try s.remove(c)
            }
        }
    }
}

/// The mount driver: `--driver`, else the global `--storage-driver`, else
/// STRATA_STORAGE_DRIVER, else the store's own (btrfs for a btrfs store;
/// the kernel's overlayfs as root and Strata's FUSE union otherwise).
func chooseDriver(_ given: String?, global: String?, store: Store? = nil) throws -> Store.Driver {
    let env = ProcessInfo.processInfo.environment["STRATA_STORAGE_DRIVER"].flatMap { $0.isEmpty ? nil : $0 }
    guard let v = given ?? global ?? env else {
        if store?.layout == .btrfs { return .btrfs }
        return geteuid() == 0 ? .overlay : .fuse
    }
    guard let d = Store.Driver(rawValue: v) else {
        throw fail(unknownDriver(given != nil ? "--driver" : global != nil ? "--storage-driver" : "STRATA_STORAGE_DRIVER", v))
    }
    return d
}

/// The line for a driver name Strata does not know, with what to use
/// instead for the names Docker's and podman's users bring with them.
func unknownDriver(_ option: String, _ name: String) -> String {
    let hint: String
    switch name {
    case "overlay2", "fuse-overlayfs":
        hint = ": Strata's overlay keeps \(name)'s layout (use overlay, or fuse for Strata's own union)"
    case "zfs":
        hint = ": there is no ZFS driver yet (docs/BTRFS.md says how the btrfs driver maps onto ZFS datasets)"
    case "vfs", "devicemapper", "aufs":
        hint = ": Strata does not offer \(name) (overlay or btrfs does its work)"
    default:
        hint = ""
    }
    return "\(option) takes overlay (the kernel's overlayfs), fuse (Strata's own union) or btrfs (subvolume snapshots), got '\(name)'\(hint)"
}

/// How a mount of a lazily pulled image fetches (`--lazy-fetch`).
enum LazyFetchMode: String, ExpressibleByArgument, CaseIterable {
    case background
    case onRead = "on-read"
    var fuseOptions: [String] { self == .onRead ? ["lazy_fetch=on_read"] : [] }
}

/// `--lazy-fetch` and `--lazy-readahead`, as Strata union options.
func lazyOptions(_ mode: LazyFetchMode, _ readahead: Int64?) throws -> [String] {
    guard let r = readahead else { return mode.fuseOptions }
    guard r >= 0, r <= 64 << 20 else { throw fail("--lazy-readahead takes a number of bytes from 0 to 67108864") }
    return mode.fuseOptions + ["lazy_readahead=\(r)"]
}

/// Whether the user named the driver (flag, global option or environment).
func driverIsExplicit(_ given: String?, global: String?) -> Bool {
    given != nil || global != nil || !(ProcessInfo.processInfo.environment["STRATA_STORAGE_DRIVER"] ?? "").isEmpty
}

/// `strata mount CONTAINER`: mounts a container's root and prints it.
func mountContainer(_ ref: String, driver: String?, root: String?, global: Strata, fuseOptions: [String] = []) throws {
    let s = try StoreOptions.open(root: root ?? global.globalRoot, global: global)
    let d = try chooseDriver(driver, global: global.globalStorageDriver, store: s)
    let path = try storeCall { () throws(StoreError) -> String in
        let c = try s.container(ref)
        let bin = (try? Sys.realPath("/proc/self/exe")) ?? "strata"
        return try s.mount(c, driver: d, strataBinary: bin,
                           explicitDriver: driverIsExplicit(driver, global: global.globalStorageDriver), fuseOptions: fuseOptions)
    }
    print(path)
}

struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "diff", abstract: "List what a container changed (A added, C changed, D deleted), like docker diff.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Container name or ID.") var container: String

    func run() throws {
        let s = try store.open()
        let changes = try storeCall { () throws(StoreError) -> [Store.Change] in
            let c = try s.container(container)
            return try s.diff(c)
        }
        for ch in changes { print(ch.line) }
    }
}

struct CommitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "commit", abstract: "Save a container's changes as a new image (its upper layer becomes an OCI layer).")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Container name or ID.") var container: String
    @Argument(help: "The new image's NAME[:TAG].") var tag: String

    func run() throws {
        let s = try store.open()
        let id = try storeCall { () throws(StoreError) -> String in
            let c = try s.container(container)
            return try s.commit(c, tag: tag, progress: { printError("strata: \($0)") })
        }
        print(id)
    }
}

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show a container or image as JSON, with GraphDriver data as docker inspect prints it.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Container or image name or ID.") var ref: String

    func run() throws {
        let s = try store.open()
        let obj = try storeCall { () throws(StoreError) -> JSONValue in
            if let c = try s.findContainer(ref) { return try s.inspect(container: c) }
            return try s.inspect(image: try s.image(ref))
        }
        print(JSONValue.array([obj]).dockerFormatted())
    }
}

struct ImageSave: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "save", abstract: "Write an image as a docker save archive or an OCI archive (podman load, skopeo and docker load read both).")
    @OptionGroup var store: StoreOptions
    @Option(name: .shortAndLong, help: "The archive to write; without it, standard output, as docker save writes it (never a terminal).")
    var output: String?
    @Option(help: "docker-archive (default) or oci-archive.") var format: String = "docker-archive"
    @Argument(help: "Image tag or ID.") var image: String

    func run() throws {
        guard let f = Store.ArchiveFormat(rawValue: format) else { throw fail("--format takes docker-archive or oci-archive, got '\(format)'") }
        if output == nil && isatty(1) != 0 {
            throw fail("refusing to write an archive to a terminal: give -o FILE, or redirect (strata save \(image) > image.tar)")
        }
        let s = try store.open()
        try completeLazyLayers(s, image, before: "saving it")
        try storeCall { () throws(StoreError) in
            if let output { try s.save(image, to: output, format: f) } else { try s.save(image, toDescriptor: 1, label: "standard output", format: f) }
        }
    }
}

/// A partly pulled image (`pull --lazy`) has no layer archives yet: its
/// layers are completed from the registry first, as `strata pull` would,
/// with progress; a registry that cannot be reached says what to do.
func completeLazyLayers(_ s: Store, _ image: String, before what: String) throws {
    let img = try storeCall { () throws(StoreError) in try s.image(image) }
    let lazy = s.lazyLayers(of: img)
    guard !lazy.isEmpty else { return }
    printError("strata: \(image) is partly pulled (pull --lazy): completing its \(lazy.count) layer\(lazy.count == 1 ? "" : "s") from the registry before \(what)")
    let done = DispatchSemaphore(value: 0)
    let failure = Locked<(any Error)?>(nil)
    Task {
        for id in lazy {
            do {
                let f = try LazyFetcher(layer: s.storedLayer(id), options: RegistryOptions())
                do { try await f.completeLayer(progress: { printError("strata: \($0)") }) } catch { await f.shutdown(); throw error }
                await f.shutdown()
            } catch {
                failure.withLock { $0 = error }
                break
            }
        }
        done.signal()
    }
    done.wait()
    if let why = failure.withLock({ $0 }) {
        throw fail("\(image) is partly pulled and its layers could not be completed (\(why)); run 'strata pull \(image)' once the registry is reachable, then \(what.replacingOccurrences(of: " it", with: "")) again",
                   code: Exit.code(why))
    }
}

struct ImageTag: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tag", abstract: "Give an image another NAME[:TAG].")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Image tag or ID.") var image: String
    @Argument(help: "New NAME[:TAG].") var name: String
    func run() throws {
        let s = try store.open()
        try storeCall { () throws(StoreError) in try s.tag(image, as: name) }
    }
}

struct ImageRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove an image tag; the image and its unshared layers go with the last one.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Image tags or IDs.") var images: [String]
    func run() throws {
        let s = try store.open()
        for i in images {
            let gone = try storeCall { () throws(StoreError) in try s.removeImage(i) }
            for l in gone { print("Deleted layer \(Digest.hex(l).prefix(12))") }
        }
    }
}

struct ImageHistory: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "history", abstract: "Show how an image was built, newest first.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Image tag or ID.") var image: String
    func run() throws {
        let s = try store.open()
        for h in try storeCall({ () throws(StoreError) in try s.history(image) }) {
            print("\(h.created.padding(toLength: 26, withPad: " ", startingAt: 0)) \(h.empty ? "(no layer) " : "")\(h.by)")
        }
    }
}

struct DfCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "df", abstract: "Space used by images, layers and containers, and what sharing layers saves.")
    @OptionGroup var store: StoreOptions
    func run() throws {
        let s = try store.open()
        let u = try storeCall { () throws(StoreError) in try s.usage() }
        func mb(_ b: Int64) -> String { String(format: "%.1f MB", Double(b) / 1e6) }
        print("TYPE         COUNT  SIZE")
        print("Images       \(String(u.images).padding(toLength: 6, withPad: " ", startingAt: 0)) \(mb(u.unsharedBytes)) if each kept its own layers")
        print("Layers       \(String(u.layers).padding(toLength: 6, withPad: " ", startingAt: 0)) \(mb(u.layerBytes)) stored (shared: \(mb(u.unsharedBytes - u.layerBytes)) saved)")
        print("Containers   \(String(u.containers).padding(toLength: 6, withPad: " ", startingAt: 0)) \(mb(u.containerBytes)) in their writable layers")
    }
}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Write a container's whole root as one tar.")
    @OptionGroup var store: StoreOptions
    @Option(name: .shortAndLong, help: "The tar to write.") var output: String
    @Argument(help: "Container name or ID.") var container: String
    func run() throws {
        let s = try store.open()
        let bin = (try? Sys.realPath("/proc/self/exe")) ?? "strata"
        try storeCall { () throws(StoreError) in
            let c = try s.container(container)
            try s.export(c, to: output, strataBinary: bin)
        }
    }
}

struct ImageInspect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show an image as JSON: config, RootFS.Layers, GraphDriver.")
    @OptionGroup var store: StoreOptions
    @Argument(help: "Image tag or ID.") var image: String
    func run() throws {
        let s = try store.open()
        let obj = try storeCall { () throws(StoreError) in try s.inspect(image: try s.image(image)) }
        print(JSONValue.array([obj]).dockerFormatted())
    }
}

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Verify the store against its database; --repair mends what can be mended.",
        discussion: """
            Checks that every layer, image and container row has its complete directory (diff, link, the \
            l/ short link, lower) and that every directory and short link belongs to a row. Prints one line \
            per problem and exits 1 when there is any. --repair removes what an interrupted command left \
            half-made, rewrites links and lower files from the database, and unpacks a layer again from its \
            kept tar; what cannot be restored is listed with what to do.
            """
    )
    @OptionGroup var store: StoreOptions
    @Flag(help: "Also hash every layer's kept tar against its diff ID (reads every layer).") var content = false
    @Flag(help: "Mend what can be mended, then report what is left.") var repair = false

    func run() throws {
        let s = try store.open(recovering: repair)
        let problems = try storeCall { () throws(StoreError) in
            repair ? try s.repair(content: content, progress: { print("repaired: \($0)") }) : try s.check(content: content)
        }
        for p in problems { print(p) }
        if problems.isEmpty { print("store \(s.root): no problems") } else { throw ExitCode(1) }
    }
}

/// What a prune removed: a line per image and leftover, then the totals.
func report(_ p: Store.Pruned) {
    for i in p.images { print("Deleted image \(Digest.hex(i).prefix(12))") }
    for l in p.leftovers { print("Removed leftover \(l)") }
    print("removed \(p.images.count) image\(p.images.count == 1 ? "" : "s"), \(p.layers.count) layer\(p.layers.count == 1 ? "" : "s")"
        + (p.leftovers.isEmpty ? "" : ", \(p.leftovers.count) leftover\(p.leftovers.count == 1 ? "" : "s")")
        + "; \(p.bytes / 1_048_576) MiB freed")
}

struct ImagePrune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Remove images without a tag that no container uses (-a: every image no container uses), and unused layers.")
    @OptionGroup var store: StoreOptions
    @Flag(name: .shortAndLong, help: "Every image no container uses, tagged or not.") var all = false
    func run() throws {
        let s = try store.open()
        report(try storeCall { () throws(StoreError) in try s.pruneImages(all: all) })
    }
}

struct SystemCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "system", abstract: "Store-wide housekeeping: prune.",
                                                    subcommands: [SystemPrune.self])
}

struct SystemPrune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "image prune, then what interrupted commands left behind; containers stay (strata rm).")
    @OptionGroup var store: StoreOptions
    @Flag(name: .shortAndLong, help: "Every image no container uses, tagged or not.") var all = false
    func run() throws {
        let s = try store.open()
        report(try storeCall { () throws(StoreError) in try s.pruneSystem(all: all) })
    }
}
