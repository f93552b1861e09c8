/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78), as used
 * by iSCSI, ext4 and btrfs: journal sectors of on-disk formats carry one.
 */
#ifndef QEMU_CRC32C_H
#define QEMU_CRC32C_H

#include "util/osdep.h"

/*
 * Continue a CRC over buf: start with crc = 0. crc32c(0, "123456789", 9)
 * is 0xE3069283 (the standard check value).
 */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

#endif
