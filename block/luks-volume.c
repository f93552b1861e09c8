/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A LUKS1 volume header and its key slots inside a child node at some
 * base offset: the whole file for the luks driver, the encryption header
 * clusters for qcow2 (encrypt.format=luks). Checking, unlocking, creating,
 * amending key slots and describing it; the sector cipher it yields is
 * used by the format on its data.
 */
#include "block_int.h"
#include "block/luks.h"
#include "util/secret.h"


/* The header's "xts-plain64" / "cbc-essiv:sha256" / "ecb". */
static int luks_parse_mode(const char *spec, LuksParams *p, Error **errp)
{
    g_autofree char *s = g_strdup(spec);
    char *iv = strchr(s, '-'), *ivh = NULL;

    if (iv) {
        *iv++ = '\0';
        ivh = strchr(iv, ':');
        if (ivh) {
            *ivh++ = '\0';
        }
    }
    if (luks_mode_parse(s, &p->mode) < 0) {
        error_setg(errp, "Cipher mode '%s' not supported", s);
        return -ENOTSUP;
    }
    p->ivgen = LUKS_IVGEN_NONE;
    if (p->mode == LUKS_MODE_ECB && !iv) {
        return 0;               /* cryptsetup's plain "ecb" */
    }
    if (!iv) {
        error_setg(errp, "Unexpected cipher mode string format '%s'", spec);
        return -ENOTSUP;
    }
    if (luks_ivgen_parse(iv, &p->ivgen) < 0) {
        error_setg(errp, "IV generator '%s' not supported", iv);
        return -ENOTSUP;
    }
    p->ivhash = NULL;
    if (p->ivgen == LUKS_IVGEN_ESSIV) {
        if (!ivh || !(p->ivhash = luks_hash_find(ivh))) {
            error_setg(errp, "Hash algorithm '%s' not supported",
                       ivh ? ivh : "");
            return -ENOTSUP;
        }
    }
    return 0;
}

/*
 * Everything in the header that later code relies on, bounded: algorithms
 * known, key size that of the cipher, slots 4000 stripes between the
 * header and the payload without overlapping, iteration counts at most
 * LUKS_MAX_ITERS, payload inside the file.
 */
static int luks_check_header(const LuksHeader *h, int64_t file_len,
                             const char *area, LuksParams *p, Error **errp)
{
    size_t key_len;
    uint64_t slot_bytes;

    if (h->version != LUKS_VERSION) {
        error_setg(errp, "LUKS version %u is not supported", h->version);
        return -ENOTSUP;
    }
    if (!(p->hash = luks_hash_find(h->hash_spec))) {
        error_setg(errp, "Hash algorithm '%s' not supported", h->hash_spec);
        return -ENOTSUP;
    }
    if (luks_parse_mode(h->cipher_mode, p, errp) < 0) {
        return -ENOTSUP;
    }
    key_len = h->key_bytes / (p->mode == LUKS_MODE_XTS ? 2 : 1);
    if (h->key_bytes == 0 || h->key_bytes > LUKS_MAX_KEY_BYTES ||
        (p->mode == LUKS_MODE_XTS && h->key_bytes % 2) ||
        !(p->alg = luks_cipher_find_family(h->cipher_name, key_len))) {
        error_setg(errp, "Algorithm '%s' with key size %u bytes not "
                   "supported", h->cipher_name,
                   h->key_bytes / (p->mode == LUKS_MODE_XTS ? 2 : 1));
        return -ENOTSUP;
    }
    if (h->mk_digest_iter == 0) {
        error_setg(errp, "LUKS key iteration count is zero");
        return -EINVAL;
    }
    if (h->mk_digest_iter > LUKS_MAX_ITERS) {
        error_setg(errp, "LUKS master key iteration count %u exceeds the "
                   "limit of %u", h->mk_digest_iter, LUKS_MAX_ITERS);
        return -EINVAL;
    }
    if ((uint64_t)h->payload_offset * LUKS_SECTOR_SIZE < LUKS_HEADER_SIZE) {
        error_setg(errp, "LUKS payload is overlapping with the header");
        return -EINVAL;
    }
    if ((int64_t)h->payload_offset * LUKS_SECTOR_SIZE > file_len) {
        error_setg(errp, "LUKS payload offset %u is beyond the end of the "
                   "%s", h->payload_offset, area);
        return -EINVAL;
    }
    slot_bytes = (uint64_t)h->key_bytes * LUKS_STRIPES;
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *s = &h->slots[i];
        uint64_t start = (uint64_t)s->key_offset * LUKS_SECTOR_SIZE;

        if (s->active != LUKS_SLOT_ACTIVE && s->active != LUKS_SLOT_DISABLED) {
            error_setg(errp, "Keyslot %d state (active/disable) is "
                       "corrupted", i);
            return -EINVAL;
        }
        if (s->stripes != LUKS_STRIPES) {
            error_setg(errp, "Keyslot %d is corrupted (stripes %u != %u)",
                       i, s->stripes, LUKS_STRIPES);
            return -EINVAL;
        }
        if (start < LUKS_HEADER_SIZE) {
            error_setg(errp, "Keyslot %d is overlapping with the LUKS "
                       "header", i);
            return -EINVAL;
        }
        if (start + slot_bytes >
            (uint64_t)h->payload_offset * LUKS_SECTOR_SIZE) {
            error_setg(errp, "Keyslot %d is overlapping with the "
                       "encrypted payload", i);
            return -EINVAL;
        }
        for (int j = 0; j < i; j++) {
            uint64_t o = (uint64_t)h->slots[j].key_offset * LUKS_SECTOR_SIZE;
            if (start < o + slot_bytes && o < start + slot_bytes) {
                error_setg(errp, "Keyslots %d and %d are overlapping in "
                           "the header", j, i);
                return -EINVAL;
            }
        }
        if (s->active == LUKS_SLOT_ACTIVE && s->iterations == 0) {
            error_setg(errp, "Keyslot %d iteration count is zero", i);
            return -EINVAL;
        }
        if (s->active == LUKS_SLOT_ACTIVE && s->iterations > LUKS_MAX_ITERS) {
            error_setg(errp, "Keyslot %d iteration count %u exceeds the "
                       "limit of %u", i, s->iterations, LUKS_MAX_ITERS);
            return -EINVAL;
        }
    }
    return 0;
}

/* ---- unlocking ---- */

char *luks_passphrase(const char *sid, size_t *len, Error **errp)
{
    char *pass = secret_lookup_bytes(sid, len, errp);

    if (pass && !g_utf8_validate(pass, *len, NULL)) {
        error_setg(errp, "Data from secret %s is not valid UTF-8", sid);
        explicit_bzero(pass, *len);
        g_free(pass);
        return NULL;
    }
    return pass;
}

static LuksCipher *luks_new_cipher(const LuksParams *p, const uint8_t *key,
                                   size_t len, Error **errp)
{
    return luks_cipher_new(p->alg, p->mode, p->ivgen, p->ivhash, key, len,
                           errp);
}

/* Bytes of a slot's key material, whole sectors. */
static size_t luks_split_size(uint32_t key_bytes)
{
    return ROUND_UP((size_t)key_bytes * LUKS_STRIPES, LUKS_SECTOR_SIZE);
}

/*
 * Try slot i with the passphrase: 1 and the master key in mk if it opens
 * the digest, 0 if not, -errno on I/O errors.
 */
static int coroutine_fn luks_try_slot(LuksVolume *v, int i,
                                      const uint8_t *pass, size_t pass_len,
                                      uint8_t *mk, Error **errp)
{
    const LuksHeader *h = &v->hdr;
    const LuksSlot *slot = &h->slots[i];
    size_t split_len = luks_split_size(h->key_bytes);
    uint8_t *split = g_malloc(split_len);
    uint8_t key[LUKS_MAX_KEY_BYTES], digest[LUKS_DIGEST_LEN];
    LuksCipher *c;
    int ret;

    ret = bdrv_co_pread(v->file, v->base + (int64_t)slot->key_offset *
                        LUKS_SECTOR_SIZE, split_len, split, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot read LUKS key slot %d", i);
        goto out;
    }
    luks_pbkdf2(v->p.hash, pass, pass_len, slot->salt, LUKS_SALT_LEN,
                slot->iterations, key, h->key_bytes);
    c = luks_new_cipher(&v->p, key, h->key_bytes, errp);
    if (!c) {
        ret = -ENOTSUP;
        goto out;
    }
    luks_cipher_decrypt(c, 0, split, split_len);
    luks_cipher_free(c);
    luks_af_merge(v->p.hash, split, h->key_bytes, LUKS_STRIPES, mk);
    luks_pbkdf2(v->p.hash, mk, h->key_bytes, h->mk_digest_salt, LUKS_SALT_LEN,
                h->mk_digest_iter, digest, LUKS_DIGEST_LEN);
    ret = !memcmp(digest, h->mk_digest, LUKS_DIGEST_LEN);
out:
    explicit_bzero(split, split_len);
    explicit_bzero(key, sizeof(key));
    g_free(split);
    return ret;
}

static int coroutine_fn luks_unlock(LuksVolume *v, const char *sid,
                                    Error **errp)
{
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    size_t pass_len;
    char *pass = luks_passphrase(sid, &pass_len, errp);
    int ret = 0;

    if (!pass) {
        return -EINVAL;
    }
    for (int i = 0; i < LUKS_NUM_SLOTS && ret == 0; i++) {
        if (v->hdr.slots[i].active == LUKS_SLOT_ACTIVE) {
            ret = luks_try_slot(v, i, (const uint8_t *)pass, pass_len, mk,
                                errp);
        }
    }
    explicit_bzero(pass, pass_len);
    g_free(pass);
    if (ret == 0) {
        error_setg(errp, "Invalid password, cannot unlock any keyslot");
        ret = -EACCES;
    } else if (ret > 0) {
        v->cipher = luks_new_cipher(&v->p, mk, v->hdr.key_bytes, errp);
        ret = v->cipher ? 0 : -ENOTSUP;
        memcpy(v->mk, mk, v->hdr.key_bytes);
    }
    explicit_bzero(mk, sizeof(mk));
    return ret;
}

/* ---- open and information ---- */

int coroutine_fn luks_volume_open(LuksVolume *v, const char *sid,
                                  Error **errp)
{
    LuksDiskHeader d;
    int ret;

    ret = bdrv_co_pread(v->file, v->base, sizeof(d), &d, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Unable to read LUKS header");
        return ret;
    }
    if (!luks_header_to_cpu(&d, &v->hdr)) {
        error_setg(errp, "Volume is not in LUKS format");
        return -EINVAL;
    }
    ret = luks_check_header(&v->hdr, v->len, v->area, &v->p, errp);
    if (ret < 0 || !sid) {
        return ret;
    }
    return luks_unlock(v, sid, errp);
}

void luks_volume_close(LuksVolume *v)
{
    luks_cipher_free(v->cipher);
    v->cipher = NULL;
    explicit_bzero(v->mk, sizeof(v->mk));
}

void luks_volume_info(const LuksVolume *v, JsonValue *obj)
{
    const LuksHeader *h = &v->hdr;
    JsonValue *slots = json_new(JSON_ARRAY);

    json_add_str(obj, "cipher-alg", luks_cipher_name(v->p.alg));
    json_add_str(obj, "cipher-mode", luks_mode_name(v->p.mode));
    if (v->p.ivgen != LUKS_IVGEN_NONE) {
        json_add_str(obj, "ivgen-alg", luks_ivgen_name(v->p.ivgen));
    }
    if (v->p.ivhash) {
        json_add_str(obj, "ivgen-hash-alg", luks_hash_name(v->p.ivhash));
    }
    json_add_str(obj, "hash-alg", luks_hash_name(v->p.hash));
    json_add_int(obj, "payload-offset",
                 (int64_t)h->payload_offset * LUKS_SECTOR_SIZE);
    json_add_int(obj, "master-key-iters", h->mk_digest_iter);
    json_add_str(obj, "uuid", h->uuid);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        const LuksSlot *sl = &h->slots[i];
        JsonValue *o = json_new(JSON_OBJECT);
        bool active = sl->active == LUKS_SLOT_ACTIVE;

        json_add_bool(o, "active", active);
        if (active) {
            json_add_int(o, "iters", sl->iterations);
            json_add_int(o, "stripes", sl->stripes);
        }
        json_add_int(o, "key-offset",
                     (int64_t)sl->key_offset * LUKS_SECTOR_SIZE);
        json_add(slots, NULL, o);
    }
    json_add(obj, "slots", slots);
}

/* ---- create and measure ---- */

static const char *luks_create_param(QemuOpts *opts, const char *prefix,
                                     const char *name, const char *def)
{
    g_autofree char *full = g_strconcat(prefix, name, NULL);
    const char *val = qemu_opt_get(opts, full);

    return val ? val : def;
}

/* The algorithms and the layout from the create options (QEMU's defaults:
 * aes-256, xts, plain64, sha256; essiv hashes with sha256). */
int luks_create_parse(QemuOpts *opts, const char *prefix, LuksCreate *c,
                      Error **errp)
{
    const char *alg, *mode, *ivgen, *ivhash, *hash;
    g_autofree char *it = g_strconcat(prefix, "iter-time", NULL);
    uint64_t split_sectors;

    memset(c, 0, sizeof(*c));
    c->key_secret = luks_create_param(opts, prefix, "key-secret", NULL);
    if (!c->key_secret) {
        error_setg(errp, "Parameter '%skey-secret' is required for cipher",
                   prefix);
        return -EINVAL;
    }
    alg = luks_create_param(opts, prefix, "cipher-alg", "aes-256");
    mode = luks_create_param(opts, prefix, "cipher-mode", "xts");
    ivgen = luks_create_param(opts, prefix, "ivgen-alg", "plain64");
    ivhash = luks_create_param(opts, prefix, "ivgen-hash-alg", "sha256");
    hash = luks_create_param(opts, prefix, "hash-alg", "sha256");
    c->iter_time = qemu_opt_get_number(opts, it,
                                       LUKS_DEFAULT_ITER_TIME);
    if (!(c->p.alg = luks_cipher_find(alg))) {
        error_setg(errp, "Parameter 'cipher-alg' does not accept value "
                   "'%s'", alg);
        return -EINVAL;
    }
    if (luks_mode_parse(mode, &c->p.mode) < 0) {
        error_setg(errp, "Parameter 'cipher-mode' does not accept value "
                   "'%s'", mode);
        return -EINVAL;
    }
    if (luks_ivgen_parse(ivgen, &c->p.ivgen) < 0) {
        error_setg(errp, "Parameter 'ivgen-alg' does not accept value "
                   "'%s'", ivgen);
        return -EINVAL;
    }
    if (!(c->p.hash = luks_hash_find(hash))) {
        error_setg(errp, "Parameter 'hash-alg' does not accept value "
                   "'%s'", hash);
        return -EINVAL;
    }
    if (c->p.ivgen == LUKS_IVGEN_ESSIV &&
        !(c->p.ivhash = luks_hash_find(ivhash))) {
        error_setg(errp, "Parameter 'ivgen-hash-alg' does not accept value "
                   "'%s'", ivhash);
        return -EINVAL;
    }
    if (c->iter_time > LUKS_MAX_ITER_TIME) {
        error_setg(errp, "iter-time must be at most %d ms",
                   LUKS_MAX_ITER_TIME);
        return -EINVAL;
    }
    c->key_bytes = luks_cipher_key_len(c->p.alg) *
                   (c->p.mode == LUKS_MODE_XTS ? 2 : 1);
    /* Slot 0 at 4096 bytes, each slot's material 4096-aligned, the
     * payload right after the eighth (as QEMU and cryptsetup lay it). */
    split_sectors = DIV_ROUND_UP((uint64_t)c->key_bytes * LUKS_STRIPES,
                                 LUKS_SECTOR_SIZE);
    c->slot_sectors = ROUND_UP(split_sectors, LUKS_SLOT_ALIGN_SECTORS);
    c->payload_sectors = LUKS_SLOT_ALIGN_SECTORS +
                         LUKS_NUM_SLOTS * c->slot_sectors;
    return 0;
}

static void luks_format_uuid(const uint8_t *r, char *out)
{
    uint8_t u[16];

    memcpy(u, r, 16);
    u[6] = (u[6] & 0x0f) | 0x40;    /* version 4 */
    u[8] = (u[8] & 0x3f) | 0x80;    /* RFC 4122 variant */
    snprintf(out, LUKS_UUID_LEN,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
             u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
}

static uint32_t luks_iters(uint64_t rate, uint64_t ms, unsigned div)
{
    uint64_t n = rate * ms / 1000 / div;

    return MIN(MAX(n, LUKS_MIN_ITERS), LUKS_MAX_ITERS);
}

/*
 * Header and slot 0's key material for a new image: a random master key,
 * its digest, and slot 0 holding it under the passphrase.
 */
static int luks_build(const LuksCreate *c, const uint8_t *pass,
                      size_t pass_len, LuksHeader *h, uint8_t *split,
                      Error **errp)
{
    uint8_t mk[LUKS_MAX_KEY_BYTES], key[LUKS_MAX_KEY_BYTES], r[16];
    uint64_t rate = luks_pbkdf2_rate(c->p.hash, c->key_bytes);
    LuksCipher *cipher;
    int ret;

    memset(h, 0, sizeof(*h));
    h->version = LUKS_VERSION;
    snprintf(h->cipher_name, sizeof(h->cipher_name), "%s",
             luks_cipher_family(c->p.alg));
    if (c->p.ivgen == LUKS_IVGEN_NONE) {
        snprintf(h->cipher_mode, sizeof(h->cipher_mode), "%s",
                 luks_mode_name(c->p.mode));
    } else if (c->p.ivgen == LUKS_IVGEN_ESSIV) {
        snprintf(h->cipher_mode, sizeof(h->cipher_mode), "%s-%s:%s",
                 luks_mode_name(c->p.mode), luks_ivgen_name(c->p.ivgen),
                 luks_hash_name(c->p.ivhash));
    } else {
        snprintf(h->cipher_mode, sizeof(h->cipher_mode), "%s-%s",
                 luks_mode_name(c->p.mode), luks_ivgen_name(c->p.ivgen));
    }
    snprintf(h->hash_spec, sizeof(h->hash_spec), "%s",
             luks_hash_name(c->p.hash));
    h->payload_offset = c->payload_sectors;
    h->key_bytes = c->key_bytes;
    if ((ret = luks_random(mk, c->key_bytes, errp)) < 0 ||
        (ret = luks_random(h->mk_digest_salt, LUKS_SALT_LEN, errp)) < 0 ||
        (ret = luks_random(h->slots[0].salt, LUKS_SALT_LEN, errp)) < 0 ||
        (ret = luks_random(r, sizeof(r), errp)) < 0) {
        goto out;
    }
    luks_format_uuid(r, h->uuid);
    h->mk_digest_iter = luks_iters(rate, c->iter_time, 8);
    luks_pbkdf2(c->p.hash, mk, c->key_bytes, h->mk_digest_salt,
                LUKS_SALT_LEN, h->mk_digest_iter, h->mk_digest,
                LUKS_DIGEST_LEN);
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        h->slots[i].active = LUKS_SLOT_DISABLED;
        h->slots[i].stripes = LUKS_STRIPES;
        h->slots[i].key_offset = LUKS_SLOT_ALIGN_SECTORS +
                                 i * c->slot_sectors;
    }
    h->slots[0].active = LUKS_SLOT_ACTIVE;
    h->slots[0].iterations = luks_iters(rate, c->iter_time, 1);
    luks_pbkdf2(c->p.hash, pass, pass_len, h->slots[0].salt, LUKS_SALT_LEN,
                h->slots[0].iterations, key, c->key_bytes);
    ret = luks_af_split(c->p.hash, mk, c->key_bytes, LUKS_STRIPES, split,
                        errp);
    if (ret < 0) {
        goto out;
    }
    cipher = luks_new_cipher(&c->p, key, c->key_bytes, errp);
    if (!cipher) {
        ret = -ENOTSUP;
        goto out;
    }
    luks_cipher_encrypt(cipher, 0, split, luks_split_size(c->key_bytes));
    luks_cipher_free(cipher);
out:
    explicit_bzero(mk, sizeof(mk));
    explicit_bzero(key, sizeof(key));
    return ret;
}

/* Slot 0 key material, then the header (durable in that order). */
static int coroutine_fn luks_write_new(LuksVolume *v, const LuksCreate *c,
                                       const LuksHeader *h,
                                       const uint8_t *split, Error **errp)
{
    size_t hlen = LUKS_SLOT_ALIGN_SECTORS * LUKS_SECTOR_SIZE;
    uint8_t *hdr = g_malloc0(hlen);
    int ret;

    luks_header_to_disk(h, (LuksDiskHeader *)hdr);
    ret = bdrv_co_pwrite(v->file, v->base + (int64_t)h->slots[0].key_offset *
                         LUKS_SECTOR_SIZE, luks_split_size(c->key_bytes),
                         split, 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(v->file);
    }
    /* The header last: until it is there, the area holds no volume. */
    if (ret >= 0) {
        ret = bdrv_co_pwrite(v->file, v->base, hlen, hdr, 0);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(v->file);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write LUKS header");
    }
    g_free(hdr);
    return ret;
}

int coroutine_fn luks_volume_format(LuksVolume *v, const LuksCreate *c,
                                    Error **errp)
{
    size_t pass_len = 0, split_len = luks_split_size(c->key_bytes);
    char *pass = luks_passphrase(c->key_secret, &pass_len, errp);
    uint8_t *split;
    int ret;

    if (!pass) {
        return -EINVAL;
    }
    split = g_malloc0(split_len);
    ret = luks_build(c, (const uint8_t *)pass, pass_len, &v->hdr, split,
                     errp);
    if (ret >= 0) {
        ret = luks_write_new(v, c, &v->hdr, split, errp);
    }
    if (ret >= 0) {
        v->p = c->p;
    }
    explicit_bzero(pass, pass_len);
    g_free(pass);
    explicit_bzero(split, split_len);
    g_free(split);
    return ret;
}

/* ---- amend: key slots ---- */

static int coroutine_fn luks_write_header(LuksVolume *v,
                                          const LuksHeader *h)
{
    LuksDiskHeader d;
    int ret;

    luks_header_to_disk(h, &d);
    ret = bdrv_co_pwrite(v->file, v->base, sizeof(d), &d, 0);
    return ret < 0 ? ret : bdrv_co_flush(v->file);
}

/* Slot i made to hold the master key under the passphrase of secret sid:
 * its key material first, then the header naming it active. */
static int coroutine_fn luks_add_slot(LuksVolume *v, int i,
                                      const char *sid, uint64_t iter_time,
                                      Error **errp)
{
    LuksHeader h = v->hdr;
    LuksSlot *slot = &h.slots[i];
    size_t split_len = luks_split_size(h.key_bytes), pass_len;
    uint8_t *split = NULL, key[LUKS_MAX_KEY_BYTES];
    char *pass = luks_passphrase(sid, &pass_len, errp);
    LuksCipher *c = NULL;
    int ret;

    if (!pass) {
        return -EINVAL;
    }
    split = g_malloc0(split_len);
    ret = luks_random(slot->salt, LUKS_SALT_LEN, errp);
    if (ret < 0) {
        goto out;
    }
    slot->iterations = luks_iters(luks_pbkdf2_rate(v->p.hash, h.key_bytes),
                                  iter_time, 1);
    slot->stripes = LUKS_STRIPES;
    luks_pbkdf2(v->p.hash, (const uint8_t *)pass, pass_len, slot->salt,
                LUKS_SALT_LEN, slot->iterations, key, h.key_bytes);
    ret = luks_af_split(v->p.hash, v->mk, h.key_bytes, LUKS_STRIPES, split,
                        errp);
    if (ret < 0) {
        goto out;
    }
    c = luks_new_cipher(&v->p, key, h.key_bytes, errp);
    if (!c) {
        ret = -ENOTSUP;
        goto out;
    }
    luks_cipher_encrypt(c, 0, split, split_len);
    ret = bdrv_co_pwrite(v->file, v->base + (int64_t)slot->key_offset *
                         LUKS_SECTOR_SIZE, split_len, split, 0);
    if (ret >= 0) {
        ret = bdrv_co_flush(v->file);
    }
    if (ret >= 0) {
        slot->active = LUKS_SLOT_ACTIVE;
        ret = luks_write_header(v, &h);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot write LUKS key slot %d", i);
    } else {
        v->hdr = h;
    }
out:
    luks_cipher_free(c);
    explicit_bzero(key, sizeof(key));
    explicit_bzero(split, split_len);
    explicit_bzero(pass, pass_len);
    g_free(split);
    g_free(pass);
    return ret;
}

/* Slot i disabled in the header, then its key material overwritten with
 * random bytes. */
static int coroutine_fn luks_erase_slot(LuksVolume *v, int i,
                                        Error **errp)
{
    LuksHeader h = v->hdr;
    size_t len = luks_split_size(h.key_bytes);
    uint8_t *junk = g_malloc(len);
    int ret;

    h.slots[i].active = LUKS_SLOT_DISABLED;
    h.slots[i].iterations = 0;
    memset(h.slots[i].salt, 0, LUKS_SALT_LEN);
    ret = luks_write_header(v, &h);
    if (ret >= 0) {
        v->hdr = h;
        ret = luks_random(junk, len, errp);
        if (ret < 0) {
            goto out;
        }
        ret = bdrv_co_pwrite(v->file, v->base +
                             (int64_t)h.slots[i].key_offset *
                             LUKS_SECTOR_SIZE, len, junk, 0);
    }
    if (ret >= 0) {
        ret = bdrv_co_flush(v->file);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot erase LUKS key slot %d", i);
    }
out:
    g_free(junk);
    return ret;
}

static int coroutine_fn luks_amend_activate(LuksVolume *v,
                                            int64_t keyslot,
                                            const char *old_sid,
                                            const char *new_sid,
                                            uint64_t iter_time, bool force,
                                            Error **errp)
{

    if (!new_sid) {
        error_setg(errp, "'new-secret' is required to activate a keyslot");
        return -EINVAL;
    }
    if (old_sid) {
        error_setg(errp, "'old-secret' must not be given when activating "
                   "keyslots");
        return -EINVAL;
    }
    if (keyslot < 0) {
        for (keyslot = 0; keyslot < LUKS_NUM_SLOTS; keyslot++) {
            if (v->hdr.slots[keyslot].active != LUKS_SLOT_ACTIVE) {
                break;
            }
        }
        if (keyslot == LUKS_NUM_SLOTS) {
            error_setg(errp, "Can't add a keyslot - all keyslots are in use");
            return -EINVAL;
        }
    } else if (v->hdr.slots[keyslot].active == LUKS_SLOT_ACTIVE && !force) {
        error_setg(errp, "Refusing to overwrite active keyslot %d - please "
                   "erase it first", (int)keyslot);
        return -EINVAL;
    }
    return luks_add_slot(v, keyslot, new_sid, iter_time, errp);
}

static int coroutine_fn luks_amend_erase(LuksVolume *v,
                                         int64_t keyslot, const char *old_sid,
                                         const char *new_sid, bool force,
                                         Error **errp)
{
    bool match[LUKS_NUM_SLOTS] = { false };
    uint8_t mk[LUKS_MAX_KEY_BYTES];
    int active = 0, n = 0, ret = 0;

    if (new_sid) {
        error_setg(errp, "'new-secret' must not be given when erasing "
                   "keyslots");
        return -EINVAL;
    }
    if (keyslot < 0 && !old_sid) {
        error_setg(errp, "To erase keyslot(s), either explicit keyslot index "
                   "or the password currently contained in them must be "
                   "given");
        return -EINVAL;
    }
    for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
        active += v->hdr.slots[i].active == LUKS_SLOT_ACTIVE;
    }
    if (keyslot >= 0) {
        if (v->hdr.slots[keyslot].active != LUKS_SLOT_ACTIVE && !force) {
            error_setg(errp, "Given keyslot %d is already erased (inactive) ",
                       (int)keyslot);
            return -EINVAL;
        }
        match[keyslot] = true;
        n = 1;
    }
    if (old_sid) {
        size_t len;
        char *pass = luks_passphrase(old_sid, &len, errp);

        if (!pass) {
            return -EINVAL;
        }
        for (int i = 0; i < LUKS_NUM_SLOTS && ret >= 0; i++) {
            bool want = keyslot < 0 || keyslot == i;

            match[i] = false;
            if (want && v->hdr.slots[i].active == LUKS_SLOT_ACTIVE) {
                ret = luks_try_slot(v, i, (const uint8_t *)pass, len, mk,
                                    errp);
                match[i] = ret > 0;
            }
        }
        explicit_bzero(mk, sizeof(mk));
        explicit_bzero(pass, len);
        g_free(pass);
        if (ret < 0) {
            return ret;
        }
        n = 0;
        for (int i = 0; i < LUKS_NUM_SLOTS; i++) {
            n += match[i];
        }
        if (n == 0) {
            error_setg(errp, "No keyslots match given (old) password for "
                       "erase operation");
            return -EINVAL;
        }
    }
    if (n == active && !force) {
        int last = 0;
        while (!match[last]) {
            last++;
        }
        if (old_sid) {
            error_setg(errp, "All the active keyslots match the (old) "
                       "password that was given and erasing them will erase "
                       "all the data in the image irreversibly - refusing "
                       "operation");
        } else {
            error_setg(errp, "Attempt to erase the only active keyslot %d "
                       "which will erase all the data in the image "
                       "irreversibly - refusing operation", last);
        }
        return -EINVAL;
    }
    for (int i = 0; i < LUKS_NUM_SLOTS && ret >= 0; i++) {
        if (match[i]) {
            ret = luks_erase_slot(v, i, errp);
        }
    }
    return ret;
}

/* qemu-img amend: state=active adds a slot (new-secret, optionally at
 * keyslot), state=inactive erases slots (keyslot and/or old-secret), with
 * QEMU 7.2's options and messages. */
int coroutine_fn luks_volume_amend(LuksVolume *v, QemuOpts *opts,
                                   const char *prefix, bool force,
                                   Error **errp)
{
    g_autofree char *o_state = g_strconcat(prefix, "state", NULL);
    g_autofree char *o_old = g_strconcat(prefix, "old-secret", NULL);
    g_autofree char *o_new = g_strconcat(prefix, "new-secret", NULL);
    g_autofree char *o_slot = g_strconcat(prefix, "keyslot", NULL);
    g_autofree char *o_iter = g_strconcat(prefix, "iter-time", NULL);
    const char *state = qemu_opt_get(opts, o_state);
    const char *old_sid = qemu_opt_get(opts, o_old);
    const char *new_sid = qemu_opt_get(opts, o_new);
    int64_t keyslot = -1;
    uint64_t iter_time = qemu_opt_get_number(opts, o_iter,
                                             LUKS_DEFAULT_ITER_TIME);

    if (!state) {
        error_setg(errp, "Parameter 'state' is missing");
        return -EINVAL;
    }
    if (strcmp(state, "active") && strcmp(state, "inactive")) {
        error_setg(errp, "Parameter 'state' does not accept value '%s'",
                   state);
        return -EINVAL;
    }
    if (qemu_opt_has(opts, o_slot)) {
        uint64_t k = qemu_opt_get_number(opts, o_slot, 0);
        if (k >= LUKS_NUM_SLOTS) {
            error_setg(errp, "Invalid keyslot %" PRIu64 " specified, must be "
                       "between 0 and %d", k, LUKS_NUM_SLOTS - 1);
            return -EINVAL;
        }
        keyslot = k;
    }
    if (iter_time > LUKS_MAX_ITER_TIME) {
        error_setg(errp, "iter-time must be at most %d ms",
                   LUKS_MAX_ITER_TIME);
        return -EINVAL;
    }
    if (!v->cipher) {
        error_setg(errp, "Parameter '%skey-secret' is required for cipher",
                   prefix);
        return -EINVAL;
    }
    if (!strcmp(state, "active")) {
        return luks_amend_activate(v, keyslot, old_sid, new_sid, iter_time,
                                   force, errp);
    }
    return luks_amend_erase(v, keyslot, old_sid, new_sid, force, errp);
}
