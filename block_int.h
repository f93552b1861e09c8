/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What a driver sees: the BlockDriver callback table and BlockDriverState.
 *
 * Calling context: every callback except bdrv_probe, bdrv_getlength,
 * bdrv_refresh_limits and bdrv_debug_event runs in coroutine context, so any
 * callback may call bdrv_co_*() on its children and yield. All run in the
 * event-loop thread.
 */
#ifndef BLOCK_INT_H
#define BLOCK_INT_H

#include "block.h"

#define BLOCK_PROBE_BUF_SIZE 2048

typedef struct BlockLimits {
    /* Offset and length of every read/write the driver receives are
     * multiples of this (power of two; 1 means byte-granular). */
    uint32_t request_alignment;
    /* Largest read/write passed in one call (0: no limit); a multiple of
     * request_alignment. Larger requests are split by the layer. */
    uint64_t max_transfer;
    /* Preferred granularity for zeroes/discard (0: request_alignment; need
     * not be a power of two). */
    uint32_t pwrite_zeroes_alignment;
    uint32_t pdiscard_alignment;
    /* Largest zero write / discard passed in one call (0: no limit of its
     * own); the layer splits at multiples of the granularity above. */
    uint64_t max_pwrite_zeroes;
    uint64_t max_pdiscard;
    /* Memory alignment needed for buffers (O_DIRECT), power of two. */
    uint32_t min_mem_alignment;
} BlockLimits;

typedef struct BdrvTrackedRequest BdrvTrackedRequest;

/* One node's part of a reopen (block.c: bdrv_reopen). */
typedef struct BdrvReopenState {
    BlockDriverState *bs;
    int flags;                  /* the new open flags */
    QemuOpts *options;          /* the new options, NULL: unchanged */
    void *opaque;               /* the driver's, prepare to commit/abort */
} BdrvReopenState;

/* What a child is to its parent, for the permissions it gets. */
typedef enum BdrvChildRole {
    BDRV_CHILD_DATA     = 0x1,  /* holds guest data (add-cow's raw image) */
    BDRV_CHILD_METADATA = 0x2,  /* holds the format's metadata */
    BDRV_CHILD_FILTERED = 0x4,  /* a filter's child: same content */
    BDRV_CHILD_COW      = 0x8,  /* backing image */
} BdrvChildRole;

struct BlockDriver {
    /* ---- identity ---- */
    const char *format_name;
    int instance_size;              /* bytes of bs->opaque */
    const char *protocol_name;      /* set for protocols: "file", "sheepdog" */
    /*
     * Protocols: every name of this protocol addresses local storage (a
     * file or device of this host), never a peer. Only such a protocol may
     * be selected by a name or format read from an image header, unless the
     * user opted in (BDRV_O_HEADER_PROTOCOLS); see bdrv_header_names_allowed.
     */
    bool local_file;
    bool is_filter;                 /* passes requests to bs->file; never
                                     * reachable from an image header */
    /* Opens all its children itself from its options (quorum): the layer
     * opens no file child, and no image header and no name prefix may
     * select it (options only, as in QEMU). */
    bool own_children;
    bool supports_backing;
    /* Protocols that need no name (null-co): opening one without a file
     * name is not an error. */
    bool filename_optional;
    /* Protocols without bdrv_create whose "create" opens what exists (a
     * device) and checks it is big enough (QEMU's create_opts_simple). */
    bool create_opens_existing;
    const QemuOptDesc *create_opts; /* qemu-img create -o */
    const QemuOptDesc *open_opts;   /* runtime options for bdrv_open */
    /* Prefixes of options for children the driver opens itself
     * ("image" for blkdebug: image.driver=qcow2): the layer passes keys
     * "PREFIX.*" to bdrv_open unchecked. NULL-terminated; NULL: none. */
    const char *const *child_prefixes;
    const QemuOptDesc *amend_opts;  /* qemu-img amend -o; NULL: none */
    /*
     * Network protocols whose names or options can say how to reach or
     * authenticate to the storage (rbd's conf=, keyring=, mon_host=):
     * names read from image headers may never carry those, even with the
     * opt-in (docs/image-names.md). header_name_config returns true and
     * the offending key (g_free) when name carries one; header_forbidden_
     * opts lists option names (any dotted component) a json: description
     * from a header may not set on a node of this driver. NULL: none.
     */
    bool (*header_name_config)(const char *name, char **key);
    const char *const *header_forbidden_opts;

    /* ---- names (block/filename.c) ----
     * Options that change what the node shows, so that its name alone no
     * longer reopens it (QEMU's strong_runtime_opts); a trailing '.' names
     * a prefix ("set-state."). Present ones make the name json:{...}.
     */
    const char *const *strong_opts;
    /* The name of bs->file in a json: name; NULL: "file". */
    const char *file_child_name;
    /*
     * The node's exact name, when one can be made (g_malloc'd), else NULL:
     * opts is its json: description so far (the driver may add what its
     * name gave, e.g. blkdebug's config), file_exact its file's exact name
     * ("" if none). NULL callback: the generic rule.
     */
    char *(*bdrv_exact_filename)(BlockDriverState *bs, JsonValue *opts,
                                 const char *file_exact);
    /* The directory relative backing names are resolved against (with a
     * trailing '/'), or NULL with errp set. NULL: the generic rule. */
    char *(*bdrv_dirname)(BlockDriverState *bs, Error **errp);

    /* ---- probing ---- */
    /* Score 0..100 that buf (the first bytes of the image, zero padded to
     * BLOCK_PROBE_BUF_SIZE; buf_size is how many were read) is ours. */
    int (*bdrv_probe)(const uint8_t *buf, int buf_size, const char *filename);
    /* Protocols: score for a filename without a "name:" prefix. */
    int (*bdrv_probe_device)(const char *filename);

    /* ---- open / close / create ---- */
    /*
     * Formats: bs->file is open. Set bs->backing_file / bs->backing_format
     * when the image has a backing file; the layer opens it afterwards.
     * Protocols: bs->filename is the whole name ("" when the user named
     * the node by options only and filename_optional is set). options
     * holds only the keys listed in open_opts (validated) and those under
     * child_prefixes. flags are BDRV_O_*.
     */
    int coroutine_fn (*bdrv_open)(BlockDriverState *bs, QemuOpts *options,
                                  int flags, Error **errp);
    /* Release everything; the layer has drained and flushed bs. */
    void coroutine_fn (*bdrv_close)(BlockDriverState *bs);
    /* Fill bs->bl (the layer pre-fills defaults from bs->file). */
    void (*bdrv_refresh_limits)(BlockDriverState *bs, Error **errp);
    /* opts is validated against create_opts. */
    int coroutine_fn (*bdrv_create)(const char *filename, QemuOpts *opts,
                                    Error **errp);
    /* Protocols: remove the file filename names (a format's create undoing
     * a file it made, e.g. add-cow's raw image after a later step failed).
     * Only for files the caller created; NULL: not supported. */
    int coroutine_fn (*bdrv_co_delete_file)(const char *filename,
                                            Error **errp);

    /* ---- requests ----
     * Promises for preadv/pwritev: offset and bytes are multiples of
     * bs->bl.request_alignment, bytes <= bl.max_transfer when set, bytes > 0,
     * qiov (from qiov_offset) covers exactly bytes; flags only contain bits
     * the driver listed in supported_write_flags (writes) or none (reads;
     * filters may get BDRV_REQ_COPY_ON_READ, to pass to their file).
     * The range does not overlap any serialising request in flight.
     */
    int coroutine_fn (*bdrv_co_preadv)(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags);
    int coroutine_fn (*bdrv_co_pwritev)(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset,
                                        BdrvRequestFlags flags);
    /* May return -ENOTSUP: the layer then writes zero buffers (unless
     * BDRV_REQ_NO_FALLBACK). flags: MAY_UNMAP, FUA, NO_FALLBACK subsets of
     * supported_zero_flags. Range aligned to request_alignment. */
    int coroutine_fn (*bdrv_co_pwrite_zeroes)(BlockDriverState *bs,
                                              int64_t offset, int64_t bytes,
                                              BdrvRequestFlags flags);
    /* Advisory; -ENOTSUP is treated as success by the layer. */
    int coroutine_fn (*bdrv_co_pdiscard)(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes);
    /* Write the driver's cached metadata to bs->file (the layer flushes
     * bs->file afterwards). */
    int coroutine_fn (*bdrv_co_flush)(BlockDriverState *bs);
    /* Protocols: make every completed write durable (fdatasync). Skipped
     * with BDRV_O_NO_FLUSH. */
    int coroutine_fn (*bdrv_co_flush_to_disk)(BlockDriverState *bs);
    /*
     * Status of [offset, offset+bytes) (bytes > 0, inside the image). Return
     * BDRV_BLOCK_* for the first *pnum bytes (1 <= *pnum <= bytes). Without
     * this callback: formats report DATA|ALLOCATED; filters pass to
     * bs->file. BDRV_BLOCK_RAW asks the layer to query *file at *map.
     */
    int coroutine_fn (*bdrv_co_block_status)(BlockDriverState *bs,
                                             bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             int64_t *map,
                                             BlockDriverState **file);
    int coroutine_fn (*bdrv_co_truncate)(BlockDriverState *bs, int64_t offset,
                                         bool exact, PreallocMode prealloc,
                                         Error **errp);
    /* Removable media (host_cdrom): false while no medium is present;
     * every request to a graph over this node then fails with
     * -ENOMEDIUM. NULL: always present. */
    bool (*bdrv_is_inserted)(BlockDriverState *bs);
    /* Virtual size in bytes (cheap; no I/O). */
    int64_t (*bdrv_getlength)(BlockDriverState *bs);
    /* Default: sum over bs->file (and driver-opened files via the hook). */
    int64_t (*bdrv_get_allocated_file_size)(BlockDriverState *bs);

    /* ---- information and maintenance ---- */
    int (*bdrv_get_info)(BlockDriverState *bs, BlockDriverInfo *bdi);
    ImageInfoSpecific *(*bdrv_get_specific_info)(BlockDriverState *bs,
                                                 Error **errp);
    /* The node's own background job that copies its backing file's data
     * into it (fvd's prefetch), while it runs or after it ended; NULL if
     * none. Owned by the driver until close. */
    Job *(*bdrv_get_populate_job)(BlockDriverState *bs);
    bool (*bdrv_has_zero_init)(BlockDriverState *bs);
    int coroutine_fn (*bdrv_co_check)(BlockDriverState *bs,
                                      BdrvCheckResult *res,
                                      BdrvCheckMode fix);
    /* opts validated against create_opts; only the keys given change.
     * Long work reports its progress with bdrv_amend_progress(). */
    int coroutine_fn (*bdrv_amend_options)(BlockDriverState *bs,
                                           QemuOpts *opts, bool force,
                                           Error **errp);
    int coroutine_fn (*bdrv_change_backing_file)(BlockDriverState *bs,
                                                 const char *backing_file,
                                                 const char *backing_fmt);
    /* Drop every cluster of the image (qemu-img commit empties the top
     * image): it reads as its backing file afterwards. */
    int coroutine_fn (*bdrv_make_empty)(BlockDriverState *bs);
    /* qemu-img bitmap: change a persistent dirty bitmap. */
    bool (*bdrv_supports_persistent_bitmaps)(BlockDriverState *bs);
    int coroutine_fn (*bdrv_co_bitmap_list)(BlockDriverState *bs,
                                            BdrvBitmapInfo **list, int *n,
                                            Error **errp);
    int coroutine_fn (*bdrv_co_bitmap_ops)(BlockDriverState *bs,
                                           const BdrvBitmapOp *ops,
                                           int nb_ops, int *failed,
                                           Error **errp);
    /* qemu-img measure (opts validated against create_opts; in_bs may be
     * NULL). Not in coroutine context. */
    BlockMeasureInfo *(*bdrv_measure)(QemuOpts *opts, BlockDriverState *in_bs,
                                      Error **errp);

    /* ---- snapshots and VM state ---- */
    int coroutine_fn (*bdrv_snapshot_create)(BlockDriverState *bs,
                                             QEMUSnapshotInfo *sn,
                                             Error **errp);
    int coroutine_fn (*bdrv_snapshot_goto)(BlockDriverState *bs,
                                           const char *snapshot_id,
                                           Error **errp);
    /* Read-only nodes: the snapshot (by id, else by name; either may be
     * NULL) becomes what is read, nothing is written (qemu-img convert
     * -l). */
    int coroutine_fn (*bdrv_snapshot_load_tmp)(BlockDriverState *bs,
                                               const char *id,
                                               const char *name,
                                               Error **errp);
    int coroutine_fn (*bdrv_snapshot_delete)(BlockDriverState *bs,
                                             const char *snapshot_id,
                                             const char *name, Error **errp);
    int coroutine_fn (*bdrv_snapshot_list)(BlockDriverState *bs,
                                           QEMUSnapshotInfo **psn_info);
    int coroutine_fn (*bdrv_co_save_vmstate)(BlockDriverState *bs,
                                             QEMUIOVector *qiov, int64_t pos);
    int coroutine_fn (*bdrv_co_load_vmstate)(BlockDriverState *bs,
                                             QEMUIOVector *qiov, int64_t pos);

    /* ---- testing ---- */
    /* May suspend the calling coroutine (breakpoints). */
    void (*bdrv_debug_event)(BlockDriverState *bs, const char *event);
    int (*bdrv_debug_breakpoint)(BlockDriverState *bs, const char *event,
                                 const char *tag);
    int (*bdrv_debug_remove_breakpoint)(BlockDriverState *bs,
                                        const char *tag);
    int (*bdrv_debug_resume)(BlockDriverState *bs, const char *tag);
    bool (*bdrv_debug_is_suspended)(BlockDriverState *bs, const char *tag);

    /* ---- permissions and locking (block/perm.c) ----
     * Formats: the permissions bs asks of bs->file when bs itself holds
     * (perm, shared); NULL: bdrv_default_child_perm with FILTERED for
     * filters, METADATA|DATA for formats.
     */
    void (*bdrv_file_perm)(BlockDriverState *bs, uint64_t perm,
                           uint64_t shared, uint64_t *nperm,
                           uint64_t *nshared);
    /*
     * Protocols with lockable storage, two phases over the whole graph:
     * check takes what (perm, shared) needs on top of the current state and
     * fails (releasing it again) if another user conflicts; then either
     * set (commit exactly the new state) or abort (back to the state before
     * check) follows. A check that only drops permissions cannot fail.
     */
    int (*bdrv_check_perm)(BlockDriverState *bs, uint64_t perm,
                           uint64_t shared, Error **errp);
    void (*bdrv_set_perm)(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared);
    void (*bdrv_abort_perm_update)(BlockDriverState *bs);

    /* raw-like formats: snapshots and VM state go to bs->file. */
    bool passthrough_snapshots;
    /* Request flags the driver honours on writes / zero writes. */
    BdrvRequestFlags supported_write_flags;
    BdrvRequestFlags supported_zero_flags;

    /* ---- drained sections (block/io.c) ----
     * begin: the first drained section of bs starts; stop background work
     * (timers, prefetch) from starting requests. poll: true while work the
     * driver started on its own is still running. end: the last section
     * ended; background work may resume. Requests of parents and users
     * are already stopped and complete while poll is asked.
     */
    void (*bdrv_drain_begin)(BlockDriverState *bs);
    bool (*bdrv_drain_poll)(BlockDriverState *bs);
    void (*bdrv_drain_end)(BlockDriverState *bs);

    /* ---- reopen (block.c: bdrv_reopen) ----
     * prepare: get ready to run with state->flags / state->options (both
     * validated) without changing what is in use; keep what is needed in
     * state->opaque. All nodes of the chain are prepared, and the lock
     * changes checked, before any commits; if anything fails, abort is
     * called for every node whose prepare succeeded. commit and abort
     * cannot fail. Drivers without prepare are closed and opened again
     * with the new flags (formats: their own children too).
     */
    int (*bdrv_reopen_prepare)(BdrvReopenState *state, Error **errp);
    void (*bdrv_reopen_commit)(BdrvReopenState *state);
    void (*bdrv_reopen_abort)(BdrvReopenState *state);
    /*
     * A reopen with options keeps the node's old options unless new ones
     * replace them; before the new ones are set, the driver may drop old
     * options that new ones supersede (qcow2: a new overlap-check template
     * replaces every old overlap-check option). old_opts is a copy.
     */
    void (*bdrv_join_options)(QemuOpts *old_opts, const QemuOpts *new_opts);
};

struct BdrvTrackedRequest {
    BlockDriverState *bs;
    int64_t offset, bytes;
    bool is_write;
    bool serialising;
    int64_t overlap_offset, overlap_bytes;   /* range used for overlap tests */
    Coroutine *co;
    CoQueue wait_queue;                      /* waiters on this request */
    BdrvTrackedRequest *waiting_for;
    BdrvTrackedRequest *next, *prev;
};

/*
 * For a driver's bdrv_amend_options: done of total units of its work (it
 * may call this as often as it likes, and done/total may go back when the
 * total grows; qemu-img amend -p prints 100 * done / total).
 */
void bdrv_amend_progress(BlockDriverState *bs, uint64_t done,
                         uint64_t total);

struct BlockDriverState {
    BlockDriver *drv;
    void *opaque;
    int refcnt;

    char filename[PATH_MAX];            /* as opened (with protocol prefix) */
    char *node_name;                    /* node-name= at open, or NULL */
    char backing_file[PATH_MAX];        /* as stored in the image header */
    char backing_format[32];            /* as stored; "" if none */

    BlockDriverState *file;             /* protocol/data child (formats) */
    BlockDriverState *backing;          /* backing child, or NULL */
    /* A data child the driver opened itself (add-cow's raw image); the
     * driver owns the reference, the layer only walks it (drain, debug). */
    BlockDriverState *data_file;
    /* More children the driver opened itself (quorum's children.N), in a
     * g_malloc'd array: the layer walks them (drain, permissions through
     * bdrv_file_perm, parents) and drops them after bdrv_close (also when
     * the open fails after bdrv_open succeeded); a failed bdrv_open
     * leaves none. */
    BlockDriverState **children;
    unsigned nb_children;

    int open_flags;                     /* BDRV_O_* */
    bool read_only;
    bool encrypted;                     /* guest data encrypted (luks) */

    Job *amend_job;                     /* the amend running, or NULL */

    BlockLimits bl;
    int64_t total_bytes;                /* cached length, -1 if unknown */

    /* request tracking */
    BdrvTrackedRequest *tracked_requests;
    unsigned serialising_in_flight;
    unsigned in_flight;                 /* requests not yet completed */

    /* drained sections (block/io.c) */
    int quiesce_counter;                /* nested drained sections */
    int parent_quiesce_counter;         /* sections of nodes below it */
    GSList *drain_users;                /* of BdrvDrainUser: paused by them */
    GSList *drained_parents;            /* per section begun here: the
                                         * GPtrArray of parents it holds */

    /* every open node, for finding a node's parents (block.c) */
    BlockDriverState *node_next, *node_prev;
    bool node_listed;

    /*
     * Flush generations (block/io.c). write_gen counts writes, zero
     * writes, discards and truncates of this node as they complete; a
     * flush started when write_gen was G makes them durable up to G.
     * Flushes of one node run one at a time; callers arriving while one
     * runs either share it (if it covers what they need) or share the
     * next one.
     */
    uint64_t write_gen;
    uint64_t flushed_gen;               /* covered by the last good flush */
    uint64_t flushed_seq;               /* sequence number of that flush */
    uint64_t flush_started;             /* flushes started so far */
    bool flush_active;
    uint64_t flush_active_gen, flush_active_seq;
    int flush_last_ret;                 /* result of the last flush */
    CoQueue flush_queue;                /* waiting for the active flush */
    bool probed;                        /* format chosen by probing */
    QemuOpts *options;                  /* driver options given at open */
    /* Nodes opened as protocols (and quorum): the options they were opened
     * with, for their name (bs->options is the formats'). */
    QemuOpts *given_opts;
    /* The user named the backing file (backing.file.filename=...) and it
     * is not what the header names: the backing node is part of bs's
     * json: name (QEMU's bdrv_backing_overridden). */
    bool backing_overridden;
    int backing_depth;                  /* links below the opened root */

    /* permissions (block/perm.c): what bs's users hold and share */
    uint64_t perm, shared_perm;
    /* roots: what the user asked for at open (bdrv_restore_perms) */
    uint64_t user_perm, user_shared;
};

/*
 * Driver registration: each driver registers itself from its own file with
 * BLOCK_DRIVER_REGISTER(bdrv_foo); (a constructor, so block.c names no
 * driver; the tools link the block library whole for that).
 */
void bdrv_register(BlockDriver *drv);
#define BLOCK_DRIVER_REGISTER(drv) \
    static void __attribute__((constructor)) drv##_register(void) \
    { \
        bdrv_register(&drv); \
    }
/* Best probe score of every format for buf, or NULL (used by raw to refuse
 * writes that would make a probed image look like another format). */
BlockDriver *bdrv_probe_all(const uint8_t *buf, int buf_size,
                            const char *filename, int *score);

/*
 * Open a child node: protocol (by prefix) with an optional format on top.
 * fmt NULL and allow_probe false means "protocol node only". Used by formats
 * that keep extra files (add-cow's raw image, FVD's data file).
 */
BlockDriverState *bdrv_open_child(const char *filename, const char *fmt,
                                  QemuOpts *options, int flags,
                                  bool allow_probe, Error **errp);

/*
 * Remove a file created with bdrv_create_file (through its protocol's
 * bdrv_co_delete_file; -ENOTSUP without one). For cleaning up after a
 * failed create only.
 */
int coroutine_fn bdrv_co_delete_file(const char *filename, Error **errp);

/*
 * Open a protocol node for a file that parent's image header names (add-cow's
 * raw image): name is the string as stored, what says what it is in errors
 * ("Image file"). The header-name rule (bdrv_header_names_allowed, with
 * parent's opt-in flags) applies; a relative name resolves against parent's
 * own name. Use bdrv_open_child for names the user gave.
 */
BlockDriverState *bdrv_open_header_file(BlockDriverState *parent,
                                        const char *name, const char *what,
                                        int flags, Error **errp);

/*
 * Range locks (block/range-lock.c), for a driver's own serialisation
 * (add-cow and FVD allocations): *list holds the ranges [start, end), in
 * the driver's units, that are locked now. The caller checks with
 * bdrv_range_wait() and locks with bdrv_range_lock() without yielding in
 * between; it does not nest locks.
 */
typedef struct BdrvRangeLock {
    uint64_t start, end;
    CoQueue waiters;
    struct BdrvRangeLock *next;
} BdrvRangeLock;

/* The first locked range of list overlapping [start, end), or NULL. */
BdrvRangeLock *bdrv_range_overlap(BdrvRangeLock *list, uint64_t start,
                                  uint64_t end);
/*
 * Wait until the first locked range overlapping [start, end) is unlocked:
 * false without one (no wait). Others may be locked by then, so callers
 * look again. *waits (when not NULL) counts the waits, before each one.
 */
bool coroutine_fn bdrv_range_wait(BdrvRangeLock *list, uint64_t start,
                                  uint64_t end, uint64_t *waits);
/* Lock [start, end) with l (the caller's, until bdrv_range_unlock()). */
void bdrv_range_lock(BdrvRangeLock **list, BdrvRangeLock *l, uint64_t start,
                     uint64_t end);
/* Unlock l and wake everyone waiting on it. */
void bdrv_range_unlock(BdrvRangeLock **list, BdrvRangeLock *l);

/*
 * Encrypted data through bounce buffers (block/io.c), for formats that
 * encrypt guest data (luks, qcow2). crypt() en- or decrypts buf in place:
 * n bytes at host offset host that hold guest offset guest.
 */
typedef void BdrvCryptFunc(void *opaque, bool encrypt, uint64_t host,
                           uint64_t guest, uint8_t *buf, size_t n);
/*
 * Read host bytes [host, +bytes) of bs, decrypt them and copy them into qiov
 * at qiov_offset; or (write) copy them out of qiov, encrypt them and write
 * them there. One request of bs (with flags) per piece of at most bounce
 * bytes; the bounce buffer is wiped before it is freed. 0 or -errno.
 */
int coroutine_fn bdrv_co_crypt_bounce(BlockDriverState *bs, bool write,
                                      uint64_t host, uint64_t guest,
                                      uint64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags, size_t bounce,
                                      BdrvCryptFunc *crypt, void *opaque);

/*
 * Asynchronous requests (block/io.c), for bdrv_aio_* and blk_aio_*:
 * t->entry(t->arg) runs in a new coroutine (counted in *t->in_flight while
 * it runs, unless NULL), then t->cb(t->opaque, *t->ret) runs, from the
 * event loop if the coroutine finished before bdrv_aio_task_start()
 * returned (a callback never runs before that). t is the first member of a
 * g_malloc'ed block that is freed after the callback.
 */
typedef struct BdrvAioTask {
    CoroutineEntry *entry;
    void *arg;
    int *ret;
    unsigned *in_flight;
    BlockCompletionFunc *cb;
    void *opaque;
    bool submitting;
    bool done;
} BdrvAioTask;

void bdrv_aio_task_start(BdrvAioTask *t);

/* ---- permissions (block/perm.c) ---- */
/* "write, resize" style names of the bits in perm (g_free). */
char *bdrv_perm_names(uint64_t perm);
/*
 * QEMU's default rules: what a node bs holding (perm, shared) asks of a
 * child with this role. COW: consistent read at most, sharing writes when
 * bs does; FILTERED: the same; METADATA: write and resize when bs is
 * writable, consistent read unless BDRV_O_NO_IO, never shares write or
 * resize; DATA: never shares resize, write implies resize.
 */
void bdrv_default_child_perm(BlockDriverState *bs, BdrvChildRole role,
                             uint64_t perm, uint64_t shared,
                             uint64_t *nperm, uint64_t *nshared);
/*
 * Give bs (perm, shared) and every node below it what its parent asks of
 * it: all nodes' checks pass and commit, or none changes. Errors carry the
 * protocol's message and hint ("Failed to get \"write\" lock").
 */
int bdrv_set_perm(BlockDriverState *bs, uint64_t perm, uint64_t shared,
                  Error **errp);
/* The permissions a user opening a root with flags holds and shares. */
void bdrv_user_perm(int flags, uint64_t *perm, uint64_t *shared);
/*
 * Format node bs has just got bs->file and has no users yet: lock what the
 * format itself needs of the file before the driver reads or writes it
 * (a writable format's file: write and resize, shared with nobody).
 */
int bdrv_attach_file_perm(BlockDriverState *bs, Error **errp);
/*
 * Format node bs (in use) is about to take data as its data file (add-cow's
 * amend image_file=): lock what bs's current permissions ask of a data
 * child, failing if another user conflicts.
 */
int bdrv_attach_data_file_perm(BlockDriverState *bs, BlockDriverState *data,
                               Error **errp);

/* Is there a medium below bs (host_cdrom without a disc)? */
bool bdrv_is_inserted(BlockDriverState *bs);

/*
 * Drained sections (block/io.c). Whatever starts requests on a node without
 * going through its parents (the user layer on a root, a driver's
 * background work such as a prefetcher) registers here, and is told when a
 * drained section of the node begins and ends (nested: once per section)
 * and asked whether it still has work in flight. Between begin and end it
 * starts nothing new; bdrv_drained_begin returns once every node of the
 * subtree is idle. A user added inside a section is told it began.
 *
 * A section also reaches up, as QEMU's: every node above bs (parents,
 * their parents: filters, formats over a file node) is quiesced with its
 * users (parent_quiesce_counter, the same hooks and drain users) and
 * waited for, but its other children are not drained.
 */
typedef struct BdrvDrainOps {
    void (*drained_begin)(void *opaque);
    void (*drained_end)(void *opaque);
    /* true while work it started is still running */
    bool (*drained_poll)(void *opaque);
} BdrvDrainOps;

#define BDRV_DRAIN_MAX_DEPTH 256

void bdrv_add_drain_user(BlockDriverState *bs, const BdrvDrainOps *ops,
                         void *opaque);
void bdrv_remove_drain_user(BlockDriverState *bs, const BdrvDrainOps *ops,
                            void *opaque);
/*
 * Point *slot (a child link of parent) at child: the drained sections
 * parent is in now cover child (waited for) instead of the old child.
 */
void bdrv_replace_child_drained(BlockDriverState *parent,
                                BlockDriverState **slot,
                                BlockDriverState *child);
/* Every open node, one after the other: bdrv_next_node(NULL) is the
 * first; NULL after the last. A node being closed is no longer listed. */
BlockDriverState *bdrv_next_node(BlockDriverState *bs);
/* End a section of bs after its driver was closed: children only. */
void bdrv_drained_end_closed(BlockDriverState *bs);

/* Run fn(opaque) in a coroutine and poll until it returns (or call directly
 * when already in a coroutine). */
void bdrv_run_co(CoroutineEntry *fn, void *opaque);

/* Refresh bs->total_bytes from the driver. */
int bdrv_refresh_total_bytes(BlockDriverState *bs);

#endif
