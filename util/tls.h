/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * TLS with GnuTLS: x509 credentials named on the command line (QEMU's
 * "--object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client
 * [,verify-peer=on|off][,priority=STRING]") and a handshake that turns a
 * connected SockConn into a TLS stream (util/socket.h transports).
 *
 * DIR holds the files as QEMU names them: ca-cert.pem (always), ca-crl.pem
 * (optional), server-cert.pem and server-key.pem (server), client-cert.pem
 * and client-key.pem (client; optional unless the server asks for them).
 * verify-peer (default on): a client checks the server's certificate
 * against the CA and the host name; a server requires and checks a
 * client certificate.
 *
 * Without GnuTLS at build time every entry point fails with a one-line
 * error (tls_available() says so). Process-wide, loop thread only.
 */
#ifndef QEMU_TLS_H
#define QEMU_TLS_H

#include "util/osdep.h"
#include "util/error.h"
#include "util/socket.h"

typedef struct TLSCreds TLSCreds;

/* Whether this build has TLS. */
bool tls_available(void);

/*
 * Add credentials from a --object tls-creds-x509 definition: the files are
 * loaded now, so a bad directory fails here. 0 or -errno with an error.
 */
int tls_creds_object_add(const char *def, Error **errp);
/*
 * The credentials id, or NULL with an error naming the id. endpoint_server:
 * the role the caller needs (a client's creds on a server fail).
 */
TLSCreds *tls_creds_lookup(const char *id, bool endpoint_server,
                           Error **errp);
/* Forget every credentials object (tests). */
void tls_creds_clear_all(void);

/*
 * TLS handshake on conn, which must have nothing received but unconsumed.
 * A client checks the server against hostname (NULL: the CA only, as for
 * a Unix socket). On success every later send and receive on conn is
 * encrypted. Bounded by deadline; -errno with a one-line error.
 */
int coroutine_fn tls_co_handshake(SockConn *conn, TLSCreds *creds,
                                  const char *hostname, int64_t deadline,
                                  Error **errp);

#endif
