/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of util/socket: listen/accept/connect on TCP and Unix sockets,
 * whole messages, deadlines and cancellation, half-close and abort,
 * generations, and the reconnecting client against hostile peers (silent,
 * trickling, accept-then-close) with back-off, give-up and fail-fast,
 * and a transport (as TLS) between a connection and its fd.
 * Everything runs in one event loop on 127.0.0.1 and a scratch directory.
 */
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/socket.h"
#include <sys/socket.h>

#define MS (1000 * 1000LL)

static AioContext *ctx;
static char *tmpdir;

/* Run entry(opaque) in a coroutine and poll until it returns. */
typedef struct CoRun {
    CoroutineEntry *entry;
    void *opaque;
    bool done;
} CoRun;

static void coroutine_fn co_run_entry(void *opaque)
{
    CoRun *r = opaque;

    r->entry(r->opaque);
    r->done = true;
}

static void co_run(CoroutineEntry *entry, void *opaque)
{
    CoRun r = { .entry = entry, .opaque = opaque };

    qemu_coroutine_enter(qemu_coroutine_create(co_run_entry, &r));
    while (!r.done) {
        aio_poll(ctx, true);
    }
}

/* Start entry in a coroutine that runs on its own (a peer). */
static void co_spawn(CoroutineEntry *entry, void *opaque)
{
    qemu_coroutine_enter(qemu_coroutine_create(entry, opaque));
}

static void co_sleep_ms(int64_t ms)
{
    qemu_co_sleep_ns(ms * MS);
}

/* ------------------------------------------------------------------ */
/* A test server: accepted fds are queued for the test to pick up     */

typedef struct Server {
    SockListener *l;
    SockAddr addr;
    GQueue fds;
    bool close_at_once;         /* hostile: accept and close */
    unsigned accepted;
} Server;

static void server_accept(void *opaque, int fd)
{
    Server *s = opaque;

    s->accepted++;
    if (s->close_at_once) {
        close(fd);
        return;
    }
    g_queue_push_tail(&s->fds, GINT_TO_POINTER(fd));
}

static void server_start(Server *s, bool unix_socket)
{
    Error *err = NULL;
    SockAddr a;

    memset(s, 0, sizeof(*s));
    g_queue_init(&s->fds);
    if (unix_socket) {
        g_autofree char *p = g_strdup_printf("%s/s%u.sock", tmpdir,
                                             g_random_int());
        sock_addr_init_unix(&a, p);
    } else {
        sock_addr_init_tcp(&a, "127.0.0.1", 0);
    }
    s->l = sock_listen(&a, server_accept, s, &err);
    g_assert_null(err);
    g_assert_nonnull(s->l);
    sock_addr_copy(&s->addr, &a);
    if (!unix_socket) {
        s->addr.port = sock_listener_port(s->l);
        g_assert_cmpint(s->addr.port, >, 0);
    }
    sock_addr_clear(&a);
}

static void server_stop(Server *s)
{
    sock_listener_free(s->l);
    while (!g_queue_is_empty(&s->fds)) {
        close(GPOINTER_TO_INT(g_queue_pop_head(&s->fds)));
    }
    sock_addr_clear(&s->addr);
}

/* The next accepted connection (polls until there is one). */
static SockConn *server_next(Server *s)
{
    while (g_queue_is_empty(&s->fds)) {
        aio_poll(ctx, true);
    }
    return sock_conn_new(GPOINTER_TO_INT(g_queue_pop_head(&s->fds)));
}

typedef struct ConnectArgs {
    const SockAddr *addr;
    int64_t deadline;
    SockCancel *cancel;
    int fd;
    char *err;
} ConnectArgs;

static void coroutine_fn connect_entry(void *opaque)
{
    ConnectArgs *a = opaque;
    Error *err = NULL;

    a->fd = sock_co_connect(a->addr, a->deadline, a->cancel, &err);
    if (err) {
        a->err = g_strdup(error_get_pretty(err));
        error_free(err);
    }
}

static SockConn *client_connect(const SockAddr *addr)
{
    ConnectArgs a = { .addr = addr, .deadline = SOCK_NO_DEADLINE };

    co_run(connect_entry, &a);
    g_assert_null(a.err);
    g_assert_cmpint(a.fd, >=, 0);
    return sock_conn_new(a.fd);
}

/* ------------------------------------------------------------------ */
/* Messages both ways, on TCP and Unix sockets                        */

typedef struct XferArgs {
    SockConn *c;
    void *buf;
    size_t len;
    int64_t deadline;
    int ret;
    size_t done;
} XferArgs;

static void coroutine_fn send_entry(void *opaque)
{
    XferArgs *a = opaque;
    struct iovec iov = { .iov_base = a->buf, .iov_len = a->len };

    a->ret = sock_conn_co_send(a->c, &iov, 1, a->deadline, &a->done);
}

static void coroutine_fn recv_entry(void *opaque)
{
    XferArgs *a = opaque;
    struct iovec iov = { .iov_base = a->buf, .iov_len = a->len };

    a->ret = sock_conn_co_recv(a->c, &iov, 1, a->len, &a->done);
}

static int xfer(CoroutineEntry *e, SockConn *c, void *buf, size_t len,
                int64_t deadline, size_t *done)
{
    XferArgs a = { .c = c, .buf = buf, .len = len, .deadline = deadline };

    co_run(e, &a);
    if (done) {
        *done = a.done;
    }
    return a.ret;
}

static void test_roundtrip(bool unix_socket)
{
    Server s;
    SockConn *c, *p;
    uint8_t out[100000], in[100000];
    g_autofree char *where = NULL;

    server_start(&s, unix_socket);
    where = sock_addr_describe(&s.addr);
    g_assert(g_str_has_prefix(where, unix_socket ? "unix:" : "127.0.0.1:"));
    c = client_connect(&s.addr);
    p = server_next(&s);
    g_assert_cmpuint(sock_conn_gen(p), >, sock_conn_gen(c));
    for (size_t i = 0; i < sizeof(out); i++) {
        out[i] = i * 7;
    }
    /* bigger than the receive buffer: buffered and direct reads */
    g_assert_cmpint(xfer(send_entry, c, out, sizeof(out), SOCK_NO_DEADLINE,
                         NULL), ==, 0);
    g_assert_cmpint(xfer(recv_entry, p, in, sizeof(in), SOCK_NO_DEADLINE,
                         NULL), ==, 0);
    g_assert(!memcmp(in, out, sizeof(in)));
    g_assert_cmpint(xfer(send_entry, p, out, 48, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert_cmpint(xfer(recv_entry, c, in, 48, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert(!memcmp(in, out, 48));
    sock_conn_unref(c);
    sock_conn_unref(p);
    server_stop(&s);
}

static void test_roundtrip_tcp(void)
{
    test_roundtrip(false);
}

static void test_roundtrip_unix(void)
{
    test_roundtrip(true);
}

/*
 * A transport (as TLS is one): a toy that XORs the stream, hands out at
 * most 7 bytes per receive while holding the rest of what it read (so the
 * layer must ask it for pending bytes before waiting on the fd), and takes
 * at most 13 bytes per send, refusing every other send once.
 */
typedef struct XorTransport {
    int fd;
    uint8_t buf[4096];
    size_t pos, len;
    unsigned sends;
    bool freed;
} XorTransport;

static ssize_t xor_recv(void *opaque, void *buf, size_t len, bool *want_write)
{
    XorTransport *t = opaque;
    ssize_t n;

    if (t->pos == t->len) {
        n = read(t->fd, t->buf, sizeof(t->buf));
        if (n == 0) {
            return -ECONNRESET;
        }
        if (n < 0) {
            return errno == EAGAIN ? 0 : -errno;
        }
        for (ssize_t i = 0; i < n; i++) {
            t->buf[i] ^= 0x5a;
        }
        t->pos = 0;
        t->len = n;
    }
    n = MIN(MIN(len, 7), t->len - t->pos);
    memcpy(buf, t->buf + t->pos, n);
    t->pos += n;
    return n;
}

static ssize_t xor_send(void *opaque, const struct iovec *iov, int niov,
                        bool *want_read)
{
    XorTransport *t = opaque;
    uint8_t out[13];
    size_t n = MIN(iov[0].iov_len, sizeof(out));
    ssize_t w;

    if (t->sends++ % 2) {
        return 0;       /* would block: the layer waits and tries again */
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = ((uint8_t *)iov[0].iov_base)[i] ^ 0x5a;
    }
    w = write(t->fd, out, n);
    return w < 0 ? (errno == EAGAIN ? 0 : -errno) : w;
}

static size_t xor_pending(void *opaque)
{
    XorTransport *t = opaque;

    return t->len - t->pos;
}

static void xor_free(void *opaque)
{
    XorTransport *t = opaque;

    t->freed = true;
}

static const SockTransport xor_transport = {
    .recv = xor_recv, .send = xor_send, .pending = xor_pending,
    .free = xor_free,
};

static void test_transport(void)
{
    Server s;
    SockConn *c, *p;
    static uint8_t out[100000], in[100000];
    XorTransport tc = { 0 }, tp = { 0 };
    uint8_t raw[16];

    server_start(&s, true);
    c = client_connect(&s.addr);
    p = server_next(&s);
    /* Bytes received in the clear but not consumed: refused. */
    g_assert_cmpint(xfer(send_entry, c, "0123456789", 10, SOCK_NO_DEADLINE,
                         NULL), ==, 0);
    g_assert_cmpint(xfer(recv_entry, p, raw, 4, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert_cmpuint(sock_conn_buffered(p), ==, 6);
    g_assert_cmpint(sock_conn_set_transport(p, &xor_transport, &tp), ==,
                    -EPROTO);
    g_assert_cmpint(xfer(recv_entry, p, raw, 6, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert_cmpuint(sock_conn_buffered(p), ==, 0);
    tc.fd = sock_conn_fd(c);
    tp.fd = sock_conn_fd(p);
    g_assert_cmpint(sock_conn_set_transport(c, &xor_transport, &tc), ==, 0);
    g_assert_cmpint(sock_conn_set_transport(p, &xor_transport, &tp), ==, 0);
    for (size_t i = 0; i < sizeof(out); i++) {
        out[i] = i * 13 + 1;
    }
    /* Small writes fill a socket buffer early: send while receiving. */
    XferArgs big = { .c = c, .buf = out, .len = sizeof(out),
                     .deadline = SOCK_NO_DEADLINE, .ret = 1 };
    co_spawn(send_entry, &big);
    g_assert_cmpint(xfer(recv_entry, p, in, sizeof(in), SOCK_NO_DEADLINE,
                         NULL), ==, 0);
    while (big.ret == 1) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(big.ret, ==, 0);
    g_assert(!memcmp(in, out, sizeof(in)));
    /* Two messages at once: the second sits in the transport's buffer. */
    g_assert_cmpint(xfer(send_entry, p, out, 20, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert_cmpint(xfer(recv_entry, c, in, 3, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert_cmpint(xfer(recv_entry, c, in + 3, 17, SOCK_NO_DEADLINE, NULL),
                    ==, 0);
    g_assert(!memcmp(in, out, 20));
    /* EOF through the transport */
    sock_conn_unref(p);
    g_assert(tp.freed);
    g_assert_cmpint(xfer(recv_entry, c, in, 1, SOCK_NO_DEADLINE, NULL), ==,
                    -ECONNRESET);
    sock_conn_unref(c);
    g_assert(tc.freed);
    server_stop(&s);
}

/* A name (not numeric) is resolved in the thread pool. */
static void test_connect_by_name(void)
{
    Server s;
    SockAddr named;
    SockConn *c;

    server_start(&s, false);
    sock_addr_init_tcp(&named, "localhost", s.addr.port);
    {
        ConnectArgs a = { .addr = &named, .deadline = SOCK_NO_DEADLINE };
        co_run(connect_entry, &a);
        /* "localhost" may resolve to ::1 first, where nothing listens:
         * the next address must be tried */
        g_assert_null(a.err);
        c = sock_conn_new(a.fd);
    }
    sock_conn_unref(c);
    sock_addr_clear(&named);
    server_stop(&s);
}

static void test_connect_refused(void)
{
    Server s;
    SockAddr gone;
    ConnectArgs a = { .deadline = SOCK_NO_DEADLINE };

    server_start(&s, false);
    sock_addr_copy(&gone, &s.addr);
    server_stop(&s);                /* nothing listens there any more */
    a.addr = &gone;
    co_run(connect_entry, &a);
    g_assert_cmpint(a.fd, ==, -ECONNREFUSED);
    g_assert_nonnull(strstr(a.err, "Failed to connect to '127.0.0.1:"));
    g_free(a.err);
    sock_addr_clear(&gone);
}

/* ------------------------------------------------------------------ */
/* Deadlines                                                          */

/* A silent peer: the receive deadline ends the wait, the connection stays
 * usable, and the rest arrives later. */
static void test_recv_deadline_silent(void)
{
    Server s;
    SockConn *c, *p;
    uint8_t buf[16];
    size_t got;

    server_start(&s, false);
    c = client_connect(&s.addr);
    p = server_next(&s);
    sock_conn_set_recv_deadline(c, qemu_clock_get_ns() + 50 * MS);
    g_assert_cmpint(xfer(recv_entry, c, buf, 16, 0, &got), ==, -ETIMEDOUT);
    g_assert_cmpuint(got, ==, 0);
    g_assert_cmpint(sock_conn_recv_error(c), ==, 0);
    sock_conn_set_recv_deadline(c, SOCK_NO_DEADLINE);
    g_assert_cmpint(xfer(send_entry, p, "0123456789abcdef", 16,
                         SOCK_NO_DEADLINE, NULL), ==, 0);
    g_assert_cmpint(xfer(recv_entry, c, buf, 16, 0, &got), ==, 0);
    g_assert(!memcmp(buf, "0123456789abcdef", 16));
    sock_conn_unref(c);
    sock_conn_unref(p);
    server_stop(&s);
}

typedef struct Trickle {
    SockConn *c;
    int n;
    bool stop;
    bool done;
} Trickle;

/* Hostile peer: one byte every 10 ms. */
static void coroutine_fn trickle_entry(void *opaque)
{
    Trickle *t = opaque;

    for (int i = 0; i < t->n && !t->stop; i++) {
        struct iovec iov = { .iov_base = "x", .iov_len = 1 };
        if (sock_conn_co_send(t->c, &iov, 1, SOCK_NO_DEADLINE, NULL) < 0) {
            break;
        }
        co_sleep_ms(10);
    }
    t->done = true;
}

/* The deadline bounds the whole message, not the gap between bytes. */
static void test_recv_deadline_trickle(void)
{
    Server s;
    SockConn *c, *p;
    Trickle t;
    uint8_t buf[48];
    size_t got;

    server_start(&s, false);
    c = client_connect(&s.addr);
    p = server_next(&s);
    t = (Trickle) { .c = p, .n = 1000 };
    co_spawn(trickle_entry, &t);
    sock_conn_set_recv_deadline(c, qemu_clock_get_ns() + 100 * MS);
    g_assert_cmpint(xfer(recv_entry, c, buf, 48, 0, &got), ==, -ETIMEDOUT);
    g_assert_cmpuint(got, >, 0);
    g_assert_cmpuint(got, <, 48);
    t.stop = true;
    sock_conn_unref(c);
    while (!t.done) {
        aio_poll(ctx, true);
    }
    sock_conn_unref(p);
    server_stop(&s);
}

/* A peer that never reads: a message cut by the send deadline is cut for
 * good (half-close: the peer sees a truncated message and EOF), and every
 * later send fails at once. */
static void test_send_deadline_cuts(void)
{
    Server s;
    SockConn *c, *p;
    size_t len = 64 << 20, sent, got;
    g_autofree uint8_t *big = g_malloc0(len);

    server_start(&s, false);
    c = client_connect(&s.addr);
    p = server_next(&s);
    g_assert_cmpint(xfer(send_entry, c, big, len,
                         qemu_clock_get_ns() + 100 * MS, &sent), ==,
                    -ETIMEDOUT);
    g_assert_cmpuint(sent, >, 0);
    g_assert_cmpuint(sent, <, len);
    g_assert_cmpint(sock_conn_send_error(c), ==, -ESHUTDOWN);
    g_assert_cmpint(xfer(send_entry, c, "y", 1, SOCK_NO_DEADLINE, &sent), ==,
                    -ESHUTDOWN);
    g_assert_cmpuint(sent, ==, 0);
    /* the peer gets what went out, then EOF */
    g_assert_cmpint(xfer(recv_entry, p, big, len, SOCK_NO_DEADLINE, &got), ==,
                    -ECONNRESET);
    g_assert_cmpuint(got, <, len);
    sock_conn_unref(c);
    sock_conn_unref(p);
    server_stop(&s);
}

/* ------------------------------------------------------------------ */
/* Half-close, EOF, abort, generations                                */

static void test_half_close_and_eof(void)
{
    Server s;
    SockConn *c, *p;
    uint8_t buf[4];

    server_start(&s, true);
    c = client_connect(&s.addr);
    p = server_next(&s);
    g_assert_cmpint(xfer(send_entry, c, "ping", 4, SOCK_NO_DEADLINE, NULL),
                    ==, 0);
    sock_conn_shutdown_send(c);
    g_assert_cmpint(xfer(recv_entry, p, buf, 4, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert_cmpint(xfer(recv_entry, p, buf, 1, SOCK_NO_DEADLINE, NULL), ==,
                    -ECONNRESET);
    /* the half-closed side still receives */
    g_assert_cmpint(xfer(send_entry, p, "pong", 4, SOCK_NO_DEADLINE, NULL),
                    ==, 0);
    g_assert_cmpint(xfer(recv_entry, c, buf, 4, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert(!memcmp(buf, "pong", 4));
    sock_conn_unref(p);                 /* closes: the client reads EOF */
    g_assert_cmpint(xfer(recv_entry, c, buf, 4, SOCK_NO_DEADLINE, NULL), ==,
                    -ECONNRESET);
    g_assert_cmpint(sock_conn_recv_error(c), ==, -ECONNRESET);
    sock_conn_unref(c);
    server_stop(&s);
}

typedef struct Blocked {
    SockConn *c;
    int ret;
    bool done;
} Blocked;

static void coroutine_fn blocked_recv_entry(void *opaque)
{
    Blocked *b = opaque;
    uint8_t buf[8];
    struct iovec iov = { .iov_base = buf, .iov_len = 8 };

    b->ret = sock_conn_co_recv(b->c, &iov, 1, 8, NULL);
    b->done = true;
}

/* Abort wakes a waiter; the old connection (an older generation) only
 * gives errors while a new one works: half a message can never continue
 * on a newer connection. */
static void test_abort_and_generations(void)
{
    Server s;
    SockConn *c, *c2, *p, *p2;
    Blocked b;
    uint8_t buf[4];

    server_start(&s, false);
    c = client_connect(&s.addr);
    p = server_next(&s);
    b = (Blocked) { .c = c };
    co_spawn(blocked_recv_entry, &b);
    aio_poll(ctx, false);
    g_assert(!b.done);
    sock_conn_abort(c, -ECONNABORTED);
    while (!b.done) {
        aio_poll(ctx, true);
    }
    g_assert_cmpint(b.ret, ==, -ECONNABORTED);
    c2 = client_connect(&s.addr);
    p2 = server_next(&s);
    g_assert_cmpuint(sock_conn_gen(c2), >, sock_conn_gen(c));
    g_assert_cmpint(xfer(send_entry, c, "old!", 4, SOCK_NO_DEADLINE, NULL),
                    ==, -ECONNABORTED);
    g_assert_cmpint(xfer(send_entry, c2, "new!", 4, SOCK_NO_DEADLINE, NULL),
                    ==, 0);
    g_assert_cmpint(xfer(recv_entry, p2, buf, 4, SOCK_NO_DEADLINE, NULL), ==,
                    0);
    g_assert(!memcmp(buf, "new!", 4));
    /* the reset reaches the old peer */
    g_assert_cmpint(xfer(recv_entry, p, buf, 4, SOCK_NO_DEADLINE, NULL), <,
                    0);
    sock_conn_unref(c);
    sock_conn_unref(c2);
    sock_conn_unref(p);
    sock_conn_unref(p2);
    server_stop(&s);
}

/* ------------------------------------------------------------------ */
/* Reconnecting client                                                */

/* Setup: a 4-byte probe that the peer must echo. */
static int coroutine_fn probe_setup(void *opaque, SockConn *conn,
                                    int64_t deadline, Error **errp)
{
    struct iovec iov = { .iov_base = "prob", .iov_len = 4 };
    uint8_t buf[4];
    int ret = sock_conn_co_send(conn, &iov, 1, deadline, NULL);

    if (ret == 0) {
        sock_conn_set_recv_deadline(conn, deadline);
        ret = sock_conn_co_recv_buf(conn, buf, 4);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "probe");
    }
    return ret;
}

static const SockClientOps probe_ops = { .co_setup = probe_setup };

typedef struct Echo {
    Server *s;
    bool stop;
} Echo;

/* A good peer: echoes every probe on every connection it accepts. */
static void coroutine_fn echo_conn_entry(void *opaque)
{
    SockConn *p = opaque;
    uint8_t buf[4];
    struct iovec iov = { .iov_base = buf, .iov_len = 4 };

    while (sock_conn_co_recv(p, &iov, 1, 4, NULL) == 0 &&
           sock_conn_co_send(p, &iov, 1, SOCK_NO_DEADLINE, NULL) == 0) {
        /* echo */
    }
    sock_conn_unref(p);
}

static void echo_accept(void *opaque, int fd)
{
    Server *s = opaque;

    s->accepted++;
    co_spawn(echo_conn_entry, sock_conn_new(fd));
}

typedef struct GetArgs {
    SockClient *cl;
    int64_t deadline;
    int ret;
    SockConn *conn;
} GetArgs;

static void coroutine_fn get_entry(void *opaque)
{
    GetArgs *g = opaque;
    Error *err = NULL;

    g->ret = sock_client_co_get(g->cl, g->deadline, &g->conn, &err);
    error_free(err);
}

static void coroutine_fn connect_client_entry(void *opaque)
{
    GetArgs *g = opaque;
    Error *err = NULL;

    g->ret = sock_client_co_connect(g->cl, &err);
    error_free(err);
}

static void coroutine_fn free_client_entry(void *opaque)
{
    sock_client_co_free(opaque);
}

/*
 * A peer that accepts and closes at once: every attempt fails at the
 * probe; the client backs off after each one (not a storm), gives up after
 * its timeout, then fails new requests at once while it keeps trying in
 * the background; once a good peer listens there, it reconnects.
 */
static void test_client_backoff_giveup_recover(void)
{
    Server s;
    SockClient *cl;
    GetArgs g;
    Error *err = NULL;
    uint64_t attempts;

    server_start(&s, true);
    s.close_at_once = true;
    cl = sock_client_new(&s.addr, &probe_ops, NULL, 500 * MS);
    g = (GetArgs) { .cl = cl };
    co_run(connect_client_entry, &g);
    g_assert_cmpint(g.ret, <, 0);               /* the first connect fails */

    g = (GetArgs) { .cl = cl };
    co_run(get_entry, &g);                      /* reconnects until give-up */
    g_assert_cmpint(g.ret, ==, -ENOTCONN);
    g_assert(sock_client_given_up(cl));
    attempts = sock_client_attempts(cl);
    /* 50 ms doubling: about 5 attempts in 0.5 s, thousands without it */
    g_assert_cmpuint(attempts, >=, 2);
    g_assert_cmpuint(attempts, <=, 12);
    g_assert_cmpuint(s.accepted, ==, attempts);

    g = (GetArgs) { .cl = cl };
    co_run(get_entry, &g);                      /* fail-fast */
    g_assert_cmpint(g.ret, ==, -ENOTCONN);

    /* a good peer: the client connects, and reconnects after a break */
    server_stop(&s);
    memset(&s, 0, sizeof(s));
    g_queue_init(&s.fds);
    {
        g_autofree char *p = g_strdup_printf("%s/echo.sock", tmpdir);
        SockAddr a;
        sock_addr_init_unix(&a, p);
        s.l = sock_listen(&a, echo_accept, &s, &err);
        g_assert_null(err);
        sock_addr_copy(&s.addr, &a);
        sock_addr_clear(&a);
    }
    co_run(free_client_entry, cl);
    cl = sock_client_new(&s.addr, &probe_ops, NULL, 500 * MS);
    g = (GetArgs) { .cl = cl };
    co_run(connect_client_entry, &g);
    g_assert_cmpint(g.ret, ==, 0);
    g = (GetArgs) { .cl = cl };
    co_run(get_entry, &g);
    g_assert_cmpint(g.ret, ==, 0);
    sock_client_mark_healthy(cl, g.conn);
    /* the connection breaks: the next get reconnects */
    sock_conn_abort(g.conn, -ECONNABORTED);
    sock_client_drop(cl, g.conn);
    sock_conn_unref(g.conn);
    g = (GetArgs) { .cl = cl };
    co_run(get_entry, &g);
    g_assert_cmpint(g.ret, ==, 0);
    g_assert(!sock_client_given_up(cl));
    sock_conn_unref(g.conn);
    co_run(free_client_entry, cl);
    server_stop(&s);
}

/* A silent peer (accepts, never answers the probe): every attempt ends at
 * its deadline; a caller with its own deadline gets -ETIMEDOUT. */
static void test_client_silent_peer(void)
{
    Server s;
    SockClient *cl;
    GetArgs g;

    server_start(&s, false);
    cl = sock_client_new(&s.addr, &probe_ops, NULL, 300 * MS);
    g = (GetArgs) { .cl = cl, .deadline = qemu_clock_get_ns() + 150 * MS };
    co_run(get_entry, &g);
    g_assert_cmpint(g.ret, ==, -ETIMEDOUT);
    g = (GetArgs) { .cl = cl };
    co_run(get_entry, &g);
    g_assert_cmpint(g.ret, ==, -ENOTCONN);
    co_run(free_client_entry, cl);
    server_stop(&s);
}

/* A cancelled wait ends at once. */
static void coroutine_fn cancel_connect_entry(void *opaque)
{
    ConnectArgs *a = opaque;
    Error *err = NULL;

    a->fd = sock_co_connect(a->addr, a->deadline, a->cancel, &err);
    error_free(err);
}

static void test_cancel(void)
{
    SockAddr named;
    SockCancel cancel = { 0 };
    ConnectArgs a = { .addr = &named, .deadline = SOCK_NO_DEADLINE,
                      .cancel = &cancel };

    /* a name: resolution waits in the thread pool, cancel ends the wait */
    sock_addr_init_tcp(&named, "localhost", 1);
    sock_cancel(&cancel);
    co_run(cancel_connect_entry, &a);
    g_assert_cmpint(a.fd, ==, -ECANCELED);
    sock_addr_clear(&named);
}

int main(int argc, char **argv)
{
    ctx = qemu_get_aio_context();
    tmpdir = g_dir_make_tmp("test-socket-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    test_roundtrip_tcp();
    test_roundtrip_unix();
    test_transport();
    test_connect_by_name();
    test_connect_refused();
    test_recv_deadline_silent();
    test_recv_deadline_trickle();
    test_send_deadline_cuts();
    test_half_close_and_eof();
    test_abort_and_generations();
    test_client_backoff_giveup_recover();
    test_client_silent_peer();
    test_cancel();
    rmdir(tmpdir);
    g_free(tmpdir);
    printf("PASS test-socket\n");
    return 0;
}
