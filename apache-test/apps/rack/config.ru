# The end-to-end Rack app: wrapped in Rack::Lint, so any Rack SPEC
# violation on our side raises.
require 'json'
require 'rack/lint'
require 'rack/request'

LOADED_BY = Process.pid
$forked = nil
PhusionPassenger.on_event(:starting_worker_process) { |forked| $forked = forked }
PhusionPassenger.require_passenger_lib 'rack/out_of_band_gc'

class Streaming
  def each
    3.times do |i|
      yield "chunk #{i} at #{Time.now.to_f}\n"
      sleep 0.4
    end
  end
end

app = lambda do |env|
  case env['PATH_INFO']
  when '/env'
    data = env.select { |k, v| v.is_a?(String) }
    data['rack.url_scheme'] = env['rack.url_scheme']
    data['pid'] = Process.pid
    data['loaded_by'] = LOADED_BY
    data['forked'] = $forked
    data['passenger_defined'] = !defined?(PhusionPassenger).nil?
    data['hijack'] = env['rack.hijack?'] && env['rack.hijack'].respond_to?(:call)
    [200, { 'content-type' => 'application/json' }, [JSON.generate(data)]]
  when '/echo'
    body = env['rack.input'].read
    env['rack.input'].rewind if env['rack.input'].respond_to?(:rewind)
    [200, { 'content-type' => 'text/plain' }, ["#{body.bytesize} #{Digest::SHA256.hexdigest(body)}"]]
  when '/stream'
    [200, { 'content-type' => 'text/plain' }, Streaming.new]
  when '/long_poll'
    # As message_bus answers a long poll: the form first (rack.input), then
    # the socket, with a chunked response written over time by its own thread.
    seq = Rack::Request.new(env).POST['seq']
    io = env['rack.hijack'].call
    Thread.new do
      io.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n" \
               "Cache-Control: no-cache\r\n\r\n")
      2.times do |i|
        line = "message #{i} for seq #{seq}\n"
        io.write("#{line.bytesize.to_s(16)}\r\n#{line}\r\n")
        sleep 0.4
      end
      io.write("0\r\n\r\n")
      io.close
    end
    [200, {}, []]
  when '/held_poll'
    # A long poll answered when the file tmp/answer-poll appears, from the
    # app's own thread; the request returns at once (tmp/poll-held says so).
    io = env['rack.hijack'].call
    File.write(File.join(Dir.pwd, 'tmp', 'poll-held'), '')
    Thread.new do
      io.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n")
      sleep 0.02 until File.exist?(File.join(Dir.pwd, 'tmp', 'answer-poll'))
      io.write('answered')
      io.close
    end
    [200, {}, []]
  when '/cookies'
    [201, { 'content-type' => 'text/plain', 'set-cookie' => "a=1\nb=2" }, ['cookies']]
  else
    [200, { 'content-type' => 'text/plain' }, ['hello from rack']]
  end
end

require 'digest'
use PhusionPassenger::Rack::OutOfBandGc, 1000
run Rack::Lint.new(app)
