/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of the shared metadata table cache: one load per page under
 * concurrent getters, LRU eviction with write-back, and the dependency rule
 * (the dependency node is flushed before a dirty page is written).
 */
#include "block_int.h"
#include "block/table-cache.h"
#include "util/aio.h"

static char *test_dir;

static BlockDriverState *open_file(const char *name, int64_t size)
{
    char *path = g_build_filename(test_dir, name, NULL);
    QemuOpts *o = qemu_opts_new();
    Error *err = NULL;
    qemu_opt_set_number(o, "size", size);
    g_assert_cmpint(bdrv_create_file(path, o, &err), ==, 0);
    qemu_opts_del(o);
    BlockDriverState *bs = bdrv_open(path, NULL, NULL,
                                     BDRV_O_RDWR | BDRV_O_PROTOCOL, &err);
    g_assert(bs);
    g_free(path);
    return bs;
}

typedef struct Getter {
    TableCache *c;
    uint64_t off;
    int *done;
    uint8_t value;
} Getter;

static void coroutine_fn getter_entry(void *opaque)
{
    Getter *g = opaque;
    uint8_t *page;
    g_assert_cmpint(table_cache_get(g->c, g->off, (void **)&page), ==, 0);
    /* Everyone sees the same loaded content. */
    g_assert_cmpint(page[0], ==, g->value);
    qemu_co_sleep_ns(1000);
    table_cache_put(g->c, (void **)&page);
    (*g->done)++;
}

static void test_single_load(void)
{
    BlockDriverState *bs = open_file("single.img", 1 * MiB);
    uint8_t buf[4096];
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(bdrv_pwrite(bs, 8192, sizeof(buf), buf, 0), ==, 0);

    TableCache *c = table_cache_new(bs, 4096, 4, NULL, NULL);
    int done = 0;
    Getter g[16];
    for (int i = 0; i < 16; i++) {
        g[i] = (Getter) { c, 8192, &done, 0x5a };
        qemu_coroutine_enter(qemu_coroutine_create(getter_entry, &g[i]));
    }
    AIO_WAIT_WHILE(done < 16);
    TableCacheStats st;
    table_cache_get_stats(c, &st);
    g_assert_cmpint(st.loads, ==, 1);
    table_cache_free(c);
    bdrv_unref(bs);
}

typedef struct EvictArgs {
    TableCache *c;
    BlockDriverState *bs, *dep;
    bool done;
} EvictArgs;

static void coroutine_fn evict_entry(void *opaque)
{
    EvictArgs *a = opaque;
    uint8_t *page;

    /* Dirty 8 pages through a 2-page cache: evictions write back. */
    for (int i = 0; i < 8; i++) {
        g_assert_cmpint(table_cache_get(a->c, i * 4096, (void **)&page), ==,
                        0);
        memset(page, i + 1, 4096);
        table_cache_mark_dirty(a->c, page);
        table_cache_put(a->c, (void **)&page);
    }
    g_assert_cmpint(table_cache_flush(a->c), ==, 0);
    for (int i = 0; i < 8; i++) {
        uint8_t b[4096];
        g_assert_cmpint(bdrv_co_pread(a->bs, i * 4096, 4096, b, 0), ==, 0);
        g_assert_cmpint(b[0], ==, i + 1);
        g_assert_cmpint(b[4095], ==, i + 1);
        /* And through the cache after eviction. */
        g_assert_cmpint(table_cache_get(a->c, i * 4096, (void **)&page), ==,
                        0);
        g_assert_cmpint(page[100], ==, i + 1);
        table_cache_put(a->c, (void **)&page);
    }
    a->done = true;
}

static void test_evict_and_dependency(void)
{
    BlockDriverState *bs = open_file("evict.img", 1 * MiB);
    BlockDriverState *dep = open_file("dep.img", 1 * MiB);
    TableCache *c = table_cache_new(bs, 4096, 2, NULL, NULL);
    EvictArgs a = { c, bs, dep, false };

    table_cache_set_dependency_bs(c, dep);
    qemu_coroutine_enter(qemu_coroutine_create(evict_entry, &a));
    AIO_WAIT_WHILE(!a.done);
    TableCacheStats st;
    table_cache_get_stats(c, &st);
    g_assert_cmpint(st.stores, ==, 8);
    /* Every store batch was preceded by a flush of the dependency. */
    g_assert_cmpint(st.dep_flushes, >=, 1);
    g_assert_cmpint(st.dep_flushes, <=, st.stores);
    table_cache_free(c);
    bdrv_unref(bs);
    bdrv_unref(dep);
}

int main(int argc, char **argv)
{
    char tmpl[] = "/var/tmp/test-table-cache.XXXXXX";
    bdrv_init();
    test_dir = g_mkdtemp(tmpl);
    test_single_load();
    test_evict_and_dependency();
    char *cmd = g_strdup_printf("rm -rf '%s'", test_dir);
    g_assert(system(cmd) == 0);
    g_free(cmd);
    printf("PASS test-table-cache\n");
    return 0;
}
