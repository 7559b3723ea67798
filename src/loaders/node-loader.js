#!/usr/bin/env node
/*
 * The Node.js loader of passenger-agent.
 *
 * The agent starts one of these per Node.js application process:
 *
 *     node node-loader.js          (cwd = the application root)
 *
 * with, in the environment, PASSENGER_APP_ROOT (absolute) and
 * PASSENGER_STARTUP_FILE (relative to the app root, default `app.js`),
 * fd 3 = a listening Unix stream socket and fd 4 = the write end of the
 * readiness pipe.
 *
 * The app is served without changes: before the startup file runs, the
 * loader hooks `http.Server.prototype.listen`. The first HTTP server that
 * calls listen() becomes "the app server": it binds nothing, its listen
 * callback and 'listening' event fire as usual, and the loader reports READY
 * (concurrency 0 = unlimited) on fd 4. Every REQUEST that arrives over the
 * frame protocol (docs/protocol.md) on a connection accepted from fd 3 is
 * turned into an HTTP/1.1 request written by Node's own http client into an
 * in-memory connection that the app server receives through its
 * 'connection' event. The response that Node's http client parses is sent
 * back as RESPONSE, BODY (one per chunk, streamed) and END. No HTTP is
 * parsed or produced by this file: Node's own http module does both ends.
 *
 * A REQUEST with the upgrade flag (a WebSocket handshake) reaches the app
 * server's own 'upgrade' listeners. When the app switches protocols, the
 * 101 goes back as RESPONSE and the connection becomes a tunnel: raw bytes
 * flow both ways as BODY frames until both sides have sent END, and then
 * the connection is closed (docs/protocol.md, "Upgraded connections").
 *
 * One self-contained CommonJS file, Node's standard library only, Node 18
 * and later. See docs/node.md for the contract and the small
 * `PhusionPassenger` API.
 */

'use strict';

const EventEmitter = require('events');
const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');
const { Duplex } = require('stream');
const Module = require('module');
const { pathToFileURL } = require('url');

// ---------------------------------------------------------------------------
// The frame protocol (docs/protocol.md)
// ---------------------------------------------------------------------------

const MAGIC_0 = 0x4d; // 'M'
const MAGIC_1 = 0x50; // 'P'
const VERSION = 1;
const HEADER_LEN = 12;
const MAX_PAYLOAD_LEN = 1 << 20;
const MAX_BODY_CHUNK = 64 * 1024;
const MAX_BODY_PREFIX = 64 * 1024;
const READ_BODY_SIZE = 64 * 1024;

const T = {
  HELLO: 0x01, HELLO_OK: 0x02, CONFIGURE: 0x03, CONFIGURE_OK: 0x04,
  REQUEST: 0x10, BODY: 0x11, END: 0x12, MORE: 0x13, READ_BODY: 0x14,
  RELEASE: 0x15, // sent by loaders whose apps can hijack a connection; never by this one
  RESPONSE: 0x20, ERROR: 0x30, PING: 0x40, PONG: 0x41,
  STATUS: 0x50, STATUS_REPLY: 0x51, READY: 0x60, SPAWN_ERROR: 0x61,
  FORK: 0x70, FORKED: 0x71, OOB_WORK: 0x72, OOB_DONE: 0x73,
};
const TYPE_NAMES = {};
for (const name of Object.keys(T)) TYPE_NAMES[T[name]] = name;
// Types whose payload has a fixed size: checked from the header alone.
const FIXED_PAYLOAD_LEN = {
  [T.HELLO]: 13, [T.CONFIGURE_OK]: 0, [T.END]: 0, [T.MORE]: 0, [T.READ_BODY]: 4,
  [T.PING]: 0, [T.PONG]: 0, [T.READY]: 4, [T.FORK]: 0, [T.FORKED]: 4,
  [T.OOB_WORK]: 0, [T.OOB_DONE]: 0, [T.RELEASE]: 0,
};

const FLAG_HAS_BODY = 0x01;
const FLAG_HTTPS = 0x02;
const FLAG_UPGRADE = 0x04;

// ERROR codes we send: 1 is fixed by the spec, the others are HTTP statuses.
const ERROR_UNSUPPORTED_VERSION = 1;
const ERROR_PROTOCOL = 400;
const ERROR_BAD_GATEWAY = 502;

const EMPTY = Buffer.alloc(0);
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** The peer broke the protocol: answer ERROR where possible, then close.
 *  `kind` names the failure as docs/protocol-vectors.json does (bad_magic,
 *  bad_version, unknown_type, too_large, malformed) or 'unexpected' (a valid
 *  frame out of place). */
class ProtocolError extends Error {
  constructor(message, requestId = 0, kind = 'malformed', code = ERROR_PROTOCOL) {
    super(message);
    this.name = 'ProtocolError';
    this.requestId = requestId;
    this.kind = kind;
    this.code = code;
  }
}

function frameHeader(type, requestId, length) {
  const h = Buffer.allocUnsafe(HEADER_LEN);
  h[0] = MAGIC_0;
  h[1] = MAGIC_1;
  h[2] = VERSION;
  h[3] = type;
  h.writeUInt32BE(requestId >>> 0, 4);
  h.writeUInt32BE(length, 8);
  return h;
}

/** One frame as a Buffer. */
function encodeFrame(type, requestId = 0, payload = EMPTY) {
  if (payload.length > MAX_PAYLOAD_LEN) {
    throw new RangeError(`payload of ${payload.length} bytes exceeds the 1 MiB limit`);
  }
  return Buffer.concat([frameHeader(type, requestId, payload.length), payload]);
}

function u16(n) {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n, 0);
  return b;
}

function u32(n) {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

/** `bytes`: u32 length + the bytes (a Buffer, or a string taken as UTF-8). */
function encodeBytes(data) {
  const b = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return Buffer.concat([u32(b.length), b]);
}

/** Truncate a UTF-8 string to at most `max` bytes without splitting a character. */
function utf8Truncate(s, max) {
  let b = Buffer.from(String(s), 'utf8');
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

function encodeError(code, message, requestId = 0) {
  return encodeFrame(T.ERROR, requestId,
    Buffer.concat([u16(code), encodeBytes(utf8Truncate(message, 4096))]));
}

function encodeReady(concurrency) {
  return encodeFrame(T.READY, 0, u32(concurrency));
}

function encodeSpawnError(summary, details) {
  return encodeFrame(T.SPAWN_ERROR, 0, Buffer.concat([
    encodeBytes(utf8Truncate(summary, 4096)),
    encodeBytes(utf8Truncate(details, 256 * 1024)),
  ]));
}

/**
 * A RESPONSE frame: `u16` status, `bytes` reason, `pairs` headers. `raw` is
 * a flat [name, value, name, value, ...] list as in IncomingMessage.rawHeaders
 * (strings whose characters are bytes: latin-1). Names in `skip` (lower case)
 * are left out.
 */
function encodeResponse(requestId, status, reason, raw, skip) {
  reason = reason || '';
  let count = 0;
  let size = 2 + 4 + reason.length + 4;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (skip && skip.has(raw[i].toLowerCase())) continue;
    count++;
    size += 8 + raw[i].length + raw[i + 1].length;
  }
  if (size > MAX_PAYLOAD_LEN) {
    throw new RangeError('the response headers exceed the 1 MiB frame limit');
  }
  const buf = Buffer.allocUnsafe(HEADER_LEN + size);
  buf[0] = MAGIC_0;
  buf[1] = MAGIC_1;
  buf[2] = VERSION;
  buf[3] = T.RESPONSE;
  buf.writeUInt32BE(requestId >>> 0, 4);
  buf.writeUInt32BE(size, 8);
  let off = HEADER_LEN;
  buf.writeUInt16BE(status, off);
  off += 2;
  off = buf.writeUInt32BE(reason.length, off);
  off += buf.write(reason, off, 'latin1');
  off = buf.writeUInt32BE(count, off);
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i];
    if (skip && skip.has(name.toLowerCase())) continue;
    const value = raw[i + 1];
    off = buf.writeUInt32BE(name.length, off);
    off += buf.write(name, off, 'latin1');
    off = buf.writeUInt32BE(value.length, off);
    off += buf.write(value, off, 'latin1');
  }
  return buf;
}

/**
 * Validate the 12-byte header at `off`; return [type, request id, length].
 * Bad magic, version, type or length are all decided from the header alone,
 * before any payload is read.
 */
function checkHeader(buf, off = 0) {
  if (buf[off] !== MAGIC_0 || buf[off + 1] !== MAGIC_1) {
    throw new ProtocolError(`bad magic ${hex2(buf[off])} ${hex2(buf[off + 1])}: `
      + 'the peer does not speak the frame protocol', 0, 'bad_magic');
  }
  if (buf[off + 2] !== VERSION) {
    throw new ProtocolError('unsupported protocol version', 0, 'bad_version',
      ERROR_UNSUPPORTED_VERSION);
  }
  const type = buf[off + 3];
  const requestId = buf.readUInt32BE(off + 4);
  const length = buf.readUInt32BE(off + 8);
  if (TYPE_NAMES[type] === undefined) {
    throw new ProtocolError(`unknown message type 0x${hex2(type)}`, requestId, 'unknown_type');
  }
  if (length > MAX_PAYLOAD_LEN) {
    throw new ProtocolError(`payload of ${length} bytes exceeds the 1 MiB limit`, requestId,
      'too_large');
  }
  const fixed = FIXED_PAYLOAD_LEN[type];
  if (fixed !== undefined && fixed !== length) {
    throw new ProtocolError(`${TYPE_NAMES[type]} with a payload of ${length} bytes `
      + `(it has ${fixed})`, requestId);
  }
  return [type, requestId, length];
}

function hex2(n) {
  return (n === undefined ? 0 : n).toString(16).padStart(2, '0');
}

/**
 * Parse one frame at the start of `buf`: null while it is incomplete, else
 * [type, request id, payload (a view), frame length]; throws ProtocolError
 * when it is invalid.
 */
function parseFrame(buf) {
  if (buf.length < HEADER_LEN) return null;
  const [type, requestId, length] = checkHeader(buf, 0);
  if (buf.length < HEADER_LEN + length) return null;
  return [type, requestId, buf.subarray(HEADER_LEN, HEADER_LEN + length), HEADER_LEN + length];
}

/** Decode `pairs` at `off` into `into` (an array of [name, value] latin-1
 *  strings), or just validate them when `into` is null; return the offset
 *  after. Every length is checked against what remains first. */
function decodePairs(payload, off, into) {
  const end = payload.length;
  if (off + 4 > end) throw new ProtocolError('truncated pairs');
  const count = payload.readUInt32BE(off);
  off += 4;
  if (count > (end - off) / 8) {
    throw new ProtocolError(`pair count ${count} exceeds the payload`);
  }
  for (let i = 0; i < count; i++) {
    if (off + 4 > end) throw new ProtocolError('truncated pairs');
    const nameStart = off + 4;
    const nameEnd = nameStart + payload.readUInt32BE(off);
    if (nameEnd + 4 > end) throw new ProtocolError('pair length exceeds the payload');
    const valueStart = nameEnd + 4;
    const valueEnd = valueStart + payload.readUInt32BE(nameEnd);
    if (valueEnd > end) throw new ProtocolError('pair length exceeds the payload');
    if (into !== null) {
      into.push([payload.toString('latin1', nameStart, nameEnd),
        payload.toString('latin1', valueStart, valueEnd)]);
    }
    off = valueEnd;
  }
  return off;
}

/** REQUEST payload -> { flags, env: [[name, value], ...] } (latin-1
 *  strings, in order, repeats kept). The options are validated and skipped. */
function decodeRequest(payload) {
  if (payload.length < 1) throw new ProtocolError('empty REQUEST payload');
  const flags = payload[0];
  if (flags & ~(FLAG_HAS_BODY | FLAG_HTTPS | FLAG_UPGRADE)) {
    throw new ProtocolError(`unknown REQUEST flags 0x${hex2(flags)}`);
  }
  if ((flags & FLAG_UPGRADE) && (flags & FLAG_HAS_BODY)) {
    throw new ProtocolError(`REQUEST flags 0x${hex2(flags)}: an upgrade request has no body`);
  }
  const env = [];
  let off = decodePairs(payload, 1, null);
  off = decodePairs(payload, off, env);
  if (off !== payload.length) {
    throw new ProtocolError(`${payload.length - off} trailing bytes after the REQUEST payload`);
  }
  return { flags, env };
}

/** ERROR payload -> { code, message }; the message must be UTF-8. */
function decodeError(payload) {
  if (payload.length < 6) throw new ProtocolError('truncated ERROR payload');
  const code = payload.readUInt16BE(0);
  const n = payload.readUInt32BE(2);
  if (6 + n !== payload.length) throw new ProtocolError('bad ERROR message length');
  let message;
  try {
    message = utf8Decoder.decode(payload.subarray(6));
  } catch (e) {
    throw new ProtocolError('the ERROR message is not UTF-8');
  }
  return { code, message };
}

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

function log(message) {
  try {
    process.stderr.write(`[node-loader ${process.pid}] ${message}\n`);
  } catch (e) {
    // nowhere to report it
  }
}

function oneLine(err) {
  if (err instanceof Error) {
    const msg = String(err.message || '').trim().split('\n')[0];
    const name = err.name || 'Error';
    return msg ? `${name}: ${msg}` : name;
  }
  try {
    return `uncaught value: ${String(err).split('\n')[0]}`;
  } catch (e) {
    return 'uncaught value';
  }
}

/** The stack of `err` without this loader's and Node's internal frames. */
function userStack(err) {
  let text;
  if (err instanceof Error) {
    text = typeof err.stack === 'string' ? err.stack : oneLine(err);
  } else {
    try {
      text = require('util').inspect(err);
    } catch (e) {
      text = 'uncaught value';
    }
  }
  return text.split('\n').filter((line) => {
    const t = line.trim();
    if (!t.startsWith('at ')) return true;
    return !t.includes(__filename) && !t.includes('node:internal') && !t.includes('(internal/');
  }).join('\n') + '\n';
}

// ---------------------------------------------------------------------------
// The in-memory connection between Node's http client and the app server
// ---------------------------------------------------------------------------

const kPeer = Symbol('peer');
const kWaiting = Symbol('waiting');
const kEofSent = Symbol('eofSent');
const kTimer = Symbol('timer');

/** Complete the write of `sock` its peer has not taken yet, if any (after
 *  the current call, as a socket's write completes from the event loop). */
function settleWrite(sock) {
  const cb = sock[kWaiting];
  if (cb !== null) {
    sock[kWaiting] = null;
    process.nextTick(cb);
  }
}

/**
 * One end of an in-memory byte stream pair: what one end writes, the other
 * reads, with back-pressure (a write completes when the peer's reader takes
 * it, or when either end is destroyed) and end/destroy propagation. The end
 * given to the app server looks enough like a net.Socket: remoteAddress & co., setTimeout(), setNoDelay(),
 * setKeepAlive(), ref(), unref(), address().
 *
 * With `allowHalfOpen` (a pair that may become a tunnel), an end that has
 * read the peer's end of file stays writable until it ends itself, as the
 * sockets of a real http.Server do; otherwise it ends with its peer.
 */
class MemorySocket extends Duplex {
  constructor(allowHalfOpen = false) {
    super({ allowHalfOpen, readableHighWaterMark: 64 * 1024 });
    this[kPeer] = null;
    this[kWaiting] = null; // the callback of our write the peer has not taken yet
    this[kEofSent] = false;
    this[kTimer] = null;
    this.connecting = false;
    this.remoteAddress = undefined;
    this.remotePort = undefined;
    this.remoteFamily = undefined;
    this.localAddress = undefined;
    this.localPort = undefined;
  }

  static pair(allowHalfOpen = false) {
    const a = new MemorySocket(allowHalfOpen);
    const b = new MemorySocket(allowHalfOpen);
    a[kPeer] = b;
    b[kPeer] = a;
    return [a, b];
  }

  _read() {
    const peer = this[kPeer];
    if (peer !== null && peer[kWaiting] !== null) {
      const cb = peer[kWaiting];
      peer[kWaiting] = null;
      cb();
    }
  }

  // Deliveries go through process.nextTick so that a write never runs the
  // other side's parser re-entrantly; the order of writes and end is kept.
  _write(chunk, encoding, cb) {
    process.nextTick(() => {
      const peer = this[kPeer];
      if (peer === null || peer.destroyed || this[kEofSent]) {
        const err = new Error('the in-memory connection is closed');
        err.code = 'EPIPE';
        cb(err);
        return;
      }
      this._touch();
      peer._touch();
      if (peer.push(chunk)) cb();
      else this[kWaiting] = cb;
    });
  }

  _final(cb) {
    process.nextTick(() => {
      this._sendEof();
      cb();
    });
  }

  _sendEof() {
    const peer = this[kPeer];
    if (!this[kEofSent]) {
      this[kEofSent] = true;
      if (peer !== null && !peer.destroyed) peer.push(null);
    }
  }

  _destroy(err, cb) {
    this._clearTimer();
    // As on a net.Socket, a write in flight still completes: ours, and the
    // peer's, whose bytes sit unread in our buffer and are dropped with it.
    // Left waiting, the peer's would keep its socket from ever finishing:
    // an app whose response was held back by a slow agent would never see
    // 'close' when the agent went away. As after a reset, the peer's next
    // write fails (EPIPE, in _write()).
    settleWrite(this);
    const peer = this[kPeer];
    if (peer !== null) settleWrite(peer);
    // Like a closed socket: the peer reads what was sent, then end of file.
    this._sendEof();
    cb(err);
  }

  /** end() on an end already finished does nothing (Node's http server
   *  ends its socket twice; a stream would build an error object each time). */
  end(chunk, encoding, cb) {
    if (this.writableFinished && (chunk == null || typeof chunk === 'function')) {
      const done = typeof chunk === 'function' ? chunk : typeof encoding === 'function' ? encoding : cb;
      if (typeof done === 'function') process.nextTick(done, null);
      return this;
    }
    return super.end(chunk, encoding, cb);
  }

  _touch() {
    if (this[kTimer] !== null) this[kTimer].refresh();
  }

  _clearTimer() {
    if (this[kTimer] !== null) {
      clearTimeout(this[kTimer]);
      this[kTimer] = null;
    }
  }

  /** As net.Socket#setTimeout: 'timeout' after `ms` without activity. */
  setTimeout(ms, callback) {
    this._clearTimer();
    if (ms === 0 || ms === undefined) {
      if (callback) this.removeListener('timeout', callback);
    } else {
      if (callback) this.once('timeout', callback);
      if (!this.destroyed) {
        this[kTimer] = setTimeout(() => {
          this[kTimer] = null;
          this.emit('timeout');
        }, ms);
        this[kTimer].unref();
      }
    }
    return this;
  }

  setNoDelay() { return this; }

  setKeepAlive() { return this; }

  ref() { return this; }

  unref() { return this; }

  address() {
    return { address: this.localAddress, family: this.remoteFamily, port: this.localPort };
  }
}

// ---------------------------------------------------------------------------
// From a REQUEST's environment to an http.request() for the app server
// ---------------------------------------------------------------------------

// Request headers that belong to the hop from the client to Apache.
const DROPPED_REQUEST_VARS = new Set([
  'HTTP_CONNECTION', 'HTTP_KEEP_ALIVE', 'HTTP_PROXY_CONNECTION', 'HTTP_TE', 'HTTP_UPGRADE',
  'HTTP_TRAILER', 'HTTP_EXPECT', 'HTTP_TRANSFER_ENCODING', 'HTTP_X_FORWARDED_PROTO',
]);
// Of those, the ones an upgrade request (flag 0x04) keeps: they ask the app
// to switch protocols.
const UPGRADE_REQUEST_VARS = new Set(['HTTP_CONNECTION', 'HTTP_UPGRADE']);
// Response headers that belong to the hop from the app server to us.
const DROPPED_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding']);
const HEADER_VAR_RE = /^HTTP_[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*$/;
const headerNameCache = new Map();

/** HTTP_X_FORWARDED_HOST -> X-Forwarded-Host (null if not a header variable). */
function headerName(variable) {
  let name = headerNameCache.get(variable);
  if (name !== undefined) return name;
  if (!HEADER_VAR_RE.test(variable)) return null;
  name = variable.slice(5).split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase()).join('-');
  if (headerNameCache.size < 1024) headerNameCache.set(variable, name);
  return name;
}

const PATH_SAFE = /[A-Za-z0-9\-._~!$&'()*+,;=:@/]/;

/** Percent-encode a decoded path (a latin-1 string of its bytes). */
function encodePath(s) {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (PATH_SAFE.test(c)) out += c;
    else out += '%' + s.charCodeAt(i).toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function addHeader(headers, name, value) {
  const prev = headers[name];
  if (prev === undefined) headers[name] = value;
  else if (Array.isArray(prev)) prev.push(value);
  else headers[name] = [prev, value];
}

/**
 * The REQUEST's environment -> what http.request() and the server end of
 * the in-memory connection need. Throws (with a message for the client) on
 * an unusable request. With FLAG_UPGRADE, `Upgrade` and `Connection` are
 * the client's; otherwise they are dropped and `Connection` is `close`.
 */
function buildRequest(flags, env) {
  const upgrade = (flags & FLAG_UPGRADE) !== 0;
  const cgi = Object.create(null);
  const headers = Object.create(null);
  let forwardedFor = null;
  let altType; // HTTP_CONTENT_TYPE / HTTP_CONTENT_LENGTH: only if CONTENT_* are absent
  let altLength;
  for (let i = 0; i < env.length; i++) {
    const name = env[i][0];
    const value = env[i][1];
    if (name.charCodeAt(0) === 72 /* H */ && name.startsWith('HTTP_')) {
      if (DROPPED_REQUEST_VARS.has(name) && !(upgrade && UPGRADE_REQUEST_VARS.has(name))) continue;
      if (name === 'HTTP_X_FORWARDED_FOR') {
        forwardedFor = forwardedFor === null ? value : `${forwardedFor}, ${value}`;
        continue;
      }
      if (name === 'HTTP_CONTENT_LENGTH') {
        altLength = value;
        continue;
      }
      if (name === 'HTTP_CONTENT_TYPE') {
        altType = value;
        continue;
      }
      const header = headerName(name);
      if (header !== null) addHeader(headers, header, value);
    } else {
      cgi[name] = value;
    }
  }
  const https = (flags & FLAG_HTTPS) !== 0 || /^(on|1)$/i.test(cgi.HTTPS || '');
  const method = cgi.REQUEST_METHOD || 'GET';
  let target = cgi.REQUEST_URI;
  if (!target) {
    const p = (cgi.SCRIPT_NAME || '') + (cgi.PATH_INFO || '');
    target = encodePath(p.startsWith('/') ? p : '/' + p);
    if (cgi.QUERY_STRING) target += '?' + cgi.QUERY_STRING;
  }
  const contentType = cgi.CONTENT_TYPE !== undefined ? cgi.CONTENT_TYPE : altType;
  if (contentType !== undefined) headers['Content-Type'] = contentType;
  let contentLength = cgi.CONTENT_LENGTH !== undefined ? cgi.CONTENT_LENGTH : altLength;
  if (contentLength !== undefined) {
    if (!/^[0-9]{1,15}$/.test(contentLength)) {
      throw new Error(`invalid Content-Length ${JSON.stringify(contentLength)}`);
    }
    contentLength = Number(contentLength);
    headers['Content-Length'] = String(contentLength);
  } else if (flags & FLAG_HAS_BODY) {
    headers['Transfer-Encoding'] = 'chunked';
  }
  if (headers.Host === undefined) {
    const port = cgi.SERVER_PORT;
    const defaultPort = https ? '443' : '80';
    headers.Host = (cgi.SERVER_NAME || 'localhost') + (port && port !== defaultPort ? ':' + port : '');
  }
  const remote = cgi.REMOTE_ADDR;
  if (remote) forwardedFor = forwardedFor === null ? remote : `${forwardedFor}, ${remote}`;
  if (forwardedFor !== null) headers['X-Forwarded-For'] = forwardedFor;
  headers['X-Forwarded-Proto'] = https ? 'https' : 'http';
  if (!upgrade) headers.Connection = 'close';
  return {
    method,
    target,
    headers,
    https,
    contentLength: contentLength === undefined ? -1 : contentLength,
    remoteAddress: remote || '127.0.0.1',
    remotePort: Number(cgi.REMOTE_PORT) || 0,
    localAddress: cgi.SERVER_ADDR || '127.0.0.1',
    localPort: Number(cgi.SERVER_PORT) || (https ? 443 : 80),
    env: cgi,
  };
}

// ---------------------------------------------------------------------------
// The loader's state
// ---------------------------------------------------------------------------

const state = {
  appRoot: null,
  autoInstall: true,
  appServer: null,
  loaded: false, // the startup file has finished loading
  readyScheduled: false,
  ready: false,
  stopping: false,
  exitWhenDrained: true,
  listener: null,
  connections: new Set(),
  inflight: 0,
  parentPid: 0,
};

// ---------------------------------------------------------------------------
// One request: an Exchange between an agent connection and the app server
// ---------------------------------------------------------------------------

class Exchange {
  constructor(conn, requestId) {
    this.conn = conn;
    this.rid = requestId;
    this.prefixOpen = false; // body prefix frames still expected (up to END or MORE)
    this.prefixSize = 0;
    this.more = false; // the rest of the body can be pulled with READ_BODY
    this.pulling = false; // a READ_BODY is unanswered
    this.waitDrain = false; // the http client has enough of the body for now
    this.bodyEnded = false;
    this.received = 0;
    this.contentLength = -1;
    this.client = null; // the http.ClientRequest
    this.clientSide = null;
    this.serverSide = null;
    this.response = null;
    this.answered = false; // RESPONSE sent
    this.finished = false; // END or ERROR sent, the tunnel is over, or the request was given up
    this.tunnel = null; // for a REQUEST with FLAG_UPGRADE: the Tunnel it may become
  }

  /** Build the in-memory request and hand its connection to the app server. */
  start(flags, env) {
    let switchable = false;
    if (flags & FLAG_UPGRADE) {
      this.tunnel = new Tunnel(this);
      // Only an app server with 'upgrade' listeners can switch protocols.
      // For any other, the request loses Upgrade and Connection, so that
      // Node gives it to the request handler, which answers as usual.
      switchable = state.appServer.listenerCount('upgrade') > 0;
      if (!switchable) flags &= ~FLAG_UPGRADE;
    }
    const spec = buildRequest(flags, env);
    this.contentLength = spec.contentLength;
    const [clientSide, serverSide] = MemorySocket.pair(switchable);
    serverSide.remoteAddress = spec.remoteAddress;
    serverSide.remotePort = spec.remotePort;
    serverSide.remoteFamily = spec.remoteAddress.includes(':') ? 'IPv6' : 'IPv4';
    serverSide.localAddress = spec.localAddress;
    serverSide.localPort = spec.localPort;
    if (spec.https) serverSide.encrypted = true;
    serverSide.passengerEnv = spec.env;
    const client = http.request({
      method: spec.method,
      path: spec.target,
      headers: spec.headers,
      setHost: false,
      maxHeaderSize: 256 * 1024,
      createConnection: () => clientSide,
    });
    this.client = client;
    this.clientSide = clientSide;
    this.serverSide = serverSide;
    client.on('response', (res) => this.guard(() => this.onResponse(res)));
    // Without a listener, Node's http client destroys the connection on a 101
    // and reports nothing: the agent would wait forever.
    client.on('upgrade', (res, socket, head) => this.guard(() => this.onUpgrade(res, socket, head)));
    client.on('error', (err) => this.guard(() => this.onClientError(err)));
    // Node's http client can also give up in silence: it takes any answer
    // to CONNECT for a switch of protocols, and destroys the connection
    // when nobody listens for 'connect'.
    client.on('close', () => this.guard(() => {
      if (!this.answered) this.fail(ERROR_BAD_GATEWAY, 'the application closed the connection without a response');
    }));
    client.on('drain', () => this.guard(() => {
      this.waitDrain = false;
      this.maybePull();
    }));
    const server = state.appServer;
    if (typeof server._connections === 'number') {
      server._connections++;
      serverSide.once('close', () => {
        server._connections--;
        if (!server._handle && typeof server._emitCloseIfDrained === 'function') {
          server._emitCloseIfDrained();
        }
      });
    }
    try {
      server.emit('connection', serverSide);
    } catch (e) {
      // The app's own 'connection' listener threw: uncaught, as in Node.
      process.nextTick(() => { throw e; });
    }
  }

  /** Run `fn`; a loader bug fails this request, never the process. */
  guard(fn) {
    try {
      fn();
    } catch (e) {
      log(`internal error in request ${this.rid}: ${e && e.stack}`);
      this.fail(500, `internal error in the Node.js loader: ${oneLine(e)}`);
    }
  }

  // -- the request body --------------------------------------------------

  /** A BODY, END or MORE frame of this request (of its tunnel, for an
   *  upgrade request). */
  onFrame(type, payload) {
    if (this.tunnel !== null) {
      this.tunnel.onFrame(type, payload);
    } else if (this.prefixOpen) {
      if (type === T.BODY) {
        this.prefixSize += payload.length;
        if (this.prefixSize > MAX_BODY_PREFIX) {
          throw new ProtocolError('the body prefix exceeds 64 KiB', this.rid);
        }
        this.deliver(payload);
      } else if (type === T.END) {
        this.prefixOpen = false;
        this.endBody();
      } else if (type === T.MORE) {
        this.prefixOpen = false;
        this.more = true;
        this.maybePull();
      }
    } else if (this.pulling && type === T.BODY) {
      this.pulling = false;
      if (payload.length === 0 || payload.length > READ_BODY_SIZE) {
        throw new ProtocolError(`BODY of ${payload.length} bytes answering READ_BODY `
          + `${READ_BODY_SIZE}`, this.rid);
      }
      this.deliver(payload);
      this.maybePull();
    } else if (this.pulling && type === T.END) {
      this.pulling = false;
      this.more = false;
      this.endBody();
    } else {
      throw new ProtocolError(`unexpected ${TYPE_NAMES[type]} in request ${this.rid}`,
        this.rid, 'unexpected');
    }
    this.conn.maybeIdle();
  }

  deliver(data) {
    if (this.finished || this.client === null || data.length === 0) return;
    this.received += data.length;
    if (this.contentLength >= 0 && this.received > this.contentLength) {
      this.fail(400, `the request body is longer than its Content-Length (${this.contentLength})`);
      return;
    }
    if (!this.client.write(data)) this.waitDrain = true;
  }

  endBody() {
    if (this.finished || this.client === null || this.bodyEnded) return;
    if (this.contentLength >= 0 && this.received !== this.contentLength) {
      this.fail(400, `the request body ended after ${this.received} of ${this.contentLength} bytes`);
      return;
    }
    this.bodyEnded = true;
    this.client.end();
  }

  /** Ask for more of the body when the app server can take it. */
  maybePull() {
    if (this.more && !this.pulling && !this.prefixOpen && !this.waitDrain && !this.finished
        && !this.conn.closed) {
      this.pulling = true;
      this.conn.send(encodeFrame(T.READ_BODY, this.rid, u32(READ_BODY_SIZE)));
    }
  }

  // -- the response ------------------------------------------------------

  onResponse(res) {
    this.response = res;
    if (this.finished) {
      res.resume();
      return;
    }
    if (this.tunnel !== null) this.tunnel.decline();
    res.on('error', () => {}); // reported through 'close' below
    this.conn.send(encodeResponse(this.rid, res.statusCode, res.statusMessage, res.rawHeaders,
      DROPPED_RESPONSE_HEADERS));
    this.answered = true;
    res.on('data', (chunk) => this.guard(() => {
      if (!this.finished) this.conn.relayBody(this.rid, chunk, res);
    }));
    res.on('end', () => this.guard(() => this.finish()));
    res.on('close', () => this.guard(() => {
      if (!this.finished) this.fail(ERROR_BAD_GATEWAY, 'the application closed the connection in the middle of the response');
    }));
  }

  /** The app switched protocols: its 'upgrade' handler wrote a 101 on the
   *  in-memory connection, which is now `socket`'s alone. */
  onUpgrade(res, socket, head) {
    if (this.finished) {
      socket.destroy();
      return;
    }
    if (this.tunnel === null) {
      socket.destroy();
      this.fail(ERROR_BAD_GATEWAY, `the application answered ${res.statusCode} (switching `
        + 'protocols) to a request that did not ask to upgrade');
      return;
    }
    // Hop-by-hop headers stay: they are the point of a 101.
    this.conn.send(encodeResponse(this.rid, res.statusCode, res.statusMessage, res.rawHeaders, null));
    this.answered = true;
    this.tunnel.open(socket, head);
  }

  onClientError(err) {
    if (this.finished) return;
    // The whole response arrived ('end' is only pending): it stands.
    if (this.response !== null && this.response.complete) return;
    if (!this.answered) {
      this.fail(ERROR_BAD_GATEWAY, 'the application closed the connection without a response'
        + (err && err.message ? ` (${err.message})` : ''));
    } else {
      this.fail(ERROR_BAD_GATEWAY, `the response was cut short: ${err && err.message}`);
    }
  }

  finish() {
    if (this.finished) return;
    this.finished = true;
    this.conn.send(frameHeader(T.END, this.rid, 0));
    this.conn.flush();
    // An upgrade request did not ask the app server to close the connection.
    if (this.tunnel !== null) this.teardown();
    this.conn.maybeIdle();
  }

  /** Answer ERROR (in place of RESPONSE, or to cut a response short) and
   *  give up the in-memory connection. The agent connection goes on. */
  fail(code, message) {
    if (this.finished) return;
    this.finished = true;
    if (!this.conn.closed) {
      this.conn.send(encodeError(code, message, this.rid));
      this.conn.flush();
    }
    this.teardown();
    this.conn.maybeIdle();
  }

  /** Drop the in-memory connection: the app sees its request aborted (a
   *  tunnel lets go of it as Tunnel.release() says). */
  teardown() {
    this.finished = true;
    if (this.switched) this.tunnel.release();
    else if (this.clientSide !== null && !this.clientSide.destroyed) this.clientSide.destroy();
  }

  /** The app switched protocols: the request became a tunnel. */
  get switched() {
    return this.tunnel !== null && this.tunnel.socket !== null;
  }

  /** Whether the agent connection can carry another request after this
   *  one: not after a tunnel, nor when the agent had started one. */
  get reusable() {
    return this.tunnel === null || (!this.switched && !this.tunnel.heardFromAgent);
  }
}

// ---------------------------------------------------------------------------
// An upgraded connection: a tunnel between the agent and the app's socket
// ---------------------------------------------------------------------------

// How many bytes of the new protocol are held while the app has not
// switched protocols yet; past that, frames are not read until it has
// answered.
const MAX_HELD_TUNNEL_BYTES = 64 * 1024;

/**
 * The tunnel of an upgrade request (docs/protocol.md, "Upgraded
 * connections"). It exists from the REQUEST on, because the agent may send
 * the new protocol's first bytes before it has read the 101: they are held
 * until the app switches protocols, and dropped if it answers with an
 * ordinary response instead.
 *
 * Once the app has switched (open()), bytes flow both ways, unasked: a BODY
 * from the agent is written to our end of the in-memory connection, whose
 * other end the app's 'upgrade' handler holds, and what the app writes comes
 * back as BODY frames. END is a half close in each direction. Each direction
 * has its own back-pressure: while the app's socket is full, no frame is
 * read from the agent; while the agent connection is full, our end of the
 * socket is paused. When both sides have ended, or the app has closed its
 * socket, or anything fails, the agent connection is closed: it never
 * carries another request.
 */
class Tunnel {
  constructor(exchange) {
    this.exchange = exchange;
    this.conn = exchange.conn;
    this.rid = exchange.rid;
    this.socket = null; // our end of the in-memory connection, once the app has switched
    this.held = []; // BODY payloads from the agent before that
    this.heldBytes = 0;
    this.declined = false; // the app answered with an ordinary response
    this.heardFromAgent = false; // a BODY or END came: the agent started the tunnel
    this.agentEnded = false; // END received
    this.appEnded = false; // END sent
    this.appGone = false; // the app's end of the socket is closed: nothing reads it
    this.appFull = false; // the app's socket is full: no frame is read until it drains
  }

  /** A BODY or END frame from the agent. */
  onFrame(type, payload) {
    if (type === T.MORE || this.agentEnded) {
      throw new ProtocolError(`unexpected ${TYPE_NAMES[type]} in the upgraded connection of `
        + `request ${this.rid}`, this.rid, 'unexpected');
    }
    this.heardFromAgent = true;
    if (type === T.END) {
      this.agentEnded = true;
      if (this.socket !== null) {
        this.socket.end();
        this.maybeClose();
      }
      return;
    }
    if (payload.length === 0 || payload.length > MAX_BODY_CHUNK) {
      throw new ProtocolError(`BODY of ${payload.length} bytes in an upgraded connection`, this.rid);
    }
    if (this.socket !== null) {
      this.toApp(payload);
    } else if (!this.declined) {
      this.held.push(payload);
      this.heldBytes += payload.length;
      if (this.heldBytes >= MAX_HELD_TUNNEL_BYTES) this.conn.pauseReading();
    }
  }

  /** The app answered with an ordinary response: what the agent sent for
   *  the tunnel has no reader. */
  decline() {
    this.declined = true;
    this.held = [];
    this.heldBytes = 0;
    this.conn.resumeReading();
  }

  /** The app switched protocols: `socket` is our end of its connection,
   *  `head` what the app wrote right after the 101. */
  open(socket, head) {
    this.socket = socket;
    if (head.length) this.conn.relayBody(this.rid, head, socket);
    const guard = (fn) => this.exchange.guard(fn);
    socket.on('data', (chunk) => guard(() => this.conn.relayBody(this.rid, chunk, socket)));
    socket.on('end', () => guard(() => this.onAppEnd()));
    socket.on('error', (err) => guard(() => this.exchange.fail(ERROR_BAD_GATEWAY,
      `the upgraded connection failed: ${err.message}`)));
    const appSide = this.exchange.serverSide;
    if (appSide.destroyed) this.appGone = true;
    else appSide.once('close', () => guard(() => this.onAppGone()));
    for (const data of this.held) this.toApp(data);
    this.held = [];
    this.heldBytes = 0;
    if (this.agentEnded) socket.end();
    if (!this.appFull) this.conn.resumeReading();
    // A process that is exiting does not wait for tunnels: they may never end.
    if (state.stopping && state.exitWhenDrained) this.conn.end();
  }

  /** Write `data` from the agent to the app's socket; while it is full,
   *  no frame is read. */
  toApp(data) {
    if (this.appGone || this.exchange.serverSide.destroyed) return;
    if (this.socket.write(data) || this.appFull) return;
    this.appFull = true;
    this.conn.pauseReading();
    this.socket.once('drain', () => {
      this.appFull = false;
      this.conn.resumeReading();
    });
  }

  /** The app ended its side (socket.end(), or closed the socket). */
  onAppEnd() {
    this.appEnded = true;
    this.conn.send(frameHeader(T.END, this.rid, 0));
    this.conn.flush();
    this.maybeClose();
  }

  onAppGone() {
    this.appGone = true;
    this.maybeClose();
  }

  /** The tunnel is over when the app has ended and the agent has too, or
   *  nothing reads what the agent would still send. */
  maybeClose() {
    const ex = this.exchange;
    if (ex.finished || !this.appEnded || !(this.agentEnded || this.appGone)) return;
    ex.finished = true;
    this.conn.maybeIdle();
  }

  /** Let go of the in-memory connection when the exchange is over. After
   *  both sides ended, the app reads what is left and its socket closes by
   *  itself; otherwise both ends are closed now. */
  release() {
    if (this.appEnded && this.agentEnded) return;
    this.socket.destroy();
    this.exchange.serverSide.destroy();
  }
}

// ---------------------------------------------------------------------------
// A connection from the agent
// ---------------------------------------------------------------------------

/**
 * Frames are parsed in place from each chunk read; a frame split across
 * chunks is gathered in this connection's buffer (reused), or, for a BODY,
 * in a buffer of its own that is handed on as is. A tunnel can stop the
 * parsing between two frames (pauseReading()); the rest of the chunk then
 * waits in `unparsed`.
 */
class AgentConnection {
  constructor(sock) {
    this.sock = sock;
    this.closed = false;
    this.cur = null; // the Exchange in progress
    this.oob = false; // out-of-band work in progress
    this.header = Buffer.allocUnsafe(HEADER_LEN);
    this.headerHave = 0;
    this.frame = null; // [type, rid, length] of a frame being gathered
    this.buf = Buffer.allocUnsafe(16 * 1024); // reused for split non-BODY frames
    this.payload = null;
    this.payloadHave = 0;
    this.readPaused = false; // no frame is parsed until resumeReading()
    this.unparsed = null; // what was read but not parsed while paused
    this.corked = false;
    this.drainWaiters = [];
    this.uncork = () => this.flush();
    sock.on('data', (chunk) => this.onData(chunk));
    sock.on('drain', () => {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const fn of waiters) fn();
    });
    sock.on('end', () => this.close());
    sock.on('error', (err) => {
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') log(`connection error: ${err.message}`);
      this.close();
    });
    sock.on('close', () => this.close());
  }

  // -- sending -----------------------------------------------------------

  /** Write what was queued now (at the end of a response, so that an app
   *  that exits right after its last response does not lose our END). */
  flush() {
    if (this.corked) {
      this.corked = false;
      if (!this.sock.destroyed) this.sock.uncork();
    }
  }

  /** Queue a frame; frames of one event-loop turn go out in one write. */
  send(buf) {
    if (this.closed) return false;
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      setImmediate(this.uncork);
    }
    return this.sock.write(buf);
  }

  /** `data` as BODY frames of at most 64 KiB, without copying it. */
  sendBody(rid, data) {
    let ok = true;
    for (let off = 0; off < data.length; off += MAX_BODY_CHUNK) {
      const piece = off === 0 && data.length <= MAX_BODY_CHUNK
        ? data : data.subarray(off, off + MAX_BODY_CHUNK);
      this.send(frameHeader(T.BODY, rid, piece.length));
      ok = this.send(piece);
    }
    return ok;
  }

  onDrain(fn) {
    this.drainWaiters.push(fn);
  }

  /** `data` read from `source` (a readable stream) as BODY frames; while
   *  the agent reads slower than `source` produces, `source` is paused. */
  relayBody(rid, data, source) {
    if (this.closed || this.sendBody(rid, data) || source.isPaused()) return;
    source.pause();
    this.onDrain(() => source.resume());
  }

  // -- receiving ---------------------------------------------------------

  onData(chunk) {
    const n = chunk.length;
    let off = 0;
    try {
      while (off < n && !this.closed) {
        if (this.readPaused) {
          this.unparsed = chunk.subarray(off);
          return;
        }
        if (this.frame !== null) {
          // Gathering the payload of a split frame.
          const [type, rid, length] = this.frame;
          const take = Math.min(length - this.payloadHave, n - off);
          chunk.copy(this.payload, this.payloadHave, off, off + take);
          this.payloadHave += take;
          off += take;
          if (this.payloadHave === length) {
            const payload = this.payload.subarray(0, length);
            this.frame = null;
            this.payload = null;
            this.dispatch(type, rid, payload);
          }
        } else if (this.headerHave > 0) {
          // Gathering a split header.
          const take = Math.min(HEADER_LEN - this.headerHave, n - off);
          chunk.copy(this.header, this.headerHave, off, off + take);
          this.headerHave += take;
          off += take;
          if (this.headerHave === HEADER_LEN) {
            this.headerHave = 0;
            const [type, rid, length] = checkHeader(this.header, 0);
            if (length === 0) this.dispatch(type, rid, EMPTY);
            else this.startFrame(type, rid, length);
          }
        } else if (n - off >= HEADER_LEN) {
          const [type, rid, length] = checkHeader(chunk, off);
          if (n - off >= HEADER_LEN + length) {
            const start = off + HEADER_LEN;
            off = start + length;
            this.dispatch(type, rid, length ? chunk.subarray(start, off) : EMPTY);
          } else {
            off += HEADER_LEN;
            this.startFrame(type, rid, length);
          }
        } else {
          chunk.copy(this.header, 0, off, n);
          this.headerHave = n - off;
          off = n;
        }
      }
    } catch (e) {
      this.onError(e);
    }
  }

  /** Stop reading frames (a tunnel's app socket is full). */
  pauseReading() {
    if (this.readPaused) return;
    this.readPaused = true;
    this.sock.pause();
  }

  resumeReading() {
    if (!this.readPaused || this.closed) return;
    this.readPaused = false;
    const rest = this.unparsed;
    this.unparsed = null;
    if (rest !== null) this.onData(rest);
    if (!this.readPaused && !this.closed) this.sock.resume();
  }

  startFrame(type, rid, length) {
    this.frame = [type, rid, length];
    this.payloadHave = 0;
    if (type === T.BODY) {
      this.payload = Buffer.allocUnsafe(length); // handed on to the app: not reused
    } else {
      if (this.buf.length < length) this.buf = Buffer.allocUnsafe(Math.max(length, 2 * this.buf.length));
      this.payload = this.buf;
    }
  }

  dispatch(type, rid, payload) {
    switch (type) {
      case T.PING:
        this.send(frameHeader(T.PONG, rid, 0));
        return;
      case T.PONG:
        return;
      case T.REQUEST:
        if (this.cur !== null || this.oob) {
          throw new ProtocolError(`REQUEST ${rid} while ${this.oob ? 'doing out-of-band work'
            : `request ${this.cur.rid} is in progress`}`, rid, 'unexpected');
        }
        this.startRequest(rid, payload);
        return;
      case T.BODY:
      case T.END:
      case T.MORE:
        if (this.cur === null || this.cur.rid !== rid) {
          throw new ProtocolError(`${TYPE_NAMES[type]} for request ${rid}`
            + (this.cur === null ? ' outside a request' : ` during request ${this.cur.rid}`),
          rid, 'unexpected');
        }
        this.cur.onFrame(type, payload);
        return;
      case T.ERROR: {
        let what;
        try {
          const e = decodeError(payload);
          what = `ERROR ${e.code}: ${e.message}`;
        } catch (e) {
          what = `a malformed ERROR (${e.message})`;
        }
        log(`the agent sent ${what}${this.cur !== null ? `; request ${this.cur.rid} is given up` : ''}; closing the connection`);
        this.destroy();
        return;
      }
      case T.OOB_WORK:
        if (this.cur !== null || this.oob) {
          throw new ProtocolError('OOB_WORK on a busy connection', rid, 'unexpected');
        }
        this.runOobWork(rid);
        return;
      default:
        throw new ProtocolError(`unexpected message type ${TYPE_NAMES[type]}`, rid, 'unexpected');
    }
  }

  startRequest(rid, payload) {
    let decoded;
    try {
      decoded = decodeRequest(payload);
    } catch (e) {
      if (e instanceof ProtocolError) e.requestId = rid;
      throw e;
    }
    const ex = new Exchange(this, rid);
    this.cur = ex;
    state.inflight++;
    ex.prefixOpen = (decoded.flags & FLAG_HAS_BODY) !== 0;
    try {
      ex.start(decoded.flags, decoded.env);
    } catch (e) {
      log(`cannot make request ${rid} (${envValue(decoded.env, 'REQUEST_METHOD')} `
        + `${envValue(decoded.env, 'REQUEST_URI')}): ${e.message}`);
      ex.fail(400, `bad request: ${e.message}`);
      return;
    }
    if (!ex.prefixOpen) ex.endBody();
  }

  /** The current request is over when its response is and no frame of it
   *  is still expected from the agent. */
  maybeIdle() {
    const ex = this.cur;
    if (ex === null || !ex.finished || ex.prefixOpen || ex.pulling) return;
    if (!ex.reusable) {
      this.end();
      return;
    }
    this.cur = null;
    state.inflight--;
    if (state.stopping) this.end();
    checkDrained();
  }

  runOobWork(rid) {
    this.oob = true;
    state.inflight++;
    const waits = [];
    for (const fn of PhusionPassenger.listeners('oob_work')) {
      try {
        const r = fn.call(PhusionPassenger);
        if (r && typeof r.then === 'function') {
          waits.push(Promise.resolve(r).catch((e) => log(`an oob_work handler failed: ${e && e.stack}`)));
        }
      } catch (e) {
        log(`an oob_work handler failed: ${e && e.stack}`);
      }
    }
    Promise.all(waits).then(() => {
      this.oob = false;
      state.inflight--;
      this.send(frameHeader(T.OOB_DONE, rid, 0));
      this.flush();
      if (state.stopping) this.end();
      checkDrained();
    });
  }

  onError(e) {
    if (!(e instanceof ProtocolError)) {
      log(`internal error on a connection: ${e && e.stack}`);
      e = new ProtocolError(`internal error in the Node.js loader: ${oneLine(e)}`, 0,
        'internal', 500);
    } else {
      log(`protocol error, closing the connection: ${e.message}`);
    }
    if (!this.closed) {
      const frame = encodeError(e.code, e.message, e.requestId);
      this.abortRequest();
      this.closed = true;
      this.sock.end(frame, () => this.sock.destroy());
      this.forget();
    }
  }

  abortRequest() {
    const ex = this.cur;
    if (ex !== null) {
      this.cur = null;
      state.inflight--;
      ex.teardown();
    }
    if (this.oob) {
      this.oob = false;
      state.inflight--;
    }
  }

  /** Close after what was queued has been written. What the agent still
   *  sends is read and ignored, so that its end of file is seen. */
  end() {
    if (this.closed) return;
    this.closed = true;
    this.abortRequest();
    this.sock.end();
    if (this.readPaused) {
      this.readPaused = false;
      this.unparsed = null;
      this.sock.resume();
    }
    this.forget();
  }

  destroy() {
    this.close();
    this.sock.destroy();
  }

  close() {
    if (!this.closed) {
      this.closed = true;
      this.abortRequest();
    }
    this.forget();
  }

  forget() {
    if (state.connections.delete(this)) checkDrained();
  }
}

function envValue(env, name) {
  for (const [n, v] of env) if (n === name) return v;
  return '';
}

// ---------------------------------------------------------------------------
// The PhusionPassenger API and the listen() hook
// ---------------------------------------------------------------------------

const PhusionPassenger = new EventEmitter();
PhusionPassenger.configure = function configure(options) {
  if (options && 'autoInstall' in options) state.autoInstall = !!options.autoInstall;
  return PhusionPassenger;
};
Object.defineProperty(PhusionPassenger, 'appRoot', { get: () => state.appRoot, enumerable: true });

/** What server.address() of the app server says: what listen() asked for. */
function listenAddress(args) {
  let first = args[0];
  let host;
  if (first !== null && typeof first === 'object') {
    if (typeof first.path === 'string') return first.path;
    host = first.host;
    first = first.port;
  } else if (typeof args[1] === 'string') {
    host = args[1];
  }
  if (typeof first === 'string' && !/^[0-9]+$/.test(first)) return first; // a pipe name
  const port = Number(first) || 0;
  if (typeof host === 'string' && net.isIPv4(host)) return { address: host, family: 'IPv4', port };
  if (typeof host === 'string' && net.isIPv6(host)) return { address: host, family: 'IPv6', port };
  return { address: '::', family: 'IPv6', port };
}

/** Make `server` the app server: it binds nothing; requests come from us. */
function installAppServer(server, args) {
  const cb = args.length && typeof args[args.length - 1] === 'function' ? args[args.length - 1] : null;
  const address = listenAddress(args);
  // A stand-in handle, so listening, address(), close(), ref() and unref()
  // work as they do on a real server.
  const handle = {
    close() {
      if (server === state.appServer) {
        stop('the application closed its server', false);
      }
    },
    ref() {},
    unref() {},
  };
  if (typeof address === 'string') {
    server._pipeName = address; // address() returns it, as for a real pipe
  } else {
    handle.getsockname = (out) => {
      Object.assign(out, address);
      return 0;
    };
  }
  server._handle = handle;
  state.appServer = server;
  if (cb) server.once('listening', cb);
  process.nextTick(() => {
    server.emit('listening');
    if (state.loaded) becomeReady();
  });
  return server;
}

const realListen = http.Server.prototype.listen;

function listen(...args) {
  if (state.appServer === null || this === state.appServer) {
    const explicit = args[0] === 'passenger'
      || (args[0] !== null && typeof args[0] === 'object' && args[0].path === 'passenger');
    if (explicit || state.autoInstall) {
      if (this._handle) {
        const err = new Error('Listen method has been called more than once without closing.');
        err.code = 'ERR_SERVER_ALREADY_LISTEN';
        throw err;
      }
      return installAppServer(this, args);
    }
  }
  return realListen.apply(this, args);
}

// ---------------------------------------------------------------------------
// Start-up, readiness, serving and stopping
// ---------------------------------------------------------------------------

let spawnErrorReported = false;

function writeReadiness(frame) {
  let off = 0;
  const deadline = Date.now() + 5000;
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  while (off < frame.length) {
    try {
      off += fs.writeSync(4, frame, off, frame.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN' || Date.now() > deadline) throw e;
      Atomics.wait(sleeper, 0, 0, 5);
    }
  }
  fs.closeSync(4);
}

function reportSpawnError(summary, details) {
  if (spawnErrorReported || state.ready) return;
  spawnErrorReported = true;
  log(`the application could not start: ${summary}`);
  if (details) process.stderr.write(details.endsWith('\n') ? details : details + '\n');
  try {
    writeReadiness(encodeSpawnError(summary, details || ''));
  } catch (e) {
    log(`could not report the spawn error on fd 4: ${e.message}`);
  }
}

function failStartup(err) {
  reportSpawnError(oneLine(err), userStack(err));
  process.exit(1);
}

function onUncaughtBeforeReady(err) {
  failStartup(err);
}

function onExitBeforeReady(code) {
  if (!state.ready && !spawnErrorReported) {
    reportSpawnError(`the application exited (status ${code}) before it called listen() on an HTTP server`, '');
  }
}

/** Once the startup file is loaded and the app server exists: accept on
 *  fd 3 and report READY on fd 4. */
function becomeReady() {
  if (state.readyScheduled || state.appServer === null || !state.loaded) return;
  state.readyScheduled = true;
  const listener = net.createServer({ allowHalfOpen: false }, onAgentConnection);
  state.listener = listener;
  listener.on('error', (err) => {
    if (!state.ready) {
      failStartup(new Error(`fd 3 is not a usable listening socket: ${err.message}`));
      return;
    }
    log(`the listening socket (fd 3) failed: ${err.message}; stopping`);
    stop('the listening socket failed', true);
  });
  listener.listen({ fd: 3 }, () => {
    if (state.stopping) return;
    try {
      writeReadiness(encodeReady(0));
    } catch (e) {
      log(`could not report readiness on fd 4: ${e.message}; exiting`);
      process.exit(1);
    }
    state.ready = true;
    process.removeListener('uncaughtException', onUncaughtBeforeReady);
    process.removeListener('exit', onExitBeforeReady);
    watchParent();
  });
}

function onAgentConnection(sock) {
  if (state.stopping) {
    sock.destroy();
    return;
  }
  state.connections.add(new AgentConnection(sock));
}

/** Exit when the agent that started us is gone. */
function watchParent() {
  const parent = state.parentPid;
  if (parent <= 1) return;
  const timer = setInterval(() => {
    if (process.ppid !== parent) {
      log(`the agent (pid ${parent}) is gone; exiting`);
      process.exit(0);
    }
  }, 2000);
  timer.unref();
}

/**
 * Stop: accept no more connections, close the idle ones, let the requests
 * in progress finish, then close their connections. With `exit`, tunnels
 * are closed at once and the process exits once all of that is done —
 * unless the app has its own handler for the signal, which then decides
 * when to exit (and when its WebSockets close).
 */
function stop(why, exit) {
  // Stopping again only matters when the process now has to exit (a signal
  // after the app closed its server).
  if (state.stopping && (state.exitWhenDrained || !exit)) return;
  state.stopping = true;
  state.exitWhenDrained = exit;
  log(`${why}: finishing ${state.inflight} request(s) in progress, then stopping`);
  if (state.listener !== null) {
    try {
      state.listener.close();
    } catch (e) {
      // already closed
    }
  }
  for (const conn of [...state.connections]) {
    // Tunnels may never end by themselves: an exiting process closes them,
    // as Node would if it were killed.
    if ((conn.cur === null && !conn.oob) || (exit && conn.cur !== null && conn.cur.switched)) {
      conn.end();
    }
  }
  checkDrained();
}

function checkDrained() {
  if (!state.stopping || state.inflight > 0 || state.connections.size > 0) return;
  if (!state.exitWhenDrained) return; // the app closes its server and exits itself
  if (state.appServer !== null && state.appServer._handle) {
    // The app's server closes too ('close' fires: the app can clean up).
    try {
      state.appServer.close();
    } catch (e) {
      // ignore
    }
  }
  setImmediate(() => process.exit(0));
}

function onSignal(signal) {
  if (!state.ready) process.exit(0);
  // The app's own handler for the signal, if any, decides when to exit.
  const appHandles = process.listenerCount(signal) > 1;
  stop(`${signal} received`, !appHandles);
}

function loadStartupFile(file) {
  process.argv[1] = file;
  if (file.endsWith('.mjs')) return import(pathToFileURL(file).href);
  try {
    // As `node app.js` would: the main module (require.main === module).
    Module._load(file, null, true);
    return null;
  } catch (e) {
    if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
      return import(pathToFileURL(file).href);
    }
    throw e;
  }
}

function main() {
  state.parentPid = process.ppid;
  const appRoot = process.env.PASSENGER_APP_ROOT || process.cwd();
  state.appRoot = appRoot;
  const startupFile = path.resolve(appRoot, process.env.PASSENGER_STARTUP_FILE || 'app.js');
  if (process.env.IN_PASSENGER === undefined) process.env.IN_PASSENGER = '1';
  if (process.env.PASSENGER_APP_ROOT === undefined) process.env.PASSENGER_APP_ROOT = appRoot;
  // What `ps` shows, as the original names it; set before the app loads,
  // so that an app that names itself wins.
  process.title = `Passenger NodeApp: ${process.env.PASSENGER_APP_GROUP_NAME || appRoot}`;
  global.PhusionPassenger = PhusionPassenger;
  http.Server.prototype.listen = listen;
  process.on('uncaughtException', onUncaughtBeforeReady);
  process.on('exit', onExitBeforeReady);
  process.on('exit', () => {
    // Whatever exits the process, frames already queued go out first.
    for (const conn of state.connections) conn.flush();
  });
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  try {
    if (process.cwd() !== appRoot) process.chdir(appRoot);
  } catch (e) {
    // the agent already put us there; a missing root shows up below
  }
  let pending;
  try {
    if (!fs.existsSync(startupFile)) {
      throw new Error(`the startup file ${startupFile} does not exist`);
    }
    pending = loadStartupFile(startupFile);
  } catch (e) {
    failStartup(e);
    return;
  }
  const loaded = () => {
    state.loaded = true;
    becomeReady(); // now, or when the app calls listen()
  };
  if (pending) pending.then(loaded, failStartup);
  else loaded();
}

if (require.main === module) {
  main();
} else {
  module.exports = {
    T, HEADER_LEN, MAX_PAYLOAD_LEN, ProtocolError, checkHeader, parseFrame, decodeRequest,
    decodeError, encodeFrame, encodeError, encodeReady, encodeSpawnError, encodeResponse,
    frameHeader, buildRequest, headerName, encodePath, MemorySocket,
  };
}
