/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Scatter/gather vector helpers: copying, slicing, zero detection. */
#include "util/iov.h"

size_t iov_from_buf(const struct iovec *iov, unsigned iov_cnt, size_t offset,
                    const void *buf, size_t bytes)
{
    size_t done = 0;
    unsigned i;

    for (i = 0; i < iov_cnt && done < bytes; i++) {
        if (offset < iov[i].iov_len) {
            size_t len = MIN(iov[i].iov_len - offset, bytes - done);

            memcpy((char *)iov[i].iov_base + offset, (const char *)buf + done,
                   len);
            done += len;
            offset = 0;
        } else {
            offset -= iov[i].iov_len;
        }
    }
    return done;
}

size_t iov_to_buf(const struct iovec *iov, unsigned iov_cnt, size_t offset,
                  void *buf, size_t bytes)
{
    size_t done = 0;
    unsigned i;

    for (i = 0; i < iov_cnt && done < bytes; i++) {
        if (offset < iov[i].iov_len) {
            size_t len = MIN(iov[i].iov_len - offset, bytes - done);

            memcpy((char *)buf + done, (char *)iov[i].iov_base + offset, len);
            done += len;
            offset = 0;
        } else {
            offset -= iov[i].iov_len;
        }
    }
    return done;
}

size_t iov_memset(const struct iovec *iov, unsigned iov_cnt, size_t offset,
                  int fillc, size_t bytes)
{
    size_t done = 0;
    unsigned i;

    for (i = 0; i < iov_cnt && done < bytes; i++) {
        if (offset < iov[i].iov_len) {
            size_t len = MIN(iov[i].iov_len - offset, bytes - done);

            memset((char *)iov[i].iov_base + offset, fillc, len);
            done += len;
            offset = 0;
        } else {
            offset -= iov[i].iov_len;
        }
    }
    return done;
}

size_t iov_size(const struct iovec *iov, unsigned iov_cnt)
{
    size_t len = 0;
    unsigned i;

    for (i = 0; i < iov_cnt; i++) {
        len += iov[i].iov_len;
    }
    return len;
}

void qemu_iovec_init(QEMUIOVector *qiov, int alloc_hint)
{
    if (alloc_hint < 1) {
        alloc_hint = 1;
    }
    qiov->iov = g_new(struct iovec, alloc_hint);
    qiov->niov = 0;
    qiov->nalloc = alloc_hint;
    qiov->size = 0;
}

void qemu_iovec_init_buf(QEMUIOVector *qiov, void *buf, size_t len)
{
    qiov->local_iov.iov_base = buf;
    qiov->local_iov.iov_len = len;
    qiov->iov = &qiov->local_iov;
    qiov->niov = 1;
    qiov->nalloc = -1;
    qiov->size = len;
}

void qemu_iovec_add(QEMUIOVector *qiov, void *base, size_t len)
{
    /* A buffer vector has no spare room and must not grow. */
    assert(qiov->nalloc != -1);
    if (qiov->niov == qiov->nalloc) {
        qiov->nalloc = 2 * qiov->nalloc + 1;
        qiov->iov = g_renew(struct iovec, qiov->iov, qiov->nalloc);
    }
    qiov->iov[qiov->niov].iov_base = base;
    qiov->iov[qiov->niov].iov_len = len;
    qiov->niov++;
    qiov->size += len;
}

/* Append the [soffset, soffset+sbytes) window of a plain iovec array. */
static void qemu_iovec_concat_iov(QEMUIOVector *dst, const struct iovec *src,
                                  unsigned src_cnt, size_t soffset,
                                  size_t sbytes)
{
    unsigned i;

    for (i = 0; i < src_cnt && sbytes > 0; i++) {
        if (soffset < src[i].iov_len) {
            size_t len = MIN(src[i].iov_len - soffset, sbytes);

            qemu_iovec_add(dst, (char *)src[i].iov_base + soffset, len);
            sbytes -= len;
            soffset = 0;
        } else {
            soffset -= src[i].iov_len;
        }
    }
    assert(sbytes == 0);
}

void qemu_iovec_concat(QEMUIOVector *dst, QEMUIOVector *src, size_t soffset,
                       size_t sbytes)
{
    assert(soffset + sbytes <= src->size);
    qemu_iovec_concat_iov(dst, src->iov, src->niov, soffset, sbytes);
}

void qemu_iovec_init_slice(QEMUIOVector *qiov, QEMUIOVector *source,
                           size_t offset, size_t len)
{
    assert(offset + len <= source->size);
    qemu_iovec_init(qiov, source->niov);
    qemu_iovec_concat(qiov, source, offset, len);
}

void qemu_iovec_reset(QEMUIOVector *qiov)
{
    assert(qiov->nalloc != -1);
    qiov->niov = 0;
    qiov->size = 0;
}

void qemu_iovec_destroy(QEMUIOVector *qiov)
{
    if (qiov->nalloc == -1) {
        return;
    }
    g_free(qiov->iov);
    qiov->iov = NULL;
    qiov->niov = 0;
    qiov->nalloc = 0;
    qiov->size = 0;
}

size_t qemu_iovec_to_buf(QEMUIOVector *qiov, size_t offset, void *buf,
                         size_t bytes)
{
    return iov_to_buf(qiov->iov, qiov->niov, offset, buf, bytes);
}

size_t qemu_iovec_from_buf(QEMUIOVector *qiov, size_t offset, const void *buf,
                           size_t bytes)
{
    return iov_from_buf(qiov->iov, qiov->niov, offset, buf, bytes);
}

size_t qemu_iovec_memset(QEMUIOVector *qiov, size_t offset, int fillc,
                         size_t bytes)
{
    return iov_memset(qiov->iov, qiov->niov, offset, fillc, bytes);
}

bool qemu_iovec_is_zero(QEMUIOVector *qiov, size_t offset, size_t bytes)
{
    int i;

    for (i = 0; i < qiov->niov && bytes > 0; i++) {
        if (offset < qiov->iov[i].iov_len) {
            size_t len = MIN(qiov->iov[i].iov_len - offset, bytes);

            if (!buffer_is_zero((char *)qiov->iov[i].iov_base + offset, len)) {
                return false;
            }
            bytes -= len;
            offset = 0;
        } else {
            offset -= qiov->iov[i].iov_len;
        }
    }
    return true;
}

ssize_t qemu_iovec_compare(QEMUIOVector *a, QEMUIOVector *b)
{
    size_t offset = 0;
    int ia = 0, ib = 0;
    size_t oa = 0, ob = 0;

    assert(a->size == b->size);
    while (offset < a->size) {
        const char *pa, *pb;
        size_t len, k;

        if (oa == a->iov[ia].iov_len) {
            ia++;
            oa = 0;
            continue;
        }
        if (ob == b->iov[ib].iov_len) {
            ib++;
            ob = 0;
            continue;
        }
        pa = (const char *)a->iov[ia].iov_base + oa;
        pb = (const char *)b->iov[ib].iov_base + ob;
        len = MIN(a->iov[ia].iov_len - oa, b->iov[ib].iov_len - ob);
        if (memcmp(pa, pb, len) != 0) {
            for (k = 0; pa[k] == pb[k]; k++) {
            }
            return offset + k;
        }
        offset += len;
        oa += len;
        ob += len;
    }
    return -1;
}

bool buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    const uint64_t *w;
    size_t n;

    /* Bytes up to the first 8-byte boundary, then whole words. */
    while (len > 0 && ((uintptr_t)p & 7)) {
        if (*p) {
            return false;
        }
        p++;
        len--;
    }
    w = (const uint64_t *)p;
    n = len / 8;
    while (n >= 4) {
        if (w[0] | w[1] | w[2] | w[3]) {
            return false;
        }
        w += 4;
        n -= 4;
    }
    while (n > 0) {
        if (*w) {
            return false;
        }
        w++;
        n--;
    }
    p = (const unsigned char *)w;
    for (len &= 7; len > 0; len--, p++) {
        if (*p) {
            return false;
        }
    }
    return true;
}
