import FUSE
import Foundation
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `MOUNTPOINT/.mergerfs`: mergerfs's control file. Not listed, but it can
/// be stat'ed, and its `user.mergerfs.*` xattrs read and change the options
/// and the branches while mounted (as `xattr -w user.mergerfs.branches
/// +>/mnt/disk3 /mnt/pool/.mergerfs` adds a disk without unmounting).
extension PoolFS {
    static let controlName = ".mergerfs"
    /// A node id the table never hands out.
    static let controlID: NodeID = UInt64.max - 1
    static let keyPrefix = "user.mergerfs."

    func controlAttr() -> Attr {
        var a = Attr()
        a.ino = Self.controlID
        a.mode = Linux.S_IFREG | 0o444
        a.nlink = 1
        a.mtime = started
        a.ctime = started
        a.atime = started
        return a
    }

    func controlEntry() -> Entry { Entry(node: Self.controlID, attr: controlAttr(), entryTimeout: attrTimeout, attrTimeout: attrTimeout) }

    /// Every key and its value now, as mergerfs prints them.
    func controlValues() -> [(String, String)] {
        let c = config
        let o = c.options
        var out: [(String, String)] = [
            ("branches", c.branches.map { "\($0.spec.path)=\($0.spec.mode.rawValue)" + ($0.spec.minFreeSpace.map { ",\($0)" } ?? "") }.joined(separator: ":")),
            ("srcmounts", c.branches.map(\.spec.path).joined(separator: ":")),
            ("minfreespace", String(o.minFreeSpace)),
            ("moveonenospc", o.moveOnENOSPC.map(\.rawValue) ?? "false"),
            ("cache.files", o.cacheFiles.rawValue),
            ("dropcacheonclose", o.dropCacheOnClose ? "true" : "false"),
            ("inodecalc", o.inodeCalc.rawValue),
            ("fsname", o.fsname ?? c.branches.map(\.spec.path).joined(separator: ":")),
            ("version", "strata"),
            ("pid", String(getpid())),
        ]
        for cat in PoolCategory.allCases {
            let policies = PoolFunction.allCases.filter { $0.category == cat }.map { o.policies[$0] ?? cat.defaultPolicy }
            // One policy for the whole category, or the mixture's first (as mergerfs shows it).
            out.append(("category.\(cat.rawValue)", policies.first?.rawValue ?? cat.defaultPolicy.rawValue))
        }
        for f in PoolFunction.allCases { out.append(("func.\(f.rawValue)", (o.policies[f] ?? f.category.defaultPolicy).rawValue)) }
        return out.sorted { $0.0 < $1.0 }
    }

    func controlGet(_ name: String, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        guard name.hasPrefix(Self.keyPrefix), let v = controlValues().first(where: { $0.0 == name.dropFirst(Self.keyPrefix.count) })?.1 else {
            throw .noData
        }
        return try Self.reply(Array(v.utf8), buffer)
    }

    func controlList(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        var names: [UInt8] = []
        for (k, _) in controlValues() { names += Array((Self.keyPrefix + k).utf8) + [0] }
        return try Self.reply(names, buffer)
    }

    static func reply(_ v: [UInt8], _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> XattrReply {
        if buffer.count == 0 { return .size(v.count) }
        guard v.count <= buffer.count, let base = buffer.baseAddress else { throw .outOfRange }
        v.withUnsafeBytes { if let s = $0.baseAddress { base.copyMemory(from: s, byteCount: v.count) } }
        return .data(v.count)
    }

    /// Changes an option or the branches. Informational keys (version,
    /// pid, srcmounts, fsname) answer EINVAL, as mergerfs's manual says
    /// (mergerfs 2.33 itself answers EROFS).
    func controlSet(_ name: String, _ value: String) throws(Errno) {
        guard name.hasPrefix(Self.keyPrefix) else { throw .notSupported }
        let key = String(name.dropFirst(Self.keyPrefix.count))
        if key == "branches" {
            try changeBranches(value)
            return
        }
        if ["version", "pid", "srcmounts", "fsname"].contains(key) { throw .invalidArgument }
        guard controlValues().contains(where: { $0.0 == key }) else { throw .noData }
        var o = options
        do throws(UsageError) { try o.apply(key, value) } catch { throw .invalidArgument }
        configuration.withLock { $0.options = o }
    }

    /// mergerfs's shortcuts: `LIST` sets, `+<LIST` prepends, `+>LIST`
    /// appends, `-LIST` removes those, `-<` the first, `->` the last.
    func changeBranches(_ value: String) throws(Errno) {
        func parse(_ text: String) throws(Errno) -> [Branch] {
            let specs: [BranchSpec]
            do throws(UsageError) { specs = try PoolOptions.parseBranches(text) } catch { throw .invalidArgument }
            return try specs.map { (s) throws(Errno) in try Branch(s) }
        }
        var current = branches
        if value.hasPrefix("+<") {
            current = try parse(String(value.dropFirst(2))) + current
        } else if value.hasPrefix("+>") || value.hasPrefix("+") {
            current += try parse(String(value.dropFirst(value.hasPrefix("+>") ? 2 : 1)))
        } else if value == "-<" {
            if !current.isEmpty { current.removeFirst() }
        } else if value == "->" {
            if !current.isEmpty { current.removeLast() }
        } else if value.hasPrefix("-") {
            let gone = Set(String(value.dropFirst()).split(separator: ":").map { String($0.split(separator: "=").first ?? "") })
            current.removeAll { gone.contains($0.spec.path) }
        } else {
            current = try parse(value)
        }
        if current.isEmpty { throw .invalidArgument }
        let now = current
        configuration.withLock { $0.branches = now }
    }
}
