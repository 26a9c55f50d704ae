# bench/lib.sh: the harness shared by bench/plugins.sh, bench/redis.sh and
# bench/auth.sh (sourced, not run). It follows bench/run.sh's conventions:
# every process runs from one `mktemp -d` directory on free 127.0.0.1 ports
# below the ephemeral range, proxies pinned to CPU 0 and the load (wrk, the
# upstream, Redis, auth servers) to CPU 1, readiness polled with a deadline,
# everything stopped by PID from a trap, wrk's numbers read from
# bench/wrk-report.lua's MGBENCH line, and the markdown report written
# between `<!-- NAME:begin -->` / `<!-- NAME:end -->` in bench/RESULTS.md.
#
# The sourcing script sets BENCH_NAME (its RESULTS.md section) and
# DEFAULT_CONNS, then calls bench_init, starts its processes (start_bg,
# wait_http, check_http), declares targets (add_target), runs bench_run and
# writes its report with the helpers at the end of this file.
#
# Environment (defaults in brackets), common to the three scripts:
#   BENCH_DURATION [10]  BENCH_ROUNDS [3]  BENCH_CONNS [per script]
#   BENCH_THREADS [1]  BENCH_WARMUP [2]  BENCH_PAUSE [1]
#   BENCH_WRK_TIMEOUT [2]  BENCH_READY_TIMEOUT [15]
#   BENCH_PROXY_CPU [0]  BENCH_LOAD_CPU [1]  BENCH_NOFILE [65536]
#   BENCH_RESULTS [bench/RESULTS.md] ("" = don't write)  BENCH_KEEP [0]
#   MOONGATE_BIN [build/moongate]  NGINX [nginx]  WRK [wrk]

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-$DEFAULT_CONNS}
THREADS=${BENCH_THREADS:-1}
WARMUP=${BENCH_WARMUP:-2}
PAUSE=${BENCH_PAUSE:-1}
WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-2}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-15}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
WANT_NOFILE=${BENCH_NOFILE:-65536}
RESULTS=${BENCH_RESULTS-$BENCH_DIR/RESULTS.md}
KEEP=${BENCH_KEEP:-0}
MOONGATE_BIN=${MOONGATE_BIN:-$REPO/build/moongate}
NGINX=${NGINX:-nginx}
WRK=${WRK:-wrk}

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

declare -A PID=()       # process name -> pid we started
declare -A PORT=()      # process or target name -> port
declare -A STATUS=()    # target -> ok | why it is not measured
declare -A TPROC=()     # target -> process that serves it (for liveness, RSS)
declare -A TURL=()      # target -> URL wrk loads
declare -A THDR=()      # target -> one extra request header for wrk ("" = none)
declare -A CMD=()       # name -> command line shown in the report
TARGETS=""              # targets in declaration order
STARTED=""              # process names in start order
WRK_PID=

bench_init() {
  local v c hard
  for v in DURATION ROUNDS THREADS WARMUP PAUSE WRK_TIMEOUT READY_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
  done
  for c in $CONNS; do [[ $c =~ ^[0-9]+$ ]] && [ "$c" -ge 1 ] || die "BENCH_CONNS: '$c' is not a positive number"; done
  [ -n "$CONNS" ] || die "BENCH_CONNS is empty"
  [ "$DURATION" -ge 1 ] || die "BENCH_DURATION must be >= 1"
  [ "$ROUNDS" -ge 1 ] || die "BENCH_ROUNDS must be >= 1"
  MAX_CONN=0
  for c in $CONNS; do [ "$c" -gt "$MAX_CONN" ] && MAX_CONN=$c; done

  command -v "$WRK" >/dev/null || die "wrk not found (make deps-bench installs it)"
  command -v curl >/dev/null || die "curl not found"
  command -v taskset >/dev/null || die "taskset not found (util-linux)"

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/moongate-bench-$BENCH_NAME.XXXXXX") || die "mktemp failed"
  # nginx workers drop to 'nobody' when started as root; let them read the prefix.
  chmod 755 "$WORK"
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM HUP

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

  NCPU=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)
  CPU_NOTE=""
  taskset -c "$PROXY_CPU" true 2>/dev/null || die "cannot pin to CPU $PROXY_CPU"
  if ! taskset -c "$LOAD_CPU" true 2>/dev/null; then
    CPU_NOTE="only $NCPU CPU(s) usable: wrk and the load share CPU $PROXY_CPU with the proxies; numbers are not comparable to a 2-CPU run"
    log "warning: $CPU_NOTE"
    LOAD_CPU=$PROXY_CPU
  fi

  LOAD_START=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
  if awk -v l="$LOAD_START" 'BEGIN{exit !(l > 0.5)}'; then
    log "warning: load average is $LOAD_START before starting: other work on this machine will add noise"
  fi
  LOW_EPH=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  TAKEN=" "
  RAW="$WORK/results.tsv"; : >"$RAW"
}

stop_pid() {  # stop one process we started, by PID: TERM, wait, then KILL
  local pid=$1 kids i k
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ')
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  for k in $kids; do kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null; done
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {  # stop what we started, last started first
  local names=() i
  trap - EXIT INT TERM HUP
  [ -n "$WRK_PID" ] && stop_pid "$WRK_PID"
  read -r -a names <<<"$STARTED"
  for (( i = ${#names[@]} - 1; i >= 0; i-- )); do
    [ -n "${PID[${names[i]}]:-}" ] && stop_pid "${PID[${names[i]}]}"
  done
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then log "kept work dir: $WORK"; else rm -rf "$WORK"; fi
  fi
}

port_in_use() {
  if command -v ss >/dev/null; then
    ss -Htan "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

free_port() {  # name: set PORT[name] to a port below the ephemeral range that nothing uses
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
  STARTED="$STARTED $name"
}

tail_log() { [ -f "$1" ] && tail -n "${2:-5}" "$1" | sed 's/^/    /' >&2; }

wait_until() {  # name cmd...: poll cmd until it succeeds, the process dies, or the deadline
  local name=$1 deadline; shift
  deadline=$(( $(date +%s) + READY_TIMEOUT ))
  while :; do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      wait "${PID[$name]}" 2>/dev/null; READY_ERR="exited during startup"; return 1
    fi
    "$@" && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then READY_ERR="not ready within ${READY_TIMEOUT}s"; return 1; fi
    sleep 0.1
  done
}

http_answers() {  # url: true once anything answers HTTP there
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null)
  [ -n "$code" ] && [ "$code" != 000 ]
}

wait_http() {  # name url: wait until the port answers HTTP
  wait_until "$1" http_answers "$2" || { READY_ERR="$READY_ERR (polling $2)"; return 1; }
}

# check_http url want_code want_body [curl args...]: one request; want_body is
# matched as a substring of the body ("" = any body). On mismatch sets CHECK_ERR.
check_http() {
  local url=$1 want=$2 wbody=$3 code body; shift 3
  code=$(curl -s -o "$WORK/check.body" -w '%{http_code}' --max-time 5 "$@" "$url" 2>/dev/null)
  body=$(tr -d '\r' <"$WORK/check.body" | tr '\n' ' ' | sed 's/ $//')
  if [ "$code" != "$want" ] || { [ -n "$wbody" ] && [[ $body != *"$wbody"* ]]; }; then
    CHECK_ERR="$url answers $code '$(printf %.100s "$body")', expected $want${wbody:+ with '$wbody'}"
    return 1
  fi
  return 0
}

# proc_failed name: after a readiness check failed, print the logs and stop it
proc_failed() {
  local name=$1
  log "$name: $READY_ERR"
  tail_log "$WORK/$name.out"; tail_log "$WORK/$name-error.log"
  [ -n "${PID[$name]:-}" ] && stop_pid "${PID[$name]}"
  unset "PID[$name]"
}

# start_nginx name cpu template KEY=VALUE...: an nginx from a template in
# bench/peers, with its own config, pid, temp dirs and error log in $WORK
start_nginx() {
  local name=$1 cpu=$2 tpl=$3; shift 3
  local d
  subst "$BENCH_DIR/peers/$tpl" "$WORK/$name.conf" PREFIX="$WORK" NOFILE="$NOFILE" "$@"
  # nginx creates its *_temp_path dirs but not their parents
  for d in $(grep -o "$WORK/[A-Za-z0-9_.-]*-tmp/" "$WORK/$name.conf" | sort -u); do mkdir -p "$d"; done
  start_bg "$name" "$cpu" "$NGINX" -p "$WORK/" -c "$WORK/$name.conf" -e "$WORK/$name-error.log"
  CMD[$name]="taskset -c $cpu nginx -p \$TMP/ -c \$TMP/$name.conf -e \$TMP/$name-error.log   # bench/peers/$tpl"
}

# start_redis: redis-server on CPU $LOAD_CPU, no persistence, PORT[redis];
# dies if it does not answer PING. redis_cmd ARGS... talks to it.
redis_cmd() { redis-cli -h 127.0.0.1 -p "${PORT[redis]}" "$@"; }
redis_pong() { [ "$(redis_cmd ping 2>/dev/null)" = PONG ]; }
start_redis() {
  command -v redis-server >/dev/null || die "redis-server not found (make deps-bench)"
  command -v redis-cli >/dev/null || die "redis-cli not found (redis-tools)"
  free_port redis
  start_bg redis "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "${PORT[redis]}" \
    --save '' --appendonly no --dir "$WORK" --logfile '' --maxclients 10000
  if ! wait_until redis redis_pong; then proc_failed redis; die "redis-server: $READY_ERR"; fi
  CMD[redis]="taskset -c $LOAD_CPU redis-server --bind 127.0.0.1 --port \$RPORT --save '' --appendonly no --dir \$TMP --logfile '' --maxclients 10000"
  log "redis-server on 127.0.0.1:${PORT[redis]} (pid ${PID[redis]}, CPU $LOAD_CPU)"
}

# nginx dynamic module path (Debian installs them with libnginx-mod-*)
nginx_module() {
  local pkg=$1 so=$2 p
  p=$(dpkg -L "$pkg" 2>/dev/null | grep "/$so\$" | head -1)
  [ -z "$p" ] && [ -f "/usr/lib/nginx/modules/$so" ] && p=/usr/lib/nginx/modules/$so
  echo "$p"
}

# mg_probe: sets MG_HAS to the gw modules the moongate binary has ("redis http ..."),
# or MG_PROBE_ERR when it does not run at all.
mg_probe() {
  MG_HAS=""; MG_PROBE_ERR=""
  if [ ! -x "$MOONGATE_BIN" ]; then MG_PROBE_ERR="not built ($MOONGATE_BIN missing)"; return 1; fi
  cat >"$WORK/probe.lua" <<'EOF'
local has = {}
for _, m in ipairs({ "redis", "http", "crypto", "base64", "json" }) do
  if type(gw) == "table" and gw[m] ~= nil then has[#has + 1] = m end
end
print("MGPROBE " .. table.concat(has, " "))
EOF
  local out
  out=$(cd "$WORK" && timeout -k 1 10 "$MOONGATE_BIN" --script "$WORK/probe.lua" 2>&1)
  if ! grep -q '^MGPROBE' <<<"$out"; then
    # the first error line, without its timestamp/pid prefix
    out=$(grep -m1 -iE 'error|fail|cannot' <<<"$out" || head -1 <<<"$out")
    out=$(sed -E 's/^[0-9T:.Z-]+ \[[a-z]+\] [0-9]+: //' <<<"$out")
    MG_PROBE_ERR="not available: \`moongate --script\` fails: $(printf %.160s "$out")"; return 1
  fi
  MG_HAS=" $(sed -n 's/^MGPROBE //p' <<<"$out") "
  return 0
}
mg_has() { [[ ${MG_HAS:-} == *" $1 "* ]]; }

# add_target name process url [header]: something wrk loads
add_target() {
  TARGETS="${TARGETS:+$TARGETS }$1"
  TPROC[$1]=$2; TURL[$1]=$3; THDR[$1]=${4:-}
}

# ---------------------------------------------------------------- measuring
vmhwm() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null; }
rss_sample() {  # process name -> "serving_kb total_kb"; serving = workers if it forked, else itself
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
. "$(dirname "${BASH_SOURCE[0]}")/cpustat.sh"

run_wrk() {  # target conc seconds outfile; 0 if wrk produced its report line
  # also sets CPU_PROXY and CPU_LOAD: busy % of the two CPUs during the run
  local t=$1 hdr=() rc s0 s1
  [ -n "${THDR[$t]}" ] && hdr=(-H "${THDR[$t]}")
  timeout -k 5 $(( $3 + WRK_TIMEOUT + 30 )) taskset -c "$LOAD_CPU" "$WRK" \
    -t"$THREADS" -c"$2" -d"$3"s --latency --timeout "${WRK_TIMEOUT}"s "${hdr[@]}" \
    -s "$BENCH_DIR/wrk-report.lua" "${TURL[$t]}" >"$4" 2>&1 &
  WRK_PID=$!
  s0=$(cpu_snap)
  wait "$WRK_PID"; rc=$?
  s1=$(cpu_snap)
  WRK_PID=
  cpu_busy_between "$s0" "$s1"
  grep -q '^MGBENCH ' "$4" || { log "wrk failed (rc $rc):"; tail_log "$4"; return 1; }
}

proc_died() {  # target when: if its process is gone, mark every target it served
  local p=${TPROC[$1]} u rc how
  alive "$1" && return 1
  wait "${PID[$p]}" 2>/dev/null; rc=$?
  how="exit status $rc"; [ "$rc" -gt 128 ] && how="signal $(kill -l $(( rc - 128 )) 2>/dev/null || echo $(( rc - 128 )))"
  log "$p died during $2 ($how)"
  tail_log "$WORK/$p.out" 10; tail_log "$WORK/$p-error.log" 10
  for u in $TARGETS; do
    [ "${TPROC[$u]}" = "$p" ] && [ "${STATUS[$u]}" = ok ] && STATUS[$u]="$p died during $2 ($how)"
  done
  unset "PID[$p]"
  return 0
}

alive() { local p=${TPROC[$1]}; [ -z "${PID[$p]:-}" ] || kill -0 "${PID[$p]}" 2>/dev/null; }

bench_run() {  # warm-up, then ROUNDS rounds over CONNS x active targets, order rotated
  local t conc round rot out rw rt order rotated n_active n_conns est ok
  ACTIVE=""
  for t in $TARGETS; do [ "${STATUS[$t]:-}" = ok ] && ACTIVE="$ACTIVE $t"; done
  ACTIVE=${ACTIVE# }
  if [ -z "$ACTIVE" ]; then log "no target could be started"; return 1; fi
  n_active=$(wc -w <<<"$ACTIVE"); n_conns=$(wc -w <<<"$CONNS")
  est=$(( n_active * (WARMUP + PAUSE) + ROUNDS * n_conns * n_active * (DURATION + PAUSE) ))
  log "targets: $ACTIVE; $ROUNDS round(s) x c={$CONNS} x ${DURATION}s; about ${est}s"
  for t in $ACTIVE; do
    [ "$WARMUP" -gt 0 ] || break
    [ "${STATUS[$t]}" = ok ] || continue
    log "warm-up $t (${WARMUP}s, c=50)"
    run_wrk "$t" 50 "$WARMUP" "$WORK/warmup-$t.txt" >/dev/null 2>&1
    proc_died "$t" "warm-up"
    sleep "$PAUSE"
  done
  read -r -a order <<<"$ACTIVE"
  for round in $(seq "$ROUNDS"); do
    rot=$(( (round - 1) % ${#order[@]} ))
    rotated=("${order[@]:rot}" "${order[@]:0:rot}")
    for conc in $CONNS; do
      for t in "${rotated[@]}"; do
        [ "${STATUS[$t]}" = ok ] || continue
        out="$WORK/wrk-$t-c$conc-r$round.txt"
        log "round $round/$ROUNDS c=$conc $t"
        run_wrk "$t" "$conc" "$DURATION" "$out"; ok=$?
        # a run during which the process died is not a measurement: the status says why
        if proc_died "$t" "the c=$conc run of round $round"; then
          grep -E 'Requests/sec|Socket errors|Non-2xx' "$out" | sed 's/^/    /' >&2
        elif [ "$ok" -eq 0 ]; then
          read -r rw rt <<<"$(rss_sample "${TPROC[$t]}")"
          sed -n 's/^MGBENCH //p' "$out" | tr ' ' '\n' | awk -F= -v t="$t" -v c="$conc" -v r="$round" \
            -v rw="$rw" -v rt="$rt" -v cp="$CPU_PROXY" -v cl="$CPU_LOAD" '{v[$1]=$2} END {
              printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t, c, r,
                v["rps"], v["p50_us"], v["p99_us"], v["connect"], v["read"], v["write"],
                v["timeout"], v["status"], v["requests"], rw, rt, cp, cl }' >>"$RAW"
          grep -E 'Requests/sec|Socket errors|Non-2xx' "$out" | sed 's/^/    /' >&2
        fi
        sleep "$PAUSE"
      done
    done
  done
  return 0
}

# ---------------------------------------------------------------- report helpers
fmt0() { if [ -n "$1" ]; then printf '%.0f' "$1"; else printf '–'; fi; }
ms() { [ -n "$1" ] && awk -v u="$1" 'BEGIN {printf "%.3f", u/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a >= b)}'; }
ver() { "$@" 2>&1 | head -1; }

declare -A RPS=() P50=() P99=() SERR=() NON2XX=() STATS=()
# aggregate: one pass over $RAW (the fork-per-number way takes tens of seconds
# on a busy machine). STATS[t,c] = "n med min max p50 p99 ec er ew et es rw rt":
# medians over rounds for req/s and latencies, sums for errors, maxima for RSS.
aggregate() {
  local t c rest
  STATS=()
  while read -r t c rest; do STATS[$t,$c]=$rest; done < <(awk -F'\t' '
    function med(s,   a, n, i, j, x) {
      n = split(s, a, " ")
      for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 " " $2; if (!(k in n)) { n[k] = 0; mn[k] = $4; mx[k] = $4; rw[k] = $13; rt[k] = $14 }
      n[k]++; rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
      cp[k] = cp[k] " " $15; cl[k] = cl[k] " " $16
      if ($4 + 0 < mn[k] + 0) mn[k] = $4; if ($4 + 0 > mx[k] + 0) mx[k] = $4
      ec[k] += $7; er[k] += $8; ew[k] += $9; et[k] += $10; es[k] += $11
      if ($13 != "-" && $13 + 0 > rw[k] + 0) rw[k] = $13; if ($14 != "-" && $14 + 0 > rt[k] + 0) rt[k] = $14 }
    END { for (k in n) print k, n[k], med(rps[k]), mn[k], mx[k], med(p50[k]), med(p99[k]),
                        ec[k], er[k], ew[k], et[k], es[k], rw[k], rt[k], med(cp[k]), med(cl[k]) }' "$RAW")
}

# summary_row target conc: one row of the summary table; fills RPS, P50 (µs), ...
summary_row() {
  local t=$1 c=$2 n med min max p50 p99 ec er ew et es rw rt cp cl rss note
  if [ -z "${STATS[$t,$c]:-}" ]; then
    printf '| %s | %s | – | – | – | – | – | – | – | – | %s |\n' "$t" "$c" "${STATUS[$t]:-not run}"
    return
  fi
  read -r n med min max p50 p99 ec er ew et es rw rt cp cl <<<"${STATS[$t,$c]}"
  RPS[$t,$c]=$med; P50[$t,$c]=$p50; P99[$t,$c]=$p99
  SERR[$t,$c]=$(( ec + er + ew + et )); NON2XX[$t,$c]=$es
  rss="–"; [ "$rw" != - ] && rss="$rw"; [ "$rt" != - ] && [ "$rt" != "$rw" ] && rss="$rw ($rt)"
  note="${STATUS[$t]}"; [ "$note" = ok ] && note=""; note=${note//|/\\|}
  [ "$n" -lt "$ROUNDS" ] && note="${note:+$note; }$n/$ROUNDS rounds"
  printf '| %s | %s | %.0f | %.0f–%.0f | %s | %s | %s/%s/%s/%s | %s | %s | %.0f / %.0f | %s |\n' \
    "$t" "$c" "$med" "$min" "$max" "$(ms "$p50")" "$(ms "$p99")" "$ec" "$er" "$ew" "$et" "$es" "$rss" \
    "$cp" "$cl" "$note"
}

summary_table() {  # the per-target table for every concurrency
  local c t
  aggregate
  echo "| target | conns | req/s (median) | req/s min–max | p50 ms | p99 ms | socket errors c/r/w/t | non-2xx/3xx | peak RSS KiB | CPU busy % proxy / load | note |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for c in $CONNS; do for t in $TARGETS; do summary_row "$t" "$c"; done; done
  echo
  echo "Latencies are medians over rounds; errors are totals over rounds. Peak RSS"
  echo "is VmHWM of the serving process (nginx: its worker, the total with the"
  echo "master in brackets) after the last run of that concurrency; targets served"
  echo "by one process share its figure. CPU busy %: medians over rounds of how busy"
  echo "the proxy's CPU and the load CPU (wrk and the servers behind) were during the"
  echo "runs; a load CPU near 100 % means the load side, not the proxy, set the pace."
}

# paired_ratio a b conc: the median over rounds of a's req/s / b's req/s in
# the same round (less sensitive to slow drifts of a shared machine than the
# ratio of the medians); empty if no round has both
paired_ratio() {
  awk -F'\t' -v a="$1" -v b="$2" -v c="$3" '
    $2 == c && $1 == a { ra[$3] = $4 } $2 == c && $1 == b { rb[$3] = $4 }
    END { n = 0; for (r in ra) if ((r in rb) && rb[r] > 0) x[++n] = ra[r] / rb[r]
          if (!n) exit
          for (i = 2; i <= n; i++) { v = x[i]; for (j = i - 1; j >= 1 && x[j] > v; j--) x[j + 1] = x[j]; x[j + 1] = v }
          printf "%.2f", (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }' "$RAW"
}

# compare_row label a_target b_target conc min_ratio: one row of a comparison
# table (compare_header prints its head): "| label | c | a | b | ratio | per-round | PASS/FAIL |".
# The ratio is of the medians; CMP_RESULT is PASS, FAIL or n/a
# (min_ratio "" = no target: "–").
compare_header() {  # a-column b-column target-column
  echo "| comparison | conns | $1 | $2 | ratio | per-round ratio (median) | $3 |"
  echo "|---|---:|---:|---:|---:|---:|---|"
}
compare_row() {
  local label=$1 a=$2 b=$3 c=$4 want=$5 av bv r pr
  av=${RPS[$a,$c]:-}; bv=${RPS[$b,$c]:-}
  if [ -z "$av" ] || [ -z "$bv" ]; then
    CMP_RESULT=n/a
    local why=""
    [ -z "$av" ] && why="$a"
    [ -z "$bv" ] && why="${why:+$why, }$b"
    why="$why not measured"
    printf '| %s | %s | %s | %s | – | – | n/a (%s) |\n' "$label" "$c" "$(fmt0 "$av")" "$(fmt0 "$bv")" "$why"
    return
  fi
  r=$(ratio "$av" "$bv"); pr=$(paired_ratio "$a" "$b" "$c")
  if [ -z "$want" ]; then CMP_RESULT="–"
  elif ge "$r" "$want"; then CMP_RESULT=PASS; else CMP_RESULT=FAIL; fi
  printf '| %s | %s | %.0f | %.0f | %s× | %s | %s |\n' "$label" "$c" "$av" "$bv" "$r" "${pr:+$pr×}" "$CMP_RESULT"
}

# all_of results...: PASS if all PASS, FAIL if any FAIL, else n/a
all_of() {
  local r out=PASS
  for r in "$@"; do
    case $r in FAIL) echo FAIL; return ;; n/a) out=n/a ;; esac
  done
  echo "$out"
}

header_lines() {  # title: the common head of a section
  echo "## $1"
  echo
  echo "Run $DATE on $NCPU CPU(s), $MODEL$HYPER; moongate at $GITREV ($MG_VER$([ "$MOONGATE_BIN" != "$REPO/build/moongate" ] && echo ", binary $MOONGATE_BIN"))."
  echo "wrk -t$THREADS, ${DURATION}s per run, $ROUNDS round(s), targets alternating (order rotated each round), ${WARMUP}s unrecorded warm-up per target."
  echo "Proxies on CPU $PROXY_CPU; wrk and ${LOAD_DESC:-the upstream} on CPU $LOAD_CPU."
  [ -n "$CPU_NOTE" ] && echo "**Warning:** $CPU_NOTE."
  echo "1-minute load average before the run: $LOAD_START, after: $LOAD_END (anything well above 0 before the run means other work shared the CPUs)."
}

per_round_table() {
  echo "<details><summary>Per-round numbers</summary>"
  echo
  echo "| round | target | conns | req/s | p50 ms | p99 ms | errors c/r/w/t | non-2xx/3xx | VmHWM KiB |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  sort -t$'\t' -k3,3n -k2,2n -k1,1 "$RAW" | while IFS=$'\t' read -r t c r rps p50 p99 ec er ew et es req rw rt cp cl; do
    printf '| %s | %s | %s | %.0f | %s | %s | %s/%s/%s/%s | %s | %s |\n' "$r" "$t" "$c" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$ec" "$er" "$ew" "$et" "$es" "$rw"
  done
  echo
  echo "</details>"
}

report_facts() {  # call after bench_run: date, versions, load average
  LOAD_END=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
  MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
  HYPER=$(grep -qw hypervisor /proc/cpuinfo && echo " (virtual machine)")
  DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
  GITREV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
  if [ -n "$(git -C "$REPO" status --porcelain -- core lua plugins 2>/dev/null | head -1)" ]; then
    GITREV="$GITREV + uncommitted changes"
  fi
  MG_VER="not built"; [ -x "$MOONGATE_BIN" ] && MG_VER=$(ver timeout -k 1 5 "$MOONGATE_BIN" --version)
}

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

write_results() {  # report-file run-command: the machine section and our own section
  local report=$1 cmd=$2 machine
  [ -n "$RESULTS" ] || return 0
  if [ ! -f "$RESULTS" ]; then
    cat >"$RESULTS" <<'EOF'
# moongate benchmark results

Written by the scripts in bench/ (see bench/README.md). Each benchmark owns
one section between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers and
rewrites only that section; text outside the markers is kept as is.
EOF
  fi
  machine="$WORK/machine.md"
  {
    echo "## Machine"
    echo
    echo "- date of the last run: $DATE"
    echo "- CPUs (nproc): $NCPU"
    echo "- model name: $MODEL$HYPER"
    echo "- kernel: $(uname -r); ulimit -n during the run: $NOFILE"
    echo "- pinning: proxies on CPU $PROXY_CPU, upstream and wrk on CPU $LOAD_CPU"
    echo "- last command: \`$cmd\` ($BENCH_NAME section)"
  } >"$machine"
  replace_section "$RESULTS" machine "$machine"
  replace_section "$RESULTS" "$BENCH_NAME" "$report"
  log "wrote the $BENCH_NAME section of $RESULTS"
}

run_cmd() {  # script: the command line that reproduces this run
  local c="BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS"
  [ "$CONNS" != "$DEFAULT_CONNS" ] && c="$c BENCH_CONNS=\"$CONNS\""
  echo "$c bash bench/$1"
}

wrk_cmd() {  # the wrk line for the Commands block
  echo "taskset -c $LOAD_CPU wrk -t$THREADS -c\$CONNS -d${DURATION}s --latency --timeout ${WRK_TIMEOUT}s -s bench/wrk-report.lua $*"
}
