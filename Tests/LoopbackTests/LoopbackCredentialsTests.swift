import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// What another user does through a root daemon's mount (allow_other): the
/// kernel checks permissions, files get the caller's owner, and writes drop
/// setuid/setgid exactly as on the plain directory.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct LoopbackCredentialsTests {
    @Test(arguments: ["passthrough=on", "passthrough=off"])
    func otherUsersGetTheirOwnerAndLoseSetuidOnWrite(_ option: String) throws {
        let t = TempDir()
        let ref = t.sub("ref"), src = t.sub("src"), mnt = t.sub("mnt")
        for d in [ref, src] {
            mkdir("\(d)/dir", 0o777)
            chmod("\(d)/dir", 0o777)
            _ = FileOps(d).write("dir/suid", "#!/bin/sh\n")
            chown("\(d)/dir/suid", 65534, 65534)
            chmod("\(d)/dir/suid", 0o6755)
            _ = FileOps(d).write("dir/rootfile", "root's")
            chmod("\(d)/dir/rootfile", 0o644)
        }
        let m = try LoopbackMount(source: src, mountpoint: mnt, options: [option])
        defer { m.unmount() }
        func asNobody(_ root: String) -> (Int32, String) {
            let script = "echo more >> \(root)/dir/suid; echo y > \(root)/dir/new; mkdir \(root)/dir/sub; echo z > \(root)/dir/rootfile; echo rc=$?"
            let r = runProgram("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", script])
            return (r.status, r.stdout)
        }
        let want = asNobody(ref), got = asNobody(mnt)
        #expect(want.1 == got.1)                        // the same EACCES on rootfile
        #expect(got.1.contains("rc=1") || got.1.contains("rc=2"))
        let a = TreeSnapshot.take(ref, times: false), b = TreeSnapshot.take(src, times: false)
        #expect(TreeSnapshot.diff(a, b, labels: ("plain", "through mount")) == [])
        #expect(FileOps(src).stat("dir/suid").map { $0.st_mode & 0o7777 } == 0o0755)
        #expect(FileOps(src).stat("dir/new").map { ($0.st_uid, $0.st_gid) } ?? (0, 0) == (65534, 65534))
        #expect(FileOps(src).stat("dir/sub")?.st_uid == 65534)
    }

    @Test func tmpfileCanBeLinkedIn() throws {
        let t = TempDir()
        let src = t.sub("src"), mnt = t.sub("mnt")
        let m = try LoopbackMount(source: src, mountpoint: mnt)
        defer { m.unmount() }
        let fd = open(mnt, Linux.O_TMPFILE | O_RDWR, 0o640)
        #expect(fd >= 0, "O_TMPFILE: \(errno)")
        guard fd >= 0 else { return }
        defer { close(fd) }
        #expect(write(fd, "anon", 4) == 4)
        #expect(FileOps(src).ls("") == "")
        #expect(linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, "\(mnt)/named", Linux.AT_SYMLINK_FOLLOW) == 0, "linkat: \(errno)")
        #expect(FileOps(src).read("named") == "anon")
        #expect(FileOps(mnt).stat("named").map { $0.st_mode & 0o777 } == 0o640)
    }
}

@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct LoopbackModeTests {
    /// The caller's umask applies once: not again by the daemon's own umask,
    /// and with `acl` a default ACL decides instead.
    @Test(arguments: [[String](), ["acl"]])
    func umaskAndDefaultACLsMatchThePlainDirectory(_ options: [String]) throws {
        guard let setfacl = Spawn.which("setfacl") else { Issue.record("setfacl missing: apt-get install acl"); return }
        let t = TempDir()
        let ref = t.sub("ref"), src = t.sub("src"), mnt = t.sub("mnt")
        for d in [ref, src] {
            mkdir("\(d)/acl", 0o755)
            _ = runProgram(setfacl, ["-d", "-m", "u::rwx,g::rwx,o::r-x,u:65534:rwx,m::rwx", "\(d)/acl"])
        }
        let m = try LoopbackMount(source: src, mountpoint: mnt, options: options)
        defer { m.unmount() }
        func make(_ root: String) -> Int32 {
            let script = "umask 0; touch \(root)/open; mkdir \(root)/dir; umask 077; touch \(root)/closed; mkdir \(root)/acl/sub; touch \(root)/acl/file"
            return runProgram("/bin/sh", ["-c", script]).status
        }
        #expect(make(ref) == 0 && make(mnt) == 0)
        let a = TreeSnapshot.take(ref, times: false, xattrPrefixes: ["system.", "user."])
        let b = TreeSnapshot.take(src, times: false, xattrPrefixes: ["system.", "user."])
        #expect(TreeSnapshot.diff(a, b, labels: ("plain", "through mount")) == [])
        #expect(FileOps(src).stat("open").map { $0.st_mode & 0o777 } == 0o666)
    }
}
