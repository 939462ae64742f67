import CStrata
import Foundation
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The same layers mounted twice, once by the kernel's overlayfs and once by
/// Strata, from identical copies: the reference and the subject of every
/// differential test. Both are unmounted at the end whatever happened.
public final class UnionPair: @unchecked Sendable {
    public let dir: TempDir
    public let kernelMount: String
    public let strataMount: String
    public let kernelUpper: String
    public let strataUpper: String
    private var strataPID: pid_t = 0

    /// `build` fills `base/l1`, `base/l2`, ... (l1 top-most) once; each side
    /// gets its own `cp -a` copy of them plus an empty upper and work.
    /// `redirectDir`: both mounted with redirect_dir=on (directory renames);
    /// `metacopy`: both with metacopy=on (and so redirect_dir=on).
    /// `index`: both with index=on.
    public init(layers: Int = 3, strataOptions: [String] = [], redirectDir: Bool = false, metacopy: Bool = false,
                index: Bool = false, build: (String) -> Void) throws {
        dir = TempDir("strata-union")
        let base = dir.sub("base")
        for i in 1...layers { mkdir("\(base)/l\(i)", 0o755) }
        mkdir("\(base)/u", 0o755)
        build(base)
        for side in ["k", "s"] {
            guard runProgram("/bin/cp", ["-a", base, "\(dir.path)/\(side)"]).status == 0 else {
                throw SysError(.ioError, "cp -a", base)
            }
            mkdir("\(dir.path)/\(side)/w", 0o755)
            mkdir("\(dir.path)/\(side)/m", 0o755)
        }
        kernelMount = "\(dir.path)/k/m"
        strataMount = "\(dir.path)/s/m"
        kernelUpper = "\(dir.path)/k/u"
        strataUpper = "\(dir.path)/s/u"
        lowerNames = (1...layers).map { "l\($0)" }
        self.redirectDir = redirectDir || metacopy
        self.metacopy = metacopy
        self.index = index
        self.strataOptions = strataOptions
        try mount()
    }

    /// The lower layers' directory names in each side, top first.
    private var lowerNames: [String]
    private let redirectDir: Bool
    private let metacopy: Bool
    private let index: Bool
    private let strataOptions: [String]

    /// The layers of one side (k or s): each was copied as base/*.
    private func layerOptions(_ side: String) -> String {
        let root = dir.path
        return "lowerdir=\(lowerNames.map { "\(root)/\(side)/\($0)" }.joined(separator: ":")),upperdir=\(root)/\(side)/u,workdir=\(root)/\(side)/w"
    }

    /// `crossed`: the kernel mounts the layers Strata wrote and Strata the
    /// kernel's, each at the other's usual mount point's place.
    private func mount(crossed: Bool = false) throws {
        let (kSide, sSide) = crossed ? ("s", "k") : ("k", "s")
        let kernelArgs = ["-t", "overlay", "overlay", "-o", layerOptions(kSide)
            + ",redirect_dir=\(redirectDir ? "on" : "off"),index=\(index ? "on" : "off"),xino=off,metacopy=\(metacopy ? "on" : "off")", kernelMount]
        var strataArgs = ["strata", "mount", "-f", "-o", layerOptions(sSide) + (redirectDir ? ",redirect_dir=on" : "")
            + (metacopy ? ",metacopy=on" : "") + (index ? ",index=on" : "")]
        if !strataOptions.isEmpty { strataArgs[4] += "," + strataOptions.joined(separator: ",") }
        strataArgs.append(strataMount)
        let k = runProgram("/bin/mount", kernelArgs)
        guard k.status == 0 else { throw SysError(.ioError, "kernel overlay mount: \(k.stderr)", kernelMount) }
        strataPID = try Spawn.start(MountEnvironment.binary, strataArgs)
        guard waitFor(10, { isMountPoint(self.strataMount) }) else {
            throw SysError(.timedOut, "strata mount did not appear", strataMount)
        }
    }

    /// Both unmounted; each side's upper becomes its top lower layer under
    /// a fresh upper and work, and both are mounted again (as
    /// unionmount-testsuite's --ov=N does, and as an image's layers are a
    /// container's uppers committed): redirects, whiteouts and metadata-only
    /// copies are then read from a middle layer.
    public func rotate() throws {
        unmount()
        let name = "r\(lowerNames.count + 1)"
        for side in ["k", "s"] {
            let p = "\(dir.path)/\(side)"
            guard rename("\(p)/u", "\(p)/\(name)") == 0 else { throw SysError(.ioError, "rotate", p) }
            _ = runProgram("/bin/rm", ["-rf", "\(p)/w"])
            mkdir("\(p)/u", 0o755)
            mkdir("\(p)/w", 0o755)
        }
        lowerNames.insert(name, at: 0)
        try mount()
    }

    /// Both unmounted, then each side's layers mounted by the other: the
    /// kernel reads what Strata wrote, Strata what the kernel wrote, and the
    /// two views must still agree. `remount()` puts them back.
    public func remountCrossed() throws {
        unmount()
        try mount(crossed: true)
    }

    /// Both unmounted and mounted again over the same layers: what either
    /// knew in memory is gone, and every name is looked up from disk anew.
    public func remount() throws {
        unmount()
        try mount()
    }

    public func unmount() {
        for m in [kernelMount, strataMount] where isMountPoint(m) { umount2(m, Int32(MNT_DETACH)) }
        endChild(strataPID, seconds: 5)
        strataPID = 0
    }

    deinit { unmount() }

    /// Differences between the two merged views.
    public func mergedDiff() -> [String] {
        TreeSnapshot.diff(TreeSnapshot.take(kernelMount, times: false), TreeSnapshot.take(strataMount, times: false),
                          labels: ("kernel", "strata"))
    }

    /// The merged views' differences but one that FUSE leaves with
    /// index=on: a change (chmod, open for writing) through one name of an
    /// indexed hard link copies up that name's directory in the kernel
    /// (ovl_link_up), whose link count then shows 1 as a merged directory's
    /// does. FUSE tells the daemon the inode, not the name it was reached
    /// by, so Strata leaves the directories as they are (2 links, as a lower
    /// directory's). Only that difference is let through: a directory, with
    /// nothing else unlike.
    public func mergedDiffBeyondLinkUp() -> [String] {
        mergedDiff().filter { line in
            let sides = line.components(separatedBy: " != ")
            guard sides.count == 2, sides[0].contains("type=40000"),
                  let k = sides[0].components(separatedBy: ": kernel ").last,
                  let s = sides[1].components(separatedBy: "strata ").last else { return true }
            let links = [k, s].map { $0.contains("nlink=1") ? 1 : ($0.contains("nlink=2") ? 2 : 0) }
            let rest = [k, s].map { $0.replacingOccurrences(of: "nlink=1", with: "").replacingOccurrences(of: "nlink=2", with: "") }
            return !(Set(links) == [1, 2] && rest[0] == rest[1])
        }
    }

    /// Differences between the two upper layers: whiteouts, opaque marks,
    /// copied-up files (the kernel's private origin/impure xattrs aside).
    public func upperDiff() -> [String] {
        let p = ["trusted.overlay.opaque", "trusted.overlay.metacopy", "user."]
        return TreeSnapshot.diff(TreeSnapshot.take(kernelUpper, times: false, xattrPrefixes: p),
                                 TreeSnapshot.take(strataUpper, times: false, xattrPrefixes: p),
                                 labels: ("kernel upper", "strata upper"))
    }
}
