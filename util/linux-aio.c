/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Linux native AIO: completions are signalled on an eventfd that the event
 * loop watches, and resume the waiting coroutine directly.
 *
 * Submission is adaptive. A request issued while completions are being
 * dispatched (a coroutine resumed by a completion issues its next request,
 * as qemu-img bench and copy-on-write do) is queued: the other completions
 * harvested in the same pass usually issue requests too, and all of them go
 * to the kernel in one io_submit() when the pass ends (or once
 * LAIO_MAX_BATCH are queued). Any other request (one read from a socket by
 * the NBD server, a guest request) is submitted at once: nothing says more
 * are coming, and holding it back until the loop runs a bottom half only
 * delays it while the device may be idle.
 */
#include <libaio.h>
#include <sys/eventfd.h>

#include "util/linux-aio.h"
#include "util/aio.h"
#include "util/coroutine.h"

#define LAIO_MAX_EVENTS 128
/* Submit without waiting for the end of a batch once this many are queued. */
#define LAIO_MAX_BATCH 32

typedef struct LaioRequest {
    struct iocb iocb;
    Coroutine *co;
    QEMUIOVector *qiov;
    size_t nbytes;
    int type;
    int ret;
    bool done;
    struct LaioRequest *next;
} LaioRequest;

struct LinuxAioState {
    io_context_t ctx;
    int efd;
    AioContext *aio;
    QEMUBH *submit_bh;
    LaioRequest *pending_head, *pending_tail;   /* not yet io_submit()ed */
    unsigned nr_pending;
    unsigned in_flight;
    unsigned batching;      /* > 0: completions are being dispatched */
    LaioStats stats;
};

/* Turn a raw io_event result into 0 / -errno, fixing up short transfers. */
static int laio_result(LaioRequest *req, long res)
{
    if (res < 0) {
        return res;
    }
    if ((size_t)res == req->nbytes) {
        return 0;
    }
    if (req->type == QEMU_AIO_READ) {
        /* Reading past end of file: the caller sees zeroes. */
        qemu_iovec_memset(req->qiov, res, 0, req->nbytes - res);
        return 0;
    }
    return -EIO;
}

static void laio_complete(LaioRequest *req, int ret)
{
    req->ret = ret;
    req->done = true;
    /* Completions run in the loop thread outside coroutines: enter now. */
    if (req->co == qemu_coroutine_self()) {
        return;     /* failed at submission; laio_co_submit sees done */
    }
    if (qemu_in_coroutine()) {
        aio_co_wake(req->co);
    } else {
        qemu_coroutine_enter(req->co);
    }
}

static void laio_completion_cb(void *opaque);

static void laio_submit_pending(LinuxAioState *s)
{
    struct iocb *iocbs[LAIO_MAX_EVENTS];

    while (s->pending_head && s->in_flight < LAIO_MAX_EVENTS) {
        LaioRequest *req = s->pending_head;
        unsigned n = 0;
        int ret, i;

        for (; req && s->in_flight + n < LAIO_MAX_EVENTS; req = req->next) {
            iocbs[n++] = &req->iocb;
        }
        ret = io_submit(s->ctx, n, iocbs);
        s->stats.io_submit_calls++;
        if (ret == -EAGAIN) {
            /* Kernel queue full: retried when a completion frees a slot. */
            if (s->in_flight > 0) {
                return;
            }
            ret = 0;
        }
        if (ret < 0) {
            /* The first request is bad; fail it alone and go on. */
            req = s->pending_head;
            s->pending_head = req->next;
            s->nr_pending--;
            if (!s->pending_head) {
                s->pending_tail = NULL;
            }
            laio_complete(req, ret);
            continue;
        }
        for (i = 0; i < ret; i++) {
            s->pending_head = s->pending_head->next;
        }
        if (!s->pending_head) {
            s->pending_tail = NULL;
        }
        s->nr_pending -= ret;
        s->stats.submitted += ret;
        if (s->in_flight == 0 && ret > 0) {
            /* Watched only while busy, so an idle state leaves aio_poll idle. */
            aio_set_fd_handler(s->aio, s->efd, laio_completion_cb, NULL, s);
        }
        s->in_flight += ret;
        if (ret == 0) {
            /* Nothing in flight and EAGAIN: try again from the loop. */
            qemu_bh_schedule(s->submit_bh);
            return;
        }
    }
}

static void laio_submit_bh(void *opaque)
{
    laio_submit_pending(opaque);
}

static void laio_completion_cb(void *opaque)
{
    LinuxAioState *s = opaque;
    struct io_event events[LAIO_MAX_EVENTS];
    struct timespec zero = { 0, 0 };
    uint64_t cnt;
    ssize_t r;
    int n, i;

    r = read(s->efd, &cnt, sizeof(cnt));
    (void)r;
    /* Requests issued by the coroutines resumed here form one batch. */
    s->batching++;
    do {
        n = io_getevents(s->ctx, 0, LAIO_MAX_EVENTS, events, &zero);
        if (n <= 0) {
            break;
        }
        s->in_flight -= n;
        for (i = 0; i < n; i++) {
            LaioRequest *req = events[i].data;

            laio_complete(req, laio_result(req, (long)events[i].res));
        }
    } while (n == LAIO_MAX_EVENTS);
    s->batching--;
    if (s->pending_head) {
        laio_submit_pending(s);
    }
    if (s->in_flight == 0) {
        aio_set_fd_handler(s->aio, s->efd, NULL, NULL, NULL);
    }
}

LinuxAioState *laio_init(Error **errp)
{
    LinuxAioState *s = g_new0(LinuxAioState, 1);
    int ret;

    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        error_setg_errno(errp, errno, "Failed to create eventfd");
        g_free(s);
        return NULL;
    }
    ret = io_setup(LAIO_MAX_EVENTS, &s->ctx);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to create linux AIO context");
        close(s->efd);
        g_free(s);
        return NULL;
    }
    s->aio = qemu_get_aio_context();
    s->submit_bh = aio_bh_new(s->aio, laio_submit_bh, s);
    return s;
}

void laio_get_stats(LinuxAioState *s, LaioStats *stats)
{
    *stats = s->stats;
}

void laio_cleanup(LinuxAioState *s)
{
    if (!s) {
        return;
    }
    assert(s->in_flight == 0 && !s->pending_head);
    qemu_bh_delete(s->submit_bh);
    io_destroy(s->ctx);
    close(s->efd);
    g_free(s);
}

int coroutine_fn laio_co_submit(LinuxAioState *s, int fd, uint64_t offset,
                                QEMUIOVector *qiov, int type)
{
    LaioRequest req = {
        .co = qemu_coroutine_self(),
        .qiov = qiov,
        .nbytes = qiov->size,
        .type = type,
    };

    assert(qemu_in_coroutine());
    if (qiov->size == 0) {
        return 0;
    }
    if (type == QEMU_AIO_READ) {
        io_prep_preadv(&req.iocb, fd, qiov->iov, qiov->niov, offset);
    } else if (type == QEMU_AIO_WRITE) {
        io_prep_pwritev(&req.iocb, fd, qiov->iov, qiov->niov, offset);
    } else {
        return -EINVAL;
    }
    io_set_eventfd(&req.iocb, s->efd);
    req.iocb.data = &req;

    if (s->pending_tail) {
        s->pending_tail->next = &req;
    } else {
        s->pending_head = &req;
    }
    s->pending_tail = &req;
    s->nr_pending++;
    /*
     * Batched while completions are dispatched, else submitted now. The bh
     * covers a batch whose dispatch pass waits in a nested event loop.
     */
    if (!s->batching || s->nr_pending >= LAIO_MAX_BATCH) {
        laio_submit_pending(s);
    } else {
        qemu_bh_schedule(s->submit_bh);
    }
    if (!req.done) {
        qemu_coroutine_yield();
    }
    return req.ret;
}
