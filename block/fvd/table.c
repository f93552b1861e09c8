/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The FVD table (compact image, docs/specs/fvd.txt section 11): one LE u32
 * per virtual chunk, the physical chunk plus one (0: not mapped, reads as
 * zeroes). The whole table is kept in memory. Chunks are handed out lowest
 * free first, so the data storage grows only with data; a new mapping is
 * pending until a journal commit records it (after the data it maps is
 * durable), and table pages go home only after their records are durable.
 * Usage is rebuilt from the table at every open, so chunks leaked by a
 * crash are reused; check -r discards them.
 */
#include "block/fvd/fvd.h"
#include "util/bitmap.h"

#define FVD_TABLE_READ_CHUNK (1 * MiB)
#define FVD_ENTRIES_PER_PAGE (FVD_PAGE / 4)

static inline uint32_t fvd_ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32_to_cpu(v);
}

static inline void fvd_st32(uint8_t *p, uint32_t v)
{
    v = cpu_to_le32(v);
    memcpy(p, &v, 4);
}

static uint64_t fvd_chunk_host(BDRVFvdState *s, uint64_t p)
{
    return s->header.data_offset + p * s->chunk_size;
}

/* Chunks the data storage holds whole, and the first one past its end. */
static int fvd_storage_chunks(BDRVFvdState *s, uint64_t *whole,
                              uint64_t *partial_end)
{
    int64_t len = bdrv_getlength(s->data);

    if (len < 0) {
        return (int)len;
    }
    uint64_t avail = (uint64_t)len > s->header.data_offset
                     ? (uint64_t)len - s->header.data_offset : 0;
    *whole = avail / s->chunk_size;
    if (partial_end) {
        *partial_end = DIV_ROUND_UP(avail, s->chunk_size);
    }
    return 0;
}

int coroutine_fn fvd_table_load(BlockDriverState *bs, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    FvdTable *t = &s->t;
    uint64_t bytes;
    uint8_t *buf;
    int ret;

    s->compact = true;
    s->chunk_size = UINT64_C(1) << s->header.chunk_bits;
    qemu_co_mutex_init(&t->lock);
    t->nchunks = DIV_ROUND_UP(s->header.virtual_size, s->chunk_size);
    t->capacity = s->header.table_size / 4;
    t->map = g_try_new0(uint32_t, MAX(t->nchunks, 1));
    t->in_use = bitmap_new(t->capacity);
    t->uncommitted = bitmap_new(t->capacity);
    t->home_dirty = bitmap_new(DIV_ROUND_UP(t->capacity,
                                            FVD_ENTRIES_PER_PAGE));
    t->pending = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    if (!t->map) {
        error_setg(errp, "Could not allocate the FVD table");
        return -ENOMEM;
    }
    ret = fvd_storage_chunks(s, &t->storage_chunks, &t->zero_from);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not get the data storage size");
        return ret;
    }
    bytes = t->nchunks * 4;
    buf = qemu_blockalign(MIN(bytes, FVD_TABLE_READ_CHUNK) + 1);
    for (uint64_t done = 0; done < bytes;) {
        uint64_t n = MIN(bytes - done, FVD_TABLE_READ_CHUNK);
        BLKDBG_EVENT(bs->file, "table_load");
        ret = bdrv_co_pread(bs->file, s->header.table_offset + done, n, buf,
                            0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read the FVD table");
            break;
        }
        for (uint64_t i = 0; i < n / 4; i++) {
            uint64_t v = done / 4 + i;
            uint32_t e = fvd_ld32(buf + i * 4);
            if (e & FVD_ENTRY_RESERVED) {
                error_setg(errp, "FVD table entry %" PRIu64 " has reserved "
                           "bits set (0x%08" PRIx32 ")", v, e);
                ret = -EINVAL;
                break;
            }
            if (e > t->capacity) {
                error_setg(errp, "FVD table entry %" PRIu64 " maps chunk %"
                           PRIu32 " past the table's %" PRIu64 " entries",
                           v, e - 1, t->capacity);
                ret = -EINVAL;
                break;
            }
            t->map[v] = e;
        }
        if (ret < 0) {
            break;
        }
        done += n;
    }
    qemu_vfree(buf);
    return ret < 0 ? ret : 0;
}

int fvd_table_rebuild_usage(BDRVFvdState *s, Error **errp)
{
    FvdTable *t = &s->t;

    bitmap_clear(t->in_use, 0, t->capacity);
    t->used = 0;
    for (uint64_t v = 0; v < t->nchunks; v++) {
        if (!t->map[v]) {
            continue;
        }
        uint64_t p = t->map[v] - 1;
        if (test_bit(p, t->in_use)) {
            error_setg(errp, "FVD table entry %" PRIu64 " maps chunk %" PRIu64
                       " that another entry maps too", v, p);
            return -EINVAL;
        }
        set_bit(p, t->in_use);
        t->used = MAX(t->used, p + 1);
    }
    return 0;
}

void fvd_table_free(BDRVFvdState *s)
{
    FvdTable *t = &s->t;

    g_free(t->map);
    g_free(t->in_use);
    g_free(t->uncommitted);
    g_free(t->home_dirty);
    if (t->pending) {
        g_array_free(t->pending, TRUE);
    }
    memset(t, 0, sizeof(*t));
}

/* Make the data storage hold physical chunk p (grown by the unit). */
static int coroutine_fn fvd_table_grow(BlockDriverState *bs, uint64_t p)
{
    BDRVFvdState *s = bs->opaque;
    FvdTable *t = &s->t;
    uint64_t want;
    int ret;

    /* The user may have grown a block device or the file meanwhile. */
    ret = fvd_storage_chunks(s, &t->storage_chunks, NULL);
    if (ret < 0 || p < t->storage_chunks) {
        return ret;
    }
    want = MIN(ROUND_UP(p + 1, s->header.grow_chunks), t->capacity);
    BLKDBG_EVENT(s->data, "chunk_grow");
    ret = bdrv_co_truncate(s->data, fvd_chunk_host(s, want), false,
                           PREALLOC_MODE_OFF, NULL);
    if (ret < 0) {
        /* Whatever the reason (a full file system, a device that cannot
         * grow), the write fails for lack of space: the user grows it. */
        fvd_storage_chunks(s, &t->storage_chunks, NULL);
        return p < t->storage_chunks ? 0 : -ENOSPC;
    }
    s->stats.storage_grows++;
    t->storage_chunks = want;
    return 0;
}

int64_t coroutine_fn fvd_table_alloc(BlockDriverState *bs, uint64_t v)
{
    BDRVFvdState *s = bs->opaque;
    FvdTable *t = &s->t;
    int64_t p;
    int ret = 0;

    assert(v < t->nchunks);
    qemu_co_mutex_lock(&t->lock);
    p = fvd_table_get(s, v);
    if (p >= 0) {
        goto out;               /* mapped while we waited */
    }
    p = find_next_zero_bit(t->in_use, t->capacity, 0);
    if ((uint64_t)p >= t->capacity) {
        ret = -ENOSPC;          /* cannot happen: entries >= chunks */
        goto out;
    }
    ret = fvd_table_grow(bs, p);
    /* A chunk that may hold old bytes (storage from before this session,
     * or freed by a shrink) is zeroed before it is mapped: every byte of a
     * mapped chunk that was never written reads as zero. */
    if (ret >= 0 && (uint64_t)p < t->zero_from) {
        BLKDBG_EVENT(s->data, "chunk_zero");
        ret = bdrv_co_pwrite_zeroes(s->data, fvd_chunk_host(s, p),
                                    s->chunk_size, BDRV_REQ_MAY_UNMAP);
    }
    if (ret < 0) {
        goto out;
    }
    t->map[v] = p + 1;
    set_bit(p, t->in_use);
    t->used = MAX(t->used, (uint64_t)p + 1);
    set_bit(v, t->uncommitted);
    g_array_append_val(t->pending, v);
    s->stats.chunks_allocated++;
out:
    qemu_co_mutex_unlock(&t->lock);
    if (ret >= 0) {
        fvd_journal_kick(bs);   /* past the soft limit: commit meanwhile */
    }
    return ret < 0 ? ret : p;
}

int fvd_table_replay_entry(BDRVFvdState *s, uint64_t v, uint32_t e)
{
    FvdTable *t = &s->t;

    if (v >= t->nchunks || t->map[v] == e) {
        return 0;               /* past a shrink, or already home */
    }
    if (t->map[v]) {
        return -EINVAL;         /* a mapping never changes */
    }
    t->map[v] = e;
    set_bit(v / FVD_ENTRIES_PER_PAGE, t->home_dirty);
    t->replayed = true;
    return 0;
}

static gint fvd_u64_cmp(gconstpointer a, gconstpointer b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

GArray *fvd_table_take_pending(BDRVFvdState *s)
{
    FvdTable *t = &s->t;
    GArray *list = t->pending;

    t->pending = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_array_sort(list, fvd_u64_cmp);
    t->committing = list->len;
    return list;
}

void fvd_table_committed(BDRVFvdState *s, GArray *chunks, guint from,
                         guint to)
{
    FvdTable *t = &s->t;

    for (guint i = from; i < to; i++) {
        uint64_t v = g_array_index(chunks, uint64_t, i);
        clear_bit(v, t->uncommitted);
        set_bit(v / FVD_ENTRIES_PER_PAGE, t->home_dirty);
    }
}

void fvd_table_uncommit(BDRVFvdState *s, GArray *chunks, guint from)
{
    FvdTable *t = &s->t;

    for (guint i = from; i < chunks->len; i++) {
        uint64_t v = g_array_index(chunks, uint64_t, i);
        if (v < t->nchunks && test_bit(v, t->uncommitted)) {
            g_array_append_val(t->pending, v);
        }
    }
}

/* The home image of table page pg: committed entries only. */
static void fvd_table_page(BDRVFvdState *s, uint64_t pg, uint8_t *buf)
{
    FvdTable *t = &s->t;

    memset(buf, 0, FVD_PAGE);
    for (uint64_t i = 0; i < FVD_ENTRIES_PER_PAGE; i++) {
        uint64_t v = pg * FVD_ENTRIES_PER_PAGE + i;
        if (v < t->nchunks && !test_bit(v, t->uncommitted)) {
            fvd_st32(buf + i * 4, t->map[v]);
        }
    }
}

int coroutine_fn fvd_table_write_home(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdTable *t = &s->t;
    uint64_t npages = DIV_ROUND_UP(t->capacity, FVD_ENTRIES_PER_PAGE);
    uint64_t count = bitmap_count_one(t->home_dirty, npages);
    uint64_t *pages;
    uint8_t *bufs;
    uint64_t k = 0;
    int ret;

    if (!count) {
        return 0;
    }
    /* Snapshot first, without yielding: an entry committed from here on
     * waits for the next write home, so the flush below covers the record
     * of every entry in the snapshot (write-ahead rule). */
    pages = g_new(uint64_t, count);
    bufs = qemu_blockalign(count * FVD_PAGE);
    for (uint64_t pg = find_next_bit(t->home_dirty, npages, 0); pg < npages;
         pg = find_next_bit(t->home_dirty, npages, pg + 1)) {
        pages[k] = pg;
        fvd_table_page(s, pg, bufs + k * FVD_PAGE);
        clear_bit(pg, t->home_dirty);
        k++;
    }
    ret = bdrv_co_flush(bs->file);
    for (k = 0; k < count && ret >= 0; k++) {
        BLKDBG_EVENT(bs->file, "table_update");
        ret = bdrv_co_pwrite(bs->file,
                             s->header.table_offset + pages[k] * FVD_PAGE,
                             FVD_PAGE, bufs + k * FVD_PAGE, 0);
    }
    if (ret < 0) {
        for (k = 0; k < count; k++) {
            set_bit(pages[k], t->home_dirty);
        }
    }
    g_free(pages);
    qemu_vfree(bufs);
    return ret;
}

int coroutine_fn fvd_table_resize(BlockDriverState *bs, uint64_t new_size)
{
    BDRVFvdState *s = bs->opaque;
    FvdTable *t = &s->t;
    uint64_t n = DIV_ROUND_UP(new_size, s->chunk_size);
    uint64_t lo = MIN(n, t->nchunks), hi = MAX(n, t->nchunks);
    int ret;

    if (n > t->capacity) {
        return -EFBIG;
    }
    if (n > t->nchunks) {
        uint32_t *m = g_try_renew(uint32_t, t->map, n);
        if (!m) {
            return -ENOMEM;
        }
        t->map = m;
        memset(m + t->nchunks, 0, (n - t->nchunks) * 4);
    } else {
        /* Shrink (after the header commit): the chunks are free again. */
        for (uint64_t v = n; v < t->nchunks; v++) {
            if (t->map[v]) {
                uint64_t p = t->map[v] - 1;
                clear_bit(p, t->in_use);
                t->zero_from = MAX(t->zero_from, p + 1);
                bdrv_co_pdiscard(s->data, fvd_chunk_host(s, p),
                                 s->chunk_size);
                t->map[v] = 0;
            }
            clear_bit(v, t->uncommitted);
        }
    }
    t->nchunks = n;
    t->used = 0;
    for (uint64_t p = 0; p < t->capacity; p = find_next_bit(t->in_use,
                                                              t->capacity,
                                                              p + 1)) {
        if (test_bit(p, t->in_use)) {
            t->used = p + 1;
        }
    }
    /* Entries [lo, hi) are zero in memory: home too, durably. */
    for (uint64_t pg = lo / FVD_ENTRIES_PER_PAGE;
         pg < DIV_ROUND_UP(hi, FVD_ENTRIES_PER_PAGE); pg++) {
        set_bit(pg, t->home_dirty);
    }
    ret = fvd_table_write_home(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    return ret;
}

/* ---- data storage I/O through the table ---- */

int coroutine_fn fvd_data_preadv(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 size_t qiov_offset)
{
    BDRVFvdState *s = bs->opaque;

    if (!s->compact) {
        return bdrv_co_preadv_part(s->data, fvd_host_offset(s, offset),
                                   bytes, qiov, qiov_offset, 0);
    }
    while (bytes > 0) {
        uint64_t in = offset & (s->chunk_size - 1);
        int64_t n = MIN(bytes, (int64_t)(s->chunk_size - in));
        int64_t p = fvd_table_get(s, offset >> s->header.chunk_bits);
        int ret = 0;
        if (p < 0) {
            qemu_iovec_memset(qiov, qiov_offset, 0, n);
        } else {
            ret = bdrv_co_preadv_part(s->data, fvd_chunk_host(s, p) + in, n,
                                      qiov, qiov_offset, 0);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

/* qiov NULL: zeroes (alloc: map unmapped chunks, which then read zero). */
static int coroutine_fn fvd_data_write(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags, bool alloc)
{
    BDRVFvdState *s = bs->opaque;

    if (!s->compact) {
        if (qiov) {
            return bdrv_co_pwritev_part(s->data, fvd_host_offset(s, offset),
                                        bytes, qiov, qiov_offset, flags);
        }
        return bdrv_co_pwrite_zeroes(s->data, fvd_host_offset(s, offset),
                                     bytes, flags);
    }
    while (bytes > 0) {
        uint64_t in = offset & (s->chunk_size - 1);
        int64_t n = MIN(bytes, (int64_t)(s->chunk_size - in));
        uint64_t v = offset >> s->header.chunk_bits;
        int64_t p = fvd_table_get(s, v);
        int ret = 0;
        if (p < 0 && (qiov || alloc)) {
            p = fvd_table_alloc(bs, v);
            if (p < 0) {
                return (int)p;
            }
            if (!qiov) {
                p = -1;         /* a new chunk reads as zeroes already */
            }
        }
        if (p >= 0 && qiov) {
            ret = bdrv_co_pwritev_part(s->data, fvd_chunk_host(s, p) + in, n,
                                       qiov, qiov_offset, flags);
        } else if (p >= 0) {
            ret = bdrv_co_pwrite_zeroes(s->data, fvd_chunk_host(s, p) + in,
                                        n, flags);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

int coroutine_fn fvd_data_pwritev(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, QEMUIOVector *qiov,
                                  size_t qiov_offset, BdrvRequestFlags flags)
{
    return fvd_data_write(bs, offset, bytes, qiov, qiov_offset, flags, true);
}

int coroutine_fn fvd_data_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, BdrvRequestFlags flags,
                                        bool alloc)
{
    return fvd_data_write(bs, offset, bytes, NULL, 0, flags, alloc);
}

int coroutine_fn fvd_data_pdiscard(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes)
{
    BDRVFvdState *s = bs->opaque;

    if (!s->compact) {
        return bdrv_co_pdiscard(s->data, fvd_host_offset(s, offset), bytes);
    }
    while (bytes > 0) {
        uint64_t in = offset & (s->chunk_size - 1);
        int64_t n = MIN(bytes, (int64_t)(s->chunk_size - in));
        int64_t p = fvd_table_get(s, offset >> s->header.chunk_bits);
        if (p >= 0) {
            int ret = bdrv_co_pdiscard(s->data, fvd_chunk_host(s, p) + in, n);
            if (ret < 0) {
                return ret;
            }
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

int coroutine_fn fvd_block_run(BDRVFvdState *s, uint64_t start, uint64_t end,
                               bool *in_image, uint64_t *len)
{
    int ret = fvd_bitmap_run(s, start, end, in_image, len);

    if (ret < 0 || !s->compact) {
        return ret;
    }
    /* A block is in the image only if its chunk is mapped too (a bit whose
     * chunk mapping never became durable reads from the base). */
    uint64_t per = s->chunk_size >> s->header.block_bits;
    uint64_t chunk_end = (start / per + 1) * per;
    *len = MIN(*len, chunk_end - start);
    if (*in_image && fvd_table_get(s, start / per) < 0) {
        *in_image = false;
    }
    return 0;
}

uint64_t fvd_table_count_leaks(BDRVFvdState *s)
{
    FvdTable *t = &s->t;
    return t->used - bitmap_count_one(t->in_use, t->used);
}

/*
 * Make the image clean with no replayable record (a moved chunk's old
 * mapping must never be replayed): commit, write everything home, then
 * clear DIRTY as close does; the next journal write starts a new epoch.
 */
static int coroutine_fn fvd_make_clean(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int ret = fvd_co_flush(bs);

    if (ret >= 0) {
        ret = fvd_journal_checkpoint(bs);
    }
    if (ret >= 0 &&
        (s->header.incompatible_features & FVD_INCOMPAT_DIRTY)) {
        s->header.incompatible_features &= ~FVD_INCOMPAT_DIRTY;
        ret = fvd_write_header(bs);
        if (ret < 0) {
            s->header.incompatible_features |= FVD_INCOMPAT_DIRTY;
            return ret;
        }
        s->session_dirty = false;
        s->replayed_in_cache = false;
    }
    return ret;
}

int coroutine_fn fvd_table_reclaim(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdTable *t = &s->t;
    uint32_t *rev = NULL;
    uint8_t *buf = NULL, *page = NULL;
    int ret = fvd_make_clean(bs);

    if (ret < 0) {
        return ret;
    }
    rev = g_try_new(uint32_t, MAX(t->used, 1));
    buf = qemu_blockalign(MIN(s->chunk_size, FVD_TABLE_READ_CHUNK));
    page = qemu_blockalign(FVD_PAGE);
    if (!rev) {
        ret = -ENOMEM;
        goto out;
    }
    for (uint64_t v = 0; v < t->nchunks; v++) {
        if (t->map[v]) {
            rev[t->map[v] - 1] = v;
        }
    }
    /*
     * Move the highest chunk in use into the lowest hole until none is
     * left. Each move: copy, flush the data, then one table page write
     * (the entry is within one sector) and a flush. A crash leaves the old
     * mapping (its chunk untouched) or the new one (its copy durable).
     */
    for (;;) {
        uint64_t p = find_next_zero_bit(t->in_use, t->used, 0);
        if (p >= t->used) {
            break;
        }
        uint64_t q = t->used - 1, v = rev[q];
        BLKDBG_EVENT(s->data, "chunk_move");
        for (uint64_t o = 0; o < s->chunk_size && ret >= 0;
             o += FVD_TABLE_READ_CHUNK) {
            uint64_t n = MIN(s->chunk_size - o, FVD_TABLE_READ_CHUNK);
            ret = bdrv_co_pread(s->data, fvd_chunk_host(s, q) + o, n, buf,
                                0);
            if (ret >= 0) {
                ret = bdrv_co_pwrite(s->data, fvd_chunk_host(s, p) + o, n,
                                     buf, 0);
            }
        }
        if (ret >= 0) {
            ret = bdrv_co_flush(s->data);
        }
        if (ret < 0) {
            goto out;
        }
        t->map[v] = p + 1;
        fvd_table_page(s, v / FVD_ENTRIES_PER_PAGE, page);
        BLKDBG_EVENT(bs->file, "table_update");
        ret = bdrv_co_pwrite(bs->file, s->header.table_offset +
                             v / FVD_ENTRIES_PER_PAGE * FVD_PAGE, FVD_PAGE,
                             page, 0);
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
        if (ret < 0) {
            t->map[v] = q + 1;
            goto out;
        }
        rev[p] = v;
        set_bit(p, t->in_use);
        clear_bit(q, t->in_use);
        while (t->used && !test_bit(t->used - 1, t->in_use)) {
            t->used--;
        }
    }
    /* The storage past the last chunk in use holds nothing: cut it (a
     * device that cannot shrink keeps it, which is no error). */
    if (bdrv_co_truncate(s->data, fvd_chunk_host(s, t->used), true,
                         PREALLOC_MODE_OFF, NULL) >= 0) {
        t->storage_chunks = t->used;
        t->zero_from = t->used;     /* all past the end now */
    } else {
        t->zero_from = MAX(t->zero_from, t->storage_chunks);
    }
    ret = bdrv_co_flush(s->data);
out:
    g_free(rev);
    qemu_vfree(buf);
    qemu_vfree(page);
    return ret;
}

uint64_t fvd_data_needed(BDRVFvdState *s)
{
    if (s->compact) {
        return fvd_chunk_host(s, s->t.used);
    }
    return fvd_host_offset(s, s->header.virtual_size);
}
