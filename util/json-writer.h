/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A small JSON value tree for the tools' --output=json, printed as QEMU 7.2
 * prints it: object members in QDict's hash-table order, strings escaped
 * as QEMU's JSON writer does (non-ASCII as \uXXXX, invalid UTF-8 as
 * \uFFFD), four spaces of indent per level.
 */
#ifndef QEMU_JSON_WRITER_H
#define QEMU_JSON_WRITER_H

#include "util/osdep.h"

typedef enum JsonType {
    JSON_OBJECT,
    JSON_ARRAY,
    JSON_STRING,
    JSON_INT,
    JSON_BOOL,
} JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    char *key;              /* member name inside an object */
    unsigned seq;           /* insertion index inside an object */
    char *str;
    int64_t num;
    bool flag;
    GPtrArray *members;     /* objects and arrays */
};

JsonValue *json_new(JsonType type);
/* A deep copy of v (member order and keys kept). */
JsonValue *json_copy(const JsonValue *v);
/* Frees v and everything under it; NULL is fine. */
void json_free(JsonValue *v);
/* Appends v to an object (key given) or array (key NULL); obj owns v. */
void json_add(JsonValue *obj, const char *key, JsonValue *v);
void json_add_str(JsonValue *obj, const char *key, const char *s);
void json_add_int(JsonValue *obj, const char *key, int64_t n);
void json_add_bool(JsonValue *obj, const char *key, bool b);
/* Object members in QEMU's output order; g_ptr_array_free(arr, TRUE). */
GPtrArray *json_sorted_members(JsonValue *obj);
/* Appends s as a quoted, escaped JSON string. */
void json_quote(GString *out, const char *s);
/* Appends v pretty-printed at the given indent level (no newline);
 * indent < 0: on one line, as json_print_compact(). */
void json_print(GString *out, JsonValue *v, int indent);
/*
 * Prints v on stdout as QEMU's human "Format specific information": object
 * members "key: value" with dashes as spaces, list elements "[i]: value",
 * nested values four spaces per indent level further in.
 */
void json_dump_human(JsonValue *v, int indent);
/* Appends v on one line as QEMU writes json: names ({"a": 1, ...}). */
void json_print_compact(GString *out, JsonValue *v);
/* Prints v pretty-printed plus a newline on stdout, and frees it. */
void json_dump(JsonValue *v);

#endif
