/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 header: reading and validating the fixed header and its
 * extensions, rewriting the first cluster, and the dirty and corrupt bits.
 * Every value read here is bounded before anything uses it.
 */
#include "block/qcow2/qcow2.h"
#include "util/cutils.h"

/* QEMU's limit for the backing format name (its buffer is 16 bytes). */
#define QCOW2_MAX_FORMAT_NAME 16

void qcow2_header_to_cpu(const Qcow2DiskHeader *d, Qcow2Header *h)
{
    h->magic = be32_to_cpu(d->magic);
    h->version = be32_to_cpu(d->version);
    h->backing_file_offset = be64_to_cpu(d->backing_file_offset);
    h->backing_file_size = be32_to_cpu(d->backing_file_size);
    h->cluster_bits = be32_to_cpu(d->cluster_bits);
    h->size = be64_to_cpu(d->size);
    h->crypt_method = be32_to_cpu(d->crypt_method);
    h->l1_size = be32_to_cpu(d->l1_size);
    h->l1_table_offset = be64_to_cpu(d->l1_table_offset);
    h->refcount_table_offset = be64_to_cpu(d->refcount_table_offset);
    h->refcount_table_clusters = be32_to_cpu(d->refcount_table_clusters);
    h->nb_snapshots = be32_to_cpu(d->nb_snapshots);
    h->snapshots_offset = be64_to_cpu(d->snapshots_offset);
    if (h->version == 2) {
        h->incompatible_features = 0;
        h->compatible_features = 0;
        h->autoclear_features = 0;
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_SIZE;
        h->compression_type = 0;
        return;
    }
    h->incompatible_features = be64_to_cpu(d->incompatible_features);
    h->compatible_features = be64_to_cpu(d->compatible_features);
    h->autoclear_features = be64_to_cpu(d->autoclear_features);
    h->refcount_order = be32_to_cpu(d->refcount_order);
    h->header_length = be32_to_cpu(d->header_length);
    /* Absent when the header is shorter than the field: zlib. */
    h->compression_type = h->header_length >
                          offsetof(Qcow2DiskHeader, compression_type)
                          ? d->compression_type : 0;
}

void qcow2_header_to_disk(const Qcow2Header *h, Qcow2DiskHeader *d)
{
    memset(d, 0, sizeof(*d));
    d->magic = cpu_to_be32(h->magic);
    d->version = cpu_to_be32(h->version);
    d->backing_file_offset = cpu_to_be64(h->backing_file_offset);
    d->backing_file_size = cpu_to_be32(h->backing_file_size);
    d->cluster_bits = cpu_to_be32(h->cluster_bits);
    d->size = cpu_to_be64(h->size);
    d->crypt_method = cpu_to_be32(h->crypt_method);
    d->l1_size = cpu_to_be32(h->l1_size);
    d->l1_table_offset = cpu_to_be64(h->l1_table_offset);
    d->refcount_table_offset = cpu_to_be64(h->refcount_table_offset);
    d->refcount_table_clusters = cpu_to_be32(h->refcount_table_clusters);
    d->nb_snapshots = cpu_to_be32(h->nb_snapshots);
    d->snapshots_offset = cpu_to_be64(h->snapshots_offset);
    d->incompatible_features = cpu_to_be64(h->incompatible_features);
    d->compatible_features = cpu_to_be64(h->compatible_features);
    d->autoclear_features = cpu_to_be64(h->autoclear_features);
    d->refcount_order = cpu_to_be32(h->refcount_order);
    d->header_length = cpu_to_be32(h->header_length);
    d->compression_type = h->compression_type;
}

/*
 * A table of entries * entry_len bytes at offset: no larger than
 * max_bytes, cluster aligned, and its end representable.
 */
int qcow2_validate_table(BDRVQcow2State *s, uint64_t offset, uint64_t entries,
                         size_t entry_len, int64_t max_bytes,
                         const char *name, Error **errp)
{
    if (entries > (uint64_t)max_bytes / entry_len) {
        error_setg(errp, "%s too large", name);
        return -EFBIG;
    }
    if ((uint64_t)INT64_MAX - entries * entry_len < offset ||
        qcow2_offset_into_cluster(s, offset)) {
        error_setg(errp, "%s offset invalid", name);
        return -EINVAL;
    }
    return 0;
}

/* ---- the feature name table, for the "unsupported feature" message ---- */

static const Qcow2DiskFeature qcow2_features[] = {
    { QCOW2_FEAT_INCOMPAT, 0, "dirty bit" },
    { QCOW2_FEAT_INCOMPAT, 1, "corrupt bit" },
    { QCOW2_FEAT_INCOMPAT, 2, "external data file" },
    { QCOW2_FEAT_INCOMPAT, 3, "compression type" },
    { QCOW2_FEAT_INCOMPAT, 4, "extended L2 entries" },
    { QCOW2_FEAT_COMPAT, 0, "lazy refcounts" },
    { QCOW2_FEAT_AUTOCLEAR, 0, "bitmaps" },
    { QCOW2_FEAT_AUTOCLEAR, 1, "raw external data" },
};

/*
 * Name the unknown incompatible bits in mask from the image's own feature
 * table (table_len bytes, may be NULL), as QEMU does.
 */
static void qcow2_report_unsupported(Error **errp, const uint8_t *table,
                                     uint32_t table_len, uint64_t mask)
{
    GString *names = g_string_new(NULL);

    for (uint32_t off = 0; table && off < table_len;
         off += sizeof(Qcow2DiskFeature)) {
        const Qcow2DiskFeature *f = (const void *)(table + off);
        if (f->name[0] == '\0') {
            break;
        }
        if (f->type == QCOW2_FEAT_INCOMPAT && f->bit < 64 &&
            (mask & (UINT64_C(1) << f->bit))) {
            if (names->len) {
                g_string_append(names, ", ");
            }
            g_string_append_printf(names, "%.46s", f->name);
            mask &= ~(UINT64_C(1) << f->bit);
        }
    }
    if (mask) {
        if (names->len) {
            g_string_append(names, ", ");
        }
        g_string_append_printf(names, "Unknown incompatible feature: %"
                               PRIx64, mask);
    }
    error_setg(errp, "Unsupported qcow2 feature(s): %s", names->str);
    g_string_free(names, TRUE);
}

/* ---- extensions ---- */

typedef struct Qcow2ExtScan {
    bool want_features;             /* only collect the feature table */
    uint8_t *features;
    uint32_t features_len;
    bool need_update;               /* an inconsistent extension to drop */
} Qcow2ExtScan;

static int coroutine_fn qcow2_read_ext_bitmaps(BlockDriverState *bs,
                                               uint64_t offset, uint32_t len,
                                               Qcow2ExtScan *scan,
                                               Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DiskBitmapExt ext;
    int ret;

    if (len != sizeof(ext)) {
        error_setg(errp, "bitmaps_ext: Invalid extension length");
        return -EINVAL;
    }
    if (!(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        /* A program without bitmap support wrote the image: drop it. */
        if (s->qcow_version < 3) {
            fprintf(stderr, "%s: warning: This qcow2 v2 image contains "
                    "bitmaps, but they may have been modified by a program "
                    "without persistent bitmap support; so now they must "
                    "all be considered inconsistent\n",
                    error_get_progname());
        } else {
            fprintf(stderr, "%s: warning: a program lacking bitmap support "
                    "modified this file, so all bitmaps are now considered "
                    "inconsistent\n", error_get_progname());
        }
        fprintf(stderr, "Some clusters may be leaked, run 'qemu-img check "
                "-r' on the image file to fix.");
        scan->need_update = true;
        return 0;
    }
    ret = bdrv_co_pread(bs->file, offset, sizeof(ext), &ext, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "bitmaps_ext: Could not read ext header");
        return ret;
    }
    if (ext.reserved) {
        error_setg(errp, "bitmaps_ext: Reserved field is not zero");
        return -EINVAL;
    }
    uint32_t nb = be32_to_cpu(ext.nb_bitmaps);
    uint64_t dir_size = be64_to_cpu(ext.directory_size);
    uint64_t dir_offset = be64_to_cpu(ext.directory_offset);
    if (nb > QCOW2_MAX_BITMAPS) {
        error_setg(errp, "bitmaps_ext: Image has %" PRIu32 " bitmaps, "
                   "exceeding the QEMU supported maximum of %d", nb,
                   QCOW2_MAX_BITMAPS);
        return -EINVAL;
    }
    if (nb == 0) {
        error_setg(errp, "found bitmaps extension with zero bitmaps");
        return -EINVAL;
    }
    if (qcow2_offset_into_cluster(s, dir_offset)) {
        error_setg(errp, "bitmaps_ext: invalid bitmap directory offset");
        return -EINVAL;
    }
    if (dir_size > QCOW2_MAX_BITMAP_DIR_SIZE) {
        error_setg(errp, "bitmaps_ext: bitmap directory size (%" PRIu64
                   ") exceeds the maximum supported size (%d)", dir_size,
                   QCOW2_MAX_BITMAP_DIR_SIZE);
        return -EINVAL;
    }
    s->nb_bitmaps = nb;
    s->bitmap_directory_offset = dir_offset;
    s->bitmap_directory_size = dir_size;
    return 0;
}

/* Read a string extension of len bytes (len < limit) into a new string. */
static char *coroutine_fn qcow2_read_ext_string(BlockDriverState *bs,
                                                uint64_t offset, uint32_t len,
                                                int *ret)
{
    char *str = g_malloc0((size_t)len + 1);
    *ret = bdrv_co_pread(bs->file, offset, len, str, 0);
    if (*ret < 0) {
        g_free(str);
        return NULL;
    }
    return str;
}

/*
 * Walk the extensions in [start, end) of the first cluster. With
 * scan->want_features only the feature name table is collected (errors
 * are then ignored by the caller).
 */
static int coroutine_fn qcow2_read_extensions(BlockDriverState *bs,
                                              uint64_t start, uint64_t end,
                                              Qcow2ExtScan *scan,
                                              Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t offset = start;
    int ret;

    while (offset < end) {
        Qcow2DiskExtension ext;

        ret = bdrv_co_pread(bs->file, offset, sizeof(ext), &ext, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "qcow2_read_extension: ERROR: "
                             "pread fail from offset %" PRIu64, offset);
            return ret;
        }
        uint32_t magic = be32_to_cpu(ext.magic);
        uint32_t len = be32_to_cpu(ext.len);
        offset += sizeof(ext);
        /* (as QEMU: an extension header cut by the end is too large too) */
        if (offset > end || len > end - offset) {
            error_setg(errp, "Header extension too large");
            return -EINVAL;
        }
        if (scan->want_features) {
            if (magic == QCOW2_EXT_END) {
                return 0;
            }
            if (magic == QCOW2_EXT_FEATURE_TABLE && !scan->features) {
                /* Zero padded by one entry, as QEMU reads it: a last
                 * entry cut short still names its bit. */
                scan->features = g_malloc0((size_t)len +
                                           sizeof(Qcow2DiskFeature));
                scan->features_len = len;
                ret = bdrv_co_pread(bs->file, offset, len, scan->features, 0);
                if (ret < 0) {
                    return ret;
                }
            }
            offset += ROUND_UP((uint64_t)len, 8);
            continue;
        }
        switch (magic) {
        case QCOW2_EXT_END:
            return 0;
        case QCOW2_EXT_BACKING_FORMAT:
            if (len >= QCOW2_MAX_FORMAT_NAME) {
                error_setg(errp, "ERROR: ext_backing_format: len=%" PRIu32
                           " too large (>=%d)", len, QCOW2_MAX_FORMAT_NAME);
                return -EINVAL;
            }
            g_free(s->image_backing_format);
            s->image_backing_format = qcow2_read_ext_string(bs, offset, len,
                                                            &ret);
            if (!s->image_backing_format) {
                error_setg_errno(errp, -ret, "ERROR: ext_backing_format: "
                                 "Could not read format name");
                return ret;
            }
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            break;
        case QCOW2_EXT_CRYPTO_HEADER:
            if (s->crypt_method != QCOW2_CRYPT_LUKS) {
                error_setg(errp, "CRYPTO header extension only expected "
                           "with LUKS encryption method");
                return -EINVAL;
            }
            if (len != 16) {
                error_setg(errp, "CRYPTO header extension size %" PRIu32
                           ", but expected size 16", len);
                return -EINVAL;
            }
            {
                uint64_t ch[2];
                ret = bdrv_co_pread(bs->file, offset, sizeof(ch), ch, 0);
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "Unable to read CRYPTO "
                                     "header extension");
                    return ret;
                }
                s->has_crypto_ext = true;
                s->crypto_offset = be64_to_cpu(ch[0]);
                s->crypto_length = be64_to_cpu(ch[1]);
            }
            break;
        case QCOW2_EXT_BITMAPS:
            ret = qcow2_read_ext_bitmaps(bs, offset, len, scan, errp);
            if (ret < 0) {
                return ret;
            }
            break;
        case QCOW2_EXT_DATA_FILE:
            g_free(s->image_data_file);
            s->image_data_file = qcow2_read_ext_string(bs, offset, len, &ret);
            if (!s->image_data_file) {
                error_setg_errno(errp, -ret, "ERROR: Could not read data "
                                 "file name");
                return ret;
            }
            break;
        default: {
            /* Unknown: kept and written back when the header changes. */
            Qcow2UnknownExt u = { .magic = magic, .len = len };
            u.data = g_malloc0(len + 1);
            ret = bdrv_co_pread(bs->file, offset, len, u.data, 0);
            if (ret < 0) {
                g_free(u.data);
                error_setg_errno(errp, -ret, "ERROR: unknown extension: "
                                 "Could not read data");
                return ret;
            }
            g_array_append_val(s->unknown_exts, u);
            break;
        }
        }
        offset += ROUND_UP((uint64_t)len, 8);
    }
    return 0;
}

/* ---- reading the header ---- */

/* The checks on the fixed header that come before the extensions. */
static int qcow2_check_fixed_header(BlockDriverState *bs, Qcow2Header *h,
                                    int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    if (h->magic != QCOW2_MAGIC) {
        error_setg(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    if (h->version < 2 || h->version > 3) {
        error_setg(errp, "Unsupported qcow2 version %" PRIu32, h->version);
        return -ENOTSUP;
    }
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "Unsupported cluster size: 2^%" PRIu32,
                   h->cluster_bits);
        return -EINVAL;
    }
    s->qcow_version = h->version;
    s->cluster_bits = h->cluster_bits;
    s->cluster_size = UINT32_C(1) << h->cluster_bits;
    if (h->version == 3 && h->header_length < QCOW2_V3_MIN_HEADER_SIZE) {
        error_setg(errp, "qcow2 header too short");
        return -EINVAL;
    }
    if (h->header_length > s->cluster_size) {
        error_setg(errp, "qcow2 header exceeds cluster size");
        return -EINVAL;
    }
    if (h->backing_file_offset > s->cluster_size) {
        error_setg(errp, "Invalid backing file offset");
        return -EINVAL;
    }
    (void)flags;
    return 0;
}

static int qcow2_check_compression(BDRVQcow2State *s, Error **errp)
{
    bool bit = s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION;

    if (s->compression_type > 1) {
        error_setg(errp, "qcow2: unknown compression type: %u",
                   s->compression_type);
        return -ENOTSUP;
    }
    if (s->compression_type == 0 && bit) {
        error_setg(errp, "qcow2: Compression type incompatible feature bit "
                   "must not be set");
        return -EINVAL;
    }
    if (s->compression_type != 0 && !bit) {
        error_setg(errp, "qcow2: Compression type incompatible feature bit "
                   "must be set");
        return -EINVAL;
    }
    if (s->compression_type == 1) {
        /* Valid qcow2 (zstd), but this build only has zlib. */
        error_setg(errp, "qcow2: compression type zstd is not supported by "
                   "this build");
        return -ENOTSUP;
    }
    return 0;
}

/* Derived geometry once cluster, subcluster and refcount sizes are known. */
static int qcow2_set_geometry(BDRVQcow2State *s, const Qcow2Header *h,
                              Error **errp)
{
    s->extended_l2 = s->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    s->subclusters_per_cluster = s->extended_l2 ? QCOW2_SUBCLUSTERS : 1;
    s->subcluster_size = s->cluster_size / s->subclusters_per_cluster;
    s->subcluster_bits = __builtin_ctz(s->subcluster_size);
    if (s->subcluster_size < (1u << QCOW2_MIN_CLUSTER_BITS)) {
        error_setg(errp, "Unsupported subcluster size: %" PRIu32,
                   s->subcluster_size);
        return -EINVAL;
    }
    if (h->refcount_order > 6) {
        error_setg(errp, "Reference count entry width too large; may not "
                   "exceed 64 bits");
        return -EINVAL;
    }
    s->refcount_order = h->refcount_order;
    s->refcount_bits = 1 << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                      : (UINT64_C(1) << s->refcount_bits) - 1;
    s->refcount_block_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_block_size = UINT64_C(1) << s->refcount_block_bits;
    s->l2_entry_shift = s->extended_l2 ? 4 : 3;
    s->l2_bits = s->cluster_bits - s->l2_entry_shift;
    s->l2_size = UINT32_C(1) << s->l2_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (UINT64_C(1) << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (UINT64_C(1) << s->csize_shift) - 1;
    return 0;
}

/* The tables named in the header: bounded offsets and sizes. */
static int qcow2_check_tables(BDRVQcow2State *s, const Qcow2Header *h,
                              int flags, Error **errp)
{
    int ret;

    if (h->refcount_table_clusters == 0 && !(flags & BDRV_O_CHECK)) {
        error_setg(errp, "Image does not contain a reference count table");
        return -EINVAL;
    }
    ret = qcow2_validate_table(s, h->refcount_table_offset,
                               h->refcount_table_clusters, s->cluster_size,
                               QCOW2_MAX_REFTABLE_SIZE,
                               "Reference count table", errp);
    if (ret < 0) {
        return ret;
    }
    if (!(flags & BDRV_O_CHECK)) {
        ret = qcow2_validate_table(s, h->snapshots_offset, h->nb_snapshots,
                                   sizeof(Qcow2DiskSnapshot),
                                   sizeof(Qcow2DiskSnapshot) *
                                   QCOW2_MAX_SNAPSHOTS,
                                   "Snapshot table", errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_validate_table(s, h->l1_table_offset, h->l1_size,
                               sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                               "Active L1 table", errp);
    if (ret < 0) {
        return ret;
    }
    uint64_t vm_index = qcow2_size_to_l1(s, h->size);
    if (h->size > INT64_MAX || vm_index > INT_MAX) {
        error_setg(errp, "Image is too big");
        return -EFBIG;
    }
    if (h->l1_size < vm_index) {
        error_setg(errp, "L1 table is too small");
        return -EINVAL;
    }
    s->l1_vm_state_index = vm_index;
    return 0;
}

/* The backing file name stored after the extensions. */
static int coroutine_fn qcow2_read_backing_name(BlockDriverState *bs,
                                                const Qcow2Header *h,
                                                Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t len = h->backing_file_size;
    int ret;

    if (h->backing_file_offset == 0) {
        return 0;
    }
    if (len > MIN(QCOW2_MAX_BACKING_NAME,
                  s->cluster_size - h->backing_file_offset) ||
        len >= sizeof(bs->backing_file)) {
        error_setg(errp, "Backing file name too long");
        return -EINVAL;
    }
    s->image_backing_file = g_malloc0((size_t)len + 1);
    ret = bdrv_co_pread(bs->file, h->backing_file_offset, len,
                        s->image_backing_file, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read backing file name");
        return ret;
    }
    pstrcpy(bs->backing_file, sizeof(bs->backing_file),
            s->image_backing_file);
    if (s->image_backing_format) {
        pstrcpy(bs->backing_format, sizeof(bs->backing_format),
                s->image_backing_format);
    }
    return 0;
}

/*
 * Read and validate the header, its unknown fields and extensions and the
 * backing file name into bs->opaque. The L1 and refcount tables are not
 * read here. Fills *h.
 */
int coroutine_fn qcow2_read_header(BlockDriverState *bs, int flags,
                                   Qcow2Header *h, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DiskHeader dh;
    Qcow2ExtScan scan = { 0 };
    uint64_t ext_end;
    int ret;

    s->unknown_exts = g_array_new(FALSE, TRUE, sizeof(Qcow2UnknownExt));
    ret = bdrv_co_pread(bs->file, 0, sizeof(dh), &dh, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read qcow2 header");
        return ret;
    }
    qcow2_header_to_cpu(&dh, h);
    ret = qcow2_check_fixed_header(bs, h, flags, errp);
    if (ret < 0) {
        return ret;
    }
    if (h->header_length > sizeof(dh)) {
        s->unknown_header_fields_size = h->header_length - sizeof(dh);
        s->unknown_header_fields = g_malloc(s->unknown_header_fields_size);
        ret = bdrv_co_pread(bs->file, sizeof(dh),
                            s->unknown_header_fields_size,
                            s->unknown_header_fields, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read unknown qcow2 "
                             "header fields");
            return ret;
        }
    }
    ext_end = h->backing_file_offset ? h->backing_file_offset
                                     : s->cluster_size;
    s->incompatible_features = h->incompatible_features;
    s->compatible_features = h->compatible_features;
    s->autoclear_features = h->autoclear_features;
    s->compression_type = h->compression_type;
    s->crypt_method = h->crypt_method;
    s->size = h->size;
    ret = qcow2_check_compression(s, errp);
    if (ret < 0) {
        return ret;
    }
    if (s->incompatible_features & ~QCOW2_INCOMPAT_MASK) {
        scan.want_features = true;
        qcow2_read_extensions(bs, h->header_length, ext_end, &scan, NULL);
        qcow2_report_unsupported(errp, scan.features, scan.features_len,
                                 s->incompatible_features &
                                 ~QCOW2_INCOMPAT_MASK);
        g_free(scan.features);
        return -ENOTSUP;
    }
    if ((s->incompatible_features & QCOW2_INCOMPAT_CORRUPT) &&
        (flags & BDRV_O_RDWR) && !(flags & BDRV_O_CHECK)) {
        error_setg(errp, "qcow2: Image is corrupt; cannot be opened "
                   "read/write");
        return -EACCES;
    }
    ret = qcow2_set_geometry(s, h, errp);
    if (ret < 0) {
        return ret;
    }
    if (s->crypt_method > QCOW2_CRYPT_LUKS) {
        error_setg(errp, "Unsupported encryption method %" PRIu32,
                   s->crypt_method);
        return -EINVAL;
    }
    ret = qcow2_check_tables(s, h, flags, errp);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_read_extensions(bs, h->header_length, ext_end, &scan, errp);
    if (ret < 0) {
        return ret;
    }
    if (scan.need_update) {
        /* Drop the inconsistent bitmaps extension with the next rewrite. */
        s->nb_bitmaps = 0;
    }
    return qcow2_read_backing_name(bs, h, errp);
}

void qcow2_free_header_state(BDRVQcow2State *s)
{
    if (s->unknown_exts) {
        for (guint i = 0; i < s->unknown_exts->len; i++) {
            g_free(g_array_index(s->unknown_exts, Qcow2UnknownExt, i).data);
        }
        g_array_free(s->unknown_exts, TRUE);
        s->unknown_exts = NULL;
    }
    g_free(s->unknown_header_fields);
    s->unknown_header_fields = NULL;
    g_free(s->image_backing_file);
    g_free(s->image_backing_format);
    g_free(s->image_data_file);
    s->image_backing_file = s->image_backing_format = NULL;
    s->image_data_file = NULL;
}

/* ---- rewriting the first cluster ---- */

/* Append an extension (data padded to 8 bytes); false if it does not fit. */
static bool qcow2_put_ext(uint8_t *buf, size_t *pos, size_t end,
                          uint32_t magic, const void *data, size_t len)
{
    size_t total = sizeof(Qcow2DiskExtension) + ROUND_UP(len, 8);
    Qcow2DiskExtension ext = { cpu_to_be32(magic), cpu_to_be32(len) };

    if (end - *pos < total) {
        return false;
    }
    memcpy(buf + *pos, &ext, sizeof(ext));
    if (len) {
        memcpy(buf + *pos + sizeof(ext), data, len);
    }
    *pos += total;
    return true;
}

static bool qcow2_put_extensions(BDRVQcow2State *s, uint8_t *buf,
                                 size_t *pos, size_t end)
{
    if (s->image_backing_format &&
        !qcow2_put_ext(buf, pos, end, QCOW2_EXT_BACKING_FORMAT,
                       s->image_backing_format,
                       strlen(s->image_backing_format))) {
        return false;
    }
    if (qcow2_has_data_file(s) && s->image_data_file &&
        !qcow2_put_ext(buf, pos, end, QCOW2_EXT_DATA_FILE,
                       s->image_data_file, strlen(s->image_data_file))) {
        return false;
    }
    if (s->crypt_method == QCOW2_CRYPT_LUKS && s->has_crypto_ext) {
        uint64_t ch[2] = { cpu_to_be64(s->crypto_offset),
                           cpu_to_be64(s->crypto_length) };
        if (!qcow2_put_ext(buf, pos, end, QCOW2_EXT_CRYPTO_HEADER, ch,
                           sizeof(ch))) {
            return false;
        }
    }
    /* QEMU leaves the feature table out of clusters of 4 KiB and less. */
    if (s->qcow_version >= 3 && s->cluster_size > 4096 &&
        !qcow2_put_ext(buf, pos, end, QCOW2_EXT_FEATURE_TABLE,
                       qcow2_features, sizeof(qcow2_features))) {
        return false;
    }
    if (s->nb_bitmaps) {
        Qcow2DiskBitmapExt b = {
            .nb_bitmaps = cpu_to_be32(s->nb_bitmaps),
            .directory_size = cpu_to_be64(s->bitmap_directory_size),
            .directory_offset = cpu_to_be64(s->bitmap_directory_offset),
        };
        if (!qcow2_put_ext(buf, pos, end, QCOW2_EXT_BITMAPS, &b, sizeof(b))) {
            return false;
        }
    }
    for (guint i = 0; s->unknown_exts && i < s->unknown_exts->len; i++) {
        Qcow2UnknownExt *u = &g_array_index(s->unknown_exts,
                                            Qcow2UnknownExt, i);
        if (!qcow2_put_ext(buf, pos, end, u->magic, u->data, u->len)) {
            return false;
        }
    }
    return qcow2_put_ext(buf, pos, end, QCOW2_EXT_END, NULL, 0);
}

/*
 * Rewrite the whole first cluster from the in-memory state: header,
 * unknown fields, extensions, backing file name. One write of one
 * cluster; callers flush when the change must be durable.
 */
int coroutine_fn qcow2_update_header(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    size_t len = s->cluster_size, pos;
    uint8_t *buf = qemu_blockalign(len);
    Qcow2Header h = {
        .magic = QCOW2_MAGIC,
        .version = s->qcow_version,
        .cluster_bits = s->cluster_bits,
        .size = s->size,
        .crypt_method = s->crypt_method,
        .l1_size = s->l1_size,
        .l1_table_offset = s->l1_table_offset,
        .refcount_table_offset = s->refcount_table_offset,
        .refcount_table_clusters = s->refcount_table_size >>
                                   (s->cluster_bits - 3),
        .nb_snapshots = s->nb_snapshots,
        .snapshots_offset = s->snapshots_offset,
        .incompatible_features = s->incompatible_features,
        .compatible_features = s->compatible_features,
        .autoclear_features = s->autoclear_features,
        .refcount_order = s->refcount_order,
        .header_length = sizeof(Qcow2DiskHeader) +
                         s->unknown_header_fields_size,
        .compression_type = s->compression_type,
    };
    int ret = -ENOSPC;

    memset(buf, 0, len);
    pos = s->qcow_version == 2 ? QCOW2_V2_HEADER_SIZE
                               : sizeof(Qcow2DiskHeader);
    if (s->qcow_version >= 3 && s->unknown_header_fields_size) {
        if (len - pos < s->unknown_header_fields_size) {
            goto out;
        }
        memcpy(buf + pos, s->unknown_header_fields,
               s->unknown_header_fields_size);
        pos += s->unknown_header_fields_size;
    }
    if (!qcow2_put_extensions(s, buf, &pos, len)) {
        goto out;
    }
    if (s->image_backing_file) {
        size_t blen = strlen(s->image_backing_file);
        if (len - pos < blen) {
            goto out;
        }
        memcpy(buf + pos, s->image_backing_file, blen);
        h.backing_file_offset = pos;
        h.backing_file_size = blen;
    }
    Qcow2DiskHeader dh;
    qcow2_header_to_disk(&h, &dh);
    memcpy(buf, &dh, s->qcow_version == 2 ? QCOW2_V2_HEADER_SIZE
                                          : sizeof(dh));
    BLKDBG_EVENT(bs->file, "header_update");
    ret = bdrv_co_pwrite(bs->file, 0, len, buf, 0);
out:
    qemu_vfree(buf);
    return ret;
}

/* Write the header and flush the file: a commit point. */
int coroutine_fn qcow2_commit_header(BlockDriverState *bs, Error **errp)
{
    int ret = qcow2_update_header(bs);

    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update qcow2 header");
    }
    return ret;
}

/* ---- dirty and corrupt bits ---- */

/* Set the dirty bit on disk (durably) before refcounts may go stale. */
int coroutine_fn qcow2_mark_dirty(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t val;
    int ret;

    assert(s->qcow_version >= 3);
    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return 0;
    }
    val = cpu_to_be64(s->incompatible_features | QCOW2_INCOMPAT_DIRTY);
    ret = bdrv_co_pwrite(bs->file,
                         offsetof(Qcow2DiskHeader, incompatible_features),
                         sizeof(val), &val, 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    return 0;
}

/* Make every table durable, then clear the dirty bit. */
int coroutine_fn qcow2_mark_clean(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (!(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        s->incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    }
    return ret;
}

int coroutine_fn qcow2_mark_corrupt(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    s->incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    return ret;
}

int coroutine_fn qcow2_mark_consistent(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (!(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        return 0;
    }
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features &= ~QCOW2_INCOMPAT_CORRUPT;
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    return ret;
}

/*
 * Metadata was found inconsistent while in use. Fatal (on a writable
 * image): mark the image corrupt on disk and stop using it; otherwise just
 * report. One message per image, as QEMU prints it.
 */
void qcow2_signal_corruption(BlockDriverState *bs, bool fatal, int64_t offset,
                             int64_t size, const char *fmt, ...)
{
    BDRVQcow2State *s = bs->opaque;
    va_list ap;
    char *msg;

    fatal = fatal && !bs->read_only;
    if (s->signaled_corruption &&
        (!fatal || (s->incompatible_features & QCOW2_INCOMPAT_CORRUPT))) {
        return;
    }
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (fatal) {
        fprintf(stderr, "qcow2: Marking image as corrupt: %s; further "
                "corruption events will be suppressed\n", msg);
    } else {
        fprintf(stderr, "qcow2: Image is corrupt: %s; further non-fatal "
                "corruption events will be suppressed\n", msg);
    }
    g_free(msg);
    (void)offset;
    (void)size;
    s->signaled_corruption = true;
    if (fatal) {
        qcow2_mark_corrupt(bs);
        /* Like QEMU: no further I/O through this node ("no medium"). */
        s->stopped = true;
    }
}
