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
#include "nbd/client.h"
#include "util/socket.h"
#include "util/aio.h"
#include "util/cutils.h"
#include "util/tls.h"

#define NBD_CLIENT_SLOTS        16
#define NS                      ((int64_t)1000000000)
/* Defaults (QEMU 7.2 waits forever for both; docs/nbd.md) */
#define NBD_HANDSHAKE_TIMEOUT_NS (30 * NS)  /* one connect + negotiation */
#define NBD_REPLY_TIMEOUT_NS    (60 * NS)   /* silence while replies are due */
#define NBD_SEND_TIMEOUT_NS     (60 * NS)   /* a request the server won't take */
#define NBD_MAX_DELAY_S         (24 * 3600) /* bound on the timeout options */

typedef struct NBDSlot {
    bool busy;
    bool done;
    bool lost;                  /* the connection broke before the reply */
    bool sending;               /* its coroutine is in the send: no wake */
    Coroutine *co;
    SockConn *conn;             /* the connection it was sent on */
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

/* What a negotiation found out about the export. */
typedef struct NBDConnInfo {
    uint64_t size;
    uint16_t eflags;
    bool structured;
    bool base_allocation;
    uint32_t meta_id;
    uint32_t min_block, max_block;
} NBDConnInfo;

typedef struct BDRVNBDState {
    SockAddr addr;
    char *export;
    TLSCreds *tls;              /* STARTTLS first, or NULL */
    char *tls_hostname;         /* checked against the server's cert */
    int64_t open_timeout_ns;    /* open-timeout: retry the first connect */
    int64_t reconnect_ns;       /* reconnect-delay, 0: never reconnect */
    int64_t reply_ns;           /* reply-timeout, 0: none */
    int64_t neg_deadline;       /* the negotiation in progress ends then */
    SockConn *nconn;            /* the connection being negotiated */
    NBDConnInfo neg;            /* ... and what it found */
    NBDConnInfo info;           /* the export as requests see it */
    SockClient *cl;             /* reconnects (reconnect_ns > 0), or NULL */
    SockConn *conn;             /* the connection requests go on, or NULL */
    int err;                    /* without reconnection, once it broke */
    NBDSlot slots[NBD_CLIENT_SLOTS];
    CoQueue slot_wait;
    uint64_t next_handle;
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
      "On a lost connection, seconds requests wait for a reconnect "
      "(default 0: fail at once, no reconnection)" },
    { "open-timeout", QEMU_OPT_NUMBER,
      "Seconds to keep trying the first connection (default 0: one try)" },
    { "reply-timeout", QEMU_OPT_NUMBER,
      "Seconds of silence from the server while replies are due before "
      "the connection counts as lost (default 60, 0: wait forever)" },
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

    return sock_conn_co_send(s->nconn, iov, lb ? 2 : 1,
                             s->neg_deadline,
                             NULL);
}

/* Send option opt with its data; a failure is said in errp. */
static int coroutine_fn nbd_c_opt(BDRVNBDState *s, uint32_t opt,
                                  const void *data, uint32_t len,
                                  Error **errp)
{
    uint8_t hdr[NBD_OPT_HDR_LEN], *p = hdr;
    int ret;

    p = nbd_put64(p, NBD_OPTS_MAGIC);
    p = nbd_put32(p, opt);
    nbd_put32(p, len);
    ret = nbd_c_send(s, hdr, sizeof(hdr), data, len);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "nbd: sending to the server");
    }
    return ret;
}

/*
 * Send option opt about export name: its data is the name's length (32
 * bits), the name, then the option's own tail.
 */
static int coroutine_fn nbd_c_opt_export(BDRVNBDState *s, uint32_t opt,
                                         const char *name, const void *tail,
                                         uint32_t tlen, Error **errp)
{
    uint32_t nlen = strlen(name);
    g_autofree uint8_t *q = g_malloc(4 + nlen + tlen);
    uint8_t *p = nbd_put32(q, nlen);

    memcpy(p, name, nlen);
    memcpy(p + nlen, tail, tlen);
    return nbd_c_opt(s, opt, q, 4 + nlen + tlen, errp);
}

/* One option reply; *data (g_free) holds its payload. */
static int coroutine_fn nbd_c_reply(BDRVNBDState *s, uint32_t opt,
                                    uint32_t *type, uint8_t **data,
                                    uint32_t *len, Error **errp)
{
    uint8_t hdr[NBD_REP_HDR_LEN];
    int ret = sock_conn_co_recv_buf(s->nconn, hdr, sizeof(hdr));

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
    ret = sock_conn_co_recv_buf(s->nconn, *data, *len);
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

    ret = nbd_c_opt(s, NBD_OPT_STARTTLS, NULL, 0, errp);
    if (ret < 0) {
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
    return tls_co_handshake(s->nconn, s->tls, s->tls_hostname,
                            s->neg_deadline, errp);
}

/* The greeting, our flags, and STARTTLS when TLS is asked for. */
static int coroutine_fn nbd_c_greet(BDRVNBDState *s, Error **errp)
{
    uint8_t buf[NBD_HANDSHAKE_LEN];
    const char *exp = s->export ? s->export : "";
    uint16_t hflags;
    int ret;

    ret = sock_conn_co_recv_buf(s->nconn, buf, sizeof(buf));
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
        error_setg_errno(errp, -ret, "nbd: sending to the server");
        return ret;
    }
    return s->tls ? nbd_c_starttls(s, exp, errp) : 0;
}

/*
 * The first exchange after the TLS handshake failed. With TLS 1.3 a server
 * checks our certificate after our handshake is over, so its refusal shows
 * here: say so rather than "broken pipe".
 */
static int nbd_c_tls_dropped(int ret, Error **errp)
{
    error_setg(errp, "nbd: the server ended the TLS session after the "
               "handshake (%s); did it refuse our client certificate?",
               strerror(-ret));
    return ret;
}

static int coroutine_fn nbd_c_negotiate(BDRVNBDState *s, Error **errp)
{
    const char *exp = s->export ? s->export : "";
    int ret;

    ret = nbd_c_greet(s, errp);
    if (ret < 0) {
        return ret;
    }

    /* Structured replies, then base:allocation if they were accepted. */
    for (int step = 0; step < 2; step++) {
        uint32_t opt;

        if (step == 0) {
            Error *local_err = NULL;

            opt = NBD_OPT_STRUCTURED_REPLY;
            ret = nbd_c_opt(s, opt, NULL, 0, &local_err);
            if (ret < 0 && s->tls) {
                error_free(local_err);
                return nbd_c_tls_dropped(ret, errp);
            }
            error_propagate(errp, local_err);
        } else {
            uint32_t mlen = strlen(NBD_META_BASE_ALLOCATION);
            uint8_t t[8 + sizeof(NBD_META_BASE_ALLOCATION)];

            if (!s->neg.structured) {
                break;
            }
            opt = NBD_OPT_SET_META_CONTEXT;
            memcpy(nbd_put32(nbd_put32(t, 1), mlen), NBD_META_BASE_ALLOCATION,
                   mlen);
            ret = nbd_c_opt_export(s, opt, exp, t, 8 + mlen, errp);
        }
        if (ret < 0) {
            return ret;
        }
        for (;;) {
            g_autofree uint8_t *d = NULL;
            uint32_t type, len;
            Error *local_err = NULL;

            ret = nbd_c_reply(s, opt, &type, &d, &len, &local_err);
            if (ret < 0) {
                if (step == 0 && s->tls) {
                    error_free(local_err);
                    return nbd_c_tls_dropped(ret, errp);
                }
                error_propagate(errp, local_err);
                return ret;
            }
            if (type == NBD_REP_ACK) {
                if (step == 0) {
                    s->neg.structured = true;
                }
                break;
            }
            if (type & NBD_REP_FLAG_ERROR) {
                break;          /* fine: we do without */
            }
            if (type == NBD_REP_META_CONTEXT && len >= 4 &&
                len - 4 == strlen(NBD_META_BASE_ALLOCATION) &&
                !memcmp(d + 4, NBD_META_BASE_ALLOCATION, len - 4)) {
                s->neg.base_allocation = true;
                s->neg.meta_id = nbd_get32(d);
            }
        }
    }

    /* NBD_OPT_GO with block sizes */
    uint8_t go[4];

    nbd_put16(nbd_put16(go, 1), NBD_INFO_BLOCK_SIZE);
    ret = nbd_c_opt_export(s, NBD_OPT_GO, exp, go, sizeof(go), errp);
    if (ret < 0) {
        return ret;
    }
    s->neg.min_block = 1;
    s->neg.max_block = NBD_MAX_BUFFER_SIZE;
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
            s->neg.size = nbd_get64(d + 2);
            s->neg.eflags = nbd_get16(d + 10);
            have_export = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            if (len != 14) {
                error_setg(errp, "nbd: bad block size information");
                return -EPROTO;
            }
            s->neg.min_block = nbd_get32(d + 2);
            s->neg.max_block = nbd_get32(d + 10);
            if (!s->neg.min_block || (s->neg.min_block & (s->neg.min_block - 1)) ||
                s->neg.min_block > 65536 || s->neg.max_block < s->neg.min_block) {
                error_setg(errp, "nbd: bad block sizes from the server");
                return -EPROTO;
            }
            s->neg.max_block = MIN(s->neg.max_block, NBD_MAX_BUFFER_SIZE);
            s->neg.max_block -= s->neg.max_block % s->neg.min_block;
            break;
        default:
            break;
        }
    }
    if (!have_export || s->neg.size > INT64_MAX) {
        error_setg(errp, "nbd: the server sent no usable export size");
        return -EPROTO;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Listing exports (qemu-nbd -L)                                      */

static void nbd_export_desc_free(gpointer p)
{
    NBDExportDesc *e = p;

    g_free(e->name);
    g_free(e->description);
    if (e->contexts) {
        g_ptr_array_free(e->contexts, true);
    }
    g_free(e);
}

void nbd_export_list_free(GPtrArray *list)
{
    if (list) {
        g_ptr_array_free(list, true);
    }
}

/* An error reply to opt: one line, in QEMU's words. */
static int nbd_c_list_error(uint32_t opt, uint32_t type, const uint8_t *msg,
                            uint32_t len, Error **errp)
{
    const char *name = nbd_opt_name(opt);

    switch (type) {
    case NBD_REP_ERR_UNSUP:
    case NBD_REP_ERR_PLATFORM:
        error_setg(errp, "Server lacks support for option %" PRIu32 " (%s)",
                   opt, name);
        return -ENOTSUP;
    case NBD_REP_ERR_TLS_REQD:
        error_setg(errp, "TLS negotiation required before option %" PRIu32
                   " (%s); use --tls-creds", opt, name);
        return -EACCES;
    case NBD_REP_ERR_POLICY:
        error_setg(errp, "Denied by server for option %" PRIu32 " (%s)%s%.*s",
                   opt, name, len ? ": " : "", (int)MIN(len, 200),
                   (const char *)msg);
        return -EACCES;
    case NBD_REP_ERR_UNKNOWN:
        error_setg(errp, "Requested export not available");
        return -ENOENT;
    case NBD_REP_ERR_SHUTDOWN:
        error_setg(errp, "Server shutting down before option %" PRIu32 " (%s)",
                   opt, name);
        return -ESHUTDOWN;
    default:
        error_setg(errp, "Server error for option %" PRIu32 " (%s)%s%.*s",
                   opt, name, len ? ": " : "", (int)MIN(len, 200),
                   (const char *)msg);
        return -EIO;
    }
}

/* NBD_OPT_LIST: names and descriptions. */
static int coroutine_fn nbd_c_list_names(BDRVNBDState *s, GPtrArray *list,
                                         Error **errp)
{
    int ret = nbd_c_opt(s, NBD_OPT_LIST, NULL, 0, errp);

    if (ret < 0) {
        return ret;
    }
    for (;;) {
        g_autofree uint8_t *d = NULL;
        uint32_t type, len, nlen;
        NBDExportDesc *e;

        ret = nbd_c_reply(s, NBD_OPT_LIST, &type, &d, &len, errp);
        if (ret < 0) {
            return ret;
        }
        if (type == NBD_REP_ACK) {
            return 0;
        }
        if (type & NBD_REP_FLAG_ERROR) {
            return nbd_c_list_error(NBD_OPT_LIST, type, d, len, errp);
        }
        if (type != NBD_REP_SERVER) {
            continue;
        }
        if (len < 4 || (nlen = nbd_get32(d)) > len - 4 ||
            nlen > NBD_MAX_STRING_SIZE ||
            len - 4 - nlen > NBD_MAX_STRING_SIZE) {
            error_setg(errp, "nbd: bad reply to option list");
            return -EPROTO;
        }
        if (list->len >= NBD_LIST_MAX_EXPORTS) {
            error_setg(errp, "nbd: the server lists more than %d exports",
                       NBD_LIST_MAX_EXPORTS);
            return -E2BIG;
        }
        e = g_new0(NBDExportDesc, 1);
        e->name = g_strndup((char *)d + 4, nlen);
        if (len - 4 - nlen) {
            e->description = g_strndup((char *)d + 4 + nlen, len - 4 - nlen);
        }
        g_ptr_array_add(list, e);
    }
}

/* NBD_OPT_INFO asking for the description and block sizes. */
static int coroutine_fn nbd_c_list_info(BDRVNBDState *s, NBDExportDesc *e,
                                        Error **errp)
{
    uint8_t t[6];
    bool have_export = false;
    int ret;

    nbd_put16(nbd_put16(nbd_put16(t, 2), NBD_INFO_DESCRIPTION),
              NBD_INFO_BLOCK_SIZE);
    ret = nbd_c_opt_export(s, NBD_OPT_INFO, e->name, t, sizeof(t), errp);
    if (ret < 0) {
        return ret;
    }
    for (;;) {
        g_autofree uint8_t *d = NULL;
        uint32_t type, len;

        ret = nbd_c_reply(s, NBD_OPT_INFO, &type, &d, &len, errp);
        if (ret < 0) {
            return ret;
        }
        if (type == NBD_REP_ACK) {
            break;
        }
        if (type & NBD_REP_FLAG_ERROR) {
            return nbd_c_list_error(NBD_OPT_INFO, type, d, len, errp);
        }
        if (type != NBD_REP_INFO || len < 2) {
            continue;
        }
        switch (nbd_get16(d)) {
        case NBD_INFO_EXPORT:
            if (len != 12) {
                goto bad;
            }
            e->size = nbd_get64(d + 2);
            e->flags = nbd_get16(d + 10);
            have_export = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            if (len != 14) {
                goto bad;
            }
            e->min_block = nbd_get32(d + 2);
            e->opt_block = nbd_get32(d + 6);
            e->max_block = nbd_get32(d + 10);
            break;
        case NBD_INFO_DESCRIPTION:
            if (len - 2 > NBD_MAX_STRING_SIZE) {
                goto bad;
            }
            g_free(e->description);
            e->description = len > 2 ? g_strndup((char *)d + 2, len - 2)
                                     : NULL;
            break;
        default:
            break;
        }
    }
    if (!have_export) {
        goto bad;
    }
    return 0;

bad:
    error_setg(errp, "nbd: bad information about export '%s'", e->name);
    return -EPROTO;
}

/* NBD_OPT_LIST_META_CONTEXT with no query: every context of the export. */
static int coroutine_fn nbd_c_list_contexts(BDRVNBDState *s,
                                            NBDExportDesc *e, Error **errp)
{
    uint8_t none[4];
    int ret;

    nbd_put32(none, 0);
    ret = nbd_c_opt_export(s, NBD_OPT_LIST_META_CONTEXT, e->name, none,
                           sizeof(none), errp);
    if (ret < 0) {
        return ret;
    }
    e->contexts = g_ptr_array_new_with_free_func(g_free);
    for (;;) {
        g_autofree uint8_t *d = NULL;
        uint32_t type, len;

        ret = nbd_c_reply(s, NBD_OPT_LIST_META_CONTEXT, &type, &d, &len, errp);
        if (ret < 0) {
            return ret;
        }
        if (type == NBD_REP_ACK || (type & NBD_REP_FLAG_ERROR)) {
            return 0;           /* an error: no contexts to show */
        }
        if (type != NBD_REP_META_CONTEXT) {
            continue;
        }
        if (len < 4 || len - 4 > NBD_MAX_STRING_SIZE ||
            e->contexts->len >= NBD_LIST_MAX_CONTEXTS) {
            error_setg(errp, "nbd: bad reply to option list meta context");
            return -EPROTO;
        }
        g_ptr_array_add(e->contexts, g_strndup((char *)d + 4, len - 4));
    }
}

/* Structured replies (so that contexts may be listed); 1 if accepted. */
static int coroutine_fn nbd_c_list_structured(BDRVNBDState *s, Error **errp)
{
    int ret = nbd_c_opt(s, NBD_OPT_STRUCTURED_REPLY, NULL, 0, errp);

    if (ret < 0) {
        return ret;
    }
    for (;;) {
        g_autofree uint8_t *d = NULL;
        uint32_t type, len;

        ret = nbd_c_reply(s, NBD_OPT_STRUCTURED_REPLY, &type, &d, &len, errp);
        if (ret < 0) {
            return ret;
        }
        if (type == NBD_REP_ACK) {
            return 1;
        }
        if (type & NBD_REP_FLAG_ERROR) {
            return 0;
        }
    }
}

static int coroutine_fn nbd_c_list_all(BDRVNBDState *s, GPtrArray *list,
                                       Error **errp)
{
    int structured, ret;

    ret = nbd_c_greet(s, errp);
    if (ret < 0) {
        return ret;
    }
    ret = nbd_c_list_names(s, list, errp);
    if (ret < 0) {
        return ret;
    }
    structured = nbd_c_list_structured(s, errp);
    if (structured < 0) {
        return structured;
    }
    for (guint i = 0; i < list->len; i++) {
        NBDExportDesc *e = g_ptr_array_index(list, i);

        ret = nbd_c_list_info(s, e, errp);
        if (ret == 0 && structured) {
            e->structured = true;
            ret = nbd_c_list_contexts(s, e, errp);
        }
        if (ret < 0) {
            return ret;
        }
    }
    nbd_c_opt(s, NBD_OPT_ABORT, NULL, 0, NULL); /* a courtesy: no wait */
    return 0;
}

GPtrArray *coroutine_fn nbd_co_list_exports(const SockAddr *addr,
                                            TLSCreds *tls,
                                            const char *tls_hostname,
                                            Error **errp)
{
    g_autofree BDRVNBDState *s = g_new0(BDRVNBDState, 1);
    GPtrArray *list = g_ptr_array_new_with_free_func(nbd_export_desc_free);
    Error *err = NULL;
    int fd, ret;

    s->tls = tls;
    s->tls_hostname = (char *)tls_hostname;
    s->neg_deadline = qemu_clock_get_ns() + NBD_HANDSHAKE_TIMEOUT_NS;
    fd = sock_co_connect(addr, s->neg_deadline, NULL, &err);
    if (fd < 0) {
        g_autofree char *where = addr->type == SOCK_ADDR_UNIX ?
            g_strdup(addr->path) :
            g_strdup_printf("%s:%d", addr->host, addr->port);

        error_free(err);
        error_setg(errp, "Failed to connect to '%s': %s", where,
                   strerror(-fd));
        nbd_export_list_free(list);
        return NULL;
    }
    s->nconn = sock_conn_new(fd);
    sock_conn_set_recv_deadline(s->nconn, s->neg_deadline);
    ret = nbd_c_list_all(s, list, errp);
    sock_conn_shutdown_send(s->nconn);
    sock_conn_unref(s->nconn);
    if (ret < 0) {
        nbd_export_list_free(list);
        return NULL;
    }
    return list;
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
    if (!slot->sending) {
        aio_co_wake(slot->co);
    }
}

static void nbd_conn_broken(BDRVNBDState *s, SockConn *conn, int err);

static bool nbd_replies_due(BDRVNBDState *s, SockConn *conn)
{
    for (int i = 0; i < NBD_CLIENT_SLOTS; i++) {
        if (s->slots[i].busy && !s->slots[i].done &&
            s->slots[i].conn == conn) {
            return true;
        }
    }
    return false;
}

/* Read one reply or chunk. <0: the connection cannot go on. */
static int coroutine_fn nbd_recv_one(BDRVNBDState *s, SockConn *conn)
{
    uint8_t hdr[NBD_STRUCTURED_REPLY_LEN];
    NBDSlot *slot;
    int ret;

    ret = sock_conn_co_recv_buf(conn, hdr, 4);
    if (ret < 0) {
        return ret;
    }
    if (nbd_get32(hdr) == NBD_SIMPLE_REPLY_MAGIC) {
        ret = sock_conn_co_recv_buf(conn, hdr + 4, 12);
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
            ret = sock_conn_co_recv(conn, sub.iov, sub.niov, slot->len,
                                    NULL);
            qemu_iovec_destroy(&sub);
            if (ret < 0) {
                return ret;
            }
        }
        nbd_complete(slot, nbd_wire_to_errno(err));
        return 0;
    }
    if (nbd_get32(hdr) != NBD_STRUCTURED_REPLY_MAGIC || !s->info.structured) {
        return -EPROTO;
    }
    ret = sock_conn_co_recv_buf(conn, hdr + 4, 16);
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
        ret = sock_conn_co_recv_buf(conn, f,
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
            ret = sock_conn_co_recv(conn, sub.iov, sub.niov, n, NULL);
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
        ret = sock_conn_co_recv_buf(conn, f, 12);
        if (ret < 0) {
            return ret;
        }
        if (nbd_get32(f) == s->info.meta_id && !slot->bs_got) {
            slot->bs_len = nbd_get32(f + 4);
            slot->bs_flags = nbd_get32(f + 8);
            slot->bs_got = slot->bs_len > 0;
        }
        ret = sock_conn_co_recv(conn, NULL, 0, len - 12, NULL);
        if (ret < 0) {
            return ret;
        }
        break;
    }
    default:
        if (!NBD_REPLY_TYPE_IS_ERR(type) || len < 6) {
            /* an unknown non-error chunk: skip it */
            ret = sock_conn_co_recv(conn, NULL, 0, len, NULL);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        uint8_t e[6];
        ret = sock_conn_co_recv_buf(conn, e, 6);
        if (ret < 0) {
            return ret;
        }
        if (nbd_get16(e + 4) > len - 6) {
            return -EPROTO;
        }
        ret = sock_conn_co_recv(conn, NULL, 0, len - 6, NULL);
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

/*
 * The receive coroutine of one connection: runs while replies are due on
 * it (a request restarts it). When the connection breaks or stays silent
 * for the reply timeout, every request waiting on it is lost: it fails,
 * or with reconnect-delay it is sent again on the next connection.
 */
typedef struct NBDRecvArgs {
    BDRVNBDState *s;
    SockConn *conn;             /* a reference for the coroutine */
} NBDRecvArgs;

static void coroutine_fn nbd_recv_co(void *opaque)
{
    NBDRecvArgs *args = opaque;
    BDRVNBDState *s = args->s;
    SockConn *conn = args->conn;
    int ret = 0;

    g_free(args);
    while (!s->closing && !sock_conn_recv_error(conn) &&
           nbd_replies_due(s, conn)) {
        sock_conn_set_recv_deadline(conn, s->reply_ns ?
                                    qemu_clock_get_ns() + s->reply_ns :
                                    SOCK_NO_DEADLINE);
        ret = nbd_recv_one(s, conn);
        if (ret < 0) {
            break;
        }
    }
    sock_conn_set_opaque(conn, NULL);
    if (ret < 0 || sock_conn_recv_error(conn)) {
        nbd_conn_broken(s, conn, ret);
    }
    sock_conn_unref(conn);
}

/* conn broke: every request waiting on it is lost. */
static void nbd_conn_broken(BDRVNBDState *s, SockConn *conn, int err)
{
    if (!s->cl && !s->err) {
        s->err = err == -ECONNRESET || err == -EPIPE || err >= 0 ? -EIO : err;
    }
    sock_conn_abort(conn, -EIO);
    for (int i = 0; i < NBD_CLIENT_SLOTS; i++) {
        NBDSlot *slot = &s->slots[i];
        if (slot->busy && !slot->done && slot->conn == conn) {
            slot->lost = true;
            nbd_complete(slot, s->cl ? -EIO : s->err);
        }
    }
}

/*
 * The connection for the next request: the current one, or with
 * reconnect-delay a new one, waiting until deadline at most (0: give up
 * as the client has).
 */
static int coroutine_fn nbd_co_get_conn(BDRVNBDState *s, int64_t deadline)
{
    SockConn *conn;
    int ret;

    if (s->conn && !sock_conn_send_error(s->conn) &&
        !sock_conn_recv_error(s->conn)) {
        return 0;
    }
    if (!s->cl) {
        return s->err ? s->err : -EIO;
    }
    if (s->conn) {
        sock_client_drop(s->cl, s->conn);
        sock_conn_unref(s->conn);
        s->conn = NULL;
    }
    if (sock_client_given_up(s->cl)) {
        return -EIO;
    }
    ret = sock_client_co_get(s->cl, deadline, &conn, NULL);
    if (ret < 0) {
        return -EIO;
    }
    if (s->conn) {
        /* another request got there first */
        sock_conn_unref(conn);
    } else {
        s->conn = conn;
    }
    return 0;
}

/* Send one request on the current connection and wait for its reply. */
static int coroutine_fn nbd_co_request_once(BlockDriverState *bs,
                                            NBDSlot *slot, uint16_t flags)
{
    BDRVNBDState *s = bs->opaque;
    SockConn *conn = s->conn;
    uint8_t hdr[NBD_REQUEST_LEN], *p = hdr;
    int64_t deadline = qemu_clock_get_ns() + NBD_SEND_TIMEOUT_NS;
    QEMUIOVector sub;
    struct iovec *iov;
    int niov = 1, ret;

    slot->handle = ++s->next_handle;
    slot->conn = conn;
    p = nbd_put32(p, NBD_REQUEST_MAGIC);
    p = nbd_put16(p, flags);
    p = nbd_put16(p, slot->type);
    p = nbd_put64(p, slot->handle);
    p = nbd_put64(p, slot->offset);
    nbd_put32(p, slot->len);
    if (slot->type == NBD_CMD_WRITE) {
        qemu_iovec_init_slice(&sub, slot->qiov, slot->qiov_offset, slot->len);
        iov = g_new(struct iovec, sub.niov + 1);
        memcpy(iov + 1, sub.iov, sub.niov * sizeof(*iov));
        niov += sub.niov;
        qemu_iovec_destroy(&sub);
    } else {
        iov = g_new(struct iovec, 1);
    }
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof(hdr);
    sock_conn_ref(conn);
    slot->sending = true;
    ret = sock_conn_co_send(conn, iov, niov, deadline, NULL);
    slot->sending = false;
    g_free(iov);
    if (slot->done) {
        /* Lost (or answered by a broken server) while it was sent. */
    } else if (ret < 0) {
        /* Nothing (or only part) of it arrived: lost with the others. */
        slot->done = true;
        nbd_conn_broken(s, conn, ret);
        slot->lost = true;
        slot->ret = s->cl ? -EIO : s->err;
    } else if (!sock_conn_get_opaque(conn)) {
        NBDRecvArgs *args = g_new(NBDRecvArgs, 1);

        args->s = s;
        args->conn = sock_conn_ref(conn);
        sock_conn_set_opaque(conn, s);      /* its receiver runs */
        aio_co_schedule(qemu_coroutine_create(nbd_recv_co, args));
    }
    while (!slot->done) {
        qemu_coroutine_yield();
    }
    if (!slot->lost && slot->ret != -EIO && s->cl) {
        sock_client_mark_healthy(s->cl, conn);
    }
    sock_conn_unref(conn);
    return slot->ret;
}

/*
 * Send one request and wait for its whole reply. A request lost with its
 * connection is sent again on the next one (reconnect-delay), for at most
 * reconnect-delay seconds after it was first lost.
 */
static int coroutine_fn nbd_co_request(BlockDriverState *bs, uint16_t type,
                                       uint16_t flags, uint64_t offset,
                                       uint32_t len, QEMUIOVector *qiov,
                                       size_t qiov_offset, NBDSlot *out)
{
    BDRVNBDState *s = bs->opaque;
    int64_t lost_at = 0;
    int ret;

    for (;;) {
        NBDSlot *slot = NULL;

        if (s->closing) {
            return -ESHUTDOWN;
        }
        ret = nbd_co_get_conn(s, lost_at ? lost_at + s->reconnect_ns :
                              qemu_clock_get_ns() + s->reconnect_ns);
        if (ret < 0) {
            return ret;
        }
        for (int i = 0; i < NBD_CLIENT_SLOTS && !slot; i++) {
            if (!s->slots[i].busy) {
                slot = &s->slots[i];
            }
        }
        if (!slot) {
            qemu_co_queue_wait(&s->slot_wait, NULL);
            continue;
        }
        *slot = (NBDSlot) {
            .busy = true, .co = qemu_coroutine_self(), .type = type,
            .offset = offset, .len = len, .qiov = qiov,
            .qiov_offset = qiov_offset,
        };
        ret = nbd_co_request_once(bs, slot, flags);
        if (out) {
            *out = *slot;
        }
        bool lost = slot->lost;
        slot->busy = false;
        qemu_co_queue_next(&s->slot_wait);
        if (!lost || !s->cl || s->closing) {
            return ret;
        }
        if (!lost_at) {
            lost_at = qemu_clock_get_ns();
        } else if (qemu_clock_get_ns() >= lost_at + s->reconnect_ns) {
            return -EIO;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Connecting                                                         */

/* A node opened by options gets a name as QEMU 7.2 gives it (info). */
static void nbd_name_from_opts(BDRVNBDState *s, char *buf, size_t size)
{
    g_autofree char *name = NULL;

    if (s->addr.type == SOCK_ADDR_UNIX) {
        name = s->export ?
            g_strdup_printf("nbd+unix:///%s?socket=%s", s->export,
                            s->addr.path) :
            g_strdup_printf("nbd+unix://?socket=%s", s->addr.path);
    } else {
        bool v6 = strchr(s->addr.host, ':') != NULL;
        name = g_strdup_printf("nbd://%s%s%s:%d%s%s", v6 ? "[" : "",
                               s->addr.host, v6 ? "]" : "", s->addr.port,
                               s->export ? "/" : "",
                               s->export ? s->export : "");
    }
    g_strlcpy(buf, name, size);
}

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

/* reconnect-delay, open-timeout, reply-timeout */
static int nbd_open_timeouts(BDRVNBDState *s, QemuOpts *options,
                             Error **errp)
{
    static const char *const names[] = {
        "reconnect-delay", "open-timeout", "reply-timeout"
    };
    int64_t *dst[] = { &s->reconnect_ns, &s->open_timeout_ns, &s->reply_ns };
    uint64_t defs[] = { 0, 0, NBD_REPLY_TIMEOUT_NS / NS };

    for (int i = 0; i < 3; i++) {
        uint64_t v = options ? qemu_opt_get_number(options, names[i], defs[i])
                             : defs[i];
        if (v > NBD_MAX_DELAY_S) {
            error_setg(errp, "nbd: %s must be at most %d seconds", names[i],
                       NBD_MAX_DELAY_S);
            return -EINVAL;
        }
        *dst[i] = v * NS;
    }
    return 0;
}

/*
 * Negotiate on conn by deadline: STARTTLS when asked for, then the export.
 * The first negotiation fixes the export; a reconnect must find the same
 * size, flags and block sizes.
 */
static int coroutine_fn nbd_co_negotiate_conn(BDRVNBDState *s, SockConn *conn,
                                              int64_t deadline, Error **errp)
{
    int ret;

    s->nconn = conn;
    s->neg_deadline = deadline;
    memset(&s->neg, 0, sizeof(s->neg));
    sock_conn_set_recv_deadline(conn, deadline);
    ret = nbd_c_negotiate(s, errp);
    sock_conn_set_recv_deadline(conn, SOCK_NO_DEADLINE);
    s->nconn = NULL;
    if (ret < 0) {
        return ret;
    }
    if (s->info.size && memcmp(&s->neg, &s->info, sizeof(s->neg))) {
        error_setg(errp, "nbd: the export changed across a reconnect");
        return -EIO;
    }
    s->info = s->neg;
    return 0;
}

/* SockClientOps.co_setup of a reconnect */
static int coroutine_fn nbd_co_setup(void *opaque, SockConn *conn,
                                     int64_t deadline, Error **errp)
{
    BDRVNBDState *s = opaque;

    return nbd_co_negotiate_conn(s, conn, MIN(deadline, qemu_clock_get_ns() +
                                              NBD_HANDSHAKE_TIMEOUT_NS), errp);
}

static const SockClientOps nbd_client_ops = {
    .co_setup = nbd_co_setup,
};

/* Failures of the first connection that open-timeout retries. */
static bool nbd_open_retryable(int err)
{
    return err == -ECONNREFUSED || err == -ENOENT || err == -ECONNRESET ||
           err == -EPIPE || err == -ETIMEDOUT || err == -EAGAIN;
}

/*
 * The first connection: one attempt bounded by the handshake timeout, or
 * with open-timeout attempts with back-off until it has passed.
 */
static int coroutine_fn nbd_co_first_connect(BDRVNBDState *s, Error **errp)
{
    int64_t start = qemu_clock_get_ns();
    int64_t end = start + (s->open_timeout_ns ? s->open_timeout_ns :
                           NBD_HANDSHAKE_TIMEOUT_NS);
    int64_t backoff = 100 * 1000000LL;

    for (;;) {
        Error *err = NULL;
        SockConn *conn;
        bool connected = false;
        int fd, ret;

        fd = sock_co_connect(&s->addr, end, NULL, &err);
        if (fd >= 0) {
            connected = true;
            conn = sock_conn_new(fd);
            ret = nbd_co_negotiate_conn(s, conn, end, &err);
            if (ret == 0) {
                s->conn = conn;
                return 0;
            }
            sock_conn_unref(conn);
        } else {
            ret = fd;
        }
        if (!s->open_timeout_ns || qemu_clock_get_ns() + backoff >= end ||
            (connected && !nbd_open_retryable(ret))) {
            if (ret == -ETIMEDOUT && connected) {
                error_free(err);
                error_setg(errp, "nbd: no answer from the server in %" PRId64
                           " s", (end - start) / NS);
            } else {
                error_propagate(errp, err);
            }
            return ret;
        }
        error_free(err);
        qemu_co_sleep_ns(backoff);
        backoff = MIN(backoff * 2, 1000 * 1000000LL);
    }
}

/* ------------------------------------------------------------------ */
/* Driver callbacks                                                   */

static int coroutine_fn nbd_open(BlockDriverState *bs, QemuOpts *options,
                                 int flags, Error **errp)
{
    BDRVNBDState *s = bs->opaque;
    const char *name = bs->filename;
    int ret;

    qemu_co_queue_init(&s->slot_wait);
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
            ret = -EINVAL;
            goto fail;
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
    ret = nbd_open_timeouts(s, options, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = nbd_co_first_connect(s, errp);
    if (ret < 0) {
        goto fail;
    }
    if ((flags & BDRV_O_RDWR) && (s->info.eflags & NBD_FLAG_READ_ONLY)) {
        /* QEMU 7.2 says only this; the cause is the read-only export */
        error_setg(errp, "Could not open image: Permission denied");
        ret = -EACCES;
        goto fail;
    }
    if (!bs->filename[0]) {
        nbd_name_from_opts(s, bs->filename, sizeof(bs->filename));
    }
    if (s->reconnect_ns) {
        s->cl = sock_client_new(&s->addr, &nbd_client_ops, s, s->reconnect_ns);
        sock_client_adopt(s->cl, sock_conn_ref(s->conn));
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

    s->closing = true;
    if (s->conn && !sock_conn_send_error(s->conn)) {
        struct iovec iov = { hdr, sizeof(hdr) };
        uint8_t *p = nbd_put32(hdr, NBD_REQUEST_MAGIC);

        p = nbd_put16(p, 0);
        nbd_put16(p, NBD_CMD_DISC);
        sock_conn_co_send(s->conn, &iov, 1,
                          qemu_clock_get_ns() + NBD_SEND_TIMEOUT_NS, NULL);
        sock_conn_shutdown_send(s->conn);
    }
    if (s->cl) {
        sock_client_co_free(s->cl);
        s->cl = NULL;
    }
    if (s->conn) {
        sock_conn_unref(s->conn);
        s->conn = NULL;
    }
    sock_addr_clear(&s->addr);
    g_free(s->export);
    g_free(s->tls_hostname);
}

static void nbd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVNBDState *s = bs->opaque;

    (void)errp;
    bs->bl.request_alignment = s->info.min_block;
    bs->bl.max_transfer = s->info.max_block;
}

static int64_t nbd_getlength(BlockDriverState *bs)
{
    BDRVNBDState *s = bs->opaque;

    return s->info.size;
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
    bool fua = (flags & BDRV_REQ_FUA) && (s->info.eflags & NBD_FLAG_SEND_FUA);
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

    if (!(s->info.eflags & NBD_FLAG_SEND_WRITE_ZEROES)) {
        return -ENOTSUP;
    }
    if ((flags & BDRV_REQ_NO_FALLBACK) &&
        !(s->info.eflags & NBD_FLAG_SEND_FAST_ZERO)) {
        return -ENOTSUP;
    }
    f |= (flags & BDRV_REQ_FUA) && (s->info.eflags & NBD_FLAG_SEND_FUA) ?
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

    if (!(s->info.eflags & NBD_FLAG_SEND_TRIM)) {
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

    if (!(s->info.eflags & NBD_FLAG_SEND_FLUSH)) {
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
    uint32_t n = MIN(bytes, (int64_t)(UINT32_MAX & ~(s->info.min_block - 1)));
    int ret;

    (void)want_zero;
    *map = offset;
    *file = bs;
    if (!s->info.base_allocation) {
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
