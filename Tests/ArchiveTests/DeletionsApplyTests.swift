import Archive
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A layer applied onto a copy of its parent with whiteouts as deletions
/// (how the Btrfs driver builds each layer from its parent's snapshot)
/// gives the tree the kernel's overlayfs shows for the same two layers.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct DeletionsApplyTests {
    @Test func applyingOntoTheParentMatchesTheKernelsMergedView() throws {
        let t = TempDir()
        let script = """
        import tarfile, io, time
        def tar(path, entries):
            t = tarfile.open(path, 'w', format=tarfile.PAX_FORMAT)
            for kind, name, extra in entries:
                i = tarfile.TarInfo(name); i.mtime = 1700000000; i.uid = 0; i.gid = 0
                if kind == 'dir': i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
                elif kind == 'file': i.mode = 0o644; data = extra.encode(); i.size = len(data); t.addfile(i, io.BytesIO(data))
                elif kind == 'sym': i.type = tarfile.SYMTYPE; i.linkname = extra; i.mode = 0o777; t.addfile(i)
                elif kind == 'link': i.type = tarfile.LNKTYPE; i.linkname = extra; t.addfile(i)
            t.close()
        tar('\(t.path)/base.tar', [('dir','a',''),('file','a/f1','one'),('file','a/f2','two'),('dir','b',''),('file','b/x','x'),
            ('dir','b/sub',''),('file','b/sub/y','y'),('file','c','cee'),('sym','d','c'),('file','e','was a file'),('link','h','c'),
            ('dir','keep',''),('file','keep/k','k')])
        tar('\(t.path)/layer.tar', [('file','.wh.c',''),('file','a/.wh.f1',''),('file','a/f2','two, changed'),('dir','b',''),
            ('file','b/new','placed before the opaque marker'),('file','b/.wh..wh..opq',''),('dir','e',''),('file','e/inner','in'),
            ('file','f','new'),('file','.wh.d',''),('dir','keep',''),('file','keep/k2','k2')])
        """
        let py = runProgram("/usr/bin/env", ["python3", "-c", script])
        try #require(py.status == 0, "\(py.stderr)")
        // The kernel's view: both layers in the overlay format, merged.
        let l1 = "\(t.path)/l1", l2 = "\(t.path)/l2", m = t.sub("merged")
        _ = try LayerApplier().apply(file: "\(t.path)/base.tar", to: l1)
        _ = try LayerApplier().apply(file: "\(t.path)/layer.tar", to: l2)
        let mount = runProgram("/bin/mount", ["-t", "overlay", "overlay", "-o", "lowerdir=\(l2):\(l1)", m])
        try #require(mount.status == 0, "\(mount.stderr)")
        defer { umount2(m, Int32(MNT_DETACH)) }
        let kernel = TreeSnapshot.take(m, times: true)
        // Ours: the base as a plain tree, the layer applied onto it.
        let copy = "\(t.path)/copy"
        _ = try LayerApplier().apply(file: "\(t.path)/base.tar", to: copy)
        let layer = try Sys.open("\(t.path)/layer.tar", O_RDONLY | O_CLOEXEC)
        let stats = try LayerApplier().apply(fd: layer.raw, onto: copy)
        #expect(stats.whiteouts == 3 && stats.opaque == 1, "\(stats)")
        let ours = TreeSnapshot.take(copy, times: true)
        // Link counts aside: overlayfs shows merged directories with one
        // link, and a lower file with the links it has in its own layer
        // (h and the whited-out c: 2); the applied tree has the real ones.
        func content(_ t: [String: EntryState]) -> [String: EntryState] {
            t.mapValues { e in
                var e = e
                e.nlink = 0
                return e
            }
        }
        #expect(TreeSnapshot.diff(content(kernel), content(ours), labels: ("kernel overlayfs", "applied as deletions")) == [])
        // What the opaque marker left: the new child only.
        #expect(FileOps(copy).ls("b") == "new")
        #expect(FileOps(copy).stat("c") == nil && FileOps(copy).read("h") == "cee", "the hard link keeps the deleted name's data")
    }
}
