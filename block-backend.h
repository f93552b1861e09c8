/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The user layer (QEMU's BlockBackend): what a tool or an export holds
 * instead of a node. It owns a reference to the root node of a graph and
 * keeps what belongs to the user, not to the image: the permissions the
 * user holds and shares, bounds checks, the write-cache setting,
 * copy-on-read, request statistics, and a queue where new requests wait
 * while the graph is drained. Tools and exports do I/O only through it.
 */
#ifndef BLOCK_BACKEND_H
#define BLOCK_BACKEND_H

#include "block.h"

typedef struct BlockBackend BlockBackend;


/* Counters of completed requests (failed ones counted apart). */
typedef struct BlockAcctStats {
    uint64_t rd_ops, wr_ops, zero_ops, discard_ops, flush_ops;
    uint64_t rd_bytes, wr_bytes;
    uint64_t failed_ops;
} BlockAcctStats;

/*
 * A user holding perm and sharing shared_perm (BLK_PERM_* of block_int.h:
 * consistent read, write, write unchanged, resize), with no node yet.
 */
BlockBackend *blk_new(uint64_t perm, uint64_t shared_perm);
/*
 * Open filename as bdrv_open does and attach the root: the user's
 * permissions are those of flags (read unless BDRV_O_NO_IO, write with
 * BDRV_O_RDWR, resize with BDRV_O_RESIZE; shares all unless
 * BDRV_O_NO_SHARE), copy-on-read with BDRV_O_COPY_ON_READ.
 */
BlockBackend *blk_new_open(const char *filename, const char *fmt,
                           QemuOpts *options, int flags, Error **errp);
/*
 * Attach bs (takes a reference) as the root. Fails, attaching nothing, if
 * the user's permissions conflict with another user of bs (in this process:
 * what one holds the other must share; in others: the image locks).
 */
int blk_insert_bs(BlockBackend *blk, BlockDriverState *bs, Error **errp);
/* Detach the root (drained first); requests then fail with -ENOMEDIUM. */
void blk_remove_bs(BlockBackend *blk);
void blk_ref(BlockBackend *blk);
/* The last reference detaches the root and frees the user. */
void blk_unref(BlockBackend *blk);
/* The root node, or NULL: for what is not I/O (info, snapshots, map). */
BlockDriverState *blk_bs(BlockBackend *blk);

void blk_get_perm(BlockBackend *blk, uint64_t *perm, uint64_t *shared_perm);
/* Change what the user holds and shares; on error nothing changed. */
int blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared_perm,
                 Error **errp);

/*
 * Reopen the root and the nodes below (bdrv_reopen): read-only or
 * read-write, cache mode, options. The user then holds what the new flags
 * give; on failure nothing changed.
 */
int blk_reopen(BlockBackend *blk, int flags, QemuOpts *options,
               Error **errp);

/* false = writethrough: every write is flushed before it completes. */
void blk_set_enable_write_cache(BlockBackend *blk, bool wce);
bool blk_enable_write_cache(BlockBackend *blk);
/* Reads copy what they find in the backing chain into the top image. */
void blk_set_copy_on_read(BlockBackend *blk, bool enable);
bool blk_get_copy_on_read(BlockBackend *blk);
const BlockAcctStats *blk_get_stats(BlockBackend *blk);

int64_t blk_getlength(BlockBackend *blk);
/* No medium (none attached, or host_cdrom without a disc)? */
bool blk_is_inserted(BlockBackend *blk);
/* Requests started and not yet completed (queued ones included). */
unsigned blk_in_flight(BlockBackend *blk);

/*
 * Requests. Every one is checked before it reaches the graph: no medium
 * fails with -ENOMEDIUM; a range outside [0, length) with -EIO; writes,
 * zero writes and discards without the write permission with -EPERM;
 * truncate without the resize permission with -EPERM. While the root is
 * drained new requests wait in the user layer and start after the drained
 * section ends.
 */
int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset,
                               int64_t bytes, QEMUIOVector *qiov,
                               BdrvRequestFlags flags);
int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset,
                                int64_t bytes, QEMUIOVector *qiov,
                                BdrvRequestFlags flags);
int coroutine_fn blk_co_pread(BlockBackend *blk, int64_t offset,
                              int64_t bytes, void *buf,
                              BdrvRequestFlags flags);
int coroutine_fn blk_co_pwrite(BlockBackend *blk, int64_t offset,
                               int64_t bytes, const void *buf,
                               BdrvRequestFlags flags);
int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags);
int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset,
                                 int64_t bytes);
int coroutine_fn blk_co_flush(BlockBackend *blk);
int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset,
                                 bool exact, PreallocMode prealloc,
                                 Error **errp);

/* The same, run to completion from outside a coroutine. */
int blk_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
               QEMUIOVector *qiov, BdrvRequestFlags flags);
int blk_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes,
                QEMUIOVector *qiov, BdrvRequestFlags flags);
int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
              BdrvRequestFlags flags);
int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
               const void *buf, BdrvRequestFlags flags);
int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                      BdrvRequestFlags flags);
int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes);
int blk_flush(BlockBackend *blk);
int blk_truncate(BlockBackend *blk, int64_t offset, bool exact,
                 PreallocMode prealloc, Error **errp);

/* Asynchronous: cb runs in the event loop, never before the call returns. */
void blk_aio_preadv(BlockBackend *blk, int64_t offset, QEMUIOVector *qiov,
                    BdrvRequestFlags flags, BlockCompletionFunc *cb,
                    void *opaque);
void blk_aio_pwritev(BlockBackend *blk, int64_t offset, QEMUIOVector *qiov,
                     BdrvRequestFlags flags, BlockCompletionFunc *cb,
                     void *opaque);
void blk_aio_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                           BdrvRequestFlags flags, BlockCompletionFunc *cb,
                           void *opaque);
void blk_aio_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes,
                      BlockCompletionFunc *cb, void *opaque);
void blk_aio_flush(BlockBackend *blk, BlockCompletionFunc *cb, void *opaque);

/* Wait until no request of blk is in flight (queued ones too). */
void blk_drain(BlockBackend *blk);

#endif
