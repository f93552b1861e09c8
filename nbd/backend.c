/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The NBD server's adapter to the block layer (see backend.h), over the
 * user layer (BlockBackend): the export window (-o offset), detect-zeroes
 * and the discard policy live here.
 */
#include "nbd/backend.h"
#include "block-backend.h"

struct NBDBackend {
    BlockBackend *blk;
    int64_t offset;             /* export window start in bs */
    int64_t size;               /* export window length */
    NBDDetectZeroes detect_zeroes;
    bool unmap;
    bool read_only;
};

/* The export's size: the image's from the -o offset on. */
static int nbd_backend_refresh_size(NBDBackend *be, Error **errp)
{
    int64_t len = blk_getlength(be->blk);

    if (len < 0) {
        error_setg_errno(errp, -len, "Failed to determine the image length");
        return len;
    }
    if (be->offset < 0 || be->offset > len) {
        error_setg(errp, "Offset (%" PRId64 ") has to be smaller than the "
                   "image size (%" PRId64 ")", be->offset, len);
        return -EINVAL;
    }
    be->size = len - be->offset;
    return 0;
}

NBDBackend *nbd_backend_open(const NBDBackendConf *conf, Error **errp)
{
    BlockBackend *blk;
    NBDBackend *be;

    blk = blk_new_open(conf->filename, conf->fmt, conf->opts, conf->flags,
                       errp);
    if (!blk) {
        return NULL;
    }
    blk_set_enable_write_cache(blk, !conf->writethrough);
    be = g_new0(NBDBackend, 1);
    be->blk = blk;
    be->offset = conf->offset;
    be->detect_zeroes = conf->detect_zeroes;
    be->unmap = conf->flags & BDRV_O_UNMAP;
    be->read_only = !(conf->flags & BDRV_O_RDWR);
    if (nbd_backend_refresh_size(be, errp) < 0) {
        blk_unref(blk);
        g_free(be);
        return NULL;
    }
    return be;
}

int nbd_backend_load_snapshot(NBDBackend *be, const char *id,
                              const char *name, const char *id_or_name,
                              Error **errp)
{
    int ret;

    assert(be->read_only);
    if (id_or_name) {
        ret = bdrv_snapshot_load_tmp_by_id_or_name(blk_bs(be->blk),
                                                   id_or_name, errp);
    } else {
        ret = bdrv_snapshot_load_tmp(blk_bs(be->blk), id, name, errp);
    }
    if (ret < 0) {
        return ret;
    }
    return nbd_backend_refresh_size(be, errp);
}

void nbd_backend_close(NBDBackend *be)
{
    if (!be) {
        return;
    }
    blk_drain(be->blk);
    if (!be->read_only) {
        blk_flush(be->blk);
    }
    blk_unref(be->blk);
    g_free(be);
}

int64_t nbd_backend_size(NBDBackend *be)
{
    return be->size;
}

bool nbd_backend_read_only(NBDBackend *be)
{
    return be->read_only;
}

uint32_t nbd_backend_alignment(NBDBackend *be)
{
    uint32_t a = bdrv_get_request_alignment(blk_bs(be->blk));

    return a ? a : 1;
}

bool nbd_backend_can_unmap(NBDBackend *be)
{
    return be->unmap;
}

static BdrvRequestFlags nbd_backend_req_flags(NBDBackend *be, int flags)
{
    BdrvRequestFlags f = 0;

    if (flags & NBD_BE_FUA) {
        f |= BDRV_REQ_FUA;
    }
    if ((flags & NBD_BE_MAY_UNMAP) && be->unmap) {
        f |= BDRV_REQ_MAY_UNMAP;
    }
    if (flags & NBD_BE_NO_FALLBACK) {
        f |= BDRV_REQ_NO_FALLBACK;
    }
    return f;
}

int coroutine_fn nbd_backend_co_read(NBDBackend *be, int64_t offset,
                                     int64_t bytes, void *buf)
{
    return blk_co_pread(be->blk, be->offset + offset, bytes, buf, 0);
}

int coroutine_fn nbd_backend_co_write(NBDBackend *be, int64_t offset,
                                      int64_t bytes, const void *buf,
                                      int flags)
{
    if (be->detect_zeroes != NBD_DETECT_ZEROES_OFF &&
        buffer_is_zero(buf, bytes)) {
        int zflags = flags;

        if (be->detect_zeroes == NBD_DETECT_ZEROES_UNMAP) {
            zflags |= NBD_BE_MAY_UNMAP;
        }
        return nbd_backend_co_zero(be, offset, bytes, zflags);
    }
    return blk_co_pwrite(be->blk, be->offset + offset, bytes, buf,
                          nbd_backend_req_flags(be, flags & NBD_BE_FUA));
}

int coroutine_fn nbd_backend_co_zero(NBDBackend *be, int64_t offset,
                                     int64_t bytes, int flags)
{
    return blk_co_pwrite_zeroes(be->blk, be->offset + offset, bytes,
                                 nbd_backend_req_flags(be, flags));
}

int coroutine_fn nbd_backend_co_trim(NBDBackend *be, int64_t offset,
                                     int64_t bytes, int flags)
{
    int ret;

    if (!be->unmap) {
        return 0;       /* --discard=ignore: a trim is only advice */
    }
    ret = blk_co_pdiscard(be->blk, be->offset + offset, bytes);
    if (ret == -ENOTSUP) {
        ret = 0;
    }
    if (ret == 0 && (flags & NBD_BE_FUA)) {
        ret = blk_co_flush(be->blk);
    }
    return ret;
}

int coroutine_fn nbd_backend_co_flush(NBDBackend *be)
{
    return blk_co_flush(be->blk);
}

int coroutine_fn nbd_backend_co_block_status(NBDBackend *be, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             bool *hole, bool *zero,
                                             int *depth)
{
    int d = 0;
    int ret;

    ret = bdrv_co_block_status_above(blk_bs(be->blk), NULL,
                                     be->offset + offset, bytes, pnum, NULL,
                                     NULL, &d);
    if (ret < 0) {
        return ret;
    }
    if (*pnum <= 0) {
        return -EIO;
    }
    *hole = !(ret & BDRV_BLOCK_DATA);
    *zero = ret & BDRV_BLOCK_ZERO;
    if (depth) {
        *depth = (ret & BDRV_BLOCK_ALLOCATED) ? d + 1 : 0;
    }
    return 0;
}

void nbd_backend_drain(NBDBackend *be)
{
    blk_drain(be->blk);
}
