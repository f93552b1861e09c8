/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for the bitmap helpers, checked against a bit-by-bit model. */
#include "util/bitmap.h"

#define NBITS 300

static bool model[NBITS];

static void check(const unsigned long *map)
{
    uint64_t i, count = 0, next;
    bool empty = true, full = true;

    for (i = 0; i < NBITS; i++) {
        g_assert_cmpint(test_bit(i, map), ==, model[i]);
        count += model[i];
        empty &= !model[i];
        full &= model[i];
    }
    g_assert_cmpuint(bitmap_count_one(map, NBITS), ==, count);
    g_assert_cmpint(bitmap_empty(map, NBITS), ==, empty);
    g_assert_cmpint(bitmap_full(map, NBITS), ==, full);
    for (i = 0; i <= NBITS; i++) {
        for (next = i; next < NBITS && !model[next]; next++) {
        }
        g_assert_cmpuint(find_next_bit(map, NBITS, i), ==, next);
        for (next = i; next < NBITS && model[next]; next++) {
        }
        g_assert_cmpuint(find_next_zero_bit(map, NBITS, i), ==, next);
    }
}

static void model_range(uint64_t start, uint64_t nr, bool v)
{
    uint64_t i;

    for (i = start; i < start + nr; i++) {
        model[i] = v;
    }
}

static void test_ranges(void)
{
    unsigned long *map = bitmap_new(NBITS);
    static const uint64_t starts[] = { 0, 1, 5, 63, 64, 65, 127, 128, 200 };
    static const uint64_t lens[] = { 0, 1, 2, 62, 63, 64, 65, 100, 129 };
    size_t i, j;

    check(map);
    for (i = 0; i < ARRAY_SIZE(starts); i++) {
        for (j = 0; j < ARRAY_SIZE(lens); j++) {
            uint64_t s = starts[i], n = MIN(lens[j], NBITS - s);

            bitmap_set(map, s, n);
            model_range(s, n, true);
            check(map);
            bitmap_clear(map, s + n / 3, n / 2);
            model_range(s + n / 3, n / 2, false);
            check(map);
        }
    }
    bitmap_set(map, 0, NBITS);
    model_range(0, NBITS, true);
    check(map);
    bitmap_clear(map, 0, NBITS);
    model_range(0, NBITS, false);
    check(map);
    g_free(map);
}

static void test_single_bits(void)
{
    unsigned long *map = bitmap_new(NBITS);
    static const uint64_t bits[] = { 0, 63, 64, 127, 128, 255, 256, 299 };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(bits); i++) {
        set_bit(bits[i], map);
        model[bits[i]] = true;
        check(map);
    }
    for (i = 0; i < ARRAY_SIZE(bits); i += 2) {
        clear_bit(bits[i], map);
        model[bits[i]] = false;
        check(map);
    }
    g_free(map);
    memset(model, 0, sizeof(model));
}

/* Bits beyond nbits in the last word must not leak into the answers. */
static void test_tail_bits(void)
{
    unsigned long map[2] = { 0, ~0UL << 6 };   /* bits 70.. set */

    g_assert(bitmap_empty(map, 70));
    g_assert_cmpuint(find_next_bit(map, 70, 0), ==, 70);
    g_assert_cmpuint(find_next_bit(map, 71, 0), ==, 70);
    g_assert_cmpuint(bitmap_count_one(map, 72), ==, 2);
    map[0] = ~0UL;
    map[1] = 0x3;
    g_assert(bitmap_full(map, 66));
    g_assert(!bitmap_full(map, 67));
    g_assert_cmpuint(find_next_zero_bit(map, 66, 0), ==, 66);
}

int main(int argc, char **argv)
{
    test_ranges();
    test_single_bits();
    test_tail_bits();
    printf("PASS test-bitmap\n");
    return 0;
}
