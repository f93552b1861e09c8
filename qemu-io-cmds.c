/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qemu-io's command table and the commands that exercise an open image
 * (read, write, aio_*, alloc, map, ...), with QEMU 7.2's output formats.
 */
#include <ctype.h>
#include <getopt.h>
#include <signal.h>
#include <time.h>

#include "qemu-io.h"
#include "util/aio.h"
#include "util/cutils.h"

/* Largest request qemu-io issues: INT_MAX rounded down to a sector. */
#define QEMUIO_MAX_BYTES ((int64_t)(INT_MAX & ~(int)(BDRV_SECTOR_SIZE - 1)))
#define MISALIGN_OFFSET 16

bool qemuio_misalign;

static cmdinfo_t *cmdtab;
static int ncmds;
static int aio_inflight;

/* ---- command table and dispatch ---- */

static int compare_cmdname(const void *a, const void *b)
{
    return strcmp(((const cmdinfo_t *)a)->name,
                  ((const cmdinfo_t *)b)->name);
}

void qemuio_add_command(const cmdinfo_t *ci)
{
    cmdtab = g_renew(cmdinfo_t, cmdtab, ncmds + 1);
    cmdtab[ncmds++] = *ci;
    qsort(cmdtab, ncmds, sizeof(*cmdtab), compare_cmdname);
}

int qemuio_command_usage(const cmdinfo_t *ci)
{
    printf("%s %s -- %s\n", ci->name, ci->args ? ci->args : "", ci->oneline);
    return 0;
}

static const cmdinfo_t *find_command(const char *name)
{
    int i;

    for (i = 0; i < ncmds; i++) {
        if (!strcmp(cmdtab[i].name, name) ||
            (cmdtab[i].altname && !strcmp(cmdtab[i].altname, name))) {
            return &cmdtab[i];
        }
    }
    return NULL;
}

static bool check_argc(const cmdinfo_t *ct, int argc, const char *name)
{
    int n = argc - 1;

    if (n >= ct->argmin && (ct->argmax == -1 || n <= ct->argmax)) {
        return true;
    }
    if (ct->argmax == -1) {
        fprintf(stderr,
                "bad argument count %d to %s, expected at least %d arguments\n",
                n, name, ct->argmin);
    } else if (ct->argmin == ct->argmax) {
        fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n",
                n, name, ct->argmin);
    } else {
        fprintf(stderr, "bad argument count %d to %s, expected between %d "
                "and %d arguments\n", n, name, ct->argmin, ct->argmax);
    }
    return false;
}

static int run_command(BlockBackend *blk, const cmdinfo_t *ct, int argc,
                       char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;

    if (!(ct->flags & (CMD_FLAG_GLOBAL | CMD_NOFILE_OK)) && !bs) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    if (!check_argc(ct, argc, argv[0])) {
        return -EINVAL;
    }
    if ((ct->flags & CMD_NEEDS_WRITE) && bs && bdrv_is_read_only(bs)) {
        error_report("Block node is read-only");
        return -EPERM;
    }
    /* glibc: optind = 0 restarts getopt from scratch for each command. */
    optind = 0;
    return ct->cfunc(blk, argc, argv);
}

int qemuio_command(BlockBackend *blk, const char *cmd)
{
    char *input = g_strdup(cmd);
    GPtrArray *words = g_ptr_array_new();
    char *p = input, *tok;
    const cmdinfo_t *ct;
    int ret = 0;

    /* Words are separated by single spaces; empty words are dropped. */
    while ((tok = strsep(&p, " ")) != NULL) {
        if (*tok) {
            g_ptr_array_add(words, tok);
        }
    }
    g_ptr_array_add(words, NULL);

    if (words->len > 1) {
        char **argv = (char **)words->pdata;

        ct = find_command(argv[0]);
        if (ct) {
            ret = run_command(blk, ct, words->len - 1, argv);
        } else {
            fprintf(stderr, "command \"%s\" not found\n", argv[0]);
            ret = -EINVAL;
        }
    }
    g_ptr_array_free(words, true);
    g_free(input);
    return ret;
}

/* ---- number, size and time formatting ---- */

/* A size argument with optional suffix, as int64_t, or -EINVAL/-ERANGE. */
static int64_t cvtnum(const char *s)
{
    uint64_t value;
    int err;

    while (isspace((unsigned char)*s)) {
        s++;
    }
    if (*s == '-') {
        return -EINVAL;
    }
    err = qemu_strtosz(s, NULL, &value);
    if (err < 0) {
        return err;
    }
    if (value > INT64_MAX) {
        return -ERANGE;
    }
    return value;
}

static void print_cvtnum_err(int64_t rc, const char *arg)
{
    switch (rc) {
    case -EINVAL:
        printf("Parsing error: non-numeric argument,"
               " or extraneous/unrecognized suffix -- %s\n", arg);
        break;
    case -ERANGE:
        printf("Parsing error: argument too large -- %s\n", arg);
        break;
    default:
        printf("Parsing error: %s\n", arg);
        break;
    }
}

/*
 * The one parser of offset and length arguments for every command: a
 * size with optional suffix, no sign. On error prints QEMU's message and
 * returns -EINVAL or -ERANGE.
 */
static int parse_offset(const char *arg, int64_t *value)
{
    int64_t v = cvtnum(arg);

    if (v < 0) {
        print_cvtnum_err(v, arg);
        return v;
    }
    *value = v;
    return 0;
}

/*
 * A length; with limit_note non-NULL it is also capped at QEMUIO_MAX_BYTES
 * ("length cannot exceed N<limit_note>, given ARG").
 */
static int parse_length(const char *arg, const char *limit_note,
                        int64_t *value)
{
    int ret = parse_offset(arg, value);

    if (ret < 0) {
        return ret;
    }
    if (limit_note && *value > QEMUIO_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 "%s, given %s\n",
               (uint64_t)QEMUIO_MAX_BYTES, limit_note, arg);
        return -EINVAL;
    }
    return 0;
}

/* argv[0] is the offset, argv[1] the length (see parse_length). */
static int parse_offset_length(char **argv, const char *limit_note,
                               int64_t *offset, int64_t *length)
{
    int ret = parse_offset(argv[0], offset);

    if (ret < 0) {
        return ret;
    }
    return parse_length(argv[1], limit_note, length);
}

/* "%.3f UNIT" with a trailing ".000" dropped; plain bytes use "%f". */
static void cvtstr(double value, char *str, size_t size)
{
    static const struct {
        int shift;
        const char *suffix;
    } units[] = {
        { 60, " EiB" }, { 50, " PiB" }, { 40, " TiB" },
        { 30, " GiB" }, { 20, " MiB" }, { 10, " KiB" },
    };
    const char *suffix = " bytes";
    char *trim;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(units); i++) {
        double unit = (double)(INT64_C(1) << units[i].shift);

        if (value >= unit) {
            suffix = units[i].suffix;
            snprintf(str, size - 4, "%.3f", value / unit);
            break;
        }
    }
    if (i == ARRAY_SIZE(units)) {
        snprintf(str, size - 6, "%f", value);
    }

    trim = strstr(str, ".000");
    if (trim) {
        strcpy(trim, suffix);
    } else {
        strcat(str, suffix);
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

/* value per second over ns nanoseconds (never divides by zero). */
static double tdiv(double value, int64_t ns)
{
    return value / ((double)MAX(ns, 1) / 1e9);
}

/* "00.12 sec" below a second, else (and always with -C) "H:MM:SS.ss". */
static void timestr(int64_t ns, char *ts, size_t size, bool verbose)
{
    unsigned long long sec = ns / 1000000000;
    double frac = (double)(ns % 1000000000) / 1e9;

    if (verbose || sec) {
        snprintf(ts, size, "%u:%02u:%05.2f", (unsigned)(sec / 3600),
                 (unsigned)(sec % 3600 / 60), (double)(sec % 60) + frac);
    } else {
        snprintf(ts, size, "%05.2f sec", frac);
    }
}

static void print_report(const char *op, int64_t ns, int64_t offset,
                         int64_t count, int64_t total, int cnt, bool Cflag)
{
    char s1[64], s2[64], ts[64];

    timestr(ns, ts, sizeof(ts), Cflag);
    if (!Cflag) {
        cvtstr((double)total, s1, sizeof(s1));
        cvtstr(tdiv((double)total, ns), s2, sizeof(s2));
        printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n",
               op, total, count, offset);
        printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
               s1, cnt, ts, s2, tdiv((double)cnt, ns));
    } else {
        /* bytes,ops,time,bytes/sec,ops/sec */
        printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts,
               tdiv((double)total, ns), tdiv((double)cnt, ns));
    }
}

static void dump_buffer(const uint8_t *buf, int64_t offset, int64_t len)
{
    int64_t i;
    int j;

    for (i = 0; i < len; i += 16) {
        printf("%08" PRIx64 ":  ", offset + i);
        for (j = 0; j < 16 && i + j < len; j++) {
            printf("%02x ", buf[i + j]);
        }
        printf(" ");
        for (j = 0; j < 16 && i + j < len; j++) {
            printf("%c", isalnum(buf[i + j]) ? buf[i + j] : '.');
        }
        printf("\n");
    }
}

/* A -P argument: one byte, decimal, octal or hex; -1 (reported) if not. */
static int parse_pattern(const char *arg)
{
    char *end = NULL;
    long pattern;

    errno = 0;
    pattern = strtol(arg, &end, 0);
    if (errno || pattern < 0 || pattern > UCHAR_MAX || *end != '\0') {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return pattern;
}

/* ---- buffers ---- */

static void *qemu_io_alloc(size_t len, int pattern)
{
    size_t extra = qemuio_misalign ? MISALIGN_OFFSET : 0;
    uint8_t *buf = qemu_blockalign_huge(MAX(len + extra, 1));

    memset(buf, pattern, len + extra);
    return buf + extra;
}

static void qemu_io_free(void *p)
{
    if (p) {
        qemu_vfree((uint8_t *)p - (qemuio_misalign ? MISALIGN_OFFSET : 0));
    }
}

/* A buffer of len bytes filled by repeating the contents of file_name. */
static void *qemu_io_alloc_from_file(size_t len, const char *file_name)
{
    uint8_t *buf, *p;
    size_t pattern_len, done;
    FILE *f = fopen(file_name, "r");

    if (!f) {
        perror(file_name);
        return NULL;
    }
    buf = p = qemu_io_alloc(len, 0);
    pattern_len = fread(p, 1, len, f);
    if (ferror(f)) {
        perror(file_name);
        goto fail;
    }
    if (pattern_len == 0) {
        fprintf(stderr, "%s: file is empty\n", file_name);
        goto fail;
    }
    fclose(f);
    for (done = pattern_len; done < len; done += pattern_len) {
        memcpy(p + done, p, MIN(pattern_len, len - done));
    }
    return buf;

fail:
    fclose(f);
    qemu_io_free(buf);
    return NULL;
}

/* True if [off, off+len) of buf is all pattern. */
static bool buffer_matches(const uint8_t *buf, int64_t len, int pattern)
{
    int64_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            return false;
        }
    }
    return true;
}

/* What read, readv and aio_read do with the data once it is in. */
typedef struct ReadCheck {
    bool Cflag, qflag, vflag, Pflag;
    int pattern;
} ReadCheck;

/*
 * The read of count bytes at offset into buf took ns: check that
 * [pattern_offset, +pattern_count) of buf holds the pattern (-P), then
 * unless -q dump buf (-v) and report total bytes read. -EINVAL if the
 * pattern does not match.
 */
static int read_check(const ReadCheck *rc, const uint8_t *buf, int64_t ns,
                      int64_t offset, int64_t count, int64_t total,
                      int64_t pattern_offset, int64_t pattern_count)
{
    int ret = 0;

    if (rc->Pflag && !buffer_matches(buf + pattern_offset, pattern_count,
                                     rc->pattern)) {
        printf("Pattern verification failed at offset %" PRId64 ", %"
               PRId64 " bytes\n", offset + pattern_offset, pattern_count);
        ret = -EINVAL;
    }
    if (rc->qflag) {
        return ret;
    }
    if (rc->vflag) {
        dump_buffer(buf, offset, count);
    }
    print_report("read", ns, offset, count, total, 1, rc->Cflag);
    return ret;
}

/*
 * Build qiov over one buffer from the length arguments of readv/writev/aio_*.
 * Returns the buffer (qemu_io_free) or NULL after printing why.
 */
static void *create_iovec(QEMUIOVector *qiov, char **argv, int nr_iov,
                          int pattern)
{
    int64_t *sizes = g_new0(int64_t, nr_iov);
    int64_t count = 0;
    uint8_t *buf = NULL, *p;
    int i;

    for (i = 0; i < nr_iov; i++) {
        int64_t len = 0;

        if (parse_length(argv[i], NULL, &len) < 0) {
            goto out;
        }
        if (len > QEMUIO_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %" PRIu64 "\n",
                   argv[i], (uint64_t)QEMUIO_MAX_BYTES);
            goto out;
        }
        if (count > QEMUIO_MAX_BYTES - len) {
            printf("The total number of bytes exceed the maximum size %"
                   PRIu64 "\n", (uint64_t)QEMUIO_MAX_BYTES);
            goto out;
        }
        sizes[i] = len;
        count += len;
    }

    qemu_iovec_init(qiov, nr_iov);
    buf = p = qemu_io_alloc(count, pattern);
    for (i = 0; i < nr_iov; i++) {
        qemu_iovec_add(qiov, p, sizes[i]);
        p += sizes[i];
    }
out:
    g_free(sizes);
    return buf;
}

/*
 * The arguments of readv, writev and aio_read from optind on: the offset,
 * then the lengths of the buffers (create_iovec, filled with pattern).
 * Returns the buffer, or NULL after printing ct's usage or the error.
 */
static void *parse_offset_iovec(const cmdinfo_t *ct, int argc, char **argv,
                                int pattern, int64_t *offset,
                                QEMUIOVector *qiov)
{
    if (optind > argc - 2) {
        qemuio_command_usage(ct);
        return NULL;
    }
    if (parse_offset(argv[optind], offset) < 0) {
        return NULL;
    }
    return create_iovec(qiov, &argv[optind + 1], argc - optind - 1, pattern);
}

/* ---- read ---- */

static void read_help(void)
{
    printf(
"\n"
" reads a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
"\n"
" Reads a segment of the currently open file, optionally dumping it to the\n"
" standard output stream (with -v option) for subsequent inspection.\n"
" -b, -- read from the VM state rather than the virtual disk\n"
" -C, -- report statistics in a machine parsable format\n"
" -l, -- length for pattern verification (only with -P)\n"
" -p, -- ignored for backwards compatibility\n"
" -P, -- use a pattern to verify read data\n"
" -q, -- quiet mode, do not show I/O statistics\n"
" -s, -- start offset for pattern verification (only with -P)\n"
" -v, -- dump buffer to standard output\n"
"\n");
}

static int read_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t read_cmd = {
    .name = "read", .altname = "r", .cfunc = read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-abCqv] [-P pattern [-s off] [-l len]] off len",
    .oneline = "reads a number of bytes at a specified offset",
    .help = read_help,
};

/* Reject -b requests that are not in whole sectors (as QEMU does). */
static bool check_sector_aligned(int64_t offset, int64_t count)
{
    if (!QEMU_IS_ALIGNED(offset, BDRV_SECTOR_SIZE)) {
        printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
               offset);
        return false;
    }
    if (!QEMU_IS_ALIGNED(count, BDRV_SECTOR_SIZE)) {
        printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
               count);
        return false;
    }
    return true;
}

static int read_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    ReadCheck rc = { 0 };
    bool sflag = false, lflag = false, bflag = false;
    int c;
    int64_t offset, count, total = 0;
    int64_t pattern_offset = 0, pattern_count = 0;
    int64_t t1, t2;
    uint8_t *buf;
    int ret;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'C':
            rc.Cflag = true;
            break;
        case 'l':
            lflag = true;
            if (parse_length(optarg, NULL, &pattern_count) < 0) {
                return -EINVAL;
            }
            break;
        case 'p':
            /* ignored for backwards compatibility */
            break;
        case 'P':
            rc.Pflag = true;
            rc.pattern = parse_pattern(optarg);
            if (rc.pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            rc.qflag = true;
            break;
        case 's':
            sflag = true;
            if (parse_length(optarg, NULL, &pattern_offset) < 0) {
                return -EINVAL;
            }
            break;
        case 'v':
            rc.vflag = true;
            break;
        default:
            qemuio_command_usage(&read_cmd);
            return -EINVAL;
        }
    }

    if (optind != argc - 2) {
        qemuio_command_usage(&read_cmd);
        return -EINVAL;
    }

    ret = parse_offset_length(&argv[optind], "", &offset, &count);
    if (ret < 0) {
        return ret;
    }

    if (!rc.Pflag && (lflag || sflag)) {
        qemuio_command_usage(&read_cmd);
        return -EINVAL;
    }
    if (!lflag) {
        pattern_count = count - pattern_offset;
    }
    if (pattern_count < 0 || pattern_offset > count ||
        pattern_count > count - pattern_offset) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag && !check_sector_aligned(offset, count)) {
        return -EINVAL;
    }

    buf = qemu_io_alloc(count, 0xab);
    t1 = now_ns();
    if (bflag) {
        ret = bdrv_load_vmstate(bs, buf, offset, count);
        total = ret;
    } else {
        ret = blk_pread(blk, offset, count, buf, 0);
        total = count;
    }
    t2 = now_ns();

    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
    } else {
        ret = read_check(&rc, buf, t2 - t1, offset, count, total,
                         pattern_offset, pattern_count);
    }
    qemu_io_free(buf);
    return ret;
}

/* ---- readv ---- */

static void readv_help(void)
{
    printf(
"\n"
" reads a range of bytes from the given offset into multiple buffers\n"
"\n"
" Example:\n"
" 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
"\n"
" Reads a segment of the currently open file, optionally dumping it to the\n"
" standard output stream (with -v option) for subsequent inspection.\n"
" Uses multiple iovec buffers if more than one byte range is specified.\n"
" -C, -- report statistics in a machine parsable format\n"
" -P, -- use a pattern to verify read data\n"
" -v, -- dump buffer to standard output\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int readv_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t readv_cmd = {
    .name = "readv", .cfunc = readv_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Cqv] [-P pattern] off len [len..]",
    .oneline = "reads a number of bytes at a specified offset",
    .help = readv_help,
};

static int readv_f(BlockBackend *blk, int argc, char **argv)
{
    ReadCheck rc = { 0 };
    int c, ret;
    int64_t offset, t1, t2;
    QEMUIOVector qiov;
    uint8_t *buf;

    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        switch (c) {
        case 'C':
            rc.Cflag = true;
            break;
        case 'P':
            rc.Pflag = true;
            rc.pattern = parse_pattern(optarg);
            if (rc.pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            rc.qflag = true;
            break;
        case 'v':
            rc.vflag = true;
            break;
        default:
            qemuio_command_usage(&readv_cmd);
            return -EINVAL;
        }
    }

    buf = parse_offset_iovec(&readv_cmd, argc, argv, 0xab, &offset, &qiov);
    if (!buf) {
        return -EINVAL;
    }

    t1 = now_ns();
    ret = blk_preadv(blk, offset, qiov.size, &qiov, 0);
    t2 = now_ns();

    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
    } else {
        ret = read_check(&rc, buf, t2 - t1, offset, qiov.size, qiov.size, 0,
                         qiov.size);
    }
    qemu_iovec_destroy(&qiov);
    qemu_io_free(buf);
    return ret;
}

/* ---- write ---- */

static void write_help(void)
{
    printf(
"\n"
" writes a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
"\n"
" Writes into a segment of the currently open file, using a buffer\n"
" filled with a set pattern (0xcdcdcdcd).\n"
" -b, -- write to the VM state rather than the virtual disk\n"
" -c, -- write compressed data with blk_write_compressed\n"
" -f, -- use Force Unit Access semantics\n"
" -n, -- with -z, don't allow slow fallback\n"
" -p, -- ignored for backwards compatibility\n"
" -P, -- use different pattern to fill file\n"
" -s, -- use a pattern file to fill the write buffer\n"
" -C, -- report statistics in a machine parsable format\n"
" -q, -- quiet mode, do not show I/O statistics\n"
" -u, -- with -z, allow unmapping\n"
" -z, -- write zeroes using blk_co_pwrite_zeroes\n"
"\n");
}

static int write_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t write_cmd = {
    .name = "write", .altname = "w", .cfunc = write_f,
    .argmin = 2, .argmax = -1, .flags = CMD_NEEDS_WRITE,
    .args = "[-bcCfnquz] [-P pattern | -s source_file] off len",
    .oneline = "writes a number of bytes at a specified offset",
    .help = write_help,
};

static int write_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    bool Cflag = false, qflag = false, bflag = false;
    bool Pflag = false, zflag = false, cflag = false, sflag = false;
    BdrvRequestFlags flags = 0;
    const char *file_name = NULL;
    int c, ret, pattern = 0xcd;
    int64_t offset, count, total = 0, t1, t2;
    uint8_t *buf = NULL;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'c':
            cflag = true;
            break;
        case 'C':
            Cflag = true;
            break;
        case 'f':
            flags |= BDRV_REQ_FUA;
            break;
        case 'n':
            flags |= BDRV_REQ_NO_FALLBACK;
            break;
        case 'p':
            /* ignored for backwards compatibility */
            break;
        case 'P':
            Pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            file_name = optarg;
            break;
        case 'u':
            flags |= BDRV_REQ_MAY_UNMAP;
            break;
        case 'z':
            zflag = true;
            break;
        default:
            qemuio_command_usage(&write_cmd);
            return -EINVAL;
        }
    }

    if (optind != argc - 2) {
        qemuio_command_usage(&write_cmd);
        return -EINVAL;
    }
    if (bflag && zflag) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & BDRV_REQ_FUA) && (bflag || cflag)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & BDRV_REQ_NO_FALLBACK) && !zflag) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((flags & BDRV_REQ_MAY_UNMAP) && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if ((int)zflag + (int)Pflag + (int)sflag > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same "
               "time\n");
        return -EINVAL;
    }

    ret = parse_offset_length(&argv[optind],
                              (flags & BDRV_REQ_NO_FALLBACK) ? NULL
                              : " without -n", &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if ((bflag || cflag) && !check_sector_aligned(offset, count)) {
        return -EINVAL;
    }

    if (!zflag) {
        if (sflag) {
            buf = qemu_io_alloc_from_file(count, file_name);
            if (!buf) {
                return -EINVAL;
            }
        } else {
            buf = qemu_io_alloc(count, pattern);
        }
    }

    t1 = now_ns();
    if (bflag) {
        ret = bdrv_save_vmstate(bs, buf, offset, count);
        total = ret;
        /* As QEMU's blk_save_vmstate: writethrough flushes it. */
        if (ret >= 0 && !blk_enable_write_cache(blk)) {
            int fret = blk_flush(blk);
            ret = fret < 0 ? fret : ret;
        }
    } else if (zflag) {
        ret = blk_pwrite_zeroes(blk, offset, count, flags);
        total = count;
    } else if (cflag) {
        ret = blk_pwrite(blk, offset, count, buf,
                          flags | BDRV_REQ_WRITE_COMPRESSED);
        total = count;
    } else {
        ret = blk_pwrite(blk, offset, count, buf, flags);
        total = count;
    }
    t2 = now_ns();

    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (!qflag) {
        print_report("wrote", t2 - t1, offset, count, total, 1, Cflag);
    }
out:
    qemu_io_free(buf);
    return ret;
}

/* ---- writev ---- */

static void writev_help(void)
{
    printf(
"\n"
" writes a range of bytes from the given offset source from multiple buffers\n"
"\n"
" Example:\n"
" 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
"\n"
" Writes into a segment of the currently open file, using a buffer\n"
" filled with a set pattern (0xcdcdcdcd).\n"
" -P, -- use different pattern to fill file\n"
" -C, -- report statistics in a machine parsable format\n"
" -f, -- use Force Unit Access semantics\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int writev_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t writev_cmd = {
    .name = "writev", .cfunc = writev_f,
    .argmin = 2, .argmax = -1, .flags = CMD_NEEDS_WRITE,
    .args = "[-Cfq] [-P pattern] off len [len..]",
    .oneline = "writes a number of bytes at a specified offset",
    .help = writev_help,
};

static int writev_f(BlockBackend *blk, int argc, char **argv)
{
    bool Cflag = false, qflag = false;
    BdrvRequestFlags flags = 0;
    int c, ret, pattern = 0xcd;
    int64_t offset, t1, t2;
    QEMUIOVector qiov;
    uint8_t *buf;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'f':
            flags |= BDRV_REQ_FUA;
            break;
        case 'q':
            qflag = true;
            break;
        case 'P':
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        default:
            qemuio_command_usage(&writev_cmd);
            return -EINVAL;
        }
    }

    buf = parse_offset_iovec(&writev_cmd, argc, argv, pattern, &offset,
                             &qiov);
    if (!buf) {
        return -EINVAL;
    }

    t1 = now_ns();
    ret = blk_pwritev(blk, offset, qiov.size, &qiov, flags);
    t2 = now_ns();

    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (!qflag) {
        print_report("wrote", t2 - t1, offset, qiov.size, qiov.size, 1,
                     Cflag);
    }
out:
    qemu_iovec_destroy(&qiov);
    qemu_io_free(buf);
    return ret;
}

/* ---- aio_read / aio_write / aio_flush ---- */

typedef struct AioCtx {
    QEMUIOVector qiov;
    int64_t offset;
    int64_t bytes;
    uint8_t *buf;
    ReadCheck rc;               /* -q and -C for writes too */
    bool zflag;
    int64_t t1;
} AioCtx;

static void aio_ctx_free(AioCtx *ctx)
{
    if (!ctx->zflag) {
        qemu_iovec_destroy(&ctx->qiov);
    }
    qemu_io_free(ctx->buf);
    g_free(ctx);
    aio_inflight--;
}

static void aio_write_done(void *opaque, int ret)
{
    AioCtx *ctx = opaque;
    int64_t t2 = now_ns();

    if (ret < 0) {
        printf("aio_write failed: %s\n", strerror(-ret));
    } else if (!ctx->rc.qflag) {
        print_report("wrote", t2 - ctx->t1, ctx->offset, ctx->bytes,
                     ctx->bytes, 1, ctx->rc.Cflag);
    }
    aio_ctx_free(ctx);
}

static void aio_read_done(void *opaque, int ret)
{
    AioCtx *ctx = opaque;
    int64_t t2 = now_ns();

    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
    } else {
        read_check(&ctx->rc, ctx->buf, t2 - ctx->t1, ctx->offset, ctx->bytes,
                   ctx->bytes, 0, ctx->bytes);
    }
    aio_ctx_free(ctx);
}

void qemuio_wait_aio(void)
{
    AIO_WAIT_WHILE(aio_inflight > 0);
}

static void aio_read_help(void)
{
    printf(
"\n"
" asynchronously reads a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
"\n"
" Reads a segment of the currently open file, optionally dumping it to the\n"
" standard output stream (with -v option) for subsequent inspection.\n"
" The read is performed asynchronously and the aio_flush command must be\n"
" used to ensure all outstanding aio requests have been completed.\n"
" Note that due to its asynchronous nature, this command will be\n"
" considered successful once the request is submitted, independently\n"
" of potential I/O errors or pattern mismatches.\n"
" -C, -- report statistics in a machine parsable format\n"
" -P, -- use a pattern to verify read data\n"
" -i, -- treat request as invalid, for exercising stats\n"
" -v, -- dump buffer to standard output\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int aio_read_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t aio_read_cmd = {
    .name = "aio_read", .cfunc = aio_read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Ciqv] [-P pattern] off len [len..]",
    .oneline = "asynchronously reads a number of bytes",
    .help = aio_read_help,
};

static int aio_read_f(BlockBackend *blk, int argc, char **argv)
{
    AioCtx *ctx = g_new0(AioCtx, 1);
    int c;

    while ((c = getopt(argc, argv, "CP:iqv")) != -1) {
        switch (c) {
        case 'C':
            ctx->rc.Cflag = true;
            break;
        case 'P':
            ctx->rc.Pflag = true;
            ctx->rc.pattern = parse_pattern(optarg);
            if (ctx->rc.pattern < 0) {
                g_free(ctx);
                return -EINVAL;
            }
            break;
        case 'i':
            /* Only accounted in QEMU; nothing is submitted. */
            printf("injecting invalid read request\n");
            g_free(ctx);
            return 0;
        case 'q':
            ctx->rc.qflag = true;
            break;
        case 'v':
            ctx->rc.vflag = true;
            break;
        default:
            g_free(ctx);
            qemuio_command_usage(&aio_read_cmd);
            return -EINVAL;
        }
    }

    ctx->buf = parse_offset_iovec(&aio_read_cmd, argc, argv, 0xab,
                                  &ctx->offset, &ctx->qiov);
    if (!ctx->buf) {
        g_free(ctx);
        return -EINVAL;
    }
    ctx->bytes = ctx->qiov.size;

    aio_inflight++;
    ctx->t1 = now_ns();
    blk_aio_preadv(blk, ctx->offset, &ctx->qiov, 0, aio_read_done, ctx);
    return 0;
}

static void aio_write_help(void)
{
    printf(
"\n"
" asynchronously writes a range of bytes from the given offset source\n"
" from multiple buffers\n"
"\n"
" Example:\n"
" 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
"\n"
" Writes into a segment of the currently open file, using a buffer\n"
" filled with a set pattern (0xcdcdcdcd).\n"
" The write is performed asynchronously and the aio_flush command must be\n"
" used to ensure all outstanding aio requests have been completed.\n"
" Note that due to its asynchronous nature, this command will be\n"
" considered successful once the request is submitted, independently\n"
" of potential I/O errors or pattern mismatches.\n"
" -P, -- use different pattern to fill file\n"
" -C, -- report statistics in a machine parsable format\n"
" -f, -- use Force Unit Access semantics\n"
" -i, -- treat request as invalid, for exercising stats\n"
" -q, -- quiet mode, do not show I/O statistics\n"
" -u, -- with -z, allow unmapping\n"
" -z, -- write zeroes using blk_aio_pwrite_zeroes\n"
"\n");
}

static int aio_write_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t aio_write_cmd = {
    .name = "aio_write", .cfunc = aio_write_f,
    .argmin = 2, .argmax = -1, .flags = CMD_NEEDS_WRITE,
    .args = "[-Cfiquz] [-P pattern] off len [len..]",
    .oneline = "asynchronously writes a number of bytes",
    .help = aio_write_help,
};

static int aio_write_f(BlockBackend *blk, int argc, char **argv)
{
    AioCtx *ctx = g_new0(AioCtx, 1);
    BdrvRequestFlags flags = 0;
    int c, pattern = 0xcd;

    while ((c = getopt(argc, argv, "CfiqP:uz")) != -1) {
        switch (c) {
        case 'C':
            ctx->rc.Cflag = true;
            break;
        case 'f':
            flags |= BDRV_REQ_FUA;
            break;
        case 'q':
            ctx->rc.qflag = true;
            break;
        case 'u':
            flags |= BDRV_REQ_MAY_UNMAP;
            break;
        case 'P':
            /* QEMU 7.2 does not count -P here, so -z -P writes zeroes. */
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                g_free(ctx);
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid write request\n");
            g_free(ctx);
            return 0;
        case 'z':
            ctx->zflag = true;
            break;
        default:
            g_free(ctx);
            qemuio_command_usage(&aio_write_cmd);
            return -EINVAL;
        }
    }

    if (optind > argc - 2) {
        g_free(ctx);
        qemuio_command_usage(&aio_write_cmd);
        return -EINVAL;
    }
    if (ctx->zflag && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        g_free(ctx);
        return -EINVAL;
    }
    if ((flags & BDRV_REQ_MAY_UNMAP) && !ctx->zflag) {
        printf("-u requires -z to be specified\n");
        g_free(ctx);
        return -EINVAL;
    }
    if (ctx->zflag && ctx->rc.Pflag) {
        printf("-z and -P cannot be specified at the same time\n");
        g_free(ctx);
        return -EINVAL;
    }

    if (parse_offset(argv[optind], &ctx->offset) < 0) {
        g_free(ctx);
        return -EINVAL;
    }
    optind++;

    if (ctx->zflag) {
        int64_t count;

        if (parse_length(argv[optind], NULL, &count) < 0) {
            g_free(ctx);
            return -EINVAL;
        }
        ctx->bytes = count;
        aio_inflight++;
        ctx->t1 = now_ns();
        blk_aio_pwrite_zeroes(blk, ctx->offset, count, flags,
                               aio_write_done, ctx);
    } else {
        ctx->buf = create_iovec(&ctx->qiov, &argv[optind], argc - optind,
                                pattern);
        if (!ctx->buf) {
            g_free(ctx);
            return -EINVAL;
        }
        ctx->bytes = ctx->qiov.size;
        aio_inflight++;
        ctx->t1 = now_ns();
        blk_aio_pwritev(blk, ctx->offset, &ctx->qiov, flags,
                         aio_write_done, ctx);
    }
    return 0;
}

/* Waits for the aio requests only; like QEMU, it does not flush the disk. */
static int aio_flush_f(BlockBackend *blk, int argc, char **argv)
{
    qemuio_wait_aio();
    blk_drain(blk);
    return 0;
}

static const cmdinfo_t aio_flush_cmd = {
    .name = "aio_flush", .cfunc = aio_flush_f,
    .oneline = "completes all outstanding aio requests",
};

/* ---- flush, truncate, length, info, discard ---- */

static int flush_f(BlockBackend *blk, int argc, char **argv)
{
    return blk_flush(blk);
}

static const cmdinfo_t flush_cmd = {
    .name = "flush", .altname = "f", .cfunc = flush_f,
    .oneline = "flush all in-core file state to disk",
};

static int truncate_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t truncate_cmd = {
    .name = "truncate", .altname = "t", .cfunc = truncate_f,
    .argmin = 1, .argmax = 3, .flags = CMD_NEEDS_WRITE,
    .args = "[-m prealloc_mode] off",
    .oneline = "truncates the current file at the given offset",
};

static int truncate_f(BlockBackend *blk, int argc, char **argv)
{
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    Error *local_err = NULL;
    int64_t offset;
    int c, ret;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            if (qemu_prealloc_parse(optarg, &prealloc) < 0) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return -EINVAL;
            }
            break;
        default:
            qemuio_command_usage(&truncate_cmd);
            return -EINVAL;
        }
    }

    if (optind != argc - 1) {
        qemuio_command_usage(&truncate_cmd);
        return -EINVAL;
    }

    ret = parse_offset(argv[optind], &offset);
    if (ret < 0) {
        return ret;
    }

    /* The resize permission only for as long as the truncate runs (the
     * lock others see), as the image was not opened for resizing. */
    uint64_t perm, shared;
    blk_get_perm(blk, &perm, &shared);
    if (!(perm & BLK_PERM_RESIZE) &&
        blk_set_perm(blk, perm | BLK_PERM_RESIZE, shared, &local_err) < 0) {
        error_report_err(local_err);
        return -EPERM;
    }
    /* A debugging tool: be strict and ask for the exact size. */
    ret = blk_truncate(blk, offset, true, prealloc, &local_err);
    if (!(perm & BLK_PERM_RESIZE)) {
        blk_set_perm(blk, perm, shared, NULL);
    }
    if (ret < 0) {
        if (local_err) {
            error_report_err(local_err);
        } else {
            error_report("Failed to truncate: %s", strerror(-ret));
        }
        return ret;
    }
    return 0;
}

static int length_f(BlockBackend *blk, int argc, char **argv)
{
    int64_t size = blk_getlength(blk);
    char s1[64];

    if (size < 0) {
        printf("getlength: %s\n", strerror(-size));
        return size;
    }
    cvtstr(size, s1, sizeof(s1));
    printf("%s\n", s1);
    return 0;
}

static const cmdinfo_t length_cmd = {
    .name = "length", .altname = "l", .cfunc = length_f,
    .oneline = "gets the length of the current file",
};

/* Format-specific items as QEMU prints them (its member order, nesting). */
static void dump_specific_info(const ImageInfoSpecific *info)
{
    JsonValue *data = image_info_specific_json(info);

    printf("Format specific information:\n");
    json_dump_human(data, 1);
    json_free(data);
}

static int info_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    BlockDriverInfo bdi;
    ImageInfoSpecific *spec;
    Error *local_err = NULL;
    const char *fmt = bdrv_get_format_name(bs);
    char s1[64], s2[64];
    int ret;

    if (fmt) {
        printf("format name: %s\n", fmt);
    }
    /* A protocol node names its protocol too, under the same label
     * (QEMU's qemu-io prints both). */
    if (bs && bdrv_get_protocol_name(bs)) {
        printf("format name: %s\n", bdrv_get_protocol_name(bs));
    }

    memset(&bdi, 0, sizeof(bdi));
    ret = bdrv_get_info(bs, &bdi);
    if (ret) {
        return ret;
    }
    cvtstr(bdi.cluster_size, s1, sizeof(s1));
    cvtstr(bdi.vm_state_offset, s2, sizeof(s2));
    printf("cluster size: %s\n", s1);
    printf("vm state offset: %s\n", s2);

    spec = bdrv_get_specific_info(bs, &local_err);
    if (local_err) {
        error_report_err(local_err);
        return -EIO;
    }
    if (spec) {
        dump_specific_info(spec);
        image_info_specific_free(spec);
    }
    return 0;
}

static const cmdinfo_t info_cmd = {
    .name = "info", .altname = "i", .cfunc = info_f,
    .oneline = "prints information about the current file",
};

static void discard_help(void)
{
    printf(
"\n"
" discards a range of bytes from the given offset\n"
"\n"
" Example:\n"
" 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
"\n"
" Discards a segment of the currently open file.\n"
" -C, -- report statistics in a machine parsable format\n"
" -q, -- quiet mode, do not show I/O statistics\n"
"\n");
}

static int discard_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t discard_cmd = {
    .name = "discard", .altname = "d", .cfunc = discard_f,
    .argmin = 2, .argmax = -1, .flags = CMD_NEEDS_WRITE,
    .args = "[-Cq] off len",
    .oneline = "discards a number of bytes at a specified offset",
    .help = discard_help,
};

static int discard_f(BlockBackend *blk, int argc, char **argv)
{
    bool Cflag = false, qflag = false;
    int64_t offset, bytes, t1, t2;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'q':
            qflag = true;
            break;
        default:
            qemuio_command_usage(&discard_cmd);
            return -EINVAL;
        }
    }

    if (optind != argc - 2) {
        qemuio_command_usage(&discard_cmd);
        return -EINVAL;
    }

    ret = parse_offset_length(&argv[optind], "", &offset, &bytes);
    if (ret < 0) {
        return ret;
    }

    t1 = now_ns();
    ret = blk_pdiscard(blk, offset, bytes);
    t2 = now_ns();

    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        print_report("discard", t2 - t1, offset, bytes, bytes, 1, Cflag);
    }
    return 0;
}

/* ---- alloc, map ---- */

static int alloc_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    int64_t offset = 0, start, count, remaining, num, sum_alloc = 0;
    char s1[64];
    int ret;

    ret = parse_offset(argv[1], &offset);
    if (ret < 0) {
        return ret;
    }
    start = offset;

    if (argc == 3) {
        ret = parse_length(argv[2], NULL, &count);
        if (ret < 0) {
            return ret;
        }
    } else {
        count = BDRV_SECTOR_SIZE;
    }

    remaining = count;
    while (remaining) {
        ret = bdrv_is_allocated(bs, offset, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) {
            sum_alloc += num;
        }
        if (num == 0) {
            /* End of image: report only what exists. */
            count -= remaining;
            remaining = 0;
        }
    }

    cvtstr(start, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n",
           sum_alloc, count, s1);
    return 0;
}

static const cmdinfo_t alloc_cmd = {
    .name = "alloc", .altname = "a", .cfunc = alloc_f,
    .argmin = 1, .argmax = 2,
    .args = "offset [count]",
    .oneline = "checks if offset is allocated in the file",
};

/* Allocation status of the longest run starting at offset with one answer. */
static int map_is_allocated(BlockDriverState *bs, int64_t offset,
                            int64_t bytes, int64_t *pnum)
{
    int64_t num;
    int ret, firstret;

    ret = bdrv_is_allocated(bs, offset, MIN(bytes, QEMUIO_MAX_BYTES), &num);
    if (ret < 0) {
        return ret;
    }
    firstret = ret;
    *pnum = num;

    while (bytes > 0 && ret == firstret && num) {
        offset += num;
        bytes -= num;
        if (bytes <= 0) {
            break;
        }
        ret = bdrv_is_allocated(bs, offset, MIN(bytes, QEMUIO_MAX_BYTES),
                                &num);
        if (ret == firstret && num) {
            *pnum += num;
        } else {
            break;
        }
    }
    return firstret;
}

static int map_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    int64_t offset = 0, bytes, num;
    char s1[64], s2[64];
    int ret;

    bytes = blk_getlength(blk);
    if (bytes < 0) {
        error_report("Failed to query image length: %s", strerror(-bytes));
        return bytes;
    }

    while (bytes) {
        ret = map_is_allocated(bs, offset, bytes, &num);
        if (ret < 0) {
            error_report("Failed to get allocation status: %s",
                         strerror(-ret));
            return ret;
        } else if (!num) {
            error_report("Unexpected end of image");
            return -EIO;
        }

        cvtstr(num, s1, sizeof(s1));
        cvtstr(offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
               s1, num, ret ? "    allocated" : "not allocated", s2, offset);
        offset += num;
        bytes -= num;
    }
    return 0;
}

static const cmdinfo_t map_cmd = {
    .name = "map", .argmin = 0, .argmax = 0, .cfunc = map_f,
    .args = "",
    .oneline = "prints the allocated areas of a file",
};

/* ---- sleep, sigraise, abort, help ---- */

static void sleep_cb(void *opaque)
{
    *(bool *)opaque = true;
}

static int sleep_f(BlockBackend *blk, int argc, char **argv)
{
    AioContext *ctx = qemu_get_aio_context();
    QEMUTimer *timer;
    bool expired = false;
    char *end;
    long ms;

    errno = 0;
    ms = strtol(argv[1], &end, 0);
    if (errno || ms < 0 || *end != '\0' || end == argv[1]) {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }

    /* Poll while sleeping so that aio requests complete meanwhile. */
    timer = aio_timer_new(ctx, sleep_cb, &expired);
    timer_mod_ns(timer, qemu_clock_get_ns() + (int64_t)ms * 1000000);
    while (!expired) {
        aio_poll(ctx, true);
    }
    timer_free(timer);
    return 0;
}

/* ---- blkdebug breakpoints ---- */

static int break_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    int ret = bdrv_debug_breakpoint(bs, argv[1], argv[2]);
    if (ret < 0) {
        printf("Could not set breakpoint: %s\n", strerror(-ret));
    }
    return ret;
}

static const cmdinfo_t break_cmd = {
    .name = "break", .argmin = 2, .argmax = 2, .cfunc = break_f,
    .args = "event tag",
    .oneline = "sets a breakpoint on event and tags the stopped request as tag",
};

static int remove_break_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    int ret = bdrv_debug_remove_breakpoint(bs, argv[1]);
    if (ret < 0) {
        printf("Could not remove breakpoint %s: %s\n", argv[1],
               strerror(-ret));
    }
    return ret;
}

static const cmdinfo_t remove_break_cmd = {
    .name = "remove_break", .argmin = 1, .argmax = 1, .cfunc = remove_break_f,
    .args = "tag",
    .oneline = "remove a breakpoint by tag",
};

static int resume_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    int ret = bdrv_debug_resume(bs, argv[1]);
    if (ret < 0) {
        printf("Could not resume request: %s\n", strerror(-ret));
    }
    return ret;
}

static const cmdinfo_t resume_cmd = {
    .name = "resume", .argmin = 1, .argmax = 1, .cfunc = resume_f,
    .args = "tag",
    .oneline = "resumes the request tagged as tag",
};

/* Poll until a request is suspended under tag (aio requests progress). */
static int wait_break_f(BlockBackend *blk, int argc, char **argv)
{
    BlockDriverState *bs = blk ? blk_bs(blk) : NULL;
    while (!bdrv_debug_is_suspended(bs, argv[1])) {
        aio_poll(qemu_get_aio_context(), true);
    }
    return 0;
}

static const cmdinfo_t wait_break_cmd = {
    .name = "wait_break", .argmin = 1, .argmax = 1, .cfunc = wait_break_f,
    .args = "tag",
    .oneline = "waits for the suspension of a request",
};

static const cmdinfo_t sleep_cmd = {
    .name = "sleep", .argmin = 1, .argmax = 1, .cfunc = sleep_f,
    .flags = CMD_NOFILE_OK,
    .oneline = "waits for the given value in milliseconds",
};

static void sigraise_help(void)
{
    printf(
"\n"
" raises the given signal\n"
"\n"
" Example:\n"
" 'sigraise %i' - raises SIGTERM\n"
"\n"
" Invokes raise(signal), where \"signal\" is the mandatory integer argument\n"
" given to sigraise.\n"
"\n", SIGTERM);
}

static int sigraise_f(BlockBackend *blk, int argc, char **argv)
{
    int64_t sig;

    if (parse_offset(argv[1], &sig) < 0) {
        return -EINVAL;
    } else if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n",
               argv[1]);
        return -EINVAL;
    }

    /* Let the output so far reach its destination before we may die. */
    fflush(stdout);
    fflush(stderr);
    raise(sig);
    return 0;
}

static const cmdinfo_t sigraise_cmd = {
    .name = "sigraise", .argmin = 1, .argmax = 1, .cfunc = sigraise_f,
    .flags = CMD_NOFILE_OK,
    .args = "signal",
    .oneline = "raises a signal",
    .help = sigraise_help,
};

static int abort_f(BlockBackend *blk, int argc, char **argv)
{
    abort();
}

static const cmdinfo_t abort_cmd = {
    .name = "abort", .cfunc = abort_f, .flags = CMD_NOFILE_OK,
    .oneline = "simulate a program crash using abort(3)",
};

static void help_oneline(const char *name, const cmdinfo_t *ct)
{
    printf("%s ", name);
    if (ct->args) {
        printf("%s ", ct->args);
    }
    printf("-- %s\n", ct->oneline);
}

static int help_f(BlockBackend *blk, int argc, char **argv)
{
    const cmdinfo_t *ct;
    int i;

    if (argc == 1) {
        for (i = 0; i < ncmds; i++) {
            help_oneline(cmdtab[i].name, &cmdtab[i]);
        }
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }

    ct = find_command(argv[1]);
    if (!ct) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], ct);
    if (ct->help) {
        ct->help();
    }
    return 0;
}

static const cmdinfo_t help_cmd = {
    .name = "help", .altname = "?", .cfunc = help_f,
    .argmin = 0, .argmax = 1, .flags = CMD_FLAG_GLOBAL,
    .args = "[command]",
    .oneline = "help for one or all commands",
};

static void __attribute__((constructor)) init_qemuio_commands(void)
{
    qemuio_add_command(&help_cmd);
    qemuio_add_command(&read_cmd);
    qemuio_add_command(&readv_cmd);
    qemuio_add_command(&write_cmd);
    qemuio_add_command(&writev_cmd);
    qemuio_add_command(&aio_read_cmd);
    qemuio_add_command(&aio_write_cmd);
    qemuio_add_command(&aio_flush_cmd);
    qemuio_add_command(&flush_cmd);
    qemuio_add_command(&truncate_cmd);
    qemuio_add_command(&length_cmd);
    qemuio_add_command(&info_cmd);
    qemuio_add_command(&discard_cmd);
    qemuio_add_command(&alloc_cmd);
    qemuio_add_command(&map_cmd);
    qemuio_add_command(&sleep_cmd);
    qemuio_add_command(&break_cmd);
    qemuio_add_command(&remove_break_cmd);
    qemuio_add_command(&resume_cmd);
    qemuio_add_command(&wait_break_cmd);
    qemuio_add_command(&sigraise_cmd);
    qemuio_add_command(&abort_cmd);
}
