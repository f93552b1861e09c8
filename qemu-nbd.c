/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qemu-nbd: export one image over NBD with the command line of QEMU 7.2's
 * qemu-nbd (docs/nbd.md). The server itself is nbd/server.c; the image is
 * reached only through nbd/backend.c.
 */
#include "util/osdep.h"
#include "util/error.h"
#include "util/cutils.h"
#include "util/option.h"
#include "util/aio.h"
#include "util/socket.h"
#include "util/object.h"
#include "util/tls.h"
#include "block.h"
#include "nbd/nbd-proto.h"
#include "nbd/server.h"
#include "nbd/client.h"
#include <getopt.h>
#include <signal.h>

#define QEMU_NBD_VERSION "0.1.0"

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS,
    OPTION_TLSCREDS,
    OPTION_TLSAUTHZ,
    OPTION_FORK,
    OPTION_PID_FILE,
    OPTION_CACHE,
    OPTION_AIO,
    OPTION_DISCARD,
    OPTION_DETECT_ZEROES,
    OPTION_SELINUX_LABEL,
    OPTION_HANDSHAKE_LIMIT,
    OPTION_REQUEST_TIMEOUT,
    OPTION_ALLOW_HEADER_PROTOCOLS,
    OPTION_TLSHOSTNAME,
};

static bool quit;
static bool persistent;
static int sig_pipe[2] = { -1, -1 };

static void usage(const char *name)
{
    printf(
"Usage: %s [OPTIONS] FILE\n"
"  or:  %s -L [OPTIONS]\n"
"QEMU Disk Network Block Device Utility\n"
"\n"
"  -h, --help                display this help and exit\n"
"  -V, --version             output version information and exit\n"
"\n"
"Connection properties:\n"
"  -p, --port=PORT           port to listen on (default `%d')\n"
"  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
"  -k, --socket=PATH         path to the unix socket\n"
"  -e, --shared=NUM          device can be shared by NUM clients (default '1')\n"
"  -t, --persistent          don't exit on the last connection\n"
"  -v, --verbose             display extra debugging information\n"
"  -x, --export-name=NAME    expose export by name (default is empty string)\n"
"  -D, --description=TEXT    export a human-readable description\n"
"\n"
"Exposing part of the image:\n"
"  -o, --offset=OFFSET       offset into the image\n"
"  -A, --allocation-depth    expose the allocation depth\n"
"  -B, --bitmap=NAME         expose a persistent dirty bitmap (not supported)\n"
"\n"
"General purpose options:\n"
"  -L, --list                list exports available from another NBD server\n"
"  --object type,id=ID,...   define an object such as 'secret' or\n"
"                            'tls-creds-x509' for providing passwords and/or\n"
"                            TLS credentials\n"
"  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
"  --tls-hostname=HOST       with -L: check the server's certificate against\n"
"                            HOST (default: the -b address)\n"
"  --tls-authz=ID            TLS authorization (not supported)\n"
"  -T, --trace ...           accepted and ignored\n"
"  --fork                    fork off the server process and exit the parent\n"
"                            once the server is running\n"
"  --pid-file=PATH           store the server's process ID in the given file\n"
"  --handshake-limit=SECS    drop clients that do not finish negotiating in\n"
"                            time (default 10, 0: no limit)\n"
"  --request-timeout=SECS    drop clients that send a request or read a reply\n"
"                            too slowly (default 30, 0: no limit)\n"
"  --allow-header-protocols  names in image headers may use any protocol\n"
"\n"
"Kernel NBD client support (not supported: needs the nbd kernel module):\n"
"  -c, --connect=DEV         connect FILE to the local NBD device DEV\n"
"  -d, --disconnect          disconnect the specified device\n"
"\n"
"Block device options:\n"
"  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
"  -r, --read-only           export read-only\n"
"  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
"                            file with backing_file=FILE, redirect the write to\n"
"                            the temporary one\n"
"  -l, --load-snapshot=SNAPSHOT_PARAM\n"
"                            load an internal snapshot inside FILE and export it\n"
"                            as an read-only device, SNAPSHOT_PARAM format is\n"
"                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"                            '[ID_OR_NAME]'\n"
"  -n, --nocache             disable host cache\n"
"      --cache=MODE          set cache mode used to access the disk image, the\n"
"                            valid options are: 'none', 'writeback' (default),\n"
"                            'writethrough', 'directsync' and 'unsafe'\n"
"      --aio=MODE            set AIO mode (native or threads)\n"
"      --discard=MODE        set discard mode (ignore, unmap)\n"
"      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
"      --image-opts          treat FILE as a full set of image options\n",
    name, name, NBD_DEFAULT_PORT);
}

static void sigterm_handler(int sig)
{
    int saved = errno;
    char c = 0;

    (void)sig;
    if (write(sig_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a wake-up is pending anyway */
    }
    errno = saved;
}

static NBDServer *server;

static void sig_pipe_read(void *opaque)
{
    char buf[16];

    (void)opaque;
    while (read(sig_pipe[0], buf, sizeof(buf)) > 0) {
    }
    quit = true;
}

static void client_gone(void *opaque, unsigned clients)
{
    (void)opaque;
    if (!persistent && clients == 0) {
        quit = true;
    }
}

static int parse_secs(const char *arg, const char *what, int64_t *ns)
{
    int64_t v;

    if (qemu_strtoi64(arg, NULL, 10, &v) < 0 || v < 0 || v > 86400) {
        error_report("Invalid %s '%s'", what, arg);
        return -1;
    }
    *ns = v * 1000000000LL;
    return 0;
}

/*
 * -l ARG: "snapshot.id=ID,snapshot.name=NAME" (either key may be left out)
 * goes to *opts; anything else is one id or name. False (after a message)
 * if the keyed form does not parse.
 */
static bool parse_load_snapshot(const char *arg, QemuOpts **opts,
                                const char **id_or_name)
{
    Error *err = NULL;

    qemu_opts_del(*opts);
    *opts = NULL;
    *id_or_name = NULL;
    if (!g_str_has_prefix(arg, "snapshot.")) {
        *id_or_name = arg;
        return true;
    }
    *opts = bdrv_snapshot_param_parse(arg, &err);
    if (!*opts) {
        error_report_err(err);
        error_report("Failed in parsing snapshot param `%s'", arg);
        return false;
    }
    return true;
}

static void unsupported(const char *what)
{
    error_report("%s", what);
    exit(EXIT_FAILURE);
}

/* The transmission flags QEMU's qemu-nbd -L names, by bit. */
static const char *const list_flag_names[] = {
    [1] = "readonly", [2] = "flush", [3] = "fua", [4] = "rotational",
    [5] = "trim", [6] = "zeroes", [7] = "df", [8] = "multi",
    [9] = "resize", [10] = "cache", [11] = "fast-zero",
};

static void qemu_nbd_list_print(GPtrArray *list)
{
    printf("exports available: %u\n", list->len);
    for (guint i = 0; i < list->len; i++) {
        NBDExportDesc *e = g_ptr_array_index(list, i);

        printf(" export: '%s'\n", e->name);
        if (e->description && *e->description) {
            printf("  description: %s\n", e->description);
        }
        printf("  size:  %" PRIu64 "\n", e->size);
        printf("  flags: 0x%x (", e->flags);
        for (unsigned b = 0; b < G_N_ELEMENTS(list_flag_names); b++) {
            if ((e->flags & (1u << b)) && list_flag_names[b]) {
                printf(" %s", list_flag_names[b]);
            }
        }
        printf(" )\n");
        if (e->min_block) {
            printf("  min block: %" PRIu32 "\n", e->min_block);
            printf("  opt block: %" PRIu32 "\n", e->opt_block);
            printf("  max block: %" PRIu32 "\n", e->max_block);
        }
        if (e->structured) {
            printf("  available meta contexts: %u\n", e->contexts->len);
            for (guint j = 0; j < e->contexts->len; j++) {
                printf("   %s\n", (char *)g_ptr_array_index(e->contexts, j));
            }
        }
    }
}

typedef struct ListJob {
    SockAddr addr;
    TLSCreds *tls;
    const char *tls_hostname;
    GPtrArray *list;
    Error *err;
    bool done;
} ListJob;

static void coroutine_fn qemu_nbd_list_co(void *opaque)
{
    ListJob *job = opaque;

    job->list = nbd_co_list_exports(&job->addr, job->tls, job->tls_hostname,
                                    &job->err);
    job->done = true;
}

/* -L: list the exports of the server at -k, or -b/-p. Exit status. */
static int qemu_nbd_list(const char *sockpath, const char *bindto, int port,
                         const char *tlscredsid, const char *tlshostname)
{
    ListJob job = { .tls_hostname = tlshostname };
    Error *err = NULL;

    if (tlscredsid) {
        job.tls = tls_creds_lookup(tlscredsid, false, &err);
        if (!job.tls) {
            error_report("Failed to get TLS creds: %s", error_get_pretty(err));
            error_free(err);
            return EXIT_FAILURE;
        }
    }
    if (sockpath) {
        sock_addr_init_unix(&job.addr, sockpath);
    } else {
        sock_addr_init_tcp(&job.addr, bindto ? bindto : "0.0.0.0", port);
        if (job.tls && !job.tls_hostname) {
            job.tls_hostname = job.addr.host;
        }
    }
    bdrv_init();
    qemu_coroutine_enter(qemu_coroutine_create(qemu_nbd_list_co, &job));
    AIO_WAIT_WHILE(!job.done);
    sock_addr_clear(&job.addr);
    if (!job.list) {
        error_report_err(job.err);
        return EXIT_FAILURE;
    }
    qemu_nbd_list_print(job.list);
    nbd_export_list_free(job.list);
    return EXIT_SUCCESS;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "bind", required_argument, NULL, 'b' },
        { "port", required_argument, NULL, 'p' },
        { "socket", required_argument, NULL, 'k' },
        { "offset", required_argument, NULL, 'o' },
        { "read-only", no_argument, NULL, 'r' },
        { "allocation-depth", no_argument, NULL, 'A' },
        { "bitmap", required_argument, NULL, 'B' },
        { "connect", required_argument, NULL, 'c' },
        { "disconnect", no_argument, NULL, 'd' },
        { "list", no_argument, NULL, 'L' },
        { "snapshot", no_argument, NULL, 's' },
        { "load-snapshot", required_argument, NULL, 'l' },
        { "nocache", no_argument, NULL, 'n' },
        { "cache", required_argument, NULL, OPTION_CACHE },
        { "aio", required_argument, NULL, OPTION_AIO },
        { "discard", required_argument, NULL, OPTION_DISCARD },
        { "detect-zeroes", required_argument, NULL, OPTION_DETECT_ZEROES },
        { "shared", required_argument, NULL, 'e' },
        { "format", required_argument, NULL, 'f' },
        { "persistent", no_argument, NULL, 't' },
        { "verbose", no_argument, NULL, 'v' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "export-name", required_argument, NULL, 'x' },
        { "description", required_argument, NULL, 'D' },
        { "tls-creds", required_argument, NULL, OPTION_TLSCREDS },
        { "tls-authz", required_argument, NULL, OPTION_TLSAUTHZ },
        { "tls-hostname", required_argument, NULL, OPTION_TLSHOSTNAME },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "trace", required_argument, NULL, 'T' },
        { "fork", no_argument, NULL, OPTION_FORK },
        { "pid-file", required_argument, NULL, OPTION_PID_FILE },
        { "selinux-label", required_argument, NULL, OPTION_SELINUX_LABEL },
        { "handshake-limit", required_argument, NULL, OPTION_HANDSHAKE_LIMIT },
        { "request-timeout", required_argument, NULL, OPTION_REQUEST_TIMEOUT },
        { "allow-header-protocols", no_argument, NULL,
          OPTION_ALLOW_HEADER_PROTOCOLS },
        { NULL, 0, NULL, 0 }
    };
    const char *bindto = NULL, *sockpath = NULL, *fmt = NULL;
    const char *pid_file = NULL, *tlscredsid = NULL, *tlshostname = NULL;
    const char *sn_id_or_name = NULL;
    QemuOpts *sn_opts = NULL;
    bool list = false, per_device = false;
    const char *unsup = NULL;
    int port = NBD_DEFAULT_PORT;
    int flags = BDRV_O_RDWR;
    bool writethrough = false, image_opts = false, do_fork = false;
    bool seen_cache = false, seen_aio = false, seen_discard = false;
    NBDServerConf sconf = {
        .name = "",
        .max_clients = 1,
        .max_pending = 16,
        .max_requests = 16,
        .handshake_ns = 10 * 1000000000LL,
        .io_ns = 30 * 1000000000LL,
    };
    NBDBackendConf bconf = { 0 };
    SockListener *listener;
    SockAddr addr;
    NBDBackend *be;
    Error *err = NULL;
    QemuOpts *opts = NULL;
    int ready_pipe[2] = { -1, -1 };
    int ch;
    int64_t v;

    error_set_progname(argv[0]);
    signal(SIGPIPE, SIG_IGN);

    while ((ch = getopt_long(argc, argv, "-hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L",
                             lopts, NULL)) != -1) {
        switch (ch) {
        case 1:
            if (bconf.filename || opts) {
                error_report("Too many arguments");
                exit(EXIT_FAILURE);
            }
            bconf.filename = optarg;
            break;
        case 'h':
            usage(error_get_progname());
            exit(EXIT_SUCCESS);
        case 'V':
            printf("qemu-nbd " QEMU_NBD_VERSION "\n");
            exit(EXIT_SUCCESS);
        case 'b':
            bindto = optarg;
            break;
        case 'p':
            if (qemu_strtoi(optarg, NULL, 10, &port) < 0 ||
                port < 1 || port > 65535) {
                error_report("Port number must be between 1 and 65535");
                exit(EXIT_FAILURE);
            }
            break;
        case 'k':
            sockpath = optarg;
            if (sockpath[0] != '/') {
                error_report("socket path must be absolute");
                exit(EXIT_FAILURE);
            }
            break;
        case 'o':
            per_device = true;
            if (qemu_strtoi64(optarg, NULL, 0, &v) < 0 || v < 0) {
                error_report("Invalid offset '%s'", optarg);
                exit(EXIT_FAILURE);
            }
            bconf.offset = v;
            break;
        case 'r':
            flags &= ~BDRV_O_RDWR;
            break;
        case 's':
            flags |= BDRV_O_SNAPSHOT;
            break;
        case 'n':
            per_device = true;
            optarg = (char *)"none";
            /* fall through */
        case OPTION_CACHE:
            per_device = true;
            if (seen_cache) {
                error_report("-n and --cache can only be specified once");
                exit(EXIT_FAILURE);
            }
            seen_cache = true;
            if (bdrv_parse_cache_mode(optarg, &flags, &writethrough) < 0) {
                error_report("Invalid cache mode `%s'", optarg);
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_AIO:
            per_device = true;
            if (seen_aio) {
                error_report("--aio can only be specified once");
                exit(EXIT_FAILURE);
            }
            seen_aio = true;
            if (bdrv_parse_aio(optarg, &flags) < 0) {
                error_report("Invalid aio mode '%s'", optarg);
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_DISCARD:
            per_device = true;
            if (seen_discard) {
                error_report("--discard can only be specified once");
                exit(EXIT_FAILURE);
            }
            seen_discard = true;
            if (!strcmp(optarg, "ignore") || !strcmp(optarg, "off")) {
                flags &= ~BDRV_O_UNMAP;
            } else if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on")) {
                flags |= BDRV_O_UNMAP;
            } else {
                error_report("Invalid discard mode `%s'", optarg);
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_DETECT_ZEROES:
            if (!strcmp(optarg, "off")) {
                bconf.detect_zeroes = NBD_DETECT_ZEROES_OFF;
            } else if (!strcmp(optarg, "on")) {
                bconf.detect_zeroes = NBD_DETECT_ZEROES_ON;
            } else if (!strcmp(optarg, "unmap")) {
                bconf.detect_zeroes = NBD_DETECT_ZEROES_UNMAP;
            } else {
                error_report("Invalid detect-zeroes mode `%s'", optarg);
                exit(EXIT_FAILURE);
            }
            break;
        case 'e':
            if (qemu_strtoi64(optarg, NULL, 10, &v) < 0 || v < 0 ||
                v > 1000) {
                error_report("Invalid shared device number '%s'", optarg);
                exit(EXIT_FAILURE);
            }
            sconf.max_clients = v;
            break;
        case 'f':
            per_device = true;
            fmt = optarg;
            break;
        case 't':
            persistent = true;
            break;
        case 'v':
            sconf.verbose = true;
            break;
        case 'x':
            per_device = true;
            if (strlen(optarg) > NBD_MAX_STRING_SIZE) {
                error_report("export name '%s' too long", optarg);
                exit(EXIT_FAILURE);
            }
            sconf.name = optarg;
            break;
        case 'D':
            per_device = true;
            if (strlen(optarg) > NBD_MAX_STRING_SIZE) {
                error_report("export description '%s' too long", optarg);
                exit(EXIT_FAILURE);
            }
            sconf.description = optarg;
            break;
        case 'A':
            per_device = true;
            sconf.allocation_depth = true;
            break;
        case 'T':
            break;      /* tracing is not implemented; accepted */
        case OPTION_FORK:
            do_fork = true;
            break;
        case OPTION_PID_FILE:
            pid_file = optarg;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_HANDSHAKE_LIMIT:
            if (parse_secs(optarg, "handshake limit", &sconf.handshake_ns)) {
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_REQUEST_TIMEOUT:
            if (parse_secs(optarg, "request timeout", &sconf.io_ns)) {
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_ALLOW_HEADER_PROTOCOLS:
            flags |= BDRV_O_HEADER_PROTOCOLS;
            break;
        /* Failures are reported after parsing: -L reports them as QEMU */
        case 'B':
            per_device = true;
            unsup = unsup ? unsup : "--bitmap: dirty bitmaps are not "
                    "supported by this block layer";
            break;
        case 'l':
            per_device = true;
            if (!parse_load_snapshot(optarg, &sn_opts, &sn_id_or_name)) {
                exit(EXIT_FAILURE);
            }
            flags &= ~BDRV_O_RDWR;      /* -l implies -r, as in QEMU */
            break;
        case 'c':
        case 'd':
            per_device = true;
            unsup = unsup ? unsup : "--connect/--disconnect need the Linux "
                    "nbd kernel module (/dev/nbdX), which this qemu-nbd does "
                    "not drive; use an NBD client such as nbd-client or "
                    "qemu-io instead";
            break;
        case 'L':
            list = true;
            break;
        case OPTION_TLSHOSTNAME:
            tlshostname = optarg;
            break;
        case OPTION_TLSCREDS:
            if (!tls_available()) {
                unsupported("TLS is not supported: this qemu-nbd was built "
                            "without GnuTLS");
            }
            tlscredsid = optarg;
            break;
        case OPTION_TLSAUTHZ:
            unsupported("--tls-authz is not supported (no authorization "
                        "objects in this build)");
            break;
        case OPTION_OBJECT:
            if (user_object_add(optarg, &err) < 0) {
                error_report_err(err);
                exit(EXIT_FAILURE);
            }
            break;
        case OPTION_SELINUX_LABEL:
            unsupported("--selinux-label is not supported");
            break;
        default:
            error_report("Try `%s --help' for more information.",
                         error_get_progname());
            exit(EXIT_FAILURE);
        }
    }

    if (tlshostname && !tlscredsid) {
        error_report("--tls-hostname is not permitted without --tls-creds");
        exit(EXIT_FAILURE);
    }
    if (list) {
        if (bconf.filename) {
            error_report("List mode is incompatible with a file name");
            exit(EXIT_FAILURE);
        }
        if (per_device) {
            error_report("List mode is incompatible with per-device settings");
            exit(EXIT_FAILURE);
        }
        if (do_fork) {
            error_report("List mode is incompatible with forking");
            exit(EXIT_FAILURE);
        }
        exit(qemu_nbd_list(sockpath, bindto, port, tlscredsid, tlshostname));
    }
    if (unsup) {
        unsupported(unsup);
    }
    if (tlshostname) {
        error_report("TLS hostname is only supported with export list");
        exit(EXIT_FAILURE);
    }
    if (!bconf.filename) {
        error_report("Expected one argument (filename)");
        exit(EXIT_FAILURE);
    }
    if (image_opts && fmt) {
        error_report("--image-opts and -f are mutually exclusive");
        exit(EXIT_FAILURE);
    }
    if (sockpath && (bindto || port != NBD_DEFAULT_PORT)) {
        error_report("-k cannot be used with -b or -p");
        exit(EXIT_FAILURE);
    }
    if (bconf.detect_zeroes == NBD_DETECT_ZEROES_UNMAP &&
        !(flags & BDRV_O_UNMAP)) {
        error_report("setting detect-zeroes to unmap is not allowed "
                     "without setting discard operation to unmap");
        exit(EXIT_FAILURE);
    }
    if (tlscredsid) {
        sconf.tls = tls_creds_lookup(tlscredsid, true, &err);
        if (!sconf.tls) {
            error_report("Failed to get TLS creds: %s", error_get_pretty(err));
            exit(EXIT_FAILURE);
        }
    }
    if (sconf.allocation_depth && bconf.offset) {
        /* Fine: depth is queried through the same window. */
    }
    /* Safe for several connections: every connection's requests go to
     * the same graph in this process, so a flush on one covers writes
     * completed on all. Offered only when several clients are served at
     * once, as QEMU 7.2 (-e 1 -r too): a client that opens more
     * connections after seeing it (nbdcopy opens four) would otherwise
     * wait forever for the one slot its first connection holds. */
    sconf.multi_conn = sconf.max_clients != 1;

    if (do_fork) {
        pid_t pid;

        if (pipe(ready_pipe) < 0) {
            error_report("pipe: %s", strerror(errno));
            exit(EXIT_FAILURE);
        }
        pid = fork();
        if (pid < 0) {
            error_report("fork: %s", strerror(errno));
            exit(EXIT_FAILURE);
        }
        if (pid > 0) {
            char c;

            close(ready_pipe[1]);
            /* The child writes one byte once it serves; EOF: it failed
             * (and said why on the shared stderr). */
            if (read(ready_pipe[0], &c, 1) == 1) {
                exit(EXIT_SUCCESS);
            }
            exit(EXIT_FAILURE);
        }
        close(ready_pipe[0]);
        setsid();
    }

    bdrv_init();
    if (image_opts) {
        opts = qemu_opts_new();
        if (qemu_opts_parse(opts, bconf.filename, NULL, &err) < 0) {
            error_report_err(err);
            exit(EXIT_FAILURE);
        }
        bconf.filename = NULL;
        bconf.opts = opts;
    }
    bconf.fmt = fmt;
    bconf.flags = flags;
    bconf.writethrough = writethrough;
    be = nbd_backend_open(&bconf, &err);
    if (!be) {
        error_report("Failed to blk_new_open '%s': %s",
                     image_opts ? argv[argc - 1] : bconf.filename,
                     error_get_pretty(err));
        exit(EXIT_FAILURE);
    }
    if (sn_opts || sn_id_or_name) {
        if (nbd_backend_load_snapshot(be,
                                      sn_opts ? qemu_opt_get(sn_opts, "snapshot.id") : NULL,
                                      sn_opts ? qemu_opt_get(sn_opts, "snapshot.name") : NULL,
                                      sn_id_or_name, &err) < 0) {
            error_prepend(&err, "Failed to load snapshot: ");
            error_report_err(err);
            nbd_backend_close(be);      /* LeakSanitizer counts it */
            exit(EXIT_FAILURE);
        }
        qemu_opts_del(sn_opts);
    }
    sconf.be = be;
    sconf.client_gone = client_gone;
    server = nbd_server_new(&sconf);

    if (sockpath) {
        sock_addr_init_unix(&addr, sockpath);
    } else {
        sock_addr_init_tcp(&addr, bindto ? bindto : "0.0.0.0", port);
    }
    listener = sock_listen(&addr, nbd_server_accept, server, &err);
    if (!listener) {
        error_report_err(err);
        exit(EXIT_FAILURE);
    }

    if (pipe(sig_pipe) < 0 ||
        fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK) < 0 ||
        fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK) < 0) {
        error_report("pipe: %s", strerror(errno));
        exit(EXIT_FAILURE);
    }
    aio_set_fd_handler(qemu_get_aio_context(), sig_pipe[0], sig_pipe_read,
                       NULL, NULL);
    {
        struct sigaction sa = { .sa_handler = sigterm_handler };

        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
    }

    if (pid_file) {
        FILE *f = fopen(pid_file, "w");

        if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
            error_report("Failed to write pid file '%s': %s", pid_file,
                         strerror(errno));
            exit(EXIT_FAILURE);
        }
    }
    if (do_fork) {
        char c = 0;
        int fd = open("/dev/null", O_RDWR);

        if (write(ready_pipe[1], &c, 1) != 1) {
            exit(EXIT_FAILURE);
        }
        close(ready_pipe[1]);
        if (fd >= 0) {
            dup2(fd, STDIN_FILENO);
            dup2(fd, STDOUT_FILENO);
            if (!sconf.verbose) {
                dup2(fd, STDERR_FILENO);
            }
            close(fd);
        }
    }

    while (!quit) {
        aio_poll(qemu_get_aio_context(), true);
    }

    /* Stop: no new connection, no new request; what was read completes. */
    sock_listener_free(listener);
    nbd_server_shutdown(server);
    AIO_WAIT_WHILE(nbd_server_clients(server) > 0);
    nbd_server_free(server);
    nbd_backend_close(be);
    aio_set_fd_handler(qemu_get_aio_context(), sig_pipe[0], NULL, NULL, NULL);
    if (pid_file) {
        unlink(pid_file);
    }
    if (opts) {
        qemu_opts_del(opts);
    }
    sock_addr_clear(&addr);
    return EXIT_SUCCESS;
}
