#!/usr/bin/env bash
# Instructions per GET on the node, counted by callgrind: a figure that repeats on a noisy
# machine, where wall-clock ladders of the same binaries differ by ±20 %.
#
# usage: benches/scripts/instructions-per-request.sh BIN_DIR [ENGINE...]
#   BIN_DIR  a directory holding skv and skv-node (e.g. target/release)
#   ENGINE   null (transport, router and shard without storage) or sled; default: null sled
#
# The node runs under callgrind on 127.0.0.1 (with mutual TLS unless RUNG=l0); the load
# generator (skv bench: 50 connections, inflight 16 or $INFLIGHT, 100 keys) runs natively.
# Each figure is what a
# bench of 22,000 GETs cost the node minus what one of 2,000 did, over 20,000, both counted
# inside one node's run (see count below). Compare two builds by running the script once per
# BIN_DIR. Needs valgrind (apt-get install valgrind).
# NODE_ARGS adds flags to every node run, e.g. NODE_ARGS="--rate-limit-rps 100000000" for
# what a limit costs when it is paid but never hit. INFLIGHT=1 counts unpipelined requests,
# where per-turn costs of the connection loop show most.
# RUNG picks the security layers, as the ladder names them: l2 (the default: mutual TLS, no
# tokens), l0 (plaintext) or l5 (mutual TLS and a JWT per request, registered once per
# connection and named by its handle). DIRECT=1 drives the node with `skv bench --direct`
# (one task per connection, no client-library machinery), as the ladder's single-node rows
# are. `RUNG=l0 ... sled`, `RUNG=l2` and `RUNG=l5` side by side give what TLS and the token
# layer cost in instructions, a figure that repeats where their wall-clock cost is lost in
# the noise.
# KEYS (100) sets the keys the benches read. CACHE_SIM=1 also simulates the caches, with the
# last level set to 512 KiB, 8-way (a core's L2 on this machine, which is what a table of
# hot records outgrows first), and prints the data misses per GET at that level beside the
# instructions: the figure to compare for a change to the memory layout of the read path,
# whose cost is stalls, not instructions (run with KEYS=10000, as the ladder reads). The
# simulation is of one cache for the node's threads, not the machine's two: a capacity
# figure, blind to lines passed between cores.
set -euo pipefail
# A failed bench inside count (run in a command substitution) must end the script.
shopt -s inherit_errexit
bin=$(cd "${1:?usage: $0 BIN_DIR [ENGINE...]}" && pwd)
shift
if [ $# -gt 0 ]; then engines=("$@"); else engines=(null sled); fi
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin/skv" certs init --dir "$work/pki" --cluster dev --nodes n1 --clients alice >/dev/null
client=(--profile "$work/pki/clients/alice.toml")
tls=(--ca "$work/pki/ca.pem" --cert "$work/pki/nodes/n1.pem" --key "$work/pki/nodes/n1-key.pem")

# l0 and l2 check no tokens: they count the transport, router and shard. Builds since the
# fail-safe default (a node without --keyset refuses to start) need that said out loud; older
# ones lack the flag.
auth=()
if "$bin/skv-node" --help | grep -q -- '--auth'; then auth=(--auth off); fi
case ${RUNG:-l2} in
  l2) ;;
  l0)
    tls=(--insecure-plaintext)
    client=(--plaintext)
    ;;
  l5)
    "$bin/skv" keys init --dir "$work/keys" >/dev/null
    "$bin/skv" token issue --key "$work/keys/issuer-key.pem" --sub alice --allow "read,write:" \
      --ttl 1h >"$work/token"
    auth=(--keyset "$work/keys/keyset.json" --auth per-request)
    client+=(--token-file "$work/token")
    ;;
  *) echo "RUNG is l0, l2 or l5, not ${RUNG}" >&2; exit 2 ;;
esac
bench_flags=()
if [ -n "${DIRECT:-}" ]; then bench_flags=(--direct); fi
read -r -a node_args <<<"${NODE_ARGS:-}"

# Instructions per GET of one node on engine $1: the node serves a first bench (the preload
# and a warm-up), then callgrind's counters are zeroed and dumped around a bench of 2,000
# GETs and again around one of 22,000; the difference, over 20,000, is what the extra GETs
# cost. Each bench connects anew, so its handshakes are in both windows and cancel out, as
# do start-up and shutdown, which fall in neither. (Subtracting two whole node runs instead
# swung by hundreds of millions of instructions between runs on the sled engine with
# --direct: start-up work is not the same from one run to the next.)
count() {
  local engine=$1 port=$2 out="$work/callgrind.$1"
  local sim=()
  if [ -n "${CACHE_SIM:-}" ]; then sim=(--cache-sim=yes --LL=524288,8,64); fi
  valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$out.%p" "$bin/skv-node" \
    --listen "127.0.0.1:$port" --data-dir "$work/data-$engine" --engine "$engine" \
    "${tls[@]}" "${auth[@]}" "${node_args[@]}" >"$work/node.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do
    "$bin/skv" "${client[@]}" --addr "127.0.0.1:$port" ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  # The first bench writes every key; the measured ones only read (--no-preload), so a
  # window holds no writes and, past the first reads, no fills of the read cache.
  bench() {
    "$bin/skv" "${client[@]}" --addr "127.0.0.1:$port" bench "${bench_flags[@]}" "${@:2}" --workload get \
      --conns 50 --inflight "${INFLIGHT:-16}" --requests "$1" --warmup 0s --keys "${KEYS:-100}" \
      >"$work/bench.log" 2>&1 || {
      cat "$work/bench.log" >&2
      kill -INT "$pid"
      exit 1
    }
  }
  # The instructions of the node while it serves a bench of $1 GETs, and its data misses
  # at the last level (0 without CACHE_SIM); callgrind numbers its dumps from 1, and this is
  # dump $2.
  window() {
    callgrind_control --zero "$pid" >/dev/null 2>&1
    bench "$1" --no-preload
    callgrind_control --dump "$pid" >/dev/null 2>&1
    awk '/^events:/ { for (i = 2; i <= NF; i++) at[$i] = i }
      /^(summary|totals):/ { print $(at["Ir"]), (at["DLmr"] ? $(at["DLmr"]) + $(at["DLmw"]) : 0); exit }' \
      "$out.$pid.$2"
  }
  # Five reads a key first, so nearly every key is in the read cache before the windows
  # (1 - e^-5 of them): what they count is the hit path.
  local keys=${KEYS:-100}
  bench $((keys * 5 > 2000 ? keys * 5 : 2000))
  local small large small_miss large_miss
  read -r small small_miss < <(window 2000 1)
  read -r large large_miss < <(window 22000 2)
  kill -INT "$pid"
  wait "$pid" || true
  echo "$(( (large - small) / 20000 )) $(( (large_miss - small_miss) * 100 / 20000 ))"
}

for engine in "${engines[@]}"; do
  port=$((7860 + RANDOM % 100))
  read -r per_get misses < <(count "$engine" "$port")
  line="${RUNG:-l2} $engine${DIRECT:+ (direct)}: $per_get instructions per GET"
  if [ -n "${CACHE_SIM:-}" ]; then
    line+=", $((misses / 100)).$(printf '%02d' $((misses % 100))) data misses per GET at 512 KiB"
  fi
  echo "$line, ${KEYS:-100} keys ($bin)"
done
