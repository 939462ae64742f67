#if canImport(Glibc)
import Glibc
#endif

/// Sizes the process's descriptor table for `count` descriptors at once.
///
/// The kernel grows the table by doubling (64, 128, 256, ...), and once
/// threads share it each doubling waits for an RCU grace period
/// (expand_fdtable calls synchronize_rcu), a few milliseconds on these
/// machines. A daemon that caches thousands of directory descriptors paid
/// that on its first requests, several times over, whenever it started with
/// only descriptors 0-2 (as containers/storage and most programs start their
/// children): a chmod of 500 files on a fresh mount took 70 ms instead of
/// 40. Called before threads exist, the growth is one copy and no wait.
/// Bounded by RLIMIT_NOFILE. The highest slot keeps a descriptor of
/// /dev/null open: fork copies a table only as far as its highest open
/// descriptor, and the daemon is forked after this.
public func reserveDescriptorTable(_ count: Int) {
    var lim = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return }
    let cap = min(count, Int(clamping: lim.rlim_cur))
    guard cap > 64 else { return }
    guard let null = try? Sys.open("/dev/null", O_RDONLY | O_CLOEXEC) else { return }
    // The copy stays open for the process's life, on purpose.
    if dup2(null.raw, Int32(cap - 1)) >= 0 { _ = fcntl(Int32(cap - 1), F_SETFD, FD_CLOEXEC) }
}
