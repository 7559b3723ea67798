# About 50 MB of data built at load time: what smart spawning shares
# between workers through copy-on-write.
DATA = Array.new(50) { |i| ('x' * (1024 * 1024 - 64)) + i.to_s }.freeze
run lambda { |env| [200, { 'content-type' => 'text/plain' }, ["#{DATA.size} #{Process.pid}"]] }
