/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The sheepdog client (block/sheepdog_client.h): one SDConnCtx per util/
 * socket connection holds the requests sent on it; a receive coroutine per
 * connection matches answers by id, bounds every length before reading, and
 * turns a stalled connection into a draining "zombie".
 */
#include "block/sheepdog_client.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/socket.h"

/* After this many stalls of one write, it is failed once it cannot run. */
#define SD_MAX_DOUBT_ROUNDS 3

typedef struct SDConnCtx SDConnCtx;

typedef enum SDReqState {
    SD_REQ_UNSENT,
    SD_REQ_SENT,        /* in its connection's table, no answer yet */
    SD_REQ_DONE,        /* answered */
    SD_REQ_LOST,        /* its connection ended (or stalled) unanswered */
} SDReqState;

typedef struct SDRequest {
    SheepdogReq hdr;
    SDReqKind kind;
    QEMUIOVector *wqiov;
    size_t wofs;
    QEMUIOVector *rqiov;
    size_t rofs;
    size_t rlen;
    SheepdogRsp rsp;
    SDReqState state;
    bool fully_sent;            /* every byte went to the kernel */
    bool zombie_wait;           /* waited on a stalled connection */
    SDConnCtx *ctx;             /* while SENT */
    int64_t deadline;           /* answer due (connection stalls after) */
    struct SDRequest *prev, *next;  /* ctx's FIFO, oldest first */
    Coroutine *co;              /* waiting for the state to change */
    /* sending: queued on the connection, sent in batches */
    uint8_t hbuf[SD_HDR_SIZE];
    struct SDRequest *send_next;
    bool send_done, send_ok;
    Coroutine *send_co;
} SDRequest;

struct SDConnCtx {
    int refcnt;                 /* receive coroutine + requests SENT */
    SDClient *cl;
    SockConn *sc;
    GHashTable *reqs;           /* id -> SDRequest (SENT here) */
    SDRequest *head, *tail;
    GHashTable *abandoned;      /* id -> max answer length, answer dropped */
    uint32_t next_id;
    bool zombie;                /* stalled: send side shut, still reading */
    bool ended;
    /* requests waiting to be sent; one coroutine flushes them at a time */
    SDRequest *sendq_head, *sendq_tail;
    bool flushing;
};

struct SDClient {
    SockClient *sock;
    int64_t timeout_ns;
    char *where;
    GSList *ctxs;               /* live SDConnCtx */
    Coroutine *free_waiter;
};

static void sd_ctx_unref(SDConnCtx *ctx);
static void coroutine_fn sd_ctx_reader(void *opaque);

/* ------------------------------------------------------------------ */
/* Requests in a connection's table                                   */

static void sd_req_wake(SDRequest *r, SDReqState state)
{
    r->state = state;
    if (r->co) {
        Coroutine *co = r->co;
        r->co = NULL;
        aio_co_wake(co);
    }
}

static void sd_ctx_update_deadline(SDConnCtx *ctx)
{
    if (ctx->ended) {
        return;
    }
    sock_conn_set_recv_deadline(ctx->sc, ctx->zombie || !ctx->head ?
                                SOCK_NO_DEADLINE : ctx->head->deadline);
}

static void sd_ctx_add(SDConnCtx *ctx, SDRequest *r)
{
    r->hdr.id = ctx->next_id++;
    r->ctx = ctx;
    r->state = SD_REQ_SENT;
    r->fully_sent = false;
    r->deadline = qemu_clock_get_ns() + ctx->cl->timeout_ns;
    r->next = NULL;
    r->prev = ctx->tail;
    if (ctx->tail) {
        ctx->tail->next = r;
    } else {
        ctx->head = r;
    }
    ctx->tail = r;
    ctx->refcnt++;
    g_hash_table_insert(ctx->reqs, GUINT_TO_POINTER(r->hdr.id), r);
    if (ctx->head == r) {
        sd_ctx_update_deadline(ctx);
    }
}

/* Take r out of its connection's table (the caller wakes it). */
static void sd_ctx_remove(SDConnCtx *ctx, SDRequest *r)
{
    bool was_head = ctx->head == r;

    g_hash_table_remove(ctx->reqs, GUINT_TO_POINTER(r->hdr.id));
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        ctx->head = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    } else {
        ctx->tail = r->prev;
    }
    r->prev = r->next = NULL;
    if (was_head) {
        sd_ctx_update_deadline(ctx);
    }
}

/* Once nothing that might still execute is left, a zombie has no use. */
static void sd_ctx_zombie_check(SDConnCtx *ctx)
{
    if (ctx->zombie && !ctx->head && !ctx->ended) {
        sock_conn_abort(ctx->sc, -ECONNABORTED);
    }
}

/*
 * No answer in time: stop sending on this connection, let the client
 * reconnect, send idempotent requests again elsewhere; writes and VDI
 * operations stay until this connection answers them or is closed.
 */
static void sd_ctx_stall(SDConnCtx *ctx)
{
    SDRequest *r, *next;

    if (ctx->zombie || ctx->ended) {
        return;
    }
    ctx->zombie = true;
    sock_conn_shutdown_send(ctx->sc);
    sock_client_drop(ctx->cl->sock, ctx->sc);
    for (r = ctx->head; r; r = next) {
        next = r->next;
        if (!r->fully_sent) {
            continue;           /* its sender gets the error and resends */
        }
        if (r->kind == SD_REQ_IDEMPOTENT) {
            g_hash_table_insert(ctx->abandoned, GUINT_TO_POINTER(r->hdr.id),
                                GSIZE_TO_POINTER(r->rlen));
            sd_ctx_remove(ctx, r);
            sd_req_wake(r, SD_REQ_LOST);
        } else {
            r->zombie_wait = true;
        }
    }
    sd_ctx_update_deadline(ctx);
    sd_ctx_zombie_check(ctx);
}

/* The connection is over: every request still here is lost. */
static void sd_ctx_end(SDConnCtx *ctx)
{
    ctx->ended = true;
    sock_conn_abort(ctx->sc, -ECONNABORTED);
    sock_client_drop(ctx->cl->sock, ctx->sc);
    while (ctx->head) {
        SDRequest *r = ctx->head;
        sd_ctx_remove(ctx, r);
        sd_req_wake(r, SD_REQ_LOST);
    }
}

static SDConnCtx *sd_ctx_new(SDClient *cl, SockConn *sc)
{
    SDConnCtx *ctx = g_new0(SDConnCtx, 1);

    ctx->refcnt = 1;            /* the receive coroutine */
    ctx->cl = cl;
    ctx->sc = sock_conn_ref(sc);
    ctx->reqs = g_hash_table_new(g_direct_hash, g_direct_equal);
    ctx->abandoned = g_hash_table_new(g_direct_hash, g_direct_equal);
    ctx->next_id = 1;
    sock_conn_set_opaque(sc, ctx);
    cl->ctxs = g_slist_prepend(cl->ctxs, ctx);
    return ctx;
}

static void sd_ctx_unref(SDConnCtx *ctx)
{
    SDClient *cl = ctx->cl;

    if (--ctx->refcnt > 0) {
        return;
    }
    assert(!ctx->head);
    sock_conn_set_opaque(ctx->sc, NULL);
    sock_conn_unref(ctx->sc);
    g_hash_table_destroy(ctx->reqs);
    g_hash_table_destroy(ctx->abandoned);
    cl->ctxs = g_slist_remove(cl->ctxs, ctx);
    g_free(ctx);
    if (!cl->ctxs && cl->free_waiter) {
        aio_co_wake(cl->free_waiter);
    }
}

/* ------------------------------------------------------------------ */
/* Receiving                                                          */

/* Why an answer cannot be accepted, or NULL. */
static const char *sd_ctx_check_answer(SDConnCtx *ctx, const SheepdogRsp *rsp,
                                       SDRequest **pr, size_t *max_len)
{
    SDRequest *r = g_hash_table_lookup(ctx->reqs, GUINT_TO_POINTER(rsp->id));
    gpointer ab;

    *pr = r;
    if (!r) {
        if (!g_hash_table_lookup_extended(ctx->abandoned,
                                          GUINT_TO_POINTER(rsp->id), NULL,
                                          &ab)) {
            return "answer to an unknown request id";
        }
        *max_len = GPOINTER_TO_SIZE(ab);
    } else {
        if (rsp->opcode != r->hdr.opcode) {
            return "answer with another opcode than its request";
        }
        *max_len = r->rlen;
    }
    if (rsp->data_length > *max_len) {
        return "answer longer than its request allows";
    }
    return NULL;
}

/* Read one answer; false when the connection is over. */
static bool coroutine_fn sd_ctx_recv_one(SDConnCtx *ctx)
{
    uint8_t buf[SD_HDR_SIZE];
    struct iovec iov = { .iov_base = buf, .iov_len = SD_HDR_SIZE };
    const char *bad;
    SheepdogRsp rsp;
    SDRequest *r;
    size_t got, max_len;
    int ret;

    ret = sock_conn_co_recv(ctx->sc, &iov, 1, SD_HDR_SIZE, &got);
    if (ret == -ETIMEDOUT && got == 0) {
        sd_ctx_stall(ctx);
        return true;
    }
    if (ret < 0) {
        return false;           /* EOF, error, or stuck inside a header */
    }
    sd_rsp_decode(buf, &rsp);
    bad = sd_ctx_check_answer(ctx, &rsp, &r, &max_len);
    if (bad) {
        error_report("sheepdog: %s: %s (id %" PRIu32 ", opcode 0x%02x, "
                     "length %" PRIu32 "); reconnecting", ctx->cl->where, bad,
                     rsp.id, rsp.opcode, rsp.data_length);
        return false;
    }
    /* An answer that has started must finish within the timeout. */
    sock_conn_set_recv_deadline(ctx->sc, qemu_clock_get_ns() +
                                ctx->cl->timeout_ns);
    if (r && r->rqiov && rsp.data_length) {
        QEMUIOVector slice;

        qemu_iovec_init(&slice, r->rqiov->niov);
        qemu_iovec_concat(&slice, r->rqiov, r->rofs, rsp.data_length);
        ret = sock_conn_co_recv(ctx->sc, slice.iov, slice.niov,
                                rsp.data_length, NULL);
        qemu_iovec_destroy(&slice);
    } else if (rsp.data_length) {
        ret = sock_conn_co_recv(ctx->sc, NULL, 0, rsp.data_length, NULL);
    }
    if (ret < 0) {
        return false;
    }
    if (!r) {
        g_hash_table_remove(ctx->abandoned, GUINT_TO_POINTER(rsp.id));
    } else {
        if (!ctx->zombie) {
            sock_client_mark_healthy(ctx->cl->sock, ctx->sc);
        }
        sd_ctx_remove(ctx, r);
        r->rsp = rsp;
        sd_req_wake(r, SD_REQ_DONE);
    }
    sd_ctx_update_deadline(ctx);
    sd_ctx_zombie_check(ctx);
    return true;
}

static void coroutine_fn sd_ctx_reader(void *opaque)
{
    SDConnCtx *ctx = opaque;

    while (!sock_conn_recv_error(ctx->sc) && sd_ctx_recv_one(ctx)) {
        /* one answer at a time */
    }
    sd_ctx_end(ctx);
    sd_ctx_unref(ctx);
}

/* ------------------------------------------------------------------ */
/* Connection setup: a probe proves the peer answers                  */

static int coroutine_fn sd_client_setup(void *opaque, SockConn *sc,
                                        int64_t deadline, Error **errp)
{
    SDClient *cl = opaque;
    SheepdogReq req = {
        .proto_ver = SD_PROTO_VER, .opcode = SD_OP_GET_CLUSTER_DEFAULT,
        .id = 0,
    };
    uint8_t buf[SD_HDR_SIZE];
    struct iovec iov = { .iov_base = buf, .iov_len = SD_HDR_SIZE };
    SheepdogRsp rsp;
    int ret;

    sd_req_encode(&req, buf);
    ret = sock_conn_co_send(sc, &iov, 1, deadline, NULL);
    if (ret == 0) {
        sock_conn_set_recv_deadline(sc, deadline);
        ret = sock_conn_co_recv_buf(sc, buf, SD_HDR_SIZE);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "%s does not answer", cl->where);
        return ret;
    }
    sd_rsp_decode(buf, &rsp);
    if (rsp.opcode != SD_OP_GET_CLUSTER_DEFAULT || rsp.id != 0 ||
        rsp.data_length != 0) {
        error_setg(errp, "%s: malformed answer to the connection probe",
                   cl->where);
        return -EPROTO;
    }
    sock_conn_set_recv_deadline(sc, SOCK_NO_DEADLINE);
    aio_co_wake(qemu_coroutine_create(sd_ctx_reader, sd_ctx_new(cl, sc)));
    return 0;
}

static const SockClientOps sd_client_ops = {
    .co_setup = sd_client_setup,
};

SDClient *sd_client_new(const SheepdogName *name, int64_t timeout_ns)
{
    SDClient *cl = g_new0(SDClient, 1);
    SockAddr addr;

    if (name->socket) {
        sock_addr_init_unix(&addr, name->socket);
    } else {
        sock_addr_init_tcp(&addr, name->host, name->port);
    }
    cl->where = sock_addr_describe(&addr);
    cl->timeout_ns = timeout_ns;
    cl->sock = sock_client_new(&addr, &sd_client_ops, cl, timeout_ns);
    sock_addr_clear(&addr);
    return cl;
}

int coroutine_fn sd_client_co_connect(SDClient *cl, Error **errp)
{
    Error *err = NULL;
    int ret = sock_client_co_connect(cl->sock, &err);

    if (ret < 0) {
        error_setg(errp, "sheepdog: %s", error_get_pretty(err));
        error_free(err);
    }
    return ret;
}

void coroutine_fn sd_client_co_free(SDClient *cl)
{
    for (GSList *l = cl->ctxs; l; l = l->next) {
        SDConnCtx *ctx = l->data;
        if (!ctx->ended) {
            sock_conn_abort(ctx->sc, -ESHUTDOWN);
        }
    }
    while (cl->ctxs) {
        cl->free_waiter = qemu_coroutine_self();
        qemu_coroutine_yield();
        cl->free_waiter = NULL;
    }
    sock_client_co_free(cl->sock);
    g_free(cl->where);
    g_free(cl);
}

/* ------------------------------------------------------------------ */
/* Sending                                                            */

static size_t sd_req_wire_len(const SDRequest *r)
{
    return SD_HDR_SIZE + (r->hdr.flags & SD_FLAG_CMD_WRITE ?
                          r->hdr.data_length : 0);
}

/*
 * Send every queued request of ctx, a whole batch per sendmsg() where the
 * socket takes it: with many requests in flight this saves a system call
 * (and a wake-up of the server) per request. A request counts as sent
 * only if all of its bytes went out.
 */
static void coroutine_fn sd_ctx_flush(SDClient *cl, SDConnCtx *ctx,
                                      SockConn *sc)
{
    while (ctx->sendq_head) {
        SDRequest *batch = ctx->sendq_head, *r, *next;
        QEMUIOVector msg;
        size_t sent = 0, off = 0;
        int ret;

        ctx->sendq_head = ctx->sendq_tail = NULL;
        qemu_iovec_init(&msg, 16);
        for (r = batch; r; r = r->send_next) {
            qemu_iovec_add(&msg, r->hbuf, SD_HDR_SIZE);
            if (sd_req_wire_len(r) > SD_HDR_SIZE) {
                qemu_iovec_concat(&msg, r->wqiov, r->wofs,
                                  r->hdr.data_length);
            }
        }
        /* the oldest request's deadline bounds the batch */
        ret = sock_conn_co_send(sc, msg.iov, msg.niov, batch->deadline,
                                &sent);
        qemu_iovec_destroy(&msg);
        for (r = batch; r; r = next) {
            next = r->send_next;
            off += sd_req_wire_len(r);
            r->send_ok = off <= sent;
            r->send_done = true;
            if (r->send_co) {
                aio_co_wake(r->send_co);
                r->send_co = NULL;
            }
        }
        if (ret == -ETIMEDOUT) {
            sd_ctx_stall(ctx);
        } else if (ret < 0) {
            sock_client_drop(cl->sock, sc);
        }
    }
}

/* Send r once on the current connection; false if it must be sent again. */
static bool coroutine_fn sd_client_send_once(SDClient *cl, SDRequest *r,
                                             SockConn *sc)
{
    SDConnCtx *ctx = sock_conn_get_opaque(sc);

    if (!ctx || ctx->zombie || ctx->ended) {
        return false;
    }
    sd_ctx_add(ctx, r);
    sd_req_encode(&r->hdr, r->hbuf);
    r->send_done = r->send_ok = false;
    r->send_co = NULL;
    r->send_next = NULL;
    if (ctx->sendq_tail) {
        ctx->sendq_tail->send_next = r;
    } else {
        ctx->sendq_head = r;
    }
    ctx->sendq_tail = r;
    if (!ctx->flushing) {
        ctx->flushing = true;
        if (ctx->head != r) {
            /* Others are in flight, so completions are arriving: let the
             * coroutines that are ready now queue their requests too. */
            aio_co_wake(qemu_coroutine_self());
            qemu_coroutine_yield();
        }
        sd_ctx_flush(cl, ctx, sc);
        ctx->flushing = false;
    }
    while (!r->send_done) {
        r->send_co = qemu_coroutine_self();
        qemu_coroutine_yield();
    }
    if (!r->send_ok) {
        /* Not all of it left: the server cannot execute it. */
        if (r->state == SD_REQ_SENT) {
            sd_ctx_remove(ctx, r);
        }
        sd_ctx_unref(ctx);
        return false;
    }
    r->fully_sent = true;
    while (r->state == SD_REQ_SENT) {
        r->co = qemu_coroutine_self();
        qemu_coroutine_yield();
    }
    sd_ctx_unref(ctx);
    return true;
}

int coroutine_fn sd_client_co_request(SDClient *cl, SDReqKind kind,
                                      SheepdogReq *hdr, QEMUIOVector *wqiov,
                                      size_t wofs, QEMUIOVector *rqiov,
                                      size_t rofs, size_t rlen,
                                      SheepdogRsp *rsp, Error **errp)
{
    SDRequest r = {
        .hdr = *hdr, .kind = kind, .wqiov = wqiov, .wofs = wofs,
        .rqiov = rqiov, .rofs = rofs, .rlen = rqiov ? rlen : 0,
    };
    int64_t give_up = 0;        /* 0: a new request, fails fast */
    unsigned doubt_rounds = 0;

    r.hdr.proto_ver = r.hdr.proto_ver ? r.hdr.proto_ver : SD_PROTO_VER;
    for (;;) {
        Error *err = NULL;
        SockConn *sc;
        int ret = sock_client_co_get(cl->sock, give_up, &sc, &err);

        if (ret < 0) {
            error_setg(errp, "sheepdog: %s", error_get_pretty(err));
            error_free(err);
            return -EIO;
        }
        r.state = SD_REQ_UNSENT;
        r.zombie_wait = false;
        if (!sd_client_send_once(cl, &r, sc)) {
            sock_conn_unref(sc);
            if (!give_up) {
                give_up = qemu_clock_get_ns() + cl->timeout_ns;
            }
            continue;
        }
        sock_conn_unref(sc);
        if (r.state == SD_REQ_DONE) {
            *rsp = r.rsp;
            return 0;
        }
        /* LOST: sent, and its connection ended or stalled unanswered */
        if (kind == SD_REQ_VDI_OP) {
            error_setg(errp, "sheepdog: connection to %s lost with a VDI "
                       "operation in flight", cl->where);
            return SD_IN_DOUBT;
        }
        if (kind == SD_REQ_WRITE && r.zombie_wait) {
            /* It waited until the server could no longer execute it:
             * sending it again gets a full timeout of its own. */
            if (++doubt_rounds > SD_MAX_DOUBT_ROUNDS) {
                error_setg(errp, "sheepdog: %s stalls every write",
                           cl->where);
                return -EIO;
            }
            give_up = qemu_clock_get_ns() + cl->timeout_ns;
        } else if (!give_up) {
            give_up = qemu_clock_get_ns() + cl->timeout_ns;
        }
    }
}
