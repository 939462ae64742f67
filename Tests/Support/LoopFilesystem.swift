import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a test's setup could not be made (a missing tool, a failed call).
public struct SetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A filesystem (btrfs unless told) made by the test on a loop device,
/// mounted under a temporary directory; unmounted and detached at the end,
/// even when a test failed. Also a filesystem no other test allocates on,
/// for what depends on its allocator (an inode number reused at once).
public final class LoopFilesystem {
    public let dir: TempDir
    public let mountpoint: String
    public private(set) var device = ""

    /// `type`: btrfs or ext4 (with its journal: ext4 reuses a freed inode
    /// number at once only then; without one it skips numbers freed in
    /// the last minute).
    public init(_ type: String = "btrfs", sizeMiB: Int = 256) throws {
        dir = TempDir("strata-\(type)")
        mountpoint = dir.sub("mnt")
        let image = "\(dir.path)/disk.img"
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(sizeMiB) << 20) == 0 else {
            throw SetupError("cannot make \(image): \(String(cString: strerror(errno)))")
        }
        let (mkfs, package): ([String], String) = switch type {
        case "btrfs": (["/usr/sbin/mkfs.btrfs", "-q", "-f"], "btrfs-progs")
        case "ext4": (["/usr/sbin/mkfs.ext4", "-q", "-F"], "e2fsprogs")
        default: throw SetupError("no loop filesystem of type \(type)")
        }
        // mkfs first checks that the image is not mounted, by looking at
        // every mount: another test's FUSE mount whose daemon it just
        // killed answers ENOTCONN and fails that check. In a mount
        // namespace of its own, with the copies of FUSE mounts dropped,
        // nothing else is seen.
        let script = #"for m in $(awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts); do umount -l "$m" 2>/dev/null; done; exec "$@""#
        let made = runProgram("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c", script, "sh"] + mkfs + [image])
        guard made.status == 0 else { throw SetupError("\(mkfs[0]) (apt-get install \(package)): \(made.stderr)") }
        let loop = runProgram("/usr/sbin/losetup", ["-f", "--show", image])
        guard loop.status == 0 else { throw SetupError("losetup: \(loop.stderr)") }
        device = loop.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let m = runProgram("/bin/mount", ["-t", type, device, mountpoint])
        if m.status != 0 {
            _ = runProgram("/usr/sbin/losetup", ["-d", device])
            throw SetupError("mount -t \(type): \(m.stderr)")
        }
    }

    /// A new directory on the filesystem.
    public func sub(_ name: String) -> String {
        let p = "\(mountpoint)/\(name)"
        mkdir(p, 0o755)
        return p
    }

    deinit {
        umount2(mountpoint, Int32(MNT_DETACH))
        if !device.isEmpty { _ = runProgram("/usr/sbin/losetup", ["-d", device]) }
    }
}

