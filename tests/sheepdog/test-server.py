#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# Standalone protocol test of tests/sheepdog/sheepdog-server: starts the server
# on a free port in a temporary directory and exercises every opcode.
"""usage: test-server.py [--server PATH] [--verbose]"""

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, 'sheepdog-server')

# opcodes
CREATE_AND_WRITE, READ_OBJ, WRITE_OBJ, REMOVE_OBJ, DISCARD_OBJ = 1, 2, 3, 4, 5
NEW_VDI, LOCK_VDI, RELEASE_VDI, GET_VDI_INFO = 0x11, 0x12, 0x13, 0x14
READ_VDIS, FLUSH_VDI, DEL_VDI, GET_CLUSTER_DEFAULT = 0x15, 0x16, 0x17, 0x18
F_WRITE, F_COW = 1, 2
# results
SUCCESS, NO_OBJ, EIO, VDI_EXIST, INVALID_PARMS = 0, 2, 3, 4, 5
VDI_LOCKED, NO_VDI, BASE_VDI_READ, NO_TAG = 7, 8, 0x0c, 0x0e
VER_MISMATCH, READONLY = 0x14, 0x1a

HDR = 4664
INODE_SIZE = 12587576
VDI_BIT = 1 << 63


def vdi_oid(vid):
    return VDI_BIT | vid << 32


def data_oid(vid, idx):
    return vid << 32 | idx


def fnv_vid(name):
    h = 0xcbf29ce484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xffffffffffffffff
    h &= 0xffffff
    return h or 1


def obj_hdr(op, oid, length, flags=0, cow=0, offset=0, ver=2, rid=0):
    return struct.pack('<BBHIII', ver, op, flags, 0, rid, length) + \
        struct.pack('<QQBBBBII4x', oid, cow, 0, 0, 0, 0, 0, offset)


def vdi_hdr(op, length, flags=F_WRITE, size=0, base=0, copies=0, shift=0,
            snapid=0, ltype=0, ver=2, rid=0, policy=0):
    return struct.pack('<BBHIII', ver, op, flags, 0, rid, length) + \
        struct.pack('<QIBBBBII8x', size, base, copies, policy, 0, shift,
                    snapid, ltype)


def name_buf(name, tag=None):
    b = name.encode().ljust(256, b'\0')
    if tag is not None:
        b += tag.encode().ljust(256, b'\0')
    return b


class Rsp:
    def __init__(self, raw, data):
        (self.ver, self.op, self.flags, self.epoch, self.id,
         self.length, self.result) = struct.unpack_from('<BBHIIII', raw)
        self.vid, = struct.unpack_from('<I', raw, 24)
        self.copies, self.shift = raw[32], raw[33]
        self.raw = raw
        self.data = data


class Client:
    def __init__(self, port=None, path=None):
        if path:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.connect(path)
        else:
            self.s = socket.create_connection(('127.0.0.1', port))
        self.next_id = 1

    def close(self):
        self.s.close()

    def recv_exact(self, n):
        buf = b''
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError('closed')
            buf += chunk
        return buf

    def recv_rsp(self):
        raw = self.recv_exact(48)
        length, = struct.unpack_from('<I', raw, 12)
        return Rsp(raw, self.recv_exact(length) if length else b'')

    def send(self, hdr, payload=b''):
        rid = self.next_id
        self.next_id += 1
        hdr = hdr[:8] + struct.pack('<I', rid) + hdr[12:]
        self.s.sendall(hdr + payload)
        return rid

    def req(self, hdr, payload=b''):
        rid = self.send(hdr, payload)
        r = self.recv_rsp()
        assert r.id == rid, 'id %d != %d' % (r.id, rid)
        return r

    # helpers
    def new_vdi(self, name, size=1 << 30, base=0, snapid=0, copies=0,
                shift=0, length=256):
        return self.req(vdi_hdr(NEW_VDI, length, size=size, base=base,
                                snapid=snapid, copies=copies, shift=shift),
                        name_buf(name)[:length].ljust(length, b'\0'))

    # Lookups carry the 256-byte tag field, as dog sends them (tag=None
    # sends the name only: sheep 1.0.1 crashes on that in some cases).
    def vdi_info(self, name, tag='', snapid=0, op=GET_VDI_INFO, ltype=0):
        b = name_buf(name, tag)
        return self.req(vdi_hdr(op, len(b), snapid=snapid, ltype=ltype), b)

    def del_vdi(self, name, tag='', snapid=0):
        b = name_buf(name, tag)
        return self.req(vdi_hdr(DEL_VDI, len(b), snapid=snapid), b)

    def read(self, oid, length, offset=0):
        return self.req(obj_hdr(READ_OBJ, oid, length, offset=offset))

    def write(self, oid, data, offset=0):
        return self.req(obj_hdr(WRITE_OBJ, oid, len(data), F_WRITE,
                                offset=offset), data)

    def create(self, oid, data, offset=0, cow=0):
        flags = F_WRITE | (F_COW if cow else 0)
        return self.req(obj_hdr(CREATE_AND_WRITE, oid, len(data), flags,
                                cow=cow, offset=offset), data)

    def set_entry(self, vid, idx, owner):
        return self.write(vdi_oid(vid), struct.pack('<I', owner),
                          HDR + 4 * idx)

    def inode(self, vid):
        r = self.read(vdi_oid(vid), HDR)
        assert r.result == SUCCESS, r.result
        d = r.data
        f = struct.unpack_from('<QQQQQBBBBIIII', d, 512)
        return {'name': d[:256].rstrip(b'\0').decode(),
                'tag': d[256:512].rstrip(b'\0').decode(),
                'ctime': f[0], 'snap_ctime': f[1], 'size': f[3],
                'copies': f[7], 'shift': f[8], 'snap_id': f[9],
                'vdi_id': f[10], 'parent': f[11]}


class Server:
    fake = True

    def __init__(self, tmp, args=(), dirname='store'):
        self.dir = os.path.join(tmp, dirname)
        self.tmp = tmp
        self.args = list(args)
        self.sock = os.path.join(tmp, dirname + '.sock')
        self.ctl = os.path.join(tmp, dirname + '.ctl')
        self.proc = None
        self.start()

    def start(self):
        cmd = [SERVER, '--dir', self.dir, '--port', '0', '--socket',
               self.sock, '--control', self.ctl] + self.args
        if VERBOSE:
            cmd.append('--verbose')
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.port = None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError('server did not start')
            if line.startswith('port '):
                self.port = int(line.split()[1])
            if line.strip() == 'ready':
                break

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def wait_dead(self):
        try:
            self.proc.wait(timeout=10)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def client(self):
        return Client(self.port)

    def control(self, line):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.ctl)
        s.sendall(line.encode() + b'\n')
        out = b''
        while not out.endswith(b'\n'):
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        s.close()
        return out.decode().strip()

    def refcount(self, oid):
        return int(self.control('refcount %x' % oid))

    def has_obj(self, oid):
        return os.path.exists(os.path.join(self.dir, '%016x' % oid))


class _NotPortable:
    """What a fake-only probe (refcount, has_obj) returns against real sheep:
    a check that involves it is skipped, not failed."""

    def __repr__(self):
        return 'NOT-PORTABLE'


NOT_PORTABLE = _NotPortable()


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RealServer:
    """A real sheep 1.0.1 (one node, local cluster driver) with the Server
    interface. Probes of the test server's internals are not portable."""
    fake = False

    def __init__(self, tmp, peer, locking=False, dirname='real'):
        self.peer = peer
        self.tmp = os.path.join(tmp, dirname)
        self.dir = os.path.join(self.tmp, 'store')
        self.sock = os.path.join(self.dir, 'sock')
        os.makedirs(self.tmp, exist_ok=True)
        self.port = free_port()
        self.pid = None
        self.start()
        # nr_copies 3 like the test server's default; one node, so dog asks
        fmt = [os.path.join(peer, 'dog'), 'cluster', 'format', '-c', '3',
               '-p', str(self.port)] + (['-l'] if locking else [])
        try:
            subprocess.run(fmt, input='yes\n', text=True, check=True,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        except BaseException:
            self.stop()
            raise

    def start(self):
        pidfile = os.path.join(self.tmp, 'pid')
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        subprocess.run([os.path.join(self.peer, 'sheep'), '-b', '127.0.0.1',
                        '-p', str(self.port), '-c',
                        'local:' + os.path.join(self.tmp, 'shm'), '-P',
                        pidfile, '-n', self.dir], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The daemon writes its pid file before it serves; under load both
        # can take seconds. Never keep the pid of an earlier (killed) sheep:
        # stop() would then leave this one running.
        self.pid = None
        for _ in range(600):
            if os.path.exists(pidfile) and open(pidfile).read().strip():
                self.pid = int(open(pidfile).read())
                break
            time.sleep(0.05)
        if self.pid is None:
            raise RuntimeError('sheep wrote no pid file')
        for _ in range(300):
            r = subprocess.run([os.path.join(self.peer, 'dog'), 'node',
                                'list', '-p', str(self.port)],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError('sheep did not start')

    def _wait_gone(self):
        for _ in range(200):
            if not os.path.exists('/proc/%d' % self.pid):
                return
            time.sleep(0.05)

    def kill(self):
        os.kill(self.pid, 9)
        self._wait_gone()

    def wait_dead(self):
        self._wait_gone()
        return not os.path.exists('/proc/%d' % self.pid)

    def stop(self):
        if self.pid and os.path.exists('/proc/%d' % self.pid):
            os.kill(self.pid, 15)
            self._wait_gone()

    def client(self):
        return Client(self.port)

    def control(self, line):
        return NOT_PORTABLE

    def refcount(self, oid):
        return NOT_PORTABLE

    def has_obj(self, oid):
        return NOT_PORTABLE


def not_portable(*values):
    for v in values:
        if v is NOT_PORTABLE or (isinstance(v, tuple) and
                                 any(x is NOT_PORTABLE for x in v)):
            return True
    return False


VERBOSE = False
passed = 0
failed = 0
skipped = 0


def check(cond, what):
    global passed, failed, skipped
    if not_portable(cond):
        skipped += 1
        if VERBOSE:
            print('skip ' + what)
        return
    if cond:
        passed += 1
        if VERBOSE:
            print('ok   ' + what)
    else:
        failed += 1
        print('FAIL ' + what)


def eq(got, want, what):
    if not_portable(got):
        check(NOT_PORTABLE, what)
        return
    check(got == want, '%s (got %r, want %r)' % (what, got, want)
          if got != want else what)


# ---------------------------------------------------------------- tests

def test_versions_and_misc(srv):
    c = srv.client()
    r = c.req(vdi_hdr(GET_CLUSTER_DEFAULT, 0, flags=0))
    eq(r.result, SUCCESS, 'cluster default succeeds')
    eq((r.raw[20], r.raw[21], r.raw[22]), (3, 0, 22), 'cluster default values')
    eq(r.epoch != 0, True, 'response carries a cluster epoch')
    eq(r.op, GET_CLUSTER_DEFAULT, 'response echoes opcode')
    for ver in (0, 1, 2):
        r = c.req(vdi_hdr(GET_CLUSTER_DEFAULT, 0, flags=0, ver=ver))
        eq(r.result, SUCCESS, 'proto_ver %d accepted' % ver)
    r = c.req(vdi_hdr(GET_CLUSTER_DEFAULT, 0, flags=0, ver=3))
    eq(r.result, VER_MISMATCH, 'proto_ver 3 -> VER_MISMATCH')
    r = c.req(vdi_hdr(0x81, 0, flags=0, ver=2))
    eq(r.result, VER_MISMATCH, 'internal opcode with proto 2 -> VER_MISMATCH')
    r = c.req(vdi_hdr(0x81, 0, flags=0, ver=0x0a))
    eq(r.result, INVALID_PARMS, 'internal opcode with proto 0x0a -> INVALID_PARMS')
    r = c.req(vdi_hdr(0x30, 0, flags=0))
    eq(r.result, INVALID_PARMS, 'unknown opcode -> INVALID_PARMS')
    r = c.req(vdi_hdr(FLUSH_VDI, 0, flags=0))
    eq(r.result, INVALID_PARMS, 'FLUSH_VDI -> INVALID_PARMS')
    r = c.req(vdi_hdr(READ_VDIS, 4096, flags=0))
    eq(r.result, INVALID_PARMS, 'READ_VDIS wrong length -> INVALID_PARMS')
    r = c.req(obj_hdr(READ_OBJ, data_oid(0x42, 0), 4096))
    eq(r.result, NO_OBJ, 'READ_OBJ missing -> NO_OBJ')
    r = c.write(data_oid(0x42, 0), b'x' * 512)
    eq(r.result, NO_OBJ, 'WRITE_OBJ missing -> NO_OBJ')
    c.close()


def test_new_vdi(srv):
    c = srv.client()
    r = c.new_vdi('alpha', length=255)
    eq(r.result, INVALID_PARMS, 'NEW_VDI payload 255 -> INVALID_PARMS')
    r = c.new_vdi('alpha', length=512)
    eq(r.result, INVALID_PARMS, 'NEW_VDI payload 512 -> INVALID_PARMS')
    r = c.new_vdi('alpha', size=8 << 30)
    eq(r.result, SUCCESS, 'NEW_VDI alpha')
    eq(r.vid, fnv_vid('alpha'), 'vid is FNV-1a hash of the name')
    eq((r.copies, r.shift), (3, 22), 'NEW_VDI reply: defaults applied')
    vid = r.vid
    r = c.new_vdi('alpha')
    eq(r.result, VDI_EXIST, 'duplicate NEW_VDI -> VDI_EXIST')
    r = c.new_vdi('beta', copies=2, shift=20)
    eq((r.result, r.copies, r.shift), (SUCCESS, 2, 20), 'explicit copies/shift')
    ino = c.inode(r.vid)
    eq((ino['copies'], ino['shift'], ino['snap_id'], ino['vdi_id']),
       (2, 20, 1, r.vid), 'beta inode header')
    r = c.new_vdi('gamma', shift=19)
    eq(r.result, SUCCESS, 'block_size_shift 19 accepted (sheep checks none)')
    r = c.new_vdi('delta', size=1 << 62)
    eq(r.result, SUCCESS, 'vdi_size 2^62 accepted (sheep checks none)')

    ino = c.inode(vid)
    eq((ino['name'], ino['size'], ino['snap_id'], ino['snap_ctime'],
        ino['parent']), ('alpha', 8 << 30, 1, 0, 0), 'alpha inode header')
    eq(ino['ctime'] != 0, True, 'create_time set')
    r = c.read(vdi_oid(vid), 4, INODE_SIZE - 4)
    eq(r.result, SUCCESS, 'inode object is 12,587,576 bytes')
    r = c.read(vdi_oid(vid), 8, INODE_SIZE - 4)
    eq((r.result, r.length), (SUCCESS, 8),
       'read past the inode end succeeds (sheep does not bound object I/O)')
    eq(r.data[4:] if srv.fake else NOT_PORTABLE, b'\xa5' * 4,
       'bytes past the end are not zero (test server: 0xa5 filler)')

    r = c.vdi_info('alpha')
    eq((r.result, r.vid, r.copies, r.shift), (SUCCESS, vid, 3, 22),
       'GET_VDI_INFO 256')
    r = c.vdi_info('alpha', tag=None)
    eq((r.result, r.vid), (SUCCESS, vid), 'GET_VDI_INFO 256 (no tag field)')
    r = c.req(vdi_hdr(GET_VDI_INFO, 300), b'alpha'.ljust(300, b'\0'))
    eq(r.result, INVALID_PARMS, 'GET_VDI_INFO 300 -> INVALID_PARMS')
    r = c.vdi_info('nosuch')
    eq(r.result, NO_VDI, 'GET_VDI_INFO unknown -> NO_VDI')
    r = c.vdi_info('alpha', tag='t1')
    eq(r.result, NO_TAG, 'GET_VDI_INFO unknown tag -> NO_TAG')
    r = c.vdi_info('alpha', snapid=7)
    eq(r.result, NO_TAG, 'GET_VDI_INFO unknown snapid -> NO_TAG')

    r = c.req(vdi_hdr(READ_VDIS, 2097152, flags=0))
    eq((r.result, len(r.data)), (SUCCESS, 2097152), 'READ_VDIS')
    eq(bool(r.data[vid >> 3] & (1 << (vid & 7))), True, 'alpha bit in use')
    c.close()
    return vid


def test_objects(srv, vid):
    c = srv.client()
    oid = data_oid(vid, 0)
    r = c.create(oid, b'A' * 512, offset=4096)
    eq(r.result, SUCCESS, 'CREATE_AND_WRITE')
    r = c.read(oid, 8192)
    eq(r.data, b'\0' * 4096 + b'A' * 512 + b'\0' * 3584, 'read back, zero-filled')
    r = c.write(oid, b'B' * 100, offset=100)
    eq(r.result, SUCCESS, 'WRITE_OBJ existing')
    r = c.read(oid, 300)
    eq(r.data, b'\0' * 100 + b'B' * 100 + b'\0' * 100, 'WRITE_OBJ data')
    r = c.create(oid, b'C' * 10, offset=0)
    eq(r.result, SUCCESS, 'CREATE_AND_WRITE replaces existing')
    r = c.read(oid, 8192)
    eq(r.data, b'C' * 10 + b'\0' * 8182, 'replacement zero-fills the rest')
    r = c.read(oid, 16, (4 << 20) - 16)
    eq(r.result, SUCCESS, 'data object is 4 MiB')
    r = c.write(oid, b'x' * 32, offset=(4 << 20) - 16)
    eq(r.result, SUCCESS, 'write past the object end succeeds (unbounded)')
    r = c.read(oid, 32, (4 << 20) - 16)
    eq(r.data, b'x' * 32, 'and reads back')

    # record ownership, check refcount
    r = c.set_entry(vid, 0, vid)
    eq(r.result, SUCCESS, 'inode entry write')
    eq(srv.refcount(oid), 1, 'data object referenced once')

    # vmstate object
    vm = (1 << 62) | vid << 32
    r = c.create(vm, b'V' * 4096)
    eq(r.result, SUCCESS, 'vmstate CREATE_AND_WRITE')
    r = c.read(vm, 4096)
    eq(r.data, b'V' * 4096, 'vmstate read')

    # REMOVE_OBJ and DISCARD_OBJ
    o2 = data_oid(vid, 5)
    c.create(o2, b'D' * 512)
    c.set_entry(vid, 5, vid)
    eq(srv.refcount(o2), 1, 'second object referenced')
    r = c.req(obj_hdr(DISCARD_OBJ, o2, 0))
    eq(r.result, SUCCESS, 'DISCARD_OBJ')
    eq(srv.has_obj(o2), False, 'DISCARD_OBJ drops the object')
    r = c.read(vdi_oid(vid), 4, HDR + 20)
    eq(r.data, b'\0' * 4, 'DISCARD_OBJ clears the inode entry')
    o3 = data_oid(vid, 9)
    c.create(o3, b'R')
    r = c.req(obj_hdr(REMOVE_OBJ, o3, 0))
    eq((r.result, srv.has_obj(o3)), (SUCCESS, False), 'REMOVE_OBJ')

    # entry zeroed by an inode write drops the last reference
    o4 = data_oid(vid, 6)
    c.create(o4, b'Z' * 512)
    c.set_entry(vid, 6, vid)
    r = c.write(vdi_oid(vid), b'\0' * 8, HDR + 4 * 6)
    eq((r.result, srv.has_obj(o4)), (SUCCESS, False),
       'zeroing an entry removes the unshared object')
    c.close()


def test_pipelining(srv, vid, order_arg):
    c = srv.client()
    for i in range(8):
        c.create(data_oid(vid, 100 + i), bytes([i + 1]) * 4096)
    ids = []
    batch = b''
    for i in range(8):
        rid = c.next_id
        c.next_id += 1
        ids.append(rid)
        h = obj_hdr(READ_OBJ, data_oid(vid, 100 + i), 4096)
        batch += h[:8] + struct.pack('<I', rid) + h[12:]
    c.s.sendall(batch)
    got = []
    ok = True
    for _ in range(8):
        r = c.recv_rsp()
        got.append(r.id)
        i = ids.index(r.id)
        ok &= r.result == SUCCESS and r.data == bytes([i + 1]) * 4096
    check(ok, 'pipelined reads matched by id (%s)' % order_arg)
    eq(sorted(got), ids, 'every pipelined request answered once (%s)' % order_arg)
    if srv.fake:
        check(got != ids, 'responses out of order (%s): %r' % (order_arg, got))
    c.close()
    return got


def test_big_pipeline(srv, vid):
    """Many 4 MiB writes then reads in flight at once, split across reads."""
    c = srv.client()
    n = 12
    blobs = [bytes([0x30 + i]) * (4 << 20) for i in range(n)]
    ids = {}
    for i in range(n):
        rid = c.send(obj_hdr(CREATE_AND_WRITE, data_oid(vid, 300 + i),
                             len(blobs[i]), F_WRITE), blobs[i])
        ids[rid] = i
    ok = True
    for _ in range(n):
        r = c.recv_rsp()
        ok &= r.result == SUCCESS and r.id in ids
    check(ok, 'pipelined 4 MiB creates')
    ids = {}
    for i in range(n):
        ids[c.send(obj_hdr(READ_OBJ, data_oid(vid, 300 + i), 4 << 20))] = i
    seen = set()
    for _ in range(n):
        r = c.recv_rsp()
        ok &= r.result == SUCCESS and r.data == blobs[ids[r.id]]
        seen.add(r.id)
    check(ok and seen == set(ids), 'pipelined 4 MiB reads matched by id')
    for i in range(n):
        c.req(obj_hdr(REMOVE_OBJ, data_oid(vid, 300 + i), 0))
    c.close()


def test_snapshot_clone_delete(srv):
    c = srv.client()
    r = c.new_vdi('snapme', size=1 << 30)
    base = r.vid
    c.create(data_oid(base, 0), b'P' * 4096)
    c.create(data_oid(base, 1), b'Q' * 4096)
    c.write(vdi_oid(base), struct.pack('<II', base, base), HDR)
    # client writes the tag into the old inode, then NEW_VDI with snapid
    c.write(vdi_oid(base), b'tag1'.ljust(256, b'\0'), 256)
    r = c.req(vdi_hdr(NEW_VDI, 256, size=1 << 30, base=base, snapid=1),
              name_buf('snapme'))
    eq(r.result, SUCCESS, 'snapshot NEW_VDI')
    work = r.vid
    eq(work, base + 1, 'new working vid takes the next free bit')
    old = c.inode(base)
    new = c.inode(work)
    eq((old['snap_ctime'] != 0, old['tag'], old['snap_id']), (True, 'tag1', 1),
       'old vid became the snapshot')
    eq((new['snap_ctime'], new['snap_id'], new['parent'], new['name']),
       (0, 2, base, 'snapme'), 'new working VDI')
    r = c.read(vdi_oid(work), 8, HDR)
    eq(struct.unpack('<II', r.data), (base, base), 'data_vdi_id copied')
    eq(srv.refcount(data_oid(base, 0)), 2, 'snapshot shares objects (refs 2)')

    eq(c.vdi_info('snapme').vid, work, 'lookup by name -> working VDI')
    eq(c.vdi_info('snapme', tag='tag1').vid, base, 'lookup by tag')
    eq(c.vdi_info('snapme', snapid=1).vid, base, 'lookup by snapid')
    eq(c.vdi_info('snapme', snapid=2).result, NO_TAG,
       'snapid of the working VDI -> NO_TAG')
    eq(c.vdi_info('snapme', tag='nope').result, NO_TAG, 'bad tag -> NO_TAG')

    # snapshot data is read-only, inode writes are always allowed
    r = c.write(data_oid(base, 0), b'x' * 512)
    eq(r.result, READONLY, 'WRITE_OBJ to snapshot data -> READONLY')
    r = c.create(data_oid(base, 3), b'x' * 512)
    eq(r.result, READONLY, 'CREATE_AND_WRITE to snapshot data -> READONLY')
    r = c.write(vdi_oid(base), b'tag1'.ljust(256, b'\0'), 256)
    eq(r.result, SUCCESS, 'inode write on a snapshot allowed')

    # COW write: copy parent, overlay the new bytes
    r = c.create(data_oid(work, 0), b'N' * 512, offset=1024,
                 cow=data_oid(base, 0))
    eq(r.result, SUCCESS, 'COW CREATE_AND_WRITE')
    r = c.read(data_oid(work, 0), 4096)
    eq(r.data, b'P' * 1024 + b'N' * 512 + b'P' * 2560, 'COW result')
    r = c.read(data_oid(work, 0), 16, 4096)
    eq(r.data, b'\0' * 16, 'COW: rest of object zero')
    c.set_entry(work, 0, work)
    eq(srv.refcount(data_oid(base, 0)), 1, 'repointing drops a reference')
    eq(srv.has_obj(data_oid(base, 0)), True, 'still held by the snapshot')

    # second snapshot without tag, then lookups by snapid
    r = c.req(vdi_hdr(NEW_VDI, 256, size=1 << 30, base=work, snapid=2),
              name_buf('snapme'))
    work2 = r.vid
    eq((r.result, work2), (SUCCESS, base + 2), 'second snapshot')
    eq(c.vdi_info('snapme', snapid=2).vid, work, 'snapid 2 -> first working')
    eq(c.inode(work2)['snap_id'], 3, 'snap_id increments')
    r = c.req(vdi_hdr(NEW_VDI, 256, size=1 << 30, base=base, snapid=1),
              name_buf('nosuch'))
    eq(r.result, NO_VDI, 'snapshot of unknown name -> NO_VDI')

    # clone of a snapshot under a new name
    r = c.new_vdi('clone', size=1 << 30, base=base)
    eq(r.result, SUCCESS, 'clone NEW_VDI')
    cl = r.vid
    ino = c.inode(cl)
    eq((ino['parent'], ino['snap_id'], ino['snap_ctime']), (base, 1, 0),
       'clone header')
    r = c.read(vdi_oid(cl), 8, HDR)
    eq(struct.unpack('<II', r.data), (base, base), 'clone copies map')
    eq(srv.refcount(data_oid(base, 1)), 4,
       'object shared by snapshot, 2 working, clone')
    r = c.new_vdi('clone2', base=0xabcdef)
    eq(r.result, BASE_VDI_READ, 'clone of a missing base -> BASE_VDI_READ')

    # DEL_VDI with entries left: SUCCESS, data and VDI stay (sheep 1.0.1)
    r = c.del_vdi('clone')
    eq(r.result, SUCCESS, 'DEL_VDI with non-zero entries succeeds')
    eq(srv.has_obj(data_oid(base, 1)), True, 'data left in place')
    eq(c.vdi_info('clone').vid, cl, 'VDI with entries is not deleted')
    # proper client delete: zero the map, then DEL_VDI
    c.write(vdi_oid(cl), b'\0' * 8, HDR)
    eq(srv.refcount(data_oid(base, 1)), 3, 'zeroing clone map drops refs')
    r = c.del_vdi('clone')
    eq(r.result, SUCCESS, 'DEL_VDI clone')
    eq(c.vdi_info('clone').result, NO_VDI, 'deleted clone -> NO_VDI')
    r = c.req(vdi_hdr(READ_VDIS, 2097152, flags=0))
    eq(bool(r.data[cl >> 3] & (1 << (cl & 7))), True,
       'deleted clone keeps its bit while its family lives')
    lone = c.new_vdi('lonely').vid
    eq(c.del_vdi('lonely').result, SUCCESS, 'DEL_VDI lone VDI')
    r = c.req(vdi_hdr(READ_VDIS, 2097152, flags=0))
    eq(bool(r.data[lone >> 3] & (1 << (lone & 7))), True,
       'a deleted VDI keeps its in-use bit (sheep 1.0.1 recycles no vid)')
    eq(c.new_vdi('lonely').vid, lone + 1, 'the name gets the next free vid')
    eq(c.del_vdi('clone').result, NO_VDI, 'DEL_VDI twice -> NO_VDI')
    r = c.req(vdi_hdr(DEL_VDI, 100), b'x' * 100)
    eq(r.result, INVALID_PARMS, 'DEL_VDI bad length')

    # delete a snapshot by tag (512 payload): zero its map first
    c.write(vdi_oid(base), b'\0' * 8, HDR)
    eq(srv.has_obj(data_oid(base, 0)), False,
       'last reference gone -> object removed')
    eq(srv.has_obj(data_oid(base, 1)), True, 'shared object kept')
    r = c.del_vdi('snapme', tag='tag1')
    eq(r.result, SUCCESS, 'DEL_VDI snapshot by tag')
    eq(c.vdi_info('snapme', tag='tag1').result, NO_TAG, 'snapshot gone')
    eq(c.vdi_info('snapme').vid, work2, 'working VDI still found')
    r = c.req(vdi_hdr(READ_VDIS, 2097152, flags=0))
    eq(bool(r.data[base >> 3] & (1 << (base & 7))), True,
       'deleted snapshot keeps its bit while family lives')

    # rollback as the CLI does it: delete working, clone snapshot, same name
    c.write(vdi_oid(work2), b'\0' * 8, HDR)
    eq(c.del_vdi('snapme').result, SUCCESS, 'delete working VDI')
    eq(c.vdi_info('snapme').result, NO_VDI, 'no working VDI -> NO_VDI')
    eq(c.vdi_info('snapme', snapid=2).vid, work, 'snapshot still found')
    r = c.new_vdi('snapme', size=1 << 30, base=work)
    eq(r.result, SUCCESS, 'rollback clone under the same name')
    eq(c.inode(r.vid)['snap_id'], 3, 'rolled-back VDI snap_id follows')
    eq(c.vdi_info('snapme').vid, r.vid, 'lookup finds the rolled-back VDI')
    c.close()


def test_locking(make_server):
    srv = make_server()
    try:
        locking_checks(srv)
    finally:
        srv.stop()


def locking_checks(srv):
    c = srv.client()
    vid = c.new_vdi('locked').vid
    r = c.vdi_info('locked', op=LOCK_VDI)
    eq((r.result, r.vid), (SUCCESS, vid), 'LOCK_VDI first lock')
    eq(c.vdi_info('locked', op=LOCK_VDI).result, VDI_LOCKED,
       'second lock, same connection -> VDI_LOCKED')
    c2 = srv.client()
    eq(c2.vdi_info('locked', op=LOCK_VDI).result, VDI_LOCKED,
       'lock from another connection -> VDI_LOCKED')
    eq(c2.vdi_info('locked').result, SUCCESS, 'GET_VDI_INFO unaffected')
    c.close()
    time.sleep(0.1)
    eq(c2.vdi_info('locked', op=LOCK_VDI).result, VDI_LOCKED,
       'lock survives disconnect')
    r = c2.req(vdi_hdr(RELEASE_VDI, 0, flags=0, base=vid))
    eq(r.result, SUCCESS, 'RELEASE_VDI from anyone')
    r = c2.req(vdi_hdr(RELEASE_VDI, 0, flags=0, base=vid))
    eq(r.result, SUCCESS, 'RELEASE_VDI when unlocked')
    eq(c2.vdi_info('locked', op=LOCK_VDI).result, SUCCESS, 'relock')
    eq(c2.vdi_info('nolock', op=LOCK_VDI).result, NO_VDI,
       'LOCK_VDI unknown -> NO_VDI')
    # snapshot vids lock independently
    r = c2.req(vdi_hdr(NEW_VDI, 256, base=vid, snapid=1), name_buf('locked'))
    eq(c2.vdi_info('locked', op=LOCK_VDI).result, SUCCESS,
       'new working VDI lockable after snapshot')
    eq(c2.vdi_info('locked', snapid=1, op=LOCK_VDI).result, VDI_LOCKED,
       'snapshot vid keeps its old lock')
    c2.req(vdi_hdr(RELEASE_VDI, 0, flags=0, base=vid))
    # shared locks
    v2 = c2.new_vdi('shared').vid
    eq(c2.vdi_info('shared', op=LOCK_VDI, ltype=1).result, SUCCESS,
       'shared lock')
    eq(c2.vdi_info('shared', op=LOCK_VDI, ltype=0).result, VDI_LOCKED,
       'normal lock over shared -> VDI_LOCKED')
    c2.req(vdi_hdr(RELEASE_VDI, 0, flags=0, base=v2, ltype=1))
    eq(c2.vdi_info('shared', op=LOCK_VDI, ltype=0).result, SUCCESS,
       'normal lock after shared release')
    c2.close()
    # locks live in memory: a restart forgets them, locking stays on
    srv.kill()
    srv.start()
    c = srv.client()
    eq(c.vdi_info('shared', op=LOCK_VDI).result, SUCCESS,
       'a restart forgets every lock')
    eq(c.vdi_info('shared', op=LOCK_VDI).result, VDI_LOCKED,
       'locking is still enforced after a restart')
    c.close()


def test_nolocking(srv):
    c = srv.client()
    c.new_vdi('free')
    eq(c.vdi_info('free', op=LOCK_VDI).result, SUCCESS, 'lock (no locking)')
    eq(c.vdi_info('free', op=LOCK_VDI).result, SUCCESS,
       'second lock succeeds without --locking')
    c.close()


def test_faults(srv, vid):
    c = srv.client()
    oid = data_oid(vid, 200)
    c.create(oid, b'F' * 512)
    eq(srv.control('fail-opcode 0x02:0x03:1'), 'ok', 'control: fail-opcode')
    eq(c.read(oid, 512).result, EIO, 'injected EIO on READ_OBJ')
    eq(c.read(oid, 512).result, SUCCESS, 'injection count exhausted')
    srv.control('delay-ms 300')
    t = time.time()
    c.read(oid, 512)
    check(time.time() - t >= 0.28, 'delay-ms delays replies')
    srv.control('delay-ms 0')
    srv.control('close-after 2')
    ok = c.read(oid, 512).result == SUCCESS and c.read(oid, 512).result == SUCCESS
    check(ok, 'close-after: first N answered')
    try:
        c.read(oid, 512)
        check(False, 'close-after: connection closed')
    except (ConnectionError, OSError):
        check(True, 'close-after: connection closed')
    c.close()
    c = srv.client()
    eq(c.read(oid, 512).result, SUCCESS, 'close-after is one-shot')
    eq(srv.control('bogus'), "error: unknown command 'bogus'",
       'control: unknown command')
    c.close()


def test_cmdline_faults(tmp):
    srv = Server(tmp, ['--fail-opcode', '0x14:0x08', '--order', 'in'],
                 dirname='faultstore')
    c = srv.client()
    eq(c.new_vdi('f').result, SUCCESS, '--fail-opcode leaves others')
    eq(c.vdi_info('f').result, NO_VDI, '--fail-opcode GET_VDI_INFO:NO_VDI')
    c.close()
    srv.stop()
    srv = Server(tmp, ['--close-after', '1:repeat'], dirname='faultstore')
    for n in range(2):
        c = srv.client()
        eq(c.req(vdi_hdr(GET_CLUSTER_DEFAULT, 0, flags=0)).result, SUCCESS,
           'close-after repeat: answered (%d)' % n)
        try:
            c.req(vdi_hdr(GET_CLUSTER_DEFAULT, 0, flags=0))
            check(False, 'close-after repeat: closed (%d)' % n)
        except (ConnectionError, OSError):
            check(True, 'close-after repeat: closed (%d)' % n)
        c.close()
    srv.stop()


def test_short_lookup_crash(srv):
    """sheep 1.0.1 dies on a lookup by snapshot id without the tag field
    when it meets a tagged snapshot; an untagged one is fine. Ends srv."""
    c = srv.client()
    r = c.new_vdi('crashme', size=1 << 30)
    base = r.vid
    c.req(vdi_hdr(NEW_VDI, 256, size=1 << 30, base=base, snapid=1),
          name_buf('crashme'))
    r = c.vdi_info('crashme', tag=None, snapid=1)
    eq((r.result, r.vid), (SUCCESS, base),
       'short lookup by snapid, untagged snapshot: fine')
    work = c.vdi_info('crashme').vid
    c.write(vdi_oid(work), b'tagged'.ljust(256, b'\0'), 256)
    c.req(vdi_hdr(NEW_VDI, 256, size=1 << 30, base=work, snapid=2),
          name_buf('crashme'))
    eq(c.vdi_info('crashme', snapid=2).vid, work,
       'lookup by snapid with the tag field: fine')
    try:
        r = c.vdi_info('crashme', tag=None, snapid=2)
        died = False
    except (ConnectionError, OSError):
        died = True
    c.close()
    check(died, 'short lookup by snapid meeting a tagged snapshot: the '
          'server dies (sheep 1.0.1 segfaults)')
    check(srv.wait_dead(), 'the server process is gone')


def test_erasure_code_one_zone(srv):
    """One node, one zone: an erasure-coded VDI is created, but its data
    objects cannot be placed (SYSTEM_ERROR); its inode is writable."""
    c = srv.client()
    r = c.req(vdi_hdr(NEW_VDI, 256, size=8 << 20, copies=3, policy=0x11),
              name_buf('ecvol'))
    eq((r.result, r.copies), (SUCCESS, 3), 'NEW_VDI 2:1 erasure code')
    vid = r.vid
    eq(c.create(data_oid(vid, 0), b'E' * 512).result, 0x06,
       'EC data object on one zone -> SYSTEM_ERROR')
    eq(c.read(data_oid(vid, 0), 512).result, 0x06,
       'EC data read on one zone -> SYSTEM_ERROR')
    eq(c.write(vdi_oid(vid), b'\0' * 4, HDR).result, SUCCESS,
       'EC inode is writable')
    c.close()


def test_inode_fields(srv):
    """sheep keeps block_size_shift & 31 in the inode, and a lookup
    answers the vdi_id field of the inode it found."""
    c = srv.client()
    r = c.new_vdi('shift40', shift=40)
    eq((r.result, c.inode(r.vid)['shift']), (SUCCESS, 8),
       'NEW_VDI shift 40 -> inode shift 8')
    r = c.new_vdi('shift32', shift=32)
    eq(c.inode(r.vid)['shift'], 0, 'NEW_VDI shift 32 -> inode shift 0')
    v = c.new_vdi('idpoke').vid
    c.write(vdi_oid(v), struct.pack('<I', 0x42), 560)
    eq(c.vdi_info('idpoke').vid, 0x42,
       'lookup answers the inode vdi_id field')
    c.close()


def test_half_close(srv, vid):
    """A client that half-closes after a write: the write still runs, no
    answer comes, then the server closes (sheep closes a connection only
    after everything read from it has finished)."""
    c = srv.client()
    oid = data_oid(vid, 77)
    c.send(obj_hdr(CREATE_AND_WRITE, oid, 4096, F_WRITE), b'H' * 4096)
    c.s.shutdown(socket.SHUT_WR)
    c.s.settimeout(10)
    rest = b''
    try:
        while True:
            d = c.s.recv(65536)
            if not d:
                break
            rest += d
        closed = True
    except OSError:
        closed = False
    c.close()
    check(closed, 'half-closed connection: the server closes it')
    eq(len(rest) in (0, 48), True, 'at most the answer comes back')
    c = srv.client()
    eq(c.read(oid, 4).data, b'HHHH', 'the write sent before EOF ran')
    c.close()


def test_hold_release(srv, vid):
    """Control hold/release (a stopped sheep): held connections are not
    read; a connection opened after the hold works; on release the held
    one runs its requests after the newer ones (test server only)."""
    oid = data_oid(vid, 78)
    c = srv.client()
    c.create(oid, b'1' * 512)
    eq(srv.control('hold'), 'ok', 'control: hold')
    c.send(obj_hdr(WRITE_OBJ, oid, 512, F_WRITE), b'2' * 512)
    c.s.shutdown(socket.SHUT_WR)
    c2 = srv.client()
    eq(c2.write(oid, b'3' * 512).result, SUCCESS, 'new connection served')
    eq(c2.read(oid, 4).data, b'3333', 'the held write has not run')
    eq(srv.control('release'), 'ok', 'control: release')
    c.s.settimeout(10)
    while c.s.recv(65536):
        pass
    c.close()
    eq(c2.read(oid, 4).data, b'2222',
       'on release the older write lands over the newer one')
    c2.close()


def test_unix(srv, vid):
    c = Client(path=srv.sock)
    eq(c.vdi_info('alpha').vid, vid, 'Unix socket transport')
    c.close()


def test_restart(srv, vid):
    srv.kill()
    srv.start()
    c = srv.client()
    eq(c.vdi_info('alpha').vid, vid, 'VDI survives restart')
    r = c.read(data_oid(vid, 0), 10)
    eq(r.data, b'C' * 10, 'data survives restart')
    eq(srv.refcount(data_oid(vid, 0)), 1, 'refcounts rebuilt on restart')
    eq(c.vdi_info('snapme').result, SUCCESS, 'snapshot family survives')
    c.close()


def test_admin(srv):
    srv.stop()
    out = subprocess.run([SERVER, '--dir', srv.dir, '--admin', 'list'],
                         capture_output=True, text=True).stdout
    check('alpha' in out and 'snapme' in out, 'admin list shows VDIs')
    r = subprocess.run([SERVER, '--dir', srv.dir, '--admin', 'delete', 'beta'],
                       capture_output=True, text=True)
    eq(r.returncode, 0, 'admin delete')
    out = subprocess.run([SERVER, '--dir', srv.dir, '--admin', 'list'],
                         capture_output=True, text=True).stdout
    check(' beta ' not in out, 'admin delete removes the VDI')
    srv.start()
    c = srv.client()
    eq(c.vdi_info('beta').result, NO_VDI, 'server sees admin delete')
    c.close()


def run_fake(tmp):
    """Every check against the test server, fault injection included."""
    srv = Server(tmp)
    try:
        test_versions_and_misc(srv)
        vid = test_new_vdi(srv)
        test_objects(srv, vid)
        first = test_pipelining(srv, vid, 'default swap')
        eq([x - min(first) for x in first], [1, 0, 3, 2, 5, 4, 7, 6],
           'default order swaps neighbours')
        srv.control('shuffle-seed 42')
        a = test_pipelining(srv, vid, 'seed 42')
        srv.control('shuffle-seed 42')
        b = test_pipelining(srv, vid, 'seed 42 again')
        eq([x - min(a) for x in a], [x - min(b) for x in b],
           'shuffle deterministic for a seed')
        srv.control('order reverse')
        test_pipelining(srv, vid, 'reverse')
        srv.control('order swap')
        test_big_pipeline(srv, vid)
        test_snapshot_clone_delete(srv)
        test_nolocking(srv)
        test_faults(srv, vid)
        test_erasure_code_one_zone(srv)
        test_inode_fields(srv)
        test_half_close(srv, vid)
        test_hold_release(srv, vid)
        test_unix(srv, vid)
        test_restart(srv, vid)
        test_admin(srv)
        test_short_lookup_crash(srv)
        test_locking(lambda: Server(tmp, ['--locking'], dirname='lockstore'))
        test_cmdline_faults(tmp)
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.stop()


def run_real(tmp, peer):
    """The same protocol checks against a real sheep: everything but the
    test server's fault injection and internals (counted as skipped)."""
    srv = RealServer(tmp, peer)
    try:
        test_versions_and_misc(srv)
        vid = test_new_vdi(srv)
        test_objects(srv, vid)
        test_pipelining(srv, vid, 'real sheep')
        test_big_pipeline(srv, vid)
        test_snapshot_clone_delete(srv)
        test_nolocking(srv)
        test_erasure_code_one_zone(srv)
        test_inode_fields(srv)
        test_half_close(srv, vid)
        test_unix(srv, vid)
        test_restart(srv, vid)
        test_short_lookup_crash(srv)
    finally:
        srv.stop()
    test_locking(lambda: RealServer(tmp, peer, locking=True,
                                    dirname='reallock'))


def main():
    global SERVER, VERBOSE
    args = sys.argv[1:]
    if '--server' in args:
        SERVER = args[args.index('--server') + 1]
    peer = None
    if '--real' in args:
        peer = args[args.index('--real') + 1]
        if not os.access(os.path.join(peer, 'sheep'), os.X_OK):
            print('SKIP: no real sheep in %s' % peer)
            return 77
    VERBOSE = '--verbose' in args
    if not peer and not os.access(SERVER, os.X_OK):
        print('SKIP: %s not built' % SERVER)
        return 77
    tmp = tempfile.mkdtemp(prefix='sheepdog-test-')
    try:
        if peer:
            run_real(tmp, peer)
        else:
            run_fake(tmp)
    except Exception as e:  # report, do not hide
        import traceback
        traceback.print_exc()
        check(False, 'exception: %r' % e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if skipped:
        print('%d checks not portable to real sheep (skipped)' % skipped)
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
