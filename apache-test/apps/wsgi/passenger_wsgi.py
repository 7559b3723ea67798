"""The end-to-end test app: every WSGI feature the tests look at, wrapped in
wsgiref.validate so that any PEP 3333 violation on our side raises."""
import hashlib
import json
import os
import time
import warnings
from wsgiref.validate import validator

warnings.simplefilter('error')

# How many times this file was loaded in this process's lineage: with smart
# spawning it is loaded once by the preloader, and forked workers share it.
LOADS = [os.getpid()]

# Memory held on purpose by /hog (PassengerMemoryLimit tests).
HOG = []

# Out-of-band work: /oob?<marker file> asks for it; the handler appends the
# pid of the process that ran it to the marker file.
OOB_MARKER = []


def on_oob_work():
    if OOB_MARKER:
        with open(OOB_MARKER[-1], 'a') as f:
            f.write('%d\n' % os.getpid())


import passenger  # noqa: E402 (provided by the loader)

passenger.on_event('oob_work', on_oob_work)

ENV_KEYS = [
    'REQUEST_METHOD', 'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'SERVER_NAME',
    'SERVER_PORT', 'SERVER_PROTOCOL', 'REMOTE_ADDR', 'CONTENT_TYPE', 'CONTENT_LENGTH',
    'wsgi.url_scheme', 'REQUEST_URI', 'PASSENGER_APP_ENV', 'MY_SETENV',
]


class Closing:
    """A response iterable whose close() leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __iter__(self):
        yield b'closing'

    def close(self):
        with open(self.marker, 'w') as f:
            f.write('closed')


def app(environ, start_response):
    path = environ['PATH_INFO']
    if path == '/env':
        data = {k: environ.get(k) for k in ENV_KEYS}
        data['headers'] = {k: v for k, v in environ.items() if k.startswith('HTTP_')}
        data['os_env'] = {k: os.environ.get(k) for k in ('PASSENGER_APP_ENV', 'WSGI_ENV', 'HOME', 'USER', 'PASSENGER_BASE_URI', 'RAILS_RELATIVE_URL_ROOT', 'RACK_BASE_URI')}
        data['uid'] = os.getuid()
        data['pid'] = os.getpid()
        data['ppid'] = os.getppid()
        data['loaded_by'] = LOADS[0]
        body = json.dumps(data).encode()
        start_response('200 OK', [('Content-Type', 'application/json')])
        return [body]
    if path == '/echo':
        h = hashlib.sha256()
        total = 0
        while True:
            chunk = environ['wsgi.input'].read(65536)
            if not chunk:
                break
            total += len(chunk)
            h.update(chunk)
        body = ('%d %s' % (total, h.hexdigest())).encode()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [body]
    if path == '/lines':
        lines = environ['wsgi.input'].readlines()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [('%d' % len(lines)).encode()]
    if path == '/stream':
        start_response('200 OK', [('Content-Type', 'text/plain')])

        def gen():
            for i in range(3):
                yield ('chunk %d at %.3f\n' % (i, time.time())).encode()
                time.sleep(0.4)
        return gen()
    if path == '/cookies':
        start_response('201 Created Here', [('Content-Type', 'text/plain'), ('Set-Cookie', 'a=1'), ('Set-Cookie', 'b=2'), ('X-Custom', 'yes')])
        return [b'cookies']
    if path == '/write':
        write = start_response('200 OK', [('Content-Type', 'text/plain')])
        write(b'written ')
        return [b'and returned']
    if path == '/close':
        return_value = Closing(environ['QUERY_STRING'])
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return return_value
    if path == '/exc_info':
        try:
            raise ValueError('boom')
        except ValueError:
            import sys
            start_response('500 Internal Server Error', [('Content-Type', 'text/plain')], sys.exc_info())
        return [b'handled error']
    if path == '/errors':
        environ['wsgi.errors'].write('message to wsgi.errors\n')
        environ['wsgi.errors'].flush()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'logged']
    if path == '/oob':
        OOB_MARKER.append(environ['QUERY_STRING'])
        passenger.request_oob_work()
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [('%d' % os.getpid()).encode()]
    if path == '/hog':
        HOG.append(bytearray(64 * 1024 * 1024))
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'hogging']
    if path == '/crash':
        os._exit(3)
    if path == '/big':
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return [b'x' * (1024 * 1024)]
    if path == '/slow':
        time.sleep(float(environ['QUERY_STRING'] or '0.5'))
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'slow']
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'hello from wsgi']


application = validator(app)
