/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Coroutines on mmap'd stacks (ucontext to start a stack, sigsetjmp to
 * switch), a pool of reusable coroutines, the cross-thread wake list, and
 * CoQueue / CoMutex / co_sleep built on them.
 */
#include <pthread.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "util/coroutine.h"
#include "util/aio.h"

#if defined(__SANITIZE_ADDRESS__) || defined(CONFIG_ASAN)
#include <sanitizer/common_interface_defs.h>
#define CO_ASAN 1
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define CO_VALGRIND 1
#endif
#endif

#define COROUTINE_STACK_SIZE (1 * MiB)
#define COROUTINE_POOL_MAX 64

enum {
    CO_SWITCH_ENTER = 1,
    CO_SWITCH_YIELD = 2,
    CO_SWITCH_TERMINATE = 3,
};

struct Coroutine {
    CoroutineEntry *entry;
    void *opaque;
    Coroutine *caller;          /* who entered us; non-NULL while entered */
    sigjmp_buf env;
    void *map;                  /* mmap'd area: guard page + stack */
    size_t map_size;
    void *stack;                /* usable stack bottom and size */
    size_t stack_size;
    bool scheduled;             /* on the aio_co_wake list */
    Coroutine *next;            /* pool or wake-list link */
#ifdef CO_ASAN
    void *fake_stack;
#endif
#ifdef CO_VALGRIND
    unsigned valgrind_id;
#endif
};

/* The thread's own stack, standing in as "caller" outside coroutines. */
static __thread Coroutine leader;
static __thread Coroutine *current;
static __thread Coroutine *pool;
static __thread unsigned pool_size;
/* Where a new stack's trampoline jumps back to after its first setjmp. */
static __thread sigjmp_buf *init_env;

static inline Coroutine *co_current(void)
{
    return current ? current : &leader;
}

/* ---- sanitizer hooks around every stack switch ---- */

static inline void co_start_switch(Coroutine *from, Coroutine *to,
                                   bool from_dies)
{
#ifdef CO_ASAN
    /* A dying coroutine passes NULL so ASan frees its fake stack. */
    __sanitizer_start_switch_fiber(from_dies ? NULL : &from->fake_stack,
                                   to->stack, to->stack_size);
#endif
}

static inline void co_finish_switch(Coroutine *self)
{
#ifdef CO_ASAN
    __sanitizer_finish_switch_fiber(self->fake_stack, NULL, NULL);
#endif
}

/*
 * Save from's context and resume to. Returns the action of whoever switches
 * back to from. The other side sets `current` before switching.
 */
static int co_switch(Coroutine *from, Coroutine *to, int action)
{
    int ret = sigsetjmp(from->env, 0);

    if (ret == 0) {
        co_start_switch(from, to, action == CO_SWITCH_TERMINATE);
        siglongjmp(to->env, action);
    }
    co_finish_switch(from);
    return ret;
}

/* First code on a new stack; loops forever so pooled stacks are reused. */
static void coroutine_trampoline(int lo, int hi)
{
    /* volatile: must survive the sigsetjmp below; `current` is the creator. */
    Coroutine *volatile self = (Coroutine *)
        (((uintptr_t)(unsigned)hi << 32) | (uintptr_t)(unsigned)lo);

#ifdef CO_ASAN
    {
        const void *bottom;
        size_t size;

        /* The only way to learn the thread stack's bounds. */
        __sanitizer_finish_switch_fiber(NULL, &bottom, &size);
        if (co_current() == &leader) {
            leader.stack = (void *)bottom;
            leader.stack_size = size;
        }
    }
#endif
    if (!sigsetjmp(self->env, 0)) {
        co_start_switch(self, co_current(), false);
        siglongjmp(*init_env, 1);
    }
    co_finish_switch(self);

    for (;;) {
        Coroutine *to;

        self->entry(self->opaque);
        to = self->caller;
        self->caller = NULL;
        current = (to == &leader) ? NULL : to;
        co_switch(self, to, CO_SWITCH_TERMINATE);
    }
}

static Coroutine *coroutine_new_stack(void)
{
    Coroutine *co = g_new0(Coroutine, 1);
    long page = sysconf(_SC_PAGESIZE);
    Coroutine *self = co_current();
    sigjmp_buf old_env;
    ucontext_t uc;
    uintptr_t p = (uintptr_t)co;

#ifdef CO_ASAN
    /*
     * LeakSanitizer scans heap blocks but not anonymous mappings: a stack
     * from the heap keeps pointers held by suspended coroutines visible.
     */
    co->map_size = COROUTINE_STACK_SIZE;
    co->map = qemu_memalign(page, co->map_size);
    co->stack = co->map;
#else
    co->map_size = COROUTINE_STACK_SIZE + page;
    co->map = mmap(NULL, co->map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (co->map == MAP_FAILED) {
        perror("coroutine stack mmap");
        abort();
    }
    /* Guard page: a stack overflow faults instead of corrupting memory. */
    mprotect(co->map, page, PROT_NONE);
    co->stack = (char *)co->map + page;
#endif
    co->stack_size = COROUTINE_STACK_SIZE;
#ifdef CO_VALGRIND
    co->valgrind_id = VALGRIND_STACK_REGISTER(co->stack,
                                              (char *)co->stack +
                                              co->stack_size);
#endif

    if (getcontext(&uc) < 0) {
        perror("getcontext");
        abort();
    }
    uc.uc_link = NULL;
    uc.uc_stack.ss_sp = co->stack;
    uc.uc_stack.ss_size = co->stack_size;
    uc.uc_stack.ss_flags = 0;
    makecontext(&uc, (void (*)(void))coroutine_trampoline, 2,
                (int)(uint32_t)p, (int)(uint32_t)(p >> 32));

    /*
     * One setcontext per stack; every later switch is a longjmp. Our side is
     * saved by sigsetjmp, so the ucontext of the caller is never needed.
     */
    init_env = &old_env;
    if (!sigsetjmp(old_env, 0)) {
        co_start_switch(self, co, false);
        setcontext(&uc);
        abort();
    }
    co_finish_switch(self);
    return co;
}

static void coroutine_free_stack(Coroutine *co)
{
#ifdef CO_VALGRIND
    VALGRIND_STACK_DEREGISTER(co->valgrind_id);
#endif
#ifdef CO_ASAN
    qemu_vfree(co->map);
#else
    munmap(co->map, co->map_size);
#endif
    g_free(co);
}

/* ---- create / enter / yield ---- */

static void co_wake_init(void);

Coroutine *qemu_coroutine_create(CoroutineEntry *entry, void *opaque)
{
    Coroutine *co = pool;

    co_wake_init();
    if (co) {
        pool = co->next;
        pool_size--;
    } else {
        co = coroutine_new_stack();
    }
    co->next = NULL;
    co->entry = entry;
    co->opaque = opaque;
    co->caller = NULL;
    co->scheduled = false;
    return co;
}

static void coroutine_release(Coroutine *co)
{
    if (pool_size < COROUTINE_POOL_MAX) {
        co->next = pool;
        pool = co;
        pool_size++;
    } else {
        coroutine_free_stack(co);
    }
}

void qemu_coroutine_enter(Coroutine *co)
{
    Coroutine *self = co_current();

    if (co->caller || co == self) {
        fprintf(stderr, "qemu_coroutine_enter: coroutine is already "
                "running\n");
        abort();
    }
    co->caller = self;
    current = co;
    if (co_switch(self, co, CO_SWITCH_ENTER) == CO_SWITCH_TERMINATE) {
        coroutine_release(co);
    }
}

void qemu_coroutine_enter_if_inactive(Coroutine *co)
{
    if (!qemu_coroutine_entered(co)) {
        qemu_coroutine_enter(co);
    }
}

void coroutine_fn qemu_coroutine_yield(void)
{
    Coroutine *self = current;
    Coroutine *to;

    assert(self && self->caller);
    to = self->caller;
    self->caller = NULL;
    current = (to == &leader) ? NULL : to;
    co_switch(self, to, CO_SWITCH_YIELD);
}

Coroutine *qemu_coroutine_self(void)
{
    return current;
}

bool qemu_in_coroutine(void)
{
    return current != NULL;
}

bool qemu_coroutine_entered(Coroutine *co)
{
    return co->caller != NULL;
}

unsigned qemu_coroutine_pool_size(void)
{
    return pool_size;
}

/* ---- aio_co_wake: resume from the loop, callable from any thread ---- */

/*
 * Woken coroutines go on a push-only lock-free stack; the bottom half takes
 * the whole stack with one exchange and enters it oldest first. Only the
 * push that finds the stack empty schedules the bottom half, so a burst of
 * completions costs one schedule (and at most one eventfd write).
 */
static Coroutine *wake_stack;
static QEMUBH *wake_bh;
static pthread_once_t wake_once = PTHREAD_ONCE_INIT;

static void co_wake_bh(void *opaque)
{
    Coroutine *co = __atomic_exchange_n(&wake_stack, NULL, __ATOMIC_ACQ_REL);
    Coroutine *fifo = NULL;

    /* The stack is newest first: reverse it to wake in order. */
    while (co) {
        Coroutine *next = co->next;
        co->next = fifo;
        fifo = co;
        co = next;
    }
    while (fifo) {
        Coroutine *next = fifo->next;

        fifo->next = NULL;
        __atomic_store_n(&fifo->scheduled, false, __ATOMIC_RELEASE);
        qemu_coroutine_enter(fifo);
        fifo = next;
    }
}

static void co_wake_create_bh(void)
{
    wake_bh = aio_bh_new(qemu_get_aio_context(), co_wake_bh, NULL);
}

/* Created with the first coroutine, in the loop thread. */
static void co_wake_init(void)
{
    pthread_once(&wake_once, co_wake_create_bh);
}

void aio_co_wake(Coroutine *co)
{
    Coroutine *old;

    co_wake_init();
    if (__atomic_exchange_n(&co->scheduled, true, __ATOMIC_ACQ_REL)) {
        fprintf(stderr, "aio_co_wake: coroutine was already scheduled\n");
        abort();
    }
    old = __atomic_load_n(&wake_stack, __ATOMIC_ACQUIRE);
    do {
        co->next = old;
    } while (!__atomic_compare_exchange_n(&wake_stack, &old, co, true,
                                          __ATOMIC_RELEASE,
                                          __ATOMIC_ACQUIRE));
    /* co may already be running again: do not touch it from here on. */
    if (!old) {
        qemu_bh_schedule(wake_bh);
    }
}

void aio_co_schedule(Coroutine *co)
{
    aio_co_wake(co);
}

/* ---- CoQueue ---- */

struct CoWaiter {
    Coroutine *co;
    CoWaiter *next;
};

void qemu_co_queue_init(CoQueue *queue)
{
    queue->head = queue->tail = NULL;
}

static void co_queue_push(CoQueue *queue, CoWaiter *w)
{
    w->next = NULL;
    if (queue->tail) {
        queue->tail->next = w;
    } else {
        queue->head = w;
    }
    queue->tail = w;
}

static Coroutine *co_queue_pop(CoQueue *queue)
{
    CoWaiter *w = queue->head;

    if (!w) {
        return NULL;
    }
    queue->head = w->next;
    if (!queue->head) {
        queue->tail = NULL;
    }
    return w->co;
}

void coroutine_fn qemu_co_queue_wait(CoQueue *queue, CoMutex *mutex)
{
    /* Lives on our stack: valid until we are popped and resumed. */
    CoWaiter w = { .co = qemu_coroutine_self() };

    assert(w.co);
    co_queue_push(queue, &w);
    if (mutex) {
        qemu_co_mutex_unlock(mutex);
    }
    qemu_coroutine_yield();
    if (mutex) {
        qemu_co_mutex_lock(mutex);
    }
}

bool qemu_co_queue_next(CoQueue *queue)
{
    Coroutine *co = co_queue_pop(queue);

    if (!co) {
        return false;
    }
    aio_co_schedule(co);
    return true;
}

void qemu_co_queue_restart_all(CoQueue *queue)
{
    while (qemu_co_queue_next(queue)) {
    }
}

bool qemu_co_queue_empty(CoQueue *queue)
{
    return queue->head == NULL;
}

/* ---- CoMutex: FIFO, ownership handed directly to the next waiter ---- */

void qemu_co_mutex_init(CoMutex *mutex)
{
    memset(mutex, 0, sizeof(*mutex));
    qemu_co_queue_init(&mutex->queue);
}

void coroutine_fn qemu_co_mutex_lock(CoMutex *mutex)
{
    Coroutine *self = qemu_coroutine_self();
    CoWaiter w = { .co = self };

    assert(self);
    if (!mutex->locked) {
        mutex->locked = true;
        mutex->holder = self;
        return;
    }
    assert(mutex->holder != self);
    mutex->waiters++;
    co_queue_push(&mutex->queue, &w);
    qemu_coroutine_yield();
    /* The unlocker made us the holder before waking us. */
    assert(mutex->locked && mutex->holder == self);
}

void coroutine_fn qemu_co_mutex_unlock(CoMutex *mutex)
{
    Coroutine *next;

    assert(mutex->locked);
    assert(mutex->holder == qemu_coroutine_self());
    next = co_queue_pop(&mutex->queue);
    if (next) {
        mutex->waiters--;
        mutex->holder = next;
        aio_co_schedule(next);
    } else {
        mutex->locked = false;
        mutex->holder = NULL;
    }
}

void qemu_co_mutex_assert_locked(CoMutex *mutex)
{
    assert(mutex->locked && mutex->holder == qemu_coroutine_self());
}

/* ---- sleep ---- */

static void co_sleep_cb(void *opaque)
{
    aio_co_wake(opaque);
}

void coroutine_fn qemu_co_sleep_ns(int64_t ns)
{
    AioContext *ctx = qemu_get_aio_context();
    QEMUTimer *t = aio_timer_new(ctx, co_sleep_cb, qemu_coroutine_self());

    assert(qemu_in_coroutine());
    timer_mod_ns(t, qemu_clock_get_ns() + ns);
    qemu_coroutine_yield();
    timer_free(t);
}
