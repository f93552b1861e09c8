#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# A raw Sheepdog client for tests: the store's own view in dog's formats, and requests dog or the driver would never send.
"""usage: sdtool.py [-a ADDR] -p PORT | -u SOCKET COMMAND ARGS...

Commands (output formats follow dog 1.0.1 so the two can be compared):
  vdi-list                 like `dog vdi list -r`, without the creation time
  object-map NAME [SNAP]   like `dog vdi object map [-s SNAP] NAME`
  md5 NAME SIZE [SNAP]     md5 of the first SIZE bytes of a VDI's data
  new-vdi NAME SIZE [SHIFT [STORE_POLICY [COPIES]]]
                           raw NEW_VDI (no checks), prints the vid
  poke NAME OFFSET HEX     write bytes into the working VDI's inode
  lookup NAME [SNAP]       GET_VDI_INFO (with the tag field), prints the vid
"""

import hashlib
import socket
import struct
import sys

READ_OBJ, WRITE_OBJ = 0x02, 0x03
NEW_VDI, GET_VDI_INFO, READ_VDIS = 0x11, 0x14, 0x15
F_WRITE = 1
HDR = 4664
NR_VDIS = 1 << 24
MAX_OBJS = 1 << 20
VDI_BIT = 1 << 63


class SdError(Exception):
    pass


class Client:
    def __init__(self, addr, port, path):
        if path:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.connect(path)
        else:
            self.s = socket.create_connection((addr, port))
        self.id = 1

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            d = self.s.recv(min(n - len(buf), 1 << 20))
            if not d:
                raise SdError('connection closed')
            buf += d
        return bytes(buf)

    def req(self, hdr32, payload=b'', rlen_check=None):
        rid = self.id
        self.id += 1
        hdr = hdr32[:8] + struct.pack('<I', rid) + hdr32[12:]
        self.s.sendall(hdr + payload)
        raw = self.recv_exact(48)
        length, result = struct.unpack_from('<II', raw, 12)
        data = self.recv_exact(length) if length else b''
        if struct.unpack_from('<I', raw, 8)[0] != rid:
            raise SdError('answer to another request')
        return result, raw, data

    def obj(self, op, oid, length, offset=0, payload=b''):
        flags = F_WRITE if payload else 0
        h = struct.pack('<BBHIII', 2, op, flags, 0, 0, length) + \
            struct.pack('<QQBBBBII4x', oid, 0, 0, 0, 0, 0, 0, offset)
        return self.req(h, payload)

    def read(self, oid, length, offset=0):
        res, _, data = self.obj(READ_OBJ, oid, length, offset)
        if res != 0 or len(data) != length:
            raise SdError('READ_OBJ %016x: result 0x%02x' % (oid, res))
        return data

    def vdi(self, op, payload, size=0, base=0, shift=0, store=0, copies=0,
            snapid=0, length=None):
        h = struct.pack('<BBHIII', 2, op, F_WRITE, 0, 0, len(payload)) + \
            struct.pack('<QIBBBBII8x', size, base, copies, 0, store, shift,
                        snapid, 0)
        res, raw, _ = self.req(h, payload)
        return res, struct.unpack_from('<I', raw, 24)[0]

    def lookup(self, name, snap=None):
        tag, snapid = '', 0
        if snap is not None:
            if snap.isdigit():
                snapid = int(snap)
            else:
                tag = snap
        res, vid = self.vdi(GET_VDI_INFO, name.encode().ljust(256, b'\0') +
                            tag.encode().ljust(256, b'\0'), snapid=snapid)
        if res != 0:
            raise SdError('%s%s: not found (0x%02x)' %
                          (name, ':' + snap if snap else '', res))
        return vid

    def inode(self, vid, with_map=False):
        d = self.read(VDI_BIT | vid << 32, HDR + (4 * MAX_OBJS if with_map
                                                  else 0))
        f = struct.unpack_from('<QQQQQBBBBIIII', d, 512)
        ino = {'name': d[:256].rstrip(b'\0').decode(errors='replace'),
               'tag': d[256:512].rstrip(b'\0').decode(errors='replace'),
               'ctime': f[0], 'snap_ctime': f[1], 'size': f[3],
               'copy_policy': f[5], 'store_policy': f[6], 'copies': f[7],
               'shift': f[8] or 22, 'snap_id': f[9], 'vdi_id': f[10],
               'parent': f[11]}
        if with_map:
            ino['map'] = struct.unpack_from('<%dI' % MAX_OBJS, d, HDR)
        return ino

    def vids(self):
        res, _, bitmap = self.req(struct.pack('<BBHIII', 2, READ_VDIS, 0, 0,
                                              0, NR_VDIS // 8) + bytes(32))
        if res != 0:
            raise SdError('READ_VDIS: 0x%02x' % res)
        for i, byte in enumerate(bitmap):
            if byte:
                for b in range(8):
                    if byte & (1 << b):
                        yield i * 8 + b


def redundancy(ino):
    p = ino['copy_policy']
    return '%d:%d' % ((p >> 4) * 2, p & 0xf) if p else str(ino['copies'])


def cmd_vdi_list(c, args):
    """dog vdi list -r: type name id size used shared ctime vid copies tag
    shift (ctime left out: it differs from store to store)."""
    rows = []
    for vid in c.vids():
        ino = c.inode(vid, with_map=True)
        if not ino['name']:
            continue                    # deleted
        osize = 1 << ino['shift']
        nobj = -(-ino['size'] // osize)
        used = sum(osize for v in ino['map'][:nobj] if v == vid)
        shared = sum(osize for v in ino['map'][:nobj] if v and v != vid)
        snap = ino['snap_ctime'] != 0
        # dog: s snapshot, c clone (a new name made from a snapshot),
        # = working VDI
        clone = not snap and ino['parent'] and ino['snap_id'] == 1
        rows.append((vid,
                     '%s %s %d %d %d %d %06x %s %s %d' % (
                         's' if snap else 'c' if clone else '=', ino['name'],
                         ino['snap_id'] if snap else 0, ino['size'], used,
                         shared, vid, redundancy(ino), ino['tag'],
                         ino['shift'])))
    for _, line in sorted(rows):       # dog lists in vid order
        print(line)


def cmd_object_map(c, args):
    vid = c.lookup(args[0], args[1] if len(args) > 1 else None)
    ino = c.inode(vid, with_map=True)
    print('Index       VID')
    for i, v in enumerate(ino['map']):
        if v:
            print('%08d   %06x' % (i, v))     # dog: decimal index


def cmd_md5(c, args):
    vid = c.lookup(args[0], args[2] if len(args) > 2 else None)
    ino = c.inode(vid, with_map=True)
    size, osize = int(args[1]), 1 << ino['shift']
    h = hashlib.md5()
    for i in range(-(-size // osize)):
        n = min(osize, size - i * osize)
        owner = ino['map'][i]
        h.update(c.read(owner << 32 | i, n) if owner else bytes(n))
    print(h.hexdigest())


def cmd_new_vdi(c, args):
    vals = [int(a, 0) for a in args[1:]] + [0, 0, 0, 0]
    res, vid = c.vdi(NEW_VDI, args[0].encode().ljust(256, b'\0'),
                     size=vals[0], shift=vals[1], store=vals[2],
                     copies=vals[3])
    if res != 0:
        raise SdError('NEW_VDI: 0x%02x' % res)
    print('%06x' % vid)


def cmd_poke(c, args):
    vid = c.lookup(args[0])
    data = bytes.fromhex(args[2])
    res, _, _ = c.obj(WRITE_OBJ, VDI_BIT | vid << 32, len(data),
                      int(args[1], 0), data)
    if res != 0:
        raise SdError('WRITE_OBJ: 0x%02x' % res)


def cmd_lookup(c, args):
    print('%06x' % c.lookup(args[0], args[1] if len(args) > 1 else None))


def main():
    args = sys.argv[1:]
    addr, port, path = '127.0.0.1', None, None
    while args and args[0] in ('-a', '-p', '-u'):
        if args[0] == '-a':
            addr = args[1]
        elif args[0] == '-p':
            port = int(args[1])
        else:
            path = args[1]
        args = args[2:]
    cmds = {'vdi-list': cmd_vdi_list, 'object-map': cmd_object_map,
            'md5': cmd_md5, 'new-vdi': cmd_new_vdi, 'poke': cmd_poke,
            'lookup': cmd_lookup}
    if not args or args[0] not in cmds or not (port or path):
        sys.stderr.write(__doc__)
        return 2
    try:
        cmds[args[0]](Client(addr, port, path), args[1:])
    except (SdError, OSError, IndexError, ValueError) as e:
        sys.stderr.write('sdtool: %s\n' % e)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
