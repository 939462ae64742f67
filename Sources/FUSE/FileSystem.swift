import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A filesystem served over FUSE, keyed by node id like libfuse's low-level
/// API or go-fuse's raw API.
///
/// Calling conventions (the same for every method):
/// - Methods run on the session's worker threads, several at once, also for
///   the same node: an implementation locks what it shares, finely.
/// - Failure is a thrown `Errno`, which becomes the reply's error; nothing
///   else crosses to the kernel. Typed throws keep this allocation-free.
/// - Every method that returns an `Entry` with a non-zero node has made one
///   lookup reference on it; the kernel drops references with `forget`.
/// - `Name`s and buffers point into the worker's request and reply buffers and
///   are valid only during the call.
/// - A method left unimplemented answers ENOSYS, which the kernel remembers
///   for some operations (flush, fsync, xattrs, fallocate, lseek, ...).
public protocol FileSystem: AnyObject, Sendable {
    /// Called once, on INIT, with what the kernel offered; adjust the wanted
    /// capabilities before the reply is sent.
    func initialize(_ connection: inout Connection)
    func destroy()
    /// Figures a user may read with `strata stats` (nodes held, descriptors
    /// cached, ...): name and value, in the order to show them.
    func statistics() -> [(String, Int)]
    /// Why a signal (SIGINT, SIGTERM, SIGHUP) must not unmount it now, if
    /// it must not: the daemon then says so and serves on.
    func unmountRefusal() -> String?

    func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry
    func forget(_ node: NodeID, count: UInt64)
    func getattr(_ r: Request, node: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout)
    func setattr(_ r: Request, node: NodeID, changes: SetAttrRequest) throws(Errno) -> (Attr, CacheTimeout)
    /// Writes the link target into `buffer`; returns its length.
    func readlink(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry
    func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry
    func mkdir(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32) throws(Errno) -> Entry
    func unlink(_ r: Request, parent: NodeID, name: Name) throws(Errno)
    func rmdir(_ r: Request, parent: NodeID, name: Name) throws(Errno)
    /// `flags`: RENAME_NOREPLACE (1), RENAME_EXCHANGE (2), RENAME_WHITEOUT (4).
    func rename(_ r: Request, parent: NodeID, name: Name, newParent: NodeID, newName: Name, flags: UInt32) throws(Errno)
    func link(_ r: Request, node: NodeID, newParent: NodeID, newName: Name) throws(Errno) -> Entry
    func open(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply
    func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply)
    /// An unnamed file in `parent` (O_TMPFILE).
    func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply)
    /// Reads into `buffer` (at most its count); returns bytes read.
    func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int
    func flush(_ r: Request, node: NodeID, handle: UInt64) throws(Errno)
    func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32)
    func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno)
    func opendir(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply
    /// Fills `out` from `offset` on. In `out.plus` mode each entry carries a
    /// looked-up `Entry` (one lookup reference each, made only once
    /// `out.fits` said the entry has room).
    func readdir(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno)
    func releasedir(_ r: Request, node: NodeID, handle: UInt64)
    func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno)
    func statfs(_ r: Request, node: NodeID) throws(Errno) -> StatFS
    func setxattr(_ r: Request, node: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno)
    func getxattr(_ r: Request, node: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply
    func listxattr(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply
    func removexattr(_ r: Request, node: NodeID, name: Name) throws(Errno)
    func access(_ r: Request, node: NodeID, mask: Int32) throws(Errno)
    func fallocate(_ r: Request, node: NodeID, handle: UInt64, mode: Int32, offset: UInt64, length: UInt64) throws(Errno)
    func lseek(_ r: Request, node: NodeID, handle: UInt64, offset: Int64, whence: Int32) throws(Errno) -> Int64
    func copyFileRange(_ r: Request, nodeIn: NodeID, handleIn: UInt64, offsetIn: UInt64,
                       nodeOut: NodeID, handleOut: UInt64, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int
}

/// Defaults: ENOSYS for what an implementation leaves out, no-ops for
/// notifications that need no answer.
public extension FileSystem {
    func initialize(_ connection: inout Connection) {}
    func destroy() {}
    func statistics() -> [(String, Int)] { [] }
    func unmountRefusal() -> String? { nil }
    func forget(_ node: NodeID, count: UInt64) {}
    func lookup(_ r: Request, parent: NodeID, name: Name) throws(Errno) -> Entry { throw .noFunction }
    func getattr(_ r: Request, node: NodeID, handle: UInt64?) throws(Errno) -> (Attr, CacheTimeout) { throw .noFunction }
    func setattr(_ r: Request, node: NodeID, changes: SetAttrRequest) throws(Errno) -> (Attr, CacheTimeout) { throw .noFunction }
    func readlink(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .noFunction }
    func symlink(_ r: Request, parent: NodeID, name: Name, target: Name) throws(Errno) -> Entry { throw .noFunction }
    func mknod(_ r: Request, parent: NodeID, name: Name, mode: UInt32, rdev: UInt32, umask: UInt32) throws(Errno) -> Entry { throw .noFunction }
    func mkdir(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32) throws(Errno) -> Entry { throw .noFunction }
    func unlink(_ r: Request, parent: NodeID, name: Name) throws(Errno) { throw .noFunction }
    func rmdir(_ r: Request, parent: NodeID, name: Name) throws(Errno) { throw .noFunction }
    func rename(_ r: Request, parent: NodeID, name: Name, newParent: NodeID, newName: Name, flags: UInt32) throws(Errno) { throw .noFunction }
    func link(_ r: Request, node: NodeID, newParent: NodeID, newName: Name) throws(Errno) -> Entry { throw .noFunction }
    func open(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply { throw .noFunction }
    func create(_ r: Request, parent: NodeID, name: Name, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) { throw .noFunction }
    func tmpfile(_ r: Request, parent: NodeID, mode: UInt32, umask: UInt32, flags: Int32) throws(Errno) -> (Entry, OpenReply) { throw .noFunction }
    func read(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .noFunction }
    func write(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws(Errno) -> Int { throw .noFunction }
    func flush(_ r: Request, node: NodeID, handle: UInt64) throws(Errno) { throw .noFunction }
    func release(_ r: Request, node: NodeID, handle: UInt64, flags: Int32) {}
    func fsync(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) { throw .noFunction }
    func opendir(_ r: Request, node: NodeID, flags: Int32) throws(Errno) -> OpenReply { throw .noFunction }
    func readdir(_ r: Request, node: NodeID, handle: UInt64, offset: UInt64, into out: inout DirentWriter) throws(Errno) { throw .noFunction }
    func releasedir(_ r: Request, node: NodeID, handle: UInt64) {}
    func fsyncdir(_ r: Request, node: NodeID, handle: UInt64, dataOnly: Bool) throws(Errno) { throw .noFunction }
    func statfs(_ r: Request, node: NodeID) throws(Errno) -> StatFS { throw .noFunction }
    func setxattr(_ r: Request, node: NodeID, name: Name, value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) { throw .noFunction }
    func getxattr(_ r: Request, node: NodeID, name: Name, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply { throw .noFunction }
    func listxattr(_ r: Request, node: NodeID, buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply { throw .noFunction }
    func removexattr(_ r: Request, node: NodeID, name: Name) throws(Errno) { throw .noFunction }
    func access(_ r: Request, node: NodeID, mask: Int32) throws(Errno) { throw .noFunction }
    func fallocate(_ r: Request, node: NodeID, handle: UInt64, mode: Int32, offset: UInt64, length: UInt64) throws(Errno) { throw .noFunction }
    func lseek(_ r: Request, node: NodeID, handle: UInt64, offset: Int64, whence: Int32) throws(Errno) -> Int64 { throw .noFunction }
    func copyFileRange(_ r: Request, nodeIn: NodeID, handleIn: UInt64, offsetIn: UInt64,
                       nodeOut: NodeID, handleOut: UInt64, offsetOut: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int { throw .noFunction }
}
