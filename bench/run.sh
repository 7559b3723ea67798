#!/bin/sh
# The benchmark's one command (`make bench`): installs what it needs, builds
# our module in release mode, then runs bench/bench.py.
#   bench/run.sh              the comparison (BENCH_QUICK=1: 3 s runs, 1 round)
#   SOAK=1 bench/run.sh       the 60 s soak run against our module (and a
#                             control against Apache alone), load from bench/soak-client
# Extra arguments go to bench/bench.py (`bench/bench.py --help`).
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

packages="apache2 libapache2-mod-passenger libapache2-mod-wsgi-py3 ruby-rack wrk nodejs python3 curl"
missing=""
for p in $packages; do
    # nodejs may come from elsewhere than Debian: a working node is enough.
    if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench: missing packages:$missing (run as root to install them)" >&2
        exit 2
    fi
    echo "bench: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >&2
fi

make -C "$repo" module PROFILE=release >&2

export BENCH_COMMAND="${BENCH_COMMAND:-make bench${SOAK:+ SOAK=$SOAK}${BENCH_QUICK:+ BENCH_QUICK=$BENCH_QUICK}}"
if [ "${SOAK:-0}" = 1 ]; then
    # The soak's load generator, a package of its own with its own target
    # directory (make exports CARGO_TARGET_DIR for the module's build).
    CARGO_TARGET_DIR="$here/soak-client/target" \
        cargo build --release --manifest-path "$here/soak-client/Cargo.toml" >&2
    exec /usr/bin/python3 "$here/bench.py" soak "$@"
fi
exec /usr/bin/python3 "$here/bench.py" run "$@"
