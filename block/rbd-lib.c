/* SPDX-License-Identifier: GPL-2.0-or-later */
/* librbd/librados loaded on first use: see rbd-lib.h. */
#define RBD_LIB_NO_REDIRECT
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include "block/rbd-lib.h"

RbdLib rbd_lib;

/* The sonames of the librbd1 and librados2 packages. */
#define RBD_SONAME "librbd.so.1"

static pthread_mutex_t rbd_lib_lock = PTHREAD_MUTEX_INITIALIZER;
static bool rbd_lib_loaded;

int rbd_lib_load(Error **errp)
{
    RbdLib lib;
    void *handle;
    int ret = 0;

    pthread_mutex_lock(&rbd_lib_lock);
    if (rbd_lib_loaded) {
        goto out;
    }
    /* librados comes in as librbd's dependency; dlsym on the handle
     * searches it too.  The libraries stay loaded until exit. */
    handle = dlopen(RBD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        error_setg(errp, "rbd: cannot load %s (Debian package librbd1): %s",
                   RBD_SONAME, dlerror());
        ret = -ENOTSUP;
        goto out;
    }
#define RBD_LIB_RESOLVE(name) \
    lib.name = (__typeof__(name) *)dlsym(handle, #name); \
    if (!lib.name) { \
        error_setg(errp, "rbd: %s lacks %s (librbd too old?)", \
                   RBD_SONAME, #name); \
        ret = -ENOTSUP; \
        goto out; \
    }
    RBD_LIB_SYMBOLS(RBD_LIB_RESOLVE)
#undef RBD_LIB_RESOLVE
    rbd_lib = lib;
    rbd_lib_loaded = true;
out:
    pthread_mutex_unlock(&rbd_lib_lock);
    return ret;
}
