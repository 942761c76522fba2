#!/usr/bin/env bash
# Node CPU per GET, for configurations measured side by side: the node's user+sys time over
# a run (from /proc/PID/stat), divided by the requests it served. Rounds alternate the
# configurations, so a machine that slows down during the run slows all of them alike; the
# medians at the end are what to compare (ratios within one run, never absolute figures
# across days).
#
# usage: benches/scripts/node-cpu-per-request.sh BIN_DIR [CONFIG...]
#   BIN_DIR  a directory holding skv and skv-node (e.g. target/release)
#   CONFIG   one of
#              l0          plaintext, no tokens (the ladder's L0)
#              l2          mutual TLS, no tokens
#              l5          L2 + a JWT per request from the verified-token cache, registered
#                          once per connection and named by its handle (protocol version 2)
#              l5-full     l5 with the whole token in every request (--token-in-every-request)
#              null        mutual TLS in front of --engine null: the transport's ceiling
#            any of them with +direct appended (l5+direct): the same node driven by
#            `skv bench --direct` (one task per connection, no client-library machinery per
#            request), so `l5 l5+direct` shows what the load generator's path costs the node
#            and any of those with @DIR appended (l5+direct@/tmp/old/release): the same run
#            with the skv and skv-node of DIR instead of BIN_DIR, to compare two builds
#            paired by round (`l0@OLD l5@OLD l0 l5 l5 l0 l5@OLD l0@OLD`)
#            default: null l2 l5 l5-full
# Environment: INFLIGHT (16), CONNS (50), SECS (4, per run), ROUNDS (3), KEYS (10000).
# At the end, every configuration against each one named before it, paired by round: its
# cost in ops/s and its node CPU per GET as a ratio, the median over rounds with a 95 %
# interval (six rounds at least for one; twenty or more to resolve a few percent on a noisy
# machine).
# The load generator runs on the same machine; niceness is left as it is, so run both at the
# same priority, or give the load generator less (nice) to favour the node.
set -euo pipefail
bin=$(cd "${1:?usage: $0 BIN_DIR [CONFIG...]}" && pwd)
shift
if [ $# -gt 0 ]; then configs=("$@"); else configs=(null l2 l5 l5-full); fi
inflight=${INFLIGHT:-16} conns=${CONNS:-50} secs=${SECS:-4} rounds=${ROUNDS:-3}
keys=${KEYS:-10000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/skv" certs init --dir "$work/pki" --cluster dev --nodes n1 --clients alice >/dev/null
"$bin/skv" keys init --dir "$work/keys" >/dev/null
"$bin/skv" token issue --key "$work/keys/issuer-key.pem" --sub alice --allow "read,write:" \
  --ttl 1h >"$work/token"
tls=(--ca "$work/pki/ca.pem" --cert "$work/pki/nodes/n1.pem" --key "$work/pki/nodes/n1-key.pem")

# One run of configuration $1 on port $2: prints "ops_per_sec node_cpu_us_per_op".
run() {
  local spec=$1 port=$2 engine=sled node_args=() client=() bench_flags=() use=$bin
  if [[ $spec == *@* ]]; then
    use=$(cd "${spec#*@}" && pwd)
    spec=${spec%%@*}
  fi
  local config=${spec%+direct}
  if [ "$config" != "$spec" ]; then bench_flags=(--direct); fi
  case $config in
    l0) node_args=(--insecure-plaintext --auth off); client=(--plaintext) ;;
    l2) node_args=("${tls[@]}" --auth off) ;;
    null) node_args=("${tls[@]}" --auth off); engine=null ;;
    l5 | l5-full) node_args=("${tls[@]}" --keyset "$work/keys/keyset.json" --auth per-request) ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
  esac
  if [ "$config" != l0 ]; then client=(--profile "$work/pki/clients/alice.toml"); fi
  case $config in
    l5) client+=(--token-file "$work/token") ;;
    l5-full) client+=(--token-file "$work/token" --token-in-every-request) ;;
  esac
  local data="$work/data-$config-$port"
  "$use/skv-node" --name n1 --cluster dev --listen "127.0.0.1:$port" --data-dir "$data" \
    --engine "$engine" "${node_args[@]}" >"$work/node.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    "$use/skv" "${client[@]}" --addr "127.0.0.1:$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  local addr=(--addr "127.0.0.1:$port") t0 t1
  # skv bench writes every key first; the node's clock starts when it says it measures. The
  # load generator is the build's own: a build's client library is part of what it changes.
  "$use/skv" "${client[@]}" "${addr[@]}" bench "${bench_flags[@]}" --workload get --keys "$keys" \
    --conns "$conns" \
    --inflight "$inflight" --duration "${secs}s" --warmup 0s --json >"$work/bench.json" \
    2>"$work/bench.err" &
  local load=$!
  until grep -q '^skv bench: measuring' "$work/bench.err" 2>/dev/null; do
    kill -0 "$load" 2>/dev/null || { cat "$work/bench.err" >&2; exit 1; }
    sleep 0.01
  done
  t0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  wait "$load"
  t1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  kill -INT "$pid"
  wait "$pid" || true
  python3 - "$work/bench.json" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
bench = json.load(open(sys.argv[1]))
ticks = float(sys.argv[3]) - float(sys.argv[2])
requests = bench["requests"]
print(f'{bench["ops_per_sec"]:.0f} {ticks / float(sys.argv[4]) * 1e6 / max(requests, 1):.2f}')
PY
}

declare -A results
port=7840
runs="$work/runs"
for round in $(seq "$rounds"); do
  for config in "${configs[@]}"; do
    port=$((port + 1))
    read -r ops cpu < <(run "$config" "$port")
    results[$config]+="$cpu "
    echo "$round $config $ops $cpu" >>"$runs"
    printf 'round %d  %-8s %8s ops/s  %6s node CPU us/op\n' "$round" "$config" "$ops" "$cpu"
  done
done
echo "median node CPU us/op over $rounds rounds (GET, $conns connections, inflight $inflight):"
for config in $(printf '%s\n' "${configs[@]}" | awk '!seen[$0]++'); do
  median=$(tr ' ' '\n' <<<"${results[$config]}" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  printf '  %-8s %s\n' "$config" "$median"
done
# Paired within each round: a configuration named twice in a round (l0 l5 l5 l0) counts as
# the mean of its runs there, so each round gives one ratio per pair of configurations, and
# the machine's drift between rounds cancels. The interval is the distribution-free
# one for a median (order statistics of the rounds' ratios, binomial coverage), so it makes
# no assumption about how this machine's noise is shaped.
python3 - "$runs" <<'PY'
import collections, math, sys
rounds = collections.defaultdict(lambda: collections.defaultdict(list))
order = []
for line in open(sys.argv[1]):
    r, config, ops, cpu = line.split()
    config = config.replace('+direct', '')
    if config not in order:
        order.append(config)
    rounds[int(r)][config].append((float(ops), float(cpu)))
def mean(xs):
    return sum(xs) / len(xs)
def median_interval(xs, coverage=0.95):
    xs = sorted(xs)
    n = len(xs)
    median = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    # The widest k with P(Binomial(n, 1/2) < k) <= (1 - coverage) / 2 gives the interval
    # [x_(k), x_(n+1-k)] (1-based); too few rounds for any such k gives none.
    tail, k = 0.0, 0
    while True:
        tail += math.comb(n, k) / 2**n
        if tail > (1 - coverage) / 2:
            break
        k += 1
    if k == 0:
        return median, None
    return median, (xs[k - 1], xs[n - k])
def show(name, median, interval, fmt):
    span = f'{fmt(interval[0])} .. {fmt(interval[1])}' if interval else 'none: too few rounds'
    return f'{fmt(median)} (95 % interval of the median: {span})'
print(f'paired by round ({len(rounds)} rounds), each configuration against each before it:')
pct = lambda v: f'{v:.1f} %'
times = lambda v: f'{v:.3f}x'
for i, base in enumerate(order):
    for config in order[i + 1:]:
        cost, cpu = [], []
        for runs in rounds.values():
            if base in runs and config in runs:
                b, c = runs[base], runs[config]
                cost.append(100 * (1 - mean([o for o, _ in c]) / mean([o for o, _ in b])))
                cpu.append(mean([u for _, u in c]) / mean([u for _, u in b]))
        if not cost:
            continue
        print(f'  {config} against {base}:')
        print(f'    ops/s cost {show(config, *median_interval(cost), pct)}')
        print(f'    node CPU per GET {show(config, *median_interval(cpu), times)}')
PY
