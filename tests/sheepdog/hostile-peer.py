#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# A hostile Sheepdog peer for tests: a minimal sheep serving one VDI that misbehaves in one chosen way.
"""usage: hostile-peer.py MODE PORTFILE [COUNTFILE]

Listens on 127.0.0.1 (a free port, written to PORTFILE) and serves the VDI
"vol" (8 MiB, vid 0x123, object 0 allocated) until killed. MODE chooses
the misbehaviour; COUNTFILE receives the number of connections accepted so
far after each accept.

  probe-garbage probe-truncated probe-wrong-id probe-huge-length
  probe-close probe-silent       the first request of a connection
  lock-garbage lock-wrong-id lock-huge-length lock-wrong-opcode
  lock-close                     LOCK_VDI (after a good probe)
  short-inode     the inode read is answered SUCCESS with only its header
  short-read      a data read is answered SUCCESS with 100 of its bytes
  trickle         LOCK_VDI's answer comes one byte every 0.25 s
  endless         LOCK_VDI's answer announces 2 GiB of data and sends on
  storm           after the open: the first write closes the connection,
                  every later connection is closed at once
"""

import socket
import struct
import sys
import threading
import time

VID = 0x123
INODE_CLIENT = 4664 + 4 * (1 << 20)


def inode():
    h = bytearray(4664)
    h[0:3] = b'vol'
    struct.pack_into('<QQQQQBBBBIIII', h, 512, 1 << 32, 0, 0, 8 << 20, 0,
                     0, 0, 1, 22, 1, VID, 0, 0)
    m = bytearray(4 * (1 << 20))
    struct.pack_into('<I', m, 0, VID)          # object 0 is allocated
    return bytes(h + m)


INODE = inode()


def recv_exact(c, n):
    buf = b''
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            raise ConnectionError
        buf += d
    return buf


def answer(c, hdr, result=0, data=b'', vid=0, length=None, rid=None,
           opcode=None):
    rsp = bytearray(48)
    rsp[0] = 2
    rsp[1] = hdr[1] if opcode is None else opcode
    struct.pack_into('<III', rsp, 8,
                     struct.unpack_from('<I', hdr, 8)[0] if rid is None
                     else rid, len(data) if length is None else length,
                     result)
    struct.pack_into('<I', rsp, 24, vid)
    c.sendall(bytes(rsp) + data)


def misbehave(c, hdr, how):
    rid = struct.unpack_from('<I', hdr, 8)[0]
    if how == 'garbage':
        c.sendall(bytes((i * 37 + 11) & 0xff for i in range(48)))
    elif how == 'truncated':
        c.sendall(bytes(20))
    elif how == 'wrong-id':
        answer(c, hdr, rid=rid + 1000)
    elif how == 'huge-length':
        answer(c, hdr, length=0x7fffffff)
        c.sendall(b'x' * 100)
    elif how == 'wrong-opcode':
        answer(c, hdr, opcode=0x77)
    elif how == 'silent':
        time.sleep(3600)
    return False                                # close


def serve(c, mode, state):
    first = True
    while True:
        hdr = recv_exact(c, 48)
        op, flags, length = hdr[1], struct.unpack_from('<H', hdr, 2)[0], \
            struct.unpack_from('<I', hdr, 12)[0]
        payload = recv_exact(c, length) if flags & 1 and length else b''
        oid, offset = struct.unpack_from('<Q', hdr, 16)[0], \
            struct.unpack_from('<I', hdr, 40)[0]
        if first and mode.startswith('probe-'):
            misbehave(c, hdr, mode[6:])
            return
        first = False
        if op == 0x18:                          # GET_CLUSTER_DEFAULT
            rsp = bytearray(48)
            rsp[0], rsp[1], rsp[20], rsp[22] = 2, 0x18, 1, 22
            rsp[8:12] = hdr[8:12]
            c.sendall(bytes(rsp))
        elif op == 0x12:                        # LOCK_VDI
            if mode.startswith('lock-'):
                misbehave(c, hdr, mode[5:])
                return
            if mode == 'trickle':
                rsp = bytearray(48)
                rsp[0], rsp[1] = 2, 0x12
                rsp[8:12] = hdr[8:12]
                for b in bytes(rsp) * 1000:
                    c.sendall(bytes([b]))
                    time.sleep(0.25)
                return
            if mode == 'endless':
                answer(c, hdr, length=0x7fffffff)
                while True:
                    c.sendall(bytes(65536))
            answer(c, hdr, vid=VID)
        elif op == 0x02 and oid >> 63:          # READ_OBJ of the inode
            data = INODE[offset:offset + length]
            if mode == 'short-inode':
                data = data[:4664]
            answer(c, hdr, data=data)
        elif op == 0x02:                        # READ_OBJ of data
            data = bytes([0x5a]) * length
            answer(c, hdr, data=data[:100] if mode == 'short-read' else data)
        elif op in (0x01, 0x03):                # writes
            if mode == 'storm':
                state['storming'] = True
                return
            answer(c, hdr)
        else:                                   # RELEASE_VDI and the rest
            answer(c, hdr)


def main():
    mode, portfile = sys.argv[1], sys.argv[2]
    countfile = sys.argv[3] if len(sys.argv) > 3 else None
    ls = socket.socket()
    ls.bind(('127.0.0.1', 0))
    ls.listen(64)
    with open(portfile + '.tmp', 'w') as f:
        f.write(str(ls.getsockname()[1]))
    import os
    os.rename(portfile + '.tmp', portfile)
    state = {'storming': False, 'count': 0}
    while True:
        c, _ = ls.accept()
        state['count'] += 1
        if countfile:
            with open(countfile, 'w') as f:
                f.write('%d\n' % state['count'])
        if state['storming']:
            c.close()
            continue

        def run(c=c):
            try:
                serve(c, mode, state)
            except (ConnectionError, OSError):
                pass
            c.close()
        threading.Thread(target=run, daemon=True).start()


if __name__ == '__main__':
    main()
