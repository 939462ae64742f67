#define _GNU_SOURCE
#include "strata_sys.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/xattr.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <sys/fsuid.h>
#include <sched.h>
#include <pthread.h>

#define SF_IOC_MAGIC 229
#define SF_DEV_IOC_CLONE _IOR(SF_IOC_MAGIC, 0, uint32_t)
#define SF_DEV_IOC_BACKING_OPEN _IOW(SF_IOC_MAGIC, 1, struct sf_backing_map)
#define SF_DEV_IOC_BACKING_CLOSE _IOW(SF_IOC_MAGIC, 2, uint32_t)

int strata_fuse_clone(int fd, int session_fd) {
    uint32_t s = (uint32_t)session_fd;
    return ioctl(fd, SF_DEV_IOC_CLONE, &s);
}

int strata_fuse_backing_open(int devfd, int backing_fd) {
    struct sf_backing_map map = { .fd = backing_fd, .flags = 0, .padding = 0 };
    return ioctl(devfd, SF_DEV_IOC_BACKING_OPEN, &map);
}

int strata_fuse_backing_close(int devfd, int backing_id) {
    uint32_t id = (uint32_t)backing_id;
    return ioctl(devfd, SF_DEV_IOC_BACKING_CLOSE, &id);
}

int strata_ficlone(int dst, int src) { return ioctl(dst, FICLONE, src); }

int strata_set_topdir(int fd) {
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return -1;
    if (flags & FS_TOPDIR_FL) return 0;
    flags |= FS_TOPDIR_FL;
    return ioctl(fd, FS_IOC_SETFLAGS, &flags);
}

int strata_fd_to_handle(int fd, unsigned char *buf, unsigned *len, int *type) {
    struct { struct file_handle fh; unsigned char bytes[MAX_HANDLE_SZ]; } h;
    int mount_id;
    h.fh.handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) != 0) return -1;
    if (h.fh.handle_bytes > *len) { errno = EOVERFLOW; return -1; }
    memcpy(buf, h.fh.f_handle, h.fh.handle_bytes);
    *len = h.fh.handle_bytes;
    *type = h.fh.handle_type;
    return 0;
}

int strata_name_to_handle(int dir, const char *name, unsigned char *buf, unsigned *len, int *type) {
    struct { struct file_handle fh; unsigned char bytes[MAX_HANDLE_SZ]; } h;
    int mount_id;
    h.fh.handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(dir, name, &h.fh, &mount_id, 0) != 0) return -1;
    if (h.fh.handle_bytes > *len) { errno = EOVERFLOW; return -1; }
    memcpy(buf, h.fh.f_handle, h.fh.handle_bytes);
    *len = h.fh.handle_bytes;
    *type = h.fh.handle_type;
    return 0;
}

/* Linux 6.7's FS_IOC_GETFSUUID; Debian 12's headers predate it. */
struct strata_fsuuid2 { unsigned char len; unsigned char uuid[16]; };
#define STRATA_FS_IOC_GETFSUUID _IOR(0x15, 0, struct strata_fsuuid2)

int strata_fs_uuid(int fd, unsigned char out[16]) {
    struct strata_fsuuid2 u;
    memset(&u, 0, sizeof u);
    memset(out, 0, 16);
    if (ioctl(fd, STRATA_FS_IOC_GETFSUUID, &u) != 0) return -1;
    memcpy(out, u.uuid, u.len > 16 ? 16 : u.len);
    return 0;
}

int strata_open_by_handle(int mount_fd, const unsigned char *buf, unsigned len, int type, int flags) {
    struct { struct file_handle fh; unsigned char bytes[MAX_HANDLE_SZ]; } h;
    if (len > MAX_HANDLE_SZ) { errno = EINVAL; return -1; }
    h.fh.handle_bytes = len;
    h.fh.handle_type = type;
    memcpy(h.fh.f_handle, buf, len);
    return open_by_handle_at(mount_fd, &h.fh, flags);
}

int strata_renameat2(int od, const char *op, int nd, const char *np, unsigned int flags) {
    return (int)syscall(SYS_renameat2, od, op, nd, np, flags);
}

int strata_openat2_beneath(int dirfd, const char *path, int flags, mode_t mode, int no_symlinks) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)flags;
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (no_symlinks ? RESOLVE_NO_SYMLINKS : 0);
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

/* setfsuid/setfsgid act on the calling thread only (the kernel's fsuid is
 * per-task), which is what a multi-threaded daemon needs to create files
 * as the caller. glibc's setgroups is process-wide, so call the raw syscall. */
int strata_setfsuid(uid_t uid) { return setfsuid(uid); }
int strata_setfsgid(gid_t gid) { return setfsgid(gid); }
int strata_setgroups_thread(size_t n, const gid_t *list) {
    return (int)syscall(SYS_setgroups, n, list);
}

int strata_thread_unshare_fs(void) { return unshare(CLONE_FS); }

ssize_t strata_recv_fd(int sock, int *fd_out) {
    char byte;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n <= 0) return n;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) { errno = EPROTO; return -1; }
    memcpy(fd_out, CMSG_DATA(c), sizeof(int));
    return n;
}

uint64_t strata_makedev(unsigned maj, unsigned min) { return makedev(maj, min); }
unsigned strata_major(uint64_t dev) { return major(dev); }
unsigned strata_minor(uint64_t dev) { return minor(dev); }
int strata_errno(void) { return errno; }
void strata_set_errno(int e) { errno = e; }

int strata_is_mount_root(const char *path) {
    struct statx sx;
    if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &sx) != 0) return 0;
    return (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

long strata_getdents64(int fd, void *buf, size_t len) { return syscall(SYS_getdents64, fd, buf, len); }

int strata_fallocate(int fd, int mode, int64_t off, int64_t len) { return fallocate(fd, mode, off, len); }
ssize_t strata_copy_file_range(int in, int64_t *off_in, int out, int64_t *off_out, size_t len, unsigned flags) {
    loff_t a = *off_in, b = *off_out;
    ssize_t n = copy_file_range(in, &a, out, &b, len, flags);
    *off_in = a; *off_out = b;
    return n;
}

/* getxattrat(2) (Linux 6.13): an xattr of dirfd/name without following a
 * final symlink and without a path through /proc. Older kernels: the
 * /proc/self/fd path, built on the stack. */
#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif
struct strata_xattr_args { uint64_t value; uint32_t size; uint32_t flags; };
static int strata_no_getxattrat;

ssize_t strata_lgetxattr_at(int dirfd, const char *name, const char *attr, void *value, size_t size) {
    if (!strata_no_getxattrat) {
        struct strata_xattr_args a = { (uint64_t)(uintptr_t)value, (uint32_t)size, 0 };
        long r = syscall(__NR_getxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, attr, &a, sizeof a);
        if (r >= 0 || errno != ENOSYS) return r;
        strata_no_getxattrat = 1;
    }
    char path[64 + 256];
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name);
    if (n < 0 || (size_t)n >= sizeof path) { errno = ENAMETOOLONG; return -1; }
    return lgetxattr(path, attr, value, size);
}

/* setxattrat(2), Linux 6.13, as strata_lgetxattr_at. */
#ifndef __NR_setxattrat
#define __NR_setxattrat 463
#endif
static int strata_no_setxattrat;

int strata_lsetxattr_at(int dirfd, const char *name, const char *attr, const void *value, size_t size, int flags) {
    if (!strata_no_setxattrat) {
        struct strata_xattr_args a = { (uint64_t)(uintptr_t)value, (uint32_t)size, (uint32_t)flags };
        long r = syscall(__NR_setxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, attr, &a, sizeof a);
        if (r >= 0 || errno != ENOSYS) return (int)r;
        strata_no_setxattrat = 1;
    }
    char path[64 + 256];
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name);
    if (n < 0 || (size_t)n >= sizeof path) { errno = ENAMETOOLONG; return -1; }
    return lsetxattr(path, attr, value, size, flags);
}

/* listxattrat(2), Linux 6.13, as strata_lgetxattr_at: the names of
 * dirfd/name's xattrs without a /proc path. */
#ifndef __NR_listxattrat
#define __NR_listxattrat 465
#endif
static int strata_no_listxattrat;

ssize_t strata_llistxattr_at(int dirfd, const char *name, char *list, size_t size) {
    if (!__atomic_load_n(&strata_no_listxattrat, __ATOMIC_RELAXED)) {
        long r = syscall(__NR_listxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, list, size);
        if (r >= 0 || errno != ENOSYS) return r;
        __atomic_store_n(&strata_no_listxattrat, 1, __ATOMIC_RELAXED);
    }
    char path[64 + 256];
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name);
    if (n < 0 || (size_t)n >= sizeof path) { errno = ENAMETOOLONG; return -1; }
    return llistxattr(path, list, size);
}

int strata_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int strata_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int strata_set_thread_name(pthread_t thread, const char *name) {
    return pthread_setname_np(thread, name);
}


int strata_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int strata_unpin(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < CPU_SETSIZE; i++) CPU_SET(i, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int strata_sched_idle(void) {
    struct sched_param p = { .sched_priority = 0 };
    return sched_setscheduler(0, SCHED_IDLE, &p);
}

#include <linux/btrfs.h>
#include <sys/vfs.h>
#include <string.h>

static int strata_btrfs_name(struct btrfs_ioctl_vol_args_v2 *a, const char *name) {
    memset(a, 0, sizeof(*a));
    size_t n = strlen(name);
    if (n == 0 || n > BTRFS_SUBVOL_NAME_MAX) { errno = ENAMETOOLONG; return -1; }
    memcpy(a->name, name, n);
    return 0;
}

int strata_btrfs_subvol_create(int dirfd, const char *name) {
    struct btrfs_ioctl_vol_args_v2 a;
    if (strata_btrfs_name(&a, name) != 0) return -1;
    return ioctl(dirfd, BTRFS_IOC_SUBVOL_CREATE_V2, &a);
}

int strata_btrfs_snapshot(int srcfd, int dirfd, const char *name, int readonly) {
    struct btrfs_ioctl_vol_args_v2 a;
    if (strata_btrfs_name(&a, name) != 0) return -1;
    a.fd = srcfd;
    if (readonly) a.flags = BTRFS_SUBVOL_RDONLY;
    return ioctl(dirfd, BTRFS_IOC_SNAP_CREATE_V2, &a);
}

int strata_btrfs_subvol_destroy(int dirfd, const char *name) {
    struct btrfs_ioctl_vol_args_v2 a;
    if (strata_btrfs_name(&a, name) != 0) return -1;
    return ioctl(dirfd, BTRFS_IOC_SNAP_DESTROY_V2, &a);
}

int strata_is_btrfs(int fd) {
    struct statfs s;
    if (fstatfs(fd, &s) != 0) return -1;
    return s.f_type == 0x9123683E; /* BTRFS_SUPER_MAGIC */
}

int strata_btrfs_set_readonly(int fd, int readonly) {
    __u64 flags = 0;
    if (ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, &flags) != 0) return -1;
    flags = readonly ? (flags | BTRFS_SUBVOL_RDONLY) : (flags & ~(__u64)BTRFS_SUBVOL_RDONLY);
    return ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, &flags);
}

/* What btrfs knows of a subvolume's history: the transaction that made it
 * (a snapshot's otransid) and its current generation. */
int strata_btrfs_subvol_transids(int fd, uint64_t *otransid, uint64_t *generation) {
    struct btrfs_ioctl_get_subvol_info_args a;
    memset(&a, 0, sizeof a);
    /* Some kernels answer 1 on success (a search's result leaks out). */
    if (ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, &a) < 0) return -1;
    *otransid = a.otransid;
    *generation = a.generation;
    return 0;
}

/* Inode numbers of the items in the subvolume's tree (the one `fd` is in)
 * that lie in leaves written at or after `min_transid`, as `btrfs
 * subvolume find-new` finds them: calls `found` with each (duplicates
 * included; neighbours of a changed item share its leaf). Returns 0, or -1
 * with errno. */
int strata_btrfs_changed_inodes(int fd, uint64_t min_transid, void *ctx, void (*found)(void *ctx, uint64_t ino)) {
    struct btrfs_ioctl_search_args args;
    struct btrfs_ioctl_search_key *sk = &args.key;
    memset(&args, 0, sizeof args);
    sk->tree_id = 0;
    sk->max_objectid = (uint64_t)-1;
    sk->max_offset = (uint64_t)-1;
    sk->max_transid = (uint64_t)-1;
    sk->max_type = (uint32_t)-1;
    sk->min_transid = min_transid;
    for (;;) {
        sk->nr_items = 4096;
        if (ioctl(fd, BTRFS_IOC_TREE_SEARCH, &args) < 0) return -1;
        if (sk->nr_items == 0) return 0;
        unsigned long off = 0;
        struct btrfs_ioctl_search_header sh;
        for (uint32_t i = 0; i < sk->nr_items; i++) {
            memcpy(&sh, args.buf + off, sizeof sh);
            off += sizeof sh + sh.len;
            found(ctx, sh.objectid);
            /* The next search starts after this key. */
            sk->min_objectid = sh.objectid;
            sk->min_type = sh.type;
            sk->min_offset = sh.offset;
        }
        if (sk->min_offset < (uint64_t)-1) sk->min_offset++;
        else if (sk->min_type < 255) { sk->min_type++; sk->min_offset = 0; }
        else if (sk->min_objectid < (uint64_t)-1) { sk->min_objectid++; sk->min_type = 0; sk->min_offset = 0; }
        else return 0;
    }
}

/* Every path (relative to the subvolume `fd` is in) of inode `ino`, NUL
 * separated into `out` (BTRFS_IOC_INO_PATHS, CAP_SYS_ADMIN). Returns the
 * count of paths, or -1 with errno (ENOENT: the inode is gone). */
int strata_btrfs_inode_paths(int fd, uint64_t ino, char *out, size_t size) {
    char container[65536];
    struct btrfs_ioctl_ino_path_args a;
    memset(&a, 0, sizeof a);
    a.inum = ino;
    a.size = sizeof container;
    a.fspath = (uint64_t)(uintptr_t)container;
    if (ioctl(fd, BTRFS_IOC_INO_PATHS, &a) < 0) return -1;
    struct btrfs_data_container *dc = (struct btrfs_data_container *)container;
    if (dc->elem_missed > 0) { errno = ENAMETOOLONG; return -1; }
    size_t used = 0;
    for (uint32_t i = 0; i < dc->elem_cnt; i++) {
        const char *p = (const char *)dc->val + dc->val[i];
        size_t n = strlen(p) + 1;
        if (used + n > size) { errno = ENAMETOOLONG; return -1; }
        memcpy(out + used, p, n);
        used += n;
    }
    return (int)dc->elem_cnt;
}

int strata_syncfs(int fd) { return syncfs(fd); }
