# The soak app (Rack): the same routes as the WSGI one.
#   GET /  'hello'   GET /big  1 MiB   GET /slow  'slow' after 200 ms
#   POST /echo  'echo <bytes received>'   GET /pid  the process id
BIG = ('x' * (1024 * 1024)).freeze

def reply(body)
  [200, { 'Content-Type' => 'text/plain', 'Content-Length' => body.bytesize.to_s }, [body]]
end

run(lambda do |env|
  case env['PATH_INFO']
  when '/big' then reply(BIG)
  when '/slow'
    sleep 0.2
    reply('slow')
  when '/echo'
    input = env['rack.input']
    received = 0
    while (chunk = input.read(65_536))
      received += chunk.bytesize
    end
    reply("echo #{received}")
  when '/pid' then reply(Process.pid.to_s)
  else reply('hello')
  end
end)
