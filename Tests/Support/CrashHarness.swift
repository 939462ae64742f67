import CStrata
import Foundation
import Synchronization
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// One operation to interrupt: the lower layers it starts from and what it
/// does through the mount.
public struct CrashCase: Sendable {
    public let name: String
    /// Extra mount options, for Strata and the kernel alike.
    public let options: [String]
    /// Fills `base/l1` (top) and `base/l2`.
    public let build: @Sendable (String) -> Void
    /// Each step one system call through the mount (FileOps on the merged
    /// root): each must be all or nothing. Later steps fail once the
    /// daemon is dead, which is the point.
    public let steps: [@Sendable (FileOps) -> Void]
    /// What a step may leave done when killed half-way, as the kernel
    /// would too: the copy-up it makes first (a link copies its source up,
    /// then links). Each is run on the kernel's mount to give a tree that
    /// is also accepted.
    public let partial: [@Sendable (FileOps) -> Void]

    public init(_ name: String, options: [String] = [], build: @escaping @Sendable (String) -> Void,
                steps: [@Sendable (FileOps) -> Void], partial: [@Sendable (FileOps) -> Void] = []) {
        self.name = name
        self.options = options
        self.build = build
        self.steps = steps
        self.partial = partial
    }

    public init(_ name: String, options: [String] = [], build: @escaping @Sendable (String) -> Void,
                partial: [@Sendable (FileOps) -> Void] = [], op: @escaping @Sendable (FileOps) -> Void) {
        self.init(name, options: options, build: build, steps: [op], partial: partial)
    }

    func run(_ o: FileOps) { for s in steps { s(o) } }

    /// Runs the steps and returns the ones that failed for another reason
    /// than the daemon's death (which is expected once it is killed).
    func runNotingFailures(_ o: FileOps) -> [String] {
        var failed: [String] = []
        for (i, s) in steps.enumerated() {
            errno = 0
            s(o)
            let e = errno
            if e != 0 && e != ENOTCONN && e != ECONNABORTED && e != ECANCELED {
                failed.append("step \(i + 1): \(FileOps.errnoName(e))")
            }
        }
        return failed
    }
}

/// What one kill left, as seen after a remount.
public struct CrashOutcome: Sendable {
    public let point: Int
    public let delayMicros: Int
    /// "before", "after", or "after step K of N".
    public let state: String
    /// Empty when the kill was survived: nothing half-made, work/ clean,
    /// the kernel shows the same tree.
    public let problems: [String]
}

/// Kills Strata's daemon with SIGKILL at random points of an operation,
/// remounts, and checks what the kernel's overlayfs guarantees through
/// copy-up in workdir: every path is exactly as before or exactly as
/// after, nothing half-made is visible, `work/` holds no leftovers, and the
/// kernel's overlayfs mounts the same upper and shows the same tree.
public final class CrashHarness: @unchecked Sendable {
    let binary: String
    let scratch: String
    var rng: SystemRandomNumberGenerator

    public init(binary: String, scratch: String) {
        self.binary = binary
        self.scratch = scratch
        rng = SystemRandomNumberGenerator()
    }

    var isVolatile: (CrashCase) -> Bool = { $0.options.contains("volatile") }

    func options(_ c: CrashCase, _ base: String, _ u: String, _ w: String) -> String {
        (["lowerdir=\(base)/l1:\(base)/l2", "upperdir=\(u)", "workdir=\(w)"] + c.options).joined(separator: ",")
    }

    func kernelOptions(_ c: CrashCase, _ base: String, _ u: String, _ w: String) -> String {
        // The kernel's defaults that Strata does not share are set to Strata's.
        let metacopy = c.options.contains("metacopy=on")
        let redirect = c.options.contains("redirect_dir=on") || metacopy ? "redirect_dir=on" : "redirect_dir=off"
        let index = c.options.contains("index=on") ? "index=on" : "index=off"
        let rest = c.options.filter { !$0.hasPrefix("redirect_dir") && !$0.hasPrefix("metacopy") && !$0.hasPrefix("index") }
        return (["lowerdir=\(base)/l1:\(base)/l2", "upperdir=\(u)", "workdir=\(w)", redirect, index,
                 metacopy ? "metacopy=on" : "metacopy=off", "xino=off"] + rest)
            .joined(separator: ",")
    }

    /// Strata in the foreground, so that its PID is ours to kill.
    func mountStrata(_ opts: String, _ m: String) throws -> pid_t {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let pid = try Spawn.start(binary, ["strata", "mount", "-f", "-o", opts, m], stdio: (null, null, null))
        guard waitFor(10, { isMountPoint(m) }) else {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            throw SysError(.timedOut, "strata mount did not appear", m)
        }
        return pid
    }

    func unmountStrata(_ m: String, _ pid: pid_t) {
        umount2(m, Int32(MNT_DETACH))
        var st: Int32 = 0
        for _ in 0..<500 {
            if waitpid(pid, &st, WNOHANG) == pid { return }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &st, 0)
    }

    func kernelSnapshot(_ opts: String, _ m: String) -> [String: EntryState]? {
        guard runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", opts, m]).status == 0 else { return nil }
        defer { umount2(m, Int32(MNT_DETACH)) }
        return TreeSnapshot.take(m, times: false)
    }

    func fresh(_ dir: String) -> (String, String, String) {
        _ = runProgram("/bin/rm", ["-rf", dir])
        for d in ["", "/u", "/w", "/m"] { mkdir(dir + d, 0o755) }
        return ("\(dir)/u", "\(dir)/w", "\(dir)/m")
    }

    func now() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000
    }

    /// Runs `points` kills of `c`; returns each outcome. `log` hears one
    /// line per point.
    public func run(_ c: CrashCase, points: Int, log: (String) -> Void = { _ in }) throws -> [CrashOutcome] {
        // The name, safe in a mount option (no comma, no colon, no space).
        let root = "\(scratch)/" + String(c.name.map { $0.isLetter || $0.isNumber ? $0 : "-" })
        _ = runProgram("/bin/rm", ["-rf", root])
        let base = "\(root)/base"
        for d in [root, base, "\(base)/l1", "\(base)/l2"] { mkdir(d, 0o755) }
        c.build(base)
        defer { _ = runProgram("/bin/rm", ["-rf", root]) }

        // The reference: the kernel's tree before the operation and after
        // each of its steps.
        var (u, w, m) = fresh("\(root)/ref")
        guard runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", kernelOptions(c, base, u, w), m]).status == 0 else {
            throw SysError(.ioError, "kernel overlay mount", m)
        }
        var states = [TreeSnapshot.take(m, times: false)]
        for step in c.steps {
            step(FileOps(m))
            states.append(TreeSnapshot.take(m, times: false))
        }
        umount2(m, Int32(MNT_DETACH))
        var partialStates: [[String: EntryState]] = []
        for (i, p) in c.partial.enumerated() {
            (u, w, m) = fresh("\(root)/partial\(i)")
            guard runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", kernelOptions(c, base, u, w), m]).status == 0 else {
                throw SysError(.ioError, "kernel overlay mount", m)
            }
            p(FileOps(m))
            partialStates.append(TreeSnapshot.take(m, times: false))
            umount2(m, Int32(MNT_DETACH))
        }
        let before = states[0], after = states[states.count - 1]
        if before == after { throw SysError(.invalidArgument, "the operation changes nothing", c.name) }

        // How long the operation takes on Strata: kills fall in [0, 1.3x].
        (u, w, m) = fresh("\(root)/timing")
        var pid = try mountStrata(options(c, base, u, w), m)
        let t0 = now()
        c.run(FileOps(m))
        let window = max(200, (now() - t0) * 13 / 10)
        unmountStrata(m, pid)

        var out: [CrashOutcome] = []
        for point in 0..<points {
            (u, w, m) = fresh("\(root)/p")
            var problems: [String] = []
            pid = try mountStrata(options(c, base, u, w), m)
            let delay = Int.random(in: 0...window, using: &rng)
            let finished = Atomic<Bool>(false), began = Atomic<Bool>(false)
            let target = m
            let stepFailures = Locked<[String]>([])
            let opThread = Thread {
                began.store(true, ordering: .releasing)
                let failed = c.runNotingFailures(FileOps(target))
                stepFailures.withLock { $0 = failed }
                finished.store(true, ordering: .releasing)
            }
            opThread.start()
            // The delay counts from the operation's start, not the thread's.
            while !began.load(ordering: .acquiring) {}
            let start = now()
            while now() - start < delay {}
            kill(pid, SIGKILL)
            if !waitFor(10, { finished.load(ordering: .acquiring) }) {
                problems.append("the operation hung after the daemon died")
            }
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            umount2(m, Int32(MNT_DETACH))

            if isVolatile(c) {
                // As with the kernel: an upper a volatile mount wrote is refused
                // until someone says it is intact (the daemon died, not the system).
                let r = runProgram(binary, ["mount", "-o", options(c, base, u, w), m])
                if r.status == 0 || !r.stderr.contains("volatile") {
                    problems.append("a remount after a volatile mount was not refused: \(r.stderr)")
                    if r.status == 0 { umount2(m, Int32(MNT_DETACH)) }
                }
                _ = runProgram("/bin/rm", ["-rf", "\(w)/work/incompat"])
            }
            pid = try mountStrata(options(c, base, u, w).replacingOccurrences(of: ",volatile", with: ""), m)
            let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: "\(w)/work")) ?? [])
                .filter { $0 != "#whiteout" }
            if !leftovers.isEmpty { problems.append("work/ holds leftovers after the remount: \(leftovers.sorted())") }
            let seen = TreeSnapshot.take(m, times: false)
            unmountStrata(m, pid)

            // Each step is one system call: what the remount shows must be
            // exactly the tree before the operation or after one of its steps.
            // Only a directory's link count may differ: it says whether the
            // directory is merged (1) or lower only (its real count), and a
            // step may stop right after copying a parent up, which changes
            // nothing else. The kernel check below compares it exactly.
            func plain(_ t: [String: EntryState]) -> [String: EntryState] {
                t.mapValues { e in var x = e; if x.type == Linux.S_IFDIR { x.nlink = 0 }; return x }
            }
            let matched = states.map(plain).firstIndex(of: plain(seen))
            let partly = matched == nil && partialStates.map(plain).contains(plain(seen))
            if matched == nil && !partly {
                let nearest = states.min { TreeSnapshot.diff($0, seen).count < TreeSnapshot.diff($1, seen).count } ?? before
                problems.append("a tree that is neither before nor after any step; against the nearest: "
                    + TreeSnapshot.diff(nearest, seen, labels: ("expected", "strata")).prefix(5).joined(separator: "; ")
                    + "; steps that failed before the kill: " + stepFailures.withLock { $0.prefix(8).joined(separator: ", ") })
            }
            if let k = kernelSnapshot(kernelOptions(c, base, u, w).replacingOccurrences(of: ",volatile", with: ""), m) {
                problems += TreeSnapshot.diff(seen, k, labels: ("strata", "kernel")).prefix(5)
            } else {
                problems.append("the kernel's overlayfs refused the upper Strata left")
            }
            let state = matched.map { $0 == 0 ? "before" : $0 == states.count - 1 ? "after" : "after step \($0) of \(states.count - 1)" }
                ?? (partly ? "after the step's copy-up" : "inconsistent")
            log("\(c.name) #\(point): kill at \(delay) µs of \(window): \(state)\(problems.isEmpty ? "" : ": " + problems.joined(separator: "; "))")
            out.append(CrashOutcome(point: point, delayMicros: delay, state: state, problems: problems))
        }
        return out
    }
}
