/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The crypto of LUKS1 over Debian's nettle: hashes and PBKDF2, sector
 * ciphers (ECB / CBC / XTS with plain, plain64 and essiv IVs), the
 * anti-forensic splitter and the header's byte-order converters.
 */
#include <sys/random.h>
#include <time.h>
#include <nettle/nettle-meta.h>
#include <nettle/hmac.h>
#include <nettle/pbkdf2.h>
#include <nettle/cbc.h>
#include <nettle/ctr.h>
#include <nettle/xts.h>
#include "block/luks.h"

/* ---- header ---- */

static void luks_copy_name(char *dst, const char *src, size_t len)
{
    memcpy(dst, src, len);
    dst[len] = '\0';
}

bool luks_header_to_cpu(const LuksDiskHeader *d, LuksHeader *h)
{
    if (memcmp(d->magic, LUKS_MAGIC, LUKS_MAGIC_LEN)) {
        return false;
    }
    memset(h, 0, sizeof(*h));
    h->version = GUINT16_FROM_BE(d->version);
    luks_copy_name(h->cipher_name, d->cipher_name, LUKS_NAME_LEN);
    luks_copy_name(h->cipher_mode, d->cipher_mode, LUKS_NAME_LEN);
    luks_copy_name(h->hash_spec, d->hash_spec, LUKS_NAME_LEN);
    h->payload_offset = be32_to_cpu(d->payload_offset);
    h->key_bytes = be32_to_cpu(d->key_bytes);
    memcpy(h->mk_digest, d->mk_digest, LUKS_DIGEST_LEN);
    memcpy(h->mk_digest_salt, d->mk_digest_salt, LUKS_SALT_LEN);
    h->mk_digest_iter = be32_to_cpu(d->mk_digest_iter);
    luks_copy_name(h->uuid, d->uuid, LUKS_UUID_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        h->slots[i].active = be32_to_cpu(d->slots[i].active);
        h->slots[i].iterations = be32_to_cpu(d->slots[i].iterations);
        memcpy(h->slots[i].salt, d->slots[i].salt, LUKS_SALT_LEN);
        h->slots[i].key_offset = be32_to_cpu(d->slots[i].key_offset);
        h->slots[i].stripes = be32_to_cpu(d->slots[i].stripes);
    }
    return true;
}

/* Strings are NUL-padded to their field (strncpy's semantics wanted). */
static void luks_put_name(char *dst, const char *src, size_t len)
{
    size_t n = strnlen(src, len);

    memset(dst, 0, len);
    memcpy(dst, src, n);
}

void luks_header_to_disk(const LuksHeader *h, LuksDiskHeader *d)
{
    memset(d, 0, sizeof(*d));
    memcpy(d->magic, LUKS_MAGIC, LUKS_MAGIC_LEN);
    d->version = GUINT16_TO_BE(h->version);
    luks_put_name(d->cipher_name, h->cipher_name, LUKS_NAME_LEN);
    luks_put_name(d->cipher_mode, h->cipher_mode, LUKS_NAME_LEN);
    luks_put_name(d->hash_spec, h->hash_spec, LUKS_NAME_LEN);
    d->payload_offset = cpu_to_be32(h->payload_offset);
    d->key_bytes = cpu_to_be32(h->key_bytes);
    memcpy(d->mk_digest, h->mk_digest, LUKS_DIGEST_LEN);
    memcpy(d->mk_digest_salt, h->mk_digest_salt, LUKS_SALT_LEN);
    d->mk_digest_iter = cpu_to_be32(h->mk_digest_iter);
    luks_put_name(d->uuid, h->uuid, LUKS_UUID_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        d->slots[i].active = cpu_to_be32(h->slots[i].active);
        d->slots[i].iterations = cpu_to_be32(h->slots[i].iterations);
        memcpy(d->slots[i].salt, h->slots[i].salt, LUKS_SALT_LEN);
        d->slots[i].key_offset = cpu_to_be32(h->slots[i].key_offset);
        d->slots[i].stripes = cpu_to_be32(h->slots[i].stripes);
    }
}

/* ---- hashes and PBKDF2 ---- */

typedef void LuksPbkdf2Fn(const uint8_t *pass, size_t pass_len,
                          const uint8_t *salt, size_t salt_len,
                          uint32_t iterations, uint8_t *out, size_t out_len);

struct LuksHashAlg {
    const char *name;
    const struct nettle_hash *hash;
    LuksPbkdf2Fn *pbkdf2;
};

/* One PBKDF2 per HMAC: nettle's HMAC contexts are typed per hash. */
#define LUKS_PBKDF2_FN(h, H) \
    static void luks_pbkdf2_##h(const uint8_t *pass, size_t pass_len, \
                                const uint8_t *salt, size_t salt_len, \
                                uint32_t iterations, uint8_t *out, \
                                size_t out_len) \
    { \
        struct hmac_##h##_ctx ctx; \
        hmac_##h##_set_key(&ctx, pass_len, pass); \
        PBKDF2(&ctx, hmac_##h##_update, hmac_##h##_digest, \
               H##_DIGEST_SIZE, iterations, salt_len, salt, out_len, out); \
        explicit_bzero(&ctx, sizeof(ctx)); \
    }

LUKS_PBKDF2_FN(md5, MD5)
LUKS_PBKDF2_FN(sha1, SHA1)
LUKS_PBKDF2_FN(sha224, SHA224)
LUKS_PBKDF2_FN(sha256, SHA256)
LUKS_PBKDF2_FN(sha384, SHA384)
LUKS_PBKDF2_FN(sha512, SHA512)
LUKS_PBKDF2_FN(ripemd160, RIPEMD160)

static const LuksHashAlg luks_hashes[] = {
    { "md5", &nettle_md5, luks_pbkdf2_md5 },
    { "sha1", &nettle_sha1, luks_pbkdf2_sha1 },
    { "sha224", &nettle_sha224, luks_pbkdf2_sha224 },
    { "sha256", &nettle_sha256, luks_pbkdf2_sha256 },
    { "sha384", &nettle_sha384, luks_pbkdf2_sha384 },
    { "sha512", &nettle_sha512, luks_pbkdf2_sha512 },
    { "ripemd160", &nettle_ripemd160, luks_pbkdf2_ripemd160 },
};

const LuksHashAlg *luks_hash_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(luks_hashes); i++) {
        if (!strcmp(luks_hashes[i].name, name)) {
            return &luks_hashes[i];
        }
    }
    return NULL;
}

const char *luks_hash_name(const LuksHashAlg *h)
{
    return h->name;
}

size_t luks_hash_size(const LuksHashAlg *h)
{
    return h->hash->digest_size;
}

void luks_hash(const LuksHashAlg *h, const uint8_t *prefix, size_t plen,
               const uint8_t *data, size_t len, uint8_t *out)
{
    uint8_t ctx[512];           /* larger than any nettle hash context */

    assert(h->hash->context_size <= sizeof(ctx));
    h->hash->init(ctx);
    if (prefix) {
        h->hash->update(ctx, plen, prefix);
    }
    h->hash->update(ctx, len, data);
    h->hash->digest(ctx, h->hash->digest_size, out);
    explicit_bzero(ctx, sizeof(ctx));
}

void luks_pbkdf2(const LuksHashAlg *h, const uint8_t *pass, size_t pass_len,
                 const uint8_t *salt, size_t salt_len, uint32_t iterations,
                 uint8_t *out, size_t out_len)
{
    h->pbkdf2(pass, pass_len, salt, salt_len, iterations, out, out_len);
}

static int64_t luks_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

/*
 * Doubling runs until one takes 25 ms of this thread's CPU time (not wall
 * time, so a loaded machine does not make the iteration counts small).
 */
uint64_t luks_pbkdf2_rate(const LuksHashAlg *h, size_t key_len)
{
    static const uint8_t pass[] = "benchmark passphrase";
    uint8_t salt[LUKS_SALT_LEN] = { 0 };
    uint8_t out[LUKS_MAX_KEY_BYTES];
    uint32_t iters = 1000;

    key_len = MIN(key_len, sizeof(out));
    for (;;) {
        int64_t t0 = luks_cpu_ns(), ns;

        luks_pbkdf2(h, pass, sizeof(pass) - 1, salt, sizeof(salt), iters,
                    out, key_len);
        ns = luks_cpu_ns() - t0;
        if (ns >= 25000000 || iters >= (1u << 30)) {
            return MAX((uint64_t)iters * 1000000000 / MAX(ns, 1), 1);
        }
        iters *= 2;
    }
}

/* ---- ciphers ---- */

struct LuksCipherAlg {
    const char *name;           /* QEMU's: "aes-256" */
    const char *family;         /* the header's: "aes" */
    const char *display;        /* in messages: "AES" */
    const struct nettle_cipher *cipher;
};

static const LuksCipherAlg luks_ciphers[] = {
    { "aes-128", "aes", "AES", &nettle_aes128 },
    { "aes-192", "aes", "AES", &nettle_aes192 },
    { "aes-256", "aes", "AES", &nettle_aes256 },
    { "serpent-128", "serpent", "Serpent", &nettle_serpent128 },
    { "serpent-192", "serpent", "Serpent", &nettle_serpent192 },
    { "serpent-256", "serpent", "Serpent", &nettle_serpent256 },
    { "twofish-128", "twofish", "Twofish", &nettle_twofish128 },
    { "twofish-192", "twofish", "Twofish", &nettle_twofish192 },
    { "twofish-256", "twofish", "Twofish", &nettle_twofish256 },
};

const LuksCipherAlg *luks_cipher_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(luks_ciphers); i++) {
        if (!strcmp(luks_ciphers[i].name, name)) {
            return &luks_ciphers[i];
        }
    }
    return NULL;
}

const LuksCipherAlg *luks_cipher_find_family(const char *family,
                                             size_t key_len)
{
    for (size_t i = 0; i < ARRAY_SIZE(luks_ciphers); i++) {
        if (!strcmp(luks_ciphers[i].family, family) &&
            luks_ciphers[i].cipher->key_size == key_len) {
            return &luks_ciphers[i];
        }
    }
    return NULL;
}

const char *luks_cipher_name(const LuksCipherAlg *c)
{
    return c->name;
}

const char *luks_cipher_family(const LuksCipherAlg *c)
{
    return c->family;
}

size_t luks_cipher_key_len(const LuksCipherAlg *c)
{
    return c->cipher->key_size;
}

size_t luks_cipher_block_size(const LuksCipherAlg *c)
{
    return c->cipher->block_size;
}

static const char *const luks_mode_names[] = { "ecb", "cbc", "xts", "ctr" };
static const char *const luks_ivgen_names[] = {
    "", "plain", "plain64", "essiv"
};

const char *luks_mode_name(LuksMode m)
{
    return luks_mode_names[m];
}

const char *luks_ivgen_name(LuksIvgen g)
{
    return luks_ivgen_names[g];
}

int luks_mode_parse(const char *s, LuksMode *m)
{
    for (size_t i = 0; i < ARRAY_SIZE(luks_mode_names); i++) {
        if (!strcmp(s, luks_mode_names[i])) {
            *m = i;
            return 0;
        }
    }
    return -EINVAL;
}

int luks_ivgen_parse(const char *s, LuksIvgen *g)
{
    for (size_t i = 1; i < ARRAY_SIZE(luks_ivgen_names); i++) {
        if (!strcmp(s, luks_ivgen_names[i])) {
            *g = i;
            return 0;
        }
    }
    return -EINVAL;
}

#define LUKS_BLOCK 16           /* every supported cipher's block size */

struct LuksCipher {
    const struct nettle_cipher *cipher;
    LuksMode mode;
    LuksIvgen ivgen;
    void *enc, *dec;            /* data key schedules */
    void *tweak;                /* XTS: the second key, encrypting */
    void *essiv;                /* essiv: hash(key), encrypting */
    const struct nettle_cipher *essiv_cipher;
};

static void *luks_cipher_ctx(const struct nettle_cipher *c,
                             nettle_set_key_func *set, const uint8_t *key)
{
    void *ctx = g_malloc0(c->context_size);

    set(ctx, key);
    return ctx;
}

static void luks_ctx_free(void *ctx, const struct nettle_cipher *c)
{
    if (ctx) {
        explicit_bzero(ctx, c->context_size);
        g_free(ctx);
    }
}

LuksCipher *luks_cipher_new(const LuksCipherAlg *alg, LuksMode mode,
                            LuksIvgen ivgen, const LuksHashAlg *ivhash,
                            const uint8_t *key, size_t key_len, Error **errp)
{
    const struct nettle_cipher *nc = alg->cipher;
    size_t want = nc->key_size * (mode == LUKS_MODE_XTS ? 2 : 1);
    LuksCipher *c;

    if (nc->block_size != LUKS_BLOCK) {
        error_setg(errp, "Cipher '%s' is not supported", alg->name);
        return NULL;
    }
    if (key_len != want) {
        error_setg(errp, "Cipher key length %zu does not match %s-%s (%zu "
                   "bytes)", key_len, alg->name, luks_mode_name(mode), want);
        return NULL;
    }
    if (mode != LUKS_MODE_ECB && ivgen == LUKS_IVGEN_NONE) {
        error_setg(errp, "Cipher mode %s needs an IV generator",
                   luks_mode_name(mode));
        return NULL;
    }
    c = g_new0(LuksCipher, 1);
    c->cipher = nc;
    c->mode = mode;
    c->ivgen = ivgen;
    c->enc = luks_cipher_ctx(nc, nc->set_encrypt_key, key);
    c->dec = luks_cipher_ctx(nc, nc->set_decrypt_key, key);
    if (mode == LUKS_MODE_XTS) {
        c->tweak = luks_cipher_ctx(nc, nc->set_encrypt_key,
                                   key + nc->key_size);
    }
    if (ivgen == LUKS_IVGEN_ESSIV) {
        uint8_t salt[64];
        const LuksCipherAlg *ea;

        assert(ivhash);
        ea = luks_cipher_find_family(alg->family, luks_hash_size(ivhash));
        if (!ea) {
            error_setg(errp, "No %s cipher with key size %zu available",
                       alg->display, luks_hash_size(ivhash));
            luks_cipher_free(c);
            return NULL;
        }
        luks_hash(ivhash, NULL, 0, key, key_len, salt);
        c->essiv_cipher = ea->cipher;
        c->essiv = luks_cipher_ctx(ea->cipher, ea->cipher->set_encrypt_key,
                                   salt);
        explicit_bzero(salt, sizeof(salt));
    }
    return c;
}

void luks_cipher_free(LuksCipher *c)
{
    if (!c) {
        return;
    }
    luks_ctx_free(c->enc, c->cipher);
    luks_ctx_free(c->dec, c->cipher);
    luks_ctx_free(c->tweak, c->cipher);
    luks_ctx_free(c->essiv, c->essiv_cipher);
    g_free(c);
}

static void luks_put_le64(uint8_t *p, uint64_t v)
{
    v = cpu_to_le64(v);
    memcpy(p, &v, sizeof(v));
}

static void luks_iv(LuksCipher *c, uint64_t sector, uint8_t *iv)
{
    memset(iv, 0, LUKS_BLOCK);
    switch (c->ivgen) {
    case LUKS_IVGEN_NONE:
        break;
    case LUKS_IVGEN_PLAIN:
        luks_put_le64(iv, (uint32_t)sector);
        break;
    case LUKS_IVGEN_PLAIN64:
        luks_put_le64(iv, sector);
        break;
    case LUKS_IVGEN_ESSIV:
        luks_put_le64(iv, sector);
        c->essiv_cipher->encrypt(c->essiv, LUKS_BLOCK, iv, iv);
        break;
    }
}

static void luks_cipher_run(LuksCipher *c, bool enc, uint64_t sector,
                            uint8_t *buf, size_t len)
{
    const struct nettle_cipher *nc = c->cipher;
    uint8_t iv[LUKS_BLOCK];

    assert(len % LUKS_SECTOR_SIZE == 0);
    for (size_t off = 0; off < len; off += LUKS_SECTOR_SIZE, sector++) {
        uint8_t *p = buf + off;

        luks_iv(c, sector, iv);
        switch (c->mode) {
        case LUKS_MODE_ECB:
            (enc ? nc->encrypt : nc->decrypt)(enc ? c->enc : c->dec,
                                              LUKS_SECTOR_SIZE, p, p);
            break;
        case LUKS_MODE_CBC:
            if (enc) {
                cbc_encrypt(c->enc, nc->encrypt, LUKS_BLOCK, iv,
                            LUKS_SECTOR_SIZE, p, p);
            } else {
                cbc_decrypt(c->dec, nc->decrypt, LUKS_BLOCK, iv,
                            LUKS_SECTOR_SIZE, p, p);
            }
            break;
        case LUKS_MODE_CTR:
            ctr_crypt(c->enc, nc->encrypt, LUKS_BLOCK, iv, LUKS_SECTOR_SIZE,
                      p, p);
            break;
        case LUKS_MODE_XTS:
            if (enc) {
                xts_encrypt_message(c->enc, c->tweak, nc->encrypt, iv,
                                    LUKS_SECTOR_SIZE, p, p);
            } else {
                xts_decrypt_message(c->dec, c->tweak, nc->decrypt,
                                    nc->encrypt, iv, LUKS_SECTOR_SIZE, p, p);
            }
            break;
        }
    }
    explicit_bzero(iv, sizeof(iv));
}

void luks_cipher_encrypt(LuksCipher *c, uint64_t sector, uint8_t *buf,
                         size_t len)
{
    luks_cipher_run(c, true, sector, buf, len);
}

void luks_cipher_decrypt(LuksCipher *c, uint64_t sector, uint8_t *buf,
                         size_t len)
{
    luks_cipher_run(c, false, sector, buf, len);
}

/* ---- anti-forensic splitter ---- */

/*
 * Diffusion: each digest-sized piece i of buf becomes H(be32(i) || piece),
 * a shorter last piece the start of its hash.
 */
static void luks_af_diffuse(const LuksHashAlg *h, uint8_t *buf, size_t len)
{
    size_t ds = luks_hash_size(h);
    uint8_t out[64];

    for (size_t i = 0, off = 0; off < len; i++, off += ds) {
        size_t n = MIN(ds, len - off);
        uint32_t be = cpu_to_be32((uint32_t)i);

        luks_hash(h, (const uint8_t *)&be, sizeof(be), buf + off, n, out);
        memcpy(buf + off, out, n);
    }
    explicit_bzero(out, sizeof(out));
}

static void luks_xor(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] ^= src[i];
    }
}

int luks_af_split(const LuksHashAlg *h, const uint8_t *key, size_t block_size,
                  uint32_t stripes, uint8_t *out, Error **errp)
{
    uint8_t *d = g_malloc0(block_size);
    int ret;

    assert(stripes > 0);
    ret = luks_random(out, block_size * (stripes - 1), errp);
    if (ret == 0) {
        for (uint32_t i = 0; i + 1 < stripes; i++) {
            luks_xor(d, out + i * block_size, block_size);
            luks_af_diffuse(h, d, block_size);
        }
        memcpy(out + (size_t)(stripes - 1) * block_size, d, block_size);
        luks_xor(out + (size_t)(stripes - 1) * block_size, key, block_size);
    }
    explicit_bzero(d, block_size);
    g_free(d);
    return ret;
}

void luks_af_merge(const LuksHashAlg *h, const uint8_t *in, size_t block_size,
                   uint32_t stripes, uint8_t *key)
{
    assert(stripes > 0);
    memset(key, 0, block_size);
    for (uint32_t i = 0; i + 1 < stripes; i++) {
        luks_xor(key, in + (size_t)i * block_size, block_size);
        luks_af_diffuse(h, key, block_size);
    }
    luks_xor(key, in + (size_t)(stripes - 1) * block_size, block_size);
}

int luks_random(void *buf, size_t len, Error **errp)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = getrandom(p, MIN(len, 256), 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            error_setg_errno(errp, errno, "Cannot get random bytes");
            return -errno;
        }
        p += n;
        len -= n;
    }
    return 0;
}
