/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rbd image names: "rbd:pool[/namespace]/image[@snap][:key=value...]" as
 * QEMU writes them, and the same fields as open options. No librbd here,
 * so the parser is built and unit-tested without Ceph installed.
 */
#ifndef BLOCK_RBD_NAME_H
#define BLOCK_RBD_NAME_H

#include "util/osdep.h"
#include "util/error.h"

/* Longest name component (pool, image, ...) we accept; Ceph's own limits
 * are lower. */
#define RBD_NAME_MAX 4096
/* Most key=value options in one name. */
#define RBD_NAME_MAX_OPTS 64

typedef struct RbdName {
    char *pool;
    char *ns;                   /* namespace; NULL: the default one */
    char *image;
    char *snap;                 /* NULL: the image's head */
    char *conf;                 /* conf= : a ceph.conf to read */
    char *user;                 /* id= : the client name without "client." */
    /* every other key=value, in order, unescaped; Ceph config keys */
    char **keys;
    char **values;
    unsigned nr_opts;
} RbdName;

/*
 * Parse filename ("rbd:" prefix optional) into n (zeroed first). A '\'
 * escapes the next character (":", "@", "/", "=", "\"). Errors are one line;
 * n is left empty on failure.
 */
int rbd_parse_name(const char *filename, RbdName *n, Error **errp);
void rbd_name_clear(RbdName *n);

/*
 * True if n says how to reach or authenticate to a cluster (conf, id, or
 * any config key: mon_host, keyring, key, ...). Names read from image
 * headers may not (docs/image-names.md): they would make our process read
 * files or contact hosts the header chose. *what gets the first such key.
 */
bool rbd_name_has_config(const RbdName *n, const char **what);

#endif
