# frozen_string_literal: true
#
# Tests of rack-loader.rb.
#
# Run with:  ruby src/loaders/test_rack_loader.rb
#
# The loader is started for real, as the agent starts it: a subprocess with a
# listening Unix socket on fd 3 and the readiness pipe on fd 4 (or, for smart
# spawning, the control socket on fd 3), on small apps written to a
# temporary directory. The frame codec below is this test's own, written from
# docs/protocol.md; it is checked against docs/protocol-vectors.json, as is
# the loader's.

require 'minitest/autorun'
require 'socket'
require 'tmpdir'
require 'json'
require 'digest'
require 'fileutils'
require 'stringio'
require 'rbconfig'

HERE = File.expand_path(__dir__)
LOADER = File.join(HERE, 'rack-loader.rb')
VECTORS = File.join(HERE, '..', '..', 'docs', 'protocol-vectors.json')
RUBY = RbConfig.ruby

# ---------------------------------------------------------------------------
# The test's own codec (docs/protocol.md)
# ---------------------------------------------------------------------------

module Codec
  T = {
    HELLO: 0x01, HELLO_OK: 0x02, CONFIGURE: 0x03, CONFIGURE_OK: 0x04, REQUEST: 0x10, BODY: 0x11,
    END: 0x12, MORE: 0x13, READ_BODY: 0x14, RELEASE: 0x15, RESPONSE: 0x20, ERROR: 0x30, PING: 0x40,
    PONG: 0x41, STATUS: 0x50, STATUS_REPLY: 0x51, READY: 0x60, SPAWN_ERROR: 0x61, FORK: 0x70, FORKED: 0x71,
    OOB_WORK: 0x72, OOB_DONE: 0x73
  }.freeze
  NAMES = T.invert.freeze
  MAX_PAYLOAD = 1 << 20

  SCHEMA = {
    HELLO: [%i[role u8], %i[pid u32], %i[generation u64]],
    HELLO_OK: [%i[agent_pid u32], %i[instance bytes]],
    CONFIGURE: [%i[generation u64], %i[config bytes]],
    CONFIGURE_OK: [], END: [], MORE: [], PING: [], PONG: [], FORK: [], OOB_WORK: [], OOB_DONE: [],
    RELEASE: [],
    REQUEST: [%i[flags u8], %i[options pairs], %i[env pairs]],
    BODY: [%i[data raw]],
    READ_BODY: [%i[max u32]],
    RESPONSE: [%i[status u16], %i[reason bytes], %i[headers pairs]],
    ERROR: [%i[code u16], %i[message bytes]],
    STATUS: [%i[query bytes]],
    STATUS_REPLY: [%i[document bytes]],
    FORKED: [%i[pid u32]],
    READY: [%i[concurrency u32]],
    SPAWN_ERROR: [%i[summary bytes], %i[details bytes]]
  }.freeze

  class VecError < StandardError
    attr_reader :kind

    def initialize(kind, why = '')
      super("#{kind}: #{why}")
      @kind = kind
    end
  end

  # Decodes a payload field by field; every length is checked first.
  class Reader
    def initialize(payload)
      @p = payload.b
      @off = 0
    end

    def take(n)
      raise VecError.new('malformed', 'field runs past the payload') if n > @p.bytesize - @off

      s = @p.byteslice(@off, n)
      @off += n
      s
    end

    def u8 = take(1).unpack1('C')
    def u16 = take(2).unpack1('n')
    def u32 = take(4).unpack1('N')
    def u64 = take(8).unpack1('Q>')
    def bytes = take(u32)

    def pairs
      n = u32
      raise VecError.new('malformed', 'pair count runs past the payload') if n * 8 > @p.bytesize - @off

      Array.new(n) { [bytes, bytes] }
    end

    def rest = take(@p.bytesize - @off)

    def done
      raise VecError.new('malformed', 'trailing bytes') if @off != @p.bytesize
    end
  end

  module_function

  def frame(type, rid = 0, payload = ''.b)
    type = T.fetch(type) if type.is_a?(Symbol)
    [0x4D, 0x50, 1, type, rid, payload.bytesize].pack('C4NN') + payload.b
  end

  def u32(n) = [n].pack('N')

  def bytes(s)
    s = s.b
    u32(s.bytesize) + s
  end

  def pairs(list)
    list.inject(u32(list.size)) { |out, (n, v)| out + bytes(n) + bytes(v) }
  end

  def request(rid, env, flags: 0, options: [])
    frame(:REQUEST, rid, [flags].pack('C') + pairs(options) + pairs(env))
  end

  # nil if incomplete, else [type name, rid, fields]; VecError if invalid.
  def decode(data)
    data = data.b
    return nil if data.bytesize < 12

    magic, version, type, rid, length = data.unpack('a2CCNN')
    raise VecError, 'bad_magic' if magic != 'MP'
    raise VecError, 'bad_version' if version != 1
    raise VecError, 'unknown_type' unless NAMES.key?(type)
    raise VecError, 'too_large' if length > MAX_PAYLOAD
    return nil if data.bytesize < 12 + length

    name = NAMES[type]
    r = Reader.new(data.byteslice(12, length))
    fields = {}
    SCHEMA[name].each { |field, kind| fields[field] = kind == :raw ? r.rest : r.public_send(kind) }
    r.done
    raise VecError.new('malformed', 'role') if name == :HELLO && ![1, 2, 3].include?(fields[:role])
    if name == :REQUEST && (fields[:flags] & ~7 != 0 || fields[:flags] & 5 == 5)
      raise VecError.new('malformed', 'flags') # 0x04 (upgrade) never comes with 0x01 (body)
    end
    if name == :ERROR && !fields[:message].dup.force_encoding('UTF-8').valid_encoding?
      raise VecError.new('malformed', 'ERROR message not UTF-8')
    end

    [name, rid, fields]
  end

  def encode(name, rid, fields)
    payload = SCHEMA[name].map do |field, kind|
      v = fields[field]
      case kind
      when :raw then v.b
      when :u8 then [v].pack('C')
      when :u16 then [v].pack('n')
      when :u32 then [v].pack('N')
      when :u64 then [v].pack('Q>')
      when :bytes then bytes(v)
      else pairs(v)
      end
    end
    frame(name, rid, payload.join.b)
  end

  # The fields of a JSON vector, with bytes fields as binary Strings.
  def vector_fields(vec)
    name = vec['type'].to_sym
    SCHEMA[name].to_h do |field, kind|
      f = field.to_s
      value = if %i[bytes raw].include?(kind)
                vec.key?("#{f}_hex") ? [vec["#{f}_hex"]].pack('H*') : vec[f].b
              elsif kind == :pairs
                vec[f].map { |n, v| [n.b, v.b] }
              else
                vec[f]
              end
      [field, value]
    end
  end
end

# ---------------------------------------------------------------------------
# Driving a loader process
# ---------------------------------------------------------------------------

class TimeoutError < StandardError; end

# A client connection to the loader, like the agent's.
class Conn
  attr_reader :sock

  def self.open(path, timeout = 10)
    new(UNIXSocket.new(path), timeout)
  end

  def initialize(sock, timeout = 10)
    @sock = sock
    @buf = ''.b
    @timeout = timeout
    @released = []
    @ended = []
  end

  # Whether the loader sent RELEASE for request +rid+. RELEASE frames are
  # recorded here, not returned by read_frame; one after its request's END
  # fails the test.
  def released?(rid) = @released.include?(rid)

  def write(data)
    if data.bytesize >= 12 && data.getbyte(3) == Codec::T[:REQUEST]
      rid = data.unpack1('N', offset: 4) # a new request: forget the last one of this id
      @released.delete(rid)
      @ended.delete(rid)
    end
    @sock.write(data)
  end

  # [type, rid, payload], or nil at EOF.
  def read_frame(timeout = @timeout)
    loop do
      if @buf.bytesize >= 12
        magic, version, type, rid, len = @buf.unpack('a2CCNN')
        raise "not a frame: #{@buf.byteslice(0, 12).inspect}" unless magic == 'MP' && version == 1

        if @buf.bytesize >= 12 + len
          payload = @buf.byteslice(12, len)
          @buf = @buf.byteslice(12 + len, @buf.bytesize - 12 - len)
          if type == Codec::T[:RELEASE]
            raise "RELEASE of request #{rid} after its END" if @ended.include?(rid)
            raise "RELEASE of request #{rid} twice" if @released.include?(rid)
            raise "RELEASE with a payload of #{len} bytes" unless len.zero?

            @released << rid
            next
          end
          @ended << rid if type == Codec::T[:END]
          return [type, rid, payload]
        end
      end
      raise TimeoutError, "no frame within #{timeout} s" unless IO.select([@sock], nil, nil, timeout)

      data = begin
        @sock.readpartial(1 << 20)
      rescue EOFError, Errno::ECONNRESET
        nil
      end
      if data.nil?
        raise "EOF in the middle of a frame: #{@buf.inspect}" unless @buf.empty?

        return nil
      end
      @buf << data
    end
  end

  def closed?(timeout = 5)
    read_frame(timeout).nil?
  rescue TimeoutError
    false
  end

  def close
    @sock.close unless @sock.closed?
  end
end

class Result
  attr_accessor :status, :reason, :headers, :chunks, :frames, :read_bodies, :error, :ended

  def initialize
    @headers = []
    @chunks = []
    @frames = []
    @read_bodies = []
    @ended = false
  end

  def body = @chunks.join.b

  def header(name)
    pair = @headers.find { |n, _| n.casecmp?(name) }
    pair && pair[1]
  end

  def all(name)
    @headers.select { |n, _| n.casecmp?(name) }.map(&:last)
  end
end

def parse_response(payload)
  r = Codec::Reader.new(payload)
  status = r.u16
  reason = r.bytes
  headers = r.pairs
  r.done
  [status, reason, headers]
end

def parse_error(payload)
  r = Codec::Reader.new(payload)
  code = r.u16
  message = r.bytes.force_encoding('UTF-8')
  r.done
  [code, message]
end

def default_env(method = 'GET', path = '/', extra = {})
  [['REQUEST_METHOD', method], ['SCRIPT_NAME', ''], ['PATH_INFO', path], ['QUERY_STRING', ''],
   ['SERVER_NAME', 'localhost'], ['SERVER_PORT', '80'], ['SERVER_PROTOCOL', 'HTTP/1.1'],
   ['REMOTE_ADDR', '127.0.0.1'], ['REQUEST_URI', path]] + extra.to_a
end

# Sends a REQUEST (+ body prefix, + the pulled rest) and reads the response.
def do_request(conn, rid: 1, env: nil, body: nil, flags: 0, prefix: 65_536, answer: 65_536,
               read_response: true)
  env ||= default_env
  out = Codec.request(rid, env, flags: body ? flags | 1 : flags)
  pos = 0
  if body
    body = body.b
    head = body.byteslice(0, prefix)
    (0...head.bytesize).step(16_384) { |i| out << Codec.frame(:BODY, rid, head.byteslice(i, 16_384)) }
    pos = head.bytesize
    out << Codec.frame(pos >= body.bytesize ? :END : :MORE, rid)
  end
  conn.write(out)
  res = Result.new
  return res unless read_response

  loop do
    f = conn.read_frame
    if f.nil?
      res.frames << [:EOF, nil]
      return res
    end
    type, frid, payload = f
    raise "frame for request #{frid} during #{rid} (#{Codec::NAMES[type]})" if frid != rid

    res.frames << [Codec::NAMES[type], payload]
    case Codec::NAMES[type]
    when :READ_BODY
      n = payload.unpack1('N')
      res.read_bodies << n
      if pos >= body.bytesize
        conn.write(Codec.frame(:END, rid))
      else
        k = [n, answer].min
        conn.write(Codec.frame(:BODY, rid, body.byteslice(pos, k)))
        pos += k
      end
    when :RESPONSE
      res.status, res.reason, res.headers = parse_response(payload)
    when :BODY
      raise "BODY of #{payload.bytesize} bytes" unless payload.bytesize.between?(1, 65_536)

      res.chunks << payload
    when :END
      res.ended = true
      return res
    when :ERROR
      res.error = parse_error(payload)
      return res
    else
      raise "unexpected frame #{Codec::NAMES[type] || type}"
    end
  end
end

# Starts a loader on a temporary app; tears everything down afterwards.
class LoaderTest < Minitest::Test
  make_my_diffs_pretty!
  parallelize_me!

  def setup
    @tmp = Dir.mktmpdir('rack-loader-test-')
    @root = File.join(@tmp, 'app')
    Dir.mkdir(@root)
    @sock_path = File.join(@tmp, 'app.sock')
    @pid = nil
    @pids = []
    @foreign = []
    @conns = []
  end

  def teardown
    @conns.each(&:close)
    @foreign.each do |pid|
      Process.kill('KILL', pid)
    rescue SystemCallError
      nil
    end
    @pids.each do |pid|
      Process.kill('KILL', pid)
      Process.wait(pid)
    rescue SystemCallError
      nil
    end
    FileUtils.rm_rf(@tmp)
  end

  def write_file(name, text)
    file = File.join(@root, name)
    FileUtils.mkdir_p(File.dirname(file))
    File.write(file, text)
  end

  def path(name) = File.join(@tmp, name)

  def child_env(extra = {})
    {
      'PASSENGER_APP_ROOT' => @root, 'PASSENGER_APP_ENV' => 'production', 'RACK_ENV' => 'production',
      'RAILS_ENV' => 'production', 'TEST_TMP' => @tmp, 'PASSENGER_STARTUP_FILE' => nil,
      'PASSENGER_SPAWN_METHOD' => nil, 'PASSENGER_BASE_URI' => nil, 'BUNDLE_GEMFILE' => nil,
      'RUBYOPT' => nil, 'RUBYLIB' => nil, 'BUNDLE_APP_CONFIG' => path('bundle-config')
    }.merge(extra)
  end

  # Starts the loader (direct mode) and returns what it wrote on fd 4.
  def start(source = nil, startup_file: nil, env: {}, keep_listener: false, via_parent: false)
    write_file(startup_file || 'config.ru', source) if source
    listener = UNIXServer.new(@sock_path)
    r, w = IO.pipe
    extra = env.dup
    extra['PASSENGER_STARTUP_FILE'] = startup_file if startup_file
    argv = [*@loader_prefix, RUBY, LOADER]
    if via_parent
      # A stand-in agent: starts the loader with fds 3 and 4, records its pid, waits.
      agent = 'pid = spawn(*ARGV[1..], 3 => 3, 4 => 4); IO.for_fd(3).close; IO.for_fd(4).close; ' \
              'File.write(ARGV[0], pid.to_s); sleep'
      argv = [RUBY, '-e', agent, path('loader.pid')] + argv
    end
    pid = Process.spawn(child_env(extra), *argv, 3 => listener, 4 => w, in: File::NULL,
                                                 out: [path('stdout.log'), 'w'], err: [path('stderr.log'), 'w'],
                                                 chdir: @root)
    @pid = pid
    @pids << pid
    w.close
    if keep_listener
      @listener = listener
    else
      listener.close
    end
    data = read_all(r)
    r.close
    data
  end

  def read_all(io, timeout = 30)
    data = ''.b
    deadline = Time.now + timeout
    loop do
      left = deadline - Time.now
      raise TimeoutError, "no readiness frame within #{timeout} s; stderr:\n#{stderr}" if left <= 0
      next unless IO.select([io], nil, nil, left)

      chunk = begin
        io.readpartial(65_536)
      rescue EOFError
        nil
      end
      break if chunk.nil?

      data << chunk
    end
    data
  end

  def readiness(data)
    name, _rid, fields = Codec.decode(data)
    [name, fields]
  end

  def start_ok(source, concurrency: 1, **kw)
    data = start(source, **kw)
    name, fields = readiness(data)
    assert_equal :READY, name, "expected READY, got #{data.inspect}; stderr:\n#{stderr}"
    assert_equal concurrency, fields[:concurrency]
    assert_equal Codec.frame(:READY, 0, Codec.u32(concurrency)), data
    data
  end

  def start_error(source, **kw)
    data = start(source, **kw)
    name, fields = readiness(data)
    assert_equal :SPAWN_ERROR, name, "expected SPAWN_ERROR, got #{data.inspect}; stderr:\n#{stderr}"
    status = wait_exit
    assert_equal 1, status.exitstatus
    [fields[:summary].force_encoding('UTF-8'), fields[:details].force_encoding('UTF-8')]
  end

  def connect(sock_path = @sock_path)
    c = Conn.open(sock_path)
    @conns << c
    c
  end

  def stderr
    File.exist?(path('stderr.log')) ? File.read(path('stderr.log')) : ''
  end

  def wait_exit(pid = @pid, timeout = 15)
    deadline = Time.now + timeout
    loop do
      got, status = Process.wait2(pid, Process::WNOHANG)
      if got
        @pids.delete(pid)
        return status
      end
      raise TimeoutError, "pid #{pid} did not exit within #{timeout} s" if Time.now > deadline

      sleep 0.01
    end
  end

  def wait_file(name, timeout = 10)
    deadline = Time.now + timeout
    until File.exist?(path(name))
      flunk("#{name} was not written; stderr:\n#{stderr}") if Time.now > deadline
      sleep 0.01
    end
    sleep 0.01
    File.read(path(name))
  end

  def wait_until(timeout = 10)
    deadline = Time.now + timeout
    until yield
      return false if Time.now > deadline

      sleep 0.01
    end
    true
  end

  def get(conn, path, rid = 1, **kw)
    do_request(conn, rid: rid, env: default_env('GET', path), **kw)
  end
end

HELLO_APP = <<~RUBY
  run lambda { |env| [200, { 'content-type' => 'text/plain', 'content-length' => '13' }, ['Hello, world!']] }
RUBY

# An app with several endpoints, chosen by PATH_INFO.
MULTI_APP = <<~'RUBY'
  require 'json'
  require 'digest'

  TMP = ENV['TEST_TMP']

  # config.ru is evaluated in a Rack::Builder: methods defined at its top
  # level belong to the builder, so the helpers live in a module.
  module H
    module_function

    def marker(name, text = 'x')
      File.write(File.join(TMP, name), text)
    end

    def wait_for(name)
      deadline = Time.now + 10
      sleep 0.005 until File.exist?(File.join(TMP, name)) || Time.now > deadline
    end

    def utf8(v)
      v.is_a?(String) ? v.dup.force_encoding('UTF-8').scrub : v
    end
  end

  class ClosingBody
    def initialize(chunks, name)
      @chunks = chunks
      @name = name
    end

    def each(&block)
      @chunks.each(&block)
    end

    def close
      H.marker(@name)
    end
  end

  class SlowBody
    def each
      yield 'first'
      H.wait_for('go')
      yield 'second'
    end

    def close
      H.marker('slow-closed')
    end
  end

  class FailingBody
    def initialize(before)
      @before = before
    end

    def each
      yield 'partial' unless @before
      raise 'failing in each'
    end

    def close
      H.marker('failing-closed')
    end
  end

  # each and a to_ary that must not be used under Rack 2
  class EachNotAry
    def each
      yield 'from each'
    end

    def to_ary
      raise 'to_ary called under Rack 2'
    end
  end

  PhusionPassenger.on_event(:stopping_worker_process) { H.marker('stopped', Process.pid.to_s) }

  app = lambda do |env|
    input = env['rack.input']
    path = env['PATH_INFO']
    path = '/env' if path.start_with?('/env')
    case path
    when '/hello'
      [200, { 'content-type' => 'text/plain' }, ['Hello, world!']]
    when '/env'
      info = {}
      env.each do |k, v|
        info[k] = case v
                  when String, true, false, nil then H.utf8(v)
                  when Array then v.map { |x| H.utf8(x) }
                  else v.class.name
                  end
      end
      info['cgi_encodings'] = env.reject { |k, _| k.include?('.') }.map { |_, v| v.encoding.name }.uniq
      info['errors_is_stderr'] = env['rack.errors'].equal?($stderr)
      info['input_class'] = env['rack.input'].class.name
      info['hijack_callable'] = env['rack.hijack'].respond_to?(:call)
      [200, { 'content-type' => 'application/json' }, [JSON.generate(info)]]
    when '/echo'
      data = input.read
      [200, { 'content-type' => 'text/plain' }, ["#{data.bytesize} #{Digest::SHA256.hexdigest(data)} #{data.encoding}"]]
    when '/read_sizes'
      sizes = []
      while (chunk = input.read(30_000))
        sizes << chunk.bytesize
      end
      tail = input.read(10)
      rest = input.read
      input.rewind
      again = input.read
      [200, {}, [JSON.generate([sizes, tail, rest, again.bytesize, Digest::SHA256.hexdigest(again)])]]
    when '/gets'
      lines = []
      while (line = input.gets)
        lines << line
      end
      input.rewind
      each_lines = []
      input.each { |l| each_lines << l }
      [200, {}, [JSON.generate([lines.map(&:bytesize), lines.first(3), each_lines.size])]]
    when '/partial'
      got = input.read(10)
      [200, {}, [got]]
    when '/stream'
      [200, { 'content-type' => 'text/plain' }, SlowBody.new]
    when '/close'
      [200, {}, ClosingBody.new(%w[a b c], 'closed')]
    when '/close_array'
      [200, {}, ClosingBody.new(['whole'], 'closed2')]
    when '/raise'
      raise 'boom before the response'
    when '/raise_in_each_before'
      [200, {}, FailingBody.new(true)]
    when '/raise_in_each_after'
      [200, {}, FailingBody.new(false)]
    when '/headers'
      [200, { 'set-cookie' => "a=1\nb=2", 'x-one' => 'one', 'rack.internal' => 'not sent' }, ['h']]
    when '/array_headers'
      [200, { 'set-cookie' => ['a=1', 'b=2'], 'x-int' => 5 }, ['h']]
    when '/bad_header'
      [200, { 'x-bad' => "a\r\nb" }, ['never']]
    when '/bad_status'
      [42, {}, ['never']]
    when '/string_status'
      ['201', {}, ['made']]
    when '/call'
      [200, {}, proc { |s| s.write('one'); s << 'two'; s.close }]
    when '/call_open'
      [200, {}, proc { |s| s.write('only') }]
    when '/call_raise'
      [200, {}, proc { |s| s.write('x'); raise 'failing in call' }]
    when '/big'
      [200, {}, ['x' * 200_000, 'y' * 10]]
    when '/huge'
      [200, {}, ['z' * (3 << 20)]]
    when '/many'
      [200, {}, (1..100).map(&:to_s)]
    when '/empty_chunks'
      [200, {}, ['', 'a', '', 'b', '']]
    when '/utf8'
      [200, { 'x-name' => 'Jürgen', 'x-long' => 'v' * 2000 }, ['héllo ', 'ü' * 40_000, 'end'.b, "\xFF\xFE".b]]
    when '/many_utf8'
      [200, {}, Array.new(600) { |i| "é#{i}" }]
    when '/to_ary_rack2'
      [200, {}, EachNotAry.new]
    when '/utf8_each'
      [200, {}, ClosingBody.new(['héllo ', 'ü' * 40_000, 'end'], 'utf8-closed')]
    when '/empty'
      [204, {}, []]
    when '/proxy'
      [200, {}, Rack::BodyProxy.new(['proxied']) { H.marker('proxy-closed') }]
    when '/finished'
      env['rack.response_finished'] << ->(_e, s, _h, err) { H.marker('finished', "#{s} #{err.inspect}") }
      [200, {}, ['fin']]
    when '/head'
      [200, { 'content-length' => '9' }, ['head body']]
    when '/errors'
      env['rack.errors'].puts 'to rack.errors'
      env['rack.errors'].write("written\n")
      env['rack.errors'].flush
      [200, {}, ['ok']]
    when '/sleep'
      H.marker('sleeping')
      H.wait_for('wake')
      [200, {}, ['woke']]
    when '/pid'
      [200, {}, [Process.pid.to_s]]
    when '/exit'
      exit 3
    when '/input_after'
      $kept = input
      [200, {}, ['kept']]
    when '/read_kept'
      r = begin
        $kept.read.inspect
      rescue StandardError => e
        e.class.name
      end
      [200, {}, [r]]
    else
      [404, { 'content-type' => 'text/plain' }, ['not found']]
    end
  end
  run app
RUBY

class TestServing < LoaderTest
  def setup
    super
    start_ok(MULTI_APP)
    @c = connect
  end

  def test_hello_and_frames
    res = get(@c, '/hello')
    assert_equal 200, res.status
    assert_equal 'OK', res.reason
    assert_equal [['content-type', 'text/plain']], res.headers
    assert_equal 'Hello, world!', res.body
    assert_equal %i[RESPONSE BODY END], res.frames.map(&:first)
  end

  def test_two_requests_on_one_connection_and_many_connections
    assert_equal 'Hello, world!', get(@c, '/hello', 1).body
    assert_equal 'Hello, world!', get(@c, '/hello', 2).body
    @c.close # concurrency 1: one connection at a time
    3.times do |i|
      c = connect
      assert_equal 'Hello, world!', get(c, '/hello', 10 + i).body
      c.close
    end
  end

  def test_env
    env = default_env('GET', '/env', 'HTTP_HOST' => 'example.org', 'HTTP_CONTENT_TYPE' => 'text/x',
                                       'MY_VAR' => 'from SetEnv', 'HTTP_X_TWICE' => 'one')
    env << %w[HTTP_X_TWICE two] << ['HTTP_COOKIE', 'a=1'] << ['HTTP_COOKIE', 'b=2']
    env[3] = ['QUERY_STRING', 'a=%20b&c=d']
    res = do_request(@c, env: env)
    info = JSON.parse(res.body)
    assert_equal 'GET', info['REQUEST_METHOD']
    assert_equal '', info['SCRIPT_NAME']
    assert_equal '/env', info['PATH_INFO']
    assert_equal 'a=%20b&c=d', info['QUERY_STRING']
    assert_equal 'text/x', info['CONTENT_TYPE']
    refute info.key?('HTTP_CONTENT_TYPE')
    assert_equal 'one, two', info['HTTP_X_TWICE']
    assert_equal 'a=1; b=2', info['HTTP_COOKIE']
    assert_equal 'from SetEnv', info['MY_VAR']
    assert_equal [1, 3], info['rack.version']
    assert_equal 'http', info['rack.url_scheme']
    assert_equal false, info['rack.multithread']
    assert_equal true, info['rack.multiprocess']
    assert_equal false, info['rack.run_once']
    assert_equal true, info['rack.hijack?']
    assert info['hijack_callable']
    assert_equal [], info['rack.response_finished']
    assert_equal 'PassengerRackLoader::EmptyInput', info['input_class']
    assert info['errors_is_stderr']
    assert_equal ['ASCII-8BIT'], info['cgi_encodings'] - ['UTF-8', 'US-ASCII']
  end

  def test_env_defaults_https_and_script_name
    res = do_request(@c, env: [%w[PATH_INFO /env]], flags: 2)
    info = JSON.parse(res.body)
    assert_equal 'GET', info['REQUEST_METHOD']
    assert_equal '', info['QUERY_STRING']
    assert_equal 'localhost', info['SERVER_NAME']
    assert_equal '443', info['SERVER_PORT']
    assert_equal 'HTTP/1.0', info['SERVER_PROTOCOL']
    assert_equal 'https', info['rack.url_scheme']
    assert_equal 'on', info['HTTPS']

    res = do_request(@c, rid: 2, env: [%w[SCRIPT_NAME /], %w[PATH_INFO env], %w[HTTPS ON]])
    info = JSON.parse(res.body)
    assert_equal 'https', info['rack.url_scheme']
    assert_equal '', info['SCRIPT_NAME']
    assert_equal '/env', info['PATH_INFO']

    # a sub-URI app: PATH_INFO may be empty then
    res = do_request(@c, rid: 3, env: [%w[SCRIPT_NAME /sub], %w[PATH_INFO /env]])
    assert_equal '/sub', JSON.parse(res.body)['SCRIPT_NAME']
  end

  def test_path_info_is_percent_encoded_from_request_uri
    env = default_env('GET', "/env/a b/\xC3\xA9/%") + [['REQUEST_URI', '/sub/env/a%20b/%C3%A9/%25?x=%41']]
    env[1] = %w[SCRIPT_NAME /sub]
    res = do_request(@c, env: env)
    info = JSON.parse(res.body)
    assert_equal '/env/a%20b/%C3%A9/%25', info['PATH_INFO']
    assert_equal '/sub', info['SCRIPT_NAME']
    # a REQUEST_URI that does not decode to the path (Apache normalized it) is not used
    env = default_env('GET', '/env/x') + [['REQUEST_URI', '/a/../env/%78']]
    assert_equal '/env/x', JSON.parse(do_request(@c, rid: 2, env: env).body)['PATH_INFO']
  end

  def test_post_small_body
    res = do_request(@c, env: default_env('POST', '/echo', 'CONTENT_LENGTH' => '5'), body: 'hello')
    assert_equal "5 #{Digest::SHA256.hexdigest('hello')} ASCII-8BIT", res.body
    assert_empty res.read_bodies
  end

  def test_post_large_body_pulled
    body = Random.new(1).bytes(300_000)
    res = do_request(@c, env: default_env('POST', '/echo', 'CONTENT_LENGTH' => body.bytesize.to_s), body: body)
    assert_equal "300000 #{Digest::SHA256.hexdigest(body)} ASCII-8BIT", res.body
    assert res.read_bodies.all? { |n| n == 65_536 }
    assert_equal 5, res.read_bodies.size # 4 BODY answers and END
  end

  def test_body_spooled_to_a_file_and_rewound
    body = Random.new(2).bytes(3 * 1024 * 1024 + 17)
    res = do_request(@c, env: default_env('POST', '/read_sizes'), body: body, answer: 50_000)
    sizes, tail, rest, again, digest = JSON.parse(res.body)
    assert_equal body.bytesize, sizes.sum
    assert sizes[0..-2].all? { |n| n == 30_000 }
    assert_nil tail
    assert_equal '', rest
    assert_equal body.bytesize, again
    assert_equal Digest::SHA256.hexdigest(body), digest
  end

  def test_gets_and_each
    body = "line one\nline two\n#{'x' * 100_000}\nlast without newline"
    res = do_request(@c, env: default_env('POST', '/gets'), body: body, answer: 7000)
    sizes, first, each_count = JSON.parse(res.body)
    assert_equal [9, 9, 100_001, 20], sizes
    assert_equal ["line one\n", "line two\n", "#{'x' * 100_000}\n"], first
    assert_equal 4, each_count
  end

  def test_empty_body_with_more
    res = do_request(@c, env: default_env('POST', '/echo'), body: 'abc', prefix: 0)
    assert_equal "3 #{Digest::SHA256.hexdigest('abc')} ASCII-8BIT", res.body
    @c.write(Codec.request(2, default_env('POST', '/echo'), flags: 1) + Codec.frame(:MORE, 2))
    assert_equal :READ_BODY, Codec::NAMES[@c.read_frame[0]]
    @c.write(Codec.frame(:END, 2))
    type, _rid, payload = @c.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
    assert_equal 200, parse_response(payload)[0]
  end

  def test_unread_body_keeps_connection_in_step
    res = do_request(@c, env: default_env('POST', '/partial'), body: 'a' * 200_000)
    assert_equal 'a' * 10, res.body
    assert_empty res.read_bodies # the prefix had enough
    assert_equal 'Hello, world!', get(@c, '/hello', 2).body
  end

  def test_input_after_the_request_is_over
    get(@c, '/input_after')
    assert_equal '""', get(@c, '/read_kept', 2).body
    res = do_request(@c, rid: 3, env: default_env('POST', '/input_after'), body: 'x' * 100_000)
    assert_equal 'kept', res.body
    assert_equal '""', get(@c, '/read_kept', 4).body # at its end: nothing is pulled any more
  end

  def test_streaming_chunk_by_chunk
    do_request(@c, env: default_env('GET', '/stream'), read_response: false)
    type, _, payload = @c.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
    assert_equal 200, parse_response(payload)[0]
    type, _, payload = @c.read_frame
    assert_equal [:BODY, 'first'], [Codec::NAMES[type], payload]
    refute File.exist?(path('slow-closed'))
    File.write(path('go'), 'x')
    type, _, payload = @c.read_frame
    assert_equal [:BODY, 'second'], [Codec::NAMES[type], payload]
    assert_equal :END, Codec::NAMES[@c.read_frame[0]]
    wait_file('slow-closed')
  end

  def test_head_sends_no_body
    res = do_request(@c, env: default_env('HEAD', '/head'))
    assert_equal 200, res.status
    assert_equal '9', res.header('content-length')
    assert_equal %i[RESPONSE END], res.frames.map(&:first)
    res = do_request(@c, rid: 2, env: default_env('HEAD', '/stream'))
    assert_equal %i[RESPONSE END], res.frames.map(&:first)
    wait_file('slow-closed')
  end

  def test_close_called
    res = get(@c, '/close')
    assert_equal 'abc', res.body
    assert_equal %i[RESPONSE BODY BODY BODY END], res.frames.map(&:first)
    wait_file('closed')
    get(@c, '/proxy', 2)
    wait_file('proxy-closed')
  end

  def test_rack_body_proxy_of_an_array_is_one_write
    res = get(@c, '/proxy')
    assert_equal 'proxied', res.body
    wait_file('proxy-closed')
  end

  def test_rack2_never_calls_to_ary
    assert_equal 'from each', get(@c, '/to_ary_rack2').body
  end

  def test_headers
    res = get(@c, '/headers')
    assert_equal [%w[set-cookie a=1], %w[set-cookie b=2], %w[x-one one]], res.headers
    res = get(@c, '/array_headers', 2)
    assert_equal [%w[set-cookie a=1], %w[set-cookie b=2], %w[x-int 5]], res.headers
  end

  def test_bad_headers_and_statuses_give_500
    %w[/bad_header /bad_status].each_with_index do |p, i|
      res = get(@c, p, i + 1)
      assert_equal 500, res.status, p
      assert_includes res.body, '500 Internal Server Error'
    end
    assert_includes stderr, 'invalid character (CR or NUL)'
    assert_includes stderr, 'invalid response status 42'
    res = get(@c, '/string_status', 3)
    assert_equal [201, 'Created', 'made'], [res.status, res.reason, res.body]
  end

  def test_rack3_streaming_body
    res = get(@c, '/call')
    assert_equal 'onetwo', res.body
    assert_equal %i[RESPONSE BODY BODY END], res.frames.map(&:first)
    res = get(@c, '/call_open', 2)
    assert_equal 'only', res.body
    assert res.ended
    res = get(@c, '/call_raise', 3)
    assert_equal [500, 'the application failed after the response headers were sent: RuntimeError: failing in call'],
                 res.error
    assert_equal 'Hello, world!', get(@c, '/hello', 4).body
  end

  def test_big_bodies_are_split_at_64k
    res = get(@c, '/big')
    assert_equal ('x' * 200_000) + ('y' * 10), res.body
    assert_equal [65_536, 65_536, 65_536, 3392, 10], res.chunks.map(&:bytesize)
    res = get(@c, '/huge', 2)
    assert_equal 3 << 20, res.body.bytesize
    res = get(@c, '/many', 3)
    assert_equal (1..100).map(&:to_s).join, res.body
    res = get(@c, '/empty_chunks', 4)
    assert_equal %w[a b], res.chunks
    res = get(@c, '/empty', 5)
    assert_equal [204, 'No Content', %i[RESPONSE END]], [res.status, res.reason, res.frames.map(&:first)]
  end

  def test_non_ascii_bodies_and_headers
    expected = "héllo #{'ü' * 40_000}end".b + "\xFF\xFE".b
    res = get(@c, '/utf8')
    assert_equal expected, res.body
    assert_equal [['x-name', 'Jürgen'.b], ['x-long', 'v' * 2000]], res.headers
    assert(res.chunks.all? { |c| c.bytesize <= 65_536 })
    res = get(@c, '/many_utf8', 2)
    assert_equal Array.new(600) { |i| "é#{i}" }.join.b, res.body
    assert_equal 600, res.chunks.size
    res = get(@c, '/utf8_each', 3)
    assert_equal "héllo #{'ü' * 40_000}end".b, res.body
    wait_file('utf8-closed')
  end

  def test_error_before_headers
    res = get(@c, '/raise')
    assert_equal 500, res.status
    assert_equal 'text/html; charset=utf-8', res.header('content-type')
    assert_includes res.body, '500 Internal Server Error'
    assert_includes stderr, 'RuntimeError: boom before the response'
    assert_includes stderr, 'config.ru:'
    res = do_request(@c, rid: 2, env: default_env('HEAD', '/raise'))
    assert_equal [500, %i[RESPONSE END]], [res.status, res.frames.map(&:first)]
    res = get(@c, '/raise_in_each_before', 3)
    assert_equal 500, res.status
    wait_file('failing-closed')
    assert_equal 'Hello, world!', get(@c, '/hello', 4).body
  end

  def test_error_after_headers
    res = get(@c, '/raise_in_each_after')
    assert_equal 200, res.status
    assert_equal ['partial'], res.chunks
    assert_equal [500, 'the application failed after the response headers were sent: RuntimeError: failing in each'],
                 res.error
    wait_file('failing-closed')
    assert_includes stderr, 'after the response headers were sent'
    assert_equal 'Hello, world!', get(@c, '/hello', 2).body
  end

  def test_response_finished_callbacks
    assert_equal 'fin', get(@c, '/finished').body
    assert_equal '200 nil', wait_file('finished')
  end

  def test_rack_errors_goes_to_stderr
    get(@c, '/errors')
    assert wait_until { stderr.include?("to rack.errors\nwritten\n") }
  end

  def test_ping
    @c.write(Codec.frame(:PING, 0))
    assert_equal [Codec::T[:PONG], 0, ''], @c.read_frame
    # PING while the body is being read is answered too
    @c.write(Codec.request(5, default_env('POST', '/echo'), flags: 1) + Codec.frame(:MORE, 5))
    assert_equal Codec::T[:READ_BODY], @c.read_frame[0]
    @c.write(Codec.frame(:PING, 9))
    assert_equal [Codec::T[:PONG], 9, ''], @c.read_frame
    @c.write(Codec.frame(:BODY, 5, 'abc') )
    assert_equal Codec::T[:READ_BODY], @c.read_frame[0]
    @c.write(Codec.frame(:END, 5))
    assert_equal Codec::T[:RESPONSE], @c.read_frame[0]
  end

  def test_garbage_closes_connection_and_loader_goes_on
    @c.write("GET / HTTP/1.0\r\n\r\n")
    type, _rid, payload = @c.read_frame
    assert_equal :ERROR, Codec::NAMES[type]
    assert_equal 400, parse_error(payload)[0]
    assert @c.closed?
    c = connect
    assert_equal 'Hello, world!', get(c, '/hello').body
    assert_includes stderr, 'bad magic'
  end

  def test_protocol_errors
    cases = {
      'bad version' => ['MP'.b + [2, 0x40, 0, 0].pack('CCNN'), 1],
      'unknown type' => [Codec.frame(0x7f, 3), 400],
      'too large' => ['MP'.b + [1, 0x11, 1, (1 << 20) + 1].pack('CCNN'), 400],
      'unexpected READY' => [Codec.frame(:READY, 0, Codec.u32(1)), 400],
      'bad flags' => [Codec.frame(:REQUEST, 4, "\x08".b + Codec.pairs([]) + Codec.pairs([])), 400],
      'upgrade with a body' => [Codec.frame(:REQUEST, 4, "\x05".b + Codec.pairs([]) + Codec.pairs([])), 400],
      'lying pair count' => [Codec.frame(:REQUEST, 4, "\x00".b + Codec.u32(0xffffffff) + Codec.u32(0)), 400],
      'trailing bytes' => [Codec.frame(:REQUEST, 4, "\x00".b + Codec.pairs([]) + Codec.pairs([]) + 'x'), 400],
      'wrong rid' => [Codec.request(1, default_env('POST', '/echo'), flags: 1) + Codec.frame(:END, 2), 400],
      'prefix too large' => [Codec.request(1, default_env('POST', '/echo'), flags: 1) +
        Codec.frame(:BODY, 1, 'a' * 65_536) + Codec.frame(:BODY, 1, 'b'), 400]
    }
    @c.close
    cases.each do |name, (data, code)|
      c = connect
      c.write(data)
      type, _rid, payload = c.read_frame
      assert_equal :ERROR, Codec::NAMES[type], name
      assert_equal code, parse_error(payload)[0], name
      assert c.closed?, name
      c.close
    end
    assert_equal 'Hello, world!', get(connect, '/hello').body
  end

  def test_bad_body_answer_drops_connection
    @c.write(Codec.request(1, default_env('POST', '/echo'), flags: 1) + Codec.frame(:MORE, 1))
    assert_equal Codec::T[:READ_BODY], @c.read_frame[0]
    @c.write(Codec.frame(:BODY, 1, 'x' * 65_537))
    type, _rid, payload = @c.read_frame
    assert_equal :ERROR, Codec::NAMES[type]
    assert_equal 400, parse_error(payload)[0]
    assert @c.closed?
    assert_equal 'Hello, world!', get(connect, '/hello').body
  end

  def test_agent_error_during_body_aborts
    @c.write(Codec.request(1, default_env('POST', '/echo'), flags: 1) + Codec.frame(:MORE, 1))
    assert_equal Codec::T[:READ_BODY], @c.read_frame[0]
    @c.write(Codec.frame(:ERROR, 1, [502].pack('n') + Codec.bytes('client went away')))
    assert @c.closed?
    assert wait_until { stderr.include?('client went away') }
    assert_equal 'Hello, world!', get(connect, '/hello').body
  end

  def test_agent_goes_away_mid_request
    @c.write(Codec.request(1, default_env('POST', '/echo'), flags: 1) + Codec.frame(:MORE, 1))
    assert_equal Codec::T[:READ_BODY], @c.read_frame[0]
    @c.close
    c = connect
    assert_equal 'Hello, world!', get(c, '/hello').body
  end

  def test_exit_in_app_answers_500_then_exits
    res = get(@c, '/exit')
    assert_equal 500, res.status
    assert_equal 3, wait_exit.exitstatus
    assert_equal Process.pid.to_s.class, wait_file('stopped').class
  end
end

class TestSignals < LoaderTest
  def test_sigterm_when_idle
    start_ok(MULTI_APP)
    c = connect
    assert_equal 'Hello, world!', get(c, '/hello').body
    Process.kill('TERM', @pid)
    assert_equal 0, wait_exit.exitstatus
    assert_equal @pid.to_s, wait_file('stopped')
  end

  def test_sigterm_finishes_current_request
    start_ok(MULTI_APP)
    c = connect
    do_request(c, env: default_env('GET', '/sleep'), read_response: false)
    wait_file('sleeping')
    Process.kill('TERM', @pid)
    sleep 0.2
    assert_nil Process.wait(@pid, Process::WNOHANG)
    File.write(path('wake'), 'x')
    type, _rid, payload = c.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
    assert_equal 200, parse_response(payload)[0]
    assert_equal 'woke', c.read_frame[2]
    assert_equal Codec::T[:END], c.read_frame[0]
    assert_equal 0, wait_exit.exitstatus
    assert c.closed?
  end

  def test_sigterm_threaded_finishes_current_request
    start_ok("PhusionPassenger.advertised_concurrency_level = 4\n#{MULTI_APP}", concurrency: 4)
    idle = connect
    assert_equal 'Hello, world!', get(idle, '/hello').body
    c = connect
    do_request(c, env: default_env('GET', '/sleep'), read_response: false)
    wait_file('sleeping')
    Process.kill('TERM', @pid)
    assert idle.closed? # the idle connection is let go at once
    sleep 0.1
    assert_nil Process.wait(@pid, Process::WNOHANG)
    File.write(path('wake'), 'x')
    type, = c.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
    assert_equal 0, wait_exit.exitstatus
    assert_equal @pid.to_s, wait_file('stopped')
  end

  def test_exits_when_agent_dies
    data = start(MULTI_APP, via_parent: true)
    assert_equal :READY, readiness(data)[0]
    loader = wait_file('loader.pid').to_i
    @foreign << loader
    Process.kill('KILL', @pid)
    wait_exit
    assert(wait_until(10) { !File.exist?("/proc/#{loader}") || File.read("/proc/#{loader}/status") =~ /State:\s+Z/ })
    assert_includes stderr, 'the agent is gone'
  end

  def test_exits_when_listening_socket_is_shut_down
    start_ok(HELLO_APP, keep_listener: true)
    @listener.shutdown
    assert_equal 0, wait_exit.exitstatus
  end
end

LINT_APP = <<~'RUBY'
  require 'rack'
  require 'rack/lint'
  require 'digest'

  class Inner
    def call(env)
      input = env['rack.input']
      case env['PATH_INFO']
      when '/get'
        req = Rack::Request.new(env)
        body = "GET #{env['QUERY_STRING']} #{req.params.sort.inspect}"
      when '/post'
        data = input.read
        input.rewind
        again = +''
        while (chunk = input.read(7000))
          again << chunk
        end
        input.rewind
        lines = 0
        input.each { |_| lines += 1 }
        input.rewind
        first = input.gets
        buf = +''
        input.read(5, buf)
        body = "#{data.bytesize} #{Digest::SHA256.hexdigest(data)} #{again == data} #{lines} " \
               "#{first.to_s.bytesize} #{buf.bytesize} #{env['CONTENT_LENGTH'].inspect} " \
               "#{env['HTTP_TRANSFER_ENCODING'].inspect}"
      when '/form'
        body = Rack::Request.new(env).POST.sort.inspect
      when '/hijack' # full: echo everything up to EOF, then close
        io = env['rack.hijack'].call
        io.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        Thread.new { io.write(io.read); io.close }
        return [200, {}, []]
      when '/partial_hijack'
        echo = proc { |io| io.write(io.read); io.close }
        return [101, { 'upgrade' => 'echo', 'connection' => 'Upgrade', 'rack.hijack' => echo }, []]
      else
        body = 'other'
      end
      headers = { 'content-type' => 'text/plain', 'content-length' => body.bytesize.to_s }
      [200, headers, env['REQUEST_METHOD'] == 'HEAD' ? [] : [body]]
    end
  end

  use Rack::Lint
  run Inner.new
RUBY

class TestRackLint < LoaderTest
  def setup
    super
    start_ok(LINT_APP)
    @c = connect
  end

  def teardown
    refute_includes stderr, 'LintError'
    refute_includes stderr, 'error while serving'
    super
  end

  def test_get_with_percent_encoded_query
    env = default_env('GET', '/get', 'HTTP_HOST' => 'localhost:8080')
    env[3] = ['QUERY_STRING', 'a=%C3%A9t%C3%A9&b=1+2&c=%26']
    res = do_request(@c, env: env)
    assert_equal 200, res.status
    assert_equal 'GET a=%C3%A9t%C3%A9&b=1+2&c=%26 [["a", "été"], ["b", "1 2"], ["c", "&"]]',
                 res.body.force_encoding('UTF-8')
  end

  def test_post_with_content_length
    body = "first line\nsecond\nthird"
    res = do_request(@c, env: default_env('POST', '/post', 'CONTENT_LENGTH' => body.bytesize.to_s), body: body)
    assert_equal 200, res.status
    assert_equal "23 #{Digest::SHA256.hexdigest(body)} true 3 11 5 \"23\" nil", res.body
  end

  def test_post_chunked
    body = "a\n" * 1000
    env = default_env('POST', '/post', 'HTTP_TRANSFER_ENCODING' => 'chunked')
    res = do_request(@c, env: env, body: body, prefix: 100)
    assert_equal 200, res.status
    assert_equal "2000 #{Digest::SHA256.hexdigest(body)} true 1000 2 5 nil \"chunked\"", res.body
  end

  def test_post_large_pulled_body
    body = Random.new(3).bytes(200_000)
    res = do_request(@c, env: default_env('POST', '/post', 'CONTENT_LENGTH' => '200000'), body: body)
    assert_equal 200, res.status
    assert res.body.start_with?("200000 #{Digest::SHA256.hexdigest(body)} true ")
    refute_empty res.read_bodies
  end

  def test_post_form
    body = 'name=J%C3%BCrgen&x=a+b'
    env = default_env('POST', '/form', 'CONTENT_LENGTH' => body.bytesize.to_s,
                                        'CONTENT_TYPE' => 'application/x-www-form-urlencoded')
    res = do_request(@c, env: env, body: body)
    assert_equal '[["name", "Jürgen"], ["x", "a b"]]', res.body.force_encoding('UTF-8')
  end

  def test_head
    res = do_request(@c, env: default_env('HEAD', '/get'))
    assert_equal 200, res.status
    assert_equal %i[RESPONSE END], res.frames.map(&:first)
  end

  def test_https_and_sub_uri
    env = default_env('GET', '/get') + [%w[SCRIPT_NAME /sub]]
    res = do_request(@c, env: env, flags: 2)
    assert_equal 200, res.status
  end

  def test_full_and_partial_hijack
    %w[/hijack /partial_hijack].each do |path|
      c = path == '/hijack' ? @c : connect # a tunnel's connection closes when it ends
      c.write(Codec.request(7, upgrade_env(path), flags: 4) + Codec.frame(:BODY, 7, 'echo me') + Codec.frame(:END, 7))
      frames = []
      while (f = c.read_frame)
        frames << [Codec::NAMES[f[0]], f[0] == Codec::T[:RESPONSE] ? parse_response(f[2])[0] : f[2]]
      end
      assert_equal [[:RESPONSE, 101], [:BODY, 'echo me'], [:END, '']], frames, path
    end
  end
end

EVENTS_APP = <<~'RUBY'
  TMP = ENV['TEST_TMP']
  raise 'PhusionPassenger is not defined' unless defined?(PhusionPassenger)

  PhusionPassenger.on_event(:starting_worker_process) do |forked|
    $forked = forked
    File.write(File.join(TMP, "started-#{Process.pid}"), forked.inspect)
    $stdout.puts "starting in #{Process.pid}"
  end
  PhusionPassenger.on_event(:starting_request_handler_thread) { $threads_started = true }
  PhusionPassenger.on_event(:stopping_worker_process) { File.write(File.join(TMP, "stopped-#{Process.pid}"), 'x') }
  PhusionPassenger.on_event(:some_event_we_never_fire) { raise 'never' }
  if ENV['TEST_CONCURRENCY']
    PhusionPassenger.advertised_concurrency_level = Integer(ENV['TEST_CONCURRENCY'])
  end
  $loaded_in = Process.pid
  $compacted = GC.respond_to?(:latest_compact_info) ? GC.latest_compact_info.fetch(:considered, {}).size : -1

  def wait_for(name)
    deadline = Time.now + 10
    sleep 0.005 until File.exist?(File.join(TMP, name)) || Time.now > deadline
  end

  run(lambda do |env|
    case env['PATH_INFO']
    when '/wait'
      File.write(File.join(TMP, 'waiting'), 'x')
      wait_for('other-done')
      [200, {}, ['waited']]
    when '/other'
      File.write(File.join(TMP, 'other-done'), 'x')
      [200, {}, ['other']]
    when '/compact'
      info = GC.respond_to?(:latest_compact_info) ? GC.latest_compact_info.fetch(:considered, {}).size : -1
      [200, {}, [info.to_s]]
    else
      [200, {}, ["forked=#{$forked.inspect} pid=#{Process.pid} loaded_in=#{$loaded_in} " \
                 "mt=#{env['rack.multithread']} threads=#{$threads_started.inspect}"]]
    end
  end)
RUBY

class TestEventsAndConcurrency < LoaderTest
  def test_starting_worker_process_not_forked
    start_ok(EVENTS_APP)
    res = get(connect, '/')
    assert_equal "forked=false pid=#{@pid} loaded_in=#{@pid} mt=false threads=true", res.body
    assert_equal 'false', wait_file("started-#{@pid}")
    Process.kill('TERM', @pid)
    wait_exit
    wait_file("stopped-#{@pid}")
    assert_includes File.read(path('stdout.log')), "starting in #{@pid}"
  end

  def test_concurrency_zero
    start_ok(EVENTS_APP, concurrency: 0, env: { 'TEST_CONCURRENCY' => '0' })
    assert_includes get(connect, '/').body, 'mt=true'
  end

  def test_concurrency_four_serves_in_parallel
    start_ok(EVENTS_APP, concurrency: 4, env: { 'TEST_CONCURRENCY' => '4' })
    a = connect
    do_request(a, env: default_env('GET', '/wait'), read_response: false)
    wait_file('waiting')
    b = connect
    assert_equal 'other', get(b, '/other').body
    type, _rid, _payload = a.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
    assert_equal 'waited', a.read_frame[2]
    assert_includes get(b, '/', 2).body, 'mt=true threads=true'
  end

  def test_threads_capped_at_concurrency
    start_ok(EVENTS_APP, concurrency: 2, env: { 'TEST_CONCURRENCY' => '2' })
    a = connect
    b = connect
    assert_includes get(a, '/').body, 'mt=true'
    assert_includes get(b, '/').body, 'mt=true'
    c = connect # accepted by the kernel, served only when a connection goes
    do_request(c, env: default_env('GET', '/'), read_response: false)
    assert_raises(TimeoutError) { c.read_frame(0.5) }
    a.close
    type, = c.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
  end

  def test_invalid_concurrency_is_a_spawn_error
    summary, = start_error("PhusionPassenger.advertised_concurrency_level = 'many'\n#{HELLO_APP}")
    assert_includes summary, 'advertised_concurrency_level must be nil or an Integer'
  end

  def test_failing_start_handler_is_a_spawn_error
    summary, details = start_error(<<~RUBY)
      PhusionPassenger.on_event(:starting_worker_process) { |forked| raise ArgumentError, "no db (\#{forked})" }
      #{HELLO_APP}
    RUBY
    assert_equal 'ArgumentError: no db (false)', summary
    assert_includes details, 'config.ru:1'
  end
end

OOB_APP = <<~'RUBY'
  PhusionPassenger.require_passenger_lib 'rack/out_of_band_gc'
  TMP = ENV['TEST_TMP']

  PhusionPassenger.on_event(:oob_work) do
    File.open(File.join(TMP, 'oob-log'), 'a') { |f| f.puts "first #{GC.count}" }
    raise 'the first oob handler failed' if File.exist?(File.join(TMP, 'oob-fail'))
  end
  if ENV['OOB_KEYWORDS']
    use PhusionPassenger::Rack::OutOfBandGc, strategy: :counting, frequency: 2
  else
    use PhusionPassenger::Rack::OutOfBandGc, 2
  end
  PhusionPassenger.on_event(:oob_work) do
    File.open(File.join(TMP, 'oob-log'), 'a') { |f| f.puts "last #{GC.count}" }
  end
  HEADERS = { 'content-type' => 'text/plain' }.freeze
  run lambda { |env| [200, HEADERS, ["gc=#{GC.count}"]] }
RUBY

class TestOutOfBandWork < LoaderTest
  def oob_headers(res)
    res.headers.select { |n, _| n.casecmp?('!~Request-OOB-Work') }
  end

  def check_oob
    c = connect
    results = (1..4).map { |i| get(c, '/', i) }
    assert_equal [[], [['!~Request-OOB-Work', 'true']], [], [['!~Request-OOB-Work', 'true']]],
                 results.map { |r| oob_headers(r) }
    assert(results.all? { |r| r.status == 200 })
    c.write(Codec.frame(:OOB_WORK, 0))
    assert_equal [Codec::T[:OOB_DONE], 0, ''], c.read_frame
    log = File.read(path('oob-log')).lines.map(&:split)
    assert_equal %w[first last], log.map(&:first)
    # OutOfBandGc's handler (registered when the app was built, after both
    # of these) ran GC.start
    assert_operator get(c, '/', 5).body[/gc=(\d+)/, 1].to_i, :>, log[1][1].to_i
    # any request id is echoed; the connection goes on with requests
    c.write(Codec.frame(:OOB_WORK, 77))
    assert_equal [Codec::T[:OOB_DONE], 77, ''], c.read_frame
    assert_equal 200, get(c, '/', 6).status
  end

  def test_out_of_band_gc_every_second_request
    start_ok(OOB_APP)
    check_oob
  end

  def test_out_of_band_gc_keyword_form
    start_ok(OOB_APP, env: { 'OOB_KEYWORDS' => '1' })
    check_oob
  end

  def test_failing_handler_still_gives_oob_done
    start_ok(OOB_APP)
    File.write(path('oob-fail'), 'x')
    c = connect
    c.write(Codec.frame(:OOB_WORK, 3))
    assert_equal [Codec::T[:OOB_DONE], 3, ''], c.read_frame
    assert_equal %w[first last], File.read(path('oob-log')).lines.map { |l| l.split.first }
    assert_includes stderr, 'oob_work handler failed'
    assert_includes stderr, 'RuntimeError: the first oob handler failed'
  end

  def test_passenger_libs
    start_ok(<<~RUBY)
      require 'phusion_passenger/rack/out_of_band_gc'
      require 'phusion_passenger'
      PhusionPassenger.require_passenger_lib 'public_api'
      begin
        PhusionPassenger.require_passenger_lib 'no/such/lib'
        $unknown = 'no error'
      rescue LoadError => e
        $unknown = e.message
      end
      run lambda { |env| [200, {}, [$unknown]] }
    RUBY
    assert_includes get(connect, '/').body, 'cannot load such file -- phusion_passenger/no/such/lib'
  end

  def test_bad_frequency_is_a_spawn_error
    summary, = start_error(<<~RUBY)
      PhusionPassenger.require_passenger_lib 'rack/out_of_band_gc'
      use PhusionPassenger::Rack::OutOfBandGc
      #{HELLO_APP}
    RUBY
    assert_includes summary, 'ArgumentError: OutOfBandGc needs a frequency'
  end
end

# With Rack 2 installed, Rack.release is made to say 3: the loader takes
# the Rack 3 paths (to_ary, lower-case OOB header).
RACK3_APP = <<~'RUBY'
  def Rack.release = '3.1.0'
  TMP = ENV['TEST_TMP']
  PhusionPassenger.require_passenger_lib 'rack/out_of_band_gc'

  class AryBody
    def initialize(parts)
      @parts = parts
    end

    def each
      raise 'each must not be called when there is to_ary'
    end

    def to_ary
      File.write(File.join(TMP, 'to-ary'), 'x')
      close
      @parts
    end

    def close
      File.open(File.join(TMP, 'ary-closed'), 'a') { |f| f.write('x') }
    end
  end

  use PhusionPassenger::Rack::OutOfBandGc, 1
  run lambda { |env| [200, { 'content-type' => 'text/plain', 'set-cookie' => %w[a=1 b=2] }, AryBody.new(%w[a b])] }
RUBY

class TestRack3Paths < LoaderTest
  def test_to_ary_and_lower_case_oob_header
    start_ok(RACK3_APP)
    res = get(connect, '/')
    assert_equal 'ab', res.body
    assert_equal [%w[content-type text/plain], %w[set-cookie a=1], %w[set-cookie b=2],
                  %w[!~request-oob-work true]], res.headers
    assert_equal 'x', wait_file('to-ary')
    assert_includes wait_file('ary-closed'), 'x' # to_ary closed it; the loader's close may follow
    refute_includes stderr, 'error while serving'
  end

  def test_full_hijack_without_hijack_io
    start_ok(<<~'RUBY')
      def Rack.release = '3.1.0'
      run(lambda do |env|
        io = env['rack.hijack'].call
        io.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nhijack_io=#{env.key?('rack.hijack_io')}")
        io.close
        [200, {}, []]
      end)
    RUBY
    c = connect
    c.write(Codec.request(7, default_env('GET', '/'), flags: 4))
    type, _rid, payload = c.read_frame
    assert_equal [:RESPONSE, 101], [Codec::NAMES[type], parse_response(payload)[0]]
    assert_equal [Codec::T[:BODY], 7, 'hijack_io=false'], c.read_frame
    assert_equal Codec::T[:END], c.read_frame[0]
  end
end

class TestSpawnErrors < LoaderTest
  def test_ready_frame
    assert_equal Codec.frame(:READY, 0, Codec.u32(1)), start_ok(HELLO_APP)
  end

  def test_config_ru_that_raises
    summary, details = start_error("require 'json'\nraise 'broken app'\n")
    assert_equal 'RuntimeError: broken app', summary
    assert_includes details, "#{@root}/config.ru:2"
    refute_includes details, 'rack-loader.rb'
    assert_includes stderr, 'broken app'
  end

  def test_syntax_error
    summary, = start_error("run lambda { |env|\n")
    assert_match(/\ASyntaxError: .*config\.ru/, summary)
  end

  def test_load_error
    summary, = start_error("require 'no_such_library_here'\n#{HELLO_APP}")
    assert_equal 'LoadError: cannot load such file -- no_such_library_here', summary
  end

  def test_missing_run
    summary, = start_error("x = 1\n")
    assert_includes summary, 'missing run or map statement'
  end

  def test_missing_startup_file
    summary, = start_error(nil)
    assert_includes summary, 'config.ru does not exist'
  end

  def test_exit_at_load
    summary, = start_error("exit 0\n")
    assert_equal 'SystemExit: exit', summary
  end

  def test_fd3_must_be_a_listening_socket
    write_file('config.ru', HELLO_APP)
    mine, theirs = UNIXSocket.pair
    r, w = IO.pipe
    @pid = Process.spawn(child_env, RUBY, LOADER, 3 => theirs, 4 => w, in: File::NULL,
                                                  err: [path('stderr.log'), 'w'], chdir: @root)
    @pids << @pid
    [theirs, w].each(&:close)
    name, fields = readiness(read_all(r))
    assert_equal :SPAWN_ERROR, name
    assert_equal 'IOError: fd 3 is not a listening socket', fields[:summary]
    assert_equal 1, wait_exit.exitstatus
    mine.close
  end

  def test_custom_startup_file_and_end_marker
    data = start("run lambda { |env| [200, {}, [__FILE__]] }\n__END__\nnot ruby at all {{{\n",
                 startup_file: 'app.ru')
    assert_equal :READY, readiness(data)[0], stderr
    assert_equal File.join(@root, 'app.ru'), get(connect, '/').body
  end

  def test_fds_not_inherited_by_app_children
    start_ok(<<~'RUBY')
      run lambda { |env| [200, {}, [`sh -c 'readlink /proc/$$/fd/3 /proc/$$/fd/4; true' 2>&1`]] }
    RUBY
    assert_equal '', get(connect, '/').body
  end

  def test_stdout_and_stderr_are_sync
    start_ok(<<~'RUBY')
      run lambda { |env| $stdout.print 'out-line'; $stderr.print 'err-line'; [200, {}, [[$stdout.sync, $stderr.sync].inspect]] }
    RUBY
    assert_equal '[true, true]', get(connect, '/').body
    assert wait_until { File.read(path('stdout.log')).include?('out-line') }
    assert wait_until { stderr.include?('err-line') }
  end

  def test_environment
    start_ok(<<~'RUBY', env: { 'PASSENGER_BASE_URI' => '/sub', 'RACK_ENV' => nil, 'RAILS_ENV' => nil, 'PASSENGER_APP_ENV' => 'staging' })
      run lambda { |env| [200, {}, [[ENV['RACK_ENV'], ENV['RAILS_ENV'], ENV['RAILS_RELATIVE_URL_ROOT'], Dir.pwd].inspect]] }
    RUBY
    assert_equal ['staging', 'staging', '/sub', File.realpath(@root)].inspect, get(connect, '/').body
  end
end

class TestBundler < LoaderTest
  RACK_VERSION = Gem::Specification.find_by_name('rack').version.to_s

  BUNDLED_APP = <<~'RUBY'
    minitest = begin
      require 'minitest'
      'minitest loadable'
    rescue LoadError
      'minitest hidden'
    end
    run lambda { |env| [200, {}, ["#{ENV['BUNDLE_GEMFILE']} #{Rack.release} #{minitest}"]] }
  RUBY

  def test_gemfile_with_rack
    write_file('Gemfile', "source 'https://rubygems.org'\ngem 'rack'\n")
    write_file('Gemfile.lock', <<~LOCK)
      GEM
        remote: https://rubygems.org/
        specs:
          rack (#{RACK_VERSION})

      PLATFORMS
        ruby

      DEPENDENCIES
        rack
    LOCK
    start_ok(BUNDLED_APP)
    assert_equal "#{File.join(@root, 'Gemfile')} #{RACK_VERSION} minitest hidden", get(connect, '/').body
  end

  def test_gems_rb
    write_file('gems.rb', "gem 'rack'\n")
    start_ok(BUNDLED_APP)
    assert_equal "#{File.join(@root, 'gems.rb')} #{RACK_VERSION} minitest hidden", get(connect, '/').body
  end

  def test_missing_gem_is_a_spawn_error
    write_file('Gemfile', "source 'https://rubygems.org'\ngem 'rack'\ngem 'nonexistent_gem'\n")
    summary, details = start_error(HELLO_APP)
    assert_includes summary, "Bundler could not find gem 'nonexistent_gem'"
    assert_includes details, 'Bundler::GemNotFound'
  end

  def test_setup_load_paths_wins
    write_file('Gemfile', "gem 'nonexistent_gem'\n")
    write_file('config/setup_load_paths.rb', "$set_up = 'by setup_load_paths'\n")
    write_file('.bundle/environment.rb', "$set_up = 'by .bundle/environment'\n")
    start_ok("run lambda { |env| [200, {}, [$set_up]] }\n")
    assert_equal 'by setup_load_paths', get(connect, '/').body
  end

  def test_bundle_environment
    write_file('Gemfile', "gem 'nonexistent_gem'\n")
    write_file('.bundle/environment.rb', "$set_up = 'by .bundle/environment'\n")
    start_ok("run lambda { |env| [200, {}, [$set_up]] }\n")
    assert_equal 'by .bundle/environment', get(connect, '/').body
  end

  def test_gemfile_without_lock_in_a_read_only_app_root
    skip 'needs root and setpriv to run the loader as nobody' unless Process.uid.zero? && File.executable?('/usr/bin/setpriv')
    write_file('Gemfile', "source 'https://rubygems.org'\ngem 'rack'\n")
    File.chmod(0o755, @tmp)
    @loader_prefix = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
    start_ok(BUNDLED_APP, env: { 'HOME' => @tmp })
    assert_equal "#{File.join(@root, 'Gemfile')} #{RACK_VERSION} minitest hidden", get(connect, '/').body
    refute File.exist?(File.join(@root, 'Gemfile.lock'))
    assert_includes stderr, 'Bundler cannot write Gemfile.lock'
  end

  def test_without_gemfile_bundler_is_not_loaded
    start_ok("run lambda { |env| [200, {}, [defined?(Bundler::Runtime).inspect]] }\n")
    assert_equal 'nil', get(connect, '/').body
  end
end

class TestPreloader < LoaderTest
  def start_preloader(source)
    write_file('config.ru', source)
    @ctl, theirs = UNIXSocket.pair
    r, w = IO.pipe
    pid = Process.spawn(child_env('PASSENGER_SPAWN_METHOD' => 'smart'), RUBY, LOADER,
                        3 => theirs, 4 => w, in: File::NULL,
                        out: [path('stdout.log'), 'w'], err: [path('stderr.log'), 'w'], chdir: @root)
    @pid = pid
    @pids << pid
    theirs.close
    w.close
    data = read_all(r)
    r.close
    @control = Conn.new(@ctl)
    data
  end

  def fork_worker(name)
    sock_path = path("#{name}.sock")
    listener = UNIXServer.new(sock_path)
    ready_r, ready_w = IO.pipe
    out = File.open(path("#{name}.out"), 'w')
    @ctl.sendmsg(Codec.frame(:FORK, 0), 0, nil, Socket::AncillaryData.unix_rights(listener, ready_w, out))
    [listener, ready_w, out].each(&:close)
    type, rid, payload = @control.read_frame
    assert_equal [:FORKED, 0], [Codec::NAMES[type], rid], payload
    pid = payload.unpack1('N')
    @foreign << pid
    ready = read_all(ready_r)
    ready_r.close
    [pid, sock_path, ready]
  end

  def ppid_of(pid)
    File.read("/proc/#{pid}/status")[/^PPid:\s+(\d+)/, 1].to_i
  end

  def test_fork_serves_requests
    data = start_preloader(EVENTS_APP)
    assert_equal Codec.frame(:READY, 0, Codec.u32(1)), data
    refute File.exist?(path("started-#{@pid}")) # not in the preloader itself
    pid, sock_path, ready = fork_worker('w1')
    assert_equal @pid, ppid_of(pid)
    assert_equal Codec.frame(:READY, 0, Codec.u32(1)), ready, File.read(path('w1.out'))
    assert_equal 'true', wait_file("started-#{pid}")
    w1 = connect(sock_path)
    res = get(w1, '/')
    assert_equal "forked=true pid=#{pid} loaded_in=#{@pid} mt=false threads=true", res.body
    assert wait_until { File.read(path('w1.out')).include?("starting in #{pid}") }
    refute_includes File.read(path('stdout.log')), "starting in #{pid}"
    assert_operator get(w1, '/compact', 2).body.to_i, :>, 0 # GC.compact ran before the fork
    w1.close

    # a second worker, another pid; PING on the control channel
    pid2, sock2, ready2 = fork_worker('w2')
    refute_equal pid, pid2
    assert_equal :READY, readiness(ready2)[0]
    assert_includes get(connect(sock2), '/').body, "pid=#{pid2}"
    @ctl.write(Codec.frame(:PING, 0))
    assert_equal [Codec::T[:PONG], 0, ''], @control.read_frame

    # workers are reaped by the preloader: no zombies
    Process.kill('TERM', pid2)
    assert(wait_until { !File.exist?("/proc/#{pid2}") }, 'the exited worker stays a zombie')
    wait_file("stopped-#{pid2}")

    # EOF on the control channel: the preloader exits, the worker goes on
    @ctl.close
    assert_equal 0, wait_exit.exitstatus
    assert_includes get(connect(sock_path), '/', 2).body, "pid=#{pid}"
  end

  def test_fork_with_concurrency
    start_preloader("PhusionPassenger.advertised_concurrency_level = 3\n#{EVENTS_APP}")
    pid, sock_path, ready = fork_worker('w1')
    assert_equal Codec.frame(:READY, 0, Codec.u32(3)), ready
    assert_includes get(connect(sock_path), '/').body, "pid=#{pid} loaded_in=#{@pid} mt=true"
  end

  def test_fork_without_descriptors_is_an_error
    start_preloader(EVENTS_APP)
    @ctl.write(Codec.frame(:FORK, 0))
    type, _rid, payload = @control.read_frame
    assert_equal :ERROR, Codec::NAMES[type]
    assert_includes parse_error(payload)[1], 'three descriptors'
    pid, sock_path, = fork_worker('w1')
    assert_includes get(connect(sock_path), '/').body, "pid=#{pid}"
  end

  def test_worker_start_handler_failure_is_reported_on_its_pipe
    start_preloader(<<~RUBY)
      PhusionPassenger.on_event(:starting_worker_process) { |forked| raise "cannot connect (forked=\#{forked})" }
      #{HELLO_APP}
    RUBY
    pid, _sock, ready = fork_worker('w1')
    name, fields = readiness(ready)
    assert_equal :SPAWN_ERROR, name
    assert_equal 'RuntimeError: cannot connect (forked=true)', fields[:summary]
    assert(wait_until { !File.exist?("/proc/#{pid}") })
  end

  def test_preloader_spawn_error
    data = start_preloader("raise 'preload failed'\n")
    assert_equal :SPAWN_ERROR, readiness(data)[0]
    assert_equal 1, wait_exit.exitstatus
  end

  def test_preloader_exits_on_sigterm
    start_preloader(HELLO_APP)
    Process.kill('TERM', @pid)
    assert_equal 0, wait_exit.exitstatus
  end
end

# An app answering upgrade requests in every way the Rack SPEC allows.
WS_APP = <<~'RUBY'
  require 'digest'
  require 'base64'

  TMP = ENV['TEST_TMP']
  PhusionPassenger.advertised_concurrency_level = Integer(ENV['TEST_CONCURRENCY']) if ENV['TEST_CONCURRENCY']

  module WS
    GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11' # RFC 6455, section 1.3

    module_function

    def accept(env)
      Base64.strict_encode64(Digest::SHA1.digest(env['HTTP_SEC_WEBSOCKET_KEY'] + GUID))
    end

    def handshake(env)
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
        "Sec-WebSocket-Accept: #{accept(env)}\r\n\r\n"
    end

    def marker(name, text = 'x')
      File.write(File.join(TMP, name), text)
    end

    # Echoes until EOF, notes it, closes.
    def echo(io)
      loop { io.write(io.readpartial(65_536)) }
    rescue EOFError
      marker('app-saw-eof')
    ensure
      io.close
    end

    # A full hijack that writes +raw+ and keeps the socket open (the
    # response must end by its own framing, not by EOF).
    def raw(env, raw, close: false)
      io = env['rack.hijack'].call
      io.write(raw)
      close ? io.close : ($kept ||= []) << io
      [-1, {}, []]
    end
  end

  run(lambda do |env|
    case env['PATH_INFO']
    when '/ws'
      io = env['rack.hijack'].call
      WS.marker('hijack-io', (env['rack.hijack_io'].equal?(io) || Rack.release.to_i >= 3).to_s)
      io.write(WS.handshake(env))
      Thread.new { WS.echo(io) }
      [-1, {}, []]
    when '/ws_sync'
      io = env['rack.hijack'].call
      io.write(WS.handshake(env))
      WS.echo(io)
      [200, {}, ['ignored']]
    when '/ws_close_first'
      WS.raw(env, "#{WS.handshake(env)}goodbye", close: true)
    when '/ws_close_under' # the descriptor closed under its IO, as C code does it (EventMachine, nio4r)
      io = env['rack.hijack'].call
      io.write("#{WS.handshake(env)}bye")
      io.autoclose = false # the IO stays open in Ruby; only the descriptor goes
      IO.for_fd(io.fileno).close
      [-1, {}, []]
    when '/ws_close_elsewhere' # closed by one thread while another is blocked reading it
      io = env['rack.hijack'].call
      io.write("#{WS.handshake(env)}bye")
      reader = Thread.new do
        io.readpartial(1)
      rescue IOError => e
        WS.marker('reader-woken', e.message)
      end
      Thread.new do
        Thread.pass until reader.stop?
        io.close
      end
      [-1, {}, []]
    when '/ws_partial'
      headers = { 'upgrade' => 'websocket', 'connection' => 'Upgrade', 'sec-websocket-accept' => WS.accept(env),
                  'rack.hijack' => ->(io) { WS.echo(io) } }
      [101, headers, []]
    when '/ws_partial_raise'
      [101, { 'upgrade' => 'websocket', 'rack.hijack' => ->(_io) { raise 'failing in the hijack callback' } }, []]
    when '/ws_decline'
      [426, { 'content-type' => 'text/plain', 'upgrade' => 'websocket' }, ['upgrade required']]
    when '/ws_403'
      WS.raw(env, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n" \
                  "Connection: close, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\r\ndeniedGARBAGE")
    when '/ws_chunked'
      WS.raw(env, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-A: 1\r\n\r\n" \
                  "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nGARBAGE")
    when '/ws_eof'
      WS.raw(env, "HTTP/1.0 200 Fine\nContent-Type: text/plain\n\nuntil eof", close: true)
    when '/ws_bad_head'
      WS.raw(env, "garbage\r\n\r\n", close: true)
    when '/ws_no_head'
      WS.raw(env, '', close: true)
    when '/ws_cut'
      WS.raw(env, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close: true)
    when '/flags'
      [200, {}, ["#{env['rack.hijack?']} #{env.key?('rack.hijack')} #{env.key?('rack.hijack_io')}"]]
    when '/101'
      [101, { 'upgrade' => 'websocket' }, []]
    when '/partial_on_ordinary'
      [200, { 'content-type' => 'text/plain', 'rack.hijack' => ->(io) { io.write('streamed') && io.close } }, ['ignored']]
    when '/hijack_after_body' # the body read from rack.input, as a long poll reads its form first
      input = env['rack.input'].read
      io = env['rack.hijack'].call
      from_socket = io.read # end of file at once: the body is rack.input's
      io.write("HTTP/1.1 200 OK\r\nContent-Length: #{input.bytesize + from_socket.bytesize + 1}\r\n\r\n" \
               "#{input}|#{from_socket}")
      io.close
      [-1, {}, []]
    when '/long_poll' # a chunked response written over time from another thread
      io = env['rack.hijack'].call
      Thread.new do
        io.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        sleep 0.01 until File.exist?(File.join(TMP, 'go-on'))
        io.write("6\r\nsecond\r\n0\r\n\r\n")
        io.close
      end
      [200, {}, []]
    else
      [404, {}, ['not found']]
    end
  end)
RUBY

WS_KEY = 'dGhlIHNhbXBsZSBub25jZQ==' # RFC 6455's example: its accept value is below
WS_ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
WS_HEADERS = [%w[Upgrade websocket], %w[Connection Upgrade], ['Sec-WebSocket-Accept', WS_ACCEPT]].freeze

def upgrade_env(path, extra = {})
  default_env('GET', path, { 'HTTP_UPGRADE' => 'websocket', 'HTTP_CONNECTION' => 'Upgrade',
                             'HTTP_SEC_WEBSOCKET_KEY' => WS_KEY, 'HTTP_SEC_WEBSOCKET_VERSION' => '13' }.merge(extra))
end

# The agent's side of a tunnel.
module Tunnels
  # Sends an upgrade REQUEST (+ +extra+ bytes right behind it) and expects
  # the RESPONSE 101: its headers.
  def open_tunnel(conn, path, rid: 7, extra: ''.b, env: {})
    conn.write(Codec.request(rid, upgrade_env(path, env), flags: 4) + extra)
    type, frid, payload = conn.read_frame
    assert_equal [:RESPONSE, rid], [Codec::NAMES[type], frid], "stderr:\n#{stderr}"
    status, reason, headers = parse_response(payload)
    assert_equal [101, 'Switching Protocols'], [status, reason]
    headers
  end

  # Reads BODY frames of +rid+ until +count+ bytes came.
  def read_bytes(conn, count, rid: 7)
    got = ''.b
    while got.bytesize < count
      type, frid, payload = conn.read_frame
      assert_equal [:BODY, rid], [Codec::NAMES[type], frid], "after #{got.bytesize} of #{count} bytes"
      assert payload.bytesize.between?(1, 65_536)
      got << payload
    end
    got
  end

  # Reads the rest of a direction: [bytes, what ended it (:END or :EOF)].
  def read_to_end(conn, rid: 7)
    got = ''.b
    loop do
      f = conn.read_frame
      return [got, :EOF] if f.nil?

      type, frid, payload = f
      assert_equal rid, frid
      return [got, :END] if Codec::NAMES[type] == :END

      assert_equal :BODY, Codec::NAMES[type]
      got << payload
    end
  end

  def body(data, rid: 7) = Codec.frame(:BODY, rid, data)
  def end_frame(rid: 7) = Codec.frame(:END, rid)
end

class TestUpgrade < LoaderTest
  include Tunnels

  def setup
    super
    start_ok(WS_APP)
  end

  def test_full_hijack_websocket_echo
    c = connect
    assert_equal WS_HEADERS, open_tunnel(c, '/ws', extra: body('early'))
    assert_equal 'true', wait_file('hijack-io') # rack.hijack_io is the IO (Rack 2)
    assert_equal 'early', read_bytes(c, 5) # sent before the app hijacked: not lost
    data = Random.new(1).bytes(1 << 20)
    writer = Thread.new do
      rng = Random.new(2)
      pos = 0
      while pos < data.bytesize
        n = rng.rand(1..65_536)
        c.write(body(data.byteslice(pos, n)))
        pos += n
      end
    end
    echoed = read_bytes(c, data.bytesize)
    writer.join
    assert_equal Digest::SHA256.hexdigest(data), Digest::SHA256.hexdigest(echoed)
    c.write(end_frame)
    assert_equal ['', :END], read_to_end(c) # agent END → app EOF → app closes → END
    assert_equal 'x', wait_file('app-saw-eof')
    assert c.closed?
    assert c.released?(7)
    assert_equal 'true true false', get(connect, '/flags').body # the next connection is served
  end

  # An app that finishes the tunnel before it returns keeps its slot to the
  # end: nothing is released.
  def test_synchronous_full_hijack
    c = connect
    assert_equal WS_HEADERS, open_tunnel(c, '/ws_sync')
    c.write(body('in call'))
    assert_equal 'in call', read_bytes(c, 7)
    c.write(end_frame)
    assert_equal ['', :END], read_to_end(c)
    assert c.closed?
    refute c.released?(7)
  end

  def test_app_closes_first
    c = connect
    open_tunnel(c, '/ws_close_first')
    assert_equal ['goodbye', :END], read_to_end(c)
    c.write(end_frame)
    assert c.closed?
    # the app is gone: a BODY sent after its END cannot be delivered, the tunnel ends
    c = connect
    open_tunnel(c, '/ws_close_first')
    assert_equal ['goodbye', :END], read_to_end(c)
    c.write(body('late'))
    assert c.closed?
    refute_includes stderr, 'error'
  end

  # However the app's end is closed, the loader's end reads EOF: under the
  # app's IO (which Ruby still thinks open), or by another thread than the
  # one reading it. Nothing of the loader keeps the app's end open.
  def test_app_closing_its_end_any_way_ends_its_direction
    %w[/ws_close_under /ws_close_elsewhere].each do |path|
      c = connect
      open_tunnel(c, path)
      assert_equal ['bye', :END], read_to_end(c), path
      c.write(end_frame)
      assert c.closed?, path
    end
    assert_equal 'stream closed in another thread', wait_file('reader-woken')
    refute_includes stderr, 'error'
  end

  def test_partial_hijack
    c = connect
    headers = open_tunnel(c, '/ws_partial')
    assert_equal [%w[upgrade websocket], %w[connection Upgrade], ['sec-websocket-accept', WS_ACCEPT]], headers
    c.write(body('partial'))
    assert_equal 'partial', read_bytes(c, 7)
    c.write(end_frame)
    assert_equal ['', :END], read_to_end(c)
    assert c.closed?
  end

  def test_partial_hijack_callback_raising_closes_the_connection
    c = connect
    open_tunnel(c, '/ws_partial_raise')
    assert_equal ['', :EOF], read_to_end(c)
    assert(wait_until { stderr.include?('failing in the hijack callback') })
    assert_equal 1, stderr.scan('failing in the hijack callback').size
    assert_equal 'true true false', get(connect, '/flags').body
  end

  def test_declined_upgrade_then_next_request
    c = connect
    res = do_request(c, env: upgrade_env('/ws_decline'), flags: 4)
    assert_equal [426, 'upgrade required'], [res.status, res.body]
    assert_equal %i[RESPONSE BODY END], res.frames.map(&:first)
    res = do_request(c, rid: 8, env: upgrade_env('/flags'), flags: 4) # not hijacked: an ordinary response
    assert_equal 'true true false', res.body
    assert_equal 'true true false', get(c, '/flags', 9).body
    # tunnel bytes the agent sent ahead, that nobody will read: the connection closes after END
    c.write(Codec.request(10, upgrade_env('/ws_decline'), flags: 4) + Codec.frame(:BODY, 10, 'early'))
    assert_equal [Codec::T[:RESPONSE], Codec::T[:BODY], Codec::T[:END]], Array.new(3) { c.read_frame[0] }
    assert c.closed?
    refute_includes stderr, 'protocol error'
  end

  # /ws_403 and /ws_chunked keep the app's end open after their response
  # (which ends by its own framing): the request may be released, and its
  # connection closed after it, so each gets a connection of its own,
  # closed after it (the loader serves one connection at a time).
  def test_full_hijack_with_an_ordinary_response
    once = connect
    res = do_request(once, rid: 1, env: upgrade_env('/ws_403'), flags: 4)
    assert_equal [403, 'Forbidden', [%w[Content-Type text/plain], %w[Content-Length 6]], 'denied', true],
                 [res.status, res.reason, res.headers, res.body, res.ended]
    once.close
    once = connect
    res = do_request(once, rid: 2, env: upgrade_env('/ws_chunked'), flags: 4)
    assert_equal [200, 'OK', [%w[X-A 1]], 'hello, world', true],
                 [res.status, res.reason, res.headers, res.body, res.ended]
    once.close
    c = connect
    res = do_request(c, rid: 3, env: upgrade_env('/ws_eof'), flags: 4)
    assert_equal [200, 'Fine', [%w[Content-Type text/plain]], 'until eof', true],
                 [res.status, res.reason, res.headers, res.body, res.ended]
    refute c.released?(3), 'the app closed its end before it returned'
    assert_equal 'true true false', get(c, '/flags', 4).body # the connection goes on
  end

  def test_invalid_hijacked_responses_are_502
    c = connect
    res = do_request(c, rid: 1, env: upgrade_env('/ws_bad_head'), flags: 4)
    assert_equal 502, res.error[0]
    assert_includes res.error[1], 'invalid status line "garbage"'
    res = do_request(c, rid: 2, env: upgrade_env('/ws_no_head'), flags: 4)
    assert_equal 502, res.error[0]
    assert_includes res.error[1], 'closed the connection without writing a response head'
    res = do_request(c, rid: 3, env: upgrade_env('/ws_cut'), flags: 4)
    assert_equal [200, 'short', 502], [res.status, res.body, res.error[0]]
    assert_includes res.error[1], 'cut short'
    assert_equal 'true true false', get(c, '/flags', 4).body
    assert_equal 2, stderr.scan('wrote no valid response head').size # logged once each
    assert_equal 1, stderr.scan('cut short').size
  end

  # Any request can be hijacked (a long poll, a stream); only an upgrade
  # request can be answered with a 101.
  def test_ordinary_requests_can_be_hijacked
    once = connect # the app's end stays open: maybe released (see above)
    res = get(once, '/ws_chunked', 2)
    assert_equal [200, [%w[X-A 1]], 'hello, world', true], [res.status, res.headers, res.body, res.ended]
    once.close # one connection at a time (concurrency 1)
    c = connect
    assert_equal 'true true false', get(c, '/flags').body
    res = get(c, '/partial_on_ordinary', 3)
    assert_equal [200, [%w[content-type text/plain]], 'streamed', true],
                 [res.status, res.headers, res.body, res.ended]
    res = do_request(c, rid: 4, env: default_env('POST', '/hijack_after_body'), body: 'form=1')
    assert_equal [200, 'form=1|'], [res.status, res.body]
    assert_equal 'true true false', get(c, '/flags', 5).body # the connection goes on
    c.close
    res = do_request(connect, rid: 6, env: default_env('HEAD', '/ws_403')) # open end: maybe released
    assert_equal [403, '', true], [res.status, res.body, res.ended]
    refute_includes stderr, 'error'
  end

  def test_a_hijacked_response_streams
    c = connect
    c.write(Codec.request(1, default_env('GET', '/long_poll')))
    type, _rid, payload = c.read_frame
    assert_equal [:RESPONSE, 200, [%w[Content-Type text/plain]]],
                 [Codec::NAMES[type], parse_response(payload)[0], parse_response(payload)[2]]
    assert_equal [Codec::T[:BODY], 1, 'first'], c.read_frame # before the app wrote the rest
    # The app returned and streams from its own thread: the process, which
    # serves one request at a time, takes another meanwhile.
    assert c.released?(1)
    assert_equal 'true true false', get(connect, '/flags').body
    File.write(path('go-on'), 'x')
    assert_equal [Codec::T[:BODY], 1, 'second'], c.read_frame
    assert_equal Codec::T[:END], c.read_frame[0]
    assert c.closed?, 'a released request is the last on its connection'
  end

  def test_only_an_upgrade_request_switches_protocols
    c = connect
    key = { 'HTTP_SEC_WEBSOCKET_KEY' => WS_KEY } # what the app needs, without the Upgrade
    res = do_request(c, rid: 1, env: default_env('GET', '/ws_close_first', key)) # a full hijack writing a 101
    assert_equal 502, res.error[0]
    assert_includes res.error[1], 'a 101 (Switching Protocols) answers only a request that asked to upgrade'
    assert_equal 500, do_request(c, rid: 2, env: default_env('GET', '/ws_partial', key)).status # partial, 101
    assert_equal 500, get(c, '/101', 3).status # a 101 without a hijack
    assert_equal 500, do_request(c, rid: 4, env: upgrade_env('/101'), flags: 4).status
    assert_includes stderr, 'a 101 response needs a hijacked connection'
    assert_equal 2, stderr.scan('a 101 (Switching Protocols) answers only').size # logged once each
    assert_equal 'true true false', get(c, '/flags', 5).body
  end

  def test_agent_error_ends_the_tunnel
    c = connect
    open_tunnel(c, '/ws')
    c.write(Codec.frame(:ERROR, 7, [502].pack('n') + Codec.bytes('client gone')))
    assert c.closed?
    assert_equal 'x', wait_file('app-saw-eof')
    assert_includes stderr, 'the agent ended the tunnel: ERROR 502: client gone'
  end

  def test_agent_closing_ends_the_tunnel
    c = connect
    open_tunnel(c, '/ws')
    c.close
    assert_equal 'x', wait_file('app-saw-eof')
    assert_equal 'true true false', get(connect, '/flags').body
  end

  def test_unexpected_frame_in_a_tunnel_closes_it
    c = connect
    open_tunnel(c, '/ws')
    c.write(Codec.frame(:PING, 7))
    assert_equal ['', :EOF], read_to_end(c)
    assert_includes stderr, 'unexpected message type PING in a tunnel'
  end

  # The app took the WebSocket over and returned: the process, which serves
  # one request at a time, takes others while the tunnel is open.
  def test_a_released_tunnel_leaves_the_process_free
    a = connect
    open_tunnel(a, '/ws')
    b = connect
    assert_equal 'true true false', get(b, '/flags').body
    assert a.released?(7)
    a.write(body('still open'))
    assert_equal 'still open', read_bytes(a, 10)
    assert_equal 'true true false', get(b, '/flags', 2).body
    a.write(end_frame)
    assert_equal ['', :END], read_to_end(a)
    assert a.closed?
  end

  def test_sigterm_ends_an_open_tunnel
    c = connect
    open_tunnel(c, '/ws')
    Process.kill('TERM', @pid)
    assert_equal 0, wait_exit.exitstatus
    assert c.closed?
  end
end

class TestUpgradeThreaded < LoaderTest
  def setup
    super
    start_ok(WS_APP, concurrency: 4, env: { 'TEST_CONCURRENCY' => '4' })
  end

  def test_ordinary_request_while_a_tunnel_is_open
    a = connect
    a.write(Codec.request(7, upgrade_env('/ws'), flags: 4))
    type, = a.read_frame
    assert_equal :RESPONSE, Codec::NAMES[type]
    b = connect
    assert_equal 'true true false', get(b, '/flags').body
    a.write(Codec.frame(:BODY, 7, 'still open'))
    assert_equal [Codec::T[:BODY], 7, 'still open'], a.read_frame
    assert_equal 'true true false', get(b, '/flags', 2).body
    a.write(Codec.frame(:END, 7))
    assert_equal Codec::T[:END], a.read_frame[0]
    assert a.closed?
  end

  def test_sigterm_ends_open_tunnels
    a = connect
    a.write(Codec.request(7, upgrade_env('/ws'), flags: 4))
    assert_equal :RESPONSE, Codec::NAMES[a.read_frame[0]]
    Process.kill('TERM', @pid)
    assert_equal 0, wait_exit.exitstatus
    assert a.closed?
  end
end

# EventMachine on a hijacked socket, as faye-websocket uses it: EM.attach,
# send_data, close_connection_after_writing. EM's C++ side leaves the
# descriptor of an attached IO open; its unbind, on the reactor thread,
# closes the IO. "bye" makes the app close.
EM_APP = <<~'RUBY'
  require 'eventmachine'

  PhusionPassenger.advertised_concurrency_level = 0

  module Echo
    def receive_data(data)
      data == 'bye' ? close_connection_after_writing : send_data(data)
    end
  end

  run(lambda do |env|
    io = env['rack.hijack'].call
    Thread.new { EM.run } unless EM.reactor_running?
    Thread.pass until EM.reactor_running?
    EM.schedule do
      EM.attach(io, Echo).send_data("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
    end
    [-1, {}, []]
  end)
RUBY

# A faye-websocket echo server, as apache-test/apps/websocket-faye has it.
FAYE_APP = <<~'RUBY'
  require 'faye/websocket'

  PhusionPassenger.advertised_concurrency_level = 0

  run(lambda do |env|
    ws = Faye::WebSocket.new(env)
    ws.on(:message) { |event| event.data == 'bye' ? ws.close(1000) : ws.send(event.data) }
    ws.rack_response
  end)
RUBY

# A client's WebSocket frame (RFC 6455, 5.2): short, so the length fits in
# 7 bits, and masked.
def client_ws_frame(opcode, payload)
  key = [0x37, 0xfa, 0x21, 0x3d]
  masked = payload.b.bytes.each_with_index.map { |b, i| b ^ key[i % 4] }
  [0x80 | opcode, 0x80 | payload.bytesize, *key, *masked].pack('C*')
end

# Apps on the event loops WebSocket libraries use, with the real libraries
# where they are installed (Debian's ruby-eventmachine, ruby-faye-websocket).
class TestUpgradeEventLoops < LoaderTest
  include Tunnels

  WS_CLOSE = 8
  WS_TEXT = 1
  NORMAL = [1000].pack('n') # the close code of a normal closure
  SERVER_CLOSE = "\x88\x02\x03\xE8".b # the server's close frame, with that code

  def start_if_loadable(app, feature)
    skip "needs #{feature}" unless system(child_env, RUBY, '-e', "require '#{feature}'", out: File::NULL,
                                                                                          err: File::NULL)
    start_ok(app, concurrency: 0)
  end

  def test_eventmachine_closing_an_attached_socket_ends_its_direction
    start_if_loadable(EM_APP, 'eventmachine')
    c = connect
    assert_equal [%w[Upgrade echo], %w[Connection Upgrade]], open_tunnel(c, '/')
    c.write(body('hello'))
    assert_equal 'hello', read_bytes(c, 5)
    c.write(body('bye'))
    assert_equal ['', :END], read_to_end(c)
    c.write(end_frame)
    assert c.closed?
    assert_empty stderr
  end

  # The closing handshake, either side first. faye closes the socket once
  # close frames went both ways (RFC 6455, 7.1.1): when it answers the
  # client's, or when the client answers its own, which it waits 30 s for.
  def test_faye_websocket_closing_handshakes
    start_if_loadable(FAYE_APP, 'faye/websocket')
    c = connect
    assert_equal WS_HEADERS, open_tunnel(c, '/', env: { 'HTTP_HOST' => 'localhost' })
    c.write(body(client_ws_frame(WS_TEXT, 'hello')))
    assert_equal "\x81\x05hello".b, read_bytes(c, 7)
    c.write(body(client_ws_frame(WS_CLOSE, NORMAL)))
    assert_equal [SERVER_CLOSE, :END], read_to_end(c)
    c.write(end_frame)
    assert c.closed?

    c = connect
    open_tunnel(c, '/', env: { 'HTTP_HOST' => 'localhost' })
    c.write(body(client_ws_frame(WS_TEXT, 'bye')))
    assert_equal SERVER_CLOSE, read_bytes(c, 4)
    assert_raises(TimeoutError) { c.read_frame(0.5) } # faye waits for the client's close frame
    c.write(body(client_ws_frame(WS_CLOSE, NORMAL)))
    assert_equal ['', :END], read_to_end(c)
    c.write(end_frame)
    assert c.closed?
    assert_empty stderr
  end
end

# The loader's own module, loaded into this process (its main does not run).
module LoadsLoader
  def loader
    load LOADER unless defined?(PassengerRackLoader)
    PassengerRackLoader
  end
end

# The raw response head an app writes after a full hijack, taken apart.
class TestHijackedHeads < Minitest::Test
  include LoadsLoader

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def app_stream(written)
    app, ours = UNIXSocket.pair
    app.write(written)
    [loader::AppStream.new(ours), app]
  end

  def test_head_deadline_and_size_limit
    stream, app = app_stream("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n")
    e = assert_raises(loader::HijackError) { stream.read_head(now + 0.2) } # the app is silent, not gone
    assert_equal 'no complete response head within 30 s', e.message
    app.close
    stream, app = app_stream("HTTP/1.1 200 OK\r\n#{"X-Big: #{'b' * 1000}\r\n" * 70}\r\n")
    e = assert_raises(loader::HijackError) { stream.read_head(now + 5) }
    assert_equal 'the response head exceeds 64 KiB', e.message
    app.close
    stream, app = app_stream("HTTP/1.1 101 Switching Protocols\n\nfirst bytes")
    assert_equal "HTTP/1.1 101 Switching Protocols\n\n", stream.read_head(now + 5)
    app.close
    assert_equal ['first bytes', nil], [stream.read_some(65_536), stream.read_some(65_536)]
  end

  def test_parse_head
    l = loader
    assert_equal [101, '', [%w[Upgrade websocket]]], l.parse_head("HTTP/1.1 101\r\nUpgrade:  websocket \r\n\r\n")
    {
      "HTTP/1.1 100 Continue\r\n\r\n" => 'status 100 is not a final response (nor 101)',
      "HTTP/2 200 OK\r\n\r\n" => 'invalid status line "HTTP/2 200 OK"',
      "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n" => 'invalid header line " folded"',
      "HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n" => 'invalid header line "Bad Name: 1"'
    }.each do |head, message|
      e = assert_raises(l::HijackError, head) { l.parse_head(head) }
      assert_equal message, e.message
    end
  end

  def test_relayed_framing
    l = loader
    assert_equal [0, [%w[Content-Length 5]]], l.relayed_framing(200, [%w[Content-Length 5]], true) # HEAD
    assert_equal [0, []], l.relayed_framing(304, [%w[Connection keep-alive]], false)
    assert_equal [5, [%w[content-length 5], %w[Content-Length 5]]],
                 l.relayed_framing(200, [%w[content-length 5], %w[Content-Length 5]], false)
    assert_equal [:eof, []], l.relayed_framing(200, [%w[Transfer-Encoding gzip]], false)
    e = assert_raises(l::HijackError) { l.relayed_framing(200, [%w[Content-Length 5], %w[Content-Length 6]], false) }
    assert_equal 'invalid Content-Length "5, 6"', e.message
  end
end

class TestVectors < Minitest::Test
  include LoadsLoader

  def doc = JSON.parse(File.read(VECTORS))

  def test_own_codec_matches_vectors
    doc['vectors'].each do |vec|
      data = [vec['hex']].pack('H*')
      fields = Codec.vector_fields(vec)
      name, rid, decoded = Codec.decode(data)
      assert_equal [vec['type'].to_sym, vec['request_id']], [name, rid], vec['name']
      assert_equal fields, decoded, vec['name']
      assert_equal data, Codec.encode(name, rid, fields), vec['name']
      (0...data.bytesize).each { |i| assert_nil Codec.decode(data.byteslice(0, i)), vec['name'] }
    end
    doc['invalid'].each do |vec|
      data = [vec['hex']].pack('H*')
      if vec['error'] == 'incomplete'
        assert_nil Codec.decode(data), vec['name']
      else
        e = assert_raises(Codec::VecError, vec['name']) { Codec.decode(data) }
        assert_equal vec['error'], e.kind, vec['name']
      end
    end
  end

  # Reads one frame with the loader's reader: [type, rid, payload] or nil;
  # raises the loader's ProtocolError.
  def loader_read(l, data)
    conn = l::Connection.new(StringIO.new(data))
    type = conn.read_frame
    type && [type, conn.rid, conn.payload, conn]
  end

  def test_loader_codec_matches_vectors
    l = loader
    doc['vectors'].each do |vec|
      data = [vec['hex']].pack('H*')
      fields = Codec.vector_fields(vec)
      rid = vec['request_id']
      type, got_rid, payload, conn = loader_read(l, data)
      assert_equal [Codec::T[vec['type'].to_sym], rid], [type, got_rid], vec['name']
      (0...data.bytesize).each do |i|
        if i.zero?
          assert_nil loader_read(l, ''.b)
        else
          e = assert_raises(l::ProtocolError, vec['name']) { loader_read(l, data.byteslice(0, i)) }
          assert_equal :eof, e.kind # closed in the middle of a frame: incomplete
        end
      end
      case vec['type']
      when 'REQUEST'
        env = {}
        assert_equal fields[:flags], conn.decode_request(env, {})
        expected = {}
        fields[:env].each do |n, v|
          expected[n] = expected.key?(n) && n.start_with?('HTTP_') ? "#{expected[n]}, #{v}" : v
        end
        assert_equal expected, env, vec['name']
        assert(env.values.all? { |v| v.encoding == Encoding::BINARY })
      when 'BODY'
        assert_equal fields[:data], payload
      when 'ERROR'
        assert_equal [vec['code'], vec['message']], l.decode_error(payload)
      end
      # what the loader sends, it encodes byte for byte
      case vec['type']
      when 'READY'
        assert_equal data, l.frame(l::T_READY, rid, [vec['concurrency']].pack('N'))
      when 'SPAWN_ERROR'
        assert_equal data, l.frame(l::T_SPAWN_ERROR, rid, l.encode_bytes(fields[:summary]) +
                                                          l.encode_bytes(fields[:details]))
      when 'RESPONSE'
        rid4 = [rid].pack('N')
        if vec['reason'] == 'No Content' || [101, 200].include?(vec['status'])
          grouped = {}
          vec['headers'].each { |n, v| (grouped[n] ||= []) << v }
          rack2 = grouped.transform_values { |vs| vs.join("\n") }
          assert_equal data, l.encode_head(rid4, vec['status'], rack2), vec['name']
          assert_equal data, l.encode_head(rid4, vec['status'], grouped), vec['name']
        end
        # a relayed head (rack.hijack) keeps the app's own reason phrase
        assert_equal data, l.encode_head(rid4, vec['status'], vec['headers'], vec['reason'].b), vec['name']
      when 'ERROR'
        assert_equal data, l.error_frame(vec['code'], vec['message'], rid)
      when 'FORKED'
        assert_equal data, l.frame(l::T_FORKED, rid, [vec['pid']].pack('N'))
      when 'BODY', 'END', 'PONG', 'READ_BODY', 'OOB_DONE'
        assert_equal data, l.frame(type, rid, payload)
      end
    end
    doc['invalid'].each do |vec|
      data = [vec['hex']].pack('H*')
      if vec['error'] == 'incomplete'
        if data.empty?
          assert_nil loader_read(l, data)
        else
          e = assert_raises(l::ProtocolError, vec['name']) { loader_read(l, data) }
          assert_equal :eof, e.kind, vec['name']
        end
        next
      end
      e = assert_raises(l::ProtocolError, vec['name']) do
        type, _rid, payload, conn = loader_read(l, data)
        case type
        when l::T_REQUEST then conn.decode_request({}, {})
        when l::T_ERROR then l.decode_error(payload)
        else raise l::ProtocolError.new('not for an application', 0, :unexpected)
        end
      end
      if vec['error'] == 'malformed' && ![l::T_REQUEST, l::T_ERROR, l::T_PING, l::T_READY].include?(data.getbyte(3))
        # a message an app never receives (HELLO, STATUS, ...): refused anyway
        assert_includes %i[malformed unexpected], e.kind, vec['name']
      else
        assert_equal vec['error'].to_sym, e.kind, vec['name']
      end
    end
  end
end
