/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest's shared types: how a format plugs in, the per-iteration
 * configuration and disk layout, and the model of what the guest may read
 * after a crash. See docs/crash-testing.md.
 */
#ifndef CRASHTEST_H
#define CRASHTEST_H

#include "block-backend.h"
#include "block_int.h"
#include "block/crashsim.h"

#define CELL            16              /* model granularity in bytes */
#define ID_ZERO         0u              /* cell reads as zeroes */
#define ID_INITIAL      1u              /* cell holds the initial pattern */
#define ID_FIRST_WRITE  2u
#define MAX_WINDOWS     24
#define GROW_ROOM       (1 * MiB)       /* modelled room for grows */
#define MAX_QD          32

/* ---- how a format plugs in (table in crashtest.c) ---- */

typedef struct FormatPlug {
    const char *fmt;
    /* Created over a raw backing image (else the image is filled with the
     * initial pattern through the format before each run). */
    bool backing;
    /* Create and open option naming a data file the format opens itself;
     * crashtest names it "crashsim:PATH" at open, plain PATH at create. */
    const char *data_file_opt;
    /* The open option for it when named differently (qcow2: data_file at
     * create, data-file at open), else NULL. */
    const char *data_file_open_opt;
    /* The data file is used only with --data-file (qcow2), else always. */
    bool data_file_optional;
    /* Create option for the cluster size and its range (log2), or NULL. */
    const char *cluster_opt;
    int min_cluster_bits, max_cluster_bits;
    /* Open option bounding the metadata cache, in bytes, or NULL. */
    const char *cache_opt;
    /* A second cache bounded to the same bytes (qcow2's refcount blocks,
     * paged like its L2 tables), or NULL. */
    const char *cache_opt2;
    /* Bytes of one metadata cache page, and guest bytes one page maps, for
     * a cluster size (NULL: the format has no paged metadata). */
    int64_t (*meta_page_size)(int64_t cluster_size);
    int64_t (*meta_page_span)(int64_t cluster_size);
    /* Create options drawn per crash point, one string of the NULL-ended
     * list (e.g. journal sizes); options given with -o win. May be NULL. */
    const char *const *create_variants;
    /* Fit the plug to the -o create options (NULL: nothing to fit). */
    void (*fit_create_opts)(struct FormatPlug *plug);
} FormatPlug;

/* ---- command line ---- */

typedef struct Config {
    const char *fmt;
    FormatPlug plug;
    char *create_opts;
    char *open_opts;            /* --open-opts: driver open options */
    bool prefetch;              /* --prefetch: fvd's prefetch job runs */
    int64_t max_disk;           /* --max-disk: cap on the virtual size */
    bool create_sets_cluster;   /* -o names plug.cluster_opt */
    uint64_t seed;
    long iterations;
    long only_iter;             /* -1: all */
    const char *cache_mode;     /* NULL: a random mode per iteration */
    int qd;                     /* 0: random */
    int cache_pages;            /* -1: random */
    int torn;                   /* -1: random, else 0/1 */
    int truncate;               /* -1: random, else 0/1 */
    bool keep;
    bool verbose;
    bool trace;                 /* --trace: every request on stderr */
    bool self_test;
    bool unsafe;                /* cache=unsafe: flushes make nothing durable */
    bool data_file;             /* --data-file: use an optional data file */
    bool no_backing;            /* --no-backing: no backing file */
    const char *early_flush;    /* self-test fault: "data" or NULL */
    bool no_data_file;          /* --no-data-file: the plug's extra file off */
    bool bitmap;                /* --bitmap (qcow2): an enabled bitmap */
    char *dir;
} Config;

extern Config cfg;

/* The open option naming the data file (see FormatPlug). */
static inline const char *plug_data_file_open_opt(void)
{
    return cfg.plug.data_file_open_opt ? cfg.plug.data_file_open_opt
                                       : cfg.plug.data_file_opt;
}

/* ---- one iteration ---- */

/* A modelled region of the disk: cells [first_cell, first_cell + len/CELL). */
typedef struct Window {
    int64_t offset, len;
    int64_t first_cell;
} Window;

typedef struct Layout {
    int64_t size;               /* virtual size at creation */
    int nwin;                   /* sorted, disjoint; grow window last */
    Window win[MAX_WINDOWS + 1];
    bool grow;                  /* the last window lies past size */
    int64_t ncells;
} Layout;

typedef struct IterConfig {
    const char *cache_mode;
    int open_flags;             /* BDRV_O_NOCACHE / NO_FLUSH from the mode */
    bool writethrough;
    int64_t cluster_size;       /* 0: none or fixed by -o */
    const char *variant;        /* of plug.create_variants, or NULL */
    int meta_pages;             /* metadata pages of the disk (0: none) */
    int cache_pages;            /* 0: format default */
    char *prefetch_opts;        /* --prefetch: this point's job options */
    bool prefetch_wait;         /* the guest waits for the job's end */
    int qd;
    int steps;
    bool torn;
    bool truncate;
    CrashsimTiming timing;
    Layout layout;
} IterConfig;

/* One iteration's files. */
typedef struct Paths {
    char *img, *data;           /* data: NULL unless plug.data_file_opt */
    char *backing;              /* NULL unless plug.backing */
    char *img_crash, *data_crash;
} Paths;

/* ---- the model (model.c) ---- */

typedef enum WriteState { W_ISSUED, W_ACKED, W_FAILED } WriteState;

/* A guest write or zero write, by id (ids follow issue order). */
typedef struct WriteRec {
    bool zero;
    WriteState state;
    int64_t first, end;         /* modelled cells [first, end) */
    uint64_t ack_order;         /* 1, 2, ... in acknowledgement order */
} WriteRec;

/* A size set by a truncate. */
typedef struct SizeRec {
    int64_t size;
    uint64_t ack_order;         /* 0 until it completed */
} SizeRec;

typedef struct Model {
    const Layout *layout;
    bool writethrough;          /* an acknowledged write is durable */
    uint32_t *cur;              /* per cell: id of the last acked write */
    GArray *writes;             /* WriteRec, index id - ID_FIRST_WRITE */
    GArray *sizes;              /* SizeRec */
    uint64_t ack_counter;
    uint64_t durable_upto;      /* acks covered by a completed flush */
    int64_t initial_size;
    int64_t cur_size;
    bool all_durable;           /* clean close: everything acked is */
} Model;

void model_init(Model *m, const Layout *l, bool writethrough);
void model_free(Model *m);
/* Cell index of disk byte offset (inside a window), or -1. */
int64_t layout_cell(const Layout *l, int64_t offset);
int64_t layout_cell_offset(const Layout *l, int64_t cell);
/* Initial content of a cell: ID_INITIAL, or ID_ZERO in the grow window. */
uint32_t model_initial(const Model *m, int64_t cell);
/* Value a write id puts into cells (ID_ZERO for zero writes). */
uint32_t model_value(const Model *m, uint32_t id);

uint32_t model_issue_write(Model *m, int64_t offset, int64_t len, bool zero);
void model_ack_write(Model *m, uint32_t id);
void model_fail_write(Model *m, uint32_t id);
/* A flush issued now covers acks up to the returned value. */
uint64_t model_flush_issued(const Model *m);
void model_flush_done(Model *m, uint64_t covered);
guint model_resize_issued(Model *m, int64_t size);
void model_resize_done(Model *m, guint idx);
bool model_allows_size(const Model *m, int64_t size, int64_t *lo,
                       int64_t *hi);

/* Post-crash rules: build once, then ask per cell. */
typedef struct Floor {
    uint32_t *floor;            /* last durable write (or initial id) */
    uint32_t *zero_after;       /* last zero write id, 0 if none */
} Floor;
void floor_build(const Model *m, Floor *f);
void floor_free(Floor *f);
bool floor_allows(const Model *m, const Floor *f, int64_t cell,
                  uint32_t value);
char *floor_describe(const Model *m, const Floor *f, int64_t cell);

/* ---- cell patterns (model.c) ---- */

void cell_fill(uint8_t *p, uint32_t value, int64_t disk_cell);
void fill_range(uint8_t *buf, uint32_t value, int64_t offset, int64_t len);
/* Value of a cell at disk_cell: >= 0, or -1 garbage, -2 data of another
 * offset (*where gets that disk cell). */
int64_t cell_decode(const uint8_t *p, int64_t disk_cell, int64_t *where);
uint64_t mix64(uint64_t x);

/* ---- workload.c ---- */

typedef struct WorkStats {
    unsigned requests, reads, flushes, truncates, max_inflight;
} WorkStats;

/* Run the guest workload on bs; returns < 0 on an error before the cut,
 * with a reason in why. */
int run_workload(BlockBackend *blk, Model *m, const IterConfig *ic,
                 GRand *rng, GString *why, WorkStats *ws);

/* ---- verify.c ---- */

/* What the check of a crash image found. */
typedef struct Verdict {
    int bad_cells;
    int bad_zero;               /* of which zeroes where none may be */
    bool bad_size;
    bool check_bad;             /* corruptions or check errors */
    bool check_missed;          /* no corruption reported over bad data */
    bool check_false_alarm;     /* corruption reported over valid data */
    int64_t leaks;
} Verdict;

BlockDriverState *open_plain(const char *img, const char *data, bool rw,
                             Error **errp);
/* Check the crash copies in p against m; false (reasons in why) if bad. */
bool verify(const Paths *p, const Model *m, GString *why, Verdict *v);
/* The failure a check result adds to the data verdict (why gets it). */
void verdict_judge_check(Verdict *v, int check_ret, int corruptions,
                         int check_errors, GString *why);

/* ---- crashtest.c (used by the self-test) ---- */

typedef void CorruptFn(const Paths *p, const Model *m, GRand *rng);
typedef struct IterResult {
    bool ok;
    bool crashed;
    Verdict verdict;
    CrashsimCutInfo cut;
    /* Writes to the image file issued while a flush of the data file (or,
     * without one, of the image file itself) was running at the cut. */
    unsigned meta_writes, meta_writes_done;
    char *why;                  /* g_free */
} IterResult;
void run_iteration(long iter, CorruptFn *corrupt, IterResult *res);
uint64_t iter_seed(long iter, uint64_t salt);
void die(const char *what, Error *err) G_GNUC_NORETURN;
/* Select the format (and its plug; formats not in the table get a
 * default one: over a backing file if the driver supports one). */
void pick_plug(const char *fmt);

/* ---- selftest.c ---- */

int self_test(void);

#endif
