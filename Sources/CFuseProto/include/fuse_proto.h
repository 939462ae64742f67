/*
 * The FUSE kernel protocol, version 7.x, as spoken on /dev/fuse.
 *
 * Why our own copy: Debian's linux-libc-dev ships protocol 7.38, which lacks
 * passthrough (7.40: fuse_backing_map, FOPEN_PASSTHROUGH, max_stack_depth) that
 * this kernel offers. The layouts below follow the kernel's ABI; only the
 * structures Strata speaks are declared. Field names match the kernel's so
 * the protocol documentation reads straight across.
 */
#ifndef STRATA_FUSE_PROTO_H
#define STRATA_FUSE_PROTO_H
#include <stdint.h>

#define SF_KERNEL_VERSION 7
#define SF_KERNEL_MINOR_VERSION 41
#define SF_ROOT_ID 1

struct sf_attr {
    uint64_t ino, size, blocks, atime, mtime, ctime;
    uint32_t atimensec, mtimensec, ctimensec;
    uint32_t mode, nlink, uid, gid, rdev, blksize, flags;
};

struct sf_kstatfs {
    uint64_t blocks, bfree, bavail, files, ffree;
    uint32_t bsize, namelen, frsize, padding;
    uint32_t spare[6];
};

struct sf_in_header {
    uint32_t len, opcode;
    uint64_t unique, nodeid;
    uint32_t uid, gid, pid;
    uint16_t total_extlen, padding;
};

struct sf_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};

struct sf_init_in {
    uint32_t major, minor, max_readahead, flags, flags2;
    uint32_t unused[11];
};

struct sf_init_out {
    uint32_t major, minor, max_readahead, flags;
    uint16_t max_background, congestion_threshold;
    uint32_t max_write, time_gran;
    uint16_t max_pages, map_alignment;
    uint32_t flags2, max_stack_depth;
    uint32_t unused[6];
};

struct sf_entry_out {
    uint64_t nodeid, generation, entry_valid, attr_valid;
    uint32_t entry_valid_nsec, attr_valid_nsec;
    struct sf_attr attr;
};

struct sf_forget_in { uint64_t nlookup; };
struct sf_forget_one { uint64_t nodeid, nlookup; };
struct sf_batch_forget_in { uint32_t count, dummy; };

struct sf_getattr_in { uint32_t getattr_flags, dummy; uint64_t fh; };

struct sf_attr_out {
    uint64_t attr_valid;
    uint32_t attr_valid_nsec, dummy;
    struct sf_attr attr;
};

struct sf_setattr_in {
    uint32_t valid, padding;
    uint64_t fh, size, lock_owner, atime, mtime, ctime;
    uint32_t atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5;
};

struct sf_mknod_in { uint32_t mode, rdev, umask, padding; };
struct sf_mkdir_in { uint32_t mode, umask; };
struct sf_rename_in { uint64_t newdir; };
struct sf_rename2_in { uint64_t newdir; uint32_t flags, padding; };
struct sf_link_in { uint64_t oldnodeid; };
struct sf_open_in { uint32_t flags, open_flags; };
struct sf_create_in { uint32_t flags, mode, umask, open_flags; };
struct sf_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };
struct sf_release_in { uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner; };
struct sf_flush_in { uint64_t fh; uint32_t unused, padding; uint64_t lock_owner; };
struct sf_read_in {
    uint64_t fh, offset;
    uint32_t size, read_flags;
    uint64_t lock_owner;
    uint32_t flags, padding;
};
struct sf_write_in {
    uint64_t fh, offset;
    uint32_t size, write_flags;
    uint64_t lock_owner;
    uint32_t flags, padding;
};
struct sf_write_out { uint32_t size, padding; };
struct sf_statfs_out { struct sf_kstatfs st; };
struct sf_fsync_in { uint64_t fh; uint32_t fsync_flags, padding; };
struct sf_setxattr_in { uint32_t size, flags, setxattr_flags, padding; };
struct sf_getxattr_in { uint32_t size, padding; };
struct sf_getxattr_out { uint32_t size, padding; };
struct sf_access_in { uint32_t mask, padding; };
struct sf_interrupt_in { uint64_t unique; };
struct sf_fallocate_in { uint64_t fh, offset, length; uint32_t mode, padding; };
struct sf_lseek_in { uint64_t fh, offset; uint32_t whence, padding; };
struct sf_lseek_out { uint64_t offset; };
struct sf_copy_file_range_in {
    uint64_t fh_in, off_in, nodeid_out, fh_out, off_out, len, flags;
};
struct sf_dirent { uint64_t ino, off; uint32_t namelen, type; };
struct sf_direntplus { struct sf_entry_out entry_out; struct sf_dirent dirent; };

struct sf_notify_inval_inode_out { uint64_t ino; int64_t off, len; };
struct sf_notify_inval_entry_out { uint64_t parent; uint32_t namelen, flags; };
struct sf_notify_delete_out { uint64_t parent, child; uint32_t namelen, padding; };

struct sf_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };

enum {
    SF_LOOKUP = 1, SF_FORGET = 2, SF_GETATTR = 3, SF_SETATTR = 4, SF_READLINK = 5,
    SF_SYMLINK = 6, SF_MKNOD = 8, SF_MKDIR = 9, SF_UNLINK = 10, SF_RMDIR = 11,
    SF_RENAME = 12, SF_LINK = 13, SF_OPEN = 14, SF_READ = 15, SF_WRITE = 16,
    SF_STATFS = 17, SF_RELEASE = 18, SF_FSYNC = 20, SF_SETXATTR = 21,
    SF_GETXATTR = 22, SF_LISTXATTR = 23, SF_REMOVEXATTR = 24, SF_FLUSH = 25,
    SF_INIT = 26, SF_OPENDIR = 27, SF_READDIR = 28, SF_RELEASEDIR = 29,
    SF_FSYNCDIR = 30, SF_GETLK = 31, SF_SETLK = 32, SF_SETLKW = 33, SF_ACCESS = 34,
    SF_CREATE = 35, SF_INTERRUPT = 36, SF_BMAP = 37, SF_DESTROY = 38, SF_IOCTL = 39,
    SF_POLL = 40, SF_NOTIFY_REPLY = 41, SF_BATCH_FORGET = 42, SF_FALLOCATE = 43,
    SF_READDIRPLUS = 44, SF_RENAME2 = 45, SF_LSEEK = 46, SF_COPY_FILE_RANGE = 47,
    SF_SYNCFS = 50, SF_TMPFILE = 51, SF_STATX = 52,
};

enum {
    SF_NOTIFY_INVAL_INODE = 2, SF_NOTIFY_INVAL_ENTRY = 3, SF_NOTIFY_DELETE = 6,
};

/* INIT flags (flags | flags2 << 32) */
#define SF_ASYNC_READ          (1ULL << 0)
#define SF_POSIX_LOCKS         (1ULL << 1)
#define SF_ATOMIC_O_TRUNC      (1ULL << 3)
#define SF_EXPORT_SUPPORT      (1ULL << 4)
#define SF_BIG_WRITES          (1ULL << 5)
#define SF_DONT_MASK           (1ULL << 6)
#define SF_SPLICE_WRITE        (1ULL << 7)
#define SF_SPLICE_MOVE         (1ULL << 8)
#define SF_SPLICE_READ         (1ULL << 9)
#define SF_FLOCK_LOCKS         (1ULL << 10)
#define SF_AUTO_INVAL_DATA     (1ULL << 12)
#define SF_DO_READDIRPLUS      (1ULL << 13)
#define SF_READDIRPLUS_AUTO    (1ULL << 14)
#define SF_ASYNC_DIO           (1ULL << 15)
#define SF_WRITEBACK_CACHE     (1ULL << 16)
#define SF_PARALLEL_DIROPS     (1ULL << 18)
#define SF_HANDLE_KILLPRIV     (1ULL << 19)
#define SF_POSIX_ACL           (1ULL << 20)
#define SF_ABORT_ERROR         (1ULL << 21)
#define SF_MAX_PAGES           (1ULL << 22)
#define SF_CACHE_SYMLINKS      (1ULL << 23)
#define SF_NO_OPENDIR_SUPPORT  (1ULL << 24)
#define SF_HANDLE_KILLPRIV_V2  (1ULL << 28)
#define SF_SETXATTR_EXT        (1ULL << 29)
#define SF_INIT_EXT            (1ULL << 30)
#define SF_PASSTHROUGH         (1ULL << 37)
#define SF_NO_EXPORT_SUPPORT   (1ULL << 38)

/* open_out.open_flags */
#define SF_FOPEN_DIRECT_IO     (1U << 0)
#define SF_FOPEN_KEEP_CACHE    (1U << 1)
#define SF_FOPEN_NONSEEKABLE   (1U << 2)
#define SF_FOPEN_CACHE_DIR     (1U << 3)
#define SF_FOPEN_NOFLUSH       (1U << 5)
#define SF_FOPEN_PARALLEL_DIRECT_WRITES (1U << 6)
#define SF_FOPEN_PASSTHROUGH   (1U << 7)

/* setattr valid */
#define SF_FATTR_MODE      (1U << 0)
#define SF_FATTR_UID       (1U << 1)
#define SF_FATTR_GID       (1U << 2)
#define SF_FATTR_SIZE      (1U << 3)
#define SF_FATTR_ATIME     (1U << 4)
#define SF_FATTR_MTIME     (1U << 5)
#define SF_FATTR_FH        (1U << 6)
#define SF_FATTR_ATIME_NOW (1U << 7)
#define SF_FATTR_MTIME_NOW (1U << 8)
#define SF_FATTR_LOCKOWNER (1U << 9)
#define SF_FATTR_CTIME     (1U << 10)
#define SF_FATTR_KILL_SUIDGID (1U << 11)

#define SF_GETATTR_FH      (1U << 0)
#define SF_WRITE_KILL_SUIDGID (1U << 2)
#define SF_OPEN_KILL_SUIDGID  (1U << 0)

/* FUSE over io_uring (include/uapi/linux/fuse.h, 6.14+). */
#define STRATA_FUSE_IO_URING_CMD_REGISTER 1
#define STRATA_FUSE_IO_URING_CMD_COMMIT_AND_FETCH 2

struct strata_uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};

/* What the kernel fills per request (fuse_uring_req_header). */
struct strata_uring_req_header {
    char in_out[128];
    char op_in[128];
    struct strata_uring_ent_in_out ring_ent_in_out;
};

/* The SQE's command area (fuse_uring_cmd_req). */
struct strata_uring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};


#endif
