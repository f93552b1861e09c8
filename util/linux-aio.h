/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Linux native AIO (libaio) for aio=native. A request is submitted at once,
 * except those issued while completions are dispatched, which share one
 * io_submit(); completions arrive on an eventfd watched by the event loop
 * and resume the submitting coroutine.
 */
#ifndef QEMU_LINUX_AIO_H
#define QEMU_LINUX_AIO_H

#include "util/osdep.h"
#include "util/error.h"
#include "util/iov.h"

typedef struct LinuxAioState LinuxAioState;

enum {
    QEMU_AIO_READ = 1,
    QEMU_AIO_WRITE = 2,
};

typedef struct LaioStats {
    uint64_t io_submit_calls;   /* io_submit() system calls */
    uint64_t submitted;         /* requests the kernel accepted */
} LaioStats;

LinuxAioState *laio_init(Error **errp);
void laio_get_stats(LinuxAioState *s, LaioStats *stats);
void laio_cleanup(LinuxAioState *s);
/*
 * Submit a read or write of qiov at offset on fd and wait for it. Returns
 * -errno on failure; a short transfer is reported as -EIO for writes and
 * zero-filled for reads past the end of the file.
 */
int coroutine_fn laio_co_submit(LinuxAioState *s, int fd, uint64_t offset,
                                QEMUIOVector *qiov, int type);

#endif
