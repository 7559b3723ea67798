"""The example WSGI app served by `make serve`."""


def application(environ, start_response):
    body = b'Hello from a WSGI app served by mod_passenger\n'
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
