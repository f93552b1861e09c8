/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A recursive-descent JSON parser accepting QEMU's dialect (single-quoted
 * strings too), with QEMU's error messages, and the flattening of objects
 * into QemuOpts for "json:" image names.
 */
#include "util/json-parse.h"
#include "util/cutils.h"

typedef struct JsonParser {
    const char *p;
    int depth;
    Error *err;
} JsonParser;

static void G_GNUC_PRINTF(2, 3) json_error(JsonParser *ps, const char *fmt,
                                           ...)
{
    va_list ap;
    char *msg;

    if (ps->err) {
        return;                 /* keep the first error */
    }
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    error_setg(&ps->err, "JSON parse error, %s", msg);
    g_free(msg);
}

static JsonNode *json_node_new(JsonNodeType type)
{
    JsonNode *node = g_new0(JsonNode, 1);

    node->type = type;
    if (type == JSON_NODE_ARRAY || type == JSON_NODE_OBJECT) {
        node->children = g_ptr_array_new_with_free_func(
            (GDestroyNotify)json_node_free);
    }
    return node;
}

void json_node_free(JsonNode *node)
{
    if (!node) {
        return;
    }
    if (node->children) {
        g_ptr_array_free(node->children, TRUE);
    }
    g_free(node->key);
    g_free(node->text);
    g_free(node);
}

static void json_skip_space(JsonParser *ps)
{
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' ||
           *ps->p == '\r') {
        ps->p++;
    }
}

static int json_hex4(const char *s)
{
    int v = 0;

    for (int i = 0; i < 4; i++) {
        int c = g_ascii_xdigit_value(s[i]);
        if (c < 0) {
            return -1;
        }
        v = v * 16 + c;
    }
    return v;
}

/* \uXXXX (with a surrogate pair when needed) at ps->p, after the 'u'. */
static bool json_unicode_escape(JsonParser *ps, GString *out)
{
    int cp = json_hex4(ps->p);

    if (cp < 0) {
        json_error(ps, "invalid hex escape sequence in string");
        return false;
    }
    ps->p += 4;
    if (cp >= 0xd800 && cp < 0xdc00) {
        int lo = (ps->p[0] == '\\' && ps->p[1] == 'u') ? json_hex4(ps->p + 2)
                                                       : -1;
        if (lo < 0xdc00 || lo >= 0xe000) {
            json_error(ps, "missing second half of surrogate pair");
            return false;
        }
        ps->p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    } else if (cp >= 0xdc00 && cp < 0xe000) {
        json_error(ps, "leading surrogate expected");
        return false;
    }
    if (cp == 0) {
        /* A C string cannot hold it (QEMU refuses it too). */
        json_error(ps, "\\u0000 is not supported");
        return false;
    }
    g_string_append_unichar(out, cp);
    return true;
}

/* A string in ' or " quotes at ps->p. */
static char *json_parse_string(JsonParser *ps)
{
    char quote = *ps->p++;
    GString *out = g_string_new(NULL);

    for (;;) {
        unsigned char c = *ps->p;

        if (c == '\0') {
            json_error(ps, "premature EOI");
            goto fail;
        }
        ps->p++;
        if (c == (unsigned char)quote) {
            break;
        }
        if (c < 0x20) {
            json_error(ps, "stray control character in string");
            goto fail;
        }
        if (c != '\\') {
            g_string_append_c(out, c);
            continue;
        }
        c = *ps->p++;
        switch (c) {
        case '"': case '\'': case '\\': case '/':
            g_string_append_c(out, c);
            break;
        case 'b': g_string_append_c(out, '\b'); break;
        case 'f': g_string_append_c(out, '\f'); break;
        case 'n': g_string_append_c(out, '\n'); break;
        case 'r': g_string_append_c(out, '\r'); break;
        case 't': g_string_append_c(out, '\t'); break;
        case 'u':
            if (!json_unicode_escape(ps, out)) {
                goto fail;
            }
            break;
        default:
            json_error(ps, "invalid escape sequence in string");
            goto fail;
        }
    }
    if (!g_utf8_validate(out->str, out->len, NULL)) {
        json_error(ps, "invalid UTF-8 sequence in string");
        goto fail;
    }
    return g_string_free(out, FALSE);

fail:
    g_string_free(out, TRUE);
    return NULL;
}

/*
 * A number: integers that fit 64 bits keep their decimal value (a minus
 * zero is 0), anything else is a double printed as QEMU prints it.
 */
static JsonNode *json_parse_number(JsonParser *ps)
{
    const char *start = ps->p;
    const char *s = ps->p;
    bool is_int = true;
    JsonNode *node;
    char *lit;

    if (*s == '-') {
        s++;
    }
    if (*s == '0') {
        s++;
    } else if (g_ascii_isdigit(*s)) {
        while (g_ascii_isdigit(*s)) {
            s++;
        }
    } else {
        json_error(ps, "expecting value");
        return NULL;
    }
    if (*s == '.') {
        is_int = false;
        s++;
        if (!g_ascii_isdigit(*s)) {
            json_error(ps, "invalid number");
            return NULL;
        }
        while (g_ascii_isdigit(*s)) {
            s++;
        }
    }
    if (*s == 'e' || *s == 'E') {
        is_int = false;
        s++;
        if (*s == '+' || *s == '-') {
            s++;
        }
        if (!g_ascii_isdigit(*s)) {
            json_error(ps, "invalid number");
            return NULL;
        }
        while (g_ascii_isdigit(*s)) {
            s++;
        }
    }
    ps->p = s;
    lit = g_strndup(start, s - start);
    node = json_node_new(JSON_NODE_NUMBER);
    if (is_int) {
        int64_t i;
        uint64_t u;

        if (qemu_strtoi64(lit, NULL, 10, &i) == 0) {
            node->text = g_strdup_printf("%" PRId64, i);
        } else if (lit[0] != '-' && qemu_strtou64(lit, NULL, 10, &u) == 0) {
            node->text = g_strdup_printf("%" PRIu64, u);
        } else {
            is_int = false;
        }
    }
    if (!is_int) {
        node->text = g_strdup_printf("%.17g", g_ascii_strtod(lit, NULL));
    }
    g_free(lit);
    return node;
}

static JsonNode *json_parse_value(JsonParser *ps);

static bool json_object_has_key(JsonNode *obj, const char *key)
{
    for (guint i = 0; i < obj->children->len; i++) {
        JsonNode *m = g_ptr_array_index(obj->children, i);
        if (!strcmp(m->key, key)) {
            return true;
        }
    }
    return false;
}

/*
 * After an item of a container that close ends (what: "dict" or "list"):
 * 1 at close, 0 after an error, -1 after a ',' (more items follow). The
 * close or ',' is consumed.
 */
static int json_parse_separator(JsonParser *ps, char close, const char *what)
{
    json_skip_space(ps);
    if (*ps->p == close) {
        ps->p++;
        return 1;
    }
    if (*ps->p != ',') {
        if (*ps->p) {
            json_error(ps, "expected separator in %s", what);
        } else {
            json_error(ps, "premature EOI");
        }
        return 0;
    }
    ps->p++;
    return -1;
}

/* The members after '{' up to and including '}'. */
static bool json_parse_members(JsonParser *ps, JsonNode *obj)
{
    json_skip_space(ps);
    if (*ps->p == '}') {
        ps->p++;
        return true;
    }
    for (;;) {
        char *key;
        JsonNode *value;
        int ret;

        json_skip_space(ps);
        if (*ps->p == '\0') {
            json_error(ps, "premature EOI");
            return false;
        }
        if (*ps->p != '"' && *ps->p != '\'') {
            /* As QEMU: a key position holding no value at all (a trailing
             * comma) is a missing value, anything else a bad key. */
            json_error(ps, strchr("}],:", *ps->p)
                       ? "expecting value" : "key is not a string in object");
            return false;
        }
        key = json_parse_string(ps);
        if (!key) {
            return false;
        }
        json_skip_space(ps);
        if (*ps->p != ':') {
            json_error(ps, *ps->p ? "missing : in object pair"
                                  : "premature EOI");
            g_free(key);
            return false;
        }
        ps->p++;
        if (json_object_has_key(obj, key)) {
            json_error(ps, "duplicate key");
            g_free(key);
            return false;
        }
        value = json_parse_value(ps);
        if (!value) {
            g_free(key);
            return false;
        }
        value->key = key;
        g_ptr_array_add(obj->children, value);
        ret = json_parse_separator(ps, '}', "dict");
        if (ret >= 0) {
            return ret;
        }
    }
}

/* The elements after '[' up to and including ']'. */
static bool json_parse_elements(JsonParser *ps, JsonNode *arr)
{
    json_skip_space(ps);
    if (*ps->p == ']') {
        ps->p++;
        return true;
    }
    for (;;) {
        JsonNode *value = json_parse_value(ps);
        int ret;

        if (!value) {
            return false;
        }
        g_ptr_array_add(arr->children, value);
        ret = json_parse_separator(ps, ']', "list");
        if (ret >= 0) {
            return ret;
        }
    }
}

static JsonNode *json_parse_container(JsonParser *ps, JsonNodeType type)
{
    JsonNode *node;
    bool ok;

    if (ps->depth >= JSON_MAX_NESTING) {
        error_setg(&ps->err, "JSON nesting depth limit exceeded");
        return NULL;
    }
    ps->depth++;
    ps->p++;
    node = json_node_new(type);
    ok = type == JSON_NODE_OBJECT ? json_parse_members(ps, node)
                                  : json_parse_elements(ps, node);
    ps->depth--;
    if (!ok) {
        json_node_free(node);
        return NULL;
    }
    return node;
}

static JsonNode *json_parse_keyword(JsonParser *ps)
{
    static const struct {
        const char *word;
        JsonNodeType type;
        bool value;
    } words[] = {
        { "true", JSON_NODE_BOOL, true },
        { "false", JSON_NODE_BOOL, false },
        { "null", JSON_NODE_NULL, false },
    };
    size_t len = 0;

    while (g_ascii_isalpha(ps->p[len])) {
        len++;
    }
    for (unsigned i = 0; i < ARRAY_SIZE(words); i++) {
        if (strlen(words[i].word) == len &&
            !strncmp(ps->p, words[i].word, len)) {
            JsonNode *node = json_node_new(words[i].type);
            node->boolean = words[i].value;
            ps->p += len;
            return node;
        }
    }
    json_error(ps, "invalid keyword '%.*s'", (int)MAX(len, 1), ps->p);
    return NULL;
}

static JsonNode *json_parse_value(JsonParser *ps)
{
    JsonNode *node;
    char *s;

    json_skip_space(ps);
    switch (*ps->p) {
    case '\0':
        json_error(ps, "premature EOI");
        return NULL;
    case '{':
        return json_parse_container(ps, JSON_NODE_OBJECT);
    case '[':
        return json_parse_container(ps, JSON_NODE_ARRAY);
    case '"':
    case '\'':
        s = json_parse_string(ps);
        if (!s) {
            return NULL;
        }
        node = json_node_new(JSON_NODE_STRING);
        node->text = s;
        return node;
    case '-':
    case '0' ... '9':
        return json_parse_number(ps);
    default:
        if (g_ascii_isalpha(*ps->p)) {
            return json_parse_keyword(ps);
        }
        json_error(ps, "expecting value");
        return NULL;
    }
}

JsonNode *json_parse(const char *text, Error **errp)
{
    JsonParser ps = { .p = text };
    JsonNode *node;

    json_skip_space(&ps);
    if (*ps.p == '\0') {
        error_setg(errp, "Expecting a JSON value");
        return NULL;
    }
    node = json_parse_value(&ps);
    if (node) {
        json_skip_space(&ps);
        if (*ps.p != '\0') {
            error_setg(&ps.err, "Expecting at most one JSON value");
            json_node_free(node);
            node = NULL;
        }
    }
    if (!node) {
        error_propagate(errp, ps.err);
    }
    return node;
}

/* ---- flattening into QemuOpts ---- */

static int json_flatten(const JsonNode *node, const char *prefix,
                        QemuOpts *opts, GHashTable *seen, Error **errp)
{
    const char *value = NULL;
    QemuOptJson json = QEMU_OPT_JSON_STRING;

    switch (node->type) {
    case JSON_NODE_NULL: {
        /* "backing": null is QEMU's "no backing file" (kept as an empty
         * "backing" option, QEMU's older spelling); elsewhere as if
         * absent. */
        const char *last = strrchr(prefix, '.');
        if (strcmp(last ? last + 1 : prefix, "backing")) {
            return 0;
        }
        value = "";
        break;
    }
    case JSON_NODE_BOOL:
        value = node->boolean ? "on" : "off";
        json = QEMU_OPT_JSON_BOOL;
        break;
    case JSON_NODE_NUMBER:
        value = node->text;
        json = QEMU_OPT_JSON_NUMBER;
        break;
    case JSON_NODE_STRING:
        value = node->text;
        break;
    case JSON_NODE_ARRAY:
    case JSON_NODE_OBJECT:
        for (guint i = 0; i < node->children->len; i++) {
            const JsonNode *c = g_ptr_array_index(node->children, i);
            char *key = node->type == JSON_NODE_OBJECT
                ? g_strdup_printf("%s%s%s", prefix, *prefix ? "." : "",
                                  c->key)
                : g_strdup_printf("%s%s%u", prefix, *prefix ? "." : "", i);
            int ret = json_flatten(c, key, opts, seen, errp);

            g_free(key);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    if (g_hash_table_contains(seen, prefix)) {
        error_setg(errp, "JSON options name '%s' twice", prefix);
        return -EINVAL;
    }
    g_hash_table_add(seen, g_strdup(prefix));
    if (!qemu_opt_has(opts, prefix)) {
        qemu_opt_set_json(opts, prefix, value, json);
    }
    return 0;
}

int json_flatten_into_opts(const JsonNode *obj, QemuOpts *opts,
                           Error **errp)
{
    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal,
                                             g_free, NULL);
    int ret;

    assert(obj->type == JSON_NODE_OBJECT);
    ret = json_flatten(obj, "", opts, seen, errp);
    g_hash_table_destroy(seen);
    return ret;
}
