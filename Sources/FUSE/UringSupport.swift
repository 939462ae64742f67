import Sys

/// Whether this kernel lets a FUSE daemon use io_uring: the module switch
/// is off by default, and only an administrator may turn it on (we never
/// change it for the user).
public enum UringSupport {
    public static let switchPath = "/sys/module/fuse/parameters/enable_uring"

    /// One line for a mount that will serve on /dev/fuse although this
    /// kernel has FUSE over io_uring, only switched off (as distributions
    /// ship it): what turning it on saves and how; nil otherwise (the
    /// switch on, no io_uring in this kernel, or `uring=off` asked for).
    /// The figures are the benchmarks' (docs/BENCHMARKS.md).
    public static func offHint(_ mode: SessionOptions.UringMode, switchPath: String = switchPath) -> String? {
        guard mode == .auto, let v = readSmallFile(switchPath), !(v.hasPrefix("Y") || v.hasPrefix("1")) else { return nil }
        return "FUSE over io_uring is in this kernel but switched off, so this mount serves on /dev/fuse; "
            + "with it on, podman and buildah builds took 26 to 32% less time and a fresh-mount walk 27% less here (docs/BENCHMARKS.md). "
            + "An administrator turns it on with: echo Y > \(Self.switchPath) (or 'options fuse enable_uring=1' in /etc/modprobe.d)"
    }

    /// nil when the switch is on; otherwise one line saying what to do.
    public static func missing(switchPath: String = switchPath) -> String? {
        guard let v = readSmallFile(switchPath) else {
            return "uring=on: this kernel has no FUSE over io_uring (\(Self.switchPath) is missing: needs 6.14+ with CONFIG_FUSE_IO_URING); use uring=auto or off"
        }
        if v.hasPrefix("Y") || v.hasPrefix("1") { return nil }
        return "uring=on: FUSE over io_uring is switched off; as root: echo Y > \(Self.switchPath) (or 'options fuse enable_uring=1' in /etc/modprobe.d), or use uring=auto or off"
    }
}
