/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rbd protocol: Ceph RADOS block device images through librbd's
 * asynchronous API. Each request is a coroutine that submits one rbd_aio_*
 * call and yields; librbd completes it on its own thread, which hands the
 * result back to the event loop with aio_co_wake() (DESIGN.md decision 3).
 */
#include "block/rbd-lib.h"

#include "block_int.h"
#include "block/rbd-name.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/secret.h"
#include "util/thread-pool.h"

/* Client timeouts we set unless the user sets them (seconds): a monitor
 * that is down or a wrong address fails the open instead of hanging. */
#define RBD_DEFAULT_MOUNT_TIMEOUT "20"
#define RBD_DEFAULT_MON_OP_TIMEOUT "20"
/* I/O waits this long for an OSD (a restarted OSD is back in seconds). */
#define RBD_DEFAULT_OSD_OP_TIMEOUT "120"
/* Most snapshots listed. */
#define RBD_MAX_SNAPS 65536
/* Most monitors named with server.N. */
#define RBD_MAX_SERVERS 16

typedef struct BDRVRBDState {
    rados_t cluster;
    rados_ioctx_t io_ctx;
    rbd_image_t image;
    RbdName name;
    uint64_t object_size;
    uint64_t features;
    uint64_t image_size;
    /*
     * While requests are out, an armed timer tells aio_poll() the loop is
     * not idle, so it sleeps until a completion's bottom half wakes it
     * instead of returning at once and spinning (as util/thread-pool.c).
     */
    QEMUTimer *keepalive;
    unsigned in_flight;
    /* Writes past the end grow the image first (a format on top, such as
     * qcow2, writes past its file's end as QEMU lets it on rbd). */
    CoMutex grow_lock;
} BDRVRBDState;

#define RBD_KEEPALIVE_NS (3600LL * 1000000000LL)

/* One request in flight: the coroutine waiting and what librbd returned.
 * ret is written by librbd's thread before the bottom half is scheduled;
 * done and waiting belong to the loop thread. */
typedef struct RBDTask {
    Coroutine *co;
    int64_t ret;
    bool done;
    bool waiting;
} RBDTask;

static const QemuOptDesc rbd_open_opts[] = {
    { "pool", QEMU_OPT_STRING, "Ceph pool" },
    { "namespace", QEMU_OPT_STRING, "Namespace in the pool" },
    { "image", QEMU_OPT_STRING, "Image name" },
    { "snapshot", QEMU_OPT_STRING, "Snapshot name (read-only)" },
    { "conf", QEMU_OPT_STRING, "Ceph configuration file" },
    { "user", QEMU_OPT_STRING, "Ceph client id (without 'client.')" },
    { "auth-client-required", QEMU_OPT_STRING,
      "Authentication methods: cephx, none (separated by ';')" },
    { "key-secret", QEMU_OPT_STRING,
      "id of a secret object holding the cephx key" },
    { "encrypt.format", QEMU_OPT_STRING,
      "Load librbd encryption: luks or luks2" },
    { "encrypt.key-secret", QEMU_OPT_STRING,
      "id of a secret object holding the encryption passphrase" },
    { NULL }
};

/* server.N.host / server.N.port pass through the layer unchecked. */
static const char *const rbd_child_prefixes[] = { "server", NULL };

static const QemuOptDesc rbd_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { "cluster_size", QEMU_OPT_SIZE,
      "RBD object size (power of two, 4 KiB..32 MiB)" },
    { "features", QEMU_OPT_STRING,
      "Image features: a number, or names joined by '+' "
      "(layering+exclusive-lock+object-map+fast-diff+deep-flatten)" },
    { "backing_file", QEMU_OPT_STRING,
      "Snapshot to clone (rbd:pool/image@snap)" },
    { "backing_fmt", QEMU_OPT_STRING, "Format of the snapshot (raw)" },
    { "encrypt.format", QEMU_OPT_STRING,
      "Format the image with librbd encryption: luks or luks2" },
    { "encrypt.key-secret", QEMU_OPT_STRING,
      "id of a secret object holding the encryption passphrase" },
    { "encrypt.cipher-alg", QEMU_OPT_STRING,
      "Cipher: aes-128 or aes-256 (default)" },
    { NULL }
};

/* ------------------------------------------------------------------ */
/* Encryption (librbd's LUKS support)                                 */

/*
 * Format (create) or load (open) librbd encryption on image, as opts'
 * encrypt.* keys say. No encrypt.format: nothing to do.
 */
static int rbd_encryption(rbd_image_t image, QemuOpts *opts, bool format,
                          Error **errp)
{
    const char *fmt = opts ? qemu_opt_get(opts, "encrypt.format") : NULL;
    const char *sid = opts ? qemu_opt_get(opts, "encrypt.key-secret") : NULL;
    const char *alg = format ? qemu_opt_get(opts, "encrypt.cipher-alg") : NULL;
    rbd_encryption_luks1_format_options_t lopts = {
        .alg = RBD_ENCRYPTION_ALGORITHM_AES256,
    };
    rbd_encryption_format_t efmt;
    g_autofree char *pass = NULL;
    size_t len;
    int r;

    if (!fmt) {
        if (sid || alg) {
            error_setg(errp, "rbd: encrypt.* options need encrypt.format");
            return -EINVAL;
        }
        return 0;
    }
    if (!strcmp(fmt, "luks")) {
        efmt = RBD_ENCRYPTION_FORMAT_LUKS1;
    } else if (!strcmp(fmt, "luks2")) {
        efmt = RBD_ENCRYPTION_FORMAT_LUKS2;
    } else {
        error_setg(errp, "rbd: encrypt.format must be luks or luks2, not "
                   "'%s'", fmt);
        return -EINVAL;
    }
    if (alg && !strcmp(alg, "aes-128")) {
        lopts.alg = RBD_ENCRYPTION_ALGORITHM_AES128;
    } else if (alg && strcmp(alg, "aes-256")) {
        error_setg(errp, "rbd: encrypt.cipher-alg must be aes-128 or "
                   "aes-256, not '%s'", alg);
        return -EINVAL;
    }
    if (!sid) {
        error_setg(errp, "rbd: encrypt.format needs encrypt.key-secret");
        return -EINVAL;
    }
    pass = secret_lookup_bytes(sid, &len, errp);
    if (!pass) {
        return -EINVAL;
    }
    lopts.passphrase = pass;
    lopts.passphrase_size = len;
    /* the LUKS2 options struct has the same layout */
    if (format) {
        r = rbd_encryption_format(image, efmt, &lopts, sizeof(lopts));
    } else {
        r = rbd_encryption_load(image, efmt, &lopts, sizeof(lopts));
    }
    explicit_bzero(pass, len);
    if (r == -EPERM && !format) {
        error_setg(errp, "rbd: error loading %s encryption: wrong passphrase "
                   "or not a %s image", fmt, fmt);
    } else if (r < 0) {
        error_setg_errno(errp, -r, "rbd: %s %s encryption",
                         format ? "error formatting" : "error loading", fmt);
    }
    return r;
}

/* Format a new image's encryption; grow it so that the space the LUKS
 * header takes does not come off the size asked for (as QEMU does). */
static int rbd_format_encryption(rados_ioctx_t io_ctx, const char *name,
                                 QemuOpts *opts, Error **errp)
{
    rbd_image_t img;
    uint64_t raw_size, effective;
    int r = rbd_open(io_ctx, name, &img, NULL);

    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error opening the new image");
        return r;
    }
    r = rbd_get_size(img, &raw_size);
    if (r == 0) {
        r = rbd_encryption(img, opts, true, errp);
    }
    if (r == 0 && rbd_get_size(img, &effective) == 0 &&
        effective < raw_size) {
        /* resize counts raw bytes: add what the header took */
        r = rbd_resize(img, raw_size + (raw_size - effective));
        if (r < 0) {
            error_setg_errno(errp, -r, "rbd: error resizing the encrypted "
                             "image");
        }
    }
    rbd_close(img);
    return r;
}

/* ------------------------------------------------------------------ */
/* Completions                                                        */

/* Loop thread: the request is complete; resume its coroutine if it has
 * yielded (it has not when librbd completed it inside the submission). */
static void rbd_finish_bh(void *opaque)
{
    RBDTask *task = opaque;

    task->done = true;
    if (task->waiting) {
        qemu_coroutine_enter(task->co);
    }
}

/*
 * librbd's thread (or, for some requests, the submitting call itself):
 * record the result and hand the rest to the loop. The coroutine's stack
 * holds task, so it must not return before rbd_finish_bh ran.
 */
static void rbd_complete_cb(rbd_completion_t c, void *opaque)
{
    RBDTask *task = opaque;

    task->ret = rbd_aio_get_return_value(c);
    rbd_aio_release(c);
    aio_bh_schedule_oneshot(qemu_get_aio_context(), rbd_finish_bh, task);
}

static void rbd_keepalive_cb(void *opaque)
{
    BDRVRBDState *s = opaque;

    timer_mod_ns(s->keepalive, qemu_clock_get_ns() + RBD_KEEPALIVE_NS);
}

/* Wait for task's completion (the request was submitted with c; r is what
 * the submission returned). */
static int coroutine_fn rbd_co_wait(BDRVRBDState *s, RBDTask *task,
                                    rbd_completion_t c, int r)
{
    if (r < 0) {
        rbd_aio_release(c);
        return r;
    }
    if (s->in_flight++ == 0) {
        rbd_keepalive_cb(s);
    }
    while (!task->done) {
        task->waiting = true;
        qemu_coroutine_yield();
        task->waiting = false;
    }
    if (--s->in_flight == 0) {
        timer_del(s->keepalive);
    }
    return task->ret < 0 ? (int)task->ret : 0;
}

static int rbd_new_completion(RBDTask *task, rbd_completion_t *c)
{
    task->co = qemu_coroutine_self();
    task->ret = 0;
    task->done = false;
    task->waiting = false;
    return rbd_aio_create_completion(task, rbd_complete_cb, c);
}

/* ------------------------------------------------------------------ */
/* Connecting                                                         */

static int rbd_conf_set(rados_t cluster, const char *key, const char *value,
                        Error **errp)
{
    int r = rados_conf_set(cluster, key, value);

    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: invalid conf option %s", key);
    }
    return r;
}

/* Monitors from server.N.host/port, as "host:port,host:port" (g_free). */
static char *rbd_mon_host(QemuOpts *opts, Error **errp)
{
    GString *hosts = g_string_new(NULL);

    for (int i = 0; opts && i < RBD_MAX_SERVERS; i++) {
        g_autofree char *hk = g_strdup_printf("server.%d.host", i);
        g_autofree char *pk = g_strdup_printf("server.%d.port", i);
        const char *host = qemu_opt_get(opts, hk);
        const char *port = qemu_opt_get(opts, pk);

        if (!host) {
            if (port) {
                error_setg(errp, "rbd: %s needs %s", pk, hk);
                g_string_free(hosts, true);
                return NULL;
            }
            break;
        }
        if (hosts->len) {
            g_string_append_c(hosts, ',');
        }
        if (strchr(host, ':')) {
            g_string_append_printf(hosts, "[%s]", host);
        } else {
            g_string_append(hosts, host);
        }
        if (port) {
            g_string_append_printf(hosts, ":%s", port);
        }
    }
    for (size_t i = 0; opts && i < qemu_opts_count(opts); i++) {
        const char *key, *value;
        int idx, n = 0;

        qemu_opts_nth(opts, i, &key, &value);
        if (!g_str_has_prefix(key, "server.")) {
            continue;
        }
        if (sscanf(key, "server.%d.%*[hostpr]%n", &idx, &n) != 1 ||
            key[n] || idx < 0 || idx >= RBD_MAX_SERVERS ||
            (strcmp(key + strlen(key) - 5, ".host") &&
             strcmp(key + strlen(key) - 5, ".port"))) {
            error_setg(errp, "Block protocol 'rbd' doesn't support the "
                       "option '%s'", key);
            g_string_free(hosts, true);
            return NULL;
        }
    }
    if (!hosts->len) {
        g_string_free(hosts, true);
        return g_strdup("");
    }
    return g_string_free(hosts, false);
}

/* The name's fields, with open options (image-opts) taking precedence. */
static int rbd_name_from_opts(const char *filename, QemuOpts *opts,
                              RbdName *n, Error **errp)
{
    static const struct { const char *key; size_t off; } map[] = {
        { "pool", offsetof(RbdName, pool) },
        { "namespace", offsetof(RbdName, ns) },
        { "image", offsetof(RbdName, image) },
        { "snapshot", offsetof(RbdName, snap) },
        { "conf", offsetof(RbdName, conf) },
        { "user", offsetof(RbdName, user) },
    };

    memset(n, 0, sizeof(*n));
    if (filename && *filename) {
        int ret = rbd_parse_name(filename, n, errp);
        if (ret < 0) {
            return ret;
        }
    }
    for (unsigned i = 0; opts && i < ARRAY_SIZE(map); i++) {
        const char *v = qemu_opt_get(opts, map[i].key);
        char **field = (char **)((char *)n + map[i].off);

        if (v) {
            if (strlen(v) > RBD_NAME_MAX) {
                error_setg(errp, "rbd: option %s is too long", map[i].key);
                rbd_name_clear(n);
                return -EINVAL;
            }
            g_free(*field);
            *field = g_strdup(v);
        }
    }
    if (!n->pool || !*n->pool || !n->image || !*n->image) {
        error_setg(errp, "rbd: a pool and an image name are required "
                   "(rbd:pool/image or pool=...,image=...)");
        rbd_name_clear(n);
        return -EINVAL;
    }
    return 0;
}

static bool rbd_user_set(const RbdName *n, const char *key)
{
    for (unsigned i = 0; i < n->nr_opts; i++) {
        if (!strcmp(n->keys[i], key)) {
            return true;
        }
    }
    return false;
}

/* Create the cluster handle from n and opts and connect it. */
static int rbd_connect(const RbdName *n, QemuOpts *opts, int flags,
                       rados_t *cluster, Error **errp)
{
    static const char *const timeouts[][2] = {
        { "client_mount_timeout", RBD_DEFAULT_MOUNT_TIMEOUT },
        { "rados_mon_op_timeout", RBD_DEFAULT_MON_OP_TIMEOUT },
        { "rados_osd_op_timeout", RBD_DEFAULT_OSD_OP_TIMEOUT },
    };
    g_autofree char *mon_host = NULL;
    const char *str;
    int r;

    r = rbd_lib_load(errp);
    if (r < 0) {
        return r;
    }
    r = rados_create(cluster, n->user);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error creating the cluster handle");
        return r;
    }
    /* Our own one-line errors say what failed; librados' messages on
     * stderr would only add noise (a conf file may turn them back on). */
    rados_conf_set(*cluster, "log_to_stderr", "false");
    rados_conf_set(*cluster, "err_to_stderr", "false");
    if (n->conf) {
        r = rados_conf_read_file(*cluster, n->conf);
        if (r < 0) {
            error_setg_errno(errp, -r, "rbd: error reading conf file %s",
                             n->conf);
            goto fail;
        }
    } else {
        /* The default search (CEPH_CONF, /etc/ceph/ceph.conf, ...); none
         * found is not an error. */
        rados_conf_read_file(*cluster, NULL);
    }
    for (unsigned i = 0; i < ARRAY_SIZE(timeouts); i++) {
        if (!rbd_user_set(n, timeouts[i][0])) {
            rados_conf_set(*cluster, timeouts[i][0], timeouts[i][1]);
        }
    }
    /* The cache mode picks librbd's cache, as in QEMU (cache=none: off);
     * an rbd_cache= in the name wins. */
    rados_conf_set(*cluster, "rbd_cache",
                   (flags & BDRV_O_NOCACHE) ? "false" : "true");
    for (unsigned i = 0; i < n->nr_opts; i++) {
        r = rbd_conf_set(*cluster, n->keys[i], n->values[i], errp);
        if (r < 0) {
            goto fail;
        }
    }
    mon_host = rbd_mon_host(opts, errp);
    if (!mon_host) {
        r = -EINVAL;
        goto fail;
    }
    if (*mon_host &&
        (r = rbd_conf_set(*cluster, "mon_host", mon_host, errp)) < 0) {
        goto fail;
    }
    str = opts ? qemu_opt_get(opts, "auth-client-required") : NULL;
    if (str && (r = rbd_conf_set(*cluster, "auth_client_required", str,
                                 errp)) < 0) {
        goto fail;
    }
    str = opts ? qemu_opt_get(opts, "key-secret") : NULL;
    if (str) {
        g_autofree char *key = secret_lookup_base64(str, errp);

        if (!key) {
            r = -EINVAL;
            goto fail;
        }
        r = rbd_conf_set(*cluster, "key", key, errp);
        if (r < 0) {
            goto fail;
        }
    }
    {
        char mons[16] = "";

        /* Without monitor addresses librados would try DNS SRV records
         * and print to stderr; say what is missing instead. */
        if (rados_conf_get(*cluster, "mon_host", mons, sizeof(mons)) == 0 &&
            !mons[0]) {
            error_setg(errp, "rbd: no monitor address: set mon_host in a "
                       "conf file (conf=, CEPH_CONF, /etc/ceph/ceph.conf), "
                       "in the name (:mon_host=) or with server.N.host");
            r = -EINVAL;
            goto fail;
        }
    }
    r = rados_connect(*cluster);
    if (r == -ENOENT) {
        error_setg(errp, "rbd: error connecting to the cluster: no keyring "
                   "or key found for the client's cephx authentication");
        goto fail;
    }
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error connecting to the cluster");
        goto fail;
    }
    return 0;

fail:
    rados_shutdown(*cluster);
    *cluster = NULL;
    return r;
}

static int rbd_open_ioctx(rados_t cluster, const RbdName *n,
                          rados_ioctx_t *io_ctx, Error **errp)
{
    int r = rados_ioctx_create(cluster, n->pool, io_ctx);

    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error opening pool '%s'", n->pool);
        return r;
    }
    rados_ioctx_set_namespace(*io_ctx, n->ns ? n->ns : "");
    return 0;
}

static int rbd_refresh_size(BDRVRBDState *s)
{
    rbd_image_info_t info;
    int r = rbd_stat(s->image, &info, sizeof(info));

    if (r < 0) {
        return r;
    }
    s->image_size = info.size;
    s->object_size = info.obj_size;
    rbd_get_features(s->image, &s->features);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Open / close                                                       */

static void rbd_free_state(BDRVRBDState *s)
{
    if (s->keepalive) {
        timer_del(s->keepalive);
        timer_free(s->keepalive);
        s->keepalive = NULL;
    }
    if (s->image) {
        rbd_close(s->image);
        s->image = NULL;
    }
    if (s->io_ctx) {
        rados_ioctx_destroy(s->io_ctx);
        s->io_ctx = NULL;
    }
    if (s->cluster) {
        rados_shutdown(s->cluster);
        s->cluster = NULL;
    }
    rbd_name_clear(&s->name);
}

static int coroutine_fn rbd_co_open(BlockDriverState *bs, QemuOpts *options,
                                 int flags, Error **errp)
{
    BDRVRBDState *s = bs->opaque;
    int r;

    r = rbd_name_from_opts(bs->filename, options, &s->name, errp);
    if (r < 0) {
        return r;
    }
    if (s->name.snap && (flags & BDRV_O_RDWR)) {
        error_setg(errp, "rbd: snapshot '%s' can only be opened read-only",
                   s->name.snap);
        r = -EACCES;
        goto fail;
    }
    r = rbd_connect(&s->name, options, flags, &s->cluster, errp);
    if (r < 0) {
        goto fail;
    }
    r = rbd_open_ioctx(s->cluster, &s->name, &s->io_ctx, errp);
    if (r < 0) {
        goto fail;
    }
    if (flags & BDRV_O_RDWR) {
        r = rbd_open(s->io_ctx, s->name.image, &s->image, NULL);
    } else {
        r = rbd_open_read_only(s->io_ctx, s->name.image, &s->image,
                               s->name.snap);
    }
    if (r < 0) {
        s->image = NULL;
        if (s->name.snap && r == -ENOENT) {
            error_setg_errno(errp, -r, "rbd: error opening image '%s' at "
                             "snapshot '%s'", s->name.image, s->name.snap);
        } else {
            error_setg_errno(errp, -r, "rbd: error opening image '%s'",
                             s->name.image);
        }
        goto fail;
    }
    r = rbd_encryption(s->image, options, false, errp);
    if (r < 0) {
        goto fail;
    }
    r = rbd_refresh_size(s);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error reading the image's header");
        goto fail;
    }
    s->keepalive = aio_timer_new(qemu_get_aio_context(), rbd_keepalive_cb, s);
    qemu_co_mutex_init(&s->grow_lock);
    return 0;

fail:
    rbd_free_state(s);
    return r;
}

static void coroutine_fn rbd_co_close(BlockDriverState *bs)
{
    rbd_free_state(bs->opaque);
}

static void rbd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVRBDState *s = bs->opaque;

    bs->bl.request_alignment = 1;
    /* librbd splits by object itself; keep single requests bounded. */
    bs->bl.max_transfer = 32 * 1024 * 1024;
    bs->bl.pdiscard_alignment = s->object_size ? s->object_size : 0;
    bs->bl.pwrite_zeroes_alignment = 512;
}

static int64_t rbd_getlength(BlockDriverState *bs)
{
    BDRVRBDState *s = bs->opaque;

    return s->image_size;
}

/* ------------------------------------------------------------------ */
/* Requests                                                           */

typedef enum {
    RBD_OP_READ, RBD_OP_WRITE, RBD_OP_DISCARD, RBD_OP_ZERO, RBD_OP_FLUSH,
} RBDOp;

static int coroutine_fn rbd_co_rw(BlockDriverState *bs, RBDOp op,
                                  int64_t offset, int64_t bytes,
                                  QEMUIOVector *qiov, size_t qiov_offset,
                                  int zero_flags)
{
    BDRVRBDState *s = bs->opaque;
    RBDTask task;
    rbd_completion_t c;
    QEMUIOVector slice;
    int r;

    r = rbd_new_completion(&task, &c);
    if (r < 0) {
        return r;
    }
    if (qiov) {
        qemu_iovec_init_slice(&slice, qiov, qiov_offset, bytes);
    }
    switch (op) {
    case RBD_OP_READ:
        r = rbd_aio_readv(s->image, slice.iov, slice.niov, offset, c);
        break;
    case RBD_OP_WRITE:
        r = rbd_aio_writev(s->image, slice.iov, slice.niov, offset, c);
        break;
    case RBD_OP_DISCARD:
        r = rbd_aio_discard(s->image, offset, bytes, c);
        break;
    case RBD_OP_ZERO:
        r = rbd_aio_write_zeroes(s->image, offset, bytes, c, zero_flags, 0);
        break;
    case RBD_OP_FLUSH:
        r = rbd_aio_flush(s->image, c);
        break;
    }
    r = rbd_co_wait(s, &task, c, r);
    if (qiov) {
        qemu_iovec_destroy(&slice);
    }
    if (op == RBD_OP_READ && r >= 0 && task.ret < bytes) {
        /* A short read (past the end of a shrunk image) reads zeroes. */
        qemu_iovec_memset(qiov, qiov_offset + task.ret, 0, bytes - task.ret);
    }
    return r < 0 ? r : 0;
}

static int coroutine_fn rbd_co_preadv(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    return rbd_co_rw(bs, RBD_OP_READ, offset, bytes, qiov, qiov_offset, 0);
}

static int coroutine_fn rbd_co_grow(BlockDriverState *bs, uint64_t end);

static int coroutine_fn rbd_co_pwritev(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    int r = rbd_co_grow(bs, offset + bytes);

    if (r < 0) {
        return r;
    }
    return rbd_co_rw(bs, RBD_OP_WRITE, offset, bytes, qiov, qiov_offset, 0);
}

/* Without MAY_UNMAP the range stays allocated (thick-provisioned zeroes). */
static int coroutine_fn rbd_co_pwrite_zeroes(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    int zflags = (flags & BDRV_REQ_MAY_UNMAP) ?
                 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
    int r = rbd_co_grow(bs, offset + bytes);

    if (r < 0) {
        return r;
    }
    return rbd_co_rw(bs, RBD_OP_ZERO, offset, bytes, NULL, 0, zflags);
}

static int coroutine_fn rbd_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes)
{
    return rbd_co_rw(bs, RBD_OP_DISCARD, offset, bytes, NULL, 0, 0);
}

static int coroutine_fn rbd_co_flush(BlockDriverState *bs)
{
    return rbd_co_rw(bs, RBD_OP_FLUSH, 0, 0, NULL, 0, 0);
}

/* State of one rbd_diff_iterate2 call: the first allocated extent at or
 * after offset. */
typedef struct RBDDiff {
    rbd_image_t image;
    uint64_t offset, bytes;
    uint64_t start, len;
    bool found;
    bool whole_object;
} RBDDiff;

#define RBD_DIFF_STOP (-9000)

static int rbd_diff_cb(uint64_t offs, size_t len, int exists, void *opaque)
{
    RBDDiff *d = opaque;

    if (!exists || offs + len <= d->offset) {
        return 0;
    }
    if (d->found) {
        if (offs == d->start + d->len) {    /* adjacent: extend */
            d->len += len;
            return 0;
        }
        return RBD_DIFF_STOP;
    }
    d->found = true;
    d->start = MAX(offs, d->offset);
    d->len = offs + len - d->start;
    return 0;
}

/* Thread pool: rbd_diff_iterate2 is synchronous (it may wait for the
 * object map to load), so it runs off the loop thread. */
static int rbd_diff_worker(void *opaque)
{
    RBDDiff *d = opaque;

    return rbd_diff_iterate2(d->image, NULL, d->offset, d->bytes, true,
                             d->whole_object, rbd_diff_cb, d);
}

/*
 * With fast-diff (a valid object map) ask which objects exist; without it
 * the answer would cost a read of every object, so everything is data, as
 * QEMU does. Unallocated ranges of an image read as zeroes (a clone's
 * parent data counts as allocated: include_parent).
 */
static int coroutine_fn rbd_co_block_status(BlockDriverState *bs,
                                            bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum,
                                            int64_t *map,
                                            BlockDriverState **file)
{
    BDRVRBDState *s = bs->opaque;
    RBDDiff d = { .offset = offset };
    uint64_t flags = 0;
    int r;

    *map = offset;
    *file = bs;
    *pnum = bytes;
    if (!(s->features & RBD_FEATURE_FAST_DIFF) ||
        rbd_get_flags(s->image, &flags) < 0 ||
        (flags & RBD_FLAG_FAST_DIFF_INVALID)) {
        if (!want_zero) {
            return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
        }
        d.whole_object = false;
    } else {
        d.whole_object = true;
    }
    d.image = s->image;
    d.bytes = bytes;
    r = thread_pool_submit_co(rbd_diff_worker, &d);
    if (r < 0 && r != RBD_DIFF_STOP) {
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    if (!d.found || d.start >= (uint64_t)(offset + bytes)) {
        return BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
    }
    if (d.start > (uint64_t)offset) {
        *pnum = d.start - offset;
        return BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
    }
    *pnum = MIN(d.len, (uint64_t)bytes);
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
}

/* A synchronous librbd call, run in the thread pool (DESIGN.md decision
 * 3: blocking calls stay off the loop thread). */
typedef enum {
    RBD_SYNC_RESIZE, RBD_SYNC_SNAP_CREATE, RBD_SYNC_SNAP_ROLLBACK,
    RBD_SYNC_SNAP_REMOVE,
} RBDSyncOp;

typedef struct RBDSync {
    RBDSyncOp op;
    rbd_image_t image;
    const char *name;
    uint64_t size;
} RBDSync;

static int rbd_sync_worker(void *opaque)
{
    RBDSync *a = opaque;

    switch (a->op) {
    case RBD_SYNC_RESIZE:
        return rbd_resize(a->image, a->size);
    case RBD_SYNC_SNAP_CREATE:
        return rbd_snap_create(a->image, a->name);
    case RBD_SYNC_SNAP_ROLLBACK:
        return rbd_snap_rollback(a->image, a->name);
    case RBD_SYNC_SNAP_REMOVE:
        return rbd_snap_remove(a->image, a->name);
    }
    return -EINVAL;
}

static int coroutine_fn rbd_co_sync(RBDSyncOp op, rbd_image_t image,
                                    const char *name, uint64_t size)
{
    RBDSync a = { .op = op, .image = image, .name = name, .size = size };

    return thread_pool_submit_co(rbd_sync_worker, &a);
}

/* Grow the image to at least end bytes (never shrinks; one at a time). */
static int coroutine_fn rbd_co_grow(BlockDriverState *bs, uint64_t end)
{
    BDRVRBDState *s = bs->opaque;
    int r = 0;

    if (end <= s->image_size) {
        return 0;
    }
    qemu_co_mutex_lock(&s->grow_lock);
    if (end > s->image_size) {
        r = rbd_co_sync(RBD_SYNC_RESIZE, s->image, NULL, end);
        if (r == 0) {
            s->image_size = end;
        }
    }
    qemu_co_mutex_unlock(&s->grow_lock);
    return r;
}

static int coroutine_fn rbd_co_truncate(BlockDriverState *bs, int64_t offset,
                                        bool exact, PreallocMode prealloc,
                                        Error **errp)
{
    BDRVRBDState *s = bs->opaque;
    int r;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   qemu_prealloc_name(prealloc));
        return -ENOTSUP;
    }
    r = rbd_co_sync(RBD_SYNC_RESIZE, s->image, NULL, offset);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: failed to resize the image");
        return r;
    }
    s->image_size = offset;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Info                                                               */

static int rbd_drv_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVRBDState *s = bs->opaque;

    bdi->cluster_size = (int)MIN(s->object_size, (uint64_t)INT_MAX);
    return 0;
}

static const struct { uint64_t bit; const char *name; } rbd_feature_names[] = {
    { RBD_FEATURE_LAYERING, "layering" },
    { RBD_FEATURE_STRIPINGV2, "striping" },
    { RBD_FEATURE_EXCLUSIVE_LOCK, "exclusive-lock" },
    { RBD_FEATURE_OBJECT_MAP, "object-map" },
    { RBD_FEATURE_FAST_DIFF, "fast-diff" },
    { RBD_FEATURE_DEEP_FLATTEN, "deep-flatten" },
    { RBD_FEATURE_JOURNALING, "journaling" },
    { RBD_FEATURE_DATA_POOL, "data-pool" },
    { RBD_FEATURE_OPERATIONS, "operations" },
    { RBD_FEATURE_MIGRATING, "migrating" },
    { RBD_FEATURE_NON_PRIMARY, "non-primary" },
};

static char *rbd_features_str(uint64_t features)
{
    GString *str = g_string_new(NULL);

    for (unsigned i = 0; i < ARRAY_SIZE(rbd_feature_names); i++) {
        if (features & rbd_feature_names[i].bit) {
            g_string_append_printf(str, "%s%s", str->len ? ", " : "",
                                   rbd_feature_names[i].name);
            features &= ~rbd_feature_names[i].bit;
        }
    }
    if (features) {
        g_string_append_printf(str, "%s0x%" PRIx64, str->len ? ", " : "",
                               features);
    }
    return g_string_free(str, false);
}

static ImageInfoSpecific *rbd_get_specific_info(BlockDriverState *bs,
                                                Error **errp)
{
    BDRVRBDState *s = bs->opaque;
    ImageInfoSpecific *info = image_info_specific_new("rbd");
    g_autofree char *features = rbd_features_str(s->features);

    image_info_add_int(info, "object-size", s->object_size);
    image_info_add_str(info, "features", features);
    return info;
}

/* A new image reads as zeroes; a clone reads as its parent. */
static bool rbd_has_zero_init(BlockDriverState *bs)
{
    BDRVRBDState *s = bs->opaque;
    rbd_linked_image_spec_t parent;
    rbd_snap_spec_t snap;

    if (rbd_get_parent(s->image, &parent, &snap) < 0) {
        return true;        /* -ENOENT: no parent */
    }
    rbd_linked_image_spec_cleanup(&parent);
    rbd_snap_spec_cleanup(&snap);
    return false;
}

/* ------------------------------------------------------------------ */
/* Create                                                             */

static int rbd_parse_features(const char *str, uint64_t *features,
                              Error **errp)
{
    g_auto(GStrv) parts = NULL;
    char *end;

    *features = 0;
    errno = 0;
    *features = strtoull(str, &end, 0);
    if (*str && !*end && !errno) {
        return 0;
    }
    *features = 0;
    parts = g_strsplit_set(str, "+,", -1);
    for (char **p = parts; *p; p++) {
        bool known = false;

        for (unsigned i = 0; i < ARRAY_SIZE(rbd_feature_names); i++) {
            if (!strcmp(*p, rbd_feature_names[i].name)) {
                *features |= rbd_feature_names[i].bit;
                known = true;
            }
        }
        if (!known) {
            error_setg(errp, "rbd: unknown image feature '%s'", *p);
            return -EINVAL;
        }
    }
    return 0;
}

/* Clone: backing names rbd:pool[/ns]/image@snap on the target's cluster. */
static int rbd_create_clone(rados_t cluster, rados_ioctx_t io_ctx,
                            const RbdName *n, const char *backing,
                            rbd_image_options_t ropts, Error **errp)
{
    RbdName pn;
    rados_ioctx_t pio = NULL;
    int r;

    r = rbd_parse_name(backing, &pn, errp);
    if (r < 0) {
        return r;
    }
    if (!pn.snap) {
        error_setg(errp, "rbd: the backing file of an rbd clone must be a "
                   "snapshot (rbd:pool/image@snap)");
        r = -EINVAL;
        goto out;
    }
    if (pn.conf || pn.user || pn.nr_opts) {
        error_setg(errp, "rbd: the backing snapshot must be on the same "
                   "cluster (no options in its name)");
        r = -EINVAL;
        goto out;
    }
    r = rbd_open_ioctx(cluster, &pn, &pio, errp);
    if (r < 0) {
        goto out;
    }
    r = rbd_clone3(pio, pn.image, pn.snap, io_ctx, n->image, ropts);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error cloning '%s'", backing);
    }
out:
    if (pio) {
        rados_ioctx_destroy(pio);
    }
    rbd_name_clear(&pn);
    return r;
}

static int coroutine_fn rbd_co_create(const char *filename, QemuOpts *opts,
                                   Error **errp)
{
    uint64_t size = qemu_opt_get_size(opts, "size", 0);
    uint64_t obj_size = qemu_opt_get_size(opts, "cluster_size", 0);
    const char *backing = qemu_opt_get(opts, "backing_file");
    const char *fmt = qemu_opt_get(opts, "backing_fmt");
    const char *str = qemu_opt_get(opts, "features");
    rbd_image_options_t ropts;
    rados_t cluster = NULL;
    rados_ioctx_t io_ctx = NULL;
    uint64_t features;
    RbdName n;
    int r;

    r = rbd_parse_name(filename, &n, errp);
    if (r < 0) {
        return r;
    }
    r = rbd_lib_load(errp);
    if (r < 0) {
        rbd_name_clear(&n);
        return r;
    }
    rbd_image_options_create(&ropts);
    if (n.snap) {
        error_setg(errp, "rbd: cannot create a snapshot with 'qemu-img "
                   "create' (use 'qemu-img snapshot -c')");
        r = -EINVAL;
        goto out;
    }
    if (fmt && strcmp(fmt, "raw")) {
        error_setg(errp, "rbd: a clone's backing format must be raw, not "
                   "'%s'", fmt);
        r = -EINVAL;
        goto out;
    }
    if (obj_size) {
        if (obj_size & (obj_size - 1) || obj_size < 4096 ||
            obj_size > 32 * 1024 * 1024) {
            error_setg(errp, "rbd: cluster_size must be a power of two "
                       "between 4 KiB and 32 MiB");
            r = -EINVAL;
            goto out;
        }
        rbd_image_options_set_uint64(ropts, RBD_IMAGE_OPTION_ORDER,
                                     __builtin_ctzll(obj_size));
    }
    if (str) {
        r = rbd_parse_features(str, &features, errp);
        if (r < 0) {
            goto out;
        }
        rbd_image_options_set_uint64(ropts, RBD_IMAGE_OPTION_FEATURES,
                                     features);
    }
    r = rbd_connect(&n, NULL, BDRV_O_NOCACHE, &cluster, errp);
    if (r < 0) {
        goto out;
    }
    r = rbd_open_ioctx(cluster, &n, &io_ctx, errp);
    if (r < 0) {
        goto out;
    }
    if (backing) {
        r = rbd_create_clone(cluster, io_ctx, &n, backing, ropts, errp);
        if (r == 0 && size) {
            rbd_image_t img;

            r = rbd_open(io_ctx, n.image, &img, NULL);
            if (r == 0) {
                r = rbd_resize(img, size);
                rbd_close(img);
            }
            if (r < 0) {
                error_setg_errno(errp, -r, "rbd: error resizing the clone");
            }
        }
        goto out;
    }
    r = rbd_create4(io_ctx, n.image, size, ropts);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: error creating image '%s'", n.image);
    } else if (qemu_opt_get(opts, "encrypt.format")) {
        r = rbd_format_encryption(io_ctx, n.image, opts, errp);
        if (r < 0) {
            rbd_remove(io_ctx, n.image);
        }
    }
out:
    rbd_image_options_destroy(ropts);
    if (io_ctx) {
        rados_ioctx_destroy(io_ctx);
    }
    if (cluster) {
        rados_shutdown(cluster);
    }
    rbd_name_clear(&n);
    return r;
}

/* ------------------------------------------------------------------ */
/* Snapshots                                                          */

static int coroutine_fn rbd_co_snapshot_create(BlockDriverState *bs,
                                            QEMUSnapshotInfo *sn,
                                            Error **errp)
{
    BDRVRBDState *s = bs->opaque;
    int r;

    if (sn->name[0] == '\0') {
        error_setg(errp, "rbd: a snapshot needs a name");
        return -EINVAL;
    }
    if (sn->id_str[0] && strcmp(sn->id_str, sn->name)) {
        error_setg(errp, "rbd: snapshot ids are names");
        return -EINVAL;
    }
    r = rbd_co_sync(RBD_SYNC_SNAP_CREATE, s->image, sn->name, 0);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: failed to create snapshot '%s'",
                         sn->name);
    }
    return r;
}

static int coroutine_fn rbd_co_snapshot_goto(BlockDriverState *bs,
                                          const char *snapshot_id,
                                          Error **errp)
{
    BDRVRBDState *s = bs->opaque;
    int r = rbd_co_sync(RBD_SYNC_SNAP_ROLLBACK, s->image, snapshot_id, 0);

    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: failed to roll back to snapshot "
                         "'%s'", snapshot_id);
        return r;
    }
    return rbd_refresh_size(s);
}

static int coroutine_fn rbd_co_snapshot_delete(BlockDriverState *bs,
                                            const char *snapshot_id,
                                            const char *name, Error **errp)
{
    BDRVRBDState *s = bs->opaque;
    const char *snap = name ? name : snapshot_id;
    int r;

    if (snapshot_id && name && strcmp(snapshot_id, name)) {
        error_setg(errp, "rbd: snapshot id '%s' and name '%s' differ",
                   snapshot_id, name);
        return -EINVAL;
    }
    r = rbd_co_sync(RBD_SYNC_SNAP_REMOVE, s->image, snap, 0);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: failed to delete snapshot '%s'",
                         snap);
    }
    return r;
}

static int coroutine_fn rbd_co_snapshot_list(BlockDriverState *bs,
                                          QEMUSnapshotInfo **psn_info)
{
    BDRVRBDState *s = bs->opaque;
    rbd_snap_info_t *snaps = NULL;
    QEMUSnapshotInfo *sn;
    int max = 16, n;

    for (;;) {
        snaps = g_renew(rbd_snap_info_t, snaps, max);
        n = rbd_snap_list(s->image, snaps, &max);
        if (n != -ERANGE || max > RBD_MAX_SNAPS) {
            break;
        }
    }
    if (n < 0) {
        g_free(snaps);
        return n;
    }
    sn = g_new0(QEMUSnapshotInfo, MAX(n, 1));
    for (int i = 0; i < n; i++) {
        struct timespec ts = { 0 };

        g_strlcpy(sn[i].id_str, snaps[i].name, sizeof(sn[i].id_str));
        g_strlcpy(sn[i].name, snaps[i].name, sizeof(sn[i].name));
        sn[i].vm_state_size = snaps[i].size;
        if (rbd_snap_get_timestamp(s->image, snaps[i].id, &ts) == 0) {
            sn[i].date_sec = ts.tv_sec;
            sn[i].date_nsec = ts.tv_nsec;
        }
        sn[i].icount = -1ULL;
    }
    rbd_snap_list_end(snaps);
    g_free(snaps);
    *psn_info = sn;
    return n;
}

/* ------------------------------------------------------------------ */
/* Names from image headers                                           */

static bool rbd_header_name_config(const char *name, char **key)
{
    RbdName n;
    const char *what;
    bool ret;

    if (rbd_parse_name(name, &n, NULL) < 0) {
        return false;       /* cannot be opened anyway */
    }
    ret = rbd_name_has_config(&n, &what);
    if (ret) {
        *key = g_strdup(what);
    }
    rbd_name_clear(&n);
    return ret;
}

/* Open options that say how to reach or authenticate to a cluster (and
 * encrypt.key-secret, which names a secret of the user's). */
static const char *const rbd_header_forbidden_opts[] = {
    "conf", "user", "key-secret", "auth-client-required", "server",
    "encrypt", NULL
};

/* ------------------------------------------------------------------ */

static BlockDriver bdrv_rbd = {
    .format_name            = "rbd",
    .protocol_name          = "rbd",
    .instance_size          = sizeof(BDRVRBDState),
    .create_opts            = rbd_create_opts,
    .open_opts              = rbd_open_opts,
    .child_prefixes         = rbd_child_prefixes,
    .filename_optional      = true,
    .header_name_config     = rbd_header_name_config,
    .header_forbidden_opts  = rbd_header_forbidden_opts,

    .bdrv_open              = rbd_co_open,
    .bdrv_close             = rbd_co_close,
    .bdrv_refresh_limits    = rbd_refresh_limits,
    .bdrv_create            = rbd_co_create,

    .bdrv_co_preadv         = rbd_co_preadv,
    .bdrv_co_pwritev        = rbd_co_pwritev,
    .bdrv_co_pwrite_zeroes  = rbd_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = rbd_co_pdiscard,
    .bdrv_co_flush_to_disk  = rbd_co_flush,
    .bdrv_co_block_status   = rbd_co_block_status,
    .bdrv_co_truncate       = rbd_co_truncate,
    .bdrv_getlength         = rbd_getlength,

    .bdrv_get_info          = rbd_drv_get_info,
    .bdrv_get_specific_info = rbd_get_specific_info,
    .bdrv_has_zero_init     = rbd_has_zero_init,

    .bdrv_snapshot_create   = rbd_co_snapshot_create,
    .bdrv_snapshot_goto     = rbd_co_snapshot_goto,
    .bdrv_snapshot_delete   = rbd_co_snapshot_delete,
    .bdrv_snapshot_list     = rbd_co_snapshot_list,

    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP,
};

BLOCK_DRIVER_REGISTER(bdrv_rbd)
