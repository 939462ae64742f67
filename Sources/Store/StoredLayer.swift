import Archive
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One layer of the store, whoever made it: an image's layer (named by its
/// chain ID), a container's layer or its `-init` layer. It owns its
/// directory `overlay/<hex>/` and what lies there, as Docker's overlay2
/// lays it out: `diff/` (the tree), `link` (its short name under
/// `overlay/l/`), `lower` (the short names of the layers below, top first),
/// `work/`, `layer.tar` (the archive a push or save sends) and `lazy/` (the
/// pull state of a partly pulled layer). Every front end (the command
/// line, the registry, the union's fetcher, the snapshot API) reaches
/// these through it rather than by putting paths together itself, so that
/// the layout is written down once.
public struct StoredLayer: Sendable {
    public let id: String
    public let store: Store

    init(store: Store, id: String) {
        self.store = store
        self.id = id
    }

    /// Its directory's name under `overlay/` (or `btrfs/layers/`), and its
    /// subvolume's under `btrfs/subvolumes/`.
    var name: String { Digest.hex(id) }
    public var directory: String { "\(store.layersDir)/\(name)" }
    public var diff: String { "\(directory)/diff" }
    /// The btrfs driver's subvolume: the layer's whole tree (its parent's
    /// with its own changes applied), not only what it changed.
    public var subvolume: String { "\(store.subvolumesDir)/\(name)" }
    /// What the layer's files are read from: its diff (overlay), or its
    /// subvolume (btrfs), where the layers below are included.
    public var tree: String { store.layout == .btrfs ? subvolume : diff }
    public var work: String { "\(directory)/work" }
    public var merged: String { "\(directory)/merged" }
    public var archive: String { "\(directory)/layer.tar" }
    public var lazyState: String { "\(directory)/lazy" }

    /// Its row in the store's database (image layers only; nil if absent).
    public func record() throws(StoreError) -> Store.LayerRecord? { try store.layer(id) }

    /// Its short name as a lowerdir entry relative to `overlay/` (`l/ABC…`).
    public func shortLower() throws(StoreError) -> String {
        guard let link = try? String(contentsOfFile: "\(directory)/link", encoding: .utf8), !link.isEmpty else {
            throw StoreError(.corrupt, "layer \(id): its link file \(directory)/link is missing (see 'strata check')")
        }
        return "l/\(link)"
    }

    /// The short names of the layers below it, top first, relative to
    /// `overlay/`; empty for a bottom layer.
    public func lowers() throws(StoreError) -> [String] {
        guard let lower = try? String(contentsOfFile: "\(directory)/lower", encoding: .utf8) else {
            var st = stat()
            if lstat("\(directory)/lower", &st) != 0 && errno == ENOENT { return [] }
            throw StoreError(.corrupt, "layer \(id): its lower file \(directory)/lower is unreadable (see 'strata check')")
        }
        return lower.split(separator: ":").map(String.init)
    }

    /// Names the layer: a fresh short link to its `diff/`, its `link`
    /// file, and its `lower` file listing `below` (short names, top first).
    /// The caller records it only after this: a row without its links
    /// would mount without the layers below it.
    func link(below: [String]) throws(StoreError) {
        let link = Store.shortLink()
        let what = "layer \(name.prefix(12))"
        if symlink("../\(name)/diff", "\(store.overlayDir)/l/\(link)") != 0 {
            throw StoreError.last("\(what): short link l/\(link)")
        }
        do { try link.write(toFile: "\(directory)/link", atomically: true, encoding: .utf8) } catch {
            throw StoreError(.io, "\(what): writing \(directory)/link: \(error.localizedDescription)")
        }
        if below.isEmpty { return }
        do { try below.joined(separator: ":").write(toFile: "\(directory)/lower", atomically: true, encoding: .utf8) } catch {
            throw StoreError(.io, "\(what): writing \(directory)/lower: \(error.localizedDescription)")
        }
    }

    /// Removes its short link and directory. Its record (if it had one) must
    /// be gone first: a command killed between the two leaves a directory no
    /// row names, which `strata check` removes, never a row without files.
    func removeFiles() {
        if store.layout == .btrfs {
            // The subvolume (and what an interrupted apply left), then the rest.
            for n in [name, "\(name).partial"] { removeTree(in: store.subvolumesDir, n) }
            removeTree(in: store.btrfsLayersDir, name)
            return
        }
        if let link = try? String(contentsOfFile: "\(directory)/link", encoding: .utf8), !link.isEmpty, !link.contains("/") {
            unlink("\(store.overlayDir)/l/\(link)")
        }
        removeTree(in: store.overlayDir, name)
    }

    // MARK: lazy state (strata pull --lazy)

    /// Whether the layer is still partly in the registry.
    public var isLazy: Bool {
        var st = stat()
        return lstat("\(lazyState)/source.json", &st) == 0
    }

    public func lazySource() throws(StoreError) -> Store.LazySource {
        let p = "\(lazyState)/source.json"
        guard let d = FileManager.default.contents(atPath: p) else { throw StoreError.last(p) }
        do { return try JSONDecoder().decode(Store.LazySource.self, from: d) } catch {
            throw StoreError(.corrupt, "\(p): unreadable (\(error)); remove the image and pull it again")
        }
    }

    public func lazyTOC() throws(StoreError) -> StargzTOC {
        let p = "\(lazyState)/toc.json"
        guard let d = FileManager.default.contents(atPath: p) else { throw StoreError.last(p) }
        do { return try JSONDecoder().decode(StargzTOC.self, from: d) } catch {
            throw StoreError(.corrupt, "\(p): unreadable (\(error))")
        }
    }

    /// How much of a partly pulled layer is here: bytes of regular files
    /// whose data was fetched, of all.
    public func lazyProgress() throws(StoreError) -> (local: Int64, total: Int64, files: Int, localFiles: Int) {
        let toc = try lazyTOC()
        let rootDir = try openOwned(diff, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let root = rootDir.raw
        var local: Int64 = 0, total: Int64 = 0, files = 0, localFiles = 0
        for e in toc.entries where e.type == "reg" && (e.size ?? 0) > 0 {
            let size = e.size ?? 0
            total += size
            files += 1
            // Opened beneath the layer, no symlink followed: a TOC's names
            // are the registry's, and must not lead out of the layer.
            guard let file = try? Sys.openBeneath(root, e.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, noSymlinks: true) else { continue }
            do throws(Errno) {
                _ = try Sys.getxattr(fd: file.raw, Store.lazyXattr)
            } catch {
                if error == .noData {
                    local += size
                    localFiles += 1
                }
            }
        }
        return (local, total, files, localFiles)
    }

    /// The last step of completing a layer: every file is here and the
    /// blob checked against its diff ID (by the caller), so the layer
    /// becomes an ordinary one, as a full pull leaves it (`layer.tar` kept
    /// for a push). Safe while a mount reads it: only marks go.
    public func finishLazy(plainTar: String) throws(StoreError) {
        try store.exclusively { () throws(StoreError) in
            guard isLazy else { return }
            let (_, _, files, localFiles) = try lazyProgress()
            if files != localFiles {
                throw StoreError(.corrupt, "layer \(id): \(files - localFiles) files are still not fetched; run 'strata pull' again")
            }
            if rename(plainTar, archive) != 0 { throw StoreError.last("keeping layer \(id)'s archive") }
            do throws(Errno) { try PathXattr.remove(diff, Store.lazyXattr) } catch {
                if error != .noData { throw StoreError.failed("layer \(id): its mark", error) }
            }
            _ = removeTree(path: lazyState)
        }
    }

    /// The layer whose pull state directory is `state`: the union's daemon
    /// is handed only that (the mark on the layer's root names it), and
    /// finds the store and the layer from it.
    public static func owning(lazyState state: String) throws(StoreError) -> StoredLayer {
        let url = URL(fileURLWithPath: state).standardized
        let layerDir = url.deletingLastPathComponent()
        let overlay = layerDir.deletingLastPathComponent()
        guard url.lastPathComponent == "lazy", overlay.lastPathComponent == "overlay" else {
            throw StoreError(.corrupt, "\(state) is not a layer's pull state (<store>/overlay/<layer>/lazy)")
        }
        let store = try Store(root: overlay.deletingLastPathComponent().path, recovering: false)
        return StoredLayer(store: store, id: "sha256:" + layerDir.lastPathComponent)
    }
}

extension Store {
    /// The layer `id` (a chain ID, or a container's layer), present or not.
    public func storedLayer(_ id: String) -> StoredLayer { StoredLayer(store: self, id: id) }
}
