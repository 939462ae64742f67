import CStrata
import Sys
import SystemPackage
import Testing
@testable import FUSE
#if canImport(Glibc)
import Glibc
#endif

/// A request shorter than its opcode's fixed part is answered with EIO and
/// never read past its end; a whole one is served.
@Suite struct ShortRequestTests {
    /// Sends one request through a worker whose "device" is a socket pair,
    /// and returns the answer's error (0 for success) and length.
    func answer(opcode: Int, body: [UInt8], declaredBody: Int? = nil) throws -> (error: Int32, length: Int) {
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &sv) == 0 else { throw Errno(rawValue: errno) }
        defer { close(sv[0]); close(sv[1]) }
        let session = Session(fs: MemoryFS(), deviceFD: sv[0], options: SessionOptions())
        let worker = Worker(session: session, fd: sv[0])
        let headerSize = MemoryLayout<sf_in_header>.size
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buf.deallocate() }
        // Poison after the body: a read past the end would see it.
        memset(buf, 0x7f, 4096)
        let total = headerSize + (declaredBody ?? body.count)
        var h = sf_in_header()
        h.len = UInt32(total)
        h.opcode = UInt32(opcode)
        h.unique = 42
        h.nodeid = 2
        buf.storeBytes(of: h, as: sf_in_header.self)
        body.withUnsafeBytes { (buf + headerSize).copyMemory(from: $0.baseAddress!, byteCount: body.count) }
        worker.dispatch(buf, length: total)
        var out = [UInt8](repeating: 0, count: 8192)
        let n = out.withUnsafeMutableBytes { recv(sv[1], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        guard n >= MemoryLayout<sf_out_header>.size else { return (Int32.min, n) }
        let o = out.withUnsafeBytes { $0.load(as: sf_out_header.self) }
        #expect(o.unique == 42)
        return (o.error, n)
    }

    @Test func shortGetattrGetsEIO() throws {
        // sf_getattr_in is 16 bytes; 4 arrive.
        let r = try answer(opcode: Int(SF_GETATTR), body: [0, 0, 0, 0])
        #expect(r.error == -EIO)
    }

    @Test func shortReadAndWriteGetEIO() throws {
        #expect(try answer(opcode: Int(SF_READ), body: [UInt8](repeating: 0, count: 8)).error == -EIO)
        #expect(try answer(opcode: Int(SF_WRITE), body: [UInt8](repeating: 0, count: 20)).error == -EIO)
        #expect(try answer(opcode: Int(SF_SETATTR), body: [UInt8](repeating: 0, count: 30)).error == -EIO)
    }

    @Test func wholeGetattrIsServed() throws {
        let r = try answer(opcode: Int(SF_GETATTR), body: [UInt8](repeating: 0, count: MemoryLayout<sf_getattr_in>.size))
        #expect(r.error == 0)
        #expect(r.length == MemoryLayout<sf_out_header>.size + MemoryLayout<sf_attr_out>.size)
    }

    /// The table covers every opcode whose body the worker loads.
    @Test func everyFixedPartIsKnown() {
        for op in [SF_GETATTR, SF_SETATTR, SF_READ, SF_WRITE, SF_OPEN, SF_CREATE, SF_RENAME2, SF_FALLOCATE, SF_LSEEK,
                   SF_COPY_FILE_RANGE, SF_RELEASE, SF_FLUSH, SF_FSYNC, SF_GETXATTR, SF_SETXATTR, SF_MKNOD, SF_MKDIR, SF_LINK] {
            #expect(Opcode.minimumInput(Int(op)) > 0, "\(Opcode.name(Int(op)))")
        }
        #expect(Opcode.minimumInput(Int(SF_LOOKUP)) == 0)
    }
}
