/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The add-cow format: a metadata file whose bitmap says, per cluster, whether
 * the data is in a raw image file (1) or still in the backing image (0).
 * The write ordering that makes it crash safe is in docs/specs/add-cow.txt
 * section 7: data before bits, raw image flushed before any bitmap page.
 */
#include "block_int.h"
#include "block/add-cow.h"
#include "block/table-cache.h"
#include "util/cutils.h"

#define ADD_COW_CACHE_PAGES 64    /* default bitmap cache: 256 KiB */

/* Header names are copied into these buffers whole, never cut. */
_Static_assert(ADD_COW_MAX_NAME <
               sizeof(((BlockDriverState *)0)->backing_file),
               "an add-cow backing file name fits bs->backing_file");
_Static_assert(ADD_COW_MAX_FMT_NAME <
               sizeof(((BlockDriverState *)0)->backing_format),
               "an add-cow backing format fits bs->backing_format");

typedef struct BDRVAddCowState {
    AddCowHeader header;
    char *image_name;            /* as stored in the header */
    BlockDriverState *image;     /* the raw data image (protocol node) */
    TableCache *bitmap;
    int cache_pages;             /* bitmap cache size (cache-size option) */
    uint64_t cluster_size;
    uint64_t nb_clusters;
    BdrvRangeLock *allocs;       /* allocating writes, in clusters */
    CoMutex meta_lock;           /* header changes, truncate */
    bool autoclear_pending;      /* unknown autoclear bits still on disk */
} BDRVAddCowState;

static const QemuOptDesc add_cow_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { "backing_file", QEMU_OPT_STRING, "File name of a base image" },
    { "backing_fmt", QEMU_OPT_STRING, "Image format of the base image" },
    { "image_file", QEMU_OPT_STRING,
      "File name of the raw image holding the data (default: NAME.raw)" },
    { "cluster_size", QEMU_OPT_SIZE,
      "add-cow cluster size (512 B to 2 MiB, power of two)",
      "65536" },
    { NULL }
};

static const QemuOptDesc add_cow_amend_opts[] = {
    { "backing_file", QEMU_OPT_STRING, "File name of a base image" },
    { "backing_fmt", QEMU_OPT_STRING, "Image format of the base image" },
    { "image_file", QEMU_OPT_STRING, "File name of the raw data image" },
    { NULL }
};

static const QemuOptDesc add_cow_open_opts[] = {
    { "image_file", QEMU_OPT_STRING,
      "Open this raw image instead of the one named in the header" },
    { "cache-size", QEMU_OPT_SIZE,
      "Bitmap cache size in bytes (whole 4 KiB pages, at least one; "
      "default 256 KiB)" },
    { NULL }
};

/* ---- header ---- */

bool add_cow_header_to_cpu(const AddCowDiskHeader *d, AddCowHeader *h)
{
    h->version = be32_to_cpu(d->version);
    h->header_size = be32_to_cpu(d->header_size);
    h->incompatible_features = be64_to_cpu(d->incompatible_features);
    h->compatible_features = be64_to_cpu(d->compatible_features);
    h->autoclear_features = be64_to_cpu(d->autoclear_features);
    h->size = be64_to_cpu(d->size);
    h->cluster_bits = be32_to_cpu(d->cluster_bits);
    h->bitmap_offset = be64_to_cpu(d->bitmap_offset);
    h->bitmap_size = be64_to_cpu(d->bitmap_size);
    h->backing_file_offset = be32_to_cpu(d->backing_file_offset);
    h->backing_file_size = be32_to_cpu(d->backing_file_size);
    h->backing_fmt_offset = be32_to_cpu(d->backing_fmt_offset);
    h->backing_fmt_size = be32_to_cpu(d->backing_fmt_size);
    h->image_file_offset = be32_to_cpu(d->image_file_offset);
    h->image_file_size = be32_to_cpu(d->image_file_size);
    return !memcmp(d->magic, ADD_COW_MAGIC, 8);
}

void add_cow_header_to_disk(const AddCowHeader *h, AddCowDiskHeader *d)
{
    memset(d, 0, sizeof(*d));
    memcpy(d->magic, ADD_COW_MAGIC, 8);
    d->version = cpu_to_be32(h->version);
    d->header_size = cpu_to_be32(h->header_size);
    d->incompatible_features = cpu_to_be64(h->incompatible_features);
    d->compatible_features = cpu_to_be64(h->compatible_features);
    d->autoclear_features = cpu_to_be64(h->autoclear_features);
    d->size = cpu_to_be64(h->size);
    d->cluster_bits = cpu_to_be32(h->cluster_bits);
    d->bitmap_offset = cpu_to_be64(h->bitmap_offset);
    d->bitmap_size = cpu_to_be64(h->bitmap_size);
    d->backing_file_offset = cpu_to_be32(h->backing_file_offset);
    d->backing_file_size = cpu_to_be32(h->backing_file_size);
    d->backing_fmt_offset = cpu_to_be32(h->backing_fmt_offset);
    d->backing_fmt_size = cpu_to_be32(h->backing_fmt_size);
    d->image_file_offset = cpu_to_be32(h->image_file_offset);
    d->image_file_size = cpu_to_be32(h->image_file_size);
}

static uint64_t add_cow_bitmap_bytes(uint64_t size, uint32_t cluster_bits)
{
    uint64_t clusters = DIV_ROUND_UP(size, UINT64_C(1) << cluster_bits);
    return DIV_ROUND_UP(clusters, 8);
}

/*
 * The bitmap_size a disk of size bytes has (spec section 2): its bits
 * rounded up to whole pages, at least one page. Deriving it from the size
 * bounds every walk over the bitmap by the virtual size.
 */
static uint64_t add_cow_bitmap_area(uint64_t size, uint32_t cluster_bits)
{
    return MAX(ROUND_UP(add_cow_bitmap_bytes(size, cluster_bits),
                        ADD_COW_PAGE_SIZE), ADD_COW_PAGE_SIZE);
}

/* One name of the header extension area, for validation messages. */
typedef struct AddCowName {
    const char *what;
    uint32_t off, len, max;
} AddCowName;

static int add_cow_validate_fixed(const AddCowHeader *h, int64_t file_len,
                                  Error **errp)
{
    if (h->version != ADD_COW_VERSION) {
        error_setg(errp, "Unsupported add-cow version %" PRIu32, h->version);
        return -ENOTSUP;
    }
    if (h->incompatible_features & ~ADD_COW_INCOMPAT_MASK) {
        error_setg(errp, "Unsupported add-cow feature(s): 0x%" PRIx64,
                   h->incompatible_features & ~ADD_COW_INCOMPAT_MASK);
        return -ENOTSUP;
    }
    if (h->header_size < ADD_COW_PAGE_SIZE ||
        h->header_size % ADD_COW_PAGE_SIZE ||
        h->header_size > ADD_COW_MAX_HEADER_SIZE) {
        error_setg(errp, "Invalid add-cow header size %" PRIu32,
                   h->header_size);
        return -EINVAL;
    }
    if (file_len < h->header_size) {
        error_setg(errp, "add-cow file is truncated (shorter than its "
                   "%" PRIu32 "-byte header)", h->header_size);
        return -EINVAL;
    }
    if (h->cluster_bits < ADD_COW_MIN_CLUSTER_BITS ||
        h->cluster_bits > ADD_COW_MAX_CLUSTER_BITS) {
        error_setg(errp, "Invalid add-cow cluster size 2^%" PRIu32
                   " (must be 512 B to 2 MiB)", h->cluster_bits);
        return -EINVAL;
    }
    if (h->size > ADD_COW_MAX_SIZE) {
        error_setg(errp, "add-cow virtual size %" PRIu64 " is too large",
                   h->size);
        return -EINVAL;
    }
    if (h->size % ADD_COW_SIZE_ALIGN) {
        error_setg(errp, "add-cow virtual size %" PRIu64 " is not a multiple "
                   "of %d", h->size, ADD_COW_SIZE_ALIGN);
        return -EINVAL;
    }
    return 0;
}

/* The bitmap: page aligned, after the header, sized by the virtual size,
 * inside the file (so no walk or write goes past what the file holds). */
static int add_cow_validate_bitmap(const AddCowHeader *h, int64_t file_len,
                                   Error **errp)
{
    uint64_t area = add_cow_bitmap_area(h->size, h->cluster_bits);

    if (h->bitmap_offset % ADD_COW_PAGE_SIZE ||
        h->bitmap_offset < h->header_size ||
        h->bitmap_size % ADD_COW_PAGE_SIZE) {
        error_setg(errp, "Invalid add-cow bitmap location (offset %" PRIu64
                   ", size %" PRIu64 ")", h->bitmap_offset, h->bitmap_size);
        return -EINVAL;
    }
    if (h->bitmap_size < area) {
        error_setg(errp, "add-cow bitmap (%" PRIu64 " bytes) is too small "
                   "for the virtual size", h->bitmap_size);
        return -EINVAL;
    }
    if (h->bitmap_size > area) {
        error_setg(errp, "add-cow bitmap (%" PRIu64 " bytes) is too large "
                   "for the virtual size (%" PRIu64 " bytes expected)",
                   h->bitmap_size, area);
        return -EINVAL;
    }
    /* file_len >= header_size >= 4096 here; bitmap_size <= 2^50. */
    if (h->bitmap_offset > (uint64_t)file_len ||
        h->bitmap_size > (uint64_t)file_len - h->bitmap_offset) {
        error_setg(errp, "add-cow bitmap (offset %" PRIu64 ", size %" PRIu64
                   ") lies past the end of the %" PRId64 "-byte file",
                   h->bitmap_offset, h->bitmap_size, file_len);
        return -EINVAL;
    }
    return 0;
}

/* Names: bounded in length, inside [128, header_size), not overlapping. */
static int add_cow_validate_names(const AddCowHeader *h, Error **errp)
{
    const AddCowName names[3] = {
        { "backing file", h->backing_file_offset, h->backing_file_size,
          ADD_COW_MAX_NAME },
        { "backing format", h->backing_fmt_offset, h->backing_fmt_size,
          ADD_COW_MAX_FMT_NAME },
        { "image file", h->image_file_offset, h->image_file_size,
          ADD_COW_MAX_NAME },
    };

    if (h->image_file_size == 0) {
        error_setg(errp, "add-cow header has no image file name");
        return -EINVAL;
    }
    for (int i = 0; i < 3; i++) {
        const AddCowName *n = &names[i];
        if (!n->len) {
            continue;
        }
        if (n->len > n->max) {
            error_setg(errp, "add-cow %s name is too long (%" PRIu32
                       " bytes, at most %" PRIu32 ")", n->what, n->len,
                       n->max);
            return -EINVAL;
        }
        if (n->off < ADD_COW_FIXED_HEADER_SIZE ||
            (uint64_t)n->off + n->len > h->header_size) {
            error_setg(errp, "add-cow %s name points outside the header",
                       n->what);
            return -EINVAL;
        }
        for (int j = 0; j < i; j++) {
            const AddCowName *m = &names[j];
            if (m->len && n->off < m->off + m->len &&
                m->off < n->off + n->len) {
                error_setg(errp, "add-cow %s and %s names overlap", m->what,
                           n->what);
                return -EINVAL;
            }
        }
    }
    return 0;
}

/* Every check of docs/specs/add-cow.txt section 9, before any other use. */
static int add_cow_validate(const AddCowHeader *h, int64_t file_len,
                            Error **errp)
{
    int ret = add_cow_validate_fixed(h, file_len, errp);
    if (ret >= 0) {
        ret = add_cow_validate_bitmap(h, file_len, errp);
    }
    if (ret >= 0) {
        ret = add_cow_validate_names(h, errp);
    }
    return ret;
}

static int add_cow_probe(const uint8_t *buf, int buf_size,
                         const char *filename)
{
    if (buf_size >= 8 && !memcmp(buf, ADD_COW_MAGIC, 8)) {
        return 100;
    }
    return 0;
}

/* Read a name from the extension area (NUL-terminated copy, or NULL). */
static char *coroutine_fn add_cow_read_name(BlockDriverState *file,
                                            uint32_t off, uint32_t len,
                                            int *ret)
{
    if (len == 0) {
        return NULL;
    }
    char *name = g_malloc0(len + 1);
    *ret = bdrv_co_pread(file, off, len, name, 0);
    if (*ret < 0 || strlen(name) != len) {
        if (*ret >= 0) {
            *ret = -EINVAL;     /* embedded NUL */
        }
        g_free(name);
        return NULL;
    }
    return name;
}

static int coroutine_fn add_cow_write_header(BlockDriverState *bs);

/*
 * Called before anything changes the image (data, bitmap, names, size): a
 * writer clears the autoclear bits it does not know (spec section 3) before
 * its first change, never at open, so a failing or read-only session
 * leaves the file untouched. Takes meta_lock: call it without holding it.
 */
static int coroutine_fn add_cow_begin_change(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    int ret = 0;

    if (likely(!s->autoclear_pending)) {
        return 0;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    if (s->autoclear_pending) {
        uint64_t old = s->header.autoclear_features;
        s->header.autoclear_features &= ADD_COW_AUTOCLEAR_MASK;
        ret = add_cow_write_header(bs);
        if (ret < 0) {
            s->header.autoclear_features = old;
        } else {
            s->autoclear_pending = false;
        }
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/* ---- open / close ---- */

/*
 * Pages of the bitmap cache from the cache-size open option: whole pages,
 * at least one, at most what the bitmap holds (more would never be used).
 */
static int add_cow_cache_pages(BDRVAddCowState *s, QemuOpts *options,
                               Error **errp)
{
    uint64_t bytes;

    if (!qemu_opt_has(options, "cache-size")) {
        return ADD_COW_CACHE_PAGES;
    }
    bytes = qemu_opt_get_size(options, "cache-size", 0);
    if (bytes < ADD_COW_PAGE_SIZE) {
        error_setg(errp, "add-cow cache-size must be at least %d bytes",
                   ADD_COW_PAGE_SIZE);
        return -EINVAL;
    }
    return (int)MIN(bytes / ADD_COW_PAGE_SIZE,
                    MAX(s->header.bitmap_size / ADD_COW_PAGE_SIZE, 1));
}

/* Read and validate the fixed header into s->header. */
static int coroutine_fn add_cow_read_header(BlockDriverState *bs,
                                            Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowDiskHeader dh;
    int64_t file_len = bdrv_getlength(bs->file);
    int ret;

    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "Could not get file size");
        return (int)file_len;
    }
    if (file_len < (int64_t)sizeof(dh)) {
        error_setg(errp, "Image is not in add-cow format (file too short)");
        return -EINVAL;
    }
    BLKDBG_EVENT(bs->file, "header_read");
    ret = bdrv_co_pread(bs->file, 0, sizeof(dh), &dh, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read add-cow header");
        return ret;
    }
    if (!add_cow_header_to_cpu(&dh, &s->header)) {
        error_setg(errp, "Image is not in add-cow format");
        return -EINVAL;
    }
    return add_cow_validate(&s->header, file_len, errp);
}

/* Read the (validated) names: backing file and format into bs, the image
 * file name into s->image_name. */
static int coroutine_fn add_cow_read_names(BlockDriverState *bs,
                                           Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    char *backing, *fmt = NULL;
    int ret = 0;

    backing = add_cow_read_name(bs->file, s->header.backing_file_offset,
                                s->header.backing_file_size, &ret);
    if (ret >= 0) {
        fmt = add_cow_read_name(bs->file, s->header.backing_fmt_offset,
                                s->header.backing_fmt_size, &ret);
    }
    if (ret >= 0) {
        s->image_name = add_cow_read_name(bs->file,
                                          s->header.image_file_offset,
                                          s->header.image_file_size, &ret);
    }
    if (ret < 0) {
        error_setg(errp, "Could not read the names in the add-cow header");
    } else {
        /* Validation bounded the lengths below both buffers: no cut. */
        pstrcpy(bs->backing_file, sizeof(bs->backing_file),
                backing ? backing : "");
        pstrcpy(bs->backing_format, sizeof(bs->backing_format),
                fmt ? fmt : "");
    }
    g_free(backing);
    g_free(fmt);
    return ret;
}

/*
 * Open the raw image file with the session's flags and check that it holds
 * a disk of size bytes. Used by open and by amend image_file=. With
 * header_parent, full is the name as stored in header_parent's header and
 * the header-name rule applies (bdrv_open_header_file); without, it is the
 * user's name (open option, amend), already resolved.
 */
static BlockDriverState *coroutine_fn
add_cow_open_image(BlockDriverState *header_parent, const char *full,
                   int flags, uint64_t size, Error **errp)
{
    BlockDriverState *img;
    int64_t img_len;

    flags &= BDRV_O_RDWR | BDRV_O_NOCACHE | BDRV_O_NATIVE_AIO |
             BDRV_O_NO_FLUSH | BDRV_O_UNMAP;
    if (header_parent) {
        img = bdrv_open_header_file(header_parent, full, "Image file", flags,
                                    errp);
    } else {
        img = bdrv_open_child(full, NULL, NULL, flags, false, errp);
    }
    if (!img) {
        error_prepend(errp, "Could not open add-cow image file: ");
        return NULL;
    }
    img_len = bdrv_getlength(img);
    if (img_len < 0 || (uint64_t)img_len < size) {
        error_setg(errp, "add-cow image file '%s' is smaller than the "
                   "virtual disk (%" PRId64 " < %" PRIu64 ")",
                   bdrv_get_filename(img), img_len, size);
        bdrv_unref(img);
        return NULL;
    }
    return img;
}

/* The bitmap's page cache, ordered after the current raw image. */
static TableCache *add_cow_bitmap_cache_new(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    TableCache *c = table_cache_new(bs->file, ADD_COW_PAGE_SIZE,
                                    s->cache_pages, "bitmap_load",
                                    "bitmap_update");

    /* Bits must never reach the disk before the data they describe. */
    table_cache_add_dependency_bs(c, s->image);
    return c;
}

static int coroutine_fn add_cow_open(BlockDriverState *bs, QemuOpts *options,
                                     int flags, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    const char *override = qemu_opt_get(options, "image_file");
    int ret;

    qemu_co_mutex_init(&s->meta_lock);
    ret = add_cow_read_header(bs, errp);
    if (ret < 0) {
        return ret;
    }
    s->cluster_size = UINT64_C(1) << s->header.cluster_bits;
    s->nb_clusters = DIV_ROUND_UP(s->header.size, s->cluster_size);
    ret = add_cow_read_names(bs, errp);
    if (ret < 0) {
        goto fail;
    }

    /* The image_file open option is the user's name; the header's obeys
     * the header-name rule (bdrv_open_header_file). */
    if (override) {
        s->image = add_cow_open_image(NULL, override, flags, s->header.size,
                                      errp);
    } else {
        s->image = add_cow_open_image(bs, s->image_name, flags,
                                      s->header.size, errp);
    }
    if (!s->image) {
        ret = -EINVAL;
        goto fail;
    }
    s->cache_pages = add_cow_cache_pages(s, options, errp);
    if (s->cache_pages < 0) {
        ret = -EINVAL;
        goto fail;
    }
    bs->data_file = s->image;
    s->bitmap = add_cow_bitmap_cache_new(bs);
    /* Nothing is written during open (the layer may still fail it, e.g.
     * on the backing file): unknown autoclear bits are cleared before the
     * first change instead (add_cow_begin_change). */
    s->autoclear_pending = (flags & BDRV_O_RDWR) &&
        (s->header.autoclear_features & ~ADD_COW_AUTOCLEAR_MASK);
    return 0;

fail:
    if (s->image) {
        bdrv_unref(s->image);
        s->image = NULL;
    }
    g_free(s->image_name);
    s->image_name = NULL;
    bs->backing_file[0] = '\0';
    bs->backing_format[0] = '\0';
    return ret;
}

static void coroutine_fn add_cow_close(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;

    if (!bs->read_only) {
        table_cache_flush(s->bitmap);
    }
    table_cache_free(s->bitmap);
    bs->data_file = NULL;
    bdrv_unref(s->image);
    g_free(s->image_name);
}

static void add_cow_refresh_limits(BlockDriverState *bs, Error **errp)
{
    bs->bl.request_alignment = 1;
}

static int64_t add_cow_getlength(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    return s->header.size;
}

/* ---- bitmap ---- */

static uint64_t add_cow_page_of(BDRVAddCowState *s, uint64_t cluster)
{
    return s->header.bitmap_offset +
           QEMU_ALIGN_DOWN(cluster / 8, ADD_COW_PAGE_SIZE);
}

/*
 * Length (in clusters, >= 1, <= end - start) of the run starting at start
 * whose bits all equal the bit of start; *set receives that bit.
 */
static int coroutine_fn add_cow_run(BDRVAddCowState *s, uint64_t start,
                                    uint64_t end, bool *set, uint64_t *len)
{
    uint64_t c = start;
    bool first = true, want = false;

    while (c < end) {
        uint8_t *page;
        uint64_t page_off = add_cow_page_of(s, c);
        uint64_t page_first = (page_off - s->header.bitmap_offset) * 8;
        uint64_t page_end = MIN(end, page_first + ADD_COW_PAGE_SIZE * 8);
        int ret = table_cache_get(s->bitmap, page_off, (void **)&page);
        if (ret < 0) {
            return ret;
        }
        for (; c < page_end; c++) {
            uint64_t bit = c - page_first;
            /* Skip whole bytes quickly. */
            if (!first && bit % 8 == 0 && c + 8 <= page_end &&
                page[bit / 8] == (want ? 0xff : 0x00)) {
                c += 7;
                continue;
            }
            bool b = page[bit / 8] & (1 << (bit % 8));
            if (first) {
                want = b;
                first = false;
            } else if (b != want) {
                break;
            }
        }
        table_cache_put(s->bitmap, (void **)&page);
        if (c < page_end) {
            break;
        }
    }
    *set = want;
    *len = c - start;
    return 0;
}

/* Set (value true) or clear bits [start, end) and dirty their pages. */
static int coroutine_fn add_cow_set_bits(BDRVAddCowState *s, uint64_t start,
                                         uint64_t end, bool value)
{
    uint64_t c = start;

    while (c < end) {
        uint8_t *page;
        uint64_t page_off = add_cow_page_of(s, c);
        uint64_t page_first = (page_off - s->header.bitmap_offset) * 8;
        uint64_t page_end = MIN(end, page_first + ADD_COW_PAGE_SIZE * 8);
        int ret = table_cache_get(s->bitmap, page_off, (void **)&page);
        if (ret < 0) {
            return ret;
        }
        for (; c < page_end; c++) {
            uint64_t bit = c - page_first;
            if (value) {
                page[bit / 8] |= 1 << (bit % 8);
            } else {
                page[bit / 8] &= ~(1 << (bit % 8));
            }
        }
        table_cache_mark_dirty(s->bitmap, page);
        table_cache_put(s->bitmap, (void **)&page);
    }
    return 0;
}

/* ---- reads ---- */

/* Read [offset, offset+bytes) of the backing image (zero without one). */
static int coroutine_fn add_cow_read_backing(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes,
                                             QEMUIOVector *qiov,
                                             size_t qiov_offset)
{
    if (!bs->backing) {
        qemu_iovec_memset(qiov, qiov_offset, 0, bytes);
        return 0;
    }
    BLKDBG_EVENT(bs->backing, "cow_read");
    return bdrv_co_preadv_part(bs->backing, offset, bytes, qiov, qiov_offset,
                               0);
}

static int coroutine_fn add_cow_co_preadv(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          QEMUIOVector *qiov,
                                          size_t qiov_offset,
                                          BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int bits = s->header.cluster_bits;

    while (bytes > 0) {
        if ((uint64_t)offset >= s->header.size) {
            qemu_iovec_memset(qiov, qiov_offset, 0, bytes);
            return 0;
        }
        uint64_t c = offset >> bits;
        uint64_t c_end = ((uint64_t)(offset + bytes - 1) >> bits) + 1;
        uint64_t run;
        bool set;
        int ret = add_cow_run(s, c, MIN(c_end, s->nb_clusters), &set, &run);
        if (ret < 0) {
            return ret;
        }
        int64_t n = MIN((int64_t)((c + run) << bits) - offset, bytes);
        n = MIN(n, (int64_t)s->header.size - offset);
        if (set) {
            ret = bdrv_co_preadv_part(s->image, offset, n, qiov, qiov_offset,
                                      0);
        } else {
            ret = add_cow_read_backing(bs, offset, n, qiov, qiov_offset);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

/* ---- writes ---- */

/*
 * Allocating write of the guest bytes [offset, offset+bytes) lying in the
 * unallocated clusters [c, c_end), which the caller has reserved: build each
 * whole cluster range from backing head/tail plus guest data (guest data
 * wins), write it to the raw image, then set the bits. qiov == NULL writes
 * zeroes.
 */
static int coroutine_fn add_cow_write_alloc(BlockDriverState *bs,
                                            uint64_t c, uint64_t c_end,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int bits = s->header.cluster_bits;
    int64_t start = c << bits;
    int64_t end = MIN((int64_t)(c_end << bits), (int64_t)s->header.size);
    int64_t head = offset - start;
    int64_t tail = end - (offset + bytes);
    uint8_t *head_buf = NULL, *tail_buf = NULL;
    QEMUIOVector v;
    int ret = 0;

    assert(head >= 0 && tail >= 0);
    if (!qiov && head == 0 && tail == 0) {
        BdrvRequestFlags zf = BDRV_REQ_MAY_UNMAP & flags;
        ret = bdrv_co_pwrite_zeroes(s->image, start, end - start, zf);
    } else if (head && tail && qiov &&
               end - start <= 2 * (int64_t)s->cluster_size) {
        /*
         * Both ends of a range of at most two clusters need backing data:
         * one read of the whole range, the guest's bytes laid over it in
         * the write vector (two I/Os, not three, per small allocating
         * write). Larger ranges read only their head and tail below, never
         * the middle the guest overwrites.
         */
        uint8_t *buf = qemu_blockalign(end - start);
        QEMUIOVector whole;
        qemu_iovec_init_buf(&whole, buf, end - start);
        ret = add_cow_read_backing(bs, start, end - start, &whole, 0);
        if (ret >= 0) {
            qemu_iovec_init(&v, qiov->niov + 2);
            qemu_iovec_add(&v, buf, head);
            qemu_iovec_concat(&v, qiov, qiov_offset, bytes);
            qemu_iovec_add(&v, buf + head + bytes, tail);
            BLKDBG_EVENT(s->image, "cow_write");
            ret = bdrv_co_pwritev(s->image, start, end - start, &v, 0);
            qemu_iovec_destroy(&v);
        }
        qemu_vfree(buf);
    } else {
        qemu_iovec_init(&v, (qiov ? qiov->niov : 1) + 2);
        if (head) {
            head_buf = qemu_blockalign(head);
            qemu_iovec_add(&v, head_buf, head);
        }
        if (qiov) {
            qemu_iovec_concat(&v, qiov, qiov_offset, bytes);
        } else {
            void *z = g_malloc0(bytes);
            qemu_iovec_add(&v, z, bytes);
        }
        if (tail) {
            tail_buf = qemu_blockalign(tail);
            qemu_iovec_add(&v, tail_buf, tail);
        }
        if (head) {
            ret = add_cow_read_backing(bs, start, head, &v, 0);
        }
        if (ret >= 0 && tail) {
            ret = add_cow_read_backing(bs, offset + bytes, tail, &v,
                                       head + bytes);
        }
        if (ret >= 0) {
            BLKDBG_EVENT(s->image, "cow_write");
            ret = bdrv_co_pwritev(s->image, start, end - start, &v, 0);
        }
        if (!qiov) {
            g_free(v.iov[head ? 1 : 0].iov_base);
        }
        qemu_iovec_destroy(&v);
        qemu_vfree(head_buf);
        qemu_vfree(tail_buf);
    }
    if (ret >= 0) {
        ret = add_cow_set_bits(s, c, c_end, true);
    }
    return ret;
}

/*
 * The write path shared by data and zero writes (qiov == NULL): runs of
 * allocated clusters are written in place without locks; runs of
 * unallocated clusters are reserved, rechecked, and allocated.
 */
static int coroutine_fn add_cow_do_write(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, QEMUIOVector *qiov,
                                         size_t qiov_offset,
                                         BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int bits = s->header.cluster_bits;
    int ret;

    if ((uint64_t)offset + bytes > s->header.size) {
        return -EIO;
    }
    ret = add_cow_begin_change(bs);
    if (ret < 0) {
        return ret;
    }
    while (bytes > 0) {
        uint64_t c = offset >> bits;
        uint64_t c_end = ((uint64_t)(offset + bytes - 1) >> bits) + 1;
        uint64_t run;
        bool set;
        ret = add_cow_run(s, c, c_end, &set, &run);
        if (ret < 0) {
            return ret;
        }
        int64_t n = MIN((int64_t)((c + run) << bits) - offset, bytes);
        if (set) {
            if (qiov) {
                ret = bdrv_co_pwritev_part(s->image, offset, n, qiov,
                                           qiov_offset, flags);
            } else {
                ret = bdrv_co_pwrite_zeroes(s->image, offset, n, flags);
            }
        } else {
            if (bdrv_range_wait(s->allocs, c, c + run, NULL)) {
                continue;       /* bits may have changed: look again */
            }
            BdrvRangeLock a;
            uint64_t run2;
            bool set2;
            bdrv_range_lock(&s->allocs, &a, c, c + run);
            /*
             * Bits read before the reservation may be stale (the scan can
             * yield between pages while another allocation completes):
             * recheck now that nobody else can set bits in the range.
             */
            ret = add_cow_run(s, c, c + run, &set2, &run2);
            if (ret >= 0 && (set2 || run2 != run)) {
                bdrv_range_unlock(&s->allocs, &a);
                continue;
            }
            if (ret >= 0) {
                ret = add_cow_write_alloc(bs, c, c + run, offset, n, qiov,
                                          qiov_offset, flags);
            }
            bdrv_range_unlock(&s->allocs, &a);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

static int coroutine_fn add_cow_co_pwritev(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    return add_cow_do_write(bs, offset, bytes, qiov, qiov_offset, flags);
}

/*
 * Zero writes covering whole clusters zero the raw image range and set the
 * bits (so the backing no longer shows through); anything else falls back
 * to zero-buffer writes through co_pwritev.
 */
static int coroutine_fn add_cow_co_pwrite_zeroes(BlockDriverState *bs,
                                                 int64_t offset,
                                                 int64_t bytes,
                                                 BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t end = offset + bytes;

    if (offset % s->cluster_size ||
        (end % s->cluster_size && (uint64_t)end != s->header.size)) {
        return -ENOTSUP;
    }
    return add_cow_do_write(bs, offset, bytes, NULL, 0, flags);
}

/* Discard whole allocated clusters in the raw image; bits stay set. */
static int coroutine_fn add_cow_co_pdiscard(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    int bits = s->header.cluster_bits;
    uint64_t c = DIV_ROUND_UP((uint64_t)offset, s->cluster_size);
    uint64_t c_end = (uint64_t)(offset + bytes) >> bits;

    int ret;

    if ((uint64_t)(offset + bytes) == s->header.size) {
        c_end = s->nb_clusters;
    }
    if (c >= c_end) {
        return 0;
    }
    ret = add_cow_begin_change(bs);
    if (ret < 0) {
        return ret;
    }
    while (c < c_end) {
        uint64_t run;
        bool set;
        ret = add_cow_run(s, c, c_end, &set, &run);
        if (ret < 0) {
            return ret;
        }
        if (set && !bdrv_range_overlap(s->allocs, c, c + run)) {
            int64_t start = c << bits;
            int64_t len = MIN((int64_t)((c + run) << bits),
                              (int64_t)s->header.size) - start;
            ret = bdrv_co_pdiscard(s->image, start, len);
            if (ret < 0) {
                return ret;
            }
        }
        c += run;
    }
    return 0;
}

/* Data reaches the raw image before any bitmap page that describes it. */
static int coroutine_fn add_cow_co_flush(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    /* In-place writes need this flush too; it also covers the bitmap's
     * dependency, so the write-back below does not flush the image again. */
    BLKDBG_EVENT(s->image, "image_flush");
    ret = bdrv_co_flush(s->image);
    if (ret < 0) {
        return ret;
    }
    return table_cache_write(s->bitmap);
}

static int coroutine_fn add_cow_co_block_status(BlockDriverState *bs,
                                                bool want_zero,
                                                int64_t offset, int64_t bytes,
                                                int64_t *pnum, int64_t *map,
                                                BlockDriverState **file)
{
    BDRVAddCowState *s = bs->opaque;
    int bits = s->header.cluster_bits;
    uint64_t c = offset >> bits;
    uint64_t c_end = MIN(((uint64_t)(offset + bytes - 1) >> bits) + 1,
                         s->nb_clusters);
    uint64_t run;
    bool set;
    int ret;

    if (c >= s->nb_clusters) {
        *pnum = bytes;
        return BDRV_BLOCK_ZERO;
    }
    ret = add_cow_run(s, c, c_end, &set, &run);
    if (ret < 0) {
        return ret;
    }
    *pnum = MIN((int64_t)((c + run) << bits) - offset, bytes);
    if (!set) {
        return 0;
    }
    *map = offset;
    *file = s->image;
    return BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID;
}

/* ---- header updates ---- */

static int coroutine_fn add_cow_write_header(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowDiskHeader dh;
    int ret;

    add_cow_header_to_disk(&s->header, &dh);
    BLKDBG_EVENT(bs->file, "header_write");
    ret = bdrv_co_pwrite(bs->file, 0, sizeof(dh), &dh, 0);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_flush(bs->file);
}

/*
 * Replace the names (NULL keeps the current one; "" removes). The new
 * strings go to free space of the extension area, then the header commits
 * them (spec section 8).
 */
static int coroutine_fn add_cow_set_names(BlockDriverState *bs,
                                          const char *backing,
                                          const char *fmt, const char *image,
                                          Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowHeader h = s->header;
    const char *cur_backing = bs->backing_file;
    const char *cur_fmt = bs->backing_format;
    uint32_t lo = h.header_size, hi = ADD_COW_FIXED_HEADER_SIZE;
    int ret;

    backing = backing ? backing : cur_backing;
    fmt = fmt ? fmt : (backing[0] ? cur_fmt : "");
    image = image ? image : s->image_name;
    size_t lb = strlen(backing), lf = strlen(fmt), li = strlen(image);
    if (lb > ADD_COW_MAX_NAME) {
        error_setg(errp, "Backing file name too long (at most %d bytes)",
                   ADD_COW_MAX_NAME);
        return -EINVAL;
    }
    if (lf > ADD_COW_MAX_FMT_NAME) {
        error_setg(errp, "Backing format name too long (at most %d bytes)",
                   ADD_COW_MAX_FMT_NAME);
        return -EINVAL;
    }
    if (li == 0 || li > ADD_COW_MAX_NAME) {
        error_setg(errp, "add-cow image file name must be 1 to %d bytes",
                   ADD_COW_MAX_NAME);
        return -EINVAL;
    }
    uint32_t offs[3] = { h.backing_file_offset, h.backing_fmt_offset,
                         h.image_file_offset };
    uint32_t lens[3] = { h.backing_file_size, h.backing_fmt_size,
                         h.image_file_size };
    for (int i = 0; i < 3; i++) {
        if (lens[i]) {
            lo = MIN(lo, offs[i]);
            hi = MAX(hi, offs[i] + lens[i]);
        }
    }
    uint32_t need = lb + lf + li;
    uint32_t at;
    if (hi + need <= h.header_size) {
        at = hi;
    } else if (ADD_COW_FIXED_HEADER_SIZE + need <= lo) {
        at = ADD_COW_FIXED_HEADER_SIZE;
    } else {
        error_setg(errp, "New names do not fit into the add-cow header");
        return -ENOSPC;
    }
    char *buf = g_strdup_printf("%s%s%s", backing, fmt, image);
    BLKDBG_EVENT(bs->file, "names_write");
    ret = bdrv_co_pwrite(bs->file, at, need, buf, 0);
    g_free(buf);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write add-cow names");
        return ret;
    }
    h.backing_file_offset = lb ? at : 0;
    h.backing_file_size = lb;
    h.backing_fmt_offset = lf ? at + lb : 0;
    h.backing_fmt_size = lf;
    h.image_file_offset = at + lb + lf;
    h.image_file_size = li;
    AddCowHeader old = s->header;
    s->header = h;
    ret = add_cow_write_header(bs);
    if (ret < 0) {
        s->header = old;
        error_setg_errno(errp, -ret, "Could not write add-cow header");
        return ret;
    }
    if (image != s->image_name) {
        char *copy = g_strdup(image);
        g_free(s->image_name);
        s->image_name = copy;
    }
    return 0;
}

/*
 * After the backing file was removed (header committed), clusters with bit
 * 0 read as zeroes; make the raw image say so too, so that it stands alone:
 * zero those ranges (holes where possible), then set their bits.
 */
static int coroutine_fn add_cow_fill_unallocated(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t c = 0;
    int ret = 0;

    while (c < s->nb_clusters && ret >= 0) {
        uint64_t run;
        bool set;
        ret = add_cow_run(s, c, s->nb_clusters, &set, &run);
        if (ret >= 0 && !set) {
            int64_t start = c << s->header.cluster_bits;
            int64_t end = MIN((int64_t)((c + run) << s->header.cluster_bits),
                              (int64_t)s->header.size);
            ret = bdrv_co_pwrite_zeroes(s->image, start, end - start,
                                        BDRV_REQ_MAY_UNMAP);
            if (ret >= 0) {
                ret = add_cow_set_bits(s, c, c + run, true);
            }
        }
        c += run;
    }
    if (ret >= 0) {
        ret = table_cache_flush(s->bitmap);
    }
    return ret;
}

static int coroutine_fn add_cow_change_backing_file(BlockDriverState *bs,
                                                    const char *backing_file,
                                                    const char *backing_fmt)
{
    BDRVAddCowState *s = bs->opaque;
    int ret = add_cow_begin_change(bs);

    if (ret < 0) {
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    ret = add_cow_set_names(bs, backing_file ? backing_file : "",
                            backing_fmt ? backing_fmt : "", NULL, NULL);
    if (ret >= 0 && (!backing_file || !*backing_file)) {
        ret = add_cow_fill_unallocated(bs);
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/*
 * amend image_file=NAME: the new raw image must open (resolved like the
 * header's name) and hold the whole disk before the header may name it;
 * the session then continues on it.
 */
static BlockDriverState *coroutine_fn
add_cow_amend_open_image(BlockDriverState *bs, const char *image, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    BlockDriverState *img;
    char *full;

    if (!*image) {
        error_setg(errp, "add-cow image file name must not be empty");
        return NULL;
    }
    if (strlen(image) > ADD_COW_MAX_NAME) {
        error_setg(errp, "Image file name too long (at most %d bytes)",
                   ADD_COW_MAX_NAME);
        return NULL;
    }
    /* The user names it here; refuse only what no later open could follow
     * (a network protocol will need --allow-header-protocols then). */
    if (!bdrv_header_name_storable("Image file", image, NULL, errp)) {
        return NULL;
    }
    full = path_combine(bs->filename, image);
    img = add_cow_open_image(NULL, full, bs->open_flags, s->header.size, errp);
    g_free(full);
    /* Locked like the data file it replaces before the session uses it. */
    if (img && bdrv_attach_data_file_perm(bs, img, errp) < 0) {
        bdrv_unref(img);
        img = NULL;
    }
    return img;
}

/*
 * Continue on new_image; returns the old image for the caller to release.
 * The bitmap was flushed, so no page depends on the old image: a fresh
 * cache ordered after new_image replaces it (amend runs with no request
 * in flight, so no page is pinned).
 */
static BlockDriverState *add_cow_switch_image(BlockDriverState *bs,
                                              BlockDriverState *new_image)
{
    BDRVAddCowState *s = bs->opaque;
    BlockDriverState *old = s->image;

    s->image = new_image;
    bs->data_file = new_image;
    table_cache_free(s->bitmap);
    s->bitmap = add_cow_bitmap_cache_new(bs);
    return old;
}

static int coroutine_fn add_cow_amend_options(BlockDriverState *bs,
                                              QemuOpts *opts, bool force,
                                              Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    const char *backing = qemu_opt_get(opts, "backing_file");
    const char *fmt = qemu_opt_get(opts, "backing_fmt");
    const char *image = qemu_opt_get(opts, "image_file");
    BlockDriverState *new_image = NULL;
    int ret = 0;

    if (!backing && !fmt && !image) {
        return 0;
    }
    if (image) {
        new_image = add_cow_amend_open_image(bs, image, errp);
        if (!new_image) {
            return -EINVAL;
        }
    }
    ret = add_cow_begin_change(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write add-cow header");
        bdrv_unref(new_image);
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    if (new_image) {
        ret = table_cache_flush(s->bitmap);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write add-cow bitmap");
        }
    }
    if (ret >= 0) {
        ret = add_cow_set_names(bs, backing, fmt, image, errp);
    }
    if (ret >= 0 && new_image) {
        new_image = add_cow_switch_image(bs, new_image);
    }
    if (ret >= 0 && backing && !*backing) {
        ret = add_cow_fill_unallocated(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not fill the raw image");
        }
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    bdrv_unref(new_image);      /* the old image after a switch */
    if (ret >= 0 && (backing || fmt)) {
        pstrcpy(bs->backing_file, sizeof(bs->backing_file),
                backing ? backing : bs->backing_file);
        pstrcpy(bs->backing_format, sizeof(bs->backing_format),
                fmt ? fmt : bs->backing_format);
    }
    return ret;
}

/* ---- truncate (spec section 7, "Header changes") ---- */

/*
 * Grow from old to new bytes. The new area reads as zeroes (never as
 * backing data or stale raw-image bytes): the raw image is zeroed there and
 * the new clusters' bits are set; the header is the commit point.
 */
static int coroutine_fn add_cow_grow(BlockDriverState *bs, uint64_t old,
                                     uint64_t new, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t first = DIV_ROUND_UP(old, cs);      /* first wholly new cluster */
    uint64_t new_clusters = DIV_ROUND_UP(new, cs);
    uint64_t need = add_cow_bitmap_area(new, s->header.cluster_bits);
    int64_t img_len = bdrv_getlength(s->image);
    int ret = 0;

    if (img_len < 0) {
        error_setg_errno(errp, (int)-img_len, "Could not get image file size");
        return (int)img_len;
    }
    /* 1. Raw image: stale bytes past the old end are zeroed, then it grows
     *    (the extension reads as zeroes). */
    if ((uint64_t)img_len > old) {
        ret = bdrv_co_pwrite_zeroes(s->image, old,
                                    MIN((uint64_t)img_len, new) - old,
                                    BDRV_REQ_MAY_UNMAP);
    }
    if (ret >= 0 && (uint64_t)img_len < new) {
        ret = bdrv_co_truncate(s->image, new, false, PREALLOC_MODE_OFF, errp);
    }
    /* 2. A partial old last cluster still served by the backing gets its
     *    old bytes copied, so its new bytes can read as zero. */
    if (ret >= 0 && old % cs) {
        uint64_t c = old / cs, run;
        bool set;
        ret = add_cow_run(s, c, c + 1, &set, &run);
        if (ret >= 0 && !set) {
            int64_t start = c * cs;
            uint8_t *buf = qemu_blockalign(old - start);
            QEMUIOVector v;
            qemu_iovec_init_buf(&v, buf, old - start);
            ret = add_cow_read_backing(bs, start, old - start, &v, 0);
            if (ret >= 0) {
                ret = bdrv_co_pwritev(s->image, start, old - start, &v, 0);
            }
            qemu_vfree(buf);
        }
        first = c;
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(s->image);
    }
    /* 3. Bitmap: the area grows in place; the new clusters' bits are set. */
    if (ret >= 0 && need > s->header.bitmap_size) {
        ret = bdrv_co_truncate(bs->file, s->header.bitmap_offset + need, false,
                               PREALLOC_MODE_OFF, errp);
        if (ret >= 0) {
            s->header.bitmap_size = need;
        }
    }
    if (ret >= 0) {
        ret = add_cow_set_bits(s, first, new_clusters, true);
    }
    if (ret >= 0) {
        ret = table_cache_flush(s->bitmap);
    }
    /* 4. Commit point: the header with the new size. */
    if (ret >= 0) {
        s->header.size = new;
        ret = add_cow_write_header(bs);
        if (ret < 0) {
            s->header.size = old;
        }
    }
    if (ret >= 0) {
        s->nb_clusters = new_clusters;
    } else if (errp && !*errp) {
        error_setg_errno(errp, -ret, "Could not grow the add-cow image");
    }
    return ret;
}

static int coroutine_fn add_cow_co_truncate(BlockDriverState *bs,
                                            int64_t offset, bool exact,
                                            PreallocMode prealloc,
                                            Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t old = s->header.size, new = offset;
    int ret = 0;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode: %s",
                   qemu_prealloc_name(prealloc));
        return -ENOTSUP;
    }
    if (new > ADD_COW_MAX_SIZE) {
        error_setg(errp, "Image size too large");
        return -EFBIG;
    }
    new = QEMU_ALIGN_UP(new, BDRV_SECTOR_SIZE);
    if (new == old) {
        return 0;
    }
    ret = add_cow_begin_change(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write add-cow header");
        return ret;
    }
    qemu_co_mutex_lock(&s->meta_lock);
    if (new > old) {
        ret = add_cow_grow(bs, old, new, errp);
    } else {
        /* Commit point first, then the raw image may shrink. The bitmap
         * area shrinks with the size (it is derived from it); the file
         * keeps its length, so the bitmap stays inside it. */
        uint64_t old_area = s->header.bitmap_size;
        s->header.size = new;
        s->header.bitmap_size = add_cow_bitmap_area(new,
                                                    s->header.cluster_bits);
        ret = add_cow_write_header(bs);
        if (ret < 0) {
            s->header.size = old;
            s->header.bitmap_size = old_area;
            error_setg_errno(errp, -ret, "Could not write add-cow header");
        } else {
            /* After the commit point: bits past the end are meaningless;
             * clear them so check stays quiet (a crash here only leaks). */
            uint64_t old_clusters = s->nb_clusters;
            s->nb_clusters = DIV_ROUND_UP(new, s->cluster_size);
            if (add_cow_set_bits(s, s->nb_clusters, old_clusters, false) >= 0) {
                table_cache_flush(s->bitmap);
            }
            ret = bdrv_co_truncate(s->image, new, true, PREALLOC_MODE_OFF,
                                   NULL);
            ret = ret < 0 ? 0 : ret;    /* a longer raw image is allowed */
        }
    }
    qemu_co_mutex_unlock(&s->meta_lock);
    return ret;
}

/* ---- info and check ---- */

typedef struct AddCowCount {
    BlockDriverState *bs;
    uint64_t allocated;
    uint64_t stray;             /* bits set past the last cluster */
    int ret;
} AddCowCount;

static void coroutine_fn add_cow_count_entry(void *opaque)
{
    AddCowCount *cnt = opaque;
    BDRVAddCowState *s = cnt->bs->opaque;
    uint64_t total_bits = s->header.bitmap_size * 8;

    cnt->allocated = 0;
    cnt->stray = 0;
    cnt->ret = 0;
    for (uint64_t off = 0; off < s->header.bitmap_size;
         off += ADD_COW_PAGE_SIZE) {
        uint8_t *page;
        int ret = table_cache_get(s->bitmap, s->header.bitmap_offset + off,
                                  (void **)&page);
        if (ret < 0) {
            cnt->ret = ret;
            return;
        }
        for (uint64_t i = 0; i < ADD_COW_PAGE_SIZE; i++) {
            if (!page[i]) {
                continue;
            }
            for (int b = 0; b < 8; b++) {
                uint64_t c = (off + i) * 8 + b;
                if (c < total_bits && (page[i] & (1 << b))) {
                    if (c < s->nb_clusters) {
                        cnt->allocated++;
                    } else {
                        cnt->stray++;
                    }
                }
            }
        }
        table_cache_put(s->bitmap, (void **)&page);
    }
}

static int add_cow_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVAddCowState *s = bs->opaque;
    bdi->cluster_size = s->cluster_size;
    return 0;
}

static ImageInfoSpecific *add_cow_get_specific_info(BlockDriverState *bs,
                                                    Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowCount cnt = { .bs = bs };
    ImageInfoSpecific *info = image_info_specific_new("add-cow");

    bdrv_run_co(add_cow_count_entry, &cnt);
    image_info_add_str(info, "image-file", s->image_name);
    if (cnt.ret >= 0) {
        image_info_add_int(info, "allocated-clusters", cnt.allocated);
        image_info_add_int(info, "total-clusters", s->nb_clusters);
        /* Complete: the raw image alone holds the disk (spec section 10). */
        image_info_add_bool(info, "complete",
                            cnt.allocated == s->nb_clusters);
    }
    return info;
}

static int coroutine_fn add_cow_co_check(BlockDriverState *bs,
                                         BdrvCheckResult *res,
                                         BdrvCheckMode fix)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowCount cnt = { .bs = bs };
    int64_t img_len = bdrv_getlength(s->image);

    add_cow_count_entry(&cnt);
    if (cnt.ret < 0) {
        res->check_errors++;
        return 0;
    }
    if (img_len < 0 || (uint64_t)img_len < s->header.size) {
        fprintf(stderr, "ERROR image file is shorter than the virtual "
                "disk\n");
        res->corruptions++;
    }
    /* Bits past the end are harmless (a grow rewrites them): leaks. */
    if (cnt.stray) {
        fprintf(stderr, "%s %" PRIu64 " bitmap bits set past the end of the "
                "disk\n", (fix & BDRV_FIX_LEAKS) ? "Repairing" : "Leaked",
                cnt.stray);
        if ((fix & BDRV_FIX_LEAKS) && !bs->read_only) {
            int ret = add_cow_begin_change(bs);
            if (ret >= 0) {
                ret = add_cow_set_bits(s, s->nb_clusters,
                                       s->header.bitmap_size * 8, false);
            }
            if (ret >= 0) {
                ret = table_cache_flush(s->bitmap);
            }
            if (ret >= 0) {
                res->leaks_fixed += cnt.stray;
            } else {
                res->leaks += cnt.stray;
            }
        } else {
            res->leaks += cnt.stray;
        }
    }
    res->allocated_clusters = cnt.allocated;
    res->total_clusters = s->nb_clusters;
    res->image_end_offset = s->header.bitmap_offset + s->header.bitmap_size;
    return 0;
}

static int64_t add_cow_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t a = bdrv_get_allocated_file_size(bs->file);
    int64_t b = bdrv_get_allocated_file_size(s->image);
    if (a < 0) {
        return a;
    }
    return b < 0 ? a : a + b;
}

static bool add_cow_has_zero_init(BlockDriverState *bs)
{
    return !bs->backing;
}

/* ---- create ---- */

/* One create: its options, checked before anything is created. */
typedef struct AddCowCreate {
    const char *filename;
    const char *backing, *fmt;
    char *image_name;           /* as stored in the header */
    char *image_path;           /* resolved against filename */
    uint32_t cluster_bits;
    bool has_size;
    uint64_t size;
} AddCowCreate;

static int add_cow_create_check_opts(AddCowCreate *c, QemuOpts *opts,
                                     Error **errp)
{
    const char *image_opt = qemu_opt_get(opts, "image_file");
    uint64_t cluster_size = qemu_opt_get_size(opts, "cluster_size",
                                              1 << ADD_COW_DEFAULT_CLUSTER_BITS);

    c->backing = qemu_opt_get(opts, "backing_file");
    c->fmt = qemu_opt_get(opts, "backing_fmt");
    c->has_size = qemu_opt_has(opts, "size");
    c->size = qemu_opt_get_size(opts, "size", 0);
    if (cluster_size < (1u << ADD_COW_MIN_CLUSTER_BITS) ||
        cluster_size > (1u << ADD_COW_MAX_CLUSTER_BITS) ||
        (cluster_size & (cluster_size - 1))) {
        error_setg(errp, "Cluster size must be a power of two between 512 "
                   "and 2M");
        return -EINVAL;
    }
    c->cluster_bits = __builtin_ctzll(cluster_size);
    if (c->fmt && !c->backing) {
        error_setg(errp, "backing_fmt given without backing_file");
        return -EINVAL;
    }
    if (c->fmt && strlen(c->fmt) > ADD_COW_MAX_FMT_NAME) {
        error_setg(errp, "Backing format name too long");
        return -EINVAL;
    }
    if (c->backing && strlen(c->backing) > ADD_COW_MAX_NAME) {
        error_setg(errp, "Backing file name too long (at most %d bytes)",
                   ADD_COW_MAX_NAME);
        return -EINVAL;
    }
    /* Default image file: next to the add-cow file, named after it. */
    if (image_opt && *image_opt) {
        c->image_name = g_strdup(image_opt);
    } else {
        char *base = g_path_get_basename(c->filename);
        c->image_name = g_strdup_printf("%s.raw", base);
        g_free(base);
    }
    if (strlen(c->image_name) > ADD_COW_MAX_NAME) {
        error_setg(errp, "Image file name too long (at most %d bytes)",
                   ADD_COW_MAX_NAME);
        return -EINVAL;
    }
    c->image_path = path_combine(c->filename, c->image_name);
    if (!strcmp(c->image_path, c->filename)) {
        error_setg(errp, "The add-cow image file cannot be the add-cow file "
                   "itself");
        return -EINVAL;
    }
    return 0;
}

/* Without a size option the backing image gives it. */
static int coroutine_fn add_cow_create_backing_size(AddCowCreate *c,
                                                    Error **errp)
{
    char *bpath = path_combine(c->filename, c->backing);
    BlockDriverState *b = bdrv_open_child(bpath, c->fmt, NULL,
                                          BDRV_O_NO_BACKING, true, errp);
    int64_t len;

    g_free(bpath);
    if (!b) {
        error_prepend(errp, "Could not open backing file: ");
        return -EINVAL;
    }
    len = bdrv_getlength(b);
    bdrv_unref(b);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the backing file "
                         "size");
        return (int)len;
    }
    c->size = len;
    c->has_size = true;
    return 0;
}

/*
 * The raw image file: an existing one of sufficient size is kept as it is
 * (a shorter one grows; *old_len says from what), a missing one is created
 * (*created). Sizes are checked first, so nothing is made for a create
 * that cannot succeed.
 */
static int coroutine_fn add_cow_create_image(AddCowCreate *c,
                                             bool *created, int64_t *old_len,
                                             Error **errp)
{
    BlockDriverState *img;
    int ret = 0;

    *created = false;
    *old_len = -1;
    img = bdrv_open_child(c->image_path, NULL, NULL, BDRV_O_RDWR, false, NULL);
    if (img && !c->has_size) {
        int64_t len = bdrv_getlength(img);
        c->size = MAX(len, 0);
        c->has_size = len >= 0;
    }
    if (!c->has_size) {
        error_setg(errp, "Image size must be specified");
        ret = -EINVAL;
    } else if (c->size > ADD_COW_MAX_SIZE) {
        error_setg(errp, "Image size is too large");
        ret = -EFBIG;
    }
    if (ret < 0) {
        bdrv_unref(img);
        return ret;
    }
    c->size = QEMU_ALIGN_UP(c->size, BDRV_SECTOR_SIZE);

    if (img) {
        int64_t len = bdrv_getlength(img);
        if (len >= 0 && len < (int64_t)c->size) {
            ret = bdrv_co_truncate(img, c->size, false, PREALLOC_MODE_OFF,
                                   errp);
            *old_len = len;
        }
        if (ret >= 0) {
            ret = bdrv_co_flush(img);
        }
        bdrv_unref(img);
        return ret;
    }
    QemuOpts *io = qemu_opts_new();
    qemu_opt_set_number(io, "size", c->size);
    ret = bdrv_create_file(c->image_path, io, errp);
    qemu_opts_del(io);
    *created = true;            /* possibly half made: removed on failure */
    if (ret < 0) {
        error_prepend(errp, "Could not create image file: ");
    }
    return ret;
}

/* The header of a new image of c->size bytes. */
static void add_cow_create_header(const AddCowCreate *c, AddCowHeader *h)
{
    size_t lb = c->backing ? strlen(c->backing) : 0;
    size_t lf = c->fmt ? strlen(c->fmt) : 0;
    size_t li = strlen(c->image_name);

    memset(h, 0, sizeof(*h));
    h->version = ADD_COW_VERSION;
    h->header_size = ROUND_UP(ADD_COW_FIXED_HEADER_SIZE + 2 * (lb + lf + li) +
                              1024, ADD_COW_PAGE_SIZE);
    h->size = c->size;
    h->cluster_bits = c->cluster_bits;
    h->bitmap_offset = h->header_size;
    h->bitmap_size = add_cow_bitmap_area(c->size, h->cluster_bits);
    h->backing_file_offset = lb ? ADD_COW_FIXED_HEADER_SIZE : 0;
    h->backing_file_size = lb;
    h->backing_fmt_offset = lf ? ADD_COW_FIXED_HEADER_SIZE + lb : 0;
    h->backing_fmt_size = lf;
    h->image_file_offset = ADD_COW_FIXED_HEADER_SIZE + lb + lf;
    h->image_file_size = li;
}

/* The add-cow file: sized to hold the bitmap first, then the header and
 * names, then flushed, so it never names a bitmap past its end. */
static int coroutine_fn add_cow_create_meta(const AddCowCreate *c,
                                            Error **errp)
{
    AddCowHeader h;
    BlockDriverState *file;
    QemuOpts *fo = qemu_opts_new();
    uint8_t *hdr;
    int ret;

    add_cow_create_header(c, &h);
    ret = bdrv_create_file(c->filename, fo, errp);
    qemu_opts_del(fo);
    if (ret < 0) {
        return ret;
    }
    file = bdrv_open_child(c->filename, NULL, NULL, BDRV_O_RDWR, false, errp);
    if (!file) {
        return -EIO;
    }
    hdr = g_malloc0(h.header_size);
    add_cow_header_to_disk(&h, (AddCowDiskHeader *)hdr);
    if (h.backing_file_size) {
        memcpy(hdr + h.backing_file_offset, c->backing, h.backing_file_size);
    }
    if (h.backing_fmt_size) {
        memcpy(hdr + h.backing_fmt_offset, c->fmt, h.backing_fmt_size);
    }
    memcpy(hdr + h.image_file_offset, c->image_name, h.image_file_size);
    ret = bdrv_co_truncate(file, h.bitmap_offset + h.bitmap_size, false,
                           PREALLOC_MODE_OFF, errp);
    if (ret >= 0) {
        ret = bdrv_co_pwrite(file, 0, h.header_size, hdr, 0);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(file);
    }
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, -ret, "Could not write add-cow header");
    }
    g_free(hdr);
    bdrv_unref(file);
    return ret;
}

/* Undo what a failed create did to the raw image file. */
static void coroutine_fn add_cow_create_undo_image(const AddCowCreate *c,
                                                   bool created,
                                                   int64_t old_len)
{
    if (created) {
        bdrv_co_delete_file(c->image_path, NULL);
    } else if (old_len >= 0) {
        BlockDriverState *img = bdrv_open_child(c->image_path, NULL, NULL,
                                                BDRV_O_RDWR, false, NULL);
        if (img) {
            bdrv_co_truncate(img, old_len, true, PREALLOC_MODE_OFF, NULL);
            bdrv_unref(img);
        }
    }
}

static int coroutine_fn add_cow_create(const char *filename, QemuOpts *opts,
                                       Error **errp)
{
    AddCowCreate c = { .filename = filename };
    bool created;
    int64_t old_len;
    int ret;

    ret = add_cow_create_check_opts(&c, opts, errp);
    if (ret >= 0 && !c.has_size && c.backing) {
        ret = add_cow_create_backing_size(&c, errp);
    }
    if (ret >= 0) {
        ret = add_cow_create_image(&c, &created, &old_len, errp);
        if (ret >= 0) {
            ret = add_cow_create_meta(&c, errp);
        }
        if (ret < 0) {
            add_cow_create_undo_image(&c, created, old_len);
        }
    }
    g_free(c.image_name);
    g_free(c.image_path);
    return ret;
}

static BlockDriver bdrv_add_cow = {
    .format_name            = "add-cow",
    .instance_size          = sizeof(BDRVAddCowState),
    .supports_backing       = true,
    .create_opts            = add_cow_create_opts,
    .open_opts              = add_cow_open_opts,
    .amend_opts             = add_cow_amend_opts,

    .bdrv_probe             = add_cow_probe,
    .bdrv_open              = add_cow_open,
    .bdrv_close             = add_cow_close,
    .bdrv_refresh_limits    = add_cow_refresh_limits,
    .bdrv_create            = add_cow_create,

    .bdrv_co_preadv         = add_cow_co_preadv,
    .bdrv_co_pwritev        = add_cow_co_pwritev,
    .bdrv_co_pwrite_zeroes  = add_cow_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = add_cow_co_pdiscard,
    .bdrv_co_flush          = add_cow_co_flush,
    .bdrv_co_block_status   = add_cow_co_block_status,
    .bdrv_co_truncate       = add_cow_co_truncate,
    .bdrv_getlength         = add_cow_getlength,
    .bdrv_get_allocated_file_size = add_cow_get_allocated_file_size,

    .bdrv_get_info          = add_cow_get_info,
    .bdrv_get_specific_info = add_cow_get_specific_info,
    .bdrv_has_zero_init     = add_cow_has_zero_init,
    .bdrv_co_check          = add_cow_co_check,
    .bdrv_amend_options     = add_cow_amend_options,
    .bdrv_change_backing_file = add_cow_change_backing_file,

    /* No FUA: the layer follows FUA writes with a full flush, which makes
     * the bitmap durable too. */
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP,
};

BLOCK_DRIVER_REGISTER(bdrv_add_cow)
