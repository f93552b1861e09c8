/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest: replays random guest workloads on an image of any format with
 * every file below it wrapped by crashsim, cuts the power at a random device
 * op, and checks that the crash image is consistent and holds no guest data
 * that a correct disk could not hold. See docs/crash-testing.md.
 */
#include "block.h"
#include "block_int.h"
#include "block/crashsim.h"
#include "util/aio.h"

#include <getopt.h>
#include <fcntl.h>

#define CELL            16              /* model granularity in bytes */
#define BASE_SIZE       (4 * MiB)       /* virtual size at creation */
#define GROW_ROOM       (4 * MiB)       /* room for --truncate grows */
#define ID_ZERO         0u              /* cell reads as zeroes */
#define ID_BACKING      1u              /* cell holds the backing pattern */
#define ID_FIRST_WRITE  2u
#define MAX_BATCH       4
#define READ_CHUNK      (256 * KiB)
#define MAX_REPORT      5

/* ---- how a format plugs in ---- */

typedef struct FormatPlug {
    const char *fmt;
    bool backing;               /* create it over the raw backing image */
    /* Create and open option naming a data file the format opens itself;
     * crashtest names it "crashsim:PATH" at open, plain PATH at create. */
    const char *data_file_opt;
} FormatPlug;

static const FormatPlug format_plugs[] = {
    { "raw",     false, NULL },
    { "add-cow", true,  "image_file" },
    { "qcow2",   true,  NULL },
};

/* ---- options and run state ---- */

typedef struct Config {
    const char *fmt;
    FormatPlug plug;
    char *create_opts;
    uint64_t seed;
    long iterations;
    long only_iter;             /* -1: all */
    bool torn;
    bool truncate;
    bool keep;
    bool verbose;
    bool self_test;
    bool unsafe;                /* self-test: flushes make nothing durable */
    char *dir;
    char *backing;
} Config;

static Config cfg = { .iterations = 200, .only_iter = -1 };

/* Expected guest content, one entry per CELL bytes. */
typedef struct PendingWrite {
    uint32_t id;                /* ID_ZERO for zero writes */
    int64_t first, end;         /* cells [first, end) */
} PendingWrite;

typedef struct Model {
    int64_t ncells;
    uint32_t *stable;           /* value as of the last completed flush */
    uint32_t *cur;              /* what the guest reads now */
    GArray *pending;            /* PendingWrite issued since that flush */
    int64_t stable_size;
    int64_t cur_size;
    GArray *pending_sizes;      /* int64_t sizes set since that flush */
    uint32_t next_id;
} Model;

/* One iteration's files. */
typedef struct Paths {
    char *img, *data;           /* data: NULL unless plug.data_file_opt */
    char *img_crash, *data_crash;
} Paths;

/* ---- cell patterns ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void cell_fill(uint8_t *p, uint32_t id, int64_t cell)
{
    if (id == ID_ZERO) {
        memset(p, 0, CELL);
        return;
    }
    uint64_t h = mix64(((uint64_t)id << 32) ^ (uint64_t)cell);
    uint32_t le_id = cpu_to_le32(id), le_cell = cpu_to_le32((uint32_t)cell);
    memcpy(p, &le_id, 4);
    memcpy(p + 4, &le_cell, 4);
    memcpy(p + 8, &h, 8);
}

/* Decode a cell: its writer's id, or -1 for garbage, -2 for a cell that
 * belongs at another offset (*where gets that cell). */
static int64_t cell_decode(const uint8_t *p, int64_t cell, int64_t *where)
{
    uint8_t want[CELL];
    uint32_t id, at;

    if (buffer_is_zero(p, CELL)) {
        return ID_ZERO;
    }
    memcpy(&id, p, 4);
    memcpy(&at, p + 4, 4);
    id = le32_to_cpu(id);
    at = le32_to_cpu(at);
    cell_fill(want, id, at);
    if (id == ID_ZERO || memcmp(want, p, CELL)) {
        return -1;
    }
    if (at != (uint32_t)cell) {
        *where = at;
        return -2;
    }
    return id;
}

static void fill_range(uint8_t *buf, uint32_t id, int64_t first, int64_t end)
{
    for (int64_t c = first; c < end; c++) {
        cell_fill(buf + (c - first) * CELL, id, c);
    }
}

/* ---- model ---- */

static void model_init(Model *m, int64_t ncells, uint32_t initial)
{
    m->ncells = ncells;
    m->stable = g_new(uint32_t, ncells);
    m->cur = g_new(uint32_t, ncells);
    for (int64_t c = 0; c < ncells; c++) {
        m->stable[c] = c * CELL < BASE_SIZE ? initial : ID_ZERO;
    }
    memcpy(m->cur, m->stable, ncells * sizeof(uint32_t));
    m->pending = g_array_new(FALSE, FALSE, sizeof(PendingWrite));
    m->pending_sizes = g_array_new(FALSE, FALSE, sizeof(int64_t));
    m->stable_size = m->cur_size = BASE_SIZE;
    m->next_id = ID_FIRST_WRITE;
}

static void model_free(Model *m)
{
    g_free(m->stable);
    g_free(m->cur);
    g_array_free(m->pending, TRUE);
    g_array_free(m->pending_sizes, TRUE);
}

/* A flush completed: everything the guest sees now is durable. */
static void model_flushed(Model *m)
{
    memcpy(m->stable, m->cur, m->ncells * sizeof(uint32_t));
    g_array_set_size(m->pending, 0);
    g_array_set_size(m->pending_sizes, 0);
    m->stable_size = m->cur_size;
}

static bool model_allows(Model *m, int64_t cell, uint32_t id)
{
    if (m->stable[cell] == id) {
        return true;
    }
    for (guint i = 0; i < m->pending->len; i++) {
        PendingWrite *w = &g_array_index(m->pending, PendingWrite, i);
        if (w->id == id && cell >= w->first && cell < w->end) {
            return true;
        }
    }
    return false;
}

/*
 * Sizes between the durable size and a size set since: a grow of the file
 * below may not land while a later write into the grown part does, which
 * extends the file to that write's end (raw's virtual size is the file's).
 */
static bool model_allows_size(Model *m, int64_t size)
{
    int64_t lo = m->stable_size, hi = m->stable_size;

    for (guint i = 0; i < m->pending_sizes->len; i++) {
        int64_t s = g_array_index(m->pending_sizes, int64_t, i);
        lo = MIN(lo, s);
        hi = MAX(hi, s);
    }
    return size >= lo && size <= hi;
}

static char *model_describe(Model *m, int64_t cell)
{
    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "durable %u", m->stable[cell]);
    for (guint i = 0; i < m->pending->len; i++) {
        PendingWrite *w = &g_array_index(m->pending, PendingWrite, i);
        if (cell >= w->first && cell < w->end) {
            g_string_append_printf(s, ", pending %u", w->id);
        }
    }
    return g_string_free(s, FALSE);
}

/* ---- the workload ---- */

typedef enum ReqKind { REQ_WRITE, REQ_ZERO } ReqKind;

typedef struct Req {
    BlockDriverState *bs;
    ReqKind kind;
    int64_t offset, bytes;
    uint32_t id;
    BdrvRequestFlags flags;
    int ret;
    int *done;
} Req;

static void coroutine_fn req_entry(void *opaque)
{
    Req *r = opaque;

    if (r->kind == REQ_ZERO) {
        r->ret = bdrv_co_pwrite_zeroes(r->bs, r->offset, r->bytes, r->flags);
    } else {
        uint8_t *buf = g_malloc(r->bytes);
        fill_range(buf, r->id, r->offset / CELL,
                   (r->offset + r->bytes) / CELL);
        r->ret = bdrv_co_pwrite(r->bs, r->offset, r->bytes, buf, 0);
        g_free(buf);
    }
    (*r->done)++;
}

/* A request range in [0, size) of CELL multiples, 512 B .. 256 KiB. */
static void pick_range(GRand *rng, int64_t size, int64_t *off, int64_t *len)
{
    static const int64_t aligns[] = { CELL, 512, 4096, 64 * KiB };
    int order = g_rand_int_range(rng, 9, 18);     /* log-uniform length */
    int64_t align = aligns[g_rand_int_range(rng, 0, ARRAY_SIZE(aligns))];

    *len = QEMU_ALIGN_DOWN((1 << order) + g_rand_int_range(rng, 0, 1 << order),
                           CELL);
    if (g_rand_int_range(rng, 0, 4) == 0) {
        *len = QEMU_ALIGN_UP(*len, 64 * KiB);
    }
    *len = MIN(*len, size);
    *off = QEMU_ALIGN_DOWN(g_rand_int_range(rng, 0, size - *len + 1), align);
}

static bool overlaps(Req *reqs, int n, int64_t off, int64_t len)
{
    for (int i = 0; i < n; i++) {
        if (off < reqs[i].offset + reqs[i].bytes &&
            reqs[i].offset < off + len) {
            return true;
        }
    }
    return false;
}

/* Issue up to MAX_BATCH non-overlapping writes at once and wait. */
static int run_batch(BlockDriverState *bs, Model *m, GRand *rng)
{
    Req reqs[MAX_BATCH];
    int n = g_rand_int_range(rng, 1, MAX_BATCH + 1), done = 0, ret = 0;

    for (int i = 0; i < n; i++) {
        int64_t off, len;
        do {
            pick_range(rng, m->cur_size, &off, &len);
        } while (overlaps(reqs, i, off, len));
        bool zero = g_rand_int_range(rng, 0, 7) == 0;
        reqs[i] = (Req) {
            .bs = bs, .kind = zero ? REQ_ZERO : REQ_WRITE, .offset = off,
            .bytes = len, .id = zero ? ID_ZERO : m->next_id++,
            .flags = zero && g_rand_boolean(rng) ? BDRV_REQ_MAY_UNMAP : 0,
            .done = &done,
        };
        PendingWrite pw = { reqs[i].id, off / CELL, (off + len) / CELL };
        g_array_append_val(m->pending, pw);
    }
    for (int i = 0; i < n; i++) {
        qemu_coroutine_enter(qemu_coroutine_create(req_entry, &reqs[i]));
    }
    AIO_WAIT_WHILE(done < n);
    for (int i = 0; i < n; i++) {
        if (reqs[i].ret < 0) {
            ret = reqs[i].ret;
            continue;
        }
        for (int64_t c = reqs[i].offset / CELL;
             c < (reqs[i].offset + reqs[i].bytes) / CELL; c++) {
            m->cur[c] = reqs[i].id;
        }
    }
    return ret;
}

/* Read a random range and compare with what the guest must see now. */
static int live_read_check(BlockDriverState *bs, Model *m, GRand *rng,
                           GString *why)
{
    int64_t off, len;
    pick_range(rng, m->cur_size, &off, &len);
    uint8_t *buf = g_malloc(len), *want = g_malloc(CELL);
    int ret = bdrv_pread(bs, off, len, buf, 0);

    for (int64_t c = off / CELL; ret == 0 && c < (off + len) / CELL; c++) {
        cell_fill(want, m->cur[c], c);
        if (memcmp(want, buf + (c * CELL - off), CELL)) {
            g_string_append_printf(why, "live read at %" PRId64 " does not "
                                   "return write %u (before any crash)",
                                   c * CELL, m->cur[c]);
            ret = -EILSEQ;
        }
    }
    g_free(buf);
    g_free(want);
    return ret;
}

/*
 * The guest: batches of writes, sometimes a flush, a read check or a grow,
 * and a final flush. Stops at the first error. The choices depend only on
 * rng, so a dry run and the armed run issue the same requests.
 */
static int run_workload(BlockDriverState *bs, Model *m, GRand *rng,
                        GString *why)
{
    int batches = g_rand_int_range(rng, 12, 33);
    int ret = 0;

    for (int b = 0; b < batches && ret >= 0; b++) {
        ret = run_batch(bs, m, rng);
        if (ret >= 0 && g_rand_int_range(rng, 0, 5) == 0) {
            ret = live_read_check(bs, m, rng, why);
        }
        if (ret >= 0 && cfg.truncate && g_rand_int_range(rng, 0, 12) == 0 &&
            m->cur_size + 1 * MiB <= BASE_SIZE + GROW_ROOM) {
            int64_t size = m->cur_size + g_rand_int_range(rng, 1, 17) * 64 * KiB;
            g_array_append_val(m->pending_sizes, size);
            Error *err = NULL;
            ret = bdrv_truncate(bs, size, false, PREALLOC_MODE_OFF, &err);
            if (ret >= 0 && !crashsim_crashed()) {
                m->cur_size = size;
            } else if (ret < 0 && !crashsim_crashed()) {
                g_string_append_printf(why, "truncate: %s",
                                       error_get_pretty(err));
            }
            error_free(err);
        }
        if (ret >= 0 && (g_rand_int_range(rng, 0, 10) < 3 || b == batches - 1)) {
            ret = bdrv_flush(bs);
            /* After the cut the process is dead: no success counts. */
            if (ret >= 0 && !crashsim_crashed()) {
                model_flushed(m);
            }
        }
    }
    return ret;
}

/* ---- images ---- */

static void die(const char *what, Error *err)
{
    fprintf(stderr, "crashtest: %s: %s\n", what,
            err ? error_get_pretty(err) : "failed");
    exit(2);
}

static void make_backing(void)
{
    int64_t ncells = BASE_SIZE / CELL;
    uint8_t *buf = g_malloc(BASE_SIZE);

    cfg.backing = g_build_filename(cfg.dir, "backing.raw", NULL);
    fill_range(buf, ID_BACKING, 0, ncells);
    if (!g_file_set_contents(cfg.backing, (char *)buf, BASE_SIZE, NULL)) {
        die("cannot write the backing image", NULL);
    }
    g_free(buf);
}

static void paths_init(Paths *p, long iter)
{
    char *name = g_strdup_printf("img-%ld.%s", iter, cfg.fmt);
    p->img = g_build_filename(cfg.dir, name, NULL);
    p->data = cfg.plug.data_file_opt ? g_strconcat(p->img, ".data", NULL)
                                     : NULL;
    p->img_crash = g_strconcat(p->img, ".crash", NULL);
    p->data_crash = p->data ? g_strconcat(p->data, ".crash", NULL) : NULL;
    g_free(name);
}

static void paths_remove(Paths *p)
{
    const char *all[] = { p->img, p->data, p->img_crash, p->data_crash };
    for (unsigned i = 0; i < ARRAY_SIZE(all); i++) {
        if (all[i]) {
            unlink(all[i]);
        }
    }
}

static void paths_free(Paths *p)
{
    g_free(p->img);
    g_free(p->data);
    g_free(p->img_crash);
    g_free(p->data_crash);
}

static void create_image(Paths *p)
{
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    paths_remove(p);
    if (cfg.create_opts && qemu_opts_parse(opts, cfg.create_opts, NULL,
                                           &err) < 0) {
        die("-o", err);
    }
    qemu_opt_set_number(opts, "size", BASE_SIZE);
    if (cfg.plug.backing) {
        qemu_opt_set(opts, "backing_file", cfg.backing);
        qemu_opt_set(opts, "backing_fmt", "raw");
    }
    if (cfg.plug.data_file_opt) {
        qemu_opt_set(opts, cfg.plug.data_file_opt, p->data);
    }
    if (bdrv_create(bdrv_find_format(cfg.fmt), p->img, opts, &err) < 0) {
        die("create", err);
    }
    qemu_opts_del(opts);
}

/* Open img (and data) through crashsim, or plain when crashsim is false. */
static BlockDriverState *open_image(const char *img, const char *data,
                                    bool crash, Error **errp)
{
    QemuOpts *opts = qemu_opts_new();
    char *name = crash ? g_strconcat("crashsim:", img, NULL) : g_strdup(img);

    if (data) {
        char *d = crash ? g_strconcat("crashsim:", data, NULL)
                        : g_strdup(data);
        qemu_opt_set(opts, cfg.plug.data_file_opt, d);
        g_free(d);
    }
    int flags = BDRV_O_RDWR | BDRV_O_UNMAP;
    if (crash && cfg.unsafe) {
        flags |= BDRV_O_NO_FLUSH;
    }
    BlockDriverState *bs = bdrv_open(name, cfg.fmt, opts, flags, errp);
    qemu_opts_del(opts);
    g_free(name);
    return bs;
}

/* ---- verification ---- */

typedef void CorruptFn(const Paths *p, Model *m, GRand *rng);

/* No damage: used to run a deliberately broken stack quietly. */
static void corrupt_none(const Paths *p, Model *m, GRand *rng)
{
}

/* Check the crash image: consistency, size, and every cell. */
static bool verify(const Paths *p, Model *m, GString *why)
{
    Error *err = NULL;
    BdrvCheckResult res;
    int bad = 0;

    BlockDriverState *bs = open_image(p->img_crash, p->data_crash, false,
                                      &err);
    if (!bs) {
        g_string_append_printf(why, "open: %s", error_get_pretty(err));
        error_free(err);
        return false;
    }
    int ret = bdrv_check(bs, &res, 0);
    if ((ret < 0 && ret != -ENOTSUP) || res.corruptions || res.check_errors) {
        g_string_append_printf(why, "check: ret %d, %d corruptions, %d "
                               "check errors; ", ret, res.corruptions,
                               res.check_errors);
        bad++;
    }
    int64_t size = bdrv_getlength(bs);
    if (!model_allows_size(m, size)) {
        g_string_append_printf(why, "size %" PRId64 " (durable %" PRId64
                               "); ", size, m->stable_size);
        bad++;
        size = MIN(size, m->stable_size);
    }
    uint8_t *buf = g_malloc(READ_CHUNK);
    for (int64_t off = 0; off < size; off += READ_CHUNK) {
        int64_t len = MIN(READ_CHUNK, size - off);
        ret = bdrv_pread(bs, off, len, buf, 0);
        if (ret < 0) {
            g_string_append_printf(why, "read at %" PRId64 ": %s; ", off,
                                   strerror(-ret));
            bad++;
            continue;
        }
        for (int64_t c = off / CELL; c < (off + len) / CELL; c++) {
            int64_t where = 0;
            int64_t id = cell_decode(buf + (c * CELL - off), c, &where);
            if (id >= 0 && model_allows(m, c, (uint32_t)id)) {
                continue;
            }
            if (++bad <= MAX_REPORT) {
                char *exp = model_describe(m, c);
                if (id == -1) {
                    g_string_append_printf(why, "garbage at %" PRId64,
                                           c * CELL);
                } else if (id == -2) {
                    g_string_append_printf(why, "data of offset %" PRId64
                                           " at %" PRId64, where * CELL,
                                           c * CELL);
                } else {
                    g_string_append_printf(why, "write %" PRId64 " at %"
                                           PRId64, id, c * CELL);
                }
                g_string_append_printf(why, " (expected %s); ", exp);
                g_free(exp);
            }
        }
    }
    g_free(buf);
    bdrv_unref(bs);
    if (bad > MAX_REPORT) {
        g_string_append_printf(why, "%d bad in all", bad);
    }
    return bad == 0;
}

/* ---- one crash point ---- */

static void copy_file(const char *from, const char *to)
{
    gchar *text;
    gsize len;
    if (!g_file_get_contents(from, &text, &len, NULL) ||
        !g_file_set_contents(to, text, len, NULL)) {
        die("cannot copy an image", NULL);
    }
    g_free(text);
}

static void crash_hook(void *opaque)
{
    GRand *rng = opaque;
    Error *err = NULL;

    int n = crashsim_materialize_all(".crash", rng, &err);
    if (n < 0) {
        die("materialize", err);
    }
    if (cfg.verbose) {
        for (int i = 0; i < n; i++) {
            BlockDriverState *bs = crashsim_node(i);
            printf("  cut: %s, %u unflushed ops\n", crashsim_node_image(bs),
                   crashsim_node_log_length(bs));
        }
    }
}

static uint64_t iter_seed(long iter, uint64_t salt)
{
    return mix64(cfg.seed * 1000003u + (uint64_t)iter * 7919u + salt);
}

/* Open, run the workload and close with crashsim; returns the op count. */
static uint64_t run_once(const Paths *p, Model *m, long iter, GString *why)
{
    Error *err = NULL;
    GRand *rng = g_rand_new_with_seed((guint32)iter_seed(iter, 1));
    BlockDriverState *bs = open_image(p->img, p->data, true, &err);

    if (bs) {
        int ret = run_workload(bs, m, rng, why);
        if (ret < 0 && !crashsim_crashed() && !why->len) {
            g_string_append_printf(why, "I/O error before the cut: %s",
                                   strerror(-ret));
        }
        bdrv_unref(bs);
    } else if (!crashsim_crashed()) {
        g_string_append_printf(why, "open: %s", error_get_pretty(err));
    }
    error_free(err);
    g_rand_free(rng);
    return crashsim_op_count();
}

/* The options a replay needs besides -f, -s and --iter. */
static const char *replay_flags(void)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s%s%s%s%s", cfg.torn ? " --tear" : "",
             cfg.truncate ? " --truncate" : "", cfg.unsafe ? " --unsafe" : "",
             cfg.create_opts ? " -o " : "",
             cfg.create_opts ? cfg.create_opts : "");
    return buf;
}

/* Run iteration iter; corrupt (self-test) damages the crash image first. */
static bool run_iteration(long iter, CorruptFn *corrupt)
{
    Paths p;
    Model m;
    GString *why = g_string_new(NULL);
    uint32_t initial = cfg.plug.backing ? ID_BACKING : ID_ZERO;
    int64_t ncells = (BASE_SIZE + (cfg.truncate ? GROW_ROOM : 0)) / CELL;
    bool ok;

    paths_init(&p, iter);
    /* Dry run: count the device ops of this workload. */
    create_image(&p);
    model_init(&m, ncells, initial);
    crashsim_reset();
    crashsim_set_crash_hook(NULL, NULL);
    uint64_t total = run_once(&p, &m, iter, why);
    model_free(&m);
    if (why->len) {
        printf("FAIL: -f %s -s %" PRIu64 " --iter %ld%s: dry run: %s\n",
               cfg.fmt, cfg.seed, iter, replay_flags(), why->str);
        fflush(stdout);
        goto out_fail;
    }

    /* The armed run. */
    GRand *crng = g_rand_new_with_seed((guint32)iter_seed(iter, 2));
    uint64_t at = g_rand_int_range(crng, 1, (gint32)total + 1);
    create_image(&p);
    model_init(&m, ncells, initial);
    crashsim_reset();
    crashsim_set_torn_writes(cfg.torn);
    crashsim_set_crash_hook(crash_hook, crng);
    crashsim_arm(at);
    run_once(&p, &m, iter, why);
    crashsim_set_crash_hook(NULL, NULL);
    if (!crashsim_crashed()) {
        /* Fewer ops than the dry run: the crash comes after a clean close. */
        copy_file(p.img, p.img_crash);
        if (p.data) {
            copy_file(p.data, p.data_crash);
        }
        model_flushed(&m);
    } else if (p.data && !g_file_test(p.data_crash, G_FILE_TEST_EXISTS)) {
        /* Not open at the cut: never opened (untouched), or closed, and
         * crashsim's close flush made all of it durable. */
        copy_file(p.data, p.data_crash);
    }
    g_rand_free(crng);
    if (why->len) {
        printf("FAIL: -f %s -s %" PRIu64 " --iter %ld%s: armed run: %s\n",
               cfg.fmt, cfg.seed, iter, replay_flags(), why->str);
        g_string_truncate(why, 0);
        ok = false;
        goto out;
    }
    if (corrupt) {
        GRand *r = g_rand_new_with_seed((guint32)iter_seed(iter, 3));
        corrupt(&p, &m, r);
        g_rand_free(r);
    }
    ok = verify(&p, &m, why);
out:
    if (!ok && !corrupt && why->len) {
        printf("FAIL: -f %s -s %" PRIu64 " --iter %ld%s: crash at op %"
               PRIu64 " of %" PRIu64 ": %s\n", cfg.fmt, cfg.seed, iter,
               replay_flags(), at, total, why->str);
    } else if (cfg.verbose || (corrupt && corrupt != corrupt_none && ok)) {
        printf("%s: iter %ld crash at op %" PRIu64 " of %" PRIu64 "%s%s\n",
               ok ? "ok" : "flagged", iter, at, total, why->len ? ": " : "",
               why->str);
    }
    fflush(stdout);
    model_free(&m);
    if (ok || !cfg.keep) {
        paths_remove(&p);
    }
    paths_free(&p);
    g_string_free(why, TRUE);
    return ok;

out_fail:
    if (!cfg.keep) {
        paths_remove(&p);
    }
    paths_free(&p);
    g_string_free(why, TRUE);
    return false;
}

/* ---- self-test: the checker must catch bad crash images ---- */

static void write_cell_at(const char *path, int64_t cell, const uint8_t *p)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, p, CELL, cell * CELL) != CELL) {
        die("self-test: cannot damage the crash image", NULL);
    }
    close(fd);
}

static int64_t random_cell(Model *m, GRand *rng)
{
    return g_rand_int_range(rng, 0, (gint32)(m->stable_size / CELL));
}

/* A sector torn with garbage. */
static void corrupt_garbage(const Paths *p, Model *m, GRand *rng)
{
    uint8_t junk[CELL];
    int64_t c = random_cell(m, rng);
    for (int i = 0; i < CELL; i++) {
        junk[i] = g_rand_int_range(rng, 0, 256);
    }
    write_cell_at(p->img_crash, c, junk);
}

/* Data that landed at the wrong offset. */
static void corrupt_misplaced(const Paths *p, Model *m, GRand *rng)
{
    uint8_t cellbuf[CELL];
    int64_t c = random_cell(m, rng);
    cell_fill(cellbuf, m->next_id + 1000, (c + 1) % (m->stable_size / CELL));
    write_cell_at(p->img_crash, c, cellbuf);
}

/* A flushed write that was lost (the cell is reverted to zeroes). */
static void corrupt_lost(const Paths *p, Model *m, GRand *rng)
{
    int64_t n = m->stable_size / CELL;
    int64_t start = random_cell(m, rng);
    for (int64_t i = 0; i < n; i++) {
        int64_t c = (start + i) % n;
        if (!model_allows(m, c, ID_ZERO)) {
            uint8_t zero[CELL] = { 0 };
            write_cell_at(p->img_crash, c, zero);
            return;
        }
    }
    corrupt_garbage(p, m, rng);
}

static int self_test_crashsim(void)
{
    char *img = g_build_filename(cfg.dir, "semantics.raw", NULL);
    char *out = g_strconcat(img, ".crash", NULL);
    char *name = g_strconcat("crashsim:", img, NULL);
    Error *err = NULL;
    uint8_t a[512], b[512], c[512], got[1024];
    bool seen[2][2] = { { false } };
    int failed = 0;

    QemuOpts *opts = qemu_opts_new();
    qemu_opt_set_number(opts, "size", 64 * KiB);
    if (bdrv_create(bdrv_find_format("raw"), img, opts, &err) < 0) {
        die("create", err);
    }
    qemu_opts_del(opts);
    crashsim_reset();
    BlockDriverState *bs = bdrv_open(name, "raw", NULL, BDRV_O_RDWR, &err);
    if (!bs) {
        die("open", err);
    }
    memset(a, 0xaa, sizeof(a));
    memset(b, 0xbb, sizeof(b));
    memset(c, 0xcc, sizeof(c));
    if (bdrv_pwrite(bs, 0, 512, a, 0) < 0 || bdrv_flush(bs) < 0 ||
        bdrv_pwrite(bs, 0, 512, b, 0) < 0 ||
        bdrv_pwrite(bs, 4096, 512, c, 0) < 0) {
        die("self-test I/O", NULL);
    }
    GRand *rng = g_rand_new_with_seed(cfg.seed);
    for (int i = 0; i < 100; i++) {
        if (crashsim_materialize(crashsim_node(0), out, rng, &err) < 0) {
            die("materialize", err);
        }
        int fd = open(out, O_RDONLY);
        if (fd < 0 || pread(fd, got, 512, 0) != 512 ||
            pread(fd, got + 512, 512, 4096) != 512) {
            die("self-test: read crash image", NULL);
        }
        close(fd);
        bool s0b = !memcmp(got, b, 512), s0a = !memcmp(got, a, 512);
        bool s8c = !memcmp(got + 512, c, 512);
        bool s8z = buffer_is_zero(got + 512, 512);
        if (!(s0a || s0b) || !(s8c || s8z)) {
            printf("FAIL: crashsim self-test: impossible crash content\n");
            failed++;
            break;
        }
        seen[s0b][s8c] = true;
    }
    if (!(seen[0][0] && seen[0][1] && seen[1][0] && seen[1][1])) {
        printf("FAIL: crashsim self-test: not every outcome reached\n");
        failed++;
    }
    /* The power cut: the next op fails and nothing reaches the file. */
    crashsim_arm(crashsim_op_count() + 1);
    if (bdrv_pwrite(bs, 8192, 512, c, 0) != -EIO || !crashsim_crashed() ||
        bdrv_pread(bs, 0, 512, got, 0) != -EIO) {
        printf("FAIL: crashsim self-test: power cut not honoured\n");
        failed++;
    }
    bdrv_unref(bs);
    crashsim_reset();
    g_rand_free(rng);
    unlink(img);
    unlink(out);
    g_free(img);
    g_free(out);
    g_free(name);
    printf("crashsim semantics: %s\n", failed ? "FAILED" : "ok");
    return failed;
}

static int self_test(void)
{
    static CorruptFn *const corrupts[] = {
        corrupt_garbage, corrupt_misplaced, corrupt_lost,
    };
    static const char *const names[] = { "garbage", "misplaced", "lost" };
    int failed = self_test_crashsim();
    long n = MIN(cfg.iterations, 30);

    for (long i = 0; i < n; i++) {
        if (!run_iteration(i, NULL)) {
            failed++;
        }
        unsigned k = i % ARRAY_SIZE(corrupts);
        if (run_iteration(i, corrupts[k])) {
            printf("FAIL: self-test: %s corruption in iter %ld not caught\n",
                   names[k], i);
            failed++;
        }
    }
    /* A stack whose flushes are not durable must be caught end to end. */
    long caught = 0;
    cfg.unsafe = true;
    for (long i = 0; i < n; i++) {
        caught += !run_iteration(i, corrupt_none);
    }
    cfg.unsafe = false;
    printf("non-durable flushes: %ld of %ld crash points flagged\n", caught,
           n);
    if (caught == 0) {
        printf("FAIL: self-test: non-durable flushes never caught\n");
        failed++;
    }
    printf("self-test: %s\n", failed ? "FAILED" : "checker catches every "
           "injected corruption");
    return failed ? 1 : 0;
}

/* ---- main ---- */

static void usage(void)
{
    printf("usage: crashtest -f FMT [-n ITERATIONS] [-s SEED] [-o OPTIONS]\n"
           "                 [--long] [--iter I] [--tear] [--truncate]\n"
           "                 [--keep] [-d DIR] [-v] [--self-test] [--unsafe]\n"
           "--unsafe opens with cache=unsafe: flushes make nothing durable,\n"
           "so failures are expected (shows that the checker bites).\n");
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "long", no_argument, NULL, 'L' },
        { "iter", required_argument, NULL, 'I' },
        { "tear", no_argument, NULL, 'T' },
        { "truncate", no_argument, NULL, 'G' },
        { "keep", no_argument, NULL, 'K' },
        { "self-test", no_argument, NULL, 'S' },
        { "unsafe", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    cfg.seed = (uint64_t)time(NULL);
    while ((c = getopt_long(argc, argv, "f:n:s:o:d:vh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f': cfg.fmt = optarg; break;
        case 'n': cfg.iterations = strtol(optarg, NULL, 0); break;
        case 's': cfg.seed = strtoull(optarg, NULL, 0); break;
        case 'o': cfg.create_opts = optarg; break;
        case 'd': cfg.dir = g_strdup(optarg); break;
        case 'v': cfg.verbose = true; break;
        case 'L': cfg.iterations = 5000; break;
        case 'I': cfg.only_iter = strtol(optarg, NULL, 0); break;
        case 'T': cfg.torn = true; break;
        case 'G': cfg.truncate = true; break;
        case 'K': cfg.keep = true; break;
        case 'S': cfg.self_test = true; break;
        case 'U': cfg.unsafe = true; break;
        case 'h': usage(); exit(0);
        default: usage(); exit(2);
        }
    }
    if (cfg.self_test && !cfg.fmt) {
        cfg.fmt = "raw";
    }
    if (!cfg.fmt || optind != argc) {
        usage();
        exit(2);
    }
}

static void pick_plug(void)
{
    BlockDriver *drv = bdrv_find_format(cfg.fmt);

    if (!drv) {
        fprintf(stderr, "crashtest: unknown format '%s'\n", cfg.fmt);
        exit(77);
    }
    cfg.plug = (FormatPlug) { cfg.fmt, bdrv_driver_supports_backing(drv),
                              NULL };
    for (unsigned i = 0; i < ARRAY_SIZE(format_plugs); i++) {
        if (!strcmp(format_plugs[i].fmt, cfg.fmt)) {
            cfg.plug = format_plugs[i];
        }
    }
}

int main(int argc, char **argv)
{
    long passed = 0, failed = 0;
    int ret;

    parse_args(argc, argv);
    bdrv_init();
    pick_plug();
    if (!cfg.dir) {
        const char *base = g_file_test("/dev/shm", G_FILE_TEST_IS_DIR)
                           ? "/dev/shm" : g_get_tmp_dir();
        char *tmpl = g_build_filename(base, "crashtest-XXXXXX", NULL);
        cfg.dir = g_mkdtemp(tmpl);
        if (!cfg.dir) {
            die("cannot create a scratch directory", NULL);
        }
    }
    make_backing();
    printf("crashtest: -f %s -s %" PRIu64 "%s%s, scratch %s\n", cfg.fmt,
           cfg.seed, cfg.torn ? " --tear" : "",
           cfg.truncate ? " --truncate" : "", cfg.dir);
    fflush(stdout);
    if (cfg.self_test) {
        ret = self_test();
    } else {
        long first = cfg.only_iter >= 0 ? cfg.only_iter : 0;
        long end = cfg.only_iter >= 0 ? cfg.only_iter + 1 : cfg.iterations;
        for (long i = first; i < end; i++) {
            if (run_iteration(i, NULL)) {
                passed++;
            } else {
                failed++;
            }
        }
        printf("%ld passed, %ld failed\n", passed, failed);
        ret = failed ? 1 : 0;
    }
    unlink(cfg.backing);
    if (!cfg.keep) {
        rmdir(cfg.dir);
    }
    return ret;
}
