import Foundation
import Sys
import SystemPackage
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The kernel's btrfs ioctls as the Btrfs driver will use them: a layer is
/// a read-only snapshot of its parent, a container a writable one; what is
/// snapshotted shares its data and is changed apart.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct BtrfsSubvolumeTests {
    @Test func subvolumesSnapshotsAndTheirRemoval() throws {
        let fs = try LoopFilesystem()
        let root = try Sys.open(fs.mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(try Btrfs.isBtrfs(root.raw))
        let other = try Sys.open(NSTemporaryDirectory(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(try !Btrfs.isBtrfs(other.raw), "a temporary directory on ext4 or tmpfs is not btrfs")

        try Btrfs.createSubvolume(in: root.raw, "base")
        #expect(FileOps(fs.mountpoint).write("base/file", "base data") == "ok")
        let base = try Sys.openat(root.raw, "base", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        // A layer: read-only; a container: writable, changed apart from its parent.
        try Btrfs.snapshot(base.raw, in: root.raw, "layer", readOnly: true)
        try Btrfs.snapshot(base.raw, in: root.raw, "container", readOnly: false)
        let f = FileOps(fs.mountpoint)
        #expect(f.read("layer/file") == "base data" && f.read("container/file") == "base data")
        // EROFS (30): a layer's snapshot is read-only.
        #expect(f.write("layer/new", "x") == "errno30", "a layer's snapshot is read-only")
        #expect(f.write("container/file", "changed") == "ok")
        #expect(f.read("base/file") == "base data", "the parent is unchanged")
        // A layer is applied into a writable snapshot, then sealed.
        try Btrfs.snapshot(base.raw, in: root.raw, "sealed", readOnly: false)
        #expect(f.write("sealed/applied", "layer data") == "ok")
        let sealed = try Sys.openat(root.raw, "sealed", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try Btrfs.setReadOnly(sealed.raw, true)
        #expect(f.write("sealed/late", "x") == "errno30" && f.read("sealed/applied") == "layer data")
        // The snapshot is its own subvolume: its own inode number space (256 is a subvolume's root).
        #expect(f.stat("container")?.st_ino == 256)
        // Removal: a snapshot goes; a plain directory is not a subvolume.
        try Btrfs.destroySubvolume(in: root.raw, "container")
        #expect(f.stat("container") == nil)
        #expect(f.mkdir("plain") == "ok")
        #expect(throws: Errno.self) { try Btrfs.destroySubvolume(in: root.raw, "plain") }
        // A name too long for btrfs is refused before the kernel.
        #expect(throws: Errno.fileNameTooLong) { try Btrfs.createSubvolume(in: root.raw, String(repeating: "n", count: 300)) }
        // On a filesystem that is not btrfs the ioctl is refused.
        #expect(throws: Errno.self) { try Btrfs.createSubvolume(in: other.raw, "strata-not-btrfs-\(getpid())") }
    }
}
