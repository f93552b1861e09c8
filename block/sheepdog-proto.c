/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Sheepdog wire protocol helpers (block/sheepdog_proto.h): the 48-byte
 * header and inode header codecs, result codes, the VDI name hash and the
 * parser of "sheepdog:..." image names.
 */
#include "block/sheepdog_proto.h"
#include "util/cutils.h"
#include <sys/un.h>

/* ------------------------------------------------------------------ */
/* Header encoding                                                    */

static bool sd_is_obj_op(uint8_t opcode)
{
    return opcode >= SD_OP_CREATE_AND_WRITE_OBJ && opcode <= SD_OP_DISCARD_OBJ;
}

void sd_req_encode(const SheepdogReq *req, uint8_t buf[SD_HDR_SIZE])
{
    memset(buf, 0, SD_HDR_SIZE);
    sd_st8(buf + 0, req->proto_ver);
    sd_st8(buf + 1, req->opcode);
    sd_st16(buf + 2, req->flags);
    sd_st32(buf + 4, req->epoch);
    sd_st32(buf + 8, req->id);
    sd_st32(buf + 12, req->data_length);
    if (sd_is_obj_op(req->opcode)) {
        sd_st64(buf + 16, req->obj.oid);
        sd_st64(buf + 24, req->obj.cow_oid);
        sd_st8(buf + 32, req->obj.copies);
        sd_st8(buf + 33, req->obj.copy_policy);
        sd_st8(buf + 34, req->obj.ec_index);
        sd_st32(buf + 36, req->obj.tgt_epoch);
        sd_st32(buf + 40, req->obj.offset);
    } else {
        sd_st64(buf + 16, req->vdi.vdi_size);
        sd_st32(buf + 24, req->vdi.base_vdi_id);
        sd_st8(buf + 28, req->vdi.copies);
        sd_st8(buf + 29, req->vdi.copy_policy);
        sd_st8(buf + 30, req->vdi.store_policy);
        sd_st8(buf + 31, req->vdi.block_size_shift);
        sd_st32(buf + 32, req->vdi.snapid);
        sd_st32(buf + 36, req->vdi.type);
    }
}

void sd_req_decode(const uint8_t buf[SD_HDR_SIZE], SheepdogReq *req)
{
    memset(req, 0, sizeof(*req));
    req->proto_ver = buf[0];
    req->opcode = buf[1];
    req->flags = sd_ld16(buf + 2);
    req->epoch = sd_ld32(buf + 4);
    req->id = sd_ld32(buf + 8);
    req->data_length = sd_ld32(buf + 12);
    if (sd_is_obj_op(req->opcode)) {
        req->obj.oid = sd_ld64(buf + 16);
        req->obj.cow_oid = sd_ld64(buf + 24);
        req->obj.copies = buf[32];
        req->obj.copy_policy = buf[33];
        req->obj.ec_index = buf[34];
        req->obj.tgt_epoch = sd_ld32(buf + 36);
        req->obj.offset = sd_ld32(buf + 40);
    } else {
        req->vdi.vdi_size = sd_ld64(buf + 16);
        req->vdi.base_vdi_id = sd_ld32(buf + 24);
        req->vdi.copies = buf[28];
        req->vdi.copy_policy = buf[29];
        req->vdi.store_policy = buf[30];
        req->vdi.block_size_shift = buf[31];
        req->vdi.snapid = sd_ld32(buf + 32);
        req->vdi.type = sd_ld32(buf + 36);
    }
}

void sd_rsp_encode(const SheepdogRsp *rsp, uint8_t buf[SD_HDR_SIZE])
{
    memset(buf, 0, SD_HDR_SIZE);
    sd_st8(buf + 0, rsp->proto_ver);
    sd_st8(buf + 1, rsp->opcode);
    sd_st16(buf + 2, rsp->flags);
    sd_st32(buf + 4, rsp->epoch);
    sd_st32(buf + 8, rsp->id);
    sd_st32(buf + 12, rsp->data_length);
    sd_st32(buf + 16, rsp->result);
    if (rsp->opcode == SD_OP_GET_CLUSTER_DEFAULT) {
        sd_st8(buf + 20, rsp->nr_copies);
        sd_st8(buf + 21, rsp->copy_policy);
        sd_st8(buf + 22, rsp->default_block_size_shift);
    } else if (!sd_is_obj_op(rsp->opcode)) {
        sd_st32(buf + 24, rsp->vdi_id);
        sd_st32(buf + 28, rsp->attr_id);
        sd_st8(buf + 32, rsp->copies);
        sd_st8(buf + 33, rsp->block_size_shift);
    }
}

void sd_rsp_decode(const uint8_t buf[SD_HDR_SIZE], SheepdogRsp *rsp)
{
    memset(rsp, 0, sizeof(*rsp));
    rsp->proto_ver = buf[0];
    rsp->opcode = buf[1];
    rsp->flags = sd_ld16(buf + 2);
    rsp->epoch = sd_ld32(buf + 4);
    rsp->id = sd_ld32(buf + 8);
    rsp->data_length = sd_ld32(buf + 12);
    rsp->result = sd_ld32(buf + 16);
    if (rsp->opcode == SD_OP_GET_CLUSTER_DEFAULT) {
        rsp->nr_copies = buf[20];
        rsp->copy_policy = buf[21];
        rsp->default_block_size_shift = buf[22];
    } else if (!sd_is_obj_op(rsp->opcode)) {
        rsp->vdi_id = sd_ld32(buf + 24);
        rsp->attr_id = sd_ld32(buf + 28);
        rsp->copies = buf[32];
        rsp->block_size_shift = buf[33];
    }
}

void sd_inode_header_decode(const uint8_t *buf, SheepdogInodeHeader *hdr)
{
    memset(hdr, 0, sizeof(*hdr));
    memcpy(hdr->name, buf + SD_INODE_OFF_NAME, SD_NAME_LEN);
    memcpy(hdr->tag, buf + SD_INODE_OFF_TAG, SD_TAG_LEN);
    hdr->create_time = sd_ld64(buf + SD_INODE_OFF_CTIME);
    hdr->snap_ctime = sd_ld64(buf + SD_INODE_OFF_SNAP_CTIME);
    hdr->vm_clock_nsec = sd_ld64(buf + SD_INODE_OFF_VM_CLOCK);
    hdr->vdi_size = sd_ld64(buf + SD_INODE_OFF_VDI_SIZE);
    hdr->vm_state_size = sd_ld64(buf + SD_INODE_OFF_VM_STATE);
    hdr->copy_policy = buf[SD_INODE_OFF_COPY_POLICY];
    hdr->store_policy = buf[SD_INODE_OFF_STORE_POLICY];
    hdr->nr_copies = buf[SD_INODE_OFF_NR_COPIES];
    hdr->block_size_shift = buf[SD_INODE_OFF_BLOCK_SHIFT];
    hdr->snap_id = sd_ld32(buf + SD_INODE_OFF_SNAP_ID);
    hdr->vdi_id = sd_ld32(buf + SD_INODE_OFF_VDI_ID);
    hdr->parent_vdi_id = sd_ld32(buf + SD_INODE_OFF_PARENT);
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

int sd_result_to_errno(uint32_t result)
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

bool sd_valid_ec_policy(uint8_t copy_policy, uint8_t nr_copies)
{
    unsigned d = (copy_policy >> 4) * 2, p = copy_policy & 0xf;

    return (d == 2 || d == 4 || d == 8 || d == 16) && p >= 1 &&
           nr_copies == d + p;
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
        /* HOST::VDI would silently mean port 7000: say so instead */
        if (!*tok[0] || !*tok[1]) {
            error_setg(errp, "sheepdog: empty %s in 'HOST:PORT:VDI' (give "
                       "both, or use 'sheepdog:VDI' for localhost:%d)",
                       !*tok[0] ? "host" : "port", SD_DEFAULT_PORT);
            return -EINVAL;
        }
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

