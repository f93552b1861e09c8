/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 on-disk structures and the state shared by the files of the qcow2
 * driver (docs/specs/qcow2.txt describes the format as implemented here).
 *
 *   0            header_length                  cluster_size
 *   +------------+--------------------+---------+-----------------+--...
 *   | header     | header extensions  | backing | refcount table, |
 *   | (72 or     | (backing format,   | file    | refcount blocks,|
 *   |  104+ B)   |  feature names,    | name    | L1 table, L2    |
 *   |            |  data file, ...)   |         | tables, data,   |
 *   +------------+--------------------+---------+ snapshots ...   +--...
 *
 * Everything past the first cluster is allocated in clusters and reference
 * counted. Guest offset -> L1 entry -> L2 table (one cluster) -> L2 entry
 * -> host cluster. All fields are big-endian on disk: Qcow2DiskHeader and
 * friends are in disk byte order, Qcow2Header always in CPU order, and
 * qcow2_header_to_cpu/_to_disk convert.
 */
#ifndef BLOCK_QCOW2_H
#define BLOCK_QCOW2_H

#include "block_int.h"
#include "block/table-cache.h"

#define QCOW2_MAGIC                 0x514649fbu     /* "QFI\xfb" */
#define QCOW2_V2_HEADER_SIZE        72
#define QCOW2_V3_MIN_HEADER_SIZE    104

#define QCOW2_CRYPT_NONE            0
#define QCOW2_CRYPT_AES             1
#define QCOW2_CRYPT_LUKS            2

/* Limits (QEMU's, so that every image QEMU opens we open, and no more). */
#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_DEFAULT_CLUSTER_SIZE  65536
#define QCOW2_MAX_REFTABLE_SIZE     (8 * MiB)
#define QCOW2_MAX_L1_SIZE           (32 * MiB)
#define QCOW2_MAX_SNAPSHOTS         65536
#define QCOW2_MAX_SNAPSHOTS_SIZE    (1024 * QCOW2_MAX_SNAPSHOTS)
#define QCOW2_MAX_SNAPSHOT_EXTRA    1024
#define QCOW2_MAX_BITMAPS           65535
#define QCOW2_MAX_BITMAP_DIR_SIZE   (1024 * QCOW2_MAX_BITMAPS)
#define QCOW2_MAX_BACKING_NAME      1023
#define QCOW2_MAX_HOST_OFFSET       ((UINT64_C(1) << 56) - 1)
#define QCOW2_COMPRESSED_SECTOR     512

/* Header extension types. */
#define QCOW2_EXT_END               0x00000000u
#define QCOW2_EXT_BACKING_FORMAT    0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857u
#define QCOW2_EXT_BITMAPS           0x23852875u
#define QCOW2_EXT_CRYPTO_HEADER     0x0537be77u
#define QCOW2_EXT_DATA_FILE         0x44415441u

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT      (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2        (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_MASK         (UINT64_C(0x1f))
/* Compatible feature bits. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (UINT64_C(1) << 0)
/* Autoclear feature bits (we keep only the ones we maintain). */
#define QCOW2_AUTOCLEAR_BITMAPS     (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (UINT64_C(1) << 1)
#define QCOW2_AUTOCLEAR_MASK        QCOW2_AUTOCLEAR_DATA_RAW

#define QCOW2_FEAT_INCOMPAT         0
#define QCOW2_FEAT_COMPAT           1
#define QCOW2_FEAT_AUTOCLEAR        2

/* Table entries. */
#define QCOW2_OFLAG_COPIED          (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED      (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO            (UINT64_C(1) << 0)
#define QCOW2_L1E_OFFSET_MASK       UINT64_C(0x00fffffffffffe00)
#define QCOW2_L2E_OFFSET_MASK       UINT64_C(0x00fffffffffffe00)
#define QCOW2_L2E_COMPRESSED_MASK   UINT64_C(0x3fffffffffffffff)
#define QCOW2_REFT_OFFSET_MASK      UINT64_C(0xfffffffffffffe00)
#define QCOW2_L1E_RESERVED          UINT64_C(0x7f000000000001ff)
#define QCOW2_L2E_RESERVED          UINT64_C(0x3f000000000001fe)

/* Extended L2 entries: 32 subclusters, an allocation and a zero bitmap. */
#define QCOW2_SUBCLUSTERS           32
#define QCOW2_SC_ALLOC(x)           (UINT64_C(1) << (x))
#define QCOW2_SC_ZERO(x)            (UINT64_C(1) << ((x) + 32))
#define QCOW2_SC_ALLOC_RANGE(a, b)  (QCOW2_SC_ALLOC(b) - QCOW2_SC_ALLOC(a))
#define QCOW2_SC_ZERO_RANGE(a, b)   (QCOW2_SC_ALLOC_RANGE(a, b) << 32)
#define QCOW2_SC_ALL_ALLOC          QCOW2_SC_ALLOC_RANGE(0, 32)
#define QCOW2_SC_ALL_ZERO           QCOW2_SC_ZERO_RANGE(0, 32)

/* ---- on-disk structures (big-endian) ---- */

typedef struct Qcow2DiskHeader {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* version 3 */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    /* additional fields */
    uint8_t  compression_type;
    uint8_t  padding[7];
} QEMU_PACKED Qcow2DiskHeader;

typedef struct Qcow2DiskExtension {
    uint32_t magic;
    uint32_t len;
} QEMU_PACKED Qcow2DiskExtension;

typedef struct Qcow2DiskFeature {
    uint8_t  type;
    uint8_t  bit;
    char     name[46];
} QEMU_PACKED Qcow2DiskFeature;

typedef struct Qcow2DiskBitmapExt {
    uint32_t nb_bitmaps;
    uint32_t reserved;
    uint64_t directory_size;
    uint64_t directory_offset;
} QEMU_PACKED Qcow2DiskBitmapExt;

typedef struct Qcow2DiskSnapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint16_t id_str_size;
    uint16_t name_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size;
    uint32_t extra_data_size;
} QEMU_PACKED Qcow2DiskSnapshot;

typedef struct Qcow2DiskSnapshotExtra {
    uint64_t vm_state_size_large;
    uint64_t disk_size;
    uint64_t icount;
} QEMU_PACKED Qcow2DiskSnapshotExtra;

typedef struct Qcow2DiskBitmapDirEntry {
    uint64_t bitmap_table_offset;
    uint32_t bitmap_table_size;
    uint32_t flags;
    uint8_t  type;
    uint8_t  granularity_bits;
    uint16_t name_size;
    uint32_t extra_data_size;
} QEMU_PACKED Qcow2DiskBitmapDirEntry;

_Static_assert(sizeof(Qcow2DiskHeader) == 112, "qcow2 header is 112 bytes");
_Static_assert(offsetof(Qcow2DiskHeader, size) == 24, "size at 24");
_Static_assert(offsetof(Qcow2DiskHeader, l1_size) == 36, "l1_size at 36");
_Static_assert(offsetof(Qcow2DiskHeader, refcount_table_offset) == 48,
               "refcount_table_offset at 48");
_Static_assert(offsetof(Qcow2DiskHeader, snapshots_offset) == 64,
               "snapshots_offset at 64");
_Static_assert(offsetof(Qcow2DiskHeader, incompatible_features) ==
               QCOW2_V2_HEADER_SIZE, "v3 fields start at 72");
_Static_assert(offsetof(Qcow2DiskHeader, header_length) == 100,
               "header_length at 100");
_Static_assert(offsetof(Qcow2DiskHeader, compression_type) == 104,
               "compression_type at 104");
_Static_assert(sizeof(Qcow2DiskExtension) == 8, "extension header is 8");
_Static_assert(sizeof(Qcow2DiskFeature) == 48, "feature entry is 48");
_Static_assert(sizeof(Qcow2DiskBitmapExt) == 24, "bitmaps extension is 24");
_Static_assert(sizeof(Qcow2DiskSnapshot) == 40, "snapshot entry is 40");
_Static_assert(sizeof(Qcow2DiskSnapshotExtra) == 24, "snapshot extra is 24");
_Static_assert(sizeof(Qcow2DiskBitmapDirEntry) == 24, "bitmap entry is 24");

/* The fixed header in CPU order (v2 images: v3 fields take defaults). */
typedef struct Qcow2Header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t  compression_type;
} Qcow2Header;

/* Converts; v2 headers get the v3 defaults. */
void qcow2_header_to_cpu(const Qcow2DiskHeader *d, Qcow2Header *h);
void qcow2_header_to_disk(const Qcow2Header *h, Qcow2DiskHeader *d);

/* ---- in-memory state ---- */

typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str;
    char *name;
    uint64_t disk_size;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;                /* -1: not recorded */
    uint32_t extra_data_size;       /* as read (>= 24 once rewritten) */
    void *unknown_extra;            /* extra data past what we know */
    uint32_t unknown_extra_size;
} Qcow2Snapshot;

typedef struct Qcow2UnknownExt {
    uint32_t magic;
    uint32_t len;
    uint8_t *data;
} Qcow2UnknownExt;

/* Subcluster types, the unit every lookup answers in. */
typedef enum Qcow2SubclusterType {
    QCOW2_SC_UNALLOCATED_PLAIN,     /* no host cluster: backing or zero */
    QCOW2_SC_UNALLOCATED_ALLOC,     /* host cluster, subcluster unallocated */
    QCOW2_SC_ZERO_PLAIN,            /* reads zero, no host cluster */
    QCOW2_SC_ZERO_ALLOC,            /* reads zero, host cluster kept */
    QCOW2_SC_NORMAL,                /* data at the host offset */
    QCOW2_SC_COMPRESSED,            /* whole compressed cluster */
    QCOW2_SC_INVALID,
} Qcow2SubclusterType;

/* A copy-on-write region, relative to the first cluster of an allocation. */
typedef struct Qcow2CowRegion {
    uint64_t offset;
    uint64_t bytes;
} Qcow2CowRegion;

/*
 * A write in flight that changes the L2 entries of guest clusters
 * [guest_offset, guest_offset + nb_clusters * cluster_size): a new host
 * range (or the same one with new subcluster bits). Other requests that
 * touch these clusters wait on dependent until it is linked or aborted.
 */
typedef struct Qcow2Alloc {
    uint64_t guest_offset;          /* cluster aligned */
    uint64_t host_offset;           /* cluster aligned */
    uint64_t nb_clusters;
    bool keep_old;                  /* host clusters were ours already */
    bool prealloc;                  /* no new subcluster allocation bits */
    bool skip_cow;                  /* COW regions already zeroed */
    uint64_t compressed_bytes;      /* a compressed cluster's reservation */
    Qcow2CowRegion cow_start, cow_end;
    CoQueue dependent;
    struct Qcow2Alloc *next;        /* s->allocs */
} Qcow2Alloc;

/* Freed host byte ranges whose refcount decrease waits for durable tables. */
typedef struct Qcow2PendingFree {
    uint64_t offset;
    uint64_t bytes;
    bool discard;                   /* pass a discard down when it is free */
    uint64_t seq;                   /* in-place writes started before it */
} Qcow2PendingFree;

/* An in-place write in flight (frees wait for the ones older than them). */
typedef struct Qcow2InPlace {
    uint64_t seq;
    struct Qcow2InPlace *prev, *next;
} Qcow2InPlace;

/* Overlap check bits (QEMU's "cached" template by default). */
enum {
    QCOW2_OL_MAIN_HEADER        = 1 << 0,
    QCOW2_OL_ACTIVE_L1          = 1 << 1,
    QCOW2_OL_ACTIVE_L2          = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE     = 1 << 3,
    QCOW2_OL_REFCOUNT_BLOCK     = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE     = 1 << 5,
    QCOW2_OL_INACTIVE_L1        = 1 << 6,
    QCOW2_OL_INACTIVE_L2        = 1 << 7,
    QCOW2_OL_BITMAP_DIRECTORY   = 1 << 8,
    QCOW2_OL_CONSTANT = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 |
                        QCOW2_OL_REFCOUNT_TABLE | QCOW2_OL_SNAPSHOT_TABLE |
                        QCOW2_OL_BITMAP_DIRECTORY,
    QCOW2_OL_CACHED   = QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 |
                        QCOW2_OL_REFCOUNT_BLOCK | QCOW2_OL_INACTIVE_L1,
    QCOW2_OL_ALL      = QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2,
};

typedef struct BDRVQcow2State {
    /* geometry */
    int cluster_bits;
    uint32_t cluster_size;
    int subcluster_bits;
    uint32_t subcluster_size;
    int subclusters_per_cluster;    /* 1 or 32 */
    bool extended_l2;
    int l2_entry_shift;             /* log2 of the L2 entry size (3 or 4) */
    int l2_bits;                    /* log2 of the entries per L2 table */
    uint32_t l2_size;
    uint32_t l2_slice_size;         /* entries per L2 cache page */
    uint32_t l2_slice_bytes;
    int refcount_order;
    int refcount_bits;
    uint64_t refcount_max;
    int refcount_block_bits;        /* log2 of refcounts per block */
    uint64_t refcount_block_size;
    uint32_t rb_slice_bytes;        /* refcount cache page size */
    int csize_shift;
    uint64_t csize_mask;
    uint64_t cluster_offset_mask;

    /* header */
    int qcow_version;
    uint64_t size;                  /* virtual disk size */
    uint32_t crypt_method;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint8_t compression_type;
    void *unknown_header_fields;
    uint32_t unknown_header_fields_size;
    GArray *unknown_exts;           /* of Qcow2UnknownExt */
    char *image_backing_file;       /* as stored, or NULL */
    char *image_backing_format;
    char *image_data_file;
    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_offset;
    uint64_t bitmap_directory_size;
    /* Bitmaps loaded by a writable open (bitmap.c): in_use on disk. */
    struct Qcow2BitmapList *bm_live;
    bool has_crypto_ext;            /* the 0x0537be77 extension was read */
    uint64_t crypto_offset;         /* LUKS header clusters (crypto.c) */
    uint64_t crypto_length;
    struct Qcow2Crypto *crypto;     /* encrypt.format=luks, opened */

    /* L1 table (kept whole, in CPU order) */
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint64_t *l1_table;
    uint64_t l1_vm_state_index;

    /* refcounts */
    uint64_t refcount_table_offset;
    uint32_t refcount_table_size;   /* entries */
    uint64_t *refcount_table;       /* CPU order */
    uint64_t free_cluster_index;
    uint64_t free_byte_offset;      /* compressed packing; 0: none */
    GArray *pending_frees;          /* not yet written out (Qcow2PendingFree) */
    struct Qcow2AmendProgress *amend_progress;  /* amend -p; NULL: none */
    GArray *frees_written;          /* tables written, waiting for a flush */
    /* Entries at the start of pending_frees / frees_written known not to
     * free a cluster (qcow2_settle_frees_for_reuse). */
    guint frees_checked_pending, frees_checked_written;
    uint64_t frees_written_gen;     /* bs->file write gen they need */

    /* caches */
    TableCache *l2_cache;
    TableCache *refcount_cache;

    /* snapshots */
    uint64_t snapshots_offset;
    uint64_t snapshots_size;        /* bytes */
    uint32_t nb_snapshots;
    Qcow2Snapshot *snapshots;

    /* runtime */
    BlockDriverState *data_file;    /* bs->file or the external data file */
    bool external_data;
    int open_flags;
    bool use_lazy_refcounts;
    int overlap_check;
    bool signaled_corruption;
    bool stopped;                   /* fatal corruption: every request fails */
    bool discard_request;           /* pass guest discards to the file */
    bool discard_other;             /* ... and other freed clusters */
    bool discard_snapshot;
    /* Set during a snapshot operation's frees: clusters whose refcount
     * drops to 0 are discarded in the file (pass-discard-snapshot). */
    bool free_discard;
    bool prealloc_checked;
    bool metadata_prealloc;
    CoMutex lock;                   /* metadata: tables, refcounts, allocs */
    Qcow2Alloc *allocs;             /* in flight */
    uint64_t inplace_seq;           /* in-place writes started so far */
    Qcow2InPlace *inplace_head, *inplace_tail;  /* in flight, oldest first */
    uint64_t *meta_clusters;        /* overlap check: sorted cluster indexes */
    size_t nb_meta_clusters;
    bool meta_clusters_valid;
} BDRVQcow2State;

/* ---- small helpers ---- */

static inline uint64_t qcow2_offset_into_cluster(BDRVQcow2State *s,
                                                 uint64_t offset)
{
    return offset & (s->cluster_size - 1);
}

static inline uint64_t qcow2_start_of_cluster(BDRVQcow2State *s,
                                              uint64_t offset)
{
    return offset & ~(uint64_t)(s->cluster_size - 1);
}

static inline uint64_t qcow2_size_to_clusters(BDRVQcow2State *s,
                                              uint64_t size)
{
    return (size + s->cluster_size - 1) >> s->cluster_bits;
}

/* L1 entries needed for a virtual size. */
static inline uint64_t qcow2_size_to_l1(BDRVQcow2State *s, uint64_t size)
{
    int shift = s->cluster_bits + s->l2_bits;
    return (size + (UINT64_C(1) << shift) - 1) >> shift;
}

static inline uint64_t qcow2_vm_state_offset(BDRVQcow2State *s)
{
    return s->l1_vm_state_index << (s->cluster_bits + s->l2_bits);
}

static inline bool qcow2_has_data_file(BDRVQcow2State *s)
{
    return s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
}

static inline bool qcow2_data_file_is_raw(BDRVQcow2State *s)
{
    return s->autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW;
}

static inline unsigned qcow2_sc_index(BDRVQcow2State *s, uint64_t offset)
{
    return qcow2_offset_into_cluster(s, offset) >> s->subcluster_bits;
}

/* ---- header.c ---- */
int coroutine_fn qcow2_read_header(BlockDriverState *bs, int flags,
                                   Qcow2Header *h, Error **errp);
int coroutine_fn qcow2_update_header(BlockDriverState *bs);
/* qcow2_update_header, then a flush of the file; errors say so in errp. */
int coroutine_fn qcow2_commit_header(BlockDriverState *bs, Error **errp);
bool qcow2_supports_persistent_bitmaps(BlockDriverState *bs);
int coroutine_fn qcow2_co_bitmap_list(BlockDriverState *bs,
                                      BdrvBitmapInfo **list, int *n,
                                      Error **errp);
int coroutine_fn qcow2_co_bitmap_ops(BlockDriverState *bs,
                                     const BdrvBitmapOp *ops, int nb_ops,
                                     int *failed, Error **errp);
int coroutine_fn qcow2_bitmaps_open(BlockDriverState *bs, Error **errp);
int coroutine_fn qcow2_bitmaps_store(BlockDriverState *bs, Error **errp);
void qcow2_bitmaps_discard(BDRVQcow2State *s);
int coroutine_fn qcow2_bitmaps_resize_check(BlockDriverState *bs,
                                            uint64_t new_size, Error **errp);
void qcow2_bitmaps_resized(BDRVQcow2State *s);
void qcow2_bitmaps_do_mark(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes);

/* A guest write, zero write or discard: dirty in every enabled bitmap. */
static inline void qcow2_bitmaps_mark(BDRVQcow2State *s, uint64_t offset,
                                      uint64_t bytes)
{
    if (s->bm_live && bytes) {
        qcow2_bitmaps_do_mark(s, offset, bytes);
    }
}
int coroutine_fn qcow2_mark_dirty(BlockDriverState *bs);
int coroutine_fn qcow2_mark_clean(BlockDriverState *bs);
int coroutine_fn qcow2_mark_corrupt(BlockDriverState *bs);
int coroutine_fn qcow2_mark_consistent(BlockDriverState *bs);
void qcow2_signal_corruption(BlockDriverState *bs, bool fatal, int64_t offset,
                             int64_t size, const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);
int qcow2_validate_table(BDRVQcow2State *s, uint64_t offset, uint64_t entries,
                         size_t entry_len, int64_t max_bytes,
                         const char *name, Error **errp);
void qcow2_free_header_state(BDRVQcow2State *s);

/* ---- open.c ---- */
int coroutine_fn qcow2_setup_caches(BlockDriverState *bs, QemuOpts *opts,
                                    Error **errp);
int coroutine_fn qcow2_write_caches(BlockDriverState *bs);
int coroutine_fn qcow2_resize_caches(BlockDriverState *bs);
int coroutine_fn qcow2_flush_caches(BlockDriverState *bs);

/* ---- cluster.c ---- */
typedef struct Qcow2L2Slice {
    void *page;                     /* pinned table cache page, or NULL */
    uint32_t index;                 /* entry index inside the slice */
} Qcow2L2Slice;

uint64_t qcow2_l2_entry(BDRVQcow2State *s, void *page, uint32_t idx);
uint64_t qcow2_l2_bitmap(BDRVQcow2State *s, void *page, uint32_t idx);
void qcow2_set_l2_entry(BDRVQcow2State *s, void *page, uint32_t idx,
                        uint64_t entry);
void qcow2_set_l2_bitmap(BDRVQcow2State *s, void *page, uint32_t idx,
                         uint64_t bitmap);
Qcow2SubclusterType qcow2_sc_type(BlockDriverState *bs, uint64_t entry,
                                  uint64_t bitmap, unsigned sc);
bool qcow2_entry_has_host(BlockDriverState *bs, uint64_t entry);
void qcow2_parse_compressed(BDRVQcow2State *s, uint64_t entry,
                            uint64_t *host, uint64_t *bytes);
int coroutine_fn qcow2_get_host_offset(BlockDriverState *bs, uint64_t offset,
                                       uint64_t *bytes, uint64_t *host,
                                       Qcow2SubclusterType *type);
int coroutine_fn qcow2_alloc_host_offset(BlockDriverState *bs,
                                         uint64_t offset, uint64_t *bytes,
                                         uint64_t *host, Qcow2Alloc **alloc);
int coroutine_fn qcow2_link_l2(BlockDriverState *bs, Qcow2Alloc *m);
void qcow2_alloc_abort(BlockDriverState *bs, Qcow2Alloc *m);
void qcow2_alloc_finish(BlockDriverState *bs, Qcow2Alloc *m);
int coroutine_fn qcow2_wait_allocs(BlockDriverState *bs, uint64_t offset,
                                   uint64_t bytes);
int coroutine_fn qcow2_alloc_compressed(BlockDriverState *bs, uint64_t offset,
                                        uint64_t compressed_size,
                                        uint64_t *host);
int coroutine_fn qcow2_link_compressed(BlockDriverState *bs, uint64_t offset,
                                       bool ok);
int coroutine_fn qcow2_cluster_discard(BlockDriverState *bs, uint64_t offset,
                                       uint64_t bytes, bool full_discard,
                                       bool pass_down);
int coroutine_fn qcow2_subcluster_zeroize(BlockDriverState *bs,
                                          uint64_t offset, uint64_t bytes,
                                          BdrvRequestFlags flags);
int coroutine_fn qcow2_grow_l1_table(BlockDriverState *bs, uint64_t min_size,
                                     bool exact);
int coroutine_fn qcow2_shrink_l1_table(BlockDriverState *bs,
                                       uint64_t new_l1_size);
int coroutine_fn qcow2_write_l1_entry(BlockDriverState *bs, uint32_t index);
int coroutine_fn qcow2_expand_zero_clusters(BlockDriverState *bs);

/* ---- refcount.c ---- */
int coroutine_fn qcow2_refcount_init(BlockDriverState *bs, Error **errp);
void qcow2_refcount_close(BlockDriverState *bs);
uint64_t qcow2_get_refcount_ro(BDRVQcow2State *s, const void *block,
                               uint64_t index);
void qcow2_set_refcount_ro(BDRVQcow2State *s, void *block, uint64_t index,
                           uint64_t value);
int coroutine_fn qcow2_get_refcount(BlockDriverState *bs,
                                    uint64_t cluster_index,
                                    uint64_t *refcount);
int coroutine_fn qcow2_update_refcount(BlockDriverState *bs, uint64_t offset,
                                       uint64_t length, int64_t addend);
int64_t coroutine_fn qcow2_alloc_clusters(BlockDriverState *bs,
                                          uint64_t size);
int64_t coroutine_fn qcow2_alloc_clusters_at(BlockDriverState *bs,
                                             uint64_t offset,
                                             uint64_t nb_clusters);
int64_t coroutine_fn qcow2_alloc_bytes(BlockDriverState *bs, uint64_t size);
int coroutine_fn qcow2_free_clusters(BlockDriverState *bs, uint64_t offset,
                                     uint64_t size);
void qcow2_free_deferred(BlockDriverState *bs, uint64_t offset,
                         uint64_t bytes, bool discard);
void qcow2_free_entry_deferred(BlockDriverState *bs, uint64_t entry,
                               bool discard);
int coroutine_fn qcow2_apply_durable_frees(BlockDriverState *bs);
int coroutine_fn qcow2_settle_frees(BlockDriverState *bs);
int coroutine_fn qcow2_settle_frees_for_reuse(BlockDriverState *bs);
int64_t coroutine_fn qcow2_refcount_area(BlockDriverState *bs, uint64_t start,
                                         uint64_t additional, bool exact,
                                         uint64_t new_index,
                                         uint64_t new_block);
int qcow2_check_metadata_overlap(BlockDriverState *bs, int ignore,
                                 uint64_t offset, uint64_t size);
int coroutine_fn qcow2_pre_write_overlap_check(BlockDriverState *bs,
                                               int ignore, uint64_t offset,
                                               uint64_t size);
void qcow2_invalidate_meta_clusters(BDRVQcow2State *s);
void qcow2_discard_metadata_cache(BlockDriverState *bs, uint64_t offset,
                                  uint64_t bytes);
int64_t coroutine_fn qcow2_get_last_cluster(BlockDriverState *bs,
                                            int64_t file_size);
int coroutine_fn qcow2_detect_metadata_prealloc(BlockDriverState *bs);
int64_t qcow2_refcount_metadata_size(int64_t clusters, size_t cluster_size,
                                     int refcount_order, bool generous,
                                     uint64_t *refblock_count);
int coroutine_fn qcow2_write_reftable_entry(BlockDriverState *bs,
                                            uint32_t index, const char *event);

/* ---- snapshot.c ---- */
int coroutine_fn qcow2_read_snapshots(BlockDriverState *bs, Error **errp);
int coroutine_fn qcow2_do_read_snapshots(BlockDriverState *bs, bool repair,
                                         int *reduced, int *dropped,
                                         Error **errp);
void qcow2_free_snapshots(BDRVQcow2State *s);
int coroutine_fn qcow2_snapshot_create(BlockDriverState *bs,
                                       QEMUSnapshotInfo *sn, Error **errp);
int coroutine_fn qcow2_snapshot_load_tmp(BlockDriverState *bs,
                                         const char *id, const char *name,
                                         Error **errp);
int coroutine_fn qcow2_snapshot_goto(BlockDriverState *bs,
                                     const char *snapshot_id, Error **errp);
int coroutine_fn qcow2_snapshot_delete(BlockDriverState *bs,
                                       const char *snapshot_id,
                                       const char *name, Error **errp);
int coroutine_fn qcow2_snapshot_list(BlockDriverState *bs,
                                     QEMUSnapshotInfo **psn);
int coroutine_fn qcow2_write_snapshots(BlockDriverState *bs);
int coroutine_fn qcow2_update_snapshot_refcount(BlockDriverState *bs,
                                                uint64_t l1_offset,
                                                uint32_t l1_size,
                                                int addend);

/* ---- check.c ---- */
int coroutine_fn qcow2_co_check_locked(BlockDriverState *bs,
                                       BdrvCheckResult *res,
                                       BdrvCheckMode fix);
int coroutine_fn qcow2_co_check(BlockDriverState *bs, BdrvCheckResult *res,
                                BdrvCheckMode fix);
int coroutine_fn qcow2_change_refcount_order(BlockDriverState *bs, int order,
                                             Error **errp);

/* ---- compress.c ---- */
ssize_t qcow2_compress(void *dest, size_t dest_size, const void *src,
                       size_t src_size);
int qcow2_decompress(void *dest, size_t dest_size, const void *src,
                     size_t src_size);

/* ---- io.c ---- */
int coroutine_fn qcow2_co_preadv(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn qcow2_co_pwritev(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, QEMUIOVector *qiov,
                                  size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn qcow2_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes,
                                        BdrvRequestFlags flags);
int coroutine_fn qcow2_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes);
int coroutine_fn qcow2_co_flush(BlockDriverState *bs);
int coroutine_fn qcow2_co_block_status(BlockDriverState *bs, bool want_zero,
                                       int64_t offset, int64_t bytes,
                                       int64_t *pnum, int64_t *map,
                                       BlockDriverState **file);
int coroutine_fn qcow2_co_save_vmstate(BlockDriverState *bs,
                                       QEMUIOVector *qiov, int64_t pos);
int coroutine_fn qcow2_co_load_vmstate(BlockDriverState *bs,
                                       QEMUIOVector *qiov, int64_t pos);

/* ---- crypto.c ---- */
typedef struct Qcow2Crypto Qcow2Crypto;
typedef struct Qcow2CryptoCreate Qcow2CryptoCreate;
int coroutine_fn qcow2_crypto_open(BlockDriverState *bs, QemuOpts *opts,
                                   int flags, Error **errp);
void qcow2_crypto_close(BlockDriverState *bs);
/* Opened with its key: guest data can be read and written. */
bool qcow2_crypto_can_io(BDRVQcow2State *s);
/* In place over len bytes at host (guest offset guest), all multiples of
 * 512: LUKS takes the IV from host / 512, legacy AES from guest / 512. */
void qcow2_encrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest,
                   uint8_t *buf, size_t len);
void qcow2_decrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest,
                   uint8_t *buf, size_t len);
JsonValue *qcow2_crypto_info(BlockDriverState *bs);
/* LUKS with its key: data at a host offset can be encrypted without its
 * guest offset. */
bool qcow2_crypto_host_iv(BDRVQcow2State *s);
/* One cluster at host reading as zeroes (LUKS; a downgrade's zero
 * clusters: plain zeroes would read as garbage). */
int coroutine_fn qcow2_write_encrypted_zero_cluster(BlockDriverState *bs,
                                                   uint64_t host);
int qcow2_crypto_parse_create(QemuOpts *opts, Qcow2CryptoCreate **out,
                              Error **errp);
uint64_t qcow2_crypto_header_bytes(const Qcow2CryptoCreate *cc);
int coroutine_fn qcow2_crypto_create(BlockDriverState *bs,
                                     const Qcow2CryptoCreate *cc,
                                     Error **errp);
void qcow2_crypto_create_free(Qcow2CryptoCreate *cc);
int coroutine_fn qcow2_crypto_amend(BlockDriverState *bs, QemuOpts *opts,
                                    bool force, Error **errp);

/* ---- resize.c ---- */
int coroutine_fn qcow2_co_truncate(BlockDriverState *bs, int64_t offset,
                                   bool exact, PreallocMode prealloc,
                                   Error **errp);
int coroutine_fn qcow2_make_empty(BlockDriverState *bs);
int coroutine_fn qcow2_preallocate(BlockDriverState *bs, uint64_t offset,
                                   uint64_t new_length, PreallocMode mode,
                                   Error **errp);

/* ---- create.c ---- */
extern const QemuOptDesc qcow2_create_opts[];
extern const QemuOptDesc qcow2_amend_opts[];
int coroutine_fn qcow2_co_create(const char *filename, QemuOpts *opts,
                                 Error **errp);
int coroutine_fn qcow2_amend_options(BlockDriverState *bs, QemuOpts *opts,
                                     bool force, Error **errp);

/*
 * qemu-img amend -p, reported as QEMU 7.2 does: each operation (upgrade,
 * refcount width change, downgrade) reports offset of work units done;
 * operations not reached yet are projected at the size of those seen.
 */
typedef enum Qcow2AmendOp {
    QCOW2_AMEND_NONE,
    QCOW2_AMEND_UPGRADE,
    QCOW2_AMEND_REFCOUNT_ORDER,
    QCOW2_AMEND_ENCRYPTION,
    QCOW2_AMEND_DOWNGRADE,
} Qcow2AmendOp;

typedef struct Qcow2AmendProgress {
    Qcow2AmendOp current, last;
    int total_ops, ops_completed;
    int64_t offset_completed, last_work;
} Qcow2AmendProgress;

void qcow2_amend_status(BlockDriverState *bs, int64_t offset, int64_t work);
BlockMeasureInfo *qcow2_measure(QemuOpts *opts, BlockDriverState *in_bs,
                                Error **errp);
int coroutine_fn qcow2_change_backing_file(BlockDriverState *bs,
                                           const char *backing_file,
                                           const char *backing_fmt);

#endif
