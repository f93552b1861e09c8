/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qemu-io: command-line options, opening the image, the open/close/quit
 * commands and the loop running -c commands or reading them from stdin.
 */
#include <getopt.h>

#include "qemu-io.h"
#include "util/aio.h"
#include "util/secret.h"
#include "util/object.h"

#define QEMU_IO_VERSION "0.1.0"

static BlockBackend *qemuio_blk;
static char *cur_name;          /* how the current image was opened */
static QemuOpts *cur_opts;
static int cur_flags;
static bool quit_qemu_io;
static bool image_opts;
static char *progname;

/* ---- opening ---- */

/* cache=..., discard=... style strings for -d: QEMU's accepted spellings. */
static int parse_discard_flags(const char *mode, int *flags)
{
    if (!strcmp(mode, "off") || !strcmp(mode, "ignore")) {
        *flags &= ~BDRV_O_UNMAP;
    } else if (!strcmp(mode, "on") || !strcmp(mode, "unmap")) {
        *flags |= BDRV_O_UNMAP;
    } else {
        return -1;
    }
    return 0;
}

/*
 * Open name (or only opts when name is NULL) as the current image. Returns
 * 0, or 1 after reporting the failure. opts is borrowed.
 */
static int openfile(const char *name, const char *fmt, int flags,
                    bool writethrough, bool force_share, QemuOpts *opts)
{
    Error *local_err = NULL;

    if (qemuio_blk) {
        error_report("file open already, try 'help close'");
        return 1;
    }
    if (force_share) {
        const char *v = opts ? qemu_opt_get(opts, "force-share") : NULL;
        bool on;

        if (v && (!qemu_parse_bool(v, &on) || !on)) {
            error_report("-U conflicts with image options");
            return 1;
        }
        flags |= BDRV_O_FORCE_SHARE;
    }

    qemuio_blk = blk_new_open(name, fmt, opts, flags, &local_err);
    if (!qemuio_blk) {
        error_report("can't open%s%s: %s", name ? " device " : "",
                     name ? name : "",
                     local_err ? error_get_pretty(local_err) : "failed");
        error_print_hint(local_err);
        error_free(local_err);
        return 1;
    }
    blk_set_enable_write_cache(qemuio_blk, !writethrough);
    g_free(cur_name);
    cur_name = g_strdup(name);
    if (cur_opts) {
        qemu_opts_del(cur_opts);
    }
    cur_opts = opts ? qemu_opts_clone(opts) : qemu_opts_new();
    cur_flags = flags;
    return 0;
}

/* ---- reopen: a new graph with changed flags/options replaces the old ---- */

static void reopen_help(void)
{
    printf(
"\n"
" Changes the open options of an already opened image\n"
"\n"
" Example:\n"
" 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image\n"
"\n"
" -r, -- Reopen the image read-only\n"
" -w, -- Reopen the image read-write\n"
" -c, -- Change the cache mode to the given value\n"
" -o, -- Changes block driver options (cf. 'open' command)\n"
"\n");
}

static int reopen_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t reopen_cmd = {
    .name = "reopen", .argmin = 0, .argmax = -1, .cfunc = reopen_f,
    .args = "[(-r|-w)] [-c cache] [-o options]",
    .oneline = "reopens an image with new options",
    .help = reopen_help,
};

static int reopen_f(BlockBackend *blk, int argc, char **argv)
{
    int flags = cur_flags;
    bool writethrough = !blk_enable_write_cache(blk);
    bool has_rw = false, has_cache = false;
    QemuOpts *opts = qemu_opts_new();  /* what -o changes */
    Error *local_err = NULL;
    int c, ret = 0;

    optind = 0;
    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            if (bdrv_parse_cache_mode(optarg, &flags, &writethrough) < 0) {
                error_report("Invalid cache option: %s", optarg);
                ret = -EINVAL;
                goto out;
            }
            has_cache = true;
            break;
        case 'o':
            if (qemu_opts_parse(opts, optarg, NULL, &local_err) < 0) {
                error_report_err(local_err);
                ret = -EINVAL;
                goto out;
            }
            break;
        case 'r':
        case 'w':
            if (has_rw) {
                error_report("Only one -r/-w option may be given");
                ret = -EINVAL;
                goto out;
            }
            has_rw = true;
            flags = c == 'r' ? (flags & ~BDRV_O_RDWR) : (flags | BDRV_O_RDWR);
            break;
        default:
            qemuio_command_usage(&reopen_cmd);
            ret = -EINVAL;
            goto out;
        }
    }
    if (optind != argc) {
        qemuio_command_usage(&reopen_cmd);
        ret = -EINVAL;
        goto out;
    }
    /* A flag and the option that says the same may not both be given. */
    if (has_rw && qemu_opt_has(opts, "read-only")) {
        error_report("Cannot set both -r/-w and 'read-only'");
        ret = -EINVAL;
        goto out;
    }
    if (has_cache && (qemu_opt_has(opts, "cache.direct") ||
                      qemu_opt_has(opts, "cache.no-flush"))) {
        error_report("Cannot set both -c and the cache options");
        ret = -EINVAL;
        goto out;
    }
    /* Snapshot mode's overlay is a temporary image that only exists
     * writable: it is not reopened (as before the in-place reopen). */
    if (cur_flags & BDRV_O_SNAPSHOT) {
        error_report("Cannot reopen an image opened in snapshot mode (-s)");
        ret = -ENOTSUP;
        goto out;
    }
    /* The requests started so far complete first; then the graph is
     * reopened in place (prepare, lock check, commit over the chain). */
    qemuio_wait_aio();
    ret = blk_reopen(blk, flags, qemu_opts_count(opts) ? opts : NULL,
                     &local_err);
    if (ret < 0) {
        error_report_err(local_err);
        ret = -EINVAL;
        goto out;
    }
    blk_set_enable_write_cache(blk, !writethrough);
    cur_flags = flags;
    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        qemu_opts_nth(opts, i, &name, &value);
        qemu_opt_set(cur_opts, name, value);
    }
out:
    qemu_opts_del(opts);
    return ret;
}

static void open_help(void)
{
    printf(
"\n"
" opens a new file in the requested mode\n"
"\n"
" Example:\n"
" 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached\n"
"\n"
" Opens a file for subsequent use by all of the other qemu-io commands.\n"
" -r, -- open file read-only\n"
" -s, -- use snapshot file\n"
" -C, -- use copy-on-read\n"
" -n, -- disable host cache, short for -t none\n"
" -U, -- force shared permissions\n"
" -k, -- use kernel AIO implementation (Linux only, prefer use of -i)\n"
" -i, -- use AIO mode (threads, native or io_uring)\n"
" -t, -- use the given cache mode for the image\n"
" -d, -- use the given discard mode for the image\n"
" -o, -- options to be given to the block driver"
"\n");
}

static int open_f(BlockBackend *blk, int argc, char **argv);

static const cmdinfo_t open_cmd = {
    .name = "open", .altname = "o", .cfunc = open_f,
    .argmin = 1, .argmax = -1, .flags = CMD_NOFILE_OK,
    .args = "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    .oneline = "open the file specified by path",
    .help = open_help,
};

/*
 * The options of the command line and of 'open' that set open flags: 1 if
 * c is one of them, 0 if not, -1 after printing why its value is bad.
 */
static int open_flag_option(int c, int *flags, bool *writethrough)
{
    switch (c) {
    case 's':
        *flags |= BDRV_O_SNAPSHOT;
        return 1;
    case 'n':
        *flags |= BDRV_O_NOCACHE;
        *writethrough = false;
        return 1;
    case 'C':
        *flags |= BDRV_O_COPY_ON_READ;
        return 1;
    case 'k':
        *flags |= BDRV_O_NATIVE_AIO;
        return 1;
    case 't':
        if (bdrv_parse_cache_mode(optarg, flags, writethrough) < 0) {
            error_report("Invalid cache option: %s", optarg);
            return -1;
        }
        return 1;
    case 'd':
        if (parse_discard_flags(optarg, flags) < 0) {
            error_report("Invalid discard option: %s", optarg);
            return -1;
        }
        return 1;
    case 'i':
        if (bdrv_parse_aio(optarg, flags) < 0) {
            error_report("Invalid aio option: %s", optarg);
            return -1;
        }
        return 1;
    default:
        return 0;
    }
}

static int open_f(BlockBackend *blk, int argc, char **argv)
{
    int flags = BDRV_O_UNMAP;
    bool readonly = false, writethrough = true, force_share = false;
    QemuOpts *opts = qemu_opts_new();
    Error *local_err = NULL;
    int c, ret;

    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        ret = open_flag_option(c, &flags, &writethrough);
        if (ret < 0) {
            ret = -EINVAL;
            goto out;
        }
        if (ret) {
            continue;
        }
        switch (c) {
        case 'r':
            readonly = true;
            break;
        case 'o':
            if (image_opts) {
                printf("--image-opts and 'open -o' are mutually exclusive\n");
                ret = -EINVAL;
                goto out;
            }
            if (qemu_opts_parse(opts, optarg, NULL, &local_err) < 0) {
                error_report_err(local_err);
                ret = -EINVAL;
                goto out;
            }
            break;
        case 'U':
            force_share = true;
            break;
        default:
            qemuio_command_usage(&open_cmd);
            ret = -EINVAL;
            goto out;
        }
    }

    if (!readonly) {
        flags |= BDRV_O_RDWR;
    }

    if (image_opts && optind == argc - 1) {
        if (qemu_opts_parse(opts, argv[optind], NULL, &local_err) < 0) {
            error_report_err(local_err);
            ret = -EINVAL;
            goto out;
        }
        optind++;
    }

    if (optind == argc - 1) {
        ret = openfile(argv[optind], NULL, flags, writethrough, force_share,
                       qemu_opts_count(opts) ? opts : NULL);
    } else if (optind == argc) {
        ret = openfile(NULL, NULL, flags, writethrough, force_share,
                       qemu_opts_count(opts) ? opts : NULL);
    } else {
        qemuio_command_usage(&open_cmd);
        ret = -EINVAL;
        goto out;
    }
    ret = ret ? -EINVAL : 0;
out:
    qemu_opts_del(opts);
    return ret;
}

static int close_f(BlockBackend *blk, int argc, char **argv)
{
    qemuio_wait_aio();
    blk_unref(qemuio_blk);
    qemuio_blk = NULL;
    return 0;
}

static const cmdinfo_t close_cmd = {
    .name = "close", .altname = "c", .cfunc = close_f,
    .oneline = "close the current open file",
};

static int quit_f(BlockBackend *blk, int argc, char **argv)
{
    quit_qemu_io = true;
    return 0;
}

static const cmdinfo_t quit_cmd = {
    .name = "quit", .altname = "q", .cfunc = quit_f,
    .argmin = -1, .argmax = -1, .flags = CMD_FLAG_GLOBAL,
    .oneline = "exit the program",
};

/* ---- reading commands from stdin ---- */

static GString *inbuf;
static bool in_eof;
static bool stdin_ready;

static void stdin_readable(void *opaque)
{
    stdin_ready = true;
}

/*
 * Wait until stdin has data, running the event loop meanwhile so that aio
 * requests complete (and report) while we wait for the next command.
 */
static void wait_for_stdin(void)
{
    AioContext *ctx = qemu_get_aio_context();
    struct stat st;
    bool pollable = isatty(STDIN_FILENO) ||
        (fstat(STDIN_FILENO, &st) == 0 &&
         (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)));

    if (!pollable) {
        /* Regular files are always readable; just run what is ready. */
        while (aio_poll(ctx, false)) {
            /* nothing */
        }
        return;
    }
    stdin_ready = false;
    aio_set_fd_handler(ctx, STDIN_FILENO, stdin_readable, NULL, NULL);
    while (!stdin_ready) {
        aio_poll(ctx, true);
    }
    aio_set_fd_handler(ctx, STDIN_FILENO, NULL, NULL, NULL);
}

/* The next line of stdin without its '\n' (g_free), or NULL at the end. */
static char *fetch_line(void)
{
    char chunk[4096];

    if (!inbuf) {
        inbuf = g_string_new(NULL);
    }
    for (;;) {
        char *nl = memchr(inbuf->str, '\n', inbuf->len);
        ssize_t n;

        if (nl) {
            size_t len = nl - inbuf->str;
            char *line = g_strndup(inbuf->str, len);

            g_string_erase(inbuf, 0, len + 1);
            return line;
        }
        if (in_eof) {
            char *line;

            if (!inbuf->len) {
                return NULL;
            }
            line = g_strndup(inbuf->str, inbuf->len);
            g_string_truncate(inbuf, 0);
            return line;
        }

        wait_for_stdin();
        n = read(STDIN_FILENO, chunk, sizeof(chunk));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            in_eof = true;
        } else {
            g_string_append_len(inbuf, chunk, n);
        }
    }
}

/* ---- main ---- */

static int command_loop(char **cmdline, int ncmdline)
{
    int i, ret, last_error = 0;
    char *input;

    if (ncmdline) {
        for (i = 0; !quit_qemu_io && i < ncmdline; i++) {
            ret = qemuio_command(qemuio_blk, cmdline[i]);
            if (ret < 0) {
                last_error = ret;
            }
        }
        return last_error;
    }

    while (!quit_qemu_io) {
        printf("%s> ", progname);
        fflush(stdout);
        input = fetch_line();
        if (!input) {
            break;
        }
        ret = qemuio_command(qemuio_blk, input);
        g_free(input);
        if (ret < 0) {
            last_error = ret;
        }
    }
    return last_error;
}

static void usage(const char *name)
{
    printf(
"Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
"QEMU Disk exerciser\n"
"\n"
"  --object OBJECTDEF   define an object such as 'secret' for\n"
"                       passwords and/or encryption keys\n"
"  --image-opts         treat file as option string\n"
"  -c, --cmd STRING     execute command with its arguments\n"
"                       from the given string\n"
"  -f, --format FMT     specifies the block driver to use\n"
"  -r, --read-only      export read-only\n"
"  -s, --snapshot       use snapshot file\n"
"  -n, --nocache        disable host cache, short for -t none\n"
"  -C, --copy-on-read   enable copy-on-read\n"
"  -m, --misalign       misalign allocations for O_DIRECT\n"
"  -k, --native-aio     use kernel AIO implementation\n"
"                       (Linux only, prefer use of -i)\n"
"  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n"
"  -t, --cache=MODE     use the given cache mode for the image\n"
"  -d, --discard=MODE   use the given discard mode for the image\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                       specify tracing options\n"
"                       see qemu-img(1) man page for full description\n"
"  -U, --force-share    force shared permissions\n"
"  --allow-header-protocols\n"
"                       let names read from image headers (backing and data\n"
"                       files) use network protocols, not only local files\n"
"  -h, --help           display this help and exit\n"
"  -V, --version        output version information and exit\n"
"\n"
"See '%s -c help' for information on available commands.\n",
           name, name);
}

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS = 257,
    OPTION_ALLOW_HEADER_PROTOCOLS = 258,
};

static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "cmd", required_argument, NULL, 'c' },
    { "format", required_argument, NULL, 'f' },
    { "read-only", no_argument, NULL, 'r' },
    { "snapshot", no_argument, NULL, 's' },
    { "nocache", no_argument, NULL, 'n' },
    { "copy-on-read", no_argument, NULL, 'C' },
    { "misalign", no_argument, NULL, 'm' },
    { "native-aio", no_argument, NULL, 'k' },
    { "aio", required_argument, NULL, 'i' },
    { "discard", required_argument, NULL, 'd' },
    { "cache", required_argument, NULL, 't' },
    { "trace", required_argument, NULL, 'T' },
    { "object", required_argument, NULL, OPTION_OBJECT },
    { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
    { "force-share", no_argument, NULL, 'U' },
    { "allow-header-protocols", no_argument, NULL,
      OPTION_ALLOW_HEADER_PROTOCOLS },
    { NULL, 0, NULL, 0 }
};

int main(int argc, char **argv)
{
    int flags = BDRV_O_UNMAP;
    bool readonly = false, writethrough = true, force_share = false;
    const char *format = NULL;
    GPtrArray *cmdline = g_ptr_array_new();
    int c, ret;

    progname = g_path_get_basename(argv[0]);
    error_set_progname(argv[0]);

    while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U",
                            long_options, NULL)) != -1) {
        ret = open_flag_option(c, &flags, &writethrough);
        if (ret < 0) {
            exit(1);
        }
        if (ret) {
            continue;
        }
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'c':
            g_ptr_array_add(cmdline, optarg);
            break;
        case 'r':
            readonly = true;
            break;
        case 'm':
            qemuio_misalign = true;
            break;
        case 'T':
            /* Tracing is not implemented; accepted for compatibility. */
            break;
        case 'V':
            printf("%s version " QEMU_IO_VERSION "\n", progname);
            exit(0);
        case 'h':
            usage(progname);
            exit(0);
        case 'U':
            force_share = true;
            break;
        case OPTION_OBJECT: {
            Error *err = NULL;

            if (user_object_add(optarg, &err) < 0) {
                error_report_err(err);
                exit(1);
            }
            break;
        }
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_ALLOW_HEADER_PROTOCOLS:
            /* docs/image-names.md; 'open -o allow-header-protocols=on' */
            flags |= BDRV_O_HEADER_PROTOCOLS;
            break;
        default:
            usage(progname);
            exit(1);
        }
    }

    if (argc - optind > 1) {
        usage(progname);
        exit(1);
    }
    if (format && image_opts) {
        error_report("--image-opts and -f are mutually exclusive");
        exit(1);
    }

    bdrv_init();
    qemuio_add_command(&open_cmd);
    qemuio_add_command(&close_cmd);
    qemuio_add_command(&reopen_cmd);
    qemuio_add_command(&quit_cmd);

    if (!readonly) {
        flags |= BDRV_O_RDWR;
    }

    if (argc - optind == 1) {
        if (image_opts) {
            QemuOpts *opts = qemu_opts_new();
            Error *local_err = NULL;

            if (qemu_opts_parse(opts, argv[optind], NULL, &local_err) < 0) {
                error_report_err(local_err);
                exit(1);
            }
            ret = openfile(NULL, NULL, flags, writethrough, force_share,
                           opts);
            qemu_opts_del(opts);
        } else {
            ret = openfile(argv[optind], format, flags, writethrough,
                           force_share, NULL);
        }
        if (ret) {
            exit(1);
        }
    }

    ret = command_loop((char **)cmdline->pdata, cmdline->len);

    /* Let every outstanding request complete (and report) before exiting. */
    qemuio_wait_aio();
    if (qemuio_blk) {
        blk_unref(qemuio_blk);
        qemuio_blk = NULL;
    }
    g_ptr_array_free(cmdline, true);
    g_free(progname);
    return ret ? 1 : 0;
}
