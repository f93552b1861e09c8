/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Aligned allocation helpers for O_DIRECT-capable buffers. */
#include "util/osdep.h"

#include <stdint.h>
#include <sys/mman.h>

void *qemu_memalign(size_t alignment, size_t size)
{
    void *ptr;
    int ret;

    if (alignment < sizeof(void *)) {
        alignment = sizeof(void *);
    }
    /* posix_memalign(0) may return NULL, which callers would take as OOM. */
    ret = posix_memalign(&ptr, alignment, size ? size : 1);
    if (ret != 0) {
        fprintf(stderr, "qemu_memalign: failed to allocate %zu bytes: %s\n",
                size, strerror(ret));
        abort();
    }
    return ptr;
}

void *qemu_blockalign(size_t size)
{
    return qemu_memalign(4096, size);
}

/*
 * From 1 MiB on, whole 2 MiB huge pages: an O_DIRECT request is split
 * into as many device requests as its buffer has physically separate
 * pieces over the device's limit (virtio-blk: 254 segments), so 1 MiB in
 * 4 KiB pages reaches the disk as two requests, from one huge page as one.
 * Without huge pages (THP off, fragmented memory) the buffer simply has
 * small pages.
 */
#define BLOCKALIGN_HUGE (2 * 1024 * 1024)

void *qemu_blockalign_huge(size_t size)
{
    if (size < BLOCKALIGN_HUGE / 2 || size > SIZE_MAX - BLOCKALIGN_HUGE) {
        return qemu_blockalign(size);
    }
    size_t len = (size + BLOCKALIGN_HUGE - 1) & ~(size_t)(BLOCKALIGN_HUGE - 1);
    void *ptr = qemu_memalign(BLOCKALIGN_HUGE, len);
#ifdef MADV_HUGEPAGE
    madvise(ptr, len, MADV_HUGEPAGE);   /* a hint: failure is harmless */
#endif
    return ptr;
}

void qemu_vfree(void *ptr)
{
    free(ptr);
}
