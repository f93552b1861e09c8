/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The shared metadata table cache: LRU pages of a metadata area with pinning,
 * single loads under concurrency, dirty tracking and write ordering by flush
 * generations. See table-cache.h for the rules it guarantees.
 */
#include "block/table-cache.h"

/* Dirty pages written together when an eviction has to write one. */
#define EVICT_BATCH 8
/* How far from the cold end an eviction looks for more dirty pages. */
#define EVICT_SCAN  32

typedef struct TableEntry {
    int64_t offset;             /* -1: unused */
    void *page;
    int ref;                    /* pins */
    bool dirty;
    bool loading;               /* a load is in flight: wait on waiters */
    bool storing;               /* a write is in flight: wait on waiters */
    int store_ret;              /* result of the last write */
    uint64_t store_seq;         /* c->store_seq when that write started */
    /* Per dependency node: the generation this page's content needs. */
    uint64_t dep_gen[TABLE_CACHE_MAX_DEPS];
    GList lru_link;             /* in c->lru, cold end first */
    CoQueue waiters;            /* load or write completion */
} TableEntry;

struct TableCache {
    BlockDriverState *bs;
    size_t page_size;
    int num;
    TableEntry *entries;
    void *pages;                /* every page, in one aligned block */
    GHashTable *by_offset;      /* &entry->offset -> entry */
    unsigned page_shift;        /* log2(page_size): page -> entry index */
    TableEntry *last;           /* the last entry table_cache_get found */
    GQueue lru;                 /* every entry; head = least recently used */
    CoQueue free_queue;         /* waiting for an evictable entry */
    uint64_t store_seq;         /* writes started so far */
    uint64_t written_gen;       /* write gen of bs after our last write */
    BlockDriverState *dep_bs[TABLE_CACHE_MAX_DEPS];
    int num_deps;
    TableCache *dep;
    const char *load_event, *store_event;
    TableCachePreWrite *pre_write;
    void *pre_write_opaque;
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
    /* One block for all pages: a large cache of small pages (qcow2 L2
     * slices) costs its size, not a page-aligned allocation per page. */
    c->pages = qemu_memalign(MAX(page_size, 4096), page_size * num_pages);
    c->by_offset = g_hash_table_new(g_int64_hash, g_int64_equal);
    c->page_shift = __builtin_ctzll(page_size);
    g_queue_init(&c->lru);
    c->load_event = load_event;
    c->store_event = store_event;
    qemu_co_queue_init(&c->free_queue);
    for (int i = 0; i < num_pages; i++) {
        TableEntry *e = &c->entries[i];
        e->offset = -1;
        e->page = (uint8_t *)c->pages + (size_t)i * page_size;
        e->lru_link.data = e;
        qemu_co_queue_init(&e->waiters);
        g_queue_push_tail_link(&c->lru, &e->lru_link);
    }
    return c;
}

void table_cache_set_pre_write(TableCache *c, TableCachePreWrite *fn,
                               void *opaque)
{
    c->pre_write = fn;
    c->pre_write_opaque = opaque;
}

int table_cache_num_pages(TableCache *c)
{
    return c->num;
}

void table_cache_free(TableCache *c)
{
    if (!c) {
        return;
    }
    for (int i = 0; i < c->num; i++) {
        assert(c->entries[i].ref == 0);
    }
    qemu_vfree(c->pages);
    g_hash_table_destroy(c->by_offset);
    g_free(c->entries);
    g_free(c);
}

static int table_cache_dep_index(TableCache *c, BlockDriverState *dep_bs)
{
    for (int i = 0; i < c->num_deps; i++) {
        if (c->dep_bs[i] == dep_bs) {
            return i;
        }
    }
    assert(c->num_deps < TABLE_CACHE_MAX_DEPS);
    c->dep_bs[c->num_deps] = dep_bs;
    return c->num_deps++;
}

void table_cache_add_dependency_bs(TableCache *c, BlockDriverState *dep_bs)
{
    table_cache_dep_index(c, dep_bs);
}

void table_cache_set_dependency(TableCache *c, TableCache *dep)
{
    assert(dep != c);
    c->dep = dep;
}

static TableEntry *table_cache_entry_of(TableCache *c, void *page)
{
    /* entry i owns the i-th page of c->pages */
    uintptr_t delta = (uintptr_t)page - (uintptr_t)c->pages;
    size_t i = delta >> c->page_shift;

    assert(!(delta & (c->page_size - 1)) && i < (size_t)c->num);
    return &c->entries[i];
}

static void table_cache_touch(TableCache *c, TableEntry *e)
{
    if (c->lru.tail == &e->lru_link) {
        return;                 /* the most recently used already */
    }
    g_queue_unlink(&c->lru, &e->lru_link);
    g_queue_push_tail_link(&c->lru, &e->lru_link);
}

static bool table_cache_evictable(TableEntry *e)
{
    return e->ref == 0 && !e->loading && !e->storing;
}

/* Pin/unpin for internal use; the last unpin may wake an evictor. */
static void table_cache_pin(TableEntry *e)
{
    e->ref++;
}

static void table_cache_unpin(TableCache *c, TableEntry *e)
{
    assert(e->ref > 0);
    if (--e->ref == 0) {
        qemu_co_queue_restart_all(&c->free_queue);
    }
}

/*
 * Make everything the pages about to be written depend on durable: the
 * dependency cache (written, then flushed), then each dependency node up
 * to the highest generation any of the pages needs.
 */
static int coroutine_fn table_cache_wait_deps(TableCache *c,
                                              const uint64_t *need)
{
    int ret;

    if (c->dep) {
        ret = table_cache_write(c->dep);
        if (ret < 0) {
            return ret;
        }
        if (!bdrv_write_gen_is_durable(c->dep->bs, c->dep->written_gen)) {
            c->stats.dep_flushes++;
            ret = bdrv_co_flush_gen(c->dep->bs, c->dep->written_gen);
            if (ret < 0) {
                return ret;
            }
        }
    }
    for (int d = 0; d < c->num_deps; d++) {
        if (!bdrv_write_gen_is_durable(c->dep_bs[d], need[d])) {
            c->stats.dep_flushes++;
            ret = bdrv_co_flush_gen(c->dep_bs[d], need[d]);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/*
 * Write the dirty entries in list (pinned by the caller, none being
 * written): copy each, satisfy the dependencies of all copies with one
 * wait per dependency, then write the copies. A page that could not be
 * written is dirty again with its dependencies.
 */
static int coroutine_fn table_cache_store(TableCache *c, TableEntry **list,
                                          int n)
{
    uint64_t need[TABLE_CACHE_MAX_DEPS] = { 0 };
    /* had[i * TABLE_CACHE_MAX_DEPS + d]: page i's needs, restored on error */
    uint64_t *had = g_new(uint64_t, (size_t)n * TABLE_CACHE_MAX_DEPS);
    void **copies = g_new0(void *, n);
    int ret;

    for (int i = 0; i < n; i++) {
        TableEntry *e = list[i];
        assert(e->ref > 0 && e->dirty && !e->storing && !e->loading);
        copies[i] = qemu_memalign(MAX(c->page_size, 4096), c->page_size);
        memcpy(copies[i], e->page, c->page_size);
        for (int d = 0; d < c->num_deps; d++) {
            need[d] = MAX(need[d], e->dep_gen[d]);
            had[i * TABLE_CACHE_MAX_DEPS + d] = e->dep_gen[d];
            e->dep_gen[d] = 0;
        }
        e->dirty = false;
        e->storing = true;
        e->store_seq = ++c->store_seq;
    }
    c->stats.batches++;
    ret = table_cache_wait_deps(c, need);
    for (int i = 0; i < n; i++) {
        TableEntry *e = list[i];
        if (ret >= 0) {
            if (c->pre_write) {
                ret = c->pre_write(c->pre_write_opaque, e->offset,
                                   c->page_size);
            }
        }
        if (ret >= 0) {
            if (c->store_event) {
                BLKDBG_EVENT(c->bs, c->store_event);
            }
            ret = bdrv_co_pwrite(c->bs, e->offset, c->page_size, copies[i],
                                 0);
            c->stats.stores++;
        }
        e->store_ret = ret;
        if (ret < 0) {
            e->dirty = true;
            for (int d = 0; d < c->num_deps; d++) {
                e->dep_gen[d] = MAX(e->dep_gen[d],
                                    had[i * TABLE_CACHE_MAX_DEPS + d]);
            }
        }
        e->storing = false;
        qemu_co_queue_restart_all(&e->waiters);
        qemu_vfree(copies[i]);
    }
    if (ret >= 0) {
        c->written_gen = bdrv_get_write_gen(c->bs);
    }
    g_free(copies);
    g_free(had);
    return ret;
}

/*
 * Make room by writing back the dirty victim together with up to
 * EVICT_BATCH - 1 other cold dirty pages, so that one dependency flush
 * serves several evictions.
 */
static int coroutine_fn table_cache_evict_dirty(TableCache *c,
                                                TableEntry *victim)
{
    TableEntry *list[EVICT_BATCH];
    int n = 0, scanned = 0;

    list[n++] = victim;
    for (GList *l = c->lru.head; l && n < EVICT_BATCH && scanned < EVICT_SCAN;
         l = l->next, scanned++) {
        TableEntry *e = l->data;
        if (e != victim && e->dirty && table_cache_evictable(e)) {
            list[n++] = e;
        }
    }
    for (int i = 0; i < n; i++) {
        table_cache_pin(list[i]);
    }
    int ret = table_cache_store(c, list, n);
    for (int i = 0; i < n; i++) {
        table_cache_unpin(c, list[i]);
    }
    return ret;
}

static TableEntry *table_cache_find_victim(TableCache *c)
{
    for (GList *l = c->lru.head; l; l = l->next) {
        TableEntry *e = l->data;
        if (table_cache_evictable(e)) {
            return e;
        }
    }
    return NULL;
}

/* Give the clean, evictable entry e to offset, pinned. */
static void table_cache_claim(TableCache *c, TableEntry *e, uint64_t offset)
{
    if (e->offset >= 0) {
        g_hash_table_remove(c->by_offset, &e->offset);
    }
    e->offset = offset;
    g_hash_table_insert(c->by_offset, &e->offset, e);
    e->ref = 1;
    table_cache_touch(c, e);
}

/* Load offset into the clean, evictable entry e and pin it. */
static int coroutine_fn table_cache_load(TableCache *c, TableEntry *e,
                                         uint64_t offset)
{
    int ret;

    e->loading = true;
    table_cache_claim(c, e, offset);
    c->stats.misses++;
    if (c->load_event) {
        BLKDBG_EVENT(c->bs, c->load_event);
    }
    ret = bdrv_co_pread(c->bs, offset, c->page_size, e->page, 0);
    c->stats.loads++;
    e->loading = false;
    qemu_co_queue_restart_all(&e->waiters);
    if (ret < 0) {
        g_hash_table_remove(c->by_offset, &e->offset);
        e->offset = -1;
        /* Reuse it first. */
        g_queue_unlink(&c->lru, &e->lru_link);
        g_queue_push_head_link(&c->lru, &e->lru_link);
        table_cache_unpin(c, e);
    }
    return ret;
}

/* Pin the page at offset: read it (load) or zero it when not cached. */
static int coroutine_fn table_cache_pin_page(TableCache *c, uint64_t offset,
                                             bool load, void **page)
{
    int64_t key = offset;
    int ret;

    assert(offset % c->page_size == 0 && offset <= INT64_MAX);
    for (;;) {
        /* an entry's offset is its key in by_offset (-1: in none), so
         * the page asked for last time needs no hash lookup */
        TableEntry *e = c->last;
        if (!e || e->offset != key) {
            e = g_hash_table_lookup(c->by_offset, &key);
        }
        if (e) {
            if (e->loading) {
                qemu_co_queue_wait(&e->waiters, NULL);
                continue;
            }
            table_cache_pin(e);
            table_cache_touch(c, e);
            if (load) {
                c->stats.hits++;
            }
            c->last = e;
            *page = e->page;
            return 0;
        }
        TableEntry *victim = table_cache_find_victim(c);
        if (!victim) {
            qemu_co_queue_wait(&c->free_queue, NULL);
            continue;
        }
        if (victim->dirty) {
            ret = table_cache_evict_dirty(c, victim);
            if (ret < 0) {
                return ret;
            }
            continue;       /* the world may have changed while we yielded */
        }
        if (load) {
            ret = table_cache_load(c, victim, offset);
            if (ret < 0) {
                return ret;
            }
        } else {
            table_cache_claim(c, victim, offset);
            memset(victim->page, 0, c->page_size);
        }
        *page = victim->page;
        return 0;
    }
}

int coroutine_fn table_cache_get(TableCache *c, uint64_t offset, void **page)
{
    return table_cache_pin_page(c, offset, true, page);
}

int coroutine_fn table_cache_get_empty(TableCache *c, uint64_t offset,
                                       void **page)
{
    return table_cache_pin_page(c, offset, false, page);
}

void table_cache_put(TableCache *c, void **page)
{
    table_cache_unpin(c, table_cache_entry_of(c, *page));
    *page = NULL;
}

void table_cache_mark_dirty(TableCache *c, void *page)
{
    TableEntry *e = table_cache_entry_of(c, page);

    assert(e->ref > 0);
    e->dirty = true;
    for (int d = 0; d < c->num_deps; d++) {
        e->dep_gen[d] = MAX(e->dep_gen[d], bdrv_get_write_gen(c->dep_bs[d]));
    }
}

void table_cache_mark_dirty_gen(TableCache *c, void *page,
                                BlockDriverState *dep_bs, uint64_t gen)
{
    TableEntry *e = table_cache_entry_of(c, page);
    int d = table_cache_dep_index(c, dep_bs);

    assert(e->ref > 0);
    assert(gen <= bdrv_get_write_gen(dep_bs));
    e->dirty = true;
    e->dep_gen[d] = MAX(e->dep_gen[d], gen);
}

int coroutine_fn table_cache_write(TableCache *c)
{
    uint64_t start_seq = c->store_seq;
    TableEntry **list = g_new(TableEntry *, c->num);
    int n = 0, ret = 0;

    /*
     * A write that started before this call holds an older copy: wait for
     * it. If it failed, its page is dirty again and is written below.
     */
    for (int i = 0; i < c->num; i++) {
        TableEntry *e = &c->entries[i];
        while (e->storing && e->store_seq <= start_seq) {
            qemu_co_queue_wait(&e->waiters, NULL);
        }
    }
    for (int i = 0; i < c->num; i++) {
        TableEntry *e = &c->entries[i];
        if (e->dirty && !e->storing && !e->loading) {
            table_cache_pin(e);
            list[n++] = e;
        }
    }
    if (n) {
        ret = table_cache_store(c, list, n);
        for (int i = 0; i < n; i++) {
            table_cache_unpin(c, list[i]);
        }
    }
    g_free(list);
    /*
     * Writes started by others since the call hold copies taken after it:
     * their success is ours too.
     */
    for (int i = 0; i < c->num && ret >= 0; i++) {
        TableEntry *e = &c->entries[i];
        uint64_t seq = e->store_seq;
        if (e->storing && seq > start_seq) {
            while (e->storing && e->store_seq == seq) {
                qemu_co_queue_wait(&e->waiters, NULL);
            }
            if (e->store_seq == seq && e->store_ret < 0) {
                ret = e->store_ret;
            }
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
        if (e->offset >= 0 && table_cache_evictable(e) && !e->dirty) {
            g_hash_table_remove(c->by_offset, &e->offset);
            e->offset = -1;
            g_queue_unlink(&c->lru, &e->lru_link);
            g_queue_push_head_link(&c->lru, &e->lru_link);
        }
    }
}

void coroutine_fn table_cache_discard(TableCache *c, uint64_t offset)
{
    int64_t key = offset;
    TableEntry *e;

    while ((e = g_hash_table_lookup(c->by_offset, &key)) &&
           (e->storing || e->loading)) {
        qemu_co_queue_wait(&e->waiters, NULL);
    }
    if (!e) {
        return;
    }
    assert(e->ref == 0);
    g_hash_table_remove(c->by_offset, &e->offset);
    e->offset = -1;
    e->dirty = false;
    for (int d = 0; d < TABLE_CACHE_MAX_DEPS; d++) {
        e->dep_gen[d] = 0;
    }
    g_queue_unlink(&c->lru, &e->lru_link);
    g_queue_push_head_link(&c->lru, &e->lru_link);
}

void table_cache_get_stats(TableCache *c, TableCacheStats *stats)
{
    *stats = c->stats;
}
