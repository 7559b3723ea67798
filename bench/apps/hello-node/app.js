// The benchmark's Node hello world: five bytes, plain `http`. The application
// server decides where it listens; the port here is only the fallback for
// running it by hand.
const http = require('http');

const BODY = 'hello';

http
  .createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': BODY.length });
    res.end(BODY);
  })
  .listen(process.env.PORT || 3000);
