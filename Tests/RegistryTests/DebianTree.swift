import Foundation
import Sys
import Testing
import TestSupport

/// The image the engines' lazy-pull tests use: a small Debian tree.
enum DebianTree {
    /// A small Debian tree (this machine's own packages, `Tests/cri/debian_image.py`),
    /// loaded into a store and pushed with `compression`. Returns the
    /// uncompressed size of its layers.
    static func push(_ reg: LocalRegistry, _ t: TempDir, compression: String, as image: String) throws -> Int {
        let dir = ((#filePath as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent + "/cri"
        let made = runProgram("/usr/bin/python3", ["\(dir)/debian_image.py", "\(t.path)/debian.tar", "localhost/debian:mini"])
        try #require(made.status == 0, "\(made.stderr)")
        if compression.hasPrefix("skopeo:") {
            // skopeo straight from the archive, compressing as it copies.
            let skopeo = try #require(Spawn.which("skopeo"), "skopeo missing: apt-get install skopeo")
            let copy = runProgram(skopeo, ["copy", "--dest-tls-verify=false", "--dest-compress-format", String(compression.dropFirst(7)),
                                           "docker-archive:\(t.path)/debian.tar", "docker://\(image)"])
            try #require(copy.status == 0, "\(copy.stderr)")
        } else if compression.hasPrefix("podman:") || compression.hasPrefix("buildah:") {
            // Made by another tool: podman's or buildah's own zstd:chunked
            // (containers/storage's writer), from one private store.
            let podman = try #require(Spawn.which("podman"), "podman missing: apt-get install podman")
            let p = ["--root", "\(t.path)/podman/root", "--runroot", "\(t.path)/podman/run", "--storage-driver", "vfs"]
            let load = runProgram(podman, p + ["load", "-i", "\(t.path)/debian.tar"])
            try #require(load.status == 0, "\(load.stderr)")
            let tool = compression.hasPrefix("podman:") ? podman : try #require(Spawn.which("buildah"), "buildah missing: apt-get install buildah")
            let format = String(compression.split(separator: ":", maxSplits: 1)[1])
            let push = runProgram(tool, p + ["push", "--tls-verify=false", "--compression-format", format,
                                             "localhost/debian:mini", "docker://\(image)"])
            try #require(push.status == 0, "\(push.stderr)")
        } else {
            let strata = MountEnvironment.binary
            let load = runProgram(strata, ["image", "load", "--root", "\(t.path)/store", "-i", "\(t.path)/debian.tar"])
            try #require(load.status == 0, "\(load.stderr)")
            let push = runProgram(strata, ["push", "--root", "\(t.path)/store", "--compression", compression, "localhost/debian:mini", image])
            try #require(push.status == 0, "\(push.stderr)")
        }
        return Int(made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

}
