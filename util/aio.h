/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The event loop: fd handlers, bottom halves and timers, driven by aio_poll().
 *
 * There is one AioContext, owned by the main thread. Bottom halves may be
 * scheduled from any thread (an eventfd wakes the loop); everything else is
 * called from the loop thread only. Timers use the monotonic clock.
 */
#ifndef QEMU_AIO_H
#define QEMU_AIO_H

#include "util/osdep.h"

typedef struct AioContext AioContext;
typedef struct QEMUBH QEMUBH;
typedef struct QEMUTimer QEMUTimer;
typedef void IOHandler(void *opaque);
typedef void QEMUBHFunc(void *opaque);
typedef void QEMUTimerCB(void *opaque);

/* The main (and only) context; created on first use. */
AioContext *qemu_get_aio_context(void);

/*
 * Register (or, with both handlers NULL, remove) handlers for fd. io_read is
 * called when fd is readable, io_write when writable.
 */
void aio_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                        IOHandler *io_write, void *opaque);

QEMUBH *aio_bh_new(AioContext *ctx, QEMUBHFunc *cb, void *opaque);
/* Thread-safe. Runs cb once at the next aio_poll (multiple schedules merge). */
void qemu_bh_schedule(QEMUBH *bh);
void qemu_bh_cancel(QEMUBH *bh);
/* Deletes bh; a pending run is cancelled. */
void qemu_bh_delete(QEMUBH *bh);
/* Thread-safe: run cb(opaque) once from the loop. */
void aio_bh_schedule_oneshot(AioContext *ctx, QEMUBHFunc *cb, void *opaque);

/* Monotonic clock in nanoseconds (the virtual clock when that is on). */
int64_t qemu_clock_get_ns(void);
/*
 * Simulated time, for test harnesses that schedule I/O themselves (crashsim):
 * once on, qemu_clock_get_ns() returns a virtual clock that starts at the
 * current monotonic time and moves only by qemu_clock_set_virtual_ns(), so
 * timers fire in a reproducible order relative to simulated events. Loop
 * thread only; meant to stay on for the rest of the process.
 */
void qemu_clock_use_virtual(bool on);
bool qemu_clock_is_virtual(void);
/* Move the virtual clock forward to ns (earlier values are ignored). */
void qemu_clock_set_virtual_ns(int64_t ns);
QEMUTimer *aio_timer_new(AioContext *ctx, QEMUTimerCB *cb, void *opaque);
/* Arm timer to fire at the absolute monotonic time expire_ns. */
void timer_mod_ns(QEMUTimer *timer, int64_t expire_ns);
void timer_del(QEMUTimer *timer);
void timer_free(QEMUTimer *timer);
bool timer_pending(QEMUTimer *timer);
/* Expiry (qemu_clock_get_ns() time) of the first armed timer, or -1. */
int64_t aio_first_timer_ns(AioContext *ctx);

/*
 * Idle handler: a blocking aio_poll() that ran nothing (no bottom half
 * pending, no timer due) calls fn(opaque) before it would sleep. fn returns
 * true if it made progress (woke a coroutine, moved the virtual clock);
 * aio_poll() then runs what became ready and returns true. fn must not call
 * aio_poll(). One handler per context; NULL removes it.
 */
typedef bool AioIdleFunc(void *opaque);
void aio_set_idle_handler(AioContext *ctx, AioIdleFunc *fn, void *opaque);

/*
 * Run pending bottom halves, expired timers and ready fd handlers. When
 * blocking is true and nothing was ready, wait for the first event. Returns
 * true if progress was made (some callback ran). A blocking call that ran
 * a bottom half or timer may return before looking at the fds (a few times
 * in a row at most): callers poll in a loop.
 */
bool aio_poll(AioContext *ctx, bool blocking);

/* Poll the main context until cond is false. */
#define AIO_WAIT_WHILE(cond) \
    do { \
        while (cond) { \
            aio_poll(qemu_get_aio_context(), true); \
        } \
    } while (0)

#endif
