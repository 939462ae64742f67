import ArgumentParser
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata run IMAGE [CMD...]`: create, mount, and hand the merged root to
/// an existing OCI runtime (runc, or crun); Strata has no runtime of its
/// own. What runs, and how, follows docker and podman: the image's
/// Entrypoint and Cmd, Env, WorkingDir and User, overridden by the flags.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a container of an image through runc (or crun), as docker run does.",
        discussion: """
            strata run [OPTIONS] IMAGE [COMMAND [ARG...]]

            With no COMMAND the image's Entrypoint and Cmd run; a COMMAND replaces Cmd \
            (after the Entrypoint), as in docker. The container is removed afterwards \
            unless --keep. The exit status is the command's.
            """
    )
    @OptionGroup var store: StoreOptions
    @Option(help: "Container name, also its hostname (default strata-<id>).") var name: String?
    @Option(help: "Mount driver: overlay (kernel, default as root) or fuse; a btrfs store binds its snapshot.") var driver: String?
    @Flag(help: "Keep the container (and its changes) afterwards.") var keep = false
    @Flag(help: "Remove the container afterwards (the default; accepted as docker and podman spell it).") var rm = false
    @Option(help: "For an image pulled with --lazy: background (complete its layers while it runs, the default) or on-read (fetch only the files read).")
    var lazyFetch: LazyFetchMode = .background
    @Option(help: "For an image pulled with --lazy: bytes of the following files fetched with each file read (default 1048576; 0: only the file).")
    var lazyReadahead: Int64?
    @Option(name: [.short, .customLong("env")], help: "Set KEY=VALUE in the environment (KEY alone: its value here).")
    var env: [String] = []
    @Option(name: [.short, .customLong("workdir")], help: "Working directory inside the container.") var workdir: String?
    @Option(name: [.short, .customLong("user")], help: "USER[:GROUP], names or numbers (names from the image's /etc/passwd and /etc/group).")
    var user: String?
    @Option(name: [.short, .customLong("volume")], help: "Bind HOST:CONTAINER[:ro|rw] into the container.") var volume: [String] = []
    @Option(help: "Network: none (a namespace with loopback only, the default) or host.") var network = "none"
    @Flag(name: [.short, .customLong("interactive")], help: "Keep standard input open (it is passed through).") var interactive = false
    @Flag(name: [.short, .customLong("tty")], help: "Give the process a terminal.") var tty = false
    @Argument(help: "Image tag or ID.") var image: String
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (default: the image's).") var command: [String] = []

    func validate() throws {
        if rm && keep { throw ValidationError("--rm and --keep contradict each other: give one") }
        guard network == "none" || network == "host" else { throw ValidationError("--network takes none or host, got '\(network)'") }
        for v in volume {
            let parts = v.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 || parts.count == 3, parts[0].hasPrefix("/"), parts[1].hasPrefix("/"),
                  parts.count == 2 || parts[2] == "ro" || parts[2] == "rw" else {
                throw ValidationError("-v takes /HOST:/CONTAINER[:ro|rw], got '\(v)'")
            }
        }
    }

    func run() throws {
        guard let runtime = Spawn.which("runc") ?? Spawn.which("crun") else {
            throw fail("strata run needs an OCI runtime: apt-get install runc")
        }
        for v in volume {
            let host = String(v.split(separator: ":")[0])
            if access(host, F_OK) != 0 { throw fail("-v \(v): \(host): \(currentErrno())") }
        }
        let s = try store.open()
        let cfg = try storeCall { () throws(StoreError) in try s.config(of: try s.image(image)) }
        let imageConfig = cfg.config
        let args = Self.commandLine(entrypoint: imageConfig?.Entrypoint ?? [],
                                    cmd: imageConfig?.Cmd ?? [], given: command.first == "--" ? Array(command.dropFirst()) : command)
        guard !args.isEmpty else { throw fail("image \(image) has no Entrypoint or Cmd: give the command, strata run IMAGE CMD [ARGS...]") }
        let bin = (try? Sys.realPath("/proc/self/exe")) ?? "strata"
        let d = try chooseDriver(driver, global: store.strata.globalStorageDriver, store: s)
        let lazyOpts = try lazyOptions(lazyFetch, lazyReadahead)
        let c = try storeCall { () throws(StoreError) in try s.create(image: image, name: name) }
        var status: Int32 = 1
        defer {
            if !keep { try? storeCall { () throws(StoreError) in try s.remove(c) } }
        }
        let merged = try storeCall { () throws(StoreError) in try s.mount(c, driver: d, strataBinary: bin, explicitDriver: driverIsExplicit(driver, global: store.strata.globalStorageDriver),
                                                                            fuseOptions: lazyOpts) }
        let bundle = "\(s.root)/tmp/bundle-\(c.id)"
        defer { removeTree(path: bundle) }
        try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
        // runc's default spec, changed where docker's run changes it; every
        // field we do not touch is kept as runc wrote it.
        guard try Spawn.run(runtime, [runtime, "spec", "--bundle", bundle]) == 0,
              let raw = FileManager.default.contents(atPath: "\(bundle)/config.json"),
              case .object(var spec)? = try? JSONDecoder().decode(JSONValue.self, from: raw),
              case .object(var process)? = spec["process"] else {
            throw fail("\(runtime) spec did not give a usable config.json")
        }
        func strings(_ a: [String]) -> JSONValue { .array(a.map { .string($0) }) }
        process["args"] = strings(args)
        process["terminal"] = .bool(tty)
        process["cwd"] = .string(workdir ?? imageConfig?.WorkingDir.flatMap { $0.isEmpty ? nil : $0 } ?? "/")
        process["env"] = strings(Self.environment(image: imageConfig?.Env ?? [], given: env))
        let who = user ?? imageConfig?.User.flatMap { $0.isEmpty ? nil : $0 }
        if let who {
            let (uid, gid) = try Self.resolveUser(who, root: merged)
            process["user"] = .object(["uid": .integer(Int64(uid)), "gid": .integer(Int64(gid))])
        }
        spec["process"] = .object(process)
        spec["root"] = .object(["path": .string(merged), "readonly": .bool(false)])
        spec["hostname"] = .string(c.name)
        var mounts: [JSONValue] = []
        if case .array(let a)? = spec["mounts"] { mounts = a }
        for v in volume {
            let p = v.split(separator: ":").map(String.init)
            mounts.append(.object(["destination": .string(p[1]), "type": .string("bind"), "source": .string(p[0]),
                                   "options": strings(["rbind", p.count == 3 && p[2] == "ro" ? "ro" : "rw"])]))
        }
        spec["mounts"] = .array(mounts)
        if network == "host", case .object(var linux)? = spec["linux"], case .array(let ns)? = linux["namespaces"] {
            linux["namespaces"] = .array(ns.filter { if case .object(let o) = $0 { return o["type"] != .string("network") }; return true })
            spec["linux"] = .object(linux)
        }
        try JSONEncoder().encode(JSONValue.object(spec)).write(to: URL(fileURLWithPath: "\(bundle)/config.json"))
        status = try Spawn.run(runtime, [runtime, "run", "--bundle", bundle, "strata-\(c.id.prefix(16))"])
        if keep { print("kept container \(c.name)") }
        if status != 0 { throw ExitCode(status) }
    }

    /// docker's and podman's PATH for a container whose image sets none.
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// docker's rule: Entrypoint, then the given command or else Cmd.
    static func commandLine(entrypoint: [String], cmd: [String], given: [String]) -> [String] {
        entrypoint + (given.isEmpty ? cmd : given)
    }

    /// The image's environment with `-e` applied on top (KEY alone takes
    /// its value from here, and is left out when unset, as docker does).
    static func environment(image: [String], given: [String]) -> [String] {
        var order: [String] = []
        var values: [String: String] = [:]
        func set(_ k: String, _ v: String) {
            if values[k] == nil { order.append(k) }
            values[k] = v
        }
        for e in image {
            let kv = e.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            set(String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
        }
        for e in given {
            let kv = e.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if kv.count > 1 { set(String(kv[0]), String(kv[1])) } else if let v = getenv(e) { set(e, String(cString: v)) }
        }
        // An image without PATH (podman import, FROM scratch) gets the one
        // docker and podman give it.
        if values["PATH"] == nil { set("PATH", defaultPath) }
        return order.map { "\($0)=\(values[$0] ?? "")" }
    }

    /// USER[:GROUP] as numbers: names are looked up in the container's own
    /// /etc/passwd and /etc/group (never the host's); a user's group is its
    /// primary one unless given.
    static func resolveUser(_ spec: String, root: String) throws -> (UInt32, UInt32) {
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        func lookup(_ file: String, _ name: String) -> [String]? {
            guard let text = try? String(contentsOfFile: "\(root)/etc/\(file)", encoding: .utf8) else { return nil }
            return text.split(separator: "\n").map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) }
                .first { $0.first == name }
        }
        var uid: UInt32, gid: UInt32 = 0
        if let n = UInt32(parts[0]) {
            uid = n
            if let row = (try? String(contentsOfFile: "\(root)/etc/passwd", encoding: .utf8))?.split(separator: "\n")
                .map({ $0.split(separator: ":", omittingEmptySubsequences: false) }).first(where: { $0.count > 3 && $0[2] == Substring(parts[0]) }),
               let g = UInt32(row[3]) { gid = g }
        } else {
            guard let row = lookup("passwd", parts[0]), row.count > 3, let u = UInt32(row[2]), let g = UInt32(row[3]) else {
                throw fail("user '\(parts[0])' is not in the image's /etc/passwd (give a number: -u UID[:GID])")
            }
            uid = u
            gid = g
        }
        if parts.count == 2 {
            if let n = UInt32(parts[1]) { gid = n } else {
                guard let row = lookup("group", parts[1]), row.count > 2, let g = UInt32(row[2]) else {
                    throw fail("group '\(parts[1])' is not in the image's /etc/group (give a number)")
                }
                gid = g
            }
        }
        return (uid, gid)
    }
}
