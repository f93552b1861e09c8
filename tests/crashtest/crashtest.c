/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest: replays random concurrent guest workloads on an image of any
 * format with every file below it on a simulated disk (crashsim), cuts the
 * power at a random device op, and checks that the crash image holds only
 * what a correct disk could hold and that the format's check agrees. This
 * file holds the format table, the options, the per-iteration setup and the
 * run loop. See docs/crash-testing.md.
 */
#include "crashtest.h"
#include "util/aio.h"

#include <getopt.h>
#include <fcntl.h>

/* ---- how a format plugs in ---- */

/* add-cow's bitmap pages and FVD's bitmap cache entries (by default) are
 * 4 KiB: one maps 32768 clusters (blocks). --prefetch opens FVD with 512-byte
 * entries, so that its small disks still span many of them. */
static int64_t bitmap_page_size(int64_t cluster_size)
{
    return cfg.prefetch ? 512 : 4096;
}

static int64_t bitmap_page_span(int64_t cluster_size)
{
    return cluster_size * bitmap_page_size(cluster_size) * 8;
}

/* FVD journal sizes: the smallest make the ring wrap (checkpoints) within
 * one run; "" is the default size. */
static const char *const fvd_variants[] = {
    "journal_size=16k", "journal_size=32k", "journal_size=256k", "", NULL,
};

/* With -o compact_image=on: small chunks allocate often; blocks up to
 * 64 KiB fit every chunk size here. */
static const char *const fvd_compact_variants[] = {
    "journal_size=16k,chunk_size=64k", "journal_size=32k,chunk_size=128k",
    "chunk_size=64k,storage_grow_unit=64k", "chunk_size=256k", NULL,
};

/* Whether -o sets create option name to value. */
static bool create_opt_is(const char *name, const char *value)
{
    QemuOpts *opts = qemu_opts_new();
    bool is = false;

    if (cfg.create_opts &&
        qemu_opts_parse(opts, cfg.create_opts, NULL, NULL) >= 0) {
        const char *v = qemu_opt_get(opts, name);
        is = v && !strcmp(v, value);
    }
    qemu_opts_del(opts);
    return is;
}

/* qcow2's L2 cache loads 4 KiB slices (or whole smaller clusters) when it
 * does not cover the disk, as with the small caches crashtest sets. */
static int64_t qcow2_page_size(int64_t cluster_size)
{
    return MIN(cluster_size, 4096);
}

/* One slice maps an entry (8 bytes, 16 with extended_l2) per cluster. */
static int64_t qcow2_page_span(int64_t cluster_size)
{
    int entry = create_opt_is("extended_l2", "on") ? 16 : 8;
    return qcow2_page_size(cluster_size) / entry * cluster_size;
}

/* Subclusters need clusters of at least 16 KiB (as QEMU requires). */
static void qcow2_fit_create_opts(FormatPlug *plug)
{
    if (create_opt_is("extended_l2", "on")) {
        plug->min_cluster_bits = MAX(plug->min_cluster_bits, 14);
    }
}

static void fvd_fit_create_opts(FormatPlug *plug)
{
    if (cfg.prefetch) {
        /* Small blocks: the small disk still spans several cache entries
         * (512 bytes, 4096 blocks each), so prefetch evicts. */
        plug->max_cluster_bits = MIN(plug->max_cluster_bits, 11);
    }
    if (create_opt_is("compact_image", "on")) {
        plug->max_cluster_bits = MIN(plug->max_cluster_bits, 16);
        plug->create_variants = fvd_compact_variants;
    }
}

static const FormatPlug format_plugs[] = {
    { "raw" },
    { "add-cow", .backing = true, .data_file_opt = "image_file",
      .cluster_opt = "cluster_size", .min_cluster_bits = 9,
      .max_cluster_bits = 21, .cache_opt = "cache-size",
      .meta_page_size = bitmap_page_size,
      .meta_page_span = bitmap_page_span },
    { "fvd", .backing = true, .data_file_opt = "data_file",
      .cluster_opt = "block_size", .min_cluster_bits = 9,
      .max_cluster_bits = 21, .cache_opt = "cache-size",
      .meta_page_size = bitmap_page_size,
      .meta_page_span = bitmap_page_span,
      .create_variants = fvd_variants,
      .fit_create_opts = fvd_fit_create_opts },
    { "qcow2", .backing = true, .data_file_opt = "data_file",
      .data_file_open_opt = "data-file", .data_file_optional = true,
      .cluster_opt = "cluster_size", .min_cluster_bits = 9,
      .max_cluster_bits = 21, .cache_opt = "l2-cache-size",
      .cache_opt2 = "refcount-cache-size",
      .meta_page_size = qcow2_page_size,
      .meta_page_span = qcow2_page_span,
      .fit_create_opts = qcow2_fit_create_opts },
};

static const char *const cache_modes[] = {
    "writeback", "writethrough", "none", "directsync",
};

/* ---- options and run state ---- */

Config cfg = { .iterations = 200, .only_iter = -1, .cache_pages = -1,
               .torn = -1, .truncate = -1 };

static int64_t fixed_cluster_size;     /* from -o, when it names one */

/* What every cut point of the run reached, for the summary. */
static struct {
    long cuts, flush_in_flight, write_during_flush;
    long meta_during_flush, meta_done_during_flush;
    long check_missed, check_false_alarm, leaky;
    long pf_complete, pf_dropped;       /* --prefetch: at the cut */
    unsigned long requests, max_inflight;
} stats;

void die(const char *what, Error *err)
{
    fprintf(stderr, "crashtest: %s: %s\n", what,
            err ? error_get_pretty(err) : "failed");
    exit(2);
}

uint64_t iter_seed(long iter, uint64_t salt)
{
    return mix64(cfg.seed * 1000003u + (uint64_t)iter * 7919u + salt);
}

static int64_t rand64(GRand *rng, int64_t n)
{
    uint64_t r = ((uint64_t)g_rand_int(rng) << 32) | g_rand_int(rng);
    return n > 0 ? (int64_t)(r % (uint64_t)n) : 0;
}

/* ---- per-iteration choices ---- */

static int window_cmp(const void *a, const void *b)
{
    const Window *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/*
 * The disk: big enough for many metadata pages (8..24 of them), with about
 * 4 MiB of windows where the guest writes, spread over random pages (several
 * may share one), plus the grow window past the end with --truncate.
 */
static void plan_layout(IterConfig *ic, GRand *rng)
{
    Layout *l = &ic->layout;
    int64_t cs = ic->cluster_size ? ic->cluster_size : 64 * KiB;
    bool paged = cfg.plug.meta_page_span != NULL;
    int64_t span = paged ? cfg.plug.meta_page_span(cs) : 4 * MiB;
    int64_t wl = MIN(MAX(cs, 16 * KiB) << g_rand_int_range(rng, 0, 3),
                     2 * MiB);
    int npages = g_rand_int_range(rng, 8, 25);

    if (cfg.max_disk && span * npages > cfg.max_disk) {
        /* Every byte of the disk is copied (prefetch): keep it small,
         * with as many metadata pages as fit. */
        span = MIN(span, QEMU_ALIGN_DOWN(cfg.max_disk, wl));
        npages = (int)MAX(1, cfg.max_disk / span);
    }
    wl = MIN(wl, span);
    memset(l, 0, sizeof(*l));
    l->size = span * npages;
    l->nwin = (int)CLAMP(4 * MiB / wl, 3, MAX_WINDOWS);
    /* At most half the window-sized slots, so random placement ends soon
     * (a format whose pages map little needs a small disk). */
    l->nwin = (int)MIN(l->nwin, MAX(1, npages * (span / wl) / 2));
    ic->meta_pages = paged ? npages : 0;
    for (int i = 0; i < l->nwin; i++) {
        Window *w = &l->win[i];
        bool clash;
        do {
            int64_t page = g_rand_int_range(rng, 0, npages);
            w->offset = page * span +
                        QEMU_ALIGN_DOWN(rand64(rng, span - wl + 1), wl);
            w->len = wl;
            clash = false;
            for (int k = 0; k < i; k++) {
                clash |= w->offset < l->win[k].offset + l->win[k].len &&
                         l->win[k].offset < w->offset + wl;
            }
        } while (clash);
    }
    qsort(l->win, l->nwin, sizeof(Window), window_cmp);
    if (ic->truncate) {
        l->win[l->nwin++] = (Window) { l->size, GROW_ROOM, 0 };
        l->grow = true;
    }
    for (int i = 0; i < l->nwin; i++) {
        l->win[i].first_cell = l->ncells;
        l->ncells += l->win[i].len / CELL;
    }
}

/* Device latencies: fast or slow writes, flushes from instant to slow. */
static void plan_timing(IterConfig *ic, long iter, GRand *rng)
{
    static const int64_t write_max[] = { 2000, 50000, 500000 };
    static const int64_t flush_lo[] = { 1000, 50000, 500000 };
    static const int64_t flush_hi[] = { 10000, 2000000, 10000000 };
    int wi = g_rand_int_range(rng, 0, 3), fi = g_rand_int_range(rng, 0, 3);

    ic->timing = (CrashsimTiming) {
        .seed = iter_seed(iter, 5),
        .read_min_ns = 1000, .read_max_ns = write_max[wi],
        .write_min_ns = 1000, .write_max_ns = write_max[wi],
        .flush_min_ns = flush_lo[fi], .flush_max_ns = flush_hi[fi],
        .tail_permille = 20, .tail_factor = 20,
    };
}

/* Everything an iteration varies, from the seed and the command line. */
static void choose_config(long iter, IterConfig *ic)
{
    static const int qds[] = { 1, 2, 4, 8, 16, 32, 32 };
    GRand *rng = g_rand_new_with_seed((guint32)iter_seed(iter, 4));
    int mode_pick = g_rand_int_range(rng, 0, ARRAY_SIZE(cache_modes));
    int bits = g_rand_int_range(rng, cfg.plug.min_cluster_bits,
                                cfg.plug.max_cluster_bits + 1);
    int pages = g_rand_int_range(rng, 0, 9);
    int qd = qds[g_rand_int_range(rng, 0, ARRAY_SIZE(qds))];
    bool torn = g_rand_boolean(rng);
    bool grow = g_rand_int_range(rng, 0, 4) == 0;

    memset(ic, 0, sizeof(*ic));
    ic->cache_mode = cfg.unsafe ? "unsafe" : cfg.cache_mode ? cfg.cache_mode
                                 : cache_modes[mode_pick];
    if (bdrv_parse_cache_mode(ic->cache_mode, &ic->open_flags,
                              &ic->writethrough) < 0) {
        die("invalid cache mode", NULL);
    }
    if (cfg.plug.cluster_opt) {
        ic->cluster_size = cfg.create_sets_cluster ? fixed_cluster_size
                                                   : INT64_C(1) << bits;
    }
    if (cfg.plug.cache_opt) {
        /* Mostly 1..4 pages, far below the metadata; sometimes the
         * default cache. */
        ic->cache_pages = cfg.cache_pages >= 0 ? cfg.cache_pages
                          : pages == 8 ? 0 : pages % 4 + 1;
    }
    ic->qd = cfg.qd ? cfg.qd : qd;
    ic->steps = g_rand_int_range(rng, 40, 101);
    ic->torn = cfg.torn >= 0 ? cfg.torn : torn;
    ic->truncate = cfg.truncate >= 0 ? cfg.truncate : grow;
    plan_timing(ic, iter, rng);
    plan_layout(ic, rng);
    if (cfg.prefetch) {
        /* Copies from one block to 1 MiB, one to four in flight, sometimes
         * throttled (pauses), sometimes dropping the base at the end. */
        static const int64_t pf_bytes[] = { 512, 4096, 65536, 262144,
                                            1048576 };
        ic->prefetch_opts = g_strdup_printf(
            "prefetch=on,cache-entry-size=512,prefetch-bytes=%" PRId64
            ",prefetch-max-inflight=%d,prefetch-throttle-time=%d"
            ",prefetch-drop-base=%s",
            MAX(pf_bytes[g_rand_int_range(rng, 0, ARRAY_SIZE(pf_bytes))],
                ic->cluster_size),
            g_rand_int_range(rng, 1, 5),
            g_rand_boolean(rng) ? 0 : g_rand_int_range(rng, 1, 20),
            g_rand_boolean(rng) ? "on" : "off");
        ic->prefetch_wait = g_rand_boolean(rng);
    }
    if (cfg.plug.create_variants) {
        int n = 0;
        while (cfg.plug.create_variants[n]) {
            n++;
        }
        ic->variant = cfg.plug.create_variants[g_rand_int_range(rng, 0, n)];
    }
    g_rand_free(rng);
}

static char *describe_config(const IterConfig *ic)
{
    GString *s = g_string_new(ic->cache_mode);

    if (ic->cluster_size) {
        g_string_append_printf(s, ", cluster %" PRId64, ic->cluster_size);
    }
    if (ic->meta_pages) {
        g_string_append_printf(s, ", %d metadata pages", ic->meta_pages);
    }
    if (ic->variant && ic->variant[0]) {
        g_string_append_printf(s, ", %s", ic->variant);
    }
    if (cfg.plug.cache_opt) {
        if (ic->cache_pages) {
            g_string_append_printf(s, ", cache %d pages", ic->cache_pages);
        } else {
            g_string_append(s, ", default cache");
        }
    }
    if (ic->prefetch_opts) {
        g_string_append_printf(s, ", %s%s", ic->prefetch_opts,
                               ic->prefetch_wait ? ", waits for it" : "");
    }
    g_string_append_printf(s, ", qd %d, %d steps%s%s", ic->qd, ic->steps,
                           ic->torn ? ", torn" : "",
                           ic->truncate ? ", grows" : "");
    return g_string_free(s, FALSE);
}

/* ---- images ---- */

static void paths_init(Paths *p, long iter)
{
    char *name = g_strdup_printf("img-%ld.%s", iter, cfg.fmt);
    p->img = g_build_filename(cfg.dir, name, NULL);
    p->data = cfg.plug.data_file_opt ? g_strconcat(p->img, ".data", NULL)
                                     : NULL;
    p->backing = cfg.plug.backing ? g_strconcat(p->img, ".backing", NULL)
                                  : NULL;
    p->img_crash = g_strconcat(p->img, ".crash", NULL);
    p->data_crash = p->data ? g_strconcat(p->data, ".crash", NULL) : NULL;
    g_free(name);
}

static void paths_remove(const Paths *p, bool with_backing)
{
    const char *all[] = { p->img, p->data, p->img_crash, p->data_crash,
                          with_backing ? p->backing : NULL };
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
    g_free(p->backing);
    g_free(p->img_crash);
    g_free(p->data_crash);
}

/* The initial pattern in every window below the size, sparse elsewhere. */
static void make_backing(const Paths *p, const Layout *l)
{
    int fd = open(p->backing, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    if (fd < 0 || ftruncate(fd, l->size) < 0) {
        die("cannot create the backing image", NULL);
    }
    for (int i = 0; i < l->nwin; i++) {
        const Window *w = &l->win[i];
        if (w->offset >= l->size) {
            continue;
        }
        uint8_t *buf = g_malloc(w->len);
        fill_range(buf, ID_INITIAL, w->offset, w->len);
        if (pwrite(fd, buf, w->len, w->offset) != w->len) {
            die("cannot write the backing image", NULL);
        }
        g_free(buf);
    }
    close(fd);
}

/*
 * --bitmap (qcow2): the image gets an enabled persistent bitmap before the
 * run (as qemu-img bitmap --add); after the cut it must be in_use
 * (inconsistent), or consistent with a bit set for every acknowledged
 * write (as QEMU 7.2 keeps them).
 */
#define CT_BITMAP_GRAN  4096

static void add_bitmap(const Paths *p)
{
    QemuOpts *opts = qemu_opts_new();
    BdrvBitmapOp op = { .type = BITMAP_OP_ADD, .name = "ct",
                        .granularity = CT_BITMAP_GRAN };
    Error *err = NULL;
    int failed;

    if (p->data) {
        qemu_opt_set(opts, plug_data_file_open_opt(), p->data);
    }
    BlockDriverState *bs = bdrv_open(p->img, cfg.fmt, opts,
                                     BDRV_O_RDWR | BDRV_O_NO_BACKING |
                                     BDRV_O_BITMAPS, &err);
    qemu_opts_del(opts);
    if (!bs || bdrv_bitmap_ops(bs, &op, 1, &failed, &err) < 0) {
        die("--bitmap: add the bitmap", err);
    }
    bdrv_unref(bs);
}

static uint32_t get_be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32_to_cpu(v);
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64_to_cpu(v);
}

static bool read_at(int fd, void *buf, size_t len, uint64_t off)
{
    return len <= 64 * MiB && pread(fd, buf, len, off) == (ssize_t)len;
}

/* The bitmap of the crash copy: see add_bitmap. */
static bool verify_bitmap(const Paths *p, const Model *m, GString *why)
{
    uint8_t h[4096], e[24], byte;
    uint64_t *table = NULL;
    bool ok = false;
    int fd = open(p->img_crash, O_RDONLY | O_CLOEXEC);

    /* A small image (512-byte clusters, cut early) may be shorter than
     * 4 KiB: what is past its end reads as zeroes (no more extensions). */
    memset(h, 0, sizeof(h));
    ssize_t got = fd < 0 ? -1 : pread(fd, h, sizeof(h), 0);
    if (got < 104) {
        g_string_append(why, "bitmap: cannot read the header; ");
        goto out;
    }
    uint32_t cb = get_be32(h + 20), hlen = get_be32(h + 100), pos = hlen;
    if (cb < 9 || cb > 21) {
        g_string_append_printf(why, "bitmap: cluster bits %u; ", cb);
        goto out;
    }
    uint64_t cs = UINT64_C(1) << cb, dir_off = 0;
    if (!(get_be64(h + 88) & 1)) {
        g_string_append(why, "bitmap: autoclear bit 0 is clear (the "
                        "bitmaps are lost); ");
        goto out;
    }
    while (pos + 8 <= sizeof(h) && get_be32(h + pos)) {
        if (get_be32(h + pos) == 0x23852875 && pos + 32 <= sizeof(h)) {
            dir_off = get_be64(h + pos + 24);
            break;
        }
        pos += 8 + ROUND_UP(get_be32(h + pos + 4), 8);
    }
    if (!dir_off || !read_at(fd, e, sizeof(e), dir_off)) {
        g_string_append(why, "bitmap: no bitmap directory; ");
        goto out;
    }
    uint32_t flags = get_be32(e + 12), ts = get_be32(e + 8);
    unsigned gb = e[17];
    if (flags & 1) {
        ok = true;              /* in_use: inconsistent, as after QEMU's */
        goto out;
    }
    if (gb != 12 || !ts || ts > 4096) {
        g_string_append_printf(why, "bitmap: granularity bits %u, table "
                               "size %u; ", gb, ts);
        goto out;
    }
    table = g_new(uint64_t, ts);
    if (!read_at(fd, table, ts * 8, get_be64(e))) {
        g_string_append(why, "bitmap: cannot read its table; ");
        goto out;
    }
    /* Bits past a size the run set may have been dropped (as QEMU's). */
    int64_t limit = m->initial_size;
    for (guint i = 0; i < m->sizes->len; i++) {
        limit = MIN(limit, g_array_index(m->sizes, SizeRec, i).size);
    }
    ok = true;
    for (guint i = 0; ok && i < m->writes->len; i++) {
        const WriteRec *w = &g_array_index(m->writes, WriteRec, i);
        int64_t last = -1;
        if (w->state != W_ACKED) {
            continue;
        }
        for (int64_t c = w->first; ok && c < w->end; c++) {
            int64_t off = layout_cell_offset(m->layout, c);
            uint64_t bit = (uint64_t)off >> gb, te;
            if (off < 0 || off >= limit || (int64_t)bit == last) {
                continue;
            }
            last = bit;
            te = bit / (cs * 8) < ts ? be64_to_cpu(table[bit / (cs * 8)])
                                     : 0;
            if (te & 1) {
                continue;       /* all ones */
            }
            byte = 0;
            if ((te & UINT64_C(0x00fffffffffffe00)) &&
                !read_at(fd, &byte, 1, (te & UINT64_C(0x00fffffffffffe00)) +
                         (bit % (cs * 8)) / 8)) {
                byte = 0;
            }
            if (!(byte & (1u << (bit % 8)))) {
                g_string_append_printf(why, "bitmap: consistent, but the "
                                       "acknowledged write %u at %" PRId64
                                       " is not marked; ",
                                       i + ID_FIRST_WRITE, off);
                ok = false;
            }
        }
    }
out:
    g_free(table);
    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

/* Formats without a backing file get the initial pattern written in. */
static void prefill_image(const Paths *p, const Layout *l)
{
    Error *err = NULL;
    BlockDriverState *bs = open_plain(p->img, p->data, true, &err);

    if (!bs) {
        die("open for the initial pattern", err);
    }
    for (int i = 0; i < l->nwin; i++) {
        const Window *w = &l->win[i];
        if (w->offset >= l->size) {
            continue;
        }
        uint8_t *buf = g_malloc(w->len);
        fill_range(buf, ID_INITIAL, w->offset, w->len);
        if (bdrv_pwrite(bs, w->offset, w->len, buf, 0) < 0) {
            die("cannot write the initial pattern", NULL);
        }
        g_free(buf);
    }
    if (bdrv_flush(bs) < 0) {
        die("cannot flush the initial pattern", NULL);
    }
    bdrv_unref(bs);
}

static void create_image(const Paths *p, const IterConfig *ic)
{
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    paths_remove(p, false);
    if (ic->variant && ic->variant[0] &&
        qemu_opts_parse(opts, ic->variant, NULL, &err) < 0) {
        die("the plug's create variant", err);
    }
    if (cfg.create_opts && qemu_opts_parse(opts, cfg.create_opts, NULL,
                                           &err) < 0) {
        die("-o", err);
    }
    qemu_opt_set_number(opts, "size", ic->layout.size);
    if (cfg.plug.backing) {
        qemu_opt_set(opts, "backing_file", p->backing);
        qemu_opt_set(opts, "backing_fmt", "raw");
    }
    if (cfg.plug.data_file_opt) {
        qemu_opt_set(opts, cfg.plug.data_file_opt, p->data);
    }
    if (ic->cluster_size && !cfg.create_sets_cluster) {
        qemu_opt_set_number(opts, cfg.plug.cluster_opt, ic->cluster_size);
    }
    if (bdrv_create(bdrv_find_format(cfg.fmt), p->img, opts, &err) < 0) {
        die("create", err);
    }
    qemu_opts_del(opts);
    if (!cfg.plug.backing) {
        prefill_image(p, &ic->layout);
    }
    if (cfg.bitmap) {
        add_bitmap(p);
    }
}

/*
 * Open the image with every file on a crashsim disk: the image, the data
 * file (open option) and the backing file (attached after the open, so
 * its reads are scheduled like the rest).
 */
static BlockBackend *open_simulated(const Paths *p, const IterConfig *ic,
                                    Error **errp)
{
    QemuOpts *opts = qemu_opts_new();
    char *name = g_strconcat("crashsim:", p->img, NULL);
    int flags = BDRV_O_RDWR | BDRV_O_UNMAP | ic->open_flags;

    if ((ic->prefetch_opts && qemu_opts_parse(opts, ic->prefetch_opts, NULL,
                                              errp) < 0) ||
        (cfg.open_opts && qemu_opts_parse(opts, cfg.open_opts, NULL,
                                          errp) < 0)) {
        qemu_opts_del(opts);
        return NULL;
    }
    if (p->data) {
        char *d = g_strconcat("crashsim:", p->data, NULL);
        qemu_opt_set(opts, plug_data_file_open_opt(), d);
        g_free(d);
    }
    if (ic->cache_pages) {
        int64_t bytes = ic->cache_pages *
                        cfg.plug.meta_page_size(ic->cluster_size);
        qemu_opt_set_number(opts, cfg.plug.cache_opt, bytes);
        if (cfg.plug.cache_opt2) {
            qemu_opt_set_number(opts, cfg.plug.cache_opt2, bytes);
        }
    }
    if (p->backing) {
        flags |= BDRV_O_NO_BACKING;
    }
    BlockDriverState *bs = bdrv_open(name, cfg.fmt, opts, flags, errp);
    qemu_opts_del(opts);
    g_free(name);
    if (bs && p->backing) {
        char *b = g_strconcat("crashsim:", p->backing, NULL);
        BlockDriverState *back = bdrv_open_child(b, "raw", NULL,
                                                 flags & ~(BDRV_O_RDWR |
                                                 BDRV_O_NO_BACKING),
                                                 false, errp);
        g_free(b);
        if (!back) {
            bdrv_unref(bs);
            return NULL;
        }
        bdrv_set_backing_hd(bs, back);
        bdrv_unref(back);
    }
    if (!bs) {
        return NULL;
    }
    /* The guest: reads, writes and resizes through the user layer. */
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                BLK_PERM_RESIZE, BLK_PERM_ALL);
    int ret = blk_insert_bs(blk, bs, errp);
    bdrv_unref(bs);
    if (ret < 0) {
        blk_unref(blk);
        return NULL;
    }
    blk_set_enable_write_cache(blk, !ic->writethrough);
    return blk;
}

/* ---- one crash point ---- */

/* Copy a (sparse, possibly huge) file, keeping its holes. */
static void copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    uint8_t *buf = g_malloc(1 * MiB);
    off_t size = in >= 0 ? lseek(in, 0, SEEK_END) : -1;
    off_t pos = 0;

    if (in < 0 || out < 0 || size < 0 || ftruncate(out, size) < 0) {
        die("cannot copy an image", NULL);
    }
    while (pos < size) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0) {
            break;              /* only a hole is left */
        }
        off_t hole = lseek(in, data, SEEK_HOLE);
        for (pos = data; pos < hole;) {
            ssize_t n = pread(in, buf, MIN(1 * MiB, hole - pos), pos);
            if (n <= 0 || pwrite(out, buf, n, pos) != n) {
                die("cannot copy an image", NULL);
            }
            pos += n;
        }
    }
    g_free(buf);
    close(in);
    close(out);
}

typedef struct HookCtx {
    GRand *rng;
    const char *img;
    IterResult *res;
} HookCtx;

/* At the cut: write the crash copies, note the metadata writes in flight. */
static void crash_hook(void *opaque)
{
    HookCtx *h = opaque;
    Error *err = NULL;
    BlockDriverState *bs;

    if (crashsim_materialize_all(".crash", h->rng, &err) < 0) {
        die("materialize", err);
    }
    for (unsigned i = 0; (bs = crashsim_node(i)); i++) {
        if (!strcmp(crashsim_node_image(bs), h->img)) {
            h->res->meta_writes = crashsim_node_cut_writes(
                bs, cfg.plug.data_file_opt != NULL,
                &h->res->meta_writes_done);
        }
    }
}

/* Open, run the workload and close on crashsim; returns the op count. */
static uint64_t run_once(const Paths *p, Model *m, const IterConfig *ic,
                         long iter, GString *why, WorkStats *ws)
{
    Error *err = NULL;
    GRand *rng = g_rand_new_with_seed((guint32)iter_seed(iter, 1));

    crashsim_set_timing(&ic->timing);
    /* The prefetch throttle's coin: the same in the dry and armed run. */
    g_random_set_seed((guint32)iter_seed(iter, 6));
    BlockBackend *blk = open_simulated(p, ic, &err);
    if (blk) {
        int ret = run_workload(blk, m, ic, rng, why, ws);
        Job *pf = bdrv_get_populate_job(blk_bs(blk));
        if (ic->prefetch_wait && pf) {
            /* Let it finish (completion, a dropped base) before the
             * close cancels it; a cut makes it fail and end. */
            job_wait(pf);
        }
        if (ret < 0 && !crashsim_crashed() && !why->len) {
            g_string_append_printf(why, "I/O error before the cut: %s",
                                   strerror(-ret));
        }
        blk_unref(blk);
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
    static char buf[512];
    char qd[16] = "", pages[32] = "";

    if (cfg.qd) {
        snprintf(qd, sizeof(qd), " --qd %d", cfg.qd);
    }
    if (cfg.cache_pages >= 0) {
        snprintf(pages, sizeof(pages), " --cache-pages %d", cfg.cache_pages);
    }
    snprintf(buf, sizeof(buf), "%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s",
             cfg.cache_mode ? " -c " : "",
             cfg.cache_mode ? cfg.cache_mode : "", qd, pages,
             cfg.data_file ? " --data-file" : "",
             cfg.no_backing ? " --no-backing" : "",
             cfg.torn == 1 ? " --tear" : cfg.torn == 0 ? " --no-tear" : "",
             cfg.truncate == 1 ? " --truncate" :
             cfg.truncate == 0 ? " --no-truncate" : "",
             cfg.unsafe ? " --unsafe" : "",
             cfg.early_flush ? " --early-flush" : "",
             cfg.no_data_file ? " --no-data-file" : "",
             cfg.create_opts ? " -o " : "",
             cfg.create_opts ? cfg.create_opts : "",
             cfg.open_opts ? " --open-opts " : "",
             cfg.open_opts ? cfg.open_opts : "",
             cfg.prefetch ? " --prefetch" : "");
    return buf;
}

/* --prefetch: whether the crash copy's FVD header (fixed little-endian
 * fields, docs/specs/fvd.txt) records completion or dropped the base. */
static void note_prefetch(const Paths *p)
{
    uint8_t h[192];
    int fd = open(p->img_crash, O_RDONLY | O_CLOEXEC);

    if (fd >= 0 && pread(fd, h, sizeof(h), 0) == sizeof(h)) {
        stats.pf_complete += (h[24] >> 1) & 1;    /* COMPLETE */
        stats.pf_dropped += !(h[140] | h[141] | h[142] | h[143]); /* no base */
    }
    if (fd >= 0) {
        close(fd);
    }
}

static void note_cut(const IterResult *res)
{
    const CrashsimCutInfo *c = &res->cut;
    const Verdict *v = &res->verdict;

    stats.cuts++;
    stats.meta_during_flush += res->meta_writes > 0;
    stats.meta_done_during_flush += res->meta_writes_done > 0;
    stats.flush_in_flight += c->flushes_in_flight > 0;
    stats.write_during_flush += c->writes_during_flush > 0;
    stats.check_missed += v->check_missed;
    stats.check_false_alarm += v->check_false_alarm;
    stats.leaky += v->leaks > 0;
}

/* The dry run: the same workload without a cut, to count its device ops. */
static uint64_t dry_run(const Paths *p, const IterConfig *ic, long iter,
                        GString *why)
{
    Model m;
    WorkStats ws = { 0 };

    create_image(p, ic);
    model_init(&m, &ic->layout, ic->writethrough);
    crashsim_reset();
    crashsim_set_crash_hook(NULL, NULL);
    crashsim_set_torn_writes(false);
    uint64_t total = run_once(p, &m, ic, iter, why, &ws);
    stats.requests += ws.requests;
    stats.max_inflight = MAX(stats.max_inflight, ws.max_inflight);
    model_free(&m);
    return total;
}

void run_iteration(long iter, CorruptFn *corrupt, IterResult *res)
{
    IterConfig ic;
    Paths p;
    Model m;
    WorkStats ws = { 0 };
    GString *why = g_string_new(NULL);
    const char *stage = "dry run";
    uint64_t at = 0, total;

    memset(res, 0, sizeof(*res));
    choose_config(iter, &ic);
    char cut[160] = "no cut";
    char *desc = describe_config(&ic);
    paths_init(&p, iter);
    if (p.backing) {
        make_backing(&p, &ic.layout);
    }
    crashsim_set_early_flush(cfg.early_flush ? p.data : NULL);
    total = dry_run(&p, &ic, iter, why);
    if (why->len) {
        goto out;
    }

    /* The armed run: the same workload, cut at op `at`. */
    stage = "armed run";
    GRand *crng = g_rand_new_with_seed((guint32)iter_seed(iter, 2));
    at = g_rand_int_range(crng, 1, (gint32)total + 1);
    create_image(&p, &ic);
    model_init(&m, &ic.layout, ic.writethrough);
    crashsim_reset();
    crashsim_set_torn_writes(ic.torn);
    HookCtx hook = { crng, p.img, res };
    crashsim_set_crash_hook(crash_hook, &hook);
    crashsim_arm(at);
    run_once(&p, &m, &ic, iter, why, &ws);
    crashsim_set_crash_hook(NULL, NULL);
    g_rand_free(crng);
    res->crashed = crashsim_crashed();
    crashsim_get_cut_info(&res->cut);
    snprintf(cut, sizeof(cut), "at the cut %u ops in flight, %u flushes, "
             "%u metadata writes issued during a running %s flush",
             res->cut.ops_in_flight, res->cut.flushes_in_flight,
             res->meta_writes,
             cfg.plug.data_file_opt ? "data-file" : "image-file");
    if (!res->crashed && !why->len) {
        g_string_append_printf(why, "not reproducible: the armed run issued "
                               "%" PRIu64 " ops, the dry run %" PRIu64,
                               crashsim_op_count(), total);
    }
    if (!why->len) {
        if (p.data && !g_file_test(p.data_crash, G_FILE_TEST_EXISTS)) {
            /* Closed before the cut: its close wrote back the content,
             * all of it durable (the layer flushed it). */
            copy_file(p.data, p.data_crash);
        }
        if (corrupt) {
            GRand *r = g_rand_new_with_seed((guint32)iter_seed(iter, 3));
            corrupt(&p, &m, r);
            g_rand_free(r);
        }
        stage = NULL;
        /* Before verify, whose writable open stores the bitmap again. */
        bool bm_ok = !cfg.bitmap || verify_bitmap(&p, &m, why);
        res->ok = verify(&p, &m, why, &res->verdict) && bm_ok;
        note_cut(res);
        if (cfg.prefetch) {
            note_prefetch(&p);
        }
    }
    model_free(&m);

out:
    if (!res->ok && !corrupt) {
        printf("FAIL: -f %s -s %" PRIu64 " --iter %ld%s: ", cfg.fmt,
               cfg.seed, iter, replay_flags());
        if (stage) {
            printf("%s (%s): %s\n", stage, desc, why->str);
        } else {
            printf("crash at op %" PRIu64 " of %" PRIu64 " (%s; %s): %s\n",
                   at, total, desc, cut, why->str);
        }
    } else if (cfg.verbose) {
        printf("%s: iter %ld crash at op %" PRIu64 " of %" PRIu64 " (%s; "
               "%s)%s%s\n", res->ok ? "ok" : "flagged", iter, at, total, desc,
               cut, why->len ? ": " : "", why->str);
    }
    fflush(stdout);
    if (res->ok || !cfg.keep) {
        paths_remove(&p, true);
    }
    paths_free(&p);
    g_free(desc);
    g_free(ic.prefetch_opts);
    res->why = g_string_free(why, FALSE);
}

/* ---- main ---- */

static void usage(void)
{
    printf("usage: crashtest -f FMT [-n ITERATIONS] [-s SEED] [-o OPTIONS]\n"
           "                 [-c MODE] [--qd N] [--cache-pages N]\n"
           "                 [--tear|--no-tear] [--truncate|--no-truncate]\n"
           "                 [--long] [--iter I] [--keep] [-d DIR] [-v]\n"
           "                 [--data-file] [--no-backing] [--trace]\n"
           "                 [--self-test] [--unsafe] [--early-flush]\n"
           "                 [--no-data-file] [--open-opts OPTIONS]\n"
           "                 [--prefetch] [--max-disk SIZE] [--bitmap]\n"
           "Every choice not fixed by an option is drawn per crash point.\n"
           "--no-data-file leaves out the plug's extra file (FVD then keeps\n"
           "its data in the FVD file). --open-opts passes driver options\n"
           "to every open (e.g. -f fvd --open-opts prefetch=on).\n"
           "--prefetch (fvd): the prefetch job copies the base while the\n"
           "guest runs, with options drawn per crash point, on disks of at\n"
           "most --max-disk bytes (default 4 MiB with --prefetch).\n"
           "--bitmap (qcow2): an enabled persistent bitmap; after the cut\n"
           "it must be in_use or mark every acknowledged write.\n"
           "--unsafe (cache=unsafe) and --early-flush (flushes of the data\n"
           "file return while they still run) break the stack on purpose:\n"
           "failures are expected (shows that the checker bites).\n");
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "long", no_argument, NULL, 'L' },
        { "iter", required_argument, NULL, 'I' },
        { "tear", no_argument, NULL, 'T' },
        { "no-tear", no_argument, NULL, 't' },
        { "truncate", no_argument, NULL, 'G' },
        { "no-truncate", no_argument, NULL, 'g' },
        { "qd", required_argument, NULL, 'Q' },
        { "cache-pages", required_argument, NULL, 'P' },
        { "keep", no_argument, NULL, 'K' },
        { "self-test", no_argument, NULL, 'S' },
        { "unsafe", no_argument, NULL, 'U' },
        { "early-flush", no_argument, NULL, 'E' },
        { "no-data-file", no_argument, NULL, 'N' },
        { "data-file", no_argument, NULL, 'D' },
        { "no-backing", no_argument, NULL, 'B' },
        { "trace", no_argument, NULL, 'R' },
        { "open-opts", required_argument, NULL, 'O' },
        { "prefetch", no_argument, NULL, 'F' },
        { "max-disk", required_argument, NULL, 'M' },
        { "bitmap", no_argument, NULL, 'A' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    bool seeded = false;
    int c;

    cfg.seed = (uint64_t)time(NULL);
    while ((c = getopt_long(argc, argv, "f:n:s:o:d:c:vh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f': cfg.fmt = optarg; break;
        case 'n': cfg.iterations = strtol(optarg, NULL, 0); break;
        case 's': cfg.seed = strtoull(optarg, NULL, 0); seeded = true; break;
        case 'o': cfg.create_opts = optarg; break;
        case 'O': cfg.open_opts = optarg; break;
        case 'd': cfg.dir = g_strdup(optarg); break;
        case 'c': cfg.cache_mode = optarg; break;
        case 'v': cfg.verbose = true; break;
        case 'L': cfg.iterations = 20000; break;
        case 'I': cfg.only_iter = strtol(optarg, NULL, 0); break;
        case 'T': cfg.torn = 1; break;
        case 't': cfg.torn = 0; break;
        case 'G': cfg.truncate = 1; break;
        case 'g': cfg.truncate = 0; break;
        case 'Q': cfg.qd = (int)strtol(optarg, NULL, 0); break;
        case 'P': cfg.cache_pages = (int)strtol(optarg, NULL, 0); break;
        case 'K': cfg.keep = true; break;
        case 'S': cfg.self_test = true; break;
        case 'U': cfg.unsafe = true; break;
        case 'E': cfg.early_flush = "data"; break;
        case 'N': cfg.no_data_file = true; break;
        case 'D': cfg.data_file = true; break;
        case 'B': cfg.no_backing = true; break;
        case 'R': cfg.trace = true; break;
        case 'F': cfg.prefetch = true; break;
        case 'M': cfg.max_disk = strtoll(optarg, NULL, 0); break;
        case 'A': cfg.bitmap = true; break;
        case 'h': usage(); exit(0);
        default: usage(); exit(2);
        }
    }
    if (cfg.prefetch && (!cfg.fmt || strcmp(cfg.fmt, "fvd"))) {
        fprintf(stderr, "crashtest: --prefetch needs -f fvd\n");
        exit(2);
    }
    if (cfg.bitmap && (!cfg.fmt || strcmp(cfg.fmt, "qcow2"))) {
        fprintf(stderr, "crashtest: --bitmap needs -f qcow2\n");
        exit(2);
    }
    if (cfg.max_disk < 0 || cfg.max_disk > 64 * GiB) {
        fprintf(stderr, "crashtest: --max-disk must be 0..64G\n");
        exit(2);
    }
    if (cfg.prefetch && !cfg.max_disk) {
        cfg.max_disk = 4 * MiB;
    }
    if (cfg.self_test && !seeded) {
        cfg.seed = 1;           /* the self-test's verdicts are fixed */
    }
    if (cfg.self_test && !cfg.fmt) {
        cfg.fmt = "raw";
    }
    if (!cfg.fmt || optind != argc || cfg.qd < 0 || cfg.qd > MAX_QD ||
        cfg.cache_pages > 1024) {
        usage();
        exit(2);
    }
    if (cfg.cache_mode) {
        int flags = 0;
        bool wt;
        if (bdrv_parse_cache_mode(cfg.cache_mode, &flags, &wt) < 0) {
            fprintf(stderr, "crashtest: invalid cache mode '%s'\n",
                    cfg.cache_mode);
            exit(2);
        }
    }
}

void pick_plug(const char *fmt)
{
    BlockDriver *drv = bdrv_find_format(fmt);

    if (!drv) {
        fprintf(stderr, "crashtest: unknown format '%s'\n", fmt);
        exit(77);
    }
    cfg.fmt = fmt;
    cfg.plug = (FormatPlug) { fmt, bdrv_driver_supports_backing(drv) };
    for (unsigned i = 0; i < ARRAY_SIZE(format_plugs); i++) {
        if (!strcmp(format_plugs[i].fmt, fmt)) {
            cfg.plug = format_plugs[i];
        }
    }
    if (cfg.no_data_file && cfg.data_file) {
        fprintf(stderr, "crashtest: --data-file and --no-data-file exclude "
                "each other\n");
        exit(2);
    }
    if (cfg.no_data_file ||
        (cfg.plug.data_file_optional && !cfg.data_file)) {
        cfg.plug.data_file_opt = NULL;
        cfg.plug.data_file_open_opt = NULL;
    }
    if (cfg.data_file && !cfg.plug.data_file_opt) {
        fprintf(stderr, "crashtest: format '%s' has no data file option\n",
                fmt);
        exit(2);
    }
    if (cfg.no_backing) {
        cfg.plug.backing = false;
    }
    cfg.create_sets_cluster = false;
    if (cfg.plug.cluster_opt && cfg.create_opts) {
        QemuOpts *opts = qemu_opts_new();
        Error *err = NULL;
        if (qemu_opts_parse(opts, cfg.create_opts, NULL, &err) < 0) {
            die("-o", err);
        }
        if (qemu_opt_has(opts, cfg.plug.cluster_opt)) {
            cfg.create_sets_cluster = true;
            fixed_cluster_size = qemu_opt_get_size(opts, cfg.plug.cluster_opt,
                                                   0);
        }
        qemu_opts_del(opts);
    }
    if (cfg.plug.fit_create_opts) {
        cfg.plug.fit_create_opts(&cfg.plug);
    }
    if (cfg.plug.cache_opt && !cfg.plug.meta_page_size) {
        die("the format's plug has a cache option but no page size", NULL);
    }
}

static void print_summary(long passed, long failed)
{
    printf("cut points: %ld; a flush in flight at %ld; a write to another "
           "file issued while that flush ran at %ld\n", stats.cuts,
           stats.flush_in_flight, stats.write_during_flush);
    printf("metadata writes (to the image file) issued while a flush of %s "
           "ran: at %ld cut points, completed before the cut at %ld\n",
           cfg.plug.data_file_opt ? "the data file" : "the image file itself",
           stats.meta_during_flush, stats.meta_done_during_flush);
    printf("requests: %lu in the dry runs, up to %lu in flight; check: %ld "
           "missed bad data, %ld false alarms, %ld images with leaks\n",
           stats.requests, stats.max_inflight, stats.check_missed,
           stats.check_false_alarm, stats.leaky);
    if (cfg.prefetch) {
        printf("prefetch: completion recorded at %ld cut points, the base "
               "dropped at %ld\n", stats.pf_complete, stats.pf_dropped);
    }
    printf("%ld passed, %ld failed\n", passed, failed);
}

int main(int argc, char **argv)
{
    long passed = 0, failed = 0;
    int ret;

    parse_args(argc, argv);
    bdrv_init();
    pick_plug(cfg.fmt);
    if (!cfg.dir) {
        const char *base = g_file_test("/dev/shm", G_FILE_TEST_IS_DIR)
                           ? "/dev/shm" : g_get_tmp_dir();
        char *tmpl = g_build_filename(base, "crashtest-XXXXXX", NULL);
        cfg.dir = g_mkdtemp(tmpl);
        if (!cfg.dir) {
            die("cannot create a scratch directory", NULL);
        }
    }
    printf("crashtest: -f %s -s %" PRIu64 "%s, scratch %s\n", cfg.fmt,
           cfg.seed, replay_flags(), cfg.dir);
    fflush(stdout);
    if (cfg.self_test) {
        ret = self_test();
    } else {
        long first = cfg.only_iter >= 0 ? cfg.only_iter : 0;
        long end = cfg.only_iter >= 0 ? cfg.only_iter + 1 : cfg.iterations;
        for (long i = first; i < end; i++) {
            IterResult res;
            run_iteration(i, NULL, &res);
            if (res.ok) {
                passed++;
            } else {
                failed++;
            }
            g_free(res.why);
        }
        print_summary(passed, failed);
        ret = failed ? 1 : 0;
    }
    if (!cfg.keep) {
        rmdir(cfg.dir);
    }
    return ret;
}
