import SystemPackage
import Tables

/// A file system whose open files each read and write one real descriptor:
/// reads, writes and the other per-file operations are the same for all of
/// them, so they are written once here. Its open files live in a
/// `HandleTable`, so a stale or foreign handle gives EBADF.
public protocol FDBackedFileSystem: FileSystem {
    associatedtype OpenFile: DescriptorBacked
    var files: HandleTable<OpenFile> { get }
}

public extension FDBackedFileSystem {
    func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try files.get(handle).read(offset: offset, into: buffer)
    }

    func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int {
        try files.get(handle).write(offset: offset, data: data)
    }

    func flush(_ r: Request, node: NodeID, handle: UInt64) throws(Errno) { try files.get(handle).flush() }

    func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) {
        try files.get(handle).fsync(dataOnly: dataOnly)
    }

    func fallocate(_ r: Request, node: NodeID, handle: UInt64, mode: Int32, offset: UInt64, length: UInt64) throws(Errno) {
        try files.get(handle).fallocate(mode: mode, offset: offset, length: length)
    }

    func lseek(_ r: Request, node: NodeID, handle: UInt64, offset: Int64, whence: Int32) throws(Errno) -> Int64 {
        try files.get(handle).lseek(offset: offset, whence: whence)
    }

    func copyFileRange(_ r: Request, nodeIn: NodeID, handleIn: UInt64, offsetIn: UInt64,
                       nodeOut: NodeID, handleOut: UInt64, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        try files.get(handleIn).copyRange(offsetIn: offsetIn, to: try files.get(handleOut), offsetOut: offsetOut,
                                              length: length, flags: flags)
    }
}
