/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * "key=value,key2=value2" option strings (",," escapes a comma), typed by a
 * descriptor table, as used by qemu-img -o and driver open options.
 */
#ifndef QEMU_OPTION_H
#define QEMU_OPTION_H

#include "util/osdep.h"
#include "util/error.h"

typedef enum QemuOptType {
    QEMU_OPT_STRING = 0,
    QEMU_OPT_BOOL,           /* on/off, true/false, yes/no */
    QEMU_OPT_NUMBER,         /* unsigned decimal/hex/octal */
    QEMU_OPT_SIZE,           /* size with optional k/M/G/T/P/E suffix */
} QemuOptType;

typedef struct QemuOptDesc {
    const char *name;
    QemuOptType type;
    const char *help;
    const char *def_value_str;
} QemuOptDesc;                /* tables end with an entry whose name is NULL */

typedef struct QemuOpts QemuOpts;   /* ordered name/value pairs */

QemuOpts *qemu_opts_new(void);
void qemu_opts_del(QemuOpts *opts);
QemuOpts *qemu_opts_clone(const QemuOpts *opts);
/*
 * Parse "a=b,c=d" and add the pairs (a later value of the same name replaces
 * an earlier one). If implied_key is non-NULL, a first element without '='
 * is its value ("foo.img" -> implied_key=foo.img). A bare "name" element means
 * name=on. Returns 0 or -EINVAL with errp set.
 */
int qemu_opts_parse(QemuOpts *opts, const char *str, const char *implied_key,
                    Error **errp);
/*
 * Check every pair against desc (one or more NULL-terminated tables, the
 * list ends with NULL): unknown names give "Invalid parameter 'NAME'", bad
 * values "Parameter 'NAME' expects ...". Returns 0 or -EINVAL.
 */
int qemu_opts_validate(QemuOpts *opts, const QemuOptDesc *const *descs,
                       Error **errp);
/* Check only the pairs whose names appear in desc (others are ignored). */
int qemu_opts_check_types(QemuOpts *opts, const QemuOptDesc *desc,
                          Error **errp);

void qemu_opt_set(QemuOpts *opts, const char *name, const char *value);
/*
 * What a value was in the json: description it came from (numbers and
 * booleans are kept as text, "42" and "on"), so that a node's name can be
 * printed back as QEMU prints it; qemu_opt_set makes a string. Clone and
 * extract_prefix keep it.
 */
typedef enum QemuOptJson {
    QEMU_OPT_JSON_STRING = 0,
    QEMU_OPT_JSON_NUMBER,
    QEMU_OPT_JSON_BOOL,
} QemuOptJson;
void qemu_opt_set_json(QemuOpts *opts, const char *name, const char *value,
                       QemuOptJson json);
QemuOptJson qemu_opts_nth_json(const QemuOpts *opts, size_t i);
void qemu_opt_set_number(QemuOpts *opts, const char *name, uint64_t value);
void qemu_opt_set_bool(QemuOpts *opts, const char *name, bool value);
bool qemu_opt_unset(QemuOpts *opts, const char *name);
bool qemu_opt_has(const QemuOpts *opts, const char *name);
/* NULL if absent. */
const char *qemu_opt_get(const QemuOpts *opts, const char *name);
/* Getters return defval when absent or unparsable (validate first). */
bool qemu_opt_get_bool(const QemuOpts *opts, const char *name, bool defval);
uint64_t qemu_opt_get_number(const QemuOpts *opts, const char *name,
                             uint64_t defval);
uint64_t qemu_opt_get_size(const QemuOpts *opts, const char *name,
                           uint64_t defval);
/* Remove and return a malloc'd copy (caller frees), or NULL. */
char *qemu_opt_get_del(QemuOpts *opts, const char *name);

size_t qemu_opts_count(const QemuOpts *opts);
/* Name and value of the i-th pair in insertion order. */
void qemu_opts_nth(const QemuOpts *opts, size_t i, const char **name,
                   const char **value);
/*
 * Move every pair whose name starts with "prefix." into a new QemuOpts with
 * the prefix stripped (e.g. "file.filename" -> "filename"). Returns NULL if
 * none matched.
 */
QemuOpts *qemu_opts_extract_prefix(QemuOpts *opts, const char *prefix);

/*
 * Print caption (when non-NULL) on a line of its own, then one sorted
 * "  name=<type>  - help" line per distinct option of the desc tables (the
 * first table wins for a name listed twice), as QEMU's -o help does.
 */
void qemu_opts_print_help(const char *caption,
                          const QemuOptDesc *const *descs);
/* True if str is "help" or "?" (qemu-img -o help). */
bool is_help_option(const char *str);

/* Parse a bool value as QEMU does (on/off/yes/no/true/false). */
bool qemu_parse_bool(const char *value, bool *result);

#endif
