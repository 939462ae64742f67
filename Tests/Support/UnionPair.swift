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
    /// `redirectDir`: both mounted with redirect_dir=on (directory renames).
    public init(layers: Int = 3, strataOptions: [String] = [], redirectDir: Bool = false, build: (String) -> Void) throws {
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
        // The layers were copied as base/*: each side's own paths.
        let root = dir.path
        func opts(_ side: String) -> String {
            "lowerdir=\((1...layers).map { "\(root)/\(side)/l\($0)" }.joined(separator: ":")),upperdir=\(root)/\(side)/u,workdir=\(root)/\(side)/w"
        }
        kernelArgs = ["-t", "overlay", "overlay", "-o", opts("k") + ",redirect_dir=\(redirectDir ? "on" : "off"),index=off,xino=off,metacopy=off", kernelMount]
        var args = ["strata", "mount", "-f", "-o", opts("s") + (redirectDir ? ",redirect_dir=on" : "")]
        if !strataOptions.isEmpty { args[4] += "," + strataOptions.joined(separator: ",") }
        args.append(strataMount)
        strataArgs = args
        try mount()
    }

    private let kernelArgs: [String]
    private let strataArgs: [String]

    private func mount() throws {
        let k = runProgram("/bin/mount", kernelArgs)
        guard k.status == 0 else { throw SysError(.ioError, "kernel overlay mount: \(k.stderr)", kernelMount) }
        strataPID = try Spawn.start(MountEnvironment.binary, strataArgs)
        guard waitFor(10, { isMountPoint(self.strataMount) }) else {
            throw SysError(.timedOut, "strata mount did not appear", strataMount)
        }
    }

    /// Both unmounted and mounted again over the same layers: what either
    /// knew in memory is gone, and every name is looked up from disk anew.
    public func remount() throws {
        unmount()
        try mount()
    }

    public func unmount() {
        for m in [kernelMount, strataMount] where isMountPoint(m) { umount2(m, Int32(MNT_DETACH)) }
        if strataPID > 0 {
            var st: Int32 = 0
            for _ in 0..<250 {
                if waitpid(strataPID, &st, WNOHANG) == strataPID { strataPID = 0; return }
                usleep(20_000)
            }
            kill(strataPID, SIGKILL)
            waitpid(strataPID, &st, 0)
            strataPID = 0
        }
    }

    deinit { unmount() }

    /// Differences between the two merged views.
    public func mergedDiff() -> [String] {
        TreeSnapshot.diff(TreeSnapshot.take(kernelMount, times: false), TreeSnapshot.take(strataMount, times: false),
                          labels: ("kernel", "strata"))
    }

    /// Differences between the two upper layers: whiteouts, opaque marks,
    /// copied-up files (the kernel's private origin/impure xattrs aside).
    public func upperDiff() -> [String] {
        let p = ["trusted.overlay.opaque", "user."]
        return TreeSnapshot.diff(TreeSnapshot.take(kernelUpper, times: false, xattrPrefixes: p),
                                 TreeSnapshot.take(strataUpper, times: false, xattrPrefixes: p),
                                 labels: ("kernel upper", "strata upper"))
    }
}
