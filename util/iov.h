/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Scatter/gather vectors (QEMUIOVector) and helpers on plain iovec arrays. */
#ifndef QEMU_IOV_H
#define QEMU_IOV_H

#include "util/osdep.h"

typedef struct QEMUIOVector {
    struct iovec *iov;
    int niov;
    int nalloc;              /* -1: iov points at local_iov (init_buf) */
    size_t size;             /* total bytes */
    struct iovec local_iov;
} QEMUIOVector;

/* Copy between a buffer and iov starting at byte offset; return bytes done. */
size_t iov_from_buf(const struct iovec *iov, unsigned iov_cnt, size_t offset,
                    const void *buf, size_t bytes);
size_t iov_to_buf(const struct iovec *iov, unsigned iov_cnt, size_t offset,
                  void *buf, size_t bytes);
size_t iov_memset(const struct iovec *iov, unsigned iov_cnt, size_t offset,
                  int fillc, size_t bytes);
size_t iov_size(const struct iovec *iov, unsigned iov_cnt);

void qemu_iovec_init(QEMUIOVector *qiov, int alloc_hint);
/* A one-element vector over buf, without allocation. */
void qemu_iovec_init_buf(QEMUIOVector *qiov, void *buf, size_t len);
/* A vector referencing [offset, offset+len) of source (allocates). */
void qemu_iovec_init_slice(QEMUIOVector *qiov, QEMUIOVector *source,
                           size_t offset, size_t len);
void qemu_iovec_add(QEMUIOVector *qiov, void *base, size_t len);
/* Append [soffset, soffset+sbytes) of src to dst. */
void qemu_iovec_concat(QEMUIOVector *dst, QEMUIOVector *src, size_t soffset,
                       size_t sbytes);
void qemu_iovec_reset(QEMUIOVector *qiov);
void qemu_iovec_destroy(QEMUIOVector *qiov);
size_t qemu_iovec_to_buf(QEMUIOVector *qiov, size_t offset, void *buf,
                         size_t bytes);
size_t qemu_iovec_from_buf(QEMUIOVector *qiov, size_t offset, const void *buf,
                           size_t bytes);
size_t qemu_iovec_memset(QEMUIOVector *qiov, size_t offset, int fillc,
                         size_t bytes);
/* True if [offset, offset+bytes) of qiov is all zero. */
bool qemu_iovec_is_zero(QEMUIOVector *qiov, size_t offset, size_t bytes);
/* Compare two vectors of equal size; returns offset of first difference or -1. */
ssize_t qemu_iovec_compare(QEMUIOVector *a, QEMUIOVector *b);

bool buffer_is_zero(const void *buf, size_t len);

#endif
