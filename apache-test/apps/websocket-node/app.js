// A WebSocket echo server on Node's own 'upgrade' event, the way the `ws`
// library serves WebSockets, with nothing from npm. Messages come back as
// they were sent; the text message "bye" makes the server close first.
// An upgrade to /refuse is declined with an ordinary 403.
const crypto = require('crypto');
const http = require('http');

const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const OP_TEXT = 1;
const OP_CLOSE = 8;
const OP_PING = 9;
const OP_PONG = 10;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`plain ${req.url} upgrade=${req.headers.upgrade || ''} pid=${process.pid}`);
});

server.on('upgrade', (req, socket, head) => {
  if (req.url === '/refuse') {
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nrefused');
    return;
  }
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + WEBSOCKET_GUID)
    .digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    + `Sec-WebSocket-Accept: ${accept}\r\nX-App-Pid: ${process.pid}\r\n\r\n`);
  echo(socket, head);
});

/** A server frame (never masked). */
function frame(opcode, payload) {
  let header;
  if (payload.length < 126) {
    header = Buffer.from([0x80 | opcode, payload.length]);
  } else if (payload.length < 65536) {
    header = Buffer.alloc(4);
    header.writeUInt16BE(payload.length, 2);
    header[1] = 126;
  } else {
    header = Buffer.alloc(10);
    header.writeBigUInt64BE(BigInt(payload.length), 2);
    header[1] = 127;
  }
  header[0] = 0x80 | opcode;
  return Buffer.concat([header, payload]);
}

/** Parses the client's (masked) frames and answers each one. */
function echo(socket, head) {
  let pending = head;
  const onData = (data) => {
    pending = Buffer.concat([pending, data]);
    for (;;) {
      if (pending.length < 2) return;
      const opcode = pending[0] & 0x0f;
      let length = pending[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (pending.length < 4) return;
        length = pending.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (pending.length < 10) return;
        length = Number(pending.readBigUInt64BE(2));
        offset = 10;
      }
      if (pending.length < offset + 4 + length) return;
      const mask = pending.subarray(offset, offset + 4);
      const payload = Buffer.from(pending.subarray(offset + 4, offset + 4 + length));
      for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      pending = pending.subarray(offset + 4 + length);
      if (opcode === OP_CLOSE) {
        socket.end(frame(OP_CLOSE, payload));
        return;
      }
      if (opcode === OP_PING) {
        socket.write(frame(OP_PONG, payload));
      } else if (opcode === OP_TEXT && payload.toString() === 'bye') {
        socket.end(frame(OP_CLOSE, Buffer.from([0x03, 0xe8])));
        return;
      } else {
        socket.write(frame(opcode, payload));
      }
    }
  };
  socket.on('data', onData);
  socket.on('error', () => socket.destroy());
  onData(Buffer.alloc(0));
}

server.listen(3000);
