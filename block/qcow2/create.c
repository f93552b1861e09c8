/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 image creation (laid out as QEMU lays it out: header, refcount
 * table, one refcount block, then the L1 table when the size is set),
 * qemu-img measure, qemu-img amend, and backing file changes.
 */
#include "block/qcow2/qcow2.h"
#include "util/cutils.h"
#include "util/secret.h"

/* The options create and amend share, last in both lists. */
#define QCOW2_COMMON_OPTS \
    { "size", QEMU_OPT_SIZE, "Virtual disk size" }, \
    { "compat", QEMU_OPT_STRING, \
      "Compatibility level (v2 [0.10] or v3 [1.1])" }, \
    { "backing_file", QEMU_OPT_STRING, "File name of a base image" }, \
    { "backing_fmt", QEMU_OPT_STRING, "Image format of the base image" }, \
    { "data_file", QEMU_OPT_STRING, "File name of an external data file" }, \
    { "data_file_raw", QEMU_OPT_BOOL, \
      "The external data file must stay valid as a raw image" }, \
    { "lazy_refcounts", QEMU_OPT_BOOL, "Postpone refcount updates", "off" }, \
    { "refcount_bits", QEMU_OPT_NUMBER, \
      "Width of a reference count entry in bits", "16" },

/* Creation options, in QEMU's order (qemu-img prints them in this order). */
const QemuOptDesc qcow2_create_opts[] = {
    { "encryption", QEMU_OPT_BOOL, "Encrypt the image with format 'aes'. "
      "(Deprecated in favor of encrypt.format=aes)" },
    { "encrypt.format", QEMU_OPT_STRING,
      "Encrypt the image, format choices: 'aes', 'luks'" },
    { "encrypt.key-secret", QEMU_OPT_STRING,
      "ID of secret providing qcow AES key or LUKS passphrase" },
    { "encrypt.cipher-alg", QEMU_OPT_STRING,
      "Name of encryption cipher algorithm" },
    { "encrypt.cipher-mode", QEMU_OPT_STRING,
      "Name of encryption cipher mode" },
    { "encrypt.ivgen-alg", QEMU_OPT_STRING, "Name of IV generator algorithm" },
    { "encrypt.ivgen-hash-alg", QEMU_OPT_STRING,
      "Name of IV generator hash algorithm" },
    { "encrypt.hash-alg", QEMU_OPT_STRING,
      "Name of encryption hash algorithm" },
    { "encrypt.iter-time", QEMU_OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds" },
    { "cluster_size", QEMU_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "extended_l2", QEMU_OPT_BOOL, "Extended L2 tables", "off" },
    { "preallocation", QEMU_OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)" },
    { "compression_type", QEMU_OPT_STRING,
      "Compression method used for image cluster compression", "zlib" },
    QCOW2_COMMON_OPTS
    { NULL }
};

const QemuOptDesc qcow2_amend_opts[] = {
    { "encrypt.state", QEMU_OPT_STRING,
      "Select new state of affected keyslots (active/inactive)" },
    { "encrypt.keyslot", QEMU_OPT_NUMBER,
      "Select a single keyslot to modify explicitly" },
    { "encrypt.old-secret", QEMU_OPT_STRING,
      "Select all keyslots that match this password" },
    { "encrypt.new-secret", QEMU_OPT_STRING,
      "New secret to set in the matching keyslots. Empty string to erase" },
    { "encrypt.iter-time", QEMU_OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds" },
    QCOW2_COMMON_OPTS
    { NULL }
};

/* ---- option parsing shared by create and measure ---- */

typedef struct Qcow2CreateParams {
    uint64_t size;
    int version;
    uint64_t cluster_size;
    bool extended_l2;
    PreallocMode prealloc;
    uint64_t refcount_bits;
    bool lazy_refcounts;
    const char *backing_file;
    const char *backing_fmt;
    const char *data_file;
    bool data_file_raw;
    Qcow2CryptoCreate *crypto;      /* encrypt.format=luks, else NULL */
} Qcow2CreateParams;

static int qcow2_parse_version(const char *compat, Error **errp)
{
    if (!compat || !strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
        return 3;
    }
    if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
        return 2;
    }
    error_setg(errp, "Invalid compatibility level: '%s'", compat);
    return -EINVAL;
}

static bool qcow2_check_cluster_size(uint64_t cs, bool extended_l2,
                                     Error **errp)
{
    if (cs < 512 || cs > 2 * MiB || (cs & (cs - 1))) {
        error_setg(errp, "Cluster size must be a power of two between 512 "
                   "and 2048k");
        return false;
    }
    if (extended_l2 && cs < 512 * QCOW2_SUBCLUSTERS) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "cluster sizes of at least %d bytes",
                   512 * QCOW2_SUBCLUSTERS);
        return false;
    }
    return true;
}

/* Everything QEMU validates before writing anything (its messages). */
static int qcow2_parse_create_opts(QemuOpts *opts, Qcow2CreateParams *p,
                                   Error **errp)
{
    const char *pre = qemu_opt_get(opts, "preallocation");
    const char *ctype = qemu_opt_get(opts, "compression_type");

    p->size = ROUND_UP(qemu_opt_get_size(opts, "size", 0),
                       BDRV_SECTOR_SIZE);
    p->version = qcow2_parse_version(qemu_opt_get(opts, "compat"), NULL);
    if (p->version < 0) {
        error_setg(errp, "Parameter 'version' does not accept value '%s'",
                   qemu_opt_get(opts, "compat"));
        return -EINVAL;
    }
    p->cluster_size = qemu_opt_get_size(opts, "cluster_size",
                                        QCOW2_DEFAULT_CLUSTER_SIZE);
    p->extended_l2 = qemu_opt_get_bool(opts, "extended_l2", false);
    if (p->extended_l2 && p->version < 3) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        return -EINVAL;
    }
    if (!qcow2_check_cluster_size(p->cluster_size, p->extended_l2, errp)) {
        return -EINVAL;
    }
    p->prealloc = PREALLOC_MODE_OFF;
    if (pre && qemu_prealloc_parse(pre, &p->prealloc) < 0) {
        error_setg(errp, "Parameter 'preallocation' does not accept value "
                   "'%s'", pre);
        return -EINVAL;
    }
    p->backing_file = qemu_opt_get(opts, "backing_file");
    p->backing_fmt = qemu_opt_get(opts, "backing_fmt");
    if (p->backing_file && p->prealloc != PREALLOC_MODE_OFF &&
        !p->extended_l2) {
        error_setg(errp, "Backing file and preallocation can only be used at "
                   "the same time if extended_l2 is on");
        return -EINVAL;
    }
    if (p->backing_fmt && !p->backing_file) {
        error_setg(errp, "Backing format cannot be used without backing "
                   "file");
        return -EINVAL;
    }
    p->lazy_refcounts = qemu_opt_get_bool(opts, "lazy_refcounts", false);
    if (p->version < 3 && p->lazy_refcounts) {
        error_setg(errp, "Lazy refcounts only supported with compatibility "
                   "level 1.1 and above (use version=v3 or greater)");
        return -EINVAL;
    }
    p->refcount_bits = qemu_opt_get_number(opts, "refcount_bits", 16);
    if (p->refcount_bits > 64 || !p->refcount_bits ||
        (p->refcount_bits & (p->refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                   "exceed 64 bits");
        return -EINVAL;
    }
    if (p->version < 3 && p->refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                   "compatibility level 1.1 or above (use version=v3 or "
                   "greater)");
        return -EINVAL;
    }
    p->data_file = qemu_opt_get(opts, "data_file");
    p->data_file_raw = qemu_opt_get_bool(opts, "data_file_raw", false);
    if (p->data_file_raw && !p->data_file) {
        error_setg(errp, "data-file-raw requires data-file");
        return -EINVAL;
    }
    if (p->data_file_raw && p->backing_file) {
        error_setg(errp, "Backing file and data-file-raw cannot be used at "
                   "the same time");
        return -EINVAL;
    }
    if (p->data_file_raw && p->prealloc == PREALLOC_MODE_OFF) {
        /* The raw file must read like the image: map it 1:1. */
        p->prealloc = PREALLOC_MODE_METADATA;
    }
    if (p->data_file && p->version < 3) {
        error_setg(errp, "External data files are only supported with "
                   "compatibility level 1.1 and above (use version=v3 or "
                   "greater)");
        return -EINVAL;
    }
    if (ctype && strcmp(ctype, "zlib")) {
        if (strcmp(ctype, "zstd")) {
            error_setg(errp, "Parameter 'compression-type' does not accept "
                       "value '%s'", ctype);
        } else if (p->version < 3) {
            error_setg(errp, "Non-zlib compression type is only supported "
                       "with compatibility level 1.1 and above (use "
                       "version=v3 or greater)");
        } else {
            /* What a QEMU built without zstd says (its QAPI enum has no
             * 'zstd' then): zstd images are refused, not written. */
            error_setg(errp, "Parameter 'compression-type' does not accept "
                       "value 'zstd'");
        }
        return -EINVAL;
    }
    /* Last: nothing to free on the errors above. */
    return qcow2_crypto_parse_create(opts, &p->crypto, errp);
}

/* ---- create ---- */

/* The options meant for the protocol: all but qcow2's own. */
static QemuOpts *qcow2_protocol_opts(QemuOpts *opts)
{
    QemuOpts *po = qemu_opts_new();

    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        bool ours = false;
        qemu_opts_nth(opts, i, &name, &value);
        for (const QemuOptDesc *d = qcow2_create_opts; d->name; d++) {
            ours |= !strcmp(d->name, name);
        }
        if (!ours) {
            qemu_opt_set(po, name, value);
        }
    }
    return po;
}

/* Cluster 0: a header of size 0; clusters 1 and 2: a refcount table
 * whose first entry names the (empty) refcount block in cluster 2. */
static int coroutine_fn qcow2_write_initial(BlockDriverState *file,
                                            const Qcow2CreateParams *p)
{
    uint64_t cs = p->cluster_size;
    uint8_t *buf = qemu_blockalign(3 * cs);
    Qcow2Header h = {
        .magic = QCOW2_MAGIC,
        .version = p->version,
        .cluster_bits = __builtin_ctzll(cs),
        .refcount_table_offset = cs,
        .refcount_table_clusters = 1,
        .refcount_order = __builtin_ctzll(p->refcount_bits),
        .header_length = sizeof(Qcow2DiskHeader),
    };
    Qcow2DiskHeader dh;
    int ret;

    if (p->lazy_refcounts) {
        h.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    if (p->data_file) {
        h.incompatible_features |= QCOW2_INCOMPAT_DATA_FILE;
    }
    if (p->data_file_raw) {
        h.autoclear_features |= QCOW2_AUTOCLEAR_DATA_RAW;
    }
    if (p->extended_l2) {
        h.incompatible_features |= QCOW2_INCOMPAT_EXTL2;
    }
    memset(buf, 0, 3 * cs);
    qcow2_header_to_disk(&h, &dh);
    memcpy(buf, &dh, p->version == 2 ? QCOW2_V2_HEADER_SIZE : sizeof(dh));
    uint64_t rt0 = cpu_to_be64(2 * cs);
    memcpy(buf + cs, &rt0, sizeof(rt0));
    ret = bdrv_co_pwrite(file, 0, 3 * cs, buf, 0);
    qemu_vfree(buf);
    return ret;
}

/* Open the fresh image and give it its real header, size and backing. */
static int coroutine_fn qcow2_create_finish(const char *filename,
                                            const Qcow2CreateParams *p,
                                            const char *data_path,
                                            Error **errp)
{
    QemuOpts *oo = qemu_opts_new();
    BlockDriverState *bs;
    BDRVQcow2State *s;
    int64_t off;
    int ret;

    if (data_path) {
        qemu_opt_set(oo, "data-file", data_path);
    }
    bs = bdrv_open(filename, "qcow2", oo, BDRV_O_RDWR | BDRV_O_NO_BACKING,
                   errp);
    qemu_opts_del(oo);
    if (!bs) {
        return -EIO;
    }
    s = bs->opaque;
    qemu_co_mutex_lock(&s->lock);
    off = qcow2_alloc_clusters(bs, 3 * p->cluster_size);
    if (off != 0) {
        ret = off < 0 ? off : -EIO;
        error_setg_errno(errp, -ret, "Could not allocate clusters for "
                         "qcow2 header and refcount table");
        qemu_co_mutex_unlock(&s->lock);
        goto out;
    }
    if (p->data_file) {
        s->image_data_file = g_strdup(p->data_file);
    }
    ret = qcow2_update_header(bs);
    qemu_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update qcow2 header");
        goto out;
    }
    ret = qcow2_co_truncate(bs, p->size, false, p->prealloc, errp);
    if (ret < 0) {
        error_prepend(errp, "Could not resize image: ");
        goto out;
    }
    bdrv_refresh_total_bytes(bs);
    if (p->backing_file) {
        ret = qcow2_change_backing_file(bs, p->backing_file, p->backing_fmt);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not assign backing file "
                             "'%s' with format '%s'", p->backing_file,
                             p->backing_fmt ? p->backing_fmt : "(null)");
            goto out;
        }
    }
    if (p->crypto) {
        ret = qcow2_crypto_create(bs, p->crypto, errp);
        if (ret < 0) {
            goto out;
        }
    }
    ret = 0;
out:
    bdrv_unref(bs);
    return ret;
}

int coroutine_fn qcow2_co_create(const char *filename, QemuOpts *opts,
                                 Error **errp)
{
    Qcow2CreateParams p = { 0 };
    QemuOpts *po;
    BlockDriverState *file = NULL;
    char *data_path = NULL;
    int ret;

    ret = qcow2_parse_create_opts(opts, &p, errp);
    if (ret < 0) {
        return ret;
    }
    po = qcow2_protocol_opts(opts);
    ret = bdrv_create_file(filename, po, errp);
    if (ret >= 0 && p.data_file) {
        /* Named relative to the image, as it is opened later. */
        data_path = path_combine(filename, p.data_file);
        ret = bdrv_create_file(data_path, po, errp);
    }
    qemu_opts_del(po);
    if (ret < 0) {
        goto out;
    }
    file = bdrv_open_child(filename, NULL, NULL, BDRV_O_RDWR, false, errp);
    if (!file) {
        ret = -EIO;
        goto out;
    }
    ret = qcow2_write_initial(file, &p);
    if (ret >= 0) {
        ret = bdrv_co_flush(file);
    }
    bdrv_unref(file);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write qcow2 header");
        goto out;
    }
    ret = qcow2_create_finish(filename, &p, data_path, errp);
out:
    qcow2_crypto_create_free(p.crypto);
    g_free(data_path);
    return ret;
}

/* ---- backing file ---- */

int coroutine_fn qcow2_change_backing_file(BlockDriverState *bs,
                                           const char *backing_file,
                                           const char *backing_fmt)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (backing_file && *backing_file && qcow2_data_file_is_raw(s)) {
        return -EINVAL;
    }
    if (backing_file && strlen(backing_file) > QCOW2_MAX_BACKING_NAME) {
        return -EINVAL;
    }
    qemu_co_mutex_lock(&s->lock);
    char *old_file = s->image_backing_file, *old_fmt = s->image_backing_format;
    s->image_backing_file = backing_file && *backing_file
                            ? g_strdup(backing_file) : NULL;
    s->image_backing_format = backing_fmt && *backing_fmt && backing_file &&
                              *backing_file ? g_strdup(backing_fmt) : NULL;
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        g_free(s->image_backing_file);
        g_free(s->image_backing_format);
        s->image_backing_file = old_file;
        s->image_backing_format = old_fmt;
    } else {
        g_free(old_file);
        g_free(old_fmt);
        pstrcpy(bs->backing_file, sizeof(bs->backing_file),
                s->image_backing_file ? s->image_backing_file : "");
        pstrcpy(bs->backing_format, sizeof(bs->backing_format),
                s->image_backing_format ? s->image_backing_format : "");
    }
    qemu_co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- measure ---- */

/* Bytes of a fully allocated image of total_size (QEMU's arithmetic). */
static int64_t qcow2_prealloc_size(int64_t total_size, size_t cluster_size,
                                   int refcount_order, bool extended_l2)
{
    int64_t meta = cluster_size;                    /* header */
    int64_t aligned = ROUND_UP(total_size, (int64_t)cluster_size);
    size_t l2e = extended_l2 ? 16 : 8;
    uint64_t nl2e = ROUND_UP(aligned / cluster_size, cluster_size / l2e);
    uint64_t nl1e;

    meta += nl2e * l2e;
    nl1e = ROUND_UP(nl2e * l2e / cluster_size, cluster_size / 8);
    meta += nl1e * 8;
    meta += qcow2_refcount_metadata_size((meta + aligned) / cluster_size,
                                         cluster_size, refcount_order, false,
                                         NULL);
    return meta + aligned;
}

/* Bytes of in_bs that hold data (clusters touched by data). */
static int qcow2_measure_data(BlockDriverState *in_bs, uint64_t cs,
                              uint64_t *required, Error **errp)
{
    int64_t ssize = bdrv_getlength(in_bs);
    int64_t pnum = 0;

    if (ssize < 0) {
        error_setg_errno(errp, -ssize, "Unable to get image virtual_size");
        return ssize;
    }
    for (int64_t offset = 0; offset < ssize; offset += pnum) {
        int ret = bdrv_block_status_above(in_bs, NULL, offset,
                                          ssize - offset, &pnum, NULL, NULL,
                                          NULL);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Unable to get block status");
            return ret;
        }
        if (pnum <= 0) {
            break;
        }
        if (ret & BDRV_BLOCK_ZERO) {
            continue;
        }
        if ((ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED)) ==
            (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED)) {
            pnum = ROUND_UP(offset + pnum, (int64_t)cs) - offset;
            *required += offset % cs + pnum;
        }
    }
    return 0;
}

/*
 * Bytes a LUKS header with its eight key slots takes in front of the data,
 * as QEMU's measure computes it (0 unless encrypt.format=luks): a 4 KiB
 * header, then per slot the key material (key length times 4000 stripes)
 * rounded up to 4 KiB.
 */
static int64_t qcow2_measure_luks(QemuOpts *opts, Error **errp)
{
    static const struct {
        const char *name;
        int key_bytes;
    } ciphers[] = {
        { "aes-128", 16 }, { "aes-192", 24 }, { "aes-256", 32 },
        { "cast5-128", 16 }, { "serpent-128", 16 }, { "serpent-192", 24 },
        { "serpent-256", 32 }, { "twofish-128", 16 }, { "twofish-192", 24 },
        { "twofish-256", 32 },
    };
    const char *fmt = qemu_opt_get(opts, "encrypt.format");
    const char *secret = qemu_opt_get(opts, "encrypt.key-secret");
    const char *alg = qemu_opt_get(opts, "encrypt.cipher-alg");
    const char *mode = qemu_opt_get(opts, "encrypt.cipher-mode");
    int key_bytes = 0;
    size_t len;
    char *data;

    if (!fmt || strcmp(fmt, "luks")) {
        return 0;
    }
    if (!secret) {
        error_setg(errp, "Parameter 'encrypt.key-secret' is required for "
                   "cipher");
        return -EINVAL;
    }
    data = secret_lookup_bytes(secret, &len, errp);
    if (!data) {
        return -EINVAL;
    }
    g_free(data);
    alg = alg ? alg : "aes-256";
    mode = mode ? mode : "xts";
    for (size_t i = 0; i < ARRAY_SIZE(ciphers); i++) {
        if (!strcmp(alg, ciphers[i].name)) {
            key_bytes = ciphers[i].key_bytes;
        }
    }
    if (!key_bytes) {
        error_setg(errp, "Parameter 'cipher-alg' does not accept value '%s'",
                   alg);
        return -EINVAL;
    }
    if (strcmp(mode, "xts") && strcmp(mode, "cbc") && strcmp(mode, "ecb") &&
        strcmp(mode, "ctr")) {
        error_setg(errp, "Parameter 'cipher-mode' does not accept value "
                   "'%s'", mode);
        return -EINVAL;
    }
    if (!strcmp(mode, "xts")) {
        if (!strcmp(alg, "cast5-128")) {
            error_setg(errp, "Unsupported cipher mode xts");
            return -EINVAL;
        }
        key_bytes *= 2;
    }
    return 4096 + 8 * ROUND_UP((int64_t)key_bytes * 4000, 4096);
}

/*
 * QEMU's room for the persistent bitmaps of a qcow2 source in a target of
 * cluster size cs: each bitmap fully allocated plus its table, and the
 * directory, each rounded up to clusters.
 */
static int64_t qcow2_measure_bitmaps(BlockDriverState *in_bs, uint64_t cs,
                                     Error **errp)
{
    BDRVQcow2State *s = in_bs->opaque;
    int64_t len = bdrv_getlength(in_bs);
    uint64_t total = 0, dir_size = 0, pos = 0;
    uint8_t *dir;
    int ret;

    if (len < 0) {
        error_setg_errno(errp, -len, "Unable to get image virtual_size");
        return len;
    }
    if (!s->nb_bitmaps ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    /* bitmap_directory_size is bounded by QCOW2_MAX_BITMAP_DIR_SIZE */
    dir = g_malloc0(s->bitmap_directory_size + 1);
    ret = bdrv_pread(in_bs->file, s->bitmap_directory_offset,
                     s->bitmap_directory_size, dir, 0);
    if (ret < 0) {
        g_free(dir);
        error_setg_errno(errp, -ret, "Could not read bitmap directory");
        return ret;
    }
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        Qcow2DiskBitmapDirEntry e;
        uint64_t bits, clusters;
        unsigned gb;

        if (s->bitmap_directory_size - pos < sizeof(e)) {
            break;
        }
        memcpy(&e, dir + pos, sizeof(e));
        gb = e.granularity_bits;
        pos += ROUND_UP(sizeof(e) + be16_to_cpu(e.name_size) +
                        (uint64_t)be32_to_cpu(e.extra_data_size), 8);
        if (gb < 9 || gb > 31) {
            continue;
        }
        bits = DIV_ROUND_UP((uint64_t)len, UINT64_C(1) << gb);
        clusters = DIV_ROUND_UP(DIV_ROUND_UP(bits, 8), cs);
        total += clusters * cs + ROUND_UP(clusters * 8, cs);
        dir_size += ROUND_UP(sizeof(e) + be16_to_cpu(e.name_size), 8);
    }
    g_free(dir);
    return total + ROUND_UP(dir_size, cs);
}

BlockMeasureInfo *qcow2_measure(QemuOpts *opts, BlockDriverState *in_bs,
                                Error **errp)
{
    bool extended_l2 = qemu_opt_get_bool(opts, "extended_l2", false);
    uint64_t cs = qemu_opt_get_size(opts, "cluster_size",
                                    QCOW2_DEFAULT_CLUSTER_SIZE);
    const char *pre = qemu_opt_get(opts, "preallocation");
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    uint64_t required = 0, virtual_size, refcount_bits;
    int64_t luks;
    int version;

    if (!qcow2_check_cluster_size(cs, extended_l2, errp)) {
        return NULL;
    }
    version = qcow2_parse_version(qemu_opt_get(opts, "compat"), errp);
    if (version < 0) {
        return NULL;
    }
    refcount_bits = qemu_opt_get_number(opts, "refcount_bits", 16);
    if (refcount_bits > 64 || !refcount_bits ||
        (refcount_bits & (refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                   "exceed 64 bits");
        return NULL;
    }
    if (version < 3 && refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                   "compatibility level 1.1 or above (use compat=1.1 or "
                   "greater)");
        return NULL;
    }
    if (pre && qemu_prealloc_parse(pre, &prealloc) < 0) {
        error_setg(errp, "invalid parameter value: %s", pre);
        return NULL;
    }
    /* measure needs no crypto driver: aes adds nothing, luks its header */
    luks = qcow2_measure_luks(opts, errp);
    if (luks < 0) {
        return NULL;
    }
    luks = ROUND_UP(luks, (int64_t)cs);
    virtual_size = ROUND_UP(qemu_opt_get_size(opts, "size", 0), cs);
    uint64_t l2e = extended_l2 ? 16 : 8;
    if (DIV_ROUND_UP(virtual_size / cs, cs / l2e) * 8 > QCOW2_MAX_L1_SIZE) {
        error_setg(errp, "The image size is too large (try using a larger "
                   "cluster size)");
        return NULL;
    }
    if (in_bs) {
        int64_t ssize = bdrv_getlength(in_bs);
        if (ssize < 0) {
            error_setg_errno(errp, -ssize, "Unable to get image "
                             "virtual_size");
            return NULL;
        }
        virtual_size = ROUND_UP(ssize, (int64_t)cs);
        if (qemu_opt_get(opts, "backing_file")) {
            /* Nothing known to be shared with the new backing file. */
            required = virtual_size;
        } else if (qcow2_measure_data(in_bs, cs, &required, errp) < 0) {
            return NULL;
        }
    }
    if (prealloc == PREALLOC_MODE_FULL || prealloc == PREALLOC_MODE_FALLOC) {
        required = virtual_size;
    }
    BlockMeasureInfo *info = g_new0(BlockMeasureInfo, 1);
    info->fully_allocated = qcow2_prealloc_size(virtual_size, cs,
                                                __builtin_ctzll(refcount_bits),
                                                extended_l2) + luks;
    info->required = info->fully_allocated - virtual_size + required;
    /* QEMU: the source supports persistent bitmaps (a v3 qcow2) */
    info->has_bitmaps = version >= 3 && in_bs &&
                        !strcmp(bdrv_get_format_name(in_bs), "qcow2") &&
                        ((BDRVQcow2State *)in_bs->opaque)->qcow_version >= 3;
    info->bitmaps = 0;
    if (info->has_bitmaps) {
        int64_t b = qcow2_measure_bitmaps(in_bs, cs, errp);

        if (b < 0) {
            g_free(info);
            return NULL;
        }
        info->bitmaps = b;
    }
    return info;
}

/* ---- amend ---- */

typedef struct Qcow2Amend {
    int new_version;
    const char *backing_file, *backing_fmt, *data_file;
    bool has_backing_file, has_backing_fmt;
    bool lazy_refcounts;
    bool data_file_raw;
    uint64_t refcount_bits;
    uint64_t new_size;
    bool crypto_update;             /* encrypt.*: LUKS key slots */
} Qcow2Amend;

/* Read the options that are set (only those change). */
static int qcow2_amend_parse(BlockDriverState *bs, QemuOpts *opts,
                             Qcow2Amend *a, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    a->new_version = s->qcow_version;
    a->lazy_refcounts = s->use_lazy_refcounts;
    a->data_file_raw = qcow2_data_file_is_raw(s);
    a->refcount_bits = s->refcount_bits;
    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        qemu_opts_nth(opts, i, &name, &value);
        if (g_str_has_prefix(name, "encrypt.")) {
            if (!s->crypto) {
                error_setg(errp, "Can't amend encryption options - "
                           "encryption not present");
                return -EINVAL;
            }
            a->crypto_update = true;
        }
    }
    const char *compat = qemu_opt_get(opts, "compat");
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
            a->new_version = 2;
        } else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
            a->new_version = 3;
        } else {
            error_setg(errp, "Unknown compatibility level %s", compat);
            return -EINVAL;
        }
    }
    a->new_size = qemu_opt_get_size(opts, "size", 0);
    a->has_backing_file = qemu_opt_has(opts, "backing_file");
    a->backing_file = qemu_opt_get(opts, "backing_file");
    a->has_backing_fmt = qemu_opt_has(opts, "backing_fmt");
    a->backing_fmt = qemu_opt_get(opts, "backing_fmt");
    a->lazy_refcounts = qemu_opt_get_bool(opts, "lazy_refcounts",
                                          a->lazy_refcounts);
    if (qemu_opt_has(opts, "refcount_bits")) {
        a->refcount_bits = qemu_opt_get_number(opts, "refcount_bits", 16);
        if (!a->refcount_bits || a->refcount_bits > 64 ||
            (a->refcount_bits & (a->refcount_bits - 1))) {
            error_setg(errp, "Refcount width must be a power of two and may "
                       "not exceed 64 bits");
            return -EINVAL;
        }
    }
    a->data_file = qemu_opt_get(opts, "data_file");
    if (a->data_file && !qcow2_has_data_file(s)) {
        error_setg(errp, "data-file can only be set for images that use an "
                   "external data file");
        return -EINVAL;
    }
    if (qemu_opt_has(opts, "data_file_raw")) {
        a->data_file_raw = qemu_opt_get_bool(opts, "data_file_raw",
                                             a->data_file_raw);
        if (a->data_file_raw && !qcow2_data_file_is_raw(s)) {
            error_setg(errp, "data-file-raw cannot be set on existing "
                       "images");
            return -EINVAL;
        }
    }
    return 0;
}

/* v2 -> v3: snapshots get their v3 extra data, then the header. */
void qcow2_amend_status(BlockDriverState *bs, int64_t offset, int64_t work)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2AmendProgress *p = s->amend_progress;
    int64_t current_work, projected;

    if (!p || p->total_ops <= 0) {
        return;
    }
    if (p->current != p->last) {
        if (p->last != QCOW2_AMEND_NONE) {
            p->offset_completed += p->last_work;
            p->ops_completed++;
        }
        p->last = p->current;
    }
    if (p->ops_completed >= p->total_ops) {
        return;
    }
    p->last_work = work;
    current_work = p->offset_completed + work;
    /* The operations not reached yet, at the size of those seen. */
    projected = current_work * (p->total_ops - p->ops_completed - 1) /
                (p->ops_completed + 1);
    bdrv_amend_progress(bs, p->offset_completed + offset,
                        current_work + projected);
}

static void qcow2_amend_begin(BDRVQcow2State *s, Qcow2AmendOp op)
{
    if (s->amend_progress) {
        s->amend_progress->current = op;
    }
}

static int coroutine_fn qcow2_upgrade(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    bool rewrite = false;
    int ret;

    qcow2_amend_status(bs, 0, 2);

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        rewrite |= s->snapshots[i].extra_data_size < 16;
    }
    if (rewrite) {
        ret = qcow2_write_snapshots(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to update the snapshot "
                             "table");
            return ret;
        }
    }
    qcow2_amend_status(bs, 1, 2);
    s->qcow_version = 3;
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        s->qcow_version = 2;
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    qcow2_amend_status(bs, 2, 2);
    return ret;
}

/* v3 -> v2: only when nothing v2 cannot express is left. */
static int coroutine_fn qcow2_downgrade(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (s->refcount_order != 4) {
        error_setg(errp, "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    if (qcow2_has_data_file(s)) {
        error_setg(errp, "Cannot downgrade an image with a data file");
        return -ENOTSUP;
    }
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].vm_state_size > UINT32_MAX ||
            s->snapshots[i].disk_size != s->size) {
            error_setg(errp, "Internal snapshots prevent downgrade of image");
            return -ENOTSUP;
        }
    }
    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        ret = qcow2_mark_clean(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to make the image clean");
            return ret;
        }
    }
    if (s->incompatible_features) {
        error_setg(errp, "Cannot downgrade an image with incompatible "
                   "features 0x%" PRIx64 " set", s->incompatible_features);
        return -ENOTSUP;
    }
    s->compatible_features = 0;
    s->autoclear_features = 0;
    /* Expanding allocates: refcounts before the entries from now on. */
    s->use_lazy_refcounts = false;
    table_cache_set_dependency(s->l2_cache, s->refcount_cache);
    ret = qcow2_expand_zero_clusters(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to turn zero into data "
                         "clusters");
        return ret;
    }
    s->qcow_version = 2;
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        s->qcow_version = 3;
        error_setg_errno(errp, -ret, "Failed to update the image header");
    }
    return ret;
}

/* lazy_refcounts on/off (off: the image is made clean first). */
static int coroutine_fn qcow2_amend_lazy(BlockDriverState *bs, bool on,
                                         int new_version, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (on && new_version < 3) {
        error_setg(errp, "Lazy refcounts only supported with compatibility "
                   "level 1.1 and above (use compat=1.1 or greater)");
        return -EINVAL;
    }
    if (!on) {
        ret = qcow2_mark_clean(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to make the image clean");
            return ret;
        }
        s->compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    } else {
        s->compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        s->compatible_features ^= QCOW2_COMPAT_LAZY_REFCOUNTS;
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    s->use_lazy_refcounts = on;
    table_cache_set_dependency(s->l2_cache, on ? NULL : s->refcount_cache);
    return 0;
}

static int coroutine_fn qcow2_amend_locked(BlockDriverState *bs,
                                           Qcow2Amend *a, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (a->new_version > s->qcow_version) {
        qcow2_amend_begin(s, QCOW2_AMEND_UPGRADE);
        ret = qcow2_upgrade(bs, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (a->refcount_bits != (uint64_t)s->refcount_bits) {
        if (a->new_version < 3 && a->refcount_bits != 16) {
            error_setg(errp, "Refcount widths other than 16 bits require "
                       "compatibility level 1.1 or above (use compat=1.1 or "
                       "greater)");
            return -EINVAL;
        }
        qcow2_amend_begin(s, QCOW2_AMEND_REFCOUNT_ORDER);
        ret = qcow2_change_refcount_order(bs, __builtin_ctzll(a->refcount_bits),
                                          errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (a->data_file_raw) {
        s->autoclear_features |= QCOW2_AUTOCLEAR_DATA_RAW;
    } else {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_DATA_RAW;
    }
    if (a->data_file) {
        /* The user names it here; refuse only what no later open could
         * follow (a network protocol needs --allow-header-protocols then). */
        if (*a->data_file &&
            !bdrv_header_name_storable("Data file", a->data_file, NULL,
                                       errp)) {
            return -EPERM;
        }
        g_free(s->image_data_file);
        s->image_data_file = *a->data_file ? g_strdup(a->data_file) : NULL;
    }
    ret = qcow2_update_header(bs);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    if ((a->has_backing_file &&
         g_strcmp0(a->backing_file, s->image_backing_file)) ||
        (a->has_backing_fmt &&
         g_strcmp0(a->backing_fmt, s->image_backing_format))) {
        error_setg(errp, "Cannot amend the backing file");
        error_append_hint(errp, "You can use 'qemu-img rebase' instead.\n");
        return -EINVAL;
    }
    if (a->lazy_refcounts != s->use_lazy_refcounts) {
        ret = qcow2_amend_lazy(bs, a->lazy_refcounts, a->new_version, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int coroutine_fn qcow2_amend_options(BlockDriverState *bs, QemuOpts *opts,
                                     bool force, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Amend a = { 0 };
    Qcow2AmendProgress progress = { 0 };
    int ret;

    ret = qcow2_amend_parse(bs, opts, &a, errp);
    if (ret < 0) {
        return ret;
    }
    /* QEMU counts a version change, a refcount width change and an
     * encryption update. */
    progress.total_ops = (a.new_version != s->qcow_version) +
                         (a.refcount_bits != (uint64_t)s->refcount_bits) +
                         a.crypto_update;
    s->amend_progress = &progress;
    qemu_co_mutex_lock(&s->lock);
    ret = qcow2_amend_locked(bs, &a, errp);
    qemu_co_mutex_unlock(&s->lock);
    if (ret >= 0 && a.new_size) {
        ret = qcow2_co_truncate(bs, a.new_size, true, PREALLOC_MODE_OFF,
                                errp);
        bdrv_refresh_total_bytes(bs);
    }
    if (ret >= 0 && a.crypto_update) {
        qcow2_amend_begin(s, QCOW2_AMEND_ENCRYPTION);
        ret = qcow2_crypto_amend(bs, opts, force, errp);
    }
    if (ret >= 0 && a.new_version < s->qcow_version) {
        qcow2_amend_begin(s, QCOW2_AMEND_DOWNGRADE);
        qemu_co_mutex_lock(&s->lock);
        ret = qcow2_downgrade(bs, errp);
        qemu_co_mutex_unlock(&s->lock);
    }
    s->amend_progress = NULL;
    return ret;
}
