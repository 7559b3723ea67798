# A WebSocket echo server on Rack's full socket hijack, the way
# faye-websocket and ActionCable serve WebSockets, with nothing from gems.
# Messages come back as they were sent; the text message "bye" makes the
# server close first. An upgrade to /refuse is declined with an ordinary 403.
require 'digest/sha1'

WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
OP_TEXT = 1
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

# Serve several connections at once, as the original needs it for
# WebSockets (each holds its process there). A file "one-at-a-time" in the
# app root keeps the default: one request at a time.
if defined?(PhusionPassenger) && !File.exist?(File.join(Dir.pwd, 'one-at-a-time'))
  PhusionPassenger.advertised_concurrency_level = 8
end

# A server frame (never masked).
def ws_frame(opcode, payload)
  payload = payload.b
  header = [0x80 | opcode].pack('C')
  header << if payload.bytesize < 126
              [payload.bytesize].pack('C')
            elsif payload.bytesize < 65_536
              [126, payload.bytesize].pack('Cn')
            else
              [127, payload.bytesize].pack('CQ>')
            end
  header + payload
end

# Reads the client's (masked) frames and answers each one.
def ws_echo(io)
  loop do
    first, second = io.read(2)&.unpack('CC')
    break unless second
    opcode = first & 0x0f
    length = second & 0x7f
    length = io.read(2).unpack1('n') if length == 126
    length = io.read(8).unpack1('Q>') if length == 127
    mask = io.read(4).bytes
    payload = (io.read(length) || '').bytes.each_with_index.map { |b, i| b ^ mask[i % 4] }.pack('C*')
    case opcode
    when OP_CLOSE
      io.write(ws_frame(OP_CLOSE, payload))
      break
    when OP_PING
      io.write(ws_frame(OP_PONG, payload))
    else
      if opcode == OP_TEXT && payload == 'bye'
        io.write(ws_frame(OP_CLOSE, [1000].pack('n')))
        break
      end
      io.write(ws_frame(opcode, payload))
    end
  end
rescue IOError, SystemCallError
  nil
ensure
  io.close unless io.closed?
end

run lambda { |env|
  if env['HTTP_UPGRADE'].to_s.casecmp?('websocket') && env['rack.hijack?'] && env['PATH_INFO'] != '/refuse'
    io = env['rack.hijack'].call
    accept = [Digest::SHA1.digest(env['HTTP_SEC_WEBSOCKET_KEY'] + WEBSOCKET_GUID)].pack('m0')
    io.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
             "Sec-WebSocket-Accept: #{accept}\r\nX-App-Pid: #{Process.pid}\r\n\r\n")
    Thread.new { ws_echo(io) }
    return [-1, {}, []]
  end
  if env['HTTP_UPGRADE']
    return [403, { 'content-type' => 'text/plain' }, ['refused']] if env['PATH_INFO'] == '/refuse'
  end
  [200, { 'content-type' => 'text/plain' },
   ["plain #{env['PATH_INFO']} upgrade=#{env['HTTP_UPGRADE']} pid=#{Process.pid}"]]
}
