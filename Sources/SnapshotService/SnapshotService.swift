import Foundation
import GRPCCore
import Store
import SwiftProtobuf

typealias Snap = Containerd_Services_Snapshots_V1_Snapshots

/// containerd's snapshot service (`containerd.services.snapshots.v1`) over
/// the store's snapshot API: each call is one store verb, and the store's
/// refusals become the status codes containerd's errdefs reads (NotFound,
/// AlreadyExists, FailedPrecondition, InvalidArgument).
public struct SnapshotService: Snap.SimpleServiceProtocol {
    let store: Store
    /// Mounts through Strata's union instead of the kernel's overlayfs
    /// (`--driver fuse`).
    let fuse: Bool
    /// Lazy pulling of layers the CRI plugin labels (nil: off).
    let lazy: LazySnapshots?

    public init(store: Store, fuse: Bool, lazy: LazySnapshots? = nil) {
        self.store = store
        self.fuse = fuse
        self.lazy = lazy
    }

    /// Options for the union of a stack holding lazily pulled layers
    /// (`--lazy-fetch`, `--lazy-readahead`).
    var lazyMountOptions: [String] { lazy?.mountOptions ?? [] }

    /// Runs a store call off the async executor (the store blocks on its
    /// lock and on the disk), its refusal turned into an RPC status.
    func call<R: Sendable>(_ body: @escaping @Sendable () throws(SnapshotError) -> R) async throws -> R {
        let result: Result<R, SnapshotError> = await withCheckedContinuation { c in
            DispatchQueue.global().async {
                do throws(SnapshotError) { c.resume(returning: .success(try body())) } catch { c.resume(returning: .failure(error)) }
            }
        }
        switch result {
        case .success(let r): return r
        case .failure(let e): throw Self.status(e)
        }
    }

    static func status(_ e: SnapshotError) -> RPCError {
        let code: RPCError.Code
        switch e.kind {
        case .notFound: code = .notFound
        case .alreadyExists: code = .alreadyExists
        case .failedPrecondition: code = .failedPrecondition
        case .invalidArgument: code = .invalidArgument
        case .internal: code = .internalError
        }
        return RPCError(code: code, message: e.message)
    }

    func wire(_ mounts: [SnapshotMount]) -> [Containerd_Types_Mount] {
        mounts.map { m in
            var w = Containerd_Types_Mount()
            if fuse && m.type == "overlay" {
                // Performed by containerd through mount.fuse3, which runs
                // `strata-overlay overlay TARGET -o OPTIONS`.
                w.type = "fuse3.strata-overlay"
            } else {
                w.type = m.type
            }
            w.source = m.source
            w.options = m.type == "fuse3.strata" ? m.options + lazyMountOptions : m.options
            return w
        }
    }

    static func wire(_ i: SnapshotInfo) -> Containerd_Services_Snapshots_V1_Info {
        var w = Containerd_Services_Snapshots_V1_Info()
        w.name = i.name
        w.parent = i.parent ?? ""
        switch i.kind {
        case .view: w.kind = .view
        case .active: w.kind = .active
        case .committed: w.kind = .committed
        }
        w.createdAt = Google_Protobuf_Timestamp(date: i.created)
        w.updatedAt = Google_Protobuf_Timestamp(date: i.updated)
        w.labels = i.labels
        return w
    }

    public func prepare(request: Containerd_Services_Snapshots_V1_PrepareSnapshotRequest,
                        context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_PrepareSnapshotResponse {
        let store = self.store
        if let lazy {
            let done: Bool
            do { done = try await lazy.prepare(store: store, labels: request.labels, parent: request.parent) } catch let e as SnapshotError {
                throw Self.status(e)
            } catch {
                throw RPCError(code: .unavailable, message: "lazy pull for \(request.key): \(error)")
            }
            if done {
                throw RPCError(code: .alreadyExists, message: "target snapshot \(request.labels[LazySnapshots.targetLabel] ?? "") already exists")
            }
        }
        let mounts = try await call { () throws(SnapshotError) in try store.prepareSnapshot(request.key, parent: request.parent, labels: request.labels) }
        var r = Containerd_Services_Snapshots_V1_PrepareSnapshotResponse()
        r.mounts = wire(mounts)
        return r
    }

    public func view(request: Containerd_Services_Snapshots_V1_ViewSnapshotRequest,
                     context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_ViewSnapshotResponse {
        let store = self.store
        let mounts = try await call { () throws(SnapshotError) in try store.viewSnapshot(request.key, parent: request.parent, labels: request.labels) }
        var r = Containerd_Services_Snapshots_V1_ViewSnapshotResponse()
        r.mounts = wire(mounts)
        return r
    }

    public func mounts(request: Containerd_Services_Snapshots_V1_MountsRequest,
                       context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_MountsResponse {
        let store = self.store
        let mounts = try await call { () throws(SnapshotError) in try store.snapshotMounts(request.key) }
        var r = Containerd_Services_Snapshots_V1_MountsResponse()
        r.mounts = wire(mounts)
        return r
    }

    public func commit(request: Containerd_Services_Snapshots_V1_CommitSnapshotRequest,
                       context: ServerContext) async throws -> Google_Protobuf_Empty {
        let store = self.store
        try await call { () throws(SnapshotError) in try store.commitSnapshot(request.name, key: request.key, labels: request.labels) }
        return Google_Protobuf_Empty()
    }

    public func remove(request: Containerd_Services_Snapshots_V1_RemoveSnapshotRequest,
                       context: ServerContext) async throws -> Google_Protobuf_Empty {
        let store = self.store
        try await call { () throws(SnapshotError) in try store.removeSnapshot(request.key) }
        return Google_Protobuf_Empty()
    }

    public func stat(request: Containerd_Services_Snapshots_V1_StatSnapshotRequest,
                     context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_StatSnapshotResponse {
        let store = self.store
        let info = try await call { () throws(SnapshotError) in try store.statSnapshot(request.key) }
        var r = Containerd_Services_Snapshots_V1_StatSnapshotResponse()
        r.info = Self.wire(info)
        return r
    }

    public func update(request: Containerd_Services_Snapshots_V1_UpdateSnapshotRequest,
                       context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_UpdateSnapshotResponse {
        let store = self.store
        let wanted = SnapshotInfo(name: request.info.name, parent: nil, kind: .active, created: Date(), updated: Date(), labels: request.info.labels)
        let paths = request.updateMask.paths
        let info = try await call { () throws(SnapshotError) in try store.updateSnapshot(wanted, paths: paths) }
        var r = Containerd_Services_Snapshots_V1_UpdateSnapshotResponse()
        r.info = Self.wire(info)
        return r
    }

    public func list(request: Containerd_Services_Snapshots_V1_ListSnapshotsRequest,
                     response: RPCWriter<Containerd_Services_Snapshots_V1_ListSnapshotsResponse>,
                     context: ServerContext) async throws {
        let store = self.store
        let filters: [SnapshotFilter]
        do throws(SnapshotError) { filters = try request.filters.map { (f) throws(SnapshotError) in try SnapshotFilter(f) } } catch {
            throw Self.status(error)
        }
        let all = try await call { () throws(SnapshotError) in try store.snapshots() }
        let matching = all.filter { i in i.isContainerd && (filters.isEmpty || filters.contains { $0.matches(i) }) }
        // In batches, as containerd's own service sends them.
        var i = 0
        while i < matching.count {
            var r = Containerd_Services_Snapshots_V1_ListSnapshotsResponse()
            r.info = matching[i..<min(i + 100, matching.count)].map(Self.wire)
            try await response.write(r)
            i += 100
        }
    }

    public func usage(request: Containerd_Services_Snapshots_V1_UsageRequest,
                      context: ServerContext) async throws -> Containerd_Services_Snapshots_V1_UsageResponse {
        let store = self.store
        let u = try await call { () throws(SnapshotError) in try store.snapshotUsage(request.key) }
        var r = Containerd_Services_Snapshots_V1_UsageResponse()
        r.size = u.size
        r.inodes = u.inodes
        return r
    }

    public func cleanup(request: Containerd_Services_Snapshots_V1_CleanupRequest,
                        context: ServerContext) async throws -> Google_Protobuf_Empty {
        let store = self.store
        _ = try await call { () throws(SnapshotError) in try store.cleanupSnapshots() }
        return Google_Protobuf_Empty()
    }
}
