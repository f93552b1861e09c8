/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The socket layer shared by network drivers and servers: addresses, name
 * resolution off the event loop, non-blocking connect / listen / accept,
 * connections with a generation and per-direction deadlines, and a
 * reconnecting client that backs off after every failed attempt and fails
 * fast once it has given up.
 *
 * Contracts:
 * - Everything runs in the event-loop thread; functions marked coroutine_fn
 *   yield instead of blocking. Nothing here ever blocks the loop (names are
 *   resolved in the thread pool unless they are numeric).
 * - A SockConn is one connection, never reused: a new connection is a new
 *   SockConn with a new generation. A coroutine still holding an old
 *   SockConn only ever gets errors from it, so the rest of a half-sent
 *   message can never go onto a newer connection.
 * - sock_conn_co_send() sends a whole message or breaks the send side: a
 *   message is never interleaved with another one and never resumed on a
 *   different connection. Partially sent messages are cut short by a
 *   half-close, so the peer sees a truncated message and EOF.
 * - Every wait has a deadline (absolute, qemu_clock_get_ns() nanoseconds;
 *   SOCK_NO_DEADLINE for none) and can be cancelled.
 */
#ifndef QEMU_SOCKET_H
#define QEMU_SOCKET_H

#include "util/osdep.h"
#include "util/error.h"

#define SOCK_NO_DEADLINE INT64_MAX

/* ------------------------------------------------------------------ */
/* Addresses                                                          */

typedef enum SockAddrType {
    SOCK_ADDR_TCP,
    SOCK_ADDR_UNIX,
} SockAddrType;

typedef struct SockAddr {
    SockAddrType type;
    char *host;         /* TCP: name or numeric address (no brackets) */
    int port;           /* TCP: 1..65535; 0 when listening = any free port */
    char *path;         /* UNIX: socket path */
} SockAddr;

void sock_addr_init_tcp(SockAddr *addr, const char *host, int port);
void sock_addr_init_unix(SockAddr *addr, const char *path);
void sock_addr_copy(SockAddr *dst, const SockAddr *src);
void sock_addr_clear(SockAddr *addr);
/* "host:port", "[v6addr]:port" or "unix:path" (g_free the result). */
char *sock_addr_describe(const SockAddr *addr);

/* ------------------------------------------------------------------ */
/* Cancellation                                                       */

/*
 * A cancel token: sock_cancel() makes every wait that was given the token
 * return -ECANCELED at once (and every later one immediately).
 */
typedef struct SockCancel {
    bool cancelled;
    GSList *waiters;        /* internal: coroutines waiting with the token */
} SockCancel;

void sock_cancel(SockCancel *cancel);

/* ------------------------------------------------------------------ */
/* Connect and listen                                                 */

/*
 * Resolve (numeric names inline, others in the thread pool) and connect to
 * each resulting address in turn with a non-blocking connect, until one
 * works or the deadline passes. Returns a non-blocking, close-on-exec fd
 * (TCP_NODELAY and keep-alive set for TCP) or -errno with errp set.
 * -ETIMEDOUT at the deadline, -ECANCELED when cancelled.
 */
int coroutine_fn sock_co_connect(const SockAddr *addr, int64_t deadline,
                                 SockCancel *cancel, Error **errp);

typedef struct SockListener SockListener;
/* Called from the event loop with each accepted connection (non-blocking,
 * close-on-exec fd, TCP_NODELAY for TCP); the callee owns fd. */
typedef void SockAcceptFunc(void *opaque, int fd);

/*
 * Listen on addr (TCP: a numeric address or a name, resolved here, port 0
 * picks a free one; UNIX: a stale socket file at path is replaced) and call
 * accept_cb for each connection. Returns NULL with errp set on failure.
 */
SockListener *sock_listen(const SockAddr *addr, SockAcceptFunc *accept_cb,
                          void *opaque, Error **errp);
/* The TCP port actually bound (0 for a Unix socket). */
int sock_listener_port(const SockListener *l);
/* Stop accepting, close the socket (and unlink a Unix socket path). */
void sock_listener_free(SockListener *l);

/* ------------------------------------------------------------------ */
/* Connections                                                        */

typedef struct SockConn SockConn;

/* Wrap a connected non-blocking fd (ownership passes); refcount 1, a new
 * generation (unique and increasing within the process). */
SockConn *sock_conn_new(int fd);
SockConn *sock_conn_ref(SockConn *conn);
/* Dropping the last reference closes the fd. */
void sock_conn_unref(SockConn *conn);
uint64_t sock_conn_gen(const SockConn *conn);
void sock_conn_set_opaque(SockConn *conn, void *opaque);
void *sock_conn_get_opaque(const SockConn *conn);

/*
 * Send every byte of iov[0..niov) as one message (concurrent senders are
 * queued; their messages never interleave). *sent (may be NULL) receives the
 * number of bytes handed to the kernel. Returns 0, or -errno: -ETIMEDOUT at
 * the deadline (if part of the message went out, the send side is shut
 * down first), -ESHUTDOWN / -EPIPE / -ECONNRESET when the send side is
 * broken. Once broken, every later send fails at once.
 */
int coroutine_fn sock_conn_co_send(SockConn *conn, const struct iovec *iov,
                                   int niov, int64_t deadline, size_t *sent);

/*
 * Receive exactly len bytes into iov (NULL: read and discard them). One
 * receiver at a time. *got (may be NULL) receives the bytes placed. Returns
 * 0, -ECONNRESET at EOF (the peer closed), -ETIMEDOUT at the receive
 * deadline (the connection stays usable: call again for the rest),
 * -ECANCELED / -errno when the receive side is broken.
 */
int coroutine_fn sock_conn_co_recv(SockConn *conn, const struct iovec *iov,
                                   int niov, size_t len, size_t *got);
/* Convenience: one flat buffer. */
int coroutine_fn sock_conn_co_recv_buf(SockConn *conn, void *buf, size_t len);

/* The deadline of the receiver (may be changed while it waits). */
void sock_conn_set_recv_deadline(SockConn *conn, int64_t deadline);

/* Half-close: nothing more is sent (the peer reads EOF after what was
 * sent); receiving goes on. Pending and later sends fail with -ESHUTDOWN. */
void sock_conn_shutdown_send(SockConn *conn);

/*
 * Break the connection: the fd is closed with a reset (unread data on our
 * side is dropped, the peer sees ECONNRESET), every waiter and every later
 * call gets err (a negative errno).
 */
void sock_conn_abort(SockConn *conn, int err);

/* 0 while the direction is usable, else its first error. */
int sock_conn_send_error(const SockConn *conn);
int sock_conn_recv_error(const SockConn *conn);

/* ------------------------------------------------------------------ */
/* Transports (TLS)                                                   */

/*
 * A transport sits between a connection and its fd once installed (TLS
 * after a STARTTLS handshake): every later send and receive goes through
 * it. Each hook moves bytes without blocking:
 * - recv: >0 bytes placed in buf, 0 would block (*want_write: waiting for
 *   the fd to become writable, not readable), -ECONNRESET at the peer's
 *   close, other -errno when the stream is broken.
 * - send: >0 bytes of iov taken, 0 would block (*want_read likewise),
 *   -errno. After 0, the next call gets the same bytes again.
 * - pending: bytes already decrypted and buffered inside the transport
 *   (the fd may not be readable while these wait).
 * - shutdown: best-effort end of the stream (TLS close_notify), no waits.
 * - free: at the connection's end.
 */
typedef struct SockTransport {
    ssize_t (*recv)(void *opaque, void *buf, size_t len, bool *want_write);
    ssize_t (*send)(void *opaque, const struct iovec *iov, int niov,
                    bool *want_read);
    size_t (*pending)(void *opaque);
    void (*shutdown)(void *opaque);
    void (*free)(void *opaque);
} SockTransport;

/* The fd (for a transport's handshake), -1 once aborted. */
int sock_conn_fd(const SockConn *conn);
/*
 * Install a transport. Fails with -EPROTO if the peer sent bytes that
 * were already received in the clear but not consumed (a peer must not
 * send ahead of a STARTTLS exchange: such bytes could be injected).
 */
int sock_conn_set_transport(SockConn *conn, const SockTransport *t,
                            void *opaque);
/*
 * Wait until the fd is readable (write false) or writable, by deadline
 * (-ETIMEDOUT after it). For handshakes, while nobody else uses conn.
 */
int coroutine_fn sock_conn_co_wait_io(SockConn *conn, bool write,
                                      int64_t deadline);
/* Bytes received but not yet consumed (in the clear, before a transport). */
size_t sock_conn_buffered(const SockConn *conn);

/* ------------------------------------------------------------------ */
/* Reconnecting client                                                */

typedef struct SockClient SockClient;

typedef struct SockClientOps {
    /*
     * Prepare a new connection before it is handed out: the protocol's
     * handshake or a probe that proves the peer answers, then whatever the
     * protocol needs per connection (e.g. start its receive coroutine).
     * Must finish by deadline. Non-zero: this attempt failed (the client
     * backs off and tries again).
     */
    int coroutine_fn (*co_setup)(void *opaque, SockConn *conn,
                                 int64_t deadline, Error **errp);
} SockClientOps;

/*
 * A client of one address. timeout_ns: how long to keep trying after the
 * connection was lost before giving up (then new requests fail at once while
 * a background loop keeps trying, with back-off, until a connection works
 * again).
 */
SockClient *sock_client_new(const SockAddr *addr, const SockClientOps *ops,
                            void *opaque, int64_t timeout_ns);

/* One connection attempt, no retry (the first connect of an open). */
int coroutine_fn sock_client_co_connect(SockClient *cl, Error **errp);

/* Take conn (the caller's reference) as the current connection, made
 * outside the client (e.g. a first connect with its own retry policy). */
void sock_client_adopt(SockClient *cl, SockConn *conn);

/*
 * The current connection (a new reference), reconnecting if there is none.
 * With deadline 0 this fails at once (-ENOTCONN) while the client has given
 * up; otherwise it waits for a connection until the earlier of deadline and
 * the client's give-up (only later attempts count for a caller that passes
 * a deadline after a give-up). -ESHUTDOWN once the client is closing.
 */
int coroutine_fn sock_client_co_get(SockClient *cl, int64_t deadline,
                                    SockConn **pconn, Error **errp);

/*
 * The protocol stopped using conn (error, EOF, stall). If it is the current
 * connection the next get reconnects; a connection dropped before it was
 * marked healthy counts as a failed attempt for the back-off.
 */
void sock_client_drop(SockClient *cl, SockConn *conn);

/* conn did useful work (a reply to a real request): the back-off resets. */
void sock_client_mark_healthy(SockClient *cl, SockConn *conn);

/* True while new requests fail fast. */
bool sock_client_given_up(const SockClient *cl);
/* Number of connection attempts so far (for tests and statistics). */
uint64_t sock_client_attempts(const SockClient *cl);

/* Stop reconnecting, fail every waiter with -ESHUTDOWN, wait for the
 * reconnect loop to end, free. The protocol closes its connections. */
void coroutine_fn sock_client_co_free(SockClient *cl);

#endif
