import Sys
import Tables
#if canImport(Glibc)
import Glibc
#endif

/// An open file of the pool: a descriptor on the branch that holds it.
public final class PoolFile: DescriptorBacked, @unchecked Sendable {
    public let fd: Int32
    let branch: Branch
    let owner: UniqueFD

    init(_ owner: consuming UniqueFD, branch: Branch) {
        fd = owner.raw
        self.branch = branch
        self.owner = owner
    }
}

/// A directory's merged listing, made at opendir: each name once, from the
/// first branch (in order) that has it.
final class Listing: @unchecked Sendable {
    struct Item { let name: [UInt8]; let ino: UInt64; let type: UInt8 }
    let items: [Item]
    init(_ items: [Item]) { self.items = items }
}
