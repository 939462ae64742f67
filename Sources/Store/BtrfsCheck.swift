import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// `strata check` on a btrfs store: every layer row has its sealed
/// subvolume and its directory (the kept tar), every container its two
/// subvolumes; every subvolume and directory is named by a row (a
/// `.partial` one is what an interrupted apply left).
extension Store {
    func btrfsProblems(layers: [LayerRecord], images: [ImageRecord], containers: [ContainerRecord], content: Bool) -> [Problem] {
        var out: [Problem] = []
        func report(_ m: String, _ fix: Problem.Fix) { out.append(Problem(message: m, fix: fix)) }
        func isDir(_ p: String) -> Bool { var st = stat(); return lstat(p, &st) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFDIR }
        func isSubvolume(_ p: String) -> Bool {
            guard let fd = try? Sys.open(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) else { return false }
            return Btrfs.isSubvolume(fd.raw)
        }
        let ids = Set(layers.map(\.id))
        var subvolumes = Set<String>(), directories = Set<String>()
        for l in layers {
            let layer = storedLayer(l.id)
            subvolumes.insert(layer.name)
            directories.insert(layer.name)
            let what = "layer \(Digest.hex(l.diffID).prefix(12)) (\(layer.name.prefix(12)))"
            let hasTar = access(layer.archive, R_OK) == 0
            if !isDir(layer.directory) { report("\(what): its directory \(layer.directory) is missing; load or pull its image again", .none) }
            if !isSubvolume(layer.subvolume) {
                report("\(what): its subvolume \(layer.subvolume) is missing",
                       hasTar && (l.parent.map { ids.contains($0) } ?? true) ? .reunpack(chainID: l.id, diffID: l.diffID) : .none)
            }
            if let p = l.parent, !ids.contains(p) { report("\(what): its parent layer \(p) has no row", .none) }
            if content {
                if !hasTar {
                    report("\(what): no layer.tar kept, its content cannot be verified", .none)
                } else if let got = try? Digest.ofFile(layer.archive), got != l.diffID {
                    report("\(what): layer.tar has digest \(got), not its diff ID; load or pull its image again", .none)
                }
            }
        }
        for img in images {
            for l in img.layerIDs where !ids.contains(l) {
                report("image \(Digest.hex(img.id).prefix(12)): layer \(Digest.hex(l).prefix(12)) has no row; load or pull it again", .none)
            }
        }
        for c in containers {
            let what = "container \(c.name)"
            if !images.contains(where: { $0.id == c.image }) { report("\(what): its image \(c.image) has no row", .none) }
            directories.insert(c.id)
            for id in [c.id, "\(c.id)-init"] {
                let l = storedLayer(id)
                subvolumes.insert(l.name)
                if !isSubvolume(l.subvolume) { report("\(what): its subvolume \(l.subvolume) is missing; remove the container ('strata rm \(c.name)')", .none) }
            }
            if !isDir(containerLayer(c).directory) {
                report("\(what): its directory \(containerLayer(c).directory) is missing; remove the container ('strata rm \(c.name)')", .none)
            }
        }
        for e in ((try? Sys.directoryNames(AT_FDCWD, subvolumesDir)) ?? []).sorted() where !subvolumes.contains(e) {
            report("\(subvolumesDir)/\(e) belongs to no layer or container (left by an interrupted command)", .remove("\(subvolumesDir)/\(e)"))
        }
        for e in ((try? Sys.directoryNames(AT_FDCWD, btrfsLayersDir)) ?? []).sorted() where !directories.contains(e) {
            report("\(btrfsLayersDir)/\(e) belongs to no layer or container (left by an interrupted command)", .remove("\(btrfsLayersDir)/\(e)"))
        }
        return out
    }
}
