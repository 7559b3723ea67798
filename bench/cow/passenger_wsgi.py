"""About 50 MB of data built at load time: what smart spawning shares
between workers through copy-on-write."""
import os

DATA = [b'x' * (1024 * 1024 - 64) + str(i).encode() for i in range(50)]


def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('%d %d' % (len(DATA), os.getpid())).encode()]
