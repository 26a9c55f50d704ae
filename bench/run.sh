#!/usr/bin/env bash
# bench/run.sh: the plain proxy benchmark. `make bench` runs it after a build.
#
# wrk (1 thread, 50 and 1000 connections) against, in one run:
#   moongate  $MOONGATE_BIN (default build/moongate), workers = 1, no access log
#   nginx     nginx proxy_pass with upstream keepalive, 1 worker, no access log
#   haproxy   HAProxy, nbthread 1, http mode, keep-alive + http-reuse, no log
# and on request (BENCH_TARGETS):
#   direct       the upstream itself (no proxy, not capped: a reference only)
#   moongate-bp  moongate with `busy_poll` (BENCH_MG_BUSY_POLL)
#   haproxy-bp   HAProxy with `busy-polling` (it spins: under a CPU cap it
#                burns its quota polling)
# The method is bench/lib.sh's: each gateway in its own cgroup capped at
# BENCH_CPU_LIMIT (0.3) of CPU 0, the upstream (nginx, 1 worker, `return 200
# "hello world\n"`) and wrk on CPU 1; per concurrency moongate runs before the
# first and after every round of peers (A B A B A B A); req/s and CPU µs per
# request (cgroup cpuacct.usage / requests) for every target; a row with a
# socket error or a non-2xx/3xx answer is INVALID. Prints a markdown report
# and rewrites <!-- proxy:begin --> .. <!-- proxy:end --> in bench/RESULTS.md.
#
# Environment: bench/lib.sh's (BENCH_DURATION [10], BENCH_ROUNDS [3],
# BENCH_CONNS ["50 1000"], BENCH_CPU_LIMIT [0.3], BENCH_CPU_PERIOD [20000],
# BENCH_RESULTS, BENCH_KEEP, MOONGATE_BIN, NGINX, WRK, ...), plus
#   BENCH_TARGETS ["moongate nginx haproxy"] any of the targets above
#   BENCH_MG_BUSY_POLL [0.0002] busy_poll of moongate-bp
#   HAPROXY [haproxy]
# Smoke run: BENCH_DURATION=2 BENCH_ROUNDS=1 BENCH_RESULTS= bash bench/run.sh
#
# The script never fails because a target is slow; it exits non-zero only if
# it cannot run (missing wrk or cgroups, no upstream).

set -uo pipefail
BENCH_NAME=proxy
LOAD_DESC="the upstream"
DEFAULT_CONNS="50 1000"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ALL_TARGETS="direct moongate nginx haproxy moongate-bp haproxy-bp"
DEFAULT_TARGETS="moongate nginx haproxy"
WANT_TARGETS=${BENCH_TARGETS:-$DEFAULT_TARGETS}
MG_BUSY_POLL=${BENCH_MG_BUSY_POLL:-0.0002}
HAPROXY=${HAPROXY:-haproxy}
for t in $WANT_TARGETS; do [[ " $ALL_TARGETS " == *" $t "* ]] || die "BENCH_TARGETS: unknown target '$t' (known: $ALL_TARGETS)"; done
PIVOTS="moongate moongate-bp"
EXPECTED_BODY="hello world"
bench_init
HAPROXY_MAXCONN=$(( NOFILE / 2 - 128 )); [ "$HAPROXY_MAXCONN" -gt 20000 ] && HAPROXY_MAXCONN=20000

# ---------------------------------------------------------------- upstream
command -v "$NGINX" >/dev/null || die "nginx not found: it is the upstream (make deps-bench)"
free_port upstream
start_nginx upstream "$LOAD_CPU" upstream-nginx.conf.in PORT="${PORT[upstream]}"
UP="http://127.0.0.1:${PORT[upstream]}/"
if ! wait_http upstream "$UP"; then proc_failed upstream; die "upstream nginx: $READY_ERR"; fi
check_http "$UP" 200 "$EXPECTED_BODY" || die "upstream nginx: $CHECK_ERR"
log "upstream nginx on 127.0.0.1:${PORT[upstream]} (pid ${PID[upstream]}, CPU $LOAD_CPU)"

# ---------------------------------------------------------------- peers
for t in $WANT_TARGETS; do
  case $t in
  direct)
    add_target direct upstream "$UP"; STATUS[direct]=ok
    CMD[direct]="(no proxy: wrk straight at the upstream)" ;;
  nginx)
    add_target nginx nginx ""
    free_port nginx
    start_nginx nginx gw nginx-proxy.conf.in PORT="${PORT[nginx]}" UPPORT="${PORT[upstream]}"
    TURL[nginx]="http://127.0.0.1:${PORT[nginx]}/" ;;
  haproxy|haproxy-bp)
    add_target "$t" "$t" ""
    bp=""; [ "$t" = haproxy-bp ] && bp=busy-polling
    CMD[$t]="taskset -c $PROXY_CPU haproxy -db -f \$TMP/$t.cfg   # bench/peers/haproxy.cfg.in${bp:+, BUSY_POLLING=$bp}"
    if ! command -v "$HAPROXY" >/dev/null; then STATUS[$t]="haproxy not installed"; continue; fi
    free_port "$t"
    subst "$BENCH_DIR/peers/haproxy.cfg.in" "$WORK/$t.cfg" \
      PORT="${PORT[$t]}" UPPORT="${PORT[upstream]}" MAXCONN="$HAPROXY_MAXCONN" BUSY_POLLING="$bp"
    if ! "$HAPROXY" -c -q -f "$WORK/$t.cfg" >"$WORK/$t-check.out" 2>&1; then
      STATUS[$t]="config rejected by $HAPROXY -c"; tail_log "$WORK/$t-check.out"; continue
    fi
    start_bg "$t" gw "$HAPROXY" -db -f "$WORK/$t.cfg"
    TURL[$t]="http://127.0.0.1:${PORT[$t]}/" ;;
  moongate|moongate-bp)
    add_target "$t" "$t" ""
    bp=0; [ "$t" = moongate-bp ] && bp=$MG_BUSY_POLL
    CMD[$t]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/$t.lua   # bench/peers/moongate.lua.in, BUSY_POLL=$bp"
    if [ ! -x "$MOONGATE_BIN" ]; then STATUS[$t]="not built ($MOONGATE_BIN missing)"; continue; fi
    free_port "$t"
    subst "$BENCH_DIR/peers/moongate.lua.in" "$WORK/$t.lua" \
      PORT="${PORT[$t]}" UPPORT="${PORT[upstream]}" BUSY_POLL="$bp"
    start_bg "$t" gw "$MOONGATE_BIN" -c "$WORK/$t.lua"
    TURL[$t]="http://127.0.0.1:${PORT[$t]}/" ;;
  esac
done

# ---------------------------------------------------------------- readiness + checks
for t in $TARGETS; do
  p=${TPROC[$t]}
  [ -n "${STATUS[$t]:-}" ] && continue
  [ -n "${PID[$p]:-}" ] || { STATUS[$t]="not started"; continue; }
  if ! wait_http "$p" "${TURL[$t]}"; then STATUS[$t]="failed to start: $READY_ERR"; proc_failed "$p"; continue; fi
  if check_http "${TURL[$t]}" 200 "$EXPECTED_BODY"; then STATUS[$t]=ok
  else
    STATUS[$t]="wrong answer: $CHECK_ERR"; log "$t: ${STATUS[$t]}"
    tail_log "$WORK/$p.out"; tail_log "$WORK/$p-error.log"
  fi
done
for t in $TARGETS; do
  if [ "${STATUS[$t]}" = ok ]; then log "$t: ${TURL[$t]} (pid ${PID[${TPROC[$t]}]:-?})"; else log "$t: ${STATUS[$t]}"; fi
done

bench_run || log "nothing to measure: writing the report anyway"

# ---------------------------------------------------------------- report
report_facts
RUN_CMD=$(run_cmd run.sh)
[ "$WANT_TARGETS" != "$DEFAULT_TARGETS" ] && RUN_CMD="BENCH_TARGETS=\"$WANT_TARGETS\" $RUN_CMD"
[ "$MG_BUSY_POLL" != 0.0002 ] && RUN_CMD="BENCH_MG_BUSY_POLL=$MG_BUSY_POLL $RUN_CMD"
has_cpu() { [ -n "${US[$1,$2]:-}" ]; }

REPORT="$WORK/section.md"
{
  header_lines "Plain proxy: moongate vs nginx vs HAProxy"
  echo
  echo "\`GET /\` through each proxy to the same upstream (nginx \`return 200 \"hello world\\n\"\`),"
  echo "keep-alive on both sides. moongate: workers = 1, access_log = false, upstream keepalive 256;"
  echo "nginx: 1 worker, access_log off, keepalive 256; HAProxy: nbthread 1, http-reuse always,"
  echo "pool-max-conn 256, no log.$([[ " $WANT_TARGETS " == *" direct "* ]] && echo " \`direct\` is the upstream itself, without a proxy and without a cap.")"
  echo
  summary_table
  echo
  echo "### moongate against the better of nginx and HAProxy"
  echo
  echo "The better peer is the one with fewer CPU µs per request (more req/s without CPU accounting)."
  echo
  compare_header moongate peer "target ≥ 1.10×"
  res=()
  for c in $CONNS; do
    best=""
    for p in nginx haproxy; do
      [ -n "${RPS[$p,$c]:-}" ] && [ "${VALID[$p,$c]:-0}" = 1 ] || continue
      if [ -z "$best" ]; then best=$p
      elif has_cpu "$p" "$c" && has_cpu "$best" "$c"; then
        awk -v a="${US[$p,$c]}" -v b="${US[$best,$c]}" 'BEGIN{exit !(a < b)}' && best=$p
      elif awk -v a="${RPS[$p,$c]}" -v b="${RPS[$best,$c]}" 'BEGIN{exit !(a > b)}'; then best=$p
      fi
    done
    if [ -z "$best" ]; then
      printf '| moongate / best peer | %s | %s | – | – | – | %s | – | – | n/a (no valid nginx or HAProxy row) |\n' \
        "$c" "$(fmt1 "${US[moongate,$c]:-}")" "$(fmt0 "${RPS[moongate,$c]:-}")"
      res+=(n/a); continue
    fi
    compare_row "moongate / $best (≥ 1.10×)" moongate "$best" "$c" 1.10; res+=("$CMP_RESULT")
  done
  for c in $CONNS; do
    for p in nginx haproxy; do
      [[ " $WANT_TARGETS " == *" $p "* ]] && compare_row "moongate / $p" moongate "$p" "$c" ""
    done
  done
  if [[ " $WANT_TARGETS " == *" moongate-bp "* ]]; then
    echo
    echo "### With busy polling"
    echo
    echo "\`moongate-bp\` is moongate with \`busy_poll = $MG_BUSY_POLL\` (off by default): after an event"
    echo "the worker polls without sleeping for that long while at most 4 requests are in flight."
    echo "Under a CPU cap the polling spends the quota; it is for latency at low concurrency."
    echo
    compare_header moongate-bp moongate "ratio"
    for c in $CONNS; do compare_row "moongate-bp / moongate" moongate-bp moongate "$c" ""; done
  fi
  echo
  echo "### Targets"
  echo
  echo "- moongate ≥ 1.10× the better of nginx and HAProxy (CPU per request, bracketed) at c ∈ {$CONNS}: **$(all_of "${res[@]:-n/a}")**"
  if [ -n "${RPS[moongate,$MAX_CONN]:-}" ]; then
    se=${SERR[moongate,$MAX_CONN]}; ns=${NON2XX[moongate,$MAX_CONN]}
    echo "- zero errors at c=$MAX_CONN: **$([ "$se" -eq 0 ] && [ "$ns" -eq 0 ] && echo PASS || echo FAIL)** ($se socket errors, $ns non-2xx/3xx responses)"
    read -r _ _ _ _ _ _ _ _ _ _ _ mr _ <<<"${STATS[moongate,$MAX_CONN]}"
    nr=""; [ -n "${STATS[nginx,$MAX_CONN]:-}" ] && read -r _ _ _ _ _ _ _ _ _ _ _ nr _ <<<"${STATS[nginx,$MAX_CONN]}"
    if [ -n "$mr" ] && [ "$mr" != - ] && [ -n "$nr" ] && [ "$nr" != - ]; then
      echo "- peak RSS at c=$MAX_CONN ≤ nginx's: **$([ "$mr" -le "$nr" ] && echo PASS || echo FAIL)** (moongate $mr KiB, nginx worker $nr KiB)"
    else
      echo "- peak RSS at c=$MAX_CONN ≤ nginx's: n/a (no nginx or moongate sample)"
    fi
  else
    echo "- zero errors / peak RSS at c=$MAX_CONN: n/a (moongate: ${STATUS[moongate]:-not in BENCH_TARGETS})"
  fi
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
  for t in $TARGETS; do
    p=${TPROC[$t]}
    [ "$t" != direct ] && [ -n "${CMD[$p]:-}" ] && echo "${CMD[$p]}"
  done
  wrk_cmd "http://127.0.0.1:\$PORT/"
  echo '```'
  echo
  echo "Versions: $(ver "$NGINX" -v); $(ver "$HAPROXY" -v | sed 's/ - https.*//'); $(ver "$WRK" -v | sed 's/ Copyright.*//'); moongate: $MG_VER; kernel $(uname -r)."
  echo
  per_round_table
} >"$REPORT"

echo
cat "$REPORT"
write_results "$REPORT" "$RUN_CMD"
exit 0
