/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Strict number and size parsing, size formatting, path and string helpers. */
#include <math.h>

#include "util/cutils.h"

/*
 * Shared tail of the strict parsers: errno from strto*() and the end pointer
 * decide between success, -EINVAL (nothing parsed / trailing garbage) and
 * -ERANGE.
 */
static int check_strtox_result(const char *nptr, char *ep, const char **end,
                               int saved_errno)
{
    if (ep == nptr) {
        if (end) {
            *end = nptr;
        }
        return -EINVAL;
    }
    if (end) {
        *end = ep;
    } else if (*ep != '\0') {
        return -EINVAL;
    }
    if (saved_errno == ERANGE) {
        return -ERANGE;
    }
    return saved_errno ? -saved_errno : 0;
}

int qemu_strtoi64(const char *nptr, const char **end, int base,
                  int64_t *result)
{
    char *ep;
    long long v;

    if (!nptr) {
        if (end) {
            *end = NULL;
        }
        return -EINVAL;
    }
    errno = 0;
    v = strtoll(nptr, &ep, base);
    *result = v;
    return check_strtox_result(nptr, ep, end, errno);
}

int qemu_strtou64(const char *nptr, const char **end, int base,
                  uint64_t *result)
{
    const char *p;
    char *ep;
    unsigned long long v;

    if (!nptr) {
        if (end) {
            *end = NULL;
        }
        return -EINVAL;
    }
    /* strtoull() silently negates "-1" into UINT64_MAX; sizes must not. */
    for (p = nptr; g_ascii_isspace(*p); p++) {
    }
    if (*p == '-') {
        if (end) {
            *end = nptr;
        }
        return -EINVAL;
    }
    errno = 0;
    v = strtoull(nptr, &ep, base);
    *result = v;
    return check_strtox_result(nptr, ep, end, errno);
}

int qemu_strtoi(const char *nptr, const char **end, int base, int *result)
{
    int64_t v;
    int ret = qemu_strtoi64(nptr, end, base, &v);

    if (ret == -EINVAL) {
        return ret;
    }
    if (v > INT_MAX) {
        *result = INT_MAX;
        return -ERANGE;
    }
    if (v < INT_MIN) {
        *result = INT_MIN;
        return -ERANGE;
    }
    *result = (int)v;
    return ret;
}

static uint64_t suffix_mul(char c, uint64_t unit)
{
    switch (c) {
    case 'b': case 'B': return 1;
    case 'k': case 'K': return KiB;
    case 'm': case 'M': return MiB;
    case 'g': case 'G': return GiB;
    case 't': case 'T': return TiB;
    case 'p': case 'P': return PiB;
    case 'e': case 'E': return EiB;
    default: return 0;
    }
}

int qemu_strtosz_unit(const char *nptr, const char **end, uint64_t unit,
                      uint64_t *result)
{
    const char *p, *ep;
    uint64_t val, mul;
    double fraction = 0.0;
    bool hex = false, has_fraction = false;
    int ret;

    if (end) {
        *end = nptr;
    }
    if (!nptr) {
        return -EINVAL;
    }
    /* Decimal integer part (so "010" is ten); "0x" switches to hex. */
    ret = qemu_strtou64(nptr, &ep, 10, &val);
    if (ret == -EINVAL) {
        return ret;
    }
    if (ret == 0 && val == 0 && (*ep == 'x' || *ep == 'X')) {
        ret = qemu_strtou64(nptr, &ep, 16, &val);
        if (ret == -EINVAL) {
            return ret;
        }
        hex = true;
    }
    if (ret == -ERANGE) {
        return ret;
    }
    p = ep;
    if (*p == '.') {
        char *fend;

        if (hex) {
            return -EINVAL;
        }
        if (g_ascii_isdigit(p[1])) {
            errno = 0;
            fraction = strtod(p, &fend);
            if (errno || !isfinite(fraction)) {
                return -EINVAL;
            }
            p = fend;
        } else {
            p++;
        }
        has_fraction = true;
    }
    mul = suffix_mul(*p, unit);
    if (mul) {
        p++;
    } else {
        mul = unit;
    }
    /* Fractions of the base unit would be partial bytes. */
    if (has_fraction && fraction != 0.0 && mul == 1) {
        return -EINVAL;
    }
    if (!end && *p != '\0') {
        return -EINVAL;
    }
    if (val > UINT64_MAX / mul) {
        return -ERANGE;
    }
    {
        uint64_t frac_bytes = (uint64_t)(fraction * (double)mul);

        if (val * mul > UINT64_MAX - frac_bytes) {
            return -ERANGE;
        }
        *result = val * mul + frac_bytes;
    }
    if (end) {
        *end = p;
    }
    return 0;
}

int qemu_strtosz(const char *nptr, const char **end, uint64_t *result)
{
    return qemu_strtosz_unit(nptr, end, 1, result);
}

char *size_to_str(uint64_t val)
{
    static const char *const units[] = {
        "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"
    };
    int exp, i;

    /*
     * Pick the unit in which the value is below 1000, so 1000 KiB prints as
     * "0.977 MiB" rather than a four-digit number (QEMU's behaviour).
     */
    frexp((double)val / (1000.0 / 1024.0), &exp);
    i = (exp - 1) / 10;
    if (i < 0) {
        i = 0;
    }
    if (i >= (int)ARRAY_SIZE(units)) {
        i = ARRAY_SIZE(units) - 1;
    }
    return g_strdup_printf("%0.3g %s", (double)val / (double)(1ULL << (i * 10)),
                           units[i]);
}

bool path_is_absolute(const char *path)
{
    return path[0] == '/';
}

/* "proto:rest" names; a colon after a slash belongs to a file name. */
static bool path_has_protocol(const char *path)
{
    return path[strcspn(path, ":/")] == ':';
}

bool path_is_protocol_name(const char *path)
{
    return path_has_protocol(path);
}

char *path_combine(const char *base_path, const char *filename)
{
    const char *p, *slash;
    size_t len;

    if (path_is_absolute(filename) || path_has_protocol(filename) ||
        filename[0] == '\0') {
        return g_strdup(filename);
    }
    /* Keep a "proto:" prefix of base, then its directory part. */
    p = path_has_protocol(base_path) ? strchr(base_path, ':') + 1 : base_path;
    slash = strrchr(base_path, '/');
    if (slash && slash + 1 > p) {
        p = slash + 1;
    }
    len = p - base_path;
    return g_strdup_printf("%.*s%s", (int)len, base_path, filename);
}

void pstrcpy(char *buf, int buf_size, const char *str)
{
    int i;

    if (buf_size <= 0) {
        return;
    }
    for (i = 0; i < buf_size - 1 && str[i]; i++) {
        buf[i] = str[i];
    }
    buf[i] = '\0';
}

bool strstart(const char *str, const char *val, const char **ptr)
{
    size_t n = strlen(val);

    if (strncmp(str, val, n) != 0) {
        return false;
    }
    if (ptr) {
        *ptr = str + n;
    }
    return true;
}

int qemu_fdatasync(int fd)
{
    int ret = fdatasync(fd);

    /* Some file systems (and pipes in tests) lack fdatasync; fsync then. */
    if (ret < 0 && (errno == EINVAL || errno == ENOSYS)) {
        ret = fsync(fd);
    }
    return ret < 0 ? -errno : 0;
}
