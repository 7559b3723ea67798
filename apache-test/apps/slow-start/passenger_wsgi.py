"""An app that takes longer to load than the tests' PassengerStartTimeout."""
import time

time.sleep(60)


def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'loaded at last']
