/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 reference counts: the refcount table and blocks (through the
 * refcount table cache), host cluster and byte allocation, frees that wait
 * until no durable table points at the cluster any more, refcount table
 * growth, and the metadata overlap check that guards data writes.
 *
 * Ordering (docs/specs/qcow2.txt, "Crash safety"): an increase reaches the
 * disk before any L1/L2 entry that uses the cluster (the L2 cache depends
 * on the refcount cache; L1 and reftable entries are written after a
 * refcount flush); a decrease only after the tables that dropped the
 * reference are durable (qcow2_free_deferred). A crash leaks at worst.
 */
#include "block/qcow2/qcow2.h"

/* ---- refcount entries of every width ---- */

uint64_t qcow2_get_refcount_ro(BDRVQcow2State *s, const void *block,
                               uint64_t index)
{
    const uint8_t *p = block;

    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        unsigned w = s->refcount_bits;
        uint64_t bit = index * w;
        return (p[bit / 8] >> (bit % 8)) & ((1u << w) - 1);
    }
    case 3:
        return p[index];
    case 4: {
        uint16_t v;
        memcpy(&v, p + index * 2, 2);
        return be16_to_cpu(v);
    }
    case 5: {
        uint32_t v;
        memcpy(&v, p + index * 4, 4);
        return be32_to_cpu(v);
    }
    default: {
        uint64_t v;
        memcpy(&v, p + index * 8, 8);
        return be64_to_cpu(v);
    }
    }
}

void qcow2_set_refcount_ro(BDRVQcow2State *s, void *block, uint64_t index,
                           uint64_t value)
{
    uint8_t *p = block;

    assert(value <= s->refcount_max);
    switch (s->refcount_order) {
    case 0: case 1: case 2: {
        unsigned w = s->refcount_bits;
        uint64_t bit = index * w;
        uint8_t mask = ((1u << w) - 1) << (bit % 8);
        p[bit / 8] = (p[bit / 8] & ~mask) | (uint8_t)(value << (bit % 8));
        break;
    }
    case 3:
        p[index] = value;
        break;
    case 4: {
        uint16_t v = cpu_to_be16(value);
        memcpy(p + index * 2, &v, 2);
        break;
    }
    case 5: {
        uint32_t v = cpu_to_be32(value);
        memcpy(p + index * 4, &v, 4);
        break;
    }
    default: {
        uint64_t v = cpu_to_be64(value);
        memcpy(p + index * 8, &v, 8);
        break;
    }
    }
}

/* Refcounts per refcount cache page. */
static uint64_t qcow2_rb_slice_entries(BDRVQcow2State *s)
{
    return (uint64_t)s->rb_slice_bytes * 8 / s->refcount_bits;
}

/*
 * The refcount block of cluster_index: 0 with *block = 0 if it has none
 * (its refcount is 0), -EIO if the table entry is corrupt.
 */
static int qcow2_refblock_of(BlockDriverState *bs, uint64_t cluster_index,
                             uint64_t *block)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t rt_index = cluster_index >> s->refcount_block_bits;

    *block = 0;
    if (rt_index >= s->refcount_table_size) {
        return 0;
    }
    uint64_t off = s->refcount_table[rt_index] & QCOW2_REFT_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, off) || off > QCOW2_MAX_HOST_OFFSET) {
        qcow2_signal_corruption(bs, true, -1, -1, "Refblock offset %#"
                                PRIx64 " unaligned (reftable index: %#"
                                PRIx64 ")", off, rt_index);
        return -EIO;
    }
    *block = off;
    return 0;
}

/* Pin the cache page holding cluster_index's refcount; *idx inside it. */
static int coroutine_fn qcow2_refcount_page(BlockDriverState *bs,
                                            uint64_t block,
                                            uint64_t cluster_index,
                                            void **page, uint64_t *idx)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t in_block = cluster_index & (s->refcount_block_size - 1);
    uint64_t per_page = qcow2_rb_slice_entries(s);

    *idx = in_block % per_page;
    return table_cache_get(s->refcount_cache,
                           block + (in_block / per_page) * s->rb_slice_bytes,
                           page);
}

int coroutine_fn qcow2_get_refcount(BlockDriverState *bs,
                                    uint64_t cluster_index,
                                    uint64_t *refcount)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t block, idx;
    void *page;
    int ret;

    *refcount = 0;
    ret = qcow2_refblock_of(bs, cluster_index, &block);
    if (ret < 0 || !block) {
        return ret;
    }
    ret = qcow2_refcount_page(bs, block, cluster_index, &page, &idx);
    if (ret < 0) {
        return ret;
    }
    *refcount = qcow2_get_refcount_ro(s, page, idx);
    table_cache_put(s->refcount_cache, &page);
    return 0;
}

/* ---- writing table entries ---- */

/*
 * Write the 512-byte group of reftable entries holding index, durably,
 * announcing blkdebug event `event` first.
 */
int coroutine_fn qcow2_write_reftable_entry(BlockDriverState *bs,
                                            uint32_t index, const char *event)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t per_sector = 512 / sizeof(uint64_t);
    uint32_t first = index & ~(per_sector - 1);
    uint64_t buf[64] = { 0 };
    int ret;

    for (uint32_t i = 0; i < per_sector && first + i <
         s->refcount_table_size; i++) {
        buf[i] = cpu_to_be64(s->refcount_table[first + i]);
    }
    BLKDBG_EVENT(bs->file, event);
    ret = bdrv_co_pwrite(bs->file, s->refcount_table_offset +
                         first * sizeof(uint64_t), sizeof(buf), buf, 0);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_flush(bs->file);
}

/* ---- new refcount blocks and a larger refcount table ---- */

static int64_t coroutine_fn qcow2_alloc_noref(BlockDriverState *bs,
                                              uint64_t nb_clusters,
                                              uint64_t max_offset);

/*
 * Bytes of refcount blocks and table needed to count `clusters` clusters
 * plus themselves (the fixed point), optionally with room to grow by half
 * the table again. Used by measure and by reftable growth.
 */
int64_t qcow2_refcount_metadata_size(int64_t clusters, size_t cluster_size,
                                     int refcount_order, bool generous,
                                     uint64_t *refblock_count)
{
    int64_t per_table_cluster = cluster_size / sizeof(uint64_t);
    int64_t per_block = cluster_size * 8 / (1 << refcount_order);
    int64_t table = 0, blocks = 0, total = 0, prev;

    do {
        prev = total;
        blocks = DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP(blocks, per_table_cluster);
        total = clusters + blocks + table;
        if (total == prev && generous) {
            clusters += DIV_ROUND_UP(table, 2);
            total = 0;
            generous = false;
        }
    } while (total != prev);
    if (refblock_count) {
        *refblock_count = blocks;
    }
    return (blocks + table) * cluster_size;
}

/* Count the clusters of [from, to) that block i covers, in page. */
static void qcow2_count_in_block(BDRVQcow2State *s, void *page,
                                 uint64_t page_first, uint64_t per_page,
                                 uint64_t from, uint64_t to)
{
    for (uint64_t c = MAX(from, page_first); c < MIN(to, page_first +
                                                     per_page); c++) {
        qcow2_set_refcount_ro(s, page, c - page_first, 1);
    }
}

/*
 * Refcount block i of an area: an existing one gets the area's clusters
 * counted through the cache; a missing one is created at *next (and
 * counts them too).
 */
static int coroutine_fn qcow2_area_block(BlockDriverState *bs, uint64_t *table,
                                         uint64_t i, uint64_t *next,
                                         uint64_t area, uint64_t end)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t per_page = qcow2_rb_slice_entries(s);
    uint64_t first = i << s->refcount_block_bits;
    bool fresh = !table[i];
    int ret;

    if (fresh) {
        table[i] = *next << s->cluster_bits;
        (*next)++;
    }
    for (uint64_t off = 0; off < s->cluster_size; off += s->rb_slice_bytes) {
        uint64_t page_first = first + off * 8 / s->refcount_bits;
        void *page;
        if (!fresh && (page_first >= end || page_first + per_page <= area)) {
            continue;
        }
        ret = fresh ? table_cache_get_empty(s->refcount_cache, table[i] + off,
                                            &page)
                    : table_cache_get(s->refcount_cache, table[i] + off,
                                      &page);
        if (ret < 0) {
            return ret;
        }
        if (fresh) {
            memset(page, 0, s->rb_slice_bytes);
        }
        qcow2_count_in_block(s, page, page_first, per_page, area, end);
        table_cache_mark_dirty(s->refcount_cache, page);
        table_cache_put(s->refcount_cache, &page);
    }
    return 0;
}

/*
 * A new refcount table in a free area from cluster `start`, covering the
 * image up to that area plus `additional` clusters (QEMU's layout): the
 * refcount blocks missing for the area come first, then the table (half
 * again as large unless exact); every cluster of blocks and table is
 * counted. new_index/new_block enter a block placed by the caller. The
 * header switch is the commit point; the old table is freed after it.
 * Returns the first cluster after the area.
 */
int64_t coroutine_fn qcow2_refcount_area(BlockDriverState *bs, uint64_t start,
                                         uint64_t additional, bool exact,
                                         uint64_t new_index,
                                         uint64_t new_block)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t per_tc = s->cluster_size / sizeof(uint64_t);
    uint64_t max_idx = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
    uint64_t total, table_size, table_clusters, area_index, missing = 0;
    uint64_t *table;
    int ret;

    if (start > max_idx || additional > max_idx - start) {
        return -EFBIG;
    }
    qcow2_refcount_metadata_size(start + additional, s->cluster_size,
                                 s->refcount_order, !exact, &total);
    table_size = exact ? total : total + DIV_ROUND_UP(total, 2);
    table_size = ROUND_UP(MAX(table_size, 1), per_tc);
    table_clusters = table_size / per_tc;
    if (total > QCOW2_MAX_REFTABLE_SIZE / sizeof(uint64_t) ||
        table_size > QCOW2_MAX_REFTABLE_SIZE / sizeof(uint64_t) ||
        (new_block && new_index >= total)) {
        return -EFBIG;
    }
    table = g_new0(uint64_t, table_size);
    for (uint64_t i = 0; i < MIN(table_size, s->refcount_table_size); i++) {
        table[i] = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
    }
    if (new_block) {
        table[new_index] = new_block;
    }
    area_index = start >> s->refcount_block_bits;
    for (uint64_t i = area_index; i < total; i++) {
        missing += !table[i];
    }
    uint64_t table_start = start + missing;
    uint64_t end = table_start + table_clusters;
    uint64_t next = start;
    if (end > max_idx) {
        g_free(table);
        return -EFBIG;
    }
    /* 1. Blocks (existing ones updated in the cache, missing ones new). */
    BLKDBG_EVENT(bs->file, "refblock_alloc_write_blocks");
    for (uint64_t i = area_index; i < total; i++) {
        ret = qcow2_area_block(bs, table, i, &next, start, end);
        if (ret < 0) {
            goto out;
        }
    }
    ret = table_cache_flush(s->refcount_cache);
    if (ret < 0) {
        goto out;
    }
    /* 2. The table. */
    uint64_t *disk = g_new0(uint64_t, table_size);
    for (uint64_t i = 0; i < table_size; i++) {
        disk[i] = cpu_to_be64(table[i]);
    }
    BLKDBG_EVENT(bs->file, "refblock_alloc_write_table");
    ret = bdrv_co_pwrite(bs->file, table_start << s->cluster_bits,
                         table_size * sizeof(uint64_t), disk, 0);
    g_free(disk);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        goto out;
    }
    /* 3. Commit: the header names the new table. */
    struct QEMU_PACKED {
        uint64_t offset;
        uint32_t clusters;
    } hdr = { cpu_to_be64(table_start << s->cluster_bits),
              cpu_to_be32(table_clusters) };
    BLKDBG_EVENT(bs->file, "refblock_alloc_switch_table");
    ret = bdrv_co_pwrite(bs->file,
                         offsetof(Qcow2DiskHeader, refcount_table_offset),
                         sizeof(hdr), &hdr, 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        goto out;
    }
    uint64_t old_offset = s->refcount_table_offset;
    uint64_t old_bytes = (uint64_t)s->refcount_table_size * sizeof(uint64_t);
    g_free(s->refcount_table);
    s->refcount_table = table;
    table = NULL;
    s->refcount_table_offset = table_start << s->cluster_bits;
    s->refcount_table_size = table_size;
    qcow2_invalidate_meta_clusters(s);
    /* 4. The old table is unreferenced since the commit. */
    if (old_bytes) {
        qcow2_free_clusters(bs, old_offset, old_bytes);
    }
    ret = 0;
out:
    g_free(table);
    return ret < 0 ? ret : (int64_t)end;
}

/*
 * The refcount block for reftable entry rt_index (whose range holds
 * cluster_index) goes to the first free cluster; in its own range it
 * counts itself, elsewhere it is counted through the ordinary path. It is
 * durable before the reftable entry naming it, and that entry before any
 * table can refer to a cluster it counts. Past the table's end, a larger
 * table is made in the area after the ranges in use (QEMU's layout).
 */
static int coroutine_fn qcow2_alloc_refblock(BlockDriverState *bs,
                                             uint64_t rt_index,
                                             uint64_t cluster_index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t per_page = qcow2_rb_slice_entries(s);
    int64_t new_block;
    int ret;

    /* (QEMU's refblock_alloc event came just before, from the update.) */
    new_block = qcow2_alloc_noref(bs, 1, QCOW2_MAX_HOST_OFFSET);
    if (new_block < 0) {
        return new_block;
    }
    if (new_block == 0) {
        qcow2_signal_corruption(bs, true, -1, -1, "Preventing invalid "
                                "allocation of refcount block at offset 0");
        return -EIO;
    }
    uint64_t nb_index = (uint64_t)new_block >> s->cluster_bits;
    bool self = (nb_index >> s->refcount_block_bits) == rt_index;

    if (!self) {
        /* If that needs a block too (-EAGAIN) the caller starts over. */
        ret = qcow2_update_refcount(bs, new_block, s->cluster_size, 1);
        if (ret < 0) {
            return ret;
        }
    }
    for (uint32_t off = 0; off < s->cluster_size; off += s->rb_slice_bytes) {
        void *page;
        ret = table_cache_get_empty(s->refcount_cache, new_block + off,
                                    &page);
        if (ret < 0) {
            return ret;
        }
        memset(page, 0, s->rb_slice_bytes);
        uint64_t first = (uint64_t)off * 8 / s->refcount_bits;
        uint64_t own = nb_index & (s->refcount_block_size - 1);
        if (self && own >= first && own < first + per_page) {
            qcow2_set_refcount_ro(s, page, own - first, 1);
        }
        table_cache_mark_dirty(s->refcount_cache, page);
        table_cache_put(s->refcount_cache, &page);
    }
    BLKDBG_EVENT(bs->file, "refblock_alloc_write");
    ret = table_cache_flush(s->refcount_cache);
    if (ret < 0) {
        return ret;
    }
    if (rt_index < s->refcount_table_size) {
        s->refcount_table[rt_index] = new_block;
        qcow2_invalidate_meta_clusters(s);
        ret = qcow2_write_reftable_entry(bs, rt_index,
                                         "refblock_alloc_hookup");
        if (ret < 0) {
            s->refcount_table[rt_index] = 0;
            qcow2_invalidate_meta_clusters(s);
        }
        return ret;
    }
    BLKDBG_EVENT(bs->file, "reftable_grow");
    uint64_t blocks_used = DIV_ROUND_UP(MAX(cluster_index + 1, nb_index + 1),
                                        s->refcount_block_size);
    int64_t r = qcow2_refcount_area(bs, blocks_used <<
                                    s->refcount_block_bits, 0, false,
                                    rt_index, new_block);
    if (r < 0) {
        return r;
    }
    /* QEMU loads the new block here before starting over. */
    BLKDBG_EVENT(bs->file, "refblock_load");
    return 0;
}

/*
 * Make sure every cluster of [first, last] has a refcount block. Returns
 * -EAGAIN after creating anything (the new structures may sit where the
 * caller meant to allocate), 0 when all existed.
 */
static int coroutine_fn qcow2_ensure_refblocks(BlockDriverState *bs,
                                               uint64_t first, uint64_t last)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    for (uint64_t ri = first >> s->refcount_block_bits;
         ri <= last >> s->refcount_block_bits; ri++) {
        uint64_t c = MAX(first, ri << s->refcount_block_bits);
        uint64_t block;
        ret = qcow2_refblock_of(bs, c, &block);
        if (ret < 0) {
            return ret;
        }
        if (block) {
            continue;
        }
        BLKDBG_EVENT(bs->file, "refblock_alloc");
        ret = qcow2_alloc_refblock(bs, ri, c);
        return ret < 0 ? ret : -EAGAIN;
    }
    return 0;
}

/* ---- refcount updates ---- */

/* Forget cached table pages of freed clusters (they may be reused). */
void qcow2_discard_metadata_cache(BlockDriverState *bs, uint64_t offset,
                                  uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t start = qcow2_start_of_cluster(s, offset);
    uint64_t end = ROUND_UP(offset + bytes, (uint64_t)s->cluster_size);

    for (uint64_t o = start; o < end; o += s->l2_slice_bytes) {
        table_cache_discard(s->l2_cache, o);
    }
    for (uint64_t o = start; o < end; o += s->rb_slice_bytes) {
        table_cache_discard(s->refcount_cache, o);
    }
}

/*
 * Clusters [start, end) dropped to refcount 0: forget their cached pages;
 * during a snapshot operation (s->free_discard) they are also discarded
 * in the file, as QEMU does for pass-discard-snapshot.
 */
static void qcow2_freed(BlockDriverState *bs, uint64_t start, uint64_t end,
                        GArray **discards)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t r[2] = { start << s->cluster_bits, end << s->cluster_bits };

    qcow2_discard_metadata_cache(bs, r[0], r[1] - r[0]);
    if (s->free_discard && !s->external_data) {
        if (!*discards) {
            *discards = g_array_new(FALSE, FALSE, sizeof(uint64_t));
        }
        g_array_append_vals(*discards, r, 2);
    }
}

/*
 * Add addend to the refcount of every cluster touched by [offset,
 * offset + length). All-or-nothing: the counts are checked first (no
 * overflow, no underflow), then changed. -EAGAIN: refcount structures were
 * created first; nothing was counted yet, call again (allocators must pick
 * their range again).
 */
int coroutine_fn qcow2_update_refcount(BlockDriverState *bs, uint64_t offset,
                                       uint64_t length, int64_t addend)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t first, last, freed_start = 0, freed_end = 0;
    GArray *discards = NULL;
    int ret;

    if (length == 0 || addend == 0) {
        return 0;
    }
    first = offset >> s->cluster_bits;
    last = (offset + length - 1) >> s->cluster_bits;
    if (addend > 0) {
        ret = qcow2_ensure_refblocks(bs, first, last);
        if (ret < 0) {
            return ret;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t c = first; c <= last;) {
            uint64_t block, idx;
            void *page;
            if (pass == 0 && (c == first || !(c & (s->refcount_block_size -
                                                    1)))) {
                /*
                 * QEMU's events, once per refcount block an update
                 * touches, before its (cached or read) block is used.
                 */
                BLKDBG_EVENT(bs->file, "refblock_alloc");
                BLKDBG_EVENT(bs->file, "refblock_load");
            }
            ret = qcow2_refblock_of(bs, c, &block);
            if (ret < 0) {
                goto out;
            }
            if (!block) {
                /* Decreasing a count that does not exist. */
                qcow2_signal_corruption(bs, true, -1, -1, "Decreasing "
                                        "refcount of cluster %#" PRIx64
                                        " without a refcount block",
                                        c << s->cluster_bits);
                ret = -EINVAL;
                goto out;
            }
            ret = qcow2_refcount_page(bs, block, c, &page, &idx);
            if (ret < 0) {
                goto out;
            }
            uint64_t per_page = qcow2_rb_slice_entries(s);
            bool dirty = false;
            for (; c <= last && idx < per_page; c++, idx++) {
                uint64_t rc = qcow2_get_refcount_ro(s, page, idx);
                if (addend < 0 && rc < (uint64_t)-addend) {
                    table_cache_put(s->refcount_cache, &page);
                    ret = -EINVAL;
                    goto out;
                }
                if (addend > 0 && rc > s->refcount_max - (uint64_t)addend) {
                    table_cache_put(s->refcount_cache, &page);
                    ret = -EINVAL;
                    goto out;
                }
                if (pass == 0) {
                    continue;
                }
                rc += addend;
                qcow2_set_refcount_ro(s, page, idx, rc);
                dirty = true;
                if (rc == 0) {
                    if (c < s->free_cluster_index) {
                        s->free_cluster_index = c;
                    }
                    if (freed_end == c && freed_end) {
                        freed_end = c + 1;
                    } else {
                        if (freed_end) {
                            qcow2_freed(bs, freed_start, freed_end,
                                        &discards);
                        }
                        freed_start = c;
                        freed_end = c + 1;
                    }
                }
            }
            if (dirty) {
                table_cache_mark_dirty(s->refcount_cache, page);
            }
            table_cache_put(s->refcount_cache, &page);
        }
    }
    if (freed_end) {
        qcow2_freed(bs, freed_start, freed_end, &discards);
    }
    /* Nothing can have reused them yet: the caller allocates afterwards. */
    for (guint i = 0; discards && i < discards->len; i += 2) {
        uint64_t *r = &g_array_index(discards, uint64_t, i);
        bdrv_co_pdiscard(bs->file, r[0], r[1] - r[0]);
    }
    ret = 0;
out:
    if (discards) {
        g_array_free(discards, TRUE);
    }
    return ret;
}

/* ---- allocation ---- */

/*
 * Find nb_clusters free clusters in a row from free_cluster_index (first
 * fit, as QEMU, so that images look alike) without counting them yet.
 */
static int64_t coroutine_fn qcow2_alloc_noref(BlockDriverState *bs,
                                              uint64_t nb_clusters,
                                              uint64_t max_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t i = 0;

    while (i < nb_clusters) {
        uint64_t idx = s->free_cluster_index++;
        uint64_t rc;
        int ret;

        if ((idx + 1) << s->cluster_bits > max_offset + 1 ||
            idx >= (UINT64_C(1) << (63 - s->cluster_bits))) {
            return -EFBIG;
        }
        ret = qcow2_get_refcount(bs, idx, &rc);
        if (ret < 0) {
            return ret;
        }
        i = rc ? 0 : i + 1;
    }
    return (int64_t)((s->free_cluster_index - nb_clusters) <<
                     s->cluster_bits);
}

/* Allocate and count size bytes (rounded up to clusters), contiguous. */
int64_t coroutine_fn qcow2_alloc_clusters(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t n = qcow2_size_to_clusters(s, size);
    int64_t offset;
    int ret;

    BLKDBG_EVENT(bs->file, "cluster_alloc");
    do {
        offset = qcow2_alloc_noref(bs, n, QCOW2_MAX_HOST_OFFSET);
        if (offset < 0) {
            return offset;
        }
        ret = qcow2_update_refcount(bs, offset, n << s->cluster_bits, 1);
        if (ret == -EAGAIN) {
            /* Rescan: the new structures took some of these clusters. */
            s->free_cluster_index = MIN(s->free_cluster_index,
                                        (uint64_t)offset >> s->cluster_bits);
        }
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : offset;
}

/*
 * Count as many of the nb_clusters clusters at offset as are free in a row
 * (to extend an earlier allocation). Returns how many were taken.
 */
int64_t coroutine_fn qcow2_alloc_clusters_at(BlockDriverState *bs,
                                             uint64_t offset,
                                             uint64_t nb_clusters)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t idx = offset >> s->cluster_bits, n;
    int ret;

    do {
        for (n = 0; n < nb_clusters; n++) {
            uint64_t rc;
            if ((idx + n + 1) << s->cluster_bits > QCOW2_MAX_HOST_OFFSET + 1) {
                break;
            }
            ret = qcow2_get_refcount(bs, idx + n, &rc);
            if (ret < 0) {
                return ret;
            }
            if (rc) {
                break;
            }
        }
        if (n == 0) {
            return 0;
        }
        ret = qcow2_update_refcount(bs, offset, n << s->cluster_bits, 1);
    } while (ret == -EAGAIN);
    return ret < 0 ? ret : (int64_t)n;
}

/*
 * Allocate size bytes for a compressed cluster, packed after the previous
 * one when it fits (each host cluster a compressed cluster touches counts
 * one reference for it).
 */
int64_t coroutine_fn qcow2_alloc_bytes(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t offset = s->free_byte_offset, free_in_cluster;
    uint64_t max = MIN(s->cluster_offset_mask, QCOW2_MAX_HOST_OFFSET);
    int ret;

    BLKDBG_EVENT(bs->file, "cluster_alloc_bytes");
    assert(size > 0 && size <= s->cluster_size);
    if (offset) {
        uint64_t rc;
        ret = qcow2_get_refcount(bs, offset >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc == s->refcount_max) {
            offset = 0;
        }
    }
    free_in_cluster = s->cluster_size - qcow2_offset_into_cluster(s, offset);
    do {
        if (!offset || free_in_cluster < size) {
            int64_t nc = qcow2_alloc_noref(bs, 1, max);
            if (nc < 0) {
                return nc;
            }
            if (!offset || ROUND_UP(offset, (uint64_t)s->cluster_size) !=
                (uint64_t)nc) {
                offset = nc;
                free_in_cluster = s->cluster_size;
            } else {
                free_in_cluster += s->cluster_size;
            }
        }
        ret = qcow2_update_refcount(bs, offset, size, 1);
        if (ret == -EAGAIN) {
            offset = 0;
        }
    } while (ret == -EAGAIN);
    if (ret < 0) {
        return ret;
    }
    s->free_byte_offset = offset + size;
    if (!qcow2_offset_into_cluster(s, s->free_byte_offset)) {
        s->free_byte_offset = 0;
    }
    return offset;
}

/*
 * Drop one reference of every cluster of [offset, offset + size) now.
 * Only for clusters that no durable table can point at (never linked, or
 * unlinked by a committed and flushed change).
 */
int coroutine_fn qcow2_free_clusters(BlockDriverState *bs, uint64_t offset,
                                     uint64_t size)
{
    int ret;

    /* QEMU's event and message (upstream iotest 217 expects both). */
    BLKDBG_EVENT(bs->file, "cluster_free");
    ret = qcow2_update_refcount(bs, offset, size, -1);
    if (ret < 0) {
        fprintf(stderr, "qcow2_free_clusters failed: %s\n", strerror(-ret));
    }
    return ret;
}

/* ---- frees that wait for durable tables ---- */

/*
 * The reference to [offset, offset + bytes) was just removed from an L1 or
 * L2 table in memory. The refcount drops once that table change is on disk
 * and flushed, and once no in-place write that started earlier (and may
 * still land in the range) is in flight: until then the old count stays.
 * A crash leaks the range; a durable table never names a reused cluster.
 */
void qcow2_free_deferred(BlockDriverState *bs, uint64_t offset,
                         uint64_t bytes, bool discard)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2PendingFree f = { offset, bytes, discard, s->inplace_seq };
    GArray *l = s->pending_frees;
    uint64_t cs = s->cluster_size;

    if (!bytes) {
        return;
    }
    /*
     * Whole clusters right after (or before) the last queued range join
     * it: one refcount update and one discard (one hole) per contiguous
     * range, as QEMU does. (Compressed ranges never join: two of them may
     * share a host cluster, which then loses two references.) The joined
     * range waits for the later one's in-place writes too. A range that
     * qcow2_settle_frees_for_reuse already looked at takes nothing more
     * (it would be scanned again, whole, before every allocation).
     */
    if (l->len && l->len - 1 >= s->frees_checked_pending &&
        QEMU_IS_ALIGNED(offset | bytes, cs)) {
        Qcow2PendingFree *last = &g_array_index(l, Qcow2PendingFree,
                                                l->len - 1);
        if (last->discard == discard &&
            QEMU_IS_ALIGNED(last->offset | last->bytes, cs) &&
            (last->offset + last->bytes == offset ||
             offset + bytes == last->offset)) {
            last->offset = MIN(last->offset, offset);
            last->bytes += bytes;
            last->seq = MAX(last->seq, f.seq);
            return;
        }
    }
    g_array_append_val(l, f);
}

/* The host range an L2 entry holds, freed as above. */
void qcow2_free_entry_deferred(BlockDriverState *bs, uint64_t entry,
                               bool discard)
{
    BDRVQcow2State *s = bs->opaque;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t host, bytes;
        qcow2_parse_compressed(s, entry, &host, &bytes);
        qcow2_free_deferred(bs, host, bytes, discard);
    } else if (!s->external_data && (entry & QCOW2_L2E_OFFSET_MASK)) {
        qcow2_free_deferred(bs, entry & QCOW2_L2E_OFFSET_MASK,
                            s->cluster_size, discard);
    }
}

/* Oldest in-place write in flight (its sequence number), or UINT64_MAX. */
static uint64_t qcow2_oldest_inplace(BDRVQcow2State *s)
{
    return s->inplace_head ? s->inplace_head->seq : UINT64_MAX;
}

/*
 * Apply the frees of list that no in-place write in flight can still touch
 * and take them off the list (the others stay for a later call).
 */
static int coroutine_fn qcow2_apply_frees(BlockDriverState *bs, GArray *list)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t oldest = qcow2_oldest_inplace(s);
    int ret = 0;

    GArray *ready = g_array_new(FALSE, FALSE, sizeof(Qcow2PendingFree));
    guint keep = 0, i;

    /* Entries go: look at the lists afresh next time. */
    s->frees_checked_pending = s->frees_checked_written = 0;

    /* Take the ready ones out in one pass (linear in the list). */
    for (i = 0; i < list->len; i++) {
        Qcow2PendingFree f = g_array_index(list, Qcow2PendingFree, i);
        if (f.seq > oldest) {
            g_array_index(list, Qcow2PendingFree, keep++) = f;
        } else {
            g_array_append_val(ready, f);
        }
    }
    g_array_set_size(list, keep);
    for (i = 0; i < ready->len && ret >= 0; i++) {
        Qcow2PendingFree f = g_array_index(ready, Qcow2PendingFree, i);
        ret = qcow2_update_refcount(bs, f.offset, f.bytes, -1);
        if (ret >= 0 && f.discard && !s->external_data) {
            /* One discard per run of clusters that are free now. */
            uint64_t cs = s->cluster_size;
            uint64_t start = ROUND_UP(f.offset, cs);
            uint64_t end = QEMU_ALIGN_DOWN(f.offset + f.bytes, cs);
            uint64_t run = start;
            for (uint64_t o = start; o < end; o += cs) {
                uint64_t rc = 1;
                qcow2_get_refcount(bs, o >> s->cluster_bits, &rc);
                if (rc) {
                    if (o > run) {
                        bdrv_co_pdiscard(bs->file, run, o - run);
                    }
                    run = o + cs;
                }
            }
            if (end > run) {
                bdrv_co_pdiscard(bs->file, run, end - run);
            }
        }
    }
    /* After a failure (that entry is dropped: a leak), the rest wait. */
    if (i < ready->len) {
        g_array_append_vals(list, &g_array_index(ready, Qcow2PendingFree, i),
                            ready->len - i);
    }
    g_array_free(ready, TRUE);
    return ret;
}

/*
 * Called by flush right after the L2 cache was written (s->lock held all
 * along): frees whose tables an earlier flush made durable take effect;
 * the frees queued until now wait for the flush of bs->file that follows.
 */
int coroutine_fn qcow2_apply_durable_frees(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t gen = bdrv_get_write_gen(bs->file);
    int ret = 0;

    if (s->frees_written->len &&
        bdrv_write_gen_is_durable(bs->file, s->frees_written_gen)) {
        ret = qcow2_apply_frees(bs, s->frees_written);
    }
    if (s->pending_frees->len) {
        g_array_append_vals(s->frees_written, s->pending_frees->data,
                            s->pending_frees->len);
        g_array_set_size(s->pending_frees, 0);
        s->frees_written_gen = gen;
        s->frees_checked_pending = s->frees_checked_written = 0;
    }
    return ret;
}

/*
 * Make every queued free take effect now (tables written and flushed).
 * For callers with no request in flight (close, snapshots, check).
 */
int coroutine_fn qcow2_settle_frees(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (!s->pending_frees->len && !s->frees_written->len) {
        return 0;
    }
    ret = table_cache_write(s->l2_cache);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret >= 0) {
        ret = qcow2_apply_frees(bs, s->frees_written);
    }
    if (ret >= 0) {
        ret = qcow2_apply_frees(bs, s->pending_frees);
    }
    return ret;
}

/*
 * Would the frees of list from entry *checked on free a cluster? Entries
 * found not to (they only drop a shared cluster's count) are not looked
 * at again: *checked moves past them.
 */
static bool coroutine_fn qcow2_frees_free_any(BlockDriverState *bs,
                                              GArray *list, guint *checked)
{
    BDRVQcow2State *s = bs->opaque;

    for (; *checked < list->len; (*checked)++) {
        Qcow2PendingFree *f = &g_array_index(list, Qcow2PendingFree,
                                             *checked);
        uint64_t first = f->offset >> s->cluster_bits;
        uint64_t end = qcow2_size_to_clusters(s, f->offset + f->bytes);

        for (uint64_t c = first; c < end; c++) {
            uint64_t rc;
            if (qcow2_get_refcount(bs, c, &rc) < 0 || rc <= 1) {
                return true;
            }
        }
    }
    return false;
}

/*
 * Before a data allocation: when queued frees would free clusters that
 * first-fit allocation reaches (as QEMU reuses freed clusters at once),
 * make the tables that dropped them durable and apply the frees, so the
 * allocation reuses them and no durable table names a reused cluster.
 * Frees that only drop a shared cluster's count cost nothing here.
 */
int coroutine_fn qcow2_settle_frees_for_reuse(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (!qcow2_frees_free_any(bs, s->pending_frees,
                              &s->frees_checked_pending) &&
        !qcow2_frees_free_any(bs, s->frees_written,
                              &s->frees_checked_written)) {
        return 0;
    }
    return qcow2_settle_frees(bs);
}

/* ---- setup ---- */

int coroutine_fn qcow2_refcount_init(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t bytes = (uint64_t)s->refcount_table_size * sizeof(uint64_t);
    int ret;

    s->pending_frees = g_array_new(FALSE, FALSE, sizeof(Qcow2PendingFree));
    s->frees_written = g_array_new(FALSE, FALSE, sizeof(Qcow2PendingFree));
    s->refcount_table = g_try_malloc0(MAX(bytes, 8));
    if (!s->refcount_table) {
        error_setg(errp, "Could not allocate the refcount table");
        return -ENOMEM;
    }
    if (bytes) {
        ret = bdrv_co_pread(bs->file, s->refcount_table_offset, bytes,
                            s->refcount_table, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not initialize refcount "
                             "handling");
            return ret;
        }
        for (uint32_t i = 0; i < s->refcount_table_size; i++) {
            s->refcount_table[i] = be64_to_cpu(s->refcount_table[i]);
        }
    }
    return 0;
}

void qcow2_refcount_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    g_free(s->refcount_table);
    s->refcount_table = NULL;
    if (s->pending_frees) {
        g_array_free(s->pending_frees, TRUE);
        g_array_free(s->frees_written, TRUE);
        s->pending_frees = s->frees_written = NULL;
    }
    g_free(s->meta_clusters);
    s->meta_clusters = NULL;
}

/* The last cluster with a nonzero refcount below file_size, or -1. */
int64_t coroutine_fn qcow2_get_last_cluster(BlockDriverState *bs,
                                            int64_t file_size)
{
    BDRVQcow2State *s = bs->opaque;

    for (int64_t i = qcow2_size_to_clusters(s, file_size) - 1; i >= 0; i--) {
        uint64_t rc;
        int ret = qcow2_get_refcount(bs, i, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc) {
            return i;
        }
    }
    return -1;
}

/*
 * Metadata preallocation: far more clusters are counted than the file
 * really occupies on the host. Then block status asks the file whether
 * allocated clusters read as zero (QEMU's heuristic, same threshold).
 */
int coroutine_fn qcow2_detect_metadata_prealloc(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t file_length = bdrv_getlength(bs->file);
    int64_t real = bdrv_get_allocated_file_size(bs->file);
    int64_t count = 0, threshold, end;

    if (file_length < 0 || real < 0) {
        return 0;
    }
    int64_t real_clusters = real / s->cluster_size;
    threshold = MAX(real_clusters * 10 / 9, real_clusters + 2);
    end = qcow2_size_to_clusters(s, file_length);
    for (int64_t i = 0; i < end && count < threshold; i++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(bs, i, &rc);
        if (ret < 0) {
            return ret;
        }
        count += rc != 0;
    }
    return count >= threshold;
}

/* ---- metadata overlap check ---- */

void qcow2_invalidate_meta_clusters(BDRVQcow2State *s)
{
    s->meta_clusters_valid = false;
}

/* Encoded as cluster index << 1 | (1 = refcount block, 0 = L2 table). */
static gint qcow2_u64_cmp(gconstpointer a, gconstpointer b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void qcow2_build_meta_clusters(BDRVQcow2State *s)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(uint64_t));

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t off = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (off) {
            uint64_t v = (off >> s->cluster_bits) << 1;
            g_array_append_val(a, v);
        }
    }
    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t off = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        if (off) {
            uint64_t v = ((off >> s->cluster_bits) << 1) | 1;
            g_array_append_val(a, v);
        }
    }
    g_array_sort(a, qcow2_u64_cmp);
    g_free(s->meta_clusters);
    s->nb_meta_clusters = a->len;
    s->meta_clusters = (uint64_t *)g_array_free(a, FALSE);
    s->meta_clusters_valid = true;
}

/* First L2 table / refcount block cluster in [first, last], if any. */
static int qcow2_overlap_cached(BDRVQcow2State *s, uint64_t first,
                                uint64_t last, int ignore)
{
    size_t lo = 0, hi = s->nb_meta_clusters;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((s->meta_clusters[mid] >> 1) < first) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for (; lo < s->nb_meta_clusters && (s->meta_clusters[lo] >> 1) <= last;
         lo++) {
        int type = (s->meta_clusters[lo] & 1) ? QCOW2_OL_REFCOUNT_BLOCK
                                              : QCOW2_OL_ACTIVE_L2;
        if ((s->overlap_check & type) && !(ignore & type)) {
            return type;
        }
    }
    return 0;
}

static bool qcow2_ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
                                 uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/*
 * Which metadata structure (QCOW2_OL_* bit, the first found) the host
 * range [offset, offset + size) overlaps, or 0.
 */
int qcow2_check_metadata_overlap(BlockDriverState *bs, int ignore,
                                 uint64_t offset, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    int chk = s->overlap_check & ~ignore;
    uint64_t cs = s->cluster_size;

    if (!size || !chk) {
        return 0;
    }
    if ((chk & QCOW2_OL_MAIN_HEADER) && offset < cs) {
        return QCOW2_OL_MAIN_HEADER;
    }
    /* Whole clusters, as the structures occupy them. */
    size = ROUND_UP(offset + size, cs) - qcow2_start_of_cluster(s, offset);
    offset = qcow2_start_of_cluster(s, offset);
    if ((chk & QCOW2_OL_ACTIVE_L1) &&
        qcow2_ranges_overlap(offset, size, s->l1_table_offset,
                             (uint64_t)s->l1_size * 8)) {
        return QCOW2_OL_ACTIVE_L1;
    }
    if ((chk & QCOW2_OL_REFCOUNT_TABLE) &&
        qcow2_ranges_overlap(offset, size, s->refcount_table_offset,
                             (uint64_t)s->refcount_table_size * 8)) {
        return QCOW2_OL_REFCOUNT_TABLE;
    }
    if ((chk & QCOW2_OL_SNAPSHOT_TABLE) &&
        qcow2_ranges_overlap(offset, size, s->snapshots_offset,
                             s->snapshots_size)) {
        return QCOW2_OL_SNAPSHOT_TABLE;
    }
    if (chk & QCOW2_OL_INACTIVE_L1) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            if (qcow2_ranges_overlap(offset, size,
                                     s->snapshots[i].l1_table_offset,
                                     (uint64_t)s->snapshots[i].l1_size * 8)) {
                return QCOW2_OL_INACTIVE_L1;
            }
        }
    }
    if ((chk & QCOW2_OL_BITMAP_DIRECTORY) && s->nb_bitmaps &&
        qcow2_ranges_overlap(offset, size, s->bitmap_directory_offset,
                             s->bitmap_directory_size)) {
        return QCOW2_OL_BITMAP_DIRECTORY;
    }
    if (chk & (QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_BLOCK)) {
        if (!s->meta_clusters_valid) {
            qcow2_build_meta_clusters(s);
        }
        int t = qcow2_overlap_cached(s, offset >> s->cluster_bits,
                                     (offset + size - 1) >> s->cluster_bits,
                                     ignore);
        if (t) {
            return t;
        }
    }
    return 0;
}

static const char *qcow2_overlap_name(int bit)
{
    switch (bit) {
    case QCOW2_OL_MAIN_HEADER:      return "qcow2_header";
    case QCOW2_OL_ACTIVE_L1:        return "active L1 table";
    case QCOW2_OL_ACTIVE_L2:        return "active L2 table";
    case QCOW2_OL_REFCOUNT_TABLE:   return "refcount table";
    case QCOW2_OL_REFCOUNT_BLOCK:   return "refcount block";
    case QCOW2_OL_SNAPSHOT_TABLE:   return "snapshot table";
    case QCOW2_OL_INACTIVE_L1:      return "inactive L1 table";
    case QCOW2_OL_INACTIVE_L2:      return "inactive L2 table";
    default:                        return "bitmap directory";
    }
}

/*
 * The L2 tables of the snapshots (overlap-check.inactive-l2, off by
 * default): every snapshot L1 table is read for each write, as QEMU does;
 * a snapshot L1 table that cannot be valid fails the write with its errno
 * (EFBIG too large, EINVAL bad offset), as in QEMU.
 */
static int coroutine_fn qcow2_overlap_inactive_l2(BlockDriverState *bs,
                                                  uint64_t offset,
                                                  uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;

    size = ROUND_UP(offset + size, cs) - qcow2_start_of_cluster(s, offset);
    offset = qcow2_start_of_cluster(s, offset);
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        uint64_t *l1;
        int ret;

        if (!sn->l1_size) {
            continue;
        }
        ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size,
                                   sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                                   "Snapshot L1 table", NULL);
        if (ret < 0) {
            return ret;
        }
        l1 = g_try_new(uint64_t, sn->l1_size);
        if (!l1) {
            return -ENOMEM;
        }
        ret = bdrv_co_pread(bs->file, sn->l1_table_offset,
                            (uint64_t)sn->l1_size * sizeof(uint64_t), l1, 0);
        for (uint32_t j = 0; ret >= 0 && j < sn->l1_size; j++) {
            uint64_t l2 = be64_to_cpu(l1[j]) & QCOW2_L1E_OFFSET_MASK;
            if (l2 && qcow2_ranges_overlap(offset, size, l2, cs)) {
                ret = QCOW2_OL_INACTIVE_L2;
            }
        }
        g_free(l1);
        if (ret != 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Refuse (and mark the image corrupt) a write to the image file that would
 * land on metadata other than what the caller writes (ignore): only a
 * corrupt table can point a guest cluster or a table there.
 */
int coroutine_fn qcow2_pre_write_overlap_check(BlockDriverState *bs,
                                               int ignore, uint64_t offset,
                                               uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    int bit;

    bit = qcow2_check_metadata_overlap(bs, ignore, offset, size);
    if (!bit && size && (s->overlap_check & ~ignore & QCOW2_OL_INACTIVE_L2)) {
        bit = qcow2_overlap_inactive_l2(bs, offset, size);
        if (bit < 0) {
            return bit;
        }
    }
    if (!bit) {
        return 0;
    }
    qcow2_signal_corruption(bs, true, offset, size, "Preventing invalid "
                            "write on metadata (overlaps with %s)",
                            qcow2_overlap_name(bit));
    return -EIO;
}
