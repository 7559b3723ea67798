"""A real framework, unchanged."""
from flask import Flask, request

application = Flask(__name__)


@application.route('/hello/<name>')
def hello(name):
    return 'Hello, %s! q=%s' % (name, request.args.get('q', ''))
