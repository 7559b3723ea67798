// The example Node.js app served by `make serve`: unchanged from how it runs alone.
require('http')
  .createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('Hello from a Node.js app served by mod_passenger\n');
  })
  .listen(3000);
