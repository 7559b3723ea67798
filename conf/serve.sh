#!/bin/sh
# Serves the example apps in conf/examples through a real Apache on
# 127.0.0.1 with the module from the build tree: the WSGI app on port $PORT
# (default 8080), the Rack app on $PORT+1 and the Node.js app on $PORT+2.
#   conf/serve.sh <build dir>    start (the build dir holds mod_passenger.so)
#   conf/serve.sh --stop         stop
set -eu
PORT="${PORT:-8080}"
RUN="${MP_SERVE_DIR:-/tmp/mod_passenger-serve}"
here="$(cd "$(dirname "$0")" && pwd)"

if [ "${1:-}" = "--stop" ]; then
    [ -f "$RUN/httpd.conf" ] && /usr/sbin/apache2 -f "$RUN/httpd.conf" -k stop
    exit 0
fi
build="$(cd "${1:?usage: serve.sh <build dir> | --stop}" && pwd)"

mkdir -p "$RUN"
[ -f "$RUN/httpd.pid" ] && /usr/sbin/apache2 -f "$RUN/httpd.conf" -k stop 2>/dev/null && sleep 1
rm -rf "$RUN/apps"
cp -R "$here/examples" "$RUN/apps"
chmod -R a+rX "$RUN"
user_lines=""
if [ "$(id -u)" = 0 ]; then user_lines="User www-data
Group www-data"; fi
mods=/usr/lib/apache2/modules
cat > "$RUN/httpd.conf" <<CONF
ServerRoot "$RUN"
ServerName 127.0.0.1
Listen 127.0.0.1:$PORT
Listen 127.0.0.1:$((PORT + 1))
Listen 127.0.0.1:$((PORT + 2))
PidFile $RUN/httpd.pid
ErrorLog $RUN/error.log
DefaultRuntimeDir $RUN
$user_lines
LoadModule mpm_event_module $mods/mod_mpm_event.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule mime_module $mods/mod_mime.so
LoadModule dir_module $mods/mod_dir.so
LoadModule env_module $mods/mod_env.so
TypesConfig /etc/mime.types
LoadModule passenger_module $build/mod_passenger.so

<Directory $RUN/apps>
    Require all granted
</Directory>
<VirtualHost 127.0.0.1:$PORT>
    ServerName 127.0.0.1
    DocumentRoot $RUN/apps/hello-wsgi/public
</VirtualHost>
<VirtualHost 127.0.0.1:$((PORT + 1))>
    ServerName 127.0.0.1
    DocumentRoot $RUN/apps/hello-rack/public
</VirtualHost>
<VirtualHost 127.0.0.1:$((PORT + 2))>
    ServerName 127.0.0.1
    DocumentRoot $RUN/apps/hello-node/public
</VirtualHost>
CONF
/usr/sbin/apache2 -f "$RUN/httpd.conf" -k start
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break
    sleep 0.1
done
echo "Serving the example apps through Apache:"
echo "  http://127.0.0.1:$PORT/              the WSGI app (conf/examples/hello-wsgi)"
echo "  http://127.0.0.1:$PORT/static.html   a static file, served by Apache"
echo "  http://127.0.0.1:$((PORT + 1))/              the Rack app (conf/examples/hello-rack)"
echo "  http://127.0.0.1:$((PORT + 2))/              the Node.js app (conf/examples/hello-node)"
echo "Error log: $RUN/error.log    Stop: make stop"
