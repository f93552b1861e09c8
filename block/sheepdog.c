/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The "sheepdog" protocol driver: a client of a Sheepdog cluster (wire
 * protocol v2, sheep 1.0.1). Requests go through the client of
 * block/sheepdog-client.c (pipelined, matched by id, never resent blindly);
 * VDIs are locked, snapshotted, cloned and rolled back as the reference
 * `dog` CLI does, and every value read from the cluster is bounded before
 * use.
 */
#include "block_int.h"
#include "block/sheepdog_client.h"
#include "block/sheepdog_proto.h"
#include "util/aio.h"
#include "util/cutils.h"

#define SD_DEFAULT_RECONNECT_TIMEOUT 30
#define SD_MAX_RECONNECT_TIMEOUT    (24 * 3600)
#define SD_MAX_VID                  (SD_NR_VDIS - 1)

/* ------------------------------------------------------------------ */
/* Object requests                                                    */

/* Read len bytes at offset of object oid into qiov (from qoff). A short
 * answer is an error, never data. */
static int coroutine_fn sd_co_read_obj(SDClient *c, uint64_t oid,
                                       QEMUIOVector *qiov, size_t qoff,
                                       uint32_t offset, uint32_t len,
                                       uint32_t *result)
{
    SheepdogReq hdr = { .opcode = SD_OP_READ_OBJ, .data_length = len };
    SheepdogRsp rsp;
    Error *err = NULL;
    int ret;

    hdr.obj.oid = oid;
    hdr.obj.offset = offset;
    *result = SD_RES_EIO;
    ret = sd_client_co_request(c, SD_REQ_IDEMPOTENT, &hdr, NULL, 0, qiov,
                               qoff, len, &rsp, &err);
    if (ret < 0) {
        error_report_err(err);
        return ret;
    }
    *result = rsp.result;
    if (rsp.result == SD_RES_SUCCESS && rsp.data_length != len) {
        error_report("sheepdog: short answer reading object %016" PRIx64
                     ": %" PRIu32 " of %" PRIu32 " bytes", oid,
                     rsp.data_length, len);
        *result = SD_RES_EIO;
        return -EIO;
    }
    return sd_result_to_errno(rsp.result);
}

/* WRITE_OBJ (create false) or CREATE_AND_WRITE_OBJ (with COW from cow_oid
 * when non-zero). */
static int coroutine_fn sd_co_write_obj(SDClient *c, uint64_t oid,
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
    Error *err = NULL;
    int ret;

    hdr.obj.oid = oid;
    hdr.obj.offset = offset;
    if (create && cow_oid) {
        hdr.flags |= SD_FLAG_CMD_COW;
        hdr.obj.cow_oid = cow_oid;
    }
    *result = SD_RES_EIO;
    ret = sd_client_co_request(c, SD_REQ_WRITE, &hdr, qiov, qoff, NULL, 0,
                               0, &rsp, &err);
    if (ret < 0) {
        error_report_err(err);
        return ret;
    }
    *result = rsp.result;
    return sd_result_to_errno(rsp.result);
}

static int coroutine_fn sd_co_read_buf(SDClient *c, uint64_t oid, void *buf,
                                       uint32_t offset, uint32_t len,
                                       uint32_t *result)
{
    QEMUIOVector qiov;

    qemu_iovec_init_buf(&qiov, buf, len);
    return sd_co_read_obj(c, oid, &qiov, 0, offset, len, result);
}

static int coroutine_fn sd_co_write_buf(SDClient *c, uint64_t oid,
                                        const void *buf, uint32_t offset,
                                        uint32_t len, uint32_t *result)
{
    QEMUIOVector qiov;

    qemu_iovec_init_buf(&qiov, (void *)buf, len);
    return sd_co_write_obj(c, oid, 0, false, &qiov, 0, offset, len, result);
}

/* ------------------------------------------------------------------ */
/* VDI requests                                                       */

/*
 * A VDI request carrying the name, and for every request but NEW_VDI the
 * 256-byte tag field after it (empty unless tag is given): sheep 1.0.1
 * reads that field when a lookup names a snapshot, and crashes if it is
 * missing. Returns 0 (look at rsp->result), -EIO, or SD_IN_DOUBT.
 */
static int coroutine_fn sd_co_vdi_req(SDClient *c, SheepdogReq *hdr,
                                      SDReqKind kind, const char *name,
                                      const char *tag, SheepdogRsp *rsp,
                                      Error **errp)
{
    uint8_t buf[SD_NAME_LEN + SD_TAG_LEN] = { 0 };
    QEMUIOVector qiov;

    pstrcpy((char *)buf, SD_NAME_LEN, name);
    if (tag) {
        pstrcpy((char *)buf + SD_NAME_LEN, SD_TAG_LEN, tag);
    }
    hdr->flags |= SD_FLAG_CMD_WRITE;
    hdr->data_length = hdr->opcode == SD_OP_NEW_VDI ? SD_NAME_LEN
                                                    : SD_NAME_LEN + SD_TAG_LEN;
    qemu_iovec_init_buf(&qiov, buf, hdr->data_length);
    rsp->result = SD_RES_EIO;
    return sd_client_co_request(c, kind, hdr, &qiov, 0, NULL, 0, 0, rsp,
                                errp);
}

/* A vid from the cluster must name a VDI: 1..2^24-1. */
static int sd_check_vid(uint32_t vid, const char *name, Error **errp)
{
    if (vid == 0 || vid > SD_MAX_VID) {
        error_setg(errp, "sheepdog: the cluster answered an invalid VDI id "
                   "0x%" PRIx32 " for '%s'", vid, name);
        return -EIO;
    }
    return 0;
}

static void sd_lookup_error(const char *name, uint32_t snapid,
                            const char *tag, uint32_t result, Error **errp)
{
    if (result == SD_RES_VDI_LOCKED) {
        error_setg(errp, "VDI '%s' is locked by another client", name);
    } else if (result == SD_RES_NO_VDI) {
        error_setg(errp, "VDI '%s' not found", name);
    } else if (result == SD_RES_NO_TAG && tag && *tag) {
        error_setg(errp, "VDI '%s' has no snapshot '%s'", name, tag);
    } else if (result == SD_RES_NO_TAG) {
        error_setg(errp, "VDI '%s' has no snapshot with id %" PRIu32, name,
                   snapid);
    } else {
        error_setg(errp, "cannot get VDI '%s': %s", name,
                   sd_strerror(result));
    }
}

/* GET_VDI_INFO of name [snapid | tag]: no side effect, repeated freely. */
static int coroutine_fn sd_co_find_vdi(SDClient *c, const char *name,
                                       uint32_t snapid, const char *tag,
                                       uint32_t *vid, Error **errp)
{
    SheepdogReq hdr = { .opcode = SD_OP_GET_VDI_INFO };
    SheepdogRsp rsp;
    int ret;

    hdr.vdi.snapid = snapid;
    ret = sd_co_vdi_req(c, &hdr, SD_REQ_IDEMPOTENT, name, tag, &rsp, errp);
    if (ret < 0) {
        return ret;
    }
    if (rsp.result != SD_RES_SUCCESS) {
        sd_lookup_error(name, snapid, tag, rsp.result, errp);
        return sd_result_to_errno(rsp.result);
    }
    *vid = rsp.vdi_id;
    return sd_check_vid(*vid, name, errp);
}

/*
 * LOCK_VDI: like GET_VDI_INFO, and takes the VDI's lock when the cluster
 * enforces locking. A lock request whose connection was lost is sent again;
 * if the VDI is then locked, that may be our own lost request's doing.
 */
static int coroutine_fn sd_co_lock_vdi(SDClient *c, const char *name,
                                       uint32_t snapid, const char *tag,
                                       uint32_t *vid, Error **errp)
{
    bool in_doubt = false;

    for (;;) {
        SheepdogReq hdr = { .opcode = SD_OP_LOCK_VDI };
        SheepdogRsp rsp;
        Error *err = NULL;
        int ret;

        hdr.vdi.snapid = snapid;
        ret = sd_co_vdi_req(c, &hdr, SD_REQ_VDI_OP, name, tag, &rsp, &err);
        if (ret == SD_IN_DOUBT && !in_doubt) {
            error_free(err);
            in_doubt = true;
            continue;
        }
        if (ret < 0) {
            error_propagate(errp, err);
            return ret == SD_IN_DOUBT ? -EIO : ret;
        }
        if (rsp.result == SD_RES_VDI_LOCKED && in_doubt) {
            error_setg(errp, "VDI '%s' is locked, maybe by this client's "
                       "interrupted lock request (check with 'dog vdi lock "
                       "list')", name);
            return -EBUSY;
        }
        if (rsp.result != SD_RES_SUCCESS) {
            sd_lookup_error(name, snapid, tag, rsp.result, errp);
            return sd_result_to_errno(rsp.result);
        }
        *vid = rsp.vdi_id;
        return sd_check_vid(*vid, name, errp);
    }
}

/* RELEASE_VDI of vid. It is never sent twice: a second release could drop
 * a lock another client took in between. */
static void coroutine_fn sd_co_release_vdi(SDClient *c, const char *name,
                                           uint32_t vid)
{
    SheepdogReq hdr = { .opcode = SD_OP_RELEASE_VDI };
    SheepdogRsp rsp;
    Error *err = NULL;
    int ret;

    hdr.vdi.base_vdi_id = vid;
    ret = sd_co_vdi_req(c, &hdr, SD_REQ_VDI_OP, name, NULL, &rsp, &err);
    if (ret == 0 && rsp.result != SD_RES_SUCCESS) {
        error_setg(&err, "cannot release the lock of VDI '%s': %s", name,
                   sd_strerror(rsp.result));
    }
    if (ret < 0 || rsp.result != SD_RES_SUCCESS) {
        if (ret < 0) {
            error_prepend(&err, "cannot release the lock of VDI '%s': ",
                          name);
        }
        error_report("%s%s", error_get_pretty(err),
                     ret == SD_IN_DOUBT ? " (the lock may still be held: "
                     "'dog vdi lock unlock' releases it)" : "");
        error_free(err);
    }
}

typedef struct SDNewVdi {
    const char *name;
    uint64_t size;
    uint32_t base_vid;
    uint32_t snapid;            /* != 0: snapshot (the working VDI moves on) */
    uint8_t copies;
    uint8_t copy_policy;
    uint8_t block_size_shift;
} SDNewVdi;

static int coroutine_fn sd_co_read_inode(SDClient *c, uint32_t vid,
                                         SheepdogInodeHeader *hdr,
                                         uint32_t *map, Error **errp);

/*
 * After a NEW_VDI whose connection was lost: did it happen? A snapshot did
 * if the working VDI of the name moved on from base; a clone did if a
 * working VDI of the name with parent base exists. 1: yes (*vid set),
 * 0: no, <0: error.
 */
static int coroutine_fn sd_co_new_vdi_happened(SDClient *c,
                                               const SDNewVdi *nv,
                                               uint32_t *vid, Error **errp)
{
    SheepdogInodeHeader hdr;
    Error *err = NULL;
    uint32_t found;
    int ret = sd_co_find_vdi(c, nv->name, 0, NULL, &found, &err);

    if (ret == -ENOENT) {
        error_free(err);
        return 0;
    }
    if (ret < 0) {
        error_propagate(errp, err);
        return ret;
    }
    if (nv->snapid && found == nv->base_vid) {
        return 0;
    }
    ret = sd_co_read_inode(c, found, &hdr, NULL, errp);
    if (ret < 0) {
        return ret;
    }
    if (nv->base_vid && hdr.parent_vdi_id == nv->base_vid &&
        !hdr.snap_ctime) {
        *vid = found;
        return 1;
    }
    error_setg(errp, "VDI '%s' exists; the connection was lost while "
               "creating it, so it may be this client's", nv->name);
    return -EEXIST;
}

static int coroutine_fn sd_co_new_vdi(SDClient *c, const SDNewVdi *nv,
                                      uint32_t *vid, Error **errp)
{
    for (unsigned tries = 0;; tries++) {
        SheepdogReq hdr = { .opcode = SD_OP_NEW_VDI };
        SheepdogRsp rsp;
        Error *err = NULL;
        int ret;

        hdr.vdi.vdi_size = nv->size;
        hdr.vdi.base_vdi_id = nv->base_vid;
        hdr.vdi.snapid = nv->snapid;
        hdr.vdi.copies = nv->copies;
        hdr.vdi.copy_policy = nv->copy_policy;
        hdr.vdi.block_size_shift = nv->block_size_shift;
        ret = sd_co_vdi_req(c, &hdr, SD_REQ_VDI_OP, nv->name, NULL, &rsp,
                            &err);
        if (ret == SD_IN_DOUBT && tries < 2) {
            error_free(err);
            ret = sd_co_new_vdi_happened(c, nv, vid, errp);
            if (ret != 0) {
                return ret < 0 ? ret : 0;
            }
            continue;           /* it did not happen: send it again */
        }
        if (ret < 0) {
            error_propagate(errp, err);
            return -EIO;
        }
        if (rsp.result == SD_RES_VDI_EXIST) {
            error_setg(errp, "VDI '%s' already exists", nv->name);
            return -EEXIST;
        }
        if (rsp.result != SD_RES_SUCCESS) {
            error_setg(errp, "cannot create VDI '%s': %s", nv->name,
                       sd_strerror(rsp.result));
            return sd_result_to_errno(rsp.result);
        }
        *vid = rsp.vdi_id;
        return sd_check_vid(*vid, nv->name, errp);
    }
}

/*
 * Check an inode header read from the cluster before anything uses it:
 * it must be the VDI asked for, a plain (not hyper) volume, with a valid
 * object size, redundancy and size.
 */
static int sd_check_inode(const SheepdogInodeHeader *hdr, uint32_t vid,
                          Error **errp)
{
    unsigned shift = hdr->block_size_shift ? hdr->block_size_shift
                                           : SD_DEFAULT_BLOCK_SHIFT;

    if (hdr->vdi_id != vid) {
        error_setg(errp, "sheepdog: inode of VDI %" PRIx32 " names VDI %"
                   PRIx32, vid, hdr->vdi_id);
        return -EIO;
    }
    if (hdr->store_policy != 0) {
        error_setg(errp, "sheepdog: VDI '%s' is a hyper volume (store "
                   "policy %u), which this driver does not support",
                   hdr->name, hdr->store_policy);
        return -ENOTSUP;
    }
    if (shift < SD_MIN_BLOCK_SHIFT || shift > SD_MAX_BLOCK_SHIFT) {
        error_setg(errp, "sheepdog: VDI '%s' has an invalid object size "
                   "shift %u", hdr->name, hdr->block_size_shift);
        return -EIO;
    }
    if (hdr->vdi_size > (uint64_t)SD_MAX_DATA_OBJS << shift) {
        error_setg(errp, "sheepdog: VDI '%s' has an invalid size %" PRIu64
                   " (at most %" PRIu64 " with %u-byte objects)", hdr->name,
                   hdr->vdi_size, (uint64_t)SD_MAX_DATA_OBJS << shift,
                   1U << shift);
        return -EIO;
    }
    if (hdr->copy_policy == 0
        ? (hdr->nr_copies < 1 || hdr->nr_copies > SD_MAX_COPIES)
        : !sd_valid_ec_policy(hdr->copy_policy, hdr->nr_copies)) {
        error_setg(errp, "sheepdog: VDI '%s' has an invalid redundancy "
                   "(copies %u, policy 0x%02x)", hdr->name, hdr->nr_copies,
                   hdr->copy_policy);
        return -EIO;
    }
    return 0;
}

/* Read the header (and data_vdi_id into map when non-NULL) of vid and
 * check them. */
static int coroutine_fn sd_co_read_inode(SDClient *c, uint32_t vid,
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
                   result != SD_RES_SUCCESS ? sd_strerror(result)
                                            : strerror(-ret));
        return ret;
    }
    sd_inode_header_decode(buf, hdr);
    ret = sd_check_inode(hdr, vid, errp);
    if (ret < 0 || !map) {
        return ret;
    }
    for (uint32_t i = 0; i < SD_MAX_DATA_OBJS; i++) {
        map[i] = sd_ld32(buf + SD_INODE_DATA_INDEX + 4 * i);
        if (map[i] > SD_MAX_VID) {
            error_setg(errp, "sheepdog: inode of VDI %" PRIx32 " has an "
                       "invalid owner 0x%" PRIx32 " for object %" PRIu32,
                       vid, map[i], i);
            return -EIO;
        }
    }
    return 0;
}

/* Write entries [lo, hi] (values in vals) into the inode of vid. */
static int coroutine_fn sd_co_write_map(SDClient *c, uint32_t vid,
                                        const uint32_t *vals, uint32_t lo,
                                        uint32_t hi)
{
    uint32_t n = hi - lo + 1, result;
    g_autofree uint8_t *buf = g_malloc(4 * (size_t)n);

    for (uint32_t i = 0; i < n; i++) {
        sd_st32(buf + 4 * i, vals[i]);
    }
    return sd_co_write_buf(c, sd_vid_to_vdi_oid(vid), buf,
                           SD_INODE_DATA_INDEX + 4 * lo, 4 * n, &result);
}

/* DEL_VDI; a request whose connection was lost is repeated only if the VDI
 * is still there. */
static int coroutine_fn sd_co_del_vdi_req(SDClient *c, const char *name,
                                          uint32_t snapid, const char *tag,
                                          Error **errp)
{
    for (unsigned tries = 0;; tries++) {
        SheepdogReq req = { .opcode = SD_OP_DEL_VDI };
        SheepdogRsp rsp;
        Error *err = NULL;
        uint32_t vid;
        int ret;

        req.vdi.snapid = snapid;
        ret = sd_co_vdi_req(c, &req, SD_REQ_VDI_OP, name, tag, &rsp, &err);
        if (ret == SD_IN_DOUBT && tries < 2) {
            error_free(err);
            err = NULL;
            ret = sd_co_find_vdi(c, name, snapid, tag, &vid, &err);
            error_free(err);
            if (ret == -ENOENT) {
                return 0;       /* it happened */
            }
            continue;
        }
        if (ret < 0) {
            error_propagate(errp, err);
            return -EIO;
        }
        if (rsp.result != SD_RES_SUCCESS) {
            error_setg(errp, "cannot delete VDI '%s': %s", name,
                       sd_strerror(rsp.result));
            return sd_result_to_errno(rsp.result);
        }
        return 0;
    }
}

/*
 * Delete a VDI (or one of its snapshots) as the reference CLI does: zero
 * every non-zero data_vdi_id entry of *that* VDI, then DEL_VDI.
 */
static int coroutine_fn sd_co_delete_vdi(SDClient *c, const char *name,
                                         uint32_t snapid, const char *tag,
                                         Error **errp)
{
    SheepdogInodeHeader hdr;
    g_autofree uint32_t *map = g_new(uint32_t, SD_MAX_DATA_OBJS);
    g_autofree uint32_t *zeros = g_new0(uint32_t, 65536);
    uint32_t vid, i = 0;
    int ret;

    ret = sd_co_find_vdi(c, name, snapid, tag, &vid, errp);
    if (ret < 0) {
        return ret;
    }
    ret = sd_co_read_inode(c, vid, &hdr, map, errp);
    if (ret < 0) {
        return ret;
    }
    /* zero runs of non-zero entries, at most 64 Ki entries per write */
    while (i < SD_MAX_DATA_OBJS) {
        uint32_t lo = i, hi = i;

        if (!map[i]) {
            i++;
            continue;
        }
        while (i < SD_MAX_DATA_OBJS && map[i] && i - lo < 65536) {
            hi = i++;
        }
        ret = sd_co_write_map(c, vid, zeros, lo, hi);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "cannot clear the map of VDI '%s'",
                             name);
            return ret;
        }
    }
    return sd_co_del_vdi_req(c, name, snapid, tag, errp);
}

/* ------------------------------------------------------------------ */
/* Driver state                                                       */

/* One data_vdi_id entry waiting to be recorded in the inode. */
typedef struct SDInodeWaiter {
    uint64_t gen;               /* batch it joined */
    uint32_t vid;               /* inode it belongs to */
    uint32_t idx, owner;        /* map[idx] = owner once recorded */
    int ret;
    bool done;
    Coroutine *co;
    struct SDInodeWaiter *next;
} SDInodeWaiter;

typedef struct BDRVSheepdogState {
    SDClient *client;
    SheepdogName name;
    SheepdogInodeHeader hdr;    /* of vid */
    uint32_t vid;               /* the VDI requests go to */
    uint32_t *map;              /* data_vdi_id of vid as recorded, CPU order */
    uint64_t obj_size;
    uint64_t nr_objs;           /* objects covering vdi_size */
    bool is_snapshot;           /* vid is a snapshot: first write branches */
    GArray *locked;             /* vids locked by this open (uint32_t) */
    CoMutex meta_lock;          /* branch, reload, snapshot switch */

    /* object indexes with a create/discard in progress */
    GHashTable *busy;
    CoQueue busy_queue;

    /* batched data_vdi_id updates */
    bool updating;
    uint64_t batch_gen;
    SDInodeWaiter *waiters;
} BDRVSheepdogState;

static const QemuOptDesc sd_open_opts[] = {
    { "reconnect-timeout", QEMU_OPT_NUMBER,
      "Seconds to keep retrying after the connection is lost, and to wait "
      "for an answer (default 30)" },
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

static void sd_lock_forget(BDRVSheepdogState *s, uint32_t vid)
{
    for (guint i = 0; i < s->locked->len; i++) {
        if (g_array_index(s->locked, uint32_t, i) == vid) {
            g_array_remove_index(s->locked, i);
            return;
        }
    }
}

static void coroutine_fn sd_co_release_all(BDRVSheepdogState *s)
{
    for (guint i = 0; i < s->locked->len; i++) {
        sd_co_release_vdi(s->client, s->name.vdi,
                          g_array_index(s->locked, uint32_t, i));
    }
    g_array_set_size(s->locked, 0);
}

/* Make vid (already read into hdr/map and checked) the VDI requests go
 * to. */
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
    s->nr_objs = DIV_ROUND_UP(hdr->vdi_size, s->obj_size);
    s->is_snapshot = hdr->snap_ctime != 0;
}

/* Read vid's inode and switch to it. */
static int coroutine_fn sd_co_load_vdi(BDRVSheepdogState *s, uint32_t vid,
                                       Error **errp)
{
    SheepdogInodeHeader hdr;
    uint32_t *map = g_new(uint32_t, SD_MAX_DATA_OBJS);
    int ret = sd_co_read_inode(s->client, vid, &hdr, map, errp);

    if (ret < 0) {
        g_free(map);
        return ret;
    }
    if (strcmp(hdr.name, s->name.vdi)) {
        error_setg(errp, "sheepdog: VDI %" PRIx32 " is '%s', not '%s'", vid,
                   hdr.name, s->name.vdi);
        g_free(map);
        return -EIO;
    }
    sd_switch_vdi(s, vid, &hdr, map);
    return 0;
}

static void coroutine_fn sd_free_state(BDRVSheepdogState *s)
{
    if (s->client) {
        sd_client_co_free(s->client);
        s->client = NULL;
    }
    g_hash_table_destroy(s->busy);
    g_array_free(s->locked, true);
    g_free(s->map);
    s->map = NULL;
    sd_name_clear(&s->name);
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
    if (timeout < 1 || timeout > SD_MAX_RECONNECT_TIMEOUT) {
        error_setg(errp, "sheepdog: reconnect-timeout must be 1..%d seconds",
                   SD_MAX_RECONNECT_TIMEOUT);
        return -EINVAL;
    }
    ret = sd_parse_name(bs->filename, &s->name, errp);
    if (ret < 0) {
        return ret;
    }
    s->locked = g_array_new(false, false, sizeof(uint32_t));
    s->busy = g_hash_table_new(g_direct_hash, g_direct_equal);
    qemu_co_queue_init(&s->busy_queue);
    qemu_co_mutex_init(&s->meta_lock);
    s->client = sd_client_new(&s->name, (int64_t)timeout * 1000000000LL);
    ret = sd_client_co_connect(s->client, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = sd_co_lock_vdi(s->client, s->name.vdi, s->name.snap_id,
                         s->name.tag, &vid, errp);
    if (ret < 0) {
        goto fail;
    }
    sd_lock_add(s, vid);
    ret = sd_co_load_vdi(s, vid, errp);
    if (ret < 0) {
        sd_co_release_all(s);
        goto fail;
    }
    return 0;

fail:
    sd_free_state(s);
    return ret;
}

static void coroutine_fn sd_close(BlockDriverState *bs)
{
    BDRVSheepdogState *s = bs->opaque;

    sd_co_release_all(s);
    sd_free_state(s);
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

/* The working VDI of our name becomes vid: lock it and load it. */
static int coroutine_fn sd_co_take_working(BDRVSheepdogState *s, uint32_t vid,
                                           Error **errp)
{
    uint32_t locked_vid;
    int ret = sd_co_lock_vdi(s->client, s->name.vdi, 0, NULL, &locked_vid,
                             errp);

    if (ret < 0) {
        return ret;
    }
    sd_lock_add(s, locked_vid);
    if (locked_vid != vid) {
        error_setg(errp, "sheepdog: the working VDI of '%s' changed under "
                   "us (%" PRIx32 " instead of %" PRIx32 ")", s->name.vdi,
                   locked_vid, vid);
        return -EIO;
    }
    return sd_co_load_vdi(s, vid, errp);
}

/*
 * First write to a snapshot: make a working VDI from it and go on there,
 * as QEMU's original driver did. With a working VDI of the name this is a
 * NEW_VDI snapshot request based on the snapshot (the old working VDI is
 * kept as a snapshot); without one (a rollback was interrupted) a clone
 * under the same name.
 */
static int coroutine_fn sd_co_branch(BDRVSheepdogState *s)
{
    SDNewVdi nv;
    uint32_t vid, working;
    Error *err = NULL;
    int ret = 0;

    qemu_co_mutex_lock(&s->meta_lock);
    if (!s->is_snapshot) {
        goto out;
    }
    ret = sd_co_find_vdi(s->client, s->name.vdi, 0, NULL, &working, &err);
    if (ret < 0 && ret != -ENOENT) {
        goto out;
    }
    error_free(err);
    err = NULL;
    nv = (SDNewVdi) {
        .name = s->name.vdi, .size = s->hdr.vdi_size, .base_vid = s->vid,
        .snapid = ret == 0 ? 1 : 0, .copies = s->hdr.nr_copies,
        .copy_policy = s->hdr.copy_policy,
        .block_size_shift = s->hdr.block_size_shift,
    };
    ret = sd_co_new_vdi(s->client, &nv, &vid, &err);
    if (ret == 0) {
        ret = sd_co_take_working(s, vid, &err);
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
    ret = sd_co_find_vdi(s->client, s->name.vdi, 0, NULL, &vid, &err);
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

static void sd_waiter_finish(SDInodeWaiter *w, int ret)
{
    w->ret = ret;
    w->done = true;
    if (w->co) {
        Coroutine *co = w->co;
        w->co = NULL;
        aio_co_wake(co);
    }
}

/*
 * Write one batch: the entries of every waiter up to gen (all of vid),
 * with the recorded map around them, as one inode write. The in-memory
 * map changes only once the write is acknowledged, so a failed update
 * leaves it as the inode is (a later write creates the object again).
 */
static void coroutine_fn sd_co_write_batch(BDRVSheepdogState *s, uint64_t gen)
{
    uint32_t lo = UINT32_MAX, hi = 0, vid = s->vid;
    int ret = 0;
    g_autofree uint32_t *vals = NULL;
    SDInodeWaiter *w, **p;

    for (w = s->waiters; w; w = w->next) {
        if (w->gen <= gen && w->vid == vid) {
            lo = MIN(lo, w->idx);
            hi = MAX(hi, w->idx);
        }
    }
    if (lo <= hi) {
        vals = g_memdup2(s->map + lo, 4 * (size_t)(hi - lo + 1));
        for (w = s->waiters; w; w = w->next) {
            if (w->gen <= gen && w->vid == vid) {
                vals[w->idx - lo] = w->owner;
            }
        }
        ret = sd_co_write_map(s->client, vid, vals, lo, hi);
    }
    for (p = &s->waiters; *p;) {
        w = *p;
        if (w->gen > gen) {
            p = &w->next;
            continue;
        }
        *p = w->next;
        if (w->vid != vid || s->vid != vid) {
            sd_waiter_finish(w, -EROFS);    /* VDI switched: redo there */
        } else {
            if (ret == 0) {
                s->map[w->idx] = w->owner;
            }
            sd_waiter_finish(w, ret);
        }
    }
}

/*
 * Record map[idx] = owner in the inode of vid. Updates made while one
 * inode write is in flight are merged into the next single write covering
 * their range; returns when the write holding this entry is acknowledged
 * (and only then is the in-memory map changed). The caller holds idx busy.
 */
static int coroutine_fn sd_co_update_inode(BDRVSheepdogState *s, uint32_t vid,
                                           uint32_t idx, uint32_t owner)
{
    /* on the heap: the list outlives no frame, but gcc cannot see that */
    SDInodeWaiter *w = g_new0(SDInodeWaiter, 1);
    int ret;

    w->gen = s->batch_gen;
    w->vid = vid;
    w->idx = idx;
    w->owner = owner;
    w->next = s->waiters;
    s->waiters = w;
    if (!s->updating) {
        s->updating = true;
        while (s->waiters) {
            sd_co_write_batch(s, s->batch_gen++);
        }
        s->updating = false;
    }
    while (!w->done) {
        w->co = qemu_coroutine_self();
        qemu_coroutine_yield();
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
        ret = sd_co_write_obj(s->client, sd_vid_to_data_oid(vid, idx), 0,
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
    ret = sd_co_write_obj(s->client, sd_vid_to_data_oid(vid, idx),
                          owner ? sd_vid_to_data_oid(owner, idx) : 0, true,
                          qiov, qoff, off, len, &result);
    if (ret == 0 && s->vid == vid) {
        ret = sd_co_update_inode(s, vid, idx, vid);
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
    return sd_co_read_obj(s->client, sd_vid_to_data_oid(owner, idx), qiov,
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
    if (--*j->pending == 0 && *j->waiter) {
        Coroutine *co = *j->waiter;
        *j->waiter = NULL;
        aio_co_wake(co);
    }
    g_free(j);
}

/*
 * Split a request by object; chunks of one request run in parallel. The
 * request layer keeps offset + bytes within the image size, which is
 * within SD_MAX_DATA_OBJS objects (checked when the inode was read).
 */
static int coroutine_fn sd_co_rw(BlockDriverState *bs, bool write,
                                 int64_t offset, int64_t bytes,
                                 QEMUIOVector *qiov, size_t qoff)
{
    BDRVSheepdogState *s = bs->opaque;
    unsigned pending = 1;
    Coroutine *waiter = NULL;
    int ret = 0;

    if ((uint64_t)offset + bytes > s->nr_objs * s->obj_size) {
        return -EIO;
    }
    while (bytes > 0) {
        uint64_t idx = (uint64_t)offset / s->obj_size;
        uint32_t off = offset % s->obj_size;
        uint32_t len = MIN((uint64_t)bytes, s->obj_size - off);
        SDChunkJob one = {
            .s = s, .write = write, .idx = idx, .off = off, .len = len,
            .qiov = qiov, .qoff = qoff, .ret = &ret, .pending = &pending,
            .waiter = &waiter,
        };

        assert(idx < SD_MAX_DATA_OBJS);
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

/* Drop whole allocated objects in [offset, offset+bytes) of the working
 * VDI (the caller branched a snapshot first). */
static int coroutine_fn sd_co_discard_objects(BDRVSheepdogState *s,
                                              int64_t offset, int64_t bytes)
{
    uint64_t first = DIV_ROUND_UP(offset, s->obj_size);
    uint64_t end = MIN((offset + bytes) / s->obj_size, s->nr_objs);
    int ret = 0;

    for (uint64_t idx = first; idx < end; idx++) {
        int r;

        sd_co_busy_wait(s, idx);
        if (!s->map[idx]) {
            continue;
        }
        sd_busy_acquire(s, idx);
        r = sd_co_update_inode(s, s->vid, idx, 0);
        sd_busy_release(s, idx);
        if (r < 0 && ret == 0) {
            ret = r;
        }
    }
    return ret;
}

/* Discard is a hint: on a snapshot (read-only until written) it does
 * nothing; partial objects are ignored. */
static int coroutine_fn sd_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes)
{
    BDRVSheepdogState *s = bs->opaque;

    if (s->is_snapshot) {
        return 0;
    }
    return sd_co_discard_objects(s, offset, bytes);
}

/*
 * Write zeroes: whole objects that are unallocated need nothing, whole
 * allocated ones are dropped with MAY_UNMAP; anything else falls back to
 * writing zero buffers. A snapshot is written, so it branches first.
 */
static int coroutine_fn sd_co_pwrite_zeroes(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            BdrvRequestFlags flags)
{
    BDRVSheepdogState *s = bs->opaque;
    int ret;

    if (offset % s->obj_size || bytes % s->obj_size) {
        return -ENOTSUP;
    }
    for (int64_t o = offset; o < offset + bytes; o += s->obj_size) {
        if (s->map[o / s->obj_size] && !(flags & BDRV_REQ_MAY_UNMAP)) {
            return -ENOTSUP;
        }
    }
    if (s->is_snapshot) {
        ret = sd_co_branch(s);
        if (ret < 0) {
            return ret;
        }
    }
    return sd_co_discard_objects(s, offset, bytes);
}

static int coroutine_fn sd_co_flush(BlockDriverState *bs)
{
    (void)bs;
    return 0;       /* FLUSH_VDI is obsolete: writes are durable when acked */
}

/* Runs of allocated / unallocated objects; offset < vdi_size, so every
 * index looked at is below nr_objs (at most SD_MAX_DATA_OBJS). */
static int coroutine_fn sd_co_block_status(BlockDriverState *bs,
                                           bool want_zero, int64_t offset,
                                           int64_t bytes, int64_t *pnum,
                                           int64_t *map,
                                           BlockDriverState **file)
{
    BDRVSheepdogState *s = bs->opaque;
    uint64_t idx = (uint64_t)offset / s->obj_size;
    uint64_t end = MIN((uint64_t)offset + bytes, s->nr_objs * s->obj_size);
    uint64_t pos;
    bool allocated;

    (void)want_zero;
    if (idx >= s->nr_objs) {
        return -EIO;
    }
    allocated = s->map[idx] != 0;
    for (pos = (idx + 1) * s->obj_size; pos < end; pos += s->obj_size) {
        if ((s->map[pos / s->obj_size] != 0) != allocated) {
            break;
        }
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
    sd_st64(buf, offset);
    ret = sd_co_write_buf(s->client, sd_vid_to_vdi_oid(s->vid), buf,
                          SD_INODE_OFF_VDI_SIZE, 8, &result);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "sheepdog: failed to update the VDI "
                         "size");
        return ret;
    }
    s->hdr.vdi_size = offset;
    s->nr_objs = DIV_ROUND_UP(s->hdr.vdi_size, s->obj_size);
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
    g_autofree char *vid = g_strdup_printf("%" PRIx32, s->vid);

    (void)errp;
    image_info_add_str(info, "vdi-id", vid);
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
static int coroutine_fn sd_co_prealloc(SDClient *c, uint32_t vid,
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

static int coroutine_fn sd_co_cluster_default_shift(SDClient *c)
{
    SheepdogReq hdr = { .opcode = SD_OP_GET_CLUSTER_DEFAULT };
    SheepdogRsp rsp;
    Error *err = NULL;

    if (sd_client_co_request(c, SD_REQ_IDEMPOTENT, &hdr, NULL, 0, NULL, 0, 0,
                             &rsp, &err) < 0) {
        error_free(err);
        return SD_DEFAULT_BLOCK_SHIFT;
    }
    if (
        rsp.result != SD_RES_SUCCESS ||
        rsp.default_block_size_shift < SD_MIN_BLOCK_SHIFT ||
        rsp.default_block_size_shift > SD_MAX_BLOCK_SHIFT) {
        return SD_DEFAULT_BLOCK_SHIFT;
    }
    return rsp.default_block_size_shift;
}

/* Resolve backing_file (a sheepdog snapshot) into vid and header. */
static int coroutine_fn sd_co_backing_vdi(SDClient *c, const char *backing,
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
        ret = sd_co_find_vdi(c, bn.vdi, bn.snap_id, bn.tag, vid, errp);
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
    SDClient *client;
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
    client = sd_client_new(&name, (int64_t)SD_DEFAULT_RECONNECT_TIMEOUT *
                           1000000000LL);
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
    ret = sd_client_co_connect(client, errp);
    if (ret < 0) {
        goto out;
    }
    if (backing) {
        ret = sd_co_backing_vdi(client, backing, &name, &nv.base_vid,
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
        nv.block_size_shift = sd_co_cluster_default_shift(client);
    }
    if (size > ((uint64_t)SD_MAX_DATA_OBJS << nv.block_size_shift)) {
        error_setg(errp, "sheepdog: too big image size (max %" PRIu64 ")",
                   (uint64_t)SD_MAX_DATA_OBJS << nv.block_size_shift);
        ret = -EINVAL;
        goto out;
    }
    nv.name = name.vdi;
    nv.size = QEMU_ALIGN_UP(size, 512);
    ret = sd_co_new_vdi(client, &nv, &vid, errp);
    if (ret == 0 && prealloc == PREALLOC_MODE_FULL) {
        ret = sd_co_prealloc(client, vid, errp);
    }
out:
    sd_client_co_free(client);
    sd_name_clear(&name);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Snapshots and VM state                                             */

/* Tag, VM clock, size and VM state size into the inode of vid. */
static int coroutine_fn sd_co_write_snap_info(BDRVSheepdogState *s,
                                              uint32_t vid, const char *name,
                                              uint64_t vm_clock,
                                              uint64_t vm_state_size)
{
    uint8_t tag[SD_TAG_LEN] = { 0 }, vm[24];
    uint32_t result;
    int ret;

    pstrcpy((char *)tag, sizeof(tag), name);
    ret = sd_co_write_buf(s->client, sd_vid_to_vdi_oid(vid), tag,
                          SD_INODE_OFF_TAG, SD_TAG_LEN, &result);
    if (ret == 0) {
        /* vm_clock_nsec, vdi_size (unchanged), vm_state_size */
        sd_st64(vm, vm_clock);
        sd_st64(vm + 8, s->hdr.vdi_size);
        sd_st64(vm + 16, vm_state_size);
        ret = sd_co_write_buf(s->client, sd_vid_to_vdi_oid(vid), vm,
                              SD_INODE_OFF_VM_CLOCK, sizeof(vm), &result);
    }
    return ret;
}

/* A tag must not read as a snapshot id (as dog refuses), nor exist. */
static int coroutine_fn sd_co_check_new_tag(BDRVSheepdogState *s,
                                            const char *tag, Error **errp)
{
    uint64_t n;
    const char *end;
    uint32_t vid;
    Error *err = NULL;
    int ret;

    if (strlen(tag) >= SD_TAG_LEN) {
        error_setg(errp, "sheepdog: snapshot tag is too long (max %d "
                   "characters)", SD_TAG_LEN - 1);
        return -EINVAL;
    }
    if (!*tag) {
        return 0;
    }
    if (!qemu_strtou64(tag, &end, 10, &n) && !*end) {
        error_setg(errp, "sheepdog: snapshot tag '%s' is a number; it would "
                   "read as a snapshot id", tag);
        return -EINVAL;
    }
    ret = sd_co_find_vdi(s->client, s->name.vdi, 0, tag, &vid, &err);
    if (ret == 0) {
        error_setg(errp, "sheepdog: VDI '%s' already has a snapshot '%s'",
                   s->name.vdi, tag);
        return -EEXIST;
    }
    if (ret != -ENOENT) {
        error_propagate(errp, err);
        return ret;
    }
    error_free(err);
    return 0;
}

/*
 * Take a snapshot: the tag goes into the current inode, NEW_VDI turns the
 * current vid into the snapshot and makes a new working vid, which is
 * locked before the old vid's lock is released (the image is never
 * unlocked in between). On a failure before NEW_VDI the tag is taken back.
 */
static int coroutine_fn sd_co_snapshot_create(BlockDriverState *bs,
                                              QEMUSnapshotInfo *sn,
                                              Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    uint32_t old_vid, new_vid;
    SDNewVdi nv;
    int ret;

    if (s->is_snapshot) {
        error_setg(errp, "sheepdog: cannot snapshot a snapshot VDI; write "
                   "to it or open the working VDI first");
        return -EINVAL;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    old_vid = s->vid;
    ret = sd_co_check_new_tag(s, sn->name, errp);
    if (ret < 0) {
        goto out;
    }
    ret = sd_co_write_snap_info(s, old_vid, sn->name, sn->vm_clock_nsec,
                                sn->vm_state_size);
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
    ret = sd_co_new_vdi(s->client, &nv, &new_vid, errp);
    if (ret < 0) {
        sd_co_write_snap_info(s, old_vid, "", 0, 0);
        goto out;
    }
    ret = sd_co_take_working(s, new_vid, errp);
    if (ret == 0) {
        sd_co_release_vdi(s->client, s->name.vdi, old_vid);
        sd_lock_forget(s, old_vid);
    }
out:
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/* Resolve a snapshot given by id or tag into its vid (and snap id when it
 * was found by id). */
static int coroutine_fn sd_co_find_snapshot(BDRVSheepdogState *s,
                                            const char *id, const char *tag,
                                            uint32_t *vid, uint32_t *snapid,
                                            Error **errp)
{
    uint64_t n;
    const char *end;
    Error *err = NULL;

    *snapid = 0;
    if (id && *id && !qemu_strtou64(id, &end, 10, &n) && !*end &&
        n >= 1 && n <= UINT32_MAX) {
        if (sd_co_find_vdi(s->client, s->name.vdi, n, NULL, vid, &err) == 0) {
            *snapid = n;
            return 0;
        }
        error_free(err);
    }
    if (!tag || !*tag) {
        tag = id;
    }
    if (!tag || !*tag || strlen(tag) >= SD_TAG_LEN) {
        error_setg(errp, "snapshot not found");
        return -ENOENT;
    }
    return sd_co_find_vdi(s->client, s->name.vdi, 0, tag, vid, errp);
}

/*
 * Roll back as the reference CLI does: delete the working VDI, then clone
 * the snapshot under the same name. The working VDI stays locked until it
 * is deleted. If the clone cannot be made, the image goes on reading the
 * snapshot, and its first write makes the working VDI (sd_co_branch).
 */
static int coroutine_fn sd_co_snapshot_goto(BlockDriverState *bs,
                                            const char *snapshot_id,
                                            Error **errp)
{
    BDRVSheepdogState *s = bs->opaque;
    SheepdogInodeHeader snap;
    uint32_t snap_vid, snapid, new_vid, working;
    Error *err = NULL;
    SDNewVdi nv;
    int ret;

    qemu_co_mutex_lock(&s->meta_lock);
    ret = sd_co_find_snapshot(s, snapshot_id, NULL, &snap_vid, &snapid, errp);
    if (ret == 0) {
        ret = sd_co_read_inode(s->client, snap_vid, &snap, NULL, errp);
    }
    if (ret < 0) {
        goto out;
    }
    ret = sd_co_find_vdi(s->client, s->name.vdi, 0, NULL, &working, &err);
    if (ret == 0) {
        ret = sd_co_delete_vdi(s->client, s->name.vdi, 0, NULL, errp);
        if (ret < 0) {
            goto out;
        }
        sd_co_release_vdi(s->client, s->name.vdi, working);
        sd_lock_forget(s, working);
    } else if (ret != -ENOENT) {
        error_propagate(errp, err);
        goto out;
    } else {
        error_free(err);
    }
    nv = (SDNewVdi) {
        .name = s->name.vdi, .size = snap.vdi_size, .base_vid = snap_vid,
        .copies = snap.nr_copies, .copy_policy = snap.copy_policy,
        .block_size_shift = snap.block_size_shift,
    };
    ret = sd_co_new_vdi(s->client, &nv, &new_vid, errp);
    if (ret == 0) {
        ret = sd_co_take_working(s, new_vid, errp);
    }
    if (ret < 0 && s->vid == working &&
        sd_co_load_vdi(s, snap_vid, NULL) == 0) {
        error_prepend(errp, "rollback incomplete, the image now reads "
                      "the snapshot: ");
    }
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
        ret = sd_co_delete_vdi(s->client, s->name.vdi, snapid, tag, errp);
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
    Error *err = NULL;
    int ret;

    qemu_iovec_init_buf(&qiov, bitmap, SD_NR_VDIS / 8);
    ret = sd_client_co_request(s->client, SD_REQ_IDEMPOTENT, &req, NULL, 0,
                               &qiov, 0, SD_NR_VDIS / 8, &rsp, &err);
    if (ret < 0) {
        error_report_err(err);
    } else if (rsp.result != SD_RES_SUCCESS ||
               rsp.data_length != SD_NR_VDIS / 8) {
        error_report("sheepdog: cannot read the VDI bitmap: %s",
                     rsp.result != SD_RES_SUCCESS ? sd_strerror(rsp.result)
                                                  : "short answer");
        ret = -EIO;
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
        if (sd_co_read_inode(s->client, vid, &hdr, NULL, NULL) < 0 ||
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
    if (vid > SD_MAX_VID || pos < 0 ||
        (uint64_t)pos + qiov->size > (UINT64_C(1) << 32) * s->obj_size) {
        return -EINVAL;     /* vmstate object indexes are 32-bit */
    }
    while (done < qiov->size) {
        uint64_t p = pos + done;
        uint32_t idx = p / s->obj_size, off = p % s->obj_size, result;
        uint32_t len = MIN(qiov->size - done, s->obj_size - off);
        int ret;

        if (load) {
            ret = sd_co_read_obj(s->client, sd_vid_to_vmstate_oid(vid, idx),
                                 qiov, done, off, len, &result);
        } else {
            ret = sd_co_write_obj(s->client, sd_vid_to_vmstate_oid(vid, idx),
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
