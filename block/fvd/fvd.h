/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD (Fast Virtual Disk): on-disk structures, driver state and the
 * interfaces between the files of block/fvd/. docs/specs/fvd.txt is
 * normative; this header follows it.
 *
 *   0       512        header_size   bitmap_offset  journal_offset  data_offset
 *   +-------+----------+-------------+--------------+--------------+----------
 *   | fixed | names    | (free, zero)| bitmap:      | journal:     | guest data
 *   | header| (offset+ |             | 1 bit/block, | ring of 512-B| at its
 *   |       |  length) |             | 1 = in image | sectors      | virtual
 *   +-------+----------+-------------+--------------+--------------+ offset
 *   (a compact image puts its table between the journal and data_offset:
 *    guest data is then in chunks allocated in order, mapped by the table)
 *
 * With a separate data file, data_offset is 0 and refers to that file: the
 * data file alone is then a raw image of the disk wherever the bitmap says
 * "in image". All fields are little-endian on disk. FvdDiskHeader and
 * FvdJournalSector are in disk byte order, FvdHeader in CPU order;
 * fvd_header_to_cpu/_to_disk convert.
 */
#ifndef BLOCK_FVD_H
#define BLOCK_FVD_H

#include "block_int.h"
#include "block/table-cache.h"
#include "block/job.h"

/* ---- header ---- */

#define FVD_MAGIC               "FVD\0"
#define FVD_VERSION             1
#define FVD_HEADER_LENGTH       192         /* fixed header of version 1 */
#define FVD_HEADER_SECTOR       512         /* the fixed header lives here */
#define FVD_NAMES_OFFSET        512         /* first byte a name may use */
#define FVD_PAGE                4096
#define FVD_MAX_HEADER_SIZE     (1 * MiB)
#define FVD_MAX_SIZE            (INT64_C(1) << 62)
#define FVD_MIN_BLOCK_BITS      9           /* 512 B */
#define FVD_MAX_BLOCK_BITS      21          /* 2 MiB */
#define FVD_MAX_NAME            4096
#define FVD_MAX_FMT_NAME        31
#define FVD_DATA_ALIGN          (64 * KiB)  /* data_offset chosen at create */

/* Defaults chosen at create (docs/fvd.md). */
#define FVD_DEFAULT_MIN_BLOCK   (4 * KiB)
#define FVD_DEFAULT_MAX_BITMAP  (4 * MiB)
#define FVD_DEFAULT_JOURNAL     (1 * MiB)

/* Incompatible features: a reader that does not know a bit refuses. */
#define FVD_INCOMPAT_DIRTY      (UINT64_C(1) << 0)  /* replay the journal */
#define FVD_INCOMPAT_DATA_FILE  (UINT64_C(1) << 1)  /* data in another file */
#define FVD_INCOMPAT_TABLE      (UINT64_C(1) << 2)  /* compact image: table */
#define FVD_INCOMPAT_MASK       (FVD_INCOMPAT_DIRTY | FVD_INCOMPAT_DATA_FILE | \
                                 FVD_INCOMPAT_TABLE)
/* Compatible features: unknown bits are ignored and kept. */
#define FVD_COMPAT_COPY_ON_READ (UINT64_C(1) << 0)
#define FVD_COMPAT_COMPLETE     (UINT64_C(1) << 1)  /* base not needed */
#define FVD_COMPAT_MASK         (FVD_COMPAT_COPY_ON_READ | FVD_COMPAT_COMPLETE)
/* Autoclear features: a writer clears the bits it does not know. */
#define FVD_AUTOCLEAR_MASK      UINT64_C(0)

typedef struct FvdDiskHeader {
    uint8_t  magic[4];
    uint32_t version;
    uint32_t header_size;
    uint32_t header_length;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint64_t virtual_size;
    uint64_t base_coverage;
    uint32_t block_bits;
    uint32_t reserved0;
    uint64_t bitmap_offset;
    uint64_t bitmap_size;
    uint64_t journal_offset;
    uint64_t journal_size;
    uint64_t journal_epoch;
    uint64_t data_offset;
    uint64_t table_offset;          /* TABLE only, else 0 */
    uint64_t table_size;            /* TABLE only, else 0 */
    uint32_t chunk_bits;            /* TABLE only, else 0 */
    uint32_t grow_chunks;           /* TABLE: chunks per growth, else 0 */
    uint32_t base_name_offset;
    uint32_t base_name_length;
    uint32_t base_fmt_offset;
    uint32_t base_fmt_length;
    uint32_t data_name_offset;
    uint32_t data_name_length;
    uint32_t data_fmt_offset;
    uint32_t data_fmt_length;
    uint8_t  reserved[24];
} FvdDiskHeader;

_Static_assert(sizeof(FvdDiskHeader) == FVD_HEADER_LENGTH,
               "FVD fixed header is 192 bytes");
_Static_assert(offsetof(FvdDiskHeader, version) == 4, "version at 4");
_Static_assert(offsetof(FvdDiskHeader, header_size) == 8, "header_size at 8");
_Static_assert(offsetof(FvdDiskHeader, incompatible_features) == 16,
               "incompatible_features at 16");
_Static_assert(offsetof(FvdDiskHeader, autoclear_features) == 32,
               "autoclear_features at 32");
_Static_assert(offsetof(FvdDiskHeader, virtual_size) == 40,
               "virtual_size at 40");
_Static_assert(offsetof(FvdDiskHeader, base_coverage) == 48,
               "base_coverage at 48");
_Static_assert(offsetof(FvdDiskHeader, block_bits) == 56, "block_bits at 56");
_Static_assert(offsetof(FvdDiskHeader, bitmap_offset) == 64,
               "bitmap_offset at 64");
_Static_assert(offsetof(FvdDiskHeader, journal_offset) == 80,
               "journal_offset at 80");
_Static_assert(offsetof(FvdDiskHeader, journal_epoch) == 96,
               "journal_epoch at 96");
_Static_assert(offsetof(FvdDiskHeader, data_offset) == 104,
               "data_offset at 104");
_Static_assert(offsetof(FvdDiskHeader, table_offset) == 112,
               "table_offset at 112");
_Static_assert(offsetof(FvdDiskHeader, chunk_bits) == 128, "chunk_bits at 128");
_Static_assert(offsetof(FvdDiskHeader, base_name_offset) == 136,
               "base_name_offset at 136");
_Static_assert(offsetof(FvdDiskHeader, data_name_offset) == 152,
               "data_name_offset at 152");
_Static_assert(offsetof(FvdDiskHeader, data_fmt_length) == 164,
               "data_fmt_length at 164");
_Static_assert(offsetof(FvdDiskHeader, reserved) == 168, "reserved at 168");

/* Names, in header order (index into FvdHeader.names). */
enum { FVD_NAME_BASE, FVD_NAME_BASE_FMT, FVD_NAME_DATA, FVD_NAME_DATA_FMT,
       FVD_NAME_COUNT };

typedef struct FvdNameRef {
    uint32_t offset, length;
} FvdNameRef;

typedef struct FvdHeader {
    uint32_t version;
    uint32_t header_size;
    uint32_t header_length;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint64_t virtual_size;
    uint64_t base_coverage;
    uint32_t block_bits;
    uint64_t bitmap_offset, bitmap_size;
    uint64_t journal_offset, journal_size;
    uint64_t journal_epoch;
    uint64_t data_offset;
    uint64_t table_offset, table_size;
    uint32_t chunk_bits;
    uint32_t grow_chunks;
    FvdNameRef names[FVD_NAME_COUNT];
} FvdHeader;

/* Returns false if the magic is wrong (the other fields are still read). */
bool fvd_header_to_cpu(const FvdDiskHeader *d, FvdHeader *h);
void fvd_header_to_disk(const FvdHeader *h, FvdDiskHeader *d);

/* ---- journal ---- */

#define FVD_JSECTOR             512
#define FVD_JOURNAL_MAGIC       "FVJ\0"
#define FVD_JHDR                40          /* sector header bytes */
#define FVD_JPAYLOAD            (FVD_JSECTOR - FVD_JHDR)
#define FVD_MIN_JOURNAL         (16 * KiB)
#define FVD_MAX_JOURNAL         (64 * MiB)

/* Record types (every record is a multiple of 8 bytes). */
#define FVD_REC_RANGE           1   /* set bits [first, first + count) */
#define FVD_REC_BITS            2   /* OR nbytes of raw bits in at first */
#define FVD_REC_TABLE           3   /* map chunks [first, first + count) */
#define FVD_REC_HDR             16  /* type, (count | nbytes), first */
#define FVD_REC_MAX_BITS_BYTES  (FVD_JPAYLOAD - FVD_REC_HDR)
#define FVD_REC_MAX_TABLE       ((FVD_JPAYLOAD - FVD_REC_HDR) / 4)  /* 114 */

/* ---- table (compact image) ---- */

#define FVD_MIN_CHUNK_BITS      12          /* 4 KiB */
#define FVD_MAX_CHUNK_BITS      30          /* 1 GiB */
#define FVD_DEFAULT_CHUNK       (1 * MiB)
#define FVD_DEFAULT_GROW        (16 * MiB)
#define FVD_MAX_TABLE           (64 * MiB)  /* 16 Mi entries */
#define FVD_TABLE_RESERVE       (1 * TiB)   /* disk size the table covers */
#define FVD_ENTRY_RESERVED      UINT32_C(0x80000000)
#define FVD_MAX_GROW_CHUNKS     65536

typedef struct FvdJournalSector {
    uint8_t  magic[4];
    uint32_t crc;                   /* CRC-32 (zlib) of the sector, this field 0 */
    uint64_t epoch;                 /* == header journal_epoch */
    uint64_t seq;                   /* seq % sectors == position */
    uint64_t tail;                  /* sectors below are in the bitmap */
    uint16_t used;                  /* bytes of records */
    uint16_t reserved0;
    uint32_t reserved1;
    uint8_t  records[FVD_JPAYLOAD];
} FvdJournalSector;

_Static_assert(sizeof(FvdJournalSector) == FVD_JSECTOR,
               "journal sector is 512 bytes");
_Static_assert(offsetof(FvdJournalSector, epoch) == 8, "epoch at 8");
_Static_assert(offsetof(FvdJournalSector, seq) == 16, "seq at 16");
_Static_assert(offsetof(FvdJournalSector, tail) == 24, "tail at 24");
_Static_assert(offsetof(FvdJournalSector, used) == 32, "used at 32");
_Static_assert(offsetof(FvdJournalSector, records) == FVD_JHDR,
               "records at 40");

typedef struct FvdRecordHeader {
    uint16_t type;
    uint16_t nbytes;                /* BITS: payload bytes; RANGE: 0 */
    uint32_t count;                 /* RANGE: blocks; BITS: 0 */
    uint64_t first;                 /* first block */
} FvdRecordHeader;

_Static_assert(sizeof(FvdRecordHeader) == FVD_REC_HDR, "record header");

/* ---- driver state ---- */

/* Allocating writes and copy-on-read in flight over blocks [start, end). */
typedef BdrvRangeLock FvdAlloc;

/*
 * Bits of one cache entry of the bitmap that are set in memory but not yet
 * in the cached entry, because their journal record is not durable yet.
 */
typedef struct FvdShadow {
    uint64_t index;                 /* entry number within the bitmap */
    uint8_t *pending;               /* set by writes since the last commit */
    uint8_t *committing;            /* part of the commit in progress */
} FvdShadow;

typedef struct FvdJournal {
    uint64_t nsectors;              /* ring size */
    uint32_t unit;                  /* sectors per aligned write */
    uint64_t next_seq;              /* next sector to write */
    uint64_t written_seq;           /* sectors below: written and applied */
    uint64_t tail;                  /* sectors below: in the bitmap area */
    bool committing;                /* a commit holds the journal */
    CoQueue commit_queue;           /* waiting for the running commit */
    uint64_t commits_started, commits_done;
    int last_commit_ret;
    bool checkpointing;
    CoQueue checkpoint_queue;
    uint64_t checkpoints_done;
    int last_checkpoint_ret;
} FvdJournal;

/* The table in memory: the whole of it (at most FVD_MAX_TABLE bytes). */
typedef struct FvdTable {
    uint32_t *map;                  /* per virtual chunk: physical + 1, 0 */
    uint64_t nchunks;               /* virtual chunks of the disk */
    uint64_t capacity;              /* entries the table region holds */
    unsigned long *in_use;          /* physical chunks referenced */
    uint64_t used;                  /* 1 + highest physical chunk in use */
    uint64_t storage_chunks;        /* chunks the data storage holds */
    uint64_t zero_from;             /* chunks from here on read zeroes */
    unsigned long *uncommitted;     /* virtual chunks mapped, no record */
    unsigned long *fresh;           /* mapped to a chunk that read zeroes */
    GArray *pending;                /* those chunks, for the next commit */
    uint64_t committing;            /* entries taken by the running commit */
    unsigned long *home_dirty;      /* table pages to write home */
    bool replayed;                  /* replayed entries not home yet */
    CoMutex lock;                   /* one allocation at a time */
} FvdTable;

/* Prefetch throughput measurement (reads from the base, writes). */
typedef struct FvdThroughput {
    int64_t ns;
    uint64_t bytes;
    double avg;                     /* bytes/s, EWMA */
    bool have;
} FvdThroughput;

/* Prefetch profiles (block/fvd/profile.c, docs/specs/fvd-profile.txt). */
#define FVD_PROF_ID_SIZE        32          /* SHA-256 */
#define FVD_PROF_MAX_RANGES     65536

typedef struct FvdProfRange {
    uint64_t start, len;            /* bytes in a file, blocks in memory */
} FvdProfRange;

/* A loaded profile: byte ranges of the base in the order to copy. */
typedef struct FvdProfile {
    char *path;                     /* NULL: none */
    uint64_t base_size;
    uint8_t base_id[FVD_PROF_ID_SIZE];
    FvdProfRange *ranges;
    uint32_t count;
} FvdProfile;

/* A recording: runs of blocks first read from the base, in order. */
typedef struct FvdProfileRec {
    char *path;                     /* NULL: not recording */
    unsigned long *seen;            /* blocks noted */
    GArray *ranges;                 /* FvdProfRange in blocks */
    bool full;                      /* FVD_PROF_MAX_RANGES reached */
} FvdProfileRec;

/* Whole-image prefetch of the base, a job (block/fvd/prefetch.c). */
typedef struct FvdPrefetch {
    Job *job;
    int64_t start_delay_ns;
    uint64_t bytes;                 /* per copy */
    unsigned max_inflight;          /* copies at once (workers) */
    uint64_t bandwidth;             /* bytes/s cap, 0: none */
    uint64_t min_throughput;        /* bytes/s: slower is congestion */
    int64_t measure_ns;
    int64_t throttle_ns;            /* longest random pause, 0: never */
    unsigned alpha;                 /* EWMA weight of the old average, % */
    unsigned busy_duty;             /* % of time copying while the guest
                                     * does I/O, 100: no limit */
    uint64_t cursor;                /* next block to look at */
    unsigned workers, inflight;
    CoQueue done_queue;
    bool run_done;
    int ret;
    FvdThroughput rd, wr;
    int64_t pause_until_ns;
    int64_t bw_start_ns;
    uint64_t bw_bytes;
    bool drain_user;
    bool drop_base;                 /* drop the base when complete */
    GSList *sleepers;               /* FvdSleeper: woken early by stop */
    FvdProfRange *order;            /* profile blocks to copy first */
    uint32_t order_count, order_idx;
    uint64_t order_pos;             /* next block in order[order_idx] */
    uint64_t profile_blocks;        /* blocks the profile names */
} FvdPrefetch;

typedef struct FvdStats {
    uint64_t commits, journal_sectors, checkpoints, bg_commits;
    uint64_t cor_blocks, cow_reads, alloc_writes, pending_waits;
    uint64_t chunks_allocated, storage_grows;
    uint64_t alloc_waits, prefetch_blocks, prefetch_pauses, prefetch_rests;
} FvdStats;

typedef struct BDRVFvdState {
    FvdHeader header;
    uint8_t hdr_sector[FVD_HEADER_SECTOR];  /* sector 0 as read, kept whole */
    char *names[FVD_NAME_COUNT];            /* NULL when absent */

    BlockDriverState *data;         /* guest data: data file or bs->file */
    BlockDriverState *data_file;    /* the separate data file, if any */
    uint64_t block_size;
    uint64_t nb_blocks;             /* blocks covered by the bitmap */

    TableCache *bitmap;             /* NULL without base coverage */
    int cache_entries;              /* entries the cache may hold */
    uint32_t entry_size;            /* bytes per cache entry */
    uint64_t entry_bits;            /* blocks per cache entry */
    GHashTable *shadows;            /* index -> FvdShadow */
    unsigned pending_entries;       /* shadows with pending bits */
    CoQueue pending_queue;          /* writers waiting for a commit */
    GHashTable *replayed;           /* read-only dirty image: index -> bits */

    FvdAlloc *allocs;
    FvdJournal j;
    FvdPrefetch pf;
    uint64_t guest_reqs;            /* guest reads and writes started */
    unsigned guest_inflight;        /* and not finished */
    FvdProfile prof;                /* prefetch-profile, loaded */
    FvdProfileRec prof_rec;         /* prefetch-profile-record */
    bool compact;                   /* TABLE: data through the table */
    uint64_t chunk_size;
    FvdTable t;
    bool session_dirty;             /* DIRTY set by this session */
    bool autoclear_pending;         /* unknown autoclear bits still on disk */
    bool replayed_in_cache;         /* DIRTY image: replayed bits not home */
    bool copy_on_read;
    bool soft_dirty;                /* copy-on-read bits not yet home */
    unsigned soft_writers;          /* flushes writing those home */
    uint64_t cor_inflight;          /* bytes of copy-on-read in progress */
    CoMutex meta_lock;              /* multi-step header changes */
    CoMutex hdr_lock;               /* one header write at a time */
    bool bg_running;                /* background commit/checkpoint */
    CoQueue bg_queue;               /* close waits here for it to end */
    bool closing;                   /* no new background work */
    FvdStats stats;
} BDRVFvdState;

/* Soft and hard limits of cache entries with uncommitted bits. */
#define FVD_PENDING_SOFT        256
#define FVD_PENDING_HARD        1024
/* Most bytes one copy-on-read step copies. */
#define FVD_COR_MAX             (1 * MiB)
#define FVD_COR_MAX_INFLIGHT    (16 * MiB) /* copies written in background */
#define FVD_DEFAULT_CACHE       (4 * MiB)

/* header.c */
int fvd_validate_header(const FvdHeader *h, int64_t file_len, Error **errp);
int coroutine_fn fvd_read_names(BlockDriverState *file, const FvdHeader *h,
                                char **names, Error **errp);
int coroutine_fn fvd_write_header(BlockDriverState *bs);
/*
 * Before the first change of a session (guest write, copy-on-read, resize,
 * amend, repair): clear the autoclear bits this version does not know.
 * Takes meta_lock: call it without holding it.
 */
int coroutine_fn fvd_begin_change(BlockDriverState *bs);
int coroutine_fn fvd_set_names(BlockDriverState *bs,
                               const char *const *new_names, Error **errp);
uint64_t fvd_bitmap_bytes(uint64_t coverage, uint32_t block_bits);

/* bitmap.c */
void fvd_bitmap_init(BDRVFvdState *s);
/*
 * The bitmap's cache (entries of entry_size bytes in bs->file). Its order
 * comes from the table cache's generations: entries holding journalled bits
 * depend on the journal writes in bs->file, those holding copy-on-read bits
 * on the data writes (table_cache_mark_dirty_gen).
 */
TableCache *fvd_bitmap_cache_new(BlockDriverState *bs);
void fvd_bitmap_free(BDRVFvdState *s);
/*
 * Blocks [start, start + *len) all have the state of block start (1 = in the
 * image, counting bits not yet committed); 1 <= *len <= end - start.
 */
int coroutine_fn fvd_bitmap_run(BDRVFvdState *s, uint64_t start, uint64_t end,
                                bool *in_image, uint64_t *len);
/* Record blocks [start, end) as in the image, pending a journal commit. */
void fvd_bitmap_set_pending(BDRVFvdState *s, uint64_t start, uint64_t end);
/*
 * Set bits [start, end) in the cached entries directly (copy-on-read and
 * replay): each entry is marked dirty depending on generation gen of dep
 * (NULL: no dependency).
 */
int coroutine_fn fvd_bitmap_set_cached(BDRVFvdState *s, uint64_t start,
                                       uint64_t end, BlockDriverState *dep,
                                       uint64_t gen);
int coroutine_fn fvd_bitmap_clear_cached(BDRVFvdState *s, uint64_t start,
                                         uint64_t end);
uint64_t fvd_entry_offset(BDRVFvdState *s, uint64_t index);
/* OR bits into the replay overlay (read-only dirty images). */
void fvd_bitmap_replayed_set(BDRVFvdState *s, uint64_t start, uint64_t end);
/* Counting for info and check: set bits below and past nb_blocks. */
int coroutine_fn fvd_bitmap_count(BDRVFvdState *s, uint64_t *allocated,
                                  uint64_t *stray);

/* journal.c */
void fvd_journal_init(BlockDriverState *bs);
/* Make every bit pending now durable in the journal (flush semantics). */
int coroutine_fn fvd_journal_commit(BlockDriverState *bs);
/* Write every bit home and make it durable; reuse the journal space. */
int coroutine_fn fvd_journal_checkpoint(BlockDriverState *bs);
/*
 * Writers: start a background commit past the soft limit of uncommitted
 * entries, wait past the hard one (error if commits keep failing).
 */
int coroutine_fn fvd_journal_throttle(BlockDriverState *bs);
/* Start a background commit/checkpoint if one is due. */
void fvd_journal_kick(BlockDriverState *bs);
/*
 * Close: start no more background work and wait for the running one (the
 * layer's flush before close may have started it after its drain).
 */
void coroutine_fn fvd_journal_stop(BlockDriverState *bs);
/*
 * Read and validate the journal of a dirty image, then apply its records:
 * to the cached bitmap (read-write) or to the replay overlay (read-only).
 * Fails, having written nothing, on a corrupt sector.
 */
int coroutine_fn fvd_journal_replay(BlockDriverState *bs, uint64_t *records,
                                    Error **errp);
/* Before the first journal write of a session: DIRTY and a new epoch. */
int coroutine_fn fvd_mark_dirty(BlockDriverState *bs);

/* io.c */
int coroutine_fn fvd_co_preadv(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, QEMUIOVector *qiov,
                               size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn fvd_co_pwritev(BlockDriverState *bs, int64_t offset,
                                int64_t bytes, QEMUIOVector *qiov,
                                size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn fvd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                      int64_t bytes, BdrvRequestFlags flags);
int coroutine_fn fvd_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes);
int coroutine_fn fvd_co_flush(BlockDriverState *bs);
int coroutine_fn fvd_co_block_status(BlockDriverState *bs, bool want_zero,
                                     int64_t offset, int64_t bytes,
                                     int64_t *pnum, int64_t *map,
                                     BlockDriverState **file);
/* The allocation in flight over a block of [start, end), or NULL. */
static inline FvdAlloc *fvd_alloc_overlap(BDRVFvdState *s, uint64_t start,
                                          uint64_t end)
{
    return bdrv_range_overlap(s->allocs, start, end);
}
/* Wait for an allocation overlapping [start, end); false if none. */
static inline bool coroutine_fn fvd_alloc_wait(BDRVFvdState *s,
                                               uint64_t start, uint64_t end)
{
    return bdrv_range_wait(s->allocs, start, end, &s->stats.alloc_waits);
}
static inline void fvd_alloc_begin(BDRVFvdState *s, FvdAlloc *a,
                                   uint64_t start, uint64_t end)
{
    bdrv_range_lock(&s->allocs, a, start, end);
}
static inline void fvd_alloc_end(BDRVFvdState *s, FvdAlloc *a)
{
    bdrv_range_unlock(&s->allocs, a);
}
int coroutine_fn fvd_read_base(BlockDriverState *bs, int64_t offset,
                               int64_t bytes, QEMUIOVector *qiov,
                               size_t qiov_offset);

/* cor.c */
/* Copy-on-read of guest bytes [offset, offset + bytes) in base blocks
 * [c, c + run): fills qiov; copies whole blocks into the image (written in
 * the background, under the blocks' reservation) when it can reserve them. */
int coroutine_fn fvd_cor_read(BlockDriverState *bs, uint64_t c, uint64_t run,
                              int64_t offset, int64_t bytes,
                              QEMUIOVector *qiov, size_t qiov_offset);

/* maint.c: truncate, amend, backing changes, check, info */
int coroutine_fn fvd_co_truncate(BlockDriverState *bs, int64_t offset,
                                 bool exact, PreallocMode prealloc,
                                 Error **errp);
int coroutine_fn fvd_amend_options(BlockDriverState *bs, QemuOpts *opts,
                                   bool force, Error **errp);
int coroutine_fn fvd_change_backing_file(BlockDriverState *bs,
                                         const char *backing_file,
                                         const char *backing_fmt);
int coroutine_fn fvd_co_check(BlockDriverState *bs, BdrvCheckResult *res,
                              BdrvCheckMode fix);
int fvd_get_info(BlockDriverState *bs, BlockDriverInfo *bdi);
ImageInfoSpecific *fvd_get_specific_info(BlockDriverState *bs, Error **errp);
extern const QemuOptDesc fvd_amend_opts[];
/*
 * Blocks still in the base (0: the image no longer needs its base). Counts
 * bits and (compact image) mappings; the COMPLETE bit is never trusted.
 */
int coroutine_fn fvd_count_base_blocks(BDRVFvdState *s, uint64_t *missing);
/*
 * When every block is in the image: make that durable, then set COMPLETE
 * (spec section 10); drop_base also drops the base in the same header
 * write. 0 without a change when blocks are still in the base.
 */
int coroutine_fn fvd_record_complete(BlockDriverState *bs, bool drop_base);

/* create.c */
int coroutine_fn fvd_create(const char *filename, QemuOpts *opts,
                            Error **errp);
extern const QemuOptDesc fvd_create_opts[];

/* table.c */
/* Load and check the table region (before replay); nothing is written. */
int coroutine_fn fvd_table_load(BlockDriverState *bs, Error **errp);
/* After replay: usage rebuilt from the table (duplicates are corrupt). */
int fvd_table_rebuild_usage(BDRVFvdState *s, Error **errp);
void fvd_table_free(BDRVFvdState *s);
/* Physical chunk of virtual chunk v, or -1 if it is not mapped. */
static inline int64_t fvd_table_get(BDRVFvdState *s, uint64_t v)
{
    return v < s->t.nchunks && s->t.map[v] ? (int64_t)s->t.map[v] - 1 : -1;
}
/* Map virtual chunk v (pending a journal record); returns the physical
 * chunk or a negative errno (-ENOSPC when the storage cannot grow). */
int64_t coroutine_fn fvd_table_alloc(BlockDriverState *bs, uint64_t v);
/* Replay of one table record's entry (validated by the caller). */
int fvd_table_replay_entry(BDRVFvdState *s, uint64_t v, uint32_t e);
/* Journal commit: the pending entries, encoded and applied by journal.c. */
GArray *fvd_table_take_pending(BDRVFvdState *s);
void fvd_table_committed(BDRVFvdState *s, GArray *chunks, guint from,
                         guint to);
void fvd_table_uncommit(BDRVFvdState *s, GArray *chunks, guint from);
/* Every chunk in the list was mapped to a chunk that read as zeroes
 * before (past the storage's end at open, never mapped since). */
bool fvd_table_all_fresh(BDRVFvdState *s, GArray *chunks);
/* Write the dirty table pages home (committed entries only). */
int coroutine_fn fvd_table_write_home(BlockDriverState *bs);
/* Resize: entries [from, to) cleared in memory and home, flushed. */
int coroutine_fn fvd_table_resize(BlockDriverState *bs, uint64_t new_size);
/* Data storage I/O at guest offsets, split by chunk; alloc: map chunks. */
int coroutine_fn fvd_data_preadv(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 size_t qiov_offset);
int coroutine_fn fvd_data_pwritev(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, QEMUIOVector *qiov,
                                  size_t qiov_offset, BdrvRequestFlags flags);
/* qiov-less: zeroes; alloc false leaves unmapped chunks alone. */
int coroutine_fn fvd_data_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, BdrvRequestFlags flags,
                                        bool alloc);
int coroutine_fn fvd_data_pdiscard(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes);
/* Blocks [start, start + *len) share the state of block start, where a
 * block of a compact image is in the image only if its chunk is mapped. */
int coroutine_fn fvd_block_run(BDRVFvdState *s, uint64_t start, uint64_t end,
                               bool *in_image, uint64_t *len);
/* Leaked physical chunks below used (check); repair discards them. */
uint64_t fvd_table_count_leaks(BDRVFvdState *s);
int coroutine_fn fvd_table_reclaim(BlockDriverState *bs);
/* Bytes of data storage the image needs (check). */
uint64_t fvd_data_needed(BDRVFvdState *s);

/* prefetch.c */
/* Open: read the prefetch options; start the job if prefetch=on. */
int fvd_prefetch_setup(BlockDriverState *bs, QemuOpts *opts, Error **errp);
/* Close: cancel the job and wait for it. */
void coroutine_fn fvd_prefetch_stop(BlockDriverState *bs);
/* The prefetch job of the session (it may have ended), or NULL. */
Job *fvd_prefetch_job(BlockDriverState *bs);
/* "running", "paused", "done", "cancelled", "failed", or NULL (none). */
const char *fvd_prefetch_state(BDRVFvdState *s);

/* profile.c */
int coroutine_fn fvd_profile_base_id(BlockDriverState *bs, uint64_t *size,
                                     uint8_t id[FVD_PROF_ID_SIZE]);
/* Open: start recording guest reads of the base (path NULL: don't). */
int fvd_profile_record_setup(BlockDriverState *bs, const char *path,
                             Error **errp);
/* The guest read blocks [c, c + n) from the base. */
void fvd_profile_note(BDRVFvdState *s, uint64_t c, uint64_t n);
/* Close: write the recorded profile, free the recording. */
void coroutine_fn fvd_profile_record_finish(BlockDriverState *bs);
/* Open: read and check a profile (the base identity is checked later). */
int fvd_profile_load(BDRVFvdState *s, const char *path, Error **errp);
void fvd_profile_free(BDRVFvdState *s);

/* Helpers shared by the files. */
static inline uint64_t fvd_coverage(BDRVFvdState *s)
{
    return s->header.base_coverage;
}

/* Host offset of guest byte off in s->data (not for compact images: they
 * go through fvd_data_* which map via the table). */
static inline int64_t fvd_host_offset(BDRVFvdState *s, int64_t off)
{
    assert(!s->compact);
    return (int64_t)s->header.data_offset + off;
}

#endif
