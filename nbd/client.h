/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * NBD client services outside the block driver (block/nbd.c implements
 * them with the driver's negotiation code): listing a server's exports, as
 * qemu-nbd -L does.
 */
#ifndef NBD_CLIENT_H
#define NBD_CLIENT_H

#include "util/socket.h"
#include "util/tls.h"

typedef struct NBDExportDesc {
    char *name;
    char *description;          /* NULL: none */
    uint64_t size;
    uint16_t flags;             /* transmission flags */
    uint32_t min_block, opt_block, max_block;   /* 0: none sent */
    bool structured;            /* contexts were listed */
    GPtrArray *contexts;        /* char *: metadata contexts */
} NBDExportDesc;

/* At most this many exports and contexts per export are kept. */
#define NBD_LIST_MAX_EXPORTS    10000
#define NBD_LIST_MAX_CONTEXTS   1000

/*
 * Connect to addr (TLS first with tls, checking tls_hostname), list the
 * exports (NBD_OPT_LIST), then describe each (NBD_OPT_INFO with block
 * sizes, NBD_OPT_LIST_META_CONTEXT) and end with NBD_OPT_ABORT. Returns an
 * array of NBDExportDesc * (nbd_export_list_free) or NULL with a one-line
 * error. Bounded by 30 s per server answer.
 */
GPtrArray *coroutine_fn nbd_co_list_exports(const SockAddr *addr,
                                            TLSCreds *tls,
                                            const char *tls_hostname,
                                            Error **errp);
void nbd_export_list_free(GPtrArray *list);

#endif
