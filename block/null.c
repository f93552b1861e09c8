/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The null-co and null-aio protocols (QEMU's null block driver): a disk of
 * a given size that stores nothing. Writes and flushes succeed at once (or
 * after latency-ns), reads return zeroes with read-zeroes=on and otherwise
 * leave the reader's buffer untouched, as QEMU's do.
 */
#include "block_int.h"
#include "util/cutils.h"

#define NULL_DEFAULT_SIZE (1 * GiB)

typedef struct BDRVNullState {
    int64_t length;
    int64_t latency_ns;
    bool read_zeroes;
    bool complete_in_bh;        /* null-aio: completions from the loop */
} BDRVNullState;

static const QemuOptDesc null_open_opts[] = {
    { "size", QEMU_OPT_SIZE, "size of the null block" },
    { "latency-ns", QEMU_OPT_STRING,
      "nanoseconds (approximated) to wait before completing request" },
    { "read-zeroes", QEMU_OPT_BOOL, "return zeroes when read" },
    { NULL }
};

static int null_open_common(BlockDriverState *bs, QemuOpts *options,
                            const char *name, Error **errp)
{
    BDRVNullState *s = bs->opaque;
    const char *latency = qemu_opt_get(options, "latency-ns");
    uint64_t size = qemu_opt_get_size(options, "size", NULL_DEFAULT_SIZE);

    /* The node may be named by options only; a name must be "NAME://". */
    if (*bs->filename && strcmp(bs->filename, name)) {
        error_setg(errp, "The only allowed filename for this driver is '%s'",
                   name);
        return -EINVAL;
    }
    pstrcpy(bs->filename, sizeof(bs->filename), name);
    if (size > INT64_MAX - BDRV_SECTOR_SIZE) {
        error_setg(errp, "size is too large");
        return -EINVAL;
    }
    s->length = size;
    /* QEMU reads the number as unsigned and refuses what is negative as
     * signed: "-1" is invalid, not a very long wait. */
    if (latency && (qemu_strtoi64(latency, NULL, 0, &s->latency_ns) < 0 ||
                    s->latency_ns < 0)) {
        error_setg(errp, "latency-ns is invalid");
        return -EINVAL;
    }
    s->read_zeroes = qemu_opt_get_bool(options, "read-zeroes", false);
    return 0;
}

static int coroutine_fn null_co_open(BlockDriverState *bs, QemuOpts *options,
                                     int flags, Error **errp)
{
    return null_open_common(bs, options, "null-co://", errp);
}

static int coroutine_fn null_aio_open(BlockDriverState *bs,
                                      QemuOpts *options, int flags,
                                      Error **errp)
{
    BDRVNullState *s = bs->opaque;

    s->complete_in_bh = true;
    return null_open_common(bs, options, "null-aio://", errp);
}

static int64_t null_getlength(BlockDriverState *bs)
{
    BDRVNullState *s = bs->opaque;
    return s->length;
}

static int64_t null_get_allocated_file_size(BlockDriverState *bs)
{
    return 0;
}

/* Every request ends here: after the latency, or from a bottom half. */
static int coroutine_fn null_complete(BlockDriverState *bs)
{
    BDRVNullState *s = bs->opaque;

    if (s->latency_ns) {
        qemu_co_sleep_ns(s->latency_ns);
    } else if (s->complete_in_bh) {
        aio_co_schedule(qemu_coroutine_self());
        qemu_coroutine_yield();
    }
    return 0;
}

static int coroutine_fn null_co_preadv(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    BDRVNullState *s = bs->opaque;

    if (s->read_zeroes) {
        qemu_iovec_memset(qiov, qiov_offset, 0, bytes);
    }
    return null_complete(bs);
}

static int coroutine_fn null_co_pwritev(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset,
                                        BdrvRequestFlags flags)
{
    return null_complete(bs);
}

static int coroutine_fn null_co_flush_to_disk(BlockDriverState *bs)
{
    return null_complete(bs);
}

/* Nothing is stored: zeroes with read-zeroes=on, else unallocated. */
static int coroutine_fn null_co_block_status(BlockDriverState *bs,
                                             bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             int64_t *map,
                                             BlockDriverState **file)
{
    BDRVNullState *s = bs->opaque;

    *pnum = bytes;
    *map = offset;
    *file = bs;
    return BDRV_BLOCK_OFFSET_VALID | (s->read_zeroes ? BDRV_BLOCK_ZERO : 0);
}

#define NULL_DRIVER_COMMON                                          \
    .instance_size          = sizeof(BDRVNullState),                \
    .filename_optional      = true,                                 \
    .open_opts              = null_open_opts,                       \
    .bdrv_getlength         = null_getlength,                       \
    .bdrv_get_allocated_file_size = null_get_allocated_file_size,   \
    .bdrv_co_preadv         = null_co_preadv,                       \
    .bdrv_co_pwritev        = null_co_pwritev,                      \
    .bdrv_co_flush_to_disk  = null_co_flush_to_disk,                \
    .bdrv_co_block_status   = null_co_block_status,                 \
    .supported_write_flags  = BDRV_REQ_FUA

static BlockDriver bdrv_null_co = {
    .format_name            = "null-co",
    .protocol_name          = "null-co",
    .bdrv_open              = null_co_open,
    NULL_DRIVER_COMMON,
};

static BlockDriver bdrv_null_aio = {
    .format_name            = "null-aio",
    .protocol_name          = "null-aio",
    .bdrv_open              = null_aio_open,
    NULL_DRIVER_COMMON,
};

BLOCK_DRIVER_REGISTER(bdrv_null_co)
BLOCK_DRIVER_REGISTER(bdrv_null_aio)
