/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of the shared metadata table cache: one load per page under
 * concurrent getters, LRU eviction with write-back, the dependency rule
 * (the dependency node is flushed before a dirty page is written), pages
 * of one allocation, empty pages, discarded pages and the pre-write hook.
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
        uint8_t data[512] = { i };
        /* Each page describes a write to the dependency node. */
        g_assert_cmpint(bdrv_co_pwrite(a->dep, i * 512, 512, data, 0), ==, 0);
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

    table_cache_add_dependency_bs(c, dep);
    qemu_coroutine_enter(qemu_coroutine_create(evict_entry, &a));
    AIO_WAIT_WHILE(!a.done);
    TableCacheStats st;
    table_cache_get_stats(c, &st);
    g_assert_cmpint(st.stores, ==, 8);
    /* Every store batch was preceded by a flush of the dependency. */
    g_assert_cmpint(st.dep_flushes, >=, 1);
    g_assert_cmpint(st.dep_flushes, <=, st.batches);
    g_assert(bdrv_write_gen_is_durable(dep, bdrv_get_write_gen(dep)));
    table_cache_free(c);
    bdrv_unref(bs);
    bdrv_unref(dep);
}

/*
 * A page may reach the disk only after a flush of its dependency has
 * *completed*. Two dirty pages depend on writes to the data node; an
 * eviction writes the first and starts the data flush, which a blkdebug
 * breakpoint holds; meanwhile a cache flush wants the second page (kept
 * pinned so the eviction's batch cannot take it). Nothing may be written
 * to the metadata node until the held flush completes.
 */
typedef struct HeldFlush {
    TableCache *c;
    BlockDriverState *data;
    bool a_done, b_done;
    int a_ret, b_ret;
} HeldFlush;

static void coroutine_fn held_evict_entry(void *opaque)
{
    HeldFlush *h = opaque;
    uint8_t *page;

    h->a_ret = table_cache_get(h->c, 2 * 4096, (void **)&page);
    if (h->a_ret == 0) {
        table_cache_put(h->c, (void **)&page);
    }
    h->a_done = true;
}

static void coroutine_fn held_write_entry(void *opaque)
{
    HeldFlush *h = opaque;

    h->b_ret = table_cache_write(h->c);
    h->b_done = true;
}

typedef struct DirtyArgs {
    TableCache *c;
    BlockDriverState *data;
    uint8_t *pinned;
    bool done;
} DirtyArgs;

static void coroutine_fn dirty_two_entry(void *opaque)
{
    DirtyArgs *a = opaque;
    uint8_t buf[4096], *page;

    memset(buf, 0x11, sizeof(buf));
    for (int i = 0; i < 2; i++) {
        /* The data write completes, then its page is marked dirty. */
        g_assert_cmpint(bdrv_co_pwrite(a->data, i * 4096, 4096, buf, 0), ==,
                        0);
        g_assert_cmpint(table_cache_get(a->c, i * 4096, (void **)&page), ==,
                        0);
        page[0] = 0x80;
        table_cache_mark_dirty(a->c, page);
        if (i == 0) {
            table_cache_put(a->c, (void **)&page);
        } else {
            a->pinned = page;
        }
    }
    a->done = true;
}

static void coroutine_fn unpin_entry(void *opaque)
{
    DirtyArgs *a = opaque;
    table_cache_put(a->c, (void **)&a->pinned);
    a->done = true;
}

static void test_page_waits_for_running_flush(void)
{
    char *meta_path = g_build_filename(test_dir, "held-meta.img", NULL);
    BlockDriverState *f = open_file("held-data.img", 1 * MiB);
    char *data_name = g_strdup_printf("blkdebug::%s/held-data.img", test_dir);
    Error *err = NULL;
    bdrv_unref(f);
    f = open_file("held-meta.img", 1 * MiB);
    bdrv_unref(f);

    char *meta_name = g_strdup_printf("blkdebug::%s", meta_path);
    BlockDriverState *meta = bdrv_open(meta_name, NULL, NULL,
                                       BDRV_O_RDWR | BDRV_O_PROTOCOL, &err);
    BlockDriverState *data = bdrv_open(data_name, NULL, NULL,
                                       BDRV_O_RDWR | BDRV_O_PROTOCOL, &err);
    g_assert(meta && data);
    TableCache *c = table_cache_new(meta, 4096, 2, NULL, NULL);
    table_cache_add_dependency_bs(c, data);

    DirtyArgs d = { c, data, NULL, false };
    qemu_coroutine_enter(qemu_coroutine_create(dirty_two_entry, &d));
    AIO_WAIT_WHILE(!d.done);

    g_assert_cmpint(bdrv_debug_breakpoint(data, "flush", "F"), ==, 0);
    g_assert_cmpint(bdrv_debug_breakpoint(meta, "write", "W"), ==, 0);

    /* A: the eviction of page 0 starts the data flush, which is held. */
    HeldFlush h = { c, data };
    qemu_coroutine_enter(qemu_coroutine_create(held_evict_entry, &h));
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(data, "F") && !h.a_done);
    g_assert(bdrv_debug_is_suspended(data, "F"));

    /* B: a cache flush while the data flush is still running. */
    qemu_coroutine_enter(qemu_coroutine_create(held_write_entry, &h));
    for (int i = 0; i < 100; i++) {
        aio_poll(qemu_get_aio_context(), false);
    }
    g_assert(!bdrv_debug_is_suspended(meta, "W"));
    g_assert(!h.b_done);
    TableCacheStats st;
    table_cache_get_stats(c, &st);
    g_assert_cmpint(st.stores, ==, 0);

    /* Once the flush completes, both pages go home. */
    g_assert_cmpint(bdrv_debug_remove_breakpoint(meta, "W"), ==, 0);
    g_assert_cmpint(bdrv_debug_resume(data, "F"), ==, 0);
    AIO_WAIT_WHILE(!h.a_done || !h.b_done);
    g_assert_cmpint(h.a_ret, ==, 0);
    g_assert_cmpint(h.b_ret, ==, 0);
    table_cache_get_stats(c, &st);
    g_assert_cmpint(st.stores, ==, 2);
    /* One data flush served both pages. */
    g_assert_cmpint(st.dep_flushes, ==, 1);
    g_assert(bdrv_write_gen_is_durable(data, bdrv_get_write_gen(data)));

    d.done = false;
    qemu_coroutine_enter(qemu_coroutine_create(unpin_entry, &d));
    AIO_WAIT_WHILE(!d.done);
    table_cache_free(c);
    bdrv_unref(meta);
    bdrv_unref(data);
    g_free(meta_name);
    g_free(data_name);
    g_free(meta_path);
}

/*
 * Concurrent flushes of one node are merged: callers that arrive while a
 * flush runs share the next one, and a dependency already covered by a
 * completed flush causes none.
 */
typedef struct FlushCall {
    BlockDriverState *bs;
    uint64_t gen;               /* 0: plain bdrv_co_flush */
    bool done;
    int ret;
} FlushCall;

static void coroutine_fn flush_call_entry(void *opaque)
{
    FlushCall *f = opaque;
    f->ret = f->gen ? bdrv_co_flush_gen(f->bs, f->gen) : bdrv_co_flush(f->bs);
    f->done = true;
}

static void test_flush_merging(void)
{
    BlockDriverState *f = open_file("merge.img", 1 * MiB);
    char *path = g_build_filename(test_dir, "merge.img", NULL);
    char *name = g_strdup_printf("blkdebug::%s", path);
    Error *err = NULL;
    uint8_t buf[512] = { 0 };
    bdrv_unref(f);

    BlockDriverState *bs = bdrv_open(name, NULL, NULL,
                                     BDRV_O_RDWR | BDRV_O_PROTOCOL, &err);
    g_assert(bs);
    g_assert_cmpint(bdrv_pwrite(bs, 0, 512, buf, 0), ==, 0);
    uint64_t g1 = bdrv_get_write_gen(bs);
    g_assert(!bdrv_write_gen_is_durable(bs, g1));

    /* First flush held at the breakpoint. */
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F1"), ==, 0);
    FlushCall c[4] = { { bs, 0 }, { bs, 0 }, { bs, 0 }, { bs, g1 } };
    qemu_coroutine_enter(qemu_coroutine_create(flush_call_entry, &c[0]));
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F1"));
    /* Two plain flushes arrive: they need a flush started after them. */
    qemu_coroutine_enter(qemu_coroutine_create(flush_call_entry, &c[1]));
    qemu_coroutine_enter(qemu_coroutine_create(flush_call_entry, &c[2]));
    /* A dependency on g1 is covered by the running flush. */
    qemu_coroutine_enter(qemu_coroutine_create(flush_call_entry, &c[3]));
    g_assert(!c[1].done && !c[2].done && !c[3].done);
    g_assert_cmpint(bdrv_debug_breakpoint(bs, "flush", "F2"), ==, 0);
    g_assert_cmpint(bdrv_debug_resume(bs, "F1"), ==, 0);
    AIO_WAIT_WHILE(!c[0].done || !c[3].done);
    /* c[3] finished with the first flush; c[1], c[2] share the second. */
    AIO_WAIT_WHILE(!bdrv_debug_is_suspended(bs, "F2"));
    g_assert(!c[1].done && !c[2].done);
    g_assert_cmpint(bdrv_debug_remove_breakpoint(bs, "F2"), ==, 0);
    AIO_WAIT_WHILE(!c[1].done || !c[2].done);
    for (int i = 0; i < 4; i++) {
        g_assert_cmpint(c[i].ret, ==, 0);
    }
    /* Exactly two flushes ran. */
    g_assert_cmpint(bs->flush_started, ==, 2);
    /* Already durable: no flush at all. */
    FlushCall again = { bs, g1 };
    qemu_coroutine_enter(qemu_coroutine_create(flush_call_entry, &again));
    g_assert(again.done && again.ret == 0);
    g_assert_cmpint(bs->flush_started, ==, 2);
    bdrv_unref(bs);
    g_free(name);
    g_free(path);
}

/* ---- pages of one allocation, empty pages, discard, pre-write ---- */

typedef struct PagesArgs {
    TableCache *c;
    BlockDriverState *bs;
    int fail_writes;            /* the pre-write hook fails this many */
    int hook_calls;
    uint64_t hook_offset;
    bool done;
} PagesArgs;

static int coroutine_fn pre_write_hook(void *opaque, uint64_t offset,
                                       size_t size)
{
    PagesArgs *a = opaque;

    a->hook_calls++;
    a->hook_offset = offset;
    g_assert_cmpint(size, ==, 512);
    if (a->fail_writes > 0) {
        a->fail_writes--;
        return -EPERM;
    }
    return 0;
}

static void coroutine_fn pages_entry(void *opaque)
{
    PagesArgs *a = opaque;
    uint8_t *page, *other, b[512];

    /* An empty page is zeroed and never read from the file. */
    g_assert_cmpint(table_cache_get_empty(a->c, 512, (void **)&page), ==, 0);
    g_assert(buffer_is_zero(page, 512));
    memset(page, 0x21, 512);
    table_cache_mark_dirty(a->c, page);
    table_cache_put(a->c, (void **)&page);
    TableCacheStats st;
    table_cache_get_stats(a->c, &st);
    g_assert_cmpint(st.loads, ==, 0);
    /* Asking again for it as empty returns the cached content. */
    g_assert_cmpint(table_cache_get_empty(a->c, 512, (void **)&page), ==, 0);
    g_assert_cmpint(page[511], ==, 0x21);
    table_cache_put(a->c, (void **)&page);

    /* A failing pre-write hook fails the write and keeps the page dirty. */
    a->fail_writes = 1;
    g_assert_cmpint(table_cache_write(a->c), ==, -EPERM);
    g_assert_cmpint(a->hook_offset, ==, 512);
    g_assert_cmpint(bdrv_co_pread(a->bs, 512, 512, b, 0), ==, 0);
    g_assert_cmpint(b[0], ==, 0x55);
    g_assert_cmpint(table_cache_flush(a->c), ==, 0);
    g_assert_cmpint(bdrv_co_pread(a->bs, 512, 512, b, 0), ==, 0);
    g_assert_cmpint(b[0], ==, 0x21);

    /* A discarded dirty page is forgotten: never written. */
    g_assert_cmpint(table_cache_get(a->c, 1024, (void **)&page), ==, 0);
    g_assert_cmpint(page[0], ==, 0x55);
    memset(page, 0x33, 512);
    table_cache_mark_dirty(a->c, page);
    table_cache_put(a->c, (void **)&page);
    table_cache_discard(a->c, 1024);
    int calls = a->hook_calls;
    g_assert_cmpint(table_cache_flush(a->c), ==, 0);
    g_assert_cmpint(a->hook_calls, ==, calls);
    g_assert_cmpint(bdrv_co_pread(a->bs, 1024, 512, b, 0), ==, 0);
    g_assert_cmpint(b[0], ==, 0x55);
    g_assert_cmpint(table_cache_get(a->c, 1024, (void **)&page), ==, 0);
    g_assert_cmpint(page[0], ==, 0x55);
    table_cache_put(a->c, (void **)&page);

    /*
     * Every page of the cache pinned at once: distinct, whole buffers, all
     * in one block of 64 * 512 bytes (a cache of small pages costs its
     * size, not a 4 KiB-aligned allocation per page).
     */
    uint8_t *pinned[64], *lo = NULL, *hi = NULL;
    for (int i = 0; i < 64; i++) {
        g_assert_cmpint(table_cache_get(a->c, 4096 + i * 512,
                                        (void **)&pinned[i]), ==, 0);
        memset(pinned[i], i, 512);
        lo = !lo || pinned[i] < lo ? pinned[i] : lo;
        hi = !hi || pinned[i] > hi ? pinned[i] : hi;
    }
    g_assert_cmpint(hi - lo, ==, 63 * 512);
    for (int i = 0; i < 64; i++) {
        for (int k = 0; k < 512; k++) {
            g_assert_cmpint(pinned[i][k], ==, i);
        }
        other = pinned[i];
        table_cache_put(a->c, (void **)&other);
    }
    a->done = true;
}

static void test_pages_empty_discard_pre_write(void)
{
    BlockDriverState *bs = open_file("pages.img", 1 * MiB);
    uint8_t buf[64 * 1024];
    memset(buf, 0x55, sizeof(buf));
    g_assert_cmpint(bdrv_pwrite(bs, 0, sizeof(buf), buf, 0), ==, 0);

    TableCache *c = table_cache_new(bs, 512, 64, NULL, NULL);
    PagesArgs a = { c, bs };
    g_assert_cmpint(table_cache_num_pages(c), ==, 64);
    table_cache_set_pre_write(c, pre_write_hook, &a);
    qemu_coroutine_enter(qemu_coroutine_create(pages_entry, &a));
    AIO_WAIT_WHILE(!a.done);
    table_cache_free(c);
    bdrv_unref(bs);
}

int main(int argc, char **argv)
{
    char tmpl[] = "/var/tmp/test-table-cache.XXXXXX";
    bdrv_init();
    test_dir = g_mkdtemp(tmpl);
    test_single_load();
    test_evict_and_dependency();
    test_page_waits_for_running_flush();
    test_flush_merging();
    test_pages_empty_discard_pre_write();
    char *cmd = g_strdup_printf("rm -rf '%s'", test_dir);
    g_assert(system(cmd) == 0);
    g_free(cmd);
    printf("PASS test-table-cache\n");
    return 0;
}
