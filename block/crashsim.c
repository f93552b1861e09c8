/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashsim: a filter that passes requests to its image and remembers which
 * writes a flush made durable, so a test can cut the power at any device op
 * and write out what the disk could hold afterwards. Semantics: crashsim.h.
 */
#include "block_int.h"
#include "block/crashsim.h"
#include "util/cutils.h"

#include <fcntl.h>

#define CS_SECTOR        512
#define CS_MATERIALIZE_CHUNK (1 * MiB)

typedef enum CrashsimOpKind {
    CS_OP_WRITE,
    CS_OP_ZERO,
    CS_OP_DISCARD,
    CS_OP_TRUNCATE,
} CrashsimOpKind;

typedef struct CrashsimOp {
    CrashsimOpKind kind;
    int64_t offset;              /* truncate: the new size */
    int64_t bytes;               /* truncate: 0 */
    uint8_t *data;               /* CS_OP_WRITE only */
    uint64_t done_seq;           /* completion number; 0 while in flight */
} CrashsimOp;

/*
 * Sector maps: sector number -> g_malloc'd CS_SECTOR bytes. The content of
 * sector s in the durable image is durable[s], else origin[s], else (when s
 * lies below origin_size) the child's current sector, which nobody changed
 * since open, else zero.
 */
typedef struct BDRVCrashsimState {
    char *image;
    GHashTable *origin;          /* child content at open, saved on 1st change */
    int64_t origin_size;
    GHashTable *durable;         /* durable content differing from open */
    int64_t durable_size;
    GQueue log;                  /* of CrashsimOp *, issue order */
    uint64_t done_counter;
    CoMutex capture_lock;
} BDRVCrashsimState;

/* Process-wide power state. */
static struct {
    uint64_t op_count;
    uint64_t armed_at;           /* 0: not armed */
    bool crashed;
    bool torn;
    CrashsimHook *hook;
    void *hook_opaque;
    GPtrArray *nodes;            /* open crashsim nodes */
} crashsim;

static const QemuOptDesc crashsim_open_opts[] = {
    { "image", QEMU_OPT_STRING, "The image to open below the filter" },
    { NULL }
};

/* ---- power control ---- */

void crashsim_reset(void)
{
    crashsim.op_count = 0;
    crashsim.armed_at = 0;
    crashsim.crashed = false;
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

/* Cut the power and tell the hook (once). */
static void crashsim_cut(void)
{
    if (crashsim.crashed) {
        return;
    }
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

/* ---- sector maps ---- */

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

/*
 * Durable content of sector s if it is known without reading the child;
 * NULL means "the child's current sector" (only when s < origin_size).
 * *zero is set when the sector is known to be zero.
 */
static const uint8_t *crashsim_durable_sector(BDRVCrashsimState *s,
                                              int64_t sector, bool *zero)
{
    const uint8_t *p = crashsim_map_get(s->durable, sector);

    *zero = false;
    if (!p) {
        p = crashsim_map_get(s->origin, sector);
    }
    if (!p && sector * CS_SECTOR >= s->origin_size) {
        *zero = true;
    }
    return p;
}

/*
 * Save the child's content of every sector in [start, end) that has not been
 * saved yet, before anything changes it. Serialised so that a write to a
 * sector is issued only after that sector's save has completed.
 */
static int coroutine_fn crashsim_capture(BlockDriverState *bs, int64_t start,
                                         int64_t end)
{
    BDRVCrashsimState *s = bs->opaque;
    int64_t first = start / CS_SECTOR;
    int64_t last = DIV_ROUND_UP(end, CS_SECTOR);
    int ret = 0;

    qemu_co_mutex_lock(&s->capture_lock);
    int64_t child_len = bdrv_getlength(bs->file);
    int64_t limit = MIN(s->origin_size, MAX(child_len, 0));
    for (int64_t sec = first; sec < last && ret == 0;) {
        if (crashsim_map_get(s->origin, sec)) {
            sec++;
            continue;
        }
        int64_t run_end = sec + 1;
        while (run_end < last && !crashsim_map_get(s->origin, run_end)) {
            run_end++;
        }
        int64_t n = run_end - sec;
        uint8_t *buf = qemu_blockalign(n * CS_SECTOR);
        memset(buf, 0, n * CS_SECTOR);
        int64_t rd = MIN(run_end * CS_SECTOR, limit) - sec * CS_SECTOR;
        if (rd > 0) {
            ret = bdrv_co_pread(bs->file, sec * CS_SECTOR, rd, buf, 0);
        }
        for (int64_t i = 0; i < n && ret == 0; i++) {
            crashsim_map_put(s->origin, sec + i,
                             g_memdup2(buf + i * CS_SECTOR, CS_SECTOR));
        }
        qemu_vfree(buf);
        sec = run_end;
    }
    qemu_co_mutex_unlock(&s->capture_lock);
    return ret;
}

/* ---- applying ops to a view ---- */

/*
 * A view is a sector map layered over a base: durable-over-origin for the
 * durable image itself, overlay-over-durable when materializing. Sectors the
 * base knows only as "the child's current content" were never changed, so
 * no logged op touches them: applying ops only needs known sectors.
 */
typedef struct CrashsimView {
    BDRVCrashsimState *s;
    GHashTable *map;
    bool over_durable;           /* base is the durable image, else origin */
    int64_t size;
} CrashsimView;

static uint8_t *crashsim_view_sector(CrashsimView *v, int64_t sector)
{
    uint8_t *p = crashsim_map_get(v->map, sector);
    const uint8_t *base = NULL;
    bool zero = false;

    if (p) {
        return p;
    }
    if (v->over_durable) {
        base = crashsim_durable_sector(v->s, sector, &zero);
    } else {
        base = crashsim_map_get(v->s->origin, sector);
    }
    p = base ? g_memdup2(base, CS_SECTOR) : g_malloc0(CS_SECTOR);
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
        uint8_t *p = crashsim_view_sector(v, sector);
        if (data) {
            memcpy(p + in, data + (pos - offset), n);
        } else {
            memset(p + in, 0, n);
        }
        pos += n;
    }
    v->size = MAX(v->size, offset + bytes);
}

static void crashsim_view_truncate(CrashsimView *v, int64_t size)
{
    if (size < v->size) {
        crashsim_view_write(v, size, v->size - size, NULL);
    } else if (size > v->size) {
        /* Stale bytes past the old end must read as zero after a grow. */
        int64_t known = MAX(v->s->origin_size, v->size);
        if (known > v->size) {
            crashsim_view_write(v, v->size, MIN(size, known) - v->size, NULL);
        }
    }
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

/* ---- the log ---- */

static void crashsim_op_free(CrashsimOp *op)
{
    g_free(op->data);
    g_free(op);
}

static CrashsimOp *crashsim_log_add(BDRVCrashsimState *s, CrashsimOpKind kind,
                                    int64_t offset, int64_t bytes)
{
    CrashsimOp *op = g_new0(CrashsimOp, 1);
    op->kind = kind;
    op->offset = offset;
    op->bytes = bytes;
    g_queue_push_tail(&s->log, op);
    return op;
}

/* The child finished op with ret: remember completion, or forget a refusal. */
static void crashsim_log_done(BDRVCrashsimState *s, CrashsimOp *op, int ret)
{
    if (ret < 0) {
        g_queue_remove(&s->log, op);
        crashsim_op_free(op);
        return;
    }
    op->done_seq = ++s->done_counter;
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
    CrashsimView v = { .s = s, .map = s->durable, .over_durable = false,
                       .size = s->durable_size };

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
        crashsim_view_apply(&v, op, op->offset, op->bytes);
    }
    s->durable_size = v.size;
    g_list_free_full(done, (GDestroyNotify)crashsim_op_free);
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
    bs->file = bdrv_open_child(image, NULL, NULL, flags, false, errp);
    if (!bs->file) {
        return -EINVAL;
    }
    s->origin_size = bdrv_getlength(bs->file);
    if (s->origin_size < 0) {
        error_setg_errno(errp, (int)-s->origin_size,
                         "crashsim: cannot get the length of '%s'", image);
        int ret = (int)s->origin_size;
        bdrv_unref(bs->file);
        bs->file = NULL;
        return ret;
    }
    s->image = g_strdup(image);
    s->durable_size = s->origin_size;
    s->origin = crashsim_map_new();
    s->durable = crashsim_map_new();
    g_queue_init(&s->log);
    qemu_co_mutex_init(&s->capture_lock);
    if (!crashsim.nodes) {
        crashsim.nodes = g_ptr_array_new();
    }
    g_ptr_array_add(crashsim.nodes, bs);
    return 0;
}

static void coroutine_fn crashsim_close(BlockDriverState *bs)
{
    BDRVCrashsimState *s = bs->opaque;

    /* The layer flushed us before closing: a clean close leaves the file
     * fully durable, so forgetting the log loses nothing (cache=unsafe
     * users opted out of durability). */
    if (!crashsim.crashed && s->log.length &&
        !(bs->open_flags & BDRV_O_NO_FLUSH)) {
        fprintf(stderr, "crashsim: %s closed with %u unflushed ops; its "
                "crash content is no longer known\n", s->image,
                s->log.length);
    }
    g_ptr_array_remove(crashsim.nodes, bs);
    g_queue_clear_full(&s->log, (GDestroyNotify)crashsim_op_free);
    g_hash_table_destroy(s->origin);
    g_hash_table_destroy(s->durable);
    g_free(s->image);
}

static int coroutine_fn crashsim_co_preadv(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    if (crashsim.crashed) {
        return -EIO;
    }
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags);
}

static int coroutine_fn crashsim_co_pwritev(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret == 0) {
        ret = crashsim_capture(bs, offset, offset + bytes);
    }
    if (ret < 0) {
        return ret;
    }
    CrashsimOp *op = crashsim_log_add(s, CS_OP_WRITE, offset, bytes);
    op->data = g_malloc(bytes);
    qemu_iovec_to_buf(qiov, qiov_offset, op->data, bytes);
    ret = bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags);
    crashsim_log_done(s, op, ret);
    return ret;
}

static int coroutine_fn crashsim_co_pwrite_zeroes(BlockDriverState *bs,
                                                  int64_t offset,
                                                  int64_t bytes,
                                                  BdrvRequestFlags flags)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret == 0) {
        ret = crashsim_capture(bs, offset, offset + bytes);
    }
    if (ret < 0) {
        return ret;
    }
    CrashsimOp *op = crashsim_log_add(s, CS_OP_ZERO, offset, bytes);
    ret = bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
    crashsim_log_done(s, op, ret);
    return ret;
}

static int coroutine_fn crashsim_co_pdiscard(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret == 0) {
        ret = crashsim_capture(bs, offset, offset + bytes);
    }
    if (ret < 0) {
        return ret;
    }
    CrashsimOp *op = crashsim_log_add(s, CS_OP_DISCARD, offset, bytes);
    ret = bdrv_co_pdiscard(bs->file, offset, bytes);
    crashsim_log_done(s, op, ret);
    return ret;
}

/*
 * The layer flushes bs->file again after this returns; flushing it here
 * ourselves is what lets us commit exactly when the child flush completed.
 */
static int coroutine_fn crashsim_co_flush(BlockDriverState *bs)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret < 0) {
        return ret;
    }
    uint64_t upto = s->done_counter;
    ret = bdrv_co_flush(bs->file);
    if (ret < 0) {
        return ret;
    }
    if (crashsim.crashed) {
        return -EIO;            /* the power failed before the flush ended */
    }
    if (!(bs->open_flags & BDRV_O_NO_FLUSH)) {
        crashsim_commit(s, upto);
    }
    return 0;
}

static int coroutine_fn crashsim_co_truncate(BlockDriverState *bs,
                                             int64_t offset, bool exact,
                                             PreallocMode prealloc,
                                             Error **errp)
{
    BDRVCrashsimState *s = bs->opaque;
    int ret = crashsim_issue();

    if (ret == 0) {
        int64_t len = bdrv_getlength(bs->file);
        if (len > offset) {
            ret = crashsim_capture(bs, offset, len);
        }
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "crashsim: truncate failed");
        return ret;
    }
    CrashsimOp *op = crashsim_log_add(s, CS_OP_TRUNCATE, offset, 0);
    ret = bdrv_co_truncate(bs->file, offset, exact, prealloc, errp);
    crashsim_log_done(s, op, ret);
    return ret;
}

static int64_t crashsim_getlength(BlockDriverState *bs)
{
    return bdrv_getlength(bs->file);
}

static BlockDriver bdrv_crashsim = {
    .format_name            = "crashsim",
    .protocol_name          = "crashsim",
    .instance_size          = sizeof(BDRVCrashsimState),
    .is_filter              = true,
    .open_opts              = crashsim_open_opts,

    .bdrv_open              = crashsim_open,
    .bdrv_close             = crashsim_close,

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

/* Fill buf with [off, off + len) of the view (child read for the rest). */
static int crashsim_view_read(BlockDriverState *bs, CrashsimView *v,
                              int64_t off, int64_t len, uint8_t *buf,
                              int64_t child_len)
{
    BDRVCrashsimState *s = bs->opaque;
    int64_t rd = MIN(off + len, MIN(child_len, s->origin_size)) - off;

    memset(buf, 0, len);
    if (rd > 0) {
        int ret = bdrv_pread(bs->file, off, rd, buf, 0);
        if (ret < 0) {
            return ret;
        }
    }
    for (int64_t pos = off; pos < off + len; pos += CS_SECTOR) {
        int64_t sector = pos / CS_SECTOR;
        const uint8_t *p = crashsim_map_get(v->map, sector);
        bool zero = false;
        if (!p) {
            p = crashsim_durable_sector(s, sector, &zero);
        }
        if (p) {
            memcpy(buf + (pos - off), p, MIN(CS_SECTOR, off + len - pos));
        } else if (zero) {
            memset(buf + (pos - off), 0, MIN(CS_SECTOR, off + len - pos));
        }
    }
    return 0;
}

int crashsim_materialize(BlockDriverState *bs, const char *out_path,
                         GRand *rng, Error **errp)
{
    BDRVCrashsimState *s = bs->opaque;
    CrashsimView v = { .s = s, .map = crashsim_map_new(), .over_durable = true,
                       .size = s->durable_size };
    uint8_t *buf = NULL;
    int ret = 0;
    int fd = -1;

    assert(crashsim_is_node(bs));
    crashsim_pick_and_apply(s, &v, rng);
    int64_t child_len = bdrv_getlength(bs->file);
    if (child_len < 0) {
        ret = (int)child_len;
        error_setg_errno(errp, -ret, "crashsim: cannot get the length of "
                         "'%s'", s->image);
        goto out;
    }
    fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "crashsim: cannot create '%s'",
                         out_path);
        goto out;
    }
    buf = g_malloc(CS_MATERIALIZE_CHUNK);
    for (int64_t off = 0; off < v.size; off += CS_MATERIALIZE_CHUNK) {
        int64_t len = MIN(CS_MATERIALIZE_CHUNK, v.size - off);
        ret = crashsim_view_read(bs, &v, off, len, buf, child_len);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "crashsim: cannot read '%s'",
                             s->image);
            goto out;
        }
        if (buffer_is_zero(buf, len)) {
            continue;
        }
        if (pwrite(fd, buf, len, off) != len) {
            ret = -errno;
            error_setg_errno(errp, errno, "crashsim: write to '%s'",
                             out_path);
            goto out;
        }
    }
    if (ftruncate(fd, v.size) < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "crashsim: truncate '%s'", out_path);
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    g_free(buf);
    g_hash_table_destroy(v.map);
    return ret;
}

int crashsim_materialize_all(const char *suffix, GRand *rng, Error **errp)
{
    BlockDriverState *bs;
    unsigned i;

    for (i = 0; (bs = crashsim_node(i)); i++) {
        const char *image = crashsim_node_image(bs);
        const char *path;
        if (!strstart(image, "file:", &path)) {
            path = image;
        }
        char *out = g_strconcat(path, suffix, NULL);
        int ret = crashsim_materialize(bs, out, rng, errp);
        g_free(out);
        if (ret < 0) {
            return ret;
        }
    }
    return (int)i;
}
