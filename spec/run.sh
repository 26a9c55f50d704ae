#!/bin/sh
# Runs every test against the build in $1 (default: build): C unit tests
# (ctest), busted specs for the Lua runtime and plugins, integration tests
# (pytest) that drive the real binary with real clients and upstreams.
# Prints one closing line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
export MOONGATE_BIN="$BUILD/moongate"
pass=0
fail=0
count() { # $1 passed $2 failed
  pass=$((pass + $1)); fail=$((fail + $2))
}

echo "== C unit tests (ctest, $BUILD)"
out=$(cd "$BUILD" && ctest --output-on-failure 2>&1); rc=$?
echo "$out" | tail -n 30
t=$(echo "$out" | sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1 \2/p')
if [ -n "$t" ]; then
  set -- $t; count $(($2 - $1)) "$1"
elif [ $rc -ne 0 ]; then count 0 1; fi

if ls spec/lua/*_spec.lua >/dev/null 2>&1; then
  # busted runs inside the real runtime (moongate --script), so specs get
  # real coroutines, real yields and real timers.
  echo "== busted specs (inside $BUILD/moongate)"
  out=$("$MOONGATE_BIN" --script /usr/bin/busted -o utfTerminal spec/lua 2>&1); rc=$?
  echo "$out" | tail -n 40
  line=$(echo "$out" | grep -E '^[0-9]+ success' | tail -1)
  p=$(echo "$line" | sed -n 's/^\([0-9]*\) success.*/\1/p')
  f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failures* .*/\1/p')
  e=$(echo "$line" | sed -n 's/.* \([0-9]*\) errors* .*/\1/p')
  count "${p:-0}" $(( ${f:-0} + ${e:-0} ))
  [ $rc -ne 0 ] && [ $(( ${f:-0} + ${e:-0} )) -eq 0 ] && count 0 1
fi

echo "== integration tests (pytest, $BUILD)"
out=$(/usr/bin/python3 -m pytest -q -p no:cacheprovider spec/integration 2>&1); rc=$?
echo "$out" | tail -n 40
p=$(echo "$out" | tail -n 1 | grep -o '[0-9]* passed' | grep -o '[0-9]*')
f=$(echo "$out" | tail -n 1 | grep -o '[0-9]* failed' | grep -o '[0-9]*')
e=$(echo "$out" | tail -n 1 | grep -o '[0-9]* error' | grep -o '[0-9]*')
count "${p:-0}" $(( ${f:-0} + ${e:-0} ))
[ $rc -ne 0 ] && [ -z "$f$e" ] && count 0 1

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
