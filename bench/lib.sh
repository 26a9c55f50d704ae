# bench/lib.sh: the one benchmark harness, sourced (not run) by bench/run.sh,
# auth.sh, plugins.sh, redis.sh, workers.sh and instructions.sh, and usable
# by any other bench script for its cgroup helpers alone.
#
# The method (bench/README.md, "Method"): every gateway under test runs in
# its own cgroup, capped at BENCH_CPU_LIMIT of one CPU (0.3: cgroup v1
# cpu.cfs_quota_us 6000 per cpu.cfs_period_us 20000, as a Kubernetes
# `cpu: 300m` limit), pinned to CPU BENCH_PROXY_CPU; wrk and everything that
# plays the other side (origin, Redis, auth server) run on CPU BENCH_LOAD_CPU,
# uncapped. So the gateway, not the load side, bounds the rate, and the
# cgroup's cpuacct.usage over a wrk run divided by the requests wrk counted is
# the gateway's CPU µs per request (master, workers and threads included).
# The moongate targets (PIVOTS) run before the first round of peers and after
# every round: A B A B A B A with 3 rounds, so each peer run is bracketed by
# two moongate runs; comparisons are medians over rounds of peer / bracket.
# A row with any socket error or non-2xx/3xx answer is INVALID and compares
# to nothing.
#
# Every process runs from one `mktemp -d` directory on free 127.0.0.1 ports
# below the ephemeral range, readiness is polled with a deadline, everything
# is stopped by PID from a trap (also on Ctrl-C / kill -INT) and then the
# cgroups are removed; wrk's numbers come from bench/wrk-report.lua's MGBENCH
# line, and the markdown report is written between `<!-- NAME:begin -->` /
# `<!-- NAME:end -->` in bench/RESULTS.md.
#
# A script sets BENCH_NAME (its RESULTS.md section), DEFAULT_CONNS and
# optionally DEFAULT_CPU_LIMIT, sources this file, calls bench_init, starts
# its processes (start_bg/start_nginx with cpu "gw" for a gateway under test,
# "$LOAD_CPU" for the load side; wait_http, check_http), declares targets
# (add_target), sets PIVOTS, runs bench_run and writes its report with the
# helpers at the end of this file.
#
# The load generator is wrk unless the script says otherwise: it sets, before
# bench_init, LOAD_TOOL (its name in logs and reports) and LOAD_BIN (the
# binary bench_init looks for), and after sourcing this file redefines
#   load_argv TARGET CONC SECONDS  set LOAD_ARGV to the command (run_wrk pins
#                        it to BENCH_LOAD_CPU, output to a file)
#   load_parse OUTFILE   append the MGBENCH line (see wrk-report.lua: requests,
#                        rps, p50_us, p99_us, connect, read, write, timeout,
#                        status) to OUTFILE from the tool's own output
#   load_during TARGET CONC SECONDS  optional: runs while the load does (a
#                        mid-run sample); its stdout is appended to OUTFILE
#   load_show OUTFILE    the lines of the output worth logging per run
# A concurrency (BENCH_CONNS entry) is N, or NxM for a tool that multiplexes
# (M streams on each of N connections; wrk takes only N). LAT_HEAD, ERR_HEAD
# and STATUS_HEAD name the latency, error and status columns (INVALID_TEXT
# says what makes a row INVALID), LOAD_LINE
# describes the command in the section head, WARMUP_CONNS is the warm-up's
# concurrency [50].
#
# ---- cgroup helpers (cgroup v1; cpu and cpuacct mounted apart or as one
# cpu,cpuacct hierarchy). NAME is a short label; the directory is
# <root>/moongate-bench-<pid of the script>-NAME in each hierarchy.
#   cg_init              find the hierarchies (CG_CPU, CG_ACCT), remove
#                        empty cgroups left by dead bench scripts; 1 + CG_ERR
#                        if there is no writable cgroup v1 cpu/cpuacct
#   cg_create NAME [CPUS] make the cgroup, capped at CPUS of one CPU
#                        [BENCH_CPU_LIMIT; 0 = no cap, accounting only]
#   cg_enter NAME        move the calling (sub)shell in: exec the gateway
#                        from there and all its processes start inside
#   cg_add NAME PID...   move running processes and all their descendants
#                        (nginx master and workers) in
#   cg_check NAME PID    0 if PID and all its descendants are in NAME
#   cg_procs NAME        the PIDs in NAME
#   cg_usage NAME        cpuacct.usage: CPU ns used by NAME so far
#   cg_throttled NAME    "nr_periods nr_throttled" from cpu.stat
#   cg_remove NAME       kill (by PID) what is left in it, rmdir both dirs
#   cg_cleanup           cg_remove every cgroup this shell made: call it from
#                        the EXIT trap (bench_init's cleanup does)
# A script not using bench_init: `. bench/lib.sh; cg_init || exit 1;
# trap cg_cleanup EXIT; trap 'exit 130' INT TERM HUP; cg_create gw; ...`.
#
# Environment (defaults in brackets), common to the scripts:
#   BENCH_DURATION [10]  BENCH_ROUNDS [3]  BENCH_CONNS [per script]
#   BENCH_CPU_LIMIT [0.3; per script] CPUs per gateway, 0 = uncapped
#   BENCH_CPU_PERIOD [20000] cpu.cfs_period_us
#   BENCH_THREADS [1]  BENCH_WARMUP [2]  BENCH_PAUSE [1]
#   BENCH_WRK_TIMEOUT [2]  BENCH_READY_TIMEOUT [15]
#   BENCH_PROXY_CPU [0]  BENCH_LOAD_CPU [1]  BENCH_NOFILE [65536]
#   BENCH_RESULTS [bench/RESULTS.md] ("" = don't write)  BENCH_KEEP [0]
#   MOONGATE_BIN [build/moongate]  NGINX [nginx]  WRK [wrk]

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-${DEFAULT_CONNS:-50}}
CPU_LIMIT=${BENCH_CPU_LIMIT:-${DEFAULT_CPU_LIMIT:-0.3}}
CPU_PERIOD=${BENCH_CPU_PERIOD:-20000}
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
BENCH_NAME=${BENCH_NAME:-bench}
LOAD_TOOL=${LOAD_TOOL:-wrk}
LOAD_BIN=${LOAD_BIN:-$WRK}
WARMUP_CONNS=${WARMUP_CONNS:-50}
LAT_HEAD=${LAT_HEAD:-"p50 ms | p99 ms"}
ERR_HEAD=${ERR_HEAD:-"socket errors c/r/w/t"}
STATUS_HEAD=${STATUS_HEAD:-"non-2xx/3xx"}

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

declare -A PID=()       # process name -> pid we started
declare -A PORT=()      # process or target name -> port
declare -A STATUS=()    # target -> ok | why it is not measured
declare -A TPROC=()     # target -> process that serves it (for liveness, RSS, cgroup)
declare -A TURL=()      # target -> URL wrk loads
declare -A THDR=()      # target -> one extra request header for wrk ("" = none)
declare -A CMD=()       # name -> command line shown in the report
declare -A CGOF=()      # process name -> its cgroup NAME (gateways only)
TARGETS=""              # targets in declaration order
PIVOTS=${PIVOTS:-}      # targets that bracket the others (the moongate ones); may be set before sourcing
STARTED=""              # process names in start order
WRK_PID=

# ---------------------------------------------------------------- cgroups
CG_CPU=""               # root of the hierarchy with the cpu controller
CG_ACCT=""              # root of the hierarchy with cpuacct (= CG_CPU when combined)
CG_PREFIX="moongate-bench-$$-"
CG_MADE=""              # NAMEs this shell created, for cg_cleanup
CG_ERR=""

cg_dirs() {  # NAME: its directory in each hierarchy (one when combined)
  echo "$CG_CPU/$CG_PREFIX$1"
  [ "$CG_ACCT" != "$CG_CPU" ] && echo "$CG_ACCT/$CG_PREFIX$1"
  return 0
}

cg_init() {
  local dev dir type opts rest d pid
  CG_CPU=""; CG_ACCT=""; CG_ERR=""
  while read -r dev dir type opts rest; do
    [ "$type" = cgroup ] || continue
    case ",$opts," in *,cpu,*) CG_CPU=$dir ;; esac
    case ",$opts," in *,cpuacct,*) CG_ACCT=$dir ;; esac
  done </proc/mounts
  if [ -z "$CG_CPU" ] || [ -z "$CG_ACCT" ]; then
    CG_ERR="no cgroup v1 cpu and cpuacct hierarchies mounted (see \`mount | grep cgroup\`)"
    CG_CPU=""; CG_ACCT=""; return 1
  fi
  if [ ! -f "$CG_CPU/cpu.cfs_quota_us" ] || [ ! -f "$CG_ACCT/cpuacct.usage" ] ||
     [ ! -w "$CG_CPU" ] || [ ! -w "$CG_ACCT" ]; then
    CG_ERR="cgroup v1 cpu ($CG_CPU) / cpuacct ($CG_ACCT) not writable here (needs root)"
    CG_CPU=""; CG_ACCT=""; return 1
  fi
  # empty cgroups of bench scripts that died without cleaning up (SIGKILL)
  for d in "$CG_CPU"/moongate-bench-* "$CG_ACCT"/moongate-bench-*; do
    [ -d "$d" ] || continue
    pid=${d##*/moongate-bench-}; pid=${pid%%-*}
    [[ $pid =~ ^[0-9]+$ ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    [ -s "$d/cgroup.procs" ] || rmdir "$d" 2>/dev/null
  done
  return 0
}

cg_create() {  # NAME [CPUS]
  local name=$1 limit=${2:-$CPU_LIMIT} d quota
  [ -n "$CG_CPU" ] || { CG_ERR=${CG_ERR:-"cg_init first"}; return 1; }
  for d in $(cg_dirs "$name"); do
    mkdir -p "$d" 2>/dev/null || { CG_ERR="cannot mkdir $d"; return 1; }
  done
  case " $CG_MADE " in *" $name "*) ;; *) CG_MADE="$CG_MADE $name" ;; esac
  d=$CG_CPU/$CG_PREFIX$name
  if awk -v l="$limit" 'BEGIN{exit !(l > 0)}'; then
    quota=$(awk -v l="$limit" -v p="$CPU_PERIOD" 'BEGIN{printf "%d", l * p}')
    { echo -1 >"$d/cpu.cfs_quota_us" && echo "$CPU_PERIOD" >"$d/cpu.cfs_period_us" &&
      echo "$quota" >"$d/cpu.cfs_quota_us"; } 2>/dev/null ||
      { CG_ERR="cannot set $d/cpu.cfs_quota_us = $quota per cpu.cfs_period_us = $CPU_PERIOD"; return 1; }
  else
    echo -1 >"$d/cpu.cfs_quota_us" 2>/dev/null
  fi
  return 0
}

cg_write_pid() {  # NAME PID: PID (its whole thread group) into both hierarchies
  local d
  for d in $(cg_dirs "$1"); do
    echo "$2" >"$d/cgroup.procs" 2>/dev/null || { CG_ERR="cannot move pid $2 into $d"; return 1; }
  done
}
cg_enter() { cg_write_pid "$1" "$BASHPID"; }
proc_tree() {  # PID: it and all its descendants
  local k
  echo "$1"
  for k in $(ps -o pid= --ppid "$1" 2>/dev/null); do proc_tree "$k"; done
}
cg_add() {  # NAME PID...
  local name=$1 p k; shift
  for p in "$@"; do
    for k in $(proc_tree "$p"); do cg_write_pid "$name" "$k" || return 1; done
  done
}
cg_procs() { cat "$CG_CPU/$CG_PREFIX$1/cgroup.procs" 2>/dev/null; }
cg_check() {  # NAME PID
  local k d
  for k in $(proc_tree "$2"); do
    kill -0 "$k" 2>/dev/null || continue
    for d in $(cg_dirs "$1"); do
      grep -qx "$k" "$d/cgroup.procs" 2>/dev/null || { CG_ERR="pid $k is not in $d"; return 1; }
    done
  done
}
cg_usage() { cat "$CG_ACCT/$CG_PREFIX$1/cpuacct.usage" 2>/dev/null; }
cg_throttled() {
  awk '$1 == "nr_periods" {p = $2} $1 == "nr_throttled" {t = $2} END {print p + 0, t + 0}' \
    "$CG_CPU/$CG_PREFIX$1/cpu.stat" 2>/dev/null
}
cg_remove() {  # NAME
  local name=$1 d k i left=""
  [ -n "$CG_CPU" ] || return 0
  # only what this script started can be inside: stop stragglers by PID
  for d in $(cg_dirs "$name"); do
    [ -d "$d" ] || continue
    for k in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -KILL "$k" 2>/dev/null; done
  done
  for d in $(cg_dirs "$name"); do
    [ -d "$d" ] || continue
    for i in $(seq 50); do rmdir "$d" 2>/dev/null && break; sleep 0.1; done
    if [ -d "$d" ]; then  # last resort: hand what is left to the root group
      for k in $(cat "$d/cgroup.procs" 2>/dev/null); do echo "$k" >"${d%/*}/cgroup.procs" 2>/dev/null; done
      rmdir "$d" 2>/dev/null || left="$left $d"
    fi
  done
  CG_MADE=$(tr ' ' '\n' <<<"$CG_MADE" | grep -vx "$name" | tr '\n' ' ')
  [ -z "$left" ] || { log "warning: could not remove cgroup(s)$left"; return 1; }
}
cg_cleanup() { local n; for n in $CG_MADE; do cg_remove "$n"; done; CG_MADE=""; }

capped() { awk -v l="$CPU_LIMIT" 'BEGIN{exit !(l > 0)}'; }

# ---------------------------------------------------------------- setup
bench_init() {
  local v c hard
  for v in DURATION ROUNDS THREADS WARMUP PAUSE WRK_TIMEOUT READY_TIMEOUT CPU_PERIOD; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v must be a whole number, got '${!v}'"
  done
  [[ $CPU_LIMIT =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_CPU_LIMIT must be a number of CPUs (0.3), got '$CPU_LIMIT'"
  [ "$CPU_PERIOD" -ge 1000 ] || die "BENCH_CPU_PERIOD must be >= 1000 (µs)"
  for c in $CONNS; do
    if [ "$LOAD_TOOL" = wrk ]; then
      [[ $c =~ ^[0-9]+$ ]] && [ "$c" -ge 1 ] || die "BENCH_CONNS: '$c' is not a positive number"
    else
      [[ $c =~ ^[1-9][0-9]*(x[1-9][0-9]*)?$ ]] || die "BENCH_CONNS: '$c' is not N or NxM (connections x streams)"
    fi
  done
  [ -n "$CONNS" ] || die "BENCH_CONNS is empty"
  [ "$DURATION" -ge 1 ] || die "BENCH_DURATION must be >= 1"
  [ "$ROUNDS" -ge 1 ] || die "BENCH_ROUNDS must be >= 1"
  MAX_CONN=0
  for c in $CONNS; do [ "${c%%x*}" -gt "$MAX_CONN" ] && MAX_CONN=${c%%x*}; done

  command -v "$LOAD_BIN" >/dev/null || die "$LOAD_TOOL not found (make deps-bench installs it)"
  command -v curl >/dev/null || die "curl not found"
  command -v taskset >/dev/null || die "taskset not found (util-linux)"

  if ! cg_init; then
    capped && die "$CG_ERR: the CPU-capped method needs them (BENCH_CPU_LIMIT=0 runs uncapped, without CPU per request)"
    log "warning: $CG_ERR: no CPU µs per request"
  fi

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
    CPU_NOTE="only $NCPU CPU(s) usable: $LOAD_TOOL and the load share CPU $PROXY_CPU with the proxies; numbers are not comparable to a 2-CPU run"
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

cleanup() {  # stop what we started, last started first; then the cgroups
  local names=() i
  trap - EXIT INT TERM HUP
  [ -n "$WRK_PID" ] && stop_pid "$WRK_PID"
  read -r -a names <<<"$STARTED"
  for (( i = ${#names[@]} - 1; i >= 0; i-- )); do
    [ -n "${PID[${names[i]}]:-}" ] && stop_pid "${PID[${names[i]}]}"
  done
  cg_cleanup
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

# start_bg name cpu cmd...: runs from $WORK, pinned, output to $WORK/name.out.
# cpu "gw" = a gateway under test: pinned to $PROXY_CPU and started inside
# its own cgroup `name` (capped at BENCH_CPU_LIMIT), so every process and
# thread it forks is capped and counted with it.
start_bg() {
  local name=$1 cpu=$2 cg=""; shift 2
  if [ "$cpu" = gw ]; then
    cpu=$PROXY_CPU
    if [ -n "$CG_CPU" ]; then
      cg_create "$name" || die "cgroup for $name: $CG_ERR"
      cg=$name; CGOF[$name]=$name
    fi
  fi
  ( cd "$WORK" || exit 1
    if [ -n "$cg" ]; then cg_enter "$cg" || { echo "$CG_ERR" >&2; exit 125; }; fi
    exec taskset -c "$cpu" "$@" ) </dev/null >"$WORK/$name.out" 2>&1 &
  PID[$name]=$!
  STARTED="$STARTED $name"
}
cpu_of() { [ "$1" = gw ] && echo "$PROXY_CPU" || echo "$1"; }  # for command lines in reports
cap_note() {  # how a gateway was started, for the Commands block
  if [ -n "$CG_CPU" ] && capped; then echo "in its own cgroup, cpu.cfs_quota_us $(awk -v l="$CPU_LIMIT" -v p="$CPU_PERIOD" 'BEGIN{printf "%d", l * p}') / cpu.cfs_period_us $CPU_PERIOD"
  elif [ -n "$CG_CPU" ]; then echo "in its own cgroup, uncapped"
  else echo "no cgroup"; fi
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
# bench/peers, with its own config, pid, temp dirs and error log in $WORK;
# cpu "gw" for a gateway under test (see start_bg)
start_nginx() {
  local name=$1 cpu=$2 tpl=$3; shift 3
  local d
  subst "$BENCH_DIR/peers/$tpl" "$WORK/$name.conf" PREFIX="$WORK" NOFILE="$NOFILE" "$@"
  # nginx creates its *_temp_path dirs but not their parents
  for d in $(grep -o "$WORK/[A-Za-z0-9_.-]*-tmp/" "$WORK/$name.conf" | sort -u); do mkdir -p "$d"; done
  start_bg "$name" "$cpu" "$NGINX" -p "$WORK/" -c "$WORK/$name.conf" -e "$WORK/$name-error.log"
  CMD[$name]="taskset -c $(cpu_of "$cpu") nginx -p \$TMP/ -c \$TMP/$name.conf -e \$TMP/$name-error.log   # bench/peers/$tpl"
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
is_pivot() { [[ " $PIVOTS " == *" $1 "* ]]; }

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

now_us() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }

# The load command, wrk by default (see the head of this file for the hooks).
load_argv() {  # target conc seconds: sets LOAD_ARGV
  local hdr=()
  [ -n "${THDR[$1]}" ] && hdr=(-H "${THDR[$1]}")
  LOAD_ARGV=("$WRK" -t"$THREADS" -c"$2" -d"$3"s --latency --timeout "${WRK_TIMEOUT}"s "${hdr[@]}"
    -s "$BENCH_DIR/wrk-report.lua" "${TURL[$1]}")
}
load_parse() { :; }   # wrk-report.lua prints the MGBENCH line itself
load_show() { grep -E 'Requests/sec|Socket errors|Non-2xx' "$1"; }

# run_wrk target conc seconds outfile: 0 if the load produced its report line. Also
# sets CPU_PROXY, CPU_LOAD (busy % of the two CPUs), and for a gateway in a
# cgroup CG_NS (CPU ns it used), CG_THR (% of CFS periods it was throttled),
# WALL_US; "-" when there is no cgroup.
run_wrk() {
  local t=$1 rc s0 s1 cg=${CGOF[${TPROC[$1]}]:-} u0=- u1 th0 th1 w0 w1 p0 p1 n0 n1 during=""
  load_argv "$t" "$2" "$3"
  if [ -n "$cg" ]; then u0=$(cg_usage "$cg"); th0=$(cg_throttled "$cg"); fi
  w0=$(now_us)
  timeout -k 5 $(( $3 + WRK_TIMEOUT + 30 )) taskset -c "$LOAD_CPU" "${LOAD_ARGV[@]}" >"$4" 2>&1 &
  WRK_PID=$!
  s0=$(cpu_snap)
  declare -F load_during >/dev/null && during=$(load_during "$t" "$2" "$3")
  wait "$WRK_PID"; rc=$?
  s1=$(cpu_snap)
  w1=$(now_us)
  WRK_PID=
  CG_NS=-; CG_THR=-; WALL_US=$(( w1 - w0 ))
  if [ -n "$cg" ] && [ "$u0" != - ]; then
    u1=$(cg_usage "$cg"); th1=$(cg_throttled "$cg")
    [ -n "$u0" ] && [ -n "$u1" ] && CG_NS=$(( u1 - u0 ))
    read -r p0 n0 <<<"$th0"; read -r p1 n1 <<<"$th1"
    if capped && [ $(( p1 - p0 )) -gt 0 ]; then CG_THR=$(( 100 * (n1 - n0) / (p1 - p0) )); fi
  fi
  cpu_busy_between "$s0" "$s1"
  [ -n "$during" ] && echo "$during" >>"$4"
  load_parse "$4"
  grep -q '^MGBENCH ' "$4" || { log "$LOAD_TOOL failed (rc $rc):"; tail_log "$4"; return 1; }
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

# RAW (one line per wrk run), tab-separated:
#  1 target 2 conns 3 round 4 req/s 5 p50_us 6 p99_us 7-10 socket errors
#  c/r/w/t 11 non-2xx/3xx 12 requests 13 rss_serving 14 rss_total
#  15 proxy CPU busy % 16 load CPU busy % 17 cgroup CPU ns 18 wall µs
#  19 throttled % of periods
run_one() {  # target conc round
  local t=$1 conc=$2 round=$3 out ok rw rt
  out="$WORK/wrk-$t-c$conc-r$round.txt"
  log "c=$conc round $round/$ROUNDS $t"
  run_wrk "$t" "$conc" "$DURATION" "$out"; ok=$?
  # a run during which the process died is not a measurement: the status says why
  if proc_died "$t" "the c=$conc run of round $round"; then
    load_show "$out" | sed 's/^/    /' >&2
  elif [ "$ok" -eq 0 ]; then
    read -r rw rt <<<"$(rss_sample "${TPROC[$t]}")"
    sed -n 's/^MGBENCH //p' "$out" | tr ' ' '\n' | awk -F= -v t="$t" -v c="$conc" -v r="$round" \
      -v rw="$rw" -v rt="$rt" -v cp="${CPU_PROXY:--}" -v cl="${CPU_LOAD:--}" -v ns="$CG_NS" -v wall="$WALL_US" \
      -v thr="$CG_THR" '{v[$1]=$2} END {
        printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t, c, r,
          v["rps"], v["p50_us"], v["p99_us"], v["connect"], v["read"], v["write"],
          v["timeout"], v["status"], v["requests"], rw, rt, cp, cl, ns, wall, thr }' >>"$RAW"
    load_show "$out" | sed 's/^/    /' >&2
    [ "$CG_NS" != - ] && awk -v ns="$CG_NS" -v n="$(sed -n 's/^MGBENCH .*requests=\([0-9]*\).*/\1/p' "$out")" \
      -v thr="$CG_THR" 'BEGIN { if (n > 0) printf "    CPU %.1f µs/request, throttled %s%% of periods\n", ns / 1000 / n, thr }' >&2
  fi
  sleep "$PAUSE"
}

run_phase() {  # conc round rotation targets...: each active target once, order rotated
  local conc=$1 round=$2 rot=$3 list t; shift 3
  list=("$@")
  [ ${#list[@]} -gt 0 ] || return 0
  rot=$(( rot % ${#list[@]} ))
  for t in "${list[@]:rot}" "${list[@]:0:rot}"; do
    [ "${STATUS[$t]}" = ok ] && run_one "$t" "$conc" "$round"
  done
  return 0
}

# bench_run: warm-up, then per concurrency: the PIVOTS (moongate), then
# ROUNDS x (the other targets, the PIVOTS again): A B A B A B A for 3 rounds.
# Pivot runs are numbered 0..ROUNDS (run r follows the others' round r);
# without PIVOTS every target runs once per round, order rotated.
bench_run() {
  local t conc round n_piv n_oth n_conns est p
  ACTIVE=""; PIV=(); OTH=()
  for t in $TARGETS; do
    [ "${STATUS[$t]:-}" = ok ] || continue
    # a gateway's processes must all be in its cgroup, or its CPU is not all counted
    p=${TPROC[$t]}
    if [ -n "${CGOF[$p]:-}" ] && [ -n "${PID[$p]:-}" ] && ! cg_check "${CGOF[$p]}" "${PID[$p]}"; then
      STATUS[$t]="not measured: $CG_ERR"; log "$t: ${STATUS[$t]}"; continue
    fi
    ACTIVE="$ACTIVE $t"
    if is_pivot "$t"; then PIV+=("$t"); else OTH+=("$t"); fi
  done
  ACTIVE=${ACTIVE# }
  if [ -z "$ACTIVE" ]; then log "no target could be started"; return 1; fi
  n_piv=${#PIV[@]}; n_oth=${#OTH[@]}; n_conns=$(wc -w <<<"$CONNS")
  if [ "$n_piv" -gt 0 ] && [ "$n_oth" -gt 0 ]; then
    est=$(( (n_piv + n_oth) * (WARMUP + PAUSE) + n_conns * ((ROUNDS + 1) * n_piv + ROUNDS * n_oth) * (DURATION + PAUSE) ))
  else
    est=$(( (n_piv + n_oth) * (WARMUP + PAUSE + n_conns * ROUNDS * (DURATION + PAUSE)) ))
  fi
  log "targets: $ACTIVE; pivots: ${PIV[*]:-none}; c={$CONNS} x $ROUNDS round(s) x ${DURATION}s; CPU cap: $(capped && echo "$CPU_LIMIT per gateway" || echo none); about ${est}s"
  for t in $ACTIVE; do
    [ "$WARMUP" -gt 0 ] || break
    [ "${STATUS[$t]}" = ok ] || continue
    log "warm-up $t (${WARMUP}s, c=$WARMUP_CONNS)"
    run_wrk "$t" "$WARMUP_CONNS" "$WARMUP" "$WORK/warmup-$t.txt" >/dev/null 2>&1
    proc_died "$t" "warm-up"
    sleep "$PAUSE"
  done
  for conc in $CONNS; do
    if [ "$n_piv" -gt 0 ] && [ "$n_oth" -gt 0 ]; then
      run_phase "$conc" 0 0 "${PIV[@]}"
      for round in $(seq "$ROUNDS"); do
        run_phase "$conc" "$round" $(( round - 1 )) "${OTH[@]}"
        run_phase "$conc" "$round" "$round" "${PIV[@]}"
      done
    else
      for round in $(seq "$ROUNDS"); do
        run_phase "$conc" "$round" $(( round - 1 )) "${PIV[@]}" "${OTH[@]}"
      done
    fi
  done
  return 0
}

# ---------------------------------------------------------------- report helpers
fmt0() { if [ -n "$1" ] && [ "$1" != - ]; then printf '%.0f' "$1"; else printf '–'; fi; }
fmt1() { if [ -n "$1" ] && [ "$1" != - ]; then printf '%.1f' "$1"; else printf '–'; fi; }
ms() { [ -n "$1" ] && awk -v u="$1" 'BEGIN {printf "%.3f", u/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a >= b)}'; }
ver() { "$@" 2>&1 | head -1; }

declare -A RPS=() US=() P50=() P99=() SERR=() NON2XX=() STATS=() VALID=()
# aggregate: one pass over $RAW (the fork-per-number way takes tens of seconds
# on a busy machine). STATS[t,c] = "n med min max p50 p99 ec er ew et es rw rt
# cp cl us usmin usmax gwpct thr": medians over runs for req/s, µs/request,
# latencies, CPU %; sums for errors; maxima for RSS; "-" where not measured.
aggregate() {
  local t c rest
  STATS=()
  while read -r t c rest; do STATS[$t,$c]=$rest; done < <(awk -F'\t' '
    function med(s,   a, n, i, j, x) {
      n = split(s, a, " ")
      if (!n) return "-"
      for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 " " $2; if (!(k in n)) { n[k] = 0; mn[k] = $4; mx[k] = $4; rw[k] = $13; rt[k] = $14; umn[k] = "-"; umx[k] = "-" }
      n[k]++; rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
      if ($15 != "-") cp[k] = cp[k] " " $15; if ($16 != "-") cl[k] = cl[k] " " $16
      if ($4 + 0 < mn[k] + 0) mn[k] = $4; if ($4 + 0 > mx[k] + 0) mx[k] = $4
      ec[k] += $7; er[k] += $8; ew[k] += $9; et[k] += $10; es[k] += $11
      if ($13 != "-" && $13 + 0 > rw[k] + 0) rw[k] = $13; if ($14 != "-" && $14 + 0 > rt[k] + 0) rt[k] = $14
      if ($17 != "-" && $17 != "" && $12 > 0) {
        u = $17 / 1000 / $12; us[k] = us[k] " " u
        if (umn[k] == "-" || u < umn[k]) umn[k] = u; if (umx[k] == "-" || u > umx[k]) umx[k] = u
        if ($18 > 0) gw[k] = gw[k] " " (100 * $17 / 1000 / $18)
      }
      if ($19 != "-" && $19 != "") thr[k] = thr[k] " " $19 }
    END { for (k in n) print k, n[k], med(rps[k]), mn[k], mx[k], med(p50[k]), med(p99[k]),
                        ec[k], er[k], ew[k], et[k], es[k], rw[k], rt[k], med(cp[k]), med(cl[k]),
                        med(us[k]), umn[k], umx[k], med(gw[k]), med(thr[k]) }' "$RAW")
}

# summary_row target conc: one row of the summary table; fills RPS, US, P50 (µs), VALID ...
summary_row() {
  local t=$1 c=$2 n med min max p50 p99 ec er ew et es rw rt cp cl us usmin usmax gw thr rss note cpu
  if [ -z "${STATS[$t,$c]:-}" ]; then
    printf '| %s | %s | – | – | – | – | – | – | – | – | – | – | – | %s |\n' "$t" "$c" "${STATUS[$t]:-not run}"
    return
  fi
  read -r n med min max p50 p99 ec er ew et es rw rt cp cl us usmin usmax gw thr <<<"${STATS[$t,$c]}"
  RPS[$t,$c]=$med; P50[$t,$c]=$p50; P99[$t,$c]=$p99
  [ "$us" != - ] && US[$t,$c]=$us
  SERR[$t,$c]=$(( ec + er + ew + et )); NON2XX[$t,$c]=$es
  VALID[$t,$c]=1; [ $(( ec + er + ew + et + es )) -gt 0 ] && VALID[$t,$c]=0
  rss="–"; [ "$rw" != - ] && rss="$rw"; [ "$rt" != - ] && [ "$rt" != "$rw" ] && rss="$rw ($rt)"
  note="${STATUS[$t]}"; [ "$note" = ok ] && note=""; note=${note//|/\\|}
  [ "$n" -lt "$ROUNDS" ] && note="${note:+$note; }$n/$ROUNDS runs"
  [ "${VALID[$t,$c]}" = 0 ] && note="**INVALID: $(( ec + er + ew + et )) ${ERR_HEAD% [a-z]*/*}, $es $STATUS_HEAD**${note:+; $note}"
  if awk -v m="$min" 'BEGIN{exit !(m + 0 <= 0)}'; then
    VALID[$t,$c]=0; note="**INVALID: a run completed no request**${note:+; $note}"
  fi
  cpu="–"; [ "$gw" != - ] && cpu="$(fmt0 "$gw")"; [ "$thr" != - ] && cpu="$cpu ($(fmt0 "$thr"))"
  printf '| %s | %s | %.0f | %.0f–%.0f | %s | %s | %s | %s | %s | %s/%s/%s/%s | %s | %s | %s | %s |\n' \
    "$t" "$c" "$med" "$min" "$max" "$(fmt1 "$us")" "$([ "$usmin" = - ] && echo – || echo "$(fmt1 "$usmin")–$(fmt1 "$usmax")")" "$cpu" \
    "$(ms "$p50")" "$(ms "$p99")" "$ec" "$er" "$ew" "$et" "$es" "$rss" "$(fmt0 "$cl")" "$note"
}

summary_table() {  # the per-target table for every concurrency
  local c t
  aggregate
  echo "| target | conns | req/s (median) | req/s min–max | CPU µs/req (median) | µs/req min–max | gateway CPU % (throttled %) | $LAT_HEAD | $ERR_HEAD | $STATUS_HEAD | peak RSS KiB | load CPU busy % | note |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for c in $CONNS; do for t in $TARGETS; do summary_row "$t" "$c"; done; done
  echo
  echo "Medians over runs (moongate targets run $((ROUNDS + 1)) times per concurrency when peers are"
  echo "measured, the others $ROUNDS); errors are totals. CPU µs/req: the gateway cgroup's"
  echo "cpuacct.usage over a run / the requests $LOAD_TOOL completed (master, workers, threads)."
  echo "Gateway CPU %: that usage over the run's wall time, % of one CPU$(capped && echo " (the cap is $(awk -v l="$CPU_LIMIT" 'BEGIN{printf "%.0f", l * 100}') %)"); in"
  echo "brackets the % of CFS periods in which the cap throttled it (near 100: the gateway"
  echo "set the pace). Load CPU busy %: CPU $LOAD_CPU ($LOAD_TOOL and the servers behind) from /proc/stat."
  echo "Peak RSS is VmHWM of the serving process (nginx: its worker, with the master in brackets)."
  echo "A row with ${INVALID_TEXT:-any socket error or non-2xx/3xx answer} is INVALID and compared to nothing."
}

# bracket_ratio a b conc metric: median over rounds of the paired ratio,
# metric "us" (b's CPU µs/req / a's) or "rps" (a's req/s / b's). A pivot
# compared with a non-pivot is taken as the mean of its runs before and
# after the other's run (round r: pivot runs r-1 and r); two targets of the
# same kind pair run for run. Empty if no round has both.
bracket_ratio() {
  local pa=0 pb=0
  is_pivot "$1" && pa=1; is_pivot "$2" && pb=1
  awk -F'\t' -v a="$1" -v b="$2" -v c="$3" -v m="$4" -v pa="$pa" -v pb="$pb" -v R="$ROUNDS" '
    function val() { if (m == "us") return ($17 != "-" && $17 != "" && $12 > 0) ? $17 / 1000 / $12 : ""; return $4 }
    $2 == c && $1 == a { v = val(); if (v != "") A[$3] = v }
    $2 == c && $1 == b { v = val(); if (v != "") B[$3] = v }
    function side(S, piv, other, r) {   # value of a side for round r, "" if missing
      if (piv && !other) {
        if ((r - 1) in S && r in S) return (S[r - 1] + S[r]) / 2
        if (r in S) return S[r]; if ((r - 1) in S) return S[r - 1]; return ""
      }
      return (r in S) ? S[r] : ""
    }
    END { n = 0; lo = (pa && pb) ? 0 : 1
          for (r = lo; r <= R; r++) {
            x = side(A, pa, pb, r); y = side(B, pb, pa, r)
            if (x == "" || y == "" || x <= 0 || y <= 0) continue
            q[++n] = (m == "us") ? y / x : x / y
          }
          if (!n) exit
          for (i = 2; i <= n; i++) { v = q[i]; for (j = i - 1; j >= 1 && q[j] > v; j--) q[j + 1] = q[j]; q[j + 1] = v }
          printf "%.2f", (n % 2) ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2 }' "$RAW"
}
paired_ratio() { bracket_ratio "$1" "$2" "$3" rps; }

# compare_row label a_target b_target conc min_ratio: one row of a comparison
# table (compare_header prints its head). With CPU accounting the ratio is
# b's CPU µs/req over a's (a cheaper = above 1), else a's req/s over b's;
# PASS/FAIL is on the median over rounds of the bracketed ratio; the ratio of
# the medians is shown too. CMP_RESULT is PASS, FAIL, INVALID or n/a
# (min_ratio "" = no target: "–").
compare_header() {  # a-label b-label target-column
  echo "| comparison | conns | $1 µs/req | $2 µs/req | CPU ratio: $2 µs ÷ $1 µs (bracketed, median) | ratio of the medians | $1 req/s | $2 req/s | req/s ratio: $1 ÷ $2 (bracketed) | $3 |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
}
compare_row() {
  local label=$1 a=$2 b=$3 c=$4 want=$5 av bv au bu r rm pr why=""
  av=${RPS[$a,$c]:-}; bv=${RPS[$b,$c]:-}; au=${US[$a,$c]:-}; bu=${US[$b,$c]:-}
  if [ -z "$av" ] || [ -z "$bv" ]; then
    CMP_RESULT=n/a
    [ -z "$av" ] && why="$a"
    [ -z "$bv" ] && why="${why:+$why, }$b"
    printf '| %s | %s | %s | %s | – | – | %s | %s | – | n/a (%s not measured) |\n' "$label" "$c" \
      "$(fmt1 "$au")" "$(fmt1 "$bu")" "$(fmt0 "$av")" "$(fmt0 "$bv")" "$why"
    return
  fi
  pr=$(bracket_ratio "$a" "$b" "$c" rps)
  if [ -n "$au" ] && [ -n "$bu" ]; then
    r=$(bracket_ratio "$a" "$b" "$c" us); rm=$(ratio "$bu" "$au")
  else
    r=$pr; rm=$(ratio "$av" "$bv")
  fi
  [ -n "$r" ] || r=$rm
  if [ "${VALID[$a,$c]:-1}" = 0 ] || [ "${VALID[$b,$c]:-1}" = 0 ]; then CMP_RESULT=INVALID
  elif [ -z "$r" ]; then CMP_RESULT=n/a
  elif [ -z "$want" ]; then CMP_RESULT="–"
  elif ge "$r" "$want"; then CMP_RESULT=PASS; else CMP_RESULT=FAIL; fi
  printf '| %s | %s | %s | %s | %s | %s | %.0f | %.0f | %s | %s |\n' "$label" "$c" "$(fmt1 "$au")" "$(fmt1 "$bu")" \
    "${r:+$r×}" "${rm:+$rm×}" "$av" "$bv" "${pr:+$pr×}" "$CMP_RESULT"
}

# all_of results...: PASS if all PASS, FAIL if any FAIL, INVALID if any
# INVALID (and none FAIL), else n/a
all_of() {
  local r out=PASS
  for r in "$@"; do
    case $r in FAIL) echo FAIL; return ;; INVALID) out=INVALID ;; n/a) [ "$out" = PASS ] && out=n/a ;; esac
  done
  echo "$out"
}

method_line() {  # how the gateways ran: for a section's head
  if [ -n "$CG_CPU" ] && capped; then
    echo "Each gateway in its own cgroup capped at $CPU_LIMIT CPU (cpu.cfs_quota_us $(awk -v l="$CPU_LIMIT" -v p="$CPU_PERIOD" 'BEGIN{printf "%d", l * p}') per cpu.cfs_period_us $CPU_PERIOD), pinned to CPU $PROXY_CPU; CPU µs per request from the cgroup's cpuacct.usage."
  elif [ -n "$CG_CPU" ]; then
    echo "Gateways uncapped (BENCH_CPU_LIMIT=0) on CPU $PROXY_CPU, each in its own cgroup for cpuacct.usage (CPU µs per request)."
  else
    echo "Gateways uncapped on CPU $PROXY_CPU, no cgroups (no CPU µs per request)."
  fi
}

header_lines() {  # title: the common head of a section
  echo "## $1"
  echo
  echo "Run $DATE on $NCPU CPU(s), $MODEL$HYPER; moongate at $GITREV ($MG_VER$([ "$MOONGATE_BIN" != "$REPO/build/moongate" ] && echo ", binary $MOONGATE_BIN"))."
  method_line
  if [ -n "$PIVOTS" ]; then
    echo "${LOAD_LINE:-wrk -t$THREADS}, ${DURATION}s per run, $ROUNDS round(s) per concurrency: the moongate targets before the first and after every round of peers (A B A B …), ${WARMUP}s unrecorded warm-up per target."
  else
    echo "${LOAD_LINE:-wrk -t$THREADS}, ${DURATION}s per run, $ROUNDS round(s) per concurrency, targets alternating (order rotated each round), ${WARMUP}s unrecorded warm-up per target."
  fi
  echo "$LOAD_TOOL and ${LOAD_DESC:-the upstream} on CPU $LOAD_CPU, uncapped."
  [ -n "$CPU_NOTE" ] && echo "**Warning:** $CPU_NOTE."
  echo "1-minute load average before the run: $LOAD_START, after: $LOAD_END (anything well above 0 before the run means other work shared the CPUs)."
}

per_round_table() {
  echo "<details><summary>Per-run numbers</summary>"
  echo
  echo "| conns | round | target | req/s | CPU µs/req | throttled % | $LAT_HEAD | ${ERR_HEAD#socket } | $STATUS_HEAD | VmHWM KiB |"
  echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '{ printf "%s\t%s\t%s\t%s\n", $2, $3, NR, $0 }' "$RAW" | sort -t$'\t' -k1,1n -k2,2n -k3,3n | cut -f4- |
    while IFS=$'\t' read -r t c r rps p50 p99 ec er ew et es req rw rt cp cl ns wall thr; do
      local us=-; [ "$ns" != - ] && [ "${req:-0}" -gt 0 ] && us=$(awk -v n="$ns" -v q="$req" 'BEGIN{printf "%.1f", n / 1000 / q}')
      printf '| %s | %s | %s | %.0f | %s | %s | %s | %s | %s/%s/%s/%s | %s | %s |\n' "$c" "$r" "$t" "$rps" \
        "$(fmt1 "$us")" "$([ "$thr" = - ] && echo – || echo "$thr")" "$(ms "$p50")" "$(ms "$p99")" "$ec" "$er" "$ew" "$et" "$es" "$rw"
    done
  echo
  echo "Round 0 is the moongate targets' first run; their run r follows the peers' round r."
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
    echo "- pinning: gateways on CPU $PROXY_CPU, upstream and $LOAD_TOOL on CPU $LOAD_CPU"
    echo "- gateways: $(method_line)"
    echo "- last command: \`$cmd\` ($BENCH_NAME section)"
  } >"$machine"
  replace_section "$RESULTS" machine "$machine"
  replace_section "$RESULTS" "$BENCH_NAME" "$report"
  log "wrote the $BENCH_NAME section of $RESULTS"
}

run_cmd() {  # script: the command line that reproduces this run
  local c="BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS"
  [ "$CONNS" != "$DEFAULT_CONNS" ] && c="$c BENCH_CONNS=\"$CONNS\""
  [ "$CPU_LIMIT" != "${DEFAULT_CPU_LIMIT:-0.3}" ] && c="$c BENCH_CPU_LIMIT=$CPU_LIMIT"
  [ "$CPU_PERIOD" != 20000 ] && c="$c BENCH_CPU_PERIOD=$CPU_PERIOD"
  echo "$c bash bench/$1"
}

wrk_cmd() {  # the wrk line for the Commands block
  echo "taskset -c $LOAD_CPU wrk -t$THREADS -c\$CONNS -d${DURATION}s --latency --timeout ${WRK_TIMEOUT}s -s bench/wrk-report.lua $*"
}
