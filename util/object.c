/* SPDX-License-Identifier: GPL-2.0-or-later */
/* --object definitions, dispatched by type (util/object.h). */
#include "util/object.h"
#include "util/option.h"
#include "util/secret.h"
#include "util/tls.h"

int user_object_add(const char *def, Error **errp)
{
    QemuOpts *opts = qemu_opts_new();
    g_autofree char *type = NULL;
    int ret;

    if (qemu_opts_parse(opts, def, "qom-type", errp) < 0) {
        qemu_opts_del(opts);
        return -EINVAL;
    }
    type = g_strdup(qemu_opt_get(opts, "qom-type"));
    qemu_opts_del(opts);
    if (!type) {
        error_setg(errp, "Parameter 'qom-type' is missing");
        return -EINVAL;
    }
    if (!strcmp(type, "secret")) {
        ret = secret_object_add(def, errp);
    } else if (!strcmp(type, "tls-creds-x509")) {
        ret = tls_creds_object_add(def, errp);
    } else {
        error_setg(errp, "Invalid object type '%s' (only 'secret' and "
                   "'tls-creds-x509' are supported)", type);
        ret = -EINVAL;
    }
    return ret;
}
