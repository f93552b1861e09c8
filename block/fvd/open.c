/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD probe, open (header checks, names, data file, journal replay of an
 * image that was not closed cleanly), close (checkpoint, then the clean
 * header) and the driver table.
 */
#include "block/fvd/fvd.h"
#include "util/cutils.h"

static const QemuOptDesc fvd_open_opts[] = {
    { "data_file", QEMU_OPT_STRING,
      "Open this data file instead of the one named in the header" },
    { "copy_on_read", QEMU_OPT_BOOL,
      "Copy base data read by the guest into the image (default: as set "
      "at create)" },
    { "cache-size", QEMU_OPT_SIZE,
      "Bytes of bitmap kept in memory (default: the whole bitmap, at most "
      "4 MiB)" },
    { "cache-entry-size", QEMU_OPT_SIZE,
      "Bytes per bitmap cache entry (512 to 4096, power of two; default "
      "4096)" },
    { "prefetch", QEMU_OPT_BOOL,
      "Copy every block still in the base into the image in the background "
      "(default off)" },
    { "prefetch-start-delay", QEMU_OPT_NUMBER,
      "Seconds after open before prefetch starts (default 0)" },
    { "prefetch-bytes", QEMU_OPT_SIZE,
      "Bytes per prefetch copy (default 1 MiB, whole blocks)" },
    { "prefetch-max-inflight", QEMU_OPT_NUMBER,
      "Prefetch copies in flight at once, 1..16 (default 2)" },
    { "prefetch-bandwidth", QEMU_OPT_SIZE,
      "Most bytes per second prefetch copies (default 0: no cap)" },
    { "prefetch-min-throughput", QEMU_OPT_SIZE,
      "Bytes per second below which prefetch takes its throughput for "
      "congestion and may pause (default 5 MiB)" },
    { "prefetch-measure-time", QEMU_OPT_NUMBER,
      "Milliseconds of I/O per throughput sample (default 100)" },
    { "prefetch-throttle-time", QEMU_OPT_NUMBER,
      "Longest random pause in milliseconds when congested (default 30000; "
      "0: never pause)" },
    { "prefetch-alpha", QEMU_OPT_NUMBER,
      "Weight of the old average in percent (default 80)" },
    { "prefetch-busy-duty", QEMU_OPT_NUMBER,
      "Percent of the time prefetch may copy while the guest does I/O, "
      "1..100 (default 10; 100: no limit)" },
    { "prefetch-profile", QEMU_OPT_STRING,
      "Profile file (prefetch-profile-record) whose blocks prefetch copies "
      "first" },
    { "prefetch-profile-record", QEMU_OPT_STRING,
      "Record the order of the guest's first reads of base blocks into "
      "this profile file, written at close" },
    { "prefetch-drop-base", QEMU_OPT_BOOL,
      "When prefetch has copied every block, drop the base from the header "
      "(default off)" },
    { NULL }
};

static int fvd_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    if (buf_size >= 8 && !memcmp(buf, FVD_MAGIC, 4)) {
        return 100;
    }
    return 0;
}

/* Read and check the fixed header; nothing is written. */
static int coroutine_fn fvd_load_header(BlockDriverState *bs, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    int64_t file_len = bdrv_getlength(bs->file);
    int ret;

    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "Could not get file size");
        return (int)file_len;
    }
    if (file_len < (int64_t)sizeof(FvdDiskHeader)) {
        error_setg(errp, "Image is not in FVD format (file too short)");
        return -EINVAL;
    }
    memset(s->hdr_sector, 0, sizeof(s->hdr_sector));
    BLKDBG_EVENT(bs->file, "header_read");
    ret = bdrv_co_pread(bs->file, 0, MIN(file_len, FVD_HEADER_SECTOR),
                        s->hdr_sector, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read FVD header");
        return ret;
    }
    if (!fvd_header_to_cpu((FvdDiskHeader *)s->hdr_sector, &s->header)) {
        error_setg(errp, "Image is not in FVD format");
        return -EINVAL;
    }
    return fvd_validate_header(&s->header, file_len, errp);
}

/*
 * Open the data file: the open option's name (the user's), else the
 * header's, which obeys the header-name rule like add-cow's image file
 * (bdrv_open_header_file: local files unless the user opted in, never a
 * filter or json:; relative to the FVD file). The header's format name
 * goes through the same rule before the raw-only check.
 */
static int coroutine_fn fvd_open_data_file(BlockDriverState *bs,
                                           const char *override, int flags,
                                           Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    const char *fmt = s->names[FVD_NAME_DATA_FMT];

    if (fmt && !bdrv_header_names_allowed("Data file", NULL, fmt, flags,
                                          errp)) {
        return -EPERM;
    }
    if (fmt && strcmp(fmt, "raw")) {
        error_setg(errp, "FVD data file format '%s' is not supported (only "
                   "raw)", fmt);
        return -ENOTSUP;
    }
    flags &= BDRV_O_RDWR | BDRV_O_NOCACHE | BDRV_O_NATIVE_AIO |
             BDRV_O_NO_FLUSH | BDRV_O_UNMAP;
    if (override) {
        s->data_file = bdrv_open_child(override, NULL, NULL, flags, false,
                                       errp);
    } else {
        s->data_file = bdrv_open_header_file(bs, s->names[FVD_NAME_DATA],
                                             "Data file", flags, errp);
    }
    if (!s->data_file) {
        error_prepend(errp, "Could not open FVD data file: ");
        return -EINVAL;
    }
    return 0;
}

/* Sizes of the bitmap cache from the open options. */
static int fvd_cache_geometry(BlockDriverState *bs, QemuOpts *options,
                              Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t entry = qemu_opt_get_size(options, "cache-entry-size",
                                       FVD_PAGE);
    uint64_t whole = MAX(s->header.bitmap_size, (uint64_t)FVD_PAGE);
    uint64_t size = qemu_opt_get_size(options, "cache-size",
                                      MIN(whole, FVD_DEFAULT_CACHE));

    if (entry < 512 || entry > FVD_PAGE || (entry & (entry - 1))) {
        error_setg(errp, "cache-entry-size must be a power of two between "
                   "512 and 4096");
        return -EINVAL;
    }
    if (size < entry || size > 1 * GiB) {
        error_setg(errp, "cache-size must be between one entry (%" PRIu64
                   " bytes) and 1 GiB", entry);
        return -EINVAL;
    }
    s->entry_size = entry;
    s->entry_bits = entry * 8;
    if (!s->nb_blocks) {
        return 0;               /* no base coverage: no bitmap to cache */
    }
    /* More entries than the bitmap has would only waste memory. */
    s->cache_entries = MIN(size / entry, DIV_ROUND_UP(whole, entry));
    s->bitmap = fvd_bitmap_cache_new(bs);
    return 0;
}

/*
 * Replay the journal of an image that was not closed cleanly, into memory
 * only: nothing is written during the open, so an open that fails later
 * (its base cannot be opened) leaves the file as it was. The replayed bits
 * go home before this session's first journal write, or at close.
 */
static int coroutine_fn fvd_recover(BlockDriverState *bs, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    uint64_t records;
    int ret = fvd_journal_replay(bs, &records, errp);

    if (ret >= 0 && !bs->read_only && (s->bitmap || s->t.replayed)) {
        s->replayed_in_cache = true;
    }
    return ret;
}

static void fvd_free_state(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;

    /* Background work uses this state: close stopped it (fvd_journal_stop);
     * a failed open never started any. */
    assert(!s->bg_running);
    fvd_bitmap_free(s);
    fvd_table_free(s);
    table_cache_free(s->bitmap);
    s->bitmap = NULL;
    fvd_profile_free(s);
    bs->data_file = NULL;
    bdrv_unref(s->data_file);
    s->data_file = NULL;
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        g_free(s->names[i]);
        s->names[i] = NULL;
    }
}

static int coroutine_fn fvd_open(BlockDriverState *bs, QemuOpts *options,
                                 int flags, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    const char *override = qemu_opt_get(options, "data_file");
    int ret;

    qemu_co_mutex_init(&s->meta_lock);
    qemu_co_mutex_init(&s->hdr_lock);
    fvd_bitmap_init(s);
    ret = fvd_load_header(bs, errp);
    if (ret < 0) {
        goto fail;
    }
    s->block_size = UINT64_C(1) << s->header.block_bits;
    s->nb_blocks = DIV_ROUND_UP(s->header.base_coverage, s->block_size);
    ret = fvd_read_names(bs->file, &s->header, s->names, errp);
    if (ret < 0) {
        goto fail;
    }
    /* The layer opens the base through the header-name rule (an open
     * writes nothing, so a refused base leaves the file as it was). */
    if (s->names[FVD_NAME_BASE]) {
        pstrcpy(bs->backing_file, sizeof(bs->backing_file),
                s->names[FVD_NAME_BASE]);
    }
    if (s->names[FVD_NAME_BASE_FMT]) {
        pstrcpy(bs->backing_format, sizeof(bs->backing_format),
                s->names[FVD_NAME_BASE_FMT]);
    }
    if (override && !s->names[FVD_NAME_DATA]) {
        error_setg(errp, "This FVD image has no separate data file");
        ret = -EINVAL;
        goto fail;
    }
    if (s->names[FVD_NAME_DATA]) {
        ret = fvd_open_data_file(bs, override, flags, errp);
        if (ret < 0) {
            goto fail;
        }
        bs->data_file = s->data_file;
    }
    s->data = s->data_file ? s->data_file : bs->file;
    ret = fvd_cache_geometry(bs, options, errp);
    if (ret < 0) {
        goto fail;
    }
    if (s->header.incompatible_features & FVD_INCOMPAT_TABLE) {
        ret = fvd_table_load(bs, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    fvd_journal_init(bs);
    if (s->header.incompatible_features & FVD_INCOMPAT_DIRTY) {
        ret = fvd_recover(bs, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    if (s->compact) {
        ret = fvd_table_rebuild_usage(s, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    s->copy_on_read = qemu_opt_get_bool(
        options, "copy_on_read",
        s->header.compatible_features & FVD_COMPAT_COPY_ON_READ);
    if (flags & BDRV_O_COPY_ON_READ) {
        /* The driver copies whole blocks without journal records; the
         * layer's generic copy-on-read would journal every copy. */
        s->copy_on_read = true;
        bs->open_flags &= ~BDRV_O_COPY_ON_READ;
    }
    /* Nothing is written during open (the layer may still fail it, e.g.
     * on the base): a writer clears the autoclear bits it does not know
     * before its first change instead (fvd_begin_change, spec section 3). */
    s->autoclear_pending = (flags & BDRV_O_RDWR) &&
        (s->header.autoclear_features & ~FVD_AUTOCLEAR_MASK);
    ret = fvd_prefetch_setup(bs, options, errp);
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    fvd_free_state(bs);
    return ret;
}

/* Whether close may write: not after an open that failed at the base. */
static bool fvd_opened(BlockDriverState *bs)
{
    return !bs->backing_file[0] || bs->backing ||
           (bs->open_flags & BDRV_O_NO_BACKING);
}

static void coroutine_fn fvd_close(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;

    /* The layer drained and flushed: every bit is in the journal (unless
     * that flush failed). Write them home, then mark the image clean (the
     * next open skips replay). The prefetch job stops first (paused by the
     * drain, it is cancelled and waited for). */
    fvd_prefetch_stop(bs);
    fvd_profile_record_finish(bs);
    fvd_journal_stop(bs);
    if (!bs->read_only && (s->session_dirty || s->replayed_in_cache) &&
        fvd_opened(bs) && fvd_begin_change(bs) >= 0 &&
        fvd_journal_checkpoint(bs) >= 0) {
        s->header.incompatible_features &= ~FVD_INCOMPAT_DIRTY;
        if (fvd_write_header(bs) < 0) {
            s->header.incompatible_features |= FVD_INCOMPAT_DIRTY;
        }
    }
    fvd_free_state(bs);
}

static void fvd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    bs->bl.request_alignment = 1;
}

static int64_t fvd_getlength(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    return s->header.virtual_size;
}

static int64_t fvd_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int64_t a = bdrv_get_allocated_file_size(bs->file);
    int64_t b = s->data_file ? bdrv_get_allocated_file_size(s->data_file) : 0;

    if (a < 0) {
        return a;
    }
    return b < 0 ? a : a + b;
}

/* A new image reads as zeroes unless a base or an old data file shows. */
static bool fvd_has_zero_init(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    return !bs->backing && (!s->data_file || s->compact);
}

static BlockDriver bdrv_fvd = {
    .format_name            = "fvd",
    .instance_size          = sizeof(BDRVFvdState),
    .supports_backing       = true,
    .create_opts            = fvd_create_opts,
    .open_opts              = fvd_open_opts,
    .amend_opts             = fvd_amend_opts,

    .bdrv_probe             = fvd_probe,
    .bdrv_open              = fvd_open,
    .bdrv_close             = fvd_close,
    .bdrv_refresh_limits    = fvd_refresh_limits,
    .bdrv_create            = fvd_create,

    .bdrv_co_preadv         = fvd_co_preadv,
    .bdrv_co_pwritev        = fvd_co_pwritev,
    .bdrv_co_pwrite_zeroes  = fvd_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = fvd_co_pdiscard,
    .bdrv_co_flush          = fvd_co_flush,
    .bdrv_co_block_status   = fvd_co_block_status,
    .bdrv_co_truncate       = fvd_co_truncate,
    .bdrv_getlength         = fvd_getlength,
    .bdrv_get_allocated_file_size = fvd_get_allocated_file_size,

    .bdrv_get_info          = fvd_get_info,
    .bdrv_get_specific_info = fvd_get_specific_info,
    .bdrv_get_populate_job  = fvd_prefetch_job,
    .bdrv_has_zero_init     = fvd_has_zero_init,
    .bdrv_co_check          = fvd_co_check,
    .bdrv_amend_options     = fvd_amend_options,
    .bdrv_change_backing_file = fvd_change_backing_file,

    /* No FUA: the layer follows FUA writes with a full flush, which commits
     * the journal too. No snapshot callbacks: refused by the layer. */
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP,
};

BLOCK_DRIVER_REGISTER(bdrv_fvd)
