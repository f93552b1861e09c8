/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The NBD server: fixed newstyle negotiation and the transmission phase
 * for one export, one coroutine reading requests per client and one per
 * request in flight. Every value read from a client is bounded before use;
 * a misbehaving client gets an error reply or loses its connection, and
 * never holds up another client.
 */
#ifndef NBD_SERVER_H
#define NBD_SERVER_H

#include "nbd/backend.h"
#include "util/tls.h"

typedef struct NBDServer NBDServer;

typedef struct NBDServerConf {
    const char *name;           /* export name ("" by default) */
    const char *description;    /* NULL: none */
    NBDBackend *be;             /* borrowed */
    bool allocation_depth;      /* offer qemu:allocation-depth */
    bool multi_conn;            /* advertise NBD_FLAG_CAN_MULTI_CONN */
    unsigned max_clients;       /* served at once; 0: no limit */
    unsigned max_pending;       /* connections waiting for a slot */
    unsigned max_requests;      /* in flight per client */
    int64_t handshake_ns;       /* the whole negotiation must fit */
    int64_t io_ns;              /* a started request / a reply must fit */
    bool verbose;
    /* TLS required (NBD_OPT_STARTTLS first), or NULL: plaintext only. */
    TLSCreds *tls;
    /* Called whenever a client ends (the count is after it left). */
    void (*client_gone)(void *opaque, unsigned clients);
    void *opaque;
} NBDServerConf;

NBDServer *nbd_server_new(const NBDServerConf *conf);
/* A SockAcceptFunc: hand every accepted fd to the server. */
void nbd_server_accept(void *opaque, int fd);
/* Clients being served or waiting for a slot. */
unsigned nbd_server_clients(NBDServer *s);
/*
 * Stop: waiting connections are closed, no new request is read, requests
 * already read complete and are answered, then every connection closes.
 * Poll until nbd_server_clients() is 0 before freeing.
 */
void nbd_server_shutdown(NBDServer *s);
void nbd_server_free(NBDServer *s);

#endif
