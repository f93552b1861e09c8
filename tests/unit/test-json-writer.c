/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for the --output=json writer: escaping, nesting, member order. */
#include "util/json-writer.h"

static char *quoted(const char *s)
{
    GString *out = g_string_new(NULL);

    json_quote(out, s);
    return g_string_free(out, FALSE);
}

static void check_quote(const char *in, const char *want)
{
    char *got = quoted(in);

    g_assert_cmpstr(got, ==, want);
    g_free(got);
}

static char *printed(JsonValue *v)
{
    GString *out = g_string_new(NULL);

    json_print(out, v, 0);
    json_free(v);
    return g_string_free(out, FALSE);
}

static void test_escaping(void)
{
    check_quote("", "\"\"");
    check_quote("plain name.qcow2", "\"plain name.qcow2\"");
    check_quote("a\"b\\c", "\"a\\\"b\\\\c\"");
    check_quote("\b\f\n\r\t", "\"\\b\\f\\n\\r\\t\"");
    /* other control characters and DEL as \uXXXX, upper-case hex */
    check_quote("\x01\x1f\x7f", "\"\\u0001\\u001F\\u007F\"");
    /* '/' is not escaped */
    check_quote("/tmp/x", "\"/tmp/x\"");
    /* non-ASCII as \uXXXX, beyond the BMP as a surrogate pair */
    check_quote("\xc3\xa9", "\"\\u00E9\"");
    check_quote("\xe2\x82\xac", "\"\\u20AC\"");
    check_quote("\xf0\x9f\x98\x80", "\"\\uD83D\\uDE00\"");
    /* invalid UTF-8: one U+FFFD per bad byte, then carry on */
    check_quote("a\xff" "b", "\"a\\uFFFDb\"");
    check_quote("\xc3", "\"\\uFFFD\"");
    check_quote("\xc3(", "\"\\uFFFD(\"");
}

static void test_scalars(void)
{
    JsonValue *arr = json_new(JSON_ARRAY);
    char *s;

    json_add_int(arr, NULL, INT64_MIN);
    json_add_int(arr, NULL, INT64_MAX);
    json_add_bool(arr, NULL, true);
    json_add_bool(arr, NULL, false);
    json_add_str(arr, NULL, "x");
    s = printed(arr);
    g_assert_cmpstr(s, ==, "[\n"
                    "    -9223372036854775808,\n"
                    "    9223372036854775807,\n"
                    "    true,\n"
                    "    false,\n"
                    "    \"x\"\n"
                    "]");
    g_free(s);
}

static void test_nesting(void)
{
    JsonValue *top = json_new(JSON_ARRAY);
    JsonValue *obj = json_new(JSON_OBJECT);
    JsonValue *inner = json_new(JSON_ARRAY);
    JsonValue *deep = json_new(JSON_OBJECT);
    char *s;

    json_add_int(deep, "n", 1);
    json_add(inner, NULL, deep);
    json_add(inner, NULL, json_new(JSON_ARRAY));
    json_add(obj, "list", inner);
    json_add(top, NULL, obj);
    s = printed(top);
    g_assert_cmpstr(s, ==, "[\n"
                    "    {\n"
                    "        \"list\": [\n"
                    "            {\n"
                    "                \"n\": 1\n"
                    "            },\n"
                    "            [\n"
                    "            ]\n"
                    "        ]\n"
                    "    }\n"
                    "]");
    g_free(s);
}

/* The order of qemu-img info's keys as QEMU 7.2 prints them. */
static void test_member_order(void)
{
    JsonValue *obj = json_new(JSON_OBJECT);
    char *s;

    json_add_int(obj, "virtual-size", 1048576);
    json_add_str(obj, "filename", "t.qcow2");
    json_add_int(obj, "cluster-size", 65536);
    json_add_str(obj, "format", "qcow2");
    json_add_int(obj, "actual-size", 200704);
    json_add_bool(obj, "dirty-flag", false);
    s = printed(obj);
    g_assert_cmpstr(s, ==, "{\n"
                    "    \"virtual-size\": 1048576,\n"
                    "    \"filename\": \"t.qcow2\",\n"
                    "    \"cluster-size\": 65536,\n"
                    "    \"format\": \"qcow2\",\n"
                    "    \"actual-size\": 200704,\n"
                    "    \"dirty-flag\": false\n"
                    "}");
    g_free(s);
}

static void test_empty_object(void)
{
    char *s = printed(json_new(JSON_OBJECT));

    g_assert_cmpstr(s, ==, "{\n}");
    g_free(s);
    json_free(NULL);
}

/* One line, as in json: filenames, members in QEMU's order. */
static void test_compact(void)
{
    JsonValue *obj = json_new(JSON_OBJECT);
    JsonValue *file = json_new(JSON_OBJECT);
    JsonValue *list = json_new(JSON_ARRAY);
    GString *out = g_string_new(NULL);

    json_add_str(file, "filename", "a \"b\".img");
    json_add_str(file, "driver", "file");
    json_add_int(list, NULL, -1);
    json_add_bool(list, NULL, true);
    json_add(list, NULL, json_new(JSON_ARRAY));
    json_add(list, NULL, json_new(JSON_OBJECT));
    json_add(obj, "file", file);
    json_add_str(obj, "driver", "qcow2");
    json_add(obj, "list", list);
    json_print_compact(out, obj);
    g_assert_cmpstr(out->str, ==, "{\"list\": [-1, true, [], {}], "
                    "\"driver\": \"qcow2\", \"file\": {\"driver\": \"file\", "
                    "\"filename\": \"a \\\"b\\\".img\"}}");
    g_string_free(out, TRUE);
    json_free(obj);
}

static JsonValue *bitmap_list(void)
{
    JsonValue *list = json_new(JSON_ARRAY);
    JsonValue *bm = json_new(JSON_OBJECT);
    JsonValue *flags = json_new(JSON_ARRAY);

    json_add_str(bm, "name", "b0");
    json_add_int(bm, "granularity", 65536);
    json_add_str(flags, NULL, "auto");
    json_add(bm, "flags", flags);
    json_add(list, NULL, bm);
    bm = json_new(JSON_OBJECT);
    json_add_str(bm, "name", "b-2");
    json_add_int(bm, "granularity", 512);
    json_add(bm, "flags", json_new(JSON_ARRAY));
    json_add(list, NULL, bm);
    return list;
}

static void test_copy(void)
{
    JsonValue *a = bitmap_list();
    JsonValue *b = json_copy(a);
    char *sa = printed(a), *sb = printed(b);

    g_assert_cmpstr(sa, ==, sb);
    g_free(sa);
    g_free(sb);
}

/* QEMU's human dump of qcow2's bitmaps (qemu-img info, qemu-io info). */
static void test_dump_human(void)
{
    JsonValue *obj = json_new(JSON_OBJECT);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    FILE *old = stdout;

    g_assert_nonnull(f);
    json_add(obj, "bitmaps", bitmap_list());
    json_add_bool(obj, "lazy-refcounts", false);
    fflush(stdout);
    stdout = f;
    json_dump_human(obj, 1);
    fflush(f);
    stdout = old;
    fclose(f);
    g_assert_cmpstr(out, ==,
                    "    lazy refcounts: false\n"
                    "    bitmaps:\n"
                    "        [0]:\n"
                    "            flags:\n"
                    "                [0]: auto\n"
                    "            name: b0\n"
                    "            granularity: 65536\n"
                    "        [1]:\n"
                    "            flags:\n"
                    "            name: b-2\n"
                    "            granularity: 512\n");
    free(out);
    json_free(obj);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/json-writer/escaping", test_escaping);
    g_test_add_func("/json-writer/scalars", test_scalars);
    g_test_add_func("/json-writer/nesting", test_nesting);
    g_test_add_func("/json-writer/member-order", test_member_order);
    g_test_add_func("/json-writer/empty-object", test_empty_object);
    g_test_add_func("/json-writer/compact", test_compact);
    g_test_add_func("/json-writer/copy", test_copy);
    g_test_add_func("/json-writer/dump-human", test_dump_human);
    return g_test_run();
}
