"""The benchmark's WSGI hello world: five bytes, no framework."""

BODY = b'hello'
HEADERS = [('Content-Type', 'text/plain'), ('Content-Length', str(len(BODY)))]


def application(environ, start_response):
    start_response('200 OK', HEADERS)
    return [BODY]
