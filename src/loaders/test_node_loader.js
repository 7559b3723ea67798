'use strict';
/*
 * Tests of node-loader.js.
 *
 * Run with:  node --test src/loaders/test_node_loader.js
 *
 * The loader is started for real, as the agent starts it: a child process
 * with a listening Unix socket on fd 3 and the readiness pipe on fd 4, on
 * small apps written to a temporary directory. This file plays the agent.
 * The frame codec below is this test's own, written from docs/protocol.md;
 * it is checked against docs/protocol-vectors.json, and so is the loader's.
 */

const assert = require('node:assert/strict');
const childProcess = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { describe, it, before, after } = require('node:test');

const LOADER = path.join(__dirname, 'node-loader.js');
const VECTORS = path.join(__dirname, '..', '..', 'docs', 'protocol-vectors.json');
const loader = require(LOADER); // the codec it exports when it is not the main module

// ---------------------------------------------------------------------------
// The test's own codec (docs/protocol.md)
// ---------------------------------------------------------------------------

const T = {
  HELLO: 0x01, HELLO_OK: 0x02, CONFIGURE: 0x03, CONFIGURE_OK: 0x04, REQUEST: 0x10,
  BODY: 0x11, END: 0x12, MORE: 0x13, READ_BODY: 0x14, RELEASE: 0x15, RESPONSE: 0x20, ERROR: 0x30,
  PING: 0x40, PONG: 0x41, STATUS: 0x50, STATUS_REPLY: 0x51, READY: 0x60, SPAWN_ERROR: 0x61,
  FORK: 0x70, FORKED: 0x71, OOB_WORK: 0x72, OOB_DONE: 0x73,
};
const NAMES = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]));
const MAX_PAYLOAD = 1 << 20;

// Payload layout of every message, field by field.
const SCHEMA = {
  HELLO: [['role', 'u8'], ['pid', 'u32'], ['generation', 'u64']],
  HELLO_OK: [['agent_pid', 'u32'], ['instance', 'bytes']],
  CONFIGURE: [['generation', 'u64'], ['config', 'bytes']],
  CONFIGURE_OK: [],
  REQUEST: [['flags', 'u8'], ['options', 'pairs'], ['env', 'pairs']],
  BODY: [['data', 'rest']],
  END: [],
  MORE: [],
  READ_BODY: [['max', 'u32']],
  RESPONSE: [['status', 'u16'], ['reason', 'bytes'], ['headers', 'pairs']],
  ERROR: [['code', 'u16'], ['message', 'bytes']],
  PING: [],
  PONG: [],
  STATUS: [['query', 'bytes']],
  STATUS_REPLY: [['document', 'bytes']],
  READY: [['concurrency', 'u32']],
  SPAWN_ERROR: [['summary', 'bytes'], ['details', 'bytes']],
  FORK: [],
  FORKED: [['pid', 'u32']],
  OOB_WORK: [],
  OOB_DONE: [],
  RELEASE: [],
};

class Malformed extends Error {}

function u16(n) { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; }
function u32(n) { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; }
function u64(n) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; }
function toBuf(x) { return Buffer.isBuffer(x) ? x : Buffer.from(String(x), 'utf8'); }
function encBytes(x) { const b = toBuf(x); return Buffer.concat([u32(b.length), b]); }
function encPairs(pairs) {
  return Buffer.concat([u32(pairs.length), ...pairs.flatMap(([n, v]) => [encBytes(n), encBytes(v)])]);
}

function frame(type, rid = 0, payload = Buffer.alloc(0)) {
  const h = Buffer.alloc(12);
  h.write('MP', 0, 'latin1');
  h[2] = 1;
  h[3] = type;
  h.writeUInt32BE(rid, 4);
  h.writeUInt32BE(payload.length, 8);
  return Buffer.concat([h, payload]);
}

function requestFrame(rid, env, flags = 0, options = []) {
  return frame(T.REQUEST, rid, Buffer.concat([Buffer.from([flags]), encPairs(options), encPairs(env)]));
}

/** Encode the payload of a message from its named fields (vector style). */
function encodeFields(name, fields) {
  const parts = [];
  for (const [field, kind] of SCHEMA[name]) {
    const hexValue = fields[field + '_hex'];
    const value = hexValue !== undefined ? Buffer.from(hexValue, 'hex') : fields[field];
    if (kind === 'u8') parts.push(Buffer.from([value]));
    else if (kind === 'u16') parts.push(u16(value));
    else if (kind === 'u32') parts.push(u32(value));
    else if (kind === 'u64') parts.push(u64(value));
    else if (kind === 'bytes') parts.push(encBytes(value));
    else if (kind === 'pairs') parts.push(encPairs(value));
    else if (kind === 'rest') parts.push(toBuf(value));
  }
  return Buffer.concat(parts);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Decode a payload into named fields; bytes come back as Buffers. */
function decodeFields(name, payload) {
  let off = 0;
  const need = (n) => {
    if (off + n > payload.length) throw new Malformed(`${name}: truncated`);
  };
  const bytes = () => {
    need(4);
    const n = payload.readUInt32BE(off);
    off += 4;
    need(n);
    const b = payload.subarray(off, off + n);
    off += n;
    return b;
  };
  const out = {};
  for (const [field, kind] of SCHEMA[name]) {
    if (kind === 'u8') { need(1); out[field] = payload[off]; off += 1; }
    else if (kind === 'u16') { need(2); out[field] = payload.readUInt16BE(off); off += 2; }
    else if (kind === 'u32') { need(4); out[field] = payload.readUInt32BE(off); off += 4; }
    else if (kind === 'u64') { need(8); out[field] = Number(payload.readBigUInt64BE(off)); off += 8; }
    else if (kind === 'bytes') out[field] = bytes();
    else if (kind === 'rest') { out[field] = payload.subarray(off); off = payload.length; }
    else if (kind === 'pairs') {
      need(4);
      const count = payload.readUInt32BE(off);
      off += 4;
      if (count > (payload.length - off) / 8) throw new Malformed(`${name}: pair count lies`);
      const pairs = [];
      for (let i = 0; i < count; i++) pairs.push([bytes(), bytes()]);
      out[field] = pairs;
    }
  }
  if (off !== payload.length) throw new Malformed(`${name}: trailing bytes`);
  if (name === 'HELLO' && !(out.role >= 1 && out.role <= 3)) throw new Malformed('bad role');
  // Flags: 0x01 body, 0x02 HTTPS, 0x04 upgrade (never with a body).
  if (name === 'REQUEST' && ((out.flags & ~7) || (out.flags & 5) === 5)) throw new Malformed('bad flags');
  if (name === 'ERROR') {
    try { strictUtf8.decode(out.message); } catch (e) { throw new Malformed('not UTF-8'); }
  }
  return out;
}

/** One frame at the start of buf: null (incomplete), or {type, name, rid, payload, size}. */
function readFrame(buf) {
  if (buf.length < 12) return null;
  if (buf[0] !== 0x4d || buf[1] !== 0x50) throw Object.assign(new Error('bad magic'), { kind: 'bad_magic' });
  if (buf[2] !== 1) throw Object.assign(new Error('bad version'), { kind: 'bad_version' });
  const type = buf[3];
  if (!NAMES[type]) throw Object.assign(new Error('unknown type'), { kind: 'unknown_type' });
  const len = buf.readUInt32BE(8);
  if (len > MAX_PAYLOAD) throw Object.assign(new Error('too large'), { kind: 'too_large' });
  if (buf.length < 12 + len) return null;
  return { type, name: NAMES[type], rid: buf.readUInt32BE(4), payload: buf.subarray(12, 12 + len), size: 12 + len };
}

const text = (b) => Buffer.from(b).toString('latin1');
const pairsText = (pairs) => pairs.map(([n, v]) => [text(n), text(v)]);

// ---------------------------------------------------------------------------
// Playing the agent
// ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A connection to the loader's fd 3, speaking frames. */
class AgentConn {
  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.frames = [];
    this.waiters = [];
    this.isClosed = false;
    this.closed = new Promise((resolve) => sock.on('close', () => {
      this.isClosed = true;
      resolve();
      this.wake();
    }));
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      for (;;) {
        const f = readFrame(this.buf);
        if (f === null) break;
        f.fields = decodeFields(f.name, f.payload);
        f.time = Date.now();
        this.frames.push(f);
        this.buf = this.buf.subarray(f.size);
      }
      this.wake();
    });
  }

  static open(sockPath) {
    return new Promise((resolve, reject) => {
      const sock = net.connect(sockPath);
      sock.once('connect', () => resolve(new AgentConn(sock)));
      sock.once('error', reject);
    });
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  send(buf) {
    this.sock.write(buf);
  }

  /** The next frame; null when the connection closed first. */
  async next(timeout = 10000) {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (this.frames.length) return this.frames.shift();
      if (this.isClosed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a frame');
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  /**
   * One request as the agent makes it: REQUEST, the body prefix (up to
   * `prefix` bytes, then END or MORE), READ_BODY answered from `body`
   * (`chunk` bytes at most per BODY), until END or ERROR.
   */
  async request(rid, env, opts = {}) {
    const body = opts.body === undefined ? null : toBuf(opts.body);
    const prefix = opts.prefix === undefined ? 64 * 1024 : opts.prefix;
    let flags = opts.flags || 0;
    if (body !== null) flags |= 1;
    const parts = [requestFrame(rid, env, flags)];
    let sent = 0;
    if (body !== null) {
      const end = Math.min(prefix, body.length);
      while (sent < end) {
        const n = Math.min(65536, end - sent);
        parts.push(frame(T.BODY, rid, body.subarray(sent, sent + n)));
        sent += n;
      }
      parts.push(frame(sent === body.length ? T.END : T.MORE, rid));
    }
    this.send(Buffer.concat(parts));
    const result = { status: null, reason: null, headers: null, chunks: [], readBodies: 0, error: null, frames: [] };
    let bodyDone = body === null || sent === body.length;
    for (;;) {
      const f = await this.next(opts.timeout);
      if (f === null) {
        result.closed = true;
        break;
      }
      result.frames.push(f);
      assert.equal(f.rid, rid, `a ${f.name} frame for request ${f.rid} during request ${rid}`);
      if (f.type === T.READ_BODY) {
        assert.ok(!bodyDone, 'READ_BODY after the body was complete');
        result.readBodies++;
        if (opts.onReadBody) await opts.onReadBody(result.readBodies);
        const n = Math.min(f.fields.max, body.length - sent, opts.chunk || Infinity);
        if (n > 0) {
          this.send(frame(T.BODY, rid, body.subarray(sent, sent + n)));
          sent += n;
        } else {
          this.send(frame(T.END, rid));
          bodyDone = true;
        }
      } else if (f.type === T.RESPONSE) {
        assert.equal(result.status, null, 'a second RESPONSE');
        result.status = f.fields.status;
        result.reason = text(f.fields.reason);
        result.headers = pairsText(f.fields.headers);
        result.responseTime = f.time;
      } else if (f.type === T.BODY) {
        assert.notEqual(result.status, null, 'BODY before RESPONSE');
        result.chunks.push({ data: Buffer.from(f.fields.data), time: f.time });
      } else if (f.type === T.END) {
        result.endTime = f.time;
        break;
      } else if (f.type === T.ERROR) {
        result.error = { code: f.fields.code, message: text(f.fields.message) };
        break;
      } else {
        assert.fail(`unexpected ${f.name} during a request`);
      }
    }
    result.body = Buffer.concat(result.chunks.map((c) => c.data));
    result.text = result.body.toString('utf8');
    result.header = (name) => {
      const h = (result.headers || []).find(([n]) => n.toLowerCase() === name.toLowerCase());
      return h ? h[1] : undefined;
    };
    result.headerAll = (name) => (result.headers || [])
      .filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
    return result;
  }

  /**
   * What comes back through the tunnel of request `rid`: BODY frames up to
   * END, ERROR or the close of the connection, or until `opts.bytes` bytes
   * have come.
   */
  async tunnelRead(rid, opts = {}) {
    const out = { chunks: [], end: false, error: null, closed: false };
    let total = 0;
    while (opts.bytes === undefined || total < opts.bytes) {
      const f = await this.next(opts.timeout);
      if (f === null) {
        out.closed = true;
        break;
      }
      assert.equal(f.rid, rid, `a ${f.name} frame for request ${f.rid} in the tunnel of ${rid}`);
      if (f.type === T.BODY) {
        out.chunks.push(Buffer.from(f.fields.data));
        total += f.fields.data.length;
      } else if (f.type === T.END) {
        out.end = true;
        break;
      } else if (f.type === T.ERROR) {
        out.error = { code: f.fields.code, message: text(f.fields.message) };
        break;
      } else {
        assert.fail(`unexpected ${f.name} in a tunnel`);
      }
    }
    out.data = Buffer.concat(out.chunks);
    return out;
  }
}

/** An ERROR frame, as the agent sends it. */
function encodeErrorFrame(rid, code, message) {
  return frame(T.ERROR, rid, Buffer.concat([u16(code), encBytes(message)]));
}

/** `data` as BODY frames of at most 64 KiB, in one buffer. */
function bodyFrames(rid, data) {
  const frames = [];
  for (let off = 0; off < data.length; off += 65536) {
    frames.push(frame(T.BODY, rid, data.subarray(off, off + 65536)));
  }
  return Buffer.concat(frames);
}

/** The CGI environment the module builds for a request. */
function cgiEnv(method, uri, extra = []) {
  const [pathInfo, query = ''] = uri.split('?');
  return [
    ['REQUEST_METHOD', method],
    ['SCRIPT_NAME', ''],
    ['PATH_INFO', pathInfo],
    ['QUERY_STRING', query],
    ['REQUEST_URI', uri],
    ['SERVER_NAME', 'example.test'],
    ['SERVER_PORT', '80'],
    ['SERVER_PROTOCOL', 'HTTP/1.1'],
    ['REMOTE_ADDR', '192.0.2.7'],
    ['REMOTE_PORT', '51234'],
    ['HTTP_HOST', 'example.test'],
    ['HTTP_ACCEPT', '*/*'],
    ...extra,
  ];
}

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const WS_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

/** Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455, section 4.2.2). */
const wsAccept = (key) => crypto.createHash('sha1').update(key + WS_GUID).digest('base64');

/** The environment of a WebSocket handshake, sent with REQUEST flag 0x04. */
function wsEnv(uri, key = WS_KEY) {
  return cgiEnv('GET', uri, [['HTTP_UPGRADE', 'websocket'], ['HTTP_CONNECTION', 'Upgrade'],
    ['HTTP_SEC_WEBSOCKET_KEY', key], ['HTTP_SEC_WEBSOCKET_VERSION', '13']]);
}

/** A loader process on an app in a temporary directory, as the agent runs it. */
class LoaderProcess {
  static async start(files, opts = {}) {
    const p = new LoaderProcess();
    await p.spawn(files, opts);
    return p;
  }

  async spawn(files, opts) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-loader-test-'));
    this.appRoot = path.join(this.dir, 'app');
    fs.mkdirSync(this.appRoot);
    for (const [name, content] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(this.appRoot, name)), { recursive: true });
      fs.writeFileSync(path.join(this.appRoot, name), content);
    }
    // A real listening socket for fd 3: bound here, passed down, then
    // renamed (closing our copy unlinks the name it was bound to).
    const bindPath = path.join(this.dir, 'bind.sock');
    this.sockPath = path.join(this.dir, 'app.sock');
    const server = net.createServer();
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(bindPath, resolve);
    });
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME || '/',
      PASSENGER_APP_ROOT: this.appRoot,
      ...(opts.env || {}),
    };
    if (process.env.LD_LIBRARY_PATH) env.LD_LIBRARY_PATH = process.env.LD_LIBRARY_PATH;
    if (opts.startupFile) env.PASSENGER_STARTUP_FILE = opts.startupFile;
    const argv = opts.argv ? opts.argv(LOADER) : [process.execPath, [LOADER]];
    this.child = childProcess.spawn(argv[0], argv[1], {
      cwd: this.appRoot,
      env,
      stdio: ['ignore', 'pipe', 'pipe', server._handle.fd, 'pipe'],
    });
    fs.renameSync(bindPath, this.sockPath);
    await new Promise((resolve) => server.close(resolve));
    this.stdout = '';
    this.stderr = '';
    this.child.stdout.on('data', (d) => { this.stdout += d; });
    this.child.stderr.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.readiness = new Promise((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const pipe = this.child.stdio[4];
      pipe.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        try {
          const f = readFrame(buf);
          if (f !== null) {
            f.fields = decodeFields(f.name, f.payload);
            resolve(f);
          }
        } catch (e) {
          reject(e);
        }
      });
      pipe.on('error', () => {});
      pipe.on('close', () => resolve(null));
    });
  }

  /** Wait for READY; fail with the loader's output otherwise. */
  async ready() {
    const f = await withTimeout(this.readiness, 10000, 'READY');
    if (f === null || f.type !== T.READY) {
      const what = f === null ? 'nothing' : `${f.name} ${f.fields.summary || ''}`;
      throw new Error(`the loader reported ${what}\nstderr:\n${this.stderr}`);
    }
    assert.equal(f.fields.concurrency, 0, 'READY announces unlimited concurrency');
    return this;
  }

  connect() {
    return AgentConn.open(this.sockPath);
  }

  /** One request on a connection of its own. */
  async get(uri, extra = [], opts = {}) {
    const conn = await this.connect();
    try {
      return await conn.request(1, cgiEnv(opts.method || 'GET', uri, extra), opts);
    } finally {
      conn.sock.destroy();
    }
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
    }
    await this.exited;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');

// ---------------------------------------------------------------------------
// Apps
// ---------------------------------------------------------------------------

// Everything the tests ask a plain http.createServer app, one route each.
const KITCHEN_SINK = `
const http = require('http');
const crypto = require('crypto');
let listeningEvent = false;
let listenCallback = false;
let aborted = 0;
let oobRuns = 0;
const flooded = { pushedBack: false };
PhusionPassenger.on('oob_work', async () => {
  await new Promise((r) => setTimeout(r, 30));
  oobRuns++;
});
const routes = {
  '/': (req, res) => {
    res.setHeader('Content-Type', 'text/plain');
    res.end('Hello world\\n');
  },
  '/info': (req, res) => {
    let n = 0;
    req.on('data', (d) => { n += d.length; });
    req.on('end', () => {
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({
        method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders,
        httpVersion: req.httpVersion, remoteAddress: req.socket.remoteAddress,
        remotePort: req.socket.remotePort, encrypted: !!req.socket.encrypted, bodyLength: n,
        address: server.address(), listening: server.listening, listeningEvent, listenCallback,
        mainIsApp: require.main === module, argv1: process.argv[1], cwd: process.cwd(),
        inPassenger: process.env.IN_PASSENGER, pid: process.pid,
        passengerEnv: req.socket.passengerEnv && req.socket.passengerEnv.SERVER_NAME,
      }));
    });
  },
  '/upload': (req, res) => {
    const hash = crypto.createHash('sha256');
    let n = 0;
    req.on('data', (d) => { n += d.length; hash.update(d); });
    req.on('end', () => res.end(JSON.stringify({ length: n, sha256: hash.digest('hex'),
      te: req.headers['transfer-encoding'] || null, cl: req.headers['content-length'] || null })));
  },
  '/echo': (req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
    req.pipe(res);
  },
  '/early': (req, res) => {
    res.end('answered before reading the body');
  },
  '/stream': (req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.write('data: one\\n\\n');
    setTimeout(() => {
      res.write('data: two\\n\\n');
      setTimeout(() => res.end('data: three\\n\\n'), 150);
    }, 150);
  },
  '/cookies': (req, res) => {
    res.setHeader('Set-Cookie', ['a=1; Path=/', 'b=2; HttpOnly']);
    res.setHeader('X-Multi', ['x', 'y']);
    res.writeHead(201, 'Very Created', { 'X-Case': 'MiXeD', '!~Request-OOB-Work': '1' });
    res.end('cookies');
  },
  '/big': (req, res) => {
    const b = Buffer.alloc(200 * 1024);
    for (let i = 0; i < b.length; i++) b[i] = (i * 7) & 0xff;
    res.end(b);
  },
  '/slow': (req, res) => {
    setTimeout(() => res.end('slow done'), 400);
  },
  '/hang': (req, res) => {
    req.on('aborted', () => { aborted++; });
    res.on('close', () => { if (!res.writableFinished) aborted++; });
  },
  '/aborted': (req, res) => res.end(String(aborted)),
  '/flood-forever': (req, res) => {
    res.on('close', () => { if (!res.writableFinished) aborted++; });
    const chunk = Buffer.alloc(64 * 1024, 120);
    const pump = () => {
      while (res.write(chunk));
      res.once('drain', pump);
    };
    pump();
  },
  '/flood': (req, res) => {
    const chunk = Buffer.alloc(64 * 1024, 120);
    let sent = 0;
    const pump = () => {
      while (sent < 8 * 1024 * 1024) {
        sent += chunk.length;
        if (!res.write(chunk)) {
          flooded.pushedBack = true;
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  },
  '/flood-stats': (req, res) => res.end(JSON.stringify(flooded)),
  '/oob': (req, res) => res.end(String(oobRuns)),
  '/no-content': (req, res) => { res.statusCode = 204; res.end(); },
  '/destroy-before': (req, res) => { req.socket.destroy(); },
  '/destroy-after': (req, res) => {
    res.writeHead(200, { 'Content-Length': '100' });
    res.write('partial');
    setTimeout(() => res.socket.destroy(), 30);
  },
  '/utf8': (req, res) => {
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.end('héllo wörld ✓');
  },
};
const server = http.createServer((req, res) => {
  const route = routes[req.url.split('?')[0]] || routes['/info'];
  route(req, res);
});
server.on('listening', () => { listeningEvent = true; });
server.listen(3000, () => { listenCallback = true; });
`;

// An Express-style app, without Express: a handler function with listen().
const EXPRESS_LIKE = `
const http = require('http');
function createApp() {
  const routes = {};
  const app = function (req, res) {
    const handler = routes[req.method + ' ' + req.url.split('?')[0]];
    if (handler) handler(req, res);
    else { res.statusCode = 404; res.end('Cannot ' + req.method + ' ' + req.url); }
  };
  app.get = (p, h) => { routes['GET ' + p] = h; };
  app.listen = function () {
    const server = http.createServer(this);
    return server.listen.apply(server, arguments);
  };
  return app;
}
const app = createApp();
let server;
let callbackFired = false;
app.get('/', (req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ callbackFired, address: server.address() }));
});
if (require.main === module) {
  server = app.listen(3000, () => {
    callbackFired = true;
    console.log('Example app listening on port ' + server.address().port);
  });
}
`;

// A WebSocket server written on 'upgrade' as the ws library does it: the
// handshake by hand, then raw bytes on the socket. The route is the URL.
const WEBSOCKET_APP = `
const http = require('http');
const crypto = require('crypto');
const stats = { ends: 0, closes: 0, pushedBack: 0, afterOwnEnd: '', seen: null };
const server = http.createServer((req, res) => {
  if (req.url === '/switch-anyway') {
    // A 101 to a request that did not ask to upgrade.
    req.socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n'
      + 'Connection: Upgrade\\r\\n\\r\\n');
    return;
  }
  if (req.url === '/close-server') {
    server.close();
    res.end('closing');
    return;
  }
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify(stats));
});
server.on('connect', (req, socket) => {
  socket.end('HTTP/1.1 200 Connection Established\\r\\n\\r\\n');
});
server.on('upgrade', (req, socket, head) => {
  stats.seen = { upgrade: req.headers.upgrade, connection: req.headers.connection,
    url: req.url, head: head.length };
  socket.on('close', () => { stats.closes++; });
  socket.on('error', () => {});
  if (req.url === '/decline') {
    socket.end('HTTP/1.1 403 Forbidden\\r\\nContent-Type: text/plain\\r\\n'
      + 'Content-Length: 10\\r\\n\\r\\nno thanks\\n');
    return;
  }
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '${WS_GUID}').digest('base64');
  // The head and a first WebSocket frame (text "hello", unmasked) in one write.
  socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n'
    + 'Connection: Upgrade\\r\\nSec-WebSocket-Accept: ' + accept + '\\r\\n\\r\\n'
    + '\\x81\\x05hello', 'latin1');
  if (req.url === '/close-first') {
    socket.end('bye');
    socket.on('data', (d) => { stats.afterOwnEnd += d; });
    return;
  }
  if (req.url === '/destroy') {
    socket.write('going away');
    setTimeout(() => socket.destroy(), 50);
    return;
  }
  // '/echo': every byte back; after the agent's END one last word, then END.
  socket.on('data', (d) => {
    if (!socket.write(d)) {
      stats.pushedBack++;
      socket.pause();
      socket.once('drain', () => socket.resume());
    }
  });
  socket.on('end', () => {
    stats.ends++;
    socket.end('[end seen]');
  });
});
server.listen(3000);
`;
const WS_HELLO = Buffer.from([0x81, 0x05, ...Buffer.from('hello')]);

// A WebSocket server that drives its socket the way the ws library (8.x)
// does, written out so that the test does not need ws: setTimeout(0) and
// setNoDelay() on the socket, every frame as two corked writes, and the
// closing handshake of lib/websocket.js: the close frame goes out, and
// socket.end() is called in its write callback once the peer's close frame
// is in (after removeListener('data') and a resume() on the next tick), or
// as soon as that frame comes if ours went first. A timer destroys the
// socket if the handshake never ends, as ws does after 30 s. Client frames
// are masked and short (under 126 bytes). The text "bye" makes the server
// close first.
const WS_LIKE_APP = `
const http = require('http');
const crypto = require('crypto');
const stats = { closeCallbacks: 0, ends: 0, closes: 0, timedOut: 0 };
const server = http.createServer((req, res) => res.end(JSON.stringify(stats)));
server.on('upgrade', (req, socket, head) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '${WS_GUID}').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n'
    + 'Connection: Upgrade\\r\\nSec-WebSocket-Accept: ' + accept + '\\r\\n\\r\\n');
  socket.setTimeout(0);
  socket.setNoDelay();
  if (head.length > 0) socket.unshift(head);
  let closing = false;
  let closeSent = false;
  let closeReceived = false;
  let closeTimer = null;
  let pending = Buffer.alloc(0);
  const sendFrame = (opcode, payload, cb) => {
    socket.cork();
    socket.write(Buffer.from([0x80 | opcode, payload.length]));
    socket.write(payload, cb);
    socket.uncork();
  };
  const close = () => {
    if (closing) {
      if (closeSent && closeReceived) socket.end();
      return;
    }
    closing = true;
    sendFrame(8, Buffer.from([0x03, 0xe8]), (err) => {
      if (err) return;
      stats.closeCallbacks++;
      closeSent = true;
      if (closeReceived) socket.end();
    });
    closeTimer = setTimeout(() => {
      stats.timedOut++;
      socket.destroy();
    }, 30000);
  };
  const onData = (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 6 && pending.length >= 6 + (pending[1] & 0x7f)) {
      const opcode = pending[0] & 0x0f;
      const n = pending[1] & 0x7f;
      const mask = pending.subarray(2, 6);
      const payload = Buffer.from(pending.subarray(6, 6 + n).map((b, i) => b ^ mask[i % 4]));
      pending = pending.subarray(6 + n);
      if (opcode === 8) {
        closeReceived = true;
        socket.removeListener('data', onData);
        process.nextTick(() => socket.resume());
        close();
        return;
      }
      if (opcode === 1 && payload.toString() === 'bye') close();
      else sendFrame(opcode, payload);
    }
  };
  socket.on('data', onData);
  socket.on('end', () => {
    stats.ends++;
    socket.end();
  });
  socket.on('close', () => {
    stats.closes++;
    clearTimeout(closeTimer);
  });
  socket.on('error', () => socket.destroy());
});
server.listen(3000);
`;

/** A client's WebSocket frame (RFC 6455): masked, with a payload under 126 bytes. */
function wsClientFrame(opcode, payload) {
  const mask = [0x37, 0xfa, 0x21, 0x3d];
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, ...mask]),
    Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
}

const WS_CLOSE_1000 = Buffer.from([0x88, 0x02, 0x03, 0xe8]);

// listen() called in each of its forms; a second server listens for real.
function listenVariant(call) {
  return `
const http = require('http');
const net = require('net');
let cb = false;
let other = null;
const server = http.createServer((req, res) => {
  res.end(JSON.stringify({ address: server.address(), listening: server.listening, cb, other }));
});
const done = () => {
  cb = true;
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    other = s.address();
    s.close();
  });
};
${call}
`;
}

// ---------------------------------------------------------------------------
// The codec against docs/protocol-vectors.json
// ---------------------------------------------------------------------------

describe('frame codec', () => {
  const vectors = JSON.parse(fs.readFileSync(VECTORS, 'utf8'));

  it("the test's own codec round-trips every vector", () => {
    for (const v of vectors.vectors) {
      const buf = Buffer.from(v.hex, 'hex');
      const f = readFrame(buf);
      assert.ok(f, v.name);
      assert.equal(f.name, v.type, v.name);
      assert.equal(f.rid, v.request_id, v.name);
      assert.equal(f.size, buf.length, v.name);
      assert.deepEqual(frame(T[v.type], v.request_id, encodeFields(v.type, v)), buf, v.name);
      const fields = decodeFields(v.type, f.payload);
      for (const [field, kind] of SCHEMA[v.type]) {
        const got = fields[field];
        if (kind === 'bytes' || kind === 'rest') {
          if (v[field + '_hex'] !== undefined) assert.equal(got.toString('hex'), v[field + '_hex'], v.name);
          else assert.equal(got.toString('utf8'), v[field], v.name);
        } else if (kind === 'pairs') {
          assert.deepEqual(got.map(([n, x]) => [n.toString('utf8'), x.toString('utf8')]), v[field], v.name);
        } else {
          assert.equal(got, v[field], v.name);
        }
      }
      for (let i = 0; i < buf.length; i++) assert.equal(readFrame(buf.subarray(0, i)), null, `${v.name} prefix ${i}`);
    }
  });

  it("the test's own codec refuses every invalid vector", () => {
    for (const v of vectors.invalid) {
      const buf = Buffer.from(v.hex, 'hex');
      let outcome;
      try {
        const f = readFrame(buf);
        if (f === null) outcome = 'incomplete';
        else {
          decodeFields(f.name, f.payload);
          outcome = 'accepted';
        }
      } catch (e) {
        outcome = e instanceof Malformed ? 'malformed' : e.kind;
      }
      assert.equal(outcome, v.error, v.name);
    }
  });

  it("the loader's codec decodes and encodes the vectors it handles", () => {
    for (const v of vectors.vectors) {
      const buf = Buffer.from(v.hex, 'hex');
      const [type, rid, payload, size] = loader.parseFrame(buf);
      assert.equal(type, T[v.type], v.name);
      assert.equal(rid, v.request_id, v.name);
      assert.equal(size, buf.length, v.name);
      for (let i = 0; i < buf.length; i++) assert.equal(loader.parseFrame(buf.subarray(0, i)), null, `${v.name} prefix ${i}`);
      switch (v.type) {
        case 'REQUEST': {
          const r = loader.decodeRequest(payload);
          assert.equal(r.flags, v.flags, v.name);
          assert.deepEqual(r.env, v.env, v.name);
          break;
        }
        case 'RESPONSE': {
          const raw = [];
          for (const [n, x] of v.headers) raw.push(n, x);
          assert.deepEqual(loader.encodeResponse(rid, v.status, v.reason, raw), buf, v.name);
          break;
        }
        case 'ERROR':
          assert.deepEqual(loader.decodeError(payload), { code: v.code, message: v.message }, v.name);
          assert.deepEqual(loader.encodeError(v.code, v.message, rid), buf, v.name);
          break;
        case 'READY':
          if (rid === 0) assert.deepEqual(loader.encodeReady(v.concurrency), buf, v.name);
          break;
        case 'SPAWN_ERROR':
          assert.deepEqual(loader.encodeSpawnError(v.summary, v.details), buf, v.name);
          break;
        case 'READ_BODY':
          assert.deepEqual(loader.encodeFrame(T.READ_BODY, rid, u32(v.max)), buf, v.name);
          break;
        case 'BODY': {
          const data = v.data_hex !== undefined ? Buffer.from(v.data_hex, 'hex') : Buffer.from(v.data);
          assert.deepEqual(Buffer.concat([loader.frameHeader(T.BODY, rid, data.length), data]), buf, v.name);
          break;
        }
        case 'END': case 'PONG': case 'OOB_DONE':
          assert.deepEqual(loader.frameHeader(T[v.type], rid, 0), buf, v.name);
          break;
        default:
          break;
      }
    }
  });

  it("the loader's codec refuses the invalid vectors it could receive", () => {
    for (const v of vectors.invalid) {
      const buf = Buffer.from(v.hex, 'hex');
      let outcome;
      try {
        const f = loader.parseFrame(buf);
        if (f === null) outcome = 'incomplete';
        else if (f[0] === T.REQUEST) { loader.decodeRequest(f[2]); outcome = 'accepted'; }
        else if (f[0] === T.ERROR) { loader.decodeError(f[2]); outcome = 'accepted'; }
        else outcome = 'not decoded by the loader';
      } catch (e) {
        assert.ok(e instanceof loader.ProtocolError, `${v.name}: ${e}`);
        outcome = e.kind;
      }
      if (outcome === 'not decoded by the loader') continue; // HELLO, STATUS: refused as unexpected
      assert.equal(outcome, v.error, v.name);
    }
  });

  it('header variables become header names, paths are re-encoded', () => {
    assert.equal(loader.headerName('HTTP_X_FORWARDED_HOST'), 'X-Forwarded-Host');
    assert.equal(loader.headerName('HTTP_ACCEPT'), 'Accept');
    assert.equal(loader.headerName('HTTP_X__BAD'), null);
    assert.equal(loader.headerName('HTTP_X.BAD'), null);
    assert.equal(loader.encodePath('/a b/%/é'), '/a%20b/%25/%E9');
    const r = loader.buildRequest(3, [['REQUEST_METHOD', 'PUT'], ['SCRIPT_NAME', '/app'],
      ['PATH_INFO', '/x y'], ['QUERY_STRING', 'q=1'], ['CONTENT_LENGTH', '5'],
      ['HTTP_CONNECTION', 'keep-alive'], ['HTTP_X_DUP', '1'], ['HTTP_X_DUP', '2'],
      ['HTTP_X_FORWARDED_PROTO', 'http'], ['REMOTE_ADDR', '192.0.2.1']]);
    assert.equal(r.method, 'PUT');
    assert.equal(r.target, '/app/x%20y?q=1');
    assert.equal(r.https, true);
    assert.equal(r.contentLength, 5);
    assert.deepEqual(r.headers['X-Dup'], ['1', '2']);
    assert.equal(r.headers['X-Forwarded-Proto'], 'https');
    assert.equal(r.headers['X-Forwarded-For'], '192.0.2.1');
    assert.equal(r.headers.Connection, 'close');
    assert.equal(r.headers.Host, 'localhost');
    assert.throws(() => loader.buildRequest(0, [['CONTENT_LENGTH', '12x']]));
    // An upgrade request (flag 0x04) keeps the client's Upgrade and Connection.
    const u = loader.buildRequest(4, [['HTTP_UPGRADE', 'websocket'],
      ['HTTP_CONNECTION', 'keep-alive, Upgrade'], ['HTTP_KEEP_ALIVE', '5']]);
    assert.equal(u.headers.Upgrade, 'websocket');
    assert.equal(u.headers.Connection, 'keep-alive, Upgrade');
    assert.equal(u.headers['Keep-Alive'], undefined);
  });
});

describe('the in-memory connection', () => {
  const { MemorySocket } = loader;

  /** A pair whose end `b` reads nothing: a write of 200 KiB on `a` waits. */
  function stuckWrite() {
    const [a, b] = MemorySocket.pair();
    b.pause();
    a.on('error', () => {});
    const written = new Promise((resolve) => a.write(Buffer.alloc(200 * 1024), resolve));
    return { a, b, written };
  }

  // Regression: either destroy() left the write waiting for ever, and with
  // it the end of `a` (its 'finish' and 'close').
  it('a write the peer has not taken completes when either end is destroyed, as on a net.Socket', async () => {
    let { a, b, written } = stuckWrite();
    const closed = new Promise((resolve) => a.on('close', resolve));
    await sleep(20);
    b.destroy();
    await withTimeout(written, 1000, 'the write callback after the peer was destroyed');
    const again = await new Promise((resolve) => a.write('more', resolve));
    assert.equal(again && again.code, 'EPIPE', 'the next write fails, as after a reset');
    await withTimeout(closed, 1000, "'close'");

    ({ a, b, written } = stuckWrite());
    await sleep(20);
    a.destroy();
    await withTimeout(written, 1000, 'the write callback after the writer was destroyed');
  });
});

// ---------------------------------------------------------------------------
// A plain http.createServer(...).listen(3000) app
// ---------------------------------------------------------------------------

describe('a plain http.createServer app', () => {
  let app;
  before(async () => {
    app = await LoaderProcess.start({ 'app.js': KITCHEN_SINK });
    await app.ready();
  });
  after(() => app.stop());

  it('serves hello world', async () => {
    const r = await app.get('/');
    assert.equal(r.error, null);
    assert.equal(r.status, 200);
    assert.equal(r.reason, 'OK');
    assert.equal(r.text, 'Hello world\n');
    assert.equal(r.header('Content-Type'), 'text/plain');
    assert.equal(r.header('Content-Length'), '12');
    assert.equal(r.header('Connection'), undefined, 'hop-by-hop headers are dropped');
  });

  it('gives the app the request as Node would see it', async () => {
    const r = await app.get('/info?x=1&y=%20', [['HTTP_X_DUP', 'a'], ['HTTP_X_DUP', 'b'],
      ['HTTP_X_FORWARDED_FOR', '198.51.100.1'], ['HTTP_CONNECTION', 'keep-alive'],
      ['HTTP_COOKIE', 'k=v']]);
    assert.equal(r.status, 200);
    const info = JSON.parse(r.text);
    assert.equal(info.method, 'GET');
    assert.equal(info.url, '/info?x=1&y=%20');
    assert.equal(info.httpVersion, '1.1');
    assert.equal(info.headers.host, 'example.test');
    assert.equal(info.headers.accept, '*/*');
    assert.equal(info.headers['x-dup'], 'a, b');
    assert.equal(info.headers.cookie, 'k=v');
    assert.equal(info.headers['x-forwarded-for'], '198.51.100.1, 192.0.2.7');
    assert.equal(info.headers['x-forwarded-proto'], 'http');
    assert.equal(info.headers.connection, 'close');
    assert.ok(info.rawHeaders.includes('X-Dup'), 'header names are title-cased');
    assert.equal(info.remoteAddress, '192.0.2.7');
    assert.equal(info.remotePort, 51234);
    assert.equal(info.encrypted, false);
    assert.equal(info.passengerEnv, 'example.test');
    assert.equal(info.listening, true);
    assert.equal(info.listeningEvent, true);
    assert.equal(info.listenCallback, true);
    assert.deepEqual(info.address, { address: '::', family: 'IPv6', port: 3000 });
    assert.equal(info.mainIsApp, true, 'require.main === module in the startup file');
    assert.equal(info.argv1, path.join(app.appRoot, 'app.js'));
    assert.equal(fs.realpathSync(info.cwd), fs.realpathSync(app.appRoot));
    assert.equal(info.inPassenger, '1');
  });

  it('marks HTTPS requests (flag 0x02)', async () => {
    const conn = await app.connect();
    const r = await conn.request(9, cgiEnv('GET', '/info', [['HTTP_X_FORWARDED_PROTO', 'http']]), { flags: 2 });
    conn.sock.destroy();
    const info = JSON.parse(r.text);
    assert.equal(info.headers['x-forwarded-proto'], 'https');
    assert.equal(info.encrypted, true);
  });

  it('builds the path from SCRIPT_NAME and PATH_INFO without REQUEST_URI', async () => {
    const conn = await app.connect();
    const env = cgiEnv('GET', '/info').filter(([n]) => n !== 'REQUEST_URI' && n !== 'SCRIPT_NAME' && n !== 'PATH_INFO' && n !== 'QUERY_STRING');
    env.push(['SCRIPT_NAME', '/sub'], ['PATH_INFO', '/a b'], ['QUERY_STRING', 'q=1']);
    const r = await conn.request(1, env);
    conn.sock.destroy();
    assert.equal(JSON.parse(r.text).url, '/sub/a%20b?q=1');
  });

  it('carries many requests in sequence on one connection', async () => {
    const conn = await app.connect();
    for (let i = 1; i <= 20; i++) {
      const r = await conn.request(i, cgiEnv('GET', i % 2 ? '/' : '/utf8'));
      assert.equal(r.status, 200);
      assert.equal(r.text, i % 2 ? 'Hello world\n' : 'héllo wörld ✓');
    }
    conn.sock.destroy();
  });

  it('answers PING with PONG, also between requests', async () => {
    const conn = await app.connect();
    conn.send(frame(T.PING, 0));
    const f = await conn.next();
    assert.equal(f.type, T.PONG);
    const r = await conn.request(3, cgiEnv('GET', '/'));
    assert.equal(r.status, 200);
    conn.sock.destroy();
  });

  it('pulls a POST body larger than 64 KiB with READ_BODY', async () => {
    const body = crypto.randomBytes(300 * 1024 + 17);
    const r = await app.get('/upload', [['CONTENT_LENGTH', String(body.length)], ['CONTENT_TYPE', 'application/octet-stream']],
      { method: 'POST', body });
    assert.equal(r.error, null);
    const got = JSON.parse(r.text);
    assert.equal(got.length, body.length);
    assert.equal(got.sha256, sha256(body));
    assert.equal(got.cl, String(body.length));
    assert.ok(r.readBodies >= 4, `the rest of the body was pulled (${r.readBodies} READ_BODY)`);
  });

  it('takes a small body sent whole in the prefix', async () => {
    const r = await app.get('/upload', [['CONTENT_LENGTH', '5']], { method: 'POST', body: 'hello' });
    assert.deepEqual(JSON.parse(r.text), { length: 5, sha256: sha256(Buffer.from('hello')), te: null, cl: '5' });
    assert.equal(r.readBodies, 0);
  });

  it('takes a chunked upload (no Content-Length), in small pieces', async () => {
    const body = crypto.randomBytes(150 * 1024);
    const r = await app.get('/upload', [['HTTP_TRANSFER_ENCODING', 'chunked']],
      { method: 'POST', body, prefix: 1000, chunk: 7000 });
    const got = JSON.parse(r.text);
    assert.equal(got.length, body.length);
    assert.equal(got.sha256, sha256(body));
    assert.equal(got.te, 'chunked');
  });

  it('streams an echo of the body while it is being pulled', async () => {
    const body = crypto.randomBytes(512 * 1024);
    const r = await app.get('/echo', [['CONTENT_LENGTH', String(body.length)]], { method: 'POST', body });
    assert.equal(r.error, null);
    assert.equal(r.body.length, body.length);
    assert.ok(r.body.equals(body));
  });

  it('stops pulling when the app answers without reading the body; the connection goes on', async () => {
    const conn = await app.connect();
    const body = crypto.randomBytes(2 * 1024 * 1024);
    const r = await conn.request(1, cgiEnv('POST', '/early', [['CONTENT_LENGTH', String(body.length)]]), { body });
    assert.equal(r.status, 200);
    assert.equal(r.text, 'answered before reading the body');
    assert.ok(r.readBodies < 16, `pulled ${r.readBodies} chunks of an unread body`);
    const r2 = await conn.request(2, cgiEnv('GET', '/'));
    assert.equal(r2.text, 'Hello world\n');
    conn.sock.destroy();
  });

  it('answers READ_BODY that crosses the response end, then takes the next request', async () => {
    // The agent answers the READ_BODY late, after the app has answered.
    const conn = await app.connect();
    const body = crypto.randomBytes(200 * 1024);
    const r = await conn.request(1, cgiEnv('POST', '/early', [['CONTENT_LENGTH', String(body.length)]]),
      { body, onReadBody: () => sleep(50) });
    assert.equal(r.status, 200);
    // The loader must have taken our late BODY without mistaking it.
    const r2 = await conn.request(2, cgiEnv('GET', '/'));
    assert.equal(r2.text, 'Hello world\n');
    conn.sock.destroy();
  });

  it('refuses a body shorter than its Content-Length', async () => {
    const r = await app.get('/upload', [['CONTENT_LENGTH', '10']], { method: 'POST', body: 'short' });
    assert.equal(r.status, null);
    assert.equal(r.error.code, 400);
  });

  it('streams a response: each write is a BODY frame sent at once', async () => {
    const r = await app.get('/stream');
    assert.equal(r.error, null);
    assert.equal(r.header('Content-Type'), 'text/event-stream');
    assert.equal(r.header('Transfer-Encoding'), undefined);
    assert.deepEqual(r.chunks.map((c) => c.data.toString()), ['data: one\n\n', 'data: two\n\n', 'data: three\n\n']);
    assert.ok(r.chunks[0].time <= r.responseTime + 100, 'the first event comes with the head');
    assert.ok(r.chunks[1].time - r.chunks[0].time >= 100, 'the second event comes later');
    assert.ok(r.endTime - r.chunks[0].time >= 250, 'END comes after the last event');
  });

  it('keeps repeated headers, the reason phrase and header case', async () => {
    const r = await app.get('/cookies');
    assert.equal(r.status, 201);
    assert.equal(r.reason, 'Very Created');
    assert.deepEqual(r.headerAll('Set-Cookie'), ['a=1; Path=/', 'b=2; HttpOnly']);
    assert.deepEqual(r.headerAll('X-Multi'), ['x', 'y']);
    assert.ok(r.headers.some(([n, v]) => n === 'X-Case' && v === 'MiXeD'));
    assert.equal(r.header('!~Request-OOB-Work'), '1', 'the OOB request header reaches the agent');
  });

  it('splits a large response into BODY frames of at most 64 KiB', async () => {
    const r = await app.get('/big');
    assert.equal(r.body.length, 200 * 1024);
    for (const c of r.chunks) assert.ok(c.data.length <= 65536 && c.data.length > 0);
    for (let i = 0; i < r.body.length; i += 4099) assert.equal(r.body[i], (i * 7) & 0xff);
  });

  it('passes back-pressure from a slow agent on to the app', async () => {
    const conn = await app.connect();
    conn.sock.pause(); // the agent does not read for a while
    conn.send(requestFrame(1, cgiEnv('GET', '/flood')));
    await sleep(300);
    conn.sock.resume();
    let total = 0;
    for (;;) {
      const f = await conn.next();
      if (f.type === T.BODY) total += f.fields.data.length;
      if (f.type === T.END || f.type === T.ERROR) break;
    }
    conn.sock.destroy();
    assert.equal(total, 8 * 1024 * 1024);
    assert.deepEqual(JSON.parse((await app.get('/flood-stats')).text), { pushedBack: true });
  });

  it('sends no body for HEAD and 204', async () => {
    const head = await app.get('/', [], { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.header('Content-Type'), 'text/plain');
    assert.equal(head.chunks.length, 0);
    const none = await app.get('/no-content');
    assert.equal(none.status, 204);
    assert.equal(none.chunks.length, 0);
  });

  it('serves concurrent requests on several connections concurrently', async () => {
    const conns = await Promise.all([app.connect(), app.connect(), app.connect()]);
    const t0 = Date.now();
    const rs = await Promise.all(conns.map((c, i) => c.request(i + 1, cgiEnv('GET', '/slow'))));
    const elapsed = Date.now() - t0;
    for (const r of rs) assert.equal(r.text, 'slow done');
    assert.ok(elapsed < 750, `three 400 ms requests took ${elapsed} ms`);
    for (const c of conns) c.sock.destroy();
  });

  it('answers ERROR 502 when the app drops the connection before answering', async () => {
    const r = await app.get('/destroy-before');
    assert.equal(r.status, null);
    assert.equal(r.error.code, 502);
  });

  it('answers ERROR after RESPONSE when the app drops the connection mid-response', async () => {
    const conn = await app.connect();
    const r = await conn.request(1, cgiEnv('GET', '/destroy-after'));
    assert.equal(r.status, 200);
    assert.equal(r.text, 'partial');
    assert.ok(r.error, 'ERROR cuts the response short');
    const r2 = await conn.request(2, cgiEnv('GET', '/'));
    assert.equal(r2.text, 'Hello world\n', 'the connection goes on');
    conn.sock.destroy();
  });

  it('tells the app when the agent drops a connection mid-request', async () => {
    const conn = await app.connect();
    conn.send(requestFrame(1, cgiEnv('GET', '/hang')));
    await sleep(100);
    conn.sock.destroy();
    await sleep(100);
    const r = await app.get('/aborted');
    assert.ok(Number(r.text) >= 1, `the app saw ${r.text} aborted requests`);
  });

  // Regression: the app's write waiting for the in-memory connection never
  // completed once the loader had destroyed its end, so its socket never
  // closed.
  it('tells the app when the agent drops a connection while its response is held back', async () => {
    const aborted = async () => Number((await app.get('/aborted')).text);
    const before = await aborted();
    const conn = await app.connect();
    conn.sock.pause(); // the agent stops reading: the app's writes back up
    conn.send(requestFrame(1, cgiEnv('GET', '/flood-forever')));
    await sleep(300);
    conn.sock.destroy();
    const deadline = Date.now() + 2000;
    while (await aborted() === before && Date.now() < deadline) await sleep(20);
    assert.equal(await aborted(), before + 1, "the app's response saw 'close'");
  });

  it('closes the connection on garbage and keeps serving', async () => {
    const conn = await app.connect();
    conn.send(Buffer.from('GET / HTTP/1.0\r\nHost: x\r\n\r\n'));
    const f = await conn.next();
    assert.equal(f.type, T.ERROR);
    assert.equal(f.fields.code, 400);
    assert.equal(await conn.next(), null, 'then the connection is closed');
    const r = await app.get('/');
    assert.equal(r.text, 'Hello world\n');
  });

  it('answers an unsupported version with ERROR code 1', async () => {
    const conn = await app.connect();
    const bad = frame(T.PING, 0);
    bad[2] = 2;
    conn.send(bad);
    const f = await conn.next();
    assert.equal(f.type, T.ERROR);
    assert.equal(f.fields.code, 1);
    assert.equal(await conn.next(), null);
  });

  it('closes the connection on frames out of place', async () => {
    for (const bad of [frame(T.BODY, 5, Buffer.from('x')), frame(T.HELLO, 0, Buffer.alloc(13)),
      requestFrame(1, [], 8), requestFrame(1, [], 5), frame(T.END, 1)]) {
      const conn = await app.connect();
      conn.send(bad);
      const f = await conn.next();
      assert.equal(f && f.type, T.ERROR, `answer to ${bad.toString('hex')}`);
      assert.equal(await conn.next(), null);
    }
    const conn = await app.connect();
    // A frame of another request in the middle of a request.
    conn.send(Buffer.concat([requestFrame(1, cgiEnv('POST', '/upload'), 1), frame(T.BODY, 2, Buffer.from('x'))]));
    const f = await conn.next();
    assert.equal(f.type, T.ERROR);
    assert.equal(await conn.next(), null);
    assert.equal((await app.get('/')).status, 200);
  });

  it('survives a frame split into single bytes', async () => {
    const conn = await app.connect();
    const bytes = Buffer.concat([requestFrame(1, cgiEnv('POST', '/upload', [['CONTENT_LENGTH', '3']]), 1),
      frame(T.BODY, 1, Buffer.from('abc')), frame(T.END, 1)]);
    for (let i = 0; i < bytes.length; i++) {
      conn.sock.write(bytes.subarray(i, i + 1));
      if (i % 16 === 0) await sleep(1);
    }
    const f = await conn.next();
    assert.equal(f.type, T.RESPONSE);
    const b = await conn.next();
    assert.equal(JSON.parse(b.fields.data.toString()).sha256, sha256(Buffer.from('abc')));
    conn.sock.destroy();
  });

  it('runs oob_work handlers on OOB_WORK and answers OOB_DONE', async () => {
    const conn = await app.connect();
    conn.send(frame(T.OOB_WORK, 0));
    const t0 = Date.now();
    const f = await conn.next();
    assert.equal(f.type, T.OOB_DONE);
    assert.ok(Date.now() - t0 >= 25, 'OOB_DONE waits for the async handler');
    const r = await conn.request(1, cgiEnv('GET', '/oob'));
    assert.equal(r.text, '1');
    conn.sock.destroy();
  });
});

// ---------------------------------------------------------------------------
// Upgraded connections (WebSockets)
// ---------------------------------------------------------------------------

describe('upgraded connections (WebSockets)', () => {
  let app;
  before(async () => {
    app = await LoaderProcess.start({ 'app.js': WEBSOCKET_APP });
    await app.ready();
  });
  after(() => app.stop());

  const stats = async () => JSON.parse((await app.get('/stats')).text);

  /** REQUEST with flag 0x04 (and `then`, sent in the same write): the RESPONSE frame. */
  async function upgrade(conn, uri, then = Buffer.alloc(0)) {
    conn.send(Buffer.concat([requestFrame(1, wsEnv(uri), 4), then]));
    const f = await conn.next();
    assert.equal(f && f.name, 'RESPONSE', `a RESPONSE to the upgrade request, got ${f && f.name}`);
    return { status: f.fields.status, reason: text(f.fields.reason), headers: pairsText(f.fields.headers) };
  }

  it("a WebSocket handshake: the app's 'upgrade' handler answers, RESPONSE 101 comes back", async () => {
    const conn = await app.connect();
    const r = await upgrade(conn, '/echo?room=1');
    assert.equal(r.status, 101);
    assert.equal(r.reason, 'Switching Protocols');
    assert.deepEqual(r.headers, [['Upgrade', 'websocket'], ['Connection', 'Upgrade'],
      ['Sec-WebSocket-Accept', wsAccept(WS_KEY)]], 'the headers of the 101, hop-by-hop ones too, in order');
    assert.equal(wsAccept(WS_KEY), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=', 'RFC 6455 example');
    const hello = await conn.tunnelRead(1, { bytes: WS_HELLO.length });
    assert.deepEqual(hello.data, WS_HELLO, 'what the app wrote right after the 101 comes as BODY');
    conn.sock.destroy();
    const seen = (await stats()).seen;
    assert.deepEqual(seen, { upgrade: 'websocket', connection: 'Upgrade', url: '/echo?room=1', head: 0 });
  });

  it('bytes round-trip both ways; END each way; then the connection is closed', async () => {
    const conn = await app.connect();
    const before = await stats();
    assert.equal((await upgrade(conn, '/echo')).status, 101);
    assert.deepEqual((await conn.tunnelRead(1, { bytes: WS_HELLO.length })).data, WS_HELLO);
    for (const word of ['ping', 'a little more', '\x00\xff\r\n binary']) {
      const data = Buffer.from(word, 'latin1');
      conn.send(frame(T.BODY, 1, data));
      assert.deepEqual((await conn.tunnelRead(1, { bytes: data.length })).data, data);
    }
    conn.send(frame(T.END, 1));
    // The app sees 'end', can still write (a half close), then ends too.
    const rest = await conn.tunnelRead(1);
    assert.equal(rest.data.toString(), '[end seen]');
    assert.equal(rest.end, true, "the app's END reaches the agent");
    assert.equal(await conn.next(), null, 'then the connection is closed');
    const after = await stats();
    assert.equal(after.ends, before.ends + 1, "the app saw 'end'");
    assert.equal(after.closes, before.closes + 1, "the app's socket closed");
  });

  it('1 MiB each way arrives intact, with back-pressure both ways', async () => {
    const conn = await app.connect();
    assert.equal((await upgrade(conn, '/echo')).status, 101);
    assert.deepEqual((await conn.tunnelRead(1, { bytes: WS_HELLO.length })).data, WS_HELLO);
    const before = await stats();
    const data = crypto.randomBytes(1 << 20);
    conn.sock.pause(); // the agent does not read for a while: the echo backs up
    conn.send(Buffer.concat([bodyFrames(1, data), frame(T.END, 1)]));
    await sleep(300);
    conn.sock.resume();
    const back = await conn.tunnelRead(1);
    assert.equal(back.end, true);
    for (const c of back.chunks) assert.ok(c.length > 0 && c.length <= 65536, `a BODY of ${c.length} bytes`);
    assert.equal(back.data.length, data.length + '[end seen]'.length);
    assert.equal(sha256(back.data.subarray(0, data.length)), sha256(data));
    assert.equal(back.data.subarray(data.length).toString(), '[end seen]');
    assert.equal(await conn.next(), null);
    assert.ok((await stats()).pushedBack > before.pushedBack, "the app's socket.write() returned false");
  });

  it('bytes sent right after the REQUEST, before the 101 was read, are not lost', async () => {
    const conn = await app.connect();
    const early = Buffer.concat([Buffer.from('first bytes'), crypto.randomBytes(200 * 1024)]);
    const r = await upgrade(conn, '/echo', Buffer.concat([bodyFrames(1, early), frame(T.END, 1)]));
    assert.equal(r.status, 101);
    const back = await conn.tunnelRead(1);
    assert.equal(back.end, true);
    assert.deepEqual(back.data, Buffer.concat([WS_HELLO, early, Buffer.from('[end seen]')]));
    assert.equal(await conn.next(), null);
  });

  it('the app closing first: END from the loader; what the agent still sends reaches the app', async () => {
    const conn = await app.connect();
    assert.equal((await upgrade(conn, '/close-first')).status, 101);
    const first = await conn.tunnelRead(1);
    assert.deepEqual(first.data, Buffer.concat([WS_HELLO, Buffer.from('bye')]));
    assert.equal(first.end, true, 'END after the app ended its side');
    conn.send(Buffer.concat([frame(T.BODY, 1, Buffer.from('late words')), frame(T.END, 1)]));
    assert.equal(await conn.next(), null, 'the connection is closed once both sides ended');
    assert.equal((await stats()).afterOwnEnd, 'late words');
  });

  it('the app destroying its socket: END, and the connection is closed', async () => {
    const conn = await app.connect();
    assert.equal((await upgrade(conn, '/destroy')).status, 101);
    const got = await conn.tunnelRead(1);
    assert.deepEqual(got.data, Buffer.concat([WS_HELLO, Buffer.from('going away')]));
    assert.equal(got.end, true);
    assert.equal(await conn.next(), null, 'closed without waiting for the END of the agent');
  });

  /** Wait until the app has seen `n` more of its upgraded sockets close. */
  async function appClosed(before, n = 1) {
    const deadline = Date.now() + 2000;
    while ((await stats()).closes < before.closes + n && Date.now() < deadline) await sleep(20);
    assert.equal((await stats()).closes, before.closes + n);
  }

  it("ERROR from the agent ends the tunnel: the app's socket closes", async () => {
    const conn = await app.connect();
    const before = await stats();
    assert.equal((await upgrade(conn, '/echo')).status, 101);
    conn.send(encodeErrorFrame(1, 502, 'the client went away'));
    assert.equal((await conn.tunnelRead(1)).closed, true);
    await appClosed(before);
  });

  it("the agent closing the connection ends the tunnel: the app's socket closes", async () => {
    const conn = await app.connect();
    const before = await stats();
    assert.equal((await upgrade(conn, '/echo')).status, 101);
    conn.sock.destroy();
    await appClosed(before);
  });

  it('an upgrade the app declines gets its ordinary response; the connection goes on', async () => {
    const conn = await app.connect();
    const r = await conn.request(1, wsEnv('/decline'), { flags: 4 });
    assert.equal(r.status, 403);
    assert.equal(r.text, 'no thanks\n');
    const r2 = await conn.request(2, cgiEnv('GET', '/stats'));
    assert.equal(r2.status, 200);
    conn.sock.destroy();
  });

  it('a declined upgrade after the agent started the tunnel: the connection is closed after END', async () => {
    const conn = await app.connect();
    const r = await upgrade(conn, '/decline', frame(T.BODY, 1, Buffer.from('too early')));
    assert.equal(r.status, 403);
    const rest = await conn.tunnelRead(1);
    assert.equal(rest.data.toString(), 'no thanks\n');
    assert.equal(rest.end, true);
    assert.equal(await conn.next(), null);
  });

  it('a 101 to a request without flag 0x04 is ERROR 502', async () => {
    const r = await app.get('/switch-anyway');
    assert.equal(r.status, null);
    assert.equal(r.error.code, 502);
  });

  it('a CONNECT request is ERROR 502, whether or not the app answers it', async () => {
    for (const target of ['example.test:443', '/not-an-authority']) {
      const r = await app.get(target, [], { method: 'CONNECT', timeout: 3000 });
      assert.equal(r.status, null, target);
      assert.equal(r.error.code, 502, target);
    }
  });

  it('SIGTERM closes open tunnels and the process exits', async () => {
    const own = await LoaderProcess.start({ 'app.js': WEBSOCKET_APP });
    try {
      await own.ready();
      const conn = await own.connect();
      assert.equal((await upgrade(conn, '/echo')).status, 101);
      own.child.kill('SIGTERM');
      const rest = await conn.tunnelRead(1);
      assert.equal(rest.closed, true);
      assert.equal((await withTimeout(own.exited, 5000, 'exit')).code, 0);
    } finally {
      await own.stop();
    }
  });

  it('SIGTERM after the app closed its server still closes open tunnels and exits', async () => {
    const own = await LoaderProcess.start({ 'app.js': WEBSOCKET_APP });
    try {
      await own.ready();
      const conn = await own.connect();
      assert.equal((await upgrade(conn, '/echo')).status, 101);
      assert.equal((await own.get('/close-server')).text, 'closing');
      conn.send(frame(T.BODY, 1, Buffer.from('still open')));
      assert.equal((await conn.tunnelRead(1, { bytes: WS_HELLO.length + 10 })).data.toString('latin1'),
        WS_HELLO.toString('latin1') + 'still open', 'a closed server keeps its WebSockets, as in Node');
      own.child.kill('SIGTERM');
      assert.equal((await conn.tunnelRead(1)).closed, true);
      assert.equal((await withTimeout(own.exited, 5000, 'exit')).code, 0);
    } finally {
      await own.stop();
    }
  });
});

// The closing handshake of the ws library through the loader (reported as
// a loader bug: a connection left open after ws had sent its close frame).
// ws ends its socket in the write callback of its close frame once the
// client's close frame is in, or when that frame comes if ws closed first;
// it does not end it after its own close frame alone, on a real socket
// either. The real ws, when it is installed (Debian's node-ws), goes through
// the same steps.
const WS_LIB = '/usr/share/nodejs/ws';

describe('the closing handshake, as the ws library drives the socket', () => {
  /** REQUEST with flag 0x04, answered with RESPONSE 101. */
  async function open(conn) {
    conn.send(requestFrame(1, wsEnv('/chat'), 4));
    const f = await conn.next();
    assert.equal(f && f.name, 'RESPONSE', `a RESPONSE to the upgrade request, got ${f && f.name}`);
    assert.equal(f.fields.status, 101);
  }

  /** Send a client frame; read `bytes` bytes of the tunnel back. */
  async function exchange(conn, opcode, payload, bytes) {
    conn.send(frame(T.BODY, 1, wsClientFrame(opcode, Buffer.from(payload))));
    return (await conn.tunnelRead(1, { bytes })).data;
  }

  /** The closing handshake started by the client, then by the app. With
   *  `counted`, the app's counters say what its sockets went through. */
  async function closingHandshakes(app, counted) {
    const stats = async () => JSON.parse((await app.get('/stats')).text);
    const before = counted ? await stats() : null;

    // The client closes first: the app's close frame, then its END at once.
    let conn = await app.connect();
    await open(conn);
    assert.equal((await exchange(conn, 1, 'hi', 4)).toString('latin1'), '\x81\x02hi');
    conn.send(frame(T.BODY, 1, wsClientFrame(8, Buffer.from([0x03, 0xe8]))));
    let back = await conn.tunnelRead(1, { timeout: 3000 });
    assert.deepEqual(back.data, WS_CLOSE_1000, 'the close frame comes back');
    assert.equal(back.end, true, "END once the app's close frame is written");
    conn.send(frame(T.END, 1)); // the client closed its connection
    assert.equal(await conn.next(3000), null, 'then the connection is closed');

    // The app closes first: its close frame, and no END until the client
    // answers with its own.
    conn = await app.connect();
    await open(conn);
    assert.deepEqual(await exchange(conn, 1, 'bye', 4), WS_CLOSE_1000);
    await assert.rejects(conn.next(300), /timed out/, 'ws waits for the close frame of the client');
    conn.send(frame(T.BODY, 1, wsClientFrame(8, Buffer.from([0x03, 0xe8]))));
    back = await conn.tunnelRead(1, { timeout: 3000 });
    assert.deepEqual(back, { chunks: [], end: true, error: null, closed: false, data: Buffer.alloc(0) });
    conn.send(frame(T.END, 1));
    assert.equal(await conn.next(3000), null, 'then the connection is closed');

    if (before !== null) {
      const deadline = Date.now() + 2000;
      while ((await stats()).closes < before.closes + 2 && Date.now() < deadline) await sleep(20);
      assert.deepEqual(await stats(), { closeCallbacks: before.closeCallbacks + 2,
        ends: before.ends + 2, closes: before.closes + 2, timedOut: 0 });
    }
  }

  it("a ws-style close: END as soon as the app ends its socket in the close frame's write callback", async () => {
    const app = await LoaderProcess.start({ 'app.js': WS_LIKE_APP });
    try {
      await app.ready();
      await closingHandshakes(app, true);
    } finally {
      await app.stop();
    }
  });

  it('the real ws library, when it is installed', { skip: !fs.existsSync(WS_LIB) && `no ${WS_LIB}` }, async () => {
    const app = await LoaderProcess.start({ 'app.js': `
const http = require('http');
const { WebSocketServer } = require('ws');
const server = http.createServer((req, res) => res.end('plain'));
new WebSocketServer({ server }).on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString() === 'bye') ws.close(1000);
    else ws.send(data, { binary: isBinary });
  });
});
server.listen(3000);
` });
    try {
      fs.mkdirSync(path.join(app.appRoot, 'node_modules'));
      fs.symlinkSync(WS_LIB, path.join(app.appRoot, 'node_modules', 'ws'));
      await app.ready();
      await closingHandshakes(app, false);
    } finally {
      await app.stop();
    }
  });
});

describe('an upgrade request to an app without an upgrade listener', () => {
  it('is an ordinary request, without Upgrade and Connection; the connection goes on', async () => {
    const app = await LoaderProcess.start({ 'app.js': `
require('http').createServer((req, res) => {
  res.end(JSON.stringify({ url: req.url, upgrade: req.headers.upgrade || null,
    connection: req.headers.connection, key: req.headers['sec-websocket-key'] }));
}).listen(3000);
` });
    try {
      await app.ready();
      const conn = await app.connect();
      const r = await conn.request(1, wsEnv('/chat'), { flags: 4 });
      assert.equal(r.status, 200);
      assert.deepEqual(JSON.parse(r.text), { url: '/chat', upgrade: null, connection: 'close', key: WS_KEY });
      const r2 = await conn.request(2, cgiEnv('GET', '/next'));
      assert.equal(JSON.parse(r2.text).url, '/next');
      conn.sock.destroy();
    } finally {
      await app.stop();
    }
  });
});

// ---------------------------------------------------------------------------
// listen() in all its forms
// ---------------------------------------------------------------------------

describe('listen()', () => {
  it('an Express-style app.listen(3000, callback)', async () => {
    const app = await LoaderProcess.start({ 'app.js': EXPRESS_LIKE });
    try {
      await app.ready();
      const r = await app.get('/');
      assert.equal(r.status, 200);
      assert.deepEqual(JSON.parse(r.text), { callbackFired: true, address: { address: '::', family: 'IPv6', port: 3000 } });
      const missing = await app.get('/nope');
      assert.equal(missing.status, 404);
      assert.match(app.stdout, /Example app listening on port 3000/);
    } finally {
      await app.stop();
    }
  });

  const variants = [
    ['a port number and a host', "server.listen(8080, '127.0.0.1', done);", { address: '127.0.0.1', family: 'IPv4', port: 8080 }],
    ['a port string', "server.listen('8081', done);", { address: '::', family: 'IPv6', port: 8081 }],
    ['a pipe path', "server.listen(require('path').join(__dirname, 'never-bound.sock'), done);", 'PIPE'],
    ['an options object', "server.listen({ port: 8082, host: '::1' }, done);", { address: '::1', family: 'IPv6', port: 8082 }],
    ['nothing but a callback', 'server.listen(done);', { address: '::', family: 'IPv6', port: 0 }],
    ["a 'listening' listener and no argument", "server.on('listening', done); server.listen();", { address: '::', family: 'IPv6', port: 0 }],
    ['later, after a timer', 'setTimeout(() => server.listen(3000, done), 100);', { address: '::', family: 'IPv6', port: 3000 }],
  ];
  for (const [what, call, address] of variants) {
    it(`with ${what}`, async () => {
      const app = await LoaderProcess.start({ 'app.js': listenVariant(call) });
      try {
        await app.ready();
        const r = await app.get('/');
        const got = JSON.parse(r.text);
        if (address === 'PIPE') {
          assert.equal(got.address, path.join(app.appRoot, 'never-bound.sock'));
          assert.ok(!fs.existsSync(path.join(app.appRoot, 'never-bound.sock')), 'nothing was bound');
        } else {
          assert.deepEqual(got.address, address);
        }
        assert.equal(got.listening, true);
        assert.equal(got.cb, true);
        assert.ok(got.other && got.other.port > 0, 'a later server listens for real');
      } finally {
        await app.stop();
      }
    });
  }

  it("with autoInstall off, only listen('passenger') is the app server", async () => {
    const app = await LoaderProcess.start({
      'app.js': `
const http = require('http');
PhusionPassenger.configure({ autoInstall: false });
const admin = http.createServer((req, res) => res.end('admin'));
admin.listen(0, '127.0.0.1');
const server = http.createServer((req, res) => res.end('main ' + admin.address().port));
server.listen('passenger');
`,
    });
    try {
      await app.ready();
      const r = await app.get('/');
      assert.match(r.text, /^main [1-9][0-9]*$/);
    } finally {
      await app.stop();
    }
  });

  it('an ES module startup file', async () => {
    const app = await LoaderProcess.start({
      'server.mjs': `
import http from 'node:http';
await new Promise((r) => setTimeout(r, 20));
http.createServer((req, res) => res.end('esm ' + req.url)).listen(3000);
`,
    }, { startupFile: 'server.mjs' });
    try {
      await app.ready();
      assert.equal((await app.get('/x')).text, 'esm /x');
    } finally {
      await app.stop();
    }
  });
});

// ---------------------------------------------------------------------------
// Start-up failures
// ---------------------------------------------------------------------------

describe('spawn errors', () => {
  async function spawnError(files, opts) {
    const app = await LoaderProcess.start(files, opts);
    try {
      const f = await withTimeout(app.readiness, 10000, 'SPAWN_ERROR');
      assert.ok(f, `a readiness frame (stderr: ${app.stderr})`);
      assert.equal(f.name, 'SPAWN_ERROR');
      const status = await withTimeout(app.exited, 10000, 'exit');
      assert.equal(status.code, 1);
      return { summary: text(f.fields.summary), details: f.fields.details.toString('utf8'), stderr: app.stderr };
    } finally {
      await app.stop();
    }
  }

  it('a startup file that throws: SPAWN_ERROR with the stack', async () => {
    const e = await spawnError({
      'app.js': "require('./lib/config');\n",
      'lib/config.js': "function check() { throw new TypeError('PORT is not configured'); }\ncheck();\n",
    });
    assert.equal(e.summary, 'TypeError: PORT is not configured');
    assert.match(e.details, /lib\/config\.js:1/);
    assert.match(e.details, /app\.js/);
    assert.doesNotMatch(e.details, /node-loader\.js/);
    assert.match(e.stderr, /PORT is not configured/);
  });

  it('a syntax error', async () => {
    const e = await spawnError({ 'app.js': 'const x = ;\n' });
    assert.match(e.summary, /^SyntaxError: /);
  });

  it('a missing module', async () => {
    const e = await spawnError({ 'app.js': "require('no-such-module-here');\n" });
    assert.match(e.summary, /Cannot find module 'no-such-module-here'/);
  });

  it('a missing startup file', async () => {
    const e = await spawnError({ 'other.js': '' });
    assert.match(e.summary, /app\.js does not exist/);
  });

  it('an error thrown asynchronously before listen()', async () => {
    const e = await spawnError({ 'app.js': "setTimeout(() => { throw new RangeError('late failure'); }, 20);\n" });
    assert.equal(e.summary, 'RangeError: late failure');
  });

  it('an unhandled rejection before listen()', async () => {
    const e = await spawnError({ 'app.js': "Promise.reject(new Error('no database'));\n" });
    assert.match(e.summary, /no database/);
  });

  it('an app that never listens and exits', async () => {
    const app = await LoaderProcess.start({ 'app.js': "console.log('nothing to do');\n" });
    try {
      const f = await withTimeout(app.readiness, 10000, 'SPAWN_ERROR');
      assert.equal(f.name, 'SPAWN_ERROR');
      assert.match(text(f.fields.summary), /exited .* before it called listen\(\)/);
    } finally {
      await app.stop();
    }
  });
});

// ---------------------------------------------------------------------------
// Lifetime
// ---------------------------------------------------------------------------

describe('lifetime', () => {
  it('SIGTERM: the request in progress finishes, then the process exits 0', async () => {
    const app = await LoaderProcess.start({ 'app.js': KITCHEN_SINK });
    try {
      await app.ready();
      const idle = await app.connect();
      const conn = await app.connect();
      const pending = conn.request(1, cgiEnv('GET', '/slow'));
      await sleep(100);
      app.child.kill('SIGTERM');
      const r = await pending;
      assert.equal(r.text, 'slow done');
      await withTimeout(idle.closed, 5000, 'the idle connection to close');
      const status = await withTimeout(app.exited, 5000, 'exit');
      assert.equal(status.code, 0);
      await assert.rejects(app.connect(), 'the listening socket is closed');
    } finally {
      await app.stop();
    }
  });

  it("SIGTERM with the app's own handler: server.close(cb) waits for the request, the app exits", async () => {
    const app = await LoaderProcess.start({
      'app.js': `
const http = require('http');
const server = http.createServer((req, res) => setTimeout(() => res.end('slow done'), 300));
server.listen(3000);
process.on('SIGTERM', () => server.close(() => {
  console.log('closed cleanly');
  process.exit(0);
}));
`,
    });
    try {
      await app.ready();
      const conn = await app.connect();
      const pending = conn.request(1, cgiEnv('GET', '/'));
      await sleep(100);
      app.child.kill('SIGTERM');
      const r = await pending;
      assert.equal(r.text, 'slow done', 'END arrived before the app exited');
      const status = await withTimeout(app.exited, 5000, 'exit');
      assert.equal(status.code, 0);
      assert.match(app.stdout, /closed cleanly/);
    } finally {
      await app.stop();
    }
  });

  it("SIGTERM while idle with the app's own handler: its server.close(cb) gets no error", async () => {
    const app = await LoaderProcess.start({
      'app.js': `
const http = require('http');
const server = http.createServer((req, res) => res.end('ok'));
server.listen(3000);
process.on('SIGTERM', () => server.close((err) => {
  console.log('close callback', err ? err.code : 'ok');
  process.exit(err ? 3 : 0);
}));
`,
    });
    try {
      await app.ready();
      assert.equal((await app.get('/')).text, 'ok');
      app.child.kill('SIGTERM');
      const status = await withTimeout(app.exited, 5000, 'exit');
      assert.match(app.stdout, /close callback ok/);
      assert.equal(status.code, 0);
    } finally {
      await app.stop();
    }
  });

  it('an app that closes its server stops taking requests and exits by itself', async () => {
    const app = await LoaderProcess.start({
      'app.js': `
const http = require('http');
const server = http.createServer((req, res) => {
  res.end('bye');
  server.close(() => console.log('server closed'));
});
server.listen(3000);
`,
    });
    try {
      await app.ready();
      const r = await app.get('/');
      assert.equal(r.text, 'bye');
      const status = await withTimeout(app.exited, 5000, 'exit');
      assert.equal(status.code, 0);
      assert.match(app.stdout, /server closed/);
    } finally {
      await app.stop();
    }
  });

  it('an uncaught exception in a handler kills the process, as in Node', async () => {
    const app = await LoaderProcess.start({
      'app.js': "require('http').createServer(() => { throw new Error('handler boom'); }).listen(3000);\n",
    });
    try {
      await app.ready();
      const conn = await app.connect();
      const r = await conn.request(1, cgiEnv('GET', '/'));
      assert.equal(r.closed, true);
      const status = await withTimeout(app.exited, 5000, 'exit');
      assert.notEqual(status.code, 0);
      assert.match(app.stderr, /handler boom/);
    } finally {
      await app.stop();
    }
  });

  it('exits when the agent that started it is gone', async () => {
    // sh plays the agent: the loader is its child; killing sh orphans it.
    const app = await LoaderProcess.start({ 'app.js': KITCHEN_SINK }, {
      argv: (loaderPath) => ['/bin/sh', ['-c', `"${process.execPath}" "${loaderPath}" & wait`]],
    });
    try {
      await app.ready();
      const pid = JSON.parse((await app.get('/info')).text).pid;
      app.child.kill('SIGKILL');
      const deadline = Date.now() + 8000;
      let alive = true;
      while (alive && Date.now() < deadline) {
        await sleep(100);
        try {
          process.kill(pid, 0);
        } catch (e) {
          alive = false;
        }
      }
      assert.equal(alive, false, 'the orphaned loader exited');
    } finally {
      await app.stop();
    }
  });
});
