/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The socket layer (util/socket.h): cancellable fd waits with deadlines,
 * resolution in the thread pool, non-blocking connect, listeners,
 * generation-tagged connections with buffered receive, and the reconnecting
 * client with back-off and give-up.
 */
#include "util/socket.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/cutils.h"
#include "util/iov.h"
#include "util/thread-pool.h"
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>

#define SOCK_IOV_BATCH      64
#define SOCK_RBUF_SIZE      (64 * 1024)
/* Reads at least this big go straight into the caller's buffers. */
#define SOCK_DIRECT_MIN     (16 * 1024)
#define SOCK_BACKOFF_MIN_NS (50 * 1000 * 1000LL)
#define SOCK_BACKOFF_MAX_NS (2000 * 1000 * 1000LL)

/* ------------------------------------------------------------------ */
/* Addresses                                                          */

void sock_addr_init_tcp(SockAddr *addr, const char *host, int port)
{
    memset(addr, 0, sizeof(*addr));
    addr->type = SOCK_ADDR_TCP;
    addr->host = g_strdup(host);
    addr->port = port;
}

void sock_addr_init_unix(SockAddr *addr, const char *path)
{
    memset(addr, 0, sizeof(*addr));
    addr->type = SOCK_ADDR_UNIX;
    addr->path = g_strdup(path);
}

void sock_addr_copy(SockAddr *dst, const SockAddr *src)
{
    *dst = *src;
    dst->host = g_strdup(src->host);
    dst->path = g_strdup(src->path);
}

void sock_addr_clear(SockAddr *addr)
{
    g_free(addr->host);
    g_free(addr->path);
    addr->host = addr->path = NULL;
}

char *sock_addr_describe(const SockAddr *addr)
{
    if (addr->type == SOCK_ADDR_UNIX) {
        return g_strdup_printf("unix:%s", addr->path);
    }
    if (strchr(addr->host, ':')) {
        return g_strdup_printf("[%s]:%d", addr->host, addr->port);
    }
    return g_strdup_printf("%s:%d", addr->host, addr->port);
}

/* ------------------------------------------------------------------ */
/* Waiting with a deadline and a cancel token                         */

/*
 * One coroutine waiting for something. Whoever ends the wait sets result
 * (first one wins) and enters the coroutine; the wait's timer and cancel
 * registration are removed by the waiter itself.
 */
typedef struct SockWait {
    Coroutine *co;
    bool done;
    int result;
    QEMUTimer *timer;
    SockCancel *cancel;
} SockWait;

static void sock_wait_finish(SockWait *w, int result)
{
    if (w->done) {
        return;
    }
    w->done = true;
    w->result = result;
    /*
     * From the event loop (fd handlers, timers) the waiter runs at once;
     * from a coroutine it is only scheduled, so that the caller's state
     * (e.g. a connection being aborted) cannot change under its feet.
     */
    if (qemu_in_coroutine()) {
        aio_co_wake(w->co);
    } else {
        qemu_coroutine_enter_if_inactive(w->co);
    }
}

static void sock_wait_timer_cb(void *opaque)
{
    sock_wait_finish(opaque, -ETIMEDOUT);
}

void sock_cancel(SockCancel *cancel)
{
    cancel->cancelled = true;
    while (cancel->waiters) {
        SockWait *w = cancel->waiters->data;
        cancel->waiters = g_slist_delete_link(cancel->waiters,
                                              cancel->waiters);
        w->cancel = NULL;
        sock_wait_finish(w, -ECANCELED);
    }
}

/* Prepare w; returns -ETIMEDOUT / -ECANCELED if the wait is over already. */
static int sock_wait_begin(SockWait *w, int64_t deadline, SockCancel *cancel)
{
    memset(w, 0, sizeof(*w));
    w->co = qemu_coroutine_self();
    if (cancel && cancel->cancelled) {
        return -ECANCELED;
    }
    if (deadline != SOCK_NO_DEADLINE) {
        if (deadline <= qemu_clock_get_ns()) {
            return -ETIMEDOUT;
        }
        w->timer = aio_timer_new(qemu_get_aio_context(), sock_wait_timer_cb,
                                 w);
        timer_mod_ns(w->timer, deadline);
    }
    if (cancel) {
        w->cancel = cancel;
        cancel->waiters = g_slist_prepend(cancel->waiters, w);
    }
    return 0;
}

/* Yield until someone finishes w; returns its result. */
static int coroutine_fn sock_wait_yield(SockWait *w)
{
    while (!w->done) {
        qemu_coroutine_yield();
    }
    if (w->timer) {
        timer_free(w->timer);
        w->timer = NULL;
    }
    if (w->cancel) {
        w->cancel->waiters = g_slist_remove(w->cancel->waiters, w);
        w->cancel = NULL;
    }
    return w->result;
}

static void sock_fd_ready_cb(void *opaque)
{
    sock_wait_finish(opaque, 0);
}

/* Wait until fd is writable (write) or readable. */
static int coroutine_fn sock_co_wait_fd(int fd, bool write, int64_t deadline,
                                        SockCancel *cancel)
{
    AioContext *ctx = qemu_get_aio_context();
    SockWait w;
    int ret = sock_wait_begin(&w, deadline, cancel);

    if (ret < 0) {
        return ret;
    }
    aio_set_fd_handler(ctx, fd, write ? NULL : sock_fd_ready_cb,
                       write ? sock_fd_ready_cb : NULL, &w);
    ret = sock_wait_yield(&w);
    aio_set_fd_handler(ctx, fd, NULL, NULL, NULL);
    return ret;
}

/* Cancellable, deadline-bounded sleep; 0 when the time has passed. */
static int coroutine_fn sock_co_sleep(int64_t until, SockCancel *cancel)
{
    SockWait w;
    int ret = sock_wait_begin(&w, until, cancel);

    if (ret < 0) {
        return ret == -ETIMEDOUT ? 0 : ret;
    }
    ret = sock_wait_yield(&w);
    return ret == -ETIMEDOUT ? 0 : ret;
}

/* ------------------------------------------------------------------ */
/* Resolution                                                         */

/* A getaddrinfo() job; the worker may outlive a waiter that gave up. */
typedef struct SockResolveJob {
    int refcnt;
    char *host;
    char port[16];
    struct addrinfo *res;
    int gai;
    bool finished;
    SockWait *waiter;
} SockResolveJob;

static void sock_resolve_job_unref(SockResolveJob *job)
{
    if (--job->refcnt == 0) {
        if (job->res) {
            freeaddrinfo(job->res);
        }
        g_free(job->host);
        g_free(job);
    }
}

static int sock_resolve_worker(void *opaque)
{
    SockResolveJob *job = opaque;
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_ADDRCONFIG,
    };

    return getaddrinfo(job->host, job->port, &hints, &job->res);
}

static void coroutine_fn sock_resolve_entry(void *opaque)
{
    SockResolveJob *job = opaque;

    job->gai = thread_pool_submit_co(sock_resolve_worker, job);
    job->finished = true;
    if (job->waiter) {
        sock_wait_finish(job->waiter, 0);
    }
    sock_resolve_job_unref(job);
}

/*
 * Resolve host:port. Numeric addresses never block and are resolved here;
 * names go to the thread pool while this coroutine waits (deadline,
 * cancel). The result is freeaddrinfo()'d by the caller.
 */
static int coroutine_fn sock_co_resolve(const SockAddr *addr, int64_t deadline,
                                        SockCancel *cancel,
                                        struct addrinfo **res, Error **errp)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
    };
    char port[16];
    SockResolveJob *job;
    SockWait w;
    int ret;

    snprintf(port, sizeof(port), "%d", addr->port);
    if (getaddrinfo(addr->host, port, &hints, res) == 0) {
        return 0;
    }
    job = g_new0(SockResolveJob, 1);
    job->refcnt = 2;            /* this waiter and the worker coroutine */
    job->host = g_strdup(addr->host);
    pstrcpy(job->port, sizeof(job->port), port);
    ret = sock_wait_begin(&w, deadline, cancel);
    if (ret == 0) {
        job->waiter = &w;
        qemu_coroutine_enter(qemu_coroutine_create(sock_resolve_entry, job));
        ret = sock_wait_yield(&w);
        job->waiter = NULL;
    } else {
        job->refcnt--;          /* the worker never starts */
    }
    if (ret < 0) {
        error_setg(errp, "cannot resolve '%s': %s", addr->host,
                   ret == -ETIMEDOUT ? "timed out" : "cancelled");
    } else if (job->gai) {
        error_setg(errp, "cannot resolve '%s': %s", addr->host,
                   gai_strerror(job->gai));
        ret = -EHOSTUNREACH;
    } else {
        *res = job->res;
        job->res = NULL;
    }
    sock_resolve_job_unref(job);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Connect                                                            */

static void sock_set_tcp_options(int fd)
{
    int one = 1, idle = 10, intvl = 5, cnt = 3;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* A peer host that vanished is noticed even on an idle connection. */
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Non-blocking connect of one address; fd or -errno. */
static int coroutine_fn sock_co_connect_one(const struct sockaddr *sa,
                                            socklen_t len, int family,
                                            int64_t deadline,
                                            SockCancel *cancel)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int ret, err;
    socklen_t elen = sizeof(err);

    if (fd < 0) {
        return -errno;
    }
    do {
        ret = connect(fd, sa, len);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0 && errno == EINPROGRESS) {
        ret = sock_co_wait_fd(fd, true, deadline, cancel);
        if (ret == 0) {
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) {
                err = errno;
            }
            ret = err ? -err : 0;
        }
    } else if (ret < 0) {
        ret = -errno;
    }
    if (ret < 0) {
        close(fd);
        return ret;
    }
    return fd;
}

int coroutine_fn sock_co_connect(const SockAddr *addr, int64_t deadline,
                                 SockCancel *cancel, Error **errp)
{
    struct addrinfo *res = NULL, *ai;
    int fd = -ECONNREFUSED;

    if (addr->type == SOCK_ADDR_UNIX) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };

        if (strlen(addr->path) >= sizeof(sun.sun_path)) {
            error_setg(errp, "socket path '%s' is too long", addr->path);
            return -ENAMETOOLONG;
        }
        pstrcpy(sun.sun_path, sizeof(sun.sun_path), addr->path);
        fd = sock_co_connect_one((struct sockaddr *)&sun, sizeof(sun),
                                 AF_UNIX, deadline, cancel);
    } else {
        int ret = sock_co_resolve(addr, deadline, cancel, &res, errp);

        if (ret < 0) {
            return ret;
        }
        for (ai = res; ai; ai = ai->ai_next) {
            fd = sock_co_connect_one(ai->ai_addr, ai->ai_addrlen,
                                     ai->ai_family, deadline, cancel);
            if (fd >= 0 || fd == -ETIMEDOUT || fd == -ECANCELED) {
                break;
            }
        }
        freeaddrinfo(res);
        if (fd >= 0) {
            sock_set_tcp_options(fd);
        }
    }
    if (fd < 0) {
        /* QEMU 7.2's wording: the path, or host:port without brackets */
        g_autofree char *name = addr->type == SOCK_ADDR_UNIX ?
            g_strdup(addr->path) :
            g_strdup_printf("%s:%d", addr->host, addr->port);

        if (fd == -ETIMEDOUT) {
            error_setg(errp, "Failed to connect to '%s': timed out", name);
        } else {
            error_setg_errno(errp, -fd, "Failed to connect to '%s'", name);
        }
    }
    return fd;
}

/* ------------------------------------------------------------------ */
/* Listen                                                             */

struct SockListener {
    int fd;
    int port;
    char *unlink_path;
    SockAcceptFunc *cb;
    void *opaque;
};

static void sock_listener_accept(void *opaque)
{
    SockListener *l = opaque;

    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return;     /* EAGAIN, or EMFILE & co: try at the next event */
        }
        if (!l->unlink_path) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        l->cb(l->opaque, fd);
    }
}

static int sock_listen_unix(SockListener *l, const char *path, Error **errp)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct stat st;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        error_setg(errp, "socket path '%s' is too long", path);
        return -ENAMETOOLONG;
    }
    pstrcpy(sun.sun_path, sizeof(sun.sun_path), path);
    /* Only a stale socket is replaced, never another kind of file. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
    l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        error_setg_errno(errp, errno, "cannot bind unix:%s", path);
        return -errno;
    }
    l->unlink_path = g_strdup(path);
    return 0;
}

static int sock_listen_tcp(SockListener *l, const SockAddr *addr,
                           Error **errp)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE,
    };
    struct addrinfo *res = NULL, *ai;
    char port[16];
    int gai, err = EADDRNOTAVAIL, one = 1;
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } bound;
    socklen_t blen = sizeof(bound);

    snprintf(port, sizeof(port), "%d", addr->port);
    /* Listening happens at start-up: resolving inline is acceptable. */
    gai = getaddrinfo(addr->host, port, &hints, &res);
    if (gai) {
        error_setg(errp, "cannot resolve '%s': %s", addr->host,
                   gai_strerror(gai));
        return -EHOSTUNREACH;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        l->fd = socket(ai->ai_family,
                       SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (l->fd < 0) {
            err = errno;
            continue;
        }
        setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(l->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            err = 0;
            break;
        }
        err = errno;
        close(l->fd);
        l->fd = -1;
    }
    freeaddrinfo(res);
    if (err) {
        g_autofree char *where = sock_addr_describe(addr);
        error_setg_errno(errp, err, "cannot bind %s", where);
        return -err;
    }
    if (getsockname(l->fd, &bound.sa, &blen) == 0) {
        l->port = ntohs(bound.sa.sa_family == AF_INET6 ? bound.in6.sin6_port
                                                       : bound.in.sin_port);
    }
    return 0;
}

SockListener *sock_listen(const SockAddr *addr, SockAcceptFunc *accept_cb,
                          void *opaque, Error **errp)
{
    SockListener *l = g_new0(SockListener, 1);
    int ret;

    l->fd = -1;
    l->cb = accept_cb;
    l->opaque = opaque;
    if (addr->type == SOCK_ADDR_UNIX) {
        ret = sock_listen_unix(l, addr->path, errp);
    } else {
        ret = sock_listen_tcp(l, addr, errp);
    }
    if (ret == 0 && listen(l->fd, 128) < 0) {
        error_setg_errno(errp, errno, "listen");
        ret = -1;
    }
    if (ret < 0) {
        sock_listener_free(l);
        return NULL;
    }
    aio_set_fd_handler(qemu_get_aio_context(), l->fd, sock_listener_accept,
                       NULL, l);
    return l;
}

int sock_listener_port(const SockListener *l)
{
    return l->port;
}

void sock_listener_free(SockListener *l)
{
    if (!l) {
        return;
    }
    if (l->fd >= 0) {
        aio_set_fd_handler(qemu_get_aio_context(), l->fd, NULL, NULL, NULL);
        close(l->fd);
    }
    if (l->unlink_path) {
        unlink(l->unlink_path);
        g_free(l->unlink_path);
    }
    g_free(l);
}

/* ------------------------------------------------------------------ */
/* Connections                                                        */

enum { SOCK_RX, SOCK_TX };

struct SockConn {
    int refcnt;
    int fd;                     /* -1 once aborted */
    uint64_t gen;
    int err[2];                 /* per direction: 0 usable, else -errno */
    CoMutex send_lock;
    SockWait *wait[2];          /* the coroutine waiting per direction */
    int64_t recv_deadline;
    QEMUTimer *recv_timer;      /* at recv_deadline while a receiver waits */
    bool want[2];               /* fd handler registered per direction */
    void *opaque;
    /* receive buffer: bytes [rpos, rlen) of rbuf are unread */
    uint8_t *rbuf;
    size_t rpos, rlen;
    /* The last read returned less than asked: the socket is very likely
     * empty, so the next receive waits for readiness without trying
     * (saves a read that would fail with EAGAIN). */
    bool drained;
    const SockTransport *tp;    /* TLS, or NULL: the fd directly */
    void *tp_opaque;
    bool tp_want_write;         /* the last receive waits for writability */
};

static uint64_t sock_next_gen = 1;

SockConn *sock_conn_new(int fd)
{
    SockConn *c = g_new0(SockConn, 1);

    c->refcnt = 1;
    c->fd = fd;
    c->gen = sock_next_gen++;
    c->recv_deadline = SOCK_NO_DEADLINE;
    qemu_co_mutex_init(&c->send_lock);
    c->rbuf = g_malloc(SOCK_RBUF_SIZE);
    return c;
}

SockConn *sock_conn_ref(SockConn *c)
{
    c->refcnt++;
    return c;
}

static void sock_conn_close_fd(SockConn *c, bool reset)
{
    if (c->fd < 0) {
        return;
    }
    if (c->want[SOCK_RX] || c->want[SOCK_TX]) {
        aio_set_fd_handler(qemu_get_aio_context(), c->fd, NULL, NULL, NULL);
        c->want[SOCK_RX] = c->want[SOCK_TX] = false;
    }
    if (reset) {
        struct linger lin = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
    }
    close(c->fd);
    c->fd = -1;
}

void sock_conn_unref(SockConn *c)
{
    if (!c || --c->refcnt > 0) {
        return;
    }
    assert(!c->wait[SOCK_RX] && !c->wait[SOCK_TX]);
    sock_conn_close_fd(c, false);
    if (c->tp) {
        c->tp->free(c->tp_opaque);
    }
    if (c->recv_timer) {
        timer_free(c->recv_timer);
    }
    g_free(c->rbuf);
    g_free(c);
}

uint64_t sock_conn_gen(const SockConn *c)
{
    return c->gen;
}

void sock_conn_set_opaque(SockConn *c, void *opaque)
{
    c->opaque = opaque;
}

void *sock_conn_get_opaque(const SockConn *c)
{
    return c->opaque;
}

int sock_conn_send_error(const SockConn *c)
{
    return c->err[SOCK_TX];
}

int sock_conn_recv_error(const SockConn *c)
{
    return c->err[SOCK_RX];
}

static void sock_conn_rx_ready(void *opaque);
static void sock_conn_tx_ready(void *opaque);

/* Register the fd handler for exactly the directions someone waits on. */
static void sock_conn_update_handler(SockConn *c)
{
    bool r = c->wait[SOCK_RX] != NULL, w = c->wait[SOCK_TX] != NULL;

    if (c->fd < 0 || (r == c->want[SOCK_RX] && w == c->want[SOCK_TX])) {
        return;
    }
    c->want[SOCK_RX] = r;
    c->want[SOCK_TX] = w;
    aio_set_fd_handler(qemu_get_aio_context(), c->fd,
                       r ? sock_conn_rx_ready : NULL,
                       w ? sock_conn_tx_ready : NULL, c);
}

static void sock_conn_wake(SockConn *c, int dir, int result)
{
    SockWait *w = c->wait[dir];

    if (w) {
        sock_wait_finish(w, result);
    }
}

static void sock_conn_rx_ready(void *opaque)
{
    sock_conn_wake(opaque, SOCK_RX, 0);
}

static void sock_conn_tx_ready(void *opaque)
{
    sock_conn_wake(opaque, SOCK_TX, 0);
}

static void sock_conn_recv_timer_cb(void *opaque)
{
    SockConn *c = opaque;

    if (qemu_clock_get_ns() >= c->recv_deadline) {
        sock_conn_wake(c, SOCK_RX, -ETIMEDOUT);
    } else if (c->recv_deadline != SOCK_NO_DEADLINE) {
        timer_mod_ns(c->recv_timer, c->recv_deadline);  /* moved later */
    }
}

void sock_conn_set_recv_deadline(SockConn *c, int64_t deadline)
{
    c->recv_deadline = deadline;
    if (!c->wait[SOCK_RX]) {
        return;
    }
    if (deadline == SOCK_NO_DEADLINE) {
        if (c->recv_timer) {
            timer_del(c->recv_timer);
        }
        return;
    }
    if (!c->recv_timer) {
        c->recv_timer = aio_timer_new(qemu_get_aio_context(),
                                      sock_conn_recv_timer_cb, c);
    }
    timer_mod_ns(c->recv_timer, deadline);
}

/* Wait for dir to become ready; the receive side uses recv_deadline. */
static int coroutine_fn sock_conn_wait(SockConn *c, int dir, int64_t deadline)
{
    SockWait w;
    int ret;

    assert(!c->wait[dir]);
    ret = sock_wait_begin(&w, dir == SOCK_TX ? deadline : SOCK_NO_DEADLINE,
                          NULL);
    if (ret < 0) {
        return ret;
    }
    if (dir == SOCK_RX) {
        if (c->recv_deadline <= qemu_clock_get_ns()) {
            return -ETIMEDOUT;
        }
        if (c->recv_deadline != SOCK_NO_DEADLINE) {
            if (!c->recv_timer) {
                c->recv_timer = aio_timer_new(qemu_get_aio_context(),
                                              sock_conn_recv_timer_cb, c);
            }
            timer_mod_ns(c->recv_timer, c->recv_deadline);
        }
    }
    c->wait[dir] = &w;
    sock_conn_update_handler(c);
    ret = sock_wait_yield(&w);
    c->wait[dir] = NULL;
    if (dir == SOCK_RX && c->recv_timer) {
        timer_del(c->recv_timer);
    }
    sock_conn_update_handler(c);
    return c->err[dir] ? c->err[dir] : ret;
}

static void sock_conn_fail(SockConn *c, int dir, int err)
{
    if (!c->err[dir]) {
        c->err[dir] = err;
    }
    sock_conn_wake(c, dir, err);
}

void sock_conn_shutdown_send(SockConn *c)
{
    sock_conn_ref(c);           /* a woken waiter may drop its reference */
    if (c->fd >= 0 && !c->err[SOCK_TX]) {
        if (c->tp && c->tp->shutdown) {
            c->tp->shutdown(c->tp_opaque);
        }
        shutdown(c->fd, SHUT_WR);
    }
    sock_conn_fail(c, SOCK_TX, -ESHUTDOWN);
    sock_conn_unref(c);
}

void sock_conn_abort(SockConn *c, int err)
{
    assert(err < 0);
    sock_conn_ref(c);
    sock_conn_close_fd(c, true);
    sock_conn_fail(c, SOCK_TX, err);
    sock_conn_fail(c, SOCK_RX, err);
    sock_conn_unref(c);
}

int sock_conn_fd(const SockConn *c)
{
    return c->fd;
}

size_t sock_conn_buffered(const SockConn *c)
{
    return c->rlen - c->rpos;
}

int sock_conn_set_transport(SockConn *c, const SockTransport *t,
                            void *opaque)
{
    assert(!c->tp);
    if (sock_conn_buffered(c)) {
        return -EPROTO;
    }
    c->tp = t;
    c->tp_opaque = opaque;
    c->drained = false;
    return 0;
}

int coroutine_fn sock_conn_co_wait_io(SockConn *c, bool write,
                                      int64_t deadline)
{
    int64_t saved = c->recv_deadline;
    int ret;

    if (c->fd < 0) {
        return c->err[SOCK_RX] ? c->err[SOCK_RX] : -EBADF;
    }
    if (!write) {
        c->recv_deadline = MIN(saved, deadline);
    }
    ret = sock_conn_wait(c, write ? SOCK_TX : SOCK_RX, deadline);
    if (!write) {
        c->recv_deadline = saved;
    }
    return ret;
}

/* Copy at most max bytes of src (from skip) into dst; returns the count. */
static int sock_iov_slice(struct iovec *dst, const struct iovec *src,
                          int cnt, size_t skip, size_t max)
{
    int n = 0;

    for (int i = 0; i < cnt && n < SOCK_IOV_BATCH && max; i++) {
        size_t len;

        if (skip >= src[i].iov_len) {
            skip -= src[i].iov_len;
            continue;
        }
        len = MIN(src[i].iov_len - skip, max);
        dst[n].iov_base = (uint8_t *)src[i].iov_base + skip;
        dst[n].iov_len = len;
        max -= len;
        skip = 0;
        n++;
    }
    return n;
}

/*
 * A transport that would block in the other direction (rare: a TLS key
 * update in the middle of a receive) is polled shortly instead of taking
 * the other direction's wait slot.
 */
static int coroutine_fn sock_conn_wait_other(SockConn *c, int64_t deadline)
{
    int64_t until = qemu_clock_get_ns() + 1000000;

    if (deadline != SOCK_NO_DEADLINE && deadline <= qemu_clock_get_ns()) {
        return -ETIMEDOUT;
    }
    qemu_co_sleep_ns(MIN(until, deadline) - qemu_clock_get_ns());
    return 0;
}

/* Receive through the transport into the buffer (fill) or directly. */
static ssize_t sock_conn_tp_recv(SockConn *c, void *buf, size_t len,
                                 bool fill)
{
    bool want_write = false;
    ssize_t n = c->tp->recv(c->tp_opaque, buf, len, &want_write);

    if (n > 0) {
        if (fill) {
            c->rlen += n;
        }
        /* Whatever the transport holds is readable without the fd. */
        c->drained = (size_t)n < len && !c->tp->pending(c->tp_opaque);
        return n;
    }
    c->tp_want_write = n == 0 && want_write;
    return n;
}

int coroutine_fn sock_conn_co_send(SockConn *c, const struct iovec *iov,
                                   int niov, int64_t deadline, size_t *sent)
{
    size_t total = iov_size(iov, niov), done = 0;
    int ret = 0;

    qemu_co_mutex_lock(&c->send_lock);
    while (done < total) {
        struct iovec batch[SOCK_IOV_BATCH];
        struct msghdr msg = { .msg_iov = batch };
        ssize_t w;

        if (c->err[SOCK_TX]) {
            ret = c->err[SOCK_TX];
            break;
        }
        msg.msg_iovlen = sock_iov_slice(batch, iov, niov, done, total - done);
        if (c->tp) {
            bool want_read = false;

            w = c->tp->send(c->tp_opaque, batch, msg.msg_iovlen, &want_read);
            if (w > 0) {
                done += w;
                continue;
            }
            if (w < 0) {
                ret = w;
                sock_conn_fail(c, SOCK_TX, ret);
                break;
            }
            if (want_read) {
                ret = sock_conn_wait_other(c, deadline);
                if (ret < 0) {
                    break;
                }
                continue;
            }
            ret = sock_conn_wait(c, SOCK_TX, deadline);
            goto waited;
        }
        /* MSG_NOSIGNAL: a peer that went away must not raise SIGPIPE */
        w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w >= 0) {
            done += w;
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN) {
            ret = -errno;
            sock_conn_fail(c, SOCK_TX, ret);
            break;
        }
        ret = sock_conn_wait(c, SOCK_TX, deadline);
    waited:
        if (ret < 0) {
            if (ret == -ETIMEDOUT && done > 0) {
                /* The stream is cut in the middle of a message. */
                sock_conn_shutdown_send(c);
            } else if (ret != -ETIMEDOUT) {
                sock_conn_fail(c, SOCK_TX, ret);
            }
            break;
        }
    }
    qemu_co_mutex_unlock(&c->send_lock);
    if (sent) {
        *sent = done;
    }
    return done == total ? 0 : ret;
}

/* Fill the receive buffer: >0 bytes read, 0 would block, <0 error/EOF. */
static ssize_t sock_conn_fill(SockConn *c)
{
    ssize_t n;

    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
    }
    if (c->tp) {
        return sock_conn_tp_recv(c, c->rbuf + c->rlen,
                                 SOCK_RBUF_SIZE - c->rlen, true);
    }
    do {
        n = read(c->fd, c->rbuf + c->rlen, SOCK_RBUF_SIZE - c->rlen);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->drained = (size_t)n < SOCK_RBUF_SIZE - c->rlen;
        c->rlen += n;
        return n;
    }
    if (n == 0) {
        return -ECONNRESET;
    }
    return errno == EAGAIN ? 0 : -errno;
}

/* Read into the destination directly: >0, 0 would block, <0 error/EOF. */
static ssize_t sock_conn_read_direct(SockConn *c, const struct iovec *iov,
                                     int niov, size_t skip, size_t len)
{
    struct iovec batch[SOCK_IOV_BATCH];
    ssize_t n;
    int cnt = sock_iov_slice(batch, iov, niov, skip, len);

    if (c->tp) {
        return sock_conn_tp_recv(c, batch[0].iov_base, batch[0].iov_len,
                                 false);
    }
    do {
        n = readv(c->fd, batch, cnt);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->drained = (size_t)n < len;
        return n;
    }
    if (n == 0) {
        return -ECONNRESET;
    }
    return errno == EAGAIN ? 0 : -errno;
}

int coroutine_fn sock_conn_co_recv(SockConn *c, const struct iovec *iov,
                                   int niov, size_t len, size_t *got)
{
    size_t done = 0;
    int ret = 0;

    while (done < len) {
        size_t buffered = c->rlen - c->rpos;
        ssize_t n;

        if (buffered) {
            size_t k = MIN(buffered, len - done);
            if (iov) {
                iov_from_buf(iov, niov, done, c->rbuf + c->rpos, k);
            }
            c->rpos += k;
            done += k;
            continue;
        }
        if (c->err[SOCK_RX]) {
            ret = c->err[SOCK_RX];
            break;
        }
        if (c->drained) {
            c->drained = false;
            ret = sock_conn_wait(c, SOCK_RX, SOCK_NO_DEADLINE);
            if (ret < 0) {
                if (ret != -ETIMEDOUT) {
                    sock_conn_fail(c, SOCK_RX, ret);
                }
                break;
            }
        }
        if (iov && len - done >= SOCK_DIRECT_MIN) {
            n = sock_conn_read_direct(c, iov, niov, done, len - done);
            if (n > 0) {
                done += n;
                continue;
            }
        } else {
            n = sock_conn_fill(c);
            if (n > 0) {
                continue;
            }
        }
        if (n < 0) {
            ret = n;
            sock_conn_fail(c, SOCK_RX, ret);
            break;
        }
        if (c->tp && c->tp_want_write) {
            c->tp_want_write = false;
            ret = sock_conn_wait_other(c, c->recv_deadline);
            if (ret < 0) {
                break;
            }
            continue;
        }
        ret = sock_conn_wait(c, SOCK_RX, SOCK_NO_DEADLINE);
        if (ret < 0) {
            if (ret != -ETIMEDOUT) {
                sock_conn_fail(c, SOCK_RX, ret);
            }
            break;
        }
    }
    if (got) {
        *got = done;
    }
    return done == len ? 0 : ret;
}

int coroutine_fn sock_conn_co_recv_buf(SockConn *c, void *buf, size_t len)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };

    return sock_conn_co_recv(c, &iov, 1, len, NULL);
}

/* ------------------------------------------------------------------ */
/* Reconnecting client                                                */

/* A coroutine waiting for a connection (or the client's give-up). */
typedef struct SockClientWaiter {
    SockWait w;
    bool honour_give_up;
} SockClientWaiter;

struct SockClient {
    SockAddr addr;
    const SockClientOps *ops;
    void *opaque;
    int64_t timeout_ns;
    SockConn *conn;             /* usable connection, or NULL */
    bool healthy;               /* conn answered a real request */
    unsigned failures;          /* consecutive failed attempts */
    int64_t down_since;         /* when the connection was lost */
    bool given_up;
    bool closing;
    uint64_t attempts;
    Coroutine *loop_co;         /* the reconnect loop while it runs */
    bool loop_done;
    Coroutine *free_waiter;
    SockCancel cancel;          /* cancels the loop's waits at free */
    GSList *waiters;            /* SockClientWaiter */
};

SockClient *sock_client_new(const SockAddr *addr, const SockClientOps *ops,
                            void *opaque, int64_t timeout_ns)
{
    SockClient *cl = g_new0(SockClient, 1);

    sock_addr_copy(&cl->addr, addr);
    cl->ops = ops;
    cl->opaque = opaque;
    cl->timeout_ns = timeout_ns;
    return cl;
}

bool sock_client_given_up(const SockClient *cl)
{
    return cl->given_up;
}

uint64_t sock_client_attempts(const SockClient *cl)
{
    return cl->attempts;
}

/* One attempt: connect and set up. The new connection or NULL. */
static SockConn *coroutine_fn sock_client_co_attempt(SockClient *cl,
                                                    int64_t deadline,
                                                    Error **errp)
{
    SockConn *conn;
    int fd, ret;

    cl->attempts++;
    fd = sock_co_connect(&cl->addr, deadline, &cl->cancel, errp);
    if (fd < 0) {
        return NULL;
    }
    conn = sock_conn_new(fd);
    ret = cl->ops->co_setup(cl->opaque, conn, deadline, errp);
    if (ret < 0 || cl->closing) {
        sock_conn_abort(conn, -ECONNABORTED);
        sock_conn_unref(conn);
        return NULL;
    }
    return conn;
}

/* Wake waiters: all (connected, closing) or only those honouring give-up. */
static void sock_client_wake(SockClient *cl, bool only_give_up, int result)
{
    GSList *l = cl->waiters;

    while (l) {
        SockClientWaiter *w = l->data;
        l = l->next;
        if (!only_give_up || w->honour_give_up) {
            sock_wait_finish(&w->w, result);
        }
    }
}

/* Reconnect with back-off until it works or the client is freed. */
static void coroutine_fn sock_client_loop(void *opaque)
{
    SockClient *cl = opaque;

    while (!cl->closing) {
        int64_t now = qemu_clock_get_ns(), deadline;
        Error *err = NULL;
        SockConn *conn;

        if (cl->failures) {
            int64_t delay = SOCK_BACKOFF_MIN_NS << MIN(cl->failures - 1, 10);
            delay = MIN(delay, SOCK_BACKOFF_MAX_NS);
            if (sock_co_sleep(now + delay, &cl->cancel) < 0) {
                break;
            }
            now = qemu_clock_get_ns();
        }
        /* Attempts before the give-up end with it; later ones get a full
         * timeout each (a stopped peer must not make them spin). */
        deadline = now + cl->timeout_ns;
        if (!cl->given_up && cl->down_since + cl->timeout_ns > now + 100000000LL) {
            deadline = MIN(deadline, cl->down_since + cl->timeout_ns);
        }
        conn = sock_client_co_attempt(cl, deadline, &err);
        if (conn) {
            cl->conn = conn;
            cl->healthy = false;
            cl->given_up = false;
            sock_client_wake(cl, false, 0);
            break;
        }
        error_free(err);         /* the waiters report the timeout */
        cl->failures++;
        if (!cl->given_up &&
            qemu_clock_get_ns() >= cl->down_since + cl->timeout_ns) {
            cl->given_up = true;
            sock_client_wake(cl, true, -ENOTCONN);
        }
    }
    cl->loop_co = NULL;
    cl->loop_done = true;
    if (cl->free_waiter) {
        aio_co_wake(cl->free_waiter);
    }
}

int coroutine_fn sock_client_co_connect(SockClient *cl, Error **errp)
{
    SockConn *conn;

    cl->down_since = qemu_clock_get_ns();
    conn = sock_client_co_attempt(cl, cl->down_since + cl->timeout_ns, errp);
    if (!conn) {
        cl->failures++;
        return -ENOTCONN;
    }
    cl->conn = conn;
    cl->healthy = false;
    return 0;
}

void sock_client_adopt(SockClient *cl, SockConn *conn)
{
    assert(!cl->conn);
    cl->conn = conn;
    cl->healthy = true;
    cl->down_since = qemu_clock_get_ns();
}

static void sock_client_start_loop(SockClient *cl)
{
    if (!cl->loop_co && !cl->closing) {
        cl->loop_done = false;
        cl->loop_co = qemu_coroutine_create(sock_client_loop, cl);
        aio_co_wake(cl->loop_co);
    }
}

int coroutine_fn sock_client_co_get(SockClient *cl, int64_t deadline,
                                    SockConn **pconn, Error **errp)
{
    for (;;) {
        SockClientWaiter w;
        int ret;

        if (cl->closing) {
            error_setg(errp, "connection is closing");
            return -ESHUTDOWN;
        }
        if (cl->conn && !sock_conn_send_error(cl->conn)) {
            *pconn = sock_conn_ref(cl->conn);
            return 0;
        }
        if (cl->conn) {
            sock_client_drop(cl, cl->conn);
        }
        if (cl->given_up && !deadline) {
            g_autofree char *where = sock_addr_describe(&cl->addr);
            error_setg(errp, "no connection to %s (gave up after %" PRId64
                       " s; trying again in the background)", where,
                       (int64_t)(cl->timeout_ns / 1000000000));
            return -ENOTCONN;
        }
        sock_client_start_loop(cl);
        ret = sock_wait_begin(&w.w, deadline ? deadline : SOCK_NO_DEADLINE,
                              NULL);
        if (ret == 0) {
            w.honour_give_up = !deadline;
            cl->waiters = g_slist_prepend(cl->waiters, &w);
            ret = sock_wait_yield(&w.w);
            cl->waiters = g_slist_remove(cl->waiters, &w);
        }
        if (ret == -ETIMEDOUT) {
            g_autofree char *where = sock_addr_describe(&cl->addr);
            error_setg(errp, "no connection to %s: timed out", where);
            return ret;
        }
        /* connected, given up or closing: look again */
    }
}

void sock_client_drop(SockClient *cl, SockConn *conn)
{
    if (cl->conn != conn) {
        return;
    }
    if (cl->healthy) {
        cl->failures = 0;
    } else {
        cl->failures++;     /* it never did useful work: a failed attempt */
    }
    cl->conn = NULL;
    cl->down_since = qemu_clock_get_ns();
    sock_conn_unref(conn);
}

void sock_client_mark_healthy(SockClient *cl, SockConn *conn)
{
    if (cl->conn == conn) {
        cl->healthy = true;
        cl->failures = 0;
    }
}

void coroutine_fn sock_client_co_free(SockClient *cl)
{
    cl->closing = true;
    sock_cancel(&cl->cancel);
    sock_client_wake(cl, false, -ESHUTDOWN);
    while (cl->loop_co && !cl->loop_done) {
        cl->free_waiter = qemu_coroutine_self();
        qemu_coroutine_yield();
        cl->free_waiter = NULL;
    }
    assert(!cl->waiters);
    if (cl->conn) {
        sock_conn_unref(cl->conn);
    }
    sock_addr_clear(&cl->addr);
    g_free(cl);
}
