# The example Rack app served by `make serve`.
run lambda { |env| [200, { 'content-type' => 'text/plain' }, ["Hello from a Rack app served by mod_passenger\n"]] }
