/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Bit array operations working a word at a time. */
#include "util/bitmap.h"

/* Mask of bits [start % BPL, BPL) in a word / bits [0, end % BPL). */
#define FIRST_WORD_MASK(start) (~0UL << ((start) % BITS_PER_LONG))
#define LAST_WORD_MASK(nbits) (~0UL >> (-(nbits) & (BITS_PER_LONG - 1)))

unsigned long *bitmap_new(uint64_t nbits)
{
    return g_new0(unsigned long, BITS_TO_LONGS(nbits));
}

void bitmap_set(unsigned long *map, uint64_t start, uint64_t nr)
{
    unsigned long *p = map + BIT_WORD(start);
    uint64_t end = start + nr;
    unsigned long mask = FIRST_WORD_MASK(start);

    if (nr == 0) {
        return;
    }
    if (BIT_WORD(start) == BIT_WORD(end - 1)) {
        *p |= mask & LAST_WORD_MASK(end);
        return;
    }
    *p++ |= mask;
    for (start = QEMU_ALIGN_UP(start + 1, BITS_PER_LONG);
         start + BITS_PER_LONG <= end; start += BITS_PER_LONG) {
        *p++ = ~0UL;
    }
    if (start < end) {
        *p |= LAST_WORD_MASK(end);
    }
}

void bitmap_clear(unsigned long *map, uint64_t start, uint64_t nr)
{
    unsigned long *p = map + BIT_WORD(start);
    uint64_t end = start + nr;
    unsigned long mask = FIRST_WORD_MASK(start);

    if (nr == 0) {
        return;
    }
    if (BIT_WORD(start) == BIT_WORD(end - 1)) {
        *p &= ~(mask & LAST_WORD_MASK(end));
        return;
    }
    *p++ &= ~mask;
    for (start = QEMU_ALIGN_UP(start + 1, BITS_PER_LONG);
         start + BITS_PER_LONG <= end; start += BITS_PER_LONG) {
        *p++ = 0;
    }
    if (start < end) {
        *p &= ~LAST_WORD_MASK(end);
    }
}

bool bitmap_empty(const unsigned long *map, uint64_t nbits)
{
    uint64_t i, full = nbits / BITS_PER_LONG;

    for (i = 0; i < full; i++) {
        if (map[i]) {
            return false;
        }
    }
    if (nbits % BITS_PER_LONG) {
        return (map[full] & LAST_WORD_MASK(nbits)) == 0;
    }
    return true;
}

bool bitmap_full(const unsigned long *map, uint64_t nbits)
{
    uint64_t i, full = nbits / BITS_PER_LONG;

    for (i = 0; i < full; i++) {
        if (~map[i]) {
            return false;
        }
    }
    if (nbits % BITS_PER_LONG) {
        return (~map[full] & LAST_WORD_MASK(nbits)) == 0;
    }
    return true;
}

uint64_t bitmap_count_one(const unsigned long *map, uint64_t nbits)
{
    uint64_t i, count = 0, full = nbits / BITS_PER_LONG;

    for (i = 0; i < full; i++) {
        count += __builtin_popcountl(map[i]);
    }
    if (nbits % BITS_PER_LONG) {
        count += __builtin_popcountl(map[full] & LAST_WORD_MASK(nbits));
    }
    return count;
}

/* invert is 0 to look for set bits, ~0UL to look for clear bits. */
static uint64_t find_next(const unsigned long *map, uint64_t size,
                          uint64_t offset, unsigned long invert)
{
    uint64_t idx, nwords;
    unsigned long w;

    if (offset >= size) {
        return size;
    }
    idx = BIT_WORD(offset);
    nwords = BITS_TO_LONGS(size);
    w = (map[idx] ^ invert) & FIRST_WORD_MASK(offset);
    while (!w) {
        if (++idx >= nwords) {
            return size;
        }
        w = map[idx] ^ invert;
    }
    offset = idx * BITS_PER_LONG + __builtin_ctzl(w);
    return MIN(offset, size);
}

uint64_t find_next_bit(const unsigned long *map, uint64_t size,
                       uint64_t offset)
{
    return find_next(map, size, offset, 0);
}

uint64_t find_next_zero_bit(const unsigned long *map, uint64_t size,
                            uint64_t offset)
{
    return find_next(map, size, offset, ~0UL);
}
