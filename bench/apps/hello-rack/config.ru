# The benchmark's Rack hello world: five bytes, no framework.
BODY = 'hello'.freeze
HEADERS = { 'Content-Type' => 'text/plain', 'Content-Length' => BODY.bytesize.to_s }.freeze

run ->(_env) { [200, HEADERS.dup, [BODY]] }
