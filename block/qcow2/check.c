/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 consistency check and repair: every reference the tables make is
 * counted in memory and compared with the refcounts on disk; leaks and
 * wrong counts are fixed per cluster, a broken refcount structure is
 * rebuilt from the computed counts, and COPIED flags are recomputed.
 * Messages and repair behaviour follow QEMU's, so that outputs compare.
 */
#include "block/qcow2/qcow2.h"

/* The computed refcounts, in the image's refcount width (so that a
 * rebuild can write them out as refcount blocks directly). */
typedef struct Qcow2Imrt {
    uint8_t *table;
    int64_t nb_clusters;            /* entries usable */
    int64_t alloc_clusters;         /* entries allocated */
} Qcow2Imrt;

typedef struct Qcow2Check {
    BlockDriverState *bs;
    BdrvCheckResult *res;
    BdrvCheckMode fix;
    Qcow2Imrt imrt;
    bool rebuild;
    int64_t file_len;
    /* Whole refcount blocks read straight from the file (see
     * check_get_refcount); rb_off is the block in rb_buf, 0 for none. */
    uint8_t *rb_buf;
    uint64_t rb_off;
    bool rb_use_cache;
    /* Amend refcount_bits: the rebuilt structure's header write also
     * sets this refcount order (-1 for a plain rebuild). */
    int new_order;
} Qcow2Check;

enum { CHECK_FRAG_INFO = 1 };

/* ---- the in-memory refcount table ---- */

static uint64_t imrt_bytes(BDRVQcow2State *s, int64_t entries)
{
    uint64_t bytes = DIV_ROUND_UP((uint64_t)entries << s->refcount_order, 8);
    return ROUND_UP(MAX(bytes, 1), (uint64_t)s->cluster_size);
}

static int imrt_resize(BDRVQcow2State *s, Qcow2Imrt *m, int64_t n)
{
    if (n <= m->alloc_clusters) {
        m->nb_clusters = MAX(m->nb_clusters, n);
        return 0;
    }
    uint64_t old = m->table ? imrt_bytes(s, m->alloc_clusters) : 0;
    uint64_t new = imrt_bytes(s, n);
    uint8_t *t = g_try_realloc(m->table, new);
    if (!t) {
        return -ENOMEM;
    }
    memset(t + old, 0, new - old);
    m->table = t;
    m->alloc_clusters = (int64_t)(new * 8 >> s->refcount_order);
    m->nb_clusters = n;
    return 0;
}

static uint64_t imrt_get(BDRVQcow2State *s, Qcow2Imrt *m, int64_t i)
{
    return i < m->nb_clusters ? qcow2_get_refcount_ro(s, m->table, i) : 0;
}

/* One reference to every cluster of [offset, offset + size). */
static int coroutine_fn imrt_inc(Qcow2Check *c, uint64_t offset,
                                 uint64_t size)
{
    BDRVQcow2State *s = c->bs->opaque;

    if (!size) {
        return 0;
    }
    if (offset > INT64_MAX - size ||
        (int64_t)(offset + size) - c->file_len >= (int64_t)s->cluster_size) {
        fprintf(stderr, "ERROR: counting reference for region exceeding the "
                "end of the file by one cluster or more: offset 0x%" PRIx64
                " size 0x%" PRIx64 "\n", offset, size);
        c->res->corruptions++;
        return 0;
    }
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + size - 1) >> s->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        if ((int64_t)k >= c->imrt.nb_clusters &&
            imrt_resize(s, &c->imrt, k + 1) < 0) {
            c->res->check_errors++;
            return -ENOMEM;
        }
        uint64_t rc = qcow2_get_refcount_ro(s, c->imrt.table, k);
        if (rc == s->refcount_max) {
            fprintf(stderr, "ERROR: overflow cluster offset=0x%" PRIx64 "\n",
                    k << s->cluster_bits);
            fprintf(stderr, "Use qemu-img amend to increase the refcount "
                    "entry width or qemu-img convert to create a clean copy "
                    "if the image cannot be opened for writing\n");
            c->res->corruptions++;
            continue;
        }
        qcow2_set_refcount_ro(s, c->imrt.table, k, rc + 1);
    }
    return 0;
}

/* ---- walking the tables ---- */

/* A preallocated cluster with an unaligned offset becomes a zero one. */
static int coroutine_fn check_fix_by_zero(Qcow2Check *c, uint64_t l2_offset,
                                          uint8_t *table, uint32_t i,
                                          bool active)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t entry_off = l2_offset + ((uint64_t)i << s->l2_entry_shift);
    int ret;

    if (s->extended_l2) {
        uint64_t b = qcow2_l2_bitmap(s, table, i);
        b = (b | (b << 32)) & QCOW2_SC_ALL_ZERO;
        qcow2_set_l2_bitmap(s, table, i, b);
        qcow2_set_l2_entry(s, table, i, 0);
    } else {
        qcow2_set_l2_entry(s, table, i, QCOW2_OFLAG_ZERO);
    }
    ret = qcow2_pre_write_overlap_check(c->bs, active ? QCOW2_OL_ACTIVE_L2
                                        : QCOW2_OL_INACTIVE_L2, entry_off,
                                        1 << s->l2_entry_shift);
    if (ret < 0) {
        fprintf(stderr, "ERROR: Overlap check failed\n");
        c->res->check_errors++;
        return ret;
    }
    ret = bdrv_co_pwrite(c->bs->file, entry_off, 1 << s->l2_entry_shift,
                         table + ((size_t)i << s->l2_entry_shift), 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(c->bs->file);
    }
    if (ret < 0) {
        fprintf(stderr, "ERROR: Failed to overwrite L2 table entry: %s\n",
                strerror(-ret));
        c->res->check_errors++;
        return ret;
    }
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 0;
}

/* One data entry with a host cluster (normal or preallocated zero). */
static int coroutine_fn check_host_entry(Qcow2Check *c, uint64_t l2_offset,
                                         uint8_t *table, uint32_t i,
                                         int flags, bool active,
                                         uint64_t *next_contiguous)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t e = qcow2_l2_entry(s, table, i);
    uint64_t b = qcow2_l2_bitmap(s, table, i);
    uint64_t off = e & QCOW2_L2E_OFFSET_MASK;

    if ((b >> 32) & b) {
        c->res->corruptions++;
        fprintf(stderr, "ERROR offset=%" PRIx64 ": Allocated cluster has "
                "corrupted subcluster allocation bitmap\n", off);
    }
    if (qcow2_offset_into_cluster(s, off)) {
        bool data = s->extended_l2 ? (b & QCOW2_SC_ALL_ALLOC)
                                   : !(e & QCOW2_OFLAG_ZERO);
        c->res->corruptions++;
        if (!data) {
            fprintf(stderr, "%s offset=%" PRIx64 ": Preallocated cluster is "
                    "not properly aligned; L2 entry corrupted.\n",
                    (c->fix & BDRV_FIX_ERRORS) ? "Repairing" : "ERROR", off);
            if ((c->fix & BDRV_FIX_ERRORS) &&
                check_fix_by_zero(c, l2_offset, table, i, active) == 0) {
                return 0;
            }
        } else {
            fprintf(stderr, "ERROR offset=%" PRIx64 ": Data cluster is not "
                    "properly aligned; L2 entry corrupted.\n", off);
        }
    }
    if (flags & CHECK_FRAG_INFO) {
        c->res->allocated_clusters++;
        if (*next_contiguous && off != *next_contiguous) {
            c->res->fragmented_clusters++;
        }
        *next_contiguous = off + s->cluster_size;
    }
    if (!qcow2_has_data_file(s)) {
        return imrt_inc(c, off, s->cluster_size);
    }
    return 0;
}

static int coroutine_fn check_l2(Qcow2Check *c, uint64_t l2_offset,
                                 int flags, bool active)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    uint8_t *table = qemu_blockalign(s->cluster_size);
    uint64_t next_contiguous = 0;
    int ret;

    ret = bdrv_co_pread(bs->file, l2_offset, s->cluster_size, table, 0);
    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error in check_refcounts_l2\n");
        c->res->check_errors++;
        goto out;
    }
    for (uint32_t i = 0; i < s->l2_size && ret >= 0; i++) {
        uint64_t e = qcow2_l2_entry(s, table, i);
        uint64_t b = qcow2_l2_bitmap(s, table, i);

        if (!(e & QCOW2_OFLAG_COMPRESSED) && (e & QCOW2_L2E_RESERVED)) {
            fprintf(stderr, "ERROR found l2 entry with reserved bits set: "
                    "%" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t host, bytes;
            if (e & QCOW2_OFLAG_COPIED) {
                fprintf(stderr, "ERROR: coffset=0x%" PRIx64 ": copied flag "
                        "must never be set for compressed clusters\n",
                        e & s->cluster_offset_mask);
                c->res->corruptions++;
                e &= ~QCOW2_OFLAG_COPIED;
            }
            if (qcow2_has_data_file(s)) {
                fprintf(stderr, "ERROR compressed cluster %" PRIu32 " with "
                        "data file, entry=0x%" PRIx64 "\n", i, e);
                c->res->corruptions++;
                continue;
            }
            if (b) {
                fprintf(stderr, "ERROR compressed cluster %" PRIu32 " with "
                        "non-zero subcluster allocation bitmap, entry=0x%"
                        PRIx64 "\n", i, e);
                c->res->corruptions++;
                continue;
            }
            uint64_t coffset = e & s->cluster_offset_mask;
            qcow2_parse_compressed(s, e, &host, &bytes);
            ret = imrt_inc(c, coffset, bytes - (coffset - host));
            if (flags & CHECK_FRAG_INFO) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
        } else if (qcow2_entry_has_host(bs, e)) {
            ret = check_host_entry(c, l2_offset, table, i, flags, active,
                                   &next_contiguous);
        } else if (s->extended_l2 && (b & QCOW2_SC_ALL_ALLOC)) {
            c->res->corruptions++;
            fprintf(stderr, "ERROR: Unallocated cluster has non-zero "
                    "subcluster allocation map\n");
        }
    }
out:
    qemu_vfree(table);
    return ret;
}

static int coroutine_fn check_l1(Qcow2Check *c, uint64_t l1_offset,
                                 uint32_t l1_size, int flags, bool active)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    size_t bytes = (size_t)l1_size * sizeof(uint64_t);
    uint64_t *l1;
    int ret;

    if (!l1_size) {
        return 0;
    }
    ret = imrt_inc(c, l1_offset, bytes);
    if (ret < 0) {
        return ret;
    }
    l1 = g_try_malloc(bytes);
    if (!l1) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    ret = bdrv_co_pread(bs->file, l1_offset, bytes, l1, 0);
    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error in check_refcounts_l1\n");
        c->res->check_errors++;
        g_free(l1);
        return ret;
    }
    for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t e = be64_to_cpu(l1[i]);
        if (!e) {
            continue;
        }
        if (e & QCOW2_L1E_RESERVED) {
            fprintf(stderr, "ERROR found L1 entry with reserved bits set: "
                    "%" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        uint64_t l2 = e & QCOW2_L1E_OFFSET_MASK;
        ret = imrt_inc(c, l2, s->cluster_size);
        if (ret < 0) {
            break;
        }
        if (qcow2_offset_into_cluster(s, l2)) {
            fprintf(stderr, "ERROR l2_offset=%" PRIx64 ": Table is not "
                    "cluster aligned; L1 entry corrupted\n", l2);
            c->res->corruptions++;
        }
        ret = check_l2(c, l2, flags, active);
    }
    g_free(l1);
    return ret;
}

/* The clusters of consistent persistent bitmaps (directory, tables, data). */
static int coroutine_fn check_bitmaps(Qcow2Check *c)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    uint8_t *dir;
    int ret;

    if (!s->nb_bitmaps || !(s->autoclear_features &
                            QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    ret = imrt_inc(c, s->bitmap_directory_offset, s->bitmap_directory_size);
    if (ret < 0) {
        return ret;
    }
    dir = g_malloc0(s->bitmap_directory_size + 1);
    ret = bdrv_co_pread(bs->file, s->bitmap_directory_offset,
                        s->bitmap_directory_size, dir, 0);
    uint64_t pos = 0;
    for (uint32_t i = 0; ret >= 0 && i < s->nb_bitmaps; i++) {
        Qcow2DiskBitmapDirEntry e;
        if (s->bitmap_directory_size - pos < sizeof(e)) {
            break;
        }
        memcpy(&e, dir + pos, sizeof(e));
        uint64_t toff = be64_to_cpu(e.bitmap_table_offset);
        uint32_t tsize = be32_to_cpu(e.bitmap_table_size);
        pos += ROUND_UP(sizeof(e) + be16_to_cpu(e.name_size) +
                        (uint64_t)be32_to_cpu(e.extra_data_size), 8);
        if (qcow2_offset_into_cluster(s, toff) ||
            (uint64_t)tsize * 8 > QCOW2_MAX_L1_SIZE) {
            break;
        }
        ret = imrt_inc(c, toff, (uint64_t)tsize * 8);
        uint64_t *t = g_malloc0((size_t)tsize * 8 + 8);
        if (ret >= 0) {
            ret = bdrv_co_pread(bs->file, toff, (uint64_t)tsize * 8, t, 0);
        }
        for (uint32_t j = 0; ret >= 0 && j < tsize; j++) {
            uint64_t d = be64_to_cpu(t[j]) & QCOW2_L2E_OFFSET_MASK;
            if (d) {
                ret = imrt_inc(c, d, s->cluster_size);
            }
        }
        g_free(t);
    }
    g_free(dir);
    return ret;
}

/* The refcount blocks themselves: each must be counted exactly once. */
static int coroutine_fn check_refblocks(Qcow2Check *c)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    int64_t nb = qcow2_size_to_clusters(s, c->file_len);
    int ret;

    for (uint32_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t e = s->refcount_table[i];
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
        uint64_t cl = off >> s->cluster_bits;

        if (e & ~QCOW2_REFT_OFFSET_MASK) {
            fprintf(stderr, "ERROR refcount table entry %" PRIu32 " has "
                    "reserved bits set\n", i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (qcow2_offset_into_cluster(s, off)) {
            fprintf(stderr, "ERROR refcount block %" PRIu32 " is not "
                    "cluster aligned; refcount table entry corrupted\n", i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (off && (int64_t)cl >= nb) {
            c->res->corruptions++;
            fprintf(stderr, "%s refcount block %" PRIu32 " is outside "
                    "image\n", (c->fix & BDRV_FIX_ERRORS) ? "Repairing"
                                                          : "ERROR", i);
            if (c->fix & BDRV_FIX_ERRORS) {
                Error *err = NULL;
                ret = bdrv_co_truncate(bs->file, off + s->cluster_size, false,
                                       PREALLOC_MODE_OFF, &err);
                if (ret >= 0) {
                    c->file_len = bdrv_getlength(bs->file);
                    nb = qcow2_size_to_clusters(s, c->file_len);
                    if (imrt_resize(s, &c->imrt, MAX(nb, c->imrt.nb_clusters))
                        < 0) {
                        c->res->check_errors++;
                        return -ENOMEM;
                    }
                    c->res->corruptions--;
                    c->res->corruptions_fixed++;
                    ret = imrt_inc(c, off, s->cluster_size);
                    if (ret < 0) {
                        return ret;
                    }
                    continue;
                }
                c->rebuild = true;
                fprintf(stderr, "ERROR could not resize image: %s\n",
                        err ? error_get_pretty(err) : strerror(-ret));
                error_free(err);
            }
            continue;
        }
        if (off) {
            ret = imrt_inc(c, off, s->cluster_size);
            if (ret < 0) {
                return ret;
            }
            uint64_t rc = imrt_get(s, &c->imrt, cl);
            if (rc != 1) {
                fprintf(stderr, "ERROR refcount block %" PRIu32
                        " refcount=%" PRIu64 "\n", i, rc);
                c->res->corruptions++;
                c->rebuild = true;
            }
        }
    }
    return 0;
}

/*
 * A cluster's refcount as check reads it: one whole refcount block at a
 * time, straight from the file. The refcount cache works in slices, which
 * would cost a read per slice over the whole image (and again for the
 * OFLAG_COPIED pass); QEMU reads each block once. The cache is written back
 * before the first direct read; once check has changed a refcount it reads
 * through the cache again, so it never sees a stale block.
 */
static int coroutine_fn check_get_refcount(Qcow2Check *c, uint64_t cl,
                                           uint64_t *rc)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    uint64_t rt = cl >> s->refcount_block_bits;
    uint64_t off;
    int ret;

    *rc = 0;
    if (c->rb_use_cache || !c->rb_buf) {
        return qcow2_get_refcount(bs, cl, rc);
    }
    if (rt >= s->refcount_table_size) {
        return 0;
    }
    off = s->refcount_table[rt] & QCOW2_REFT_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    if (qcow2_offset_into_cluster(s, off) || off > QCOW2_MAX_HOST_OFFSET) {
        return qcow2_get_refcount(bs, cl, rc);  /* reports the corruption */
    }
    if (off != c->rb_off) {
        if (!c->rb_off) {
            ret = table_cache_flush(s->refcount_cache);
            if (ret < 0) {
                return ret;
            }
        }
        c->rb_off = 0;
        ret = bdrv_co_pread(bs->file, off, s->cluster_size, c->rb_buf, 0);
        if (ret < 0) {
            return ret;
        }
        c->rb_off = off;
    }
    *rc = qcow2_get_refcount_ro(s, c->rb_buf,
                                cl & (s->refcount_block_size - 1));
    return 0;
}

/* Every reference the image makes, counted in c->imrt. */
static int coroutine_fn calculate_refcounts(Qcow2Check *c)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    int ret;

    c->file_len = bdrv_getlength(bs->file);
    if (c->file_len < 0) {
        c->res->check_errors++;
        return c->file_len;
    }
    ret = imrt_inc(c, 0, s->cluster_size);
    if (ret >= 0) {
        ret = check_l1(c, s->l1_table_offset, s->l1_size, CHECK_FRAG_INFO,
                       true);
    }
    if (ret >= 0 && qcow2_has_data_file(s) && s->nb_snapshots) {
        fprintf(stderr, "ERROR %" PRIu32 " snapshots in image with data "
                "file\n", s->nb_snapshots);
        c->res->corruptions++;
    }
    for (uint32_t i = 0; ret >= 0 && i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        if (qcow2_offset_into_cluster(s, sn->l1_table_offset)) {
            fprintf(stderr, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
                    ": L1 table is not cluster aligned; snapshot table entry "
                    "corrupted\n", sn->id_str, sn->name, sn->l1_table_offset);
            c->res->corruptions++;
            continue;
        }
        if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_SIZE) {
            fprintf(stderr, "ERROR snapshot %s (%s) l1_size=%#" PRIx32
                    ": L1 table is too large; snapshot table entry "
                    "corrupted\n", sn->id_str, sn->name, sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        ret = check_l1(c, sn->l1_table_offset, sn->l1_size, 0, false);
    }
    if (ret >= 0) {
        ret = imrt_inc(c, s->snapshots_offset, s->snapshots_size);
    }
    if (ret >= 0) {
        ret = imrt_inc(c, s->refcount_table_offset,
                       (uint64_t)s->refcount_table_size * 8);
    }
    if (ret >= 0 && s->crypt_method == QCOW2_CRYPT_LUKS &&
        s->has_crypto_ext) {
        /* The LUKS header and key slots (crypto.c). */
        ret = imrt_inc(c, s->crypto_offset, s->crypto_length);
    }
    if (ret >= 0) {
        ret = check_bitmaps(c);
    }
    if (ret >= 0) {
        ret = check_refblocks(c);
    }
    return ret;
}

/* ---- comparison and repair ---- */

static void coroutine_fn compare_refcounts(Qcow2Check *c, BdrvCheckMode fix,
                                           int64_t *highest)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;

    *highest = 0;
    for (int64_t i = 0; i < c->imrt.nb_clusters; i++) {
        uint64_t rc1, rc2 = imrt_get(s, &c->imrt, i);
        int ret = check_get_refcount(c, i, &rc1);
        if (ret < 0) {
            fprintf(stderr, "Can't get refcount for cluster %" PRId64 ": %s\n",
                    i, strerror(-ret));
            c->res->check_errors++;
            continue;
        }
        if (rc1 || rc2) {
            *highest = i;
        }
        if (rc1 == rc2) {
            continue;
        }
        int *fixed = NULL;
        if (rc1 == 0) {
            c->rebuild = true;
        } else if (rc1 > rc2 && (fix & BDRV_FIX_LEAKS)) {
            fixed = &c->res->leaks_fixed;
        } else if (rc1 < rc2 && (fix & BDRV_FIX_ERRORS)) {
            fixed = &c->res->corruptions_fixed;
        }
        fprintf(stderr, "%s cluster %" PRId64 " refcount=%" PRIu64
                " reference=%" PRIu64 "\n", fixed ? "Repairing" :
                rc1 < rc2 ? "ERROR" : "Leaked", i, rc1, rc2);
        if (fixed) {
            int64_t diff = rc2 > rc1 ? (int64_t)(rc2 - rc1)
                                     : -(int64_t)(rc1 - rc2);
            c->rb_use_cache = true;     /* the file's blocks are stale now */
            if (qcow2_update_refcount(bs, i << s->cluster_bits, 1, diff)
                >= 0) {
                (*fixed)++;
                continue;
            }
        }
        if (rc1 < rc2) {
            c->res->corruptions++;
        } else {
            c->res->leaks++;
        }
    }
}

/* First run of n free clusters in the computed table from *first_free
 * (growing it), now counted. */
static int64_t imrt_alloc(Qcow2Check *c, int64_t n, int64_t *first_free)
{
    BDRVQcow2State *s = c->bs->opaque;
    int64_t cl = *first_free, run = 0;
    bool first_gap = true;

    for (; cl < c->imrt.nb_clusters && run < n; cl++) {
        if (!imrt_get(s, &c->imrt, cl)) {
            run++;
            if (first_gap) {
                *first_free = cl;
                first_gap = false;
            }
        } else {
            run = 0;
        }
    }
    if (run < n && imrt_resize(s, &c->imrt, cl + n - run) < 0) {
        return -ENOMEM;
    }
    cl -= run;
    for (int64_t i = 0; i < n; i++) {
        qcow2_set_refcount_ro(s, c->imrt.table, cl + i, 1);
    }
    return cl << s->cluster_bits;
}

/*
 * Write a refcount block for every block range of [first, end) that has
 * counted clusters (new blocks go to free clusters of the computed table).
 * Returns 1 if the table had to grow, 0 if not, or -errno.
 */
static int coroutine_fn rebuild_write_blocks(Qcow2Check *c, int64_t first,
                                             int64_t end, uint64_t **table,
                                             uint64_t *entries)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    int64_t first_free = 0;
    bool grown = false;
    int ret;

    for (int64_t cl = first; cl < end; cl++) {
        if (!imrt_get(s, &c->imrt, cl)) {
            continue;
        }
        uint64_t bi = cl >> s->refcount_block_bits;
        int64_t bstart = bi << s->refcount_block_bits;
        int64_t boff;
        if (bi < *entries && (*table)[bi]) {
            boff = (*table)[bi];
        } else {
            first_free = MAX(first_free, bstart);
            boff = imrt_alloc(c, 1, &first_free);
            if (boff < 0) {
                return boff;
            }
            end = MAX(end, (boff >> s->cluster_bits) + 1);
            if (bi >= *entries) {
                uint64_t ne = ROUND_UP((bi + 1) * 8, (uint64_t)s->cluster_size)
                              / 8;
                *table = g_renew(uint64_t, *table, ne);
                memset(*table + *entries, 0, (ne - *entries) * 8);
                *entries = ne;
                grown = true;
            }
            (*table)[bi] = boff;
        }
        /* Make sure the block range is covered by the computed table. */
        if (imrt_resize(s, &c->imrt, MAX(c->imrt.nb_clusters,
                                         bstart + (int64_t)
                                         s->refcount_block_size)) < 0) {
            return -ENOMEM;
        }
        ret = qcow2_pre_write_overlap_check(bs, 0, boff, s->cluster_size);
        if (ret >= 0) {
            ret = bdrv_co_pwrite(bs->file, boff, s->cluster_size,
                                 c->imrt.table + ((uint64_t)bstart <<
                                                  s->refcount_order) / 8, 0);
        }
        if (ret < 0) {
            return ret;
        }
        cl = bstart + s->refcount_block_size - 1;
    }
    return grown;
}

/* A new refcount structure written from the computed counts. */
static int coroutine_fn rebuild_refcounts(Qcow2Check *c)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    uint64_t *table = NULL, entries = 0;
    int64_t rt_offset = -1;
    uint64_t rt_clusters = 0;
    int ret;

    /* The old refcount blocks are not cached any more. */
    table_cache_invalidate(s->refcount_cache);
    ret = rebuild_write_blocks(c, 0, c->imrt.nb_clusters, &table, &entries);
    while (ret >= 0) {
        int64_t first_free = 0;
        rt_clusters = DIV_ROUND_UP(entries * 8, s->cluster_size);
        rt_offset = imrt_alloc(c, rt_clusters, &first_free);
        if (rt_offset < 0) {
            ret = rt_offset;
            break;
        }
        int64_t start = rt_offset >> s->cluster_bits;
        ret = rebuild_write_blocks(c, start, start + rt_clusters, &table,
                                   &entries);
        if (ret == 0) {
            break;
        }
    }
    if (ret < 0) {
        fprintf(stderr, "ERROR writing refblock: %s\n", strerror(-ret));
        c->res->check_errors++;
        g_free(table);
        return ret;
    }
    uint64_t *disk = g_new0(uint64_t, entries);
    for (uint64_t i = 0; i < entries; i++) {
        disk[i] = cpu_to_be64(table[i]);
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, rt_offset, entries * 8);
    if (ret >= 0) {
        ret = bdrv_co_pwrite(bs->file, rt_offset, entries * 8, disk, 0);
    }
    g_free(disk);
    if (ret >= 0 && c->new_order >= 0) {
        /* Offset, size and refcount order in one write (one sector):
         * the switch to the new structure is atomic. */
        Qcow2DiskHeader h;
        size_t first = offsetof(Qcow2DiskHeader, refcount_table_offset);
        size_t end = offsetof(Qcow2DiskHeader, refcount_order) +
                     sizeof(h.refcount_order);
        ret = bdrv_co_flush(bs->file);
        if (ret >= 0) {
            ret = bdrv_co_pread(bs->file, 0, end, &h, 0);
        }
        if (ret >= 0) {
            h.refcount_table_offset = cpu_to_be64(rt_offset);
            h.refcount_table_clusters = cpu_to_be32(rt_clusters);
            h.refcount_order = cpu_to_be32(c->new_order);
            ret = bdrv_co_pwrite(bs->file, first, end - first,
                                 (uint8_t *)&h + first, 0);
        }
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
    } else if (ret >= 0) {
        struct QEMU_PACKED {
            uint64_t offset;
            uint32_t clusters;
        } hdr = { cpu_to_be64(rt_offset), cpu_to_be32(rt_clusters) };
        ret = bdrv_co_flush(bs->file);
        if (ret >= 0) {
            ret = bdrv_co_pwrite(bs->file,
                                 offsetof(Qcow2DiskHeader,
                                          refcount_table_offset),
                                 sizeof(hdr), &hdr, 0);
        }
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
    }
    if (ret < 0) {
        fprintf(stderr, "ERROR writing reftable: %s\n", strerror(-ret));
        c->res->check_errors++;
        g_free(table);
        return ret;
    }
    g_free(s->refcount_table);
    s->refcount_table = table;
    s->refcount_table_offset = rt_offset;
    s->refcount_table_size = entries;
    s->free_cluster_index = 0;
    qcow2_invalidate_meta_clusters(s);
    table_cache_invalidate(s->refcount_cache);
    return 0;
}

/* COPIED flags of the active tables against the refcounts. */
static int coroutine_fn check_oflag_copied(Qcow2Check *c)
{
    BlockDriverState *bs = c->bs;
    BDRVQcow2State *s = bs->opaque;
    BdrvCheckResult *res = c->res;
    uint8_t *table = qemu_blockalign(s->cluster_size);
    bool repair;
    int ret = 0;

    if (c->fix & BDRV_FIX_ERRORS) {
        repair = true;
    } else if (c->fix & BDRV_FIX_LEAKS) {
        repair = !res->check_errors && !res->corruptions && !res->leaks;
    } else {
        repair = false;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i];
        uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        int dirty = 0;

        if (!l2 || qcow2_offset_into_cluster(s, l2)) {
            continue;
        }
        if (check_get_refcount(c, l2 >> s->cluster_bits, &rc) < 0) {
            continue;
        }
        if ((rc == 1) != !!(l1e & QCOW2_OFLAG_COPIED)) {
            res->corruptions++;
            fprintf(stderr, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
                    " l1_entry=%" PRIx64 " refcount=%" PRIu64 "\n",
                    repair ? "Repairing" : "ERROR", i, l1e, rc);
            if (repair) {
                s->l1_table[i] = rc == 1 ? l1e | QCOW2_OFLAG_COPIED
                                         : l1e & ~QCOW2_OFLAG_COPIED;
                ret = qcow2_write_l1_entry(bs, i);
                if (ret < 0) {
                    res->check_errors++;
                    goto out;
                }
                res->corruptions--;
                res->corruptions_fixed++;
            }
        }
        ret = bdrv_co_pread(bs->file, l2, s->cluster_size, table, 0);
        if (ret < 0) {
            fprintf(stderr, "ERROR: Could not read L2 table: %s\n",
                    strerror(-ret));
            res->check_errors++;
            goto out;
        }
        for (uint32_t j = 0; j < s->l2_size; j++) {
            uint64_t e = qcow2_l2_entry(s, table, j);
            uint64_t data = e & QCOW2_L2E_OFFSET_MASK;
            if (!qcow2_entry_has_host(bs, e)) {
                continue;
            }
            if (qcow2_has_data_file(s)) {
                rc = 1;
            } else if (check_get_refcount(c, data >> s->cluster_bits,
                                          &rc) < 0) {
                continue;
            }
            if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
                res->corruptions++;
                fprintf(stderr, "%s OFLAG_COPIED data cluster: l2_entry=%"
                        PRIx64 " refcount=%" PRIu64 "\n",
                        repair ? "Repairing" : "ERROR", e, rc);
                if (repair) {
                    qcow2_set_l2_entry(s, table, j, rc == 1
                                       ? e | QCOW2_OFLAG_COPIED
                                       : e & ~QCOW2_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty) {
            ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L2, l2,
                                                s->cluster_size);
            if (ret < 0) {
                fprintf(stderr, "ERROR: Could not write L2 table; metadata "
                        "overlap check failed: %s\n", strerror(-ret));
                res->check_errors++;
                goto out;
            }
            ret = bdrv_co_pwrite(bs->file, l2, s->cluster_size, table, 0);
            if (ret < 0) {
                fprintf(stderr, "ERROR: Could not write L2 table: %s\n",
                        strerror(-ret));
                res->check_errors++;
                goto out;
            }
            table_cache_invalidate(s->l2_cache);
            res->corruptions -= dirty;
            res->corruptions_fixed += dirty;
        }
    }
    ret = 0;
out:
    qemu_vfree(table);
    return ret;
}

/* Rebuild the refcount structure, then count again (QEMU's sequence). */
static int coroutine_fn check_rebuild(Qcow2Check *c, int64_t *highest)
{
    BDRVQcow2State *s = c->bs->opaque;
    BdrvCheckResult old = *c->res;
    int fresh_leaks = 0;
    int ret;

    fprintf(stderr, "Rebuilding refcount structure\n");
    ret = rebuild_refcounts(c);
    if (ret < 0) {
        return ret;
    }
    c->res->corruptions = 0;
    c->res->leaks = 0;
    c->rebuild = false;
    memset(c->imrt.table, 0, imrt_bytes(s, c->imrt.alloc_clusters));
    ret = calculate_refcounts(c);
    if (ret < 0) {
        return ret;
    }
    if (c->fix & BDRV_FIX_LEAKS) {
        BdrvCheckResult saved = *c->res;
        *c->res = (BdrvCheckResult) { 0 };
        compare_refcounts(c, BDRV_FIX_LEAKS, highest);
        if (c->rebuild) {
            fprintf(stderr, "ERROR rebuilt refcount structure is still "
                    "broken\n");
        }
        fresh_leaks = c->res->leaks;
        *c->res = saved;
    }
    if (c->res->corruptions < old.corruptions) {
        c->res->corruptions_fixed += old.corruptions - c->res->corruptions;
    }
    if (c->res->leaks < old.leaks) {
        c->res->leaks_fixed += old.leaks - c->res->leaks;
    }
    c->res->leaks += fresh_leaks;
    return 0;
}

static int coroutine_fn qcow2_check_refcounts(BlockDriverState *bs,
                                              BdrvCheckResult *res,
                                              BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Check c = { .bs = bs, .res = res, .fix = fix, .new_order = -1 };
    BdrvCheckResult pre;
    int64_t highest = 0;
    int ret;

    c.file_len = bdrv_getlength(bs->file);
    if (c.file_len < 0) {
        res->check_errors++;
        return c.file_len;
    }
    int64_t nb = qcow2_size_to_clusters(s, c.file_len);
    if (nb > INT_MAX) {
        res->check_errors++;
        return -EFBIG;
    }
    res->total_clusters = qcow2_size_to_clusters(s, s->size);
    c.rb_buf = qemu_blockalign(s->cluster_size);
    if (imrt_resize(s, &c.imrt, nb) < 0) {
        res->check_errors++;
        return -ENOMEM;
    }
    ret = calculate_refcounts(&c);
    if (ret < 0) {
        goto out;
    }
    pre = *res;
    compare_refcounts(&c, 0, &highest);
    if (c.rebuild && (fix & BDRV_FIX_ERRORS)) {
        c.rb_use_cache = true;          /* the blocks are rewritten */
        ret = check_rebuild(&c, &highest);
        if (ret < 0) {
            goto out;
        }
    } else if (fix) {
        if (c.rebuild) {
            fprintf(stderr, "ERROR need to rebuild refcount structures\n");
            res->check_errors++;
            ret = -EIO;
            goto out;
        }
        if (res->leaks || res->corruptions) {
            *res = pre;
            compare_refcounts(&c, fix, &highest);
        }
    }
    ret = check_oflag_copied(&c);
    if (ret < 0) {
        goto out;
    }
    res->image_end_offset = (highest + 1) * (int64_t)s->cluster_size;
out:
    qemu_vfree(c.rb_buf);
    g_free(c.imrt.table);
    return ret;
}

/* ---- amend refcount_bits ---- */

static void qcow2_set_refcount_order(BDRVQcow2State *s, int order)
{
    s->refcount_order = order;
    s->refcount_bits = 1 << order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                      : (UINT64_C(1) << s->refcount_bits) - 1;
    s->refcount_block_bits = s->cluster_bits + 3 - order;
    s->refcount_block_size = UINT64_C(1) << s->refcount_block_bits;
}

/*
 * amend -p for a refcount width change, as QEMU 7.2 reports it: QEMU walks
 * the old refcount table once per round of allocating the new refblocks
 * (and the new table) until a round allocates nothing, then once more to
 * write them; each walk reports one step per old table entry, out of
 * MAX(walks so far + 2, 3) walks. The rounds are simulated here on the used
 * clusters (QEMU's first-fit allocation from cluster 0, a freed table
 * lowering the search start), so the steps and totals are QEMU's; the
 * structure itself is built as below.
 */
typedef struct RcWalkSim {
    uint8_t *used;                  /* one byte per cluster: in use */
    uint64_t nused;                 /* clusters in used[] */
    uint32_t *cnt;                  /* clusters in use per new refblock */
    bool *alloc;                    /* new refblock allocated */
    uint64_t nranges;               /* entries in cnt[] and alloc[] */
    uint64_t block;                 /* entries of a new refblock */
    uint64_t free_idx;
} RcWalkSim;

static void rc_sim_grow(RcWalkSim *m, uint64_t cl)
{
    if (cl >= m->nused) {
        uint64_t n = MAX(cl + 1, m->nused * 2);
        m->used = g_realloc(m->used, n);
        memset(m->used + m->nused, 0, n - m->nused);
        m->nused = n;
    }
    uint64_t r = cl / m->block + 1;
    if (r > m->nranges) {
        uint64_t n = MAX(r, m->nranges * 2);
        m->cnt = g_realloc(m->cnt, n * sizeof(*m->cnt));
        m->alloc = g_realloc(m->alloc, n * sizeof(*m->alloc));
        memset(m->cnt + m->nranges, 0, (n - m->nranges) * sizeof(*m->cnt));
        memset(m->alloc + m->nranges, 0,
               (n - m->nranges) * sizeof(*m->alloc));
        m->nranges = n;
    }
}

static void rc_sim_set(RcWalkSim *m, uint64_t cl, bool on)
{
    rc_sim_grow(m, cl);
    if (m->used[cl] != on) {
        m->used[cl] = on;
        m->cnt[cl / m->block] += on ? 1 : -1;
    }
}

/* QEMU's alloc_clusters_noref: n free clusters in a row from free_idx. */
static uint64_t rc_sim_alloc(RcWalkSim *m, uint64_t n)
{
    uint64_t start;

retry:
    start = m->free_idx;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t cl = m->free_idx++;
        if (cl < m->nused && m->used[cl]) {
            goto retry;
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        rc_sim_set(m, start + i, true);
    }
    return start;
}

static void rc_sim_free(RcWalkSim *m, uint64_t start, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        rc_sim_set(m, start + i, false);
    }
    m->free_idx = MIN(m->free_idx, start);
}

static void rc_sim_walk_status(BlockDriverState *bs, uint64_t rt_size,
                               int index, int total)
{
    for (uint64_t i = 0; i < rt_size; i++) {
        qcow2_amend_status(bs, (int64_t)(index * rt_size + i),
                           (int64_t)(total * rt_size));
    }
    qcow2_amend_status(bs, (int64_t)((index + 1) * rt_size),
                       (int64_t)(total * rt_size));
}

/* The allocation walks; returns the index of the writing walk. */
static int rc_sim_alloc_walks(BlockDriverState *bs, RcWalkSim *m,
                              uint64_t rt_size, uint64_t limit)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t per_rt_cluster = s->cluster_size / sizeof(uint64_t);
    uint64_t new_rt_size = 0, rt_start = 0, rt_clusters = 0;
    uint64_t last_range = limit ? (limit - 1) / m->block : 0;
    int walk = 0;
    bool allocated;

    do {
        int total = MAX(walk + 2, 3);
        allocated = false;
        for (uint64_t r = 0; r <= last_range && r < m->nranges; r++) {
            if (!m->cnt[r]) {
                continue;
            }
            if (r >= new_rt_size) {
                new_rt_size = ROUND_UP(r + 1, per_rt_cluster);
            }
            if (!m->alloc[r]) {
                rc_sim_alloc(m, 1);
                m->alloc[r] = true;
                allocated = true;
            }
        }
        rc_sim_walk_status(bs, rt_size, walk, total);
        walk++;
        if (allocated) {
            if (rt_clusters) {
                rc_sim_free(m, rt_start, rt_clusters);
            }
            rt_clusters = DIV_ROUND_UP(new_rt_size * sizeof(uint64_t),
                                       s->cluster_size);
            rt_start = rc_sim_alloc(m, rt_clusters);
        }
    } while (allocated);
    return walk;
}

/*
 * Rewrite the refcount structure with entries of 2^order bits: every
 * refcount is copied (leaks stay leaks, as in QEMU) into a computed table
 * of the new width, new blocks and a new table go to clusters that are
 * free in the old structure, one header write switches to them, then the
 * old blocks and table are freed in the new structure. A crash before the
 * switch leaves the old structure intact; after it, leaks at worst.
 * Called with s->lock held.
 */
int coroutine_fn qcow2_change_refcount_order(BlockDriverState *bs, int order,
                                             Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    BDRVQcow2State old = *s;            /* the old width, for reading */
    Qcow2Check c = { .bs = bs, .new_order = order };
    BdrvCheckResult res = { 0 };
    uint64_t *old_rt = NULL;
    uint64_t old_rt_offset = s->refcount_table_offset;
    uint64_t old_rt_size = s->refcount_table_size;
    uint64_t new_max = order == 6 ? UINT64_MAX
                       : (UINT64_C(1) << (1 << order)) - 1;
    uint8_t *buf = NULL;
    RcWalkSim sim = { 0 };
    int write_walk = 0;
    int ret;

    c.res = &res;
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to flush the refcount cache");
        return ret;
    }
    old_rt = g_memdup2(s->refcount_table, old_rt_size * sizeof(uint64_t));
    buf = qemu_blockalign(s->cluster_size);
    qcow2_set_refcount_order(s, order);
    sim.block = s->refcount_block_size;
    for (uint64_t i = 0; i < old_rt_size; i++) {
        uint64_t off = old_rt[i] & QCOW2_REFT_OFFSET_MASK;
        if (!off) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, off)) {
            error_setg(errp, "Refblock offset %#" PRIx64 " unaligned "
                       "(reftable index: %#" PRIx64 ")", off, i);
            ret = -EIO;
            goto fail;
        }
        ret = bdrv_co_pread(bs->file, off, s->cluster_size, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read a refcount block");
            goto fail;
        }
        for (uint64_t j = 0; j < old.refcount_block_size; j++) {
            uint64_t rc = qcow2_get_refcount_ro(&old, buf, j);
            int64_t cl = (int64_t)((i << old.refcount_block_bits) + j);
            if (!rc) {
                continue;
            }
            if (rc > new_max) {
                error_setg(errp, "Cannot decrease refcount entry width to "
                           "%i bits: Cluster at offset %#" PRIx64 " has a "
                           "refcount of %" PRIu64, 1 << order,
                           (uint64_t)cl << s->cluster_bits, rc);
                ret = -EINVAL;
                goto fail;
            }
            if (cl >= c.imrt.nb_clusters &&
                imrt_resize(s, &c.imrt, cl + 1) < 0) {
                error_setg(errp, "Out of memory");
                ret = -ENOMEM;
                goto fail;
            }
            qcow2_set_refcount_ro(s, c.imrt.table, cl, rc);
            if (s->amend_progress) {
                rc_sim_set(&sim, cl, true);
            }
        }
    }
    if (s->amend_progress) {
        write_walk = rc_sim_alloc_walks(bs, &sim, old_rt_size,
                                        old_rt_size * old.refcount_block_size);
    }
    ret = rebuild_refcounts(&c);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to write the new refcount "
                         "structure");
        goto fail;
    }
    /* The old structure is unused now: its clusters are freed. */
    for (uint64_t i = 0; i < old_rt_size; i++) {
        uint64_t off = old_rt[i] & QCOW2_REFT_OFFSET_MASK;
        if (off) {
            qcow2_free_clusters(bs, off, s->cluster_size);
        }
    }
    qcow2_free_clusters(bs, old_rt_offset, old_rt_size * sizeof(uint64_t));
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to flush the refcount cache");
    } else if (s->amend_progress) {
        rc_sim_walk_status(bs, old_rt_size, write_walk, write_walk + 1);
    }
    goto out;

fail:
    qcow2_set_refcount_order(s, old.refcount_order);
    table_cache_invalidate(s->refcount_cache);
out:
    g_free(sim.used);
    g_free(sim.cnt);
    g_free(sim.alloc);
    qemu_vfree(buf);
    g_free(old_rt);
    g_free(c.imrt.table);
    return ret;
}

/* ---- the snapshot table (not read at open in check mode) ---- */

static void check_add_result(BdrvCheckResult *out, const BdrvCheckResult *in)
{
    out->corruptions += in->corruptions;
    out->leaks += in->leaks;
    out->check_errors += in->check_errors;
    out->corruptions_fixed += in->corruptions_fixed;
    out->leaks_fixed += in->leaks_fixed;
}

/*
 * Read the snapshot table as QEMU's check does: with -r all, too much
 * extra data is cut and a table grown too big loses its last entries
 * (the header's count is rewritten at once; their clusters then show as
 * leaks); otherwise such a table is an error that stops the check.
 */
static int coroutine_fn check_read_snapshot_table(BlockDriverState *bs,
                                                  BdrvCheckResult *res,
                                                  BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    bool repair = fix & BDRV_FIX_ERRORS;
    int reduced = 0, dropped = 0, ret;
    Error *err = NULL;

    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS && repair) {
        fprintf(stderr, "Discarding %" PRIu32 " overhanging snapshots\n",
                s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        reduced += s->nb_snapshots - QCOW2_MAX_SNAPSHOTS;
        s->nb_snapshots = QCOW2_MAX_SNAPSHOTS;
    }
    ret = qcow2_validate_table(s, s->snapshots_offset, s->nb_snapshots,
                               sizeof(Qcow2DiskSnapshot),
                               sizeof(Qcow2DiskSnapshot) *
                               QCOW2_MAX_SNAPSHOTS, "snapshot table", &err);
    if (ret < 0) {
        res->check_errors++;
        error_report("ERROR %s", error_get_pretty(err));
        error_free(err);
        if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
            fprintf(stderr, "You can force-remove all %" PRIu32
                    " overhanging snapshots with qemu-img check -r all\n",
                    s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        }
        s->snapshots_offset = 0;
        s->nb_snapshots = 0;
        return ret;
    }
    ret = qcow2_do_read_snapshots(bs, repair, &reduced, &dropped, &err);
    if (ret < 0) {
        res->check_errors++;
        error_report("ERROR failed to read the snapshot table: %s",
                     error_get_pretty(err));
        error_print_hint(err);
        error_free(err);
        s->snapshots_offset = 0;
        s->nb_snapshots = 0;
        return ret;
    }
    res->corruptions += reduced + dropped;
    if (reduced) {
        uint32_t nb = cpu_to_be32(s->nb_snapshots);
        ret = bdrv_co_pwrite(bs->file,
                             offsetof(Qcow2DiskHeader, nb_snapshots),
                             sizeof(nb), &nb, 0);
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
        if (ret < 0) {
            res->check_errors++;
            fprintf(stderr, "ERROR failed to update the snapshot count in "
                    "the image header: %s\n", strerror(-ret));
            return ret;
        }
        res->corruptions_fixed += reduced;
        res->corruptions -= reduced;
    }
    for (uint32_t i = 0; s->qcow_version >= 3 && i < s->nb_snapshots; i++) {
        if (s->snapshots[i].extra_data_size < 16) {
            res->corruptions++;
            fprintf(stderr, "%s snapshot table entry %" PRIu32
                    " is incomplete\n", repair ? "Repairing" : "ERROR", i);
        }
    }
    return 0;
}

/* With -r all, what was wrong in the table is fixed by rewriting it. */
static int coroutine_fn check_fix_snapshot_table(BlockDriverState *bs,
                                                 BdrvCheckResult *res,
                                                 BdrvCheckMode fix)
{
    int ret;

    if (!res->corruptions || !(fix & BDRV_FIX_ERRORS)) {
        return 0;
    }
    ret = qcow2_write_snapshots(bs);
    if (ret < 0) {
        res->check_errors++;
        fprintf(stderr, "ERROR failed to update snapshot table: %s\n",
                strerror(-ret));
        return ret;
    }
    res->corruptions_fixed += res->corruptions;
    res->corruptions = 0;
    return 0;
}

/*
 * Check (and with fix, repair) the image. Called with s->lock held and no
 * request in flight. Clears the dirty and corrupt bits when a repair left
 * nothing wrong.
 */
int coroutine_fn qcow2_co_check_locked(BlockDriverState *bs,
                                       BdrvCheckResult *res,
                                       BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    BdrvCheckResult sn_res = { 0 };
    int ret;

    memset(res, 0, sizeof(*res));
    if (!bs->read_only) {
        ret = qcow2_flush_caches(bs);
        if (ret < 0) {
            res->check_errors++;
            return ret;
        }
    }
    if ((s->open_flags & BDRV_O_CHECK) && !s->snapshots) {
        ret = check_read_snapshot_table(bs, &sn_res, fix);
        if (ret < 0) {
            check_add_result(res, &sn_res);
            return ret;
        }
    }
    ret = qcow2_check_refcounts(bs, res, fix);
    if (ret >= 0) {
        ret = check_fix_snapshot_table(bs, &sn_res, fix);
    }
    check_add_result(res, &sn_res);
    if (ret < 0) {
        return ret;
    }
    if (!bs->read_only) {
        ret = qcow2_flush_caches(bs);
        if (ret < 0) {
            return ret;
        }
    }
    if (fix && !bs->read_only && !res->check_errors && !res->corruptions) {
        ret = qcow2_mark_clean(bs);
        if (ret >= 0) {
            ret = qcow2_mark_consistent(bs);
        }
    }
    return ret;
}

int coroutine_fn qcow2_co_check(BlockDriverState *bs, BdrvCheckResult *res,
                                BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    qemu_co_mutex_lock(&s->lock);
    ret = qcow2_co_check_locked(bs, res, fix);
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}
