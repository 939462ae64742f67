import CStrata
import Foundation
import Sys
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Three lower layers exercising every lookup rule the kernel knows (l1 is
/// the top-most; the OCI `.wh.` formats, which only Strata reads, are tested
/// on their own):
/// a file in several layers, whiteouts in both formats, an opaque
/// directory, a file over a directory and a directory over a file, hard
/// links, symlinks, and directories merged across layers.
enum Fixture {
    static func write(_ p: String, _ s: String, mode: mode_t = 0o644) {
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode)
        _ = s.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        chmod(p, mode)
    }
    static func dir(_ p: String, mode: mode_t = 0o755) { mkdir(p, mode); chmod(p, mode) }

    static func build(_ base: String) {
        let l1 = "\(base)/l1", l2 = "\(base)/l2", l3 = "\(base)/l3"
        // Bottom layer.
        dir("\(l3)/a"); dir("\(l3)/a/sub"); dir("\(l3)/b"); dir("\(l3)/d3only"); dir("\(l3)/fileover")
        write("\(l3)/a/f1", "l3 f1"); write("\(l3)/a/f2", "l3 f2"); write("\(l3)/a/sub/g", "g")
        write("\(l3)/b/hidden", "hidden by opaque"); write("\(l3)/x", "x from l3", mode: 0o600)
        write("\(l3)/d3only/n", "n"); write("\(l3)/fileover/inside", "under a file")
        write("\(l3)/a/h1", "hard"); link("\(l3)/a/h1", "\(l3)/a/h2")
        symlink("f1", "\(l3)/a/s")
        write("\(l3)/dirover", "a file below a dir")
        write("\(l3)/wh-dev", "whited out by a device"); write("\(l3)/wh-file", "whited out by .wh.")
        dir("\(l3)/gone"); write("\(l3)/gone/y", "y")
        chown("\(l3)/x", 1000, 1000)
        _ = lsetxattr("\(l3)/a/f1", "user.layer", "3", 1, 0)
        // Middle layer.
        dir("\(l2)/a"); write("\(l2)/a/f1", "l2 f1")
        mknod("\(l2)/a/f2", Linux.S_IFCHR, 0)                 // whiteout (device)
        mknod("\(l2)/wh-dev", Linux.S_IFCHR, 0)
        dir("\(l2)/b"); _ = lsetxattr("\(l2)/b", "trusted.overlay.opaque", "y", 1, 0)
        write("\(l2)/b/keep", "kept")
        write("\(l2)/fileover", "a file over a dir")
        dir("\(l2)/gone"); _ = lsetxattr("\(l2)/gone", "trusted.overlay.opaque", "y", 1, 0)
        write("\(l2)/gone/z", "z")
        dir("\(l2)/m2"); write("\(l2)/m2/f", "m2")
        // Top layer.
        dir("\(l1)/a"); write("\(l1)/a/top", "top only")
        dir("\(l1)/dirover"); write("\(l1)/dirover/in", "dir over a file")
        dir("\(l1)/a/sub"); write("\(l1)/a/sub/h", "h")
        write("\(l1)/many", String(repeating: "m", count: 100_000))
    }

    /// The same, with more of its names hard links of one another (in each
    /// layer, and across directories): what index=on keeps together.
    static func buildWithLinks(_ base: String) {
        build(base)
        let l1 = "\(base)/l1", l2 = "\(base)/l2", l3 = "\(base)/l3"
        for (a, b) in [("\(l3)/a/sub/g", "\(l3)/d3only/n"), ("\(l2)/m2/f", "\(l2)/b/keep"), ("\(l1)/a/sub/h", "\(l1)/a/top")] {
            unlink(b)
            link(a, b)
        }
    }
}
