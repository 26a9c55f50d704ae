#!/usr/bin/env bash
# bench/h2.sh: HTTP/2 through moongate, nginx and HAProxy, with bench/lib.sh's
# CPU-capped method and h2load (nghttp2-client) as the load generator.
#
# Two scenarios, each gateway one process serving both (1 worker / 1 thread,
# no access log), h2c with prior knowledge from h2load:
#   moongate, nginx, haproxy
#       GET / over h2c to the gateway, HTTP/1.1 keep-alive from the gateway to
#       the origin (nginx `return 200 "hello world\n"`, run.sh's upstream)
#   moongate-grpc, nginx-grpc, haproxy-grpc
#       gRPC-like unary calls: POST /bench.Echo/Call, content-type
#       application/grpc, te: trailers, a 16-byte gRPC message; h2c on both
#       sides: moongate `protocol = "h2"`, nginx `grpc_pass grpc://`, HAProxy
#       `server ... proto h2`; the origin's h2c server answers 200 with a body
#       and the trailer grpc-status: 0
# Gateways: peers/moongate-h2.lua.in, peers/nginx-h2.conf.in,
# peers/haproxy-h2.cfg.in; the origin (one nginx, both servers, on the load
# CPU): peers/upstream-h2-nginx.conf.in.
#
# Each concurrency is NxM: `h2load -c N -m M` (N connections, M streams on
# each), duration-based (`h2load -D`). Every target is checked before it is
# measured (HTTP/2 answer, status, body; the gRPC targets also the trailer).
# The method is lib.sh's: each gateway in its own cgroup capped at
# BENCH_CPU_LIMIT (0.3) of CPU 0, h2load and the origin on CPU 1; moongate
# before the first and after every round of peers (A B A B A B A); medians;
# CPU µs per request from cpuacct.usage / requests. A run with any error is
# INVALID: h2load's failed/errored/timeout requests, any non-2xx status, a
# client with no connection in the middle of the run (h2load -D counts no
# connect failure), a client far slower than the others (under 1/10 of the
# mean per-client req/s: a stalled connection) or a request slower than
# BENCH_WRK_TIMEOUT seconds. Prints a markdown report and rewrites
# <!-- h2:begin --> .. <!-- h2:end --> in bench/RESULTS.md.
#
# Environment: bench/lib.sh's (BENCH_DURATION [10], BENCH_ROUNDS [3],
# BENCH_CPU_LIMIT [0.3], BENCH_RESULTS, BENCH_KEEP, MOONGATE_BIN, NGINX, ...),
# plus
#   BENCH_CONNS ["50x10 1x100"]  h2load -c N -m M per entry NxM
#   BENCH_TARGETS [all six above]
#   HAPROXY [haproxy]  H2LOAD [h2load]  NGHTTP [nghttp]  PYTHON [/usr/bin/python3]
# Needs nginx with lua-nginx-module (the origin), haproxy, h2load and nghttp
# (nghttp2-client), ss; python3-grpcio for the real gRPC check if present.
# Smoke run: BENCH_DURATION=2 BENCH_ROUNDS=1 BENCH_RESULTS= bash bench/h2.sh
#
# The script never fails because a target is slow or broken; it exits
# non-zero only if it cannot run (no h2load, no cgroups, no origin).

set -uo pipefail
BENCH_NAME=h2
LOAD_DESC="the origin"
DEFAULT_CONNS="50x10 1x100"
H2LOAD=${H2LOAD:-h2load}
NGHTTP=${NGHTTP:-nghttp}
LOAD_TOOL=h2load
LOAD_BIN=$H2LOAD
WARMUP_CONNS=50x10
LAT_HEAD="mean ms | max ms"
ERR_HEAD="errors conn/errored/failed/slow"
STATUS_HEAD="non-2xx"
INVALID_TEXT="any error (conn/errored/failed/slow) or non-2xx answer"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOAD_LINE="h2load -t$THREADS -c N -m M (conns NxM) -D"
ALL_TARGETS="moongate nginx haproxy moongate-grpc nginx-grpc haproxy-grpc"
WANT_TARGETS=${BENCH_TARGETS:-$ALL_TARGETS}
HAPROXY=${HAPROXY:-haproxy}
for t in $WANT_TARGETS; do [[ " $ALL_TARGETS " == *" $t "* ]] || die "BENCH_TARGETS: unknown target '$t' (known: $ALL_TARGETS)"; done
PIVOTS="moongate moongate-grpc"
GRPC_PATH=/bench.Echo/Call
bench_init
command -v "$NGHTTP" >/dev/null || die "nghttp not found: it checks the gRPC targets (nghttp2-client)"
command -v ss >/dev/null || die "ss not found (iproute2): it counts h2load's connections"
PY=${PYTHON:-/usr/bin/python3}
HAVE_GRPCIO=0; "$PY" -c 'import grpc' 2>/dev/null && HAVE_GRPCIO=1
[ "$HAVE_GRPCIO" = 1 ] || log "python3 has no grpcio: the gRPC targets are checked with nghttp only"
HAPROXY_MAXCONN=$(( NOFILE / 2 - 128 )); [ "$HAPROXY_MAXCONN" -gt 20000 ] && HAPROXY_MAXCONN=20000
# the gRPC request message: 5-byte prefix (not compressed, length 11) + 11 bytes
printf '\x00\x00\x00\x00\x0bhello world' >"$WORK/grpc-req.bin"

# ---------------------------------------------------------------- h2load
declare -A KIND=()   # target -> get | grpc
grpc_args=(-d "$WORK/grpc-req.bin" -H 'content-type: application/grpc' -H 'te: trailers')
load_argv() {  # target conc(NxM) seconds
  local n=${2%%x*} m=1 extra=() th=$THREADS
  [[ $2 == *x* ]] && m=${2#*x}
  [ "$th" -gt "$n" ] && th=$n   # h2load wants no more threads than clients
  [ "${KIND[$1]}" = grpc ] && extra=("${grpc_args[@]}")
  LOAD_ARGV=("$H2LOAD" -t"$th" -c"$n" -m"$m" -D"$3" "${extra[@]}" "${TURL[$1]}")
}
# h2load -D counts no failed connect: halfway through, count the client side
# of the connections to the gateway's port (only h2load connects to it then)
load_during() {  # target conc seconds
  sleep "$(awk -v s="$3" 'BEGIN{printf "%.1f", s / 2}')"
  echo "H2CONNS $(ss -Htn state established "( dport = :${PORT[${TPROC[$1]}]} )" 2>/dev/null | wc -l) of ${2%%x*}"
}
load_show() { grep -E '^(finished in|requests:|status codes:|time for request:|H2CONNS)' "$1"; }
# load_parse: h2load's summary -> the MGBENCH line lib.sh reads. requests: the
# 2xx answers; p50_us/p99_us hold h2load's mean and max request time (it has
# no percentiles); connect: clients not connected halfway; read: errored;
# write: failed but neither errored nor a non-2xx answer, plus h2load's timeouts; timeout: "slow", one
# for a stalled client (req/s under 1/10 of the mean), one for a request over
# BENCH_WRK_TIMEOUT s, one if h2load never finished (it waits for streams
# that do not complete: the deadline kills it, and the run counts no request);
# status: 3xx + 4xx + 5xx.
load_parse() {
  awk -v tmo="$WRK_TIMEOUT" '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v + 0 }
    /^finished in / { dur = $3 + 0 }
    /^requests: / { started = $4; done = $6; ok = $8; failed = $10; errored = $12; tout = $14; seen_req = 1 }
    /^status codes: / { s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
    /^time for request:/ { tmax = us($5); tmean = us($6) }
    /^req\/s +:/ { cmin = $3; cmean = $5 }
    /^H2CONNS / { have = $2; want = $4 }
    END {
      if (!seen_req) {   # h2load did not finish (killed by the deadline: stuck clients)
        printf "MGBENCH requests=0 duration_us=0 rps=0 p50_us=0 p99_us=0 connect=%d read=0 write=0 timeout=1 status=0\n",
          (want != "" && have < want) ? want - have : 0
        exit
      }
      conn = (want != "" && have < want) ? want - have : 0
      other = failed - errored - (s3 + s4 + s5)   # h2load counts a non-2xx answer as failed too
      if (other < 0) other = 0
      slow = 0
      if (cmean > 0 && cmin < cmean / 10) slow++
      if (tmax >= tmo * 1000000) slow++
      printf "MGBENCH requests=%d duration_us=%d rps=%.2f p50_us=%d p99_us=%d connect=%d read=%d write=%d timeout=%d status=%d\n",
        s2, dur * 1000000, (dur > 0 ? s2 / dur : 0), tmean, tmax, conn, errored, other + tout, slow, s3 + s4 + s5
    }' "$1" >>"$1.mgbench"
  cat "$1.mgbench" >>"$1"; rm -f "$1.mgbench"
}

# ---------------------------------------------------------------- origin
command -v "$NGINX" >/dev/null || die "nginx not found: it is the origin (make deps-bench)"
NDK_SO=$(nginx_module libnginx-mod-http-ndk ndk_http_module.so)
LUA_SO=$(nginx_module libnginx-mod-http-lua ngx_http_lua_module.so)
if [ -z "$LUA_SO" ] || [ -z "$NDK_SO" ]; then
  die "lua-nginx-module not installed: the origin's h2c server reads each request message with it (apt-get install libnginx-mod-http-lua)"
fi
free_port upstream; free_port upstream_h2
start_nginx upstream "$LOAD_CPU" upstream-h2-nginx.conf.in PORT="${PORT[upstream]}" H2PORT="${PORT[upstream_h2]}" \
  NDK_MODULE="$NDK_SO" LUA_MODULE="$LUA_SO"
UP="http://127.0.0.1:${PORT[upstream]}/"
UPH2="http://127.0.0.1:${PORT[upstream_h2]}$GRPC_PATH"
if ! wait_http upstream "$UP"; then proc_failed upstream; die "origin nginx: $READY_ERR"; fi
check_http "$UP" 200 "hello world" || die "origin nginx: $CHECK_ERR"
log "origin nginx on 127.0.0.1:${PORT[upstream]} (HTTP/1.1) and :${PORT[upstream_h2]} (h2c) (pid ${PID[upstream]}, CPU $LOAD_CPU)"

# ---------------------------------------------------------------- checks
h2_answers() { local c; c=$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge --max-time 1 "$1" 2>/dev/null); [ -n "$c" ] && [ "$c" != 000 ]; }
check_get() {  # url: HTTP/2 200 "hello world"
  local out
  out=$(curl -s -o "$WORK/check.body" -w '%{http_code} %{http_version}' --http2-prior-knowledge --max-time 5 "$1" 2>/dev/null)
  if [ "$out" != "200 2" ] || ! grep -q "hello world" "$WORK/check.body"; then
    CHECK_ERR="GET $1 over h2c: '$out' '$(head -c 100 "$WORK/check.body" 2>/dev/null | tr '\n' ' ')', expected '200 2' and 'hello world'"
    return 1
  fi
}
# check_grpc url: the call as h2load makes it, seen frame by frame (nghttp):
# :status 200, content-type application/grpc, the message, trailer
# grpc-status: 0; then, if python3 has grpcio, the same method called by a
# real gRPC client (raw bytes in and out) must return the origin's message.
GRPC_PY='import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
call = ch.unary_unary(sys.argv[2], request_serializer=None, response_deserializer=None)
r = call(b"hello world", timeout=5)
print("GRPCOK" if r == b"hello grpc\n" else "GRPC unexpected answer %r" % r)'
check_grpc() {
  local out hostport=${1#http://}
  hostport=${hostport%%/*}
  out=$(timeout -k 1 10 "$NGHTTP" -v -d "$WORK/grpc-req.bin" -H 'content-type: application/grpc' -H 'te: trailers' "$1" 2>&1 | tr -d '\000\013')
  printf '%s\n' "$out" >"$WORK/check-grpc.out"
  if ! grep -qE '^\[ *[0-9.]+\] recv \(stream_id=[0-9]+\) :status: 200$' <<<"$out" ||
     ! grep -qE 'recv \(stream_id=[0-9]+\) content-type: application/grpc$' <<<"$out" ||
     ! grep -qE 'recv \(stream_id=[0-9]+\) grpc-status: 0$' <<<"$out" ||
     ! grep -q 'hello grpc' <<<"$out"; then
    CHECK_ERR="POST $1 (nghttp): expected :status 200, content-type application/grpc, body 'hello grpc' and trailer grpc-status: 0; got: $(grep -E 'recv \(stream_id|recv (RST_STREAM|GOAWAY)|hello|rror' <<<"$out" | sed 's/^\[ *[0-9.]*\] //' | head -8 | tr '\n' ';' | head -c 300)"
    return 1
  fi
  [ "$HAVE_GRPCIO" = 1 ] || return 0
  out=$(timeout -k 1 15 "$PY" -c "$GRPC_PY" "$hostport" "$GRPC_PATH" 2>&1 | tail -3)
  if [[ $out != *GRPCOK* ]]; then
    CHECK_ERR="grpcio unary call $GRPC_PATH to $hostport: $(tr '\n' ' ' <<<"$out" | head -c 300)"
    return 1
  fi
}
check_grpc "$UPH2" || die "origin nginx h2c: $CHECK_ERR"

# ---------------------------------------------------------------- gateways
# one process per gateway serves both of its targets
declare -A GW_OF=([moongate]=moongate [nginx]=nginx [haproxy]=haproxy
                  [moongate-grpc]=moongate [nginx-grpc]=nginx [haproxy-grpc]=haproxy)
declare -A GW_ERR=()
want_gw() { local t; for t in $WANT_TARGETS; do [ "${GW_OF[$t]}" = "$1" ] && return 0; done; return 1; }
for g in moongate nginx haproxy; do
  want_gw "$g" || continue
  free_port "$g"
  case $g in
  moongate)
    CMD[moongate]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/moongate.lua   # bench/peers/moongate-h2.lua.in"
    if [ ! -x "$MOONGATE_BIN" ]; then GW_ERR[$g]="not built ($MOONGATE_BIN missing)"; continue; fi
    subst "$BENCH_DIR/peers/moongate-h2.lua.in" "$WORK/moongate.lua" \
      PORT="${PORT[$g]}" UPPORT="${PORT[upstream]}" H2UPPORT="${PORT[upstream_h2]}"
    start_bg moongate gw "$MOONGATE_BIN" -c "$WORK/moongate.lua" ;;
  nginx)
    start_nginx nginx gw nginx-h2.conf.in PORT="${PORT[$g]}" UPPORT="${PORT[upstream]}" H2UPPORT="${PORT[upstream_h2]}" ;;
  haproxy)
    CMD[haproxy]="taskset -c $PROXY_CPU haproxy -db -f \$TMP/haproxy.cfg   # bench/peers/haproxy-h2.cfg.in"
    if ! command -v "$HAPROXY" >/dev/null; then GW_ERR[$g]="haproxy not installed"; continue; fi
    subst "$BENCH_DIR/peers/haproxy-h2.cfg.in" "$WORK/haproxy.cfg" \
      PORT="${PORT[$g]}" UPPORT="${PORT[upstream]}" H2UPPORT="${PORT[upstream_h2]}" MAXCONN="$HAPROXY_MAXCONN"
    if ! "$HAPROXY" -c -q -f "$WORK/haproxy.cfg" >"$WORK/haproxy-check.out" 2>&1; then
      GW_ERR[$g]="config rejected by $HAPROXY -c"; tail_log "$WORK/haproxy-check.out"; continue
    fi
    start_bg haproxy gw "$HAPROXY" -db -f "$WORK/haproxy.cfg" ;;
  esac
  if ! wait_until "$g" h2_answers "http://127.0.0.1:${PORT[$g]}/"; then
    GW_ERR[$g]="failed to start: $READY_ERR"; proc_failed "$g"
  fi
done

for t in $WANT_TARGETS; do
  g=${GW_OF[$t]}
  case $t in
    *-grpc) KIND[$t]="grpc"; add_target "$t" "$g" "http://127.0.0.1:${PORT[$g]}$GRPC_PATH" ;;
    *)      KIND[$t]="get";  add_target "$t" "$g" "http://127.0.0.1:${PORT[$g]}/" ;;
  esac
  if [ -n "${GW_ERR[$g]:-}" ]; then STATUS[$t]=${GW_ERR[$g]}; log "$t: ${STATUS[$t]}"; continue; fi
  check=check_get; [ "${KIND[$t]}" = grpc ] && check=check_grpc
  if "$check" "${TURL[$t]}"; then
    STATUS[$t]=ok; log "$t: ${TURL[$t]} (pid ${PID[$g]})"
  else
    STATUS[$t]="wrong answer: $CHECK_ERR"; log "$t: ${STATUS[$t]}"
    tail_log "$WORK/$g.out"; tail_log "$WORK/$g-error.log"
  fi
done

bench_run || log "nothing to measure: writing the report anyway"

# ---------------------------------------------------------------- report
report_facts
RUN_CMD=$(run_cmd h2.sh)
[ "$WANT_TARGETS" != "$ALL_TARGETS" ] && RUN_CMD="BENCH_TARGETS=\"$WANT_TARGETS\" $RUN_CMD"
has_cpu() { [ -n "${US[$1,$2]:-}" ]; }

# best_vs suffix conc: compare_row of moongate$suffix with the better valid
# peer (fewer CPU µs per request; more req/s without CPU accounting)
best_vs() {
  local s=$1 c=$2 best="" p
  for p in nginx$s haproxy$s; do
    [ -n "${RPS[$p,$c]:-}" ] && [ "${VALID[$p,$c]:-0}" = 1 ] || continue
    if [ -z "$best" ]; then best=$p
    elif has_cpu "$p" "$c" && has_cpu "$best" "$c"; then
      awk -v a="${US[$p,$c]}" -v b="${US[$best,$c]}" 'BEGIN{exit !(a < b)}' && best=$p
    elif awk -v a="${RPS[$p,$c]}" -v b="${RPS[$best,$c]}" 'BEGIN{exit !(a > b)}'; then best=$p
    fi
  done
  if [ -z "$best" ]; then
    printf '| moongate%s / best peer | %s | %s | – | – | – | %s | – | – | n/a (no valid nginx%s or haproxy%s row) |\n' \
      "$s" "$c" "$(fmt1 "${US[moongate$s,$c]:-}")" "$(fmt0 "${RPS[moongate$s,$c]:-}")" "$s" "$s"
    CMP_RESULT=n/a; return
  fi
  compare_row "moongate$s / $best (≥ 1.10×)" "moongate$s" "$best" "$c" 1.10
}

REPORT="$WORK/section.md"
{
  header_lines "HTTP/2 and gRPC: moongate vs nginx vs HAProxy"
  echo
  echo "h2c with prior knowledge from h2load to each gateway (one process per gateway serves both"
  echo "scenarios). **h2c → HTTP/1.1** (\`moongate\`, \`nginx\`, \`haproxy\`): \`GET /\`, HTTP/1.1 keep-alive"
  echo "to the origin (nginx \`return 200 \"hello world\\n\"\`). **gRPC-like unary** (\`*-grpc\`):"
  echo "\`POST $GRPC_PATH\`, \`content-type: application/grpc\`, \`te: trailers\`, a 16-byte gRPC message,"
  echo "h2c to the origin too (moongate \`protocol = \"h2\"\`, nginx \`grpc_pass\`, HAProxy \`server ... proto h2\`),"
  echo "whose nginx h2c server answers 200 with the trailer \`grpc-status: 0\`. moongate: workers = 1,"
  echo "access_log = false, h2_max_streams 128; nginx 1.22: 1 worker, access_log off, \`listen ... http2\`,"
  echo "http2_max_concurrent_streams 128; HAProxy: nbthread 1, \`bind ... proto h2\`,"
  echo "tune.h2.max-concurrent-streams 128, no log. Conns NxM: \`h2load -c N -m M\` (N connections, M"
  echo "streams each)."
  echo
  echo "The latency columns are h2load's mean and maximum request time (it reports no percentiles)."
  echo "Errors conn/errored/failed/slow: clients without an established connection halfway through"
  echo "the run (h2load -D counts no failed connect) / h2load's errored requests / its other failed"
  echo "and timed-out requests / 1 for a stalled client (per-client req/s under 1/10 of the mean), 1"
  echo "for a request slower than ${WRK_TIMEOUT}s. Non-2xx counts 3xx, 4xx and 5xx. Any of them makes a row INVALID."
  echo
  summary_table
  echo
  echo "### moongate against the better of nginx and HAProxy"
  echo
  echo "The better peer is the one with fewer CPU µs per request (more req/s without CPU accounting)."
  echo
  compare_header moongate peer "target ≥ 1.10× (informational)"
  res=(); resg=()
  for c in $CONNS; do
    [[ " $WANT_TARGETS " == *" moongate "* ]] && { best_vs "" "$c"; res+=("$CMP_RESULT"); }
    [[ " $WANT_TARGETS " == *" moongate-grpc "* ]] && { best_vs -grpc "$c"; resg+=("$CMP_RESULT"); }
  done
  for c in $CONNS; do
    for s in "" -grpc; do
      for p in nginx haproxy; do
        [[ " $WANT_TARGETS " == *" moongate$s "* ]] && [[ " $WANT_TARGETS " == *" $p$s "* ]] &&
          compare_row "moongate$s / $p$s" "moongate$s" "$p$s" "$c" ""
      done
    done
  done
  echo
  echo "### Targets (informational)"
  echo
  echo "- h2c → HTTP/1.1: moongate ≥ 1.1× the better of nginx and HAProxy (CPU per request, bracketed) at c ∈ {$CONNS}: **$(all_of "${res[@]:-n/a}")**"
  echo "- gRPC-like (h2c both sides): moongate ≥ 1.1× the better of nginx and HAProxy at c ∈ {$CONNS}: **$(all_of "${resg[@]:-n/a}")**"
  for t in $TARGETS; do
    [ "${STATUS[$t]:-}" != ok ] && echo "- $t: ${STATUS[$t]:-not run}"
  done
  echo
  echo "### Commands"
  echo
  echo '```sh'
  echo "# $RUN_CMD"
  echo "ulimit -n $NOFILE; TMP=\$(mktemp -d)    # every process runs from its own copy of the template, ports substituted"
  echo "# each gateway: $(cap_note); its processes start inside it"
  echo "${CMD[upstream]}"
  for g in moongate nginx haproxy; do [ -n "${CMD[$g]:-}" ] && echo "${CMD[$g]}"; done
  echo "printf '\\x00\\x00\\x00\\x00\\x0bhello world' >\$TMP/grpc-req.bin    # the gRPC request message"
  echo "# per conns NxM, \$PORT the gateway's:"
  echo "taskset -c $LOAD_CPU h2load -t$THREADS -c N -m M -D$DURATION http://127.0.0.1:\$PORT/"
  echo "taskset -c $LOAD_CPU h2load -t$THREADS -c N -m M -D$DURATION -d \$TMP/grpc-req.bin -H 'content-type: application/grpc' -H 'te: trailers' http://127.0.0.1:\$PORT$GRPC_PATH"
  echo "ss -Htn state established '( dport = :\$PORT )' | wc -l    # halfway through each run: h2load's connections"
  echo '```'
  echo
  echo "Versions: $(ver "$NGINX" -v); $(ver "$HAPROXY" -v | sed 's/ - https.*//'); $(ver "$H2LOAD" --version); moongate: $MG_VER; kernel $(uname -r)."
  echo
  per_round_table
} >"$REPORT"

echo
cat "$REPORT"
write_results "$REPORT" "$RUN_CMD"
exit 0
