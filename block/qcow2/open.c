/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 open and close: runtime options (cache sizes, lazy refcounts,
 * overlap checks, discard pass-through, data-file), the table caches and
 * their write ordering, the external data file, image information, and
 * the driver table with its registration.
 */
#include "block/qcow2/qcow2.h"
#include "util/cutils.h"

#define QCOW2_DEFAULT_L2_CACHE_MAX  (32 * MiB)
#define QCOW2_MIN_L2_CACHE_PAGES    2
#define QCOW2_MIN_RB_CACHE_CLUSTERS 4

static const QemuOptDesc qcow2_open_opts[] = {
    { "encrypt.format", QEMU_OPT_STRING,
      "Encryption data format 'luks' (the image's)" },
    { "encrypt.key-secret", QEMU_OPT_STRING,
      "ID of secret providing the LUKS passphrase" },
    { "data-file", QEMU_OPT_STRING,
      "Open this external data file instead of the one named in the image" },
    { "lazy-refcounts", QEMU_OPT_BOOL, "Postpone refcount updates" },
    { "pass-discard-request", QEMU_OPT_BOOL,
      "Pass guest discard requests to the layer below" },
    { "pass-discard-snapshot", QEMU_OPT_BOOL,
      "Generate discard requests when snapshot related space is freed" },
    { "pass-discard-other", QEMU_OPT_BOOL,
      "Generate discard requests when other clusters are freed" },
    { "overlap-check", QEMU_OPT_STRING,
      "Selects which overlap checks to perform from a range of templates "
      "(none, constant, cached, all)" },
    { "overlap-check.template", QEMU_OPT_STRING,
      "Selects which overlap checks to perform from a range of templates "
      "(none, constant, cached, all)" },
    { "overlap-check.main-header", QEMU_OPT_BOOL,
      "Check for unintended writes into the main qcow2 header" },
    { "overlap-check.active-l1", QEMU_OPT_BOOL,
      "Check for unintended writes into the active L1 table" },
    { "overlap-check.active-l2", QEMU_OPT_BOOL,
      "Check for unintended writes into an active L2 table" },
    { "overlap-check.refcount-table", QEMU_OPT_BOOL,
      "Check for unintended writes into the refcount table" },
    { "overlap-check.refcount-block", QEMU_OPT_BOOL,
      "Check for unintended writes into a refcount block" },
    { "overlap-check.snapshot-table", QEMU_OPT_BOOL,
      "Check for unintended writes into the snapshot table" },
    { "overlap-check.inactive-l1", QEMU_OPT_BOOL,
      "Check for unintended writes into an inactive L1 table" },
    { "overlap-check.inactive-l2", QEMU_OPT_BOOL,
      "Check for unintended writes into an inactive L2 table" },
    { "overlap-check.bitmap-directory", QEMU_OPT_BOOL,
      "Check for unintended writes into the bitmap directory" },
    { "cache-size", QEMU_OPT_SIZE,
      "Maximum combined metadata (L2 tables and refcount blocks) cache size" },
    { "l2-cache-size", QEMU_OPT_SIZE, "Maximum L2 table cache size" },
    { "l2-cache-entry-size", QEMU_OPT_SIZE,
      "Size of each entry in the L2 cache" },
    { "refcount-cache-size", QEMU_OPT_SIZE,
      "Maximum refcount block cache size" },
    { "cache-clean-interval", QEMU_OPT_STRING,
      "Clean unused cache entries after this time (in seconds); accepted, "
      "the caches are not cleaned by time" },
    { NULL }
};

/* ---- options ---- */

typedef struct Qcow2CacheSizes {
    uint64_t l2_bytes;
    uint64_t l2_entry;
    uint64_t refcount_bytes;
} Qcow2CacheSizes;

/* QEMU's rules for cache-size, l2-cache-size and refcount-cache-size. */
static int qcow2_cache_sizes(BlockDriverState *bs, QemuOpts *opts,
                             Qcow2CacheSizes *cs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    bool combined_set = qemu_opt_has(opts, "cache-size");
    bool l2_set = qemu_opt_has(opts, "l2-cache-size");
    bool rc_set = qemu_opt_has(opts, "refcount-cache-size");
    bool entry_set = qemu_opt_has(opts, "l2-cache-entry-size");
    uint64_t combined = qemu_opt_get_size(opts, "cache-size", 0);
    uint64_t l2_max = qemu_opt_get_size(opts, "l2-cache-size",
                                        QCOW2_DEFAULT_L2_CACHE_MAX);
    uint64_t min_rc = (uint64_t)QCOW2_MIN_RB_CACHE_CLUSTERS *
                      s->cluster_size;
    uint64_t entries = DIV_ROUND_UP(s->size, s->cluster_size);
    uint64_t max_l2 = ROUND_UP(entries << s->l2_entry_shift,
                               (uint64_t)s->cluster_size);

    cs->refcount_bytes = qemu_opt_get_size(opts, "refcount-cache-size", 0);
    cs->l2_entry = qemu_opt_get_size(opts, "l2-cache-entry-size",
                                     s->cluster_size);
    cs->l2_bytes = MIN(max_l2, l2_max);
    if (combined_set) {
        if (l2_set && rc_set) {
            error_setg(errp, "cache-size, l2-cache-size and "
                       "refcount-cache-size may not be set at the same "
                       "time");
            return -EINVAL;
        } else if (l2_set && l2_max > combined) {
            error_setg(errp, "l2-cache-size may not exceed cache-size");
            return -EINVAL;
        } else if (cs->refcount_bytes > combined) {
            error_setg(errp, "refcount-cache-size may not exceed "
                       "cache-size");
            return -EINVAL;
        }
        if (l2_set) {
            cs->refcount_bytes = combined - cs->l2_bytes;
        } else if (rc_set) {
            cs->l2_bytes = combined - cs->refcount_bytes;
        } else if (combined >= max_l2 + min_rc) {
            cs->l2_bytes = max_l2;
            cs->refcount_bytes = combined - max_l2;
        } else {
            cs->refcount_bytes = MIN(combined, min_rc);
            cs->l2_bytes = combined - cs->refcount_bytes;
        }
    }
    /* A cache that does not cover the disk loads small pieces. */
    if (cs->l2_bytes < max_l2 && !entry_set) {
        cs->l2_entry = MIN(s->cluster_size, 4096u);
    }
    if (cs->l2_entry < 512 || cs->l2_entry > s->cluster_size ||
        (cs->l2_entry & (cs->l2_entry - 1))) {
        error_setg(errp, "L2 cache entry size must be a power of two "
                   "between 512 and the cluster size (%" PRIu32 ")",
                   s->cluster_size);
        return -EINVAL;
    }
    return 0;
}

static int qcow2_overlap_template(const char *name, int *mask, Error **errp)
{
    if (!strcmp(name, "none")) {
        *mask = 0;
    } else if (!strcmp(name, "constant")) {
        *mask = QCOW2_OL_CONSTANT;
    } else if (!strcmp(name, "cached")) {
        *mask = QCOW2_OL_CACHED;
    } else if (!strcmp(name, "all")) {
        *mask = QCOW2_OL_ALL;
    } else {
        error_setg(errp, "Unsupported value '%s' for qcow2 option "
                   "'overlap-check'. Allowed are any of the following: "
                   "none, constant, cached, all", name);
        return -EINVAL;
    }
    return 0;
}

static int qcow2_parse_overlap(BDRVQcow2State *s, QemuOpts *opts,
                               Error **errp)
{
    static const struct {
        const char *name;
        int bit;
    } bits[] = {
        { "overlap-check.main-header", QCOW2_OL_MAIN_HEADER },
        { "overlap-check.active-l1", QCOW2_OL_ACTIVE_L1 },
        { "overlap-check.active-l2", QCOW2_OL_ACTIVE_L2 },
        { "overlap-check.refcount-table", QCOW2_OL_REFCOUNT_TABLE },
        { "overlap-check.refcount-block", QCOW2_OL_REFCOUNT_BLOCK },
        { "overlap-check.snapshot-table", QCOW2_OL_SNAPSHOT_TABLE },
        { "overlap-check.inactive-l1", QCOW2_OL_INACTIVE_L1 },
        { "overlap-check.inactive-l2", QCOW2_OL_INACTIVE_L2 },
        { "overlap-check.bitmap-directory", QCOW2_OL_BITMAP_DIRECTORY },
    };
    const char *oc = qemu_opt_get(opts, "overlap-check");
    const char *tmpl = qemu_opt_get(opts, "overlap-check.template");
    int mask;

    if (oc && tmpl && strcmp(oc, tmpl)) {
        error_setg(errp, "Conflicting values for qcow2 options "
                   "'overlap-check' ('%s') and 'overlap-check.template' "
                   "('%s')", oc, tmpl);
        return -EINVAL;
    }
    if (qcow2_overlap_template(oc ? oc : tmpl ? tmpl : "cached", &mask,
                               errp) < 0) {
        return -EINVAL;
    }
    for (unsigned i = 0; i < ARRAY_SIZE(bits); i++) {
        if (qemu_opt_get_bool(opts, bits[i].name, mask & bits[i].bit)) {
            mask |= bits[i].bit;
        } else {
            mask &= ~bits[i].bit;
        }
    }
    s->overlap_check = mask;
    return 0;
}

/*
 * cache-clean-interval: a number as QEMU parses one (a leading '-' wraps,
 * as strtoull does), at most UINT_MAX seconds. Accepted and bounded; the
 * caches are not cleaned by time.
 */
static int qcow2_parse_clean_interval(QemuOpts *opts, Error **errp)
{
    const char *v = qemu_opt_get(opts, "cache-clean-interval");
    unsigned long long n;
    char *end;

    if (!v) {
        return 0;
    }
    errno = 0;
    n = strtoull(v, &end, 0);
    if (!*v || *end || end == v || errno == EINVAL) {
        error_setg(errp, "Parameter 'cache-clean-interval' expects a number");
        return -EINVAL;
    }
    if (errno == ERANGE || n > UINT_MAX) {
        error_setg(errp, "Cache clean interval too big");
        return -EINVAL;
    }
    return 0;
}

/*
 * Reopen: a new overlap-check template (either spelling) replaces every
 * old overlap-check option; a new cache-size replaces the old l2 and
 * refcount cache sizes; an old cache-size goes when all three would be
 * set and cache-size is not new (QEMU's rules for keeping options).
 */
static void qcow2_join_options(QemuOpts *old_opts, const QemuOpts *new_opts)
{
    bool new_total = qemu_opt_has(new_opts, "cache-size");

    if (qemu_opt_has(new_opts, "overlap-check") ||
        qemu_opt_has(new_opts, "overlap-check.template")) {
        for (size_t i = qemu_opts_count(old_opts); i-- > 0;) {
            const char *name, *value;
            qemu_opts_nth(old_opts, i, &name, &value);
            if (!strncmp(name, "overlap-check", 13) &&
                (name[13] == '\0' || name[13] == '.')) {
                char *n = g_strdup(name);
                qemu_opt_unset(old_opts, n);
                g_free(n);
            }
        }
    }
    if (new_total) {
        qemu_opt_unset(old_opts, "l2-cache-size");
        qemu_opt_unset(old_opts, "refcount-cache-size");
    } else if (qemu_opt_has(old_opts, "cache-size") &&
               (qemu_opt_has(old_opts, "l2-cache-size") ||
                qemu_opt_has(new_opts, "l2-cache-size")) &&
               (qemu_opt_has(old_opts, "refcount-cache-size") ||
                qemu_opt_has(new_opts, "refcount-cache-size"))) {
        qemu_opt_unset(old_opts, "cache-size");
    }
}

/* Apply the order rules to the L2 cache (see refcount.c). */
/* QEMU's overlap check on every table write: a corrupt L1 or refcount
 * table may name metadata as an L2 table or refcount block. */
static int coroutine_fn qcow2_l2_pre_write(void *opaque, uint64_t offset,
                                           size_t size)
{
    return qcow2_pre_write_overlap_check(opaque, QCOW2_OL_ACTIVE_L2, offset,
                                         size);
}

static int coroutine_fn qcow2_refblock_pre_write(void *opaque,
                                                 uint64_t offset, size_t size)
{
    return qcow2_pre_write_overlap_check(opaque, QCOW2_OL_REFCOUNT_BLOCK,
                                         offset, size);
}

static void qcow2_set_cache_ordering(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    table_cache_set_dependency(s->l2_cache,
                               s->use_lazy_refcounts ? NULL
                                                     : s->refcount_cache);
    table_cache_set_pre_write(s->l2_cache, qcow2_l2_pre_write, bs);
    table_cache_set_pre_write(s->refcount_cache, qcow2_refblock_pre_write,
                              bs);
}

/*
 * Parse the runtime options and create the two table caches. The L2 cache
 * depends on the data node (data before the entry naming it) and, unless
 * refcounts are lazy, on the refcount cache (counts before the entry).
 */
int coroutine_fn qcow2_setup_caches(BlockDriverState *bs, QemuOpts *opts,
                                    Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2CacheSizes cs;
    int ret;

    ret = qcow2_cache_sizes(bs, opts, &cs, errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t l2_pages = cs.l2_bytes / cs.l2_entry;
    s->rb_slice_bytes = MIN(s->cluster_size, 4096u);
    uint64_t rb_pages = cs.refcount_bytes / s->rb_slice_bytes;
    l2_pages = MAX(l2_pages, QCOW2_MIN_L2_CACHE_PAGES);
    rb_pages = MAX(rb_pages, (uint64_t)QCOW2_MIN_RB_CACHE_CLUSTERS);
    if (l2_pages > INT_MAX / 2) {
        error_setg(errp, "L2 cache size too big");
        return -EINVAL;
    }
    if (rb_pages > INT_MAX / 2) {
        error_setg(errp, "Refcount cache size too big");
        return -EINVAL;
    }
    ret = qcow2_parse_clean_interval(opts, errp);
    if (ret < 0) {
        return ret;
    }
    s->use_lazy_refcounts = qemu_opt_get_bool(opts, "lazy-refcounts",
                                              s->compatible_features &
                                              QCOW2_COMPAT_LAZY_REFCOUNTS);
    if (s->use_lazy_refcounts && s->qcow_version < 3) {
        error_setg(errp, "Lazy refcounts require a qcow2 image with at "
                   "least qemu 1.1 compatibility level");
        return -EINVAL;
    }
    ret = qcow2_parse_overlap(s, opts, errp);
    if (ret < 0) {
        return ret;
    }
    s->discard_request = qemu_opt_get_bool(opts, "pass-discard-request",
                                           s->open_flags & BDRV_O_UNMAP);
    s->discard_snapshot = qemu_opt_get_bool(opts, "pass-discard-snapshot",
                                            true);
    s->discard_other = qemu_opt_get_bool(opts, "pass-discard-other", false);

    s->l2_slice_bytes = cs.l2_entry;
    s->l2_slice_size = cs.l2_entry >> s->l2_entry_shift;
    s->l2_cache = table_cache_new(bs->file, s->l2_slice_bytes, l2_pages,
                                  "l2_load", "l2_update");
    /* refblock_load is raised by the refcount updates (as QEMU does). */
    s->refcount_cache = table_cache_new(bs->file, s->rb_slice_bytes,
                                        rb_pages, NULL,
                                        "refblock_update_part");
    qcow2_set_cache_ordering(bs);
    return 0;
}

/*
 * After a resize: the caches get the size the new disk size calls for
 * (as QEMU re-applies its options). Called with s->lock held, nothing
 * pinned.
 */
int coroutine_fn qcow2_resize_caches(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2CacheSizes cs;
    int ret;

    if (!bs->options || qcow2_cache_sizes(bs, bs->options, &cs, NULL) < 0) {
        return 0;
    }
    uint64_t l2_pages = MAX(cs.l2_bytes / cs.l2_entry,
                            (uint64_t)QCOW2_MIN_L2_CACHE_PAGES);
    if (cs.l2_entry == s->l2_slice_bytes && l2_pages <= INT_MAX / 2 &&
        l2_pages == (uint64_t)table_cache_num_pages(s->l2_cache)) {
        return 0;
    }
    if (l2_pages > INT_MAX / 2) {
        return 0;
    }
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        return ret;
    }
    table_cache_free(s->l2_cache);
    s->l2_slice_bytes = cs.l2_entry;
    s->l2_slice_size = cs.l2_entry >> s->l2_entry_shift;
    s->l2_cache = table_cache_new(bs->file, s->l2_slice_bytes, l2_pages,
                                  "l2_load", "l2_update");
    qcow2_set_cache_ordering(bs);
    table_cache_add_dependency_bs(s->l2_cache, s->data_file);
    return 0;
}

/* Write both caches (L2 first: it writes what it depends on), apply the
 * frees that became safe. Called with s->lock held. */
int coroutine_fn qcow2_write_caches(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    ret = table_cache_write(s->l2_cache);
    if (ret >= 0) {
        ret = qcow2_apply_durable_frees(bs);
    }
    /*
     * While the dirty bit is set (lazy refcounts), refcount blocks reach
     * the disk only when evicted or when the image is marked clean, as in
     * QEMU: a crash then leaves stale refcounts that check repairs.
     */
    if (ret >= 0 && !(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        ret = table_cache_write(s->refcount_cache);
    }
    return ret;
}

/* Everything cached durable, every queued free applied. */
int coroutine_fn qcow2_flush_caches(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    ret = qcow2_settle_frees(bs);
    if (ret >= 0) {
        ret = table_cache_write(s->l2_cache);
    }
    if (ret >= 0) {
        ret = table_cache_write(s->refcount_cache);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    return ret;
}

/* ---- open ---- */

static int coroutine_fn qcow2_read_l1(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    size_t bytes = (size_t)s->l1_size * sizeof(uint64_t);
    int ret;

    s->l1_table = qemu_blockalign(ROUND_UP(MAX(bytes, 8), 512));
    memset(s->l1_table, 0, ROUND_UP(MAX(bytes, 8), 512));
    if (!bytes) {
        return 0;
    }
    ret = bdrv_co_pread(bs->file, s->l1_table_offset, bytes, s->l1_table, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read L1 table");
        return ret;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        s->l1_table[i] = be64_to_cpu(s->l1_table[i]);
    }
    return 0;
}

/* The data-file.* options (data-file.filename=, data-file.driver=, ...):
 * the user's description of the data file node, or NULL. */
static QemuOpts *qcow2_data_file_opts(QemuOpts *opts)
{
    QemuOpts *sub = NULL;

    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;

        qemu_opts_nth(opts, i, &name, &value);
        if (g_str_has_prefix(name, "data-file.")) {
            if (!sub) {
                sub = qemu_opts_new();
            }
            qemu_opt_set(sub, name + strlen("data-file."), value);
        }
    }
    return sub;
}

/* The external data file: the open options, else the header's name. */
static int coroutine_fn qcow2_open_data_file_opts(BlockDriverState *bs,
                                                  QemuOpts *opts,
                                                  QemuOpts *dopts, int flags,
                                                  Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *override = qemu_opt_get(opts, "data-file");
    int child_flags = flags & (BDRV_O_RDWR | BDRV_O_NOCACHE |
                               BDRV_O_NATIVE_AIO | BDRV_O_NO_FLUSH |
                               BDRV_O_UNMAP);
    Error *local_err = NULL;

    if (!qcow2_has_data_file(s)) {
        if (override || dopts) {
            error_setg(errp, "'data-file' can only be set for images with an "
                       "external data file");
            return -EINVAL;
        }
        if (qcow2_data_file_is_raw(s)) {
            error_setg(errp, "data-file-raw requires a data file");
            return -EINVAL;
        }
        s->data_file = bs->file;
        return 0;
    }
    if (override || dopts) {
        /* The user's name or node description: opened as given. */
        s->data_file = bdrv_open_child(override, NULL, dopts, child_flags,
                                       false, &local_err);
    } else if (s->image_data_file) {
        /* The header's name: local files only unless the user opted in,
         * filters and json: never (bdrv_open_header_file). */
        s->data_file = bdrv_open_header_file(bs, s->image_data_file,
                                             "Data file", child_flags,
                                             &local_err);
    } else if ((flags & BDRV_O_NO_IO) && !(flags & BDRV_O_RDWR)) {
        /* Information only (as QEMU's qemu-img info): no data needed. */
        s->data_file = bs->file;
        return 0;
    } else {
        error_setg(errp, "'data-file' is required for this image");
        return -EINVAL;
    }
    if (!s->data_file && (flags & BDRV_O_NO_IO) && !(flags & BDRV_O_RDWR)) {
        /* Information only (as QEMU's qemu-img info): no data needed. */
        error_free(local_err);
        s->data_file = bs->file;
        return 0;
    }
    if (!s->data_file) {
        error_propagate(errp, local_err);
        return -EINVAL;
    }
    s->external_data = true;
    bs->data_file = s->data_file;
    return 0;
}

static int coroutine_fn qcow2_open_data_file(BlockDriverState *bs,
                                             QemuOpts *opts, int flags,
                                             Error **errp)
{
    QemuOpts *dopts = qcow2_data_file_opts(opts);
    int ret = qcow2_open_data_file_opts(bs, opts, dopts, flags, errp);

    qemu_opts_del(dopts);
    return ret;
}

static void qcow2_free_state(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    table_cache_free(s->l2_cache);
    table_cache_free(s->refcount_cache);
    s->l2_cache = s->refcount_cache = NULL;
    qemu_vfree(s->l1_table);
    s->l1_table = NULL;
    qcow2_refcount_close(bs);
    qcow2_free_snapshots(s);
    qcow2_free_header_state(s);
    qcow2_crypto_close(bs);
    qcow2_bitmaps_discard(s);
    if (s->external_data) {
        bs->data_file = NULL;
        bdrv_unref(s->data_file);
    }
    s->data_file = NULL;
    s->external_data = false;
}

/*
 * Open-time fix-ups of a writable image: autoclear bits (also for check
 * -r, as QEMU), the dirty bit (not for check -r: the check repairs it).
 */
static int coroutine_fn qcow2_open_fixups(BlockDriverState *bs, int flags,
                                          Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (bs->read_only) {
        return 0;
    }
    uint64_t keep = QCOW2_AUTOCLEAR_MASK | QCOW2_AUTOCLEAR_BITMAPS;
    if (s->autoclear_features & ~keep) {
        /* Bits of features we do not maintain: not valid now. */
        s->autoclear_features &= keep;
        ret = qcow2_commit_header(bs, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if ((s->incompatible_features & QCOW2_INCOMPAT_DIRTY) &&
        !(flags & BDRV_O_CHECK)) {
        BdrvCheckResult res = { 0 };
        ret = qcow2_co_check_locked(bs, &res,
                                    BDRV_FIX_ERRORS | BDRV_FIX_LEAKS);
        if (ret < 0 || res.check_errors) {
            ret = ret < 0 ? ret : -EIO;
            error_setg_errno(errp, -ret, "Could not repair dirty image");
            return ret;
        }
    }
    if (!(flags & BDRV_O_BITMAPS)) {
        /*
         * As QEMU: the enabled bitmaps are loaded and marked in_use, and
         * track the guest writes (qemu-img bitmap writes no guest data
         * and changes the directory itself).
         */
        Error *err = NULL;
        ret = qcow2_bitmaps_open(bs, &err);
        if (ret < 0 && (flags & BDRV_O_CHECK) &&
            (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
            /* check -r repairs an image whose directory is broken: its
             * bitmaps are dropped as by a program without bitmap support. */
            error_report("warning: %s; the bitmaps are dropped",
                         error_get_pretty(err));
            error_free(err);
            s->autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
            ret = qcow2_update_header(bs);
            if (ret >= 0) {
                ret = bdrv_co_flush(bs->file);
            }
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Could not update qcow2 header");
                return ret;
            }
        } else if (ret < 0) {
            error_propagate(errp, err);
            return ret;
        }
    }
    return 0;
}

static int coroutine_fn qcow2_open(BlockDriverState *bs, QemuOpts *opts,
                                   int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Header h;
    int ret;

    qemu_co_mutex_init(&s->lock);
    s->open_flags = flags;
    ret = qcow2_read_header(bs, flags, &h, errp);
    if (ret < 0) {
        goto fail;
    }
    s->l1_size = h.l1_size;
    s->l1_table_offset = h.l1_table_offset;
    s->refcount_table_offset = h.refcount_table_offset;
    s->refcount_table_size = h.refcount_table_clusters <<
                             (s->cluster_bits - 3);
    ret = qcow2_read_l1(bs, errp);
    if (ret >= 0) {
        ret = qcow2_setup_caches(bs, opts, errp);
    }
    if (ret >= 0) {
        ret = qcow2_refcount_init(bs, errp);
    }
    if (ret >= 0) {
        ret = qcow2_open_data_file(bs, opts, flags, errp);
    }
    if (ret >= 0) {
        table_cache_add_dependency_bs(s->l2_cache, s->data_file);
        ret = qcow2_crypto_open(bs, opts, flags, errp);
    }
    s->snapshots_offset = h.snapshots_offset;
    s->nb_snapshots = h.nb_snapshots;
    if (ret >= 0 && !(flags & BDRV_O_CHECK)) {
        /* qemu-img check reads (and judges) the table itself. */
        ret = qcow2_read_snapshots(bs, errp);
    }
    if (ret >= 0) {
        qemu_co_mutex_lock(&s->lock);
        ret = qcow2_open_fixups(bs, flags, errp);
        qemu_co_mutex_unlock(&s->lock);
    }
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    qcow2_free_state(bs);
    return ret;
}

static void coroutine_fn qcow2_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (!bs->read_only && !s->stopped) {
        int result, ret;

        /* As QEMU's inactivate: bitmaps stored first, each cache's
         * failure reported. */
        Error *err = NULL;
        qemu_co_mutex_lock(&s->lock);
        if (qcow2_bitmaps_store(bs, &err) < 0) {
            error_report_err(err);
            error_report("Persistent bitmaps are lost for node '%s'",
                         bs->filename);
        }
        result = qcow2_settle_frees(bs);
        ret = table_cache_flush(s->l2_cache);
        if (ret < 0) {
            error_report("Failed to flush the L2 table cache: %s",
                         strerror(-ret));
            result = ret;
        }
        ret = table_cache_flush(s->refcount_cache);
        if (ret < 0) {
            error_report("Failed to flush the refcount block cache: %s",
                         strerror(-ret));
            result = ret;
        }
        if (result >= 0) {
            qcow2_mark_clean(bs);
        }
        qemu_co_mutex_unlock(&s->lock);
    }
    qcow2_free_state(bs);
}

/* ---- simple callbacks ---- */

static int qcow2_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    uint32_t magic, version;

    if (buf_size < (int)sizeof(Qcow2DiskHeader)) {
        return 0;
    }
    memcpy(&magic, buf, 4);
    memcpy(&version, buf + 4, 4);
    return be32_to_cpu(magic) == QCOW2_MAGIC && be32_to_cpu(version) >= 2
           ? 100 : 0;
}

static void qcow2_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    /* Encrypted data: whole 512-byte sectors (QEMU's alignment too). */
    bs->bl.request_alignment = s->crypto ? 512 : 1;
    bs->bl.pwrite_zeroes_alignment = s->subcluster_size;
    bs->bl.pdiscard_alignment = s->cluster_size;
}

static int64_t qcow2_getlength(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    return s->size;
}

static int qcow2_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVQcow2State *s = bs->opaque;

    bdi->cluster_size = s->cluster_size;
    bdi->vm_state_offset = qcow2_vm_state_offset(s);
    bdi->is_dirty = s->incompatible_features & QCOW2_INCOMPAT_DIRTY;
    return 0;
}

/* QEMU's "bitmaps" list: name, granularity and flags of each bitmap. */
static JsonValue *qcow2_bitmap_info_list(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    JsonValue *list;
    uint64_t pos = 0;
    uint8_t *dir;

    if (!s->nb_bitmaps ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return NULL;
    }
    /* bitmap_directory_size is bounded by QCOW2_MAX_BITMAP_DIR_SIZE */
    dir = g_malloc0(s->bitmap_directory_size + 1);
    if (bdrv_pread(bs->file, s->bitmap_directory_offset,
                   s->bitmap_directory_size, dir, 0) < 0) {
        g_free(dir);
        return NULL;
    }
    list = json_new(JSON_ARRAY);
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        Qcow2DiskBitmapDirEntry e;
        JsonValue *bm, *flags;
        uint64_t name_size, entry;
        uint32_t f;
        char *name;

        if (s->bitmap_directory_size - pos < sizeof(e)) {
            break;
        }
        memcpy(&e, dir + pos, sizeof(e));
        name_size = be16_to_cpu(e.name_size);
        entry = sizeof(e) + (uint64_t)be32_to_cpu(e.extra_data_size);
        if (s->bitmap_directory_size - pos < entry + name_size) {
            break;
        }
        name = g_strndup((char *)dir + pos + entry, name_size);
        f = be32_to_cpu(e.flags);
        bm = json_new(JSON_OBJECT);
        json_add_str(bm, "name", name);
        json_add_int(bm, "granularity", INT64_C(1) << MIN(e.granularity_bits, 62));
        flags = json_new(JSON_ARRAY);
        if (f & 1) {
            json_add_str(flags, NULL, "in-use");
        }
        if (f & 2) {
            json_add_str(flags, NULL, "auto");
        }
        json_add(bm, "flags", flags);
        json_add(list, NULL, bm);
        g_free(name);
        pos += ROUND_UP(entry + name_size, 8);
    }
    g_free(dir);
    return list;
}

static ImageInfoSpecific *qcow2_get_specific_info(BlockDriverState *bs,
                                                  Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    ImageInfoSpecific *info = image_info_specific_new("qcow2");
    JsonValue *bitmaps, *encrypt;

    image_info_add_str(info, "compression-type", "zlib");
    image_info_add_int(info, "refcount-bits", s->refcount_bits);
    if ((encrypt = qcow2_crypto_info(bs))) {
        image_info_add_json(info, "encrypt", encrypt);
    }
    if (s->qcow_version == 2) {
        image_info_add_str(info, "compat", "0.10");
        return info;
    }
    image_info_add_str(info, "compat", "1.1");
    image_info_add_bool(info, "lazy-refcounts",
                        s->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS);
    image_info_add_bool(info, "corrupt",
                        s->incompatible_features & QCOW2_INCOMPAT_CORRUPT);
    image_info_add_bool(info, "extended-l2", s->extended_l2);
    bitmaps = qcow2_bitmap_info_list(bs);
    if (bitmaps) {
        image_info_add_json(info, "bitmaps", bitmaps);
    }
    if (s->image_data_file) {
        image_info_add_str(info, "data-file", s->image_data_file);
    }
    if (qcow2_has_data_file(s)) {
        image_info_add_bool(info, "data-file-raw",
                            qcow2_data_file_is_raw(s));
    }
    return info;
}

static bool qcow2_has_zero_init(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    bool preallocated = s->l1_size > 0 && s->l1_table[0] != 0;

    /* Encrypted preallocated clusters read as the decryption of zeroes. */
    return !preallocated || (!s->crypto && bdrv_has_zero_init(s->data_file));
}

static const char *const qcow2_child_prefixes[] = { "data-file", NULL };

/* Options whose presence makes the node's name json:{...} (QEMU's). */
static const char *const qcow2_strong_opts[] = { "encrypt.key-secret", NULL };

static BlockDriver bdrv_qcow2 = {
    .format_name            = "qcow2",
    .child_prefixes         = qcow2_child_prefixes,
    .instance_size          = sizeof(BDRVQcow2State),
    .strong_opts            = qcow2_strong_opts,
    .supports_backing       = true,
    .create_opts            = qcow2_create_opts,
    .open_opts              = qcow2_open_opts,
    .amend_opts             = qcow2_amend_opts,

    .bdrv_probe             = qcow2_probe,
    .bdrv_open              = qcow2_open,
    .bdrv_close             = qcow2_close,
    .bdrv_join_options      = qcow2_join_options,
    .bdrv_refresh_limits    = qcow2_refresh_limits,
    .bdrv_create            = qcow2_co_create,

    .bdrv_co_preadv         = qcow2_co_preadv,
    .bdrv_co_pwritev        = qcow2_co_pwritev,
    .bdrv_co_pwrite_zeroes  = qcow2_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = qcow2_co_pdiscard,
    .bdrv_co_flush          = qcow2_co_flush,
    .bdrv_co_block_status   = qcow2_co_block_status,
    .bdrv_co_truncate       = qcow2_co_truncate,
    .bdrv_getlength         = qcow2_getlength,

    .bdrv_get_info          = qcow2_get_info,
    .bdrv_get_specific_info = qcow2_get_specific_info,
    .bdrv_has_zero_init     = qcow2_has_zero_init,
    .bdrv_co_check          = qcow2_co_check,
    .bdrv_amend_options     = qcow2_amend_options,
    .bdrv_change_backing_file = qcow2_change_backing_file,
    .bdrv_measure           = qcow2_measure,
    .bdrv_make_empty        = qcow2_make_empty,
    .bdrv_co_bitmap_ops     = qcow2_co_bitmap_ops,
    .bdrv_co_bitmap_list    = qcow2_co_bitmap_list,
    .bdrv_supports_persistent_bitmaps = qcow2_supports_persistent_bitmaps,

    .bdrv_snapshot_create   = qcow2_snapshot_create,
    .bdrv_snapshot_goto     = qcow2_snapshot_goto,
    .bdrv_snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .bdrv_snapshot_delete   = qcow2_snapshot_delete,
    .bdrv_snapshot_list     = qcow2_snapshot_list,
    .bdrv_co_save_vmstate   = qcow2_co_save_vmstate,
    .bdrv_co_load_vmstate   = qcow2_co_load_vmstate,

    /* No FUA: the layer follows FUA writes with a flush, which makes the
     * tables durable too. */
    .supported_write_flags  = BDRV_REQ_WRITE_COMPRESSED,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK,
};

BLOCK_DRIVER_REGISTER(bdrv_qcow2)
