/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD copy-on-read: base data read by the guest is also written into the
 * image, whole blocks at a time, without a journal record. The blocks are
 * reserved like an allocating write, so a guest write to them waits and
 * then lands on top (guest data always wins); blocks that another request
 * has reserved are read from the base without copying. The guest's read
 * completes as soon as the base data is in its buffer: the copy is written
 * in the background (up to FVD_COR_MAX_INFLIGHT bytes at a time), still
 * holding the reservation. Its bits go home with the bitmap entry once the
 * copied data is durable; a crash before that only makes the block read
 * from the (unchanged) base again.
 */
#include "block/fvd/fvd.h"

/* A copy whose base data was read: blocks [c, c + k) at byte start. */
typedef struct FvdCopy {
    BlockDriverState *bs;
    FvdAlloc alloc;             /* the reservation, held until written */
    uint64_t c, k;
    int64_t start, len;
    uint8_t *buf;
} FvdCopy;

/* Write the copy, set its bits (a failure only leaves the blocks in the
 * base), release the reservation. */
static void coroutine_fn fvd_cor_write(FvdCopy *cp)
{
    BDRVFvdState *s = cp->bs->opaque;

    BLKDBG_EVENT(s->data, "cor_write");
    QEMUIOVector v;
    qemu_iovec_init_buf(&v, cp->buf, cp->len);
    /* In a compact image this may map a chunk: a bit that goes home before
     * the mapping's record only makes the block read from the base. */
    int ret = fvd_data_pwritev(cp->bs, cp->start, cp->len, &v, 0, 0);
    if (ret >= 0) {
        uint64_t gen = bdrv_get_write_gen(s->data);
        if (fvd_bitmap_set_cached(s, cp->c, cp->c + cp->k, s->data,
                                  gen) >= 0) {
            s->soft_dirty = true;
            s->stats.cor_blocks += cp->k;
        }
    }
    fvd_alloc_end(s, &cp->alloc);
    s->cor_inflight -= cp->len;
    qemu_vfree(cp->buf);
    g_free(cp);
}

static void coroutine_fn fvd_cor_write_entry(void *opaque)
{
    FvdCopy *cp = opaque;
    BlockDriverState *bs = cp->bs;

    fvd_cor_write(cp);
    bs->in_flight--;
}

/*
 * Copy blocks [c, c + k) (reserved by the caller in cp->alloc) and return
 * the guest's part [offset, offset + n) of them in qiov. Takes cp over.
 */
static int coroutine_fn fvd_cor_copy(FvdCopy *cp, int64_t offset, int64_t n,
                                     QEMUIOVector *qiov, size_t qiov_offset)
{
    BlockDriverState *bs = cp->bs;
    BDRVFvdState *s = bs->opaque;
    QEMUIOVector v;
    int ret;

    cp->buf = qemu_blockalign(cp->len);
    qemu_iovec_init_buf(&v, cp->buf, cp->len);
    s->cor_inflight += cp->len;
    BLKDBG_EVENT(bs->backing, "cor_read");
    ret = bdrv_co_preadv(bs->backing, cp->start, cp->len, &v, 0);
    if (ret < 0) {
        fvd_alloc_end(s, &cp->alloc);
        s->cor_inflight -= cp->len;
        qemu_vfree(cp->buf);
        g_free(cp);
        return ret;
    }
    qemu_iovec_from_buf(qiov, qiov_offset, cp->buf + (offset - cp->start), n);
    if (s->cor_inflight > FVD_COR_MAX_INFLIGHT) {
        fvd_cor_write(cp);      /* enough in the background: wait for it */
    } else {
        bs->in_flight++;        /* drain and close wait for it */
        aio_co_schedule(qemu_coroutine_create(fvd_cor_write_entry, cp));
    }
    return 0;
}

int coroutine_fn fvd_cor_read(BlockDriverState *bs, uint64_t c, uint64_t run,
                              int64_t offset, int64_t bytes,
                              QEMUIOVector *qiov, size_t qiov_offset)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    uint64_t max_blocks = MAX(UINT64_C(1), (uint64_t)FVD_COR_MAX >> bits);

    if (fvd_begin_change(bs) < 0) {
        /* The image may not change yet: serve the read without a copy. */
        return fvd_read_base(bs, offset, bytes, qiov, qiov_offset);
    }
    while (bytes > 0) {
        uint64_t k = MIN(run, max_blocks);
        int64_t piece_end = MIN((int64_t)((c + k) << bits), offset + bytes);
        int64_t n = piece_end - offset;
        bool copied = false;
        int ret = 0;

        if (!fvd_alloc_overlap(s, c, c + k)) {
            FvdCopy *cp = g_new0(FvdCopy, 1);
            bool in_image;
            uint64_t run2;
            cp->bs = bs;
            cp->c = c;
            cp->k = k;
            cp->start = c << bits;
            cp->len = MIN((int64_t)((c + k) << bits),
                          (int64_t)fvd_coverage(s)) - cp->start;
            fvd_alloc_begin(s, &cp->alloc, c, c + k);
            ret = fvd_block_run(s, c, c + k, &in_image, &run2);
            if (ret >= 0 && !in_image && run2 == k) {
                ret = fvd_cor_copy(cp, offset, n, qiov, qiov_offset);
                copied = true;
            } else {
                fvd_alloc_end(s, &cp->alloc);
                g_free(cp);
            }
        }
        if (ret >= 0 && !copied) {
            /* Another request owns these blocks: a plain read, valid for a
             * read racing that request. */
            ret = fvd_read_base(bs, offset, n, qiov, qiov_offset);
        }
        if (ret < 0) {
            return ret;
        }
        c += k;
        run -= k;
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}
