import Sys
import SystemPackage
import Tables
#if canImport(Glibc)
import Glibc
#endif

/// An open file of the union, as the kernel's overlayfs `file.c` keeps one:
/// the descriptor it reads and writes, and whether a copy-up can move it.
///
/// The FUSE side decides only how the kernel serves the file (through the
/// daemon and its page cache, or by passthrough to a backing file); the
/// union keeps the per-inode bookkeeping that decision and copy-up need.
public final class OpenFile: DescriptorBacked, @unchecked Sendable {
    public enum Serving: Sendable, Equatable {
        /// Through the daemon: the kernel's page cache, reads and writes here.
        case daemon
        /// By passthrough to the lower copy; a copy-up must wait for it.
        case passthroughLower
        /// By passthrough to the upper copy, which never moves.
        case passthroughUpper
    }

    public let node: OverlayNode
    public let fd: Int32
    public let writable: Bool
    public let serving: Serving
    /// Reads through the daemon of a lower regular file: a copy-up points
    /// this descriptor at the copy (dup2), as the kernel moves open files.
    public let followsCopyUp: Bool

    private let owner: UniqueFD

    init(node: OverlayNode, fd: consuming UniqueFD, writable: Bool, serving: Serving, followsCopyUp: Bool) {
        self.node = node
        self.fd = fd.raw
        self.owner = fd
        self.writable = writable
        self.serving = serving
        self.followsCopyUp = followsCopyUp
    }
}

/// What an inode has open now, kept under its node's lock.
struct OpenCounts {
    /// Descriptors that follow a copy-up (see `OpenFile.followsCopyUp`).
    var following: Set<Int32> = []
    var passthroughLower = 0
    var passthroughUpper = 0
    var daemon = 0
    /// Every open file of the inode: only an open inode needs a descriptor
    /// kept when its last name goes.
    var all: Int { passthroughLower + passthroughUpper + daemon }
}

/// What the FUSE side sees when it chooses how an open is served.
public struct OpenChoice: Sendable {
    public let inUpper: Bool
    public let isRegular: Bool
    public let size: Int64
    public let mode: UInt32
    /// Opens of this inode in place now, by how they are served.
    public let daemon: Int
    public let passthroughLower: Int
    public let passthroughUpper: Int
}

extension Overlay {
    /// Opens `n` (a write copies it up first) and files the open under the
    /// node's lock with the serving `choose` picks from the opens in place.
    public func open(_ n: OverlayNode, flags: Int32,
                     choose: (OpenChoice) throws(Errno) -> OpenFile.Serving) throws(Errno) -> OpenFile {
        let fd = try openDescriptor(n, flags: flags)
        var st = stat()
        try check(fstat(fd.raw, &st))
        return try adopt(n, fd, st, writable: flags & O_ACCMODE != O_RDONLY, choose: choose)
    }

    /// Files a descriptor opened on `n` by create or tmpfile.
    public func adopt(_ n: OverlayNode, _ fd: consuming UniqueFD, _ st: stat, writable: Bool,
                      choose: (OpenChoice) throws(Errno) -> OpenFile.Serving) throws(Errno) -> OpenFile {
        let regular = st.st_mode & Linux.S_IFMT == Linux.S_IFREG
        // A non-copyable value cannot be captured by the lock's closure:
        // the number goes in, and ownership after the choice succeeded.
        let raw = fd.raw
        let (serving, follows) = try n.state.withLock { (s: inout OverlayNode.State) throws(Errno) -> (OpenFile.Serving, Bool) in
            // A metadata-only copy's data is below: served as a lower file.
            let dataUp = (s.place.inUpper || s.place.indexName != nil) && !s.place.metacopy
            let c = OpenChoice(inUpper: dataUp, isRegular: regular, size: Int64(st.st_size), mode: UInt32(st.st_mode),
                               daemon: s.opens.daemon, passthroughLower: s.opens.passthroughLower,
                               passthroughUpper: s.opens.passthroughUpper)
            let serving = try choose(c)
            switch serving {
            case .daemon:
                s.opens.daemon += 1
                if !dataUp && regular { s.opens.following.insert(raw) }
            case .passthroughLower: s.opens.passthroughLower += 1
            case .passthroughUpper: s.opens.passthroughUpper += 1
            }
            return (serving, serving == .daemon && regular && !dataUp)
        }
        return OpenFile(node: n, fd: fd, writable: writable, serving: serving, followsCopyUp: follows)
    }

    /// The file was closed (its RELEASE): it no longer holds the inode.
    public func released(_ f: OpenFile) {
        f.node.state.withLock { s in
            switch f.serving {
            case .daemon:
                s.opens.daemon -= 1
                s.opens.following.remove(f.fd)
            case .passthroughLower: s.opens.passthroughLower -= 1
            case .passthroughUpper: s.opens.passthroughUpper -= 1
            }
        }
    }
}
