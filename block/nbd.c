/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The nbd protocol driver: an NBD client (docs/nbd.md). One connection per
 * node, requests pipelined on it: each request coroutine sends its request
 * and waits in its slot; one receive coroutine reads every reply and chunk,
 * checks it against the request it names, and wakes the owner. Structured
 * replies (hole chunks) and base:allocation block status are used when the
 * server offers them, so map and convert over NBD stay sparse.
 *
 * Names: nbd://HOST[:PORT]/EXPORT, nbd+tcp://..., nbd+unix:///EXPORT?socket=
 * PATH, and the legacy nbd:HOST:PORT[:exportname=X], nbd:unix:PATH[:
 * exportname=X]. Options as QEMU's: server.type/host/port/path, export.
 */
#include "block_int.h"
#include "nbd/nbd-proto.h"
#include "util/socket.h"
#include "util/aio.h"
#include "util/cutils.h"
#include "util/tls.h"

#define NBD_CLIENT_SLOTS        16
#define NBD_CLIENT_TIMEOUT_NS   (60 * 1000000000LL)   /* open and replies */

typedef struct NBDSlot {
    bool busy;
    bool done;
    Coroutine *co;
    uint64_t handle;
    uint16_t type;
    uint64_t offset;
    uint32_t len;
    QEMUIOVector *qiov;         /* reads */
    size_t qiov_offset;
    int ret;
    /* block status: the first extent */
    uint32_t bs_len, bs_flags;
    bool bs_got;
} NBDSlot;

typedef struct BDRVNBDState {
    SockAddr addr;
    char *export;
    TLSCreds *tls;              /* STARTTLS first, or NULL */
    char *tls_hostname;         /* checked against the server's cert */
    int64_t open_deadline;      /* connect and negotiation end by then */
    SockConn *conn;
    int err;                    /* once the connection broke: every request */
    uint64_t size;
    uint16_t eflags;
    bool structured;
    bool base_allocation;
    uint32_t meta_id;
    uint32_t min_block, max_block;
    NBDSlot slots[NBD_CLIENT_SLOTS];
    CoQueue slot_wait;
    uint64_t next_handle;
    Coroutine *recv_co;
    bool recv_running;
    bool closing;
} BDRVNBDState;

static const QemuOptDesc nbd_open_opts[] = {
    { "server.type", QEMU_OPT_STRING, "inet or unix" },
    { "server.host", QEMU_OPT_STRING, "TCP host" },
    { "server.port", QEMU_OPT_STRING, "TCP port (default 10809)" },
    { "server.path", QEMU_OPT_STRING, "Unix socket path" },
    { "host", QEMU_OPT_STRING, "TCP host (legacy)" },
    { "port", QEMU_OPT_STRING, "TCP port (legacy)" },
    { "path", QEMU_OPT_STRING, "Unix socket path (legacy)" },
    { "export", QEMU_OPT_STRING, "Name of the NBD export" },
    { "tls-creds", QEMU_OPT_STRING, "ID of the TLS credentials (--object "
      "tls-creds-x509,...,endpoint=client)" },
    { "tls-hostname", QEMU_OPT_STRING, "Host name to check the server's "
      "certificate against (default: server.host)" },
    { "reconnect-delay", QEMU_OPT_NUMBER,
      "Seconds to wait for a reconnect (only 0 is supported)" },
    { "open-timeout", QEMU_OPT_NUMBER, "Seconds to try the first connect" },
    { NULL }
};

/* ------------------------------------------------------------------ */
/* Names                                                              */

static int nbd_parse_port(const char *s, int *port, Error **errp)
{
    if (qemu_strtoi(s, NULL, 10, port) < 0 || *port < 1 || *port > 65535) {
        error_setg(errp, "nbd: invalid port '%s'", s);
        return -EINVAL;
    }
    return 0;
}

/* nbd[+tcp|+unix]://[HOST[:PORT]]/[EXPORT][?socket=PATH] */
static int nbd_parse_uri(BDRVNBDState *s, const char *name, Error **errp)
{
    bool is_unix = g_str_has_prefix(name, "nbd+unix://");
    const char *p = strstr(name, "://") + 3;
    const char *slash = strchr(p, '/');
    const char *query = strchr(p, '?');
    g_autofree char *auth = NULL, *exp = NULL;
    int port = NBD_DEFAULT_PORT;

    if (!g_str_has_prefix(name, "nbd://") && !is_unix &&
        !g_str_has_prefix(name, "nbd+tcp://")) {
        error_setg(errp, "nbd: unknown URI scheme in '%s'", name);
        return -EINVAL;
    }
    if (query && slash && query < slash) {
        slash = NULL;
    }
    auth = g_strndup(p, slash ? slash - p : (query ? query - p : strlen(p)));
    if (slash) {
        exp = g_strndup(slash + 1, query ? query - slash - 1 : strlen(slash + 1));
        g_autofree char *unesc = g_uri_unescape_string(exp, NULL);
        if (!unesc) {
            error_setg(errp, "nbd: bad escape in the export name");
            return -EINVAL;
        }
        g_free(exp);
        exp = g_steal_pointer(&unesc);
    }
    if (is_unix) {
        const char *sock;

        if (*auth) {
            error_setg(errp, "nbd+unix: URI takes no host");
            return -EINVAL;
        }
        if (!query || !g_str_has_prefix(query + 1, "socket=") ||
            strchr(query + 1, '&') || !query[8]) {
            error_setg(errp, "nbd+unix: URI needs ?socket=PATH");
            return -EINVAL;
        }
        sock = query + 8;
        g_autofree char *path = g_uri_unescape_string(sock, NULL);
        if (!path) {
            error_setg(errp, "nbd: bad escape in the socket path");
            return -EINVAL;
        }
        sock_addr_init_unix(&s->addr, path);
    } else {
        char *colon;
        g_autofree char *host = NULL;

        if (query) {
            error_setg(errp, "nbd: URI takes no query for TCP");
            return -EINVAL;
        }
        if (auth[0] == '[') {
            char *end = strchr(auth, ']');
            if (!end) {
                error_setg(errp, "nbd: bad IPv6 address in '%s'", name);
                return -EINVAL;
            }
            host = g_strndup(auth + 1, end - auth - 1);
            colon = end[1] == ':' ? end + 1 : NULL;
        } else {
            colon = strrchr(auth, ':');
            host = g_strndup(auth, colon ? (size_t)(colon - auth) :
                             strlen(auth));
        }
        if (colon && nbd_parse_port(colon + 1, &port, errp) < 0) {
            return -EINVAL;
        }
        if (!*host) {
            g_free(host);
            host = g_strdup("localhost");
        }
        sock_addr_init_tcp(&s->addr, host, port);
    }
    s->export = g_steal_pointer(&exp);
    return 0;
}

/* nbd:unix:PATH[:exportname=X] or nbd:HOST:PORT[:exportname=X] */
static int nbd_parse_legacy(BDRVNBDState *s, const char *name, Error **errp)
{
    g_autofree char *rest = g_strdup(name + 4);
    char *exp = strstr(rest, ":exportname=");

    if (exp) {
        *exp = 0;
        s->export = g_strdup(exp + strlen(":exportname="));
    }
    if (g_str_has_prefix(rest, "unix:")) {
        if (!rest[5]) {
            error_setg(errp, "nbd: no socket path in '%s'", name);
            return -EINVAL;
        }
        sock_addr_init_unix(&s->addr, rest + 5);
        return 0;
    }
    char *colon = strrchr(rest, ':');
    int port;
    if (!colon || colon == rest) {
        error_setg(errp, "nbd: expected nbd:HOST:PORT or nbd:unix:PATH, "
                   "not '%s'", name);
        return -EINVAL;
    }
    *colon = 0;
    if (nbd_parse_port(colon + 1, &port, errp) < 0) {
        return -EINVAL;
    }
    sock_addr_init_tcp(&s->addr, rest, port);
    return 0;
}

static int nbd_parse_opts(BDRVNBDState *s, QemuOpts *o, Error **errp)
{
    const char *type = qemu_opt_get(o, "server.type");
    const char *host = qemu_opt_get(o, "server.host");
    const char *port = qemu_opt_get(o, "server.port");
    const char *path = qemu_opt_get(o, "server.path");
    int p = NBD_DEFAULT_PORT;

    host = host ? host : qemu_opt_get(o, "host");
    port = port ? port : qemu_opt_get(o, "port");
    path = path ? path : qemu_opt_get(o, "path");
    if (!type) {
        type = path ? "unix" : "inet";
    }
    if (!strcmp(type, "unix")) {
        if (!path || host || port) {
            error_setg(errp, "nbd: server.type=unix needs server.path only");
            return -EINVAL;
        }
        sock_addr_init_unix(&s->addr, path);
    } else if (!strcmp(type, "inet")) {
        if (!host || path) {
            error_setg(errp, "nbd: server.type=inet needs server.host");
            return -EINVAL;
        }
        if (port && nbd_parse_port(port, &p, errp) < 0) {
            return -EINVAL;
        }
        sock_addr_init_tcp(&s->addr, host, p);
    } else {
        error_setg(errp, "nbd: server.type must be inet or unix, not '%s'",
                   type);
        return -EINVAL;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Negotiation                                                        */

static int coroutine_fn nbd_c_send(BDRVNBDState *s, const void *a, size_t la,
                                   const void *b, size_t lb)
{
    struct iovec iov[2] = { { (void *)a, la }, { (void *)b, lb } };

    return sock_conn_co_send(s->conn, iov, lb ? 2 : 1,
                             qemu_clock_get_ns() + NBD_CLIENT_TIMEOUT_NS,
                             NULL);
}

static int coroutine_fn nbd_c_opt(BDRVNBDState *s, uint32_t opt,
                                  const void *data, uint32_t len)
{
    uint8_t hdr[NBD_OPT_HDR_LEN], *p = hdr;

    p = nbd_put64(p, NBD_OPTS_MAGIC);
    p = nbd_put32(p, opt);
    nbd_put32(p, len);
    return nbd_c_send(s, hdr, sizeof(hdr), data, len);
}

/* One option reply; *data (g_free) holds its payload. */
static int coroutine_fn nbd_c_reply(BDRVNBDState *s, uint32_t opt,
                                    uint32_t *type, uint8_t **data,
                                    uint32_t *len, Error **errp)
{
    uint8_t hdr[NBD_REP_HDR_LEN];
    int ret = sock_conn_co_recv_buf(s->conn, hdr, sizeof(hdr));

    if (ret < 0) {
        error_setg_errno(errp, -ret, "nbd: reading an option reply");
        return ret;
    }
    *type = nbd_get32(hdr + 12);
    *len = nbd_get32(hdr + 16);
    if (nbd_get64(hdr) != NBD_REP_MAGIC || nbd_get32(hdr + 8) != opt ||
        *len > NBD_MAX_OPTION_SIZE) {
        error_setg(errp, "nbd: bad reply to option %s", nbd_opt_name(opt));
        return -EPROTO;
    }
    *data = g_malloc(*len + 1);
    ret = sock_conn_co_recv_buf(s->conn, *data, *len);
    if (ret < 0) {
        g_free(*data);
        *data = NULL;
        error_setg_errno(errp, -ret, "nbd: reading an option reply");
        return ret;
    }
    (*data)[*len] = 0;
    return 0;
}

static void nbd_c_rep_error(uint32_t opt, uint32_t type, const uint8_t *msg,
                            uint32_t len, const char *exp, Error **errp)
{
    const char *what = type == NBD_REP_ERR_UNKNOWN ? "export not found" :
                       type == NBD_REP_ERR_POLICY ? "denied by policy" :
                       type == NBD_REP_ERR_UNSUP ? "not supported" :
                       type == NBD_REP_ERR_TLS_REQD ? "TLS required" :
                       "failed";
    error_setg(errp, "nbd: option %s for export '%s': %s%s%.*s",
               nbd_opt_name(opt), exp, what, len ? ": " : "",
               (int)MIN(len, 200), (const char *)msg);
}

/* NBD_OPT_STARTTLS, then the TLS handshake: everything after is secret. */
static int coroutine_fn nbd_c_starttls(BDRVNBDState *s, const char *exp,
                                       Error **errp)
{
    g_autofree uint8_t *d = NULL;
    uint32_t type, len;
    int ret;

    ret = nbd_c_opt(s, NBD_OPT_STARTTLS, NULL, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "nbd: sending to the server");
        return ret;
    }
    ret = nbd_c_reply(s, NBD_OPT_STARTTLS, &type, &d, &len, errp);
    if (ret < 0) {
        return ret;
    }
    if (type != NBD_REP_ACK) {
        if (type & NBD_REP_FLAG_ERROR) {
            nbd_c_rep_error(NBD_OPT_STARTTLS, type, d, len, exp, errp);
        } else {
            error_setg(errp, "nbd: bad reply to option starttls");
        }
        return -EPROTO;
    }
    return tls_co_handshake(s->conn, s->tls, s->tls_hostname,
                            s->open_deadline, errp);
}

static int coroutine_fn nbd_c_negotiate(BDRVNBDState *s, Error **errp)
{
    uint8_t buf[NBD_HANDSHAKE_LEN];
    const char *exp = s->export ? s->export : "";
    uint32_t elen = strlen(exp);
    uint16_t hflags;
    int ret;

    ret = sock_conn_co_recv_buf(s->conn, buf, sizeof(buf));
    if (ret < 0) {
        error_setg_errno(errp, -ret, "nbd: reading the greeting");
        return ret;
    }
    if (nbd_get64(buf) != NBD_MAGIC || nbd_get64(buf + 8) != NBD_OPTS_MAGIC) {
        error_setg(errp, "nbd: not a newstyle NBD server");
        return -EPROTO;
    }
    hflags = nbd_get16(buf + 16);
    if (!(hflags & NBD_FLAG_FIXED_NEWSTYLE)) {
        error_setg(errp, "nbd: the server does not do fixed newstyle");
        return -EPROTO;
    }
    nbd_put32(buf, NBD_FLAG_C_FIXED_NEWSTYLE |
              (hflags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0));
    ret = nbd_c_send(s, buf, 4, NULL, 0);
    if (ret < 0) {
        goto send_fail;
    }

    if (s->tls) {
        ret = nbd_c_starttls(s, exp, errp);
        if (ret < 0) {
            return ret;
        }
    }

    /* Structured replies, then base:allocation if they were accepted. */
    for (int step = 0; step < 2; step++) {
        g_autofree uint8_t *q = NULL;
        uint32_t qlen = 0, opt;

        if (step == 0) {
            opt = NBD_OPT_STRUCTURED_REPLY;
        } else {
            if (!s->structured) {
                break;
            }
            opt = NBD_OPT_SET_META_CONTEXT;
            qlen = 4 + elen + 4 + 4 + strlen(NBD_META_BASE_ALLOCATION);
            q = g_malloc(qlen);
            uint8_t *p = nbd_put32(q, elen);
            memcpy(p, exp, elen);
            p = nbd_put32(p + elen, 1);
            p = nbd_put32(p, strlen(NBD_META_BASE_ALLOCATION));
            memcpy(p, NBD_META_BASE_ALLOCATION,
                   strlen(NBD_META_BASE_ALLOCATION));
        }
        ret = nbd_c_opt(s, opt, q, qlen);
        if (ret < 0) {
            goto send_fail;
        }
        for (;;) {
            g_autofree uint8_t *d = NULL;
            uint32_t type, len;

            ret = nbd_c_reply(s, opt, &type, &d, &len, errp);
            if (ret < 0) {
                return ret;
            }
            if (type == NBD_REP_ACK) {
                if (step == 0) {
                    s->structured = true;
                }
                break;
            }
            if (type & NBD_REP_FLAG_ERROR) {
                break;          /* fine: we do without */
            }
            if (type == NBD_REP_META_CONTEXT && len >= 4 &&
                len - 4 == strlen(NBD_META_BASE_ALLOCATION) &&
                !memcmp(d + 4, NBD_META_BASE_ALLOCATION, len - 4)) {
                s->base_allocation = true;
                s->meta_id = nbd_get32(d);
            }
        }
    }

    /* NBD_OPT_GO with block sizes */
    {
        g_autofree uint8_t *q = g_malloc(4 + elen + 2 + 2);
        uint8_t *p = nbd_put32(q, elen);

        memcpy(p, exp, elen);
        p = nbd_put16(p + elen, 1);
        nbd_put16(p, NBD_INFO_BLOCK_SIZE);
        ret = nbd_c_opt(s, NBD_OPT_GO, q, 4 + elen + 4);
        if (ret < 0) {
            goto send_fail;
        }
    }
    s->min_block = 1;
    s->max_block = NBD_MAX_BUFFER_SIZE;
    bool have_export = false;
    for (;;) {
        g_autofree uint8_t *d = NULL;
        uint32_t type, len;

        ret = nbd_c_reply(s, NBD_OPT_GO, &type, &d, &len, errp);
        if (ret < 0) {
            return ret;
        }
        if (type == NBD_REP_ACK) {
            break;
        }
        if (type == NBD_REP_ERR_TLS_REQD) {
            error_setg(errp, "nbd: TLS negotiation required before "
                       "option %d (go); use the tls-creds option", NBD_OPT_GO);
            return -EACCES;
        }
        if (type & NBD_REP_FLAG_ERROR) {
            nbd_c_rep_error(NBD_OPT_GO, type, d, len, exp, errp);
            return type == NBD_REP_ERR_UNKNOWN ? -ENOENT : -EIO;
        }
        if (type != NBD_REP_INFO || len < 2) {
            continue;
        }
        switch (nbd_get16(d)) {
        case NBD_INFO_EXPORT:
            if (len != 12) {
                error_setg(errp, "nbd: bad export information");
                return -EPROTO;
            }
            s->size = nbd_get64(d + 2);
            s->eflags = nbd_get16(d + 10);
            have_export = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            if (len != 14) {
                error_setg(errp, "nbd: bad block size information");
                return -EPROTO;
            }
            s->min_block = nbd_get32(d + 2);
            s->max_block = nbd_get32(d + 10);
            if (!s->min_block || (s->min_block & (s->min_block - 1)) ||
                s->min_block > 65536 || s->max_block < s->min_block) {
                error_setg(errp, "nbd: bad block sizes from the server");
                return -EPROTO;
            }
            s->max_block = MIN(s->max_block, NBD_MAX_BUFFER_SIZE);
            s->max_block -= s->max_block % s->min_block;
            break;
        default:
            break;
        }
    }
    if (!have_export || s->size > INT64_MAX) {
        error_setg(errp, "nbd: the server sent no usable export size");
        return -EPROTO;
    }
    return 0;

send_fail:
    error_setg_errno(errp, -ret, "nbd: sending to the server");
    return ret;
}

/* ------------------------------------------------------------------ */
/* Transmission                                                       */

static NBDSlot *nbd_find_slot(BDRVNBDState *s, uint64_t handle)
{
    for (int i = 0; i < NBD_CLIENT_SLOTS; i++) {
        if (s->slots[i].busy && !s->slots[i].done &&
            s->slots[i].handle == handle) {
            return &s->slots[i];
        }
    }
    return NULL;
}

static void nbd_complete(NBDSlot *slot, int ret)
{
    if (!slot->ret) {
        slot->ret = ret;
    }
    slot->done = true;
    aio_co_wake(slot->co);
}

/* Read one reply or chunk. <0: the connection cannot go on. */
static int coroutine_fn nbd_recv_one(BDRVNBDState *s)
{
    uint8_t hdr[NBD_STRUCTURED_REPLY_LEN];
    NBDSlot *slot;
    int ret;

    ret = sock_conn_co_recv_buf(s->conn, hdr, 4);
    if (ret < 0) {
        return ret;
    }
    if (nbd_get32(hdr) == NBD_SIMPLE_REPLY_MAGIC) {
        ret = sock_conn_co_recv_buf(s->conn, hdr + 4, 12);
        if (ret < 0) {
            return ret;
        }
        slot = nbd_find_slot(s, nbd_get64(hdr + 8));
        if (!slot) {
            return -EPROTO;
        }
        uint32_t err = nbd_get32(hdr + 4);
        if (!err && slot->type == NBD_CMD_READ) {
            QEMUIOVector sub;
            qemu_iovec_init_slice(&sub, slot->qiov, slot->qiov_offset,
                                  slot->len);
            ret = sock_conn_co_recv(s->conn, sub.iov, sub.niov, slot->len,
                                    NULL);
            qemu_iovec_destroy(&sub);
            if (ret < 0) {
                return ret;
            }
        }
        nbd_complete(slot, nbd_wire_to_errno(err));
        return 0;
    }
    if (nbd_get32(hdr) != NBD_STRUCTURED_REPLY_MAGIC || !s->structured) {
        return -EPROTO;
    }
    ret = sock_conn_co_recv_buf(s->conn, hdr + 4, 16);
    if (ret < 0) {
        return ret;
    }
    uint16_t flags = nbd_get16(hdr + 4);
    uint16_t type = nbd_get16(hdr + 6);
    uint32_t len = nbd_get32(hdr + 16);
    slot = nbd_find_slot(s, nbd_get64(hdr + 8));
    if (!slot || len > NBD_MAX_BUFFER_SIZE + 64) {
        return -EPROTO;
    }
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        if (len || !(flags & NBD_REPLY_FLAG_DONE)) {
            return -EPROTO;
        }
        break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE: {
        uint8_t f[12];
        uint64_t off;
        uint32_t n;

        if (slot->type != NBD_CMD_READ ||
            len < (type == NBD_REPLY_TYPE_OFFSET_DATA ? 8u : 12u)) {
            return -EPROTO;
        }
        ret = sock_conn_co_recv_buf(s->conn, f,
                                    type == NBD_REPLY_TYPE_OFFSET_DATA ? 8 : 12);
        if (ret < 0) {
            return ret;
        }
        off = nbd_get64(f);
        n = type == NBD_REPLY_TYPE_OFFSET_DATA ? len - 8 : nbd_get32(f + 8);
        if ((type == NBD_REPLY_TYPE_OFFSET_HOLE && len != 12) ||
            off < slot->offset || n > slot->len ||
            off - slot->offset > slot->len - n) {
            return -EPROTO;
        }
        size_t at = slot->qiov_offset + (off - slot->offset);
        if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
            qemu_iovec_memset(slot->qiov, at, 0, n);
        } else {
            QEMUIOVector sub;
            qemu_iovec_init_slice(&sub, slot->qiov, at, n);
            ret = sock_conn_co_recv(s->conn, sub.iov, sub.niov, n, NULL);
            qemu_iovec_destroy(&sub);
            if (ret < 0) {
                return ret;
            }
        }
        break;
    }
    case NBD_REPLY_TYPE_BLOCK_STATUS: {
        uint8_t f[12];

        if (slot->type != NBD_CMD_BLOCK_STATUS || len < 12 ||
            (len - 4) % 8) {
            return -EPROTO;
        }
        ret = sock_conn_co_recv_buf(s->conn, f, 12);
        if (ret < 0) {
            return ret;
        }
        if (nbd_get32(f) == s->meta_id && !slot->bs_got) {
            slot->bs_len = nbd_get32(f + 4);
            slot->bs_flags = nbd_get32(f + 8);
            slot->bs_got = slot->bs_len > 0;
        }
        ret = sock_conn_co_recv(s->conn, NULL, 0, len - 12, NULL);
        if (ret < 0) {
            return ret;
        }
        break;
    }
    default:
        if (!NBD_REPLY_TYPE_IS_ERR(type) || len < 6) {
            /* an unknown non-error chunk: skip it */
            ret = sock_conn_co_recv(s->conn, NULL, 0, len, NULL);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        uint8_t e[6];
        ret = sock_conn_co_recv_buf(s->conn, e, 6);
        if (ret < 0) {
            return ret;
        }
        if (nbd_get16(e + 4) > len - 6) {
            return -EPROTO;
        }
        ret = sock_conn_co_recv(s->conn, NULL, 0, len - 6, NULL);
        if (ret < 0) {
            return ret;
        }
        if (!slot->ret) {
            slot->ret = nbd_wire_to_errno(nbd_get32(e));
            if (!slot->ret) {
                slot->ret = -EIO;
            }
        }
        break;
    }
    if (flags & NBD_REPLY_FLAG_DONE) {
        nbd_complete(slot, 0);
    }
    return 0;
}

static void coroutine_fn nbd_recv_co(void *opaque)
{
    BlockDriverState *bs = opaque;
    BDRVNBDState *s = bs->opaque;
    int ret = 0;

    while (!s->closing) {
        bool waiting = false;

        for (int i = 0; i < NBD_CLIENT_SLOTS; i++) {
            waiting |= s->slots[i].busy && !s->slots[i].done;
        }
        if (!waiting) {
            break;      /* restarted by the next request */
        }
        ret = nbd_recv_one(s);
        if (ret < 0) {
            break;
        }
    }
    if (ret < 0) {
        /* Broken: fail everything in flight and every later request. */
        s->err = ret == -ECONNRESET ? -EIO : ret;
        sock_conn_abort(s->conn, -EIO);
        for (int i = 0; i < NBD_CLIENT_SLOTS; i++) {
            if (s->slots[i].busy && !s->slots[i].done) {
                nbd_complete(&s->slots[i], s->err);
            }
        }
    }
    s->recv_running = false;
}

/* Send one request and wait for its whole reply. */
static int coroutine_fn nbd_co_request(BlockDriverState *bs, uint16_t type,
                                       uint16_t flags, uint64_t offset,
                                       uint32_t len, QEMUIOVector *qiov,
                                       size_t qiov_offset, NBDSlot *out)
{
    BDRVNBDState *s = bs->opaque;
    NBDSlot *slot = NULL;
    uint8_t hdr[NBD_REQUEST_LEN], *p = hdr;
    int ret;

    for (;;) {
        if (s->err) {
            return s->err;
        }
        for (int i = 0; i < NBD_CLIENT_SLOTS && !slot; i++) {
            if (!s->slots[i].busy) {
                slot = &s->slots[i];
            }
        }
        if (slot) {
            break;
        }
        qemu_co_queue_wait(&s->slot_wait, NULL);
    }
    *slot = (NBDSlot) {
        .busy = true, .co = qemu_coroutine_self(), .handle = ++s->next_handle,
        .type = type, .offset = offset, .len = len, .qiov = qiov,
        .qiov_offset = qiov_offset,
    };
    p = nbd_put32(p, NBD_REQUEST_MAGIC);
    p = nbd_put16(p, flags);
    p = nbd_put16(p, type);
    p = nbd_put64(p, slot->handle);
    p = nbd_put64(p, offset);
    nbd_put32(p, len);
    if (type == NBD_CMD_WRITE) {
        QEMUIOVector sub;
        struct iovec *iov;

        qemu_iovec_init_slice(&sub, qiov, qiov_offset, len);
        iov = g_new(struct iovec, sub.niov + 1);
        iov[0].iov_base = hdr;
        iov[0].iov_len = sizeof(hdr);
        memcpy(iov + 1, sub.iov, sub.niov * sizeof(*iov));
        ret = sock_conn_co_send(s->conn, iov, sub.niov + 1,
                                qemu_clock_get_ns() + NBD_CLIENT_TIMEOUT_NS,
                                NULL);
        g_free(iov);
        qemu_iovec_destroy(&sub);
    } else {
        ret = nbd_c_send(s, hdr, sizeof(hdr), NULL, 0);
    }
    if (ret < 0) {
        s->err = -EIO;
        sock_conn_abort(s->conn, -EIO);
        slot->done = true;
    } else if (!s->recv_running) {
        s->recv_running = true;
        s->recv_co = qemu_coroutine_create(nbd_recv_co, bs);
        aio_co_schedule(s->recv_co);
    }
    while (!slot->done) {
        qemu_coroutine_yield();
    }
    ret = ret < 0 ? -EIO : slot->ret;
    if (out) {
        *out = *slot;
    }
    slot->busy = false;
    qemu_co_queue_next(&s->slot_wait);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Driver callbacks                                                   */

/* tls-creds and tls-hostname (the host name defaults to a TCP host). */
static int nbd_open_tls(BDRVNBDState *s, QemuOpts *options, Error **errp)
{
    const char *id = options ? qemu_opt_get(options, "tls-creds") : NULL;
    const char *host = options ? qemu_opt_get(options, "tls-hostname") : NULL;

    if (!id) {
        if (host) {
            error_setg(errp, "nbd: tls-hostname needs tls-creds");
            return -EINVAL;
        }
        return 0;
    }
    s->tls = tls_creds_lookup(id, false, errp);
    if (!s->tls) {
        return -EINVAL;
    }
    if (!host && s->addr.type == SOCK_ADDR_TCP) {
        host = s->addr.host;
    }
    s->tls_hostname = g_strdup(host);
    return 0;
}

static int coroutine_fn nbd_open(BlockDriverState *bs, QemuOpts *options,
                                 int flags, Error **errp)
{
    BDRVNBDState *s = bs->opaque;
    const char *name = bs->filename;
    int fd, ret;

    qemu_co_queue_init(&s->slot_wait);
    if (options && qemu_opt_get_number(options, "reconnect-delay", 0)) {
        error_setg(errp, "nbd: reconnect-delay is not supported");
        return -ENOTSUP;
    }
    if (*name) {
        ret = g_str_has_prefix(name, "nbd:") && !strstr(name, "://") ?
              nbd_parse_legacy(s, name, errp) : nbd_parse_uri(s, name, errp);
        if (ret < 0) {
            return ret;
        }
        if (options && (qemu_opt_get(options, "server.type") ||
                        qemu_opt_get(options, "server.host") ||
                        qemu_opt_get(options, "server.path") ||
                        qemu_opt_get(options, "host") ||
                        qemu_opt_get(options, "path"))) {
            error_setg(errp, "nbd: a file name and server options together");
            return -EINVAL;
        }
    } else if (!options) {
        error_setg(errp, "nbd: no server given");
        return -EINVAL;
    } else if ((ret = nbd_parse_opts(s, options, errp)) < 0) {
        return ret;
    }
    if (options && qemu_opt_get(options, "export")) {
        g_free(s->export);
        s->export = g_strdup(qemu_opt_get(options, "export"));
    }
    if (s->export && strlen(s->export) > NBD_MAX_STRING_SIZE) {
        error_setg(errp, "nbd: export name too long");
        ret = -EINVAL;
        goto fail;
    }
    ret = nbd_open_tls(s, options, errp);
    if (ret < 0) {
        goto fail;
    }
    s->open_deadline = qemu_clock_get_ns() + NBD_CLIENT_TIMEOUT_NS;
    fd = sock_co_connect(&s->addr, s->open_deadline, NULL, errp);
    if (fd < 0) {
        ret = fd;
        goto fail;
    }
    s->conn = sock_conn_new(fd);
    sock_conn_set_recv_deadline(s->conn, s->open_deadline);
    ret = nbd_c_negotiate(s, errp);
    sock_conn_set_recv_deadline(s->conn, SOCK_NO_DEADLINE);
    if (ret < 0) {
        goto fail;
    }
    if ((flags & BDRV_O_RDWR) && (s->eflags & NBD_FLAG_READ_ONLY)) {
        error_setg(errp, "nbd: the export is read-only; open it read-only");
        ret = -EACCES;
        goto fail;
    }
    return 0;

fail:
    if (s->conn) {
        sock_conn_unref(s->conn);
        s->conn = NULL;
    }
    sock_addr_clear(&s->addr);
    g_free(s->export);
    s->export = NULL;
    g_free(s->tls_hostname);
    s->tls_hostname = NULL;
    return ret;
}

static void coroutine_fn nbd_close(BlockDriverState *bs)
{
    BDRVNBDState *s = bs->opaque;
    uint8_t hdr[NBD_REQUEST_LEN] = { 0 };

    if (!s->err) {
        uint8_t *p = nbd_put32(hdr, NBD_REQUEST_MAGIC);
        p = nbd_put16(p, 0);
        nbd_put16(p, NBD_CMD_DISC);
        nbd_c_send(s, hdr, sizeof(hdr), NULL, 0);
    }
    s->closing = true;
    sock_conn_shutdown_send(s->conn);
    sock_conn_unref(s->conn);
    s->conn = NULL;
    sock_addr_clear(&s->addr);
    g_free(s->export);
    g_free(s->tls_hostname);
}

static void nbd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVNBDState *s = bs->opaque;

    (void)errp;
    bs->bl.request_alignment = s->min_block;
    bs->bl.max_transfer = s->max_block;
}

static int64_t nbd_getlength(BlockDriverState *bs)
{
    BDRVNBDState *s = bs->opaque;

    return s->size;
}

static int coroutine_fn nbd_co_flush(BlockDriverState *bs);

static int coroutine_fn nbd_co_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    (void)flags;
    return nbd_co_request(bs, NBD_CMD_READ, 0, offset, bytes, qiov,
                          qiov_offset, NULL);
}

static int coroutine_fn nbd_co_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    BDRVNBDState *s = bs->opaque;
    bool fua = (flags & BDRV_REQ_FUA) && (s->eflags & NBD_FLAG_SEND_FUA);
    int ret;

    ret = nbd_co_request(bs, NBD_CMD_WRITE, fua ? NBD_CMD_FLAG_FUA : 0,
                         offset, bytes, qiov, qiov_offset, NULL);
    if (ret == 0 && (flags & BDRV_REQ_FUA) && !fua) {
        ret = nbd_co_flush(bs);     /* the server has no FUA */
    }
    return ret;
}

static int coroutine_fn nbd_co_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    BDRVNBDState *s = bs->opaque;
    uint16_t f = 0;
    int ret;

    if (!(s->eflags & NBD_FLAG_SEND_WRITE_ZEROES)) {
        return -ENOTSUP;
    }
    if ((flags & BDRV_REQ_NO_FALLBACK) &&
        !(s->eflags & NBD_FLAG_SEND_FAST_ZERO)) {
        return -ENOTSUP;
    }
    f |= (flags & BDRV_REQ_FUA) && (s->eflags & NBD_FLAG_SEND_FUA) ?
         NBD_CMD_FLAG_FUA : 0;
    f |= (flags & BDRV_REQ_MAY_UNMAP) ? 0 : NBD_CMD_FLAG_NO_HOLE;
    f |= (flags & BDRV_REQ_NO_FALLBACK) ? NBD_CMD_FLAG_FAST_ZERO : 0;
    while (bytes > 0) {
        uint32_t n = MIN(bytes, 1U << 30);

        ret = nbd_co_request(bs, NBD_CMD_WRITE_ZEROES, f, offset, n, NULL, 0,
                             NULL);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    if ((flags & BDRV_REQ_FUA) && !(f & NBD_CMD_FLAG_FUA)) {
        return nbd_co_flush(bs);
    }
    return 0;
}

static int coroutine_fn nbd_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    BDRVNBDState *s = bs->opaque;
    int ret;

    if (!(s->eflags & NBD_FLAG_SEND_TRIM)) {
        return -ENOTSUP;
    }
    while (bytes > 0) {
        uint32_t n = MIN(bytes, 1U << 30);

        ret = nbd_co_request(bs, NBD_CMD_TRIM, 0, offset, n, NULL, 0, NULL);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

static int coroutine_fn nbd_co_flush(BlockDriverState *bs)
{
    BDRVNBDState *s = bs->opaque;

    if (!(s->eflags & NBD_FLAG_SEND_FLUSH)) {
        return 0;
    }
    return nbd_co_request(bs, NBD_CMD_FLUSH, 0, 0, 0, NULL, 0, NULL);
}

static int coroutine_fn nbd_co_block_status(BlockDriverState *bs,
                                            bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum,
                                            int64_t *map,
                                            BlockDriverState **file)
{
    BDRVNBDState *s = bs->opaque;
    NBDSlot r;
    uint32_t n = MIN(bytes, (int64_t)(UINT32_MAX & ~(s->min_block - 1)));
    int ret;

    (void)want_zero;
    *map = offset;
    *file = bs;
    if (!s->base_allocation) {
        *pnum = bytes;
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    ret = nbd_co_request(bs, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE,
                         offset, n, NULL, 0, &r);
    if (ret < 0) {
        return ret;
    }
    if (!r.bs_got) {
        return -EIO;
    }
    *pnum = MIN(r.bs_len, n);
    return (r.bs_flags & NBD_STATE_HOLE ? 0 : BDRV_BLOCK_DATA) |
           (r.bs_flags & NBD_STATE_ZERO ? BDRV_BLOCK_ZERO : 0) |
           BDRV_BLOCK_OFFSET_VALID;
}

static BlockDriver bdrv_nbd = {
    .format_name            = "nbd",
    .protocol_name          = "nbd",
    .instance_size          = sizeof(BDRVNBDState),
    .open_opts              = nbd_open_opts,
    .filename_optional      = true,

    .bdrv_open              = nbd_open,
    .bdrv_close             = nbd_close,
    .bdrv_refresh_limits    = nbd_refresh_limits,
    .bdrv_getlength         = nbd_getlength,

    .bdrv_co_preadv         = nbd_co_preadv,
    .bdrv_co_pwritev        = nbd_co_pwritev,
    .bdrv_co_pwrite_zeroes  = nbd_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = nbd_co_pdiscard,
    .bdrv_co_flush_to_disk  = nbd_co_flush,
    .bdrv_co_block_status   = nbd_co_block_status,

    .supported_write_flags  = BDRV_REQ_FUA,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA |
                              BDRV_REQ_NO_FALLBACK,
};

BLOCK_DRIVER_REGISTER(bdrv_nbd)
