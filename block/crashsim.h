/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashsim: a simulated disk with a volatile write cache, below any format,
 * that can lose power at any device op. This header is the test-side control
 * API: timing, the power cut, and writing out what each disk could hold.
 *
 * Name: crashsim:IMAGE. The node opens IMAGE as a protocol node and takes its
 * content as the disk's initial content; the file is not written while the
 * node is open (a clean close writes the final content back).
 *
 * Model of each node's disk:
 *  - Live content: what reads return. A write, zero write, discard or
 *    truncate changes it when the op COMPLETES (not when it is issued).
 *  - Durable image: what survives any crash; at open, IMAGE's content.
 *  - Log: every write, zero write, discard and truncate issued since it was
 *    made durable, in issue order, with its data, including ops still in
 *    flight.
 *  - Flush: takes the set S of logged ops that had COMPLETED when the flush
 *    was issued; when the flush completes (with the power on), S is applied
 *    to the durable image in completion order and dropped from the log. Ops
 *    in flight when the flush was issued stay in the log. With
 *    BDRV_O_NO_FLUSH (cache=unsafe) flushes make nothing durable.
 *  - Discard: when applied, the range reads as zero. Truncate: sets the size;
 *    bytes past a shrink are gone and a grow reads as zero.
 *  - No FUA: the request layer emulates FUA by a flush.
 *  - BDRV_O_NOCACHE (cache=none, directsync) models O_DIRECT's rules: the
 *    node advertises a 4096-byte request alignment and refuses anything
 *    else with -EINVAL. The durability rules do not change (O_DIRECT does
 *    not bypass the disk's cache). IMAGE itself is opened without O_DIRECT,
 *    so it may live on tmpfs.
 *
 * Scheduling: ops do not complete when the host I/O does. Every op (reads
 * too) gets a completion time on a virtual clock: issue time plus a latency
 * drawn from the timing set by crashsim_set_timing() (a function of the seed
 * and the op's issue number, so a replay draws the same latencies). The
 * node installs an idle handler in the event loop (util/aio.h) that, each
 * time nothing else can run and no thread-pool job is out, moves the
 * virtual clock to the next event (an op completion or a timer) and
 * performs it. So flushes stay in flight while later writes are issued and
 * complete, and a run is a deterministic function of the workload and the
 * timing: two runs issue the same ops in the same order. All I/O the
 * workload does must go through crashsim nodes for that (crashtest wraps
 * the backing file too). The virtual clock stays on for the rest of the
 * process once a crashsim node was opened.
 *
 * Power cut: device-level ops (write, zero write, discard, truncate, flush)
 * are numbered 1, 2, ... across ALL crashsim nodes of the process from the
 * last crashsim_reset(). When armed with n, op number n and every later op
 * (reads too) fail with -EIO. Ops in flight at the cut stay in the log (they
 * may or may not have reached the disk) and complete with -EIO; a flush in
 * flight at the cut makes nothing durable.
 *
 * Post-crash content (crashsim_materialize): the durable image plus a random
 * subset of the logged ops, applied in a random order. The subset density
 * is drawn per call from {none, 1/4, 1/2, 3/4, all}, so the extremes "nothing
 * unflushed landed" and "everything landed" are both reached. With torn
 * writes on (crashsim_set_torn_writes), writes, zero writes and discards are
 * first split at 512-byte boundaries and each piece is chosen on its own:
 * a disk then only guarantees 512-byte sector atomicity.
 *
 * Meant for tests on sparse images: the node keeps in memory every logged
 * write's data and every 512-byte sector that was changed or read since
 * open. Everything here runs in the event-loop thread.
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
 * Latencies in virtual nanoseconds, uniform in [min, max] per op class,
 * drawn from seed and the op's issue number. With tail_permille, that many
 * ops in 1000 take tail_factor times longer (a slow flush, a stalled write).
 * Applies to ops issued from now on. Default: all zero (ops complete in
 * issue order).
 */
typedef struct CrashsimTiming {
    uint64_t seed;
    int64_t read_min_ns, read_max_ns;
    int64_t write_min_ns, write_max_ns;     /* also zero, discard, truncate */
    int64_t flush_min_ns, flush_max_ns;
    unsigned tail_permille, tail_factor;
} CrashsimTiming;
void crashsim_set_timing(const CrashsimTiming *timing);

/*
 * Fault injection for checker self-tests: flushes of the open node whose
 * IMAGE is image return to their caller as soon as they are issued, while
 * the disk makes their ops durable only when the flush really completes
 * (what a layer that skips waiting for a running flush does). NULL: off.
 */
void crashsim_set_early_flush(const char *image);

/*
 * Call fn(opaque) once, at the moment the power is cut (by the armed op or
 * crashsim_crash_now), before any later op runs; NULL removes it. The hook
 * may run inside a coroutine (the op that hit the cut) and may call
 * crashsim_materialize*: that captures the disk at the instant of the cut,
 * even when the cut happens while the graph is being opened or closed.
 */
typedef void CrashsimHook(void *opaque);
void crashsim_set_crash_hook(CrashsimHook *fn, void *opaque);

/*
 * What was in flight at the last power cut (zeroed by crashsim_reset): the
 * interleavings a crash test wants to reach. A write "during a flush" is a
 * logged write, zero write, discard or truncate on another node, issued
 * after a flush that was still running at the cut had been issued.
 */
typedef struct CrashsimCutInfo {
    bool valid;                     /* a cut happened since the reset */
    unsigned ops_in_flight;         /* all kinds, all nodes */
    unsigned flushes_in_flight;
    unsigned writes_during_flush;
    unsigned writes_done_during_flush;  /* ... that completed before it */
} CrashsimCutInfo;
void crashsim_get_cut_info(CrashsimCutInfo *info);
/*
 * Called from the crash hook (the state at the instant of the cut): logged
 * ops of node bs issued after a flush still running then began, on another
 * node (other_node) or on bs itself; *done gets how many had completed.
 */
unsigned crashsim_node_cut_writes(BlockDriverState *bs, bool other_node,
                                  unsigned *done);

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
 * rng. Does not change the node. Call from outside coroutines or from the
 * crash hook, before the node is closed (closing forgets everything).
 * 0 or -errno.
 */
int crashsim_materialize(BlockDriverState *bs, const char *out_path,
                         GRand *rng, Error **errp);
/*
 * crashsim_materialize every open read-write crashsim node to IMAGE +
 * suffix, where IMAGE loses a "file:" prefix. Returns the number of nodes
 * written or -errno (stops at the first failure).
 */
int crashsim_materialize_all(const char *suffix, GRand *rng, Error **errp);

#endif
