/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Common includes and small helpers every file of the project may use. */
#ifndef QEMU_OSDEP_H
#define QEMU_OSDEP_H

#include "config-host.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <glib.h>

/* Marks functions that may only be called from coroutine context. */
#define coroutine_fn

#ifndef MIN
#define MIN(a, b) (((a) < (b)) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) (((a) > (b)) ? (a) : (b))
#endif
#define MIN_NON_ZERO(a, b) \
    ((a) == 0 ? (b) : ((b) == 0 ? (a) : MIN(a, b)))

#define QEMU_ALIGN_DOWN(n, m) ((n) / (m) * (m))
#define QEMU_ALIGN_UP(n, m) QEMU_ALIGN_DOWN((n) + (m) - 1, (m))
#define QEMU_IS_ALIGNED(n, m) (((n) % (m)) == 0)
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define ROUND_UP(n, d) QEMU_ALIGN_UP(n, d)

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(x) (sizeof(x) / sizeof((x)[0]))
#endif

#ifndef container_of
#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))
#endif

#define QEMU_PACKED __attribute__((packed))
#define QEMU_NORETURN __attribute__((noreturn))
#define QEMU_WARN_UNUSED_RESULT __attribute__((warn_unused_result))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define KiB (INT64_C(1) << 10)
#define MiB (INT64_C(1) << 20)
#define GiB (INT64_C(1) << 30)
#define TiB (INT64_C(1) << 40)
#define PiB (INT64_C(1) << 50)
#define EiB (INT64_C(1) << 60)

#define BDRV_SECTOR_BITS 9
#define BDRV_SECTOR_SIZE (1ULL << BDRV_SECTOR_BITS)

/* Byte order helpers for on-disk structures (explicit, never implicit). */
static inline uint16_t be16_to_cpu(uint16_t v) { return GUINT16_FROM_BE(v); }
static inline uint32_t be32_to_cpu(uint32_t v) { return GUINT32_FROM_BE(v); }
static inline uint64_t be64_to_cpu(uint64_t v) { return GUINT64_FROM_BE(v); }
static inline uint16_t cpu_to_be16(uint16_t v) { return GUINT16_TO_BE(v); }
static inline uint32_t cpu_to_be32(uint32_t v) { return GUINT32_TO_BE(v); }
static inline uint64_t cpu_to_be64(uint64_t v) { return GUINT64_TO_BE(v); }
static inline uint16_t le16_to_cpu(uint16_t v) { return GUINT16_FROM_LE(v); }
static inline uint32_t le32_to_cpu(uint32_t v) { return GUINT32_FROM_LE(v); }
static inline uint64_t le64_to_cpu(uint64_t v) { return GUINT64_FROM_LE(v); }
static inline uint16_t cpu_to_le16(uint16_t v) { return GUINT16_TO_LE(v); }
static inline uint32_t cpu_to_le32(uint32_t v) { return GUINT32_TO_LE(v); }
static inline uint64_t cpu_to_le64(uint64_t v) { return GUINT64_TO_LE(v); }

/* Aligned buffer allocation (suitable for O_DIRECT); free with qemu_vfree. */
void *qemu_memalign(size_t alignment, size_t size);
void *qemu_blockalign(size_t size);          /* 4096-aligned */
/*
 * The same for a long-lived I/O buffer (a command's, not a request's):
 * from 1 MiB on rounded up to 2 MiB huge pages, so that a large O_DIRECT
 * request is one device request (fewer, larger segments).
 */
void *qemu_blockalign_huge(size_t size);
void qemu_vfree(void *ptr);

#endif
