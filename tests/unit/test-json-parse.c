/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for the JSON parser of json: image names and its flattening. */
#include "util/json-parse.h"

static JsonNode *parse_ok(const char *text)
{
    Error *err = NULL;
    JsonNode *node = json_parse(text, &err);

    if (!node) {
        g_printerr("%s: %s\n", text, error_get_pretty(err));
    }
    g_assert(node && !err);
    return node;
}

static void parse_fails(const char *text, const char *msg)
{
    Error *err = NULL;

    g_assert_null(json_parse(text, &err));
    g_assert_nonnull(err);
    g_assert_cmpstr(error_get_pretty(err), ==, msg);
    error_free(err);
}

/* Flatten text and return "k=v " pairs in order. */
static char *flat(const char *text, QemuOpts *opts)
{
    JsonNode *node = parse_ok(text);
    GString *out = g_string_new(NULL);
    Error *err = NULL;

    g_assert_cmpint(json_flatten_into_opts(node, opts, &err), ==, 0);
    for (size_t i = 0; i < qemu_opts_count(opts); i++) {
        const char *name, *value;
        qemu_opts_nth(opts, i, &name, &value);
        g_string_append_printf(out, "%s=%s ", name, value);
    }
    json_node_free(node);
    return g_string_free(out, FALSE);
}

static void test_values(void)
{
    JsonNode *n = parse_ok(" {\"a\": 'x\\'y', 'b': [1, -0, 1e3, 1.5, "
                           "18446744073709551615, true, false, null], "
                           "\"c\": {}, \"d\": \"\\u00e9\\ud83d\\ude00\"} ");
    JsonNode *b;

    g_assert_cmpint(n->type, ==, JSON_NODE_OBJECT);
    g_assert_cmpuint(n->children->len, ==, 4);
    g_assert_cmpstr(((JsonNode *)n->children->pdata[0])->text, ==, "x'y");
    b = n->children->pdata[1];
    g_assert_cmpint(b->type, ==, JSON_NODE_ARRAY);
    g_assert_cmpstr(((JsonNode *)b->children->pdata[0])->text, ==, "1");
    g_assert_cmpstr(((JsonNode *)b->children->pdata[1])->text, ==, "0");
    g_assert_cmpstr(((JsonNode *)b->children->pdata[2])->text, ==, "1000");
    g_assert_cmpstr(((JsonNode *)b->children->pdata[3])->text, ==, "1.5");
    g_assert_cmpstr(((JsonNode *)b->children->pdata[4])->text, ==,
                    "18446744073709551615");
    g_assert_true(((JsonNode *)b->children->pdata[5])->boolean);
    g_assert_cmpint(((JsonNode *)b->children->pdata[7])->type, ==,
                    JSON_NODE_NULL);
    g_assert_cmpstr(((JsonNode *)n->children->pdata[3])->text, ==,
                    "\xc3\xa9\xf0\x9f\x98\x80");
    json_node_free(n);
}

/* QEMU's messages, as qemu-img prints them after "Could not parse the
 * JSON options: ". */
static void test_errors(void)
{
    parse_fails("{", "JSON parse error, premature EOI");
    parse_fails("{\"driver\":}", "JSON parse error, expecting value");
    parse_fails("{\"a\" 1}", "JSON parse error, missing : in object pair");
    parse_fails("{'a':1,}", "JSON parse error, expecting value");
    parse_fails("{1:2}", "JSON parse error, key is not a string in object");
    parse_fails("[1,]", "JSON parse error, expecting value");
    parse_fails("{\"a\":1,\"a\":2}", "JSON parse error, duplicate key");
    parse_fails("{} x", "Expecting at most one JSON value");
    parse_fails("{\"a\":1 \"b\":2}", "JSON parse error, expected separator "
                "in dict");
    parse_fails("{\"a\":nope}", "JSON parse error, invalid keyword 'nope'");
    parse_fails("{\"a\":\"\\u0000\"}", "JSON parse error, \\u0000 is not "
                "supported");
    parse_fails("{\"a\":\"\\x\"}", "JSON parse error, invalid escape "
                "sequence in string");
    parse_fails("\"\x01\"", "JSON parse error, stray control character in "
                "string");
    parse_fails("\"\xff\"", "JSON parse error, invalid UTF-8 sequence in "
                "string");
    parse_fails("", "Expecting a JSON value");
    parse_fails("01", "Expecting at most one JSON value");
}

/* Deep nesting is refused, not followed down the (coroutine) stack. */
static void test_nesting_limit(void)
{
    GString *s = g_string_new(NULL);

    for (int i = 0; i < JSON_MAX_NESTING; i++) {
        g_string_append(s, "[");
    }
    for (int i = 0; i < JSON_MAX_NESTING; i++) {
        g_string_append(s, "]");
    }
    json_node_free(parse_ok(s->str));
    g_string_prepend(s, "[");
    g_string_append(s, "]");
    parse_fails(s->str, "JSON nesting depth limit exceeded");
    g_string_free(s, TRUE);
}

static void test_flatten(void)
{
    QemuOpts *opts = qemu_opts_new();
    char *s;

    s = flat("{\"driver\":\"raw\", \"offset\": 512, \"x\": null, "
             "\"file\": {\"driver\": \"file\", \"filename\": \"a,b\", "
             "\"locking\": false}, \"list\": [\"p\", {\"q\": true}]}", opts);
    g_assert_cmpstr(s, ==, "driver=raw offset=512 file.driver=file "
                    "file.filename=a,b file.locking=off list.0=p "
                    "list.1.q=on ");
    g_free(s);
    qemu_opts_del(opts);

    /* Options given beside the name win. */
    opts = qemu_opts_new();
    qemu_opt_set(opts, "offset", "1024");
    s = flat("{\"offset\": 512, \"size\": \"1k\"}", opts);
    g_assert_cmpstr(s, ==, "offset=1024 size=1k ");
    g_free(s);
    qemu_opts_del(opts);

    /* "backing": null (QEMU's "no backing file") is an empty "backing". */
    opts = qemu_opts_new();
    s = flat("{\"backing\": null, \"file\": {\"backing\": null}}", opts);
    g_assert_cmpstr(s, ==, "backing= file.backing= ");
    g_free(s);
    qemu_opts_del(opts);
}

/* What each value was in the JSON is kept (for printing names back),
 * through clones and prefix extraction. */
static void test_flatten_types(void)
{
    QemuOpts *opts = qemu_opts_new(), *copy, *file;
    char *s;

    s = flat("{\"driver\": \"raw\", \"offset\": 512, "
             "\"file\": {\"locking\": false, \"filename\": \"5\"}}", opts);
    g_free(s);
    qemu_opt_set(opts, "size", "1024");
    copy = qemu_opts_clone(opts);
    g_assert_cmpint(qemu_opts_nth_json(copy, 0), ==, QEMU_OPT_JSON_STRING);
    g_assert_cmpint(qemu_opts_nth_json(copy, 1), ==, QEMU_OPT_JSON_NUMBER);
    g_assert_cmpint(qemu_opts_nth_json(copy, 4), ==, QEMU_OPT_JSON_STRING);
    file = qemu_opts_extract_prefix(copy, "file");
    g_assert_cmpint(qemu_opts_count(file), ==, 2);
    g_assert_cmpint(qemu_opts_nth_json(file, 0), ==, QEMU_OPT_JSON_BOOL);
    g_assert_cmpint(qemu_opts_nth_json(file, 1), ==, QEMU_OPT_JSON_STRING);
    /* A value set again is a string. */
    qemu_opt_set(copy, "offset", "4096");
    g_assert_cmpint(qemu_opts_nth_json(copy, 1), ==, QEMU_OPT_JSON_STRING);
    qemu_opts_del(file);
    qemu_opts_del(copy);
    qemu_opts_del(opts);
}

static void test_flatten_conflict(void)
{
    QemuOpts *opts = qemu_opts_new();
    JsonNode *n = parse_ok("{\"file\": {\"filename\": \"a\"}, "
                           "\"file.filename\": \"b\"}");
    Error *err = NULL;

    g_assert_cmpint(json_flatten_into_opts(n, opts, &err), <, 0);
    g_assert_cmpstr(error_get_pretty(err), ==,
                    "JSON options name 'file.filename' twice");
    error_free(err);
    json_node_free(n);
    qemu_opts_del(opts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/json/values", test_values);
    g_test_add_func("/json/errors", test_errors);
    g_test_add_func("/json/nesting-limit", test_nesting_limit);
    g_test_add_func("/json/flatten", test_flatten);
    g_test_add_func("/json/flatten-types", test_flatten_types);
    g_test_add_func("/json/flatten-conflict", test_flatten_conflict);
    return g_test_run();
}
