/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * --object on the tools' command lines: "TYPE,id=ID,..." (or
 * "qom-type=TYPE,...") dispatched by type to the module that keeps such
 * objects: secret (util/secret.h) and tls-creds-x509 (util/tls.h).
 */
#ifndef QEMU_OBJECT_H
#define QEMU_OBJECT_H

#include "util/osdep.h"
#include "util/error.h"

/* 0 or -errno with a one-line error (QEMU's wording where it has one). */
int user_object_add(const char *def, Error **errp);

#endif
