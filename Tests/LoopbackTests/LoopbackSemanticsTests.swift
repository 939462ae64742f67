import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct LoopbackSemanticsTests {
    @Test func renameWhiteoutLeavesACharacterDevice() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        _ = FileOps(src).write("x", "1")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        #expect(FileOps(mnt).rename("x", "y", flags: Linux.RENAME_WHITEOUT) == "ok")
        let st = FileOps(src).stat("x")
        #expect(st.map { $0.st_mode & Linux.S_IFMT } == Linux.S_IFCHR)
        #expect(st.map { UInt64($0.st_rdev) } == 0)
        #expect(FileOps(mnt).read("y") == "1")
    }

    @Test func hardLinksKeepInodeAndCount() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        _ = FileOps(src).write("a", "shared")
        _ = FileOps(src).link("a", "b")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        let o = FileOps(mnt)
        #expect(o.stat("a")?.st_nlink == 2)    // right from the first stat
        #expect(o.stat("a")?.st_ino == o.stat("b")?.st_ino)
        #expect(o.link("a", "c") == "ok")
        #expect(o.stat("b")?.st_nlink == 3)
        #expect(o.unlink("a") == "ok")
        #expect(o.stat("b")?.st_nlink == 2)
        #expect(o.read("c") == "shared")
        #expect(o.unlink("b") == "ok")
        #expect(o.stat("c")?.st_nlink == 1)
        #expect(o.write("c", "new", flags: O_WRONLY | O_TRUNC) == "ok")
        #expect(FileOps(src).read("c") == "new")
    }

    @Test func unlinkedOpenFileStaysUsable() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        let fd = open("\(mnt)/tmp", O_RDWR | O_CREAT, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(unlink("\(mnt)/tmp") == 0)
        var st = stat()
        #expect(fstat(fd, &st) == 0)
        #expect(st.st_nlink == 0)
        #expect(pwrite(fd, "abc", 3, 0) == 3)
        var buf = [UInt8](repeating: 0, count: 3)
        #expect(pread(fd, &buf, 3, 0) == 3)
        #expect(buf == Array("abc".utf8))
        #expect(FileOps(mnt).stat("tmp") == nil)
    }

    @Test func fallocateAndSeekDataHoleMatchThePlainDirectory() throws {
        let t = TempDir()
        let ref = t.sub("ref"), src = t.sub("src"), mnt = t.sub("mnt")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        func run(_ dir: String) -> [Int64] {
            let fd = open("\(dir)/sparse", O_RDWR | O_CREAT | O_TRUNC, 0o644)
            defer { close(fd) }
            var out: [Int64] = []
            out.append(Int64(ftruncate(fd, 8 << 20)))
            let chunk = [UInt8](repeating: 7, count: 65536)
            out.append(Int64(pwrite(fd, chunk, chunk.count, 1 << 20)))
            out.append(Int64(strata_fallocate(fd, 0, 4 << 20, 1 << 20)))              // allocate
            out.append(Int64(strata_fallocate(fd, 0x01 | 0x02, (1 << 20) + 4096, 8192)))  // keep size | punch hole
            out.append(Int64(lseek(fd, 0, Linux.SEEK_DATA)))
            out.append(Int64(lseek(fd, 1 << 20, Linux.SEEK_HOLE)))
            out.append(Int64(lseek(fd, (1 << 20) + 4096, Linux.SEEK_DATA)))
            out.append(Int64(lseek(fd, 6 << 20, Linux.SEEK_DATA)))
            out.append(Int64(strata_errno()))
            var st = stat()
            fstat(fd, &st)
            out.append(Int64(st.st_size))
            var b = [UInt8](repeating: 1, count: 4)
            out.append(Int64(pread(fd, &b, 4, (1 << 20) + 4096)))
            out.append(Int64(b[0]))
            return out
        }
        let want = run(ref), got = run(mnt)
        #expect(want == got)
        #expect(got[4] == 1 << 20)
    }

    @Test func sharedWritableMmapReachesTheSource() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        _ = FileOps(src).write("m", String(repeating: ".", count: 8192))
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        let fd = open("\(mnt)/m", O_RDWR)
        #expect(fd >= 0)
        guard let p = mmap(nil, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            Issue.record("mmap failed: \(errno)")
            close(fd)
            return
        }
        let bytes = p.assumingMemoryBound(to: UInt8.self)
        bytes[0] = UInt8(ascii: "H")
        bytes[4096] = UInt8(ascii: "Z")
        #expect(msync(p, 8192, MS_SYNC) == 0)
        munmap(p, 8192)
        close(fd)
        let s = FileOps(src).read("m")
        #expect(s.first == "H")
        #expect(Array(s.utf8)[4096] == UInt8(ascii: "Z"))
    }

    @Test(arguments: ["passthrough=on", "passthrough=off"])
    func threadsReadAndWriteAtOnce(_ option: String) throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        let m = try LoopbackMount(source: src, mountpoint: mnt, options: [option, "threads=4"])
        defer { m.unmount() }
        let size = 4 << 20
        let errors = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 6) { i in
            var data = [UInt8](repeating: 0, count: size)
            for j in 0..<size { data[j] = UInt8(truncatingIfNeeded: j &* 31 &+ i) }
            let p = "\(mnt)/file\(i)"
            let fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0o644)
            var off = 0
            while off < size {
                let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress! + off, min(100_003, size - off), off_t(off)) }
                if n <= 0 { errors.withLock { $0.append("write \(i) at \(off)") }; break }
                off += n
            }
            // Disjoint slices of one shared file, from every thread.
            let shared = open("\(mnt)/shared", O_RDWR | O_CREAT, 0o644)
            let slice = [UInt8](repeating: UInt8(65 + i), count: 65536)
            _ = pwrite(shared, slice, slice.count, off_t(i * 65536))
            close(shared)
            var back = [UInt8](repeating: 0, count: size)
            let r = back.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, size, 0) }
            if r != size || back != data { errors.withLock { $0.append("readback \(i): \(r)") } }
            close(fd)
        }
        #expect(errors.withLock { $0 } == [])
        let shared = FileManager.default.contents(atPath: "\(src)/shared").map { Array($0) } ?? []
        #expect(shared.count == 6 * 65536)
        for i in 0..<6 where shared.count == 6 * 65536 {
            #expect(shared[i * 65536] == UInt8(65 + i) && shared[i * 65536 + 65535] == UInt8(65 + i))
        }
    }

    @Test func largeDirectoryListingAndSeekdir() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        for i in 0..<3000 { close(open("\(src)/entry-with-a-longish-name-\(i)", O_CREAT | O_WRONLY, 0o644)) }
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        #expect(FileOps(mnt).ls("") == FileOps(src).ls(""))
        guard let d = opendir(mnt) else { Issue.record("opendir"); return }
        defer { closedir(d) }
        func next() -> String? {
            guard let e = readdir(d) else { return nil }
            return withUnsafePointer(to: e.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
        }
        for _ in 0..<1500 { _ = next() }
        let pos = telldir(d)
        var rest: [String] = []
        while let n = next() { rest.append(n) }
        seekdir(d, pos)
        var again: [String] = []
        while let n = next() { again.append(n) }
        #expect(rest.count == 1502)
        #expect(rest == again)
    }

    @Test func statfsReportsTheSourceFilesystem() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        var a = statvfs(), b = statvfs()
        #expect(statvfs(src, &a) == 0 && statvfs(mnt, &b) == 0)
        #expect(a.f_blocks == b.f_blocks && a.f_bsize == b.f_bsize && a.f_files == b.f_files)
    }
}
