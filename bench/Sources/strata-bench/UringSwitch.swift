import ArgumentParser
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The kernel's FUSE-over-io_uring opt-in (/sys/module/fuse/parameters/
/// enable_uring): a benchmark that measures the rings turns it on and puts
/// back what it found; it only lets a daemon opt in.
struct UringSwitch {
    static let path = "/sys/module/fuse/parameters/enable_uring"
    let saved: String

    static func turnOn() throws -> UringSwitch {
        guard let v = readSmallFile(path) else {
            throw ValidationError("this kernel has no FUSE over io_uring (\(path) missing); leave strata-uring out of --impls")
        }
        let s = UringSwitch(saved: v.hasPrefix("Y") ? "Y" : "N")
        guard write("Y") else { throw ValidationError("cannot write \(path) (run as root)") }
        return s
    }

    func restore() { _ = Self.write(saved) }

    static func write(_ v: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 { return false }
        defer { close(fd) }
        return v.withCString { Glibc.write(fd, $0, strlen($0)) } > 0
    }
}
