/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The compress filter (QEMU's driver=compress): every write through it is
 * stored compressed by the format node below (qcow2), in whole clusters:
 * the filter's request alignment is that node's cluster size, so the
 * layer reads, modifies and writes the clusters a partial write touches.
 * Reads, zero writes and discards pass through.
 */
#include "block_int.h"

static int coroutine_fn compress_open(BlockDriverState *bs, QemuOpts *options,
                                      int flags, Error **errp)
{
    if (!bs->file || !bs->file->drv ||
        !bdrv_driver_can_compress(bs->file->drv)) {
        error_setg(errp, "Compression is not supported for underlying "
                   "format: %s", bs->file && bs->file->drv
                   ? bs->file->drv->format_name : "(no format)");
        return -ENOTSUP;
    }
    return 0;
}

static int coroutine_fn compress_co_preadv(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags);
}

static int coroutine_fn compress_co_pwritev(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    return bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset,
                                flags | BDRV_REQ_WRITE_COMPRESSED);
}

static int coroutine_fn compress_co_pwrite_zeroes(BlockDriverState *bs,
                                                  int64_t offset,
                                                  int64_t bytes,
                                                  BdrvRequestFlags flags)
{
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn compress_co_pdiscard(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes)
{
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

/* Whole clusters of the node below (QEMU's compress_refresh_limits). */
static void compress_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BlockDriverInfo bdi = { 0 };

    if (bs->file && bdrv_get_info(bs->file, &bdi) >= 0 &&
        bdi.cluster_size > 0 &&
        !(bdi.cluster_size & (bdi.cluster_size - 1))) {
        bs->bl.request_alignment = bdi.cluster_size;
    }
}

static BlockDriver bdrv_compress = {
    .format_name            = "compress",
    .instance_size          = 0,
    .is_filter              = true,

    .bdrv_open              = compress_open,
    .bdrv_refresh_limits    = compress_refresh_limits,

    .bdrv_co_preadv         = compress_co_preadv,
    .bdrv_co_pwritev        = compress_co_pwritev,
    .bdrv_co_pwrite_zeroes  = compress_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = compress_co_pdiscard,

    .supported_write_flags  = BDRV_REQ_FUA,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA,
};

BLOCK_DRIVER_REGISTER(bdrv_compress)
