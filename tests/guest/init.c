/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The whole userland of the guest boot test (iotest 180): PID 1 of a tiny
 * initramfs. It loads the virtio modules it was given, then, for each disk
 * named on the kernel command line after "--", writes a pattern, flushes,
 * drops the page cache, re-reads the pattern with O_DIRECT and checks data
 * the host wrote before the boot; zeroes and discards a range; prints
 * "GUEST: ..." markers on the console and powers off.
 *
 * Built with gcc -static at test time; no libc beyond the syscalls.
 *
 * Disk layout it expects (the test prepares it; every range is bytes):
 *   [0, 1M)              guest writes 0xa1
 *   [1M + 512, +64K)     guest writes 0xb2 (sector- but not page-aligned)
 *   [2M, +1M)            host wrote 0x5a; guest only reads it
 *   [3M, +256K)          host wrote 0x44; guest zeroes it (BLKZEROOUT)
 *   [4M, +256K)          host wrote 0x45; guest discards it (BLKDISCARD)
 *   [size - 64K, size)   guest writes 0xc3 (the last sectors)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)
#define DEV_WAIT_MS 120000  /* a loaded TCG guest may probe slowly */

static int failures;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if (n > (int)sizeof(buf) - 2) {
        n = sizeof(buf) - 2;
    }
    buf[n++] = '\n';
    if (write(1, buf, n) < 0) {
        /* nowhere else to say it */
    }
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    char buf[400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    say("GUEST: FAIL %s", buf);
    failures++;
}

static void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    /* not reached; if it were, the kernel panics and -no-reboot ends QEMU */
    _exit(1);
}

/* Console first: the initramfs has no /dev/console node of its own. */
static void setup_console(void)
{
    int fd;

    mkdir("/dev", 0755);
    mkdir("/proc", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2) {
            close(fd);
        }
    }
}

/* Load /modules/NAME.ko for each NAME listed in /modules/order. */
static void load_modules(void)
{
    char list[1024], path[256];
    char *name, *save;
    ssize_t n;
    int fd;

    fd = open("/modules/order", O_RDONLY);
    if (fd < 0) {
        say("GUEST: no modules to load (virtio built in)");
        return;
    }
    n = read(fd, list, sizeof(list) - 1);
    close(fd);
    if (n < 0) {
        n = 0;
    }
    list[n] = '\0';
    for (name = strtok_r(list, " \n", &save); name;
         name = strtok_r(NULL, " \n", &save)) {
        snprintf(path, sizeof(path), "/modules/%s.ko", name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fail("open %s: %s", path, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST) {
            fail("finit_module %s: %s", name, strerror(errno));
        }
        close(fd);
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        /* the rest of it */
    }
}

/* The device node appears once virtio_blk probed the disk: poll, bounded. */
static int wait_for_device(const char *dev)
{
    struct stat st;
    long waited;

    for (waited = 0; waited < DEV_WAIT_MS; waited += 10) {
        if (stat(dev, &st) == 0 && S_ISBLK(st.st_mode)) {
            return 0;
        }
        sleep_ms(10);
    }
    return -1;
}

static int pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t len, off_t off)
{
    char *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= n;
        off += n;
    }
    return 0;
}

struct range {
    uint64_t off, len;
    int byte;
};

static void *big_buf;       /* 1 MiB, page-aligned (O_DIRECT) */

static void write_range(const char *dev, int fd, const struct range *r)
{
    memset(big_buf, r->byte, r->len);
    if (pwrite_all(fd, big_buf, r->len, r->off) < 0) {
        fail("%s: write 0x%02x at %llu+%llu: %s", dev, r->byte,
             (unsigned long long)r->off, (unsigned long long)r->len,
             strerror(errno));
    }
}

/* Read through O_DIRECT (the disk, not the page cache) and compare. */
static void check_range(const char *dev, int dfd, const struct range *r)
{
    const unsigned char *p = big_buf;
    uint64_t i;

    memset(big_buf, ~r->byte, r->len);
    if (pread_all(dfd, big_buf, r->len, r->off) < 0) {
        fail("%s: read at %llu+%llu: %s", dev, (unsigned long long)r->off,
             (unsigned long long)r->len, strerror(errno));
        return;
    }
    for (i = 0; i < r->len; i++) {
        if (p[i] != r->byte) {
            fail("%s: byte %llu is 0x%02x, expected 0x%02x", dev,
                 (unsigned long long)(r->off + i), p[i], r->byte);
            return;
        }
    }
    say("GUEST: %s: %llu+%llu reads 0x%02x", dev, (unsigned long long)r->off,
        (unsigned long long)r->len, r->byte);
}

static void test_disk(const char *dev)
{
    uint64_t size, zr[2];
    int fd, dfd, i;

    if (wait_for_device(dev) < 0) {
        fail("%s did not appear", dev);
        return;
    }
    fd = open(dev, O_RDWR);
    dfd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0 || dfd < 0) {
        fail("open %s: %s", dev, strerror(errno));
        return;
    }
    if (ioctl(fd, BLKGETSIZE64, &size) < 0 || size < 8 * MIB) {
        fail("%s: size unknown or below 8 MiB", dev);
        return;
    }
    say("GUEST: %s: %llu bytes", dev, (unsigned long long)size);

    const struct range written[] = {
        { 0, MIB, 0xa1 },
        { MIB + 512, 64 * 1024, 0xb2 },
        { size - 64 * 1024, 64 * 1024, 0xc3 },
    };
    const struct range host = { 2 * MIB, MIB, 0x5a };
    const struct range zeroed = { 3 * MIB, 256 * 1024, 0 };
    const struct range discarded = { 4 * MIB, 256 * 1024, 0 };

    check_range(dev, dfd, &host);
    for (i = 0; i < 3; i++) {
        write_range(dev, fd, &written[i]);
    }
    if (fsync(fd) < 0) {
        fail("%s: fsync: %s", dev, strerror(errno));
    }
    zr[0] = zeroed.off;
    zr[1] = zeroed.len;
    if (ioctl(fd, BLKZEROOUT, zr) < 0) {
        fail("%s: BLKZEROOUT: %s", dev, strerror(errno));
    }
    /* a discard need not zero: the test only checks it was accepted */
    zr[0] = discarded.off;
    zr[1] = discarded.len;
    if (ioctl(fd, BLKDISCARD, zr) < 0) {
        fail("%s: BLKDISCARD: %s", dev, strerror(errno));
    }
    if (fsync(fd) < 0) {
        fail("%s: fsync: %s", dev, strerror(errno));
    }
    say("GUEST: %s: written and flushed", dev);
    if (ioctl(fd, BLKFLSBUF, 0) < 0) {
        fail("%s: BLKFLSBUF: %s", dev, strerror(errno));
    }
    for (i = 0; i < 3; i++) {
        check_range(dev, dfd, &written[i]);
    }
    check_range(dev, dfd, &zeroed);
    check_range(dev, dfd, &host);
    close(dfd);
    close(fd);
}

int main(int argc, char **argv)
{
    int i;

    setup_console();
    say("GUEST: init started");
    load_modules();
    big_buf = aligned_alloc(4096, MIB);
    if (!big_buf) {
        fail("out of memory");
        power_off();
    }
    for (i = 1; i < argc; i++) {
        char dev[64];

        snprintf(dev, sizeof(dev), "/dev/%s", argv[i]);
        test_disk(dev);
    }
    if (argc < 2) {
        fail("no disk named on the command line");
    }
    if (failures) {
        say("GUEST: DONE with %d failures", failures);
    } else {
        say("GUEST: DONE all passed");
    }
    power_off();
    return 0;
}
