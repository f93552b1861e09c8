/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Range locks for drivers that serialise their own work on ranges (add-cow
 * and FVD allocating writes, FVD copy-on-read): a list of held ranges, and
 * coroutines that overlap one wait on its queue until it is unlocked.
 */
#include "block_int.h"

BdrvRangeLock *bdrv_range_overlap(BdrvRangeLock *list, uint64_t start,
                                  uint64_t end)
{
    for (BdrvRangeLock *l = list; l; l = l->next) {
        if (l->start < end && start < l->end) {
            return l;
        }
    }
    return NULL;
}

bool coroutine_fn bdrv_range_wait(BdrvRangeLock *list, uint64_t start,
                                  uint64_t end, uint64_t *waits)
{
    BdrvRangeLock *l = bdrv_range_overlap(list, start, end);

    if (!l) {
        return false;
    }
    if (waits) {
        (*waits)++;
    }
    qemu_co_queue_wait(&l->waiters, NULL);
    return true;
}

void bdrv_range_lock(BdrvRangeLock **list, BdrvRangeLock *l, uint64_t start,
                     uint64_t end)
{
    l->start = start;
    l->end = end;
    qemu_co_queue_init(&l->waiters);
    l->next = *list;
    *list = l;
}

void bdrv_range_unlock(BdrvRangeLock **list, BdrvRangeLock *l)
{
    for (BdrvRangeLock **p = list; *p; p = &(*p)->next) {
        if (*p == l) {
            *p = l->next;
            break;
        }
    }
    qemu_co_queue_restart_all(&l->waiters);
}
