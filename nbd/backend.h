/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The NBD server's only door into the block layer: one export's image,
 * opened, read, written and queried through the functions below. The
 * server never names a BlockDriverState; when the block layer gains its
 * user layer (BlockBackend) only nbd/backend.c changes.
 *
 * Contracts: offsets and lengths are already checked by the server
 * against nbd_backend_size() (0 <= offset, offset + bytes <= size);
 * the coroutine functions run in the event-loop thread and return 0 or
 * -errno.
 */
#ifndef NBD_BACKEND_H
#define NBD_BACKEND_H

#include "block.h"

typedef struct NBDBackend NBDBackend;

typedef enum NBDDetectZeroes {
    NBD_DETECT_ZEROES_OFF,
    NBD_DETECT_ZEROES_ON,
    NBD_DETECT_ZEROES_UNMAP,
} NBDDetectZeroes;

typedef struct NBDBackendConf {
    const char *filename;       /* NULL with --image-opts */
    const char *fmt;            /* NULL: probe */
    QemuOpts *opts;             /* borrowed, may be NULL */
    int flags;                  /* BDRV_O_* (RDWR, NOCACHE, UNMAP, ...) */
    bool writethrough;
    NBDDetectZeroes detect_zeroes;
    int64_t offset;             /* -o: the export starts here */
} NBDBackendConf;

/* Request flags of the adapter */
#define NBD_BE_FUA          (1 << 0)    /* durable on completion */
#define NBD_BE_MAY_UNMAP    (1 << 1)    /* zeroes may become a hole */
#define NBD_BE_NO_FALLBACK  (1 << 2)    /* -ENOTSUP rather than slow zeroes */

NBDBackend *nbd_backend_open(const NBDBackendConf *conf, Error **errp);
/*
 * -l: export the internal snapshot named by id and/or name (id_or_name:
 * one string tried as an id, then as a name) instead of the active image.
 * The backend must be read-only. Call before serving: the size changes to
 * the snapshot's.
 */
int nbd_backend_load_snapshot(NBDBackend *be, const char *id,
                              const char *name, const char *id_or_name,
                              Error **errp);
/* Drains, flushes (unless read-only) and closes. */
void nbd_backend_close(NBDBackend *be);

int64_t nbd_backend_size(NBDBackend *be);
bool nbd_backend_read_only(NBDBackend *be);
/* The smallest request the image handles without read-modify-write. */
uint32_t nbd_backend_alignment(NBDBackend *be);
/* True if trims reach the image (--discard=unmap). */
bool nbd_backend_can_unmap(NBDBackend *be);

int coroutine_fn nbd_backend_co_read(NBDBackend *be, int64_t offset,
                                     int64_t bytes, void *buf);
int coroutine_fn nbd_backend_co_write(NBDBackend *be, int64_t offset,
                                      int64_t bytes, const void *buf,
                                      int flags);
int coroutine_fn nbd_backend_co_zero(NBDBackend *be, int64_t offset,
                                     int64_t bytes, int flags);
int coroutine_fn nbd_backend_co_trim(NBDBackend *be, int64_t offset,
                                     int64_t bytes, int flags);
int coroutine_fn nbd_backend_co_flush(NBDBackend *be);
/*
 * Status of the first *pnum bytes (> 0 on success) of [offset, +bytes),
 * seen through the backing chain: *hole when reads do not come from
 * stored data, *zero when they return zeroes; *depth (may be NULL) is 0
 * for unallocated everywhere, 1 for the top image, 2 for its backing...
 */
int coroutine_fn nbd_backend_co_block_status(NBDBackend *be, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             bool *hole, bool *zero,
                                             int *depth);
/* Wait until no request is in flight. */
void nbd_backend_drain(NBDBackend *be);

#endif
