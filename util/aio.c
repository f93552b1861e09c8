/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The event loop: a ppoll()-based AioContext with fd handlers, bottom halves
 * (schedulable from any thread, an eventfd wakes a blocked poll) and timers
 * kept in a min-heap on the monotonic clock.
 */
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>

#include "util/aio.h"

typedef struct AioHandler {
    int fd;
    IOHandler *io_read;
    IOHandler *io_write;
    void *opaque;
    bool deleted;               /* freed once no dispatch walks the list */
    struct AioHandler *next;
} AioHandler;

struct QEMUBH {
    AioContext *ctx;
    QEMUBHFunc *cb;
    void *opaque;
    /* The fields below are protected by ctx->bh_lock. */
    bool scheduled;             /* cb runs when the bh is popped */
    bool queued;                /* linked in ctx's pending queue */
    bool deleted;               /* free when popped */
    bool oneshot;               /* free after running */
    uint64_t seq;               /* enqueue order, bounds one dispatch pass */
    QEMUBH *next;
};

struct QEMUTimer {
    AioContext *ctx;
    QEMUTimerCB *cb;
    void *opaque;
    int64_t expire_ns;
    int heap_idx;               /* -1 when not armed */
};

struct AioContext {
    AioHandler *handlers;
    int walking_handlers;       /* > 0: deleted handlers must stay linked */
    unsigned nr_handlers;       /* not counting deleted ones */

    pthread_mutex_t bh_lock;
    QEMUBH *bh_head, *bh_tail;  /* pending queue, FIFO */
    uint64_t bh_seq;
    bool in_poll;               /* loop may sleep: schedulers must kick */
    int event_fd;
    unsigned fd_poll_skips;     /* aio_poll()s in a row that skipped the fds */

    GPtrArray *timers;          /* binary min-heap on expire_ns */

    AioIdleFunc *idle_fn;       /* see aio_set_idle_handler() */
    void *idle_opaque;
};

/* At most this many blocking aio_poll()s in a row return without polling
 * the fds after a bottom half or timer ran. */
#define AIO_MAX_FD_POLL_SKIPS 8

static AioContext *main_ctx;
static pthread_once_t main_ctx_once = PTHREAD_ONCE_INIT;

static void aio_context_create(void)
{
    AioContext *ctx = g_new0(AioContext, 1);

    pthread_mutex_init(&ctx->bh_lock, NULL);
    ctx->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ctx->event_fd < 0) {
        perror("eventfd");
        abort();
    }
    ctx->timers = g_ptr_array_new();
    main_ctx = ctx;
}

AioContext *qemu_get_aio_context(void)
{
    pthread_once(&main_ctx_once, aio_context_create);
    return main_ctx;
}

/* The virtual clock (qemu_clock_use_virtual); read by any thread. */
static bool clock_virtual;
static int64_t clock_virtual_ns;

static int64_t clock_monotonic_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t qemu_clock_get_ns(void)
{
    if (__atomic_load_n(&clock_virtual, __ATOMIC_ACQUIRE)) {
        return __atomic_load_n(&clock_virtual_ns, __ATOMIC_RELAXED);
    }
    return clock_monotonic_ns();
}

void qemu_clock_use_virtual(bool on)
{
    if (on && !clock_virtual) {
        __atomic_store_n(&clock_virtual_ns, clock_monotonic_ns(),
                         __ATOMIC_RELAXED);
    }
    __atomic_store_n(&clock_virtual, on, __ATOMIC_RELEASE);
}

bool qemu_clock_is_virtual(void)
{
    return __atomic_load_n(&clock_virtual, __ATOMIC_ACQUIRE);
}

void qemu_clock_set_virtual_ns(int64_t ns)
{
    if (ns > clock_virtual_ns) {
        __atomic_store_n(&clock_virtual_ns, ns, __ATOMIC_RELAXED);
    }
}

/* ---- fd handlers ---- */

static void aio_free_deleted_handlers(AioContext *ctx)
{
    AioHandler **p = &ctx->handlers;

    while (*p) {
        AioHandler *h = *p;

        if (h->deleted) {
            *p = h->next;
            g_free(h);
        } else {
            p = &h->next;
        }
    }
}

void aio_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                        IOHandler *io_write, void *opaque)
{
    AioHandler *h;

    for (h = ctx->handlers; h; h = h->next) {
        if (h->fd == fd && !h->deleted) {
            break;
        }
    }
    if (!io_read && !io_write) {
        if (h) {
            h->deleted = true;
            ctx->nr_handlers--;
            if (!ctx->walking_handlers) {
                aio_free_deleted_handlers(ctx);
            }
        }
        return;
    }
    if (!h) {
        h = g_new0(AioHandler, 1);
        h->fd = fd;
        h->next = ctx->handlers;
        ctx->handlers = h;
        ctx->nr_handlers++;
    }
    h->io_read = io_read;
    h->io_write = io_write;
    h->opaque = opaque;
}

/* ---- bottom halves ---- */

QEMUBH *aio_bh_new(AioContext *ctx, QEMUBHFunc *cb, void *opaque)
{
    QEMUBH *bh = g_new0(QEMUBH, 1);

    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    return bh;
}

static void aio_notify(AioContext *ctx)
{
    uint64_t one = 1;
    ssize_t r;

    r = write(ctx->event_fd, &one, sizeof(one));
    (void)r;    /* EAGAIN: the counter is already non-zero, poll will wake */
}

/*
 * Called with bh_lock held. True if the loop may be asleep in ppoll() and
 * must be kicked: the caller does so after dropping bh_lock, so that the
 * woken loop does not block on the lock its waker still holds (a futex
 * wait and wake per completion on the thread-pool path).
 */
static bool bh_schedule_locked(QEMUBH *bh)
{
    AioContext *ctx = bh->ctx;

    bh->scheduled = true;
    if (bh->queued) {
        return false;
    }
    bh->queued = true;
    bh->seq = ++ctx->bh_seq;
    bh->next = NULL;
    if (ctx->bh_tail) {
        ctx->bh_tail->next = bh;
    } else {
        ctx->bh_head = bh;
    }
    ctx->bh_tail = bh;
    return __atomic_load_n(&ctx->in_poll, __ATOMIC_RELAXED);
}

void qemu_bh_schedule(QEMUBH *bh)
{
    AioContext *ctx = bh->ctx;
    bool kick;

    pthread_mutex_lock(&ctx->bh_lock);
    kick = bh_schedule_locked(bh);
    pthread_mutex_unlock(&ctx->bh_lock);
    if (kick) {
        aio_notify(ctx);
    }
}

void aio_bh_schedule_oneshot(AioContext *ctx, QEMUBHFunc *cb, void *opaque)
{
    QEMUBH *bh = aio_bh_new(ctx, cb, opaque);
    bool kick;

    pthread_mutex_lock(&ctx->bh_lock);
    bh->oneshot = true;
    kick = bh_schedule_locked(bh);
    pthread_mutex_unlock(&ctx->bh_lock);
    if (kick) {
        aio_notify(ctx);
    }
}

void qemu_bh_cancel(QEMUBH *bh)
{
    pthread_mutex_lock(&bh->ctx->bh_lock);
    bh->scheduled = false;
    pthread_mutex_unlock(&bh->ctx->bh_lock);
}

void qemu_bh_delete(QEMUBH *bh)
{
    AioContext *ctx;
    bool free_now;

    if (!bh) {
        return;
    }
    ctx = bh->ctx;
    pthread_mutex_lock(&ctx->bh_lock);
    bh->scheduled = false;
    bh->deleted = true;
    /* A queued bh is still linked; the dispatcher frees it when popped. */
    free_now = !bh->queued;
    pthread_mutex_unlock(&ctx->bh_lock);
    if (free_now) {
        g_free(bh);
    }
}

/*
 * Run the bottom halves queued before this call. Popping one at a time from
 * the shared queue (rather than detaching it) keeps nested aio_poll() calls
 * able to run every pending bh.
 */
static bool aio_bh_poll(AioContext *ctx)
{
    bool progress = false;
    uint64_t last;

    pthread_mutex_lock(&ctx->bh_lock);
    last = ctx->bh_seq;
    for (;;) {
        QEMUBH *bh = ctx->bh_head;
        bool run, oneshot;

        if (!bh || bh->seq > last) {
            break;
        }
        ctx->bh_head = bh->next;
        if (!ctx->bh_head) {
            ctx->bh_tail = NULL;
        }
        bh->queued = false;
        run = bh->scheduled;
        bh->scheduled = false;
        if (bh->deleted) {
            g_free(bh);
            continue;
        }
        if (!run) {
            continue;
        }
        oneshot = bh->oneshot;
        if (oneshot) {
            bh->deleted = true;
        }
        pthread_mutex_unlock(&ctx->bh_lock);
        /* cb may delete bh: do not touch it afterwards. */
        bh->cb(bh->opaque);
        progress = true;
        if (oneshot) {
            g_free(bh);
        }
        pthread_mutex_lock(&ctx->bh_lock);
    }
    pthread_mutex_unlock(&ctx->bh_lock);
    return progress;
}

/* ---- timers ---- */

static void heap_set(GPtrArray *heap, int i, QEMUTimer *t)
{
    heap->pdata[i] = t;
    t->heap_idx = i;
}

static void heap_sift_up(GPtrArray *heap, int i)
{
    QEMUTimer *t = heap->pdata[i];

    while (i > 0) {
        int parent = (i - 1) / 2;
        QEMUTimer *p = heap->pdata[parent];

        if (p->expire_ns <= t->expire_ns) {
            break;
        }
        heap_set(heap, i, p);
        i = parent;
    }
    heap_set(heap, i, t);
}

static void heap_sift_down(GPtrArray *heap, int i)
{
    int n = heap->len;
    QEMUTimer *t = heap->pdata[i];

    for (;;) {
        int c = 2 * i + 1;
        QEMUTimer *child;

        if (c >= n) {
            break;
        }
        if (c + 1 < n && ((QEMUTimer *)heap->pdata[c + 1])->expire_ns <
                         ((QEMUTimer *)heap->pdata[c])->expire_ns) {
            c++;
        }
        child = heap->pdata[c];
        if (t->expire_ns <= child->expire_ns) {
            break;
        }
        heap_set(heap, i, child);
        i = c;
    }
    heap_set(heap, i, t);
}

static void heap_remove(GPtrArray *heap, QEMUTimer *t)
{
    int i = t->heap_idx;
    QEMUTimer *last = g_ptr_array_index(heap, heap->len - 1);

    g_ptr_array_set_size(heap, heap->len - 1);
    t->heap_idx = -1;
    if (last != t) {
        heap_set(heap, i, last);
        heap_sift_down(heap, i);
        heap_sift_up(heap, last->heap_idx);
    }
}

QEMUTimer *aio_timer_new(AioContext *ctx, QEMUTimerCB *cb, void *opaque)
{
    QEMUTimer *t = g_new0(QEMUTimer, 1);

    t->ctx = ctx;
    t->cb = cb;
    t->opaque = opaque;
    t->heap_idx = -1;
    return t;
}

void timer_mod_ns(QEMUTimer *timer, int64_t expire_ns)
{
    GPtrArray *heap = timer->ctx->timers;

    timer_del(timer);
    timer->expire_ns = expire_ns;
    g_ptr_array_add(heap, timer);
    timer->heap_idx = heap->len - 1;
    heap_sift_up(heap, timer->heap_idx);
}

void timer_del(QEMUTimer *timer)
{
    if (timer->heap_idx >= 0) {
        heap_remove(timer->ctx->timers, timer);
    }
}

void timer_free(QEMUTimer *timer)
{
    if (timer) {
        timer_del(timer);
        g_free(timer);
    }
}

bool timer_pending(QEMUTimer *timer)
{
    return timer->heap_idx >= 0;
}

/* Fire timers due at entry; ones re-armed in the past wait for the next call. */
static bool aio_timers_run(AioContext *ctx)
{
    int64_t now = qemu_clock_get_ns();
    bool progress = false;
    unsigned budget = ctx->timers->len;

    while (ctx->timers->len && budget--) {
        QEMUTimer *t = g_ptr_array_index(ctx->timers, 0);

        if (t->expire_ns > now) {
            break;
        }
        heap_remove(ctx->timers, t);
        t->cb(t->opaque);
        progress = true;
    }
    return progress;
}

int64_t aio_first_timer_ns(AioContext *ctx)
{
    if (!ctx->timers->len) {
        return -1;
    }
    return ((QEMUTimer *)g_ptr_array_index(ctx->timers, 0))->expire_ns;
}

/* -1: no timer; otherwise ns until the first deadline (0 if past). */
static int64_t aio_timers_deadline(AioContext *ctx)
{
    int64_t d;

    if (!ctx->timers->len) {
        return -1;
    }
    d = ((QEMUTimer *)g_ptr_array_index(ctx->timers, 0))->expire_ns -
        qemu_clock_get_ns();
    return d < 0 ? 0 : d;
}

/* ---- the loop ---- */

static bool aio_bh_pending(AioContext *ctx)
{
    QEMUBH *bh;

    for (bh = ctx->bh_head; bh; bh = bh->next) {
        if (bh->scheduled) {
            return true;
        }
    }
    return false;
}

void aio_set_idle_handler(AioContext *ctx, AioIdleFunc *fn, void *opaque)
{
    ctx->idle_fn = fn;
    ctx->idle_opaque = opaque;
}

/* Nothing ran and nothing is queued: give the idle handler its turn. */
static bool aio_run_idle_handler(AioContext *ctx)
{
    bool pending;

    if (!ctx->idle_fn) {
        return false;
    }
    pthread_mutex_lock(&ctx->bh_lock);
    pending = aio_bh_pending(ctx);
    pthread_mutex_unlock(&ctx->bh_lock);
    if (pending || !ctx->idle_fn(ctx->idle_opaque)) {
        return false;
    }
    aio_bh_poll(ctx);
    aio_timers_run(ctx);
    return true;
}

/* The loop thread is awake: schedulers need not kick it (loop thread). */
static void aio_leave_poll(AioContext *ctx)
{
    if (__atomic_load_n(&ctx->in_poll, __ATOMIC_RELAXED)) {
        __atomic_store_n(&ctx->in_poll, false, __ATOMIC_RELAXED);
    }
}

/*
 * Poll the fds (plus the notifier eventfd) for up to timeout_ns (-1 forever)
 * and dispatch the ready handlers.
 */
static bool aio_dispatch_fds(AioContext *ctx, int64_t timeout_ns)
{
    struct pollfd stack_pfd[32];
    AioHandler *stack_hs[32];
    struct pollfd *pfd = stack_pfd;
    AioHandler **hs = stack_hs;
    struct timespec ts, *tsp = NULL;
    unsigned n = 0, cap = 0, i;
    bool progress = false;
    AioHandler *h;
    int ret;

    for (h = ctx->handlers; h; h = h->next) {
        cap++;
    }
    if (cap + 1 > ARRAY_SIZE(stack_pfd)) {
        pfd = g_new(struct pollfd, cap + 1);
        hs = g_new(AioHandler *, cap + 1);
    }
    for (h = ctx->handlers; h; h = h->next) {
        if (h->deleted) {
            continue;
        }
        pfd[n].fd = h->fd;
        pfd[n].events = (h->io_read ? POLLIN : 0) | (h->io_write ? POLLOUT : 0);
        pfd[n].revents = 0;
        hs[n++] = h;
    }
    pfd[n].fd = ctx->event_fd;
    pfd[n].events = POLLIN;
    pfd[n].revents = 0;

    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    ret = ppoll(pfd, n + 1, tsp, NULL);
    /*
     * Awake again: bottom halves that the handlers below schedule (a
     * completion waking its coroutine) run at the next aio_poll() without
     * an eventfd kick. No lock: a scheduler that still sees in_poll set
     * only kicks once too often (the next poll returns at once).
     */
    aio_leave_poll(ctx);

    if (ret > 0) {
        if (pfd[n].revents) {
            uint64_t cnt;
            ssize_t r = read(ctx->event_fd, &cnt, sizeof(cnt));

            (void)r;
        }
        /* Handlers may add or remove handlers: keep deleted ones linked. */
        ctx->walking_handlers++;
        for (i = 0; i < n; i++) {
            short rev = pfd[i].revents;

            h = hs[i];
            if (!rev || h->deleted) {
                continue;
            }
            if ((rev & (POLLIN | POLLHUP | POLLERR)) && h->io_read) {
                h->io_read(h->opaque);
                progress = true;
            }
            if ((rev & (POLLOUT | POLLHUP | POLLERR)) && h->io_write &&
                !h->deleted) {
                h->io_write(h->opaque);
                progress = true;
            }
        }
        if (--ctx->walking_handlers == 0) {
            aio_free_deleted_handlers(ctx);
        }
    }
    if (pfd != stack_pfd) {
        g_free(pfd);
        g_free(hs);
    }
    return progress;
}

bool aio_poll(AioContext *ctx, bool blocking)
{
    bool progress;
    int64_t timeout = 0;

    progress = aio_bh_poll(ctx);
    progress |= aio_timers_run(ctx);

    if (blocking && !progress && aio_run_idle_handler(ctx)) {
        return true;
    }
    if (blocking && !progress) {
        bool idle;

        pthread_mutex_lock(&ctx->bh_lock);
        /*
         * Nothing registered could ever wake us: no fd, no timer, no bottom
         * half pending. Report no progress rather than hang. Code waiting
         * for another thread keeps a timer armed (see thread-pool.c).
         */
        idle = ctx->nr_handlers == 0 && ctx->timers->len == 0 &&
               !aio_bh_pending(ctx);
        if (idle) {
            pthread_mutex_unlock(&ctx->bh_lock);
            return false;
        }
        if (aio_bh_pending(ctx)) {
            timeout = 0;
        } else {
            timeout = aio_timers_deadline(ctx);
            __atomic_store_n(&ctx->in_poll, true, __ATOMIC_RELAXED);
        }
        pthread_mutex_unlock(&ctx->bh_lock);
    }

    if (blocking && progress &&
        ctx->fd_poll_skips < AIO_MAX_FD_POLL_SKIPS) {
        /*
         * A bottom half or timer ran: return without the zero-timeout
         * ppoll() that would only look at the fds. The caller polls again
         * (AIO_WAIT_WHILE), and that call blocks in ppoll() if nothing else
         * is pending, seeing the fds then. A completion waking a coroutine
         * that wakes another through a bottom half (a CoMutex hand-off)
         * made one useless ppoll() per step. Bounded, so that a stream of
         * bottom halves cannot keep the fds unpolled.
         */
        ctx->fd_poll_skips++;
        return true;
    }
    ctx->fd_poll_skips = 0;
    progress |= aio_dispatch_fds(ctx, timeout);
    if (blocking && !progress) {
        progress |= aio_bh_poll(ctx);
        progress |= aio_timers_run(ctx);
    }
    return progress;
}
