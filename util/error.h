/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Error objects: a human-readable message travelling beside a negative errno.
 * Functions take "Error **errp" last; errp may be NULL when the caller does not
 * want the message. Setting an error on an errp that already holds one is a
 * bug (asserted).
 */
#ifndef QEMU_ERROR_H
#define QEMU_ERROR_H

#include "util/osdep.h"

typedef struct Error Error;

void error_setg(Error **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Like error_setg, and appends ": strerror(os_errno)". os_errno is positive. */
void error_setg_errno(Error **errp, int os_errno, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
/*
 * Append to the error's hint: further lines printed after the message by
 * error_report_err (QEMU's "Is another process using the image [x]?\n").
 * Include the trailing newline. No-op when errp or *errp is NULL.
 */
void error_append_hint(Error **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* The hint, or NULL. */
const char *error_get_hint(const Error *err);
/* Print the hint (if any) on stderr, as error_report_err does after the
 * message line; for callers that print the message themselves. */
void error_print_hint(const Error *err);
/* Prefix an existing error's message (no-op when errp or *errp is NULL). */
void error_prepend(Error **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Move local_err into *dst_errp (freeing it if dst_errp is NULL or set). */
void error_propagate(Error **dst_errp, Error *local_err);
const char *error_get_pretty(const Error *err);
void error_free(Error *err);
Error *error_copy(const Error *err);

/* Program name used as prefix of error_report output ("qemu-img"). */
void error_set_progname(const char *argv0);
const char *error_get_progname(void);
/* Print "progname: message\n" on stderr. */
void error_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* error_report(error_get_pretty(err)), the hint, and error_free(err). */
void error_report_err(Error *err);

#endif
