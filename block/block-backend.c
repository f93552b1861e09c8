/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The user layer: a BlockBackend holds the root node of a graph for a tool
 * or an export, with the user's permissions, bounds checks, write-cache
 * setting, copy-on-read flag and statistics, and queues new requests while
 * its root is drained (block-backend.h).
 */
#include "block-backend.h"
#include "block_int.h"
#include "util/aio.h"

struct BlockBackend {
    int refcnt;
    BlockDriverState *root;
    uint64_t perm, shared_perm;
    bool enable_write_cache;
    bool copy_on_read;
    BlockAcctStats stats;

    unsigned in_flight;         /* requests in blk (not those queued) */
    unsigned queued;            /* requests waiting for the drain to end */
    int quiesce_counter;        /* > 0: root drained, new requests wait */
    CoQueue queued_requests;
};

/* Every user, for the permission rules between users of one node. */
static GList *blk_all;

int blk_reopen(BlockBackend *blk, int flags, QemuOpts *options,
               Error **errp)
{
    BlockDriverState *bs = blk->root;
    int ret;

    if (!bs) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    ret = bdrv_reopen(bs, flags, options, errp);
    if (ret == 0) {
        /* The root holds for the user what the new flags give. */
        blk->perm = bs->user_perm;
        blk->shared_perm = bs->user_shared;
    }
    return ret;
}

/* ---- drained sections of the root ---- */

static void blk_root_drained_begin(void *opaque)
{
    BlockBackend *blk = opaque;
    blk->quiesce_counter++;
}

static void blk_root_drained_end(void *opaque)
{
    BlockBackend *blk = opaque;

    assert(blk->quiesce_counter > 0);
    if (--blk->quiesce_counter == 0) {
        qemu_co_queue_restart_all(&blk->queued_requests);
    }
}

static bool blk_root_drained_poll(void *opaque)
{
    BlockBackend *blk = opaque;
    return blk->in_flight > 0;
}

static const BdrvDrainOps blk_root_ops = {
    .drained_begin = blk_root_drained_begin,
    .drained_end   = blk_root_drained_end,
    .drained_poll  = blk_root_drained_poll,
};

BlockBackend *blk_new(uint64_t perm, uint64_t shared_perm)
{
    BlockBackend *blk = g_new0(BlockBackend, 1);

    blk->refcnt = 1;
    blk->perm = perm & BLK_PERM_ALL;
    blk->shared_perm = shared_perm & BLK_PERM_ALL;
    blk->enable_write_cache = true;
    qemu_co_queue_init(&blk->queued_requests);
    blk_all = g_list_prepend(blk_all, blk);
    return blk;
}

BlockBackend *blk_new_open(const char *filename, const char *fmt,
                           QemuOpts *options, int flags, Error **errp)
{
    BlockDriverState *bs = bdrv_open(filename, fmt, options, flags, errp);
    BlockBackend *blk;

    if (!bs) {
        return NULL;
    }
    /* bdrv_open took the root's locks for the user (flags and generic
     * options such as force-share): the user holds exactly those. */
    blk = blk_new(bs->user_perm, bs->user_shared);
    blk->root = bs;
    blk->copy_on_read = !!(bs->open_flags & BDRV_O_COPY_ON_READ);
    bdrv_add_drain_user(bs, &blk_root_ops, blk);
    return blk;
}

/* What the users of bs other than skip hold and share, together. */
static void blk_other_users(BlockDriverState *bs, BlockBackend *skip,
                            uint64_t *perm, uint64_t *shared)
{
    *perm = 0;
    *shared = BLK_PERM_ALL;
    for (GList *l = blk_all; l; l = l->next) {
        BlockBackend *o = l->data;
        if (o != skip && o->root == bs) {
            *perm |= o->perm;
            *shared &= o->shared_perm;
        }
    }
}

/* Give bs's graph what all its users together hold and share. */
static int blk_apply_perm(BlockDriverState *bs, BlockBackend *blk,
                          uint64_t perm, uint64_t shared, Error **errp)
{
    uint64_t operm, oshared, old_perm = bs->user_perm;
    uint64_t old_shared = bs->user_shared;
    int ret;

    blk_other_users(bs, blk, &operm, &oshared);
    if ((perm & ~oshared) || (operm & ~shared)) {
        char *names = bdrv_perm_names((perm & ~oshared) | (operm & ~shared));
        error_setg(errp, "Conflicts with use by another user of '%s' "
                   "(%s)", bdrv_get_filename(bs), names);
        g_free(names);
        return -EPERM;
    }
    /* Lock changes never run beside I/O. */
    bdrv_drained_begin(bs);
    bs->user_perm = perm | operm;
    bs->user_shared = shared & oshared;
    ret = bdrv_restore_perms(bs, errp);
    if (ret < 0) {
        bs->user_perm = old_perm;
        bs->user_shared = old_shared;
        bdrv_restore_perms(bs, NULL);
    }
    bdrv_drained_end(bs);
    return ret;
}

/* A user that holds nothing and shares all changes no node's locks. */
static bool blk_perm_neutral(uint64_t perm, uint64_t shared)
{
    return perm == 0 && shared == BLK_PERM_ALL;
}

int blk_insert_bs(BlockBackend *blk, BlockDriverState *bs, Error **errp)
{
    assert(!blk->root);
    if (!blk_perm_neutral(blk->perm, blk->shared_perm)) {
        int ret = blk_apply_perm(bs, blk, blk->perm, blk->shared_perm, errp);
        if (ret < 0) {
            return ret;
        }
    }
    bdrv_ref(bs);
    blk->root = bs;
    bdrv_add_drain_user(bs, &blk_root_ops, blk);
    return 0;
}

void blk_remove_bs(BlockBackend *blk)
{
    BlockDriverState *bs = blk->root;
    uint64_t operm, oshared;

    if (!bs) {
        return;
    }
    blk_drain(blk);
    bdrv_remove_drain_user(bs, &blk_root_ops, blk);
    blk->root = NULL;
    /* Users left keep their permissions; the last one's go with the
     * graph when it is freed. */
    blk_other_users(bs, blk, &operm, &oshared);
    if (bs->refcnt > 1 && !blk_perm_neutral(blk->perm, blk->shared_perm) &&
        (operm != bs->user_perm ||
                           oshared != bs->user_shared)) {
        bs->user_perm = operm;
        bs->user_shared = oshared;
        bdrv_restore_perms(bs, NULL);
    }
    bdrv_unref(bs);
}

void blk_ref(BlockBackend *blk)
{
    blk->refcnt++;
}

void blk_unref(BlockBackend *blk)
{
    if (!blk) {
        return;
    }
    assert(blk->refcnt > 0);
    if (--blk->refcnt > 0) {
        return;
    }
    blk_remove_bs(blk);
    blk_all = g_list_remove(blk_all, blk);
    g_free(blk);
}

BlockDriverState *blk_bs(BlockBackend *blk)
{
    return blk->root;
}

void blk_get_perm(BlockBackend *blk, uint64_t *perm, uint64_t *shared_perm)
{
    *perm = blk->perm;
    *shared_perm = blk->shared_perm;
}

int blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared_perm,
                 Error **errp)
{
    perm &= BLK_PERM_ALL;
    shared_perm &= BLK_PERM_ALL;
    if (blk->root && !(blk_perm_neutral(perm, shared_perm) &&
                       blk_perm_neutral(blk->perm, blk->shared_perm))) {
        int ret = blk_apply_perm(blk->root, blk, perm, shared_perm, errp);
        if (ret < 0) {
            return ret;
        }
    }
    blk->perm = perm;
    blk->shared_perm = shared_perm;
    return 0;
}

void blk_set_enable_write_cache(BlockBackend *blk, bool wce)
{
    blk->enable_write_cache = wce;
}

bool blk_enable_write_cache(BlockBackend *blk)
{
    return blk->enable_write_cache;
}

void blk_set_copy_on_read(BlockBackend *blk, bool enable)
{
    blk->copy_on_read = enable;
}

bool blk_get_copy_on_read(BlockBackend *blk)
{
    return blk->copy_on_read;
}

const BlockAcctStats *blk_get_stats(BlockBackend *blk)
{
    return &blk->stats;
}

int64_t blk_getlength(BlockBackend *blk)
{
    if (!blk->root) {
        return -ENOMEDIUM;
    }
    return bdrv_getlength(blk->root);
}

bool blk_is_inserted(BlockBackend *blk)
{
    return blk->root && bdrv_is_inserted(blk->root);
}

unsigned blk_in_flight(BlockBackend *blk)
{
    return blk->in_flight + blk->queued;
}

/* ---- requests ---- */

/*
 * Enter a request: wait while the root is drained (not counted in flight
 * meanwhile, so the drain does not wait for it), then count it.
 */
static void coroutine_fn blk_request_begin(BlockBackend *blk)
{
    while (blk->quiesce_counter > 0) {
        blk->queued++;
        qemu_co_queue_wait(&blk->queued_requests, NULL);
        blk->queued--;
    }
    blk->in_flight++;
}

static void blk_request_end(BlockBackend *blk, int ret, uint64_t *ops,
                            uint64_t *bytes, int64_t n)
{
    blk->in_flight--;
    if (ret < 0) {
        blk->stats.failed_ops++;
    } else {
        (*ops)++;
        if (bytes) {
            *bytes += n;
        }
    }
}

static int blk_check_request(BlockBackend *blk, int64_t offset,
                             int64_t bytes)
{
    BlockDriverState *bs = blk->root;

    if (!bs || !bdrv_is_inserted(bs)) {
        return -ENOMEDIUM;
    }
    if (offset < 0 || bytes < 0 || offset > INT64_MAX - bytes) {
        return -EIO;
    }
    if (bs->total_bytes >= 0 && offset + bytes > bs->total_bytes) {
        return -EIO;
    }
    return 0;
}

static int blk_check_write(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    int ret = blk_check_request(blk, offset, bytes);
    if (ret == 0 && !(blk->perm & BLK_PERM_WRITE)) {
        ret = -EPERM;
    }
    return ret;
}

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset,
                               int64_t bytes, QEMUIOVector *qiov,
                               BdrvRequestFlags flags)
{
    int ret;

    blk_request_begin(blk);
    ret = blk_check_request(blk, offset, bytes);
    if (ret == 0) {
        if (blk->copy_on_read) {
            flags |= BDRV_REQ_COPY_ON_READ;
        }
        ret = bdrv_co_preadv(blk->root, offset, bytes, qiov, flags);
    }
    blk_request_end(blk, ret, &blk->stats.rd_ops, &blk->stats.rd_bytes,
                    bytes);
    return ret;
}

/* Writes and zero writes: checked, then flushed when writethrough. */
static int coroutine_fn blk_co_do_pwritev(BlockBackend *blk, int64_t offset,
                                          int64_t bytes, QEMUIOVector *qiov,
                                          BdrvRequestFlags flags)
{
    int ret = blk_check_write(blk, offset, bytes);

    if (ret < 0) {
        return ret;
    }
    if (flags & BDRV_REQ_ZERO_WRITE) {
        ret = bdrv_co_pwrite_zeroes(blk->root, offset, bytes,
                                    flags & ~BDRV_REQ_ZERO_WRITE);
    } else {
        ret = bdrv_co_pwritev(blk->root, offset, bytes, qiov, flags);
    }
    if (ret >= 0 && bytes > 0 && !blk->enable_write_cache) {
        ret = bdrv_co_flush(blk->root);
    }
    return ret;
}

int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset,
                                int64_t bytes, QEMUIOVector *qiov,
                                BdrvRequestFlags flags)
{
    int ret;

    blk_request_begin(blk);
    ret = blk_co_do_pwritev(blk, offset, bytes, qiov, flags);
    if (flags & BDRV_REQ_ZERO_WRITE) {
        blk_request_end(blk, ret, &blk->stats.zero_ops, NULL, 0);
    } else {
        blk_request_end(blk, ret, &blk->stats.wr_ops, &blk->stats.wr_bytes,
                        bytes);
    }
    return ret;
}

int coroutine_fn blk_co_pread(BlockBackend *blk, int64_t offset,
                              int64_t bytes, void *buf,
                              BdrvRequestFlags flags)
{
    QEMUIOVector qiov;

    if (bytes < 0 || bytes > SIZE_MAX) {
        return -EINVAL;
    }
    qemu_iovec_init_buf(&qiov, buf, bytes);
    return blk_co_preadv(blk, offset, bytes, &qiov, flags);
}

int coroutine_fn blk_co_pwrite(BlockBackend *blk, int64_t offset,
                               int64_t bytes, const void *buf,
                               BdrvRequestFlags flags)
{
    QEMUIOVector qiov;

    if (bytes < 0 || bytes > SIZE_MAX) {
        return -EINVAL;
    }
    qemu_iovec_init_buf(&qiov, (void *)buf, bytes);
    return blk_co_pwritev(blk, offset, bytes, &qiov, flags);
}

int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags)
{
    return blk_co_pwritev(blk, offset, bytes, NULL,
                          flags | BDRV_REQ_ZERO_WRITE);
}

int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset,
                                 int64_t bytes)
{
    int ret;

    blk_request_begin(blk);
    ret = blk_check_write(blk, offset, bytes);
    if (ret == 0) {
        ret = bdrv_co_pdiscard(blk->root, offset, bytes);
    }
    blk_request_end(blk, ret, &blk->stats.discard_ops, NULL, 0);
    return ret;
}

int coroutine_fn blk_co_flush(BlockBackend *blk)
{
    int ret;

    blk_request_begin(blk);
    ret = blk->root ? bdrv_co_flush(blk->root) : -ENOMEDIUM;
    blk_request_end(blk, ret, &blk->stats.flush_ops, NULL, 0);
    return ret;
}

int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset,
                                 bool exact, PreallocMode prealloc,
                                 Error **errp)
{
    int ret;

    if (!blk->root) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    if (!(blk->perm & BLK_PERM_RESIZE)) {
        error_setg(errp, "Image is not opened for resizing");
        return -EPERM;
    }
    /* No request of any user runs beside a resize. The section is ours:
     * we do not wait in our own queue. */
    BlockDriverState *bs = blk->root;
    bdrv_ref(bs);
    bdrv_drained_begin(bs);
    blk->in_flight++;
    ret = bdrv_co_truncate(bs, offset, exact, prealloc, errp);
    blk->in_flight--;
    bdrv_drained_end(bs);
    bdrv_unref(bs);
    return ret;
}

/* ---- synchronous wrappers ---- */

typedef struct BlkRwCo {
    BlockBackend *blk;
    int64_t offset, bytes;
    QEMUIOVector *qiov;
    BdrvRequestFlags flags;
    int ret;
} BlkRwCo;

static void coroutine_fn blk_preadv_entry(void *opaque)
{
    BlkRwCo *c = opaque;
    c->ret = blk_co_preadv(c->blk, c->offset, c->bytes, c->qiov, c->flags);
}

static void coroutine_fn blk_pwritev_entry(void *opaque)
{
    BlkRwCo *c = opaque;
    c->ret = blk_co_pwritev(c->blk, c->offset, c->bytes, c->qiov, c->flags);
}

static void coroutine_fn blk_pdiscard_entry(void *opaque)
{
    BlkRwCo *c = opaque;
    c->ret = blk_co_pdiscard(c->blk, c->offset, c->bytes);
}

static void coroutine_fn blk_flush_entry(void *opaque)
{
    BlkRwCo *c = opaque;
    c->ret = blk_co_flush(c->blk);
}

static int blk_rw_co(CoroutineEntry *entry, BlockBackend *blk, int64_t offset,
                     int64_t bytes, QEMUIOVector *qiov,
                     BdrvRequestFlags flags)
{
    BlkRwCo c = { .blk = blk, .offset = offset, .bytes = bytes,
                  .qiov = qiov, .flags = flags };
    bdrv_run_co(entry, &c);
    return c.ret;
}

int blk_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
               QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    return blk_rw_co(blk_preadv_entry, blk, offset, bytes, qiov, flags);
}

int blk_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes,
                QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    return blk_rw_co(blk_pwritev_entry, blk, offset, bytes, qiov, flags);
}

int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
              BdrvRequestFlags flags)
{
    QEMUIOVector qiov;

    if (bytes < 0 || bytes > SIZE_MAX) {
        return -EINVAL;
    }
    qemu_iovec_init_buf(&qiov, buf, bytes);
    return blk_preadv(blk, offset, bytes, &qiov, flags);
}

int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
               const void *buf, BdrvRequestFlags flags)
{
    QEMUIOVector qiov;

    if (bytes < 0 || bytes > SIZE_MAX) {
        return -EINVAL;
    }
    qemu_iovec_init_buf(&qiov, (void *)buf, bytes);
    return blk_pwritev(blk, offset, bytes, &qiov, flags);
}

int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                      BdrvRequestFlags flags)
{
    return blk_rw_co(blk_pwritev_entry, blk, offset, bytes, NULL,
                     flags | BDRV_REQ_ZERO_WRITE);
}

int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    return blk_rw_co(blk_pdiscard_entry, blk, offset, bytes, NULL, 0);
}

int blk_flush(BlockBackend *blk)
{
    return blk_rw_co(blk_flush_entry, blk, 0, 0, NULL, 0);
}

typedef struct BlkTruncateCo {
    BlockBackend *blk;
    int64_t offset;
    bool exact;
    PreallocMode prealloc;
    Error **errp;
    int ret;
} BlkTruncateCo;

static void coroutine_fn blk_truncate_entry(void *opaque)
{
    BlkTruncateCo *c = opaque;
    c->ret = blk_co_truncate(c->blk, c->offset, c->exact, c->prealloc,
                             c->errp);
}

int blk_truncate(BlockBackend *blk, int64_t offset, bool exact,
                 PreallocMode prealloc, Error **errp)
{
    BlkTruncateCo c = { .blk = blk, .offset = offset, .exact = exact,
                        .prealloc = prealloc, .errp = errp };
    bdrv_run_co(blk_truncate_entry, &c);
    return c.ret;
}

/* ---- asynchronous wrappers ---- */

typedef struct BlkAioCo {
    BdrvAioTask t;              /* first: the block is freed through it */
    BlkRwCo c;
} BlkAioCo;

static void blk_aio_submit(CoroutineEntry *entry, BlockBackend *blk,
                           int64_t offset, int64_t bytes, QEMUIOVector *qiov,
                           BdrvRequestFlags flags, BlockCompletionFunc *cb,
                           void *opaque)
{
    BlkAioCo *acb = g_new0(BlkAioCo, 1);

    acb->c = (BlkRwCo) { .blk = blk, .offset = offset, .bytes = bytes,
                         .qiov = qiov, .flags = flags };
    acb->t = (BdrvAioTask) { .entry = entry, .arg = &acb->c,
                             .ret = &acb->c.ret, .cb = cb, .opaque = opaque };
    bdrv_aio_task_start(&acb->t);
}

void blk_aio_preadv(BlockBackend *blk, int64_t offset, QEMUIOVector *qiov,
                    BdrvRequestFlags flags, BlockCompletionFunc *cb,
                    void *opaque)
{
    blk_aio_submit(blk_preadv_entry, blk, offset, qiov->size, qiov, flags,
                   cb, opaque);
}

void blk_aio_pwritev(BlockBackend *blk, int64_t offset, QEMUIOVector *qiov,
                     BdrvRequestFlags flags, BlockCompletionFunc *cb,
                     void *opaque)
{
    blk_aio_submit(blk_pwritev_entry, blk, offset, qiov->size, qiov, flags,
                   cb, opaque);
}

void blk_aio_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                           BdrvRequestFlags flags, BlockCompletionFunc *cb,
                           void *opaque)
{
    blk_aio_submit(blk_pwritev_entry, blk, offset, bytes, NULL,
                   flags | BDRV_REQ_ZERO_WRITE, cb, opaque);
}

void blk_aio_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes,
                      BlockCompletionFunc *cb, void *opaque)
{
    blk_aio_submit(blk_pdiscard_entry, blk, offset, bytes, NULL, 0, cb,
                   opaque);
}

void blk_aio_flush(BlockBackend *blk, BlockCompletionFunc *cb, void *opaque)
{
    blk_aio_submit(blk_flush_entry, blk, 0, 0, NULL, 0, cb, opaque);
}

void blk_drain(BlockBackend *blk)
{
    if (blk->root) {
        bdrv_drained_begin(blk->root);
        bdrv_drained_end(blk->root);
    }
    AIO_WAIT_WHILE(blk_in_flight(blk) > 0 && !blk->quiesce_counter);
}
