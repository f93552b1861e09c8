/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashsim: a filter that simulates a power cut below any format. This header
 * is the test-side control API: arm the power cut, then write out what each
 * crashsim node's disk could hold after it.
 *
 * Name: crashsim:IMAGE. The node opens IMAGE as a protocol node below itself
 * and passes every request down, so the running process sees its own writes.
 *
 * Model of the disk below each node:
 *  - Durable image: what survives any crash. At open it is IMAGE's content.
 *  - Log: every write, zero write, discard and truncate issued to the node
 *    since it was last made durable, in issue order, with its data. An op
 *    whose child request fails is dropped from the log (the child refused
 *    it); an op still in flight stays in the log.
 *  - Flush: a flush reaching the node takes the set S of logged ops that had
 *    COMPLETED when the flush was issued, flushes the child, and when the
 *    child flush succeeded (and the power is still on) applies S to the
 *    durable image in completion order and drops S from the log. Ops that
 *    were in flight when the flush was issued stay in the log. With
 *    BDRV_O_NO_FLUSH (cache=unsafe) flushes make nothing durable.
 *  - Discard: when applied, the range reads as zero ("may become zero": it
 *    either stays as it was, if not applied, or becomes zero).
 *  - Truncate: when applied, sets the size; bytes past a shrink are gone and
 *    a grow reads as zero.
 *  - The node advertises no FUA: the request layer emulates FUA by a flush.
 *
 * Power cut: device-level ops (write, zero write, discard, truncate, flush)
 * are numbered 1, 2, ... across ALL crashsim nodes of the process from the
 * last crashsim_reset(). When armed with n, op number n and every later op
 * (reads too) fail with -EIO and never reach the child. Ops issued before
 * the cut keep running and complete normally; a flush that had not
 * completed at the cut makes nothing durable.
 *
 * Post-crash content (crashsim_materialize): the durable image plus a random
 * subset of the logged ops, applied in a random order. The subset density
 * is drawn per call from {none, 1/4, 1/2, 3/4, all}, so the extremes "nothing
 * unflushed landed" and "everything landed" are both reached. With torn
 * writes on (crashsim_set_torn_writes), writes, zero writes and discards are
 * first split at 512-byte boundaries and each piece is chosen on its own:
 * a disk then only guarantees 512-byte sector atomicity.
 *
 * Meant for tests on small images: the node keeps in memory every logged
 * write's data, plus the pre-open content of every 512-byte sector it has
 * changed since open. Everything here runs in the event-loop thread.
 */
#ifndef BLOCK_CRASHSIM_H
#define BLOCK_CRASHSIM_H

#include "block.h"

/* Disarm, power on, op counter back to 0. Logs and durable images stay. */
void crashsim_reset(void);
/* Cut power when device op number nth (>= 1) is issued; 0 disarms. */
void crashsim_arm(uint64_t nth_op);
/* Cut power now: every later op fails. */
void crashsim_crash_now(void);
/* True once the power has been cut. */
bool crashsim_crashed(void);
/* Device ops issued since crashsim_reset(), including the one that hit the
 * power cut; ops failed by the cut after it are not counted. */
uint64_t crashsim_op_count(void);
/* Split writes into 512-byte pieces when materializing (default off). */
void crashsim_set_torn_writes(bool on);
/*
 * Call fn(opaque) once, at the moment the power is cut (by the armed op or
 * crashsim_crash_now), before any later op runs; NULL removes it. The hook
 * may run inside a coroutine (the op that hit the cut) and may call
 * crashsim_materialize*: that captures the disk at the instant of the cut,
 * even when the cut happens while the graph is being opened or closed.
 */
typedef void CrashsimHook(void *opaque);
void crashsim_set_crash_hook(CrashsimHook *fn, void *opaque);

/* True if bs is a crashsim node. */
bool crashsim_is_node(BlockDriverState *bs);
/* Open crashsim nodes, in open order; NULL past the end. */
BlockDriverState *crashsim_node(unsigned i);
/* IMAGE of a crashsim node, as given after "crashsim:". */
const char *crashsim_node_image(BlockDriverState *bs);
/* Logged (not yet durable) ops of a crashsim node. */
unsigned crashsim_node_log_length(BlockDriverState *bs);

/*
 * Write a possible post-crash content of crashsim node bs into a new raw
 * file out_path (created or truncated; sparse where zero). Choices come from
 * rng. Does not change the node. Call from outside coroutines, before the
 * node is closed (closing forgets everything). 0 or -errno.
 */
int crashsim_materialize(BlockDriverState *bs, const char *out_path,
                         GRand *rng, Error **errp);
/*
 * crashsim_materialize every open crashsim node to IMAGE + suffix, where
 * IMAGE loses a "file:" prefix. Returns the number of nodes written or
 * -errno (stops at the first failure).
 */
int crashsim_materialize_all(const char *suffix, GRand *rng, Error **errp);

#endif
