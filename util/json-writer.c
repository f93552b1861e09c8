/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The JSON writer of the tools' --output=json: QEMU's member order and
 * string escaping, pretty-printed with four spaces per level.
 */
#include "util/json-writer.h"

/*
 * QEMU prints objects by walking its QDict hash table: buckets in order,
 * and inside a bucket the most recently inserted key first. Reproducing
 * that order keeps --output=json byte-identical.
 */
JsonValue *json_new(JsonType type)
{
    JsonValue *v = g_new0(JsonValue, 1);

    v->type = type;
    if (type == JSON_OBJECT || type == JSON_ARRAY) {
        v->members = g_ptr_array_new();
    }
    return v;
}

void json_free(JsonValue *v)
{
    if (!v) {
        return;
    }
    if (v->members) {
        for (guint i = 0; i < v->members->len; i++) {
            json_free(g_ptr_array_index(v->members, i));
        }
        g_ptr_array_free(v->members, TRUE);
    }
    g_free(v->key);
    g_free(v->str);
    g_free(v);
}

JsonValue *json_copy(const JsonValue *v)
{
    JsonValue *c = json_new(v->type);

    c->key = g_strdup(v->key);
    c->seq = v->seq;
    c->str = g_strdup(v->str);
    c->num = v->num;
    c->flag = v->flag;
    for (guint i = 0; v->members && i < v->members->len; i++) {
        g_ptr_array_add(c->members,
                        json_copy(g_ptr_array_index(v->members, i)));
    }
    return c;
}

void json_add(JsonValue *obj, const char *key, JsonValue *v)
{
    if (key) {
        v->key = g_strdup(key);
    }
    v->seq = obj->members->len;
    g_ptr_array_add(obj->members, v);
}

void json_add_str(JsonValue *obj, const char *key, const char *s)
{
    JsonValue *v = json_new(JSON_STRING);

    v->str = g_strdup(s);
    json_add(obj, key, v);
}

void json_add_int(JsonValue *obj, const char *key, int64_t n)
{
    JsonValue *v = json_new(JSON_INT);

    v->num = n;
    json_add(obj, key, v);
}

void json_add_bool(JsonValue *obj, const char *key, bool b)
{
    JsonValue *v = json_new(JSON_BOOL);

    v->flag = b;
    json_add(obj, key, v);
}

static unsigned qdict_bucket(const char *name)
{
    unsigned value = 0x238F13AF * (unsigned)strlen(name);

    for (unsigned i = 0; name[i]; i++) {
        value += ((unsigned)(unsigned char)name[i]) << (i * 5 % 24);
    }
    return (1103515243 * value + 12345) % 512;
}

static int json_member_cmp(gconstpointer a, gconstpointer b)
{
    const JsonValue *x = *(JsonValue *const *)a;
    const JsonValue *y = *(JsonValue *const *)b;
    unsigned bx = qdict_bucket(x->key), by = qdict_bucket(y->key);

    if (bx != by) {
        return bx < by ? -1 : 1;
    }
    return x->seq > y->seq ? -1 : (x->seq < y->seq ? 1 : 0);
}

/* Object members in QEMU's output order; g_ptr_array_free(arr, TRUE). */
GPtrArray *json_sorted_members(JsonValue *obj)
{
    GPtrArray *arr = g_ptr_array_sized_new(obj->members->len);

    for (guint i = 0; i < obj->members->len; i++) {
        g_ptr_array_add(arr, g_ptr_array_index(obj->members, i));
    }
    g_ptr_array_sort(arr, json_member_cmp);
    return arr;
}

void json_quote(GString *out, const char *s)
{
    const char *p = s;

    g_string_append_c(out, '"');
    while (*p) {
        unsigned char c = *p;
        gunichar cp;

        switch (c) {
        case '"':
            g_string_append(out, "\\\"");
            p++;
            continue;
        case '\\':
            g_string_append(out, "\\\\");
            p++;
            continue;
        case '\b':
            g_string_append(out, "\\b");
            p++;
            continue;
        case '\f':
            g_string_append(out, "\\f");
            p++;
            continue;
        case '\n':
            g_string_append(out, "\\n");
            p++;
            continue;
        case '\r':
            g_string_append(out, "\\r");
            p++;
            continue;
        case '\t':
            g_string_append(out, "\\t");
            p++;
            continue;
        default:
            break;
        }
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) {
                g_string_append_printf(out, "\\u%04X", c);
            } else {
                g_string_append_c(out, c);
            }
            p++;
            continue;
        }
        cp = g_utf8_get_char_validated(p, -1);
        if (cp == (gunichar)-1 || cp == (gunichar)-2) {
            g_string_append(out, "\\uFFFD");
            p++;
            continue;
        }
        if (cp > 0xFFFF) {
            cp -= 0x10000;
            g_string_append_printf(out, "\\u%04X\\u%04X",
                                   0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF));
        } else {
            g_string_append_printf(out, "\\u%04X", cp);
        }
        p = g_utf8_next_char(p);
    }
    g_string_append_c(out, '"');
}

/*
 * Appends v, pretty-printed at indent level indent, or with indent < 0 on
 * one line as QEMU writes json: names ("{"a": 1, "b": {...}}").
 */
void json_print(GString *out, JsonValue *v, int indent)
{
    GPtrArray *members;

    switch (v->type) {
    case JSON_STRING:
        json_quote(out, v->str);
        return;
    case JSON_INT:
        g_string_append_printf(out, "%" PRId64, v->num);
        return;
    case JSON_BOOL:
        g_string_append(out, v->flag ? "true" : "false");
        return;
    case JSON_OBJECT:
    case JSON_ARRAY:
        break;
    }

    members = v->type == JSON_OBJECT ? json_sorted_members(v) : v->members;
    g_string_append_c(out, v->type == JSON_OBJECT ? '{' : '[');
    for (guint i = 0; i < members->len; i++) {
        JsonValue *m = g_ptr_array_index(members, i);

        if (indent >= 0) {
            g_string_append_printf(out, "%s\n%*s", i ? "," : "",
                                   4 * (indent + 1), "");
        } else if (i) {
            g_string_append(out, ", ");
        }
        if (v->type == JSON_OBJECT) {
            json_quote(out, m->key);
            g_string_append(out, ": ");
        }
        json_print(out, m, indent >= 0 ? indent + 1 : -1);
    }
    if (indent >= 0) {
        g_string_append_printf(out, "\n%*s", 4 * indent, "");
    }
    g_string_append_c(out, v->type == JSON_OBJECT ? '}' : ']');
    if (v->type == JSON_OBJECT) {
        g_ptr_array_free(members, TRUE);
    }
}

/* Print v pretty-printed plus a newline, and free it. */
void json_dump(JsonValue *v)
{
    GString *out = g_string_new(NULL);

    json_print(out, v, 0);
    printf("%s\n", out->str);
    g_string_free(out, TRUE);
    json_free(v);
}

/*
 * QEMU's human dump of a value: object members "key: value" (dashes in
 * keys as spaces), list elements "[i]: value", a list or object as
 * "key:" and its contents four spaces further in.
 */
void json_dump_human(JsonValue *v, int indent)
{
    GPtrArray *members;

    switch (v->type) {
    case JSON_STRING:
        printf("%s", v->str);
        return;
    case JSON_INT:
        printf("%" PRId64, v->num);
        return;
    case JSON_BOOL:
        printf("%s", v->flag ? "true" : "false");
        return;
    case JSON_OBJECT:
    case JSON_ARRAY:
        break;
    }
    members = v->type == JSON_OBJECT ? json_sorted_members(v) : v->members;
    for (guint i = 0; i < members->len; i++) {
        JsonValue *m = g_ptr_array_index(members, i);
        bool composite = m->type == JSON_OBJECT || m->type == JSON_ARRAY;

        if (v->type == JSON_OBJECT) {
            char *key = g_strdup(m->key);

            for (char *p = key; *p; p++) {
                if (*p == '-') {
                    *p = ' ';
                }
            }
            printf("%*s%s:%c", indent * 4, "", key, composite ? '\n' : ' ');
            g_free(key);
        } else {
            printf("%*s[%u]:%c", indent * 4, "", i, composite ? '\n' : ' ');
        }
        json_dump_human(m, indent + 1);
        if (!composite) {
            printf("\n");
        }
    }
    if (v->type == JSON_OBJECT) {
        g_ptr_array_free(members, TRUE);
    }
}

void json_print_compact(GString *out, JsonValue *v)
{
    json_print(out, v, -1);
}
