import Sys

/// Whether this kernel lets a FUSE daemon use io_uring: the module switch
/// is off by default, and only an administrator may turn it on (we never
/// change it for the user).
public enum UringSupport {
    public static let switchPath = "/sys/module/fuse/parameters/enable_uring"

    /// nil when the switch is on; otherwise one line saying what to do.
    public static func missing(switchPath: String = switchPath) -> String? {
        guard let v = readSmallFile(switchPath) else {
            return "uring=on: this kernel has no FUSE over io_uring (\(Self.switchPath) is missing: needs 6.14+ with CONFIG_FUSE_IO_URING); use uring=auto or off"
        }
        if v.hasPrefix("Y") || v.hasPrefix("1") { return nil }
        return "uring=on: FUSE over io_uring is switched off; as root: echo Y > \(Self.switchPath) (or 'options fuse enable_uring=1' in /etc/modprobe.d), or use uring=auto or off"
    }
}
