import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The operations the crash harness interrupts: every kind of change the
/// union makes to its upper layer.
public enum CrashCases {
    static func file(_ path: String, _ text: String) {
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    }

    /// A file of `mib` MiB of varied bytes (so a half copy shows).
    static func big(_ path: String, mib: Int) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(fd) }
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        for i in 0..<mib {
            for j in stride(from: 0, to: chunk.count, by: 4096) { chunk[j] = UInt8(truncatingIfNeeded: i &* 31 &+ j >> 12) }
            _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }

    /// A 64 MiB file with 4 KiB of data every 4 MiB: the rest are holes.
    static func sparse(_ path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(fd) }
        let block = [UInt8](repeating: 0x5A, count: 4096)
        for i in 0..<16 { _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(i) << 22) } }
        ftruncate(fd, 64 << 20)
    }

    /// A lower tree: `a/` merged over both layers, files small, big and
    /// sparse, a hard link, a tree to delete, a directory to replace.
    static func lowers(_ base: String, bigMiB: Int) {
        let l1 = "\(base)/l1", l2 = "\(base)/l2"
        for d in ["\(l1)/a", "\(l2)/a", "\(l2)/a/sub", "\(l2)/b", "\(l2)/tree", "\(l2)/od"] { mkdir(d, 0o755) }
        file("\(l1)/a/small", "small file in l1\n")
        file("\(l2)/a/sub/deep", "deep\n")
        file("\(l2)/a/low", "only in l2\n")
        big("\(l2)/a/big", mib: bigMiB)
        sparse("\(l2)/a/sparse")
        file("\(l2)/b/linked", "linked\n")
        link("\(l2)/b/linked", "\(l2)/b/linked2")
        for i in 0..<40 {
            mkdir("\(l2)/tree/d\(i % 5)", 0o755)
            file("\(l2)/tree/d\(i % 5)/f\(i)", "tree file \(i)\n")
        }
        file("\(l2)/od/old", "old\n")
    }

    /// Appends one byte, which copies the whole file up.
    static func append(_ o: FileOps, _ p: String) { _ = o.write(p, "+", flags: O_WRONLY | O_APPEND) }

    /// `rm -rf tree`, one unlink or rmdir at a time, depth first.
    static var deleteTree: [@Sendable (FileOps) -> Void] {
        var steps: [@Sendable (FileOps) -> Void] = []
        for i in 0..<40 { steps.append { _ = $0.unlink("tree/d\(i % 5)/f\(i)") } }
        for i in 0..<5 { steps.append { _ = $0.rmdir("tree/d\(i)") } }
        steps.append { _ = $0.rmdir("tree") }
        return steps
    }

    public static func all(bigMiB: Int = 32) -> [CrashCase] {
        let build: @Sendable (String) -> Void = { lowers($0, bigMiB: bigMiB) }
        return [
            CrashCase("copy-up small file", build: build) { append($0, "a/small") },
            CrashCase("copy-up big file", build: build) { append($0, "a/big") },
            CrashCase("copy-up big file, volatile", options: ["volatile"], build: build) { append($0, "a/big") },
            CrashCase("copy-up sparse file", build: build) { append($0, "a/sparse") },
            CrashCase("rename a lower file", build: build) { _ = $0.rename("a/low", "b/moved") },
            CrashCase("rename a merged directory", options: ["redirect_dir=on"], build: build) { _ = $0.rename("a", "renamed") },
            CrashCase("delete a lower file", build: build) { _ = $0.unlink("a/sub/deep") },
            CrashCase("delete a lower tree", build: build, steps: deleteTree),
            // Each step one system call (a symlink is made in one), so each
            // is all or nothing.
            CrashCase("replace a lower directory (opaque)", build: build, steps: [
                { _ = $0.unlink("od/old") }, { _ = $0.rmdir("od") }, { _ = $0.mkdir("od") }, { _ = $0.symlink("target", "od/new") },
            ]),
            CrashCase("link an O_TMPFILE", build: build) { o in
                let fd = open(o.path("a"), Linux.O_TMPFILE | O_RDWR | O_CLOEXEC, 0o640)
                guard fd >= 0 else { return }
                defer { close(fd) }
                _ = "made as a tmpfile\n".withCString { write(fd, $0, strlen($0)) }
                _ = linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, o.path("a/from-tmpfile"), Linux.AT_SYMLINK_FOLLOW)
            },
            // Killed between its copy-up and the link, a link leaves its
            // source copied up (a lower hard link's count then drops to 1),
            // as the kernel's ovl_link does.
            CrashCase("hard-link a lower file", build: build,
                      partial: [{ _ = $0.write("b/linked", "", flags: O_WRONLY | O_APPEND) }]) { _ = $0.link("b/linked", "a/another-link") },
            CrashCase("set an xattr on a lower file", build: build) { _ = $0.setxattr("a/low", "user.note", "set") },
            // metacopy=on: the metadata goes up alone, then a write brings
            // the data in place (the mark removed last); a move records
            // where the data is.
            CrashCase("metadata-only copy-up, then its data", options: ["metacopy=on"], build: build, steps: [
                { _ = $0.lchown("a/big", 1000, 1000) }, { append($0, "a/big") },
            ]),
            CrashCase("move a metadata-only copy", options: ["metacopy=on"], build: build, steps: [
                { _ = $0.chmod("a/low", 0o600) }, { _ = $0.rename("a/low", "b/moved") },
            ]),
            // index=on: one name of a lower hard link copied up into the
            // index, the other linked up and removed, moved, linked again;
            // the union's link count must hold after every system call.
            CrashCase("index: copy up one name of a hard link, remove the other", options: ["index=on"], build: build, steps: [
                { _ = $0.chmod("b/linked", 0o600) }, { _ = $0.unlink("b/linked2") },
            ]),
            CrashCase("index: move a name of a hard link, link it, remove both", options: ["index=on"], build: build, steps: [
                { _ = $0.rename("b/linked2", "a/moved") }, { _ = $0.link("a/moved", "a/third") },
                { _ = $0.unlink("b/linked") }, { _ = $0.unlink("a/moved") },
            ]),
        ]
    }
}
