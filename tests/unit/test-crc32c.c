/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of CRC-32C: the standard check value, known vectors from
 * RFC 3720 (iSCSI) appendix B.4, and equality of the sliced and the
 * byte-wise paths for every length and alignment.
 */
#include "util/crc32c.h"

/* Reference: one bit at a time. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t len)
{
    uint32_t crc = ~0u;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0);
        }
    }
    return ~crc;
}

static void test_vectors(void)
{
    uint8_t buf[48];

    g_assert_cmphex(crc32c(0, "123456789", 9), ==, 0xE3069283u);
    memset(buf, 0, 32);
    g_assert_cmphex(crc32c(0, buf, 32), ==, 0x8A9136AAu);
    memset(buf, 0xff, 32);
    g_assert_cmphex(crc32c(0, buf, 32), ==, 0x62A8AB43u);
    for (int i = 0; i < 32; i++) {
        buf[i] = i;
    }
    g_assert_cmphex(crc32c(0, buf, 32), ==, 0x46DD794Eu);
    for (int i = 0; i < 32; i++) {
        buf[i] = 31 - i;
    }
    g_assert_cmphex(crc32c(0, buf, 32), ==, 0x113FDB5Cu);
}

static void test_lengths_and_chaining(void)
{
    uint8_t buf[600];
    GRand *rng = g_rand_new_with_seed(42);

    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = g_rand_int_range(rng, 0, 256);
    }
    for (size_t start = 0; start < 9; start++) {
        for (size_t len = 0; start + len <= sizeof(buf); len += 7) {
            uint32_t want = crc32c_bitwise(buf + start, len);
            g_assert_cmphex(crc32c(0, buf + start, len), ==, want);
            /* Split anywhere: chaining gives the same result. */
            size_t cut = len / 3;
            uint32_t c = crc32c(0, buf + start, cut);
            g_assert_cmphex(crc32c(c, buf + start + cut, len - cut), ==, want);
        }
    }
    g_rand_free(rng);
}

int main(int argc, char **argv)
{
    test_vectors();
    test_lengths_and_chaining();
    printf("PASS test-crc32c\n");
    return 0;
}
