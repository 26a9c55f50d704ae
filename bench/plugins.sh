#!/usr/bin/env bash
# bench/plugins.sh: what one Lua plugin costs a moongate route (issue 3).
#
# wrk (1 thread, 50 connections) against, in one run, alternating:
#   mg-plain  moongate route with no plugin             GET /
#   mg-noop   moongate route with a no-op access plugin GET /noop
#   mg-hdr    moongate route with a plugin that sets a request header  GET /hdr
#   nginx     nginx proxy_pass (bench/peers/nginx-proxy.conf.in, as run.sh)  GET /
# moongate: workers = 1, access_log = false, keepalive 256, the three routes in
# one process (bench/peers/moongate-plugins.lua.in, plugins in bench/plugins/).
# All proxy to the same upstream (nginx, `return 200 "hello world\n"`).
# Gateways CPU-capped, moongate bracketing nginx (bench/lib.sh's method).
# Target printed: each one-plugin route keeps >= 0.90x the plain route's
# efficiency (plain's CPU µs per request / the route's).
# Rewrites <!-- plugins:begin --> .. <!-- plugins:end --> in bench/RESULTS.md.
#
# Environment: as bench/run.sh (see bench/lib.sh); BENCH_CONNS defaults to "50".
# Smoke run: BENCH_DURATION=2 BENCH_ROUNDS=1 bash bench/plugins.sh
# Exits non-zero only if it cannot run (no wrk, no upstream).

set -uo pipefail
BENCH_NAME=plugins
LOAD_DESC="the upstream"
DEFAULT_CONNS="50"
PIVOTS="mg-plain mg-noop mg-hdr"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

command -v "$NGINX" >/dev/null || die "nginx not found: it is the upstream (make deps-bench)"

# ---------------------------------------------------------------- upstream
free_port upstream
start_nginx upstream "$LOAD_CPU" upstream-echo-nginx.conf.in PORT="${PORT[upstream]}"
UP="http://127.0.0.1:${PORT[upstream]}"
if ! wait_http upstream "$UP/"; then proc_failed upstream; die "upstream nginx: $READY_ERR"; fi
check_http "$UP/" 200 "hello world" || die "upstream nginx: $CHECK_ERR"
log "upstream nginx on 127.0.0.1:${PORT[upstream]} (pid ${PID[upstream]}, CPU $LOAD_CPU)"

# ---------------------------------------------------------------- nginx
free_port nginx
start_nginx nginx gw nginx-proxy.conf.in PORT="${PORT[nginx]}" UPPORT="${PORT[upstream]}"
add_target nginx nginx "http://127.0.0.1:${PORT[nginx]}/"

# ---------------------------------------------------------------- moongate
add_target mg-plain moongate "http://127.0.0.1:0/"
add_target mg-noop moongate "http://127.0.0.1:0/noop"
add_target mg-hdr moongate "http://127.0.0.1:0/hdr"
CMD[moongate]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/moongate.lua   # bench/peers/moongate-plugins.lua.in, plugin_path = bench/plugins"
if [ -x "$MOONGATE_BIN" ]; then
  free_port moongate
  subst "$BENCH_DIR/peers/moongate-plugins.lua.in" "$WORK/moongate.lua" \
    PORT="${PORT[moongate]}" UPPORT="${PORT[upstream]}" PLUGINS="$BENCH_DIR/plugins"
  start_bg moongate gw "$MOONGATE_BIN" -c "$WORK/moongate.lua"
  MG="http://127.0.0.1:${PORT[moongate]}"
  TURL[mg-plain]="$MG/"; TURL[mg-noop]="$MG/noop"; TURL[mg-hdr]="$MG/hdr"
else
  for t in mg-plain mg-noop mg-hdr; do STATUS[$t]="not built ($MOONGATE_BIN missing)"; done
fi

# ---------------------------------------------------------------- readiness + checks
if wait_http nginx "http://127.0.0.1:${PORT[nginx]}/"; then
  if check_http "${TURL[nginx]}" 200 "hello world"; then STATUS[nginx]=ok
  else STATUS[nginx]="wrong answer: $CHECK_ERR"; fi
else
  STATUS[nginx]="failed to start: $READY_ERR"; proc_failed nginx
fi
if [ -n "${PID[moongate]:-}" ]; then
  if wait_http moongate "$MG/"; then
    # each route answers like the upstream; only /hdr adds X-Bench
    check_http "$MG/" 200 "hello world" && check_http "$MG/echo" 200 "x-bench=[]" &&
      STATUS[mg-plain]=ok || STATUS[mg-plain]="wrong answer: $CHECK_ERR"
    check_http "$MG/noop" 200 "hello world" && check_http "$MG/noop/echo" 200 "x-bench=[]" &&
      STATUS[mg-noop]=ok || STATUS[mg-noop]="wrong answer: $CHECK_ERR"
    check_http "$MG/hdr" 200 "hello world" && check_http "$MG/hdr/echo" 200 "x-bench=[1]" &&
      STATUS[mg-hdr]=ok || STATUS[mg-hdr]="wrong answer: $CHECK_ERR"
  else
    for t in mg-plain mg-noop mg-hdr; do STATUS[$t]="failed to start: $READY_ERR"; done
    proc_failed moongate
  fi
fi
for t in $TARGETS; do
  if [ "${STATUS[$t]}" = ok ]; then log "$t: ${TURL[$t]} (CPU $PROXY_CPU)"; else log "$t: ${STATUS[$t]}"; fi
done

bench_run || die "nothing to measure"

# ---------------------------------------------------------------- report
report_facts
RUN_CMD=$(run_cmd plugins.sh)
REPORT="$WORK/section.md"
{
  header_lines "Plugin overhead: moongate routes with no plugin and with one plugin, vs nginx"
  echo
  echo "\`mg-plain\`: a plain proxy route (\`GET /\`); \`mg-noop\`: a route with one plugin whose"
  echo "access phase does nothing (\`GET /noop\`); \`mg-hdr\`: one plugin that sets a request"
  echo "header (\`GET /hdr\`, the upstream sees \`X-Bench: 1\`). One moongate process"
  echo "(workers = 1, access_log = false) serves the three routes; \`nginx\` is run.sh's"
  echo "nginx proxy_pass peer. Same upstream for all."
  echo
  summary_table
  echo
  echo "### One plugin against the plain route"
  echo
  compare_header route baseline "target ≥ 0.90×"
  res_noop=() res_hdr=()
  for c in $CONNS; do
    compare_row "mg-noop / mg-plain" mg-noop mg-plain "$c" 0.90; res_noop+=("$CMP_RESULT")
    compare_row "mg-hdr / mg-plain" mg-hdr mg-plain "$c" 0.90; res_hdr+=("$CMP_RESULT")
  done
  for c in $CONNS; do
    for t in mg-plain mg-noop mg-hdr; do compare_row "$t / nginx" "$t" nginx "$c" ""; done
  done
  echo
  echo "### Targets"
  echo
  echo "- a route with a no-op plugin keeps ≥ 0.90× the plain proxy route's CPU efficiency: **$(all_of "${res_noop[@]}")**"
  echo "- a route with a header-setting plugin keeps ≥ 0.90× the plain proxy route's CPU efficiency: **$(all_of "${res_hdr[@]}")**"
  for t in $TARGETS; do
    [ "${STATUS[$t]:-}" != ok ] && echo "- $t: ${STATUS[$t]:-not run}"
  done
  echo
  echo "A ratio inside the min–max spread of the two rows it divides is noise."
  echo
  echo "### Commands"
  echo
  echo '```sh'
  echo "# $RUN_CMD"
  echo "ulimit -n $NOFILE; TMP=\$(mktemp -d)    # every process runs from its own copy of the template, ports substituted"
  echo "# each gateway: $(cap_note); its processes start inside it"
  echo "${CMD[upstream]}"
  echo "${CMD[nginx]}"
  echo "${CMD[moongate]}"
  wrk_cmd "http://127.0.0.1:\$PORT/{,noop,hdr}"
  echo '```'
  echo
  echo "Versions: $(ver "$NGINX" -v); $(ver "$WRK" -v | sed 's/ Copyright.*//'); moongate: $MG_VER; kernel $(uname -r)."
  echo
  per_round_table
} >"$REPORT"

echo
cat "$REPORT"
write_results "$REPORT" "$RUN_CMD"
exit 0
