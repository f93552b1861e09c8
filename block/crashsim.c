/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashsim: a simulated disk with a volatile write cache below any format.
 * Ops complete on a virtual clock in a reproducible order, the log of what
 * a flush did not make durable is kept, and after a power cut possible
 * post-crash contents are written out. Semantics: crashsim.h.
 */
#include "block_int.h"
#include "block/crashsim.h"
#include "util/cutils.h"
#include "util/aio.h"
#include "util/thread-pool.h"

#include <fcntl.h>

#define CS_SECTOR           512
#define CS_DIRECT_ALIGN     4096        /* O_DIRECT rules under NOCACHE */
#define CS_COPY_CHUNK       (1 * MiB)

typedef enum CrashsimOpKind {
    CS_OP_WRITE,
    CS_OP_ZERO,
    CS_OP_DISCARD,
    CS_OP_TRUNCATE,
} CrashsimOpKind;

/* A logged op: it changes the disk when (and if) it lands. */
typedef struct CrashsimOp {
    CrashsimOpKind kind;
    int64_t offset;              /* truncate: the new size */
    int64_t bytes;               /* truncate: 0 */
    uint8_t *data;               /* CS_OP_WRITE only */
    uint64_t seq;                /* issue number (all requests, all nodes) */
    uint64_t done_seq;           /* completion number; 0 while in flight */
} CrashsimOp;

/*
 * Sector maps: sector number -> g_malloc'd CS_SECTOR bytes. A view is a map
 * layered over a base: the live content and the durable image lie over the
 * origin (the child's content at open, which the node never changes while
 * open, loaded into s->origin on demand); a materialized crash lies over
 * the durable image. Bytes at or past zero_from that the map lacks read as
 * zero (a shrink cut them off), whatever the base holds.
 */
typedef struct CrashsimView CrashsimView;
typedef struct BDRVCrashsimState BDRVCrashsimState;
struct CrashsimView {
    BDRVCrashsimState *s;
    GHashTable *map;
    int64_t size;
    int64_t zero_from;
    CrashsimView *base;          /* NULL: the origin */
};

struct BDRVCrashsimState {
    char *image;
    BlockDriverState *child;     /* read at open and on demand, written at
                                  * a clean close only */
    bool writable;
    bool direct;                 /* BDRV_O_NOCACHE: O_DIRECT alignment */
    GHashTable *origin;          /* loaded child sectors */
    int64_t origin_size;
    CrashsimView live;           /* what reads return */
    CrashsimView durable;        /* what survives any crash */
    GQueue log;                  /* of CrashsimOp *, issue order */
    uint64_t done_counter;
};

typedef enum CrashsimReqKind {
    CS_REQ_READ,
    CS_REQ_MUTATE,               /* a logged op */
    CS_REQ_FLUSH,
} CrashsimReqKind;

/* A request waiting for its completion time on the virtual clock. */
typedef struct CrashsimReq {
    BlockDriverState *bs;
    CrashsimReqKind kind;
    CrashsimOp *op;              /* CS_REQ_MUTATE */
    int64_t offset, bytes;       /* CS_REQ_READ */
    uint8_t *buf;                /* CS_REQ_READ: filled at completion */
    uint64_t flush_upto;         /* CS_REQ_FLUSH: done_seq it commits */
    uint64_t seq;
    int64_t due;
    int ret;
    Coroutine *co;               /* NULL: nobody waits (early-acked flush) */
} CrashsimReq;

/* Process-wide power and scheduling state. */
static struct {
    uint64_t op_count;
    uint64_t armed_at;           /* 0: not armed */
    bool crashed;
    bool torn;
    CrashsimHook *hook;
    void *hook_opaque;
    GPtrArray *nodes;            /* open crashsim nodes */
    bool sim_on;                 /* virtual clock and idle handler set up */
    uint64_t seq;                /* issue numbers of all requests */
    GQueue pending;              /* CrashsimReq *, by (due, seq) */
    CrashsimTiming timing;
    char *early_flush_image;
    CrashsimCutInfo cut;
} crashsim;

static const QemuOptDesc crashsim_open_opts[] = {
    { "image", QEMU_OPT_STRING, "The image to open below the filter" },
    { NULL }
};

static uint64_t crashsim_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ---- power control ---- */

void crashsim_reset(void)
{
    assert(g_queue_is_empty(&crashsim.pending));
    crashsim.op_count = 0;
    crashsim.armed_at = 0;
    crashsim.crashed = false;
    crashsim.seq = 0;
    memset(&crashsim.cut, 0, sizeof(crashsim.cut));
}

void crashsim_arm(uint64_t nth_op)
{
    crashsim.armed_at = nth_op;
}

void crashsim_set_crash_hook(CrashsimHook *fn, void *opaque)
{
    crashsim.hook = fn;
    crashsim.hook_opaque = opaque;
}

void crashsim_set_timing(const CrashsimTiming *timing)
{
    crashsim.timing = *timing;
}

void crashsim_set_early_flush(const char *image)
{
    g_free(crashsim.early_flush_image);
    crashsim.early_flush_image = g_strdup(image);
}

void crashsim_get_cut_info(CrashsimCutInfo *info)
{
    *info = crashsim.cut;
}

/* Earliest issue number of a flush running now on a node other than s
 * (other) or on s itself (UINT64_MAX if none). */
static uint64_t crashsim_first_flush(BDRVCrashsimState *s, bool other)
{
    uint64_t first = UINT64_MAX;

    for (GList *l = crashsim.pending.head; l; l = l->next) {
        CrashsimReq *r = l->data;
        if (r->kind == CS_REQ_FLUSH && (r->bs->opaque != s) == other) {
            first = MIN(first, r->seq);
        }
    }
    return first;
}

/* Logged ops of s issued after such a flush began; *done: completed. */
static unsigned crashsim_writes_during_flush(BDRVCrashsimState *s,
                                             bool other, unsigned *done)
{
    uint64_t first = crashsim_first_flush(s, other);
    unsigned n = 0;

    *done = 0;
    for (GList *l = s->log.head; l; l = l->next) {
        CrashsimOp *op = l->data;
        if (op->seq > first) {
            n++;
            *done += op->done_seq != 0;
        }
    }
    return n;
}

unsigned crashsim_node_cut_writes(BlockDriverState *bs, bool other_node,
                                  unsigned *done)
{
    assert(crashsim_is_node(bs));
    return crashsim_writes_during_flush(bs->opaque, other_node, done);
}

/* Record what was in flight at the instant of the cut. */
static void crashsim_note_cut(void)
{
    CrashsimCutInfo *c = &crashsim.cut;

    memset(c, 0, sizeof(*c));
    c->valid = true;
    c->ops_in_flight = crashsim.pending.length;
    for (GList *l = crashsim.pending.head; l; l = l->next) {
        CrashsimReq *r = l->data;
        c->flushes_in_flight += r->kind == CS_REQ_FLUSH;
    }
    for (guint i = 0; crashsim.nodes && i < crashsim.nodes->len; i++) {
        BlockDriverState *bs = g_ptr_array_index(crashsim.nodes, i);
        unsigned done;
        c->writes_during_flush +=
            crashsim_writes_during_flush(bs->opaque, true, &done);
        c->writes_done_during_flush += done;
    }
}

/* Cut the power and tell the hook (once). */
static void crashsim_cut(void)
{
    if (crashsim.crashed) {
        return;
    }
    crashsim_note_cut();
    crashsim.crashed = true;
    if (crashsim.hook) {
        crashsim.hook(crashsim.hook_opaque);
    }
}

void crashsim_crash_now(void)
{
    crashsim_cut();
}

bool crashsim_crashed(void)
{
    return crashsim.crashed;
}

uint64_t crashsim_op_count(void)
{
    return crashsim.op_count;
}

void crashsim_set_torn_writes(bool on)
{
    crashsim.torn = on;
}

/* A device op is being issued: count it, or fail it after the power cut. */
static int crashsim_issue(void)
{
    if (crashsim.crashed) {
        return -EIO;
    }
    crashsim.op_count++;
    if (crashsim.armed_at && crashsim.op_count >= crashsim.armed_at) {
        crashsim_cut();
        return -EIO;
    }
    return 0;
}

/* ---- sector maps and views ---- */

static GHashTable *crashsim_map_new(void)
{
    return g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
}

static uint8_t *crashsim_map_get(GHashTable *map, int64_t sector)
{
    return g_hash_table_lookup(map, GSIZE_TO_POINTER((gsize)sector));
}

static void crashsim_map_put(GHashTable *map, int64_t sector, uint8_t *buf)
{
    g_hash_table_insert(map, GSIZE_TO_POINTER((gsize)sector), buf);
}

static void crashsim_view_init(CrashsimView *v, BDRVCrashsimState *s,
                               int64_t size, CrashsimView *base)
{
    *v = (CrashsimView) { .s = s, .map = crashsim_map_new(), .size = size,
                          .zero_from = INT64_MAX, .base = base };
}

/*
 * Content of sector in view v: a sector, or NULL with *zero set (it reads
 * as zero) or clear (the child's sector, not loaded).
 */
static const uint8_t *crashsim_view_lookup(CrashsimView *v, int64_t sector,
                                           bool *zero)
{
    BDRVCrashsimState *s = v->s;
    const uint8_t *p;

    *zero = false;
    for (; v; v = v->base) {
        p = crashsim_map_get(v->map, sector);
        if (p) {
            return p;
        }
        if (sector * CS_SECTOR >= v->zero_from) {
            *zero = true;
            return NULL;
        }
    }
    p = crashsim_map_get(s->origin, sector);
    if (!p && sector * CS_SECTOR >= s->origin_size) {
        *zero = true;
    }
    return p;
}

/* Read a child sector now (materializing only: never from the scheduler). */
static uint8_t *crashsim_read_child_sector(BDRVCrashsimState *s,
                                           int64_t sector)
{
    uint8_t *p = g_malloc0(CS_SECTOR);
    int64_t n = MIN(CS_SECTOR, s->origin_size - sector * CS_SECTOR);

    if (bdrv_pread(s->child, sector * CS_SECTOR, n, p, 0) < 0) {
        fprintf(stderr, "crashsim: cannot read '%s'\n", s->image);
    }
    return p;
}

/*
 * The map entry of sector in v, created from the base when missing. A
 * sector that will be overwritten whole needs no base content.
 */
static uint8_t *crashsim_view_sector(CrashsimView *v, int64_t sector,
                                     bool whole)
{
    uint8_t *p = crashsim_map_get(v->map, sector);
    const uint8_t *base;
    bool zero;

    if (p) {
        return p;
    }
    if (whole || sector * CS_SECTOR >= v->zero_from) {
        p = g_malloc0(CS_SECTOR);
    } else {
        base = v->base ? crashsim_view_lookup(v->base, sector, &zero)
                       : crashsim_map_get(v->s->origin, sector);
        if (base) {
            p = g_memdup2(base, CS_SECTOR);
        } else if (!v->base && sector * CS_SECTOR >= v->s->origin_size) {
            p = g_malloc0(CS_SECTOR);
        } else if (v->base && zero) {
            p = g_malloc0(CS_SECTOR);
        } else {
            /* Partial sectors are loaded when their op is issued; only a
             * materialization can get here (reading is safe there). */
            assert(v->base);
            p = crashsim_read_child_sector(v->s, sector);
        }
    }
    crashsim_map_put(v->map, sector, p);
    return p;
}

/* Write data (NULL: zeroes) to [offset, offset + bytes) of the view. */
static void crashsim_view_write(CrashsimView *v, int64_t offset,
                                int64_t bytes, const uint8_t *data)
{
    int64_t pos = offset;

    while (pos < offset + bytes) {
        int64_t sector = pos / CS_SECTOR;
        int64_t in = pos - sector * CS_SECTOR;
        int64_t n = MIN(CS_SECTOR - in, offset + bytes - pos);
        uint8_t *p = crashsim_view_sector(v, sector, n == CS_SECTOR);
        if (data) {
            memcpy(p + in, data + (pos - offset), n);
        } else {
            memset(p + in, 0, n);
        }
        pos += n;
    }
    v->size = MAX(v->size, offset + bytes);
}

static gboolean crashsim_sector_at_or_past(gpointer key, gpointer value,
                                           gpointer opaque)
{
    return (int64_t)GPOINTER_TO_SIZE(key) >= *(int64_t *)opaque;
}

/*
 * Set the size. Whichever way it moves, the bytes between the two sizes
 * read as zero afterwards: a shrink drops them, a grow extends with zeroes
 * (stale bytes past the old end do not come back).
 */
static void crashsim_view_truncate(CrashsimView *v, int64_t size)
{
    int64_t edge = MIN(size, v->size);
    int64_t cut = QEMU_ALIGN_UP(edge, CS_SECTOR) / CS_SECTOR;

    if (edge % CS_SECTOR) {
        uint8_t *p = crashsim_view_sector(v, edge / CS_SECTOR, false);
        memset(p + edge % CS_SECTOR, 0, CS_SECTOR - edge % CS_SECTOR);
    }
    g_hash_table_foreach_remove(v->map, crashsim_sector_at_or_past, &cut);
    v->zero_from = MIN(v->zero_from, cut * CS_SECTOR);
    v->size = size;
}

/* Apply [offset, offset + bytes) of op (the whole op for a truncate). */
static void crashsim_view_apply(CrashsimView *v, const CrashsimOp *op,
                                int64_t offset, int64_t bytes)
{
    switch (op->kind) {
    case CS_OP_WRITE:
        crashsim_view_write(v, offset, bytes,
                            op->data + (offset - op->offset));
        break;
    case CS_OP_ZERO:
    case CS_OP_DISCARD:
        crashsim_view_write(v, offset, bytes, NULL);
        break;
    case CS_OP_TRUNCATE:
        crashsim_view_truncate(v, op->offset);
        break;
    }
}

/* ---- loading the child's content ---- */

/*
 * Load the child sectors [first, end) not loaded yet (skipping those the
 * live view holds when skip_live). The child does not change while the node
 * is open, so a loaded sector stays right.
 */
static int coroutine_fn crashsim_load(BDRVCrashsimState *s, int64_t first,
                                      int64_t end, bool skip_live)
{
    int64_t limit = DIV_ROUND_UP(s->origin_size, CS_SECTOR);

    end = MIN(end, limit);
    for (int64_t sec = first; sec < end;) {
        bool need = !crashsim_map_get(s->origin, sec) &&
                    !(skip_live && crashsim_map_get(s->live.map, sec));
        if (!need) {
            sec++;
            continue;
        }
        int64_t run_end = sec + 1;
        while (run_end < end && run_end - sec < 2048 &&
               !crashsim_map_get(s->origin, run_end)) {
            run_end++;
        }
        int64_t n = run_end - sec;
        int64_t rd = MIN(run_end * CS_SECTOR, s->origin_size) -
                     sec * CS_SECTOR;
        uint8_t *buf = qemu_blockalign(n * CS_SECTOR);
        memset(buf, 0, n * CS_SECTOR);
        int ret = bdrv_co_pread(s->child, sec * CS_SECTOR, rd, buf, 0);
        if (ret < 0) {
            qemu_vfree(buf);
            return ret;
        }
        for (int64_t i = 0; i < n; i++) {
            /* Another request may have loaded it meanwhile: same bytes. */
            if (!crashsim_map_get(s->origin, sec + i)) {
                crashsim_map_put(s->origin, sec + i,
                                 g_memdup2(buf + i * CS_SECTOR, CS_SECTOR));
            }
        }
        qemu_vfree(buf);
        sec = run_end;
    }
    return 0;
}

/* Load the sectors an op over [offset, offset + bytes) changes in part. */
static int coroutine_fn crashsim_load_edges(BDRVCrashsimState *s,
                                            int64_t offset, int64_t bytes)
{
    int64_t end = offset + bytes;
    int ret = 0;

    if (offset % CS_SECTOR) {
        ret = crashsim_load(s, offset / CS_SECTOR, offset / CS_SECTOR + 1,
                            false);
    }
    if (ret == 0 && end % CS_SECTOR) {
        ret = crashsim_load(s, end / CS_SECTOR, end / CS_SECTOR + 1, false);
    }
    return ret;
}

/* ---- the log ---- */

static void crashsim_op_free(CrashsimOp *op)
{
    g_free(op->data);
    g_free(op);
}

static gint crashsim_op_cmp_done(gconstpointer a, gconstpointer b)
{
    const CrashsimOp *x = a, *y = b;
    return x->done_seq < y->done_seq ? -1 : x->done_seq > y->done_seq;
}

/* Make durable every logged op completed with number <= upto. */
static void crashsim_commit(BDRVCrashsimState *s, uint64_t upto)
{
    GList *done = NULL;

    for (GList *l = s->log.head; l;) {
        GList *next = l->next;
        CrashsimOp *op = l->data;
        if (op->done_seq && op->done_seq <= upto) {
            done = g_list_prepend(done, op);
            g_queue_delete_link(&s->log, l);
        }
        l = next;
    }
    done = g_list_sort(done, crashsim_op_cmp_done);
    for (GList *l = done; l; l = l->next) {
        CrashsimOp *op = l->data;
        crashsim_view_apply(&s->durable, op, op->offset, op->bytes);
    }
    g_list_free_full(done, (GDestroyNotify)crashsim_op_free);
}

/* ---- the scheduler ---- */

static int64_t crashsim_latency(CrashsimReqKind kind, uint64_t seq)
{
    const CrashsimTiming *t = &crashsim.timing;
    uint64_t h = crashsim_mix64(t->seed ^ crashsim_mix64(seq));
    int64_t lo, hi, lat;

    switch (kind) {
    case CS_REQ_READ:
        lo = t->read_min_ns;
        hi = t->read_max_ns;
        break;
    case CS_REQ_FLUSH:
        lo = t->flush_min_ns;
        hi = t->flush_max_ns;
        break;
    default:
        lo = t->write_min_ns;
        hi = t->write_max_ns;
        break;
    }
    lat = hi > lo ? lo + (int64_t)((h & 0xffffffffu) % (uint64_t)(hi - lo + 1))
                  : MAX(lo, 0);
    if (t->tail_permille && (h >> 32) % 1000 < t->tail_permille) {
        lat *= MAX(t->tail_factor, 1u);
    }
    return lat;
}

static CrashsimReq *crashsim_req_new(BlockDriverState *bs,
                                     CrashsimReqKind kind)
{
    CrashsimReq *r = g_new0(CrashsimReq, 1);

    r->bs = bs;
    r->kind = kind;
    r->seq = ++crashsim.seq;
    r->due = qemu_clock_get_ns() + crashsim_latency(kind, r->seq);
    return r;
}

static gint crashsim_req_cmp(gconstpointer a, gconstpointer b,
                             gpointer opaque)
{
    const CrashsimReq *x = a, *y = b;

    if (x->due != y->due) {
        return x->due < y->due ? -1 : 1;
    }
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Queue r for its completion time; wait for it unless nobody waits. */
static int coroutine_fn crashsim_req_wait(CrashsimReq *r, bool wait)
{
    r->co = wait ? qemu_coroutine_self() : NULL;
    g_queue_insert_sorted(&crashsim.pending, r, crashsim_req_cmp, NULL);
    if (!wait) {
        return 0;
    }
    qemu_coroutine_yield();
    return r->ret;
}

/* Fill a read from the live view (origin loaded when it was issued). */
static void crashsim_fill_read(BDRVCrashsimState *s, CrashsimReq *r)
{
    for (int64_t pos = r->offset; pos < r->offset + r->bytes;) {
        int64_t sector = pos / CS_SECTOR;
        int64_t in = pos - sector * CS_SECTOR;
        int64_t n = MIN(CS_SECTOR - in, r->offset + r->bytes - pos);
        bool zero;
        const uint8_t *p = crashsim_view_lookup(&s->live, sector, &zero);
        if (pos >= s->live.size || !p) {
            assert(pos >= s->live.size || zero);
            memset(r->buf + (pos - r->offset), 0, n);
        } else {
            memcpy(r->buf + (pos - r->offset), p + in, n);
        }
        pos += n;
    }
}

/* r's completion time has come (called by the idle handler). */
static void crashsim_complete(CrashsimReq *r)
{
    BDRVCrashsimState *s = r->bs->opaque;

    r->ret = 0;
    if (crashsim.crashed) {
        /* The disk is dead: nothing changes, logged ops may or may not
         * have landed. */
        r->ret = -EIO;
    } else if (r->kind == CS_REQ_MUTATE) {
        crashsim_view_apply(&s->live, r->op, r->op->offset, r->op->bytes);
        r->op->done_seq = ++s->done_counter;
    } else if (r->kind == CS_REQ_READ) {
        crashsim_fill_read(s, r);
    } else if (!(r->bs->open_flags & BDRV_O_NO_FLUSH)) {
        crashsim_commit(s, r->flush_upto);
    }
    if (r->co) {
        aio_co_wake(r->co);
    } else {
        g_free(r);
    }
}

/*
 * The event loop has nothing else to do: move the virtual clock to the next
 * event, a request's completion or a timer, and perform it. Never while a
 * thread-pool job is out: its completion may issue requests, and those must
 * be numbered in the same order in every run.
 */
static bool crashsim_idle(void *opaque)
{
    CrashsimReq *next = g_queue_peek_head(&crashsim.pending);
    int64_t timer = aio_first_timer_ns(qemu_get_aio_context());

    if (thread_pool_in_flight()) {
        return false;
    }
    if (timer >= 0 && (!next || timer <= next->due)) {
        qemu_clock_set_virtual_ns(timer);
        return true;
    }
    if (!next) {
        return false;
    }
    g_queue_pop_head(&crashsim.pending);
    qemu_clock_set_virtual_ns(next->due);
    crashsim_complete(next);
    return true;
}

static void crashsim_sim_start(void)
{
    if (!crashsim.sim_on) {
        crashsim.sim_on = true;
        qemu_clock_use_virtual(true);
        aio_set_idle_handler(qemu_get_aio_context(), crashsim_idle, NULL);
    }
}

/* Requests of bs that nobody waits for any more (early-acked flushes). */
static void crashsim_drop_pending(BlockDriverState *bs)
{
    for (GList *l = crashsim.pending.head; l;) {
        GList *next = l->next;
        CrashsimReq *r = l->data;
        if (r->bs == bs) {
            assert(!r->co);
            g_queue_delete_link(&crashsim.pending, l);
            g_free(r);
        }
        l = next;
    }
}

/* ---- driver callbacks ---- */

static int coroutine_fn crashsim_open(BlockDriverState *bs, QemuOpts *options,
                                      int flags, Error **errp)
{
    BDRVCrashsimState *s = bs->opaque;
    const char *image = qemu_opt_get(options, "image");
    const char *rest;

    if (!image && strstart(bs->filename, "crashsim:", &rest)) {
        image = rest;
    }
    if (!image || !*image) {
        error_setg(errp, "crashsim: no image given (crashsim:IMAGE)");
        return -EINVAL;
    }
    /* O_DIRECT's rules are modelled here: the file below needs none. */
    s->child = bdrv_open_child(image, NULL, NULL,
                               flags & ~(BDRV_O_NOCACHE | BDRV_O_NATIVE_AIO),
                               false, errp);
    if (!s->child) {
        return -EINVAL;
    }
    s->origin_size = bdrv_getlength(s->child);
    if (s->origin_size < 0) {
        error_setg_errno(errp, (int)-s->origin_size,
                         "crashsim: cannot get the length of '%s'", image);
        int ret = (int)s->origin_size;
        bdrv_unref(s->child);
        s->child = NULL;
        return ret;
    }
    s->image = g_strdup(image);
    s->writable = flags & BDRV_O_RDWR;
    s->direct = flags & BDRV_O_NOCACHE;
    s->origin = crashsim_map_new();
    crashsim_view_init(&s->live, s, s->origin_size, NULL);
    crashsim_view_init(&s->durable, s, s->origin_size, NULL);
    g_queue_init(&s->log);
    if (!crashsim.nodes) {
        crashsim.nodes = g_ptr_array_new();
    }
    g_ptr_array_add(crashsim.nodes, bs);
    crashsim_sim_start();
    return 0;
}

static gint crashsim_sector_cmp(gconstpointer a, gconstpointer b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorted sector numbers of a map. */
static GArray *crashsim_map_keys(GHashTable *map)
{
    GArray *keys = g_array_new(FALSE, FALSE, sizeof(int64_t));
    GHashTableIter it;
    gpointer k;

    g_hash_table_iter_init(&it, map);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        int64_t sector = GPOINTER_TO_SIZE(k);
        g_array_append_val(keys, sector);
    }
    g_array_sort(keys, crashsim_sector_cmp);
    return keys;
}

/* A clean close: the file below takes the final content. */
static int coroutine_fn crashsim_write_back(BDRVCrashsimState *s)
{
    CrashsimView *v = &s->live;
    GArray *keys = crashsim_map_keys(v->map);
    uint8_t *buf = g_malloc(CS_COPY_CHUNK);
    int ret = 0;

    if (v->zero_from < s->origin_size) {
        ret = bdrv_co_truncate(s->child, v->zero_from, false,
                               PREALLOC_MODE_OFF, NULL);
    }
    for (guint i = 0; i < keys->len && ret >= 0;) {
        int64_t first = g_array_index(keys, int64_t, i);
        guint n = 0;
        while (i + n < keys->len &&
               g_array_index(keys, int64_t, i + n) == first + n &&
               (n + 1) * CS_SECTOR <= CS_COPY_CHUNK) {
            memcpy(buf + n * CS_SECTOR, crashsim_map_get(v->map, first + n),
                   CS_SECTOR);
            n++;
        }
        ret = bdrv_co_pwrite(s->child, first * CS_SECTOR, n * CS_SECTOR, buf,
                             0);
        i += n;
    }
    if (ret >= 0) {
        ret = bdrv_co_truncate(s->child, v->size, false, PREALLOC_MODE_OFF,
                               NULL);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(s->child);
    }
    g_free(buf);
    g_array_free(keys, TRUE);
    return ret;
}

static void coroutine_fn crashsim_close(BlockDriverState *bs)
{
    BDRVCrashsimState *s = bs->opaque;

    crashsim_drop_pending(bs);
    if (s->writable && !crashsim.crashed) {
        /* The layer flushed us before closing: the content is durable
         * (cache=unsafe users opted out of durability, and early-acked
         * flushes are a fault injected on purpose). */
        bool early = crashsim.early_flush_image &&
                     !strcmp(crashsim.early_flush_image, s->image);
        if (s->log.length && !(bs->open_flags & BDRV_O_NO_FLUSH) && !early) {
            fprintf(stderr, "crashsim: %s closed with %u unflushed ops; its "
                    "crash content is no longer known\n", s->image,
                    s->log.length);
        }
        if (crashsim_write_back(s) < 0) {
            fprintf(stderr, "crashsim: cannot write back '%s'\n", s->image);
        }
    }
    g_ptr_array_remove(crashsim.nodes, bs);
    g_queue_clear_full(&s->log, (GDestroyNotify)crashsim_op_free);
    g_hash_table_destroy(s->origin);
    g_hash_table_destroy(s->live.map);
    g_hash_table_destroy(s->durable.map);
    g_free(s->image);
    bdrv_unref(s->child);
}

static void crashsim_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVCrashsimState *s = bs->opaque;

    bs->bl.request_alignment = s->direct ? CS_DIRECT_ALIGN : 1;
    bs->bl.min_mem_alignment = s->direct ? CS_DIRECT_ALIGN : 1;
}

/* O_DIRECT refuses what is not aligned to the logical block size. */
static int crashsim_check_direct(BDRVCrashsimState *s, int64_t offset,
                                 int64_t bytes)
{
    if (s->direct && (offset % CS_DIRECT_ALIGN || bytes % CS_DIRECT_ALIGN)) {
        return -EINVAL;
    }
    return 0;
}

static int coroutine_fn crashsim_co_preadv(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_check_direct(s, offset, bytes);

    if (ret < 0) {
        return ret;
    }
    if (crashsim.crashed) {
        return -EIO;
    }
    CrashsimReq *r = crashsim_req_new(bs, CS_REQ_READ);
    r->offset = offset;
    r->bytes = bytes;
    r->buf = g_malloc(bytes);
    ret = crashsim_load(s, offset / CS_SECTOR,
                        DIV_ROUND_UP(offset + bytes, CS_SECTOR), true);
    if (ret >= 0) {
        ret = crashsim_req_wait(r, true);
    }
    if (ret >= 0) {
        qemu_iovec_from_buf(qiov, qiov_offset, r->buf, bytes);
    }
    g_free(r->buf);
    g_free(r);
    return ret;
}

/*
 * Issue a logged op of kind over [offset, offset + bytes) (truncate: offset
 * is the new size) with data (writes), and wait for its completion.
 */
static int coroutine_fn crashsim_mutate(BlockDriverState *bs,
                                        CrashsimOpKind kind, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret < 0) {
        return ret;
    }
    CrashsimReq *r = crashsim_req_new(bs, CS_REQ_MUTATE);
    CrashsimOp *op = g_new0(CrashsimOp, 1);
    op->kind = kind;
    op->offset = offset;
    op->bytes = bytes;
    op->seq = r->seq;
    if (qiov) {
        op->data = g_malloc(bytes);
        qemu_iovec_to_buf(qiov, qiov_offset, op->data, bytes);
    }
    r->op = op;
    /* In the log from now on: it may land even if the power fails. */
    g_queue_push_tail(&s->log, op);
    if (kind == CS_OP_TRUNCATE) {
        /* The sectors holding the old and new ends get cut in part. */
        ret = crashsim_load_edges(s, offset, 0);
        if (ret >= 0) {
            ret = crashsim_load_edges(s, s->live.size, 0);
        }
        if (ret >= 0) {
            ret = crashsim_load_edges(s, s->durable.size, 0);
        }
    } else {
        ret = crashsim_load_edges(s, offset, bytes);
    }
    if (ret >= 0) {
        ret = crashsim_req_wait(r, true);
    } else {
        /* Never reached the disk. */
        g_queue_remove(&s->log, op);
        crashsim_op_free(op);
    }
    g_free(r);
    return ret;
}

static int coroutine_fn crashsim_co_pwritev(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    int ret = crashsim_check_direct(bs->opaque, offset, bytes);

    if (ret < 0) {
        return ret;
    }
    return crashsim_mutate(bs, CS_OP_WRITE, offset, bytes, qiov, qiov_offset);
}

static int coroutine_fn crashsim_co_pwrite_zeroes(BlockDriverState *bs,
                                                  int64_t offset,
                                                  int64_t bytes,
                                                  BdrvRequestFlags flags)
{
    int ret = crashsim_check_direct(bs->opaque, offset, bytes);

    if (ret < 0) {
        return ret;
    }
    return crashsim_mutate(bs, CS_OP_ZERO, offset, bytes, NULL, 0);
}

static int coroutine_fn crashsim_co_pdiscard(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes)
{
    int ret = crashsim_check_direct(bs->opaque, offset, bytes);

    if (ret < 0) {
        return ret;
    }
    return crashsim_mutate(bs, CS_OP_DISCARD, offset, bytes, NULL, 0);
}

/*
 * A flush covers the ops completed when it is issued. The layer does not
 * flush the file below (crashsim keeps it as bs-private child): it is not
 * written while the node is open.
 */
static int coroutine_fn crashsim_co_flush(BlockDriverState *bs)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret < 0) {
        return ret;
    }
    CrashsimReq *r = crashsim_req_new(bs, CS_REQ_FLUSH);
    bool early = crashsim.early_flush_image &&
                 !strcmp(crashsim.early_flush_image, s->image);
    r->flush_upto = s->done_counter;
    ret = crashsim_req_wait(r, !early);
    if (!early) {
        g_free(r);
    }
    return ret;
}

static int coroutine_fn crashsim_co_truncate(BlockDriverState *bs,
                                             int64_t offset, bool exact,
                                             PreallocMode prealloc,
                                             Error **errp)
{
    int ret = crashsim_mutate(bs, CS_OP_TRUNCATE, offset, 0, NULL, 0);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "crashsim: truncate failed");
    }
    return ret;
}

static int64_t crashsim_getlength(BlockDriverState *bs)
{
    BDRVCrashsimState *s = bs->opaque;
    return s->live.size;
}

static BlockDriver bdrv_crashsim = {
    .format_name            = "crashsim",
    .protocol_name          = "crashsim",
    .instance_size          = sizeof(BDRVCrashsimState),
    /* A filter for bdrv_header_name_allowed() (never named by an image
     * header); its file is private (s->child), not bs->file, so the layer
     * neither flushes nor inspects it. */
    .is_filter              = true,
    .open_opts              = crashsim_open_opts,

    .bdrv_open              = crashsim_open,
    .bdrv_close             = crashsim_close,
    .bdrv_refresh_limits    = crashsim_refresh_limits,

    .bdrv_co_preadv         = crashsim_co_preadv,
    .bdrv_co_pwritev        = crashsim_co_pwritev,
    .bdrv_co_pwrite_zeroes  = crashsim_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = crashsim_co_pdiscard,
    .bdrv_co_flush          = crashsim_co_flush,
    .bdrv_co_truncate       = crashsim_co_truncate,
    .bdrv_getlength         = crashsim_getlength,

    .supported_write_flags  = 0,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP,
};

BLOCK_DRIVER_REGISTER(bdrv_crashsim)

/* ---- node registry ---- */

bool crashsim_is_node(BlockDriverState *bs)
{
    return bs && bs->drv == &bdrv_crashsim;
}

BlockDriverState *crashsim_node(unsigned i)
{
    if (!crashsim.nodes || i >= crashsim.nodes->len) {
        return NULL;
    }
    return g_ptr_array_index(crashsim.nodes, i);
}

const char *crashsim_node_image(BlockDriverState *bs)
{
    assert(crashsim_is_node(bs));
    return ((BDRVCrashsimState *)bs->opaque)->image;
}

unsigned crashsim_node_log_length(BlockDriverState *bs)
{
    assert(crashsim_is_node(bs));
    return ((BDRVCrashsimState *)bs->opaque)->log.length;
}

/* ---- materializing a crash ---- */

typedef struct CrashsimPiece {
    const CrashsimOp *op;
    int64_t offset, bytes;
} CrashsimPiece;

/* The logged ops cut into the pieces that land independently. */
static GArray *crashsim_pieces(BDRVCrashsimState *s)
{
    GArray *pieces = g_array_new(FALSE, FALSE, sizeof(CrashsimPiece));

    for (GList *l = s->log.head; l; l = l->next) {
        const CrashsimOp *op = l->data;
        if (op->kind == CS_OP_TRUNCATE || !crashsim.torn) {
            CrashsimPiece p = { op, op->offset, op->bytes };
            g_array_append_val(pieces, p);
            continue;
        }
        for (int64_t pos = op->offset; pos < op->offset + op->bytes;) {
            int64_t end = MIN(QEMU_ALIGN_DOWN(pos, CS_SECTOR) + CS_SECTOR,
                              op->offset + op->bytes);
            CrashsimPiece p = { op, pos, end - pos };
            g_array_append_val(pieces, p);
            pos = end;
        }
    }
    return pieces;
}

/* Overlay the durable image with a random subset of pieces, random order. */
static void crashsim_pick_and_apply(BDRVCrashsimState *s, CrashsimView *v,
                                    GRand *rng)
{
    static const double density[] = { 0.0, 0.25, 0.5, 0.75, 1.0 };
    double p = density[g_rand_int_range(rng, 0, ARRAY_SIZE(density))];
    GArray *pieces = crashsim_pieces(s);
    guint n = 0;

    for (guint i = 0; i < pieces->len; i++) {
        if (g_rand_double(rng) < p) {
            g_array_index(pieces, CrashsimPiece, n++) =
                g_array_index(pieces, CrashsimPiece, i);
        }
    }
    for (guint i = n; i > 1; i--) {
        guint j = g_rand_int_range(rng, 0, i);
        CrashsimPiece t = g_array_index(pieces, CrashsimPiece, i - 1);
        g_array_index(pieces, CrashsimPiece, i - 1) =
            g_array_index(pieces, CrashsimPiece, j);
        g_array_index(pieces, CrashsimPiece, j) = t;
    }
    for (guint i = 0; i < n; i++) {
        CrashsimPiece *pc = &g_array_index(pieces, CrashsimPiece, i);
        crashsim_view_apply(v, pc->op, pc->offset, pc->bytes);
    }
    g_array_free(pieces, TRUE);
}

/* Copy the child's data below end (holes stay holes) into fd. */
static int crashsim_copy_origin(BDRVCrashsimState *s, int fd, int64_t end,
                                Error **errp)
{
    uint8_t *buf = g_malloc(CS_COPY_CHUNK);
    int ret = 0;

    end = MIN(end, s->origin_size);
    for (int64_t off = 0; off < end && ret >= 0;) {
        int64_t pnum = 0;
        ret = bdrv_block_status(s->child, off, end - off, &pnum, NULL, NULL);
        if (ret < 0 || pnum <= 0) {
            ret = ret < 0 ? ret : -EIO;
            error_setg_errno(errp, -ret, "crashsim: block status of '%s'",
                             s->image);
            break;
        }
        if (ret & BDRV_BLOCK_ZERO) {
            off += pnum;
            ret = 0;
            continue;
        }
        int64_t len = MIN(pnum, CS_COPY_CHUNK);
        ret = bdrv_pread(s->child, off, len, buf, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "crashsim: cannot read '%s'",
                             s->image);
        } else if (!buffer_is_zero(buf, len) &&
                   pwrite(fd, buf, len, off) != len) {
            ret = -errno;
            error_setg_errno(errp, errno, "crashsim: write a crash image");
        }
        off += len;
    }
    g_free(buf);
    return ret < 0 ? ret : 0;
}

/* Write every sector some map of the overlay chain holds, as v reads it,
 * in runs of contiguous sectors. */
static int crashsim_write_sectors(CrashsimView *v, int fd, Error **errp)
{
    GHashTable *all = g_hash_table_new(g_direct_hash, g_direct_equal);
    uint8_t *buf = g_malloc(CS_COPY_CHUNK);
    GArray *keys;
    int ret = 0;

    for (CrashsimView *x = v; x; x = x->base) {
        GHashTableIter it;
        gpointer k;
        g_hash_table_iter_init(&it, x->map);
        while (g_hash_table_iter_next(&it, &k, NULL)) {
            g_hash_table_add(all, k);
        }
    }
    keys = crashsim_map_keys(all);
    for (guint i = 0; i < keys->len && ret == 0;) {
        int64_t first = g_array_index(keys, int64_t, i);
        guint n = 0;
        while (i + n < keys->len &&
               g_array_index(keys, int64_t, i + n) == first + n &&
               (first + n) * CS_SECTOR < v->size &&
               (n + 1) * CS_SECTOR <= CS_COPY_CHUNK) {
            bool zero;
            const uint8_t *p = crashsim_view_lookup(v, first + n, &zero);
            if (p) {
                memcpy(buf + n * CS_SECTOR, p, CS_SECTOR);
            } else {
                memset(buf + n * CS_SECTOR, 0, CS_SECTOR);
            }
            n++;
        }
        if (n == 0) {
            break;              /* the rest lies past the end */
        }
        if (pwrite(fd, buf, n * CS_SECTOR, first * CS_SECTOR) !=
            n * CS_SECTOR) {
            ret = -errno;
            error_setg_errno(errp, errno, "crashsim: write a crash image");
        }
        i += n;
    }
    g_free(buf);
    g_array_free(keys, TRUE);
    g_hash_table_destroy(all);
    return ret;
}

int crashsim_materialize(BlockDriverState *bs, const char *out_path,
                         GRand *rng, Error **errp)
{
    BDRVCrashsimState *s = bs->opaque;
    CrashsimView v;
    int ret = 0;
    int fd;

    assert(crashsim_is_node(bs));
    crashsim_view_init(&v, s, s->durable.size, &s->durable);
    crashsim_pick_and_apply(s, &v, rng);
    fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "crashsim: cannot create '%s'",
                         out_path);
        goto out;
    }
    ret = crashsim_copy_origin(s, fd, MIN(MIN(v.zero_from, v.size),
                                          s->durable.zero_from), errp);
    if (ret == 0) {
        ret = crashsim_write_sectors(&v, fd, errp);
    }
    if (ret == 0 && ftruncate(fd, v.size) < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "crashsim: truncate '%s'", out_path);
    }
    close(fd);
out:
    g_hash_table_destroy(v.map);
    return ret;
}

int crashsim_materialize_all(const char *suffix, GRand *rng, Error **errp)
{
    BlockDriverState *bs;
    unsigned i, n = 0;

    for (i = 0; (bs = crashsim_node(i)); i++) {
        BDRVCrashsimState *s = bs->opaque;
        const char *image = crashsim_node_image(bs);
        const char *path;
        if (!s->writable) {
            continue;           /* a backing file: nothing can change */
        }
        if (!strstart(image, "file:", &path)) {
            path = image;
        }
        char *out = g_strconcat(path, suffix, NULL);
        int ret = crashsim_materialize(bs, out, rng, errp);
        g_free(out);
        if (ret < 0) {
            return ret;
        }
        n++;
    }
    return (int)n;
}
