/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * TLS credentials and handshakes over GnuTLS (util/tls.h); without GnuTLS
 * every entry point fails cleanly.
 */
#include "config-host.h"
#include "util/tls.h"
#include "util/option.h"
#include <arpa/inet.h>

#ifdef CONFIG_GNUTLS
#include <dlfcn.h>
#include <pthread.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/*
 * GnuTLS is loaded with dlopen when the first TLS credentials object is
 * created. Linked into the tools, it and its dependencies cost every start
 * of qemu-img, qemu-io and qemu-nbd about 4 million instructions of
 * relocations and library constructors (qemu-img info of a raw file: 0.6
 * million without it), for a feature few runs use. Every call below goes
 * through this table, with GnuTLS's own prototypes (typeof).
 */
#define TLS_LIB_SYMBOLS(X) \
    X(gnutls_bye) X(gnutls_certificate_allocate_credentials) \
    X(gnutls_certificate_free_credentials) X(gnutls_certificate_get_peers) \
    X(gnutls_certificate_server_set_request) \
    X(gnutls_certificate_set_x509_crl_file) \
    X(gnutls_certificate_set_x509_key_file) \
    X(gnutls_certificate_set_x509_trust_file) \
    X(gnutls_certificate_verification_status_print) \
    X(gnutls_certificate_verify_peers2) X(gnutls_certificate_verify_peers3) \
    X(gnutls_credentials_set) X(gnutls_deinit) X(gnutls_error_is_fatal) \
    X(gnutls_handshake) X(gnutls_handshake_set_timeout) X(gnutls_init) \
    X(gnutls_priority_set_direct) X(gnutls_record_check_pending) \
    X(gnutls_record_get_direction) X(gnutls_record_recv) \
    X(gnutls_record_send) X(gnutls_server_name_set) \
    X(gnutls_set_default_priority) X(gnutls_strerror) \
    X(gnutls_transport_set_int2)

#define TLS_LIB_MEMBER(name) __typeof__(name) *name;
static struct {
    TLS_LIB_SYMBOLS(TLS_LIB_MEMBER)
    gnutls_free_function *free_fn;     /* gnutls_free is a variable */
} tls_lib;
#undef TLS_LIB_MEMBER

#define TLS_SONAME "libgnutls.so.30"

static int tls_lib_load(Error **errp)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static bool loaded;
    void *h;
    int ret = 0;

    pthread_mutex_lock(&lock);
    if (loaded) {
        goto out;
    }
    h = dlopen(TLS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        error_setg(errp, "TLS: cannot load %s (Debian package libgnutls30): "
                   "%s", TLS_SONAME, dlerror());
        ret = -ENOTSUP;
        goto out;
    }
#define TLS_LIB_RESOLVE(name) \
    tls_lib.name = (__typeof__(name) *)dlsym(h, #name); \
    if (!tls_lib.name) { \
        error_setg(errp, "TLS: %s lacks %s", TLS_SONAME, #name); \
        ret = -ENOTSUP; \
        goto out; \
    }
    TLS_LIB_SYMBOLS(TLS_LIB_RESOLVE)
#undef TLS_LIB_RESOLVE
    tls_lib.free_fn = (gnutls_free_function *)dlsym(h, "gnutls_free");
    if (!tls_lib.free_fn) {
        error_setg(errp, "TLS: %s lacks gnutls_free", TLS_SONAME);
        ret = -ENOTSUP;
        goto out;
    }
    loaded = true;
out:
    pthread_mutex_unlock(&lock);
    return ret;
}

/* From here on, every GnuTLS call goes through tls_lib. */
#define gnutls_bye tls_lib.gnutls_bye
#define gnutls_certificate_allocate_credentials \
    tls_lib.gnutls_certificate_allocate_credentials
#define gnutls_certificate_free_credentials \
    tls_lib.gnutls_certificate_free_credentials
#define gnutls_certificate_get_peers tls_lib.gnutls_certificate_get_peers
#define gnutls_certificate_server_set_request \
    tls_lib.gnutls_certificate_server_set_request
#define gnutls_certificate_set_x509_crl_file \
    tls_lib.gnutls_certificate_set_x509_crl_file
#define gnutls_certificate_set_x509_key_file \
    tls_lib.gnutls_certificate_set_x509_key_file
#define gnutls_certificate_set_x509_trust_file \
    tls_lib.gnutls_certificate_set_x509_trust_file
#define gnutls_certificate_verification_status_print \
    tls_lib.gnutls_certificate_verification_status_print
#define gnutls_certificate_verify_peers2 \
    tls_lib.gnutls_certificate_verify_peers2
#define gnutls_certificate_verify_peers3 \
    tls_lib.gnutls_certificate_verify_peers3
#define gnutls_credentials_set tls_lib.gnutls_credentials_set
#define gnutls_deinit tls_lib.gnutls_deinit
#define gnutls_error_is_fatal tls_lib.gnutls_error_is_fatal
#define gnutls_handshake tls_lib.gnutls_handshake
#define gnutls_handshake_set_timeout tls_lib.gnutls_handshake_set_timeout
#define gnutls_init tls_lib.gnutls_init
#define gnutls_priority_set_direct tls_lib.gnutls_priority_set_direct
#define gnutls_record_check_pending tls_lib.gnutls_record_check_pending
#define gnutls_record_get_direction tls_lib.gnutls_record_get_direction
#define gnutls_record_recv tls_lib.gnutls_record_recv
#define gnutls_record_send tls_lib.gnutls_record_send
#define gnutls_server_name_set tls_lib.gnutls_server_name_set
#define gnutls_set_default_priority tls_lib.gnutls_set_default_priority
#define gnutls_strerror tls_lib.gnutls_strerror
#define gnutls_transport_set_int2 tls_lib.gnutls_transport_set_int2
#undef gnutls_free
#define gnutls_free(a) ((*tls_lib.free_fn)((void *)(a)), (a) = NULL)

/* Plaintext gathered from small iovec pieces into one record. */
#define TLS_STAGE_SIZE (16 * 1024)

struct TLSCreds {
    char *id;
    char *dir;
    char *priority;             /* GnuTLS priority string, NULL: default */
    bool server;
    bool verify_peer;
    gnutls_certificate_credentials_t x509;
};

static GPtrArray *all_creds;

bool tls_available(void)
{
    return true;
}

static void tls_creds_free(gpointer p)
{
    TLSCreds *cr = p;

    if (cr->x509) {
        gnutls_certificate_free_credentials(cr->x509);
    }
    g_free(cr->id);
    g_free(cr->dir);
    g_free(cr->priority);
    g_free(cr);
}

static TLSCreds *tls_creds_find(const char *id)
{
    for (guint i = 0; all_creds && i < all_creds->len; i++) {
        TLSCreds *cr = g_ptr_array_index(all_creds, i);
        if (!strcmp(cr->id, id)) {
            return cr;
        }
    }
    return NULL;
}

/* DIR/name if it is readable; NULL (and an error if required) if not. */
static char *tls_creds_file(TLSCreds *cr, const char *name, bool required,
                            Error **errp)
{
    char *path = g_build_filename(cr->dir, name, NULL);

    if (access(path, R_OK) < 0) {
        if (required || errno != ENOENT) {
            error_setg_errno(errp, errno, "Unable to access credentials %s",
                             path);
        }
        g_free(path);
        return NULL;
    }
    return path;
}

static int tls_creds_load(TLSCreds *cr, Error **errp)
{
    const char *role = cr->server ? "server" : "client";
    g_autofree char *ca = NULL, *crl = NULL, *cert = NULL, *key = NULL;
    g_autofree char *cert_name = g_strdup_printf("%s-cert.pem", role);
    g_autofree char *key_name = g_strdup_printf("%s-key.pem", role);
    Error *local_err = NULL;
    int r;

    if (tls_lib_load(errp) < 0) {
        return -ENOTSUP;
    }

    ca = tls_creds_file(cr, "ca-cert.pem", true, errp);
    if (!ca) {
        return -ENOENT;
    }
    crl = tls_creds_file(cr, "ca-crl.pem", false, &local_err);
    cert = tls_creds_file(cr, cert_name, cr->server, &local_err);
    key = tls_creds_file(cr, key_name, cr->server, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        return -ENOENT;
    }
    r = gnutls_certificate_allocate_credentials(&cr->x509);
    if (r < 0) {
        error_setg(errp, "Cannot allocate credentials: %s", gnutls_strerror(r));
        return -ENOMEM;
    }
    r = gnutls_certificate_set_x509_trust_file(cr->x509, ca,
                                               GNUTLS_X509_FMT_PEM);
    if (r <= 0) {
        error_setg(errp, "Cannot load CA certificate '%s': %s", ca,
                   r < 0 ? gnutls_strerror(r) : "no certificate in it");
        return -EINVAL;
    }
    if (crl) {
        r = gnutls_certificate_set_x509_crl_file(cr->x509, crl,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            error_setg(errp, "Cannot load CRL '%s': %s", crl,
                       gnutls_strerror(r));
            return -EINVAL;
        }
    }
    if (!cert != !key) {
        error_setg(errp, "Unable to access credentials %s: %s",
                   cert ? key_name : cert_name, strerror(ENOENT));
        return -ENOENT;
    }
    if (cert) {
        r = gnutls_certificate_set_x509_key_file(cr->x509, cert, key,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            error_setg(errp, "Cannot load certificate '%s' & key '%s': %s",
                       cert, key, gnutls_strerror(r));
            return -EINVAL;
        }
    }
    return 0;
}

int tls_creds_object_add(const char *def, Error **errp)
{
    static const QemuOptDesc desc[] = {
        { "qom-type", QEMU_OPT_STRING, "" },
        { "id", QEMU_OPT_STRING, "" },
        { "dir", QEMU_OPT_STRING, "" },
        { "endpoint", QEMU_OPT_STRING, "" },
        { "verify-peer", QEMU_OPT_BOOL, "" },
        { "priority", QEMU_OPT_STRING, "" },
        { "sanity-check", QEMU_OPT_BOOL, "" },
        { "loaded", QEMU_OPT_BOOL, "" },
        { NULL }
    };
    const QemuOptDesc *descs[] = { desc, NULL };
    QemuOpts *opts = qemu_opts_new();
    const char *id, *endpoint, *dir;
    TLSCreds *cr = NULL;
    int ret = -EINVAL;

    if (strlen(def) > 64 * 1024) {
        error_setg(errp, "--object definition is too long");
        goto out;
    }
    if (qemu_opts_parse(opts, def, "qom-type", errp) < 0 ||
        qemu_opts_validate(opts, descs, errp) < 0) {
        goto out;
    }
    id = qemu_opt_get(opts, "id");
    endpoint = qemu_opt_get(opts, "endpoint");
    dir = qemu_opt_get(opts, "dir");
    if (!id || !*id) {
        error_setg(errp, "Parameter 'id' is missing");
        goto out;
    }
    if (tls_creds_find(id)) {
        error_setg(errp, "attempt to add duplicate property '%s'", id);
        goto out;
    }
    if (endpoint && strcmp(endpoint, "server") && strcmp(endpoint, "client")) {
        error_setg(errp, "Parameter 'endpoint' does not accept value '%s'",
                   endpoint);
        goto out;
    }
    if (!dir || !*dir) {
        error_setg(errp, "Missing 'dir' property value");
        goto out;
    }
    cr = g_new0(TLSCreds, 1);
    cr->id = g_strdup(id);
    cr->dir = g_strdup(dir);
    cr->priority = g_strdup(qemu_opt_get(opts, "priority"));
    cr->server = endpoint && !strcmp(endpoint, "server");
    cr->verify_peer = qemu_opt_get_bool(opts, "verify-peer", true);
    ret = tls_creds_load(cr, errp);
    if (ret < 0) {
        tls_creds_free(cr);
        goto out;
    }
    if (!all_creds) {
        all_creds = g_ptr_array_new_with_free_func(tls_creds_free);
    }
    g_ptr_array_add(all_creds, cr);
    ret = 0;
out:
    qemu_opts_del(opts);
    return ret;
}

TLSCreds *tls_creds_lookup(const char *id, bool endpoint_server, Error **errp)
{
    TLSCreds *cr = tls_creds_find(id);

    if (!cr) {
        error_setg(errp, "No TLS credentials with id '%s'", id);
        return NULL;
    }
    if (cr->server != endpoint_server) {
        error_setg(errp, "Expected TLS credentials for a %s endpoint",
                   endpoint_server ? "server" : "client");
        return NULL;
    }
    return cr;
}

void tls_creds_clear_all(void)
{
    if (all_creds) {
        g_ptr_array_free(all_creds, true);
        all_creds = NULL;
    }
}

/* ------------------------------------------------------------------ */
/* The transport                                                      */

typedef struct TLSStream {
    gnutls_session_t sess;
    uint8_t stage[TLS_STAGE_SIZE];
} TLSStream;

static ssize_t tls_stream_recv(void *opaque, void *buf, size_t len,
                               bool *want_write)
{
    TLSStream *st = opaque;
    ssize_t r;

    do {
        r = gnutls_record_recv(st->sess, buf, len);
    } while (r == GNUTLS_E_INTERRUPTED);
    if (r > 0) {
        return r;
    }
    if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION) {
        return -ECONNRESET;
    }
    if (r == GNUTLS_E_AGAIN) {
        *want_write = gnutls_record_get_direction(st->sess) == 1;
        return 0;
    }
    return -EPROTO;
}

static ssize_t tls_stream_send(void *opaque, const struct iovec *iov,
                               int niov, bool *want_read)
{
    TLSStream *st = opaque;
    const void *data;
    size_t len = 0;
    ssize_t r;

    /*
     * Big pieces go out as they are; small ones are gathered so that a
     * header and its payload share a record. The same iovec gives the same
     * bytes, which is what GnuTLS needs after a send that would block.
     */
    if (iov[0].iov_len >= TLS_STAGE_SIZE / 4 || niov == 1) {
        data = iov[0].iov_base;
        len = MIN(iov[0].iov_len, TLS_STAGE_SIZE);
    } else {
        for (int i = 0; i < niov && len < TLS_STAGE_SIZE; i++) {
            size_t k = MIN(iov[i].iov_len, TLS_STAGE_SIZE - len);
            memcpy(st->stage + len, iov[i].iov_base, k);
            len += k;
        }
        data = st->stage;
    }
    do {
        r = gnutls_record_send(st->sess, data, len);
    } while (r == GNUTLS_E_INTERRUPTED);
    if (r > 0) {
        return r;
    }
    if (r == GNUTLS_E_AGAIN) {
        *want_read = gnutls_record_get_direction(st->sess) == 0;
        return 0;
    }
    return -EPIPE;
}

static size_t tls_stream_pending(void *opaque)
{
    TLSStream *st = opaque;

    return gnutls_record_check_pending(st->sess);
}

static void tls_stream_shutdown(void *opaque)
{
    TLSStream *st = opaque;

    gnutls_bye(st->sess, GNUTLS_SHUT_WR);   /* best effort, no retry */
}

static void tls_stream_free(void *opaque)
{
    TLSStream *st = opaque;

    gnutls_deinit(st->sess);
    g_free(st);
}

static const SockTransport tls_transport = {
    .recv = tls_stream_recv,
    .send = tls_stream_send,
    .pending = tls_stream_pending,
    .shutdown = tls_stream_shutdown,
    .free = tls_stream_free,
};

/* ------------------------------------------------------------------ */
/* Handshake                                                          */

static bool tls_is_ip(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;

    return inet_pton(AF_INET, host, &a4) == 1 ||
           inet_pton(AF_INET6, host, &a6) == 1;
}

static int tls_session_new(TLSCreds *cr, const char *hostname,
                           gnutls_session_t *psess, Error **errp)
{
    gnutls_session_t sess;
    const char *errpos = NULL;
    int r;

    r = gnutls_init(&sess, (cr->server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
                    GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
    if (r < 0) {
        error_setg(errp, "Cannot start a TLS session: %s", gnutls_strerror(r));
        return -ENOMEM;
    }
    r = cr->priority ? gnutls_priority_set_direct(sess, cr->priority, &errpos)
                     : gnutls_set_default_priority(sess);
    if (r < 0) {
        error_setg(errp, "Cannot set the TLS priority '%s': %s",
                   cr->priority ? cr->priority : "", gnutls_strerror(r));
        goto fail;
    }
    r = gnutls_credentials_set(sess, GNUTLS_CRD_CERTIFICATE, cr->x509);
    if (r < 0) {
        error_setg(errp, "Cannot set TLS credentials: %s", gnutls_strerror(r));
        goto fail;
    }
    if (cr->server) {
        gnutls_certificate_server_set_request(sess, cr->verify_peer ?
                                              GNUTLS_CERT_REQUIRE :
                                              GNUTLS_CERT_IGNORE);
    } else if (hostname && !tls_is_ip(hostname)) {
        gnutls_server_name_set(sess, GNUTLS_NAME_DNS, hostname,
                               strlen(hostname));
    }
    gnutls_handshake_set_timeout(sess, 0);      /* our deadline rules */
    *psess = sess;
    return 0;

fail:
    gnutls_deinit(sess);
    return -EINVAL;
}

/* The peer's certificate against the CA (and hostname for a client). */
static int tls_verify_peer(TLSCreds *cr, gnutls_session_t sess,
                           const char *hostname, Error **errp)
{
    unsigned int status = 0, n = 0;
    gnutls_datum_t text;
    int r;

    if (!gnutls_certificate_get_peers(sess, &n) || n == 0) {
        error_setg(errp, "No certificate was found for the TLS peer");
        return -EPERM;
    }
    r = cr->server || !hostname ?
        gnutls_certificate_verify_peers2(sess, &status) :
        gnutls_certificate_verify_peers3(sess, hostname, &status);
    if (r < 0) {
        error_setg(errp, "Cannot verify the TLS peer's certificate: %s",
                   gnutls_strerror(r));
        return -EPERM;
    }
    if (!status) {
        return 0;
    }
    if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
        error_setg(errp, "Certificate does not match the hostname %s",
                   hostname);
    } else if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) {
        error_setg(errp, "The certificate hasn't got a known issuer");
    } else if (status & GNUTLS_CERT_REVOKED) {
        error_setg(errp, "The certificate has been revoked");
    } else if (status & GNUTLS_CERT_EXPIRED) {
        error_setg(errp, "The certificate has expired");
    } else if (status & GNUTLS_CERT_NOT_ACTIVATED) {
        error_setg(errp, "The certificate is not yet activated");
    } else if (gnutls_certificate_verification_status_print(
                   status, GNUTLS_CRT_X509, &text, 0) == 0) {
        g_autofree char *msg = g_strstrip(g_strdup((const char *)text.data));
        error_setg(errp, "The certificate is not trusted: %s", msg);
        gnutls_free(text.data);
    } else {
        error_setg(errp, "The certificate is not trusted");
    }
    return -EPERM;
}

int coroutine_fn tls_co_handshake(SockConn *conn, TLSCreds *cr,
                                  const char *hostname, int64_t deadline,
                                  Error **errp)
{
    TLSStream *st;
    int r, fd = sock_conn_fd(conn);

    if (sock_conn_buffered(conn)) {
        error_setg(errp, "TLS: the peer sent data ahead of the handshake");
        return -EPROTO;
    }
    if (fd < 0) {
        error_setg(errp, "TLS: the connection is closed");
        return -ECONNRESET;
    }
    st = g_new0(TLSStream, 1);
    r = tls_session_new(cr, hostname, &st->sess, errp);
    if (r < 0) {
        g_free(st);
        return r;
    }
    gnutls_transport_set_int(st->sess, fd);
    for (;;) {
        r = gnutls_handshake(st->sess);
        if (r == 0) {
            break;
        }
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
            bool write = gnutls_record_get_direction(st->sess) == 1;

            r = sock_conn_co_wait_io(conn, write, deadline);
            if (r == -ETIMEDOUT) {
                error_setg(errp, "TLS handshake timed out");
                goto fail;
            } else if (r < 0) {
                error_setg_errno(errp, -r, "TLS handshake failed");
                goto fail;
            }
            continue;
        }
        if (!gnutls_error_is_fatal(r)) {
            continue;           /* a warning alert */
        }
        error_setg(errp, "TLS handshake failed: %s", gnutls_strerror(r));
        r = -EPROTO;
        goto fail;
    }
    if (cr->verify_peer) {
        r = tls_verify_peer(cr, st->sess, hostname, errp);
        if (r < 0) {
            goto fail;
        }
    }
    r = sock_conn_set_transport(conn, &tls_transport, st);
    if (r < 0) {
        error_setg(errp, "TLS: the peer sent data ahead of the handshake");
        goto fail;
    }
    return 0;

fail:
    tls_stream_free(st);
    return r < 0 ? r : -EPROTO;
}

#else /* !CONFIG_GNUTLS */

#define TLS_UNAVAILABLE "TLS is not supported: built without GnuTLS"

bool tls_available(void)
{
    return false;
}

int tls_creds_object_add(const char *def, Error **errp)
{
    (void)def;
    error_setg(errp, TLS_UNAVAILABLE);
    return -ENOTSUP;
}

TLSCreds *tls_creds_lookup(const char *id, bool endpoint_server, Error **errp)
{
    (void)id;
    (void)endpoint_server;
    error_setg(errp, TLS_UNAVAILABLE);
    return NULL;
}

void tls_creds_clear_all(void)
{
}

int coroutine_fn tls_co_handshake(SockConn *conn, TLSCreds *creds,
                                  const char *hostname, int64_t deadline,
                                  Error **errp)
{
    (void)conn;
    (void)creds;
    (void)hostname;
    (void)deadline;
    error_setg(errp, TLS_UNAVAILABLE);
    return -ENOTSUP;
}

#endif
