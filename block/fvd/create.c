/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD image creation: options, the layout (header, names, bitmap covering
 * the base, journal, data area or separate data file) and the files.
 */
#include "block/fvd/fvd.h"
#include "util/cutils.h"

const QemuOptDesc fvd_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { "backing_file", QEMU_OPT_STRING, "File name of a base image" },
    { "backing_fmt", QEMU_OPT_STRING, "Image format of the base image" },
    { "data_file", QEMU_OPT_STRING,
      "File name of a separate raw data file (default: data in the FVD "
      "file)" },
    { "data_file_fmt", QEMU_OPT_STRING, "Format of the data file (raw)" },
    { "copy_on_read", QEMU_OPT_BOOL,
      "Copy base data read by the guest into the image (default off)" },
    { "block_size", QEMU_OPT_SIZE,
      "Copy-on-write granularity, 512 B to 2 MiB, power of two (default "
      "4 KiB, larger when the bitmap would exceed 4 MiB)" },
    { "journal_size", QEMU_OPT_SIZE,
      "Journal size, 16 KiB to 64 MiB (default 1 MiB with a base image or "
      "a table)" },
    { "compact_image", QEMU_OPT_BOOL,
      "Map the disk through a table of chunks allocated in order, so that "
      "the storage grows only with data (default off)" },
    { "chunk_size", QEMU_OPT_SIZE,
      "Table granularity of a compact image, 4 KiB to 1 GiB, power of two, "
      "at least the block size (default 1 MiB)" },
    { "storage_grow_unit", QEMU_OPT_SIZE,
      "Bytes the data storage of a compact image grows by at a time, "
      "rounded up to chunks (default 16 MiB)" },
    { NULL }
};

typedef struct FvdCreate {
    const char *filename;
    const char *names[FVD_NAME_COUNT];
    uint64_t size;
    bool has_size;
    uint64_t block_size;            /* 0: choose */
    uint64_t journal_size;
    bool has_journal_size;
    bool copy_on_read;
    bool compact;
    uint64_t chunk_size;
    bool has_chunk_size;
    uint64_t grow_unit;
    uint64_t base_len;              /* 0: no base */
} FvdCreate;

static int fvd_create_parse(FvdCreate *c, QemuOpts *opts, Error **errp)
{
    c->names[FVD_NAME_BASE] = qemu_opt_get(opts, "backing_file");
    c->names[FVD_NAME_BASE_FMT] = qemu_opt_get(opts, "backing_fmt");
    c->names[FVD_NAME_DATA] = qemu_opt_get(opts, "data_file");
    c->names[FVD_NAME_DATA_FMT] = qemu_opt_get(opts, "data_file_fmt");
    c->has_size = qemu_opt_has(opts, "size");
    c->size = qemu_opt_get_size(opts, "size", 0);
    c->block_size = qemu_opt_get_size(opts, "block_size", 0);
    c->has_journal_size = qemu_opt_has(opts, "journal_size");
    c->journal_size = ROUND_UP(qemu_opt_get_size(opts, "journal_size", 0),
                               FVD_PAGE);
    c->copy_on_read = qemu_opt_get_bool(opts, "copy_on_read", false);
    c->compact = qemu_opt_get_bool(opts, "compact_image", false);
    c->chunk_size = qemu_opt_get_size(opts, "chunk_size", FVD_DEFAULT_CHUNK);
    c->has_chunk_size = qemu_opt_has(opts, "chunk_size");
    c->grow_unit = qemu_opt_get_size(opts, "storage_grow_unit",
                                     FVD_DEFAULT_GROW);
    if (!c->compact && (qemu_opt_has(opts, "chunk_size") ||
                        qemu_opt_has(opts, "storage_grow_unit"))) {
        error_setg(errp, "chunk_size and storage_grow_unit need "
                   "compact_image=on");
        return -EINVAL;
    }
    if (c->compact &&
        (c->chunk_size < (1u << FVD_MIN_CHUNK_BITS) ||
         c->chunk_size > (1u << FVD_MAX_CHUNK_BITS) ||
         (c->chunk_size & (c->chunk_size - 1)))) {
        error_setg(errp, "Chunk size must be a power of two between 4K and "
                   "1G");
        return -EINVAL;
    }
    if (c->compact && (!c->grow_unit || c->grow_unit > 64 * TiB ||
                       DIV_ROUND_UP(c->grow_unit, c->chunk_size) >
                       FVD_MAX_GROW_CHUNKS)) {
        error_setg(errp, "storage_grow_unit must be between 1 byte and "
                   "65536 chunks");
        return -EINVAL;
    }

    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        if (c->names[i] && !*c->names[i]) {
            c->names[i] = NULL;
        }
    }
    if (qemu_opt_has(opts, "block_size") &&
        (c->block_size < (1u << FVD_MIN_BLOCK_BITS) ||
         c->block_size > (1u << FVD_MAX_BLOCK_BITS) ||
         (c->block_size & (c->block_size - 1)))) {
        error_setg(errp, "Block size must be a power of two between 512 and "
                   "2M");
        return -EINVAL;
    }
    if (c->names[FVD_NAME_BASE_FMT] && !c->names[FVD_NAME_BASE]) {
        error_setg(errp, "backing_fmt given without backing_file");
        return -EINVAL;
    }
    if (c->names[FVD_NAME_DATA_FMT] && !c->names[FVD_NAME_DATA]) {
        error_setg(errp, "data_file_fmt given without data_file");
        return -EINVAL;
    }
    if (c->names[FVD_NAME_DATA_FMT] &&
        strcmp(c->names[FVD_NAME_DATA_FMT], "raw")) {
        error_setg(errp, "FVD data files must be raw, not '%s'",
                   c->names[FVD_NAME_DATA_FMT]);
        return -EINVAL;
    }
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        size_t max = (i == FVD_NAME_BASE || i == FVD_NAME_DATA)
                     ? FVD_MAX_NAME : FVD_MAX_FMT_NAME;
        if (c->names[i] && strlen(c->names[i]) > max) {
            error_setg(errp, "Name too long: '%.40s...'", c->names[i]);
            return -EINVAL;
        }
    }
    return 0;
}

/* The base's length (the bitmap covers only what the base holds). A base
 * that cannot be opened (qemu-img create -u) is taken to cover the disk. */
static void fvd_create_base_len(FvdCreate *c)
{
    const char *b = c->names[FVD_NAME_BASE];
    char *path;

    if (!b) {
        return;
    }
    path = (path_is_absolute(b) || strchr(b, ':')) ? g_strdup(b)
                                                   : path_combine(c->filename,
                                                                  b);
    BlockDriverState *base = bdrv_open_child(path, c->names[FVD_NAME_BASE_FMT],
                                             NULL, BDRV_O_NO_BACKING, true,
                                             NULL);
    g_free(path);
    if (!base) {
        c->base_len = UINT64_MAX;
        return;
    }
    int64_t len = bdrv_getlength(base);
    bdrv_unref(base);
    c->base_len = len < 0 ? UINT64_MAX : (uint64_t)len;
}

/* Fill the header of the new image (layout of spec section 1). */
static int fvd_create_layout(FvdCreate *c, FvdHeader *h, Error **errp)
{
    size_t names_len = 0;

    *h = (FvdHeader) {
        .version = FVD_VERSION,
        .header_length = FVD_HEADER_LENGTH,
        .virtual_size = c->size,
    };
    h->base_coverage = c->names[FVD_NAME_BASE] ? MIN(c->size, c->base_len) : 0;
    uint64_t bs = c->block_size;
    if (!bs) {
        bs = FVD_DEFAULT_MIN_BLOCK;
        while (bs < (1u << FVD_MAX_BLOCK_BITS) &&
               fvd_bitmap_bytes(h->base_coverage, __builtin_ctzll(bs)) >
               FVD_DEFAULT_MAX_BITMAP) {
            bs *= 2;
        }
    }
    h->block_bits = __builtin_ctzll(bs);
    if (c->compact && bs > c->chunk_size) {
        if (c->has_chunk_size) {
            error_setg(errp, "The chunk size must be at least the block "
                       "size");
            return -EINVAL;
        }
        c->chunk_size = bs;
    }
    if (!c->has_journal_size) {
        c->journal_size = h->base_coverage || c->compact
                          ? FVD_DEFAULT_JOURNAL : 0;
    }
    if (c->journal_size ? (c->journal_size < FVD_MIN_JOURNAL ||
                           c->journal_size > FVD_MAX_JOURNAL)
                        : (h->base_coverage != 0 || c->compact)) {
        error_setg(errp, "Journal size must be between 16K and 64M");
        return -EINVAL;
    }
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        names_len += c->names[i] ? strlen(c->names[i]) : 0;
    }
    /* Room for the names twice over, so that a rename fits (spec 8). */
    h->header_size = ROUND_UP(FVD_NAMES_OFFSET + 2 * names_len + 1024,
                              FVD_PAGE);
    h->bitmap_offset = h->header_size;
    h->bitmap_size = ROUND_UP(fvd_bitmap_bytes(h->base_coverage,
                                               h->block_bits), FVD_PAGE);
    h->journal_offset = h->bitmap_offset + h->bitmap_size;
    h->journal_size = c->journal_size;
    uint64_t meta_end = h->journal_offset + h->journal_size;
    if (c->compact) {
        /* The table covers the disk, and room for resize to grow it 64
         * times (at least to 1 GiB, at most to 1 TiB, at most 64 MiB of
         * table; sparse in the file until used). */
        uint64_t n = DIV_ROUND_UP(c->size, c->chunk_size);
        uint64_t room = MIN(MAX(c->size, FVD_TABLE_RESERVE / 1024 / 64) *
                            UINT64_C(64), (uint64_t)FVD_TABLE_RESERVE);
        uint64_t reserve = MAX(n, MIN(DIV_ROUND_UP(room, c->chunk_size),
                                      (uint64_t)FVD_MAX_TABLE / 4));
        if (n * 4 > FVD_MAX_TABLE) {
            error_setg(errp, "Too many chunks (%" PRIu64 "): use a larger "
                       "chunk_size", n);
            return -EINVAL;
        }
        h->incompatible_features |= FVD_INCOMPAT_TABLE;
        h->chunk_bits = __builtin_ctzll(c->chunk_size);
        h->grow_chunks = DIV_ROUND_UP(c->grow_unit, c->chunk_size);
        h->table_offset = meta_end;
        h->table_size = ROUND_UP(reserve * 4, FVD_PAGE);
        meta_end += h->table_size;
    }
    if (c->names[FVD_NAME_DATA]) {
        h->incompatible_features |= FVD_INCOMPAT_DATA_FILE;
    } else {
        h->data_offset = ROUND_UP(meta_end, FVD_DATA_ALIGN);
    }
    if (c->copy_on_read) {
        h->compatible_features |= FVD_COMPAT_COPY_ON_READ;
    }
    uint32_t at = FVD_NAMES_OFFSET;
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        uint32_t len = c->names[i] ? strlen(c->names[i]) : 0;
        h->names[i].offset = len ? at : 0;
        h->names[i].length = len;
        at += len;
    }
    return 0;
}

/* Create the data file, or keep an existing one (grown to the disk size). */
static int coroutine_fn fvd_create_data_file(FvdCreate *c,
                                             BlockDriverState **out,
                                             Error **errp)
{
    char *path = path_combine(c->filename, c->names[FVD_NAME_DATA]);
    BlockDriverState *d = bdrv_open_child(path, NULL, NULL, BDRV_O_RDWR,
                                          false, NULL);
    int ret = 0;

    if (d && c->compact) {
        /* Its chunks are allocated from the start: old contents go. */
        ret = bdrv_co_truncate(d, 0, false, PREALLOC_MODE_OFF, errp);
    } else if (d) {
        int64_t len = bdrv_getlength(d);
        if (len >= 0 && (uint64_t)len < c->size) {
            ret = bdrv_co_truncate(d, c->size, false, PREALLOC_MODE_OFF,
                                   errp);
        }
    } else {
        QemuOpts *o = qemu_opts_new();
        qemu_opt_set_number(o, "size", c->compact ? 0 : c->size);
        ret = bdrv_create_file(path, o, errp);
        qemu_opts_del(o);
        if (ret < 0) {
            error_prepend(errp, "Could not create data file: ");
        } else {
            d = bdrv_open_child(path, NULL, NULL, BDRV_O_RDWR, false, errp);
            ret = d ? 0 : -EIO;
        }
    }
    g_free(path);
    *out = d;
    return ret;
}

/* The FVD file: names and header, the metadata area (zero), the data. */
static int coroutine_fn fvd_create_file(FvdCreate *c, const FvdHeader *h,
                                        Error **errp)
{
    QemuOpts *fo = qemu_opts_new();
    BlockDriverState *file;
    int ret = bdrv_create_file(c->filename, fo, errp);

    qemu_opts_del(fo);
    if (ret < 0) {
        return ret;
    }
    file = bdrv_open_child(c->filename, NULL, NULL, BDRV_O_RDWR, false, errp);
    if (!file) {
        return -EIO;
    }
    uint64_t end = h->data_offset ? h->data_offset + h->virtual_size
                                  : MAX(h->journal_offset + h->journal_size,
                                        (uint64_t)h->header_size);
    if (h->incompatible_features & FVD_INCOMPAT_TABLE) {
        /* The data storage grows with data, from nothing. */
        end = MAX(h->data_offset, h->table_offset + h->table_size);
    }
    ret = bdrv_co_truncate(file, end, false, PREALLOC_MODE_OFF, errp);
    if (ret >= 0) {
        uint8_t *hdr = g_malloc0(h->header_size);
        fvd_header_to_disk(h, (FvdDiskHeader *)hdr);
        for (int i = 0; i < FVD_NAME_COUNT; i++) {
            if (h->names[i].length) {
                memcpy(hdr + h->names[i].offset, c->names[i],
                       h->names[i].length);
            }
        }
        ret = bdrv_co_pwrite(file, 0, h->header_size, hdr, 0);
        g_free(hdr);
        if (ret >= 0) {
            ret = bdrv_co_flush(file);
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write the FVD header");
        }
    }
    bdrv_unref(file);
    return ret;
}

int coroutine_fn fvd_create(const char *filename, QemuOpts *opts,
                            Error **errp)
{
    FvdCreate c = { .filename = filename };
    BlockDriverState *data = NULL;
    FvdHeader h;
    int ret = fvd_create_parse(&c, opts, errp);

    if (ret < 0) {
        return ret;
    }
    fvd_create_base_len(&c);
    if (!c.has_size) {
        if (!c.names[FVD_NAME_BASE] || c.base_len == UINT64_MAX) {
            error_setg(errp, "Image size must be specified");
            return -EINVAL;
        }
        c.size = c.base_len;
    }
    c.size = ROUND_UP(c.size, BDRV_SECTOR_SIZE);
    if (c.size > FVD_MAX_SIZE) {
        error_setg(errp, "Image size is too large");
        return -EFBIG;
    }
    ret = fvd_create_layout(&c, &h, errp);
    if (ret < 0) {
        return ret;
    }
    if (c.names[FVD_NAME_DATA]) {
        ret = fvd_create_data_file(&c, &data, errp);
        if (ret >= 0) {
            ret = bdrv_co_flush(data);
        }
    }
    if (ret >= 0) {
        ret = fvd_create_file(&c, &h, errp);
    }
    bdrv_unref(data);
    return ret;
}
