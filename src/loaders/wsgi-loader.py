#!/usr/bin/env python3
"""The WSGI loader of passenger-agent.

The agent starts one of these per Python application process:

    python3 wsgi-loader.py          (cwd = the application root)

with, in the environment, PASSENGER_APP_ROOT (absolute), PASSENGER_STARTUP_FILE
(relative to the app root, default ``passenger_wsgi.py``) and the app's own
variables, fd 3 = a listening Unix stream socket and fd 4 = the write end of
the readiness pipe. The loader imports the startup file as the module
``passenger_wsgi``, takes its ``application`` callable, reports ``READY`` (or
``SPAWN_ERROR``) on fd 4 and then serves requests, one at a time, over the
frame protocol of docs/protocol.md on the connections it accepts on fd 3.

With PASSENGER_SPAWN_METHOD=smart it is a *preloader* instead: fd 3 is a
connected control socket, the app is loaded once, and every FORK frame
(which carries a worker's listening socket, readiness pipe and output pipe)
forks a worker that serves exactly as above.

Only the standard library is used. See docs/wsgi.md for the environ we
provide, the small ``passenger`` API module, smart spawning and out-of-band
work.
"""

import array
import errno
import fcntl
import gc
import io
import importlib.machinery
import importlib.util
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import traceback
import types

# ---------------------------------------------------------------------------
# The frame protocol (docs/protocol.md)
# ---------------------------------------------------------------------------

MAGIC = 0x4D50  # b'MP'
VERSION = 1
HEADER = struct.Struct('>HBBII')  # magic, version, type, request id, payload length
HEADER_LEN = HEADER.size  # 12
MAX_PAYLOAD_LEN = 1 << 20
MAX_BODY_CHUNK = 64 * 1024
MAX_BODY_PREFIX = 64 * 1024
READ_BODY_SIZE = 64 * 1024
U16 = struct.Struct('>H')
U32 = struct.Struct('>I')

HELLO = 0x01
HELLO_OK = 0x02
CONFIGURE = 0x03
CONFIGURE_OK = 0x04
REQUEST = 0x10
BODY = 0x11
END = 0x12
MORE = 0x13
READ_BODY = 0x14
RELEASE = 0x15  # sent by loaders whose apps can hijack a connection; never by this one
RESPONSE = 0x20
ERROR = 0x30
PING = 0x40
PONG = 0x41
STATUS = 0x50
STATUS_REPLY = 0x51
READY = 0x60
SPAWN_ERROR = 0x61
FORK = 0x70
FORKED = 0x71
OOB_WORK = 0x72
OOB_DONE = 0x73

TYPE_NAMES = {
    HELLO: 'HELLO', HELLO_OK: 'HELLO_OK', CONFIGURE: 'CONFIGURE',
    CONFIGURE_OK: 'CONFIGURE_OK', REQUEST: 'REQUEST', BODY: 'BODY', END: 'END',
    MORE: 'MORE', READ_BODY: 'READ_BODY', RELEASE: 'RELEASE', RESPONSE: 'RESPONSE', ERROR: 'ERROR',
    PING: 'PING', PONG: 'PONG', STATUS: 'STATUS', STATUS_REPLY: 'STATUS_REPLY',
    READY: 'READY', SPAWN_ERROR: 'SPAWN_ERROR', FORK: 'FORK', FORKED: 'FORKED',
    OOB_WORK: 'OOB_WORK', OOB_DONE: 'OOB_DONE',
}
KNOWN_TYPES = frozenset(TYPE_NAMES)
# Types whose payload has a fixed size: checked from the header alone.
FIXED_PAYLOAD_LEN = {
    HELLO: 13, CONFIGURE_OK: 0, END: 0, MORE: 0, READ_BODY: 4, PING: 0, PONG: 0, READY: 4,
    FORK: 0, FORKED: 4, OOB_WORK: 0, OOB_DONE: 0, RELEASE: 0,
}

FLAG_HAS_BODY = 0x01
FLAG_HTTPS = 0x02
# The client asks to switch protocols. WSGI has no way to switch, so such a
# request is answered like any other (the app sees HTTP_UPGRADE and may
# answer 426 or 400).
FLAG_UPGRADE = 0x04

# ERROR codes we send. 1 is fixed by the spec; the others are HTTP statuses.
ERROR_UNSUPPORTED_VERSION = 1
ERROR_PROTOCOL = 400
ERROR_APPLICATION = 500

RECV_BUFFER_SIZE = 256 * 1024
LISTEN_POLL_MS = 2000  # how often an idle loader checks that its agent lives

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_pack_u16 = U16.pack
_pack_u32 = U32.pack
_unpack_u32 = U32.unpack_from


class ProtocolError(Exception):
    """The peer broke the protocol: answer ERROR where possible, then close.

    ``kind`` names the failure as docs/protocol-vectors.json does: bad_magic,
    bad_version, unknown_type, too_large, malformed (a payload that does not
    decode), unexpected (a valid frame out of place) or eof (closed mid-frame).
    """

    def __init__(self, message, request_id=0, kind='malformed', code=ERROR_PROTOCOL):
        Exception.__init__(self, message)
        self.request_id = request_id
        self.kind = kind
        self.code = code


class PeerAborted(Exception):
    """The agent sent ERROR during a request: it gave the request up."""


def encode_frame(ftype, request_id=0, payload=b''):
    """One frame as bytes."""
    if len(payload) > MAX_PAYLOAD_LEN:
        raise ValueError('payload of %d bytes exceeds the 1 MiB limit' % len(payload))
    return _pack_header(MAGIC, VERSION, ftype, request_id, len(payload)) + payload


def encode_bytes(data):
    return _pack_u32(len(data)) + data


def encode_pairs(pairs):
    parts = [_pack_u32(len(pairs))]
    for name, value in pairs:
        parts.append(_pack_u32(len(name)))
        parts.append(name)
        parts.append(_pack_u32(len(value)))
        parts.append(value)
    return b''.join(parts)


def encode_response(request_id, status, headers):
    """A RESPONSE frame from a WSGI status line and header list (validated)."""
    return encode_frame(RESPONSE, request_id, _parse_status(status)[1] + _encode_headers(headers))


def encode_error(code, message, request_id=0):
    msg = message.encode('utf-8', 'replace')[:4096]
    return encode_frame(ERROR, request_id, _pack_u16(code) + encode_bytes(msg))


def check_header(buf, offset=0):
    """Validate the 12-byte header at ``offset``; return (type, id, length).

    Raises ProtocolError for a bad magic, version, type or length: all of
    them are decided from the header alone, before any payload is read.
    """
    magic, version, ftype, request_id, length = _unpack_header(buf, offset)
    if magic != MAGIC:
        raise ProtocolError('bad magic %02x %02x: the peer does not speak the frame protocol'
                            % (magic >> 8, magic & 0xff), kind='bad_magic')
    if version != VERSION:
        raise ProtocolError('unsupported protocol version', kind='bad_version',
                            code=ERROR_UNSUPPORTED_VERSION)
    if ftype not in KNOWN_TYPES:
        raise ProtocolError('unknown message type 0x%02x' % ftype, request_id, 'unknown_type')
    if length > MAX_PAYLOAD_LEN:
        raise ProtocolError('payload of %d bytes exceeds the 1 MiB limit' % length, request_id,
                            'too_large')
    fixed = FIXED_PAYLOAD_LEN.get(ftype)
    if fixed is not None and fixed != length:
        raise ProtocolError('%s with a payload of %d bytes (it has %d)'
                            % (TYPE_NAMES[ftype], length, fixed), request_id)
    return ftype, request_id, length


def parse_frame(buf):
    """Parse one frame at the start of ``buf``.

    Returns None while the frame is incomplete, else (type, request id,
    payload, frame length); raises ProtocolError when it is invalid.
    """
    if len(buf) < HEADER_LEN:
        return None
    ftype, request_id, length = check_header(buf)
    if len(buf) < HEADER_LEN + length:
        return None
    return ftype, request_id, bytes(buf[HEADER_LEN:HEADER_LEN + length]), HEADER_LEN + length


def _skip_pairs(payload, off, end):
    """Validate ``pairs`` at ``off`` without decoding them; return the offset after."""
    unpack = _unpack_u32
    try:
        count = unpack(payload, off)[0]
        off += 4
        if count > (end - off) >> 3:  # every pair needs at least 8 bytes
            raise ProtocolError('pair count %d exceeds the payload' % count)
        for _ in range(count):
            name_end = off + 4 + unpack(payload, off)[0]
            off = name_end + 4 + unpack(payload, name_end)[0]
            if off > end:
                raise ProtocolError('pair length exceeds the payload')
    except struct.error:
        raise ProtocolError('truncated pairs')
    return off


def _decode_pairs(payload, text, off, end, into):
    """Decode ``pairs`` at ``off`` into the empty dict ``into``; return the offset after.

    Names and values are str slices of ``text``, which is ``payload``
    decoded as latin-1 once: latin-1 maps byte i to code point i, so byte
    offsets are string offsets. The hot loop checks nothing: the count is
    bounded by the payload size first, an offset past the buffer makes
    unpack_from raise struct.error, and the end offset is checked after the
    loop (a short slice of a lying length is thrown away with the dict).
    """
    unpack = _unpack_u32
    try:
        count = unpack(payload, off)[0]
        start = off = off + 4
        if count > (end - off) >> 3:  # every pair needs at least 8 bytes
            raise ProtocolError('pair count %d exceeds the payload' % count)
        for _ in range(count):
            name_start = off + 4
            name_end = name_start + unpack(payload, off)[0]
            value_start = name_end + 4
            off = value_start + unpack(payload, name_end)[0]
            into[text[name_start:name_end]] = text[value_start:off]
    except struct.error:
        raise ProtocolError('truncated pairs')
    if off > end:
        raise ProtocolError('pair length exceeds the payload')
    if len(into) != count:
        # A name was repeated (rare): decode again, joining repeated request
        # headers into one CGI variable; for other names the last one wins.
        into.clear()
        off = start
        for _ in range(count):
            name_start = off + 4
            name_end = name_start + unpack(payload, off)[0]
            value_start = name_end + 4
            off = value_start + unpack(payload, name_end)[0]
            name = text[name_start:name_end]
            if name in into and name[:5] == 'HTTP_':
                into[name] = into[name] + ('; ' if name == 'HTTP_COOKIE' else ', ') \
                    + text[value_start:off]
            else:
                into[name] = text[value_start:off]
    return off


def decode_request(payload):
    """REQUEST payload -> (flags, environ dict of latin-1 str). Options are skipped.

    A request header sent twice (two HTTP_X pairs) becomes one variable with
    the values joined by ', ' ('; ' for HTTP_COOKIE); for any other name the
    last pair wins.
    """
    end = len(payload)
    if end < 1:
        raise ProtocolError('empty REQUEST payload')
    flags = payload[0]
    if flags & ~(FLAG_HAS_BODY | FLAG_HTTPS | FLAG_UPGRADE):
        raise ProtocolError('unknown REQUEST flags 0x%02x' % flags)
    if flags & FLAG_UPGRADE and flags & FLAG_HAS_BODY:
        raise ProtocolError('an upgrade REQUEST cannot have a body')
    text = payload.decode('latin-1')
    env = {}
    off = _skip_pairs(payload, 1, end)  # options: validated, ignored
    off = _decode_pairs(payload, text, off, end, env)
    if off != end:
        raise ProtocolError('%d trailing bytes after the REQUEST payload' % (end - off))
    return flags, env


def decode_error(payload):
    """ERROR payload -> (code, message str); the message must be UTF-8."""
    if len(payload) < 6:
        raise ProtocolError('truncated ERROR payload')
    code = U16.unpack_from(payload, 0)[0]
    n = _unpack_u32(payload, 2)[0]
    if 6 + n != len(payload):
        raise ProtocolError('bad ERROR message length')
    try:
        return code, payload[6:].decode('utf-8')
    except UnicodeDecodeError:
        raise ProtocolError('the ERROR message is not UTF-8')


def decode_message(ftype, payload):
    """Decode the payload of a message this loader receives.

    REQUEST -> (flags, environ); BODY -> bytes; ERROR -> (code, message);
    READ_BODY -> int; END, MORE, PING, PONG, OOB_WORK, FORK -> None (FORK
    is for a preloader, its descriptors ride beside the bytes). Any other type
    is not meant for an application process: ProtocolError (kind 'unexpected').
    """
    if ftype == REQUEST:
        return decode_request(payload)
    if ftype == BODY:
        return payload
    if ftype == ERROR:
        return decode_error(payload)
    if ftype in (END, MORE, PING, PONG, READ_BODY, OOB_WORK, FORK):
        if len(payload) != FIXED_PAYLOAD_LEN[ftype]:
            raise ProtocolError('bad %s payload length' % TYPE_NAMES[ftype])
        return _unpack_u32(payload, 0)[0] if ftype == READ_BODY else None
    raise ProtocolError('unexpected message type %s' % TYPE_NAMES.get(ftype, ftype),
                        kind='unexpected')


class Connection(object):
    """A connection from the agent: one receive buffer, frames parsed in place."""

    __slots__ = ('sock', 'buf', 'view', 'start', 'end', 'failed')

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray(RECV_BUFFER_SIZE)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        # None, or the exception that made this connection unusable.
        self.failed = None

    def read_frame(self):
        """Return (type, request id, payload bytes); EOFError on a clean EOF."""
        while True:
            start = self.start
            avail = self.end - start
            if avail >= HEADER_LEN:
                ftype, request_id, length = check_header(self.buf, start)
                total = HEADER_LEN + length
                if avail >= total:
                    payload = bytes(self.view[start + HEADER_LEN:start + total]) if length else b''
                    start += total
                    if start == self.end:
                        self.start = self.end = 0
                    else:
                        self.start = start
                    return ftype, request_id, payload
                need = total
            else:
                need = HEADER_LEN
            if start + need > len(self.buf):
                # Move the partial frame to the front; grow for a big payload.
                if need > len(self.buf):
                    new = bytearray(max(need, 2 * len(self.buf)))
                    new[:avail] = self.buf[start:self.end]
                    self.view.release()
                    self.buf = new
                    self.view = memoryview(new)
                else:
                    self.buf[:avail] = self.buf[start:self.end]
                self.start = 0
                self.end = avail
            n = self.sock.recv_into(self.view[self.end:])
            if not n:
                if avail:
                    raise ProtocolError('connection closed in the middle of a frame', kind='eof')
                raise EOFError
            self.end += n

    def send(self, data):
        if self.failed is not None:
            raise ConnectionError('the connection to the agent is broken: %s' % (self.failed,))
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.failed = e
            raise

    def read_request_frame(self, request_id):
        """Read the next frame of request ``request_id``, answering PINGs."""
        while True:
            ftype, rid, payload = self.read_frame()
            if ftype == PING:
                self.send(encode_frame(PONG, rid))
                continue
            if rid != request_id:
                raise ProtocolError('frame for request %d during request %d' % (rid, request_id),
                                    request_id)
            if ftype == ERROR:
                raise PeerAborted(_describe_error(payload))
            return ftype, payload


def _describe_error(payload):
    try:
        return 'ERROR %d: %s' % decode_error(payload)
    except ProtocolError as e:
        return 'malformed ERROR (%s)' % (e,)


# ---------------------------------------------------------------------------
# wsgi.input, wsgi.errors, wsgi.file_wrapper
# ---------------------------------------------------------------------------

class InputStream(object):
    """wsgi.input: the body prefix, then BODY frames pulled with READ_BODY.

    The network is only asked (READ_BODY 64 KiB) when the buffered data
    cannot satisfy the caller; read(-1) reads to the end. A body that is
    never read is never pulled.
    """

    __slots__ = ('_conn', '_rid', '_buf', '_pos', '_more')

    def __init__(self, conn, request_id, data, more):
        self._conn = conn
        self._rid = request_id
        self._buf = data
        self._pos = 0
        self._more = more

    def _detach(self):
        self._conn = None
        self._buf = b''
        self._pos = 0
        self._more = False

    def _pull(self):
        """One READ_BODY round trip: a non-empty chunk, or b'' at the end."""
        conn = self._conn
        if conn is None:
            self._more = False
            return b''
        try:
            if conn.failed is not None:
                raise ConnectionError('the connection to the agent is broken')
            conn.send(_pack_header(MAGIC, VERSION, READ_BODY, self._rid, 4)
                      + _pack_u32(READ_BODY_SIZE))
            ftype, payload = conn.read_request_frame(self._rid)
            if ftype == BODY:
                if not payload or len(payload) > READ_BODY_SIZE:
                    raise ProtocolError('BODY of %d bytes answering READ_BODY %d'
                                        % (len(payload), READ_BODY_SIZE), self._rid)
                return payload
            if ftype == END:
                self._more = False
                return b''
            raise ProtocolError('unexpected message type %s while reading the body'
                                % TYPE_NAMES[ftype], self._rid, 'unexpected')
        except EOFError:
            self._fail(ConnectionResetError(
                'the agent closed the connection during the request body'))
        except (ProtocolError, PeerAborted, OSError) as e:
            self._fail(e)

    def _fail(self, exc):
        self._more = False
        if self._conn is not None and self._conn.failed is None:
            self._conn.failed = exc
        if isinstance(exc, OSError):
            raise exc
        raise IOError('error reading the request body: %s' % (exc,))

    def _gather(self, size, line):
        """The rest of read() and readline(), once the buffer alone cannot
        answer: the buffered bytes, then chunks pulled until there are
        ``size`` bytes (all of the body when size < 0) or, for a ``line``,
        through the first newline. What follows the cut in the last chunk
        stays buffered."""
        buf = self._buf
        pos = self._pos
        parts = [buf[pos:]] if pos < len(buf) else []
        have = len(buf) - pos
        self._buf = b''
        self._pos = 0
        while self._more and (size < 0 or have < size):
            chunk = self._pull()
            if not chunk:
                break
            limit = len(chunk) if size < 0 else min(len(chunk), size - have)
            i = chunk.find(b'\n', 0, limit) if line else -1
            if i >= 0:
                cut = i + 1
            elif limit < len(chunk):
                cut = limit
            else:
                parts.append(chunk)
                have += len(chunk)
                continue
            parts.append(chunk[:cut])
            self._buf = chunk
            self._pos = cut
            break
        return b''.join(parts)

    def read(self, size=-1):
        buf = self._buf
        pos = self._pos
        if size is None or size < 0:
            if self._more:
                return self._gather(-1, False)
            self._buf = b''
            self._pos = 0
            return buf[pos:]
        avail = len(buf) - pos
        if avail >= size:
            self._pos = pos + size
            return buf[pos:pos + size]
        return self._gather(size, False)

    def readline(self, size=-1):
        if size is None:
            size = -1
        buf = self._buf
        pos = self._pos
        if size < 0:
            i = buf.find(b'\n', pos)
        else:
            i = buf.find(b'\n', pos, pos + size)
        if i >= 0:
            self._pos = i + 1
            return buf[pos:i + 1]
        avail = len(buf) - pos
        if size >= 0 and avail >= size:
            self._pos = pos + size
            return buf[pos:pos + size]
        return self._gather(size, True)

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    next = __next__


class ErrorStream(object):
    """wsgi.errors: sys.stderr (the agent's log pipe), flushed after each write."""

    def write(self, s):
        stream = sys.stderr
        n = stream.write(s)
        stream.flush()
        return n

    def writelines(self, lines):
        stream = sys.stderr
        for s in lines:
            stream.write(s)
        stream.flush()

    def flush(self):
        sys.stderr.flush()


class FileWrapper(object):
    """wsgi.file_wrapper: iterate a file-like object in blocks, close() it at the end."""

    def __init__(self, filelike, block_size=MAX_BODY_CHUNK):
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, 'close'):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        size = self.block_size
        while True:
            data = read(size)
            if not data:
                return
            yield data


# ---------------------------------------------------------------------------
# The response
# ---------------------------------------------------------------------------

_STATUS_RE = re.compile(r'[1-9][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]*\Z')
_bad_header_name = re.compile(r'[\x00-\x20:\x7f]').search
_bad_header_value = re.compile(r'[\r\n\x00]').search
_status_cache = {}
_header_cache = {}

# The response header that asks the agent for out-of-band work (docs/protocol.md).
OOB_HEADER = '!~Request-OOB-Work'

ERROR_PAGE = (b'<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>'
              b'<body><h1>500 Internal Server Error</h1></body></html>\n')


def _parse_status(status):
    """'200 OK' -> (200, encoded u16 status + bytes reason)."""
    try:
        return _status_cache[status]
    except (KeyError, TypeError):
        pass
    if type(status) is not str:
        raise TypeError('the status must be a str like "200 OK", not %s' % type(status).__name__)
    if _STATUS_RE.match(status) is None:
        raise ValueError('invalid status %r: it must look like "200 OK"' % (status,))
    try:
        reason = status[4:].encode('latin-1')
    except UnicodeEncodeError:
        raise ValueError('the status %r is not latin-1 encodable' % (status,))
    code = int(status[:3])
    result = (code, _pack_u16(code) + _pack_u32(len(reason)) + reason)
    if len(_status_cache) < 256:
        _status_cache[status] = result
    return result


def _encode_header(item):
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError('each header must be a (name, value) tuple, not %r' % (item,))
    name, value = item
    if type(name) is not str or type(value) is not str:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError('header names and values must be str: %r' % (item,))
    if not name or _bad_header_name(name):
        raise ValueError('invalid header name %r' % (name,))
    if _bad_header_value(value):
        raise ValueError('invalid character (CR, LF or NUL) in the value of header %r' % (name,))
    try:
        nb = name.encode('latin-1')
        vb = value.encode('latin-1')
    except UnicodeEncodeError:
        raise ValueError('header %r is not latin-1 encodable' % (item,))
    return b''.join((_pack_u32(len(nb)), nb, _pack_u32(len(vb)), vb))


def _encode_headers(headers):
    if not isinstance(headers, (list, tuple)):
        raise TypeError('the response headers must be a list of (name, value) tuples, not %s'
                        % type(headers).__name__)
    parts = [_pack_u32(len(headers))]
    cache = _header_cache
    for item in headers:
        try:
            enc = cache[item]
        except (KeyError, TypeError):
            enc = _encode_header(item)
            if type(item) is tuple and len(enc) < 512:
                if len(cache) >= 4096:
                    cache.clear()
                cache[item] = enc
        parts.append(enc)
    return b''.join(parts)


_OOB_HEADER_PAIR = _encode_header((OOB_HEADER, 'true'))
_OOB_HEADER_NAME = _pack_u32(len(OOB_HEADER)) + OOB_HEADER.lower().encode('latin-1')


def _with_oob_header(encoded):
    """Encoded headers plus ``!~Request-OOB-Work: true``, unless already there."""
    if _OOB_HEADER_NAME in encoded.lower():
        return encoded
    return _pack_u32(_unpack_u32(encoded, 0)[0] + 1) + encoded[4:] + _OOB_HEADER_PAIR


class Responder(object):
    """start_response(), write() and the sending of one request's response."""

    __slots__ = ('conn', 'rid', 'head', 'status', 'status_bytes', 'headers', 'sent', 'done',
                 'oob')

    def __init__(self, conn, request_id, head):
        self.conn = conn
        self.rid = request_id
        self.head = head  # a HEAD request: send no body bytes
        self.status = None
        self.status_bytes = None
        self.headers = None
        self.sent = False
        self.done = False  # the request is over: write() must not touch the connection
        self.oob = False  # passenger.request_oob_work() was called: add the header

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError(
                'start_response() was already called (pass exc_info to call it again)')
        status_bytes = _parse_status(status)[1]
        encoded = _encode_headers(headers)
        self.status = status
        self.status_bytes = status_bytes
        self.headers = encoded
        return self.write

    def _head(self):
        """The RESPONSE frame, as a list of parts to join; marks the headers sent."""
        if self.status is None:
            raise RuntimeError('the application did not call start_response()')
        headers = self.headers
        if self.oob:
            headers = _with_oob_header(headers)
        n = len(self.status_bytes) + len(headers)
        if n > MAX_PAYLOAD_LEN:
            raise ValueError('the response headers exceed the 1 MiB frame limit')
        self.sent = True
        return [_pack_header(MAGIC, VERSION, RESPONSE, self.rid, n),
                self.status_bytes, headers]

    def _send_body(self, data, parts):
        """Send ``parts`` (maybe the RESPONSE) then ``data`` as BODY frames."""
        n = len(data)
        rid = self.rid
        if n <= MAX_BODY_CHUNK:
            parts.append(_pack_header(MAGIC, VERSION, BODY, rid, n))
            parts.append(data)
            self.conn.send(b''.join(parts))
            return
        view = memoryview(data)
        for i in range(0, n, MAX_BODY_CHUNK):
            piece = view[i:i + MAX_BODY_CHUNK]
            parts.append(_pack_header(MAGIC, VERSION, BODY, rid, len(piece)))
            parts.append(piece)
            if len(parts) >= 16:
                self.conn.send(b''.join(parts))
                parts = []
        if parts:
            self.conn.send(b''.join(parts))

    def write(self, data):
        """The PEP 3333 write() callable: send now (headers first)."""
        if type(data) is not bytes:
            raise TypeError('write() takes bytes, not %s' % type(data).__name__)
        if self.status is None:
            raise AssertionError('write() called before start_response()')
        if self.done:
            raise RuntimeError('write() called after the response was complete')
        parts = [] if self.sent else self._head()
        if data and not self.head:
            self._send_body(data, parts)
        elif parts:
            self.conn.send(b''.join(parts))

    def send_chunk(self, chunk):
        """One chunk of the returned iterable, streamed at once."""
        if type(chunk) is not bytes:
            raise TypeError('the response body must yield bytes, not %s' % type(chunk).__name__)
        if not chunk:
            return
        parts = [] if self.sent else self._head()
        if not self.head:
            self._send_body(chunk, parts)
        elif parts:
            self.conn.send(b''.join(parts))

    def send_sequence(self, seq):
        """A list/tuple body: RESPONSE, the BODYs and END in as few sends as possible."""
        rid = self.rid
        for chunk in seq:
            if type(chunk) is not bytes:
                raise TypeError('the response body must contain bytes, not %s'
                                % type(chunk).__name__)
        parts = [] if self.sent else self._head()
        if not self.head:
            size = 0
            for chunk in seq:
                n = len(chunk)
                if not n:
                    continue
                if n > MAX_BODY_CHUNK or size + n > 4 * MAX_BODY_CHUNK:
                    self._send_body(chunk, parts)
                    parts = []
                    size = 0
                    continue
                parts.append(_pack_header(MAGIC, VERSION, BODY, rid, n))
                parts.append(chunk)
                size += n
        parts.append(_pack_header(MAGIC, VERSION, END, rid, 0))
        self.conn.send(b''.join(parts))

    def finish(self):
        parts = [] if self.sent else self._head()
        parts.append(_pack_header(MAGIC, VERSION, END, self.rid, 0))
        self.conn.send(b''.join(parts))

    def fail(self, exc, environ):
        """The application failed: 500 before the headers, ERROR after them."""
        conn = self.conn
        if conn.failed is not None:
            log('request %s %s aborted: %s' % (environ.get('REQUEST_METHOD'),
                                              environ.get('PATH_INFO'), conn.failed))
            return
        log_exception('error while serving %s %s%s (%s)' % (
            environ.get('REQUEST_METHOD'), environ.get('SCRIPT_NAME', ''),
            environ.get('PATH_INFO', ''),
            'before the response headers were sent' if not self.sent
            else 'after the response headers were sent'), exc)
        rid = self.rid
        try:
            if not self.sent:
                self.sent = True
                headers = _encode_headers([('Content-Type', 'text/html; charset=utf-8'),
                                           ('Content-Length', str(len(ERROR_PAGE)))])
                if self.oob:
                    headers = _with_oob_header(headers)
                status = _parse_status('500 Internal Server Error')[1]
                parts = [_pack_header(MAGIC, VERSION, RESPONSE, rid, len(status) + len(headers)),
                         status, headers]
                if not self.head:
                    parts.append(_pack_header(MAGIC, VERSION, BODY, rid, len(ERROR_PAGE)))
                    parts.append(ERROR_PAGE)
                parts.append(_pack_header(MAGIC, VERSION, END, rid, 0))
                conn.send(b''.join(parts))
            else:
                conn.send(encode_error(ERROR_APPLICATION, 'the application failed after the '
                                       'response headers were sent: %s' % _one_line(exc), rid))
        except OSError:
            pass  # conn.failed is set: the connection is dropped


# ---------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------

BASE_ENVIRON = {
    'REQUEST_METHOD': 'GET',
    'SCRIPT_NAME': '',
    'PATH_INFO': '',
    'QUERY_STRING': '',
    'SERVER_NAME': 'localhost',
    'SERVER_PORT': '80',
    'SERVER_PROTOCOL': 'HTTP/1.0',
    'wsgi.version': (1, 0),
    'wsgi.url_scheme': 'http',
    'wsgi.errors': ErrorStream(),
    'wsgi.multithread': False,
    'wsgi.multiprocess': True,
    'wsgi.run_once': False,
    'wsgi.input_terminated': True,
    'wsgi.file_wrapper': FileWrapper,
}


class State(object):
    busy = False  # a request (or out-of-band work) is being served
    stop = False  # SIGTERM arrived while busy: exit after the request
    responder = None  # the Responder of the request being served, if any
    passenger = None  # the passenger module (its event handlers)


def build_environ(flags, env):
    environ = BASE_ENVIRON.copy()
    environ.update(env)
    # PEP 3333: the body's length and type are CONTENT_*, never HTTP_CONTENT_*.
    if 'HTTP_CONTENT_LENGTH' in env:
        value = environ.pop('HTTP_CONTENT_LENGTH')
        if 'CONTENT_LENGTH' not in env:
            environ['CONTENT_LENGTH'] = value
    if 'HTTP_CONTENT_TYPE' in env:
        value = environ.pop('HTTP_CONTENT_TYPE')
        if 'CONTENT_TYPE' not in env:
            environ['CONTENT_TYPE'] = value
    https = env.get('HTTPS')
    if flags & FLAG_HTTPS or (https is not None and https.lower() in ('on', '1')):
        environ['wsgi.url_scheme'] = 'https'
        if https is None:
            environ['HTTPS'] = 'on'
        if 'SERVER_PORT' not in env:
            environ['SERVER_PORT'] = '443'
    script_name = environ['SCRIPT_NAME']
    if script_name:
        if script_name == '/':
            environ['SCRIPT_NAME'] = ''
            if not environ['PATH_INFO'].startswith('/'):
                environ['PATH_INFO'] = '/' + environ['PATH_INFO']
    elif not environ['PATH_INFO']:
        environ['PATH_INFO'] = '/'
    return environ


def read_body_prefix(conn, request_id):
    """The BODY frames after REQUEST, up to END or MORE -> (bytes, more)."""
    parts = []
    size = 0
    while True:
        ftype, payload = conn.read_request_frame(request_id)
        if ftype == BODY:
            size += len(payload)
            if size > MAX_BODY_PREFIX:
                raise ProtocolError('the body prefix exceeds 64 KiB', request_id)
            parts.append(payload)
        elif ftype == END or ftype == MORE:
            data = parts[0] if len(parts) == 1 else b''.join(parts)
            return data, ftype == MORE
        else:
            raise ProtocolError('unexpected message type %s in the body prefix'
                                % TYPE_NAMES[ftype], request_id, 'unexpected')


def handle_request(conn, app, request_id, payload):
    try:
        flags, env = decode_request(payload)
    except ProtocolError as e:
        e.request_id = request_id
        raise
    if flags & FLAG_HAS_BODY:
        data, more = read_body_prefix(conn, request_id)
    else:
        data, more = b'', False
    environ = build_environ(flags, env)
    stream = InputStream(conn, request_id, data, more)
    environ['wsgi.input'] = stream
    r = Responder(conn, request_id, environ['REQUEST_METHOD'] == 'HEAD')
    State.responder = r
    result = None
    try:
        result = app(environ, r.start_response)
        t = type(result)
        if t is list or t is tuple:
            r.send_sequence(result)
        else:
            try:
                send_chunk = r.send_chunk
                for chunk in result:
                    send_chunk(chunk)
            finally:
                close = getattr(result, 'close', None)
                if close is not None:
                    close()
            r.finish()
    except BaseException as exc:
        r.fail(exc, environ)
        if not isinstance(exc, Exception):
            raise
    finally:
        r.done = True
        State.responder = None
        stream._detach()


def do_oob_work(conn, request_id):
    """OOB_WORK: run the oob_work handlers, then answer OOB_DONE (same id).

    A handler's exception is logged and the next handler still runs; a
    SystemExit or KeyboardInterrupt is raised again after OOB_DONE is sent.
    """
    pending = None
    try:
        if State.passenger is not None:
            State.passenger._run_handlers('oob_work')
    except BaseException as exc:
        pending = exc
    conn.send(encode_frame(OOB_DONE, request_id))
    if pending is not None:
        raise pending


def serve_connection(sock, app):
    """Serve the requests of one persistent connection until EOF or an error."""
    conn = Connection(sock)
    try:
        while True:
            try:
                ftype, rid, payload = conn.read_frame()
                if ftype == REQUEST:
                    State.busy = True
                    try:
                        handle_request(conn, app, rid, payload)
                    finally:
                        State.busy = False
                    if conn.failed is not None:
                        if isinstance(conn.failed, ProtocolError):
                            raise conn.failed
                        return
                    if State.stop:
                        raise SystemExit(0)
                elif ftype == PING:
                    conn.send(encode_frame(PONG, rid))
                elif ftype == OOB_WORK:
                    State.busy = True
                    try:
                        do_oob_work(conn, rid)
                    finally:
                        State.busy = False
                    if State.stop:
                        raise SystemExit(0)
                else:
                    raise ProtocolError('unexpected message type %s' % TYPE_NAMES[ftype], rid,
                                        'unexpected')
            except EOFError:
                return
            except PeerAborted as e:
                log('the agent aborted a request: %s' % (e,))
                return
            except ProtocolError as e:
                log('protocol error, closing the connection: %s' % (e,))
                if e.kind == 'eof':
                    return  # the peer is gone: nobody to tell
                try:
                    sock.sendall(encode_error(e.code, str(e), e.request_id))
                except OSError:
                    pass
                return
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ECONNRESET):
            log('connection error: %s' % (e,))
    finally:
        try:
            sock.close()
        except OSError:
            pass


def agent_alive(parent_pid, agent_pid=0):
    """Is the agent still there?

    ``parent_pid`` is our parent at start: the agent, or for a forked worker
    the preloader. A forked worker outlives its preloader; then it asks
    about ``agent_pid`` (the preloader's parent) directly.
    """
    if parent_pid <= 1:
        return True
    ppid = os.getppid()
    if ppid == parent_pid:
        return True
    if agent_pid <= 1 or agent_pid == parent_pid:
        return False
    if ppid == agent_pid:
        return True  # the agent is our subreaper
    try:
        os.kill(agent_pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it exists, as another user
    return True


def serve(listener, app, parent_pid, agent_pid=0):
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    while not State.stop:
        events = poller.poll(LISTEN_POLL_MS)
        if not events:
            if not agent_alive(parent_pid, agent_pid):
                log('the agent (pid %d) is gone; exiting' % (agent_pid or parent_pid))
                return 0
            continue
        if events[0][1] & select.POLLNVAL:
            log('the listening socket (fd 3) was closed; exiting')
            return 1
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log('accept() failed: %s' % (e,))
                poller.poll(100)
                continue
            log('the listening socket (fd 3) failed: %s; exiting' % (e,))
            return 0 if e.errno == errno.EINVAL else 1
        sock.setblocking(True)
        serve_connection(sock, app)
    return 0


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------

def log(message):
    try:
        sys.stderr.write('[wsgi-loader %d] %s\n' % (os.getpid(), message))
        sys.stderr.flush()
    except Exception:
        pass


def _one_line(exc):
    """'ModuleNotFoundError: No module named 'foo'' - one line for a summary."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ not in ('builtins', '__main__'):
        name = '%s.%s' % (cls.__module__, name)
    try:
        message = str(exc).strip()
    except Exception:
        message = ''
    if message:
        return '%s: %s' % (name, message.splitlines()[0])
    return name


def log_exception(message, exc):
    try:
        text = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write('[wsgi-loader %d] %s:\n%s' % (os.getpid(), message, text))
        sys.stderr.flush()
    except Exception:
        pass


# ---------------------------------------------------------------------------
# The passenger API module
# ---------------------------------------------------------------------------

EVENTS = ('starting_worker_process', 'stopping_worker_process', 'oob_work')


def request_oob_work():
    """Ask for out-of-band work after the current request.

    Adds the response header ``!~Request-OOB-Work`` to the response of the
    request being served. Returns True if it will be added, False when no
    request is being served or its response headers were already sent.
    """
    r = State.responder
    if r is None or r.sent or r.done:
        return False
    r.oob = True
    return True


def make_passenger_module(app_root):
    """Create the ``passenger`` module that applications may import."""
    module = types.ModuleType('passenger', """The passenger-agent API for WSGI applications.

    on_event(name, callback): run callback at an event of this process:
      'starting_worker_process': callback(forked) once the app is loaded,
          before the first request; forked is True in a worker forked by
          the preloader (PassengerSpawnMethod smart), else False;
      'stopping_worker_process': callback() when the process exits cleanly;
      'oob_work': callback() when the agent asks for out-of-band work
          (the process is out of rotation meanwhile).
    request_oob_work(): during a request, ask for out-of-band work after it
      (adds the response header '!~Request-OOB-Work'); returns whether the
      header will be sent.
    spawn_method: 'smart' in a forked worker (and the preloader), else 'direct'.
    app_root: the application root directory.
    """)
    handlers = dict((name, []) for name in EVENTS)

    def on_event(name, callback):
        """Register ``callback`` for the event ``name`` (see the module doc)."""
        if name not in handlers:
            raise ValueError('unknown event %r (known: %s)' % (name, ', '.join(EVENTS)))
        if not callable(callback):
            raise TypeError('the callback must be callable')
        handlers[name].append(callback)

    def call_event(name, *args):
        """Run the handlers of ``name``; the first exception propagates."""
        for callback in list(handlers[name]):
            callback(*args)

    def run_handlers(name, *args):
        """Run every handler of ``name``; an Exception is logged, not raised."""
        for callback in list(handlers[name]):
            try:
                callback(*args)
            except Exception as exc:
                log_exception('a %s handler failed' % name, exc)

    module.on_event = on_event
    module.request_oob_work = request_oob_work
    module.spawn_method = 'direct'
    module._call_event = call_event
    module._run_handlers = run_handlers
    module.app_root = app_root
    module.EVENTS = EVENTS
    sys.modules['passenger'] = module
    State.passenger = module
    return module


# ---------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------

THIS_FILE = (lambda: 0).__code__.co_filename


def _user_traceback(tb):
    """Skip the loader's and importlib's own frames at the top of ``tb``."""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == THIS_FILE or name.startswith('<frozen importlib'):
            tb = tb.tb_next
        else:
            break
    return tb


def load_application(app_root, startup_file):
    path = os.path.join(app_root, startup_file)
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(THIS_FILE)):
        sys.path[0] = app_root  # the loader's own directory is not the app's business
    else:
        sys.path.insert(0, app_root)
    loader = importlib.machinery.SourceFileLoader('passenger_wsgi', path)
    spec = importlib.util.spec_from_file_location('passenger_wsgi', path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules['passenger_wsgi'] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop('passenger_wsgi', None)
        raise
    try:
        app = module.application
    except AttributeError:
        hint = ''
        if hasattr(module, 'app'):
            hint = " (it defines 'app': add 'application = app')"
        raise AttributeError("the startup file %s does not define 'application'%s" % (path, hint))
    if not callable(app):
        raise TypeError("'application' in %s is not callable (it is a %s)"
                        % (path, type(app).__name__))
    return app


def write_readiness(data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(4, view)
        except InterruptedError:
            continue
        view = view[n:]


def report_spawn_error(exc):
    summary = _one_line(exc).encode('utf-8', 'replace')[:4096]
    details = ''.join(traceback.format_exception(
        type(exc), exc, _user_traceback(exc.__traceback__)))
    sys.stderr.write(details)
    sys.stderr.flush()
    details = details.encode('utf-8', 'replace')[:512 * 1024]
    try:
        write_readiness(encode_frame(SPAWN_ERROR, 0, encode_bytes(summary) + encode_bytes(details)))
        os.close(4)
    except OSError as e:
        log('could not report the spawn error on fd 4: %s' % (e,))


def _setup_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True, errors='backslashreplace')
        except (AttributeError, ValueError, OSError):
            pass


def _on_signal(signum, frame):
    if State.busy:
        State.stop = True  # finish the current request first
    else:
        State.stop = True
        raise SystemExit(0)


def run_worker(listener, app, passenger, parent_pid, agent_pid=0):
    """Report READY on fd 4, serve on ``listener`` until told to stop.

    The stopping_worker_process handlers run at the end; returns the exit
    status. Used by a direct loader and by a worker forked by the preloader.
    """
    code = 0
    try:
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        try:
            write_readiness(encode_frame(READY, 0, _pack_u32(1)))
            os.close(4)
        except OSError as e:
            log('could not report readiness on fd 4: %s; exiting' % (e,))
            return 1
        code = serve(listener, app, parent_pid, agent_pid)
    except SystemExit as e:
        code = _exit_code(e)
    finally:
        # From here on a second SIGTERM must not cut the shutdown handlers short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            listener.close()
        except OSError:
            pass
        try:
            passenger._call_event('stopping_worker_process')
        except Exception as exc:
            log_exception('a stopping_worker_process handler failed', exc)
    return code


def _exit_code(exc):
    """The exit status a SystemExit stands for."""
    if isinstance(exc.code, int):
        return exc.code
    return 0 if exc.code is None else 1


def _listening_socket():
    listener = socket.socket(fileno=3)
    if listener.type != socket.SOCK_STREAM:
        raise OSError('fd 3 is not a stream socket')
    return listener


def _enter_app_root(app_root):
    if os.getcwd() != app_root:
        try:
            os.chdir(app_root)
        except OSError:
            pass


def main():
    _setup_stdio()
    if os.environ.get('PASSENGER_SPAWN_METHOD') == 'smart':
        return preloader_main()
    parent_pid = os.getppid()
    app_root = os.environ.get('PASSENGER_APP_ROOT') or os.getcwd()
    startup_file = os.environ.get('PASSENGER_STARTUP_FILE') or 'passenger_wsgi.py'
    passenger = make_passenger_module(app_root)
    try:
        # fd 3 and fd 4 belong to this process: the app's children must not inherit them.
        os.set_inheritable(4, False)
        os.set_inheritable(3, False)
        listener = _listening_socket()
        _enter_app_root(app_root)
        app = load_application(app_root, startup_file)
        passenger._call_event('starting_worker_process', False)
    except BaseException as exc:
        report_spawn_error(exc)
        return 1
    return run_worker(listener, app, passenger, parent_pid)


# ---------------------------------------------------------------------------
# Smart spawning: the preloader
# ---------------------------------------------------------------------------

FORK_FDS = 3  # listening socket, readiness pipe, output pipe
MAX_RECV_FDS = 16
ERROR_FORK = 500  # ERROR code: the fork failed
MSG_CTRUNC = getattr(socket, 'MSG_CTRUNC', 8)
MSG_CMSG_CLOEXEC = getattr(socket, 'MSG_CMSG_CLOEXEC', 0)


def _close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ControlChannel(object):
    """The preloader's end of the control socket (fd 3).

    Every read is a recvmsg, so descriptors sent with SCM_RIGHTS are never
    lost: each read that brings some adds one group to ``fd_groups``, and
    each FORK takes the oldest group. The agent sends descriptors only with
    FORK, one sendmsg per FORK, so groups and FORKs pair up in order.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.fd_groups = []  # [(fds, truncated)]

    def _recv(self):
        if hasattr(socket, 'recv_fds'):  # Python 3.9+
            data, fds, flags, _ = socket.recv_fds(self.sock, 65536, MAX_RECV_FDS,
                                                  MSG_CMSG_CLOEXEC)
        else:
            data, ancdata, flags, _ = self.sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_RECV_FDS * 4), MSG_CMSG_CLOEXEC)
            fds = []
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array('i')
                    a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                    fds.extend(a)
        fds = list(fds)
        for fd in fds:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
        if fds or flags & MSG_CTRUNC:
            self.fd_groups.append((fds, bool(flags & MSG_CTRUNC)))
        return data

    def read_frame(self):
        """(type, request id, payload); EOFError on a clean EOF."""
        while True:
            buf = self.buf
            if len(buf) >= HEADER_LEN:
                ftype, request_id, length = check_header(buf)
                total = HEADER_LEN + length
                if len(buf) >= total:
                    payload = bytes(buf[HEADER_LEN:total])
                    del buf[:total]
                    return ftype, request_id, payload
            data = self._recv()
            if not data:
                if buf:
                    raise ProtocolError('connection closed in the middle of a frame', kind='eof')
                raise EOFError
            buf += data

    def take_fork_fds(self):
        """The descriptors of one FORK -> (fds, None) or (None, why not)."""
        if not self.fd_groups:
            return None, 'FORK without file descriptors'
        fds, truncated = self.fd_groups.pop(0)
        if truncated or len(fds) != FORK_FDS:
            _close_fds(fds)
            return None, 'FORK with %s%d file descriptors (it takes %d)' % (
                'more than ' if truncated else '', len(fds), FORK_FDS)
        return fds, None

    def close_spare_fds(self):
        for fds, _ in self.fd_groups:
            _close_fds(fds)
        self.fd_groups = []

    def send(self, data):
        self.sock.sendall(data)


class BecomeWorker(Exception):
    """Raised in a freshly forked worker to leave the preloader's loop."""


def _reap_children(signum=None, frame=None):
    """SIGCHLD in the preloader: collect every exited worker (no zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return


def _on_preloader_signal(signum, frame):
    raise SystemExit(0)


def _rewrap_stdio():
    """New line-buffered sys.stdout and sys.stderr on fds 1 and 2 (the worker's pipe)."""
    for fd, name in ((1, 'stdout'), (2, 'stderr')):
        old = getattr(sys, name, None)
        encoding = getattr(old, 'encoding', None) or 'utf-8'
        try:
            new = io.open(fd, 'w', buffering=1, encoding=encoding, errors='backslashreplace',
                          closefd=False)
        except (OSError, ValueError, LookupError):
            continue
        setattr(sys, name, new)


def _become_worker(chan, fds, gc_enabled):
    """In the child of a fork: take the worker's descriptors and reset the state.

    The received descriptors are first moved above 10 (one of them may be
    4, the preloader's closed readiness fd), then put on 3 (replacing the
    control socket, which is thereby closed), 4, and 1 + 2.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    chan.sock.detach()  # fd 3 is taken over below: the socket object must not close it
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
    _close_fds(fds)
    chan.close_spare_fds()
    listen_fd, ready_fd, output_fd = moved
    os.dup2(listen_fd, 3, inheritable=False)
    os.dup2(ready_fd, 4, inheritable=False)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    _close_fds(moved)
    _rewrap_stdio()
    if gc_enabled:
        gc.enable()
    if 'random' in sys.modules:
        sys.modules['random'].seed()  # workers must not share a random sequence
    State.busy = State.stop = False
    State.responder = None


def fork_worker(chan, request_id, gc_enabled=True):
    """FORK: fork a worker on the descriptors that came with it.

    The preloader answers FORKED (the worker's pid) or ERROR and returns
    None; in the worker this raises BecomeWorker (never returns).
    """
    fds, problem = chan.take_fork_fds()
    if problem is None:
        try:
            if not stat.S_ISSOCK(os.fstat(fds[0]).st_mode):
                problem = 'the first descriptor of FORK is not a socket'
        except OSError as e:
            problem = 'the first descriptor of FORK is unusable: %s' % (e,)
        if problem is not None:
            _close_fds(fds)
    if problem is not None:
        log('refusing a FORK: %s' % problem)
        chan.send(encode_error(ERROR_PROTOCOL, problem, request_id))
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if hasattr(gc, 'freeze'):
        gc.freeze()  # the loaded app's objects: never touched by the workers' GC
    try:
        pid = os.fork()
    except OSError as e:
        _close_fds(fds)
        log('fork() failed: %s' % (e,))
        chan.send(encode_error(ERROR_FORK, 'fork() failed: %s' % (e,), request_id))
        return
    if pid == 0:
        try:
            _become_worker(chan, fds, gc_enabled)
        except SystemExit as e:
            os._exit(_exit_code(e))
        except BaseException as exc:
            log_exception('a forked worker could not take over its descriptors', exc)
            os._exit(1)
        raise BecomeWorker()
    _close_fds(fds)
    chan.send(encode_frame(FORKED, request_id, _pack_u32(pid)))


def preloader_loop(chan, agent_pid, gc_enabled=True):
    """Serve the control channel; the preloader's exit status.

    Raises BecomeWorker in a forked worker, which re-enables the garbage
    collector if ``gc_enabled`` (it was on once the app was loaded).
    """
    poller = select.poll()
    poller.register(chan.sock.fileno(), select.POLLIN)
    while True:
        if not chan.buf:
            if not poller.poll(LISTEN_POLL_MS):
                _reap_children()
                if agent_pid > 1 and os.getppid() != agent_pid:
                    log('the agent (pid %d) is gone; the preloader exits' % agent_pid)
                    return 0
                continue
        try:
            ftype, rid, payload = chan.read_frame()
        except EOFError:
            return 0
        except ProtocolError as e:
            log('protocol error on the control channel, the preloader exits: %s' % (e,))
            if e.kind != 'eof':
                try:
                    chan.send(encode_error(e.code, str(e), e.request_id))
                except OSError:
                    pass
            return 1
        if ftype == FORK:
            fork_worker(chan, rid, gc_enabled)
        elif ftype == PING:
            chan.send(encode_frame(PONG, rid))
        elif ftype == ERROR:
            log('the agent sent %s' % _describe_error(payload))
        else:
            log('unexpected %s on the control channel' % TYPE_NAMES[ftype])
            chan.send(encode_error(ERROR_PROTOCOL, 'unexpected message type %s on the control '
                                   'channel' % TYPE_NAMES[ftype], rid))


def preloader_main():
    """PASSENGER_SPAWN_METHOD=smart: load the app once, fork workers on demand."""
    agent_pid = os.getppid()
    app_root = os.environ.get('PASSENGER_APP_ROOT') or os.getcwd()
    startup_file = os.environ.get('PASSENGER_STARTUP_FILE') or 'passenger_wsgi.py'
    passenger = make_passenger_module(app_root)
    passenger.spawn_method = 'smart'
    try:
        os.set_inheritable(4, False)
        os.set_inheritable(3, False)
        control = socket.socket(fileno=3)
        if control.family != socket.AF_UNIX or control.type != socket.SOCK_STREAM:
            raise OSError('fd 3 is not a Unix stream socket')
        if control.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise OSError('fd 3 is a listening socket, not a connected control socket '
                          '(PASSENGER_SPAWN_METHOD=smart)')
        _enter_app_root(app_root)
        app = load_application(app_root, startup_file)
    except BaseException as exc:
        report_spawn_error(exc)
        return 1
    chan = ControlChannel(control)
    preloader_pid = os.getpid()
    code = 0
    try:
        signal.signal(signal.SIGTERM, _on_preloader_signal)
        signal.signal(signal.SIGINT, _on_preloader_signal)
        signal.signal(signal.SIGCHLD, _reap_children)
        # No collections in the preloader from here on: they would write to
        # (and so unshare) the pages of the objects the workers inherit.
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            write_readiness(encode_frame(READY, 0, _pack_u32(1)))
            os.close(4)
        except OSError as e:
            log('could not report readiness on fd 4: %s; exiting' % (e,))
            code = 1
        else:
            code = preloader_loop(chan, agent_pid, gc_enabled)
    except BecomeWorker:
        code = None  # outside the except block: no BecomeWorker in tracebacks' context
    except SystemExit as e:
        code = _exit_code(e)
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ECONNRESET):
            log('control channel error, the preloader exits: %s' % (e,))
        code = 1
    if code is None:
        return _forked_worker_main(app, passenger, preloader_pid, agent_pid)
    # The loaded state belongs to the workers: no atexit handlers or
    # finalizers (a module-level TemporaryDirectory, ...) may run here.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _forked_worker_main(app, passenger, preloader_pid, agent_pid):
    """A worker just forked by the preloader: start up like a direct loader.

    It watches the preloader as its parent and, once the preloader is gone
    (workers outlive it), the agent.
    """
    try:
        listener = _listening_socket()
        passenger._call_event('starting_worker_process', True)
    except BaseException as exc:
        report_spawn_error(exc)
        return 1
    return run_worker(listener, app, passenger, preloader_pid, agent_pid)


if __name__ == '__main__':
    sys.exit(main())
