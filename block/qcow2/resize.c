/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 resize: growing (L1 table first, the new size in the header as the
 * commit point) with every preallocation mode, and shrinking (clusters
 * past the new end discarded, their L2 tables dropped, the file trimmed
 * to its last used cluster, then the new size).
 */
#include "block/qcow2/qcow2.h"

/*
 * Map every cluster of [offset, new_length) to a host cluster without
 * writing data (QEMU's metadata preallocation), then make the data file
 * long enough, with mode for the new part of it.
 */
int coroutine_fn qcow2_preallocate(BlockDriverState *bs, uint64_t offset,
                                   uint64_t new_length, PreallocMode mode,
                                   Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t host = 0, bytes = 0;
    int ret;

    while (offset < new_length) {
        Qcow2Alloc *m;
        bytes = new_length - offset;
        ret = qcow2_alloc_host_offset(bs, offset, &bytes, &host, &m);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Allocating clusters failed");
            return ret;
        }
        if (m) {
            m->prealloc = true;
            ret = qcow2_link_l2(bs, m);
            if (ret < 0) {
                qcow2_alloc_abort(bs, m);
            }
            qcow2_alloc_finish(bs, m);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Mapping clusters failed");
                return ret;
            }
        }
        offset += bytes;
    }
    int64_t file_length = bdrv_getlength(s->data_file);
    if (file_length < 0) {
        error_setg_errno(errp, -file_length, "Could not get file size");
        return file_length;
    }
    uint64_t end = qcow2_start_of_cluster(s, host) +
                   ROUND_UP(qcow2_offset_into_cluster(s, host) + bytes,
                            (uint64_t)s->cluster_size);
    if (s->external_data) {
        end = new_length;
    }
    if (bytes && end > (uint64_t)file_length) {
        if (mode == PREALLOC_MODE_METADATA) {
            mode = PREALLOC_MODE_OFF;
        }
        ret = bdrv_co_truncate(s->data_file, end, false, mode, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * falloc/full without a data file: the new data clusters go, contiguous,
 * after the last used cluster (behind a new refcount table that covers
 * them, as QEMU lays it out), the file grows over them with mode, then the
 * L2 entries are made.
 */
static int coroutine_fn qcow2_prealloc_data(BlockDriverState *bs,
                                            uint64_t old_length,
                                            uint64_t new_length,
                                            PreallocMode mode, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t file_size = bdrv_getlength(bs->file);
    int64_t last, start;
    int ret;

    if (file_size < 0) {
        error_setg_errno(errp, -file_size, "Failed to inquire current file "
                         "length");
        return file_size;
    }
    last = qcow2_get_last_cluster(bs, file_size);
    if (last < 0 && last != -1) {
        error_setg_errno(errp, -last, "Failed to find the last cluster");
        return last;
    }
    uint64_t first_cluster = ROUND_UP(old_length, (uint64_t)s->cluster_size);
    uint64_t nb_data = (ROUND_UP(new_length, (uint64_t)s->cluster_size) -
                        first_cluster) >> s->cluster_bits;
    uint64_t nb_l2 = DIV_ROUND_UP(nb_data, s->l2_size) + 1;
    uint64_t area = last >= 0 ? (uint64_t)last + 1
                              : qcow2_size_to_clusters(s, file_size);
    uint64_t in_cluster = qcow2_offset_into_cluster(s, old_length);

    if (in_cluster) {
        /*
         * The old last cluster is partial: where it has a host cluster
         * (metadata preallocation leaves it a hole), its new part gets
         * host space now too, so that writes there do not grow the file
         * (QEMU moves that cluster to new preallocated space).
         */
        uint64_t bytes = s->cluster_size - in_cluster, host = 0;
        Qcow2SubclusterType type;

        ret = qcow2_get_host_offset(bs, old_length, &bytes, &host, &type);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to preallocate the last "
                             "cluster");
            return ret;
        }
        uint64_t refcount = 0;

        if ((type == QCOW2_SC_NORMAL || type == QCOW2_SC_ZERO_ALLOC) &&
            host && !s->external_data) {
            /* Not a cluster an internal snapshot shares. */
            ret = qcow2_get_refcount(bs, host >> s->cluster_bits, &refcount);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to preallocate the "
                                 "last cluster");
                return ret;
            }
        }
        if (refcount == 1) {
            /* Written zeroes, not a zeroed range: a file system may keep
             * the latter unwritten and split its extents on later writes
             * (more host blocks). */
            uint64_t n = s->cluster_size - in_cluster;
            void *zeroes = qemu_blockalign(n);

            memset(zeroes, 0, n);
            ret = bdrv_co_pwrite(bs->file, host, n, zeroes, 0);
            qemu_vfree(zeroes);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to preallocate the "
                                 "last cluster");
                return ret;
            }
        }
    }
    if (!nb_data) {
        return 0;
    }
    start = qcow2_refcount_area(bs, area, nb_data + nb_l2, true, 0, 0);
    if (start < 0) {
        error_setg_errno(errp, -start, "Failed to resize refcount "
                         "structures");
        return start;
    }
    int64_t got = qcow2_alloc_clusters_at(bs, (uint64_t)start <<
                                          s->cluster_bits, nb_data);
    if (got < 0 || (uint64_t)got != nb_data) {
        if (got > 0) {
            qcow2_free_clusters(bs, (uint64_t)start << s->cluster_bits,
                                (uint64_t)got << s->cluster_bits);
        }
        error_setg_errno(errp, got < 0 ? -got : ENOSPC,
                         "Failed to allocate data clusters");
        return got < 0 ? got : -ENOSPC;
    }
    uint64_t host = (uint64_t)start << s->cluster_bits;
    ret = bdrv_co_truncate(bs->file, host + (nb_data << s->cluster_bits),
                           false, mode, errp);
    if (ret < 0) {
        error_prepend(errp, "Failed to resize underlying file: ");
        qcow2_free_clusters(bs, host, nb_data << s->cluster_bits);
        return ret;
    }
    uint64_t guest = first_cluster;
    while (nb_data) {
        uint64_t n = MIN(nb_data, s->l2_slice_size -
                         ((guest >> s->cluster_bits) &
                          (s->l2_slice_size - 1)));
        Qcow2Alloc m = {
            .guest_offset = guest, .host_offset = host, .nb_clusters = n,
            .keep_old = false, .prealloc = true,
            .cow_end = { n << s->cluster_bits, 0 },
        };
        ret = qcow2_link_l2(bs, &m);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to update L2 tables");
            return ret;
        }
        guest += n << s->cluster_bits;
        host += n << s->cluster_bits;
        nb_data -= n;
    }
    return 0;
}

/* Shrink to new_size: discard, drop L2 tables, trim the file. */
static int coroutine_fn qcow2_shrink(BlockDriverState *bs, uint64_t new_size,
                                     Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t from = ROUND_UP(new_size, (uint64_t)s->cluster_size);
    int ret = 0;

    if (from < s->size) {
        ret = qcow2_cluster_discard(bs, from, s->size - from, true, true);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to discard cropped clusters");
        return ret;
    }
    ret = qcow2_shrink_l1_table(bs, qcow2_size_to_l1(s, new_size));
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to reduce the number of L2 "
                         "tables");
        return ret;
    }
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to discard cropped clusters");
        return ret;
    }
    int64_t file_size = bdrv_getlength(bs->file);
    if (file_size < 0) {
        error_setg_errno(errp, -file_size, "Failed to inquire current file "
                         "length");
        return file_size;
    }
    int64_t last = qcow2_get_last_cluster(bs, file_size);
    if (last < -1) {
        error_setg_errno(errp, -last, "Failed to find the last cluster");
        return last;
    }
    if ((uint64_t)(last + 1) << s->cluster_bits < (uint64_t)file_size) {
        Error *err = NULL;
        bdrv_co_truncate(bs->file, (uint64_t)(last + 1) << s->cluster_bits,
                         false, PREALLOC_MODE_OFF, &err);
        if (err) {
            fprintf(stderr, "%s: warning: Failed to truncate the tail of the "
                    "image: %s\n", error_get_progname(),
                    error_get_pretty(err));
            error_free(err);
        }
    }
    return 0;
}

/* Write the new virtual size into the header, durably (commit point). */
static int coroutine_fn qcow2_write_size(BlockDriverState *bs, uint64_t size)
{
    uint64_t be = cpu_to_be64(size);
    int ret = bdrv_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, size),
                             sizeof(be), &be, 0);
    return ret < 0 ? ret : bdrv_co_flush(bs->file);
}

static int coroutine_fn qcow2_grow(BlockDriverState *bs, uint64_t old,
                                   uint64_t new, PreallocMode prealloc,
                                   bool exact, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    ret = qcow2_grow_l1_table(bs, qcow2_size_to_l1(s, new), true);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to grow the L1 table");
        return ret;
    }
    if (qcow2_data_file_is_raw(s) && prealloc == PREALLOC_MODE_OFF) {
        /* The raw data file needs a 1:1 mapping of the new area too. */
        prealloc = PREALLOC_MODE_METADATA;
    }
    switch (prealloc) {
    case PREALLOC_MODE_OFF:
        if (s->external_data) {
            ret = bdrv_co_truncate(s->data_file, new, exact, prealloc, errp);
        }
        break;
    case PREALLOC_MODE_METADATA:
        ret = qcow2_preallocate(bs, old, new, prealloc, errp);
        break;
    case PREALLOC_MODE_FALLOC:
    case PREALLOC_MODE_FULL:
        if (s->external_data) {
            ret = qcow2_preallocate(bs, old, new, prealloc, errp);
        } else {
            ret = qcow2_prealloc_data(bs, old, new, prealloc, errp);
        }
        break;
    }
    if (ret >= 0 && prealloc != PREALLOC_MODE_OFF) {
        ret = qcow2_flush_caches(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to flush the preallocated "
                             "area to disk");
        }
    }
    return ret;
}

int coroutine_fn qcow2_co_truncate(BlockDriverState *bs, int64_t offset,
                                   bool exact, PreallocMode prealloc,
                                   Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old = s->size;
    int ret;

    if (s->stopped) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    if (prealloc > PREALLOC_MODE_FULL) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   qemu_prealloc_name(prealloc));
        return -ENOTSUP;
    }
    if (offset % BDRV_SECTOR_SIZE) {
        error_setg(errp, "The new size must be a multiple of 512");
        return -EINVAL;
    }
    if ((uint64_t)offset > INT64_MAX ||
        qcow2_size_to_l1(s, offset) > QCOW2_MAX_L1_SIZE / sizeof(uint64_t)) {
        error_setg(errp, "The image size is too large for file format "
                   "'qcow2' (try using a larger cluster size)");
        return -EFBIG;
    }
    /*
     * As QEMU's layer: where a longer backing file would show through the
     * new area, that area is zeroed (v2 images have no zero flag: QEMU
     * fails there; we fail before changing anything).
     */
    bool zero_new = false;
    if ((uint64_t)offset > old && bs->backing) {
        int64_t backing_len = bdrv_getlength(bs->backing);
        zero_new = backing_len < 0 || (uint64_t)backing_len > old;
    }
    if (zero_new && s->qcow_version < 3) {
        error_setg_errno(errp, ENOTSUP, "Failed to zero out new clusters");
        return -ENOTSUP;
    }
    qemu_co_mutex_lock(&s->lock);
    if (s->nb_snapshots && s->qcow_version < 3) {
        error_setg(errp, "Can't resize a v2 image which has snapshots");
        ret = -ENOTSUP;
        goto out;
    }
    if ((uint64_t)offset != old) {
        /* See bitmap.c for which bitmaps prevent a resize (as QEMU). */
        ret = qcow2_bitmaps_resize_check(bs, offset, errp);
        if (ret < 0) {
            goto out;
        }
    }
    if ((uint64_t)offset < old) {
        if (prealloc != PREALLOC_MODE_OFF) {
            error_setg(errp, "Preallocation can't be used for shrinking an "
                       "image");
            ret = -EINVAL;
            goto out;
        }
        ret = qcow2_shrink(bs, offset, errp);
    } else {
        ret = qcow2_grow(bs, old, offset, prealloc, exact, errp);
    }
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_write_size(bs, offset);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image size");
        goto out;
    }
    s->size = offset;
    s->l1_vm_state_index = qcow2_size_to_l1(s, offset);
    qcow2_resize_caches(bs);
    qemu_co_mutex_unlock(&s->lock);
    if (zero_new) {
        /* The layer excludes every request past the old end meanwhile. */
        ret = qcow2_co_pwrite_zeroes(bs, old, offset - old, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to zero out new clusters");
        }
    }
    /* After the zeroing: as QEMU, the new bits are clear. */
    qcow2_bitmaps_resized(s);
    return ret;
out:
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- emptying (qemu-img commit) ---- */

/*
 * Reset the image to header, refcount table, one refcount block and an
 * empty L1 table (QEMU's fast path). The dirty bit covers the window in
 * which the refcounts are wrong; the file is trimmed afterwards.
 */
static int coroutine_fn qcow2_make_completely_empty(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t l1_clusters = DIV_ROUND_UP((uint64_t)s->l1_size * 8, cs);
    int64_t off;
    int ret;

    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        return ret;
    }
    table_cache_invalidate(s->l2_cache);
    table_cache_invalidate(s->refcount_cache);
    ret = qcow2_mark_dirty(bs);
    if (ret < 0) {
        return ret;
    }
    /* Zero the L1 table and the clusters the new structures take (the
     * blkdebug events are QEMU's, at the same steps). */
    BLKDBG_EVENT(bs->file, "l1_update");
    ret = bdrv_co_pwrite_zeroes(bs->file, s->l1_table_offset,
                                l1_clusters * cs, 0);
    if (ret < 0) {
        goto broken;
    }
    memset(s->l1_table, 0, (size_t)s->l1_size * 8);
    BLKDBG_EVENT(bs->file, "empty_image_prepare");
    ret = bdrv_co_pwrite_zeroes(bs->file, cs, (2 + l1_clusters) * cs, 0);
    if (ret < 0) {
        goto broken;
    }
    struct QEMU_PACKED {
        uint64_t l1_offset;
        uint64_t rt_offset;
        uint32_t rt_clusters;
    } hdr = { cpu_to_be64(3 * cs), cpu_to_be64(cs), cpu_to_be32(1) };
    BLKDBG_EVENT(bs->file, "l1_update");
    BLKDBG_EVENT(bs->file, "reftable_update");
    ret = bdrv_co_pwrite(bs->file, offsetof(Qcow2DiskHeader,
                                            l1_table_offset),
                         sizeof(hdr), &hdr, 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        goto broken;
    }
    s->l1_table_offset = 3 * cs;
    g_free(s->refcount_table);
    s->refcount_table = g_new0(uint64_t, cs / 8);
    s->refcount_table_offset = cs;
    s->refcount_table_size = cs / 8;
    s->refcount_table[0] = 2 * cs;
    g_array_set_size(s->pending_frees, 0);
    g_array_set_size(s->frees_written, 0);
    s->frees_checked_pending = s->frees_checked_written = 0;
    qcow2_invalidate_meta_clusters(s);
    BLKDBG_EVENT(bs->file, "refblock_alloc");
    ret = qcow2_write_reftable_entry(bs, 0, "reftable_update");
    if (ret < 0) {
        goto broken;
    }
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    off = qcow2_alloc_clusters(bs, 3 * cs + (uint64_t)s->l1_size * 8);
    if (off != 0) {
        ret = off < 0 ? off : -EIO;
        goto broken;
    }
    ret = qcow2_mark_clean(bs);
    if (ret >= 0) {
        ret = bdrv_co_truncate(bs->file, (3 + l1_clusters) * cs, false,
                               PREALLOC_MODE_OFF, NULL);
    }
    return ret;

broken:
    /* The refcounts on disk no longer describe the image: stop. */
    s->stopped = true;
    return ret;
}

int coroutine_fn qcow2_make_empty(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1_clusters = DIV_ROUND_UP((uint64_t)s->l1_size * 8,
                                        (uint64_t)s->cluster_size);
    int ret;

    if (s->stopped) {
        return -ENOMEDIUM;
    }
    qemu_co_mutex_lock(&s->lock);
    if (s->qcow_version >= 3 && !s->nb_snapshots && !s->nb_bitmaps &&
        s->crypt_method != QCOW2_CRYPT_LUKS &&
        3 + l1_clusters <= s->refcount_block_size && !s->external_data) {
        ret = qcow2_make_completely_empty(bs);
    } else {
        /* Everything discarded, cluster by cluster. */
        ret = qcow2_cluster_discard(bs, 0, ROUND_UP(s->size,
                                                    (uint64_t)s->cluster_size),
                                    true, s->discard_snapshot);
        if (ret >= 0) {
            ret = qcow2_flush_caches(bs);
        }
    }
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}
