/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 internal snapshots: the snapshot table (read, bounded, rewritten
 * to new clusters with the header as commit point), and create, apply,
 * delete and list. A snapshot is a copy of the L1 table; every cluster it
 * reaches holds one more reference, so writes copy instead of overwriting.
 *
 * Crash safety: references are added and made durable before the table
 * that needs them is committed, and dropped only after the commit that
 * stopped naming them. A crash in between leaks clusters.
 */
#include "block/qcow2/qcow2.h"
#include "util/cutils.h"

#define QCOW2_EXTRA_KNOWN   sizeof(Qcow2DiskSnapshotExtra)

void qcow2_free_snapshots(BDRVQcow2State *s)
{
    for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
        g_free(s->snapshots[i].id_str);
        g_free(s->snapshots[i].name);
        g_free(s->snapshots[i].unknown_extra);
    }
    g_free(s->snapshots);
    s->snapshots = NULL;
}

/* Read len bytes at *offset into a new NUL-terminated string. */
static char *coroutine_fn qcow2_read_sn_string(BlockDriverState *bs,
                                               uint64_t *offset, uint32_t len,
                                               int *ret)
{
    char *str = g_malloc0((size_t)len + 1);

    *ret = bdrv_co_pread(bs->file, *offset, len, str, 0);
    *offset += len;
    return str;
}

/*
 * One table entry at *offset (8-byte aligned already). With repair (check
 * -r all), too much extra data is cut to QEMU's limit (*dropped counts
 * it) instead of refusing the table.
 */
static int coroutine_fn qcow2_read_one_snapshot(BlockDriverState *bs,
                                                uint64_t *offset,
                                                Qcow2Snapshot *sn, int index,
                                                bool repair, int *dropped,
                                                uint64_t *entry_len,
                                                Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DiskSnapshot h;
    Qcow2DiskSnapshotExtra extra = { 0 };
    bool truncate = false;
    int ret;

    ret = bdrv_co_pread(bs->file, *offset, sizeof(h), &h, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read snapshot table");
        return ret;
    }
    *offset += sizeof(h);
    sn->l1_table_offset = be64_to_cpu(h.l1_table_offset);
    sn->l1_size = be32_to_cpu(h.l1_size);
    sn->vm_state_size = be32_to_cpu(h.vm_state_size);
    sn->date_sec = be32_to_cpu(h.date_sec);
    sn->date_nsec = be32_to_cpu(h.date_nsec);
    sn->vm_clock_nsec = be64_to_cpu(h.vm_clock_nsec);
    sn->extra_data_size = be32_to_cpu(h.extra_data_size);
    if (sn->extra_data_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
        if (!repair) {
            /* QEMU's message and its hint line */
            error_setg(errp, "Too much extra metadata in snapshot table "
                       "entry %d\nYou can force-remove this extra metadata "
                       "with qemu-img check -r all", index);
            return -EFBIG;
        }
        fprintf(stderr, "Discarding too much extra metadata in snapshot "
                "table entry %d (%" PRIu32 " > %d)\n", index,
                sn->extra_data_size, QCOW2_MAX_SNAPSHOT_EXTRA);
        (*dropped)++;
        truncate = true;
    }
    uint32_t known = MIN(sn->extra_data_size, (uint32_t)QCOW2_EXTRA_KNOWN);
    if (known) {
        ret = bdrv_co_pread(bs->file, *offset, known, &extra, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read snapshot table");
            return ret;
        }
    }
    *offset += known;
    if (sn->extra_data_size > QCOW2_EXTRA_KNOWN) {
        /* The entry goes on after all of its extra data, even cut. */
        uint64_t extra_end = *offset + sn->extra_data_size -
                             QCOW2_EXTRA_KNOWN;
        if (truncate) {
            sn->extra_data_size = QCOW2_MAX_SNAPSHOT_EXTRA;
        }
        sn->unknown_extra_size = sn->extra_data_size - QCOW2_EXTRA_KNOWN;
        sn->unknown_extra = g_malloc(sn->unknown_extra_size);
        ret = bdrv_co_pread(bs->file, *offset, sn->unknown_extra_size,
                            sn->unknown_extra, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read snapshot table");
            return ret;
        }
        *offset = extra_end;
    }
    if (known >= 8) {
        sn->vm_state_size = be64_to_cpu(extra.vm_state_size_large);
    }
    sn->disk_size = known >= 16 ? be64_to_cpu(extra.disk_size) : s->size;
    sn->icount = known >= 24 ? be64_to_cpu(extra.icount) : UINT64_MAX;
    sn->id_str = qcow2_read_sn_string(bs, offset, be16_to_cpu(h.id_str_size),
                                      &ret);
    if (ret >= 0) {
        sn->name = qcow2_read_sn_string(bs, offset,
                                        be16_to_cpu(h.name_size), &ret);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read snapshot table");
        return ret;
    }
    /* (the extra data counted as kept, where it was cut) */
    *entry_len = sizeof(h) + sn->extra_data_size +
                 be16_to_cpu(h.id_str_size) + be16_to_cpu(h.name_size);
    return 0;
}

/*
 * Read and bound the snapshot table named by s->snapshots_offset and
 * s->nb_snapshots. With repair, a table grown too big loses its last
 * entries (*reduced counts them; their clusters leak, for check to
 * repair) instead of being refused.
 */
int coroutine_fn qcow2_do_read_snapshots(BlockDriverState *bs, bool repair,
                                         int *reduced, int *dropped,
                                         Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t offset = s->snapshots_offset, table_len = 0;
    int ret;

    s->snapshots_size = 0;
    if (!s->nb_snapshots) {
        s->snapshots = NULL;
        return 0;
    }
    s->snapshots = g_new0(Qcow2Snapshot, s->nb_snapshots);
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        uint64_t entry_start = offset, entry_len;
        offset = ROUND_UP(offset, 8);
        table_len = ROUND_UP(table_len, 8);
        ret = qcow2_read_one_snapshot(bs, &offset, sn, i, repair, dropped,
                                      &entry_len, errp);
        if (ret < 0) {
            s->nb_snapshots = i + 1;
            goto fail;
        }
        table_len += entry_len;
        if (table_len <= QCOW2_MAX_SNAPSHOTS_SIZE &&
            offset - s->snapshots_offset <= INT_MAX) {
            continue;
        }
        if (!repair) {
            error_setg(errp, "Snapshot table is too big");
            error_append_hint(errp, "You can force-remove all %" PRIu32
                              " overhanging snapshots with qemu-img check "
                              "-r all\n", s->nb_snapshots - i);
            s->nb_snapshots = i + 1;
            ret = -EFBIG;
            goto fail;
        }
        fprintf(stderr, "Discarding %" PRIu32 " overhanging snapshots "
                "(snapshot table is too big)\n", s->nb_snapshots - i);
        *reduced += s->nb_snapshots - i;
        g_free(sn->id_str);
        g_free(sn->name);
        g_free(sn->unknown_extra);
        memset(sn, 0, sizeof(*sn));
        s->nb_snapshots = i;
        offset = entry_start;
        break;
    }
    s->snapshots_size = offset - s->snapshots_offset;
    return 0;

fail:
    qcow2_free_snapshots(s);
    s->nb_snapshots = 0;
    return ret;
}

int coroutine_fn qcow2_read_snapshots(BlockDriverState *bs, Error **errp)
{
    int reduced = 0, dropped = 0;

    return qcow2_do_read_snapshots(bs, false, &reduced, &dropped, errp);
}

/* ---- writing the table ---- */

static uint64_t qcow2_sn_extra_size(const Qcow2Snapshot *sn)
{
    return QCOW2_EXTRA_KNOWN + sn->unknown_extra_size;
}

static size_t qcow2_serialize_snapshots(BDRVQcow2State *s, uint8_t *buf)
{
    size_t off = 0;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        size_t id_len = strlen(sn->id_str), name_len = strlen(sn->name);
        off = ROUND_UP(off, 8);
        if (buf) {
            Qcow2DiskSnapshot h = {
                .l1_table_offset = cpu_to_be64(sn->l1_table_offset),
                .l1_size = cpu_to_be32(sn->l1_size),
                .id_str_size = cpu_to_be16(id_len),
                .name_size = cpu_to_be16(name_len),
                .date_sec = cpu_to_be32(sn->date_sec),
                .date_nsec = cpu_to_be32(sn->date_nsec),
                .vm_clock_nsec = cpu_to_be64(sn->vm_clock_nsec),
                .vm_state_size = cpu_to_be32((uint32_t)sn->vm_state_size),
                .extra_data_size = cpu_to_be32(qcow2_sn_extra_size(sn)),
            };
            Qcow2DiskSnapshotExtra x = {
                .vm_state_size_large = cpu_to_be64(sn->vm_state_size),
                .disk_size = cpu_to_be64(sn->disk_size),
                .icount = cpu_to_be64(sn->icount),
            };
            memcpy(buf + off, &h, sizeof(h));
            memcpy(buf + off + sizeof(h), &x, sizeof(x));
            if (sn->unknown_extra_size) {
                memcpy(buf + off + sizeof(h) + sizeof(x), sn->unknown_extra,
                       sn->unknown_extra_size);
            }
            memcpy(buf + off + sizeof(h) + qcow2_sn_extra_size(sn),
                   sn->id_str, id_len);
            memcpy(buf + off + sizeof(h) + qcow2_sn_extra_size(sn) + id_len,
                   sn->name, name_len);
        }
        off += sizeof(Qcow2DiskSnapshot) + qcow2_sn_extra_size(sn) +
               id_len + name_len;
    }
    return off;
}

/*
 * Write the in-memory table to new clusters, then switch the header to it
 * (the commit point), then free the old table.
 */
int coroutine_fn qcow2_write_snapshots(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t size = qcow2_serialize_snapshots(s, NULL);
    int64_t offset = 0;
    uint8_t *buf = NULL;
    int ret;

    if (size > QCOW2_MAX_SNAPSHOTS_SIZE) {
        return -EFBIG;
    }
    if (size) {
        offset = qcow2_alloc_clusters(bs, size);
        if (offset < 0) {
            return offset;
        }
        /* Its refcount durable before anything names it. */
        ret = qcow2_flush_caches(bs);
        if (ret >= 0) {
            ret = qcow2_pre_write_overlap_check(bs, 0, offset, size);
        }
        if (ret >= 0) {
            buf = g_malloc0(size);
            qcow2_serialize_snapshots(s, buf);
            BLKDBG_EVENT(bs->file, "snapshot_table_write");
            ret = bdrv_co_pwrite(bs->file, offset, size, buf, 0);
            g_free(buf);
        }
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file);
        }
        if (ret < 0) {
            qcow2_free_clusters(bs, offset, size);
            return ret;
        }
    }
    struct QEMU_PACKED {
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
    } hdr = { cpu_to_be32(s->nb_snapshots), cpu_to_be64(offset) };
    ret = bdrv_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, nb_snapshots),
                         sizeof(hdr), &hdr, 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        if (size) {
            qcow2_free_clusters(bs, offset, size);
        }
        return ret;
    }
    if (s->snapshots_size) {
        s->free_discard = s->discard_snapshot;
        qcow2_free_clusters(bs, s->snapshots_offset, s->snapshots_size);
        s->free_discard = false;
    }
    s->snapshots_offset = offset;
    s->snapshots_size = size;
    return 0;
}

/* ---- reference counts of a whole tree ---- */

static int coroutine_fn qcow2_read_l1_table(BlockDriverState *bs,
                                            uint64_t offset, uint32_t size,
                                            uint64_t **table)
{
    BDRVQcow2State *s = bs->opaque;
    size_t bytes = (size_t)size * sizeof(uint64_t);
    int ret;

    if (qcow2_offset_into_cluster(s, offset) ||
        bytes > QCOW2_MAX_L1_SIZE || offset > QCOW2_MAX_HOST_OFFSET) {
        return -EINVAL;
    }
    *table = g_malloc0(MAX(bytes, 8));
    ret = bdrv_co_pread(bs->file, offset, bytes, *table, 0);
    if (ret < 0) {
        g_free(*table);
        *table = NULL;
        return ret;
    }
    for (uint32_t i = 0; i < size; i++) {
        (*table)[i] = be64_to_cpu((*table)[i]);
    }
    return 0;
}

/* Refcount of the cluster at offset (helper for the COPIED flags). */
static int coroutine_fn qcow2_refcount_at(BlockDriverState *bs,
                                          uint64_t offset, uint64_t *rc)
{
    BDRVQcow2State *s = bs->opaque;
    return qcow2_get_refcount(bs, offset >> s->cluster_bits, rc);
}

/* Add addend to the data clusters of one L2 table; with fix_copied, set
 * each entry's COPIED flag from its refcount. */
static int coroutine_fn qcow2_l2_refcount(BlockDriverState *bs,
                                          uint64_t l2_offset, int addend,
                                          bool fix_copied)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    for (uint32_t off = 0; off < s->cluster_size; off += s->l2_slice_bytes) {
        void *page;
        bool dirty = false;
        ret = table_cache_get(s->l2_cache, l2_offset + off, &page);
        if (ret < 0) {
            return ret;
        }
        for (uint32_t i = 0; i < s->l2_slice_size && ret >= 0; i++) {
            uint64_t e = qcow2_l2_entry(s, page, i);
            uint64_t host, bytes, rc = 0;
            if (e & QCOW2_OFLAG_COMPRESSED) {
                qcow2_parse_compressed(s, e, &host, &bytes);
                if (addend) {
                    ret = qcow2_update_refcount(bs, host, bytes, addend);
                }
                continue;
            }
            host = e & QCOW2_L2E_OFFSET_MASK;
            if (!host || s->external_data) {
                continue;
            }
            if (qcow2_offset_into_cluster(s, host)) {
                ret = -EIO;
                break;
            }
            if (addend) {
                ret = qcow2_update_refcount(bs, host, s->cluster_size,
                                            addend);
            }
            if (ret >= 0 && fix_copied) {
                ret = qcow2_refcount_at(bs, host, &rc);
                uint64_t ne = rc == 1 ? e | QCOW2_OFLAG_COPIED
                                      : e & ~QCOW2_OFLAG_COPIED;
                if (ret >= 0 && ne != e) {
                    qcow2_set_l2_entry(s, page, i, ne);
                    dirty = true;
                }
            }
        }
        if (dirty) {
            table_cache_mark_dirty(s->l2_cache, page);
        }
        table_cache_put(s->l2_cache, &page);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Add addend (+1, -1, or 0) to every L2 table and data cluster reachable
 * from l1 (size entries, CPU order). The COPIED flags of the entries of
 * every table that stays in use are set from the resulting refcounts (a
 * table about to be freed is not touched: its cluster may be reused).
 * With active, the flags of l1 are updated too (in memory only).
 */
static int coroutine_fn qcow2_tree_refcount(BlockDriverState *bs,
                                            uint64_t *l1, uint32_t size,
                                            int addend, bool active)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = 0;

    for (uint32_t i = 0; i < size && ret >= 0; i++) {
        uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint64_t rc;
        if (!l2) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, l2)) {
            return -EIO;
        }
        ret = qcow2_refcount_at(bs, l2, &rc);
        if (ret < 0) {
            return ret;
        }
        /* Data first: a table freed below must not be written after; and
         * (as QEMU) a data refcount that would overflow stops the walk
         * before the table's own refcount changed. */
        bool survives = addend >= 0 || rc > 1;
        ret = qcow2_l2_refcount(bs, l2, addend,
                                survives && (addend || rc == 1));
        if (ret >= 0 && addend != 0) {
            ret = qcow2_update_refcount(bs, l2, s->cluster_size, addend);
            rc += addend;
        }
        if (active) {
            l1[i] = rc == 1 ? l1[i] | QCOW2_OFLAG_COPIED
                            : l1[i] & ~QCOW2_OFLAG_COPIED;
        }
    }
    return ret;
}

/* Write the whole active L1 table (after the COPIED flags changed). */
static int coroutine_fn qcow2_write_active_l1(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    size_t bytes = (size_t)s->l1_size * sizeof(uint64_t);
    uint64_t *buf;
    int ret;

    if (!bytes) {
        return 0;
    }
    buf = g_malloc(bytes);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        buf[i] = cpu_to_be64(s->l1_table[i]);
    }
    ret = bdrv_co_pwrite(bs->file, s->l1_table_offset, bytes, buf, 0);
    g_free(buf);
    return ret;
}

/* Active tree: refcounts += addend, flags recomputed, L1 written. */
int coroutine_fn qcow2_update_snapshot_refcount(BlockDriverState *bs,
                                                uint64_t l1_offset,
                                                uint32_t l1_size, int addend)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *l1;
    int ret;

    if (l1_offset == s->l1_table_offset) {
        ret = qcow2_tree_refcount(bs, s->l1_table, s->l1_size, addend, true);
        if (ret >= 0) {
            ret = qcow2_write_active_l1(bs);
        }
        qcow2_invalidate_meta_clusters(s);
        return ret;
    }
    ret = qcow2_read_l1_table(bs, l1_offset, l1_size, &l1);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_tree_refcount(bs, l1, l1_size, addend, false);
    g_free(l1);
    return ret;
}

/* ---- lookups ---- */

static int qcow2_find_snapshot_by_id(BDRVQcow2State *s, const char *id)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].id_str, id)) {
            return i;
        }
    }
    return -1;
}

static int qcow2_find_snapshot_by_id_or_name(BDRVQcow2State *s,
                                             const char *what)
{
    int i = qcow2_find_snapshot_by_id(s, what);

    if (i >= 0) {
        return i;
    }
    for (uint32_t j = 0; j < s->nb_snapshots; j++) {
        if (!strcmp(s->snapshots[j].name, what)) {
            return j;
        }
    }
    return -1;
}

/* The smallest unused numeric id above every numeric id in use. */
static void qcow2_new_snapshot_id(BDRVQcow2State *s, char *id, size_t len)
{
    unsigned long max = 0;

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long v = strtoul(s->snapshots[i].id_str, NULL, 10);
        max = MAX(max, v);
    }
    snprintf(id, len, "%lu", max + 1);
}

/*
 * A snapshot's references changed, with result ret: unless that failed,
 * make the change durable, then recompute the active tree's COPIED flags
 * (addend 0) and make those durable too.
 */
static int coroutine_fn qcow2_snapshot_settle(BlockDriverState *bs, int ret)
{
    BDRVQcow2State *s = bs->opaque;

    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    if (ret >= 0) {
        ret = qcow2_update_snapshot_refcount(bs, s->l1_table_offset,
                                             s->l1_size, 0);
    }
    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    return ret;
}

/* ---- create ---- */

int coroutine_fn qcow2_snapshot_create(BlockDriverState *bs,
                                       QEMUSnapshotInfo *info, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Snapshot sn = { 0 };
    uint64_t *l1_copy = NULL;
    int64_t l1_offset;
    int ret;

    if (qcow2_has_data_file(s)) {
        return -ENOTSUP;
    }
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "Maximum number of snapshots reached");
        return -EFBIG;
    }
    qemu_co_mutex_lock(&s->lock);
    if (!info->id_str[0]) {
        qcow2_new_snapshot_id(s, info->id_str, sizeof(info->id_str));
    }
    if (qcow2_find_snapshot_by_id(s, info->id_str) >= 0) {
        ret = -EEXIST;
        goto out;
    }
    sn.id_str = g_strdup(info->id_str);
    sn.name = g_strdup(info->name);
    sn.vm_state_size = info->vm_state_size;
    sn.date_sec = info->date_sec;
    sn.date_nsec = info->date_nsec;
    sn.vm_clock_nsec = info->vm_clock_nsec;
    sn.icount = info->icount;
    sn.disk_size = s->size;
    sn.l1_size = s->l1_size;
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        goto out;
    }
    /* 1. A copy of the L1 table. */
    l1_offset = qcow2_alloc_clusters(bs, (uint64_t)s->l1_size * 8);
    if (l1_offset < 0) {
        ret = l1_offset;
        goto out;
    }
    sn.l1_table_offset = l1_offset;
    l1_copy = g_new0(uint64_t, MAX(s->l1_size, 1));
    for (uint32_t i = 0; i < s->l1_size; i++) {
        l1_copy[i] = cpu_to_be64(s->l1_table[i]);
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, l1_offset,
                                        (uint64_t)s->l1_size * 8);
    if (ret >= 0 && s->l1_size) {
        ret = bdrv_co_pwrite(bs->file, l1_offset, (uint64_t)s->l1_size * 8,
                             l1_copy, 0);
    }
    /* 2. One more reference for everything it reaches, durably. */
    if (ret >= 0) {
        ret = qcow2_update_snapshot_refcount(bs, s->l1_table_offset,
                                             s->l1_size, 1);
    }
    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    if (ret < 0) {
        goto out;
    }
    /* 3. The table with the new entry: commit. */
    s->snapshots = g_renew(Qcow2Snapshot, s->snapshots, s->nb_snapshots + 1);
    s->snapshots[s->nb_snapshots++] = sn;
    ret = qcow2_write_snapshots(bs);
    if (ret < 0) {
        s->nb_snapshots--;
        /* The references added above leak (as after a crash). */
        goto out;
    }
    memset(&sn, 0, sizeof(sn));
out:
    g_free(sn.id_str);
    g_free(sn.name);
    g_free(l1_copy);
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- apply ---- */

static int coroutine_fn qcow2_snapshot_goto_locked(BlockDriverState *bs,
                                                   Qcow2Snapshot *sn,
                                                   Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *new_l1 = NULL, *old_l1 = NULL;
    uint32_t old_size;
    int ret;

    Error *local_err = NULL;

    ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size,
                               sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                               "Snapshot L1 table", &local_err);
    if (ret < 0) {
        /* Printed here, the caller says "Failed to load snapshot" (as
         * QEMU, whose driver callback has no error object). */
        error_report("%s", error_get_pretty(local_err));
        error_free(local_err);
        return ret;
    }
    if (sn->disk_size > INT64_MAX ||
        qcow2_size_to_l1(s, sn->disk_size) > sn->l1_size) {
        error_setg(errp, "Snapshot L1 table is too small");
        return -EINVAL;
    }
    ret = qcow2_flush_caches(bs);
    if (ret >= 0) {
        ret = qcow2_grow_l1_table(bs, sn->l1_size, false);
    }
    if (ret < 0) {
        return ret;
    }
    /* 1. One more reference for everything the snapshot reaches. */
    ret = qcow2_read_l1_table(bs, sn->l1_table_offset, sn->l1_size, &new_l1);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_update_snapshot_refcount(bs, sn->l1_table_offset,
                                         sn->l1_size, 1);
    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    if (ret < 0) {
        goto out;
    }
    /* 2. Commit: the active L1 takes the snapshot's entries (no COPIED
     * flags yet: writes copy until the flags are recomputed). */
    old_size = s->l1_size;
    old_l1 = g_memdup2(s->l1_table, (size_t)old_size * sizeof(uint64_t) + 8);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        s->l1_table[i] = i < sn->l1_size
                         ? new_l1[i] & ~QCOW2_OFLAG_COPIED : 0;
    }
    qcow2_invalidate_meta_clusters(s);
    ret = qcow2_write_active_l1(bs);
    if (ret >= 0 && sn->disk_size != s->size) {
        uint64_t size = cpu_to_be64(sn->disk_size);
        ret = bdrv_co_pwrite(bs->file, offsetof(Qcow2DiskHeader, size),
                             sizeof(size), &size, 0);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        memcpy(s->l1_table, old_l1, (size_t)old_size * sizeof(uint64_t));
        qcow2_invalidate_meta_clusters(s);
        goto out;
    }
    s->size = sn->disk_size;
    s->l1_vm_state_index = qcow2_size_to_l1(s, s->size);
    /* 3. The old active tree loses its reference, 4. flags recomputed. */
    s->free_discard = s->discard_snapshot;
    ret = qcow2_tree_refcount(bs, old_l1, old_size, -1, false);
    s->free_discard = false;
    ret = qcow2_snapshot_settle(bs, ret);
out:
    g_free(new_l1);
    g_free(old_l1);
    return ret;
}

int coroutine_fn qcow2_snapshot_goto(BlockDriverState *bs,
                                     const char *snapshot_id, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int i, ret;

    qemu_co_mutex_lock(&s->lock);
    i = qcow2_find_snapshot_by_id_or_name(s, snapshot_id);
    if (i < 0) {
        ret = -ENOENT;
    } else {
        ret = 0;
        if (s->snapshots[i].disk_size != s->size) {
            /* As QEMU's revert, which resizes the image. */
            ret = qcow2_bitmaps_resize_check(bs, s->snapshots[i].disk_size,
                                             errp);
        }
        if (ret >= 0) {
            ret = qcow2_snapshot_goto_locked(bs, &s->snapshots[i], errp);
        }
        qcow2_bitmaps_resized(s);
        /* Every guest byte may have changed (QEMU's bitmaps miss it). */
        qcow2_bitmaps_mark(s, 0, s->size);
    }
    qemu_co_mutex_unlock(&s->lock);
    if (ret >= 0) {
        bdrv_refresh_total_bytes(bs);
    }
    return ret;
}

/* ---- read a snapshot without applying it (qemu-img convert -l) ---- */

int coroutine_fn qcow2_snapshot_load_tmp(BlockDriverState *bs,
                                         const char *id, const char *name,
                                         Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Snapshot *sn = NULL;
    uint64_t *l1 = NULL;
    int ret;

    qemu_co_mutex_lock(&s->lock);
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if ((!id || !strcmp(s->snapshots[i].id_str, id)) &&
            (!name || !strcmp(s->snapshots[i].name, name)) && (id || name)) {
            sn = &s->snapshots[i];
            break;
        }
    }
    if (!sn) {
        error_setg(errp, "Can't find snapshot");
        ret = -ENOENT;
        goto out;
    }
    ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size,
                               sizeof(uint64_t), QCOW2_MAX_L1_SIZE,
                               "Snapshot L1 table", errp);
    if (ret < 0) {
        goto out;
    }
    if (sn->disk_size > INT64_MAX ||
        qcow2_size_to_l1(s, sn->disk_size) > sn->l1_size) {
        error_setg(errp, "Snapshot L1 table is too small");
        ret = -EINVAL;
        goto out;
    }
    ret = qcow2_read_l1_table(bs, sn->l1_table_offset, sn->l1_size, &l1);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read the snapshot's L1 "
                         "table");
        goto out;
    }
    /* Read-only: the node reads the snapshot's tree from now on. */
    qemu_vfree(s->l1_table);
    s->l1_table = qemu_blockalign(ROUND_UP(MAX((size_t)sn->l1_size * 8, 8),
                                           512));
    memset(s->l1_table, 0, ROUND_UP(MAX((size_t)sn->l1_size * 8, 8), 512));
    memcpy(s->l1_table, l1, (size_t)sn->l1_size * 8);
    s->l1_size = sn->l1_size;
    s->l1_table_offset = sn->l1_table_offset;
    s->size = sn->disk_size;
    s->l1_vm_state_index = qcow2_size_to_l1(s, s->size);
    qcow2_invalidate_meta_clusters(s);
    ret = 0;
out:
    g_free(l1);
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- delete ---- */

int coroutine_fn qcow2_snapshot_delete(BlockDriverState *bs,
                                       const char *snapshot_id,
                                       const char *name, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Snapshot sn;
    int i = -1, ret;

    qemu_co_mutex_lock(&s->lock);
    for (uint32_t j = 0; j < s->nb_snapshots; j++) {
        if ((!snapshot_id || !strcmp(s->snapshots[j].id_str, snapshot_id)) &&
            (!name || !strcmp(s->snapshots[j].name, name))) {
            i = j;
            break;
        }
    }
    if (i < 0 || (!snapshot_id && !name)) {
        error_setg(errp, "Can't find the snapshot");
        ret = -ENOENT;
        goto out;
    }
    ret = qcow2_validate_table(s, s->snapshots[i].l1_table_offset,
                               s->snapshots[i].l1_size, sizeof(uint64_t),
                               QCOW2_MAX_L1_SIZE, "Snapshot L1 table", errp);
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_flush_caches(bs);
    if (ret < 0) {
        goto out;
    }
    /* 1. Commit: the table without the snapshot. */
    sn = s->snapshots[i];
    memmove(&s->snapshots[i], &s->snapshots[i + 1],
            (s->nb_snapshots - i - 1) * sizeof(sn));
    s->nb_snapshots--;
    ret = qcow2_write_snapshots(bs);
    if (ret < 0) {
        memmove(&s->snapshots[i + 1], &s->snapshots[i],
                (s->nb_snapshots - i) * sizeof(sn));
        s->snapshots[i] = sn;
        s->nb_snapshots++;
        error_setg_errno(errp, -ret, "Failed to remove snapshot from "
                         "snapshot list");
        goto out;
    }
    /* 2. Its clusters lose a reference, its L1 is freed, 3. flags. */
    s->free_discard = s->discard_snapshot;
    ret = qcow2_update_snapshot_refcount(bs, sn.l1_table_offset, sn.l1_size,
                                         -1);
    if (ret >= 0 && sn.l1_size) {
        ret = qcow2_free_clusters(bs, sn.l1_table_offset,
                                  (uint64_t)sn.l1_size * 8);
    }
    s->free_discard = false;
    ret = qcow2_snapshot_settle(bs, ret);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to free the cluster and L1 "
                         "table");
    }
    g_free(sn.id_str);
    g_free(sn.name);
    g_free(sn.unknown_extra);
out:
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- list ---- */

int coroutine_fn qcow2_snapshot_list(BlockDriverState *bs,
                                     QEMUSnapshotInfo **psn)
{
    BDRVQcow2State *s = bs->opaque;
    QEMUSnapshotInfo *list = g_new0(QEMUSnapshotInfo,
                                    MAX(s->nb_snapshots, 1));

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        pstrcpy(list[i].id_str, sizeof(list[i].id_str), sn->id_str);
        pstrcpy(list[i].name, sizeof(list[i].name), sn->name);
        list[i].vm_state_size = sn->vm_state_size;
        list[i].date_sec = sn->date_sec;
        list[i].date_nsec = sn->date_nsec;
        list[i].vm_clock_nsec = sn->vm_clock_nsec;
        list[i].icount = sn->icount;
    }
    *psn = list;
    return s->nb_snapshots;
}
