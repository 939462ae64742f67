import ArgumentParser
import Sys
#if canImport(Glibc)
import Glibc
#endif

@main
struct Strata: ParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "A union filesystem for Linux and a Docker-style layer store.",
        version: "strata version \(version)",
        subcommands: [LoopbackCommand.self]
    )
}

/// Prints one line naming the problem and exits non-zero: how every command
/// reports bad input or a failed system call.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    printError("strata: \(message)")
    return ExitCode(code)
}
