import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a test's setup could not be made (a missing tool, a failed call).
public struct SetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A btrfs made by the test on a loop device, mounted under a temporary
/// directory; unmounted and detached at the end, even when a test failed.
public final class BtrfsLoop {
    public let dir: TempDir
    public let mountpoint: String
    public private(set) var device = ""

    public init(sizeMiB: Int = 256) throws {
        dir = TempDir("strata-btrfs")
        mountpoint = dir.sub("mnt")
        let image = "\(dir.path)/disk.img"
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(sizeMiB) << 20) == 0 else {
            throw SetupError("cannot make \(image): \(String(cString: strerror(errno)))")
        }
        // mkfs.btrfs first checks that the image is not mounted, by looking
        // at every mount: another test's FUSE mount whose daemon it just
        // killed answers ENOTCONN and fails that check. In a mount
        // namespace of its own, with the copies of FUSE mounts dropped,
        // nothing else is seen.
        let script = #"for m in $(awk '$3 ~ /^fuse/ {print $2}' /proc/self/mounts); do umount -l "$m" 2>/dev/null; done; exec /usr/sbin/mkfs.btrfs -q -f "$0""#
        let mkfs = runProgram("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c", script, image])
        guard mkfs.status == 0 else { throw SetupError("mkfs.btrfs (apt-get install btrfs-progs): \(mkfs.stderr)") }
        let loop = runProgram("/usr/sbin/losetup", ["-f", "--show", image])
        guard loop.status == 0 else { throw SetupError("losetup: \(loop.stderr)") }
        device = loop.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let m = runProgram("/bin/mount", ["-t", "btrfs", device, mountpoint])
        if m.status != 0 {
            _ = runProgram("/usr/sbin/losetup", ["-d", device])
            throw SetupError("mount -t btrfs: \(m.stderr)")
        }
    }

    /// A new directory on the btrfs.
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

