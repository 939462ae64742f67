import Sys
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One merged inode. Where it lives can change (copy-up moves it to the
/// upper layer); what the kernel sees of it (its number, its kind) does not.
public final class OverlayNode: @unchecked Sendable {
    public let id: UInt64
    public let isDirectory: Bool
    /// The inode number reported: the origin's, so that copy-up keeps it.
    public let ino: UInt64
    let state: Mutex<State>
    /// Serializes copy-up of this node: two concurrent copy-ups become one.
    let copyUpLock = Mutex<Void>(())
    /// Kernel references; changed under the table's lock.
    var lookups: UInt64 = 0

    struct State {
        var parent: OverlayNode?
        var name: [UInt8]            // NUL-terminated
        /// Exists in the upper layer.
        var inUpper: Bool
        /// Top-most lower layer holding it (index into `Overlay.layers`), or -1.
        var lower: Int
        /// Directories: lower layers that contribute entries, top first
        /// (cut below an opaque directory or a non-directory).
        var lowerDirs: [Int]
        /// Cached O_PATH descriptors of this directory, per layer.
        var fds: [Int: OwnedFD] = [:]
        /// Real (dev, ino) of the top location, the key of the inode map.
        var key: InodeKey
        var unlinked = false
        /// An unlinked inode the kernel still holds (open files): how to reach it.
        var orphan: OwnedFD?
    }

    init(id: UInt64, isDirectory: Bool, ino: UInt64, state: State) {
        self.id = id
        self.isDirectory = isDirectory
        self.ino = ino
        self.state = Mutex(state)
    }

    var snapshot: State { state.withLock { $0 } }
}

struct InodeKey: Hashable, Sendable {
    let dev: UInt64
    let ino: UInt64
}
