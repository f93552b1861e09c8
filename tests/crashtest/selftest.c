/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest --self-test: crashsim's own semantics (durability, overlapping
 * flushes, the power cut, O_DIRECT rules), then the checker against broken
 * stacks and damaged crash images: each failure class must be flagged.
 */
#include "crashtest.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <fcntl.h>

static int failures;

static void expect(bool ok, const char *what)
{
    if (!ok) {
        printf("FAIL: self-test: %s\n", what);
        failures++;
    }
}

/* ---- crashsim semantics ---- */

static char *scratch_file(const char *name, int64_t size)
{
    char *path = g_build_filename(cfg.dir, name, NULL);
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    qemu_opt_set_number(opts, "size", size);
    if (bdrv_create(bdrv_find_format("raw"), path, opts, &err) < 0) {
        die("create", err);
    }
    qemu_opts_del(opts);
    return path;
}

static BlockDriverState *open_crashsim(const char *path, int flags)
{
    char *name = g_strconcat("crashsim:", path, NULL);
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(name, "raw", NULL, flags, &err);

    if (!bs) {
        die("open", err);
    }
    g_free(name);
    return bs;
}

/* Read n bytes at off of a materialized crash image. */
static void read_crash(const char *path, int64_t off, void *buf, int n)
{
    int fd = open(path, O_RDONLY);

    memset(buf, 0, n);
    if (fd < 0 || pread(fd, buf, n, off) < 0) {
        die("self-test: read crash image", NULL);
    }
    close(fd);
}

/* A flushed write is in every crash image, unflushed ones in some. */
static void test_durability(GRand *rng)
{
    char *img = scratch_file("semantics.raw", 64 * KiB);
    char *out = g_strconcat(img, ".crash", NULL);
    uint8_t a[512], b[512], c[512], got[1024];
    bool seen[2][2] = { { false } };
    Error *err = NULL;

    crashsim_reset();
    BlockDriverState *bs = open_crashsim(img, BDRV_O_RDWR);
    memset(a, 0xaa, sizeof(a));
    memset(b, 0xbb, sizeof(b));
    memset(c, 0xcc, sizeof(c));
    if (bdrv_pwrite(bs, 0, 512, a, 0) < 0 || bdrv_flush(bs) < 0 ||
        bdrv_pwrite(bs, 0, 512, b, 0) < 0 ||
        bdrv_pwrite(bs, 4096, 512, c, 0) < 0) {
        die("self-test I/O", NULL);
    }
    for (int i = 0; i < 100; i++) {
        if (crashsim_materialize(bdrv_get_file(bs), out, rng, &err) < 0) {
            die("materialize", err);
        }
        read_crash(out, 0, got, 512);
        read_crash(out, 4096, got + 512, 512);
        bool s0b = !memcmp(got, b, 512), s0a = !memcmp(got, a, 512);
        bool s8c = !memcmp(got + 512, c, 512);
        bool s8z = buffer_is_zero(got + 512, 512);
        if (!(s0a || s0b) || !(s8c || s8z)) {
            expect(false, "crashsim: impossible crash content");
            break;
        }
        seen[s0b][s8c] = true;
    }
    expect(seen[0][0] && seen[0][1] && seen[1][0] && seen[1][1],
           "crashsim: not every crash outcome reached");
    /* The power cut: the next op fails and nothing reaches the disk. */
    crashsim_arm(crashsim_op_count() + 1);
    expect(bdrv_pwrite(bs, 8192, 512, c, 0) == -EIO && crashsim_crashed() &&
           bdrv_pread(bs, 0, 512, got, 0) == -EIO,
           "crashsim: power cut not honoured");
    bdrv_unref(bs);
    crashsim_reset();
    unlink(img);
    unlink(out);
    g_free(img);
    g_free(out);
}

typedef struct Overlap {
    BlockDriverState *x, *y;
    bool flush_done, y_before_flush, done;
    int flush_ret;
} Overlap;

static void coroutine_fn overlap_flush(void *opaque)
{
    Overlap *o = opaque;
    o->flush_ret = bdrv_co_flush(o->x);
    o->flush_done = true;
}

/*
 * x: write, then a slow flush; y: a write issued while that flush runs
 * completes first; the power fails while the flush is still running.
 */
static void coroutine_fn overlap_main(void *opaque)
{
    Overlap *o = opaque;
    uint8_t buf[512];

    memset(buf, 0x5a, sizeof(buf));
    if (bdrv_co_pwrite(o->x, 0, 512, buf, 0) < 0) {
        die("self-test I/O", NULL);
    }
    qemu_coroutine_enter(qemu_coroutine_create(overlap_flush, o));
    if (bdrv_co_pwrite(o->y, 0, 512, buf, 0) < 0) {
        die("self-test I/O", NULL);
    }
    o->y_before_flush = !o->flush_done;
    crashsim_crash_now();
    o->done = true;
}

/* Flushes stay in flight while other nodes' writes issue and complete. */
static void test_overlap(GRand *rng)
{
    char *xp = scratch_file("overlap-x.raw", 64 * KiB);
    char *yp = scratch_file("overlap-y.raw", 64 * KiB);
    char *out = g_strconcat(xp, ".crash", NULL);
    CrashsimTiming slow_flush = {
        .write_min_ns = 1000, .write_max_ns = 1000,
        .flush_min_ns = 1000000, .flush_max_ns = 1000000,
    };
    Overlap o = { 0 };
    CrashsimCutInfo cut;
    Error *err = NULL;
    int landed = 0;

    crashsim_reset();
    crashsim_set_timing(&slow_flush);
    o.x = open_crashsim(xp, BDRV_O_RDWR);
    o.y = open_crashsim(yp, BDRV_O_RDWR);
    qemu_coroutine_enter(qemu_coroutine_create(overlap_main, &o));
    AIO_WAIT_WHILE(!o.done || !o.flush_done);
    crashsim_get_cut_info(&cut);
    expect(o.y_before_flush, "crashsim: a write issued during a flush did "
           "not complete before it");
    expect(o.flush_ret == -EIO, "crashsim: a flush running at the cut "
           "succeeded");
    expect(cut.valid && cut.flushes_in_flight == 1 &&
           cut.writes_during_flush == 1 && cut.writes_done_during_flush == 1,
           "crashsim: cut info misses the flush in flight");
    for (int i = 0; i < 40; i++) {
        uint8_t got[512];
        if (crashsim_materialize(bdrv_get_file(o.x), out, rng, &err) < 0) {
            die("materialize", err);
        }
        read_crash(out, 0, got, 512);
        landed += !buffer_is_zero(got, 512);
    }
    expect(landed > 0 && landed < 40, "crashsim: a write whose flush did not "
           "complete must land in some crash images, not all");
    bdrv_unref(o.x);
    bdrv_unref(o.y);
    crashsim_reset();
    crashsim_set_timing(&(CrashsimTiming) { 0 });
    unlink(xp);
    unlink(yp);
    unlink(out);
    g_free(xp);
    g_free(yp);
    g_free(out);
}

/* cache=none: the disk takes only 4 KiB-aligned requests; the layer pads. */
static void test_direct(void)
{
    char *img = scratch_file("direct.raw", 64 * KiB);
    uint8_t buf[512], got[512];

    crashsim_reset();
    BlockDriverState *bs = open_crashsim(img, BDRV_O_RDWR | BDRV_O_NOCACHE);
    BlockDriverState *file = bdrv_get_file(bs);
    memset(buf, 0x3c, sizeof(buf));
    expect(file && bdrv_get_request_alignment(file) == 4096,
           "crashsim: no O_DIRECT alignment under cache=none");
    expect(bdrv_pwrite(bs, 512, 512, buf, 0) == 0 &&
           bdrv_pread(bs, 512, 512, got, 0) == 0 && !memcmp(buf, got, 512),
           "crashsim: padded O_DIRECT write does not read back");
    bdrv_unref(bs);
    crashsim_reset();
    unlink(img);
    g_free(img);
}

/* ---- damaged crash images ---- */

/* Write one cell of the crash image through the format. */
static void write_cell(const Paths *p, const Model *m, int64_t cell,
                       const uint8_t *content)
{
    Error *err = NULL;
    BlockDriverState *bs = open_plain(p->img_crash, p->data_crash, true,
                                      &err);
    int64_t off = layout_cell_offset(m->layout, cell);

    if (!bs || off < 0 || bdrv_pwrite(bs, off, CELL, content, 0) < 0 ||
        bdrv_flush(bs) < 0) {
        die("self-test: cannot damage the crash image", err);
    }
    bdrv_unref(bs);
}

/* A cell below the durable size (never in the grow window). */
static int64_t random_cell(const Model *m, GRand *rng)
{
    const Layout *l = m->layout;
    int64_t n = l->grow ? l->win[l->nwin - 1].first_cell : l->ncells;
    return g_rand_int_range(rng, 0, (gint32)n);
}

static void corrupt_none(const Paths *p, const Model *m, GRand *rng)
{
}

/* A sector torn with garbage. */
static void corrupt_garbage(const Paths *p, const Model *m, GRand *rng)
{
    uint8_t junk[CELL];

    for (int i = 0; i < CELL; i++) {
        junk[i] = g_rand_int_range(rng, 0, 256);
    }
    junk[0] |= 1;
    write_cell(p, m, random_cell(m, rng), junk);
}

/* Data that landed at the wrong offset. */
static void corrupt_misplaced(const Paths *p, const Model *m, GRand *rng)
{
    uint8_t content[CELL];
    int64_t c = random_cell(m, rng);

    cell_fill(content, ID_INITIAL,
              layout_cell_offset(m->layout, c) / CELL + 1);
    write_cell(p, m, c, content);
}

/* A durable write lost: the cell holds what it held before that write. */
static void corrupt_lost(const Paths *p, const Model *m, GRand *rng)
{
    int64_t n = m->layout->ncells, start = random_cell(m, rng);
    Floor f;

    floor_build(m, &f);
    for (int64_t i = 0; i < n; i++) {
        int64_t c = (start + i) % n;
        if (f.floor[c] >= ID_FIRST_WRITE && model_initial(m, c) == ID_INITIAL &&
            !floor_allows(m, &f, c, ID_INITIAL)) {
            uint8_t content[CELL];
            cell_fill(content, ID_INITIAL,
                      layout_cell_offset(m->layout, c) / CELL);
            write_cell(p, m, c, content);
            floor_free(&f);
            return;
        }
    }
    floor_free(&f);
    corrupt_garbage(p, m, rng);
}

/* Each damage must be flagged; with a format check, as missed by it. */
static void test_damage(const char *fmt, long n)
{
    static CorruptFn *const corrupts[] = {
        corrupt_garbage, corrupt_misplaced, corrupt_lost,
    };
    static const char *const names[] = { "garbage", "misplaced", "lost" };
    BlockDriver *drv = bdrv_find_format(fmt);
    long missed = 0;

    if (!drv) {
        return;
    }
    pick_plug(fmt);
    bool has_check = strcmp(fmt, "raw") != 0;
    for (long i = 0; i < n; i++) {
        IterResult res;
        unsigned k = i % ARRAY_SIZE(corrupts);
        run_iteration(i, NULL, &res);
        expect(res.ok, "an undamaged crash image was flagged");
        g_free(res.why);
        run_iteration(i, corrupts[k], &res);
        if (res.ok || !res.verdict.bad_cells) {
            printf("FAIL: self-test: %s: %s damage in iter %ld not caught\n",
                   fmt, names[k], i);
            failures++;
        }
        missed += res.verdict.check_missed;
        g_free(res.why);
    }
    printf("%s: %ld damaged crash images flagged; the check missed %ld\n",
           fmt, n, missed);
    if (has_check) {
        expect(missed == n, "a check reporting no errors over bad data was "
               "not reported as a defect");
    } else {
        expect(missed == 0, "a format without a check was blamed for it");
    }
}

/*
 * add-cow's bitmap ordering, broken from below: flushes of the raw image
 * return while they still run, so bitmap pages reach the disk before the
 * data they describe (what a table cache that skips waiting for a running
 * dependency flush does). Crash points must be flagged with zeroes where
 * data belongs (a bit set over data that never landed), missed by the
 * check, at cuts where a bitmap write was issued during that flush.
 */
static void test_early_flush(long n)
{
    long flagged = 0, shown = 0;

    if (!bdrv_find_format("add-cow")) {
        return;
    }
    pick_plug("add-cow");
    cfg.early_flush = "data";
    for (long i = 0; i < n; i++) {
        IterResult res;
        run_iteration(i, corrupt_none, &res);
        if (!res.ok) {
            flagged++;
        }
        if (!res.ok && res.verdict.bad_zero && res.verdict.check_missed &&
            res.meta_writes) {
            if (!shown++ || cfg.verbose) {
                printf("early flush: iter %ld flagged: %.200s\n", i, res.why);
            }
        }
        g_free(res.why);
    }
    cfg.early_flush = NULL;
    printf("early flush (add-cow): %ld of %ld crash points flagged, %ld with "
           "zeroes over allocated clusters, missed by the check, at a cut "
           "inside a flush\n", flagged, n, shown);
    expect(shown > 0, "bitmap pages written before their data were never "
           "caught");
}

/* A stack whose flushes are not durable must be caught end to end. */
static void test_unsafe(long n)
{
    long caught = 0;

    pick_plug("raw");
    cfg.unsafe = true;
    for (long i = 0; i < n; i++) {
        IterResult res;
        run_iteration(i, corrupt_none, &res);
        caught += !res.ok;
        g_free(res.why);
    }
    cfg.unsafe = false;
    printf("non-durable flushes: %ld of %ld crash points flagged\n", caught,
           n);
    expect(caught > 0, "non-durable flushes never caught");
}

/* The verdict on a check result, for each combination. */
static void test_check_verdicts(void)
{
    struct {
        int bad_cells, ret, corruptions;
        bool check_bad, missed, false_alarm;
    } cases[] = {
        { 3, 0, 0, false, true, false },        /* "No errors" over garbage */
        { 3, -ENOTSUP, 0, false, false, false },/* no check to blame */
        { 3, 0, 2, true, false, false },        /* check saw it too */
        { 0, 0, 1, true, false, true },         /* corruption over valid data */
        { 0, 0, 0, false, false, false },       /* clean (leaks are fine) */
    };

    for (unsigned i = 0; i < ARRAY_SIZE(cases); i++) {
        Verdict v = { .bad_cells = cases[i].bad_cells, .leaks = 5 };
        GString *why = g_string_new(NULL);
        verdict_judge_check(&v, cases[i].ret, cases[i].corruptions, 0, why);
        if (v.check_bad != cases[i].check_bad ||
            v.check_missed != cases[i].missed ||
            v.check_false_alarm != cases[i].false_alarm) {
            printf("FAIL: self-test: check verdict case %u: %s\n", i,
                   why->str);
            failures++;
        }
        g_string_free(why, TRUE);
    }
}

int self_test(void)
{
    GRand *rng = g_rand_new_with_seed((guint32)cfg.seed);

    test_durability(rng);
    test_overlap(rng);
    test_direct();
    test_check_verdicts();
    printf("crashsim semantics and check verdicts: %s\n",
           failures ? "FAILED" : "ok");
    g_rand_free(rng);
    test_damage("raw", 6);
    test_damage("add-cow", 6);
    test_early_flush(40);
    test_unsafe(20);
    printf("self-test: %s\n", failures ? "FAILED" : "the checker catches "
           "every injected failure");
    return failures ? 1 : 0;
}
