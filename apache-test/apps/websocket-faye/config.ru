# A WebSocket echo server on faye-websocket (Debian's ruby-faye-websocket),
# written as it would be without Passenger: it hijacks the connection and
# runs its own EventMachine reactor. The text message "bye" makes the
# server close first.
require 'faye/websocket'

# Open WebSockets each hold a connection: serve any number at once.
PhusionPassenger.advertised_concurrency_level = 0 if defined?(PhusionPassenger)

run(lambda do |env|
  if Faye::WebSocket.websocket?(env)
    ws = Faye::WebSocket.new(env)
    ws.on(:message) do |event|
      event.data == 'bye' ? ws.close(1000) : ws.send(event.data)
    end
    ws.rack_response
  else
    [200, { 'content-type' => 'text/plain' },
     ["plain #{env['PATH_INFO']} upgrade=#{env['HTTP_UPGRADE']} pid=#{Process.pid}"]]
  end
end)
