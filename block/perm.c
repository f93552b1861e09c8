/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Permissions of the nodes of a graph: what each node's users hold and share
 * (QEMU's rules for which a format asks of its children), applied to the
 * whole graph in two phases so that protocols can turn them into image locks
 * (docs/locking.md). Kept apart from graph management so that the user layer
 * (block-backend) can take it over.
 */
#include "block_int.h"

/* A node's cumulative permissions while an update is computed. */
typedef struct PermEntry {
    BlockDriverState *bs;
    uint64_t perm, shared;
    bool checked;               /* bdrv_check_perm passed: set or abort due */
} PermEntry;

typedef struct PermUpdate {
    GPtrArray *entries;         /* of PermEntry *, in first-visit order */
    bool drop;                  /* every node holds and forbids nothing */
} PermUpdate;

/* Deep enough for BACKING_CHAIN_MAX images with their files. */
#define PERM_MAX_DEPTH 256

char *bdrv_perm_names(uint64_t perm)
{
    static const char *const names[] = {
        "consistent read", "write", "write unchanged", "resize",
    };
    GString *s = g_string_new(NULL);

    for (unsigned i = 0; i < ARRAY_SIZE(names); i++) {
        if (perm & (1ULL << i)) {
            g_string_append_printf(s, "%s%s", s->len ? ", " : "", names[i]);
        }
    }
    return g_string_free(s, FALSE);
}

void bdrv_default_child_perm(BlockDriverState *bs, BdrvChildRole role,
                             uint64_t perm, uint64_t shared,
                             uint64_t *nperm, uint64_t *nshared)
{
    if (role & BDRV_CHILD_COW) {
        /* Backing images are only read; they may change under a parent
         * that tolerates changing data (one that shares write). */
        *nperm = perm & BLK_PERM_CONSISTENT_READ;
        *nshared = (shared & BLK_PERM_WRITE ? BLK_PERM_WRITE |
                    BLK_PERM_RESIZE : 0) |
                   BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
        return;
    }
    /* What the parent holds passes through; unchanged writes are fine. */
    perm &= BLK_PERM_ALL;
    shared = (shared & BLK_PERM_ALL) | BLK_PERM_WRITE_UNCHANGED;
    if (role & BDRV_CHILD_METADATA) {
        /* The format writes metadata whenever it is writable, and nobody
         * else may write or resize what it has cached. */
        if (bs->open_flags & BDRV_O_RDWR) {
            perm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
        }
        if (!(bs->open_flags & BDRV_O_NO_IO)) {
            perm |= BLK_PERM_CONSISTENT_READ;
        }
        shared &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
    if (role & BDRV_CHILD_DATA) {
        /* Sizes are in the metadata; copy-on-write rewrites data. */
        shared &= ~BLK_PERM_RESIZE;
        if (perm & BLK_PERM_WRITE_UNCHANGED) {
            perm |= BLK_PERM_WRITE;
        }
        if (perm & BLK_PERM_WRITE) {
            perm |= BLK_PERM_RESIZE;
        }
    }
    *nperm = perm;
    *nshared = shared;
}

/* What bs holding (perm, shared) asks of bs->file. */
static void bdrv_file_child_perm(BlockDriverState *bs, uint64_t perm,
                                 uint64_t shared, uint64_t *nperm,
                                 uint64_t *nshared)
{
    if (bs->drv->bdrv_file_perm) {
        bs->drv->bdrv_file_perm(bs, perm, shared, nperm, nshared);
    } else {
        bdrv_default_child_perm(bs, bs->drv->is_filter ? BDRV_CHILD_FILTERED
                                : BDRV_CHILD_METADATA | BDRV_CHILD_DATA,
                                perm, shared, nperm, nshared);
    }
}

void bdrv_user_perm(int flags, uint64_t *perm, uint64_t *shared)
{
    *perm = 0;
    if (!(flags & BDRV_O_NO_IO)) {
        *perm |= BLK_PERM_CONSISTENT_READ;
        if (flags & BDRV_O_RDWR) {
            *perm |= BLK_PERM_WRITE;
        }
    }
    if (flags & BDRV_O_RESIZE) {
        *perm |= BLK_PERM_RESIZE;
    }
    *shared = flags & BDRV_O_NO_SHARE
              ? BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED
              : BLK_PERM_ALL;
}

/* ---- one update over a graph ---- */

static PermEntry *perm_entry(PermUpdate *u, BlockDriverState *bs)
{
    for (guint i = 0; i < u->entries->len; i++) {
        PermEntry *e = g_ptr_array_index(u->entries, i);
        if (e->bs == bs) {
            return e;
        }
    }
    PermEntry *e = g_new0(PermEntry, 1);
    e->bs = bs;
    e->shared = BLK_PERM_ALL;
    g_ptr_array_add(u->entries, e);
    return e;
}

static void perm_collect(PermUpdate *u, BlockDriverState *bs, uint64_t perm,
                         uint64_t shared, bool force_share, int depth);

/* Add child's share of what bs holds, as role (or bs->file if file). */
static void perm_collect_child(PermUpdate *u, BlockDriverState *bs,
                               BlockDriverState *child, bool is_file,
                               BdrvChildRole role, uint64_t perm,
                               uint64_t shared, bool force_share, int depth)
{
    uint64_t nperm = 0, nshared = BLK_PERM_ALL;

    if (!child) {
        return;
    }
    if (!u->drop) {
        if (is_file) {
            bdrv_file_child_perm(bs, perm, shared, &nperm, &nshared);
        } else {
            bdrv_default_child_perm(bs, role, perm, shared, &nperm, &nshared);
        }
    }
    /* -U / force-share=on: the user accepts any other user below. */
    if (force_share || (child->open_flags & BDRV_O_FORCE_SHARE)) {
        nshared = BLK_PERM_ALL;
    }
    perm_collect(u, child, nperm, nshared, force_share, depth + 1);
}

static void perm_collect(PermUpdate *u, BlockDriverState *bs, uint64_t perm,
                         uint64_t shared, bool force_share, int depth)
{
    PermEntry *e;

    assert(depth < PERM_MAX_DEPTH);
    e = perm_entry(u, bs);
    /* A node with several parents holds what any of them needs. */
    e->perm |= perm;
    e->shared &= shared;
    force_share |= !!(bs->open_flags & BDRV_O_FORCE_SHARE);
    perm_collect_child(u, bs, bs->file, true, 0, e->perm, e->shared,
                       force_share, depth);
    perm_collect_child(u, bs, bs->data_file, false, BDRV_CHILD_DATA, e->perm,
                       e->shared, force_share, depth);
    perm_collect_child(u, bs, bs->backing, false, BDRV_CHILD_COW, e->perm,
                       e->shared, force_share, depth);
    for (unsigned i = 0; i < bs->nb_children; i++) {
        perm_collect_child(u, bs, bs->children[i], true, 0, e->perm,
                           e->shared, force_share, depth);
    }
}

/* Check every node in visit order; on a failure, abort those checked. */
static int perm_check(PermUpdate *u, Error **errp)
{
    for (guint i = 0; i < u->entries->len; i++) {
        PermEntry *e = g_ptr_array_index(u->entries, i);
        BlockDriver *drv = e->bs->drv;
        int ret;

        if (!drv->bdrv_check_perm) {
            continue;
        }
        ret = drv->bdrv_check_perm(e->bs, e->perm, e->shared, errp);
        if (ret < 0) {
            for (guint j = 0; j < i; j++) {
                PermEntry *c = g_ptr_array_index(u->entries, j);
                if (c->checked) {
                    c->bs->drv->bdrv_abort_perm_update(c->bs);
                }
            }
            return ret;
        }
        e->checked = true;
    }
    return 0;
}

static void perm_commit(PermUpdate *u)
{
    for (guint i = 0; i < u->entries->len; i++) {
        PermEntry *e = g_ptr_array_index(u->entries, i);

        if (e->checked) {
            e->bs->drv->bdrv_set_perm(e->bs, e->perm, e->shared);
        }
        e->bs->perm = e->perm;
        e->bs->shared_perm = e->shared;
    }
}

static int perm_update(BlockDriverState *bs, uint64_t perm, uint64_t shared,
                       bool drop, Error **errp)
{
    PermUpdate u = { .entries = g_ptr_array_new_with_free_func(g_free),
                     .drop = drop };
    int ret;

    perm_collect(&u, bs, drop ? 0 : perm, drop ? BLK_PERM_ALL : shared,
                 false, 0);
    ret = perm_check(&u, errp);
    if (ret >= 0) {
        perm_commit(&u);
    }
    g_ptr_array_free(u.entries, TRUE);
    return ret;
}

int bdrv_set_perm(BlockDriverState *bs, uint64_t perm, uint64_t shared,
                  Error **errp)
{
    return perm_update(bs, perm, shared, false, errp);
}

int bdrv_attach_file_perm(BlockDriverState *bs, Error **errp)
{
    uint64_t perm, shared;

    /* bs has no users yet: it asks only what its format needs. */
    bdrv_file_child_perm(bs, 0, BLK_PERM_ALL, &perm, &shared);
    if (bs->open_flags & BDRV_O_FORCE_SHARE) {
        shared = BLK_PERM_ALL;
    }
    return bdrv_set_perm(bs->file, perm, shared, errp);
}

int bdrv_attach_data_file_perm(BlockDriverState *bs, BlockDriverState *data,
                               Error **errp)
{
    uint64_t perm, shared;

    bdrv_default_child_perm(bs, BDRV_CHILD_DATA, bs->perm, bs->shared_perm,
                            &perm, &shared);
    if (bs->open_flags & BDRV_O_FORCE_SHARE) {
        shared = BLK_PERM_ALL;
    }
    return bdrv_set_perm(data, perm, shared, errp);
}

void bdrv_drop_perms(BlockDriverState *bs)
{
    /* Only releases locks: a check that drops permissions cannot fail. */
    int ret = perm_update(bs, 0, BLK_PERM_ALL, true, NULL);
    assert(ret >= 0);
}

int bdrv_restore_perms(BlockDriverState *bs, Error **errp)
{
    return bdrv_set_perm(bs, bs->user_perm, bs->user_shared, errp);
}
