/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A pool of worker threads for blocking system calls. The submitting
 * coroutine yields; the worker runs func(arg); the coroutine is resumed in the
 * event-loop thread with func's return value.
 */
#ifndef QEMU_THREAD_POOL_H
#define QEMU_THREAD_POOL_H

#include "util/osdep.h"

typedef int ThreadPoolFunc(void *opaque);

/* Must be called from a coroutine. Returns func's result. */
int coroutine_fn thread_pool_submit_co(ThreadPoolFunc *func, void *arg);
/* Number of worker threads currently alive (for tests). */
int thread_pool_nr_threads(void);
/*
 * Jobs submitted whose coroutine has not resumed yet (loop thread only).
 * Zero means no blocking call is out: a simulator may move its clock.
 */
unsigned thread_pool_in_flight(void);

#endif
