/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD maintenance: resize (spec section 7, "header changes"), amend and
 * backing-file changes, qemu-img check and info.
 */
#include "block/fvd/fvd.h"
#include "util/cutils.h"

const QemuOptDesc fvd_amend_opts[] = {
    { "backing_file", QEMU_OPT_STRING, "File name of a base image" },
    { "backing_fmt", QEMU_OPT_STRING, "Image format of the base image" },
    { "data_file", QEMU_OPT_STRING, "File name of the data file" },
    { "data_file_fmt", QEMU_OPT_STRING, "Format of the data file (raw)" },
    { "copy_on_read", QEMU_OPT_BOOL,
      "Copy base data read by the guest into the image" },
    { NULL }
};

/* ---- resize ---- */

/*
 * The commit point of a grow whose preparation ended with ret: the header
 * takes the new size (only if ret >= 0). Errors not said yet are said.
 */
static int coroutine_fn fvd_grow_commit(BlockDriverState *bs, int ret,
                                        uint64_t old, uint64_t new,
                                        Error **errp)
{
    BDRVFvdState *s = bs->opaque;

    if (ret >= 0) {
        s->header.virtual_size = new;
        ret = fvd_write_header(bs);
        if (ret < 0) {
            s->header.virtual_size = old;
        }
    }
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, -ret, "Could not grow the FVD image");
    }
    return ret;
}

/*
 * Compact image: stale bytes past the old end in its last chunk are zeroed
 * and the new table entries cleared home (a crash after a shrink may have
 * left old ones), durably, before the header commits the new size.
 */
static int coroutine_fn fvd_grow_compact(BlockDriverState *bs, uint64_t old,
                                         uint64_t new, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t chunk_end = MIN(ROUND_UP(old, s->chunk_size), new);
    int ret = 0;

    if (DIV_ROUND_UP(new, s->chunk_size) > s->t.capacity) {
        error_setg(errp, "A compact FVD image of %" PRIu64 " bytes cannot "
                   "grow beyond %" PRIu64 " bytes (its table is full)", old,
                   s->t.capacity * s->chunk_size);
        return -EFBIG;
    }
    if (chunk_end > old) {
        ret = fvd_data_pwrite_zeroes(bs, old, chunk_end - old, 0, false);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(s->data);
    }
    if (ret >= 0) {
        ret = fvd_table_resize(bs, new);
    }
    return fvd_grow_commit(bs, ret, old, new, errp);
}

/*
 * Grow: the new area lies past the coverage, so it reads from the data
 * storage; stale bytes there (from before a shrink) are zeroed and the
 * storage extended, durably, before the header commits the new size.
 */
static int coroutine_fn fvd_grow(BlockDriverState *bs, uint64_t old,
                                 uint64_t new, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    if (s->compact) {
        return fvd_grow_compact(bs, old, new, errp);
    }
    int64_t host_old = fvd_host_offset(s, old);
    int64_t host_new = fvd_host_offset(s, new);
    int64_t len = bdrv_getlength(s->data);
    int ret = 0;

    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the data size");
        return (int)len;
    }
    if (len > host_old) {
        ret = bdrv_co_pwrite_zeroes(s->data, host_old,
                                    MIN(len, host_new) - host_old,
                                    BDRV_REQ_MAY_UNMAP);
    }
    if (ret >= 0 && len < host_new) {
        ret = bdrv_co_truncate(s->data, host_new, false, PREALLOC_MODE_OFF,
                               errp);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(s->data);
    }
    return fvd_grow_commit(bs, ret, old, new, errp);
}

/* Shrink: one header write (commit point) with the new size and the
 * coverage cut to it; then the data storage may shrink too. */
static int coroutine_fn fvd_shrink(BlockDriverState *bs, uint64_t new,
                                   Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    FvdHeader old = s->header;
    int ret;

    s->header.virtual_size = new;
    s->header.base_coverage = MIN(s->header.base_coverage, new);
    ret = fvd_write_header(bs);
    if (ret < 0) {
        s->header = old;
        error_setg_errno(errp, -ret, "Could not write FVD header");
        return ret;
    }
    uint64_t old_nb = s->nb_blocks;
    s->nb_blocks = DIV_ROUND_UP(s->header.base_coverage, s->block_size);
    /* After the commit point the bits past the coverage mean nothing;
     * clear them so that check stays quiet (a crash here only leaks). */
    if (s->bitmap && old_nb > s->nb_blocks &&
        fvd_bitmap_clear_cached(s, s->nb_blocks, old_nb) >= 0) {
        s->soft_dirty = true;       /* written home at the next flush */
    }
    if (s->compact) {
        /* The chunks past the end are free (discarded) and their entries
         * zero home; a crash before only leaves entries past the end,
         * which no reader looks at and a grow clears first. Then the
         * chunks in use move down into the holes and the storage shrinks,
         * as a raw layout's would (a failure there only leaves leaks). */
        if (fvd_table_resize(bs, new) >= 0) {
            fvd_table_reclaim(bs);
        }
        return 0;
    }
    /* A longer data storage is allowed: failing to cut it is no error. */
    bdrv_co_truncate(s->data, fvd_host_offset(s, new), true,
                     PREALLOC_MODE_OFF, NULL);
    return 0;
}

int coroutine_fn fvd_co_truncate(BlockDriverState *bs, int64_t offset,
                                 bool exact, PreallocMode prealloc,
                                 Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t old = s->header.virtual_size, new = offset;
    int ret;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode: %s",
                   qemu_prealloc_name(prealloc));
        return -ENOTSUP;
    }
    if (new > FVD_MAX_SIZE) {
        error_setg(errp, "Image size too large");
        return -EFBIG;
    }
    new = QEMU_ALIGN_UP(new, BDRV_SECTOR_SIZE);
    if (new == old) {
        return 0;
    }
    ret = fvd_begin_change(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write FVD header");
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    /* Guest requests are excluded by the layer; background copies too. */
    while (fvd_alloc_wait(s, 0, UINT64_MAX)) {
        /* wait for every copy-on-read write */
    }
    if (s->compact) {
        /* No record of an earlier mapping may be replayed after the table
         * changed size: commit, write home, move the tail past them. */
        ret = fvd_journal_commit(bs);
        if (ret >= 0) {
            ret = fvd_journal_checkpoint(bs);
        }
        if (ret < 0) {
            qemu_co_mutex_unlock(&s->meta_lock);
            error_setg_errno(errp, -ret, "Could not write the FVD metadata");
            return ret;
        }
    }
    ret = new > old ? fvd_grow(bs, old, new, errp) : fvd_shrink(bs, new, errp);
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/* ---- backing file and amend ---- */

/*
 * Before the base is dropped: blocks still in the base must read as zeroes
 * afterwards, so their data storage is zeroed (holes where possible) and
 * flushed. The header that then drops the base also drops the coverage.
 */
static int coroutine_fn fvd_zero_base_blocks(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    uint64_t c = 0;
    int ret = 0;

    while (c < s->nb_blocks && ret >= 0) {
        uint64_t run;
        bool in_image;
        ret = fvd_block_run(s, c, s->nb_blocks, &in_image, &run);
        if (ret >= 0 && !in_image) {
            int64_t start = c << bits;
            int64_t end = MIN((int64_t)((c + run) << bits),
                              (int64_t)fvd_coverage(s));
            ret = fvd_data_pwrite_zeroes(bs, start, end - start,
                                         BDRV_REQ_MAY_UNMAP, false);
        }
        c += run;
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(s->data);
    }
    return ret;
}

/* Set names (NULL keeps one); dropping the base also drops the coverage. */
static int coroutine_fn fvd_rename(BlockDriverState *bs,
                                   const char *const *names, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    const char *base = names[FVD_NAME_BASE];
    bool drop = base && !*base && fvd_coverage(s);
    uint64_t cov = s->header.base_coverage;
    int ret = 0;

    uint64_t compat = s->header.compatible_features;

    if (drop) {
        ret = fvd_zero_base_blocks(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not zero the blocks still "
                             "in the base");
            return ret;
        }
        /* No coverage left: nothing for COMPLETE to record. */
        s->header.base_coverage = 0;
        s->header.compatible_features &= ~FVD_COMPAT_COMPLETE;
    }
    ret = fvd_set_names(bs, names, errp);
    if (ret < 0) {
        s->header.base_coverage = cov;
        s->header.compatible_features = compat;
        return ret;
    }
    if (drop) {
        s->nb_blocks = 0;
    }
    pstrcpy(bs->backing_file, sizeof(bs->backing_file),
            s->names[FVD_NAME_BASE] ? s->names[FVD_NAME_BASE] : "");
    pstrcpy(bs->backing_format, sizeof(bs->backing_format),
            s->names[FVD_NAME_BASE_FMT] ? s->names[FVD_NAME_BASE_FMT] : "");
    return 0;
}

int coroutine_fn fvd_change_backing_file(BlockDriverState *bs,
                                         const char *backing_file,
                                         const char *backing_fmt)
{
    BDRVFvdState *s = bs->opaque;
    const char *names[FVD_NAME_COUNT] = { NULL };
    int ret;

    names[FVD_NAME_BASE] = backing_file ? backing_file : "";
    names[FVD_NAME_BASE_FMT] = backing_fmt && names[FVD_NAME_BASE][0]
                               ? backing_fmt : "";
    ret = fvd_begin_change(bs);
    if (ret < 0) {
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    while (fvd_alloc_wait(s, 0, UINT64_MAX)) {
        /* a background copy-on-read write must not race the zeroing */
    }
    ret = fvd_rename(bs, names, NULL);
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/*
 * The names amend would store: within the limits, and nothing that no later
 * open could follow (bdrv_header_name_storable: filters, json:, unknown
 * protocols; a network name then needs --allow-header-protocols).
 */
static int fvd_amend_check(BDRVFvdState *s, const char *const *names,
                           Error **errp)
{
    const char *base = names[FVD_NAME_BASE];
    const char *base_fmt = names[FVD_NAME_BASE_FMT];
    const char *data = names[FVD_NAME_DATA];
    const char *data_fmt = names[FVD_NAME_DATA_FMT];

    if (data && !*data) {
        error_setg(errp, "The data file of an FVD image cannot be removed");
        return -EINVAL;
    }
    if ((data || data_fmt) && !s->data_file) {
        error_setg(errp, "This FVD image has no separate data file");
        return -EINVAL;
    }
    if (data_fmt && *data_fmt && strcmp(data_fmt, "raw")) {
        error_setg(errp, "FVD data files must be raw, not '%s'", data_fmt);
        return -EINVAL;
    }
    if ((data || (data_fmt && *data_fmt)) &&
        !bdrv_header_name_storable("Data file", data,
                                   data_fmt && *data_fmt ? data_fmt : NULL,
                                   errp)) {
        return -EPERM;
    }
    if (((base && *base) || (base_fmt && *base_fmt)) &&
        !bdrv_header_name_storable("Backing file", base && *base ? base : NULL,
                                   base_fmt && *base_fmt ? base_fmt : NULL,
                                   errp)) {
        return -EPERM;
    }
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        size_t max = (i == FVD_NAME_BASE || i == FVD_NAME_DATA)
                     ? FVD_MAX_NAME : FVD_MAX_FMT_NAME;
        if (names[i] && strlen(names[i]) > max) {
            error_setg(errp, "Name too long: '%.40s...'", names[i]);
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * amend data_file=NAME: the new data file must open (resolved like the
 * header's name) and hold the whole disk before the header may name it;
 * the session then continues on it, locked like the one it replaces.
 */
static BlockDriverState *coroutine_fn
fvd_amend_open_data(BlockDriverState *bs, const char *name, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    char *full = path_combine(bs->filename, name);
    int flags = bs->open_flags & (BDRV_O_RDWR | BDRV_O_NOCACHE |
                                  BDRV_O_NATIVE_AIO | BDRV_O_NO_FLUSH |
                                  BDRV_O_UNMAP);
    BlockDriverState *d = bdrv_open_child(full, NULL, NULL, flags, false,
                                          errp);
    int64_t len;

    g_free(full);
    if (!d) {
        error_prepend(errp, "Could not open FVD data file: ");
        return NULL;
    }
    len = bdrv_getlength(d);
    if (len < 0 || (uint64_t)len < (s->compact ? fvd_data_needed(s)
                                               : s->header.virtual_size)) {
        error_setg(errp, "FVD data file '%s' is smaller than the virtual "
                   "disk (%" PRId64 " < %" PRIu64 ")", bdrv_get_filename(d),
                   len, s->header.virtual_size);
        bdrv_unref(d);
        return NULL;
    }
    if (bdrv_attach_data_file_perm(bs, d, errp) < 0) {
        bdrv_unref(d);
        return NULL;
    }
    return d;
}

/*
 * Continue on new_data; returns the old data file for the caller to
 * release. Everything was flushed, so no cache entry depends on the old
 * file: a fresh cache replaces the one that knew it (amend runs with no
 * request in flight, so no entry is pinned).
 */
static BlockDriverState *fvd_switch_data(BlockDriverState *bs,
                                         BlockDriverState *new_data)
{
    BDRVFvdState *s = bs->opaque;
    BlockDriverState *old = s->data_file;

    s->data_file = new_data;
    s->data = new_data;
    bs->data_file = new_data;
    if (s->bitmap) {
        table_cache_free(s->bitmap);
        s->bitmap = fvd_bitmap_cache_new(bs);
    }
    return old;
}

/* Everything of this session durable, the bitmap entries home. */
static int coroutine_fn fvd_flush_all(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int ret = fvd_co_flush(bs);

    if (ret >= 0 && s->bitmap) {
        ret = table_cache_flush(s->bitmap);
    }
    return ret;
}

int coroutine_fn fvd_count_base_blocks(BDRVFvdState *s, uint64_t *missing)
{
    uint64_t c = 0;
    int ret = 0;

    *missing = 0;
    while (c < s->nb_blocks) {
        uint64_t run;
        bool in_image;
        ret = fvd_block_run(s, c, s->nb_blocks, &in_image, &run);
        if (ret < 0) {
            return ret;
        }
        if (!in_image) {
            *missing += run;
        }
        c += run;
    }
    return 0;
}

/*
 * Spec section 10: COMPLETE goes into the header only after every bit and
 * mapping that makes the image complete is durable (journal records
 * committed, copy-on-read and prefetch bits written home, both after
 * their data), so a crash before the header write leaves the bit clear
 * and one after it leaves a true bit. Bits are never cleared, so it stays
 * true until the base is dropped.
 */
int coroutine_fn fvd_record_complete(BlockDriverState *bs, bool drop_base)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t missing = 0;
    int ret = fvd_begin_change(bs);

    if (ret < 0) {
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    while (fvd_alloc_wait(s, 0, UINT64_MAX)) {
        /* copies in flight finish first */
    }
    if (!s->nb_blocks) {
        goto out;               /* no base coverage (dropped already) */
    }
    ret = fvd_count_base_blocks(s, &missing);
    if (ret < 0 || missing) {
        goto out;
    }
    if (!(s->header.compatible_features & FVD_COMPAT_COMPLETE)) {
        ret = fvd_flush_all(bs);
        if (ret >= 0) {
            s->header.compatible_features |= FVD_COMPAT_COMPLETE;
            ret = fvd_write_header(bs);
            if (ret < 0) {
                s->header.compatible_features &= ~FVD_COMPAT_COMPLETE;
            }
        }
    }
    if (ret >= 0 && drop_base && s->names[FVD_NAME_BASE]) {
        /*
         * Nothing is in the base: only its name goes. The coverage and the
         * bitmap stay (guest requests in flight rely on them; every bit is
         * 1, so nothing reads the base), and so does COMPLETE. The base
         * stays attached, unread, until the image is closed.
         */
        const char *names[FVD_NAME_COUNT] = { "", "" };
        ret = fvd_set_names(bs, names, NULL);
        if (ret >= 0) {
            bs->backing_file[0] = '\0';
            bs->backing_format[0] = '\0';
        }
    }
out:
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

int coroutine_fn fvd_amend_options(BlockDriverState *bs, QemuOpts *opts,
                                   bool force, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    const char *names[FVD_NAME_COUNT] = {
        qemu_opt_get(opts, "backing_file"), qemu_opt_get(opts, "backing_fmt"),
        qemu_opt_get(opts, "data_file"), qemu_opt_get(opts, "data_file_fmt"),
    };
    bool renames = names[0] || names[1] || names[2] || names[3];
    BlockDriverState *new_data = NULL;
    int ret = fvd_amend_check(s, names, errp);

    if (ret < 0) {
        return ret;
    }
    if (names[FVD_NAME_DATA]) {
        new_data = fvd_amend_open_data(bs, names[FVD_NAME_DATA], errp);
        if (!new_data) {
            return -EINVAL;
        }
    }
    if (names[FVD_NAME_BASE] && !*names[FVD_NAME_BASE] &&
        !names[FVD_NAME_BASE_FMT]) {
        names[FVD_NAME_BASE_FMT] = "";
    }
    ret = fvd_begin_change(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write FVD header");
        bdrv_unref(new_data);
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    if (new_data) {
        ret = fvd_flush_all(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not flush the FVD image");
        }
    }
    if (ret >= 0 && renames) {
        ret = fvd_rename(bs, names, errp);
    }
    if (ret >= 0 && new_data) {
        new_data = fvd_switch_data(bs, new_data);
    }
    if (ret >= 0 && qemu_opt_has(opts, "copy_on_read")) {
        uint64_t old = s->header.compatible_features;
        bool on = qemu_opt_get_bool(opts, "copy_on_read", false);
        s->header.compatible_features = on ? old | FVD_COMPAT_COPY_ON_READ
                                            : old & ~FVD_COMPAT_COPY_ON_READ;
        ret = fvd_write_header(bs);
        if (ret < 0) {
            s->header.compatible_features = old;
            error_setg_errno(errp, -ret, "Could not write FVD header");
        } else {
            s->copy_on_read = on;
        }
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    bdrv_unref(new_data);       /* the old data file after a switch */
    return ret;
}

/* ---- check and info ---- */

typedef struct FvdCount {
    BlockDriverState *bs;
    uint64_t allocated, stray;
    int ret;
} FvdCount;

static void coroutine_fn fvd_count_entry(void *opaque)
{
    FvdCount *cnt = opaque;
    BDRVFvdState *s = cnt->bs->opaque;

    cnt->allocated = cnt->stray = 0;
    cnt->ret = s->bitmap ? fvd_bitmap_count(s, &cnt->allocated, &cnt->stray)
                         : 0;
}

static uint64_t fvd_total_blocks(BDRVFvdState *s)
{
    return DIV_ROUND_UP(s->header.virtual_size, s->block_size);
}

/* Blocks in the image: set bits, plus every block past the coverage. */
static uint64_t fvd_blocks_in_image(BDRVFvdState *s, uint64_t set_bits)
{
    return set_bits + (fvd_total_blocks(s) - s->nb_blocks);
}

static int coroutine_fn fvd_check_leaks(BlockDriverState *bs, FvdCount *cnt,
                                        BdrvCheckResult *res,
                                        BdrvCheckMode fix)
{
    BDRVFvdState *s = bs->opaque;
    bool repair = (fix & BDRV_FIX_LEAKS) && !bs->read_only;

    /* Bits past the coverage (left by a shrink) mean nothing: leaks. */
    fprintf(stderr, "%s %" PRIu64 " bitmap bits set past the base coverage\n",
            repair ? "Repairing" : "Leaked", cnt->stray);
    if (!repair) {
        res->leaks += cnt->stray;
        return 0;
    }
    int ret = fvd_begin_change(bs);
    if (ret >= 0) {
        ret = fvd_bitmap_clear_cached(s, s->nb_blocks,
                                      s->header.bitmap_size * 8);
    }
    if (ret >= 0) {
        ret = table_cache_flush(s->bitmap);
    }
    if (ret >= 0) {
        res->leaks_fixed += cnt->stray;
    } else {
        res->leaks += cnt->stray;
    }
    return 0;
}

/* Physical chunks below the highest one in use that no entry maps: leaked
 * by a crash (or freed by a shrink). Repair discards them; they are reused
 * by later allocations either way, usage being rebuilt at every open. */
static void coroutine_fn fvd_check_chunks(BlockDriverState *bs,
                                          BdrvCheckResult *res,
                                          BdrvCheckMode fix)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t leaks = fvd_table_count_leaks(s);
    bool repair = (fix & BDRV_FIX_LEAKS) && !bs->read_only;

    if (!leaks) {
        return;
    }
    fprintf(stderr, "%s %" PRIu64 " chunks that no table entry maps\n",
            repair ? "Repairing" : "Leaked", leaks);
    if (repair && fvd_begin_change(bs) >= 0 && fvd_table_reclaim(bs) >= 0) {
        res->leaks_fixed += leaks;
    } else {
        res->leaks += leaks;
    }
}

static void coroutine_fn fvd_check_data_size(BlockDriverState *bs,
                                             BdrvCheckResult *res,
                                             BdrvCheckMode fix)
{
    BDRVFvdState *s = bs->opaque;
    int64_t need = fvd_data_needed(s);
    int64_t len = bdrv_getlength(s->data);

    if (len < 0) {
        res->check_errors++;
        return;
    }
    if (len >= need) {
        return;
    }
    if (s->compact) {
        /*
         * Not an error: a commit that maps only fresh chunks may skip the
         * data flush (spec, T2 exception), so after a crash the storage
         * can end before chunks the table maps. They read as zeroes, as
         * fresh chunks do; the next allocation grows the storage, and a
         * repair grows it now.
         */
        if (fix && !bs->read_only && fvd_begin_change(bs) >= 0) {
            bdrv_co_truncate(s->data, need, false, PREALLOC_MODE_OFF, NULL);
        }
        return;
    }
    bool repair = (fix & BDRV_FIX_ERRORS) && !bs->read_only;
    fprintf(stderr, "%s data storage is shorter than the virtual disk "
            "(%" PRId64 " < %" PRId64 ")\n", repair ? "Repairing" : "ERROR",
            len, need);
    if (repair && fvd_begin_change(bs) >= 0 &&
        bdrv_co_truncate(s->data, need, false, PREALLOC_MODE_OFF,
                         NULL) >= 0) {
        res->corruptions_fixed++;
    } else {
        res->corruptions++;
    }
}

/*
 * COMPLETE set while blocks are still in the base: the bit is only a
 * record (reads always follow the bitmap), so the data is fine, but the
 * record is false; a repair clears it.
 */
static void coroutine_fn fvd_check_complete(BlockDriverState *bs,
                                            BdrvCheckResult *res,
                                            BdrvCheckMode fix)
{
    BDRVFvdState *s = bs->opaque;
    bool repair = (fix & BDRV_FIX_ERRORS) && !bs->read_only;
    uint64_t missing;

    if (!(s->header.compatible_features & FVD_COMPAT_COMPLETE)) {
        return;
    }
    if (fvd_count_base_blocks(s, &missing) < 0) {
        res->check_errors++;
        return;
    }
    if (!missing) {
        return;
    }
    fprintf(stderr, "%s the image is marked complete, but %" PRIu64
            " blocks are still in the base\n",
            repair ? "Repairing" : "ERROR", missing);
    if (repair && fvd_begin_change(bs) >= 0) {
        s->header.compatible_features &= ~FVD_COMPAT_COMPLETE;
        if (fvd_write_header(bs) >= 0) {
            res->corruptions_fixed++;
            return;
        }
        s->header.compatible_features |= FVD_COMPAT_COMPLETE;
    }
    res->corruptions++;
}

int coroutine_fn fvd_co_check(BlockDriverState *bs, BdrvCheckResult *res,
                              BdrvCheckMode fix)
{
    BDRVFvdState *s = bs->opaque;
    FvdCount cnt = { .bs = bs };

    fvd_count_entry(&cnt);
    if (cnt.ret < 0) {
        res->check_errors++;
        return 0;
    }
    if (s->replayed) {
        fprintf(stderr, "The image was not closed cleanly: its journal was "
                "replayed in memory (open it read-write to apply it)\n");
    }
    fvd_check_data_size(bs, res, fix);
    fvd_check_complete(bs, res, fix);
    if (s->compact) {
        fvd_check_chunks(bs, res, fix);
    }
    if (cnt.stray) {
        fvd_check_leaks(bs, &cnt, res, fix);
    }
    res->total_clusters = fvd_total_blocks(s);
    res->allocated_clusters = fvd_blocks_in_image(s, cnt.allocated);
    res->image_end_offset = s->data_file
        ? (int64_t)MAX(s->header.journal_offset + s->header.journal_size,
                       (uint64_t)s->header.header_size)
        : (int64_t)fvd_data_needed(s);
    return 0;
}

int fvd_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVFvdState *s = bs->opaque;
    bdi->cluster_size = s->block_size;
    bdi->is_dirty = s->header.incompatible_features & FVD_INCOMPAT_DIRTY;
    return 0;
}

ImageInfoSpecific *fvd_get_specific_info(BlockDriverState *bs, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    FvdCount cnt = { .bs = bs };
    ImageInfoSpecific *info = image_info_specific_new("fvd");

    bdrv_run_co(fvd_count_entry, &cnt);
    if (s->names[FVD_NAME_DATA]) {
        image_info_add_str(info, "data-file", s->names[FVD_NAME_DATA]);
    }
    image_info_add_int(info, "block-size", s->block_size);
    image_info_add_int(info, "base-coverage", s->header.base_coverage);
    image_info_add_int(info, "journal-size", s->header.journal_size);
    image_info_add_bool(info, "copy-on-read",
                        s->header.compatible_features &
                        FVD_COMPAT_COPY_ON_READ);
    image_info_add_bool(info, "dirty", s->header.incompatible_features &
                                       FVD_INCOMPAT_DIRTY);
    if (s->compact) {
        image_info_add_bool(info, "compact", true);
        image_info_add_int(info, "chunk-size", s->chunk_size);
        image_info_add_int(info, "chunks-used",
                           s->t.used - fvd_table_count_leaks(s));
        image_info_add_int(info, "table-entries", s->t.capacity);
    }
    const char *pf = fvd_prefetch_state(s);
    if (pf) {
        uint64_t cur, total;
        job_progress_get(s->pf.job, &cur, &total);
        image_info_add_str(info, "prefetch", pf);
        image_info_add_int(info, "prefetch-done", cur);
        image_info_add_int(info, "prefetch-total", total);
        if (s->prof.path || s->pf.order) {
            /* Blocks the profile puts first: 0 until the job has checked
             * it against the base, and when it was refused. */
            image_info_add_int(info, "prefetch-profile-blocks",
                               s->pf.profile_blocks);
        }
    }
    if (cnt.ret >= 0) {
        uint64_t in_image = fvd_blocks_in_image(s, cnt.allocated);
        image_info_add_int(info, "blocks-in-image", in_image);
        image_info_add_int(info, "total-blocks", fvd_total_blocks(s));
        /* Complete: the base is no longer needed (with a data file, that
         * file alone is a raw image of the disk). */
        image_info_add_bool(info, "complete", cnt.allocated == s->nb_blocks);
    }
    /* The header's record of it (spec section 10), set by prefetch;
     * shown where there is a base to finish or the bit is set. */
    if (s->nb_blocks || (s->header.compatible_features &
                         FVD_COMPAT_COMPLETE)) {
        image_info_add_bool(info, "complete-recorded",
                            s->header.compatible_features &
                            FVD_COMPAT_COMPLETE);
    }
    return info;
}
