/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Background jobs: a coroutine (run) with progress, pause/resume and
 * cancel. The job's coroutines reach job_pause_point() between steps: a
 * paused job waits there, a cancelled one is told to stop.
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

Job *job_new(JobRunFunc *run, void *opaque);
void job_set_progress_cb(Job *job, JobProgressFunc *cb, void *opaque);
/* Enter run in a new coroutine (it runs until its first yield). */
void job_start(Job *job);

void job_progress_set_total(Job *job, uint64_t total);
void job_progress_update(Job *job, uint64_t done);
void job_progress_get(Job *job, uint64_t *current, uint64_t *total);

/* Pauses nest; the job stops at its next pause point. */
void job_pause(Job *job);
void job_resume(Job *job);
bool job_is_paused(Job *job);       /* a coroutine of it waits paused */
/* Ask the job to stop; run sees it at its pause points. */
void job_cancel(Job *job);
bool job_is_cancelled(Job *job);
/* Wait here while paused; true if the job is cancelled (stop). */
bool coroutine_fn job_pause_point(Job *job);

bool job_is_completed(Job *job);
/* Run the event loop until run returned; its result, -ECANCELED if the
 * job was cancelled and run returned success. */
int job_wait(Job *job);
void job_free(Job *job);

#endif
