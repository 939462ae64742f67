import CStrata
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The calls that make descriptors. Each returns the descriptor as a
/// `UniqueFD`, its only owner, and throws the errno, as swift-system's
/// `FileDescriptor.open` does; nothing above this module opens or closes a
/// descriptor with the C calls. Inlinable: the lookup path opens through
/// these per request, and must not pay a call into another module.
extension Sys {
    @inlinable
    public static func openat(_ dir: Int32, _ name: UnsafePointer<CChar>, _ flags: Int32, _ mode: mode_t = 0) throws(Errno) -> UniqueFD {
        try UniqueFD(opened: Glibc.openat(dir, name, flags, mode))
    }

    @inlinable
    public static func openat(_ dir: Int32, _ name: String, _ flags: Int32, _ mode: mode_t = 0) throws(Errno) -> UniqueFD {
        try UniqueFD(opened: Glibc.openat(dir, name, flags, mode))
    }

    @inlinable
    public static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) throws(Errno) -> UniqueFD {
        try UniqueFD(opened: Glibc.open(path, flags, mode))
    }

    @inlinable
    public static func dup(_ fd: Int32) throws(Errno) -> UniqueFD {
        try UniqueFD(opened: fcntl(fd, F_DUPFD_CLOEXEC, 0))
    }

    /// openat2 with RESOLVE_BENEATH (and RESOLVE_NO_SYMLINKS when
    /// `noSymlinks`): `path` cannot leave `dir`, whatever its components are.
    public static func openBeneath(_ dir: Int32, _ path: String, _ flags: Int32, _ mode: mode_t = 0, noSymlinks: Bool) throws(Errno) -> UniqueFD {
        try UniqueFD(opened: strata_openat2_beneath(dir, path, flags, mode, noSymlinks ? 1 : 0))
    }

    /// open_by_handle_at; `mount` is any descriptor on the handle's filesystem.
    public static func open(handle: KernelFileHandle, mount: Int32, _ flags: Int32) throws(Errno) -> UniqueFD {
        let fd = handle.bytes.withUnsafeBufferPointer {
            strata_open_by_handle(mount, $0.baseAddress, UInt32($0.count), handle.type, flags)
        }
        return try UniqueFD(opened: fd)
    }

    /// Both ends of a pipe (O_CLOEXEC).
    public static func pipe() throws(Errno) -> DescriptorPair {
        var p: [Int32] = [-1, -1]
        if Glibc.pipe(&p) != 0 { throw currentErrno() }
        let ends = DescriptorPair(read: UniqueFD(taking: p[0]), write: UniqueFD(taking: p[1]))
        _ = fcntl(p[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(p[1], F_SETFD, FD_CLOEXEC)
        return ends
    }

    /// A connected pair of Unix stream sockets (O_CLOEXEC).
    public static func socketPair() throws(Errno) -> DescriptorPair {
        var sv: [Int32] = [-1, -1]
        if socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) != 0 { throw currentErrno() }
        return DescriptorPair(read: UniqueFD(taking: sv[0]), write: UniqueFD(taking: sv[1]))
    }

    public static func socket(_ domain: Int32, _ type: Int32) throws(Errno) -> UniqueFD {
        try UniqueFD(opened: Glibc.socket(domain, type | Int32(SOCK_CLOEXEC.rawValue), 0))
    }

    public static func accept(_ fd: Int32) throws(Errno) -> UniqueFD {
        let c = try UniqueFD(opened: Glibc.accept(fd, nil, nil))
        _ = fcntl(c.raw, F_SETFD, FD_CLOEXEC)
        return c
    }

    /// A descriptor passed over a Unix socket (SCM_RIGHTS); nil when the
    /// peer closed without sending one.
    public static func receiveDescriptor(_ socket: Int32) throws(Errno) -> UniqueFD? {
        var fd: Int32 = -1
        let n = strata_recv_fd(socket, &fd)
        if n < 0 { throw currentErrno() }
        return fd >= 0 ? UniqueFD(taking: fd) : nil
    }

    /// A new /dev/fuse descriptor reading the same connection as `session`
    /// (FUSE_DEV_IOC_CLONE), so that each reader answers on its own.
    public static func cloneFuseDevice(_ session: Int32) throws(Errno) -> UniqueFD {
        let fd = try UniqueFD(opened: Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC))
        try check(strata_fuse_clone(fd.raw, session))
        return fd
    }
}

/// Two descriptors made together (a pipe's ends, a socket pair).
public struct DescriptorPair: ~Copyable {
    public var read: UniqueFD
    public var write: UniqueFD
}

/// A file handle (name_to_handle_at), kept to reopen a directory in one
/// call however deep it is: most are 8 to 20 bytes.
public struct KernelFileHandle: Sendable, Equatable {
    public var bytes: [UInt8]
    public var type: Int32
    public init(bytes: [UInt8], type: Int32) {
        self.bytes = bytes
        self.type = type
    }
}

extension Sys {
    /// The names in directory `name` under `dir` ("." for `dir` itself),
    /// without "." and "..": a descriptor of its own for the listing,
    /// closed before it returns.
    /// `flags`: more open flags (O_NOATIME: listing does not write the
    /// directory's access time).
    public static func directoryNames(_ dir: Int32, _ name: String = ".", flags: Int32 = 0) throws(Errno) -> [String] {
        var fd = try openat(dir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (name == "." ? 0 : O_NOFOLLOW) | flags)
        guard let d = fdopendir(fd.raw) else { throw currentErrno() }
        // The stream owns the descriptor now; closedir closes it.
        _ = fd.release().take()
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let n = withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if n != "." && n != ".." { out.append(n) }
        }
        return out
    }
}
