#!/usr/bin/env bash
# `make run`: a demo upstream (python3's http.server over examples/www) on
# 127.0.0.1:9000 when nothing listens there yet, then moongate in the
# foreground. The upstream is stopped by PID when moongate exits.
BIN=${1:-build/moongate}
CONFIG=${2:-examples/quickstart.lua}
cd "$(dirname "$0")/.." || exit 1
UP_PID=
if ! (exec 3<>/dev/tcp/127.0.0.1/9000) 2>/dev/null; then
  python3 -m http.server 9000 --bind 127.0.0.1 --directory examples/www >/dev/null 2>&1 &
  UP_PID=$!
  trap 'kill $UP_PID 2>/dev/null' EXIT INT TERM
  for _ in $(seq 50); do  # wait until it answers (5 s at most)
    (exec 3<>/dev/tcp/127.0.0.1/9000) 2>/dev/null && break
    sleep 0.1
  done
  echo "demo upstream on 127.0.0.1:9000 (pid $UP_PID)"
fi
case "$CONFIG" in
  *quickstart.lua) echo "moongate on 127.0.0.1:8080 — try: curl -i localhost:8080/hello ; curl -i localhost:8080/app/" ;;
  *) echo "moongate with $CONFIG — examples/README.md has its curl commands" ;;
esac
"$BIN" -c "$CONFIG"
