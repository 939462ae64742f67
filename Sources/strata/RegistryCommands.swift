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
    let result = Locked<(any Error)?>(nil)
    Task {
        do { try await body() } catch { result.withLock { $0 = error } }
        done.signal()
    }
    done.wait()
    if let e = result.withLock({ $0 }) { throw e is ExitCode ? e : fail(e) }
}

struct RegistryFlags: ParsableArguments {
    @Flag(help: "Allow plain HTTP when HTTPS fails (always allowed for this machine, as docker does).") var insecure = false
    @Option(help: "A directory of CA certificates (*.crt) for the registry (default: /etc/containers/certs.d/HOST:PORT, then /etc/docker/certs.d/HOST:PORT).")
    var certDir: String?
    @Option(help: "Seconds without data from the registry before giving up (an interrupted pull resumes).") var timeout: Int64 = 30
    @Option(help: "Registry user name (the password comes from --password-stdin).") var username: String?
    @Flag(help: "Read the registry password from standard input.") var passwordStdin = false

    /// The TLS and timeout choices, for commands that make their clients later.
    func options() throws -> RegistryOptions {
        guard timeout > 0 else { throw fail("--timeout takes a number of seconds above 0") }
        var o = RegistryOptions()
        o.insecure = insecure
        o.certDir = certDir
        o.readTimeout = timeout
        return o
    }

    func client(for ref: Reference) throws -> RegistryClient {
        var creds: (String, String)? = nil
        if let u = username {
            guard passwordStdin else { throw fail("--username needs --password-stdin") }
            let pw = (readLine(strippingNewline: true) ?? "")
            creds = (u, pw)
        }
        let o = try options()
        do { return try RegistryClient(host: ref.apiHost, options: o, credentials: creds) } catch { throw fail(error) }
    }
}

struct PullCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pull", abstract: "Pull an image from an OCI registry (host:port/name:tag, name@sha256:...; docker.io/library/ by default).")
    @OptionGroup var store: StoreOptions
    @OptionGroup var registry: RegistryFlags
    @Option(help: "Platform to pick from an index, as os/arch[/variant]; the default is this machine's.") var platform = Puller.runningPlatform
    @Flag(help: ArgumentHelp("Fetch only the manifest, config and each layer's table of contents (eStargz); files come from the registry when first read.",
                             discussion: "Containers of such an image mount through Strata's FUSE union. 'strata pull REF' without --lazy completes the layers."))
    var lazy = false
    @Argument(help: "The image reference.") var reference: String

    func run() throws {
        let ref: Reference
        do { ref = try Reference(reference) } catch { throw fail(error) }
        let client = try registry.client(for: ref)
        var puller = Puller(store: try store.open(), client: client)
        puller.platform = platform
        puller.progress = { printError("strata: \($0)") }
        let p = puller
        try runBlocking {
            let id: String
            do { id = try await p.pull(ref, lazy: lazy) } catch { await client.shutdown(); throw error }
            await client.shutdown()
            print("Pulled \(ref.storeName) \(id)")
        }
    }
}

struct PushCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push", abstract: "Push an image of the store to an OCI registry.",
        discussion: """
            strata push [OPTIONS] IMAGE [DESTINATION]

            As podman push: IMAGE is the store's, DESTINATION the registry reference \
            (host:port/name:tag); without DESTINATION the image's own name is the destination.
            """)
    @OptionGroup var store: StoreOptions
    @OptionGroup var registry: RegistryFlags
    @Argument(help: "The local image (tag or ID).") var local: String
    @Option(help: "Layer format: none (the stored tar), estargz or zstd:chunked (compressed with a table of contents, for 'pull --lazy').")
    var compression: String = "none"
    @Option(help: ArgumentHelp("With --compression estargz: a file (path in the image) that a lazy pull fetches first; repeatable.",
                               discussion: "The files go first in their layers, before eStargz's .prefetch.landmark."))
    var prefetch: [String] = []
    @Argument(help: "The destination reference (default: the image's own name).") var destination: String?

    func run() throws {
        let reference = destination ?? local
        let ref: Reference
        do { ref = try Reference(reference) } catch { throw fail(error) }
        let client = try registry.client(for: ref)
        var pusher = Pusher(store: try store.open(), client: client)
        pusher.progress = { printError("strata: \($0)") }
        let p = pusher
        let src = local
        guard let c = Pusher.Compression(rawValue: compression) else {
            throw fail("--compression \(compression): not a layer format; use none, estargz or zstd:chunked")
        }
        try runBlocking {
            do { try await p.push(local: src, to: ref, compression: c, prefetch: prefetch) } catch { await client.shutdown(); throw error }
            await client.shutdown()
        }
    }
}
