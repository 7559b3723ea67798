# An app with a Gemfile: the loader runs Bundler.setup before this file.
run lambda { |env| [200, { 'content-type' => 'text/plain' }, ["bundled #{defined?(Bundler) ? 'yes' : 'no'}"]] }
