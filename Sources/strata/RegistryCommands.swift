import ArgumentParser
import Foundation
import Registry
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Runs async registry work from a synchronous command: the command's
/// thread waits, the work runs on the concurrency pool.
func runBlocking(_ body: @escaping @Sendable () async throws -> Void) throws {
    let done = DispatchSemaphore(value: 0)
    let result = Locked<String?>(nil)
    Task {
        do { try await body() } catch { result.withLock { $0 = "\(error)" } }
        done.signal()
    }
    done.wait()
    if let e = result.withLock({ $0 }) { throw fail(e) }
}

struct RegistryOptions: ParsableArguments {
    @Flag(help: "Plain HTTP to a registry other than this machine.") var insecure = false
    @Option(help: "Registry user name (the password comes from --password-stdin).") var username: String?
    @Flag(help: "Read the registry password from standard input.") var passwordStdin = false

    func client(for ref: Reference) throws -> RegistryClient {
        var creds: (String, String)? = nil
        if let u = username {
            guard passwordStdin else { throw fail("--username needs --password-stdin") }
            let pw = (readLine(strippingNewline: true) ?? "")
            creds = (u, pw)
        }
        return RegistryClient(host: ref.apiHost, insecure: insecure, credentials: creds)
    }
}

struct PullCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pull", abstract: "Pull an image from an OCI registry (host:port/name:tag, name@sha256:...; docker.io/library/ by default).")
    @OptionGroup var store: StoreOptions
    @OptionGroup var registry: RegistryOptions
    @Option(help: "Platform to pick from an index, as os/arch[/variant]; the default is this machine's.") var platform = Puller.runningPlatform
    @Argument(help: "The image reference.") var reference: String

    func run() throws {
        let ref: Reference
        do { ref = try Reference(reference) } catch { throw fail("\(error)") }
        var puller = Puller(store: try store.open(), client: try registry.client(for: ref))
        puller.platform = platform
        puller.progress = { printError("strata: \($0)") }
        let p = puller
        try runBlocking {
            let id = try await p.pull(ref)
            print("Pulled \(ref.storeName) \(id)")
        }
    }
}

struct PushCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "push", abstract: "Push an image of the store to an OCI registry.")
    @OptionGroup var store: StoreOptions
    @OptionGroup var registry: RegistryOptions
    @Argument(help: "The destination reference (host:port/name:tag).") var reference: String
    @Argument(help: "The local image (default: the reference itself).") var local: String?

    func run() throws {
        let ref: Reference
        do { ref = try Reference(reference) } catch { throw fail("\(error)") }
        var pusher = Pusher(store: try store.open(), client: try registry.client(for: ref))
        pusher.progress = { printError("strata: \($0)") }
        let p = pusher
        let src = local ?? reference
        try runBlocking { try await p.push(local: src, to: ref) }
    }
}
