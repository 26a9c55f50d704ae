#!/usr/bin/env bash
# bench/redis.sh: one Redis GET per request (issue 4).
#
# wrk (1 thread, 50 connections) against, in one run, alternating:
#   moongate   handler `local v = gw.redis():call("GET", "k") return 200, v`,
#              redis pool = 16, workers = 1, access_log = false
#              (bench/peers/moongate-redis.lua.in)
#   nginx-lua  nginx + lua-nginx-module (Debian libnginx-mod-http-lua), 1 worker,
#              a RESP GET over ngx.socket.tcp with set_keepalive in
#              content_by_lua_block (bench/peers/nginx-redis.conf.in)
# Both ask the same redis-server (started here: --save '' --appendonly no,
# pinned to the load CPU with wrk). Gateways CPU-capped, moongate bracketing
# nginx-lua (bench/lib.sh's method). Target printed: moongate >= 1.0x
# nginx-lua (CPU per request).
# If the moongate binary has no gw.redis yet, moongate is reported as "not
# available" and nginx-lua is still measured.
# Rewrites <!-- redis:begin --> .. <!-- redis:end --> in bench/RESULTS.md.
#
# Environment: as bench/run.sh (see bench/lib.sh); BENCH_CONNS defaults to "50";
# BENCH_NGX_REDIS_POOL [1024] nginx's set_keepalive pool size.
# Smoke run: BENCH_DURATION=2 BENCH_ROUNDS=1 bash bench/redis.sh
# Exits non-zero only if it cannot run (no wrk, no redis-server).

set -uo pipefail
BENCH_NAME=redis
LOAD_DESC="redis-server"
DEFAULT_CONNS="50"
PIVOTS="moongate"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RPOOL=${BENCH_NGX_REDIS_POOL:-1024}
[[ $RPOOL =~ ^[0-9]+$ ]] && [ "$RPOOL" -ge 1 ] || die "BENCH_NGX_REDIS_POOL must be a positive number"
bench_init

VALUE="hello world"
start_redis
redis_cmd set k "$VALUE" >/dev/null
[ "$(redis_cmd get k)" = "$VALUE" ] || die "redis-server: SET k did not stick"

# ---------------------------------------------------------------- nginx + lua
add_target moongate moongate ""
add_target nginx-lua nginx ""
NDK_SO=$(nginx_module libnginx-mod-http-ndk ndk_http_module.so)
LUA_SO=$(nginx_module libnginx-mod-http-lua ngx_http_lua_module.so)
if ! command -v "$NGINX" >/dev/null; then
  STATUS[nginx-lua]="nginx not installed"
elif [ -z "$LUA_SO" ] || [ -z "$NDK_SO" ]; then
  STATUS[nginx-lua]="lua-nginx-module not installed (apt-get install libnginx-mod-http-lua)"
else
  free_port nginx
  start_nginx nginx gw nginx-redis.conf.in PORT="${PORT[nginx]}" RPORT="${PORT[redis]}" \
    RPOOL="$RPOOL" NDK_MODULE="$NDK_SO" LUA_MODULE="$LUA_SO"
  TURL[nginx-lua]="http://127.0.0.1:${PORT[nginx]}/"
fi

# ---------------------------------------------------------------- moongate
CMD[moongate]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/moongate.lua   # bench/peers/moongate-redis.lua.in"
if ! mg_probe; then
  STATUS[moongate]=$MG_PROBE_ERR
elif ! mg_has redis; then
  STATUS[moongate]="not available: this moongate binary has no gw.redis"
else
  free_port moongate
  subst "$BENCH_DIR/peers/moongate-redis.lua.in" "$WORK/moongate.lua" \
    PORT="${PORT[moongate]}" RPORT="${PORT[redis]}"
  start_bg moongate gw "$MOONGATE_BIN" -c "$WORK/moongate.lua"
  TURL[moongate]="http://127.0.0.1:${PORT[moongate]}/"
fi

# ---------------------------------------------------------------- readiness + checks
for t in nginx-lua moongate; do
  p=${TPROC[$t]}
  [ -n "${STATUS[$t]:-}" ] && continue
  if ! wait_http "$p" "${TURL[$t]}"; then
    STATUS[$t]="failed to start: $READY_ERR"; proc_failed "$p"; continue
  fi
  # the answer is the value of k, read from Redis on each request
  if check_http "${TURL[$t]}" 200 "$VALUE"; then STATUS[$t]=ok
  else STATUS[$t]="wrong answer: $CHECK_ERR"; log "$t: ${STATUS[$t]}"; tail_log "$WORK/$p.out"; tail_log "$WORK/$p-error.log"; fi
done
for t in $TARGETS; do
  if [ "${STATUS[$t]}" = ok ]; then log "$t: ${TURL[$t]} (CPU $PROXY_CPU)"; else log "$t: ${STATUS[$t]}"; fi
done

bench_run || log "nothing to measure: writing the report anyway"
REDIS_CLIENTS=$(redis_cmd info clients 2>/dev/null | tr -d '\r' | sed -n 's/^connected_clients://p')

# ---------------------------------------------------------------- report
report_facts
RUN_CMD=$(run_cmd redis.sh)
[ "$RPOOL" != 1024 ] && RUN_CMD="BENCH_NGX_REDIS_POOL=$RPOOL $RUN_CMD"
REPORT="$WORK/section.md"
{
  header_lines "One Redis GET per request: moongate vs nginx + lua-nginx-module"
  echo
  echo "Each request reads key \`k\` (\"$VALUE\") from one redis-server and answers it."
  echo "moongate: \`handler = function(req) local v = gw.redis():call(\"GET\", \"k\") return 200, v end\`,"
  echo "\`redis = { default = { pool = 16 } }\`, workers = 1, access_log = false."
  echo "nginx-lua: 1 worker, a RESP GET over \`ngx.socket.tcp\` in \`content_by_lua_block\`, the"
  echo "connection returned with \`setkeepalive(60000, $RPOOL)\`. redis-server runs on the load CPU"
  echo "with wrk (\`--save '' --appendonly no\`)."
  echo
  summary_table
  echo
  echo "### moongate against nginx-lua"
  echo
  compare_header moongate nginx-lua "target ≥ 1.00×"
  res=()
  for c in $CONNS; do compare_row "moongate / nginx-lua" moongate nginx-lua "$c" 1.00; res+=("$CMP_RESULT"); done
  echo
  echo "### Targets"
  echo
  if [ "${STATUS[moongate]}" != ok ] && [ -z "${RPS[moongate,$MAX_CONN]:-}" ]; then
    echo "- moongate ≥ 1.0× nginx-lua: n/a (moongate ${STATUS[moongate]})"
  else
    echo "- moongate ≥ 1.0× nginx-lua at every concurrency: **$(all_of "${res[@]}")**"
  fi
  for t in $TARGETS; do
    [ "${STATUS[$t]:-}" != ok ] && echo "- $t: ${STATUS[$t]:-not run}"
  done
  echo "- Redis clients connected after the run (both peers' pools): ${REDIS_CLIENTS:-?}"
  echo
  echo "### Commands"
  echo
  echo '```sh'
  echo "# $RUN_CMD"
  echo "ulimit -n $NOFILE; TMP=\$(mktemp -d)    # every process runs from its own copy of the template, ports substituted"
  echo "# each gateway: $(cap_note); its processes start inside it"
  echo "${CMD[redis]}"
  echo "redis-cli -p \$RPORT set k '$VALUE'"
  [ -n "${CMD[nginx]:-}" ] && echo "${CMD[nginx]}"
  echo "${CMD[moongate]}"
  wrk_cmd "http://127.0.0.1:\$PORT/"
  echo '```'
  echo
  echo "Versions: $(ver "$NGINX" -v); lua-nginx-module $(dpkg-query -W -f '${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?'); $(ver redis-server --version | cut -d' ' -f1-3); $(ver "$WRK" -v | sed 's/ Copyright.*//'); moongate: $MG_VER; kernel $(uname -r)."
  echo
  per_round_table
} >"$REPORT"

echo
cat "$REPORT"
write_results "$REPORT" "$RUN_CMD"
exit 0
