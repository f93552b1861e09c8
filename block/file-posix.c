/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The "file" protocol (regular files) and "host_device" / "host_cdrom"
 * (block and character devices), as QEMU splits them. Data goes through
 * preadv/pwritev on the thread pool, or Linux native AIO with aio=native;
 * zeroes and discard use fallocate; block status uses SEEK_DATA/SEEK_HOLE.
 * Permissions become QEMU 7.2's image locks (byte-range locks on the file).
 */
#include "block_int.h"
#include "util/cutils.h"
#include "util/thread-pool.h"
#ifdef CONFIG_LINUX_AIO
#include "util/linux-aio.h"
#endif
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/cdrom.h>
#include <sys/ioctl.h>

typedef struct BDRVFileState {
    int fd;
    bool use_lock;              /* locking=on|auto */
    /* The permissions in force and the bits whose lock bytes s->fd holds
     * (perm: byte 100 + bit; shared: byte 200 + bit for each bit NOT
     * shared). perm_check may lock more bytes until set/abort. */
    uint64_t perm, shared_perm;
    uint64_t locked_perm, locked_shared_perm;
    bool is_blockdev;
    bool is_chardev;            /* host_device on /dev/null, a tape, ... */
    bool use_aio;               /* Linux native AIO */
    bool has_discard;
    bool has_write_zeroes;
    bool has_fallocate;
    bool o_direct;
#ifdef CONFIG_LINUX_AIO
    LinuxAioState *aio;
#endif
} BDRVFileState;

/* A device node (host_device, host_cdrom): fixed size, no fallocate. */
static bool file_is_device(BDRVFileState *s)
{
    return s->is_blockdev || s->is_chardev;
}

static const QemuOptDesc file_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { "preallocation", QEMU_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)" },
    { "nocow", QEMU_OPT_BOOL,
      "Turn off copy-on-write (valid only on btrfs)" },
    { "extent_size_hint", QEMU_OPT_SIZE,
      "Extent size hint for the image file, 0 to disable" },
    { NULL }
};

static const QemuOptDesc file_open_opts[] = {
    { "aio", QEMU_OPT_STRING, "host AIO implementation (threads, native)" },
    { "locking", QEMU_OPT_STRING,
      "file locking mode (on/off/auto, default: auto)" },
    { NULL }
};

/* The path a name of any of our three protocols stands for. */
static const char *file_strip_prefix(const char *filename)
{
    static const char *const prefixes[] = {
        "file:", "host_device:", "host_cdrom:",
    };
    const char *rest;

    for (unsigned i = 0; i < ARRAY_SIZE(prefixes); i++) {
        if (strstart(filename, prefixes[i], &rest)) {
            return rest;
        }
    }
    return filename;
}

/* ---- blocking work, run on the thread pool ---- */

typedef struct FileJob {
    int fd;
    int type;                   /* FILE_JOB_* */
    int64_t offset, bytes;
    struct iovec *iov;
    int niov;
    int mode;                   /* fallocate mode */
} FileJob;

enum { FILE_JOB_READ, FILE_JOB_WRITE, FILE_JOB_FLUSH, FILE_JOB_FALLOCATE,
       FILE_JOB_DISCARD_BLKDEV, FILE_JOB_TRUNCATE };

/* Transfer the whole vector, retrying short transfers; reads past EOF
 * zero-fill. */
static int file_job_rw(FileJob *job)
{
    int64_t done = 0;
    struct iovec local[64];
    struct iovec *iov = job->iov;
    int niov = job->niov;

    while (done < job->bytes) {
        /* Build the iov for the remaining part. */
        size_t skip = done;
        int first = 0;
        while (first < niov && skip >= iov[first].iov_len) {
            skip -= iov[first].iov_len;
            first++;
        }
        int cnt = MIN(niov - first, (int)ARRAY_SIZE(local));
        memcpy(local, iov + first, cnt * sizeof(struct iovec));
        local[0].iov_base = (char *)local[0].iov_base + skip;
        local[0].iov_len -= skip;
        ssize_t n;
        do {
            n = job->type == FILE_JOB_READ
                ? preadv(job->fd, local, cnt, job->offset + done)
                : pwritev(job->fd, local, cnt, job->offset + done);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            return -errno;
        }
        if (n == 0) {
            if (job->type == FILE_JOB_WRITE) {
                return -EIO;
            }
            iov_memset(iov, niov, done, 0, job->bytes - done);
            return 0;
        }
        done += n;
    }
    return 0;
}

static int file_job_run(void *opaque)
{
    FileJob *job = opaque;
    int ret;

    switch (job->type) {
    case FILE_JOB_READ:
    case FILE_JOB_WRITE:
        return file_job_rw(job);
    case FILE_JOB_FLUSH:
        ret = qemu_fdatasync(job->fd);
        return ret < 0 ? -errno : 0;
    case FILE_JOB_FALLOCATE:
        do {
            ret = fallocate(job->fd, job->mode, job->offset, job->bytes);
        } while (ret < 0 && errno == EINTR);
        if (ret < 0) {
            return (errno == EOPNOTSUPP || errno == ENOSYS) ? -ENOTSUP
                                                            : -errno;
        }
        return 0;
    case FILE_JOB_DISCARD_BLKDEV: {
        uint64_t range[2] = { job->offset, job->bytes };
        return ioctl(job->fd, BLKDISCARD, range) < 0 ? -ENOTSUP : 0;
    }
    case FILE_JOB_TRUNCATE:
        return ftruncate(job->fd, job->offset) < 0 ? -errno : 0;
    }
    return -EINVAL;
}

static int coroutine_fn file_submit(FileJob *job)
{
    return thread_pool_submit_co(file_job_run, job);
}

/* ---- image locking ----
 *
 * As QEMU 7.2 (so that both see each other's locks): a user holding
 * permission bit i takes a shared lock on byte 100 + i, a user not sharing
 * bit i one on byte 200 + i. Opening checks with a test for an exclusive
 * lock that nobody holds 200 + i for a permission we want, nor 100 + i for
 * one we do not share. Locks belong to the open file description (F_OFD_*),
 * so two opens of one file conflict even in one process, and they go away
 * with the descriptor.
 */
#define FILE_LOCK_PERM_BASE    100
#define FILE_LOCK_SHARED_BASE  200

/* fcntl commands: OFD locks, or POSIX ones where the kernel has none. */
static int file_lock_set_cmd = -1, file_lock_get_cmd = -1;

static bool file_have_ofd_locks(void)
{
    static int have = -1;

    if (have < 0) {
        struct flock fl = { .l_whence = SEEK_SET, .l_type = F_WRLCK };
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

        have = fd >= 0 && fcntl(fd, F_OFD_GETLK, &fl) == 0;
        if (fd >= 0) {
            close(fd);
        }
    }
    return have;
}

/* Choose the fcntl commands once: OFD locks, else POSIX ones. */
static bool file_lock_init(void)
{
    bool ofd = file_have_ofd_locks();

    file_lock_set_cmd = ofd ? F_OFD_SETLK : F_SETLK;
    file_lock_get_cmd = ofd ? F_OFD_GETLK : F_GETLK;
    return ofd;
}

/* Apply "locking=on|off|auto" (QEMU's semantics and warning). */
static int file_parse_locking(BDRVFileState *s, const char *mode,
                              Error **errp)
{
    bool ofd = file_lock_init();

    if (!mode || !strcmp(mode, "auto")) {
        s->use_lock = ofd;
    } else if (!strcmp(mode, "on")) {
        s->use_lock = true;
        if (!ofd) {
            fprintf(stderr, "%s: warning: File lock requested but OFD locking "
                    "syscall is unavailable, falling back to POSIX file "
                    "locks\nDue to the implementation, locks can be lost "
                    "unexpectedly.\n", error_get_progname());
        }
    } else if (!strcmp(mode, "off")) {
        s->use_lock = false;
    } else {
        error_setg(errp, "invalid parameter value: %s", mode);
        return -EINVAL;
    }
    return 0;
}

/* Shared-lock (or unlock) one byte; -errno on failure. */
static int file_lock_byte(int fd, int64_t off, bool lock)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
        .l_type = lock ? F_RDLCK : F_UNLCK,
    };

    return fcntl(fd, file_lock_set_cmd, &fl) < 0 ? -errno : 0;
}

/* -EAGAIN if another open file holds a lock on byte off. */
static int file_test_byte(int fd, int64_t off)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = off, .l_len = 1, .l_type = F_WRLCK,
    };

    if (fcntl(fd, file_lock_get_cmd, &fl) < 0) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

/* QEMU leaves out the errno when the lock is simply held by someone. */
static void G_GNUC_PRINTF(3, 4) file_lock_error(Error **errp, int err,
                                                const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (err == EAGAIN || err == EACCES) {
        error_setg(errp, "%s", msg);
    } else {
        error_setg_errno(errp, err, "%s", msg);
    }
    g_free(msg);
}

/*
 * Make s->fd hold the bytes of perm (100 + i) and unshared (200 + i); with
 * unlock, release the bytes it holds beyond those.
 */
static int file_apply_lock_bytes(BDRVFileState *s, uint64_t perm,
                                 uint64_t unshared, bool unlock, Error **errp)
{
    uint64_t *held[2] = { &s->locked_perm, &s->locked_shared_perm };
    uint64_t want[2] = { perm & BLK_PERM_ALL, unshared & BLK_PERM_ALL };
    int base[2] = { FILE_LOCK_PERM_BASE, FILE_LOCK_SHARED_BASE };

    for (int k = 0; k < 2; k++) {
        for (int i = 0; (1ULL << i) <= BLK_PERM_ALL; i++) {
            uint64_t bit = 1ULL << i;
            int off = base[k] + i, ret;

            if ((want[k] & bit) && !(*held[k] & bit)) {
                ret = file_lock_byte(s->fd, off, true);
                if (ret < 0) {
                    file_lock_error(errp, -ret, "Failed to lock byte %d", off);
                    return ret;
                }
                *held[k] |= bit;
            } else if (unlock && (*held[k] & bit) && !(want[k] & bit)) {
                ret = file_lock_byte(s->fd, off, false);
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "Failed to unlock byte %d",
                                     off);
                    return ret;
                }
                *held[k] &= ~bit;
            }
        }
    }
    return 0;
}

/* Nobody else may forbid what we hold, nor hold what we forbid. */
static int file_check_lock_bytes(int fd, uint64_t perm, uint64_t shared,
                                 Error **errp)
{
    for (int k = 0; k < 2; k++) {
        for (int i = 0; (1ULL << i) <= BLK_PERM_ALL; i++) {
            uint64_t bit = 1ULL << i;
            bool ours = k == 0 ? (perm & bit) : !(shared & bit);
            int off = (k == 0 ? FILE_LOCK_SHARED_BASE : FILE_LOCK_PERM_BASE)
                      + i;
            int ret;

            if (!ours) {
                continue;
            }
            ret = file_test_byte(fd, off);
            if (ret < 0) {
                char *name = bdrv_perm_names(bit);
                file_lock_error(errp, -ret, "Failed to get %s\"%s\" lock",
                                k == 0 ? "" : "shared ", name);
                g_free(name);
                return ret;
            }
        }
    }
    return 0;
}

/* Back to exactly the locks of (perm, shared); failures only warn. */
static void file_relock(BlockDriverState *bs, uint64_t perm, uint64_t shared)
{
    BDRVFileState *s = bs->opaque;
    Error *err = NULL;

    if (file_apply_lock_bytes(s, perm, ~shared, true, &err) < 0) {
        fprintf(stderr, "%s: warning: %s\n", error_get_progname(),
                error_get_pretty(err));
        error_free(err);
    }
}

static int file_check_perm(BlockDriverState *bs, uint64_t perm,
                           uint64_t shared, Error **errp)
{
    BDRVFileState *s = bs->opaque;
    int ret;

    if (!s->use_lock ||
        ((s->perm | perm) == s->perm &&
         (s->shared_perm & shared) == s->shared_perm)) {
        /* Nothing to add: dropping locks happens in set and cannot fail. */
        return 0;
    }
    /* Hold the union until set/abort: nobody can slip in meanwhile. */
    ret = file_apply_lock_bytes(s, s->perm | perm, ~s->shared_perm | ~shared,
                                false, errp);
    if (ret >= 0) {
        ret = file_check_lock_bytes(s->fd, perm, shared, errp);
        if (ret >= 0) {
            return 0;
        }
        error_append_hint(errp, "Is another process using the image [%s]?\n",
                          bs->filename);
    }
    file_relock(bs, s->perm, s->shared_perm);
    return ret;
}

static void file_set_perm(BlockDriverState *bs, uint64_t perm,
                          uint64_t shared)
{
    BDRVFileState *s = bs->opaque;

    if (s->use_lock) {
        file_relock(bs, perm, shared);
    }
    s->perm = perm;
    s->shared_perm = shared;
}

static void file_abort_perm_update(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    if (s->use_lock) {
        file_relock(bs, s->perm, s->shared_perm);
    }
}

/* ---- open / close ---- */

/* Find the smallest request size O_DIRECT accepts on this file. */
static void file_probe_alignment(BlockDriverState *bs, BDRVFileState *s)
{
    uint32_t align = 0;
    unsigned int sector;
    void *buf;

    if (s->is_blockdev && ioctl(s->fd, BLKSSZGET, &sector) == 0) {
        align = sector;
    }
    if (!align) {
        buf = qemu_memalign(4096, 2 * 4096);
        for (uint32_t a = 512; a <= 4096; a <<= 1) {
            if (pread(s->fd, buf, a, 0) >= 0) {
                align = a;
                break;
            }
        }
        qemu_vfree(buf);
    }
    bs->bl.request_alignment = align ? align : 4096;
    bs->bl.min_mem_alignment = MAX(bs->bl.request_alignment, 512);
}

/*
 * What a driver accepts (QEMU's split): "file" regular files only,
 * "host_device" and "host_cdrom" block and character devices.
 */
static int file_check_type(BlockDriverState *bs, const char *filename,
                           const struct stat *st, Error **errp)
{
    bool device = strcmp(bs->drv->format_name, "file") != 0;

    if (!device && !S_ISREG(st->st_mode)) {
        error_setg(errp, "'file' driver requires '%s' to be a regular file",
                   filename);
        return -EINVAL;
    }
    if (device && !S_ISBLK(st->st_mode) && !S_ISCHR(st->st_mode)) {
        error_setg(errp, "'%s' driver requires '%s' to be either a character "
                   "or block device", bs->drv->format_name, filename);
        return -EINVAL;
    }
    return 0;
}

static int coroutine_fn file_open(BlockDriverState *bs, QemuOpts *options,
                                  int flags, Error **errp)
{
    BDRVFileState *s = bs->opaque;
    const char *filename = file_strip_prefix(bs->filename);
    const char *aio = qemu_opt_get(options, "aio");
    int oflags = O_CLOEXEC;
    struct stat st;
    int ret;

    /* A CD-ROM drive without a disc must still open (QEMU's host_cdrom). */
    if (!strcmp(bs->drv->format_name, "host_cdrom")) {
        oflags |= O_NONBLOCK;
    }

    /* The node is called by its path ("file:a.img" is "a.img"); a
     * relative path after a prefix that would read as a protocol prefix
     * ("file:a:b.img") is called "./a:b.img", as QEMU shows it (and
     * backing file names relative to it stay files); given by options
     * (filename=a:b.img) it stays as given, as QEMU's. */
    const char *colon = strchr(filename, ':');
    const char *slash = strchr(filename, '/');
    if (filename != bs->filename && colon && colon != filename &&
        (!slash || colon < slash) &&
        strlen(filename) + 3 <= sizeof(bs->filename)) {
        char *dot = g_strdup_printf("./%s", filename);
        pstrcpy(bs->filename, sizeof(bs->filename), dot);
        g_free(dot);
    } else {
        memmove(bs->filename, filename, strlen(filename) + 1);
    }
    filename = bs->filename;
    s->fd = -1;
    s->shared_perm = BLK_PERM_ALL;
    if (file_parse_locking(s, qemu_opt_get(options, "locking"), errp) < 0) {
        return -EINVAL;
    }
    if (aio) {
        if (bdrv_parse_aio(aio, &flags) < 0) {
            error_setg(errp, "Invalid aio option '%s'", aio);
            return -EINVAL;
        }
        bs->open_flags = flags;
    }
    oflags |= (flags & BDRV_O_RDWR) ? O_RDWR : O_RDONLY;
    if (flags & BDRV_O_NOCACHE) {
        oflags |= O_DIRECT;
        s->o_direct = true;
    }
    if ((flags & BDRV_O_NATIVE_AIO) && !(flags & BDRV_O_NOCACHE)) {
        error_setg(errp, "aio=native was specified, but it requires "
                   "cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    s->fd = open(filename, oflags);
    if (s->fd < 0) {
        int err = errno;
        if (err == EINVAL && (oflags & O_DIRECT)) {
            error_setg(errp, "Could not open '%s': file system does not "
                       "support O_DIRECT (cache=none)", filename);
        } else {
            error_setg_errno(errp, err, "Could not open '%s'", filename);
        }
        return -err;
    }
    if (fstat(s->fd, &st) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not stat '%s'", filename);
        close(s->fd);
        return -err;
    }
    ret = file_check_type(bs, filename, &st, errp);
    if (ret < 0) {
        close(s->fd);
        return ret;
    }
    s->is_blockdev = S_ISBLK(st.st_mode);
    s->is_chardev = S_ISCHR(st.st_mode);
    s->has_discard = true;
    s->has_write_zeroes = true;
    s->has_fallocate = true;
    if (flags & BDRV_O_NATIVE_AIO) {
#ifdef CONFIG_LINUX_AIO
        s->aio = laio_init(errp);
        if (!s->aio) {
            close(s->fd);
            return -EINVAL;
        }
        s->use_aio = true;
#else
        error_setg(errp, "aio=native is not supported by this build");
        close(s->fd);
        return -ENOTSUP;
#endif
    }
    return 0;
}

static void file_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVFileState *s = bs->opaque;

    bs->bl.request_alignment = 1;
    bs->bl.min_mem_alignment = 1;
    if (s->o_direct) {
        file_probe_alignment(bs, s);
    }
    bs->bl.max_transfer = 1 * GiB;
}

static void coroutine_fn file_close(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

#ifdef CONFIG_LINUX_AIO
    if (s->aio) {
        laio_cleanup(s->aio);
        s->aio = NULL;
    }
#endif
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

/* ---- I/O ---- */

static bool file_qiov_aligned(BlockDriverState *bs, QEMUIOVector *qiov,
                              size_t qiov_offset, int64_t bytes)
{
    size_t align = bs->bl.min_mem_alignment;
    size_t pos = 0;

    if (align <= 1) {
        return true;
    }
    for (int i = 0; i < qiov->niov; i++) {
        size_t len = qiov->iov[i].iov_len;
        if (pos + len > qiov_offset && pos < qiov_offset + bytes) {
            size_t start = MAX(pos, qiov_offset) - pos;
            size_t end = MIN(pos + len, qiov_offset + bytes) - pos;
            if (((uintptr_t)qiov->iov[i].iov_base + start) % align ||
                (end - start) % align) {
                return false;
            }
        }
        pos += len;
    }
    return true;
}

static int coroutine_fn file_co_rw(BlockDriverState *bs, int64_t offset,
                                   int64_t bytes, QEMUIOVector *qiov,
                                   size_t qiov_offset, bool is_write)
{
    BDRVFileState *s = bs->opaque;
    QEMUIOVector sub;
    void *bounce = NULL;
    int ret;

    /* O_DIRECT needs aligned memory: bounce misaligned vectors. */
    if (s->o_direct && !file_qiov_aligned(bs, qiov, qiov_offset, bytes)) {
        bounce = qemu_memalign(bs->bl.min_mem_alignment, bytes);
        if (is_write) {
            qemu_iovec_to_buf(qiov, qiov_offset, bounce, bytes);
        }
        qemu_iovec_init_buf(&sub, bounce, bytes);
    } else if (qiov_offset == 0 && qiov->size == (size_t)bytes) {
        sub = *qiov;
        sub.nalloc = 0;         /* borrowed: never freed */
        if (qiov->nalloc == -1) {
            sub.iov = &sub.local_iov;
        }
    } else {
        qemu_iovec_init_slice(&sub, qiov, qiov_offset, bytes);
    }

#ifdef CONFIG_LINUX_AIO
    if (s->use_aio) {
        ret = laio_co_submit(s->aio, s->fd, offset, &sub,
                             is_write ? QEMU_AIO_WRITE : QEMU_AIO_READ);
    } else
#endif
    {
        FileJob job = {
            .fd = s->fd, .type = is_write ? FILE_JOB_WRITE : FILE_JOB_READ,
            .offset = offset, .bytes = bytes, .iov = sub.iov,
            .niov = sub.niov,
        };
        ret = file_submit(&job);
    }

    if (bounce) {
        if (!is_write && ret >= 0) {
            qemu_iovec_from_buf(qiov, qiov_offset, bounce, bytes);
        }
        qemu_vfree(bounce);
    } else if (sub.nalloc > 0) {
        qemu_iovec_destroy(&sub);
    }
    return ret;
}

static int coroutine_fn file_co_preadv(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    return file_co_rw(bs, offset, bytes, qiov, qiov_offset, false);
}

static int coroutine_fn file_co_pwritev(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset,
                                        BdrvRequestFlags flags)
{
    return file_co_rw(bs, offset, bytes, qiov, qiov_offset, true);
}

static int coroutine_fn file_co_pwrite_zeroes(BlockDriverState *bs,
                                              int64_t offset, int64_t bytes,
                                              BdrvRequestFlags flags)
{
    BDRVFileState *s = bs->opaque;
    FileJob job = { .fd = s->fd, .type = FILE_JOB_FALLOCATE,
                    .offset = offset, .bytes = bytes };
    int ret;

    if (file_is_device(s)) {
        return -ENOTSUP;
    }
    if ((flags & BDRV_REQ_MAY_UNMAP) && s->has_discard) {
        job.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        ret = file_submit(&job);
        if (ret == 0) {
            /* A hole past EOF does not extend the file: do it now. */
            int64_t len = bdrv_getlength(bs);
            if (len >= 0 && offset + bytes > len) {
                FileJob t = { .fd = s->fd, .type = FILE_JOB_TRUNCATE,
                              .offset = offset + bytes };
                ret = file_submit(&t);
            }
            return ret;
        }
        if (ret != -ENOTSUP) {
            return ret;
        }
        s->has_discard = false;
    }
    if (s->has_write_zeroes) {
        job.mode = FALLOC_FL_ZERO_RANGE;
        ret = file_submit(&job);
        if (ret != -ENOTSUP) {
            return ret;
        }
        s->has_write_zeroes = false;
    }
    return -ENOTSUP;
}

static int coroutine_fn file_co_pdiscard(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes)
{
    BDRVFileState *s = bs->opaque;
    FileJob job = { .fd = s->fd, .offset = offset, .bytes = bytes };
    int ret;

    if (!s->has_discard || s->is_chardev) {
        return -ENOTSUP;
    }
    if (s->is_blockdev) {
        job.type = FILE_JOB_DISCARD_BLKDEV;
    } else {
        job.type = FILE_JOB_FALLOCATE;
        job.mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    }
    ret = file_submit(&job);
    if (ret == -ENOTSUP) {
        s->has_discard = false;
    }
    return ret;
}

static int coroutine_fn file_co_flush_to_disk(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;
    FileJob job = { .fd = s->fd, .type = FILE_JOB_FLUSH };
    return file_submit(&job);
}

static int coroutine_fn file_co_block_status(BlockDriverState *bs,
                                             bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum,
                                             int64_t *map,
                                             BlockDriverState **file)
{
    BDRVFileState *s = bs->opaque;
    int64_t align = bs->bl.request_alignment;
    off_t data, hole;
    int ret;

    *map = offset;
    *file = bs;
    if (!want_zero || file_is_device(s)) {
        *pnum = bytes;
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    data = lseek(s->fd, offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* Only a hole up to the end of the file. */
            *pnum = bytes;
            return BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
        }
        *pnum = bytes;
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    if (data > offset) {
        *pnum = MIN(bytes, data - offset);
        ret = BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
    } else {
        hole = lseek(s->fd, offset, SEEK_HOLE);
        if (hole < 0 || hole <= offset) {
            *pnum = bytes;
        } else {
            *pnum = MIN(bytes, hole - offset);
        }
        ret = BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    /*
     * Keep answers aligned for O_DIRECT users, as QEMU does: a data extent
     * ending inside a block (a partial block at the end of the file) grows
     * to the block's end; a hole ending inside one shrinks to the block
     * before it, or, if nothing is left, the block counts as data.
     */
    if (align > 1 && !QEMU_IS_ALIGNED(offset + *pnum, align)) {
        int64_t down = QEMU_ALIGN_DOWN(offset + *pnum, align);

        if ((ret & BDRV_BLOCK_ZERO) && down > offset) {
            *pnum = down - offset;
        } else {
            *pnum = MIN(bytes, QEMU_ALIGN_UP(offset + *pnum, align) - offset);
            ret = BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
        }
    }
    return ret;
}

/* Nothing to tell beyond the defaults, but the question has an answer. */
static int file_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    return 0;
}

static int64_t file_getlength(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;
    struct stat st;

    if (s->is_blockdev) {
        uint64_t size;
        if (ioctl(s->fd, BLKGETSIZE64, &size) < 0) {
            return -errno;
        }
        return size;
    }
    if (s->is_chardev) {
        off_t end = lseek(s->fd, 0, SEEK_END);
        return end < 0 ? -errno : end;
    }
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

static int64_t file_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

/* Grow with the preallocation mode; the new area reads as zeroes. */
static int coroutine_fn file_prealloc(int fd, int64_t old, int64_t size,
                                      PreallocMode prealloc, Error **errp)
{
    int ret;

    if (prealloc == PREALLOC_MODE_FALLOC) {
        FileJob job = { .fd = fd, .type = FILE_JOB_FALLOCATE, .mode = 0,
                        .offset = old, .bytes = size - old };
        ret = file_submit(&job);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not preallocate new data");
        }
        return ret;
    }
    if (prealloc == PREALLOC_MODE_FULL) {
        int64_t chunk = 1 * MiB;
        void *buf = g_malloc0(chunk);
        ret = 0;
        for (int64_t off = old; off < size && ret >= 0; off += chunk) {
            struct iovec iov = { buf, MIN(chunk, size - off) };
            FileJob job = { .fd = fd, .type = FILE_JOB_WRITE, .offset = off,
                            .bytes = iov.iov_len, .iov = &iov, .niov = 1 };
            ret = file_submit(&job);
        }
        g_free(buf);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write zeros for "
                             "preallocation");
        }
        return ret;
    }
    FileJob job = { .fd = fd, .type = FILE_JOB_TRUNCATE, .offset = size };
    ret = file_submit(&job);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not resize file");
    }
    return ret;
}

static int coroutine_fn file_co_truncate(BlockDriverState *bs, int64_t offset,
                                         bool exact, PreallocMode prealloc,
                                         Error **errp)
{
    BDRVFileState *s = bs->opaque;
    int64_t cur = file_getlength(bs);

    if (cur < 0) {
        error_setg_errno(errp, (int)-cur, "Could not get the file size");
        return (int)cur;
    }
    if (file_is_device(s)) {
        if (offset > cur || (exact && offset != cur)) {
            error_setg(errp, "Cannot grow device files");
            return -EINVAL;
        }
        return 0;
    }
    if (prealloc != PREALLOC_MODE_OFF && prealloc != PREALLOC_MODE_FALLOC &&
        prealloc != PREALLOC_MODE_FULL) {
        error_setg(errp, "Unsupported preallocation mode: %s",
                   qemu_prealloc_name(prealloc));
        return -ENOTSUP;
    }
    /* Regular files always take the requested size, as in QEMU. */
    if (offset <= cur || prealloc == PREALLOC_MODE_OFF) {
        FileJob job = { .fd = s->fd, .type = FILE_JOB_TRUNCATE,
                        .offset = offset };
        int ret = file_submit(&job);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to resize the file");
        }
        return ret;
    }
    return file_prealloc(s->fd, cur, offset, prealloc, errp);
}

static bool file_has_zero_init(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;
    return !file_is_device(s);
}

/*
 * Like QEMU, allocate the first block of a new image: O_DIRECT alignment
 * probing then finds data to read. Failure is harmless.
 */
static void file_allocate_first_block(int fd, uint64_t size)
{
    static const uint8_t zeroes[4096];
    size_t n = MIN(size, sizeof(zeroes));
    if (n && pwrite(fd, zeroes, n, 0) < 0) {
        /* only an optimisation */
    }
}

/* nocow (btrfs) and extent_size_hint (XFS): best effort, as in QEMU. */
static void file_set_create_flags(int fd, QemuOpts *opts)
{
    if (qemu_opt_get_bool(opts, "nocow", false)) {
        int attr;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }
    uint64_t hint = qemu_opt_get_size(opts, "extent_size_hint", 1 * MiB);
    struct fsxattr attr;
    if (hint && hint <= UINT32_MAX && ioctl(fd, FS_IOC_FSGETXATTR, &attr) == 0) {
        attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
        attr.fsx_extsize = hint;
        ioctl(fd, FS_IOC_FSSETXATTR, &attr);
    }
}

static int coroutine_fn file_create(const char *filename, QemuOpts *opts,
                                    Error **errp)
{
    const char *path = file_strip_prefix(filename);
    uint64_t size = qemu_opt_get_size(opts, "size", 0);
    const char *prealloc_str = qemu_opt_get(opts, "preallocation");
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    int fd, ret;

    if (prealloc_str && qemu_prealloc_parse(prealloc_str, &prealloc) < 0) {
        error_setg(errp, "invalid parameter value: %s", prealloc_str);
        return -EINVAL;
    }
    if (prealloc == PREALLOC_MODE_METADATA) {
        error_setg(errp, "Unsupported preallocation mode: metadata");
        return -EINVAL;
    }
    if (size > INT64_MAX) {
        error_setg(errp, "Image size is too large");
        return -EFBIG;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not create '%s'", path);
        return ret;
    }
    /*
     * As QEMU: before clearing the file, take write and resize and forbid
     * resize, and fail if a user of the image conflicts (a format writing
     * it: qemu-img create must not destroy an image in use).
     */
    BDRVFileState lock = { .fd = fd };
    file_lock_init();
    ret = file_apply_lock_bytes(&lock, BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                BLK_PERM_RESIZE, false, errp);
    if (ret >= 0) {
        ret = file_check_lock_bytes(fd, BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                    BLK_PERM_ALL & ~BLK_PERM_RESIZE, errp);
        if (ret < 0) {
            error_append_hint(errp, "Is another process using the image "
                              "[%s]?\n", path);
        }
    }
    if (ret < 0) {
        close(fd);
        return ret;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ftruncate(fd, 0) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not clear '%s'", path);
        close(fd);
        return ret;
    }
    if (S_ISREG(st.st_mode)) {
        file_set_create_flags(fd, opts);
        ret = file_prealloc(fd, 0, size, prealloc, errp);
        if (ret >= 0 && prealloc == PREALLOC_MODE_OFF) {
            file_allocate_first_block(fd, size);
        }
    } else {
        ret = 0;
    }
    if (ret >= 0 && qemu_fdatasync(fd) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not flush '%s'", path);
    }
    if (close(fd) < 0 && ret >= 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not close '%s'", path);
    }
    return ret;
}

/* Only regular files: a failed create never made a device node. */
static int coroutine_fn file_co_delete_file(const char *filename,
                                            Error **errp)
{
    const char *path = file_strip_prefix(filename);
    struct stat st;

    if (lstat(path, &st) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not stat '%s'", path);
        return -err;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "Will not delete '%s': not a regular file", path);
        return -EPERM;
    }
    if (unlink(path) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not delete '%s'", path);
        return -err;
    }
    return 0;
}

/* Names without a prefix: device nodes go to host_device (QEMU's rule,
 * "/dev/cdrom..." a little less eagerly, for host_cdrom to win). */
static int hdev_probe_device(const char *filename)
{
    struct stat st;

    if (strstart(filename, "/dev/cdrom", NULL)) {
        return 50;
    }
    if (stat(filename, &st) == 0 &&
        (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))) {
        return 100;
    }
    return 0;
}

/* A CD-ROM drive answers the drive status ioctl, with or without disc. */
static int cdrom_probe_device(const char *filename)
{
    int fd = open(filename, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    int score = 0;

    if (fd < 0) {
        return 0;
    }
    if (ioctl(fd, CDROM_DRIVE_STATUS, CDSL_CURRENT) >= 0) {
        score = 100;
    }
    close(fd);
    return score;
}

/* A medium is present when the drive says it has a readable disc. */
static bool cdrom_is_inserted(BlockDriverState *bs)
{
    BDRVFileState *s = bs->opaque;

    return ioctl(s->fd, CDROM_DRIVE_STATUS, CDSL_CURRENT) == CDS_DISC_OK;
}

/* ---- reopen: a new descriptor, swapped in at commit ---- */

typedef struct FileReopenState {
    int fd;
    bool o_direct;
} FileReopenState;

static int file_reopen_prepare(BdrvReopenState *state, Error **errp)
{
    BlockDriverState *bs = state->bs;
    BDRVFileState *s = bs->opaque;
    int flags = state->flags, oflags = O_CLOEXEC;
    FileReopenState *r;
    int fd;

    if ((flags ^ bs->open_flags) & BDRV_O_NATIVE_AIO) {
        error_setg(errp, "Cannot change the aio mode of '%s' on reopen",
                   bs->filename);
        return -ENOTSUP;
    }
    if ((flags & BDRV_O_NATIVE_AIO) && !(flags & BDRV_O_NOCACHE)) {
        error_setg(errp, "aio=native was specified, but it requires "
                   "cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    if (state->options && qemu_opt_has(state->options, "locking") &&
        g_strcmp0(qemu_opt_get(state->options, "locking"),
                  bs->options ? qemu_opt_get(bs->options, "locking") : NULL)) {
        error_setg(errp, "Cannot change the option 'locking'");
        return -ENOTSUP;
    }
    if (!strcmp(bs->drv->format_name, "host_cdrom")) {
        oflags |= O_NONBLOCK;
    }
    oflags |= (flags & BDRV_O_RDWR) ? O_RDWR : O_RDONLY;
    if (flags & BDRV_O_NOCACHE) {
        oflags |= O_DIRECT;
    }
    fd = open(bs->filename, oflags);
    if (fd < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not reopen '%s'", bs->filename);
        return -err;
    }
    (void)s;
    r = g_new(FileReopenState, 1);
    r->fd = fd;
    r->o_direct = !!(flags & BDRV_O_NOCACHE);
    state->opaque = r;
    return 0;
}

/* The new descriptor takes over the lock bytes, then the old one goes. */
static void file_reopen_commit(BdrvReopenState *state)
{
    BDRVFileState *s = state->bs->opaque;
    FileReopenState *r = state->opaque;

    if (s->use_lock) {
        for (int i = 0; (1ULL << i) <= BLK_PERM_ALL; i++) {
            if (s->locked_perm & (1ULL << i)) {
                file_lock_byte(r->fd, FILE_LOCK_PERM_BASE + i, true);
            }
            if (s->locked_shared_perm & (1ULL << i)) {
                file_lock_byte(r->fd, FILE_LOCK_SHARED_BASE + i, true);
            }
        }
    }
    close(s->fd);
    s->fd = r->fd;
    s->o_direct = r->o_direct;
    g_free(r);
    state->opaque = NULL;
}

static void file_reopen_abort(BdrvReopenState *state)
{
    FileReopenState *r = state->opaque;

    close(r->fd);
    g_free(r);
    state->opaque = NULL;
}

/* What the three protocols share (they differ in what they open). */
#define FILE_DRIVER_COMMON                                          \
    .local_file             = true,                                 \
    .instance_size          = sizeof(BDRVFileState),                \
    .create_opts            = file_create_opts,                     \
    .open_opts              = file_open_opts,                       \
    .bdrv_open              = file_open,                            \
    .bdrv_close             = file_close,                           \
    .bdrv_refresh_limits    = file_refresh_limits,                  \
    .bdrv_co_preadv         = file_co_preadv,                       \
    .bdrv_co_pwritev        = file_co_pwritev,                      \
    .bdrv_co_pwrite_zeroes  = file_co_pwrite_zeroes,                \
    .bdrv_co_pdiscard       = file_co_pdiscard,                     \
    .bdrv_co_flush_to_disk  = file_co_flush_to_disk,                \
    .bdrv_co_block_status   = file_co_block_status,                 \
    .bdrv_co_truncate       = file_co_truncate,                     \
    .bdrv_getlength         = file_getlength,                       \
    .bdrv_get_info          = file_get_info,                        \
    .bdrv_get_allocated_file_size = file_get_allocated_file_size,   \
    .bdrv_has_zero_init     = file_has_zero_init,                   \
    .bdrv_check_perm        = file_check_perm,                      \
    .bdrv_set_perm          = file_set_perm,                        \
    .bdrv_abort_perm_update = file_abort_perm_update,               \
    .bdrv_reopen_prepare    = file_reopen_prepare,                  \
    .bdrv_reopen_commit     = file_reopen_commit,                   \
    .bdrv_reopen_abort      = file_reopen_abort,                    \
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP

static BlockDriver bdrv_host_device = {
    .format_name            = "host_device",
    .protocol_name          = "host_device",
    .bdrv_probe_device      = hdev_probe_device,
    .create_opens_existing  = true,
    FILE_DRIVER_COMMON,
};

static BlockDriver bdrv_host_cdrom = {
    .format_name            = "host_cdrom",
    .protocol_name          = "host_cdrom",
    .bdrv_probe_device      = cdrom_probe_device,
    .bdrv_is_inserted       = cdrom_is_inserted,
    .create_opens_existing  = true,
    FILE_DRIVER_COMMON,
};

BLOCK_DRIVER_REGISTER(bdrv_host_device)
BLOCK_DRIVER_REGISTER(bdrv_host_cdrom)

static BlockDriver bdrv_file = {
    .format_name            = "file",
    .protocol_name          = "file",
    .local_file             = true,
    .instance_size          = sizeof(BDRVFileState),
    .create_opts            = file_create_opts,
    .open_opts              = file_open_opts,

    .bdrv_open              = file_open,
    .bdrv_close             = file_close,
    .bdrv_refresh_limits    = file_refresh_limits,
    .bdrv_create            = file_create,
    .bdrv_co_delete_file    = file_co_delete_file,

    .bdrv_co_preadv         = file_co_preadv,
    .bdrv_co_pwritev        = file_co_pwritev,
    .bdrv_co_pwrite_zeroes  = file_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = file_co_pdiscard,
    .bdrv_co_flush_to_disk  = file_co_flush_to_disk,
    .bdrv_co_block_status   = file_co_block_status,
    .bdrv_co_truncate       = file_co_truncate,
    .bdrv_getlength         = file_getlength,
    .bdrv_get_info          = file_get_info,
    .bdrv_get_allocated_file_size = file_get_allocated_file_size,
    .bdrv_has_zero_init     = file_has_zero_init,

    .bdrv_check_perm        = file_check_perm,
    .bdrv_set_perm          = file_set_perm,
    .bdrv_abort_perm_update = file_abort_perm_update,

    .bdrv_reopen_prepare    = file_reopen_prepare,
    .bdrv_reopen_commit     = file_reopen_commit,
    .bdrv_reopen_abort      = file_reopen_abort,

    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP,
};

BLOCK_DRIVER_REGISTER(bdrv_file)
