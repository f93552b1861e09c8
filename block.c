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

void image_info_add_json(ImageInfoSpecific *info, const char *key,
                         JsonValue *v)
{
    image_info_add(info, key, INFO_ITEM_JSON)->json = v;
}

JsonValue *image_info_specific_json(const ImageInfoSpecific *spec)
{
    JsonValue *data = json_new(JSON_OBJECT);

    for (guint i = 0; spec->items && i < spec->items->len; i++) {
        const InfoItem *it = g_ptr_array_index(spec->items, i);

        switch (it->type) {
        case INFO_ITEM_STRING:
            json_add_str(data, it->key, it->str ? it->str : "");
            break;
        case INFO_ITEM_INT:
            json_add_int(data, it->key, it->num);
            break;
        case INFO_ITEM_BOOL:
            json_add_bool(data, it->key, it->flag);
            break;
        case INFO_ITEM_JSON:
            json_add(data, it->key, json_copy(it->json));
            break;
        }
    }
    return data;
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
        json_free(item->json);
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

/* ---- the list of nodes (to find a node's parents) ---- */

static BlockDriverState *all_nodes;

static void bdrv_list_node(BlockDriverState *bs)
{
    bs->node_prev = NULL;
    bs->node_next = all_nodes;
    if (all_nodes) {
        all_nodes->node_prev = bs;
    }
    all_nodes = bs;
    bs->node_listed = true;
}

static void bdrv_unlist_node(BlockDriverState *bs)
{
    if (!bs->node_listed) {
        return;
    }
    if (bs->node_prev) {
        bs->node_prev->node_next = bs->node_next;
    } else {
        all_nodes = bs->node_next;
    }
    if (bs->node_next) {
        bs->node_next->node_prev = bs->node_prev;
    }
    bs->node_next = bs->node_prev = NULL;
    bs->node_listed = false;
}

BlockDriverState *bdrv_next_node(BlockDriverState *bs)
{
    return bs ? bs->node_next : all_nodes;
}

static BlockDriverState *bdrv_new(BlockDriver *drv, const char *filename,
                                  int flags)
{
    BlockDriverState *bs = g_new0(BlockDriverState, 1);
    bs->drv = drv;
    bs->refcnt = 1;
    bs->total_bytes = -1;
    bs->open_flags = flags;
    bs->read_only = !(flags & BDRV_O_RDWR);
    bs->opaque = g_malloc0(MAX(drv->instance_size, 1));
    bs->bl.request_alignment = 1;
    bs->bl.min_mem_alignment = 1;
    bs->shared_perm = BLK_PERM_ALL;
    bs->user_shared = BLK_PERM_ALL;
    pstrcpy(bs->filename, sizeof(bs->filename), filename ? filename : "");
    qemu_co_queue_init(&bs->flush_queue);
    bdrv_list_node(bs);
    return bs;
}

static void bdrv_free(BlockDriverState *bs)
{
    bdrv_unlist_node(bs);
    /* Children the driver opened itself (also after a failed open that
     * got as far as bdrv_close). */
    for (unsigned i = 0; i < bs->nb_children; i++) {
        bdrv_unref(bs->children[i]);
    }
    g_free(bs->children);
    g_free(bs->node_name);
    if (bs->options) {
        qemu_opts_del(bs->options);
    }
    if (bs->given_opts) {
        qemu_opts_del(bs->given_opts);
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
        /* Every node may be named (QEMU's node-name; kept, not used). */
        if (!strcmp(name, "node-name")) {
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
    bs->node_name = opts ? g_strdup(qemu_opt_get(opts, "node-name")) : NULL;
    bs->given_opts = opts ? qemu_opts_clone(opts) : NULL;
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
        error_setg_errno(errp, -ret, "Could not refresh total sector count");
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
    if (drv->is_filter || drv->own_children) {
        error_setg(errp, "%s '%s'%s selects the %s driver '%s', which an "
                   "image header may never name", what, name, origin,
                   drv->is_filter ? "filter" : "options-only",
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
        { "auto-read-only", 0 },        /* accepted (QEMU's); no effect */
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

/*
 * QEMU's error for options no node took: it names the first of them in
 * its QDict's order.
 */
static void bdrv_unused_backing_opt(BlockDriver *drv, QemuOpts *backing_opts,
                                    Error **errp)
{
    JsonValue *o = json_new(JSON_OBJECT);
    GPtrArray *sorted;

    for (size_t i = 0; i < qemu_opts_count(backing_opts); i++) {
        const char *name;
        g_autofree char *key = NULL;

        qemu_opts_nth(backing_opts, i, &name, NULL);
        key = g_strdup_printf("backing.%s", name);
        json_add_str(o, key, "");
    }
    sorted = json_sorted_members(o);
    error_setg(errp, "Block format '%s' does not support the option '%s'",
               drv->format_name,
               ((JsonValue *)g_ptr_array_index(sorted, 0))->key);
    g_ptr_array_free(sorted, TRUE);
    json_free(o);
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
    bs->node_name = opts ? g_strdup(qemu_opt_get(opts, "node-name")) : NULL;
    bdrv_refresh_limits(bs, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        goto fail_close;
    }
    ret = bdrv_refresh_total_bytes(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not refresh total sector count");
        goto fail_close;
    }
    if (backing_opts && qemu_opts_count(backing_opts) &&
        (a->flags & BDRV_O_NO_BACKING)) {
        /* Nothing takes them (qemu-img info opens no backing file). */
        bdrv_unused_backing_opt(drv, backing_opts, errp);
        goto fail_close;
    }
    if (!(a->flags & BDRV_O_NO_BACKING) &&
        (bs->backing_file[0] ||
         (backing_opts && qemu_opts_count(backing_opts)))) {
        /* As QEMU: backing.* options open a backing file even when the
         * header names none. */
        if (!drv->supports_backing) {
            error_setg(errp, "Driver doesn't support backing files");
            goto fail_close;
        }
        ret = bdrv_co_open_backing(bs, backing_opts, a->depth, errp);
        if (ret < 0) {
            goto fail_close;
        }
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
    const char *backing_ref = qemu_opt_get(opts, "backing");
    bool no_backing = backing_ref && !*backing_ref;

    if (no_backing) {
        qemu_opt_unset(opts, "backing");
    }
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
    if (no_backing) {
        /* "backing": null (or ""): this node opens no backing file. */
        OpenArgs na = *a;
        na.flags |= BDRV_O_NO_BACKING;
        bs = bdrv_co_open_format_node(&na, drv, file->filename, file, opts,
                                      backing_opts, errp);
    } else {
        bs = bdrv_co_open_format_node(a, drv, file->filename, file, opts,
                                      backing_opts, errp);
    }
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
    /* A protocol named as the driver (-f file, -f blkdebug) is the node;
     * so is a driver that opens its own children (quorum). */
    if ((drv && (drv->protocol_name || drv->own_children)) ||
        (!drv && proto_only)) {
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
    if (!user_name && bs->backing_file[0]) {
        /* QEMU's message when the image's directory is unknown (quorum). */
        name = bdrv_full_backing_filename(bs, errp);
        if (!name) {
            return -EINVAL;
        }
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
    if (user_name) {
        char *bname = bdrv_display_name(bs->backing);
        bs->backing_overridden = strcmp(bname, bs->backing_file) != 0;
        g_free(bname);
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
    if (!bs->drv) {
        return;         /* no medium: a reopen that could not open again */
    }
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
    /* Nothing runs beside the close: background work of the whole
     * subtree is stopped, and the section ends for the children only
     * (the closed driver hears of it no more). A node being closed is
     * nobody's child any more: no longer listed, it is no parent. */
    bdrv_unlist_node(bs);
    bdrv_drained_begin(bs);
    bdrv_run_co(bdrv_close_entry, bs);
    bdrv_drained_end_closed(bs);
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

const char *bdrv_get_protocol_name(BlockDriverState *bs)
{
    return bs->drv ? bs->drv->protocol_name : NULL;
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

BlockDriverState *bdrv_skip_filters(BlockDriverState *bs)
{
    for (int i = 0; bs && bs->drv && bs->drv->is_filter && bs->file &&
                    i < BACKING_CHAIN_MAX * 4; i++) {
        bs = bs->file;
    }
    return bs;
}

const char *bdrv_get_backing_filename(BlockDriverState *bs)
{
    return bs->backing_file;
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

Job *bdrv_get_populate_job(BlockDriverState *bs)
{
    return bs->drv && bs->drv->bdrv_get_populate_job
           ? bs->drv->bdrv_get_populate_job(bs) : NULL;
}

bool bdrv_is_encrypted(BlockDriverState *bs)
{
    return bs->encrypted;
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


/* ---- coroutine operations that are not requests ---- */

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

static int coroutine_fn bdrv_co_change_backing_file(BlockDriverState *bs,
                                                    const char *file,
                                                    const char *fmt,
                                                    Error **errp)
{
    int ret;

    if (!bs->drv->bdrv_change_backing_file) {
        error_setg(errp, "Format '%s' does not support backing files",
                   bs->drv->format_name);
        return -ENOTSUP;
    }
    if (bs->read_only) {
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    ret = bs->drv->bdrv_change_backing_file(bs, file, fmt);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not change the backing file");
        return ret;
    }
    pstrcpy(bs->backing_file, sizeof(bs->backing_file), file ? file : "");
    pstrcpy(bs->backing_format, sizeof(bs->backing_format), fmt ? fmt : "");
    return ret;
}

static int coroutine_fn bdrv_co_amend_options(BlockDriverState *bs,
                                              QemuOpts *opts, bool force,
                                              Error **errp)
{
    int ret = bs->drv->bdrv_amend_options(bs, opts, force, errp);
    if (ret >= 0) {
        bdrv_refresh_total_bytes(bs);
    }
    return ret;
}

static int coroutine_fn bdrv_co_make_empty(BlockDriverState *bs)
{
    if (!bs->drv->bdrv_make_empty) {
        return -ENOTSUP;
    }
    if (bs->read_only) {
        return -EACCES;
    }
    return bs->drv->bdrv_make_empty(bs);
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

/* The node that takes snapshots for bs, or an error naming bs's format. */
static BlockDriverState *bdrv_snapshot_node_err(BlockDriverState *bs,
                                                Error **errp)
{
    BlockDriverState *node = bdrv_snapshot_node(bs);

    if (!node) {
        error_setg(errp, "Block format '%s' used by device '' does not "
                   "support internal snapshots", bs->drv->format_name);
    }
    return node;
}

static int coroutine_fn bdrv_co_snapshot_goto(BlockDriverState *bs,
                                              const char *id, Error **errp);

/*
 * Snapshot goto through a raw-like format: the format is closed, the node
 * below switches snapshot, and the format is opened again so that it sees
 * the new content (as QEMU does).
 */
static int coroutine_fn bdrv_co_snapshot_goto_fallback(BlockDriverState *bs,
                                                       const char *id,
                                                       Error **errp)
{
    Error *local_err = NULL;
    int ret, open_ret;

    if (!bs->drv->passthrough_snapshots || !bs->file) {
        error_setg(errp, "Block driver does not support snapshots");
        return -ENOTSUP;
    }
    if (!bdrv_snapshot_node(bs->file)) {
        ret = -ENOTSUP;
        error_setg(&local_err, "Block driver does not support snapshots");
    } else {
        ret = bdrv_co_snapshot_goto(bs->file, id, &local_err);
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
    error_propagate(errp, local_err);
    return ret;
}

static int coroutine_fn bdrv_co_snapshot_goto(BlockDriverState *bs,
                                              const char *id, Error **errp)
{
    BlockDriverState *node;

    if (bs->drv && !bs->drv->bdrv_snapshot_goto) {
        return bdrv_co_snapshot_goto_fallback(bs, id, errp);
    }
    node = bdrv_snapshot_node_err(bs, errp);
    if (!node || !node->drv->bdrv_snapshot_goto) {
        return -ENOTSUP;
    }
    return node->drv->bdrv_snapshot_goto(node, id, errp);
}

static int coroutine_fn bdrv_co_snapshot_create(BlockDriverState *bs,
                                                QEMUSnapshotInfo *sn,
                                                Error **errp)
{
    BlockDriverState *node = bdrv_snapshot_node_err(bs, errp);

    if (!node) {
        return -ENOTSUP;
    }
    if (node->read_only) {
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    return node->drv->bdrv_snapshot_create(node, sn, errp);
}

static int coroutine_fn bdrv_co_snapshot_delete(BlockDriverState *bs,
                                                const char *id,
                                                const char *name,
                                                Error **errp)
{
    BlockDriverState *node = bdrv_snapshot_node_err(bs, errp);

    if (!node) {
        return -ENOTSUP;
    }
    if (!node->drv->bdrv_snapshot_delete) {
        return -ENOTSUP;
    }
    return node->drv->bdrv_snapshot_delete(node, id, name, errp);
}

static int coroutine_fn bdrv_co_snapshot_list(BlockDriverState *bs,
                                              QEMUSnapshotInfo **psn)
{
    BlockDriverState *node = bdrv_snapshot_node_err(bs, NULL);

    if (!node) {
        return -ENOTSUP;
    }
    return node->drv->bdrv_snapshot_list(node, psn);
}

/* Returns the bytes moved, or a negative errno. */
static int coroutine_fn bdrv_co_vmstate(BlockDriverState *bs,
                                        QEMUIOVector *qiov, int64_t pos,
                                        bool save)
{
    BlockDriverState *node = bdrv_vmstate_node(bs);
    int ret;

    if (!node) {
        return -ENOTSUP;
    }
    if (save) {
        if (node->read_only) {
            return -EPERM;
        }
        ret = node->drv->bdrv_co_save_vmstate(node, qiov, pos);
    } else {
        if (!node->drv->bdrv_co_load_vmstate) {
            return -ENOTSUP;
        }
        ret = node->drv->bdrv_co_load_vmstate(node, qiov, pos);
    }
    return ret < 0 ? ret : (int)qiov->size;
}

/* ---- synchronous wrappers ---- */

/*
 * One wrapper per operation: its arguments in a struct, an entry that calls
 * the coroutine function, and bdrv_run_co() (which calls the entry directly
 * when already in a coroutine, else runs it and polls until it returns).
 */
typedef struct RwCo {
    BlockDriverState *bs;
    int64_t offset, bytes;
    QEMUIOVector *qiov;
    BdrvRequestFlags flags;
    int ret;
} RwCo;

static void coroutine_fn bdrv_preadv_entry(void *opaque)
{
    RwCo *c = opaque;
    c->ret = bdrv_co_preadv(c->bs, c->offset, c->bytes, c->qiov, c->flags);
}

static void coroutine_fn bdrv_pwritev_entry(void *opaque)
{
    RwCo *c = opaque;
    c->ret = bdrv_co_pwritev(c->bs, c->offset, c->bytes, c->qiov, c->flags);
}

static void coroutine_fn bdrv_pwrite_zeroes_entry(void *opaque)
{
    RwCo *c = opaque;
    c->ret = bdrv_co_pwrite_zeroes(c->bs, c->offset, c->bytes, c->flags);
}

static void coroutine_fn bdrv_pdiscard_entry(void *opaque)
{
    RwCo *c = opaque;
    c->ret = bdrv_co_pdiscard(c->bs, c->offset, c->bytes);
}

static void coroutine_fn bdrv_flush_entry(void *opaque)
{
    RwCo *c = opaque;
    c->ret = bdrv_co_flush(c->bs);
}

static int bdrv_rw_co(CoroutineEntry *entry, BlockDriverState *bs,
                      int64_t offset, int64_t bytes, QEMUIOVector *qiov,
                      BdrvRequestFlags flags)
{
    RwCo c = { .bs = bs, .offset = offset, .bytes = bytes, .qiov = qiov,
               .flags = flags };
    bdrv_run_co(entry, &c);
    return c.ret;
}

int bdrv_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    return bdrv_rw_co(bdrv_preadv_entry, bs, offset, bytes, qiov, flags);
}

int bdrv_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                 QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    return bdrv_rw_co(bdrv_pwritev_entry, bs, offset, bytes, qiov, flags);
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
    return bdrv_rw_co(bdrv_pwrite_zeroes_entry, bs, offset, bytes, NULL,
                      flags);
}

int bdrv_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return bdrv_rw_co(bdrv_pdiscard_entry, bs, offset, bytes, NULL, 0);
}

int bdrv_flush(BlockDriverState *bs)
{
    return bdrv_rw_co(bdrv_flush_entry, bs, 0, 0, NULL, 0);
}

typedef struct StatusCo {
    BlockDriverState *bs, *base;
    int64_t offset, bytes;
    int64_t *pnum, *map;
    BlockDriverState **file;
    int *depth;
    int ret;
} StatusCo;

static void coroutine_fn bdrv_block_status_above_entry(void *opaque)
{
    StatusCo *c = opaque;
    c->ret = bdrv_co_block_status_above(c->bs, c->base, c->offset, c->bytes,
                                        c->pnum, c->map, c->file, c->depth);
}

static void coroutine_fn bdrv_block_status_entry(void *opaque)
{
    StatusCo *c = opaque;
    c->ret = bdrv_co_block_status(c->bs, c->offset, c->bytes, c->pnum,
                                  c->map, c->file);
}

int bdrv_block_status(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum, int64_t *map, BlockDriverState **file)
{
    int64_t dummy;
    StatusCo c = { .bs = bs, .offset = offset, .bytes = bytes,
                   .pnum = pnum ? pnum : &dummy, .map = map, .file = file };
    bdrv_run_co(bdrv_block_status_entry, &c);
    return c.ret;
}

int bdrv_block_status_above(BlockDriverState *bs, BlockDriverState *base,
                            int64_t offset, int64_t bytes, int64_t *pnum,
                            int64_t *map, BlockDriverState **file,
                            int *depth)
{
    int64_t dummy;
    StatusCo c = { .bs = bs, .base = base, .offset = offset, .bytes = bytes,
                   .pnum = pnum ? pnum : &dummy, .map = map, .file = file,
                   .depth = depth };
    bdrv_run_co(bdrv_block_status_above_entry, &c);
    return c.ret;
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

typedef struct TruncateCo {
    BlockDriverState *bs;
    int64_t offset;
    bool exact;
    PreallocMode prealloc;
    Error **errp;
    int ret;
} TruncateCo;

static void coroutine_fn bdrv_truncate_entry(void *opaque)
{
    TruncateCo *c = opaque;
    c->ret = bdrv_co_truncate(c->bs, c->offset, c->exact, c->prealloc,
                              c->errp);
}

int bdrv_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                  PreallocMode prealloc, Error **errp)
{
    TruncateCo c = { .bs = bs, .offset = offset, .exact = exact,
                     .prealloc = prealloc, .errp = errp };
    bdrv_run_co(bdrv_truncate_entry, &c);
    return c.ret;
}

typedef struct CheckCo {
    BlockDriverState *bs;
    BdrvCheckResult *res;
    BdrvCheckMode fix;
    int ret;
} CheckCo;

static void coroutine_fn bdrv_check_entry(void *opaque)
{
    CheckCo *c = opaque;
    c->ret = bdrv_co_check(c->bs, c->res, c->fix);
}

int bdrv_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix)
{
    CheckCo c = { .bs = bs, .res = res, .fix = fix };
    bdrv_run_co(bdrv_check_entry, &c);
    return c.ret;
}

/* Operations that name up to two strings (backing, snapshot id/name). */
typedef struct NamesCo {
    BlockDriverState *bs;
    const char *s1, *s2;
    QEMUSnapshotInfo *sn;
    QEMUSnapshotInfo **psn;
    Error **errp;
    int ret;
} NamesCo;

static void coroutine_fn bdrv_change_backing_file_entry(void *opaque)
{
    NamesCo *c = opaque;
    c->ret = bdrv_co_change_backing_file(c->bs, c->s1, c->s2, c->errp);
}

int bdrv_change_backing_file(BlockDriverState *bs, const char *backing_file,
                             const char *backing_fmt, Error **errp)
{
    NamesCo c = { .bs = bs, .s1 = backing_file, .s2 = backing_fmt,
                  .errp = errp };
    bdrv_run_co(bdrv_change_backing_file_entry, &c);
    return c.ret;
}

void bdrv_set_backing_hd(BlockDriverState *bs, BlockDriverState *backing)
{
    BlockDriverState *old = bs->backing;

    if (backing) {
        bdrv_ref(backing);
    }
    /* A graph change: no request of bs's users runs across it, and
     * whatever sections bs is in cover the new child instead of the old. */
    bdrv_drained_begin(bs);
    bdrv_replace_child_drained(bs, &bs->backing, backing);
    bdrv_drained_end(bs);
    bdrv_unref(old);
}

typedef struct AmendCo {
    BlockDriverState *bs;
    QemuOpts *opts;
    bool force;
    Error **errp;
    int ret;
} AmendCo;

static void coroutine_fn bdrv_amend_options_entry(void *opaque)
{
    AmendCo *c = opaque;
    c->ret = bdrv_co_amend_options(c->bs, c->opts, c->force, c->errp);
}

/* Whether bs's driver can amend opts: 0, or the error. */
static int bdrv_amend_check(BlockDriverState *bs, QemuOpts *opts,
                            Error **errp)
{
    if (!bs->drv->bdrv_amend_options || !bs->drv->amend_opts) {
        error_setg(errp, "Format driver '%s' does not support option "
                   "amendment", bs->drv->format_name);
        return -ENOTSUP;
    }
    const QemuOptDesc *descs[2] = { bs->drv->amend_opts, NULL };
    Error *local_err = NULL;
    if (qemu_opts_validate(opts, descs, &local_err) < 0) {
        /* QEMU's hint when the options are valid for creation only. */
        const QemuOptDesc *both[3] = { bs->drv->amend_opts,
                                       bs->drv->create_opts, NULL };
        if (bs->drv->create_opts &&
            qemu_opts_validate(opts, both, NULL) == 0) {
            error_append_hint(&local_err, "This option is only supported "
                              "for image creation\n");
        }
        error_propagate(errp, local_err);
        return -EINVAL;
    }
    return 0;
}

int bdrv_amend_options(BlockDriverState *bs, QemuOpts *opts, bool force,
                       Error **errp)
{
    int ret = bdrv_amend_check(bs, opts, errp);

    if (ret < 0) {
        return ret;
    }
    AmendCo c = { .bs = bs, .opts = opts, .force = force, .errp = errp };
    bdrv_run_co(bdrv_amend_options_entry, &c);
    return c.ret;
}

int coroutine_fn bdrv_co_amend_job(BlockDriverState *bs, QemuOpts *opts,
                                   bool force, Job *job, Error **errp)
{
    int ret = bdrv_amend_check(bs, opts, errp);

    if (ret < 0) {
        return ret;
    }
    assert(!bs->amend_job);
    bs->amend_job = job;
    ret = bdrv_co_amend_options(bs, opts, force, errp);
    bs->amend_job = NULL;
    return ret;
}

void bdrv_amend_progress(BlockDriverState *bs, uint64_t done, uint64_t total)
{
    if (bs->amend_job) {
        job_progress_set(bs->amend_job, done, total);
    }
}

static void coroutine_fn bdrv_make_empty_entry(void *opaque)
{
    NamesCo *c = opaque;
    c->ret = bdrv_co_make_empty(c->bs);
}

int bdrv_make_empty(BlockDriverState *bs)
{
    NamesCo c = { .bs = bs };
    bdrv_run_co(bdrv_make_empty_entry, &c);
    return c.ret;
}

typedef struct BitmapOpCo {
    BlockDriverState *bs;
    const BdrvBitmapOp *ops;
    int nb_ops;
    int *failed;
    Error **errp;
    int ret;
} BitmapOpCo;

static void coroutine_fn bdrv_bitmap_ops_entry(void *opaque)
{
    BitmapOpCo *c = opaque;
    c->ret = c->bs->drv->bdrv_co_bitmap_ops(c->bs, c->ops, c->nb_ops,
                                            c->failed, c->errp);
}

int bdrv_bitmap_ops(BlockDriverState *bs, const BdrvBitmapOp *ops,
                    int nb_ops, int *failed, Error **errp)
{
    BitmapOpCo c = { .bs = bs, .ops = ops, .nb_ops = nb_ops,
                     .failed = failed, .errp = errp };

    *failed = 0;
    if (!bs->drv || !bs->drv->bdrv_co_bitmap_ops) {
        /* As QEMU: the first operation fails (add: no persistent bitmaps
         * here; the others: no such bitmap). */
        if (ops[0].type == BITMAP_OP_ADD) {
            error_setg(errp, "Can't store persistent bitmaps to '%s': "
                       "Operation not supported", bdrv_get_format_name(bs));
            return -ENOTSUP;
        }
        error_setg(errp, "Dirty bitmap '%s' not found", ops[0].name);
        return -ENOENT;
    }
    bdrv_drained_begin(bs);
    bdrv_run_co(bdrv_bitmap_ops_entry, &c);
    bdrv_drained_end(bs);
    return c.ret;
}

bool bdrv_supports_persistent_bitmaps(BlockDriverState *bs)
{
    return bs->drv && bs->drv->bdrv_supports_persistent_bitmaps &&
           bs->drv->bdrv_supports_persistent_bitmaps(bs);
}

typedef struct BitmapListCo {
    BlockDriverState *bs;
    BdrvBitmapInfo **list;
    int *n;
    Error **errp;
    int ret;
} BitmapListCo;

static void coroutine_fn bdrv_bitmap_list_entry(void *opaque)
{
    BitmapListCo *c = opaque;
    c->ret = c->bs->drv->bdrv_co_bitmap_list(c->bs, c->list, c->n, c->errp);
}

int bdrv_bitmap_list(BlockDriverState *bs, BdrvBitmapInfo **list, int *n,
                     Error **errp)
{
    BitmapListCo c = { .bs = bs, .list = list, .n = n, .errp = errp };

    *list = NULL;
    *n = 0;
    if (!bs->drv || !bs->drv->bdrv_co_bitmap_list) {
        return 0;
    }
    bdrv_run_co(bdrv_bitmap_list_entry, &c);
    return c.ret;
}

void bdrv_bitmap_list_free(BdrvBitmapInfo *list, int n)
{
    for (int i = 0; i < n; i++) {
        g_free(list[i].name);
    }
    g_free(list);
}

static void coroutine_fn bdrv_snapshot_create_entry(void *opaque)
{
    NamesCo *c = opaque;
    c->ret = bdrv_co_snapshot_create(c->bs, c->sn, c->errp);
}

/* Snapshot operations never run beside I/O: in a drained section. */
static int bdrv_snapshot_run(CoroutineEntry *entry, NamesCo *c)
{
    BlockDriverState *bs = c->bs;

    bdrv_drained_begin(bs);
    bdrv_run_co(entry, c);
    bdrv_drained_end(bs);
    return c->ret;
}

int bdrv_snapshot_create(BlockDriverState *bs, QEMUSnapshotInfo *sn,
                         Error **errp)
{
    NamesCo c = { .bs = bs, .sn = sn, .errp = errp };
    return bdrv_snapshot_run(bdrv_snapshot_create_entry, &c);
}

static void coroutine_fn bdrv_snapshot_goto_entry(void *opaque)
{
    NamesCo *c = opaque;
    c->ret = bdrv_co_snapshot_goto(c->bs, c->s1, c->errp);
}

int bdrv_snapshot_goto(BlockDriverState *bs, const char *snapshot_id,
                       Error **errp)
{
    NamesCo c = { .bs = bs, .s1 = snapshot_id, .errp = errp };
    return bdrv_snapshot_run(bdrv_snapshot_goto_entry, &c);
}

static void coroutine_fn bdrv_snapshot_load_tmp_entry(void *opaque)
{
    NamesCo *c = opaque;
    BlockDriverState *node = bdrv_snapshot_node(c->bs);

    if (!node || !node->drv->bdrv_snapshot_load_tmp) {
        error_setg(c->errp, "Block format '%s' used by device '' does not "
                   "support temporarily loading internal snapshots",
                   c->bs->drv->format_name);
        c->ret = -ENOTSUP;
        return;
    }
    if (!node->read_only) {
        error_setg(c->errp, "Device '' is writable, cannot load a snapshot "
                   "temporarily");
        c->ret = -EINVAL;
        return;
    }
    c->ret = node->drv->bdrv_snapshot_load_tmp(node, c->s1, c->s2, c->errp);
    if (c->ret >= 0) {
        bdrv_refresh_total_bytes(node);
        if (node != c->bs) {
            bdrv_refresh_total_bytes(c->bs);
        }
    }
}

int bdrv_snapshot_load_tmp(BlockDriverState *bs, const char *snapshot_id,
                           const char *name, Error **errp)
{
    NamesCo c = { .bs = bs, .s1 = snapshot_id, .s2 = name, .errp = errp };
    return bdrv_snapshot_run(bdrv_snapshot_load_tmp_entry, &c);
}

QemuOpts *bdrv_snapshot_param_parse(const char *arg, Error **errp)
{
    static const QemuOptDesc desc[] = {
        { "snapshot.id", QEMU_OPT_STRING, "snapshot id" },
        { "snapshot.name", QEMU_OPT_STRING, "snapshot name" },
        { NULL }
    };
    const QemuOptDesc *const descs[] = { desc, NULL };
    QemuOpts *opts = qemu_opts_new();

    if (qemu_opts_parse(opts, arg, NULL, errp) < 0 ||
        qemu_opts_validate(opts, descs, errp) < 0) {
        qemu_opts_del(opts);
        return NULL;
    }
    return opts;
}

int bdrv_snapshot_load_tmp_by_id_or_name(BlockDriverState *bs,
                                         const char *id_or_name,
                                         Error **errp)
{
    Error *err = NULL;
    int ret = bdrv_snapshot_load_tmp(bs, id_or_name, NULL, &err);

    if (ret == -ENOENT) {
        error_free(err);
        err = NULL;
        ret = bdrv_snapshot_load_tmp(bs, NULL, id_or_name, &err);
    }
    if (err) {
        error_propagate(errp, err);
    }
    return ret;
}

static void coroutine_fn bdrv_snapshot_delete_entry(void *opaque)
{
    NamesCo *c = opaque;
    c->ret = bdrv_co_snapshot_delete(c->bs, c->s1, c->s2, c->errp);
}

int bdrv_snapshot_delete(BlockDriverState *bs, const char *snapshot_id,
                         const char *name, Error **errp)
{
    NamesCo c = { .bs = bs, .s1 = snapshot_id, .s2 = name, .errp = errp };
    return bdrv_snapshot_run(bdrv_snapshot_delete_entry, &c);
}

static void coroutine_fn bdrv_snapshot_list_entry(void *opaque)
{
    NamesCo *c = opaque;
    c->ret = bdrv_co_snapshot_list(c->bs, c->psn);
}

int bdrv_snapshot_list(BlockDriverState *bs, QEMUSnapshotInfo **psn_info)
{
    NamesCo c = { .bs = bs, .psn = psn_info };
    *psn_info = NULL;
    bdrv_run_co(bdrv_snapshot_list_entry, &c);
    return c.ret;
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

typedef struct VmstateCo {
    BlockDriverState *bs;
    QEMUIOVector *qiov;
    int64_t pos;
    bool save;
    int ret;
} VmstateCo;

static void coroutine_fn bdrv_vmstate_entry(void *opaque)
{
    VmstateCo *c = opaque;
    c->ret = bdrv_co_vmstate(c->bs, c->qiov, c->pos, c->save);
}

int bdrv_save_vmstate(BlockDriverState *bs, const uint8_t *buf, int64_t pos,
                      int size)
{
    QEMUIOVector qiov;
    qemu_iovec_init_buf(&qiov, (void *)buf, size);
    VmstateCo c = { .bs = bs, .qiov = &qiov, .pos = pos, .save = true };
    bdrv_run_co(bdrv_vmstate_entry, &c);
    return c.ret;
}

int bdrv_load_vmstate(BlockDriverState *bs, uint8_t *buf, int64_t pos,
                      int size)
{
    QEMUIOVector qiov;
    qemu_iovec_init_buf(&qiov, buf, size);
    VmstateCo c = { .bs = bs, .qiov = &qiov, .pos = pos, .save = false };
    bdrv_run_co(bdrv_vmstate_entry, &c);
    return c.ret;
}

/* ---- asynchronous wrappers ---- */

/* A request run in its own coroutine; the entry is one of the RwCo ones. */
typedef struct AioArgs {
    BdrvAioTask t;              /* first: the block is freed through it */
    RwCo c;
} AioArgs;

static void bdrv_aio_submit(CoroutineEntry *entry, BlockDriverState *bs,
                            int64_t offset, int64_t bytes, QEMUIOVector *qiov,
                            BdrvRequestFlags flags, BlockCompletionFunc *cb,
                            void *opaque)
{
    AioArgs *acb = g_new0(AioArgs, 1);

    acb->c = (RwCo) { .bs = bs, .offset = offset, .bytes = bytes,
                      .qiov = qiov, .flags = flags };
    acb->t = (BdrvAioTask) { .entry = entry, .arg = &acb->c,
                             .ret = &acb->c.ret, .in_flight = &bs->in_flight,
                             .cb = cb, .opaque = opaque };
    bdrv_aio_task_start(&acb->t);
}

void bdrv_aio_preadv(BlockDriverState *bs, int64_t offset, QEMUIOVector *qiov,
                     BdrvRequestFlags flags, BlockCompletionFunc *cb,
                     void *opaque)
{
    bdrv_aio_submit(bdrv_preadv_entry, bs, offset, qiov->size, qiov, flags,
                    cb, opaque);
}

void bdrv_aio_pwritev(BlockDriverState *bs, int64_t offset,
                      QEMUIOVector *qiov, BdrvRequestFlags flags,
                      BlockCompletionFunc *cb, void *opaque)
{
    bdrv_aio_submit(bdrv_pwritev_entry, bs, offset, qiov->size, qiov, flags,
                    cb, opaque);
}

void bdrv_aio_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                            int64_t bytes, BdrvRequestFlags flags,
                            BlockCompletionFunc *cb, void *opaque)
{
    bdrv_aio_submit(bdrv_pwrite_zeroes_entry, bs, offset, bytes, NULL, flags,
                    cb, opaque);
}

void bdrv_aio_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes,
                       BlockCompletionFunc *cb, void *opaque)
{
    bdrv_aio_submit(bdrv_pdiscard_entry, bs, offset, bytes, NULL, 0, cb,
                    opaque);
}

void bdrv_aio_flush(BlockDriverState *bs, BlockCompletionFunc *cb,
                    void *opaque)
{
    bdrv_aio_submit(bdrv_flush_entry, bs, 0, 0, NULL, 0, cb, opaque);
}

/* ---- reopen ---- */

/* The open flags a reopen may change; the others stay as opened. */
#define BDRV_REOPEN_FLAGS (BDRV_O_RDWR | BDRV_O_NOCACHE | BDRV_O_NO_FLUSH | \
                           BDRV_O_UNMAP | BDRV_O_NATIVE_AIO)

typedef struct ReopenEntry {
    BdrvReopenState state;
    int old_flags;
    QemuOpts *old_options;
    bool changes;               /* flags or options differ */
    bool generic;               /* no callbacks: closed and opened again */
    bool prepared;              /* the driver's prepare succeeded */
    bool closed;                /* generic: driver closed in commit */
} ReopenEntry;

static bool bdrv_reopen_queued(GPtrArray *q, BlockDriverState *bs)
{
    for (guint i = 0; i < q->len; i++) {
        if (((ReopenEntry *)g_ptr_array_index(q, i))->state.bs == bs) {
            return true;
        }
    }
    return false;
}

/*
 * Queue bs with flags (only BDRV_REOPEN_FLAGS of them count) and, parents
 * first, every node below: its file and data file follow bs's flags,
 * backing files keep read-only but follow the cache mode.
 */
static void bdrv_reopen_queue(GPtrArray *q, BlockDriverState *bs, int flags,
                              QemuOpts *options, int depth)
{
    if (!bs || !bs->drv || depth > BACKING_CHAIN_MAX * 4 ||
        bdrv_reopen_queued(q, bs)) {
        return;
    }
    ReopenEntry *e = g_new0(ReopenEntry, 1);
    int nflags = (bs->open_flags & ~BDRV_REOPEN_FLAGS) |
                 (flags & BDRV_REOPEN_FLAGS);

    e->state.bs = bs;
    e->state.flags = nflags;
    e->old_flags = bs->open_flags;
    e->old_options = bs->options;
    QemuOpts *own = options ? qemu_opts_clone(options) : NULL;
    QemuOpts *file_opts = own ? qemu_opts_extract_prefix(own, "file") : NULL;
    QemuOpts *backing_opts = own ? qemu_opts_extract_prefix(own, "backing")
                                 : NULL;

    options = own;
    if (options && qemu_opts_count(options)) {
        e->state.options = bs->options ? qemu_opts_clone(bs->options)
                                       : qemu_opts_new();
        if (bs->drv->bdrv_join_options) {
            bs->drv->bdrv_join_options(e->state.options, options);
        }
        for (size_t i = 0; i < qemu_opts_count(options); i++) {
            const char *name, *value;
            qemu_opts_nth(options, i, &name, &value);
            qemu_opt_set(e->state.options, name, value);
        }
    }
    e->changes = nflags != bs->open_flags || e->state.options;
    e->generic = e->changes && !bs->drv->bdrv_reopen_prepare;
    g_ptr_array_add(q, e);

    qemu_opts_del(own);

    bdrv_reopen_queue(q, bs->file, nflags, file_opts, depth + 1);
    /* A format opened again opens its data file again itself. */
    if (!e->generic && bs->data_file != bs->file) {
        bdrv_reopen_queue(q, bs->data_file, nflags, NULL, depth + 1);
    }
    if (bs->backing) {
        int bflags = (nflags & ~BDRV_O_RDWR) |
                     (bs->backing->open_flags & BDRV_O_RDWR);
        bdrv_reopen_queue(q, bs->backing, bflags, backing_opts, depth + 1);
    }
    qemu_opts_del(file_opts);
    qemu_opts_del(backing_opts);
}

static void bdrv_reopen_entry_free(gpointer p)
{
    ReopenEntry *e = p;
    if (e->state.options && e->state.options != e->state.bs->options) {
        qemu_opts_del(e->state.options);
    }
    g_free(e);
}

/* Prepare one node: checks, flush before it stops writing, the driver. */
static int bdrv_reopen_prepare(ReopenEntry *e, Error **errp)
{
    BlockDriverState *bs = e->state.bs;
    BlockDriver *drv = bs->drv;
    int ret;

    if (!e->changes) {
        return 0;
    }
    if ((e->state.flags & BDRV_O_RDWR) && !(e->old_flags & BDRV_O_RDWR) &&
        (e->old_flags & BDRV_O_NO_IO)) {
        error_setg(errp, "Cannot make '%s' writable: opened for metadata "
                   "only", bs->filename);
        return -EINVAL;
    }
    if (e->state.options) {
        /* The driver and the node's name stay what they are (QEMU's). */
        const char *nd = qemu_opt_get(e->state.options, "driver");
        const char *nn = qemu_opt_get(e->state.options, "node-name");
        const char *on = bs->node_name;
        if (nd && strcmp(nd, drv->format_name)) {
            error_setg(errp, "Cannot change the option 'driver'");
            return -EINVAL;
        }
        qemu_opt_unset(e->state.options, "driver");
        if (nn && (!on || strcmp(nn, on))) {
            error_setg(errp, "Cannot change the option 'node-name'");
            return -EINVAL;
        }
    }
    if (e->state.options &&
        bdrv_validate_open_opts(drv, e->state.options, errp) < 0) {
        return -EINVAL;
    }
    if (!(e->state.flags & BDRV_O_RDWR) && !bs->read_only) {
        ret = bdrv_flush(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not flush '%s'",
                             bs->filename);
            return ret;
        }
    }
    if (drv->bdrv_reopen_prepare) {
        ret = drv->bdrv_reopen_prepare(&e->state, errp);
        if (ret < 0) {
            return ret;
        }
        e->prepared = true;
    }
    return 0;
}

static void bdrv_reopen_abort_one(ReopenEntry *e)
{
    if (e->prepared && e->state.bs->drv->bdrv_reopen_abort) {
        e->state.bs->drv->bdrv_reopen_abort(&e->state);
    }
    e->prepared = false;
}

static void coroutine_fn bdrv_reopen_close_entry(void *opaque)
{
    BlockDriverState *bs = opaque;
    bs->drv->bdrv_close(bs);
}

/* Generic nodes, parents first: the driver closes with its old flags. */
static void bdrv_reopen_close_generic(ReopenEntry *e)
{
    BlockDriverState *bs = e->state.bs;

    if (!e->generic) {
        return;
    }
    if (bs->data_file && bs->data_file != bs->file) {
        /* The driver replaces it: sections move off the old one. */
        bdrv_replace_child_drained(bs, &bs->data_file, NULL);
    }
    if (bs->drv->bdrv_close) {
        bdrv_run_co(bdrv_reopen_close_entry, bs);
    }
    memset(bs->opaque, 0, bs->drv->instance_size);
    e->closed = true;
}

typedef struct ReopenOpenArgs {
    BlockDriverState *bs;
    QemuOpts *options;
    int flags;
    Error **errp;
    int ret;
} ReopenOpenArgs;

static void coroutine_fn bdrv_reopen_open_entry(void *opaque)
{
    ReopenOpenArgs *a = opaque;
    a->ret = a->bs->drv->bdrv_open(a->bs, a->options, a->flags, a->errp);
}

/*
 * Generic nodes, children first: the driver opens with the new flags; if
 * that fails, with the old ones again (the error is still reported), and
 * if that fails too the node has no medium.
 */
static int bdrv_reopen_open_generic(ReopenEntry *e, Error **errp)
{
    BlockDriverState *bs = e->state.bs;
    QemuOpts *opts = e->state.options ? e->state.options : bs->options;
    ReopenOpenArgs a = { .bs = bs, .options = opts, .flags = e->state.flags,
                         .errp = errp };

    if (!e->closed) {
        return 0;
    }
    bs->open_flags = e->state.flags;
    bs->read_only = !(e->state.flags & BDRV_O_RDWR);
    bdrv_run_co(bdrv_reopen_open_entry, &a);
    if (a.ret < 0) {
        memset(bs->opaque, 0, bs->drv->instance_size);
        a = (ReopenOpenArgs) { .bs = bs, .options = bs->options,
                               .flags = e->old_flags };
        bs->open_flags = e->old_flags;
        bs->read_only = !(e->old_flags & BDRV_O_RDWR);
        bdrv_run_co(bdrv_reopen_open_entry, &a);
        if (a.ret < 0) {
            bs->drv = NULL;             /* no medium: requests fail */
        }
        return -EIO;
    }
    if (bs->data_file && bs->data_file != bs->file) {
        BlockDriverState *d = bs->data_file;
        bs->data_file = NULL;
        bdrv_replace_child_drained(bs, &bs->data_file, d);
    }
    if (e->state.options) {
        bs->options = e->state.options;     /* the node owns them now */
        qemu_opts_del(e->old_options);
    }
    return 0;
}

/* Driver nodes: the prepared state takes over. */
static void bdrv_reopen_commit_one(ReopenEntry *e)
{
    BlockDriverState *bs = e->state.bs;

    if (!e->prepared) {
        return;
    }
    if (bs->drv->bdrv_reopen_commit) {
        bs->drv->bdrv_reopen_commit(&e->state);
    }
    bs->open_flags = e->state.flags;
    bs->read_only = !(e->state.flags & BDRV_O_RDWR);
    if (e->state.options) {
        qemu_opts_del(bs->options);
        bs->options = e->state.options;
    }
}

/* Nodes whose flags changed, and no driver saw: the flags only. */
static void bdrv_reopen_set_flags(GPtrArray *q, bool new)
{
    for (guint i = 0; i < q->len; i++) {
        ReopenEntry *e = g_ptr_array_index(q, i);
        int f = new ? e->state.flags : e->old_flags;
        e->state.bs->open_flags = f;
        e->state.bs->read_only = !(f & BDRV_O_RDWR);
    }
}

/*
 * After a generic node failed to open with its new flags and was opened
 * with its old ones again (bdrv_reopen_open_generic), the reopen failed:
 * every other node of the queue takes its old flags again, in the order
 * of a commit. Generic nodes that opened with the new flags are closed
 * and opened with the old ones; nodes whose driver committed the new
 * flags prepare and commit the old ones (file-posix opens its descriptor
 * in the old mode again). Options stay as they are now.
 */
static void bdrv_reopen_revert(GPtrArray *q)
{
    guint n = q->len;
    ReopenEntry *back = g_new0(ReopenEntry, n);

    for (guint i = 0; i < n; i++) {
        ReopenEntry *e = g_ptr_array_index(q, i);
        BlockDriverState *bs = e->state.bs;
        bool fell_back = e->closed && bs->open_flags == e->old_flags;

        back[i] = (ReopenEntry) {
            .state = { .bs = bs, .flags = e->old_flags },
            .old_flags = e->state.flags,
            .changes = e->changes && !fell_back && bs->drv &&
                       e->old_flags != e->state.flags,
        };
        back[i].generic = back[i].changes && e->generic;
    }
    for (guint i = 0; i < n; i++) {
        bdrv_reopen_close_generic(&back[i]);
    }
    for (guint i = n; i-- > 0;) {
        ReopenEntry *b = &back[i];
        BlockDriverState *bs = b->state.bs;

        if (b->changes && !b->generic &&
            bs->drv->bdrv_reopen_prepare(&b->state, NULL) == 0) {
            b->prepared = true;
            bdrv_reopen_commit_one(b);
        }
    }
    for (guint i = n; i-- > 0;) {
        bdrv_reopen_open_generic(&back[i], NULL);
    }
    for (guint i = 0; i < n; i++) {
        BlockDriverState *bs = back[i].state.bs;
        if (back[i].changes && !back[i].closed && bs->drv) {
            bs->open_flags = back[i].state.flags;
            bs->read_only = !(back[i].state.flags & BDRV_O_RDWR);
        }
    }
    g_free(back);
}

int bdrv_reopen(BlockDriverState *bs, int flags, QemuOpts *options,
                Error **errp)
{
    GPtrArray *q;
    uint64_t old_perm = bs->user_perm, old_shared = bs->user_shared;
    Error *local_err = NULL;
    QemuOpts *own = NULL;
    int ret = 0;

    /* Generic keys become flags; the driver stays what it is. */
    if (options && qemu_opts_count(options)) {
        own = qemu_opts_clone(options);
        char *drv = qemu_opt_get_del(own, "driver");
        if (drv && (!bs->drv || strcmp(drv, bs->drv->format_name))) {
            error_setg(errp, "Cannot change the option 'driver'");
            ret = -EINVAL;
        }
        g_free(drv);
        if (ret == 0) {
            ret = bdrv_take_generic_opts(own, &flags, errp);
        }
        if (ret < 0) {
            qemu_opts_del(own);
            return ret;
        }
        options = own;
    }
    q = g_ptr_array_new_with_free_func(bdrv_reopen_entry_free);
    bdrv_ref(bs);
    bdrv_drained_begin(bs);
    bdrv_reopen_queue(q, bs, flags, options, 0);

    /* Prepare every node; any failure aborts the prepared ones. */
    for (guint i = 0; i < q->len && ret == 0; i++) {
        ret = bdrv_reopen_prepare(g_ptr_array_index(q, i), errp);
    }
    /* Locks follow the permissions of the new flags, checked before
     * anything is committed (on the old file descriptors). */
    if (ret == 0) {
        bdrv_reopen_set_flags(q, true);
        bdrv_user_perm(flags | (bs->open_flags & BDRV_O_FORCE_SHARE),
                       &bs->user_perm, &bs->user_shared);
        ret = bdrv_restore_perms(bs, errp);
        if (ret < 0) {
            bdrv_reopen_set_flags(q, false);
            bs->user_perm = old_perm;
            bs->user_shared = old_shared;
        }
    }
    if (ret < 0) {
        for (guint i = 0; i < q->len; i++) {
            bdrv_reopen_abort_one(g_ptr_array_index(q, i));
        }
        goto out;
    }
    /* Commit: generic drivers close (parents first), prepared drivers
     * take their new state, generic drivers open again (children
     * first). */
    bdrv_reopen_set_flags(q, false);
    for (guint i = 0; i < q->len; i++) {
        bdrv_reopen_close_generic(g_ptr_array_index(q, i));
    }
    for (guint i = q->len; i-- > 0;) {
        bdrv_reopen_commit_one(g_ptr_array_index(q, i));
    }
    for (guint i = q->len; i-- > 0;) {
        ReopenEntry *e = g_ptr_array_index(q, i);
        if (bdrv_reopen_open_generic(e, local_err ? NULL : &local_err) < 0) {
            ret = -EIO;
        }
    }
    if (ret < 0) {
        /* A node fell back to its old flags: so does the whole chain. */
        bdrv_reopen_revert(q);
        bs->user_perm = old_perm;
        bs->user_shared = old_shared;
        bdrv_restore_perms(bs, NULL);
    }
    for (guint i = q->len; i-- > 0;) {
        ReopenEntry *e = g_ptr_array_index(q, i);
        BlockDriverState *n = e->state.bs;
        if (e->changes && n->drv) {
            bdrv_refresh_limits(n, NULL);
            bdrv_refresh_total_bytes(n);
        }
        if (ret == 0 && (!e->generic || !e->closed)) {
            n->open_flags = e->state.flags;
            n->read_only = !(e->state.flags & BDRV_O_RDWR);
        }
    }
    if (local_err) {
        error_propagate(errp, local_err);
    }
out:
    g_ptr_array_free(q, TRUE);
    qemu_opts_del(own);
    bdrv_drained_end(bs);
    bdrv_unref(bs);
    return ret;
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
