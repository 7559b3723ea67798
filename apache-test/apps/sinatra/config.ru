# A real Rack framework, unchanged.
require 'sinatra/base'

class Hello < Sinatra::Base
  set :host_authorization, { permitted_hosts: [] } if respond_to?(:host_authorization)

  get '/hello/:name' do
    "Hello, #{params[:name]}! q=#{params[:q]}"
  end

  post '/form' do
    "got #{params[:a]}"
  end
end

run Hello
