/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The request layer between callers and drivers: bounds checks, alignment
 * (read-modify-write of unaligned edges), request tracking and serialisation,
 * splitting at max_transfer, copy-on-read, zero-write and discard fallbacks,
 * flush ordering and block status. Every promise made to drivers in
 * block_int.h is asserted here before the driver is called.
 */
#include "block_int.h"
#include "util/aio.h"

#define ZERO_BOUNCE_MAX (1 * MiB)

/* ---- request tracking ---- */

static void tracked_request_begin(BdrvTrackedRequest *req,
                                  BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, bool is_write)
{
    *req = (BdrvTrackedRequest) {
        .bs = bs, .offset = offset, .bytes = bytes, .is_write = is_write,
        .overlap_offset = offset, .overlap_bytes = bytes,
        .co = qemu_coroutine_self(),
    };
    qemu_co_queue_init(&req->wait_queue);
    req->next = bs->tracked_requests;
    if (req->next) {
        req->next->prev = req;
    }
    bs->tracked_requests = req;
}

static void tracked_request_end(BdrvTrackedRequest *req)
{
    BlockDriverState *bs = req->bs;

    if (req->serialising) {
        bs->serialising_in_flight--;
    }
    if (req->prev) {
        req->prev->next = req->next;
    } else {
        bs->tracked_requests = req->next;
    }
    if (req->next) {
        req->next->prev = req->prev;
    }
    qemu_co_queue_restart_all(&req->wait_queue);
}

/* Widen the overlap range to align and make the request exclusive. */
static void tracked_request_serialise(BdrvTrackedRequest *req, uint64_t align)
{
    int64_t start = QEMU_ALIGN_DOWN(req->offset, (int64_t)align);
    int64_t end = req->offset + req->bytes;

    /* "Up to the end of the world" (truncate) must not overflow. */
    end = end > INT64_MAX - (int64_t)align ? INT64_MAX
                                           : QEMU_ALIGN_UP(end, (int64_t)align);

    start = MIN(start, req->overlap_offset);
    end = MAX(end, req->overlap_offset + req->overlap_bytes);
    req->overlap_offset = start;
    req->overlap_bytes = end - start;
    if (!req->serialising) {
        req->serialising = true;
        req->bs->serialising_in_flight++;
    }
}

static bool tracked_request_overlaps(BdrvTrackedRequest *req, int64_t offset,
                                     int64_t bytes)
{
    return offset < req->overlap_offset + req->overlap_bytes &&
           req->overlap_offset < offset + bytes;
}

/*
 * Wait until no overlapping request conflicts with req: serialising requests
 * conflict with every overlapping request, others only with serialising ones.
 */
static void coroutine_fn wait_serialising_requests(BdrvTrackedRequest *self)
{
    BlockDriverState *bs = self->bs;
    bool retry;

    if (!bs->serialising_in_flight) {
        return;
    }
    do {
        retry = false;
        for (BdrvTrackedRequest *req = bs->tracked_requests; req;
             req = req->next) {
            if (req == self || (!req->serialising && !self->serialising)) {
                continue;
            }
            if (!tracked_request_overlaps(req, self->overlap_offset,
                                          self->overlap_bytes)) {
                continue;
            }
            /* Waiting on ourselves would deadlock forever. */
            assert(qemu_coroutine_self() != req->co);
            /* A request already waiting (for us or others) goes after us. */
            if (req->waiting_for) {
                continue;
            }
            self->waiting_for = req;
            qemu_co_queue_wait(&req->wait_queue, NULL);
            self->waiting_for = NULL;
            retry = true;
            break;
        }
    } while (retry);
}

/*
 * The request layer's own blkdebug events (QEMU's names: pwritev,
 * pwritev_done, pwritev_rmw_*): raised on the node doing the request and
 * seen only if that node is blkdebug itself, as in QEMU.
 */
static void bdrv_debug_event_node(BlockDriverState *bs, const char *event)
{
    if (bs->drv && bs->drv->bdrv_debug_event) {
        bs->drv->bdrv_debug_event(bs, event);
    }
}

/* ---- checks ---- */

/* Is there a medium below bs (host_cdrom without a disc)? */
bool bdrv_is_inserted(BlockDriverState *bs)
{
    for (; bs && bs->drv; bs = bs->file) {
        if (bs->drv->bdrv_is_inserted && !bs->drv->bdrv_is_inserted(bs)) {
            return false;
        }
    }
    return bs == NULL;
}

static int bdrv_check_request(BlockDriverState *bs, int64_t offset,
                              int64_t bytes)
{
    /* Bounds and medium are the user layer's checks (block-backend.c). */
    if (!bs->drv) {
        return -ENOMEDIUM;
    }
    if (offset < 0 || bytes < 0 || offset > INT64_MAX - bytes) {
        return -EIO;
    }
    return 0;
}

static int64_t bdrv_max_transfer(BlockDriverState *bs)
{
    int64_t max = bs->bl.max_transfer ? (int64_t)bs->bl.max_transfer
                                      : (int64_t)(1 * GiB);
    return QEMU_ALIGN_DOWN(MIN(max, (int64_t)(1 * GiB)),
                           (int64_t)bs->bl.request_alignment);
}

/* ---- reads ---- */

/* A driver's bdrv_co_preadv or bdrv_co_pwritev. */
typedef int coroutine_fn BdrvDriverRwFunc(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          QEMUIOVector *qiov,
                                          size_t qiov_offset,
                                          BdrvRequestFlags flags);

/*
 * Aligned read or write of [offset, offset+bytes), passed to the driver's
 * fn (NULL: -ENOTSUP) in pieces of at most max_transfer: the last piece's
 * result (0 for none).
 */
static int coroutine_fn bdrv_driver_rw(BlockDriverState *bs,
                                       BdrvDriverRwFunc *fn,
                                       int64_t offset, int64_t bytes,
                                       QEMUIOVector *qiov, size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    int64_t max = bdrv_max_transfer(bs);
    int ret = 0;

    assert(QEMU_IS_ALIGNED(offset, bs->bl.request_alignment));
    assert(QEMU_IS_ALIGNED(bytes, bs->bl.request_alignment));
    assert(qiov_offset + bytes <= qiov->size);
    if (!fn) {
        return -ENOTSUP;
    }
    while (bytes > 0) {
        int64_t n = MIN(bytes, max);

        ret = fn(bs, offset, n, qiov, qiov_offset, flags);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return ret;
}

static int coroutine_fn bdrv_driver_preadv(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    int ret = bdrv_driver_rw(bs, bs->drv->bdrv_co_preadv, offset, bytes,
                             qiov, qiov_offset, flags);

    return ret < 0 ? ret : 0;
}

static BdrvDriverRwFunc bdrv_driver_pwritev;

/*
 * Copy-on-read: for the parts of the range that bs does not hold itself,
 * read through the backing chain and write the data into bs.
 */
static int coroutine_fn bdrv_co_do_copy_on_readv(BlockDriverState *bs,
                                                 int64_t offset,
                                                 int64_t bytes,
                                                 QEMUIOVector *qiov,
                                                 size_t qiov_offset)
{
    while (bytes > 0) {
        int64_t pnum;
        int ret = bdrv_co_block_status(bs, offset, bytes, &pnum, NULL, NULL);
        if (ret < 0) {
            return ret;
        }
        if (pnum <= 0) {
            pnum = bytes;
        }
        pnum = MIN(pnum, bytes);
        bool copy = !(ret & BDRV_BLOCK_ALLOCATED) && !bs->read_only;
        if (copy) {
            /* Keep the copied range aligned for the write. */
            int64_t align = bs->bl.request_alignment;
            pnum = MIN(QEMU_ALIGN_UP(offset + pnum, align) - offset, bytes);
        }
        ret = bdrv_driver_preadv(bs, offset, pnum, qiov, qiov_offset, 0);
        if (ret >= 0 && copy) {
            BLKDBG_EVENT(bs->file, "cor_write");
            ret = bdrv_driver_pwritev(bs, offset, pnum, qiov, qiov_offset, 0);
        }
        if (ret < 0) {
            return ret;
        }
        offset += pnum;
        bytes -= pnum;
        qiov_offset += pnum;
    }
    return 0;
}

/*
 * Read an aligned range. Formats read zeroes past the end of the virtual
 * disk; protocols handle their own end of file.
 */
static int coroutine_fn bdrv_aligned_preadv(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    int64_t readable = bytes;

    if (!bs->drv->protocol_name && bs->total_bytes >= 0) {
        int64_t avail = bs->total_bytes - offset;
        avail = avail < 0 ? 0 :
            QEMU_ALIGN_UP(avail, (int64_t)bs->bl.request_alignment);
        readable = MIN(bytes, avail);
        if (readable < bytes) {
            qemu_iovec_memset(qiov, qiov_offset + readable, 0,
                              bytes - readable);
        }
    }
    if (readable == 0) {
        return 0;
    }
    /* As QEMU: whatever the node does not hold itself is written into it,
     * backing file or not (unallocated parts of an image without one are
     * copied as the zeroes they read as). */
    if ((flags & BDRV_REQ_COPY_ON_READ) && !bs->drv->is_filter) {
        return bdrv_co_do_copy_on_readv(bs, offset, readable, qiov,
                                        qiov_offset);
    }
    /* A filter passes copy-on-read to the node that has the backing. */
    return bdrv_driver_preadv(bs, offset, readable, qiov, qiov_offset,
                              bs->drv->is_filter
                              ? flags & BDRV_REQ_COPY_ON_READ : 0);
}

/*
 * Pad an unaligned request to alignment: returns a new qiov made of a head
 * bounce buffer, the caller's bytes and a tail bounce buffer.
 */
typedef struct BdrvPad {
    uint8_t *buf;
    int64_t head, tail;           /* bytes of padding before/after */
    int64_t offset, bytes;        /* the aligned request */
    QEMUIOVector qiov;
} BdrvPad;

static void bdrv_pad_init(BdrvPad *pad, BlockDriverState *bs, int64_t offset,
                          int64_t bytes, QEMUIOVector *qiov,
                          size_t qiov_offset)
{
    int64_t align = bs->bl.request_alignment;

    pad->head = offset % align;
    pad->offset = offset - pad->head;
    pad->bytes = QEMU_ALIGN_UP(offset + bytes, align) - pad->offset;
    pad->tail = pad->bytes - pad->head - bytes;
    /* Head and tail each fit in one alignment unit. */
    pad->buf = qemu_memalign(MAX(bs->bl.min_mem_alignment, 512), 2 * align);
    qemu_iovec_init(&pad->qiov, (qiov ? qiov->niov : 0) + 2);
    if (pad->head) {
        qemu_iovec_add(&pad->qiov, pad->buf, pad->head);
    }
    if (qiov) {
        qemu_iovec_concat(&pad->qiov, qiov, qiov_offset, bytes);
    }
    if (pad->tail) {
        qemu_iovec_add(&pad->qiov, pad->buf + align + (align - pad->tail),
                       pad->tail);
    }
}

static void bdrv_pad_destroy(BdrvPad *pad)
{
    qemu_iovec_destroy(&pad->qiov);
    qemu_vfree(pad->buf);
}

int coroutine_fn bdrv_co_preadv_part(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset,
                                     BdrvRequestFlags flags)
{
    BdrvTrackedRequest req;
    int64_t align;
    int ret;

    ret = bdrv_check_request(bs, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (bytes == 0) {
        return 0;
    }
    assert(qiov_offset + bytes <= qiov->size);
    align = bs->bl.request_alignment;
    bs->in_flight++;
    tracked_request_begin(&req, bs, offset, bytes, false);
    if ((flags & BDRV_REQ_COPY_ON_READ) && !bs->drv->is_filter) {
        /* Copying writes into the image: exclude concurrent writers. */
        tracked_request_serialise(&req, align);
    }
    wait_serialising_requests(&req);

    if (QEMU_IS_ALIGNED(offset, align) && QEMU_IS_ALIGNED(bytes, align)) {
        ret = bdrv_aligned_preadv(bs, offset, bytes, qiov, qiov_offset,
                                  flags);
    } else {
        BdrvPad pad;
        bdrv_pad_init(&pad, bs, offset, bytes, qiov, qiov_offset);
        ret = bdrv_aligned_preadv(bs, pad.offset, pad.bytes, &pad.qiov, 0,
                                  flags);
        bdrv_pad_destroy(&pad);
    }
    tracked_request_end(&req);
    bs->in_flight--;
    return ret;
}

int coroutine_fn bdrv_co_preadv(BlockDriverState *bs, int64_t offset,
                                int64_t bytes, QEMUIOVector *qiov,
                                BdrvRequestFlags flags)
{
    return bdrv_co_preadv_part(bs, offset, bytes, qiov, 0, flags);
}

int coroutine_fn bdrv_co_pread(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, void *buf,
                               BdrvRequestFlags flags)
{
    QEMUIOVector qiov;
    qemu_iovec_init_buf(&qiov, buf, bytes);
    return bdrv_co_preadv_part(bs, offset, bytes, &qiov, 0, flags);
}

/* ---- writes ---- */

static int coroutine_fn bdrv_flush_wait(BlockDriverState *bs, uint64_t gen,
                                        bool force, uint64_t after_seq);

/*
 * Emulated FUA: the write just completed, but the caller counts it in
 * write_gen only when the request ends, so bdrv_co_flush() would find the
 * node clean right after another flush and skip the sync (a FUA write
 * that followed a flush was then not durable). Wait for a flush that
 * starts after the write completed.
 */
static int coroutine_fn bdrv_co_flush_fua(BlockDriverState *bs)
{
    return bdrv_flush_wait(bs, bs->write_gen, true, bs->flush_started);
}

static int coroutine_fn bdrv_driver_pwritev(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    BlockDriver *drv = bs->drv;
    BdrvRequestFlags drv_flags = flags & drv->supported_write_flags;
    bool emulate_fua = (flags & BDRV_REQ_FUA) && !(drv_flags & BDRV_REQ_FUA);
    int ret;

    if ((flags & BDRV_REQ_WRITE_COMPRESSED) &&
        !(drv->supported_write_flags & BDRV_REQ_WRITE_COMPRESSED)) {
        return -ENOTSUP;
    }
    ret = bdrv_driver_rw(bs, drv->bdrv_co_pwritev, offset, bytes, qiov,
                         qiov_offset, drv_flags);
    if (ret >= 0 && emulate_fua) {
        ret = bdrv_co_flush_fua(bs);
    }
    return ret;
}

static int coroutine_fn bdrv_driver_pwrite_zeroes_one(BlockDriverState *bs,
                                                      int64_t offset,
                                                      int64_t bytes,
                                                      BdrvRequestFlags flags);

/* Zero an aligned range: driver's method, else zero-buffer writes. */
static int coroutine_fn bdrv_driver_pwrite_zeroes(BlockDriverState *bs,
                                                  int64_t offset,
                                                  int64_t bytes,
                                                  BdrvRequestFlags flags)
{
    int ret;

    assert(QEMU_IS_ALIGNED(offset, bs->bl.request_alignment));
    assert(QEMU_IS_ALIGNED(bytes, bs->bl.request_alignment));
    /*
     * As QEMU's layer: an unaligned head (to the node's zero granularity,
     * at most one transfer) and tail go down alone, the middle in pieces
     * of at most the node's largest zero write (aligned to the
     * granularity); a driver may refuse small pieces (-ENOTSUP) and they
     * are written as zeroes.
     */
    int64_t zalign = MAX(bs->bl.pwrite_zeroes_alignment,
                         bs->bl.request_alignment);
    int64_t max = QEMU_ALIGN_DOWN(MIN(bs->bl.max_pwrite_zeroes ?
                                      (int64_t)bs->bl.max_pwrite_zeroes :
                                      (int64_t)INT_MAX, (int64_t)INT_MAX),
                                  zalign);
    int64_t head = offset % zalign;
    int64_t tail = (offset + bytes) % zalign;

    max = MAX(max, zalign);
    ret = 0;
    while (bytes > 0 && ret >= 0) {
        int64_t n = bytes;
        if (head) {
            n = MIN(MIN(bytes, bdrv_max_transfer(bs)), zalign - head);
            head = (head + n) % zalign;
        } else if (tail && n > zalign) {
            n -= tail;
        }
        n = MIN(n, max);
        ret = bdrv_driver_pwrite_zeroes_one(bs, offset, n, flags);
        offset += n;
        bytes -= n;
    }
    return ret;
}


static int coroutine_fn bdrv_driver_pwrite_zeroes_one(BlockDriverState *bs,
                                                      int64_t offset,
                                                      int64_t bytes,
                                                      BdrvRequestFlags flags)
{
    BlockDriver *drv = bs->drv;
    int ret = -ENOTSUP;

    if (drv->bdrv_co_pwrite_zeroes) {
        ret = drv->bdrv_co_pwrite_zeroes(bs, offset, bytes,
                                         flags & (drv->supported_zero_flags |
                                                  BDRV_REQ_NO_FALLBACK));
        if (ret != -ENOTSUP) {
            if (ret >= 0 && (flags & BDRV_REQ_FUA) &&
                !(drv->supported_zero_flags & BDRV_REQ_FUA)) {
                ret = bdrv_co_flush_fua(bs);
            }
            return ret;
        }
    }
    if (flags & BDRV_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    int64_t chunk = MIN(bytes, ZERO_BOUNCE_MAX);
    chunk = MAX(QEMU_ALIGN_DOWN(chunk, (int64_t)bs->bl.request_alignment),
                (int64_t)bs->bl.request_alignment);
    void *buf = qemu_memalign(MAX(bs->bl.min_mem_alignment, 512), chunk);
    memset(buf, 0, chunk);
    ret = 0;
    while (bytes > 0 && ret >= 0) {
        int64_t n = MIN(bytes, chunk);
        QEMUIOVector qiov;
        qemu_iovec_init_buf(&qiov, buf, n);
        ret = bdrv_driver_pwritev(bs, offset, n, &qiov, 0,
                                  flags & BDRV_REQ_FUA);
        offset += n;
        bytes -= n;
    }
    qemu_vfree(buf);
    return ret;
}

static int coroutine_fn bdrv_aligned_pwritev(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             QEMUIOVector *qiov,
                                             size_t qiov_offset,
                                             BdrvRequestFlags flags)
{
    int ret;

    if (flags & BDRV_REQ_ZERO_WRITE) {
        /* (blkdebug raises QEMU's pwritev_zero itself, as "zero") */
        ret = bdrv_driver_pwrite_zeroes(bs, offset, bytes, flags);
    } else {
        bdrv_debug_event_node(bs, "pwritev");
        ret = bdrv_driver_pwritev(bs, offset, bytes, qiov, qiov_offset,
                                  flags);
    }
    bdrv_debug_event_node(bs, "pwritev_done");
    if (ret >= 0 && bs->drv->protocol_name && bs->total_bytes >= 0 &&
        offset + bytes > bs->total_bytes) {
        /* The file grew to the write's end (QEMU's write_req_finish):
         * no need to ask the file system. */
        bs->total_bytes = QEMU_ALIGN_UP(offset + bytes,
                                        (int64_t)BDRV_SECTOR_SIZE);
    }
    return ret;
}

/*
 * Unaligned write: under serialisation, read the aligned head and tail
 * blocks, merge the caller's bytes (or zeroes) and write the aligned range.
 */
static int coroutine_fn bdrv_co_do_rmw(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    int64_t align = bs->bl.request_alignment;
    BdrvPad pad;
    QEMUIOVector blk;
    int ret = 0;

    /* Zero writes: the aligned middle goes to the zero path. */
    if (flags & BDRV_REQ_ZERO_WRITE) {
        int64_t mid_start = QEMU_ALIGN_UP(offset, align);
        int64_t mid_end = QEMU_ALIGN_DOWN(offset + bytes, align);
        if (mid_end > mid_start) {
            uint8_t *zbuf = g_malloc0(align);
            QEMUIOVector z;
            if (mid_start > offset) {
                qemu_iovec_init_buf(&z, zbuf, mid_start - offset);
                ret = bdrv_co_do_rmw(bs, offset, mid_start - offset, &z, 0,
                                     flags & ~BDRV_REQ_ZERO_WRITE);
            }
            if (ret >= 0) {
                ret = bdrv_aligned_pwritev(bs, mid_start,
                                           mid_end - mid_start, NULL, 0,
                                           flags);
            }
            if (ret >= 0 && offset + bytes > mid_end) {
                qemu_iovec_init_buf(&z, zbuf, offset + bytes - mid_end);
                ret = bdrv_co_do_rmw(bs, mid_end, offset + bytes - mid_end,
                                     &z, 0, flags & ~BDRV_REQ_ZERO_WRITE);
            }
            g_free(zbuf);
            return ret;
        }
        /* Small zero write inside one or two blocks: use a zero buffer. */
        uint8_t *zbuf = g_malloc0(bytes);
        QEMUIOVector z;
        qemu_iovec_init_buf(&z, zbuf, bytes);
        ret = bdrv_co_do_rmw(bs, offset, bytes, &z, 0,
                             flags & ~BDRV_REQ_ZERO_WRITE);
        g_free(zbuf);
        return ret;
    }

    bdrv_pad_init(&pad, bs, offset, bytes, qiov, qiov_offset);
    /* The events let tests stop a write between its reads and its write
     * (blkdebug breakpoints, QEMU's names); head and tail inside one block
     * are one read, announced as the head. */
    if (pad.head) {
        bdrv_debug_event_node(bs, "pwritev_rmw_head");
        qemu_iovec_init_buf(&blk, pad.buf, align);
        ret = bdrv_aligned_preadv(bs, pad.offset, align, &blk, 0, 0);
        bdrv_debug_event_node(bs, "pwritev_rmw_after_head");
        if (pad.tail && pad.bytes == align) {
            memcpy(pad.buf + align, pad.buf, align);
            pad.tail = 0;       /* read already */
        }
    }
    if (ret >= 0 && pad.tail) {
        bdrv_debug_event_node(bs, "pwritev_rmw_tail");
        qemu_iovec_init_buf(&blk, pad.buf + align, align);
        ret = bdrv_aligned_preadv(bs, pad.offset + pad.bytes - align, align,
                                  &blk, 0, 0);
        bdrv_debug_event_node(bs, "pwritev_rmw_after_tail");
    }
    if (ret >= 0) {
        ret = bdrv_aligned_pwritev(bs, pad.offset, pad.bytes, &pad.qiov, 0,
                                   flags);
    }
    bdrv_pad_destroy(&pad);
    return ret;
}

int coroutine_fn bdrv_co_pwritev_part(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    BdrvTrackedRequest req;
    int64_t align;
    int ret;

    ret = bdrv_check_request(bs, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    /* QEMU refuses a compressed write the driver cannot do, even empty */
    if ((flags & BDRV_REQ_WRITE_COMPRESSED) && bs->drv &&
        !(bs->drv->supported_write_flags & BDRV_REQ_WRITE_COMPRESSED)) {
        return -ENOTSUP;
    }
    if (bytes == 0) {
        return 0;
    }
    assert((flags & BDRV_REQ_ZERO_WRITE) || qiov_offset + bytes <= qiov->size);
    align = bs->bl.request_alignment;
    bs->in_flight++;
    tracked_request_begin(&req, bs, offset, bytes, true);
    if (flags & BDRV_REQ_SERIALISING) {
        tracked_request_serialise(&req, align);
    }
    if (QEMU_IS_ALIGNED(offset, align) && QEMU_IS_ALIGNED(bytes, align)) {
        wait_serialising_requests(&req);
        ret = bdrv_aligned_pwritev(bs, offset, bytes, qiov, qiov_offset,
                                   flags);
    } else {
        tracked_request_serialise(&req, align);
        wait_serialising_requests(&req);
        ret = bdrv_co_do_rmw(bs, offset, bytes, qiov, qiov_offset, flags);
    }
    tracked_request_end(&req);
    bs->write_gen++;
    bs->in_flight--;
    return ret;
}

int coroutine_fn bdrv_co_pwritev(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 BdrvRequestFlags flags)
{
    return bdrv_co_pwritev_part(bs, offset, bytes, qiov, 0, flags);
}

int coroutine_fn bdrv_co_pwrite(BlockDriverState *bs, int64_t offset,
                                int64_t bytes, const void *buf,
                                BdrvRequestFlags flags)
{
    QEMUIOVector qiov;
    qemu_iovec_init_buf(&qiov, (void *)buf, bytes);
    return bdrv_co_pwritev_part(bs, offset, bytes, &qiov, 0, flags);
}

int coroutine_fn bdrv_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags)
{
    if (!(bs->open_flags & BDRV_O_UNMAP)) {
        flags &= ~BDRV_REQ_MAY_UNMAP;
    }
    return bdrv_co_pwritev_part(bs, offset, bytes, NULL, 0,
                                flags | BDRV_REQ_ZERO_WRITE);
}

/* ---- asynchronous requests ---- */

static void bdrv_aio_task_complete(void *opaque)
{
    BdrvAioTask *t = opaque;

    t->cb(t->opaque, *t->ret);
    g_free(t);
}

static void coroutine_fn bdrv_aio_task_entry(void *opaque)
{
    BdrvAioTask *t = opaque;

    if (t->in_flight) {
        (*t->in_flight)++;
    }
    t->entry(t->arg);
    if (t->in_flight) {
        (*t->in_flight)--;
    }
    t->done = true;
    if (!t->submitting) {
        bdrv_aio_task_complete(t);
    }
}

void bdrv_aio_task_start(BdrvAioTask *t)
{
    t->submitting = true;
    qemu_coroutine_enter(qemu_coroutine_create(bdrv_aio_task_entry, t));
    t->submitting = false;
    if (t->done) {
        aio_bh_schedule_oneshot(qemu_get_aio_context(),
                                bdrv_aio_task_complete, t);
    }
}

/* ---- encrypted data through bounce buffers ---- */

int coroutine_fn bdrv_co_crypt_bounce(BlockDriverState *bs, bool write,
                                      uint64_t host, uint64_t guest,
                                      uint64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags, size_t bounce,
                                      BdrvCryptFunc *crypt, void *opaque)
{
    size_t len = MIN(bytes, bounce);
    uint8_t *buf = qemu_blockalign(len);
    int ret = 0;

    while (bytes > 0) {
        size_t n = MIN(bytes, bounce);

        if (write) {
            qemu_iovec_to_buf(qiov, qiov_offset, buf, n);
            crypt(opaque, true, host, guest, buf, n);
            ret = bdrv_co_pwrite(bs, host, n, buf, flags);
        } else {
            ret = bdrv_co_pread(bs, host, n, buf, flags);
            if (ret >= 0) {
                crypt(opaque, false, host, guest, buf, n);
                qemu_iovec_from_buf(qiov, qiov_offset, buf, n);
            }
        }
        if (ret < 0) {
            break;
        }
        host += n;
        guest += n;
        bytes -= n;
        qiov_offset += n;
    }
    explicit_bzero(buf, len);
    qemu_vfree(buf);
    return ret < 0 ? ret : 0;
}

/* ---- discard ---- */

int coroutine_fn bdrv_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes)
{
    BdrvTrackedRequest req;
    int64_t align;
    int ret;

    ret = bdrv_check_request(bs, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (bs->read_only) {
        return -EPERM;
    }
    if (!(bs->open_flags & BDRV_O_UNMAP) || !bs->drv->bdrv_co_pdiscard) {
        return 0;
    }
    /*
     * Discard is advisory. As QEMU's layer: the part aligned to the
     * driver's discard alignment goes down in one piece, an unaligned head
     * and tail (request aligned) each in their own, which the driver may
     * refuse with -ENOTSUP (qcow2 takes a tail that ends the image).
     */
    align = MAX(bs->bl.pdiscard_alignment, bs->bl.request_alignment);
    int64_t lo = QEMU_ALIGN_UP(offset, bs->bl.request_alignment);
    int64_t hi = QEMU_ALIGN_DOWN(offset + bytes, bs->bl.request_alignment);
    if (hi <= lo) {
        return 0;
    }
    int64_t start = MIN(QEMU_ALIGN_UP(lo, align), hi);
    int64_t end = MAX(QEMU_ALIGN_DOWN(hi, align), start);
    const int64_t pieces[3][2] = { { lo, start }, { start, end }, { end, hi } };
    /* Pieces up to the node's largest discard (aligned down to its
     * granularity), else up to its largest transfer. */
    int64_t max = bdrv_max_transfer(bs);
    if (bs->bl.max_pdiscard) {
        max = MAX(QEMU_ALIGN_DOWN((int64_t)bs->bl.max_pdiscard, align),
                  (int64_t)bs->bl.request_alignment);
    }
    bs->in_flight++;
    tracked_request_begin(&req, bs, lo, hi - lo, true);
    wait_serialising_requests(&req);
    ret = 0;
    for (int i = 0; i < 3 && ret >= 0; i++) {
        for (int64_t off = pieces[i][0]; off < pieces[i][1] && ret >= 0;) {
            int64_t n = MIN(pieces[i][1] - off, max);
            ret = bs->drv->bdrv_co_pdiscard(bs, off, n);
            if (ret == -ENOTSUP) {
                ret = 0;
            }
            off += n;
        }
    }
    tracked_request_end(&req);
    bs->write_gen++;
    bs->in_flight--;
    return ret;
}

/* ---- flush ---- */

/*
 * One flush of bs: the driver's cached metadata to its file, then the file
 * node (recursively), then the protocol's durability barrier. Backing files
 * are read-only and need no flush.
 */
static int coroutine_fn bdrv_flush_once(BlockDriverState *bs)
{
    int ret = 0;

    if (bs->drv->bdrv_co_flush) {
        ret = bs->drv->bdrv_co_flush(bs);
    }
    if (ret >= 0 && bs->file) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret >= 0 && bs->drv->bdrv_co_flush_to_disk &&
        !(bs->open_flags & BDRV_O_NO_FLUSH)) {
        ret = bs->drv->bdrv_co_flush_to_disk(bs);
    }
    return ret;
}

/*
 * Wait for a completed flush of bs that covers gen (and, if force, started
 * after flush number after_seq), running one when none in flight
 * qualifies. Flushes of a node are serialised: whoever finds none running
 * starts the next one, and every waiter it satisfies shares it.
 */
static int coroutine_fn bdrv_flush_wait(BlockDriverState *bs, uint64_t gen,
                                        bool force, uint64_t after_seq)
{
    for (;;) {
        if (bs->flushed_gen >= gen &&
            (!force || bs->flushed_seq > after_seq)) {
            return 0;
        }
        if (bs->flush_active) {
            bool covers = bs->flush_active_gen >= gen &&
                          (!force || bs->flush_active_seq > after_seq);
            uint64_t seq = bs->flush_active_seq;

            while (bs->flush_active && bs->flush_active_seq == seq) {
                qemu_co_queue_wait(&bs->flush_queue, NULL);
            }
            if (covers && bs->flushed_seq < seq) {
                /* The flush we needed failed and none succeeded since. */
                assert(bs->flush_last_ret < 0);
                return bs->flush_last_ret;
            }
            continue;
        }
        bs->flush_active = true;
        bs->flush_active_gen = bs->write_gen;
        bs->flush_active_seq = ++bs->flush_started;
        bs->in_flight++;
        int ret = bdrv_flush_once(bs);
        bs->in_flight--;
        if (ret >= 0) {
            bs->flushed_gen = bs->flush_active_gen;
            bs->flushed_seq = bs->flush_active_seq;
        }
        bs->flush_last_ret = ret;
        bs->flush_active = false;
        qemu_co_queue_restart_all(&bs->flush_queue);
        if (ret < 0) {
            return ret;
        }
    }
}

/*
 * Make every write to bs that completed before the call durable. A node
 * that syncs to disk skips the sync when nothing was written since its
 * last flush; other nodes always flush, because their drivers may have
 * written their files directly (headers) without a request on bs.
 */
int coroutine_fn bdrv_co_flush(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return 0;
    }
    if (bs->drv->bdrv_co_flush_to_disk) {
        return bdrv_flush_wait(bs, bs->write_gen, false, 0);
    }
    return bdrv_flush_wait(bs, bs->write_gen, true, bs->flush_started);
}

uint64_t bdrv_get_write_gen(BlockDriverState *bs)
{
    return bs->write_gen;
}

bool bdrv_write_gen_is_durable(BlockDriverState *bs, uint64_t gen)
{
    return bs->flushed_gen >= gen;
}

int coroutine_fn bdrv_co_flush_gen(BlockDriverState *bs, uint64_t gen)
{
    if (!bs || !bs->drv) {
        return 0;
    }
    assert(gen <= bs->write_gen);
    return bdrv_flush_wait(bs, gen, false, 0);
}

/* ---- block status ---- */

/*
 * The node's length as the layer keeps it (refreshed at open, by resizes
 * and by writes past the end), as QEMU's bdrv_getlength answers from
 * total_sectors: block status asks it several times per call, and a
 * convert asks block status for every chunk (an fstat each time before).
 */
static int64_t bdrv_known_length(BlockDriverState *bs)
{
    return bs->total_bytes >= 0 ? bs->total_bytes : bdrv_getlength(bs);
}

int coroutine_fn bdrv_co_block_status(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum,
                                      int64_t *map, BlockDriverState **file)
{
    BlockDriverState *local_file = NULL;
    int64_t local_map = 0;
    int64_t total;
    int ret;

    *pnum = 0;
    if (!bs->drv) {
        return -ENOMEDIUM;
    }
    total = bdrv_known_length(bs);
    if (total < 0) {
        return (int)total;
    }
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    if (offset >= total) {
        return BDRV_BLOCK_EOF;
    }
    bytes = MIN(bytes, total - offset);
    if (bytes == 0) {
        return 0;
    }
    if (!bs->drv->bdrv_co_block_status) {
        if (bs->drv->is_filter && bs->file) {
            return bdrv_co_block_status(bs->file, offset, bytes, pnum, map,
                                        file);
        }
        *pnum = bytes;
        ret = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
        if (bs->drv->protocol_name) {
            ret |= BDRV_BLOCK_OFFSET_VALID;
            local_map = offset;
            local_file = bs;
        }
    } else {
        bs->in_flight++;
        ret = bs->drv->bdrv_co_block_status(bs, true, offset, bytes, pnum,
                                            &local_map, &local_file);
        bs->in_flight--;
        if (ret < 0) {
            *pnum = 0;
            return ret;
        }
        assert(*pnum > 0 && *pnum <= bytes);
        if ((ret & BDRV_BLOCK_RECURSE) && local_file) {
            /* Data that may be a hole in the file below: reads as zero. */
            int64_t n = *pnum, fpnum;
            int ret2 = bdrv_co_block_status(local_file, local_map, n, &fpnum,
                                            NULL, NULL);
            if (ret2 >= 0) {
                if ((ret2 & BDRV_BLOCK_EOF) &&
                    (!fpnum || (ret2 & BDRV_BLOCK_ZERO))) {
                    ret |= BDRV_BLOCK_ZERO;
                } else if (fpnum > 0) {
                    *pnum = fpnum;
                    ret |= ret2 & BDRV_BLOCK_ZERO;
                }
            }
            ret &= ~BDRV_BLOCK_RECURSE;
        }
        if (ret & BDRV_BLOCK_RAW) {
            /* The driver maps 1:1 onto local_file: ask it. */
            int64_t n = *pnum;
            assert(local_file && (ret & BDRV_BLOCK_OFFSET_VALID));
            ret = bdrv_co_block_status(local_file, local_map, n, pnum, NULL,
                                       NULL);
            if (ret < 0) {
                return ret;
            }
            if (*pnum == 0) {
                /* Mapped past the end of the file: reads as zero. */
                *pnum = n;
                ret = BDRV_BLOCK_ZERO;
            }
            ret = (ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)) |
                  BDRV_BLOCK_OFFSET_VALID | BDRV_BLOCK_ALLOCATED;
        }
    }
    if (ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)) {
        ret |= BDRV_BLOCK_ALLOCATED;
    } else if (bs->drv->supports_backing) {
        /* Unallocated reads zero without a backing, or past its end. */
        if (!bs->backing) {
            ret |= BDRV_BLOCK_ZERO;
        } else {
            int64_t blen = bdrv_known_length(bs->backing);
            if (blen >= 0 && offset >= blen) {
                ret |= BDRV_BLOCK_ZERO;
            } else if (blen >= 0 && offset + *pnum > blen) {
                *pnum = blen - offset;   /* answer up to the backing's end */
            }
        }
    }
    if (offset + *pnum == total) {
        ret |= BDRV_BLOCK_EOF;
    } else {
        ret &= ~BDRV_BLOCK_EOF;
    }
    if (map) {
        *map = local_map;
    }
    if (file) {
        *file = local_file;
    }
    return ret;
}

/*
 * Status of [offset, offset + bytes) as read through bs: the first node of
 * the chain from bs down to (not including) base that allocates the start
 * answers, and *pnum is how far that answer holds in every node above it.
 * *depth (if given) counts the nodes looked at. Unallocated down to base
 * returns the last node's status without BDRV_BLOCK_EOF.
 */
int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs,
                                            BlockDriverState *base,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockDriverState **file,
                                            int *depth)
{
    BlockDriverState *p = bs;
    int d = 0;
    int ret = 0;

    *pnum = bytes;
    for (; p && p != base; p = p->backing, d++) {
        int64_t len = bdrv_known_length(p);
        if (len >= 0 && offset >= len && p != bs) {
            /* Past the end of a shorter backing file: reads as zero. */
            ret = BDRV_BLOCK_ZERO;
            *pnum = bytes;
            break;
        }
        ret = bdrv_co_block_status(p, offset, bytes, pnum, map, file);
        if (ret < 0 || (ret & BDRV_BLOCK_ALLOCATED) || *pnum == 0) {
            break;
        }
        bytes = *pnum;
        if (!p->backing || p->backing == base) {
            ret &= ~BDRV_BLOCK_EOF;
            d++;
            break;
        }
    }
    if (depth) {
        *depth = d;
    }
    return ret;
}

/* ---- truncate ---- */

int coroutine_fn bdrv_co_truncate(BlockDriverState *bs, int64_t offset,
                                  bool exact, PreallocMode prealloc,
                                  Error **errp)
{
    BdrvTrackedRequest req;
    int64_t old;
    int ret;

    if (!bs->drv) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    if (offset < 0) {
        error_setg(errp, "Image size cannot be negative");
        return -EINVAL;
    }
    if (bs->read_only) {
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    if (!bs->drv->bdrv_co_truncate) {
        if (bs->drv->is_filter && bs->file) {
            ret = bdrv_co_truncate(bs->file, offset, exact, prealloc, errp);
            bdrv_refresh_total_bytes(bs);
            return ret;
        }
        error_setg(errp, "Image format driver does not support resize");
        return -ENOTSUP;
    }
    old = bdrv_getlength(bs);
    if (old < 0) {
        error_setg_errno(errp, (int)-old, "Could not get the image size");
        return (int)old;
    }
    /* Exclude every request touching the area that changes. */
    bs->in_flight++;
    tracked_request_begin(&req, bs, MIN(old, offset),
                          INT64_MAX - MIN(old, offset), true);
    tracked_request_serialise(&req, 1);
    wait_serialising_requests(&req);
    ret = bs->drv->bdrv_co_truncate(bs, offset, exact, prealloc, errp);
    bs->write_gen++;
    if (ret >= 0) {
        ret = bdrv_refresh_total_bytes(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not refresh total size");
        }
    }
    tracked_request_end(&req);
    bs->in_flight--;
    return ret;
}

/* ---- drained sections ---- */

typedef struct BdrvDrainUser {
    const BdrvDrainOps *ops;
    void *opaque;
} BdrvDrainUser;

void bdrv_add_drain_user(BlockDriverState *bs, const BdrvDrainOps *ops,
                         void *opaque)
{
    BdrvDrainUser *u = g_new(BdrvDrainUser, 1);

    *u = (BdrvDrainUser) { .ops = ops, .opaque = opaque };
    bs->drain_users = g_slist_append(bs->drain_users, u);
    /* A user arriving inside a drained section is drained too. */
    for (int i = 0; i < bs->quiesce_counter + bs->parent_quiesce_counter;
         i++) {
        if (ops->drained_begin) {
            ops->drained_begin(opaque);
        }
    }
}

void bdrv_remove_drain_user(BlockDriverState *bs, const BdrvDrainOps *ops,
                            void *opaque)
{
    for (GSList *l = bs->drain_users; l; l = l->next) {
        BdrvDrainUser *u = l->data;
        if (u->ops == ops && u->opaque == opaque) {
            for (int i = 0;
                 i < bs->quiesce_counter + bs->parent_quiesce_counter; i++) {
                if (ops->drained_end) {
                    ops->drained_end(opaque);
                }
            }
            bs->drain_users = g_slist_delete_link(bs->drain_users, l);
            g_free(u);
            return;
        }
    }
}

/* bs enters a section (its own or one of a node below): hook, users. */
static void bdrv_quiesce_begin(BlockDriverState *bs)
{
    if (bs->quiesce_counter + bs->parent_quiesce_counter == 1 && bs->drv &&
        bs->drv->bdrv_drain_begin) {
        bs->drv->bdrv_drain_begin(bs);
    }
    for (GSList *l = bs->drain_users; l; l = l->next) {
        BdrvDrainUser *u = l->data;
        if (u->ops->drained_begin) {
            u->ops->drained_begin(u->opaque);
        }
    }
}

/* bs leaves a section: users, then the hook at the last one. */
static void bdrv_quiesce_end(BlockDriverState *bs)
{
    for (GSList *l = bs->drain_users; l; l = l->next) {
        BdrvDrainUser *u = l->data;
        if (u->ops->drained_end) {
            u->ops->drained_end(u->opaque);
        }
    }
    if (bs->quiesce_counter + bs->parent_quiesce_counter == 0 && bs->drv &&
        bs->drv->bdrv_drain_end) {
        bs->drv->bdrv_drain_end(bs);
    }
}

static void bdrv_do_drained_begin(BlockDriverState *bs, int depth)
{
    if (!bs || depth > BDRV_DRAIN_MAX_DEPTH) {
        return;
    }
    bs->quiesce_counter++;
    bdrv_quiesce_begin(bs);
    bdrv_do_drained_begin(bs->file, depth + 1);
    if (bs->data_file != bs->file) {
        bdrv_do_drained_begin(bs->data_file, depth + 1);
    }
    bdrv_do_drained_begin(bs->backing, depth + 1);
    for (unsigned i = 0; i < bs->nb_children; i++) {
        bdrv_do_drained_begin(bs->children[i], depth + 1);
    }
}

static void bdrv_do_drained_end(BlockDriverState *bs, int depth)
{
    if (!bs || depth > BDRV_DRAIN_MAX_DEPTH) {
        return;
    }
    for (unsigned i = bs->nb_children; i-- > 0;) {
        bdrv_do_drained_end(bs->children[i], depth + 1);
    }
    bdrv_do_drained_end(bs->backing, depth + 1);
    if (bs->data_file != bs->file) {
        bdrv_do_drained_end(bs->data_file, depth + 1);
    }
    bdrv_do_drained_end(bs->file, depth + 1);
    assert(bs->quiesce_counter > 0);
    bs->quiesce_counter--;
    bdrv_quiesce_end(bs);
}

/* The nodes above bs (parents, theirs, ...), each once, into out. */
static void bdrv_collect_parents(BlockDriverState *bs, GPtrArray *out,
                                 int depth)
{
    if (depth > BDRV_DRAIN_MAX_DEPTH) {
        return;
    }
    for (BlockDriverState *p = bdrv_next_node(NULL); p;
         p = bdrv_next_node(p)) {
        bool child = p->file == bs || p->backing == bs || p->data_file == bs;

        for (unsigned i = 0; !child && i < p->nb_children; i++) {
            child = p->children[i] == bs;
        }
        if (child && !g_ptr_array_find(out, p, NULL)) {
            g_ptr_array_add(out, p);
            bdrv_collect_parents(p, out, depth + 1);
        }
    }
}

/*
 * The parents part of a section of bs: quiesce every node above it. The
 * set is kept with the section (and the nodes referenced), so that its end
 * releases the same nodes even if the graph changed meanwhile.
 */
static GPtrArray *bdrv_parents_drained_begin(BlockDriverState *bs)
{
    GPtrArray *parents = g_ptr_array_new();

    /* A node being closed (refcnt 0) is nobody's child any more. */
    if (bs->refcnt > 0) {
        bdrv_collect_parents(bs, parents, 0);
    }
    for (guint i = 0; i < parents->len; i++) {
        BlockDriverState *p = g_ptr_array_index(parents, i);
        bdrv_ref(p);
        p->parent_quiesce_counter++;
        bdrv_quiesce_begin(p);
    }
    bs->drained_parents = g_slist_prepend(bs->drained_parents, parents);
    return parents;
}

static void bdrv_parents_drained_end(BlockDriverState *bs)
{
    GPtrArray *parents;

    assert(bs->drained_parents);
    parents = bs->drained_parents->data;
    bs->drained_parents = g_slist_delete_link(bs->drained_parents,
                                              bs->drained_parents);
    for (guint i = parents->len; i-- > 0;) {
        BlockDriverState *p = g_ptr_array_index(parents, i);
        assert(p->parent_quiesce_counter > 0);
        p->parent_quiesce_counter--;
        bdrv_quiesce_end(p);
    }
    for (guint i = 0; i < parents->len; i++) {
        bdrv_unref(g_ptr_array_index(parents, i));
    }
    g_ptr_array_free(parents, true);
}

/* Is a request, or a user's or driver's work, still running below bs? */
static bool bdrv_drain_poll(BlockDriverState *bs, int depth)
{
    if (!bs || depth > BDRV_DRAIN_MAX_DEPTH) {
        return false;
    }
    if (bs->in_flight > 0) {
        return true;
    }
    for (GSList *l = bs->drain_users; l; l = l->next) {
        BdrvDrainUser *u = l->data;
        if (u->ops->drained_poll && u->ops->drained_poll(u->opaque)) {
            return true;
        }
    }
    if (bs->drv && bs->drv->bdrv_drain_poll && bs->drv->bdrv_drain_poll(bs)) {
        return true;
    }
    for (unsigned i = 0; i < bs->nb_children; i++) {
        if (bdrv_drain_poll(bs->children[i], depth + 1)) {
            return true;
        }
    }
    return bdrv_drain_poll(bs->file, depth + 1) ||
           (bs->data_file != bs->file &&
            bdrv_drain_poll(bs->data_file, depth + 1)) ||
           bdrv_drain_poll(bs->backing, depth + 1);
}

/* Is a parent of the section (or a user of one) still busy? */
static bool bdrv_parents_drain_poll(GPtrArray *parents)
{
    for (guint i = 0; parents && i < parents->len; i++) {
        BlockDriverState *p = g_ptr_array_index(parents, i);

        if (p->in_flight > 0) {
            return true;
        }
        for (GSList *l = p->drain_users; l; l = l->next) {
            BdrvDrainUser *u = l->data;
            if (u->ops->drained_poll && u->ops->drained_poll(u->opaque)) {
                return true;
            }
        }
        if (p->drv && p->drv->bdrv_drain_poll && p->drv->bdrv_drain_poll(p)) {
            return true;
        }
    }
    return false;
}

static void bdrv_drain_wait(BlockDriverState *bs, GPtrArray *parents)
{
    if (qemu_in_coroutine()) {
        /* The loop runs the requests we wait for meanwhile. */
        while (bdrv_drain_poll(bs, 0) || bdrv_parents_drain_poll(parents)) {
            qemu_co_sleep_ns(100 * 1000);
        }
        return;
    }
    AIO_WAIT_WHILE(bdrv_drain_poll(bs, 0) || bdrv_parents_drain_poll(parents));
}

void bdrv_drained_begin(BlockDriverState *bs)
{
    GPtrArray *parents = bdrv_parents_drained_begin(bs);

    bdrv_do_drained_begin(bs, 0);
    bdrv_drain_wait(bs, parents);
}

void bdrv_drained_end(BlockDriverState *bs)
{
    bdrv_do_drained_end(bs, 0);
    bdrv_parents_drained_end(bs);
}

void bdrv_drained_end_closed(BlockDriverState *bs)
{
    assert(bs->quiesce_counter > 0);
    bs->quiesce_counter--;
    bdrv_parents_drained_end(bs);
    for (unsigned i = bs->nb_children; i-- > 0;) {
        bdrv_do_drained_end(bs->children[i], 1);
    }
    bdrv_do_drained_end(bs->backing, 1);
    if (bs->data_file != bs->file) {
        bdrv_do_drained_end(bs->data_file, 1);
    }
    bdrv_do_drained_end(bs->file, 1);
}

void bdrv_replace_child_drained(BlockDriverState *parent,
                                BlockDriverState **slot,
                                BlockDriverState *child)
{
    BlockDriverState *old = *slot;

    for (int i = 0; i < parent->quiesce_counter; i++) {
        bdrv_do_drained_begin(child, 1);
    }
    *slot = child;
    for (int i = 0; i < parent->quiesce_counter; i++) {
        bdrv_do_drained_end(old, 1);
    }
    if (child && parent->quiesce_counter) {
        bdrv_drain_wait(child, NULL);
    }
}

bool bdrv_is_drained(BlockDriverState *bs)
{
    return bs->quiesce_counter + bs->parent_quiesce_counter > 0;
}

void bdrv_drain(BlockDriverState *bs)
{
    bdrv_drained_begin(bs);
    bdrv_drained_end(bs);
}
