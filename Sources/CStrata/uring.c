/* FUSE over io_uring through liburing. Swift sees only these functions and
 * an opaque ring: liburing's own copy of <linux/io_uring.h> clashes with the
 * system one that swift-system's module imports, so the two cannot meet in
 * one Swift module. What liburing has no helper for is the FUSE command
 * area of the 128-byte SQE (include/uapi/linux/fuse.h, 6.14+). */
#include "strata_sys.h"
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

struct strata_ring { struct io_uring ring; };

struct strata_ring *strata_ring_new(unsigned depth, int *err) {
    struct strata_ring *r = calloc(1, sizeof *r);
    if (!r) { *err = ENOMEM; return NULL; }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
    p.cq_entries = depth * 2;
    int rc = io_uring_queue_init_params(depth, &r->ring, &p);
    if (rc < 0) { free(r); *err = -rc; return NULL; }
    return r;
}

void strata_ring_free(struct strata_ring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int strata_ring_fuse_cmd(struct strata_ring *r, int fd, uint32_t op, uint16_t qid, uint64_t commit_id,
                         const struct iovec *iov, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) {
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
        if (!sqe) return -EBUSY;
    }
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = op;
    if (iov) {
        sqe->addr = (uint64_t)(uintptr_t)iov;
        sqe->len = 2;
    }
    sqe->user_data = user_data;
    struct strata_uring_cmd_req *req = (struct strata_uring_cmd_req *)sqe->cmd;
    req->qid = qid;
    req->commit_id = commit_id;
    return 0;
}

int strata_ring_submit_and_wait(struct strata_ring *r, unsigned n) {
    return io_uring_submit_and_wait(&r->ring, n);
}

int strata_ring_next(struct strata_ring *r, uint64_t *user_data, int32_t *res) {
    struct io_uring_cqe *cqe = NULL;
    if (io_uring_peek_cqe(&r->ring, &cqe) != 0 || !cqe) return 0;
    *user_data = cqe->user_data;
    *res = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    return 1;
}
