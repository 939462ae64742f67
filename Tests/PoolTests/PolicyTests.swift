import Pool
import Sys
import SystemPackage
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// mergerfs's policies as its manual (2.33) describes them, on branches
/// whose space and contents the test sets: filtering (RO, NC, a read-only
/// mount, minfreespace), path preservation, the order of ties, and the
/// errno when nothing is left.
struct PolicyTests {
    /// Three branches: a, small and full-ish; b, the largest; c, tagged as given.
    func branches(exists: [Bool], cMode: BranchSpec.Mode = .rw, minFree: UInt64 = 1 << 20) -> [BranchState] {
        [BranchState(mode: .rw, available: 10 << 20, used: 90 << 20, minFreeSpace: minFree, exists: exists[0], mtime: 100),
         BranchState(mode: .rw, available: 500 << 20, used: 10 << 20, minFreeSpace: minFree, exists: exists[1], mtime: 300),
         BranchState(mode: cMode, available: 200 << 20, used: 5 << 20, minFreeSpace: minFree, exists: exists[2], mtime: 200)]
    }

    @Test func createPoliciesPickBySpaceAmongBranchesThatMayCreate() throws {
        let all = branches(exists: [true, true, true])
        #expect(try Policy.mfs.select(.create, all) == [1])
        #expect(try Policy.lfs.select(.create, all) == [0])
        #expect(try Policy.lus.select(.create, all) == [2])
        #expect(try Policy.ff.select(.create, all) == [0])
        // NC and RO branches never take a new file.
        #expect(try Policy.lus.select(.create, branches(exists: [true, true, true], cMode: .nc)) == [1])
        #expect(try Policy.lus.select(.create, branches(exists: [true, true, true], cMode: .ro)) == [1])
        // Below minfreespace a branch is left out: with 20 MiB, a (10 MiB free) goes.
        #expect(try Policy.lfs.select(.create, branches(exists: [true, true, true], minFree: 20 << 20)) == [2])
    }

    /// The manual's example: with mfs a file in a directory only the
    /// smaller branch has goes to the larger one (its path is cloned
    /// there); with epmfs it stays where the path is.
    @Test func pathPreservingPoliciesKeepToBranchesThatHaveThePath() throws {
        let onlyA = branches(exists: [true, false, false])
        #expect(try Policy.mfs.select(.create, onlyA) == [1])
        #expect(try Policy.epmfs.select(.create, onlyA) == [0])
        #expect(try Policy.epff.select(.create, branches(exists: [false, false, true])) == [2])
        #expect(throws: Errno.noSuchFileOrDirectory) { try Policy.epmfs.select(.create, self.branches(exists: [false, false, false])) }
    }

    @Test func whenEveryBranchIsFilteredTheLastReasonIsTheErrno() {
        let ro = [BranchState(mode: .ro, available: 1 << 30, used: 0, minFreeSpace: 0, exists: true),
                  BranchState(mode: .nc, available: 1 << 30, used: 0, minFreeSpace: 0, exists: true)]
        #expect(throws: Errno.readOnlyFileSystem) { try Policy.mfs.select(.create, ro) }
        let full = [BranchState(mode: .rw, available: 1 << 10, used: 0, minFreeSpace: 1 << 20, exists: true)]
        #expect(throws: Errno.noSpace) { try Policy.ff.select(.mkdir, full) }
        #expect(throws: Errno.readOnlyFileSystem) { try Policy.erofs.select(.getattr, full) }
    }

    @Test func actionsApplyToEveryWritableBranchThatHasThePath() throws {
        let b = branches(exists: [true, false, true])
        #expect(try Policy.epall.select(.chmod, b) == [0, 2])
        #expect(try Policy.all.select(.unlink, b) == [0, 2])
        // A branch tagged RO is not acted on; a search still finds it.
        let roC = branches(exists: [false, false, true], cMode: .ro)
        #expect(throws: Errno.readOnlyFileSystem) { try Policy.epall.select(.chown, roC) }
        #expect(try Policy.ff.select(.getattr, roC) == [2])
        // Non-preserving names act as their ep forms outside create.
        #expect(try Policy.mfs.select(.utimens, b) == [2])
    }

    @Test func allMakesDirectoriesEverywhereButOneFile() throws {
        let b = branches(exists: [false, false, false])
        #expect(try Policy.all.select(.mkdir, b) == [0, 1, 2])
        #expect(try Policy.all.select(.symlink, b) == [0, 1, 2])
        #expect(try Policy.all.select(.create, b) == [0])
        #expect(try Policy.epall.select(.mkdir, branches(exists: [true, false, true])) == [0, 2])
        #expect(try Policy.epall.select(.getattr, branches(exists: [false, true, true])) == [1])
    }

    @Test func newestRandomAndProportionalDraws() throws {
        var b = branches(exists: [true, true, true])
        // newest compares whole seconds, as mergerfs 2.33 does, and a later
        // branch of the same second wins (its scan continues on equal times).
        #expect(try Policy.newest.select(.getattr, b) == [2])
        b[1].mtime = 5_000_000_000
        #expect(try Policy.newest.select(.getattr, b) == [1])
        #expect(try Policy.rand.select(.create, b, random: { _ in 2 }) == [2])
        #expect(try Policy.eprand.select(.unlink, branches(exists: [true, false, true]), random: { _ in 1 }) == [2])
        // pfrd: a draw below a's 10 MiB picks a, one past a and b picks c.
        #expect(try Policy.pfrd.select(.create, b, random: { _ in 5 << 20 }) == [0])
        #expect(try Policy.pfrd.select(.create, b, random: { _ in 600 << 20 }) == [2])
    }
}

struct PoolOptionTests {
    func parse(_ o: String, _ branches: String) throws(UsageError) -> PoolOptions {
        try PoolOptions.parse(options: [o], branches: branches)
    }

    @Test func mergerfsDefaultsCategoriesAndFunctions() throws {
        let d = BranchDirs()
        let o = try parse("category.create=mfs,func.mkdir=epall,minfreespace=100M,moveonenospc=true,cache.files=partial,dropcacheonclose=true,inodecalc=path-hash,fsname=pool,allow_other,use_ino",
                          "\(d.a)=RW:\(d.b)=NC,1G:\(d.c)=RO")
        #expect(o.policies[.create] == .mfs && o.policies[.symlink] == .mfs && o.policies[.mkdir] == .epall)
        #expect(o.policies[.chmod] == .epall && o.policies[.getattr] == .ff)
        #expect(o.minFreeSpace == 100 << 20 && o.moveOnENOSPC == .mfs && o.cacheFiles == .partial && o.dropCacheOnClose)
        #expect(o.inodeCalc == .pathHash && o.fsname == "pool" && o.allowOther)
        #expect(o.branches.map(\.mode) == [.rw, .nc, .ro] && o.branches[1].minFreeSpace == 1 << 30)
        let defaults = try parse("defaults", d.a)
        #expect(defaults.policies[.create] == .epmfs && defaults.policies[.unlink] == .epall && defaults.policies[.open] == .ff)
        #expect(defaults.minFreeSpace == 4 << 30)
    }

    @Test func globsExpandToEveryMatchingDirectoryInOrder() throws {
        let d = BranchDirs()
        let o = try parse("defaults", "\(d.path)/disk*=RW")
        #expect(o.branches.map(\.path) == [d.a, d.b, d.c])
    }

    @Test func whatStrataDoesNotSupportIsRefusedByName() {
        let d = BranchDirs()
        #expect(throws: UsageError.self) { try self.parse("symlinkify=true", d.a) }
        #expect((try? parse("symlinkify=true", d.a)) == nil)
        do { _ = try parse("category.create=mspmfs", d.a); Issue.record("accepted") } catch {
            #expect(error.description.contains("mspmfs") && error.description.contains("not supported"))
        }
        do { _ = try parse("bogus=1", d.a); Issue.record("accepted") } catch { #expect(error.description.contains("bogus")) }
        do { _ = try parse("defaults", "\(d.a)=XX"); Issue.record("accepted") } catch { #expect(error.description.contains("RW, RO or NC")) }
        do { _ = try parse("defaults", "\(d.path)/missing"); Issue.record("accepted") } catch { #expect(error.description.contains("not a directory")) }
        do { _ = try parse("minfreespace=lots", d.a); Issue.record("accepted") } catch { #expect(error.description.contains("minfreespace")) }
    }
}

/// Three branch directories, disk1..3, removed afterwards.
final class BranchDirs {
    let path: String
    init() {
        var template = Array("/tmp/strata-pool.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        for n in ["disk1", "disk2", "disk3"] { mkdir("\(path)/\(n)", 0o755) }
    }
    var a: String { "\(path)/disk1" }
    var b: String { "\(path)/disk2" }
    var c: String { "\(path)/disk3" }
    deinit { _ = removeTree(path: path) }
}
