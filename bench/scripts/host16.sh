#!/usr/bin/env bash
# The 16-core-host benchmarks, in one bounded run (about 5 minutes).
#
# Usage: bench/scripts/host16.sh BINARY OUTDIR
#
# Runs on a machine with at least 16 cores, nothing else busy, as root or
# not. It needs only the release `nocturne` binary (no cargo, no iproute2:
# the smoltcp cases need a namespace and are not run here). Every step has
# its own time limit so that one stuck step cannot eat the rest; each
# writes its JSON (DESIGN §7) and its console output into OUTDIR.
#
# Core plan (cores 0-15):
#   latency      client 0, io 15, workers 1-14 (one core per worker: spin)
#   throughput   latency client 0, client threads 0-2, io 15, workers 3-14
#   generator    load client on core 1, three echo servers on 4, 5, 6
#   compare      client threads on 0-1, nocturne io 14-15, workers 2-13;
#                the baselines get 2-15
set -u
BIN=${1:?usage: host16.sh BINARY OUTDIR}
OUT=${2:?usage: host16.sh BINARY OUTDIR}
mkdir -p "$OUT"
ncpu=$(nproc)
echo "host16: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
if [ "$ncpu" -lt 16 ]; then
  echo "host16: needs 16 cores, this machine has $ncpu" >&2
  exit 2
fi

step() { # NAME LIMIT_S COMMAND…
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T), limit ${limit}s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "--- $name rc=$rc in $((SECONDS - start)) s"
  # The summary table (and any error) is at the end.
  tail -n 40 "$OUT/$name.txt"
}

# 1. Latency on dedicated cores: engine, caller and callee each on a core of
#    their own. --connections 2 keeps 6 × 2 + 1 = 13 workers ≤ 14 cores, so
#    the engine picks spinning workers, each pinned to its own core.
step engine-latency 120 "$BIN" bench engine --client-core 0 --io-core 15 \
  --worker-cores 1-14 --modes spin,adaptive --connections 2 --quick \
  --json "$OUT/engine-latency.json"

# 2. What one io core sustains: 6 closed-loop clients on cores 0-2; 6 ping
#    callers + 6 nop callees (yielding workers, 12 cores for 12 busy ones).
step engine-throughput 120 "$BIN" bench engine --client-core 0 --client-cores 0-2 \
  --io-core 15 --worker-cores 3-14 --modes spin --connections 6 --quick \
  --rounds 1 --samples 500 --duration 3s --soak-requests 100000 \
  --json "$OUT/engine-throughput.json"

# 3. The generator from one client core against trivial servers: three
#    spinning echo servers (so that no server is the ceiling), 48 connections.
urls=()
pids=()
for core in 4 5 6; do
  log="$OUT/echo-$core.log"
  "$BIN" bench load-echo-server --poll spin --core "$core" >"$log" 2>&1 &
  pids+=($!)
done
for core in 4 5 6; do
  log="$OUT/echo-$core.log"
  for _ in $(seq 50); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  urls+=("$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)/")
done
echo "echo servers: ${urls[*]}"
step generator 45 "$BIN" bench load "${urls[@]}" --threads 1 --cores 1 --poll spin \
  --connections 48 --rate 100k..400k/50k --duration 2s --warmup 500ms --slo p99=1ms \
  --json "$OUT/generator.json"
kill "${pids[@]}" 2>/dev/null
wait 2>/dev/null

# 4. nocturne vs the baselines on 14 server cores.
step compare 200 "$BIN" bench compare --quick --client-cores 0-1 --client-threads 2 \
  --connections 32 --io-cores 14-15 --worker-cores 2-13 --nocturne-poll spin \
  --engine-arg=--set=foo.max_workers=6 --engine-arg=--set=bar.max_workers=6 \
  --out "$OUT" --json "$OUT/compare.json" --quiet

echo "host16: done in $SECONDS s"
