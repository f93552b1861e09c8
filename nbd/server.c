/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * NBD server (see server.h and docs/nbd.md): negotiation, then a request
 * loop per client that reads each request whole (header and write payload)
 * and hands it to its own coroutine, which runs it through the backend
 * adapter and sends the reply. Replies are whole messages on the socket
 * layer, so chunks of different requests never interleave inside a chunk.
 */
#include "nbd/server.h"
#include "nbd/nbd-proto.h"
#include "util/socket.h"
#include "util/aio.h"

#define NBD_META_ID_BASE    1
#define NBD_META_ID_DEPTH   2
#define NBD_MAX_EXTENTS     4096    /* descriptors per block status chunk */
#define NBD_PREFERRED_BLOCK 4096
#define NBD_SPARSE_READ_MIN (64 * 1024)   /* smaller reads: one data chunk */
/* Read and write data buffers are page-aligned: with --cache=none the file
 * driver would otherwise bounce every request through an aligned copy. */
#define NBD_BUF_ALIGN       4096
/* Freed buffers of 64 KiB and more are kept for reuse (NBDBufPool): glibc
 * maps every large aligned block afresh, and the page faults and zeroing
 * cost ~25% of the CPU of 1 MiB reads. A kept buffer serves a request of
 * its size or up to 1/8 smaller. */
#define NBD_BUF_POOL_MIN    (64 * 1024)
#define NBD_BUF_POOL_SLOTS  16
#define NBD_BUF_POOL_BYTES  (64 * 1024 * 1024)
/* Read and write buffers of every client together: a request that would
 * go over waits, unless its client has nothing in flight (so every client
 * makes progress even while others do not read their replies; memory
 * stays below the budget plus one maximal request per client). */
#define NBD_SERVER_BUF_BUDGET (256 * 1024 * 1024)

typedef struct NBDClient NBDClient;

/* A data buffer and its capacity (>= the bytes in use). */
typedef struct NBDBuf {
    void *p;
    size_t cap;
} NBDBuf;

typedef struct NBDBufPool {
    NBDBuf slot[NBD_BUF_POOL_SLOTS];    /* p == NULL: free slot */
    size_t bytes;                       /* capacity of the kept buffers */
} NBDBufPool;

struct NBDServer {
    NBDServerConf conf;
    char *name;
    char *description;
    GQueue pending;             /* accepted fds waiting for a slot */
    GList *clients;             /* NBDClient * being served */
    bool shutting_down;
    uint64_t buf_used;          /* bytes of request buffers admitted */
    CoQueue buf_wait;           /* request loops waiting for the budget */
    NBDBufPool pool;
};

struct NBDClient {
    NBDServer *server;
    SockConn *conn;
    uint32_t client_flags;
    bool structured;
    bool tls;                   /* the STARTTLS handshake is done */
    bool meta_base, meta_depth; /* selected contexts */
    bool closing;               /* read no more requests */
    unsigned inflight;
    uint64_t buf_used;          /* this client's part of server->buf_used */
    CoQueue slot_wait;          /* request loop waits for inflight < max */
    Coroutine *main_co;
    bool main_waiting;          /* main_co waits for inflight == 0 */
    int64_t handshake_deadline;
};

typedef struct NBDRequest {
    NBDClient *client;
    uint16_t flags;
    uint16_t type;
    uint64_t handle;
    uint64_t offset;
    uint32_t len;
    uint32_t cost;              /* buffer bytes held in the budget */
    NBDBuf data;                /* write payload */
} NBDRequest;

static void nbd_client_start(NBDServer *s, int fd);

/* A data buffer of at least size bytes (NBD_BUF_ALIGN), from the pool
 * when it holds one that fits; false when memory is short. */
static bool nbd_buf_try_alloc(NBDServer *s, NBDBuf *b, size_t size)
{
    NBDBufPool *pool = &s->pool;

    size = MAX(size, 1);
    if (size >= NBD_BUF_POOL_MIN) {
        for (int i = 0; i < NBD_BUF_POOL_SLOTS; i++) {
            NBDBuf *k = &pool->slot[i];

            if (k->p && k->cap >= size && k->cap - k->cap / 8 <= size) {
                *b = *k;
                k->p = NULL;
                pool->bytes -= b->cap;
                return true;
            }
        }
    }
    b->cap = size;
    if (posix_memalign(&b->p, NBD_BUF_ALIGN, size) != 0) {
        b->p = NULL;
        return false;
    }
    return true;
}

static void nbd_buf_alloc(NBDServer *s, NBDBuf *b, size_t size)
{
    if (!nbd_buf_try_alloc(s, b, size)) {
        fprintf(stderr, "qemu-nbd: out of memory (%zu bytes)\n", size);
        abort();
    }
}

/* Keep a large buffer for reuse while the pool has room, else free it. */
static void nbd_buf_free(NBDServer *s, NBDBuf *b)
{
    NBDBufPool *pool = &s->pool;

    if (!b->p) {
        return;
    }
    if (b->cap >= NBD_BUF_POOL_MIN && !s->shutting_down &&
        pool->bytes + b->cap <= NBD_BUF_POOL_BYTES) {
        for (int i = 0; i < NBD_BUF_POOL_SLOTS; i++) {
            if (!pool->slot[i].p) {
                pool->slot[i] = *b;
                pool->bytes += b->cap;
                b->p = NULL;
                return;
            }
        }
    }
    qemu_vfree(b->p);
    b->p = NULL;
}

static void nbd_buf_pool_clear(NBDServer *s)
{
    for (int i = 0; i < NBD_BUF_POOL_SLOTS; i++) {
        qemu_vfree(s->pool.slot[i].p);
        s->pool.slot[i].p = NULL;
    }
    s->pool.bytes = 0;
}

static void nbd_request_free(NBDServer *s, NBDRequest *req)
{
    if (req->cost) {
        s->buf_used -= req->cost;
        req->client->buf_used -= req->cost;
        qemu_co_queue_restart_all(&s->buf_wait);
    }
    nbd_buf_free(s, &req->data);
    g_free(req);
}

static int64_t nbd_deadline(int64_t ns)
{
    return ns > 0 ? qemu_clock_get_ns() + ns : SOCK_NO_DEADLINE;
}

/* ------------------------------------------------------------------ */
/* Negotiation                                                        */

static int coroutine_fn nbd_send(NBDClient *c, const void *buf, size_t len,
                                 const void *buf2, size_t len2)
{
    struct iovec iov[2] = {
        { .iov_base = (void *)buf, .iov_len = len },
        { .iov_base = (void *)buf2, .iov_len = len2 },
    };

    return sock_conn_co_send(c->conn, iov, len2 ? 2 : 1,
                             nbd_deadline(c->server->conf.io_ns), NULL);
}

static int coroutine_fn nbd_opt_reply(NBDClient *c, uint32_t opt,
                                      uint32_t type, const void *data,
                                      uint32_t len)
{
    uint8_t hdr[NBD_REP_HDR_LEN], *p = hdr;

    p = nbd_put64(p, NBD_REP_MAGIC);
    p = nbd_put32(p, opt);
    p = nbd_put32(p, type);
    nbd_put32(p, len);
    return nbd_send(c, hdr, sizeof(hdr), data, len);
}

static int coroutine_fn nbd_opt_error(NBDClient *c, uint32_t opt,
                                      uint32_t type, const char *msg)
{
    if (c->server->conf.verbose) {
        fprintf(stderr, "nbd: option %s: %s\n", nbd_opt_name(opt), msg);
    }
    return nbd_opt_reply(c, opt, type, msg, strlen(msg));
}

/* NBD_REP_INFO with a 2-byte type first */
static int coroutine_fn nbd_opt_info(NBDClient *c, uint32_t opt,
                                     uint16_t type, const void *data,
                                     uint32_t len)
{
    g_autofree uint8_t *buf = g_malloc(2 + len);

    nbd_put16(buf, type);
    memcpy(buf + 2, data, len);
    return nbd_opt_reply(c, opt, NBD_REP_INFO, buf, 2 + len);
}

static uint16_t nbd_export_flags(NBDClient *c)
{
    NBDServer *s = c->server;
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                 NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;

    if (nbd_backend_read_only(s->conf.be)) {
        f |= NBD_FLAG_READ_ONLY;
    } else {
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
             NBD_FLAG_SEND_FAST_ZERO;
    }
    if (c->structured) {
        f |= NBD_FLAG_SEND_DF;
    }
    if (s->conf.multi_conn) {
        f |= NBD_FLAG_CAN_MULTI_CONN;
    }
    return f;
}

static bool nbd_name_matches(NBDServer *s, const uint8_t *name, uint32_t len)
{
    return len == strlen(s->name) && memcmp(name, s->name, len) == 0;
}

/* NBD_OPT_INFO / NBD_OPT_GO. Returns 1 to enter transmission, 0 to go on
 * negotiating, <0 to drop the client. */
static int coroutine_fn nbd_handle_info(NBDClient *c, uint32_t opt,
                                        const uint8_t *data, uint32_t len)
{
    NBDServer *s = c->server;
    uint32_t namelen;
    uint16_t nreq;
    bool want_name = false, want_desc = false, want_bs = false;
    uint8_t buf[12], *p;
    int ret;

    if (len < 6) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    namelen = nbd_get32(data);
    if (namelen > NBD_MAX_STRING_SIZE || namelen > len - 6) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID, "bad name length");
    }
    nreq = nbd_get16(data + 4 + namelen);
    if (len != 6 + namelen + 2u * nreq) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                             "bad number of information requests");
    }
    for (unsigned i = 0; i < nreq; i++) {
        switch (nbd_get16(data + 6 + namelen + 2 * i)) {
        case NBD_INFO_NAME: want_name = true; break;
        case NBD_INFO_DESCRIPTION: want_desc = true; break;
        case NBD_INFO_BLOCK_SIZE: want_bs = true; break;
        default: break;     /* unknown requests are ignored */
        }
    }
    if (!nbd_name_matches(s, data + 4, namelen)) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "export not found");
    }
    if (want_name) {
        ret = nbd_opt_info(c, opt, NBD_INFO_NAME, s->name, strlen(s->name));
        if (ret < 0) {
            return ret;
        }
    }
    if (want_desc && s->description) {
        ret = nbd_opt_info(c, opt, NBD_INFO_DESCRIPTION, s->description,
                           strlen(s->description));
        if (ret < 0) {
            return ret;
        }
    }
    /* A client that did not ask for block sizes may send any alignment:
     * the block layer does the read-modify-write then. */
    p = nbd_put32(buf, (want_bs || opt == NBD_OPT_INFO) ?
                  nbd_backend_alignment(s->conf.be) : 1);
    p = nbd_put32(p, MAX(NBD_PREFERRED_BLOCK,
                         nbd_backend_alignment(s->conf.be)));
    nbd_put32(p, NBD_MAX_BUFFER_SIZE);
    ret = nbd_opt_info(c, opt, NBD_INFO_BLOCK_SIZE, buf, 12);
    if (ret < 0) {
        return ret;
    }
    p = nbd_put64(buf, nbd_backend_size(s->conf.be));
    nbd_put16(p, nbd_export_flags(c));
    ret = nbd_opt_info(c, opt, NBD_INFO_EXPORT, buf, 10);
    if (ret < 0) {
        return ret;
    }
    ret = nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    return opt == NBD_OPT_GO ? 1 : 0;
}

static int coroutine_fn nbd_meta_reply(NBDClient *c, uint32_t opt,
                                       uint32_t id, const char *name)
{
    size_t n = strlen(name);
    g_autofree uint8_t *buf = g_malloc(4 + n);

    nbd_put32(buf, id);
    memcpy(buf + 4, name, n);
    return nbd_opt_reply(c, opt, NBD_REP_META_CONTEXT, buf, 4 + n);
}

static bool nbd_query_is(const uint8_t *q, uint32_t qlen, const char *s)
{
    return qlen == strlen(s) && memcmp(q, s, qlen) == 0;
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT */
static int coroutine_fn nbd_handle_meta(NBDClient *c, uint32_t opt,
                                        const uint8_t *data, uint32_t len)
{
    NBDServer *s = c->server;
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    bool base = false, depth = false;
    uint32_t namelen, nq, pos;
    int ret;

    if (set && !c->structured) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                             "structured replies not negotiated");
    }
    if (len < 8) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    namelen = nbd_get32(data);
    if (namelen > NBD_MAX_STRING_SIZE || namelen > len - 8) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID, "bad name length");
    }
    nq = nbd_get32(data + 4 + namelen);
    pos = 8 + namelen;
    /* Parse every query before answering, so a malformed one fails the
     * whole option. */
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t qlen;

        if (len - pos < 4) {
            return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                                 "truncated query");
        }
        qlen = nbd_get32(data + pos);
        pos += 4;
        if (qlen > NBD_MAX_STRING_SIZE || qlen > len - pos) {
            return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                                 "bad query length");
        }
        const uint8_t *q = data + pos;
        pos += qlen;
        if (nbd_query_is(q, qlen, NBD_META_BASE_ALLOCATION) ||
            (!set && nbd_query_is(q, qlen, "base:"))) {
            base = true;
        } else if (s->conf.allocation_depth &&
                   (nbd_query_is(q, qlen, NBD_META_QEMU_ALLOC_DEPTH) ||
                    (!set && nbd_query_is(q, qlen, "qemu:")))) {
            depth = true;
        }
    }
    if (pos != len) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                             "trailing bytes in option");
    }
    if (!nbd_name_matches(s, data + 4, namelen)) {
        return nbd_opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "export not found");
    }
    if (!set && nq == 0) {
        base = true;
        depth = s->conf.allocation_depth;
    }
    if (base) {
        ret = nbd_meta_reply(c, opt, NBD_META_ID_BASE,
                             NBD_META_BASE_ALLOCATION);
        if (ret < 0) {
            return ret;
        }
    }
    if (depth) {
        ret = nbd_meta_reply(c, opt, NBD_META_ID_DEPTH,
                             NBD_META_QEMU_ALLOC_DEPTH);
        if (ret < 0) {
            return ret;
        }
    }
    if (set) {
        c->meta_base = base;
        c->meta_depth = depth;
    }
    return nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

static int coroutine_fn nbd_handle_list(NBDClient *c, uint32_t len)
{
    NBDServer *s = c->server;
    size_t nlen = strlen(s->name);
    size_t dlen = s->description ? strlen(s->description) : 0;
    g_autofree uint8_t *buf = NULL;
    int ret;

    if (len) {
        return nbd_opt_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                             "list takes no data");
    }
    buf = g_malloc(4 + nlen + dlen);
    nbd_put32(buf, nlen);
    memcpy(buf + 4, s->name, nlen);
    if (dlen) {
        memcpy(buf + 4 + nlen, s->description, dlen);
    }
    ret = nbd_opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf,
                        4 + nlen + dlen);
    if (ret < 0) {
        return ret;
    }
    return nbd_opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_EXPORT_NAME: no reply header; the export data, or close. */
static int coroutine_fn nbd_handle_export_name(NBDClient *c,
                                               const uint8_t *data,
                                               uint32_t len)
{
    NBDServer *s = c->server;
    uint8_t buf[10 + 124] = { 0 };
    uint8_t *p;

    if (!nbd_name_matches(s, data, len)) {
        return -ENOENT;
    }
    p = nbd_put64(buf, nbd_backend_size(s->conf.be));
    nbd_put16(p, nbd_export_flags(c));
    return nbd_send(c, buf, (c->client_flags & NBD_FLAG_C_NO_ZEROES) ?
                    10 : sizeof(buf), NULL, 0);
}

/* NBD_OPT_STARTTLS: acknowledge, then the TLS handshake on the socket. */
static int coroutine_fn nbd_handle_starttls(NBDClient *c, uint32_t len)
{
    NBDServer *s = c->server;
    Error *err = NULL;
    int ret;

    if (!s->conf.tls) {
        return nbd_opt_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
                             "TLS not configured");
    }
    if (len) {
        return nbd_opt_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                             "option takes no data");
    }
    if (c->tls) {
        return nbd_opt_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                             "TLS already negotiated");
    }
    ret = nbd_opt_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    /* The handshake counts against the negotiation's deadline. */
    ret = tls_co_handshake(c->conn, s->conf.tls, NULL,
                           c->handshake_deadline, &err);
    if (ret < 0) {
        if (s->conf.verbose) {
            fprintf(stderr, "nbd: %s\n", error_get_pretty(err));
        }
        error_free(err);
        return ret;
    }
    c->tls = true;
    return 0;
}

/* Returns 0 once in transmission, <0 to drop the client. */
static int coroutine_fn nbd_negotiate(NBDClient *c)
{
    NBDServer *s = c->server;
    uint8_t buf[NBD_HANDSHAKE_LEN], *p = buf;
    int ret;

    c->handshake_deadline = nbd_deadline(s->conf.handshake_ns);
    sock_conn_set_recv_deadline(c->conn, c->handshake_deadline);
    p = nbd_put64(p, NBD_MAGIC);
    p = nbd_put64(p, NBD_OPTS_MAGIC);
    nbd_put16(p, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    ret = nbd_send(c, buf, NBD_HANDSHAKE_LEN, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    ret = sock_conn_co_recv_buf(c->conn, buf, 4);
    if (ret < 0) {
        return ret;
    }
    c->client_flags = nbd_get32(buf);
    if (c->client_flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE |
                            NBD_FLAG_C_NO_ZEROES)) {
        return -EINVAL;
    }

    for (;;) {
        uint8_t hdr[NBD_OPT_HDR_LEN];
        g_autofree uint8_t *data = NULL;
        uint32_t opt, len;

        ret = sock_conn_co_recv_buf(c->conn, hdr, sizeof(hdr));
        if (ret < 0) {
            return ret;
        }
        if (nbd_get64(hdr) != NBD_OPTS_MAGIC) {
            return -EINVAL;
        }
        opt = nbd_get32(hdr + 8);
        len = nbd_get32(hdr + 12);
        if (len > NBD_MAX_OPTION_SIZE) {
            return -EINVAL;     /* no option we know needs that much */
        }
        data = g_malloc(len + 1);
        ret = sock_conn_co_recv_buf(c->conn, data, len);
        if (ret < 0) {
            return ret;
        }
        if (!(c->client_flags & NBD_FLAG_C_FIXED_NEWSTYLE) &&
            opt != NBD_OPT_EXPORT_NAME) {
            return -EINVAL;     /* no way to report an error to it */
        }
        if (s->shutting_down && opt != NBD_OPT_ABORT) {
            nbd_opt_error(c, opt, NBD_REP_ERR_SHUTDOWN, "server shutting down");
            return -ESHUTDOWN;
        }
        if (s->conf.tls && !c->tls && opt != NBD_OPT_STARTTLS &&
            opt != NBD_OPT_ABORT) {
            if (opt == NBD_OPT_EXPORT_NAME) {
                return -EACCES;     /* no way to report an error to it */
            }
            g_autofree char *msg = g_strdup_printf(
                "Option 0x%" PRIx32 " not permitted before TLS", opt);
            ret = nbd_opt_error(c, opt, NBD_REP_ERR_TLS_REQD, msg);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        switch (opt) {
        case NBD_OPT_EXPORT_NAME:
            ret = nbd_handle_export_name(c, data, len);
            return ret;
        case NBD_OPT_ABORT:
            nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            return -ECONNABORTED;
        case NBD_OPT_LIST:
            ret = nbd_handle_list(c, len);
            break;
        case NBD_OPT_STARTTLS:
            ret = nbd_handle_starttls(c, len);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            ret = nbd_handle_info(c, opt, data, len);
            if (ret == 1) {
                return 0;
            }
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len) {
                ret = nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                                    "option takes no data");
            } else if (c->structured) {
                ret = nbd_opt_error(c, opt, NBD_REP_ERR_INVALID,
                                    "already negotiated");
            } else {
                c->structured = true;
                ret = nbd_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            ret = nbd_handle_meta(c, opt, data, len);
            break;
        default:
            ret = nbd_opt_error(c, opt, NBD_REP_ERR_UNSUP,
                                "option not supported");
            break;
        }
        if (ret < 0) {
            return ret;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Replies                                                            */

static int coroutine_fn nbd_simple_reply(NBDRequest *req, int err,
                                         const void *data, size_t len)
{
    uint8_t hdr[NBD_SIMPLE_REPLY_LEN], *p = hdr;

    p = nbd_put32(p, NBD_SIMPLE_REPLY_MAGIC);
    p = nbd_put32(p, nbd_errno_to_wire(err));
    nbd_put64(p, req->handle);
    return nbd_send(req->client, hdr, sizeof(hdr), data, err ? 0 : len);
}

/* One structured chunk: header, a fixed part, then an optional payload. */
static int coroutine_fn nbd_chunk(NBDRequest *req, uint16_t flags,
                                  uint16_t type, const void *fixed,
                                  size_t flen, const void *data, size_t dlen)
{
    uint8_t hdr[NBD_STRUCTURED_REPLY_LEN + 16], *p = hdr;
    struct iovec iov[2];

    assert(flen <= 16);
    p = nbd_put32(p, NBD_STRUCTURED_REPLY_MAGIC);
    p = nbd_put16(p, flags);
    p = nbd_put16(p, type);
    p = nbd_put64(p, req->handle);
    p = nbd_put32(p, flen + dlen);
    if (flen) {
        memcpy(p, fixed, flen);
    }
    iov[0].iov_base = hdr;
    iov[0].iov_len = NBD_STRUCTURED_REPLY_LEN + flen;
    iov[1].iov_base = (void *)data;
    iov[1].iov_len = dlen;
    return sock_conn_co_send(req->client->conn, iov, dlen ? 2 : 1,
                             nbd_deadline(req->client->server->conf.io_ns),
                             NULL);
}

static int coroutine_fn nbd_reply_error(NBDRequest *req, int err)
{
    uint8_t fixed[6], *p = fixed;

    if (!req->client->structured) {
        return nbd_simple_reply(req, err, NULL, 0);
    }
    p = nbd_put32(p, nbd_errno_to_wire(err));
    nbd_put16(p, 0);
    return nbd_chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                     fixed, 6, NULL, 0);
}

/* Success without data (everything but READ and BLOCK_STATUS). */
static int coroutine_fn nbd_reply_done(NBDRequest *req)
{
    if (!req->client->structured) {
        return nbd_simple_reply(req, 0, NULL, 0);
    }
    return nbd_chunk(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                     NULL, 0, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* Commands                                                           */

/* nbd_do_read's body; buf (empty at first) is freed by the caller. */
static int coroutine_fn nbd_do_read_buf(NBDRequest *req, NBDBuf *b)
{
    NBDClient *c = req->client;
    NBDServer *s = c->server;
    NBDBackend *be = s->conf.be;
    int64_t off = req->offset, end = req->offset + req->len;
    void *buf;
    int ret;

    /* Small reads go out as one data chunk: asking block status first
     * would cost more than the zeroes it could save. */
    if (!c->structured || (req->flags & NBD_CMD_FLAG_DF) ||
        req->len < NBD_SPARSE_READ_MIN) {
        nbd_buf_alloc(s, b, req->len);
        buf = b->p;
        ret = nbd_backend_co_read(be, off, req->len, buf);
        if (ret < 0) {
            return nbd_reply_error(req, ret);
        }
        if (!c->structured) {
            return nbd_simple_reply(req, 0, buf, req->len);
        }
        uint8_t fixed[8];
        nbd_put64(fixed, off);
        return nbd_chunk(req, NBD_REPLY_FLAG_DONE,
                         NBD_REPLY_TYPE_OFFSET_DATA, fixed, 8, buf, req->len);
    }
    if (req->len == 0) {
        return nbd_reply_done(req);
    }
    /* Sparse read: zero ranges go out as hole chunks. */
    while (off < end) {
        int64_t pnum;
        bool hole, zero;
        uint16_t done;
        uint8_t fixed[12];

        ret = nbd_backend_co_block_status(be, off, end - off, &pnum,
                                          &hole, &zero, NULL);
        if (ret < 0) {
            zero = false;           /* read it: the read reports errors */
            pnum = end - off;
        }
        pnum = MIN(pnum, end - off);
        done = off + pnum == end ? NBD_REPLY_FLAG_DONE : 0;
        nbd_put64(fixed, off);
        if (zero) {
            nbd_put32(fixed + 8, pnum);
            ret = nbd_chunk(req, done, NBD_REPLY_TYPE_OFFSET_HOLE,
                            fixed, 12, NULL, 0);
        } else {
            if (b->cap < (size_t)pnum) {
                nbd_buf_free(s, b);
                nbd_buf_alloc(s, b, pnum);
            }
            buf = b->p;
            ret = nbd_backend_co_read(be, off, pnum, buf);
            if (ret < 0) {
                return nbd_reply_error(req, ret);
            }
            ret = nbd_chunk(req, done, NBD_REPLY_TYPE_OFFSET_DATA,
                            fixed, 8, buf, pnum);
        }
        if (ret < 0) {
            return ret;
        }
        off += pnum;
    }
    return 0;
}

static int coroutine_fn nbd_do_read(NBDRequest *req)
{
    NBDBuf b = { NULL, 0 };
    int ret = nbd_do_read_buf(req, &b);

    nbd_buf_free(req->client->server, &b);
    return ret;
}

/* Extents of one context over [offset, +len) into desc (pairs of u32). */
static int coroutine_fn nbd_collect_extents(NBDRequest *req, bool depth_ctx,
                                            uint8_t *desc, unsigned max,
                                            unsigned *count)
{
    NBDBackend *be = req->client->server->conf.be;
    int64_t off = req->offset, end = req->offset + req->len;
    uint32_t last_flags = 0;
    unsigned n = 0;

    while (off < end) {
        int64_t pnum;
        bool hole, zero;
        int depth, ret;
        uint32_t flags;

        ret = nbd_backend_co_block_status(be, off, end - off, &pnum,
                                          &hole, &zero, &depth);
        if (ret < 0) {
            return ret;
        }
        pnum = MIN(pnum, end - off);
        flags = depth_ctx ? (uint32_t)depth :
                (hole ? NBD_STATE_HOLE : 0) | (zero ? NBD_STATE_ZERO : 0);
        if (n && flags == last_flags &&
            nbd_get32(desc + 8 * (n - 1)) + (uint64_t)pnum <= UINT32_MAX) {
            nbd_put32(desc + 8 * (n - 1),
                      nbd_get32(desc + 8 * (n - 1)) + pnum);
        } else {
            if (n == max) {
                break;
            }
            nbd_put32(desc + 8 * n, pnum);
            nbd_put32(desc + 8 * n + 4, flags);
            last_flags = flags;
            n++;
        }
        off += pnum;
    }
    *count = n;
    return 0;
}

static int coroutine_fn nbd_do_block_status(NBDRequest *req)
{
    NBDClient *c = req->client;
    unsigned max = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_MAX_EXTENTS;
    g_autofree uint8_t *desc = g_malloc(8 * max);
    bool ctx[2] = { c->meta_base, c->meta_depth };
    int ret;

    for (int i = 0; i < 2; i++) {
        uint8_t fixed[4];
        unsigned n;
        bool last = i == 1 || !ctx[1];

        if (!ctx[i]) {
            continue;
        }
        ret = nbd_collect_extents(req, i == 1, desc, max, &n);
        if (ret < 0) {
            return nbd_reply_error(req, ret);
        }
        nbd_put32(fixed, i == 0 ? NBD_META_ID_BASE : NBD_META_ID_DEPTH);
        ret = nbd_chunk(req, last ? NBD_REPLY_FLAG_DONE : 0,
                        NBD_REPLY_TYPE_BLOCK_STATUS, fixed, 4, desc, 8 * n);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int coroutine_fn nbd_do_request(NBDRequest *req)
{
    NBDBackend *be = req->client->server->conf.be;
    int fua = (req->flags & NBD_CMD_FLAG_FUA) ? NBD_BE_FUA : 0;
    int ret = 0;

    switch (req->type) {
    case NBD_CMD_READ:
        return nbd_do_read(req);
    case NBD_CMD_BLOCK_STATUS:
        return nbd_do_block_status(req);
    case NBD_CMD_WRITE:
        ret = nbd_backend_co_write(be, req->offset, req->len, req->data.p, fua);
        break;
    case NBD_CMD_WRITE_ZEROES: {
        int f = fua;

        if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
            f |= NBD_BE_MAY_UNMAP;
        }
        if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
            f |= NBD_BE_NO_FALLBACK;
        }
        ret = nbd_backend_co_zero(be, req->offset, req->len, f);
        if (ret < 0 && (req->flags & NBD_CMD_FLAG_FAST_ZERO)) {
            ret = -ENOTSUP;
        }
        break;
    }
    case NBD_CMD_TRIM:
        ret = nbd_backend_co_trim(be, req->offset, req->len, fua);
        break;
    case NBD_CMD_FLUSH:
        ret = nbd_backend_co_flush(be);
        break;
    case NBD_CMD_CACHE:
        break;          /* advice; the host page cache does the rest */
    }
    return ret < 0 ? nbd_reply_error(req, ret) : nbd_reply_done(req);
}

/* 0 if the request may run, else the error to reply with. */
static int nbd_check_request(NBDClient *c, NBDRequest *req)
{
    NBDBackend *be = c->server->conf.be;
    uint16_t allowed = NBD_CMD_FLAG_FUA;
    bool writes = false;

    switch (req->type) {
    case NBD_CMD_READ:
        if (c->structured) {
            allowed |= NBD_CMD_FLAG_DF;
        }
        if (req->len > NBD_MAX_BUFFER_SIZE) {
            return -EINVAL;
        }
        break;
    case NBD_CMD_WRITE:
    case NBD_CMD_TRIM:
        writes = true;
        break;
    case NBD_CMD_WRITE_ZEROES:
        writes = true;
        allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        break;
    case NBD_CMD_FLUSH:
    case NBD_CMD_CACHE:
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (!c->meta_base && !c->meta_depth) {
            return -EINVAL;
        }
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        return -EINVAL;
    }
    if (req->flags & ~allowed) {
        return -EINVAL;
    }
    if (writes && nbd_backend_read_only(be)) {
        return -EPERM;
    }
    if (req->type == NBD_CMD_FLUSH) {
        return 0;
    }
    if (req->offset > (uint64_t)nbd_backend_size(be) ||
        req->len > (uint64_t)nbd_backend_size(be) - req->offset) {
        return writes ? -ENOSPC : -EINVAL;
    }
    return 0;
}

static void coroutine_fn nbd_request_co(void *opaque)
{
    NBDRequest *req = opaque;
    NBDClient *c = req->client;
    int ret;

    ret = nbd_do_request(req);
    if (ret < 0) {
        /* The reply could not be sent: nothing more can go right. */
        c->closing = true;
        sock_conn_abort(c->conn, ret);
    }
    nbd_request_free(c->server, req);
    c->inflight--;
    qemu_co_queue_next(&c->slot_wait);
    if (c->main_waiting && c->inflight == 0) {
        c->main_waiting = false;
        aio_co_wake(c->main_co);
    }
}

/* Read one request whole. 1: run it, 0: stop (DISC), <0: drop client. */
static int coroutine_fn nbd_read_request(NBDClient *c, NBDRequest *req)
{
    NBDServer *s = c->server;
    uint8_t hdr[NBD_REQUEST_LEN];
    int ret;

    /* Idle clients may wait forever; once a request has started it has to
     * arrive (header and payload) in time. */
    sock_conn_set_recv_deadline(c->conn, SOCK_NO_DEADLINE);
    ret = sock_conn_co_recv_buf(c->conn, hdr, 1);
    if (ret < 0) {
        return ret;
    }
    sock_conn_set_recv_deadline(c->conn, nbd_deadline(s->conf.io_ns));
    ret = sock_conn_co_recv_buf(c->conn, hdr + 1, sizeof(hdr) - 1);
    if (ret < 0) {
        return ret;
    }
    if (nbd_get32(hdr) != NBD_REQUEST_MAGIC) {
        return -EINVAL;
    }
    req->flags = nbd_get16(hdr + 4);
    req->type = nbd_get16(hdr + 6);
    req->handle = nbd_get64(hdr + 8);
    req->offset = nbd_get64(hdr + 16);
    req->len = nbd_get32(hdr + 24);
    if (s->conf.verbose) {
        fprintf(stderr, "nbd: %s offset %" PRIu64 " len %" PRIu32 "\n",
                nbd_cmd_name(req->type), req->offset, req->len);
    }
    if (req->type == NBD_CMD_DISC) {
        return 0;
    }
    /* The payload follows whatever we think of the request. Beyond what
     * any valid write carries, the stream cannot be trusted. */
    if (req->type == NBD_CMD_WRITE && req->len > NBD_MAX_BUFFER_SIZE) {
        return -EINVAL;
    }
    if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
        req->len <= NBD_MAX_BUFFER_SIZE) {
        while (c->buf_used && s->buf_used + req->len > NBD_SERVER_BUF_BUDGET &&
               !c->closing) {
            qemu_co_queue_wait(&s->buf_wait, NULL);
        }
        if (c->closing) {
            return -ESHUTDOWN;
        }
        req->cost = req->len;
        s->buf_used += req->cost;
        c->buf_used += req->cost;
    }
    if (req->type == NBD_CMD_WRITE) {
        /* A fresh deadline for the payload after any wait for the budget */
        sock_conn_set_recv_deadline(c->conn, nbd_deadline(s->conf.io_ns));
        if (!nbd_buf_try_alloc(s, &req->data, req->len)) {
            return -ENOMEM;
        }
        ret = sock_conn_co_recv_buf(c->conn, req->data.p, req->len);
        if (ret < 0) {
            return ret;
        }
    }
    return 1;
}

static void nbd_client_end(NBDClient *c)
{
    NBDServer *s = c->server;

    s->clients = g_list_remove(s->clients, c);
    sock_conn_unref(c->conn);
    g_free(c);
    /* A waiting connection takes the slot. */
    while (!s->shutting_down && !g_queue_is_empty(&s->pending) &&
           (!s->conf.max_clients ||
            g_list_length(s->clients) < s->conf.max_clients)) {
        nbd_client_start(s, GPOINTER_TO_INT(g_queue_pop_head(&s->pending)));
    }
    if (s->conf.client_gone) {
        s->conf.client_gone(s->conf.opaque, nbd_server_clients(s));
    }
}

static void coroutine_fn nbd_client_co(void *opaque)
{
    NBDClient *c = opaque;
    NBDServer *s = c->server;
    int ret;

    ret = nbd_negotiate(c);
    if (ret < 0) {
        if (s->conf.verbose) {
            fprintf(stderr, "nbd: negotiation ended: %s\n", strerror(-ret));
        }
        goto out;
    }
    while (!c->closing) {
        NBDRequest *req;

        while (c->inflight >= s->conf.max_requests && !c->closing) {
            qemu_co_queue_wait(&c->slot_wait, NULL);
        }
        if (c->closing) {
            break;
        }
        req = g_new0(NBDRequest, 1);
        req->client = c;
        ret = nbd_read_request(c, req);
        if (ret <= 0 || c->closing) {
            nbd_request_free(s, req);
            if (ret < 0 && !c->closing && s->conf.verbose) {
                fprintf(stderr, "nbd: client dropped: %s\n", strerror(-ret));
            }
            if (ret < 0 && ret != -ECONNRESET && !c->closing) {
                /* Protocol violation or stall: nothing more is read. */
                c->closing = true;
                sock_conn_abort(c->conn, -EPROTO);
            }
            break;
        }
        ret = nbd_check_request(c, req);
        if (ret < 0) {
            if (nbd_reply_error(req, ret) < 0) {
                nbd_request_free(s, req);
                break;
            }
            nbd_request_free(s, req);
            continue;
        }
        c->inflight++;
        qemu_coroutine_enter(qemu_coroutine_create(nbd_request_co, req));
    }
    c->closing = true;
    /* Requests already read complete and are answered (or fail to be). */
    while (c->inflight) {
        c->main_waiting = true;
        qemu_coroutine_yield();
    }
out:
    nbd_client_end(c);
}

static void nbd_client_start(NBDServer *s, int fd)
{
    NBDClient *c = g_new0(NBDClient, 1);

    c->server = s;
    c->conn = sock_conn_new(fd);
    qemu_co_queue_init(&c->slot_wait);
    s->clients = g_list_prepend(s->clients, c);
    c->main_co = qemu_coroutine_create(nbd_client_co, c);
    qemu_coroutine_enter(c->main_co);
}

/* ------------------------------------------------------------------ */
/* Server                                                             */

NBDServer *nbd_server_new(const NBDServerConf *conf)
{
    NBDServer *s = g_new0(NBDServer, 1);

    s->conf = *conf;
    s->name = g_strdup(conf->name ? conf->name : "");
    s->description = g_strdup(conf->description);
    s->conf.name = s->name;
    s->conf.description = s->description;
    if (!s->conf.max_requests) {
        s->conf.max_requests = 16;
    }
    g_queue_init(&s->pending);
    qemu_co_queue_init(&s->buf_wait);
    return s;
}

void nbd_server_accept(void *opaque, int fd)
{
    NBDServer *s = opaque;

    if (s->shutting_down) {
        close(fd);
        return;
    }
    if (s->conf.max_clients &&
        g_list_length(s->clients) >= s->conf.max_clients) {
        /* Like a full listen backlog: wait for a slot, within bounds. */
        if (g_queue_get_length(&s->pending) >= s->conf.max_pending) {
            close(fd);
        } else {
            g_queue_push_tail(&s->pending, GINT_TO_POINTER(fd));
        }
        return;
    }
    nbd_client_start(s, fd);
}

unsigned nbd_server_clients(NBDServer *s)
{
    return g_list_length(s->clients) + g_queue_get_length(&s->pending);
}

void nbd_server_shutdown(NBDServer *s)
{
    s->shutting_down = true;
    while (!g_queue_is_empty(&s->pending)) {
        close(GPOINTER_TO_INT(g_queue_pop_head(&s->pending)));
    }
    for (GList *l = s->clients; l; l = l->next) {
        NBDClient *c = l->data;

        c->closing = true;
        /* Wake the request loop: an idle wait ends at once, and so does a
         * request still arriving (it was never acknowledged). */
        sock_conn_set_recv_deadline(c->conn, qemu_clock_get_ns());
        qemu_co_queue_restart_all(&c->slot_wait);
    }
    qemu_co_queue_restart_all(&s->buf_wait);
}

void nbd_server_free(NBDServer *s)
{
    assert(!s->clients);
    nbd_buf_pool_clear(s);
    g_free(s->name);
    g_free(s->description);
    g_free(s);
}
