/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD guest I/O: reads (from the image or through to the base), writes in
 * place or allocating (copy-on-write of whole blocks, serialised per block),
 * zero writes, discard, flush and block status. The order of data writes,
 * journal commits and bitmap writes is docs/specs/fvd.txt section 7.
 */
#include "block/fvd/fvd.h"

/* ---- reads ---- */

/* Guest bytes still in the base: the base image, or zeroes without one. */
int coroutine_fn fvd_read_base(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, QEMUIOVector *qiov,
                               size_t qiov_offset)
{
    if (!bs->backing) {
        qemu_iovec_memset(qiov, qiov_offset, 0, bytes);
        return 0;
    }
    return bdrv_co_preadv_part(bs->backing, offset, bytes, qiov, qiov_offset,
                               0);
}

/*
 * Split [offset, offset + bytes) below the coverage into a run of blocks
 * with one state: *n bytes from offset, blocks [*c, *c + *run).
 */
static int coroutine_fn fvd_next_run(BDRVFvdState *s, int64_t offset,
                                     int64_t bytes, bool *in_image,
                                     uint64_t *c, uint64_t *run, int64_t *n)
{
    int bits = s->header.block_bits;
    uint64_t first = (uint64_t)offset >> bits;
    uint64_t last = MIN(((uint64_t)(offset + bytes - 1) >> bits) + 1,
                        s->nb_blocks);
    int ret = fvd_block_run(s, first, last, in_image, run);

    if (ret < 0) {
        return ret;
    }
    *c = first;
    *n = MIN((int64_t)((first + *run) << bits) - offset, bytes);
    *n = MIN(*n, (int64_t)fvd_coverage(s) - offset);
    return 0;
}

static int coroutine_fn fvd_do_read(BlockDriverState *bs, int64_t offset,
                                    int64_t bytes, QEMUIOVector *qiov,
                                    size_t qiov_offset)
{
    BDRVFvdState *s = bs->opaque;

    while (bytes > 0) {
        int ret;
        if ((uint64_t)offset >= fvd_coverage(s)) {
            return fvd_data_preadv(bs, offset, bytes, qiov, qiov_offset);
        }
        bool in_image;
        uint64_t c, run;
        int64_t n;
        ret = fvd_next_run(s, offset, bytes, &in_image, &c, &run, &n);
        if (ret < 0) {
            return ret;
        }
        if (!in_image) {
            fvd_profile_note(s, c, run);
        }
        if (in_image) {
            ret = fvd_data_preadv(bs, offset, n, qiov, qiov_offset);
        } else if (s->copy_on_read && !bs->read_only && bs->backing) {
            ret = fvd_cor_read(bs, c, run, offset, n, qiov, qiov_offset);
        } else {
            ret = fvd_read_base(bs, offset, n, qiov, qiov_offset);
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

/* Guest requests are counted: prefetch yields to them (prefetch.c). */
int coroutine_fn fvd_co_preadv(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, QEMUIOVector *qiov,
                               size_t qiov_offset, BdrvRequestFlags flags)
{
    BDRVFvdState *s = bs->opaque;

    s->guest_reqs++;
    s->guest_inflight++;
    int ret = fvd_do_read(bs, offset, bytes, qiov, qiov_offset);
    s->guest_inflight--;
    return ret;
}

/* ---- writes ---- */

/* A zero-filled vector element of len bytes (freed by the caller). */
static void *fvd_add_zeroes(QEMUIOVector *v, int64_t len)
{
    void *z = qemu_blockalign(len);
    memset(z, 0, len);
    qemu_iovec_add(v, z, len);
    return z;
}

/*
 * Build blocks [start, end) (clipped to the coverage) from base head and
 * tail around the guest bytes and write them to the data storage in one
 * request. qiov NULL writes zeroes.
 */
static int coroutine_fn fvd_write_blocks(BlockDriverState *bs, int64_t start,
                                         int64_t end, int64_t offset,
                                         int64_t bytes, QEMUIOVector *qiov,
                                         size_t qiov_offset,
                                         BdrvRequestFlags flags)
{
    BDRVFvdState *s = bs->opaque;
    int64_t head = offset - start, tail = end - (offset + bytes);
    uint8_t *buf = NULL;
    void *zeroes = NULL;
    QEMUIOVector v;
    int ret = 0;

    assert(head >= 0 && tail >= 0);
    if (!qiov && !head && !tail) {
        BLKDBG_EVENT(s->data, "cow_write");
        return fvd_data_pwrite_zeroes(bs, start, end - start,
                                      flags & BDRV_REQ_MAY_UNMAP, true);
    }
    if (head || tail) {
        /* One base read for both ends; the guest bytes are laid over it. */
        QEMUIOVector whole;
        buf = qemu_blockalign(end - start);
        qemu_iovec_init_buf(&whole, buf, end - start);
        s->stats.cow_reads++;
        if (bs->backing) {
            BLKDBG_EVENT(bs->backing, "cow_read");
        }
        ret = fvd_read_base(bs, start, end - start, &whole, 0);
        if (ret < 0) {
            qemu_vfree(buf);
            return ret;
        }
    }
    qemu_iovec_init(&v, (qiov ? qiov->niov : 1) + 2);
    if (head) {
        qemu_iovec_add(&v, buf, head);
    }
    if (qiov) {
        qemu_iovec_concat(&v, qiov, qiov_offset, bytes);
    } else {
        zeroes = fvd_add_zeroes(&v, bytes);
    }
    if (tail) {
        qemu_iovec_add(&v, buf + head + bytes, tail);
    }
    BLKDBG_EVENT(s->data, "cow_write");
    ret = fvd_data_pwritev(bs, start, end - start, &v, 0, 0);
    qemu_iovec_destroy(&v);
    qemu_vfree(zeroes);
    qemu_vfree(buf);
    return ret;
}

/*
 * Allocating write into blocks [c, c + run), which the caller reserved and
 * found still in the base: the whole blocks are written, then their bits
 * become pending for the next journal commit.
 */
static int coroutine_fn fvd_write_alloc(BlockDriverState *bs, uint64_t c,
                                        uint64_t run, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset,
                                        BdrvRequestFlags flags)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    int64_t start = c << bits;
    int64_t end = MIN((int64_t)((c + run) << bits), (int64_t)fvd_coverage(s));
    int ret = fvd_write_blocks(bs, start, end, offset, bytes, qiov,
                               qiov_offset, flags);

    if (ret < 0) {
        return ret;
    }
    s->stats.alloc_writes++;
    fvd_bitmap_set_pending(s, c, c + run);
    fvd_journal_kick(bs);       /* past the soft limit: commit meanwhile */
    return 0;
}

/* Write n guest bytes at offset where the blocks are in the image. */
static int coroutine_fn fvd_write_in_place(BlockDriverState *bs,
                                           int64_t offset, int64_t n,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    if (qiov) {
        return fvd_data_pwritev(bs, offset, n, qiov, qiov_offset, flags);
    }
    /* Unmapped chunks of a compact image read as zeroes already. */
    return fvd_data_pwrite_zeroes(bs, offset, n, flags, false);
}

/*
 * The write path shared by data and zero writes (qiov NULL): runs of
 * blocks in the image are written in place without locks; runs still in
 * the base are reserved, rechecked and allocated.
 */
static int coroutine_fn fvd_do_write(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset,
                                     BdrvRequestFlags flags)
{
    BDRVFvdState *s = bs->opaque;

    if ((uint64_t)offset + bytes > s->header.virtual_size) {
        return -EIO;
    }
    int ret = fvd_begin_change(bs);
    if (ret < 0) {
        return ret;
    }
    while (bytes > 0) {
        if ((uint64_t)offset >= fvd_coverage(s)) {
            return fvd_write_in_place(bs, offset, bytes, qiov, qiov_offset,
                                      flags);
        }
        bool in_image;
        uint64_t c, run;
        int64_t n;
        ret = fvd_next_run(s, offset, bytes, &in_image, &c, &run, &n);
        if (ret < 0) {
            return ret;
        }
        if (in_image) {
            ret = fvd_write_in_place(bs, offset, n, qiov, qiov_offset, flags);
        } else {
            ret = fvd_journal_throttle(bs);
            if (ret < 0) {
                return ret;
            }
            if (fvd_alloc_wait(s, c, c + run)) {
                continue;       /* the bits may have changed: look again */
            }
            FvdAlloc a;
            bool in2;
            uint64_t run2;
            fvd_alloc_begin(s, &a, c, c + run);
            /* The run was read before the reservation (the scan may yield
             * between entries): recheck now that nobody else can allocate. */
            ret = fvd_block_run(s, c, c + run, &in2, &run2);
            if (ret >= 0 && (in2 || run2 != run)) {
                fvd_alloc_end(s, &a);
                continue;
            }
            if (ret >= 0) {
                ret = fvd_write_alloc(bs, c, run, offset, n, qiov,
                                      qiov_offset, flags);
            }
            fvd_alloc_end(s, &a);
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

int coroutine_fn fvd_co_pwritev(BlockDriverState *bs, int64_t offset,
                                int64_t bytes, QEMUIOVector *qiov,
                                size_t qiov_offset, BdrvRequestFlags flags)
{
    BDRVFvdState *s = bs->opaque;

    s->guest_reqs++;
    s->guest_inflight++;
    int ret = fvd_do_write(bs, offset, bytes, qiov, qiov_offset, flags);
    s->guest_inflight--;
    return ret;
}

/*
 * Zero writes whose part below the coverage covers whole blocks zero the
 * data storage and allocate those blocks; anything else falls back to
 * zero-buffer writes through co_pwritev (the layer does that on -ENOTSUP).
 */
int coroutine_fn fvd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t cov = fvd_coverage(s);
    uint64_t end = offset + bytes;

    if ((uint64_t)offset < cov) {
        uint64_t low_end = MIN(end, cov);
        if (offset % s->block_size ||
            (low_end % s->block_size && low_end != cov)) {
            return -ENOTSUP;
        }
    }
    return fvd_do_write(bs, offset, bytes, NULL, 0, flags);
}

/*
 * Discard: blocks wholly covered and in the image are discarded in the data
 * storage (they then read as zeroes); their bits stay set, because clearing
 * one would bring back base data the guest overwrote. Blocks in the base
 * are left alone.
 */
int coroutine_fn fvd_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    uint64_t cov = fvd_coverage(s);
    uint64_t end = offset + bytes;
    int ret = fvd_begin_change(bs);

    if (ret < 0) {
        return ret;
    }
    if (end > cov) {
        uint64_t from = MAX((uint64_t)offset, cov);
        ret = fvd_data_pdiscard(bs, from, end - from);
        if (ret < 0 || (uint64_t)offset >= cov) {
            return ret;
        }
        end = cov;
    }
    uint64_t c = DIV_ROUND_UP((uint64_t)offset, s->block_size);
    uint64_t c_end = end == cov ? s->nb_blocks : end >> bits;
    while (c < c_end) {
        uint64_t run;
        bool in_image;
        ret = fvd_block_run(s, c, c_end, &in_image, &run);
        if (ret < 0) {
            return ret;
        }
        if (in_image && !fvd_alloc_overlap(s, c, c + run)) {
            int64_t start = c << bits;
            int64_t len = MIN((int64_t)((c + run) << bits), (int64_t)cov) -
                          start;
            ret = fvd_data_pdiscard(bs, start, len);
            if (ret < 0) {
                return ret;
            }
        }
        c += run;
    }
    return 0;
}

/*
 * Flush: data first (in-place writes and what the journal will describe),
 * then the journal commit of every pending bit, then the bitmap entries
 * holding copy-on-read bits (an in-place write into a copied block needs
 * its bit durable). The layer then flushes bs->file.
 */
int coroutine_fn fvd_co_flush(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int ret = 0;

    if (s->data_file) {
        BLKDBG_EVENT(s->data_file, "data_flush");
        ret = bdrv_co_flush(s->data_file);
        if (ret < 0) {
            return ret;
        }
    }
    if ((!s->bitmap && !s->compact) || bs->read_only) {
        return 0;
    }
    ret = fvd_journal_commit(bs);
    /* A concurrent flush that took soft_dirty may still be writing those
     * entries: write (and wait) too, or this flush would return before
     * the bits it covers are home. */
    if (ret >= 0 && (s->soft_dirty || s->soft_writers) && s->bitmap) {
        s->soft_dirty = false;
        s->soft_writers++;
        ret = table_cache_write(s->bitmap);
        s->soft_writers--;
        if (ret < 0) {
            s->soft_dirty = true;
        }
    }
    return ret;
}

int coroutine_fn fvd_co_block_status(BlockDriverState *bs, bool want_zero,
                                     int64_t offset, int64_t bytes,
                                     int64_t *pnum, int64_t *map,
                                     BlockDriverState **file)
{
    BDRVFvdState *s = bs->opaque;

    if ((uint64_t)offset < fvd_coverage(s)) {
        bool in_image;
        uint64_t c, run;
        int ret = fvd_next_run(s, offset, bytes, &in_image, &c, &run, pnum);
        if (ret < 0) {
            return ret;
        }
        if (!in_image) {
            return 0;
        }
    } else {
        *pnum = bytes;
    }
    if (s->compact) {
        uint64_t in = offset & (s->chunk_size - 1);
        int64_t p = fvd_table_get(s, offset >> s->header.chunk_bits);
        *pnum = MIN(*pnum, (int64_t)(s->chunk_size - in));
        if (p < 0) {
            return BDRV_BLOCK_ZERO;     /* past the coverage, not mapped */
        }
        *map = s->header.data_offset + p * s->chunk_size + in;
    } else {
        *map = fvd_host_offset(s, offset);
    }
    *file = s->data;
    return BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID;
}
