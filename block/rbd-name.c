/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Parser of QEMU-style rbd image names (block/rbd-name.h). */
#include "block/rbd-name.h"

/*
 * Take the token at *p up to the first unescaped character of delims (or
 * the end). Returns it unescaped (g_free); *p points past the delimiter,
 * *found is the delimiter ('\0' at the end of the string).
 */
static char *rbd_next_tok(const char **p, const char *delims, char *found)
{
    GString *tok = g_string_new(NULL);
    const char *s = *p;

    while (*s && !strchr(delims, *s)) {
        if (*s == '\\' && s[1]) {
            s++;
        }
        g_string_append_c(tok, *s++);
    }
    *found = *s;
    *p = *s ? s + 1 : s;
    return g_string_free(tok, false);
}

static bool rbd_check_part(const char *what, const char *val, bool allow_empty,
                           Error **errp)
{
    if (!allow_empty && !*val) {
        error_setg(errp, "rbd: %s name must not be empty", what);
        return false;
    }
    if (strlen(val) > RBD_NAME_MAX) {
        error_setg(errp, "rbd: %s name is too long", what);
        return false;
    }
    return true;
}

static int rbd_parse_opts(const char *p, RbdName *n, Error **errp)
{
    char delim = ':';

    while (delim == ':') {
        char kdelim, vdelim;
        g_autofree char *key = rbd_next_tok(&p, "=:", &kdelim);
        g_autofree char *value = NULL;

        if (kdelim != '=') {
            error_setg(errp, "rbd: conf option '%s' has no value", key);
            return -EINVAL;
        }
        value = rbd_next_tok(&p, ":", &vdelim);
        delim = vdelim;
        if (!*key || strlen(key) > 256 || strlen(value) > RBD_NAME_MAX) {
            error_setg(errp, "rbd: invalid conf option '%s'", key);
            return -EINVAL;
        }
        if (!strcmp(key, "conf")) {
            g_free(n->conf);
            n->conf = g_steal_pointer(&value);
        } else if (!strcmp(key, "id")) {
            g_free(n->user);
            n->user = g_steal_pointer(&value);
        } else {
            if (n->nr_opts >= RBD_NAME_MAX_OPTS) {
                error_setg(errp, "rbd: more than %d conf options",
                           RBD_NAME_MAX_OPTS);
                return -EINVAL;
            }
            n->keys = g_renew(char *, n->keys, n->nr_opts + 1);
            n->values = g_renew(char *, n->values, n->nr_opts + 1);
            n->keys[n->nr_opts] = g_steal_pointer(&key);
            n->values[n->nr_opts] = g_steal_pointer(&value);
            n->nr_opts++;
        }
    }
    return 0;
}

int rbd_parse_name(const char *filename, RbdName *n, Error **errp)
{
    const char *p = filename;
    char delim;
    char *tok;
    int ret = -EINVAL;

    memset(n, 0, sizeof(*n));
    if (g_str_has_prefix(p, "rbd:")) {
        p += 4;
    }
    if (strlen(p) > 4 * RBD_NAME_MAX) {
        error_setg(errp, "rbd: image name is too long");
        return -EINVAL;
    }
    n->pool = rbd_next_tok(&p, "/@:", &delim);
    if (delim != '/') {
        error_setg(errp, "rbd: pool name is required (rbd:pool/image)");
        goto fail;
    }
    tok = rbd_next_tok(&p, "/@:", &delim);
    if (delim == '/') {
        n->ns = tok;
        tok = rbd_next_tok(&p, "/@:", &delim);
        if (delim == '/') {
            g_free(tok);
            error_setg(errp, "rbd: too many '/' in the image name "
                       "(rbd:pool[/namespace]/image)");
            goto fail;
        }
    }
    n->image = tok;
    if (delim == '@') {
        n->snap = rbd_next_tok(&p, ":", &delim);
        if (!rbd_check_part("snapshot", n->snap, false, errp)) {
            goto fail;
        }
    }
    if (!rbd_check_part("pool", n->pool, false, errp) ||
        (n->ns && !rbd_check_part("namespace", n->ns, true, errp)) ||
        !rbd_check_part("image", n->image, false, errp)) {
        goto fail;
    }
    if (delim == ':' && rbd_parse_opts(p, n, errp) < 0) {
        goto fail;
    }
    return 0;

fail:
    rbd_name_clear(n);
    return ret;
}

void rbd_name_clear(RbdName *n)
{
    g_free(n->pool);
    g_free(n->ns);
    g_free(n->image);
    g_free(n->snap);
    g_free(n->conf);
    g_free(n->user);
    for (unsigned i = 0; i < n->nr_opts; i++) {
        g_free(n->keys[i]);
        g_free(n->values[i]);
    }
    g_free(n->keys);
    g_free(n->values);
    memset(n, 0, sizeof(*n));
}

bool rbd_name_has_config(const RbdName *n, const char **what)
{
    if (n->conf) {
        *what = "conf";
    } else if (n->user) {
        *what = "id";
    } else if (n->nr_opts) {
        *what = n->keys[0];
    } else {
        return false;
    }
    return true;
}
