/*
 * qcow2 persistent dirty bitmaps: the operations of qemu-img bitmap.
 *
 * Format (docs/qcow2.md): the bitmaps header extension names a directory
 * of entries (table offset and size, flags in_use/auto, type 1,
 * granularity bits, name); each bitmap table entry names one data cluster
 * (or 0: all bits zero, 1: all bits one); bit i of the bitmap covers guest
 * bytes [i << granularity_bits, (i + 1) << granularity_bits), bit i of a
 * cluster's bits is bit (i % 8) of byte (i / 8). Autoclear bit 0 says the
 * directory is consistent with the data.
 *
 * Every change writes new tables, data and directory into new clusters,
 * flushes, then switches the header (one sector) and flushes, and only
 * then frees the old clusters: a crash leaks at worst.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "block/qcow2/qcow2.h"

#define BME_FLAG_IN_USE         (1U << 0)
#define BME_FLAG_AUTO           (1U << 1)
#define BME_FLAG_EXTRA_COMPAT   (1U << 2)
#define BME_MIN_GRAN_BITS       9
#define BME_MAX_GRAN_BITS       31
#define BME_MAX_NAME            1023
/* As QEMU: at most 2^27 table entries and 512 MiB of bits per bitmap. */
#define BME_MAX_TABLE_SIZE      0x8000000U
#define BME_MAX_PHYS_SIZE       0x20000000ULL
/* Table entries of all bitmaps together that one operation checks. */
#define BME_MAX_TOTAL_ENTRIES   (UINT64_C(1) << 24)
#define BME_TE_OFFSET_MASK      UINT64_C(0x00fffffffffffe00)
#define BME_TE_RESERVED         (~BME_TE_OFFSET_MASK & ~UINT64_C(1))

typedef struct Qcow2Bitmap {
    char *name;
    uint32_t flags;
    uint8_t gran_bits;
    uint64_t table_offset;
    uint32_t table_size;
    uint64_t *table;            /* CPU order; NULL: a new bitmap */
    uint8_t *bits;              /* changed in memory (NULL: as on disk) */
    bool zero;                  /* all bits clear (new or cleared) */
    uint64_t old_table_offset;  /* to free after the switch */
    uint64_t *old_table;
    uint32_t old_table_size;
    uint32_t disk_table_size;   /* of table (a resize changes table_size) */
    bool keep;                  /* bm_commit: table and data as they are */
    /* Loaded by a writable open (s->bm_live): */
    bool live_enabled;          /* guest writes set bits */
    uint64_t covered;           /* guest bytes the bits cover */
} Qcow2Bitmap;

typedef struct Qcow2BitmapList {
    GPtrArray *bms;             /* of Qcow2Bitmap */
    GPtrArray *dropped;         /* removed bitmaps, their clusters freed */
} Qcow2BitmapList;

static void bm_free(gpointer p)
{
    Qcow2Bitmap *bm = p;

    g_free(bm->name);
    g_free(bm->table);
    g_free(bm->old_table);
    g_free(bm->bits);
    g_free(bm);
}

static void bm_list_free(Qcow2BitmapList *l)
{
    g_ptr_array_free(l->bms, TRUE);
    g_ptr_array_free(l->dropped, TRUE);
}

static uint64_t bm_table_size(BDRVQcow2State *s, uint64_t size,
                              unsigned gran_bits)
{
    uint64_t bits = DIV_ROUND_UP(size, UINT64_C(1) << gran_bits);
    return DIV_ROUND_UP(bits, (uint64_t)s->cluster_size * 8);
}

static Qcow2Bitmap *bm_find(Qcow2BitmapList *l, const char *name)
{
    for (guint i = 0; i < l->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->bms, i);
        if (!strcmp(bm->name, name)) {
            return bm;
        }
    }
    return NULL;
}

/* One cluster of bitmap clusters (table or data): in the file, no known
 * metadata, not seen before. */
static int bm_claim(BlockDriverState *bs, GHashTable *seen, uint64_t off,
                    uint64_t len, int64_t file_len, const char *name,
                    Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t first = off >> s->cluster_bits;
    uint64_t end = DIV_ROUND_UP(off + len, s->cluster_size);

    if (qcow2_offset_into_cluster(s, off) || off + len > (uint64_t)file_len ||
        off + len < off) {
        error_setg(errp, "Bitmap '%s': cluster at 0x%" PRIx64 " is outside "
                   "the image or not aligned", name, off);
        return -EINVAL;
    }
    if (qcow2_check_metadata_overlap(bs, QCOW2_OL_BITMAP_DIRECTORY, off,
                                     len)) {
        error_setg(errp, "Bitmap '%s': cluster at 0x%" PRIx64 " overlaps "
                   "other metadata", name, off);
        return -EINVAL;
    }
    for (uint64_t c = first; c < end; c++) {
        if (!g_hash_table_add(seen, GSIZE_TO_POINTER((gsize)c))) {
            error_setg(errp, "Bitmap '%s': cluster at 0x%" PRIx64 " is used "
                       "twice", name, c << s->cluster_bits);
            return -EINVAL;
        }
    }
    return 0;
}

/* Read and check the whole directory and every table. */
static int coroutine_fn bm_load(BlockDriverState *bs, Qcow2BitmapList *l,
                                Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash,
                                                  g_direct_equal);
    int64_t file_len = bdrv_getlength(bs->file);
    uint64_t pos = 0, total = 0;
    uint8_t *dir = NULL;
    int ret = 0;

    l->bms = g_ptr_array_new_with_free_func(bm_free);
    l->dropped = g_ptr_array_new_with_free_func(bm_free);
    if (!s->nb_bitmaps ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    if (file_len < 0) {
        error_setg_errno(errp, -file_len, "Could not get image length");
        return file_len;
    }
    if (!s->bitmap_directory_size ||
        s->bitmap_directory_size > QCOW2_MAX_BITMAP_DIR_SIZE) {
        error_setg(errp, "Bitmap directory size is invalid");
        return -EINVAL;
    }
    ret = bm_claim(bs, seen, s->bitmap_directory_offset,
                   s->bitmap_directory_size, file_len, "(directory)", errp);
    if (ret < 0) {
        return ret;
    }
    dir = g_malloc(s->bitmap_directory_size);
    ret = bdrv_co_pread(bs->file, s->bitmap_directory_offset,
                        s->bitmap_directory_size, dir, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read bitmap directory");
        goto out;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        Qcow2DiskBitmapDirEntry e;
        Qcow2Bitmap *bm;
        uint64_t esize;
        uint16_t nsize;

        ret = -EINVAL;
        if (s->bitmap_directory_size - pos < sizeof(e)) {
            error_setg(errp, "Bitmap directory is truncated");
            goto out;
        }
        memcpy(&e, dir + pos, sizeof(e));
        nsize = be16_to_cpu(e.name_size);
        esize = sizeof(e) + (uint64_t)be32_to_cpu(e.extra_data_size) + nsize;
        if (s->bitmap_directory_size - pos < esize) {
            error_setg(errp, "Bitmap directory is truncated");
            goto out;
        }
        if (e.extra_data_size) {
            error_setg(errp, "Bitmap extra data is not supported");
            goto out;
        }
        if (!nsize || nsize > BME_MAX_NAME) {
            error_setg(errp, "Bitmap directory entry %" PRIu32 " has an "
                       "invalid name length", i);
            goto out;
        }
        bm = g_new0(Qcow2Bitmap, 1);
        bm->name = g_strndup((char *)dir + pos + sizeof(e), nsize);
        g_ptr_array_add(l->bms, bm);
        bm->flags = be32_to_cpu(e.flags);
        bm->gran_bits = e.granularity_bits;
        bm->table_offset = be64_to_cpu(e.bitmap_table_offset);
        bm->table_size = be32_to_cpu(e.bitmap_table_size);
        bm->disk_table_size = bm->table_size;
        pos += ROUND_UP(esize, 8);
        if (strlen(bm->name) != nsize) {
            error_setg(errp, "Bitmap name contains a NUL byte");
            goto out;
        }
        for (guint j = 0; j + 1 < l->bms->len; j++) {
            if (!strcmp(((Qcow2Bitmap *)g_ptr_array_index(l->bms, j))->name,
                        bm->name)) {
                error_setg(errp, "Bitmap '%s' is listed twice", bm->name);
                goto out;
            }
        }
        if (e.type != 1) {
            error_setg(errp, "Bitmap '%s' has unsupported type %u", bm->name,
                       e.type);
            goto out;
        }
        if (bm->flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO |
                          BME_FLAG_EXTRA_COMPAT)) {
            error_setg(errp, "Bitmap '%s' has reserved flags set", bm->name);
            goto out;
        }
        if (bm->gran_bits < BME_MIN_GRAN_BITS ||
            bm->gran_bits > BME_MAX_GRAN_BITS) {
            error_setg(errp, "Bitmap '%s' has invalid granularity bits %u",
                       bm->name, bm->gran_bits);
            goto out;
        }
        /*
         * As QEMU: an inconsistent bitmap may have the size of before a
         * resize that was not stored (a crash); it is only removed.
         */
        if ((!(bm->flags & BME_FLAG_IN_USE) &&
             bm->table_size != bm_table_size(s, s->size, bm->gran_bits)) ||
            bm->table_size > BME_MAX_TABLE_SIZE ||
            (uint64_t)bm->table_size * s->cluster_size > BME_MAX_PHYS_SIZE) {
            error_setg(errp, "Bitmap '%s' has an invalid table size",
                       bm->name);
            goto out;
        }
        total += bm->table_size;
        if (total > BME_MAX_TOTAL_ENTRIES) {
            error_setg(errp, "Bitmap tables are too large");
            goto out;
        }
        ret = bm_claim(bs, seen, bm->table_offset,
                       (uint64_t)bm->table_size * 8, file_len, bm->name,
                       errp);
        if (ret < 0) {
            goto out;
        }
        bm->table = g_new(uint64_t, bm->table_size);
        ret = bdrv_co_pread(bs->file, bm->table_offset,
                            (uint64_t)bm->table_size * 8, bm->table, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read bitmap table");
            goto out;
        }
        for (uint32_t j = 0; j < bm->table_size; j++) {
            uint64_t te = be64_to_cpu(bm->table[j]);
            uint64_t off = te & BME_TE_OFFSET_MASK;
            bm->table[j] = te;
            if ((te & BME_TE_RESERVED) || (off && (te & 1))) {
                error_setg(errp, "Bitmap '%s' has an invalid table entry",
                           bm->name);
                ret = -EINVAL;
                goto out;
            }
            if (off) {
                ret = bm_claim(bs, seen, off, s->cluster_size, file_len,
                               bm->name, errp);
                if (ret < 0) {
                    goto out;
                }
            }
        }
    }
    ret = 0;
    if (pos != s->bitmap_directory_size) {
        error_setg(errp, "Bitmap directory size does not match its entries");
        ret = -EINVAL;
    }
out:
    g_free(dir);
    return ret;
}

/* The bits of bm, unpacked: (table_size * cluster_size) bytes. */
static int coroutine_fn bm_read_bits(BlockDriverState *bs, Qcow2Bitmap *bm,
                                     uint8_t **bits, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t *b;

    if (bm->bits) {
        *bits = bm->bits;
        return 0;
    }
    b = g_try_malloc0((size_t)bm->table_size * s->cluster_size + 1);
    if (!b) {
        error_setg(errp, "Not enough memory for bitmap '%s'", bm->name);
        return -ENOMEM;
    }
    for (uint32_t j = 0; !bm->zero && j < bm->table_size; j++) {
        uint8_t *c = b + (size_t)j * s->cluster_size;
        uint64_t off = bm->table[j] & BME_TE_OFFSET_MASK;
        if (off) {
            int ret = bdrv_co_pread(bs->file, off, s->cluster_size, c, 0);
            if (ret < 0) {
                g_free(b);
                error_setg_errno(errp, -ret, "Could not read bitmap '%s'",
                                 bm->name);
                return ret;
            }
        } else if (bm->table[j] & 1) {
            memset(c, 0xff, s->cluster_size);
        }
    }
    *bits = bm->bits = b;
    return 0;
}

/*
 * Give bm a new table and data clusters: the bits from bits, or (bits
 * NULL) all zero if bm->zero, else those on disk, copied one cluster at
 * a time (memory: one cluster).
 */
static int coroutine_fn bm_rewrite(BlockDriverState *bs, Qcow2Bitmap *bm,
                                   const uint8_t *bits, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t nbits = DIV_ROUND_UP(s->size, UINT64_C(1) << bm->gran_bits);
    uint64_t nbytes = DIV_ROUND_UP(nbits, 8);
    uint64_t *table = g_new0(uint64_t, MAX(bm->table_size, 1));
    uint8_t *zero = g_malloc0(s->cluster_size);
    uint8_t *buf = g_malloc(s->cluster_size);
    bool copy = !bits && !bm->zero && bm->table;
    int64_t off;
    int ret = 0;

    for (uint32_t j = 0; (bits || copy) && j < bm->table_size; j++) {
        const uint8_t *c = bits ? bits + (size_t)j * s->cluster_size : buf;
        uint64_t n = MIN((uint64_t)s->cluster_size,
                         nbytes - (uint64_t)j * s->cluster_size);
        if (copy) {
            uint64_t old = bm->table[j] & BME_TE_OFFSET_MASK;
            if (old) {
                ret = bdrv_co_pread(bs->file, old, s->cluster_size, buf, 0);
                if (ret < 0) {
                    goto out;
                }
            } else if (bm->table[j] & 1) {
                memset(buf, 0xff, s->cluster_size);
            } else {
                continue;
            }
        }
        if (!memcmp(c, zero, n)) {
            continue;
        }
        off = qcow2_alloc_clusters(bs, s->cluster_size);
        if (off < 0) {
            ret = off;
            goto out;
        }
        /* Bits past the image end stay zero (the bits buffer is larger). */
        memcpy(zero, c, n);
        memset(zero + n, 0, s->cluster_size - n);
        ret = qcow2_pre_write_overlap_check(bs, 0, off, s->cluster_size);
        if (ret >= 0) {
            ret = bdrv_co_pwrite(bs->file, off, s->cluster_size, zero, 0);
        }
        memset(zero, 0, s->cluster_size);
        table[j] = off;
        if (ret < 0) {
            goto out;
        }
    }
    off = qcow2_alloc_clusters(bs, (uint64_t)bm->table_size * 8);
    if (off < 0) {
        ret = off;
        goto out;
    }
    for (uint32_t j = 0; j < bm->table_size; j++) {
        table[j] = cpu_to_be64(table[j]);
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, off,
                                        (uint64_t)bm->table_size * 8);
    if (ret >= 0) {
        ret = bdrv_co_pwrite(bs->file, off, (uint64_t)bm->table_size * 8,
                             table, 0);
    }
    for (uint32_t j = 0; j < bm->table_size; j++) {
        table[j] = be64_to_cpu(table[j]);
    }
    bm->old_table_offset = bm->table_offset;
    bm->old_table = bm->table;
    bm->old_table_size = bm->disk_table_size;
    bm->disk_table_size = bm->table_size;
    bm->table = table;
    table = NULL;
    bm->table_offset = off;
out:
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write bitmap '%s'", bm->name);
    }
    g_free(table);
    g_free(zero);
    g_free(buf);
    return ret;
}

static void coroutine_fn bm_free_table(BlockDriverState *bs,
                                       uint64_t table_offset,
                                       const uint64_t *table, uint32_t size)
{
    BDRVQcow2State *s = bs->opaque;

    if (!table) {
        return;
    }
    for (uint32_t j = 0; j < size; j++) {
        uint64_t d = table[j] & BME_TE_OFFSET_MASK;
        if (d) {
            qcow2_free_clusters(bs, d, s->cluster_size);
        }
    }
    qcow2_free_clusters(bs, table_offset, (uint64_t)size * 8);
}

/* The directory of l as on disk; NULL if too large. */
static uint8_t *bm_dir_build(Qcow2BitmapList *l, uint64_t *sizep)
{
    uint64_t size = 0, pos = 0;
    uint8_t *dir;

    for (guint i = 0; i < l->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->bms, i);
        size += ROUND_UP(sizeof(Qcow2DiskBitmapDirEntry) + strlen(bm->name),
                         8);
    }
    if (size > QCOW2_MAX_BITMAP_DIR_SIZE) {
        return NULL;
    }
    dir = g_malloc0(size + 1);
    for (guint i = 0; i < l->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->bms, i);
        Qcow2DiskBitmapDirEntry e = {
            .bitmap_table_offset = cpu_to_be64(bm->table_offset),
            .bitmap_table_size = cpu_to_be32(bm->table_size),
            .flags = cpu_to_be32(bm->flags),
            .type = 1,
            .granularity_bits = bm->gran_bits,
            .name_size = cpu_to_be16(strlen(bm->name)),
        };
        memcpy(dir + pos, &e, sizeof(e));
        memcpy(dir + pos + sizeof(e), bm->name, strlen(bm->name));
        pos += ROUND_UP(sizeof(e) + strlen(bm->name), 8);
    }
    *sizep = size;
    return dir;
}

/* Write the new directory, switch the header to it, free what is old. */
static int coroutine_fn bm_commit(BlockDriverState *bs, Qcow2BitmapList *l,
                                  Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old_off = s->bitmap_directory_offset;
    uint64_t old_size = s->bitmap_directory_size;
    bool had = s->nb_bitmaps &&
               (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS);
    uint64_t size = 0;
    int64_t off = 0;
    uint8_t *dir;
    int ret;

    /*
     * As QEMU when it closes an image: every bitmap but the inconsistent
     * ones is written anew (data, then table, in directory order), then
     * the directory; the old clusters are freed after the switch.
     */
    for (guint i = 0; i < l->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->bms, i);
        uint8_t *bits = NULL;

        if ((bm->flags & BME_FLAG_IN_USE) || bm->keep) {
            continue;
        }
        bits = bm->zero ? NULL : bm->bits;  /* NULL: copied from disk */
        ret = bm_rewrite(bs, bm, bits, errp);
        g_free(bm->bits);
        bm->bits = NULL;
        if (ret < 0) {
            return ret;
        }
    }
    dir = bm_dir_build(l, &size);
    if (!dir) {
        error_setg(errp, "Bitmap directory would be too large");
        return -EFBIG;
    }
    ret = 0;
    if (size) {
        off = qcow2_alloc_clusters(bs, size);
        ret = off < 0 ? off : 0;
        if (ret >= 0) {
            ret = qcow2_pre_write_overlap_check(bs, 0, off, size);
        }
        if (ret >= 0) {
            ret = bdrv_co_pwrite(bs->file, off, size, dir, 0);
        }
    }
    g_free(dir);
    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write bitmap directory");
        return ret;
    }
    s->nb_bitmaps = l->bms->len;
    s->bitmap_directory_offset = size ? off : 0;
    s->bitmap_directory_size = size;
    if (size) {
        s->autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
    } else {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
    }
    ret = qcow2_commit_header(bs, errp);
    if (ret < 0) {
        return ret;
    }
    /* Committed: the old clusters are unreachable now. */
    for (guint i = 0; i < l->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->bms, i);
        if (bm->old_table) {
            bm_free_table(bs, bm->old_table_offset, bm->old_table,
                          bm->old_table_size);
            g_free(bm->old_table);
            bm->old_table = NULL;
        }
    }
    for (guint i = 0; i < l->dropped->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->dropped, i);
        bm_free_table(bs, bm->table_offset, bm->table, bm->disk_table_size);
    }
    g_ptr_array_set_size(l->dropped, 0);
    if (had) {
        qcow2_free_clusters(bs, old_off, old_size);
    }
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not free old bitmap clusters");
    }
    return ret;
}

/* dst |= src, bit by bit over the guest bytes each covers. */
static void bm_merge_bits(uint8_t *dst, unsigned dgran, const uint8_t *src,
                          unsigned sgran, uint64_t size)
{
    uint64_t nsrc = DIV_ROUND_UP(size, UINT64_C(1) << sgran);

    if (sgran == dgran) {
        for (uint64_t i = 0; i < DIV_ROUND_UP(nsrc, 8); i++) {
            dst[i] |= src[i];
        }
        return;
    }
    for (uint64_t i = 0; i < nsrc; i++) {
        if (!(i & 7) && !src[i / 8] && nsrc - i >= 8) {
            i += 7;
            continue;
        }
        if (!(src[i / 8] & (1u << (i % 8)))) {
            continue;
        }
        uint64_t start = i << sgran;
        uint64_t end = MIN(size, (i + 1) << sgran);
        for (uint64_t d = start >> dgran; d <= (end - 1) >> dgran; d++) {
            dst[d / 8] |= 1u << (d % 8);
        }
    }
}

static int coroutine_fn bm_usable(Qcow2Bitmap *bm, Error **errp)
{
    if (bm->flags & BME_FLAG_IN_USE) {
        error_setg(errp, "Bitmap '%s' is inconsistent and cannot be used",
                   bm->name);
        error_append_hint(errp, "Try block-dirty-bitmap-remove to delete "
                          "this bitmap from disk\n");
        return -EINVAL;
    }
    return 0;
}

/* One operation, in memory only. */
static int coroutine_fn bm_apply(BlockDriverState *bs, Qcow2BitmapList *l,
                                 const BdrvBitmapOp *op, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BitmapList sl = { 0 };
    Qcow2Bitmap *bm = bm_find(l, op->name), *src;
    uint8_t *dbits, *sbits;
    int ret = 0;

    if (op->type != BITMAP_OP_ADD && !bm) {
        error_setg(errp, "Dirty bitmap '%s' not found", op->name);
        return -ENOENT;
    }
    switch (op->type) {
    case BITMAP_OP_ADD: {
        uint64_t g = op->granularity, ts;
        unsigned bits = 0;

        if (bm) {
            error_setg(errp, "Bitmap already exists: %s", op->name);
            return -EEXIST;
        }
        if (s->qcow_version < 3) {
            error_setg(errp, "Can't make bitmap '%s' persistent: Cannot "
                       "store dirty bitmaps in qcow2 v2 files", op->name);
            return -ENOTSUP;
        }
        if (!g) {
            g = MIN(MAX(s->cluster_size, 4096), 65536);
        }
        /* QEMU's granularity is 32 bits wide: 4 GiB and more fail. */
        if (g < 512 || (g & (g - 1)) ||
            g > (UINT64_C(1) << BME_MAX_GRAN_BITS)) {
            error_setg(errp, "Granularity must be power of 2 and at least "
                       "512");
            return -EINVAL;
        }
        while ((UINT64_C(1) << bits) < g) {
            bits++;
        }
        if (strlen(op->name) > BME_MAX_NAME) {
            error_setg(errp, "Can't make bitmap '%s' persistent: Name length "
                       "exceeds maximum (%d characters)", op->name,
                       BME_MAX_NAME);
            return -EINVAL;
        }
        if (!*op->name) {
            error_setg(errp, "Bitmap name must not be empty");
            return -EINVAL;
        }
        if (l->bms->len >= QCOW2_MAX_BITMAPS) {
            error_setg(errp, "Too many bitmaps");
            return -EFBIG;
        }
        ts = bm_table_size(s, s->size, bits);
        if (ts > BME_MAX_TABLE_SIZE ||
            ts * s->cluster_size > BME_MAX_PHYS_SIZE) {
            error_setg(errp, "Bitmap '%s' would be too large", op->name);
            return -EFBIG;
        }
        bm = g_new0(Qcow2Bitmap, 1);
        bm->name = g_strdup(op->name);
        bm->gran_bits = bits;
        bm->table_size = ts;
        bm->flags = BME_FLAG_AUTO;
        bm->zero = true;
        g_ptr_array_add(l->bms, bm);
        return 0;
    }
    case BITMAP_OP_REMOVE:
        for (guint k = 0; k < l->bms->len; k++) {
            if (g_ptr_array_index(l->bms, k) == bm) {
                g_ptr_array_add(l->dropped, g_ptr_array_steal_index(l->bms, k));
                break;
            }
        }
        return 0;
    case BITMAP_OP_CLEAR:
        ret = bm_usable(bm, errp);
        if (ret >= 0) {
            g_free(bm->bits);
            bm->bits = NULL;
            bm->zero = true;
        }
        return ret;
    case BITMAP_OP_ENABLE:
    case BITMAP_OP_DISABLE:
        ret = bm_usable(bm, errp);
        if (ret >= 0 && op->type == BITMAP_OP_ENABLE) {
            bm->flags |= BME_FLAG_AUTO;
        } else if (ret >= 0) {
            bm->flags &= ~BME_FLAG_AUTO;
        }
        return ret;
    case BITMAP_OP_MERGE:
        break;
    }

    BlockDriverState *sbs = op->src_bs ? op->src_bs : bs;
    Qcow2BitmapList *slp = l;

    ret = bm_usable(bm, errp);
    if (ret < 0) {
        return ret;
    }
    if (sbs != bs) {
        if (!sbs->drv || strcmp(sbs->drv->format_name, "qcow2")) {
            error_setg(errp, "Dirty bitmap '%s' not found", op->src_name);
            return -ENOENT;
        }
        BDRVQcow2State *ss = sbs->opaque;
        if (ss->size != s->size) {
            error_setg(errp, "Bitmaps are of different sizes (destination "
                       "size is %" PRIu64 ", source size is %" PRIu64 ")",
                       s->size, ss->size);
            return -EINVAL;
        }
        qemu_co_mutex_lock(&ss->lock);
        ret = bm_load(sbs, &sl, errp);
        qemu_co_mutex_unlock(&ss->lock);
        if (ret < 0) {
            goto out;
        }
        slp = &sl;
    }
    src = bm_find(slp, op->src_name);
    if (!src) {
        error_setg(errp, "Dirty bitmap '%s' not found", op->src_name);
        ret = -ENOENT;
        goto out;
    }
    ret = bm_usable(src, errp);
    if (ret >= 0) {
        ret = bm_read_bits(sbs, src, &sbits, errp);
    }
    if (ret >= 0) {
        ret = bm_read_bits(bs, bm, &dbits, errp);
    }
    if (ret >= 0) {
        bm_merge_bits(dbits, bm->gran_bits, sbits, src->gran_bits, s->size);
        bm->zero = false;
    }
out:
    if (sl.bms) {
        bm_list_free(&sl);
    }
    return ret;
}

int coroutine_fn qcow2_co_bitmap_ops(BlockDriverState *bs,
                                     const BdrvBitmapOp *ops, int nb_ops,
                                     int *failed, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BitmapList l = { 0 };
    Error *op_err = NULL;
    int ret, done = 0;

    *failed = -1;
    if (bs->read_only) {
        *failed = 0;
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    qemu_co_mutex_lock(&s->lock);
    ret = bm_load(bs, &l, errp);
    if (ret < 0) {
        *failed = 0;
        goto out;
    }
    /* As QEMU: the operations before a failing one are stored. */
    for (; done < nb_ops; done++) {
        ret = bm_apply(bs, &l, &ops[done], &op_err);
        if (ret < 0) {
            *failed = done;
            break;
        }
    }
    if (done) {
        int ret2 = bm_commit(bs, &l, op_err ? NULL : errp);
        if (ret2 < 0 && !op_err) {
            *failed = done - 1;
            ret = ret2;
        }
    }
    if (op_err) {
        error_propagate(errp, op_err);
    }
out:
    if (l.bms) {
        bm_list_free(&l);
    }
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

bool qcow2_supports_persistent_bitmaps(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    return s->qcow_version >= 3;
}

int coroutine_fn qcow2_co_bitmap_list(BlockDriverState *bs,
                                      BdrvBitmapInfo **list, int *n,
                                      Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BitmapList l = { 0 };
    int ret;

    qemu_co_mutex_lock(&s->lock);
    ret = bm_load(bs, &l, errp);
    qemu_co_mutex_unlock(&s->lock);
    if (ret >= 0) {
        *n = l.bms->len;
        *list = g_new0(BdrvBitmapInfo, MAX(*n, 1));
        for (int i = 0; i < *n; i++) {
            Qcow2Bitmap *bm = g_ptr_array_index(l.bms, i);
            (*list)[i].name = g_strdup(bm->name);
            (*list)[i].granularity = UINT64_C(1) << bm->gran_bits;
            (*list)[i].enabled = bm->flags & BME_FLAG_AUTO;
            (*list)[i].inconsistent = bm->flags & BME_FLAG_IN_USE;
        }
    }
    if (l.bms) {
        bm_list_free(&l);
    }
    return ret;
}

/*
 * Bitmaps of a writable open (as QEMU 7.2 loads them): the bits of each
 * enabled, consistent bitmap are kept in memory and the bitmap is marked
 * in_use on disk before any guest write; guest writes, zero writes and
 * discards set its bits; the close stores it anew with in_use cleared.
 * A crash leaves it in_use (inconsistent). Disabled bitmaps stay as they
 * are on disk (consistent) unless a resize changes their size.
 */

/* Bits [start, end) set. */
static void bm_set_range(uint8_t *b, uint64_t start, uint64_t end)
{
    for (; start < end && (start & 7); start++) {
        b[start / 8] |= 1u << (start % 8);
    }
    if (end - start >= 8 && start < end) {
        uint64_t n = (end - start) / 8;
        memset(b + start / 8, 0xff, n);
        start += n * 8;
    }
    for (; start < end; start++) {
        b[start / 8] |= 1u << (start % 8);
    }
}

void qcow2_bitmaps_do_mark(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes)
{
    GPtrArray *bms = s->bm_live->bms;

    for (guint i = 0; i < bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(bms, i);
        uint64_t end = MIN(offset + bytes, bm->covered);

        if (!bm->live_enabled || offset >= end) {
            continue;
        }
        bm_set_range(bm->bits, offset >> bm->gran_bits,
                     ((end - 1) >> bm->gran_bits) + 1);
    }
}

void qcow2_bitmaps_discard(BDRVQcow2State *s)
{
    if (s->bm_live) {
        bm_list_free(s->bm_live);
        g_free(s->bm_live);
        s->bm_live = NULL;
    }
}

/*
 * Load the bits of the consistent bitmaps of l (all: the disabled ones
 * too), mark them in_use in the directory, written in place (only flags
 * change: each 4-byte field is in one sector, so a torn write leaves
 * valid entries) and flushed, and move them to s->bm_live.
 */
static int coroutine_fn bm_take(BlockDriverState *bs, Qcow2BitmapList *l,
                                bool all, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    GPtrArray *taken = g_ptr_array_new();
    uint64_t size = 0;
    uint8_t *dir = NULL, *bits;
    int ret = 0;

    for (guint i = 0; i < l->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l->bms, i);

        if ((bm->flags & BME_FLAG_IN_USE) ||
            (!all && !(bm->flags & BME_FLAG_AUTO))) {
            continue;
        }
        ret = bm_read_bits(bs, bm, &bits, errp);
        if (ret < 0) {
            goto out;
        }
        bm->flags |= BME_FLAG_IN_USE;
        bm->live_enabled = bm->flags & BME_FLAG_AUTO;
        bm->covered = s->size;
        g_ptr_array_add(taken, bm);
    }
    if (!taken->len) {
        goto out;
    }
    dir = bm_dir_build(l, &size);
    if (!dir || size != s->bitmap_directory_size) {
        error_setg(errp, "Can't update bitmap directory: %s",
                   strerror(EINVAL));
        ret = -EINVAL;
        goto out;
    }
    ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_BITMAP_DIRECTORY,
                                        s->bitmap_directory_offset, size);
    if (ret >= 0) {
        ret = bdrv_co_pwrite(bs->file, s->bitmap_directory_offset, size,
                             dir, 0);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Can't update bitmap directory");
        goto out;
    }
    if (!s->bm_live) {
        s->bm_live = g_new0(Qcow2BitmapList, 1);
        s->bm_live->bms = g_ptr_array_new_with_free_func(bm_free);
        s->bm_live->dropped = g_ptr_array_new_with_free_func(bm_free);
    }
    for (guint i = 0; i < taken->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(taken, i);
        guint k;
        if (g_ptr_array_find(l->bms, bm, &k)) {
            g_ptr_array_add(s->bm_live->bms,
                            g_ptr_array_steal_index(l->bms, k));
        }
    }
out:
    g_ptr_array_free(taken, TRUE);
    g_free(dir);
    return ret;
}

/* Writable open (lock held): take the enabled consistent bitmaps. */
int coroutine_fn qcow2_bitmaps_open(BlockDriverState *bs, Error **errp)
{
    Qcow2BitmapList l = { 0 };
    int ret;

    ret = bm_load(bs, &l, errp);
    if (ret >= 0) {
        ret = bm_take(bs, &l, false, errp);
    }
    bm_list_free(&l);
    if (ret < 0) {
        qcow2_bitmaps_discard(bs->opaque);
    }
    return ret;
}

/*
 * Before a resize to new_size (lock held): as QEMU, refused while a
 * bitmap is inconsistent; every other bitmap (the disabled ones too) is
 * loaded and marked in_use, to be stored with the new size at close.
 */
int coroutine_fn qcow2_bitmaps_resize_check(BlockDriverState *bs,
                                            uint64_t new_size, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BitmapList l = { 0 };
    uint64_t total = 0;
    int ret;

    ret = bm_load(bs, &l, errp);
    for (guint i = 0; ret >= 0 && i < l.bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l.bms, i);
        uint64_t ts = bm_table_size(s, new_size, bm->gran_bits);

        if ((bm->flags & BME_FLAG_IN_USE) &&
            !(s->bm_live && bm_find(s->bm_live, bm->name))) {
            ret = bm_usable(bm, errp);
            break;
        }
        total += ts;
        if (ts > BME_MAX_TABLE_SIZE ||
            ts * s->cluster_size > BME_MAX_PHYS_SIZE ||
            total > BME_MAX_TOTAL_ENTRIES) {
            error_setg(errp, "Bitmap '%s' is too big", bm->name);
            ret = -EFBIG;
        }
    }
    if (ret >= 0) {
        ret = bm_take(bs, &l, true, errp);
    }
    if (l.bms) {
        bm_list_free(&l);
    }
    return ret < 0 ? -ENOTSUP : 0;
}

/* The in-memory bits follow s->size (new bits clear, as QEMU). */
void qcow2_bitmaps_resized(BDRVQcow2State *s)
{
    if (!s->bm_live) {
        return;
    }
    for (guint i = 0; i < s->bm_live->bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(s->bm_live->bms, i);
        uint64_t g = UINT64_C(1) << bm->gran_bits;
        uint64_t oldbits = DIV_ROUND_UP(bm->covered, g);
        uint64_t newbits = DIV_ROUND_UP(s->size, g);
        uint32_t ts = bm_table_size(s, s->size, bm->gran_bits);
        size_t oldlen = (size_t)bm->table_size * s->cluster_size + 1;
        size_t newlen = (size_t)ts * s->cluster_size + 1;

        if (bm->covered == s->size) {
            continue;
        }
        for (uint64_t b = newbits; b < oldbits && (b & 7); b++) {
            bm->bits[b / 8] &= ~(1u << (b % 8));
        }
        if (ROUND_UP(newbits, 8) < oldbits) {
            memset(bm->bits + ROUND_UP(newbits, 8) / 8, 0,
                   DIV_ROUND_UP(oldbits, 8) - ROUND_UP(newbits, 8) / 8);
        }
        bm->bits = g_realloc(bm->bits, newlen);
        if (newlen > oldlen) {
            memset(bm->bits + oldlen, 0, newlen - oldlen);
        }
        bm->table_size = ts;
        bm->covered = s->size;
    }
}

/*
 * Close (lock held): store the bitmaps taken at open anew, in_use
 * cleared (bitmaps added meanwhile, disabled and inconsistent ones stay
 * as they are), as bm_commit does. On failure they stay in_use.
 */
int coroutine_fn qcow2_bitmaps_store(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BitmapList l = { 0 };
    bool any = false;
    int ret;

    if (!s->bm_live) {
        return 0;
    }
    qcow2_bitmaps_resized(s);
    ret = bm_load(bs, &l, errp);
    for (guint i = 0; ret >= 0 && i < l.bms->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(l.bms, i);
        Qcow2Bitmap *lv = bm_find(s->bm_live, bm->name);

        if (lv && lv->bits && (bm->flags & BME_FLAG_IN_USE) &&
            lv->gran_bits == bm->gran_bits) {
            g_free(bm->bits);
            bm->bits = lv->bits;
            lv->bits = NULL;
            bm->flags &= ~BME_FLAG_IN_USE;
            bm->table_size = lv->table_size;
            bm->zero = false;
            any = true;
        } else {
            bm->keep = true;
        }
    }
    if (ret >= 0 && any) {
        ret = bm_commit(bs, &l, errp);
    }
    if (l.bms) {
        bm_list_free(&l);
    }
    qcow2_bitmaps_discard(s);
    return ret;
}
