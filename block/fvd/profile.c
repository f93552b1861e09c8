/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FVD prefetch profiles (docs/specs/fvd-profile.txt): with
 * prefetch-profile-record=PATH the driver notes, in order, the base
 * blocks the guest reads for the first time and writes them to PATH when
 * the image closes; with prefetch-profile=PATH the prefetch job copies
 * those blocks first. A profile names its base by length and a SHA-256 of
 * sampled content, so it fits any image over the same base and is ignored
 * (one warning) over another. The profile file is named by the user only,
 * never by an image, and every value read from it is bounded.
 */
#include "block/fvd/fvd.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <zlib.h>
#include "util/bitmap.h"

#define FVD_PROF_MAGIC          "FVDPROF\0"
#define FVD_PROF_VERSION        1
#define FVD_PROF_HEADER         56
#define FVD_PROF_SAMPLES        16
#define FVD_PROF_SAMPLE_SIZE    4096

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = v >> (8 * i);
    }
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = v >> (8 * i);
    }
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/*
 * The base's identity: its length and the SHA-256 of the length (LE64)
 * followed by 16 samples of 4096 bytes (fewer bytes when the base is
 * smaller) at offsets i * (length - 4096) / 15 rounded down to 512.
 */
int coroutine_fn fvd_profile_base_id(BlockDriverState *bs, uint64_t *size,
                                     uint8_t id[FVD_PROF_ID_SIZE])
{
    int64_t len = bdrv_getlength(bs->backing);
    GChecksum *sum;
    uint8_t le[8];
    uint8_t *buf;
    gsize idlen = FVD_PROF_ID_SIZE;
    int ret = 0;

    if (len < 0) {
        return len;
    }
    *size = len;
    sum = g_checksum_new(G_CHECKSUM_SHA256);
    put_le64(le, len);
    g_checksum_update(sum, le, 8);
    buf = qemu_blockalign(FVD_PROF_SAMPLE_SIZE);
    int64_t n = MIN(len, FVD_PROF_SAMPLE_SIZE);
    for (int i = 0; i < FVD_PROF_SAMPLES && n > 0; i++) {
        int64_t off = (len - n) / (FVD_PROF_SAMPLES - 1) * i;
        off = MIN(off & ~(int64_t)511, len - n);
        ret = bdrv_co_pread(bs->backing, off, n, buf, 0);
        if (ret < 0) {
            break;
        }
        g_checksum_update(sum, buf, n);
    }
    g_checksum_get_digest(sum, id, &idlen);
    g_checksum_free(sum);
    qemu_vfree(buf);
    return ret < 0 ? ret : 0;
}

/* ---- recording ---- */

/* Whether path may be replaced by a profile: absent, empty, or one. */
static bool fvd_profile_replaceable(const char *path)
{
    uint8_t magic[8];
    struct stat st;
    bool ok;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

    if (fd < 0) {
        return errno == ENOENT;
    }
    ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
         (st.st_size == 0 ||
          (read(fd, magic, 8) == 8 && !memcmp(magic, FVD_PROF_MAGIC, 8)));
    close(fd);
    return ok;
}

int fvd_profile_record_setup(BlockDriverState *bs, const char *path,
                             Error **errp)
{
    BDRVFvdState *s = bs->opaque;
    FvdProfileRec *r = &s->prof_rec;

    if (!path) {
        return 0;
    }
    /* A typo must not replace the base or the image by a profile. */
    if (!fvd_profile_replaceable(path)) {
        error_setg(errp, "FVD prefetch profile '%s' exists and is not a "
                   "prefetch profile; not replaced", path);
        return -EEXIST;
    }
    r->path = g_strdup(path);
    r->seen = s->nb_blocks ? bitmap_new(s->nb_blocks) : NULL;
    r->ranges = g_array_new(false, false, sizeof(FvdProfRange));
    return 0;
}

/* The guest read blocks [c, c + n) from the base: note the new ones. */
void fvd_profile_note(BDRVFvdState *s, uint64_t c, uint64_t n)
{
    FvdProfileRec *r = &s->prof_rec;
    uint64_t end = MIN(c + n, s->nb_blocks);

    if (!r->seen) {
        return;
    }
    for (; c < end; c++) {
        if (test_bit(c, r->seen)) {
            continue;
        }
        FvdProfRange *last = r->ranges->len ?
            &g_array_index(r->ranges, FvdProfRange, r->ranges->len - 1) :
            NULL;
        if (last && last->start + last->len == c) {
            last->len++;
        } else if (r->ranges->len < FVD_PROF_MAX_RANGES) {
            FvdProfRange nr = { .start = c, .len = 1 };
            g_array_append_val(r->ranges, nr);
        } else {
            r->full = true;     /* the rest comes in plain order */
            continue;
        }
        set_bit(c, r->seen);
    }
}

/* Write the file whole to PATH.tmp, then rename it over PATH. */
static int fvd_profile_write_file(const char *path, const uint8_t *buf,
                                  size_t len)
{
    char *tmp = g_strdup_printf("%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ret = 0;

    if (fd < 0) {
        ret = -errno;
        goto out;
    }
    for (size_t done = 0; done < len;) {
        ssize_t w = write(fd, buf + done, len - done);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            ret = w < 0 ? -errno : -EIO;
            break;
        }
        done += w;
    }
    if (ret == 0 && fsync(fd) < 0) {
        ret = -errno;
    }
    if (close(fd) < 0 && ret == 0) {
        ret = -errno;
    }
    if (ret == 0 && rename(tmp, path) < 0) {
        ret = -errno;
    }
    if (ret < 0) {
        unlink(tmp);
    }
out:
    g_free(tmp);
    return ret;
}

/* Close: write what was recorded (nothing without a base). */
void coroutine_fn fvd_profile_record_finish(BlockDriverState *bs)
{
    BDRVFvdState *s = bs->opaque;
    FvdProfileRec *r = &s->prof_rec;
    uint8_t id[FVD_PROF_ID_SIZE];
    uint64_t base_size;
    int ret;

    if (!r->path) {
        return;
    }
    if (!bs->backing) {
        error_report("FVD prefetch profile '%s' not written: the image "
                     "has no base", r->path);
        goto out;
    }
    ret = fvd_profile_base_id(bs, &base_size, id);
    if (ret >= 0) {
        uint64_t limit = MIN(base_size, fvd_coverage(s));
        int bits = s->header.block_bits;
        size_t len = FVD_PROF_HEADER + 16 * (size_t)r->ranges->len + 4;
        uint8_t *buf = g_malloc0(len);
        uint32_t count = 0;
        uint8_t *p = buf + FVD_PROF_HEADER;

        for (guint i = 0; i < r->ranges->len; i++) {
            FvdProfRange *pr = &g_array_index(r->ranges, FvdProfRange, i);
            uint64_t off = pr->start << bits;
            uint64_t end = MIN((pr->start + pr->len) << bits, limit);
            if (off >= end) {
                continue;       /* beyond the base (zeroes) */
            }
            put_le64(p, off);
            put_le64(p + 8, end - off);
            p += 16;
            count++;
        }
        len = p - buf + 4;
        memcpy(buf, FVD_PROF_MAGIC, 8);
        put_le32(buf + 8, FVD_PROF_VERSION);
        put_le32(buf + 12, count);
        put_le64(buf + 16, base_size);
        memcpy(buf + 24, id, FVD_PROF_ID_SIZE);
        put_le32(p, crc32(0, buf, p - buf));
        ret = fvd_profile_write_file(r->path, buf, len);
        g_free(buf);
    }
    if (ret < 0) {
        error_report("FVD prefetch profile '%s' not written: %s", r->path,
                     strerror(-ret));
    }
out:
    fvd_profile_free(s);
}

/* ---- loading ---- */

static int cmp_range(const void *a, const void *b)
{
    const FvdProfRange *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Read and check the profile at path (byte ranges of the base), before
 * the base is known: the identity is compared when the job starts.
 */
int fvd_profile_load(BDRVFvdState *s, const char *path, Error **errp)
{
    FvdProfile *p = &s->prof;
    size_t max = FVD_PROF_HEADER + 16 * (size_t)FVD_PROF_MAX_RANGES + 4;
    uint8_t *buf = NULL;
    const char *why = NULL;
    struct stat st;
    size_t len = 0;
    int fd;

    /* Non-blocking: a FIFO must not hang the open. */
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        error_setg(errp, "FVD prefetch profile '%s': %s", path,
                   strerror(errno));
        return -errno;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        why = "not a regular file";
    } else if (st.st_size < FVD_PROF_HEADER + 4 || (size_t)st.st_size > max) {
        why = "bad size";
    } else {
        len = st.st_size;
        buf = g_malloc(len);
        for (size_t done = 0; done < len;) {
            ssize_t n = read(fd, buf + done, len - done);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                why = "short read";
                break;
            }
            done += n;
        }
    }
    close(fd);
    if (why) {
        goto bad;
    }
    uint32_t count = get_le32(buf + 12);
    if (memcmp(buf, FVD_PROF_MAGIC, 8)) {
        why = "not a profile (bad magic)";
    } else if (get_le32(buf + 8) != FVD_PROF_VERSION) {
        why = "unsupported version";
    } else if (count > FVD_PROF_MAX_RANGES ||
               len != FVD_PROF_HEADER + 16 * (size_t)count + 4) {
        why = "range count does not match the size";
    } else if (crc32(0, buf, len - 4) != get_le32(buf + len - 4)) {
        why = "bad checksum";
    }
    if (why) {
        goto bad;
    }
    p->base_size = get_le64(buf + 16);
    memcpy(p->base_id, buf + 24, FVD_PROF_ID_SIZE);
    p->ranges = g_new(FvdProfRange, MAX(count, 1));
    p->count = count;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t off = get_le64(buf + FVD_PROF_HEADER + 16 * i);
        uint64_t n = get_le64(buf + FVD_PROF_HEADER + 16 * i + 8);
        if (n == 0) {
            why = "empty range";
            goto bad;
        }
        if (off > p->base_size || n > p->base_size - off) {
            why = "range outside the base";
            goto bad;
        }
        p->ranges[i] = (FvdProfRange) { .start = off, .len = n };
    }
    /* Disjoint ranges bound the work to one pass over the base. */
    FvdProfRange *sorted = g_memdup2(p->ranges,
                                     sizeof(FvdProfRange) * MAX(count, 1));
    qsort(sorted, count, sizeof(FvdProfRange), cmp_range);
    for (uint32_t i = 1; i < count; i++) {
        if (sorted[i - 1].start + sorted[i - 1].len > sorted[i].start) {
            why = "ranges overlap";
            break;
        }
    }
    g_free(sorted);
    if (why) {
        goto bad;
    }
    p->path = g_strdup(path);
    g_free(buf);
    return 0;

bad:
    error_setg(errp, "FVD prefetch profile '%s': %s", path, why);
    g_free(buf);
    g_free(p->ranges);
    p->ranges = NULL;
    p->count = 0;
    return -EINVAL;
}

void fvd_profile_free(BDRVFvdState *s)
{
    g_free(s->prof.path);
    g_free(s->prof.ranges);
    memset(&s->prof, 0, sizeof(s->prof));
    g_free(s->prof_rec.path);
    g_free(s->prof_rec.seen);
    if (s->prof_rec.ranges) {
        g_array_free(s->prof_rec.ranges, true);
    }
    memset(&s->prof_rec, 0, sizeof(s->prof_rec));
}
