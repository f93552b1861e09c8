/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * NBD wire constants and message layouts (the NBD protocol document,
 * "fixed newstyle" negotiation, structured replies, metadata contexts).
 * Shared by the server (nbd/server.c) and the client driver (block/nbd.c).
 *
 * All fields on the wire are big-endian. Messages are built and parsed
 * byte by byte through the nbd_put / nbd_get helpers below, so no struct
 * here is ever sent as-is; the sizes are fixed by the protocol:
 *
 *   handshake   u64 NBDMAGIC | u64 IHAVEOPT | u16 handshake flags
 *   option      u64 IHAVEOPT | u32 option | u32 length | data
 *   opt reply   u64 REP_MAGIC | u32 option | u32 type | u32 length | data
 *   request     u32 REQ_MAGIC | u16 flags | u16 type | u64 handle |
 *               u64 offset | u32 length                      (28 bytes)
 *   simple      u32 SIMPLE_MAGIC | u32 error | u64 handle    (16 bytes)
 *   structured  u32 STRUCT_MAGIC | u16 flags | u16 type | u64 handle |
 *               u32 length                                   (20 bytes)
 */
#ifndef NBD_PROTO_H
#define NBD_PROTO_H

#include "util/osdep.h"

#define NBD_DEFAULT_PORT        10809

#define NBD_MAGIC               0x4e42444d41474943ULL   /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC          0x49484156454F5054ULL   /* "IHAVEOPT" */
#define NBD_REP_MAGIC           0x0003e889045565a9ULL
#define NBD_REQUEST_MAGIC       0x25609513
#define NBD_SIMPLE_REPLY_MAGIC  0x67446698
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33ef

#define NBD_HANDSHAKE_LEN       18
#define NBD_OPT_HDR_LEN         16
#define NBD_REP_HDR_LEN         20
#define NBD_REQUEST_LEN         28
#define NBD_SIMPLE_REPLY_LEN    16
#define NBD_STRUCTURED_REPLY_LEN 20

/* Handshake flags (server) and client flags */
#define NBD_FLAG_FIXED_NEWSTYLE (1 << 0)
#define NBD_FLAG_NO_ZEROES      (1 << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE NBD_FLAG_FIXED_NEWSTYLE
#define NBD_FLAG_C_NO_ZEROES    NBD_FLAG_NO_ZEROES

/* Transmission flags */
#define NBD_FLAG_HAS_FLAGS          (1 << 0)
#define NBD_FLAG_READ_ONLY          (1 << 1)
#define NBD_FLAG_SEND_FLUSH         (1 << 2)
#define NBD_FLAG_SEND_FUA           (1 << 3)
#define NBD_FLAG_ROTATIONAL         (1 << 4)
#define NBD_FLAG_SEND_TRIM          (1 << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES  (1 << 6)
#define NBD_FLAG_SEND_DF            (1 << 7)
#define NBD_FLAG_CAN_MULTI_CONN     (1 << 8)
#define NBD_FLAG_SEND_RESIZE        (1 << 9)
#define NBD_FLAG_SEND_CACHE         (1 << 10)
#define NBD_FLAG_SEND_FAST_ZERO     (1 << 11)

/* Options */
#define NBD_OPT_EXPORT_NAME         1
#define NBD_OPT_ABORT               2
#define NBD_OPT_LIST                3
#define NBD_OPT_PEEK_EXPORT         4
#define NBD_OPT_STARTTLS            5
#define NBD_OPT_INFO                6
#define NBD_OPT_GO                  7
#define NBD_OPT_STRUCTURED_REPLY    8
#define NBD_OPT_LIST_META_CONTEXT   9
#define NBD_OPT_SET_META_CONTEXT    10

/* Option replies */
#define NBD_REP_ACK                 1
#define NBD_REP_SERVER              2
#define NBD_REP_INFO                3
#define NBD_REP_META_CONTEXT        4
#define NBD_REP_FLAG_ERROR          (1U << 31)
#define NBD_REP_ERR_UNSUP           (NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY          (NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_INVALID         (NBD_REP_FLAG_ERROR | 3)
#define NBD_REP_ERR_PLATFORM        (NBD_REP_FLAG_ERROR | 4)
#define NBD_REP_ERR_TLS_REQD        (NBD_REP_FLAG_ERROR | 5)
#define NBD_REP_ERR_UNKNOWN         (NBD_REP_FLAG_ERROR | 6)
#define NBD_REP_ERR_SHUTDOWN        (NBD_REP_FLAG_ERROR | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8)
#define NBD_REP_ERR_TOO_BIG         (NBD_REP_FLAG_ERROR | 9)

/* NBD_REP_INFO types */
#define NBD_INFO_EXPORT             0   /* u64 size, u16 flags */
#define NBD_INFO_NAME               1   /* name */
#define NBD_INFO_DESCRIPTION        2   /* text */
#define NBD_INFO_BLOCK_SIZE         3   /* u32 min, u32 preferred, u32 max */

/* Commands and their flags */
#define NBD_CMD_READ                0
#define NBD_CMD_WRITE               1
#define NBD_CMD_DISC                2
#define NBD_CMD_FLUSH               3
#define NBD_CMD_TRIM                4
#define NBD_CMD_CACHE               5
#define NBD_CMD_WRITE_ZEROES        6
#define NBD_CMD_BLOCK_STATUS        7

#define NBD_CMD_FLAG_FUA            (1 << 0)
#define NBD_CMD_FLAG_NO_HOLE        (1 << 1)
#define NBD_CMD_FLAG_DF             (1 << 2)
#define NBD_CMD_FLAG_REQ_ONE        (1 << 3)
#define NBD_CMD_FLAG_FAST_ZERO      (1 << 4)

/* Structured reply chunks */
#define NBD_REPLY_FLAG_DONE         (1 << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1   /* u64 offset, data */
#define NBD_REPLY_TYPE_OFFSET_HOLE  2   /* u64 offset, u32 length */
#define NBD_REPLY_TYPE_BLOCK_STATUS 5   /* u32 context id, (u32 len, u32 flags)* */
#define NBD_REPLY_TYPE_ERROR        ((1 << 15) + 1) /* u32 err, u16 len, msg */
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1 << 15) + 2) /* ... then u64 offset */
#define NBD_REPLY_TYPE_IS_ERR(t)    (((t) >> 15) & 1)

/* Error values on the wire */
#define NBD_SUCCESS     0
#define NBD_EPERM       1
#define NBD_EIO         5
#define NBD_ENOMEM      12
#define NBD_EINVAL      22
#define NBD_ENOSPC      28
#define NBD_EOVERFLOW   75
#define NBD_ENOTSUP     95
#define NBD_ESHUTDOWN   108

/* Metadata contexts */
#define NBD_META_BASE_ALLOCATION    "base:allocation"
#define NBD_META_QEMU_ALLOC_DEPTH   "qemu:allocation-depth"
#define NBD_STATE_HOLE              (1 << 0)
#define NBD_STATE_ZERO              (1 << 1)

/* Limits (as QEMU's) */
#define NBD_MAX_STRING_SIZE         4096        /* names, descriptions */
#define NBD_MAX_BUFFER_SIZE         (32 * 1024 * 1024)
#define NBD_MAX_OPTION_SIZE         (64 * 1024) /* one option's data */

/* errno -> wire error, and back */
uint32_t nbd_errno_to_wire(int err);
int nbd_wire_to_errno(uint32_t err);
const char *nbd_opt_name(uint32_t opt);
const char *nbd_cmd_name(uint16_t cmd);

/* Byte-order helpers over a cursor (no bounds beyond what callers check) */
static inline uint8_t *nbd_put16(uint8_t *p, uint16_t v)
{
    v = cpu_to_be16(v);
    memcpy(p, &v, 2);
    return p + 2;
}
static inline uint8_t *nbd_put32(uint8_t *p, uint32_t v)
{
    v = cpu_to_be32(v);
    memcpy(p, &v, 4);
    return p + 4;
}
static inline uint8_t *nbd_put64(uint8_t *p, uint64_t v)
{
    v = cpu_to_be64(v);
    memcpy(p, &v, 8);
    return p + 8;
}
static inline uint16_t nbd_get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return be16_to_cpu(v);
}
static inline uint32_t nbd_get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32_to_cpu(v);
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64_to_cpu(v);
}

#endif
