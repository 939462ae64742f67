import Foundation
import Store
import Testing

/// Configs are decoded once with Codable; a commit rewrites one, so every
/// field this code does not name must come back out as it went in.
@Suite struct OCIImageTests {
    static let config = #"""
    {"architecture":"amd64","os":"linux","author":"eco","created":"2026-11-27T10:43:58Z",
     "config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/","User":"1000:1000",
               "Labels":{"org.example":"yes"},"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGTERM",
               "Healthcheck":{"Test":["CMD","true"],"Interval":30000000000}},
     "rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]},
     "history":[{"created":"2026-11-27T10:43:58Z","created_by":"x","empty_layer":true}],
     "variant":"v8","os.features":["a"],"moby.future":{"n":1.5,"ok":false,"none":null}}
    """#

    @Test func aConfigComesBackWithEveryFieldItDoesNotName() throws {
        let cfg = try OCI.decode(OCI.ImageConfig.self, Data(Self.config.utf8), "test config")
        #expect(cfg.diffIDs == ["sha256:aa", "sha256:bb"])
        #expect(cfg.config?.Cmd == ["/bin/sh"] && cfg.config?.User == "1000:1000")
        let again = OCI.encode(cfg)
        let a = try JSONSerialization.jsonObject(with: Data(Self.config.utf8)) as? NSDictionary
        let b = try JSONSerialization.jsonObject(with: again) as? NSDictionary
        #expect(a != nil && a == b, "\(String(decoding: again, as: UTF8.self))")
    }

    @Test func aConfigWithoutItsLayerListIsRefusedByName() {
        #expect {
            try OCI.decode(OCI.ImageConfig.self, Data(#"{"architecture":"amd64","rootfs":{"type":"layers"}}"#.utf8), "image x: config")
        } throws: { e in
            guard let e = e as? StoreError else { return false }
            return e.kind == .invalidInput && e.message == "image x: config: no rootfs.diff_ids"
        }
        #expect {
            try OCI.decode(OCI.Manifest.self, Data(#"{"schemaVersion":2,"config":{"digest":"sha256:aa","size":"big"},"layers":[]}"#.utf8), "m")
        } throws: { e in (e as? StoreError)?.message == "m: config.size is of the wrong type" }
    }
}
