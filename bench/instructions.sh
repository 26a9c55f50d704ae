#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per request, counted by
# valgrind's callgrind, for moongate and its peers on the same scenarios:
#   plain          a keep-alive proxy (peers/moongate.lua.in, nginx-proxy.conf.in)
#   fa             ForwardAuth (moongate forward_auth, nginx auth_request)
#   jwt            JWT -> Redis -> Basic (moongate redis_credentials, nginx + LuaJIT)
# Instructions, unlike req/s, do not depend on what else the machine is doing
# (the same count twice, on a busy host too), so this section stays
# comparable across runs where the wrk tables move with host noise. It counts
# the proxy's user space only: syscalls and the kernel's TCP work are not in
# it (bench/auth.sh's CPU busy columns cover the whole).
#
# Each proxy runs alone under callgrind (nginx with master_process off); ab
# sends BENCH_WARMUP_REQS keep-alive requests at c=50, callgrind's counters
# are zeroed, BENCH_REQS more are sent, and the counters are dumped: the
# total over BENCH_REQS is the number reported. The upstream, Redis and
# the auth server are the ones bench/auth.sh uses, each checked first.
#
# Environment: as bench/lib.sh, plus BENCH_REQS [5000], BENCH_WARMUP_REQS
# [2000], BENCH_AB_CONNS [50] (ab's -c), BENCH_TARGETS [all of: mg-plain nginx-plain mg-fa nginx-fa mg-jwt
# mg-jwt-nc nginx-lua-jwt]; mg-jwt-nc is mg-jwt with cache_ttl = 0. Rewrites <!-- instructions:begin --> .. :end --> in
# bench/RESULTS.md. Needs valgrind and ab (apache2-utils).

set -uo pipefail
BENCH_NAME=instructions
DEFAULT_CONNS="50"
DEFAULT_CPU_LIMIT=0   # callgrind counts instructions: no cap, no cgroups
: "${BENCH_READY_TIMEOUT:=60}" # valgrind starts slowly
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ALL_TARGETS="mg-plain nginx-plain mg-fa nginx-fa mg-jwt mg-jwt-nc nginx-lua-jwt"
WANT_TARGETS=${BENCH_TARGETS:-$ALL_TARGETS}
REQS=${BENCH_REQS:-5000}
WARM_REQS=${BENCH_WARMUP_REQS:-2000}
ABC=${BENCH_AB_CONNS:-50}
for v in REQS WARM_REQS ABC; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive number"; done
bench_init
for c in valgrind callgrind_control ab openssl "$NGINX"; do
  command -v "$c" >/dev/null || die "$c not found (make deps-bench; valgrind is a Debian package)"
done

# ---------------------------------------------------------------- load side
SECRET="bench-secret-$RANDOM$RANDOM"
SID="bench-session-1"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
h=$(printf %s '{"alg":"HS512","typ":"JWT"}' | b64url)
p=$(printf '{"sid":"%s","exp":%d}' "$SID" $(( $(date +%s) + 86400 )) | b64url)
s=$(printf %s "$h.$p" | openssl dgst -sha512 -hmac "$SECRET" -binary | b64url)
COOKIE="Cookie: Authorization=$(printf %s "$h.$p.$s" | openssl base64 -A)"

free_port upstream
start_nginx upstream "$LOAD_CPU" upstream-echo-nginx.conf.in PORT="${PORT[upstream]}"
wait_http upstream "http://127.0.0.1:${PORT[upstream]}/" || die "upstream nginx: $READY_ERR"
start_redis
redis_cmd set "$SID" '{"credentials":"user:pass"}' >/dev/null
free_port authserver
start_nginx authserver "$LOAD_CPU" authserver-nginx.conf.in PORT="${PORT[authserver]}"
wait_http authserver "http://127.0.0.1:${PORT[authserver]}/auth" || die "auth server: $READY_ERR"

# ---------------------------------------------------------------- one target
declare -A IPR=()   # target -> instructions per request
declare -A NOTE=()  # target -> why it has no number
# measure target proc path [header]: the proxy process `proc` is already
# running under callgrind; load it, zero, load, dump, read the total.
measure() {
  local t=$1 proc=$2 path=$3 hdr=${4:-} pid=${PID[$2]} url out dump total
  url="http://127.0.0.1:${PORT[$proc]}$path"
  local hargs=(); [ -n "$hdr" ] && hargs=(-H "$hdr")
  if ! wait_until "$proc" curl -sf -o /dev/null "${hargs[@]}" "$url"; then
    NOTE[$t]="did not answer 200: $READY_ERR"; return
  fi
  ab -q -k -n "$WARM_REQS" -c "$ABC" "${hargs[@]}" "$url" >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null 2>&1
  out=$(ab -k -n "$REQS" -c "$ABC" "${hargs[@]}" "$url" 2>&1)
  callgrind_control -d "$pid" >/dev/null 2>&1
  if ! grep -q '^Failed requests: *0' <<<"$out" || grep -q '^Non-2xx' <<<"$out"; then
    NOTE[$t]="failed requests under ab: $(grep -E '^(Failed requests|Non-2xx responses|Complete requests):' <<<"$out" | tr -s ' ' | paste -sd ';' -)"
    log "$t: ${NOTE[$t]}"; return
  fi
  dump=$WORK/cg-$proc.$pid.1
  for _ in $(seq 50); do [ -s "$dump" ] && break; sleep 0.1; done
  total=$(awk '/^(summary|totals):/{print $2; exit}' "$dump" 2>/dev/null)
  [ -n "$total" ] || { NOTE[$t]="no callgrind dump"; return; }
  IPR[$t]=$((total / REQS))
  log "$t: ${IPR[$t]} instructions per request"
}
# under_callgrind proc cmd...: start it pinned, callgrind writing $WORK/cg-proc.PID[.N]
under_callgrind() {
  local proc=$1; shift
  start_bg "$proc" "$PROXY_CPU" valgrind --tool=callgrind \
    --callgrind-out-file="$WORK/cg-$proc.%p" "$@"
}
nginx_conf() {  # name template KEY=VALUE...: a single-process nginx config in $WORK
  local name=$1 tpl=$2 d; shift 2
  subst "$BENCH_DIR/peers/$tpl" "$WORK/$name.conf" PREFIX="$WORK" NOFILE="$NOFILE" "$@"
  sed -i 's/^master_process on;/master_process off;/' "$WORK/$name.conf"
  for d in $(grep -o "$WORK/[A-Za-z0-9_.-]*-tmp/" "$WORK/$name.conf" | sort -u); do mkdir -p "$d"; done
}
stop_proc() { [ -n "${PID[$1]:-}" ] && stop_pid "${PID[$1]}"; unset "PID[$1]"; }
wanted() { [[ " $WANT_TARGETS " == *" $1 "* ]]; }

for t in $WANT_TARGETS; do
  case $t in
  mg-plain)
    free_port mgp
    subst "$BENCH_DIR/peers/moongate.lua.in" "$WORK/mgp.lua" PORT="${PORT[mgp]}" \
      UPPORT="${PORT[upstream]}" BUSY_POLL=0
    under_callgrind mgp "$MOONGATE_BIN" -c "$WORK/mgp.lua"
    measure "$t" mgp / ; stop_proc mgp ;;
  mg-fa|mg-jwt|mg-jwt-nc)
    v=${t#mg-} r=${t#mg-}; r=${r%-nc}; ttl=300; [ "$v" = jwt-nc ] && ttl=0
    free_port "mg$v"
    subst "$BENCH_DIR/peers/moongate-auth.lua.in" "$WORK/mg$v.lua" PORT="${PORT[mg$v]}" ONLY="$r" \
      UPPORT="${PORT[upstream]}" RPORT="${PORT[redis]}" AUTHPORT="${PORT[authserver]}" \
      SECRET="$SECRET" BUSY_POLL=0 CACHE_TTL="$ttl"
    under_callgrind "mg$v" "$MOONGATE_BIN" -c "$WORK/mg$v.lua"
    if [ "$r" = jwt ]; then measure "$t" "mg$v" /jwt/ "$COOKIE"; else measure "$t" "mg$v" /fa/; fi
    stop_proc "mg$v" ;;
  nginx-plain)
    free_port ngp
    nginx_conf ngp nginx-proxy.conf.in PORT="${PORT[ngp]}" UPPORT="${PORT[upstream]}"
    under_callgrind ngp "$NGINX" -p "$WORK/" -c "$WORK/ngp.conf" -e "$WORK/ngp-error.log"
    measure "$t" ngp / ; stop_proc ngp ;;
  nginx-fa)
    free_port ngfa
    nginx_conf ngfa nginx-forward-auth.conf.in PORT="${PORT[ngfa]}" UPPORT="${PORT[upstream]}" \
      AUTHPORT="${PORT[authserver]}"
    under_callgrind ngfa "$NGINX" -p "$WORK/" -c "$WORK/ngfa.conf" -e "$WORK/ngfa-error.log"
    measure "$t" ngfa /fa/ ; stop_proc ngfa ;;
  nginx-lua-jwt)
    NDK_SO=$(nginx_module libnginx-mod-http-ndk ndk_http_module.so)
    LUA_SO=$(nginx_module libnginx-mod-http-lua ngx_http_lua_module.so)
    if [ -z "$LUA_SO" ] || [ -z "$NDK_SO" ]; then NOTE[$t]="lua-nginx-module not installed"; continue; fi
    free_port nglua
    subst "$BENCH_DIR/peers/nginx-jwt-redis.lua.in" "$WORK/bench_auth.lua" \
      SECRET="$SECRET" RPORT="${PORT[redis]}" RPOOL=1024
    nginx_conf nglua nginx-jwt-redis.conf.in PORT="${PORT[nglua]}" UPPORT="${PORT[upstream]}" \
      NDK_MODULE="$NDK_SO" LUA_MODULE="$LUA_SO"
    under_callgrind nglua "$NGINX" -p "$WORK/" -c "$WORK/nglua.conf" -e "$WORK/nglua-error.log"
    measure "$t" nglua /jwt/ "$COOKIE" ; stop_proc nglua ;;
  *) die "BENCH_TARGETS: unknown target '$t' (known: $ALL_TARGETS)" ;;
  esac
done

# ---------------------------------------------------------------- report
row() {  # scenario mg-target peer-target
  local a=${IPR[$2]:-} b=${IPR[$3]:-}
  wanted "$2" || wanted "$3" || return 0
  printf '| %s | %s | %s | %s |\n' "$1" "${a:-${NOTE[$2]:-–}}" "${b:-${NOTE[$3]:-–}}" \
    "$([ -n "$a" ] && [ -n "$b" ] && echo "$(ratio "$a" "$b")×" || echo –)"
}
REPORT=$WORK/report.md
{
  echo "## User-space instructions per request (\`bench/instructions.sh\`)"
  echo
  echo "callgrind's instruction count in the proxy process (user space only: no"
  echo "syscalls, no kernel TCP work) over $REQS keep-alive requests at c=$ABC (ab -k),"
  echo "after $WARM_REQS warm-up requests. Unlike req/s, these numbers do not move"
  echo "with host noise. Measured $(date -u '+%Y-%m-%d %H:%M UTC'); moongate $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)."
  echo
  echo "| scenario | moongate | peer | moongate / peer |"
  echo "|---|---:|---:|---:|"
  row "plain proxy (peer: nginx proxy_pass, keepalive)" mg-plain nginx-plain
  row "ForwardAuth (peer: nginx auth_request)" mg-fa nginx-fa
  row "JWT → Redis → Basic (peer: nginx + LuaJIT, verifies every token)" mg-jwt nginx-lua-jwt
  row "the same with \`cache_ttl = 0\` (moongate verifies every token too)" mg-jwt-nc nginx-lua-jwt
  echo
  echo "moongate's jwt route caches verified tokens (\`cache_ttl\`, default 300 s);"
  echo "the LuaJIT peer verifies the HMAC on every request."
  echo
  echo "### Commands"
  echo
  echo '```sh'
  echo "BENCH_REQS=$REQS BENCH_WARMUP_REQS=$WARM_REQS BENCH_AB_CONNS=$ABC bash bench/instructions.sh"
  echo "# each proxy alone: valgrind --tool=callgrind \$PROXY ... (nginx: master_process off)"
  echo "ab -q -k -n $WARM_REQS -c $ABC \$URL; callgrind_control -z \$PID"
  echo "ab -k -n $REQS -c $ABC \$URL; callgrind_control -d \$PID   # total / $REQS"
  echo '```'
} >"$REPORT"
cat "$REPORT"
if [ -n "$RESULTS" ]; then replace_section "$RESULTS" instructions "$REPORT"; log "wrote the instructions section of $RESULTS"; fi
