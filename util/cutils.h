/* SPDX-License-Identifier: GPL-2.0-or-later */
/* String, number and size helpers shared by the tools and drivers. */
#ifndef QEMU_CUTILS_H
#define QEMU_CUTILS_H

#include "util/osdep.h"

/*
 * Parse a size with an optional binary suffix (b/B bytes, k/K, M, G, T, P, E;
 * decimal fractions allowed: "1.5G"). Without suffix the unit is bytes.
 * *end, when non-NULL, receives the first unparsed char (then trailing
 * garbage is allowed); otherwise the whole string must be consumed.
 * Returns 0, -EINVAL (malformed) or -ERANGE (overflow).
 */
int qemu_strtosz(const char *nptr, const char **end, uint64_t *result);
/* As qemu_strtosz but the default unit (no suffix) is unit bytes. */
int qemu_strtosz_unit(const char *nptr, const char **end, uint64_t unit,
                      uint64_t *result);
/* Strict integer parsers: whole string (unless end), base 0 allowed. */
int qemu_strtoi64(const char *nptr, const char **end, int base,
                  int64_t *result);
int qemu_strtou64(const char *nptr, const char **end, int base,
                  uint64_t *result);
int qemu_strtoi(const char *nptr, const char **end, int base, int *result);

/* "64 MiB", "1.5 KiB", "512 B" (QEMU's size_to_str, "%0.3g %s"). g_free. */
char *size_to_str(uint64_t val);

/* Directory-relative path join for backing files: if filename is relative,
 * interpret it relative to the directory of base_path. g_free the result. */
char *path_combine(const char *base_path, const char *filename);
bool path_is_absolute(const char *path);
/* Does path start with "proto:" (a colon before any slash)? */
bool path_is_protocol_name(const char *path);

/* strncpy that always NUL-terminates (pstrcpy in QEMU). */
void pstrcpy(char *buf, int buf_size, const char *str);
/* If str starts with val, store the rest in *ptr and return true. */
bool strstart(const char *str, const char *val, const char **ptr);

int qemu_fdatasync(int fd);

#endif
