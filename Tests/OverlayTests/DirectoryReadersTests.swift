@testable import FUSE
import Overlay
import OverlayFS
import Sys
import SystemPackage
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Two readers of one directory through the FUSE side of the union, with
/// no directory handles (opendir is answered ENOSYS): each continues in its
/// own listing, whatever the other does meanwhile.
@Suite struct DirectoryReadersTests {
    /// One READDIR into a small buffer: the names and each one's next offset.
    func read(_ fs: OverlayFS, _ dir: UInt64, offset: UInt64, bytes: Int) throws -> [(String, UInt64)] {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { buf.deallocate() }
        var w = DirentWriter(base: buf, capacity: bytes, plus: false)
        try fs.readdir(Request(unique: 1, uid: 0, gid: 0, pid: 1), node: dir, handle: 0, offset: offset, into: &w)
        var out: [(String, UInt64)] = []
        var p = 0
        while p < w.used {
            let off = buf.load(fromByteOffset: p + 8, as: UInt64.self)
            let len = Int(buf.load(fromByteOffset: p + 16, as: UInt32.self))
            let name = String(decoding: UnsafeRawBufferPointer(start: buf + p + 24, count: len), as: UTF8.self)
            out.append((name, off))
            p += (24 + len + 7) & ~7
        }
        return out
    }

    @Test func aReaderContinuesInItsOwnListingWhileAnotherStartsOver() throws {
        let t = TempDir()
        let lower = t.sub("l"), upper = t.sub("u"), work = t.sub("w")
        let all = (0..<40).map { "file\($0)" }
        for n in all { close(open("\(lower)/\(n)", O_CREAT | O_WRONLY, 0o644)) }
        var c = OverlayConfig()
        c.lowers = [lower]
        c.upper = upper
        c.work = work
        let o = try Overlay(c)
        let fs = OverlayFS(o, passthrough: false)

        // Reader A takes its first few entries.
        let first = try read(fs, 1, offset: 0, bytes: 200)
        #expect(first.count >= 4)
        let seenByA = first.map(\.0).filter { $0 != "." && $0 != ".." }
        // Those names go, then reader B lists the directory from the start.
        for n in seenByA { _ = try FileName.with(n) { try o.unlink(o.root, $0) } }
        var offB: UInt64 = 0
        var seenByB: [String] = []
        while true {
            let chunk = try read(fs, 1, offset: offB, bytes: 4096)
            if chunk.isEmpty { break }
            seenByB += chunk.map(\.0)
            offB = chunk.last!.1
        }
        #expect(Set(seenByB).isDisjoint(with: seenByA), "B listed after the removals")
        // A goes on from where it stopped: every name that was there all
        // along comes exactly once (a shared listing, replaced by B's,
        // would skip as many names as B's is shorter).
        var rest: [String] = []
        var offA = first.last!.1
        while true {
            let chunk = try read(fs, 1, offset: offA, bytes: 200)
            if chunk.isEmpty { break }
            rest += chunk.map(\.0)
            offA = chunk.last!.1
        }
        let kept = Set(all).subtracting(seenByA)
        #expect(rest.count == Set(rest).count, "no name twice")
        #expect(kept.isSubset(of: Set(rest)), "missing: \(kept.subtracting(rest).sorted())")
        #expect(o.statistics().first { $0.0 == "listings held" }?.1 == 0, "both readers reached the end")
    }

    @Test func aStaleOrForeignFileHandleGivesEBADF() throws {
        let t = TempDir()
        let lower = t.sub("l"), upper = t.sub("u"), work = t.sub("w")
        close(open("\(lower)/f", O_CREAT | O_WRONLY, 0o644))
        var c = OverlayConfig()
        c.lowers = [lower]
        c.upper = upper
        c.work = work
        let fs = OverlayFS(try Overlay(c), passthrough: false)
        let r = Request(unique: 1, uid: 0, gid: 0, pid: 1)
        let e = try FileName.with("f") { try fs.lookup(r, parent: 1, name: $0) }
        let h = try fs.open(r, node: e.node, flags: O_RDONLY).handle
        var b = [UInt8](repeating: 0, count: 16)
        #expect(try b.withUnsafeMutableBytes { try fs.read(r, node: e.node, handle: h, offset: 0, buffer: $0) } == 0)
        fs.release(r, node: e.node, handle: h, flags: 0)
        for bad in [h, 0, 12345, UInt64(2) << 56 | 5] {
            #expect(throws: Errno.badFileDescriptor) {
                try b.withUnsafeMutableBytes { try fs.read(r, node: e.node, handle: bad, offset: 0, buffer: $0) }
            }
        }
    }
}
