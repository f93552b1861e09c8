/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * QemuOpts: an ordered list of string name/value pairs, parsed from
 * "a=b,c=d" strings and type-checked against QemuOptDesc tables.
 */
#include "util/option.h"
#include "util/cutils.h"

typedef struct QemuOpt {
    char *name;
    char *value;
    QemuOptJson json;           /* what it was in a json: description */
} QemuOpt;

struct QemuOpts {
    GPtrArray *list;            /* of QemuOpt *, in insertion order */
};

static void qemu_opt_free(gpointer p)
{
    QemuOpt *opt = p;

    g_free(opt->name);
    g_free(opt->value);
    g_free(opt);
}

QemuOpts *qemu_opts_new(void)
{
    QemuOpts *opts = g_new0(QemuOpts, 1);

    opts->list = g_ptr_array_new_with_free_func(qemu_opt_free);
    return opts;
}

void qemu_opts_del(QemuOpts *opts)
{
    if (opts) {
        g_ptr_array_free(opts->list, TRUE);
        g_free(opts);
    }
}

static int qemu_opt_find(const QemuOpts *opts, const char *name)
{
    guint i;

    for (i = 0; i < opts->list->len; i++) {
        QemuOpt *opt = g_ptr_array_index(opts->list, i);

        if (strcmp(opt->name, name) == 0) {
            return i;
        }
    }
    return -1;
}

void qemu_opt_set_json(QemuOpts *opts, const char *name, const char *value,
                       QemuOptJson json)
{
    int i = qemu_opt_find(opts, name);
    QemuOpt *opt;

    if (i >= 0) {
        opt = g_ptr_array_index(opts->list, i);
        g_free(opt->value);
        opt->value = g_strdup(value);
        opt->json = json;
        return;
    }
    opt = g_new0(QemuOpt, 1);
    opt->name = g_strdup(name);
    opt->value = g_strdup(value);
    opt->json = json;
    g_ptr_array_add(opts->list, opt);
}

void qemu_opt_set(QemuOpts *opts, const char *name, const char *value)
{
    qemu_opt_set_json(opts, name, value, QEMU_OPT_JSON_STRING);
}

QemuOptJson qemu_opts_nth_json(const QemuOpts *opts, size_t i)
{
    assert(i < opts->list->len);
    return ((QemuOpt *)g_ptr_array_index(opts->list, i))->json;
}

QemuOpts *qemu_opts_clone(const QemuOpts *opts)
{
    QemuOpts *copy = qemu_opts_new();
    guint i;

    for (i = 0; i < opts->list->len; i++) {
        QemuOpt *opt = g_ptr_array_index(opts->list, i);

        qemu_opt_set_json(copy, opt->name, opt->value, opt->json);
    }
    return copy;
}

void qemu_opt_set_number(QemuOpts *opts, const char *name, uint64_t value)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%" PRIu64, value);
    qemu_opt_set(opts, name, buf);
}

void qemu_opt_set_bool(QemuOpts *opts, const char *name, bool value)
{
    qemu_opt_set(opts, name, value ? "on" : "off");
}

bool qemu_opt_unset(QemuOpts *opts, const char *name)
{
    int i = qemu_opt_find(opts, name);

    if (i < 0) {
        return false;
    }
    g_ptr_array_remove_index(opts->list, i);
    return true;
}

bool qemu_opt_has(const QemuOpts *opts, const char *name)
{
    return qemu_opt_find(opts, name) >= 0;
}

const char *qemu_opt_get(const QemuOpts *opts, const char *name)
{
    int i = qemu_opt_find(opts, name);

    if (i < 0) {
        return NULL;
    }
    return ((QemuOpt *)g_ptr_array_index(opts->list, i))->value;
}

bool qemu_parse_bool(const char *value, bool *result)
{
    if (!strcmp(value, "on") || !strcmp(value, "yes") ||
        !strcmp(value, "true")) {
        *result = true;
        return true;
    }
    if (!strcmp(value, "off") || !strcmp(value, "no") ||
        !strcmp(value, "false")) {
        *result = false;
        return true;
    }
    return false;
}

bool qemu_opt_get_bool(const QemuOpts *opts, const char *name, bool defval)
{
    const char *value = qemu_opt_get(opts, name);
    bool result;

    if (value && qemu_parse_bool(value, &result)) {
        return result;
    }
    return defval;
}

/*
 * A number option as QEMU 7.2 parses it (strtoull): a leading '-' negates,
 * so "-1" is UINT64_MAX and the option's own range check refuses it with
 * its own message (e.g. qcow2's refcount_bits).
 */
static int opt_parse_number(const char *value, uint64_t *result)
{
    const char *p = value;
    int ret;

    while (g_ascii_isspace(*p)) {
        p++;
    }
    if (*p != '-') {
        return qemu_strtou64(value, NULL, 0, result);
    }
    ret = qemu_strtou64(p + 1, NULL, 0, result);
    if (ret == 0) {
        *result = -*result;
    }
    return ret;
}

uint64_t qemu_opt_get_number(const QemuOpts *opts, const char *name,
                             uint64_t defval)
{
    const char *value = qemu_opt_get(opts, name);
    uint64_t result;

    if (value && opt_parse_number(value, &result) == 0) {
        return result;
    }
    return defval;
}

uint64_t qemu_opt_get_size(const QemuOpts *opts, const char *name,
                           uint64_t defval)
{
    const char *value = qemu_opt_get(opts, name);
    uint64_t result;

    if (value && qemu_strtosz(value, NULL, &result) == 0) {
        return result;
    }
    return defval;
}

char *qemu_opt_get_del(QemuOpts *opts, const char *name)
{
    int i = qemu_opt_find(opts, name);
    QemuOpt *opt;
    char *value;

    if (i < 0) {
        return NULL;
    }
    opt = g_ptr_array_index(opts->list, i);
    value = opt->value;
    opt->value = NULL;
    g_ptr_array_remove_index(opts->list, i);
    return value;
}

size_t qemu_opts_count(const QemuOpts *opts)
{
    return opts->list->len;
}

void qemu_opts_nth(const QemuOpts *opts, size_t i, const char **name,
                   const char **value)
{
    QemuOpt *opt;

    assert(i < opts->list->len);
    opt = g_ptr_array_index(opts->list, i);
    if (name) {
        *name = opt->name;
    }
    if (value) {
        *value = opt->value;
    }
}

QemuOpts *qemu_opts_extract_prefix(QemuOpts *opts, const char *prefix)
{
    QemuOpts *sub = NULL;
    size_t plen = strlen(prefix);
    guint i = 0;

    while (i < opts->list->len) {
        QemuOpt *opt = g_ptr_array_index(opts->list, i);

        if (strncmp(opt->name, prefix, plen) == 0 && opt->name[plen] == '.') {
            if (!sub) {
                sub = qemu_opts_new();
            }
            qemu_opt_set_json(sub, opt->name + plen + 1, opt->value,
                              opt->json);
            g_ptr_array_remove_index(opts->list, i);
        } else {
            i++;
        }
    }
    return sub;
}

/*
 * Read a value up to the next single ',' (",," stands for one comma).
 * Returns the position after the value (at ',' or NUL).
 */
static const char *parse_value(const char *p, char **value)
{
    GString *s = g_string_new(NULL);

    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                break;
            }
            p++;
        }
        g_string_append_c(s, *p);
        p++;
    }
    *value = g_string_free(s, FALSE);
    return p;
}

int qemu_opts_parse(QemuOpts *opts, const char *str, const char *implied_key,
                    Error **errp)
{
    const char *p = str;
    bool first = true;

    while (*p) {
        size_t n = strcspn(p, "=,");
        char *name, *value;

        if (p[n] == '=') {
            if (n == 0) {
                error_setg(errp, "Invalid parameter ''");
                return -EINVAL;
            }
            name = g_strndup(p, n);
            p = parse_value(p + n + 1, &value);
        } else if (first && implied_key) {
            name = g_strdup(implied_key);
            p = parse_value(p, &value);
        } else {
            /* A bare flag; an empty element (",,," or trailing ',') is skipped. */
            name = n ? g_strndup(p, n) : NULL;
            value = g_strdup("on");
            p += n;
        }
        if (name) {
            qemu_opt_set(opts, name, value);
        }
        g_free(name);
        g_free(value);
        if (*p == ',') {
            p++;
        }
        first = false;
    }
    return 0;
}

static const QemuOptDesc *find_desc(const QemuOptDesc *desc, const char *name)
{
    for (; desc && desc->name; desc++) {
        if (strcmp(desc->name, name) == 0) {
            return desc;
        }
    }
    return NULL;
}

static int check_value(const QemuOptDesc *desc, const char *value,
                       Error **errp)
{
    bool b;
    uint64_t n;

    switch (desc->type) {
    case QEMU_OPT_STRING:
        return 0;
    case QEMU_OPT_BOOL:
        if (!qemu_parse_bool(value, &b)) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'",
                       desc->name);
            return -EINVAL;
        }
        return 0;
    case QEMU_OPT_NUMBER:
        if (opt_parse_number(value, &n) < 0) {
            error_setg(errp, "Parameter '%s' expects a number", desc->name);
            return -EINVAL;
        }
        return 0;
    case QEMU_OPT_SIZE:
        if (qemu_strtosz(value, NULL, &n) < 0) {
            error_setg(errp, "Parameter '%s' expects a non-negative number "
                       "below 2^64", desc->name);
            error_append_hint(errp, "Optional suffix k, M, G, T, P or E "
                              "means kilo-, mega-, giga-, tera-, peta-\n"
                              "and exabytes, respectively.\n");
            return -EINVAL;
        }
        return 0;
    }
    return 0;
}

int qemu_opts_validate(QemuOpts *opts, const QemuOptDesc *const *descs,
                       Error **errp)
{
    guint i;

    for (i = 0; i < opts->list->len; i++) {
        QemuOpt *opt = g_ptr_array_index(opts->list, i);
        const QemuOptDesc *desc = NULL;
        size_t t;
        int ret;

        for (t = 0; descs && descs[t] && !desc; t++) {
            desc = find_desc(descs[t], opt->name);
        }
        if (!desc) {
            error_setg(errp, "Invalid parameter '%s'", opt->name);
            return -EINVAL;
        }
        ret = check_value(desc, opt->value, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int qemu_opts_check_types(QemuOpts *opts, const QemuOptDesc *desc,
                          Error **errp)
{
    guint i;

    for (i = 0; i < opts->list->len; i++) {
        QemuOpt *opt = g_ptr_array_index(opts->list, i);
        const QemuOptDesc *d = find_desc(desc, opt->name);
        int ret;

        if (d) {
            ret = check_value(d, opt->value, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static gint desc_cmp(gconstpointer a, gconstpointer b)
{
    const QemuOptDesc *da = *(const QemuOptDesc *const *)a;
    const QemuOptDesc *db = *(const QemuOptDesc *const *)b;

    return strcmp(da->name, db->name);
}

static const char *opt_type_str(QemuOptType type)
{
    switch (type) {
    case QEMU_OPT_BOOL:
        return "bool (on/off)";
    case QEMU_OPT_NUMBER:
        return "num";
    case QEMU_OPT_SIZE:
        return "size";
    case QEMU_OPT_STRING:
    default:
        return "str";
    }
}

void qemu_opts_print_help(const char *caption,
                          const QemuOptDesc *const *descs)
{
    GPtrArray *all = g_ptr_array_new();
    size_t t;
    guint i, j;

    /* Merge the tables; the first table wins for a name listed twice. */
    for (t = 0; descs && descs[t]; t++) {
        const QemuOptDesc *d;

        for (d = descs[t]; d->name; d++) {
            bool dup = false;

            for (j = 0; j < all->len && !dup; j++) {
                dup = !strcmp(((QemuOptDesc *)g_ptr_array_index(all, j))->name,
                              d->name);
            }
            if (!dup) {
                g_ptr_array_add(all, (gpointer)d);
            }
        }
    }
    g_ptr_array_sort(all, desc_cmp);

    if (caption) {
        printf("%s\n", caption);
    }
    for (i = 0; i < all->len; i++) {
        const QemuOptDesc *d = g_ptr_array_index(all, i);
        GString *line = g_string_new(NULL);

        g_string_append_printf(line, "  %s=<%s>", d->name,
                               opt_type_str(d->type));
        if (d->help) {
            /* Help texts start in one column unless the name is too long. */
            while (line->len < 24) {
                g_string_append_c(line, ' ');
            }
            g_string_append_printf(line, " - %s", d->help);
        }
        printf("%s\n", line->str);
        g_string_free(line, TRUE);
    }
    g_ptr_array_free(all, TRUE);
}

bool is_help_option(const char *str)
{
    return str && (!strcmp(str, "help") || !strcmp(str, "?"));
}
