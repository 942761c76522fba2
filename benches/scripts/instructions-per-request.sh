#!/usr/bin/env bash
# Instructions per GET on the node, counted by callgrind: a figure that repeats on a noisy
# machine, where wall-clock ladders of the same binaries differ by ±20 %.
#
# usage: benches/scripts/instructions-per-request.sh BIN_DIR [ENGINE...]
#   BIN_DIR  a directory holding skv and skv-node (e.g. target/release)
#   ENGINE   null (transport, router and shard without storage) or sled; default: null sled
#
# The node runs under callgrind on 127.0.0.1 with mutual TLS; the load generator (skv bench:
# 50 connections, inflight 16 or $INFLIGHT, 100 keys) runs natively. Each figure is a run of 22,000 GETs
# minus a run of 2,000, divided by 20,000, so start-up and shutdown cancel out. Compare two
# builds by running the script once per BIN_DIR. Needs valgrind (apt-get install valgrind).
# NODE_ARGS adds flags to every node run, e.g. NODE_ARGS="--rate-limit-rps 100000000" for
# what a limit costs when it is paid but never hit. INFLIGHT=1 counts unpipelined requests,
# where per-turn costs of the connection loop show most.
set -euo pipefail
bin=$(cd "${1:?usage: $0 BIN_DIR [ENGINE...]}" && pwd)
shift
if [ $# -gt 0 ]; then engines=("$@"); else engines=(null sled); fi
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/skv" certs init --dir "$work/pki" --cluster dev --nodes n1 --clients alice >/dev/null
client=(--profile "$work/pki/clients/alice.toml")

# No tokens: this counts the transport, router and shard. Builds since the fail-safe default
# (a node without --keyset refuses to start) need that said out loud; older ones lack the flag.
auth=()
if "$bin/skv-node" --help | grep -q -- '--auth'; then auth=(--auth off); fi
read -r -a node_args <<<"${NODE_ARGS:-}"

# Total instructions of one node run serving $2 GETs on engine $1.
count() {
  local engine=$1 requests=$2 port=$3 out="$work/callgrind.$1.$2"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/skv-node" \
    --listen "127.0.0.1:$port" --data-dir "$work/data-$engine-$requests" --engine "$engine" \
    --ca "$work/pki/ca.pem" --cert "$work/pki/nodes/n1.pem" --key "$work/pki/nodes/n1-key.pem" \
    "${auth[@]}" "${node_args[@]}" >"$work/node.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do
    "$bin/skv" "${client[@]}" --addr "127.0.0.1:$port" ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$bin/skv" "${client[@]}" --addr "127.0.0.1:$port" bench --workload get --conns 50 \
    --inflight "${INFLIGHT:-16}" --requests "$requests" --warmup 0s --keys 100 >/dev/null 2>&1
  kill -INT "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

for engine in "${engines[@]}"; do
  small=$(count "$engine" 2000 7861)
  large=$(count "$engine" 22000 7862)
  echo "$engine: $(( (large - small) / 20000 )) instructions per GET ($bin)"
done
