/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * quorum: N children holding the same data (QEMU's driver=quorum, options
 * only). Writes go to every child and succeed when vote-threshold of them
 * do; reads in the quorum pattern read every child and return the content
 * that at least vote-threshold children agree on (else EIO), optionally
 * rewriting the children that disagreed (rewrite-corrupted=on); the fifo
 * pattern reads the first child that answers. blkverify=on (two children,
 * threshold 2) stops the process at the first difference, as QEMU's does.
 *
 * Options: children.N.* (N = 0.., one child each, at least one),
 * vote-threshold (1..N, required), blkverify, rewrite-corrupted,
 * read-pattern=quorum|fifo.
 */
#include "block_int.h"

typedef enum QuorumReadPattern {
    QUORUM_READ_PATTERN_QUORUM,
    QUORUM_READ_PATTERN_FIFO,
} QuorumReadPattern;

typedef struct BDRVQuorumState {
    int threshold;
    bool blkverify;
    bool rewrite_corrupted;
    QuorumReadPattern read_pattern;
} BDRVQuorumState;

/* One request of the quorum node, fanned out to every child. */
typedef struct QuorumReq {
    BlockDriverState *bs;
    Coroutine *co;              /* the request's own coroutine */
    int64_t offset, bytes;
    QEMUIOVector *qiov;         /* the caller's (writes: NULL for zeroes) */
    size_t qiov_offset;
    BdrvRequestFlags flags;
    unsigned done;              /* children finished */
    int *ret;                   /* per child */
    uint8_t **buf;              /* reads: per child, bytes long */
} QuorumReq;

typedef struct QuorumChildCo {
    QuorumReq *req;
    unsigned idx;
} QuorumChildCo;

static const QemuOptDesc quorum_open_opts[] = {
    { "vote-threshold", QEMU_OPT_NUMBER,
      "The number of vote needed for reaching quorum" },
    { "blkverify", QEMU_OPT_BOOL, "Trigger block verify mode if set" },
    { "rewrite-corrupted", QEMU_OPT_BOOL,
      "Rewrite corrupted block on read quorum" },
    { "read-pattern", QEMU_OPT_STRING,
      "Allowed pattern: quorum, fifo. Quorum is default" },
    { NULL }
};

static const char *const quorum_child_prefixes[] = { "children", NULL };

/*
 * How many children.N entries options hold (QEMU's array rule: 0..N-1
 * without a gap, nothing else under "children."), or -1.
 */
static int quorum_count_children(QemuOpts *options)
{
    size_t total = 0, counted = 0;
    int n = 0;

    if (!options) {
        return 0;
    }
    for (size_t i = 0; i < qemu_opts_count(options); i++) {
        const char *name, *value;

        qemu_opts_nth(options, i, &name, &value);
        total += g_str_has_prefix(name, "children.");
    }
    for (;; n++) {
        g_autofree char *key = g_strdup_printf("children.%d", n);
        size_t len = strlen(key), here = 0;

        for (size_t i = 0; i < qemu_opts_count(options); i++) {
            const char *name, *value;

            qemu_opts_nth(options, i, &name, &value);
            if (!strncmp(name, key, len) &&
                (name[len] == '\0' || name[len] == '.')) {
                here++;
            }
        }
        if (!here) {
            break;
        }
        counted += here;
    }
    return counted == total ? n : -1;
}

static int quorum_parse_opts(BDRVQuorumState *s, QemuOpts *options,
                             int nb_children, Error **errp)
{
    const char *pattern = qemu_opt_get(options, "read-pattern");
    const char *t = qemu_opt_get(options, "vote-threshold");
    uint64_t threshold = t ? qemu_opt_get_number(options, "vote-threshold", 0)
                           : 0;

    if (threshold < 1) {
        error_setg(errp, "Parameter 'vote-threshold' expects a value >= 1");
        return -ERANGE;
    }
    if (threshold > (uint64_t)nb_children) {
        error_setg(errp, "threshold may not exceed children count");
        return -ERANGE;
    }
    s->threshold = (int)threshold;
    if (!pattern || !strcmp(pattern, "quorum")) {
        s->read_pattern = QUORUM_READ_PATTERN_QUORUM;
    } else if (!strcmp(pattern, "fifo")) {
        s->read_pattern = QUORUM_READ_PATTERN_FIFO;
    } else {
        error_setg(errp, "Please set read-pattern as fifo or quorum");
        return -EINVAL;
    }
    /* As QEMU: the fifo pattern ignores both (it never votes). */
    if (s->read_pattern == QUORUM_READ_PATTERN_QUORUM) {
        s->blkverify = qemu_opt_get_bool(options, "blkverify", false);
        if (s->blkverify && (nb_children != 2 || s->threshold != 2)) {
            error_setg(errp, "blkverify=on can only be set if there are "
                       "exactly two files and vote-threshold is 2");
            return -EINVAL;
        }
        s->rewrite_corrupted = qemu_opt_get_bool(options, "rewrite-corrupted",
                                                 false);
        if (s->rewrite_corrupted && s->blkverify) {
            error_setg(errp, "rewrite-corrupted=on cannot be used with "
                       "blkverify=on");
            return -EINVAL;
        }
    }
    return 0;
}

static void quorum_drop_children(BlockDriverState *bs)
{
    for (unsigned i = 0; i < bs->nb_children; i++) {
        bdrv_unref(bs->children[i]);
    }
    g_free(bs->children);
    bs->children = NULL;
    bs->nb_children = 0;
}

static int coroutine_fn quorum_open(BlockDriverState *bs, QemuOpts *options,
                                    int flags, Error **errp)
{
    BDRVQuorumState *s = bs->opaque;
    int n = quorum_count_children(options);
    int ret;

    if (n < 0) {
        error_setg(errp, "Option children is not a valid array");
        return -EINVAL;
    }
    if (n < 1) {
        error_setg(errp, "Number of provided children must be 1 or more");
        return -EINVAL;
    }
    ret = quorum_parse_opts(s, options, n, errp);
    if (ret < 0) {
        return ret;
    }
    bs->children = g_new0(BlockDriverState *, n);
    for (int i = 0; i < n; i++) {
        g_autofree char *key = g_strdup_printf("children.%d", i);
        QemuOpts *copy = qemu_opts_clone(options);
        QemuOpts *child_opts = qemu_opts_extract_prefix(copy, key);
        const char *ref = qemu_opt_get(options, key);
        BlockDriverState *child = NULL;

        if (ref) {
            /* QEMU's reference to another node by name: we have none. */
            error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                       ref, ref);
        } else {
            child = bdrv_open_child(NULL, NULL, child_opts, flags, true,
                                    errp);
        }
        qemu_opts_del(child_opts);
        qemu_opts_del(copy);
        if (!child) {
            quorum_drop_children(bs);
            return -EINVAL;
        }
        bs->children[bs->nb_children++] = child;
    }
    return 0;
}

static void coroutine_fn quorum_close(BlockDriverState *bs)
{
    /* The layer drops bs->children after this. */
    (void)bs;
}

/*
 * A read holds one buffer per child: requests are split at this size so
 * that what a read allocates stays bounded (N x 64 MiB).
 */
#define QUORUM_MAX_TRANSFER (64 * 1024 * 1024)

static void quorum_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    bs->bl.max_transfer = QUORUM_MAX_TRANSFER;
    for (unsigned i = 0; i < bs->nb_children; i++) {
        const BlockLimits *c = &bs->children[i]->bl;

        bs->bl.min_mem_alignment = MAX(bs->bl.min_mem_alignment,
                                       c->min_mem_alignment);
        if (c->max_transfer && c->max_transfer < bs->bl.max_transfer) {
            bs->bl.max_transfer = c->max_transfer;
        }
    }
}

/* All children must be as long as each other (QEMU: EIO otherwise). */
static int64_t quorum_getlength(BlockDriverState *bs)
{
    int64_t len = -ENOMEDIUM;

    for (unsigned i = 0; i < bs->nb_children; i++) {
        int64_t l = bdrv_getlength(bs->children[i]);

        if (l < 0) {
            return l;
        }
        if (i > 0 && l != len) {
            return -EIO;
        }
        len = l;
    }
    return len;
}

/*
 * What the children may do and share: what the user holds (writing too
 * when corrupted copies are rewritten), and never a resize or write by
 * others, which would make the children differ (QEMU's rule).
 */
static void quorum_child_perm(BlockDriverState *bs, uint64_t perm,
                              uint64_t shared, uint64_t *nperm,
                              uint64_t *nshared)
{
    BDRVQuorumState *s = bs->opaque;

    *nperm = perm;
    if (s->rewrite_corrupted && (bs->open_flags & BDRV_O_RDWR)) {
        *nperm |= BLK_PERM_WRITE;
    }
    *nshared = (shared & (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED))
               | BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
}

/* ---- fanning a request out ---- */

static QuorumReq *quorum_req_new(BlockDriverState *bs, int64_t offset,
                                 int64_t bytes, QEMUIOVector *qiov,
                                 size_t qiov_offset, BdrvRequestFlags flags)
{
    QuorumReq *r = g_new0(QuorumReq, 1);

    r->bs = bs;
    r->co = qemu_coroutine_self();
    r->offset = offset;
    r->bytes = bytes;
    r->qiov = qiov;
    r->qiov_offset = qiov_offset;
    r->flags = flags;
    r->ret = g_new0(int, bs->nb_children);
    r->buf = g_new0(uint8_t *, bs->nb_children);
    return r;
}

static void quorum_req_free(QuorumReq *r)
{
    for (unsigned i = 0; i < r->bs->nb_children; i++) {
        qemu_vfree(r->buf[i]);
    }
    g_free(r->buf);
    g_free(r->ret);
    g_free(r);
}

static void coroutine_fn quorum_child_entry(void *opaque)
{
    QuorumChildCo *c = opaque;
    QuorumReq *r = c->req;
    BlockDriverState *child = r->bs->children[c->idx];
    unsigned i = c->idx;

    if (r->buf[i]) {
        r->ret[i] = bdrv_co_pread(child, r->offset, r->bytes, r->buf[i], 0);
    } else if (!r->qiov) {
        r->ret[i] = bdrv_co_pwrite_zeroes(child, r->offset, r->bytes,
                                          r->flags);
    } else {
        r->ret[i] = bdrv_co_pwritev_part(child, r->offset, r->bytes, r->qiov,
                                         r->qiov_offset, r->flags);
    }
    if (++r->done == r->bs->nb_children) {
        qemu_coroutine_enter_if_inactive(r->co);
    }
}

/* Run the request on every child at once; returns when all are done. */
static void coroutine_fn quorum_fan_out(QuorumReq *r)
{
    unsigned n = r->bs->nb_children;
    QuorumChildCo *cos = g_new(QuorumChildCo, n);

    for (unsigned i = 0; i < n; i++) {
        cos[i] = (QuorumChildCo) { .req = r, .idx = i };
        qemu_coroutine_enter(qemu_coroutine_create(quorum_child_entry,
                                                   &cos[i]));
    }
    while (r->done < n) {
        qemu_coroutine_yield();
    }
    g_free(cos);
}

/*
 * The error most children returned (QEMU's vote on errors: a tie goes to
 * the error seen last). 0 if none failed.
 */
static int quorum_vote_error(const int *ret, unsigned n)
{
    int best = 0;
    unsigned best_votes = 0;

    for (unsigned i = 0; i < n; i++) {
        unsigned votes = 0;
        bool first = true;

        if (!ret[i]) {
            continue;
        }
        for (unsigned j = 0; j < n; j++) {
            if (ret[j] == ret[i]) {
                first &= j >= i;
                votes++;
            }
        }
        if (first && votes >= best_votes) {
            best = ret[i];
            best_votes = votes;
        }
    }
    return best;
}

static unsigned quorum_successes(const int *ret, unsigned n)
{
    unsigned ok = 0;

    for (unsigned i = 0; i < n; i++) {
        ok += ret[i] == 0;
    }
    return ok;
}

/* ---- reads ---- */

/* blkverify=on: the two children must read alike, or the process stops. */
static void quorum_blkverify(QuorumReq *r)
{
    for (int64_t k = 0; k < r->bytes; k++) {
        if (r->buf[0][k] != r->buf[1][k]) {
            fprintf(stderr, "quorum: offset=%" PRId64 " bytes=%" PRId64
                    " contents mismatch at offset %" PRId64 "\n",
                    r->offset, r->bytes, r->offset + k);
            /* QEMU's exit(1), without running exit handlers in the middle
             * of a request (the tool's output so far is kept). */
            fflush(NULL);
            _exit(1);
        }
    }
}

/*
 * Group the children that read successfully by content: version[i] is
 * the first child with the same data as child i (-1: i failed). Returns
 * the child leading the version with most votes (a tie goes to the
 * version found last, as QEMU's) and its votes.
 */
static int quorum_vote(QuorumReq *r, int *version, unsigned *votes)
{
    unsigned n = r->bs->nb_children;
    int winner = -1;

    *votes = 0;
    for (unsigned i = 0; i < n; i++) {
        version[i] = -1;
        if (r->ret[i]) {
            continue;
        }
        version[i] = (int)i;
        for (unsigned j = 0; j < i; j++) {
            if (version[j] == (int)j &&
                !memcmp(r->buf[i], r->buf[j], r->bytes)) {
                version[i] = (int)j;
                break;
            }
        }
    }
    for (unsigned i = 0; i < n; i++) {
        unsigned count = 0;

        if (version[i] != (int)i) {
            continue;
        }
        for (unsigned j = i; j < n; j++) {
            count += version[j] == (int)i;
        }
        if (count >= *votes) {
            winner = (int)i;
            *votes = count;
        }
    }
    return winner;
}

/* Write the winning content over every child that read something else. */
static void coroutine_fn quorum_rewrite(QuorumReq *r, const int *version,
                                        int winner)
{
    for (unsigned i = 0; i < r->bs->nb_children; i++) {
        if (version[i] >= 0 && version[i] != winner) {
            /* A correction attempt: its failure changes nothing. */
            bdrv_co_pwrite(r->bs->children[i], r->offset, r->bytes,
                           r->buf[winner], 0);
        }
    }
}

static int coroutine_fn quorum_read_all(QuorumReq *r)
{
    BDRVQuorumState *s = r->bs->opaque;
    unsigned n = r->bs->nb_children;
    g_autofree int *version = g_new(int, n);
    unsigned votes;
    int winner;

    for (unsigned i = 0; i < n; i++) {
        r->buf[i] = qemu_blockalign(r->bytes);
    }
    quorum_fan_out(r);
    if (quorum_successes(r->ret, n) < (unsigned)s->threshold) {
        return quorum_vote_error(r->ret, n);
    }
    if (s->blkverify) {
        quorum_blkverify(r);
    }
    winner = quorum_vote(r, version, &votes);
    if (votes < (unsigned)s->threshold) {
        return -EIO;
    }
    qemu_iovec_from_buf(r->qiov, r->qiov_offset, r->buf[winner], r->bytes);
    if (s->rewrite_corrupted) {
        quorum_rewrite(r, version, winner);
    }
    return 0;
}

/* fifo: the children in order until one reads. */
static int coroutine_fn quorum_read_fifo(QuorumReq *r)
{
    int ret = -EIO;

    for (unsigned i = 0; i < r->bs->nb_children; i++) {
        ret = bdrv_co_preadv_part(r->bs->children[i], r->offset, r->bytes,
                                  r->qiov, r->qiov_offset, 0);
        if (ret >= 0) {
            break;
        }
    }
    return ret;
}

static int coroutine_fn quorum_co_preadv(BlockDriverState *bs, int64_t offset,
                                         int64_t bytes, QEMUIOVector *qiov,
                                         size_t qiov_offset,
                                         BdrvRequestFlags flags)
{
    BDRVQuorumState *s = bs->opaque;
    QuorumReq *r = quorum_req_new(bs, offset, bytes, qiov, qiov_offset, 0);
    int ret;

    (void)flags;
    if (s->read_pattern == QUORUM_READ_PATTERN_QUORUM) {
        ret = quorum_read_all(r);
    } else {
        ret = quorum_read_fifo(r);
    }
    quorum_req_free(r);
    return ret;
}

/* ---- writes ---- */

static int coroutine_fn quorum_write(BlockDriverState *bs, int64_t offset,
                                     int64_t bytes, QEMUIOVector *qiov,
                                     size_t qiov_offset,
                                     BdrvRequestFlags flags)
{
    BDRVQuorumState *s = bs->opaque;
    QuorumReq *r = quorum_req_new(bs, offset, bytes, qiov, qiov_offset,
                                  flags);
    int ret = 0;

    quorum_fan_out(r);
    if (quorum_successes(r->ret, bs->nb_children) < (unsigned)s->threshold) {
        ret = quorum_vote_error(r->ret, bs->nb_children);
    }
    quorum_req_free(r);
    return ret;
}

static int coroutine_fn quorum_co_pwritev(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          QEMUIOVector *qiov,
                                          size_t qiov_offset,
                                          BdrvRequestFlags flags)
{
    return quorum_write(bs, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn quorum_co_pwrite_zeroes(BlockDriverState *bs,
                                                int64_t offset, int64_t bytes,
                                                BdrvRequestFlags flags)
{
    return quorum_write(bs, offset, bytes, NULL, 0, flags);
}

/* Every child; succeeds when vote-threshold children did. */
static int coroutine_fn quorum_co_flush(BlockDriverState *bs)
{
    BDRVQuorumState *s = bs->opaque;
    g_autofree int *ret = g_new0(int, bs->nb_children);

    for (unsigned i = 0; i < bs->nb_children; i++) {
        ret[i] = bdrv_co_flush(bs->children[i]);
    }
    if (quorum_successes(ret, bs->nb_children) >= (unsigned)s->threshold) {
        return 0;
    }
    return quorum_vote_error(ret, bs->nb_children);
}

/*
 * Zero only where every child says so (the shortest such run); data
 * otherwise (the longest data run). A failing child makes it all data.
 */
static int coroutine_fn quorum_co_block_status(BlockDriverState *bs,
                                               bool want_zero, int64_t offset,
                                               int64_t bytes, int64_t *pnum,
                                               int64_t *map,
                                               BlockDriverState **file)
{
    int64_t pnum_zero = bytes, pnum_data = 0;

    (void)want_zero;
    (void)map;
    (void)file;
    for (unsigned i = 0; i < bs->nb_children; i++) {
        int64_t n = 0;
        int ret = bdrv_co_block_status_above(bs->children[i], NULL, offset,
                                             bytes, &n, NULL, NULL, NULL);

        if (ret < 0 || n <= 0) {
            pnum_data = bytes;
            break;
        }
        if (ret & BDRV_BLOCK_ZERO) {
            pnum_zero = MIN(pnum_zero, n);
        } else {
            pnum_data = MAX(pnum_data, n);
        }
    }
    if (pnum_data) {
        *pnum = MIN(pnum_data, bytes);
        return BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    }
    *pnum = pnum_zero;
    return BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
}

/* As QEMU's: a quorum is never reopened (its children would have to be
 * reopened alike); the whole reopen fails and nothing changes. */
static int quorum_reopen_prepare(BdrvReopenState *state, Error **errp)
{
    BlockDriverState *bs = state->bs;

    if (bs->node_name) {
        error_setg(errp, "Block format 'quorum' used by node '%s' does not "
                   "support reopening files", bs->node_name);
    } else {
        error_setg(errp, "Block format 'quorum' does not support reopening "
                   "files");
    }
    return -ENOTSUP;
}

/* Its children may live in different directories: none is the node's
 * (QEMU's answer, whatever the children are). */
static char *quorum_dirname(BlockDriverState *bs, Error **errp)
{
    (void)bs;
    error_setg(errp, "Cannot generate a base directory for quorum nodes");
    return NULL;
}

static const char *const quorum_strong_opts[] = {
    "vote-threshold", "blkverify", "rewrite-corrupted", "read-pattern", NULL
};

static BlockDriver bdrv_quorum = {
    .format_name            = "quorum",
    .instance_size          = sizeof(BDRVQuorumState),
    .own_children           = true,
    .filename_optional      = true,
    .open_opts              = quorum_open_opts,
    .child_prefixes         = quorum_child_prefixes,
    .strong_opts            = quorum_strong_opts,
    .bdrv_dirname           = quorum_dirname,

    .bdrv_open              = quorum_open,
    .bdrv_close             = quorum_close,
    .bdrv_refresh_limits    = quorum_refresh_limits,
    .bdrv_getlength         = quorum_getlength,
    .bdrv_file_perm         = quorum_child_perm,
    .bdrv_reopen_prepare    = quorum_reopen_prepare,

    .bdrv_co_preadv         = quorum_co_preadv,
    .bdrv_co_pwritev        = quorum_co_pwritev,
    .bdrv_co_pwrite_zeroes  = quorum_co_pwrite_zeroes,
    .bdrv_co_flush          = quorum_co_flush,
    .bdrv_co_block_status   = quorum_co_block_status,

    .supported_write_flags  = BDRV_REQ_FUA,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA,
};

BLOCK_DRIVER_REGISTER(bdrv_quorum)
