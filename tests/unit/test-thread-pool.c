/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for the thread pool: many concurrent jobs submitted by coroutines. */
#include "util/thread-pool.h"
#include "util/coroutine.h"
#include "util/aio.h"

static gint running, max_running;

static int job_square(void *opaque)
{
    int v = GPOINTER_TO_INT(opaque);
    gint now = g_atomic_int_add(&running, 1) + 1;
    gint max;

    while ((max = g_atomic_int_get(&max_running)) < now &&
           !g_atomic_int_compare_and_exchange(&max_running, max, now)) {
    }
    g_assert(!qemu_in_coroutine());
    g_usleep(10000 + (v % 7) * 1000);
    g_atomic_int_add(&running, -1);
    return v * v;
}

typedef struct JobArg {
    int v;
    int result;
    bool done;
} JobArg;

static int nr_done;

static void coroutine_fn co_submit(void *opaque)
{
    JobArg *a = opaque;

    a->result = thread_pool_submit_co(job_square, GINT_TO_POINTER(a->v));
    /* Resumed in the loop thread, inside our coroutine. */
    g_assert(qemu_in_coroutine());
    a->done = true;
    nr_done++;
}

static void test_concurrent_jobs(void)
{
    JobArg args[100];
    int i, polls = 0;

    for (i = 0; i < 100; i++) {
        args[i].v = i;
        args[i].done = false;
        qemu_coroutine_enter(qemu_coroutine_create(co_submit, &args[i]));
    }
    while (nr_done < 100) {
        aio_poll(qemu_get_aio_context(), true);
        polls++;
    }
    /* Blocking polls slept while workers ran instead of spinning. */
    g_assert_cmpint(polls, <=, 200);
    g_assert(!aio_poll(qemu_get_aio_context(), true));
    for (i = 0; i < 100; i++) {
        g_assert(args[i].done);
        g_assert_cmpint(args[i].result, ==, i * i);
    }
    g_assert_cmpint(thread_pool_nr_threads(), >=, 2);
    g_assert_cmpint(thread_pool_nr_threads(), <=, 64);
    /* The jobs ran in parallel, not one after another. */
    g_assert_cmpint(g_atomic_int_get(&max_running), >=, 2);
}

/* Sequential jobs from one coroutine reuse the idle workers. */
static void coroutine_fn co_sequential(void *opaque)
{
    int i;

    for (i = 0; i < 50; i++) {
        g_assert_cmpint(thread_pool_submit_co(job_square, GINT_TO_POINTER(i)),
                        ==, i * i);
    }
    *(bool *)opaque = true;
}

static void test_sequential_jobs(void)
{
    bool done = false;
    int before = thread_pool_nr_threads();

    qemu_coroutine_enter(qemu_coroutine_create(co_sequential, &done));
    AIO_WAIT_WHILE(!done);
    g_assert_cmpint(thread_pool_nr_threads(), <=, MAX(before, 1));
}

int main(int argc, char **argv)
{
    test_concurrent_jobs();
    test_sequential_jobs();
    printf("PASS test-thread-pool\n");
    return 0;
}
