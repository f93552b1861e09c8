/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 guest I/O: reads (plain, compressed, backing), writes (in place or
 * allocating, with the copy-on-write parts merged into the guest write),
 * compressed writes, zero writes, discards, flush, block status and the
 * VM state area.
 */
#include "block/qcow2/qcow2.h"
#include "util/thread-pool.h"

/* ---- in-place writes and frees ---- */

/*
 * In-place writes run without the lock. A cluster freed meanwhile must not
 * be reused before such a write lands, so they are listed (oldest first)
 * and frees wait for the ones that started before them (refcount.c).
 */
static void qcow2_inplace_begin(BDRVQcow2State *s, Qcow2InPlace *w)
{
    w->seq = s->inplace_seq++;
    w->next = NULL;
    w->prev = s->inplace_tail;
    if (s->inplace_tail) {
        s->inplace_tail->next = w;
    } else {
        s->inplace_head = w;
    }
    s->inplace_tail = w;
}

static void qcow2_inplace_end(BDRVQcow2State *s, Qcow2InPlace *w)
{
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        s->inplace_head = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    } else {
        s->inplace_tail = w->prev;
    }
}

/* ---- encrypted data (crypto.c): through bounce buffers ---- */

#define QCOW2_CRYPT_BOUNCE      (1 * MiB)

static void qcow2_crypt(void *opaque, bool encrypt, uint64_t host,
                        uint64_t guest, uint8_t *buf, size_t n)
{
    if (encrypt) {
        qcow2_encrypt(opaque, host, guest, buf, n);
    } else {
        qcow2_decrypt(opaque, host, guest, buf, n);
    }
}

/*
 * Read and decrypt host bytes of the data file into qiov (write: encrypt
 * guest bytes from qiov and write them at host).
 */
static int coroutine_fn qcow2_crypt_io(BlockDriverState *bs, bool write,
                                       uint64_t host, uint64_t guest,
                                       uint64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;

    if (!qcow2_crypto_can_io(s)) {
        return -EIO;            /* opened without the key */
    }
    return bdrv_co_crypt_bounce(s->data_file, write, host, guest, bytes, qiov,
                                qiov_offset, 0, QCOW2_CRYPT_BOUNCE,
                                qcow2_crypt, s);
}

/* ---- reads ---- */

typedef struct Qcow2CompressJob {
    void *dest;
    size_t dest_size;
    const void *src;
    size_t src_size;
    ssize_t ret;
} Qcow2CompressJob;

static int qcow2_decompress_job(void *opaque)
{
    Qcow2CompressJob *j = opaque;
    return qcow2_decompress(j->dest, j->dest_size, j->src, j->src_size);
}

static int qcow2_compress_job(void *opaque)
{
    Qcow2CompressJob *j = opaque;
    j->ret = qcow2_compress(j->dest, j->dest_size, j->src, j->src_size);
    return 0;
}

/* Read bytes at guest offset from the compressed cluster desc. */
static int coroutine_fn qcow2_read_compressed(BlockDriverState *bs,
                                              uint64_t desc, uint64_t offset,
                                              uint64_t bytes,
                                              QEMUIOVector *qiov,
                                              size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t coffset = desc & s->cluster_offset_mask;
    uint64_t nb_sectors = ((desc >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t csize = nb_sectors * QCOW2_COMPRESSED_SECTOR -
                     (coffset & (QCOW2_COMPRESSED_SECTOR - 1));
    uint8_t *in, *out;
    int ret;

    if (coffset > QCOW2_MAX_HOST_OFFSET) {
        return -EIO;
    }
    in = g_malloc(csize);
    out = qemu_blockalign(s->cluster_size);
    BLKDBG_EVENT(bs->file, "read_compressed");
    ret = bdrv_co_pread(bs->file, coffset, csize, in, 0);
    if (ret >= 0) {
        Qcow2CompressJob j = { out, s->cluster_size, in, csize, 0 };
        ret = thread_pool_submit_co(qcow2_decompress_job, &j);
    }
    if (ret >= 0) {
        qemu_iovec_from_buf(qiov, qiov_offset,
                            out + qcow2_offset_into_cluster(s, offset),
                            bytes);
    }
    qemu_vfree(out);
    g_free(in);
    return ret;
}

/* Read guest bytes (any offset below the VM state end). */
static int coroutine_fn qcow2_read(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes, QEMUIOVector *qiov,
                                   size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    while (bytes > 0) {
        uint64_t cur = bytes, host;
        Qcow2SubclusterType type;

        qemu_co_mutex_lock(&s->lock);
        ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type);
        qemu_co_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
        switch (type) {
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            qemu_iovec_memset(qiov, qiov_offset, 0, cur);
            break;
        case QCOW2_SC_UNALLOCATED_PLAIN:
        case QCOW2_SC_UNALLOCATED_ALLOC:
            if (!bs->backing) {
                qemu_iovec_memset(qiov, qiov_offset, 0, cur);
                break;
            }
            BLKDBG_EVENT(bs->file, "read_backing");
            ret = bdrv_co_preadv_part(bs->backing, offset, cur, qiov,
                                      qiov_offset, 0);
            break;
        case QCOW2_SC_COMPRESSED:
            ret = qcow2_read_compressed(bs, host, offset, cur, qiov,
                                        qiov_offset);
            break;
        case QCOW2_SC_NORMAL:
            BLKDBG_EVENT(bs->file, "read_aio");
            if (s->crypto) {
                ret = qcow2_crypt_io(bs, false, host, offset, cur, qiov,
                                     qiov_offset);
                break;
            }
            ret = bdrv_co_preadv_part(s->data_file, host, cur, qiov,
                                      qiov_offset, 0);
            break;
        default:
            ret = -EIO;
        }
        if (ret < 0) {
            return ret;
        }
        offset += cur;
        bytes -= cur;
        qiov_offset += cur;
    }
    return 0;
}

int coroutine_fn qcow2_co_preadv(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 size_t qiov_offset, BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->stopped) {
        return -ENOMEDIUM;
    }
    return qcow2_read(bs, offset, bytes, qiov, qiov_offset);
}

/* ---- zero detection (for COW shortcuts and partial zero writes) ---- */

/* Does [offset, offset + bytes) of node p and its backing chain read as
 * zero, as far as block status can tell cheaply? */
static bool coroutine_fn qcow2_chain_is_zero(BlockDriverState *p,
                                             int64_t offset, int64_t bytes)
{
    while (bytes > 0) {
        int64_t pnum;
        int ret = bdrv_co_block_status(p, offset, bytes, &pnum, NULL, NULL);
        if (ret < 0 || pnum <= 0) {
            return (ret >= 0) && (ret & BDRV_BLOCK_EOF);
        }
        if (!(ret & BDRV_BLOCK_ZERO)) {
            if (ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED) ||
                !bdrv_get_backing(p)) {
                return false;
            }
            if (!qcow2_chain_is_zero(bdrv_get_backing(p), offset, pnum)) {
                return false;
            }
        }
        offset += pnum;
        bytes -= pnum;
    }
    return true;
}

/* Does the guest range read as zero (metadata and backing only)? */
static bool coroutine_fn qcow2_range_is_zero(BlockDriverState *bs,
                                             uint64_t offset, uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;

    while (bytes > 0) {
        uint64_t cur = bytes, host;
        Qcow2SubclusterType type;
        int ret;

        qemu_co_mutex_lock(&s->lock);
        ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type);
        qemu_co_mutex_unlock(&s->lock);
        if (ret < 0) {
            return false;
        }
        if (type == QCOW2_SC_UNALLOCATED_PLAIN ||
            type == QCOW2_SC_UNALLOCATED_ALLOC) {
            if (bs->backing &&
                !qcow2_chain_is_zero(bs->backing, offset, cur)) {
                return false;
            }
        } else if (type != QCOW2_SC_ZERO_PLAIN &&
                   type != QCOW2_SC_ZERO_ALLOC) {
            return false;
        }
        offset += cur;
        bytes -= cur;
    }
    return true;
}

/* Does any subcluster of [offset, offset + bytes) map host data? */
static bool coroutine_fn qcow2_range_maps_data(BlockDriverState *bs,
                                               uint64_t offset,
                                               uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;

    while (bytes > 0) {
        uint64_t cur = bytes, host;
        Qcow2SubclusterType type;
        int ret;

        qemu_co_mutex_lock(&s->lock);
        ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type);
        qemu_co_mutex_unlock(&s->lock);
        if (ret < 0 || type == QCOW2_SC_NORMAL ||
            type == QCOW2_SC_COMPRESSED) {
            return true;
        }
        offset += cur;
        bytes -= cur;
    }
    return false;
}

/* ---- allocating writes ---- */

/*
 * Both COW regions read as zero: zero the whole new range on the data
 * file cheaply instead of writing zero buffers (skips the COW). A host
 * cluster that is kept (extended L2, external data file) may map data
 * inside the range, in subclusters this write overwrites: zeroing those
 * first would show zeroes to readers until the data lands, and leave them
 * on disk after a crash in between, so such a range is never zeroed.
 */
static bool coroutine_fn qcow2_try_zero_cow(BlockDriverState *bs,
                                            Qcow2Alloc *m)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t start = m->cow_start.offset;
    uint64_t end = m->cow_end.offset + m->cow_end.bytes;

    if (m->keep_old &&
        qcow2_range_maps_data(bs, m->guest_offset + start, end - start)) {
        return false;
    }
    if (!qcow2_range_is_zero(bs, m->guest_offset + start,
                             m->cow_start.bytes) ||
        !qcow2_range_is_zero(bs, m->guest_offset + m->cow_end.offset,
                             m->cow_end.bytes)) {
        return false;
    }
    BLKDBG_EVENT(bs->file, "cluster_alloc_space");
    return bdrv_co_pwrite_zeroes(s->data_file, m->host_offset + start,
                                 end - start, BDRV_REQ_NO_FALLBACK) >= 0;
}

/*
 * An encrypted allocation: COW head and tail read (decrypted with their
 * old host offsets) into one buffer around the guest bytes, all of it
 * encrypted for the new host offset and written at once.
 */
static int coroutine_fn qcow2_write_alloc_encrypted(BlockDriverState *bs,
                                                    Qcow2Alloc *m,
                                                    uint64_t host,
                                                    uint64_t bytes,
                                                    QEMUIOVector *qiov,
                                                    size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t head = m->cow_start.bytes, tail = m->cow_end.bytes;
    uint64_t total = head + bytes + tail;
    uint8_t *buf;
    QEMUIOVector v;
    int ret = 0;

    if (!qcow2_crypto_can_io(s)) {
        return -EIO;
    }
    buf = qemu_blockalign(total);
    if (head) {
        qemu_iovec_init_buf(&v, buf, head);
        BLKDBG_EVENT(bs->file, "cow_read");
        ret = qcow2_read(bs, m->guest_offset + m->cow_start.offset, head,
                         &v, 0);
    }
    if (qiov) {
        qemu_iovec_to_buf(qiov, qiov_offset, buf + head, bytes);
    } else {
        memset(buf + head, 0, bytes);
    }
    if (ret >= 0 && tail) {
        qemu_iovec_init_buf(&v, buf + head + bytes, tail);
        BLKDBG_EVENT(bs->file, "cow_read");
        ret = qcow2_read(bs, m->guest_offset + m->cow_end.offset, tail,
                         &v, 0);
    }
    if (ret >= 0) {
        qcow2_encrypt(s, host - head, m->guest_offset + m->cow_start.offset,
                      buf, total);
        /* QEMU's order: the guest data's event, then the COW's. */
        BLKDBG_EVENT(bs->file, "write_aio");
        if (head || tail) {
            BLKDBG_EVENT(bs->file, "cow_write");
        }
        ret = bdrv_co_pwrite(s->data_file, host - head, total, buf, 0);
    }
    explicit_bzero(buf, total);
    qemu_vfree(buf);
    return ret;
}

/*
 * Write the guest bytes of an allocation together with its copy-on-write
 * regions in one request: [COW head][guest data][COW tail]. The COW data is
 * read through the image itself, whose L2 entries still map the old
 * content (no other request may change them while m is in flight).
 */
static int coroutine_fn qcow2_write_alloc(BlockDriverState *bs, Qcow2Alloc *m,
                                          uint64_t host, uint64_t bytes,
                                          QEMUIOVector *qiov,
                                          size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t head = m->cow_start.bytes, tail = m->cow_end.bytes;
    uint8_t *hbuf = NULL, *tbuf = NULL;
    QEMUIOVector v;
    int ret = 0;

    if (s->crypto) {
        /* (zeroes on disk would not read as zeroes: no zero COW) */
        return qcow2_write_alloc_encrypted(bs, m, host, bytes, qiov,
                                           qiov_offset);
    }
    if ((head || tail) && qcow2_try_zero_cow(bs, m)) {
        head = tail = 0;
    }
    if (!head && !tail) {
        BLKDBG_EVENT(bs->file, "write_aio");
        return bdrv_co_pwritev_part(s->data_file, host, bytes, qiov,
                                    qiov_offset, 0);
    }
    qemu_iovec_init(&v, (qiov ? qiov->niov : 0) + 2);
    if (head) {
        QEMUIOVector h;
        hbuf = qemu_blockalign(head);
        qemu_iovec_init_buf(&h, hbuf, head);
        BLKDBG_EVENT(bs->file, "cow_read");
        ret = qcow2_read(bs, m->guest_offset + m->cow_start.offset, head,
                         &h, 0);
        qemu_iovec_add(&v, hbuf, head);
    }
    qemu_iovec_concat(&v, qiov, qiov_offset, bytes);
    if (ret >= 0 && tail) {
        QEMUIOVector t;
        tbuf = qemu_blockalign(tail);
        qemu_iovec_init_buf(&t, tbuf, tail);
        BLKDBG_EVENT(bs->file, "cow_read");
        ret = qcow2_read(bs, m->guest_offset + m->cow_end.offset, tail,
                         &t, 0);
        qemu_iovec_add(&v, tbuf, tail);
    }
    if (ret >= 0) {
        /* QEMU's order: the guest data's event, then the COW's. */
        BLKDBG_EVENT(bs->file, "write_aio");
        BLKDBG_EVENT(bs->file, "cow_write");
        ret = bdrv_co_pwritev(s->data_file, host - head, head + bytes + tail,
                              &v, 0);
    }
    qemu_iovec_destroy(&v);
    qemu_vfree(hbuf);
    qemu_vfree(tbuf);
    return ret;
}

/* One step of a write: in place, or an allocation linked afterwards. */
static int coroutine_fn qcow2_write_step(BlockDriverState *bs,
                                         uint64_t offset, uint64_t *bytes,
                                         QEMUIOVector *qiov,
                                         size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Alloc *m = NULL;
    Qcow2InPlace w;
    uint64_t host;
    int ret;

    if (s->crypto) {
        /* One bounce buffer per step (plus its COW regions). */
        *bytes = MIN(*bytes, (uint64_t)QCOW2_CRYPT_BOUNCE);
    }
    qemu_co_mutex_lock(&s->lock);
    ret = qcow2_alloc_host_offset(bs, offset, bytes, &host, &m);
    if (ret >= 0 && !s->external_data) {
        /* (an external data file holds no metadata) */
        ret = qcow2_pre_write_overlap_check(bs, 0, host, *bytes);
    }
    if (ret < 0) {
        if (m) {
            qcow2_alloc_abort(bs, m);
            qcow2_alloc_finish(bs, m);
        }
        qemu_co_mutex_unlock(&s->lock);
        return ret;
    }
    if (!m) {
        qcow2_inplace_begin(s, &w);
    }
    qemu_co_mutex_unlock(&s->lock);

    if (!m) {
        BLKDBG_EVENT(bs->file, "write_aio");
        if (s->crypto) {
            ret = qcow2_crypt_io(bs, true, host, offset, *bytes, qiov,
                                 qiov_offset);
        } else {
            ret = bdrv_co_pwritev_part(s->data_file, host, *bytes, qiov,
                                       qiov_offset, 0);
        }
        qcow2_inplace_end(s, &w);
        return ret;
    }
    ret = qcow2_write_alloc(bs, m, host, *bytes, qiov, qiov_offset);
    qemu_co_mutex_lock(&s->lock);
    if (ret >= 0) {
        ret = qcow2_link_l2(bs, m);
    }
    if (ret < 0) {
        qcow2_alloc_abort(bs, m);
    }
    qcow2_alloc_finish(bs, m);
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

/* Guest write (or VM state) of any range below the L1 table's reach. */
static int coroutine_fn qcow2_write(BlockDriverState *bs, uint64_t offset,
                                    uint64_t bytes, QEMUIOVector *qiov,
                                    size_t qiov_offset)
{
    while (bytes > 0) {
        uint64_t cur = bytes;
        int ret = qcow2_write_step(bs, offset, &cur, qiov, qiov_offset);
        if (ret < 0) {
            return ret;
        }
        offset += cur;
        bytes -= cur;
        qiov_offset += cur;
    }
    return 0;
}

/* ---- compressed writes ---- */

/* One cluster (or the image's partial last one) compressed, if it pays. */
static int coroutine_fn qcow2_write_compressed_cluster(BlockDriverState *bs,
                                                      uint64_t offset,
                                                      uint64_t bytes,
                                                      QEMUIOVector *qiov,
                                                      size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t *buf = qemu_blockalign(s->cluster_size);
    uint8_t *out = g_malloc(s->cluster_size);
    uint64_t host;
    int ret;

    memset(buf + bytes, 0, s->cluster_size - bytes);
    qemu_iovec_to_buf(qiov, qiov_offset, buf, bytes);
    Qcow2CompressJob j = { out, s->cluster_size - 1, buf, s->cluster_size };
    thread_pool_submit_co(qcow2_compress_job, &j);
    if (j.ret == -ENOMEM) {
        /* Incompressible: an ordinary cluster. */
        ret = qcow2_write(bs, offset, bytes, qiov, qiov_offset);
        goto out;
    } else if (j.ret < 0) {
        ret = -EIO;
        goto out;
    }
    qemu_co_mutex_lock(&s->lock);
    ret = qcow2_alloc_compressed(bs, offset, j.ret, &host);
    if (ret >= 0) {
        ret = qcow2_pre_write_overlap_check(bs, 0, host, j.ret);
        if (ret < 0) {
            qcow2_link_compressed(bs, offset, false);
        }
    }
    qemu_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        goto out;
    }
    BLKDBG_EVENT(bs->file, "write_compressed");
    ret = bdrv_co_pwrite(bs->file, host, j.ret, out, 0);
    qemu_co_mutex_lock(&s->lock);
    int lret = qcow2_link_compressed(bs, offset, ret >= 0);
    qemu_co_mutex_unlock(&s->lock);
    ret = ret < 0 ? ret : lret;
out:
    g_free(out);
    qemu_vfree(buf);
    return ret;
}

static int coroutine_fn qcow2_write_compressed(BlockDriverState *bs,
                                               uint64_t offset,
                                               uint64_t bytes,
                                               QEMUIOVector *qiov,
                                               size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->external_data) {
        return -ENOTSUP;
    }
    if (qcow2_offset_into_cluster(s, offset) ||
        (qcow2_offset_into_cluster(s, bytes) && offset + bytes != s->size)) {
        return -EINVAL;
    }
    while (bytes > 0) {
        uint64_t n = MIN(bytes, (uint64_t)s->cluster_size);
        int ret = qcow2_write_compressed_cluster(bs, offset, n, qiov,
                                                 qiov_offset);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

int coroutine_fn qcow2_co_pwritev(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, QEMUIOVector *qiov,
                                  size_t qiov_offset, BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->stopped) {
        return -ENOMEDIUM;
    }
    /* As QEMU: marked whether or not the write succeeds. */
    qcow2_bitmaps_mark(s, offset, bytes);
    if (flags & BDRV_REQ_WRITE_COMPRESSED) {
        return qcow2_write_compressed(bs, offset, bytes, qiov, qiov_offset);
    }
    return qcow2_write(bs, offset, bytes, qiov, qiov_offset);
}

/* ---- zero writes and discards ---- */

/* Write explicit zeroes (the fallback for partial subclusters). */
static int coroutine_fn qcow2_write_zero_buffer(BlockDriverState *bs,
                                                uint64_t offset,
                                                uint64_t bytes)
{
    uint8_t *buf = g_malloc0(bytes);
    QEMUIOVector v;
    int ret;

    qemu_iovec_init_buf(&v, buf, bytes);
    ret = qcow2_write(bs, offset, bytes, &v, 0);
    g_free(buf);
    return ret;
}

/*
 * A zero write covering part of one subcluster: when the rest of the
 * subcluster reads as zero already, zero the whole subcluster in the
 * metadata (as QEMU does); else write zeroes.
 */
static int coroutine_fn qcow2_zero_partial(BlockDriverState *bs,
                                           uint64_t offset, uint64_t bytes,
                                           BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t sc_start = QEMU_ALIGN_DOWN(offset, (uint64_t)s->subcluster_size);
    uint64_t sc_end = MIN(sc_start + s->subcluster_size, s->size);
    int ret;

    if (qcow2_range_is_zero(bs, sc_start, offset - sc_start) &&
        qcow2_range_is_zero(bs, offset + bytes, sc_end - offset - bytes)) {
        uint64_t cur = sc_end - sc_start, host;
        Qcow2SubclusterType type;
        qemu_co_mutex_lock(&s->lock);
        /*
         * The subcluster is more than this request: a write elsewhere in
         * it may be allocating (the entry still reads as zero). Let it
         * link first and look again, or zeroing the entry would hide its
         * data. Holding the lock from here, no allocation starts.
         */
        qcow2_wait_allocs(bs, sc_start, sc_end - sc_start);
        ret = qcow2_get_host_offset(bs, sc_start, &cur, &host, &type);
        if (ret >= 0 && type != QCOW2_SC_NORMAL &&
            type != QCOW2_SC_COMPRESSED) {
            ret = qcow2_subcluster_zeroize(bs, sc_start, sc_end - sc_start,
                                           flags);
            qemu_co_mutex_unlock(&s->lock);
            if (ret != -ENOTSUP) {
                return ret;
            }
        } else {
            qemu_co_mutex_unlock(&s->lock);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (flags & BDRV_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    return qcow2_write_zero_buffer(bs, offset, bytes);
}

int coroutine_fn qcow2_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t sc = s->subcluster_size;
    uint64_t pos = offset, end = offset + bytes;
    int ret = 0;

    if (s->stopped) {
        return -ENOMEDIUM;
    }
    if (s->qcow_version < 3 && bs->backing) {
        return -ENOTSUP;        /* no zero flag: the layer writes zeroes */
    }
    qcow2_bitmaps_mark(s, offset, bytes);
    /* As QEMU's layer splits it: partial head, whole subclusters, tail. */
    if (pos % sc) {
        uint64_t head_end = MIN(ROUND_UP(pos, sc), end);
        ret = qcow2_zero_partial(bs, pos, head_end - pos, flags);
        pos = head_end;
    }
    uint64_t mid_end = end == s->size ? end : QEMU_ALIGN_DOWN(end, sc);
    if (ret >= 0 && mid_end > pos) {
        qemu_co_mutex_lock(&s->lock);
        ret = qcow2_subcluster_zeroize(bs, pos, mid_end - pos, flags);
        qemu_co_mutex_unlock(&s->lock);
        pos = mid_end;
    }
    if (ret >= 0 && pos < end) {
        ret = qcow2_zero_partial(bs, pos, end - pos, flags);
    }
    return ret;
}

int coroutine_fn qcow2_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (s->stopped) {
        return -ENOMEDIUM;
    }
    /* Without a zero flag a discard would show the backing file. */
    if (s->qcow_version < 3 && bs->backing) {
        return -ENOTSUP;
    }
    if (qcow2_offset_into_cluster(s, offset) ||
        (qcow2_offset_into_cluster(s, bytes) &&
         (uint64_t)(offset + bytes) != s->size)) {
        return -ENOTSUP;
    }
    qcow2_bitmaps_mark(s, offset, bytes);
    qemu_co_mutex_lock(&s->lock);
    ret = qcow2_cluster_discard(bs, offset, bytes, false,
                                s->discard_request);
    qemu_co_mutex_unlock(&s->lock);
    if (ret >= 0 && qcow2_data_file_is_raw(s)) {
        /* Keep the raw view equal to the qcow2 view (zeroes). */
        ret = bdrv_co_pwrite_zeroes(s->data_file, offset, bytes,
                                    BDRV_REQ_MAY_UNMAP);
    }
    return ret;
}

/* ---- flush ---- */

/*
 * Write the cached tables (the L2 cache writes the refcount cache and
 * flushes what its pages depend on first). Frees whose tables became
 * durable with the previous flush take effect; the layer flushes bs->file
 * afterwards.
 */
int coroutine_fn qcow2_co_flush(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (s->stopped) {
        return 0;
    }
    qemu_co_mutex_lock(&s->lock);
    ret = qcow2_write_caches(bs);
    qemu_co_mutex_unlock(&s->lock);
    if (ret >= 0 && s->external_data) {
        ret = bdrv_co_flush(s->data_file);
    }
    return ret;
}

/* ---- block status ---- */

int coroutine_fn qcow2_co_block_status(BlockDriverState *bs, bool want_zero,
                                       int64_t offset, int64_t bytes,
                                       int64_t *pnum, int64_t *map,
                                       BlockDriverState **file)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cur = bytes, host;
    Qcow2SubclusterType type;
    int ret, status = 0;

    if (s->stopped) {
        return -ENOMEDIUM;
    }
    qemu_co_mutex_lock(&s->lock);
    if (!s->prealloc_checked) {
        ret = qcow2_detect_metadata_prealloc(bs);
        s->metadata_prealloc = ret == 1;
        s->prealloc_checked = true;
    }
    ret = qcow2_get_host_offset(bs, offset, &cur, &host, &type);
    qemu_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = cur;
    /* Encrypted data is not readable below this node (QEMU: no offset). */
    if (!s->crypto && (type == QCOW2_SC_NORMAL ||
                       type == QCOW2_SC_ZERO_ALLOC ||
                       type == QCOW2_SC_UNALLOCATED_ALLOC)) {
        *map = host;
        *file = s->data_file;
        status |= BDRV_BLOCK_OFFSET_VALID;
    }
    if (type == QCOW2_SC_ZERO_PLAIN || type == QCOW2_SC_ZERO_ALLOC) {
        status |= BDRV_BLOCK_ZERO;
    } else if (type != QCOW2_SC_UNALLOCATED_PLAIN &&
               type != QCOW2_SC_UNALLOCATED_ALLOC) {
        status |= BDRV_BLOCK_DATA;
    }
    if (s->metadata_prealloc && (status & BDRV_BLOCK_DATA) &&
        (status & BDRV_BLOCK_OFFSET_VALID)) {
        status |= BDRV_BLOCK_RECURSE;
    }
    return status;
}

/* ---- VM state: stored like guest data past the end of the disk ---- */

static int qcow2_vmstate_offset(BlockDriverState *bs, QEMUIOVector *qiov,
                                int64_t pos, uint64_t *offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t base = qcow2_vm_state_offset(s);

    if (pos < 0 || (uint64_t)pos > INT64_MAX - base ||
        qiov->size > INT64_MAX - base - pos) {
        return -EIO;
    }
    *offset = base + pos;
    return 0;
}

int coroutine_fn qcow2_co_save_vmstate(BlockDriverState *bs,
                                       QEMUIOVector *qiov, int64_t pos)
{
    uint64_t offset;
    int ret = qcow2_vmstate_offset(bs, qiov, pos, &offset);

    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, "vmstate_save");
    return qcow2_write(bs, offset, qiov->size, qiov, 0);
}

int coroutine_fn qcow2_co_load_vmstate(BlockDriverState *bs,
                                       QEMUIOVector *qiov, int64_t pos)
{
    uint64_t offset;
    int ret = qcow2_vmstate_offset(bs, qiov, pos, &offset);

    if (ret < 0) {
        return ret;
    }
    BLKDBG_EVENT(bs->file, "vmstate_load");
    return qcow2_read(bs, offset, qiov->size, qiov, 0);
}
