/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD copy-on-read: base data read by the guest is also written into the
 * image, whole blocks at a time, without a journal record. The blocks are
 * reserved like an allocating write, so a guest write to them waits and
 * then lands on top (guest data always wins); blocks that another request
 * has reserved are read from the base without copying. Their bits go home
 * with the bitmap entry once the copied data is durable; a crash before
 * that only makes the block read from the (unchanged) base again.
 */
#include "block/fvd/fvd.h"

/* Copy blocks [c, c + k) (reserved by the caller) and return the guest's
 * part [offset, offset + n) of them in qiov. */
static int coroutine_fn fvd_cor_copy(BlockDriverState *bs, uint64_t c,
                                     uint64_t k, int64_t offset, int64_t n,
                                     QEMUIOVector *qiov, size_t qiov_offset)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    int64_t start = c << bits;
    int64_t end = MIN((int64_t)((c + k) << bits), (int64_t)fvd_coverage(s));
    uint8_t *buf = qemu_blockalign(end - start);
    QEMUIOVector v;
    int ret;

    qemu_iovec_init_buf(&v, buf, end - start);
    s->cor_inflight += end - start;
    BLKDBG_EVENT(bs->backing, "cor_read");
    ret = bdrv_co_preadv(bs->backing, start, end - start, &v, 0);
    if (ret >= 0) {
        qemu_iovec_from_buf(qiov, qiov_offset, buf + (offset - start), n);
        BLKDBG_EVENT(s->data, "cor_write");
        int wret = bdrv_co_pwritev(s->data, fvd_host_offset(s, start),
                                   end - start, &v, 0);
        /* The guest has its data either way: a failed copy only means the
         * block stays in the base. */
        if (wret >= 0) {
            uint64_t gen = bdrv_get_write_gen(s->data);
            if (fvd_bitmap_set_cached(s, c, c + k, s->data, gen) >= 0) {
                s->soft_dirty = true;
                s->stats.cor_blocks += k;
            }
        }
    }
    s->cor_inflight -= end - start;
    qemu_vfree(buf);
    return ret;
}

int coroutine_fn fvd_cor_read(BlockDriverState *bs, uint64_t c, uint64_t run,
                              int64_t offset, int64_t bytes,
                              QEMUIOVector *qiov, size_t qiov_offset)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    uint64_t max_blocks = MAX(UINT64_C(1), (uint64_t)FVD_COR_MAX >> bits);

    while (bytes > 0) {
        uint64_t k = MIN(run, max_blocks);
        int64_t piece_end = MIN((int64_t)((c + k) << bits), offset + bytes);
        int64_t n = piece_end - offset;
        bool copied = false;
        int ret = 0;

        if (!fvd_alloc_overlap(s, c, c + k) &&
            s->cor_inflight < FVD_COR_MAX_INFLIGHT) {
            FvdAlloc a;
            bool in_image;
            uint64_t run2;
            fvd_alloc_begin(s, &a, c, c + k);
            ret = fvd_bitmap_run(s, c, c + k, &in_image, &run2);
            if (ret >= 0 && !in_image && run2 == k) {
                ret = fvd_cor_copy(bs, c, k, offset, n, qiov, qiov_offset);
                copied = true;
            }
            fvd_alloc_end(s, &a);
        }
        if (ret >= 0 && !copied) {
            /* Another request owns these blocks (or the copy budget is
             * spent): a plain read, valid for a read racing that request. */
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
