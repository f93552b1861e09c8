/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Aligned allocation helpers for O_DIRECT-capable buffers. */
#include "util/osdep.h"

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

void qemu_vfree(void *ptr)
{
    free(ptr);
}
