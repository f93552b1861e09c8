/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Public block-layer API used by qemu-img, qemu-io and qemu-nbd.
 *
 * Every synchronous function below may be called from outside or inside a
 * coroutine: outside, it runs the request in a new coroutine and polls the
 * event loop until it completes. Byte offsets and lengths are int64_t.
 * Failures return a negative errno; functions with an Error ** also describe
 * the failure there.
 */
#ifndef BLOCK_H
#define BLOCK_H

#include "util/osdep.h"
#include "util/error.h"
#include "util/iov.h"
#include "util/option.h"
#include "util/coroutine.h"
#include "util/json-writer.h"
#include "block/job.h"

typedef struct BlockDriver BlockDriver;
typedef struct BlockDriverState BlockDriverState;

/*
 * Permissions a node's users hold on it and the ones they let others hold
 * (QEMU's BLK_PERM_*; block/perm.c). The bit numbers are also the offsets
 * of the file protocol's lock bytes (100 + bit: held, 200 + bit: not
 * shared), so other processes, QEMU 7.2 included, see the same locks.
 */
#define BLK_PERM_CONSISTENT_READ 0x01   /* reads see consistent data */
#define BLK_PERM_WRITE           0x02
#define BLK_PERM_WRITE_UNCHANGED 0x04   /* writes that keep the content */
#define BLK_PERM_RESIZE          0x08
#define BLK_PERM_ALL             0x0f

/* Open flags (same values as QEMU's) */
#define BDRV_O_NO_SHARE     0x0001  /* others may only read (convert source) */
#define BDRV_O_RDWR         0x0002  /* open read-write */
#define BDRV_O_RESIZE       0x0004  /* the user resizes the image */
#define BDRV_O_SNAPSHOT     0x0008  /* writes go to a temporary overlay,
                                     * the image is only read (qemu-io -s) */
#define BDRV_O_NOCACHE      0x0020  /* bypass the host page cache (O_DIRECT) */
#define BDRV_O_NATIVE_AIO   0x0080  /* use Linux native AIO (needs NOCACHE) */
#define BDRV_O_NO_BACKING   0x0100  /* do not open the backing file */
#define BDRV_O_NO_FLUSH     0x0200  /* cache=unsafe: flushes are no-ops */
#define BDRV_O_COPY_ON_READ 0x0400  /* copy data read from backing into image */
#define BDRV_O_CHECK        0x1000  /* opened by qemu-img check -r: a corrupt
                                       image may be opened to repair it */
#define BDRV_O_UNMAP        0x4000  /* discard requests reach the file */
#define BDRV_O_PROTOCOL     0x8000  /* open only the protocol layer */
#define BDRV_O_NO_IO        0x10000 /* metadata only (qemu-img info): no guest
                                     * data I/O follows, so no read or write
                                     * permission is taken, and parts of the
                                     * image only I/O needs may be missing */
/* Share every permission with other users, whatever the format needs
 * (-U, force-share=on); read-only opens only. Inherited. */
#define BDRV_O_FORCE_SHARE  0x80000
/* Names read from image headers may use any image protocol, not only local
 * files (the user's opt-in: --allow-header-protocols). Inherited. */
#define BDRV_O_HEADER_PROTOCOLS 0x100000
/* qemu-img bitmap: the image is opened read-write for bitmap changes only
 * (no guest data writes), so qcow2 keeps its persistent bitmaps valid. */
#define BDRV_O_BITMAPS      0x200000

/* Request flags */
typedef enum BdrvRequestFlags {
    BDRV_REQ_COPY_ON_READ = 0x1,
    BDRV_REQ_ZERO_WRITE   = 0x2,
    BDRV_REQ_MAY_UNMAP    = 0x4,    /* zeroes may be written as a hole */
    BDRV_REQ_FUA          = 0x10,   /* durable when the request completes */
    BDRV_REQ_WRITE_COMPRESSED = 0x20, /* store compressed (cluster aligned);
                                       -ENOTSUP if the format cannot */
    BDRV_REQ_SERIALISING  = 0x80,
    BDRV_REQ_NO_FALLBACK  = 0x100,  /* fail rather than write zero buffers */
} BdrvRequestFlags;

/* block_status result bits (same values as QEMU) */
#define BDRV_BLOCK_DATA         0x01  /* reads return data from a file */
#define BDRV_BLOCK_ZERO         0x02  /* reads return zeroes */
#define BDRV_BLOCK_OFFSET_VALID 0x04  /* *map is valid in *file */
#define BDRV_BLOCK_RAW          0x08  /* internal: ask bs->file */
#define BDRV_BLOCK_ALLOCATED    0x10  /* this layer determines the content */
#define BDRV_BLOCK_EOF          0x20  /* the range reaches the end of image */
#define BDRV_BLOCK_RECURSE      0x40  /* internal: DATA at *map in *file, but
                                         ask *file whether it reads zero */

typedef enum PreallocMode {
    PREALLOC_MODE_OFF = 0,
    PREALLOC_MODE_METADATA,
    PREALLOC_MODE_FALLOC,
    PREALLOC_MODE_FULL,
} PreallocMode;
/* "off", "metadata", "falloc", "full" -> mode; -EINVAL if unknown. */
int qemu_prealloc_parse(const char *str, PreallocMode *mode);
const char *qemu_prealloc_name(PreallocMode mode);

typedef struct BlockDriverInfo {
    int cluster_size;           /* 0 if not applicable */
    int64_t vm_state_offset;
    bool is_dirty;
} BlockDriverInfo;

/* Format-specific information for qemu-img info: typed key/value items. */
typedef enum InfoItemType {
    INFO_ITEM_STRING,
    INFO_ITEM_INT,
    INFO_ITEM_BOOL,
    INFO_ITEM_JSON,             /* a list or object (qcow2's bitmaps) */
} InfoItemType;
typedef struct InfoItem {
    char *key;                  /* json name, e.g. "lazy-refcounts" */
    InfoItemType type;
    char *str;
    int64_t num;
    bool flag;
    JsonValue *json;
} InfoItem;
typedef struct ImageInfoSpecific {
    char *type;                 /* "add-cow", "fvd", ... */
    GPtrArray *items;           /* of InfoItem * */
} ImageInfoSpecific;
ImageInfoSpecific *image_info_specific_new(const char *type);
void image_info_add_str(ImageInfoSpecific *info, const char *key,
                        const char *value);
void image_info_add_int(ImageInfoSpecific *info, const char *key, int64_t v);
void image_info_add_bool(ImageInfoSpecific *info, const char *key, bool v);
/* info takes v over. */
/* The node's name as QEMU 7.2 prints it (block/filename.c): its exact
 * file name, or json:{...} when that alone would not reopen the same graph
 * (strong options such as a key secret, filters, quorum). g_free. */
char *bdrv_display_name(BlockDriverState *bs);
void image_info_add_json(ImageInfoSpecific *info, const char *key,
                         JsonValue *v);
void image_info_specific_free(ImageInfoSpecific *info);
/* The items as a JSON object (QEMU's member order when printed). */
JsonValue *image_info_specific_json(const ImageInfoSpecific *spec);

typedef enum BdrvCheckMode {
    BDRV_FIX_LEAKS  = 1,
    BDRV_FIX_ERRORS = 2,
} BdrvCheckMode;

typedef struct BdrvCheckResult {
    int corruptions;
    int leaks;
    int check_errors;
    int corruptions_fixed;
    int leaks_fixed;
    int64_t image_end_offset;   /* 0 if unknown */
    int64_t allocated_clusters;
    int64_t total_clusters;
    int64_t fragmented_clusters;
    int64_t compressed_clusters;
} BdrvCheckResult;

/* qemu-img measure: bytes a new image of some format would need. */
typedef struct BlockMeasureInfo {
    int64_t required;           /* for the data present (or the size given) */
    int64_t fully_allocated;    /* with every cluster allocated */
    bool has_bitmaps;
    int64_t bitmaps;            /* bytes of persistent bitmaps to copy */
} BlockMeasureInfo;

typedef struct QEMUSnapshotInfo {
    char id_str[128];
    char name[256];
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;            /* -1ULL if unknown */
} QEMUSnapshotInfo;

/* ---- registry ---- */
/* Register every built-in driver (idempotent). */
void bdrv_init(void);
BlockDriver *bdrv_find_format(const char *format_name);
/*
 * The protocol driver for filename: by "proto:" prefix or, when none
 * matches, "file". Errors when the prefix names an unknown protocol.
 */
BlockDriver *bdrv_find_protocol(const char *filename, Error **errp);
/* Calls it(opaque, name) for every format name, sorted. */
void bdrv_iterate_format(void (*it)(void *opaque, const char *name),
                         void *opaque);
const char *bdrv_driver_name(const BlockDriver *drv);
const QemuOptDesc *bdrv_driver_create_opts(const BlockDriver *drv);
/* Options qemu-img amend accepts, or NULL if the format cannot amend. */
const QemuOptDesc *bdrv_driver_amend_opts(const BlockDriver *drv);
/* Create options of the protocol that would hold filename, or NULL. */
const QemuOptDesc *bdrv_protocol_create_opts(const char *filename);
bool bdrv_driver_supports_backing(const BlockDriver *drv);
/* Can the format store compressed clusters (BDRV_REQ_WRITE_COMPRESSED)? */
bool bdrv_driver_can_compress(const BlockDriver *drv);

/*
 * cache modes: writeback, none, writethrough, directsync, unsafe (and "off" =
 * none). Sets BDRV_O_NOCACHE / BDRV_O_NO_FLUSH in *flags (others kept) and
 * *writethrough.
 */
int bdrv_parse_cache_mode(const char *mode, int *flags, bool *writethrough);
/* aio modes: threads, native. */
int bdrv_parse_aio(const char *mode, int *flags);

/* ---- open / close / create ---- */
/*
 * The one rule for names read from image headers (backing file, add-cow's
 * image file) and for the header's format name (DESIGN.md decision 8;
 * docs/image-names.md): they are data, so they may only select what cannot
 * reach a resource the user did not name.
 * - name (as stored; NULL: only fmt is checked) without a "proto:" prefix is
 *   a local file, absolute or relative to the image (a relative name stays
 *   on the storage the user named for the image itself);
 * - a "proto:" prefix or fmt may select a protocol that declares itself
 *   local_file ("file:"); any other image protocol (sheepdog, later rbd and
 *   nbd with their addresses and config files) only with
 *   BDRV_O_HEADER_PROTOCOLS in flags;
 * - never a filter (blkdebug, crashsim), a json: description or an unknown
 *   protocol, whatever the flags.
 * what names the field in the error ("Backing file"). Returns false with
 * errp set if the name may not be opened.
 */
bool bdrv_header_names_allowed(const char *what, const char *name,
                               const char *fmt, int flags, Error **errp);
/*
 * For names the user is about to write into a header (qemu-img amend): the
 * same rule as if the opt-in were given, so only what no open could ever
 * follow (filters, json:, unknown protocols) is refused.
 */
bool bdrv_header_name_storable(const char *what, const char *name,
                               const char *fmt, Error **errp);
/*
 * Open filename as a graph: protocol node chosen by prefix, format node on
 * top (fmt, or probed; raw as the fallback), backing chain below unless
 * BDRV_O_NO_BACKING. options (borrowed, may be NULL) holds driver options;
 * keys "file.X" go to the protocol node, "backing.X" to the backing node,
 * "driver" overrides fmt and "filename" may replace filename. Unknown keys
 * are errors. Users do I/O on a root through a BlockBackend
 * (block-backend.h: blk_new_open), which checks bounds and permissions.
 */
BlockDriverState *bdrv_open(const char *filename, const char *fmt,
                            QemuOpts *options, int flags, Error **errp);
void bdrv_ref(BlockDriverState *bs);
/*
 * Image locking (docs/locking.md). A root opened with bdrv_open holds the
 * permissions of its flags (read unless BDRV_O_NO_IO, write with
 * BDRV_O_RDWR, resize with BDRV_O_RESIZE; shares all, or only reads with
 * BDRV_O_NO_SHARE) and its nodes what their formats need, as locks other
 * processes see. bdrv_drop_perms makes the graph below bs hold and forbid
 * nothing (before a second graph of the same images is opened in this
 * process: qemu-io reopen, qemu-img commit); bdrv_restore_perms takes the
 * root's permissions again (and may fail if another user took them).
 */
void bdrv_drop_perms(BlockDriverState *bs);
int bdrv_restore_perms(BlockDriverState *bs, Error **errp);
/* Drops a reference; the last one drains, closes and frees the graph. */
void bdrv_unref(BlockDriverState *bs);

/*
 * Create an image of format drv at filename. opts must hold "size" (unless the
 * driver takes it from a backing file) plus any driver option. Validates opts
 * against the driver's create_opts.
 */
int bdrv_create(BlockDriver *drv, const char *filename, QemuOpts *opts,
                Error **errp);
/* Create the protocol-level object for filename (e.g. an empty file). */
int bdrv_create_file(const char *filename, QemuOpts *opts, Error **errp);
/*
 * Space an image of format drv created with opts (validated against its
 * create options) would need, holding in_bs's data (NULL: opts' "size").
 * g_free the result; NULL with errp set on error or if drv cannot say.
 */
BlockMeasureInfo *bdrv_measure(BlockDriver *drv, QemuOpts *opts,
                               BlockDriverState *in_bs, Error **errp);

/* ---- properties ---- */
/* The protocol prefix of a protocol node's driver, or NULL. */
const char *bdrv_get_protocol_name(BlockDriverState *bs);
const char *bdrv_get_format_name(BlockDriverState *bs);
const char *bdrv_get_filename(BlockDriverState *bs);
BlockDriverState *bdrv_get_file(BlockDriverState *bs);      /* or NULL */
BlockDriverState *bdrv_get_backing(BlockDriverState *bs);   /* or NULL */
/* bs without the filters above its first non-filter node (blkdebug, ...) */
BlockDriverState *bdrv_skip_filters(BlockDriverState *bs);
/* Backing file name as stored in the image ("" if none). */
const char *bdrv_get_backing_filename(BlockDriverState *bs);
/* Backing name resolved against the image's directory (QEMU's
 * bdrv_dirname: that of the node's primary file); g_free; NULL if none or
 * when no directory can be determined (quorum: errp says why). */
char *bdrv_get_full_backing_filename(BlockDriverState *bs);
char *bdrv_full_backing_filename(BlockDriverState *bs, Error **errp);
const char *bdrv_get_backing_format(BlockDriverState *bs);  /* "" if none */
int bdrv_get_flags(BlockDriverState *bs);
bool bdrv_is_read_only(BlockDriverState *bs);
uint32_t bdrv_get_request_alignment(BlockDriverState *bs);
int64_t bdrv_getlength(BlockDriverState *bs);
/* Host bytes used by the image (all its files), or -errno. */
int64_t bdrv_get_allocated_file_size(BlockDriverState *bs);
int bdrv_get_info(BlockDriverState *bs, BlockDriverInfo *bdi);
/* NULL if the driver has nothing specific; free with ..._free. */
ImageInfoSpecific *bdrv_get_specific_info(BlockDriverState *bs,
                                          Error **errp);
/* The driver's job copying the backing file into bs (may have ended), or
 * NULL: qemu-img rebase -b '' waits for it with -p progress. */
Job *bdrv_get_populate_job(BlockDriverState *bs);
/* True if the node's format encrypts the guest data (qemu-img info). */
bool bdrv_is_encrypted(BlockDriverState *bs);
/* True if a newly created image of this node reads as zeroes. */
bool bdrv_has_zero_init(BlockDriverState *bs);
/* Root nodes only: false makes every write flush afterwards. */

/* ---- synchronous I/O ---- */
int bdrv_pread(BlockDriverState *bs, int64_t offset, int64_t bytes,
               void *buf, BdrvRequestFlags flags);
int bdrv_pwrite(BlockDriverState *bs, int64_t offset, int64_t bytes,
                const void *buf, BdrvRequestFlags flags);
int bdrv_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                QEMUIOVector *qiov, BdrvRequestFlags flags);
int bdrv_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                 QEMUIOVector *qiov, BdrvRequestFlags flags);
int bdrv_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                       BdrvRequestFlags flags);
int bdrv_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes);
int bdrv_flush(BlockDriverState *bs);
/*
 * Status of [offset, offset+bytes) in bs alone: returns BDRV_BLOCK_* bits
 * for the first *pnum bytes (> 0 unless bytes == 0 or at EOF), or -errno.
 * map/file, when non-NULL, receive the host offset/node if OFFSET_VALID.
 */
int bdrv_block_status(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum, int64_t *map, BlockDriverState **file);
/*
 * Same through the backing chain from bs down to (not including) base;
 * *depth (optional) is the number of backing links followed (0 = bs).
 * Unallocated everywhere: 0 (or BDRV_BLOCK_ZERO past a backing's end).
 */
int bdrv_block_status_above(BlockDriverState *bs, BlockDriverState *base,
                            int64_t offset, int64_t bytes, int64_t *pnum,
                            int64_t *map, BlockDriverState **file,
                            int *depth);
/* 1 if allocated in bs itself, 0 if not (for *pnum bytes), or -errno. */
int bdrv_is_allocated(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum);
int bdrv_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                  PreallocMode prealloc, Error **errp);
/* Fills *res (zeroed first). -ENOTSUP if the format has no check. */
int bdrv_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);
/* Rewrite the backing file name/format in the image header. */
int bdrv_change_backing_file(BlockDriverState *bs, const char *backing_file,
                             const char *backing_fmt, Error **errp);
/* Replace the open backing node (NULL detaches); does not touch the header. */
void bdrv_set_backing_hd(BlockDriverState *bs, BlockDriverState *backing);
int bdrv_amend_options(BlockDriverState *bs, QemuOpts *opts, bool force,
                       Error **errp);
/* The same, as the work of job (called from its coroutine): the driver's
 * progress moves the job's counters. */
int coroutine_fn bdrv_co_amend_job(BlockDriverState *bs, QemuOpts *opts,
                                   bool force, Job *job, Error **errp);
/* Make bs hold nothing of its own (reads go to its backing file).
 * -ENOTSUP if the format cannot. */
int bdrv_make_empty(BlockDriverState *bs);

/* qemu-img bitmap: one operation on a persistent dirty bitmap. */
typedef enum BdrvBitmapOpType {
    BITMAP_OP_ADD, BITMAP_OP_REMOVE, BITMAP_OP_CLEAR, BITMAP_OP_ENABLE,
    BITMAP_OP_DISABLE, BITMAP_OP_MERGE,
} BdrvBitmapOpType;
typedef struct BdrvBitmapOp {
    BdrvBitmapOpType type;
    const char *name;           /* the bitmap changed */
    uint64_t granularity;       /* add: bytes per bit, 0: default */
    BlockDriverState *src_bs;   /* merge: image of the source (NULL: bs) */
    const char *src_name;       /* merge: source bitmap */
} BdrvBitmapOp;
/*
 * Run ops in order and store the result. On failure *failed is the index
 * of the failing operation (the ones before it are stored, as QEMU's
 * qemu-img bitmap). -ENOTSUP if the format has no persistent bitmaps.
 */
int bdrv_bitmap_ops(BlockDriverState *bs, const BdrvBitmapOp *ops,
                    int nb_ops, int *failed, Error **errp);
/* One persistent bitmap, as bdrv_bitmap_list() reports it. */
typedef struct BdrvBitmapInfo {
    char *name;
    uint64_t granularity;
    bool enabled;
    bool inconsistent;          /* in_use on disk: its bits are not valid */
} BdrvBitmapInfo;
/* Whether bs can hold persistent bitmaps (qcow2 v3). */
bool bdrv_supports_persistent_bitmaps(BlockDriverState *bs);
/* The persistent bitmaps of bs in directory order (the directory checked
 * as for bdrv_bitmap_ops); free with bdrv_bitmap_list_free(). */
int bdrv_bitmap_list(BlockDriverState *bs, BdrvBitmapInfo **list, int *n,
                     Error **errp);
void bdrv_bitmap_list_free(BdrvBitmapInfo *list, int n);
/* Wait until no request is in flight on bs or below. */
void bdrv_drain(BlockDriverState *bs);
/*
 * A drained section over bs and every node below it (file, data file,
 * backing): begin stops new requests from users (they wait in the user
 * layer) and background work, then waits until nothing is in flight below
 * bs; end lets them go on. Sections nest; each begin needs one end. Not
 * to be called by a request of that subtree (it would wait for itself).
 */
void bdrv_drained_begin(BlockDriverState *bs);
/*
 * Reopen bs and the nodes below it with flags (read-only or read-write,
 * cache mode, unmap; other flags stay) and options (merged into bs's), in
 * a drained section: every node prepares, the locks of the new
 * permissions are checked, then all commit; on any failure every node is
 * as it was. bs's own permissions become those of flags (as at open).
 */
int bdrv_reopen(BlockDriverState *bs, int flags, QemuOpts *options,
                Error **errp);
void bdrv_drained_end(BlockDriverState *bs);
bool bdrv_is_drained(BlockDriverState *bs);

/* ---- snapshots and VM state ---- */
int bdrv_snapshot_create(BlockDriverState *bs, QEMUSnapshotInfo *sn,
                         Error **errp);
int bdrv_snapshot_goto(BlockDriverState *bs, const char *snapshot_id,
                       Error **errp);
/* A read-only node reads the snapshot named by id or name (either may be
 * NULL: both given, both must match) until it is closed. */
int bdrv_snapshot_load_tmp(BlockDriverState *bs, const char *snapshot_id,
                           const char *name, Error **errp);
/* "snapshot.id=ID,snapshot.name=NAME" (either key optional), the keyed
 * form of the -l argument; NULL and *errp set if it does not parse. */
QemuOpts *bdrv_snapshot_param_parse(const char *arg, Error **errp);
/* The same with one string that is tried as an id, then as a name (a
 * bare -l argument of qemu-img convert and qemu-nbd). */
int bdrv_snapshot_load_tmp_by_id_or_name(BlockDriverState *bs,
                                         const char *id_or_name,
                                         Error **errp);
int bdrv_snapshot_delete(BlockDriverState *bs, const char *snapshot_id,
                         const char *name, Error **errp);
/* Returns the count (>= 0) and a g_malloc'd array, or -errno. */
int bdrv_snapshot_list(BlockDriverState *bs, QEMUSnapshotInfo **psn_info);
/* The first snapshot with this name (names only, as QEMU's qemu-img
 * snapshot -d). 0 or -ENOENT. */
int bdrv_snapshot_find(BlockDriverState *bs, QEMUSnapshotInfo *sn,
                       const char *name);
bool bdrv_can_snapshot(BlockDriverState *bs);
/* Return bytes transferred or -errno. */
int bdrv_save_vmstate(BlockDriverState *bs, const uint8_t *buf, int64_t pos,
                      int size);
int bdrv_load_vmstate(BlockDriverState *bs, uint8_t *buf, int64_t pos,
                      int size);

/* ---- asynchronous I/O (completion from the event loop) ---- */
typedef void BlockCompletionFunc(void *opaque, int ret);
void bdrv_aio_preadv(BlockDriverState *bs, int64_t offset, QEMUIOVector *qiov,
                     BdrvRequestFlags flags, BlockCompletionFunc *cb,
                     void *opaque);
void bdrv_aio_pwritev(BlockDriverState *bs, int64_t offset,
                      QEMUIOVector *qiov, BdrvRequestFlags flags,
                      BlockCompletionFunc *cb, void *opaque);
void bdrv_aio_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                            int64_t bytes, BdrvRequestFlags flags,
                            BlockCompletionFunc *cb, void *opaque);
void bdrv_aio_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes,
                       BlockCompletionFunc *cb, void *opaque);
void bdrv_aio_flush(BlockDriverState *bs, BlockCompletionFunc *cb,
                    void *opaque);

/* ---- coroutine I/O (for drivers and coroutine-based tools) ---- */
int coroutine_fn bdrv_co_preadv(BlockDriverState *bs, int64_t offset,
                                int64_t bytes, QEMUIOVector *qiov,
                                BdrvRequestFlags flags);
int coroutine_fn bdrv_co_preadv_part(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset,
                                     BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwritev(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwritev_part(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, QEMUIOVector *qiov,
                                      size_t qiov_offset,
                                      BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pread(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, void *buf,
                               BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwrite(BlockDriverState *bs, int64_t offset,
                                int64_t bytes, const void *buf,
                                BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags);
int coroutine_fn bdrv_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes);
int coroutine_fn bdrv_co_flush(BlockDriverState *bs);
/*
 * Flush generations, for write ordering between nodes (a metadata page
 * that may reach the disk only after the data it describes, a page that
 * may be written only after journal record N is durable):
 * bdrv_get_write_gen() names every write to bs completed so far;
 * bdrv_co_flush_gen(bs, gen) returns once a flush of bs covering gen has
 * completed, flushing only if no completed or running flush covers it
 * (concurrent callers share one flush).
 */
uint64_t bdrv_get_write_gen(BlockDriverState *bs);
bool bdrv_write_gen_is_durable(BlockDriverState *bs, uint64_t gen);
int coroutine_fn bdrv_co_flush_gen(BlockDriverState *bs, uint64_t gen);
int coroutine_fn bdrv_co_block_status(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum,
                                      int64_t *map, BlockDriverState **file);
int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs,
                                            BlockDriverState *base,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockDriverState **file,
                                            int *depth);
int coroutine_fn bdrv_co_truncate(BlockDriverState *bs, int64_t offset,
                                  bool exact, PreallocMode prealloc,
                                  Error **errp);

/* blkdebug hook: formats announce metadata events ("bitmap_update", ...). */
void bdrv_debug_event(BlockDriverState *bs, const char *event);
#define BLKDBG_EVENT(bs, evt) bdrv_debug_event(bs, evt)

/*
 * blkdebug breakpoints (for tests): the first request that raises event on
 * the blkdebug node found below bs is suspended under tag (one-shot) until
 * resumed. Return 0, -ENOENT (no such tag) or -ENOTSUP (no blkdebug node).
 */
int bdrv_debug_breakpoint(BlockDriverState *bs, const char *event,
                          const char *tag);
int bdrv_debug_remove_breakpoint(BlockDriverState *bs, const char *tag);
int bdrv_debug_resume(BlockDriverState *bs, const char *tag);
bool bdrv_debug_is_suspended(BlockDriverState *bs, const char *tag);

#endif
