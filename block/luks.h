/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * LUKS1 on-disk header (cryptsetup's LUKS1 format; docs/specs/luks.txt) and
 * the crypto the luks driver needs (block/luks-crypto.c, over nettle).
 *
 *   0        592          key material       key material        payload_offset
 *   +--------+----------+-----------------+---+-----------------+----------+
 *   | header | padding  | slot 0: key     |...| slot 7: key     | guest    |
 *   | (8 key | (zero)   | bytes * stripes |   | bytes * stripes | data,    |
 *   | slots) |          | (AF-split,      |   |                 | 512-byte |
 *   |        |          | encrypted)      |   |                 | sectors  |
 *   +--------+----------+-----------------+---+-----------------+----------+
 *
 * All fields are big-endian on disk; offsets are in 512-byte sectors.
 * LuksDiskHeader is in disk byte order, LuksHeader always in CPU order;
 * luks_header_to_cpu / luks_header_to_disk convert.
 */
#ifndef BLOCK_LUKS_H
#define BLOCK_LUKS_H

#include "util/osdep.h"
#include "util/error.h"

#define LUKS_MAGIC              "LUKS\xba\xbe"
#define LUKS_MAGIC_LEN          6
#define LUKS_VERSION            1
#define LUKS_SECTOR_SIZE        512
#define LUKS_NUM_SLOTS          8
#define LUKS_SALT_LEN           32
#define LUKS_DIGEST_LEN         20
#define LUKS_NAME_LEN           32
#define LUKS_UUID_LEN           40
#define LUKS_STRIPES            4000
#define LUKS_SLOT_ACTIVE        0x00AC71F3u
#define LUKS_SLOT_DISABLED      0x0000DEADu
#define LUKS_HEADER_SIZE        592
/* Where QEMU (and cryptsetup) put slot 0, and the alignment of each slot's
 * key material: 4096 bytes. */
#define LUKS_SLOT_ALIGN_SECTORS 8
#define LUKS_MAX_KEY_BYTES      64
/* Iterations QEMU never goes below when creating. */
#define LUKS_MIN_ITERS          1000
/*
 * Most PBKDF2 iterations a header may ask for (a key slot or the master
 * key digest): 2^24, some seconds of CPU per slot. Real images (QEMU's,
 * cryptsetup's 2-second default) stay far below; an image asking for more
 * is refused instead of pinning a CPU for hours.
 */
#define LUKS_MAX_ITERS          (1u << 24)

typedef struct LuksDiskSlot {
    uint32_t active;
    uint32_t iterations;
    uint8_t  salt[LUKS_SALT_LEN];
    uint32_t key_offset;        /* sectors */
    uint32_t stripes;
} QEMU_PACKED LuksDiskSlot;

typedef struct LuksDiskHeader {
    uint8_t  magic[LUKS_MAGIC_LEN];
    uint16_t version;
    char     cipher_name[LUKS_NAME_LEN];
    char     cipher_mode[LUKS_NAME_LEN];
    char     hash_spec[LUKS_NAME_LEN];
    uint32_t payload_offset;    /* sectors */
    uint32_t key_bytes;
    uint8_t  mk_digest[LUKS_DIGEST_LEN];
    uint8_t  mk_digest_salt[LUKS_SALT_LEN];
    uint32_t mk_digest_iter;
    char     uuid[LUKS_UUID_LEN];
    LuksDiskSlot slots[LUKS_NUM_SLOTS];
} QEMU_PACKED LuksDiskHeader;

_Static_assert(sizeof(LuksDiskSlot) == 48, "LUKS key slot is 48 bytes");
_Static_assert(sizeof(LuksDiskHeader) == LUKS_HEADER_SIZE,
               "LUKS1 header is 592 bytes");
_Static_assert(offsetof(LuksDiskHeader, cipher_name) == 8, "cipher at 8");
_Static_assert(offsetof(LuksDiskHeader, payload_offset) == 104,
               "payload_offset at 104");
_Static_assert(offsetof(LuksDiskHeader, mk_digest) == 112, "digest at 112");
_Static_assert(offsetof(LuksDiskHeader, mk_digest_iter) == 164,
               "mk_digest_iter at 164");
_Static_assert(offsetof(LuksDiskHeader, uuid) == 168, "uuid at 168");
_Static_assert(offsetof(LuksDiskHeader, slots) == 208, "slots at 208");

typedef struct LuksSlot {
    uint32_t active;
    uint32_t iterations;
    uint8_t  salt[LUKS_SALT_LEN];
    uint32_t key_offset;
    uint32_t stripes;
} LuksSlot;

/* The header in CPU order; the strings always NUL-terminated. */
typedef struct LuksHeader {
    uint16_t version;
    char     cipher_name[LUKS_NAME_LEN + 1];
    char     cipher_mode[LUKS_NAME_LEN + 1];
    char     hash_spec[LUKS_NAME_LEN + 1];
    uint32_t payload_offset;
    uint32_t key_bytes;
    uint8_t  mk_digest[LUKS_DIGEST_LEN];
    uint8_t  mk_digest_salt[LUKS_SALT_LEN];
    uint32_t mk_digest_iter;
    char     uuid[LUKS_UUID_LEN + 1];
    LuksSlot slots[LUKS_NUM_SLOTS];
} LuksHeader;

/* false if the magic is wrong (the rest of h is then undefined). */
bool luks_header_to_cpu(const LuksDiskHeader *d, LuksHeader *h);
void luks_header_to_disk(const LuksHeader *h, LuksDiskHeader *d);

/* ---- crypto (block/luks-crypto.c) ---- */

typedef struct LuksHashAlg LuksHashAlg;
typedef struct LuksCipherAlg LuksCipherAlg;
typedef struct LuksCipher LuksCipher;

typedef enum LuksMode {
    LUKS_MODE_ECB,
    LUKS_MODE_CBC,
    LUKS_MODE_XTS,
    LUKS_MODE_CTR,              /* the IV is the first counter block */
} LuksMode;

typedef enum LuksIvgen {
    LUKS_IVGEN_NONE,            /* ecb as cryptsetup writes it: "ecb" */
    LUKS_IVGEN_PLAIN,           /* sector number, 32 bits little-endian */
    LUKS_IVGEN_PLAIN64,         /* sector number, 64 bits little-endian */
    LUKS_IVGEN_ESSIV,           /* plain64 encrypted with hash(master key) */
} LuksIvgen;

/* By QEMU's names: "sha256", "sha1", ...; NULL if unknown. */
const LuksHashAlg *luks_hash_find(const char *name);
const char *luks_hash_name(const LuksHashAlg *h);
size_t luks_hash_size(const LuksHashAlg *h);
/* out = H(prefix || data); prefix may be NULL. out holds luks_hash_size. */
void luks_hash(const LuksHashAlg *h, const uint8_t *prefix, size_t plen,
               const uint8_t *data, size_t len, uint8_t *out);
/* PBKDF2 with HMAC over h (RFC 8018). */
void luks_pbkdf2(const LuksHashAlg *h, const uint8_t *pass, size_t pass_len,
                 const uint8_t *salt, size_t salt_len, uint32_t iterations,
                 uint8_t *out, size_t out_len);
/* PBKDF2 iterations per second of CPU time for h, measured (> 0). */
uint64_t luks_pbkdf2_rate(const LuksHashAlg *h, size_t key_len);

/* "aes-256", ...: by QEMU's name, or by the header's family name ("aes")
 * and key length; NULL if unknown. */
const LuksCipherAlg *luks_cipher_find(const char *name);
const LuksCipherAlg *luks_cipher_find_family(const char *family,
                                             size_t key_len);
const char *luks_cipher_name(const LuksCipherAlg *c);
const char *luks_cipher_family(const LuksCipherAlg *c);
size_t luks_cipher_key_len(const LuksCipherAlg *c);
size_t luks_cipher_block_size(const LuksCipherAlg *c);

const char *luks_mode_name(LuksMode m);
const char *luks_ivgen_name(LuksIvgen g);
int luks_mode_parse(const char *s, LuksMode *m);
int luks_ivgen_parse(const char *s, LuksIvgen *g);

/*
 * A sector cipher: alg in mode (the key is twice alg's for XTS), IVs from
 * ivgen (ivhash for essiv). NULL with an error if the combination is not
 * supported. Freed (and wiped) with luks_cipher_free.
 */
LuksCipher *luks_cipher_new(const LuksCipherAlg *alg, LuksMode mode,
                            LuksIvgen ivgen, const LuksHashAlg *ivhash,
                            const uint8_t *key, size_t key_len, Error **errp);
void luks_cipher_free(LuksCipher *c);
/* In place over len bytes (a multiple of 512) whose first 512-byte sector
 * has number sector (the IV of each sector comes from its number). */
void luks_cipher_encrypt(LuksCipher *c, uint64_t sector, uint8_t *buf,
                         size_t len);
void luks_cipher_decrypt(LuksCipher *c, uint64_t sector, uint8_t *buf,
                         size_t len);

/* Anti-forensic splitter: key (block_size bytes) to / from stripes blocks
 * (block_size * stripes bytes). Split fills stripes-1 blocks at random. */
int luks_af_split(const LuksHashAlg *h, const uint8_t *key, size_t block_size,
                  uint32_t stripes, uint8_t *out, Error **errp);
void luks_af_merge(const LuksHashAlg *h, const uint8_t *in, size_t block_size,
                   uint32_t stripes, uint8_t *key);

/* Random bytes from getrandom(); 0 or -errno with an error. */
int luks_random(void *buf, size_t len, Error **errp);

/* ---- a LUKS volume inside a node (block/luks-volume.c) ---- */

typedef struct BlockDriverState BlockDriverState;
typedef struct QemuOpts QemuOpts;
typedef struct JsonValue JsonValue;

typedef struct LuksParams {
    const LuksCipherAlg *alg;
    LuksMode mode;
    LuksIvgen ivgen;
    const LuksHashAlg *ivhash;  /* essiv only */
    const LuksHashAlg *hash;
} LuksParams;

/*
 * The header and key slots at [base, base + len) of file: the whole file
 * for the luks driver, the encryption header clusters for qcow2. Key
 * material offsets in the header are relative to base.
 */
typedef struct LuksVolume {
    BlockDriverState *file;
    int64_t base;
    int64_t len;
    const char *area;           /* "file", "encryption header": messages */
    LuksHeader hdr;
    LuksParams p;
    LuksCipher *cipher;         /* NULL when opened without a key */
    uint8_t mk[LUKS_MAX_KEY_BYTES]; /* the master key (amend adds slots) */
} LuksVolume;

/* Create options parsed (names with the caller's prefix: "" or
 * "encrypt."), and the layout they give. */
typedef struct LuksCreate {
    LuksParams p;
    const char *key_secret;
    uint64_t iter_time;
    uint32_t key_bytes;
    uint32_t slot_sectors;      /* per slot, aligned */
    uint32_t payload_sectors;   /* header plus the eight slots */
} LuksCreate;

#define LUKS_DEFAULT_ITER_TIME  2000    /* ms, QEMU's default */
/* Longest iter-time accepted: an hour. */
#define LUKS_MAX_ITER_TIME      (3600 * 1000)

/*
 * Read and check the header in v (file, base, len and area set by the
 * caller). With sid (the key secret's id) unlock it: v->cipher and v->mk
 * then hold the master key. Errors: one line, QEMU's wording.
 */
int coroutine_fn luks_volume_open(LuksVolume *v, const char *sid,
                                  Error **errp);
void luks_volume_close(LuksVolume *v);
/* QEMU's "format-specific" LUKS members (cipher-alg, ..., slots), added
 * to the JSON object obj. */
void luks_volume_info(const LuksVolume *v, JsonValue *obj);
/* The passphrase of secret sid, UTF-8 as QEMU requires (explicit_bzero and
 * g_free it); NULL with an error. */
char *luks_passphrase(const char *sid, size_t *len, Error **errp);
int luks_create_parse(QemuOpts *opts, const char *prefix, LuksCreate *c,
                      Error **errp);
/* Header and slot 0 (under the passphrase of c->key_secret) written at
 * v->base of v->file, which has payload_sectors * 512 bytes there; the
 * header last. v is then open without a key. */
int coroutine_fn luks_volume_format(LuksVolume *v, const LuksCreate *c,
                                    Error **errp);
/* QEMU 7.2's amend of key slots: options state, keyslot, old-secret,
 * new-secret, iter-time (with prefix). Needs an unlocked volume. */
int coroutine_fn luks_volume_amend(LuksVolume *v, QemuOpts *opts,
                                   const char *prefix, bool force,
                                   Error **errp);

#endif
