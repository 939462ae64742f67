import CFuseProto
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Kernel cache invalidations: unsolicited messages (unique 0) whose error
/// field holds the notification code. Used when something changes under the
/// kernel's cached view (for example a layer changed from outside).
public struct Notifier: Sendable {
    let fd: Int32

    /// Drops cached data (and attributes) of `node`; `length` 0 means to EOF,
    /// a negative offset drops attributes only.
    public func invalidateInode(_ node: NodeID, offset: Int64 = 0, length: Int64 = 0) -> Errno? {
        var body = sf_notify_inval_inode_out(ino: node, off: offset, len: length)
        return withUnsafeBytes(of: &body) { send(code: SF_NOTIFY_INVAL_INODE, $0, nil) }
    }

    /// Drops the cached name `name` in `parent`.
    public func invalidateEntry(parent: NodeID, name: String) -> Errno? {
        var body = sf_notify_inval_entry_out(parent: parent, namelen: UInt32(name.utf8.count), flags: 0)
        return withUnsafeBytes(of: &body) { b in
            name.withCString { send(code: SF_NOTIFY_INVAL_ENTRY, b, UnsafeRawBufferPointer(start: $0, count: name.utf8.count + 1)) }
        }
    }

    /// Tells the kernel that `name` in `parent` (node `child`) was deleted.
    public func delete(parent: NodeID, child: NodeID, name: String) -> Errno? {
        var body = sf_notify_delete_out(parent: parent, child: child, namelen: UInt32(name.utf8.count), padding: 0)
        return withUnsafeBytes(of: &body) { b in
            name.withCString { send(code: SF_NOTIFY_DELETE, b, UnsafeRawBufferPointer(start: $0, count: name.utf8.count + 1)) }
        }
    }

    private func send(code: Int, _ body: UnsafeRawBufferPointer, _ tail: UnsafeRawBufferPointer?) -> Errno? {
        let total = MemoryLayout<sf_out_header>.size + body.count + (tail?.count ?? 0)
        var header = sf_out_header(len: UInt32(total), error: Int32(code), unique: 0)
        return withUnsafeBytes(of: &header) { h -> Errno? in
            var iov = [
                iovec(iov_base: UnsafeMutableRawPointer(mutating: h.baseAddress), iov_len: h.count),
                iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count),
            ]
            if let tail { iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: tail.baseAddress), iov_len: tail.count)) }
            let n = writev(fd, &iov, Int32(iov.count))
            return n < 0 ? Errno(rawValue: errno) : nil
        }
    }
}
