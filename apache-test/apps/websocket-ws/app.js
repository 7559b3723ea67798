// A WebSocket echo server on the `ws` library (Debian's node-ws), written
// as it would be without Passenger. The text message "bye" makes the
// server close first.
const http = require('http');
const { WebSocketServer } = require('ws');

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`plain ${req.url} upgrade=${req.headers.upgrade || ''} pid=${process.pid}`);
});

const wss = new WebSocketServer({ server });
wss.on('headers', (headers) => headers.push(`X-App-Pid: ${process.pid}`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString() === 'bye') {
      ws.close(1000);
      return;
    }
    ws.send(data, { binary: isBinary });
  });
});

server.listen(3000);
