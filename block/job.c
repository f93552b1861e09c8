/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Background jobs (block/job.h): one coroutine running the job's work,
 * progress counters with a callback, pause/resume through a queue where
 * the job's coroutines wait at their pause points, cancel, and the error
 * policy (report / ignore / stop / enospc) of its steps.
 */
#include "block/job.h"
#include "block_int.h"
#include "util/aio.h"

struct Job {
    JobRunFunc *run;
    void *opaque;
    JobProgressFunc *progress_cb;
    void *progress_opaque;
    uint64_t current, total;

    int pause_count;
    unsigned paused_waiters;    /* coroutines waiting at a pause point */
    bool cancelled;
    bool started, completed;
    int ret;
    CoQueue pause_queue;

    JobOnError on_read, on_write;
    JobErrorFunc *error_cb;
    void *error_opaque;
    int stop_error;             /* the error that stopped the job, or 0 */
    unsigned ignored_errors;
};

Job *job_new(JobRunFunc *run, void *opaque)
{
    Job *job = g_new0(Job, 1);

    job->run = run;
    job->opaque = opaque;
    qemu_co_queue_init(&job->pause_queue);
    return job;
}

void job_set_progress_cb(Job *job, JobProgressFunc *cb, void *opaque)
{
    job->progress_cb = cb;
    job->progress_opaque = opaque;
}

static void coroutine_fn job_entry(void *opaque)
{
    Job *job = opaque;

    job->ret = job->run(job, job->opaque);
    job->completed = true;
}

void job_start(Job *job)
{
    assert(!job->started);
    job->started = true;
    qemu_coroutine_enter(qemu_coroutine_create(job_entry, job));
}

void job_progress_set_total(Job *job, uint64_t total)
{
    job->total = total;
}

void job_progress_update(Job *job, uint64_t done)
{
    job->current += done;
    if (job->progress_cb) {
        job->progress_cb(job, job->current, job->total,
                         job->progress_opaque);
    }
}

void job_progress_set(Job *job, uint64_t current, uint64_t total)
{
    job->current = current;
    job->total = total;
    if (job->progress_cb) {
        job->progress_cb(job, job->current, job->total,
                         job->progress_opaque);
    }
}

void job_progress_get(Job *job, uint64_t *current, uint64_t *total)
{
    *current = job->current;
    *total = job->total;
}

void job_pause(Job *job)
{
    job->pause_count++;
}

void job_resume(Job *job)
{
    assert(job->pause_count > 0);
    if (--job->pause_count == 0) {
        job->stop_error = 0;
        qemu_co_queue_restart_all(&job->pause_queue);
    }
}

bool job_is_paused(Job *job)
{
    return job->paused_waiters > 0;
}

void job_cancel(Job *job)
{
    job->cancelled = true;
    qemu_co_queue_restart_all(&job->pause_queue);
}

bool job_is_cancelled(Job *job)
{
    return job->cancelled;
}

bool coroutine_fn job_pause_point(Job *job)
{
    while (job->pause_count > 0 && !job->cancelled) {
        job->paused_waiters++;
        qemu_co_queue_wait(&job->pause_queue, NULL);
        job->paused_waiters--;
    }
    return job->cancelled;
}

void job_set_on_error(Job *job, JobOnError on_read, JobOnError on_write)
{
    job->on_read = on_read;
    job->on_write = on_write;
}

void job_set_error_cb(Job *job, JobErrorFunc *cb, void *opaque)
{
    job->error_cb = cb;
    job->error_opaque = opaque;
}

JobErrorAction job_error_action(Job *job, bool is_read, int error)
{
    JobOnError policy = is_read ? job->on_read : job->on_write;
    JobErrorAction action;

    assert(error < 0);
    switch (policy) {
    case JOB_ON_ERROR_IGNORE:
        action = JOB_ERROR_ACTION_IGNORE;
        break;
    case JOB_ON_ERROR_STOP:
        action = JOB_ERROR_ACTION_STOP;
        break;
    case JOB_ON_ERROR_ENOSPC:
        action = error == -ENOSPC ? JOB_ERROR_ACTION_STOP
                                  : JOB_ERROR_ACTION_REPORT;
        break;
    default:
        action = JOB_ERROR_ACTION_REPORT;
        break;
    }
    if (action == JOB_ERROR_ACTION_STOP) {
        /* One pause per stop, undone by the user's resume. Several
         * coroutines of one job failing together stop it once. */
        if (!job->stop_error) {
            job->stop_error = error;
            job_pause(job);
        }
    } else if (action == JOB_ERROR_ACTION_IGNORE) {
        job->ignored_errors++;
    }
    if (job->error_cb) {
        job->error_cb(job, action, is_read, error, job->error_opaque);
    }
    return action;
}

int coroutine_fn job_co_step_error(Job *job, bool is_read, int error)
{
    switch (job_error_action(job, is_read, error)) {
    case JOB_ERROR_ACTION_IGNORE:
        return 1;
    case JOB_ERROR_ACTION_STOP:
        return job_pause_point(job) ? -ECANCELED : 0;
    default:
        return error;
    }
}

int job_stop_error(Job *job)
{
    return job->stop_error;
}

unsigned job_ignored_errors(Job *job)
{
    return job->ignored_errors;
}

bool job_is_completed(Job *job)
{
    return job->completed;
}

int job_wait(Job *job)
{
    assert(job->started);
    AIO_WAIT_WHILE(!job->completed);
    if (job->cancelled && job->ret == 0) {
        return -ECANCELED;
    }
    return job->ret;
}

void job_free(Job *job)
{
    if (job) {
        assert(!job->started || job->completed);
        g_free(job);
    }
}
