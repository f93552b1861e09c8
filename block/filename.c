/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A node's name as QEMU 7.2 prints it (its bdrv_refresh_filename): the
 * exact file name when opening that name alone makes the same graph, else
 * "json:{...}" with the options that do (driver, a protocol's filename,
 * the driver's strong options, each child's description); and the
 * directory that relative backing names resolve against (bdrv_dirname).
 */
#include "block_int.h"
#include "util/cutils.h"

/* Deeper graphs are named by what fits (json: names are bounded anyway). */
#define FILENAME_MAX_DEPTH 64

typedef struct NodeName {
    JsonValue *opts;            /* the json: description */
    char *exact;                /* "" if none */
} NodeName;

/* The options bs was opened with (formats: those the driver kept). */
static QemuOpts *bdrv_node_opts(BlockDriverState *bs)
{
    return bs->options ? bs->options : bs->given_opts;
}

/* A value as the json: description gave it (QEMU keeps the types). */
static void json_add_typed(JsonValue *o, const char *key, const char *value,
                           QemuOptJson json)
{
    char *end;
    long long n;

    switch (json) {
    case QEMU_OPT_JSON_NUMBER:
        errno = 0;
        n = strtoll(value, &end, 10);
        if (!errno && end != value && !*end) {
            json_add_int(o, key, n);
            return;
        }
        break;
    case QEMU_OPT_JSON_BOOL:
        json_add_bool(o, key, !strcmp(value, "on"));
        return;
    case QEMU_OPT_JSON_STRING:
        break;
    }
    json_add_str(o, key, value);
}

static bool strong_opt_matches(const char *strong, const char *key)
{
    size_t n = strlen(strong);

    if (n && strong[n - 1] == '.') {
        return !strncmp(key, strong, n);
    }
    return !strcmp(key, strong);
}

/* Add the driver's strong options bs was opened with; true if any. */
static bool add_strong_opts(BlockDriverState *bs, JsonValue *o)
{
    QemuOpts *opts = bdrv_node_opts(bs);
    bool found = false;

    for (const char *const *s = bs->drv->strong_opts; s && *s && opts; s++) {
        for (size_t i = 0; i < qemu_opts_count(opts); i++) {
            const char *key, *value;

            qemu_opts_nth(opts, i, &key, &value);
            if (strong_opt_matches(*s, key)) {
                json_add_typed(o, key, value, qemu_opts_nth_json(opts, i));
                found = true;
            }
        }
    }
    return found;
}

static bool bdrv_is_leaf(BlockDriverState *bs)
{
    return !bs->file && !bs->nb_children;
}

static NodeName node_name(BlockDriverState *bs, int depth);

static void add_child(JsonValue *o, const char *key, BlockDriverState *c,
                      int depth, char **exact)
{
    NodeName n = node_name(c, depth + 1);

    json_add(o, key, n.opts);
    if (exact) {
        *exact = n.exact;
    } else {
        g_free(n.exact);
    }
}

static NodeName node_name(BlockDriverState *bs, int depth)
{
    BlockDriver *drv = bs->drv;
    NodeName n = { .opts = json_new(JSON_OBJECT) };
    char *file_exact = NULL;
    bool strong;

    if (!drv || depth > FILENAME_MAX_DEPTH) {
        n.exact = g_strdup(bs->filename);
        return n;
    }
    json_add_str(n.opts, "driver", drv->format_name);
    if (bdrv_is_leaf(bs) && bs->filename[0]) {
        json_add_str(n.opts, "filename", bs->filename);
    }
    strong = add_strong_opts(bs, n.opts);
    if (bs->file) {
        add_child(n.opts, drv->file_child_name ? drv->file_child_name
                                               : "file",
                  bs->file, depth, &file_exact);
    }
    if (bs->data_file && bs->data_file != bs->file) {
        add_child(n.opts, "data-file", bs->data_file, depth, NULL);
    }
    if (bs->backing && bs->backing_overridden) {
        add_child(n.opts, "backing", bs->backing, depth, NULL);
    }
    if (bs->nb_children) {
        JsonValue *list = json_new(JSON_ARRAY);

        for (unsigned i = 0; i < bs->nb_children; i++) {
            NodeName c = node_name(bs->children[i], depth + 1);

            json_add(list, NULL, c.opts);
            g_free(c.exact);
        }
        json_add(n.opts, "children", list);
    }

    if (drv->bdrv_exact_filename) {
        n.exact = drv->bdrv_exact_filename(bs, n.opts,
                                           file_exact ? file_exact : "");
    } else if (bdrv_is_leaf(bs)) {
        n.exact = g_strdup(bs->filename);
    } else if (!drv->is_filter && !drv->own_children && bs->file &&
               bs->file->drv && bs->file->drv->protocol_name &&
               file_exact && file_exact[0] && !strong &&
               !bs->backing_overridden) {
        /* A format over a protocol node: its file's name reopens it. */
        n.exact = g_strdup(file_exact);
    }
    if (!n.exact) {
        n.exact = g_strdup("");
    }
    g_free(file_exact);
    return n;
}

char *bdrv_display_name(BlockDriverState *bs)
{
    NodeName n = node_name(bs, 0);
    GString *out;

    if (n.exact[0]) {
        json_free(n.opts);
        return n.exact;
    }
    g_free(n.exact);
    out = g_string_new("json:");
    json_print_compact(out, n.opts);
    json_free(n.opts);
    /* QEMU's names end at PATH_MAX bytes, with "..." where cut. */
    if (out->len >= PATH_MAX) {
        g_string_truncate(out, PATH_MAX - 4);
        g_string_append(out, "...");
    }
    return g_string_free(out, FALSE);
}

/*
 * Where relative backing names of bs resolve. A node with a name resolves
 * against that name (docs/image-names.md: within the same storage, so
 * "blkdebug:RULES:dir/top" has its backing opened through blkdebug too,
 * where QEMU 7.2 drops the prefix). A node without one (opened by options:
 * blkdebug, quorum) resolves as QEMU's bdrv_dirname: the driver's own
 * answer, else its file's, else none.
 */
static char *bdrv_dirname(BlockDriverState *bs, Error **errp)
{
    for (int depth = 0; bs && bs->drv && depth <= FILENAME_MAX_DEPTH;
         depth++) {
        if (bs->filename[0]) {
            /* The name up to its last '/' (a "proto:" prefix kept). */
            char *d = path_combine(bs->filename, "x");
            d[strlen(d) - 1] = '\0';
            return d;
        }
        if (bs->drv->bdrv_dirname) {
            return bs->drv->bdrv_dirname(bs, errp);
        }
        if (!bs->file) {
            break;
        }
        bs = bs->file;
    }
    error_setg(errp, "Cannot generate a base directory for %s nodes",
               bs && bs->drv ? bs->drv->format_name : "these");
    return NULL;
}

char *bdrv_full_backing_filename(BlockDriverState *bs, Error **errp)
{
    const char *name = bs->backing_file;
    char *dir, *full;

    if (!name[0]) {
        return NULL;
    }
    if (path_is_absolute(name) || path_is_protocol_name(name)) {
        return g_strdup(name);
    }
    dir = bdrv_dirname(bs, errp);
    if (!dir) {
        return NULL;
    }
    full = g_strconcat(dir, name, NULL);
    g_free(dir);
    return full;
}

char *bdrv_get_full_backing_filename(BlockDriverState *bs)
{
    return bdrv_full_backing_filename(bs, NULL);
}
