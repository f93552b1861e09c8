/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Helpers shared by the NBD server and client: error and name mapping. */
#include "nbd/nbd-proto.h"

uint32_t nbd_errno_to_wire(int err)
{
    switch (err < 0 ? -err : err) {
    case 0:         return NBD_SUCCESS;
    case EPERM:
    case EROFS:     return NBD_EPERM;
    case ENOMEM:    return NBD_ENOMEM;
    case EINVAL:    return NBD_EINVAL;
    case EFBIG:
    case EDQUOT:
    case ENOSPC:    return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP:   return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default:        return NBD_EIO;
    }
}

int nbd_wire_to_errno(uint32_t err)
{
    switch (err) {
    case NBD_SUCCESS:   return 0;
    case NBD_EPERM:     return -EPERM;
    case NBD_ENOMEM:    return -ENOMEM;
    case NBD_EINVAL:    return -EINVAL;
    case NBD_ENOSPC:    return -ENOSPC;
    case NBD_EOVERFLOW: return -EOVERFLOW;
    case NBD_ENOTSUP:   return -ENOTSUP;
    case NBD_ESHUTDOWN: return -ESHUTDOWN;
    default:            return -EIO;
    }
}

const char *nbd_opt_name(uint32_t opt)
{
    static const char *const names[] = {
        [NBD_OPT_EXPORT_NAME] = "export name",
        [NBD_OPT_ABORT] = "abort",
        [NBD_OPT_LIST] = "list",
        [NBD_OPT_PEEK_EXPORT] = "peek export",
        [NBD_OPT_STARTTLS] = "starttls",
        [NBD_OPT_INFO] = "info",
        [NBD_OPT_GO] = "go",
        [NBD_OPT_STRUCTURED_REPLY] = "structured reply",
        [NBD_OPT_LIST_META_CONTEXT] = "list meta context",
        [NBD_OPT_SET_META_CONTEXT] = "set meta context",
    };
    return opt < G_N_ELEMENTS(names) && names[opt] ? names[opt] : "unknown";
}

const char *nbd_cmd_name(uint16_t cmd)
{
    static const char *const names[] = {
        [NBD_CMD_READ] = "read", [NBD_CMD_WRITE] = "write",
        [NBD_CMD_DISC] = "disconnect", [NBD_CMD_FLUSH] = "flush",
        [NBD_CMD_TRIM] = "trim", [NBD_CMD_CACHE] = "cache",
        [NBD_CMD_WRITE_ZEROES] = "write zeroes",
        [NBD_CMD_BLOCK_STATUS] = "block status",
    };
    return cmd < G_N_ELEMENTS(names) && names[cmd] ? names[cmd] : "unknown";
}
