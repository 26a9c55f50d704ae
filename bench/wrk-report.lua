-- Loaded by bench/run.sh with `wrk -s`. Defines only done(), so wrk keeps its
-- static pre-built request (no per-request Lua). Prints one machine-readable
-- line after wrk's own --latency report. Latencies are in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "MGBENCH requests=%d duration_us=%d rps=%.2f p50_us=%d p99_us=%d " ..
    "connect=%d read=%d write=%d timeout=%d status=%d bytes=%d\n",
    summary.requests, summary.duration,
    summary.duration > 0 and summary.requests / (summary.duration / 1e6) or 0,
    latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status, summary.bytes))
end
