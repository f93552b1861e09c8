/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The "sheepdog" protocol driver: a client of a Sheepdog cluster (wire
 * protocol v2). Many requests are pipelined on one non-blocking connection,
 * matched by id, and resent after a reconnect; VDIs are locked, snapshotted,
 * cloned and rolled back as the reference `dog` CLI does.
 */
#include "block_int.h"
#include "block/sheepdog_proto.h"
#include "util/aio.h"
#include "util/cutils.h"
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#define SD_DEFAULT_RECONNECT_TIMEOUT 30
#define SD_BACKOFF_MIN_NS   (50 * 1000 * 1000LL)
#define SD_BACKOFF_MAX_NS   (2000 * 1000 * 1000LL)
#define SD_IOV_BATCH        64

/* ------------------------------------------------------------------ */
/* Header encoding                                                    */

static void st8(uint8_t *p, uint8_t v)
{
    p[0] = v;
}

static void st16(uint8_t *p, uint16_t v)
{
    v = cpu_to_le16(v);
    memcpy(p, &v, 2);
}
static void st32(uint8_t *p, uint32_t v)
{
    v = cpu_to_le32(v);
    memcpy(p, &v, 4);
}
static void st64(uint8_t *p, uint64_t v)
{
    v = cpu_to_le64(v);
    memcpy(p, &v, 8);
}
static uint16_t ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return GUINT16_FROM_LE(v);
}
static uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return GUINT32_FROM_LE(v);
}
static uint64_t ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64_to_cpu(v);
}

static bool sd_is_obj_op(uint8_t opcode)
{
    return opcode >= SD_OP_CREATE_AND_WRITE_OBJ && opcode <= SD_OP_DISCARD_OBJ;
}

void sd_req_encode(const SheepdogReq *req, uint8_t buf[SD_HDR_SIZE])
{
    memset(buf, 0, SD_HDR_SIZE);
    st8(buf + 0, req->proto_ver);
    st8(buf + 1, req->opcode);
    st16(buf + 2, req->flags);
    st32(buf + 4, req->epoch);
    st32(buf + 8, req->id);
    st32(buf + 12, req->data_length);
    if (sd_is_obj_op(req->opcode)) {
        st64(buf + 16, req->obj.oid);
        st64(buf + 24, req->obj.cow_oid);
        st8(buf + 32, req->obj.copies);
        st8(buf + 33, req->obj.copy_policy);
        st8(buf + 34, req->obj.ec_index);
        st32(buf + 36, req->obj.tgt_epoch);
        st32(buf + 40, req->obj.offset);
    } else {
        st64(buf + 16, req->vdi.vdi_size);
        st32(buf + 24, req->vdi.base_vdi_id);
        st8(buf + 28, req->vdi.copies);
        st8(buf + 29, req->vdi.copy_policy);
        st8(buf + 30, req->vdi.store_policy);
        st8(buf + 31, req->vdi.block_size_shift);
        st32(buf + 32, req->vdi.snapid);
        st32(buf + 36, req->vdi.type);
    }
}

void sd_req_decode(const uint8_t buf[SD_HDR_SIZE], SheepdogReq *req)
{
    memset(req, 0, sizeof(*req));
    req->proto_ver = buf[0];
    req->opcode = buf[1];
    req->flags = ld16(buf + 2);
    req->epoch = ld32(buf + 4);
    req->id = ld32(buf + 8);
    req->data_length = ld32(buf + 12);
    if (sd_is_obj_op(req->opcode)) {
        req->obj.oid = ld64(buf + 16);
        req->obj.cow_oid = ld64(buf + 24);
        req->obj.copies = buf[32];
        req->obj.copy_policy = buf[33];
        req->obj.ec_index = buf[34];
        req->obj.tgt_epoch = ld32(buf + 36);
        req->obj.offset = ld32(buf + 40);
    } else {
        req->vdi.vdi_size = ld64(buf + 16);
        req->vdi.base_vdi_id = ld32(buf + 24);
        req->vdi.copies = buf[28];
        req->vdi.copy_policy = buf[29];
        req->vdi.store_policy = buf[30];
        req->vdi.block_size_shift = buf[31];
        req->vdi.snapid = ld32(buf + 32);
        req->vdi.type = ld32(buf + 36);
    }
}

void sd_rsp_encode(const SheepdogRsp *rsp, uint8_t buf[SD_HDR_SIZE])
{
    memset(buf, 0, SD_HDR_SIZE);
    st8(buf + 0, rsp->proto_ver);
    st8(buf + 1, rsp->opcode);
    st16(buf + 2, rsp->flags);
    st32(buf + 4, rsp->epoch);
    st32(buf + 8, rsp->id);
    st32(buf + 12, rsp->data_length);
    st32(buf + 16, rsp->result);
    if (rsp->opcode == SD_OP_GET_CLUSTER_DEFAULT) {
        st8(buf + 20, rsp->nr_copies);
        st8(buf + 21, rsp->copy_policy);
        st8(buf + 22, rsp->default_block_size_shift);
    } else if (!sd_is_obj_op(rsp->opcode)) {
        st32(buf + 24, rsp->vdi_id);
        st32(buf + 28, rsp->attr_id);
        st8(buf + 32, rsp->copies);
        st8(buf + 33, rsp->block_size_shift);
    }
}

void sd_rsp_decode(const uint8_t buf[SD_HDR_SIZE], SheepdogRsp *rsp)
{
    memset(rsp, 0, sizeof(*rsp));
    rsp->proto_ver = buf[0];
    rsp->opcode = buf[1];
    rsp->flags = ld16(buf + 2);
    rsp->epoch = ld32(buf + 4);
    rsp->id = ld32(buf + 8);
    rsp->data_length = ld32(buf + 12);
    rsp->result = ld32(buf + 16);
    if (rsp->opcode == SD_OP_GET_CLUSTER_DEFAULT) {
        rsp->nr_copies = buf[20];
        rsp->copy_policy = buf[21];
        rsp->default_block_size_shift = buf[22];
    } else if (!sd_is_obj_op(rsp->opcode)) {
        rsp->vdi_id = ld32(buf + 24);
        rsp->attr_id = ld32(buf + 28);
        rsp->copies = buf[32];
        rsp->block_size_shift = buf[33];
    }
}

void sd_inode_header_decode(const uint8_t *buf, SheepdogInodeHeader *hdr)
{
    memset(hdr, 0, sizeof(*hdr));
    memcpy(hdr->name, buf + SD_INODE_OFF_NAME, SD_NAME_LEN);
    memcpy(hdr->tag, buf + SD_INODE_OFF_TAG, SD_TAG_LEN);
    hdr->create_time = ld64(buf + SD_INODE_OFF_CTIME);
    hdr->snap_ctime = ld64(buf + SD_INODE_OFF_SNAP_CTIME);
    hdr->vm_clock_nsec = ld64(buf + SD_INODE_OFF_VM_CLOCK);
    hdr->vdi_size = ld64(buf + SD_INODE_OFF_VDI_SIZE);
    hdr->vm_state_size = ld64(buf + SD_INODE_OFF_VM_STATE);
    hdr->copy_policy = buf[SD_INODE_OFF_COPY_POLICY];
    hdr->store_policy = buf[SD_INODE_OFF_STORE_POLICY];
    hdr->nr_copies = buf[SD_INODE_OFF_NR_COPIES];
    hdr->block_size_shift = buf[SD_INODE_OFF_BLOCK_SHIFT];
    hdr->snap_id = ld32(buf + SD_INODE_OFF_SNAP_ID);
    hdr->vdi_id = ld32(buf + SD_INODE_OFF_VDI_ID);
    hdr->parent_vdi_id = ld32(buf + SD_INODE_OFF_PARENT);
}

const char *sd_strerror(uint32_t result)
{
    static const char *const names[] = {
        [SD_RES_SUCCESS] = "success",
        [SD_RES_UNKNOWN] = "unknown error",
        [SD_RES_NO_OBJ] = "no such object",
        [SD_RES_EIO] = "I/O error",
        [SD_RES_VDI_EXIST] = "VDI exists already",
        [SD_RES_INVALID_PARMS] = "invalid parameters",
        [SD_RES_SYSTEM_ERROR] = "system error",
        [SD_RES_VDI_LOCKED] = "VDI is locked",
        [SD_RES_NO_VDI] = "no such VDI",
        [SD_RES_NO_BASE_VDI] = "no base VDI",
        [SD_RES_VDI_READ] = "cannot read requested VDI",
        [SD_RES_VDI_WRITE] = "cannot write requested VDI",
        [SD_RES_BASE_VDI_READ] = "cannot read base VDI",
        [SD_RES_BASE_VDI_WRITE] = "cannot write base VDI",
        [SD_RES_NO_TAG] = "no such snapshot tag",
        [SD_RES_STARTUP] = "sheep is starting up",
        [SD_RES_VDI_NOT_LOCKED] = "VDI is not locked",
        [SD_RES_SHUTDOWN] = "sheep is shutting down",
        [SD_RES_NO_MEM] = "out of memory on the server",
        [SD_RES_FULL_VDI] = "no free VDI id left",
        [SD_RES_VER_MISMATCH] = "protocol version mismatch",
        [SD_RES_NO_SPACE] = "server has no space for new objects",
        [SD_RES_WAIT_FOR_FORMAT] = "cluster is not formatted",
        [SD_RES_WAIT_FOR_JOIN] = "sheep is waiting for other nodes",
        [SD_RES_JOIN_FAILED] = "node failed to join the cluster",
        [SD_RES_HALT] = "cluster is halted",
        [SD_RES_READONLY] = "object is read-only",
        [SD_RES_INODE_INVALIDATED] = "inode object is invalidated",
    };
    static char buf[32];

    if (result < G_N_ELEMENTS(names) && names[result]) {
        return names[result];
    }
    snprintf(buf, sizeof(buf), "unknown error 0x%x", result);
    return buf;
}

static int sd_result_to_errno(uint32_t result)
{
    switch (result) {
    case SD_RES_SUCCESS:
        return 0;
    case SD_RES_NO_OBJ:
    case SD_RES_NO_VDI:
    case SD_RES_NO_TAG:
    case SD_RES_NO_BASE_VDI:
        return -ENOENT;
    case SD_RES_VDI_EXIST:
        return -EEXIST;
    case SD_RES_INVALID_PARMS:
        return -EINVAL;
    case SD_RES_VDI_LOCKED:
        return -EBUSY;
    case SD_RES_READONLY:
        return -EROFS;
    case SD_RES_NO_SPACE:
    case SD_RES_FULL_VDI:
        return -ENOSPC;
    case SD_RES_NO_MEM:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

uint32_t sd_name_hash(const char *name)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= UINT64_C(0x100000001b3);
    }
    h &= SD_NR_VDIS - 1;
    return h ? (uint32_t)h : 1;
}

/* ------------------------------------------------------------------ */
/* Name parsing                                                       */

void sd_name_clear(SheepdogName *name)
{
    g_free(name->socket);
    name->socket = NULL;
}

/* Decode %XX escapes of a URI component; false on a malformed escape. */
static bool sd_uri_unescape(const char *in, size_t len, GString *out)
{
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '%') {
            if (i + 2 >= len ||
                !g_ascii_isxdigit(in[i + 1]) || !g_ascii_isxdigit(in[i + 2])) {
                return false;
            }
            char c = (char)(g_ascii_xdigit_value(in[i + 1]) * 16 +
                            g_ascii_xdigit_value(in[i + 2]));
            if (!c) {
                return false;
            }
            g_string_append_c(out, c);
            i += 2;
        } else {
            g_string_append_c(out, in[i]);
        }
    }
    return true;
}

static int sd_set_vdi(SheepdogName *name, const char *vdi, Error **errp)
{
    if (!*vdi) {
        error_setg(errp, "sheepdog: missing VDI name");
        return -EINVAL;
    }
    if (strlen(vdi) >= SD_NAME_LEN) {
        error_setg(errp, "sheepdog: VDI name is too long (max %d characters)",
                   SD_NAME_LEN - 1);
        return -EINVAL;
    }
    pstrcpy(name->vdi, sizeof(name->vdi), vdi);
    return 0;
}

/* SNAP: a number 1..2^32-1 is a snapshot id, anything else a tag. */
static int sd_set_snap(SheepdogName *name, const char *snap, Error **errp)
{
    uint64_t id;
    const char *end;

    if (!*snap) {
        error_setg(errp, "sheepdog: empty snapshot id or tag");
        return -EINVAL;
    }
    if (g_ascii_isdigit(snap[0]) &&
        qemu_strtou64(snap, &end, 10, &id) == 0 && !*end &&
        id >= 1 && id <= UINT32_MAX) {
        name->snap_id = (uint32_t)id;
        return 0;
    }
    if (strlen(snap) >= SD_TAG_LEN) {
        error_setg(errp, "sheepdog: snapshot tag is too long (max %d "
                   "characters)", SD_TAG_LEN - 1);
        return -EINVAL;
    }
    pstrcpy(name->tag, sizeof(name->tag), snap);
    return 0;
}

static int sd_set_host(SheepdogName *name, const char *host, size_t len,
                       Error **errp)
{
    if (len == 0) {
        pstrcpy(name->host, sizeof(name->host), SD_DEFAULT_ADDR);
        return 0;
    }
    if (len >= sizeof(name->host)) {
        error_setg(errp, "sheepdog: host name is too long (max %d "
                   "characters)", SD_MAX_HOST_LEN - 1);
        return -EINVAL;
    }
    memcpy(name->host, host, len);
    name->host[len] = '\0';
    return 0;
}

static int sd_set_port(SheepdogName *name, const char *port, Error **errp)
{
    uint64_t v;
    const char *end;

    if (!*port) {
        name->port = SD_DEFAULT_PORT;
        return 0;
    }
    if (!g_ascii_isdigit(port[0]) || qemu_strtou64(port, &end, 10, &v) ||
        *end || v < 1 || v > 65535) {
        error_setg(errp, "sheepdog: invalid port '%s'", port);
        return -EINVAL;
    }
    name->port = (int)v;
    return 0;
}

/* sheepdog:VDI[:SNAP] or sheepdog:HOST:PORT:VDI[:SNAP] */
static int sd_parse_legacy(const char *rest, SheepdogName *name,
                           Error **errp)
{
    g_auto(GStrv) tok = g_strsplit(rest, ":", 4);
    guint n = g_strv_length(tok);
    int ret;

    if (n >= 3) {
        ret = sd_set_host(name, tok[0], strlen(tok[0]), errp);
        if (ret == 0) {
            ret = sd_set_port(name, tok[1], errp);
        }
        if (ret == 0) {
            ret = sd_set_vdi(name, tok[2], errp);
        }
        if (ret == 0 && n == 4) {
            ret = sd_set_snap(name, tok[3], errp);
        }
        return ret;
    }
    pstrcpy(name->host, sizeof(name->host), SD_DEFAULT_ADDR);
    name->port = SD_DEFAULT_PORT;
    ret = sd_set_vdi(name, tok[0] ? tok[0] : "", errp);
    if (ret == 0 && n == 2) {
        ret = sd_set_snap(name, tok[1], errp);
    }
    return ret;
}

/* sheepdog[+tcp|+unix]://[HOST[:PORT]]/VDI[?socket=PATH][#SNAP] */
static int sd_parse_uri(const char *rest, bool is_unix, SheepdogName *name,
                        Error **errp)
{
    const char *slash = strchr(rest, '/');
    const char *query, *frag, *path_end;
    g_autoptr(GString) vdi = g_string_new(NULL);
    g_autoptr(GString) snap = g_string_new(NULL);
    int ret;

    if (!slash) {
        error_setg(errp, "sheepdog: URI lacks the '/VDI' path");
        return -EINVAL;
    }
    frag = strchr(slash, '#');
    query = strchr(slash, '?');
    if (query && frag && query > frag) {
        query = NULL;
    }
    path_end = query ? query : frag ? frag : slash + strlen(slash);

    /* authority */
    if (is_unix) {
        if (slash != rest) {
            error_setg(errp, "sheepdog: a unix socket URI takes no host or "
                       "port");
            return -EINVAL;
        }
        name->host[0] = '\0';
        name->port = 0;
    } else {
        const char *auth_end = slash, *colon;
        const char *host = rest;
        size_t hlen;

        if (*host == '[') {
            const char *rb = memchr(host, ']', auth_end - host);
            if (!rb) {
                error_setg(errp, "sheepdog: malformed IPv6 address in URI");
                return -EINVAL;
            }
            hlen = rb - host - 1;
            host++;
            colon = rb + 1 < auth_end && rb[1] == ':' ? rb + 1 : NULL;
            if (!colon && rb + 1 != auth_end) {
                error_setg(errp, "sheepdog: malformed URI authority");
                return -EINVAL;
            }
        } else {
            colon = memchr(host, ':', auth_end - host);
            hlen = (colon ? colon : auth_end) - host;
        }
        ret = sd_set_host(name, host, hlen, errp);
        if (ret < 0) {
            return ret;
        }
        if (colon) {
            g_autofree char *port = g_strndup(colon + 1,
                                              auth_end - colon - 1);
            if (!*port) {
                error_setg(errp, "sheepdog: empty port in URI");
                return -EINVAL;
            }
            ret = sd_set_port(name, port, errp);
            if (ret < 0) {
                return ret;
            }
        } else {
            name->port = SD_DEFAULT_PORT;
        }
    }

    /* path */
    if (!sd_uri_unescape(slash + 1, path_end - slash - 1, vdi)) {
        error_setg(errp, "sheepdog: malformed escape in VDI name");
        return -EINVAL;
    }
    ret = sd_set_vdi(name, vdi->str, errp);
    if (ret < 0) {
        return ret;
    }

    /* query */
    if (query) {
        const char *qend = frag ? frag : query + strlen(query);
        g_autoptr(GString) sock = g_string_new(NULL);

        if (!is_unix) {
            error_setg(errp, "sheepdog: a tcp URI takes no query parameters");
            return -EINVAL;
        }
        if (strncmp(query + 1, "socket=", 7) != 0 ||
            memchr(query + 1, '&', qend - query - 1)) {
            error_setg(errp, "sheepdog: 'socket' is the only parameter of a "
                       "unix URI");
            return -EINVAL;
        }
        if (!sd_uri_unescape(query + 8, qend - query - 8, sock) ||
            !sock->len) {
            error_setg(errp, "sheepdog: malformed socket path in URI");
            return -EINVAL;
        }
        if (sock->len >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            error_setg(errp, "sheepdog: socket path is too long");
            return -EINVAL;
        }
        name->socket = g_strdup(sock->str);
    } else if (is_unix) {
        error_setg(errp, "sheepdog: a unix URI needs '?socket=PATH'");
        return -EINVAL;
    }

    /* fragment */
    if (frag) {
        if (!sd_uri_unescape(frag + 1, strlen(frag + 1), snap)) {
            error_setg(errp, "sheepdog: malformed escape in snapshot");
            return -EINVAL;
        }
        ret = sd_set_snap(name, snap->str, errp);
        if (ret < 0) {
            sd_name_clear(name);
            return ret;
        }
    }
    return 0;
}

int sd_parse_name(const char *filename, SheepdogName *name, Error **errp)
{
    const char *rest;
    int ret;

    memset(name, 0, sizeof(*name));
    if (strstart(filename, "sheepdog://", &rest) ||
        strstart(filename, "sheepdog+tcp://", &rest)) {
        ret = sd_parse_uri(rest, false, name, errp);
    } else if (strstart(filename, "sheepdog+unix://", &rest)) {
        ret = sd_parse_uri(rest, true, name, errp);
    } else if (strstart(filename, "sheepdog:", &rest)) {
        ret = sd_parse_legacy(rest, name, errp);
    } else {
        error_setg(errp, "sheepdog: '%s' is not a sheepdog image name",
                   filename);
        ret = -EINVAL;
    }
    if (ret < 0) {
        sd_name_clear(name);
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Connection: pipelined requests matched by id, resent on reconnect  */

typedef struct SDRequest {
    SheepdogReq hdr;
    QEMUIOVector *wqiov;        /* payload when SD_FLAG_CMD_WRITE */
    size_t wofs;
    QEMUIOVector *rqiov;        /* where response data goes (may be NULL) */
    size_t rofs;
    size_t rlen;                /* room in rqiov from rofs */
    SheepdogRsp rsp;
    bool done;                  /* response received */
    bool broken;                /* connection lost before the response */
    Coroutine *co;              /* set while waiting for done/broken */
} SDRequest;

typedef struct SDConn {
    char *host;
    int port;
    char *socket;
    int fd;
    uint32_t next_id;
    GHashTable *inflight;       /* id -> SDRequest, sent and unanswered */
    CoMutex send_lock;          /* one header+payload at a time */
    Coroutine *send_co;         /* sender waiting for POLLOUT */
    /* receive state */
    uint8_t rhdr[SD_HDR_SIZE];
    size_t rhdr_got;
    SheepdogRsp rrsp;
    SDRequest *rreq;            /* owner of the data being received */
    size_t rdata_got;
    /* reconnect */
    bool reconnecting;
    int reconnect_ret;
    CoQueue reconnect_queue;
    int64_t reconnect_timeout_ns;
    /* A peer that accepts but stops answering must not hang us: while
     * requests are in flight, no byte moving for reconnect_timeout_ns
     * counts as a broken connection. */
    QEMUTimer *watchdog;
    int64_t last_progress_ns;
} SDConn;

static void sd_wake(Coroutine **pco)
{
    Coroutine *co = *pco;

    if (co) {
        *pco = NULL;
        aio_co_wake(co);
    }
}

static void sd_read_handler(void *opaque);
static void sd_write_handler(void *opaque);

static void sd_conn_init(SDConn *c, const SheepdogName *name,
                         int64_t timeout_s)
{
    memset(c, 0, sizeof(*c));
    c->host = g_strdup(name->host);
    c->port = name->port;
    c->socket = g_strdup(name->socket);
    c->fd = -1;
    c->next_id = 1;
    c->inflight = g_hash_table_new(g_direct_hash, g_direct_equal);
    qemu_co_mutex_init(&c->send_lock);
    qemu_co_queue_init(&c->reconnect_queue);
    c->reconnect_timeout_ns = timeout_s * 1000000000LL;
}

static void sd_conn_broken(SDConn *c);

static void sd_watchdog_cb(void *opaque)
{
    SDConn *c = opaque;

    if (c->fd < 0 || !c->inflight || g_hash_table_size(c->inflight) == 0) {
        return;                 /* idle: re-armed by the next request */
    }
    if (qemu_clock_get_ns() - c->last_progress_ns >= c->reconnect_timeout_ns) {
        sd_conn_broken(c);      /* requests are resent after reconnecting */
        return;
    }
    timer_mod_ns(c->watchdog, c->last_progress_ns + c->reconnect_timeout_ns);
}

/* Called after a request entered c->inflight. */
static void sd_watchdog_arm(SDConn *c)
{
    if (c->reconnect_timeout_ns <= 0) {
        return;
    }
    if (!c->watchdog) {
        c->watchdog = aio_timer_new(qemu_get_aio_context(), sd_watchdog_cb, c);
    }
    if (g_hash_table_size(c->inflight) == 1) {
        c->last_progress_ns = qemu_clock_get_ns();  /* a busy period starts */
    }
    if (!timer_pending(c->watchdog)) {
        timer_mod_ns(c->watchdog,
                     c->last_progress_ns + c->reconnect_timeout_ns);
    }
}

static void sd_conn_reset_rx(SDConn *c)
{
    c->rhdr_got = 0;
    c->rreq = NULL;
    c->rdata_got = 0;
}

/* The connection died: every request in flight will be resent. */
static void sd_conn_broken(SDConn *c)
{
    GHashTableIter it;
    gpointer value;

    if (c->fd < 0) {
        return;
    }
    aio_set_fd_handler(qemu_get_aio_context(), c->fd, NULL, NULL, NULL);
    close(c->fd);
    c->fd = -1;
    sd_conn_reset_rx(c);
    g_hash_table_iter_init(&it, c->inflight);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        SDRequest *r = value;
        r->broken = true;
        sd_wake(&r->co);
    }
    g_hash_table_remove_all(c->inflight);
    sd_wake(&c->send_co);
}

static void sd_conn_destroy(SDConn *c)
{
    if (c->watchdog) {
        timer_free(c->watchdog);
        c->watchdog = NULL;
    }
    if (c->fd >= 0) {
        aio_set_fd_handler(qemu_get_aio_context(), c->fd, NULL, NULL, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->inflight) {
        g_hash_table_destroy(c->inflight);
        c->inflight = NULL;
    }
    g_free(c->host);
    g_free(c->socket);
    c->host = c->socket = NULL;
}

static char *sd_conn_describe(SDConn *c)
{
    if (c->socket) {
        return g_strdup_printf("unix:%s", c->socket);
    }
    return g_strdup_printf("%s:%d", c->host, c->port);
}

/* Blocking connect (local cluster daemon), then switch to non-blocking. */
static int sd_connect_fd(SDConn *c, Error **errp)
{
    int fd = -1, err = 0;

    if (c->socket) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };

        pstrcpy(sun.sun_path, sizeof(sun.sun_path), c->socket);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
            err = errno;
        }
    } else {
        struct addrinfo hints = { .ai_family = AF_UNSPEC,
                                  .ai_socktype = SOCK_STREAM };
        struct addrinfo *res = NULL, *ai;
        char port[16];
        int gai;

        snprintf(port, sizeof(port), "%d", c->port);
        gai = getaddrinfo(c->host, port, &hints, &res);
        if (gai) {
            error_setg(errp, "sheepdog: cannot resolve '%s': %s", c->host,
                       gai_strerror(gai));
            return -EHOSTUNREACH;
        }
        err = ECONNREFUSED;
        for (ai = res; ai; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                        ai->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                err = 0;
                break;
            }
            err = errno;
            close(fd);
            fd = -1;
        }
        freeaddrinfo(res);
    }
    if (err) {
        g_autofree char *where = sd_conn_describe(c);
        if (fd >= 0) {
            close(fd);
        }
        error_setg_errno(errp, err, "sheepdog: failed to connect to %s",
                         where);
        return -err;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static int sd_conn_open(SDConn *c, Error **errp)
{
    int fd = sd_connect_fd(c, errp);

    if (fd < 0) {
        return fd;
    }
    c->fd = fd;
    sd_conn_reset_rx(c);
    aio_set_fd_handler(qemu_get_aio_context(), fd, sd_read_handler, NULL, c);
    return 0;
}

/* Reconnect with exponential back-off until deadline (one coroutine does it,
 * the others wait for its outcome). */
static int coroutine_fn sd_co_reconnect(SDConn *c, int64_t deadline)
{
    int64_t delay = SD_BACKOFF_MIN_NS;
    int ret;

    if (c->reconnecting) {
        qemu_co_queue_wait(&c->reconnect_queue, NULL);
        return c->fd >= 0 ? 0 : c->reconnect_ret;
    }
    c->reconnecting = true;
    for (;;) {
        ret = sd_conn_open(c, NULL);
        if (ret == 0) {
            break;
        }
        if (qemu_clock_get_ns() + delay > deadline) {
            ret = -EIO;
            break;
        }
        qemu_co_sleep_ns(delay);
        delay = MIN(delay * 2, SD_BACKOFF_MAX_NS);
    }
    c->reconnect_ret = ret;
    c->reconnecting = false;
    qemu_co_queue_restart_all(&c->reconnect_queue);
    return ret;
}

/* Build an iovec of at most SD_IOV_BATCH entries covering [skip, ...). */
static int sd_iov_slice(struct iovec *dst, const struct iovec *src, int cnt,
                        size_t skip, size_t max)
{
    int n = 0;

    for (int i = 0; i < cnt && n < SD_IOV_BATCH && max; i++) {
        if (skip >= src[i].iov_len) {
            skip -= src[i].iov_len;
            continue;
        }
        size_t len = MIN(src[i].iov_len - skip, max);
        dst[n].iov_base = (uint8_t *)src[i].iov_base + skip;
        dst[n].iov_len = len;
        max -= len;
        skip = 0;
        n++;
    }
    return n;
}

static void sd_write_handler(void *opaque)
{
    SDConn *c = opaque;

    sd_wake(&c->send_co);
}

/* Send header and payload; yields while the socket is full. */
static int coroutine_fn sd_conn_send(SDConn *c, SDRequest *r)
{
    uint8_t hbuf[SD_HDR_SIZE];
    struct iovec all[2], iov[SD_IOV_BATCH];
    size_t total = SD_HDR_SIZE, sent = 0;
    int fd = c->fd;

    sd_req_encode(&r->hdr, hbuf);
    if (r->hdr.flags & SD_FLAG_CMD_WRITE) {
        total += r->hdr.data_length;
    }
    while (sent < total) {
        int n = 0;
        if (sent < SD_HDR_SIZE) {
            all[0].iov_base = hbuf + sent;
            all[0].iov_len = SD_HDR_SIZE - sent;
            n = 1;
            iov[0] = all[0];
            if (total > SD_HDR_SIZE) {
                n += sd_iov_slice(iov + 1, r->wqiov->iov, r->wqiov->niov,
                                  r->wofs, total - SD_HDR_SIZE);
            }
        } else {
            n = sd_iov_slice(iov, r->wqiov->iov, r->wqiov->niov,
                             r->wofs + sent - SD_HDR_SIZE, total - sent);
        }
        /* MSG_NOSIGNAL: a peer that went away must not raise SIGPIPE */
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = n };
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0 && errno == EAGAIN) {
            c->send_co = qemu_coroutine_self();
            aio_set_fd_handler(qemu_get_aio_context(), fd, sd_read_handler,
                               sd_write_handler, c);
            qemu_coroutine_yield();
            if (c->fd != fd) {
                return -EPIPE;
            }
            aio_set_fd_handler(qemu_get_aio_context(), fd, sd_read_handler,
                               NULL, c);
            continue;
        }
        if (w <= 0) {
            sd_conn_broken(c);
            return -EPIPE;
        }
        c->last_progress_ns = qemu_clock_get_ns();
        sent += w;
    }
    return 0;
}

/* Read a response's data into its request (or drop it). 1: complete,
 * 0: would block, -1: connection broken. */
static int sd_recv_data(SDConn *c)
{
    static uint8_t sink[65536];
    size_t want = c->rrsp.data_length;

    while (c->rdata_got < want) {
        SDRequest *r = c->rreq;
        struct iovec iov[SD_IOV_BATCH];
        ssize_t n;

        if (r && r->rqiov && c->rdata_got < r->rlen) {
            int cnt = sd_iov_slice(iov, r->rqiov->iov, r->rqiov->niov,
                                   r->rofs + c->rdata_got,
                                   MIN(want, r->rlen) - c->rdata_got);
            n = readv(c->fd, iov, cnt);
        } else {
            n = read(c->fd, sink, MIN(sizeof(sink), want - c->rdata_got));
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return 0;
        }
        if (n <= 0) {
            return -1;
        }
        c->last_progress_ns = qemu_clock_get_ns();
        c->rdata_got += n;
    }
    return 1;
}

static void sd_read_handler(void *opaque)
{
    SDConn *c = opaque;

    while (c->fd >= 0) {
        if (c->rhdr_got < SD_HDR_SIZE) {
            ssize_t n = read(c->fd, c->rhdr + c->rhdr_got,
                             SD_HDR_SIZE - c->rhdr_got);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && errno == EAGAIN) {
                return;
            }
            if (n <= 0) {
                sd_conn_broken(c);
                return;
            }
            c->last_progress_ns = qemu_clock_get_ns();
            c->rhdr_got += n;
            if (c->rhdr_got < SD_HDR_SIZE) {
                continue;
            }
            sd_rsp_decode(c->rhdr, &c->rrsp);
            c->rreq = g_hash_table_lookup(c->inflight,
                                          GUINT_TO_POINTER(c->rrsp.id));
            c->rdata_got = 0;
        }
        int ret = sd_recv_data(c);
        if (ret < 0) {
            sd_conn_broken(c);
            return;
        }
        if (ret == 0) {
            return;
        }
        SDRequest *r = c->rreq;
        if (r) {
            g_hash_table_remove(c->inflight, GUINT_TO_POINTER(r->hdr.id));
            r->rsp = c->rrsp;
            r->done = true;
            sd_wake(&r->co);
        }
        sd_conn_reset_rx(c);
    }
}

/*
 * Send one request and wait for its response. wqiov (from wofs) carries
 * hdr->data_length bytes when SD_FLAG_CMD_WRITE is set; response data goes
 * to rqiov from rofs (rlen bytes of room). A lost connection is re-established
 * and the request resent until the reconnect timeout expires. Returns 0 (look
 * at rsp->result) or a negative errno for transport failures.
 */
static int coroutine_fn sd_co_send_req(SDConn *c, SheepdogReq *hdr,
                                       QEMUIOVector *wqiov, size_t wofs,
                                       QEMUIOVector *rqiov, size_t rofs,
                                       size_t rlen, SheepdogRsp *rsp)
{
    SDRequest r = {
        .hdr = *hdr, .wqiov = wqiov, .wofs = wofs,
        .rqiov = rqiov, .rofs = rofs, .rlen = rqiov ? rlen : 0,
    };
    int64_t deadline = 0;
    int ret;

    r.hdr.proto_ver = r.hdr.proto_ver ? r.hdr.proto_ver : SD_PROTO_VER;
    for (;;) {
        if (c->fd < 0) {
            if (!deadline) {
                deadline = qemu_clock_get_ns() + c->reconnect_timeout_ns;
            }
            ret = sd_co_reconnect(c, deadline);
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        r.done = r.broken = false;
        r.hdr.id = c->next_id++;
        qemu_co_mutex_lock(&c->send_lock);
        if (c->fd < 0) {
            qemu_co_mutex_unlock(&c->send_lock);
            continue;
        }
        g_hash_table_insert(c->inflight, GUINT_TO_POINTER(r.hdr.id), &r);
        sd_watchdog_arm(c);
        ret = sd_conn_send(c, &r);
        qemu_co_mutex_unlock(&c->send_lock);
        if (ret == 0) {
            while (!r.done && !r.broken) {
                r.co = qemu_coroutine_self();
                qemu_coroutine_yield();
            }
        }
        if (r.done) {
            *rsp = r.rsp;
            return 0;
        }
        /* broken: the request is no longer in c->inflight */
        if (!deadline) {
            deadline = qemu_clock_get_ns() + c->reconnect_timeout_ns;
        } else if (qemu_clock_get_ns() > deadline) {
            return -EIO;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Object and VDI requests                                            */

/* Read len bytes at offset of object oid into qiov (from qoff). */
static int coroutine_fn sd_co_read_obj(SDConn *c, uint64_t oid,
                                       QEMUIOVector *qiov, size_t qoff,
                                       uint32_t offset, uint32_t len,
                                       uint32_t *result)
{
    SheepdogReq hdr = { .opcode = SD_OP_READ_OBJ, .data_length = len };
    SheepdogRsp rsp;
    int ret;

    hdr.obj.oid = oid;
    hdr.obj.offset = offset;
    ret = sd_co_send_req(c, &hdr, NULL, 0, qiov, qoff, len, &rsp);
    if (ret < 0) {
        return ret;
    }
    *result = rsp.result;
    return sd_result_to_errno(rsp.result);
}

/* WRITE_OBJ (create false) or CREATE_AND_WRITE_OBJ (with COW from cow_oid
 * when non-zero). */
static int coroutine_fn sd_co_write_obj(SDConn *c, uint64_t oid,
                                        uint64_t cow_oid, bool create,
                                        QEMUIOVector *qiov, size_t qoff,
                                        uint32_t offset, uint32_t len,
                                        uint32_t *result)
{
    SheepdogReq hdr = {
        .opcode = create ? SD_OP_CREATE_AND_WRITE_OBJ : SD_OP_WRITE_OBJ,
        .flags = SD_FLAG_CMD_WRITE, .data_length = len,
    };
    SheepdogRsp rsp;
    int ret;

    hdr.obj.oid = oid;
    hdr.obj.offset = offset;
    if (create && cow_oid) {
        hdr.flags |= SD_FLAG_CMD_COW;
        hdr.obj.cow_oid = cow_oid;
    }
    ret = sd_co_send_req(c, &hdr, qiov, qoff, NULL, 0, 0, &rsp);
    if (ret < 0) {
        return ret;
    }
    *result = rsp.result;
    return sd_result_to_errno(rsp.result);
}

static int coroutine_fn sd_co_read_buf(SDConn *c, uint64_t oid, void *buf,
                                       uint32_t offset, uint32_t len,
                                       uint32_t *result)
{
    QEMUIOVector qiov;

    qemu_iovec_init_buf(&qiov, buf, len);
    return sd_co_read_obj(c, oid, &qiov, 0, offset, len, result);
}

static int coroutine_fn sd_co_write_buf(SDConn *c, uint64_t oid,
                                        const void *buf, uint32_t offset,
                                        uint32_t len, uint32_t *result)
{
    QEMUIOVector qiov;

    qemu_iovec_init_buf(&qiov, (void *)buf, len);
    return sd_co_write_obj(c, oid, 0, false, &qiov, 0, offset, len, result);
}

/*
 * A VDI request carrying the name (and the tag when non-empty) as payload.
 * On success *rsp holds the reply; returns -errno with the result in
 * rsp->result.
 */
static int coroutine_fn sd_co_vdi_req(SDConn *c, SheepdogReq *hdr,
                                      const char *name, const char *tag,
                                      SheepdogRsp *rsp)
{
    uint8_t buf[SD_NAME_LEN + SD_TAG_LEN] = { 0 };
    QEMUIOVector qiov;
    int ret;

    pstrcpy((char *)buf, SD_NAME_LEN, name);
    hdr->flags |= SD_FLAG_CMD_WRITE;
    hdr->data_length = SD_NAME_LEN;
    if (tag && *tag) {
        pstrcpy((char *)buf + SD_NAME_LEN, SD_TAG_LEN, tag);
        hdr->data_length += SD_TAG_LEN;
    }
    qemu_iovec_init_buf(&qiov, buf, hdr->data_length);
    ret = sd_co_send_req(c, hdr, &qiov, 0, NULL, 0, 0, rsp);
    if (ret < 0) {
        rsp->result = SD_RES_EIO;
        return ret;
    }
    return sd_result_to_errno(rsp->result);
}

/* GET_VDI_INFO or LOCK_VDI of name [snapid | tag]. */
static int coroutine_fn sd_co_find_vdi(SDConn *c, const char *name,
                                       uint32_t snapid, const char *tag,
                                       bool lock, uint32_t *vid,
                                       Error **errp)
{
    SheepdogReq hdr = {
        .opcode = lock ? SD_OP_LOCK_VDI : SD_OP_GET_VDI_INFO,
    };
    SheepdogRsp rsp;
    int ret;

    hdr.vdi.snapid = snapid;
    ret = sd_co_vdi_req(c, &hdr, name, tag, &rsp);
    if (ret == 0) {
        *vid = rsp.vdi_id;
        return 0;
    }
    if (rsp.result == SD_RES_VDI_LOCKED) {
        error_setg(errp, "VDI '%s' is locked by another client", name);
    } else if (rsp.result == SD_RES_NO_VDI) {
        error_setg(errp, "VDI '%s' not found", name);
    } else if (rsp.result == SD_RES_NO_TAG) {
        if (tag && *tag) {
            error_setg(errp, "VDI '%s' has no snapshot '%s'", name, tag);
        } else {
            error_setg(errp, "VDI '%s' has no snapshot with id %" PRIu32,
                       name, snapid);
        }
    } else if (rsp.result != SD_RES_SUCCESS) {
        error_setg(errp, "cannot get VDI '%s': %s", name,
                   sd_strerror(rsp.result));
    } else {
        error_setg_errno(errp, -ret, "cannot get VDI '%s'", name);
    }
    return ret;
}

static int coroutine_fn sd_co_release_vdi(SDConn *c, const char *name,
                                          uint32_t vid)
{
    SheepdogReq hdr = { .opcode = SD_OP_RELEASE_VDI };
    SheepdogRsp rsp;

    hdr.vdi.base_vdi_id = vid;
    return sd_co_vdi_req(c, &hdr, name, NULL, &rsp);
}

typedef struct SDNewVdi {
    const char *name;
    uint64_t size;
    uint32_t base_vid;
    uint32_t snapid;
    uint8_t copies;
    uint8_t copy_policy;
    uint8_t block_size_shift;
} SDNewVdi;

static int coroutine_fn sd_co_new_vdi(SDConn *c, const SDNewVdi *nv,
                                      uint32_t *vid, Error **errp)
{
    SheepdogReq hdr = { .opcode = SD_OP_NEW_VDI };
    SheepdogRsp rsp;
    int ret;

    hdr.vdi.vdi_size = nv->size;
    hdr.vdi.base_vdi_id = nv->base_vid;
    hdr.vdi.snapid = nv->snapid;
    hdr.vdi.copies = nv->copies;
    hdr.vdi.copy_policy = nv->copy_policy;
    hdr.vdi.block_size_shift = nv->block_size_shift;
    ret = sd_co_vdi_req(c, &hdr, nv->name, NULL, &rsp);
    if (ret < 0) {
        if (rsp.result == SD_RES_VDI_EXIST) {
            error_setg(errp, "VDI '%s' already exists", nv->name);
        } else {
            error_setg(errp, "cannot create VDI '%s': %s", nv->name,
                       sd_strerror(rsp.result));
        }
        return ret;
    }
    *vid = rsp.vdi_id;
    return 0;
}

/* Read the header (and data_vdi_id into map when non-NULL) of vid. */
static int coroutine_fn sd_co_read_inode(SDConn *c, uint32_t vid,
                                         SheepdogInodeHeader *hdr,
                                         uint32_t *map, Error **errp)
{
    size_t len = map ? SD_INODE_CLIENT_SIZE : SD_INODE_HEADER_SIZE;
    g_autofree uint8_t *buf = g_malloc(len);
    uint32_t result = 0;
    int ret;

    ret = sd_co_read_buf(c, sd_vid_to_vdi_oid(vid), buf, 0, len, &result);
    if (ret < 0) {
        error_setg(errp, "cannot read inode of VDI %" PRIx32 ": %s", vid,
                   result ? sd_strerror(result) : strerror(-ret));
        return ret;
    }
    sd_inode_header_decode(buf, hdr);
    if (map) {
        for (uint32_t i = 0; i < SD_MAX_DATA_OBJS; i++) {
            map[i] = ld32(buf + SD_INODE_DATA_INDEX + 4 * i);
        }
    }
    return 0;
}

/* Write entries [lo, hi] of map into the inode of vid. */
static int coroutine_fn sd_co_write_map(SDConn *c, uint32_t vid,
                                        const uint32_t *map, uint32_t lo,
                                        uint32_t hi)
{
    uint32_t n = hi - lo + 1, result;
    g_autofree uint8_t *buf = g_malloc(4 * (size_t)n);

    for (uint32_t i = 0; i < n; i++) {
        st32(buf + 4 * i, map[lo + i]);
    }
    return sd_co_write_buf(c, sd_vid_to_vdi_oid(vid), buf,
                           SD_INODE_DATA_INDEX + 4 * lo, 4 * n, &result);
}

/*
 * Delete a VDI (or one of its snapshots) as the reference CLI does: zero
 * every non-zero data_vdi_id entry of *that* VDI, then DEL_VDI.
 */
static int coroutine_fn sd_co_delete_vdi(SDConn *c, const char *name,
                                         uint32_t snapid, const char *tag,
                                         Error **errp)
{
    SheepdogInodeHeader hdr;
    g_autofree uint32_t *map = g_new(uint32_t, SD_MAX_DATA_OBJS);
    SheepdogReq req = { .opcode = SD_OP_DEL_VDI };
    SheepdogRsp rsp;
    uint32_t vid, i = 0;
    int ret;

    ret = sd_co_find_vdi(c, name, snapid, tag, false, &vid, errp);
    if (ret < 0) {
        return ret;
    }
    ret = sd_co_read_inode(c, vid, &hdr, map, errp);
    if (ret < 0) {
        return ret;
    }
    /* zero runs of non-zero entries, at most 64 Ki entries per write */
    while (i < SD_MAX_DATA_OBJS) {
        if (!map[i]) {
            i++;
            continue;
        }
        uint32_t lo = i, hi = i;
        while (i < SD_MAX_DATA_OBJS && map[i] && i - lo < 65536) {
            map[i] = 0;
            hi = i++;
        }
        ret = sd_co_write_map(c, vid, map, lo, hi);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot clear the map of VDI '%s'",
                             name);
            return ret;
        }
    }
    req.vdi.snapid = snapid;
    ret = sd_co_vdi_req(c, &req, name, tag, &rsp);
    if (ret < 0) {
        error_setg(errp, "cannot delete VDI '%s': %s", name,
                   sd_strerror(rsp.result));
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Driver state                                                       */

typedef struct SDInodeWaiter {
    uint64_t gen;
    int ret;
    bool done;
    Coroutine *co;
    struct SDInodeWaiter *next;
} SDInodeWaiter;

typedef struct BDRVSheepdogState {
    SDConn conn;
    SheepdogName name;
    SheepdogInodeHeader hdr;    /* of vid */
    uint32_t vid;               /* the VDI requests go to */
    uint32_t *map;              /* data_vdi_id of vid, CPU order */
    uint64_t obj_size;
    bool is_snapshot;           /* vid is a snapshot: first write branches */
    GArray *locked;             /* vids locked by this open (uint32_t) */
    CoMutex meta_lock;          /* branch, reload, snapshot switch */

    /* object indexes with a create/discard in progress */
    GHashTable *busy;
    CoQueue busy_queue;

    /* batched data_vdi_id updates */
    bool dirty, updating;
    uint32_t dirty_lo, dirty_hi;
    uint64_t batch_gen;
    SDInodeWaiter *waiters;
} BDRVSheepdogState;

static const QemuOptDesc sd_open_opts[] = {
    { "reconnect-timeout", QEMU_OPT_NUMBER,
      "Seconds to keep retrying after the connection is lost (default 30)" },
    { NULL }
};

static const QemuOptDesc sd_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { "backing_file", QEMU_OPT_STRING,
      "A sheepdog snapshot to clone (sheepdog:VDI:SNAP)" },
    { "backing_fmt", QEMU_OPT_STRING,
      "Format of the snapshot's data (only raw)" },
    { "preallocation", QEMU_OPT_STRING,
      "Preallocation mode (allowed values: off, full)" },
    { "redundancy", QEMU_OPT_STRING,
      "Redundancy: N copies, or D:P erasure code" },
    { "object_size", QEMU_OPT_SIZE,
      "Object size (power of two, 1M..2G; default from the cluster)" },
    { NULL }
};

static void sd_lock_add(BDRVSheepdogState *s, uint32_t vid)
{
    for (guint i = 0; i < s->locked->len; i++) {
        if (g_array_index(s->locked, uint32_t, i) == vid) {
            return;
        }
    }
    g_array_append_val(s->locked, vid);
}

static void coroutine_fn sd_co_release_all(BDRVSheepdogState *s)
{
    for (guint i = 0; i < s->locked->len; i++) {
        sd_co_release_vdi(&s->conn, s->name.vdi,
                          g_array_index(s->locked, uint32_t, i));
    }
    g_array_set_size(s->locked, 0);
}

/* Make vid (already read into hdr/map) the VDI requests go to. */
static void sd_switch_vdi(BDRVSheepdogState *s, uint32_t vid,
                          const SheepdogInodeHeader *hdr, uint32_t *map)
{
    g_free(s->map);
    s->map = map;
    s->hdr = *hdr;
    s->vid = vid;
    s->obj_size = UINT64_C(1) << (hdr->block_size_shift ?
                                  hdr->block_size_shift :
                                  SD_DEFAULT_BLOCK_SHIFT);
    s->is_snapshot = hdr->snap_ctime != 0;
}

/* Read vid's inode and switch to it. */
static int coroutine_fn sd_co_load_vdi(BDRVSheepdogState *s, uint32_t vid,
                                       Error **errp)
{
    SheepdogInodeHeader hdr;
    uint32_t *map = g_new(uint32_t, SD_MAX_DATA_OBJS);
    int ret = sd_co_read_inode(&s->conn, vid, &hdr, map, errp);

    if (ret < 0) {
        g_free(map);
        return ret;
    }
    if (hdr.block_size_shift &&
        (hdr.block_size_shift < SD_MIN_BLOCK_SHIFT ||
         hdr.block_size_shift > SD_MAX_BLOCK_SHIFT)) {
        error_setg(errp, "VDI '%s' has an invalid object size shift %u",
                   s->name.vdi, hdr.block_size_shift);
        g_free(map);
        return -EINVAL;
    }
    sd_switch_vdi(s, vid, &hdr, map);
    return 0;
}

static int coroutine_fn sd_open(BlockDriverState *bs, QemuOpts *options,
                                int flags, Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    uint64_t timeout = SD_DEFAULT_RECONNECT_TIMEOUT;
    uint32_t vid;
    int ret;

    (void)flags;
    if (options) {
        timeout = qemu_opt_get_number(options, "reconnect-timeout", timeout);
    }
    ret = sd_parse_name(bs->filename, &s->name, errp);
    if (ret < 0) {
        return ret;
    }
    s->locked = g_array_new(false, false, sizeof(uint32_t));
    s->busy = g_hash_table_new(g_direct_hash, g_direct_equal);
    qemu_co_queue_init(&s->busy_queue);
    qemu_co_mutex_init(&s->meta_lock);
    sd_conn_init(&s->conn, &s->name, (int64_t)MIN(timeout, 1000000));
    ret = sd_conn_open(&s->conn, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = sd_co_find_vdi(&s->conn, s->name.vdi, s->name.snap_id,
                         s->name.tag, true, &vid, errp);
    if (ret < 0) {
        goto fail;
    }
    sd_lock_add(s, vid);
    ret = sd_co_load_vdi(s, vid, errp);
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    if (s->conn.fd >= 0) {
        sd_co_release_all(s);
    }
    sd_conn_destroy(&s->conn);
    g_hash_table_destroy(s->busy);
    g_array_free(s->locked, true);
    sd_name_clear(&s->name);
    return ret;
}

static void coroutine_fn sd_close(BlockDriverState *bs)
{
    BDRVSheepdogState *s = bs->opaque;

    sd_co_release_all(s);
    sd_conn_destroy(&s->conn);
    g_hash_table_destroy(s->busy);
    g_array_free(s->locked, true);
    g_free(s->map);
    s->map = NULL;
    sd_name_clear(&s->name);
}

static void sd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    bs->bl.request_alignment = 512;
}

static int64_t sd_getlength(BlockDriverState *bs)
{
    BDRVSheepdogState *s = bs->opaque;

    return s->hdr.vdi_size;
}

/* ------------------------------------------------------------------ */
/* Working-VDI changes: branch on first write, reload after READONLY  */

/* First write to a snapshot: create a working child of it (as QEMU's
 * original driver did) and continue there. */
static int coroutine_fn sd_co_branch(BDRVSheepdogState *s)
{
    SDNewVdi nv;
    uint32_t vid, locked_vid;
    Error *err = NULL;
    int ret = 0;

    qemu_co_mutex_lock(&s->meta_lock);
    if (!s->is_snapshot) {
        goto out;
    }
    nv = (SDNewVdi) {
        .name = s->name.vdi, .size = s->hdr.vdi_size, .base_vid = s->vid,
        .snapid = 1, .copies = s->hdr.nr_copies,
        .copy_policy = s->hdr.copy_policy,
        .block_size_shift = s->hdr.block_size_shift,
    };
    ret = sd_co_new_vdi(&s->conn, &nv, &vid, &err);
    if (ret == 0) {
        ret = sd_co_find_vdi(&s->conn, s->name.vdi, 0, NULL, true,
                             &locked_vid, &err);
        if (ret == 0) {
            sd_lock_add(s, locked_vid);
        }
    }
    if (ret == 0) {
        ret = sd_co_load_vdi(s, vid, &err);
    }
    if (ret == 0 && s->is_snapshot) {
        error_setg(&err, "new working VDI %" PRIx32 " is a snapshot", vid);
        ret = -EIO;
    }
out:
    qemu_co_mutex_unlock(&s->meta_lock);
    if (err) {
        error_report("sheepdog: %s", error_get_pretty(err));
        error_free(err);
    }
    return ret;
}

/* A write got READONLY: the VDI was snapshotted underneath; reload it by
 * name unless another request already did since seen_vid. */
static int coroutine_fn sd_co_reload(BDRVSheepdogState *s, uint32_t seen_vid)
{
    Error *err = NULL;
    uint32_t vid;
    int ret = 0;

    qemu_co_mutex_lock(&s->meta_lock);
    if (s->vid != seen_vid) {
        goto out;
    }
    ret = sd_co_find_vdi(&s->conn, s->name.vdi, 0, NULL, false, &vid, &err);
    if (ret == 0 && vid == s->vid) {
        error_setg(&err, "VDI '%s' stays read-only", s->name.vdi);
        ret = -EIO;
    }
    if (ret == 0) {
        ret = sd_co_load_vdi(s, vid, &err);
    }
out:
    qemu_co_mutex_unlock(&s->meta_lock);
    if (err) {
        error_report("sheepdog: %s", error_get_pretty(err));
        error_free(err);
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Data path                                                          */

static void sd_busy_acquire(BDRVSheepdogState *s, uint32_t idx)
{
    g_hash_table_add(s->busy, GUINT_TO_POINTER(idx + 1));
}

static void sd_busy_release(BDRVSheepdogState *s, uint32_t idx)
{
    g_hash_table_remove(s->busy, GUINT_TO_POINTER(idx + 1));
    qemu_co_queue_restart_all(&s->busy_queue);
}

static void coroutine_fn sd_co_busy_wait(BDRVSheepdogState *s, uint32_t idx)
{
    while (g_hash_table_contains(s->busy, GUINT_TO_POINTER(idx + 1))) {
        qemu_co_queue_wait(&s->busy_queue, NULL);
    }
}

/*
 * Record map[idx] (already updated in memory) in the inode. Updates made
 * while one inode write is in flight are merged into the next single write
 * covering their range; returns when the write holding idx is acknowledged.
 */
static int coroutine_fn sd_co_update_inode(BDRVSheepdogState *s,
                                           uint32_t idx)
{
    /* on the heap: the list outlives no frame, but gcc cannot see that */
    SDInodeWaiter *w = g_new0(SDInodeWaiter, 1);
    int ret;

    if (!s->dirty) {
        s->dirty_lo = s->dirty_hi = idx;
        s->dirty = true;
    } else {
        s->dirty_lo = MIN(s->dirty_lo, idx);
        s->dirty_hi = MAX(s->dirty_hi, idx);
    }
    w->gen = s->batch_gen;
    w->next = s->waiters;
    s->waiters = w;
    if (s->updating) {
        while (!w->done) {
            w->co = qemu_coroutine_self();
            qemu_coroutine_yield();
        }
    } else {
        s->updating = true;
        while (s->dirty) {
            uint32_t lo = s->dirty_lo, hi = s->dirty_hi;
            uint64_t gen = s->batch_gen++;

            s->dirty = false;
            ret = sd_co_write_map(&s->conn, s->vid, s->map, lo, hi);
            for (SDInodeWaiter **p = &s->waiters; *p;) {
                SDInodeWaiter *x = *p;
                if (x->gen <= gen) {
                    *p = x->next;
                    x->ret = ret;
                    x->done = true;
                    sd_wake(&x->co);
                } else {
                    p = &x->next;
                }
            }
        }
        s->updating = false;
        assert(w->done);
    }
    ret = w->ret;
    g_free(w);
    return ret;
}

/* Write [off, off+len) of object idx from qiov at qoff. */
static int coroutine_fn sd_co_write_chunk(BDRVSheepdogState *s, uint32_t idx,
                                          uint32_t off, uint32_t len,
                                          QEMUIOVector *qiov, size_t qoff)
{
    uint32_t result, vid, owner;
    int ret;

again:
    if (s->is_snapshot) {
        ret = sd_co_branch(s);
        if (ret < 0) {
            return ret;
        }
    }
    sd_co_busy_wait(s, idx);
    vid = s->vid;
    owner = s->map[idx];
    if (owner == vid) {
        ret = sd_co_write_obj(&s->conn, sd_vid_to_data_oid(vid, idx), 0,
                              false, qiov, qoff, off, len, &result);
        if (ret == -EROFS || (ret == 0 && s->vid != vid)) {
            ret = sd_co_reload(s, vid);
            if (ret == 0) {
                goto again;
            }
        }
        return ret;
    }
    sd_busy_acquire(s, idx);
    ret = sd_co_write_obj(&s->conn, sd_vid_to_data_oid(vid, idx),
                          owner ? sd_vid_to_data_oid(owner, idx) : 0, true,
                          qiov, qoff, off, len, &result);
    if (ret == 0 && s->vid == vid) {
        s->map[idx] = vid;
        ret = sd_co_update_inode(s, idx);
    } else if (ret == 0) {
        ret = -EROFS;           /* switched VDI meanwhile: redo there */
    }
    sd_busy_release(s, idx);
    if (ret == -EROFS) {
        ret = sd_co_reload(s, vid);
        if (ret == 0) {
            goto again;
        }
    }
    return ret;
}

static int coroutine_fn sd_co_read_chunk(BDRVSheepdogState *s, uint32_t idx,
                                         uint32_t off, uint32_t len,
                                         QEMUIOVector *qiov, size_t qoff)
{
    uint32_t owner = s->map[idx], result;

    if (!owner) {
        qemu_iovec_memset(qiov, qoff, 0, len);
        return 0;
    }
    return sd_co_read_obj(&s->conn, sd_vid_to_data_oid(owner, idx), qiov,
                          qoff, off, len, &result);
}

typedef struct SDChunkJob {
    BDRVSheepdogState *s;
    bool write;
    uint32_t idx, off, len;
    QEMUIOVector *qiov;
    size_t qoff;
    int *ret;
    unsigned *pending;
    Coroutine **waiter;
} SDChunkJob;

static int coroutine_fn sd_co_chunk(SDChunkJob *j)
{
    return j->write ?
        sd_co_write_chunk(j->s, j->idx, j->off, j->len, j->qiov, j->qoff) :
        sd_co_read_chunk(j->s, j->idx, j->off, j->len, j->qiov, j->qoff);
}

static void coroutine_fn sd_chunk_entry(void *opaque)
{
    SDChunkJob *j = opaque;
    int ret = sd_co_chunk(j);

    if (ret < 0 && *j->ret == 0) {
        *j->ret = ret;
    }
    if (--*j->pending == 0) {
        sd_wake(j->waiter);
    }
    g_free(j);
}

/* Split a request by object; chunks of one request run in parallel. */
static int coroutine_fn sd_co_rw(BlockDriverState *bs, bool write,
                                 int64_t offset, int64_t bytes,
                                 QEMUIOVector *qiov, size_t qoff)
{
    BDRVSheepdogState *s = bs->opaque;
    unsigned pending = 1;
    Coroutine *waiter = NULL;
    int ret = 0;

    while (bytes > 0) {
        uint32_t idx = offset / s->obj_size;
        uint32_t off = offset % s->obj_size;
        uint32_t len = MIN((uint64_t)bytes, s->obj_size - off);
        SDChunkJob one = {
            .s = s, .write = write, .idx = idx, .off = off, .len = len,
            .qiov = qiov, .qoff = qoff, .ret = &ret, .pending = &pending,
            .waiter = &waiter,
        };

        if (idx >= SD_MAX_DATA_OBJS) {
            ret = -EIO;
            break;
        }
        if (pending == 1 && len == bytes) {
            /* the common case: the whole request is one chunk */
            int r = sd_co_chunk(&one);
            if (r < 0 && ret == 0) {
                ret = r;
            }
        } else {
            pending++;
            qemu_coroutine_enter(qemu_coroutine_create(sd_chunk_entry,
                                                       g_memdup2(&one,
                                                       sizeof(one))));
        }
        offset += len;
        bytes -= len;
        qoff += len;
    }
    pending--;
    while (pending) {
        waiter = qemu_coroutine_self();
        qemu_coroutine_yield();
    }
    return ret;
}

static int coroutine_fn sd_co_preadv(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset,
                                     BdrvRequestFlags flags)
{
    (void)flags;
    return sd_co_rw(bs, false, offset, bytes, qiov, qiov_offset);
}

static int coroutine_fn sd_co_pwritev(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    (void)flags;
    return sd_co_rw(bs, true, offset, bytes, qiov, qiov_offset);
}

/* Drop whole allocated objects in [offset, offset+bytes). */
static int coroutine_fn sd_co_discard_objects(BDRVSheepdogState *s,
                                              int64_t offset, int64_t bytes)
{
    uint64_t first = DIV_ROUND_UP(offset, s->obj_size);
    uint64_t end = (offset + bytes) / s->obj_size;
    int ret = 0;

    if (s->is_snapshot) {
        return 0;
    }
    for (uint64_t idx = first; idx < end && idx < SD_MAX_DATA_OBJS; idx++) {
        sd_co_busy_wait(s, idx);
        if (!s->map[idx]) {
            continue;
        }
        sd_busy_acquire(s, idx);
        s->map[idx] = 0;
        int r = sd_co_update_inode(s, idx);
        sd_busy_release(s, idx);
        if (r < 0 && ret == 0) {
            ret = r;
        }
    }
    return ret;
}

static int coroutine_fn sd_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes)
{
    return sd_co_discard_objects(bs->opaque, offset, bytes);
}

/* Whole unallocated objects are zero already; anything else falls back. */
static int coroutine_fn sd_co_pwrite_zeroes(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            BdrvRequestFlags flags)
{
    BDRVSheepdogState *s = bs->opaque;

    if (offset % s->obj_size || bytes % s->obj_size) {
        return -ENOTSUP;
    }
    for (int64_t o = offset; o < offset + bytes; o += s->obj_size) {
        if (s->map[o / s->obj_size] && !(flags & BDRV_REQ_MAY_UNMAP)) {
            return -ENOTSUP;
        }
    }
    return sd_co_discard_objects(s, offset, bytes);
}

static int coroutine_fn sd_co_flush(BlockDriverState *bs)
{
    (void)bs;
    return 0;       /* FLUSH_VDI is obsolete: writes are durable when acked */
}

static int coroutine_fn sd_co_block_status(BlockDriverState *bs,
                                           bool want_zero, int64_t offset,
                                           int64_t bytes, int64_t *pnum,
                                           int64_t *map,
                                           BlockDriverState **file)
{
    BDRVSheepdogState *s = bs->opaque;
    uint64_t idx = offset / s->obj_size;
    bool allocated = s->map[idx] != 0;
    int64_t end = offset + bytes, pos;

    (void)want_zero;
    pos = (idx + 1) * s->obj_size;
    while (pos < end && (s->map[pos / s->obj_size] != 0) == allocated) {
        pos += s->obj_size;
    }
    *pnum = MIN(pos, end) - offset;
    *map = 0;
    *file = NULL;
    return allocated ? BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED
                     : BDRV_BLOCK_ZERO;
}

static int coroutine_fn sd_co_truncate(BlockDriverState *bs, int64_t offset,
                                       bool exact, PreallocMode prealloc,
                                       Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    uint8_t buf[8];
    uint32_t result;
    int ret;

    (void)exact;
    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   qemu_prealloc_name(prealloc));
        return -ENOTSUP;
    }
    if ((uint64_t)offset < s->hdr.vdi_size) {
        error_setg(errp, "sheepdog: shrinking a VDI is not supported");
        return -EPERM;
    }
    if ((uint64_t)offset > s->obj_size * SD_MAX_DATA_OBJS) {
        error_setg(errp, "sheepdog: too big image size (max %" PRIu64 ")",
                   s->obj_size * SD_MAX_DATA_OBJS);
        return -EINVAL;
    }
    if (s->is_snapshot) {
        error_setg(errp, "sheepdog: cannot resize a snapshot");
        return -EPERM;
    }
    st64(buf, offset);
    ret = sd_co_write_buf(&s->conn, sd_vid_to_vdi_oid(s->vid), buf,
                          SD_INODE_OFF_VDI_SIZE, 8, &result);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "sheepdog: failed to update the VDI "
                         "size");
        return ret;
    }
    s->hdr.vdi_size = offset;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Info                                                               */

static char *sd_redundancy_str(uint8_t copies, uint8_t policy)
{
    if (policy) {
        return g_strdup_printf("%d:%d", (policy >> 4) * 2, policy & 0xf);
    }
    return g_strdup_printf("%d", copies);
}

static int sd_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVSheepdogState *s = bs->opaque;

    bdi->cluster_size = (int)MIN(s->obj_size, (uint64_t)INT_MAX);
    return 0;
}

static ImageInfoSpecific *sd_get_specific_info(BlockDriverState *bs,
                                               Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    ImageInfoSpecific *info = image_info_specific_new("sheepdog");
    g_autofree char *red = sd_redundancy_str(s->hdr.nr_copies,
                                             s->hdr.copy_policy);

    (void)errp;
    image_info_add_int(info, "vdi-id", s->vid);
    image_info_add_int(info, "object-size", s->obj_size);
    image_info_add_str(info, "redundancy", red);
    return info;
}

static bool sd_has_zero_init(BlockDriverState *bs)
{
    (void)bs;
    return true;
}

/* ------------------------------------------------------------------ */
/* Create                                                             */

/* "N" copies or "D:P" erasure code. */
static int sd_parse_redundancy(const char *str, uint8_t *copies,
                               uint8_t *policy, Error **errp)
{
    g_auto(GStrv) tok = g_strsplit(str, ":", 3);
    guint n = g_strv_length(tok);
    uint64_t d, p;
    const char *end;

    if (n == 1 && !qemu_strtou64(tok[0], &end, 10, &d) && !*end &&
        d >= 1 && d <= SD_MAX_COPIES) {
        *copies = d;
        *policy = 0;
        return 0;
    }
    if (n == 2 && !qemu_strtou64(tok[0], &end, 10, &d) && !*end &&
        !qemu_strtou64(tok[1], &end, 10, &p) && !*end &&
        (d == 2 || d == 4 || d == 8 || d == 16) && p >= 1 && p <= 15) {
        *copies = d + p;
        *policy = ((d / 2) << 4) | p;
        return 0;
    }
    error_setg(errp, "sheepdog: invalid redundancy '%s' (N copies, 1..%d, or "
               "D:P with D in 2,4,8,16 and P 1..15)", str, SD_MAX_COPIES);
    return -EINVAL;
}

/* Write zeroes into every object of a new VDI (copying shared ones). */
static int coroutine_fn sd_co_prealloc(SDConn *c, uint32_t vid,
                                       Error **errp)
{
    SheepdogInodeHeader hdr;
    g_autofree uint32_t *map = g_new(uint32_t, SD_MAX_DATA_OBJS);
    g_autofree uint8_t *zero = NULL;
    QEMUIOVector qiov;
    uint64_t obj_size, nobj;
    int ret;

    ret = sd_co_read_inode(c, vid, &hdr, map, errp);
    if (ret < 0) {
        return ret;
    }
    obj_size = UINT64_C(1) << (hdr.block_size_shift ? hdr.block_size_shift
                                                    : SD_DEFAULT_BLOCK_SHIFT);
    nobj = DIV_ROUND_UP(hdr.vdi_size, obj_size);
    zero = g_malloc0(obj_size);
    qemu_iovec_init_buf(&qiov, zero, obj_size);
    for (uint64_t idx = 0; idx < nobj; idx++) {
        uint32_t result;
        if (map[idx] == vid) {
            continue;
        }
        if (map[idx]) {
            /* a clone: COW the object with an empty overlay */
            ret = sd_co_write_obj(c, sd_vid_to_data_oid(vid, idx),
                                  sd_vid_to_data_oid(map[idx], idx), true,
                                  &qiov, 0, 0, 0, &result);
        } else {
            ret = sd_co_write_obj(c, sd_vid_to_data_oid(vid, idx), 0, true,
                                  &qiov, 0, 0, obj_size, &result);
        }
        if (ret < 0) {
            error_setg(errp, "sheepdog: preallocation failed: %s",
                       sd_strerror(result));
            return ret;
        }
        map[idx] = vid;
    }
    if (nobj) {
        ret = sd_co_write_map(c, vid, map, 0, nobj - 1);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "sheepdog: preallocation failed");
        }
    }
    return ret;
}

static int coroutine_fn sd_co_cluster_default_shift(SDConn *c)
{
    SheepdogReq hdr = { .opcode = SD_OP_GET_CLUSTER_DEFAULT };
    SheepdogRsp rsp;

    if (sd_co_send_req(c, &hdr, NULL, 0, NULL, 0, 0, &rsp) < 0 ||
        rsp.result != SD_RES_SUCCESS ||
        rsp.default_block_size_shift < SD_MIN_BLOCK_SHIFT ||
        rsp.default_block_size_shift > SD_MAX_BLOCK_SHIFT) {
        return SD_DEFAULT_BLOCK_SHIFT;
    }
    return rsp.default_block_size_shift;
}

/* Resolve backing_file (a sheepdog snapshot) into vid and header. */
static int coroutine_fn sd_co_backing_vdi(SDConn *c, const char *backing,
                                          const SheepdogName *target,
                                          uint32_t *vid,
                                          SheepdogInodeHeader *hdr,
                                          Error **errp)
{
    SheepdogName bn;
    int ret;

    ret = sd_parse_name(backing, &bn, errp);
    if (ret < 0) {
        return ret;
    }
    if (bn.socket || target->socket ? g_strcmp0(bn.socket, target->socket)
                                    : (strcmp(bn.host, target->host) ||
                                       bn.port != target->port)) {
        error_setg(errp, "sheepdog: backing file must be in the same "
                   "cluster");
        ret = -EINVAL;
    } else if (!bn.snap_id && !bn.tag[0]) {
        error_setg(errp, "sheepdog: backing file must be a snapshot "
                   "(sheepdog:VDI:SNAP)");
        ret = -EINVAL;
    } else {
        ret = sd_co_find_vdi(c, bn.vdi, bn.snap_id, bn.tag, false, vid, errp);
    }
    if (ret == 0) {
        ret = sd_co_read_inode(c, *vid, hdr, NULL, errp);
    }
    if (ret == 0 && !hdr->snap_ctime) {
        error_setg(errp, "sheepdog: backing file '%s' is not a snapshot",
                   backing);
        ret = -EINVAL;
    }
    sd_name_clear(&bn);
    return ret;
}

static int coroutine_fn sd_create(const char *filename, QemuOpts *opts,
                                  Error **errp)
{
    SheepdogName name;
    SDConn conn;
    SheepdogInodeHeader base_hdr;
    SDNewVdi nv = { 0 };
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    const char *backing = qemu_opt_get(opts, "backing_file");
    const char *str;
    uint64_t size = qemu_opt_get_size(opts, "size", 0);
    uint64_t obj_size = qemu_opt_get_size(opts, "object_size", 0);
    uint32_t vid;
    int ret;

    str = qemu_opt_get(opts, "backing_fmt");
    if (str && strcmp(str, "raw")) {
        error_setg(errp, "sheepdog: a clone's backing format must be raw, "
                   "not '%s'", str);
        return -EINVAL;
    }
    ret = sd_parse_name(filename, &name, errp);
    if (ret < 0) {
        return ret;
    }
    sd_conn_init(&conn, &name, 0);
    if (name.snap_id || name.tag[0]) {
        error_setg(errp, "sheepdog: cannot create a snapshot with "
                   "'qemu-img create'");
        ret = -EINVAL;
        goto out;
    }
    str = qemu_opt_get(opts, "preallocation");
    if (str && (qemu_prealloc_parse(str, &prealloc) < 0 ||
                (prealloc != PREALLOC_MODE_OFF &&
                 prealloc != PREALLOC_MODE_FULL))) {
        error_setg(errp, "Invalid preallocation mode: '%s'", str);
        ret = -EINVAL;
        goto out;
    }
    str = qemu_opt_get(opts, "redundancy");
    if (str) {
        ret = sd_parse_redundancy(str, &nv.copies, &nv.copy_policy, errp);
        if (ret < 0) {
            goto out;
        }
    }
    if (obj_size) {
        if (obj_size & (obj_size - 1) ||
            obj_size < (UINT64_C(1) << SD_MIN_BLOCK_SHIFT) ||
            obj_size > (UINT64_C(1) << SD_MAX_BLOCK_SHIFT)) {
            error_setg(errp, "sheepdog: object_size must be a power of two "
                       "between 1M and 2G");
            ret = -EINVAL;
            goto out;
        }
        nv.block_size_shift = __builtin_ctzll(obj_size);
    }
    ret = sd_conn_open(&conn, errp);
    if (ret < 0) {
        goto out;
    }
    if (backing) {
        ret = sd_co_backing_vdi(&conn, backing, &name, &nv.base_vid,
                                &base_hdr, errp);
        if (ret < 0) {
            goto out;
        }
        if (!size) {
            size = base_hdr.vdi_size;
        } else if (size < base_hdr.vdi_size) {
            error_setg(errp, "sheepdog: cannot make a clone smaller than its "
                       "backing snapshot");
            ret = -EINVAL;
            goto out;
        }
        nv.block_size_shift = base_hdr.block_size_shift;
        if (!str) {
            nv.copies = base_hdr.nr_copies;
            nv.copy_policy = base_hdr.copy_policy;
        }
    }
    if (!nv.block_size_shift) {
        nv.block_size_shift = sd_co_cluster_default_shift(&conn);
    }
    size = QEMU_ALIGN_UP(size, 512);
    if (size > ((uint64_t)SD_MAX_DATA_OBJS << nv.block_size_shift)) {
        error_setg(errp, "sheepdog: too big image size (max %" PRIu64 ")",
                   (uint64_t)SD_MAX_DATA_OBJS << nv.block_size_shift);
        ret = -EINVAL;
        goto out;
    }
    nv.name = name.vdi;
    nv.size = size;
    ret = sd_co_new_vdi(&conn, &nv, &vid, errp);
    if (ret == 0 && prealloc == PREALLOC_MODE_FULL) {
        ret = sd_co_prealloc(&conn, vid, errp);
    }
out:
    sd_conn_destroy(&conn);
    sd_name_clear(&name);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Snapshots and VM state                                             */

static int coroutine_fn sd_co_snapshot_create(BlockDriverState *bs,
                                              QEMUSnapshotInfo *sn,
                                              Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    uint8_t tag[SD_TAG_LEN] = { 0 }, vm[24];
    uint32_t result, old_vid = s->vid, new_vid, locked_vid;
    SDNewVdi nv;
    int ret;

    if (s->is_snapshot) {
        error_setg(errp, "sheepdog: cannot snapshot a snapshot VDI; write "
                   "to it or open the working VDI first");
        return -EINVAL;
    }
    if (strlen(sn->name) >= SD_TAG_LEN) {
        error_setg(errp, "sheepdog: snapshot tag is too long");
        return -EINVAL;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    pstrcpy((char *)tag, sizeof(tag), sn->name);
    ret = sd_co_write_buf(&s->conn, sd_vid_to_vdi_oid(old_vid), tag,
                          SD_INODE_OFF_TAG, SD_TAG_LEN, &result);
    if (ret == 0) {
        /* vm_clock_nsec, vdi_size (unchanged), vm_state_size */
        st64(vm, sn->vm_clock_nsec);
        st64(vm + 8, s->hdr.vdi_size);
        st64(vm + 16, sn->vm_state_size);
        ret = sd_co_write_buf(&s->conn, sd_vid_to_vdi_oid(old_vid), vm,
                              SD_INODE_OFF_VM_CLOCK, sizeof(vm), &result);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "sheepdog: cannot write the snapshot "
                         "tag");
        goto out;
    }
    nv = (SDNewVdi) {
        .name = s->name.vdi, .size = s->hdr.vdi_size, .base_vid = old_vid,
        .snapid = s->hdr.snap_id ? s->hdr.snap_id : 1,
        .copies = s->hdr.nr_copies, .copy_policy = s->hdr.copy_policy,
        .block_size_shift = s->hdr.block_size_shift,
    };
    ret = sd_co_new_vdi(&s->conn, &nv, &new_vid, errp);
    if (ret < 0) {
        goto out;
    }
    /* the old vid is a snapshot now: hand its lock over to the new one */
    sd_co_release_vdi(&s->conn, s->name.vdi, old_vid);
    g_array_set_size(s->locked, 0);
    ret = sd_co_find_vdi(&s->conn, s->name.vdi, 0, NULL, true, &locked_vid,
                         errp);
    if (ret < 0) {
        goto out;
    }
    sd_lock_add(s, locked_vid);
    ret = sd_co_load_vdi(s, new_vid, errp);
out:
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/* Resolve a snapshot given by id or tag into its vid. */
static int coroutine_fn sd_co_find_snapshot(BDRVSheepdogState *s,
                                            const char *id, const char *tag,
                                            uint32_t *vid, uint32_t *snapid,
                                            Error **errp)
{
    uint64_t n;
    const char *end;

    *snapid = 0;
    if (id && *id && !qemu_strtou64(id, &end, 10, &n) && !*end &&
        n >= 1 && n <= UINT32_MAX) {
        if (sd_co_find_vdi(&s->conn, s->name.vdi, n, NULL, false, vid,
                           NULL) == 0) {
            *snapid = n;
            return 0;
        }
    }
    if (!tag || !*tag) {
        tag = id;
    }
    if (!tag || !*tag || strlen(tag) >= SD_TAG_LEN) {
        error_setg(errp, "snapshot not found");
        return -ENOENT;
    }
    return sd_co_find_vdi(&s->conn, s->name.vdi, 0, tag, false, vid, errp);
}

/* Roll back as the reference CLI does: delete the working VDI, then clone
 * the snapshot under the same name. */
static int coroutine_fn sd_co_snapshot_goto(BlockDriverState *bs,
                                            const char *snapshot_id,
                                            Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    SheepdogInodeHeader snap;
    uint32_t snap_vid, snapid, new_vid, locked_vid, working;
    SDNewVdi nv;
    int ret;

    qemu_co_mutex_lock(&s->meta_lock);
    ret = sd_co_find_snapshot(s, snapshot_id, NULL, &snap_vid, &snapid, errp);
    if (ret == 0) {
        ret = sd_co_read_inode(&s->conn, snap_vid, &snap, NULL, errp);
    }
    if (ret < 0) {
        goto out;
    }
    /* the working VDI goes away: drop the locks first */
    sd_co_release_all(s);
    if (sd_co_find_vdi(&s->conn, s->name.vdi, 0, NULL, false, &working,
                       NULL) == 0) {
        ret = sd_co_delete_vdi(&s->conn, s->name.vdi, 0, NULL, errp);
        if (ret < 0) {
            goto out;
        }
    }
    nv = (SDNewVdi) {
        .name = s->name.vdi, .size = snap.vdi_size, .base_vid = snap_vid,
        .copies = snap.nr_copies, .copy_policy = snap.copy_policy,
        .block_size_shift = snap.block_size_shift,
    };
    ret = sd_co_new_vdi(&s->conn, &nv, &new_vid, errp);
    if (ret < 0) {
        goto out;
    }
    ret = sd_co_find_vdi(&s->conn, s->name.vdi, 0, NULL, true, &locked_vid,
                         errp);
    if (ret < 0) {
        goto out;
    }
    sd_lock_add(s, locked_vid);
    ret = sd_co_load_vdi(s, new_vid, errp);
out:
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

static int coroutine_fn sd_co_snapshot_delete(BlockDriverState *bs,
                                              const char *snapshot_id,
                                              const char *name,
                                              Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    uint32_t vid, snapid;
    int ret;

    qemu_co_mutex_lock(&s->meta_lock);
    ret = sd_co_find_snapshot(s, snapshot_id, name, &vid, &snapid, errp);
    if (ret == 0 && vid == s->vid) {
        error_setg(errp, "sheepdog: cannot delete the snapshot that is open");
        ret = -EBUSY;
    }
    if (ret == 0) {
        char tag[SD_TAG_LEN] = "";
        if (!snapid) {
            pstrcpy(tag, sizeof(tag), name && *name ? name : snapshot_id);
        }
        ret = sd_co_delete_vdi(&s->conn, s->name.vdi, snapid, tag, errp);
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

static int coroutine_fn sd_co_snapshot_list(BlockDriverState *bs,
                                            QEMUSnapshotInfo **psn_info)
{
    BDRVSheepdogState *s = bs->opaque;
    SheepdogReq req = { .opcode = SD_OP_READ_VDIS,
                        .data_length = SD_NR_VDIS / 8 };
    SheepdogRsp rsp;
    g_autofree uint8_t *bitmap = g_malloc0(SD_NR_VDIS / 8);
    GArray *sns = g_array_new(false, true, sizeof(QEMUSnapshotInfo));
    QEMUIOVector qiov;
    uint32_t start = sd_name_hash(s->name.vdi);
    int ret;

    qemu_iovec_init_buf(&qiov, bitmap, SD_NR_VDIS / 8);
    ret = sd_co_send_req(&s->conn, &req, NULL, 0, &qiov, 0, SD_NR_VDIS / 8,
                         &rsp);
    if (ret == 0) {
        ret = sd_result_to_errno(rsp.result);
    }
    if (ret < 0) {
        g_array_free(sns, true);
        return ret;
    }
    /* every vid of this name lies in the run of used bits after its hash */
    for (uint32_t n = 0; n < SD_NR_VDIS; n++) {
        uint32_t vid = (start + n) & (SD_NR_VDIS - 1);
        SheepdogInodeHeader hdr;
        QEMUSnapshotInfo sn = { 0 };

        if (!(bitmap[vid / 8] & (1 << (vid % 8)))) {
            break;
        }
        if (sd_co_read_inode(&s->conn, vid, &hdr, NULL, NULL) < 0 ||
            strcmp(hdr.name, s->name.vdi) || !hdr.snap_ctime) {
            continue;
        }
        snprintf(sn.id_str, sizeof(sn.id_str), "%" PRIu32, hdr.snap_id);
        pstrcpy(sn.name, sizeof(sn.name), hdr.tag);
        sn.date_sec = hdr.snap_ctime >> 32;
        sn.date_nsec = hdr.snap_ctime & 0xffffffff;
        sn.vm_state_size = hdr.vm_state_size;
        sn.vm_clock_nsec = hdr.vm_clock_nsec;
        sn.icount = -1ULL;
        g_array_append_val(sns, sn);
    }
    ret = sns->len;
    *psn_info = (QEMUSnapshotInfo *)g_array_free(sns, false);
    return ret;
}

/* VM state lives in vmstate objects of a vid; load reads the snapshot the
 * working VDI was created from. */
static int coroutine_fn sd_co_vmstate(BlockDriverState *bs,
                                      QEMUIOVector *qiov, int64_t pos,
                                      bool load)
{
    BDRVSheepdogState *s = bs->opaque;
    uint32_t vid = s->vid;
    size_t done = 0;

    if (load && !s->is_snapshot && s->hdr.parent_vdi_id) {
        vid = s->hdr.parent_vdi_id;
    }
    while (done < qiov->size) {
        uint64_t p = pos + done;
        uint32_t idx = p / s->obj_size, off = p % s->obj_size, result;
        uint32_t len = MIN(qiov->size - done, s->obj_size - off);
        int ret;

        if (load) {
            ret = sd_co_read_obj(&s->conn, sd_vid_to_vmstate_oid(vid, idx),
                                 qiov, done, off, len, &result);
        } else {
            ret = sd_co_write_obj(&s->conn, sd_vid_to_vmstate_oid(vid, idx),
                                  0, off == 0, qiov, done, off, len, &result);
        }
        if (ret < 0) {
            return ret;
        }
        done += len;
    }
    return 0;
}

static int coroutine_fn sd_co_save_vmstate(BlockDriverState *bs,
                                           QEMUIOVector *qiov, int64_t pos)
{
    return sd_co_vmstate(bs, qiov, pos, false);
}

static int coroutine_fn sd_co_load_vmstate(BlockDriverState *bs,
                                           QEMUIOVector *qiov, int64_t pos)
{
    return sd_co_vmstate(bs, qiov, pos, true);
}

static BlockDriver bdrv_sheepdog = {
    .format_name            = "sheepdog",
    .protocol_name          = "sheepdog",
    .instance_size          = sizeof(BDRVSheepdogState),
    .create_opts            = sd_create_opts,
    .open_opts              = sd_open_opts,

    .bdrv_open              = sd_open,
    .bdrv_close             = sd_close,
    .bdrv_refresh_limits    = sd_refresh_limits,
    .bdrv_create            = sd_create,

    .bdrv_co_preadv         = sd_co_preadv,
    .bdrv_co_pwritev        = sd_co_pwritev,
    .bdrv_co_pwrite_zeroes  = sd_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = sd_co_pdiscard,
    .bdrv_co_flush_to_disk  = sd_co_flush,
    .bdrv_co_block_status   = sd_co_block_status,
    .bdrv_co_truncate       = sd_co_truncate,
    .bdrv_getlength         = sd_getlength,

    .bdrv_get_info          = sd_get_info,
    .bdrv_get_specific_info = sd_get_specific_info,
    .bdrv_has_zero_init     = sd_has_zero_init,

    .bdrv_snapshot_create   = sd_co_snapshot_create,
    .bdrv_snapshot_goto     = sd_co_snapshot_goto,
    .bdrv_snapshot_delete   = sd_co_snapshot_delete,
    .bdrv_snapshot_list     = sd_co_snapshot_list,
    .bdrv_co_save_vmstate   = sd_co_save_vmstate,
    .bdrv_co_load_vmstate   = sd_co_load_vmstate,

    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP,
};

BLOCK_DRIVER_REGISTER(bdrv_sheepdog)
