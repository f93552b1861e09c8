/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The copy-on-read filter (QEMU's driver=copy-on-read): every read through
 * it copies what its file node reads from that node's backing chain into
 * the file node, as `qemu-io -C` does for the whole image. Everything else
 * passes through.
 */
#include "block_int.h"

static int coroutine_fn cor_open(BlockDriverState *bs, QemuOpts *options,
                                 int flags, Error **errp)
{
    /* Copying writes into the node below: it must be writable (QEMU's
     * filter takes the write permission, refused the same way). */
    if (!(flags & BDRV_O_RDWR)) {
        error_setg(errp, "Block node is read-only");
        return -EPERM;
    }
    return 0;
}

static int coroutine_fn cor_co_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags | BDRV_REQ_COPY_ON_READ);
}

static int coroutine_fn cor_co_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    return bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset,
                                flags);
}

static int coroutine_fn cor_co_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn cor_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

/* The writable child's permissions: what the user holds, plus writing
 * (copies change no content, so they need no more than that). */
static void cor_file_perm(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared, uint64_t *nperm, uint64_t *nshared)
{
    bdrv_default_child_perm(bs, BDRV_CHILD_FILTERED, perm, shared, nperm,
                            nshared);
    *nperm |= BLK_PERM_WRITE_UNCHANGED;
}

static BlockDriver bdrv_copy_on_read = {
    .format_name            = "copy-on-read",
    .instance_size          = 0,
    .is_filter              = true,

    .bdrv_open              = cor_open,

    .bdrv_co_preadv         = cor_co_preadv,
    .bdrv_co_pwritev        = cor_co_pwritev,
    .bdrv_co_pwrite_zeroes  = cor_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = cor_co_pdiscard,
    .bdrv_file_perm         = cor_file_perm,

    .supported_write_flags  = BDRV_REQ_FUA,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA,
};

BLOCK_DRIVER_REGISTER(bdrv_copy_on_read)
