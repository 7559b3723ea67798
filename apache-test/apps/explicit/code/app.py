"""A WSGI app with a startup file of its own name, in a directory that is
not the parent of the DocumentRoot: found only through PassengerAppRoot,
PassengerAppType and PassengerStartupFile."""
import sys


def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('explicit app on %s' % sys.executable).encode()]
