/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qcow2 compressed clusters: raw deflate streams with a 4 KiB window
 * (zlib windowBits -12), the only compression type this build supports.
 * The same parameters as QEMU give byte-identical compressed clusters.
 */
#include "block/qcow2/qcow2.h"

#include <zlib.h>

/*
 * Compress src into dest. Returns the compressed size, -ENOMEM when it
 * does not fit into dest_size (store the cluster uncompressed), -EIO on
 * other errors.
 */
ssize_t qcow2_compress(void *dest, size_t dest_size, const void *src,
                       size_t src_size)
{
    z_stream strm = { 0 };
    ssize_t ret;

    if (deflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return -EIO;
    }
    strm.next_in = (Bytef *)src;
    strm.avail_in = src_size;
    strm.next_out = dest;
    strm.avail_out = dest_size;
    ret = deflate(&strm, Z_FINISH);
    if (ret == Z_STREAM_END) {
        ret = dest_size - strm.avail_out;
    } else {
        ret = ret == Z_OK ? -ENOMEM : -EIO;
    }
    deflateEnd(&strm);
    return ret;
}

/*
 * Decompress src (src_size bytes, which may run past the stream's end)
 * into exactly dest_size bytes. 0, or -EIO when the stream is damaged or
 * does not fill the cluster.
 */
int qcow2_decompress(void *dest, size_t dest_size, const void *src,
                     size_t src_size)
{
    z_stream strm = { 0 };
    int ret;

    if (inflateInit2(&strm, -12) != Z_OK) {
        return -EIO;
    }
    strm.next_in = (Bytef *)src;
    strm.avail_in = src_size;
    strm.next_out = dest;
    strm.avail_out = dest_size;
    ret = inflate(&strm, Z_FINISH);
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && strm.avail_out == 0) {
        ret = 0;
    } else {
        ret = -EIO;
    }
    inflateEnd(&strm);
    return ret;
}
