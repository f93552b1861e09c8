#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A misbehaving NBD server for iotest 176: listens on a Unix socket, writes
"ready" to the ready file, and serves every connection with one fault:

  silent          accept and say nothing
  bad-magic       a greeting that is not NBD
  huge-opt-reply  an option reply claiming 2 GiB of data
  silent-reply    negotiate, then never answer a request
  bad-offset      a data chunk outside the read's range
  huge-chunk      a chunk claiming 1 GiB
  bad-handle      a simple reply naming a handle never sent
  cut-reply       half a data chunk, then close
  bad-status      a block status chunk whose length is not 4 + 8n
  good            no fault (a control)

Usage: nbd-hostile-server.py SOCKET MODE READY_FILE
"""
import os
import socket
import struct
import sys
import threading

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x0003e889045565a9
SIZE = 1 << 20


def recvall(c, n):
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            raise EOFError
        buf += d
    return buf


def rep(c, opt, typ, data=b""):
    c.sendall(struct.pack(">QIII", REPMAGIC, opt, typ, len(data)) + data)


def negotiate(c, mode):
    c.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
    recvall(c, 4)
    while True:
        _, opt, ln = struct.unpack(">QII", recvall(c, 16))
        recvall(c, ln)
        if opt == 8:
            if mode == "huge-opt-reply":
                c.sendall(struct.pack(">QIII", REPMAGIC, opt, 1, 0x7fffffff))
                return False
            rep(c, opt, 1)
        elif opt == 10:
            rep(c, opt, 4, struct.pack(">I", 1) + b"base:allocation")
            rep(c, opt, 1)
        elif opt == 7:
            rep(c, opt, 3, struct.pack(">HQH", 0, SIZE, 1 | 4))
            rep(c, opt, 1)
            return True
        else:
            rep(c, opt, (1 << 31) + 1)


def chunk(c, flags, typ, handle, payload):
    c.sendall(struct.pack(">IHHQI", 0x668e33ef, flags, typ, handle,
                          len(payload)) + payload)


def transmit(c, mode):
    while True:
        _, flags, typ, handle, off, ln = struct.unpack(">IHHQQI",
                                                        recvall(c, 28))
        if typ == 2:
            return
        if typ == 1:
            recvall(c, ln)
        if mode == "silent-reply":
            continue
        if mode == "bad-offset" and typ == 0:
            chunk(c, 1, 1, handle, struct.pack(">Q", off + ln) + b"x" * 512)
        elif mode == "huge-chunk" and typ == 0:
            c.sendall(struct.pack(">IHHQI", 0x668e33ef, 1, 1, handle, 1 << 30))
        elif mode == "bad-handle":
            c.sendall(struct.pack(">IIQ", 0x67446698, 0, handle + 1000))
        elif mode == "cut-reply" and typ == 0:
            c.sendall(struct.pack(">IHHQIQ", 0x668e33ef, 1, 1, handle, 8 + ln,
                                  off) + b"y" * min(ln, 100))
            return
        elif mode == "bad-status" and typ == 7:
            chunk(c, 1, 5, handle, struct.pack(">IIIH", 1, ln, 0, 0))
        elif typ == 0:
            chunk(c, 1, 1, handle, struct.pack(">Q", off) + b"\0" * ln)
        elif typ == 7:
            chunk(c, 1, 5, handle, struct.pack(">III", 1, ln, 0))
        else:
            chunk(c, 1, 0, handle, b"")


def serve(c, mode):
    try:
        if mode == "silent":
            while c.recv(4096):
                pass
            return
        if mode == "bad-magic":
            c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\0" * 32)
            while c.recv(4096):
                pass
            return
        if negotiate(c, mode):
            transmit(c, mode)
        if mode == "cut-reply":
            return
        while c.recv(4096):
            pass
    except (EOFError, OSError):
        pass
    finally:
        c.close()


def main():
    path, mode, ready = sys.argv[1:4]
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(16)
    with open(ready, "w") as f:
        f.write("ready\n")
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, mode), daemon=True).start()


main()
