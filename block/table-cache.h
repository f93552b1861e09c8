/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The metadata table cache shared by the formats (add-cow's bitmap, FVD's
 * bitmap and table, qcow2's tables): fixed-size pages of a metadata area
 * kept in memory with LRU replacement, dirty tracking and write ordering.
 *
 * Rules:
 * - table_cache_get() returns a pinned page; the caller may yield while it
 *   holds it; it must table_cache_put() it. Unpinned pages may be evicted at
 *   any yield, so never keep a pointer to one across a yield without a pin.
 * - Concurrent getters of the same page share one load.
 * - Ordering, by flush generations (bdrv_get_write_gen/bdrv_co_flush_gen):
 *   marking a page dirty records, for each dependency node, the writes to
 *   that node completed so far; the page is written only after a flush of
 *   that node covering them has *completed* (a flush that merely started
 *   does not count). A dependency cache is written and flushed first.
 * - A page is copied when its write starts: changes made while the write
 *   runs leave it dirty again, with their own dependencies.
 * - At most one write of a page is in flight, so writes of one page reach
 *   the disk in order.
 */
#ifndef BLOCK_TABLE_CACHE_H
#define BLOCK_TABLE_CACHE_H

#include "block_int.h"

#define TABLE_CACHE_MAX_DEPS 4

typedef struct TableCache TableCache;

/*
 * A cache of num_pages pages of page_size bytes (a power of two, >= 512)
 * stored in bs. load_event/store_event are announced with BLKDBG_EVENT
 * before each page read/write (may be NULL).
 */
TableCache *table_cache_new(BlockDriverState *bs, size_t page_size,
                            int num_pages, const char *load_event,
                            const char *store_event);
/* Number of pages the cache was created with. */
int table_cache_num_pages(TableCache *c);
/* Frees the cache; dirty pages are lost (flush first). */
void table_cache_free(TableCache *c);

/*
 * Every page marked dirty with table_cache_mark_dirty() depends on dep_bs:
 * the writes to dep_bs completed before the mark are made durable before
 * the page is written (add-cow: data before the bits that describe it).
 * At most TABLE_CACHE_MAX_DEPS nodes, counting those of mark_dirty_gen.
 */
void table_cache_add_dependency_bs(TableCache *c, BlockDriverState *dep_bs);
/* Write and flush cache dep before writing any dirty page of c. */
void table_cache_set_dependency(TableCache *c, TableCache *dep);

/*
 * Called before each page write with the page's offset and size; a
 * negative return fails the write with that error and leaves the page
 * dirty (qcow2: the metadata overlap check).
 */
typedef int coroutine_fn TableCachePreWrite(void *opaque, uint64_t offset,
                                            size_t size);
void table_cache_set_pre_write(TableCache *c, TableCachePreWrite *fn,
                               void *opaque);

/* Pin the page at byte offset (a multiple of page_size), loading it. */
int coroutine_fn table_cache_get(TableCache *c, uint64_t offset,
                                 void **page);
/*
 * Pin the page at offset without reading it: the area was just allocated
 * and the caller fills the whole page (it starts zeroed unless it was
 * cached already), then marks it dirty.
 */
int coroutine_fn table_cache_get_empty(TableCache *c, uint64_t offset,
                                       void **page);
/* Unpin a page returned by table_cache_get. */
void table_cache_put(TableCache *c, void **page);
/* Mark a pinned page dirty, depending on every dependency node as of now. */
void table_cache_mark_dirty(TableCache *c, void *page);
/*
 * Mark a pinned page dirty and make it depend on generation gen of dep_bs
 * only (plus whatever it already depended on), e.g. "only after journal
 * record N is durable": gen = bdrv_get_write_gen(journal node) taken when
 * record N's write completed.
 */
void table_cache_mark_dirty_gen(TableCache *c, void *page,
                                BlockDriverState *dep_bs, uint64_t gen);

/*
 * Write every page that was dirty when the call was made (dependencies
 * first, one flush per dependency for the whole batch) without flushing
 * c's node. Writes of those pages already running are waited for.
 */
int coroutine_fn table_cache_write(TableCache *c);
/* table_cache_write, then flush c's node. */
int coroutine_fn table_cache_flush(TableCache *c);
/* Drop every clean, unpinned page (after the area was rewritten). */
void table_cache_invalidate(TableCache *c);
/*
 * Forget the page at offset even if it is dirty (the area was freed and
 * its content no longer matters); waits for a write of it in flight. The
 * page must not be pinned.
 */
void coroutine_fn table_cache_discard(TableCache *c, uint64_t offset);

/* Statistics for tests and benchmarks. */
typedef struct TableCacheStats {
    uint64_t hits, misses, loads, stores;
    uint64_t dep_flushes;       /* dependency waits that were not durable */
    uint64_t batches;           /* write-back batches (one wait each) */
} TableCacheStats;
void table_cache_get_stats(TableCache *c, TableCacheStats *stats);

#endif
