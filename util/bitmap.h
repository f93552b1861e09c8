/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Bit arrays in unsigned longs, bit 0 is the LSB of word 0. */
#ifndef QEMU_BITMAP_H
#define QEMU_BITMAP_H

#include "util/osdep.h"

#define BITS_PER_LONG (sizeof(unsigned long) * 8)
#define BITS_TO_LONGS(nr) DIV_ROUND_UP(nr, BITS_PER_LONG)
#define BIT_WORD(nr) ((nr) / BITS_PER_LONG)
#define BIT_MASK(nr) (1UL << ((nr) % BITS_PER_LONG))

unsigned long *bitmap_new(uint64_t nbits);      /* zeroed; g_free */
void bitmap_set(unsigned long *map, uint64_t start, uint64_t nr);
void bitmap_clear(unsigned long *map, uint64_t start, uint64_t nr);
bool bitmap_empty(const unsigned long *map, uint64_t nbits);
bool bitmap_full(const unsigned long *map, uint64_t nbits);
uint64_t bitmap_count_one(const unsigned long *map, uint64_t nbits);
/* First set (zero) bit at or after offset, or size if none. */
uint64_t find_next_bit(const unsigned long *map, uint64_t size,
                       uint64_t offset);
uint64_t find_next_zero_bit(const unsigned long *map, uint64_t size,
                            uint64_t offset);

static inline void set_bit(uint64_t nr, unsigned long *map)
{
    map[BIT_WORD(nr)] |= BIT_MASK(nr);
}
static inline void clear_bit(uint64_t nr, unsigned long *map)
{
    map[BIT_WORD(nr)] &= ~BIT_MASK(nr);
}
static inline bool test_bit(uint64_t nr, const unsigned long *map)
{
    return (map[BIT_WORD(nr)] & BIT_MASK(nr)) != 0;
}

#endif
