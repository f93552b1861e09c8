/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of the block layer through its public API: create/open of raw
 * images, unaligned I/O with and without O_DIRECT, concurrent overlapping
 * writes (serialisation), zero writes, discard, block status, truncate,
 * blkdebug error injection, read-only enforcement and image locking.
 */
#include "block-backend.h"
#include "block_int.h"
#include "util/aio.h"

static char *test_dir;

static char *make_img(const char *name, int64_t size)
{
    char *path = g_build_filename(test_dir, name, NULL);
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    qemu_opt_set_number(opts, "size", size);
    int ret = bdrv_create(bdrv_find_format("raw"), path, opts, &err);
    if (ret < 0) {
        fprintf(stderr, "create: %s\n", error_get_pretty(err));
        abort();
    }
    qemu_opts_del(opts);
    return path;
}

static BlockDriverState *open_img(const char *path, int flags)
{
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(path, "raw", NULL, flags, &err);
    if (!bs) {
        fprintf(stderr, "open: %s\n", error_get_pretty(err));
        abort();
    }
    return bs;
}

/* A user of bs holding read and write (what bs was opened for). */
static BlockBackend *user_of(BlockDriverState *bs)
{
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    g_assert_cmpint(blk_insert_bs(blk, bs, NULL), ==, 0);
    return blk;
}

static void test_basic_rw(void)
{
    char *path = make_img("basic.img", 1 * MiB);
    BlockDriverState *bs = open_img(path, BDRV_O_RDWR);
    uint8_t buf[8192], out[8192];

    g_assert_cmpint(bdrv_getlength(bs), ==, 1 * MiB);
    memset(buf, 0xaa, sizeof(buf));
    g_assert_cmpint(bdrv_pwrite(bs, 0, sizeof(buf), buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 0, sizeof(out), out, 0), ==, 0);
    g_assert(!memcmp(buf, out, sizeof(buf)));
    /* out of range: the user layer's bounds */
    BlockBackend *blk = user_of(bs);
    g_assert_cmpint(blk_pread(blk, 1 * MiB - 100, 512, out, 0), ==, -EIO);
    g_assert_cmpint(blk_pwrite(blk, 1 * MiB, 1, buf, 0), ==, -EIO);
    g_assert_cmpint(blk_pread(blk, -1, 1, out, 0), ==, -EIO);
    g_assert_cmpint(bdrv_pread(bs, -1, 1, out, 0), ==, -EIO);
    blk_unref(blk);
    g_assert_cmpint(bdrv_flush(bs), ==, 0);
    bdrv_unref(bs);
    g_free(path);
}

/* Unaligned writes over O_DIRECT need read-modify-write. */
static void test_unaligned(int flags)
{
    char *path = make_img("unaligned.img", 1 * MiB);
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(path, "raw", NULL, BDRV_O_RDWR | flags,
                                     &err);
    uint8_t *ref = g_malloc0(1 * MiB), *out = g_malloc0(1 * MiB);

    if (!bs) {
        printf("SKIP unaligned flags=%#x: %s\n", flags,
               error_get_pretty(err));
        error_free(err);
        g_free(path);
        return;
    }
    GRand *r = g_rand_new_with_seed(42);
    for (int i = 0; i < 200; i++) {
        int64_t off = g_rand_int_range(r, 0, 1 * MiB - 10000);
        int64_t len = g_rand_int_range(r, 1, 9000);
        uint8_t pat = g_rand_int_range(r, 1, 256);
        uint8_t *b = g_malloc(len);
        memset(b, pat, len);
        if (i % 7 == 0) {
            g_assert_cmpint(bdrv_pwrite_zeroes(bs, off, len, 0), ==, 0);
            memset(ref + off, 0, len);
        } else {
            g_assert_cmpint(bdrv_pwrite(bs, off, len, b, 0), ==, 0);
            memcpy(ref + off, b, len);
        }
        g_free(b);
        int64_t roff = g_rand_int_range(r, 0, 1 * MiB - 10000);
        int64_t rlen = g_rand_int_range(r, 1, 9000);
        g_assert_cmpint(bdrv_pread(bs, roff, rlen, out, 0), ==, 0);
        g_assert(!memcmp(out, ref + roff, rlen));
    }
    g_assert_cmpint(bdrv_pread(bs, 0, 1 * MiB, out, 0), ==, 0);
    g_assert(!memcmp(out, ref, 1 * MiB));
    g_rand_free(r);
    bdrv_unref(bs);
    g_free(ref);
    g_free(out);
    g_free(path);
}

typedef struct ConcWrite {
    BlockDriverState *bs;
    int64_t off, len;
    uint8_t pat;
    int *done;
} ConcWrite;

static void coroutine_fn conc_write_entry(void *opaque)
{
    ConcWrite *w = opaque;
    uint8_t *b = g_malloc(w->len);
    memset(b, w->pat, w->len);
    g_assert_cmpint(bdrv_co_pwrite(w->bs, w->off, w->len, b, 0), ==, 0);
    g_free(b);
    (*w->done)++;
}

/*
 * Many overlapping unaligned writes in flight at once: afterwards every byte
 * equals the pattern of one writer that covers it (no torn RMW).
 */
static void test_concurrent_overlap(int flags)
{
    char *path = make_img("conc.img", 64 * KiB);
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(path, "raw", NULL, BDRV_O_RDWR | flags,
                                     &err);
    enum { N = 32 };
    ConcWrite w[N];
    int done = 0;

    if (!bs) {
        error_free(err);
        g_free(path);
        return;
    }
    for (int i = 0; i < N; i++) {
        w[i] = (ConcWrite) { bs, 100 + i * 37, 1000 + i * 11, (uint8_t)(i + 1),
                             &done };
        qemu_coroutine_enter(qemu_coroutine_create(conc_write_entry, &w[i]));
    }
    AIO_WAIT_WHILE(done < N);
    uint8_t out[4096];
    g_assert_cmpint(bdrv_pread(bs, 0, sizeof(out), out, 0), ==, 0);
    for (int64_t b = 0; b < (int64_t)sizeof(out); b++) {
        bool ok = out[b] == 0;
        for (int i = 0; i < N && !ok; i++) {
            if (b >= w[i].off && b < w[i].off + w[i].len &&
                out[b] == w[i].pat) {
                ok = true;
            }
        }
        if (out[b] == 0) {
            for (int i = 0; i < N; i++) {
                g_assert(!(b >= w[i].off && b < w[i].off + w[i].len));
            }
        }
        g_assert(ok);
    }
    /* The last writer to start covers [100+31*37, ...) and wins there only
     * if serialised in order; at least its first byte is its pattern. */
    g_assert_cmpint(out[w[N - 1].off + w[N - 1].len - 1], ==, w[N - 1].pat);
    bdrv_unref(bs);
    g_free(path);
}

static void test_status_discard_truncate(void)
{
    char *path = make_img("status.img", 4 * MiB);
    BlockDriverState *bs = open_img(path, BDRV_O_RDWR | BDRV_O_UNMAP);
    uint8_t buf[65536];
    int64_t pnum, map;
    int ret;

    memset(buf, 1, sizeof(buf));
    g_assert_cmpint(bdrv_pwrite(bs, 1 * MiB, sizeof(buf), buf, 0), ==, 0);
    /* A new image has its first 4 KiB allocated (as QEMU's do). */
    ret = bdrv_block_status(bs, 0, 4 * MiB, &pnum, &map, NULL);
    g_assert(ret & BDRV_BLOCK_DATA);
    g_assert_cmpint(pnum, ==, 4096);
    ret = bdrv_block_status(bs, 4096, 4 * MiB, &pnum, &map, NULL);
    g_assert_cmpint(ret, >=, 0);
    g_assert(ret & BDRV_BLOCK_ZERO);
    g_assert(ret & BDRV_BLOCK_ALLOCATED);
    g_assert_cmpint(pnum, ==, 1 * MiB - 4096);
    ret = bdrv_block_status(bs, 1 * MiB, 4 * MiB, &pnum, &map, NULL);
    g_assert(ret & BDRV_BLOCK_DATA);
    g_assert_cmpint(pnum, ==, 65536);
    g_assert_cmpint(map, ==, 1 * MiB);

    g_assert_cmpint(bdrv_pdiscard(bs, 1 * MiB, 65536), ==, 0);
    ret = bdrv_block_status(bs, 1 * MiB, 65536, &pnum, &map, NULL);
    g_assert(ret & BDRV_BLOCK_ZERO);
    g_assert_cmpint(bdrv_pread(bs, 1 * MiB, sizeof(buf), buf, 0), ==, 0);
    g_assert(buffer_is_zero(buf, sizeof(buf)));

    g_assert_cmpint(bdrv_truncate(bs, 8 * MiB, false, PREALLOC_MODE_OFF,
                                  NULL), ==, 0);
    g_assert_cmpint(bdrv_getlength(bs), ==, 8 * MiB);
    g_assert_cmpint(bdrv_pwrite(bs, 8 * MiB - 512, 512, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_truncate(bs, 2 * MiB, true, PREALLOC_MODE_OFF,
                                  NULL), ==, 0);
    g_assert_cmpint(bdrv_getlength(bs), ==, 2 * MiB);
    BlockBackend *blk = user_of(bs);
    g_assert_cmpint(blk_pread(blk, 2 * MiB, 1, buf, 0), ==, -EIO);
    blk_unref(blk);
    bdrv_unref(bs);
    g_free(path);
}

static void test_blkdebug(void)
{
    char *path = make_img("dbg.img", 1 * MiB);
    char *rules = g_build_filename(test_dir, "rules.cfg", NULL);
    char *name;
    uint8_t buf[512] = { 0 };
    Error *err = NULL;

    g_assert(g_file_set_contents(rules,
             "[inject-error]\nevent = \"write\"\nerrno = \"28\"\n"
             "once = \"on\"\n\n[inject-error]\nevent = \"bitmap_update\"\n"
             "errno = \"5\"\n\n[inject-error]\nevent = \"journal_write\"\n"
             "errno = \"28\"\nonly-next = \"on\"\n", -1, NULL));
    name = g_strdup_printf("blkdebug:%s:%s", rules, path);
    BlockDriverState *bs = bdrv_open(name, "raw", NULL, BDRV_O_RDWR, &err);
    g_assert(bs);
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, -ENOSPC);
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 0, 512, buf, 0), ==, 0);
    /* A format event arms its rule: every later request fails (QEMU's)... */
    bdrv_debug_event(bs, "bitmap_update");
    g_assert_cmpint(bdrv_pread(bs, 0, 512, buf, 0), ==, -EIO);
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, -EIO);
    /* ...until an event with rules of its own replaces it; only-next=on
     * (ours) fails the next request only. */
    bdrv_debug_event(bs, "journal_write");
    g_assert_cmpint(bdrv_pread(bs, 0, 512, buf, 0), ==, -ENOSPC);
    g_assert_cmpint(bdrv_pread(bs, 0, 512, buf, 0), ==, 0);
    bdrv_debug_event(bs, "journal_write");
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, -ENOSPC);
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, 0);
    bdrv_unref(bs);

    /* Inline rule with an offset restriction. */
    QemuOpts *o = qemu_opts_new();
    qemu_opts_parse(o, "file.event=read,file.offset=4096,file.errno=5",
                    NULL, &err);
    g_assert(!err);
    bs = bdrv_open(name, "raw", o, BDRV_O_RDWR, &err);
    g_assert(bs);
    g_assert_cmpint(bdrv_pread(bs, 0, 512, buf, 0), ==, 0);
    g_assert_cmpint(bdrv_pread(bs, 4000, 512, buf, 0), ==, -EIO);
    bdrv_unref(bs);
    qemu_opts_del(o);

    /* Bad rules file: clean error. */
    g_assert(g_file_set_contents(rules, "[bogus]\n", -1, NULL));
    bs = bdrv_open(name, "raw", NULL, BDRV_O_RDWR, &err);
    g_assert(!bs && err);
    error_free(err);
    g_free(name);
    g_free(rules);
    g_free(path);
}

static void test_read_only_and_errors(void)
{
    char *path = make_img("ro.img", 1 * MiB);
    BlockDriverState *bs = open_img(path, 0);
    uint8_t buf[512] = { 0 };
    Error *err = NULL;

    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, -EPERM);
    g_assert_cmpint(bdrv_pread(bs, 0, 512, buf, 0), ==, 0);
    bdrv_unref(bs);

    char *missing = g_build_filename(test_dir, "missing.img", NULL);
    bs = bdrv_open(missing, NULL, NULL, 0, &err);
    g_assert(!bs);
    g_assert(strstr(error_get_pretty(err), "No such file"));
    error_free(err);
    err = NULL;
    bs = bdrv_open(path, "nosuchfmt", NULL, 0, &err);
    g_assert(!bs);
    g_assert_cmpstr(error_get_pretty(err), ==, "Unknown driver 'nosuchfmt'");
    error_free(err);
    err = NULL;
    bs = bdrv_open("nosuchproto:foo", NULL, NULL, 0, &err);
    g_assert(!bs);
    error_free(err);
    err = NULL;
    QemuOpts *o = qemu_opts_new();
    qemu_opt_set(o, "bogus", "1");
    bs = bdrv_open(path, "raw", o, 0, &err);
    g_assert(!bs);
    g_assert_cmpstr(error_get_pretty(err), ==,
                    "Block format 'raw' does not support the option 'bogus'");
    error_free(err);
    qemu_opts_del(o);
    g_free(missing);
    g_free(path);
}

/* Probed raw images refuse writes that would change the probed format;
 * with only raw registered any data is fine, so just check probing works. */
static void test_probe(void)
{
    char *path = make_img("probe.img", 64 * KiB);
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(path, NULL, NULL, 0, &err);
    g_assert(bs);
    g_assert_cmpstr(bdrv_get_format_name(bs), ==, "raw");
    bdrv_unref(bs);
    g_free(path);
}

/* Opening path must fail with msg as the error and the lock hint. */
static void assert_lock_error(Error *err, const char *msg, const char *path)
{
    char *hint = g_strdup_printf("Is another process using the image [%s]?\n",
                                 path);

    g_assert(err);
    g_assert_cmpstr(error_get_pretty(err), ==, msg);
    g_assert_cmpstr(error_get_hint(err), ==, hint);
    g_free(hint);
    error_free(err);
}

/*
 * Locks are per open file: two graphs of one image in this process conflict
 * as two processes would; bdrv_drop_perms/bdrv_restore_perms (reopen) let a
 * second graph in and take the locks back only when it is gone.
 */
static void test_locking(void)
{
    char *path = make_img("lock.img", 64 * KiB);
    QemuOpts *window = qemu_opts_new();
    Error *err = NULL;
    BlockDriverState *a, *b;

    /* A size window: nobody else may resize the file. */
    qemu_opt_set(window, "size", "32768");
    a = bdrv_open(path, "raw", window, BDRV_O_RDWR, &err);
    g_assert(a);
    b = bdrv_open(path, "raw", NULL, BDRV_O_RDWR | BDRV_O_RESIZE, &err);
    g_assert(!b);
    assert_lock_error(err, "Failed to get \"resize\" lock", path);
    err = NULL;

    /* A writer shares writes, but not with a user that forbids them. */
    b = bdrv_open(path, "raw", NULL, BDRV_O_NO_SHARE, &err);
    g_assert(!b);
    assert_lock_error(err, "Failed to get shared \"write\" lock", path);
    err = NULL;
    b = bdrv_open(path, "raw", NULL, BDRV_O_NO_SHARE | BDRV_O_FORCE_SHARE,
                  &err);
    g_assert(b);
    bdrv_unref(b);
    b = bdrv_open(path, "raw", NULL, BDRV_O_RDWR | BDRV_O_FORCE_SHARE, &err);
    g_assert(!b);
    g_assert_cmpstr(error_get_pretty(err), ==,
                    "force-share=on can only be used with read-only images");
    error_free(err);
    err = NULL;

    /* a gives up its locks: b gets in, and a cannot take them back. */
    bdrv_drop_perms(a);
    b = bdrv_open(path, "raw", NULL, BDRV_O_RDWR | BDRV_O_RESIZE, &err);
    g_assert(b);
    g_assert_cmpint(bdrv_restore_perms(a, &err), <, 0);
    assert_lock_error(err, "Failed to get shared \"resize\" lock", path);
    err = NULL;
    bdrv_unref(b);
    g_assert_cmpint(bdrv_restore_perms(a, &err), ==, 0);
    b = bdrv_open(path, "raw", NULL, BDRV_O_RDWR | BDRV_O_RESIZE, &err);
    g_assert(!b);
    error_free(err);
    err = NULL;

    /* locking=off neither takes nor checks locks. */
    qemu_opts_parse(window, "file.locking=off", NULL, &err);
    b = bdrv_open(path, "raw", window, BDRV_O_RDWR | BDRV_O_RESIZE, &err);
    g_assert(b);
    bdrv_unref(b);
    bdrv_unref(a);
    qemu_opts_del(window);
    g_free(path);
}

int main(int argc, char **argv)
{
    char tmpl[] = "/var/tmp/test-block.XXXXXX";

    error_set_progname(argv[0]);
    bdrv_init();
    test_dir = g_mkdtemp(tmpl);
    g_assert(test_dir);

    test_basic_rw();
    test_unaligned(0);
    test_unaligned(BDRV_O_NOCACHE);
#ifdef CONFIG_LINUX_AIO
    test_unaligned(BDRV_O_NOCACHE | BDRV_O_NATIVE_AIO);
#endif
    test_concurrent_overlap(0);
    test_concurrent_overlap(BDRV_O_NOCACHE);
    test_status_discard_truncate();
    test_blkdebug();
    test_read_only_and_errors();
    test_probe();
    test_locking();

    char *cmd = g_strdup_printf("rm -rf '%s'", test_dir);
    g_assert(system(cmd) == 0);
    g_free(cmd);
    printf("PASS test-block\n");
    return 0;
}
