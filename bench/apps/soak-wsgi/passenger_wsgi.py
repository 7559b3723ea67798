"""The soak app (WSGI): a small, a large, a slow response and a POST echo.

    GET  /       b'hello'
    GET  /big    1 MiB of b'x'
    GET  /slow   b'slow' after 200 ms
    POST /echo   b'echo <bytes received>'
    GET  /pid    the process id
Every body says what it answers, so the load generator can check each one.
"""

import os
import time

BIG = b'x' * (1024 * 1024)


def _reply(start_response, body, status='200 OK'):
    start_response(status, [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]


def application(environ, start_response):
    path = environ.get('PATH_INFO', '/')
    if path == '/big':
        return _reply(start_response, BIG)
    if path == '/slow':
        time.sleep(0.2)
        return _reply(start_response, b'slow')
    if path == '/echo':
        stream = environ['wsgi.input']
        received = 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            received += len(chunk)
        return _reply(start_response, b'echo %d' % received)
    if path == '/pid':
        return _reply(start_response, str(os.getpid()).encode())
    return _reply(start_response, b'hello')
