#!/usr/bin/env bash
# What scraping /metrics and the per-identity rate limits cost a busy node: the same GET load
# (skv bench, 50 connections, inflight 16, tokens per request, mutual TLS) with no scraper,
# with a scrape every second (four times what a Prometheus at its usual 15 s interval and a
# few dashboards ask), with ten scrapes a second (an abusive scraper), and, on a second node of
# the same configuration plus rate_limit_rps and rate_limit_bytes_per_sec set far above the
# load (so every request pays for its bucket but none waits), with no scraper. Modes
# alternate in rounds, so drift on a shared machine hits each mode alike; compare the ratios,
# not the absolute figures.
#
# usage: benches/scripts/metrics-scrape-cost.sh BIN_DIR [ROUNDS] [SECONDS]
#   BIN_DIR  a directory holding skv and skv-node (e.g. target/release)
#   ROUNDS   rounds of the three modes (default 3); SECONDS measured per run (default 5)
#
# Prints one line per run (mode, ops/s, node CPU µs per request, scrapes, bytes per scrape)
# and, per mode, the median ops/s and CPU µs/op relative to `none` (no scraper, no limits).
set -euo pipefail
bin=$(cd "${1:?usage: $0 BIN_DIR [ROUNDS] [SECONDS]}" && pwd)
rounds=${2:-3}
seconds=${3:-5}
work=$(mktemp -d)
cleanup() {
  "$bin/skv" cluster down --dir "$work/c" >/dev/null 2>&1 || true
  "$bin/skv" cluster down --dir "$work/limited" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port=7871
metrics=127.0.0.1:7879
"$bin/skv" cluster init --dir "$work/c" --nodes 1 --base-port "$port" >/dev/null
echo "metrics_listen = \"$metrics\"" >>"$work/c/nodes/n1.toml"
"$bin/skv" cluster up --dir "$work/c" >/dev/null
# The rate-limited twin: limits far above what 2 cores can serve, so they are paid, never hit.
"$bin/skv" cluster init --dir "$work/limited" --nodes 1 --base-port $((port + 10)) >/dev/null
printf 'rate_limit_rps = 100000000\nrate_limit_bytes_per_sec = 100000000000\n' \
  >>"$work/limited/nodes/n1.toml"
"$bin/skv" cluster up --dir "$work/limited" >/dev/null

# utime + stime of the node of cluster $1, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$(cat "$work/$1/run/n1.pid")/stat"; }
ticks_per_s=$(getconf CLK_TCK)

# Scrape every $1 seconds until killed; on exit write "scrapes bytes" to $2.
scraper() {
  exec python3 - "$metrics" "$1" "$2" <<'EOF'
import signal, sys, time, urllib.request
addr, every, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
n = size = 0
def done(*_):
    open(out, "w").write(f"{n} {size // max(n, 1)}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    size += len(urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read())
    n += 1
    time.sleep(every)
EOF
}

declare -A ops cpu
for round in $(seq "$rounds"); do
  for mode in none 1s 100ms limits; do
    scrapes="0 0"
    cluster=c
    [ "$mode" = limits ] && cluster=limited
    if [ "$mode" = 1s ] || [ "$mode" = 100ms ]; then
      every=$([ "$mode" = 1s ] && echo 1 || echo 0.1)
      scraper "$every" "$work/scrapes" &
      scraper_pid=$!
    fi
    before=$(cpu_ticks $cluster)
    result=$("$bin/skv" --profile "$work/$cluster/client.toml" --json bench --quiet --workload get --keys 1000 \
      --conns 50 --inflight 16 --warmup 1s --duration "${seconds}s")
    after=$(cpu_ticks $cluster)
    if [ "$mode" = 1s ] || [ "$mode" = 100ms ]; then
      kill -TERM "$scraper_pid"
      wait "$scraper_pid" || true
      scrapes=$(cat "$work/scrapes")
    fi
    # The CPU window also covers the preload (1000 PUTs) and the 1 s warmup: both count as
    # requests, the warmup's at the measured rate.
    read -r rate served < <(python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["ops_per_sec"], r["requests"] + r["preloaded_keys"] + r["ops_per_sec"] * r["warmup_secs"])' <<<"$result")
    us_per_op=$(python3 -c "print(round(($after - $before) / $ticks_per_s * 1e6 / $served, 2))")
    echo "round $round  $mode: $(printf '%.0f' "$rate") ops/s, ${us_per_op} µs CPU/op, scrapes/bytes: $scrapes"
    ops[$mode]+="$rate "
    cpu[$mode]+="$us_per_op "
  done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
base_ops=$(median <<<"${ops[none]}")
base_cpu=$(median <<<"${cpu[none]}")
for mode in none 1s 100ms limits; do
  m_ops=$(median <<<"${ops[$mode]}")
  m_cpu=$(median <<<"${cpu[$mode]}")
  python3 -c "print(f'$mode: median {float($m_ops):.0f} ops/s ({float($m_ops) / float($base_ops):.3f} of none), {float($m_cpu):.2f} µs CPU/op ({float($m_cpu) / float($base_cpu):.3f} of none)')"
done
