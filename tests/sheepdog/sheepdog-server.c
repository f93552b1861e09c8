/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A single-process Sheepdog (protocol version 2, sheep 1.0.1) test peer: it
 * stores objects in a directory, answers pipelined requests out of order and
 * injects faults on demand.  See tests/sheepdog/README.md.
 */

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <glib.h>

/* ---- protocol constants (docs: shared/reference/sheepdog-protocol.md) ---- */

#define SD_PROTO_VER            0x02
#define SD_SHEEP_PROTO_VER      0x0a
#define SD_HDR_SIZE             48

#define SD_OP_CREATE_AND_WRITE_OBJ 0x01
#define SD_OP_READ_OBJ          0x02
#define SD_OP_WRITE_OBJ         0x03
#define SD_OP_REMOVE_OBJ        0x04
#define SD_OP_DISCARD_OBJ       0x05
#define SD_OP_NEW_VDI           0x11
#define SD_OP_LOCK_VDI          0x12
#define SD_OP_RELEASE_VDI       0x13
#define SD_OP_GET_VDI_INFO      0x14
#define SD_OP_READ_VDIS         0x15
#define SD_OP_FLUSH_VDI         0x16
#define SD_OP_DEL_VDI           0x17
#define SD_OP_GET_CLUSTER_DEFAULT 0x18

#define SD_FLAG_CMD_WRITE       0x01
#define SD_FLAG_CMD_COW         0x02

#define SD_RES_SUCCESS          0x00
#define SD_RES_NO_OBJ           0x02
#define SD_RES_EIO              0x03
#define SD_RES_SYSTEM_ERROR     0x06
#define SD_RES_VDI_EXIST        0x04
#define SD_RES_INVALID_PARMS    0x05
#define SD_RES_VDI_LOCKED       0x07
#define SD_RES_NO_VDI           0x08
#define SD_RES_BASE_VDI_READ    0x0C
#define SD_RES_BASE_VDI_WRITE   0x0D
#define SD_RES_NO_TAG           0x0E
#define SD_RES_FULL_VDI         0x13
#define SD_RES_VER_MISMATCH     0x14
#define SD_RES_READONLY         0x1A

#define VDI_BIT                 (UINT64_C(1) << 63)
#define VMSTATE_BIT             (UINT64_C(1) << 62)
#define SD_NR_VDIS              (1U << 24)
#define SD_MAX_VDI_LEN          256
#define SD_MAX_VDI_TAG_LEN      256
#define SD_INODE_DATA_INDEX     (1U << 20)
#define SD_INODE_HEADER_SIZE    4664
#define SD_INODE_MAP_END        (SD_INODE_HEADER_SIZE + 4 * SD_INODE_DATA_INDEX)
#define SD_INODE_SIZE           12587576
#define VDI_BITMAP_BYTES        (SD_NR_VDIS / 8)

/* Inode header field offsets (all little-endian). */
#define INO_NAME                0
#define INO_TAG                 256
#define INO_CREATE_TIME         512
#define INO_SNAP_CTIME          520
#define INO_VDI_SIZE            536
#define INO_COPY_POLICY         552
#define INO_STORE_POLICY        553
#define INO_NR_COPIES           554
#define INO_BLOCK_SIZE_SHIFT    555
#define INO_SNAP_ID             556
#define INO_VDI_ID              560
#define INO_PARENT_VDI_ID       564

/* Request/response header field offsets. */
#define H_PROTO_VER             0
#define H_OPCODE                1
#define H_FLAGS                 2
#define H_EPOCH                 4
#define H_ID                    8
#define H_DATA_LENGTH           12
#define H_OBJ_OID               16
#define H_OBJ_COW_OID           24
#define H_OBJ_OFFSET            40
#define H_VDI_SIZE              16
#define H_VDI_BASE              24
#define H_VDI_COPIES            28
#define H_VDI_COPY_POLICY       29
#define H_VDI_STORE_POLICY      30
#define H_VDI_BSS               31
#define H_VDI_SNAPID            32
#define H_VDI_TYPE              36
#define R_RESULT                16
#define R_VDI_ID                24
#define R_VDI_COPIES            32
#define R_VDI_BSS               33
#define R_CD_COPIES             20
#define R_CD_COPY_POLICY        21
#define R_CD_BSS                22

#define SERVER_EPOCH            1
#define MAX_PAYLOAD             (64U << 20)
#define LOCK_TYPE_NORMAL        0
#define LOCK_TYPE_SHARED        1

/* On-disk/wire sizes gathered in one place. */
G_STATIC_ASSERT(SD_INODE_MAP_END == 4198968);
G_STATIC_ASSERT(SD_INODE_MAP_END + 8 * SD_INODE_DATA_INDEX == SD_INODE_SIZE);
G_STATIC_ASSERT(VDI_BITMAP_BYTES == 2097152);

enum lock_state { LOCK_NONE, LOCK_NORMAL, LOCK_SHARED };
enum order_mode { ORDER_IN, ORDER_SWAP, ORDER_REVERSE, ORDER_SHUFFLE };

static inline uint16_t ld16(const uint8_t *p) { return p[0] | p[1] << 8; }
static inline uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}
static inline uint64_t ld64(const uint8_t *p)
{
    return ld32(p) | (uint64_t)ld32(p + 4) << 32;
}
static inline void st32(uint8_t *p, uint32_t v)
{
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}
static inline void st64(uint8_t *p, uint64_t v)
{
    st32(p, v); st32(p + 4, v >> 32);
}

static inline uint32_t oid_to_vid(uint64_t oid) { return (oid >> 32) & 0xffffff; }
static inline uint64_t vid_to_vdi_oid(uint32_t vid)
{
    return VDI_BIT | (uint64_t)vid << 32;
}
static inline uint64_t vid_to_data_oid(uint32_t vid, uint32_t idx)
{
    return (uint64_t)vid << 32 | idx;
}
static inline bool is_vdi_obj(uint64_t oid) { return oid & VDI_BIT; }
static inline bool is_data_obj(uint64_t oid) { return !(oid >> 56); }

/* ---- server state ---- */

struct vdi {
    uint32_t vid;
    uint8_t hdr[SD_INODE_HEADER_SIZE];   /* cached copy of the inode header */
    enum lock_state lock;
};

struct fault {
    uint8_t opcode;
    uint32_t result;
    long count;                          /* < 0: unlimited */
};

static struct {
    const char *dir;
    bool locking;
    uint8_t default_copies;
    uint8_t default_shift;
    bool verbose;
    enum order_mode order;
    uint64_t rng;
    long close_after;                    /* < 0: off */
    bool close_repeat;
    long close_count;
    unsigned delay_ms;
    GArray *faults;                      /* struct fault */
    GArray *lost;                        /* struct fault: answers lost */
    uint8_t *inuse;                      /* VDI bitmap, bit vid */
    GHashTable *vdis;                    /* vid -> struct vdi */
    GHashTable *refs;                    /* data oid -> reference count */
    uint64_t nr_requests;
    uint64_t nr_garbage;                 /* headers no client would send */
} srv;

static void __attribute__((format(printf, 1, 2))) die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "sheepdog-server: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void __attribute__((format(printf, 1, 2))) dbg(const char *fmt, ...)
{
    va_list ap;

    if (!srv.verbose) {
        return;
    }
    va_start(ap, fmt);
    fprintf(stderr, "sheepdog-server: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t sd_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec << 32 | (uint32_t)ts.tv_nsec;
}

static uint64_t rng_next(void)
{
    /* xorshift64*: deterministic for a given --shuffle-seed */
    srv.rng ^= srv.rng >> 12;
    srv.rng ^= srv.rng << 25;
    srv.rng ^= srv.rng >> 27;
    return srv.rng * UINT64_C(2685821657736338717);
}

static bool bit_test(uint32_t vid) { return srv.inuse[vid >> 3] & (1 << (vid & 7)); }
static void bit_set(uint32_t vid) { srv.inuse[vid >> 3] |= 1 << (vid & 7); }

static uint32_t vdi_hash(const char *name)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    size_t len = strnlen(name, SD_MAX_VDI_LEN);

    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)name[i];
        h *= UINT64_C(0x100000001b3);
    }
    h &= SD_NR_VDIS - 1;
    return h ? h : 1;
}

static struct vdi *vdi_get(uint32_t vid)
{
    return g_hash_table_lookup(srv.vdis, GUINT_TO_POINTER(vid));
}

static bool vdi_is_snapshot(const struct vdi *v)
{
    return ld64(v->hdr + INO_SNAP_CTIME) != 0;
}

static bool vdi_is_deleted(const struct vdi *v)
{
    return v->hdr[INO_NAME] == '\0';
}

/* ---- object store: one file per object, named by the oid in hex ---- */

static char *obj_path(uint64_t oid)
{
    return g_strdup_printf("%s/%016" PRIx64, srv.dir, oid);
}

static bool obj_exists(uint64_t oid)
{
    char *p = obj_path(oid);
    bool ret = access(p, F_OK) == 0;

    g_free(p);
    return ret;
}

/* Size of an object: inodes are fixed, data/vmstate follow their VDI. */
static uint64_t obj_size(uint64_t oid)
{
    struct vdi *v;

    if (is_vdi_obj(oid)) {
        return SD_INODE_SIZE;
    }
    v = vdi_get(oid_to_vid(oid));
    if (v && v->hdr[INO_BLOCK_SIZE_SHIFT]) {
        /* sheep takes any shift; files here stay at most 4 GiB */
        return UINT64_C(1) << MIN(v->hdr[INO_BLOCK_SIZE_SHIFT], 32);
    }
    return UINT64_C(1) << srv.default_shift;
}

static int obj_open(uint64_t oid, int flags)
{
    char *p = obj_path(oid);
    int fd = open(p, flags | O_CLOEXEC, 0644);

    g_free(p);
    return fd;
}

/* Bytes sheep returns past the end of an object file are whatever its
 * buffer held; this server returns this filler so that a client that
 * trusts them shows. */
#define PAST_END_FILL 0xa5

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, off + done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -1;
        }
        if (n == 0) {
            memset((char *)buf + done, PAST_END_FILL, len - done);
            break;
        }
        done += n;
    }
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, off + done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -1;
        }
        done += n;
    }
    return 0;
}

/* Read from an existing object; SD_RES_* result. */
static int obj_read(uint64_t oid, void *buf, size_t len, uint64_t off)
{
    int fd = obj_open(oid, O_RDONLY);
    int ret;

    if (fd < 0) {
        return errno == ENOENT ? SD_RES_NO_OBJ : SD_RES_EIO;
    }
    ret = pread_full(fd, buf, len, off) < 0 ? SD_RES_EIO : SD_RES_SUCCESS;
    close(fd);
    return ret;
}

/* Write into an existing object; SD_RES_* result. */
static int obj_write(uint64_t oid, const void *buf, size_t len, uint64_t off)
{
    int fd = obj_open(oid, O_WRONLY);
    int ret;

    if (fd < 0) {
        return errno == ENOENT ? SD_RES_NO_OBJ : SD_RES_EIO;
    }
    ret = pwrite_full(fd, buf, len, off) < 0 ? SD_RES_EIO : SD_RES_SUCCESS;
    close(fd);
    return ret;
}

/*
 * Create (or replace) an object of @size bytes: the parent @cow_oid (if not
 * 0) is copied first, the rest is zero, then @buf is written at @off.  The
 * object is built under a temporary name and renamed, so a reader never sees
 * a half-made object.
 */
static int obj_create(uint64_t oid, uint64_t cow_oid, uint64_t size,
                      const void *buf, size_t len, uint64_t off)
{
    char *p = obj_path(oid);
    char *tmp = g_strdup_printf("%s.tmp", p);
    int fd, ret = SD_RES_SUCCESS;

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, size) < 0) {
        ret = SD_RES_EIO;
        goto out;
    }
    if (cow_oid) {
        uint64_t psize = MIN(obj_size(cow_oid), size);
        void *pbuf = g_malloc(psize);
        ret = obj_read(cow_oid, pbuf, psize, 0);
        if (ret == SD_RES_SUCCESS && pwrite_full(fd, pbuf, psize, 0) < 0) {
            ret = SD_RES_EIO;
        }
        g_free(pbuf);
        if (ret != SD_RES_SUCCESS) {
            goto out;
        }
    }
    if (len && pwrite_full(fd, buf, len, off) < 0) {
        ret = SD_RES_EIO;
        goto out;
    }
    if (rename(tmp, p) < 0) {
        ret = SD_RES_EIO;
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    if (ret != SD_RES_SUCCESS) {
        unlink(tmp);
    }
    g_free(tmp);
    g_free(p);
    return ret;
}

static void obj_remove(uint64_t oid)
{
    char *p = obj_path(oid);

    if (unlink(p) < 0 && errno != ENOENT) {
        fprintf(stderr, "sheepdog-server: unlink %s: %m\n", p);
    }
    g_free(p);
}

/* ---- persistent VDI state: in-use bitmap and locks ---- */

static void state_save(void)
{
    char *p = g_strdup_printf("%s/vdi-state", srv.dir);
    char *tmp = g_strdup_printf("%s.tmp", p);
    GString *s = g_string_new("# sheepdog-server state: inuse VID\n");
    GHashTableIter it;
    gpointer key, val;

    g_hash_table_iter_init(&it, srv.vdis);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        struct vdi *v = val;
        g_string_append_printf(s, "inuse %06x\n", v->vid);
    }
    if (!g_file_set_contents(tmp, s->str, s->len, NULL) || rename(tmp, p) < 0) {
        fprintf(stderr, "sheepdog-server: cannot write %s\n", p);
    }
    g_string_free(s, TRUE);
    g_free(tmp);
    g_free(p);
}

/* ---- reference counts of data objects ---- */

static void ref_get(uint32_t vid, uint32_t idx)
{
    uint64_t *key = g_new(uint64_t, 1);
    gpointer old;

    *key = vid_to_data_oid(vid, idx);
    old = g_hash_table_lookup(srv.refs, key);
    g_hash_table_replace(srv.refs, key, GSIZE_TO_POINTER(GPOINTER_TO_SIZE(old) + 1));
}

/* Drop one reference; the object goes when its last reference goes. */
static void ref_put(uint32_t vid, uint32_t idx)
{
    uint64_t key = vid_to_data_oid(vid, idx);
    gsize n = GPOINTER_TO_SIZE(g_hash_table_lookup(srv.refs, &key));

    if (n > 1) {
        uint64_t *k = g_new(uint64_t, 1);
        *k = key;
        g_hash_table_replace(srv.refs, k, GSIZE_TO_POINTER(n - 1));
        return;
    }
    g_hash_table_remove(srv.refs, &key);
    dbg("removing data object %016" PRIx64, key);
    obj_remove(key);
}

static uint32_t ref_count(uint64_t oid)
{
    return GPOINTER_TO_SIZE(g_hash_table_lookup(srv.refs, &oid));
}

/* Account for entries [first, first+n) of a map changing from @old to @new. */
static void refs_update(uint32_t first, uint32_t n, const uint32_t *old,
                        const uint32_t *new)
{
    for (uint32_t i = 0; i < n; i++) {
        if (old[i] == new[i]) {
            continue;
        }
        if (new[i]) {
            ref_get(new[i], first + i);
        }
        if (old[i]) {
            ref_put(old[i], first + i);
        }
    }
}

static int inode_read_map(uint32_t vid, uint32_t *map)
{
    int ret = obj_read(vid_to_vdi_oid(vid), map, 4 * SD_INODE_DATA_INDEX,
                       SD_INODE_HEADER_SIZE);

    for (uint32_t i = 0; ret == SD_RES_SUCCESS && i < SD_INODE_DATA_INDEX; i++) {
        map[i] = GUINT32_FROM_LE(map[i]);
    }
    return ret;
}

static int vdi_reload_header(struct vdi *v)
{
    return obj_read(vid_to_vdi_oid(v->vid), v->hdr, SD_INODE_HEADER_SIZE, 0);
}

static struct vdi *vdi_add(uint32_t vid)
{
    struct vdi *v = g_new0(struct vdi, 1);

    v->vid = vid;
    bit_set(vid);
    g_hash_table_insert(srv.vdis, GUINT_TO_POINTER(vid), v);
    return v;
}

/* ---- VDI lookup, mirroring sheep's bitmap walk ---- */

struct lookup {
    int ret;
    uint32_t vid;           /* the VDI found */
    uint32_t snapid;        /* snap_id for a new working VDI of this name */
    uint32_t free_bit;      /* where a new VDI of this name would go */
};

/*
 * sheep 1.0.1 dies here: a lookup whose payload had no tag field (256
 * bytes) has no tag string at all, and comparing a tagged snapshot's tag
 * with it dereferences NULL. Every connection of the node goes with it.
 */
static void __attribute__((noreturn)) crash_like_sheep(const char *why)
{
    fprintf(stderr, "sheepdog-server: crashing as sheep 1.0.1 does (SIGSEGV):"
            " %s\n", why);
    _exit(128 + SIGSEGV);
}

static bool tag_match(const struct vdi *v, const char *tag, uint32_t snapid)
{
    const char *itag = (const char *)v->hdr + INO_TAG;

    if (itag[0] && !tag) {
        crash_like_sheep("lookup without a tag field met a tagged snapshot");
    }
    if (itag[0] && !strncmp(itag, tag, SD_MAX_VDI_TAG_LEN)) {
        return true;
    }
    return snapid == ld32(v->hdr + INO_SNAP_ID);
}

/*
 * Walk the run of set bits starting at hash(name) from its end backwards, so
 * the newest VDI of that name is seen first.  Without tag/snapid the newest
 * must be the working VDI; with them only snapshots match.
 */
static struct lookup vdi_lookup(const char *name, const char *tag, uint32_t snapid)
{
    struct lookup r = { .ret = SD_RES_NO_VDI };
    uint32_t left = vdi_hash(name), right = left, n = 0;
    bool has_tag = (tag && tag[0]) || snapid;
    bool found_working = false;

    while (bit_test(right)) {
        right = (right + 1) & (SD_NR_VDIS - 1);
        if (++n == SD_NR_VDIS) {
            r.ret = SD_RES_FULL_VDI;
            return r;
        }
    }
    r.free_bit = right;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t vid = (right - 1 - i) & (SD_NR_VDIS - 1);
        struct vdi *v = vdi_get(vid);

        if (!v || strncmp((const char *)v->hdr + INO_NAME, name, SD_MAX_VDI_LEN)) {
            continue;
        }
        if (has_tag) {
            if (!vdi_is_snapshot(v)) {
                found_working = true;
                continue;
            }
            if (!tag_match(v, tag, snapid)) {
                continue;
            }
        } else {
            r.snapid = ld32(v->hdr + INO_SNAP_ID) + 1;
            if (vdi_is_snapshot(v)) {
                break;              /* the working VDI was deleted */
            }
        }
        r.vid = vid;
        r.ret = SD_RES_SUCCESS;
        return r;
    }
    r.ret = found_working ? SD_RES_NO_TAG : SD_RES_NO_VDI;
    return r;
}

/* ---- requests ---- */

struct request {
    uint8_t hdr[SD_HDR_SIZE];
    uint8_t *data;          /* payload (WRITE) or NULL */
    uint32_t len;           /* payload length */
};

struct reply {
    uint8_t hdr[SD_HDR_SIZE];
    uint8_t *data;
    uint32_t len;
};

static uint8_t req_op(const struct request *rq) { return rq->hdr[H_OPCODE]; }
static bool req_write(const struct request *rq)
{
    return ld16(rq->hdr + H_FLAGS) & SD_FLAG_CMD_WRITE;
}

/* Split a name (+tag) payload; false if its length is not 256 or 512.
 * *ptag is tag, or NULL when the payload had no tag field (as in sheep). */
static bool req_name_tag(const struct request *rq, char *name, char *tag,
                         const char **ptag)
{
    if (!req_write(rq) ||
        (rq->len != SD_MAX_VDI_LEN && rq->len != SD_MAX_VDI_LEN + SD_MAX_VDI_TAG_LEN)) {
        return false;
    }
    memcpy(name, rq->data, SD_MAX_VDI_LEN);
    name[SD_MAX_VDI_LEN] = '\0';
    tag[0] = '\0';
    *ptag = NULL;
    if (rq->len > SD_MAX_VDI_LEN) {
        memcpy(tag, rq->data + SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN);
        tag[SD_MAX_VDI_TAG_LEN] = '\0';
        *ptag = tag;
    }
    return true;
}

/* Write @len bytes at @off into inode @vid, keeping references in step. */
static int inode_write(struct vdi *v, const uint8_t *buf, uint32_t len, uint64_t off)
{
    uint64_t end = off + len;
    uint64_t ms = MAX(off, SD_INODE_HEADER_SIZE), me = MIN(end, SD_INODE_MAP_END);
    uint32_t first = 0, n = 0;
    uint32_t *old = NULL, *new = NULL;
    int ret;

    if (ms < me) {
        /* whole entries touched by the write, partial ones included */
        first = (ms - SD_INODE_HEADER_SIZE) / 4;
        n = (me - SD_INODE_HEADER_SIZE + 3) / 4 - first;
        old = g_new(uint32_t, n);
        new = g_new(uint32_t, n);
        ret = obj_read(vid_to_vdi_oid(v->vid), old, 4 * n,
                       SD_INODE_HEADER_SIZE + 4 * (uint64_t)first);
        if (ret != SD_RES_SUCCESS) {
            goto out;
        }
    }
    ret = obj_write(vid_to_vdi_oid(v->vid), buf, len, off);
    if (ret != SD_RES_SUCCESS) {
        goto out;
    }
    if (n) {
        ret = obj_read(vid_to_vdi_oid(v->vid), new, 4 * n,
                       SD_INODE_HEADER_SIZE + 4 * (uint64_t)first);
        for (uint32_t i = 0; i < n; i++) {
            old[i] = GUINT32_FROM_LE(old[i]);
            new[i] = GUINT32_FROM_LE(new[i]);
        }
        refs_update(first, n, old, new);
    }
    if (off < SD_INODE_HEADER_SIZE) {
        ret = vdi_reload_header(v);
    }
out:
    g_free(old);
    g_free(new);
    return ret;
}

/* Replace a whole inode (CREATE_AND_WRITE on an inode oid). */
static int inode_replace(uint64_t oid, uint64_t cow_oid, const uint8_t *buf,
                         uint32_t len, uint64_t off)
{
    uint32_t vid = oid_to_vid(oid);
    uint32_t *old = g_new0(uint32_t, SD_INODE_DATA_INDEX);
    uint32_t *new = g_new0(uint32_t, SD_INODE_DATA_INDEX);
    struct vdi *v = vdi_get(vid);
    int ret;

    if (v) {
        inode_read_map(vid, old);
    }
    ret = obj_create(oid, cow_oid, SD_INODE_SIZE, buf, len, off);
    if (ret == SD_RES_SUCCESS && v) {
        inode_read_map(vid, new);
        refs_update(0, SD_INODE_DATA_INDEX, old, new);
        ret = vdi_reload_header(v);
    }
    g_free(old);
    g_free(new);
    return ret;
}

/* A data object of a snapshot may not change (sheep's oid_is_readonly). */
static bool obj_is_readonly(uint64_t oid)
{
    struct vdi *v;

    if (!is_data_obj(oid)) {
        return false;
    }
    v = vdi_get(oid_to_vid(oid));
    return v && vdi_is_snapshot(v);
}

/*
 * This server is one node, one zone: like a one-node sheep it cannot place
 * the strips of an erasure-coded VDI's data or VM state (SYSTEM_ERROR on
 * every access); its inode is replicated and works.
 */
static bool obj_needs_zones(uint64_t oid)
{
    struct vdi *v;

    if (is_vdi_obj(oid)) {
        return false;
    }
    v = vdi_get(oid_to_vid(oid));
    return v && v->hdr[INO_COPY_POLICY] != 0;
}

static int op_create_and_write(const struct request *rq, struct reply *rp)
{
    uint64_t oid = ld64(rq->hdr + H_OBJ_OID);
    uint64_t cow = ld64(rq->hdr + H_OBJ_COW_OID);
    uint64_t off = ld32(rq->hdr + H_OBJ_OFFSET);
    bool is_cow = ld16(rq->hdr + H_FLAGS) & SD_FLAG_CMD_COW;

    if (!req_write(rq)) {
        return SD_RES_INVALID_PARMS;
    }
    if (obj_needs_zones(oid)) {
        return SD_RES_SYSTEM_ERROR;
    }
    if (obj_is_readonly(oid)) {
        return SD_RES_READONLY;
    }
    if (!is_cow) {
        cow = 0;
    }
    if (is_vdi_obj(oid)) {
        return inode_replace(oid, cow, rq->data, rq->len, off);
    }
    return obj_create(oid, cow, obj_size(oid), rq->data, rq->len, off);
}

static int op_read_obj(const struct request *rq, struct reply *rp)
{
    uint64_t oid = ld64(rq->hdr + H_OBJ_OID);
    uint64_t off = ld32(rq->hdr + H_OBJ_OFFSET);
    uint32_t len = ld32(rq->hdr + H_DATA_LENGTH);
    int ret;

    if (len > MAX_PAYLOAD) {
        return SD_RES_INVALID_PARMS;
    }
    if (obj_needs_zones(oid)) {
        return SD_RES_SYSTEM_ERROR;
    }
    rp->data = g_malloc(len);
    ret = obj_read(oid, rp->data, len, off);
    if (ret == SD_RES_SUCCESS) {
        rp->len = len;
    }
    return ret;
}

static int op_write_obj(const struct request *rq, struct reply *rp)
{
    uint64_t oid = ld64(rq->hdr + H_OBJ_OID);
    uint64_t off = ld32(rq->hdr + H_OBJ_OFFSET);
    struct vdi *v;

    if (!req_write(rq)) {
        return SD_RES_INVALID_PARMS;
    }
    if (obj_needs_zones(oid)) {
        return SD_RES_SYSTEM_ERROR;
    }
    if (obj_is_readonly(oid)) {
        return SD_RES_READONLY;
    }
    if (!obj_exists(oid)) {
        return SD_RES_NO_OBJ;
    }
    if (is_vdi_obj(oid) && (v = vdi_get(oid_to_vid(oid)))) {
        return inode_write(v, rq->data, rq->len, off);
    }
    return obj_write(oid, rq->data, rq->len, off);
}

static int op_remove_obj(const struct request *rq, struct reply *rp)
{
    uint64_t oid = ld64(rq->hdr + H_OBJ_OID);

    if (!obj_exists(oid)) {
        return SD_RES_NO_OBJ;
    }
    obj_remove(oid);
    return SD_RES_SUCCESS;
}

/* Old clients' discard: clear the inode entry, which drops the object. */
static int op_discard_obj(const struct request *rq, struct reply *rp)
{
    uint64_t oid = ld64(rq->hdr + H_OBJ_OID);
    uint32_t idx = oid & 0xffffffff;
    struct vdi *v = vdi_get(oid_to_vid(oid));
    uint8_t zero[4] = { 0 };

    if (!is_data_obj(oid) || idx >= SD_INODE_DATA_INDEX) {
        return SD_RES_INVALID_PARMS;
    }
    if (!v) {
        return SD_RES_NO_OBJ;
    }
    return inode_write(v, zero, 4, SD_INODE_HEADER_SIZE + 4 * (uint64_t)idx);
}

/* Like sheep, a lookup answers the vdi_id field of the inode it found. */
static void reply_vdi(struct reply *rp, const struct vdi *v)
{
    st32(rp->hdr + R_VDI_ID, ld32(v->hdr + INO_VDI_ID));
    rp->hdr[R_VDI_COPIES] = v->hdr[INO_NR_COPIES];
    rp->hdr[R_VDI_BSS] = v->hdr[INO_BLOCK_SIZE_SHIFT];
}

struct new_vdi_args {
    const char *name;
    uint64_t size;
    uint32_t base;
    uint8_t copies, copy_policy, store_policy, shift;
};

/*
 * Write a fresh inode for @vid.  @map (may be NULL) is copied and every
 * non-zero entry gains a reference.
 */
static int vdi_write_new(const struct new_vdi_args *a, uint32_t vid,
                         uint32_t snap_id, uint32_t parent, const uint32_t *map)
{
    uint8_t *hdr = g_malloc0(SD_INODE_HEADER_SIZE);
    uint32_t *lemap = NULL;
    struct vdi *v;
    int ret;

    strncpy((char *)hdr + INO_NAME, a->name, SD_MAX_VDI_LEN);
    st64(hdr + INO_CREATE_TIME, sd_now());
    st64(hdr + INO_VDI_SIZE, a->size);
    hdr[INO_COPY_POLICY] = a->copy_policy;
    hdr[INO_STORE_POLICY] = a->store_policy;
    hdr[INO_NR_COPIES] = a->copies;
    /* sheep computes 1U << shift: a 32-bit shift count, so shift & 31 */
    hdr[INO_BLOCK_SIZE_SHIFT] = a->shift & 31;
    st32(hdr + INO_SNAP_ID, snap_id);
    st32(hdr + INO_VDI_ID, vid);
    st32(hdr + INO_PARENT_VDI_ID, parent);
    ret = obj_create(vid_to_vdi_oid(vid), 0, SD_INODE_SIZE, hdr,
                     SD_INODE_HEADER_SIZE, 0);
    if (ret == SD_RES_SUCCESS && map) {
        lemap = g_new(uint32_t, SD_INODE_DATA_INDEX);
        for (uint32_t i = 0; i < SD_INODE_DATA_INDEX; i++) {
            lemap[i] = GUINT32_TO_LE(map[i]);
        }
        ret = obj_write(vid_to_vdi_oid(vid), lemap, 4 * SD_INODE_DATA_INDEX,
                        SD_INODE_HEADER_SIZE);
    }
    if (ret != SD_RES_SUCCESS) {
        obj_remove(vid_to_vdi_oid(vid));
        ret = SD_RES_EIO;
        goto out;
    }
    v = vdi_add(vid);
    memcpy(v->hdr, hdr, SD_INODE_HEADER_SIZE);
    if (map) {
        uint32_t *zero = g_new0(uint32_t, SD_INODE_DATA_INDEX);
        refs_update(0, SD_INODE_DATA_INDEX, zero, map);
        g_free(zero);
    }
    state_save();
out:
    g_free(lemap);
    g_free(hdr);
    return ret;
}

/* Fresh create (base 0) or clone of @a->base under a new name. */
static int vdi_create(const struct new_vdi_args *a, uint32_t *new_vid)
{
    struct lookup l = vdi_lookup(a->name, NULL, 0);
    uint32_t *map = NULL;
    int ret;

    if (l.ret == SD_RES_SUCCESS) {
        return SD_RES_VDI_EXIST;
    }
    if (l.ret != SD_RES_NO_VDI) {
        return l.ret;
    }
    if (a->base) {
        map = g_new(uint32_t, SD_INODE_DATA_INDEX);
        if (!vdi_get(a->base) || inode_read_map(a->base, map) != SD_RES_SUCCESS) {
            g_free(map);
            return SD_RES_BASE_VDI_READ;
        }
    }
    *new_vid = l.free_bit;
    ret = vdi_write_new(a, l.free_bit, l.snapid ? l.snapid : 1, a->base, map);
    g_free(map);
    return ret;
}

/*
 * The working VDI of @a->name becomes a snapshot and a new working VDI takes
 * the next free vid.  If @a->base is not the working VDI this is sheep's
 * "rebase" (rollback): the new VDI starts from @a->base instead.
 */
static int vdi_snapshot(const struct new_vdi_args *a, uint32_t *new_vid)
{
    struct lookup l = vdi_lookup(a->name, NULL, 0);
    struct vdi *cur, *base;
    uint32_t *map;
    uint8_t ctime[8];
    int ret;

    if (l.ret != SD_RES_SUCCESS) {
        return l.ret;
    }
    cur = vdi_get(l.vid);
    base = vdi_get(a->base);
    map = g_new(uint32_t, SD_INODE_DATA_INDEX);
    if (!base || inode_read_map(a->base, map) != SD_RES_SUCCESS) {
        g_free(map);
        return SD_RES_BASE_VDI_READ;
    }
    st64(ctime, sd_now());
    ret = obj_write(vid_to_vdi_oid(cur->vid), ctime, 8, INO_SNAP_CTIME);
    if (ret != SD_RES_SUCCESS) {
        g_free(map);
        return SD_RES_BASE_VDI_WRITE;
    }
    memcpy(cur->hdr + INO_SNAP_CTIME, ctime, 8);
    *new_vid = l.free_bit;
    ret = vdi_write_new(a, l.free_bit, l.snapid, a->base, map);
    g_free(map);
    return ret;
}

static int op_new_vdi(const struct request *rq, struct reply *rp)
{
    char name[SD_MAX_VDI_LEN + 1];
    struct new_vdi_args a = {
        .name = name,
        .size = ld64(rq->hdr + H_VDI_SIZE),
        .base = ld32(rq->hdr + H_VDI_BASE),
        .copies = rq->hdr[H_VDI_COPIES],
        .copy_policy = rq->hdr[H_VDI_COPY_POLICY],
        .store_policy = rq->hdr[H_VDI_STORE_POLICY],
        .shift = rq->hdr[H_VDI_BSS],
    };
    uint32_t vid = 0;
    int ret;

    if (!a.copies) {
        a.copies = srv.default_copies;
        a.copy_policy = 0;
    }
    if (a.copy_policy) {
        /* erasure code ((data/2)<<4 | parity): copies = data + parity */
        a.copies = (a.copy_policy >> 4) * 2 + (a.copy_policy & 0x0f);
    }
    if (!a.shift) {
        a.shift = srv.default_shift;
    }
    /* sheep 1.0.1 checks neither block_size_shift nor vdi_size */
    if (!req_write(rq) || rq->len != SD_MAX_VDI_LEN) {
        return SD_RES_INVALID_PARMS;
    }
    memcpy(name, rq->data, SD_MAX_VDI_LEN);
    name[SD_MAX_VDI_LEN] = '\0';
    if (ld32(rq->hdr + H_VDI_SNAPID)) {
        ret = vdi_snapshot(&a, &vid);
    } else {
        ret = vdi_create(&a, &vid);
    }
    st32(rp->hdr + R_VDI_ID, vid);
    rp->hdr[R_VDI_COPIES] = a.copies;
    rp->hdr[R_VDI_BSS] = a.shift;
    return ret;
}

static int op_get_vdi_info(const struct request *rq, struct reply *rp)
{
    char name[SD_MAX_VDI_LEN + 1], tag[SD_MAX_VDI_TAG_LEN + 1];
    const char *ptag;
    struct lookup l;

    if (!req_name_tag(rq, name, tag, &ptag)) {
        return SD_RES_INVALID_PARMS;
    }
    l = vdi_lookup(name, ptag, ld32(rq->hdr + H_VDI_SNAPID));
    if (l.ret == SD_RES_SUCCESS) {
        reply_vdi(rp, vdi_get(l.vid));
    }
    return l.ret;
}

static int op_lock_vdi(const struct request *rq, struct reply *rp)
{
    uint32_t type = ld32(rq->hdr + H_VDI_TYPE);
    struct vdi *v;
    int ret = op_get_vdi_info(rq, rp);

    if (ret != SD_RES_SUCCESS || !srv.locking) {
        return ret;
    }
    v = vdi_get(ld32(rp->hdr + R_VDI_ID));
    if (!v) {
        return SD_RES_VDI_LOCKED;   /* sheep: no lock state for that vid */
    }
    if (type == LOCK_TYPE_SHARED) {
        /* one holder per node, and this server is a single node */
        if (v->lock == LOCK_NORMAL) {
            return SD_RES_VDI_LOCKED;
        }
        v->lock = LOCK_SHARED;
    } else {
        if (v->lock != LOCK_NONE) {
            return SD_RES_VDI_LOCKED;
        }
        v->lock = LOCK_NORMAL;
    }
    state_save();
    return SD_RES_SUCCESS;
}

/* No owner check; releasing an unlocked VDI succeeds. */
static int op_release_vdi(const struct request *rq, struct reply *rp)
{
    uint32_t type = ld32(rq->hdr + H_VDI_TYPE);
    struct vdi *v = vdi_get(ld32(rq->hdr + H_VDI_BASE));

    if (!srv.locking || !v) {
        return SD_RES_SUCCESS;
    }
    if ((type == LOCK_TYPE_SHARED && v->lock == LOCK_SHARED) ||
        (type != LOCK_TYPE_SHARED && v->lock == LOCK_NORMAL)) {
        v->lock = LOCK_NONE;
        state_save();
    }
    return SD_RES_SUCCESS;
}

static int op_read_vdis(const struct request *rq, struct reply *rp)
{
    if (ld32(rq->hdr + H_DATA_LENGTH) != VDI_BITMAP_BYTES) {
        return SD_RES_INVALID_PARMS;
    }
    rp->data = g_memdup2(srv.inuse, VDI_BITMAP_BYTES);
    rp->len = VDI_BITMAP_BYTES;
    return SD_RES_SUCCESS;
}

static int op_flush_vdi(const struct request *rq, struct reply *rp)
{
    return SD_RES_INVALID_PARMS;
}

/*
 * Delete: like sheep 1.0.1, a VDI whose map still has entries is left alone
 * (SUCCESS, data in place); otherwise its inode is marked deleted.
 */
static int vdi_delete(uint32_t vid)
{
    struct vdi *v = vdi_get(vid);
    uint32_t *map = g_new(uint32_t, SD_INODE_DATA_INDEX);
    uint8_t *hdr;
    int ret = inode_read_map(vid, map);

    for (uint32_t i = 0; ret == SD_RES_SUCCESS && i < SD_INODE_DATA_INDEX; i++) {
        if (map[i]) {
            dbg("vid %06x still has objects, not deleted", vid);
            g_free(map);
            return SD_RES_SUCCESS;
        }
    }
    g_free(map);
    if (ret != SD_RES_SUCCESS) {
        return ret;
    }
    hdr = g_memdup2(v->hdr, SD_INODE_HEADER_SIZE);
    memset(hdr + INO_NAME, 0, SD_MAX_VDI_LEN);
    st64(hdr + INO_VDI_SIZE, 0);
    ret = obj_write(vid_to_vdi_oid(vid), hdr, SD_INODE_HEADER_SIZE, 0);
    if (ret == SD_RES_SUCCESS) {
        memcpy(v->hdr, hdr, SD_INODE_HEADER_SIZE);
        v->lock = LOCK_NONE;
        /* sheep 1.0.1 recycles no vid: the inode and its bit stay */
        state_save();
    }
    g_free(hdr);
    return ret;
}

static int op_del_vdi(const struct request *rq, struct reply *rp)
{
    char name[SD_MAX_VDI_LEN + 1], tag[SD_MAX_VDI_TAG_LEN + 1];
    const char *ptag;
    struct lookup l;

    if (!req_name_tag(rq, name, tag, &ptag)) {
        return SD_RES_INVALID_PARMS;
    }
    l = vdi_lookup(name, ptag, ld32(rq->hdr + H_VDI_SNAPID));
    if (l.ret != SD_RES_SUCCESS) {
        return l.ret;
    }
    st32(rp->hdr + R_VDI_ID, l.vid);
    return vdi_delete(l.vid);
}

static int op_get_cluster_default(const struct request *rq, struct reply *rp)
{
    rp->hdr[R_CD_COPIES] = srv.default_copies;
    rp->hdr[R_CD_COPY_POLICY] = 0;
    rp->hdr[R_CD_BSS] = srv.default_shift;
    return SD_RES_SUCCESS;
}

typedef int (*op_fn)(const struct request *rq, struct reply *rp);

static const struct {
    uint8_t opcode;
    const char *name;
    op_fn fn;
} sd_ops[] = {
    { SD_OP_CREATE_AND_WRITE_OBJ, "CREATE_AND_WRITE_OBJ", op_create_and_write },
    { SD_OP_READ_OBJ,             "READ_OBJ",             op_read_obj },
    { SD_OP_WRITE_OBJ,            "WRITE_OBJ",            op_write_obj },
    { SD_OP_REMOVE_OBJ,           "REMOVE_OBJ",           op_remove_obj },
    { SD_OP_DISCARD_OBJ,          "DISCARD_OBJ",          op_discard_obj },
    { SD_OP_NEW_VDI,              "NEW_VDI",              op_new_vdi },
    { SD_OP_LOCK_VDI,             "LOCK_VDI",             op_lock_vdi },
    { SD_OP_RELEASE_VDI,          "RELEASE_VDI",          op_release_vdi },
    { SD_OP_GET_VDI_INFO,         "GET_VDI_INFO",         op_get_vdi_info },
    { SD_OP_READ_VDIS,            "READ_VDIS",            op_read_vdis },
    { SD_OP_FLUSH_VDI,            "FLUSH_VDI",            op_flush_vdi },
    { SD_OP_DEL_VDI,              "DEL_VDI",              op_del_vdi },
    { SD_OP_GET_CLUSTER_DEFAULT,  "GET_CLUSTER_DEFAULT",  op_get_cluster_default },
};

/* An injected result for this opcode, or -1. */
static int fault_lookup(uint8_t opcode)
{
    for (guint i = 0; i < srv.faults->len; i++) {
        struct fault *f = &g_array_index(srv.faults, struct fault, i);
        if (f->opcode == opcode && f->count != 0) {
            int res = f->result;
            if (f->count > 0 && --f->count == 0) {
                g_array_remove_index(srv.faults, i);
            }
            return res;
        }
    }
    return -1;
}

/* True (and one use spent) if the answer to this opcode is to be lost. */
static bool lose_lookup(uint8_t opcode)
{
    for (guint i = 0; i < srv.lost->len; i++) {
        struct fault *f = &g_array_index(srv.lost, struct fault, i);
        if (f->opcode == opcode && f->count != 0) {
            if (f->count > 0 && --f->count == 0) {
                g_array_remove_index(srv.lost, i);
            }
            return true;
        }
    }
    return false;
}

/* Execute one request and fill in its reply. */
static void request_execute(const struct request *rq, struct reply *rp)
{
    uint8_t op = req_op(rq), ver = rq->hdr[H_PROTO_VER];
    int ret = SD_RES_INVALID_PARMS, fault;
    const char *name = "unknown";

    memset(rp, 0, sizeof(*rp));
    memcpy(rp->hdr, rq->hdr, 16);
    st32(rp->hdr + H_EPOCH, SERVER_EPOCH);
    srv.nr_requests++;

    fault = fault_lookup(op);
    if (fault >= 0) {
        ret = fault;
        name = "injected";
    } else if (op >= 0x80 ? ver != SD_SHEEP_PROTO_VER : ver > SD_PROTO_VER) {
        ret = SD_RES_VER_MISMATCH;
        srv.nr_garbage++;
    } else {
        for (size_t i = 0; i < G_N_ELEMENTS(sd_ops); i++) {
            if (sd_ops[i].opcode == op) {
                name = sd_ops[i].name;
                ret = sd_ops[i].fn(rq, rp);
                break;
            }
        }
    }
    dbg("req id %u %s(0x%02x) oid %016" PRIx64 " len %u -> 0x%02x",
        ld32(rq->hdr + H_ID), name, op, ld64(rq->hdr + 16),
        ld32(rq->hdr + H_DATA_LENGTH), ret);
    if (ret != SD_RES_SUCCESS) {
        g_free(rp->data);
        rp->data = NULL;
        rp->len = 0;
    }
    st32(rp->hdr + R_RESULT, ret);
    st32(rp->hdr + H_DATA_LENGTH, rp->len);
}

/* ---- startup: rebuild in-memory state from the directory ---- */

static void state_load(void)
{
    char *p = g_strdup_printf("%s/vdi-state", srv.dir);
    char *text = NULL, **lines;
    uint32_t *map;

    if (!g_file_get_contents(p, &text, NULL, NULL)) {
        g_free(p);
        return;
    }
    lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l; l++) {
        unsigned vid;
        if (sscanf(*l, "inuse %x", &vid) == 1 && vid < SD_NR_VDIS) {
            struct vdi *v = vdi_add(vid);
            if (vdi_reload_header(v) != SD_RES_SUCCESS) {
                fprintf(stderr, "sheepdog-server: inode %06x unreadable\n", vid);
            }
        }
        /* Locks live in sheep's memory only: a restart forgets them. */
    }
    g_strfreev(lines);
    g_free(text);
    g_free(p);

    /* recount references from every inode's map */
    map = g_new(uint32_t, SD_INODE_DATA_INDEX);
    GHashTableIter it;
    gpointer key, val;
    g_hash_table_iter_init(&it, srv.vdis);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        if (inode_read_map(((struct vdi *)val)->vid, map) == SD_RES_SUCCESS) {
            for (uint32_t i = 0; i < SD_INODE_DATA_INDEX; i++) {
                if (map[i]) {
                    ref_get(map[i], i);
                }
            }
        }
    }
    g_free(map);
}

/* ---- connections and the event loop ---- */

enum fd_kind { FD_LISTEN, FD_CONN, FD_CONTROL_LISTEN, FD_CONTROL };

struct batch {
    uint64_t due;                /* monotonic ms */
    GPtrArray *reqs;             /* struct request *, in execution order */
};

struct conn {
    enum fd_kind kind;
    int fd;
    GByteArray *in;
    GByteArray *out;
    size_t out_off;
    GQueue batches;              /* struct batch *, oldest first */
    uint32_t events;             /* registered epoll events */
    bool closing;
    /*
     * The peer closed (or reset) its side. As sheep does, everything
     * already read is still executed, nothing is answered, and the
     * connection is closed once the last of it has run.
     */
    bool eof;
    bool held;                   /* control "hold": neither read nor answered */
};

static int epfd;
static GList *conns;
static volatile sig_atomic_t quit;

static void request_free(gpointer p)
{
    struct request *rq = p;

    g_free(rq->data);
    g_free(rq);
}

static void batch_free(struct batch *b)
{
    g_ptr_array_free(b->reqs, TRUE);
    g_free(b);
}

static void conn_update_events(struct conn *c)
{
    struct epoll_event ev = { .data.ptr = c };

    if (!c->held && !c->eof) {
        ev.events = EPOLLIN;
        if (c->out->len > c->out_off) {
            ev.events |= EPOLLOUT;
        }
    }
    if (ev.events == c->events) {
        return;
    }
    c->events = ev.events;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static struct conn *conn_new(int fd, enum fd_kind kind)
{
    struct conn *c = g_new0(struct conn, 1);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };

    c->fd = fd;
    c->kind = kind;
    c->events = EPOLLIN;
    c->in = g_byte_array_new();
    c->out = g_byte_array_new();
    g_queue_init(&c->batches);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        die("epoll_ctl: %m");
    }
    conns = g_list_prepend(conns, c);
    return c;
}

static void conn_close(struct conn *c)
{
    struct batch *b;

    dbg("closing connection fd %d", c->fd);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    while ((b = g_queue_pop_head(&c->batches))) {
        batch_free(b);
    }
    g_byte_array_free(c->in, TRUE);
    g_byte_array_free(c->out, TRUE);
    conns = g_list_remove(conns, c);
    g_free(c);
}

static void conn_flush(struct conn *c)
{
    if (c->eof) {
        g_byte_array_set_size(c->out, 0);   /* nobody reads answers now */
        c->out_off = 0;
        return;
    }
    if (c->held) {
        return;
    }
    while (c->out->len > c->out_off) {
        ssize_t n = send(c->fd, c->out->data + c->out_off,
                         c->out->len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            c->closing = true;
            return;
        }
        c->out_off += n;
    }
    if (c->out_off == c->out->len) {
        g_byte_array_set_size(c->out, 0);
        c->out_off = 0;
    } else if (c->out_off >= c->out->len / 2) {
        /* With requests always in flight the buffer never drains: drop
         * the sent part so it does not grow without bound. */
        g_byte_array_remove_range(c->out, 0, c->out_off);
        c->out_off = 0;
    }
    conn_update_events(c);
}

/* Put a batch into the configured response order. */
static void batch_permute(GPtrArray *a)
{
    guint n = a->len;

    switch (srv.order) {
    case ORDER_IN:
        break;
    case ORDER_SWAP:
        for (guint i = 0; i + 1 < n; i += 2) {
            gpointer t = a->pdata[i];
            a->pdata[i] = a->pdata[i + 1];
            a->pdata[i + 1] = t;
        }
        break;
    case ORDER_REVERSE:
        for (guint i = 0; i < n / 2; i++) {
            gpointer t = a->pdata[i];
            a->pdata[i] = a->pdata[n - 1 - i];
            a->pdata[n - 1 - i] = t;
        }
        break;
    case ORDER_SHUFFLE:
        for (guint i = n; i > 1; i--) {
            guint j = rng_next() % i;
            gpointer t = a->pdata[i - 1];
            a->pdata[i - 1] = a->pdata[j];
            a->pdata[j] = t;
        }
        break;
    }
}

/* Execute a batch in its (permuted) order and queue the replies. */
static void batch_run(struct conn *c, struct batch *b)
{
    for (guint i = 0; i < b->reqs->len; i++) {
        struct request *rq = b->reqs->pdata[i];
        struct reply rp;

        if (srv.close_after >= 0 && srv.close_count >= srv.close_after) {
            dbg("close-after %ld reached: dropping connection", srv.close_after);
            srv.close_count = 0;
            if (!srv.close_repeat) {
                srv.close_after = -1;
            }
            c->closing = true;
            return;
        }
        srv.close_count++;
        request_execute(rq, &rp);
        if (lose_lookup(req_op(rq))) {
            /* executed, but the answer and the connection are lost */
            dbg("lose-answer: executed id %u, dropping its answer and the "
                "connection", ld32(rq->hdr + H_ID));
            g_free(rp.data);
            conn_flush(c);
            c->closing = true;
            return;
        }
        g_byte_array_append(c->out, rp.hdr, SD_HDR_SIZE);
        if (rp.len) {
            g_byte_array_append(c->out, rp.data, rp.len);
        }
        g_free(rp.data);
    }
}

static void conn_run_due(struct conn *c, uint64_t now)
{
    struct batch *b;

    if (c->held) {
        return;
    }
    while (!c->closing && (b = g_queue_peek_head(&c->batches)) && b->due <= now) {
        g_queue_pop_head(&c->batches);
        batch_run(c, b);
        batch_free(b);
    }
    if (c->eof && g_queue_is_empty(&c->batches)) {
        c->closing = true;
    }
    if (!c->closing) {
        conn_flush(c);
    }
}

/* Cut complete requests off the input buffer; false on a protocol error. */
static bool conn_parse(struct conn *c, GPtrArray *reqs)
{
    size_t off = 0;

    while (c->in->len - off >= SD_HDR_SIZE) {
        const uint8_t *h = c->in->data + off;
        uint32_t len = ld32(h + H_DATA_LENGTH);
        bool wr = ld16(h + H_FLAGS) & SD_FLAG_CMD_WRITE;
        uint32_t plen = wr ? len : 0;
        struct request *rq;

        if (len > MAX_PAYLOAD) {
            fprintf(stderr, "sheepdog-server: data_length %u too large\n", len);
            srv.nr_garbage++;
            return false;
        }
        if (c->in->len - off < SD_HDR_SIZE + (size_t)plen) {
            break;
        }
        rq = g_new0(struct request, 1);
        memcpy(rq->hdr, h, SD_HDR_SIZE);
        rq->len = plen;
        rq->data = plen ? g_memdup2(h + SD_HDR_SIZE, plen) : NULL;
        g_ptr_array_add(reqs, rq);
        off += SD_HDR_SIZE + plen;
    }
    g_byte_array_remove_range(c->in, 0, off);
    return true;
}

static void conn_read(struct conn *c)
{
    uint8_t buf[65536];
    GPtrArray *reqs;
    struct batch *b;

    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            dbg("fd %d: peer closed; running what was read", c->fd);
            c->eof = true;
            conn_update_events(c);
            break;
        }
        g_byte_array_append(c->in, buf, n);
    }
    reqs = g_ptr_array_new_with_free_func(request_free);
    if (!conn_parse(c, reqs)) {
        c->closing = true;
    }
    if (!reqs->len || c->closing) {
        g_ptr_array_free(reqs, TRUE);
        conn_run_due(c, now_ms());
        return;
    }
    batch_permute(reqs);
    b = g_new0(struct batch, 1);
    b->reqs = reqs;
    b->due = now_ms() + srv.delay_ms;
    g_queue_push_tail(&c->batches, b);
    conn_run_due(c, now_ms());
}

/* ---- fault-injection settings (command line and control socket) ---- */

static bool parse_fault(const char *s)
{
    struct fault f = { .count = -1 };
    char **t = g_strsplit(s, ":", 3);
    bool ok = t[0] && t[1];

    if (ok) {
        f.opcode = strtoul(t[0], NULL, 0);
        f.result = strtoul(t[1], NULL, 0);
        if (t[2]) {
            f.count = strtol(t[2], NULL, 0);
        }
        g_array_append_val(srv.faults, f);
    }
    g_strfreev(t);
    return ok;
}

static bool parse_order(const char *s)
{
    static const char *const names[] = { "in", "swap", "reverse", "shuffle" };

    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!strcmp(s, names[i])) {
            srv.order = i;
            return true;
        }
    }
    return false;
}

static void parse_close_after(const char *s)
{
    char *end;

    srv.close_after = strtol(s, &end, 0);
    srv.close_repeat = !strcmp(end, ":repeat");
    srv.close_count = 0;
}

/* One control command; the reply line is appended to @out. */
static void control_command(const char *line, GString *out)
{
    char **w = g_strsplit_set(line, " \t", 2);
    const char *cmd = w[0] ? w[0] : "", *arg = w[0] && w[1] ? w[1] : "";

    if (!strcmp(cmd, "close-after")) {
        parse_close_after(arg);
    } else if (!strcmp(cmd, "delay-ms")) {
        srv.delay_ms = strtoul(arg, NULL, 0);
    } else if (!strcmp(cmd, "lose-answer")) {
        char **t = g_strsplit(arg, ":", 2);
        struct fault f = { .count = -1 };
        f.opcode = strtoul(t[0] ? t[0] : "", NULL, 0);
        if (t[0] && t[1]) {
            f.count = strtol(t[1], NULL, 0);
        }
        g_strfreev(t);
        if (!*arg) {
            g_string_append(out, "error: lose-answer X[:count]\n");
            goto out;
        }
        g_array_append_val(srv.lost, f);
    } else if (!strcmp(cmd, "fail-opcode")) {
        if (!parse_fault(arg)) {
            g_string_append(out, "error: fail-opcode X:Y[:count]\n");
            goto out;
        }
    } else if (!strcmp(cmd, "order")) {
        if (!parse_order(arg)) {
            g_string_append(out, "error: order in|swap|reverse|shuffle\n");
            goto out;
        }
    } else if (!strcmp(cmd, "shuffle-seed")) {
        srv.rng = strtoull(arg, NULL, 0) | 1;
        srv.order = ORDER_SHUFFLE;
    } else if (!strcmp(cmd, "clear")) {
        g_array_set_size(srv.faults, 0);
        g_array_set_size(srv.lost, 0);
        srv.close_after = -1;
        srv.delay_ms = 0;
    } else if (!strcmp(cmd, "stats")) {
        g_string_append_printf(out, "requests %" PRIu64 " vdis %u "
                               "objects-referenced %u garbage %" PRIu64 "\n",
                               srv.nr_requests, g_hash_table_size(srv.vdis),
                               g_hash_table_size(srv.refs), srv.nr_garbage);
        goto out;
    } else if (!strcmp(cmd, "refcount")) {
        g_string_append_printf(out, "%u\n",
                               ref_count(g_ascii_strtoull(arg, NULL, 16)));
        goto out;
    } else if (!strcmp(cmd, "hold") || !strcmp(cmd, "release")) {
        /* hold: the connections open now are neither read nor answered
         * (a stopped sheep); release: they go on, after everything newer */
        for (GList *l = conns; l; l = l->next) {
            struct conn *c = l->data;
            if (c->kind == FD_CONN) {
                c->held = !strcmp(cmd, "hold");
                conn_update_events(c);
            }
        }
    } else if (!strcmp(cmd, "disconnect-all")) {
        for (GList *l = conns; l; l = l->next) {
            struct conn *c = l->data;
            if (c->kind == FD_CONN) {
                c->closing = true;
            }
        }
    } else if (cmd[0]) {
        g_string_append_printf(out, "error: unknown command '%s'\n", cmd);
        goto out;
    } else {
        goto out;
    }
    g_string_append(out, "ok\n");
out:
    g_strfreev(w);
}

static void control_read(struct conn *c)
{
    uint8_t buf[4096];
    ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
    GString *out = g_string_new(NULL);
    guint8 *nl;

    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            c->closing = true;
        }
        g_string_free(out, TRUE);
        return;
    }
    g_byte_array_append(c->in, buf, n);
    while ((nl = memchr(c->in->data, '\n', c->in->len))) {
        char *line = g_strndup((char *)c->in->data, nl - c->in->data);
        g_byte_array_remove_range(c->in, 0, nl - c->in->data + 1);
        control_command(g_strstrip(line), out);
        g_free(line);
    }
    g_byte_array_append(c->out, (guint8 *)out->str, out->len);
    g_string_free(out, TRUE);
    conn_flush(c);
}

static void listener_accept(struct conn *l)
{
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int one = 1;
        if (fd < 0) {
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_new(fd, l->kind == FD_LISTEN ? FD_CONN : FD_CONTROL);
        dbg("accepted fd %d", fd);
    }
}

static int listen_tcp(int port, int *bound)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    socklen_t sl = sizeof(sa);
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, 64) < 0 || getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
        die("listen on 127.0.0.1:%d: %m", port);
    }
    *bound = ntohs(sa.sin_port);
    return fd;
}

static int listen_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (strlen(path) >= sizeof(sa.sun_path)) {
        die("socket path too long: %s", path);
    }
    strcpy(sa.sun_path, path);
    unlink(path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, 64) < 0) {
        die("listen on %s: %m", path);
    }
    return fd;
}

static void on_signal(int sig)
{
    quit = 1;
}

static int next_timeout(void)
{
    uint64_t now = now_ms(), due = UINT64_MAX;

    for (GList *l = conns; l; l = l->next) {
        struct conn *c = l->data;
        struct batch *b = g_queue_peek_head(&c->batches);
        if (b && b->due < due) {
            due = b->due;
        }
    }
    if (due == UINT64_MAX) {
        return -1;
    }
    return due <= now ? 0 : (int)MIN(due - now, 60000);
}

static void event_loop(void)
{
    struct epoll_event evs[64];

    while (!quit) {
        int n = epoll_wait(epfd, evs, G_N_ELEMENTS(evs), next_timeout());
        uint64_t now;

        if (n < 0 && errno != EINTR) {
            die("epoll_wait: %m");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            switch (c->kind) {
            case FD_LISTEN:
            case FD_CONTROL_LISTEN:
                listener_accept(c);
                break;
            case FD_CONN:
                if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
                    /* reset (or gone entirely): like sheep, drop what was
                     * not read yet; what was read still runs */
                    if (!c->held && !c->eof) {
                        dbg("fd %d: hang-up", c->fd);
                        c->eof = true;
                        conn_update_events(c);
                        conn_run_due(c, now_ms());
                    }
                } else if (evs[i].events & EPOLLIN) {
                    conn_read(c);
                }
                if (!c->closing && (evs[i].events & EPOLLOUT)) {
                    conn_flush(c);
                }
                break;
            case FD_CONTROL:
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    control_read(c);
                }
                if (!c->closing && (evs[i].events & EPOLLOUT)) {
                    conn_flush(c);
                }
                break;
            }
        }
        now = now_ms();
        for (GList *l = conns, *next; l; l = next) {
            struct conn *c = l->data;
            next = l->next;
            if (c->kind == FD_CONN && !c->closing) {
                conn_run_due(c, now);
            }
            if (c->closing) {
                conn_close(c);
            }
        }
    }
}

/* ---- admin mode: operate on a stopped server's directory ---- */

static gint vdi_cmp(gconstpointer a, gconstpointer b)
{
    const struct vdi *x = *(struct vdi *const *)a, *y = *(struct vdi *const *)b;
    int r = strncmp((const char *)x->hdr, (const char *)y->hdr, SD_MAX_VDI_LEN);

    if (r) {
        return r;
    }
    return (gint)ld32(x->hdr + INO_SNAP_ID) - (gint)ld32(y->hdr + INO_SNAP_ID);
}

static void admin_list(void)
{
    GPtrArray *a = g_ptr_array_new();
    GHashTableIter it;
    gpointer key, val;

    g_hash_table_iter_init(&it, srv.vdis);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        if (!vdi_is_deleted(val)) {
            g_ptr_array_add(a, val);
        }
    }
    g_ptr_array_sort(a, vdi_cmp);
    printf("%-4s %-24s %-6s %6s %-16s %14s %s\n", "TYPE", "NAME", "VID",
           "SNAPID", "TAG", "SIZE", "LOCK");
    for (guint i = 0; i < a->len; i++) {
        struct vdi *v = a->pdata[i];
        char tag[SD_MAX_VDI_TAG_LEN + 1] = "";
        memcpy(tag, v->hdr + INO_TAG, SD_MAX_VDI_TAG_LEN);
        printf("%-4s %-24.256s %06x %6u %-16s %14" PRIu64 " %s\n",
               vdi_is_snapshot(v) ? "s" : "w", (const char *)v->hdr, v->vid,
               ld32(v->hdr + INO_SNAP_ID), tag[0] ? tag : "-",
               ld64(v->hdr + INO_VDI_SIZE),
               v->lock == LOCK_NORMAL ? "locked" :
               v->lock == LOCK_SHARED ? "shared" : "-");
    }
    g_ptr_array_free(a, TRUE);
}

/* Delete like `dog vdi delete`: zero the map (dropping refs), then delete. */
static int admin_delete(const char *name, const char *snap)
{
    char *end = NULL;
    unsigned long snapid = snap ? strtoul(snap, &end, 10) : 0;
    /* like dog, always with a tag field (empty when looking up by id) */
    const char *tag = snap && (!*snap || *end) ? snap : "";
    struct lookup l = vdi_lookup(name, tag, *tag ? 0 : snapid);
    uint32_t *map, *zero;

    if (l.ret != SD_RES_SUCCESS) {
        fprintf(stderr, "sheepdog-server: %s%s%s: not found (0x%02x)\n", name,
                snap ? ":" : "", snap ? snap : "", l.ret);
        return 1;
    }
    map = g_new(uint32_t, SD_INODE_DATA_INDEX);
    zero = g_new0(uint32_t, SD_INODE_DATA_INDEX);
    if (inode_read_map(l.vid, map) == SD_RES_SUCCESS &&
        obj_write(vid_to_vdi_oid(l.vid), zero, 4 * SD_INODE_DATA_INDEX,
                  SD_INODE_HEADER_SIZE) == SD_RES_SUCCESS) {
        refs_update(0, SD_INODE_DATA_INDEX, map, zero);
    }
    g_free(map);
    g_free(zero);
    if (vdi_delete(l.vid) != SD_RES_SUCCESS) {
        return 1;
    }
    printf("deleted %s vid %06x\n", name, l.vid);
    return 0;
}

/* ---- main ---- */

static void usage(void)
{
    printf("usage: sheepdog-server --dir DIR [--port N] [--socket PATH] [options]\n"
           "       sheepdog-server --dir DIR --admin list\n"
           "       sheepdog-server --dir DIR --admin delete NAME [SNAPID|TAG]\n"
           "  --port N               listen on 127.0.0.1:N (0: pick one, printed)\n"
           "  --socket PATH          listen on a Unix socket\n"
           "  --control PATH         Unix socket for runtime fault injection\n"
           "  --locking              cluster formatted with VDI locking\n"
           "  --default-copies N     cluster nr_copies (default 3)\n"
           "  --default-object-shift S  cluster block_size_shift (default 22)\n"
           "  --pidfile F            write the PID to F\n"
           "  --portfile F           write the TCP port to F\n"
           "  --order in|swap|reverse|shuffle  reply order in a batch (default swap)\n"
           "  --shuffle-seed N       shuffle each batch with seed N\n"
           "  --close-after N[:repeat]  drop the connection after N requests\n"
           "  --delay-ms M           delay every reply by M ms\n"
           "  --fail-opcode X:Y[:count]  answer opcode X with result Y\n"
           "  --verbose              log every request to stderr\n");
}

int main(int argc, char **argv)
{
    enum { O_PORT = 256, O_SOCKET, O_CONTROL, O_LOCKING, O_COPIES, O_SHIFT,
           O_PIDFILE, O_ORDER, O_SEED, O_CLOSE, O_DELAY, O_FAIL, O_ADMIN,
           O_DIR, O_VERBOSE, O_HELP, O_PORTFILE };
    static const struct option opts[] = {
        { "port", required_argument, NULL, O_PORT },
        { "socket", required_argument, NULL, O_SOCKET },
        { "control", required_argument, NULL, O_CONTROL },
        { "locking", no_argument, NULL, O_LOCKING },
        { "default-copies", required_argument, NULL, O_COPIES },
        { "default-object-shift", required_argument, NULL, O_SHIFT },
        { "pidfile", required_argument, NULL, O_PIDFILE },
        { "portfile", required_argument, NULL, O_PORTFILE },
        { "order", required_argument, NULL, O_ORDER },
        { "shuffle-seed", required_argument, NULL, O_SEED },
        { "close-after", required_argument, NULL, O_CLOSE },
        { "delay-ms", required_argument, NULL, O_DELAY },
        { "fail-opcode", required_argument, NULL, O_FAIL },
        { "admin", required_argument, NULL, O_ADMIN },
        { "dir", required_argument, NULL, O_DIR },
        { "verbose", no_argument, NULL, O_VERBOSE },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    const char *sock_path = NULL, *control_path = NULL, *pidfile = NULL;
    const char *admin = NULL, *portfile = NULL;
    int port = -1, opt;

    srv.default_copies = 3;
    srv.default_shift = 22;
    srv.order = ORDER_SWAP;
    srv.close_after = -1;
    srv.rng = 1;
    srv.faults = g_array_new(FALSE, FALSE, sizeof(struct fault));
    srv.lost = g_array_new(FALSE, FALSE, sizeof(struct fault));
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case O_PORT: port = atoi(optarg); break;
        case O_SOCKET: sock_path = optarg; break;
        case O_CONTROL: control_path = optarg; break;
        case O_LOCKING: srv.locking = true; break;
        case O_COPIES: srv.default_copies = atoi(optarg); break;
        case O_SHIFT: srv.default_shift = atoi(optarg); break;
        case O_PIDFILE: pidfile = optarg; break;
        case O_PORTFILE: portfile = optarg; break;
        case O_ORDER:
            if (!parse_order(optarg)) {
                die("--order in|swap|reverse|shuffle");
            }
            break;
        case O_SEED:
            srv.rng = strtoull(optarg, NULL, 0) | 1;
            srv.order = ORDER_SHUFFLE;
            break;
        case O_CLOSE: parse_close_after(optarg); break;
        case O_DELAY: srv.delay_ms = strtoul(optarg, NULL, 0); break;
        case O_FAIL:
            if (!parse_fault(optarg)) {
                die("--fail-opcode X:Y[:count]");
            }
            break;
        case O_ADMIN: admin = optarg; break;
        case O_DIR: srv.dir = optarg; break;
        case O_VERBOSE: srv.verbose = true; break;
        case O_HELP: usage(); return 0;
        default: usage(); return 1;
        }
    }
    if (!srv.dir) {
        usage();
        return 1;
    }
    if (srv.default_shift < 20 || srv.default_shift > 31) {
        die("--default-object-shift must be 20..31");
    }
    if (g_mkdir_with_parents(srv.dir, 0755) < 0) {
        die("mkdir %s: %m", srv.dir);
    }
    srv.inuse = g_malloc0(VDI_BITMAP_BYTES);
    srv.vdis = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    srv.refs = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    state_load();

    if (admin) {
        if (!strcmp(admin, "list")) {
            admin_list();
            return 0;
        }
        if (!strcmp(admin, "delete") && optind < argc) {
            return admin_delete(argv[optind], optind + 1 < argc ? argv[optind + 1] : NULL);
        }
        usage();
        return 1;
    }
    if (port < 0 && !sock_path) {
        die("need --port and/or --socket");
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (port >= 0) {
        int bound;
        conn_new(listen_tcp(port, &bound), FD_LISTEN);
        printf("port %d\n", bound);
        if (portfile) {
            char *t = g_strdup_printf("%d\n", bound);
            if (!g_file_set_contents(portfile, t, -1, NULL)) {
                die("cannot write portfile %s", portfile);
            }
            g_free(t);
        }
    }
    if (sock_path) {
        conn_new(listen_unix(sock_path), FD_LISTEN);
        printf("socket %s\n", sock_path);
    }
    if (control_path) {
        conn_new(listen_unix(control_path), FD_CONTROL_LISTEN);
        printf("control %s\n", control_path);
    }
    if (pidfile) {
        char *s = g_strdup_printf("%d\n", getpid());
        if (!g_file_set_contents(pidfile, s, -1, NULL)) {
            die("cannot write pidfile %s", pidfile);
        }
        g_free(s);
    }
    printf("ready\n");
    fflush(stdout);
    event_loop();
    if (sock_path) {
        unlink(sock_path);
    }
    if (control_path) {
        unlink(control_path);
    }
    return 0;
}
