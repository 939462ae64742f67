import Foundation
import Overlay
import Registry
import Store
import Sys
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The union's source of lazily pulled files (`LazyData`), in the mount's
/// daemon: one fetcher per layer, made at its first read. The FUSE thread
/// that asked waits while the fetch runs on the concurrency pool; a failure
/// is one line on the daemon's standard error and EIO to the reader, and
/// the next read tries again (a registry that comes back serves it).
final class RegistryLazyData: LazyData, @unchecked Sendable {
    private let fetchers = Locked<[String: LazyFetcher]>([:])
    /// Reads being fetched now, and when the last one started: the
    /// background completion keeps off the link while a reader waits.
    private let reads = Locked<(inFlight: Int, last: Double)>((0, 0))

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Whether a reader used the link in the last `quiet` seconds.
    func readersBusy(quiet: Double) -> Bool {
        reads.withLock { $0.inFlight > 0 || Self.now() - $0.last < quiet }
    }

    func fetcher(_ state: String) throws -> LazyFetcher {
        if let f = fetchers.withLock({ $0[state] }) { return f }
        let layer = try StoredLayer.owning(lazyState: state)
        // A reader waits while its file is fetched: a registry that is not
        // there is given 3 s, not the 10 a pull waits.
        var o = RegistryOptions()
        o.connectTimeout = 3
        o.readTimeout = 20
        let f = try LazyFetcher(layer: layer, options: o)
        return fetchers.withLock { d in
            if let g = d[state] { return g }
            d[state] = f
            return f
        }
    }

    func fill(state: String, fd: Int32, mark: String, readahead: Int64) throws(Errno) {
        let failure = Locked<String?>(nil)
        do {
            let f = try fetcher(state)
            reads.withLock { $0.inFlight += 1; $0.last = Self.now() }
            defer { reads.withLock { $0.inFlight -= 1; $0.last = Self.now() } }
            let done = DispatchSemaphore(value: 0)
            Task {
                do { try await f.fill(fd: fd, name: mark, readahead: readahead) } catch { failure.withLock { $0 = "\(error)" } }
                done.signal()
            }
            done.wait()
        } catch {
            failure.withLock { $0 = "\(error)" }
        }
        if let why = failure.withLock({ $0 }) {
            log(state, "\(mark): \(why); the read gets EIO")
            throw .ioError
        }
    }

    /// The daemon's output goes nowhere once it serves: a line goes to the
    /// layer's `lazy/errors.log` (and standard error, for -f).
    func log(_ state: String, _ line: String) {
        printError("strata: lazy layer: \(line)")
        guard let f = try? Sys.open("\(state)/errors.log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600) else { return }
        let text = "\(Date()) \(line)\n"
        _ = text.withCString { Glibc.write(f.raw, $0, strlen($0)) }
    }

    func bytesFetched() -> Int {
        Int(fetchers.withLock { $0.values.reduce(Int64(0)) { $0 + $1.bytesFetched.withLock { $0 } } })
    }

    /// One thread per mount completes its layers one after another; a
    /// failure (the registry away) is said once and retried every 5 s, and
    /// a download resumes where it stopped. The daemon's exit ends it.
    /// It gives way to readers: it starts once no file was fetched for a
    /// second (a container's start-up reads go first), and its download
    /// pauses while a read is being fetched.
    func completeInBackground(states: [String]) {
        let yield: @Sendable () async -> Void = { [self] in
            while readersBusy(quiet: 0.2) { try? await Task.sleep(nanoseconds: 50_000_000) }
        }
        let t = Thread { [self] in
            usleep(200_000)
            while readersBusy(quiet: 1.0) { usleep(100_000) }
            for state in states {
                var said = false
                while true {
                    let failure = Locked<(String, Bool)?>(nil)
                    let done = DispatchSemaphore(value: 0)
                    Task {
                        do {
                            let f = try self.fetcher(state)
                            if f.layer.isLazy { try await f.completeLayer(yield: yield, progress: { _ in }) }
                        } catch {
                            failure.withLock { $0 = ("\(error)", (error as? RegistryError)?.kind == .corrupt) }
                        }
                        done.signal()
                    }
                    done.wait()
                    guard let (why, corrupt) = failure.withLock({ $0 }) else { break }
                    if corrupt {
                        // Content that does not add up will not by waiting:
                        // files already read stay served, the rest give EIO.
                        self.log(state, "\(why); not completing it")
                        break
                    }
                    if !said { self.log(state, "completing in the background: \(why); retrying every 5 s"); said = true }
                    sleep(5)
                }
            }
        }
        t.start()
    }
}
