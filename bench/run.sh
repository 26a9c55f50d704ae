#!/usr/bin/env bash
# bench/run.sh: the proxy benchmark. `make bench` runs it after a build.
#
# wrk (1 thread, 50 and 1000 connections) against, in one run:
#   direct    the upstream itself (nginx, 1 worker, `return 200 "hello world\n"`)
#   nginx     nginx proxy_pass with upstream keepalive, 1 worker, no access log
#   haproxy   HAProxy, nbthread 1, http mode, keep-alive + http-reuse, no log
#   moongate  $MOONGATE_BIN (default build/moongate), workers = 1, no access log
#   moongate-bp  moongate with `busy_poll` (polls only after activity, while
#             at most 4 requests are in flight)
#   haproxy-bp  HAProxy with `busy-polling`; not in the default set: it spins
#             all the time, so it would steal CPU 0 from every other target.
#             Measure it alone: BENCH_TARGETS="direct haproxy-bp"
# Proxies run on CPU 0, the upstream and wrk on CPU 1, everything on 127.0.0.1
# on free ports, each process from its own mktemp -d directory, all stopped by
# PID on exit. Prints a markdown report and rewrites the section between
# <!-- proxy:begin --> and <!-- proxy:end --> in bench/RESULTS.md.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [10]        seconds per wrk run
#   BENCH_ROUNDS [3]           rounds; each round runs every target at every
#                              concurrency, targets alternating
#   BENCH_CONNS ["50 1000"]    concurrencies (wrk -c), ascending
#   BENCH_THREADS [1]          wrk -t
#   BENCH_WARMUP [2]           seconds of unrecorded c=50 load per target first
#   BENCH_PAUSE [1]            seconds between runs
#   BENCH_TARGETS ["direct nginx haproxy moongate moongate-bp"]; haproxy-bp on request only
#   BENCH_MG_BUSY_POLL [0.0002] busy_poll of moongate-bp
#   BENCH_WRK_TIMEOUT [2]      wrk --timeout, seconds
#   BENCH_READY_TIMEOUT [15]   seconds to wait for a peer to answer
#   BENCH_PROXY_CPU [0]  BENCH_LOAD_CPU [1]
#   BENCH_NOFILE [65536]       ulimit -n to ask for
#   BENCH_RESULTS [bench/RESULTS.md]   set to "" to not write a file
#   BENCH_KEEP [0]             1: keep the temp dir (configs, logs, wrk output)
#   MOONGATE_BIN [build/moongate]  NGINX [nginx]  HAPROXY [haproxy]  WRK [wrk]
# Smoke run: BENCH_DURATION=3 BENCH_ROUNDS=1 bash bench/run.sh
#
# The script never fails because a target is slow; it exits non-zero only if
# it cannot run at all (missing wrk, no upstream).

set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-50 1000}
THREADS=${BENCH_THREADS:-1}
WARMUP=${BENCH_WARMUP:-2}
PAUSE=${BENCH_PAUSE:-1}
TARGETS=${BENCH_TARGETS:-direct nginx haproxy moongate moongate-bp}
MG_BUSY_POLL=${BENCH_MG_BUSY_POLL:-0.0002}
WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-2}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-15}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
WANT_NOFILE=${BENCH_NOFILE:-65536}
RESULTS=${BENCH_RESULTS-$BENCH_DIR/RESULTS.md}
KEEP=${BENCH_KEEP:-0}
MOONGATE_BIN=${MOONGATE_BIN:-$REPO/build/moongate}
NGINX=${NGINX:-nginx}
HAPROXY=${HAPROXY:-haproxy}
WRK=${WRK:-wrk}

EXPECTED_BODY="hello world"
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in DURATION ROUNDS THREADS WARMUP PAUSE WRK_TIMEOUT READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
done
for c in $CONNS; do [[ $c =~ ^[0-9]+$ ]] || die "BENCH_CONNS: '$c' is not a number"; done
[ "$DURATION" -ge 1 ] || die "BENCH_DURATION must be >= 1"
[ "$ROUNDS" -ge 1 ] || die "BENCH_ROUNDS must be >= 1"
MAX_CONN=0
for c in $CONNS; do [ "$c" -gt "$MAX_CONN" ] && MAX_CONN=$c; done

command -v "$WRK" >/dev/null || die "wrk not found (make deps-bench installs it)"
command -v curl >/dev/null || die "curl not found"
command -v taskset >/dev/null || die "taskset not found (util-linux)"

# ---------------------------------------------------------------- workspace
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moongate-bench.XXXXXX") || die "mktemp failed"
# nginx workers drop to 'nobody' when started as root; let them read the prefix.
chmod 755 "$WORK"
declare -A PID=()          # target -> pid of the process we started
declare -A STATUS=()       # target -> ok | why it was not measured
declare -A PORT=()
WRK_PID=

stop_pid() {  # stop one process we started, by PID: TERM, wait, then KILL
  local pid=$1 kids i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ')
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  for k in $kids; do kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null; done
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  local t
  trap - EXIT INT TERM HUP
  [ -n "$WRK_PID" ] && stop_pid "$WRK_PID"
  for t in "${!PID[@]}"; do  # every process this script started
    [ -n "${PID[$t]:-}" ] && stop_pid "${PID[$t]}"
  done
  if [ "$KEEP" = 1 ]; then log "kept work dir: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- limits/cpus
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$WANT_NOFILE" ]; then
  ulimit -Hn "$WANT_NOFILE" 2>/dev/null || WANT_NOFILE=$hard
fi
ulimit -n "$WANT_NOFILE" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
if [ "$NOFILE" -lt $((MAX_CONN * 3 + 256)) ]; then
  log "warning: ulimit -n is $NOFILE; c=$MAX_CONN needs about $((MAX_CONN * 3 + 256)) (expect socket errors)"
fi
HAPROXY_MAXCONN=$(( NOFILE / 2 - 128 )); [ "$HAPROXY_MAXCONN" -gt 20000 ] && HAPROXY_MAXCONN=20000

NCPU=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)
CPU_NOTE=""
if ! taskset -c "$PROXY_CPU" true 2>/dev/null; then die "cannot pin to CPU $PROXY_CPU"; fi
if ! taskset -c "$LOAD_CPU" true 2>/dev/null; then
  CPU_NOTE="only $NCPU CPU(s) usable: wrk and the upstream share CPU $PROXY_CPU with the proxy; numbers are not comparable to a 2-CPU run"
  log "warning: $CPU_NOTE"
  LOAD_CPU=$PROXY_CPU
fi

# The numbers mean little if something else is using the CPUs: say so.
LOAD_START=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
if awk -v l="$LOAD_START" 'BEGIN{exit !(l > 0.5)}'; then
  log "warning: load average is $LOAD_START before starting: other work on this machine will add noise"
fi

# ---------------------------------------------------------------- ports
LOW_EPH=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
TAKEN=" "
port_in_use() {
  if command -v ss >/dev/null; then
    ss -Htan "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
free_port() {  # target: set PORT[target] to a port below the ephemeral range that nothing uses
  local p i
  for i in $(seq 500); do
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (LOW_EPH - 10000) ))
    case $TAKEN in *" $p "*) continue ;; esac
    port_in_use "$p" && continue
    TAKEN="$TAKEN$p "; PORT[$1]=$p; return 0
  done
  die "no free port found"
}

subst() {  # template -> file, substituting @KEY@ from the arguments KEY=VALUE
  local in=$1 out=$2; shift 2
  local args=() kv
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$in" >"$out"
}

start_bg() {  # name cpu cmd... ; runs from $WORK, pinned, output to $WORK/name.out
  local name=$1 cpu=$2; shift 2
  ( cd "$WORK" && exec taskset -c "$cpu" "$@" ) </dev/null >"$WORK/$name.out" 2>&1 &
  PID[$name]=$!
}

wait_ready() {  # name url: poll with curl until the port answers HTTP or deadline
  local name=$1 url=$2 deadline code body
  deadline=$(( $(date +%s) + READY_TIMEOUT ))
  while :; do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      wait "${PID[$name]}" 2>/dev/null; READY_ERR="exited during startup"; return 1
    fi
    code=$(curl -s -o "$WORK/$name.ready" -w '%{http_code}' --max-time 1 "$url" 2>/dev/null)
    if [ -n "$code" ] && [ "$code" != 000 ]; then break; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then READY_ERR="no answer on $url within ${READY_TIMEOUT}s"; return 1; fi
    sleep 0.1
  done
  body=$(tr -d '\r\n' <"$WORK/$name.ready")
  if [ "$code" != 200 ] || [ "$body" != "$EXPECTED_BODY" ]; then
    READY_ERR="answers $code '$(printf %.60s "$body")', expected 200 '$EXPECTED_BODY'"; return 1
  fi
  return 0
}

tail_log() { [ -f "$1" ] && tail -n "${2:-5}" "$1" | sed 's/^/    /' >&2; }

# ---------------------------------------------------------------- upstream
free_port upstream
mkdir -p "$WORK/upstream-tmp"
subst "$BENCH_DIR/peers/upstream-nginx.conf.in" "$WORK/upstream.conf" \
  PREFIX="$WORK" PORT="${PORT[upstream]}" NOFILE="$NOFILE"
command -v "$NGINX" >/dev/null || die "nginx not found: it is the upstream (make deps-bench)"
start_bg upstream "$LOAD_CPU" "$NGINX" -p "$WORK/" -c "$WORK/upstream.conf" -e "$WORK/upstream-error.log"
if ! wait_ready upstream "http://127.0.0.1:${PORT[upstream]}/"; then
  tail_log "$WORK/upstream.out"; tail_log "$WORK/upstream-error.log"
  die "upstream nginx: $READY_ERR"
fi
log "upstream nginx on 127.0.0.1:${PORT[upstream]} (pid ${PID[upstream]}, CPU $LOAD_CPU)"
CMD_UPSTREAM="taskset -c $LOAD_CPU nginx -p \$TMP/ -c \$TMP/upstream.conf -e \$TMP/upstream-error.log   # bench/peers/upstream-nginx.conf.in"

# ---------------------------------------------------------------- peers
declare -A CMD=()
ACTIVE=""
for t in $TARGETS; do
  case $t in
  direct)
    PORT[direct]=${PORT[upstream]}; STATUS[direct]=ok
    CMD[direct]="(no proxy: wrk straight at the upstream)" ;;
  nginx)
    if ! command -v "$NGINX" >/dev/null; then STATUS[nginx]="nginx not installed"; continue; fi
    free_port nginx; mkdir -p "$WORK/nginx-proxy-tmp"
    subst "$BENCH_DIR/peers/nginx-proxy.conf.in" "$WORK/nginx-proxy.conf" \
      PREFIX="$WORK" PORT="${PORT[nginx]}" UPPORT="${PORT[upstream]}" NOFILE="$NOFILE"
    start_bg nginx "$PROXY_CPU" "$NGINX" -p "$WORK/" -c "$WORK/nginx-proxy.conf" -e "$WORK/nginx-error.log"
    CMD[nginx]="taskset -c $PROXY_CPU nginx -p \$TMP/ -c \$TMP/nginx-proxy.conf -e \$TMP/nginx-error.log   # bench/peers/nginx-proxy.conf.in" ;;
  haproxy|haproxy-bp)
    if ! command -v "$HAPROXY" >/dev/null; then STATUS[$t]="haproxy not installed"; continue; fi
    free_port "$t"
    bp=""; [ "$t" = haproxy-bp ] && bp=busy-polling
    subst "$BENCH_DIR/peers/haproxy.cfg.in" "$WORK/$t.cfg" \
      PORT="${PORT[$t]}" UPPORT="${PORT[upstream]}" MAXCONN="$HAPROXY_MAXCONN" BUSY_POLLING="$bp"
    if ! "$HAPROXY" -c -q -f "$WORK/$t.cfg" >"$WORK/$t-check.out" 2>&1; then
      STATUS[$t]="config rejected by $HAPROXY -c"; tail_log "$WORK/$t-check.out"; continue
    fi
    start_bg "$t" "$PROXY_CPU" "$HAPROXY" -db -f "$WORK/$t.cfg"
    CMD[$t]="taskset -c $PROXY_CPU haproxy -db -f \$TMP/$t.cfg   # bench/peers/haproxy.cfg.in${bp:+, BUSY_POLLING=$bp}" ;;
  moongate|moongate-bp)
    bp=0; [ "$t" = moongate-bp ] && bp=$MG_BUSY_POLL
    CMD[$t]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/$t.lua   # bench/peers/moongate.lua.in, BUSY_POLL=$bp"
    if [ ! -x "$MOONGATE_BIN" ]; then STATUS[$t]="not built ($MOONGATE_BIN missing)"; continue; fi
    free_port "$t"
    subst "$BENCH_DIR/peers/moongate.lua.in" "$WORK/$t.lua" \
      PORT="${PORT[$t]}" UPPORT="${PORT[upstream]}" BUSY_POLL="$bp"
    start_bg "$t" "$PROXY_CPU" "$MOONGATE_BIN" -c "$WORK/$t.lua" ;;
  *) log "warning: unknown target '$t' ignored"; continue ;;
  esac
done
for t in $TARGETS; do
  [ -n "${STATUS[$t]:-}" ] && continue
  [ -n "${PID[$t]:-}" ] || continue
  if wait_ready "$t" "http://127.0.0.1:${PORT[$t]}/"; then
    STATUS[$t]=ok; log "$t on 127.0.0.1:${PORT[$t]} (pid ${PID[$t]}, CPU $PROXY_CPU)"
  else
    STATUS[$t]="failed to start: $READY_ERR"; log "$t: $READY_ERR"
    tail_log "$WORK/$t.out"; tail_log "$WORK/$t-error.log"
    stop_pid "${PID[$t]}"; unset "PID[$t]"
  fi
done
for t in $TARGETS; do [ "${STATUS[$t]:-}" = ok ] && ACTIVE="$ACTIVE $t"; done
ACTIVE=${ACTIVE# }
[ -n "$ACTIVE" ] || die "no target could be started"
n_active=$(wc -w <<<"$ACTIVE"); n_conns=$(wc -w <<<"$CONNS")
est=$(( n_active * (WARMUP + PAUSE) + ROUNDS * n_conns * n_active * (DURATION + PAUSE) ))
log "targets: $ACTIVE; $ROUNDS round(s) x c={$CONNS} x ${DURATION}s; about ${est}s"

# ---------------------------------------------------------------- measuring
RAW="$WORK/results.tsv"; : >"$RAW"

vmhwm() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null; }
rss_sample() {  # target -> "serving_kb total_kb"; serving = workers if it forked, else itself
  local pid=${PID[$1]:-} kids k own w=0
  [ -n "$pid" ] || { echo "- -"; return; }
  own=$(vmhwm "$pid"); own=${own:-0}
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ')
  if [ -n "$kids" ]; then
    for k in $kids; do k=$(vmhwm "$k"); w=$(( w + ${k:-0} )); done
  else
    w=$own; own=0
  fi
  echo "$w $(( w + own ))"
}

# shellcheck source=bench/cpustat.sh
. "$BENCH_DIR/cpustat.sh"

run_wrk() {  # url conc seconds outfile; 0 if wrk produced its report line; sets CPU_PROXY/LOAD
  local s0 s1
  timeout -k 5 $(( $3 + WRK_TIMEOUT + 30 )) taskset -c "$LOAD_CPU" "$WRK" \
    -t"$THREADS" -c"$2" -d"$3"s --latency --timeout "${WRK_TIMEOUT}"s \
    -s "$BENCH_DIR/wrk-report.lua" "$1" >"$4" 2>&1 &
  WRK_PID=$!
  s0=$(cpu_snap)
  wait "$WRK_PID"; local rc=$?
  s1=$(cpu_snap)
  cpu_busy_between "$s0" "$s1"
  WRK_PID=
  grep -q '^MGBENCH ' "$4" || { log "wrk failed (rc $rc):"; tail_log "$4"; return 1; }
}

alive() { [ -z "${PID[$1]:-}" ] || kill -0 "${PID[$1]}" 2>/dev/null; }

for t in $ACTIVE; do
  [ "$WARMUP" -gt 0 ] || break
  log "warm-up $t (${WARMUP}s, c=50)"
  run_wrk "http://127.0.0.1:${PORT[$t]}/" 50 "$WARMUP" "$WORK/warmup-$t.txt" >/dev/null 2>&1
  sleep "$PAUSE"
done

order=($ACTIVE)
for round in $(seq "$ROUNDS"); do
  # rotate the target order every round so no target always runs first
  rot=$(( (round - 1) % ${#order[@]} ))
  rotated=("${order[@]:rot}" "${order[@]:0:rot}")
  for conc in $CONNS; do
    for t in "${rotated[@]}"; do
      [ "${STATUS[$t]}" = ok ] || continue
      out="$WORK/wrk-$t-c$conc-r$round.txt"
      log "round $round/$ROUNDS c=$conc $t"
      if run_wrk "http://127.0.0.1:${PORT[$t]}/" "$conc" "$DURATION" "$out"; then
        read -r rw rt <<<"$(rss_sample "$t")"
        [ "$t" = direct ] && { rw=-; rt=-; }
        sed -n 's/^MGBENCH //p' "$out" | tr ' ' '\n' | awk -F= -v t="$t" -v c="$conc" -v r="$round" \
          -v rw="$rw" -v rt="$rt" -v cp="$CPU_PROXY" -v cl="$CPU_LOAD" '{v[$1]=$2} END {
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t, c, r,
              v["rps"], v["p50_us"], v["p99_us"], v["connect"], v["read"], v["write"],
              v["timeout"], v["status"], v["requests"], rw, rt, cp, cl }' >>"$RAW"
        grep -E 'Requests/sec|Socket errors|Non-2xx' "$out" | sed 's/^/    /' >&2
      fi
      if ! alive "$t"; then
        STATUS[$t]="died during the c=$conc run of round $round"; log "$t: ${STATUS[$t]}"
        tail_log "$WORK/$t.out" 10; tail_log "$WORK/$t-error.log" 10
        unset "PID[$t]"
      fi
      sleep "$PAUSE"
    done
  done
done

# ---------------------------------------------------------------- report
median() { sort -g | awk '{a[NR]=$1} END { if (!NR) exit; print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2 }'; }
col() { awk -F'\t' -v t="$1" -v c="$2" -v k="$3" '$1==t && $2==c {print $k}' "$RAW"; }
sumcol() { col "$@" | awk '{s+=$1} END {print s+0}'; }
nrows() { col "$1" "$2" 1 | wc -l; }
fmt0() { if [ -n "$1" ]; then printf '%.0f' "$1"; else printf '–'; fi; }
ms() { [ -n "$1" ] && awk -v u="$1" 'BEGIN {printf "%.3f", u/1000}'; }

# per (target, conc): rps median, min, max; p50/p99 medians; error sums; RSS
declare -A RPS=() RSSW=()
summary_row() {
  local t=$1 c=$2 n med min max p50 p99 ec er ew et es rw rt
  n=$(nrows "$t" "$c")
  if [ "$n" -eq 0 ]; then
    printf '| %s | %s | – | – | – | – | – | – | – | – | %s |\n' "$t" "$c" "${STATUS[$t]:-not run}"
    return
  fi
  local cp cl
  cp=$(col "$t" "$c" 15 | median); cl=$(col "$t" "$c" 16 | median)
  med=$(col "$t" "$c" 4 | median); RPS[$t,$c]=$med
  min=$(col "$t" "$c" 4 | sort -g | head -1); max=$(col "$t" "$c" 4 | sort -g | tail -1)
  p50=$(col "$t" "$c" 5 | median); p99=$(col "$t" "$c" 6 | median)
  ec=$(sumcol "$t" "$c" 7); er=$(sumcol "$t" "$c" 8); ew=$(sumcol "$t" "$c" 9); et=$(sumcol "$t" "$c" 10)
  es=$(sumcol "$t" "$c" 11)
  # RSS: VmHWM is a peak since process start. At the highest concurrency report the
  # peak after the last such run (= peak of the whole benchmark); below it, the
  # value right after round 1's run (before any higher-concurrency load).
  if [ "$c" = "$MAX_CONN" ]; then
    rw=$(col "$t" "$c" 13 | sort -g | tail -1); rt=$(col "$t" "$c" 14 | sort -g | tail -1)
  else
    rw=$(col "$t" "$c" 13 | head -1); rt=$(col "$t" "$c" 14 | head -1)
  fi
  RSSW[$t,$c]=$rw
  local rss="–"; [ "$rw" != - ] && rss="$rw"; [ "$rt" != - ] && [ "$rt" != "$rw" ] && rss="$rw ($rt)"
  local note="${STATUS[$t]}"; [ "$note" = ok ] && note=""
  [ "$n" -lt "$ROUNDS" ] && note="${note:+$note; }$n/$ROUNDS rounds"
  printf '| %s | %s | %.0f | %.0f–%.0f | %s | %s | %s/%s/%s/%s | %s | %s | %.0f / %.0f | %s |\n' \
    "$t" "$c" "$med" "$min" "$max" "$(ms "$p50")" "$(ms "$p99")" "$ec" "$er" "$ew" "$et" "$es" "$rss" \
    "$cp" "$cl" "$note"
}

LOAD_END=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
ver() { "$@" 2>&1 | head -1; }
MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
HYPER=$(grep -qw hypervisor /proc/cpuinfo && echo " (virtual machine)")
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
GITREV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
MG_VER="not built"; [ -x "$MOONGATE_BIN" ] && MG_VER=$(ver timeout -k 1 5 "$MOONGATE_BIN" --version)

RUN_CMD="BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_CONNS=\"$CONNS\""
[ "$TARGETS" != "direct nginx haproxy moongate moongate-bp" ] && RUN_CMD="$RUN_CMD BENCH_TARGETS=\"$TARGETS\""
[ "$MG_BUSY_POLL" != 0.0002 ] && RUN_CMD="BENCH_MG_BUSY_POLL=$MG_BUSY_POLL $RUN_CMD"
RUN_CMD="$RUN_CMD bash bench/run.sh"
REPORT="$WORK/proxy-section.md"
{
  echo "## Proxy throughput: moongate vs nginx vs HAProxy"
  echo
  echo "Run $DATE on $NCPU CPU(s), $MODEL$HYPER; moongate at $GITREV."
  echo "wrk -t$THREADS, ${DURATION}s per run, $ROUNDS round(s), targets alternating (order rotated each round), ${WARMUP}s unrecorded warm-up per target."
  [ -n "$CPU_NOTE" ] && echo "**Warning:** $CPU_NOTE."
  echo "1-minute load average before the run: $LOAD_START, after: $LOAD_END (anything well above 0 before the run means other work shared the CPUs)."
  echo
  echo "| target | conns | req/s (median) | req/s min–max | p50 ms | p99 ms | socket errors c/r/w/t | non-2xx/3xx | peak RSS KiB | CPU busy % proxy / load | note |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for c in $CONNS; do for t in $TARGETS; do summary_row "$t" "$c"; done; done
  echo
  echo "Latencies are medians over rounds; errors are totals over rounds. Peak RSS is"
  echo "VmHWM of the serving process(es): the nginx worker (the master's in the"
  echo "total shown in brackets), the haproxy process, the moongate process (its"
  echo "workers if it forks). At c=$MAX_CONN it is read after the last c=$MAX_CONN run,"
  echo "at lower concurrency after round 1's run. \`direct\` has no proxy."
  echo "CPU busy %: medians over rounds of how busy CPU $PROXY_CPU (the proxy) and CPU $LOAD_CPU"
  echo "(wrk and the upstream) were during the runs. When the load CPU is near 100 % it"
  echo "sets the pace, and the proxies' ratios say more about how much load-side work"
  echo "each proxy causes than about the proxy's own cost; the proxy CPU column is"
  echo "the proxy's headroom."
  echo
  echo "### moongate against the better of nginx and HAProxy"
  echo
  echo "| conns | moongate req/s | best peer | peer req/s | ratio | target ≥ 1.10× |"
  echo "|---:|---:|---|---:|---:|---|"
  tp_all=PASS
  for c in $CONNS; do
    best=""; bestv=""
    for p in nginx haproxy; do
      v=${RPS[$p,$c]:-}; [ -n "$v" ] || continue
      if [ -z "$bestv" ] || awk -v a="$v" -v b="$bestv" 'BEGIN{exit !(a>b)}'; then best=$p; bestv=$v; fi
    done
    mg=${RPS[moongate,$c]:-}
    if [ -z "$mg" ] || [ -z "$bestv" ]; then
      printf '| %s | %s | %s | %s | – | n/a |\n' "$c" "$(fmt0 "$mg")" "${best:-–}" "$(fmt0 "$bestv")"; tp_all=n/a
    else
      r=$(awk -v a="$mg" -v b="$bestv" 'BEGIN{printf "%.2f", a/b}')
      ok=$(awk -v r="$r" 'BEGIN{print (r>=1.10) ? "PASS" : "FAIL"}')
      [ "$ok" = FAIL ] && [ "$tp_all" = PASS ] && tp_all=FAIL
      printf '| %s | %.0f | %s | %.0f | %s× | %s |\n' "$c" "$mg" "$best" "$bestv" "$r" "$ok"
    fi
  done
  if [[ " $TARGETS " == *" moongate-bp "* ]]; then
    echo
    echo "### With busy polling"
    echo
    echo "\`moongate-bp\` is moongate with \`busy_poll = $MG_BUSY_POLL\` (off by default): after an event"
    echo "the worker polls without sleeping for that long, while at most 4 requests are in"
    echo "flight, so its CPU does not halt between the packets of a request (on a virtual"
    echo "machine waking a halted CPU costs an interrupt the sending CPU pays for). It is"
    echo "for latency at low concurrency (see the auth section's c=1 rows); at c=50 and"
    echo "above it should match \`moongate\`. HAProxy's \`busy-polling\` is not run by default:"
    echo "it spins all the time and would take CPU $PROXY_CPU from the other targets."
    echo
    echo "| conns | moongate-bp req/s | moongate req/s | ratio |"
    echo "|---:|---:|---:|---:|"
    for c in $CONNS; do
      a=${RPS[moongate-bp,$c]:-}; b=${RPS[moongate,$c]:-}
      if [ -n "$a" ] && [ -n "$b" ]; then
        printf '| %s | %.0f | %.0f | %s× |\n' "$c" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')"
      else
        printf '| %s | %s | %s | n/a |\n' "$c" "$(fmt0 "$a")" "$(fmt0 "$b")"
      fi
    done
  fi
  echo
  echo "### Targets"
  echo
  if [ "${STATUS[moongate]:-}" != ok ] && [ -z "${RPS[moongate,$MAX_CONN]:-}" ]; then
    why=${STATUS[moongate]:-not in BENCH_TARGETS}
    echo "- throughput ≥ 1.10× the better of nginx/HAProxy at every concurrency: n/a (moongate $why)"
    echo "- zero socket errors at c=$MAX_CONN: n/a (moongate $why)"
    echo "- peak RSS at c=$MAX_CONN ≤ nginx's: n/a (moongate $why)"
  else
    echo "- throughput ≥ 1.10× the better of nginx/HAProxy at every concurrency: **$tp_all**"
    if [ -n "${RPS[moongate,$MAX_CONN]:-}" ]; then
      se=0; for k in 7 8 9 10; do se=$(( se + $(sumcol moongate "$MAX_CONN" $k) )); done
      ns=$(sumcol moongate "$MAX_CONN" 11)
      echo "- zero socket errors at c=$MAX_CONN: **$([ "$se" -eq 0 ] && echo PASS || echo FAIL)** ($se socket errors, $ns non-2xx/3xx responses)"
      mr=${RSSW[moongate,$MAX_CONN]:-}; nr=${RSSW[nginx,$MAX_CONN]:-}
      if [ -n "$mr" ] && [ -n "$nr" ] && [ "$nr" != - ]; then
        echo "- peak RSS at c=$MAX_CONN ≤ nginx's: **$([ "$mr" -le "$nr" ] && echo PASS || echo FAIL)** (moongate $mr KiB, nginx worker $nr KiB)"
      else
        echo "- peak RSS at c=$MAX_CONN ≤ nginx's: n/a (no nginx or moongate sample)"
      fi
    else
      echo "- zero socket errors / peak RSS at c=$MAX_CONN: n/a (moongate has no c=$MAX_CONN result)"
    fi
    [ "${STATUS[moongate]:-}" != ok ] && echo "- moongate: ${STATUS[moongate]}"
  fi
  for t in $TARGETS; do
    s=${STATUS[$t]:-not run}
    [ "$t" != moongate ] && [ "$s" != ok ] && echo "- $t: $s"
  done
  echo
  echo "### Commands"
  echo
  echo '```sh'
  echo "# $RUN_CMD"
  echo "ulimit -n $NOFILE; TMP=\$(mktemp -d)    # every peer runs from its own copy of the template, ports substituted"
  echo "$CMD_UPSTREAM"
  for t in $TARGETS; do [ -n "${CMD[$t]:-}" ] && [ "$t" != direct ] && echo "${CMD[$t]}"; done
  echo "taskset -c $LOAD_CPU wrk -t$THREADS -c\$CONNS -d${DURATION}s --latency --timeout ${WRK_TIMEOUT}s -s bench/wrk-report.lua http://127.0.0.1:\$PORT/"
  echo '```'
  echo
  echo "Versions: $(ver "$NGINX" -v); $(ver "$HAPROXY" -v | sed 's/ - https.*//'); $(ver "$WRK" -v | sed 's/ Copyright.*//'); moongate: $MG_VER; kernel $(uname -r)."
  echo
  echo "<details><summary>Per-round numbers</summary>"
  echo
  echo "| round | target | conns | req/s | p50 ms | p99 ms | errors c/r/w/t | non-2xx/3xx | VmHWM KiB |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  sort -t$'\t' -k3,3n -k2,2n "$RAW" | while IFS=$'\t' read -r t c r rps p50 p99 ec er ew et es req rw rt cp cl; do
    printf '| %s | %s | %s | %.0f | %s | %s | %s/%s/%s/%s | %s | %s |\n' "$r" "$t" "$c" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$ec" "$er" "$ew" "$et" "$es" "$rw"
  done
  echo
  echo "</details>"
} >"$REPORT"

echo
cat "$REPORT"

# ---------------------------------------------------------------- RESULTS.md
replace_section() {  # file name content-file: rewrite <!-- name:begin --> .. <!-- name:end -->
  local file=$1 name=$2 content=$3 tmp
  tmp=$(mktemp "$WORK/section.XXXXXX")
  if grep -q "^<!-- $name:begin -->" "$file" && grep -q "^<!-- $name:end -->" "$file"; then
    awk -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" -v f="$content" '
      $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
      $0 == e { skip = 0 }
      !skip { print }' "$file" >"$tmp"
  else
    { cat "$file"; echo; echo "<!-- $name:begin -->"; cat "$content"; echo "<!-- $name:end -->"; } >"$tmp"
  fi
  cat "$tmp" >"$file"
}

if [ -n "$RESULTS" ]; then
  if [ ! -f "$RESULTS" ]; then
    cat >"$RESULTS" <<'EOF'
# moongate benchmark results

Written by the scripts in bench/ (see bench/README.md). Each benchmark owns
one section between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers and
rewrites only that section; text outside the markers is kept as is.
EOF
  fi
  MACHINE="$WORK/machine.md"
  {
    echo "## Machine"
    echo
    echo "- date of the last run: $DATE"
    echo "- CPUs (nproc): $NCPU"
    echo "- model name: $MODEL$HYPER"
    echo "- kernel: $(uname -r); ulimit -n during the run: $NOFILE"
    echo "- pinning: proxies on CPU $PROXY_CPU, upstream and wrk on CPU $LOAD_CPU"
    echo "- last command: \`$RUN_CMD\` (proxy section); the full run is \`make bench\` (= \`bash bench/run.sh\`)"
  } >"$MACHINE"
  replace_section "$RESULTS" machine "$MACHINE"
  replace_section "$RESULTS" proxy "$REPORT"
  log "wrote the proxy section of $RESULTS"
fi
exit 0
