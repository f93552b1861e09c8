/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for the event loop: fd handlers, bottom halves and timers. */
#include "util/aio.h"
#include "util/coroutine.h"
#ifdef CONFIG_LINUX_AIO
#include "util/linux-aio.h"
#endif

static AioContext *ctx;

/* An idle loop must not block. */
static void test_idle(void)
{
    g_assert(!aio_poll(ctx, false));
    g_assert(!aio_poll(ctx, true));
}

/* fd handler on a pipe; the handler removes itself */

typedef struct PipeState {
    int fds[2];
    int reads;
    char last;
} PipeState;

static void pipe_read(void *opaque)
{
    PipeState *s = opaque;
    char c;

    g_assert_cmpint(read(s->fds[0], &c, 1), ==, 1);
    s->last = c;
    if (++s->reads == 2) {
        aio_set_fd_handler(ctx, s->fds[0], NULL, NULL, NULL);
    }
}

static void test_fd_handler(void)
{
    PipeState s = { .reads = 0 };

    g_assert_cmpint(pipe(s.fds), ==, 0);
    aio_set_fd_handler(ctx, s.fds[0], pipe_read, NULL, &s);
    g_assert(!aio_poll(ctx, false));
    g_assert_cmpint(write(s.fds[1], "x", 1), ==, 1);
    g_assert(aio_poll(ctx, true));
    g_assert_cmpint(s.reads, ==, 1);
    g_assert_cmpint(s.last, ==, 'x');
    g_assert_cmpint(write(s.fds[1], "yz", 2), ==, 2);
    g_assert(aio_poll(ctx, true));
    g_assert_cmpint(s.reads, ==, 2);
    /* Removed: the remaining byte is not consumed and poll is idle. */
    g_assert(!aio_poll(ctx, false));
    g_assert(!aio_poll(ctx, true));
    g_assert_cmpint(s.reads, ==, 2);
    close(s.fds[0]);
    close(s.fds[1]);
}

/* write handler, and handlers added during dispatch */

typedef struct WriteState {
    int fds[2];
    int writes;
    int reads;
} WriteState;

static void ws_read(void *opaque)
{
    WriteState *s = opaque;
    char c;

    g_assert_cmpint(read(s->fds[0], &c, 1), ==, 1);
    s->reads++;
    aio_set_fd_handler(ctx, s->fds[0], NULL, NULL, NULL);
}

static void ws_write(void *opaque)
{
    WriteState *s = opaque;

    g_assert_cmpint(write(s->fds[1], "w", 1), ==, 1);
    s->writes++;
    aio_set_fd_handler(ctx, s->fds[1], NULL, NULL, NULL);
    aio_set_fd_handler(ctx, s->fds[0], ws_read, NULL, s);
}

static void test_fd_write_and_add(void)
{
    WriteState s = { .writes = 0 };

    g_assert_cmpint(pipe(s.fds), ==, 0);
    aio_set_fd_handler(ctx, s.fds[1], NULL, ws_write, &s);
    while (s.reads == 0) {
        g_assert(aio_poll(ctx, true));
    }
    g_assert_cmpint(s.writes, ==, 1);
    g_assert(!aio_poll(ctx, true));
    close(s.fds[0]);
    close(s.fds[1]);
}

/* bottom halves */

static void bh_count(void *opaque)
{
    (*(int *)opaque)++;
}

typedef struct SelfBH {
    QEMUBH *bh;
    int runs;
} SelfBH;

static void bh_resched(void *opaque)
{
    SelfBH *s = opaque;

    /* A bh rescheduling itself runs once per aio_poll, not forever. */
    if (++s->runs < 3) {
        qemu_bh_schedule(s->bh);
    } else {
        qemu_bh_delete(s->bh);
    }
}

static void test_bh(void)
{
    int n = 0;
    QEMUBH *bh = aio_bh_new(ctx, bh_count, &n);
    SelfBH self = { .runs = 0 };

    qemu_bh_schedule(bh);
    qemu_bh_schedule(bh);     /* merges with the first */
    g_assert(aio_poll(ctx, false));
    g_assert_cmpint(n, ==, 1);
    g_assert(!aio_poll(ctx, false));

    qemu_bh_schedule(bh);
    qemu_bh_cancel(bh);
    g_assert(!aio_poll(ctx, false));
    g_assert_cmpint(n, ==, 0 + 1);

    qemu_bh_schedule(bh);
    qemu_bh_delete(bh);
    g_assert(!aio_poll(ctx, false));
    g_assert_cmpint(n, ==, 1);

    aio_bh_schedule_oneshot(ctx, bh_count, &n);
    g_assert(aio_poll(ctx, true));
    g_assert_cmpint(n, ==, 2);

    self.bh = aio_bh_new(ctx, bh_resched, &self);
    qemu_bh_schedule(self.bh);
    g_assert(aio_poll(ctx, false));
    g_assert_cmpint(self.runs, ==, 1);
    g_assert(aio_poll(ctx, false));
    g_assert(aio_poll(ctx, false));
    g_assert_cmpint(self.runs, ==, 3);
    g_assert(!aio_poll(ctx, true));
}

/* bottom half scheduled from another thread wakes a blocked poll */

typedef struct ThreadBH {
    QEMUBH *bh;
    int runs;
} ThreadBH;

static void *bh_thread(void *opaque)
{
    ThreadBH *s = opaque;

    g_usleep(50000);
    qemu_bh_schedule(s->bh);
    return NULL;
}

static void *oneshot_thread(void *opaque)
{
    g_usleep(20000);
    aio_bh_schedule_oneshot(ctx, bh_count, opaque);
    return NULL;
}

static void keepalive_cb(void *opaque)
{
}

static void test_bh_from_thread(void)
{
    ThreadBH s = { .runs = 0 };
    /* A far timer marks the loop busy: blocking polls must sleep. */
    QEMUTimer *keepalive = aio_timer_new(ctx, keepalive_cb, NULL);
    GThread *t;
    int64_t start;
    int n = 0, polls = 0;

    timer_mod_ns(keepalive, qemu_clock_get_ns() + 10000000000LL);
    s.bh = aio_bh_new(ctx, bh_count, &s.runs);
    /* start before the thread exists: its 50 ms sleep then always ends
     * after start, however late this thread runs again (a loaded machine
     * can deschedule it for longer than 10 ms). */
    start = qemu_clock_get_ns();
    t = g_thread_new("bh", bh_thread, &s);
    while (s.runs == 0) {
        aio_poll(ctx, true);
        polls++;
    }
    g_assert_cmpint(qemu_clock_get_ns() - start, >=, 40000000);
    /* We slept in poll rather than spinning until the bh arrived. */
    g_assert_cmpint(polls, <=, 3);
    g_thread_join(t);
    qemu_bh_delete(s.bh);

    t = g_thread_new("oneshot", oneshot_thread, &n);
    polls = 0;
    while (n == 0) {
        aio_poll(ctx, true);
        polls++;
    }
    g_assert_cmpint(polls, <=, 3);
    g_thread_join(t);
    timer_free(keepalive);

    /* An unscheduled bh alone does not keep a blocking poll waiting. */
    s.bh = aio_bh_new(ctx, bh_count, &s.runs);
    g_assert(!aio_poll(ctx, true));
    qemu_bh_delete(s.bh);
}

/* many threads hammering one bh */

static void *hammer_thread(void *opaque)
{
    int i;

    for (i = 0; i < 10000; i++) {
        qemu_bh_schedule(opaque);
    }
    return NULL;
}

static void test_bh_hammer(void)
{
    int n = 0, i;
    QEMUBH *bh = aio_bh_new(ctx, bh_count, &n);
    GThread *t[4];

    for (i = 0; i < 4; i++) {
        t[i] = g_thread_new("hammer", hammer_thread, bh);
    }
    for (i = 0; i < 4; i++) {
        g_thread_join(t[i]);
    }
    while (aio_poll(ctx, false)) {
    }
    g_assert_cmpint(n, >=, 1);
    qemu_bh_delete(bh);
}

/* timers fire in deadline order, not arming order */

typedef struct TimerArg {
    GString *log;
    char id;
    int64_t expire;
} TimerArg;

static void timer_cb(void *opaque)
{
    TimerArg *a = opaque;

    g_assert_cmpint(qemu_clock_get_ns(), >=, a->expire);
    g_string_append_c(a->log, a->id);
}

static void test_timers(void)
{
    GString *log = g_string_new(NULL);
    int64_t now = qemu_clock_get_ns();
    static const int order[] = { 5, 1, 4, 2, 3, 0 };
    TimerArg args[6];
    QEMUTimer *t[6];
    QEMUTimer *cancelled;
    int i;

    for (i = 0; i < 6; i++) {
        int k = order[i];

        args[i].log = log;
        args[i].id = 'a' + k;
        args[i].expire = now + (k + 1) * 5000000LL;
        t[i] = aio_timer_new(ctx, timer_cb, &args[i]);
        timer_mod_ns(t[i], args[i].expire);
        g_assert(timer_pending(t[i]));
    }
    cancelled = aio_timer_new(ctx, timer_cb, &args[0]);
    timer_mod_ns(cancelled, now + 1000000);
    timer_del(cancelled);
    g_assert(!timer_pending(cancelled));
    timer_free(cancelled);

    /* Re-arming moves a timer: t[4] (was "d") now fires last. */
    args[4].expire = now + 40000000;
    args[4].id = 'z';
    timer_mod_ns(t[4], args[4].expire);

    while (log->len < 6) {
        g_assert(aio_poll(ctx, true));
    }
    g_assert_cmpstr(log->str, ==, "abcefz");
    for (i = 0; i < 6; i++) {
        g_assert(!timer_pending(t[i]));
        timer_free(t[i]);
    }
    g_assert(!aio_poll(ctx, true));
    g_string_free(log, TRUE);
}

/* many timers: heap property under random arming */

static void test_timer_heap(void)
{
    GString *log = g_string_new(NULL);
    int64_t base = qemu_clock_get_ns() + 1000000;
    TimerArg args[200];
    QEMUTimer *t[200];
    GRand *r = g_rand_new_with_seed(42);
    int i, fired = 0;
    int64_t last = 0;

    for (i = 0; i < 200; i++) {
        args[i].log = log;
        args[i].id = 'x';
        args[i].expire = base + g_rand_int_range(r, 0, 5000000);
        t[i] = aio_timer_new(ctx, timer_cb, &args[i]);
        timer_mod_ns(t[i], args[i].expire);
    }
    for (i = 0; i < 200; i += 3) {
        timer_del(t[i]);
    }
    while (aio_poll(ctx, true)) {
    }
    fired = log->len;
    g_assert_cmpint(fired, ==, 200 - 67);
    for (i = 0; i < 200; i++) {
        timer_free(t[i]);
    }
    (void)last;
    g_rand_free(r);
    g_string_free(log, TRUE);
}

#ifdef CONFIG_LINUX_AIO
/* linux-aio: reads/writes from many coroutines, short read zeroed */

typedef struct LaioArg {
    LinuxAioState *s;
    int fd;
    int idx;
    int *done;
} LaioArg;

static void coroutine_fn co_laio(void *opaque)
{
    LaioArg *a = opaque;
    unsigned char *buf = qemu_blockalign(8192);
    QEMUIOVector q;
    int i;

    memset(buf, 'A' + a->idx % 50, 8192);
    qemu_iovec_init(&q, 2);
    qemu_iovec_add(&q, buf, 4096);
    qemu_iovec_add(&q, buf + 4096, 4096);
    g_assert_cmpint(laio_co_submit(a->s, a->fd, a->idx * 8192, &q,
                                   QEMU_AIO_WRITE), ==, 0);
    memset(buf, 0, 8192);
    g_assert_cmpint(laio_co_submit(a->s, a->fd, a->idx * 8192, &q,
                                   QEMU_AIO_READ), ==, 0);
    for (i = 0; i < 8192; i++) {
        g_assert_cmpint(buf[i], ==, 'A' + a->idx % 50);
    }
    qemu_iovec_destroy(&q);
    qemu_vfree(buf);
    (*a->done)++;
}

static void coroutine_fn co_laio_eof(void *opaque)
{
    LaioArg *a = opaque;
    unsigned char *buf = qemu_blockalign(8192);
    QEMUIOVector q;
    int i;

    /* The file ends 4 KiB into this request. */
    memset(buf, 0xee, 8192);
    qemu_iovec_init_buf(&q, buf, 8192);
    g_assert_cmpint(laio_co_submit(a->s, a->fd, a->idx * 8192 - 4096, &q,
                                   QEMU_AIO_READ), ==, 0);
    for (i = 0; i < 4096; i++) {
        g_assert_cmpint(buf[i], ==, 'A' + (a->idx - 1) % 50);
    }
    g_assert(buffer_is_zero(buf + 4096, 4096));
    /* A bad fd fails cleanly. */
    g_assert_cmpint(laio_co_submit(a->s, -1, 0, &q, QEMU_AIO_READ), ==,
                    -EBADF);
    qemu_vfree(buf);
    (*a->done)++;
}

static void test_linux_aio(void)
{
    char path[] = "/tmp/test-aio-XXXXXX";
    int fd = mkstemp(path), done = 0, i;
    LinuxAioState *s = laio_init(NULL);
    LaioArg args[300];

    g_assert(s);
    g_assert_cmpint(fd, >=, 0);
    /* More requests than the kernel queue holds, to exercise requeueing. */
    for (i = 0; i < 300; i++) {
        args[i] = (LaioArg){ .s = s, .fd = fd, .idx = i, .done = &done };
        qemu_coroutine_enter(qemu_coroutine_create(co_laio, &args[i]));
    }
    AIO_WAIT_WHILE(done < 300);
    args[0] = (LaioArg){ .s = s, .fd = fd, .idx = 300, .done = &done };
    qemu_coroutine_enter(qemu_coroutine_create(co_laio_eof, &args[0]));
    AIO_WAIT_WHILE(done < 301);
    /* An idle linux-aio state leaves the loop idle. */
    while (aio_poll(ctx, false)) {
    }
    g_assert(!aio_poll(ctx, true));
    laio_cleanup(s);
    close(fd);
    unlink(path);
}

/*
 * linux-aio submission policy: a request issued outside the completion
 * handler reaches the kernel at once (before the loop runs); requests that
 * coroutines resumed by completions issue share io_submit() calls.
 */
static void coroutine_fn co_laio_chain(void *opaque)
{
    LaioArg *a = opaque;
    unsigned char *buf = qemu_blockalign(4096);
    QEMUIOVector q;
    int i;

    qemu_iovec_init_buf(&q, buf, 4096);
    for (i = 0; i < 8; i++) {
        g_assert_cmpint(laio_co_submit(a->s, a->fd, a->idx * 4096, &q,
                                       QEMU_AIO_READ), ==, 0);
        g_assert_cmpint(buf[0], ==, a->idx);
    }
    qemu_vfree(buf);
    (*a->done)++;
}

static void test_linux_aio_policy(void)
{
    char path[] = "/tmp/test-aio-XXXXXX";
    int fd = mkstemp(path), done = 0, i;
    LinuxAioState *s = laio_init(NULL);
    unsigned char data[16 * 4096];
    LaioArg args[16];
    LaioStats st;

    g_assert(s);
    g_assert_cmpint(fd, >=, 0);
    for (i = 0; i < 16; i++) {
        memset(data + i * 4096, i, 4096);
    }
    g_assert_cmpint(pwrite(fd, data, sizeof(data), 0), ==, sizeof(data));
    for (i = 0; i < 16; i++) {
        args[i] = (LaioArg){ .s = s, .fd = fd, .idx = i, .done = &done };
        qemu_coroutine_enter(qemu_coroutine_create(co_laio_chain, &args[i]));
        /* In the kernel already: the loop has not run. */
        laio_get_stats(s, &st);
        g_assert_cmpint(st.io_submit_calls, ==, i + 1);
        g_assert_cmpint(st.submitted, ==, i + 1);
    }
    AIO_WAIT_WHILE(done < 16);
    laio_get_stats(s, &st);
    g_assert_cmpint(st.submitted, ==, 16 * 8);
    /*
     * Buffered reads complete inside io_submit(), so the first completion
     * pass resumes all 16 coroutines and their next reads share calls.
     */
    g_assert_cmpint(st.io_submit_calls, <, st.submitted);
    laio_cleanup(s);
    close(fd);
    unlink(path);
}
#endif

/*
 * Virtual clock and idle handler: a simulator that only moves time when the
 * loop has nothing else to do sees timers fire in virtual-time order, with
 * no real waiting, interleaved with its own events.
 */

typedef struct SimState {
    int64_t events[4];          /* virtual times of the simulator's events */
    int next;
    GString *order;
} SimState;

static void sim_timer_cb(void *opaque)
{
    g_string_append_c(((SimState *)opaque)->order, 't');
}

static bool sim_idle(void *opaque)
{
    SimState *s = opaque;
    int64_t t = aio_first_timer_ns(ctx);

    if (s->next < (int)G_N_ELEMENTS(s->events) &&
        (t < 0 || s->events[s->next] < t)) {
        qemu_clock_set_virtual_ns(s->events[s->next++]);
        g_string_append_c(s->order, 'e');
        return true;
    }
    if (t >= 0) {
        qemu_clock_set_virtual_ns(t);
        return true;
    }
    return false;
}

static void test_virtual_clock(void)
{
    SimState s = { .order = g_string_new(NULL) };
    QEMUTimer *t1 = aio_timer_new(ctx, sim_timer_cb, &s);
    QEMUTimer *t2 = aio_timer_new(ctx, sim_timer_cb, &s);
    int64_t real_start = g_get_monotonic_time();
    int64_t base;

    qemu_clock_use_virtual(true);
    g_assert(qemu_clock_is_virtual());
    base = qemu_clock_get_ns();
    /* Frozen: the clock does not move by itself, nor backwards. */
    g_usleep(1000);
    g_assert_cmpint(qemu_clock_get_ns(), ==, base);
    qemu_clock_set_virtual_ns(base - 5);
    g_assert_cmpint(qemu_clock_get_ns(), ==, base);

    /* Timers an hour away fire at once, in order with the events. */
    timer_mod_ns(t1, base + 3600 * 1000000000LL);
    timer_mod_ns(t2, base + 10 * 1000000000LL);
    s.events[0] = base + 1000;
    s.events[1] = base + 20 * 1000000000LL;
    s.events[2] = base + 20 * 1000000000LL + 1;
    s.events[3] = base + 7200 * 1000000000LL;
    g_assert_cmpint(aio_first_timer_ns(ctx), ==, base + 10 * 1000000000LL);
    aio_set_idle_handler(ctx, sim_idle, &s);
    while (aio_poll(ctx, true)) {
    }
    aio_set_idle_handler(ctx, NULL, NULL);
    g_assert_cmpstr(s.order->str, ==, "eteete");
    g_assert_cmpint(qemu_clock_get_ns(), ==, base + 7200 * 1000000000LL);
    g_assert_cmpint(aio_first_timer_ns(ctx), ==, -1);
    g_assert_cmpint(g_get_monotonic_time() - real_start, <, 60 * 1000000);

    qemu_clock_use_virtual(false);
    g_assert(!qemu_clock_is_virtual());
    timer_free(t1);
    timer_free(t2);
    g_string_free(s.order, TRUE);
}

int main(int argc, char **argv)
{
    ctx = qemu_get_aio_context();
    g_assert(ctx == qemu_get_aio_context());
    test_idle();
    test_fd_handler();
    test_fd_write_and_add();
    test_bh();
    test_bh_from_thread();
    test_bh_hammer();
    test_timers();
    test_timer_heap();
    test_virtual_clock();
#ifdef CONFIG_LINUX_AIO
    test_linux_aio();
    test_linux_aio_policy();
#endif
    printf("PASS test-aio\n");
    return 0;
}
