/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of add-cow concurrency: many allocating writes into the same
 * cluster at once (each must keep its data: guest writes win over copied
 * backing data), overlapping allocating and in-place writes, a 1 TiB
 * image whose bitmap stays small in memory, and the cache-size option.
 */
#include "block_int.h"
#include "util/aio.h"

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

typedef struct Writer {
    BlockDriverState *bs;
    int64_t off, len;
    uint8_t pat;
    int *done;
} Writer;

static void coroutine_fn writer_entry(void *opaque)
{
    Writer *w = opaque;
    uint8_t *b = g_malloc(w->len);
    memset(b, w->pat, w->len);
    g_assert_cmpint(bdrv_co_pwrite(w->bs, w->off, w->len, b, 0), ==, 0);
    g_free(b);
    (*w->done)++;
}

static void test_same_cluster(const char *cluster_size)
{
    char *base = path_of("base.raw"), *top = path_of("top.add-cow");
    char *opts = g_strdup_printf("size=1M");
    create("raw", base, opts);
    g_free(opts);
    BlockDriverState *b = bdrv_open(base, "raw", NULL, BDRV_O_RDWR, NULL);
    uint8_t *fill = g_malloc(1 * MiB);
    memset(fill, 0xee, 1 * MiB);
    g_assert_cmpint(bdrv_pwrite(b, 0, 1 * MiB, fill, 0), ==, 0);
    bdrv_unref(b);
    opts = g_strdup_printf("backing_file=%s,backing_fmt=raw,cluster_size=%s",
                           base, cluster_size);
    create("add-cow", top, opts);
    g_free(opts);

    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(top, "add-cow", NULL,
                                     BDRV_O_RDWR | BDRV_O_UNMAP, &err);
    g_assert(bs);
    enum { N = 16 };
    Writer w[N];
    int done = 0;
    /* 16 disjoint 1000-byte writes inside the first 64 KiB, all at once. */
    for (int i = 0; i < N; i++) {
        w[i] = (Writer) { bs, 300 + i * 4000, 1000, (uint8_t)(i + 1), &done };
        qemu_coroutine_enter(qemu_coroutine_create(writer_entry, &w[i]));
    }
    AIO_WAIT_WHILE(done < N);
    uint8_t *out = g_malloc(128 * KiB);
    g_assert_cmpint(bdrv_pread(bs, 0, 128 * KiB, out, 0), ==, 0);
    for (int64_t x = 0; x < 128 * KiB; x++) {
        uint8_t want = 0xee;
        for (int i = 0; i < N; i++) {
            if (x >= w[i].off && x < w[i].off + w[i].len) {
                want = w[i].pat;
            }
        }
        if (out[x] != want) {
            fprintf(stderr, "byte %" PRId64 ": %#x, want %#x\n", x, out[x],
                    want);
            abort();
        }
    }
    /* Survives a reopen (bitmap written at close). */
    bdrv_unref(bs);
    bs = bdrv_open(top, "add-cow", NULL, 0, &err);
    g_assert(bs);
    uint8_t *out2 = g_malloc(128 * KiB);
    g_assert_cmpint(bdrv_pread(bs, 0, 128 * KiB, out2, 0), ==, 0);
    g_assert(!memcmp(out, out2, 128 * KiB));
    bdrv_unref(bs);
    g_free(out);
    g_free(out2);
    g_free(fill);
    g_free(base);
    g_free(top);
}

static void test_huge(void)
{
    char *top = path_of("huge.add-cow");
    create("add-cow", top, "size=1T");
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(top, "add-cow", NULL, BDRV_O_RDWR, &err);
    g_assert(bs);
    g_assert_cmpint(bdrv_getlength(bs), ==, 1 * TiB);
    uint8_t buf[4096];
    memset(buf, 7, sizeof(buf));
    for (int i = 0; i < 16; i++) {
        int64_t off = (int64_t)i * 64 * GiB + 12345;
        g_assert_cmpint(bdrv_pwrite(bs, off, sizeof(buf), buf, 0), ==, 0);
    }
    int64_t pnum;
    int ret = bdrv_block_status(bs, 1 * TiB - 64 * KiB, 64 * KiB, &pnum,
                                NULL, NULL);
    g_assert_cmpint(ret & BDRV_BLOCK_ALLOCATED, ==, 0);
    bdrv_unref(bs);
    bs = bdrv_open(top, "add-cow", NULL, 0, &err);
    g_assert(bs);
    uint8_t out[4096];
    g_assert_cmpint(bdrv_pread(bs, 15 * 64 * GiB + 12345, 4096, out, 0), ==,
                    0);
    g_assert(!memcmp(out, buf, 4096));
    bdrv_unref(bs);
    g_free(top);
}

/* cache-size: one 4 KiB page is enough (every other page is evicted and
 * reloaded), less is refused with a clear message. */
static void test_cache_size(void)
{
    char *top = path_of("cache.add-cow");
    QemuOpts *o = qemu_opts_new();
    Error *err = NULL;
    uint8_t buf[4096], out[4096];

    create("add-cow", top, "size=1T");
    qemu_opt_set(o, "cache-size", "100");
    g_assert_null(bdrv_open(top, "add-cow", o, BDRV_O_RDWR, &err));
    g_assert_cmpstr(error_get_pretty(err), ==,
                    "add-cow cache-size must be at least 4096 bytes");
    error_free(err);
    err = NULL;
    qemu_opt_set(o, "cache-size", "4k");
    BlockDriverState *bs = bdrv_open(top, "add-cow", o, BDRV_O_RDWR, &err);
    g_assert(bs);
    /* 16 writes 64 GiB apart: 16 bitmap pages through a 1-page cache. */
    for (int i = 0; i < 16; i++) {
        memset(buf, i + 1, sizeof(buf));
        g_assert_cmpint(bdrv_pwrite(bs, (int64_t)i * 64 * GiB, sizeof(buf),
                                    buf, 0), ==, 0);
    }
    bdrv_unref(bs);
    bs = bdrv_open(top, "add-cow", o, 0, &err);
    g_assert(bs);
    for (int i = 0; i < 16; i++) {
        memset(buf, i + 1, sizeof(buf));
        g_assert_cmpint(bdrv_pread(bs, (int64_t)i * 64 * GiB, sizeof(out),
                                   out, 0), ==, 0);
        g_assert(!memcmp(out, buf, sizeof(out)));
    }
    bdrv_unref(bs);
    qemu_opts_del(o);
    g_free(top);
}

int main(int argc, char **argv)
{
    char tmpl[] = "/var/tmp/test-add-cow.XXXXXX";
    bdrv_init();
    test_dir = g_mkdtemp(tmpl);
    test_same_cluster("65536");
    test_same_cluster("4096");
    test_same_cluster("512");
    test_huge();
    test_cache_size();
    char *cmd = g_strdup_printf("rm -rf '%s'", test_dir);
    g_assert(system(cmd) == 0);
    g_free(cmd);
    printf("PASS test-add-cow\n");
    return 0;
}
