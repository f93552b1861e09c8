/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The metadata table cache shared by the formats (add-cow's bitmap, FVD's
 * bitmap and table): fixed-size pages of a metadata area kept in memory with
 * LRU replacement, dirty tracking and write ordering.
 *
 * Rules:
 * - table_cache_get() returns a pinned page; the caller may yield while it
 *   holds it; it must table_cache_put() it. Unpinned pages may be evicted at
 *   any yield, so never keep a pointer to one across a yield without a pin.
 * - Concurrent getters of the same page share one load.
 * - Ordering: before a dirty page is written, every dependency is made
 *   durable first: a dependency node is flushed (add-cow: the raw image,
 *   so bits never reach the disk before their data), a dependency cache is
 *   written and flushed. Only bits that were set before the write started
 *   are written: a page is copied, then the dependencies are flushed, then
 *   the copy is written, so a bit set during that flush stays dirty.
 */
#ifndef BLOCK_TABLE_CACHE_H
#define BLOCK_TABLE_CACHE_H

#include "block_int.h"

typedef struct TableCache TableCache;

/*
 * A cache of num_pages pages of page_size bytes (a power of two, >= 512)
 * stored in bs. load_event/store_event are announced with BLKDBG_EVENT
 * before each page read/write (may be NULL).
 */
TableCache *table_cache_new(BlockDriverState *bs, size_t page_size,
                            int num_pages, const char *load_event,
                            const char *store_event);
/* Frees the cache; dirty pages are lost (flush first). */
void table_cache_free(TableCache *c);

/* Make dep_bs durable (flush) before writing any dirty page. */
void table_cache_set_dependency_bs(TableCache *c, BlockDriverState *dep_bs);
/* Write and flush cache dep before writing any dirty page of c. */
void table_cache_set_dependency(TableCache *c, TableCache *dep);

/* Pin the page at byte offset (a multiple of page_size), loading it. */
int coroutine_fn table_cache_get(TableCache *c, uint64_t offset,
                                 void **page);
/* Unpin a page returned by table_cache_get. */
void table_cache_put(TableCache *c, void **page);
/* Mark a pinned page dirty (its dependencies become due). */
void table_cache_mark_dirty(TableCache *c, void *page);

/*
 * Flush the dependency node now (for callers that need it durable anyway,
 * e.g. a format flushing its data file): pages dirtied before this call no
 * longer make the next write-back flush it again.
 */
int coroutine_fn table_cache_flush_dependency(TableCache *c);
/* Write every dirty page (dependencies first) without flushing c's node. */
int coroutine_fn table_cache_write(TableCache *c);
/* table_cache_write, then flush c's node. */
int coroutine_fn table_cache_flush(TableCache *c);
/* Drop every clean, unpinned page (after the area was rewritten). */
void table_cache_invalidate(TableCache *c);

/* Statistics for tests and benchmarks. */
typedef struct TableCacheStats {
    uint64_t hits, misses, loads, stores, dep_flushes;
} TableCacheStats;
void table_cache_get_stats(TableCache *c, TableCacheStats *stats);

#endif
