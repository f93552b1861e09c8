/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The sheepdog driver's client of one cluster address: requests pipelined
 * on a util/socket connection, matched by id, every reply checked, and what
 * happens to a request when its connection fails.
 *
 * A request is either answered on the connection it was sent on, or its
 * connection ends without an answer. What follows depends on its kind:
 * - SD_REQ_IDEMPOTENT (reads, lookups): sent again, whole, on a new
 *   connection.
 * - SD_REQ_WRITE (object writes): a write that went out completely is never
 *   reported failed while it can still execute. When its connection stalls
 *   (no answer within the timeout) the connection is half-closed and kept
 *   as a "zombie" whose answers are still read; the write completes with
 *   its answer from there, or, once the server has closed the zombie (sheep
 *   only closes a connection after every request read from it has
 *   finished), it is sent again on a new connection. Writes that are not
 *   answered therefore never complete, so no later write can be overtaken
 *   by an older copy.
 * - SD_REQ_VDI_OP (NEW_VDI, DEL_VDI, LOCK_VDI, RELEASE_VDI): like writes
 *   until the zombie closes, then SD_IN_DOUBT: the caller looks at the
 *   cluster to learn whether it happened (never a blind resend).
 * New requests fail at once (-EIO) once the client gave up reconnecting
 * (reconnect timeout), until a connection works again.
 */
#ifndef SHEEPDOG_CLIENT_H
#define SHEEPDOG_CLIENT_H

#include "block/sheepdog_proto.h"
#include "util/iov.h"

typedef struct SDClient SDClient;

typedef enum SDReqKind {
    SD_REQ_IDEMPOTENT,
    SD_REQ_WRITE,
    SD_REQ_VDI_OP,
} SDReqKind;

/* A VDI operation was sent completely and its connection ended without an
 * answer: it may or may not have happened. */
#define SD_IN_DOUBT (-EINPROGRESS)

/* timeout_ns: reconnect timeout, and how long a request may go unanswered
 * before its connection counts as stalled. */
SDClient *sd_client_new(const SheepdogName *name, int64_t timeout_ns);
/* The first connection (one attempt). */
int coroutine_fn sd_client_co_connect(SDClient *cl, Error **errp);
/* Close every connection and free; no request may be in flight. */
void coroutine_fn sd_client_co_free(SDClient *cl);

/*
 * Send one request (hdr->id and proto_ver are filled in) and wait for its
 * answer. With SD_FLAG_CMD_WRITE, wqiov from wofs carries hdr->data_length
 * bytes. Answer data goes to rqiov from rofs; rlen is the most the answer
 * may carry (a longer answer is a protocol violation). Returns 0 with *rsp
 * (rsp->data_length = bytes received), -EIO (errp set) when the request
 * could not be carried out, or SD_IN_DOUBT (VDI operations only).
 */
int coroutine_fn sd_client_co_request(SDClient *cl, SDReqKind kind,
                                      SheepdogReq *hdr, QEMUIOVector *wqiov,
                                      size_t wofs, QEMUIOVector *rqiov,
                                      size_t rofs, size_t rlen,
                                      SheepdogRsp *rsp, Error **errp);

#endif
