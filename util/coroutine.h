/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Coroutines and their synchronisation primitives.
 *
 * All coroutines run in the single event-loop thread. A coroutine runs until
 * it yields or terminates; it is resumed by qemu_coroutine_enter() (same
 * thread) or aio_co_wake() (any thread; resumes it from the event loop).
 * Stacks come from a pool so that creating a coroutine per request is cheap.
 */
#ifndef QEMU_COROUTINE_H
#define QEMU_COROUTINE_H

#include "util/osdep.h"

typedef struct Coroutine Coroutine;
typedef void coroutine_fn CoroutineEntry(void *opaque);

Coroutine *qemu_coroutine_create(CoroutineEntry *entry, void *opaque);
/* Switch to co until it yields or terminates. co must not be running. */
void qemu_coroutine_enter(Coroutine *co);
/* Enter co unless it is already running (entered and not yet yielded). */
void qemu_coroutine_enter_if_inactive(Coroutine *co);
void coroutine_fn qemu_coroutine_yield(void);
/* The running coroutine, or NULL outside coroutine context. */
Coroutine *qemu_coroutine_self(void);
bool qemu_in_coroutine(void);
/* True while co is on the call stack (entered and not yielded). */
bool qemu_coroutine_entered(Coroutine *co);

/*
 * Resume co from the event loop at the next aio_poll(). Thread-safe: this is
 * how thread-pool, linux-aio and librbd completions resume their coroutine.
 */
void aio_co_wake(Coroutine *co);
/* Same as aio_co_wake (QEMU's name when the caller knows the context). */
void aio_co_schedule(Coroutine *co);

/* A queue of coroutines waiting for a condition. Not thread-safe. */
typedef struct CoWaiter CoWaiter;
typedef struct CoQueue {
    CoWaiter *head, *tail;
} CoQueue;

typedef struct CoMutex {
    bool locked;
    Coroutine *holder;
    unsigned waiters;
    CoQueue queue;
} CoMutex;

void qemu_co_queue_init(CoQueue *queue);
/*
 * Wait on queue. If mutex is non-NULL it is released while waiting and
 * re-acquired before returning.
 */
void coroutine_fn qemu_co_queue_wait(CoQueue *queue, CoMutex *mutex);
/* Wake the first waiter (it runs from the event loop). False if none. */
bool qemu_co_queue_next(CoQueue *queue);
/* Wake every waiter. */
void qemu_co_queue_restart_all(CoQueue *queue);
bool qemu_co_queue_empty(CoQueue *queue);

void qemu_co_mutex_init(CoMutex *mutex);
void coroutine_fn qemu_co_mutex_lock(CoMutex *mutex);
void coroutine_fn qemu_co_mutex_unlock(CoMutex *mutex);
/* Asserts the calling coroutine holds mutex. */
void qemu_co_mutex_assert_locked(CoMutex *mutex);

/* Yield for at least ns nanoseconds (monotonic clock). */
void coroutine_fn qemu_co_sleep_ns(int64_t ns);

/* Number of coroutine stacks currently cached in the pool (for tests). */
unsigned qemu_coroutine_pool_size(void);

#endif
