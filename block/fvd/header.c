/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD header: byte-order conversion, the validation of docs/specs/fvd.txt
 * section 9, the names stored as offset+length pairs, and the single-sector
 * header write that is the commit point of every header change.
 */
#include "block/fvd/fvd.h"

bool fvd_header_to_cpu(const FvdDiskHeader *d, FvdHeader *h)
{
    h->version = le32_to_cpu(d->version);
    h->header_size = le32_to_cpu(d->header_size);
    h->header_length = le32_to_cpu(d->header_length);
    h->incompatible_features = le64_to_cpu(d->incompatible_features);
    h->compatible_features = le64_to_cpu(d->compatible_features);
    h->autoclear_features = le64_to_cpu(d->autoclear_features);
    h->virtual_size = le64_to_cpu(d->virtual_size);
    h->base_coverage = le64_to_cpu(d->base_coverage);
    h->block_bits = le32_to_cpu(d->block_bits);
    h->bitmap_offset = le64_to_cpu(d->bitmap_offset);
    h->bitmap_size = le64_to_cpu(d->bitmap_size);
    h->journal_offset = le64_to_cpu(d->journal_offset);
    h->journal_size = le64_to_cpu(d->journal_size);
    h->journal_epoch = le64_to_cpu(d->journal_epoch);
    h->data_offset = le64_to_cpu(d->data_offset);
    h->table_offset = le64_to_cpu(d->table_offset);
    h->table_size = le64_to_cpu(d->table_size);
    h->chunk_bits = le32_to_cpu(d->chunk_bits);
    h->grow_chunks = le32_to_cpu(d->grow_chunks);
    const uint32_t *n = &d->base_name_offset;
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        h->names[i].offset = le32_to_cpu(n[2 * i]);
        h->names[i].length = le32_to_cpu(n[2 * i + 1]);
    }
    return !memcmp(d->magic, FVD_MAGIC, 4);
}

void fvd_header_to_disk(const FvdHeader *h, FvdDiskHeader *d)
{
    memset(d, 0, sizeof(*d));
    memcpy(d->magic, FVD_MAGIC, 4);
    d->version = cpu_to_le32(h->version);
    d->header_size = cpu_to_le32(h->header_size);
    d->header_length = cpu_to_le32(h->header_length);
    d->incompatible_features = cpu_to_le64(h->incompatible_features);
    d->compatible_features = cpu_to_le64(h->compatible_features);
    d->autoclear_features = cpu_to_le64(h->autoclear_features);
    d->virtual_size = cpu_to_le64(h->virtual_size);
    d->base_coverage = cpu_to_le64(h->base_coverage);
    d->block_bits = cpu_to_le32(h->block_bits);
    d->bitmap_offset = cpu_to_le64(h->bitmap_offset);
    d->bitmap_size = cpu_to_le64(h->bitmap_size);
    d->journal_offset = cpu_to_le64(h->journal_offset);
    d->journal_size = cpu_to_le64(h->journal_size);
    d->journal_epoch = cpu_to_le64(h->journal_epoch);
    d->data_offset = cpu_to_le64(h->data_offset);
    d->table_offset = cpu_to_le64(h->table_offset);
    d->table_size = cpu_to_le64(h->table_size);
    d->chunk_bits = cpu_to_le32(h->chunk_bits);
    d->grow_chunks = cpu_to_le32(h->grow_chunks);
    uint32_t *n = &d->base_name_offset;
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        n[2 * i] = cpu_to_le32(h->names[i].offset);
        n[2 * i + 1] = cpu_to_le32(h->names[i].length);
    }
}

uint64_t fvd_bitmap_bytes(uint64_t coverage, uint32_t block_bits)
{
    uint64_t blocks = DIV_ROUND_UP(coverage, UINT64_C(1) << block_bits);
    return DIV_ROUND_UP(blocks, 8);
}

/* A region [off, off + len) of the metadata file: page aligned, past the
 * header, bounded. */
static bool fvd_region_ok(const FvdHeader *h, uint64_t off, uint64_t len)
{
    if (len == 0) {
        return off == 0 || (off % FVD_PAGE == 0 && off <= FVD_MAX_SIZE);
    }
    return off % FVD_PAGE == 0 && len % FVD_PAGE == 0 &&
           off >= h->header_size && off <= FVD_MAX_SIZE &&
           len <= FVD_MAX_SIZE - off;
}

static bool fvd_regions_overlap(uint64_t a, uint64_t alen, uint64_t b,
                                uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static const char *const fvd_name_what[FVD_NAME_COUNT] = {
    "base image", "base format", "data file", "data file format",
};

static int fvd_validate_names(const FvdHeader *h, Error **errp)
{
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        const FvdNameRef *n = &h->names[i];
        uint32_t max = (i == FVD_NAME_BASE || i == FVD_NAME_DATA)
                       ? FVD_MAX_NAME : FVD_MAX_FMT_NAME;
        if (n->length == 0) {
            if (n->offset != 0) {
                error_setg(errp, "FVD header: empty %s name has offset %"
                           PRIu32, fvd_name_what[i], n->offset);
                return -EINVAL;
            }
            continue;
        }
        if (n->length > max || n->offset < FVD_NAMES_OFFSET ||
            (uint64_t)n->offset + n->length > h->header_size) {
            error_setg(errp, "FVD header: invalid %s name (offset %" PRIu32
                       ", length %" PRIu32 ")", fvd_name_what[i], n->offset,
                       n->length);
            return -EINVAL;
        }
    }
    bool has_data = h->incompatible_features & FVD_INCOMPAT_DATA_FILE;
    if (has_data != (h->names[FVD_NAME_DATA].length != 0)) {
        error_setg(errp, "FVD header: the data-file feature bit and the "
                   "data file name disagree");
        return -EINVAL;
    }
    if (h->names[FVD_NAME_BASE_FMT].length && !h->names[FVD_NAME_BASE].length) {
        error_setg(errp, "FVD header: base format without a base image");
        return -EINVAL;
    }
    if (h->names[FVD_NAME_DATA_FMT].length && !has_data) {
        error_setg(errp, "FVD header: data file format without a data file");
        return -EINVAL;
    }
    return 0;
}

static int fvd_validate_layout(const FvdHeader *h, int64_t file_len,
                               Error **errp)
{
    bool has_data = h->incompatible_features & FVD_INCOMPAT_DATA_FILE;
    uint64_t need_bitmap = fvd_bitmap_bytes(h->base_coverage, h->block_bits);

    if (!fvd_region_ok(h, h->bitmap_offset, h->bitmap_size) ||
        h->bitmap_size < need_bitmap) {
        error_setg(errp, "FVD header: invalid bitmap (offset %" PRIu64
                   ", size %" PRIu64 ", coverage needs %" PRIu64 " bytes)",
                   h->bitmap_offset, h->bitmap_size, need_bitmap);
        return -EINVAL;
    }
    if (!fvd_region_ok(h, h->journal_offset, h->journal_size) ||
        (h->journal_size && h->journal_size < FVD_MIN_JOURNAL) ||
        h->journal_size > FVD_MAX_JOURNAL ||
        (h->base_coverage && !h->journal_size)) {
        error_setg(errp, "FVD header: invalid journal (offset %" PRIu64
                   ", size %" PRIu64 ")", h->journal_offset, h->journal_size);
        return -EINVAL;
    }
    if (fvd_regions_overlap(h->bitmap_offset, h->bitmap_size,
                            h->journal_offset, h->journal_size)) {
        error_setg(errp, "FVD header: the bitmap and the journal overlap");
        return -EINVAL;
    }
    uint64_t meta_end = MAX(MAX(h->bitmap_offset + h->bitmap_size,
                                h->journal_offset + h->journal_size),
                            (uint64_t)h->header_size);
    meta_end = MAX(meta_end, h->table_offset + h->table_size);
    if ((uint64_t)file_len < meta_end) {
        error_setg(errp, "FVD file is truncated (%" PRId64 " bytes, its "
                   "metadata ends at %" PRIu64 ")", file_len, meta_end);
        return -EINVAL;
    }
    if (has_data) {
        if (h->data_offset != 0) {
            error_setg(errp, "FVD header: data offset %" PRIu64 " with a "
                       "separate data file (must be 0)", h->data_offset);
            return -EINVAL;
        }
    } else if (h->data_offset % FVD_PAGE || h->data_offset < meta_end ||
               h->data_offset > FVD_MAX_SIZE) {
        error_setg(errp, "FVD header: invalid data offset %" PRIu64,
                   h->data_offset);
        return -EINVAL;
    }
    return 0;
}

/* The table fields of a compact image (spec section 11). */
static int fvd_validate_table(const FvdHeader *h, Error **errp)
{
    if (h->chunk_bits < FVD_MIN_CHUNK_BITS ||
        h->chunk_bits > FVD_MAX_CHUNK_BITS || h->chunk_bits < h->block_bits) {
        error_setg(errp, "Invalid FVD chunk size 2^%" PRIu32 " (must be 4 KiB "
                   "to 1 GiB and at least the block size)", h->chunk_bits);
        return -EINVAL;
    }
    uint64_t nchunks = DIV_ROUND_UP(h->virtual_size,
                                    UINT64_C(1) << h->chunk_bits);
    if (!fvd_region_ok(h, h->table_offset, h->table_size) ||
        !h->table_size || h->table_size > FVD_MAX_TABLE ||
        h->table_size / 4 < nchunks) {
        error_setg(errp, "FVD header: invalid table (offset %" PRIu64 ", size "
                   "%" PRIu64 ", the disk needs %" PRIu64 " entries)",
                   h->table_offset, h->table_size, nchunks);
        return -EINVAL;
    }
    if (fvd_regions_overlap(h->table_offset, h->table_size,
                            h->bitmap_offset, h->bitmap_size) ||
        fvd_regions_overlap(h->table_offset, h->table_size,
                            h->journal_offset, h->journal_size)) {
        error_setg(errp, "FVD header: the table overlaps the bitmap or the "
                   "journal");
        return -EINVAL;
    }
    if (!h->journal_size) {
        error_setg(errp, "FVD header: a compact image needs a journal");
        return -EINVAL;
    }
    if (!h->grow_chunks || h->grow_chunks > FVD_MAX_GROW_CHUNKS) {
        error_setg(errp, "FVD header: invalid storage growth unit (%" PRIu32
                   " chunks)", h->grow_chunks);
        return -EINVAL;
    }
    return 0;
}

/* Every check of docs/specs/fvd.txt section 9; nothing is written. */
int fvd_validate_header(const FvdHeader *h, int64_t file_len, Error **errp)
{
    if (h->version != FVD_VERSION) {
        error_setg(errp, "Unsupported FVD version %" PRIu32, h->version);
        return -ENOTSUP;
    }
    if (h->incompatible_features & ~FVD_INCOMPAT_MASK) {
        error_setg(errp, "Unsupported FVD incompatible feature(s): 0x%"
                   PRIx64, h->incompatible_features & ~FVD_INCOMPAT_MASK);
        return -ENOTSUP;
    }
    if (h->header_size < FVD_PAGE || h->header_size % FVD_PAGE ||
        h->header_size > FVD_MAX_HEADER_SIZE) {
        error_setg(errp, "Invalid FVD header size %" PRIu32, h->header_size);
        return -EINVAL;
    }
    if (h->header_length < FVD_HEADER_LENGTH ||
        h->header_length > FVD_HEADER_SECTOR) {
        error_setg(errp, "Invalid FVD header length %" PRIu32,
                   h->header_length);
        return -EINVAL;
    }
    if (file_len < h->header_size) {
        error_setg(errp, "FVD file is truncated (shorter than its %" PRIu32
                   "-byte header)", h->header_size);
        return -EINVAL;
    }
    if (h->virtual_size > FVD_MAX_SIZE || h->virtual_size % BDRV_SECTOR_SIZE) {
        error_setg(errp, "Invalid FVD virtual size %" PRIu64,
                   h->virtual_size);
        return -EINVAL;
    }
    if (h->block_bits < FVD_MIN_BLOCK_BITS ||
        h->block_bits > FVD_MAX_BLOCK_BITS) {
        error_setg(errp, "Invalid FVD block size 2^%" PRIu32
                   " (must be 512 B to 2 MiB)", h->block_bits);
        return -EINVAL;
    }
    if (h->base_coverage > h->virtual_size) {
        error_setg(errp, "FVD base coverage %" PRIu64 " exceeds the virtual "
                   "size %" PRIu64, h->base_coverage, h->virtual_size);
        return -EINVAL;
    }
    if (!(h->incompatible_features & FVD_INCOMPAT_TABLE) &&
        (h->table_offset || h->table_size || h->chunk_bits ||
         h->grow_chunks)) {
        error_setg(errp, "FVD header: table fields set without the table "
                   "feature");
        return -EINVAL;
    }
    if (h->incompatible_features & FVD_INCOMPAT_TABLE) {
        int ret = fvd_validate_table(h, errp);
        if (ret < 0) {
            return ret;
        }
    }
    int ret = fvd_validate_names(h, errp);
    if (ret < 0) {
        return ret;
    }
    return fvd_validate_layout(h, file_len, errp);
}

/* Read every name (NUL-terminated copies; NULL when absent). */
int coroutine_fn fvd_read_names(BlockDriverState *file, const FvdHeader *h,
                                char **names, Error **errp)
{
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        const FvdNameRef *n = &h->names[i];
        names[i] = NULL;
        if (!n->length) {
            continue;
        }
        names[i] = g_malloc0(n->length + 1);
        int ret = bdrv_co_pread(file, n->offset, n->length, names[i], 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read the FVD %s name",
                             fvd_name_what[i]);
            return ret;
        }
        if (strlen(names[i]) != n->length) {
            error_setg(errp, "FVD header: the %s name contains a NUL byte",
                       fvd_name_what[i]);
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * Write the fixed header (one sector, so the disk writes it atomically) and
 * flush: the commit point of every header change. Bytes of sector 0 past
 * the fields this version knows are written back as they were read.
 */
int coroutine_fn fvd_write_header(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    uint8_t *buf = qemu_blockalign(FVD_HEADER_SECTOR);
    FvdDiskHeader dh;
    int ret;

    /* One at a time, each taking the header as it is when its turn comes:
     * the last write to complete is then always the newest header. */
    qemu_co_mutex_lock(&s->hdr_lock);
    fvd_header_to_disk(&s->header, &dh);
    memcpy(buf, s->hdr_sector, FVD_HEADER_SECTOR);
    memcpy(buf, &dh, sizeof(dh));
    BLKDBG_EVENT(bs->file, "header_write");
    ret = bdrv_co_pwrite(bs->file, 0, FVD_HEADER_SECTOR, buf, 0);
    if (ret >= 0) {
        memcpy(s->hdr_sector, buf, FVD_HEADER_SECTOR);
        ret = bdrv_co_flush(bs->file);
    }
    qemu_co_mutex_unlock(&s->hdr_lock);
    qemu_vfree(buf);
    return ret;
}

int coroutine_fn fvd_begin_change(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int ret = 0;

    if (likely(!s->autoclear_pending)) {
        return 0;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    if (s->autoclear_pending) {
        uint64_t old = s->header.autoclear_features;
        s->header.autoclear_features &= FVD_AUTOCLEAR_MASK;
        ret = fvd_write_header(bs);
        if (ret < 0) {
            s->header.autoclear_features = old;
        } else {
            s->autoclear_pending = false;
        }
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/*
 * Replace the names (new_names[i] NULL keeps name i, "" removes it): the new
 * strings go to free space of the name area and are flushed, then the header
 * is rewritten to point at them (spec section 8). The caller holds meta_lock
 * and has validated the names.
 */
int coroutine_fn fvd_set_names(BlockDriverState *bs,
                               const char *const *new_names, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    FvdHeader h = s->header;
    const char *names[FVD_NAME_COUNT];
    uint32_t lo = h.header_size, hi = FVD_NAMES_OFFSET, need = 0;
    int ret;

    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        names[i] = new_names[i] ? new_names[i] : (s->names[i] ? s->names[i]
                                                              : "");
        need += strlen(names[i]);
        if (h.names[i].length) {
            lo = MIN(lo, h.names[i].offset);
            hi = MAX(hi, h.names[i].offset + h.names[i].length);
        }
    }
    uint32_t at;
    if ((uint64_t)hi + need <= h.header_size) {
        at = hi;
    } else if ((uint64_t)FVD_NAMES_OFFSET + need <= lo) {
        at = FVD_NAMES_OFFSET;
    } else {
        error_setg(errp, "New names do not fit into the FVD header");
        return -ENOSPC;
    }
    GString *buf = g_string_new(NULL);
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        uint32_t len = strlen(names[i]);
        h.names[i].offset = len ? at + buf->len : 0;
        h.names[i].length = len;
        g_string_append(buf, names[i]);
    }
    ret = 0;
    if (buf->len) {
        BLKDBG_EVENT(bs->file, "names_write");
        ret = bdrv_co_pwrite(bs->file, at, buf->len, buf->str, 0);
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
    }
    g_string_free(buf, TRUE);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write the FVD names");
        return ret;
    }
    FvdHeader old = s->header;
    memcpy(s->header.names, h.names, sizeof(h.names));
    ret = fvd_write_header(bs);
    if (ret < 0) {
        s->header = old;
        error_setg_errno(errp, -ret, "Could not write the FVD header");
        return ret;
    }
    for (int i = 0; i < FVD_NAME_COUNT; i++) {
        char *copy = names[i][0] ? g_strdup(names[i]) : NULL;
        g_free(s->names[i]);
        s->names[i] = copy;
    }
    return 0;
}
