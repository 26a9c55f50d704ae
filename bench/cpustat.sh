# Sourced by bench/lib.sh and bench/run.sh: how busy the proxy CPU and the
# load CPU were during a wrk run (from /proc/stat), so a report can tell a
# saturated load side from a saturated proxy.

# cpu_snap: "total idle" jiffies of the proxy CPU, then of the load CPU
cpu_snap() {
  awk -v a="cpu$PROXY_CPU" -v b="cpu$LOAD_CPU" '$1 == a || $1 == b {
      t = 0; for (i = 2; i <= NF; i++) t += $i; v[$1] = t " " ($5 + $6) }
    END { print v[a], v[b] }' /proc/stat
}
# busy_pct "t0 i0" "t1 i1" -> percent of the interval the CPU was not idle
busy_pct() { awk -v t0="$1" -v i0="$2" -v t1="$3" -v i1="$4" 'BEGIN {
  d = t1 - t0; if (d > 0) printf "%.0f", 100 * (d - (i1 - i0)) / d; else printf "-" }'; }

# cpu_busy_between "$s0" "$s1": sets CPU_PROXY and CPU_LOAD from two cpu_snap outputs
cpu_busy_between() {
  local a b
  read -r -a a <<<"$1"; read -r -a b <<<"$2"
  CPU_PROXY=$(busy_pct "${a[0]}" "${a[1]}" "${b[0]}" "${b[1]}")
  CPU_LOAD=$(busy_pct "${a[2]}" "${a[3]}" "${b[2]}" "${b[3]}")
}
