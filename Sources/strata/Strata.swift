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
        discussion: """
            Global options, before the subcommand, as podman takes them:
              --root DIR          the store (also taken after the subcommand)
              --storage-driver D  how containers mount: overlay, the kernel's
                                  (default as root), or fuse, Strata's union
            """,
        version: "strata version \(version)",
        subcommands: [MountCommand.self, UmountCommand.self, ImageCommand.self, CreateCommand.self, ListCommand.self, RemoveCommand.self, DiffCommand.self, CommitCommand.self, InspectCommand.self, ExportCommand.self, DfCommand.self, CheckCommand.self, SystemCommand.self, StatsCommand.self, RunCommand.self, PullCommand.self, PushCommand.self, LoopbackCommand.self]
    )
}

/// Prints one line naming the problem and exits non-zero: how every command
/// reports bad input or a failed system call.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    printError("strata: \(message)")
    return ExitCode(code)
}

/// How many leading arguments name a subcommand (`image ls` is two).
func subcommandPathLength(_ args: [String]) -> Int {
    var command: ParsableCommand.Type = Strata.self
    var n = 0
    while n < args.count, let next = command.configuration.subcommands.first(where: { $0._commandName == args[n] }) {
        command = next
        n += 1
    }
    return n
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
        // podman's and docker's global form, `strata --root DIR
        // --storage-driver fuse image ls`: --root goes to the subcommand
        // (before any `--` that starts a command to run); the storage
        // driver becomes the default of the commands that mount.
        while let first = args.first, first.hasPrefix("--root") || first.hasPrefix("--storage-driver") {
            let (name, value, used): (String, String?, Int)
            if let eq = first.firstIndex(of: "=") {
                (name, value, used) = (String(first[..<eq]), String(first[first.index(after: eq)...]), 1)
            } else {
                (name, value, used) = (first, args.count > 1 ? args[1] : nil, 2)
            }
            guard name == "--root" || name == "--storage-driver", let value else { break }
            args.removeFirst(used)
            if name == "--root" {
                // Right after the subcommand's name: after the arguments, it
                // would become part of a command to run (`strata --root D
                // run IMAGE sh -c ...`) and the default store would be used.
                let at = subcommandPathLength(args)
                let moved = ["--root", value]
                if at > 0 { args.insert(contentsOf: moved, at: at) }
                else if let dashes = args.firstIndex(of: "--") { args.insert(contentsOf: moved, at: dashes) } else { args += moved }
            } else {
                guard Store.Driver(rawValue: value) != nil else {
                    printError("strata: --storage-driver takes overlay (the kernel's overlayfs) or fuse (Strata's own union), got '\(value)'")
                    exit(Exit.globalOption)
                }
                setenv("STRATA_STORAGE_DRIVER", value, 1)
            }
        }
        if invoked == "strata-overlay" || invoked == "mount.fuse.strata" {
            if args != ["--version"] && args != ["--help"] && args != ["-h"] { args = ["mount"] + args }
        } else if let first = args.first, first == "-o" || first == "-f" {
            // fuse-overlayfs's command line on the main binary: `strata -o OPTS MNT`.
            args = ["mount"] + args
        } else if let first = args.first, !first.hasPrefix("-"), !subcommands.contains(first),
                  args.count >= 2, !args[1].hasPrefix("-") {
            // mount.fuse3: SOURCE MOUNTPOINT [-o OPTIONS]; the source is a label.
            args = ["mount"] + Array(args.dropFirst())
        }
        Strata.main(args)
    }
}
