/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Error objects carrying a human-readable message, and error_report(). */
#include "util/error.h"

struct Error {
    char *msg;
    char *hint;                 /* NULL or lines ending in '\n' */
};

static char *progname;

static void error_setv(Error **errp, const char *suffix, const char *fmt,
                       va_list ap)
{
    Error *err;
    char *msg;

    if (!errp) {
        return;
    }
    /* Overwriting an error would silently lose the first message. */
    assert(*errp == NULL);
    msg = g_strdup_vprintf(fmt, ap);
    err = g_new0(Error, 1);
    if (suffix) {
        err->msg = g_strconcat(msg, ": ", suffix, NULL);
        g_free(msg);
    } else {
        err->msg = msg;
    }
    *errp = err;
}

void error_setg(Error **errp, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    error_setv(errp, NULL, fmt, ap);
    va_end(ap);
}

void error_setg_errno(Error **errp, int os_errno, const char *fmt, ...)
{
    va_list ap;
    int saved = errno;

    va_start(ap, fmt);
    error_setv(errp, g_strerror(os_errno < 0 ? -os_errno : os_errno), fmt, ap);
    va_end(ap);
    errno = saved;
}

void error_append_hint(Error **errp, const char *fmt, ...)
{
    va_list ap;
    char *more, *hint;

    if (!errp || !*errp) {
        return;
    }
    va_start(ap, fmt);
    more = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    hint = g_strconcat((*errp)->hint ? (*errp)->hint : "", more, NULL);
    g_free(more);
    g_free((*errp)->hint);
    (*errp)->hint = hint;
}

const char *error_get_hint(const Error *err)
{
    return err->hint;
}

void error_print_hint(const Error *err)
{
    if (err && err->hint) {
        fputs(err->hint, stderr);
    }
}

void error_prepend(Error **errp, const char *fmt, ...)
{
    va_list ap;
    char *prefix, *msg;

    if (!errp || !*errp) {
        return;
    }
    va_start(ap, fmt);
    prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    msg = g_strconcat(prefix, (*errp)->msg, NULL);
    g_free(prefix);
    g_free((*errp)->msg);
    (*errp)->msg = msg;
}

void error_propagate(Error **dst_errp, Error *local_err)
{
    if (!local_err) {
        return;
    }
    if (dst_errp && !*dst_errp) {
        *dst_errp = local_err;
    } else {
        error_free(local_err);
    }
}

const char *error_get_pretty(const Error *err)
{
    return err->msg;
}

void error_free(Error *err)
{
    if (err) {
        g_free(err->msg);
        g_free(err->hint);
        g_free(err);
    }
}

Error *error_copy(const Error *err)
{
    Error *copy = g_new0(Error, 1);

    copy->msg = g_strdup(err->msg);
    copy->hint = g_strdup(err->hint);
    return copy;
}

void error_set_progname(const char *argv0)
{
    const char *slash = strrchr(argv0, '/');

    g_free(progname);
    progname = g_strdup(slash ? slash + 1 : argv0);
}

const char *error_get_progname(void)
{
    return progname ? progname : "qemu";
}

void error_report(const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* One fprintf so that concurrent writers do not interleave mid-line. */
    fprintf(stderr, "%s: %s\n", error_get_progname(), msg);
    g_free(msg);
}

void error_report_err(Error *err)
{
    error_report("%s", error_get_pretty(err));
    error_print_hint(err);
    error_free(err);
}
