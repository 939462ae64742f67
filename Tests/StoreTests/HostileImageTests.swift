import Foundation
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Images whose layers are cut short or written by other tools' rules,
/// loaded through `strata image load` as a user would: a layer that ends
/// inside an entry is refused (naming the layer and the entry) and leaves
/// nothing in the store; what podman loads, Strata loads.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct HostileImageTests {
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        runProgram(MountEnvironment.binary, args)
    }

    /// A docker-save archive of two layers: a base, then `top` (Python
    /// statements building the tar `t`, with `add_file(name, data)`,
    /// `add_dir(name)`), cut by `cut` (a Python expression over `offsets`,
    /// the header and data offsets of each entry, and `size`), gzip'd when
    /// asked. The diff ID is taken over the bytes as cut, so every digest
    /// matches. Writes `image.tar` and returns its path.
    func makeImage(_ t: TempDir, top: String, cut: String = "size", gzip: Bool = false) throws -> String {
        let out = "\(t.path)/image.tar"
        let script = """
        import tarfile, io, hashlib, json, gzip
        def layer(build):
            buf = io.BytesIO()
            t = tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT)
            members = []
            def put(i, data):
                start = t.offset
                t.addfile(i, io.BytesIO(data) if data is not None else None)
                members.append((i.name, start, t.offset - (len(data or b'') + 511) // 512 * 512))
            def add_file(n, data=b'x', pax=None):
                i = tarfile.TarInfo(n); i.size = len(data); i.mode = 0o644
                if pax: i.pax_headers = pax
                put(i, data)
            def add_dir(n):
                i = tarfile.TarInfo(n); i.type = tarfile.DIRTYPE; i.mode = 0o755; put(i, None)
            build(t, add_file, add_dir)
            t.close()
            return buf.getvalue(), members
        def base(t, add_file, add_dir):
            add_dir('usr'); add_dir('usr/share'); add_dir('usr/share/doc'); add_dir('usr/share/doc/sed')
            add_file('usr/share/doc/sed/AUTHORS', b'authors'); add_file('usr/share/doc/sed/NEWS', b'news')
            add_file('etc/base', b'base')
        def top(t, add_file, add_dir):
        \(top.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
        b, _ = layer(base)
        data, members = layer(top)
        offsets = {n: (h, d) for n, h, d in members}
        size = len(data)
        data = data[:\(cut)]
        blobs = [b, gzip.compress(data) if \(gzip ? "True" : "False") else data]
        diff_ids = ['sha256:' + hashlib.sha256(x).hexdigest() for x in (b, data)]
        cfg = json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {},
                          'rootfs': {'type': 'layers', 'diff_ids': diff_ids}}).encode()
        cid = hashlib.sha256(cfg).hexdigest()
        o = tarfile.open('\(out)', 'w')
        def put(n, d):
            i = tarfile.TarInfo(n); i.size = len(d); o.addfile(i, io.BytesIO(d))
        put(cid + '.json', cfg)
        put('l0/layer.tar', blobs[0]); put('l1/layer.tar', blobs[1])
        put('manifest.json', json.dumps([{'Config': cid + '.json', 'RepoTags': ['localhost/hostile:1'],
                                          'Layers': ['l0/layer.tar', 'l1/layer.tar']}]).encode())
        o.close()
        """
        let r = runProgram("/usr/bin/env", ["python3", "-c", script])
        try #require(r.status == 0, "python: \(r.stderr)")
        return out
    }

    /// The store holds nothing: no image, no layer directory, no short link.
    func expectEmpty(_ root: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(strata(["image", "ls", "--root", root]).stdout.split(separator: "\n").count == 1,
                "an image was registered", sourceLocation: sourceLocation)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/overlay"))?.filter { $0 != "l" } == [],
                "a layer directory was left", sourceLocation: sourceLocation)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/overlay/l")) == [],
                "a short link was left", sourceLocation: sourceLocation)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/tmp"))?.filter { $0 != "intents" } == [],
                "temporary files were left", sourceLocation: sourceLocation)
    }

    static let bigFile = "add_dir('opt')\nadd_file('opt/data', bytes(range(256)) * 400)\nadd_file('opt/after', b'after')"

    /// Where each kind of cut falls, and the entry its error must name.
    static let cuts: [(label: String, top: String, cut: String, names: String)] = [
        ("in a file's data", bigFile, "offsets['opt/data'][1] + 50000", "opt/data"),
        ("at a block boundary in a file's data", bigFile, "offsets['opt/data'][1] + 51200", "opt/data"),
        ("inside a header", bigFile, "offsets['opt/after'][0] + 100", "opt/data"),
        ("right after a header", bigFile, "offsets['opt/data'][1]", "opt/data"),
        ("inside a PAX record", "add_file('opt/x', b'x' * 100, {'SCHILY.xattr.user.note': 'n' * 2000})",
         "offsets['opt/x'][0] + 700", "layer"),
    ]

    @Test(arguments: 0..<cuts.count, [false, true])
    func aLayerCutShortIsRefusedAndNothingIsLeft(_ i: Int, gzip: Bool) throws {
        let c = Self.cuts[i]
        let t = TempDir()
        let image = try makeImage(t, top: c.top, cut: c.cut, gzip: gzip)
        let root = "\(t.path)/store"
        let r = strata(["image", "load", "--root", root, "-i", image])
        #expect(r.status != 0, "\(c.label): loaded")
        let lines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("strata: ") && !$0.contains("unpacked") }
        #expect(lines.count == 1, "\(c.label): \(r.stderr)")
        let line = String(lines.last ?? "")
        #expect(line.contains("layer sha256:") && line.contains(c.names) && line.contains("truncated"), "\(c.label): \(line)")
        expectEmpty(root)
    }

    /// umoci's layers: the last file's data with no padding and no
    /// end-of-archive blocks (the entries are all whole), and a directory
    /// replaced by a file written as the file followed by whiteouts under
    /// its own path. podman loads both; so must we, with one warning line.
    @Test func umociLayersLoadAsPodmanLoadsThem() throws {
        let t = TempDir()
        let top = """
            add_file('usr/share/doc/sed', b'now a file')
            add_file('usr/share/doc/sed/.wh.AUTHORS', b'')
            add_file('usr/share/doc/sed/.wh.NEWS', b'')
            add_file('etc/last', b'12345')
            """
        // Cut after the last file's five bytes: no padding, no trailer.
        let image = try makeImage(t, top: top, cut: "offsets['etc/last'][1] + 5")
        let root = "\(t.path)/store"
        let r = strata(["image", "load", "--root", root, "-i", image])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").filter { $0.contains("warning:") && $0.contains("usr/share/doc/sed/.wh.AUTHORS") }.count == 1,
                "\(r.stderr)")
        let c = strata(["create", "--root", root, "localhost/hostile:1", "--name", "u"])
        #expect(c.status == 0, "\(c.stderr)")
        let m = strata(["mount", "--root", root, "u"])
        #expect(m.status == 0, "\(m.stderr)")
        let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { umount2(merged, Int32(MNT_DETACH)) }
        let o = FileOps(merged)
        #expect(o.read("usr/share/doc/sed") == "now a file")
        #expect(o.read("etc/last") == "12345")
        #expect(o.read("etc/base") == "base")
        _ = strata(["umount", "--root", root, "u"])
    }

    /// A whiteout under a file is dropped only where it stays in the layer:
    /// one that climbs out is refused as before.
    @Test func aWhiteoutThatLeavesTheLayerIsStillRefused() throws {
        let t = TempDir()
        let image = try makeImage(t, top: "add_file('f', b'file')\nadd_file('f/../../.wh.passwd', b'')")
        let root = "\(t.path)/store"
        let r = strata(["image", "load", "--root", root, "-i", image])
        #expect(r.status != 0)
        #expect(r.stderr.contains("'..'"), "\(r.stderr)")
        expectEmpty(root)
    }
}
