import ArgumentParser
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Debian's docker-registry on 127.0.0.1 behind `throttle_proxy.py`: pushes
/// go straight to `port`, pulls through `proxyPort` at `mbit` Mbit/s, and
/// the proxy counts the bytes it passed. Both processes end with `stop`.
final class ThrottledRegistry {
    let port: Int
    let proxyPort: Int
    let counter: String
    private var pids: [pid_t] = []

    /// `root`: where the registry keeps its blobs (removed by the caller).
    init(root: String, mbit: Double) throws {
        guard let registry = Spawn.which("docker-registry"), let python = Spawn.which("python3") else {
            throw ValidationError("needs docker-registry and python3 (apt-get install docker-registry python3)")
        }
        let proxyScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("throttle_proxy.py").path
        guard access(proxyScript, R_OK) == 0 else { throw ValidationError("\(proxyScript) is missing") }
        // Below the ephemeral range (32768 and up), which outgoing connections use.
        port = Int.random(in: 20000...26000)
        proxyPort = port + 6000
        counter = "\(root)/proxy.count"
        try "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: \(root)/registry\nhttp:\n  addr: 127.0.0.1:\(port)\nlog:\n  level: error\n"
            .write(toFile: "\(root)/registry.yml", atomically: true, encoding: .utf8)
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        pids.append(try Spawn.start(registry, [registry, "serve", "\(root)/registry.yml"], stdio: (null, null, null)))
        pids.append(try Spawn.start(python, [python, proxyScript, "--listen", "\(proxyPort)", "--target", "\(port)",
                                             "--mbit", "\(mbit)", "--count-file", counter], stdio: (null, null, null)))
        usleep(800_000)
    }

    /// Pushes go here, unthrottled.
    var direct: String { "127.0.0.1:\(port)" }
    /// Pulls go here, through the proxy.
    var throttled: String { "127.0.0.1:\(proxyPort)" }

    /// Bytes the proxy has passed so far.
    func fetched() -> Int64 { Int64((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "0") ?? 0 }

    func stop() {
        for p in pids.reversed() {
            kill(p, SIGTERM)
            _ = Spawn.wait(p)
        }
        pids = []
    }

    deinit { stop() }
}

/// What the benchmarks over a throttled registry share: the image's tree,
/// the link, rounds, where the data goes, the binary under test.
struct LinkBenchOptions: ParsableArguments {
    @Option(help: "A root filesystem for the image (e.g. made by 'debootstrap --variant=minbase bookworm DIR'); split into 3 layers.")
    var rootfs: String
    @Option(help: "The link's bandwidth, in Mbit/s.") var mbit: Double = 200
    @Option(help: "Rounds; medians are reported.") var rounds = 3
    @Option(help: "Where to put the data.") var dir = "/var/tmp"
    @Option(help: "The strata binary (default: next to this program; strata-overlay beside it where the benchmark mounts through it).")
    var strata: String?
}
