// The soak app (Node): the same routes as the WSGI one.
//   GET /  'hello'   GET /big  1 MiB   GET /slow  'slow' after 200 ms
//   POST /echo  'echo <bytes received>'   GET /pid  the process id
const http = require('http');

const BIG = Buffer.alloc(1024 * 1024, 'x');

function reply(res, body) {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

http
  .createServer((req, res) => {
    const path = req.url.split('?')[0];
    if (path === '/big') return reply(res, BIG);
    if (path === '/slow') return setTimeout(() => reply(res, 'slow'), 200);
    if (path === '/pid') return reply(res, String(process.pid));
    if (path === '/echo') {
      let received = 0;
      req.on('data', (chunk) => { received += chunk.length; });
      req.on('end', () => reply(res, `echo ${received}`));
      return undefined;
    }
    return reply(res, 'hello');
  })
  .listen(process.env.PORT || 3000);
