import Synchronization
import Sys
import Tables
#if canImport(Glibc)
import Glibc
#endif

/// An open file of the pool: a descriptor on the branch that holds it.
/// Both change when `moveonenospc` moves the file to another branch.
public final class PoolFile: DescriptorBacked, @unchecked Sendable {
    private let state: Mutex<(owner: OwnedFD, branch: Branch)>
    let flags: Int32

    init(_ owner: consuming UniqueFD, branch: Branch, flags: Int32 = O_RDONLY) {
        state = Mutex((OwnedFD(owner), branch))
        self.flags = flags
    }

    public var fd: Int32 { state.withLock { $0.owner.raw } }
    var branch: Branch { state.withLock { $0.branch } }

    /// The file now lives on `branch`, open as `owner`.
    func moved(to branch: Branch, _ owner: consuming UniqueFD) {
        let o = OwnedFD(owner)
        state.withLock { $0 = (o, branch) }
    }
}

/// A directory's merged listing, made at opendir: each name once, from the
/// first branch (in order) that has it.
final class Listing: @unchecked Sendable {
    struct Item { let name: [UInt8]; let ino: UInt64; let type: UInt8 }
    let items: [Item]
    init(_ items: [Item]) { self.items = items }
}
