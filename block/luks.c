/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The luks format: a LUKS1 header and key slots in front of guest data
 * encrypted per 512-byte sector, byte-compatible with QEMU 7.2's luks
 * driver and with cryptsetup (docs/specs/luks.txt, docs/luks.md).
 */
#include "block_int.h"
#include "block/luks.h"
#include "util/secret.h"

/* Guest data is encrypted through bounce buffers of at most this size. */
#define LUKS_BOUNCE_SIZE        (1 * MiB)

typedef struct BDRVLuksState {
    LuksVolume v;               /* the header and key slots at offset 0 */
    uint64_t payload;           /* bytes */
} BDRVLuksState;

static const QemuOptDesc luks_create_opts[] = {
    { "size", QEMU_OPT_SIZE, "Virtual disk size" },
    { "key-secret", QEMU_OPT_STRING,
      "ID of the secret that provides the keyslot passphrase" },
    { "cipher-alg", QEMU_OPT_STRING, "Name of encryption cipher algorithm" },
    { "cipher-mode", QEMU_OPT_STRING, "Name of encryption cipher mode" },
    { "ivgen-alg", QEMU_OPT_STRING, "Name of IV generator algorithm" },
    { "ivgen-hash-alg", QEMU_OPT_STRING,
      "Name of IV generator hash algorithm" },
    { "hash-alg", QEMU_OPT_STRING, "Name of encryption hash algorithm" },
    { "iter-time", QEMU_OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds" },
    { NULL }
};

static const QemuOptDesc luks_amend_opts[] = {
    { "state", QEMU_OPT_STRING,
      "Select new state of affected keyslots (active/inactive)" },
    { "keyslot", QEMU_OPT_NUMBER,
      "Select a single keyslot to modify explicitly" },
    { "old-secret", QEMU_OPT_STRING,
      "Select all keyslots that match this password" },
    { "new-secret", QEMU_OPT_STRING,
      "New secret to set in the matching keyslots. Empty string to erase" },
    { "iter-time", QEMU_OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds" },
    { NULL }
};

static const QemuOptDesc luks_open_opts[] = {
    { "key-secret", QEMU_OPT_STRING,
      "ID of the secret that provides the keyslot passphrase" },
    { NULL }
};

/* ---- header ---- */

static int luks_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    if (buf_size >= LUKS_MAGIC_LEN + 2 &&
        !memcmp(buf, LUKS_MAGIC, LUKS_MAGIC_LEN) &&
        buf[LUKS_MAGIC_LEN] == 0 && buf[LUKS_MAGIC_LEN + 1] == LUKS_VERSION) {
        return 100;
    }
    return 0;
}

static int coroutine_fn luks_open(BlockDriverState *bs, QemuOpts *options,
                                  int flags, Error **errp)
{
    BDRVLuksState *s = bs->opaque;
    const char *sid = qemu_opt_get(options, "key-secret");
    int64_t file_len = bdrv_getlength(bs->file);
    int ret;

    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "Could not get image size");
        return (int)file_len;
    }
    if (!(flags & BDRV_O_NO_IO) && !sid) {
        error_setg(errp, "Parameter 'key-secret' is required for cipher");
        return -EINVAL;
    }
    s->v = (LuksVolume) {
        .file = bs->file, .base = 0, .len = file_len, .area = "file",
    };
    ret = luks_volume_open(&s->v, (flags & BDRV_O_NO_IO) ? NULL : sid,
                           errp);
    if (ret < 0) {
        luks_volume_close(&s->v);
        return ret;
    }
    s->payload = (uint64_t)s->v.hdr.payload_offset * LUKS_SECTOR_SIZE;
    bs->encrypted = true;
    return 0;
}

static void coroutine_fn luks_close(BlockDriverState *bs)
{
    BDRVLuksState *s = bs->opaque;

    luks_volume_close(&s->v);
}

static void luks_refresh_limits(BlockDriverState *bs, Error **errp)
{
    bs->bl.request_alignment = MAX(bs->bl.request_alignment,
                                   LUKS_SECTOR_SIZE);
    bs->bl.max_transfer = bs->file->bl.max_transfer;
}

/* ---- I/O: offset and bytes are multiples of 512 (request_alignment) ---- */

/* Sector numbers are guest sectors (the payload's own). */
static void luks_crypt(void *opaque, bool encrypt, uint64_t host,
                       uint64_t guest, uint8_t *buf, size_t n)
{
    BDRVLuksState *s = opaque;

    if (encrypt) {
        luks_cipher_encrypt(s->v.cipher, guest / LUKS_SECTOR_SIZE, buf, n);
    } else {
        luks_cipher_decrypt(s->v.cipher, guest / LUKS_SECTOR_SIZE, buf, n);
    }
}

/* Guest bytes [offset, +bytes) through the payload, one bounce at a time. */
static int coroutine_fn luks_co_rw(BlockDriverState *bs, bool write,
                                   int64_t offset, int64_t bytes,
                                   QEMUIOVector *qiov, size_t qiov_offset,
                                   BdrvRequestFlags flags)
{
    BDRVLuksState *s = bs->opaque;

    assert(offset % LUKS_SECTOR_SIZE == 0 && bytes % LUKS_SECTOR_SIZE == 0);
    if (!s->v.cipher) {
        return -EIO;            /* opened without I/O: no key */
    }
    return bdrv_co_crypt_bounce(bs->file, write, s->payload + offset, offset,
                                bytes, qiov, qiov_offset, flags,
                                LUKS_BOUNCE_SIZE, luks_crypt, s);
}

static int coroutine_fn luks_co_preadv(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, QEMUIOVector *qiov,
                                       size_t qiov_offset,
                                       BdrvRequestFlags flags)
{
    return luks_co_rw(bs, false, offset, bytes, qiov, qiov_offset, 0);
}

static int coroutine_fn luks_co_pwritev(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset,
                                        BdrvRequestFlags flags)
{
    return luks_co_rw(bs, true, offset, bytes, qiov, qiov_offset,
                      flags & BDRV_REQ_FUA);
}

static int64_t luks_getlength(BlockDriverState *bs)
{
    BDRVLuksState *s = bs->opaque;
    int64_t len = bdrv_getlength(bs->file);

    if (len < 0) {
        return len;
    }
    return MAX(len - (int64_t)s->payload, 0);
}

static int coroutine_fn luks_co_truncate(BlockDriverState *bs, int64_t offset,
                                         bool exact, PreallocMode prealloc,
                                         Error **errp)
{
    BDRVLuksState *s = bs->opaque;

    if (offset < 0 || offset > INT64_MAX - (int64_t)s->payload) {
        error_setg(errp, "Invalid image size specified");
        return -EINVAL;
    }
    return bdrv_co_truncate(bs->file, offset + s->payload, exact, prealloc,
                            errp);
}

/* ---- information ---- */

static int luks_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    return bdrv_get_info(bs->file, bdi);
}

static ImageInfoSpecific *luks_get_specific_info(BlockDriverState *bs,
                                                 Error **errp)
{
    BDRVLuksState *s = bs->opaque;
    ImageInfoSpecific *info = image_info_specific_new("luks");
    JsonValue *obj = json_new(JSON_OBJECT);

    luks_volume_info(&s->v, obj);
    for (guint i = 0; i < obj->members->len; i++) {
        JsonValue *m = g_ptr_array_index(obj->members, i);
        JsonValue *c = json_copy(m);

        g_free(c->key);         /* the item's key names it */
        c->key = NULL;
        image_info_add_json(info, m->key, c);
    }
    json_free(obj);
    return info;
}

/* The create options the protocol gets: all but ours and the size. */
static QemuOpts *luks_protocol_opts(QemuOpts *opts)
{
    QemuOpts *po = qemu_opts_new();

    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        bool ours = false;

        qemu_opts_nth(opts, i, &name, &value);
        for (const QemuOptDesc *d = luks_create_opts; d->name; d++) {
            ours |= !strcmp(d->name, name);
        }
        if (!ours && strcmp(name, "preallocation")) {
            qemu_opt_set(po, name, value);
        }
    }
    return po;
}

static int coroutine_fn luks_create(const char *filename, QemuOpts *opts,
                                    Error **errp)
{
    uint64_t size = qemu_opt_get_size(opts, "size", 0);
    const char *pre = qemu_opt_get(opts, "preallocation");
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    BlockDriverState *file = NULL;
    LuksVolume v = { .base = 0, .area = "file" };
    LuksCreate c;
    QemuOpts *po;
    int ret;

    ret = luks_create_parse(opts, "", &c, errp);
    if (ret < 0) {
        return ret;
    }
    if (pre && qemu_prealloc_parse(pre, &prealloc) < 0) {
        error_setg(errp, "invalid parameter value: %s", pre);
        return -EINVAL;
    }
    if (prealloc == PREALLOC_MODE_METADATA) {
        prealloc = PREALLOC_MODE_OFF;   /* no metadata to allocate (QEMU) */
    }
    if (size > INT64_MAX - (uint64_t)c.payload_sectors * LUKS_SECTOR_SIZE) {
        error_setg(errp, "Image size is too large");
        return -EFBIG;
    }
    /*
     * As QEMU: the file is made first, and removed again when anything
     * after that fails (the secret, writing), even if it existed before.
     */
    po = luks_protocol_opts(opts);
    ret = bdrv_create_file(filename, po, errp);
    qemu_opts_del(po);
    if (ret < 0) {
        return ret;
    }
    file = bdrv_open_child(filename, NULL, NULL, BDRV_O_RDWR | BDRV_O_RESIZE,
                           false, errp);
    if (!file) {
        ret = -EIO;
        goto out;
    }
    v.file = file;
    v.len = (int64_t)c.payload_sectors * LUKS_SECTOR_SIZE;
    ret = bdrv_co_truncate(file, v.len + size, false, prealloc, errp);
    if (ret >= 0) {
        ret = luks_volume_format(&v, &c, errp);
    }
    luks_volume_close(&v);
    bdrv_unref(file);
out:
    if (ret < 0) {
        bdrv_co_delete_file(filename, NULL);
    }
    return ret;
}

/* The header and key slots take payload-offset bytes; the data as many
 * bytes as the disk has (QEMU 7.2 asks for the secret here too). */
static BlockMeasureInfo *luks_measure(QemuOpts *opts, BlockDriverState *in_bs,
                                      Error **errp)
{
    BlockMeasureInfo *info;
    LuksCreate c;
    int64_t size;
    size_t len;
    char *pass;

    if (luks_create_parse(opts, "", &c, errp) < 0) {
        return NULL;
    }
    pass = luks_passphrase(c.key_secret, &len, errp);
    if (!pass) {
        return NULL;
    }
    explicit_bzero(pass, len);
    g_free(pass);
    if (in_bs) {
        size = bdrv_getlength(in_bs);
        if (size < 0) {
            error_setg_errno(errp, (int)-size, "Unable to get image "
                             "virtual_size");
            return NULL;
        }
    } else {
        size = qemu_opt_get_size(opts, "size", 0);
    }
    info = g_new0(BlockMeasureInfo, 1);
    info->required = (int64_t)c.payload_sectors * LUKS_SECTOR_SIZE + size;
    info->fully_allocated = info->required;
    return info;
}

/* qemu-img amend: key slots (luks-volume.c). */
static int coroutine_fn luks_amend(BlockDriverState *bs, QemuOpts *opts,
                                   bool force, Error **errp)
{
    BDRVLuksState *s = bs->opaque;

    return luks_volume_amend(&s->v, opts, "", force, errp);
}

/* Options whose presence makes the node's name json:{...} (QEMU's). */
static const char *const luks_strong_opts[] = { "key-secret", NULL };

static BlockDriver bdrv_luks = {
    .format_name            = "luks",
    .instance_size          = sizeof(BDRVLuksState),
    .strong_opts            = luks_strong_opts,
    .create_opts            = luks_create_opts,
    .open_opts              = luks_open_opts,
    .amend_opts             = luks_amend_opts,

    .bdrv_probe             = luks_probe,
    .bdrv_open              = luks_open,
    .bdrv_close             = luks_close,
    .bdrv_refresh_limits    = luks_refresh_limits,
    .bdrv_create            = luks_create,

    .bdrv_co_preadv         = luks_co_preadv,
    .bdrv_co_pwritev        = luks_co_pwritev,
    .bdrv_co_truncate       = luks_co_truncate,
    .bdrv_getlength         = luks_getlength,
    .bdrv_get_info          = luks_get_info,
    .bdrv_get_specific_info = luks_get_specific_info,
    .bdrv_measure           = luks_measure,
    .bdrv_amend_options     = luks_amend,

    .supported_write_flags  = BDRV_REQ_FUA,
};

BLOCK_DRIVER_REGISTER(bdrv_luks)
