/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest's guest: a stream of concurrent writes, zero writes, reads and
 * flushes (up to the iteration's queue depth) over the modelled windows,
 * with quiet points and grows, recording every acknowledgement in the model.
 * All choices come from the iteration's random stream, and crashsim makes
 * completions reproducible, so a dry run and the armed run issue the same
 * requests in the same order up to the cut.
 */
#include "crashtest.h"
#include "util/aio.h"
#include "util/coroutine.h"

typedef enum ReqKind { REQ_WRITE, REQ_ZERO, REQ_READ, REQ_FLUSH } ReqKind;

typedef struct Work Work;

typedef struct Req {
    Work *w;
    ReqKind kind;
    int64_t offset, len;
    uint32_t id;                /* writes: model id */
    BdrvRequestFlags flags;
    uint64_t covers;            /* flush: acks it makes durable */
    uint32_t *snap;             /* read: ids of the cells when issued */
    GArray *extra;              /* read: uint32_t ids of writes in flight
                                 * at some time during the read */
    struct Req *next;           /* in-flight list */
} Req;

struct Work {
    BlockBackend *blk;
    Model *m;
    const IterConfig *ic;
    GRand *rng;
    GString *why;
    WorkStats *ws;
    Req *inflight;
    int n_inflight;
    CoQueue slot;               /* the driver waits here for completions */
    int ret;                    /* first error before the cut */
    bool done;
};

static const char *const req_names[] = { "write", "zero write", "read",
                                         "flush" };

/* Still worth issuing requests: no error so far and the power is on. */
static bool work_go(Work *w)
{
    return w->ret >= 0 && !crashsim_crashed();
}

static bool ranges_overlap(int64_t a, int64_t alen, int64_t b, int64_t blen)
{
    return a < b + blen && b < a + alen;
}

static bool req_is_write(const Req *r)
{
    return r->kind == REQ_WRITE || r->kind == REQ_ZERO;
}

static void work_fail(Work *w, int ret, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void work_fail(Work *w, int ret, const char *fmt, ...)
{
    va_list ap;

    if (w->ret < 0) {
        return;
    }
    w->ret = ret;
    va_start(ap, fmt);
    g_string_append_vprintf(w->why, fmt, ap);
    va_end(ap);
}

/* ---- completing a request ---- */

/* A read returns, per cell, the value when it was issued or that of a
 * write in flight meanwhile. */
static void req_check_read(Req *r, const uint8_t *buf)
{
    Work *w = r->w;
    int64_t first = layout_cell(w->m->layout, r->offset);

    for (int64_t i = 0; i < r->len / CELL; i++) {
        int64_t where = 0;
        int64_t disk_cell = r->offset / CELL + i;
        int64_t v = cell_decode(buf + i * CELL, disk_cell, &where);
        bool ok = v >= 0 && v == model_value(w->m, r->snap[i]);
        for (guint k = 0; v >= 0 && !ok && k < r->extra->len; k++) {
            uint32_t id = g_array_index(r->extra, uint32_t, k);
            const WriteRec *wr = &g_array_index(w->m->writes, WriteRec,
                                                id - ID_FIRST_WRITE);
            ok = first + i >= wr->first && first + i < wr->end &&
                 model_value(w->m, id) == v;
        }
        if (!ok) {
            work_fail(w, -EILSEQ, "live read at %" PRId64 " returned %s%"
                      PRId64 " (expected %u; before any crash)",
                      disk_cell * CELL, v == -1 ? "garbage " :
                      v == -2 ? "data of another offset " : "value ",
                      v, model_value(w->m, r->snap[i]));
            return;
        }
    }
}

/* --trace: one line per request issued and completed, on stderr. */
static void req_trace(const Req *r, const char *what, int ret)
{
    if (!cfg.trace) {
        return;
    }
    fprintf(stderr, "trace: %s %s", what, req_names[r->kind]);
    if (r->kind != REQ_FLUSH) {
        fprintf(stderr, " [%" PRId64 ", +%" PRId64 ")", r->offset, r->len);
    }
    if (req_is_write(r)) {
        fprintf(stderr, " id %u%s", r->id,
                r->flags & BDRV_REQ_MAY_UNMAP ? " unmap" : "");
    }
    if (ret < 0) {
        fprintf(stderr, ": %s", strerror(-ret));
    }
    fprintf(stderr, "\n");
}

static void req_done(Req *r, int ret)
{
    Work *w = r->w;
    bool before_cut = !crashsim_crashed();

    req_trace(r, "done", ret);

    if (ret < 0) {
        if (req_is_write(r)) {
            model_fail_write(w->m, r->id);
        }
        if (before_cut) {
            work_fail(w, ret, "%s at %" PRId64 ": %s (before the cut)",
                      req_names[r->kind], r->offset, strerror(-ret));
        }
    } else if (before_cut) {
        if (req_is_write(r)) {
            model_ack_write(w->m, r->id);
        } else if (r->kind == REQ_FLUSH) {
            model_flush_done(w->m, r->covers);
        }
    }
    for (Req **p = &w->inflight; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    w->n_inflight--;
    qemu_co_queue_restart_all(&w->slot);
    if (r->extra) {
        g_array_free(r->extra, TRUE);
    }
    g_free(r->snap);
    g_free(r);
}

static void coroutine_fn req_entry(void *opaque)
{
    Req *r = opaque;
    BlockBackend *blk = r->w->blk;
    uint8_t *buf = NULL;
    int ret;

    switch (r->kind) {
    case REQ_WRITE:
        buf = g_malloc(r->len);
        fill_range(buf, r->id, r->offset, r->len);
        ret = blk_co_pwrite(blk, r->offset, r->len, buf, 0);
        break;
    case REQ_ZERO:
        ret = blk_co_pwrite_zeroes(blk, r->offset, r->len, r->flags);
        break;
    case REQ_READ:
        buf = g_malloc(r->len);
        ret = blk_co_pread(blk, r->offset, r->len, buf, 0);
        if (ret >= 0 && !crashsim_crashed()) {
            req_check_read(r, buf);
        }
        break;
    default:
        ret = blk_co_flush(blk);
        break;
    }
    g_free(buf);
    req_done(r, ret);
}

/* ---- issuing ---- */

static void work_issue(Work *w, Req *r)
{
    Model *m = w->m;

    r->w = w;
    if (req_is_write(r)) {
        r->id = model_issue_write(m, r->offset, r->len, r->kind == REQ_ZERO);
        for (Req *x = w->inflight; x; x = x->next) {
            if (x->kind == REQ_READ &&
                ranges_overlap(x->offset, x->len, r->offset, r->len)) {
                g_array_append_val(x->extra, r->id);
            }
        }
    } else if (r->kind == REQ_READ) {
        int64_t first = layout_cell(m->layout, r->offset);
        r->snap = g_memdup2(m->cur + first,
                            r->len / CELL * sizeof(uint32_t));
        r->extra = g_array_new(FALSE, FALSE, sizeof(uint32_t));
        for (Req *x = w->inflight; x; x = x->next) {
            if (req_is_write(x) &&
                ranges_overlap(x->offset, x->len, r->offset, r->len)) {
                g_array_append_val(r->extra, x->id);
            }
        }
        w->ws->reads++;
    } else {
        r->covers = model_flush_issued(m);
        w->ws->flushes++;
    }
    r->next = w->inflight;
    w->inflight = r;
    w->n_inflight++;
    w->ws->requests++;
    w->ws->max_inflight = MAX(w->ws->max_inflight, (unsigned)w->n_inflight);
    req_trace(r, "issue", 0);
    qemu_coroutine_enter(qemu_coroutine_create(req_entry, r));
}

/* Bytes of window i the guest can address now (the grow window grows). */
static int64_t window_usable(Work *w, int i)
{
    const Window *win = &w->m->layout->win[i];
    return MAX(0, MIN(win->len, w->m->cur_size - win->offset));
}

/*
 * A range inside one window: 512 B .. 256 KiB, log-uniform, offsets aligned
 * to 16 B, 512 B, 4 KiB, 64 KiB or the cluster size. False if the chosen
 * window is not usable yet.
 */
static bool pick_range(Work *w, int64_t *off, int64_t *len)
{
    const Layout *l = w->m->layout;
    int64_t cs = w->ic->cluster_size ? w->ic->cluster_size : 64 * KiB;
    int64_t aligns[] = { CELL, 512, 4096, 64 * KiB, cs };
    int i = g_rand_int_range(w->rng, 0, l->nwin);
    int order = g_rand_int_range(w->rng, 9, 18);
    int64_t align = aligns[g_rand_int_range(w->rng, 0, ARRAY_SIZE(aligns))];
    int64_t usable = window_usable(w, i);
    int64_t n;

    n = QEMU_ALIGN_DOWN((1 << order) + g_rand_int_range(w->rng, 0, 1 << order),
                        CELL);
    if (g_rand_int_range(w->rng, 0, 4) == 0) {
        n = QEMU_ALIGN_UP(n, align);
    }
    if (usable < CELL) {
        return false;
    }
    n = MIN(n, usable);
    align = MIN(align, usable);
    *len = n;
    *off = l->win[i].offset +
           QEMU_ALIGN_DOWN(g_rand_int_range(w->rng, 0, usable - n + 1), align);
    if (*off + n > l->win[i].offset + usable) {
        *off = l->win[i].offset + usable - n;
    }
    return true;
}

static bool overlaps_inflight_write(Work *w, int64_t off, int64_t len)
{
    for (Req *x = w->inflight; x; x = x->next) {
        if (req_is_write(x) && ranges_overlap(x->offset, x->len, off, len)) {
            return true;
        }
    }
    return false;
}

static void coroutine_fn work_wait(Work *w)
{
    qemu_co_queue_wait(&w->slot, NULL);
}

static void coroutine_fn work_drain(Work *w)
{
    while (w->n_inflight) {
        work_wait(w);
    }
}

/*
 * A write never overlaps one in flight: the disk may order those either
 * way, and no guest can expect either. It may overlap completed ones, and
 * reads in flight.
 */
static void coroutine_fn work_write(Work *w, bool zero)
{
    Req *r = g_new0(Req, 1);

    r->kind = zero ? REQ_ZERO : REQ_WRITE;
    for (;;) {
        for (int tries = 0; tries < 16; tries++) {
            if (pick_range(w, &r->offset, &r->len) &&
                !overlaps_inflight_write(w, r->offset, r->len)) {
                if (zero && g_rand_boolean(w->rng)) {
                    r->flags = BDRV_REQ_MAY_UNMAP;
                }
                work_issue(w, r);
                return;
            }
        }
        if (!w->n_inflight || !work_go(w)) {
            g_free(r);
            return;
        }
        work_wait(w);
    }
}

static void coroutine_fn work_read(Work *w)
{
    Req *r = g_new0(Req, 1);

    r->kind = REQ_READ;
    if (!pick_range(w, &r->offset, &r->len)) {
        g_free(r);
        return;
    }
    work_issue(w, r);
}

static void coroutine_fn work_flush(Work *w)
{
    Req *r = g_new0(Req, 1);

    r->kind = REQ_FLUSH;
    work_issue(w, r);
}

/* Grow the disk into the grow window (nothing in flight). */
static void coroutine_fn work_grow(Work *w)
{
    const Layout *l = w->m->layout;
    int64_t room = l->size + GROW_ROOM - w->m->cur_size;
    int64_t size = w->m->cur_size + g_rand_int_range(w->rng, 1, 5) * 64 * KiB;
    Error *err = NULL;

    if (room < 64 * KiB) {
        return;
    }
    size = MIN(size, l->size + GROW_ROOM);
    guint idx = model_resize_issued(w->m, size);
    if (cfg.trace) {
        fprintf(stderr, "trace: grow to %" PRId64 "\n", size);
    }
    int ret = blk_co_truncate(w->blk, size, false, PREALLOC_MODE_OFF, &err);
    if (ret >= 0 && !crashsim_crashed()) {
        model_resize_done(w->m, idx);
    } else if (ret < 0 && !crashsim_crashed()) {
        work_fail(w, ret, "grow to %" PRId64 ": %s", size,
                  error_get_pretty(err));
    }
    w->ws->truncates++;
    error_free(err);
}

static void coroutine_fn work_driver(void *opaque)
{
    Work *w = opaque;
    const IterConfig *ic = w->ic;

    for (int step = 0; step < ic->steps && work_go(w); step++) {
        int dice = g_rand_int_range(w->rng, 0, 100);
        if (dice < 5) {
            /* A quiet point, and sometimes a grow at it. */
            work_drain(w);
            if (ic->truncate && dice < 2 && work_go(w)) {
                work_grow(w);
            }
            continue;
        }
        while (w->n_inflight >= ic->qd && work_go(w)) {
            work_wait(w);
        }
        if (!work_go(w)) {
            break;
        }
        if (dice < 12) {
            work_flush(w);
        } else if (dice < 30) {
            work_read(w);
        } else {
            work_write(w, dice < 38);
        }
    }
    work_drain(w);
    if (work_go(w)) {
        uint64_t covers = model_flush_issued(w->m);
        int ret = blk_co_flush(w->blk);
        if (ret >= 0 && !crashsim_crashed()) {
            model_flush_done(w->m, covers);
        } else if (ret < 0 && !crashsim_crashed()) {
            work_fail(w, ret, "final flush: %s", strerror(-ret));
        }
    }
    w->done = true;
}

int run_workload(BlockBackend *blk, Model *m, const IterConfig *ic,
                 GRand *rng, GString *why, WorkStats *ws)
{
    Work w = { .blk = blk, .m = m, .ic = ic, .rng = rng, .why = why,
               .ws = ws };

    qemu_co_queue_init(&w.slot);
    qemu_coroutine_enter(qemu_coroutine_create(work_driver, &w));
    AIO_WAIT_WHILE(!w.done);
    return w.ret;
}
