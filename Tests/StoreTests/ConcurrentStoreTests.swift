import Foundation
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Commands on one store at once, as scripts and compose-like tools run
/// them: real processes started together. They wait for each other where
/// they must; none fails for a reason a user would not understand, and the
/// store stays whole.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ConcurrentStoreTests {
    static var fixture: String { "\(MountEnvironment.fixtures)/busybox-l3.docker.tar" }

    /// Starts every command at once and waits for all: (status, stderr) each.
    func together(_ commands: [[String]]) throws -> [(status: Int32, stderr: String)] {
        let t = TempDir()
        var pids: [pid_t] = []
        for (i, args) in commands.enumerated() {
            let err = open("\(t.path)/err\(i)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            defer { close(err) }
            let null = open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { close(null) }
            pids.append(try Spawn.start(MountEnvironment.binary, ["strata"] + args, stdio: (null, null, err)))
        }
        return pids.enumerated().map { i, pid in
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            let err = (try? String(contentsOfFile: "\(t.path)/err\(i)", encoding: .utf8)) ?? ""
            return ((st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f), err)
        }
    }

    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    func expectWhole(_ root: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let r = strata(["check", "--root", root, "--content"])
        #expect(r.status == 0, "strata check: \(r.stdout)\(r.stderr)", sourceLocation: sourceLocation)
    }

    /// Commands that open a store nobody has made yet, all at once: the
    /// one that creates it holds the lock while its first transaction
    /// commits, and the others' lock-free "is it current?" may see the
    /// database half made ("no such table: grdb_migrations", 1 in 160
    /// opens before the fix). They must wait for it, not fail.
    @Test func commandsOpeningANewStoreTogetherAllSucceed() throws {
        let t = TempDir()
        for round in 0..<60 {
            let root = "\(t.path)/store\(round)"
            let results = try together(Array(repeating: ["image", "ls", "--root", root], count: 4))
            for r in results { #expect(r.status == 0, "round \(round): \(r.stderr)") }
            if results.contains(where: { $0.status != 0 }) { break }
        }
    }

    @Test func fourLoadsOfOneArchiveAllSucceed() throws {
        let t = TempDir()
        let root = "\(t.path)/store"
        let results = try together(Array(repeating: ["image", "load", "--root", root, "-i", Self.fixture], count: 4))
        for r in results { #expect(r.status == 0, "\(r.stderr)") }
        #expect(strata(["image", "ls", "--root", root]).stdout.split(separator: "\n").count == 2)
        expectWhole(root)
    }

    /// Reading the store never waits for a command that changes it (a long
    /// pull holds the lock while it unpacks).
    @Test func readersDoNotWaitForTheLock() throws {
        let t = TempDir()
        let root = "\(t.path)/store"
        #expect(strata(["image", "load", "--root", root, "-i", Self.fixture]).status == 0)
        let fd = open("\(root)/lock", O_RDWR | O_CLOEXEC)
        defer { close(fd) }
        #expect(flock(fd, LOCK_EX) == 0)
        // A holder's intent is there while it works.
        FileManager.default.createFile(atPath: "\(root)/tmp/intents/p\(getpid())-1", contents: nil)
        let started = Date()
        // (`check` takes the lock on purpose, for a consistent view: not here.)
        for args in [["image", "ls"], ["ls"], ["image", "inspect", "localhost/eco/busybox:l3"], ["df"]] {
            let r = strata(args + ["--root", root])
            #expect(r.status == 0, "\(args): \(r.stderr)")
        }
        #expect(Date().timeIntervalSince(started) < 5, "a reader waited for the store's lock")
        unlink("\(root)/tmp/intents/p\(getpid())-1")
        flock(fd, LOCK_UN)
    }

    @Test func containersCreatedTogetherAllExist() throws {
        let t = TempDir()
        let root = "\(t.path)/store"
        #expect(strata(["image", "load", "--root", root, "-i", Self.fixture]).status == 0)
        var commands = (1...3).map { ["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c\($0)"] }
        commands += Array(repeating: ["create", "--root", root, "localhost/eco/busybox:l3", "--name", "same"], count: 2)
        let results = try together(commands)
        for r in results.prefix(3) { #expect(r.status == 0, "\(r.stderr)") }
        // One of the two with the same name wins; the other says why it lost.
        let same = results.suffix(2)
        #expect(same.filter { $0.status == 0 }.count == 1)
        #expect(same.filter { $0.status != 0 && $0.stderr.contains("exists already") }.count == 1, "\(same.map(\.stderr))")
        #expect(strata(["ls", "--root", root]).stdout.split(separator: "\n").count == 5)
        expectWhole(root)
    }

    /// Removal racing with use: whichever runs first, the other either
    /// works or says in the user's terms why not, and the store is whole.
    @Test func removalRacingWithLoadCreateAndCommit() throws {
        let t = TempDir()
        let root = "\(t.path)/store"
        for round in 0..<3 {
            #expect(strata(["image", "load", "--root", root, "-i", Self.fixture]).status == 0)
            #expect(strata(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "w\(round)"]).status == 0)
            let results = try together([
                ["image", "rm", "--root", root, "localhost/eco/busybox:l3"],
                ["image", "load", "--root", root, "-i", Self.fixture],
                ["commit", "--root", root, "w\(round)", "localhost/committed:\(round)"],
                ["rm", "--root", root, "w\(round)"],
                ["create", "--root", root, "localhost/eco/busybox:l3", "--name", "x\(round)"],
            ])
            for r in results where r.status != 0 {
                let understood = ["is used by a container", "no container", "no image"].contains { r.stderr.contains($0) }
                #expect(understood, "round \(round): \(r.stderr)")
                #expect(!r.stderr.contains("SQLite") && !r.stderr.contains("database is locked"), "\(r.stderr)")
            }
            expectWhole(root)
        }
    }
}

/// `strata check` finds a store damaged on purpose, and `--repair` mends
/// what can be mended from the database and the kept layer tars.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct StoreCheckTests {
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    @Test func damageIsFoundAndMended() throws {
        let t = TempDir()
        let root = "\(t.path)/store"
        #expect(strata(["image", "load", "--root", root, "-i", "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"]).status == 0)
        #expect(strata(["check", "--root", root, "--content"]).status == 0)
        let img = try Store(root: root).image("localhost/eco/busybox:l3")
        let dirs = img.layerIDs.map { "\(root)/overlay/\(Digest.hex($0))" }
        // A deleted layer tree, a removed short link, a leftover directory, a corrupted tar.
        _ = runProgram("/bin/rm", ["-rf", "\(dirs[0])/diff"])
        let link = try String(contentsOfFile: "\(dirs[1])/link", encoding: .utf8)
        unlink("\(root)/overlay/l/\(link)")
        mkdir("\(root)/overlay/left-behind", 0o700)
        let tar = "\(dirs[2])/layer.tar"
        let fd = open(tar, O_WRONLY | O_APPEND)
        _ = write(fd, "junk", 4)
        close(fd)

        let found = strata(["check", "--root", root, "--content"])
        #expect(found.status == 1)
        let lines = found.stdout.split(separator: "\n")
        #expect(lines.count == 4, "\(found.stdout)")
        #expect(lines.contains { $0.contains("/diff is missing") })
        #expect(lines.contains { $0.contains("short link") && $0.contains(link) })
        #expect(lines.contains { $0.contains("left-behind") })
        #expect(lines.contains { $0.contains("layer.tar has digest") })

        let mended = strata(["check", "--root", root, "--content", "--repair"])
        #expect(mended.status == 1, "the corrupted tar cannot be restored")
        #expect(mended.stdout.split(separator: "\n").filter { !$0.hasPrefix("repaired:") }.count == 1, "\(mended.stdout)")
        // What was restored is whole again: the union shows the image.
        #expect(try Sys.realPath("\(root)/overlay/l/\(link)") == "\(dirs[1])/diff")
        let m = strata(["mount", "--root", root, "c"])
        #expect(m.status == 0, "\(m.stderr)")
        let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(merged, Int32(MNT_DETACH)) }
        #expect(FileOps(merged).stat("bin/busybox") != nil)
        #expect(FileOps(merged).ls("opt/app/l2") == "a,rel-link")
        _ = strata(["umount", "--root", root, "c"])
    }
}

/// `strata` killed (SIGKILL) at random points of each command that changes
/// the store: right after, `check` finds nothing worse than leftovers of
/// the killed command (never a row without its complete directory, a tag
/// to a missing image); the next command undoes those, works, and leaves a
/// store `check` finds whole.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct StoreKillTests {
    static var fixture: String { "\(MountEnvironment.fixtures)/busybox-l3.docker.tar" }

    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    /// Runs `args` and kills it after `micros`; returns whether it finished first.
    func killed(_ args: [String], after micros: Int) throws -> Bool {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let pid = try Spawn.start(MountEnvironment.binary, ["strata"] + args, stdio: (null, null, null))
        usleep(UInt32(micros))
        var st: Int32 = 0
        if waitpid(pid, &st, WNOHANG) == pid { return true }
        kill(pid, SIGKILL)
        waitpid(pid, &st, 0)
        return false
    }

    struct Command: Sendable {
        let name: String
        /// Makes the state the command starts from.
        let prepare: @Sendable (String, (([String]) -> (status: Int32, stdout: String, stderr: String))) -> Void
        let args: @Sendable (String) -> [String]
        /// Its steps where `STRATA_KILL_AT` kills it (see killPoint in Store).
        var points: [String] = []
    }

    static let commands: [Command] = [
        Command(name: "image load", prepare: { _, _ in }, args: { ["image", "load", "--root", $0, "-i", fixture] },
                points: ["load-unpacked", "layer-links", "load-recorded"]),
        Command(name: "create", prepare: { root, run in _ = run(["image", "load", "--root", root, "-i", fixture]) },
                args: { ["create", "--root", $0, "localhost/eco/busybox:l3", "--name", "k"] }, points: ["create-dirs"]),
        Command(name: "commit", prepare: { root, run in
            _ = run(["image", "load", "--root", root, "-i", fixture])
            _ = run(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "k"])
            if let s = try? Store(root: root), let c = try? s.container("k") {
                let tree = s.layout == .btrfs ? "\(root)/btrfs/subvolumes/\(c.id)" : "\(root)/overlay/\(c.id)/diff"
                FileManager.default.createFile(atPath: "\(tree)/added", contents: Data(repeating: 7, count: 1 << 20))
            }
        }, args: { ["commit", "--root", $0, "k", "localhost/committed:1"] }, points: ["layer-links", "commit-layer"]),
        Command(name: "rm", prepare: { root, run in
            _ = run(["image", "load", "--root", root, "-i", fixture])
            _ = run(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "k"])
        }, args: { ["rm", "--root", $0, "k"] }, points: ["rm-row"]),
        Command(name: "image rm", prepare: { root, run in _ = run(["image", "load", "--root", root, "-i", fixture]) },
                args: { ["image", "rm", "--root", $0, "localhost/eco/busybox:l3"] }, points: ["image-rm-rows"]),
    ]

    @Test(arguments: 0..<commands.count)
    func killedCommandLeavesNothingHalfRegistered(_ i: Int) throws {
        var dirs: [TempDir] = []
        try killRounds(Self.commands[i]) {
            dirs.append(TempDir())
            return dirs[dirs.count - 1].path
        }
    }

    /// The same on a store of the btrfs driver, on a btrfs made for the test.
    @Test(arguments: 0..<commands.count)
    func killedCommandOnBtrfsLeavesNothingHalfRegistered(_ i: Int) throws {
        let fs = try LoopFilesystem(sizeMiB: 512)
        var n = 0
        // A btrfs layer has no links: its step between disk and row is the sealed subvolume.
        var c = Self.commands[i]
        c.points = c.points.map { $0 == "layer-links" ? "layer-sealed" : $0 }
        try killRounds(c) {
            n += 1
            let root = "\(fs.mountpoint)/round\(n)"
            let made = strata(["--storage-driver", "btrfs", "image", "ls", "--root", root])
            #expect(made.status == 0, "\(made.stderr)")
            return root
        }
    }

    /// Kills the command at each of its named points and at random times,
    /// each time in a store `newRoot` makes; checks what is left.
    func killRounds(_ c: Command, newRoot: () -> String) throws {
        // How long the command takes here: kills fall in [0, 1.2x].
        let root0 = newRoot()
        c.prepare(root0, strata)
        let start = Date()
        let r = strata(c.args(root0))
        #expect(r.status == 0, "\(c.name): \(r.stderr)")
        let micros = max(2_000, Int(Date().timeIntervalSince(start) * 1.2e6))
        // Every named step, then random points.
        let plan: [(String?, Int)] = c.points.map { ($0, 0) } + (0..<4).map { _ in (nil, Int.random(in: 0...micros)) }
        for (round, (point, delay)) in plan.enumerated() {
            let root = newRoot()
            c.prepare(root, strata)
            let finished: Bool
            if let point {
                let r = runProgram(MountEnvironment.binary, c.args(root), env: ["STRATA_KILL_AT": point])
                #expect(r.status != 0, "\(c.name) ran past kill point \(point)")
                finished = false
            } else {
                finished = try killed(c.args(root), after: delay)
            }
            let found = strata(["check", "--root", root])
            let serious = found.stdout.split(separator: "\n").filter { !$0.hasPrefix("leftover:") && !$0.hasPrefix("store ") }
            let at = point ?? "\(delay) µs"
            #expect(serious.isEmpty, "\(c.name) killed at \(at) (round \(round)): \(serious)")
            // The next command works (again, or on what is left) and leaves the store whole.
            let again = strata(c.args(root))
            let acceptable = again.status == 0 || (finished || again.stderr.contains("no container") || again.stderr.contains("no image")
                || again.stderr.contains("exists already"))
            #expect(acceptable, "\(c.name) after a kill at \(at): \(again.stderr)")
            let after = strata(["check", "--root", root, "--content"])
            #expect(after.status == 0, "\(c.name) killed at \(at), then run again: \(after.stdout)")
        }
    }
}

/// A store whose disk fills: the command fails with one line that says so,
/// nothing is half-registered, and once space is back the store works.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct StoreFullDiskTests {
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    @Test func loadAndCommitOnAFullDisk() throws {
        let t = TempDir("strata-store-full")
        let root = t.sub("store")
        #expect(runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", root]).status == 0)
        defer { umount2(root, Int32(MNT_DETACH)) }
        let fixture = "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"
        let load = strata(["image", "load", "--root", root, "-i", fixture])
        #expect(load.status != 0)
        let lines = load.stderr.split(separator: "\n").filter { !$0.contains("unpacked") && !$0.contains("already present") }
        #expect(lines.count == 1 && lines[0].contains("No space left on device"), "\(load.stderr)")
        #expect(strata(["check", "--root", root]).status == 0, "half-registered after a full disk")
        #expect(strata(["image", "ls", "--root", root]).stdout.split(separator: "\n").count == 1)
        // Space is back: the same load works.
        #expect(runProgram("/bin/mount", ["-o", "remount,size=64m", root]).status == 0)
        #expect(strata(["image", "load", "--root", root, "-i", fixture]).status == 0)
        #expect(strata(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"]).status == 0)
        // A commit that does not fit.
        let c = try Store(root: root).container("c")
        FileManager.default.createFile(atPath: "\(root)/overlay/\(c.id)/diff/blob", contents: Data(repeating: 1, count: 6 << 20))
        #expect(runProgram("/bin/mount", ["-o", "remount,size=16m", root]).status == 0)
        let commit = strata(["commit", "--root", root, "c", "localhost/too-big:1"])
        #expect(commit.status != 0 && commit.stderr.contains("No space left on device"), "\(commit.stderr)")
        #expect(strata(["check", "--root", root]).status == 0, "half-registered after a full disk")
        #expect(runProgram("/bin/mount", ["-o", "remount,size=64m", root]).status == 0)
        let again = strata(["commit", "--root", root, "c", "localhost/too-big:1"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(strata(["check", "--root", root, "--content"]).status == 0)
    }
}

/// `image prune` and `system prune`: only what nothing uses goes, also
/// beside commands running at the same time.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct PruneTests {
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    @Test func pruneRemovesOnlyWhatNothingUses() throws {
        let t = TempDir()
        let root = t.path
        let fixture = "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"
        #expect(strata(["image", "load", "--root", root, "-i", fixture]).status == 0)
        #expect(strata(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "c"]).status == 0)
        // The tag moves to the committed image: the loaded one is dangling, but c uses it.
        #expect(strata(["commit", "--root", root, "c", "localhost/eco/busybox:l3"]).status == 0)
        var p = strata(["image", "prune", "--root", root])
        #expect(p.status == 0 && p.stdout.contains("removed 0 images"), "\(p.stdout)")
        #expect(strata(["rm", "--root", root, "c"]).status == 0)
        p = strata(["image", "prune", "--root", root])
        #expect(p.stdout.contains("removed 1 image, 0 layers"), "its layers are the committed image's too: \(p.stdout)")
        #expect(strata(["image", "ls", "--root", root]).stdout.split(separator: "\n").count == 2)
        // Leftovers of a killed command go with system prune.
        mkdir("\(root)/overlay/left-behind", 0o700)
        p = strata(["system", "prune", "--root", root, "-a"])
        #expect(p.status == 0 && p.stdout.contains("removed 1 image, 4 layers, 1 leftover"), "\(p.stdout)")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/overlay")) == ["l"])
        #expect(strata(["check", "--root", root]).status == 0)
    }

    @Test func pruneBesideCreate() throws {
        let t = TempDir()
        let root = t.path
        for round in 0..<3 {
            #expect(strata(["image", "load", "--root", root, "-i", "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"]).status == 0)
            let results = try ConcurrentStoreTests().together([
                ["image", "prune", "-a", "--root", root],
                ["create", "--root", root, "localhost/eco/busybox:l3", "--name", "p\(round)"],
            ])
            let create = results[1]
            #expect(create.status == 0 || create.stderr.contains("no image"), "\(create.stderr)")
            let check = strata(["check", "--root", root, "--content"])
            #expect(check.status == 0, "\(check.stdout)")
            if create.status == 0 {
                // The container's image survived the prune whole.
                let m = strata(["mount", "--root", root, "p\(round)"])
                #expect(m.status == 0, "\(m.stderr)")
                let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(FileOps(merged).stat("bin/busybox") != nil)
                umount2(merged, Int32(MNT_DETACH))
                #expect(strata(["rm", "--root", root, "p\(round)"]).status == 0)
            }
        }
    }
}

/// Fifty containers of one store mounted at once with Strata's daemon: all
/// serve, all unmount cleanly, no daemon is left.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct ManyMountsTests {
    @Test func fiftyMountsFromOneStore() throws {
        let t = TempDir()
        let root = t.path
        func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) { runProgram(MountEnvironment.binary, args) }
        #expect(strata(["image", "load", "--root", root, "-i", "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"]).status == 0)
        var merged: [String] = []
        defer { for m in merged { umount2(m, Int32(MNT_DETACH)) } }
        for i in 0..<50 {
            #expect(strata(["create", "--root", root, "localhost/eco/busybox:l3", "--name", "m\(i)"]).status == 0)
            let m = strata(["mount", "--root", root, "m\(i)", "--driver", "fuse"])
            #expect(m.status == 0, "mount \(i): \(m.stderr)")
            merged.append(m.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        for (i, m) in merged.enumerated() {
            #expect(FileOps(m).write("etc/motd", "container \(i)") == "ok", "mount \(i) does not serve")
        }
        for (i, m) in merged.enumerated() { #expect(FileOps(m).read("etc/motd") == "container \(i)") }
        for i in 0..<50 { #expect(strata(["umount", "--root", root, "m\(i)"]).status == 0) }
        #expect(merged.allSatisfy { !isMountPoint($0) })
        // Every daemon ended with its mount.
        #expect(waitFor(10) {
            // A daemon's command line ends with its merged path, under the store.
            runProgram("/usr/bin/pgrep", ["-f", "strata mount -o lowerdir=.*\(root)"]).stdout.isEmpty
                && !mountTable().contains(root)
        }, "daemons or mounts of the store are left")
    }
}
