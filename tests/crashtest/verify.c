/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest's checker: opens the crash copies as a restarted VM would, runs
 * the format's check, and compares every modelled cell and the size with
 * what the model allows; the check must agree with what the data shows.
 */
#include "crashtest.h"

#define READ_CHUNK      (256 * KiB)
#define MAX_REPORT      5

BlockDriverState *open_plain(const char *img, const char *data, bool rw,
                             Error **errp)
{
    QemuOpts *opts = qemu_opts_new();
    BlockDriverState *bs;

    if (data) {
        qemu_opt_set(opts, plug_data_file_open_opt(), data);
    }
    bs = bdrv_open(img, cfg.fmt, opts, (rw ? BDRV_O_RDWR : 0) | BDRV_O_UNMAP,
                   errp);
    qemu_opts_del(opts);
    return bs;
}

/*
 * The format's check without its per-problem lines on stderr (qcow2 lists
 * every leaked cluster, as QEMU's does; leaks are expected here), unless
 * -v. Its counts carry the verdict.
 */
static int quiet_check(BlockDriverState *bs, BdrvCheckResult *res)
{
    int saved = -1, null_fd, ret;

    if (!cfg.verbose) {
        fflush(stderr);
        saved = dup(STDERR_FILENO);
        null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (saved >= 0 && null_fd >= 0) {
            dup2(null_fd, STDERR_FILENO);
        }
        if (null_fd >= 0) {
            close(null_fd);
        }
    }
    ret = bdrv_check(bs, res, 0);
    if (saved >= 0) {
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        close(saved);
    }
    return ret;
}

/*
 * A format check exists to find damage: one that reports none over data
 * the model rules out missed it, one that reports corruption over valid
 * data raises a false alarm. Both are defects. Leaks are fine (a crash may
 * leave unreferenced space).
 */
void verdict_judge_check(Verdict *v, int check_ret, int corruptions,
                         int check_errors, GString *why)
{
    bool data_bad = v->bad_cells || v->bad_size;

    v->check_bad = (check_ret < 0 && check_ret != -ENOTSUP) ||
                   corruptions || check_errors;
    if (v->check_bad) {
        g_string_append_printf(why, "check: ret %d, %d corruptions, %d "
                               "check errors; ", check_ret, corruptions,
                               check_errors);
        if (!data_bad) {
            v->check_false_alarm = true;
            g_string_append(why, "check reports corruption on an image "
                            "whose data is all valid; ");
        }
    } else if (data_bad && check_ret != -ENOTSUP) {
        v->check_missed = true;
        g_string_append(why, "check found no errors over that bad data "
                        "(a second defect); ");
    }
}

/* One bad cell: the first few are described. */
static void report_cell(const Model *m, const Floor *f, Verdict *v,
                        int64_t cell, int64_t disk_cell, int64_t value,
                        int64_t where, GString *why)
{
    v->bad_zero += value == ID_ZERO;
    if (++v->bad_cells > MAX_REPORT) {
        return;
    }
    char *exp = floor_describe(m, f, cell);
    if (value == -1) {
        g_string_append_printf(why, "garbage at %" PRId64, disk_cell * CELL);
    } else if (value == -2) {
        g_string_append_printf(why, "data of offset %" PRId64 " at %" PRId64,
                               where * CELL, disk_cell * CELL);
    } else if (value == ID_ZERO) {
        g_string_append_printf(why, "zeroes at %" PRId64, disk_cell * CELL);
    } else if (value == ID_INITIAL) {
        g_string_append_printf(why, "initial data at %" PRId64,
                               disk_cell * CELL);
    } else {
        g_string_append_printf(why, "write %" PRId64 " at %" PRId64, value,
                               disk_cell * CELL);
    }
    g_string_append_printf(why, " (expected %s); ", exp);
    g_free(exp);
}

/* Compare the cells of window w below size with the model. */
static void verify_window(BlockDriverState *bs, const Model *m,
                          const Floor *f, const Window *w, int64_t size,
                          Verdict *v, GString *why)
{
    int64_t end = MIN(w->offset + w->len, size);
    uint8_t *buf = g_malloc(READ_CHUNK);

    for (int64_t off = w->offset; off < end; off += READ_CHUNK) {
        int64_t len = MIN(READ_CHUNK, end - off);
        int ret = bdrv_pread(bs, off, len, buf, 0);
        if (ret < 0) {
            g_string_append_printf(why, "read at %" PRId64 ": %s; ", off,
                                   strerror(-ret));
            v->bad_cells++;
            continue;
        }
        for (int64_t pos = 0; pos < len; pos += CELL) {
            int64_t disk_cell = (off + pos) / CELL;
            int64_t cell = w->first_cell + (off + pos - w->offset) / CELL;
            int64_t where = 0;
            int64_t value = cell_decode(buf + pos, disk_cell, &where);
            if (value < 0 || !floor_allows(m, f, cell, (uint32_t)value)) {
                report_cell(m, f, v, cell, disk_cell, value, where, why);
            }
        }
    }
    g_free(buf);
}

bool verify(const Paths *p, const Model *m, GString *why, Verdict *v)
{
    Error *err = NULL;
    BdrvCheckResult res;
    Floor f;
    int64_t lo, hi;

    memset(v, 0, sizeof(*v));
    BlockDriverState *bs = open_plain(p->img_crash, p->data_crash, true,
                                      &err);
    if (!bs) {
        g_string_append_printf(why, "open: %s", error_get_pretty(err));
        error_free(err);
        v->bad_cells++;
        return false;
    }
    int check_ret = quiet_check(bs, &res);
    v->leaks = res.leaks;
    int64_t size = bdrv_getlength(bs);
    if (!model_allows_size(m, size, &lo, &hi)) {
        g_string_append_printf(why, "size %" PRId64 " (allowed %" PRId64
                               "..%" PRId64 "); ", size, lo, hi);
        v->bad_size = true;
        size = MIN(size, lo);
    }
    floor_build(m, &f);
    for (int i = 0; i < m->layout->nwin; i++) {
        verify_window(bs, m, &f, &m->layout->win[i], size, v, why);
    }
    floor_free(&f);
    bdrv_unref(bs);
    if (v->bad_cells > MAX_REPORT) {
        g_string_append_printf(why, "%d bad cells in all; ", v->bad_cells);
    }
    verdict_judge_check(v, check_ret, res.corruptions, res.check_errors, why);
    return !v->bad_cells && !v->bad_size && !v->check_bad;
}
