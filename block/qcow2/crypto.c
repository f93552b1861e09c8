/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 full disk encryption (crypt_method 2, encrypt.format=luks): a
 * LUKS1 header and key slots in clusters named by the 0x0537be77 header
 * extension (block/luks-volume.c reads and writes them), and guest data
 * encrypted per 512-byte sector with the host offset as the IV's sector
 * number, as QEMU 7.2 does. Metadata and compressed clusters are never
 * encrypted (QEMU 7.2 writes compressed clusters in the clear too).
 * Without nettle (no CONFIG_LUKS) encrypted images are refused.
 */
#include "block/qcow2/qcow2.h"
#include "block/luks.h"

#ifdef CONFIG_LUKS

struct Qcow2Crypto {
    LuksVolume v;               /* luks */
    bool aes;                   /* crypt_method 1: QEMU's legacy AES */
    LuksCipher *aes_cipher;     /* NULL when opened without a key */
};

/*
 * The legacy AES method (QEMU's "qcow" crypto, which qemu-img 7.2 still
 * reads and writes): AES-128-CBC, the passphrase's first 16 bytes (zero
 * padded) as the key, plain64 IVs from the guest sector.
 */
static int coroutine_fn qcow2_crypto_open_aes(BlockDriverState *bs,
                                              const char *fmt,
                                              const char *sid, int flags,
                                              Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t key[16] = { 0 };
    Qcow2Crypto *c;
    char *pass;
    size_t len;

    if (fmt && strcmp(fmt, "aes")) {
        error_setg(errp, "Header reported 'aes' encryption format but "
                   "options specify '%s'", fmt);
        return -EINVAL;
    }
    if (s->has_crypto_ext) {
        error_setg(errp, "CRYPTO header extension only expected with LUKS "
                   "encryption method");
        return -EINVAL;
    }
    c = g_new0(Qcow2Crypto, 1);
    c->aes = true;
    if (!(flags & BDRV_O_NO_IO)) {
        if (!sid) {
            error_setg(errp, "Parameter 'encrypt.key-secret' is required "
                       "for cipher");
            g_free(c);
            return -EINVAL;
        }
        pass = luks_passphrase(sid, &len, errp);
        if (!pass) {
            g_free(c);
            return -EINVAL;
        }
        memcpy(key, pass, MIN(len, sizeof(key)));
        explicit_bzero(pass, len);
        g_free(pass);
        c->aes_cipher = luks_cipher_new(luks_cipher_find("aes-128"),
                                        LUKS_MODE_CBC, LUKS_IVGEN_PLAIN64,
                                        NULL, key, sizeof(key), errp);
        explicit_bzero(key, sizeof(key));
        if (!c->aes_cipher) {
            g_free(c);
            return -ENOTSUP;
        }
    }
    s->crypto = c;
    bs->encrypted = true;
    return 0;
}

static bool qcow2_crypto_overlaps(BDRVQcow2State *s, uint64_t off,
                                  uint64_t len)
{
    return len && off < s->crypto_offset + s->crypto_length &&
           s->crypto_offset < off + len;
}

/* The extension's offset and length, bounded before anything reads there:
 * cluster aligned, at least a LUKS header, inside the file, not on top of
 * the header, L1 or refcount table. */
static int qcow2_crypto_check_ext(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t file_len = bdrv_getlength(bs->file);

    if (!s->has_crypto_ext) {
        error_setg(errp, "LUKS encryption header extension is missing");
        return -EINVAL;
    }
    if (qcow2_offset_into_cluster(s, s->crypto_offset)) {
        error_setg(errp, "Encryption header offset '%" PRIu64 "' is not a "
                   "multiple of cluster size '%" PRIu32 "'",
                   s->crypto_offset, s->cluster_size);
        return -EINVAL;
    }
    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "Could not get image size");
        return (int)file_len;
    }
    if (s->crypto_length < LUKS_HEADER_SIZE ||
        s->crypto_offset > (uint64_t)file_len ||
        s->crypto_length > (uint64_t)file_len - s->crypto_offset) {
        error_setg(errp, "Encryption header at offset %" PRIu64 " with "
                   "length %" PRIu64 " is not inside the image file",
                   s->crypto_offset, s->crypto_length);
        return -EINVAL;
    }
    if (s->crypto_offset < s->cluster_size ||
        qcow2_crypto_overlaps(s, s->l1_table_offset,
                              (uint64_t)s->l1_size * 8) ||
        qcow2_crypto_overlaps(s, s->refcount_table_offset,
                              (uint64_t)s->refcount_table_size * 8)) {
        error_setg(errp, "Encryption header at offset %" PRIu64 " overlaps "
                   "with qcow2 metadata", s->crypto_offset);
        return -EINVAL;
    }
    return 0;
}

int coroutine_fn qcow2_crypto_open(BlockDriverState *bs, QemuOpts *opts,
                                   int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *fmt = qemu_opt_get(opts, "encrypt.format");
    const char *sid = qemu_opt_get(opts, "encrypt.key-secret");
    Qcow2Crypto *c;
    int ret;

    if (s->crypt_method == QCOW2_CRYPT_NONE) {
        if (fmt) {
            error_setg(errp, "No encryption in image header, but options "
                       "specified format '%s'", fmt);
            return -EINVAL;
        }
        return 0;
    }
    if (s->crypt_method == QCOW2_CRYPT_AES) {
        return qcow2_crypto_open_aes(bs, fmt, sid, flags, errp);
    }
    if (fmt && strcmp(fmt, "luks")) {
        error_setg(errp, "Header reported 'luks' encryption format but "
                   "options specify '%s'", fmt);
        return -EINVAL;
    }
    if (!(flags & BDRV_O_NO_IO) && !sid) {
        error_setg(errp, "Parameter 'encrypt.key-secret' is required for "
                   "cipher");
        return -EINVAL;
    }
    ret = qcow2_crypto_check_ext(bs, errp);
    if (ret < 0) {
        return ret;
    }
    c = g_new0(Qcow2Crypto, 1);
    c->v = (LuksVolume) {
        .file = bs->file, .base = s->crypto_offset, .len = s->crypto_length,
        .area = "encryption header",
    };
    ret = luks_volume_open(&c->v, (flags & BDRV_O_NO_IO) ? NULL : sid,
                           errp);
    if (ret < 0) {
        luks_volume_close(&c->v);
        g_free(c);
        return ret;
    }
    s->crypto = c;
    bs->encrypted = true;
    return 0;
}

void qcow2_crypto_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->crypto) {
        luks_cipher_free(s->crypto->aes_cipher);
        luks_volume_close(&s->crypto->v);
        g_free(s->crypto);
        s->crypto = NULL;
    }
}

bool qcow2_crypto_can_io(BDRVQcow2State *s)
{
    return s->crypto && (s->crypto->aes ? s->crypto->aes_cipher != NULL
                                        : s->crypto->v.cipher != NULL);
}

bool qcow2_crypto_host_iv(BDRVQcow2State *s)
{
    return qcow2_crypto_can_io(s) && !s->crypto->aes;
}

int coroutine_fn qcow2_write_encrypted_zero_cluster(BlockDriverState *bs,
                                                   uint64_t host)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t *buf = qemu_blockalign(s->cluster_size);
    int ret;

    memset(buf, 0, s->cluster_size);
    qcow2_encrypt(s, host, 0, buf, s->cluster_size);
    ret = bdrv_co_pwrite(bs->file, host, s->cluster_size, buf, 0);
    qemu_vfree(buf);
    return ret;
}

/* LUKS: the host sector is the IV's input; AES: the guest sector. */
void qcow2_encrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest,
                   uint8_t *buf, size_t len)
{
    Qcow2Crypto *c = s->crypto;

    assert(host % LUKS_SECTOR_SIZE == 0 && len % LUKS_SECTOR_SIZE == 0);
    assert(guest % LUKS_SECTOR_SIZE == 0);
    if (c->aes) {
        luks_cipher_encrypt(c->aes_cipher, guest / LUKS_SECTOR_SIZE, buf, len);
    } else {
        luks_cipher_encrypt(c->v.cipher, host / LUKS_SECTOR_SIZE, buf, len);
    }
}

void qcow2_decrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest,
                   uint8_t *buf, size_t len)
{
    Qcow2Crypto *c = s->crypto;

    assert(host % LUKS_SECTOR_SIZE == 0 && len % LUKS_SECTOR_SIZE == 0);
    assert(guest % LUKS_SECTOR_SIZE == 0);
    if (c->aes) {
        luks_cipher_decrypt(c->aes_cipher, guest / LUKS_SECTOR_SIZE, buf, len);
    } else {
        luks_cipher_decrypt(c->v.cipher, host / LUKS_SECTOR_SIZE, buf, len);
    }
}

/* QEMU's "encrypt" member: format luks and the LUKS header's details. */
JsonValue *qcow2_crypto_info(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    JsonValue *obj;

    if (!s->crypto) {
        return NULL;
    }
    obj = json_new(JSON_OBJECT);
    if (s->crypto->aes) {
        json_add_str(obj, "format", "aes");
        return obj;
    }
    json_add_str(obj, "format", "luks");
    luks_volume_info(&s->crypto->v, obj);
    return obj;
}

struct Qcow2CryptoCreate {
    LuksCreate c;
    bool aes;                   /* legacy AES: just the key secret */
};

/* The secret exists and is UTF-8: checked before any file is made, so
 * that a bad one leaves nothing behind (as QEMU). */
static bool qcow2_crypto_secret_ok(const char *sid, Error **errp)
{
    size_t len;
    char *pass = luks_passphrase(sid, &len, errp);

    if (!pass) {
        return false;
    }
    explicit_bzero(pass, len);
    g_free(pass);
    return true;
}

/*
 * encrypt.format=luks and its options (encrypt.key-secret, cipher-alg,
 * ...): *out set for an encrypted image, NULL for a plain one.
 */
int qcow2_crypto_parse_create(QemuOpts *opts, Qcow2CryptoCreate **out,
                              Error **errp)
{
    const char *fmt = qemu_opt_get(opts, "encrypt.format");
    Qcow2CryptoCreate *cc;

    *out = NULL;
    if (qemu_opt_get_bool(opts, "encryption", false)) {
        if (fmt) {
            error_setg(errp, "'encrypt.format' and its alias 'encryption' "
                       "can't be used at the same time");
            return -EINVAL;
        }
        fmt = "aes";
    }
    if (!fmt) {
        /* encrypt.* options without a format: QEMU's message */
        for (size_t i = 0; i < qemu_opts_count(opts); i++) {
            const char *name, *value;
            qemu_opts_nth(opts, i, &name, &value);
            if (g_str_has_prefix(name, "encrypt.")) {
                error_setg(errp, "Parameter 'encrypt.format' is missing");
                return -EINVAL;
            }
        }
        return 0;
    }
    if (!strcmp(fmt, "aes")) {
        const char *sid = qemu_opt_get(opts, "encrypt.key-secret");
        if (!sid) {
            error_setg(errp, "Parameter 'encrypt.key-secret' is required "
                       "for cipher");
            return -EINVAL;
        }
        if (!qcow2_crypto_secret_ok(sid, errp)) {
            return -EINVAL;
        }
        cc = g_new0(Qcow2CryptoCreate, 1);
        cc->aes = true;
        cc->c.key_secret = sid;
        *out = cc;
        return 0;
    }
    if (strcmp(fmt, "luks")) {
        error_setg(errp, "Parameter 'format' does not accept value '%s'",
                   fmt);
        return -EINVAL;
    }
    cc = g_new0(Qcow2CryptoCreate, 1);
    if (luks_create_parse(opts, "encrypt.", &cc->c, errp) < 0 ||
        !qcow2_crypto_secret_ok(cc->c.key_secret, errp)) {
        g_free(cc);
        return -EINVAL;
    }
    *out = cc;
    return 0;
}

/* Bytes the LUKS header and key slots take (measure, create). */
uint64_t qcow2_crypto_header_bytes(const Qcow2CryptoCreate *cc)
{
    return cc->aes ? 0 : (uint64_t)cc->c.payload_sectors * LUKS_SECTOR_SIZE;
}

/* AES: the secret must exist (as QEMU checks); crypt_method 1, no more. */
static int coroutine_fn qcow2_crypto_create_aes(BlockDriverState *bs,
                                                const Qcow2CryptoCreate *cc,
                                                Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    size_t len;
    char *pass = luks_passphrase(cc->c.key_secret, &len, errp);
    int ret;

    if (!pass) {
        return -EINVAL;
    }
    explicit_bzero(pass, len);
    g_free(pass);
    qemu_co_mutex_lock(&s->lock);
    s->crypt_method = QCOW2_CRYPT_AES;
    ret = qcow2_update_header(bs);
    qemu_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update qcow2 header");
    }
    return ret;
}

/*
 * Give the new (empty, open) image its encryption: clusters for the LUKS
 * area (zeroed), the header extension and crypt_method 2, then the LUKS
 * header and slot 0 inside. The caller holds no lock.
 */
int coroutine_fn qcow2_crypto_create(BlockDriverState *bs,
                                     const Qcow2CryptoCreate *cc,
                                     Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t len = qcow2_crypto_header_bytes(cc);
    LuksVolume v = { .file = bs->file, .len = len,
                     .area = "encryption header" };
    int64_t off;
    int ret;

    if (cc->aes) {
        return qcow2_crypto_create_aes(bs, cc, errp);
    }
    qemu_co_mutex_lock(&s->lock);
    off = qcow2_alloc_clusters(bs, len);
    if (off < 0) {
        qemu_co_mutex_unlock(&s->lock);
        error_setg_errno(errp, (int)-off, "Could not allocate cluster for "
                         "LUKS header");
        return (int)off;
    }
    ret = bdrv_co_pwrite_zeroes(bs->file, off,
                                ROUND_UP(len, (uint64_t)s->cluster_size), 0);
    if (ret >= 0) {
        ret = qcow2_flush_caches(bs);
    }
    if (ret >= 0) {
        s->crypt_method = QCOW2_CRYPT_LUKS;
        s->has_crypto_ext = true;
        s->crypto_offset = off;
        s->crypto_length = len;
        ret = qcow2_update_header(bs);
    }
    qemu_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write LUKS header area");
        return ret;
    }
    v.base = off;
    ret = luks_volume_format(&v, &cc->c, errp);
    luks_volume_close(&v);
    return ret;
}

void qcow2_crypto_create_free(Qcow2CryptoCreate *cc)
{
    g_free(cc);
}

/* qemu-img amend's encrypt.* options: LUKS key slots, as QEMU 7.2. */
int coroutine_fn qcow2_crypto_amend(BlockDriverState *bs, QemuOpts *opts,
                                    bool force, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *fmt = qemu_opt_get(opts, "encrypt.format");

    if (!s->crypto) {
        error_setg(errp, "Can't amend encryption options - encryption not "
                   "present");
        return -EINVAL;
    }
    if (s->crypto->aes) {
        error_setg(errp, "Only LUKS encryption options can be amended");
        return -ENOTSUP;
    }
    if (fmt && strcmp(fmt, "luks")) {
        error_setg(errp, "Changing the encryption format is not supported");
        return -ENOTSUP;
    }
    if (!s->crypto->v.cipher) {
        error_setg(errp, "Parameter 'encrypt.key-secret' is required for "
                   "cipher");
        return -EINVAL;
    }
    return luks_volume_amend(&s->crypto->v, opts, "encrypt.", force, errp);
}

#else /* !CONFIG_LUKS */

int coroutine_fn qcow2_crypto_open(BlockDriverState *bs, QemuOpts *opts,
                                   int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->crypt_method) {
        error_setg(errp, "Encrypted qcow2 images (%s) are not supported: "
                   "no luks or aes driver", s->crypt_method == QCOW2_CRYPT_AES
                   ? "aes" : "luks");
        return -ENOTSUP;
    }
    return 0;
}

void qcow2_crypto_close(BlockDriverState *bs)
{
}

bool qcow2_crypto_can_io(BDRVQcow2State *s)
{
    return false;
}

bool qcow2_crypto_host_iv(BDRVQcow2State *s)
{
    return false;
}

int coroutine_fn qcow2_write_encrypted_zero_cluster(BlockDriverState *bs,
                                                   uint64_t host)
{
    return -ENOTSUP;
}

void qcow2_encrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest,
                   uint8_t *buf, size_t len)
{
    abort();
}

void qcow2_decrypt(BDRVQcow2State *s, uint64_t host, uint64_t guest,
                   uint8_t *buf, size_t len)
{
    abort();
}

JsonValue *qcow2_crypto_info(BlockDriverState *bs)
{
    return NULL;
}

int qcow2_crypto_parse_create(QemuOpts *opts, Qcow2CryptoCreate **out,
                              Error **errp)
{
    const char *fmt = qemu_opt_get(opts, "encrypt.format");

    *out = NULL;
    if (qemu_opt_get_bool(opts, "encryption", false) ||
        (fmt && strcmp(fmt, "none"))) {
        error_setg(errp, "Encrypted qcow2 images cannot be created: no "
                   "luks or aes driver");
        return -ENOTSUP;
    }
    return 0;
}

uint64_t qcow2_crypto_header_bytes(const Qcow2CryptoCreate *cc)
{
    return 0;
}

int coroutine_fn qcow2_crypto_create(BlockDriverState *bs,
                                     const Qcow2CryptoCreate *cc,
                                     Error **errp)
{
    return -ENOTSUP;
}

void qcow2_crypto_create_free(Qcow2CryptoCreate *cc)
{
}

int coroutine_fn qcow2_crypto_amend(BlockDriverState *bs, QemuOpts *opts,
                                    bool force, Error **errp)
{
    error_setg(errp, "Can't amend encryption options - encryption not "
               "present");
    return -EINVAL;
}

#endif
