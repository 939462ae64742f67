import CFuseProto
import Logging
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Mounts a filesystem and serves it until it is unmounted, from outside
/// (umount, fusermount3 -u) or by SIGINT/SIGTERM/SIGHUP, which unmount it.
public enum Server {
    /// The tail of every mounting command: logging to stderr, the layers or
    /// source opened (`make`, before anything is mounted, so bad input is
    /// refused with nothing to undo), then mount and serve.
    public static func start<FS: FileSystem>(mount: MountConfig, options: SessionOptions, foreground: Bool,
                                             make: () throws(SysError) -> FS) throws(SysError) {
        var mount = mount
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "strata")
        logger.logLevel = options.debug ? .debug : .info
        mount.mountpoint = try Sys.realPath(mount.mountpoint)
        if options.uring == .on, let why = UringSupport.missing() { throw SysError(.notSupported, why, "") }
        let fs = try make()
        try serve(fs, mount: mount, options: options, logger: logger, background: !foreground)
    }

    /// With `background`, returns only in the forked daemon; the calling
    /// process exits once the mount serves (see `Background`).
    public static func serve<FS: FileSystem>(_ fs: FS, mount: MountConfig, options: SessionOptions,
                                             logger: Logger, background: Bool) throws(SysError) {
        // Block the signals in every thread we will start; one thread takes them.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        // The kernel already applied the caller's umask (or, with ACLs, the
        // file system does); ours must not mask the modes a second time.
        umask(0)
        // Directory descriptors are cached by the thousand: the table is
        // sized now, before any thread shares it (see the function).
        reserveDescriptorTable(8192)

        var mounted = try Mounter.mount(mount)
        let method = mounted.method
        // The device stays open (in `mounted`) until serving ends.
        let fd = mounted.device.raw
        let child: Background.Child?
        do {
            child = background ? try Background.split(mountpoint: mount.mountpoint, method: method, device: &mounted.device, readyNote: mount.readyNote) : nil
        } catch {
            _ = mounted.device.release()
            try? Mounter.unmount(mount.mountpoint, method: method, lazy: true)
            throw error
        }
        guard let child else {
            try serveMounted(fs, mountpoint: mount.mountpoint, method: method, fd: fd, signalSet: set, options: options,
                             logger: logger, child: nil)
            return
        }
        // The forked daemon serves from a thread of its own, never from its
        // main thread: Swift's Mutex keeps each thread's id in a thread-local
        // cache (a PI futex holds its owner's id), and the main thread's was
        // filled before the fork, with the parent's id. A lock that thread
        // took and another thread waited for would name a process that has
        // exited: the kernel refuses the futex call and the daemon traps
        // (seen at exit, in the statistics of STRATA_STATS_AT_EXIT).
        let failure = Locked<SysError?>(nil)
        let serving = try OSThread.start(name: "serve", stackSize: 8 << 20) { [options, logger, set] in
            do throws(SysError) {
                try serveMounted(fs, mountpoint: mount.mountpoint, method: method, fd: fd, signalSet: set, options: options,
                                 logger: logger, child: child)
            } catch {
                failure.withLock { $0 = error }
            }
        }
        serving.join()
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Serves a mounted file system until it is unmounted.
    static func serveMounted<FS: FileSystem>(_ fs: FS, mountpoint: String, method: MountMethod, fd: Int32, signalSet set: sigset_t,
                                             options: SessionOptions, logger: Logger, child: Background.Child?) throws(SysError) {
        let sigSet = set
        let signals = try? OSThread.start(name: "signals") {
            var s = sigSet
            var sig: Int32 = 0
            while sigwait(&s, &sig) == 0 {
                if let why = fs.unmountRefusal() {
                    logger.warning("signal \(sig): not unmounting \(mountpoint): \(why)")
                    continue
                }
                logger.info("signal \(sig): unmounting \(mountpoint)")
                do { try Mounter.unmount(mountpoint, method: method, lazy: true) } catch {
                    logger.warning("\(error)")
                }
            }
        }
        signals?.detach()
        let session = Session(fs: fs, deviceFD: fd, options: options, logger: logger)
        let stats = StatsServer()
        defer { stats.stop() }
        // STRATA_STATS_AT_EXIT=FILE: the daemon's last statistics, one JSON
        // line per mount, for mounts too short-lived for `strata stats`
        // (containers/storage mounts a parent layer only to walk it).
        defer {
            if let path = getenv("STRATA_STATS_AT_EXIT") {
                let line = "{\"mountpoint\": \"\(mountpoint)\", \"statistics\": \(session.statistics().json())}\n"
                if let f = try? Sys.open(String(cString: path), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600) {
                    _ = line.withCString { Glibc.write(f.raw, $0, strlen($0)) }
                }
            }
        }
        do {
            try session.run(ready: {
                child?.signalReady()
                stats.start(mountpoint: mountpoint, logger: { logger.warning("\($0)") }, snapshot: { session.statistics().json() })
            })
        } catch {
            try? Mounter.unmount(mountpoint, method: method, lazy: true)
            throw error
        }
    }
}
