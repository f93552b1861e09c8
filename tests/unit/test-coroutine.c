/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for coroutines, the coroutine pool, CoMutex, CoQueue, co_sleep. */
#include "util/coroutine.h"
#include "util/aio.h"

static void drain(void)
{
    while (aio_poll(qemu_get_aio_context(), false)) {
    }
}

/* enter / yield / terminate */

static void coroutine_fn co_yield_twice(void *opaque)
{
    int *step = opaque;

    g_assert(qemu_in_coroutine());
    *step = 1;
    qemu_coroutine_yield();
    *step = 2;
    qemu_coroutine_yield();
    *step = 3;
}

static void test_enter_yield(void)
{
    int step = 0;
    Coroutine *co = qemu_coroutine_create(co_yield_twice, &step);

    g_assert(!qemu_in_coroutine());
    g_assert(qemu_coroutine_self() == NULL);
    qemu_coroutine_enter(co);
    g_assert_cmpint(step, ==, 1);
    g_assert(!qemu_coroutine_entered(co));
    qemu_coroutine_enter(co);
    g_assert_cmpint(step, ==, 2);
    qemu_coroutine_enter(co);
    g_assert_cmpint(step, ==, 3);
    g_assert(!qemu_in_coroutine());
}

/* nesting: the caller resumes when the callee yields or terminates */

typedef struct NestState {
    Coroutine *outer, *inner;
    GString *log;
} NestState;

static void coroutine_fn co_inner(void *opaque)
{
    NestState *s = opaque;

    g_assert(qemu_coroutine_self() == s->inner);
    g_assert(qemu_coroutine_entered(s->outer));
    g_string_append(s->log, "i1 ");
    qemu_coroutine_yield();
    g_string_append(s->log, "i2 ");
}

static void coroutine_fn co_outer(void *opaque)
{
    NestState *s = opaque;

    g_string_append(s->log, "o1 ");
    s->inner = qemu_coroutine_create(co_inner, s);
    qemu_coroutine_enter(s->inner);
    g_assert(qemu_coroutine_self() == s->outer);
    g_string_append(s->log, "o2 ");
    qemu_coroutine_enter(s->inner);
    g_string_append(s->log, "o3 ");
    qemu_coroutine_yield();
    g_string_append(s->log, "o4");
}

static void test_nesting(void)
{
    NestState s = { .log = g_string_new(NULL) };

    s.outer = qemu_coroutine_create(co_outer, &s);
    qemu_coroutine_enter(s.outer);
    g_assert_cmpstr(s.log->str, ==, "o1 i1 o2 i2 o3 ");
    qemu_coroutine_enter(s.outer);
    g_assert_cmpstr(s.log->str, ==, "o1 i1 o2 i2 o3 o4");
    g_string_free(s.log, TRUE);
}

/* enter_if_inactive on self is a no-op */

static void coroutine_fn co_enter_self(void *opaque)
{
    int *n = opaque;

    qemu_coroutine_enter_if_inactive(qemu_coroutine_self());
    (*n)++;
}

static void test_enter_if_inactive(void)
{
    int n = 0;
    Coroutine *co = qemu_coroutine_create(co_enter_self, &n);

    qemu_coroutine_enter_if_inactive(co);
    g_assert_cmpint(n, ==, 1);
}

/* 10000 create/terminate cycles reuse pooled stacks */

static void coroutine_fn co_count(void *opaque)
{
    (*(int *)opaque)++;
}

static void test_pool_reuse(void)
{
    int n = 0, i;
    Coroutine *first, *co;

    for (i = 0; i < 10000; i++) {
        qemu_coroutine_enter(qemu_coroutine_create(co_count, &n));
    }
    g_assert_cmpint(n, ==, 10000);
    g_assert_cmpuint(qemu_coroutine_pool_size(), >=, 1);
    g_assert_cmpuint(qemu_coroutine_pool_size(), <=, 64);
    first = qemu_coroutine_create(co_count, &n);
    qemu_coroutine_enter(first);
    co = qemu_coroutine_create(co_count, &n);
    g_assert(co == first);    /* the stack just freed is handed out again */
    qemu_coroutine_enter(co);
}

/* many coroutines alive at once, more than the pool keeps */

static void coroutine_fn co_yield_once(void *opaque)
{
    qemu_coroutine_yield();
    (*(int *)opaque)++;
}

static void test_many_alive(void)
{
    Coroutine *cos[200];
    int n = 0, i;

    for (i = 0; i < 200; i++) {
        cos[i] = qemu_coroutine_create(co_yield_once, &n);
        qemu_coroutine_enter(cos[i]);
    }
    for (i = 0; i < 200; i++) {
        qemu_coroutine_enter(cos[i]);
    }
    g_assert_cmpint(n, ==, 200);
    g_assert_cmpuint(qemu_coroutine_pool_size(), ==, 64);
}

/* CoMutex: FIFO handoff between several coroutines */

typedef struct MutexState {
    CoMutex lock;
    GString *log;
    int inside;
} MutexState;

typedef struct MutexArg {
    MutexState *s;
    char id;
} MutexArg;

static void coroutine_fn co_mutex_user(void *opaque)
{
    MutexArg *a = opaque;
    int round;

    for (round = 0; round < 3; round++) {
        qemu_co_mutex_lock(&a->s->lock);
        qemu_co_mutex_assert_locked(&a->s->lock);
        g_assert_cmpint(a->s->inside, ==, 0);
        a->s->inside++;
        g_string_append_c(a->s->log, a->id);
        /* Hold the lock across a trip through the event loop. */
        aio_co_schedule(qemu_coroutine_self());
        qemu_coroutine_yield();
        a->s->inside--;
        qemu_co_mutex_unlock(&a->s->lock);
        aio_co_schedule(qemu_coroutine_self());
        qemu_coroutine_yield();
    }
}

static void test_mutex_fairness(void)
{
    MutexState s = { .log = g_string_new(NULL) };
    MutexArg args[4];
    int i;

    qemu_co_mutex_init(&s.lock);
    for (i = 0; i < 4; i++) {
        args[i].s = &s;
        args[i].id = 'a' + i;
        qemu_coroutine_enter(qemu_coroutine_create(co_mutex_user, &args[i]));
    }
    drain();
    /* Strict FIFO: every waiter gets its turn before anyone goes again. */
    g_assert_cmpstr(s.log->str, ==, "abcdabcdabcd");
    g_assert(!s.lock.locked);
    g_string_free(s.log, TRUE);
}

/* CoQueue: restart_all wakes every waiter in order; wait with a mutex */

typedef struct QueueState {
    CoQueue queue;
    CoMutex lock;
    GString *log;
    bool go;
} QueueState;

typedef struct QueueArg {
    QueueState *s;
    char id;
} QueueArg;

static void coroutine_fn co_queue_waiter(void *opaque)
{
    QueueArg *a = opaque;

    qemu_co_mutex_lock(&a->s->lock);
    while (!a->s->go) {
        qemu_co_queue_wait(&a->s->queue, &a->s->lock);
    }
    qemu_co_mutex_assert_locked(&a->s->lock);
    g_string_append_c(a->s->log, a->id);
    qemu_co_mutex_unlock(&a->s->lock);
}

static void test_queue_restart_all(void)
{
    QueueState s = { .log = g_string_new(NULL) };
    QueueArg args[5];
    int i;

    qemu_co_queue_init(&s.queue);
    qemu_co_mutex_init(&s.lock);
    g_assert(qemu_co_queue_empty(&s.queue));
    g_assert(!qemu_co_queue_next(&s.queue));
    for (i = 0; i < 5; i++) {
        args[i].s = &s;
        args[i].id = '1' + i;
        qemu_coroutine_enter(qemu_coroutine_create(co_queue_waiter, &args[i]));
    }
    drain();
    g_assert(!qemu_co_queue_empty(&s.queue));
    g_assert_cmpstr(s.log->str, ==, "");

    /* A spurious wake-up puts the waiter back in line. */
    g_assert(qemu_co_queue_next(&s.queue));
    drain();
    g_assert_cmpstr(s.log->str, ==, "");

    s.go = true;
    qemu_co_queue_restart_all(&s.queue);
    g_assert(qemu_co_queue_empty(&s.queue));
    drain();
    g_assert_cmpstr(s.log->str, ==, "23451");
    g_string_free(s.log, TRUE);
}

/* co_sleep: shorter sleeps finish first, and no sooner than asked */

typedef struct SleepArg {
    int64_t ns;
    GString *log;
    char id;
    int *done;
} SleepArg;

static void coroutine_fn co_sleeper(void *opaque)
{
    SleepArg *a = opaque;
    int64_t start = qemu_clock_get_ns();

    qemu_co_sleep_ns(a->ns);
    g_assert_cmpint(qemu_clock_get_ns() - start, >=, a->ns);
    g_string_append_c(a->log, a->id);
    (*a->done)++;
}

static void test_sleep_order(void)
{
    GString *log = g_string_new(NULL);
    int done = 0;
    SleepArg args[] = {
        { 30 * 1000000, log, 'c', &done },
        { 10 * 1000000, log, 'a', &done },
        { 20 * 1000000, log, 'b', &done },
        { 0, log, '0', &done },
    };
    int i;

    for (i = 0; i < 4; i++) {
        qemu_coroutine_enter(qemu_coroutine_create(co_sleeper, &args[i]));
    }
    AIO_WAIT_WHILE(done < 4);
    g_assert_cmpstr(log->str, ==, "0abc");
    g_string_free(log, TRUE);
}

/* aio_co_wake from another thread */

static void *wake_thread(void *opaque)
{
    g_usleep(20000);
    aio_co_wake(opaque);
    return NULL;
}

static void coroutine_fn co_wait_thread(void *opaque)
{
    GThread *t = g_thread_new("waker", wake_thread, qemu_coroutine_self());

    qemu_coroutine_yield();
    g_thread_join(t);
    *(bool *)opaque = true;
}

static void test_wake_from_thread(void)
{
    bool done = false;

    qemu_coroutine_enter(qemu_coroutine_create(co_wait_thread, &done));
    AIO_WAIT_WHILE(!done);
}

/* switch speed, as a sanity check that switching is cheap */

static void coroutine_fn co_spin(void *opaque)
{
    for (;;) {
        qemu_coroutine_yield();
    }
}

static void test_switch_speed(void)
{
    Coroutine *co = qemu_coroutine_create(co_spin, NULL);
    int64_t start = qemu_clock_get_ns();
    int i, n = 1000000;

    for (i = 0; i < n; i++) {
        qemu_coroutine_enter(co);
    }
    if (g_getenv("TEST_VERBOSE")) {
        printf("enter+yield: %.1f ns\n",
               (double)(qemu_clock_get_ns() - start) / n);
    }
    /* co is leaked on purpose: it never terminates. */
}

int main(int argc, char **argv)
{
    test_enter_yield();
    test_nesting();
    test_enter_if_inactive();
    test_pool_reuse();
    test_many_alive();
    test_mutex_fairness();
    test_queue_restart_all();
    test_sleep_order();
    test_wake_from_thread();
    test_switch_speed();
    printf("PASS test-coroutine\n");
    return 0;
}
