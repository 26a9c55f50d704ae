#!/usr/bin/env bash
# bench/auth.sh: authenticating proxies (issue 5).
#
# (a) auth proxy, the hyper-auth-proxy scenario: an HS512 JWT in the
#     `Authorization` cookie (base64 of the JWT) names a session; Redis GET
#     sid -> {"credentials":"user:pass"} -> `Authorization: Basic ...` -> proxy.
#       mg-jwt         moongate, bundled redis_credentials plugin (GET /jwt/),
#                      defaults: verified tokens cached (cache_ttl 300 s)
#       mg-jwt-nc      the same with cache_ttl = 0: every token verified, as
#                      the nginx peer does
#       nginx-lua-jwt  nginx + lua-nginx-module, the same logic in LuaJIT
#                      (peers/nginx-jwt-redis.{conf,lua}.in)
# (b) ForwardAuth: every request first asks an auth server (a second nginx:
#     200 + `X-User: alice`), X-User is copied into the proxied request.
#       mg-fa          moongate, bundled forward_auth plugin (GET /fa/)
#       nginx-fa       nginx auth_request + auth_request_set/proxy_set_header
#       caddy-fa       Caddy forward_auth (Debian caddy package)
#     On request (BENCH_TARGETS), for the c=1 latency (BENCH_CONNS="1 50 1000",
#     best uncapped: BENCH_CPU_LIMIT=0):
#       direct         the upstream itself, the latency baseline (not capped)
#       mg-jwt-bp, mg-fa-bp  mg-jwt and mg-fa with busy_poll (BENCH_MG_BUSY_POLL)
# The method is bench/lib.sh's: each gateway in its own cgroup capped at
# BENCH_CPU_LIMIT (0.3) of CPU 0; wrk, the upstream, redis-server and the
# auth server on CPU 1, uncapped; per concurrency the moongate targets run
# before the first and after every round of peers (A B A B A B A); req/s and
# CPU µs per request for every target; a row with a socket error or a
# non-2xx/3xx answer is INVALID. Every target is first checked for the right
# behaviour (the upstream sees the Basic header or X-User; a bad token gets
# 401); one that fails is reported, not measured.
# Targets printed (CPU per request, bracketed medians): auth proxy >= 1.3x
# nginx-lua, cache on and off; ForwardAuth >= 1.2x nginx auth_request and
# >= 3x Caddy (every concurrency but 1); with c=1 and direct: added p50 over
# direct <= 60 us. A moongate binary without gw.redis / gw.http marks the
# matching targets "not available".
# Rewrites <!-- auth:begin --> .. <!-- auth:end --> in bench/RESULTS.md.
#
# Environment: bench/lib.sh's; BENCH_CONNS defaults to "50 1000";
# BENCH_TARGETS ["mg-jwt mg-jwt-nc nginx-lua-jwt mg-fa nginx-fa caddy-fa"]
# any of the targets above; BENCH_NGX_REDIS_POOL [1024]; CADDY [caddy];
# BENCH_MG_BUSY_POLL [0.0002] busy_poll of the -bp targets.
# Smoke run: BENCH_DURATION=2 BENCH_ROUNDS=1 BENCH_RESULTS= bash bench/auth.sh
# Exits non-zero only if it cannot run (no wrk, cgroups, upstream, Redis or
# auth server).

set -uo pipefail
BENCH_NAME=auth
LOAD_DESC="the upstream, redis-server and the auth server"
DEFAULT_CONNS="50 1000"
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ALL_TARGETS="direct mg-jwt mg-jwt-nc nginx-lua-jwt mg-fa nginx-fa caddy-fa mg-jwt-bp mg-fa-bp"
DEFAULT_TARGETS="mg-jwt mg-jwt-nc nginx-lua-jwt mg-fa nginx-fa caddy-fa"
PIVOTS="mg-jwt mg-jwt-nc mg-fa mg-jwt-bp mg-fa-bp"
BUSY_POLL=${BENCH_MG_BUSY_POLL:-0.0002}
WANT_TARGETS=${BENCH_TARGETS:-$DEFAULT_TARGETS}
RPOOL=${BENCH_NGX_REDIS_POOL:-1024}
CADDY=${CADDY:-caddy}
[[ $RPOOL =~ ^[0-9]+$ ]] && [ "$RPOOL" -ge 1 ] || die "BENCH_NGX_REDIS_POOL must be a positive number"
for t in $WANT_TARGETS; do [[ " $ALL_TARGETS " == *" $t "* ]] || die "BENCH_TARGETS: unknown target '$t' (known: $ALL_TARGETS)"; done
wanted() { [[ " $WANT_TARGETS " == *" $1 "* ]]; }
bench_init
command -v "$NGINX" >/dev/null || die "nginx not found: it is the upstream and the auth server (make deps-bench)"
command -v openssl >/dev/null || die "openssl not found (it makes the test JWTs)"

# ---------------------------------------------------------------- test data
SECRET="bench-secret-$RANDOM$RANDOM"
SID="bench-session-1"
CREDS="user:pass"
BASIC="Basic $(printf %s "$CREDS" | openssl base64 -A)"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
jwt() {  # secret sid -> an HS512 JWT valid for a day
  local h p s
  h=$(printf %s '{"alg":"HS512","typ":"JWT"}' | b64url)
  p=$(printf '{"sid":"%s","exp":%d}' "$2" $(( $(date +%s) + 86400 )) | b64url)
  s=$(printf %s "$h.$p" | openssl dgst -sha512 -hmac "$1" -binary | b64url)
  printf %s "$h.$p.$s"
}
cookie() { printf 'Cookie: Authorization=%s' "$(printf %s "$1" | openssl base64 -A)"; }
GOOD_COOKIE=$(cookie "$(jwt "$SECRET" "$SID")")
FORGED_COOKIE=$(cookie "$(jwt "wrong-$SECRET" "$SID")")
UNKNOWN_COOKIE=$(cookie "$(jwt "$SECRET" "no-such-session")")

# ---------------------------------------------------------------- load side
free_port upstream
start_nginx upstream "$LOAD_CPU" upstream-echo-nginx.conf.in PORT="${PORT[upstream]}"
UP="http://127.0.0.1:${PORT[upstream]}"
if ! wait_http upstream "$UP/"; then proc_failed upstream; die "upstream nginx: $READY_ERR"; fi
check_http "$UP/" 200 "hello world" || die "upstream nginx: $CHECK_ERR"
log "upstream nginx on 127.0.0.1:${PORT[upstream]} (pid ${PID[upstream]}, CPU $LOAD_CPU)"

start_redis
redis_cmd set "$SID" "{\"credentials\":\"$CREDS\"}" >/dev/null
[ "$(redis_cmd get "$SID")" = "{\"credentials\":\"$CREDS\"}" ] || die "redis-server: SET did not stick"

free_port authserver
start_nginx authserver "$LOAD_CPU" authserver-nginx.conf.in PORT="${PORT[authserver]}"
AUTH="http://127.0.0.1:${PORT[authserver]}"
if ! wait_http authserver "$AUTH/auth"; then proc_failed authserver; die "auth server: $READY_ERR"; fi
check_http "$AUTH/auth" 200 "" || die "auth server: $CHECK_ERR"
curl -s -D - -o /dev/null "$AUTH/auth" | tr -d '\r' | grep -qi '^X-User: alice$' || die "auth server: no X-User: alice"
log "auth server nginx on 127.0.0.1:${PORT[authserver]} (pid ${PID[authserver]}, CPU $LOAD_CPU)"

# ---------------------------------------------------------------- targets
for t in $WANT_TARGETS; do
  case $t in
  direct) add_target direct upstream "$UP/" ;;
  mg-jwt) add_target mg-jwt moongate-jwt "" "$GOOD_COOKIE" ;;
  mg-jwt-nc) add_target mg-jwt-nc moongate-jwt-nc "" "$GOOD_COOKIE" ;;
  nginx-lua-jwt) add_target nginx-lua-jwt nginx-lua "" "$GOOD_COOKIE" ;;
  mg-fa) add_target mg-fa moongate-fa "" ;;
  mg-jwt-bp) add_target mg-jwt-bp moongate-jwt-bp "" "$GOOD_COOKIE" ;;
  mg-fa-bp) add_target mg-fa-bp moongate-fa-bp "" ;;
  nginx-fa) add_target nginx-fa nginx-fa "" ;;
  caddy-fa) add_target caddy-fa caddy "" ;;
  esac
done

# moongate: one process per scenario (a crash in one does not hide the other);
# the -bp targets are the same with busy_poll = $BUSY_POLL (doc/config.md)
if wanted mg-jwt || wanted mg-jwt-nc || wanted mg-fa || wanted mg-jwt-bp || wanted mg-fa-bp; then
  if mg_probe; then
    for t in mg-jwt mg-jwt-nc mg-jwt-bp; do
      wanted $t && ! mg_has redis && STATUS[$t]="not available: this moongate binary has no gw.redis"
    done
    for t in mg-fa mg-fa-bp; do
      wanted $t && ! mg_has http && STATUS[$t]="not available: this moongate binary has no gw.http"
    done
  else
    for t in mg-jwt mg-jwt-nc mg-fa mg-jwt-bp mg-fa-bp; do STATUS[$t]=$MG_PROBE_ERR; done
  fi
fi
for v in jwt jwt-nc fa jwt-bp fa-bp; do
  t=mg-$v p=moongate-$v r=${v%-*} bp=0 ttl=300
  [ "$v" = "${r}-bp" ] && bp=$BUSY_POLL
  [ "$v" = jwt-nc ] && ttl=0
  wanted "$t" || continue
  CMD[$p]="taskset -c $PROXY_CPU \$MOONGATE_BIN -c \$TMP/$p.lua   # bench/peers/moongate-auth.lua.in, ONLY=$r BUSY_POLL=$bp CACHE_TTL=$ttl"
  [ -z "${STATUS[$t]:-}" ] || continue
  free_port "$p"
  subst "$BENCH_DIR/peers/moongate-auth.lua.in" "$WORK/$p.lua" PORT="${PORT[$p]}" ONLY="$r" \
    UPPORT="${PORT[upstream]}" RPORT="${PORT[redis]}" AUTHPORT="${PORT[authserver]}" SECRET="$SECRET" \
    BUSY_POLL="$bp" CACHE_TTL="$ttl"
  start_bg "$p" gw "$MOONGATE_BIN" -c "$WORK/$p.lua"
  TURL[$t]="http://127.0.0.1:${PORT[$p]}/$r/"
done

# nginx + lua: the auth proxy
if wanted nginx-lua-jwt; then
  NDK_SO=$(nginx_module libnginx-mod-http-ndk ndk_http_module.so)
  LUA_SO=$(nginx_module libnginx-mod-http-lua ngx_http_lua_module.so)
  if [ -z "$LUA_SO" ] || [ -z "$NDK_SO" ]; then
    STATUS[nginx-lua-jwt]="lua-nginx-module not installed (apt-get install libnginx-mod-http-lua)"
  else
    free_port nginx-lua
    subst "$BENCH_DIR/peers/nginx-jwt-redis.lua.in" "$WORK/bench_auth.lua" \
      SECRET="$SECRET" RPORT="${PORT[redis]}" RPOOL="$RPOOL"
    start_nginx nginx-lua gw nginx-jwt-redis.conf.in PORT="${PORT[nginx-lua]}" \
      UPPORT="${PORT[upstream]}" NDK_MODULE="$NDK_SO" LUA_MODULE="$LUA_SO"
    CMD[nginx-lua]="${CMD[nginx-lua]} + \$TMP/bench_auth.lua from bench/peers/nginx-jwt-redis.lua.in"
    TURL[nginx-lua-jwt]="http://127.0.0.1:${PORT[nginx-lua]}/jwt/"
  fi
fi

# nginx auth_request
if wanted nginx-fa; then
  free_port nginx-fa
  start_nginx nginx-fa gw nginx-forward-auth.conf.in PORT="${PORT[nginx-fa]}" \
    UPPORT="${PORT[upstream]}" AUTHPORT="${PORT[authserver]}"
  TURL[nginx-fa]="http://127.0.0.1:${PORT[nginx-fa]}/fa/"
fi

# Caddy forward_auth
CMD[caddy]="GOMAXPROCS=1 HOME=\$TMP taskset -c $PROXY_CPU caddy run --adapter caddyfile --config \$TMP/Caddyfile   # bench/peers/Caddyfile.in"
if wanted caddy-fa; then
  if ! command -v "$CADDY" >/dev/null; then
    STATUS[caddy-fa]="caddy not installed (apt-get install caddy)"
  else
    free_port caddy
    mkdir -p "$WORK/caddy-home" "$WORK/caddy-data"
    subst "$BENCH_DIR/peers/Caddyfile.in" "$WORK/Caddyfile" PREFIX="$WORK" PORT="${PORT[caddy]}" \
      UPPORT="${PORT[upstream]}" AUTHPORT="${PORT[authserver]}"
    start_bg caddy gw env GOMAXPROCS=1 HOME="$WORK/caddy-home" \
      XDG_DATA_HOME="$WORK/caddy-data" XDG_CONFIG_HOME="$WORK/caddy-home" \
      "$CADDY" run --adapter caddyfile --config "$WORK/Caddyfile"
    TURL[caddy-fa]="http://127.0.0.1:${PORT[caddy]}/fa/"
  fi
fi

# ---------------------------------------------------------------- readiness + checks
check_jwt() {  # base URL of an auth proxy route: it must do what redis_credentials does
  check_http "$1" 200 "hello world" -H "$GOOD_COOKIE" &&
  check_http "${1}echo" 200 "authorization=[$BASIC]" -H "$GOOD_COOKIE; theme=dark" &&
  check_http "${1}echo" 200 "cookie=[theme=dark]" -H "$GOOD_COOKIE; theme=dark" &&
  check_http "$1" 401 "" &&
  check_http "$1" 401 "" -H "$FORGED_COOKIE" &&
  check_http "$1" 401 "" -H "$UNKNOWN_COOKIE"
}
check_fa() {  # base URL of a ForwardAuth route: the upstream gets the auth server's X-User
  check_http "$1" 200 "hello world" &&
  check_http "${1}echo" 200 "x-user=[alice]" -H "X-User: mallory"
}
check_target() {
  case $1 in
  direct) check_http "${TURL[$1]}" 200 "hello world" ;;
  *-jwt|*-jwt-nc|*-jwt-bp) check_jwt "${TURL[$1]}" ;;
  *-fa|*-fa-bp) check_fa "${TURL[$1]}" ;;
  esac
}
declare -A READY=()
for t in $TARGETS; do
  p=${TPROC[$t]}
  [ -n "${STATUS[$t]:-}" ] && continue
  [ -n "${PID[$p]:-}" ] || { STATUS[$t]="${STATUS[$t]:-not started}"; continue; }
  if [ -z "${READY[$p]:-}" ]; then
    if wait_http "$p" "${TURL[$t]}"; then READY[$p]=ok
    else READY[$p]="failed to start: $READY_ERR"; proc_failed "$p"; fi
  fi
  if [ "${READY[$p]}" != ok ]; then STATUS[$t]=${READY[$p]}; continue; fi
  if check_target "$t"; then STATUS[$t]=ok
  else
    STATUS[$t]="wrong answer: $CHECK_ERR"
    tail_log "$WORK/$p.out"; tail_log "$WORK/$p-error.log"
  fi
done
for t in $TARGETS; do
  if [ "${STATUS[$t]}" = ok ]; then log "$t: ${TURL[$t]}"; else log "$t: ${STATUS[$t]}"; fi
done

bench_run || log "nothing to measure: writing the report anyway"

# ---------------------------------------------------------------- report
report_facts
RUN_CMD=$(run_cmd auth.sh)
[ "$WANT_TARGETS" != "$DEFAULT_TARGETS" ] && RUN_CMD="BENCH_TARGETS=\"$WANT_TARGETS\" $RUN_CMD"
[ "$RPOOL" != 1024 ] && RUN_CMD="BENCH_NGX_REDIS_POOL=$RPOOL $RUN_CMD"
[ "$BUSY_POLL" != 0.0002 ] && RUN_CMD="BENCH_MG_BUSY_POLL=$BUSY_POLL $RUN_CMD"
TPUT_CONNS=""; for c in $CONNS; do [ "$c" -gt 1 ] && TPUT_CONNS="$TPUT_CONNS $c"; done
HAS_C1=0; for c in $CONNS; do [ "$c" = 1 ] && HAS_C1=1; done

added_row() {  # target max_us: added p50 at c=1 over direct; sets CMP_RESULT
  local t=$1 want=$2 tp dp add
  tp=${P50[$t,1]:-}; dp=${P50[direct,1]:-}
  if [ -z "$tp" ] || [ -z "$dp" ]; then
    CMP_RESULT=n/a
    printf '| %s | %s | %s | – | n/a (%s) |\n' "$t" "${tp:-–}" "${dp:-–}" \
      "$([ -z "$tp" ] && echo "$t: ${STATUS[$t]:-not run}" || echo "direct: ${STATUS[direct]:-not run}")"
    return
  fi
  add=$(awk -v a="$tp" -v b="$dp" 'BEGIN{printf "%.0f", a-b}')
  if [ -z "$want" ]; then CMP_RESULT="–"
  elif [ "$add" -le "$want" ]; then CMP_RESULT=PASS; else CMP_RESULT=FAIL; fi
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$tp" "$dp" "$add" "$CMP_RESULT"
}

REPORT="$WORK/section.md"
{
  header_lines "Authenticating proxies: JWT → Redis → Basic, and ForwardAuth"
  echo
  echo "**Auth proxy** (hyper-auth-proxy's scenario): an HS512 JWT in the \`Authorization\` cookie"
  echo "(base64 of the JWT) is verified, its \`sid\` claim is looked up in Redis, the stored"
  echo "\`{\"credentials\":\"user:pass\"}\` becomes \`Authorization: Basic ...\` on the proxied request"
  echo "(token cookie removed). \`mg-jwt\`: moongate with the bundled \`redis_credentials\` plugin"
  echo "(redis pool 16, default options: verified tokens are cached for \`cache_ttl\` = 300 s, so"
  echo "with wrk's one token the HMAC runs once per worker; the Redis GET runs on every request);"
  echo "\`mg-jwt-nc\`: the same with \`cache_ttl = 0\`, every token verified as the peer does;"
  echo "\`nginx-lua-jwt\`: nginx + lua-nginx-module doing the same in LuaJIT"
  echo "(HMAC-SHA512 through the FFI from libcrypto on every request, a cosocket RESP GET with \`setkeepalive(60000, $RPOOL)\`)."
  echo
  echo "**ForwardAuth**: each request first goes to an auth server (a second nginx answering"
  echo "200 with \`X-User: alice\`), whose X-User is copied into the proxied request. \`mg-fa\`:"
  echo "moongate's bundled \`forward_auth\` plugin; \`nginx-fa\`: stock nginx \`auth_request\` +"
  echo "\`auth_request_set\`/\`proxy_set_header\`; \`caddy-fa\`: Caddy \`forward_auth\` with \`copy_headers\`"
  echo "(GOMAXPROCS=1)."
  wanted direct && echo "\`direct\`: the upstream without a proxy (and without a cap), the latency baseline."
  wanted mg-jwt-bp || wanted mg-fa-bp &&
    echo "\`mg-jwt-bp\`, \`mg-fa-bp\`: the same moongate configs with \`busy_poll = $BUSY_POLL\` (a worker keeps polling that long after its last event instead of halting its CPU; doc/config.md)."
  echo
  echo "Before measuring, every target is checked: the upstream sees the Basic header (and"
  echo "the other cookies, not the token), a missing, forged or unknown-session token gets 401;"
  echo "the upstream sees X-User: alice even when the client sends its own X-User."
  echo
  summary_table
  echo
  echo "### moongate against the peers"
  echo
  compare_header moongate peer "target"
  res_jwt=() res_jwt_nc=() res_fa_ngx=() res_fa_caddy=()
  for c in $TPUT_CONNS; do
    wanted mg-jwt && { compare_row "mg-jwt / nginx-lua-jwt (≥ 1.3×)" mg-jwt nginx-lua-jwt "$c" 1.3; res_jwt+=("$CMP_RESULT"); }
    wanted mg-jwt-nc && { compare_row "mg-jwt-nc / nginx-lua-jwt (≥ 1.3×)" mg-jwt-nc nginx-lua-jwt "$c" 1.3; res_jwt_nc+=("$CMP_RESULT"); }
  done
  for c in $TPUT_CONNS; do
    wanted mg-fa && { compare_row "mg-fa / nginx-fa (≥ 1.2×)" mg-fa nginx-fa "$c" 1.2; res_fa_ngx+=("$CMP_RESULT"); }
    wanted mg-fa && wanted caddy-fa && { compare_row "mg-fa / caddy-fa (≥ 3×)" mg-fa caddy-fa "$c" 3; res_fa_caddy+=("$CMP_RESULT"); }
  done
  res_lat=() res_lat_bp=()
  if [ "$HAS_C1" = 1 ] && wanted direct; then
    echo
    echo "### Added latency at c=1"
    echo
    echo "p50 of \`wrk -c1 --latency\` (median over runs) minus the p50 of \`direct\` in the same run$(capped && echo "; under the CPU cap, throttling adds to it (BENCH_CPU_LIMIT=0 for the latency alone)")."
    echo
    echo "| target | p50 µs | direct p50 µs | added µs | target ≤ 60 µs (moongate) |"
    echo "|---|---:|---:|---:|---|"
    for t in $TARGETS; do
      [ "$t" = direct ] && continue
      case $t in
      mg-*-bp) added_row "$t" 60; res_lat_bp+=("$CMP_RESULT") ;;
      mg-*) added_row "$t" 60; res_lat+=("$CMP_RESULT") ;;
      *) added_row "$t" "" ;;
      esac
    done
  fi
  echo
  echo "### Targets"
  echo
  echo "CPU per request, medians of the bracketed rounds; c ∈ {${TPUT_CONNS# }}."
  echo
  wanted mg-jwt && echo "- auth proxy, token cache on (default): moongate ≥ 1.3× nginx + LuaJIT: **$(all_of "${res_jwt[@]:-n/a}")**"
  wanted mg-jwt-nc && echo "- auth proxy, \`cache_ttl = 0\`: moongate ≥ 1.3× nginx + LuaJIT: **$(all_of "${res_jwt_nc[@]:-n/a}")**"
  wanted mg-fa && echo "- ForwardAuth: moongate ≥ 1.2× nginx auth_request: **$(all_of "${res_fa_ngx[@]:-n/a}")**"
  wanted mg-fa && wanted caddy-fa && echo "- ForwardAuth: moongate ≥ 3× Caddy forward_auth: **$(all_of "${res_fa_caddy[@]:-n/a}")**"
  if [ "$HAS_C1" = 1 ] && wanted direct; then
    [ ${#res_lat[@]} -gt 0 ] && echo "- added p50 at c=1 ≤ 60 µs over direct, default settings: **$(all_of "${res_lat[@]}")**"
    [ ${#res_lat_bp[@]} -gt 0 ] && echo "- added p50 at c=1 ≤ 60 µs over direct, busy_poll = $BUSY_POLL: **$(all_of "${res_lat_bp[@]}")**"
  fi
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
  echo "${CMD[redis]}"
  echo "redis-cli -p \$RPORT set $SID '{\"credentials\":\"$CREDS\"}'"
  echo "${CMD[authserver]}"
  for p in moongate-jwt moongate-jwt-nc moongate-fa moongate-jwt-bp moongate-fa-bp nginx-lua nginx-fa caddy; do [[ " $STARTED " == *" $p "* ]] && echo "${CMD[$p]}"; done
  echo "# JWT: HS512 {\"sid\":\"$SID\",\"exp\":now+86400}, signed with a random secret (openssl dgst -sha512 -hmac)"
  wrk_cmd "-H \"Cookie: Authorization=\$(base64 of the JWT)\" http://127.0.0.1:\$PORT/jwt/"
  wrk_cmd "http://127.0.0.1:\$PORT/fa/"
  echo '```'
  echo
  echo "Versions: $(ver "$NGINX" -v); lua-nginx-module $(dpkg-query -W -f '${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?'); caddy $(ver "$CADDY" version 2>/dev/null || echo '?'); $(ver redis-server --version | cut -d' ' -f1-3); $(ver "$WRK" -v | sed 's/ Copyright.*//'); moongate: $MG_VER; kernel $(uname -r)."
  echo
  per_round_table
} >"$REPORT"

echo
cat "$REPORT"
write_results "$REPORT" "$RUN_CMD"
exit 0
