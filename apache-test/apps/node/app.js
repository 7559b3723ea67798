// A plain Node.js app, unchanged from how it runs on its own.
const http = require('http');

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/stream')) {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    let i = 0;
    const tick = setInterval(() => {
      res.write(`chunk ${i}\n`);
      if (++i === 3) {
        clearInterval(tick);
        res.end();
      }
    }, 400);
    return;
  }
  if (req.method === 'POST') {
    let size = 0;
    req.on('data', (chunk) => { size += chunk.length; });
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end(`received ${size}`);
    });
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Set-Cookie': ['a=1', 'b=2'] });
  res.end(`hello from node ${req.url} pid ${process.pid}`);
});

server.listen(3000);
