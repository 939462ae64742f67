import Archive
import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Layer archives in and out: the shared fixtures (docker-save and OCI, plain
/// and gzip layers), hostile archives, and reproducible output.
@Suite(.serialized)
struct LayerArchiveTests {
    static var fixtures: String { MountEnvironment.fixtures }

    /// The layer files of an unpacked fixture, bottom first.
    func layerFiles(_ kind: String, _ t: TempDir) throws -> [String] {
        let dir = t.sub("image-\(kind)")
        let r = runProgram("/bin/tar", ["xf", "\(Self.fixtures)/busybox-l3.\(kind).tar", "-C", dir])
        try #require(r.status == 0, "tar: \(r.stderr)")
        func json(_ p: String) throws -> Any { try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) }
        if kind == "docker" {
            let m = try #require((try json("\(dir)/manifest.json") as? [[String: Any]])?.first)
            let layers = try #require(m["Layers"] as? [String])
            return layers.map { "\(dir)/\($0)" }
        }
        func blob(_ digest: String) -> String { "\(dir)/blobs/" + digest.replacingOccurrences(of: ":", with: "/") }
        let index = try #require(try json("\(dir)/index.json") as? [String: Any])
        let desc = try #require((index["manifests"] as? [[String: Any]])?.first?["digest"] as? String)
        let manifest = try #require(try json(blob(desc)) as? [String: Any])
        let layers = try #require(manifest["layers"] as? [[String: Any]])
        return layers.compactMap { $0["digest"] as? String }.map(blob)
    }

    func applyAll(_ files: [String], _ t: TempDir, _ tag: String) throws -> [String] {
        var dirs: [String] = []
        for (i, f) in files.enumerated() {
            let d = "\(t.path)/\(tag)-layer\(i)"
            _ = try LayerApplier().apply(file: f, to: d)
            dirs.append(d)
        }
        return dirs
    }

    /// What the fixture's README says the merged image holds.
    func checkMerged(_ m: String, _ label: String) {
        let o = FileOps(m)
        #expect(o.ls("opt/app/conf") == "only.conf", "\(label)")
        #expect(o.read("opt/app/delete-me.txt") == "ENOENT", "\(label)")
        #expect(o.ls("opt/app/l2") == "a,rel-link", "\(label)")
        #expect(o.stat("var/log") == nil, "\(label)")
        #expect(o.stat("bin/vi") == nil, "\(label)")
        #expect(o.readlink("opt/app/l2/rel-link") == "../keep.txt", "\(label)")
        #expect(o.stat("bin/busybox") != nil, "\(label)")
        #expect(o.stat("tmp").map { $0.st_mode & 0o7777 } == 0o1777, "\(label)")
    }

    @Test(.enabled(if: MountEnvironment.available), arguments: ["docker", "oci"])
    func fixtureLayersApplyAndMergeAsTheImageSays(_ kind: String) throws {
        let t = TempDir()
        let dirs = try applyAll(try layerFiles(kind, t), t, kind)
        #expect(dirs.count == 3)
        // Layer 2's whiteouts are devices now; layer 3's opaque mark an xattr.
        var st = stat()
        #expect(lstat("\(dirs[1])/opt/app/delete-me.txt", &st) == 0 && st.st_mode & Linux.S_IFMT == Linux.S_IFCHR)
        #expect(TreeSnapshot.xattrs("\(dirs[2])/opt/app/conf", ["trusted."])["trusted.overlay.opaque"] == Array("y".utf8))
        let lower = dirs.reversed().joined(separator: ":")
        let km = t.sub("kernel"), sm = t.sub("strata")
        #expect(runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", "lowerdir=\(lower)", km]).status == 0)
        defer { umount2(km, Int32(MNT_DETACH)) }
        let r = runProgram(MountEnvironment.binary, ["mount", "-o", "lowerdir=\(lower)", sm])
        #expect(r.status == 0, "\(r.stderr)")
        defer { umount2(sm, Int32(MNT_DETACH)) }
        checkMerged(km, "kernel")
        checkMerged(sm, "strata")
        #expect(TreeSnapshot.diff(TreeSnapshot.take(km), TreeSnapshot.take(sm), labels: ("kernel", "strata")) == [])
    }

    @Test func dockerAndOCIFixturesGiveTheSameLayers() throws {
        let t = TempDir()
        let a = try applyAll(try layerFiles("docker", t), t, "d")
        let b = try applyAll(try layerFiles("oci", t), t, "o")
        for (x, y) in zip(a, b) {
            #expect(TreeSnapshot.diff(TreeSnapshot.take(x), TreeSnapshot.take(y), labels: ("docker", "oci")) == [])
        }
    }

    @Test func writerIsReproducibleAndRoundTrips() throws {
        let t = TempDir()
        let layers = try applyAll(try layerFiles("docker", t), t, "d")
        for (i, layer) in layers.enumerated() {
            var digests: [String] = []
            for n in 0..<2 {
                let out = "\(t.path)/out\(i)-\(n).tar"
                let fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                try LayerWriter().write(directory: layer, to: fd)
                close(fd)
                digests.append(runProgram("/usr/bin/sha256sum", [out]).stdout.split(separator: " ").first.map(String.init) ?? "")
            }
            #expect(digests[0] == digests[1] && !digests[0].isEmpty, "layer \(i) is not reproducible")
            let back = "\(t.path)/back\(i)"
            _ = try LayerApplier().apply(file: "\(t.path)/out\(i)-0.tar", to: back)
            #expect(TreeSnapshot.diff(TreeSnapshot.take(layer), TreeSnapshot.take(back), labels: ("applied", "round trip")) == [])
        }
    }

    /// An upper written by the kernel's overlayfs, as a layer: whiteouts
    /// (shared inode, nlink > 1) and opaque marks in OCI form, which applied
    /// on the lowers give the same merged tree.
    @Test(.enabled(if: MountEnvironment.available))
    func kernelUpperBecomesALayerWithTheSameMergedView() throws {
        let t = TempDir()
        let lowers = try applyAll(try layerFiles("docker", t), t, "d")
        let lower = lowers.reversed().joined(separator: ":")
        let u = t.sub("u"), w = t.sub("w"), m = t.sub("m")
        #expect(runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", "lowerdir=\(lower),upperdir=\(u),workdir=\(w)", m]).status == 0)
        let o = FileOps(m)
        _ = o.unlink("etc/passwd"); _ = o.unlink("etc/group")
        _ = runProgram("/bin/rm", ["-rf", "\(m)/opt/app/l2"]); _ = o.mkdir("opt/app/l2"); _ = o.write("opt/app/l2/new", "n")
        _ = o.write("etc/motd", "changed"); _ = o.link("etc/motd", "etc/motd2")
        let before = TreeSnapshot.take(m, times: false)
        umount2(m, Int32(MNT_DETACH))
        let tar = "\(t.path)/upper.tar"
        let fd = open(tar, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        try LayerWriter().write(directory: u, to: fd)
        close(fd)
        let listing = runProgram("/bin/tar", ["tf", tar]).stdout
        #expect(listing.contains("etc/.wh.passwd") && listing.contains("etc/.wh.group") && listing.contains("opt/app/l2/.wh..wh..opq"))
        let applied = "\(t.path)/applied"
        _ = try LayerApplier().apply(file: tar, to: applied)
        let m2 = t.sub("m2")
        #expect(runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", "lowerdir=\(applied):\(lower)", m2]).status == 0)
        defer { umount2(m2, Int32(MNT_DETACH)) }
        #expect(TreeSnapshot.diff(before, TreeSnapshot.take(m2, times: false), labels: ("overlay", "layer applied")) == [])
    }
}
