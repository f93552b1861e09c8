/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Sheepdog client wire protocol (version 2, sheep 1.0.1): constants, the
 * 48-byte request/response headers with their encoders, the inode layout and
 * the parser of "sheepdog:..." image names.
 *
 * All integers are little-endian on the wire; the structs below are in CPU
 * order and are converted by sd_req_encode() / sd_rsp_decode() only.
 *
 *   request header (48 bytes)               response header (48 bytes)
 *   0 proto_ver 1 opcode 2 flags 4 epoch    0..15 as in the request
 *   8 id 12 data_length                     16 result
 *   16..47 object part or VDI part          20.. object / VDI / cluster part
 *
 *   inode object: 0 header (4664 bytes) | 4664 data_vdi_id[2^20] u32 | gref
 */
#ifndef SHEEPDOG_PROTO_H
#define SHEEPDOG_PROTO_H

#include "util/osdep.h"
#include "util/error.h"

#define SD_PROTO_VER            0x02
#define SD_DEFAULT_ADDR         "localhost"
#define SD_DEFAULT_PORT         7000
#define SD_HDR_SIZE             48

/* Opcodes a client sends */
#define SD_OP_CREATE_AND_WRITE_OBJ  0x01
#define SD_OP_READ_OBJ              0x02
#define SD_OP_WRITE_OBJ             0x03
#define SD_OP_DISCARD_OBJ           0x05
#define SD_OP_NEW_VDI               0x11
#define SD_OP_LOCK_VDI              0x12
#define SD_OP_RELEASE_VDI           0x13
#define SD_OP_GET_VDI_INFO          0x14
#define SD_OP_READ_VDIS             0x15
#define SD_OP_FLUSH_VDI             0x16
#define SD_OP_DEL_VDI               0x17
#define SD_OP_GET_CLUSTER_DEFAULT   0x18

/* Flags */
#define SD_FLAG_CMD_WRITE       0x01
#define SD_FLAG_CMD_COW         0x02
#define SD_FLAG_CMD_CACHE       0x04
#define SD_FLAG_CMD_DIRECT      0x08

/* Results */
#define SD_RES_SUCCESS          0x00
#define SD_RES_UNKNOWN          0x01
#define SD_RES_NO_OBJ           0x02
#define SD_RES_EIO              0x03
#define SD_RES_VDI_EXIST        0x04
#define SD_RES_INVALID_PARMS    0x05
#define SD_RES_SYSTEM_ERROR     0x06
#define SD_RES_VDI_LOCKED       0x07
#define SD_RES_NO_VDI           0x08
#define SD_RES_NO_BASE_VDI      0x09
#define SD_RES_VDI_READ         0x0A
#define SD_RES_VDI_WRITE        0x0B
#define SD_RES_BASE_VDI_READ    0x0C
#define SD_RES_BASE_VDI_WRITE   0x0D
#define SD_RES_NO_TAG           0x0E
#define SD_RES_STARTUP          0x0F
#define SD_RES_VDI_NOT_LOCKED   0x10
#define SD_RES_SHUTDOWN         0x11
#define SD_RES_NO_MEM           0x12
#define SD_RES_FULL_VDI         0x13
#define SD_RES_VER_MISMATCH     0x14
#define SD_RES_NO_SPACE         0x15
#define SD_RES_WAIT_FOR_FORMAT  0x16
#define SD_RES_WAIT_FOR_JOIN    0x17
#define SD_RES_JOIN_FAILED      0x18
#define SD_RES_HALT             0x19
#define SD_RES_READONLY         0x1A
#define SD_RES_INODE_INVALIDATED 0x1D

/* Object IDs */
#define SD_VDI_BIT              (UINT64_C(1) << 63)
#define SD_VMSTATE_BIT          (UINT64_C(1) << 62)
#define SD_VDI_SPACE_SHIFT      32
#define SD_NR_VDIS              (1U << 24)
#define SD_MAX_DATA_OBJS        (1U << 20)
#define SD_NAME_LEN             256
#define SD_TAG_LEN              256
#define SD_MAX_HOST_LEN         256     /* host names are shorter than this */
#define SD_MIN_BLOCK_SHIFT      20
#define SD_MAX_BLOCK_SHIFT      31
#define SD_DEFAULT_BLOCK_SHIFT  22
#define SD_MAX_COPIES           31

/* Inode layout */
#define SD_INODE_SIZE           12587576
#define SD_INODE_HEADER_SIZE    4664
#define SD_INODE_DATA_INDEX     SD_INODE_HEADER_SIZE
#define SD_INODE_CLIENT_SIZE    (SD_INODE_HEADER_SIZE + 4 * SD_MAX_DATA_OBJS)
#define SD_INODE_OFF_NAME       0
#define SD_INODE_OFF_TAG        256
#define SD_INODE_OFF_CTIME      512
#define SD_INODE_OFF_SNAP_CTIME 520
#define SD_INODE_OFF_VM_CLOCK   528
#define SD_INODE_OFF_VDI_SIZE   536
#define SD_INODE_OFF_VM_STATE   544
#define SD_INODE_OFF_COPY_POLICY 552
#define SD_INODE_OFF_STORE_POLICY 553
#define SD_INODE_OFF_NR_COPIES  554
#define SD_INODE_OFF_BLOCK_SHIFT 555
#define SD_INODE_OFF_SNAP_ID    556
#define SD_INODE_OFF_VDI_ID     560
#define SD_INODE_OFF_PARENT     564

_Static_assert(SD_INODE_CLIENT_SIZE == 4198968, "client part of the inode");

/* Little-endian field access in wire buffers. */
static inline void sd_st8(uint8_t *p, uint8_t v)
{
    p[0] = v;
}

static inline void sd_st16(uint8_t *p, uint16_t v)
{
    v = cpu_to_le16(v);
    memcpy(p, &v, 2);
}

static inline void sd_st32(uint8_t *p, uint32_t v)
{
    v = cpu_to_le32(v);
    memcpy(p, &v, 4);
}

static inline void sd_st64(uint8_t *p, uint64_t v)
{
    v = cpu_to_le64(v);
    memcpy(p, &v, 8);
}

static inline uint16_t sd_ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return le16_to_cpu(v);
}

static inline uint32_t sd_ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32_to_cpu(v);
}

static inline uint64_t sd_ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64_to_cpu(v);
}

static inline uint64_t sd_vid_to_vdi_oid(uint32_t vid)
{
    return SD_VDI_BIT | ((uint64_t)vid << SD_VDI_SPACE_SHIFT);
}

static inline uint64_t sd_vid_to_data_oid(uint32_t vid, uint32_t idx)
{
    return ((uint64_t)vid << SD_VDI_SPACE_SHIFT) | idx;
}

static inline uint64_t sd_vid_to_vmstate_oid(uint32_t vid, uint32_t idx)
{
    return SD_VMSTATE_BIT | ((uint64_t)vid << SD_VDI_SPACE_SHIFT) | idx;
}

/* A request header in CPU order; obj or vdi is used by opcode. */
typedef struct SheepdogReq {
    uint8_t proto_ver;
    uint8_t opcode;
    uint16_t flags;
    uint32_t epoch;
    uint32_t id;
    uint32_t data_length;
    union {
        struct {
            uint64_t oid;
            uint64_t cow_oid;
            uint8_t copies;
            uint8_t copy_policy;
            uint8_t ec_index;
            uint32_t tgt_epoch;
            uint32_t offset;
        } obj;
        struct {
            uint64_t vdi_size;
            uint32_t base_vdi_id;
            uint8_t copies;
            uint8_t copy_policy;
            uint8_t store_policy;
            uint8_t block_size_shift;
            uint32_t snapid;
            uint32_t type;
        } vdi;
    };
} SheepdogReq;

/* A response header in CPU order. */
typedef struct SheepdogRsp {
    uint8_t proto_ver;
    uint8_t opcode;
    uint16_t flags;
    uint32_t epoch;
    uint32_t id;
    uint32_t data_length;
    uint32_t result;
    /* VDI responses */
    uint32_t vdi_id;
    uint32_t attr_id;
    uint8_t copies;
    uint8_t block_size_shift;
    /* GET_CLUSTER_DEFAULT */
    uint8_t nr_copies;
    uint8_t copy_policy;
    uint8_t default_block_size_shift;
} SheepdogRsp;

/* The inode header fields a client uses, in CPU order. */
typedef struct SheepdogInodeHeader {
    char name[SD_NAME_LEN + 1];
    char tag[SD_TAG_LEN + 1];
    uint64_t create_time;
    uint64_t snap_ctime;
    uint64_t vm_clock_nsec;
    uint64_t vdi_size;
    uint64_t vm_state_size;
    uint8_t copy_policy;
    uint8_t store_policy;
    uint8_t nr_copies;
    uint8_t block_size_shift;
    uint32_t snap_id;
    uint32_t vdi_id;
    uint32_t parent_vdi_id;
} SheepdogInodeHeader;

void sd_req_encode(const SheepdogReq *req, uint8_t buf[SD_HDR_SIZE]);
void sd_req_decode(const uint8_t buf[SD_HDR_SIZE], SheepdogReq *req);
void sd_rsp_encode(const SheepdogRsp *rsp, uint8_t buf[SD_HDR_SIZE]);
void sd_rsp_decode(const uint8_t buf[SD_HDR_SIZE], SheepdogRsp *rsp);
/* buf holds at least the first SD_INODE_HEADER_SIZE bytes of an inode. */
void sd_inode_header_decode(const uint8_t *buf, SheepdogInodeHeader *hdr);
/* Short name of a result code, or "unknown error 0x.." (static buffer). */
const char *sd_strerror(uint32_t result);
/* The negative errno a result code stands for (0 for SUCCESS). */
int sd_result_to_errno(uint32_t result);
/* An erasure-code copy_policy ((D/2) << 4 | P, D in 2,4,8,16, P 1..15)
 * with nr_copies = D + P. */
bool sd_valid_ec_policy(uint8_t copy_policy, uint8_t nr_copies);
/* FNV-1a-64 of the name, masked to 24 bits, 0 mapped to 1. */
uint32_t sd_name_hash(const char *name);

/* A parsed image name. */
typedef struct SheepdogName {
    char host[SD_MAX_HOST_LEN];     /* "" with a Unix socket */
    int port;
    char *socket;                   /* Unix socket path or NULL (g_free) */
    char vdi[SD_NAME_LEN];
    uint32_t snap_id;               /* 0: none or by tag */
    char tag[SD_TAG_LEN];           /* "" unless a tag was given */
} SheepdogName;

/*
 * Parse sheepdog:VDI[:SNAP], sheepdog:HOST:PORT:VDI[:SNAP],
 * sheepdog[+tcp]://[HOST[:PORT]]/VDI[#SNAP] and
 * sheepdog+unix:///VDI?socket=PATH[#SNAP]. Returns 0 or -EINVAL with errp
 * set; on success free name->socket with sd_name_clear().
 */
int sd_parse_name(const char *filename, SheepdogName *name, Error **errp);
void sd_name_clear(SheepdogName *name);

#endif
