#!/usr/bin/env bash
# bench/reload.sh: the throughput dip during a reload under load.
#
# Starts moongate (workers = 2 by default) with a handler route and a plugin
# route, drives it with a small Python client (one selector loop) that keeps 32 keep-alive
# connections busy for 6 s and counts completed requests per 100 ms, and
# reloads at t = 3 s (the config flips to a second version first, so the
# reload really swaps routes and plugins). Prints requests/s per 100 ms
# around the reload and writes the table into bench/RESULTS.md between
# <!-- reload:begin --> and <!-- reload:end --> (other sections untouched).
#
# Environment (defaults in brackets):
#   RELOAD_WORKERS [2]        moongate workers
#   RELOAD_CONNS [32]         client connections
#   RELOAD_DURATION [6]       seconds of load
#   RELOAD_AT [3]             seconds into the load when the reload is sent
#   RELOAD_BY [post]          post (POST /reload on the admin listener) or hup (SIGHUP)
#   RELOAD_LISTEN_CHANGE [0]  1: the new config also adds a listener (on
#                             workers > 1 that is a rolling restart of the workers)
#   RELOAD_WINDOW ["-1000 2000"]  ms around the reload shown in the table
#   BENCH_RESULTS [bench/RESULTS.md]  "" to not write a file
#   BENCH_KEEP [0]            1: keep the temp dir
#   MOONGATE_BIN [build/moongate]  PYTHON [python3]
# Everything runs on 127.0.0.1, from one mktemp -d directory; moongate is
# stopped by PID on exit. Exits non-zero only if it cannot run.

set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
WORKERS=${RELOAD_WORKERS:-2}
CONNS=${RELOAD_CONNS:-32}
DURATION=${RELOAD_DURATION:-6}
AT=${RELOAD_AT:-3}
BY=${RELOAD_BY:-post}
LISTEN_CHANGE=${RELOAD_LISTEN_CHANGE:-0}
WINDOW=${RELOAD_WINDOW:--1000 2000}
RESULTS=${BENCH_RESULTS-$BENCH_DIR/RESULTS.md}
KEEP=${BENCH_KEEP:-0}
MOONGATE_BIN=${MOONGATE_BIN:-$REPO/build/moongate}
PYTHON=${PYTHON:-python3}

log() { printf '[reload %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in WORKERS CONNS DURATION AT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "RELOAD_$v must be a whole number, got '${!v}'"
done
[ "$AT" -ge 1 ] && [ "$AT" -lt "$DURATION" ] || die "RELOAD_AT must be in [1, RELOAD_DURATION)"
case $BY in post|hup) ;; *) die "RELOAD_BY must be post or hup" ;; esac
[ -x "$MOONGATE_BIN" ] || die "moongate not built: $MOONGATE_BIN"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
command -v curl >/dev/null || die "curl not found"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/moongate-reload.XXXXXX") || die "mktemp failed"
MG_PID=
CLIENT_PID=
stop_pid() {  # pid: TERM, wait up to 5 s, then KILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}
cleanup() {
  trap - EXIT INT TERM HUP
  [ -n "$CLIENT_PID" ] && stop_pid "$CLIENT_PID"
  [ -n "$MG_PID" ] && stop_pid "$MG_PID"
  if [ "$KEEP" = 1 ]; then log "kept work dir: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

free_port() {  # a port nothing listens on, below the ephemeral range
  "$PYTHON" - <<'EOF'
import random, socket
for _ in range(500):
    p = random.randint(10000, 30000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
EOF
}
PORT=$(free_port); ADMIN=$(free_port); PORT2=$(free_port)
[ -n "$PORT" ] && [ -n "$ADMIN" ] && [ -n "$PORT2" ] || die "no free port"

mkdir -p "$WORK/plugins"
cat >"$WORK/plugins/bench_tag.lua" <<'EOF'
-- bench/reload.sh: a plugin on the route, so that a reload loads plugins too.
return {
  name = "bench_tag",
  schema = { version = { type = "string", required = true } },
  access = function(conf, req) req.ctx.bench_version = conf.version end,
  response = function(conf, req, res) res:set_header("X-Bench-Version", conf.version) end,
}
EOF
config() {  # version listen...
  local v=$1; shift
  local ls="" a
  for a in "$@"; do ls="$ls{ addr = \"127.0.0.1:$a\" }, "; done
  cat <<EOF
return {
  workers = $WORKERS,
  listen = { $ls},
  admin = { addr = "127.0.0.1:$ADMIN" },
  access_log = false,
  limits = { drain_timeout = 10 },
  plugin_path = { "$WORK/plugins" },
  routes = {
    { name = "hello", match = { path = "/hello" },
      plugins = { { "bench_tag", version = "$v" } },
      handler = function(req) return 200, "hello $v" end },
    { name = "other", match = { prefix = "/other/" },
      handler = function(req) return 200, "other $v" end },
  },
}
EOF
}
config A "$PORT" >"$WORK/moongate.lua"
if [ "$LISTEN_CHANGE" = 1 ]; then
  config B "$PORT" "$PORT2" >"$WORK/moongate-next.lua"
else
  config B "$PORT" >"$WORK/moongate-next.lua"
fi

ulimit -n 4096 2>/dev/null || true
"$MOONGATE_BIN" -c "$WORK/moongate.lua" >"$WORK/moongate.out" 2>"$WORK/moongate.err" </dev/null &
MG_PID=$!
deadline=$(( $(date +%s) + 15 ))
until [ "$(curl -s --noproxy '*' --max-time 1 "http://127.0.0.1:$PORT/hello" 2>/dev/null)" = "hello A" ]; do
  kill -0 "$MG_PID" 2>/dev/null || { tail -20 "$WORK/moongate.err" >&2; die "moongate exited at start"; }
  [ "$(date +%s)" -ge "$deadline" ] && { tail -20 "$WORK/moongate.err" >&2; die "moongate does not answer"; }
  sleep 0.1
done
log "moongate pid $MG_PID, workers $WORKERS, listening on $PORT (admin $ADMIN)"

cat >"$WORK/client.py" <<'EOF'
"""Keep-alive load on N connections (one selector loop); completions per
100 ms; a reload (POST /reload or SIGHUP) at AT s."""
import json, os, selectors, shutil, signal, socket, sys, threading, time

port, admin, conns, duration, at = (int(x) for x in sys.argv[1:6])
by, cfg, nxt, mg_pid, out_path = sys.argv[6], sys.argv[7], sys.argv[8], int(sys.argv[9]), sys.argv[10]
REQ = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"
BUCKET = 0.1
nb = int(duration / BUCKET) + 1
done = [0] * nb
errors = [0] * nb
versions = [{} for _ in range(nb)]
events = {}
t0 = time.monotonic()
stop = t0 + duration


def bucket(t):
    return min(nb - 1, max(0, int((t - t0) / BUCKET)))


def reloader():
    time.sleep(max(0.0, t0 + at - time.monotonic()))
    shutil.copy(nxt, cfg + ".tmp")
    os.replace(cfg + ".tmp", cfg)
    events["reload_sent"] = time.monotonic() - t0
    if by == "hup":
        os.kill(mg_pid, signal.SIGHUP)
        events["reload_answer"] = "SIGHUP sent"
        return
    s = socket.create_connection(("127.0.0.1", admin), timeout=10)
    s.sendall(b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n"
              b"Connection: close\r\n\r\n")
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    events["reload_answered"] = time.monotonic() - t0
    events["reload_answer"] = data.split(b"\r\n\r\n", 1)[-1].decode("latin-1").strip()


sel = selectors.DefaultSelector()


def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    st = {"buf": b"", "sent": False}
    sel.register(s, selectors.EVENT_WRITE, st)


def fail(s):
    errors[bucket(time.monotonic())] += 1
    sel.unregister(s)
    s.close()
    if time.monotonic() < stop:
        connect()


th = threading.Thread(target=reloader, daemon=True)
th.start()
for _ in range(conns):
    connect()
while time.monotonic() < stop:
    for key, ev in sel.select(timeout=0.05):
        s, st = key.fileobj, key.data
        try:
            if ev & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s)
                    continue
                s.send(REQ)
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            chunk = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            fail(s)
            continue
        if not chunk:
            fail(s)
            continue
        buf = st["buf"] + chunk
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                break
            head = buf[:i]
            j = head.lower().find(b"content-length:")
            cl = int(head[j + 15:].split(b"\r\n", 1)[0]) if j >= 0 else 0
            if len(buf) < i + 4 + cl:
                break
            body = buf[i + 4:i + 4 + cl]
            buf = buf[i + 4 + cl:]
            b = bucket(time.monotonic())
            if head[9:12] == b"200":
                done[b] += 1
                v = body[6:].decode("latin-1") if body.startswith(b"hello ") else "?"
                versions[b][v] = versions[b].get(v, 0) + 1
            else:
                errors[b] += 1
            if time.monotonic() < stop:
                try:
                    s.send(REQ)
                except OSError:
                    pass
        st["buf"] = buf
th.join(10)
for key in list(sel.get_map().values()):
    key.fileobj.close()
json.dump({"done": done, "errors": errors, "versions": versions, "events": events,
           "bucket": BUCKET}, open(out_path, "w"))
EOF

log "load: $CONNS connections for ${DURATION}s, reload ($BY) at ${AT}s"
"$PYTHON" "$WORK/client.py" "$PORT" "$ADMIN" "$CONNS" "$DURATION" "$AT" "$BY" \
  "$WORK/moongate.lua" "$WORK/moongate-next.lua" "$MG_PID" "$WORK/client.json" &
CLIENT_PID=$!
wait "$CLIENT_PID"; rc=$?; CLIENT_PID=
[ "$rc" = 0 ] && [ -s "$WORK/client.json" ] || die "the client failed ($rc)"
kill -0 "$MG_PID" 2>/dev/null || { tail -20 "$WORK/moongate.err" >&2; die "moongate died during the run"; }
STATUS=$(curl -s --noproxy '*' --max-time 2 "http://127.0.0.1:$ADMIN/status")

"$PYTHON" - "$WORK/client.json" "$WINDOW" "$RESULTS" "$WORKERS" "$CONNS" "$BY" "$LISTEN_CHANGE" \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$("$MOONGATE_BIN" --version 2>/dev/null)" "$STATUS" <<'EOF'
import json, statistics, sys
data = json.load(open(sys.argv[1]))
lo, hi = (int(x) for x in sys.argv[2].split())
results, workers, conns, by, lchange, when, version, status = sys.argv[3:11]
B = data["bucket"]
done, errors, versions, ev = data["done"], data["errors"], data["versions"], data["events"]
sent = ev.get("reload_sent", 0.0)
rb = int(sent / B)
base = [d / B for d in done[max(1, rb - 20):rb]]  # the 2 s before the reload (skip the first 100 ms)
baseline = statistics.median(base) if base else 0.0
rows = []
for i, d in enumerate(done[:-1]):  # the last bucket is partial
    rel = round((i * B - sent) * 1000)
    rel_end = rel + B * 1000
    if rel_end <= lo or rel >= hi:
        continue
    vs = "/".join("%s:%d" % kv for kv in sorted(versions[i].items()))
    rows.append((rel, d / B, (d / B) / baseline * 100 if baseline else 0, errors[i], vs))
after = [d / B for d in done[rb:rb + 10]]
dip = min(after) if after else 0
low = [i for i in range(rb, min(rb + 10, len(done) - 1)) if done[i] / B < 0.9 * baseline]
first_b = next((i for i, v in enumerate(versions) if "B" in v), None)
last_a = max((i for i, v in enumerate(versions) if "A" in v), default=None)
lines = []
lines.append("moongate %s, workers = %s, %s keep-alive connections (Python selector client, "
             "1 process), reload by %s%s, %s" % (version.replace("moongate ", ""), workers, conns,
             "POST /reload" if by == "post" else "SIGHUP",
             " with a new listener (rolling restart)" if lchange == "1" else "", when))
lines.append("")
lines.append("| t from reload (ms) | req/s | % of baseline | errors | responses by config version |")
lines.append("|---:|---:|---:|---:|---|")
for rel, rps, pct, err, vs in rows:
    lines.append("| %+d | %.0f | %.0f%% | %d | %s |" % (rel, rps, pct, err, vs))
lines.append("")
lines.append("- baseline (median of the 2 s before the reload): %.0f req/s" % baseline)
lines.append("- lowest 100 ms bucket in the 1 s after the reload: %.0f req/s (%.0f%% of baseline)"
             % (dip, dip / baseline * 100 if baseline else 0))
lines.append("- buckets under 90%% of baseline in the 1 s after the reload: %d (%d ms)"
             % (len(low), len(low) * 100))
lines.append("- errors (failed connections or non-200) over the whole run: %d" % sum(errors))
if first_b is not None:
    lines.append("- first response from the new config at %+d ms; last from the old at %+d ms"
                 % (round((first_b * B - sent) * 1000),
                    round((last_a * B - sent) * 1000) if last_a is not None else 0))
if "reload_answered" in ev:
    lines.append("- POST /reload answered in %.1f ms: %s"
                 % ((ev["reload_answered"] - sent) * 1000, ev.get("reload_answer", "")))
try:
    st = json.loads(status)
    lines.append("- /status after the run: generation %s, reloads %s" % (st.get("generation"), st.get("reloads")))
except ValueError:
    lines.append("- /status after the run: (no answer)")
table = "\n".join(lines)
print(table)
if results:
    begin, end = "<!-- reload:begin -->", "<!-- reload:end -->"
    section = "%s\n## Throughput around a reload (`bench/reload.sh`)\n\n%s\n%s" % (begin, table, end)
    try:
        text = open(results).read()
    except FileNotFoundError:
        text = ""
    if begin in text and end in text:
        a = text.index(begin)
        b = text.index(end) + len(end)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    open(results, "w").write(text)
    print("\n(written to %s)" % results, file=sys.stderr)
EOF
