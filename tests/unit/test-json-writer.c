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

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/json-writer/escaping", test_escaping);
    g_test_add_func("/json-writer/scalars", test_scalars);
    g_test_add_func("/json-writer/nesting", test_nesting);
    g_test_add_func("/json-writer/member-order", test_member_order);
    g_test_add_func("/json-writer/empty-object", test_empty_object);
    return g_test_run();
}
