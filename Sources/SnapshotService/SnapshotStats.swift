import Foundation
import GRPCCore
import Registry
import Store
import Sys

/// What the snapshotter has done since it started, for `strata stats`:
/// calls per method (counted by a gRPC interceptor, so no method can be
/// left out), how each lazily labelled layer was decided, and the store's
/// snapshots. Served on `SOCKET.stats` beside the gRPC socket, one JSON
/// object per connection (as a mount's daemon serves its own).
public final class SnapshotStats: ServerInterceptor, @unchecked Sendable {
    struct Calls { var count = 0, errors = 0, totalNs: UInt64 = 0, maxNs: UInt64 = 0 }
    private let calls = Locked<[String: Calls]>([:])
    private let started = DispatchTime.now().uptimeNanoseconds

    public init() {}

    /// The suffix of the statistics socket's path, beside the service's.
    public static let socketSuffix = ".stats"

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let t0 = DispatchTime.now().uptimeNanoseconds
        var failed = true
        defer {
            let ns = DispatchTime.now().uptimeNanoseconds - t0
            let name = context.descriptor.method
            calls.withLock { d in
                var c = d[name] ?? Calls()
                c.count += 1
                if failed { c.errors += 1 }
                c.totalNs += ns
                c.maxNs = max(c.maxNs, ns)
                d[name] = c
            }
        }
        let response = try await next(request, context)
        if case .success = response.accepted { failed = false }
        return response
    }

    /// The JSON `strata stats` reads.
    func report(store: Store, address: String, fuse: Bool, lazy: LazySnapshots?) -> String {
        var out: [String: Any] = [
            "kind": "snapshotter",
            "pid": Int(getpid()),
            "address": address,
            "driver": fuse ? "fuse" : "overlay",
            "uptime_seconds": Int((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000_000),
        ]
        out["requests"] = calls.withLock { d in
            d.mapValues { c -> [String: Any] in
                ["count": c.count, "errors": c.errors, "mean_us": c.count == 0 ? 0 : Double(c.totalNs) / Double(c.count) / 1000, "max_us": Int(c.maxNs / 1000)]
            }
        }
        if let s = try? store.snapshotSummary() {
            out["snapshots"] = s.kinds
            out["committed_bytes"] = Int(s.committedBytes)
            var local: Int64 = 0, total: Int64 = 0, partial = 0
            for id in s.layers {
                let l = store.storedLayer(id)
                guard l.isLazy, let p = try? l.lazyProgress() else { continue }
                partial += 1
                local += p.local
                total += p.total
            }
            out["layers_shown"] = s.layers.count
            out["partial_layers"] = partial
            out["partial_local_bytes"] = Int(local)
            out["partial_total_bytes"] = Int(total)
        }
        if let lazy {
            let counts = lazy.counts.withLock { $0 }
            out["lazy"] = [
                "pulled_lazily": counts[.lazy] ?? 0,
                "found_in_store": counts[.present] ?? 0,
                "left_to_containerd": counts[.noTOC] ?? 0,
            ]
        } else {
            out["lazy"] = "off"
        }
        guard let data = try? JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
