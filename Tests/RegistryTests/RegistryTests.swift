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
    private(set) var pid: pid_t
    var host: String { "127.0.0.1:\(port)" }
    /// With `accessLog`, every response is logged with its size (what
    /// `bytesServed` adds up).
    let accessLog: Bool

    /// `htpasswd`: user and password of a basic-auth registry.
    /// `token`: a token service the registry sends clients to (bearer auth).
    /// `tls`: certificate and key files: the registry speaks only HTTPS.
    init(htpasswd: (String, String)? = nil, token: TokenServer? = nil, tls: (String, String)? = nil, accessLog: Bool = false) throws {
        dir = TempDir("strata-registry")
        self.accessLog = accessLog
        port = freeLoopbackPort()
        var auth = ""
        var tlsConfig = ""
        if let (cert, key) = tls { tlsConfig = "  tls:\n    certificate: \(cert)\n    key: \(key)\n" }
        if let (u, p) = htpasswd {
            let h = runProgram("/usr/bin/htpasswd", ["-Bbn", u, p])
            try h.stdout.write(toFile: "\(dir.path)/htpasswd", atomically: true, encoding: .utf8)
            auth = "auth:\n  htpasswd:\n    realm: strata-test\n    path: \(dir.path)/htpasswd\n"
        }
        if let token {
            auth = "auth:\n  token:\n    realm: \(token.realm)\n    service: \(token.service)\n    issuer: \(token.issuer)\n    rootcertbundle: \(token.certPath)\n"
        }
        let config = """
        version: 0.1
        storage:
          filesystem:
            rootdirectory: \(dir.path)/data
          delete:
            enabled: true
        http:
          addr: 127.0.0.1:\(port)

        """ + tlsConfig + """
        log:
          level: \(accessLog ? "info" : "error")

        """ + auth
        try config.write(toFile: "\(dir.path)/config.yml", atomically: true, encoding: .utf8)
        pid = 0
        try start()
    }

    /// Starts the registry (again, after `stop`: same port, same storage).
    func start() throws {
        guard let bin = Spawn.which("docker-registry") else { throw RegistryError(.network, "docker-registry missing: apt-get install docker-registry") }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let log = accessLog ? open("\(dir.path)/access.log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600) : -1
        defer { if log >= 0 { close(log) } }
        pid = try Spawn.start(bin, [bin, "serve", "\(dir.path)/config.yml"], stdio: (null, log >= 0 ? log : null, log >= 0 ? log : null))
        // 30 s: on a loaded shared machine a cold start has taken over 10.
        // A registry that exits (its port taken after all) is said at once.
        var exited: Int32? = nil
        let pid = self.pid
        let up = waitFor(30) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { exited = status; return true }
            let r = runProgram("/usr/bin/env", ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', \(self.port)), 1)"])
            return r.status == 0
        }
        if let exited {
            self.pid = 0
            throw RegistryError(.network, "docker-registry exited (status \(exited)) instead of serving \(host)")
        }
        if !up { kill(pid, SIGKILL); _ = Spawn.wait(pid); throw RegistryError(.network, "docker-registry did not start on \(host) in 30 s") }
    }

    func stop() {
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        _ = Spawn.wait(pid)
        pid = 0
    }

    /// Bytes of every response body so far (needs `accessLog`).
    func bytesServed() -> Int64 {
        guard let d = FileManager.default.contents(atPath: "\(dir.path)/access.log") else { return 0 }
        var total: Int64 = 0
        for line in String(decoding: d, as: UTF8.self).split(separator: "\n") {
            guard let r = line.range(of: "http.response.written=") else { continue }
            total += Int64(line[r.upperBound...].prefix { $0.isNumber }) ?? 0
        }
        return total
    }

    deinit { stop() }
}

@Suite(.serialized)
struct RegistryTests {
    static var fixtures: String { MountEnvironment.fixtures }
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

    /// Docker Hub's challenge for a push: the quoted scope keeps its comma.
    @Test func bearerChallengesParseWithQuotedCommas() {
        let p = RegistryClient.challengeParameters(#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#)
        #expect(p["realm"] == "https://auth.docker.io/token" && p["service"] == "registry.docker.io")
        #expect(p["scope"] == "repository:library/busybox:pull,push")
        #expect(RegistryClient.challengeParameters("realm=x, service=y")["service"] == "y")
    }

    @Test func pushThenPullIntoAFreshStoreKeepsTheImage() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let push = strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/busybox:l3"])
        #expect(push.status == 0, "\(push.stderr)")
        let pull = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/busybox:l3"])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(pull.stdout.contains("sha256:cc890ba32e80"))
        // Pushing again skips every blob the registry has.
        let again = strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/busybox:l3"])
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
        #expect(strata(["push", "--root", "\(t.path)/ref", "localhost/eco/busybox:l3", "\(reg.host)/from/strata:1"]).status == 0)
        let back = runProgram(skopeo, ["copy", "--src-tls-verify=false", "docker://\(reg.host)/from/strata:1", "oci:\(t.path)/oci:1"])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(strata(["image", "load", "--root", "\(t.path)/o", "--oci", "\(t.path)/oci"]).status == 0)
        // The merged trees, both ways, are the archive's.
        let reference = try mergedTree("\(t.path)/ref", "localhost/eco/busybox:l3")
        #expect(reference.count > 10)
        #expect(TreeSnapshot.diff(reference, try mergedTree("\(t.path)/s", "\(reg.host)/from/skopeo:1")) == [])
        let viaSkopeo = strata(["image", "ls", "--root", "\(t.path)/o"]).stdout.split(separator: "\n").dropFirst().first?
            .split(separator: " ").first.map(String.init) ?? ""
        #expect(TreeSnapshot.diff(reference, try mergedTree("\(t.path)/o", viaSkopeo)) == [])
    }

    /// The merged tree of `image` in store `root`: a container mounted with
    /// the kernel driver, read, unmounted and removed.
    func mergedTree(_ root: String, _ image: String, times: Bool = false) throws -> [String: EntryState] {
        let name = "tree-\(UInt32.random(in: 0...UInt32.max))"
        guard strata(["create", "--root", root, "--name", name, image]).status == 0 else { throw TestFailure("create from \(image) failed") }
        defer { _ = strata(["rm", "--root", root, name]) }
        let m = strata(["mount", "--root", root, "--driver", "overlay", name])
        guard m.status == 0 else { throw TestFailure("mount of \(image): \(m.stderr)") }
        let merged = m.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = strata(["umount", "--root", root, name]); umount2(merged, Int32(MNT_DETACH)) }
        var tree = TreeSnapshot.take(merged, times: times)
        for k in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] { tree[k] = nil }   // the container's own
        return tree
    }

    @Test func aCorruptedBlobIsRefused() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/bad:1"]).status == 0)
        // Flip a byte of the biggest blob in the registry's own storage.
        let find = runProgram("/usr/bin/find", ["\(reg.dir.path)/data", "-name", "data", "-type", "f", "-size", "+1M"])
        let blob = try #require(find.stdout.split(separator: "\n").first.map(String.init))
        var bytes = try Data(contentsOf: URL(fileURLWithPath: blob))
        bytes[bytes.count / 2] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: blob))
        let pull = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/bad:1"])
        #expect(pull.status == 6 && pull.stderr.contains("does not match its digest"), "\(pull.status): \(pull.stderr)")
        #expect(strata(["image", "ls", "--root", "\(t.path)/b"]).stdout.split(separator: "\n").count == 1)
    }

    /// A registry behind basic auth: refused without credentials (one line
    /// saying how to log in), served with them from ~/.docker/config.json.
    @Test func basicAuthRegistry() throws {
        guard Spawn.which("htpasswd") != nil else { Issue.record("htpasswd missing: apt-get install apache2-utils"); return }
        let reg = try LocalRegistry(htpasswd: ("strata", "s3cret"))
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let home = t.sub("home")
        let anon = runProgram(MountEnvironment.binary, ["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/auth:1"], env: ["HOME": home])
        #expect(anon.status != 0 && anon.stderr.contains("--username"), "\(anon.stderr)")
        mkdir("\(home)/.docker", 0o700)
        let auth = Data("strata:s3cret".utf8).base64EncodedString()
        try "{\"auths\": {\"\(reg.host)\": {\"auth\": \"\(auth)\"}}}".write(toFile: "\(home)/.docker/config.json", atomically: true, encoding: .utf8)
        let push = runProgram(MountEnvironment.binary, ["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/auth:1"], env: ["HOME": home])
        #expect(push.status == 0, "\(push.stderr)")
        let pull = runProgram(MountEnvironment.binary, ["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/auth:1"], env: ["HOME": home])
        #expect(pull.status == 0, "\(pull.stderr)")
    }

    /// An interrupted pull leaves a `.partial` blob: the next pull resumes it
    /// with Range; bytes that do not add up are thrown away, never used.
    @Test func interruptedPullResumesOrRestartsCleanly() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/resume:1"]).status == 0)
        // The pull's work folder is named by the manifest; find it with a first, failing pull.
        let store = "\(t.path)/b"
        let big = "588a2830fefd271ef4563235164e7b4e2837d8678592347e22a4191f83d63eda"
        let layerTar = try Data(contentsOf: URL(fileURLWithPath: "\(t.path)/a/overlay/\(big)/layer.tar"))
        let manifest = runProgram("/usr/bin/env", ["python3", "-c", "import urllib.request,hashlib;r=urllib.request.Request('http://\(reg.host)/v2/eco/resume/manifests/1',headers={'Accept':'application/vnd.oci.image.manifest.v1+json'});print(hashlib.sha256(urllib.request.urlopen(r).read()).hexdigest())"])
        let mhex = manifest.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(mhex.count == 64)
        let work = "\(store)/tmp/pull-\(mhex.prefix(16))/blobs/sha256"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        // Half of the big layer, as an interrupted download leaves it.
        try layerTar.prefix(layerTar.count / 2).write(to: URL(fileURLWithPath: "\(work)/\(big).partial"))
        let resumed = strata(["pull", "--root", store, "\(reg.host)/eco/resume:1"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("resumed at \(layerTar.count / 2)"), "\(resumed.stderr)")
        // Garbage in a .partial: never used; the blob is fetched again from
        // the start in the same pull, which says so.
        let other = "\(t.path)/c"
        let work2 = "\(other)/tmp/pull-\(mhex.prefix(16))/blobs/sha256"
        try FileManager.default.createDirectory(atPath: work2, withIntermediateDirectories: true)
        try Data(repeating: 0x41, count: 1000).write(to: URL(fileURLWithPath: "\(work2)/\(big).partial"))
        let bad = strata(["pull", "--root", other, "\(reg.host)/eco/resume:1"])
        #expect(bad.status == 0 && bad.stderr.contains("did not match its digest; downloading it again"), "\(bad.stderr)")
        #expect(strata(["image", "ls", "--root", other]).stdout.split(separator: "\n").count == 2)
        #expect(strata(["check", "--root", other, "--content"]).status == 0)
    }

    /// Bearer tokens, the flow Docker Hub uses: the registry answers 401
    /// with a challenge naming a token service; strata asks it for a token
    /// with the user's credentials and the challenge's scope. Without
    /// credentials the refusal is one line that says how to log in.
    @Test func bearerTokenRegistry() throws {
        let t = TempDir()
        let tokens = try TokenServer(dir: t.path, user: "strata", password: "t0ken")
        let reg = try LocalRegistry(token: tokens)
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let anon = runProgram(MountEnvironment.binary, ["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/tok:1"],
                              env: ["HOME": t.sub("home")])
        #expect(anon.status != 0 && anon.stderr.contains("--username"), "\(anon.stderr)")
        #expect(anon.stderr.split(separator: "\n").count == 1, "\(anon.stderr)")
        func withPassword(_ args: String) -> (status: Int32, stdout: String, stderr: String) {
            runProgram("/bin/sh", ["-c", "printf t0ken | \(MountEnvironment.binary) \(args) --username strata --password-stdin"],
                       env: ["HOME": t.sub("home")])
        }
        let push = withPassword("push --root \(t.path)/a localhost/eco/busybox:l3 \(reg.host)/eco/tok:1")
        #expect(push.status == 0, "\(push.stderr)")
        let pull = withPassword("pull --root \(t.path)/b \(reg.host)/eco/tok:1")
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(tokens.issued.withLock { $0 }.contains { $0.hasPrefix("repository:eco/tok:") && $0.contains("push") })
        let a = strata(["image", "inspect", "--root", "\(t.path)/a", "localhost/eco/busybox:l3"]).stdout
        let b = strata(["image", "inspect", "--root", "\(t.path)/b", "\(reg.host)/eco/tok:1"]).stdout
        #expect(!a.isEmpty && a.contains("sha256:") && layersOf(a) == layersOf(b), "\(a)\n\(b)")
    }

    /// A blob another repository of the registry holds is mounted, not
    /// uploaded again; the mounted image pulls back whole.
    @Test func pushMountsBlobsFromAnotherRepository() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let first = strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/one:1"])
        #expect(first.status == 0 && first.stderr.contains("bytes pushed"), "\(first.stderr)")
        let second = strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/eco/two:1"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("mounted from eco/one") && !second.stderr.contains("bytes pushed"), "\(second.stderr)")
        let pull = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/two:1"])
        #expect(pull.status == 0, "\(pull.stderr)")
        // A store that pulled from eco/two mounts from there when pushing elsewhere.
        let third = strata(["push", "--root", "\(t.path)/b", "\(reg.host)/eco/two:1", "\(reg.host)/eco/three:1"])
        #expect(third.status == 0 && third.stderr.contains("mounted from eco/two"), "\(third.stderr)")
    }

    func layersOf(_ inspect: String) -> [String] {
        guard let j = try? JSONSerialization.jsonObject(with: Data(inspect.utf8)),
              let first = (j as? [[String: Any]])?.first ?? (j as? [String: Any]),
              let rootfs = first["RootFS"] as? [String: Any], let layers = rootfs["Layers"] as? [String] else { return [] }
        return layers
    }

    /// An index names one manifest per platform: the running one is pulled
    /// by default, `--platform` picks another, a missing one is one line.
    @Test func indexPlatformSelection() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let a = "\(t.path)/a"
        #expect(strata(["image", "load", "--root", a, "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        // A second image: the first plus one file.
        #expect(strata(["create", "--root", a, "--name", "c", "localhost/eco/busybox:l3"]).status == 0)
        let upper = try containerUpper(a, "c")
        try "arm\n".write(toFile: "\(upper)/arm-only", atomically: true, encoding: .utf8)
        #expect(strata(["commit", "--root", a, "c", "localhost/eco/other:1"]).status == 0)
        func pushed(_ local: String, _ tag: String) -> String {
            let r = strata(["push", "--root", a, local, "\(reg.host)/eco/multi:\(tag)"])
            return r.stderr.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        }
        let amd = pushed("localhost/eco/busybox:l3", "amd"), arm = pushed("localhost/eco/other:1", "arm")
        #expect(amd.hasPrefix("sha256:") && arm.hasPrefix("sha256:") && amd != arm)
        func size(_ d: String) -> Int {
            let r = runProgram("/usr/bin/env", ["python3", "-c", "import urllib.request;r=urllib.request.Request('http://\(reg.host)/v2/eco/multi/manifests/\(d)',headers={'Accept':'application/vnd.oci.image.manifest.v1+json'});print(len(urllib.request.urlopen(r).read()))"])
            return Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }
        let here = Puller.runningPlatform.split(separator: "/").map(String.init)
        let other = here[1] == "arm64" ? "amd64" : "arm64"
        let index: [String: Any] = ["schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            ["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": size(arm), "platform": ["os": "linux", "architecture": other]],
            ["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": size(amd), "platform": ["os": "linux", "architecture": here[1]]],
        ]]
        try JSONSerialization.data(withJSONObject: index).write(to: URL(fileURLWithPath: "\(t.path)/index.json"))
        let put = runProgram("/usr/bin/env", ["python3", "-c", "import urllib.request;r=urllib.request.Request('http://\(reg.host)/v2/eco/multi/manifests/1',data=open('\(t.path)/index.json','rb').read(),method='PUT',headers={'Content-Type':'application/vnd.oci.image.index.v1+json'});print(urllib.request.urlopen(r).status)"])
        #expect(put.stdout.hasPrefix("201"), "\(put.stderr)")
        let mine = strata(["pull", "--root", "\(t.path)/b", "\(reg.host)/eco/multi:1"])
        #expect(mine.status == 0, "\(mine.stderr)")
        let theirs = strata(["pull", "--root", "\(t.path)/c", "--platform", "linux/\(other)", "\(reg.host)/eco/multi:1"])
        #expect(theirs.status == 0, "\(theirs.stderr)")
        let idA = strata(["image", "inspect", "--root", a, "localhost/eco/busybox:l3"]).stdout
        let idB = strata(["image", "inspect", "--root", a, "localhost/eco/other:1"]).stdout
        #expect(mine.stdout.split(separator: " ").last.map { idA.contains($0.trimmingCharacters(in: .whitespacesAndNewlines)) } == true, "\(mine.stdout)")
        #expect(theirs.stdout.split(separator: " ").last.map { idB.contains($0.trimmingCharacters(in: .whitespacesAndNewlines)) } == true, "\(theirs.stdout)")
        let none = strata(["pull", "--root", "\(t.path)/d", "--platform", "linux/s390x", "\(reg.host)/eco/multi:1"])
        #expect(none.status != 0 && none.stderr.contains("no image for linux/s390x") && none.stderr.split(separator: "\n").count == 1, "\(none.stderr)")
    }

    func containerUpper(_ root: String, _ name: String) throws -> String {
        let out = strata(["inspect", "--root", root, name]).stdout
        guard let j = try? JSONSerialization.jsonObject(with: Data(out.utf8)),
              let first = (j as? [[String: Any]])?.first ?? (j as? [String: Any]),
              let upper = ((first["GraphDriver"] as? [String: Any])?["Data"] as? [String: Any])?["UpperDir"] as? String else {
            throw TestFailure("no UpperDir in inspect output: \(out)")
        }
        return upper
    }

    /// A real pull killed (SIGKILL) in the middle of a big layer: nothing is
    /// registered, and running it again resumes and completes.
    @Test func aPullKilledInTheMiddleCompletesWhenRunAgain() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let a = "\(t.path)/a", b = "\(t.path)/b"
        #expect(strata(["image", "load", "--root", a, "-i", "\(Self.fixtures)/busybox-l3.docker.tar"]).status == 0)
        #expect(strata(["create", "--root", a, "--name", "big", "localhost/eco/busybox:l3"]).status == 0)
        let upper = try containerUpper(a, "big")
        #expect(runProgram("/bin/dd", ["if=/dev/urandom", "of=\(upper)/big.bin", "bs=1M", "count=384", "status=none"]).status == 0)
        #expect(strata(["commit", "--root", a, "big", "localhost/eco/big:1"]).status == 0)
        #expect(strata(["push", "--root", a, "localhost/eco/big:1", "\(reg.host)/eco/big:1"]).status == 0)

        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let pid = try Spawn.start(MountEnvironment.binary, [MountEnvironment.binary, "pull", "--root", b, "\(reg.host)/eco/big:1"], stdio: (null, null, null))
        // Kill it once the big layer is partly down.
        let killed = waitFor(30) {
            let find = runProgram("/usr/bin/find", ["\(b)/tmp", "-name", "*.partial", "-size", "+8M"])
            return !find.stdout.isEmpty
        }
        kill(pid, SIGKILL)
        let status = Spawn.wait(pid)
        #expect(killed, "the pull ended before it could be killed (status \(status))")
        #expect(strata(["image", "ls", "--root", b]).stdout.split(separator: "\n").count == 1, "nothing may be registered")
        let again = strata(["pull", "--root", b, "\(reg.host)/eco/big:1"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stderr.contains("resumed at"), "\(again.stderr)")
        let want = strata(["image", "inspect", "--root", a, "localhost/eco/big:1"]).stdout
        #expect(!want.isEmpty && layersOf(want) == layersOf(strata(["image", "inspect", "--root", b, "\(reg.host)/eco/big:1"]).stdout))
    }
}
