/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The FVD bitmap in memory: entries paged through the shared table cache,
 * plus the "shadow" bits of allocating writes whose journal record is not
 * durable yet (they reach the cached entry only when it is, so an entry can
 * never go home ahead of its journal records) and, for read-only opens of
 * an image that was not closed cleanly, the bits replayed from its journal.
 * A block is in the image if its bit is set in any of them.
 */
#include "block/fvd/fvd.h"

#define FVD_MAX_SOURCES 4

void fvd_bitmap_init(BDRVFvdState *s)
{
    s->shadows = g_hash_table_new(g_int64_hash, g_int64_equal);
    qemu_co_queue_init(&s->pending_queue);
}

static void fvd_shadow_free(gpointer p)
{
    FvdShadow *sh = p;
    g_free(sh->pending);
    g_free(sh->committing);
    g_free(sh);
}

void fvd_bitmap_free(BDRVFvdState *s)
{
    if (s->shadows) {
        GHashTableIter it;
        gpointer v;
        g_hash_table_iter_init(&it, s->shadows);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            fvd_shadow_free(v);
        }
        g_hash_table_destroy(s->shadows);
        s->shadows = NULL;
    }
    if (s->replayed) {
        g_hash_table_destroy(s->replayed);
        s->replayed = NULL;
    }
}

TableCache *fvd_bitmap_cache_new(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;

    return table_cache_new(bs->file, s->entry_size, s->cache_entries,
                           "bitmap_load", "bitmap_update");
}

uint64_t fvd_entry_offset(BDRVFvdState *s, uint64_t index)
{
    return s->header.bitmap_offset + index * s->entry_size;
}

/* ---- bit helpers (bit i = bit i % 8 of byte i / 8, LSB first) ---- */

static void fvd_bits_set(uint8_t *map, uint64_t start, uint64_t end)
{
    while (start < end && start % 8) {
        map[start / 8] |= 1 << (start % 8);
        start++;
    }
    if (end - start >= 8) {
        memset(map + start / 8, 0xff, (end - start) / 8);
        start += (end - start) / 8 * 8;
    }
    while (start < end) {
        map[start / 8] |= 1 << (start % 8);
        start++;
    }
}

static void fvd_bits_clear(uint8_t *map, uint64_t start, uint64_t end)
{
    for (; start < end; start++) {
        map[start / 8] &= ~(1 << (start % 8));
    }
}

/* 64 bits starting at bit 64 * word of the OR of the sources. */
static inline uint64_t fvd_or_word(const uint8_t *const *src, int n,
                                   uint64_t word)
{
    uint64_t w = 0;
    for (int i = 0; i < n; i++) {
        uint64_t x;
        memcpy(&x, src[i] + word * 8, 8);
        w |= le64_to_cpu(x);
    }
    return w;
}

/* First bit in [bit, end) whose OR-state differs from want, else end. */
static uint64_t fvd_scan(const uint8_t *const *src, int n, uint64_t bit,
                         uint64_t end, bool want)
{
    while (bit < end) {
        uint64_t word = bit / 64;
        uint64_t x = fvd_or_word(src, n, word);
        if (want) {
            x = ~x;
        }
        x &= ~UINT64_C(0) << (bit % 64);
        if (x) {
            return MIN(word * 64 + __builtin_ctzll(x), end);
        }
        bit = (word + 1) * 64;
    }
    return end;
}

/* ---- lookups ---- */

static FvdShadow *fvd_shadow_lookup(BDRVFvdState *s, uint64_t index)
{
    if (!g_hash_table_size(s->shadows)) {
        return NULL;
    }
    return g_hash_table_lookup(s->shadows, &index);
}

/* The sources besides the cached entry: shadow and replay bits. */
static int fvd_extra_sources(BDRVFvdState *s, uint64_t index,
                             const uint8_t **src)
{
    int n = 0;
    FvdShadow *sh = fvd_shadow_lookup(s, index);

    if (sh && sh->pending) {
        src[n++] = sh->pending;
    }
    if (sh && sh->committing) {
        src[n++] = sh->committing;
    }
    if (s->replayed) {
        uint8_t *r = g_hash_table_lookup(s->replayed, &index);
        if (r) {
            src[n++] = r;
        }
    }
    return n;
}

/*
 * Pin entry index's cached page (*page, for table_cache_put) and gather
 * what the entry reads as into src: the page, then its shadows and
 * replayed bits. Returns their count or -errno. The shadows are looked up
 * after the (possibly yielding) get, so all belong to the same instant.
 */
static int coroutine_fn fvd_entry_sources(BDRVFvdState *s, uint64_t index,
                                          const uint8_t **src, uint8_t **page)
{
    int ret = table_cache_get(s->bitmap, fvd_entry_offset(s, index),
                              (void **)page);

    if (ret < 0) {
        return ret;
    }
    src[0] = *page;
    return 1 + fvd_extra_sources(s, index, src + 1);
}

int coroutine_fn fvd_bitmap_run(BDRVFvdState *s, uint64_t start, uint64_t end,
                                bool *in_image, uint64_t *len)
{
    uint64_t b = start;
    bool first = true, want = false;

    assert(start < end && end <= s->nb_blocks);
    while (b < end) {
        uint64_t index = b / s->entry_bits;
        uint64_t ent_first = index * s->entry_bits;
        uint64_t ent_end = MIN(end, ent_first + s->entry_bits);
        const uint8_t *src[FVD_MAX_SOURCES];
        uint8_t *page;
        int n = fvd_entry_sources(s, index, src, &page);
        if (n < 0) {
            return n;
        }
        if (first) {
            uint64_t w = fvd_or_word(src, n, (b - ent_first) / 64);
            want = w & (UINT64_C(1) << ((b - ent_first) % 64));
            first = false;
        }
        uint64_t stop = fvd_scan(src, n, b - ent_first, ent_end - ent_first,
                                 want) + ent_first;
        table_cache_put(s->bitmap, (void **)&page);
        b = stop;
        if (stop < ent_end) {
            break;
        }
    }
    *in_image = want;
    *len = b - start;
    return 0;
}

/* ---- updates ---- */

static FvdShadow *fvd_shadow_get(BDRVFvdState *s, uint64_t index)
{
    FvdShadow *sh = g_hash_table_lookup(s->shadows, &index);
    if (!sh) {
        sh = g_new0(FvdShadow, 1);
        sh->index = index;
        g_hash_table_insert(s->shadows, &sh->index, sh);
    }
    return sh;
}

void fvd_bitmap_set_pending(BDRVFvdState *s, uint64_t start, uint64_t end)
{
    while (start < end) {
        uint64_t index = start / s->entry_bits;
        uint64_t ent_first = index * s->entry_bits;
        uint64_t ent_end = MIN(end, ent_first + s->entry_bits);
        FvdShadow *sh = fvd_shadow_get(s, index);
        if (!sh->pending) {
            sh->pending = g_malloc0(s->entry_size);
            s->pending_entries++;
        }
        fvd_bits_set(sh->pending, start - ent_first, ent_end - ent_first);
        start = ent_end;
    }
}

/* Set or clear bits [start, end) in the cached entries. */
static int coroutine_fn fvd_bitmap_change_cached(BDRVFvdState *s, bool set,
                                                 uint64_t start, uint64_t end,
                                                 BlockDriverState *dep,
                                                 uint64_t gen)
{
    while (start < end) {
        uint64_t index = start / s->entry_bits;
        uint64_t ent_first = index * s->entry_bits;
        uint64_t ent_end = MIN(end, ent_first + s->entry_bits);
        uint8_t *page;
        int ret = table_cache_get(s->bitmap, fvd_entry_offset(s, index),
                                  (void **)&page);
        if (ret < 0) {
            return ret;
        }
        if (set) {
            fvd_bits_set(page, start - ent_first, ent_end - ent_first);
        } else {
            fvd_bits_clear(page, start - ent_first, ent_end - ent_first);
        }
        if (dep) {
            table_cache_mark_dirty_gen(s->bitmap, page, dep, gen);
        } else {
            table_cache_mark_dirty(s->bitmap, page);
        }
        table_cache_put(s->bitmap, (void **)&page);
        start = ent_end;
    }
    return 0;
}

int coroutine_fn fvd_bitmap_set_cached(BDRVFvdState *s, uint64_t start,
                                       uint64_t end, BlockDriverState *dep,
                                       uint64_t gen)
{
    return fvd_bitmap_change_cached(s, true, start, end, dep, gen);
}

int coroutine_fn fvd_bitmap_clear_cached(BDRVFvdState *s, uint64_t start,
                                         uint64_t end)
{
    return fvd_bitmap_change_cached(s, false, start, end, NULL, 0);
}

/* ---- replay overlay (read-only opens of dirty images) ---- */

static uint8_t *fvd_replayed_entry(BDRVFvdState *s, uint64_t index)
{
    if (!s->replayed) {
        s->replayed = g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                            g_free, g_free);
    }
    uint8_t *bits = g_hash_table_lookup(s->replayed, &index);
    if (!bits) {
        uint64_t *key = g_new(uint64_t, 1);
        *key = index;
        bits = g_malloc0(s->entry_size);
        g_hash_table_insert(s->replayed, key, bits);
    }
    return bits;
}

void fvd_bitmap_replayed_set(BDRVFvdState *s, uint64_t start, uint64_t end)
{
    while (start < end) {
        uint64_t index = start / s->entry_bits;
        uint64_t ent_first = index * s->entry_bits;
        uint64_t ent_end = MIN(end, ent_first + s->entry_bits);
        fvd_bits_set(fvd_replayed_entry(s, index), start - ent_first,
                     ent_end - ent_first);
        start = ent_end;
    }
}

/* ---- counting ---- */

int coroutine_fn fvd_bitmap_count(BDRVFvdState *s, uint64_t *allocated,
                                  uint64_t *stray)
{
    uint64_t entries = s->header.bitmap_size / s->entry_size;

    *allocated = *stray = 0;
    for (uint64_t index = 0; index < entries; index++) {
        const uint8_t *src[FVD_MAX_SOURCES];
        uint8_t *page;
        int n = fvd_entry_sources(s, index, src, &page);
        if (n < 0) {
            return n;
        }
        uint64_t first = index * s->entry_bits;
        for (uint64_t w = 0; w < s->entry_bits / 64; w++) {
            uint64_t x = fvd_or_word(src, n, w);
            uint64_t b = first + w * 64;
            if (!x) {
                continue;
            }
            if (b + 64 <= s->nb_blocks) {
                *allocated += __builtin_popcountll(x);
            } else if (b >= s->nb_blocks) {
                *stray += __builtin_popcountll(x);
            } else {
                uint64_t keep = (UINT64_C(1) << (s->nb_blocks - b)) - 1;
                *allocated += __builtin_popcountll(x & keep);
                *stray += __builtin_popcountll(x & ~keep);
            }
        }
        table_cache_put(s->bitmap, (void **)&page);
    }
    return 0;
}
