/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The command line's secret objects (util/secret.h). */
#include "util/secret.h"
#include "util/option.h"

typedef struct Secret {
    char *id;
    GBytes *data;
} Secret;

static GPtrArray *secrets;

static void secret_free(gpointer p)
{
    Secret *s = p;

    g_free(s->id);
    g_bytes_unref(s->data);
    g_free(s);
}

static Secret *secret_find(const char *id)
{
    for (guint i = 0; secrets && i < secrets->len; i++) {
        Secret *s = g_ptr_array_index(secrets, i);
        if (!strcmp(s->id, id)) {
            return s;
        }
    }
    return NULL;
}

static GBytes *secret_read(const char *data, const char *file, Error **errp)
{
    GError *gerr = NULL;
    gchar *buf;
    gsize len;

    if (!!data == !!file) {
        error_setg(errp, "secret: exactly one of 'data' and 'file' is "
                   "required");
        return NULL;
    }
    if (data) {
        return g_bytes_new(data, strlen(data));
    }
    if (!g_file_get_contents(file, &buf, &len, &gerr)) {
        error_setg(errp, "secret: cannot read '%s': %s", file, gerr->message);
        g_error_free(gerr);
        return NULL;
    }
    if (len > SECRET_MAX_SIZE) {
        error_setg(errp, "secret: '%s' is larger than %d bytes", file,
                   SECRET_MAX_SIZE);
        g_free(buf);
        return NULL;
    }
    return g_bytes_new_take(buf, len);
}

static bool secret_valid_base64(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!g_ascii_isalnum(s[i]) && !strchr("+/=\n\r", s[i])) {
            return false;
        }
    }
    return true;
}

int secret_object_add(const char *def, Error **errp)
{
    QemuOpts *opts = qemu_opts_new();
    static const QemuOptDesc desc[] = {
        { "qom-type", QEMU_OPT_STRING, "" },
        { "id", QEMU_OPT_STRING, "" },
        { "data", QEMU_OPT_STRING, "" },
        { "file", QEMU_OPT_STRING, "" },
        { "format", QEMU_OPT_STRING, "" },
        { NULL }
    };
    const QemuOptDesc *descs[] = { desc, NULL };
    const char *type, *id, *format;
    GBytes *data = NULL;
    Secret *s;
    int ret = -EINVAL;

    if (strlen(def) > SECRET_MAX_SIZE * 2) {
        error_setg(errp, "--object definition is too long");
        goto out;
    }
    if (qemu_opts_parse(opts, def, "qom-type", errp) < 0 ||
        qemu_opts_validate(opts, descs, errp) < 0) {
        goto out;
    }
    type = qemu_opt_get(opts, "qom-type");
    id = qemu_opt_get(opts, "id");
    format = qemu_opt_get(opts, "format");
    if (!type || strcmp(type, "secret")) {
        error_setg(errp, "Invalid object type '%s' (only 'secret' is "
                   "supported)", type ? type : "");
        goto out;
    }
    if (!id || !*id) {
        error_setg(errp, "Parameter 'id' is missing");
        goto out;
    }
    if (secret_find(id)) {
        error_setg(errp, "attempt to add duplicate property '%s'", id);
        goto out;
    }
    if (format && strcmp(format, "raw") && strcmp(format, "base64")) {
        error_setg(errp, "secret: format must be raw or base64, not '%s'",
                   format);
        goto out;
    }
    data = secret_read(qemu_opt_get(opts, "data"), qemu_opt_get(opts, "file"),
                       errp);
    if (!data) {
        goto out;
    }
    if (format && !strcmp(format, "base64")) {
        gsize len;
        const char *b64 = g_bytes_get_data(data, &len);
        g_autofree char *text = g_strndup(b64, len);
        guchar *raw;

        if (!secret_valid_base64(b64, len)) {
            error_setg(errp, "secret '%s': invalid base64 data", id);
            goto out;
        }
        raw = g_base64_decode(text, &len);
        g_bytes_unref(data);
        data = g_bytes_new_take(raw, len);
    }
    s = g_new0(Secret, 1);
    s->id = g_strdup(id);
    s->data = g_steal_pointer(&data);
    if (!secrets) {
        secrets = g_ptr_array_new_with_free_func(secret_free);
    }
    g_ptr_array_add(secrets, s);
    ret = 0;
out:
    if (data) {
        g_bytes_unref(data);
    }
    qemu_opts_del(opts);
    return ret;
}

char *secret_lookup_base64(const char *id, Error **errp)
{
    Secret *s = secret_find(id);
    gsize len;
    const guchar *p;

    if (!s) {
        error_setg(errp, "No secret with id '%s'", id);
        return NULL;
    }
    p = g_bytes_get_data(s->data, &len);
    return g_base64_encode(p, len);
}

char *secret_lookup_bytes(const char *id, size_t *len, Error **errp)
{
    Secret *s = secret_find(id);
    gsize n;
    const char *p;

    if (!s) {
        error_setg(errp, "No secret with id '%s'", id);
        return NULL;
    }
    p = g_bytes_get_data(s->data, &n);
    *len = n;
    return g_strndup(p ? p : "", n);
}

void secret_clear_all(void)
{
    if (secrets) {
        g_ptr_array_free(secrets, true);
        secrets = NULL;
    }
}
