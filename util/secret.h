/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Secrets named on the command line (QEMU's "--object secret,id=ID,
 * data=TEXT|file=PATH[,format=raw|base64]"), looked up by drivers by id
 * (rbd's key-secret). Process-wide, loop thread only.
 */
#ifndef QEMU_SECRET_H
#define QEMU_SECRET_H

#include "util/osdep.h"
#include "util/error.h"

/* Largest secret (data or file contents) accepted. */
#define SECRET_MAX_SIZE (64 * 1024)

/*
 * Add an object from a --object definition. Only the "secret" type is
 * known; ids are unique. 0 or -errno with a one-line error.
 */
int secret_object_add(const char *def, Error **errp);
/*
 * The secret id as base64 text (g_free), or NULL with an error naming the
 * id ("No secret with id 'x'").
 */
char *secret_lookup_base64(const char *id, Error **errp);
/*
 * The secret id's bytes (g_free; NUL-terminated for convenience, *len
 * without it), or NULL with an error naming the id.
 */
char *secret_lookup_bytes(const char *id, size_t *len, Error **errp);
/* Forget every secret (tests). */
void secret_clear_all(void);

#endif
