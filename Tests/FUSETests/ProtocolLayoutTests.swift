import CStrata
import Testing
@testable import FUSE

/// The structures must match the kernel's ABI byte for byte: a wrong size
/// here is a garbled conversation with the kernel.
@Suite struct ProtocolLayoutTests {
    @Test func structSizesMatchTheKernelABI() {
        #expect(MemoryLayout<sf_in_header>.size == 40)
        #expect(MemoryLayout<sf_out_header>.size == 16)
        #expect(MemoryLayout<sf_attr>.size == 88)
        #expect(MemoryLayout<sf_entry_out>.size == 128)
        #expect(MemoryLayout<sf_attr_out>.size == 104)
        #expect(MemoryLayout<sf_init_in>.size == 64)
        #expect(MemoryLayout<sf_init_out>.size == 64)
        #expect(MemoryLayout<sf_setattr_in>.size == 88)
        #expect(MemoryLayout<sf_read_in>.size == 40)
        #expect(MemoryLayout<sf_write_in>.size == 40)
        #expect(MemoryLayout<sf_open_out>.size == 16)
        #expect(MemoryLayout<sf_kstatfs>.size == 80)
        #expect(MemoryLayout<sf_dirent>.size == 24)
        #expect(MemoryLayout<sf_direntplus>.size == 152)
        #expect(MemoryLayout<sf_copy_file_range_in>.size == 56)
        #expect(MemoryLayout<sf_backing_map>.size == 16)
        #expect(MemoryLayout<sf_create_in>.size == 16)
        #expect(MemoryLayout<sf_setxattr_in>.size == 16)
        #expect(MemoryLayout<sf_rename2_in>.size == 16)
        #expect(MemoryLayout<sf_fallocate_in>.size == 32)
        #expect(MemoryLayout<sf_lseek_in>.size == 24)
        #expect(MemoryLayout<sf_notify_delete_out>.size == 24)
    }

    @Test func initOutFieldOffsets() {
        #expect(MemoryLayout<sf_init_out>.offset(of: \.max_write) == 20)
        #expect(MemoryLayout<sf_init_out>.offset(of: \.max_pages) == 28)
        #expect(MemoryLayout<sf_init_out>.offset(of: \.flags2) == 32)
        #expect(MemoryLayout<sf_init_out>.offset(of: \.max_stack_depth) == 36)
        #expect(MemoryLayout<sf_open_out>.offset(of: \.backing_id) == 12)
    }
}

@Suite struct DirentWriterTests {
    @Test func packsEntriesEightByteAlignedAndStopsWhenFull() {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { buf.deallocate() }
        var w = DirentWriter(base: buf, capacity: 64, plus: false)
        let a: [UInt8] = Array("abc".utf8)
        let ok1 = a.withUnsafeBytes { w.add(name: $0, ino: 7, type: 8, nextOffset: 1) }
        #expect(ok1)
        #expect(w.used == 32)   // 24 + 3 rounded up to 8
        let ok2 = a.withUnsafeBytes { w.add(name: $0, ino: 8, type: 4, nextOffset: 2) }
        #expect(ok2)
        #expect(w.used == 64)
        let ok3 = a.withUnsafeBytes { w.add(name: $0, ino: 9, type: 4, nextOffset: 3) }
        #expect(!ok3)
        #expect(w.used == 64)
        let first = buf.load(as: sf_dirent.self)
        #expect(first.ino == 7 && first.off == 1 && first.namelen == 3 && first.type == 8)
        #expect(buf.load(fromByteOffset: 24, as: UInt8.self) == UInt8(ascii: "a"))
        #expect(buf.load(fromByteOffset: 27, as: UInt8.self) == 0)
    }

    @Test func plusEntriesCarryTheEntry() {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
        defer { buf.deallocate() }
        var w = DirentWriter(base: buf, capacity: 4096, plus: true)
        var attr = Attr()
        attr.ino = 42
        attr.mode = 0o100644
        let e = Entry(node: 5, attr: attr, entryTimeout: CacheTimeout(seconds: 3), attrTimeout: CacheTimeout(seconds: 4))
        let name: [UInt8] = Array("file".utf8)
        _ = name.withUnsafeBytes { w.add(name: $0, ino: 42, type: 8, nextOffset: 9, entry: e) }
        #expect(w.used == 160)
        let p = buf.load(as: sf_direntplus.self)
        #expect(p.entry_out.nodeid == 5 && p.entry_out.entry_valid == 3 && p.entry_out.attr_valid == 4)
        #expect(p.entry_out.attr.ino == 42 && p.dirent.ino == 42 && p.dirent.off == 9)
    }

    @Test func attrEncodesDeviceNumbersLikeTheKernel() {
        var st = stat()
        st.st_rdev = dev_t(strata_makedev(8, 1))
        #expect(Attr(st).rdev == 0x801)
        st.st_rdev = dev_t(strata_makedev(259, 300))
        // The kernel's new_encode_dev(MKDEV(259, 300)), worked out by hand:
        // minor's low byte 0x2c, major 0x103 at bit 8, minor's 0x100 at bit 12.
        #expect(Attr(st).rdev == 0x11032C)
    }
}
