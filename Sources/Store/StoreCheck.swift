import Archive
import Foundation
import GRDB
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata check`: the store against its database. Every layer row has its
/// complete directory (`diff`, `link`, the `l/` short link, `lower` naming
/// its parents), every image its layers, every container its two layers;
/// every directory and short link is named by a row. With `content`, each
/// layer's kept tar is hashed against its diff ID.
extension Store {
    public struct Problem: Sendable, CustomStringConvertible {
        public enum Fix: Sendable {
            /// Half-made: removed by a repair.
            case remove(String)
            /// Derived from the database: written again by a repair.
            case relink(link: String, target: String)
            case rewrite(path: String, content: String)
            /// The layer's tree is gone or damaged but its tar is whole:
            /// unpacked again by a repair.
            case reunpack(chainID: String, diffID: String)
            /// Data that is gone: pull or load the image again.
            case none
        }
        public let message: String
        public let fix: Fix
        /// The problem's class first: `leftover` (half-made by a command that
        /// was killed; the next command that changes the store removes it),
        /// `mendable` (rewritten from the database by --repair), or `lost`
        /// (data gone; load or pull again).
        public var description: String { "\(kind): \(message)" }
        public var kind: String {
            switch fix {
            case .remove: "leftover"
            case .relink, .rewrite, .reunpack: "mendable"
            case .none: "lost"
            }
        }
    }

    /// Reports the store as it is: a command killed part way is reported,
    /// not undone (see `repair`, and every command that changes the store).
    public func check(content: Bool = false) throws(StoreError) -> [Problem] {
        try lock.exclusively(recovering: false) { () throws(StoreError) -> [Problem] in
            var out = try checkLocked(content: content)
            for i in lock.interrupted {
                out.insert(Problem(message: "a command was killed while changing the store (\(root)/tmp/intents/\(i)); "
                                   + "the next command that changes the store undoes what it half-made", fix: .remove("")), at: 0)
            }
            return out
        }
    }

    /// Repairs what `check` found that can be repaired; returns what is left.
    public func repair(content: Bool = false, progress: (String) -> Void = { _ in }) throws(StoreError) -> [Problem] {
        try exclusively { () throws(StoreError) -> [Problem] in
            for p in try checkLocked(content: content) { apply(p.fix, progress: progress) }
            return try checkLocked(content: content)
        }
    }

    /// Undoes what a killed command half-made (its intent was found): what
    /// no row names goes, and what the rows say is written again. Also
    /// removes scratch files in tmp/ of processes that are gone.
    func recoverInterrupted() {
        for p in (try? checkLocked(content: false)) ?? [] {
            switch p.fix {
            case .remove, .relink, .rewrite: apply(p.fix, progress: { _ in })
            case .reunpack, .none: break
            }
        }
        for e in (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp")) ?? [] {
            guard let pid = Self.scratchOwner(e), kill(pid, 0) != 0 && errno == ESRCH else { continue }
            removeTree(in: "\(root)/tmp", e)
        }
    }

    /// A private path in tmp/ for this process: `KIND-pPID-RANDOM`, so that
    /// what a killed process leaves is known for garbage.
    public func scratch(_ kind: String, suffix: String = "") -> String {
        "\(root)/tmp/\(kind)-p\(getpid())-\(UInt32.random(in: 0...UInt32.max))\(suffix)"
    }

    static func scratchOwner(_ name: String) -> pid_t? {
        guard let r = name.range(of: "-p") else { return nil }
        let digits = name[r.upperBound...].prefix { $0.isNumber }
        return digits.isEmpty ? nil : pid_t(digits)
    }

    /// Says "removed" only for what is gone: what could not be removed
    /// (another user's files, a busy mount) is found again by the check
    /// that follows a repair, and listed as a problem.
    static func sayRemoved(_ path: String, _ progress: (String) -> Void) {
        var st = stat()
        if lstat(path, &st) != 0 && errno == ENOENT { progress("removed \(path)") }
    }

    private func apply(_ fix: Problem.Fix, progress: (String) -> Void) {
        switch fix {
        case .remove(let path) where path.hasPrefix(snapshotsDir + "/"):
            removeTree(in: snapshotsDir, String(path.dropFirst(snapshotsDir.count + 1)))
            Self.sayRemoved(path, progress)
        case .remove(let path) where path.hasPrefix("\(root)/btrfs/"):
            removeTree(path: path)
            Self.sayRemoved(path, progress)
        case .remove(let path) where path.hasPrefix(overlayDir + "/"):
            if let dir = try? Sys.open(overlayDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) {
                let fd = dir.raw
                let rel = String(path.dropFirst(overlayDir.count + 1))
                var st = stat()
                if fstatat(fd, rel, &st, Linux.AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFDIR {
                    removeTree(fd, rel)
                } else {
                    unlinkat(fd, rel, 0)
                }
            }
            Self.sayRemoved(path, progress)
        case .relink(let link, let target):
            unlink(link)
            if symlink(target, link) == 0 { progress("relinked \(link)") }
        case .rewrite(let path, let text):
            do { try text.write(toFile: path, atomically: true, encoding: .utf8); progress("rewrote \(path)") } catch {}
        case .reunpack(let chainID, let diffID) where layout == .btrfs:
            let l = storedLayer(chainID)
            do {
                _ = try applySubvolume(chainID, parent: (try? layer(chainID))??.parent, file: l.archive, label: "layer \(diffID)")
                progress("made layer \(Digest.hex(diffID).prefix(12))'s subvolume again from its tar")
            } catch { progress("layer \(Digest.hex(diffID).prefix(12)): \(error)") }
        case .reunpack(let chainID, let diffID):
            let d = storedLayer(chainID).directory
            removeTree(in: d, "diff")
            do {
                _ = try LayerApplier().apply(file: "\(d)/layer.tar", to: "\(d)/diff")
                progress("unpacked layer \(Digest.hex(diffID).prefix(12)) again from its tar")
            } catch { progress("layer \(Digest.hex(diffID).prefix(12)): \(error)") }
        case .remove, .none:
            break
        }
    }

    private func checkLocked(content: Bool) throws(StoreError) -> [Problem] {
        var problems: [Problem] = []
        func report(_ m: String, _ fix: Problem.Fix) { problems.append(Problem(message: m, fix: fix)) }
        let (layers, images, containers): ([LayerRecord], [ImageRecord], [ContainerRecord])
        do {
            (layers, images, containers) = try db.queue.read { db in
                (try LayerRecord.fetchAll(db), try ImageRecord.fetchAll(db), try ContainerRecord.fetchAll(db))
            }
        } catch { throw StoreError(.database, "reading \(root)/strata.db: \(error)") }
        let byID = Dictionary(layers.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        if layout == .btrfs {
            problems += btrfsProblems(layers: layers, images: images, containers: containers, content: content)
            problems += (try? snapshotProblems()) ?? []
            return problems
        }
        var named = Set<String>()        // directory names under overlay/ that rows account for
        var links = Set<String>()        // short links that rows account for

        func isDir(_ p: String) -> Bool { var st = stat(); return lstat(p, &st) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFDIR }
        func text(_ p: String) -> String? { try? String(contentsOfFile: p, encoding: .utf8) }
        func checkLink(_ owner: String, _ name: String, _ link: String) {
            links.insert(link)
            let d = "\(overlayDir)/\(name)"
            if text("\(d)/link") != link { report("\(owner): \(d)/link does not hold its short name \(link)", .rewrite(path: "\(d)/link", content: link)) }
            let l = "\(overlayDir)/l/\(link)"
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink(l, &buf, buf.count - 1)
            let target = "../\(name)/diff"
            if n < 0 || String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) != target {
                report("\(owner): short link \(l) is missing or wrong", .relink(link: l, target: target))
            }
        }
        func lowerChain(_ parent: String?) -> String? {
            var out: [String] = []
            var cur = parent
            while let id = cur {
                guard let rec = byID[id] else { return nil }
                out.append("l/\(rec.link)")
                cur = rec.parent
            }
            return out.joined(separator: ":")
        }

        for l in layers {
            let hex = Digest.hex(l.id)
            named.insert(hex)
            let d = storedLayer(l.id).directory
            let what = "layer \(Digest.hex(l.diffID).prefix(12)) (\(hex.prefix(12)))"
            guard isDir(d) else {
                report("\(what): its directory \(d) is missing; load or pull its image again", .none)
                continue
            }
            let hasTar = access("\(d)/layer.tar", R_OK) == 0
            if !isDir("\(d)/diff") {
                report("\(what): \(d)/diff is missing", hasTar ? .reunpack(chainID: l.id, diffID: l.diffID) : .none)
            }
            checkLink(what, hex, l.link)
            if let p = l.parent, byID[p] == nil { report("\(what): its parent layer \(p) has no row", .none) }
            if let chain = lowerChain(l.parent), (text("\(d)/lower") ?? "") != chain {
                report("\(what): \(d)/lower does not name its parents", chain.isEmpty ? .remove("\(d)/lower") : .rewrite(path: "\(d)/lower", content: chain))
            }
            if content {
                if hasTar {
                    if let got = try? Digest.ofFile("\(d)/layer.tar"), got != l.diffID {
                        report("\(what): layer.tar has digest \(got), not its diff ID; load or pull its image again", .none)
                    }
                } else {
                    report("\(what): no layer.tar kept, its content cannot be verified", .none)
                }
            }
        }
        for img in images {
            for l in img.layerIDs where byID[l] == nil {
                report("image \(Digest.hex(img.id).prefix(12)): layer \(Digest.hex(l).prefix(12)) has no row; load or pull it again", .none)
            }
        }
        for c in containers {
            let what = "container \(c.name)"
            if !images.contains(where: { $0.id == c.image }) { report("\(what): its image \(c.image) has no row", .none) }
            for name in [c.id, "\(c.id)-init"] {
                named.insert(name)
                let d = "\(overlayDir)/\(name)"
                if let link = text("\(d)/link") { checkLink(what, name, link) } else { report("\(what): \(d)/link is missing", .none) }
                if !isDir("\(d)/diff") { report("\(what): \(d)/diff is missing; remove the container ('strata rm \(c.name)')", .none) }
            }
        }
        // Whatever no row names is left from an interrupted command.
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: overlayDir)) ?? []
        for e in entries.sorted() where e != "l" && !named.contains(e) {
            report("\(overlayDir)/\(e) belongs to no layer or container (left by an interrupted command)", .remove("\(overlayDir)/\(e)"))
        }
        let shortLinks = (try? FileManager.default.contentsOfDirectory(atPath: "\(overlayDir)/l")) ?? []
        for e in shortLinks.sorted() where !links.contains(e) {
            report("short link \(overlayDir)/l/\(e) belongs to no layer or container", .remove("\(overlayDir)/l/\(e)"))
        }
        problems += (try? snapshotProblems()) ?? []
        return problems
    }
}

extension Store {
    /// containerd's snapshots (see Snapshots.swift): every row has its
    /// directory and its parent; every directory under snapshots/ has a row.
    func snapshotProblems() throws(SnapshotError) -> [Problem] {
        var out: [Problem] = []
        let rows: [SnapshotRecord]
        do { rows = try db.queue.read { try SnapshotRecord.fetchAll($0) } } catch { throw SnapshotError(.internal, "\(error)") }
        let names = Set(rows.map(\.name))
        for r in rows {
            let d = snapshotDir(r.number)
            var st = stat()
            if stat("\(d)/fs", &st) != 0 {
                out.append(Problem(message: "snapshot \(r.name): its directory \(d)/fs is missing (remove it from containerd: ctr snapshots rm)", fix: .none))
            }
            if let p = r.parent, !names.contains(p) {
                out.append(Problem(message: "snapshot \(r.name): its parent \(p) is not in the store", fix: .none))
            }
        }
        let owned = Set(rows.map { String($0.number) })
        for n in (try? Sys.directoryNames(AT_FDCWD, snapshotsDir)) ?? [] where !owned.contains(n) {
            out.append(Problem(message: "\(snapshotsDir)/\(n) belongs to no snapshot", fix: .remove("\(snapshotsDir)/\(n)")))
        }
        return out
    }
}
