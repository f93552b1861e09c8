/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * add-cow on-disk structures (docs/specs/add-cow.txt is normative).
 *
 *   0          128                header_size       bitmap_offset
 *   +----------+-----------------+-----------------+--------------------+
 *   | fixed    | header          | padding (zero)  | bitmap: 1 bit per  |
 *   | header   | extension area: |                 | cluster, 1 = data  |
 *   |          | names           |                 | is in the raw image|
 *   +----------+-----------------+-----------------+--------------------+
 *
 * All fields are big-endian on disk. AddCowDiskHeader is in disk byte order,
 * AddCowHeader always in CPU order; add_cow_header_to_cpu/_to_disk convert.
 */
#ifndef BLOCK_ADD_COW_H
#define BLOCK_ADD_COW_H

#include "util/osdep.h"

#define ADD_COW_MAGIC               "ADD_COW\xff"
#define ADD_COW_VERSION             1
#define ADD_COW_FIXED_HEADER_SIZE   128
#define ADD_COW_PAGE_SIZE           4096
#define ADD_COW_MAX_HEADER_SIZE     (1 * MiB)
#define ADD_COW_MIN_CLUSTER_BITS    9
#define ADD_COW_MAX_CLUSTER_BITS    21
#define ADD_COW_DEFAULT_CLUSTER_BITS 16
/* Longest name: it must fit a PATH_MAX buffer with its NUL, or it would be
 * cut and name a different file. */
#define ADD_COW_MAX_NAME            4095
#define ADD_COW_MAX_FMT_NAME        31
/* Largest virtual size; sizes are whole 512-byte sectors. */
#define ADD_COW_MAX_SIZE            (INT64_C(1) << 62)
#define ADD_COW_SIZE_ALIGN          512

/* Feature bits: none defined in version 1. */
#define ADD_COW_INCOMPAT_MASK       UINT64_C(0)
#define ADD_COW_COMPAT_MASK         UINT64_C(0)
#define ADD_COW_AUTOCLEAR_MASK      UINT64_C(0)

typedef struct AddCowDiskHeader {
    uint8_t  magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint64_t size;
    uint32_t cluster_bits;
    uint32_t reserved0;
    uint64_t bitmap_offset;
    uint64_t bitmap_size;
    uint32_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t backing_fmt_offset;
    uint32_t backing_fmt_size;
    uint32_t image_file_offset;
    uint32_t image_file_size;
    uint8_t  reserved[32];
} QEMU_PACKED AddCowDiskHeader;

_Static_assert(sizeof(AddCowDiskHeader) == ADD_COW_FIXED_HEADER_SIZE,
               "add-cow fixed header is 128 bytes");
_Static_assert(offsetof(AddCowDiskHeader, size) == 40, "size at 40");
_Static_assert(offsetof(AddCowDiskHeader, cluster_bits) == 48,
               "cluster_bits at 48");
_Static_assert(offsetof(AddCowDiskHeader, bitmap_offset) == 56,
               "bitmap_offset at 56");
_Static_assert(offsetof(AddCowDiskHeader, backing_file_offset) == 72,
               "backing_file_offset at 72");
_Static_assert(offsetof(AddCowDiskHeader, image_file_offset) == 88,
               "image_file_offset at 88");
_Static_assert(offsetof(AddCowDiskHeader, reserved) == 96,
               "reserved at 96");

typedef struct AddCowHeader {
    uint32_t version;
    uint32_t header_size;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint64_t size;
    uint32_t cluster_bits;
    uint64_t bitmap_offset;
    uint64_t bitmap_size;
    uint32_t backing_file_offset, backing_file_size;
    uint32_t backing_fmt_offset, backing_fmt_size;
    uint32_t image_file_offset, image_file_size;
} AddCowHeader;

/* Returns false if the magic is wrong (other fields are still converted). */
bool add_cow_header_to_cpu(const AddCowDiskHeader *d, AddCowHeader *h);
void add_cow_header_to_disk(const AddCowHeader *h, AddCowDiskHeader *d);

#endif
