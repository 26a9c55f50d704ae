#!/usr/bin/env bash
# bench/ws.sh: WebSocket echo through moongate, nginx and HAProxy in the same
# run, with bench/lib.sh's CPU-capped method (each gateway in its own cgroup
# capped at BENCH_CPU_LIMIT of one CPU, pinned to CPU BENCH_PROXY_CPU; the
# load on CPU BENCH_LOAD_CPU, uncapped; CPU per message from the cgroup's
# cpuacct.usage).
#
# What runs:
#   origin   bench/ws_load.py server: a real WebSocket handshake, then a
#            byte-level echo (the gateway only relays bytes after the 101)
#   load     bench/ws_load.py client: BENCH_CONNS connections (100), each
#            keeping BENCH_WS_WINDOW messages in flight, for each message size
#            in BENCH_WS_SIZES ("16 4096" bytes); messages/s = echoes completed
#            per second in the measured window, after BENCH_WARMUP seconds
#   idle     bench/ws_load.py idle: BENCH_WS_IDLE tunnels (10000) opened, one
#            echo each, then held; the gateway's resident memory (VmRSS of
#            every process in its cgroup) is read while they are open. A
#            tunnel holds two fds in the gateway; when one process may not
#            hold 2 x BENCH_WS_IDLE (ulimit -n), moongate and nginx are
#            restarted for this phase with BENCH_WS_IDLE_WORKERS (default 2)
#            workers, and HAProxy (one process) gets what its fds allow
#            (the table says how many were open; compare KiB per tunnel)
#   targets  moongate (peers/moongate-ws.lua.in), nginx (peers/nginx-ws.conf.in),
#            haproxy (peers/haproxy-ws.cfg.in); BENCH_TARGETS picks a subset
#
# Each of BENCH_ROUNDS rounds runs every target at every size (order rotated
# per round); the report gives medians over rounds. The markdown report goes
# to stdout and into the "ws" section of bench/RESULTS.md (BENCH_RESULTS= to
# skip). A check run for correctness, a few seconds:
#   BENCH_DURATION=2 BENCH_ROUNDS=1 BENCH_WARMUP=1 BENCH_WS_IDLE=200 BENCH_RESULTS= bash bench/ws.sh
#
# Environment: lib.sh's (BENCH_DURATION, BENCH_ROUNDS, BENCH_CONNS,
# BENCH_CPU_LIMIT, BENCH_PROXY_CPU, BENCH_LOAD_CPU, BENCH_KEEP, MOONGATE_BIN,
# NGINX, ...) plus BENCH_WS_SIZES, BENCH_WS_WINDOW [16], BENCH_WS_IDLE,
# BENCH_WS_IDLE_WORKERS, BENCH_TARGETS, HAPROXY [haproxy], PYTHON [/usr/bin/python3].
set -u
BENCH_NAME=ws
DEFAULT_CONNS=100
WS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "${BENCH_LIB:-$WS_DIR/lib.sh}"
declare -F cg_init >/dev/null || die "bench/lib.sh has no cgroup helpers (cg_init): ws.sh needs the CPU-capped harness"

SIZES=${BENCH_WS_SIZES:-"16 4096"}
WINDOW=${BENCH_WS_WINDOW:-16}
IDLE_N=${BENCH_WS_IDLE:-10000}
WS_TARGETS=${BENCH_TARGETS:-"moongate nginx haproxy"}
HAPROXY=${HAPROXY:-haproxy}
PY=${PYTHON:-/usr/bin/python3}
LOAD="$WS_DIR/ws_load.py"

bench_init
IDLE_WORKERS=1
if [ "$NOFILE" -lt $(( IDLE_N * 2 + 1024 )) ]; then
  IDLE_WORKERS=${BENCH_WS_IDLE_WORKERS:-2}
  log "ulimit -n is $NOFILE; $IDLE_N idle tunnels need about $(( IDLE_N * 2 + 1024 )) fds in one process: moongate and nginx hold them with $IDLE_WORKERS workers"
fi
# HAProxy is one process: two fds per connection pair, and a few of its own
HA_MAXCONN=$(( IDLE_N + 1000 ))
[ "$HA_MAXCONN" -le $(( (NOFILE - 64) / 2 )) ] || HA_MAXCONN=$(( (NOFILE - 64) / 2 ))

mg_out() { grep -qs "^MGWS listening" "$WORK/origin.out"; }

# ---- the origin
free_port origin
start_bg origin "$LOAD_CPU" "$PY" "$LOAD" server --port "${PORT[origin]}"
wait_until origin mg_out || { proc_failed origin; die "ws_load.py server: $READY_ERR"; }
log "origin on 127.0.0.1:${PORT[origin]} (pid ${PID[origin]}, CPU $LOAD_CPU)"

# ---- the gateways
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ACTIVE=""
start_target() {  # name [workers [as]]: start gateway `name` (as process/cgroup `as`)
  local t=$1 workers=${2:-1} as=${3:-$1} conf="$WORK/${3:-$1}.conf"
  free_port "$as"
  case $t in
    moongate)
      [ -x "$MOONGATE_BIN" ] || { log "moongate: not built ($MOONGATE_BIN)"; return 1; }
      subst "$WS_DIR/peers/moongate-ws.lua.in" "$conf" PORT="${PORT[$as]}" UPPORT="${PORT[origin]}" \
        WORKERS="$workers"
      start_bg "$as" gw "$MOONGATE_BIN" -c "$conf" ;;
    nginx)
      command -v "$NGINX" >/dev/null || { log "nginx: not installed"; return 1; }
      subst "$WS_DIR/peers/nginx-ws.conf.in" "$conf" PREFIX="$WORK" PORT="${PORT[$as]}" \
        UPPORT="${PORT[origin]}" NOFILE="$NOFILE" WORKERS="$workers"
      sed -i "s#nginx-ws.pid#$as.pid#" "$conf"
      mkdir -p "$WORK/nginx-ws-tmp"
      start_bg "$as" gw "$NGINX" -p "$WORK/" -c "$conf" -e "$WORK/$as-error.log" ;;
    haproxy)
      command -v "$HAPROXY" >/dev/null || { log "haproxy: not installed"; return 1; }
      subst "$WS_DIR/peers/haproxy-ws.cfg.in" "$conf" PORT="${PORT[$as]}" \
        UPPORT="${PORT[origin]}" MAXCONN="$HA_MAXCONN"
      start_bg "$as" gw "$HAPROXY" -db -f "$conf" ;;
    *) die "unknown target '$t' (moongate, nginx, haproxy)" ;;
  esac
  if ! wait_until "$as" port_answers "${PORT[$as]}"; then proc_failed "$as"; return 1; fi
  [ "$as" = "$t" ] && ACTIVE="$ACTIVE $t"
  log "$t on 127.0.0.1:${PORT[$as]} (pid ${PID[$as]}, $workers worker(s))"
}
for t in $WS_TARGETS; do start_target "$t" || true; done
[ -n "$ACTIVE" ] || die "no gateway started"

rss_now() {  # target: VmRSS KiB summed over every process in its cgroup (or its tree)
  local pids p sum=0 k
  pids=$( [ -n "${CGOF[$1]:-}" ] && cg_procs "$1" )
  [ -n "$pids" ] || pids="${PID[$1]} $(ps -o pid= --ppid "${PID[$1]}" 2>/dev/null)"
  for p in $pids; do
    k=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null)
    sum=$(( sum + ${k:-0} ))
  done
  echo "$sum"
}
usage_ns() { if [ -n "${CGOF[$1]:-}" ]; then cg_usage "$1"; else echo 0; fi; }

# ---- message rate
: >"$RAW"
run_rate() {  # target size round
  local t=$1 size=$2 r=$3 u0 u1 line msgs total rate errors
  u0=$(usage_ns "$t")
  line=$(taskset -c "$LOAD_CPU" "$PY" "$LOAD" client --port "${PORT[$t]}" --conns "$CONNS" \
         --size "$size" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION" \
         2>>"$WORK/client.err" | grep '^MGWS msgs=')
  u1=$(usage_ns "$t")
  if [ -z "$line" ]; then
    log "$t size=$size round=$r: the load client failed"; tail_log "$WORK/client.err"
    printf '%s\t%s\t%s\t-\t-\t-\tfailed\n' "$t" "$size" "$r" >>"$RAW"
    return
  fi
  msgs=$(sed 's/.*msgs=\([0-9]*\).*/\1/' <<<"$line")
  total=$(sed 's/.*total=\([0-9]*\).*/\1/' <<<"$line")
  rate=$(sed 's/.*rate=\([0-9]*\).*/\1/' <<<"$line")
  errors=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$line")
  local us=-
  [ "$u1" != 0 ] && [ "${total:-0}" -gt 0 ] && us=$(awk -v n=$(( u1 - u0 )) -v m="$total" 'BEGIN{printf "%.2f", n / 1000 / m}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$size" "$r" "$rate" "$us" "$msgs" "$errors" >>"$RAW"
  log "$t size=$size round=$r: $rate msgs/s, $us CPU µs/msg, errors $errors"
}

targets=($ACTIVE)
for (( r = 1; r <= ROUNDS; r++ )); do
  for size in $SIZES; do
    for (( i = 0; i < ${#targets[@]}; i++ )); do
      t=${targets[$(( (i + r - 1) % ${#targets[@]} ))]}
      kill -0 "${PID[$t]}" 2>/dev/null || continue
      run_rate "$t" "$size" "$r"
      sleep "$PAUSE"
    done
  done
done

# ---- idle tunnels
declare -A IDLE_RSS=() BASE_RSS=() IDLE_OK=()
declare -A IDLE_AS=()
for t in $ACTIVE; do
  kill -0 "${PID[$t]}" 2>/dev/null || continue
  a=$t
  if [ "$IDLE_WORKERS" -gt 1 ] && [ "$t" != haproxy ]; then
    # the rate phase's single-worker process makes way for a multi-worker one
    stop_pid "${PID[$t]}"
    a=${t}_idle
    start_target "$t" "$IDLE_WORKERS" "$a" || { IDLE_RSS[$t]=failed; continue; }
    sleep 1 # the workers' own start-up allocations settle before the baseline
  fi
  IDLE_AS[$t]=$a
  n=$IDLE_N
  [ "$t" = haproxy ] && [ "$n" -gt $(( HA_MAXCONN - 50 )) ] && n=$(( HA_MAXCONN - 50 ))
  BASE_RSS[$t]=$(rss_now "$a")
  taskset -c "$LOAD_CPU" "$PY" "$LOAD" idle --port "${PORT[$a]}" --conns "$n" \
    >"$WORK/idle-$t.out" 2>>"$WORK/client.err" &
  IPID=$!
  deadline=$(( $(date +%s) + 60 + IDLE_N / 200 ))
  while kill -0 "$IPID" 2>/dev/null && ! grep -q '^MGWS' "$WORK/idle-$t.out" &&
        [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  if grep -q '^MGWS ready' "$WORK/idle-$t.out"; then
    sleep 1
    IDLE_RSS[$t]=$(rss_now "$a")
    IDLE_OK[$t]=$(awk '/^MGWS ready/{print $3}' "$WORK/idle-$t.out")
    log "$t: ${IDLE_OK[$t]} idle tunnels open (of $IDLE_N), RSS ${IDLE_RSS[$t]} KiB (before: ${BASE_RSS[$t]} KiB)"
  else
    IDLE_RSS[$t]=failed
    log "$t: idle tunnels failed: $(head -c 300 "$WORK/idle-$t.out")"; tail_log "$WORK/client.err"
  fi
  stop_pid "$IPID"
  [ "$a" != "$t" ] && stop_pid "${PID[$a]}"
  sleep "$PAUSE"
done

# ---- report
median() { sort -n | awk '{v[NR]=$1} END{ if (NR == 0) print "-"; else if (NR % 2) print v[(NR+1)/2]; else printf "%.2f", (v[NR/2]+v[NR/2+1])/2 }'; }
col() {  # target size column -> median over rounds (numbers only)
  awk -F'\t' -v t="$1" -v s="$2" -v c="$3" '$1 == t && $2 == s && $c ~ /^[0-9.]+$/ {print $c}' "$RAW" | median
}
report_facts
REPORT="$WORK/report.md"
{
  echo "## WebSocket tunnels (bench/ws.sh)"
  echo
  echo "Run $DATE on $NCPU CPU(s), $MODEL$HYPER; moongate at $GITREV ($MG_VER)."
  method_line
  echo "Load: bench/ws_load.py on CPU $LOAD_CPU (uncapped), with the origin: $CONNS connections, $WINDOW messages in flight each, ${DURATION}s measured after ${WARMUP}s, $ROUNDS round(s), targets rotated per round."
  echo "1-minute load average before the run: $LOAD_START, after: $LOAD_END."
  echo
  echo "| message | target | msgs/s (median) | CPU µs/msg | errors |"
  echo "|---:|---|---:|---:|---:|"
  for size in $SIZES; do
    for t in $ACTIVE; do
      errs=$(awk -F'\t' -v t="$t" -v s="$size" '$1 == t && $2 == s {e += ($7 ~ /^[0-9]+$/ ? $7 : 1)} END{print e + 0}' "$RAW")
      echo "| $size B | $t | $(col "$t" "$size" 4) | $(col "$t" "$size" 5) | $errs |"
    done
  done
  echo
  echo "| idle tunnels (of $IDLE_N asked) | workers | open | RSS KiB (all processes of the gateway) | before KiB | KiB per tunnel |"
  echo "|---|---:|---:|---:|---:|---:|"
  for t in $ACTIVE; do
    per=-
    [[ ${IDLE_RSS[$t]:-} =~ ^[0-9]+$ ]] && [ "${IDLE_OK[$t]:-0}" -gt 0 ] &&
      per=$(awk -v a="${IDLE_RSS[$t]}" -v b="${BASE_RSS[$t]}" -v n="${IDLE_OK[$t]}" 'BEGIN{printf "%.2f", (a - b) / n}')
    w=1; [ "${IDLE_AS[$t]:-$t}" != "$t" ] && w=$IDLE_WORKERS
    echo "| $t | $w | ${IDLE_OK[$t]:--} | ${IDLE_RSS[$t]:--} | ${BASE_RSS[$t]:--} | $per |"
  done
  echo
  echo "Command: \`$(run_cmd ws.sh) # BENCH_WS_SIZES=\"$SIZES\" BENCH_WS_WINDOW=$WINDOW BENCH_WS_IDLE=$IDLE_N\`"
} >"$REPORT"
cat "$REPORT"
write_results "$REPORT" "$(run_cmd ws.sh)"
exit 0
