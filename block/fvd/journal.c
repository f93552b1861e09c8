/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The FVD journal: a ring of self-contained 512-byte sectors (checksum,
 * epoch, sequence number) recording which blocks entered the image.
 * Commits turn the pending bits of every allocating write since the last
 * commit into records (one sequential write for many concurrent writes,
 * after one flush of the data), then let the bitmap entries take the bits,
 * marked to go home only once those records are durable. Checkpoints write
 * the entries home in the background and free the ring space behind them.
 * Replay at open reads the ring back. docs/specs/fvd.txt sections 6 and 7.
 */
#include "block/fvd/fvd.h"
#include <zlib.h>

/* Largest number of sectors one commit writes at once (512 KiB). */
#define FVD_MAX_CHUNK 1024
/* Bytes of journal read at a time during replay. */
#define FVD_REPLAY_CHUNK (1 * MiB)

void fvd_journal_init(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdJournal *j = &s->j;
    uint32_t align = bs->file->bl.request_alignment;

    j->nsectors = s->header.journal_size / FVD_JSECTOR;
    /* Writes cover whole units of the file's alignment (at most a page), so
     * O_DIRECT never needs a read-modify-write of journal sectors. */
    j->unit = MIN(MAX(align, FVD_JSECTOR), FVD_PAGE) / FVD_JSECTOR;
    qemu_co_queue_init(&j->commit_queue);
    qemu_co_queue_init(&j->checkpoint_queue);
    qemu_co_queue_init(&s->bg_queue);
}

static uint64_t fvd_journal_free(FvdJournal *j)
{
    return j->nsectors - (j->next_seq - j->tail);
}

/* ---- encoding ---- */

/* Sectors being filled for one write; records never span two sectors. */
typedef struct FvdEncoder {
    uint8_t *buf;
    uint64_t cap;               /* sectors available */
    uint64_t nsect;             /* sectors started */
    uint32_t used;              /* payload bytes used in the last sector */
} FvdEncoder;

/* Room for a record of len bytes: in the current sector or a new one. */
static uint8_t *fvd_enc_reserve(FvdEncoder *e, uint32_t len)
{
    if (!e->nsect || e->used + len > FVD_JPAYLOAD) {
        if (e->nsect == e->cap) {
            return NULL;
        }
        e->nsect++;
        e->used = 0;
    }
    FvdJournalSector *js = (FvdJournalSector *)(e->buf +
                                                (e->nsect - 1) * FVD_JSECTOR);
    uint8_t *p = js->records + e->used;
    e->used += len;
    js->used = cpu_to_le16(e->used);
    return p;
}

static bool fvd_enc_range(FvdEncoder *e, uint64_t first, uint64_t count)
{
    while (count) {
        uint32_t n = MIN(count, UINT32_MAX);
        uint8_t *p = fvd_enc_reserve(e, FVD_REC_HDR);
        if (!p) {
            return false;
        }
        FvdRecordHeader r = {
            .type = cpu_to_le16(FVD_REC_RANGE), .count = cpu_to_le32(n),
            .first = cpu_to_le64(first),
        };
        memcpy(p, &r, sizeof(r));
        first += n;
        count -= n;
    }
    return true;
}

/* nbytes of raw bits for the blocks from first (a multiple of 8) on. */
static bool fvd_enc_bits(FvdEncoder *e, uint64_t first, const uint8_t *bits,
                         uint32_t nbytes)
{
    while (nbytes) {
        uint32_t room = e->nsect ? FVD_JPAYLOAD - e->used : 0;
        if (room < FVD_REC_HDR + 8) {
            room = FVD_JPAYLOAD;    /* a new sector */
        }
        uint32_t n = MIN(nbytes, room - FVD_REC_HDR);
        uint8_t *p = fvd_enc_reserve(e, FVD_REC_HDR + ROUND_UP(n, 8));
        if (!p) {
            return false;
        }
        FvdRecordHeader r = {
            .type = cpu_to_le16(FVD_REC_BITS), .nbytes = cpu_to_le16(n),
            .first = cpu_to_le64(first),
        };
        memcpy(p, &r, sizeof(r));
        memcpy(p + FVD_REC_HDR, bits, n);
        first += (uint64_t)n * 8;
        bits += n;
        nbytes -= n;
    }
    return true;
}

/* Undo what was encoded since save (records that did not all fit). */
static void fvd_enc_rollback(FvdEncoder *e, const FvdEncoder *save)
{
    uint64_t cap = e->cap;

    *e = *save;
    if (e->nsect) {
        FvdJournalSector *js = (FvdJournalSector *)
            (e->buf + (e->nsect - 1) * FVD_JSECTOR);
        js->used = cpu_to_le16(e->used);
        memset(js->records + e->used, 0, FVD_JPAYLOAD - e->used);
    }
    memset(e->buf + e->nsect * FVD_JSECTOR, 0,
           (cap - e->nsect) * FVD_JSECTOR);
}

static inline bool fvd_bit(const uint8_t *bits, uint64_t b)
{
    return bits[b / 8] & (1 << (b % 8));
}

/*
 * Records for the committing bits of one shadow: ranges, or raw bits when
 * the runs are many and short. Bits past the coverage (left by a shrink)
 * are not recorded. Returns false, having added nothing, if the records do
 * not fit into the encoder.
 */
static bool fvd_enc_shadow(BDRVFvdState *s, FvdEncoder *e, FvdShadow *sh)
{
    uint64_t base = sh->index * s->entry_bits;
    uint64_t limit = MIN(s->entry_bits, s->nb_blocks > base ?
                         s->nb_blocks - base : 0);
    const uint8_t *bits = sh->committing;
    FvdEncoder save = *e;
    uint64_t runs = 0, lo = 0, hi = 0;
    bool ok = true;

    for (uint64_t b = 0; b < limit; b++) {
        if (b % 8 == 0 && !bits[b / 8]) {
            b += 7;             /* skip a zero byte */
            continue;
        }
        if (fvd_bit(bits, b)) {
            if (!runs || !fvd_bit(bits, b - 1)) {
                lo = runs ? lo : b;
                runs++;
            }
            hi = b;
        }
    }
    if (!runs) {
        return true;
    }
    uint32_t from = lo / 8, to = hi / 8 + 1;
    uint64_t raw_cost = (to - from) + FVD_REC_HDR *
                        DIV_ROUND_UP(to - from, FVD_REC_MAX_BITS_BYTES);
    if (runs * FVD_REC_HDR <= raw_cost) {
        for (uint64_t b = lo; ok && b <= hi;) {
            uint64_t end = b;
            while (end <= hi && fvd_bit(bits, end)) {
                end++;
            }
            ok = fvd_enc_range(e, base + b, end - b);
            for (b = end; b <= hi && !fvd_bit(bits, b); b++) {
                /* skip the gap */
            }
        }
    } else {
        uint8_t *copy = g_memdup2(bits + from, to - from);
        for (uint64_t b = MAX(limit, (uint64_t)from * 8);
             b < (uint64_t)to * 8; b++) {
            copy[b / 8 - from] &= ~(1 << (b % 8));
        }
        ok = fvd_enc_bits(e, base + (uint64_t)from * 8, copy, to - from);
        g_free(copy);
    }
    if (!ok) {
        fvd_enc_rollback(e, &save);
    }
    return ok;
}

/* ---- writing ---- */

static void fvd_seal_sector(BDRVFvdState *s, FvdJournalSector *js,
                            uint64_t seq)
{
    memcpy(js->magic, FVD_JOURNAL_MAGIC, 4);
    js->epoch = cpu_to_le64(s->header.journal_epoch);
    js->seq = cpu_to_le64(seq);
    js->tail = cpu_to_le64(s->j.tail);
    js->crc = 0;
    js->crc = cpu_to_le32((uint32_t)crc32(0, (const Bytef *)js, FVD_JSECTOR));
}

/* Write the k sectors of buf at next_seq (k a multiple of the unit). */
static int coroutine_fn fvd_journal_write(BlockDriverState *bs, uint8_t *buf,
                                          uint64_t k)
{
    BDRVFvdState *s = bs->opaque;
    FvdJournal *j = &s->j;
    uint64_t done = 0;

    for (uint64_t i = 0; i < k; i++) {
        fvd_seal_sector(s, (FvdJournalSector *)(buf + i * FVD_JSECTOR),
                        j->next_seq + i);
    }
    while (done < k) {
        uint64_t pos = (j->next_seq + done) % j->nsectors;
        uint64_t n = MIN(k - done, j->nsectors - pos);
        BLKDBG_EVENT(bs->file, "journal_write");
        int ret = bdrv_co_pwrite(bs->file,
                                 s->header.journal_offset + pos * FVD_JSECTOR,
                                 n * FVD_JSECTOR, buf + done * FVD_JSECTOR, 0);
        if (ret < 0) {
            return ret;
        }
        done += n;
    }
    s->stats.journal_sectors += k;
    return 0;
}

/* Return the committing bits of sh to pending (a failed commit). */
static void fvd_shadow_uncommit(BDRVFvdState *s, FvdShadow *sh)
{
    if (!sh->committing) {
        return;
    }
    if (!sh->pending) {
        sh->pending = sh->committing;
        s->pending_entries++;
    } else {
        for (uint32_t i = 0; i < s->entry_size; i++) {
            sh->pending[i] |= sh->committing[i];
        }
        g_free(sh->committing);
    }
    sh->committing = NULL;
}

static void fvd_shadow_drop_if_empty(BDRVFvdState *s, FvdShadow *sh)
{
    if (!sh->pending && !sh->committing) {
        g_hash_table_remove(s->shadows, &sh->index);
        g_free(sh);
    }
}

/*
 * The records of shadows [from, to) are written: the cached entries take
 * their bits, marked to be written home only after journal write
 * generation gen is durable; then the shadows let go of them.
 */
static int coroutine_fn fvd_apply_shadows(BlockDriverState *bs,
                                          GPtrArray *list, guint from,
                                          guint to, uint64_t gen)
{
    BDRVFvdState *s = bs->opaque;
    int ret = 0;

    for (guint i = from; i < to; i++) {
        FvdShadow *sh = g_ptr_array_index(list, i);
        uint8_t *page;
        if (ret >= 0) {
            ret = table_cache_get(s->bitmap, fvd_entry_offset(s, sh->index),
                                  (void **)&page);
        }
        if (ret < 0) {
            fvd_shadow_uncommit(s, sh);
            continue;
        }
        /* Bits past the coverage (a shrink since they were set) stay out
         * of the bitmap. */
        uint64_t base = sh->index * s->entry_bits;
        uint64_t limit = s->nb_blocks > base ? s->nb_blocks - base : 0;
        for (uint32_t b = 0; b < s->entry_size && b * 8 < limit; b++) {
            uint8_t v = sh->committing[b];
            if (limit - b * 8 < 8) {
                v &= (1 << (limit - b * 8)) - 1;
            }
            page[b] |= v;
        }
        table_cache_mark_dirty_gen(s->bitmap, page, bs->file, gen);
        table_cache_put(s->bitmap, (void **)&page);
        g_free(sh->committing);
        sh->committing = NULL;
        fvd_shadow_drop_if_empty(s, sh);
    }
    return ret;
}

static gint fvd_shadow_cmp(gconstpointer a, gconstpointer b)
{
    const FvdShadow *x = *(FvdShadow *const *)a;
    const FvdShadow *y = *(FvdShadow *const *)b;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Move every pending bit to committing; the shadows in index order. */
static GPtrArray *fvd_take_pending(BDRVFvdState *s)
{
    GPtrArray *list = g_ptr_array_new();
    GHashTableIter it;
    gpointer v;

    g_hash_table_iter_init(&it, s->shadows);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        FvdShadow *sh = v;
        if (sh->pending) {
            assert(!sh->committing);
            sh->committing = sh->pending;
            sh->pending = NULL;
            s->pending_entries--;
            g_ptr_array_add(list, sh);
        }
    }
    g_ptr_array_sort(list, fvd_shadow_cmp);
    qemu_co_queue_restart_all(&s->pending_queue);
    return list;
}

/*
 * Table records for the chunks of tlist from index from on, as many as fit
 * (a run of consecutive chunks per record); returns the index reached.
 */
static guint fvd_enc_table(BDRVFvdState *s, FvdEncoder *e, GArray *tlist,
                           guint from)
{
    guint i = from;

    while (i < tlist->len) {
        uint64_t first = g_array_index(tlist, uint64_t, i);
        if (first >= s->t.nchunks || !s->t.map[first]) {
            i++;                /* dropped by a shrink */
            continue;
        }
        guint n = 1;
        while (i + n < tlist->len && n < FVD_REC_MAX_TABLE &&
               g_array_index(tlist, uint64_t, i + n) == first + n &&
               first + n < s->t.nchunks && s->t.map[first + n]) {
            n++;
        }
        uint8_t *p = fvd_enc_reserve(e, FVD_REC_HDR + ROUND_UP(n * 4, 8));
        if (!p) {
            break;
        }
        FvdRecordHeader r = {
            .type = cpu_to_le16(FVD_REC_TABLE), .nbytes = cpu_to_le16(n),
            .first = cpu_to_le64(first),
        };
        memcpy(p, &r, sizeof(r));
        for (guint k = 0; k < n; k++) {
            uint32_t v = cpu_to_le32(s->t.map[first + k]);
            memcpy(p + FVD_REC_HDR + 4 * k, &v, 4);
        }
        i += n;
    }
    return i;
}

/*
 * Write the records of the table entries in tlist (first) and of the
 * shadows in list, in chunks that fit the free ring space (a checkpoint
 * makes room when none is left), each chunk applied once written: the
 * entries become committed (their pages may go home after a flush), the
 * cached bitmap entries take the bits.
 */
static int coroutine_fn fvd_commit_shadows(BlockDriverState *bs,
                                           GPtrArray *list, GArray *tlist)
{
    BDRVFvdState *s = bs->opaque;
    FvdJournal *j = &s->j;
    uint8_t *buf = qemu_blockalign(FVD_MAX_CHUNK * FVD_JSECTOR);
    guint tlen = tlist ? tlist->len : 0;
    guint i = 0, ti = 0;
    int ret = 0;

    while ((ti < tlen || i < list->len) && ret >= 0) {
        uint64_t cap = MIN(QEMU_ALIGN_DOWN(fvd_journal_free(j), j->unit),
                           (uint64_t)FVD_MAX_CHUNK);
        FvdEncoder e = { .buf = buf, .cap = cap };
        guint k = i, tk = ti;

        memset(buf, 0, cap * FVD_JSECTOR);
        if (tlist) {
            tk = fvd_enc_table(s, &e, tlist, ti);
        }
        if (tk == tlen) {
            while (k < list->len && fvd_enc_shadow(s, &e, list->pdata[k])) {
                k++;
            }
        }
        if (!e.nsect) {
            if (tk > ti) {
                ti = tk;        /* only dropped entries */
                continue;
            }
            if (fvd_journal_free(j) == j->nsectors) {
                ret = -ENOSPC;      /* cannot happen: entries fit a ring */
                break;
            }
            ret = fvd_journal_checkpoint(bs);
            continue;
        }
        uint64_t n = ROUND_UP(MAX(e.nsect, UINT64_C(1)), j->unit);
        ret = fvd_journal_write(bs, buf, n);
        if (ret < 0) {
            break;
        }
        j->next_seq += n;
        if (tlist) {
            fvd_table_committed(s, tlist, ti, tk);
        }
        ret = fvd_apply_shadows(bs, list, i, k, bdrv_get_write_gen(bs->file));
        j->written_seq = j->next_seq;
        i = k;
        ti = tk;
    }
    /* Whatever was not written goes back to pending for the next commit. */
    for (; i < list->len; i++) {
        FvdShadow *sh = list->pdata[i];
        fvd_shadow_uncommit(s, sh);
    }
    if (tlist) {
        fvd_table_uncommit(s, tlist, ti);
    }
    qemu_vfree(buf);
    return ret;
}

/* The replayed (or resized) metadata home and durable. */
static int coroutine_fn fvd_meta_flush(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int ret = 0;

    /* Table first: a bit whose chunk is not mapped reads from the base,
     * so a bitmap page may reach the disk before the table page. */
    if (s->compact) {
        ret = fvd_table_write_home(bs);
    }
    if (ret >= 0) {
        ret = s->bitmap ? table_cache_flush(s->bitmap)
                        : bdrv_co_flush(bs->file);
    }
    return ret;
}

int coroutine_fn fvd_mark_dirty(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    int ret;

    if (s->session_dirty) {
        return 0;
    }
    /* The bits replayed at open are only in memory: the new epoch will make
     * the sectors holding them stale, so they must be home first. */
    if (s->replayed_in_cache) {
        ret = fvd_meta_flush(bs);
        if (ret < 0) {
            return ret;
        }
        s->replayed_in_cache = false;
    }
    FvdHeader old = s->header;
    s->header.incompatible_features |= FVD_INCOMPAT_DIRTY;
    s->header.journal_epoch++;
    ret = fvd_write_header(bs);
    if (ret < 0) {
        s->header.incompatible_features = old.incompatible_features;
        s->header.journal_epoch = old.journal_epoch;
        return ret;
    }
    /* A new epoch makes every sector on disk stale: start at 0. */
    s->j.next_seq = s->j.written_seq = s->j.tail = 0;
    s->session_dirty = true;
    return 0;
}

/* One commit; the caller made sure none is running. */
static int coroutine_fn fvd_commit_once(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdJournal *j = &s->j;
    GPtrArray *list;
    GArray *tlist = NULL;
    int ret;

    j->committing = true;
    ret = fvd_mark_dirty(bs);
    if (ret < 0) {
        goto out;
    }
    list = fvd_take_pending(s);
    if (s->compact) {
        tlist = fvd_table_take_pending(s);
    }
    /* Records may reach the disk as soon as they are written: the data
     * they describe (and the chunks they map) must be durable first. */
    ret = bdrv_co_flush_gen(s->data, bdrv_get_write_gen(s->data));
    if (ret >= 0) {
        ret = fvd_commit_shadows(bs, list, tlist);
    } else {
        for (guint i = 0; i < list->len; i++) {
            fvd_shadow_uncommit(s, list->pdata[i]);
        }
        if (tlist) {
            fvd_table_uncommit(s, tlist, 0);
        }
    }
    g_ptr_array_free(list, TRUE);
    if (tlist) {
        g_array_free(tlist, TRUE);
        s->t.committing = 0;
    }
    s->stats.commits++;
out:
    j->last_commit_ret = ret;
    j->committing = false;
    qemu_co_queue_restart_all(&j->commit_queue);
    qemu_co_queue_restart_all(&s->pending_queue);
    fvd_journal_kick(bs);
    return ret;
}

int coroutine_fn fvd_journal_commit(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdJournal *j = &s->j;

    /*
     * Bits taken by a running commit were pending before this call: wait
     * for it. If it failed they are pending again and the next commit
     * retries them.
     */
    for (;;) {
        if (j->committing) {
            qemu_co_queue_wait(&j->commit_queue, NULL);
            continue;
        }
        if (!s->pending_entries && !(s->compact && s->t.pending->len)) {
            return 0;
        }
        return fvd_commit_once(bs);
    }
}

int coroutine_fn fvd_journal_checkpoint(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdJournal *j = &s->j;
    int ret;

    while (j->checkpointing) {
        qemu_co_queue_wait(&j->checkpoint_queue, NULL);
    }
    j->checkpointing = true;
    uint64_t upto = j->written_seq;
    BLKDBG_EVENT(bs->file, "journal_recycle");
    /* Every entry dirtied by a record below upto was dirtied before this
     * point, so this writes them all (each after its records are durable)
     * and flushes: their ring space may then be reused. */
    ret = fvd_meta_flush(bs);
    if (ret >= 0) {
        j->tail = MAX(j->tail, upto);
        s->stats.checkpoints++;
    }
    j->last_checkpoint_ret = ret;
    j->checkpointing = false;
    qemu_co_queue_restart_all(&j->checkpoint_queue);
    return ret;
}

/* ---- background work and throttling ---- */

static bool fvd_commit_due(BDRVFvdState *s)
{
    return (s->pending_entries >= FVD_PENDING_SOFT ||
            (s->compact && s->t.pending->len >= FVD_PENDING_SOFT)) &&
           !s->j.committing;
}

static bool fvd_checkpoint_due(BDRVFvdState *s)
{
    FvdJournal *j = &s->j;
    return j->nsectors && !j->checkpointing &&
           j->next_seq - j->tail >= j->nsectors / 2 &&
           j->written_seq > j->tail;
}

static void coroutine_fn fvd_background_entry(void *opaque)
{
    BlockDriverState *bs = opaque;
    BDRVFvdState *s = bs->opaque;

    for (;;) {
        if (fvd_commit_due(s)) {
            s->stats.bg_commits++;
            fvd_commit_once(bs);
        } else if (fvd_checkpoint_due(s)) {
            fvd_journal_checkpoint(bs);
        } else {
            break;
        }
        if (s->j.last_commit_ret < 0 || s->j.last_checkpoint_ret < 0) {
            break;              /* the next flush reports the error */
        }
    }
    s->bg_running = false;
    bs->in_flight--;
    qemu_co_queue_restart_all(&s->bg_queue);
}

void fvd_journal_kick(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;

    /* Not once close began: the layer's drain is over by then, so close
     * itself must wait for background work (fvd_journal_stop). */
    if (s->bg_running || s->closing || bs->read_only ||
        !(fvd_commit_due(s) || fvd_checkpoint_due(s))) {
        return;
    }
    s->bg_running = true;
    bs->in_flight++;            /* drain and close wait for it */
    aio_co_schedule(qemu_coroutine_create(fvd_background_entry, bs));
}

void coroutine_fn fvd_journal_stop(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;

    s->closing = true;
    while (s->bg_running) {
        qemu_co_queue_wait(&s->bg_queue, NULL);
    }
}

int coroutine_fn fvd_journal_throttle(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;

    fvd_journal_kick(bs);
    while (s->pending_entries >= FVD_PENDING_HARD) {
        if (s->j.last_commit_ret < 0 && !s->j.committing) {
            return s->j.last_commit_ret;
        }
        s->stats.pending_waits++;
        fvd_journal_kick(bs);
        qemu_co_queue_wait(&s->pending_queue, NULL);
    }
    return 0;
}

/* ---- replay ---- */

typedef struct FvdReplay {
    BlockDriverState *bs;
    uint64_t head_tail;         /* highest tail field of a valid sector */
    uint64_t records;
    bool apply;                 /* second pass */
    int ret;
} FvdReplay;

/* Apply blocks [first, first + count), clipped to the coverage. */
static int coroutine_fn fvd_replay_range(FvdReplay *r, uint64_t first,
                                         uint64_t count)
{
    BDRVFvdState *s = r->bs->opaque;
    uint64_t end = MIN(first + count, s->nb_blocks);

    if (!r->apply || first >= end) {
        return 0;
    }
    if (r->bs->read_only) {
        fvd_bitmap_replayed_set(s, first, end);
        return 0;
    }
    /* The data of every record was durable before the record was written:
     * these entries need no dependency. */
    return fvd_bitmap_set_cached(s, first, end, NULL, 0);
}

static int coroutine_fn fvd_replay_bits(FvdReplay *r, uint64_t first,
                                        const uint8_t *bits, uint32_t nbytes)
{
    uint64_t nb = (uint64_t)nbytes * 8;

    for (uint64_t b = 0; b < nb;) {
        if (!(bits[b / 8] & (1 << (b % 8)))) {
            b++;
            continue;
        }
        uint64_t e = b;
        while (e < nb && (bits[e / 8] & (1 << (e % 8)))) {
            e++;
        }
        int ret = fvd_replay_range(r, first + b, e - b);
        if (ret < 0) {
            return ret;
        }
        b = e;
    }
    return 0;
}

/* Parse (and in the second pass apply) the records of a valid sector. */
static int coroutine_fn fvd_replay_records(FvdReplay *r,
                                           const FvdJournalSector *js,
                                           uint64_t seq, Error **errp)
{
    BDRVFvdState *s = r->bs->opaque;
    uint64_t capacity = s->header.bitmap_size * 8;
    uint32_t used = le16_to_cpu(js->used), off = 0;

    if (used > FVD_JPAYLOAD || used % 8) {
        error_setg(errp, "FVD journal sector %" PRIu64 " is corrupt (%" PRIu32
                   " bytes of records)", seq, used);
        return -EINVAL;
    }
    while (off < used) {
        FvdRecordHeader h;
        if (used - off < FVD_REC_HDR) {
            goto bad;
        }
        memcpy(&h, js->records + off, sizeof(h));
        uint16_t type = le16_to_cpu(h.type);
        uint64_t first = le64_to_cpu(h.first);
        int ret = 0;
        if (type == FVD_REC_RANGE) {
            uint32_t count = le32_to_cpu(h.count);
            if (!count || first > capacity || count > capacity - first ||
                h.nbytes) {
                goto bad;
            }
            ret = fvd_replay_range(r, first, count);
            off += FVD_REC_HDR;
        } else if (type == FVD_REC_BITS) {
            uint32_t nbytes = le16_to_cpu(h.nbytes);
            uint32_t len = FVD_REC_HDR + ROUND_UP(nbytes, 8);
            if (!nbytes || len > used - off || first % 8 || h.count ||
                first > capacity || (uint64_t)nbytes * 8 > capacity - first) {
                goto bad;
            }
            ret = fvd_replay_bits(r, first, js->records + off + FVD_REC_HDR,
                                  nbytes);
            off += len;
        } else if (type == FVD_REC_TABLE && s->compact) {
            uint32_t n = le16_to_cpu(h.nbytes);
            uint32_t len = FVD_REC_HDR + ROUND_UP(n * 4, 8);
            if (!n || n > FVD_REC_MAX_TABLE || len > used - off || h.count ||
                first > s->t.capacity || n > s->t.capacity - first) {
                goto bad;
            }
            for (uint32_t k = 0; k < n; k++) {
                uint32_t e;
                memcpy(&e, js->records + off + FVD_REC_HDR + 4 * k, 4);
                e = le32_to_cpu(e);
                if (!e || (e & FVD_ENTRY_RESERVED) || e > s->t.capacity) {
                    goto bad;
                }
                if (r->apply && fvd_table_replay_entry(s, first + k, e) < 0) {
                    error_setg(errp, "FVD journal sector %" PRIu64 " maps "
                               "chunk %" PRIu64 " that the table maps "
                               "elsewhere", seq, first + k);
                    return -EINVAL;
                }
            }
            off += len;
        } else {
            goto bad;
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not replay the FVD journal");
            return ret;
        }
        r->records++;
    }
    return 0;

bad:
    error_setg(errp, "FVD journal sector %" PRIu64 " is corrupt (bad record "
               "at byte %" PRIu32 ")", seq, off);
    return -EINVAL;
}

/* A sector counts if it is whole, of this epoch and in its ring slot. */
static bool fvd_sector_valid(BDRVFvdState *s, FvdJournalSector *js,
                             uint64_t pos, uint64_t *seq)
{
    uint32_t crc = le32_to_cpu(js->crc);

    if (memcmp(js->magic, FVD_JOURNAL_MAGIC, 4)) {
        return false;
    }
    js->crc = 0;
    bool ok = (uint32_t)crc32(0, (const Bytef *)js, FVD_JSECTOR) == crc;
    js->crc = cpu_to_le32(crc);
    *seq = le64_to_cpu(js->seq);
    return ok && le64_to_cpu(js->epoch) == s->header.journal_epoch &&
           *seq % s->j.nsectors == pos;
}

/* One pass over the ring: validate (first pass) or apply (second). */
static int coroutine_fn fvd_replay_pass(FvdReplay *r, uint8_t *buf,
                                        Error **errp)
{
    BDRVFvdState *s = r->bs->opaque;
    uint64_t nsect = s->j.nsectors;
    uint64_t per_chunk = FVD_REPLAY_CHUNK / FVD_JSECTOR;

    for (uint64_t pos = 0; pos < nsect; pos += per_chunk) {
        uint64_t n = MIN(per_chunk, nsect - pos);
        BLKDBG_EVENT(r->bs->file, "journal_read");
        int ret = bdrv_co_pread(r->bs->file,
                                s->header.journal_offset + pos * FVD_JSECTOR,
                                n * FVD_JSECTOR, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read the FVD journal");
            return ret;
        }
        for (uint64_t i = 0; i < n; i++) {
            FvdJournalSector *js = (FvdJournalSector *)(buf + i * FVD_JSECTOR);
            uint64_t seq;
            if (!fvd_sector_valid(s, js, pos + i, &seq)) {
                continue;       /* torn, stale or never written */
            }
            uint64_t tail = le64_to_cpu(js->tail);
            if (!r->apply) {
                if (tail > seq) {
                    error_setg(errp, "FVD journal sector %" PRIu64 " is "
                               "corrupt (tail %" PRIu64 " past it)", seq,
                               tail);
                    return -EINVAL;
                }
                r->head_tail = MAX(r->head_tail, tail);
            } else if (seq < r->head_tail) {
                continue;       /* already in the bitmap area */
            }
            ret = fvd_replay_records(r, js, seq, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

int coroutine_fn fvd_journal_replay(BlockDriverState *bs, uint64_t *records,
                                    Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    uint8_t *buf;
    FvdReplay r = { .bs = bs };
    int ret;

    *records = 0;
    if (!s->j.nsectors) {
        return 0;
    }
    buf = qemu_blockalign(MIN(FVD_REPLAY_CHUNK,
                              s->j.nsectors * FVD_JSECTOR));
    /* Validate everything before changing anything. */
    ret = fvd_replay_pass(&r, buf, errp);
    if (ret >= 0) {
        r.apply = true;
        r.records = 0;
        ret = fvd_replay_pass(&r, buf, errp);
    }
    qemu_vfree(buf);
    *records = r.records;
    return ret;
}
