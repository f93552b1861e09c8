/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * librbd and librados, loaded with dlopen the first time an rbd image is
 * opened or created.  Linking them into every tool cost each qemu-img,
 * qemu-io and qemu-nbd start about 13 ms of symbol relocation (26 more
 * shared objects), paid even by `qemu-img info` of a local file.  QEMU
 * builds its rbd driver as a loadable module for the same reason.
 *
 * block/rbd.c includes this header after <rbd/librbd.h>: every library
 * call there goes through the table below, with the library's own
 * prototypes (typeof), so the compiler still checks every call.
 */
#ifndef BLOCK_RBD_LIB_H
#define BLOCK_RBD_LIB_H

#include <rbd/librbd.h>
#include "util/error.h"

#define RBD_LIB_SYMBOLS(X) \
    X(rados_conf_get) X(rados_conf_read_file) X(rados_conf_set) \
    X(rados_connect) X(rados_create) X(rados_ioctx_create) \
    X(rados_ioctx_destroy) X(rados_ioctx_set_namespace) X(rados_shutdown) \
    X(rbd_aio_create_completion) X(rbd_aio_discard) X(rbd_aio_flush) \
    X(rbd_aio_get_return_value) X(rbd_aio_readv) X(rbd_aio_release) \
    X(rbd_aio_write_zeroes) X(rbd_aio_writev) X(rbd_clone3) X(rbd_close) \
    X(rbd_create4) X(rbd_diff_iterate2) X(rbd_encryption_format) \
    X(rbd_encryption_load) X(rbd_get_features) X(rbd_get_flags) \
    X(rbd_get_parent) X(rbd_get_size) X(rbd_image_options_create) \
    X(rbd_image_options_destroy) X(rbd_image_options_set_uint64) \
    X(rbd_linked_image_spec_cleanup) X(rbd_open) X(rbd_open_read_only) \
    X(rbd_remove) X(rbd_resize) X(rbd_snap_create) \
    X(rbd_snap_get_timestamp) X(rbd_snap_list) X(rbd_snap_list_end) \
    X(rbd_snap_remove) X(rbd_snap_rollback) X(rbd_snap_spec_cleanup) \
    X(rbd_stat)

#define RBD_LIB_MEMBER(name) __typeof__(name) *name;
typedef struct RbdLib {
    RBD_LIB_SYMBOLS(RBD_LIB_MEMBER)
} RbdLib;
#undef RBD_LIB_MEMBER

extern RbdLib rbd_lib;

/*
 * Load the libraries once (thread-safe).  Returns 0, or -ENOTSUP with a
 * one-line error naming the library or symbol that is missing.
 */
int rbd_lib_load(Error **errp);

#ifndef RBD_LIB_NO_REDIRECT
#define rados_conf_get rbd_lib.rados_conf_get
#define rados_conf_read_file rbd_lib.rados_conf_read_file
#define rados_conf_set rbd_lib.rados_conf_set
#define rados_connect rbd_lib.rados_connect
#define rados_create rbd_lib.rados_create
#define rados_ioctx_create rbd_lib.rados_ioctx_create
#define rados_ioctx_destroy rbd_lib.rados_ioctx_destroy
#define rados_ioctx_set_namespace rbd_lib.rados_ioctx_set_namespace
#define rados_shutdown rbd_lib.rados_shutdown
#define rbd_aio_create_completion rbd_lib.rbd_aio_create_completion
#define rbd_aio_discard rbd_lib.rbd_aio_discard
#define rbd_aio_flush rbd_lib.rbd_aio_flush
#define rbd_aio_get_return_value rbd_lib.rbd_aio_get_return_value
#define rbd_aio_readv rbd_lib.rbd_aio_readv
#define rbd_aio_release rbd_lib.rbd_aio_release
#define rbd_aio_write_zeroes rbd_lib.rbd_aio_write_zeroes
#define rbd_aio_writev rbd_lib.rbd_aio_writev
#define rbd_clone3 rbd_lib.rbd_clone3
#define rbd_close rbd_lib.rbd_close
#define rbd_create4 rbd_lib.rbd_create4
#define rbd_diff_iterate2 rbd_lib.rbd_diff_iterate2
#define rbd_encryption_format rbd_lib.rbd_encryption_format
#define rbd_encryption_load rbd_lib.rbd_encryption_load
#define rbd_get_features rbd_lib.rbd_get_features
#define rbd_get_flags rbd_lib.rbd_get_flags
#define rbd_get_parent rbd_lib.rbd_get_parent
#define rbd_get_size rbd_lib.rbd_get_size
#define rbd_image_options_create rbd_lib.rbd_image_options_create
#define rbd_image_options_destroy rbd_lib.rbd_image_options_destroy
#define rbd_image_options_set_uint64 rbd_lib.rbd_image_options_set_uint64
#define rbd_linked_image_spec_cleanup rbd_lib.rbd_linked_image_spec_cleanup
#define rbd_open rbd_lib.rbd_open
#define rbd_open_read_only rbd_lib.rbd_open_read_only
#define rbd_remove rbd_lib.rbd_remove
#define rbd_resize rbd_lib.rbd_resize
#define rbd_snap_create rbd_lib.rbd_snap_create
#define rbd_snap_get_timestamp rbd_lib.rbd_snap_get_timestamp
#define rbd_snap_list rbd_lib.rbd_snap_list
#define rbd_snap_list_end rbd_lib.rbd_snap_list_end
#define rbd_snap_remove rbd_lib.rbd_snap_remove
#define rbd_snap_rollback rbd_lib.rbd_snap_rollback
#define rbd_snap_spec_cleanup rbd_lib.rbd_snap_spec_cleanup
#define rbd_stat rbd_lib.rbd_stat
#endif

#endif
