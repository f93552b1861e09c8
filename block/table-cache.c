/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The shared metadata table cache: LRU pages of a metadata area with pinning,
 * single loads under concurrency, dirty tracking and dependency ordering.
 * See table-cache.h for the rules it guarantees.
 */
#include "block/table-cache.h"

typedef struct TableEntry {
    int64_t offset;             /* -1: unused */
    void *page;
    int ref;                    /* pins */
    bool dirty;
    bool loading;               /* a load is in flight: wait on waiters */
    bool storing;               /* a write of this page is in flight */
    uint64_t lru;
    CoQueue waiters;
} TableEntry;

struct TableCache {
    BlockDriverState *bs;
    size_t page_size;
    int num;
    TableEntry *entries;
    uint64_t lru_clock;
    CoQueue free_queue;         /* waiting for an evictable entry */
    BlockDriverState *dep_bs;
    TableCache *dep;
    bool dep_due;               /* pages were dirtied since the last dep flush */
    const char *load_event, *store_event;
    TableCacheStats stats;
};

TableCache *table_cache_new(BlockDriverState *bs, size_t page_size,
                            int num_pages, const char *load_event,
                            const char *store_event)
{
    TableCache *c = g_new0(TableCache, 1);

    assert(page_size >= 512 && !(page_size & (page_size - 1)));
    assert(num_pages > 0);
    c->bs = bs;
    c->page_size = page_size;
    c->num = num_pages;
    c->entries = g_new0(TableEntry, num_pages);
    c->load_event = load_event;
    c->store_event = store_event;
    qemu_co_queue_init(&c->free_queue);
    for (int i = 0; i < num_pages; i++) {
        c->entries[i].offset = -1;
        c->entries[i].page = qemu_memalign(MAX(page_size, 4096), page_size);
        qemu_co_queue_init(&c->entries[i].waiters);
    }
    return c;
}

void table_cache_free(TableCache *c)
{
    if (!c) {
        return;
    }
    for (int i = 0; i < c->num; i++) {
        assert(c->entries[i].ref == 0);
        qemu_vfree(c->entries[i].page);
    }
    g_free(c->entries);
    g_free(c);
}

void table_cache_set_dependency_bs(TableCache *c, BlockDriverState *dep_bs)
{
    c->dep_bs = dep_bs;
}

void table_cache_set_dependency(TableCache *c, TableCache *dep)
{
    c->dep = dep;
}

static TableEntry *table_cache_entry_of(TableCache *c, void *page)
{
    for (int i = 0; i < c->num; i++) {
        if (c->entries[i].page == page) {
            return &c->entries[i];
        }
    }
    abort();
}

static TableEntry *table_cache_lookup(TableCache *c, uint64_t offset)
{
    for (int i = 0; i < c->num; i++) {
        if (c->entries[i].offset == (int64_t)offset) {
            return &c->entries[i];
        }
    }
    return NULL;
}

/* Make every dependency durable before dirty pages go to disk. */
static int coroutine_fn table_cache_flush_deps(TableCache *c)
{
    int ret = 0;

    if (c->dep) {
        ret = table_cache_flush(c->dep);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->dep_bs && c->dep_due) {
        c->dep_due = false;
        c->stats.dep_flushes++;
        ret = bdrv_co_flush(c->dep_bs);
        if (ret < 0) {
            c->dep_due = true;
        }
    }
    return ret;
}

int coroutine_fn table_cache_flush_dependency(TableCache *c)
{
    int ret;

    assert(c->dep_bs);
    /* Cleared before the flush: bits set while it runs stay due. */
    c->dep_due = false;
    c->stats.dep_flushes++;
    ret = bdrv_co_flush(c->dep_bs);
    if (ret < 0) {
        c->dep_due = true;
    }
    return ret;
}

/*
 * Write the dirty entries in list (pinned by the caller): copy each, flush
 * the dependencies once, then write the copies. A failed write leaves the
 * entry dirty.
 */
static int coroutine_fn table_cache_store(TableCache *c, TableEntry **list,
                                          int n)
{
    void **copies = g_new0(void *, n);
    int ret = 0;

    for (int i = 0; i < n; i++) {
        copies[i] = qemu_memalign(4096, c->page_size);
        memcpy(copies[i], list[i]->page, c->page_size);
        list[i]->dirty = false;
        list[i]->storing = true;
    }
    ret = table_cache_flush_deps(c);
    for (int i = 0; i < n; i++) {
        if (ret >= 0) {
            if (c->store_event) {
                BLKDBG_EVENT(c->bs, c->store_event);
            }
            ret = bdrv_co_pwrite(c->bs, list[i]->offset, c->page_size,
                                 copies[i], 0);
            c->stats.stores++;
        }
        if (ret < 0) {
            list[i]->dirty = true;
        }
        list[i]->storing = false;
        qemu_vfree(copies[i]);
    }
    g_free(copies);
    return ret;
}

int coroutine_fn table_cache_get(TableCache *c, uint64_t offset, void **page)
{
    TableEntry *e;
    int ret;

    assert(offset % c->page_size == 0);
    for (;;) {
        e = table_cache_lookup(c, offset);
        if (e) {
            if (e->loading) {
                qemu_co_queue_wait(&e->waiters, NULL);
                continue;
            }
            e->ref++;
            e->lru = ++c->lru_clock;
            c->stats.hits++;
            *page = e->page;
            return 0;
        }
        /* Miss: find the least recently used evictable entry. */
        TableEntry *victim = NULL;
        for (int i = 0; i < c->num; i++) {
            TableEntry *x = &c->entries[i];
            if (x->ref == 0 && !x->loading && !x->storing &&
                (!victim || x->lru < victim->lru)) {
                victim = x;
            }
        }
        if (!victim) {
            qemu_co_queue_wait(&c->free_queue, NULL);
            continue;
        }
        if (victim->dirty) {
            victim->ref++;
            ret = table_cache_store(c, &victim, 1);
            victim->ref--;
            if (victim->ref == 0) {
                qemu_co_queue_restart_all(&c->free_queue);
            }
            if (ret < 0) {
                return ret;
            }
            continue;       /* the world may have changed while we yielded */
        }
        c->stats.misses++;
        victim->offset = offset;
        victim->loading = true;
        victim->ref = 1;
        victim->lru = ++c->lru_clock;
        if (c->load_event) {
            BLKDBG_EVENT(c->bs, c->load_event);
        }
        ret = bdrv_co_pread(c->bs, offset, c->page_size, victim->page, 0);
        c->stats.loads++;
        victim->loading = false;
        qemu_co_queue_restart_all(&victim->waiters);
        if (ret < 0) {
            victim->offset = -1;
            victim->ref = 0;
            victim->lru = 0;
            qemu_co_queue_restart_all(&c->free_queue);
            return ret;
        }
        *page = victim->page;
        return 0;
    }
}

void table_cache_put(TableCache *c, void **page)
{
    TableEntry *e = table_cache_entry_of(c, *page);

    assert(e->ref > 0);
    if (--e->ref == 0) {
        qemu_co_queue_restart_all(&c->free_queue);
    }
    *page = NULL;
}

void table_cache_mark_dirty(TableCache *c, void *page)
{
    TableEntry *e = table_cache_entry_of(c, page);

    assert(e->ref > 0);
    e->dirty = true;
    c->dep_due = true;
}

int coroutine_fn table_cache_write(TableCache *c)
{
    TableEntry **list = g_new(TableEntry *, c->num);
    int n = 0, ret;

    for (int i = 0; i < c->num; i++) {
        if (c->entries[i].dirty && !c->entries[i].storing) {
            list[n] = &c->entries[i];
            list[n]->ref++;
            n++;
        }
    }
    ret = n ? table_cache_store(c, list, n) : table_cache_flush_deps(c);
    for (int i = 0; i < n; i++) {
        list[i]->ref--;
    }
    if (n) {
        qemu_co_queue_restart_all(&c->free_queue);
    }
    g_free(list);
    /* A page being stored by an evicting coroutine: wait for it. */
    for (int i = 0; i < c->num && ret >= 0; i++) {
        while (c->entries[i].storing) {
            qemu_co_sleep_ns(10 * 1000);
        }
        if (c->entries[i].dirty) {
            return table_cache_write(c);
        }
    }
    return ret;
}

int coroutine_fn table_cache_flush(TableCache *c)
{
    int ret = table_cache_write(c);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_flush(c->bs);
}

void table_cache_invalidate(TableCache *c)
{
    for (int i = 0; i < c->num; i++) {
        TableEntry *e = &c->entries[i];
        if (e->ref == 0 && !e->dirty && !e->loading && !e->storing) {
            e->offset = -1;
            e->lru = 0;
        }
    }
}

void table_cache_get_stats(TableCache *c, TableCacheStats *stats)
{
    *stats = c->stats;
}
