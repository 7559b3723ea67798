# frozen_string_literal: true
#
# The Rack loader of passenger-agent.
#
# The agent starts one of these per Ruby application process:
#
#     ruby rack-loader.rb          (cwd = the application root)
#
# with, in the environment, PASSENGER_APP_ROOT (absolute), PASSENGER_STARTUP_FILE
# (relative to the app root, default config.ru), PASSENGER_APP_ENV/RACK_ENV/
# RAILS_ENV, PASSENGER_BASE_URI (under a sub-URI) and PASSENGER_SPAWN_METHOD.
#
# Direct mode: fd 3 is a listening Unix stream socket and fd 4 the write end
# of the readiness pipe. The loader sets up Bundler, evaluates the rackup
# file, reports READY (or SPAWN_ERROR) on fd 4 and serves requests over the
# frame protocol of docs/protocol.md on the connections it accepts on fd 3.
#
# Preloader mode (PASSENGER_SPAWN_METHOD=smart): fd 3 is a connected control
# socket. The app is loaded once; every FORK frame (with three descriptors
# riding along) forks a worker that serves like a direct-mode process.
#
# Only Ruby's standard library is used; Rack 2 and Rack 3 both work. See
# docs/rack.md for the env we build, rack.hijack (long polls, WebSockets), the
# PhusionPassenger API, out-of-band work, smart spawning and Bundler.

require 'socket'
require 'io/nonblock'

# ---------------------------------------------------------------------------
# The PhusionPassenger API: present before config.ru is evaluated
# ---------------------------------------------------------------------------

module PhusionPassenger
  # The version of the Passenger API this loader imitates (not its own).
  VERSION_STRING = '6.0.0'
  PACKAGE_NAME = 'passenger-agent'

  # The libraries require_passenger_lib accepts: they are built in here.
  PROVIDED_LIBS = %w[public_api rack/out_of_band_gc].freeze

  @event_handlers = {}
  @advertised_concurrency_level = nil

  class << self
    # How many requests one process may serve at once: nil (the default)
    # means 1, 0 means unlimited. Set it while the app loads.
    attr_accessor :advertised_concurrency_level

    # Registers a block for an event of this process:
    #   :starting_worker_process  |forked|  before the first request
    #   :stopping_worker_process            when the process exits cleanly
    #   :starting_request_handler_thread    in each thread that serves requests
    #   :oob_work                           out-of-band work (see OutOfBandGc)
    #   :after_installing_signal_handlers   once the loader's traps are set
    # Other names are accepted and never fired, as in Passenger.
    def on_event(name, &block)
      raise ArgumentError, 'PhusionPassenger.on_event needs a block' unless block

      (@event_handlers[name.to_sym] ||= []) << block
      nil
    end

    # Runs the handlers of an event, in the order they were registered.
    def call_event(name, *args)
      handlers = @event_handlers[name.to_sym]
      handlers&.each { |handler| handler.call(*args) }
      nil
    end

    # The handlers of an event (a copy).
    def event_handlers(name)
      (@event_handlers[name.to_sym] || []).dup
    end

    # Passenger's way of loading its own libraries. The ones applications
    # use are built into this loader; any other name is a LoadError.
    def require_passenger_lib(name)
      lib = name.to_s.delete_suffix('.rb').delete_prefix('phusion_passenger/')
      return true if PROVIDED_LIBS.include?(lib)

      raise LoadError, "cannot load such file -- phusion_passenger/#{lib} (passenger-agent's " \
                       "Rack loader provides only #{PROVIDED_LIBS.join(', ')})"
    end
  end

  module Rack
    # Middleware asking for out-of-band garbage collection every N requests:
    #
    #   PhusionPassenger.require_passenger_lib 'rack/out_of_band_gc'
    #   use PhusionPassenger::Rack::OutOfBandGc, 5
    #   use PhusionPassenger::Rack::OutOfBandGc, strategy: :counting, frequency: 5
    #
    # Every Nth response carries the `!~Request-OOB-Work` header; the agent
    # strips it, takes the process out of rotation and sends OOB_WORK, and
    # the :oob_work handler registered here runs GC.start.
    class OutOfBandGc
      HEADER = '!~Request-OOB-Work'
      HEADER_RACK3 = '!~request-oob-work' # Rack 3 header names are lower case

      attr_reader :strategy, :frequency

      def initialize(app, *args, **options)
        options = args.shift.merge(options) if args.first.is_a?(Hash)
        @app = app
        @strategy = (options[:strategy] || :counting).to_sym
        @logger = options.fetch(:logger) { args[1] }
        @header = rack3? ? HEADER_RACK3 : HEADER
        case @strategy
        when :counting
          frequency = options.fetch(:frequency) { args[0] }
          unless frequency.is_a?(Integer) && frequency.positive?
            raise ArgumentError, "OutOfBandGc needs a frequency (a positive Integer), not #{frequency.inspect}"
          end

          @frequency = frequency
          @count = 0
          @mutex = Mutex.new
          ::PhusionPassenger.on_event(:oob_work) { collect }
        when :gctools_oobgc
          require 'gctools/oobgc'
          ::GC::OOB.setup
          ::PhusionPassenger.on_event(:oob_work) { ::GC::OOB.run }
        else
          raise ArgumentError, "unknown OutOfBandGc strategy #{@strategy.inspect} " \
                               '(known: :counting, :gctools_oobgc)'
        end
      end

      def call(env)
        status, headers, body = @app.call(env)
        if due? && headers.respond_to?(:[]=)
          headers = headers.dup if headers.frozen?
          headers[@header] = 'true'
        end
        [status, headers, body]
      end

      private

      def due?
        return ::GC::OOB.dry_run if @strategy == :gctools_oobgc

        @mutex.synchronize do
          @count += 1
          if @count >= @frequency
            @count = 0
            true
          else
            false
          end
        end
      end

      def collect
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        ::GC.start
        return unless @logger

        took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
        @logger.info(format('Out-of-band GC finished in %.3f s', took))
      end

      def rack3?
        defined?(::Rack.release) && ::Rack.release.to_i >= 3
      end
    end
  end
end

# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------

module PassengerRackLoader
  LOADER_FILE = File.expand_path(__FILE__)
  BINARY = Encoding::BINARY

  # -- The frame protocol (docs/protocol.md) --------------------------------

  VERSION = 1
  HEADER_LEN = 12
  MAX_PAYLOAD = 1 << 20
  MAX_CHUNK = 64 * 1024
  MAX_PREFIX = 64 * 1024
  READ_BODY_SIZE = 64 * 1024
  RECV_SIZE = 256 * 1024
  FLUSH_AT = 256 * 1024 # an array body is written in pieces of about this size

  T_HELLO = 0x01
  T_HELLO_OK = 0x02
  T_CONFIGURE = 0x03
  T_CONFIGURE_OK = 0x04
  T_REQUEST = 0x10
  T_BODY = 0x11
  T_END = 0x12
  T_MORE = 0x13
  T_READ_BODY = 0x14
  T_RELEASE = 0x15
  T_RESPONSE = 0x20
  T_ERROR = 0x30
  T_PING = 0x40
  T_PONG = 0x41
  T_STATUS = 0x50
  T_STATUS_REPLY = 0x51
  T_READY = 0x60
  T_SPAWN_ERROR = 0x61
  T_FORK = 0x70
  T_FORKED = 0x71
  T_OOB_WORK = 0x72
  T_OOB_DONE = 0x73

  TYPE_NAMES = {
    T_HELLO => 'HELLO', T_HELLO_OK => 'HELLO_OK', T_CONFIGURE => 'CONFIGURE',
    T_CONFIGURE_OK => 'CONFIGURE_OK', T_REQUEST => 'REQUEST', T_BODY => 'BODY', T_END => 'END',
    T_MORE => 'MORE', T_READ_BODY => 'READ_BODY', T_RELEASE => 'RELEASE', T_RESPONSE => 'RESPONSE',
    T_ERROR => 'ERROR',
    T_PING => 'PING', T_PONG => 'PONG', T_STATUS => 'STATUS', T_STATUS_REPLY => 'STATUS_REPLY',
    T_READY => 'READY', T_SPAWN_ERROR => 'SPAWN_ERROR', T_FORK => 'FORK', T_FORKED => 'FORKED',
    T_OOB_WORK => 'OOB_WORK', T_OOB_DONE => 'OOB_DONE'
  }.freeze

  # Indexed by type: nil = unknown type, -1 = variable payload, n = fixed length.
  PAYLOAD_RULE = Array.new(256)
  TYPE_NAMES.each_key { |t| PAYLOAD_RULE[t] = -1 }
  { T_HELLO => 13, T_CONFIGURE_OK => 0, T_END => 0, T_MORE => 0, T_READ_BODY => 4, T_PING => 0,
    T_PONG => 0, T_READY => 4, T_FORK => 0, T_FORKED => 4, T_OOB_WORK => 0,
    T_OOB_DONE => 0, T_RELEASE => 0 }.each { |t, n| PAYLOAD_RULE[t] = n }
  PAYLOAD_RULE.freeze

  FLAG_HAS_BODY = 0x01
  FLAG_HTTPS = 0x02
  FLAG_UPGRADE = 0x04 # never together with FLAG_HAS_BODY
  KNOWN_FLAGS = FLAG_HAS_BODY | FLAG_HTTPS | FLAG_UPGRADE

  ERROR_UNSUPPORTED_VERSION = 1
  ERROR_PROTOCOL = 400
  ERROR_APPLICATION = 500
  ERROR_BAD_GATEWAY = 502

  FRAME = 'nCCNN' # magic, version, type, request id, payload length
  MAGIC = 0x4D50

  # The peer broke the protocol: answer ERROR where possible, then close.
  # +kind+ names the failure as docs/protocol-vectors.json does.
  class ProtocolError < StandardError
    attr_accessor :request_id
    attr_reader :kind, :code

    def initialize(message, request_id = 0, kind = :malformed, code = ERROR_PROTOCOL)
      super(message)
      @request_id = request_id
      @kind = kind
      @code = code
    end
  end

  # The agent sent ERROR during a request: it gave the request up.
  class PeerAborted < StandardError; end

  # Raised into serving threads (and by the SIGTERM trap) to stop serving.
  class Stop < Exception; end # rubocop:disable Lint/InheritException

  def self.frame(type, request_id = 0, payload = '')
    if payload.bytesize > MAX_PAYLOAD
      raise ArgumentError, "payload of #{payload.bytesize} bytes exceeds the 1 MiB limit"
    end

    [MAGIC, VERSION, type, request_id, payload.bytesize, payload].pack('nCCNNa*')
  end

  def self.encode_bytes(str)
    [str.bytesize, str].pack('Na*')
  end

  def self.error_frame(code, message, request_id = 0)
    msg = utf8(message).byteslice(0, 4096).scrub('?')
    frame(T_ERROR, request_id, [code, msg.bytesize, msg].pack('nNa*'))
  end

  def self.utf8(str)
    s = str.to_s.dup.force_encoding(Encoding::UTF_8)
    s.valid_encoding? ? s : s.scrub('?')
  end

  # Decodes an ERROR payload: [code, message]; the message must be UTF-8.
  def self.decode_error(payload)
    raise ProtocolError, 'truncated ERROR payload' if payload.bytesize < 6

    code = payload.unpack1('n')
    len = payload.unpack1('N', offset: 2)
    raise ProtocolError, 'bad ERROR message length' if 6 + len != payload.bytesize

    message = payload.byteslice(6, len).force_encoding(Encoding::UTF_8)
    raise ProtocolError, 'the ERROR message is not UTF-8' unless message.valid_encoding?

    [code, message]
  end

  # One connection from the agent: a single receive buffer, frames parsed in
  # place. After read_frame the payload is @buf[@poff, @plen].
  class Connection
    attr_reader :io, :rid, :buf, :poff, :plen
    # nil, or the exception that made this connection unusable.
    attr_accessor :failed
    # Per request: the RESPONSE was sent / the response was ended.
    attr_accessor :head_sent, :ended
    # The request id of the last request when it was an upgrade answered
    # without a tunnel, else nil: tunnel bytes the agent sent ahead for it
    # may follow, which nobody reads.
    attr_accessor :declined_upgrade

    EMPTY = ''.b.freeze

    def initialize(io)
      @io = io
      @buf = String.new(capacity: RECV_SIZE, encoding: BINARY)
      @scratch = nil
      @pos = 0
      @rid = 0
      @poff = 0
      @plen = 0
      @failed = nil
      @head_sent = false
      @ended = false
      @declined_upgrade = nil
    end

    # The type of the next frame, or nil at a clean end of file. Raises
    # ProtocolError for an invalid frame, decided from the header alone.
    def read_frame
      buf = @buf
      while true
        pos = @pos
        avail = buf.bytesize - pos
        if avail >= HEADER_LEN
          if buf.getbyte(pos) != 0x4D || buf.getbyte(pos + 1) != 0x50
            raise ProtocolError.new(format('bad magic %02x %02x: the peer does not speak the frame protocol',
                                           buf.getbyte(pos), buf.getbyte(pos + 1)), 0, :bad_magic)
          end
          if buf.getbyte(pos + 2) != VERSION
            raise ProtocolError.new('unsupported protocol version', 0, :bad_version,
                                    ERROR_UNSUPPORTED_VERSION)
          end
          type = buf.getbyte(pos + 3)
          rid = buf.unpack1('N', offset: pos + 4)
          len = buf.unpack1('N', offset: pos + 8)
          rule = PAYLOAD_RULE[type]
          raise ProtocolError.new(format('unknown message type 0x%02x', type), rid, :unknown_type) if rule.nil?
          if len > MAX_PAYLOAD
            raise ProtocolError.new("payload of #{len} bytes exceeds the 1 MiB limit", rid, :too_large)
          end
          if rule >= 0 && rule != len
            raise ProtocolError.new("#{TYPE_NAMES[type]} with a payload of #{len} bytes (it has #{rule})", rid)
          end
          if avail >= HEADER_LEN + len
            @rid = rid
            @poff = pos + HEADER_LEN
            @plen = len
            @pos = pos + HEADER_LEN + len
            return type
          end
        end
        return nil unless fill

        buf = @buf
      end
    end

    # Reads more bytes: false at a clean end of file.
    def fill
      pos = @pos
      buf = @buf
      if pos >= buf.bytesize
        begin
          @io.readpartial(RECV_SIZE, buf)
        rescue EOFError, Errno::ECONNRESET
          return false
        end
        @pos = 0
      else
        begin
          chunk = @io.readpartial(RECV_SIZE, @scratch ||= String.new(capacity: RECV_SIZE, encoding: BINARY))
        rescue EOFError, Errno::ECONNRESET
          raise ProtocolError.new('the connection was closed in the middle of a frame', 0, :eof)
        end
        if pos.positive?
          buf = buf.unpack1('a*', offset: pos) # a copy: a shared tail would make the next read copy
          @pos = 0
        end
        buf << chunk
        @buf = buf
      end
      true
    end

    # The payload of the last frame, as a new String.
    def payload
      len = @plen
      return EMPTY if len.zero?

      off = @poff
      off + len == @buf.bytesize ? @buf.unpack1('a*', offset: off) : @buf.byteslice(off, len)
    end

    def write(data)
      raise IOError, "the connection to the agent is broken: #{@failed.message}" if @failed

      @io.write(data)
    rescue SystemCallError, IOError => e
      @failed ||= e
      raise
    end

    # Writes Strings with one writev (Ruby's IO#write with several).
    def write_parts(parts)
      raise IOError, "the connection to the agent is broken: #{@failed.message}" if @failed

      if parts.size == 1
        @io.write(parts[0])
      else
        parts.each_slice(512) { |slice| @io.write(*slice) }
      end
    rescue SystemCallError, IOError => e
      @failed ||= e
      raise
    end

    # The request id of the last frame as its 4 bytes (before any more reading).
    def rid_bytes
      @buf.byteslice(@poff - 8, 4)
    end

    # The next frame of request +rid+, answering PINGs on the way.
    def read_request_frame(rid)
      while true
        type = read_frame
        raise ProtocolError.new('the agent closed the connection during a request', rid, :eof) if type.nil?

        if type == T_PING
          write(PassengerRackLoader.frame(T_PONG, @rid))
          next
        end
        raise ProtocolError.new("frame for request #{@rid} during request #{rid}", rid) if @rid != rid

        raise PeerAborted, error_text if type == T_ERROR

        return type
      end
    end

    # What the agent said in the ERROR frame just read: "ERROR code: message".
    def error_text
      code, message = begin
        PassengerRackLoader.decode_error(payload)
      rescue ProtocolError => e
        [0, "malformed ERROR (#{e.message})"]
      end
      "ERROR #{code}: #{message}"
    end

    # The REQUEST payload into +env+ (which holds +base+); returns the flags.
    # Options are validated and skipped. A request header sent twice (two
    # HTTP_X pairs) becomes one variable, the values joined by ", " ("; "
    # for HTTP_COOKIE); for any other name the last pair wins.
    def decode_request(env, base)
      b = @buf
      off = @poff
      stop = off + @plen
      raise ProtocolError.new('empty REQUEST payload', @rid) if @plen < 1

      flags = b.getbyte(off)
      raise ProtocolError.new(format('unknown REQUEST flags 0x%02x', flags), @rid) if flags & ~KNOWN_FLAGS != 0
      if flags & FLAG_UPGRADE != 0 && flags & FLAG_HAS_BODY != 0
        raise ProtocolError.new('an upgrade REQUEST cannot have a body (flags 0x04 and 0x01)', @rid)
      end

      off = skip_pairs(b, off + 1, stop)
      raise ProtocolError.new('truncated REQUEST payload', @rid) if off + 4 > stop

      count = b.unpack1('N', offset: off)
      off += 4
      start = off
      raise ProtocolError.new("pair count #{count} exceeds the payload", @rid) if count > (stop - off) >> 3

      blen = b.bytesize
      expected = env.size + count
      i = 0
      # The hot loop: a length below 256 (three zero bytes first) is read
      # with getbyte, cheaper than unpack1; a frozen key is stored as it is
      # (an unfrozen one would be interned, which costs more).
      while i < count
        raise ProtocolError.new('truncated pairs', @rid) if off + 4 > stop

        klen = if b.getbyte(off) == 0 && b.getbyte(off + 1) == 0 && b.getbyte(off + 2) == 0
                 b.getbyte(off + 3)
               else
                 b.unpack1('N', offset: off)
               end
        kend = off + 4 + klen
        raise ProtocolError.new('pair length exceeds the payload', @rid) if kend + 4 > stop

        vlen = if b.getbyte(kend) == 0 && b.getbyte(kend + 1) == 0 && b.getbyte(kend + 2) == 0
                 b.getbyte(kend + 3)
               else
                 b.unpack1('N', offset: kend)
               end
        vstart = kend + 4
        key = b.byteslice(off + 4, klen).freeze
        off = vstart + vlen
        raise ProtocolError.new('pair length exceeds the payload', @rid) if off > stop

        env[key] = off == blen ? b.unpack1('a*', offset: vstart) : b.byteslice(vstart, vlen)
        i += 1
      end
      raise ProtocolError.new("#{stop - off} trailing bytes after the REQUEST payload", @rid) if off != stop

      decode_joining(env, base, start, count) if env.size != expected
      flags
    end

    private

    def skip_pairs(b, off, stop)
      raise ProtocolError.new('truncated REQUEST payload', @rid) if off + 4 > stop

      count = b.unpack1('N', offset: off)
      off += 4
      raise ProtocolError.new("pair count #{count} exceeds the payload", @rid) if count > (stop - off) >> 3

      count.times do
        raise ProtocolError.new('truncated pairs', @rid) if off + 4 > stop

        off += 4 + b.unpack1('N', offset: off)
        raise ProtocolError.new('truncated pairs', @rid) if off + 4 > stop

        off += 4 + b.unpack1('N', offset: off)
        raise ProtocolError.new('pair length exceeds the payload', @rid) if off > stop
      end
      off
    end

    # A name was repeated (rare): decode again, joining repeated headers.
    def decode_joining(env, base, off, count)
      b = @buf
      env.replace(base)
      seen = {}
      count.times do
        klen = b.unpack1('N', offset: off)
        key = -b.byteslice(off + 4, klen)
        off += 4 + klen
        vlen = b.unpack1('N', offset: off)
        value = b.byteslice(off + 4, vlen)
        off += 4 + vlen
        if seen[key] && key.start_with?('HTTP_')
          env[key] = env[key] + (key == 'HTTP_COOKIE' ? '; ' : ', ') + value
        else
          env[key] = value
        end
        seen[key] = true
      end
    end
  end

  # -- rack.input ----------------------------------------------------------

  # The body of a request without one: always at its end.
  class EmptyInput
    def read(length = nil, buffer = nil)
      if length.nil?
        buffer ? buffer.replace(''.b) : String.new(encoding: BINARY)
      else
        raise ArgumentError, "negative length #{length} given" if length.negative?

        buffer&.replace(''.b)
        length.zero? ? (buffer || String.new(encoding: BINARY)) : nil
      end
    end

    def gets(*) = nil
    def each = self
    def rewind = 0
    def size = 0
    def eof? = true
    def close = nil
    def closed? = false
    def binmode? = true
    def external_encoding = BINARY

    def readpartial(_length, _buffer = nil)
      raise EOFError, 'end of the request body'
    end
  end

  EMPTY_INPUT = EmptyInput.new.freeze

  # rack.input for a request with a body: the body prefix first, then BODY
  # frames pulled with READ_BODY only when a read needs them. Everything
  # read is kept (in memory up to SPOOL_IN_MEMORY, then in an unlinked
  # temporary file), so rewind works as Rack 2 requires.
  class Input
    SPOOL_IN_MEMORY = 1 << 20

    def initialize(conn, rid, prefix, more)
      @conn = conn
      @rid = rid
      @more = more
      @mem = prefix.frozen? ? prefix.dup : prefix
      @file = nil
      @size = prefix.bytesize
      @pos = 0
      @closed = false
    end

    # IO#read semantics: read(nil) reads to the end and returns "" there;
    # read(n) returns at most n bytes and nil at the end.
    def read(length = nil, buffer = nil)
      check_open
      if length.nil?
        fill_to(nil)
        data = fetch(@pos, @size - @pos)
        @pos = @size
        return buffer ? buffer.replace(data) : data
      end
      raise ArgumentError, "negative length #{length} given" if length.negative?

      if length.zero?
        return buffer ? buffer.replace(''.b) : String.new(encoding: BINARY)
      end

      fill_to(@pos + length)
      avail = @size - @pos
      if avail.zero?
        buffer&.replace(''.b)
        return nil
      end
      n = avail < length ? avail : length
      data = fetch(@pos, n)
      @pos += n
      buffer ? buffer.replace(data) : data
    end

    # Whatever is available (pulling once if nothing is): like IO#readpartial.
    def readpartial(length, buffer = nil)
      check_open
      fill_to(@pos + 1) if @pos >= @size
      avail = @size - @pos
      raise EOFError, 'end of the request body' if avail.zero?

      n = avail < length ? avail : length
      data = fetch(@pos, n)
      @pos += n
      buffer ? buffer.replace(data) : data
    end

    def gets(*)
      check_open
      scan = @pos
      while true
        i = find_newline(scan)
        if i
          line = fetch(@pos, i + 1 - @pos)
          @pos = i + 1
          return line
        end
        scan = @size
        break unless @more && pull
      end
      return nil if @pos >= @size

      line = fetch(@pos, @size - @pos)
      @pos = @size
      line
    end

    def each
      return to_enum(:each) unless block_given?

      while (line = gets)
        yield line
      end
      self
    end

    def rewind
      check_open
      @pos = 0
    end

    # The body's size: reads it to the end first.
    def size
      fill_to(nil)
      @size
    end
    alias length size

    def eof?
      fill_to(@pos + 1)
      @pos >= @size
    end

    def binmode? = true
    def external_encoding = BINARY
    def closed? = @closed

    # Rack 3 lets the application close the input: the spool is freed.
    def close
      @closed = true
      release
      nil
    end

    # The request is over: no more pulling, the spool is freed; a reference
    # the app kept reads as an empty body from now on.
    def detach
      @conn = nil
      @more = false
      release
      @mem = String.new(encoding: BINARY)
      @size = 0
      @pos = 0
    end

    private

    def check_open
      raise IOError, 'the request body was closed' if @closed
    end

    def release
      @mem = nil
      file = @file
      @file = nil
      file&.close
    rescue IOError, SystemCallError
      nil
    end

    def fill_to(target)
      while @more && (target.nil? || @size < target)
        break unless pull
      end
    end

    # One READ_BODY round trip: true if bytes were added, false at the end.
    def pull
      conn = @conn
      unless conn
        @more = false
        return false
      end
      begin
        conn.write([MAGIC, VERSION, T_READ_BODY, @rid, 4, READ_BODY_SIZE].pack('nCCNNN'))
        type = conn.read_request_frame(@rid)
        if type == T_BODY
          n = conn.plen
          if n.zero? || n > READ_BODY_SIZE
            raise ProtocolError.new("BODY of #{n} bytes answering READ_BODY #{READ_BODY_SIZE}", @rid)
          end

          append(conn.payload)
          true
        elsif type == T_END
          @more = false
          false
        else
          raise ProtocolError.new("unexpected message type #{TYPE_NAMES[type]} while reading the body",
                                  @rid, :unexpected)
        end
      rescue ProtocolError, PeerAborted, SystemCallError, IOError => e
        @more = false
        conn.failed ||= e
        raise e if e.is_a?(SystemCallError)

        raise IOError, "error reading the request body: #{e.message}"
      end
    end

    def append(chunk)
      if @file
        @file.write(chunk)
      elsif @size + chunk.bytesize > SPOOL_IN_MEMORY
        require 'tempfile'
        file = Tempfile.create(['passenger-rack-body', '.bin'], binmode: true)
        File.unlink(file.path)
        file.sync = true
        file.write(@mem)
        file.write(chunk)
        @file = file
        @mem = nil
      else
        @mem << chunk
      end
      @size += chunk.bytesize
    end

    def fetch(off, len)
      return String.new(encoding: BINARY) if len.zero?

      if @file
        @file.pread(len, off)
      else
        off + len == @mem.bytesize ? @mem.unpack1('a*', offset: off) : @mem.byteslice(off, len)
      end
    end

    def find_newline(from)
      return nil if from >= @size

      return @mem.index("\n", from) unless @file

      while from < @size
        piece = @file.pread([@size - from, 65_536].min, from)
        i = piece.index("\n")
        return from + i if i

        from += piece.bytesize
      end
      nil
    end
  end

  # The stream given to a Rack 3 streaming body (one that responds to call):
  # writes become BODY frames at once; close ends the response.
  class Stream
    def initialize(conn, rid4, input)
      @conn = conn
      @rid4 = rid4
      @input = input
      @closed = false
    end

    def write(data)
      raise IOError, 'the response stream is closed' if @closed

      data = data.to_s
      n = data.bytesize
      PassengerRackLoader.write_body(@conn, @rid4, data) if n.positive?
      n
    end

    def <<(data)
      write(data)
      self
    end

    def read(*args)
      @input.read(*args)
    end

    def flush = self

    def close_read
      nil
    end

    def close_write
      close
    end

    def close
      return if @closed

      @closed = true
      unless @conn.ended
        @conn.ended = true
        @conn.write(PassengerRackLoader.end_frame(@rid4))
      end
      nil
    end

    def closed? = @closed
  end

  EMPTY_BIN = ''.b.freeze
  ZERO4 = "\0\0\0\0".b.freeze
  M_RESPONSE = "MP\x01\x20".b.freeze
  M_BODY = "MP\x01\x11".b.freeze
  M_END = "MP\x01\x12".b.freeze
  # Big-endian u32 encodings of 0...1024: lengths without Array#pack.
  U32 = Array.new(1024) { |i| [i].pack('N').freeze }.freeze
  SMALL_CHUNK = 4096 # smaller chunks are copied next to their frame header

  def self.u32(n)
    n < 1024 ? U32[n] : [n].pack('N')
  end

  def self.end_frame(rid4)
    String.new(M_END) << rid4 << ZERO4
  end

  # Adds +chunk+ as BODY frames of at most 64 KiB: a small chunk that can be
  # appended is copied into +out+; any other goes into +parts+ as it is (the
  # parts are written with one writev). Returns the String to go on with.
  def self.add_body(parts, out, rid4, chunk)
    n = chunk.bytesize
    if n <= SMALL_CHUNK && (chunk.encoding == BINARY || chunk.ascii_only?)
      return out << M_BODY << rid4 << u32(n) << chunk
    end

    off = 0
    while off < n
      m = n - off
      m = MAX_CHUNK if m > MAX_CHUNK
      out << M_BODY << rid4 << u32(m)
      parts << out << (m == n ? chunk : chunk.byteslice(off, m))
      out = String.new(EMPTY_BIN)
      off += m
    end
    out
  end

  # Writes +data+ (not empty) as BODY frames, with one writev.
  def self.write_body(conn, rid4, data)
    parts = []
    out = add_body(parts, String.new(EMPTY_BIN), rid4, data)
    parts << out unless out.empty?
    conn.write_parts(parts)
  end

  # -- The response --------------------------------------------------------

  REASONS = {
    100 => 'Continue', 101 => 'Switching Protocols', 103 => 'Early Hints', 200 => 'OK', 201 => 'Created',
    202 => 'Accepted', 203 => 'Non-Authoritative Information', 204 => 'No Content', 205 => 'Reset Content',
    206 => 'Partial Content', 300 => 'Multiple Choices', 301 => 'Moved Permanently', 302 => 'Found',
    303 => 'See Other', 304 => 'Not Modified', 307 => 'Temporary Redirect', 308 => 'Permanent Redirect',
    400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden', 404 => 'Not Found',
    405 => 'Method Not Allowed', 406 => 'Not Acceptable', 408 => 'Request Timeout', 409 => 'Conflict',
    410 => 'Gone', 411 => 'Length Required', 412 => 'Precondition Failed', 413 => 'Payload Too Large',
    414 => 'URI Too Long', 415 => 'Unsupported Media Type', 416 => 'Range Not Satisfiable',
    417 => 'Expectation Failed', 422 => 'Unprocessable Entity', 423 => 'Locked', 428 => 'Precondition Required',
    429 => 'Too Many Requests', 500 => 'Internal Server Error', 501 => 'Not Implemented', 502 => 'Bad Gateway',
    503 => 'Service Unavailable', 504 => 'Gateway Timeout', 505 => 'HTTP Version Not Supported'
  }.freeze

  TOKEN = /\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\z/.freeze
  BAD_VALUE = /[\r\n\0]/.freeze
  BAD_LINE = /[\r\0]/.freeze

  ERROR_PAGE = ("<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head>" \
                "<body><h1>500 Internal Server Error</h1></body></html>\n").b.freeze
  ERROR_HEADERS = [['Content-Type', 'text/html; charset=utf-8'],
                   ['Content-Length', ERROR_PAGE.bytesize.to_s]].freeze

  @status_cache = {}
  @name_cache = {}

  # A Rack status as an Integer, read as Rack::Lint reads it.
  def self.status_code(status)
    status.is_a?(Integer) ? status : status.to_s.to_i
  end

  # u16 status + bytes reason, for RESPONSE.
  def self.status_bytes(status)
    cached = @status_cache[status]
    return cached if cached

    code = status_code(status)
    raise ArgumentError, "invalid response status #{status.inspect}" unless code.between?(100, 999)

    reason = (defined?(::Rack::Utils::HTTP_STATUS_CODES) && ::Rack::Utils::HTTP_STATUS_CODES[code]) ||
             REASONS[code] || ''
    encoded = [code, reason.bytesize, reason].pack('nNa*').freeze
    @status_cache[status.frozen? ? status : status.dup.freeze] = encoded if @status_cache.size < 256
    encoded
  end

  # "u32 length + name" for a response header name; false for names that are
  # not sent (rack.*); raises for invalid ones.
  def self.encoded_name(name)
    cached = @name_cache[name]
    return cached unless cached.nil?

    raise TypeError, "a response header name must be a String, not #{name.class}" unless name.is_a?(String)

    if name.start_with?('rack.')
      encoded = false
    else
      raise ArgumentError, "invalid response header name #{name.inspect}" unless TOKEN.match?(name)

      encoded = [name.bytesize, name].pack('Na*').freeze
    end
    @name_cache.clear if @name_cache.size >= 1024
    @name_cache[name] = encoded
  end

  # A RESPONSE frame (a new binary String, to append body frames to). Rack 2
  # header values with "\n" become repeated headers; Rack 3 array values too.
  # +reason+ (with an Integer status) replaces the standard reason phrase.
  def self.encode_head(rid4, status, headers, reason = nil)
    sb = if reason
           [status, reason.bytesize, reason].pack('nNa*')
         else
           @status_cache[status] || status_bytes(status)
         end
    pairs = String.new(EMPTY_BIN)
    count = 0
    names = @name_cache
    headers.each do |name, value|
      enc = names[name]
      enc = encoded_name(name) if enc.nil?
      next unless enc

      if value.is_a?(String) && value.bytesize < 1024 && value.ascii_only? && !BAD_VALUE.match?(value)
        pairs << enc << U32[value.bytesize] << value
        count += 1
      else
        count += add_values(pairs, enc, name, value)
      end
    end
    len = sb.bytesize + 4 + pairs.bytesize
    raise ArgumentError, 'the response headers exceed the 1 MiB frame limit' if len > MAX_PAYLOAD

    String.new(M_RESPONSE) << rid4 << u32(len) << sb << u32(count) << pairs
  end

  # The slow path of a header: arrays, lines, non-ASCII or long values.
  def self.add_values(out, enc, name, value)
    return 0 if value.nil?

    if value.is_a?(Array)
      value.sum { |item| add_values(out, enc, name, item) }
    else
      value = value.to_s
      n = 0
      lines = value.include?("\n") ? value.split("\n") : [value]
      lines.each do |line|
        raise ArgumentError, "invalid character (CR or NUL) in the value of header #{name.inspect}" if BAD_LINE.match?(line)

        out << enc
        [line.bytesize, line].pack('Na*', buffer: out)
        n += 1
      end
      n
    end
  end

  # -- Upgraded connections: rack.hijack -------------------------------------
  #
  # Every request can be hijacked. The app never touches the frame
  # connection: it gets one end of a Unix socketpair, as if it were the
  # client's socket, and the loader relays between the other end and the
  # frame connection. What the app writes there is an ordinary response,
  # relayed as RESPONSE, BODY and END; only a REQUEST with flag 0x04 (an
  # HTTP/1.1 Upgrade, e.g. a WebSocket) may answer 101 and become a tunnel
  # (docs/protocol.md, "Upgraded connections", is the contract).

  MAX_HIJACK_HEAD = 64 * 1024
  HIJACK_HEAD_TIMEOUT = 30 # seconds from the full hijack to the end of the app's response head
  MAX_CHUNK_LINE = 4096 # a chunk-size or trailer line of a relayed chunked body
  HEAD_END = /\r?\n\r?\n/.freeze
  STATUS_LINE = %r{\AHTTP/1\.[01] (\d{3})(?: ([^\r\0]*))?\z}.freeze
  # Headers about the app's own connection to us, never relayed (except in a
  # 101, where they describe the switch).
  HOP_BY_HOP = %w[connection keep-alive proxy-connection te trailer transfer-encoding upgrade].freeze

  SWITCH_UNASKED = 'a 101 (Switching Protocols) answers only a request that asked to upgrade'

  # What the app wrote on a hijacked connection is not a usable response.
  class HijackError < StandardError; end

  # The status, reason phrase and headers ([[name, value], ...]) of a raw
  # HTTP/1.x response head, its blank line included.
  def self.parse_head(head)
    lines = head.split(/\r?\n/)
    status_line = lines.shift.to_s
    match = STATUS_LINE.match(status_line)
    raise HijackError, "invalid status line #{status_line.inspect}" unless match

    status = match[1].to_i
    raise HijackError, "status #{status} is not a final response (nor 101)" if status < 200 && status != 101

    headers = lines.map do |line|
      name, value = line.split(':', 2)
      unless value && TOKEN.match?(name) && !BAD_VALUE.match?(value)
        raise HijackError, "invalid header line #{line.inspect}"
      end

      [name, value.strip]
    end
    [status, match[2] || '', headers]
  end

  # How the body of a relayed response (any status but 101) ends, and the
  # headers to send: [framing, headers]. framing is a byte count (0: no
  # body), :chunked or :eof (the body ends when the app closes). Hop-by-hop
  # headers, and those that Connection names, are dropped; so is
  # Content-Length next to Transfer-Encoding.
  def self.relayed_framing(status, headers, head_request)
    named = {}
    transfer = nil
    lengths = []
    headers.each do |name, value|
      case name.downcase
      when 'connection' then value.split(',').each { |token| named[token.strip.downcase] = true }
      when 'transfer-encoding' then transfer = value
      when 'content-length' then lengths << value
      end
    end
    kept = headers.reject do |name, _|
      key = name.downcase
      HOP_BY_HOP.include?(key) || named[key] || (transfer && key == 'content-length')
    end
    framing = if head_request || status == 204 || status == 304 then 0
              elsif transfer then transfer.split(',').last.to_s.strip.casecmp?('chunked') ? :chunked : :eof
              elsif lengths.empty? then :eof
              else content_length(lengths)
              end
    [framing, kept]
  end

  def self.content_length(values)
    values = values.flat_map { |value| value.split(',').map(&:strip) }.uniq
    unless values.size == 1 && /\A\d{1,15}\z/.match?(values[0])
      raise HijackError, "invalid Content-Length #{values.join(', ').inspect}"
    end

    values[0].to_i
  end

  # The loader's end of a hijacked connection: what the app writes, read
  # through one buffer, so that its response head, chunk sizes and body can
  # be taken apart without reading past any of them.
  class AppStream
    def initialize(io)
      @io = io
      @buf = String.new(encoding: BINARY)
    end

    # The response head, up to and including its blank line, read before
    # +deadline+ (CLOCK_MONOTONIC).
    def read_head(deadline)
      while true
        if (match = HEAD_END.match(@buf))
          raise HijackError, 'the response head exceeds 64 KiB' if match.end(0) > MAX_HIJACK_HEAD

          return take(match.end(0))
        end
        raise HijackError, 'the response head exceeds 64 KiB' if @buf.bytesize > MAX_HIJACK_HEAD

        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        unless left.positive? && IO.select([@io], nil, nil, left)
          raise HijackError, "no complete response head within #{HIJACK_HEAD_TIMEOUT} s"
        end
        next if fill

        raise HijackError, @buf.empty? ? 'the application closed the connection without writing a response head' :
                                         'the connection was closed in the middle of the response head'
      end
    end

    # A line without its line break; nil at the end of the stream.
    def read_line(limit)
      while true
        if (i = @buf.index("\n"))
          raise HijackError, "a line of more than #{limit} bytes" if i > limit

          return take(i + 1).chomp
        end
        raise HijackError, "a line of more than #{limit} bytes" if @buf.bytesize > limit
        return nil unless fill
      end
    end

    # 1 to +max+ bytes; nil at the end of the stream.
    def read_some(max)
      return take(@buf.bytesize < max ? @buf.bytesize : max) unless @buf.empty?

      @io.readpartial(max)
    rescue EOFError, Errno::ECONNRESET
      nil
    end

    private

    # Reads more into the buffer: false at the end of the stream.
    def fill
      @buf << @io.readpartial(RECV_SIZE)
      true
    rescue EOFError, Errno::ECONNRESET
      false
    end

    def take(count)
      data = @buf.byteslice(0, count)
      @buf = @buf.byteslice(count, @buf.bytesize - count)
      data
    end
  end

  # env['rack.hijack'] of one request, and the relay that follows.
  #
  # The app gets one end of a Unix socketpair: from call (a full hijack), or
  # as the argument of the callable in its response's 'rack.hijack' header
  # (a partial hijack). A relay thread writes the RESPONSE: the head the app
  # wrote on the socket, or the status and headers of its Rack response.
  # A 101 (upgrade requests only) opens the tunnel: the relay thread goes on
  # turning the app's bytes into BODY frames (END at the app's EOF) while a
  # second thread writes the agent's BODY frames to the app (its END becomes
  # shutdown(SHUT_WR)). Any other status is an ordinary response whose body
  # is relayed to its end (a long poll, a stream); the connection then
  # carries the next request, unless the request was released (#release).
  # On a request that is not an upgrade the app reads end of file from its
  # end: the request body is rack.input's.
  #
  # Every request gets one, so that nothing is allocated here before the
  # app hijacks: the relay's queue, lock and sockets come with the hijack.
  #
  # Threads: from the hijack on, the relay thread writes the frame
  # connection (the serving thread only its one RELEASE, under @last_lock)
  # and the downstream thread is its only reader; the serving thread
  # otherwise only waits. abort! shuts both sockets down, which wakes every
  # blocked read and write, so that every way out is prompt.
  class Hijack
    def initialize(conn, rid, rid4, env, rack2, upgrade)
      @conn = conn
      @rid = rid
      @rid4 = rid4
      @env = env
      @rack2 = rack2
      @upgrade = upgrade # the request asked to switch protocols: a 101 may answer it
      @app_io = nil # the app's end of the socketpair, once hijacked
      @closed = false # the request is over: too late to hijack
      # Set by open_pair, at the hijack:
      # @io, the loader's end of the socketpair;
      # @relay, the thread that writes the RESPONSE, then the app-to-agent direction;
      # @down, the agent-to-app direction of a tunnel;
      # @outcome, :tunnel when a 101 went out, :done when the relay thread is
      #   over (a Queue, because the serving thread blocks on it);
      # @abort_lock: both directions can fail at the same moment, the Mutex
      #   makes the first failure the one that is logged and acted on;
      # @last_lock: the relay's last frame (END, or ERROR) and RELEASE
      #   exclude each other, so that RELEASE never follows the end.
      @aborted = false
      @released = false # RELEASE went out: the rest streams from the app's threads
    end

    # rack.hijack: a full hijack. The app's end of the connection (the same
    # one when called again).
    def call
      return @app_io if @app_io
      raise IOError, 'rack.hijack called after the request was over' if @closed

      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + HIJACK_HEAD_TIMEOUT
      app_io = open_pair
      start_relay { relay_raw_response(deadline) }
      @env['rack.hijack_io'] = app_io if @rack2
      @app_io = app_io
    end

    # Whether the app has its end (and so the relay thread runs).
    def hijacked? = !@app_io.nil?

    # A partial hijack: RESPONSE from +status+ and +headers+ (rack.* headers
    # are never sent), written by the serving thread before the relay thread
    # takes the connection over; then +callback+ gets the app's end. What the
    # app writes there is the tunnel (101) or the body, up to its close.
    def partial(status, headers, callback)
      code = PassengerRackLoader.status_code(status)
      raise ArgumentError, SWITCH_UNASKED if code == 101 && !@upgrade

      @conn.write(PassengerRackLoader.encode_head(@rid4, status, headers))
      @conn.head_sent = true
      framing = head_request? || code == 204 || code == 304 ? 0 : :eof
      app_io = open_pair
      start_relay { code == 101 ? tunnel(AppStream.new(@io)) : relay_body(AppStream.new(@io), framing) }
      @app_io = app_io
      begin
        callback.call(app_io)
      rescue Exception # rubocop:disable Lint/RescueException
        abort!(nil) # the caller logs the exception
        raise
      end
    end

    # Blocks until the RESPONSE went out (after a hijack): true if it opened
    # a tunnel; false if the response is over (the connection goes on unless
    # it failed).
    def await_response
      return true if @outcome.pop == :tunnel

      @relay.join
      false
    end

    # After the app returned from the request: if it kept its end open and
    # the relay still runs (the app streams the rest from threads of its
    # own: a long poll, a WebSocket), tells the agent that the process may
    # take other requests (RELEASE) and returns true; the connection then
    # carries no other request. False when the app closed its end (the
    # relay is about to finish), the relay is over, or the agent went away.
    def release
      return false if @app_io.closed?

      @last_lock.synchronize do
        return false if @over || @aborted

        @conn.write(PassengerRackLoader.frame(T_RELEASE, @rid))
        @released = true
      end
    rescue IOError, SystemCallError
      false
    end

    def released? = @released

    # Blocks until both directions of the tunnel are done.
    def wait
      @relay.join
      @down&.join
    end

    # Ends whatever still runs and closes the loader's end.
    def close
      @closed = true
      return unless @app_io

      abort!(nil) if @relay&.alive? || @down&.alive?
      @relay&.join
      @down&.join
      @io&.close
    rescue IOError, SystemCallError
      nil
    end

    # Ends the relay at once: both sockets are shut down, so the app reads
    # EOF, the agent sees the connection close and no thread stays blocked.
    # +reason+ is logged (nil: a side closed, nothing to report); the
    # connection is marked failed, it carries no other request.
    def abort!(reason)
      @abort_lock.synchronize do
        return if @aborted

        @aborted = true
      end
      PassengerRackLoader.log("#{what}: #{reason}") if reason
      @conn.failed ||= IOError.new(reason || 'the upgraded connection was closed')
      [@io, @conn.io].each do |io|
        io&.shutdown(Socket::SHUT_RDWR)
      rescue IOError, SystemCallError
        nil
      end
    end

    private

    # The request, for the log: "GET /path".
    def what = "#{@env['REQUEST_METHOD']} #{@env['SCRIPT_NAME']}#{@env['PATH_INFO']}"

    def head_request? = @env['REQUEST_METHOD'] == 'HEAD'

    # The app's end of a new socketpair; the loader's is @io. Unless the
    # request is an upgrade, the app reads end of file there at once.
    def open_pair
      @outcome = Queue.new
      @abort_lock = Mutex.new
      @last_lock = Mutex.new
      @over = false
      app_io, @io = UNIXSocket.pair(:STREAM)
      app_io.binmode
      @io.binmode
      @io.shutdown(Socket::SHUT_WR) unless @upgrade
      app_io
    end

    def start_relay(&block)
      @relay = relay_thread do
        block.call
      ensure
        @outcome << :done
      end
    end

    # The relay's threads never raise: a failure here is a bug, logged, and
    # it ends the connection.
    def relay_thread
      Thread.new do
        yield
      rescue Exception => e # rubocop:disable Lint/RescueException
        PassengerRackLoader.log_exception("#{what}: relaying the hijacked connection failed", e)
        abort!(nil)
      end
    end

    # A full hijack: the head the app writes decides what follows.
    def relay_raw_response(deadline)
      stream = AppStream.new(@io)
      begin
        status, reason, headers = PassengerRackLoader.parse_head(stream.read_head(deadline))
        raise HijackError, SWITCH_UNASKED if status == 101 && !@upgrade

        framing, headers = PassengerRackLoader.relayed_framing(status, headers, head_request?) unless status == 101
      rescue HijackError => e
        fail_relay("the application hijacked the connection but wrote no valid response head: #{e.message}")
        return
      end
      @conn.write(PassengerRackLoader.encode_head(@rid4, status, headers, reason))
      status == 101 ? tunnel(stream) : relay_body(stream, framing)
    rescue IOError, SystemCallError
      nil # the agent went away: conn.failed is set
    end

    # The relay's last frame of the request (or of the app's direction).
    def write_last(frame)
      @last_lock.synchronize do
        @over = true
        @conn.write(frame)
      end
    end

    # The body of an ordinary response, from the app's socket, then END.
    def relay_body(stream, framing)
      case framing
      when Integer then copy(stream, framing)
      when :chunked then copy_chunked(stream)
      else copy_to_eof(stream)
      end
      write_last(PassengerRackLoader.end_frame(@rid4))
    rescue HijackError => e
      fail_relay("the response body on the hijacked connection was cut short: #{e.message}")
    rescue IOError, SystemCallError
      nil # the agent went away (conn.failed is set), or abort! shut the socket down
    end

    # ERROR 502: in place of the RESPONSE, or cutting a relayed body short.
    def fail_relay(message)
      return if @aborted

      PassengerRackLoader.log("#{what}: #{message}")
      write_last(PassengerRackLoader.error_frame(ERROR_BAD_GATEWAY, message, @rid))
    rescue IOError, SystemCallError
      nil # conn.failed is set: the connection is dropped
    end

    def copy_to_eof(stream)
      while (data = stream.read_some(MAX_CHUNK))
        PassengerRackLoader.write_body(@conn, @rid4, data)
      end
    end

    def copy(stream, count)
      while count.positive?
        data = stream.read_some(count < MAX_CHUNK ? count : MAX_CHUNK)
        raise HijackError, "the stream ended #{count} bytes before the end of the body" unless data

        PassengerRackLoader.write_body(@conn, @rid4, data)
        count -= data.bytesize
      end
    end

    # A chunked body, de-chunked; trailers are read and dropped.
    def copy_chunked(stream)
      while true
        line = stream.read_line(MAX_CHUNK_LINE)
        raise HijackError, 'the stream ended before the last chunk' if line.nil?

        size = line[/\A[^;]*/].strip
        raise HijackError, "invalid chunk size line #{line.inspect}" unless /\A\h{1,15}\z/.match?(size)
        break if (size = size.to_i(16)).zero?

        copy(stream, size)
        raise HijackError, 'a chunk is not followed by a line break' unless stream.read_line(2) == ''
      end
      while (line = stream.read_line(MAX_CHUNK_LINE))
        break if line.empty?
      end
    end

    # The tunnel, once the 101 went out.
    def tunnel(stream)
      @down = relay_thread { pump_down }
      @outcome << :tunnel
      pump_up(stream)
    end

    # App to agent: the app's bytes as BODY frames, END at its EOF.
    def pump_up(stream)
      copy_to_eof(stream)
      write_last(PassengerRackLoader.end_frame(@rid4)) unless @aborted
    rescue IOError, SystemCallError
      abort!(nil) # the agent went away
    end

    # Agent to app: BODY frames to the app's socket until END, which becomes
    # shutdown(SHUT_WR); ERROR, the agent closing or the app closing its end
    # end the tunnel at once. Nothing but BODY, END or ERROR is expected.
    def pump_down
      conn = @conn
      while true
        type = conn.read_frame
        return abort!(nil) if type.nil?
        if conn.rid != @rid
          raise ProtocolError.new("frame for request #{conn.rid} in the tunnel of request #{@rid}", @rid)
        end

        case type
        when T_BODY
          begin
            @io.write(conn.payload)
          rescue Errno::EPIPE, Errno::ECONNRESET
            return abort!(nil) # the app closed its end
          end
        when T_END
          @io.shutdown(Socket::SHUT_WR)
          return
        when T_ERROR
          return abort!("the agent ended the tunnel: #{conn.error_text}")
        else
          raise ProtocolError.new("unexpected message type #{TYPE_NAMES[type]} in a tunnel", @rid, :unexpected)
        end
      end
    rescue ProtocolError => e
      abort!("protocol error in the tunnel, closing the connection: #{e.message}")
    rescue IOError, SystemCallError
      abort!(nil)
    end
  end

  # -- Logging -------------------------------------------------------------

  def self.log(message)
    $stderr.write("[rack-loader #{Process.pid}] #{message}\n")
  rescue StandardError
    nil
  end

  def self.one_line(exc)
    message = begin
      exc.message.to_s.strip
    rescue StandardError
      ''
    end
    first = message.each_line.first&.chomp
    first && !first.empty? ? "#{exc.class}: #{first}" : exc.class.name.to_s
  end

  # The exception, its backtrace (the loader's own frames left out) and causes.
  def self.describe(exc)
    text = +''
    seen = {}
    while exc && !seen[exc]
      seen[exc] = true
      text << (text.empty? ? '' : "Caused by:\n")
      text << "#{exc.class}: #{exc.message}\n"
      (exc.backtrace || []).each do |line|
        text << "    #{line}\n" unless line.start_with?(LOADER_FILE)
      end
      exc = exc.cause
    end
    text
  end

  # Runs every handler of an event, each on its own: a failing one is logged.
  def self.fire_each(name, *args)
    PhusionPassenger.event_handlers(name).each do |handler|
      handler.call(*args)
    rescue Exception => e # rubocop:disable Lint/RescueException
      raise if e.is_a?(SystemExit) || e.is_a?(SignalException) || e.is_a?(Stop)

      log_exception("a #{name} handler failed", e)
    end
  end

  def self.log_exception(message, exc)
    $stderr.write("[rack-loader #{Process.pid}] #{message}:\n#{describe(exc)}")
  rescue StandardError
    nil
  end

  # -- Serving -------------------------------------------------------------

  # Serves the app on the connections of a listening socket.
  class Server
    attr_reader :concurrency

    def initialize(app, concurrency, parent_pid, agent_pid = nil)
      @app = app
      @concurrency = concurrency
      @parent_pid = parent_pid
      @agent_pid = agent_pid
      @stop = false
      @busy = false
      @rack2 = !(defined?(::Rack.release) && ::Rack.release.to_i >= 3)
      @body_proxy = defined?(::Rack::BodyProxy) ? ::Rack::BodyProxy : nil
      @base_env = {
        'rack.version' => PassengerRackLoader.rack_version,
        'rack.errors' => $stderr,
        'rack.multithread' => concurrency != 1,
        'rack.multiprocess' => true,
        'rack.run_once' => false,
        'rack.hijack?' => true,
        'rack.url_scheme' => 'http'
      }.freeze
      @mutex = Mutex.new
      @threads = []
      @wake_r, @wake_w = IO.pipe
    end

    # The stop signal (SIGTERM, SIGINT): in the main thread, from a trap.
    def stop!
      @stop = true
      @wake_w.write_nonblock('.', exception: false)
      raise Stop if @concurrency == 1 && !@busy
    end

    # Serves until stopped, the agent goes away or the socket is closed.
    def serve(listener)
      @listener = listener
      # A blocking accept after select: a listening socket that was shut
      # down then fails with EINVAL instead of spinning on EAGAIN.
      listener.nonblock = false
      if @concurrency == 1
        PhusionPassenger.call_event(:starting_request_handler_thread)
        accept_loop { |sock| serve_connection(sock) }
      else
        serve_threaded
      end
    rescue Stop
      0
    end

    private

    def serve_threaded
      code = accept_loop(threaded: true) do |sock|
        @mutex.synchronize { @threads << Thread.new(sock) { |s| serving_thread(s) } }
      end
      threads = @mutex.synchronize { @threads.dup }
      threads.each { |t| t.raise(Stop) if t.alive? }
      threads.each { |t| t.join(300) }
      code
    end

    def serving_thread(sock)
      Thread.handle_interrupt(Stop => :never) do
        PhusionPassenger.call_event(:starting_request_handler_thread)
        serve_connection(sock, true)
      end
    rescue Stop
      nil
    rescue Exception => e # rubocop:disable Lint/RescueException
      PassengerRackLoader.log_exception('a serving thread failed', e)
    ensure
      @mutex.synchronize { @threads.delete(Thread.current) }
      @wake_w.write_nonblock('.', exception: false) rescue nil # rubocop:disable Style/RescueModifier
    end

    def room?
      @concurrency.zero? || @threads.size < @concurrency
    end

    # Accepts connections until told to stop; checks every 2 s that the
    # agent is still there. Returns the exit status.
    def accept_loop(threaded: false)
      listener = @listener
      wake = [@wake_r]
      both = [listener, @wake_r]
      until @stop
        readable, = IO.select(threaded && !room? ? wake : both, nil, nil, 2)
        if readable.nil?
          unless parent_alive?
            PassengerRackLoader.log('the agent is gone; exiting')
            return 0
          end
          next
        end
        if readable.include?(@wake_r)
          @wake_r.read_nonblock(256, exception: false)
          next unless readable.include?(listener)
        end
        next if threaded && !room?

        begin
          sock, = listener.accept
        rescue Errno::ECONNABORTED, Errno::EPROTO, Errno::EINTR, Errno::EAGAIN
          next
        rescue Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM => e
          PassengerRackLoader.log("accept() failed: #{e.message}")
          sleep 0.1
          next
        rescue IOError, SystemCallError => e
          PassengerRackLoader.log("the listening socket (fd 3) failed: #{e.message}; exiting")
          return e.is_a?(Errno::EINVAL) ? 0 : 1
        end
        sock.nonblock = false
        sock.binmode
        yield sock
      end
      0
    rescue IOError, Errno::EBADF => e
      PassengerRackLoader.log("the listening socket (fd 3) was closed (#{e.message}); exiting")
      1
    end

    def parent_alive?
      return true if @parent_pid <= 1 || Process.ppid == @parent_pid
      return false if @agent_pid.nil? || @agent_pid <= 1

      Process.kill(0, @agent_pid)
      true
    rescue Errno::ESRCH
      false
    rescue Errno::EPERM
      true
    end

    # The requests of one persistent connection, until EOF or an error.
    def serve_connection(sock, threaded = false)
      conn = Connection.new(sock)
      handed_off = false
      while true
        begin
          type = if threaded
                   Thread.handle_interrupt(Stop => :immediate) { conn.read_frame }
                 else
                   conn.read_frame
                 end
          break if type.nil?

          case type
          when T_REQUEST
            @busy = true unless threaded
            begin
              held = handle_request(conn)
            ensure
              @busy = false unless threaded
            end
            if held&.released?
              hand_off(sock, held)
              handed_off = true
              break
            elsif held
              hold_tunnel(held, threaded)
              break
            end
            if (failed = conn.failed)
              raise failed if failed.is_a?(ProtocolError)

              break
            end
            if @stop
              raise Stop unless threaded

              break
            end
          when T_PING
            conn.write(PassengerRackLoader.frame(T_PONG, conn.rid))
          when T_OOB_WORK
            oob_work(conn)
          else
            # tunnel bytes sent ahead for an upgrade that got no tunnel: nobody reads them
            break if (type == T_BODY || type == T_END) && conn.rid == conn.declined_upgrade

            raise ProtocolError.new("unexpected message type #{TYPE_NAMES[type]}", conn.rid, :unexpected)
          end
        rescue PeerAborted => e
          PassengerRackLoader.log("the agent aborted a request: #{e.message}")
          break
        rescue ProtocolError => e
          PassengerRackLoader.log("protocol error, closing the connection: #{e.message}")
          break if e.kind == :eof

          begin
            sock.write(PassengerRackLoader.error_frame(e.code, e.message, e.request_id))
          rescue IOError, SystemCallError
            nil
          end
          break
        end
      end
    rescue IOError, SystemCallError => e
      unless e.is_a?(Errno::EPIPE) || e.is_a?(Errno::ECONNRESET)
        PassengerRackLoader.log("connection error: #{e.class}: #{e.message}")
      end
    ensure
      PassengerRackLoader.close_quietly(sock) unless handed_off
    end

    # A released request (see Hijack#release) streams on from the app's
    # threads; its connection carries no other request. A thread of its own
    # waits for the relay to finish, then closes it.
    def hand_off(sock, hijack)
      Thread.new do
        hijack.wait
      ensure
        hijack.close
        PassengerRackLoader.close_quietly(sock)
      end
    end

    # A tunnel holds its connection, and so a serving slot, until both sides
    # are done; then the connection closes. Stopping ends tunnels at once:
    # the request itself ended at the 101, so with concurrency 1 the process
    # is not busy (the trap raises Stop here) and a serving thread lets Stop in.
    def hold_tunnel(tunnel, threaded)
      if threaded
        Thread.handle_interrupt(Stop => :immediate) { tunnel.wait }
      else
        raise Stop if @stop

        tunnel.wait
      end
    ensure
      tunnel.close
    end

    def oob_work(conn)
      rid = conn.rid
      @busy = true if @concurrency == 1
      begin
        PassengerRackLoader.fire_each(:oob_work)
      ensure
        @busy = false if @concurrency == 1
      end
      conn.write(PassengerRackLoader.frame(T_OOB_DONE, rid))
      raise Stop if @stop && @concurrency == 1
    end

    # The BODY frames after REQUEST, up to END or MORE: [prefix, more].
    def read_body_prefix(conn, rid)
      data = nil
      while true
        type = conn.read_request_frame(rid)
        if type == T_BODY
          chunk = conn.payload
          if data.nil?
            data = chunk
          else
            data = data.dup if data.frozen?
            data << chunk
          end
          raise ProtocolError.new('the body prefix exceeds 64 KiB', rid) if data.bytesize > MAX_PREFIX
        elsif type == T_END || type == T_MORE
          return [data || Connection::EMPTY, type == T_MORE]
        else
          raise ProtocolError.new("unexpected message type #{TYPE_NAMES[type]} in the body prefix", rid, :unexpected)
        end
      end
    end

    # Serves one REQUEST; returns the Hijack when it goes on after the app
    # returned, holding the connection: released (Hijack#release), or a
    # tunnel that was not (the app closed its end before it returned).
    def handle_request(conn)
      rid = conn.rid
      rid4 = conn.rid_bytes
      env = @base_env.dup
      begin
        flags = conn.decode_request(env, @base_env)
      rescue ProtocolError => e
        e.request_id = rid
        raise
      end
      input = EMPTY_INPUT
      if flags & FLAG_HAS_BODY != 0
        prefix, more = read_body_prefix(conn, rid)
        input = Input.new(conn, rid, prefix, more) if more || !prefix.empty?
      end
      PassengerRackLoader.complete_env(env, flags)
      env['rack.input'] = input
      upgrade = flags & FLAG_UPGRADE != 0
      hijack = env['rack.hijack'] = Hijack.new(conn, rid, rid4, env, @rack2, upgrade)
      finished = env['rack.response_finished'] = []
      conn.head_sent = false
      conn.ended = false
      respond(conn, rid, rid4, env, input, finished, hijack)
      held = hijack if hijack.hijacked? && (hijack.release || hijack.await_response)
    ensure
      input.detach if input.is_a?(Input)
      hijack.close if hijack && !held
      conn.declined_upgrade = upgrade && !held ? rid : nil
    end

    # Calls the app and sends its response. After a full hijack the response
    # is ignored (the app answers on the socket), as the Rack SPEC says.
    def respond(conn, rid, rid4, env, input, finished, hijack)
      head = env['REQUEST_METHOD'] == 'HEAD'
      status = headers = body = error = nil
      begin
        status, headers, body = @app.call(env)
        if hijack.hijacked?
          nil
        elsif (callback = partial_hijack(headers))
          hijack.partial(status, headers, callback)
        elsif PassengerRackLoader.status_code(status) == 101
          raise ArgumentError, 'a 101 response needs a hijacked connection (rack.hijack on an upgrade request)'
        elsif head
          out = PassengerRackLoader.encode_head(rid4, status, headers) << M_END << rid4 << ZERO4
          conn.head_sent = conn.ended = true
          conn.write(out)
        elsif body.instance_of?(Array)
          send_array(conn, rid4, status, headers, body)
        elsif (ary = array_of(body))
          send_array(conn, rid4, status, headers, ary)
        elsif body.respond_to?(:each)
          send_each(conn, rid4, status, headers, body)
        elsif body.respond_to?(:call)
          send_call(conn, rid4, status, headers, body, input)
        else
          raise TypeError, "the response body must respond to each or call (it is a #{body.class})"
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        error = e
        fail_response(conn, rid, rid4, env, e, head, hijack&.hijacked?)
        raise if e.is_a?(SystemExit) || e.is_a?(SignalException) || e.is_a?(Stop)
      ensure
        if body.respond_to?(:close)
          begin
            body.close
          rescue Exception => e # rubocop:disable Lint/RescueException
            PassengerRackLoader.log_exception('the response body failed to close', e)
            raise if e.is_a?(SystemExit) || e.is_a?(SignalException)
          end
        end
        run_finished(finished, env, status, headers, error) unless finished.empty?
      end
    end

    # The callable of a partial hijack: the 'rack.hijack' response header.
    def partial_hijack(headers)
      callback = headers['rack.hijack'] if headers.is_a?(Hash)
      return nil if callback.nil?
      unless callback.respond_to?(:call)
        raise TypeError, "the rack.hijack response header must be callable, not a #{callback.class}"
      end

      callback
    end

    # The Array behind a body, when there is one: to_ary (Rack 3), or the
    # array inside Rack 2's BodyProxy (which hides to_ary) - iterating the
    # proxy would yield just that.
    def array_of(body)
      if @rack2 && @body_proxy && body.instance_of?(@body_proxy)
        inner = body
        inner = inner.instance_variable_get(:@body) while inner.instance_of?(@body_proxy)
        return inner if inner.instance_of?(Array)
      end
      # Rack 2 says nothing of to_ary (and Rack 1 bodies answered it with
      # the whole response): only Rack 3, whose to_ary closes the body, uses it.
      return nil if @rack2 || !body.respond_to?(:to_ary)

      ary = body.to_ary
      ary.is_a?(Array) ? ary : nil
    end

    # An array body: RESPONSE, BODY frames and END in one writev (several
    # for a big body).
    def send_array(conn, rid4, status, headers, ary)
      out = PassengerRackLoader.encode_head(rid4, status, headers)
      parts = []
      size = 0
      i = 0
      n = ary.size
      while i < n
        chunk = ary[i]
        i += 1
        raise TypeError, "the response body must contain Strings, not #{chunk.class}" unless chunk.is_a?(String)
        next if chunk.empty?

        out = PassengerRackLoader.add_body(parts, out, rid4, chunk)
        size += chunk.bytesize
        next if size < FLUSH_AT

        parts << out
        conn.head_sent = true
        conn.write_parts(parts)
        parts = []
        out = String.new(EMPTY_BIN)
        size = 0
      end
      parts << (out << M_END << rid4 << ZERO4)
      conn.head_sent = conn.ended = true
      conn.write_parts(parts)
    end

    # A body to iterate: each non-empty chunk is sent at once.
    def send_each(conn, rid4, status, headers, body)
      pending = PassengerRackLoader.encode_head(rid4, status, headers)
      parts = []
      body.each do |chunk|
        raise TypeError, "the response body must yield Strings, not #{chunk.class}" unless chunk.is_a?(String)
        next if chunk.empty?

        out = pending || String.new(EMPTY_BIN)
        pending = nil
        out = PassengerRackLoader.add_body(parts, out, rid4, chunk)
        parts << out unless out.empty?
        conn.head_sent = true
        conn.write_parts(parts)
        parts.clear
      end
      out = (pending || String.new(EMPTY_BIN)) << M_END << rid4 << ZERO4
      conn.head_sent = conn.ended = true
      conn.write(out)
    end

    # A Rack 3 streaming body: the headers go out first, then body.call.
    def send_call(conn, rid4, status, headers, body, input)
      out = PassengerRackLoader.encode_head(rid4, status, headers)
      conn.head_sent = true
      conn.write(out)
      stream = Stream.new(conn, rid4, input)
      body.call(stream)
      stream.close
    end

    # The application failed: 500 before the RESPONSE, ERROR after it;
    # nothing once it hijacked the connection (the relay answers then).
    def fail_response(conn, rid, rid4, env, exc, head, hijacked)
      where = if hijacked then 'after it hijacked the connection'
              elsif !conn.head_sent then 'before the response headers were sent'
              elsif conn.ended then 'after the response was complete'
              else 'after the response headers were sent'
              end
      what = "#{env['REQUEST_METHOD']} #{env['SCRIPT_NAME']}#{env['PATH_INFO']}"
      if conn.failed && !hijacked
        PassengerRackLoader.log("request #{what} aborted: #{conn.failed.message}")
        return
      end
      PassengerRackLoader.log_exception("error while serving #{what} (#{where})", exc)
      return if conn.ended || hijacked

      if conn.head_sent
        conn.ended = true
        conn.write(PassengerRackLoader.error_frame(
                     ERROR_APPLICATION,
                     "the application failed after the response headers were sent: #{PassengerRackLoader.one_line(exc)}",
                     rid
                   ))
      else
        out = PassengerRackLoader.encode_head(rid4, 500, ERROR_HEADERS)
        out = PassengerRackLoader.add_body([], out, rid4, ERROR_PAGE) unless head
        out << M_END << rid4 << ZERO4
        conn.head_sent = conn.ended = true
        conn.write(out)
      end
    rescue IOError, SystemCallError
      nil # conn.failed is set: the connection is dropped
    end

    def run_finished(finished, env, status, headers, error)
      finished.reverse_each do |callback|
        callback.call(env, status, headers, error)
      rescue Exception => e # rubocop:disable Lint/RescueException
        raise if e.is_a?(SystemExit) || e.is_a?(SignalException)

        PassengerRackLoader.log_exception('a rack.response_finished callback failed', e)
      end
    end
  end

  # rack.version: Rack::VERSION where it is still the SPEC version array.
  def self.rack_version
    if defined?(::Rack::VERSION) && ::Rack::VERSION.is_a?(Array)
      ::Rack::VERSION
    else
      [1, 3]
    end
  end

  def self.percent_decode(str)
    str.gsub(/%[0-9A-Fa-f]{2}/n) { |m| m[1, 2].hex.chr }
  end

  # The CGI defaults and the Rack-specific fix-ups of a request's env.
  def self.complete_env(env, flags)
    if (value = env.delete('HTTP_CONTENT_LENGTH'))
      env['CONTENT_LENGTH'] ||= value
    end
    if (value = env.delete('HTTP_CONTENT_TYPE'))
      env['CONTENT_TYPE'] ||= value
    end
    env['REQUEST_METHOD'] ||= +'GET'
    env['QUERY_STRING'] ||= +''
    env['SERVER_NAME'] ||= +'localhost'
    env['SERVER_PROTOCOL'] ||= +'HTTP/1.0'
    https = env['HTTPS']
    if flags & FLAG_HTTPS != 0 || (https && (https == 'on' || https == '1' || https.casecmp?('on')))
      env['rack.url_scheme'] = 'https'
      env['HTTPS'] ||= +'on'
      env['SERVER_PORT'] ||= +'443'
    else
      env['SERVER_PORT'] ||= +'80'
    end

    script_name = env['SCRIPT_NAME'] ||= +''
    path_info = env['PATH_INFO'] ||= +''
    unless script_name.empty?
      if script_name == '/'
        env['SCRIPT_NAME'] = script_name = +''
        path_info = env['PATH_INFO'] = "/#{path_info}" unless path_info.start_with?('/')
      elsif !script_name.start_with?('/')
        env['SCRIPT_NAME'] = script_name = "/#{script_name}"
      end
    end
    if path_info.empty?
      env['PATH_INFO'] = +'/' if script_name.empty?
    elsif !path_info.start_with?('/')
      env['PATH_INFO'] = path_info = "/#{path_info}"
    end

    # PATH_INFO arrives percent-decoded (CGI style); Rack apps expect it as
    # sent by the client. Take it from REQUEST_URI when the two agree.
    uri = env['REQUEST_URI']
    if uri&.include?('%')
      raw = (q = uri.index('?')) ? uri.byteslice(0, q) : uri
      if raw.start_with?(script_name)
        raw_info = raw.byteslice(script_name.bytesize, raw.bytesize - script_name.bytesize)
        if raw_info.start_with?('/') && percent_decode(raw_info) == path_info.b
          env['PATH_INFO'] = raw_info
        end
      end
    end
    env
  end

  # -- Loading the application ---------------------------------------------

  # A minimal rackup DSL, for when the rack gem cannot be loaded.
  class MiniBuilder
    def initialize(&block)
      @use = []
      @run = nil
      @warmup = nil
      instance_eval(&block) if block
    end

    def use(middleware, *args, &block)
      @use << proc { |app| middleware.new(app, *args, &block) }
    end
    ruby2_keywords(:use) if respond_to?(:ruby2_keywords, true)

    def run(app = nil, &block)
      @run = app || block
    end

    def warmup(prc = nil, &block)
      @warmup = prc || block
    end

    def map(*)
      raise NotImplementedError, "'map' in a rackup file needs the rack gem, which could not be loaded"
    end

    def to_app
      raise ArgumentError, 'missing run or map statement' unless @run

      app = @use.reverse.inject(@run) { |a, e| e.call(a) }
      @warmup&.call(app)
      app
    end
  end

  # The rackup file as an app: Rack::Builder (Rack 2 or 3) evaluates it.
  def self.load_rackup(path)
    code = File.read(path, mode: 'rb').force_encoding(Encoding::UTF_8)
    if code.valid_encoding?
      code = code.delete_prefix("\uFEFF")
      code = code.sub(/^__END__\n.*\z/m, '')
    end
    if defined?(::Rack::Builder)
      ::Rack::Builder.new_from_string(code, path)
    else
      eval("PassengerRackLoader::MiniBuilder.new {\n#{code}\n}.to_app", TOPLEVEL_BINDING, path, 0) # rubocop:disable Security/Eval
    end
  end

  # Bundler and friends (reference §4.6): the first that exists wins.
  def self.setup_load_paths
    if File.exist?('config/setup_load_paths.rb')
      require File.expand_path('config/setup_load_paths.rb')
    elsif File.exist?('.bundle/environment.rb')
      require File.expand_path('.bundle/environment.rb')
    elsif File.exist?('Gemfile') || File.exist?('gems.rb')
      require 'bundler'
      bundler_setup
    end
  end

  # Bundler.setup. Writing the lockfile is its last step: when the app root
  # is not writable (a Gemfile without its lock, deployed read-only), the
  # bundle is set up all the same, so the loader goes on without the lock.
  def self.bundler_setup
    ::Bundler.setup
  rescue ::Bundler::PermissionError => e
    lockfile = File.basename(::Bundler.default_lockfile.to_s)
    raise if ::Bundler::Definition.no_lock || !e.message.include?(lockfile)

    log("Bundler cannot write #{lockfile} (#{e.message.lines.first.to_s.strip}); going on without it " \
        "(run `bundle lock` in the app root so that it need not resolve at every start)")
    ::Bundler::Definition.no_lock = true
    ::Bundler.setup
  end

  # Lets `require 'phusion_passenger/rack/out_of_band_gc'` (the old way)
  # find the built-in PhusionPassenger libraries.
  def self.provide_passenger_features
    dir = File.join(File.dirname(LOADER_FILE), '.passenger-builtin')
    $LOAD_PATH << dir unless $LOAD_PATH.include?(dir)
    features = ['phusion_passenger.rb'] + PhusionPassenger::PROVIDED_LIBS.map { |l| "phusion_passenger/#{l}.rb" }
    features.each do |f|
      path = File.join(dir, f)
      $LOADED_FEATURES << path unless $LOADED_FEATURES.include?(path)
    end
  end

  def self.load_application(startup_file)
    setup_load_paths
    begin
      require 'rack'
      require 'uri' # Rack 2's Lint uses URI without loading it; servers do
    rescue LoadError => e
      log("the rack gem cannot be loaded (#{e.message}); using a minimal rackup DSL")
    end
    provide_passenger_features
    path = File.expand_path(startup_file)
    raise LoadError, "the startup file #{path} does not exist" unless File.file?(path)

    app = load_rackup(path)
    raise TypeError, "the rackup file #{path} gave #{app.inspect}, which does not respond to call" unless app.respond_to?(:call)

    app
  end

  def self.concurrency_level
    level = PhusionPassenger.advertised_concurrency_level
    return 1 if level.nil?

    unless level.is_a?(Integer) && level >= 0 && level < 2**32
      raise ArgumentError, 'PhusionPassenger.advertised_concurrency_level must be nil or an Integer >= 0, ' \
                           "not #{level.inspect}"
    end
    level
  end

  def self.bundler_error?(exc)
    defined?(::Bundler::BundlerError) && exc.is_a?(::Bundler::BundlerError)
  end

  def self.spawn_error_summary(exc)
    if bundler_error?(exc)
      first = exc.message.to_s.strip.lines.first.to_s.chomp.chomp('.')
      if defined?(::Bundler::GemNotFound) && exc.is_a?(::Bundler::GemNotFound)
        gem = first[/Could not find gem '([^']+)'/, 1] || first[/Could not find ([^\s,]+?)(?:-\d[^\s]*)? in/, 1]
        return "Bundler could not find gem '#{gem}' (#{first}; run `bundle install` in the app root)" if gem
      end
      return "Bundler: #{one_line(exc)}"
    end
    one_line(exc)
  end

  # Closes +io+; a failure to close (it is gone already) is nobody's concern.
  def self.close_quietly(io)
    io.close
  rescue IOError, SystemCallError
    nil
  end

  def self.write_all(io, data)
    io.write(data)
    io.flush
  end

  def self.report_spawn_error(ready, exc)
    summary = spawn_error_summary(exc)
    details = describe(exc)
    $stderr.write("[rack-loader #{Process.pid}] could not load the application: #{summary}\n#{details}")
    summary = utf8(summary).byteslice(0, 4096).scrub('?')
    details = utf8(details).byteslice(0, 512 * 1024).scrub('?')
    begin
      write_all(ready, frame(T_SPAWN_ERROR, 0, encode_bytes(summary) + encode_bytes(details)))
      ready.close
    rescue IOError, SystemCallError => e
      log("could not report the spawn error on fd 4: #{e.message}")
    end
  end

  # Writes READY on the readiness pipe and closes it. In a preloader the fd
  # stays taken (by /dev/null) so that fd 4 is free for nothing else.
  def self.report_ready(ready, concurrency, keep_fd: false)
    write_all(ready, frame(T_READY, 0, [concurrency].pack('N')))
    if keep_fd
      ready.reopen(File::NULL, 'w')
    else
      ready.close
    end
  end

  def self.install_traps(server)
    handler = proc { server.stop! }
    trap('TERM', &handler)
    trap('INT', &handler)
    trap('QUIT') { Thread.new { dump_threads } }
    PhusionPassenger.call_event(:after_installing_signal_handlers)
  rescue StandardError, ScriptError => e
    log_exception('an after_installing_signal_handlers handler failed', e)
  end

  def self.dump_threads
    text = +"[rack-loader #{Process.pid}] thread backtraces:\n"
    Thread.list.each do |t|
      text << "Thread #{t.inspect}:\n"
      (t.backtrace || []).each { |l| text << "    #{l}\n" }
    end
    $stderr.write(text)
  rescue StandardError
    nil
  end

  # The title `ps` shows for an app process, as the original names it.
  def self.app_title
    group = ENV['PASSENGER_APP_GROUP_NAME']
    "Passenger RubyApp: #{group.nil? || group.empty? ? Dir.pwd : group}"
  end

  # Reports READY on +ready+ and serves with a Server until it stops; then
  # stopping_worker_process. The traps are set before READY goes out.
  def self.run_server(app, concurrency, listener, ready, parent_pid, agent_pid = nil)
    server = Server.new(app, concurrency, parent_pid, agent_pid)
    code = 0
    begin
      install_traps(server)
      begin
        report_ready(ready, concurrency)
      rescue IOError, SystemCallError => e
        log("could not report readiness on fd 4: #{e.message}; exiting")
        return code = 1
      end
      code = server.serve(listener)
    rescue Stop
      code = 0
    rescue SystemExit => e
      code = e.status
    ensure
      trap('TERM', 'IGNORE')
      trap('INT', 'IGNORE')
      close_quietly(listener)
      fire_each(:stopping_worker_process)
    end
    code
  end

  def self.socket_type(sock)
    sock.getsockopt(Socket::SOL_SOCKET, Socket::SO_TYPE).int
  end

  def self.setup_environment(app_root)
    ENV['PASSENGER_APP_ROOT'] ||= app_root
    app_env = ENV['PASSENGER_APP_ENV'] || ENV['RACK_ENV'] || ENV['RAILS_ENV']
    if app_env && !app_env.empty?
      ENV['RACK_ENV'] ||= app_env
      ENV['RAILS_ENV'] ||= app_env
    end
    base_uri = ENV['PASSENGER_BASE_URI']
    return unless base_uri && !base_uri.empty? && base_uri != '/'

    ENV['RAILS_RELATIVE_URL_ROOT'] ||= base_uri
    ENV['RACK_BASE_URI'] ||= base_uri
  end

  def self.main
    $stdout.sync = true
    $stderr.sync = true
    parent_pid = Process.ppid
    preloader = ENV['PASSENGER_SPAWN_METHOD'] == 'smart'
    app_root = ENV['PASSENGER_APP_ROOT']
    app_root = Dir.pwd if app_root.nil? || app_root.empty?
    startup_file = ENV['PASSENGER_STARTUP_FILE']
    startup_file = 'config.ru' if startup_file.nil? || startup_file.empty?
    begin
      ready = IO.for_fd(4, 'w')
      ready.close_on_exec = true
      ready.binmode
      ready.sync = true
    rescue SystemCallError, ArgumentError => e
      log("fd 4 (the readiness pipe) is not usable: #{e.message}; exiting")
      return 1
    end

    begin
      sock = Socket.for_fd(3)
      sock.close_on_exec = true
      sock.binmode
      raise IOError, 'fd 3 is not a stream socket' unless socket_type(sock) == Socket::SOCK_STREAM
      if sock.getsockopt(Socket::SOL_SOCKET, Socket::SO_ACCEPTCONN).bool == preloader
        raise IOError, preloader ? 'fd 3 must be a connected socket (the control channel), not a listening one' :
                                   'fd 3 is not a listening socket'
      end

      Dir.chdir(app_root) if Dir.pwd != app_root
      # Set before the app loads, so that an app that names itself wins.
      Process.setproctitle(preloader ? "Passenger AppPreloader: #{app_root}" : app_title)
      setup_environment(app_root)
      app = load_application(startup_file)
      PhusionPassenger.call_event(:starting_worker_process, false) unless preloader
      concurrency = concurrency_level
    rescue Exception => e # rubocop:disable Lint/RescueException
      report_spawn_error(ready, e)
      return 1
    end

    return Preloader.new(app, sock, ready, concurrency, parent_pid).run if preloader

    run_server(app, concurrency, sock, ready, parent_pid)
  end

  # -- Smart spawning --------------------------------------------------------

  # The control connection of a preloader: frames read with recvmsg so the
  # descriptors sent with FORK (SCM_RIGHTS) are collected on the way.
  class ControlConnection < Connection
    attr_reader :fds

    def initialize(io)
      super
      @fds = []
    end

    def fill
      pending = @pos < @buf.bytesize
      data, _addr, rflags, *controls = @io.recvmsg(RECV_SIZE, 0, 1024, scm_rights: true)
      controls.each do |c|
        @fds.concat(c.unix_rights) if c.cmsg_is?(:SOCKET, :RIGHTS) && c.unix_rights
      end
      if rflags.anybits?(Socket::MSG_CTRUNC)
        PassengerRackLoader.log('received descriptors were truncated (MSG_CTRUNC)')
      end
      if data.nil? || data.empty?
        raise ProtocolError.new('the connection was closed in the middle of a frame', 0, :eof) if pending

        return false
      end
      rest = @pos.positive? ? @buf.unpack1('a*', offset: @pos) : @buf
      rest << data
      @buf = rest
      @pos = 0
      true
    rescue Errno::ECONNRESET
      raise ProtocolError.new('the connection was closed in the middle of a frame', 0, :eof) if pending

      false
    end
  end

  # Loads the app once, then forks a worker for every FORK frame.
  class Preloader
    def initialize(app, control, ready, concurrency, parent_pid)
      @app = app
      @control = control
      @ready = ready
      @concurrency = concurrency
      @parent_pid = parent_pid
      @stop = false
    end

    def run
      trap('TERM') { raise Stop }
      trap('INT') { raise Stop }
      trap('QUIT') { Thread.new { PassengerRackLoader.dump_threads } }
      compact
      begin
        PassengerRackLoader.report_ready(@ready, @concurrency, keep_fd: true)
      rescue IOError, SystemCallError => e
        PassengerRackLoader.log("could not report readiness on fd 4: #{e.message}; exiting")
        return 1
      end
      serve_control
    rescue Stop
      0
    end

    private

    # Copy-on-write friendliness: one full, compacting GC before any fork.
    def compact
      GC.start
      GC.compact if GC.respond_to?(:compact)
    rescue NotImplementedError, StandardError
      nil
    end

    def serve_control
      conn = ControlConnection.new(@control)
      while true
        readable, = IO.select([@control], nil, nil, 2)
        unless readable
          if @parent_pid > 1 && Process.ppid != @parent_pid
            PassengerRackLoader.log('the agent is gone; the preloader exits')
            return 0
          end
          next
        end
        type = conn.read_frame
        return 0 if type.nil?

        while type
          case type
          when T_FORK then fork_worker(conn)
          when T_PING then @control.write(PassengerRackLoader.frame(T_PONG, conn.rid))
          else
            raise ProtocolError.new("unexpected message type #{TYPE_NAMES[type]} on the control channel",
                                    conn.rid, :unexpected)
          end
          type = conn.buffered_frame
        end
      end
    rescue ProtocolError => e
      PassengerRackLoader.log("protocol error on the control channel: #{e.message}; the preloader exits")
      unless e.kind == :eof
        begin
          @control.write(PassengerRackLoader.error_frame(e.code, e.message, e.request_id))
        rescue IOError, SystemCallError
          nil
        end
      end
      1
    rescue IOError, SystemCallError => e
      PassengerRackLoader.log("the control channel failed: #{e.message}; the preloader exits")
      1
    end

    def fork_worker(conn)
      fds = conn.fds.shift(3)
      if fds.size < 3
        fds.each { |io| close_quietly(io) }
        @control.write(PassengerRackLoader.error_frame(ERROR_PROTOCOL, 'FORK came without its three descriptors',
                                                       conn.rid))
        return
      end
      begin
        pid = Process.fork do
          exit(Worker.new(@app, @control, @ready, fds, conn.fds, @concurrency, @parent_pid).run)
        end
      rescue SystemCallError, NotImplementedError => e
        fds.each { |io| close_quietly(io) }
        @control.write(PassengerRackLoader.error_frame(ERROR_APPLICATION, "fork failed: #{e.message}", conn.rid))
        return
      end
      fds.each { |io| close_quietly(io) }
      Process.detach(pid)
      @control.write(PassengerRackLoader.frame(T_FORKED, conn.rid, [pid].pack('N')))
    end

    def close_quietly(io)
      io.close
    rescue IOError, SystemCallError
      nil
    end
  end

  class Connection
    # The next frame if it is already in the buffer, else nil (no reading).
    def buffered_frame
      return nil if @buf.bytesize - @pos < HEADER_LEN

      len = @buf.unpack1('N', offset: @pos + 8)
      return nil if len <= MAX_PAYLOAD && @buf.bytesize - @pos < HEADER_LEN + len

      read_frame
    end
  end

  # A worker freshly forked from the preloader.
  class Worker
    def initialize(app, control, ready_placeholder, fds, other_fds, concurrency, agent_pid)
      @agent_pid = agent_pid
      @app = app
      @control = control
      @ready_placeholder = ready_placeholder
      @fds = fds
      @other_fds = other_fds
      @concurrency = concurrency
    end

    def run
      preloader_pid = Process.ppid
      Process.setproctitle(PassengerRackLoader.app_title)
      trap('TERM', 'DEFAULT')
      trap('INT', 'DEFAULT')
      listener_io, ready_io, output_io = @fds
      @other_fds.each { |io| io.close rescue nil } # rubocop:disable Style/RescueModifier
      # fds 1 to 4 are taken (stdio, the control socket, the /dev/null that
      # holds fd 4), so the received descriptors are elsewhere: dup2 is safe.
      STDOUT.reopen(output_io)
      STDERR.reopen(output_io)
      STDOUT.sync = true
      STDERR.sync = true
      @control.reopen(listener_io)
      @control.autoclose = false
      @ready_placeholder.reopen(ready_io)
      [listener_io, ready_io, output_io].each { |io| io.close rescue nil } # rubocop:disable Style/RescueModifier
      ready = @ready_placeholder
      ready.sync = true
      listener = Socket.for_fd(3)
      listener.close_on_exec = true
      begin
        raise IOError, 'the listening socket sent with FORK is not a stream socket' unless
          PassengerRackLoader.socket_type(listener) == Socket::SOCK_STREAM

        PhusionPassenger.call_event(:starting_worker_process, true)
        concurrency = PassengerRackLoader.concurrency_level
      rescue Exception => e # rubocop:disable Lint/RescueException
        PassengerRackLoader.report_spawn_error(ready, e)
        return 1
      end
      PassengerRackLoader.run_server(@app, concurrency, listener, ready, preloader_pid, @agent_pid)
    end
  end
end

exit(PassengerRackLoader.main) if $PROGRAM_NAME == __FILE__
