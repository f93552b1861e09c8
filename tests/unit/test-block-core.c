/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of the block core on a counting test driver: concurrent
 * flushes of one node share driver flushes; the synchronous wrappers and
 * block_status_above; the user layer's bounds, permissions (alone and
 * between users of one node), write cache and statistics.
 */
#include "block-backend.h"
#include "block_int.h"
#include "util/aio.h"
#include "block/job.h"

/* ---- the "counter" test protocol ---- */

typedef struct CounterState {
    int64_t length;
} CounterState;

static unsigned counter_flushes;        /* driver flushes started */
static unsigned counter_writes;
static unsigned counter_drain_begins, counter_drain_ends;

static void counter_drain_begin(BlockDriverState *bs)
{
    counter_drain_begins++;
}

static void counter_drain_end(BlockDriverState *bs)
{
    counter_drain_ends++;
}

/* Reopen: prepare may be told to fail; what ran is counted. */
static bool counter_fail_prepare, counter_fail_perm;
static unsigned counter_prepares, counter_commits, counter_aborts;

static int counter_reopen_prepare(BdrvReopenState *state, Error **errp)
{
    if (counter_fail_prepare) {
        error_setg(errp, "counter: prepare refused");
        return -EIO;
    }
    counter_prepares++;
    state->opaque = g_strdup("prepared");
    return 0;
}

static void counter_reopen_commit(BdrvReopenState *state)
{
    counter_commits++;
    g_free(state->opaque);
}

static void counter_reopen_abort(BdrvReopenState *state)
{
    counter_aborts++;
    g_free(state->opaque);
}

/* A lock another process would hold: write cannot be taken. */
static int counter_check_perm(BlockDriverState *bs, uint64_t perm,
                              uint64_t shared, Error **errp)
{
    if (counter_fail_perm && (perm & BLK_PERM_WRITE)) {
        error_setg(errp, "counter: write lock held elsewhere");
        return -EAGAIN;
    }
    return 0;
}

static void counter_set_perm(BlockDriverState *bs, uint64_t perm,
                             uint64_t shared)
{
}

static void counter_abort_perm_update(BlockDriverState *bs)
{
}

static int coroutine_fn counter_open(BlockDriverState *bs, QemuOpts *options,
                                     int flags, Error **errp)
{
    CounterState *s = bs->opaque;
    s->length = 1 * MiB;
    return 0;
}

static int64_t counter_getlength(BlockDriverState *bs)
{
    CounterState *s = bs->opaque;
    return s->length;
}

/* Complete from the event loop, so that other coroutines run meanwhile. */
static void coroutine_fn counter_yield(void)
{
    aio_co_schedule(qemu_coroutine_self());
    qemu_coroutine_yield();
}

static int coroutine_fn counter_co_preadv(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          QEMUIOVector *qiov,
                                          size_t qiov_offset,
                                          BdrvRequestFlags flags)
{
    qemu_iovec_memset(qiov, qiov_offset, 0, bytes);
    counter_yield();
    return 0;
}

static int coroutine_fn counter_co_pwritev(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    counter_writes++;
    counter_yield();
    return 0;
}

static int coroutine_fn counter_co_flush_to_disk(BlockDriverState *bs)
{
    counter_flushes++;
    counter_yield();
    return 0;
}

static BlockDriver bdrv_counter = {
    .format_name            = "counter",
    .protocol_name          = "counter",
    .instance_size          = sizeof(CounterState),
    .filename_optional      = true,
    .bdrv_open              = counter_open,
    .bdrv_getlength         = counter_getlength,
    .bdrv_co_preadv         = counter_co_preadv,
    .bdrv_co_pwritev        = counter_co_pwritev,
    .bdrv_co_flush_to_disk  = counter_co_flush_to_disk,
    .bdrv_drain_begin       = counter_drain_begin,
    .bdrv_drain_end         = counter_drain_end,
    .bdrv_check_perm        = counter_check_perm,
    .bdrv_set_perm          = counter_set_perm,
    .bdrv_abort_perm_update = counter_abort_perm_update,
    .bdrv_reopen_prepare    = counter_reopen_prepare,
    .bdrv_reopen_commit     = counter_reopen_commit,
    .bdrv_reopen_abort      = counter_reopen_abort,
};

BLOCK_DRIVER_REGISTER(bdrv_counter)

static BlockDriverState *open_counter(void)
{
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open("counter://", "counter", NULL,
                                     BDRV_O_RDWR, &err);
    if (!bs) {
        fprintf(stderr, "open: %s\n", error_get_pretty(err));
        abort();
    }
    return bs;
}

/* ---- flush merging ---- */

typedef struct FlushCo {
    BlockDriverState *bs;
    int ret;
    bool done;
} FlushCo;

static void coroutine_fn flush_entry(void *opaque)
{
    FlushCo *f = opaque;
    f->ret = bdrv_co_flush(f->bs);
    f->done = true;
}

static void coroutine_fn write_entry(void *opaque)
{
    FlushCo *f = opaque;
    uint8_t buf[512] = { 0 };
    f->ret = bdrv_co_pwrite(f->bs, 0, sizeof(buf), buf, 0);
    f->done = true;
}

static void start(CoroutineEntry *fn, FlushCo *f)
{
    qemu_coroutine_enter(qemu_coroutine_create(fn, f));
}

static bool all_done(FlushCo *f, int n)
{
    for (int i = 0; i < n; i++) {
        if (!f[i].done) {
            return false;
        }
    }
    return true;
}

/*
 * Eight flushes started together after one write cost one driver flush;
 * a write that lands while a flush runs is covered by exactly one more,
 * shared by every flush that arrived after it.
 */
static void test_flush_merge(void)
{
    BlockDriverState *bs = open_counter();
    enum { N = 8 };
    FlushCo f[N], w = { .bs = bs };

    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, (uint8_t[512]){ 0 }, 0), ==, 0);
    counter_flushes = 0;
    for (int i = 0; i < N; i++) {
        f[i] = (FlushCo) { .bs = bs };
        start(flush_entry, &f[i]);
    }
    AIO_WAIT_WHILE(!all_done(f, N));
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(f[i].ret, ==, 0);
    }
    g_assert_cmpuint(counter_flushes, ==, 1);

    /* Nothing written since: a flush of a node that syncs is free. */
    g_assert_cmpint(bdrv_flush(bs), ==, 0);
    g_assert_cmpuint(counter_flushes, ==, 1);

    /* f[0] flushes an old write; a new write completes meanwhile; f[1..]
     * need it durable and share the next flush. */
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, (uint8_t[512]){ 0 }, 0), ==, 0);
    counter_flushes = 0;
    f[0] = (FlushCo) { .bs = bs };
    start(flush_entry, &f[0]);
    g_assert(bs->flush_active);
    start(write_entry, &w);
    AIO_WAIT_WHILE(!w.done);
    g_assert(bs->flush_active || f[0].done);
    for (int i = 1; i < N; i++) {
        f[i] = (FlushCo) { .bs = bs };
        start(flush_entry, &f[i]);
    }
    AIO_WAIT_WHILE(!all_done(f, N));
    g_assert_cmpuint(counter_flushes, ==, 2);
    g_assert(bdrv_write_gen_is_durable(bs, bdrv_get_write_gen(bs)));

    /* A FUA write right after a flush (a journaling guest's commit block)
     * is not yet counted as written when the layer emulates its FUA: it
     * still costs a flush of its own, and so does a FUA zero write. */
    counter_flushes = 0;
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, (uint8_t[512]){ 0 },
                                BDRV_REQ_FUA), ==, 0);
    g_assert_cmpuint(counter_flushes, ==, 1);
    g_assert_cmpint(bdrv_pwrite_zeroes(bs, 0, 512, BDRV_REQ_FUA), ==, 0);
    g_assert_cmpuint(counter_flushes, ==, 2);
    bdrv_unref(bs);
}

/* ---- synchronous wrappers and block_status_above ---- */

static void test_sync_wrappers(void)
{
    BlockDriverState *bs = open_counter();
    uint8_t buf[4096];
    int64_t pnum = -1;
    int depth = -1;

    counter_writes = 0;
    g_assert_cmpint(bdrv_pread(bs, 0, sizeof(buf), buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pwrite(bs, 4096, sizeof(buf), buf, 0), ==, 0);
    g_assert_cmpuint(counter_writes, ==, 1);
    g_assert_cmpint(bdrv_pwrite(bs, -1, 1, buf, 0), ==, -EIO);
    /* No status callback: all data; one node, depth 1 is the top. */
    int ret = bdrv_block_status_above(bs, NULL, 0, 1 * MiB, &pnum, NULL,
                                      NULL, &depth);
    g_assert_cmpint(ret & BDRV_BLOCK_ALLOCATED, !=, 0);
    g_assert_cmpint(pnum, ==, 1 * MiB);
    g_assert_cmpint(depth, ==, 0);
    /* base == bs: nothing above base, status 0. */
    ret = bdrv_block_status_above(bs, bs, 0, 1 * MiB, &pnum, NULL, NULL,
                                  &depth);
    g_assert_cmpint(ret, ==, 0);
    g_assert_cmpint(depth, ==, 0);
    bdrv_unref(bs);
}

/* ---- the user layer ---- */

#define PERM_RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

static BlockBackend *user(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared)
{
    BlockBackend *blk = blk_new(perm, shared);
    Error *err = NULL;

    if (blk_insert_bs(blk, bs, &err) < 0) {
        fprintf(stderr, "insert: %s\n", error_get_pretty(err));
        abort();
    }
    return blk;
}

/* ---- asynchronous wrappers ---- */

typedef struct AioDone {
    int ret;
    bool done;
    const bool *submitting;     /* the submitter has not returned yet */
} AioDone;

static void aio_done_cb(void *opaque, int ret)
{
    AioDone *d = opaque;

    g_assert(!*d->submitting);
    d->ret = ret;
    d->done = true;
}

/*
 * bdrv_aio_* and blk_aio_*: the callback comes from the event loop, never
 * before the submitting call returned, also when the request fails without
 * yielding; the node counts the request while it runs.
 */
static void test_aio_wrappers(void)
{
    BlockDriverState *bs = open_counter();
    BlockBackend *blk = user(bs, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                             BLK_PERM_ALL);
    uint8_t buf[4096] = { 0 };
    QEMUIOVector qiov;
    bool submitting;
    AioDone d = { .submitting = &submitting };

    qemu_iovec_init_buf(&qiov, buf, sizeof(buf));
    counter_writes = 0;
    submitting = true;
    bdrv_aio_pwritev(bs, 0, &qiov, 0, aio_done_cb, &d);
    submitting = false;
    g_assert(!d.done);
    g_assert_cmpuint(bs->in_flight, >, 0);
    AIO_WAIT_WHILE(!d.done);
    g_assert_cmpint(d.ret, ==, 0);
    g_assert_cmpuint(counter_writes, ==, 1);
    g_assert_cmpuint(bs->in_flight, ==, 0);

    /* Fails at once (negative offset), still reported after the return. */
    d.done = false;
    submitting = true;
    bdrv_aio_pwritev(bs, -4096, &qiov, 0, aio_done_cb, &d);
    submitting = false;
    g_assert(!d.done);
    AIO_WAIT_WHILE(!d.done);
    g_assert_cmpint(d.ret, ==, -EIO);
    g_assert_cmpuint(bs->in_flight, ==, 0);

    d.done = false;
    submitting = true;
    blk_aio_preadv(blk, 4096, &qiov, 0, aio_done_cb, &d);
    submitting = false;
    g_assert(!d.done);
    AIO_WAIT_WHILE(!d.done);
    g_assert_cmpint(d.ret, ==, 0);

    d.done = false;
    submitting = true;
    blk_aio_flush(blk, aio_done_cb, &d);
    submitting = false;
    g_assert(!d.done);
    AIO_WAIT_WHILE(!d.done);
    g_assert_cmpint(d.ret, ==, 0);
    blk_unref(blk);
    bdrv_unref(bs);
}

static void test_blk_bounds(void)
{
    BlockDriverState *bs = open_counter();
    BlockBackend *blk = user(bs, PERM_RW | BLK_PERM_RESIZE, BLK_PERM_ALL);
    uint8_t buf[4096] = { 0 };

    g_assert_cmpint(blk_getlength(blk), ==, 1 * MiB);
    g_assert_cmpint(blk_pread(blk, 1 * MiB - 4096, 4096, buf, 0), ==, 0);
    g_assert_cmpint(blk_pread(blk, 1 * MiB - 4095, 4096, buf, 0), ==, -EIO);
    g_assert_cmpint(blk_pwrite(blk, 1 * MiB, 1, buf, 0), ==, -EIO);
    g_assert_cmpint(blk_pwrite_zeroes(blk, 1 * MiB - 1, 2, 0), ==, -EIO);
    g_assert_cmpint(blk_pdiscard(blk, -1, 1), ==, -EIO);
    g_assert_cmpint(blk_pread(blk, INT64_MAX, 1, buf, 0), ==, -EIO);
    /* The empty request at the very end is in bounds. */
    g_assert_cmpint(blk_pwrite(blk, 1 * MiB, 0, buf, 0), ==, 0);
    /* Nodes check no bounds of their own: a driver may read its file
     * past a size its user sees. */
    g_assert_cmpint(bdrv_pread(bs, 1 * MiB, 512, buf, 0), ==, 0);
    blk_remove_bs(blk);
    g_assert(!blk_is_inserted(blk));
    g_assert_cmpint(blk_pread(blk, 0, 512, buf, 0), ==, -ENOMEDIUM);
    g_assert_cmpint(blk_flush(blk), ==, -ENOMEDIUM);
    blk_unref(blk);
    bdrv_unref(bs);
}

static void test_blk_perm(void)
{
    BlockDriverState *bs = open_counter();
    BlockBackend *ro = user(bs, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    uint8_t buf[512] = { 0 };
    Error *err = NULL;

    /* What the user does not hold, it cannot do. */
    g_assert_cmpint(blk_pread(ro, 0, 512, buf, 0), ==, 0);
    g_assert_cmpint(blk_pwrite(ro, 0, 512, buf, 0), ==, -EPERM);
    g_assert_cmpint(blk_pwrite_zeroes(ro, 0, 512, 0), ==, -EPERM);
    g_assert_cmpint(blk_pdiscard(ro, 0, 512), ==, -EPERM);
    g_assert_cmpint(blk_truncate(ro, 2 * MiB, false, PREALLOC_MODE_OFF,
                                 &err), ==, -EPERM);
    error_free(err);
    err = NULL;

    /* A writer that shares only reads keeps a second writer out... */
    BlockBackend *w = user(bs, PERM_RW, BLK_PERM_CONSISTENT_READ);
    BlockBackend *w2 = blk_new(PERM_RW, BLK_PERM_ALL);
    g_assert_cmpint(blk_insert_bs(w2, bs, &err), ==, -EPERM);
    g_assert(strstr(error_get_pretty(err), "write"));
    error_free(err);
    err = NULL;
    g_assert_null(blk_bs(w2));
    g_assert_cmpint(bs->user_perm, ==, PERM_RW);
    g_assert_cmpint(bs->user_shared, ==, BLK_PERM_CONSISTENT_READ);
    /* ...and cannot take a write the reader's sharing forbids. */
    g_assert_cmpint(blk_set_perm(ro, BLK_PERM_CONSISTENT_READ,
                                 BLK_PERM_CONSISTENT_READ, &err), ==, -EPERM);
    error_free(err);
    err = NULL;
    uint64_t perm, shared;
    blk_get_perm(ro, &perm, &shared);
    g_assert_cmpint(shared, ==, BLK_PERM_ALL);
    /* Once it shares writes, the second writer gets in. */
    g_assert_cmpint(blk_set_perm(w, PERM_RW, BLK_PERM_ALL, NULL), ==, 0);
    g_assert_cmpint(blk_insert_bs(w2, bs, NULL), ==, 0);
    g_assert_cmpint(blk_pwrite(w2, 0, 512, buf, 0), ==, 0);
    /* Leaving gives back what it held. */
    blk_unref(w);
    blk_unref(w2);
    g_assert_cmpint(bs->user_perm, ==, BLK_PERM_CONSISTENT_READ);
    g_assert_cmpint(bs->user_shared, ==, BLK_PERM_ALL);
    /* Resize needs its own permission. */
    g_assert_cmpint(blk_set_perm(ro, BLK_PERM_RESIZE, BLK_PERM_ALL, NULL),
                    ==, 0);
    g_assert_cmpint(blk_truncate(ro, 1 * MiB, false, PREALLOC_MODE_OFF,
                                 &err), ==, -ENOTSUP);
    error_free(err);
    blk_unref(ro);
    bdrv_unref(bs);
}

static void test_blk_cache_and_stats(void)
{
    BlockDriverState *bs = open_counter();
    BlockBackend *blk = user(bs, PERM_RW, BLK_PERM_ALL);
    uint8_t buf[512] = { 0 };

    g_assert(blk_enable_write_cache(blk));
    counter_flushes = 0;
    g_assert_cmpint(blk_pwrite(blk, 0, 512, buf, 0), ==, 0);
    g_assert_cmpuint(counter_flushes, ==, 0);
    /* Writethrough: every write is durable when it completes. */
    blk_set_enable_write_cache(blk, false);
    g_assert_cmpint(blk_pwrite(blk, 512, 512, buf, 0), ==, 0);
    g_assert_cmpint(blk_pwrite_zeroes(blk, 0, 512, 0), ==, 0);
    g_assert_cmpuint(counter_flushes, ==, 2);
    g_assert(bdrv_write_gen_is_durable(bs, bdrv_get_write_gen(bs)));

    g_assert(!blk_get_copy_on_read(blk));
    blk_set_copy_on_read(blk, true);
    g_assert(blk_get_copy_on_read(blk));
    blk_set_copy_on_read(blk, false);

    g_assert_cmpint(blk_pread(blk, 0, 512, buf, 0), ==, 0);
    g_assert_cmpint(blk_pread(blk, 1 * MiB, 512, buf, 0), ==, -EIO);
    g_assert_cmpint(blk_flush(blk), ==, 0);
    const BlockAcctStats *st = blk_get_stats(blk);
    g_assert_cmpuint(st->rd_ops, ==, 1);
    g_assert_cmpuint(st->rd_bytes, ==, 512);
    g_assert_cmpuint(st->wr_ops, ==, 2);
    g_assert_cmpuint(st->wr_bytes, ==, 1024);
    g_assert_cmpuint(st->zero_ops, ==, 1);
    g_assert_cmpuint(st->flush_ops, ==, 1);
    g_assert_cmpuint(st->failed_ops, ==, 1);
    blk_unref(blk);
    bdrv_unref(bs);
}

/* ---- drained sections ---- */

typedef struct BlkWrite {
    BlockBackend *blk;
    int64_t offset;
    int ret;
    bool done;
} BlkWrite;

static void coroutine_fn blk_write_entry(void *opaque)
{
    BlkWrite *w = opaque;
    uint8_t buf[512] = { 0 };
    w->ret = blk_co_pwrite(w->blk, w->offset, sizeof(buf), buf, 0);
    w->done = true;
}

/* Run what the event loop has ready, without blocking. */
static void run_ready(void)
{
    while (aio_poll(qemu_get_aio_context(), false)) {
    }
}

/*
 * A drained section waits for the request in flight, queues the ones that
 * start during it (they reach no driver) and lets them go at its end.
 */
static void test_drain_queues_requests(void)
{
    BlockDriverState *bs = open_counter();
    BlockBackend *blk = user(bs, PERM_RW, BLK_PERM_ALL);
    BlkWrite before = { .blk = blk }, during[3];

    counter_writes = 0;
    counter_drain_begins = counter_drain_ends = 0;
    qemu_coroutine_enter(qemu_coroutine_create(blk_write_entry, &before));
    g_assert(!before.done);             /* in the driver, in flight */
    g_assert_cmpuint(blk_in_flight(blk), ==, 1);
    bdrv_drained_begin(bs);
    g_assert(before.done);              /* the drain waited for it */
    g_assert_cmpint(before.ret, ==, 0);
    g_assert_cmpuint(counter_drain_begins, ==, 1);
    g_assert(bdrv_is_drained(bs));

    for (int i = 0; i < 3; i++) {
        during[i] = (BlkWrite) { .blk = blk, .offset = 512 * i };
        qemu_coroutine_enter(qemu_coroutine_create(blk_write_entry,
                                                   &during[i]));
    }
    run_ready();
    for (int i = 0; i < 3; i++) {
        g_assert(!during[i].done);
    }
    g_assert_cmpuint(counter_writes, ==, 1);
    g_assert_cmpuint(blk_in_flight(blk), ==, 3);   /* queued */

    bdrv_drained_end(bs);
    g_assert_cmpuint(counter_drain_ends, ==, 1);
    AIO_WAIT_WHILE(!during[0].done || !during[1].done || !during[2].done);
    for (int i = 0; i < 3; i++) {
        g_assert_cmpint(during[i].ret, ==, 0);
    }
    g_assert_cmpuint(counter_writes, ==, 4);
    g_assert_cmpuint(blk_in_flight(blk), ==, 0);
    blk_unref(blk);
    bdrv_unref(bs);
}

/*
 * Sections nest, over the whole subtree: the driver hooks run at the
 * outermost begin and end only, and requests stay queued until the last
 * end. A raw image: format node over a file node.
 */
static void test_drain_nested(void)
{
    char tmpl[] = "/var/tmp/test-block-core.XXXXXX";
    char *dir = g_mkdtemp(tmpl);
    char *path = g_build_filename(dir, "nested.raw", NULL);
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    qemu_opt_set_number(opts, "size", 1 * MiB);
    g_assert_cmpint(bdrv_create(bdrv_find_format("raw"), path, opts, &err),
                    ==, 0);
    qemu_opts_del(opts);
    BlockBackend *blk = blk_new_open(path, "raw", NULL, BDRV_O_RDWR, &err);
    g_assert(blk);
    BlockDriverState *bs = blk_bs(blk), *file = bdrv_get_file(bs);
    BlkWrite w = { .blk = blk };

    g_assert(file);
    bdrv_drained_begin(bs);
    bdrv_drained_begin(file);
    bdrv_drained_begin(bs);
    g_assert_cmpint(bs->quiesce_counter, ==, 2);
    g_assert_cmpint(file->quiesce_counter, ==, 3);
    qemu_coroutine_enter(qemu_coroutine_create(blk_write_entry, &w));
    bdrv_drained_end(bs);
    run_ready();
    g_assert(!w.done);
    bdrv_drained_end(file);
    g_assert_cmpint(file->quiesce_counter, ==, 1);
    run_ready();
    g_assert(!w.done);                  /* bs is still drained */
    bdrv_drained_end(bs);
    g_assert(!bdrv_is_drained(bs) && !bdrv_is_drained(file));
    AIO_WAIT_WHILE(!w.done);
    g_assert_cmpint(w.ret, ==, 0);

    /* A drain of a file node reaches its format's user (as QEMU's). */
    w.done = false;
    bdrv_drained_begin(file);
    g_assert(bdrv_is_drained(bs));
    qemu_coroutine_enter(qemu_coroutine_create(blk_write_entry, &w));
    run_ready();
    g_assert(!w.done);
    bdrv_drained_end(file);
    AIO_WAIT_WHILE(!w.done);
    g_assert(!bdrv_is_drained(bs));

    /* Nested hooks: only the outermost section reaches the driver. */
    BlockDriverState *c = open_counter();
    counter_drain_begins = counter_drain_ends = 0;
    bdrv_drained_begin(c);
    bdrv_drained_begin(c);
    bdrv_drained_end(c);
    g_assert_cmpuint(counter_drain_begins, ==, 1);
    g_assert_cmpuint(counter_drain_ends, ==, 0);
    bdrv_drained_end(c);
    g_assert_cmpuint(counter_drain_ends, ==, 1);
    bdrv_unref(c);

    blk_unref(blk);
    unlink(path);
    rmdir(dir);
    g_free(path);
}

/*
 * A section reaches up, as QEMU's: a drain of the file node quiesces the
 * format above it, the filter above that and the user on the filter (its
 * requests wait until the end, the one in flight is waited for), without
 * being a section of their own over their other children.
 */
static void test_drain_reaches_parents(void)
{
    char tmpl[] = "/var/tmp/test-block-core.XXXXXX";
    char *dir = g_mkdtemp(tmpl);
    char *path = g_build_filename(dir, "parents.raw", NULL);
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    qemu_opt_set_number(opts, "size", 1 * MiB);
    g_assert_cmpint(bdrv_create(bdrv_find_format("raw"), path, opts, &err),
                    ==, 0);
    qemu_opts_del(opts);
    char *name = g_strdup_printf("json:{\"driver\": \"copy-on-read\", "
                                 "\"file\": {\"driver\": \"raw\", "
                                 "\"file\": {\"filename\": \"%s\"}}}",
                                 path);
    BlockBackend *blk = blk_new_open(name, NULL, NULL, BDRV_O_RDWR, &err);
    if (!blk) {
        error_report_err(err);
    }
    g_assert(blk);
    BlockDriverState *cor = blk_bs(blk);
    BlockDriverState *fmt = bdrv_get_file(cor);
    BlockDriverState *file = fmt ? bdrv_get_file(fmt) : NULL;
    BlkWrite w = { .blk = blk };

    g_assert(file);
    bdrv_drained_begin(file);
    g_assert(bdrv_is_drained(fmt) && bdrv_is_drained(cor));
    g_assert_cmpint(cor->quiesce_counter, ==, 0);     /* not its own */
    g_assert_cmpint(cor->parent_quiesce_counter, ==, 1);
    g_assert_cmpint(fmt->parent_quiesce_counter, ==, 1);
    qemu_coroutine_enter(qemu_coroutine_create(blk_write_entry, &w));
    run_ready();
    g_assert(!w.done);                  /* queued by the user on the top */
    bdrv_drained_begin(fmt);            /* nests with the section below */
    g_assert_cmpint(cor->parent_quiesce_counter, ==, 2);
    bdrv_drained_end(file);
    run_ready();
    g_assert(!w.done);
    bdrv_drained_end(fmt);
    AIO_WAIT_WHILE(!w.done);
    g_assert_cmpint(w.ret, ==, 0);
    g_assert(!bdrv_is_drained(cor) && !bdrv_is_drained(fmt) &&
             !bdrv_is_drained(file));

    /* A write of the user in flight is waited for. */
    w.done = false;
    qemu_coroutine_enter(qemu_coroutine_create(blk_write_entry, &w));
    bdrv_drained_begin(file);
    g_assert(w.done);
    g_assert_cmpuint(blk_in_flight(blk), ==, 0);
    bdrv_drained_end(file);

    blk_unref(blk);
    unlink(path);
    rmdir(dir);
    g_free(name);
    g_free(path);
}

/* Background work (a prefetcher) registered on a node. */
typedef struct Worker {
    BlockDriverState *bs;
    int paused;                 /* drained_begin minus drained_end */
    bool busy;                  /* a step of its own is running */
    unsigned steps_left;
} Worker;

static void worker_begin(void *opaque)
{
    ((Worker *)opaque)->paused++;
}

static void worker_end(void *opaque)
{
    ((Worker *)opaque)->paused--;
}

static bool worker_poll(void *opaque)
{
    return ((Worker *)opaque)->busy;
}

static const BdrvDrainOps worker_ops = {
    .drained_begin = worker_begin,
    .drained_end   = worker_end,
    .drained_poll  = worker_poll,
};

/* A step that takes a few loop iterations to finish. */
static void coroutine_fn worker_step(void *opaque)
{
    Worker *wk = opaque;
    while (wk->steps_left--) {
        aio_co_schedule(qemu_coroutine_self());
        qemu_coroutine_yield();
    }
    wk->busy = false;
}

static void test_drain_background_work(void)
{
    BlockDriverState *bs = open_counter();
    Worker wk = { .bs = bs, .busy = true, .steps_left = 5 };

    bdrv_add_drain_user(bs, &worker_ops, &wk);
    qemu_coroutine_enter(qemu_coroutine_create(worker_step, &wk));
    g_assert(wk.busy);
    bdrv_drained_begin(bs);
    g_assert_cmpint(wk.paused, ==, 1);
    g_assert(!wk.busy);                 /* the drain waited for its step */
    bdrv_drained_begin(bs);
    g_assert_cmpint(wk.paused, ==, 2);
    bdrv_drained_end(bs);
    bdrv_drained_end(bs);
    g_assert_cmpint(wk.paused, ==, 0);

    /* Registered inside a section: paused at once, resumed at its end. */
    Worker late = { .bs = bs };
    bdrv_drained_begin(bs);
    bdrv_add_drain_user(bs, &worker_ops, &late);
    g_assert_cmpint(late.paused, ==, 1);
    bdrv_drained_end(bs);
    g_assert_cmpint(late.paused, ==, 0);
    bdrv_remove_drain_user(bs, &worker_ops, &late);
    bdrv_remove_drain_user(bs, &worker_ops, &wk);
    bdrv_unref(bs);
}

/* Truncate through the user layer runs in a drained section. */
static void test_drain_around_truncate(void)
{
    BlockDriverState *bs = open_counter();
    BlockBackend *blk = user(bs, PERM_RW | BLK_PERM_RESIZE, BLK_PERM_ALL);
    Error *err = NULL;

    counter_drain_begins = counter_drain_ends = 0;
    /* The counter driver cannot resize, but the section ran. */
    g_assert_cmpint(blk_truncate(blk, 2 * MiB, false, PREALLOC_MODE_OFF,
                                 &err), ==, -ENOTSUP);
    error_free(err);
    g_assert_cmpuint(counter_drain_begins, ==, 1);
    g_assert_cmpuint(counter_drain_ends, ==, 1);
    g_assert(!bdrv_is_drained(bs));
    blk_unref(blk);
    bdrv_unref(bs);
}

/* ---- reopen ---- */

/* Read-only <-> read-write over a raw image on a file: both nodes follow,
 * the user's permissions and the write check too. */
static void test_reopen_rw(void)
{
    char tmpl[] = "/var/tmp/test-block-core.XXXXXX";
    char *dir = g_mkdtemp(tmpl);
    char *path = g_build_filename(dir, "reopen.raw", NULL);
    QemuOpts *opts = qemu_opts_new();
    uint8_t buf[512] = { 0x5a };
    Error *err = NULL;

    qemu_opt_set_number(opts, "size", 1 * MiB);
    g_assert_cmpint(bdrv_create(bdrv_find_format("raw"), path, opts, &err),
                    ==, 0);
    qemu_opts_del(opts);
    BlockBackend *blk = blk_new_open(path, "raw", NULL, 0, &err);
    g_assert(blk);
    BlockDriverState *bs = blk_bs(blk), *file = bdrv_get_file(bs);
    uint64_t perm, shared;

    g_assert(bdrv_is_read_only(bs) && bdrv_is_read_only(file));
    g_assert_cmpint(blk_pwrite(blk, 0, 512, buf, 0), ==, -EPERM);

    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, NULL, &err), ==, 0);
    g_assert(!bdrv_is_read_only(bs) && !bdrv_is_read_only(file));
    blk_get_perm(blk, &perm, &shared);
    g_assert_cmpint(perm, ==, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    g_assert_cmpint(file->perm & BLK_PERM_WRITE, !=, 0);
    g_assert_cmpint(blk_pwrite(blk, 0, 512, buf, 0), ==, 0);
    g_assert(!bdrv_is_drained(bs));

    /* Back to read-only: what was written is flushed and stays. */
    g_assert_cmpint(blk_reopen(blk, 0, NULL, &err), ==, 0);
    g_assert(bdrv_is_read_only(bs) && bdrv_is_read_only(file));
    g_assert_cmpint(file->perm & BLK_PERM_WRITE, ==, 0);
    g_assert_cmpint(blk_pwrite(blk, 0, 512, buf, 0), ==, -EPERM);
    uint8_t out[512];
    g_assert_cmpint(blk_pread(blk, 0, 512, out, 0), ==, 0);
    g_assert_cmpint(out[0], ==, 0x5a);

    /* Unknown options fail and change nothing. */
    QemuOpts *bad = qemu_opts_new();
    qemu_opt_set(bad, "nosuchoption", "1");
    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, bad, &err), <, 0);
    g_assert(strstr(error_get_pretty(err), "nosuchoption"));
    error_free(err);
    err = NULL;
    qemu_opts_del(bad);
    g_assert(bdrv_is_read_only(bs) && bdrv_is_read_only(file));

    blk_unref(blk);
    unlink(path);
    rmdir(dir);
    g_free(path);
}

typedef struct NodeState {
    int flags;
    bool read_only;
    uint64_t perm, shared;
} NodeState;

static NodeState node_state(BlockDriverState *bs)
{
    return (NodeState) { bdrv_get_flags(bs), bdrv_is_read_only(bs),
                         bs->perm, bs->shared_perm };
}

static void assert_node_state(BlockDriverState *bs, NodeState st)
{
    g_assert_cmpint(bdrv_get_flags(bs), ==, st.flags);
    g_assert_cmpint(bdrv_is_read_only(bs), ==, st.read_only);
    g_assert_cmpint(bs->perm, ==, st.perm);
    g_assert_cmpint(bs->shared_perm, ==, st.shared);
}

/*
 * A failed prepare on one node, or a lock the new permissions cannot
 * get, leaves every node of the chain as it was; nodes whose prepare
 * succeeded are aborted, none committed.
 */
static void test_reopen_abort(void)
{
    Error *err = NULL;
    BlockBackend *blk = blk_new_open("counter://", "raw", NULL, 0, &err);
    g_assert(blk);
    BlockDriverState *bs = blk_bs(blk), *proto = bdrv_get_file(bs);
    g_assert(proto);
    NodeState top = node_state(bs), bottom = node_state(proto);
    uint64_t perm, shared;

    counter_prepares = counter_commits = counter_aborts = 0;
    counter_fail_prepare = true;
    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, NULL, &err), ==, -EIO);
    g_assert(strstr(error_get_pretty(err), "prepare refused"));
    error_free(err);
    err = NULL;
    counter_fail_prepare = false;
    assert_node_state(bs, top);
    assert_node_state(proto, bottom);
    g_assert_cmpuint(counter_commits + counter_aborts, ==, 0);
    blk_get_perm(blk, &perm, &shared);
    g_assert_cmpint(perm, ==, BLK_PERM_CONSISTENT_READ);
    g_assert(!bdrv_is_drained(bs) && !bdrv_is_drained(proto));

    /* All prepared, then the write lock fails: abort, no commit. */
    counter_fail_perm = true;
    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, NULL, &err), <, 0);
    g_assert(strstr(error_get_pretty(err), "write lock"));
    error_free(err);
    err = NULL;
    counter_fail_perm = false;
    g_assert_cmpuint(counter_prepares, ==, 1);
    g_assert_cmpuint(counter_aborts, ==, 1);
    g_assert_cmpuint(counter_commits, ==, 0);
    assert_node_state(bs, top);
    assert_node_state(proto, bottom);
    blk_get_perm(blk, &perm, &shared);
    g_assert_cmpint(perm, ==, BLK_PERM_CONSISTENT_READ);
    uint8_t buf[512] = { 0 };
    g_assert_cmpint(blk_pwrite(blk, 0, 512, buf, 0), ==, -EPERM);

    /* And when nothing fails, every node commits. */
    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, NULL, &err), ==, 0);
    g_assert_cmpuint(counter_commits, ==, 1);
    g_assert(!bdrv_is_read_only(bs) && !bdrv_is_read_only(proto));
    g_assert_cmpint(blk_pwrite(blk, 0, 512, buf, 0), ==, 0);
    blk_unref(blk);
}

/*
 * "fragile": a format without reopen callbacks (closed and opened again
 * by a reopen) whose open can be told to fail when read-write.
 */
static bool fragile_fail_rw;

static int coroutine_fn fragile_open(BlockDriverState *bs, QemuOpts *options,
                                     int flags, Error **errp)
{
    if (fragile_fail_rw && (flags & BDRV_O_RDWR)) {
        error_setg(errp, "fragile: cannot open read-write");
        return -EIO;
    }
    return 0;
}

static int64_t fragile_getlength(BlockDriverState *bs)
{
    return bdrv_getlength(bs->file);
}

static int coroutine_fn fragile_co_preadv(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          QEMUIOVector *qiov,
                                          size_t qiov_offset,
                                          BdrvRequestFlags flags)
{
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags);
}

static BlockDriver bdrv_fragile = {
    .format_name            = "fragile",
    .instance_size          = 1,
    .bdrv_open              = fragile_open,
    .bdrv_getlength         = fragile_getlength,
    .bdrv_co_preadv         = fragile_co_preadv,
};

BLOCK_DRIVER_REGISTER(bdrv_fragile)

/*
 * The commit's fallback: the format fails to open with the new flags and
 * is opened with its old ones again. The reopen fails, and the file node
 * below, whose driver had committed the new flags, takes its old flags
 * again (its driver prepares and commits them), as do the permissions.
 */
static void test_reopen_fallback(void)
{
    Error *err = NULL;
    BlockBackend *blk = blk_new_open("counter://", "fragile", NULL, 0, &err);
    g_assert(blk);
    BlockDriverState *bs = blk_bs(blk), *proto = bdrv_get_file(bs);
    g_assert(proto);
    NodeState top = node_state(bs), bottom = node_state(proto);
    uint64_t perm, shared;
    uint8_t buf[512] = { 0 };

    g_assert(bdrv_is_read_only(proto));
    counter_prepares = counter_commits = counter_aborts = 0;
    fragile_fail_rw = true;
    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, NULL, &err), ==, -EIO);
    g_assert(strstr(error_get_pretty(err), "cannot open read-write"));
    error_free(err);
    err = NULL;
    g_assert_cmpuint(counter_prepares, ==, 2);      /* new, then old */
    g_assert_cmpuint(counter_commits, ==, 2);
    assert_node_state(bs, top);
    assert_node_state(proto, bottom);
    g_assert(bdrv_is_read_only(proto));
    g_assert(bs->drv && !bdrv_is_drained(bs) && !bdrv_is_drained(proto));
    blk_get_perm(blk, &perm, &shared);
    g_assert_cmpint(perm, ==, BLK_PERM_CONSISTENT_READ);
    g_assert_cmpint(bs->user_perm, ==, BLK_PERM_CONSISTENT_READ);
    g_assert_cmpint(blk_pread(blk, 0, 512, buf, 0), ==, 0);

    /* Once it can, the same reopen succeeds on every node. */
    fragile_fail_rw = false;
    g_assert_cmpint(blk_reopen(blk, BDRV_O_RDWR, NULL, &err), ==, 0);
    g_assert(!bdrv_is_read_only(bs) && !bdrv_is_read_only(proto));
    blk_unref(blk);
}

/* ---- jobs ---- */

enum { JOB_STEPS = 10 };

/* Ten steps, each one loop iteration long, one unit of progress each. */
static int coroutine_fn steps_run(Job *job, void *opaque)
{
    job_progress_set_total(job, JOB_STEPS);
    for (int i = 0; i < JOB_STEPS; i++) {
        if (job_pause_point(job)) {
            return 0;
        }
        aio_co_schedule(qemu_coroutine_self());
        qemu_coroutine_yield();
        job_progress_update(job, 1);
    }
    return 0;
}

static void steps_progress(Job *job, uint64_t current, uint64_t total,
                           void *opaque)
{
    unsigned *calls = opaque;
    g_assert_cmpuint(total, ==, JOB_STEPS);
    g_assert_cmpuint(current, ==, *calls + 1);
    (*calls)++;
}

static void test_job_pause_resume(void)
{
    Job *job = job_new(steps_run, NULL);
    unsigned calls = 0;
    uint64_t cur, total;

    job_set_progress_cb(job, steps_progress, &calls);
    job_pause(job);
    job_pause(job);
    job_start(job);
    run_ready();
    g_assert(job_is_paused(job) && !job_is_completed(job));
    job_resume(job);                    /* still paused once */
    run_ready();
    g_assert(job_is_paused(job));
    job_progress_get(job, &cur, &total);
    g_assert_cmpuint(cur, ==, 0);
    job_resume(job);
    g_assert_cmpint(job_wait(job), ==, 0);
    job_progress_get(job, &cur, &total);
    g_assert_cmpuint(cur, ==, JOB_STEPS);
    g_assert_cmpuint(total, ==, JOB_STEPS);
    g_assert_cmpuint(calls, ==, JOB_STEPS);
    job_free(job);
}

static void test_job_cancel(void)
{
    Job *job = job_new(steps_run, NULL);
    uint64_t cur, total;

    job_pause(job);
    job_start(job);
    g_assert(job_is_paused(job));
    job_cancel(job);                    /* wakes it at its pause point */
    g_assert(job_is_cancelled(job));
    g_assert_cmpint(job_wait(job), ==, -ECANCELED);
    job_progress_get(job, &cur, &total);
    g_assert_cmpuint(cur, ==, 0);
    job_free(job);
}

/* ---- job error policy ---- */

/* Ten steps; step fail_step fails with error, failures times (-1: always). */
typedef struct FaultySteps {
    bool is_read;
    int fail_step;
    int error;
    int failures;
    unsigned done[JOB_STEPS];       /* times each step succeeded */
    unsigned errors;                /* calls of the error callback */
    JobErrorAction last_action;
} FaultySteps;

static int coroutine_fn faulty_run(Job *job, void *opaque)
{
    FaultySteps *f = opaque;

    job_progress_set_total(job, JOB_STEPS);
    for (int i = 0; i < JOB_STEPS; i++) {
        int ret;

        if (job_pause_point(job)) {
            return 0;
        }
        aio_co_schedule(qemu_coroutine_self());
        qemu_coroutine_yield();
        do {
            ret = 0;
            if (i == f->fail_step && f->failures != 0) {
                if (f->failures > 0) {
                    f->failures--;
                }
                ret = job_co_step_error(job, f->is_read, f->error);
                if (ret < 0) {
                    return ret;
                }
            } else {
                f->done[i]++;
                ret = 1;
            }
        } while (ret == 0);         /* 0: retry the step after a stop */
        job_progress_update(job, 1);
    }
    return 0;
}

static void faulty_error(Job *job, JobErrorAction action, bool is_read,
                         int error, void *opaque)
{
    FaultySteps *f = opaque;

    g_assert(is_read == f->is_read);
    g_assert_cmpint(error, ==, f->error);
    f->errors++;
    f->last_action = action;
}

static Job *faulty_job(FaultySteps *f, JobOnError on_read,
                       JobOnError on_write)
{
    Job *job = job_new(faulty_run, f);

    job_set_on_error(job, on_read, on_write);
    job_set_error_cb(job, faulty_error, f);
    job_start(job);
    return job;
}

static uint64_t job_current(Job *job)
{
    uint64_t cur, total;

    job_progress_get(job, &cur, &total);
    return cur;
}

/* report: the job fails with the error at the failing step. */
static void test_job_error_report(void)
{
    FaultySteps f = { .fail_step = 3, .error = -EIO, .failures = -1 };
    Job *job = faulty_job(&f, JOB_ON_ERROR_IGNORE, JOB_ON_ERROR_REPORT);

    g_assert_cmpint(job_wait(job), ==, -EIO);
    g_assert_cmpuint(job_current(job), ==, 3);
    g_assert_cmpuint(f.errors, ==, 1);
    g_assert(f.last_action == JOB_ERROR_ACTION_REPORT);
    g_assert_cmpuint(f.done[4], ==, 0);
    job_free(job);
}

/* ignore: the step is skipped, the job completes. */
static void test_job_error_ignore(void)
{
    FaultySteps f = { .is_read = true, .fail_step = 5, .error = -EIO,
                      .failures = -1 };
    Job *job = faulty_job(&f, JOB_ON_ERROR_IGNORE, JOB_ON_ERROR_REPORT);

    g_assert_cmpint(job_wait(job), ==, 0);
    g_assert_cmpuint(job_current(job), ==, JOB_STEPS);
    g_assert_cmpuint(f.done[5], ==, 0);
    g_assert_cmpuint(f.done[9], ==, 1);
    g_assert_cmpuint(f.errors, ==, 1);
    g_assert(f.last_action == JOB_ERROR_ACTION_IGNORE);
    g_assert_cmpuint(job_ignored_errors(job), ==, 1);
    job_free(job);
}

/* Run until the job stopped on error at step fail_step. */
static void wait_stopped(Job *job, FaultySteps *f, int error)
{
    run_ready();
    g_assert(job_is_paused(job) && !job_is_completed(job));
    g_assert_cmpint(job_stop_error(job), ==, error);
    g_assert(f->last_action == JOB_ERROR_ACTION_STOP);
    g_assert_cmpuint(job_current(job), ==, f->fail_step);
}

/* stop: the job pauses; resumed, it retries the step (again stopping
 * while the error lasts); cancelled, it ends. */
static void test_job_error_stop(void)
{
    FaultySteps f = { .fail_step = 2, .error = -EIO, .failures = -1 };
    Job *job = faulty_job(&f, JOB_ON_ERROR_REPORT, JOB_ON_ERROR_STOP);

    wait_stopped(job, &f, -EIO);
    g_assert_cmpuint(f.errors, ==, 1);
    job_resume(job);                    /* the error is still there */
    wait_stopped(job, &f, -EIO);
    g_assert_cmpuint(f.errors, ==, 2);
    f.failures = 0;                     /* the user fixed it */
    job_resume(job);
    g_assert_cmpint(job_wait(job), ==, 0);
    g_assert_cmpint(job_stop_error(job), ==, 0);
    g_assert_cmpuint(job_current(job), ==, JOB_STEPS);
    g_assert_cmpuint(f.done[2], ==, 1);
    job_free(job);

    f = (FaultySteps) { .fail_step = 7, .error = -EIO, .failures = -1 };
    job = faulty_job(&f, JOB_ON_ERROR_REPORT, JOB_ON_ERROR_STOP);
    wait_stopped(job, &f, -EIO);
    job_cancel(job);
    g_assert_cmpint(job_wait(job), ==, -ECANCELED);
    g_assert_cmpuint(job_current(job), ==, 7);
    g_assert_cmpuint(f.done[7], ==, 0);
    job_free(job);
}

/* enospc: stop on ENOSPC, report anything else. */
static void test_job_error_enospc(void)
{
    FaultySteps f = { .fail_step = 4, .error = -ENOSPC, .failures = -1 };
    Job *job = faulty_job(&f, JOB_ON_ERROR_REPORT, JOB_ON_ERROR_ENOSPC);

    wait_stopped(job, &f, -ENOSPC);
    f.failures = 0;                     /* space was freed */
    job_resume(job);
    g_assert_cmpint(job_wait(job), ==, 0);
    g_assert_cmpuint(job_current(job), ==, JOB_STEPS);
    job_free(job);

    f = (FaultySteps) { .fail_step = 4, .error = -EIO, .failures = -1 };
    job = faulty_job(&f, JOB_ON_ERROR_REPORT, JOB_ON_ERROR_ENOSPC);
    g_assert_cmpint(job_wait(job), ==, -EIO);
    g_assert(f.last_action == JOB_ERROR_ACTION_REPORT);
    g_assert_cmpuint(job_current(job), ==, 4);
    job_free(job);
}

/* Three coroutines of one job fail at once (convert -m 3): one stop. */
typedef struct MultiFail {
    Job *job;
    bool fixed;
    int running;
    unsigned done, errors;
    Coroutine *waiter;
} MultiFail;

static void coroutine_fn multi_worker(void *opaque)
{
    MultiFail *m = opaque;
    int ret;

    do {
        ret = m->fixed ? 1 : job_co_step_error(m->job, false, -EIO);
    } while (ret == 0);
    if (ret == 1) {
        m->done++;
    }
    if (--m->running == 0) {
        aio_co_wake(m->waiter);
    }
}

static int coroutine_fn multi_run(Job *job, void *opaque)
{
    MultiFail *m = opaque;

    m->waiter = qemu_coroutine_self();
    m->running = 3;
    for (int i = 0; i < 3; i++) {
        aio_co_schedule(qemu_coroutine_create(multi_worker, m));
    }
    while (m->running > 0) {
        qemu_coroutine_yield();
    }
    return 0;
}

static void multi_error(Job *job, JobErrorAction action, bool is_read,
                        int error, void *opaque)
{
    g_assert(action == JOB_ERROR_ACTION_STOP);
    ((MultiFail *)opaque)->errors++;
}

static void test_job_error_stop_workers(void)
{
    MultiFail m = { 0 };
    Job *job = job_new(multi_run, &m);

    m.job = job;
    job_set_on_error(job, JOB_ON_ERROR_REPORT, JOB_ON_ERROR_STOP);
    job_set_error_cb(job, multi_error, &m);
    job_start(job);
    run_ready();
    g_assert(job_is_paused(job));
    g_assert_cmpuint(m.errors, ==, 3);          /* each told, one stop */
    g_assert_cmpint(job_stop_error(job), ==, -EIO);
    m.fixed = true;
    job_resume(job);                            /* one resume wakes all */
    g_assert_cmpint(job_wait(job), ==, 0);
    g_assert_cmpuint(m.done, ==, 3);
    job_free(job);
}

int main(int argc, char **argv)
{
    error_set_progname(argv[0]);
    bdrv_init();

    test_flush_merge();
    test_sync_wrappers();
    test_aio_wrappers();
    test_blk_bounds();
    test_blk_perm();
    test_blk_cache_and_stats();
    test_drain_queues_requests();
    test_drain_nested();
    test_drain_reaches_parents();
    test_drain_background_work();
    test_drain_around_truncate();
    test_reopen_rw();
    test_reopen_abort();
    test_reopen_fallback();
    test_job_pause_resume();
    test_job_cancel();
    test_job_error_report();
    test_job_error_ignore();
    test_job_error_stop();
    test_job_error_enospc();
    test_job_error_stop_workers();

    printf("PASS test-block-core\n");
    return 0;
}
