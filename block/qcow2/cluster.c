/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 cluster mapping: L1/L2 lookups (with subclusters), L2 table
 * allocation and copy-on-write, the allocation plan of a write (in place,
 * same host cluster with new subcluster bits, or new host clusters with
 * copy-on-write regions), linking finished allocations into the L2 tables,
 * zero and discard of whole (sub)clusters, and L1 table growth.
 *
 * All functions run with s->lock held; they may yield (the table caches
 * load and write pages) but the lock keeps other metadata users out.
 */
#include "block/qcow2/qcow2.h"

/* ---- L2 entries ---- */

uint64_t qcow2_l2_entry(BDRVQcow2State *s, void *page, uint32_t idx)
{
    uint64_t v;
    memcpy(&v, (uint8_t *)page + ((size_t)idx << s->l2_entry_shift), 8);
    return be64_to_cpu(v);
}

uint64_t qcow2_l2_bitmap(BDRVQcow2State *s, void *page, uint32_t idx)
{
    uint64_t v;
    if (!s->extended_l2) {
        return 0;
    }
    memcpy(&v, (uint8_t *)page + ((size_t)idx << s->l2_entry_shift) + 8, 8);
    return be64_to_cpu(v);
}

void qcow2_set_l2_entry(BDRVQcow2State *s, void *page, uint32_t idx,
                        uint64_t entry)
{
    uint64_t v = cpu_to_be64(entry);
    memcpy((uint8_t *)page + ((size_t)idx << s->l2_entry_shift), &v, 8);
}

void qcow2_set_l2_bitmap(BDRVQcow2State *s, void *page, uint32_t idx,
                         uint64_t bitmap)
{
    uint64_t v = cpu_to_be64(bitmap);
    assert(s->extended_l2);
    memcpy((uint8_t *)page + ((size_t)idx << s->l2_entry_shift) + 8, &v, 8);
}

/* Does the entry name a host cluster (with an external data file, COPIED
 * and offset 0 name host cluster 0)? */
bool qcow2_entry_has_host(BlockDriverState *bs, uint64_t entry)
{
    BDRVQcow2State *s = bs->opaque;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return false;
    }
    return (entry & QCOW2_L2E_OFFSET_MASK) ||
           (s->external_data && (entry & QCOW2_OFLAG_COPIED));
}

Qcow2SubclusterType qcow2_sc_type(BlockDriverState *bs, uint64_t entry,
                                  uint64_t bitmap, unsigned sc)
{
    BDRVQcow2State *s = bs->opaque;
    bool host = qcow2_entry_has_host(bs, entry);

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_SC_COMPRESSED;
    }
    if (!s->extended_l2) {
        if (entry & QCOW2_OFLAG_ZERO) {
            return host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        }
        return host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED_PLAIN;
    }
    bool alloc = bitmap & QCOW2_SC_ALLOC(sc);
    bool zero = bitmap & QCOW2_SC_ZERO(sc);
    if ((bitmap >> 32) & bitmap) {
        return QCOW2_SC_INVALID;        /* a subcluster both allocated and zero */
    }
    if (host) {
        return alloc ? QCOW2_SC_NORMAL : zero ? QCOW2_SC_ZERO_ALLOC
                                              : QCOW2_SC_UNALLOCATED_ALLOC;
    }
    if (alloc) {
        return QCOW2_SC_INVALID;
    }
    return zero ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOCATED_PLAIN;
}

/* Host byte range of a compressed cluster descriptor (whole sectors). */
void qcow2_parse_compressed(BDRVQcow2State *s, uint64_t entry,
                            uint64_t *host, uint64_t *bytes)
{
    uint64_t off = entry & s->cluster_offset_mask;
    uint64_t nb_sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;

    *host = off & ~(uint64_t)(QCOW2_COMPRESSED_SECTOR - 1);
    *bytes = nb_sectors * QCOW2_COMPRESSED_SECTOR;
}

/* ---- locating L2 slices ---- */

static uint64_t qcow2_l1_index(BDRVQcow2State *s, uint64_t offset)
{
    return offset >> (s->l2_bits + s->cluster_bits);
}

static uint32_t qcow2_l2_index(BDRVQcow2State *s, uint64_t offset)
{
    return (offset >> s->cluster_bits) & (s->l2_size - 1);
}

/* Guest bytes from offset to the end of its L2 slice. */
static uint64_t qcow2_bytes_to_slice_end(BDRVQcow2State *s, uint64_t offset)
{
    uint32_t in_slice = qcow2_l2_index(s, offset) & (s->l2_slice_size - 1);
    return ((uint64_t)(s->l2_slice_size - in_slice) << s->cluster_bits) -
           qcow2_offset_into_cluster(s, offset);
}

/* The L2 table offset of an L1 entry, checked. 0 if none. */
static int qcow2_l2_offset(BlockDriverState *bs, uint64_t l1_index,
                           uint64_t *l2_offset)
{
    BDRVQcow2State *s = bs->opaque;

    *l2_offset = 0;
    if (l1_index >= s->l1_size) {
        return 0;
    }
    uint64_t off = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
    if (off && qcow2_offset_into_cluster(s, off)) {
        qcow2_signal_corruption(bs, true, -1, -1, "L2 table offset %#" PRIx64
                                " unaligned (L1 index: %#" PRIx64 ")", off,
                                l1_index);
        return -EIO;
    }
    *l2_offset = off;
    return 0;
}

/* Pin the slice of table l2_offset holding the entry of guest offset. */
static int coroutine_fn qcow2_l2_slice_at(BlockDriverState *bs,
                                          uint64_t l2_offset,
                                          uint64_t offset, Qcow2L2Slice *sl)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t l2_index = qcow2_l2_index(s, offset);
    uint64_t page_off = l2_offset + (uint64_t)(l2_index / s->l2_slice_size) *
                        s->l2_slice_bytes;

    sl->index = l2_index % s->l2_slice_size;
    return table_cache_get(s->l2_cache, page_off, &sl->page);
}

static void qcow2_l2_put(BDRVQcow2State *s, Qcow2L2Slice *sl)
{
    if (sl->page) {
        table_cache_put(s->l2_cache, &sl->page);
    }
}

/* Slice for reading: sl->page is NULL when no L2 table exists. */
static int coroutine_fn qcow2_get_l2_slice_ro(BlockDriverState *bs,
                                              uint64_t offset,
                                              Qcow2L2Slice *sl,
                                              uint64_t *l2_offset_out)
{
    uint64_t l2_offset;
    int ret;

    sl->page = NULL;
    ret = qcow2_l2_offset(bs, qcow2_l1_index(bs->opaque, offset), &l2_offset);
    if (ret < 0 || !l2_offset) {
        return ret;
    }
    if (l2_offset_out) {
        *l2_offset_out = l2_offset;
    }
    return qcow2_l2_slice_at(bs, l2_offset, offset, sl);
}

/* ---- L1 table ---- */

/* Write the 512-byte group of L1 entries that holds index. */
int coroutine_fn qcow2_write_l1_entry(BlockDriverState *bs, uint32_t index)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t per_sector = 512 / sizeof(uint64_t);
    uint32_t first = index & ~(per_sector - 1);
    uint64_t buf[64] = { 0 };
    int ret;

    for (uint32_t i = 0; i < per_sector && first + i < s->l1_size; i++) {
        buf[i] = cpu_to_be64(s->l1_table[first + i]);
    }
    ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L1,
                                        s->l1_table_offset + first * 8,
                                        sizeof(buf));
    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, "l1_update");
    return bdrv_co_pwrite(bs->file, s->l1_table_offset + first * 8,
                          sizeof(buf), buf, 0);
}

/*
 * Make the L1 table hold at least min_size entries: a new table (copy plus
 * zeroes) goes to new clusters, then the header names it (commit), then
 * the old one is freed. exact: exactly min_size, else grow by half.
 */
int coroutine_fn qcow2_grow_l1_table(BlockDriverState *bs, uint64_t min_size,
                                     bool exact)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t new_size;
    int64_t new_offset;
    uint64_t *table;
    int ret;

    if (min_size <= s->l1_size) {
        return 0;
    }
    if (exact) {
        new_size = min_size;
    } else {
        new_size = MAX(s->l1_size, 1);
        while (min_size > new_size) {
            new_size = DIV_ROUND_UP(new_size * 3, 2);
        }
    }
    if (new_size > QCOW2_MAX_L1_SIZE / sizeof(uint64_t)) {
        return -EFBIG;
    }
    size_t bytes = new_size * sizeof(uint64_t);
    table = qemu_blockalign(ROUND_UP(bytes, 512));
    memset(table, 0, ROUND_UP(bytes, 512));
    for (uint32_t i = 0; i < s->l1_size; i++) {
        table[i] = cpu_to_be64(s->l1_table[i]);
    }
    BLKDBG_EVENT(bs->file, "l1_grow_alloc_table");
    new_offset = qcow2_alloc_clusters(bs, bytes);
    if (new_offset < 0) {
        qemu_vfree(table);
        return new_offset;
    }
    /* The new table's refcount, then the table, are durable first. */
    ret = table_cache_flush(s->refcount_cache);
    if (ret >= 0) {
        ret = qcow2_pre_write_overlap_check(bs, 0, new_offset, bytes);
    }
    if (ret >= 0) {
        BLKDBG_EVENT(bs->file, "l1_grow_write_table");
        ret = bdrv_co_pwrite(bs->file, new_offset, bytes, table, 0);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret >= 0) {
        struct QEMU_PACKED {
            uint32_t l1_size;
            uint64_t l1_offset;
        } hdr = { cpu_to_be32(new_size), cpu_to_be64(new_offset) };
        BLKDBG_EVENT(bs->file, "l1_grow_activate_table");
        ret = bdrv_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, l1_size),
                             sizeof(hdr), &hdr, 0);
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
    }
    if (ret < 0) {
        qemu_vfree(table);
        qcow2_free_clusters(bs, new_offset, bytes);
        return ret;
    }
    uint64_t old_offset = s->l1_table_offset;
    uint64_t old_bytes = (uint64_t)s->l1_size * sizeof(uint64_t);
    for (uint64_t i = 0; i < new_size; i++) {
        table[i] = be64_to_cpu(table[i]);
    }
    qemu_vfree(s->l1_table);
    s->l1_table = table;
    s->l1_table_offset = new_offset;
    s->l1_size = new_size;
    qcow2_invalidate_meta_clusters(s);
    if (old_bytes) {
        /* The header no longer names it (durably). */
        qcow2_free_clusters(bs, old_offset, old_bytes);
    }
    return 0;
}

/*
 * Drop the L2 tables past new_l1_size (their clusters were discarded):
 * the L1 entries are zeroed durably first, then the tables are freed.
 */
int coroutine_fn qcow2_shrink_l1_table(BlockDriverState *bs,
                                       uint64_t new_l1_size)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (new_l1_size >= s->l1_size) {
        return 0;
    }
    ret = table_cache_flush(s->l2_cache);
    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, "l1_shrink_write_table");
    ret = bdrv_co_pwrite_zeroes(bs->file, s->l1_table_offset +
                                new_l1_size * sizeof(uint64_t),
                                (s->l1_size - new_l1_size) * sizeof(uint64_t),
                                0);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = new_l1_size; i < s->l1_size; i++) {
        uint64_t off = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        s->l1_table[i] = 0;
        if (off) {
            qcow2_free_clusters(bs, off, s->cluster_size);
        }
    }
    qcow2_invalidate_meta_clusters(s);
    return 0;
}

/* ---- L2 tables for writing ---- */

/*
 * A private L2 table for l1_index (new, or a copy of a shared one): its
 * slices are filled in the cache, the cache is written (the refcount of
 * the new cluster first), then the L1 entry is switched. The old shared
 * table loses one reference once the L1 change is durable.
 */
static int coroutine_fn qcow2_l2_allocate(BlockDriverState *bs,
                                          uint64_t l1_index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old_off = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
    int64_t new_off;
    int ret;

    new_off = qcow2_alloc_clusters(bs, s->cluster_size);
    if (new_off < 0) {
        return new_off;
    }
    if (new_off == 0) {
        /* Cluster 0 (the header) had refcount 0: a corrupt refcount. */
        qcow2_signal_corruption(bs, true, -1, -1, "Preventing invalid "
                                "allocation of L2 table at offset 0");
        return -EIO;
    }
    /* The table's refcount is made durable now even with lazy refcounts
     * (as QEMU does): only data clusters' refcounts are ever stale. */
    ret = table_cache_flush(s->refcount_cache);
    if (ret < 0) {
        goto fail;
    }
    for (uint32_t off = 0; off < s->cluster_size; off += s->l2_slice_bytes) {
        void *page, *old = NULL;
        if (old_off) {
            BLKDBG_EVENT(bs->file, "l2_alloc_cow_read");
            ret = table_cache_get(s->l2_cache, old_off + off, &old);
            if (ret < 0) {
                goto fail;
            }
        }
        ret = table_cache_get_empty(s->l2_cache, new_off + off, &page);
        if (ret < 0) {
            if (old) {
                table_cache_put(s->l2_cache, &old);
            }
            goto fail;
        }
        if (old) {
            memcpy(page, old, s->l2_slice_bytes);
            table_cache_put(s->l2_cache, &old);
        } else {
            memset(page, 0, s->l2_slice_bytes);
        }
        table_cache_mark_dirty(s->l2_cache, page);
        table_cache_put(s->l2_cache, &page);
    }
    BLKDBG_EVENT(bs->file, "l2_alloc_write");
    ret = table_cache_flush(s->l2_cache);
    if (ret < 0) {
        goto fail;
    }
    s->l1_table[l1_index] = new_off | QCOW2_OFLAG_COPIED;
    qcow2_invalidate_meta_clusters(s);
    ret = qcow2_write_l1_entry(bs, l1_index);
    if (ret < 0) {
        s->l1_table[l1_index] = old_off ? old_off : 0;
        qcow2_invalidate_meta_clusters(s);
        goto fail;
    }
    if (old_off) {
        qcow2_free_deferred(bs, old_off, s->cluster_size, false);
    }
    return 0;

fail:
    qcow2_discard_metadata_cache(bs, new_off, s->cluster_size);
    qcow2_free_clusters(bs, new_off, s->cluster_size);
    return ret;
}

/*
 * Slice for changing entries: the L2 table is made private first (and the
 * L1 table grown if the offset is past it, e.g. VM state).
 */
static int coroutine_fn qcow2_get_l2_slice_rw(BlockDriverState *bs,
                                              uint64_t offset,
                                              Qcow2L2Slice *sl)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1_index = qcow2_l1_index(s, offset);
    uint64_t l2_offset;
    int ret;

    sl->page = NULL;
    if (s->use_lazy_refcounts) {
        /* Tables may now reach the disk before their refcounts. */
        ret = qcow2_mark_dirty(bs);
        if (ret < 0) {
            return ret;
        }
    }
    if (l1_index >= s->l1_size) {
        ret = qcow2_grow_l1_table(bs, l1_index + 1, false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_l2_offset(bs, l1_index, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    if (!l2_offset || !(s->l1_table[l1_index] & QCOW2_OFLAG_COPIED)) {
        ret = qcow2_l2_allocate(bs, l1_index);
        if (ret < 0) {
            return ret;
        }
        l2_offset = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
    }
    return qcow2_l2_slice_at(bs, l2_offset, offset, sl);
}

/* ---- lookups ---- */

/* The subclusters of an extended entry whose type (qcow2_sc_type) is t,
 * as a mask (bit i: subcluster i). */
static uint32_t qcow2_sc_mask(BlockDriverState *bs, uint64_t entry,
                              uint64_t bitmap, Qcow2SubclusterType t)
{
    uint32_t alloc = bitmap, zero = bitmap >> 32;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return t == QCOW2_SC_COMPRESSED ? UINT32_MAX : 0;
    }
    if (alloc & zero) {
        return t == QCOW2_SC_INVALID ? UINT32_MAX : 0;
    }
    if (qcow2_entry_has_host(bs, entry)) {
        switch (t) {
        case QCOW2_SC_NORMAL:
            return alloc;
        case QCOW2_SC_ZERO_ALLOC:
            return zero;
        case QCOW2_SC_UNALLOCATED_ALLOC:
            return ~(alloc | zero);
        default:
            return 0;
        }
    }
    switch (t) {
    case QCOW2_SC_INVALID:
        return alloc;
    case QCOW2_SC_ZERO_PLAIN:
        return zero;
    case QCOW2_SC_UNALLOCATED_PLAIN:
        return ~(alloc | zero);
    default:
        return 0;
    }
}

/* Subclusters of entry from sc on that share type t (and the count up to
 * the end of the cluster). */
static unsigned qcow2_count_sc(BlockDriverState *bs, uint64_t entry,
                               uint64_t bitmap, unsigned sc,
                               Qcow2SubclusterType t)
{
    BDRVQcow2State *s = bs->opaque;

    if (t == QCOW2_SC_COMPRESSED || !s->extended_l2) {
        return s->subclusters_per_cluster - sc;
    }
    /* the run of ones from bit sc; bits past 31 are ones after the ~ */
    uint64_t rest = (uint64_t)qcow2_sc_mask(bs, entry, bitmap, t) >> sc;
    return __builtin_ctzll(~rest);
}

static int qcow2_check_host(BlockDriverState *bs, uint64_t entry,
                            uint64_t guest_cluster, uint64_t l2_offset,
                            uint32_t l2_index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t host = entry & QCOW2_L2E_OFFSET_MASK;

    if (qcow2_offset_into_cluster(s, host)) {
        qcow2_signal_corruption(bs, true, -1, -1, "Cluster allocation "
                                "offset %#" PRIx64 " unaligned (L2 offset: %#"
                                PRIx64 ", L2 index: %#" PRIx32 ")", host,
                                l2_offset, l2_index);
        return -EIO;
    }
    if (s->external_data && host != guest_cluster) {
        qcow2_signal_corruption(bs, true, -1, -1, "External data file host "
                                "cluster offset %#" PRIx64 " does not match "
                                "guest cluster offset: %#" PRIx64
                                ", L2 index: %#" PRIx32 ")", host,
                                guest_cluster, l2_index);
        return -EIO;
    }
    return 0;
}

/*
 * Map guest offset: the type of its subcluster, and how many of the
 * *bytes that follow share that type (and, when data is on the host,
 * lie contiguously there). *host is the host offset of offset for types
 * with a host cluster, the raw descriptor for compressed clusters.
 * Never crosses an L2 slice.
 */
int coroutine_fn qcow2_get_host_offset(BlockDriverState *bs, uint64_t offset,
                                       uint64_t *bytes, uint64_t *host,
                                       Qcow2SubclusterType *type)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_into_cluster(s, offset);
    uint64_t guest_cluster = offset - in_cluster;
    uint64_t l2_offset = 0, avail;
    Qcow2L2Slice sl;
    int ret;

    *host = 0;
    avail = qcow2_bytes_to_slice_end(s, offset);
    ret = qcow2_get_l2_slice_ro(bs, offset, &sl, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    if (!sl.page) {
        *type = QCOW2_SC_UNALLOCATED_PLAIN;
        *bytes = MIN(*bytes, avail);
        return 0;
    }
    uint64_t entry = qcow2_l2_entry(s, sl.page, sl.index);
    uint64_t bitmap = qcow2_l2_bitmap(s, sl.page, sl.index);
    unsigned sc = qcow2_sc_index(s, offset);
    Qcow2SubclusterType t = qcow2_sc_type(bs, entry, bitmap, sc);
    uint32_t l2_index = qcow2_l2_index(s, offset);

    if (t == QCOW2_SC_INVALID) {
        qcow2_l2_put(s, &sl);
        /* Two spaces, as QEMU's read path prints it. */
        qcow2_signal_corruption(bs, true, -1, -1, "Invalid cluster entry "
                                "found  (L2 offset: %#" PRIx64 ", L2 index: "
                                "%#" PRIx32 ")", l2_offset, l2_index);
        return -EIO;
    }
    if (t == QCOW2_SC_COMPRESSED) {
        qcow2_l2_put(s, &sl);
        if (s->external_data) {
            qcow2_signal_corruption(bs, true, -1, -1, "Compressed cluster "
                                    "entry found in image with external "
                                    "data file (L2 offset: %#" PRIx64
                                    ", L2 index: %#" PRIx32 ")", l2_offset,
                                    l2_index);
            return -EIO;
        }
        *type = t;
        *host = entry & QCOW2_L2E_COMPRESSED_MASK;
        *bytes = MIN(*bytes, s->cluster_size - in_cluster);
        return 0;
    }
    bool has_host = t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
                    t == QCOW2_SC_UNALLOCATED_ALLOC;
    uint64_t host_cluster = entry & QCOW2_L2E_OFFSET_MASK;
    if (has_host) {
        ret = qcow2_check_host(bs, entry, guest_cluster, l2_offset, l2_index);
        if (ret < 0) {
            qcow2_l2_put(s, &sl);
            return ret;
        }
        *host = host_cluster + in_cluster;
    }
    /* Count subclusters: this cluster, then whole following ones. */
    uint64_t want = MIN(*bytes, avail);
    uint64_t covered = (uint64_t)qcow2_count_sc(bs, entry, bitmap, sc, t) <<
                       s->subcluster_bits;
    covered -= offset & (s->subcluster_size - 1);
    uint32_t i = sl.index + 1;
    uint64_t expect = host_cluster + s->cluster_size;
    while (covered < want && i < s->l2_slice_size &&
           covered == s->cluster_size - in_cluster +
           ((uint64_t)(i - sl.index - 1) << s->cluster_bits)) {
        uint64_t e = qcow2_l2_entry(s, sl.page, i);
        uint64_t b = qcow2_l2_bitmap(s, sl.page, i);
        if (qcow2_sc_type(bs, e, b, 0) != t ||
            (has_host && (e & QCOW2_L2E_OFFSET_MASK) != expect)) {
            break;
        }
        if (has_host && s->external_data &&
            (e & QCOW2_L2E_OFFSET_MASK) != guest_cluster +
            ((uint64_t)(i - sl.index) << s->cluster_bits)) {
            break;
        }
        covered += (uint64_t)qcow2_count_sc(bs, e, b, 0, t) <<
                   s->subcluster_bits;
        expect += s->cluster_size;
        i++;
    }
    qcow2_l2_put(s, &sl);
    *type = t;
    *bytes = MIN(want, covered);
    return 0;
}

/* ---- allocations in flight ---- */

/* The first in-flight allocation overlapping guest clusters [start, end). */
static Qcow2Alloc *qcow2_alloc_overlap(BDRVQcow2State *s, uint64_t start,
                                       uint64_t end)
{
    Qcow2Alloc *first = NULL;

    for (Qcow2Alloc *a = s->allocs; a; a = a->next) {
        uint64_t a_end = a->guest_offset + (a->nb_clusters <<
                                            s->cluster_bits);
        if (a->guest_offset < end && start < a_end &&
            (!first || a->guest_offset < first->guest_offset)) {
            first = a;
        }
    }
    return first;
}

/* Wait until no allocation touches the clusters of [offset, +bytes). */
int coroutine_fn qcow2_wait_allocs(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t start = qcow2_start_of_cluster(s, offset);
    uint64_t end = ROUND_UP(offset + bytes, (uint64_t)s->cluster_size);
    Qcow2Alloc *a;

    while ((a = qcow2_alloc_overlap(s, start, end))) {
        qemu_co_queue_wait(&a->dependent, &s->lock);
    }
    return 0;
}

static Qcow2Alloc *qcow2_alloc_register(BDRVQcow2State *s,
                                        uint64_t guest_offset,
                                        uint64_t host_offset,
                                        uint64_t nb_clusters, bool keep_old)
{
    Qcow2Alloc *m = g_new0(Qcow2Alloc, 1);

    m->guest_offset = guest_offset;
    m->host_offset = host_offset;
    m->nb_clusters = nb_clusters;
    m->keep_old = keep_old;
    qemu_co_queue_init(&m->dependent);
    m->next = s->allocs;
    s->allocs = m;
    return m;
}

/* Take m off the in-flight list, wake its waiters and free it. */
void qcow2_alloc_finish(BlockDriverState *bs, Qcow2Alloc *m)
{
    BDRVQcow2State *s = bs->opaque;

    for (Qcow2Alloc **p = &s->allocs; *p; p = &(*p)->next) {
        if (*p == m) {
            *p = m->next;
            break;
        }
    }
    qemu_co_queue_restart_all(&m->dependent);
    g_free(m);
}

/* The write failed: return the new clusters (never linked). */
void qcow2_alloc_abort(BlockDriverState *bs, Qcow2Alloc *m)
{
    BDRVQcow2State *s = bs->opaque;

    if (!m->keep_old && !s->external_data) {
        qcow2_free_clusters(bs, m->host_offset,
                            m->nb_clusters << s->cluster_bits);
    }
}

/* ---- planning a write ---- */

/* Can the bytes [from, to) of the cluster with this entry be written in
 * place (ours alone, and every touched subcluster allocated)? */
static bool qcow2_in_place(BlockDriverState *bs, uint64_t entry,
                           uint64_t bitmap, uint64_t from, uint64_t to)
{
    BDRVQcow2State *s = bs->opaque;

    if (!qcow2_entry_has_host(bs, entry) || !(entry & QCOW2_OFLAG_COPIED)) {
        return false;
    }
    if (!s->extended_l2) {
        return !(entry & QCOW2_OFLAG_ZERO);
    }
    unsigned a = from >> s->subcluster_bits;
    unsigned b = (to + s->subcluster_size - 1) >> s->subcluster_bits;
    uint64_t need = QCOW2_SC_ALLOC_RANGE(a, b);
    return (bitmap & need) == need;
}

/* Host cluster kept (ours, only its L2 bits change) or a new one? */
static bool qcow2_keeps_host(BlockDriverState *bs, uint64_t entry)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->external_data) {
        return true;
    }
    return qcow2_entry_has_host(bs, entry) && (entry & QCOW2_OFLAG_COPIED);
}

/* Does a new allocation have to copy the whole old cluster (its data)? */
static bool qcow2_old_has_data(BlockDriverState *bs, uint64_t entry)
{
    return (entry & QCOW2_OFLAG_COMPRESSED) ||
           (qcow2_entry_has_host(bs, entry) && !qcow2_keeps_host(bs, entry));
}

/* Run of in-place clusters from the first: bytes covered (0 if none). */
static uint64_t qcow2_in_place_run(BlockDriverState *bs, Qcow2L2Slice *sl,
                                   uint64_t offset, uint64_t bytes,
                                   uint64_t *host)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_into_cluster(s, offset);
    uint64_t covered = 0, expect = 0;

    for (uint32_t i = sl->index; i < s->l2_slice_size && covered < bytes;
         i++) {
        uint64_t e = qcow2_l2_entry(s, sl->page, i);
        uint64_t b = qcow2_l2_bitmap(s, sl->page, i);
        uint64_t from = i == sl->index ? in_cluster : 0;
        uint64_t to = MIN((uint64_t)s->cluster_size, from + bytes - covered);
        uint64_t h = e & QCOW2_L2E_OFFSET_MASK;

        if (!qcow2_in_place(bs, e, b, from, to) ||
            (i != sl->index && h != expect) ||
            qcow2_offset_into_cluster(s, h)) {
            break;
        }
        if (i == sl->index) {
            *host = h + in_cluster;
        }
        expect = h + s->cluster_size;
        covered += to - from;
    }
    return covered;
}

/*
 * Does a cluster that keeps its host cluster but is not written in place
 * (a preallocated zero cluster, unallocated subclusters) follow the
 * in-place run of `run` bytes, at the next host cluster? QEMU then writes
 * the run and it as one request and links them together afterwards.
 */
static bool qcow2_kept_follows(BlockDriverState *bs, Qcow2L2Slice *sl,
                               uint64_t offset, uint64_t run, uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_into_cluster(s, offset);
    uint64_t i = sl->index + ((in_cluster + run) >> s->cluster_bits);

    if (run >= bytes || i >= s->l2_slice_size) {
        return false;
    }
    uint64_t e = qcow2_l2_entry(s, sl->page, i);
    uint64_t first = qcow2_l2_entry(s, sl->page, sl->index);
    if (!qcow2_keeps_host(bs, e)) {
        return false;
    }
    if (s->external_data) {
        return true;
    }
    return (e & QCOW2_L2E_OFFSET_MASK) ==
           (first & QCOW2_L2E_OFFSET_MASK) +
           ((i - sl->index) << s->cluster_bits);
}

/*
 * Copy-on-write regions of an allocation of n clusters starting at the
 * cluster of offset, for the guest bytes [offset, offset + bytes): the
 * untouched parts of the first and last cluster that must be carried over
 * (whole clusters when the old cluster held data we do not keep, else
 * only up to subcluster boundaries).
 */
static void qcow2_plan_cow(BlockDriverState *bs, Qcow2Alloc *m,
                           uint64_t offset, uint64_t bytes,
                           uint64_t first_entry, uint64_t first_bitmap,
                           uint64_t last_entry, uint64_t last_bitmap)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t start = qcow2_offset_into_cluster(s, offset);
    uint64_t end = start + bytes;       /* relative to m->guest_offset */
    uint64_t last_base = (m->nb_clusters - 1) << s->cluster_bits;
    uint64_t from, to;

    /*
     * An old cluster with data is copied whole, except (QEMU's rule, so
     * that the bitmaps match) that with subclusters the copy skips the
     * leading and trailing subclusters not allocated in it.
     */
    if (!m->keep_old && qcow2_old_has_data(bs, first_entry)) {
        from = 0;
        if (s->extended_l2 && !(first_entry & QCOW2_OFLAG_COMPRESSED)) {
            uint32_t alloc = first_bitmap & QCOW2_SC_ALL_ALLOC;
            unsigned sc = start >> s->subcluster_bits;
            unsigned first_alloc = alloc ? __builtin_ctz(alloc) : 32;
            from = (uint64_t)MIN(sc, first_alloc) << s->subcluster_bits;
        }
    } else if (m->keep_old &&
               qcow2_sc_type(bs, first_entry, first_bitmap,
                             start >> s->subcluster_bits) == QCOW2_SC_NORMAL) {
        /* Kept data before the write stays where it is (QEMU's). */
        from = start;
    } else {
        from = QEMU_ALIGN_DOWN(start, (uint64_t)s->subcluster_size);
    }
    if (!m->keep_old && qcow2_old_has_data(bs, last_entry)) {
        to = last_base + s->cluster_size;
        if (s->extended_l2 && !(last_entry & QCOW2_OFLAG_COMPRESSED)) {
            uint32_t alloc = last_bitmap & QCOW2_SC_ALL_ALLOC;
            unsigned sc = ((end - 1) & (s->cluster_size - 1)) >>
                          s->subcluster_bits;
            unsigned trailing = alloc ? __builtin_clz(alloc) : 32;
            to -= (uint64_t)MIN(31 - sc, trailing) << s->subcluster_bits;
        }
    } else if (m->keep_old &&
               qcow2_sc_type(bs, last_entry, last_bitmap,
                             ((end - 1) & (s->cluster_size - 1)) >>
                             s->subcluster_bits) == QCOW2_SC_NORMAL) {
        to = end;
    } else {
        to = ROUND_UP(end, (uint64_t)s->subcluster_size);
    }
    m->cow_start = (Qcow2CowRegion) { from, start - from };
    m->cow_end = (Qcow2CowRegion) { end, to - end };
}

/*
 * Plan the write of [offset, offset + *bytes): either a run written in
 * place (*alloc = NULL) or one allocation (*alloc set and registered, its
 * clusters counted). *bytes shrinks to what this step covers (within one
 * L2 slice, stopping before other allocations in flight); *host is where
 * the guest bytes go.
 */
int coroutine_fn qcow2_alloc_host_offset(BlockDriverState *bs,
                                         uint64_t offset, uint64_t *bytes,
                                         uint64_t *host, Qcow2Alloc **alloc)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t in_cluster = qcow2_offset_into_cluster(s, offset);
    uint64_t guest_cluster = offset - in_cluster;
    Qcow2L2Slice sl = { 0 };
    int ret;

    *alloc = NULL;
    for (;;) {
        *bytes = MIN(*bytes, qcow2_bytes_to_slice_end(s, offset));
        Qcow2Alloc *a = qcow2_alloc_overlap(s, guest_cluster,
                                            ROUND_UP(offset + *bytes,
                                                     (uint64_t)s->cluster_size));
        if (!a) {
            break;
        }
        if (a->guest_offset <= guest_cluster) {
            qemu_co_queue_wait(&a->dependent, &s->lock);
            continue;
        }
        *bytes = a->guest_offset - offset;
        break;
    }

    /* In place: no metadata changes at all. */
    ret = qcow2_get_l2_slice_ro(bs, offset, &sl, NULL);
    if (ret < 0) {
        return ret;
    }
    if (sl.page && s->extended_l2) {
        /* A kept or unallocated cluster with a subcluster both allocated
         * and zero, or an unallocated one with allocated subclusters, is
         * refused, as QEMU's write path does (one space in its message). */
        uint64_t covered = 0;
        for (uint32_t i = sl.index; i < s->l2_slice_size && covered < *bytes;
             i++) {
            uint64_t e = qcow2_l2_entry(s, sl.page, i);
            uint64_t b = qcow2_l2_bitmap(s, sl.page, i);
            covered += i == sl.index ? s->cluster_size - in_cluster
                                     : s->cluster_size;
            bool host = qcow2_entry_has_host(bs, e);
            /* Also an unallocated cluster with allocated subclusters. */
            if (!(e & QCOW2_OFLAG_COMPRESSED) &&
                ((((b >> 32) & b) && (!host || (e & QCOW2_OFLAG_COPIED))) ||
                 (!host && (b & 0xffffffffu)))) {
                uint64_t l2_offset = s->l1_table[qcow2_l1_index(s, offset)] &
                                     QCOW2_L1E_OFFSET_MASK;
                uint32_t l2_index = qcow2_l2_index(s, offset) +
                                    (i - sl.index);
                qcow2_l2_put(s, &sl);
                qcow2_signal_corruption(bs, true, -1, -1, "Invalid cluster "
                                        "entry found (L2 offset: %#" PRIx64
                                        ", L2 index: %#" PRIx32 ")",
                                        l2_offset, l2_index);
                return -EIO;
            }
        }
    }
    if (sl.page && (s->l1_table[qcow2_l1_index(s, offset)] &
                    QCOW2_OFLAG_COPIED)) {
        uint64_t n = qcow2_in_place_run(bs, &sl, offset, *bytes, host);
        if (n && !qcow2_kept_follows(bs, &sl, offset, n, *bytes)) {
            qcow2_l2_put(s, &sl);
            if (s->external_data) {
                *host = offset;
            }
            *bytes = n;
            return 0;
        }
    }
    qcow2_l2_put(s, &sl);

    /* Allocation: a private L2 table first. */
    ret = qcow2_get_l2_slice_rw(bs, offset, &sl);
    if (ret < 0) {
        return ret;
    }
    uint64_t first = qcow2_l2_entry(s, sl.page, sl.index);
    uint64_t first_bitmap = qcow2_l2_bitmap(s, sl.page, sl.index);
    bool keep = qcow2_keeps_host(bs, first);
    uint64_t n = 0, covered = 0, last = first, last_bitmap = first_bitmap;
    uint64_t keep_host = first & QCOW2_L2E_OFFSET_MASK;

    for (uint32_t i = sl.index; i < s->l2_slice_size && covered < *bytes;
         i++) {
        uint64_t e = qcow2_l2_entry(s, sl.page, i);
        uint64_t b = qcow2_l2_bitmap(s, sl.page, i);
        uint64_t from = i == sl.index ? in_cluster : 0;
        uint64_t to = MIN((uint64_t)s->cluster_size,
                          from + *bytes - covered);
        /* A kept run may hold in-place clusters (one request, QEMU's). */
        if (i != sl.index && ((!keep && qcow2_in_place(bs, e, b, from, to)) ||
                              qcow2_keeps_host(bs, e) != keep ||
                              (keep && !s->external_data &&
                               (e & QCOW2_L2E_OFFSET_MASK) !=
                               keep_host + (n << s->cluster_bits)))) {
            break;
        }
        if (keep && !s->external_data &&
            qcow2_offset_into_cluster(s, e & QCOW2_L2E_OFFSET_MASK)) {
            break;
        }
        last = e;
        last_bitmap = b;
        covered += to - from;
        n++;
    }
    qcow2_l2_put(s, &sl);
    if (n == 0) {
        /* First entry has an unaligned host offset. */
        qcow2_signal_corruption(bs, true, -1, -1, "Cluster allocation offset "
                                "%#" PRIx64 " unaligned (L2 offset: n/a, L2 "
                                "index: %#" PRIx32 ")", keep_host,
                                qcow2_l2_index(s, offset));
        return -EIO;
    }

    uint64_t host_start;
    if (s->external_data) {
        host_start = guest_cluster;
    } else if (keep) {
        host_start = keep_host;
    } else {
        ret = qcow2_settle_frees_for_reuse(bs);
        if (ret < 0) {
            return ret;
        }
        int64_t r = qcow2_alloc_clusters(bs, n << s->cluster_bits);
        if (r < 0) {
            return r;
        }
        host_start = r;
    }
    Qcow2Alloc *m = qcow2_alloc_register(s, guest_cluster, host_start, n,
                                         keep);
    qcow2_plan_cow(bs, m, offset, covered, first, first_bitmap, last,
                   last_bitmap);
    *host = host_start + in_cluster;
    *bytes = covered;
    *alloc = m;
    return 0;
}

/* ---- linking ---- */

/* New entry and bitmap of cluster i of m (old entry/bitmap given). */
static void qcow2_link_entry(BlockDriverState *bs, Qcow2Alloc *m, uint64_t i,
                             uint64_t old, uint64_t old_bitmap,
                             uint64_t *entry, uint64_t *bitmap)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t host = m->host_offset + (i << s->cluster_bits);

    *entry = host | QCOW2_OFLAG_COPIED;
    *bitmap = 0;
    if (!s->extended_l2) {
        return;
    }
    /* Subclusters written by this allocation (guest data + COW). */
    uint64_t base = i << s->cluster_bits;
    uint64_t w_start = MAX(m->cow_start.offset, base);
    uint64_t w_end = MIN(m->cow_end.offset + m->cow_end.bytes,
                         base + s->cluster_size);
    uint64_t alloc = 0;
    if (m->keep_old) {
        alloc = old_bitmap & QCOW2_SC_ALL_ALLOC;
    }
    if (!m->prealloc && w_end > w_start) {
        unsigned a = (w_start - base) >> s->subcluster_bits;
        unsigned b = (w_end - base + s->subcluster_size - 1) >>
                     s->subcluster_bits;
        alloc |= QCOW2_SC_ALLOC_RANGE(a, b);
    }
    uint64_t zero = (old & QCOW2_OFLAG_COMPRESSED) ? 0
                    : old_bitmap & QCOW2_SC_ALL_ZERO & ~(alloc << 32);
    *bitmap = alloc | zero;
}

/*
 * The data of m is written: point its L2 entries at the new host range.
 * The pages depend on the data node's writes so far (the data first) and
 * on the refcount cache (counts first); old clusters lose their reference
 * once these entries are durable.
 */
int coroutine_fn qcow2_link_l2(BlockDriverState *bs, Qcow2Alloc *m)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2L2Slice sl;
    int ret;

    ret = qcow2_get_l2_slice_rw(bs, m->guest_offset, &sl);
    if (ret < 0) {
        return ret;
    }
    assert(sl.index + m->nb_clusters <= s->l2_slice_size);
    for (uint64_t i = 0; i < m->nb_clusters; i++) {
        uint32_t idx = sl.index + i;
        uint64_t old = qcow2_l2_entry(s, sl.page, idx);
        uint64_t old_bitmap = qcow2_l2_bitmap(s, sl.page, idx);
        uint64_t entry, bitmap;

        qcow2_link_entry(bs, m, i, old, old_bitmap, &entry, &bitmap);
        if (s->external_data) {
            entry = (m->guest_offset + (i << s->cluster_bits)) |
                    QCOW2_OFLAG_COPIED;
        }
        qcow2_set_l2_entry(s, sl.page, idx, entry);
        if (s->extended_l2) {
            qcow2_set_l2_bitmap(s, sl.page, idx, bitmap);
        }
        if (!m->keep_old && (old & (QCOW2_OFLAG_COMPRESSED |
                                    QCOW2_L2E_OFFSET_MASK))) {
            qcow2_free_entry_deferred(bs, old, false);
        }
    }
    table_cache_mark_dirty(s->l2_cache, sl.page);
    qcow2_l2_put(s, &sl);
    return 0;
}

/* ---- compressed clusters ---- */

/*
 * Reserve host bytes for a compressed cluster at guest offset (which must
 * be unallocated: compression never overwrites). The L2 entry is set by
 * qcow2_link_compressed once the data is written; meanwhile an allocation
 * of that one cluster is registered so that other requests wait.
 */
int coroutine_fn qcow2_alloc_compressed(BlockDriverState *bs, uint64_t offset,
                                        uint64_t compressed_size,
                                        uint64_t *host)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2L2Slice sl;
    int64_t h;
    int ret;

    qcow2_wait_allocs(bs, offset, s->cluster_size);
    ret = qcow2_get_l2_slice_rw(bs, offset, &sl);
    if (ret < 0) {
        return ret;
    }
    uint64_t entry = qcow2_l2_entry(s, sl.page, sl.index);
    uint64_t bitmap = qcow2_l2_bitmap(s, sl.page, sl.index);
    qcow2_l2_put(s, &sl);
    if ((entry & ~QCOW2_OFLAG_ZERO) || (bitmap & QCOW2_SC_ALL_ALLOC)) {
        return -EIO;
    }
    h = qcow2_alloc_bytes(bs, compressed_size);
    if (h < 0) {
        return h;
    }
    Qcow2Alloc *m = qcow2_alloc_register(s, offset, h, 1, true);
    m->compressed_bytes = compressed_size;
    *host = h;
    return 0;
}

/* The reservation of qcow2_alloc_compressed for guest offset. */
static Qcow2Alloc *qcow2_find_compressed(BDRVQcow2State *s, uint64_t offset)
{
    for (Qcow2Alloc *a = s->allocs; a; a = a->next) {
        if (a->guest_offset == offset && a->compressed_bytes) {
            return a;
        }
    }
    return NULL;
}

/* The compressed data is written (ok) or not: enter it, or give the
 * reserved bytes back. */
int coroutine_fn qcow2_link_compressed(BlockDriverState *bs, uint64_t offset,
                                       bool ok)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Alloc *m = qcow2_find_compressed(s, offset);
    uint64_t host = m->host_offset, bytes = m->compressed_bytes;
    Qcow2L2Slice sl;
    int ret = 0;

    if (ok) {
        uint64_t nb_sectors = ((host + bytes - 1) >> 9) - (host >> 9);
        uint64_t entry = host | QCOW2_OFLAG_COMPRESSED |
                         (nb_sectors << s->csize_shift);
        ret = qcow2_get_l2_slice_rw(bs, offset, &sl);
        if (ret >= 0) {
            qcow2_set_l2_entry(s, sl.page, sl.index, entry);
            if (s->extended_l2) {
                qcow2_set_l2_bitmap(s, sl.page, sl.index, 0);
            }
            table_cache_mark_dirty(s->l2_cache, sl.page);
            qcow2_l2_put(s, &sl);
        }
    }
    if (!ok || ret < 0) {
        qcow2_free_clusters(bs, host, bytes);
    }
    qcow2_alloc_finish(bs, m);
    return ret;
}

/* ---- discard and zero ---- */

/* Guest clusters [offset, offset+bytes) (whole clusters, or up to the end
 * of the image), within one L2 slice. */
static int coroutine_fn qcow2_discard_slice(BlockDriverState *bs,
                                            uint64_t offset, uint64_t n,
                                            bool full, bool pass_down)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2L2Slice sl;
    uint64_t l2_offset;
    int ret;

    ret = qcow2_l2_offset(bs, qcow2_l1_index(s, offset), &l2_offset);
    if (ret < 0) {
        return ret;
    }
    if (!l2_offset && (full || !bs->backing)) {
        return 0;           /* nothing allocated, nothing shows through */
    }
    ret = qcow2_get_l2_slice_rw(bs, offset, &sl);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint32_t idx = sl.index + i;
        uint64_t old = qcow2_l2_entry(s, sl.page, idx);
        uint64_t old_bitmap = qcow2_l2_bitmap(s, sl.page, idx);
        uint64_t entry, bitmap;
        bool has_host = qcow2_entry_has_host(bs, old) ||
                        (old & QCOW2_OFLAG_COMPRESSED);

        if (full) {
            entry = bitmap = 0;
        } else if (bs->backing || has_host) {
            if (s->extended_l2) {
                entry = 0;
                bitmap = QCOW2_SC_ALL_ZERO;
            } else {
                entry = s->qcow_version >= 3 ? QCOW2_OFLAG_ZERO : 0;
                bitmap = 0;
            }
        } else {
            continue;
        }
        if (entry == old && bitmap == old_bitmap) {
            continue;
        }
        qcow2_set_l2_entry(s, sl.page, idx, entry);
        if (s->extended_l2) {
            qcow2_set_l2_bitmap(s, sl.page, idx, bitmap);
        }
        table_cache_mark_dirty(s->l2_cache, sl.page);
        if (has_host && !s->external_data) {
            qcow2_free_entry_deferred(bs, old, pass_down);
        }
    }
    qcow2_l2_put(s, &sl);
    return 0;
}

/*
 * Discard whole clusters: they read as zero afterwards (or, v2 images and
 * full discards, as unallocated) and their host clusters are freed.
 */
int coroutine_fn qcow2_cluster_discard(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes, bool full_discard,
                                       bool pass_down)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t end = offset + bytes;
    int ret = 0;

    assert(QEMU_IS_ALIGNED(offset, s->cluster_size));
    qcow2_wait_allocs(bs, offset, bytes);
    while (offset < end && ret >= 0) {
        uint64_t len = MIN(end - offset, qcow2_bytes_to_slice_end(s, offset));
        uint64_t n = qcow2_size_to_clusters(s, len);
        ret = qcow2_discard_slice(bs, offset, n, full_discard, pass_down);
        offset += len;
    }
    return ret;
}

/* Zero n whole clusters from offset (one slice). */
static int coroutine_fn qcow2_zero_slice(BlockDriverState *bs,
                                         uint64_t offset, uint64_t n,
                                         BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2L2Slice sl;
    int ret;

    ret = qcow2_get_l2_slice_rw(bs, offset, &sl);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint32_t idx = sl.index + i;
        uint64_t old = qcow2_l2_entry(s, sl.page, idx);
        uint64_t old_bitmap = qcow2_l2_bitmap(s, sl.page, idx);
        bool compressed = old & QCOW2_OFLAG_COMPRESSED;
        bool unmap = compressed || ((flags & BDRV_REQ_MAY_UNMAP) &&
                                    qcow2_entry_has_host(bs, old) &&
                                    !s->external_data);
        uint64_t entry = unmap ? 0 : old, bitmap = old_bitmap;

        if (s->extended_l2) {
            bitmap = QCOW2_SC_ALL_ZERO;
        } else {
            entry |= QCOW2_OFLAG_ZERO;
        }
        if (entry == old && bitmap == old_bitmap) {
            continue;
        }
        qcow2_set_l2_entry(s, sl.page, idx, entry);
        if (s->extended_l2) {
            qcow2_set_l2_bitmap(s, sl.page, idx, bitmap);
        }
        table_cache_mark_dirty(s->l2_cache, sl.page);
        if (unmap) {
            qcow2_free_entry_deferred(bs, old, s->discard_request);
        }
    }
    qcow2_l2_put(s, &sl);
    return 0;
}

/* Zero subclusters [offset, offset + bytes) inside one cluster. */
static int coroutine_fn qcow2_zero_subclusters(BlockDriverState *bs,
                                               uint64_t offset,
                                               uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2L2Slice sl;
    int ret;

    ret = qcow2_get_l2_slice_rw(bs, offset, &sl);
    if (ret < 0) {
        return ret;
    }
    uint64_t entry = qcow2_l2_entry(s, sl.page, sl.index);
    uint64_t bitmap = qcow2_l2_bitmap(s, sl.page, sl.index);
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        qcow2_l2_put(s, &sl);
        return -ENOTSUP;
    }
    unsigned a = qcow2_sc_index(s, offset);
    unsigned b = a + DIV_ROUND_UP(bytes, (uint64_t)s->subcluster_size);
    uint64_t nb = (bitmap | QCOW2_SC_ZERO_RANGE(a, b)) &
                  ~QCOW2_SC_ALLOC_RANGE(a, b);
    if (nb != bitmap) {
        qcow2_set_l2_bitmap(s, sl.page, sl.index, nb);
        table_cache_mark_dirty(s->l2_cache, sl.page);
    }
    qcow2_l2_put(s, &sl);
    return 0;
}

/*
 * Make [offset, offset + bytes) read as zero through L2 entries alone.
 * offset is subcluster aligned; the end is too, or the end of the image.
 */
int coroutine_fn qcow2_subcluster_zeroize(BlockDriverState *bs,
                                          uint64_t offset, uint64_t bytes,
                                          BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t end = offset + bytes;
    int ret = 0;

    assert(QEMU_IS_ALIGNED(offset, s->subcluster_size));
    assert(QEMU_IS_ALIGNED(end, s->subcluster_size) || end == s->size);
    if (s->qcow_version < 3) {
        if (!bs->backing) {
            return qcow2_cluster_discard(bs, offset, bytes, false,
                                         s->discard_request);
        }
        return -ENOTSUP;
    }
    qcow2_wait_allocs(bs, offset, bytes);
    if (qcow2_data_file_is_raw(s)) {
        /* The data file stays a valid raw image: zero it too. */
        ret = bdrv_co_pwrite_zeroes(s->data_file, offset, bytes, flags);
        if (ret < 0) {
            return ret;
        }
    }
    /* A partial first cluster: subclusters only. */
    if (qcow2_offset_into_cluster(s, offset)) {
        uint64_t n = MIN(end, ROUND_UP(offset + 1,
                                       (uint64_t)s->cluster_size)) - offset;
        ret = qcow2_zero_subclusters(bs, offset, n);
        offset += n;
    }
    /* Whole clusters (the last one may end at the end of the image). */
    while (ret >= 0 && offset < end) {
        uint64_t len = MIN(end - offset, qcow2_bytes_to_slice_end(s, offset));
        uint64_t n = len >> s->cluster_bits;
        if (n == 0) {
            if (end != s->size) {
                break;              /* a partial cluster: subclusters */
            }
            n = 1;
        }
        ret = qcow2_zero_slice(bs, offset, n, flags);
        offset += MIN(len, n << s->cluster_bits);
    }
    /* A partial last cluster: subclusters. */
    if (ret >= 0 && offset < end) {
        ret = qcow2_zero_subclusters(bs, offset, end - offset);
    }
    return ret;
}

/* ---- zero clusters into data (compat=0.10 downgrade) ---- */

typedef struct Qcow2Expand {
    GHashTable *done;               /* L2 tables already converted */
    int64_t visited, total;         /* L1 entries, for amend -p (QEMU's) */
} Qcow2Expand;

/* Convert the zero entries of one L2 table (any L1, active or not). */
static int coroutine_fn qcow2_expand_l2(BlockDriverState *bs,
                                        uint64_t l2_offset, bool active)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l2_refcount;
    int ret;

    ret = qcow2_get_refcount(bs, l2_offset >> s->cluster_bits,
                             &l2_refcount);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t off = 0; off < s->cluster_size; off += s->l2_slice_bytes) {
        void *page;
        bool dirty = false;
        ret = table_cache_get(s->l2_cache, l2_offset + off, &page);
        if (ret < 0) {
            return ret;
        }
        for (uint32_t i = 0; i < s->l2_slice_size; i++) {
            uint64_t e = qcow2_l2_entry(s, page, i);
            if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO)) {
                continue;
            }
            uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
            if (!host) {
                if (!bs->backing) {
                    qcow2_set_l2_entry(s, page, i, 0);
                    dirty = true;
                    continue;
                }
                int64_t h = qcow2_alloc_clusters(bs, s->cluster_size);
                if (h < 0) {
                    table_cache_put(s->l2_cache, &page);
                    return h;
                }
                if (l2_refcount > 1) {
                    /* Every sharer of the table holds a reference. */
                    ret = qcow2_update_refcount(bs, h, s->cluster_size,
                                                l2_refcount - 1);
                    if (ret < 0) {
                        table_cache_put(s->l2_cache, &page);
                        return ret;
                    }
                }
                host = h;
            }
            ret = qcow2_crypto_host_iv(s)
                  ? qcow2_write_encrypted_zero_cluster(bs, host)
                  : bdrv_co_pwrite_zeroes(bs->file, host, s->cluster_size, 0);
            if (ret < 0) {
                table_cache_put(s->l2_cache, &page);
                return ret;
            }
            uint64_t rc;
            qcow2_get_refcount(bs, host >> s->cluster_bits, &rc);
            qcow2_set_l2_entry(s, page, i, host |
                               (active && rc == 1 ? QCOW2_OFLAG_COPIED : 0));
            dirty = true;
        }
        if (dirty) {
            table_cache_mark_dirty(s->l2_cache, page);
        }
        table_cache_put(s->l2_cache, &page);
    }
    return 0;
}

static int coroutine_fn qcow2_expand_l1(BlockDriverState *bs,
                                        const uint64_t *l1, uint32_t size,
                                        bool active, Qcow2Expand *x)
{
    BDRVQcow2State *s = bs->opaque;

    for (uint32_t i = 0; i < size; i++) {
        uint64_t off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (off && !g_hash_table_contains(x->done, &off)) {
            if (qcow2_offset_into_cluster(s, off)) {
                return -EIO;
            }
            int ret = qcow2_expand_l2(bs, off, active);
            if (ret < 0) {
                return ret;
            }
            uint64_t *key = g_new(uint64_t, 1);
            *key = off;
            g_hash_table_add(x->done, key);
        }
        /* One step per L1 entry, as QEMU reports it. */
        qcow2_amend_status(bs, ++x->visited, x->total);
    }
    return 0;
}

/*
 * Turn every zero cluster into an ordinary one (v2 has no zero flag):
 * preallocated ones are zeroed in place, plain ones become unallocated
 * without a backing file or get a zeroed cluster with one.
 */
int coroutine_fn qcow2_expand_zero_clusters(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Expand x = { g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                            g_free, NULL) };
    int ret;

    x.total = s->l1_size;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        x.total += s->snapshots[i].l1_size;
    }

    ret = qcow2_expand_l1(bs, s->l1_table, s->l1_size, true, &x);
    for (uint32_t i = 0; ret >= 0 && i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        uint64_t bytes = (uint64_t)sn->l1_size * sizeof(uint64_t);
        Error *err = NULL;
        /* A damaged snapshot table stops the expansion (QEMU prints
         * the reason, then the caller's "Failed to turn zero ...") */
        ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size,
                                   sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                                   "Snapshot L1 table", &err);
        if (ret < 0) {
            error_report_err(err);
            break;
        }
        uint64_t *l1 = g_try_malloc(MAX(bytes, 8));
        if (!l1) {
            ret = -ENOMEM;
            break;
        }
        ret = bdrv_co_pread(bs->file, sn->l1_table_offset, bytes, l1, 0);
        for (uint32_t j = 0; ret >= 0 && j < sn->l1_size; j++) {
            l1[j] = be64_to_cpu(l1[j]);
        }
        if (ret >= 0) {
            ret = qcow2_expand_l1(bs, l1, sn->l1_size, false, &x);
        }
        g_free(l1);
    }
    g_hash_table_destroy(x.done);
    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    return ret;
}
