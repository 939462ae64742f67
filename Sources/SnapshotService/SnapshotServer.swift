import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Store
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Serves the snapshot service on a unix socket until SIGINT or SIGTERM,
/// as containerd's proxy plugins expect (`[proxy_plugins.NAME] type =
/// "snapshot"`, `address = SOCKET`).
public enum SnapshotServer {
    public static func serve(store: Store, socket: String, fuse: Bool, lazy: LazySnapshots? = nil,
                             ready: @escaping @Sendable () -> Void = {}) async throws {
        // A socket left by a previous run (a crash, a SIGKILL) is replaced;
        // anything else at that path is not ours to remove.
        var st = stat()
        if lstat(socket, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw SnapshotError(.invalidArgument, "\(socket) exists and is not a socket; choose another --address")
            }
            unlink(socket)
        }
        let dir = (socket as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        // What a crash left half-made goes before anyone asks.
        _ = try? store.cleanupSnapshots()
        let transport = HTTP2ServerTransport.Posix(address: .unixDomainSocket(path: socket), transportSecurity: .plaintext)
        let stats = SnapshotStats()
        let server = GRPCServer(transport: transport, services: [SnapshotService(store: store, fuse: fuse, lazy: lazy)], interceptors: [stats])
        let answers = AnswerSocket()
        answers.start(logger: { _ in }, answer: { stats.report(store: store, address: socket, fuse: fuse, lazy: lazy) },
                      at: { socket + SnapshotStats.socketSuffix })
        let signals = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
        let interrupts = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        for s in [signals, interrupts] {
            s.setEventHandler { server.beginGracefulShutdown() }
            s.resume()
        }
        defer {
            unlink(socket)
            answers.stop()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.serve() }
            group.addTask {
                // The socket exists once the transport listens.
                _ = try await transport.listeningAddress
                ready()
            }
            try await group.waitForAll()
        }
    }
}
