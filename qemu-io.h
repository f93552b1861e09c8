/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Declarations shared by qemu-io's main program (qemu-io.c) and its command
 * table (qemu-io-cmds.c): the command descriptor, registration and dispatch.
 */
#ifndef QEMU_IO_H
#define QEMU_IO_H

#include "block-backend.h"

/*
 * A command handler returns 0 on success or a negative errno; any negative
 * return makes qemu-io exit with status 1. bs is NULL when no image is open
 * (only commands flagged CMD_NOFILE_OK or CMD_FLAG_GLOBAL then run).
 */
typedef int (*cfunc_t)(BlockBackend *blk, int argc, char **argv);
typedef void (*helpfunc_t)(void);

/* Runs without an open image (open, sleep, ...). */
#define CMD_NOFILE_OK   0x01
/* Always runs, never checked against the open image (help, quit). */
#define CMD_FLAG_GLOBAL 0x02
/* Modifies the image: refused on a read-only image before it runs. */
#define CMD_NEEDS_WRITE 0x04

typedef struct cmdinfo {
    const char *name;
    const char *altname;        /* e.g. "q" for quit, or NULL */
    cfunc_t cfunc;
    int argmin;                 /* minimum number of arguments */
    int argmax;                 /* maximum, or -1 for no limit */
    int flags;                  /* CMD_* */
    const char *args;           /* usage synopsis, or NULL */
    const char *oneline;        /* short description */
    helpfunc_t help;            /* long help, or NULL */
} cmdinfo_t;

/* Misalign I/O buffers by 16 bytes (-m), to exercise bounce buffering. */
extern bool qemuio_misalign;

/* Register ci (copied); the table is kept sorted by name. */
void qemuio_add_command(const cmdinfo_t *ci);
/* Print "name args -- oneline" on stdout; returns 0. */
int qemuio_command_usage(const cmdinfo_t *ci);
/*
 * Split cmd at spaces and run it against bs. Returns the handler's result,
 * or -EINVAL for an unknown command, a bad argument count or a missing image.
 */
int qemuio_command(BlockBackend *blk, const char *cmd);
/* Wait until every aio_read/aio_write request has completed. */
void qemuio_wait_aio(void);

#endif
