/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of FVD internals that need the interleaving forced with blkdebug
 * breakpoints: many allocating writes into one block, the write-ahead rule
 * (a bitmap page goes home only after its journal record is durable, and
 * no record before its data is durable), background commits past the soft
 * limit and writers held at the hard limit while a commit is suspended,
 * and no background work left running after close; for compact images the
 * same orderings for table records and pages, concurrent chunk allocation
 * and the rule that a bit without a mapped chunk means "in the base";
 * prefetch: races with guest writes, drains, the COMPLETE bit written
 * only after the bitmap is home, and flushes racing the job's own.
 */
#include "block_int.h"
#include "block/fvd/fvd.h"
#include "util/aio.h"
#include "block/job.h"

static char *test_dir;

static char *path_of(const char *name)
{
    return g_build_filename(test_dir, name, NULL);
}

static void create(const char *fmt, const char *path, const char *opts)
{
    QemuOpts *o = qemu_opts_new();
    Error *err = NULL;
    g_assert_cmpint(qemu_opts_parse(o, opts, NULL, &err), ==, 0);
    if (bdrv_create(bdrv_find_format(fmt), path, o, &err) < 0) {
        fprintf(stderr, "create %s: %s\n", path, error_get_pretty(err));
        abort();
    }
    qemu_opts_del(o);
}

/* A raw base of size bytes, its first fill_len bytes 0xee. */
static char *make_base(const char *name, int64_t size, int64_t fill_len)
{
    char *base = path_of(name);
    char *opts = g_strdup_printf("size=%" PRId64, size);
    create("raw", base, opts);
    g_free(opts);
    if (fill_len) {
        BlockDriverState *b = bdrv_open(base, "raw", NULL, BDRV_O_RDWR, NULL);
        uint8_t *fill = g_malloc(fill_len);
        memset(fill, 0xee, fill_len);
        g_assert_cmpint(bdrv_pwrite(b, 0, fill_len, fill, 0), ==, 0);
        bdrv_unref(b);
        g_free(fill);
    }
    return base;
}

static BlockDriverState *open_fvd(const char *name, const char *opts)
{
    QemuOpts *o = qemu_opts_new();
    Error *err = NULL;
    if (opts) {
        g_assert_cmpint(qemu_opts_parse(o, opts, NULL, &err), ==, 0);
    }
    BlockDriverState *bs = bdrv_open(name, "fvd", o, BDRV_O_RDWR, &err);
    if (!bs) {
        fprintf(stderr, "open %s: %s\n", name, error_get_pretty(err));
        abort();
    }
    qemu_opts_del(o);
    return bs;
}

typedef struct Writer {
    BlockDriverState *bs;
    int64_t off, len;
    uint8_t pat;
    int ret;
    int *done;
} Writer;

static void coroutine_fn writer_entry(void *opaque)
{
    Writer *w = opaque;
    uint8_t *b = g_malloc(w->len);
    memset(b, w->pat, w->len);
    w->ret = bdrv_co_pwrite(w->bs, w->off, w->len, b, 0);
    g_free(b);
    (*w->done)++;
}

static void start_writer(Writer *w)
{
    qemu_coroutine_enter(qemu_coroutine_create(writer_entry, w));
}

/* 16 disjoint writes inside one block at once: each keeps its bytes, the
 * rest of the block is copied from the base, after a reopen too. */
static void test_same_block(const char *block_size)
{
    char *base = make_base("base.raw", 1 * MiB, 1 * MiB);
    char *top = path_of("same.fvd");
    char *opts = g_strdup_printf("backing_file=%s,backing_fmt=raw,"
                                 "block_size=%s", base, block_size);
    create("fvd", top, opts);
    g_free(opts);
    BlockDriverState *bs = open_fvd(top, NULL);
    enum { N = 16 };
    Writer w[N];
    int done = 0;
    for (int i = 0; i < N; i++) {
        w[i] = (Writer) { bs, 300 + i * 4000, 1000, (uint8_t)(i + 1), 0,
                          &done };
        start_writer(&w[i]);
    }
    AIO_WAIT_WHILE(done < N);
    uint8_t *out = g_malloc(128 * KiB), *out2 = g_malloc(128 * KiB);
    g_assert_cmpint(bdrv_pread(bs, 0, 128 * KiB, out, 0), ==, 0);
    for (int64_t x = 0; x < 128 * KiB; x++) {
        uint8_t want = 0xee;
        for (int i = 0; i < N; i++) {
            g_assert_cmpint(w[i].ret, ==, 0);
            if (x >= w[i].off && x < w[i].off + w[i].len) {
                want = w[i].pat;
            }
        }
        if (out[x] != want) {
            fprintf(stderr, "block size %s, byte %" PRId64 ": %#x, want "
                    "%#x\n", block_size, x, out[x], want);
            abort();
        }
    }
    bdrv_unref(bs);
    bs = bdrv_open(top, "fvd", NULL, 0, NULL);
    g_assert(bs);
    g_assert_cmpint(bdrv_pread(bs, 0, 128 * KiB, out2, 0), ==, 0);
    g_assert(!memcmp(out, out2, 128 * KiB));
    bdrv_unref(bs);
    unlink(top);
    unlink(base);
    g_free(out);
    g_free(out2);
    g_free(base);
    g_free(top);
}

typedef struct CoCall {
    BlockDriverState *bs;
    int (*fn)(BlockDriverState *bs);
    int ret;
    bool done;
} CoCall;

static void coroutine_fn co_call_entry(void *opaque)
{
    CoCall *c = opaque;
    c->ret = c->fn(c->bs);
    c->done = true;
}

static void start_call(CoCall *c)
{
    qemu_coroutine_enter(qemu_coroutine_create(co_call_entry, c));
}

static int do_flush(BlockDriverState *bs)
{
    return bdrv_co_flush(bs);
}

static int do_checkpoint(BlockDriverState *bs)
{
    return fvd_journal_checkpoint(bs);
}

static void poll_a_while(void)
{
    for (int i = 0; i < 200; i++) {
        aio_poll(qemu_get_aio_context(), false);
    }
}

/*
 * The orderings of spec section 7 (b) and (c), forced: the journal record
 * is written only after the data flush completed; the bitmap page goes
 * home only after a flush that covers the record completed.
 */
static void test_write_ahead(void)
{
    char *base = make_base("base.raw", 1 * MiB, 1 * MiB);
    char *top = path_of("wal.fvd");
    char *opts = g_strdup_printf("backing_file=%s,backing_fmt=raw", base);
    create("fvd", top, opts);
    g_free(opts);
    char *name = g_strdup_printf("blkdebug::%s", top);
    BlockDriverState *bs = open_fvd(name, NULL);
    BDRVFvdState *s = bs->opaque;
    int done = 0;

    /* An allocating write: its bit waits for a commit. */
    Writer w = { bs, 8192, 4096, 0x42, 0, &done };
    start_writer(&w);
    AIO_WAIT_WHILE(done < 1);
    g_assert_cmpint(s->pending_entries, ==, 1);

    /* (b): the guest flush first flushes the data (held here); no journal
     * write may start meanwhile. */
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F"), ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "journal_write", "J"), ==, 0);
    CoCall fl = { bs, do_flush };
    start_call(&fl);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F"));
    poll_a_while();
    g_assert(!bdrv_debug_is_suspended(bs, "J"));
    g_assert_cmpint(s->stats.journal_sectors, ==, 0);
    g_assert_cmpint(bdrv_debug_resume(bs, "F"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "J"));
    g_assert_cmpint(bdrv_debug_resume(bs, "J"), ==, 0);
    AIO_WAIT_WHILE(!fl.done);
    g_assert_cmpint(fl.ret, ==, 0);
    g_assert_cmpint(s->stats.journal_sectors, ==, 1);

    /* A second write and a commit whose record is written but not yet
     * flushed: hold the record's flush, then ask for a checkpoint. */
    w = (Writer) { bs, 512 * KiB, 4096, 0x43, 0, &done };
    start_writer(&w);
    AIO_WAIT_WHILE(done < 2);
    CoCall cm = { bs, fvd_journal_commit };
    start_call(&cm);
    AIO_WAIT_WHILE(!cm.done);
    g_assert_cmpint(cm.ret, ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F2"), ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "bitmap_update", "W"), ==, 0);
    CoCall cp = { bs, do_checkpoint };
    start_call(&cp);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F2") &&
                   !bdrv_debug_is_suspended(bs, "W"));
    /* (c): the page write waits for the flush covering the record. */
    g_assert(bdrv_debug_is_suspended(bs, "F2"));
    poll_a_while();
    g_assert(!bdrv_debug_is_suspended(bs, "W"));
    g_assert_cmpint(bdrv_debug_resume(bs, "F2"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "W"));
    g_assert_cmpint(bdrv_debug_resume(bs, "W"), ==, 0);
    AIO_WAIT_WHILE(!cp.done);
    g_assert_cmpint(cp.ret, ==, 0);
    g_assert_cmpint(s->j.tail, ==, s->j.written_seq);

    bdrv_unref(bs);
    bs = bdrv_open(top, "fvd", NULL, 0, NULL);
    uint8_t out[4096];
    g_assert_cmpint(bdrv_pread(bs, 512 * KiB, 4096, out, 0), ==, 0);
    g_assert_cmpint(out[0], ==, 0x43);
    g_assert_cmpint(out[4095], ==, 0x43);
    bdrv_unref(bs);
    unlink(top);
    unlink(base);
    g_free(name);
    g_free(base);
    g_free(top);
}

/*
 * Writes into more than FVD_PENDING_SOFT cache entries start a background
 * commit; with that commit held at its journal write, writes that find
 * FVD_PENDING_HARD entries pending wait, and go on once it is released.
 * 512-byte entries at 512-byte blocks: one entry per 2 MiB of base.
 */
static void test_pending_limits(void)
{
    enum { N1 = FVD_PENDING_SOFT + FVD_PENDING_HARD + 8, N2 = 16,
           N = N1 + N2 };
    int64_t stride = 2 * MiB;
    char *base = make_base("big.raw", (int64_t)(N + 1) * stride, 0);
    char *top = path_of("limits.fvd");
    char *opts = g_strdup_printf("backing_file=%s,backing_fmt=raw,"
                                 "block_size=512", base);
    create("fvd", top, opts);
    g_free(opts);
    char *name = g_strdup_printf("blkdebug::%s", top);
    BlockDriverState *bs = open_fvd(name, "cache-entry-size=512");
    BDRVFvdState *s = bs->opaque;
    Writer *w = g_new0(Writer, N);
    int done = 0;

    g_assert_cmpint(bdrv_debug_breakpoint(bs, "journal_write", "J"), ==, 0);
    for (int i = 0; i < N; i++) {
        w[i] = (Writer) { bs, i * stride, 512, (uint8_t)(i % 250 + 1), 0,
                          &done };
    }
    /* Phase 1: past the soft limit a background commit starts and takes
     * the pending entries (it is held at its journal write); the next
     * writes complete and stay pending. */
    for (int i = 0; i < FVD_PENDING_SOFT + 8; i++) {
        start_writer(&w[i]);
    }
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "J"));
    for (int i = FVD_PENDING_SOFT + 8; i < N1; i++) {
        start_writer(&w[i]);
    }
    AIO_WAIT_WHILE(done < N1);
    g_assert_cmpint(s->stats.bg_commits, ==, 1);
    g_assert_cmpint(s->pending_entries, >=, FVD_PENDING_HARD);
    /* Phase 2: these find the hard limit reached and wait. Each may first
     * load a bitmap entry, so wait for them to arrive (or, were they not
     * held, to complete), however loaded the machine is. */
    for (int i = N1; i < N; i++) {
        start_writer(&w[i]);
    }
    AIO_WAIT_WHILE(s->stats.pending_waits < N2 && done < N);
    g_assert_cmpint(done, ==, N1);
    g_assert_cmpuint(s->stats.pending_waits, >=, N2);
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "J"), ==, 0);
    AIO_WAIT_WHILE(done < N);
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(w[i].ret, ==, 0);
    }
    g_assert_cmpint(s->stats.bg_commits, >=, 2);
    bdrv_unref(bs);
    bs = bdrv_open(top, "fvd", NULL, 0, NULL);
    for (int i = 0; i < N; i += 97) {
        uint8_t out[1024];
        g_assert_cmpint(bdrv_pread(bs, i * stride, 1024, out, 0), ==, 0);
        g_assert_cmpint(out[0], ==, i % 250 + 1);
        g_assert_cmpint(out[511], ==, i % 250 + 1);
        g_assert_cmpint(out[512], ==, 0);
    }
    bdrv_unref(bs);
    unlink(top);
    unlink(base);
    g_free(w);
    g_free(name);
    g_free(base);
    g_free(top);
}

/*
 * Close after a flush that failed: the header write that starts the
 * session's journal fails (blkdebug), so the flush the layer makes before
 * close leaves FVD_PENDING_SOFT entries pending and a background commit
 * due after the layer's drain. Close must not leave it behind to run on
 * the freed image: once bdrv_unref returns, nothing of it may be left to
 * run (before the fix it ran there, on freed memory).
 */
static void test_close_after_failed_flush(void)
{
    enum { N = FVD_PENDING_SOFT };
    int64_t stride = 2 * MiB;
    char *base = make_base("close.raw", (int64_t)(N + 1) * stride, 0);
    char *top = path_of("close.fvd");
    char *rules = path_of("close.rules");
    char *opts = g_strdup_printf("backing_file=%s,backing_fmt=raw,"
                                 "block_size=512", base);
    create("fvd", top, opts);
    g_free(opts);
    g_assert(g_file_set_contents(rules, "[inject-error]\n"
                                 "event = \"header_write\"\n"
                                 "errno = \"5\"\n", -1, NULL));
    char *name = g_strdup_printf("blkdebug:%s:%s", rules, top);
    BlockDriverState *bs = open_fvd(name, "cache-entry-size=512");
    BDRVFvdState *s = bs->opaque;
    uint8_t buf[512];

    memset(buf, 0x5a, sizeof(buf));
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(bdrv_pwrite(bs, i * stride, 512, buf, 0), ==, 0);
    }
    AIO_WAIT_WHILE(s->bg_running);
    /* The background commit failed at its header write: all pending. */
    g_assert_cmpint(s->pending_entries, ==, N);
    g_assert_cmpint(s->j.last_commit_ret, ==, -EIO);
    bdrv_unref(bs);
    g_assert(!aio_poll(qemu_get_aio_context(), false));
    unlink(top);
    unlink(base);
    unlink(rules);
    g_free(name);
    g_free(rules);
    g_free(base);
    g_free(top);
}

static int do_write_at(BlockDriverState *bs, int64_t off, uint8_t pat)
{
    uint8_t buf[4096];
    memset(buf, pat, sizeof(buf));
    return bdrv_pwrite(bs, off, sizeof(buf), buf, 0);
}

/*
 * Compact image, spec section 11: the mapping of a chunk that may hold old
 * bytes (zeroed first) is journalled only after the data storage flush
 * (held here), and a table page goes home only after a flush covering its
 * record (T2, T3). The mapping of a chunk past the storage's old end needs
 * no data flush before its record (T2's exception): the journal write
 * comes first.
 */
static void test_table_write_ahead(void)
{
    char *top = path_of("twal.fvd");
    create("fvd", top, "size=64M,compact_image=on,chunk_size=64k,"
           "storage_grow_unit=256k");
    /* Session 1: chunk 80 -> physical 0; the storage grows to 4 chunks. */
    BlockDriverState *bs = open_fvd(top, NULL);
    g_assert_cmpint(do_write_at(bs, 5 * MiB, 0x41), ==, 0);
    bdrv_unref(bs);

    /* Session 2: physical chunks 1-3 may hold old bytes, 4 on are fresh. */
    char *name = g_strdup_printf("blkdebug::%s", top);
    bs = open_fvd(name, NULL);
    BDRVFvdState *s = bs->opaque;
    g_assert_cmpint(s->t.zero_from, ==, 4);
    g_assert_cmpint(do_write_at(bs, 1 * MiB, 0x42), ==, 0);
    g_assert_cmpint(bdrv_flush(bs), ==, 0);     /* the session's epoch */
    g_assert_cmpint(do_write_at(bs, 1 * MiB + 64 * KiB, 0x43), ==, 0);
    g_assert_cmpint(fvd_table_get(s, 17), ==, 2);
    g_assert_cmpint(s->t.pending->len, ==, 1);

    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F"), ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "journal_write", "J"), ==, 0);
    CoCall fl = { bs, do_flush };
    start_call(&fl);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F") &&
                   !bdrv_debug_is_suspended(bs, "J"));
    g_assert(bdrv_debug_is_suspended(bs, "F"));
    uint64_t sectors = s->stats.journal_sectors;
    poll_a_while();
    g_assert(!bdrv_debug_is_suspended(bs, "J"));
    g_assert_cmpint(s->stats.journal_sectors, ==, sectors);
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "F"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "J"));
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "J"), ==, 0);
    AIO_WAIT_WHILE(!fl.done);
    g_assert_cmpint(fl.ret, ==, 0);
    g_assert_cmpint(s->t.pending->len, ==, 0);

    /* The table page waits for the flush that covers its record. */
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F2"), ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "table_update", "W"), ==, 0);
    CoCall cp = { bs, do_checkpoint };
    start_call(&cp);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F2") &&
                   !bdrv_debug_is_suspended(bs, "W"));
    g_assert(bdrv_debug_is_suspended(bs, "F2"));
    poll_a_while();
    g_assert(!bdrv_debug_is_suspended(bs, "W"));
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "F2"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "W"));
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "W"), ==, 0);
    AIO_WAIT_WHILE(!cp.done);
    g_assert_cmpint(cp.ret, ==, 0);
    g_assert_cmpint(s->j.tail, ==, s->j.written_seq);

    /* A fresh chunk: the record is written before any flush. */
    g_assert_cmpint(do_write_at(bs, 2 * MiB, 0x44), ==, 0);         /* 3 */
    g_assert_cmpint(bdrv_flush(bs), ==, 0);
    g_assert_cmpint(do_write_at(bs, 3 * MiB, 0x45), ==, 0);         /* 4 */
    g_assert_cmpint(fvd_table_get(s, 48), ==, 4);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F3"), ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "journal_write", "J3"), ==, 0);
    CoCall fl3 = { bs, do_flush };
    start_call(&fl3);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F3") &&
                   !bdrv_debug_is_suspended(bs, "J3"));
    g_assert(bdrv_debug_is_suspended(bs, "J3"));
    g_assert(!bdrv_debug_is_suspended(bs, "F3"));
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "J3"), ==, 0);
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "F3"), ==, 0);
    AIO_WAIT_WHILE(!fl3.done);
    g_assert_cmpint(fl3.ret, ==, 0);
    bdrv_unref(bs);

    /* Everything is home: the entries, the data. */
    bs = bdrv_open(top, "fvd", NULL, 0, NULL);
    s = bs->opaque;
    g_assert_cmpint(fvd_table_get(s, 80), ==, 0);
    g_assert_cmpint(fvd_table_get(s, 16), ==, 1);
    g_assert_cmpint(fvd_table_get(s, 17), ==, 2);
    g_assert_cmpint(fvd_table_get(s, 32), ==, 3);
    g_assert_cmpint(fvd_table_get(s, 48), ==, 4);
    uint8_t out[4096];
    g_assert_cmpint(bdrv_pread(bs, 1 * MiB + 64 * KiB, 4096, out, 0), ==, 0);
    g_assert_cmpint(out[0], ==, 0x43);
    g_assert_cmpint(out[4095], ==, 0x43);
    g_assert_cmpint(bdrv_pread(bs, 3 * MiB, 4096, out, 0), ==, 0);
    g_assert_cmpint(out[0], ==, 0x45);
    bdrv_unref(bs);
    unlink(top);
    g_free(name);
    g_free(top);
}

/*
 * Many writers at once into one unmapped chunk and into as many other
 * chunks: each chunk is mapped once, to its own physical chunk, chunks are
 * handed out from 0 without a gap, and every writer's bytes are there.
 */
static void test_table_concurrent_alloc(void)
{
    enum { N = 16 };
    char *top = path_of("talloc.fvd");
    create("fvd", top, "size=64M,compact_image=on,chunk_size=64k,"
           "storage_grow_unit=64k");
    BlockDriverState *bs = open_fvd(top, NULL);
    BDRVFvdState *s = bs->opaque;
    Writer w[2 * N];
    int done = 0;

    for (int i = 0; i < N; i++) {
        w[i] = (Writer) { bs, 4096 * i, 4096, (uint8_t)(i + 1), 0, &done };
        w[N + i] = (Writer) { bs, (int64_t)(i + 1) * 256 * KiB + 512, 1000,
                              (uint8_t)(0x80 + i), 0, &done };
    }
    for (int i = 0; i < 2 * N; i++) {
        start_writer(&w[i]);
    }
    AIO_WAIT_WHILE(done < 2 * N);
    for (int i = 0; i < 2 * N; i++) {
        g_assert_cmpint(w[i].ret, ==, 0);
    }
    g_assert_cmpint(s->stats.chunks_allocated, ==, N + 1);
    g_assert_cmpint(s->t.used, ==, N + 1);
    bool seen[N + 1] = { false };
    for (uint64_t v = 0; v < s->t.nchunks; v++) {
        int64_t p = fvd_table_get(s, v);
        if (p >= 0) {
            g_assert_cmpint(p, <=, N);
            g_assert(!seen[p]);
            seen[p] = true;
        }
    }
    bdrv_unref(bs);
    bs = bdrv_open(top, "fvd", NULL, 0, NULL);
    uint8_t out[4096];
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(bdrv_pread(bs, 4096 * i, 4096, out, 0), ==, 0);
        g_assert_cmpint(out[0], ==, i + 1);
        g_assert_cmpint(out[4095], ==, i + 1);
        g_assert_cmpint(bdrv_pread(bs, (int64_t)(i + 1) * 256 * KiB, 4096,
                                   out, 0), ==, 0);
        g_assert_cmpint(out[511], ==, 0);
        g_assert_cmpint(out[512], ==, 0x80 + i);
        g_assert_cmpint(out[1511], ==, 0x80 + i);
        g_assert_cmpint(out[1512], ==, 0);
    }
    bdrv_unref(bs);
    unlink(top);
    g_free(top);
}

typedef struct RunCall {
    BDRVFvdState *s;
    uint64_t start, end;
    bool in_image;
    uint64_t len;
    int ret;
} RunCall;

static void coroutine_fn set_bits_entry(void *opaque)
{
    RunCall *r = opaque;
    r->ret = fvd_bitmap_set_cached(r->s, r->start, r->end, NULL, 0);
    if (r->ret >= 0) {
        r->ret = fvd_block_run(r->s, r->start, r->end, &r->in_image,
                               &r->len);
    }
}

/*
 * A bit set where the chunk is not mapped (a copy-on-read page that went
 * home before the mapping's record, then a crash) means "in the base":
 * the block reads base data, never the zeroes of an unmapped chunk.
 */
static void test_table_bit_without_mapping(void)
{
    char *base = make_base("tbase.raw", 1 * MiB, 1 * MiB);
    char *top = path_of("tbit.fvd");
    char *opts = g_strdup_printf("backing_file=%s,backing_fmt=raw,"
                                 "compact_image=on,chunk_size=64k", base);
    create("fvd", top, opts);
    g_free(opts);
    BlockDriverState *bs = open_fvd(top, NULL);
    BDRVFvdState *s = bs->opaque;
    RunCall r = { s, 32, 48 };  /* blocks of 4 KiB in chunk 2 */

    bdrv_run_co(set_bits_entry, &r);
    g_assert_cmpint(r.ret, ==, 0);
    g_assert(!r.in_image);
    g_assert_cmpint(r.len, ==, 16);
    uint8_t out[4096];
    g_assert_cmpint(bdrv_pread(bs, 128 * KiB, 4096, out, 0), ==, 0);
    g_assert_cmpint(out[0], ==, 0xee);
    /* A write there allocates the chunk, copies the block's base bytes
     * around the guest's, and the block is then in the image. */
    g_assert_cmpint(bdrv_pwrite(bs, 128 * KiB + 100, 10, out + 100, 0), ==, 0);
    g_assert_cmpint(fvd_table_get(s, 2), ==, 0);
    memset(out, 0, sizeof(out));
    g_assert_cmpint(bdrv_pread(bs, 128 * KiB, 4096, out, 0), ==, 0);
    g_assert_cmpint(out[0], ==, 0xee);
    g_assert_cmpint(out[4095], ==, 0xee);
    bdrv_unref(bs);
    unlink(top);
    unlink(base);
    g_free(base);
    g_free(top);
}

/* A base of 1 MiB of 0xee and an FVD image over it, opened with prefetch. */
static BlockDriverState *open_prefetch(const char *name, const char *opts,
                                       char **base, char **top)
{
    *base = make_base("pbase.raw", 1 * MiB, 1 * MiB);
    *top = path_of(name);
    char *c = g_strdup_printf("backing_file=%s,backing_fmt=raw", *base);
    create("fvd", *top, c);
    g_free(c);
    char *dbg = g_strdup_printf("blkdebug::%s", *top);
    BlockDriverState *bs = open_fvd(dbg, opts);
    g_free(dbg);
    return bs;
}

/* Guest bytes [off, off + len) are pat, everything else the base's. */
static void check_prefetched(BlockDriverState *bs, int64_t off, int64_t len,
                             uint8_t pat)
{
    BDRVFvdState *s = bs->opaque;
    uint8_t *out = g_malloc(1 * MiB);
    g_assert_cmpint(s->pf.ret, ==, 0);
    g_assert(!strcmp(fvd_prefetch_state(s), "done"));
    g_assert_cmpint(bdrv_pread(bs, 0, 1 * MiB, out, 0), ==, 0);
    for (int64_t x = 0; x < 1 * MiB; x++) {
        uint8_t want = x >= off && x < off + len ? pat : 0xee;
        if (out[x] != want) {
            fprintf(stderr, "byte %" PRId64 ": %#x, want %#x\n", x, out[x],
                    want);
            abort();
        }
    }
    g_free(out);
}

/*
 * Prefetch never overwrites a guest write that raced it. (a) The prefetch
 * holds blocks 0-15 (base read, its write held at a breakpoint); a guest
 * write into block 1 waits for it and lands on top. (b) A guest write holds
 * block 1 (its write held); the prefetch waits for it and then skips the
 * block. Both interleavings are forced and checked (alloc_waits).
 */
static void test_prefetch_race(void)
{
    char *base, *top;
    BlockDriverState *bs = open_prefetch("pf1.fvd", "prefetch=on,"
                                         "prefetch-bytes=64k,"
                                         "prefetch-max-inflight=1,"
                                         "prefetch-throttle-time=0",
                                         &base, &top);
    BDRVFvdState *s = bs->opaque;
    int done = 0;

    g_assert_cmpint(bdrv_debug_breakpoint(bs, "prefetch_write", "P"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "P"));
    uint64_t waits = s->stats.alloc_waits;
    Writer w = { bs, 4096 + 100, 100, 0x42, 0, &done };
    start_writer(&w);
    AIO_WAIT_WHILE(s->stats.alloc_waits == waits && !done);
    g_assert_cmpint(done, ==, 0);       /* it waits for the prefetch */
    /* Removing the breakpoint resumes the prefetch write (and lets later
     * ones through). */
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "P"), ==, 0);
    AIO_WAIT_WHILE(!done || !s->pf.run_done);
    g_assert_cmpint(w.ret, ==, 0);
    check_prefetched(bs, 4096 + 100, 100, 0x42);
    g_assert_cmpint(s->stats.prefetch_blocks, ==, 256);
    bdrv_unref(bs);
    unlink(top);
    g_free(top);
    unlink(base);
    g_free(base);

    bs = open_prefetch("pf2.fvd", "prefetch=on,prefetch-bytes=64k,"
                       "prefetch-max-inflight=1,prefetch-throttle-time=0",
                       &base, &top);
    s = bs->opaque;
    done = 0;
    job_pause(s->pf.job);       /* until the guest write holds block 1 */
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "cow_write", "G"), ==, 0);
    w = (Writer) { bs, 4096 + 200, 100, 0x43, 0, &done };
    start_writer(&w);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "G"));
    waits = s->stats.alloc_waits;
    job_resume(s->pf.job);
    AIO_WAIT_WHILE(s->stats.alloc_waits == waits);
    g_assert(!s->pf.run_done);          /* the prefetch waits for it */
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "G"), ==, 0);
    AIO_WAIT_WHILE(!done || !s->pf.run_done);
    g_assert_cmpint(w.ret, ==, 0);
    check_prefetched(bs, 4096 + 200, 100, 0x43);
    /* Block 1 was the guest's: the prefetch copied the other 255. */
    g_assert_cmpint(s->stats.prefetch_blocks, ==, 255);
    bdrv_unref(bs);
    unlink(top);
    g_free(top);
    unlink(base);
    g_free(base);
}

/*
 * In a drained section the prefetch starts no I/O (a drain user: paused,
 * and the drain waits for its copy in flight); it goes on afterwards.
 */
static void test_prefetch_drain(void)
{
    char *base, *top;
    BlockDriverState *bs = open_prefetch("pf3.fvd", "prefetch=on,"
                                         "prefetch-bytes=4k,"
                                         "prefetch-throttle-time=0",
                                         &base, &top);
    BDRVFvdState *s = bs->opaque;

    AIO_WAIT_WHILE(s->stats.prefetch_blocks == 0);
    bdrv_drained_begin(bs);
    g_assert_cmpint(s->pf.inflight, ==, 0);
    uint64_t blocks = s->stats.prefetch_blocks;
    poll_a_while();
    g_assert_cmpint(s->stats.prefetch_blocks, ==, blocks);
    g_assert(!s->pf.run_done);
    g_assert_cmpint(blocks, <, 256);
    bdrv_drained_end(bs);
    AIO_WAIT_WHILE(!s->pf.run_done);
    g_assert_cmpint(s->stats.prefetch_blocks, ==, 256);
    check_prefetched(bs, 0, 0, 0);
    bdrv_unref(bs);

    /* Reopened, it finds nothing left to copy. */
    bs = open_fvd(top, "prefetch=on");
    s = bs->opaque;
    AIO_WAIT_WHILE(!s->pf.run_done);
    g_assert_cmpint(s->stats.prefetch_blocks, ==, 0);
    check_prefetched(bs, 0, 0, 0);
    bdrv_unref(bs);
    unlink(top);
    g_free(top);
    unlink(base);
    g_free(base);
}

/*
 * While the guest does I/O, prefetch copies at most prefetch-busy-duty %
 * of the time: a guest read during a copy (held at a breakpoint) makes the
 * worker rest afterwards; with 100 it never rests.
 */
static void test_prefetch_busy(void)
{
    for (int duty = 50; duty <= 100; duty += 50) {
        char *base, *top;
        char *o = g_strdup_printf("prefetch=on,prefetch-bytes=64k,"
                                  "prefetch-max-inflight=1,"
                                  "prefetch-throttle-time=0,"
                                  "prefetch-busy-duty=%d", duty);
        BlockDriverState *bs = open_prefetch("pb.fvd", o, &base, &top);
        BDRVFvdState *s = bs->opaque;
        uint8_t buf[4096];

        g_free(o);
        g_assert_cmpint(bdrv_debug_breakpoint(bs, "prefetch_write", "P"), ==,
                        0);
        AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "P"));
        g_assert_cmpint(bdrv_pread(bs, 512 * KiB, 4096, buf, 0), ==, 0);
        g_assert_cmpint(buf[0], ==, 0xee);
        g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "P"), ==, 0);
        AIO_WAIT_WHILE(!s->pf.run_done);
        g_assert_cmpint(s->stats.prefetch_rests, ==, duty < 100 ? 1 : 0);
        check_prefetched(bs, 0, 0, 0);
        bdrv_unref(bs);
        unlink(top);
        g_free(top);
        unlink(base);
        g_free(base);
    }
}

/* The prefetch profile recorded so far, as "start+len ..." in blocks. */
static char *recorded(BDRVFvdState *s)
{
    GString *g = g_string_new("");
    for (guint i = 0; i < s->prof_rec.ranges->len; i++) {
        FvdProfRange *r = &g_array_index(s->prof_rec.ranges, FvdProfRange, i);
        g_string_append_printf(g, "%s%" PRIu64 "+%" PRIu64, i ? " " : "",
                               r->start, r->len);
    }
    return g_string_free(g, false);
}

/*
 * Profiles: the guest's first reads of base blocks are noted in order
 * (once each, adjacent blocks merged, with or without copy-on-read); the
 * profile serves an image of another block size over the same base (its
 * byte ranges become that image's blocks) and the prefetch then copies
 * everything.
 */
static void test_profile_record_use(void)
{
    char *base = make_base("prbase.raw", 1 * MiB, 1 * MiB);
    char *top = path_of("pr1.fvd"), *top2 = path_of("pr2.fvd");
    char *prof = path_of("pr.prof");
    char *c = g_strdup_printf("backing_file=%s,backing_fmt=raw", base);
    create("fvd", top, c);
    g_free(c);
    c = g_strdup_printf("backing_file=%s,backing_fmt=raw,block_size=65536",
                        base);
    create("fvd", top2, c);
    g_free(c);

    c = g_strdup_printf("copy_on_read=on,prefetch-profile-record=%s", prof);
    BlockDriverState *bs = open_fvd(top, c);
    g_free(c);
    BDRVFvdState *s = bs->opaque;
    uint8_t buf[8192];
    g_assert_cmpint(bdrv_pread(bs, 512 * KiB + 100, 10, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 0, 8192, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 512 * KiB, 4096, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 516 * KiB, 4096, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 8192, 4096, buf, 0), ==, 0);
    char *r = recorded(s);
    g_assert_cmpstr(r, ==, "128+1 0+2 129+1 2+1");
    g_free(r);
    bdrv_unref(bs);             /* writes the profile */

    c = g_strdup_printf("blkdebug::%s", top2);
    char *o = g_strdup_printf("prefetch=on,prefetch-bytes=64k,"
                              "prefetch-max-inflight=1,"
                              "prefetch-throttle-time=0,"
                              "prefetch-profile=%s", prof);
    bs = open_fvd(c, o);
    g_free(c);
    g_free(o);
    s = bs->opaque;
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "prefetch_write", "P"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "P"));
    /* 512 KiB .. 516 KiB + 4 KiB lie in 64 KiB block 8, the rest in 0;
     * the first copy is block 8. */
    g_assert_cmpint(s->pf.order_count, ==, 4);
    g_assert_cmpint(s->pf.profile_blocks, ==, 4);
    g_assert_cmpint(s->pf.order[0].start, ==, 8);
    g_assert_cmpint(s->pf.order_idx, ==, 0);
    g_assert_cmpint(s->pf.order_pos, ==, 9);
    g_assert_cmpint(s->pf.cursor, ==, 0);
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "P"), ==, 0);
    AIO_WAIT_WHILE(!s->pf.run_done);
    g_assert_cmpint(s->stats.prefetch_blocks, ==, 16);
    check_prefetched(bs, 0, 0, 0);
    bdrv_unref(bs);

    /* Reopened, the profile's blocks and the rest are skipped. */
    o = g_strdup_printf("prefetch=on,prefetch-profile=%s", prof);
    bs = open_fvd(top2, o);
    g_free(o);
    s = bs->opaque;
    AIO_WAIT_WHILE(!s->pf.run_done);
    g_assert_cmpint(s->pf.profile_blocks, ==, 4);
    g_assert_cmpint(s->stats.prefetch_blocks, ==, 0);
    check_prefetched(bs, 0, 0, 0);
    bdrv_unref(bs);
    unlink(top);
    unlink(top2);
    unlink(prof);
    unlink(base);
    g_free(top);
    g_free(top2);
    g_free(prof);
    g_free(base);
}

/*
 * A recording keeps at most FVD_PROF_MAX_RANGES ranges; a profile of that
 * many loads, one range more (a bigger file) is refused with one line.
 */
static void test_profile_limit(void)
{
    char *base = make_base("plbase.raw", 1 * GiB, 0);
    char *top = path_of("pl.fvd"), *prof = path_of("pl.prof");
    char *c = g_strdup_printf("backing_file=%s,backing_fmt=raw", base);
    create("fvd", top, c);
    g_free(c);
    c = g_strdup_printf("prefetch-profile-record=%s", prof);
    BlockDriverState *bs = open_fvd(top, c);
    g_free(c);
    BDRVFvdState *s = bs->opaque;
    g_assert_cmpint(s->nb_blocks, ==, 262144);
    for (uint64_t i = 0; i < 70000; i++) {
        fvd_profile_note(s, 2 * i, 1);
    }
    fvd_profile_note(s, 2 * 65535 + 1, 1);      /* extends the last one */
    g_assert_cmpint(s->prof_rec.ranges->len, ==, FVD_PROF_MAX_RANGES);
    g_assert(s->prof_rec.full);
    bdrv_unref(bs);
    struct stat st;
    g_assert_cmpint(stat(prof, &st), ==, 0);
    g_assert_cmpint(st.st_size, ==, 56 + 16 * FVD_PROF_MAX_RANGES + 4);

    c = g_strdup_printf("prefetch-profile=%s", prof);
    bs = open_fvd(top, c);
    s = bs->opaque;
    g_assert_cmpint(s->prof.count, ==, FVD_PROF_MAX_RANGES);
    g_assert_cmpint(s->prof.ranges[65535].len, ==, 2 * 4096);
    bdrv_unref(bs);

    g_assert_cmpint(truncate(prof, st.st_size + 16), ==, 0);
    QemuOpts *o = qemu_opts_new();
    Error *err = NULL;
    g_assert_cmpint(qemu_opts_parse(o, c, NULL, &err), ==, 0);
    g_assert(!bdrv_open(top, "fvd", o, BDRV_O_RDWR, &err));
    g_assert(strstr(error_get_pretty(err), "bad size"));
    error_free(err);
    qemu_opts_del(o);
    g_free(c);
    unlink(top);
    unlink(prof);
    unlink(base);
    g_free(top);
    g_free(prof);
    g_free(base);
}

/* The FVD file's fixed header and bitmap, read beside the open image. */
static void read_file(const char *path, int64_t off, int64_t len, void *buf)
{
    BlockDriverState *f = bdrv_open(path, "raw", NULL, BDRV_O_FORCE_SHARE,
                                    NULL);
    g_assert(f);
    g_assert_cmpint(bdrv_pread(f, off, len, buf, 0), ==, 0);
    bdrv_unref(f);
}

/*
 * COMPLETE (spec section 10) is written only after every prefetch bit is
 * home: at the job's header write, the bitmap on disk is already full.
 * With prefetch-drop-base=on the base name goes in a later header write,
 * the coverage stays, and guest I/O goes on (nothing reads the base).
 */
static void test_prefetch_complete(void)
{
    char *base, *top;
    BlockDriverState *bs = open_prefetch("pf4.fvd", "prefetch=on,"
                                         "prefetch-bytes=64k,"
                                         "prefetch-throttle-time=0,"
                                         "prefetch-drop-base=on",
                                         &base, &top);
    BDRVFvdState *s = bs->opaque;
    uint8_t hdr[192], bits[32];

    g_assert_cmpint(bdrv_debug_breakpoint(bs, "header_write", "H"), ==, 0);
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "H"));
    /* The first header write of the session is the job's COMPLETE. */
    g_assert(s->header.compatible_features & FVD_COMPAT_COMPLETE);
    read_file(top, s->header.bitmap_offset, sizeof(bits), bits);
    for (unsigned i = 0; i < sizeof(bits); i++) {
        g_assert_cmpint(bits[i], ==, 0xff);     /* 256 blocks, all home */
    }
    read_file(top, 0, sizeof(hdr), hdr);
    g_assert_cmpint(hdr[24] & 2, ==, 0);        /* not yet on disk */
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "H"), ==, 0);
    AIO_WAIT_WHILE(!s->pf.run_done);
    g_assert_cmpint(s->pf.ret, ==, 0);
    read_file(top, 0, sizeof(hdr), hdr);
    g_assert_cmpint(hdr[24] & 2, ==, 2);
    uint32_t base_len;
    uint64_t coverage;
    memcpy(&base_len, hdr + 140, 4);
    memcpy(&coverage, hdr + 48, 8);
    g_assert_cmpint(le32_to_cpu(base_len), ==, 0);      /* no base name */
    g_assert_cmpint(le64_to_cpu(coverage), ==, 1 * MiB); /* kept */
    g_assert(!s->names[FVD_NAME_BASE] && !bs->backing_file[0]);
    g_assert_cmpint(s->nb_blocks, ==, 256);
    /* The session goes on over the same coverage. */
    int done = 0;
    Writer w = { bs, 8192 + 10, 5000, 0x44, 0, &done };
    start_writer(&w);
    AIO_WAIT_WHILE(!done);
    g_assert_cmpint(w.ret, ==, 0);
    check_prefetched(bs, 8192 + 10, 5000, 0x44);
    bdrv_unref(bs);

    /* Reopened without the base (moved away): the image holds it all. */
    char *away = g_strconcat(base, ".away", NULL);
    g_assert_cmpint(rename(base, away), ==, 0);
    bs = open_fvd(top, NULL);
    g_assert(!bs->backing);
    uint8_t *out = g_malloc(1 * MiB);
    g_assert_cmpint(bdrv_pread(bs, 0, 1 * MiB, out, 0), ==, 0);
    for (int64_t x = 0; x < 1 * MiB; x++) {
        g_assert_cmpint(out[x], ==,
                        x >= 8192 + 10 && x < 8192 + 5010 ? 0x44 : 0xee);
    }
    g_free(out);
    bdrv_unref(bs);
    unlink(away);
    g_free(away);
    unlink(top);
    g_free(top);
    g_free(base);
}

typedef struct Flusher {
    BlockDriverState *bs;
    bool internal;              /* the driver's own, as prefetch's end */
    int ret;
    bool done;
} Flusher;

static void coroutine_fn flusher_entry(void *opaque)
{
    Flusher *f = opaque;
    f->ret = f->internal ? fvd_co_flush(f->bs) : bdrv_co_flush(f->bs);
    f->done = true;
}

/*
 * Two flushes and the copy-on-read bits: the first (the driver's own, as
 * the prefetch job's end does; the layer serialises guest flushes among
 * themselves) takes them and writes their bitmap entry home (held at a
 * breakpoint); a guest flush must not
 * return before that write is done, or a guest write into the copied
 * block that it acknowledges could be lost with its bit (found by
 * crashtest --prefetch).
 */
static void test_flush_waits_soft_bits(void)
{
    char *base = make_base("fbase.raw", 1 * MiB, 1 * MiB);
    char *top = path_of("fl.fvd");
    char *c = g_strdup_printf("backing_file=%s,backing_fmt=raw,"
                              "copy_on_read=on", base);
    create("fvd", top, c);
    g_free(c);
    char *dbg = g_strdup_printf("blkdebug::%s", top);
    BlockDriverState *bs = open_fvd(dbg, NULL);
    BDRVFvdState *s = bs->opaque;
    uint8_t buf[4096];

    g_free(dbg);
    g_assert_cmpint(bdrv_pread(bs, 0, sizeof(buf), buf, 0), ==, 0);
    AIO_WAIT_WHILE(s->cor_inflight);            /* the copy is written */
    g_assert(s->soft_dirty);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "bitmap_update", "B"), ==, 0);
    Flusher a = { bs, true }, b = { bs, false };
    qemu_coroutine_enter(qemu_coroutine_create(flusher_entry, &a));
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "B"));
    qemu_coroutine_enter(qemu_coroutine_create(flusher_entry, &b));
    poll_a_while();
    g_assert(!a.done);
    g_assert(!b.done);          /* it waits for the entry the first writes */
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "B"), ==, 0);
    AIO_WAIT_WHILE(!a.done || !b.done);
    g_assert_cmpint(a.ret, ==, 0);
    g_assert_cmpint(b.ret, ==, 0);
    bdrv_unref(bs);
    unlink(top);
    g_free(top);
    unlink(base);
    g_free(base);
}

int main(int argc, char **argv)
{
    char tmpl[] = "/var/tmp/test-fvd.XXXXXX";
    bdrv_init();
    test_dir = g_mkdtemp(tmpl);
    test_same_block("65536");
    test_same_block("4096");
    test_same_block("512");
    test_write_ahead();
    test_pending_limits();
    test_close_after_failed_flush();
    test_table_write_ahead();
    test_table_concurrent_alloc();
    test_table_bit_without_mapping();
    test_prefetch_race();
    test_prefetch_drain();
    test_prefetch_busy();
    test_profile_record_use();
    test_profile_limit();
    test_prefetch_complete();
    test_flush_waits_soft_bits();
    char *cmd = g_strdup_printf("rm -rf '%s'", test_dir);
    g_assert(system(cmd) == 0);
    g_free(cmd);
    printf("PASS test-fvd\n");
    return 0;
}
