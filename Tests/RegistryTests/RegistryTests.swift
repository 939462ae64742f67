import Foundation
import Registry
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Debian's docker-registry (distribution 2.8) on 127.0.0.1, its storage in
/// a temporary folder, stopped (by PID) at the end whatever happened.
final class LocalRegistry: @unchecked Sendable {
    let dir: TempDir
    let port: Int
    let pid: pid_t
    var host: String { "127.0.0.1:\(port)" }

    init() throws {
        dir = TempDir("strata-registry")
        port = Int.random(in: 20000...40000)
        let config = """
        version: 0.1
        storage:
          filesystem:
            rootdirectory: \(dir.path)/data
          delete:
            enabled: true
        http:
          addr: 127.0.0.1:\(port)
        log:
          level: error
        """
        try config.write(toFile: "\(dir.path)/config.yml", atomically: true, encoding: .utf8)
        guard let bin = Spawn.which("docker-registry") else { throw RegistryError("docker-registry missing: apt-get install docker-registry") }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        pid = try Spawn.start(bin, [bin, "serve", "\(dir.path)/config.yml"], stdio: (null, null, null))
        let up = waitFor(10) {
            let r = runProgram("/usr/bin/env", ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', \(self.port)), 1)"])
            return r.status == 0
        }
        if !up { kill(pid, SIGKILL); _ = Spawn.wait(pid); throw RegistryError("docker-registry did not start on \(host)") }
    }

    deinit {
        kill(pid, SIGTERM)
        _ = Spawn.wait(pid)
    }
}

@Suite(.serialized)
struct RegistryTests {
    static var fixtures: String { "\(MountEnvironment.packageRoot)/../shared/fixtures" }
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) { runProgram(MountEnvironment.binary, args) }

    @Test func referencesParseAsDockerDoes() throws {
        let a = try Reference("busybox")
        #expect(a.host == "docker.io" && a.repository == "library/busybox" && a.tag == "latest" && a.apiHost == "registry-1.docker.io")
        let b = try Reference("127.0.0.1:5000/eco/app:v1")
        #expect(b.host == "127.0.0.1:5000" && b.repository == "eco/app" && b.tag == "v1")
        let c = try Reference("localhost/x@sha256:" + String(repeating: "a", count: 64))
        #expect(c.host == "localhost" && c.digest != nil && c.tag == nil)
        #expect(throws: RegistryError.self) { try Reference("Bad/Name") }
    }

    @Test func pushThenPullIntoAFreshStoreKeepsTheImage() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let push = strata(["push", "--root", "\(t.path)/a", "\(reg.host)/eco/busybox:l3", "localhost/eco/busybox:l3"])
        #expect(push.status == 0, "\(push.stderr)")
        let pull = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/busybox:l3"])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(pull.stdout.contains("sha256:cc890ba32e80"))
        // Pushing again skips every blob the registry has.
        let again = strata(["push", "--root", "\(t.path)/a", "\(reg.host)/eco/busybox:l3", "localhost/eco/busybox:l3"])
        #expect(again.stderr.components(separatedBy: "already there").count == 5, "\(again.stderr)")
        // Pulling into a store that has the layers downloads none of them.
        let repull = strata(["pull", "--root", "\(t.path)/a", "\(reg.host)/eco/busybox:l3"])
        let fetched = repull.stderr.split(separator: "\n").filter { $0.contains("strata: blob ") }
        #expect(fetched.count == 1, "only the config should be fetched: \(repull.stderr)")
        let missing = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/nothere:x"])
        #expect(missing.status != 0 && missing.stderr.hasPrefix("strata: MANIFEST_UNKNOWN"), "\(missing.stderr)")
    }

    @Test func skopeoAndStrataExchangeImagesThroughTheRegistry() throws {
        guard let skopeo = Spawn.which("skopeo") else { Issue.record("skopeo missing: apt-get install skopeo"); return }
        let reg = try LocalRegistry()
        let t = TempDir()
        // skopeo pushes, Strata pulls: the same layers (diff IDs) as the archive.
        let sk = runProgram(skopeo, ["copy", "--dest-tls-verify=false", "docker-archive:\(Self.fixtures)/busybox-l3.docker.tar", "docker://\(reg.host)/from/skopeo:1"])
        #expect(sk.status == 0, "\(sk.stderr)")
        #expect(strata(["pull", "--root", "\(t.path)/s", "\(reg.host)/from/skopeo:1"]).status == 0)
        func diffIDs(_ root: String, _ ref: String) -> [String] {
            let r = strata(["image", "inspect", "--root", root, ref])
            let o = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])?.first
            return ((o?["RootFS"] as? [String: Any])?["Layers"] as? [String]) ?? []
        }
        #expect(strata(["image", "load", "--root", "\(t.path)/ref", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let want = diffIDs("\(t.path)/ref", "localhost/eco/busybox:l3")
        #expect(want.count == 3 && diffIDs("\(t.path)/s", "\(reg.host)/from/skopeo:1") == want)
        // Strata pushes, skopeo pulls and checks every digest on the way.
        #expect(strata(["push", "--root", "\(t.path)/ref", "\(reg.host)/from/strata:1", "localhost/eco/busybox:l3"]).status == 0)
        let back = runProgram(skopeo, ["copy", "--src-tls-verify=false", "docker://\(reg.host)/from/strata:1", "oci:\(t.path)/oci:1"])
        #expect(back.status == 0, "\(back.stderr)")
    }

    @Test func aCorruptedBlobIsRefused() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["push", "--root", "\(t.path)/a", "\(reg.host)/eco/bad:1", "localhost/eco/busybox:l3"]).status == 0)
        // Flip a byte of the biggest blob in the registry's own storage.
        let find = runProgram("/usr/bin/find", ["\(reg.dir.path)/data", "-name", "data", "-type", "f", "-size", "+1M"])
        let blob = try #require(find.stdout.split(separator: "\n").first.map(String.init))
        var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
        bytes[bytes.count / 2] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: blob))
        let pull = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/bad:1"])
        #expect(pull.status != 0 && pull.stderr.contains("does not match its digest"), "\(pull.stderr)")
        #expect(strata(["image", "ls", "--root", "\(t.path)/b"]).stdout.split(separator: "\n").count == 1)
    }
}
