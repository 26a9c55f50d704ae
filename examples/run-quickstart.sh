#!/usr/bin/env bash
# `make run`: a demo upstream (python3's http.server over examples/www) on
# 127.0.0.1:$UPSTREAM_PORT when nothing listens there yet, then moongate in
# the foreground. The upstream is stopped by PID when moongate exits.
# Ports come from the environment, as the example configs read them:
#   MOONGATE_PORT (default 8080)  the gateway
#   UPSTREAM_PORT (default 9000)  the demo upstream
#   ADMIN_PORT    (default 9901)  the admin API (quickstart.lua)
#   REDIS_PORT    (default 6379)  Redis (auth_proxy.lua)
BIN=${1:-build/moongate}
CONFIG=${2:-examples/quickstart.lua}
export MOONGATE_PORT=${MOONGATE_PORT:-8080} UPSTREAM_PORT=${UPSTREAM_PORT:-9000}
export ADMIN_PORT=${ADMIN_PORT:-9901} REDIS_PORT=${REDIS_PORT:-6379}
cd "$(dirname "$0")/.." || exit 1
UP_PID=
if ! (exec 3<>"/dev/tcp/127.0.0.1/$UPSTREAM_PORT") 2>/dev/null; then
  python3 -m http.server "$UPSTREAM_PORT" --bind 127.0.0.1 --directory examples/www >/dev/null 2>&1 &
  UP_PID=$!
  trap 'kill $UP_PID 2>/dev/null' EXIT INT TERM
  for _ in $(seq 50); do  # wait until it answers (5 s at most)
    (exec 3<>"/dev/tcp/127.0.0.1/$UPSTREAM_PORT") 2>/dev/null && break
    sleep 0.1
  done
  echo "demo upstream on 127.0.0.1:$UPSTREAM_PORT (pid $UP_PID)"
fi
case "$CONFIG" in
  *quickstart.lua) echo "moongate on 127.0.0.1:$MOONGATE_PORT — try: curl -i localhost:$MOONGATE_PORT/hello ; curl -i localhost:$MOONGATE_PORT/app/" ;;
  *) echo "moongate with $CONFIG on 127.0.0.1:$MOONGATE_PORT — examples/README.md has its curl commands" ;;
esac
"$BIN" -c "$CONFIG"
