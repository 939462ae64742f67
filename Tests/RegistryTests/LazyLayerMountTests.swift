import Foundation
import Registry
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A lazily pulled layer's directory mounted by hand (`strata mount -o
/// lowerdir=...`, as the README shows): the files not fetched yet must be
/// fetched, never read as the zeros of their holes, whatever the mount's
/// xattr namespace and however the layer is named.
extension RegistryTests {
    @Test func aLazyLayerMountedByHandIsFetchedNeverServedAsZeros() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let (upper, _, lazy) = try lazilyPulled(reg, t, "byhand", files: 4)
        let (id, _) = try topLayer(lazy)
        let hex = String(id.dropFirst("sha256:".count))
        let diff = "\(lazy)/overlay/\(hex)/diff"
        let short = try String(contentsOfFile: "\(lazy)/overlay/\(hex)/link", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        var n = 0
        for (lower, extra) in [(diff, ""), ("\(lazy)/overlay/l/\(short)", ""), (diff, ",userxattr")] {
            n += 1
            let m = "\(t.path)/m\(n)"
            mkdir(m, 0o755)
            let r = strata(["mount", "-o", "lowerdir=\(lower)\(extra)", m])
            try #require(r.status == 0, "mount -o lowerdir=\(lower)\(extra): \(r.stderr)")
            defer { umount2(m, Int32(MNT_DETACH)) }
            let got = try Data(contentsOf: URL(fileURLWithPath: "\(m)/data/f\(n)"))
            let want = try Data(contentsOf: URL(fileURLWithPath: "\(upper)/data/f\(n)"))
            // (Compared as a Bool: a failure prints counts, not 200,000 bytes.)
            let same = got == want
            #expect(same, "lowerdir=\(lower)\(extra): data/f\(n) read \(got.count) bytes, \(got.filter { $0 != 0 }.count) of them non-zero")
        }
    }
}

extension RegistryTests {
    /// `image save` of a partly pulled image completes its layers first
    /// (the archive then loads anywhere); with the registry gone it says
    /// to run `strata pull`, and writes nothing.
    @Test func savingAPartlyPulledImageCompletesItOrSaysWhatToDo() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let (_, image, lazy) = try lazilyPulled(reg, t, "save", files: 4)
        let full = "\(t.path)/full"
        #expect(strata(["pull", "--root", full, image]).status == 0)
        let reference = try mergedTree(full, image, times: true)
        // A second lazy store, for the registry-gone case.
        let lazy2 = "\(t.path)/lazy2"
        #expect(strata(["pull", "--root", lazy2, "--lazy", image]).status == 0)

        let saved = strata(["image", "save", "--root", lazy, "-o", "\(t.path)/saved.tar", image])
        #expect(saved.status == 0 && saved.stderr.contains("partly pulled"), "\(saved.stderr)")
        #expect(inspectLazy(lazy, image).isEmpty)
        let fresh = "\(t.path)/fresh"
        #expect(strata(["image", "load", "--root", fresh, "-i", "\(t.path)/saved.tar"]).status == 0)
        #expect(TreeSnapshot.diff(reference, try mergedTree(fresh, image, times: true)) == [])

        reg.stop()
        let refused = strata(["image", "save", "--root", lazy2, "-o", "\(t.path)/refused.tar", image])
        #expect(refused.status != 0 && refused.stderr.contains("strata pull"), "\(refused.stderr)")
        var st = stat()
        #expect(stat("\(t.path)/refused.tar", &st) != 0)
        #expect(!inspectLazy(lazy2, image).isEmpty)
    }
}
