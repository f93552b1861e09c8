/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for QEMUIOVector and the iovec helpers. */
#include "util/iov.h"

/* A vector of pieces with sizes 1, 2, 3, ... over one pattern buffer. */
static void make_qiov(QEMUIOVector *q, unsigned char *buf, size_t total)
{
    size_t off = 0, len = 1;

    qemu_iovec_init(q, 1);
    while (off < total) {
        size_t n = MIN(len, total - off);

        qemu_iovec_add(q, buf + off, n);
        off += n;
        len++;
    }
}

static void test_to_from_buf(void)
{
    unsigned char src[100], dst[100], back[100];
    QEMUIOVector q;
    size_t i, off, len;

    for (i = 0; i < sizeof(src); i++) {
        src[i] = i + 1;
    }
    make_qiov(&q, dst, sizeof(dst));
    g_assert_cmpuint(q.size, ==, 100);
    g_assert_cmpuint(iov_size(q.iov, q.niov), ==, 100);
    for (off = 0; off <= 100; off += 7) {
        for (len = 0; len + off <= 100; len += 11) {
            memset(dst, 0, sizeof(dst));
            g_assert_cmpuint(qemu_iovec_from_buf(&q, off, src, len), ==, len);
            for (i = 0; i < 100; i++) {
                g_assert_cmpint(dst[i], ==,
                                (i >= off && i < off + len) ? src[i - off] : 0);
            }
            memset(back, 0xff, sizeof(back));
            g_assert_cmpuint(qemu_iovec_to_buf(&q, off, back, len), ==, len);
            g_assert(memcmp(back, src, len) == 0);
        }
    }
    /* Copies stop at the end of the vector. */
    g_assert_cmpuint(qemu_iovec_from_buf(&q, 90, src, 50), ==, 10);
    g_assert_cmpuint(qemu_iovec_to_buf(&q, 200, back, 5), ==, 0);
    qemu_iovec_destroy(&q);
}

static void test_memset_is_zero(void)
{
    unsigned char buf[64];
    QEMUIOVector q;

    memset(buf, 0, sizeof(buf));
    make_qiov(&q, buf, sizeof(buf));
    g_assert(qemu_iovec_is_zero(&q, 0, 64));
    g_assert_cmpuint(qemu_iovec_memset(&q, 10, 0xab, 20), ==, 20);
    g_assert_cmpint(buf[9], ==, 0);
    g_assert_cmpint(buf[10], ==, 0xab);
    g_assert_cmpint(buf[29], ==, 0xab);
    g_assert_cmpint(buf[30], ==, 0);
    g_assert(qemu_iovec_is_zero(&q, 0, 10));
    g_assert(!qemu_iovec_is_zero(&q, 0, 11));
    g_assert(!qemu_iovec_is_zero(&q, 29, 5));
    g_assert(qemu_iovec_is_zero(&q, 30, 34));
    qemu_iovec_destroy(&q);
}

static void test_buffer_is_zero(void)
{
    unsigned char *buf = g_malloc0(4096 + 16);
    size_t start, len, pos;

    for (start = 0; start < 9; start++) {
        for (len = 0; len < 80; len++) {
            g_assert(buffer_is_zero(buf + start, len));
            for (pos = 0; pos < len; pos++) {
                buf[start + pos] = 1;
                g_assert(!buffer_is_zero(buf + start, len));
                buf[start + pos] = 0;
            }
            /* Bytes just outside the range do not count. */
            buf[start + len] = 1;
            g_assert(buffer_is_zero(buf + start, len));
            buf[start + len] = 0;
        }
    }
    g_assert(buffer_is_zero(buf, 4096));
    buf[4095] = 0x80;
    g_assert(!buffer_is_zero(buf, 4096));
    g_free(buf);
}

static void test_slice_concat(void)
{
    unsigned char buf[50], out[50];
    QEMUIOVector q, slice, cat;
    size_t i, off, len;

    for (i = 0; i < sizeof(buf); i++) {
        buf[i] = i;
    }
    make_qiov(&q, buf, sizeof(buf));
    for (off = 0; off <= 50; off += 3) {
        for (len = 0; off + len <= 50; len += 5) {
            qemu_iovec_init_slice(&slice, &q, off, len);
            g_assert_cmpuint(slice.size, ==, len);
            g_assert_cmpuint(iov_size(slice.iov, slice.niov), ==, len);
            g_assert_cmpuint(qemu_iovec_to_buf(&slice, 0, out, len), ==, len);
            g_assert(memcmp(out, buf + off, len) == 0);
            qemu_iovec_destroy(&slice);
        }
    }

    /* Concatenating two windows of q gives the bytes in order. */
    qemu_iovec_init(&cat, 2);
    qemu_iovec_concat(&cat, &q, 40, 10);
    qemu_iovec_concat(&cat, &q, 3, 12);
    g_assert_cmpuint(cat.size, ==, 22);
    qemu_iovec_to_buf(&cat, 0, out, 22);
    g_assert(memcmp(out, buf + 40, 10) == 0);
    g_assert(memcmp(out + 10, buf + 3, 12) == 0);
    qemu_iovec_reset(&cat);
    g_assert_cmpuint(cat.size, ==, 0);
    g_assert_cmpint(cat.niov, ==, 0);
    qemu_iovec_destroy(&cat);
    qemu_iovec_destroy(&q);
}

static void test_init_buf_compare(void)
{
    unsigned char a[32], b[32];
    QEMUIOVector qa, qb;

    memset(a, 7, sizeof(a));
    memset(b, 7, sizeof(b));
    qemu_iovec_init_buf(&qa, a, sizeof(a));
    g_assert_cmpint(qa.nalloc, ==, -1);
    g_assert(qa.iov == &qa.local_iov);
    g_assert_cmpint(qa.niov, ==, 1);
    g_assert_cmpuint(qa.size, ==, 32);
    make_qiov(&qb, b, sizeof(b));
    g_assert_cmpint(qemu_iovec_compare(&qa, &qb), ==, -1);
    b[17] = 8;
    g_assert_cmpint(qemu_iovec_compare(&qa, &qb), ==, 17);
    a[3] = 0;
    g_assert_cmpint(qemu_iovec_compare(&qa, &qb), ==, 3);
    qemu_iovec_destroy(&qa);        /* no-op for a buffer vector */
    g_assert(qa.iov == &qa.local_iov);
    qemu_iovec_destroy(&qb);
}

static void test_plain_iov(void)
{
    char x[4] = "abcd", y[3] = "efg", out[8] = { 0 };
    struct iovec iov[2] = { { x, 4 }, { y, 3 } };

    g_assert_cmpuint(iov_size(iov, 2), ==, 7);
    g_assert_cmpuint(iov_to_buf(iov, 2, 2, out, 4), ==, 4);
    g_assert(memcmp(out, "cdef", 4) == 0);
    g_assert_cmpuint(iov_memset(iov, 2, 3, '-', 10), ==, 4);
    g_assert(memcmp(x, "abc-", 4) == 0 && memcmp(y, "---", 3) == 0);
    g_assert_cmpuint(iov_from_buf(iov, 2, 1, "XYZ", 3), ==, 3);
    g_assert(memcmp(x, "aXYZ", 4) == 0);
}

int main(int argc, char **argv)
{
    test_to_from_buf();
    test_memset_is_zero();
    test_buffer_is_zero();
    test_slice_concat();
    test_init_buf_compare();
    test_plain_iov();
    printf("PASS test-iov\n");
    return 0;
}
