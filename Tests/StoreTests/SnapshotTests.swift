import Foundation
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The store's snapshot API (containerd's model): every mount it describes
/// is performed here with the kernel, as containerd performs them, and the
/// errors are the ones containerd's errdefs expects.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct SnapshotTests {
    /// Performs `mounts` at `target` as containerd's mount package does.
    func mount(_ mounts: [SnapshotMount], at target: String) -> Bool {
        guard let m = mounts.first, mounts.count == 1 else { return false }
        let bind = m.type == "bind"
        let options = (bind ? ["bind"] : []) + m.options
        return runProgram("/bin/mount", ["-t", bind ? "none" : m.type, "-o", options.joined(separator: ","), m.source, target]).status == 0
    }

    @Test func aChainOfSnapshotsMountsAsContainerdWould() throws {
        let t = TempDir()
        let store = try Store(root: t.path)
        let target = "\(t.path)/mnt"
        mkdir(target, 0o755)
        defer { umount2(target, Int32(MNT_DETACH)) }

        // The bottom layer: an active snapshot without a parent is a bind mount.
        let m1 = try store.prepareSnapshot("extract-1", parent: nil, labels: ["containerd.io/snapshot.ref": "sha256:one"])
        #expect(m1.first?.type == "bind")
        #expect(mount(m1, at: target))
        #expect(FileManager.default.createFile(atPath: "\(target)/a", contents: Data("one".utf8)))
        umount2(target, 0)
        try store.commitSnapshot("sha256:one", key: "extract-1")
        #expect(throws: SnapshotError.self) { try store.statSnapshot("extract-1") }

        // A second layer over it: an overlay.
        let m2 = try store.prepareSnapshot("extract-2", parent: "sha256:one")
        #expect(m2.first?.type == "overlay")
        #expect(mount(m2, at: target))
        #expect(try String(contentsOfFile: "\(target)/a", encoding: .utf8) == "one")
        #expect(FileManager.default.createFile(atPath: "\(target)/b", contents: Data("two".utf8)))
        unlink("\(target)/a")
        umount2(target, 0)
        try store.commitSnapshot("sha256:two", key: "extract-2")

        // A read-only view of the top: the whole chain, the delete included.
        let v = try store.viewSnapshot("view", parent: "sha256:two")
        #expect(mount(v, at: target))
        #expect(FileManager.default.fileExists(atPath: "\(target)/b"))
        #expect(!FileManager.default.fileExists(atPath: "\(target)/a"))
        #expect(open("\(target)/c", O_WRONLY | O_CREAT, 0o644) < 0 && errno == EROFS)
        umount2(target, 0)

        let info = try store.statSnapshot("sha256:one")
        #expect(info.kind == .committed && info.parent == nil && info.labels["containerd.io/snapshot.ref"] == "sha256:one")
        #expect(try store.statSnapshot("sha256:two").parent == "sha256:one")
        #expect(try store.statSnapshot("view").kind == .view)
        let usage = try store.snapshotUsage("sha256:two")
        #expect(usage.inodes == 2 && usage.size > 0, "b and the whiteout of a: \(usage)")
        #expect(try store.snapshots().map(\.name) == ["sha256:one", "sha256:two", "view"])
    }

    @Test func refusalsAreTheOnesContainerdExpects() throws {
        let t = TempDir()
        let store = try Store(root: t.path)
        func kind(_ body: () throws -> Void) -> SnapshotError.Kind? {
            do { try body(); return nil } catch let e as SnapshotError { return e.kind } catch { return .internal }
        }
        #expect(kind { _ = try store.prepareSnapshot("k", parent: "no-such-parent") } == .notFound)
        _ = try store.prepareSnapshot("k", parent: nil)
        #expect(kind { _ = try store.prepareSnapshot("k", parent: nil) } == .alreadyExists)
        #expect(kind { _ = try store.prepareSnapshot("k2", parent: "k") } == .invalidArgument)   // an active parent
        try store.commitSnapshot("c", key: "k")
        #expect(kind { try store.commitSnapshot("c2", key: "c") } == .failedPrecondition)      // a committed key
        _ = try store.prepareSnapshot("k3", parent: "c")
        #expect(kind { try store.commitSnapshot("c", key: "k3") } == .alreadyExists)
        #expect(kind { try store.removeSnapshot("c") } == .failedPrecondition)                 // it has a child
        #expect(kind { try store.removeSnapshot("nothing") } == .notFound)
        #expect(kind { _ = try store.snapshotMounts("c") } == .failedPrecondition)
        // Nothing was lost on the way.
        #expect(try store.snapshots().map(\.name).sorted() == ["c", "k3"])
        try store.removeSnapshot("k3")
        try store.removeSnapshot("c")
        #expect(try store.snapshots().isEmpty)
        #expect(try Sys.directoryNames(AT_FDCWD, "\(t.path)/snapshots").isEmpty)
    }

    @Test func labelsUpdateAndHalfMadeDirectoriesAreCleanedUp() throws {
        let t = TempDir()
        let store = try Store(root: t.path)
        _ = try store.prepareSnapshot("k", parent: nil, labels: ["a": "1", "b": "2"])
        var info = try store.statSnapshot("k")
        info.labels = ["a": "changed", "c": "3"]
        // Only the named labels: a changes, b stays, c is added.
        let updated = try store.updateSnapshot(info, paths: ["labels.a", "labels.c"])
        #expect(updated.labels == ["a": "changed", "b": "2", "c": "3"])
        // All labels when no path is named.
        #expect(try store.updateSnapshot(info, paths: []).labels == ["a": "changed", "c": "3"])
        #expect(throws: SnapshotError.self) { _ = try store.updateSnapshot(info, paths: ["parent"]) }
        // A directory no snapshot owns (a crash between the two): check
        // reports it, and Cleanup removes it.
        mkdir("\(t.path)/snapshots/99", 0o755)
        #expect(try store.check().map(\.description) == ["leftover: \(t.path)/snapshots/99 belongs to no snapshot"])
        #expect(try store.cleanupSnapshots() == 1)
        #expect(try Sys.directoryNames(AT_FDCWD, "\(t.path)/snapshots") == ["1"])
        // Reopened: everything as before.
        let again = try Store(root: t.path)
        #expect(try again.statSnapshot("k").labels == ["a": "changed", "c": "3"])
        #expect(try again.check().isEmpty)
        // A snapshot whose directory went: reported as lost.
        _ = runProgram("/bin/rm", ["-rf", "\(t.path)/snapshots/1"])
        #expect(try again.check().map(\.kind) == ["lost"])
    }
}
