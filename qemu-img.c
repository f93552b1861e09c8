/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qemu-img: create, inspect, check, convert and modify disk images through
 * the public block-layer API, with QEMU 7.2's command lines, output and exit
 * codes.
 */
#include "block-backend.h"
#include "block/job.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/cutils.h"
#include "util/json-writer.h"
#include "util/secret.h"
#include "util/object.h"

#include <getopt.h>
#include <sys/time.h>

#define QEMU_IMG_VERSION "qemu-img version 0.1.0\n"
#define IO_BUF_SIZE (2 * MiB)
#define BDRV_DEFAULT_CACHE "writeback"
#define MAX_COROUTINES 16
#define MAX_BUF_SECTORS 32768
#define REQUEST_MAX_BYTES (1 * GiB)

enum {
    OPTION_OUTPUT = 256,
    OPTION_BACKING_CHAIN,
    OPTION_OBJECT,
    OPTION_IMAGE_OPTS,
    OPTION_PATTERN,
    OPTION_FLUSH_INTERVAL,
    OPTION_NO_DRAIN,
    OPTION_SHRINK,
    OPTION_PREALLOCATION,
    OPTION_START_OFFSET,
    OPTION_MAX_LENGTH,
    OPTION_FORCE,
    OPTION_TARGET_IS_ZERO,
    OPTION_SALVAGE,
    OPTION_TARGET_IMAGE_OPTS,
    OPTION_BITMAPS,
    OPTION_SIZE,
    OPTION_ALLOW_HEADER_PROTOCOLS,
    OPTION_BM_ADD,
    OPTION_BM_REMOVE,
    OPTION_BM_CLEAR,
    OPTION_BM_ENABLE,
    OPTION_BM_DISABLE,
    OPTION_BM_MERGE,
    OPTION_SKIP_BROKEN,
};

typedef enum OutputFormat {
    OFORMAT_JSON,
    OFORMAT_HUMAN,
} OutputFormat;

/* ------------------------------------------------------------------ */
/* Messages                                                           */

static void G_GNUC_PRINTF(1, 2) QEMU_NORETURN error_exit(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", error_get_progname());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'qemu-img --help' for more information\n");
    exit(EXIT_FAILURE);
}

static void QEMU_NORETURN missing_argument(const char *option)
{
    error_exit("missing argument for option '%s'", option);
}

static void QEMU_NORETURN unrecognized_option(const char *option)
{
    error_exit("unrecognized option '%s'", option);
}

/*
 * Open flags every subcommand adds to the images it opens, from the options
 * all of them accept (IMG_OPEN_OPTIONS, handled in common_option).
 */
static int img_common_flags;
/* --image-opts: image names are option strings ("driver=raw,file.filename=
 * disk.img"); --target-image-opts: the same for convert's target. */
static bool img_image_opts;
static bool img_target_image_opts;

#define IMG_OPEN_OPTIONS \
    {"allow-header-protocols", no_argument, 0, OPTION_ALLOW_HEADER_PROTOCOLS},
/* --object and --image-opts, for the commands that take both. */
#define IMG_OBJECT_OPTIONS \
    {"object", required_argument, 0, OPTION_OBJECT}, \
    {"image-opts", no_argument, 0, OPTION_IMAGE_OPTS},

/* Exits unless one argument, the image file name (argv[optind]), is left. */
static void expect_one_image(int argc)
{
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
}

/* Handles the getopt cases every command shares; exits on errors. */
static void common_option(int c, char **argv)
{
    switch (c) {
    case ':':
        missing_argument(argv[optind - 1]);
    case '?':
        unrecognized_option(argv[optind - 1]);
    case OPTION_OBJECT: {
        Error *err = NULL;

        if (user_object_add(optarg, &err) < 0) {
            error_report_err(err);
            exit(EXIT_FAILURE);
        }
        break;
    }
    case OPTION_IMAGE_OPTS:
        img_image_opts = true;
        break;
    case OPTION_TARGET_IMAGE_OPTS:
        img_target_image_opts = true;
        break;
    case OPTION_ALLOW_HEADER_PROTOCOLS:
        /* Names in image headers may use network protocols (they may
         * still never name a filter): docs/image-names.md. */
        img_common_flags |= BDRV_O_HEADER_PROTOCOLS;
        break;
    default:
        break;
    }
}

static void G_GNUC_PRINTF(2, 3) qprintf(bool quiet, const char *fmt, ...)
{
    va_list ap;

    if (quiet) {
        return;
    }
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

/* Prints "prefix" + the error message (and frees it). */
static void error_report_prefixed(Error *err, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
static void error_report_prefixed(Error *err, const char *fmt, ...)
{
    va_list ap;
    char *prefix;

    va_start(ap, fmt);
    prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    error_report("%s%s", prefix, err ? error_get_pretty(err) : "Unknown error");
    g_free(prefix);
    if (err) {
        error_print_hint(err);
        error_free(err);
    }
}

static int64_t cvtnum_full(const char *name, const char *value, int64_t min,
                           int64_t max)
{
    uint64_t res;
    int err = qemu_strtosz(value, NULL, &res);

    if (err < 0 && err != -ERANGE) {
        error_report("Invalid %s specified. You may use "
                     "k, M, G, T, P or E suffixes for", name);
        error_report("kilobytes, megabytes, gigabytes, terabytes, "
                     "petabytes and exabytes.");
        return err;
    }
    if (err == -ERANGE || res > (uint64_t)max || (int64_t)res < min) {
        error_report("Invalid %s specified. Must be between %" PRId64
                     " and %" PRId64 ".", name, min, max);
        return -ERANGE;
    }
    return res;
}

static int64_t cvtnum(const char *name, const char *value)
{
    return cvtnum_full(name, value, 0, INT64_MAX);
}

static OutputFormat parse_output_format(const char *arg)
{
    if (!strcmp(arg, "json")) {
        return OFORMAT_JSON;
    } else if (!strcmp(arg, "human")) {
        return OFORMAT_HUMAN;
    }
    error_report("--output must be used with human or json as argument.");
    exit(EXIT_FAILURE);
}

/* ------------------------------------------------------------------ */
/* Progress: "    (12.34/100%)\r", as QEMU's simple progress printer  */

static struct {
    bool enabled;
    float current;
    float last_print;
    float min_skip;
} progress;

static void progress_init(bool enabled, float min_skip)
{
    progress.enabled = enabled;
    progress.current = 0;
    progress.last_print = 0;
    progress.min_skip = min_skip;
}

static void progress_print(float delta, int max)
{
    float current;

    if (max == 0) {
        current = delta;
    } else {
        current = progress.current + delta / 100 * max;
    }
    if (current > 100) {
        current = 100;
    }
    progress.current = current;
    if (current > progress.last_print + progress.min_skip ||
        current < progress.last_print - progress.min_skip ||
        current == 0 || current == 100) {
        progress.last_print = current;
        if (progress.enabled) {
            printf("    (%3.2f/100%%)\r", current);
            fflush(stdout);
        }
    }
}

static void progress_end(void)
{
    if (progress.enabled) {
        printf("\n");
    }
}

/* -p of a job as QEMU's qemu-img prints its block jobs' progress. */
static void img_job_progress(Job *job, uint64_t current, uint64_t total,
                             void *opaque)
{
    float progress = 0.0f;

    if (total) {
        progress = (float)current / total * 100.f;
    }
    progress_print(progress, 0);
}

/* Run job to its end with -p progress from its counters: its result. */
static int img_run_job(Job *job, JobProgressFunc *progress, void *opaque)
{
    int ret;

    job_set_progress_cb(job, progress, opaque);
    job_start(job);
    ret = job_wait(job);
    job_free(job);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Opening images and option helpers                                  */

/*
 * --image-opts: name is "key=value,..." (a first element without '=' is
 * QEMU's node reference "file=", which we cannot resolve).
 */
static QemuOpts *img_parse_image_opts(const char *name, const char *fmt,
                                      int flags)
{
    QemuOpts *opts;
    Error *err = NULL;
    const char *fs;

    if (fmt) {
        error_report("--image-opts and --format are mutually exclusive");
        return NULL;
    }
    opts = qemu_opts_new();
    if (qemu_opts_parse(opts, name, "file", &err) < 0) {
        error_report_err(err);
        qemu_opts_del(opts);
        return NULL;
    }
    fs = qemu_opt_get(opts, "force-share");
    if ((flags & BDRV_O_FORCE_SHARE) && fs && strcmp(fs, "on")) {
        error_report("--force-share/-U conflicts with image options");
        qemu_opts_del(opts);
        return NULL;
    }
    return opts;
}

/*
 * Open name as the user named it: a file name, or with image_opts an
 * option string. extra (borrowed, may be NULL): driver options for a file
 * name (convert's key secrets).
 */
static BlockBackend *img_open_extra(bool image_opts, const char *filename,
                                    const char *fmt, QemuOpts *extra,
                                    int flags, bool writethrough)
{
    BlockBackend *blk;
    QemuOpts *opts = NULL;
    Error *err = NULL;

    if (image_opts) {
        opts = img_parse_image_opts(filename, fmt, flags);
        if (!opts) {
            return NULL;
        }
    } else if (fmt && !bdrv_find_format(fmt)) {
        error_report("Could not open '%s': Unknown driver '%s'", filename,
                     fmt);
        return NULL;
    } else if (extra) {
        opts = qemu_opts_clone(extra);
    }
    blk = blk_new_open(image_opts ? NULL : filename, fmt, opts,
                       flags | img_common_flags, &err);
    qemu_opts_del(opts);
    if (!blk) {
        error_report_prefixed(err, "Could not open '%s': ", filename);
        return NULL;
    }
    blk_set_enable_write_cache(blk, !writethrough);
    return blk;
}

static BlockBackend *img_open_as(bool image_opts, const char *filename,
                                 const char *fmt, int flags,
                                 bool writethrough)
{
    return img_open_extra(image_opts, filename, fmt, NULL, flags,
                          writethrough);
}

/*
 * The key secrets among create options ("key-secret", "encrypt.key-
 * secret"): QEMU's convert opens the target it created with them. NULL if
 * there are none.
 */
static QemuOpts *img_key_secrets(const char *options)
{
    QemuOpts *all = qemu_opts_new(), *ks = NULL;

    if (options && qemu_opts_parse(all, options, NULL, NULL) == 0) {
        for (size_t i = 0; i < qemu_opts_count(all); i++) {
            const char *name, *value;

            qemu_opts_nth(all, i, &name, &value);
            if (!strcmp(name, "key-secret") ||
                g_str_has_suffix(name, ".key-secret")) {
                ks = ks ? ks : qemu_opts_new();
                qemu_opt_set(ks, name, value);
            }
        }
    }
    qemu_opts_del(all);
    return ks;
}

/* The images a subcommand names (--image-opts applies to them). */
static BlockBackend *img_open(const char *filename, const char *fmt,
                              int flags, bool writethrough)
{
    return img_open_as(img_image_opts, filename, fmt, flags, writethrough);
}

/*
 * QEMU's check of a -o argument: no leading comma, and no trailing comma
 * left unescaped (an odd number of them). Callers say "Invalid option
 * list: %s".
 */
static bool valid_option_list(const char *list)
{
    size_t len = strlen(list), commas = 0;

    if (list[0] == ',') {
        return false;
    }
    while (commas < len && list[len - 1 - commas] == ',') {
        commas++;
    }
    return commas % 2 == 0;
}

/*
 * -o may be given several times: the lists are joined with ','. A list
 * QEMU would refuse gets its one-line error here and false.
 */
static bool accumulate_options(char **options, const char *optarg)
{
    char *old = *options;

    if (!valid_option_list(optarg)) {
        error_report("Invalid option list: %s", optarg);
        return false;
    }
    if (!old) {
        *options = g_strdup(optarg);
    } else {
        *options = g_strdup_printf("%s,%s", old, optarg);
        g_free(old);
    }
    return true;
}

/* True if one element of the option list is "help" or "?". */
static bool has_help_option(const char *options)
{
    GString *elem = g_string_new(NULL);
    bool found = false;
    const char *p = options;

    for (;;) {
        if (*p == ',' && p[1] == ',') {
            g_string_append_c(elem, ',');
            p += 2;
            continue;
        }
        if (*p == ',' || *p == '\0') {
            if (is_help_option(elem->str)) {
                found = true;
            }
            g_string_truncate(elem, 0);
            if (*p == '\0') {
                break;
            }
            p++;
            continue;
        }
        g_string_append_c(elem, *p++);
    }
    g_string_free(elem, TRUE);
    return found;
}

static const QemuOptDesc *find_desc(const QemuOptDesc *const *descs,
                                    const char *name)
{
    for (int t = 0; descs[t]; t++) {
        for (const QemuOptDesc *d = descs[t]; d->name; d++) {
            if (!strcmp(d->name, name)) {
                return d;
            }
        }
    }
    return NULL;
}

/*
 * Collect the create option tables of format fmt and of filename's
 * protocol into descs[0..2]. Returns the format driver, or NULL after
 * setting errp.
 */
static BlockDriver *get_create_descs(const char *fmt, const char *filename,
                                     const QemuOptDesc *descs[3],
                                     Error **errp)
{
    BlockDriver *drv = bdrv_find_format(fmt);
    BlockDriver *proto = NULL;
    int n = 0;

    descs[0] = descs[1] = descs[2] = NULL;
    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", fmt);
        return NULL;
    }
    if (filename) {
        proto = bdrv_find_protocol(filename, errp);
        if (!proto) {
            return NULL;
        }
    }
    if (!bdrv_driver_create_opts(drv)) {
        error_setg(errp, "Format driver '%s' does not support image creation",
                   bdrv_driver_name(drv));
        return NULL;
    }
    if (proto && !bdrv_driver_create_opts(proto)) {
        error_setg(errp, "Protocol driver '%s' does not support image "
                   "creation", bdrv_driver_name(proto));
        return NULL;
    }
    descs[n++] = bdrv_driver_create_opts(drv);
    if (proto && proto != drv && bdrv_driver_create_opts(proto)) {
        descs[n++] = bdrv_driver_create_opts(proto);
    }
    return drv;
}

static int print_block_option_help(const char *filename, const char *fmt)
{
    const QemuOptDesc *descs[3];
    Error *err = NULL;

    if (!get_create_descs(fmt, filename, descs, &err)) {
        error_report_err(err);
        return 1;
    }
    if (filename) {
        qemu_opts_print_help("Supported options:", descs);
    } else {
        char *caption = g_strdup_printf("Supported %s options:", fmt);
        qemu_opts_print_help(caption, descs);
        g_free(caption);
    }
    if (!filename) {
        printf("\n"
               "The protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    }
    return 0;
}

/* QEMU's qemu_opts_print: every option set or with a default, in order. */
static void print_create_opts(QemuOpts *opts, const QemuOptDesc *const *descs)
{
    const char *sep = "";

    for (int t = 0; descs[t]; t++) {
        for (const QemuOptDesc *d = descs[t]; d->name; d++) {
            const char *value = qemu_opt_get(opts, d->name);
            bool set = value != NULL;

            if (find_desc(descs, d->name) != d) {
                continue;
            }
            if (!value) {
                value = d->def_value_str;
            }
            if (!value) {
                continue;
            }
            if (set && d->type == QEMU_OPT_SIZE) {
                printf("%s%s=%" PRIu64, sep, d->name,
                       qemu_opt_get_size(opts, d->name, 0));
            } else if (set && d->type == QEMU_OPT_NUMBER) {
                printf("%s%s=%" PRIu64, sep, d->name,
                       qemu_opt_get_number(opts, d->name, 0));
            } else {
                /* QEMU's: a comma in a value is doubled, as options are
                 * written ("backing_file=json:{'a': 1,, 'b': 2}"). */
                g_auto(GStrv) parts = g_strsplit(value, ",", -1);
                g_autofree char *escaped = g_strjoinv(",,", parts);

                printf("%s%s=%s", sep, d->name, escaped);
            }
            sep = " ";
        }
    }
}

/*
 * Backing name as seen from the directory of the image being written, as
 * the block layer resolves it when it opens the image (a colon after a slash
 * is part of a file name, not a protocol prefix).
 */
static char *full_backing_path(const char *image, const char *backing)
{
    return path_combine(image, backing);
}

/* ------------------------------------------------------------------ */
/* create                                                             */

typedef struct CreateParams {
    const char *filename;
    const char *fmt;
    const char *base_filename;
    const char *base_fmt;
    const char *options;
    int64_t img_size;           /* -1 if not given */
    bool no_open;               /* -u: do not open the backing file */
    bool quiet;
} CreateParams;

/* QEMU's bdrv_img_create. Errors are reported with "FILE: " prefix. */
static int img_create_image(const CreateParams *p)
{
    const QemuOptDesc *descs[3];
    QemuOpts *opts = NULL;
    Error *err = NULL;
    const char *hint = NULL;
    char *hint_buf = NULL;
    BlockDriver *drv;
    const char *backing_file, *backing_fmt;
    int64_t size;
    int ret = -1;

    drv = get_create_descs(p->fmt, p->filename, descs, &err);
    if (!drv) {
        goto out;
    }
    opts = qemu_opts_new();
    if (p->options) {
        if (qemu_opts_parse(opts, p->options, NULL, &err) < 0 ||
            qemu_opts_validate(opts, descs, &err) < 0) {
            goto out;
        }
    }
    if (!qemu_opt_has(opts, "size")) {
        if (p->img_size >= 0) {
            qemu_opt_set_number(opts, "size", p->img_size);
        }
    } else if (p->img_size >= 0) {
        error_setg(&err, "The image size must be specified only once");
        goto out;
    }
    if (p->base_filename) {
        if (!find_desc(descs, "backing_file")) {
            error_setg(&err, "Backing file not supported for file format '%s'",
                       p->fmt);
            goto out;
        }
        qemu_opt_set(opts, "backing_file", p->base_filename);
    }
    if (p->base_fmt) {
        if (!find_desc(descs, "backing_fmt")) {
            error_setg(&err, "Backing file format not supported for file "
                       "format '%s'", p->fmt);
            goto out;
        }
        qemu_opt_set(opts, "backing_fmt", p->base_fmt);
    }

    backing_file = qemu_opt_get(opts, "backing_file");
    backing_fmt = qemu_opt_get(opts, "backing_fmt");
    if (backing_file) {
        if (!strcmp(p->filename, backing_file)) {
            error_setg(&err, "Error: Trying to create an image with the "
                       "same filename as the backing file");
            goto out;
        }
        if (backing_file[0] == '\0') {
            error_setg(&err, "Expected backing file name, got empty string");
            goto out;
        }
    }

    size = qemu_opt_has(opts, "size") ?
           (int64_t)qemu_opt_get_size(opts, "size", 0) : -1;
    if (backing_file && !p->no_open) {
        char *full = full_backing_path(p->filename, backing_file);
        BlockDriverState *bs;

        if (backing_fmt && !bdrv_find_format(backing_fmt)) {
            error_setg(&err, "Unknown driver '%s'", backing_fmt);
            hint = "Could not open backing image.\n";
            g_free(full);
            goto out;
        }
        /* Only its size is read: take no permission, share everything
         * (as QEMU), so that a backing file in use is fine. */
        bs = bdrv_open(full, backing_fmt, NULL,
                       BDRV_O_NO_IO | BDRV_O_FORCE_SHARE | img_common_flags,
                       &err);
        g_free(full);
        if (!bs) {
            hint = "Could not open backing image.\n";
            goto out;
        }
        if (!backing_fmt) {
            error_setg(&err, "Backing file specified without backing format");
            hint = hint_buf = g_strdup_printf("Detected format of %s.",
                                              bdrv_get_format_name(bs));
            bdrv_unref(bs);
            goto out;
        }
        if (size == -1) {
            size = bdrv_getlength(bs);
            if (size < 0) {
                error_setg_errno(&err, (int)-size, "Could not get size of '%s'",
                                 backing_file);
                bdrv_unref(bs);
                goto out;
            }
            qemu_opt_set_number(opts, "size", size);
        }
        bdrv_unref(bs);
    } else if (backing_file && !backing_fmt) {
        error_setg(&err, "Backing file specified without backing format");
        goto out;
    }

    if (size == -1) {
        error_setg(&err, "Image creation needs a size parameter");
        goto out;
    }

    if (!p->quiet) {
        printf("Formatting '%s', fmt=%s ", p->filename, p->fmt);
        print_create_opts(opts, descs);
        printf("\n");
        fflush(stdout);
    }

    ret = bdrv_create(drv, p->filename, opts, &err);
    if (ret == -EFBIG) {
        /*
         * As QEMU: one message, with the hint when a cluster size was given
         * (QEMU: or defaulted) or the driver says a larger one would help
         * (qcow2; add-cow's limit does not depend on it).
         */
        bool cs_hint = qemu_opt_get_size(opts, "cluster_size", 0) ||
            (err && strstr(error_get_pretty(err), "larger cluster size"));
        error_free(err);
        err = NULL;
        error_setg(&err, "The image size is too large for file format '%s'%s",
                   p->fmt, cs_hint ? " (try using a larger cluster size)" : "");
    } else if (ret < 0 && !err) {
        error_setg_errno(&err, -ret, "Could not create image");
    }

out:
    if (err) {
        error_report_prefixed(err, "%s: ", p->filename);
        if (hint) {
            fputs(hint, stderr);
        }
        ret = -1;
    }
    g_free(hint_buf);
    if (opts) {
        qemu_opts_del(opts);
    }
    return ret < 0 ? 1 : 0;
}

static int img_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        {"object", required_argument, 0, OPTION_OBJECT},
        {0, 0, 0, 0}
    };
    CreateParams p = { .fmt = "raw", .img_size = -1 };
    char *options = NULL;
    int c, ret;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'F':
            p.base_fmt = optarg;
            break;
        case 'b':
            p.base_filename = optarg;
            break;
        case 'f':
            p.fmt = optarg;
            break;
        case 'o':
            if (!accumulate_options(&options, optarg)) {
                g_free(options);
                return 1;
            }
            break;
        case 'q':
            p.quiet = true;
            break;
        case 'u':
            p.no_open = true;
            break;
        default:
            common_option(c, argv);
        }
    }

    p.filename = optind < argc ? argv[optind] : NULL;
    if (options && has_help_option(options)) {
        ret = print_block_option_help(p.filename, p.fmt);
        g_free(options);
        return ret;
    }
    if (optind >= argc) {
        error_exit("Expecting image file name");
    }
    optind++;
    if (optind < argc) {
        p.img_size = cvtnum("image size", argv[optind++]);
        if (p.img_size < 0) {
            g_free(options);
            return 1;
        }
    }
    if (optind != argc) {
        error_exit("Unexpected argument: %s", argv[optind]);
    }
    p.options = options;
    ret = img_create_image(&p);
    g_free(options);
    return ret;
}

/* ------------------------------------------------------------------ */
/* info                                                               */

typedef struct ImgInfo {
    char *filename;
    char *format;
    int64_t virtual_size;
    int64_t actual_size;
    bool has_actual_size;
    int64_t cluster_size;
    bool has_cluster_size;
    bool dirty_flag;
    bool has_dirty_flag;
    bool encrypted;
    char *backing_filename;         /* NULL if none */
    char *full_backing_filename;
    char *backing_format;
    QEMUSnapshotInfo *sns;
    int nb_sns;
    ImageInfoSpecific *spec;
} ImgInfo;

static void img_info_free(ImgInfo *info)
{
    if (!info) {
        return;
    }
    g_free(info->filename);
    g_free(info->format);
    g_free(info->backing_filename);
    g_free(info->full_backing_filename);
    g_free(info->backing_format);
    g_free(info->sns);
    if (info->spec) {
        image_info_specific_free(info->spec);
    }
    g_free(info);
}

static ImgInfo *collect_image_info(BlockDriverState *bs, Error **errp)
{
    ImgInfo *info = g_new0(ImgInfo, 1);
    BlockDriverInfo bdi;
    const char *backing;
    Error *err = NULL;
    int64_t size;
    int n;

    info->filename = bdrv_display_name(bs);
    info->format = g_strdup(bdrv_get_format_name(bs));
    size = bdrv_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Can't get image size '%s'",
                         info->filename);
        img_info_free(info);
        return NULL;
    }
    info->virtual_size = size;
    info->actual_size = bdrv_get_allocated_file_size(bs);
    info->has_actual_size = info->actual_size >= 0;
    info->encrypted = bdrv_is_encrypted(bs);

    memset(&bdi, 0, sizeof(bdi));
    if (bdrv_get_info(bs, &bdi) >= 0) {
        if (bdi.cluster_size != 0) {
            info->cluster_size = bdi.cluster_size;
            info->has_cluster_size = true;
        }
        info->dirty_flag = bdi.is_dirty;
        info->has_dirty_flag = true;
    }

    backing = bdrv_get_backing_filename(bs);
    if (backing && backing[0]) {
        const char *bfmt = bdrv_get_backing_format(bs);

        info->backing_filename = g_strdup(backing);
        info->full_backing_filename = bdrv_get_full_backing_filename(bs);
        if (bfmt && bfmt[0]) {
            info->backing_format = g_strdup(bfmt);
        }
    }

    n = bdrv_snapshot_list(bs, &info->sns);
    if (n > 0) {
        info->nb_sns = n;
    } else {
        if (n == 0) {
            g_free(info->sns);
        }
        info->sns = NULL;
    }

    info->spec = bdrv_get_specific_info(bs, &err);
    if (err) {
        error_propagate(errp, err);
        img_info_free(info);
        return NULL;
    }
    return info;
}

static JsonValue *specific_data_json(ImageInfoSpecific *spec)
{
    return image_info_specific_json(spec);
}

static JsonValue *image_info_json(ImgInfo *info)
{
    JsonValue *obj = json_new(JSON_OBJECT);

    json_add_str(obj, "filename", info->filename);
    json_add_str(obj, "format", info->format);
    if (info->has_dirty_flag) {
        json_add_bool(obj, "dirty-flag", info->dirty_flag);
    }
    if (info->has_actual_size) {
        json_add_int(obj, "actual-size", info->actual_size);
    }
    json_add_int(obj, "virtual-size", info->virtual_size);
    if (info->has_cluster_size) {
        json_add_int(obj, "cluster-size", info->cluster_size);
    }
    if (info->backing_filename) {
        json_add_str(obj, "backing-filename", info->backing_filename);
        if (info->full_backing_filename) {
            json_add_str(obj, "full-backing-filename",
                         info->full_backing_filename);
        }
        if (info->backing_format) {
            json_add_str(obj, "backing-filename-format",
                         info->backing_format);
        }
    }
    if (info->nb_sns > 0) {
        JsonValue *arr = json_new(JSON_ARRAY);

        for (int i = 0; i < info->nb_sns; i++) {
            QEMUSnapshotInfo *sn = &info->sns[i];
            JsonValue *s = json_new(JSON_OBJECT);

            json_add_str(s, "id", sn->id_str);
            json_add_str(s, "name", sn->name);
            json_add_int(s, "vm-state-size", (int64_t)sn->vm_state_size);
            json_add_int(s, "date-sec", sn->date_sec);
            json_add_int(s, "date-nsec", sn->date_nsec);
            json_add_int(s, "vm-clock-sec",
                         (int64_t)(sn->vm_clock_nsec / 1000000000ULL));
            json_add_int(s, "vm-clock-nsec",
                         (int64_t)(sn->vm_clock_nsec % 1000000000ULL));
            if (sn->icount != -1ULL) {
                json_add_int(s, "icount", (int64_t)sn->icount);
            }
            json_add(arr, NULL, s);
        }
        json_add(obj, "snapshots", arr);
    }
    if (info->spec) {
        JsonValue *fs = json_new(JSON_OBJECT);

        json_add_str(fs, "type", info->spec->type ? info->spec->type : "");
        json_add(fs, "data", specific_data_json(info->spec));
        json_add(obj, "format-specific", fs);
    }
    if (info->encrypted) {
        json_add_bool(obj, "encrypted", true);
    }
    return obj;
}

/* One row of the snapshot table (NULL: the header), without newline. */
static void snapshot_dump(QEMUSnapshotInfo *sn)
{
    char clock_buf[128], icount_buf[128] = "";
    GDateTime *date;
    char *date_buf, *sizing;
    int64_t secs;

    if (!sn) {
        printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
               "VM CLOCK", "ICOUNT");
        return;
    }
    date = g_date_time_new_from_unix_local(sn->date_sec);
    date_buf = date ? g_date_time_format(date, "%Y-%m-%d %H:%M:%S")
                    : g_strdup("");
    secs = (int64_t)(sn->vm_clock_nsec / 1000000000ULL);
    snprintf(clock_buf, sizeof(clock_buf), "%02d:%02d:%02d.%03d",
             (int)(secs / 3600), (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    sizing = size_to_str(sn->vm_state_size);
    if (sn->icount != -1ULL) {
        snprintf(icount_buf, sizeof(icount_buf), "%" PRId64,
                 (int64_t)sn->icount);
    }
    printf("%-9s %-16s %8s%20s%13s%11s", sn->id_str, sn->name, sizing,
           date_buf, clock_buf, icount_buf);
    g_free(sizing);
    g_free(date_buf);
    if (date) {
        g_date_time_unref(date);
    }
}

static void dump_snapshot_table(QEMUSnapshotInfo *sns, int n)
{
    printf("Snapshot list:\n");
    snapshot_dump(NULL);
    printf("\n");
    for (int i = 0; i < n; i++) {
        snapshot_dump(&sns[i]);
        printf("\n");
    }
}

static void dump_human_specific(ImageInfoSpecific *spec)
{
    JsonValue *data = specific_data_json(spec);

    json_dump_human(data, 1);
    json_free(data);
}

static void dump_human_image_info(ImgInfo *info)
{
    char *size_buf = size_to_str(info->virtual_size);
    char *dsize_buf = info->has_actual_size ? size_to_str(info->actual_size)
                                            : g_strdup("unavailable");

    printf("image: %s\n"
           "file format: %s\n"
           "virtual size: %s (%" PRId64 " bytes)\n"
           "disk size: %s\n",
           info->filename, info->format, size_buf, info->virtual_size,
           dsize_buf);
    g_free(size_buf);
    g_free(dsize_buf);
    if (info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->has_cluster_size) {
        printf("cluster_size: %" PRId64 "\n", info->cluster_size);
    }
    if (info->has_dirty_flag && info->dirty_flag) {
        printf("cleanly shut down: no\n");
    }
    if (info->backing_filename) {
        printf("backing file: %s", info->backing_filename);
        if (!info->full_backing_filename) {
            printf(" (cannot determine actual path)");
        } else if (strcmp(info->backing_filename,
                          info->full_backing_filename)) {
            printf(" (actual path: %s)", info->full_backing_filename);
        }
        printf("\n");
        if (info->backing_format) {
            printf("backing file format: %s\n", info->backing_format);
        }
    }
    if (info->nb_sns > 0) {
        dump_snapshot_table(info->sns, info->nb_sns);
    }
    if (info->spec) {
        printf("Format specific information:\n");
        dump_human_specific(info->spec);
    }
}

/* Infos of filename and (with chain) its backing files; NULL on error. */
static GPtrArray *collect_image_info_list(const char *filename,
                                          const char *fmt, bool chain,
                                          int open_flags)
{
    GPtrArray *list = g_ptr_array_new();
    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal,
                                             g_free, NULL);
    char *name = g_strdup(filename);
    char *cur_fmt = g_strdup(fmt);

    while (name) {
        BlockBackend *blk;
        ImgInfo *info;
        Error *err = NULL;

        if (g_hash_table_contains(seen, name)) {
            error_report("Backing file '%s' creates an infinite loop.", name);
            goto err;
        }
        g_hash_table_add(seen, g_strdup(name));

        /* As QEMU: no guest I/O, so no read or write permission taken.
         * Only the first name is the user's (--image-opts). */
        blk = img_open_as(img_image_opts && list->len == 0, name, cur_fmt,
                          BDRV_O_NO_BACKING | BDRV_O_NO_IO | open_flags,
                          false);
        if (!blk) {
            goto err;
        }
        info = collect_image_info(blk_bs(blk), &err);
        blk_unref(blk);
        if (!info) {
            error_report_err(err);
            goto err;
        }
        g_ptr_array_add(list, info);

        g_free(name);
        g_free(cur_fmt);
        name = cur_fmt = NULL;
        if (chain) {
            /* The next name comes from this image's header. */
            if (info->backing_filename &&
                !bdrv_header_names_allowed("Backing file",
                                           info->backing_filename,
                                           info->backing_format,
                                           img_common_flags, &err)) {
                error_report_prefixed(err, "Could not open '%s': ",
                                      info->full_backing_filename ?
                                      info->full_backing_filename :
                                      info->backing_filename);
                goto err;
            }
            if (info->full_backing_filename) {
                name = g_strdup(info->full_backing_filename);
            } else if (info->backing_filename) {
                error_report("Could not determine absolute backing filename,"
                             " but backing filename '%s' present",
                             info->backing_filename);
                goto err;
            }
            cur_fmt = g_strdup(info->backing_format);
        }
    }
    g_hash_table_destroy(seen);
    return list;

err:
    g_free(name);
    g_free(cur_fmt);
    g_hash_table_destroy(seen);
    for (guint i = 0; i < list->len; i++) {
        img_info_free(g_ptr_array_index(list, i));
    }
    g_ptr_array_free(list, TRUE);
    return NULL;
}

static int img_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        {"format", required_argument, 0, 'f'},
        {"output", required_argument, 0, OPTION_OUTPUT},
        {"backing-chain", no_argument, 0, OPTION_BACKING_CHAIN},
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    OutputFormat output_format = OFORMAT_HUMAN;
    const char *fmt = NULL, *output = NULL;
    bool chain = false;
    int open_flags = 0;
    GPtrArray *list;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            open_flags |= BDRV_O_FORCE_SHARE;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case OPTION_BACKING_CHAIN:
            chain = true;
            break;
        default:
            common_option(c, argv);
        }
    }
    expect_one_image(argc);
    if (output) {
        output_format = parse_output_format(output);
    }

    list = collect_image_info_list(argv[optind], fmt, chain,
                                   open_flags);
    if (!list) {
        return 1;
    }
    if (output_format == OFORMAT_HUMAN) {
        for (guint i = 0; i < list->len; i++) {
            if (i) {
                printf("\n");
            }
            dump_human_image_info(g_ptr_array_index(list, i));
        }
    } else if (chain) {
        JsonValue *arr = json_new(JSON_ARRAY);

        for (guint i = 0; i < list->len; i++) {
            json_add(arr, NULL, image_info_json(g_ptr_array_index(list, i)));
        }
        json_dump(arr);
    } else {
        json_dump(image_info_json(g_ptr_array_index(list, 0)));
    }
    for (guint i = 0; i < list->len; i++) {
        img_info_free(g_ptr_array_index(list, i));
    }
    g_ptr_array_free(list, TRUE);
    return 0;
}

/* ------------------------------------------------------------------ */
/* check                                                              */

static void dump_human_image_check(const BdrvCheckResult *r, bool quiet)
{
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        qprintf(quiet, "No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            qprintf(quiet, "\n%d errors were found on the image.\n"
                    "Data may be corrupted, or further writes to the image "
                    "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            qprintf(quiet, "\n%d leaked clusters were found on the image.\n"
                    "This means waste of disk space, but no harm to data.\n",
                    r->leaks);
        }
        if (r->check_errors) {
            qprintf(quiet, "\n%d internal errors have occurred during the "
                    "check.\n", r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        qprintf(quiet, "%" PRId64 "/%" PRId64 " = %0.2f%% allocated, "
                "%0.2f%% fragmented, %0.2f%% compressed clusters\n",
                r->allocated_clusters, r->total_clusters,
                r->allocated_clusters * 100.0 / r->total_clusters,
                r->fragmented_clusters * 100.0 / r->allocated_clusters,
                r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        qprintf(quiet, "Image end offset: %" PRId64 "\n", r->image_end_offset);
    }
}

static void dump_json_image_check(const BdrvCheckResult *r,
                                  const char *filename, const char *format,
                                  bool quiet)
{
    JsonValue *obj = json_new(JSON_OBJECT);

    json_add_str(obj, "filename", filename);
    json_add_str(obj, "format", format);
    json_add_int(obj, "check-errors", r->check_errors);
    if (r->image_end_offset) {
        json_add_int(obj, "image-end-offset", r->image_end_offset);
    }
    if (r->corruptions) {
        json_add_int(obj, "corruptions", r->corruptions);
    }
    if (r->leaks) {
        json_add_int(obj, "leaks", r->leaks);
    }
    if (r->corruptions_fixed) {
        json_add_int(obj, "corruptions-fixed", r->corruptions_fixed);
    }
    if (r->leaks_fixed) {
        json_add_int(obj, "leaks-fixed", r->leaks_fixed);
    }
    if (r->total_clusters) {
        json_add_int(obj, "total-clusters", r->total_clusters);
    }
    if (r->allocated_clusters) {
        json_add_int(obj, "allocated-clusters", r->allocated_clusters);
    }
    if (r->fragmented_clusters) {
        json_add_int(obj, "fragmented-clusters", r->fragmented_clusters);
    }
    if (r->compressed_clusters) {
        json_add_int(obj, "compressed-clusters", r->compressed_clusters);
    }
    if (quiet) {
        json_free(obj);
        return;
    }
    json_dump(obj);
}

static int img_check(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        {"format", required_argument, 0, 'f'},
        {"repair", required_argument, 0, 'r'},
        {"output", required_argument, 0, OPTION_OUTPUT},
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    OutputFormat output_format = OFORMAT_HUMAN;
    const char *fmt = NULL, *output = NULL, *filename;
    const char *cache = BDRV_DEFAULT_CACHE;
    BdrvCheckMode fix = 0;
    BdrvCheckResult r;
    BlockDriverState *bs;
    BlockBackend *blk = NULL;
    bool quiet = false, writethrough;
    int flags = BDRV_O_CHECK, ret, c;

    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            fmt = optarg;
            break;
        case 'r':
            flags |= BDRV_O_RDWR;
            if (!strcmp(optarg, "leaks")) {
                fix = BDRV_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = BDRV_FIX_LEAKS | BDRV_FIX_ERRORS;
            } else {
                error_exit("Unknown option value for -r "
                           "(expecting 'leaks' or 'all'): %s", optarg);
            }
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            flags |= BDRV_O_FORCE_SHARE;
            break;
        default:
            common_option(c, argv);
        }
    }
    expect_one_image(argc);
    filename = argv[optind];
    if (output) {
        output_format = parse_output_format(output);
    }
    if (bdrv_parse_cache_mode(cache, &flags, &writethrough) < 0) {
        error_report("Invalid source cache option: %s", cache);
        return 1;
    }

    blk = img_open(filename, fmt, flags, writethrough);
    bs = blk ? blk_bs(blk) : NULL;
    if (!bs) {
        return 1;
    }
    ret = bdrv_check(bs, &r, fix);
    if (ret == -ENOTSUP) {
        error_report("This image format does not support checks");
        blk_unref(blk);
        return 63;
    }
    if (ret == 0 && (r.corruptions_fixed || r.leaks_fixed)) {
        int leaks_fixed = r.leaks_fixed;
        int corruptions_fixed = r.corruptions_fixed;

        if (output_format == OFORMAT_HUMAN) {
            qprintf(quiet,
                    "The following inconsistencies were found and repaired:"
                    "\n\n"
                    "    %d leaked clusters\n"
                    "    %d corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    leaks_fixed, corruptions_fixed);
        }
        ret = bdrv_check(bs, &r, 0);
        r.leaks_fixed = leaks_fixed;
        r.corruptions_fixed = corruptions_fixed;
    }
    if (ret == 0) {
        if (output_format == OFORMAT_HUMAN) {
            dump_human_image_check(&r, quiet);
        } else {
            dump_json_image_check(&r, filename, bdrv_get_format_name(bs),
                                  quiet);
        }
    }
    blk_unref(blk);

    if (ret || r.check_errors) {
        if (ret) {
            error_report("Check failed: %s", strerror(-ret));
        } else {
            error_report("Check failed");
        }
        return 1;
    }
    if (r.corruptions) {
        return 2;
    } else if (r.leaks) {
        return 3;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* convert                                                            */

typedef enum ConvertStatus {
    BLK_ZERO,
    BLK_DATA,
    BLK_BACKING_FILE,
} ConvertStatus;

typedef struct ConvertState ConvertState;

typedef struct ConvertWorker {
    ConvertState *s;
    int index;
} ConvertWorker;

struct ConvertState {
    BlockBackend **src;
    int64_t *src_len;           /* real length of each source */
    int64_t *src_size;          /* length rounded up to sectors */
    int src_num;
    int64_t total_size;
    BlockBackend *target;

    bool target_has_backing;
    int64_t target_backing_size;    /* -1 if unknown */
    bool has_zero_init;
    bool wr_in_order;
    int64_t min_sparse;             /* in sectors; 0 = write everything */
    int64_t alignment;              /* sectors: zero/data runs end on it */
    int64_t buf_size;

    Job *job;                       /* the copy: progress, cancel */
    Coroutine *job_co;              /* its coroutine, waiting for workers */

    /* iteration state, protected by lock */
    CoMutex lock;
    int64_t offset;
    int src_cur;
    int64_t src_cur_offset;
    int64_t next_status;
    ConvertStatus status;

    int num_coroutines;
    int running;
    int ret;                        /* -EINPROGRESS while running */
    int64_t wr_offs;
    Coroutine *co[MAX_COROUTINES];
    int64_t wait_offs[MAX_COROUTINES];
    ConvertWorker workers[MAX_COROUTINES];

    int64_t allocated_total;
    int64_t allocated_done;

    bool compressed;                /* -c: whole clusters, compressed */
    int64_t cluster_size;           /* of the target, with -c */

    bool salvage;                   /* --salvage: unreadable parts are zeroes */
    bool quiet;                     /* -q: no salvage warnings either */
};

/* --salvage's note on what could not be read; -q silences it. */
static void convert_salvage_warn(ConvertState *s, const char *what,
                                 uint64_t offset, int ret)
{
    if (!s->quiet) {
        fprintf(stderr, "%s: warning: error while reading %soffset %" PRIu64
                ": %s\n", error_get_progname(), what, offset, strerror(-ret));
    }
}

/* Bytes from offset that share one status and one source (> 0). */
static int64_t convert_iteration(ConvertState *s, int64_t offset)
{
    int64_t src_off, n, count;
    int ret;

    assert(offset < s->total_size);
    while (offset < s->src_cur_offset) {
        s->src_cur--;
        s->src_cur_offset -= s->src_size[s->src_cur];
    }
    while (offset >= s->src_cur_offset + s->src_size[s->src_cur]) {
        s->src_cur_offset += s->src_size[s->src_cur];
        s->src_cur++;
    }
    src_off = offset - s->src_cur_offset;
    n = MIN(s->src_size[s->src_cur] - src_off, REQUEST_MAX_BYTES);

    if (s->next_status <= offset) {
        BlockDriverState *src = blk_bs(s->src[s->src_cur]);
        int64_t len = s->src_len[s->src_cur];

        if (src_off >= len) {
            ret = BDRV_BLOCK_ZERO;
            count = n;
        } else {
            BlockDriverState *base =
                s->target_has_backing ? bdrv_get_backing(src) : NULL;

            int64_t want = MIN(n, len - src_off);

            /*
             * --salvage: a failing range is asked again a quarter as long,
             * down to one sector, which is then read as data (as QEMU).
             */
            for (;;) {
                count = want;
                ret = bdrv_block_status_above(src, base, src_off, count,
                                              &count, NULL, NULL, NULL);
                if (ret >= 0) {
                    break;
                }
                if (!s->salvage) {
                    error_report("error while reading block status at offset "
                                 "%" PRId64 ": %s", offset, strerror(-ret));
                    return ret;
                }
                if (want <= BDRV_SECTOR_SIZE) {
                    convert_salvage_warn(s, "block status at ", src_off, ret);
                    ret = BDRV_BLOCK_DATA;
                    count = want;
                    break;
                }
                want = QEMU_ALIGN_UP(DIV_ROUND_UP(want, 4), BDRV_SECTOR_SIZE);
            }
            if (count <= 0) {
                count = MIN(n, len - src_off);
                ret = BDRV_BLOCK_ZERO;
            }
        }
        if (ret & BDRV_BLOCK_ZERO) {
            bool post_backing_zero = s->target_backing_size >= 0 &&
                                     offset >= s->target_backing_size;

            s->status = post_backing_zero ? BLK_BACKING_FILE : BLK_ZERO;
        } else if (ret & BDRV_BLOCK_DATA) {
            s->status = BLK_DATA;
        } else {
            s->status = s->target_has_backing ? BLK_BACKING_FILE : BLK_DATA;
        }
        s->next_status = offset + count;
    }
    n = MIN(n, s->next_status - offset);
    if (s->status == BLK_DATA || (!s->min_sparse && s->status == BLK_ZERO)) {
        n = MIN(n, s->buf_size);
    }
    /*
     * Compressed clusters are written whole: a shorter run counts as data
     * up to the end of its cluster, longer ones stop at cluster ends.
     */
    if (s->compressed) {
        if (n < s->cluster_size) {
            n = MIN(s->cluster_size, s->total_size - offset);
            s->status = BLK_DATA;
        } else {
            n = QEMU_ALIGN_DOWN(n, s->cluster_size);
        }
    }
    return n;
}

/*
 * Status of the first sector of buf (1 data, 0 zero) and in *pnum the
 * number of sectors that share it, with the end moved to a multiple of
 * alignment sectors (a power of two) when the run ends inside the buffer,
 * as QEMU's: a data run grows up to the boundary, a zero run shrinks down
 * to it, and a zero run shorter than its part before the boundary becomes
 * data (the next data write would fill it anyway).
 */
static int convert_sector_run(const uint8_t *buf, int64_t n, int64_t *pnum,
                              int64_t sector, int64_t alignment)
{
    bool zero;
    int64_t i, tail;

    if (n <= 0) {
        *pnum = 0;
        return 0;
    }
    zero = buffer_is_zero(buf, BDRV_SECTOR_SIZE);
    for (i = 1; i < n; i++) {
        if (buffer_is_zero(buf + i * BDRV_SECTOR_SIZE,
                           BDRV_SECTOR_SIZE) != zero) {
            break;
        }
    }
    if (i < n) {
        tail = (sector + i) & (alignment - 1);
        if (tail && zero && i <= tail) {
            zero = false;
        }
        if (tail && !zero) {
            i = MIN(i + alignment - tail, n);
        } else if (tail) {
            i -= tail;
        }
    }
    *pnum = i;
    return !zero;
}

/*
 * Like convert_sector_run, but a data run swallows the zero runs after it
 * that are shorter than min sectors (no split of a write for a small hole):
 * 1 and the sectors to write, or 0 and a leading zero run to skip.
 */
static int is_allocated_sectors_min(const uint8_t *buf, int64_t n,
                                    int64_t *pnum, int64_t min,
                                    int64_t sector, int64_t alignment)
{
    int64_t used, checked, run;

    min = MIN(min, n);
    if (!convert_sector_run(buf, n, pnum, sector, alignment)) {
        return 0;
    }
    used = checked = *pnum;
    while (checked < n) {
        int data = convert_sector_run(buf + checked * BDRV_SECTOR_SIZE,
                                      n - checked, &run, sector + checked,
                                      alignment);

        checked += run;
        if (data) {
            used = checked;
        } else if (run >= min) {
            break;
        }
    }
    *pnum = used;
    return 1;
}

/*
 * Read [offset, offset + n) of the concatenated sources: one source, or
 * several when a compressed cluster spans the end of one (as QEMU's).
 */
/*
 * --salvage after a failed read: again sector by sector; what still fails
 * is said (unless -q) and read as zeroes.
 */
static void coroutine_fn convert_co_salvage(ConvertState *s, BlockBackend *blk,
                                            int64_t offset, int64_t bytes,
                                            uint8_t *buf)
{
    while (bytes > 0) {
        int64_t n = MIN(bytes, BDRV_SECTOR_SIZE -
                               (offset & (BDRV_SECTOR_SIZE - 1)));
        int ret = blk_co_pread(blk, offset, n, buf, 0);

        if (ret < 0) {
            convert_salvage_warn(s, "", offset, ret);
            memset(buf, 0, n);
        }
        offset += n;
        buf += n;
        bytes -= n;
    }
}

static int coroutine_fn convert_co_read(ConvertState *s, int64_t offset,
                                        int64_t n, uint8_t *buf)
{
    int64_t start = 0;
    int i = 0;

    while (n > 0) {
        int64_t local, len, chunk;
        int ret;

        while (i < s->src_num && offset >= start + s->src_size[i]) {
            start += s->src_size[i];
            i++;
        }
        if (i == s->src_num) {
            memset(buf, 0, n);      /* beyond the last source */
            return 0;
        }
        local = offset - start;
        chunk = MIN(n, s->src_size[i] - local);
        len = s->src_len[i];
        if (local >= len) {
            memset(buf, 0, chunk);
        } else {
            int64_t avail = MIN(chunk, len - local);

            ret = blk_co_pread(s->src[i], local, avail, buf, 0);
            if (ret < 0 && s->salvage) {
                convert_co_salvage(s, s->src[i], local, avail, buf);
            } else if (ret < 0) {
                return ret;
            }
            memset(buf + avail, 0, chunk - avail);
        }
        offset += chunk;
        buf += chunk;
        n -= chunk;
    }
    return 0;
}

static int coroutine_fn convert_co_write(ConvertState *s, int64_t offset,
                                         int64_t bytes, uint8_t *buf,
                                         ConvertStatus status)
{
    int ret;

    while (bytes > 0) {
        int64_t n = bytes;

        switch (status) {
        case BLK_BACKING_FILE:
            /* leave it unallocated: the target's backing file shows */
            break;

        case BLK_DATA:
            if (s->compressed) {
                /* A cluster is written whole, or skipped if all zero. */
                n = MIN(n, s->cluster_size);
                if (s->min_sparse && buffer_is_zero(buf, n)) {
                    goto zero;
                }
                ret = blk_co_pwrite(s->target, offset, n, buf,
                                     BDRV_REQ_WRITE_COMPRESSED);
                if (ret < 0) {
                    return ret;
                }
                break;
            }
            if (s->min_sparse) {
                int64_t sectors = DIV_ROUND_UP(bytes, BDRV_SECTOR_SIZE);
                int64_t pnum;
                int alloc = is_allocated_sectors_min(buf, sectors, &pnum,
                                                     s->min_sparse,
                                                     offset / BDRV_SECTOR_SIZE,
                                                     s->alignment);

                n = MIN(bytes, pnum * (int64_t)BDRV_SECTOR_SIZE);
                if (!alloc) {
                    goto zero;
                }
            }
            ret = blk_co_pwrite(s->target, offset, n, buf, 0);
            if (ret < 0) {
                return ret;
            }
            break;

        case BLK_ZERO:
        zero:
            if (s->has_zero_init) {
                break;
            }
            ret = blk_co_pwrite_zeroes(s->target, offset, n,
                                       BDRV_REQ_MAY_UNMAP);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        offset += n;
        bytes -= n;
        buf += n;
    }
    return 0;
}

static void convert_wake(ConvertState *s, int i)
{
    s->wait_offs[i] = -1;
    aio_co_wake(s->co[i]);
}

static void coroutine_fn convert_co_do_copy(void *opaque)
{
    ConvertWorker *w = opaque;
    ConvertState *s = w->s;
    uint8_t *buf = qemu_blockalign_huge(s->buf_size);

    while (s->ret == -EINPROGRESS) {
        int64_t offset, n;
        ConvertStatus status;
        bool need_read;
        int ret = 0;

        /* Between chunks: a paused copy waits, a cancelled one stops. */
        if (job_pause_point(s->job)) {
            if (s->ret == -EINPROGRESS) {
                s->ret = -ECANCELED;
            }
            break;
        }
        qemu_co_mutex_lock(&s->lock);
        if (s->ret != -EINPROGRESS || s->offset >= s->total_size) {
            qemu_co_mutex_unlock(&s->lock);
            break;
        }
        n = convert_iteration(s, s->offset);
        if (n < 0) {
            qemu_co_mutex_unlock(&s->lock);
            s->ret = (int)n;
            break;
        }
        offset = s->offset;
        status = s->status;
        need_read = status == BLK_DATA;
        if (!s->min_sparse && status == BLK_ZERO) {
            /* -S 0: zeroes are written as data, fully allocating */
            status = BLK_DATA;
            memset(buf, 0, n);
        }
        s->offset += n;
        qemu_co_mutex_unlock(&s->lock);

        while (need_read && (ret = convert_co_read(s, offset, n, buf)) < 0) {
            /* The job's error policy: retry after a stop, skip, or fail */
            ret = job_co_step_error(s->job, true, ret);
            if (ret == 1) {
                status = BLK_BACKING_FILE;      /* ignored: leave it */
            } else if (ret == -ECANCELED) {
                s->ret = ret;
            } else if (ret < 0) {
                error_report("error while reading at byte %" PRId64 ": %s",
                             offset, strerror(-ret));
                s->ret = ret;
            }
            if (ret != 0) {
                break;
            }
        }

        if (s->wr_in_order) {
            while (s->wr_offs != offset && s->ret == -EINPROGRESS) {
                s->wait_offs[w->index] = offset;
                qemu_coroutine_yield();
            }
            s->wait_offs[w->index] = -1;
        }

        while (s->ret == -EINPROGRESS &&
               (ret = convert_co_write(s, offset, n, buf, status)) < 0) {
            ret = job_co_step_error(s->job, false, ret);
            if (ret == -ECANCELED) {
                s->ret = ret;
            } else if (ret < 0) {
                error_report("error while writing at byte %" PRId64 ": %s",
                             offset, strerror(-ret));
                s->ret = ret;
            }
            if (ret != 0) {
                break;
            }
        }

        if (status == BLK_DATA && s->allocated_total > 0) {
            s->allocated_done += n;
            job_progress_update(s->job, n);
        }

        if (s->wr_in_order) {
            s->wr_offs = offset + n;
            for (int i = 0; i < s->num_coroutines; i++) {
                if (s->co[i] && s->wait_offs[i] == s->wr_offs) {
                    convert_wake(s, i);
                    break;
                }
            }
        }
    }

    if (s->wr_in_order) {
        /* on error, the others may wait for an offset that never comes */
        for (int i = 0; i < s->num_coroutines; i++) {
            if (s->co[i] && s->wait_offs[i] >= 0) {
                convert_wake(s, i);
            }
        }
    }
    qemu_vfree(buf);
    s->co[w->index] = NULL;
    s->running--;
    if (!s->running && s->ret == -EINPROGRESS) {
        s->ret = 0;
    }
    if (!s->running && s->job_co) {
        aio_co_wake(s->job_co);
    }
}

/* The copy as a job: workers started from the loop, then waited for. */
static int coroutine_fn convert_job_run(Job *job, void *opaque)
{
    ConvertState *s = opaque;

    s->job_co = qemu_coroutine_self();
    for (int i = 0; i < s->num_coroutines; i++) {
        if (s->co[i]) {
            aio_co_schedule(s->co[i]);
        }
    }
    while (s->running > 0) {
        qemu_coroutine_yield();
    }
    s->job_co = NULL;
    return s->ret;
}

static void convert_job_progress(Job *job, uint64_t current, uint64_t total,
                                 void *opaque)
{
    progress_print(100.0 * current / total, 0);
}

static int convert_do_copy(ConvertState *s)
{
    int64_t offset, n;

    /* Count what will be read, for the progress output */
    s->allocated_total = 0;
    for (offset = 0; offset < s->total_size; offset += n) {
        n = convert_iteration(s, offset);
        if (n < 0) {
            return (int)n;
        }
        if (s->status == BLK_DATA ||
            (!s->min_sparse && s->status == BLK_ZERO)) {
            s->allocated_total += n;
        }
    }

    s->src_cur = 0;
    s->src_cur_offset = 0;
    s->next_status = 0;
    s->offset = 0;
    s->wr_offs = 0;
    s->ret = -EINPROGRESS;
    qemu_co_mutex_init(&s->lock);
    s->running = s->num_coroutines;
    for (int i = 0; i < s->num_coroutines; i++) {
        s->workers[i] = (ConvertWorker) { .s = s, .index = i };
        s->wait_offs[i] = -1;
        s->co[i] = qemu_coroutine_create(convert_co_do_copy, &s->workers[i]);
    }
    s->job = job_new(convert_job_run, s);
    job_progress_set_total(s->job, s->allocated_total);
    job_set_progress_cb(s->job, convert_job_progress, s);
    job_start(s->job);
    job_wait(s->job);
    job_free(s->job);
    s->job = NULL;

    if (s->ret == 0) {
        int ret = blk_flush(s->target);

        if (ret < 0) {
            error_report("error while flushing: %s", strerror(-ret));
            return ret;
        }
    }
    return s->ret;
}

/*
 * convert -l: the read-only source reads a snapshot. The argument is a
 * snapshot's id or name, or "snapshot.id=ID,snapshot.name=NAME" (either
 * key optional), as QEMU's.
 */
static int convert_load_snapshot(BlockBackend *blk, const char *arg)
{
    Error *err = NULL;
    int ret;

    if (g_str_has_prefix(arg, "snapshot.")) {
        QemuOpts *opts = bdrv_snapshot_param_parse(arg, &err);
        if (!opts) {
            error_report_err(err);
            error_report("Failed in parsing snapshot param '%s'", arg);
            return -1;
        }
        ret = bdrv_snapshot_load_tmp(blk_bs(blk),
                                     qemu_opt_get(opts, "snapshot.id"),
                                     qemu_opt_get(opts, "snapshot.name"),
                                     &err);
        qemu_opts_del(opts);
    } else {
        ret = bdrv_snapshot_load_tmp_by_id_or_name(blk_bs(blk), arg, &err);
    }
    if (ret < 0) {
        error_prepend(&err, "Failed to load snapshot: ");
        error_report_err(err);
        return -1;
    }
    return 0;
}

typedef struct ConvertArgs {
    const char *fmt;
    const char *out_fmt;
    const char *out_baseimg;
    const char *snapshot;       /* -l: name, or snapshot.id=,snapshot.name= */
    const char *backing_fmt;
    const char *cache;
    const char *src_cache;
    char *options;
    bool skip_create;
    bool progress;
    bool quiet;
    bool compressed;
    bool target_is_zero;
    bool force_share;
    bool copy_range;            /* -C: accepted; offloading is not done */
    bool explicit_min_sparse;   /* -S given */
    bool bitmaps;               /* --bitmaps: copy persistent bitmaps */
    bool skip_broken;           /* --skip-broken-bitmaps */
    QemuOpts *user_opts;        /* -o parsed, for backing_file/backing_fmt */
} ConvertArgs;

/* Create the convert target; errors reported. 0 or -1. */
static int convert_create_target(ConvertArgs *a, const char *out_filename,
                                 int64_t total_size)
{
    const QemuOptDesc *descs[3];
    QemuOpts *opts;
    Error *err = NULL;
    BlockDriver *drv;
    int ret;

    drv = get_create_descs(a->out_fmt, out_filename, descs, &err);
    if (!drv) {
        error_report_err(err);
        return -1;
    }
    opts = qemu_opts_new();
    if (a->options) {
        if (qemu_opts_parse(opts, a->options, NULL, &err) < 0 ||
            qemu_opts_validate(opts, descs, &err) < 0) {
            error_report_err(err);
            qemu_opts_del(opts);
            return -1;
        }
    }
    qemu_opt_set_number(opts, "size", total_size);
    if (a->out_baseimg) {
        if (!find_desc(descs, "backing_file")) {
            error_report("Backing file not supported for file format '%s'",
                         a->out_fmt);
            qemu_opts_del(opts);
            return -1;
        }
        qemu_opt_set(opts, "backing_file", a->out_baseimg);
    }
    if (a->backing_fmt) {
        if (!find_desc(descs, "backing_fmt")) {
            error_report("Backing file format not supported for file "
                         "format '%s'", a->out_fmt);
            qemu_opts_del(opts);
            return -1;
        }
        qemu_opt_set(opts, "backing_fmt", a->backing_fmt);
    }
    if (a->compressed) {
        /* As QEMU: compressed clusters cannot go where space is taken. */
        const char *prealloc = qemu_opt_get(opts, "preallocation");
        if (prealloc && strcmp(prealloc, "off")) {
            error_report("Compression and preallocation not supported at "
                         "the same time");
            qemu_opts_del(opts);
            return -1;
        }
    }
    ret = bdrv_create(drv, out_filename, opts, &err);
    qemu_opts_del(opts);
    if (ret < 0) {
        if (!err) {
            error_setg_errno(&err, -ret, "Could not create image");
        }
        error_report_prefixed(err, "%s: error while converting %s: ",
                              out_filename, a->out_fmt);
        return -1;
    }
    return 0;
}

/* One option of convert into a and s: 0, or -1 after an error message. */
static int convert_parse_option(ConvertArgs *a, ConvertState *s, int c,
                                char **argv)
{
    switch (c) {
    case 'h':
        error_exit("see 'qemu-img --help'");
    case 'f':
        a->fmt = optarg;
        break;
    case 'O':
        a->out_fmt = optarg;
        break;
    case 'B':
        a->out_baseimg = optarg;
        break;
    case 'C':
        a->copy_range = true;
        break;
    case 'c':
        a->compressed = true;
        break;
    case 'F':
        a->backing_fmt = optarg;
        break;
    case 'o':
        if (!accumulate_options(&a->options, optarg)) {
            return -1;
        }
        break;
    case 'l':
        a->snapshot = optarg;
        break;
    case 'S': {
        int64_t sval = cvtnum("buffer size for sparse output", optarg);

        if (sval < 0) {
            return -1;
        }
        if (!QEMU_IS_ALIGNED(sval, BDRV_SECTOR_SIZE) ||
            sval / (int64_t)BDRV_SECTOR_SIZE > MAX_BUF_SECTORS) {
            error_report("Invalid buffer size for sparse output specified. "
                "Valid sizes are multiples of %llu up to %llu. Select "
                "0 to disable sparse detection (fully allocates output).",
                BDRV_SECTOR_SIZE, MAX_BUF_SECTORS * BDRV_SECTOR_SIZE);
            return -1;
        }
        s->min_sparse = sval / BDRV_SECTOR_SIZE;
        a->explicit_min_sparse = true;
        break;
    }
    case 'p':
        a->progress = true;
        break;
    case 't':
        a->cache = optarg;
        break;
    case 'T':
        a->src_cache = optarg;
        break;
    case 'q':
        a->quiet = true;
        break;
    case 'n':
        a->skip_create = true;
        break;
    case 'm':
        if (qemu_strtoi(optarg, NULL, 0, &s->num_coroutines) ||
            s->num_coroutines < 1 || s->num_coroutines > MAX_COROUTINES) {
            error_report("Invalid number of coroutines. Allowed number of"
                         " coroutines is between 1 and %d",
                         MAX_COROUTINES);
            return -1;
        }
        break;
    case 'W':
        s->wr_in_order = false;
        break;
    case 'U':
        a->force_share = true;
        break;
    case 'r':
        if (cvtnum("rate limit", optarg) < 0) {
            return -1;
        }
        break;
    case OPTION_SALVAGE:
        s->salvage = true;
        break;
    case OPTION_BITMAPS:
        a->bitmaps = true;
        break;
    case OPTION_SKIP_BROKEN:
        a->skip_broken = true;
        break;
    case OPTION_TARGET_IS_ZERO:
        a->target_is_zero = true;
        break;
    default:
        common_option(c, argv);
    }
    return 0;
}

/* The options of convert and the checks that need no image: 0 or -1. */
static int convert_parse_args(ConvertArgs *a, ConvertState *s, int argc,
                              char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {"target-image-opts", no_argument, 0, OPTION_TARGET_IMAGE_OPTS},
        {"salvage", no_argument, 0, OPTION_SALVAGE},
        {"target-is-zero", no_argument, 0, OPTION_TARGET_IS_ZERO},
        {"bitmaps", no_argument, 0, OPTION_BITMAPS},
        {"skip-broken-bitmaps", no_argument, 0, OPTION_SKIP_BROKEN},
        {0, 0, 0, 0}
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                            long_options, NULL)) != -1) {
        if (convert_parse_option(a, s, c, argv) < 0) {
            return -1;
        }
    }
    if (!a->out_fmt && !img_target_image_opts) {
        a->out_fmt = "raw";
    }
    if (a->copy_range && a->compressed) {
        error_report("Cannot enable copy offloading when -c is used");
        return -1;
    }
    if (a->copy_range && a->explicit_min_sparse) {
        error_report("Cannot enable copy offloading when -S is used");
        return -1;
    }
    if (a->copy_range && s->salvage) {
        error_report("Cannot use copy offloading in salvaging mode");
        return -1;
    }
    if (img_target_image_opts && !a->skip_create) {
        error_report("--target-image-opts requires use of -n flag");
        return -1;
    }
    if (a->quiet) {
        a->progress = false;
    }
    s->quiet = a->quiet;
    if (!s->wr_in_order && a->compressed) {
        error_report("Out of order write and compress are mutually exclusive");
        return -1;
    }
    if (a->skip_create && a->options) {
        error_report("-o has no effect when skipping image creation");
        return -1;
    }
    if (a->target_is_zero && !a->skip_create) {
        error_report("--target-is-zero requires use of -n flag");
        return -1;
    }
    if (a->skip_broken && !a->bitmaps) {
        error_report("Use of --skip-broken-bitmaps requires --bitmaps");
        return -1;
    }
    return 0;
}

/* --bitmaps, before the target is created: the source can have bitmaps
 * and (unless --skip-broken-bitmaps) none is inconsistent. */
static int convert_check_src_bitmaps(ConvertArgs *a, ConvertState *s)
{
    BlockDriverState *bs = blk_bs(s->src[0]);
    BdrvBitmapInfo *list;
    Error *err = NULL;
    int n, ret = 0;

    if (!bdrv_supports_persistent_bitmaps(bs)) {
        error_report("Source lacks bitmap support");
        return -1;
    }
    if (bdrv_bitmap_list(bs, &list, &n, &err) < 0) {
        error_report_err(err);
        return -1;
    }
    for (int i = 0; i < n && !a->skip_broken; i++) {
        if (list[i].inconsistent) {
            error_report("Cannot copy inconsistent bitmap '%s'",
                         list[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img "
                    "bitmap --remove' to delete it\n");
            ret = -1;
            break;
        }
    }
    bdrv_bitmap_list_free(list, n);
    return ret;
}

/* --bitmaps, after the copy: each consistent bitmap of the source, with
 * its granularity, bits and enabled state, added to the target. */
static int convert_copy_bitmaps(ConvertArgs *a, ConvertState *s)
{
    BlockDriverState *src = blk_bs(s->src[0]), *dst = blk_bs(s->target);
    g_autoptr(GArray) ops = g_array_new(FALSE, TRUE, sizeof(BdrvBitmapOp));
    BdrvBitmapInfo *list;
    Error *err = NULL;
    int n, failed = 0, ret = 0;

    if (bdrv_bitmap_list(src, &list, &n, &err) < 0) {
        error_report_err(err);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        BdrvBitmapOp add = { BITMAP_OP_ADD, list[i].name,
                             list[i].granularity, NULL, NULL };
        BdrvBitmapOp merge = { BITMAP_OP_MERGE, list[i].name, 0, src,
                               list[i].name };
        BdrvBitmapOp disable = { BITMAP_OP_DISABLE, list[i].name, 0, NULL,
                                 NULL };

        if (list[i].inconsistent) {
            /* convert_check_src_bitmaps() refused it without the option */
            error_report("warning: Skipping inconsistent bitmap '%s'",
                         list[i].name);
            continue;
        }
        g_array_append_val(ops, add);
        g_array_append_val(ops, merge);
        if (!list[i].enabled) {
            g_array_append_val(ops, disable);
        }
    }
    if (ops->len && bdrv_bitmap_ops(dst, &g_array_index(ops, BdrvBitmapOp, 0),
                                    ops->len, &failed, &err) < 0) {
        BdrvBitmapOp *op = &g_array_index(ops, BdrvBitmapOp,
                                          MAX(failed, 0));
        error_report_prefixed(err, "Failed to %s bitmap %s: ",
                              op->type == BITMAP_OP_ADD ? "create" :
                              op->type == BITMAP_OP_MERGE ? "populate" :
                              "disable", op->name);
        ret = -1;
    }
    bdrv_bitmap_list_free(list, n);
    return ret;
}

/* Open the sources (argv[0..src_num)) into s: 0, or -1 after an error. */
static int convert_open_sources(ConvertArgs *a, ConvertState *s,
                                char **names, int src_flags,
                                bool src_writethrough)
{
    if (a->snapshot && s->src_num > 1) {
        error_report("No support for concatenating multiple snapshot");
        return -1;
    }
    s->src = g_new0(BlockBackend *, s->src_num);
    s->src_len = g_new0(int64_t, s->src_num);
    s->src_size = g_new0(int64_t, s->src_num);
    for (int i = 0; i < s->src_num; i++) {
        const char *name = names[i];

        s->src[i] = img_open(name, a->fmt, src_flags, src_writethrough);
        if (!s->src[i]) {
            return -1;
        }
        if (a->snapshot && convert_load_snapshot(s->src[i], a->snapshot) < 0) {
            return -1;
        }
        s->src_len[i] = blk_getlength(s->src[i]);
        if (s->src_len[i] < 0) {
            error_report("Could not get size of %s: %s", name,
                         strerror((int)-s->src_len[i]));
            return -1;
        }
        s->src_size[i] = ROUND_UP(s->src_len[i], (int64_t)BDRV_SECTOR_SIZE);
        s->total_size += s->src_size[i];
    }
    return 0;
}

/*
 * Checks of the target's format against -c and the backing file, which
 * may come from -o too (as QEMU): 0, or -1 after an error message.
 */
static int convert_check_target_format(ConvertArgs *a, ConvertState *s)
{
    if (a->compressed && !a->skip_create) {
        BlockDriver *odrv = bdrv_find_format(a->out_fmt);
        if (odrv && !bdrv_driver_can_compress(odrv)) {
            error_report("Compression not supported for this file format");
            return -1;
        }
    }
    if (s->src_num > 1 && a->out_baseimg) {
        error_report("Having a backing file for the target makes no sense "
                     "when concatenating multiple input images");
        return -1;
    }
    if (a->options && !a->skip_create) {
        Error *err = NULL;

        a->user_opts = qemu_opts_new();
        if (qemu_opts_parse(a->user_opts, a->options, NULL, &err) < 0) {
            error_free(err);    /* reported when the target is created */
        } else {
            if (!a->out_baseimg) {
                a->out_baseimg = qemu_opt_get(a->user_opts, "backing_file");
            }
            if (!a->backing_fmt) {
                a->backing_fmt = qemu_opt_get(a->user_opts, "backing_fmt");
            }
        }
    }
    if (a->out_baseimg && !a->skip_create) {
        BlockDriver *odrv = bdrv_find_format(a->out_fmt);
        if (odrv && !bdrv_driver_supports_backing(odrv)) {
            error_report("Backing file not supported for file format '%s'",
                         a->out_fmt);
            return -1;
        }
    }
    if (a->out_baseimg && !a->backing_fmt && !a->skip_create) {
        error_report("Use of backing file requires explicit backing format");
        return -1;
    }
    s->target_has_backing = a->out_baseimg != NULL;
    return 0;
}

/* Create (unless -n) and open the target: 0, or -1 after an error. */
static int convert_open_target(ConvertArgs *a, ConvertState *s,
                               const char *out_filename, int flags,
                               bool writethrough)
{
    QemuOpts *secrets;

    if (!a->skip_create) {
        if (convert_create_target(a, out_filename, s->total_size) < 0) {
            return -1;
        }
    }
    /* As QEMU: the target just created is opened with its key secrets */
    secrets = a->skip_create ? NULL : img_key_secrets(a->options);
    s->target = img_open_extra(img_target_image_opts, out_filename,
                               a->out_fmt, secrets, flags, writethrough);
    if (secrets) {
        qemu_opts_del(secrets);
    }
    if (!s->target) {
        return -1;
    }
    if (a->skip_create) {
        int64_t out_len = blk_getlength(s->target);

        if (out_len < 0) {
            error_report("unable to get output image length: %s",
                         strerror((int)-out_len));
            return -1;
        } else if (out_len < s->total_size) {
            error_report("output file is smaller than input file");
            return -1;
        }
    }
    if (s->target_has_backing && !a->skip_create &&
        bdrv_get_backing(blk_bs(s->target))) {
        s->target_backing_size =
            bdrv_getlength(bdrv_get_backing(blk_bs(s->target)));
    }
    return 0;
}

/* How the copy writes the open target: compression, the alignment of
 * runs, whether zeroes need writing. 0, or -1 after an error message. */
static int convert_setup_target(ConvertArgs *a, ConvertState *s)
{
    if (a->compressed) {
        BlockDriverInfo bdi;
        if (!bdrv_driver_can_compress(bdrv_find_format(
                bdrv_get_format_name(blk_bs(s->target))))) {
            error_report("Compression not supported for this file format");
            return -1;
        }
        if (bdrv_get_info(blk_bs(s->target), &bdi) < 0) {
            error_report("could not get block driver info");
            return -1;
        }
        if (bdi.cluster_size <= 0 || bdi.cluster_size > s->buf_size) {
            error_report("invalid cluster size");
            return -1;
        }
        s->compressed = true;
        s->cluster_size = bdi.cluster_size;
    }
    /* As QEMU: runs end on -S (a power of two below) or the target's
     * request alignment, whichever is larger. */
    s->alignment = 1;
    while (s->alignment * 2 <= s->min_sparse) {
        s->alignment *= 2;
    }
    s->alignment = MAX(s->alignment,
                       DIV_ROUND_UP(bdrv_get_request_alignment(
                                        blk_bs(s->target)),
                                    BDRV_SECTOR_SIZE));
    if (a->target_is_zero) {
        s->has_zero_init = true;
    } else if (!a->skip_create && s->min_sparse && !s->target_has_backing) {
        s->has_zero_init = bdrv_has_zero_init(blk_bs(s->target));
    }
    return 0;
}

/* The copy, then the end of a compressed target's file on a sector. */
static int convert_run(ConvertState *s)
{
    int ret = convert_do_copy(s);

    if (ret == 0 && s->compressed && bdrv_get_file(blk_bs(s->target))) {
        /* The file ends on a sector boundary (compressed data may not). */
        BlockDriverState *file = bdrv_get_file(blk_bs(s->target));
        int64_t len = bdrv_getlength(file);
        if (len >= 0) {
            bdrv_truncate(file, len, false, PREALLOC_MODE_OFF, NULL);
        }
    }
    return ret;
}

static void convert_cleanup(ConvertArgs *a, ConvertState *s)
{
    if (s->target) {
        blk_unref(s->target);
    }
    for (int i = 0; s->src && i < s->src_num; i++) {
        if (s->src[i]) {
            blk_unref(s->src[i]);
        }
    }
    g_free(s->src);
    g_free(s->src_len);
    g_free(s->src_size);
    if (a->user_opts) {
        qemu_opts_del(a->user_opts);
    }
    g_free(a->options);
}

static int img_convert(int argc, char **argv)
{
    ConvertArgs a = {
        .out_fmt = NULL,
        .cache = "unsafe",
        .src_cache = BDRV_DEFAULT_CACHE,
    };
    ConvertState s = {
        .min_sparse = 8,        /* 4 KiB */
        .num_coroutines = 8,
        .wr_in_order = true,
        .target_backing_size = -1,
        .buf_size = IO_BUF_SIZE,
    };
    const char *out_filename;
    int flags, src_flags, ret = -1;
    bool writethrough, src_writethrough;

    if (convert_parse_args(&a, &s, argc, argv) < 0) {
        goto out;
    }
    s.src_num = argc - optind - 1;
    out_filename = s.src_num >= 1 ? argv[argc - 1] : NULL;
    if (a.options && has_help_option(a.options)) {
        ret = print_block_option_help(out_filename,
                                      a.out_fmt ? a.out_fmt : "raw");
        g_free(a.options);
        return ret;
    }
    if (s.src_num < 1) {
        error_report("Must specify image file name");
        goto out;
    }
    if (a.bitmaps && s.src_num > 1) {
        error_report("Copying bitmaps only possible with single source");
        goto out;
    }

    /* As QEMU: nobody may write the sources while they are copied. */
    src_flags = BDRV_O_NO_SHARE | (a.force_share ? BDRV_O_FORCE_SHARE : 0);
    if (bdrv_parse_cache_mode(a.src_cache, &src_flags,
                              &src_writethrough) < 0) {
        error_report("Invalid source cache option: %s", a.src_cache);
        goto out;
    }
    flags = BDRV_O_RDWR | (s.min_sparse ? BDRV_O_UNMAP : 0);
    if (bdrv_parse_cache_mode(a.cache, &flags, &writethrough) < 0) {
        error_report("Invalid cache option: %s", a.cache);
        goto out;
    }

    progress_init(a.progress, 1.0);
    progress_print(0, 100);

    if (convert_open_sources(&a, &s, argv + optind, src_flags,
                             src_writethrough) < 0 ||
        (a.bitmaps && convert_check_src_bitmaps(&a, &s) < 0) ||
        convert_check_target_format(&a, &s) < 0 ||
        convert_open_target(&a, &s, out_filename, flags, writethrough) < 0) {
        goto out;
    }
    if (a.bitmaps && !bdrv_supports_persistent_bitmaps(blk_bs(s.target))) {
        error_report("Format driver '%s' does not support bitmaps",
                     bdrv_get_format_name(blk_bs(s.target)));
        goto out;
    }
    if (convert_setup_target(&a, &s) < 0) {
        goto out;
    }
    ret = convert_run(&s);
    if (ret == 0 && a.bitmaps && convert_copy_bitmaps(&a, &s) < 0) {
        ret = -1;
    }

out:
    if (ret == 0) {
        progress_print(100, 0);
    }
    progress_end();
    convert_cleanup(&a, &s);
    return ret ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* commit                                                             */

/*
 * Truncate through blk, taking the resize permission (the lock others see)
 * only while it runs when the image was opened without it.
 */
static int img_truncate(BlockBackend *blk, int64_t offset, bool exact,
                        PreallocMode prealloc, Error **errp)
{
    uint64_t perm, shared;
    int ret;

    blk_get_perm(blk, &perm, &shared);
    if (!(perm & BLK_PERM_RESIZE)) {
        ret = blk_set_perm(blk, perm | BLK_PERM_RESIZE, shared, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = blk_truncate(blk, offset, exact, prealloc, errp);
    if (!(perm & BLK_PERM_RESIZE)) {
        blk_set_perm(blk, perm, shared, NULL);
    }
    return ret;
}

/*
 * The node of bs's backing chain (below bs) named base, or NULL. As
 * QEMU's: a relative name is relative to each overlay's directory (how
 * backing names are stored), an absolute one is compared by real path.
 */
static BlockDriverState *find_backing_image(BlockDriverState *bs,
                                            const char *base)
{
    bool relative = base[0] != '/' && !strstr(base, ":");
    char *want = relative ? NULL : realpath(base, NULL);
    BlockDriverState *found = NULL;

    for (BlockDriverState *cur = bs; cur && !found;
         cur = bdrv_get_backing(cur)) {
        BlockDriverState *next = bdrv_get_backing(cur);
        const char *stored = bdrv_get_backing_filename(cur);
        char *full = bdrv_get_full_backing_filename(cur);
        char *real = full ? realpath(full, NULL) : NULL;
        char *rel = NULL, *rel_real = NULL;

        if (next && relative) {
            rel = path_combine(bdrv_get_filename(cur), base);
            rel_real = realpath(rel, NULL);
        }
        if (next && ((stored && !strcmp(stored, base)) ||
                     (!relative && full && !strcmp(full, base)) ||
                     (!relative && !strcmp(bdrv_get_filename(next), base)) ||
                     (want && real && !strcmp(want, real)) ||
                     (rel_real && real && !strcmp(rel_real, real)))) {
            found = next;
        }
        free(rel_real);
        g_free(rel);
        free(real);
        g_free(full);
    }
    free(want);
    return found;
}

/* The copy of a commit: what the chain allocates above base, into base. */
typedef struct CommitCopy {
    BlockBackend *blk;          /* the top image */
    BlockBackend *base_rw;      /* a writable user of base */
    BlockDriverState *base;
    int64_t len;
    uint8_t *buf;
    Error **errp;
} CommitCopy;

/* Status of [offset, offset + *pnum) above base: 1 to copy, 0 not. */
static int coroutine_fn commit_status(CommitCopy *c, int64_t offset,
                                      int64_t *pnum, bool *zero)
{
    int64_t n = MIN(c->len - offset, IO_BUF_SIZE);
    int ret = bdrv_block_status_above(blk_bs(c->blk), c->base, offset, n,
                                      pnum, NULL, NULL, NULL);

    if (ret < 0) {
        error_setg_errno(c->errp, -ret, "Could not read block status");
        return ret;
    }
    if (*pnum <= 0) {
        *pnum = n;
    }
    *zero = ret & BDRV_BLOCK_ZERO;
    return !!(ret & (BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_ZERO));
}

/* Copy one range into base, under the job's error policy. */
static int coroutine_fn commit_copy_range(Job *job, CommitCopy *c,
                                          int64_t offset, int64_t n,
                                          bool zero)
{
    int ret;

    if (!zero) {
        do {
            ret = blk_pread(c->blk, offset, n, c->buf, 0);
        } while (ret < 0 && (ret = job_co_step_error(job, true, ret)) == 0);
        if (ret < 0) {
            error_setg_errno(c->errp, -ret, "Could not read image");
            return ret;
        }
        if (ret == 1) {
            return 0;           /* read error ignored: the range is skipped */
        }
    }
    do {
        ret = zero ? blk_pwrite_zeroes(c->base_rw, offset, n,
                                       BDRV_REQ_MAY_UNMAP)
                   : blk_pwrite(c->base_rw, offset, n, c->buf, 0);
    } while (ret < 0 && (ret = job_co_step_error(job, false, ret)) == 0);
    if (ret < 0) {
        error_setg_errno(c->errp, -ret, "Could not write to base image");
        return ret;
    }
    return 0;
}

/* Progress in bytes to copy, counted before the copy starts (as the
 * dirty bytes of QEMU's commit job). */
static int coroutine_fn commit_job_run(Job *job, void *opaque)
{
    CommitCopy *c = opaque;
    int64_t offset, pnum, total = 0;
    bool zero;
    int ret;

    for (offset = 0; offset < c->len; offset += pnum) {
        ret = commit_status(c, offset, &pnum, &zero);
        if (ret < 0) {
            return ret;
        }
        total += ret ? pnum : 0;
    }
    job_progress_set_total(job, total);

    for (offset = 0; offset < c->len; offset += pnum) {
        if (job_pause_point(job)) {
            return -ECANCELED;
        }
        ret = commit_status(c, offset, &pnum, &zero);
        if (ret <= 0) {
            if (ret < 0) {
                return ret;
            }
            continue;
        }
        ret = commit_copy_range(job, c, offset, pnum, zero);
        if (ret < 0) {
            return ret;
        }
        job_progress_update(job, pnum);
    }
    return 0;
}

/*
 * Copy everything allocated above base (a node of bs's chain) into base_rw,
 * a writable node of the same image, as a job.
 */
static int commit_data(BlockBackend *blk, BlockBackend *base_rw,
                       BlockDriverState *base, Error **errp)
{
    CommitCopy c = { .blk = blk, .base_rw = base_rw, .base = base,
                     .errp = errp };
    int64_t base_len;
    int ret;

    c.len = blk_getlength(blk);
    if (c.len < 0) {
        error_setg_errno(errp, (int)-c.len, "Could not get size of image");
        return (int)c.len;
    }
    base_len = blk_getlength(base_rw);
    if (base_len < 0) {
        error_setg_errno(errp, (int)-base_len, "Could not get size of base");
        return (int)base_len;
    }
    if (base_len < c.len) {
        ret = img_truncate(base_rw, c.len, false, PREALLOC_MODE_OFF, errp);
        if (ret < 0) {
            return ret;
        }
    }

    c.buf = qemu_blockalign_huge(IO_BUF_SIZE);
    ret = img_run_job(job_new(commit_job_run, &c), img_job_progress, NULL);
    qemu_vfree(c.buf);
    if (ret == 0) {
        ret = blk_flush(base_rw);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not flush base image");
        }
    } else if (ret == -ECANCELED && errp && !*errp) {
        error_setg(errp, "Commit cancelled");
    }
    return ret;
}

typedef struct CommitArgs {
    const char *fmt;
    const char *cache;
    const char *base;           /* -b, or NULL: the backing file */
    const char *filename;
    bool quiet;
    bool progress;
    bool drop;                  /* -d: leave the top image as it is */
} CommitArgs;

/* The options of commit into a: 0, or -1 after an error message. */
static int commit_parse_args(CommitArgs *a, int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {0, 0, 0, 0}
    };
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            a->fmt = optarg;
            break;
        case 't':
            a->cache = optarg;
            break;
        case 'b':
            a->base = optarg;
            break;
        case 'd':
            a->drop = true;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'r':
            if (cvtnum("rate limit", optarg) < 0) {
                return -1;
            }
            break;
        default:
            common_option(c, argv);
        }
    }
    if (a->quiet) {
        a->progress = false;
    }
    expect_one_image(argc);
    a->filename = argv[optind];
    return 0;
}

/*
 * Commit blk's image into base_bs: the chain holds base read-only, so it
 * is reopened read-write in place (with the cache mode of -t; its locks
 * follow), written through a user of base, and reopened read-only again.
 * Then the top image is emptied unless -d.
 */
static void commit_into_base(CommitArgs *a, BlockBackend *blk,
                             BlockDriverState *base_bs, int flags,
                             bool writethrough, Error **errp)
{
    BlockDriverState *bs = blk_bs(blk);
    int base_flags = bdrv_get_flags(base_bs);
    BlockBackend *base_rw = NULL;
    Error *err = NULL, *ro_err = NULL;

    if (bdrv_reopen(base_bs, flags, NULL, &err) == 0) {
        base_rw = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                          BLK_PERM_ALL);
        if (blk_insert_bs(base_rw, base_bs, &err) < 0) {
            blk_unref(base_rw);
            base_rw = NULL;
        }
    }
    if (!base_rw) {
        error_prepend(&err, "Could not reopen '%s' read-write: ",
                      bdrv_get_filename(base_bs));
        error_propagate(errp, err);
        return;
    }
    blk_set_enable_write_cache(base_rw, !writethrough);
    commit_data(blk, base_rw, base_bs, &err);
    blk_unref(base_rw);
    if (bdrv_reopen(base_bs, base_flags, NULL, &ro_err) < 0) {
        if (!err) {
            err = ro_err;
        } else {
            error_free(ro_err);
        }
    }
    /* As QEMU: the top image is emptied unless -d; formats that cannot
     * (no backing-relative content) keep theirs. */
    if (!err && !a->drop) {
        int ret = bdrv_make_empty(bs);
        if (ret < 0 && ret != -ENOTSUP) {
            error_setg_errno(&err, -ret, "Failed to empty %s", a->filename);
        }
    }
    if (!err) {
        progress_print(100.f, 0);
    }
    error_propagate(errp, err);
}

static int img_commit(int argc, char **argv)
{
    CommitArgs a = { .cache = BDRV_DEFAULT_CACHE };
    BlockDriverState *bs, *base_bs;
    BlockBackend *blk;
    Error *err = NULL;
    bool writethrough;
    int flags;

    if (commit_parse_args(&a, argc, argv) < 0) {
        return 1;
    }
    flags = BDRV_O_RDWR | BDRV_O_UNMAP;
    if (bdrv_parse_cache_mode(a.cache, &flags, &writethrough) < 0) {
        error_report("Invalid cache option: %s", a.cache);
        return 1;
    }
    blk = img_open(a.filename, a.fmt, flags, writethrough);
    if (!blk) {
        return 1;
    }
    bs = blk_bs(blk);

    progress_init(a.progress, 1.f);
    progress_print(0.f, 100);
    if (a.base) {
        /* Committing past the backing file implies -d (as QEMU). */
        a.drop = true;
        base_bs = find_backing_image(bs, a.base);
        if (!base_bs) {
            error_setg(&err, "Did not find '%s' in the backing chain of '%s'",
                       a.base, a.filename);
        }
    } else {
        base_bs = bdrv_get_backing(bs);
        if (!base_bs) {
            error_setg(&err, "Image does not have a backing file");
        }
    }
    if (!err) {
        commit_into_base(&a, blk, base_bs, flags, writethrough, &err);
    }
    progress_end();
    blk_unref(blk);
    if (err) {
        error_report_err(err);
        return 1;
    }
    qprintf(a.quiet, "Image committed.\n");
    return 0;
}

/* ------------------------------------------------------------------ */
/* measure                                                            */

static void dump_measure(OutputFormat output_format,
                         const BlockMeasureInfo *info)
{
    if (output_format == OFORMAT_HUMAN) {
        printf("required size: %" PRIu64 "\n", (uint64_t)info->required);
        printf("fully allocated size: %" PRIu64 "\n",
               (uint64_t)info->fully_allocated);
        if (info->has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", (uint64_t)info->bitmaps);
        }
        return;
    }
    JsonValue *obj = json_new(JSON_OBJECT);
    json_add_int(obj, "required", info->required);
    json_add_int(obj, "fully-allocated", info->fully_allocated);
    if (info->has_bitmaps) {
        json_add_int(obj, "bitmaps", info->bitmaps);
    }
    json_dump(obj);
}

static int img_measure(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        {"image-opts", no_argument, 0, OPTION_IMAGE_OPTS},
        {"object", required_argument, 0, OPTION_OBJECT},
        {"output", required_argument, 0, OPTION_OUTPUT},
        {"size", required_argument, 0, OPTION_SIZE},
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    OutputFormat output_format = OFORMAT_HUMAN;
    const char *fmt = NULL, *out_fmt = "raw", *filename = NULL;
    const char *snapshot = NULL;
    char *options = NULL;
    int64_t img_size = -1;
    BlockDriverState *in_bs = NULL;
    BlockBackend *in_blk = NULL;
    BlockMeasureInfo *info = NULL;
    const QemuOptDesc *descs[3];
    QemuOpts *opts = NULL;
    Error *err = NULL;
    BlockDriver *drv;
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'o':
            if (!accumulate_options(&options, optarg)) {
                goto out;
            }
            break;
        case 'l':
            /* the keyed form is checked here, as QEMU does */
            if (g_str_has_prefix(optarg, "snapshot.")) {
                QemuOpts *sn = bdrv_snapshot_param_parse(optarg, &err);
                if (!sn) {
                    error_report_err(err);
                    error_report("Failed in parsing snapshot param '%s'",
                                 optarg);
                    goto out;
                }
                qemu_opts_del(sn);
            }
            snapshot = optarg;
            break;
        case 'U':
            break;
        case OPTION_OUTPUT:
            output_format = parse_output_format(optarg);
            break;
        case OPTION_SIZE:
            img_size = cvtnum("image size", optarg);
            if (img_size < 0) {
                goto out;
            }
            break;
        default:
            common_option(c, argv);
        }
    }
    /* QEMU 7.2's order of checks; it has no "-o help" for measure */
    if (argc - optind > 1) {
        error_report("At most one filename argument is allowed.");
        goto out;
    } else if (argc - optind == 1) {
        filename = argv[optind];
    }
    if (!filename && (img_image_opts || fmt || snapshot)) {
        error_report("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    if (filename && img_size != -1) {
        error_report("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!filename && img_size == -1) {
        error_report("Either --size N or one filename must be specified.");
        goto out;
    }
    if (filename) {
        in_blk = img_open(filename, fmt, 0, false);
        in_bs = in_blk ? blk_bs(in_blk) : NULL;
        if (!in_bs) {
            goto out;
        }
        if (snapshot && convert_load_snapshot(in_blk, snapshot) < 0) {
            goto out;
        }
    }
    drv = get_create_descs(out_fmt, NULL, descs, &err);
    if (!drv) {
        error_report_err(err);
        goto out;
    }
    descs[1] = bdrv_protocol_create_opts("file");
    opts = qemu_opts_new();
    if (options && (qemu_opts_parse(opts, options, NULL, &err) < 0 ||
                    qemu_opts_validate(opts, descs, &err) < 0)) {
        error_report_err(err);
        error_report("Invalid options for file format '%s'", out_fmt);
        goto out;
    }
    if (img_size != -1) {
        qemu_opt_set_number(opts, "size", img_size);
    }
    info = bdrv_measure(drv, opts, in_bs, &err);
    if (!info) {
        error_report_err(err);
        goto out;
    }
    dump_measure(output_format, info);
    ret = 0;
out:
    g_free(info);
    if (opts) {
        qemu_opts_del(opts);
    }
    if (in_bs) {
        blk_unref(in_blk);
    }
    g_free(options);
    return ret;
}

/* ------------------------------------------------------------------ */
/* compare helpers                                                    */

/*
 * 1 if the first sector of the buffers differs, else 0; *pnum is the
 * number of bytes from the start that share that result.
 */
static int compare_buffers(const uint8_t *buf1, const uint8_t *buf2,
                           int64_t bytes, int64_t *pnum)
{
    int64_t i = MIN(bytes, (int64_t)BDRV_SECTOR_SIZE);
    bool res;

    assert(bytes > 0);
    res = !!memcmp(buf1, buf2, i);
    while (i < bytes) {
        int64_t len = MIN(bytes - i, (int64_t)BDRV_SECTOR_SIZE);

        if (!!memcmp(buf1 + i, buf2 + i, len) != res) {
            break;
        }
        i += len;
    }
    *pnum = i;
    return res;
}

/* Byte offset of the first non-zero sector, or -1. */
static int64_t find_nonzero(const uint8_t *buf, int64_t n)
{
    for (int64_t i = 0; i < n; i += BDRV_SECTOR_SIZE) {
        if (!buffer_is_zero(buf + i, MIN(n - i, (int64_t)BDRV_SECTOR_SIZE))) {
            return i;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* rebase                                                             */

typedef struct RebaseArgs {
    const char *fmt;
    const char *cache;
    const char *src_cache;
    const char *out_baseimg;
    const char *out_basefmt;
    const char *filename;
    bool unsafe;
    bool quiet;
    bool progress;
    int src_flags;
} RebaseArgs;

static void rebase_parse_args(RebaseArgs *a, int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            a->fmt = optarg;
            break;
        case 'F':
            a->out_basefmt = optarg;
            break;
        case 'b':
            a->out_baseimg = optarg;
            break;
        case 'u':
            a->unsafe = true;
            break;
        case 'p':
            a->progress = true;
            break;
        case 't':
            a->cache = optarg;
            break;
        case 'T':
            a->src_cache = optarg;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'U':
            a->src_flags |= BDRV_O_FORCE_SHARE;
            break;
        default:
            common_option(c, argv);
        }
    }
    if (a->quiet) {
        a->progress = false;
    }
    expect_one_image(argc);
    if (!a->unsafe && !a->out_baseimg) {
        error_exit("Must specify backing file (-b) or use unsafe mode (-u)");
    }
    a->filename = argv[optind];
}

/*
 * The copy of a safe rebase: every range the image does not allocate
 * itself and where the old and the new backing file differ is written
 * into the image with the old backing file's data.
 */
typedef struct RebaseCopy {
    BlockBackend *blk;
    BlockBackend *old_blk;      /* NULL: no old backing file */
    BlockBackend *new_blk;      /* NULL: no new backing file */
    int64_t size, old_size, new_size;
    uint8_t *buf_old, *buf_new;
    float step;                 /* -p percent per compared chunk (QEMU's) */
    uint64_t printed;           /* chunks -p has printed */
} RebaseCopy;

/* Read [offset, offset + *n) of a backing file (zeroes past its end or
 * without one); *n shrinks to what the file has. */
static int coroutine_fn rebase_read(BlockBackend *blk, int64_t blk_size,
                                    int64_t offset, int64_t *n,
                                    uint8_t *buf, bool *is_zero)
{
    if (!blk || offset >= blk_size) {
        memset(buf, 0, *n);
        *is_zero = true;
        return 0;
    }
    *is_zero = false;
    *n = MIN(*n, blk_size - offset);
    return blk_pread(blk, offset, *n, buf, 0);
}

/* Compare and copy one chunk the image does not allocate: *n may shrink. */
static int coroutine_fn rebase_copy_chunk(Job *job, RebaseCopy *r,
                                          int64_t offset, int64_t *n)
{
    bool old_is_zero, new_is_zero;
    int64_t written = 0;
    int ret;

    do {
        ret = rebase_read(r->old_blk, r->old_size, offset, n, r->buf_old,
                          &old_is_zero);
    } while (ret < 0 && (ret = job_co_step_error(job, true, ret)) == 0);
    if (ret < 0) {
        error_report("error while reading from old backing file");
        return ret;
    }
    do {
        ret = rebase_read(r->new_blk, r->new_size, offset, n, r->buf_new,
                          &new_is_zero);
    } while (ret < 0 && (ret = job_co_step_error(job, true, ret)) == 0);
    if (ret < 0) {
        error_report("error while reading from new backing file");
        return ret;
    }

    while (written < *n) {
        int64_t pnum;

        if (compare_buffers(r->buf_old + written, r->buf_new + written,
                            *n - written, &pnum)) {
            do {
                if (old_is_zero) {
                    ret = blk_pwrite_zeroes(r->blk, offset + written, pnum,
                                            0);
                } else {
                    ret = blk_pwrite(r->blk, offset + written, pnum,
                                     r->buf_old + written, 0);
                }
            } while (ret < 0 &&
                     (ret = job_co_step_error(job, false, ret)) == 0);
            if (ret < 0) {
                error_report("Error while writing to COW image: %s",
                             strerror(-ret));
                return ret;
            }
        }
        written += pnum;
    }
    return 0;
}

/* Progress: one unit per compared chunk, as QEMU 7.2 counts it. */
static int coroutine_fn rebase_job_run(Job *job, void *opaque)
{
    RebaseCopy *r = opaque;
    BlockDriverState *bs = blk_bs(r->blk);
    int64_t offset, n;
    int ret;

    job_progress_set_total(job, r->size ? r->size / MIN(r->size, IO_BUF_SIZE)
                                        : 0);
    for (offset = 0; offset < r->size; offset += n) {
        if (job_pause_point(job)) {
            return -ECANCELED;
        }
        n = MIN(IO_BUF_SIZE, r->size - offset);
        ret = bdrv_is_allocated(bs, offset, n, &n);
        if (ret < 0) {
            error_report("error while reading image metadata: %s",
                         strerror(-ret));
            return ret;
        }
        if (n <= 0) {
            n = MIN(IO_BUF_SIZE, r->size - offset);
        }
        if (ret) {
            continue;           /* the image's own data: nothing to do */
        }
        ret = rebase_copy_chunk(job, r, offset, &n);
        if (ret < 0) {
            return ret;
        }
        job_progress_update(job, 1);
    }
    return 0;
}

static void rebase_job_progress(Job *job, uint64_t current, uint64_t total,
                                void *opaque)
{
    RebaseCopy *r = opaque;

    /* As QEMU's: the percent is summed chunk by chunk (float). */
    for (; r->printed < current; r->printed++) {
        progress_print(r->step, 100);
    }
}

/* Length of blk, reported as an error about name when it fails. */
static int64_t rebase_getlength(BlockBackend *blk, const char *name)
{
    int64_t len = blk_getlength(blk);

    if (len < 0) {
        error_report("Could not get size of '%s': %s", name,
                     strerror((int)-len));
    }
    return len;
}

/* The copy of a safe rebase of blk onto new_backing (may be NULL). */
static int rebase_copy(const RebaseArgs *a, BlockBackend *blk,
                       BlockBackend *new_backing)
{
    BlockDriverState *old_backing = bdrv_get_backing(blk_bs(blk));
    RebaseCopy r = { .blk = blk, .new_blk = new_backing };
    int ret = -1;

    r.size = rebase_getlength(blk, a->filename);
    if (r.size < 0) {
        return -1;
    }
    if (old_backing) {
        /* Read as a user that holds nothing and shares everything:
         * the chain's own permissions on it stay as they are. */
        r.old_blk = blk_new(0, BLK_PERM_ALL);
        blk_insert_bs(r.old_blk, old_backing, NULL);
        r.old_size = rebase_getlength(r.old_blk,
                                      bdrv_get_backing_filename(blk_bs(blk)));
        if (r.old_size < 0) {
            goto out;
        }
    }
    if (new_backing) {
        r.new_size = rebase_getlength(new_backing, a->out_baseimg);
        if (r.new_size < 0) {
            goto out;
        }
    }
    if (r.size != 0) {
        r.step = (float)100 / (r.size / MIN(r.size, IO_BUF_SIZE));
    }
    r.buf_old = qemu_blockalign_huge(IO_BUF_SIZE);
    r.buf_new = qemu_blockalign_huge(IO_BUF_SIZE);
    ret = img_run_job(job_new(rebase_job_run, &r), rebase_job_progress, &r);
    qemu_vfree(r.buf_old);
    qemu_vfree(r.buf_new);
out:
    blk_unref(r.old_blk);
    return ret;
}

/*
 * Dropping the base: a format's own job that copies the base into the
 * image (fvd's prefetch, opened with --image-opts ...,prefetch=on) runs
 * to its end first, with -p progress; the copy after it finds what is
 * left (nothing, once the job completed).
 */
static int rebase_wait_populate(BlockBackend *blk)
{
    Job *job = bdrv_get_populate_job(blk_bs(blk));
    int ret;

    if (!job) {
        return 0;
    }
    job_set_progress_cb(job, img_job_progress, NULL);
    ret = job_wait(job);
    job_set_progress_cb(job, NULL, NULL);
    if (ret < 0) {
        error_report("Could not copy the backing file into the image: %s",
                     strerror(-ret));
    }
    return ret;
}

/* Write the new backing file name (or none) into the image's header. */
static int rebase_set_backing(const RebaseArgs *a, BlockDriverState *bs)
{
    const char *name = a->out_baseimg;
    Error *err = NULL;
    int ret;

    if (name && *name && !a->out_basefmt) {
        error_report("Could not change the backing file to '%s': "
                     "backing format must be specified", name);
        return -1;
    }
    if (name && *name) {
        ret = bdrv_change_backing_file(bs, name, a->out_basefmt, &err);
    } else {
        ret = bdrv_change_backing_file(bs, NULL, NULL, &err);
    }
    error_free(err);
    if (ret == -ENOSPC && name && *name) {
        error_report("Could not change the backing file to '%s': No "
                     "space left in the file header", name);
    } else if (ret < 0) {
        error_report("Could not change the backing file to '%s': %s",
                     name ? name : "(null)", strerror(-ret));
    }
    return ret;
}

static int img_rebase(int argc, char **argv)
{
    RebaseArgs a = {
        .cache = BDRV_DEFAULT_CACHE,
        .src_cache = BDRV_DEFAULT_CACHE,
    };
    BlockBackend *blk = NULL, *new_backing = NULL;
    bool writethrough, src_writethrough;
    int flags, ret = -1;

    rebase_parse_args(&a, argc, argv);
    progress_init(a.progress, 2.0);
    progress_print(0, 100);

    flags = BDRV_O_RDWR | (a.unsafe ? BDRV_O_NO_BACKING : 0);
    if (bdrv_parse_cache_mode(a.cache, &flags, &writethrough) < 0) {
        error_report("Invalid cache option: %s", a.cache);
        goto out;
    }
    if (bdrv_parse_cache_mode(a.src_cache, &a.src_flags,
                              &src_writethrough) < 0) {
        error_report("Invalid source cache option: %s", a.src_cache);
        goto out;
    }
    blk = img_open(a.filename, a.fmt, flags, writethrough);
    if (!blk) {
        goto out;
    }
    if (a.out_basefmt && !bdrv_find_format(a.out_basefmt)) {
        error_report("Invalid format name: '%s'", a.out_basefmt);
        goto out;
    }

    if (!a.unsafe) {
        if (a.out_baseimg[0]) {
            char *path = full_backing_path(a.filename, a.out_baseimg);
            Error *err = NULL;

            new_backing = blk_new_open(path, a.out_basefmt, NULL,
                                       a.src_flags | img_common_flags, &err);
            g_free(path);
            if (!new_backing) {
                error_report_prefixed(err, "Could not open new backing file "
                                      "'%s': ", a.out_baseimg);
                goto out;
            }
        }
        if (!a.out_baseimg[0] && rebase_wait_populate(blk) < 0) {
            goto out;
        }
        if (rebase_copy(&a, blk, new_backing) < 0) {
            goto out;
        }
    }
    if (rebase_set_backing(&a, blk_bs(blk)) < 0) {
        goto out;
    }
    progress_print(100, 0);
    ret = 0;

out:
    progress_end();
    blk_unref(new_backing);
    blk_unref(blk);
    return ret ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* resize                                                             */

static int img_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"preallocation", required_argument, 0, OPTION_PREALLOCATION},
        {"shrink", no_argument, 0, OPTION_SHRINK},
        {0, 0, 0, 0}
    };
    const char *fmt = NULL, *size, *filename;
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    bool quiet = false, shrink = false;
    int relative = 0, c, ret;
    int64_t current_size, total_size;
    uint64_t n;
    BlockDriverState *bs;
    BlockBackend *blk = NULL;
    Error *err = NULL;

    /* The size goes first so that "-1M" is not taken as an option */
    if (argc < 3) {
        error_exit("Not enough arguments");
    }
    size = argv[--argc];

    while ((c = getopt_long(argc, argv, ":f:hq", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case OPTION_PREALLOCATION:
            if (qemu_prealloc_parse(optarg, &prealloc) < 0) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            break;
        case OPTION_SHRINK:
            shrink = true;
            break;
        default:
            common_option(c, argv);
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting image file name and size");
    }
    filename = argv[optind];

    if (size[0] == '+') {
        relative = 1;
        size++;
    } else if (size[0] == '-') {
        relative = -1;
        size++;
    }
    if (qemu_strtosz(size, NULL, &n) < 0) {
        error_report("Parameter 'size' expects a non-negative number below "
                     "2^64");
        fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, "
                "mega-, giga-, tera-, peta-\nand exabytes, respectively.\n");
        return 1;
    }

    blk = img_open(filename, fmt, BDRV_O_RDWR | BDRV_O_RESIZE, false);
    bs = blk ? blk_bs(blk) : NULL;
    if (!bs) {
        return 1;
    }
    current_size = bdrv_getlength(bs);
    if (current_size < 0) {
        error_report("Failed to inquire current image length: %s",
                     strerror((int)-current_size));
        goto fail;
    }
    total_size = relative ? current_size + (int64_t)n * relative
                          : (int64_t)n;
    if (total_size <= 0) {
        error_report("New image size must be positive");
        goto fail;
    }
    if (total_size <= current_size && prealloc != PREALLOC_MODE_OFF) {
        error_report("Preallocation can only be used for growing images");
        goto fail;
    }
    if (total_size < current_size && !shrink) {
        error_report("Use the --shrink option to perform a shrink operation.");
        error_report("warning: Shrinking an image will delete all data beyond "
                     "the shrunken image's end. Before performing such an "
                     "operation, make sure there is no important data there.");
        goto fail;
    }
    ret = blk_truncate(blk, total_size, true, prealloc, &err);
    if (ret < 0) {
        if (!err) {
            error_setg_errno(&err, -ret, "Could not resize image");
        }
        error_report_err(err);
        goto fail;
    }
    blk_unref(blk);
    qprintf(quiet, "Image resized.\n");
    return 0;

fail:
    blk_unref(blk);
    return 1;
}

/* ------------------------------------------------------------------ */
/* bitmap                                                             */

/*
 * qemu-img bitmap: the operations run in the order given, each one
 * committed to the image before the next (so, as with QEMU, the ones
 * before a failing operation stay done).
 */
static int img_bitmap(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"add", no_argument, 0, OPTION_BM_ADD},
        {"remove", no_argument, 0, OPTION_BM_REMOVE},
        {"clear", no_argument, 0, OPTION_BM_CLEAR},
        {"enable", no_argument, 0, OPTION_BM_ENABLE},
        {"disable", no_argument, 0, OPTION_BM_DISABLE},
        {"merge", required_argument, 0, OPTION_BM_MERGE},
        {"granularity", required_argument, 0, 'g'},
        {"source-file", required_argument, 0, 'b'},
        {"source-format", required_argument, 0, 'F'},
        {0, 0, 0, 0}
    };
    static const char *const op_names[] = {
        [BITMAP_OP_ADD] = "add", [BITMAP_OP_REMOVE] = "remove",
        [BITMAP_OP_CLEAR] = "clear", [BITMAP_OP_ENABLE] = "enable",
        [BITMAP_OP_DISABLE] = "disable", [BITMAP_OP_MERGE] = "merge",
    };
    g_autoptr(GArray) ops = g_array_new(FALSE, TRUE, sizeof(BdrvBitmapOp));
    const char *fmt = NULL, *src_filename = NULL, *src_fmt = NULL;
    const char *filename, *bitmap;
    BlockBackend *blk = NULL, *src = NULL;
    BlockDriverState *bs, *src_bs = NULL;
    int64_t granularity = 0;
    bool add = false, merge = false;
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", long_options,
                            NULL)) != -1) {
        BdrvBitmapOp op = { 0 };

        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'b':
            src_filename = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'g':
            granularity = cvtnum("granularity", optarg);
            if (granularity < 0) {
                return 1;
            }
            break;
        case OPTION_BM_ADD:
        case OPTION_BM_REMOVE:
        case OPTION_BM_CLEAR:
        case OPTION_BM_ENABLE:
        case OPTION_BM_DISABLE:
        case OPTION_BM_MERGE:
            op.type = BITMAP_OP_ADD + (c - OPTION_BM_ADD);
            if (c == OPTION_BM_MERGE) {
                op.src_name = optarg;
                merge = true;
            }
            add |= c == OPTION_BM_ADD;
            g_array_append_val(ops, op);
            break;
        default:
            common_option(c, argv);
        }
    }
    if (!ops->len) {
        error_report("Need at least one of --add, --remove, --clear, "
                     "--enable, --disable, or --merge");
        return 1;
    }
    if (granularity && !add) {
        error_report("granularity only supported with --add");
        return 1;
    }
    if (src_fmt && !src_filename) {
        error_report("-F only supported with -b");
        return 1;
    }
    if (src_filename && !merge) {
        error_report("Merge bitmap source file only supported with --merge");
        return 1;
    }
    if (optind != argc - 2) {
        error_report("Expecting filename and bitmap name");
        return 1;
    }
    filename = argv[optind];
    bitmap = argv[optind + 1];

    /* Only bitmaps change: no backing chain, no guest data writes. */
    blk = img_open(filename, fmt,
                   BDRV_O_RDWR | BDRV_O_NO_BACKING | BDRV_O_BITMAPS, false);
    bs = blk ? blk_bs(blk) : NULL;
    if (!bs) {
        goto out;
    }
    if (src_filename) {
        src = img_open_as(false, src_filename, src_fmt, BDRV_O_NO_BACKING,
                          false);
        src_bs = src ? blk_bs(src) : NULL;
        if (!src_bs) {
            goto out;
        }
    }
    for (guint i = 0; i < ops->len; i++) {
        BdrvBitmapOp *op = &g_array_index(ops, BdrvBitmapOp, i);

        op->name = bitmap;
        op->granularity = granularity;
        op->src_bs = src_bs;
    }
    {
        Error *err = NULL;
        int failed = 0;

        if (bdrv_bitmap_ops(bs, &g_array_index(ops, BdrvBitmapOp, 0),
                            ops->len, &failed, &err) < 0) {
            failed = MAX(failed, 0);
            error_report_prefixed(err, "Operation %s on bitmap %s failed: ",
                                  op_names[g_array_index(ops, BdrvBitmapOp,
                                                         failed).type],
                                  bitmap);
            goto out;
        }
    }
    ret = 0;
out:
    blk_unref(src);
    blk_unref(blk);
    return ret;
}

/* ------------------------------------------------------------------ */
/* snapshot                                                           */

enum {
    SNAPSHOT_LIST = 1,
    SNAPSHOT_CREATE,
    SNAPSHOT_APPLY,
    SNAPSHOT_DELETE,
};

static int img_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    const char *name = NULL, *filename;
    int action = 0, flags = BDRV_O_RDWR | BDRV_O_NO_BACKING, c, ret = 0;
    BlockDriverState *bs;
    BlockBackend *blk = NULL;
    QEMUSnapshotInfo sn;
    Error *err = NULL;

    while ((c = getopt_long(argc, argv, ":la:c:d:hqU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action) {
                error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c == 'l' ? SNAPSHOT_LIST : c == 'a' ? SNAPSHOT_APPLY :
                     c == 'c' ? SNAPSHOT_CREATE : SNAPSHOT_DELETE;
            if (c == 'l') {
                flags &= ~BDRV_O_RDWR;
            } else {
                name = optarg;
            }
            break;
        case 'q':
            break;
        case 'U':
            flags |= BDRV_O_FORCE_SHARE;
            break;
        default:
            common_option(c, argv);
        }
    }
    expect_one_image(argc);
    filename = argv[optind];
    if (action == SNAPSHOT_LIST) {
        flags |= BDRV_O_NO_IO;  /* as QEMU: no key needed to list */
    }

    blk = img_open(filename, NULL, flags, false);
    bs = blk ? blk_bs(blk) : NULL;
    if (!bs) {
        return 1;
    }
    switch (action) {
    case SNAPSHOT_LIST: {
        QEMUSnapshotInfo *sns = NULL;
        int n = bdrv_snapshot_list(bs, &sns);

        if (n > 0) {
            dump_snapshot_table(sns, n);
        }
        if (n >= 0) {
            g_free(sns);
        }
        break;
    }
    case SNAPSHOT_CREATE: {
        gint64 now = g_get_real_time();

        memset(&sn, 0, sizeof(sn));
        pstrcpy(sn.name, sizeof(sn.name), name);
        sn.date_sec = now / G_USEC_PER_SEC;
        sn.date_nsec = (now % G_USEC_PER_SEC) * 1000;
        ret = bdrv_snapshot_create(bs, &sn, &err);
        if (ret < 0) {
            error_free(err);
            error_report("Could not create snapshot '%s': %d (%s)", name, ret,
                         strerror(-ret));
            ret = 1;
        }
        break;
    }
    case SNAPSHOT_APPLY:
        ret = bdrv_snapshot_goto(bs, name, &err);
        if (ret < 0) {
            if (!err) {
                error_setg_errno(&err, -ret, "Failed to load snapshot");
            }
            error_report_prefixed(err, "Could not apply snapshot '%s': ",
                                  name);
            ret = 1;
        }
        break;
    case SNAPSHOT_DELETE:
        if (bdrv_snapshot_find(bs, &sn, name) < 0) {
            error_report("Could not delete snapshot '%s': snapshot not found",
                         name);
            ret = 1;
            break;
        }
        ret = bdrv_snapshot_delete(bs, sn.id_str, sn.name, &err);
        if (ret < 0) {
            if (!err) {
                error_setg_errno(&err, -ret, "Failed to delete snapshot");
            }
            error_report_prefixed(err, "Could not delete snapshot '%s': ",
                                  name);
            ret = 1;
        }
        break;
    }
    blk_unref(blk);
    return ret ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* map                                                                */

typedef struct MapEntry {
    int64_t start;
    int64_t length;
    int64_t offset;
    int64_t depth;
    bool has_offset;
    bool data;
    bool zero;
    bool present;
    const char *filename;       /* NULL if none */
} MapEntry;

static int map_block_status(BlockDriverState *bs, int64_t offset,
                            int64_t bytes, MapEntry *e)
{
    BlockDriverState *file = NULL;
    int64_t map = 0, depth = 0;
    int ret;

    for (;;) {
        BlockDriverState *next;

        file = NULL;
        ret = bdrv_block_status(bs, offset, bytes, &bytes, &map, &file);
        if (ret < 0) {
            return ret;
        }
        assert(bytes > 0);
        if (ret & (BDRV_BLOCK_ZERO | BDRV_BLOCK_DATA)) {
            break;
        }
        /* The backing file of the format under any filter (QEMU's map:
         * blkdebug over qcow2 shows the backing file's data too). */
        next = bdrv_get_backing(bdrv_skip_filters(bs));
        if (!next) {
            ret = 0;
            break;
        }
        bs = next;
        depth++;
    }

    *e = (MapEntry) {
        .start = offset,
        .length = bytes,
        .data = !!(ret & BDRV_BLOCK_DATA),
        .zero = !!(ret & BDRV_BLOCK_ZERO),
        .offset = map,
        .has_offset = !!(ret & BDRV_BLOCK_OFFSET_VALID),
        .depth = depth,
        .present = !!(ret & BDRV_BLOCK_ALLOCATED),
    };
    if (file && e->has_offset) {
        e->filename = bdrv_get_filename(file);
    }
    return 0;
}

static bool map_entry_mergeable(const MapEntry *curr, const MapEntry *next)
{
    if (curr->length == 0) {
        return false;
    }
    if (curr->zero != next->zero || curr->data != next->data ||
        curr->depth != next->depth || curr->present != next->present ||
        !curr->filename != !next->filename ||
        curr->has_offset != next->has_offset) {
        return false;
    }
    if (curr->filename && strcmp(curr->filename, next->filename)) {
        return false;
    }
    if (curr->has_offset && curr->offset + curr->length != next->offset) {
        return false;
    }
    return true;
}

static int dump_map_entry(OutputFormat output_format, MapEntry *e,
                          MapEntry *next)
{
    if (output_format == OFORMAT_HUMAN) {
        if (e->data && !e->has_offset) {
            error_report("File contains external, encrypted or compressed "
                         "clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                   e->start, e->length, e->has_offset ? e->offset : 0,
                   e->filename ? e->filename : "");
        }
        /* human output does not tell 0, ZERO and ZERO|DATA apart */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return 0;
    }
    printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ","
           " \"depth\": %" PRId64 ", \"present\": %s, \"zero\": %s,"
           " \"data\": %s", e->start, e->length, e->depth,
           e->present ? "true" : "false", e->zero ? "true" : "false",
           e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" PRId64, e->offset);
    }
    putchar('}');
    if (next) {
        puts(",");
    }
    return 0;
}

static int img_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        {"format", required_argument, 0, 'f'},
        {"output", required_argument, 0, OPTION_OUTPUT},
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {"start-offset", required_argument, 0, OPTION_START_OFFSET},
        {"max-length", required_argument, 0, OPTION_MAX_LENGTH},
        {0, 0, 0, 0}
    };
    OutputFormat output_format = OFORMAT_HUMAN;
    const char *fmt = NULL, *output = NULL;
    int64_t start_offset = 0, max_length = -1, length;
    MapEntry curr = { .length = 0 }, next;
    BlockDriverState *bs;
    BlockBackend *blk = NULL;
    int c, ret = 0, map_flags = 0;

    while ((c = getopt_long(argc, argv, ":f:hU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            map_flags |= BDRV_O_FORCE_SHARE;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case OPTION_START_OFFSET:
            start_offset = cvtnum("start offset", optarg);
            if (start_offset < 0) {
                return 1;
            }
            break;
        case OPTION_MAX_LENGTH:
            max_length = cvtnum("max length", optarg);
            if (max_length < 0) {
                return 1;
            }
            break;
        default:
            common_option(c, argv);
        }
    }
    expect_one_image(argc);
    if (output) {
        output_format = parse_output_format(output);
    }

    blk = img_open(argv[optind], fmt, map_flags, false);
    bs = blk ? blk_bs(blk) : NULL;
    if (!bs) {
        return 1;
    }
    if (output_format == OFORMAT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    } else {
        putchar('[');
    }

    length = bdrv_getlength(bs);
    if (length < 0) {
        error_report("Failed to get size for '%s'", argv[optind]);
        ret = -1;
        goto out;
    }
    if (max_length != -1) {
        length = MIN(start_offset + max_length, length);
    }

    curr.start = start_offset;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;
        int64_t n = MIN(1 * GiB, length - offset);

        ret = map_block_status(bs, offset, n, &next);
        if (ret < 0) {
            error_report("Could not read file metadata: %s", strerror(-ret));
            goto out;
        }
        if (map_entry_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            ret = dump_map_entry(output_format, &curr, &next);
            if (ret < 0) {
                goto out;
            }
        }
        curr = next;
    }
    ret = dump_map_entry(output_format, &curr, NULL);
    if (output_format == OFORMAT_JSON) {
        puts("]");
    }

out:
    blk_unref(blk);
    return ret < 0 ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* compare                                                            */

static int check_empty_sectors(BlockBackend *blk, int64_t offset,
                               int64_t bytes, const char *filename,
                               uint8_t *buffer, bool quiet)
{
    int64_t idx;
    int ret = blk_pread(blk, offset, bytes, buffer, 0);

    if (ret < 0) {
        error_report("Error while reading offset %" PRId64 " of %s: %s",
                     offset, filename, strerror(-ret));
        return 4;
    }
    idx = find_nonzero(buffer, bytes);
    if (idx >= 0) {
        qprintf(quiet, "Content mismatch at offset %" PRId64 "!\n",
                offset + idx);
        return 1;
    }
    return 0;
}

typedef struct CompareArgs {
    BlockDriverState *bs1, *bs2;
    BlockBackend *blk1, *blk2;
    const char *filename1, *filename2;
    bool strict, quiet;
} CompareArgs;

static int compare_images(CompareArgs *a, uint8_t *buf1, uint8_t *buf2)
{
    int64_t total_size1, total_size2, total_size, progress_base;
    int64_t offset = 0, pnum1, pnum2, chunk;
    int ret;

    total_size1 = bdrv_getlength(a->bs1);
    if (total_size1 < 0) {
        error_report("Can't get size of %s: %s", a->filename1,
                     strerror((int)-total_size1));
        return 4;
    }
    total_size2 = bdrv_getlength(a->bs2);
    if (total_size2 < 0) {
        error_report("Can't get size of %s: %s", a->filename2,
                     strerror((int)-total_size2));
        return 4;
    }
    total_size = MIN(total_size1, total_size2);
    progress_base = MAX(total_size1, total_size2);

    progress_print(0, 100);
    if (a->strict && total_size1 != total_size2) {
        qprintf(a->quiet, "Strict mode: Image size mismatch!\n");
        return 1;
    }

    while (offset < total_size) {
        int status1, status2;
        bool allocated1, allocated2;

        status1 = bdrv_block_status_above(a->bs1, NULL, offset,
                                          total_size1 - offset, &pnum1,
                                          NULL, NULL, NULL);
        if (status1 < 0) {
            error_report("Sector allocation test failed for %s",
                         a->filename1);
            return 3;
        }
        status2 = bdrv_block_status_above(a->bs2, NULL, offset,
                                          total_size2 - offset, &pnum2,
                                          NULL, NULL, NULL);
        if (status2 < 0) {
            error_report("Sector allocation test failed for %s",
                         a->filename2);
            return 3;
        }
        allocated1 = status1 & BDRV_BLOCK_ALLOCATED;
        allocated2 = status2 & BDRV_BLOCK_ALLOCATED;
        assert(pnum1 > 0 && pnum2 > 0);
        chunk = MIN(pnum1, pnum2);

        if (a->strict && status1 != status2) {
            qprintf(a->quiet, "Strict mode: Offset %" PRId64
                    " block status mismatch!\n", offset);
            return 1;
        }
        if ((status1 & BDRV_BLOCK_ZERO) && (status2 & BDRV_BLOCK_ZERO)) {
            /* both read as zeroes */
        } else if (allocated1 == allocated2) {
            if (allocated1) {
                int64_t pnum;

                chunk = MIN(chunk, IO_BUF_SIZE);
                ret = blk_pread(a->blk1, offset, chunk, buf1, 0);
                if (ret < 0) {
                    error_report("Error while reading offset %" PRId64
                                 " of %s: %s", offset, a->filename1,
                                 strerror(-ret));
                    return 4;
                }
                ret = blk_pread(a->blk2, offset, chunk, buf2, 0);
                if (ret < 0) {
                    error_report("Error while reading offset %" PRId64
                                 " of %s: %s", offset, a->filename2,
                                 strerror(-ret));
                    return 4;
                }
                ret = compare_buffers(buf1, buf2, chunk, &pnum);
                if (ret || pnum != chunk) {
                    qprintf(a->quiet, "Content mismatch at offset %" PRId64
                            "!\n", offset + (ret ? 0 : pnum));
                    return 1;
                }
            }
        } else {
            chunk = MIN(chunk, IO_BUF_SIZE);
            if (allocated1) {
                ret = check_empty_sectors(a->blk1, offset, chunk,
                                          a->filename1, buf1, a->quiet);
            } else {
                ret = check_empty_sectors(a->blk2, offset, chunk,
                                          a->filename2, buf1, a->quiet);
            }
            if (ret) {
                return ret;
            }
        }
        offset += chunk;
        progress_print(((float)chunk / progress_base) * 100, 100);
    }

    if (total_size1 != total_size2) {
        BlockDriverState *bs_over = total_size1 > total_size2 ? a->bs1
                                                              : a->bs2;
        BlockBackend *blk_over = total_size1 > total_size2 ? a->blk1
                                                           : a->blk2;
        const char *filename_over = total_size1 > total_size2 ?
                                    a->filename1 : a->filename2;

        qprintf(a->quiet, "Warning: Image size mismatch!\n");
        while (offset < progress_base) {
            ret = bdrv_block_status_above(bs_over, NULL, offset,
                                          progress_base - offset, &chunk,
                                          NULL, NULL, NULL);
            if (ret < 0) {
                error_report("Sector allocation test failed for %s",
                             filename_over);
                return 3;
            }
            if (chunk <= 0) {
                chunk = progress_base - offset;
            }
            if ((ret & BDRV_BLOCK_ALLOCATED) && !(ret & BDRV_BLOCK_ZERO)) {
                chunk = MIN(chunk, IO_BUF_SIZE);
                ret = check_empty_sectors(blk_over, offset, chunk,
                                          filename_over, buf1, a->quiet);
                if (ret) {
                    return ret;
                }
            }
            offset += chunk;
            progress_print(((float)chunk / progress_base) * 100, 100);
        }
    }
    qprintf(a->quiet, "Images are identical.\n");
    return 0;
}

static int img_compare(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    const char *fmt1 = NULL, *fmt2 = NULL, *cache = BDRV_DEFAULT_CACHE;
    CompareArgs a = { 0 };
    bool show_progress = false, writethrough;
    uint8_t *buf1 = NULL, *buf2 = NULL;
    int flags = 0, c, ret;

    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'f':
            fmt1 = optarg;
            break;
        case 'F':
            fmt2 = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'q':
            a.quiet = true;
            break;
        case 's':
            a.strict = true;
            break;
        case 'U':
            flags |= BDRV_O_FORCE_SHARE;
            break;
        default:
            common_option(c, argv);
        }
    }
    if (a.quiet) {
        show_progress = false;
    }
    if (optind != argc - 2) {
        error_exit("Expecting two image file names");
    }
    a.filename1 = argv[optind++];
    a.filename2 = argv[optind++];

    progress_init(show_progress, 2.0);
    if (bdrv_parse_cache_mode(cache, &flags, &writethrough) < 0) {
        error_report("Invalid source cache option: %s", cache);
        ret = 2;
        goto out;
    }
    a.blk1 = img_open(a.filename1, fmt1, flags, writethrough);
    a.bs1 = a.blk1 ? blk_bs(a.blk1) : NULL;
    if (!a.bs1) {
        ret = 2;
        goto out;
    }
    a.blk2 = img_open(a.filename2, fmt2, flags, writethrough);
    a.bs2 = a.blk2 ? blk_bs(a.blk2) : NULL;
    if (!a.bs2) {
        ret = 2;
        goto out;
    }
    buf1 = qemu_blockalign_huge(IO_BUF_SIZE);
    buf2 = qemu_blockalign_huge(IO_BUF_SIZE);
    ret = compare_images(&a, buf1, buf2);

out:
    qemu_vfree(buf1);
    qemu_vfree(buf2);
    if (a.bs2) {
        blk_unref(a.blk2);
    }
    if (a.bs1) {
        blk_unref(a.blk1);
    }
    progress_end();
    return ret;
}

/* ------------------------------------------------------------------ */
/* bench                                                              */

typedef struct BenchData {
    BlockBackend *blk;
    uint64_t image_size;
    bool write;
    int bufsize;
    int step;
    int nrreq;
    int n;
    int flush_interval;
    bool drain_on_flush;
    uint8_t *buf;
    QEMUIOVector *qiov;

    int in_flight;
    bool in_flush;
    uint64_t offset;
} BenchData;

static void bench_undrained_flush_cb(void *opaque, int ret)
{
    (void)opaque;
    if (ret < 0) {
        error_report("Failed flush request: %s", strerror(-ret));
        exit(EXIT_FAILURE);
    }
}

/* Completion of one request: account for it and keep the queue full. */
static void bench_cb(void *opaque, int ret)
{
    BenchData *b = opaque;

    if (ret < 0) {
        error_report("Failed request: %s", strerror(-ret));
        exit(EXIT_FAILURE);
    }

    if (b->in_flush) {
        /* a drained flush finished: start the next requests */
        assert(b->in_flight == 0);
        b->in_flush = false;
    } else if (b->in_flight > 0) {
        int remaining = b->n - b->in_flight;

        b->n--;
        b->in_flight--;

        if (b->flush_interval && remaining % b->flush_interval == 0) {
            if (!b->in_flight || !b->drain_on_flush) {
                BlockCompletionFunc *cb;

                if (b->drain_on_flush) {
                    b->in_flush = true;
                    cb = bench_cb;
                } else {
                    cb = bench_undrained_flush_cb;
                }
                blk_aio_flush(b->blk, cb, b);
            }
            if (b->drain_on_flush) {
                return;
            }
        }
    }

    while (b->n > b->in_flight && b->in_flight < b->nrreq) {
        int64_t offset = b->offset;

        /* count it first: the completion may run before the call returns */
        b->in_flight++;
        b->offset += b->step;
        if (b->image_size == 0) {
            b->offset = 0;
        } else {
            b->offset %= b->image_size;
        }
        if (b->write) {
            blk_aio_pwritev(b->blk, offset, b->qiov, 0, bench_cb, b);
        } else {
            blk_aio_preadv(b->blk, offset, b->qiov, 0, bench_cb, b);
        }
    }
}

static int bench_parse_int(const char *arg, unsigned long max,
                           const char *what, int *out)
{
    uint64_t res;

    if (qemu_strtou64(arg, NULL, 0, &res) < 0 || res > max) {
        error_report("Invalid %s specified", what);
        return -1;
    }
    *out = (int)res;
    return 0;
}

typedef struct BenchArgs {
    const char *fmt;
    bool is_write;
    bool drain_on_flush;
    bool writethrough;
    int count, depth, pattern, flush_interval;
    int64_t offset;
    size_t bufsize, step;
    int flags;
} BenchArgs;

/* One option of bench into a: 0, or -1 after an error message. */
static int bench_parse_option(BenchArgs *a, int c, char **argv)
{
    int64_t sval;

    switch (c) {
    case 'h':
        error_exit("see 'qemu-img --help'");
    case 'c':
        return bench_parse_int(optarg, INT_MAX, "request count", &a->count);
    case 'd':
        return bench_parse_int(optarg, INT_MAX, "queue depth", &a->depth);
    case 'f':
        a->fmt = optarg;
        break;
    case 'n':
        a->flags |= BDRV_O_NATIVE_AIO;
        break;
    case 'i':
        if (bdrv_parse_aio(optarg, &a->flags) < 0) {
            error_report("Invalid aio option: %s", optarg);
            return -1;
        }
        break;
    case 'o':
        a->offset = cvtnum("offset", optarg);
        return a->offset < 0 ? -1 : 0;
    case 'q':
        break;
    case 's':
        sval = cvtnum_full("buffer size", optarg, 0, INT_MAX);
        if (sval < 0) {
            return -1;
        }
        a->bufsize = sval;
        break;
    case 'S':
        sval = cvtnum_full("step_size", optarg, 0, INT_MAX);
        if (sval < 0) {
            return -1;
        }
        a->step = sval;
        break;
    case 't':
        if (bdrv_parse_cache_mode(optarg, &a->flags, &a->writethrough) < 0) {
            error_report("Invalid cache mode");
            return -1;
        }
        break;
    case 'w':
        a->flags |= BDRV_O_RDWR;
        a->is_write = true;
        break;
    case 'U':
        a->flags |= BDRV_O_FORCE_SHARE;
        break;
    case OPTION_PATTERN:
        return bench_parse_int(optarg, 0xff, "pattern byte", &a->pattern);
    case OPTION_FLUSH_INTERVAL:
        return bench_parse_int(optarg, INT_MAX, "flush interval",
                               &a->flush_interval);
    case OPTION_NO_DRAIN:
        a->drain_on_flush = false;
        break;
    default:
        common_option(c, argv);
    }
    return 0;
}

/* The options of bench into a: 0, or -1 after an error message. */
static int bench_parse_args(BenchArgs *a, int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        {"flush-interval", required_argument, 0, OPTION_FLUSH_INTERVAL},
        {"image-opts", no_argument, 0, OPTION_IMAGE_OPTS},
        {"pattern", required_argument, 0, OPTION_PATTERN},
        {"no-drain", no_argument, 0, OPTION_NO_DRAIN},
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU",
                            long_options, NULL)) != -1) {
        if (bench_parse_option(a, c, argv) < 0) {
            return -1;
        }
    }
    expect_one_image(argc);
    if (!a->is_write && a->flush_interval) {
        error_report("--flush-interval is only available in write tests");
        return -1;
    }
    if (a->flush_interval && a->flush_interval < a->depth) {
        error_report("Flush interval can't be smaller than depth");
        return -1;
    }
    if (a->depth < 1) {
        error_report("Invalid queue depth specified");
        return -1;
    }
    return 0;
}

/* Run the requests of data (set up) and print the time they took. */
static void bench_run(BenchData *data, int pattern)
{
    struct timeval t1, t2;

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %d)\n",
           data->n, data->write ? "write" : "read", data->bufsize,
           data->nrreq, (int64_t)data->offset, data->step);
    if (data->flush_interval) {
        printf("Sending flush every %d requests\n", data->flush_interval);
    }

    /* One buffer shared by all requests: no per-request allocation */
    data->buf = qemu_blockalign_huge(MAX(data->bufsize, 1));
    memset(data->buf, pattern, data->bufsize);
    data->qiov = g_new(QEMUIOVector, 1);
    qemu_iovec_init_buf(data->qiov, data->buf, data->bufsize);

    gettimeofday(&t1, NULL);
    bench_cb(data, 0);
    AIO_WAIT_WHILE(data->n > 0);
    gettimeofday(&t2, NULL);

    printf("Run completed in %3.3f seconds.\n",
           (t2.tv_sec - t1.tv_sec) +
           ((double)(t2.tv_usec - t1.tv_usec) / 1000000));
}

static int img_bench(int argc, char **argv)
{
    BenchArgs a = {
        .drain_on_flush = true,
        .count = 75000,
        .depth = 64,
        .bufsize = 4096,
    };
    BlockBackend *blk;
    BenchData data = { 0 };
    int64_t image_size;
    int ret = 0;

    if (bench_parse_args(&a, argc, argv) < 0) {
        return 1;
    }
    blk = img_open(argv[optind], a.fmt, a.flags, a.writethrough);
    if (!blk) {
        return 1;
    }
    image_size = blk_getlength(blk);
    if (image_size < 0) {
        ret = 1;
        goto out;
    }

    data = (BenchData) {
        .blk            = blk,
        .image_size     = image_size,
        .bufsize        = (int)a.bufsize,
        .step           = (int)(a.step ? a.step : a.bufsize),
        .nrreq          = a.depth,
        .n              = a.count,
        .offset         = a.offset,
        .write          = a.is_write,
        .flush_interval = a.flush_interval,
        .drain_on_flush = a.drain_on_flush,
    };
    bench_run(&data, a.pattern);

out:
    qemu_vfree(data.buf);
    g_free(data.qiov);
    blk_unref(blk);
    return ret;
}

/* ------------------------------------------------------------------ */
/* amend                                                              */

static int print_amend_option_help(const char *fmt)
{
    BlockDriver *drv = bdrv_find_format(fmt);
    const QemuOptDesc *descs[2];

    if (!drv) {
        error_report("Unknown file format '%s'", fmt);
        return 1;
    }
    descs[0] = bdrv_driver_amend_opts(drv);
    descs[1] = NULL;
    if (!descs[0]) {
        error_report("Format driver '%s' does not support option amendment",
                     fmt);
        return 1;
    }
    char *caption = g_strdup_printf("Amend options for '%s':", fmt);
    qemu_opts_print_help(caption, descs);
    g_free(caption);
    return 0;
}

typedef struct AmendJob {
    BlockDriverState *bs;
    QemuOpts *opts;
    bool force;
    Error **errp;
} AmendJob;

/* -p of amend: QEMU's amend status callback (100 * done / total, as
 * float), which may go back when a driver's total grows. */
static void amend_job_progress(Job *job, uint64_t current, uint64_t total,
                               void *opaque)
{
    if (total) {
        progress_print(100.f * (int64_t)current / (int64_t)total, 0);
    }
}

/* The amend as a job: a driver's long work moves its progress. */
static int coroutine_fn amend_job_run(Job *job, void *opaque)
{
    AmendJob *aj = opaque;

    return bdrv_co_amend_job(aj->bs, aj->opts, aj->force, job, aj->errp);
}

static int img_amend(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"force", no_argument, 0, OPTION_FORCE},
        {0, 0, 0, 0}
    };
    const char *fmt = NULL, *cache = BDRV_DEFAULT_CACHE, *filename;
    bool quiet = false, show_progress = false, force = false, writethrough;
    char *options = NULL;
    BlockDriverState *bs = NULL;
    BlockBackend *blk = NULL;
    QemuOpts *opts = NULL;
    Error *err = NULL;
    int flags, c, ret = -1;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pqU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            error_exit("see 'qemu-img --help'");
        case 'o':
            if (!accumulate_options(&options, optarg)) {
                goto out_no_progress;
            }
            break;
        case 'f':
            fmt = optarg;
            break;
        case 't':
            cache = optarg;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            break;
        case OPTION_FORCE:
            force = true;
            break;
        default:
            common_option(c, argv);
        }
    }
    if (!options) {
        error_exit("Must specify options (-o)");
    }
    if (quiet) {
        show_progress = false;
    }
    progress_init(show_progress, 1.0);

    filename = optind == argc - 1 ? argv[argc - 1] : NULL;
    if (fmt && has_help_option(options)) {
        ret = print_amend_option_help(fmt);
        goto out_no_progress;
    }
    if (optind != argc - 1) {
        error_report("Expecting one image file name");
        goto out;
    }
    flags = BDRV_O_RDWR;
    if (bdrv_parse_cache_mode(cache, &flags, &writethrough) < 0) {
        error_report("Invalid cache option: %s", cache);
        goto out;
    }
    blk = img_open(filename, fmt, flags, writethrough);
    bs = blk ? blk_bs(blk) : NULL;
    if (!bs) {
        goto out;
    }
    fmt = bdrv_get_format_name(bs);
    if (has_help_option(options)) {
        ret = print_amend_option_help(fmt);
        goto out_no_progress;
    }

    opts = qemu_opts_new();
    if (qemu_opts_parse(opts, options, NULL, &err) < 0) {
        error_report_err(err);
        goto out;
    }
    progress_print(0.f, 0);
    AmendJob aj = { .bs = bs, .opts = opts, .force = force, .errp = &err };
    ret = img_run_job(job_new(amend_job_run, &aj), amend_job_progress, NULL);
    progress_print(100.f, 0);
    if (ret == -ENOTSUP && !err) {
        error_report("Format driver '%s' does not support option amendment",
                     fmt);
    } else if (ret < 0) {
        if (!err) {
            error_setg_errno(&err, -ret, "Error while amending options");
        }
        error_report_err(err);
    }

out:
    progress_end();
out_no_progress:
    if (bs) {
        blk_unref(blk);
    }
    if (opts) {
        qemu_opts_del(opts);
    }
    g_free(options);
    return ret ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* dd                                                                 */

static void QEMU_NORETURN help(void);

typedef struct DdArgs {
    int64_t bsz;                /* bs=, default 512 */
    int64_t count;              /* count= (with has_count) */
    int64_t skip;               /* skip= in blocks */
    bool has_count, has_skip;
    const char *in, *out;       /* if=, of= (point into argv) */
} DdArgs;

/* One "name=value" operand, as QEMU's dd parses it. Returns 0 or -1. */
static int dd_parse_operand(const char *arg, DdArgs *a)
{
    const char *eq = strchr(arg, '=');
    const char *v = eq ? eq + 1 : NULL;
    size_t n = eq ? (size_t)(eq - arg) : 0;

    if (!eq) {
        error_report("unrecognized operand %s", arg);
        return -1;
    }
    if (n == 2 && !strncmp(arg, "bs", 2)) {
        a->bsz = cvtnum_full("bs", v, 1, INT_MAX);
        return a->bsz < 0 ? -1 : 0;
    } else if (n == 5 && !strncmp(arg, "count", 5)) {
        a->count = cvtnum("count", v);
        a->has_count = true;
        return a->count < 0 ? -1 : 0;
    } else if (n == 4 && !strncmp(arg, "skip", 4)) {
        a->skip = cvtnum("skip", v);
        a->has_skip = true;
        return a->skip < 0 ? -1 : 0;
    } else if (n == 2 && !strncmp(arg, "if", 2)) {
        a->in = v;
        return 0;
    } else if (n == 2 && !strncmp(arg, "of", 2)) {
        a->out = v;
        return 0;
    }
    error_report("unrecognized operand %.*s", (int)n, arg);
    return -1;
}

/*
 * Create the output image (format out_fmt, size bytes) and open it. As
 * QEMU's dd, the output is always created and never given image options.
 */
static BlockBackend *dd_create_output(const char *out, const char *out_fmt,
                                      int64_t size)
{
    const QemuOptDesc *descs[3];
    BlockDriver *drv = bdrv_find_format(out_fmt);
    QemuOpts *opts;
    Error *err = NULL;
    int ret;

    if (!drv) {
        error_report("Unknown file format");
        return NULL;
    }
    if (!bdrv_find_protocol(out, &err)) {
        error_report_err(err);
        return NULL;
    }
    if (!get_create_descs(out_fmt, out, descs, &err)) {
        error_report_err(err);
        return NULL;
    }
    opts = qemu_opts_new();
    qemu_opt_set_number(opts, "size", size);
    ret = bdrv_create(drv, out, opts, &err);
    qemu_opts_del(opts);
    if (ret < 0) {
        error_report_prefixed(err, "%s: error while creating output image: ",
                              out);
        return NULL;
    }
    return img_open_as(false, out, out_fmt, BDRV_O_RDWR, false);
}

/* Copy [in_pos, size) of in to the start of out, bsz bytes at a time. */
static int dd_copy(BlockBackend *in, BlockBackend *out,
                   int64_t in_pos, int64_t size, int64_t bsz)
{
    uint8_t *buf = g_try_malloc(bsz);
    int64_t out_pos = 0;
    int ret = 0;

    if (!buf) {
        error_report("Could not allocate a buffer of %" PRId64 " bytes",
                     bsz);
        return -ENOMEM;
    }
    while (in_pos < size) {
        int64_t bytes = MIN(bsz, size - in_pos);

        ret = blk_pread(in, in_pos, bytes, buf, 0);
        if (ret < 0) {
            error_report("error while reading from input image file: %s",
                         strerror(-ret));
            break;
        }
        in_pos += bytes;
        ret = blk_pwrite(out, out_pos, bytes, buf, 0);
        if (ret < 0) {
            error_report("error while writing to output image file: %s",
                         strerror(-ret));
            break;
        }
        out_pos += bytes;
    }
    g_free(buf);
    return ret;
}

/*
 * qemu-img dd [-f fmt] [-O output_fmt] [-U] [bs=N] [count=N] [skip=N]
 * if=INPUT of=OUTPUT, with QEMU 7.2's arithmetic: count limits the end of
 * the input (count*bs), skip moves its start, so with both only
 * count - skip blocks are copied; a skip past the end gives an empty
 * output and a message.
 */
static int img_dd(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        IMG_OPEN_OPTIONS
        IMG_OBJECT_OPTIONS
        {"force-share", no_argument, 0, 'U'},
        {0, 0, 0, 0}
    };
    DdArgs a = { .bsz = 512 };
    const char *fmt = NULL, *out_fmt = "raw";
    BlockBackend *in = NULL, *out = NULL;
    int64_t size, in_pos;
    bool skip_past_end;
    int flags = 0;
    int c, ret = 1;

    while ((c = getopt_long(argc, argv, ":hf:O:U", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            help();
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'U':
            flags |= BDRV_O_FORCE_SHARE;
            break;
        default:
            common_option(c, argv);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (dd_parse_operand(argv[i], &a) < 0) {
            return 1;
        }
    }
    if (!a.in || !a.out) {
        error_report("Must specify both input and output files");
        return 1;
    }
    in = img_open(a.in, fmt, flags, false);
    if (!in) {
        return 1;
    }
    size = blk_getlength(in);
    if (size < 0) {
        error_report("Failed to get size for '%s'", a.in);
        goto out;
    }
    if (a.has_count && a.count <= INT64_MAX / a.bsz &&
        a.count * a.bsz < size) {
        size = a.count * a.bsz;
    }
    skip_past_end = a.has_skip && (a.skip > INT64_MAX / a.bsz ||
                                   size < a.skip * a.bsz);
    out = dd_create_output(a.out, out_fmt,
                           skip_past_end ? 0 : size - a.skip * a.bsz);
    if (!out) {
        goto out;
    }
    if (skip_past_end) {
        /* Like dd(1): an empty output, and a word about it. */
        error_report("%s: cannot skip to specified offset", a.in);
        in_pos = size;
    } else {
        in_pos = a.skip * a.bsz;
    }
    ret = dd_copy(in, out, in_pos, size, a.bsz) < 0 ? 1 : 0;
out:
    blk_unref(out);
    blk_unref(in);
    return ret;
}

/* ------------------------------------------------------------------ */
/* main                                                               */

typedef struct ImgCmd {
    const char *name;
    int (*handler)(int argc, char **argv);
} ImgCmd;

static const ImgCmd img_cmds[] = {
    { "amend", img_amend },
    { "bench", img_bench },
    { "bitmap", img_bitmap },
    { "check", img_check },
    { "commit", img_commit },
    { "compare", img_compare },
    { "convert", img_convert },
    { "create", img_create },
    { "dd", img_dd },
    { "info", img_info },
    { "map", img_map },
    { "measure", img_measure },
    { "rebase", img_rebase },
    { "resize", img_resize },
    { "snapshot", img_snapshot },
    { NULL, NULL },
};

static void format_print(void *opaque, const char *name)
{
    (void)opaque;
    printf(" %s", name);
}

static void QEMU_NORETURN help(void)
{
    printf(QEMU_IMG_VERSION
"usage: qemu-img [standard options] command [command options]\n"
"QEMU disk image utility\n"
"\n"
"    '-h', '--help'       display this help and exit\n"
"    '-V', '--version'    output version information and exit\n"
"\n"
"Command syntax:\n"
"  amend [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename\n"
"  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval]"
" [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q]"
" [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n"
"  bitmap (--merge source | --add | --remove | --clear | --enable |"
" --disable)... [-b source_file [-F source_fmt]] [-g granularity]"
" [--object objectdef] [--image-opts | -f fmt] filename bitmap\n"
"  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache]"
" [-U] filename\n"
"  commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p]"
" filename\n"
"  compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U]"
" filename1 filename2\n"
"  convert [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache]"
" [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]]"
" [-o options] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W]"
" [--target-is-zero] [--bitmaps [--skip-broken-bitmaps]]"
" filename [filename2 [...]] output_filename\n"
"  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u]"
" [-o options] filename [size]\n"
"  dd [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks]"
" [skip=blocks] if=input of=output\n"
"  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
"  map [-f fmt] [--start-offset=offset] [--max-length=len]"
" [--output=ofmt] [-U] filename\n"
"  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N |"
" [-f fmt] filename]\n"
"  snapshot [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot]"
" filename\n"
"  rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u]"
" -b backing_file [-F backing_fmt] filename\n"
"  resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename"
" [+ | -]size\n"
"\n"
"Command parameters:\n"
"  'filename' is a disk image filename\n"
"  'fmt' is the disk image format. It is guessed automatically in most"
" cases\n"
"  'cache' is the cache mode used to write the output disk image, the valid\n"
"    options are: 'none', 'writeback' (default, except for convert),"
" 'writethrough',\n"
"    'directsync' and 'unsafe' (default for convert)\n"
"  'src_cache' is the cache mode used to read input disk images, the valid\n"
"    options are the same as for the 'cache' option\n"
"  'size' is the disk image size in bytes. Optional suffixes\n"
"    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte,"
" 1024M),\n"
"    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)"
"  are\n"
"    supported. 'b' is ignored.\n"
"  'output_filename' is the destination disk image filename\n"
"  'output_fmt' is the destination format\n"
"  'options' is a comma separated list of format specific options in a\n"
"    name=value format. Use -o help for an overview of the options"
" supported by\n"
"    the used format\n"
"  '-q' use Quiet mode - do not print any output (except errors)\n"
"\n"
"Parameters to dd subcommand:\n"
"  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)\n"
"  'count=N' copy only N input blocks\n"
"  'if=FILE' read from FILE\n"
"  'of=FILE' write to FILE\n"
"  'skip=N' skip N bs-sized blocks at the start of input\n"
"\n"
"Supported formats:");
    bdrv_iterate_format(format_print, NULL);
    printf("\n\nSee docs/qemu-img.md for details.\n");
    exit(EXIT_SUCCESS);
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {"trace", required_argument, NULL, 'T'},
        {0, 0, 0, 0}
    };
    const char *slash = strrchr(argv[0], '/');
    const char *cmdname;
    int c;

    error_set_progname(slash ? slash + 1 : argv[0]);
    bdrv_init();

    if (argc < 2) {
        error_exit("Not enough arguments");
    }
    while ((c = getopt_long(argc, argv, "+:hVT:", long_options,
                            NULL)) != -1) {
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'V':
            printf(QEMU_IMG_VERSION);
            return 0;
        case 'T':
            /* tracing is not implemented; accepted for compatibility */
            break;
        }
    }
    if (optind >= argc) {
        error_exit("Not enough arguments");
    }
    cmdname = argv[optind];
    argc -= optind;
    argv += optind;
    optind = 0;

    for (const ImgCmd *cmd = img_cmds; cmd->name; cmd++) {
        if (!strcmp(cmdname, cmd->name)) {
            return cmd->handler(argc, argv);
        }
    }
    error_exit("Command not found: %s", cmdname);
}
