/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Block layer graph management: the driver registry, format probing, opening
 * and closing nodes with their protocol and backing children, image creation,
 * node properties, and the synchronous/asynchronous wrappers for the tools.
 */
#include "block_int.h"
#include "util/aio.h"
#include "util/cutils.h"
#include "util/json-parse.h"

#define BACKING_CHAIN_MAX 64

static GPtrArray *bdrv_drivers;

/* ---- registry ---- */

static bool bdrv_drivers_sorted;

/* Called by constructors, before main. */
void bdrv_register(BlockDriver *drv)
{
    if (!bdrv_drivers) {
        bdrv_drivers = g_ptr_array_new();
    }
    g_ptr_array_add(bdrv_drivers, drv);
    bdrv_drivers_sorted = false;
}

static gint bdrv_driver_cmp(gconstpointer a, gconstpointer b)
{
    const BlockDriver *da = *(BlockDriver * const *)a;
    const BlockDriver *db = *(BlockDriver * const *)b;
    return strcmp(da->format_name, db->format_name);
}

/* Sort by name once, so lookups and probe ties do not depend on link order. */
void bdrv_init(void)
{
    if (!bdrv_drivers) {
        bdrv_drivers = g_ptr_array_new();
    }
    if (!bdrv_drivers_sorted) {
        g_ptr_array_sort(bdrv_drivers, bdrv_driver_cmp);
        bdrv_drivers_sorted = true;
    }
}

BlockDriver *bdrv_find_format(const char *format_name)
{
    bdrv_init();
    for (guint i = 0; i < bdrv_drivers->len; i++) {
        BlockDriver *drv = g_ptr_array_index(bdrv_drivers, i);
        if (!strcmp(drv->format_name, format_name)) {
            return drv;
        }
    }
    return NULL;
}

/* A "proto:" prefix is a colon that comes before any slash. */
static bool path_has_protocol(const char *path, size_t *len)
{
    const char *colon = strchr(path, ':');
    const char *slash = strchr(path, '/');

    if (!colon || (slash && slash < colon) || colon == path) {
        return false;
    }
    *len = colon - path;
    return true;
}

/*
 * A name without a prefix: the protocol whose bdrv_probe_device likes it
 * best (host_device for /dev/sda), else "file".
 */
static BlockDriver *bdrv_find_local_protocol(const char *filename)
{
    BlockDriver *best = NULL;
    int best_score = 0;

    for (guint i = 0; i < bdrv_drivers->len; i++) {
        BlockDriver *drv = g_ptr_array_index(bdrv_drivers, i);

        if (drv->bdrv_probe_device) {
            int score = drv->bdrv_probe_device(filename);
            if (score > best_score) {
                best_score = score;
                best = drv;
            }
        }
    }
    return best ? best : bdrv_find_format("file");
}

BlockDriver *bdrv_find_protocol(const char *filename, Error **errp)
{
    size_t len;

    bdrv_init();
    if (!path_has_protocol(filename, &len)) {
        return bdrv_find_local_protocol(filename);
    }
    /* "sheepdog+unix://" style names select the base protocol. */
    size_t base_len = strcspn(filename, "+:");
    for (guint i = 0; i < bdrv_drivers->len; i++) {
        BlockDriver *drv = g_ptr_array_index(bdrv_drivers, i);
        if (drv->protocol_name &&
            strlen(drv->protocol_name) == MIN(len, base_len) &&
            !strncmp(drv->protocol_name, filename, MIN(len, base_len))) {
            return drv;
        }
    }
    error_setg(errp, "Unknown protocol '%.*s'", (int)len, filename);
    return NULL;
}

static gint bdrv_name_cmp(gconstpointer a, gconstpointer b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void bdrv_iterate_format(void (*it)(void *opaque, const char *name),
                         void *opaque)
{
    bdrv_init();
    GPtrArray *names = g_ptr_array_new();
    for (guint i = 0; i < bdrv_drivers->len; i++) {
        BlockDriver *drv = g_ptr_array_index(bdrv_drivers, i);
        g_ptr_array_add(names, (gpointer)drv->format_name);
    }
    g_ptr_array_sort(names, bdrv_name_cmp);
    for (guint i = 0; i < names->len; i++) {
        it(opaque, g_ptr_array_index(names, i));
    }
    g_ptr_array_free(names, TRUE);
}

const char *bdrv_driver_name(const BlockDriver *drv)
{
    return drv->format_name;
}

const QemuOptDesc *bdrv_driver_create_opts(const BlockDriver *drv)
{
    return drv->create_opts;
}

const QemuOptDesc *bdrv_driver_amend_opts(const BlockDriver *drv)
{
    return drv->bdrv_amend_options ? drv->amend_opts : NULL;
}

const QemuOptDesc *bdrv_protocol_create_opts(const char *filename)
{
    BlockDriver *proto = bdrv_find_protocol(filename, NULL);
    return proto ? proto->create_opts : NULL;
}

bool bdrv_driver_supports_backing(const BlockDriver *drv)
{
    return drv->supports_backing;
}

bool bdrv_driver_can_compress(const BlockDriver *drv)
{
    return drv->supported_write_flags & BDRV_REQ_WRITE_COMPRESSED;
}

BlockDriver *bdrv_probe_all(const uint8_t *buf, int buf_size,
                            const char *filename, int *score)
{
    BlockDriver *best = NULL;
    int best_score = 0;

    bdrv_init();
    for (guint i = 0; i < bdrv_drivers->len; i++) {
        BlockDriver *drv = g_ptr_array_index(bdrv_drivers, i);
        if (drv->bdrv_probe) {
            int s = drv->bdrv_probe(buf, buf_size, filename);
            if (s > best_score) {
                best_score = s;
                best = drv;
            }
        }
    }
    if (score) {
        *score = best_score;
    }
    return best;
}

int bdrv_parse_cache_mode(const char *mode, int *flags, bool *writethrough)
{
    *flags &= ~(BDRV_O_NOCACHE | BDRV_O_NO_FLUSH);
    if (!strcmp(mode, "off") || !strcmp(mode, "none")) {
        *flags |= BDRV_O_NOCACHE;
        *writethrough = false;
    } else if (!strcmp(mode, "directsync")) {
        *flags |= BDRV_O_NOCACHE;
        *writethrough = true;
    } else if (!strcmp(mode, "writeback")) {
        *writethrough = false;
    } else if (!strcmp(mode, "unsafe")) {
        *flags |= BDRV_O_NO_FLUSH;
        *writethrough = false;
    } else if (!strcmp(mode, "writethrough")) {
        *writethrough = true;
    } else {
        return -1;
    }
    return 0;
}

int bdrv_parse_aio(const char *mode, int *flags)
{
    if (!strcmp(mode, "native")) {
        *flags |= BDRV_O_NATIVE_AIO;
    } else if (!strcmp(mode, "threads")) {
        *flags &= ~BDRV_O_NATIVE_AIO;
    } else {
        return -1;
    }
    return 0;
}

int qemu_prealloc_parse(const char *str, PreallocMode *mode)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    for (unsigned i = 0; i < ARRAY_SIZE(names); i++) {
        if (!strcmp(str, names[i])) {
            *mode = i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *qemu_prealloc_name(PreallocMode mode)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    return mode < ARRAY_SIZE(names) ? names[mode] : "?";
}

/* ---- format-specific info ---- */

ImageInfoSpecific *image_info_specific_new(const char *type)
{
    ImageInfoSpecific *info = g_new0(ImageInfoSpecific, 1);
    info->type = g_strdup(type);
    info->items = g_ptr_array_new();
    return info;
}

static InfoItem *image_info_add(ImageInfoSpecific *info, const char *key,
                                InfoItemType type)
{
    InfoItem *item = g_new0(InfoItem, 1);
    item->key = g_strdup(key);
    item->type = type;
    g_ptr_array_add(info->items, item);
    return item;
}

void image_info_add_str(ImageInfoSpecific *info, const char *key,
                        const char *value)
{
    image_info_add(info, key, INFO_ITEM_STRING)->str = g_strdup(value);
}

void image_info_add_int(ImageInfoSpecific *info, const char *key, int64_t v)
{
    image_info_add(info, key, INFO_ITEM_INT)->num = v;
}

void image_info_add_bool(ImageInfoSpecific *info, const char *key, bool v)
{
    image_info_add(info, key, INFO_ITEM_BOOL)->flag = v;
}

void image_info_specific_free(ImageInfoSpecific *info)
{
    if (!info) {
        return;
    }
    for (guint i = 0; i < info->items->len; i++) {
        InfoItem *item = g_ptr_array_index(info->items, i);
        g_free(item->key);
        g_free(item->str);
        g_free(item);
    }
    g_ptr_array_free(info->items, TRUE);
    g_free(info->type);
    g_free(info);
}

/* ---- running coroutines from synchronous code ---- */

typedef struct RunCo {
    CoroutineEntry *fn;
    void *opaque;
    bool done;
} RunCo;

static void coroutine_fn bdrv_run_co_entry(void *opaque)
{
    RunCo *rc = opaque;
    rc->fn(rc->opaque);
    rc->done = true;
}

void bdrv_run_co(CoroutineEntry *fn, void *opaque)
{
    if (qemu_in_coroutine()) {
        fn(opaque);
        return;
    }
    RunCo rc = { .fn = fn, .opaque = opaque };
    Coroutine *co = qemu_coroutine_create(bdrv_run_co_entry, &rc);
    qemu_coroutine_enter(co);
    AIO_WAIT_WHILE(!rc.done);
}

/* ---- opening ---- */

static BlockDriverState *bdrv_new(BlockDriver *drv, const char *filename,
                                  int flags)
{
    BlockDriverState *bs = g_new0(BlockDriverState, 1);
    bs->drv = drv;
    bs->refcnt = 1;
    bs->total_bytes = -1;
    bs->enable_write_cache = true;
    bs->open_flags = flags;
    bs->read_only = !(flags & BDRV_O_RDWR);
    bs->opaque = g_malloc0(MAX(drv->instance_size, 1));
    bs->bl.request_alignment = 1;
    bs->bl.min_mem_alignment = 1;
    bs->shared_perm = BLK_PERM_ALL;
    bs->user_shared = BLK_PERM_ALL;
    pstrcpy(bs->filename, sizeof(bs->filename), filename ? filename : "");
    qemu_co_queue_init(&bs->flush_queue);
    return bs;
}

static void bdrv_free(BlockDriverState *bs)
{
    if (bs->options) {
        qemu_opts_del(bs->options);
    }
    g_free(bs->opaque);
    g_free(bs);
}

int bdrv_refresh_total_bytes(BlockDriverState *bs)
{
    bs->total_bytes = bdrv_getlength(bs);
    return bs->total_bytes < 0 ? (int)bs->total_bytes : 0;
}

static void bdrv_refresh_limits(BlockDriverState *bs, Error **errp)
{
    if (bs->file) {
        bs->bl.min_mem_alignment = bs->file->bl.min_mem_alignment;
        if (bs->drv->is_filter) {
            bs->bl = bs->file->bl;
        }
    }
    if (bs->drv->bdrv_refresh_limits) {
        bs->drv->bdrv_refresh_limits(bs, errp);
    }
    assert(bs->bl.request_alignment &&
           !(bs->bl.request_alignment & (bs->bl.request_alignment - 1)));
}

/*
 * Does key belong to a child the driver opens itself ("image.driver" for
 * blkdebug's image)? Such keys are the driver's to pass on.
 */
static bool bdrv_is_child_key(const BlockDriver *drv, const char *key)
{
    for (const char *const *p = drv->child_prefixes; p && *p; p++) {
        size_t n = strlen(*p);

        if (!strncmp(key, *p, n) && key[n] == '.') {
            return true;
        }
    }
    return false;
}

/* Check the node's options (generic ones taken out) against its driver. */
static int bdrv_validate_open_opts(BlockDriver *drv, QemuOpts *opts,
                                   Error **errp)
{
    const QemuOptDesc *descs[2] = { drv->open_opts, NULL };
    static const QemuOptDesc none[] = { { NULL } };
    QemuOpts *own = qemu_opts_new();
    int ret = 0;

    if (!drv->open_opts) {
        descs[0] = none;
    }
    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        bool known = false;

        qemu_opts_nth(opts, i, &name, &value);
        if (bdrv_is_child_key(drv, name)) {
            continue;
        }
        for (const QemuOptDesc *d = descs[0]; d->name; d++) {
            known |= !strcmp(d->name, name);
        }
        if (!known) {
            if (drv->protocol_name) {
                error_setg(errp, "Block protocol '%s' doesn't support the "
                           "option '%s'", drv->format_name, name);
            } else {
                error_setg(errp, "Block format '%s' does not support the "
                           "option '%s'", drv->format_name, name);
            }
            ret = -EINVAL;
            break;
        }
        qemu_opt_set(own, name, value);
    }
    if (ret == 0) {
        ret = qemu_opts_validate(own, descs, errp);
    }
    qemu_opts_del(own);
    return ret;
}

typedef struct OpenArgs {
    const char *filename;       /* as the user gave it ("json:{...}" too) */
    const char *fmt;            /* -f; a "driver" option overrides it */
    QemuOpts *options;          /* borrowed; NULL: none */
    /* In: the open flags. Out: with the node's generic options applied
     * (force-share=on, read-only=on), for the user's permissions. */
    int flags;
    /* No driver named: probe a format over the protocol node (false: the
     * protocol node alone). */
    bool allow_probe;
    int depth;
    BlockDriverState *result;
    Error *err;
} OpenArgs;

static BlockDriverState *coroutine_fn
bdrv_co_open_node(BlockDriver *drv, const char *filename, QemuOpts *opts,
                  int flags, BlockDriverState *file, Error **errp)
{
    BlockDriverState *bs = bdrv_new(drv, filename, flags);
    int ret;

    bs->file = file;
    ret = bdrv_validate_open_opts(drv, opts, errp);
    if (ret < 0) {
        goto fail;
    }
    if (!drv->bdrv_open) {
        error_setg(errp, "Driver '%s' cannot open images", drv->format_name);
        goto fail;
    }
    if (!*bs->filename && !drv->filename_optional) {
        error_setg(errp, "The '%s' block driver requires a file name",
                   drv->format_name);
        goto fail;
    }
    ret = drv->bdrv_open(bs, opts, flags, errp);
    if (ret < 0) {
        goto fail;
    }
    Error *local_err = NULL;
    bdrv_refresh_limits(bs, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        if (drv->bdrv_close) {
            drv->bdrv_close(bs);
        }
        goto fail;
    }
    ret = bdrv_refresh_total_bytes(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not get the size of '%s'",
                         filename);
        if (drv->bdrv_close) {
            drv->bdrv_close(bs);
        }
        goto fail;
    }
    return bs;

fail:
    bs->file = NULL;
    bdrv_free(bs);
    return NULL;
}

static BlockDriver *coroutine_fn bdrv_co_probe(BlockDriverState *file,
                                               const char *filename,
                                               Error **errp)
{
    uint8_t buf[BLOCK_PROBE_BUF_SIZE] = { 0 };
    int64_t len = bdrv_getlength(file);
    int n;

    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not determine size of '%s'",
                         filename);
        return NULL;
    }
    n = (int)MIN(len, (int64_t)sizeof(buf));
    if (n > 0) {
        int ret = bdrv_co_pread(file, 0, n, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read image for "
                             "determining its format");
            return NULL;
        }
    }
    BlockDriver *drv = bdrv_probe_all(buf, n, filename, NULL);
    if (!drv) {
        drv = bdrv_find_format("raw");
    }
    return drv;
}

/* ---- names read from image headers (DESIGN.md decision 8) ---- */

/*
 * May drv, selected by name (the name or format called what), be reached
 * from an image header? origin is " from the image header" when the name
 * was read from one, "" when the user is about to store it in one.
 */
static bool bdrv_header_driver_allowed(BlockDriver *drv, const char *what,
                                       const char *name, const char *origin,
                                       int flags, Error **errp)
{
    if (drv->is_filter) {
        error_setg(errp, "%s '%s'%s selects the filter driver '%s', which an "
                   "image header may never name", what, name, origin,
                   drv->format_name);
        return false;
    }
    if (drv->protocol_name && !drv->local_file &&
        !(flags & BDRV_O_HEADER_PROTOCOLS)) {
        error_setg(errp, "%s '%s'%s uses protocol '%s', but header names may "
                   "only name local files (opt in with "
                   "--allow-header-protocols)", what, name, origin,
                   drv->protocol_name);
        return false;
    }
    return true;
}

static bool bdrv_header_names_check(const char *what, const char *name,
                                    const char *fmt, const char *origin,
                                    int flags, Error **errp);

/*
 * A header name of a network protocol never carries the protocol's
 * configuration (conf=, keyring=, mon_host= for rbd), opt-in or not: it
 * would make us read files or reach hosts the header chose.
 */
static bool bdrv_header_name_config_ok(BlockDriver *drv, const char *what,
                                       const char *name, const char *origin,
                                       Error **errp)
{
    g_autofree char *key = NULL;

    if (drv->header_name_config && drv->header_name_config(name, &key)) {
        error_setg(errp, "%s '%s'%s sets the %s option '%s', which a name "
                   "in an image header may never set (name the image on "
                   "the command line instead)", what, name, origin,
                   drv->protocol_name, key);
        return false;
    }
    return true;
}

/* Does a component of the dotted key appear in list? */
static bool bdrv_key_in_list(const char *key, const char *const *list)
{
    g_auto(GStrv) parts = g_strsplit(key, ".", -1);

    for (char **p = parts; *p; p++) {
        for (const char *const *l = list; *l; l++) {
            if (!strcmp(*p, *l)) {
                return true;
            }
        }
    }
    return false;
}

/* The last component of a flattened option key ("file.driver" -> "driver"). */
static const char *bdrv_opt_basename(const char *key)
{
    const char *dot = strrchr(key, '.');
    return dot ? dot + 1 : key;
}

/*
 * A json: description from a header (name) needs the opt-in; then every
 * driver it selects and every file name it holds obey the rule as if they
 * stood alone (so never a filter, at any depth).
 */
static bool bdrv_header_json_check(const char *what, const char *name,
                                   const char *origin, int flags,
                                   Error **errp)
{
    static const char *const name_keys[] = {
        "filename", "image_file", "data_file", "data-file",
    };
    Error *local_err = NULL;
    JsonNode *node;
    QemuOpts *opts;
    bool ok = true;

    if (!(flags & BDRV_O_HEADER_PROTOCOLS)) {
        error_setg(errp, "%s '%s'%s is a json: description, which needs "
                   "--allow-header-protocols", what, name, origin);
        return false;
    }
    node = json_parse(name + strlen("json:"), &local_err);
    opts = qemu_opts_new();
    if (!node || node->type != JSON_NODE_OBJECT ||
        json_flatten_into_opts(node, opts, &local_err) < 0) {
        error_setg(errp, "%s '%s'%s is not a valid json: description%s%s",
                   what, name, origin, local_err ? ": " : "",
                   local_err ? error_get_pretty(local_err) : "");
        error_free(local_err);
        ok = false;
    }
    /* Options no header may set on a node of a driver it selects (rbd's
     * conf, user, key-secret, server.N): refused wherever they appear. */
    for (size_t i = 0; ok && i < qemu_opts_count(opts); i++) {
        const char *key, *value;
        BlockDriver *drv;

        qemu_opts_nth(opts, i, &key, &value);
        if (strcmp(bdrv_opt_basename(key), "driver") ||
            !(drv = bdrv_find_format(value)) || !drv->header_forbidden_opts) {
            continue;
        }
        for (size_t j = 0; ok && j < qemu_opts_count(opts); j++) {
            const char *k2, *v2;

            qemu_opts_nth(opts, j, &k2, &v2);
            if (bdrv_key_in_list(k2, drv->header_forbidden_opts)) {
                error_setg(errp, "%s '%s'%s sets the %s option '%s', which "
                           "a name in an image header may never set (name "
                           "the image on the command line instead)", what,
                           name, origin, drv->format_name, k2);
                ok = false;
            }
        }
    }
    for (size_t i = 0; ok && i < qemu_opts_count(opts); i++) {
        const char *key, *value, *base;
        BlockDriver *drv;

        qemu_opts_nth(opts, i, &key, &value);
        base = bdrv_opt_basename(key);
        if (!strcmp(base, "driver")) {
            drv = bdrv_find_format(value);
            if (!drv) {
                error_setg(errp, "%s '%s'%s selects the unknown driver '%s'",
                           what, name, origin, value);
                ok = false;
            } else {
                ok = bdrv_header_driver_allowed(drv, what, name, origin,
                                                flags, errp);
            }
            continue;
        }
        for (unsigned k = 0; k < ARRAY_SIZE(name_keys); k++) {
            if (!strcmp(base, name_keys[k])) {
                ok = bdrv_header_names_check(what, value, NULL, origin, flags,
                                             errp);
                break;
            }
        }
    }
    qemu_opts_del(opts);
    json_node_free(node);
    return ok;
}

static bool bdrv_header_names_check(const char *what, const char *name,
                                    const char *fmt, const char *origin,
                                    int flags, Error **errp)
{
    size_t len;

    bdrv_init();
    if (name && path_has_protocol(name, &len)) {
        BlockDriver *drv = bdrv_find_protocol(name, NULL);

        if (len == 4 && !strncmp(name, "json", 4)) {
            if (!bdrv_header_json_check(what, name, origin, flags, errp)) {
                return false;
            }
        } else if (!drv) {
            error_setg(errp, "%s '%s'%s uses the unknown protocol '%.*s'",
                       what, name, origin, (int)len, name);
            return false;
        } else if (!bdrv_header_driver_allowed(drv, what, name, origin, flags,
                                               errp)) {
            return false;
        } else if (!bdrv_header_name_config_ok(drv, what, name, origin,
                                               errp)) {
            return false;
        }
    }
    if (fmt) {
        BlockDriver *drv = bdrv_find_format(fmt);
        char *fwhat = g_strdup_printf("%s format", what);
        bool ok = !drv || bdrv_header_driver_allowed(drv, fwhat, fmt, origin,
                                                     flags, errp);
        g_free(fwhat);
        return ok;
    }
    return true;
}

bool bdrv_header_names_allowed(const char *what, const char *name,
                               const char *fmt, int flags, Error **errp)
{
    return bdrv_header_names_check(what, name, fmt, " from the image header",
                                   flags, errp);
}

bool bdrv_header_name_storable(const char *what, const char *name,
                               const char *fmt, Error **errp)
{
    return bdrv_header_names_check(what, name, fmt, "",
                                   BDRV_O_HEADER_PROTOCOLS, errp);
}

/*
 * Keys every node accepts besides its driver's open_opts (QEMU's generic
 * block options): they set open flags for the node and everything opened
 * below it.
 */
static int bdrv_take_generic_opts(QemuOpts *opts, int *flags, Error **errp)
{
    static const struct {
        const char *name;
        int flag;
    } keys[] = {
        { "allow-header-protocols", BDRV_O_HEADER_PROTOCOLS },
        { "force-share", BDRV_O_FORCE_SHARE },
        { "cache.direct", BDRV_O_NOCACHE },
        { "cache.no-flush", BDRV_O_NO_FLUSH },
    };
    char *discard = qemu_opt_get_del(opts, "discard");
    char *ro = qemu_opt_get_del(opts, "read-only");
    bool on;
    int ret = 0;

    for (unsigned i = 0; i < ARRAY_SIZE(keys) && ret == 0; i++) {
        char *v = qemu_opt_get_del(opts, keys[i].name);

        if (v && !qemu_parse_bool(v, &on)) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'",
                       keys[i].name);
            ret = -EINVAL;
        } else if (v) {
            *flags = on ? (*flags | keys[i].flag) : (*flags & ~keys[i].flag);
        }
        g_free(v);
    }
    /* A node the user made read-only cannot serve a writable open (QEMU
     * refuses the write permission the same way). */
    if (ret == 0 && ro) {
        if (!qemu_parse_bool(ro, &on)) {
            error_setg(errp, "Parameter 'read-only' expects 'on' or 'off'");
            ret = -EINVAL;
        } else if (on && (*flags & BDRV_O_RDWR)) {
            error_setg(errp, "Block node is read-only");
            ret = -EPERM;
        }
    }
    g_free(ro);
    if (ret == 0 && discard) {
        if (!strcmp(discard, "unmap") || !strcmp(discard, "on")) {
            *flags |= BDRV_O_UNMAP;
        } else if (!strcmp(discard, "ignore") || !strcmp(discard, "off")) {
            *flags &= ~BDRV_O_UNMAP;
        } else {
            error_setg(errp, "Invalid discard option");
            ret = -EINVAL;
        }
    }
    g_free(discard);
    if (ret == 0 && (*flags & BDRV_O_FORCE_SHARE) && (*flags & BDRV_O_RDWR)) {
        error_setg(errp, "force-share=on can only be used with read-only "
                   "images");
        ret = -EINVAL;
    }
    return ret;
}

/*
 * "json:{...}" names a graph by its options (QEMU's pseudo-protocol): its
 * members join opts, below the options given beside it.
 */
static int bdrv_absorb_json_name(const char *filename, QemuOpts *opts,
                                 Error **errp)
{
    Error *local_err = NULL;
    JsonNode *node = json_parse(filename + strlen("json:"), &local_err);
    int ret = -EINVAL;

    if (!node) {
        error_propagate(errp, local_err);
        error_prepend(errp, "Could not parse the JSON options: ");
        return -EINVAL;
    }
    if (node->type != JSON_NODE_OBJECT) {
        error_setg(errp, "Invalid JSON object given");
    } else {
        ret = json_flatten_into_opts(node, opts, errp);
    }
    json_node_free(node);
    return ret;
}

static BlockDriverState *coroutine_fn bdrv_co_open_graph(OpenArgs *a,
                                                         Error **errp);
static int coroutine_fn bdrv_co_open_backing(BlockDriverState *bs,
                                             QemuOpts *backing_opts,
                                             int depth, Error **errp);

/*
 * A protocol node (drv NULL: chosen by the name's prefix, or by probing
 * the device for a name without one).
 */
static BlockDriverState *coroutine_fn
bdrv_co_open_protocol(BlockDriver *drv, const char *name, QemuOpts *opts,
                      int flags, Error **errp)
{
    if (!drv) {
        if (!name || !*name) {
            error_setg(errp, "A block device must be specified for \"file\"");
            return NULL;
        }
        drv = bdrv_find_protocol(name, errp);
        if (!drv) {
            return NULL;
        }
    }
    return bdrv_co_open_node(drv, name ? name : "", opts, flags, NULL, errp);
}

/* Open a format node drv (NULL: probe) over file; takes file. */
static BlockDriverState *coroutine_fn
bdrv_co_open_format_node(OpenArgs *a, BlockDriver *drv, const char *name,
                         BlockDriverState *file, QemuOpts *opts,
                         QemuOpts *backing_opts, Error **errp)
{
    BlockDriverState *bs;
    bool probed = false;
    Error *local_err = NULL;
    int ret;

    if (!drv) {
        drv = bdrv_co_probe(file, name, errp);
        if (!drv) {
            bdrv_unref(file);
            return NULL;
        }
        probed = true;
    }
    bs = bdrv_new(drv, name, a->flags);
    bs->probed = probed;
    bs->file = file;
    /* As QEMU: the format decides what to discard (its own discard
     * option, e.g. qcow2's pass-discard-*); the protocol below passes on
     * whatever it is asked. */
    file->open_flags |= BDRV_O_UNMAP;
    bs->backing_depth = a->depth;
    ret = bdrv_validate_open_opts(drv, opts, errp);
    if (ret < 0) {
        goto fail_bs;
    }
    /* Lock what the format needs before it reads (or repairs) anything. */
    ret = bdrv_attach_file_perm(bs, errp);
    if (ret < 0) {
        goto fail_bs;
    }
    ret = drv->bdrv_open(bs, opts, a->flags, errp);
    if (ret < 0) {
        goto fail_bs;
    }
    bs->options = qemu_opts_clone(opts);
    bdrv_refresh_limits(bs, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        goto fail_close;
    }
    ret = bdrv_refresh_total_bytes(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not get the size of '%s'", name);
        goto fail_close;
    }
    if (!(a->flags & BDRV_O_NO_BACKING) && bs->backing_file[0]) {
        ret = bdrv_co_open_backing(bs, backing_opts, a->depth, errp);
        if (ret < 0) {
            goto fail_close;
        }
    } else if (backing_opts && qemu_opts_count(backing_opts)) {
        error_setg(errp, "Image has no backing file to apply 'backing.' "
                   "options to");
        goto fail_close;
    }
    return bs;

fail_close:
    if (drv->bdrv_close) {
        drv->bdrv_close(bs);
    }
fail_bs:
    bdrv_unref(bs->file);
    bs->file = NULL;
    bdrv_free(bs);
    return NULL;
}

/*
 * A format or filter node: its "file" child is opened first from name
 * (the name flows down to the protocol) or from the "file." options
 * (file.driver may name another format or filter), then the node itself.
 */
static BlockDriverState *coroutine_fn
bdrv_co_open_format(OpenArgs *a, BlockDriver *drv, const char *name,
                    QemuOpts *opts, Error **errp)
{
    QemuOpts *file_opts = qemu_opts_extract_prefix(opts, "file");
    QemuOpts *backing_opts = qemu_opts_extract_prefix(opts, "backing");
    OpenArgs fa = {
        .filename = name,
        .options = file_opts,
        .flags = a->flags,
        .allow_probe = false,
        .depth = a->depth,
    };
    BlockDriverState *file, *bs = NULL;

    if (qemu_opt_has(opts, "file")) {
        /* QEMU's reference to another node by name: we have none. */
        const char *ref = qemu_opt_get(opts, "file");
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'", ref,
                   ref);
        goto out;
    }
    if (!name && !file_opts) {
        error_setg(errp, "A block device must be specified for \"file\"");
        goto out;
    }
    file = bdrv_co_open_graph(&fa, errp);
    if (!file) {
        goto out;
    }
    /* The node shows its file's name, as the protocol normalised it
     * ("file:a.img" is "a.img"), as QEMU does. */
    bs = bdrv_co_open_format_node(a, drv, file->filename, file, opts,
                                  backing_opts, errp);
out:
    qemu_opts_del(file_opts);
    qemu_opts_del(backing_opts);
    return bs;
}

/* Do opts name child (a "child" reference or "child.*" options)? */
static bool bdrv_opts_name_child(QemuOpts *opts, const char *child)
{
    size_t n = strlen(child);

    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;

        qemu_opts_nth(opts, i, &name, &value);
        if (!strncmp(name, child, n) && (!name[n] || name[n] == '.')) {
            return true;
        }
    }
    return false;
}

/*
 * Open the graph a describes: a protocol node, or a format (given,
 * named by a "driver" option, or probed) over its file child, with its
 * backing chain.
 */
static BlockDriverState *coroutine_fn bdrv_co_open_graph(OpenArgs *a,
                                                         Error **errp)
{
    QemuOpts *opts = a->options ? qemu_opts_clone(a->options)
                                : qemu_opts_new();
    const char *filename = a->filename;
    BlockDriverState *bs = NULL;
    BlockDriver *drv = NULL;
    char *drvname = NULL, *fname = NULL;
    const char *fmt;
    bool proto_only = (a->flags & BDRV_O_PROTOCOL) || !a->allow_probe;

    a->flags &= ~BDRV_O_PROTOCOL;
    if (filename && strstart(filename, "json:", NULL)) {
        if (bdrv_absorb_json_name(filename, opts, errp) < 0) {
            goto out;
        }
        filename = NULL;
    }
    drvname = qemu_opt_get_del(opts, "driver");
    fname = qemu_opt_get_del(opts, "filename");
    if (filename && fname) {
        error_setg(errp, "Can't specify 'file' and 'filename' options at the "
                   "same time");
        goto out;
    }
    if (bdrv_take_generic_opts(opts, &a->flags, errp) < 0) {
        goto out;
    }
    fmt = drvname ? drvname : a->fmt;
    if (fmt) {
        drv = bdrv_find_format(fmt);
        if (!drv) {
            error_setg(errp, "Unknown driver '%s'", fmt);
            goto out;
        }
    }
    /* A protocol named as the driver (-f file, -f blkdebug) is the node. */
    if ((drv && drv->protocol_name) || (!drv && proto_only)) {
        bs = bdrv_co_open_protocol(drv, filename ? filename : fname, opts,
                                   a->flags, errp);
    } else if (!drv && !filename &&
               !bdrv_opts_name_child(opts, "file")) {
        error_setg(errp, "Must specify either driver or file");
    } else {
        /* A format's own "filename" option names no file: the file child
         * is named by file.filename (QEMU's rule). */
        bs = bdrv_co_open_format(a, drv, filename, opts, errp);
    }
out:
    qemu_opts_del(opts);
    g_free(drvname);
    g_free(fname);
    return bs;
}

static int coroutine_fn bdrv_co_open_backing(BlockDriverState *bs,
                                             QemuOpts *backing_opts,
                                             int depth, Error **errp)
{
    Error *local_err = NULL;
    char *name = NULL;
    /* backing.file.filename / backing.filename: the user names the backing
     * file, and backing.driver its format, instead of the header. */
    bool user_name = backing_opts &&
        (qemu_opt_has(backing_opts, "filename") ||
         qemu_opt_has(backing_opts, "file.filename"));
    bool user_fmt = backing_opts && qemu_opt_has(backing_opts, "driver");
    const char *fmt = !user_fmt && bs->backing_format[0] ? bs->backing_format
                                                          : NULL;

    if (depth + 1 >= BACKING_CHAIN_MAX) {
        error_setg(errp, "Backing file chain of '%s' is longer than %d "
                   "images (a loop?)", bs->filename, BACKING_CHAIN_MAX);
        return -ELOOP;
    }
    if (!bdrv_header_names_allowed("Backing file",
                                   user_name ? NULL : bs->backing_file, fmt,
                                   bs->open_flags, errp)) {
        return -EPERM;
    }
    if (!user_name) {
        name = bdrv_get_full_backing_filename(bs);
    }
    OpenArgs a = {
        .filename = name,
        .fmt = fmt,
        .options = backing_opts,
        /* Read-only; the user's own flags (resize, no-share) stay above. */
        .flags = (bs->open_flags & ~(BDRV_O_RDWR | BDRV_O_COPY_ON_READ |
                                     BDRV_O_RESIZE | BDRV_O_NO_SHARE)),
        .allow_probe = true,
        .depth = depth + 1,
    };
    bs->backing = bdrv_co_open_graph(&a, &local_err);
    g_free(name);
    if (!bs->backing) {
        error_propagate(errp, local_err);
        error_prepend(errp, "Could not open backing file: ");
        return -EINVAL;
    }
    return 0;
}

static void coroutine_fn bdrv_open_entry(void *opaque)
{
    OpenArgs *a = opaque;
    a->result = bdrv_co_open_graph(a, &a->err);
}

/*
 * Snapshot mode (QEMU's -snapshot): the image opened read-only below a
 * temporary overlay that takes every write and is deleted at once (its
 * files stay open, so they vanish when the graph is closed, or when the
 * process dies). The overlay is qcow2 when that driver is built in, else
 * add-cow (with its data file beside it).
 */
static BlockDriverState *bdrv_open_snapshot(const char *filename,
                                            const char *fmt,
                                            QemuOpts *options, int flags,
                                            Error **errp)
{
    const char *dir = g_getenv("TMPDIR");
    BlockDriver *drv = bdrv_find_format("qcow2");
    BlockDriverState *base, *top = NULL;
    char *tmp, *data = NULL;
    QemuOpts *opts;
    int64_t len;
    int fd;

    base = bdrv_open(filename, fmt, options,
                     flags & ~(BDRV_O_SNAPSHOT | BDRV_O_RDWR |
                               BDRV_O_COPY_ON_READ | BDRV_O_RESIZE), errp);
    if (!base) {
        return NULL;
    }
    len = bdrv_getlength(base);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get image size");
        bdrv_unref(base);
        return NULL;
    }
    tmp = g_build_filename(dir && *dir ? dir : "/var/tmp", "vl.XXXXXX",
                           NULL);
    fd = mkstemp(tmp);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Could not get temporary filename");
        goto out;
    }
    close(fd);
    opts = qemu_opts_new();
    qemu_opt_set_number(opts, "size", len);
    if (!drv) {
        drv = bdrv_find_format("add-cow");
        data = g_strdup_printf("%s.raw", tmp);
        qemu_opt_set(opts, "image_file", data);
    }
    if (bdrv_create(drv, tmp, opts, errp) >= 0) {
        top = bdrv_open(tmp, bdrv_driver_name(drv), NULL,
                        (flags & ~BDRV_O_SNAPSHOT) | BDRV_O_RDWR |
                        BDRV_O_NO_BACKING, errp);
    }
    qemu_opts_del(opts);
    if (top) {
        /* Reads of what the overlay lacks go to the open image. */
        base->is_root = false;
        bdrv_set_backing_hd(top, base);
    }
out:
    unlink(tmp);
    if (data) {
        unlink(data);
    }
    g_free(tmp);
    g_free(data);
    bdrv_unref(base);
    return top;
}

BlockDriverState *bdrv_open(const char *filename, const char *fmt,
                            QemuOpts *options, int flags, Error **errp)
{
    OpenArgs a = {
        .filename = filename, .fmt = fmt, .options = options,
        .flags = flags, .allow_probe = true,
    };

    bdrv_init();
    if (flags & BDRV_O_SNAPSHOT) {
        return bdrv_open_snapshot(filename, fmt, options, flags, errp);
    }
    /* Copying needs writing; as QEMU, say so before opening anything. */
    if ((flags & BDRV_O_COPY_ON_READ) && !(flags & BDRV_O_RDWR)) {
        error_setg(errp, "Can't use copy-on-read on read-only device");
        return NULL;
    }
    bdrv_run_co(bdrv_open_entry, &a);
    if (!a.result) {
        error_propagate(errp, a.err);
        return NULL;
    }
    a.result->is_root = true;
    /* a.flags: with the flags of generic options (force-share=on). */
    bdrv_user_perm(a.flags, &a.result->user_perm, &a.result->user_shared);
    if (bdrv_restore_perms(a.result, errp) < 0) {
        bdrv_unref(a.result);
        return NULL;
    }
    return a.result;
}

BlockDriverState *bdrv_open_child(const char *filename, const char *fmt,
                                  QemuOpts *options, int flags,
                                  bool allow_probe, Error **errp)
{
    OpenArgs a = {
        .filename = filename, .fmt = fmt, .options = options,
        .flags = flags, .allow_probe = allow_probe, .depth = 1,
    };

    bdrv_init();
    bdrv_run_co(bdrv_open_entry, &a);
    if (!a.result) {
        error_propagate(errp, a.err);
    }
    return a.result;
}

BlockDriverState *bdrv_open_header_file(BlockDriverState *parent,
                                        const char *name, const char *what,
                                        int flags, Error **errp)
{
    BlockDriverState *bs;
    char *full;

    if (!bdrv_header_names_allowed(what, name, NULL, parent->open_flags,
                                   errp)) {
        return NULL;
    }
    full = path_combine(parent->filename, name);
    bs = bdrv_open_child(full, NULL, NULL, flags, false, errp);
    g_free(full);
    return bs;
}

void bdrv_ref(BlockDriverState *bs)
{
    bs->refcnt++;
}

static void coroutine_fn bdrv_close_entry(void *opaque)
{
    BlockDriverState *bs = opaque;
    if (!bs->read_only) {
        bdrv_co_flush(bs);
    }
    if (bs->drv->bdrv_close) {
        bs->drv->bdrv_close(bs);
    }
}

void bdrv_unref(BlockDriverState *bs)
{
    if (!bs) {
        return;
    }
    assert(bs->refcnt > 0);
    if (--bs->refcnt > 0) {
        return;
    }
    bdrv_drain(bs);
    bdrv_run_co(bdrv_close_entry, bs);
    bdrv_unref(bs->backing);
    bdrv_unref(bs->file);
    bdrv_free(bs);
}

/* ---- creation ---- */

typedef struct CreateArgs {
    BlockDriver *drv;
    const char *filename;
    QemuOpts *opts;
    Error *err;
    int ret;
} CreateArgs;

static void coroutine_fn bdrv_create_entry(void *opaque)
{
    CreateArgs *c = opaque;
    c->ret = c->drv->bdrv_create(c->filename, c->opts, &c->err);
}

int bdrv_create(BlockDriver *drv, const char *filename, QemuOpts *opts,
                Error **errp)
{
    static const QemuOptDesc none[] = { { NULL } };
    const QemuOptDesc *descs[3] = { drv->create_opts ? drv->create_opts
                                                     : none, NULL, NULL };
    CreateArgs c = { .drv = drv, .filename = filename, .opts = opts };

    /* A format accepts its protocol's options too (passed down on create). */
    if (!drv->protocol_name) {
        descs[1] = bdrv_protocol_create_opts(filename);
    }

    if (!drv->bdrv_create) {
        error_setg(errp, "Driver '%s' does not support image creation",
                   drv->format_name);
        return -ENOTSUP;
    }
    if (qemu_opts_validate(opts, descs, errp) < 0) {
        return -EINVAL;
    }
    bdrv_run_co(bdrv_create_entry, &c);
    if (c.ret < 0) {
        if (!c.err) {
            error_setg_errno(&c.err, -c.ret, "Could not create '%s'",
                             filename);
        }
        error_propagate(errp, c.err);
    }
    return c.ret;
}

/*
 * "Creating" on a protocol that cannot create (a device, null-co), as
 * QEMU does: open what is there, make sure it is big enough (growing it
 * if the protocol can) and zero its first sector, so that no old content
 * is probed as a format.
 */
static int bdrv_create_file_fallback(BlockDriver *proto, const char *filename,
                                     QemuOpts *opts, Error **errp)
{
    uint64_t size = opts ? qemu_opt_get_size(opts, "size", 0) : 0;
    const char *prealloc = opts ? qemu_opt_get(opts, "preallocation") : NULL;
    Error *local_err = NULL;
    BlockDriverState *bs;
    int64_t len;
    int ret;

    if (prealloc && strcmp(prealloc, "off")) {
        error_setg(errp, "Unsupported preallocation mode '%s'", prealloc);
        return -ENOTSUP;
    }
    bs = bdrv_open(filename, proto->format_name, NULL,
                   BDRV_O_RDWR | BDRV_O_RESIZE, &local_err);
    if (!bs) {
        error_propagate(errp, local_err);
        error_prepend(errp, "Protocol driver '%s' does not support image "
                      "creation, and opening the image failed: ",
                      proto->format_name);
        return -EINVAL;
    }
    ret = bdrv_truncate(bs, size, false, PREALLOC_MODE_OFF, &local_err);
    if (ret == -ENOTSUP) {
        error_free(local_err);
        ret = 0;
    } else if (ret < 0) {
        error_propagate(errp, local_err);
    }
    len = ret < 0 ? 0 : bdrv_getlength(bs);
    if (ret == 0 && len >= 0 && (uint64_t)len < size) {
        error_setg(errp, "Image file size is smaller than specified");
        ret = -EINVAL;
    }
    if (ret == 0 && len > 0) {
        ret = bdrv_pwrite_zeroes(bs, 0, MIN(len, (int64_t)BDRV_SECTOR_SIZE),
                                 BDRV_REQ_MAY_UNMAP);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to clear the new image's "
                             "first sector");
        }
    }
    bdrv_unref(bs);
    return ret;
}

int bdrv_create_file(const char *filename, QemuOpts *opts, Error **errp)
{
    BlockDriver *proto = bdrv_find_protocol(filename, errp);
    QemuOpts *popts;
    int ret;

    if (!proto) {
        return -ENOENT;
    }
    if (!proto->bdrv_create && proto->create_opens_existing) {
        return bdrv_create_file_fallback(proto, filename, opts, errp);
    }
    if (!proto->bdrv_create) {
        error_setg(errp, "Protocol driver '%s' does not support image "
                   "creation", proto->format_name);
        return -ENOTSUP;
    }
    /* Pass only the options the protocol understands. */
    popts = qemu_opts_new();
    for (size_t i = 0; opts && i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        qemu_opts_nth(opts, i, &name, &value);
        for (const QemuOptDesc *d = proto->create_opts; d && d->name; d++) {
            if (!strcmp(d->name, name)) {
                qemu_opt_set(popts, name, value);
            }
        }
    }
    ret = bdrv_create(proto, filename, popts, errp);
    qemu_opts_del(popts);
    return ret;
}

BlockMeasureInfo *bdrv_measure(BlockDriver *drv, QemuOpts *opts,
                               BlockDriverState *in_bs, Error **errp)
{
    if (!drv->bdrv_measure) {
        error_setg(errp, "Format driver '%s' does not support size "
                   "measurement", drv->format_name);
        return NULL;
    }
    return drv->bdrv_measure(opts, in_bs, errp);
}

int coroutine_fn bdrv_co_delete_file(const char *filename, Error **errp)
{
    BlockDriver *proto = bdrv_find_protocol(filename, errp);

    if (!proto) {
        return -ENOENT;
    }
    if (!proto->bdrv_co_delete_file) {
        error_setg(errp, "Protocol '%s' cannot delete files",
                   proto->format_name);
        return -ENOTSUP;
    }
    return proto->bdrv_co_delete_file(filename, errp);
}

/* ---- properties ---- */

const char *bdrv_get_format_name(BlockDriverState *bs)
{
    return bs->drv ? bs->drv->format_name : NULL;
}

const char *bdrv_get_filename(BlockDriverState *bs)
{
    return bs->filename;
}

BlockDriverState *bdrv_get_file(BlockDriverState *bs)
{
    return bs->file;
}

BlockDriverState *bdrv_get_backing(BlockDriverState *bs)
{
    return bs->backing;
}

const char *bdrv_get_backing_filename(BlockDriverState *bs)
{
    return bs->backing_file;
}

char *bdrv_get_full_backing_filename(BlockDriverState *bs)
{
    if (!bs->backing_file[0]) {
        return NULL;
    }
    return path_combine(bs->filename, bs->backing_file);
}

const char *bdrv_get_backing_format(BlockDriverState *bs)
{
    return bs->backing_format;
}

int bdrv_get_flags(BlockDriverState *bs)
{
    return bs->open_flags;
}

bool bdrv_is_read_only(BlockDriverState *bs)
{
    return bs->read_only;
}

uint32_t bdrv_get_request_alignment(BlockDriverState *bs)
{
    return bs->bl.request_alignment;
}

/* Lengths are whole 512-byte sectors, as in QEMU: a 100000-byte raw file
 * is a 100352-byte disk whose last bytes read as zero. */
int64_t bdrv_getlength(BlockDriverState *bs)
{
    int64_t len;

    if (!bs->drv) {
        return -ENOMEDIUM;
    }
    if (bs->drv->bdrv_getlength) {
        len = bs->drv->bdrv_getlength(bs);
    } else if (bs->file) {
        len = bdrv_getlength(bs->file);
    } else {
        return -ENOTSUP;
    }
    if (len < 0) {
        return len;
    }
    if (len > INT64_MAX - (int64_t)BDRV_SECTOR_SIZE) {
        return -EFBIG;
    }
    return QEMU_ALIGN_UP(len, (int64_t)BDRV_SECTOR_SIZE);
}

int64_t bdrv_get_allocated_file_size(BlockDriverState *bs)
{
    if (bs->drv->bdrv_get_allocated_file_size) {
        return bs->drv->bdrv_get_allocated_file_size(bs);
    }
    if (bs->file) {
        return bdrv_get_allocated_file_size(bs->file);
    }
    return -ENOTSUP;
}

int bdrv_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    memset(bdi, 0, sizeof(*bdi));
    if (!bs->drv->bdrv_get_info) {
        if (bs->drv->is_filter && bs->file) {
            return bdrv_get_info(bs->file, bdi);
        }
        return -ENOTSUP;
    }
    return bs->drv->bdrv_get_info(bs, bdi);
}

ImageInfoSpecific *bdrv_get_specific_info(BlockDriverState *bs,
                                          Error **errp)
{
    if (bs->drv->bdrv_get_specific_info) {
        return bs->drv->bdrv_get_specific_info(bs, errp);
    }
    /* raw over sheepdog/rbd shows the protocol's details (VDI id, ...) */
    if ((bs->drv->passthrough_snapshots || bs->drv->is_filter) && bs->file) {
        return bdrv_get_specific_info(bs->file, errp);
    }
    return NULL;
}

bool bdrv_has_zero_init(BlockDriverState *bs)
{
    if (bs->backing) {
        return false;
    }
    if (bs->drv->bdrv_has_zero_init) {
        return bs->drv->bdrv_has_zero_init(bs);
    }
    if (bs->drv->is_filter && bs->file) {
        return bdrv_has_zero_init(bs->file);
    }
    return false;
}

void bdrv_set_enable_write_cache(BlockDriverState *bs, bool wce)
{
    bs->enable_write_cache = wce;
}

bool bdrv_get_enable_write_cache(BlockDriverState *bs)
{
    return bs->enable_write_cache;
}

/* ---- synchronous wrappers ---- */

typedef enum {
    SYNC_READ, SYNC_WRITE, SYNC_ZEROES, SYNC_DISCARD, SYNC_FLUSH,
    SYNC_STATUS, SYNC_STATUS_ABOVE, SYNC_TRUNCATE, SYNC_CHECK, SYNC_BACKING,
    SYNC_AMEND, SYNC_SN_CREATE, SYNC_SN_GOTO, SYNC_SN_DELETE, SYNC_SN_LIST,
    SYNC_VM_SAVE, SYNC_VM_LOAD, SYNC_MAKE_EMPTY,
} SyncOp;

typedef struct SyncArgs {
    SyncOp op;
    BlockDriverState *bs, *base;
    int64_t offset, bytes;
    QEMUIOVector *qiov;
    BdrvRequestFlags flags;
    int64_t *pnum, *map;
    BlockDriverState **file;
    int *depth;
    bool exact, force;
    PreallocMode prealloc;
    BdrvCheckResult *res;
    BdrvCheckMode fix;
    const char *s1, *s2;
    QemuOpts *opts;
    QEMUSnapshotInfo *sn;
    QEMUSnapshotInfo **psn;
    Error **errp;
    int ret;
} SyncArgs;

static int coroutine_fn bdrv_co_snapshot_op(SyncArgs *a);

static int coroutine_fn bdrv_co_check(BlockDriverState *bs,
                                      BdrvCheckResult *res,
                                      BdrvCheckMode fix)
{
    memset(res, 0, sizeof(*res));
    if (!bs->drv->bdrv_co_check) {
        return -ENOTSUP;
    }
    return bs->drv->bdrv_co_check(bs, res, fix);
}

/* Drivers without snapshot callbacks hand them to their file (raw, filters) */
static BlockDriverState *bdrv_snapshot_node(BlockDriverState *bs)
{
    while (bs && bs->drv && !bs->drv->bdrv_snapshot_list &&
           (bs->drv->passthrough_snapshots || bs->drv->is_filter)) {
        bs = bs->file;
    }
    return (bs && bs->drv && bs->drv->bdrv_snapshot_list) ? bs : NULL;
}

static BlockDriverState *bdrv_vmstate_node(BlockDriverState *bs)
{
    while (bs && bs->drv && !bs->drv->bdrv_co_save_vmstate &&
           (bs->drv->passthrough_snapshots || bs->drv->is_filter)) {
        bs = bs->file;
    }
    return (bs && bs->drv && bs->drv->bdrv_co_save_vmstate) ? bs : NULL;
}

/*
 * Snapshot goto through a raw-like format: the format is closed, the node
 * below switches snapshot, and the format is opened again so that it sees
 * the new content (as QEMU does).
 */
static int coroutine_fn bdrv_co_snapshot_goto_fallback(SyncArgs *a)
{
    BlockDriverState *bs = a->bs;
    Error *local_err = NULL;
    int ret, open_ret;

    if (!bs->drv->passthrough_snapshots || !bs->file) {
        error_setg(a->errp, "Block driver does not support snapshots");
        return -ENOTSUP;
    }
    if (!bdrv_snapshot_node(bs->file)) {
        ret = -ENOTSUP;
        error_setg(&local_err, "Block driver does not support snapshots");
    } else {
        SyncArgs sub = *a;
        sub.bs = bs->file;
        sub.errp = &local_err;
        ret = bdrv_co_snapshot_op(&sub);
    }
    if (bs->drv->bdrv_close) {
        bs->drv->bdrv_close(bs);
    }
    memset(bs->opaque, 0, bs->drv->instance_size);
    open_ret = bs->drv->bdrv_open(bs, bs->options, bs->open_flags,
                                  ret < 0 ? NULL : &local_err);
    if (open_ret < 0) {
        bs->drv = NULL;         /* no medium: every request fails */
        ret = ret < 0 ? ret : open_ret;
    } else {
        bdrv_refresh_total_bytes(bs);
    }
    error_propagate(a->errp, local_err);
    return ret;
}

static int coroutine_fn bdrv_co_snapshot_op(SyncArgs *a)
{
    BlockDriverState *bs = bdrv_snapshot_node(a->bs);

    if (a->op == SYNC_SN_GOTO && a->bs->drv &&
        !a->bs->drv->bdrv_snapshot_goto) {
        return bdrv_co_snapshot_goto_fallback(a);
    }
    if (!bs) {
        error_setg(a->errp, "Block format '%s' used by device '' does not "
                   "support internal snapshots",
                   a->bs->drv->format_name);
        return -ENOTSUP;
    }
    switch (a->op) {
    case SYNC_SN_CREATE:
        if (bs->read_only) {
            error_setg(a->errp, "Image is read-only");
            return -EACCES;
        }
        return bs->drv->bdrv_snapshot_create(bs, a->sn, a->errp);
    case SYNC_SN_GOTO:
        if (!bs->drv->bdrv_snapshot_goto) {
            return -ENOTSUP;
        }
        return bs->drv->bdrv_snapshot_goto(bs, a->s1, a->errp);
    case SYNC_SN_DELETE:
        if (!bs->drv->bdrv_snapshot_delete) {
            return -ENOTSUP;
        }
        return bs->drv->bdrv_snapshot_delete(bs, a->s1, a->s2, a->errp);
    case SYNC_SN_LIST:
        return bs->drv->bdrv_snapshot_list(bs, a->psn);
    default:
        abort();
    }
}

static int coroutine_fn bdrv_co_vmstate(SyncArgs *a)
{
    BlockDriverState *bs = bdrv_vmstate_node(a->bs);
    int ret;

    if (!bs) {
        return -ENOTSUP;
    }
    if (a->op == SYNC_VM_SAVE) {
        if (bs->read_only) {
            return -EPERM;
        }
        ret = bs->drv->bdrv_co_save_vmstate(bs, a->qiov, a->offset);
    } else {
        if (!bs->drv->bdrv_co_load_vmstate) {
            return -ENOTSUP;
        }
        ret = bs->drv->bdrv_co_load_vmstate(bs, a->qiov, a->offset);
    }
    return ret < 0 ? ret : (int)a->qiov->size;
}

static void coroutine_fn bdrv_sync_entry(void *opaque)
{
    SyncArgs *a = opaque;
    BlockDriverState *bs = a->bs;

    switch (a->op) {
    case SYNC_READ:
        a->ret = bdrv_co_preadv(bs, a->offset, a->bytes, a->qiov, a->flags);
        break;
    case SYNC_WRITE:
        a->ret = bdrv_co_pwritev(bs, a->offset, a->bytes, a->qiov, a->flags);
        break;
    case SYNC_ZEROES:
        a->ret = bdrv_co_pwrite_zeroes(bs, a->offset, a->bytes, a->flags);
        break;
    case SYNC_DISCARD:
        a->ret = bdrv_co_pdiscard(bs, a->offset, a->bytes);
        break;
    case SYNC_FLUSH:
        a->ret = bdrv_co_flush(bs);
        break;
    case SYNC_STATUS:
        a->ret = bdrv_co_block_status(bs, a->offset, a->bytes, a->pnum,
                                      a->map, a->file);
        break;
    case SYNC_STATUS_ABOVE: {
        BlockDriverState *p = bs;
        int64_t bytes = a->bytes;
        int d = 0;
        a->ret = 0;
        *a->pnum = bytes;
        for (; p && p != a->base; p = p->backing, d++) {
            int64_t len = bdrv_getlength(p);
            if (len >= 0 && a->offset >= len && p != bs) {
                /* Past the end of a shorter backing file: reads as zero. */
                a->ret = BDRV_BLOCK_ZERO;
                *a->pnum = bytes;
                break;
            }
            int ret = bdrv_co_block_status(p, a->offset, bytes, a->pnum,
                                           a->map, a->file);
            if (ret < 0 || (ret & BDRV_BLOCK_ALLOCATED) || *a->pnum == 0) {
                a->ret = ret;
                break;
            }
            bytes = *a->pnum;
            if (!p->backing || p->backing == a->base) {
                a->ret = ret & ~BDRV_BLOCK_EOF;
                d++;
                break;
            }
        }
        if (a->depth) {
            *a->depth = d;
        }
        break;
    }
    case SYNC_TRUNCATE:
        a->ret = bdrv_co_truncate(bs, a->offset, a->exact, a->prealloc,
                                  a->errp);
        break;
    case SYNC_CHECK:
        a->ret = bdrv_co_check(bs, a->res, a->fix);
        break;
    case SYNC_BACKING:
        if (!bs->drv->bdrv_change_backing_file) {
            error_setg(a->errp, "Format '%s' does not support backing files",
                       bs->drv->format_name);
            a->ret = -ENOTSUP;
            break;
        }
        if (bs->read_only) {
            error_setg(a->errp, "Image is read-only");
            a->ret = -EACCES;
            break;
        }
        a->ret = bs->drv->bdrv_change_backing_file(bs, a->s1, a->s2);
        if (a->ret < 0) {
            error_setg_errno(a->errp, -a->ret,
                             "Could not change the backing file");
        } else {
            pstrcpy(bs->backing_file, sizeof(bs->backing_file),
                    a->s1 ? a->s1 : "");
            pstrcpy(bs->backing_format, sizeof(bs->backing_format),
                    a->s2 ? a->s2 : "");
        }
        break;
    case SYNC_AMEND:
        if (!bs->drv->bdrv_amend_options) {
            error_setg(a->errp, "Format driver '%s' does not support option "
                       "amendment", bs->drv->format_name);
            a->ret = -ENOTSUP;
            break;
        }
        a->ret = bs->drv->bdrv_amend_options(bs, a->opts, a->force, a->errp);
        if (a->ret >= 0) {
            bdrv_refresh_total_bytes(bs);
        }
        break;
    case SYNC_SN_CREATE:
    case SYNC_SN_GOTO:
    case SYNC_SN_DELETE:
    case SYNC_SN_LIST:
        a->ret = bdrv_co_snapshot_op(a);
        break;
    case SYNC_VM_SAVE:
    case SYNC_VM_LOAD:
        a->ret = bdrv_co_vmstate(a);
        break;
    case SYNC_MAKE_EMPTY:
        if (!bs->drv->bdrv_make_empty) {
            a->ret = -ENOTSUP;
        } else if (bs->read_only) {
            a->ret = -EACCES;
        } else {
            a->ret = bs->drv->bdrv_make_empty(bs);
        }
        break;
    }
}

static int bdrv_sync(SyncArgs *a)
{
    bdrv_run_co(bdrv_sync_entry, a);
    return a->ret;
}

int bdrv_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    SyncArgs a = { .op = SYNC_READ, .bs = bs, .offset = offset,
                   .bytes = bytes, .qiov = qiov, .flags = flags };
    return bdrv_sync(&a);
}

int bdrv_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                 QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    SyncArgs a = { .op = SYNC_WRITE, .bs = bs, .offset = offset,
                   .bytes = bytes, .qiov = qiov, .flags = flags };
    return bdrv_sync(&a);
}

int bdrv_pread(BlockDriverState *bs, int64_t offset, int64_t bytes,
               void *buf, BdrvRequestFlags flags)
{
    QEMUIOVector qiov;
    if (bytes < 0 || bytes > SIZE_MAX) {
        return -EINVAL;
    }
    qemu_iovec_init_buf(&qiov, buf, bytes);
    return bdrv_preadv(bs, offset, bytes, &qiov, flags);
}

int bdrv_pwrite(BlockDriverState *bs, int64_t offset, int64_t bytes,
                const void *buf, BdrvRequestFlags flags)
{
    QEMUIOVector qiov;
    if (bytes < 0 || bytes > SIZE_MAX) {
        return -EINVAL;
    }
    qemu_iovec_init_buf(&qiov, (void *)buf, bytes);
    return bdrv_pwritev(bs, offset, bytes, &qiov, flags);
}

int bdrv_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                       BdrvRequestFlags flags)
{
    SyncArgs a = { .op = SYNC_ZEROES, .bs = bs, .offset = offset,
                   .bytes = bytes, .flags = flags };
    return bdrv_sync(&a);
}

int bdrv_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    SyncArgs a = { .op = SYNC_DISCARD, .bs = bs, .offset = offset,
                   .bytes = bytes };
    return bdrv_sync(&a);
}

int bdrv_flush(BlockDriverState *bs)
{
    SyncArgs a = { .op = SYNC_FLUSH, .bs = bs };
    return bdrv_sync(&a);
}

int bdrv_block_status(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum, int64_t *map, BlockDriverState **file)
{
    int64_t dummy;
    SyncArgs a = { .op = SYNC_STATUS, .bs = bs, .offset = offset,
                   .bytes = bytes, .pnum = pnum ? pnum : &dummy, .map = map,
                   .file = file };
    return bdrv_sync(&a);
}

int bdrv_block_status_above(BlockDriverState *bs, BlockDriverState *base,
                            int64_t offset, int64_t bytes, int64_t *pnum,
                            int64_t *map, BlockDriverState **file,
                            int *depth)
{
    int64_t dummy;
    SyncArgs a = { .op = SYNC_STATUS_ABOVE, .bs = bs, .base = base,
                   .offset = offset, .bytes = bytes,
                   .pnum = pnum ? pnum : &dummy, .map = map, .file = file,
                   .depth = depth };
    return bdrv_sync(&a);
}

int bdrv_is_allocated(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum)
{
    int ret = bdrv_block_status(bs, offset, bytes, pnum, NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    return !!(ret & BDRV_BLOCK_ALLOCATED);
}

int bdrv_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                  PreallocMode prealloc, Error **errp)
{
    SyncArgs a = { .op = SYNC_TRUNCATE, .bs = bs, .offset = offset,
                   .exact = exact, .prealloc = prealloc, .errp = errp };
    return bdrv_sync(&a);
}

int bdrv_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix)
{
    SyncArgs a = { .op = SYNC_CHECK, .bs = bs, .res = res, .fix = fix };
    return bdrv_sync(&a);
}

int bdrv_change_backing_file(BlockDriverState *bs, const char *backing_file,
                             const char *backing_fmt, Error **errp)
{
    SyncArgs a = { .op = SYNC_BACKING, .bs = bs, .s1 = backing_file,
                   .s2 = backing_fmt, .errp = errp };
    return bdrv_sync(&a);
}

void bdrv_set_backing_hd(BlockDriverState *bs, BlockDriverState *backing)
{
    if (backing) {
        bdrv_ref(backing);
    }
    bdrv_unref(bs->backing);
    bs->backing = backing;
}

int bdrv_amend_options(BlockDriverState *bs, QemuOpts *opts, bool force,
                       Error **errp)
{
    if (!bs->drv->bdrv_amend_options || !bs->drv->amend_opts) {
        error_setg(errp, "Format driver '%s' does not support option "
                   "amendment", bs->drv->format_name);
        return -ENOTSUP;
    }
    const QemuOptDesc *descs[2] = { bs->drv->amend_opts, NULL };
    if (qemu_opts_validate(opts, descs, errp) < 0) {
        return -EINVAL;
    }
    SyncArgs a = { .op = SYNC_AMEND, .bs = bs, .opts = opts, .force = force,
                   .errp = errp };
    return bdrv_sync(&a);
}

int bdrv_make_empty(BlockDriverState *bs)
{
    SyncArgs a = { .op = SYNC_MAKE_EMPTY, .bs = bs };
    return bdrv_sync(&a);
}

int bdrv_snapshot_create(BlockDriverState *bs, QEMUSnapshotInfo *sn,
                         Error **errp)
{
    SyncArgs a = { .op = SYNC_SN_CREATE, .bs = bs, .sn = sn, .errp = errp };
    return bdrv_sync(&a);
}

int bdrv_snapshot_goto(BlockDriverState *bs, const char *snapshot_id,
                       Error **errp)
{
    SyncArgs a = { .op = SYNC_SN_GOTO, .bs = bs, .s1 = snapshot_id,
                   .errp = errp };
    return bdrv_sync(&a);
}

int bdrv_snapshot_delete(BlockDriverState *bs, const char *snapshot_id,
                         const char *name, Error **errp)
{
    SyncArgs a = { .op = SYNC_SN_DELETE, .bs = bs, .s1 = snapshot_id,
                   .s2 = name, .errp = errp };
    return bdrv_sync(&a);
}

int bdrv_snapshot_list(BlockDriverState *bs, QEMUSnapshotInfo **psn_info)
{
    SyncArgs a = { .op = SYNC_SN_LIST, .bs = bs, .psn = psn_info };
    *psn_info = NULL;
    return bdrv_sync(&a);
}

bool bdrv_can_snapshot(BlockDriverState *bs)
{
    BlockDriverState *node = bdrv_snapshot_node(bs);
    return node && !node->read_only;
}

int bdrv_snapshot_find(BlockDriverState *bs, QEMUSnapshotInfo *sn,
                       const char *name)
{
    QEMUSnapshotInfo *list;
    int n = bdrv_snapshot_list(bs, &list);
    int ret = -ENOENT;

    for (int i = 0; i < n; i++) {
        if (!strcmp(list[i].name, name)) {
            *sn = list[i];
            ret = 0;
            break;
        }
    }
    g_free(list);
    return n < 0 ? n : ret;
}

int bdrv_save_vmstate(BlockDriverState *bs, const uint8_t *buf, int64_t pos,
                      int size)
{
    QEMUIOVector qiov;
    qemu_iovec_init_buf(&qiov, (void *)buf, size);
    SyncArgs a = { .op = SYNC_VM_SAVE, .bs = bs, .offset = pos,
                   .qiov = &qiov };
    return bdrv_sync(&a);
}

int bdrv_load_vmstate(BlockDriverState *bs, uint8_t *buf, int64_t pos,
                      int size)
{
    QEMUIOVector qiov;
    qemu_iovec_init_buf(&qiov, buf, size);
    SyncArgs a = { .op = SYNC_VM_LOAD, .bs = bs, .offset = pos,
                   .qiov = &qiov };
    return bdrv_sync(&a);
}

/* ---- asynchronous wrappers ---- */

typedef struct AioArgs {
    SyncArgs a;
    BlockCompletionFunc *cb;
    void *opaque;
    bool submitting;
    bool done;
} AioArgs;

static void bdrv_aio_complete(void *opaque)
{
    AioArgs *acb = opaque;
    acb->cb(acb->opaque, acb->a.ret);
    g_free(acb);
}

static void coroutine_fn bdrv_aio_entry(void *opaque)
{
    AioArgs *acb = opaque;

    acb->a.bs->in_flight++;
    bdrv_sync_entry(&acb->a);
    acb->a.bs->in_flight--;
    acb->done = true;
    /* Callbacks never run before the submitting function returned. */
    if (!acb->submitting) {
        bdrv_aio_complete(acb);
    }
}

static void bdrv_aio_submit(AioArgs *acb)
{
    acb->submitting = true;
    qemu_coroutine_enter(qemu_coroutine_create(bdrv_aio_entry, acb));
    acb->submitting = false;
    if (acb->done) {
        aio_bh_schedule_oneshot(qemu_get_aio_context(), bdrv_aio_complete,
                                acb);
    }
}

static AioArgs *bdrv_aio_new(SyncOp op, BlockDriverState *bs, int64_t offset,
                             int64_t bytes, QEMUIOVector *qiov,
                             BdrvRequestFlags flags, BlockCompletionFunc *cb,
                             void *opaque)
{
    AioArgs *acb = g_new0(AioArgs, 1);
    acb->a.op = op;
    acb->a.bs = bs;
    acb->a.offset = offset;
    acb->a.bytes = bytes;
    acb->a.qiov = qiov;
    acb->a.flags = flags;
    acb->cb = cb;
    acb->opaque = opaque;
    return acb;
}

void bdrv_aio_preadv(BlockDriverState *bs, int64_t offset, QEMUIOVector *qiov,
                     BdrvRequestFlags flags, BlockCompletionFunc *cb,
                     void *opaque)
{
    bdrv_aio_submit(bdrv_aio_new(SYNC_READ, bs, offset, qiov->size, qiov,
                                 flags, cb, opaque));
}

void bdrv_aio_pwritev(BlockDriverState *bs, int64_t offset,
                      QEMUIOVector *qiov, BdrvRequestFlags flags,
                      BlockCompletionFunc *cb, void *opaque)
{
    bdrv_aio_submit(bdrv_aio_new(SYNC_WRITE, bs, offset, qiov->size, qiov,
                                 flags, cb, opaque));
}

void bdrv_aio_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                            int64_t bytes, BdrvRequestFlags flags,
                            BlockCompletionFunc *cb, void *opaque)
{
    bdrv_aio_submit(bdrv_aio_new(SYNC_ZEROES, bs, offset, bytes, NULL, flags,
                                 cb, opaque));
}

void bdrv_aio_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes,
                       BlockCompletionFunc *cb, void *opaque)
{
    bdrv_aio_submit(bdrv_aio_new(SYNC_DISCARD, bs, offset, bytes, NULL, 0,
                                 cb, opaque));
}

void bdrv_aio_flush(BlockDriverState *bs, BlockCompletionFunc *cb,
                    void *opaque)
{
    bdrv_aio_submit(bdrv_aio_new(SYNC_FLUSH, bs, 0, 0, NULL, 0, cb, opaque));
}

/* ---- blkdebug events ---- */

void bdrv_debug_event(BlockDriverState *bs, const char *event)
{
    while (bs && bs->drv) {
        if (bs->drv->bdrv_debug_event) {
            bs->drv->bdrv_debug_event(bs, event);
            return;
        }
        bs = bs->file;
    }
}

/* Every blkdebug-like node at or below bs (file, data and backing). */
static void bdrv_debug_nodes(BlockDriverState *bs, GPtrArray *out)
{
    if (!bs || !bs->drv) {
        return;
    }
    if (bs->drv->bdrv_debug_breakpoint) {
        g_ptr_array_add(out, bs);
    }
    bdrv_debug_nodes(bs->file, out);
    bdrv_debug_nodes(bs->data_file, out);
    bdrv_debug_nodes(bs->backing, out);
}

/*
 * Breakpoints go to every blkdebug node below bs (an event may be raised on
 * the metadata file, the data file or the backing); the others apply to the
 * nodes that know the tag.
 */
int bdrv_debug_breakpoint(BlockDriverState *bs, const char *event,
                          const char *tag)
{
    GPtrArray *nodes = g_ptr_array_new();
    int ret = -ENOTSUP;

    bdrv_debug_nodes(bs, nodes);
    for (guint i = 0; i < nodes->len; i++) {
        BlockDriverState *d = g_ptr_array_index(nodes, i);
        ret = d->drv->bdrv_debug_breakpoint(d, event, tag);
    }
    g_ptr_array_free(nodes, TRUE);
    return ret;
}

int bdrv_debug_remove_breakpoint(BlockDriverState *bs, const char *tag)
{
    GPtrArray *nodes = g_ptr_array_new();
    int ret;

    bdrv_debug_nodes(bs, nodes);
    ret = nodes->len ? -ENOENT : -ENOTSUP;
    for (guint i = 0; i < nodes->len; i++) {
        BlockDriverState *d = g_ptr_array_index(nodes, i);
        if (d->drv->bdrv_debug_remove_breakpoint(d, tag) == 0) {
            ret = 0;
        }
    }
    g_ptr_array_free(nodes, TRUE);
    return ret;
}

int bdrv_debug_resume(BlockDriverState *bs, const char *tag)
{
    GPtrArray *nodes = g_ptr_array_new();
    int ret;

    bdrv_debug_nodes(bs, nodes);
    ret = nodes->len ? -ENOENT : -ENOTSUP;
    for (guint i = 0; i < nodes->len && ret < 0; i++) {
        BlockDriverState *d = g_ptr_array_index(nodes, i);
        if (d->drv->bdrv_debug_is_suspended(d, tag)) {
            ret = d->drv->bdrv_debug_resume(d, tag);
        }
    }
    g_ptr_array_free(nodes, TRUE);
    return ret;
}

bool bdrv_debug_is_suspended(BlockDriverState *bs, const char *tag)
{
    GPtrArray *nodes = g_ptr_array_new();
    bool found = false;

    bdrv_debug_nodes(bs, nodes);
    for (guint i = 0; i < nodes->len && !found; i++) {
        BlockDriverState *d = g_ptr_array_index(nodes, i);
        found = d->drv->bdrv_debug_is_suspended(d, tag);
    }
    g_ptr_array_free(nodes, TRUE);
    return found;
}
