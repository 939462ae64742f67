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

/// The statistics a daemon answers `strata stats` with are JSON whatever
/// the names in them hold (quotes, backslashes, control characters).
@Suite struct StatisticsJSONTests {
    @Test func namesWithQuotesAndControlCharactersStayValidJSON() throws {
        let odd = "a \"quoted\" \\ name\nwith\ta tab"
        let s = Statistics(transport: "/dev/fuse", threads: 2, protocol: "7.41", passthrough: true, uptime: .seconds(3),
                           requests: [.init(name: odd, count: 1, meanMicroseconds: 2.5, p99Microseconds: 4)],
                           bytesRead: 0, bytesWritten: 0, ringRequests: 0, filesystem: [(odd, 7)])
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(s.json().utf8)) as? [String: Any])
        #expect((obj["filesystem"] as? [String: Int])?[odd] == 7)
        #expect((obj["requests"] as? [String: Any])?[odd] != nil)
    }
}
