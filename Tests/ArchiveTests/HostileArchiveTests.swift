import Archive
import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Layer archives are hostile until proven otherwise: each bad archive is
/// refused with an error naming the entry, and nothing is left behind.
@Suite struct HostileArchiveTests {
    /// Builds a tar with Python's tarfile: `spec` is Python statements using
    /// `t` (the TarFile), `add_file(name, data)` and `add(info)`.
    func makeTar(_ t: TempDir, _ name: String, _ spec: String) throws -> String {
        let path = "\(t.path)/\(name).tar"
        let script = """
        import tarfile, io
        t = tarfile.open('\(path)', 'w', format=tarfile.PAX_FORMAT)
        def add_file(n, data=b'x'):
            i = tarfile.TarInfo(n); i.size = len(data); t.addfile(i, io.BytesIO(data))
        def add(n, kind, target=''):
            i = tarfile.TarInfo(n); i.type = kind; i.linkname = target; t.addfile(i)
        \(spec)
        t.close()
        """
        let r = runProgram("/usr/bin/env", ["python3", "-c", script])
        try #require(r.status == 0, "python: \(r.stderr)")
        return path
    }

    static let cases: [(String, String, String)] = [
        ("dotdot", "add_file('a/../../evil')", "'..'"),
        ("through-symlink", "add('link', tarfile.SYMTYPE, '/tmp')\nadd_file('link/evil')", "symlink"),
        ("through-inner-symlink", "add('d', tarfile.DIRTYPE)\nadd('s', tarfile.SYMTYPE, 'd')\nadd_file('s/evil')", "symlink"),
        ("hardlink-outside", "add('h', tarfile.LNKTYPE, '../outside')", "'..'"),
        // An absolute target is the layer's own path, here one it lacks.
        ("hardlink-absolute", "add('h', tarfile.LNKTYPE, '/etc/passwd')", "parent etc"),
        ("empty-whiteout", "add_file('dir/.wh.', b'')", "names nothing"),
    ]

    @Test(arguments: 0..<cases.count)
    func hostileArchiveIsRefused(_ i: Int) throws {
        let (name, spec, word) = Self.cases[i]
        let t = TempDir()
        let tar = try makeTar(t, name, spec)
        let dest = "\(t.path)/layer"
        #expect { try LayerApplier().apply(file: tar, to: dest) } throws: { e in
            "\(e)".contains(word)
        }
        #expect(FileOps(t.path).ls("") == "\(name).tar", "something was left behind")
        var st = stat()
        #expect(lstat("/tmp/evil", &st) != 0 && lstat("/etc/evil", &st) != 0)
    }

    /// Applied onto a parent's tree (the btrfs driver's way), a layer meets
    /// symlinks an earlier layer placed: `a`, pointing out of the tree.
    /// No whiteout, opaque marker, file or hard link may act through it.
    /// A deletion below a symlink names nothing in the layer's tree (the
    /// path does not exist there), so it is dropped and counted, as a
    /// whiteout of a missing name is; anything that would be written there
    /// is refused.
    static let ontoCases: [(String, String, refused: Bool)] = [
        ("whiteout", "add_file('a/.wh.secret', b'')", false),
        ("opaque", "add_file('a/.wh..wh..opq', b'')", false),
        ("file", "add_file('a/secret', b'overwritten')", true),
        ("new-file", "add_file('a/planted', b'x')", true),
        ("hardlink", "add('h', tarfile.LNKTYPE, 'a/secret')", true),
        ("directory", "add('a/sub', tarfile.DIRTYPE)", true),
    ]

    @Test(arguments: 0..<ontoCases.count)
    func aLayerAppliedOntoATreeActsNeverThroughItsSymlinks(_ i: Int) throws {
        let (name, spec, refused) = Self.ontoCases[i]
        let t = TempDir()
        let victim = t.sub("victim")
        #expect(FileOps(victim).write("secret", "kept") == "ok")
        let tree = t.sub("tree")
        #expect(symlink(victim, "\(tree)/a") == 0)
        let tar = try makeTar(t, name, spec)
        let f = try Sys.open(tar, O_RDONLY | O_CLOEXEC)
        if refused {
            #expect { try LayerApplier().apply(fd: f.raw, onto: tree) } throws: { e in
                "\(e)".contains("symlink")
            }
        } else {
            let stats = try LayerApplier().apply(fd: f.raw, onto: tree)
            #expect(stats.droppedWhiteouts == 1 && stats.whiteouts == 0 && stats.opaque == 0, "\(stats)")
        }
        #expect(FileOps(victim).ls("") == "secret", "the victim directory changed")
        #expect(FileOps(victim).read("secret") == "kept")
        var st = stat()
        #expect(lstat("\(tree)/h", &st) != 0, "no link made to a file outside")
    }

    /// Access times as Docker's and containerd's unpackers set them: the
    /// archive's when it has one no older than the modification time,
    /// else the modification time (never 1970 for a tar without them).
    @Test func accessTimesAreNeverBeforeModificationTimes() throws {
        let t = TempDir()
        let spec = """
        def timed(n, mtime, atime=None):
            i = tarfile.TarInfo(n); i.size = 1; i.mtime = mtime
            if atime is not None: i.pax_headers = {'atime': str(atime)}
            t.addfile(i, io.BytesIO(b'x'))
        timed('none', 1000000)
        timed('later', 1000000, 2000000)
        timed('earlier', 1000000, 500)
        """
        let tar = try makeTar(t, "times", spec)
        let dest = "\(t.path)/layer"
        _ = try LayerApplier().apply(file: tar, to: dest)
        for (name, atime) in [("none", 1_000_000), ("later", 2_000_000), ("earlier", 1_000_000)] {
            var st = stat()
            #expect(lstat("\(dest)/\(name)", &st) == 0)
            #expect(st.st_mtim.tv_sec == 1_000_000 && st.st_atim.tv_sec == atime, "\(name): atime \(st.st_atim.tv_sec), mtime \(st.st_mtim.tv_sec)")
        }
    }

    @Test func truncatedArchiveIsRefusedAndLeavesNothing() throws {
        let t = TempDir()
        let tar = try makeTar(t, "full", "add_file('a', b'y' * 100000)\nadd_file('b', b'z' * 100000)")
        let cut = "\(t.path)/cut.tar"
        let data = try Data(contentsOf: URL(fileURLWithPath: tar))
        try data.prefix(150_000).write(to: URL(fileURLWithPath: cut))
        #expect { try LayerApplier().apply(file: cut, to: "\(t.path)/layer") } throws: { e in
            "\(e)".contains("truncated")
        }
        #expect(FileOps(t.path).ls("") == "cut.tar,full.tar")
    }

    @Test func goodArchiveKeepsLinksModesTimesAndXattrs() throws {
        let t = TempDir()
        let tar = try makeTar(t, "good", """
            add('d', tarfile.DIRTYPE)
            i = tarfile.TarInfo('d/f'); i.size = 5; i.mode = 0o4750; i.mtime = 1500000000; i.uid = 42; i.gid = 43
            i.pax_headers = {'SCHILY.xattr.user.k': 'v', 'mtime': '1500000000.123456789'}
            t.addfile(i, io.BytesIO(b'hello'))
            add('d/h', tarfile.LNKTYPE, 'd/f')
            add('d/s', tarfile.SYMTYPE, '../anywhere')
            add('d/fifo', tarfile.FIFOTYPE)
            i = tarfile.TarInfo('d/null'); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)
            add_file('deep/er/still/x')
            add_file('d/.wh.gone', b'')
            add_file('op/.wh..wh..opq', b'')
            add_file('op/kept')
            add_file('x' * 200)
            add_file('/abs/evil', b'inside')
            add_file('./dot/f', b'dot')
            add('./dot/h', tarfile.LNKTYPE, '/abs/evil')
            """)
        let dest = "\(t.path)/layer"
        let stats = try LayerApplier().apply(file: tar, to: dest)
        #expect(stats.whiteouts == 1 && stats.opaque == 1)
        let o = FileOps(dest)
        #expect(o.read("d/f") == "hello")
        let f = o.stat("d/f"), h = o.stat("d/h")
        #expect(f?.st_ino == h?.st_ino && f?.st_nlink == 2)
        #expect(f.map { $0.st_mode & 0o7777 } == 0o4750)
        #expect(f.map { ($0.st_uid, $0.st_gid) } ?? (0, 0) == (42, 43))
        #expect(f.map { $0.st_mtim.tv_sec } == 1_500_000_000)
        #expect(o.getxattr("d/f", "user.k") == "v")
        #expect(o.readlink("d/s") == "../anywhere")
        #expect(o.read("deep/er/still/x") == "x")
        #expect(o.stat(String(repeating: "x", count: 200)) != nil)          // PAX long name
        // `/abs/evil` and `./dot/f` are the layer's own paths (tar's reading).
        #expect(o.read("abs/evil") == "inside" && o.read("dot/f") == "dot")
        #expect(o.stat("dot/h")?.st_ino == o.stat("abs/evil")?.st_ino)
        var host = stat()
        #expect(lstat("/abs/evil", &host) != 0)
        if geteuid() == 0 {
            #expect(o.stat("d/gone").map { $0.st_mode & Linux.S_IFMT } == Linux.S_IFCHR)
            #expect(TreeSnapshot.xattrs("\(dest)/op", ["trusted."])["trusted.overlay.opaque"] == Array("y".utf8))
        }
        #expect(o.stat("d/fifo").map { $0.st_mode & Linux.S_IFMT } == Linux.S_IFIFO)
        if geteuid() == 0 {
            #expect(o.stat("d/null").map { ($0.st_mode & Linux.S_IFMT, UInt64($0.st_rdev)) } ?? (0, 0) == (Linux.S_IFCHR, strata_makedev(1, 3)))
        }
    }
}
