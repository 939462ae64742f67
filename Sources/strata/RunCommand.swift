import ArgumentParser
import Foundation
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata run IMAGE -- CMD`: create, mount, and hand the merged root to an
/// existing OCI runtime (runc, or crun); Strata has no runtime of its own.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a new container of an image through runc (or crun).",
        discussion: "The container is removed afterwards unless --keep. The exit status is the command's."
    )
    @OptionGroup var store: StoreOptions
    @Option(help: "Container name (default strata-<id>).") var name: String?
    @Option(help: "Mount driver: overlay (kernel, default as root) or fuse.") var driver: String?
    @Flag(help: "Keep the container (and its changes) afterwards.") var keep = false
    @Argument(help: "Image tag or ID.") var image: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func run() throws {
        guard !command.isEmpty else { throw fail("give the command after --: strata run IMAGE -- CMD [ARGS...]") }
        guard let runtime = Spawn.which("runc") ?? Spawn.which("crun") else {
            throw fail("strata run needs an OCI runtime: apt-get install runc")
        }
        let s = try store.open()
        let bin = (try? Sys.realPath("/proc/self/exe")) ?? "strata"
        let d: Store.Driver = driver.flatMap { Store.Driver(rawValue: $0) } ?? (geteuid() == 0 ? .overlay : .fuse)
        let c = try storeCall { () throws(StoreError) in try s.create(image: image, name: name) }
        var status: Int32 = 1
        defer {
            if !keep { try? storeCall { () throws(StoreError) in try s.remove(c) } }
        }
        let merged = try storeCall { () throws(StoreError) in try s.mount(c, driver: d, strataBinary: bin) }
        let bundle = "\(s.root)/tmp/bundle-\(c.id)"
        defer { removeTree(path: bundle) }
        try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
        guard try Spawn.run(runtime, [runtime, "spec", "--bundle", bundle]) == 0,
              let raw = FileManager.default.contents(atPath: "\(bundle)/config.json"),
              var spec = try JSONSerialization.jsonObject(with: raw) as? [String: Any],
              var process = spec["process"] as? [String: Any] else {
            throw fail("\(runtime) spec did not give a usable config.json")
        }
        let cfg = try storeCall { () throws(StoreError) in try s.inspect(image: try s.image(image)) }
        let imageConfig = cfg["Config"] as? [String: Any] ?? [:]
        process["args"] = command
        process["terminal"] = false
        process["cwd"] = (imageConfig["WorkingDir"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? "/"
        if let env = imageConfig["Env"] as? [String] { process["env"] = env }
        spec["process"] = process
        spec["root"] = ["path": merged, "readonly": false]
        try JSONSerialization.data(withJSONObject: spec).write(to: URL(fileURLWithPath: "\(bundle)/config.json"))
        status = try Spawn.run(runtime, [runtime, "run", "--bundle", bundle, "strata-\(c.id.prefix(16))"])
        if keep { print("kept container \(c.name)") }
        if status != 0 { throw ExitCode(status) }
    }
}
