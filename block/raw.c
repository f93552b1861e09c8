/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The raw format: the guest disk is the bytes of the child node, optionally a
 * window [offset, offset+size) of it. When raw was chosen by probing, writes
 * that would make block 0 look like another format are refused.
 */
#include "block_int.h"

typedef struct BDRVRawState {
    uint64_t offset;
    uint64_t size;
    bool has_size;
} BDRVRawState;

/* Protocol options (preallocation, ...) are accepted on top of these. */
static const QemuOptDesc raw_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { NULL }
};

static const QemuOptDesc raw_open_opts[] = {
    { "offset", QEMU_OPT_SIZE, "offset in the disk where the image starts" },
    { "size", QEMU_OPT_SIZE, "virtual disk size" },
    { NULL }
};

/* Raw matches anything, with the lowest score. */
static int raw_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    return 1;
}

static int coroutine_fn raw_open(BlockDriverState *bs, QemuOpts *options,
                                 int flags, Error **errp)
{
    BDRVRawState *s = bs->opaque;
    int64_t file_len = bdrv_getlength(bs->file);

    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "Could not get image size");
        return (int)file_len;
    }
    if (bs->probed && (flags & BDRV_O_RDWR)) {
        fprintf(stderr, "WARNING: Image format was not specified for '%s' "
                "and probing guessed raw.\n"
                "         Automatically detecting the format is dangerous "
                "for raw images, write operations on block 0 will be "
                "restricted.\n"
                "         Specify the 'raw' format explicitly to remove the "
                "restrictions.\n", bs->filename);
    }
    s->offset = qemu_opt_get_size(options, "offset", 0);
    s->has_size = qemu_opt_has(options, "size");
    s->size = s->has_size ? qemu_opt_get_size(options, "size", 0)
                          : (uint64_t)MAX(file_len - (int64_t)s->offset, 0);
    if (s->offset > (uint64_t)file_len) {
        error_setg(errp, "Offset (%" PRIu64 ") cannot be greater than size "
                   "of the containing file (%" PRId64 ")", s->offset,
                   file_len);
        return -EINVAL;
    }
    if (s->size > (uint64_t)file_len - s->offset) {
        error_setg(errp, "The sum of offset (%" PRIu64 ") and size (%" PRIu64
                   ") has to be smaller or equal to the actual size of the "
                   "containing file (%" PRId64 ")", s->offset, s->size,
                   file_len);
        return -EINVAL;
    }
    return 0;
}

/*
 * The whole file is the disk: its users' permissions pass through. With a
 * size window the file is data whose size must not change under us (QEMU
 * 7.2's raw): no resize shared, and write/resize only when asked.
 */
static void raw_file_perm(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared, uint64_t *nperm, uint64_t *nshared)
{
    BDRVRawState *s = bs->opaque;

    if (!s->has_size) {
        bdrv_default_child_perm(bs, BDRV_CHILD_FILTERED, perm, shared, nperm,
                                nshared);
        return;
    }
    bdrv_default_child_perm(bs, BDRV_CHILD_DATA, perm, shared, nperm,
                            nshared);
    *nperm &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    *nperm |= perm & (BLK_PERM_WRITE | BLK_PERM_RESIZE);
}

static void raw_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVRawState *s = bs->opaque;
    /* Pass requests through unaligned only when the window keeps them
     * aligned for the file; otherwise the file node does the RMW. */
    if (s->offset % bs->file->bl.request_alignment == 0) {
        bs->bl.request_alignment = 1;
    }
    bs->bl.max_transfer = bs->file->bl.max_transfer;
}

static int coroutine_fn raw_co_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    BDRVRawState *s = bs->opaque;
    BLKDBG_EVENT(bs->file, "read_aio");   /* guest data (QEMU's) */
    return bdrv_co_preadv_part(bs->file, offset + s->offset, bytes, qiov,
                               qiov_offset, flags);
}

/* Would writing this data to the start make the image probe as non-raw? */
static bool raw_write_changes_format(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset)
{
    uint8_t buf[BLOCK_PROBE_BUF_SIZE] = { 0 };
    int n = MIN(bytes, (int64_t)sizeof(buf) - offset);
    int score;

    if (!bs->probed || offset >= 512) {
        return false;
    }
    if (bdrv_pread(bs->file, 0, sizeof(buf), buf, 0) < 0) {
        return true;
    }
    if (qiov) {
        qemu_iovec_to_buf(qiov, qiov_offset, buf + offset, n);
    } else {
        memset(buf + offset, 0, n);
    }
    BlockDriver *drv = bdrv_probe_all(buf, sizeof(buf), bs->filename, &score);
    return drv && drv != bs->drv && score > 1;
}

static int coroutine_fn raw_co_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    BDRVRawState *s = bs->opaque;

    if (raw_write_changes_format(bs, offset, bytes, qiov, qiov_offset)) {
        return -EPERM;
    }
    BLKDBG_EVENT(bs->file, "write_aio");  /* guest data (QEMU's) */
    return bdrv_co_pwritev_part(bs->file, offset + s->offset, bytes, qiov,
                                qiov_offset, flags);
}

static int coroutine_fn raw_co_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    BDRVRawState *s = bs->opaque;
    return bdrv_co_pwrite_zeroes(bs->file, offset + s->offset, bytes, flags);
}

static int coroutine_fn raw_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    BDRVRawState *s = bs->opaque;
    return bdrv_co_pdiscard(bs->file, offset + s->offset, bytes);
}

static int coroutine_fn raw_co_block_status(BlockDriverState *bs,
                                            bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum,
                                            int64_t *map,
                                            BlockDriverState **file)
{
    BDRVRawState *s = bs->opaque;
    *pnum = bytes;
    *map = offset + s->offset;
    *file = bs->file;
    return BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID;
}

static int coroutine_fn raw_co_truncate(BlockDriverState *bs, int64_t offset,
                                        bool exact, PreallocMode prealloc,
                                        Error **errp)
{
    BDRVRawState *s = bs->opaque;

    if (s->has_size) {
        error_setg(errp, "Cannot resize fixed-size raw disks");
        return -ENOTSUP;
    }
    if (INT64_MAX - offset < (int64_t)s->offset) {
        error_setg(errp, "Disk size too large for the chosen offset");
        return -EINVAL;
    }
    int ret = bdrv_co_truncate(bs->file, offset + s->offset, exact, prealloc,
                               errp);
    if (ret >= 0) {
        s->size = offset;
    }
    return ret;
}

static int64_t raw_getlength(BlockDriverState *bs)
{
    BDRVRawState *s = bs->opaque;
    if (s->has_size) {
        return s->size;
    }
    int64_t len = bdrv_getlength(bs->file);
    if (len < 0) {
        return len;
    }
    return MAX(len - (int64_t)s->offset, 0);
}

/* What the file knows (QEMU's raw asks it too: over null-co, nothing). */
static int raw_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    return bdrv_get_info(bs->file, bdi);
}

static bool raw_has_zero_init(BlockDriverState *bs)
{
    return bdrv_has_zero_init(bs->file);
}

static int coroutine_fn raw_create(const char *filename, QemuOpts *opts,
                                   Error **errp)
{
    return bdrv_create_file(filename, opts, errp);
}

/* Raw images need as many bytes as the disk has (holes included). */
static BlockMeasureInfo *raw_measure(QemuOpts *opts, BlockDriverState *in_bs,
                                     Error **errp)
{
    BlockMeasureInfo *info;
    int64_t required;

    if (in_bs) {
        required = bdrv_getlength(in_bs);
        if (required < 0) {
            error_setg_errno(errp, (int)-required, "Unable to get image "
                             "virtual_size");
            return NULL;
        }
    } else {
        required = ROUND_UP(qemu_opt_get_size(opts, "size", 0),
                            BDRV_SECTOR_SIZE);
    }
    info = g_new0(BlockMeasureInfo, 1);
    info->required = required;
    info->fully_allocated = required;
    return info;
}

/* Options whose presence makes the node's name json:{...} (QEMU's). */
static const char *const raw_strong_opts[] = { "offset", "size", NULL };

static BlockDriver bdrv_raw = {
    .format_name            = "raw",
    .instance_size          = sizeof(BDRVRawState),
    .strong_opts            = raw_strong_opts,
    .create_opts            = raw_create_opts,
    .open_opts              = raw_open_opts,
    .passthrough_snapshots  = true,

    .bdrv_probe             = raw_probe,
    .bdrv_open              = raw_open,
    .bdrv_refresh_limits    = raw_refresh_limits,
    .bdrv_create            = raw_create,

    .bdrv_co_preadv         = raw_co_preadv,
    .bdrv_co_pwritev        = raw_co_pwritev,
    .bdrv_co_pwrite_zeroes  = raw_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = raw_co_pdiscard,
    .bdrv_co_block_status   = raw_co_block_status,
    .bdrv_co_truncate       = raw_co_truncate,
    .bdrv_getlength         = raw_getlength,
    .bdrv_get_info          = raw_get_info,
    .bdrv_has_zero_init     = raw_has_zero_init,
    .bdrv_measure           = raw_measure,
    .bdrv_file_perm         = raw_file_perm,

    .supported_write_flags  = BDRV_REQ_FUA,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA,
};

BLOCK_DRIVER_REGISTER(bdrv_raw)
