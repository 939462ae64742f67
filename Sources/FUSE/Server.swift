import CStrata
import Foundation
import Logging
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// Mounts a filesystem and serves it until it is unmounted, from outside
/// (umount, fusermount3 -u) or by SIGINT/SIGTERM/SIGHUP, which unmount it.
public enum Server {
    public static func serve<FS: FileSystem>(_ fs: FS, mount: MountConfig, options: SessionOptions,
                                             logger: Logger, ready: () -> Void) throws(SysError) {
        // Block the signals in every thread we will start; one thread takes them.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        // The kernel already applied the caller's umask (or, with ACLs, the
        // file system does); ours must not mask the modes a second time.
        umask(0)

        let (fd, method) = try Mounter.mount(mount)
        defer { close(fd) }
        let mountpoint = mount.mountpoint
        let sigSet = set
        let t = Thread {
            var s = sigSet
            var sig: Int32 = 0
            while sigwait(&s, &sig) == 0 {
                logger.info("signal \(sig): unmounting \(mountpoint)")
                do { try Mounter.unmount(mountpoint, method: method, lazy: true) } catch {
                    logger.warning("\(error)")
                }
            }
        }
        t.start()
        let session = Session(fs: fs, deviceFD: fd, options: options, logger: logger)
        let stats = StatsServer()
        defer { stats.stop() }
        do {
            try session.run(ready: {
                ready()
                stats.start(mountpoint: mountpoint, logger: { logger.warning("\($0)") }, snapshot: { session.statistics().json() })
            })
        } catch {
            try? Mounter.unmount(mountpoint, method: method, lazy: true)
            throw error
        }
    }
}
