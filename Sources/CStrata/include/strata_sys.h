/*
 * Thin C shims for calls Swift cannot make directly: variadic ioctl/syscall,
 * control messages for fd passing, and glibc functions without a Swift
 * overlay. Each is a one-liner; the logic lives in Swift.
 */
#ifndef STRATA_SYS_H
#define STRATA_SYS_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <pthread.h>
#include <sys/stat.h>
#include "fuse_proto.h"
#include <sys/xattr.h>

int strata_fuse_clone(int fd, int session_fd);
int strata_fuse_backing_open(int devfd, int backing_fd);
int strata_fuse_backing_close(int devfd, int backing_id);
int strata_ficlone(int dst, int src);
/* Marks a directory as the top of separate hierarchies for ext4's Orlov allocator. */
int strata_set_topdir(int fd);
/* The file handle of `fd` itself (name_to_handle_at with AT_EMPTY_PATH):
   `buf` receives `*len` bytes of handle, `*type` its type. 0 or -1/errno. */
int strata_fd_to_handle(int fd, unsigned char *buf, unsigned *len, int *type);
/* The handle of `name` in `dir` (name_to_handle_at, flags 0: what the
   kernel's overlayfs encodes for an origin). Same results as above. */
int strata_name_to_handle(int dir, const char *name, unsigned char *buf, unsigned *len, int *type);
/* The UUID of the filesystem holding `fd` (FS_IOC_GETFSUUID, the
   superblock's s_uuid that overlayfs writes into its file handles):
   16 bytes, zero when the filesystem has none. 0 or -1/errno. */
int strata_fs_uuid(int fd, unsigned char out[16]);
/* open_by_handle_at with a handle from strata_fd_to_handle (needs CAP_DAC_READ_SEARCH). */
int strata_open_by_handle(int mount_fd, const unsigned char *buf, unsigned len, int type, int flags);
/* lgetxattr of dirfd/name, by getxattrat(2) where the kernel has it. */
ssize_t strata_lgetxattr_at(int dirfd, const char *name, const char *attr, void *value, size_t size);
int strata_lsetxattr_at(int dirfd, const char *name, const char *attr, const void *value, size_t size, int flags);
/// llistxattr of dirfd/name (listxattrat(2) on 6.13+, else through /proc).
ssize_t strata_llistxattr_at(int dirfd, const char *name, char *list, size_t size);
int strata_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
int strata_openat2_beneath(int dirfd, const char *path, int flags, mode_t mode, int no_symlinks);
int strata_setfsuid(uid_t uid);
int strata_setfsgid(gid_t gid);
int strata_setgroups_thread(size_t n, const gid_t *list);
ssize_t strata_recv_fd(int sock, int *fd_out);
int strata_thread_unshare_fs(void);
uint64_t strata_makedev(unsigned maj, unsigned min);
unsigned strata_major(uint64_t dev);
unsigned strata_minor(uint64_t dev);
int strata_errno(void);
int strata_fallocate(int fd, int mode, int64_t off, int64_t len);
ssize_t strata_copy_file_range(int in, int64_t *off_in, int out, int64_t *off_out, size_t len, unsigned flags);
long strata_getdents64(int fd, void *buf, size_t len);
int strata_is_mount_root(const char *path);
/// Names a thread (15 bytes at most), as ps and top show it.
int strata_set_thread_name(pthread_t thread, const char *name);
struct iovec;
/// An io_uring of 128-byte SQEs (liburing's, in uring.c). NULL and *err on failure.
struct strata_ring *strata_ring_new(unsigned depth, int *err);
void strata_ring_free(struct strata_ring *r);
/// Queues a FUSE ring command (REGISTER with two iovecs, or COMMIT_AND_FETCH); 0 or -EBUSY.
int strata_ring_fuse_cmd(struct strata_ring *r, int fd, uint32_t op, uint16_t qid, uint64_t commit_id,
                         const struct iovec *iov, uint64_t user_data);
/// Submits what is queued and waits for `n` completions; a negative errno on failure.
int strata_ring_submit_and_wait(struct strata_ring *r, unsigned n);
/// The next completion, if any (1), marked seen.
int strata_ring_next(struct strata_ring *r, uint64_t *user_data, int32_t *res);

/// Keeps the calling thread on one CPU (a FUSE ring queue serves its CPU).
int strata_pin_to_cpu(int cpu);
/// Puts the calling thread under SCHED_IDLE (see RingQueue for why).
int strata_sched_idle(void);
/// Lets the calling thread run on any CPU (a thread started from a pinned
/// ring thread inherits its pin).
int strata_unpin(void);
void strata_set_errno(int e);
/* posix_spawn_file_actions_addclosefrom_np (glibc 2.34+), which Swift's Glibc module does not export. */
#include <spawn.h>
int strata_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);
/// The child starts in `path` (posix_spawn_file_actions_addchdir_np, glibc 2.29).
int strata_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);
/* Btrfs subvolumes (the kernel's ioctls; btrfs-progs has no library to link):
 * a new subvolume `name` in the directory `dirfd`; a snapshot of the
 * subvolume open as `srcfd` named `name` in `dirfd` (read-only if asked);
 * the removal of the subvolume `name` in `dirfd`; whether `fd` is on btrfs. */
int strata_btrfs_subvol_create(int dirfd, const char *name);
int strata_btrfs_snapshot(int srcfd, int dirfd, const char *name, int readonly);
int strata_btrfs_subvol_destroy(int dirfd, const char *name);
int strata_is_btrfs(int fd);
/* Makes the subvolume open as `fd` read-only (1) or writable (0): a layer
 * is applied into a writable snapshot, then sealed. */
int strata_btrfs_set_readonly(int fd, int readonly);
/* What changed in a subvolume since a transaction (find-new): the
 * snapshot's transids, the inodes of leaves written since, their paths. */
int strata_btrfs_subvol_transids(int fd, uint64_t *otransid, uint64_t *generation);
int strata_btrfs_changed_inodes(int fd, uint64_t min_transid, void *ctx, void (*found)(void *ctx, uint64_t ino));
int strata_btrfs_inode_paths(int fd, uint64_t ino, char *out, size_t size);
int strata_syncfs(int fd);

#endif
