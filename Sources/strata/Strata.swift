import ArgumentParser
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

struct Strata: ParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "A union filesystem for Linux and a Docker-style layer store.",
        version: "strata version \(version)",
        subcommands: [MountCommand.self, UmountCommand.self, ImageCommand.self, CreateCommand.self, ListCommand.self, RemoveCommand.self, DiffCommand.self, CommitCommand.self, InspectCommand.self, ExportCommand.self, DfCommand.self, CheckCommand.self, SystemCommand.self, StatsCommand.self, RunCommand.self, PullCommand.self, PushCommand.self, LoopbackCommand.self, SnapshotterCommand.self, LayerStoreCommand.self, PoolCommand.self]
    )

    /// podman's global options, before the subcommand: parsed here, read
    /// by the subcommands through `@ParentCommand` (see `StoreOptions`); a
    /// subcommand's own `--root` or `--driver`, given after it, wins.
    @Option(name: .customLong("root"), help: "The store's root directory, for the subcommand that follows.")
    var globalRoot: String?
    @Option(name: .customLong("storage-driver"),
            help: ArgumentHelp("The store's driver: overlay (layers mounted by the kernel's overlayfs, default as root), fuse (the same layers by Strata's union) or btrfs (layers as subvolume snapshots; the store root must be on btrfs).",
                               discussion: "A new store keeps the layout its first command names (overlay and fuse share one); naming another driver for it later is refused."))
    var globalStorageDriver: String?

    func validate() throws {
        // One line and podman's code for its own errors, not a usage screen.
        if let d = globalStorageDriver, Store.Driver(rawValue: d) == nil {
            throw fail(unknownDriver("--storage-driver", d), code: Exit.globalOption)
        }
    }
}

/// Prints one line naming the problem and exits non-zero: how every command
/// reports bad input or a failed system call.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    printError("strata: \(message)")
    return ExitCode(code)
}

/// How we were called decides the command line: as `strata-overlay` (a
/// containers/storage mount_program: `PROGRAM -o OPTS MOUNTPOINT`) or by
/// mount.fuse3 for `mount -t fuse.strata` (`strata SOURCE MOUNTPOINT -o OPTS`)
/// we mount a union; otherwise the subcommands apply.
@main
enum Entry {
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        let invoked = (CommandLine.arguments.first ?? "").split(separator: "/").last.map(String.init) ?? ""
        // The subcommands' names, from the one list above (and "help").
        let subcommands = Strata.configuration.subcommands.compactMap { $0.configuration.commandName } + ["help"]
        if invoked == "strata-pool" {
            // mergerfs's command line and fstab form (mount.fuse3 runs
            // PROGRAM BRANCHES MOUNTPOINT -o OPTIONS for fuse.strata-pool).
            if args != ["--version"] { args = ["pool"] + args }
        } else if invoked == "strata-overlay" || invoked == "mount.fuse.strata" {
            if args != ["--version"] && args != ["--help"] && args != ["-h"] { args = ["mount"] + args }
        } else if let first = args.first, first == "-o" || first == "-f" {
            // fuse-overlayfs's command line on the main binary: `strata -o OPTS MNT`.
            args = ["mount"] + args
        } else if let first = args.first, !first.hasPrefix("-"), !subcommands.contains(first), dockerVerbs[first] == nil,
                  args.count >= 2, !args[1].hasPrefix("-") {
            // mount.fuse3: SOURCE MOUNTPOINT [-o OPTIONS]; the source is a label.
            args = ["mount"] + Array(args.dropFirst())
        }
        Strata.main(dockerShortcuts(args))
    }

    /// docker's short image verbs, as docker itself reads them: `images`
    /// is `image ls`, `rmi` is `image rm`, and so on (after the global
    /// options, which come first as in podman).
    static let dockerVerbs = ["images": "ls", "rmi": "rm", "load": "load", "save": "save", "tag": "tag", "history": "history"]

    static func dockerShortcuts(_ args: [String]) -> [String] {
        var i = 0
        while i < args.count, args[i].hasPrefix("-") {
            i += args[i] == "--root" || args[i] == "--storage-driver" ? 2 : 1
        }
        guard i < args.count, let verb = dockerVerbs[args[i]] else { return args }
        return Array(args[..<i]) + ["image", verb] + Array(args[(i + 1)...])
    }
}
