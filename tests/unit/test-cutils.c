/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for size/number parsing, size_to_str, paths and errors. */
#include "util/cutils.h"
#include "util/error.h"

static void sz_ok(const char *s, uint64_t expected)
{
    uint64_t v = 0;
    int ret = qemu_strtosz(s, NULL, &v);

    if (ret != 0 || v != expected) {
        fprintf(stderr, "qemu_strtosz(\"%s\") = %d, %" PRIu64
                " (expected %" PRIu64 ")\n", s, ret, v, expected);
        abort();
    }
}

static void sz_err(const char *s, int expected)
{
    uint64_t v = 0;
    int ret = qemu_strtosz(s, NULL, &v);

    if (ret != expected) {
        fprintf(stderr, "qemu_strtosz(\"%s\") = %d (expected %d)\n", s, ret,
                expected);
        abort();
    }
}

static void test_strtosz(void)
{
    const char *end;
    uint64_t v;

    sz_ok("0", 0);
    sz_ok("12345", 12345);
    sz_ok("1b", 1);
    sz_ok("1B", 1);
    sz_ok("1k", 1024);
    sz_ok("1K", 1024);
    sz_ok("1m", MiB);
    sz_ok("1M", MiB);
    sz_ok("2g", 2 * GiB);
    sz_ok("1T", TiB);
    sz_ok("1p", PiB);
    sz_ok("1E", EiB);
    sz_ok("1.5G", 3 * GiB / 2);
    sz_ok("1.5k", 1536);
    sz_ok("1.k", 1024);
    sz_ok("1.0", 1);
    sz_ok("1.0b", 1);
    sz_ok("0x10", 16);
    sz_ok("0x10k", 16 * KiB);
    sz_ok("010", 10);
    sz_ok(" 1k", 1024);
    sz_ok("15E", 15 * (uint64_t)EiB);
    sz_ok("18446744073709551615", UINT64_MAX);

    sz_err("", -EINVAL);
    sz_err("k", -EINVAL);
    sz_err("1.5", -EINVAL);
    sz_err("1.5b", -EINVAL);
    sz_err(".5k", -EINVAL);
    sz_err("-1", -EINVAL);
    sz_err(" -1k", -EINVAL);
    sz_err("1kb", -EINVAL);
    sz_err("1Q", -EINVAL);
    sz_err("1e3", -EINVAL);
    sz_err("0x1.8k", -EINVAL);
    sz_err("16E", -ERANGE);
    sz_err("18446744073709551616", -ERANGE);

    g_assert_cmpint(qemu_strtosz("12kXYZ", &end, &v), ==, 0);
    g_assert_cmpuint(v, ==, 12 * KiB);
    g_assert_cmpstr(end, ==, "XYZ");
    g_assert_cmpint(qemu_strtosz("abc", &end, &v), ==, -EINVAL);

    g_assert_cmpint(qemu_strtosz_unit("4", NULL, MiB, &v), ==, 0);
    g_assert_cmpuint(v, ==, 4 * MiB);
    g_assert_cmpint(qemu_strtosz_unit("4k", NULL, MiB, &v), ==, 0);
    g_assert_cmpuint(v, ==, 4 * KiB);
    g_assert_cmpint(qemu_strtosz_unit("1.5", NULL, MiB, &v), ==, 0);
    g_assert_cmpuint(v, ==, 3 * MiB / 2);
}

static void test_strtoint(void)
{
    const char *end;
    int64_t i64;
    uint64_t u64;
    int i;

    g_assert_cmpint(qemu_strtoi64("-42", NULL, 10, &i64), ==, 0);
    g_assert_cmpint(i64, ==, -42);
    g_assert_cmpint(qemu_strtoi64("0x1f", NULL, 0, &i64), ==, 0);
    g_assert_cmpint(i64, ==, 31);
    g_assert_cmpint(qemu_strtoi64("", NULL, 0, &i64), ==, -EINVAL);
    g_assert_cmpint(qemu_strtoi64("12a", NULL, 0, &i64), ==, -EINVAL);
    g_assert_cmpint(qemu_strtoi64("12a", &end, 0, &i64), ==, 0);
    g_assert_cmpstr(end, ==, "a");
    g_assert_cmpint(qemu_strtoi64("9223372036854775808", NULL, 0, &i64), ==,
                    -ERANGE);
    g_assert_cmpint(qemu_strtoi64(NULL, NULL, 0, &i64), ==, -EINVAL);

    g_assert_cmpint(qemu_strtou64("18446744073709551615", NULL, 0, &u64), ==,
                    0);
    g_assert_cmpuint(u64, ==, UINT64_MAX);
    g_assert_cmpint(qemu_strtou64("18446744073709551616", NULL, 0, &u64), ==,
                    -ERANGE);
    g_assert_cmpint(qemu_strtou64("-1", NULL, 0, &u64), ==, -EINVAL);
    g_assert_cmpint(qemu_strtou64("x", &end, 0, &u64), ==, -EINVAL);

    g_assert_cmpint(qemu_strtoi("2147483647", NULL, 10, &i), ==, 0);
    g_assert_cmpint(i, ==, INT_MAX);
    g_assert_cmpint(qemu_strtoi("2147483648", NULL, 10, &i), ==, -ERANGE);
    g_assert_cmpint(qemu_strtoi("-2147483649", NULL, 10, &i), ==, -ERANGE);
    g_assert_cmpint(qemu_strtoi("7 ", NULL, 10, &i), ==, -EINVAL);
}

static void str_is(uint64_t val, const char *expected)
{
    char *s = size_to_str(val);

    g_assert_cmpstr(s, ==, expected);
    g_free(s);
}

static void test_size_to_str(void)
{
    str_is(0, "0 B");
    str_is(1, "1 B");
    str_is(512, "512 B");
    str_is(999, "999 B");
    str_is(1000, "0.977 KiB");
    str_is(1024, "1 KiB");
    str_is(1536, "1.5 KiB");
    str_is(65536, "64 KiB");
    str_is(MiB, "1 MiB");
    str_is(10 * GiB, "10 GiB");
    str_is(TiB + TiB / 2, "1.5 TiB");
    str_is(EiB, "1 EiB");
    str_is(UINT64_MAX, "16 EiB");
}

static void path_is(const char *base, const char *name, const char *expected)
{
    char *p = path_combine(base, name);

    g_assert_cmpstr(p, ==, expected);
    g_free(p);
}

static void test_paths(void)
{
    char buf[8];
    const char *rest;

    path_is("/a/b/c.img", "d.img", "/a/b/d.img");
    path_is("/a/b/c.img", "../d.img", "/a/b/../d.img");
    path_is("c.img", "d.img", "d.img");
    path_is("dir/c.img", "d.img", "dir/d.img");
    path_is("/a/c.img", "/abs/d.img", "/abs/d.img");
    path_is("/a/c.img", "nbd:host:10809", "nbd:host:10809");
    path_is("file:/a/b/c.img", "d.img", "file:/a/b/d.img");
    path_is("file:c.img", "d.img", "file:d.img");
    path_is("/a/c.img", "sub/x:y", "/a/sub/x:y");
    g_assert(path_is_absolute("/x"));
    g_assert(!path_is_absolute("x"));

    pstrcpy(buf, sizeof(buf), "abcdefghij");
    g_assert_cmpstr(buf, ==, "abcdefg");
    pstrcpy(buf, sizeof(buf), "ab");
    g_assert_cmpstr(buf, ==, "ab");
    g_assert(strstart("nbd:foo", "nbd:", &rest));
    g_assert_cmpstr(rest, ==, "foo");
    g_assert(!strstart("nb", "nbd:", &rest));
    g_assert(strstart("x", "", NULL));
}

static void test_fdatasync(void)
{
    char path[] = "/tmp/test-cutils-XXXXXX";
    int fd = mkstemp(path);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(write(fd, "x", 1), ==, 1);
    g_assert_cmpint(qemu_fdatasync(fd), ==, 0);
    close(fd);
    unlink(path);
    g_assert_cmpint(qemu_fdatasync(-1), ==, -EBADF);
}

static void test_errors(void)
{
    Error *err = NULL, *local = NULL, *copy;

    error_set_progname("/usr/bin/qemu-img");
    g_assert_cmpstr(error_get_progname(), ==, "qemu-img");

    error_setg(&err, "Could not open '%s'", "x.img");
    error_prepend(&err, "%s: ", "x.img");
    g_assert_cmpstr(error_get_pretty(err), ==,
                    "x.img: Could not open 'x.img'");
    copy = error_copy(err);
    error_free(err);
    g_assert_cmpstr(error_get_pretty(copy), ==,
                    "x.img: Could not open 'x.img'");
    error_free(copy);

    err = NULL;
    error_setg_errno(&local, ENOENT, "Could not open '%s'", "y");
    g_assert_cmpstr(error_get_pretty(local), ==,
                    "Could not open 'y': No such file or directory");
    error_propagate(&err, local);
    g_assert(err == local);
    error_propagate(NULL, NULL);
    error_setg(NULL, "discarded");
    error_prepend(NULL, "x");
    error_free(err);
}

int main(int argc, char **argv)
{
    test_strtosz();
    test_strtoint();
    test_size_to_str();
    test_paths();
    test_fdatasync();
    test_errors();
    printf("PASS test-cutils\n");
    return 0;
}
