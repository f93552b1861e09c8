/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD whole-image prefetch: a job (block/job.c) that copies every block
 * still in the base into the image, in order, as copy-on-read does (whole
 * blocks under the blocks' reservation, bits set without journal records),
 * so a guest write to the same blocks waits and lands on top: prefetch
 * never overwrites a guest write. It pauses in drained sections (a drain
 * user of the node), throttles itself as the 2011 prototype did (an EWMA
 * of its own read and write throughput; below the minimum, with
 * probability 1/2, a random pause of up to throttle-time) and by explicit
 * caps the prototype lacked (bandwidth, copies in flight), and restarts
 * from the bitmap after a reopen (populated blocks are skipped).
 */
#include "block/fvd/fvd.h"
#include "util/aio.h"

/* A sleeping worker: its timer wakes it, or stop does (cancel). The
 * clock may be virtual (crashtest), so nothing waits for time to pass
 * unless it has to. */
typedef struct FvdSleeper {
    Coroutine *co;
    QEMUTimer *timer;
    bool woken;
} FvdSleeper;

static void fvd_pf_wake(void *opaque)
{
    FvdSleeper *sl = opaque;

    if (!sl->woken) {
        sl->woken = true;
        aio_co_wake(sl->co);
    }
}

/* Yield once to the event loop (no timer). */
static void coroutine_fn fvd_pf_yield(void)
{
    aio_co_schedule(qemu_coroutine_self());
    qemu_coroutine_yield();
}

/* Sleep ns; false if the job was cancelled (stop wakes sleepers early). */
static bool coroutine_fn fvd_pf_sleep(FvdPrefetch *pf, int64_t ns)
{
    FvdSleeper sl = { .co = qemu_coroutine_self() };

    if (job_is_cancelled(pf->job)) {
        return false;
    }
    if (ns <= 0) {
        fvd_pf_yield();
        return !job_is_cancelled(pf->job);
    }
    sl.timer = aio_timer_new(qemu_get_aio_context(), fvd_pf_wake, &sl);
    timer_mod_ns(sl.timer, qemu_clock_get_ns() + ns);
    pf->sleepers = g_slist_prepend(pf->sleepers, &sl);
    qemu_coroutine_yield();
    pf->sleepers = g_slist_remove(pf->sleepers, &sl);
    timer_free(sl.timer);
    return !job_is_cancelled(pf->job);
}

/* One sample of the prototype's throttle (reference sheet 3.8 step 4). */
static void fvd_pf_measure(BDRVFvdState *s, FvdThroughput *t,
                           uint64_t bytes, int64_t ns)
{
    FvdPrefetch *pf = &s->pf;

    if (!pf->throttle_ns) {
        return;
    }
    t->ns += MAX(ns, 1);
    t->bytes += bytes;
    if (t->ns < pf->measure_ns) {
        return;
    }
    double sample = (double)t->bytes * 1e9 / t->ns;
    t->avg = t->have ? (pf->alpha * t->avg + (100 - pf->alpha) * sample) / 100
                     : sample;
    t->have = true;
    t->ns = 0;
    t->bytes = 0;
    if (t->avg < pf->min_throughput) {
        /* The coin keeps instances sharing a bottleneck from all backing
         * off at once. */
        if (g_random_boolean()) {
            int64_t ms = g_random_int_range(1, pf->throttle_ns / 1000000 + 1);
            pf->pause_until_ns = qemu_clock_get_ns() + ms * 1000000;
            s->stats.prefetch_pauses++;
        }
        pf->rd.have = pf->wr.have = false;
    }
}

/* Throttle pause and bandwidth cap before the next copy of len bytes. */
static bool coroutine_fn fvd_pf_wait(BDRVFvdState *s, uint64_t len)
{
    FvdPrefetch *pf = &s->pf;
    int64_t now = qemu_clock_get_ns();

    if (pf->pause_until_ns > now) {
        /* Fresh statistics after the pause. */
        if (!fvd_pf_sleep(pf, pf->pause_until_ns - now)) {
            return false;
        }
        pf->rd.ns = pf->rd.bytes = pf->wr.ns = pf->wr.bytes = 0;
    }
    if (pf->bandwidth) {
        now = qemu_clock_get_ns();
        if (!pf->bw_bytes) {
            pf->bw_start_ns = now;
        }
        int64_t due = pf->bw_start_ns +
                      (int64_t)((double)pf->bw_bytes * 1e9 / pf->bandwidth);
        pf->bw_bytes += len;
        if (due > now && !fvd_pf_sleep(pf, due - now)) {
            return false;
        }
    }
    return !job_pause_point(pf->job);
}

/*
 * Copy blocks [c, c + run), found in the base and reserved by the caller:
 * read the base, write the whole blocks, set their bits (no journal
 * record: a crash only makes them read from the unchanged base again).
 */
static int coroutine_fn fvd_pf_copy(BlockDriverState *bs, uint64_t c,
                                    uint64_t run, int64_t *rest_ns)
{
    BDRVFvdState *s = bs->opaque;
    int bits = s->header.block_bits;
    int64_t start = c << bits;
    int64_t len = MIN((int64_t)((c + run) << bits),
                      (int64_t)fvd_coverage(s)) - start;
    uint8_t *buf = qemu_blockalign(len);
    QEMUIOVector v;
    int64_t t0 = qemu_clock_get_ns(), t1;
    uint64_t reqs = s->guest_reqs;
    bool busy = s->guest_inflight > 0;
    int ret;

    BLKDBG_EVENT(bs->backing, "prefetch_read");
    ret = bdrv_co_pread(bs->backing, start, len, buf, 0);
    t1 = qemu_clock_get_ns();
    if (ret >= 0) {
        fvd_pf_measure(s, &s->pf.rd, len, t1 - t0);
        qemu_iovec_init_buf(&v, buf, len);
        BLKDBG_EVENT(s->data, "prefetch_write");
        ret = fvd_data_pwritev(bs, start, len, &v, 0, 0);
    }
    if (ret >= 0) {
        fvd_pf_measure(s, &s->pf.wr, len, qemu_clock_get_ns() - t1);
        ret = fvd_bitmap_set_cached(s, c, c + run, s->data,
                                    bdrv_get_write_gen(s->data));
    }
    if (ret >= 0) {
        s->soft_dirty = true;
        s->stats.prefetch_blocks += run;
    }
    /* The guest did I/O meanwhile: rest so that the workers together copy
     * at most busy_duty % of the time (duty d, w workers: rest w*100/d - 1
     * times the copy's duration). */
    busy = busy || s->guest_inflight > 0 || s->guest_reqs != reqs;
    if (busy && s->pf.busy_duty < 100) {
        *rest_ns = (qemu_clock_get_ns() - t0) *
                   (int64_t)(s->pf.max_inflight * 100 / s->pf.busy_duty - 1);
        s->stats.prefetch_rests++;
    }
    qemu_vfree(buf);
    return ret;
}

/* One step at block c: skip a run in the image or copy a run in the base;
 * *next is where the next step starts. */
static int coroutine_fn fvd_pf_step(BlockDriverState *bs, uint64_t c,
                                    uint64_t end, uint64_t *next,
                                    int64_t *rest_ns)
{
    BDRVFvdState *s = bs->opaque;
    bool in_image, in2;
    uint64_t run, run2;
    FvdAlloc a;
    int ret = fvd_block_run(s, c, end, &in_image, &run);

    *next = c;
    if (ret < 0) {
        return ret;
    }
    if (in_image) {
        *next = c + run;
        return 0;
    }
    /* A guest write or copy holds some of them: wait, look again. */
    if (fvd_alloc_wait(s, c, c + run)) {
        return 0;
    }
    fvd_alloc_begin(s, &a, c, c + run);
    ret = fvd_block_run(s, c, c + run, &in2, &run2);
    if (ret >= 0 && !in2 && run2 == run) {
        ret = fvd_pf_copy(bs, c, run, rest_ns);
        if (ret >= 0) {
            job_progress_update(s->pf.job, run);
            *next = c + run;
        }
    }
    fvd_alloc_end(s, &a);
    return ret;
}

/* Blocks [c, end): copy those still in the base, run by run. */
static int coroutine_fn fvd_pf_range(BlockDriverState *bs, uint64_t c,
                                     uint64_t end)
{
    BDRVFvdState *s = bs->opaque;
    FvdPrefetch *pf = &s->pf;

    while (c < end) {
        /* Between pause points every step counts as in flight, so a
         * drained section waits for it (its bitmap loads and its copy) and
         * it starts none inside one. */
        if (job_pause_point(pf->job)) {
            return 0;
        }
        /* A shrink (in a drained section) may have cut the coverage. */
        end = MIN(end, s->nb_blocks);
        if (c >= end) {
            break;
        }
        int64_t rest_ns = 0;
        pf->inflight++;
        int ret = fvd_pf_step(bs, c, end, &c, &rest_ns);
        pf->inflight--;
        if (ret < 0) {
            return ret;
        }
        if (rest_ns > 0 && !fvd_pf_sleep(pf, rest_ns)) {
            return 0;
        }
    }
    return 0;
}

/*
 * Claim the next unit of at most per blocks, [*c, *end): the profile's
 * runs first, in their order, then every block in order (blocks already
 * copied are skipped quickly). False when nothing is left.
 */
static bool fvd_pf_claim(BDRVFvdState *s, uint64_t per, uint64_t *c,
                         uint64_t *end)
{
    FvdPrefetch *pf = &s->pf;

    while (pf->order_idx < pf->order_count) {
        FvdProfRange *r = &pf->order[pf->order_idx];
        uint64_t r_end = MIN(r->start + r->len, s->nb_blocks);
        uint64_t pos = MAX(pf->order_pos, r->start);
        if (pos >= r_end) {
            pf->order_idx++;
            pf->order_pos = 0;
            continue;
        }
        *c = pos;
        *end = MIN(pos + per, r_end);
        pf->order_pos = *end;
        return true;
    }
    *c = pf->cursor;
    *end = MIN(*c - *c % per + per, s->nb_blocks);
    if (*c >= *end) {
        return false;
    }
    pf->cursor = *end;
    return true;
}

static void coroutine_fn fvd_pf_worker(void *opaque)
{
    BlockDriverState *bs = opaque;
    BDRVFvdState *s = bs->opaque;
    FvdPrefetch *pf = &s->pf;
    uint64_t per = MAX(pf->bytes >> s->header.block_bits, UINT64_C(1));

    while (pf->ret >= 0 && pf->cursor < s->nb_blocks) {
        /* Claim the next unit before anything yields; the bandwidth cap
         * counts its size (a profile's runs may be small). */
        uint64_t c, end;
        if (!fvd_pf_claim(s, per, &c, &end) ||
            !fvd_pf_wait(s, (end - c) << s->header.block_bits)) {
            break;
        }
        int ret = fvd_pf_range(bs, c, end);
        if (ret < 0 && pf->ret >= 0) {
            pf->ret = ret;      /* the prototype's rule: stop on an error */
        }
    }
    pf->workers--;
    qemu_co_queue_restart_all(&pf->done_queue);
}

/*
 * The loaded profile, if it was recorded over this base, becomes the
 * order of blocks to copy first; over another base it is ignored with a
 * warning. Bounded: one pass over the profile's (disjoint) ranges.
 */
static void coroutine_fn fvd_pf_use_profile(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdPrefetch *pf = &s->pf;
    FvdProfile *p = &s->prof;
    uint8_t id[FVD_PROF_ID_SIZE];
    uint64_t size;
    int bits = s->header.block_bits;

    if (!p->path) {
        return;
    }
    if (fvd_profile_base_id(bs, &size, id) < 0 || size != p->base_size ||
        memcmp(id, p->base_id, FVD_PROF_ID_SIZE)) {
        error_report("warning: FVD prefetch profile '%s' was not recorded "
                     "over this base; ignored", p->path);
        return;
    }
    pf->order = g_new(FvdProfRange, MAX(p->count, 1));
    for (uint32_t i = 0; i < p->count; i++) {
        uint64_t c = p->ranges[i].start >> bits;
        uint64_t e = MIN((p->ranges[i].start + p->ranges[i].len +
                          s->block_size - 1) >> bits, s->nb_blocks);
        if (c < e) {
            pf->order[pf->order_count++] = (FvdProfRange) {
                .start = c, .len = e - c };
            pf->profile_blocks += e - c;
        }
    }
}

static int coroutine_fn fvd_pf_run(Job *job, void *opaque)
{
    BlockDriverState *bs = opaque;
    BDRVFvdState *s = bs->opaque;
    FvdPrefetch *pf = &s->pf;
    uint64_t populated = 0, stray;
    int ret = 0;

    /* At least one yield: the open finishes (the base is attached). */
    if (!fvd_pf_sleep(pf, pf->start_delay_ns) || job_pause_point(job)) {
        goto out;
    }
    if (!bs->backing || !s->bitmap || bs->read_only) {
        goto out;               /* nothing to prefetch */
    }
    job_progress_set_total(job, s->nb_blocks);
    pf->inflight++;
    ret = fvd_bitmap_count(s, &populated, &stray);
    pf->inflight--;
    if (ret < 0) {
        goto out;
    }
    job_progress_update(job, populated);
    pf->inflight++;
    fvd_pf_use_profile(bs);
    pf->inflight--;
    pf->workers = pf->max_inflight;
    for (unsigned i = 1; i < pf->max_inflight; i++) {
        aio_co_schedule(qemu_coroutine_create(fvd_pf_worker, bs));
    }
    fvd_pf_worker(bs);
    while (pf->workers) {
        qemu_co_queue_wait(&pf->done_queue, NULL);
    }
    ret = pf->ret;
    if (ret >= 0 && !job_is_cancelled(job) && !job_pause_point(job)) {
        /* Every block is in the image: make the bits durable. */
        pf->inflight++;
        ret = fvd_co_flush(bs);
        if (ret >= 0) {
            ret = table_cache_flush(s->bitmap);
        }
        if (ret >= 0) {
            ret = fvd_record_complete(bs, pf->drop_base);
        }
        pf->inflight--;
    }
out:
    pf->ret = ret;
    pf->run_done = true;
    qemu_co_queue_restart_all(&pf->done_queue);
    return ret;
}

static void fvd_pf_drained_begin(void *opaque)
{
    BDRVFvdState *s = opaque;
    job_pause(s->pf.job);
}

static void fvd_pf_drained_end(void *opaque)
{
    BDRVFvdState *s = opaque;
    job_resume(s->pf.job);
}

static bool fvd_pf_drained_poll(void *opaque)
{
    BDRVFvdState *s = opaque;
    return s->pf.inflight > 0;
}

static const BdrvDrainOps fvd_pf_drain_ops = {
    .drained_begin = fvd_pf_drained_begin,
    .drained_end = fvd_pf_drained_end,
    .drained_poll = fvd_pf_drained_poll,
};

int fvd_prefetch_setup(BlockDriverState *bs, QemuOpts *opts, Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    FvdPrefetch *pf = &s->pf;
    int64_t delay = qemu_opt_get_number(opts, "prefetch-start-delay", 0);
    int64_t inflight = qemu_opt_get_number(opts, "prefetch-max-inflight", 2);
    int64_t measure = qemu_opt_get_number(opts, "prefetch-measure-time", 100);
    int64_t throttle = qemu_opt_get_number(opts, "prefetch-throttle-time",
                                           30000);
    int64_t alpha = qemu_opt_get_number(opts, "prefetch-alpha", 80);
    int64_t duty = qemu_opt_get_number(opts, "prefetch-busy-duty", 10);
    const char *profile;

    qemu_co_queue_init(&pf->done_queue);
    pf->bytes = qemu_opt_get_size(opts, "prefetch-bytes", 1 * MiB);
    pf->bandwidth = qemu_opt_get_size(opts, "prefetch-bandwidth", 0);
    pf->min_throughput = qemu_opt_get_size(opts, "prefetch-min-throughput",
                                           5 * MiB);
    if (delay < 0 || delay > 86400 || inflight < 1 || inflight > 16 ||
        measure < 1 || measure > 60000 || throttle < 0 ||
        throttle > 3600000 || alpha < 0 || alpha > 100 ||
        duty < 1 || duty > 100 ||
        pf->bytes < 512 || pf->bytes > 64 * MiB) {
        error_setg(errp, "Invalid FVD prefetch option (delay 0..86400 s, "
                   "max-inflight 1..16, measure-time 1..60000 ms, "
                   "throttle-time 0..3600000 ms, alpha 0..100, busy-duty "
                   "1..100, bytes 512..64M)");
        return -EINVAL;
    }
    pf->start_delay_ns = delay * 1000000000LL;
    pf->max_inflight = inflight;
    pf->measure_ns = measure * 1000000LL;
    pf->throttle_ns = throttle * 1000000LL;
    pf->alpha = alpha;
    pf->busy_duty = duty;
    profile = qemu_opt_get(opts, "prefetch-profile");
    if (profile && fvd_profile_load(s, profile, errp) < 0) {
        return -EINVAL;
    }
    if (fvd_profile_record_setup(bs, qemu_opt_get(opts,
                                                  "prefetch-profile-record"),
                                 errp) < 0) {
        return -EINVAL;
    }
    pf->drop_base = qemu_opt_get_bool(opts, "prefetch-drop-base", false);
    if (!qemu_opt_get_bool(opts, "prefetch", false) || bs->read_only ||
        !s->nb_blocks) {
        return 0;
    }
    pf->job = job_new(fvd_pf_run, bs);
    bdrv_add_drain_user(bs, &fvd_pf_drain_ops, s);
    pf->drain_user = true;
    job_start(pf->job);
    return 0;
}

void coroutine_fn fvd_prefetch_stop(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdPrefetch *pf = &s->pf;

    if (!pf->job) {
        return;
    }
    job_cancel(pf->job);
    for (GSList *l = pf->sleepers; l; l = l->next) {
        FvdSleeper *sl = l->data;
        if (!sl->woken) {
            sl->woken = true;
            timer_del(sl->timer);
            aio_co_schedule(sl->co);
        }
    }
    while (!pf->run_done) {
        qemu_co_queue_wait(&pf->done_queue, NULL);
    }
    while (!job_is_completed(pf->job)) {
        fvd_pf_yield();             /* run returned; its coroutine ends */
    }
    if (pf->drain_user) {
        bdrv_remove_drain_user(bs, &fvd_pf_drain_ops, s);
        pf->drain_user = false;
    }
    job_free(pf->job);
    pf->job = NULL;
    g_free(pf->order);
    pf->order = NULL;
    pf->order_count = pf->order_idx = 0;
}

const char *fvd_prefetch_state(BDRVFvdState *s)
{
    FvdPrefetch *pf = &s->pf;

    if (!pf->job) {
        return NULL;
    }
    if (pf->run_done) {
        return pf->ret < 0 ? "failed" :
               job_is_cancelled(pf->job) ? "cancelled" : "done";
    }
    return job_is_paused(pf->job) ? "paused" : "running";
}

Job *fvd_prefetch_job(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    return s->pf.job;
}
