import Foundation
import Testing
import TestSupport
@testable import FUSE

/// The one line a mount says when the kernel has FUSE over io_uring but
/// ships it switched off: only then, and never when the user chose
/// uring=off or the kernel lacks it.
@Suite struct UringHintTests {
    @Test func theHintIsSaidOnlyWhenTheSwitchIsOff() throws {
        let t = TempDir()
        let path = "\(t.path)/enable_uring"
        try "N\n".write(toFile: path, atomically: true, encoding: .utf8)
        let hint = try #require(UringSupport.offHint(.auto, switchPath: path))
        #expect(hint.contains("echo Y > /sys/module/fuse/parameters/enable_uring") && hint.contains("docs/BENCHMARKS.md"))
        #expect(UringSupport.offHint(.off, switchPath: path) == nil)
        #expect(UringSupport.offHint(.on, switchPath: path) == nil)        // uring=on fails with its own line
        try "Y\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(UringSupport.offHint(.auto, switchPath: path) == nil)
        #expect(UringSupport.offHint(.auto, switchPath: "\(t.path)/missing") == nil)
    }
}
