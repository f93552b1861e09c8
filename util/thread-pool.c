/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Worker threads for blocking system calls. Workers start on demand (up to
 * THREAD_POOL_MAX), exit after THREAD_POOL_IDLE_SEC without work, and hand
 * results back to the submitting coroutine through aio_co_wake().
 */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <time.h>

#include "util/thread-pool.h"
#include "util/coroutine.h"
#include "util/aio.h"

#define THREAD_POOL_MAX 64
#define THREAD_POOL_IDLE_SEC 10

typedef struct ThreadPoolJob {
    ThreadPoolFunc *func;
    void *arg;
    int ret;
    Coroutine *co;
    struct ThreadPoolJob *next;
} ThreadPoolJob;

/*
 * pool_lock protects the job list and counters; pool_sem counts queued
 * jobs. It is posted after the lock is dropped, so a woken worker never
 * wakes up only to block on the lock its waker still holds.
 */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static sem_t pool_sem;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static ThreadPoolJob *job_head, *job_tail;
static int nr_threads;
static int nr_idle;             /* workers waiting on pool_sem */
static int nr_queued;           /* jobs not yet taken by a worker */

/*
 * While jobs are out, an armed timer tells aio_poll() that the loop is not
 * idle, so a blocking poll sleeps until a worker's wake-up instead of
 * returning at once. Loop thread only.
 */
#define KEEPALIVE_NS (3600LL * 1000000000LL)
static QEMUTimer *keepalive;
static unsigned nr_inflight;

static void keepalive_cb(void *opaque)
{
    timer_mod_ns(keepalive, qemu_clock_get_ns() + KEEPALIVE_NS);
}

static void thread_pool_init(void)
{
    sem_init(&pool_sem, 0, 0);
}

static void *worker_thread(void *opaque)
{
    for (;;) {
        ThreadPoolJob *job;
        struct timespec ts;
        int r;

        pthread_mutex_lock(&pool_lock);
        nr_idle++;
        pthread_mutex_unlock(&pool_lock);

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += THREAD_POOL_IDLE_SEC;
        do {
            r = sem_clockwait(&pool_sem, CLOCK_MONOTONIC, &ts);
        } while (r < 0 && errno == EINTR);

        pthread_mutex_lock(&pool_lock);
        nr_idle--;
        if (r < 0) {
            /* Timed out: no job was counted for us. */
            nr_threads--;
            pthread_mutex_unlock(&pool_lock);
            return NULL;
        }
        job = job_head;
        nr_queued--;
        job_head = job->next;
        if (!job_head) {
            job_tail = NULL;
        }
        pthread_mutex_unlock(&pool_lock);

        /* job lives on the coroutine's stack: finish with it before waking. */
        job->ret = job->func(job->arg);
        aio_co_wake(job->co);
    }
}

/* Called with pool_lock held. */
static void spawn_worker(void)
{
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t all, old;
    int r;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Signals belong to the main thread; workers inherit a full mask. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = pthread_create(&tid, &attr, worker_thread, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r == 0) {
        nr_threads++;
    } else if (nr_threads == 0) {
        fprintf(stderr, "thread pool: cannot create a worker: %s\n",
                strerror(r));
        abort();
    }
}

int coroutine_fn thread_pool_submit_co(ThreadPoolFunc *func, void *arg)
{
    ThreadPoolJob job = {
        .func = func,
        .arg = arg,
        .co = qemu_coroutine_self(),
    };

    assert(qemu_in_coroutine());
    pthread_once(&pool_once, thread_pool_init);
    if (nr_inflight++ == 0) {
        if (!keepalive) {
            keepalive = aio_timer_new(qemu_get_aio_context(), keepalive_cb,
                                      NULL);
        }
        keepalive_cb(NULL);
    }

    pthread_mutex_lock(&pool_lock);
    if (job_tail) {
        job_tail->next = &job;
    } else {
        job_head = &job;
    }
    job_tail = &job;
    /* Start a worker only when the idle ones cannot take every job. */
    if (++nr_queued > nr_idle && nr_threads < THREAD_POOL_MAX) {
        spawn_worker();
    }
    pthread_mutex_unlock(&pool_lock);
    sem_post(&pool_sem);

    qemu_coroutine_yield();
    if (--nr_inflight == 0) {
        timer_del(keepalive);
    }
    return job.ret;
}

int thread_pool_nr_threads(void)
{
    int n;

    pthread_mutex_lock(&pool_lock);
    n = nr_threads;
    pthread_mutex_unlock(&pool_lock);
    return n;
}

unsigned thread_pool_in_flight(void)
{
    return nr_inflight;
}
