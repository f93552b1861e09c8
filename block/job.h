/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Background jobs: a coroutine (run) with progress, pause/resume, cancel
 * and an error policy. The job's coroutines reach job_pause_point()
 * between steps: a paused job waits there, a cancelled one is told to stop.
 */
#ifndef BLOCK_JOB_H
#define BLOCK_JOB_H

#include "util/coroutine.h"

typedef struct Job Job;

/* The job's work; its return value is the job's (negative errno). */
typedef int coroutine_fn JobRunFunc(Job *job, void *opaque);
/* Told each time progress moves: current of total units done. */
typedef void JobProgressFunc(Job *job, uint64_t current, uint64_t total,
                             void *opaque);

/*
 * What a job does when a step fails with an I/O error, as QEMU's on-error
 * (BlockdevOnError); reads and writes have a policy each.
 */
typedef enum JobOnError {
    JOB_ON_ERROR_REPORT,    /* the job fails with the error (default) */
    JOB_ON_ERROR_IGNORE,    /* the step is skipped, the job goes on */
    JOB_ON_ERROR_STOP,      /* the job pauses: resume retries the step,
                             * cancel ends the job */
    JOB_ON_ERROR_ENOSPC,    /* stop on ENOSPC, report any other error */
} JobOnError;

/* What the policy chose for one error. */
typedef enum JobErrorAction {
    JOB_ERROR_ACTION_REPORT,
    JOB_ERROR_ACTION_IGNORE,
    JOB_ERROR_ACTION_STOP,
} JobErrorAction;

/* Told of each error a policy handled (QEMU's BLOCK_JOB_ERROR event). */
typedef void JobErrorFunc(Job *job, JobErrorAction action, bool is_read,
                          int error, void *opaque);

Job *job_new(JobRunFunc *run, void *opaque);
void job_set_progress_cb(Job *job, JobProgressFunc *cb, void *opaque);
/* Enter run in a new coroutine (it runs until its first yield). */
void job_start(Job *job);

void job_progress_set_total(Job *job, uint64_t total);
void job_progress_update(Job *job, uint64_t done);
void job_progress_get(Job *job, uint64_t *current, uint64_t *total);
/* Set current and total at once (current may go back) and tell. */
void job_progress_set(Job *job, uint64_t current, uint64_t total);

/* Pauses nest; the job stops at its next pause point. */
void job_pause(Job *job);
void job_resume(Job *job);
bool job_is_paused(Job *job);       /* a coroutine of it waits paused */
/* Ask the job to stop; run sees it at its pause points. */
void job_cancel(Job *job);
bool job_is_cancelled(Job *job);
/* Wait here while paused; true if the job is cancelled (stop). */
bool coroutine_fn job_pause_point(Job *job);

/* Policies for errors of reads (source) and writes (target). */
void job_set_on_error(Job *job, JobOnError on_read, JobOnError on_write);
void job_set_error_cb(Job *job, JobErrorFunc *cb, void *opaque);
/*
 * A step failed with error (negative errno): the action the policy picks,
 * told to the error callback. STOP pauses the job once (job_resume
 * undoes it, as QEMU's block-job-resume after a stop on error).
 */
JobErrorAction job_error_action(Job *job, bool is_read, int error);
/*
 * The usual handling of a failed step: 0 to retry it (the job stopped
 * and was resumed), 1 to skip it (ignored), or what the job fails with:
 * error (report) or -ECANCELED (cancelled while stopped).
 */
int coroutine_fn job_co_step_error(Job *job, bool is_read, int error);
/* The error that last stopped the job, 0 once it is resumed. */
int job_stop_error(Job *job);
/* How many errors were ignored. */
unsigned job_ignored_errors(Job *job);

bool job_is_completed(Job *job);
/* Run the event loop until run returned; its result, -ECANCELED if the
 * job was cancelled and run returned success. */
int job_wait(Job *job);
void job_free(Job *job);

#endif
