/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A JSON parser for QEMU's dialect (strings in double or single quotes) as
 * used by "json:{...}" image names, and the flattening of a parsed object
 * into QemuOpts ("file": {"filename": X} becomes file.filename=X).
 */
#ifndef QEMU_JSON_PARSE_H
#define QEMU_JSON_PARSE_H

#include "util/option.h"

typedef enum JsonNodeType {
    JSON_NODE_NULL,
    JSON_NODE_BOOL,
    JSON_NODE_NUMBER,
    JSON_NODE_STRING,
    JSON_NODE_ARRAY,
    JSON_NODE_OBJECT,
} JsonNodeType;

typedef struct JsonNode {
    JsonNodeType type;
    char *key;              /* member name, inside an object */
    /* Strings: the value. Numbers: QEMU's text for it (integers in
     * decimal, other numbers as printf's %.17g). */
    char *text;
    bool boolean;
    GPtrArray *children;    /* arrays and objects, in input order */
} JsonNode;

/* Nesting deeper than this is refused (objects and arrays). */
#define JSON_MAX_NESTING 32

/*
 * Parse exactly one JSON value from text (whitespace around it allowed).
 * Errors use QEMU's messages ("JSON parse error, premature EOI",
 * "Expecting at most one JSON value"). Free with json_node_free.
 */
JsonNode *json_parse(const char *text, Error **errp);
void json_node_free(JsonNode *node);

/*
 * Add the members of object obj to opts as flat keys: nested objects and
 * arrays become "a.b" and "a.0"; true/false become on/off; null members
 * are left out. A key that opts already holds keeps its value (options
 * given beside a json: name win over the name's own). Two members that
 * flatten to the same key are an error.
 */
int json_flatten_into_opts(const JsonNode *obj, QemuOpts *opts,
                           Error **errp);

#endif
