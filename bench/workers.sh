#!/usr/bin/env bash
# bench/workers.sh: moongate with workers = 2 against nginx with 2 workers
# on this 2-core machine (issue 6). Nothing is pinned: the proxies' workers,
# the upstream (nginx, 1 worker) and wrk share both CPUs, as they would in
# production on a small box. Same run, alternating, repeated.
# Rewrites <!-- workers:begin --> .. <!-- workers:end --> in bench/RESULTS.md.
# Smoke run: BENCH_DURATION=2 BENCH_ROUNDS=1 bash bench/workers.sh
set -uo pipefail
BENCH_NAME=workers
LOAD_DESC="the upstream"
DEFAULT_CONNS="50 1000"
DEFAULT_CPU_LIMIT=0   # two workers on two CPUs: uncapped, cgroups for CPU per request only
PIVOTS="mg2"
export BENCH_PROXY_CPU=${BENCH_PROXY_CPU:-0,1}
export BENCH_LOAD_CPU=${BENCH_LOAD_CPU:-0,1}
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_init

command -v "$NGINX" >/dev/null || die "nginx not found (make deps-bench)"

free_port upstream
start_nginx upstream "$LOAD_CPU" upstream-echo-nginx.conf.in PORT="${PORT[upstream]}"
UP="http://127.0.0.1:${PORT[upstream]}"
if ! wait_http upstream "$UP/"; then proc_failed upstream; die "upstream nginx: $READY_ERR"; fi
check_http "$UP/" 200 "hello world" || die "upstream nginx: $CHECK_ERR"

free_port nginx
start_nginx nginx gw nginx-proxy2.conf.in PORT="${PORT[nginx]}" UPPORT="${PORT[upstream]}"
add_target nginx2 nginx "http://127.0.0.1:${PORT[nginx]}/"

add_target mg2 moongate "http://127.0.0.1:0/"
CMD[moongate]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/moongate.lua   # bench/peers/moongate2.lua.in"
if [ -x "$MOONGATE_BIN" ]; then
  free_port moongate
  subst "$BENCH_DIR/peers/moongate2.lua.in" "$WORK/moongate.lua" \
    PORT="${PORT[moongate]}" UPPORT="${PORT[upstream]}"
  start_bg moongate gw "$MOONGATE_BIN" -c "$WORK/moongate.lua"
  TURL[mg2]="http://127.0.0.1:${PORT[moongate]}/"
else
  STATUS[mg2]="not built ($MOONGATE_BIN missing)"
fi

if wait_http nginx "${TURL[nginx2]}" && check_http "${TURL[nginx2]}" 200 "hello world"; then
  STATUS[nginx2]=ok
else
  STATUS[nginx2]="failed: ${READY_ERR:-}${CHECK_ERR:-}"; proc_failed nginx
fi
if [ -n "${PID[moongate]:-}" ]; then
  if wait_http moongate "${TURL[mg2]}" && check_http "${TURL[mg2]}" 200 "hello world"; then
    STATUS[mg2]=ok
  else
    STATUS[mg2]="failed: ${READY_ERR:-}${CHECK_ERR:-}"; proc_failed moongate
  fi
fi

bench_run || die "nothing to measure"

report_facts
RUN_CMD=$(run_cmd workers.sh)
REPORT="$WORK/section.md"
{
  header_lines "Two workers: moongate workers = 2 vs nginx worker_processes 2 (2-core machine)"
  echo
  echo "Nothing pinned: both proxies' workers, the upstream and wrk share the two CPUs."
  echo
  summary_table
  echo
  echo "### moongate against nginx"
  echo
  compare_header mg2 nginx2 "ratio"
  for c in $CONNS; do compare_row "mg2 / nginx2" mg2 nginx2 "$c" ""; done
  echo
  echo "### Commands"
  echo
  echo '```sh'
  echo "# $RUN_CMD"
  echo "${CMD[upstream]}"
  echo "${CMD[nginx]}"
  echo "${CMD[moongate]}"
  wrk_cmd "http://127.0.0.1:\$PORT/"
  echo '```'
  echo
  per_round_table
} >"$REPORT"
echo
cat "$REPORT"
write_results "$REPORT" "$RUN_CMD"
exit 0
