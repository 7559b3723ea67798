"""Tests of wsgi-loader.py.

Run with:  /usr/bin/python3 -m unittest discover -s src/loaders -p 'test_*.py'

The loader is started for real, as the agent starts it: a subprocess with a
listening Unix socket on fd 3 and the readiness pipe on fd 4, on small apps
written to a temporary directory. The frame codec below is this test's own,
written from docs/protocol.md; it is checked against docs/protocol-vectors.json
too, as is the loader's.
"""

import ast
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import fcntl
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
LOADER = os.path.join(HERE, 'wsgi-loader.py')
VECTORS = os.path.join(HERE, '..', '..', 'docs', 'protocol-vectors.json')
# The interpreter that runs the loader; TEST_LOADER_PYTHON picks another one
# (e.g. a Python 3.7 or 3.8, to cover the loader's fallbacks).
PYTHON = os.environ.get('TEST_LOADER_PYTHON') or (
    '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable)

# ---------------------------------------------------------------------------
# The test's own codec (docs/protocol.md)
# ---------------------------------------------------------------------------

HEADER = struct.Struct('>2sBBII')
MAX_PAYLOAD = 1 << 20
T = dict(HELLO=0x01, HELLO_OK=0x02, CONFIGURE=0x03, CONFIGURE_OK=0x04, REQUEST=0x10,
         BODY=0x11, END=0x12, MORE=0x13, READ_BODY=0x14, RELEASE=0x15, RESPONSE=0x20, ERROR=0x30,
         PING=0x40, PONG=0x41, STATUS=0x50, STATUS_REPLY=0x51, READY=0x60, SPAWN_ERROR=0x61,
         FORK=0x70, FORKED=0x71, OOB_WORK=0x72, OOB_DONE=0x73)
NAMES = dict((v, k) for k, v in T.items())
REQUEST, BODY, END, MORE, READ_BODY = T['REQUEST'], T['BODY'], T['END'], T['MORE'], T['READ_BODY']
RESPONSE, ERROR, PING, PONG = T['RESPONSE'], T['ERROR'], T['PING'], T['PONG']
READY, SPAWN_ERROR = T['READY'], T['SPAWN_ERROR']
FORK, FORKED, OOB_WORK, OOB_DONE = T['FORK'], T['FORKED'], T['OOB_WORK'], T['OOB_DONE']


def frame(ftype, rid=0, payload=b''):
    return HEADER.pack(b'MP', 1, ftype, rid, len(payload)) + payload


def u32(n):
    return struct.pack('>I', n)


def enc_bytes(b):
    if isinstance(b, str):
        b = b.encode('utf-8')
    return u32(len(b)) + b


def enc_pairs(pairs):
    out = [u32(len(pairs))]
    for name, value in pairs:
        out.append(enc_bytes(name))
        out.append(enc_bytes(value))
    return b''.join(out)


def request_frame(rid, env, flags=0, options=()):
    return frame(REQUEST, rid, bytes([flags]) + enc_pairs(list(options)) + enc_pairs(env))


class Reader(object):
    """Decode a payload field by field; every length is checked first."""

    def __init__(self, payload):
        self.p = payload
        self.off = 0

    def take(self, n):
        if n > len(self.p) - self.off:
            raise VecError('malformed', 'field runs past the payload')
        b = self.p[self.off:self.off + n]
        self.off += n
        return b

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack('>H', self.take(2))[0]

    def u32(self):
        return struct.unpack('>I', self.take(4))[0]

    def u64(self):
        return struct.unpack('>Q', self.take(8))[0]

    def bytes(self):
        return self.take(self.u32())

    def pairs(self):
        n = self.u32()
        if n * 8 > len(self.p) - self.off:
            raise VecError('malformed', 'pair count runs past the payload')
        return [(self.bytes(), self.bytes()) for _ in range(n)]

    def done(self):
        if self.off != len(self.p):
            raise VecError('malformed', 'trailing bytes')


class VecError(Exception):
    def __init__(self, kind, why=''):
        Exception.__init__(self, '%s: %s' % (kind, why))
        self.kind = kind


SCHEMA = {
    'HELLO': [('role', 'u8'), ('pid', 'u32'), ('generation', 'u64')],
    'HELLO_OK': [('agent_pid', 'u32'), ('instance', 'bytes')],
    'CONFIGURE': [('generation', 'u64'), ('config', 'bytes')],
    'CONFIGURE_OK': [],
    'REQUEST': [('flags', 'u8'), ('options', 'pairs'), ('env', 'pairs')],
    'BODY': [('data', 'raw')],
    'END': [], 'MORE': [], 'PING': [], 'PONG': [],
    'READ_BODY': [('max', 'u32')],
    'RESPONSE': [('status', 'u16'), ('reason', 'bytes'), ('headers', 'pairs')],
    'ERROR': [('code', 'u16'), ('message', 'bytes')],
    'STATUS': [('query', 'bytes')],
    'STATUS_REPLY': [('document', 'bytes')],
    'FORK': [], 'FORKED': [('pid', 'u32')], 'OOB_WORK': [], 'OOB_DONE': [], 'RELEASE': [],
    'READY': [('concurrency', 'u32')],
    'SPAWN_ERROR': [('summary', 'bytes'), ('details', 'bytes')],
}


def vec_decode(data):
    """None if incomplete, else (type name, request id, fields); VecError if invalid."""
    if len(data) < 12:
        return None
    magic, version, ftype, rid, length = HEADER.unpack_from(data)
    if magic != b'MP':
        raise VecError('bad_magic')
    if version != 1:
        raise VecError('bad_version')
    if ftype not in NAMES:
        raise VecError('unknown_type')
    if length > MAX_PAYLOAD:
        raise VecError('too_large')
    if len(data) < 12 + length:
        return None
    name = NAMES[ftype]
    r = Reader(data[12:12 + length])
    fields = {}
    for field, kind in SCHEMA[name]:
        if kind == 'raw':
            fields[field] = r.take(length)
        else:
            fields[field] = getattr(r, kind)()
    r.done()
    if name == 'HELLO' and fields['role'] not in (1, 2, 3):
        raise VecError('malformed', 'role')
    if name == 'REQUEST' and (fields['flags'] & ~7 or fields['flags'] & 5 == 5):
        raise VecError('malformed', 'flags')
    if name == 'ERROR':
        try:
            fields['message'].decode('utf-8')
        except UnicodeDecodeError:
            raise VecError('malformed', 'ERROR message not UTF-8')
    return name, rid, fields


def vec_encode(name, rid, fields):
    out = []
    for field, kind in SCHEMA[name]:
        v = fields[field]
        if kind == 'raw':
            out.append(v)
        elif kind == 'u8':
            out.append(bytes([v]))
        elif kind == 'u16':
            out.append(struct.pack('>H', v))
        elif kind == 'u32':
            out.append(u32(v))
        elif kind == 'u64':
            out.append(struct.pack('>Q', v))
        elif kind == 'bytes':
            out.append(enc_bytes(v))
        else:
            out.append(enc_pairs(v))
    return frame(T[name], rid, b''.join(out))


def vector_fields(vec):
    """The fields of a JSON vector, with bytes fields as bytes."""
    fields = {}
    for field, kind in SCHEMA[vec['type']]:
        if kind in ('bytes', 'raw'):
            if field + '_hex' in vec:
                fields[field] = bytes.fromhex(vec[field + '_hex'])
            else:
                fields[field] = vec[field].encode('utf-8')
        elif kind == 'pairs':
            fields[field] = [(n.encode('utf-8'), v.encode('utf-8')) for n, v in vec[field]]
        else:
            fields[field] = vec[field]
    return fields


def load_loader_module():
    loader = importlib.machinery.SourceFileLoader('wsgi_loader_under_test', LOADER)
    spec = importlib.util.spec_from_file_location('wsgi_loader_under_test', LOADER, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Driving a loader process
# ---------------------------------------------------------------------------

TRAMPOLINE = (
    'import os, sys\n'
    'os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4)\n'
    'os.close(int(sys.argv[1])); os.close(int(sys.argv[2]))\n'
    'os.execv(sys.argv[3], sys.argv[3:])\n'
)


# A stand-in agent: starts the loader (argv[4:]), records its pid, waits.
FAKE_AGENT = (
    'import subprocess, sys, time\n'
    'import os\n'
    'p = subprocess.Popen(sys.argv[4:], pass_fds=(int(sys.argv[2]), int(sys.argv[3])))\n'
    'os.close(int(sys.argv[2])); os.close(int(sys.argv[3]))\n'
    'open(sys.argv[1], "w").write(str(p.pid))\n'
    'time.sleep(600)\n'
)


class Conn(object):
    """A client connection to the loader, like the agent's."""

    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b''

    def send(self, data):
        self.sock.sendall(data)

    def read_frame(self):
        """(type, rid, payload), or None on EOF."""
        while True:
            if len(self.buf) >= 12:
                magic, version, ftype, rid, length = HEADER.unpack_from(self.buf)
                assert magic == b'MP' and version == 1, self.buf[:12]
                if len(self.buf) >= 12 + length:
                    payload = self.buf[12:12 + length]
                    self.buf = self.buf[12 + length:]
                    return ftype, rid, payload
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b''
            if not data:
                assert not self.buf, 'EOF in the middle of a frame: %r' % self.buf
                return None
            self.buf += data

    def is_closed(self):
        try:
            return self.read_frame() is None
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


class Result(object):
    def __init__(self):
        self.status = None
        self.reason = None
        self.headers = []
        self.chunks = []
        self.frames = []  # (type, payload) as received
        self.read_bodies = []  # the n of each READ_BODY
        self.error = None  # (code, message) of an ERROR
        self.ended = False

    @property
    def body(self):
        return b''.join(self.chunks)

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


def parse_response(payload):
    r = Reader(payload)
    status = r.u16()
    reason = r.bytes().decode('latin-1')
    headers = [(n.decode('latin-1'), v.decode('latin-1')) for n, v in r.pairs()]
    r.done()
    return status, reason, headers


def parse_error(payload):
    r = Reader(payload)
    code = r.u16()
    msg = r.bytes().decode('utf-8')
    r.done()
    return code, msg


def default_env(method='GET', path='/', **extra):
    env = [('REQUEST_METHOD', method), ('SCRIPT_NAME', ''), ('PATH_INFO', path),
           ('QUERY_STRING', ''), ('SERVER_NAME', 'localhost'), ('SERVER_PORT', '80'),
           ('SERVER_PROTOCOL', 'HTTP/1.1'), ('REMOTE_ADDR', '127.0.0.1')]
    env.extend(extra.items())
    return env


def do_request(conn, rid=1, env=None, body=None, flags=0, prefix=65536, answer=65536,
               read_response=True):
    """Send a REQUEST (+ body prefix, + pulled body) and read the response."""
    if env is None:
        env = default_env()
    out = []
    pos = 0
    if body is not None:
        flags |= 0x01
        head = body[:prefix]
        for i in range(0, len(head), 16384):
            out.append(frame(BODY, rid, head[i:i + 16384]))
        pos = len(head)
        out.append(frame(END if pos >= len(body) else MORE, rid))
    conn.send(request_frame(rid, env, flags) + b''.join(out))
    res = Result()
    if not read_response:
        return res
    while True:
        f = conn.read_frame()
        if f is None:
            res.frames.append(('EOF', None))
            return res
        ftype, frid, payload = f
        assert frid == rid, (frid, rid, NAMES.get(ftype))
        res.frames.append((ftype, payload))
        if ftype == READ_BODY:
            n = struct.unpack('>I', payload)[0]
            res.read_bodies.append(n)
            if pos >= len(body):
                conn.send(frame(END, rid))
            else:
                k = min(n, answer)
                conn.send(frame(BODY, rid, body[pos:pos + k]))
                pos += k
        elif ftype == RESPONSE:
            res.status, res.reason, res.headers = parse_response(payload)
        elif ftype == BODY:
            assert 1 <= len(payload) <= 65536, len(payload)
            res.chunks.append(payload)
        elif ftype == END:
            res.ended = True
            return res
        elif ftype == ERROR:
            res.error = parse_error(payload)
            return res
        else:
            raise AssertionError('unexpected frame %s' % NAMES.get(ftype, ftype))


class LoaderTestCase(unittest.TestCase):
    """Start a loader on a temporary app; tear everything down afterwards."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='wsgi-loader-test-')
        self.root = os.path.join(self.tmp, 'app')
        os.mkdir(self.root)
        self.sock_path = os.path.join(self.tmp, 'app.sock')
        self.proc = None
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in ('stdout_file', 'stderr_file'):
            if getattr(self, f, None) is not None:
                getattr(self, f).close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_app(self, source, name='passenger_wsgi.py'):
        with open(os.path.join(self.root, name), 'w') as f:
            f.write(textwrap.dedent(source))

    def path(self, name):
        return os.path.join(self.tmp, name)

    def start(self, source=None, startup_file=None, env=None, stdout_pipe=False,
              via_parent=False, keep_listener=False):
        if source is not None:
            self.write_app(source, startup_file or 'passenger_wsgi.py')
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.sock_path)
        listener.listen(16)
        r, w = os.pipe()
        lfd = fcntl.fcntl(listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        wfd = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(w)
        child_env = dict(os.environ)
        child_env.update({
            'PASSENGER_APP_ROOT': self.root,
            'PASSENGER_APP_ENV': 'production',
            'WSGI_ENV': 'production',
            'TEST_TMP': self.tmp,
        })
        child_env.pop('PASSENGER_STARTUP_FILE', None)
        if startup_file:
            child_env['PASSENGER_STARTUP_FILE'] = startup_file
        if env:
            child_env.update(env)
        self.stdout_file = None if stdout_pipe else open(self.path('stdout.log'), 'wb')
        self.stderr_file = open(self.path('stderr.log'), 'wb')
        argv = [PYTHON, '-c', TRAMPOLINE, str(lfd), str(wfd), PYTHON, LOADER]
        if via_parent:
            argv = [PYTHON, '-c', FAKE_AGENT, self.path('loader.pid'), str(lfd), str(wfd)] + argv
        self.proc = subprocess.Popen(
            argv,
            cwd=self.root, env=child_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self.stdout_file,
            stderr=self.stderr_file, pass_fds=(lfd, wfd))
        os.close(lfd)
        os.close(wfd)
        if keep_listener:
            self.listener = listener  # the agent's copy of the listening socket
        else:
            listener.close()
        self.ready = self.read_readiness(r)
        os.close(r)
        return self.ready

    def read_readiness(self, fd, timeout=20):
        data = b''
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError('no readiness frame within %ss' % timeout)
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        return data

    def start_ok(self, source, **kw):
        data = self.start(source, **kw)
        if data != frame(READY, 0, u32(1)):
            self.fail('expected READY, got %r; stderr:\n%s' % (data, self.stderr()))
        return data

    def connect(self):
        c = Conn(self.sock_path)
        self.conns.append(c)
        return c

    def stderr(self):
        self.stderr_file.flush()
        with open(self.path('stderr.log'), 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def wait_exit(self, timeout=10):
        return self.proc.wait(timeout)

    def wait_file(self, name, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.path(name)):
                with open(self.path(name)) as f:
                    return f.read()
            time.sleep(0.01)
        self.fail('%s was not written' % name)


HELLO_APP = '''
def application(environ, start_response):
    body = b'Hello, world!'
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
'''

# An app with several endpoints, chosen by PATH_INFO.
MULTI_APP = r'''
import hashlib, json, os, sys, time

TMP = os.environ['TEST_TMP']
KEPT = []

def marker(name, text='x'):
    with open(os.path.join(TMP, name), 'w') as f:
        f.write(text)

def wait_for(name):
    deadline = time.time() + 10
    while not os.path.exists(os.path.join(TMP, name)):
        if time.time() > deadline:
            raise RuntimeError('timed out waiting for ' + name)
        time.sleep(0.005)

class Closing(object):
    def __init__(self, chunks, name):
        self.chunks, self.name = chunks, name
    def __iter__(self):
        return iter(self.chunks)
    def close(self):
        marker(self.name, 'closed')

def application(environ, start_response):
    path = environ['PATH_INFO']
    inp = environ['wsgi.input']
    if path == '/hello':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'hello']
    if path == '/digest':
        data = inp.read()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [('%d %s' % (len(data), hashlib.sha256(data).hexdigest())).encode()]
    if path == '/read-sizes':
        # read(n) with various n, then readline, then the rest
        parts = []
        for n in (1, 7, 100, 70000, 3):
            parts.append(inp.read(n))
        parts.append(inp.readline())
        parts.append(inp.readline(5))
        parts.append(inp.read())
        parts.append(inp.read(10))  # at EOF: b''
        data = b''.join(parts)
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [('%d %s %r' % (len(data), hashlib.sha256(data).hexdigest(),
                               [len(p) for p in parts])).encode()]
    if path == '/lines':
        lines = list(inp)
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [('%d %s' % (len(lines), hashlib.sha256(b''.join(lines)).hexdigest())).encode()]
    if path == '/readlines':
        lines = inp.readlines()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [json.dumps([l.decode('latin-1') for l in lines]).encode()]
    if path == '/partial':
        first = inp.read(10)
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [first]
    if path == '/ignore-body':
        start_response('204 No Content', [])
        return []
    if path == '/stream':
        def gen():
            try:
                start_response('200 OK', [('Content-Type', 'text/plain')])
                yield b'one'
                wait_for('go1')
                yield b''
                yield b'two'
                wait_for('go2')
                yield b'three'
            finally:
                marker('stream-closed')
        return gen()
    if path == '/abort':
        def gen():
            try:
                start_response('200 OK', [('Content-Type', 'text/plain')])
                yield b'first'
                wait_for('go-abort')
                yield b'second' * 1000
                yield b'third'
                marker('abort-not-stopped')
            finally:
                marker('abort-closed')
        return gen()
    if path == '/write':
        write = start_response('200 OK', [('Content-Type', 'text/plain')])
        write(b'written-')
        write(b'')
        return Closing([b'returned'], 'write-closed')
    if path == '/closing':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return Closing([b'a', b'b'], 'closing-closed')
    if path == '/big':
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return [b'x' * 200000, b'y' * 10]
    if path == '/big-gen':
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return iter([b'x' * 200000, b'y' * 10])
    if path == '/list3':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'a', b'', b'bc', b'd']
    if path == '/error-before':
        raise ValueError('boom before headers')
    if path == '/error-in-gen':
        def gen():
            raise KeyError('boom in generator')
            yield b''
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return gen()
    if path == '/error-after':
        def gen():
            try:
                start_response('200 OK', [('Content-Type', 'text/plain')])
                yield b'partial'
                raise RuntimeError('boom after headers')
            finally:
                marker('error-after-closed')
        return gen()
    if path == '/exc-info':
        try:
            raise ValueError('handled')
        except ValueError:
            start_response('200 OK', [('Content-Type', 'text/plain')])
            start_response('503 Service Unavailable', [('Content-Type', 'text/plain')],
                           sys.exc_info())
        return [b'sorry']
    if path == '/exc-info-late':
        write = start_response('200 OK', [('Content-Type', 'text/plain')])
        write(b'sent')
        try:
            raise ValueError('too late')
        except ValueError:
            start_response('500 Oops', [], sys.exc_info())
        return [b'never']
    if path == '/twice':
        start_response('200 OK', [])
        start_response('200 OK', [])
        return [b'never']
    if path == '/bad-header':
        start_response('200 OK', [('X-Bad', 'a\r\nInjected: 1')])
        return [b'never']
    if path == '/bad-header-name':
        start_response('200 OK', [('X Bad:', 'a')])
        return [b'never']
    if path == '/bad-status':
        start_response('OK', [])
        return [b'never']
    if path == '/not-bytes':
        start_response('200 OK', [])
        return ['a str']
    if path == '/no-start-response':
        return [b'body']
    if path == '/headers':
        start_response('201 Created', [('Content-Type', 'text/plain'), ('Set-Cookie', 'a=1'),
                                       ('Set-Cookie', 'b=2'), ('X-Latin', 'caf\xe9')])
        return [b'']
    if path == '/file':
        f = open(os.path.join(TMP, 'data.bin'), 'rb')
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return environ['wsgi.file_wrapper'](f, 4096)
    if path == '/errors':
        environ['wsgi.errors'].write('a message to wsgi.errors without newline')
        environ['wsgi.errors'].writelines(['\n', 'second line\n'])
        environ['wsgi.errors'].flush()
        start_response('200 OK', [])
        return [b'ok']
    if path == '/slow':
        marker('slow-started')
        wait_for('slow-go')
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'slow done']
    if path == '/keep-write':
        KEPT.append(start_response('200 OK', []))
        return [b'kept']
    if path == '/stale-write':
        KEPT[0](b'stray bytes')
        start_response('200 OK', [])
        return [b'never']
    if path == '/exit':
        sys.exit(3)
    # default: dump the environ
    out = {}
    for k, v in environ.items():
        if isinstance(v, str):
            out[k] = v
        else:
            out[k] = repr(type(v).__name__) if k in ('wsgi.input', 'wsgi.errors', 'wsgi.file_wrapper') else repr(v)
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [json.dumps(out, sort_keys=True).encode('ascii')]
'''


class TestRequests(LoaderTestCase):

    def setUp(self):
        LoaderTestCase.setUp(self)
        self.start_ok(MULTI_APP)
        self.c = self.connect()

    def get(self, path, rid=1, method='GET', conn=None, **kw):
        return do_request(conn or self.c, rid, default_env(method, path), **kw)

    def test_hello_and_frames(self):
        res = self.get('/hello', rid=42)
        self.assertEqual(res.status, 200)
        self.assertEqual(res.reason, 'OK')
        self.assertEqual(res.headers, [('Content-Type', 'text/plain')])
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, BODY, END])
        self.assertEqual(res.body, b'hello')

    def test_two_requests_on_one_connection(self):
        for rid in (1, 2, 3):
            res = self.get('/hello', rid=rid)
            self.assertTrue(res.ended)
            self.assertEqual(res.body, b'hello')

    def test_many_connections_one_after_another(self):
        self.c.close()  # concurrency 1: an open connection is served until it closes
        for i in range(5):
            c = self.connect()
            self.assertEqual(self.get('/hello', conn=c).body, b'hello')
            c.close()

    def test_upgrade_request_is_answered_like_any_other(self):
        # WSGI cannot switch protocols: the app sees the headers and answers.
        env = default_env('GET', '/environ') + [
            ('HTTP_UPGRADE', 'websocket'), ('HTTP_CONNECTION', 'Upgrade')]
        res = do_request(self.c, 3, env, flags=0x04)
        self.assertEqual(res.status, 200, res.body)
        e = json.loads(res.body.decode('ascii'))
        self.assertEqual((e['HTTP_UPGRADE'], e['HTTP_CONNECTION']), ('websocket', 'Upgrade'))
        self.assertEqual(self.get('/hello', rid=4).body, b'hello')

    def test_environ(self):
        env = default_env('POST', '/caf\xc3\xa9')  # as latin-1 text: the bytes c3 a9
        env = [(n, v) for n, v in env if n != 'SERVER_PORT']
        env += [('QUERY_STRING', 'a=1&b=%20'), ('CONTENT_TYPE', 'text/plain'),
                ('CONTENT_LENGTH', '0'), ('HTTP_X_DUP', '1'), ('HTTP_X_DUP', '2'),
                ('HTTP_COOKIE', 'a=1'), ('HTTP_COOKIE', 'b=2'), ('MY_SETENV', 'first'),
                ('MY_SETENV', 'second'), ('HTTP_X_BIN', '\xff\x00x')]
        # PATH_INFO arrives as raw (percent-decoded) bytes: here UTF-8 of 'café'
        res = do_request(self.c, 5, [(n.encode('latin-1'), v.encode('latin-1')) for n, v in env],
                         flags=0x02, body=b'')
        self.assertEqual(res.status, 200, res.body)
        e = json.loads(res.body.decode('ascii'))
        self.assertEqual(e['PATH_INFO'], '/caf\xc3\xa9')  # latin-1 native string
        self.assertEqual(e['PATH_INFO'].encode('latin-1').decode('utf-8'), '/caf\xe9')
        self.assertEqual(e['REQUEST_METHOD'], 'POST')
        self.assertEqual(e['QUERY_STRING'], 'a=1&b=%20')
        self.assertEqual(e['CONTENT_TYPE'], 'text/plain')
        self.assertEqual(e['CONTENT_LENGTH'], '0')
        self.assertEqual(e['HTTP_X_DUP'], '1, 2')
        self.assertEqual(e['HTTP_COOKIE'], 'a=1; b=2')
        self.assertEqual(e['MY_SETENV'], 'second')
        self.assertEqual(e['HTTP_X_BIN'], '\xff\x00x')
        self.assertEqual(e['wsgi.url_scheme'], 'https')
        self.assertEqual(e['HTTPS'], 'on')
        self.assertEqual(e['SERVER_PORT'], '443')
        self.assertEqual(e['wsgi.version'], '(1, 0)')
        self.assertEqual(e['wsgi.multithread'], 'False')
        self.assertEqual(e['wsgi.multiprocess'], 'True')
        self.assertEqual(e['wsgi.run_once'], 'False')
        self.assertEqual(e['wsgi.input_terminated'], 'True')
        self.assertEqual(e['SCRIPT_NAME'], '')
        self.assertEqual(e['SERVER_PROTOCOL'], 'HTTP/1.1')
        self.assertNotIn('PASSENGER_APP_ENV', e)  # the process environment is not merged in

    def test_environ_defaults_and_https_env(self):
        res = do_request(self.c, 1, [])
        e = json.loads(res.body.decode('ascii'))
        for key, value in [('REQUEST_METHOD', 'GET'), ('SCRIPT_NAME', ''), ('PATH_INFO', '/'),
                           ('QUERY_STRING', ''), ('SERVER_NAME', 'localhost'),
                           ('SERVER_PORT', '80'), ('SERVER_PROTOCOL', 'HTTP/1.0'),
                           ('wsgi.url_scheme', 'http')]:
            self.assertEqual(e[key], value, key)
        self.assertNotIn('CONTENT_LENGTH', e)
        res = do_request(self.c, 2, [('HTTPS', 'on'), ('HTTP_CONTENT_TYPE', 'a/b'),
                                     ('HTTP_CONTENT_LENGTH', '3'), ('SCRIPT_NAME', '/'),
                                     ('PATH_INFO', 'x')])
        e = json.loads(res.body.decode('ascii'))
        self.assertEqual(e['wsgi.url_scheme'], 'https')
        self.assertEqual(e['SERVER_PORT'], '443')
        self.assertEqual(e['CONTENT_TYPE'], 'a/b')
        self.assertEqual(e['CONTENT_LENGTH'], '3')
        self.assertNotIn('HTTP_CONTENT_TYPE', e)
        self.assertNotIn('HTTP_CONTENT_LENGTH', e)
        self.assertEqual((e['SCRIPT_NAME'], e['PATH_INFO']), ('', '/x'))

    def test_post_large_body_pulled(self):
        body = os.urandom(200000)
        res = self.get('/digest', method='POST', body=body)
        self.assertEqual(res.status, 200)
        self.assertEqual(res.body.decode(),
                         '%d %s' % (len(body), hashlib.sha256(body).hexdigest()))
        # 64 KiB prefix + MORE; the rest pulled 64 KiB at a time, then END.
        self.assertEqual(res.read_bodies, [65536] * 4)

    def test_body_prefix_only(self):
        body = b'name=value&x=y'
        res = self.get('/digest', method='POST', body=body)
        self.assertEqual(res.body.decode(), '%d %s' % (len(body), hashlib.sha256(body).hexdigest()))
        self.assertEqual(res.read_bodies, [])

    def test_empty_body_with_more(self):
        res = self.get('/digest', method='POST', body=b'', prefix=0)
        self.assertEqual(res.body.decode(), '0 %s' % hashlib.sha256(b'').hexdigest())

    def test_read_sizes_small_answers(self):
        body = b''.join(b'line %d of the body\n' % i for i in range(8000))
        for prefix, answer in ((0, 65536), (50, 7), (65536, 1000), (65536, 3)):
            res = self.get('/read-sizes', method='POST', body=body, prefix=prefix, answer=answer)
            self.assertEqual(res.status, 200, res.body)
            n, digest, sizes = res.body.decode().split(' ', 2)
            self.assertEqual(int(n), len(body))
            self.assertEqual(digest, hashlib.sha256(body).hexdigest())
            sizes = eval(sizes)
            self.assertEqual(sizes[:5], [1, 7, 100, 70000, 3])
            self.assertEqual(sizes[-1], 0)
            self.assertLessEqual(sizes[6], 5)
            self.assertTrue(all(n == 65536 for n in res.read_bodies))

    def test_line_iteration(self):
        body = b''.join(b'%d\n' % i * (i % 50) for i in range(3000)) + b'no newline at end'
        expected = body.splitlines(True)
        for prefix, answer in ((100, 13), (65536, 65536)):
            res = self.get('/lines', method='POST', body=body, prefix=prefix, answer=answer)
            self.assertEqual(res.body.decode(), '%d %s' % (
                len(expected), hashlib.sha256(body).hexdigest()))

    def test_readlines(self):
        res = self.get('/readlines', method='POST', body=b'a\nbb\n\nccc', prefix=3, answer=2)
        self.assertEqual(json.loads(res.body.decode()), ['a\n', 'bb\n', '\n', 'ccc'])

    def test_unread_body_keeps_connection_in_step(self):
        body = os.urandom(300000)
        res = self.get('/partial', method='POST', body=body, prefix=65536)
        self.assertEqual(res.body, body[:10])
        self.assertEqual(res.read_bodies, [])
        res = self.get('/ignore-body', rid=2, method='POST', body=body, prefix=5)
        self.assertEqual(res.status, 204)
        self.assertEqual(res.read_bodies, [])
        self.assertEqual(self.get('/hello', rid=3).body, b'hello')

    def test_streaming_chunk_by_chunk(self):
        self.c.send(request_frame(9, default_env('GET', '/stream')))
        types = []

        def expect(ftype, payload=None):
            f = self.c.read_frame()
            self.assertIsNotNone(f)
            self.assertEqual(f[0], ftype, NAMES.get(f[0]))
            if payload is not None:
                self.assertEqual(f[2], payload)
            types.append(f[0])

        expect(RESPONSE)
        expect(BODY, b'one')  # arrives while the generator waits for go1
        open(self.path('go1'), 'w').close()
        expect(BODY, b'two')  # the empty chunk is skipped
        open(self.path('go2'), 'w').close()
        expect(BODY, b'three')
        expect(END)
        self.assertEqual(self.wait_file('stream-closed'), 'x')

    def test_head(self):
        res = self.get('/hello', method='HEAD')
        self.assertEqual(res.status, 200)
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, END])
        res = self.get('/closing', rid=2, method='HEAD')
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, END])
        self.assertEqual(self.wait_file('closing-closed'), 'closed')
        res = self.get('/big-gen', rid=3, method='HEAD')
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, END])
        res = self.get('/write', rid=4, method='HEAD')
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, END])
        res = self.get('/error-before', rid=5, method='HEAD')
        self.assertEqual(res.status, 500)
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, END])

    def test_write_callable(self):
        res = self.get('/write')
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, BODY, BODY, END])
        self.assertEqual(res.chunks, [b'written-', b'returned'])
        self.assertEqual(self.wait_file('write-closed'), 'closed')

    def test_close_called(self):
        res = self.get('/closing')
        self.assertEqual(res.chunks, [b'a', b'b'])
        # close() runs before END is sent
        self.assertTrue(os.path.exists(self.path('closing-closed')))

    def test_big_bodies_split_at_64k(self):
        for path in ('/big', '/big-gen'):
            res = self.get(path)
            self.assertEqual(res.body, b'x' * 200000 + b'y' * 10)
            self.assertEqual([len(c) for c in res.chunks], [65536, 65536, 65536, 3392, 10])

    def test_list_body_skips_empty_chunks(self):
        res = self.get('/list3')
        self.assertEqual(res.chunks, [b'a', b'bc', b'd'])

    def test_headers(self):
        res = self.get('/headers')
        self.assertEqual((res.status, res.reason), (201, 'Created'))
        self.assertEqual(res.headers, [('Content-Type', 'text/plain'), ('Set-Cookie', 'a=1'),
                                       ('Set-Cookie', 'b=2'), ('X-Latin', 'caf\xe9')])
        self.assertEqual([f[0] for f in res.frames], [RESPONSE, END])
        raw = res.frames[0][1]
        self.assertIn(b'caf\xe9', raw)

    def test_error_before_headers(self):
        res = self.get('/error-before')
        self.assertEqual(res.status, 500)
        self.assertEqual(res.header('Content-Type'), 'text/html; charset=utf-8')
        self.assertIn(b'500 Internal Server Error', res.body)
        self.assertEqual(int(res.header('Content-Length')), len(res.body))
        self.assertTrue(res.ended)
        self.assertIn('ValueError: boom before headers', self.stderr())
        self.assertIn('passenger_wsgi.py', self.stderr())
        # the connection goes on
        self.assertEqual(self.get('/hello', rid=2).body, b'hello')

    def test_error_in_generator_before_output(self):
        res = self.get('/error-in-gen')
        self.assertEqual(res.status, 500)
        self.assertIn("KeyError: 'boom in generator'", self.stderr())

    def test_error_after_headers(self):
        res = self.get('/error-after')
        self.assertEqual(res.status, 200)
        self.assertEqual(res.chunks, [b'partial'])
        self.assertFalse(res.ended)
        self.assertEqual(res.error[0], 500)
        self.assertIn('RuntimeError', res.error[1])
        self.assertEqual(self.wait_file('error-after-closed'), 'x')
        self.assertIn('RuntimeError: boom after headers', self.stderr())
        self.assertEqual(self.get('/hello', rid=2).body, b'hello')

    def test_exc_info(self):
        res = self.get('/exc-info')
        self.assertEqual((res.status, res.reason), (503, 'Service Unavailable'))
        self.assertEqual(res.body, b'sorry')
        res = self.get('/exc-info-late', rid=2)
        self.assertEqual(res.status, 200)
        self.assertEqual(res.chunks, [b'sent'])
        self.assertEqual(res.error[0], 500)
        self.assertIn('ValueError: too late', self.stderr())

    def test_app_errors_give_500(self):
        for rid, path, text in ((1, '/twice', 'start_response() was already called'),
                                (2, '/bad-header', 'invalid character'),
                                (3, '/bad-header-name', 'invalid header name'),
                                (4, '/bad-status', 'invalid status'),
                                (5, '/not-bytes', 'must contain bytes'),
                                (6, '/no-start-response', 'did not call start_response')):
            res = self.get(path, rid=rid)
            self.assertEqual(res.status, 500, path)
            self.assertIn(text, self.stderr())
            self.assertNotIn(b'Injected', b''.join(f[1] for f in res.frames))

    def test_stale_write_callable_is_refused(self):
        self.assertEqual(self.get('/keep-write').body, b'kept')
        res = self.get('/stale-write', rid=2)
        self.assertEqual(res.status, 500)
        self.assertNotIn(b'stray', b''.join(f[1] for f in res.frames))
        self.assertIn('after the response was complete', self.stderr())

    def test_file_wrapper(self):
        data = os.urandom(10000)
        with open(self.path('data.bin'), 'wb') as f:
            f.write(data)
        res = self.get('/file')
        self.assertEqual(res.body, data)
        self.assertEqual([len(c) for c in res.chunks], [4096, 4096, 1808])

    def test_wsgi_errors(self):
        self.get('/errors')
        err = self.stderr()
        self.assertIn('a message to wsgi.errors without newline\nsecond line\n', err)

    def test_ping(self):
        self.c.send(frame(PING, 0))
        self.assertEqual(self.c.read_frame(), (PONG, 0, b''))
        self.assertEqual(self.get('/hello').body, b'hello')
        # a PING while the loader waits for the body
        self.c.send(request_frame(3, default_env('POST', '/digest'), flags=1) + frame(PING, 0))
        self.assertEqual(self.c.read_frame(), (PONG, 0, b''))
        self.c.send(frame(BODY, 3, b'abc') + frame(END, 3))
        f = self.c.read_frame()
        self.assertEqual(f[0], RESPONSE)

    def test_garbage_closes_connection_and_loader_goes_on(self):
        self.c.send(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        f = self.c.read_frame()
        self.assertEqual(f[0], ERROR)
        self.assertTrue(self.c.is_closed())
        # fewer bytes than a header, then EOF
        c = self.connect()
        c.send(b'MP\x01')
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(c.is_closed())
        c = self.connect()
        self.assertEqual(self.get('/hello', conn=c).body, b'hello')
        self.assertIsNone(self.proc.poll())

    def test_protocol_errors(self):
        cases = [
            (frame(0x7f, 1), 400),  # unknown type
            (HEADER.pack(b'MP', 2, PING, 0, 0), 1),  # version 2
            (HEADER.pack(b'MP', 1, BODY, 1, MAX_PAYLOAD + 1), 400),  # too large
            (frame(PING, 0, b'x'), 400),  # PING with a payload
            (frame(REQUEST, 1, b'\x08' + enc_pairs([]) + enc_pairs([])), 400),  # unknown flag
            (frame(REQUEST, 1, b'\x05' + enc_pairs([]) + enc_pairs([])), 400),  # upgrade + body
            (frame(REQUEST, 1, b'\x00' + u32(0xffffffff)), 400),  # pair count lies
            (frame(REQUEST, 1, b'\x00' + enc_pairs([]) + enc_pairs([]) + b'x'), 400),  # trailing
            (frame(BODY, 1, b'x'), 400),  # BODY outside a request
            (request_frame(1, [], flags=1) + frame(BODY, 2, b'x'), 400),  # wrong request id
            (request_frame(1, [], flags=1) + frame(RESPONSE, 1, b''), 400),
            (request_frame(1, [], flags=1) + frame(BODY, 1, b'x' * 65536)
             + frame(BODY, 1, b'x'), 400),  # prefix above 64 KiB
        ]
        self.c.close()
        for data, code in cases:
            c = self.connect()
            c.send(data)
            f = c.read_frame()
            self.assertIsNotNone(f, data[:20])
            self.assertEqual(f[0], ERROR, data[:20])
            self.assertEqual(parse_error(f[2])[0], code, data[:20])
            self.assertTrue(c.is_closed(), data[:20])
            c.close()
        self.assertEqual(self.get('/hello', conn=self.connect()).body, b'hello')

    def test_bad_body_answer_drops_connection(self):
        # a BODY larger than READ_BODY asked for
        self.c.send(request_frame(1, default_env('POST', '/digest'), flags=1) + frame(MORE, 1))
        f = self.c.read_frame()
        self.assertEqual(f[0], READ_BODY)
        self.c.send(frame(BODY, 1, b'x' * 65537))
        f = self.c.read_frame()
        self.assertEqual(f[0], ERROR)
        self.assertTrue(self.c.is_closed())
        c = self.connect()
        self.assertEqual(self.get('/hello', conn=c).body, b'hello')

    def test_agent_error_during_body(self):
        self.c.send(request_frame(1, default_env('POST', '/digest'), flags=1) + frame(MORE, 1))
        self.assertEqual(self.c.read_frame()[0], READ_BODY)
        self.c.send(frame(ERROR, 1, struct.pack('>H', 499) + enc_bytes('client went away')))
        self.assertTrue(self.c.is_closed())
        c = self.connect()
        self.assertEqual(self.get('/hello', conn=c).body, b'hello')

    def test_agent_goes_away_mid_response(self):
        self.c.send(request_frame(1, default_env('GET', '/abort')))
        self.assertEqual(self.c.read_frame()[0], RESPONSE)
        self.assertEqual(self.c.read_frame()[2], b'first')
        self.c.close()
        open(self.path('go-abort'), 'w').close()
        self.assertEqual(self.wait_file('abort-closed'), 'x')
        self.assertFalse(os.path.exists(self.path('abort-not-stopped')))
        c = self.connect()
        self.assertEqual(self.get('/hello', conn=c).body, b'hello')
        self.assertIsNone(self.proc.poll())

    def test_agent_goes_away_mid_request_body(self):
        self.c.send(request_frame(1, default_env('POST', '/digest'), flags=1)
                    + frame(BODY, 1, b'abc') + frame(MORE, 1))
        self.assertEqual(self.c.read_frame()[0], READ_BODY)
        self.c.close()
        c = self.connect()
        self.assertEqual(self.get('/hello', conn=c).body, b'hello')
        self.assertIn('aborted', self.stderr())

    def test_sigterm_when_idle(self):
        self.assertEqual(self.get('/hello').body, b'hello')
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(), 0)

    def test_sigterm_finishes_current_request(self):
        self.c.send(request_frame(1, default_env('GET', '/slow')))
        self.wait_file('slow-started')
        self.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.assertIsNone(self.proc.poll())
        open(self.path('slow-go'), 'w').close()
        f = self.c.read_frame()
        self.assertEqual(f[0], RESPONSE)
        self.assertEqual(self.c.read_frame()[2], b'slow done')
        self.assertEqual(self.c.read_frame()[0], END)
        self.assertEqual(self.wait_exit(), 0)
        self.assertTrue(self.c.is_closed())

    def test_sys_exit_in_app(self):
        res = self.get('/exit')
        self.assertEqual(res.status, 500)
        self.assertEqual(self.wait_exit(), 3)


VALIDATED_APP = r'''
import warnings
warnings.simplefilter('error')
from wsgiref.validate import validator

def app(environ, start_response):
    inp = environ['wsgi.input']
    if environ['REQUEST_METHOD'] == 'POST':
        first = inp.readline()
        part = inp.read(5)
        rest = b''.join(list(inp))
        lines = inp.readlines()
        body = b'%d/%d/%d/%d' % (len(first), len(part), len(rest), len(lines))
    else:
        body = b'hello ' + environ['PATH_INFO'].encode('latin-1')
    environ['wsgi.errors'].write('validated request\n')
    environ['wsgi.errors'].flush()
    if environ['PATH_INFO'] == '/gen':
        def gen():
            yield body
            yield b'!'
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return gen()
    if environ['PATH_INFO'] == '/write':
        write = start_response('200 OK', [('Content-Type', 'text/plain')])
        write(body)
        return []
    start_response('200 OK', [('Content-Type', 'text/plain'),
                              ('Content-Length', str(len(body)))])
    return [body]

application = validator(app)
'''


class TestValidator(LoaderTestCase):

    def test_wsgiref_validator_is_happy(self):
        self.start_ok(VALIDATED_APP)
        c = self.connect()
        rid = 0
        for method, path, body in (('GET', '/', None), ('GET', '/gen', None),
                                   ('GET', '/write', None), ('HEAD', '/', None),
                                   ('POST', '/', b'line one\n' + b'z' * 100000),
                                   ('POST', '/gen', b''), ('GET', '/caf\xc3\xa9', None)):
            rid += 1
            env = default_env(method, path)
            if body is not None:
                env.append(('CONTENT_LENGTH', str(len(body))))
                env.append(('CONTENT_TYPE', 'application/octet-stream'))
            res = do_request(c, rid, env, body=body)
            self.assertEqual(res.status, 200, (path, res.body, self.stderr()))
            self.assertTrue(res.ended)
        res = do_request(c, 99, [])  # an empty environment: every default is filled
        self.assertEqual(res.status, 200, self.stderr())
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(), 0)
        err = self.stderr()
        self.assertIn('validated request', err)
        for bad in ('Warning', 'Error', 'Traceback', 'Exception ignored'):
            self.assertNotIn(bad, err)


class TestStartup(LoaderTestCase):

    def spawn_error(self, source, **kw):
        data = self.start(source, **kw)
        self.assertEqual(self.wait_exit(), 1)
        name, rid, fields = vec_decode(data)
        self.assertEqual((name, rid), ('SPAWN_ERROR', 0))
        return fields['summary'].decode('utf-8'), fields['details'].decode('utf-8')

    def test_ready_frame(self):
        data = self.start_ok(HELLO_APP)
        self.assertEqual(vec_decode(data), ('READY', 0, {'concurrency': 1}))
        res = do_request(self.connect(), 1, default_env())
        self.assertEqual(res.body, b'Hello, world!')
        self.assertEqual(res.header('Content-Length'), '13')

    def test_syntax_error(self):
        summary, details = self.spawn_error('def application(environ, start_response)\n    pass\n')
        self.assertTrue(summary.startswith('SyntaxError: '), summary)
        self.assertNotIn('\n', summary)
        self.assertIn(os.path.join(self.root, 'passenger_wsgi.py'), details)
        self.assertIn('SyntaxError', self.stderr())

    def test_import_error(self):
        summary, details = self.spawn_error('import no_such_module_xyz\n')
        self.assertEqual(summary, "ModuleNotFoundError: No module named 'no_such_module_xyz'")
        self.assertIn('Traceback (most recent call last)', details)
        self.assertIn('passenger_wsgi.py", line 1', details)
        self.assertNotIn('wsgi-loader.py', details)
        self.assertIn('no_such_module_xyz', self.stderr())

    def test_exception_at_load_shows_real_path(self):
        summary, details = self.spawn_error('x = 1\n\ndef f():\n    raise RuntimeError("bad config")\n\nf()\n')
        self.assertEqual(summary, 'RuntimeError: bad config')
        self.assertIn('%s", line 4, in f' % os.path.join(self.root, 'passenger_wsgi.py'), details)

    def test_missing_application(self):
        summary, details = self.spawn_error('app = lambda e, s: []\n')
        self.assertIn("does not define 'application'", summary)
        self.assertIn("application = app", summary)

    def test_application_not_callable(self):
        summary, _ = self.spawn_error('application = 42\n')
        self.assertIn('not callable', summary)

    def test_missing_startup_file(self):
        summary, _ = self.spawn_error(None)
        self.assertTrue(summary.startswith('FileNotFoundError'), summary)

    def test_sys_exit_at_load(self):
        summary, _ = self.spawn_error('import sys\nsys.exit(5)\n')
        self.assertEqual(summary, 'SystemExit: 5')

    def test_custom_startup_file_and_sys_path(self):
        with open(os.path.join(self.root, 'helper.py'), 'w') as f:
            f.write('GREETING = b"from helper"\n')
        self.start_ok('''
            import os, sys, helper, passenger_wsgi
            def application(environ, start_response):
                start_response('200 OK', [])
                return [helper.GREETING, b' ', __name__.encode(), b' ', __file__.encode(),
                        b' ', os.getcwd().encode(), b' ', sys.path[0].encode()]
        ''', startup_file='app.wsgi')
        res = do_request(self.connect(), 1, default_env())
        self.assertEqual(res.body.decode(), 'from helper passenger_wsgi %s %s %s' % (
            os.path.join(self.root, 'app.wsgi'), self.root, self.root))

    def test_passenger_events(self):
        self.start_ok('''
            import os, passenger
            TMP = os.environ['TEST_TMP']
            def started(forked):
                with open(os.path.join(TMP, 'started'), 'w') as f:
                    f.write(repr(forked))
            def stopping():
                with open(os.path.join(TMP, 'stopped'), 'w') as f:
                    f.write('stopped')
            passenger.on_event('starting_worker_process', started)
            passenger.on_event('stopping_worker_process', stopping)
            try:
                passenger.on_event('no_such_event', stopping)
            except ValueError:
                pass
            else:
                raise AssertionError('unknown events must be refused')
            def application(environ, start_response):
                start_response('200 OK', [])
                return [passenger.app_root.encode()]
        ''')
        self.assertEqual(self.wait_file('started'), 'False')
        self.assertEqual(do_request(self.connect(), 1, default_env()).body,
                         self.root.encode())
        self.assertFalse(os.path.exists(self.path('stopped')))
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(), 0)
        self.assertEqual(self.wait_file('stopped'), 'stopped')

    def test_failing_start_handler_is_a_spawn_error(self):
        summary, _ = self.spawn_error('''
            import passenger
            def started(forked):
                raise IOError('no database')
            passenger.on_event('starting_worker_process', started)
            application = lambda e, s: []
        ''')
        self.assertEqual(summary, 'OSError: no database')

    def test_stdout_is_line_buffered(self):
        self.start_ok('''
            print('hello from the app at load time')
            def application(environ, start_response):
                print('hello from a request')
                start_response('200 OK', [])
                return [b'ok']
        ''', stdout_pipe=True)
        self.assertEqual(self.proc.stdout.readline(), b'hello from the app at load time\n')
        do_request(self.connect(), 1, default_env())
        self.assertEqual(self.proc.stdout.readline(), b'hello from a request\n')
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(), 0)
        self.proc.stdout.close()

    def test_fds_not_inherited_by_app_children(self):
        self.start_ok('''
            import subprocess, sys
            CHECK = ("import os\\nopen_fds = []\\nfor fd in (3, 4):\\n"
                     "    try:\\n        os.fstat(fd)\\n        open_fds.append(fd)\\n"
                     "    except OSError:\\n        pass\\nprint(open_fds)")
            def application(environ, start_response):
                out = subprocess.run([sys.executable, '-c', CHECK], stdout=subprocess.PIPE,
                                     close_fds=False).stdout
                start_response('200 OK', [])
                return [out]
        ''')
        res = do_request(self.connect(), 1, default_env())
        self.assertEqual(res.body, b'[]\n', self.stderr())

    def test_sigint_exits_cleanly(self):
        self.start_ok(HELLO_APP)
        self.assertEqual(do_request(self.connect(), 1, default_env()).status, 200)
        self.proc.send_signal(signal.SIGINT)
        self.assertEqual(self.wait_exit(), 0)

    def test_exits_when_listening_socket_is_shut_down(self):
        self.start_ok(HELLO_APP, keep_listener=True)
        self.assertEqual(do_request(self.connect(), 1, default_env()).status, 200)
        self.conns[-1].close()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.assertEqual(self.wait_exit(), 0)
        self.listener.close()

    def test_exits_when_agent_dies(self):
        # An intermediate "agent" starts the loader, then is killed: the
        # loader, reparented, notices within LISTEN_POLL_MS and exits.
        self.write_app(HELLO_APP)
        self.start_ok(None, via_parent=True)
        pid = int(self.wait_file('loader.pid'))
        self.assertEqual(do_request(self.connect(), 1, default_env()).status, 200)
        self.conns[-1].close()
        self.proc.kill()
        self.proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with open('/proc/%d/stat' % pid) as f:
                    if f.read().split(') ', 1)[1].startswith(('Z', 'X')):
                        break
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            self.fail('the loader did not exit after its parent died')
        self.assertIn('is gone; exiting', self.stderr())


OOB_APP = r"""
import os, sys, time, passenger

TMP = os.environ['TEST_TMP']
AT_LOAD = passenger.request_oob_work()  # no request: False
LATE = []

def log_line(name, text):
    with open(os.path.join(TMP, name), 'a') as f:
        f.write(text + '\n')

def first_handler():
    log_line('oob-log', 'first')
    if os.path.exists(os.path.join(TMP, 'oob-fail')):
        raise RuntimeError('the first oob handler failed')

def second_handler():
    log_line('oob-log', 'second')
    if os.path.exists(os.path.join(TMP, 'oob-slow')):
        log_line('oob-slow-started', 'x')
        while not os.path.exists(os.path.join(TMP, 'oob-slow-go')):
            time.sleep(0.005)

passenger.on_event('oob_work', first_handler)
passenger.on_event('oob_work', second_handler)

def application(environ, start_response):
    path = environ['PATH_INFO']
    if path == '/header':
        start_response('200 OK', [('Content-Type', 'text/plain'), ('!~Request-OOB-Work', 'yes')])
        return [b'header']
    if path == '/api':
        asked = passenger.request_oob_work()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [repr(asked).encode()]
    if path == '/api-before-start-response':
        passenger.request_oob_work()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'early']
    if path == '/api-and-header':
        passenger.request_oob_work()
        start_response('200 OK', [('!~request-oob-work', 'x')])
        return [b'once']
    if path == '/api-then-error':
        passenger.request_oob_work()
        raise ValueError('failing after asking for oob work')
    if path == '/api-too-late':
        def gen():
            start_response('200 OK', [])
            yield b'first'
            LATE.append(passenger.request_oob_work())
            yield b'second'
        return gen()
    if path == '/late':
        start_response('200 OK', [])
        return [repr((AT_LOAD, LATE)).encode()]
    start_response('200 OK', [])
    return [b'plain']
"""


class TestOutOfBandWork(LoaderTestCase):

    def setUp(self):
        LoaderTestCase.setUp(self)
        self.start_ok(OOB_APP)
        self.c = self.connect()

    def get(self, path, rid=1):
        return do_request(self.c, rid, default_env('GET', path))

    def oob_headers(self, res):
        return [(n, v) for n, v in res.headers if n.lower() == '!~request-oob-work']

    def oob_log(self):
        try:
            with open(self.path('oob-log')) as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def test_header_from_the_app_is_passed_through(self):
        res = self.get('/header')
        self.assertEqual(res.status, 200)
        self.assertEqual(self.oob_headers(res), [('!~Request-OOB-Work', 'yes')])
        self.assertEqual(self.oob_headers(self.get('/plain', 2)), [])

    def test_request_oob_work_adds_the_header(self):
        res = self.get('/api')
        self.assertEqual(res.body, b'True')
        self.assertEqual(res.headers, [('Content-Type', 'text/plain'),
                                       ('!~Request-OOB-Work', 'true')])
        res = self.get('/api-before-start-response', 2)
        self.assertEqual(self.oob_headers(res), [('!~Request-OOB-Work', 'true')])
        # only for the request that asked
        self.assertEqual(self.oob_headers(self.get('/plain', 3)), [])

    def test_request_oob_work_does_not_duplicate_the_header(self):
        res = self.get('/api-and-header')
        self.assertEqual(self.oob_headers(res), [('!~request-oob-work', 'x')])

    def test_request_oob_work_on_the_error_page(self):
        res = self.get('/api-then-error')
        self.assertEqual(res.status, 500)
        self.assertEqual(self.oob_headers(res), [('!~Request-OOB-Work', 'true')])

    def test_request_oob_work_outside_a_request_or_too_late(self):
        res = self.get('/api-too-late')
        self.assertEqual(res.body, b'firstsecond')
        self.assertEqual(self.oob_headers(res), [])
        self.assertEqual(self.get('/late', 2).body, b'(False, [False])')

    def test_oob_work_runs_the_handlers_and_answers_oob_done(self):
        res = self.get('/api')
        self.assertTrue(self.oob_headers(res))
        self.c.send(frame(OOB_WORK, 0))
        self.assertEqual(self.c.read_frame(), (OOB_DONE, 0, b''))
        self.assertEqual(self.oob_log(), ['first', 'second'])
        # any request id is echoed
        self.c.send(frame(OOB_WORK, 77))
        self.assertEqual(self.c.read_frame(), (OOB_DONE, 77, b''))
        self.assertEqual(self.oob_log(), ['first', 'second'] * 2)
        # the connection goes on with requests
        self.assertEqual(self.get('/plain', 3).body, b'plain')
        # and on a new connection too
        self.c.close()
        c = self.connect()
        c.send(frame(OOB_WORK, 5) + frame(PING, 0))
        self.assertEqual(c.read_frame(), (OOB_DONE, 5, b''))
        self.assertEqual(c.read_frame(), (PONG, 0, b''))
        self.assertEqual(do_request(c, 4, default_env('GET', '/plain')).body, b'plain')

    def test_failing_handler_still_gives_oob_done(self):
        open(self.path('oob-fail'), 'w').close()
        self.c.send(frame(OOB_WORK, 3))
        self.assertEqual(self.c.read_frame(), (OOB_DONE, 3, b''))
        self.assertEqual(self.oob_log(), ['first', 'second'])
        err = self.stderr()
        self.assertIn('oob_work handler failed', err)
        self.assertIn('RuntimeError: the first oob handler failed', err)
        self.assertEqual(self.get('/plain').body, b'plain')
        self.assertIsNone(self.proc.poll())

    def test_sigterm_during_oob_work_waits_for_it(self):
        open(self.path('oob-slow'), 'w').close()
        self.c.send(frame(OOB_WORK, 0))
        self.wait_file('oob-slow-started')
        self.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.assertIsNone(self.proc.poll())
        open(self.path('oob-slow-go'), 'w').close()
        self.assertEqual(self.c.read_frame(), (OOB_DONE, 0, b''))
        self.assertEqual(self.wait_exit(), 0)
        self.assertTrue(self.c.is_closed())


# ---------------------------------------------------------------------------
# Smart spawning
# ---------------------------------------------------------------------------

SMART_APP = r"""
import gc, os, random, sys, passenger

TMP = os.environ['TEST_TMP']
with open(os.path.join(TMP, 'loads'), 'a') as f:
    f.write('%d\n' % os.getpid())
with open(os.path.join(TMP, 'loads')) as f:
    LOADS = len(f.read().split())
LOADED_IN = os.getpid()
SPAWN_METHOD_AT_LOAD = passenger.spawn_method
REQUESTS = [0]
STARTED = []
print('printed by the preloader at load time')

def started(forked):
    STARTED.append(forked)
    if os.path.exists(os.path.join(TMP, 'fail-start')):
        raise RuntimeError('no database in the worker')

def stopping():
    with open(os.path.join(TMP, 'stopped-%d' % os.getpid()), 'w') as f:
        f.write('stopped')

def oob():
    with open(os.path.join(TMP, 'oob-%d' % os.getpid()), 'w') as f:
        f.write('oob')

passenger.on_event('starting_worker_process', started)
passenger.on_event('stopping_worker_process', stopping)
passenger.on_event('oob_work', oob)

def application(environ, start_response):
    REQUESTS[0] += 1
    if environ['PATH_INFO'] == '/fail':
        raise ValueError('boom in a worker')
    if environ['PATH_INFO'] == '/print':
        print('printed by worker %d' % os.getpid())
        environ['wsgi.errors'].write('logged by worker %d\n' % os.getpid())
    fds = {3: os.fstat(3).st_ino}
    body = repr({
        'pid': os.getpid(), 'ppid': os.getppid(), 'loads': LOADS, 'loaded_in': LOADED_IN,
        'requests': REQUESTS[0], 'started': STARTED, 'random': random.random(),
        'gc_enabled': gc.isenabled(),
        'frozen': gc.get_freeze_count() if hasattr(gc, 'get_freeze_count') else None,
        'spawn_method': SPAWN_METHOD_AT_LOAD, 'fd3': fds[3],
        'stdout_line_buffering': sys.stdout.line_buffering,
        'stderr_line_buffering': sys.stderr.line_buffering,
    }).encode()
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [body]
"""


class Worker(object):
    def __init__(self, pid, sock_path, listener_ino, out_r):
        self.pid = pid
        self.sock_path = sock_path
        self.listener_ino = listener_ino
        self.out_r = out_r  # read end of the worker's output pipe
        self.ready = None


class TestSmartSpawning(LoaderTestCase):

    def setUp(self):
        LoaderTestCase.setUp(self)
        self.workers = []
        self.ctl = None
        self.ctl_buf = b''
        self.rid = 0

    def tearDown(self):
        for w in self.workers:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except OSError:
                pass
            os.close(w.out_r)
        if self.ctl is not None:
            self.ctl.close()
        LoaderTestCase.tearDown(self)

    def start_preloader(self, source, ready=True):
        """Start the loader as a preloader: fd 3 = our socketpair's other end."""
        self.write_app(source)
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.settimeout(20)
        r, w = os.pipe()
        cfd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        wfd = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
        theirs.close()
        os.close(w)
        child_env = dict(os.environ)
        child_env.update({'PASSENGER_APP_ROOT': self.root, 'TEST_TMP': self.tmp,
                          'PASSENGER_SPAWN_METHOD': 'smart'})
        child_env.pop('PASSENGER_STARTUP_FILE', None)
        self.stdout_file = open(self.path('stdout.log'), 'wb')
        self.stderr_file = open(self.path('stderr.log'), 'wb')
        self.proc = subprocess.Popen(
            [PYTHON, '-c', TRAMPOLINE, str(cfd), str(wfd), PYTHON, LOADER],
            cwd=self.root, env=child_env, stdin=subprocess.DEVNULL,
            stdout=self.stdout_file, stderr=self.stderr_file, pass_fds=(cfd, wfd))
        os.close(cfd)
        os.close(wfd)
        data = self.read_readiness(r)
        os.close(r)
        if ready and data != frame(READY, 0, u32(1)):
            self.fail('expected READY from the preloader, got %r; stderr:\n%s'
                      % (data, self.stderr()))
        return data

    def read_ctl(self):
        """The next frame from the preloader: (type, rid, payload)."""
        buf = self.ctl_buf
        while len(buf) < 12 or len(buf) < 12 + struct.unpack('>I', buf[8:12])[0]:
            chunk = self.ctl.recv(65536)
            if not chunk:
                self.fail('the preloader closed the control socket (got %r)' % buf)
            buf += chunk
        magic, version, ftype, rid, length = HEADER.unpack_from(buf)
        self.assertEqual((magic, version), (b'MP', 1))
        self.ctl_buf = buf[12 + length:]
        return ftype, rid, buf[12:12 + length]

    def send_fork(self, fds):
        self.rid += 1
        socket.send_fds(self.ctl, [frame(FORK, self.rid)], fds)
        return self.rid

    def fork(self, ready=True):
        """FORK a worker on a new listening socket, readiness pipe and output pipe."""
        n = len(self.workers)
        sock_path = self.path('worker%d.sock' % n)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(16)
        ready_r, ready_w = os.pipe()
        out_r, out_w = os.pipe()
        os.set_blocking(out_r, False)
        rid = self.send_fork([listener.fileno(), ready_w, out_w])
        ino = os.fstat(listener.fileno()).st_ino
        listener.close()
        os.close(ready_w)
        os.close(out_w)
        ftype, frid, payload = self.read_ctl()
        self.assertEqual((NAMES.get(ftype), frid), ('FORKED', rid), payload)
        pid = struct.unpack('>I', payload)[0]
        w = Worker(pid, sock_path, ino, out_r)
        self.workers.append(w)
        w.ready = self.read_readiness(ready_r)
        os.close(ready_r)
        if ready:
            self.assertEqual(w.ready, frame(READY, 0, u32(1)), self.stderr())
        return w

    def get(self, w, path='/', rid=1):
        c = Conn(w.sock_path)
        self.conns.append(c)
        res = do_request(c, rid, default_env('GET', path))
        self.assertEqual(res.status, 200, self.stderr())
        return ast.literal_eval(res.body.decode()), c

    def output(self, w, want, timeout=10):
        data = b''
        deadline = time.time() + timeout
        while want not in data and time.time() < deadline:
            try:
                chunk = os.read(w.out_r, 65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:
                break
            data += chunk
        return data.decode('utf-8', 'replace')

    def ppid(self, pid):
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('PPid:'):
                    return int(line.split()[1])

    def state(self, pid):
        """The /proc state letter of ``pid``, or None once it is gone (reaped)."""
        try:
            with open('/proc/%d/stat' % pid) as f:
                return f.read().rsplit(') ', 1)[1][0]
        except (FileNotFoundError, ProcessLookupError):
            return None

    def fd_inodes(self, pid):
        inodes = set()
        for name in os.listdir('/proc/%d/fd' % pid):
            try:
                inodes.add(os.stat('/proc/%d/fd/%s' % (pid, name)).st_ino)
            except OSError:
                pass
        return inodes

    def wait_gone(self, pid, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.state(pid) is None:
                return True
            time.sleep(0.02)
        return False

    def test_fork_a_worker_and_serve(self):
        self.start_preloader(SMART_APP)
        w = self.fork()
        self.assertNotEqual(w.pid, self.proc.pid)
        self.assertEqual(self.ppid(w.pid), self.proc.pid)
        info, c = self.get(w)
        self.assertEqual(info['pid'], w.pid)
        self.assertEqual(info['ppid'], self.proc.pid)
        self.assertEqual(info['loaded_in'], self.proc.pid)
        self.assertEqual(info['loads'], 1)
        self.assertEqual(info['started'], [True])
        self.assertEqual(info['spawn_method'], 'smart')
        # fd 3 is the listening socket it was given (the readiness pipe was
        # closed: read_readiness saw EOF), and the control socket is not kept
        self.assertEqual(info['fd3'], w.listener_ino)
        control_ino = os.stat('/proc/%d/fd/3' % self.proc.pid).st_ino
        self.assertNotIn(control_ino, self.fd_inodes(w.pid))
        self.assertIn(w.listener_ino, self.fd_inodes(w.pid))
        self.assertTrue(info['gc_enabled'])
        if sys.version_info >= (3, 7):
            self.assertGreater(info['frozen'], 0)
        self.assertTrue(info['stdout_line_buffering'])
        self.assertTrue(info['stderr_line_buffering'])
        # the preloader itself has no starting_worker_process and serves nothing
        self.assertIsNone(self.proc.poll())
        # out-of-band work in a forked worker: handlers registered at load time
        c.send(frame(OOB_WORK, 0))
        self.assertEqual(c.read_frame(), (OOB_DONE, 0, b''))
        self.assertTrue(os.path.exists(self.path('oob-%d' % w.pid)))

    def test_two_workers_share_the_module_loaded_once(self):
        self.start_preloader(SMART_APP)
        a = self.fork()
        b = self.fork()
        self.assertNotEqual(a.pid, b.pid)
        ia1, ca = self.get(a)
        ia2 = ast.literal_eval(do_request(ca, 2, default_env()).body.decode())
        ib1, _ = self.get(b)
        self.assertEqual((ia1['loads'], ib1['loads']), (1, 1))
        self.assertEqual(ia1['loaded_in'], self.proc.pid)
        self.assertEqual(ib1['loaded_in'], self.proc.pid)
        # module state is per process after the fork
        self.assertEqual((ia1['requests'], ia2['requests'], ib1['requests']), (1, 2, 1))
        self.assertEqual(ib1['started'], [True])
        self.assertNotEqual(ia1['random'], ib1['random'])
        with open(self.path('loads')) as f:
            self.assertEqual(f.read().split(), [str(self.proc.pid)])

    def test_pipelined_forks(self):
        # Two FORKs (each one sendmsg with its descriptors) and a PING sent
        # before any answer is read: each FORK gets its own descriptors.
        self.start_preloader(SMART_APP)
        paths, rids, ready, outs = [], [], [], []
        for n in range(2):
            paths.append(self.path('pipelined%d.sock' % n))
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(paths[-1])
            listener.listen(4)
            rr, rw = os.pipe()
            orr, ow = os.pipe()
            os.set_blocking(orr, False)
            rids.append(self.send_fork([listener.fileno(), rw, ow]))
            listener.close()
            os.close(rw)
            os.close(ow)
            ready.append(rr)
            outs.append(orr)
        self.ctl.sendall(frame(PING, 99))
        answers = [self.read_ctl() for _ in range(3)]
        self.assertEqual([(NAMES[t], rid) for t, rid, _ in answers],
                         [('FORKED', rids[0]), ('FORKED', rids[1]), ('PONG', 99)])
        for n in range(2):
            pid = struct.unpack('>I', answers[n][2])[0]
            w = Worker(pid, paths[n], None, outs[n])
            self.workers.append(w)
            self.assertEqual(self.read_readiness(ready[n]), frame(READY, 0, u32(1)))
            os.close(ready[n])
            self.assertEqual(self.get(w)[0]['pid'], pid)

    def test_gc_left_disabled_by_the_app_stays_disabled(self):
        self.start_preloader('import gc\ngc.disable()\n' + SMART_APP)
        self.assertFalse(self.get(self.fork())[0]['gc_enabled'])

    def test_worker_output_goes_to_its_pipe(self):
        self.start_preloader(SMART_APP)
        w = self.fork()
        self.get(w, '/print')
        out = self.output(w, b'logged by worker')
        self.assertIn('printed by worker %d\n' % w.pid, out)
        self.assertIn('logged by worker %d\n' % w.pid, out)
        self.assertNotIn('preloader at load time', out)
        self.stdout_file.flush()
        with open(self.path('stdout.log')) as f:
            preloader_out = f.read()
        self.assertIn('printed by the preloader at load time', preloader_out)
        self.assertNotIn('worker', preloader_out)

    def test_worker_tracebacks_are_clean(self):
        self.start_preloader(SMART_APP)
        w = self.fork()
        c = Conn(w.sock_path)
        self.conns.append(c)
        self.assertEqual(do_request(c, 1, default_env('GET', '/fail')).status, 500)
        out = self.output(w, b'boom in a worker')
        self.assertIn('ValueError: boom in a worker', out)
        self.assertNotIn('BecomeWorker', out)
        self.assertNotIn('During handling', out)

    def test_ping_and_unexpected_frames(self):
        self.start_preloader(SMART_APP)
        self.ctl.sendall(frame(PING, 9))
        self.assertEqual(self.read_ctl(), (PONG, 9, b''))
        self.ctl.sendall(request_frame(1, default_env()))
        ftype, rid, payload = self.read_ctl()
        self.assertEqual((ftype, rid), (ERROR, 1))
        self.assertEqual(parse_error(payload)[0], 400)
        self.ctl.sendall(frame(PING, 0))
        self.assertEqual(self.read_ctl(), (PONG, 0, b''))
        self.fork()

    def test_fork_with_wrong_descriptors_is_an_error(self):
        self.start_preloader(SMART_APP)
        self.ctl.sendall(frame(FORK, 4))  # no descriptors
        ftype, rid, payload = self.read_ctl()
        self.assertEqual((ftype, rid), (ERROR, 4))
        self.assertIn('without file descriptors', parse_error(payload)[1])
        r, w = os.pipe()
        rid = self.send_fork([w, w])  # two, not three
        ftype, frid, payload = self.read_ctl()
        self.assertEqual((ftype, frid), (ERROR, rid))
        self.assertIn('2 file descriptors', parse_error(payload)[1])
        rid = self.send_fork([r, w, w])  # the first one is not a socket
        ftype, frid, payload = self.read_ctl()
        self.assertEqual((ftype, frid), (ERROR, rid))
        self.assertIn('not a socket', parse_error(payload)[1])
        os.close(w)
        self.assertEqual(os.read(r, 10), b'', 'the preloader kept a copy of the pipe')
        os.close(r)
        w = self.fork()  # still in service
        self.assertEqual(self.get(w)[0]['loads'], 1)

    def test_closing_the_control_socket_ends_the_preloader(self):
        self.start_preloader(SMART_APP)
        w = self.fork()
        self.ctl.close()
        self.ctl = None
        self.assertEqual(self.wait_exit(), 0)
        # the worker keeps running and serving
        info, _ = self.get(w)
        self.assertEqual(info['pid'], w.pid)
        # the preloader is no worker: no stopping_worker_process there
        self.assertFalse(os.path.exists(self.path('stopped-%d' % self.proc.pid)))

    def test_sigterm_ends_the_preloader(self):
        self.start_preloader(SMART_APP)
        w = self.fork()
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(), 0)
        self.assertEqual(self.get(w)[0]['pid'], w.pid)

    def test_exited_workers_are_reaped(self):
        self.start_preloader(SMART_APP)
        a = self.fork()
        b = self.fork()
        self.get(a)
        os.kill(a.pid, signal.SIGTERM)
        os.kill(b.pid, signal.SIGKILL)
        for w in (a, b):
            self.assertTrue(self.wait_gone(w.pid), 'worker %d left a zombie (state %s)'
                            % (w.pid, self.state(w.pid)))
        # the worker stopped cleanly: stopping_worker_process ran in it
        self.assertEqual(self.wait_file('stopped-%d' % a.pid), 'stopped')
        self.assertIsNone(self.proc.poll())
        self.fork()

    def test_failing_start_handler_in_a_worker(self):
        self.start_preloader(SMART_APP)
        open(self.path('fail-start'), 'w').close()
        w = self.fork(ready=False)
        name, rid, fields = vec_decode(w.ready)
        self.assertEqual(name, 'SPAWN_ERROR')
        self.assertEqual(fields['summary'], b'RuntimeError: no database in the worker')
        self.assertTrue(self.wait_gone(w.pid))
        self.assertIn('no database in the worker', self.output(w, b'no database'))
        os.unlink(self.path('fail-start'))
        w = self.fork()
        self.assertEqual(self.get(w)[0]['started'], [True])

    def test_spawn_error_in_the_preloader(self):
        data = self.start_preloader('import no_such_module_xyz\n', ready=False)
        self.assertEqual(self.wait_exit(), 1)
        name, rid, fields = vec_decode(data)
        self.assertEqual(name, 'SPAWN_ERROR')
        self.assertEqual(fields['summary'],
                         b"ModuleNotFoundError: No module named 'no_such_module_xyz'")

    def test_a_listening_socket_on_fd_3_is_refused(self):
        self.write_app(HELLO_APP)
        data = self.start(env={'PASSENGER_SPAWN_METHOD': 'smart'})
        self.assertEqual(self.wait_exit(), 1)
        name, rid, fields = vec_decode(data)
        self.assertEqual(name, 'SPAWN_ERROR')
        self.assertIn(b'listening socket', fields['summary'])


class TestVectors(unittest.TestCase):

    def load(self):
        if not os.path.exists(VECTORS):
            self.skipTest('docs/protocol-vectors.json does not exist yet')
        with open(VECTORS) as f:
            return json.load(f)

    def test_own_codec_matches_vectors(self):
        doc = self.load()
        for vec in doc['vectors']:
            data = bytes.fromhex(vec['hex'])
            fields = vector_fields(vec)
            self.assertEqual(vec_decode(data), (vec['type'], vec['request_id'], fields),
                             vec['name'])
            self.assertEqual(vec_encode(vec['type'], vec['request_id'], fields), data, vec['name'])
            for i in range(len(data)):
                self.assertIsNone(vec_decode(data[:i]), vec['name'])
        for vec in doc['invalid']:
            data = bytes.fromhex(vec['hex'])
            if vec['error'] == 'incomplete':
                self.assertIsNone(vec_decode(data), vec['name'])
            else:
                with self.assertRaises(VecError) as cm:
                    vec_decode(data)
                self.assertEqual(cm.exception.kind, vec['error'], vec['name'])

    def test_loader_codec_matches_vectors(self):
        doc = self.load()
        L = load_loader_module()
        received = (REQUEST, BODY, END, MORE, PING, PONG, ERROR, READ_BODY, OOB_WORK, FORK)
        for vec in doc['vectors']:
            data = bytes.fromhex(vec['hex'])
            ftype = T[vec['type']]
            fields = vector_fields(vec)
            rid = vec['request_id']
            parsed = L.parse_frame(data)
            self.assertEqual(parsed[:2], (ftype, rid), vec['name'])
            self.assertEqual(parsed[3], len(data))
            for i in range(len(data)):
                self.assertIsNone(L.parse_frame(data[:i]), vec['name'])
            if ftype in received:
                decoded = L.decode_message(ftype, parsed[2])
                if ftype == REQUEST:
                    flags, env = decoded
                    self.assertEqual(flags, fields['flags'])
                    expected = {}
                    for n, v in vec['env']:
                        n = n.encode('utf-8').decode('latin-1')
                        v = v.encode('utf-8').decode('latin-1')
                        if n in expected and n.startswith('HTTP_'):
                            expected[n] += ', ' + v
                        else:
                            expected[n] = v
                    self.assertEqual(env, expected, vec['name'])
                elif ftype == BODY:
                    self.assertEqual(decoded, fields['data'])
                elif ftype == ERROR:
                    self.assertEqual(decoded, (vec['code'], vec['message']))
                elif ftype == READ_BODY:
                    self.assertEqual(decoded, vec['max'])
                else:
                    self.assertIsNone(decoded)
            # what the loader sends, it encodes byte for byte
            if ftype == READY:
                self.assertEqual(L.encode_frame(L.READY, rid, L.U32.pack(vec['concurrency'])), data)
            elif ftype == SPAWN_ERROR:
                self.assertEqual(L.encode_frame(L.SPAWN_ERROR, rid, L.encode_bytes(fields['summary'])
                                                + L.encode_bytes(fields['details'])), data)
            elif ftype == RESPONSE:
                status = '%d %s' % (vec['status'], vec['reason'])
                self.assertEqual(L.encode_response(rid, status, [tuple(h) for h in vec['headers']]),
                                 data, vec['name'])
            elif ftype == ERROR:
                self.assertEqual(L.encode_error(vec['code'], vec['message'], rid), data)
            elif ftype == FORKED:
                self.assertEqual(L.encode_frame(L.FORKED, rid, L.U32.pack(vec['pid'])), data)
            elif ftype in (BODY, END, PONG, READ_BODY, OOB_DONE):
                self.assertEqual(L.encode_frame(ftype, rid, parsed[2]), data)
        for vec in doc['invalid']:
            data = bytes.fromhex(vec['hex'])
            if vec['error'] == 'incomplete':
                self.assertIsNone(L.parse_frame(data), vec['name'])
                continue
            with self.assertRaises(L.ProtocolError) as cm:
                parsed = L.parse_frame(data)
                self.assertIsNotNone(parsed, vec['name'])
                L.decode_message(parsed[0], parsed[2])
            if data[3] in received or vec['error'] != 'malformed':
                self.assertEqual(cm.exception.kind, vec['error'], vec['name'])
            else:
                # a message an app never receives (HELLO, STATUS, ...): refused anyway
                self.assertIn(cm.exception.kind, ('malformed', 'unexpected'), vec['name'])


class TestInputUnit(unittest.TestCase):
    """wsgi.input against a fake connection, for the edge cases of readline."""

    def make(self, prefix, chunks):
        L = load_loader_module()
        chunks = list(chunks)

        class FakeConn(object):
            failed = None
            asked = []

            def send(self, data):
                self.asked.append(struct.unpack('>I', data[12:])[0])

            def read_request_frame(self, rid):
                if chunks:
                    return L.BODY, chunks.pop(0)
                return L.END, b''

        conn = FakeConn()
        return L.InputStream(conn, 1, prefix, True), conn

    def test_readline_limits(self):
        s, conn = self.make(b'ab', [b'cd', b'e\nfg', b'hij\n'])
        self.assertEqual(s.readline(3), b'abc')
        self.assertEqual(s.readline(0), b'')
        self.assertEqual(s.readline(1), b'd')
        self.assertEqual(s.readline(), b'e\n')
        self.assertEqual(s.readline(2), b'fg')
        self.assertEqual(s.readline(10), b'hij\n')
        self.assertEqual(s.readline(), b'')
        self.assertEqual(s.read(), b'')
        self.assertEqual(s.read(5), b'')

    def test_read_exact_sizes(self):
        data = bytes(range(256)) * 10
        pieces = [data[i:i + 37] for i in range(100, len(data), 37)]
        s, conn = self.make(data[:100], pieces)
        out = [s.read(0), s.read(150), s.read(1), s.read(2000), s.read(-1)]
        self.assertEqual([len(o) for o in out], [0, 150, 1, 2000, len(data) - 2151])
        self.assertEqual(b''.join(out), data)

    def test_not_read_not_pulled(self):
        s, conn = self.make(b'abc', [b'def'])
        self.assertEqual(s.read(3), b'abc')
        self.assertEqual(conn.asked, [])
        self.assertEqual(s.read(1), b'd')
        self.assertEqual(conn.asked, [65536])


if __name__ == '__main__':
    unittest.main()
