import Archive
import CStrata
import Foundation
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// eStargz and zstd:chunked written from the fixture's layers: still
/// ordinary archives, and their TOCs find every file's bytes.
@Suite struct SeekableLayerTests {
    @Test(arguments: [EstargzWriter.Format.estargz, .zstdChunked])
    func everyFileIsFoundThroughTheTOC(_ format: EstargzWriter.Format) throws {
        let t = TempDir()
        let layers = try LayerArchiveTests().layerFiles("docker", t)
        let layer = try #require(layers.first)
        let out = "\(t.path)/seekable"
        let r = try EstargzWriter.convert(tar: layer, to: out, format: format)
        // The blob is an ordinary compressed tar, and its tar is the diff ID.
        let plain = runProgram("/bin/sh", ["-c", "\(format == .zstdChunked ? "zstd -dc" : "gzip -dc") '\(out)' | sha256sum"])
        #expect(plain.stdout.hasPrefix(String(r.diffID.dropFirst(7))), "\(plain.stdout) \(plain.stderr)")
        let blob = try Data(contentsOf: URL(fileURLWithPath: out))
        #expect(Int64(blob.count) == r.blobSize && blob.withUnsafeBytes { sha256Digest($0) } == r.blobDigest)
        // The TOC, found as a lazy pull finds it.
        let json: [UInt8]
        let tocOffset: Int64
        switch format {
        case .estargz:
            let footer = [UInt8](blob.suffix(StargzTOC.footerSize))
            tocOffset = try #require(StargzTOC.tocOffset(footer: footer))
            let member = blob.subdata(in: Int(tocOffset)..<(blob.count - StargzTOC.footerSize))
            let bytes = try member.withUnsafeBytes { (b) throws(ArchiveError) in try Gunzip.all(b, limit: 1 << 26, what: "toc") }
            json = try StargzTOCFile(member: bytes, what: "toc").json
            #expect(json.withUnsafeBytes { sha256Digest($0) } == r.tocDigest)
        case .zstdChunked:
            let p = try #require(r.tocPosition).split(separator: ":").compactMap { Int64($0) }
            let compressed = blob.subdata(in: Int(p[0])..<Int(p[0] + p[1]))
            #expect(compressed.withUnsafeBytes { sha256Digest($0) } == r.tocDigest)
            json = try compressed.withUnsafeBytes { (b) throws(ArchiveError) in try Unzstd.decode(b, want: nil, what: "toc") }
            tocOffset = p[0] - 8
        }
        let toc = try JSONDecoder().decode(StargzTOC.self, from: Data(json))
        // Every regular file's bytes from its chunks alone equal the archive's.
        let tree = t.sub("tree")
        #expect(runProgram("/bin/tar", ["xf", layer, "-C", tree]).status == 0)
        var checked = 0
        for (name, chunks) in toc.chunks(tocOffset: tocOffset) where name != StargzTOC.noPrefetchLandmark {
            var file: [UInt8] = []
            for c in chunks {
                let part = blob.subdata(in: Int(c.offset)..<Int(c.end))
                let bytes = try part.withUnsafeBytes { (b) throws(ArchiveError) in
                    format == .zstdChunked ? try Unzstd.decode(b, want: Int(c.size), what: name) : try Gunzip.prefix(b, want: Int(c.size), what: name)
                }
                #expect(bytes.withUnsafeBytes { sha256Digest($0) } == c.digest, "\(name) at \(c.offset)")
                file += bytes
            }
            #expect(FileManager.default.contents(atPath: "\(tree)/\(name)").map { [UInt8]($0) } == file, "\(name)")
            checked += 1
        }
        #expect(checked > 0)
    }

    /// A TOC is input from the network: a name that leaves the layer is
    /// refused before anything is made, as in an archive.
    @Test func aTOCThatEscapesTheLayerIsRefused() throws {
        let t = TempDir()
        for bad in ["../escape", "a/../../escape", "/abs/../../x"] {
            var toc = StargzTOC(version: 1, entries: [StargzTOC.Entry(name: "a/", type: "dir", mode: 0o755)])
            var e = StargzTOC.Entry(name: bad, type: "reg", mode: 0o644)
            e.size = 10
            toc.entries.append(e)
            let dest = "\(t.path)/layer-\(UInt32.random(in: 0...UInt32.max))"
            #expect(throws: ArchiveError.self) {
                try LayerApplier().apply(toc: toc, tocFile: nil, to: dest, markXattr: "user.strata-test")
            }
            #expect(access(dest, F_OK) != 0, "nothing may be left for \(bad)")
            #expect(access("\(t.path)/escape", F_OK) != 0)
        }
    }
}
