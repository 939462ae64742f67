import Foundation
import Registry
import Store
import Sys
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Registries that misbehave or speak TLS with a private CA, all on
/// 127.0.0.1: a fake registry (Python's http.server, started and stopped by
/// PID here) serves an oversized manifest, a wrong content type, a blob that
/// stalls half way, and blobs redirected to another host; Debian's
/// docker-registry serves HTTPS with a certificate the test makes.
@Suite(.serialized)
struct BadRegistryTests {
    func strata(_ args: [String], stdin: String? = nil) -> (status: Int32, stdout: String, stderr: String) {
        guard let input = stdin else { return runProgram(MountEnvironment.binary, args) }
        let t = TempDir()
        try? input.write(toFile: "\(t.path)/in", atomically: true, encoding: .utf8)
        let quoted = ([MountEnvironment.binary] + args).map { "'\($0)'" }.joined(separator: " ")
        return runProgram("/bin/sh", ["-c", "\(quoted) < '\(t.path)/in'"])
    }

    /// The fake registry: one small image (a layer of one file), served
    /// under several repositories that each misbehave one way.
    final class FakeRegistry: @unchecked Sendable {
        let dir = TempDir("strata-fake-registry")
        let port = freeLoopbackPort()
        let blobPort = freeLoopbackPort()
        var pid: pid_t = 0
        var host: String { "127.0.0.1:\(port)" }
        var log: String { (try? String(contentsOfFile: "\(dir.path)/requests.log", encoding: .utf8)) ?? "" }

        init() throws {
            let script = """
            import hashlib, http.server, io, json, os, sys, tarfile, threading, time, base64
            D = sys.argv[1]; PORT = int(sys.argv[2]); BLOBPORT = int(sys.argv[3])
            LOG = open(os.path.join(D, 'requests.log'), 'a', buffering=1)
            buf = io.BytesIO()
            t = tarfile.open(fileobj=buf, mode='w')
            data = bytes(range(256)) * 4096
            i = tarfile.TarInfo('payload'); i.size = len(data); t.addfile(i, io.BytesIO(data)); t.close()
            layer = buf.getvalue()
            ld = 'sha256:' + hashlib.sha256(layer).hexdigest()
            cfg = json.dumps({'architecture': 'amd64', 'os': 'linux', 'config': {}, 'rootfs': {'type': 'layers', 'diff_ids': [ld]}}).encode()
            cd = 'sha256:' + hashlib.sha256(cfg).hexdigest()
            OCI = 'application/vnd.oci.image.manifest.v1+json'
            man = json.dumps({'schemaVersion': 2, 'mediaType': OCI,
                              'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': cd, 'size': len(cfg)},
                              'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': ld, 'size': len(layer)}]}).encode()
            BLOBS = {cd: cfg, ld: layer}
            stalled = set()
            AUTH = 'Basic ' + base64.b64encode(b'user:secret-pw').decode()
            class H(http.server.BaseHTTPRequestHandler):
                protocol_version = 'HTTP/1.1'
                def log_message(self, *a): pass
                def send(self, code, body=b'', ctype='application/json', extra=()):
                    self.send_response(code); self.send_header('Content-Type', ctype)
                    self.send_header('Content-Length', str(len(body)))
                    for k, v in extra: self.send_header(k, v)
                    self.end_headers(); self.wfile.write(body)
                def do_GET(self):
                    LOG.write('%d %s range=%s auth=%s\\n' % (self.server.server_port, self.path, self.headers.get('Range'), self.headers.get('Authorization') is not None))
                    p = self.path
                    if self.server.server_port == BLOBPORT:
                        d = p.rsplit('/', 1)[-1]
                        return self.send(200, BLOBS[d], 'application/octet-stream') if d in BLOBS else self.send(404)
                    if p == '/v2/': return self.send(200, b'{}')
                    repo = p.split('/')[2]
                    if repo == 'redir' and self.headers.get('Authorization') != AUTH:
                        return self.send(401, b'{}', extra=[('WWW-Authenticate', 'Basic realm="fake"')])
                    if '/manifests/' in p:
                        if repo == 'big': return self.send(200, b' ' * (5 << 20) + man, OCI)
                        if repo == 'ctype': return self.send(200, man, 'text/html')
                        return self.send(200, man, OCI)
                    d = p.rsplit('/', 1)[-1]
                    if d not in BLOBS: return self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}')
                    if repo == 'redir':
                        return self.send(307, b'', extra=[('Location', 'http://127.0.0.1:%d/blobs/%s' % (BLOBPORT, d))])
                    body = BLOBS[d]
                    rng = self.headers.get('Range')
                    if repo == 'stall' and d == ld and not rng and d not in stalled:
                        stalled.add(d)
                        self.send_response(200); self.send_header('Content-Type', 'application/octet-stream')
                        self.send_header('Content-Length', str(len(body))); self.end_headers()
                        self.wfile.write(body[:len(body) // 2]); self.wfile.flush()
                        time.sleep(60); return
                    if rng:
                        start = int(rng.split('=')[1].split('-')[0])
                        return self.send(206, body[start:], 'application/octet-stream', [('Content-Range', 'bytes %d-%d/%d' % (start, len(body) - 1, len(body)))])
                    return self.send(200, body, 'application/octet-stream')
                do_HEAD = do_GET
            for port in (PORT, BLOBPORT):
                s = http.server.ThreadingHTTPServer(('127.0.0.1', port), H)
                s.daemon_threads = True
                threading.Thread(target=s.serve_forever, daemon=True).start()
            open(os.path.join(D, 'ready'), 'w').close()
            threading.Event().wait()
            """
            try script.write(toFile: "\(dir.path)/fake.py", atomically: true, encoding: .utf8)
            let null = open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { close(null) }
            pid = try Spawn.start("/usr/bin/python3", ["python3", "\(dir.path)/fake.py", dir.path, "\(port)", "\(blobPort)"], stdio: (null, null, 2))
            guard waitFor(30, { access("\(self.dir.path)/ready", F_OK) == 0 }) else { throw RegistryError(.network, "the fake registry did not start in 30 s") }
        }

        deinit {
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
        }
    }

    @Test func anOversizedManifestIsRefused() throws {
        let reg = try FakeRegistry()
        let t = TempDir()
        let r = strata(["pull", "--root", t.path, "\(reg.host)/big/image:t"])
        #expect(r.status != 0)
        #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("more than 4 MiB"), "\(r.stderr)")
    }

    @Test func aManifestWithTheWrongContentTypeIsRefused() throws {
        let reg = try FakeRegistry()
        let t = TempDir()
        let r = strata(["pull", "--root", t.path, "\(reg.host)/ctype/image:t"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("text/html"), "\(r.stderr)")
    }

    /// A registry that stops sending half way: the pull gives up after
    /// --timeout with one line, and the next pull resumes with Range.
    @Test func aStalledBlobTimesOutAndTheNextPullResumes() throws {
        let reg = try FakeRegistry()
        let t = TempDir()
        let started = Date()
        let first = strata(["pull", "--root", t.path, "--timeout", "2", "\(reg.host)/stall/image:t"])
        #expect(first.status != 0)
        #expect(Date().timeIntervalSince(started) < 30, "the stall was not noticed")
        #expect(first.stderr.contains("stopped sending") && first.stderr.contains("resume"), "\(first.stderr)")
        let second = strata(["pull", "--root", t.path, "--timeout", "2", "\(reg.host)/stall/image:t"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(reg.log.contains("range=bytes="), "the second pull did not resume: \(reg.log)")
        #expect(strata(["check", "--root", t.path, "--content"]).status == 0)
    }

    /// Blobs redirected to another host (as registries with object storage
    /// do) are fetched there, without the registry's credentials.
    @Test func redirectsAreFollowedWithoutTheCredentials() throws {
        let reg = try FakeRegistry()
        let t = TempDir()
        let r = strata(["pull", "--root", t.path, "--username", "user", "--password-stdin", "\(reg.host)/redir/image:t"], stdin: "secret-pw\n")
        #expect(r.status == 0, "\(r.stderr)")
        let blobLines = reg.log.split(separator: "\n").filter { $0.hasPrefix("\(reg.blobPort) ") }
        #expect(blobLines.count == 2, "both blobs come from the other host: \(reg.log)")
        #expect(blobLines.allSatisfy { $0.hasSuffix("auth=False") }, "credentials went to another host: \(blobLines)")
        #expect(!r.stderr.contains("secret-pw") && !r.stdout.contains("secret-pw"))
        // A wrong password: one line, without the password in it.
        let wrong = strata(["pull", "--root", "\(t.path)/2", "--username", "user", "--password-stdin", "\(reg.host)/redir/image:t"], stdin: "nope-pw\n")
        #expect(wrong.status != 0 && !wrong.stderr.contains("nope-pw"), "\(wrong.stderr)")
    }

    /// A registry behind TLS with a private CA: refused until the CA is
    /// trusted (--cert-dir, as podman; or certs.d), then push and pull work.
    @Test func aTLSRegistryWithAPrivateCA() throws {
        let t = TempDir()
        let c = t.sub("certs")
        let script = """
        set -e; cd '\(c)'
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=strata-test-ca -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\n' > ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.crt 2>/dev/null
        mkdir -p trust && cp ca.crt trust/ca.crt
        """
        let mk = runProgram("/bin/sh", ["-c", script])
        try #require(mk.status == 0, "openssl: \(mk.stderr)")
        let reg = try LocalRegistry(tls: ("\(c)/server.crt", "\(c)/server.key"))
        #expect(strata(["image", "load", "--root", "\(t.path)/a", "-i", "\(MountEnvironment.fixtures)/busybox-l3.docker.tar"]).status == 0)
        let refused = strata(["push", "--root", "\(t.path)/a", "localhost/eco/busybox:l3", "\(reg.host)/tls/busybox:1"])
        #expect(refused.status != 0)
        #expect(refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains("certificate") && refused.stderr.contains("--cert-dir"),
                "\(refused.stderr)")
        let push = strata(["push", "--root", "\(t.path)/a", "--cert-dir", "\(c)/trust", "localhost/eco/busybox:l3", "\(reg.host)/tls/busybox:1"])
        #expect(push.status == 0, "\(push.stderr)")
        let pull = strata(["pull", "--root", "\(t.path)/b", "--cert-dir", "\(c)/trust", "\(reg.host)/tls/busybox:1"])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(pull.stdout.contains("sha256:cc890ba32e80"))
    }
}

/// The registry commands as the store's other commands: killed at random
/// points, run twice at once, on a full disk.
@Suite(.enabled(if: MountEnvironment.available), .serialized)
struct RegistryFaultTests {
    static var fixture: String { "\(MountEnvironment.fixtures)/busybox-l3.docker.tar" }
    func strata(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) { runProgram(MountEnvironment.binary, args) }

    func pushed(_ reg: LocalRegistry, _ t: TempDir) -> String {
        let src = "\(t.path)/src"
        _ = strata(["image", "load", "--root", src, "-i", Self.fixture])
        _ = strata(["push", "--root", src, "localhost/eco/busybox:l3", "\(reg.host)/eco/busybox:l3"])
        return src
    }

    @Test func twoPullsOfTheSameImageAtOnce() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        _ = pushed(reg, t)
        let root = "\(t.path)/store"
        let results = try ConcurrentPulls.together([["pull", "--root", root, "\(reg.host)/eco/busybox:l3"],
                                                    ["pull", "--root", root, "\(reg.host)/eco/busybox:l3"]])
        for r in results { #expect(r.status == 0, "\(r.stderr.split(separator: "\n").filter { !$0.contains("bytes") && !$0.contains("entries") })") }
        #expect(strata(["check", "--root", root, "--content"]).status == 0)
        #expect(strata(["image", "ls", "--root", root]).stdout.split(separator: "\n").count == 2)
    }

    /// A pull killed after a blob's last byte and before its rename leaves
    /// the whole blob in its `.partial` file: the next pull must take it as
    /// it is (a Range from its end is past the blob), and one that does not
    /// add up must be fetched again, not refused.
    @Test func aPullResumesFromWholeAndFromWrongPartialBlobs() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        _ = pushed(reg, t)
        // The manifest and blobs as the registry serves them.
        let script = """
            import hashlib, json, sys, urllib.request
            host, out = sys.argv[1], sys.argv[2]
            req = urllib.request.Request(f"http://{host}/v2/eco/busybox/manifests/l3", headers={"Accept": ", ".join([
                "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"])})
            body = urllib.request.urlopen(req).read()
            print(hashlib.sha256(body).hexdigest()[:16])
            for i, l in enumerate(json.loads(body)["layers"]):
                data = urllib.request.urlopen(f"http://{host}/v2/eco/busybox/blobs/{l['digest']}").read()
                if i == 1: data = data[:-7] + b"garbage"
                open(f"{out}/{l['digest'].split(':')[1]}.partial", "wb").write(data)
            """
        let root = "\(t.path)/store"
        let blobs = "\(t.path)/blobs"
        mkdir(blobs, 0o755)
        let py = runProgram("/usr/bin/python3", ["-c", script, reg.host, blobs])
        try #require(py.status == 0, "\(py.stderr)")
        let key = py.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let dir = "\(root)/tmp/pull-\(key)/blobs/sha256"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: blobs) {
            try FileManager.default.moveItem(atPath: "\(blobs)/\(name)", toPath: "\(dir)/\(name)")
        }
        let pull = strata(["pull", "--root", root, "\(reg.host)/eco/busybox:l3"])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(strata(["check", "--root", root, "--content"]).status == 0)
    }

    @Test func pullAndPushKilledAtRandomPoints() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        let src = pushed(reg, t)
        for round in 0..<4 {
            let root = "\(t.path)/pull\(round)"
            let null = open("/dev/null", O_RDWR | O_CLOEXEC)
            let pid = try Spawn.start(MountEnvironment.binary, ["strata", "pull", "--root", root, "\(reg.host)/eco/busybox:l3"], stdio: (null, null, null))
            usleep(UInt32.random(in: 0...250_000))
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
            close(null)
            let found = strata(["check", "--root", root])
            let serious = found.stdout.split(separator: "\n").filter { !$0.hasPrefix("leftover:") && !$0.hasPrefix("store ") }
            #expect(serious.isEmpty, "pull killed (round \(round)): \(serious)")
            let again = strata(["pull", "--root", root, "\(reg.host)/eco/busybox:l3"])
            #expect(again.status == 0, "\(again.stderr)")
            #expect(strata(["check", "--root", root, "--content"]).status == 0)
        }
        for round in 0..<4 {
            let null = open("/dev/null", O_RDWR | O_CLOEXEC)
            let dest = "\(reg.host)/killed/push\(round):1"
            let pid = try Spawn.start(MountEnvironment.binary, ["strata", "push", "--root", src, "localhost/eco/busybox:l3", dest], stdio: (null, null, null))
            usleep(UInt32.random(in: 0...250_000))
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
            close(null)
            #expect(strata(["check", "--root", src]).stdout.split(separator: "\n").allSatisfy { $0.hasPrefix("leftover:") || $0.hasPrefix("store ") })
            let again = strata(["push", "--root", src, "localhost/eco/busybox:l3", dest])
            #expect(again.status == 0, "push after a kill: \(again.stderr)")
            let pull = strata(["pull", "--root", "\(t.path)/check\(round)", dest])
            #expect(pull.status == 0 && pull.stdout.contains("sha256:cc890ba32e80"), "\(pull.stderr)")
        }
        #expect(strata(["check", "--root", src, "--content"]).status == 0)
    }

    @Test func aPullOnAFullDisk() throws {
        let reg = try LocalRegistry()
        let t = TempDir()
        _ = pushed(reg, t)
        let root = t.sub("store")
        #expect(runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", root]).status == 0)
        defer { umount2(root, Int32(MNT_DETACH)) }
        let full = strata(["pull", "--root", root, "\(reg.host)/eco/busybox:l3"])
        #expect(full.status != 0)
        let lines = full.stderr.split(separator: "\n").filter { !$0.contains("unpacked") && !($0.hasPrefix("strata: blob") && $0.hasSuffix("bytes")) }
        #expect(lines.count == 1 && lines[0].contains("No space left on device"), "\(full.stderr)")
        #expect(strata(["check", "--root", root]).status == 0)
        #expect(runProgram("/bin/mount", ["-o", "remount,size=64m", root]).status == 0)
        let again = strata(["pull", "--root", root, "\(reg.host)/eco/busybox:l3"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(strata(["check", "--root", root, "--content"]).status == 0)
    }
}

/// Real processes started together.
enum ConcurrentPulls {
    static func together(_ commands: [[String]]) throws -> [(status: Int32, stderr: String)] {
        let t = TempDir()
        var pids: [pid_t] = []
        for (i, args) in commands.enumerated() {
            let err = open("\(t.path)/err\(i)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            let null = open("/dev/null", O_RDWR | O_CLOEXEC)
            pids.append(try Spawn.start(MountEnvironment.binary, ["strata"] + args, stdio: (null, null, err)))
            close(err); close(null)
        }
        return pids.enumerated().map { i, pid in
            let status = Spawn.wait(pid)
            return (status, (try? String(contentsOfFile: "\(t.path)/err\(i)", encoding: .utf8)) ?? "")
        }
    }
}
