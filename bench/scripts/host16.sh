#!/usr/bin/env bash
# The 16-core-host benchmarks, in one bounded run: the default steps' time
# limits add up to 620 s (about 10 minutes, plus up to 10 s of clean-up
# each); the optional ones add up to 60 s (echo-ceiling), about 10 s
# (profile), up to 16 × 20 s (loops), 240 s (delegation) and 4 × 40 s
# (low-rate).
#
# Usage: bench/scripts/host16.sh BINARY OUTDIR [STEP…]
#   STEP: latency throughput serve-throughput generator compare (default: all),
#         echo-ceiling, profile (perf record of the io core at saturation;
#         $PERF names the perf binary, default `perf`), loops (calls
#         forwarded between two io loops), delegation (delegated wakes off
#         and on, the client and the workers sharing one core), low-rate
#         (the io loop's budget stretched over the gaps between requests,
#         off and on, at 500-4000 requests/s)
#
# Runs on a machine with at least 16 cores, nothing else busy, as root or
# not. It needs only the release `nocturne` binary (no cargo, no iproute2:
# the smoltcp cases need a namespace and are not run here). Every step has
# its own time limit so that one stuck step cannot eat the rest; each
# writes its JSON (docs/design.md §7) and its console output into OUTDIR as
# STEP.json and STEP.txt, and prints the end of the console output.
#
# Core plan (cores 0-15):
#   latency           client 0, io 15, workers 1-14 (one core per worker: spin)
#   throughput        latency client 0, client threads 0-2, io 15, workers 3-14
#   serve-throughput  `serve` io 15, 8 echo workers on 1-8 (spinning);
#                     `bench load` 3 spinning threads on 9-11, then the same
#                     with --pipeline 4
#   generator         `bench load` 1 thread on core 1; echo servers on 4, 5, 6
#   echo-ceiling      `bench load` 3 spinning threads on 9-11 against one
#                     spinning `bench load-echo-server` on 15
#   profile           as serve-throughput at a fixed 150k/s, perf on core 15
#   loops             client 0, io 14-15, workers 1-13
#   compare           client threads on 0-1, nocturne io 14-15, workers 2-13;
#                     the baselines get 2-15
#   delegation        client and (yielding) workers on 1, io 15: the 2-core
#                     VM's placement, `--delegate-wakes false` then `true`
#   low-rate          client 0, io 15 (adaptive), workers 1-13
#
# $LOAD_BIN, when set, runs the load generator (`bench load`) instead of
# BINARY, so that servers of several builds meet the same client.
set -u
usage="usage: host16.sh BINARY OUTDIR [STEP…]"
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
BIN=$1
OUT=$2
shift 2
STEPS=${*:-latency throughput serve-throughput generator compare}
KNOWN="latency throughput serve-throughput generator compare echo-ceiling profile loops delegation low-rate"
# Everything is checked before anything runs or is created: a bad step name
# found after minutes of the steps before it, or an empty OUTDIR left by a
# run that could not start, helps nobody.
if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "host16: $BIN is not an executable file" >&2
  echo "$usage" >&2
  exit 2
fi
for step in $STEPS; do
  case " $KNOWN " in
    *" $step "*) ;;
    *) echo "host16: unknown step $step (known: $KNOWN)" >&2; exit 2 ;;
  esac
done
ncpu=$(nproc)
echo "host16: $ncpu cores, $(uname -r),$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); steps: $STEPS"
# SMT siblings share a physical core (and its L1/L2): a worker on the io
# core's sibling would hand messages over faster but share its pipeline.
for c in 0 15; do
  sib=/sys/devices/system/cpu/cpu$c/topology/thread_siblings_list
  if [ -r "$sib" ] && [ "$(cat "$sib")" != "$c" ]; then
    echo "host16: core $c shares its physical core with cores $(cat "$sib")"
  fi
done
if [ "$ncpu" -lt 16 ]; then
  echo "host16: needs 16 cores, this machine has $ncpu" >&2
  exit 2
fi
if ! mkdir -p "$OUT"; then
  echo "host16: cannot create $OUT" >&2
  exit 2
fi

run_step() { # NAME LIMIT_S COMMAND…
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T), limit ${limit}s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "--- $name rc=$rc in $((SECONDS - start)) s"
  # The summary table (and any error) is at the end.
  tail -n "${TAIL_LINES:-24}" "$OUT/$name.txt"
}

# Waits for a server's "listening on http://…" line in LOG; prints the URL.
server_url() {
  for _ in $(seq 100); do grep -q 'listening on' "$1" && break; sleep 0.1; done
  sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$1" | head -1
}

# Latency on dedicated cores: engine, caller and callee each on a core of
# their own. --connections 2 keeps 6 × 2 + 1 = 13 workers ≤ 14 cores, so
# the engine picks spinning workers, each pinned to its own core.
step_latency() {
  run_step latency 120 "$BIN" bench engine --client-core 0 --io-core 15 \
    --worker-cores 1-14 --modes spin,adaptive --connections 2 --quick \
    --json "$OUT/latency.json"
}

# What one io core sustains, closed loop: 6 blocking clients on cores 0-2;
# 6 ping callers + 6 nop callees (yielding workers, 12 cores for 12 busy).
step_throughput() {
  run_step throughput 120 "$BIN" bench engine --client-core 0 --client-cores 0-2 \
    --io-core 15 --worker-cores 3-14 --modes spin --connections 6 --quick \
    --rounds 1 --samples 500 --duration 3s --soak-requests 100000 \
    --json "$OUT/throughput.json"
}

# What one io core sustains, open loop: `nocturne serve` with 8 spinning
# echo workers against the generator on three cores of its own.
step_serve_throughput() {
  local config="$OUT/echo8.toml" log="$OUT/serve.log"
  printf '[[functions]]\nname = "echo"\nbuiltin = "echo"\nmin_workers = 8\nmax_workers = 8\n' >"$config"
  "$BIN" serve --config "$config" --listen 127.0.0.1:0 --poll spin --io-cores 15 \
    --worker-cores 1-8 >"$log" 2>&1 &
  local pid=$!
  local url
  url=$(server_url "$log")
  sleep 1 # the workers' handshakes
  run_step serve-throughput 60 "${LOAD_BIN:-$BIN}" bench load "$url/function/echo" --body "$(printf 'p%.0s' $(seq 64))" \
    --threads 3 --cores 9-11 --poll spin --connections 96 --rate 100k..300k/25k \
    --duration 2s --warmup 500ms --slo p99=500us --json "$OUT/serve-throughput.json"
  # The same io core when clients pipeline (HTTP/1.1, 4 in flight per
  # connection): one read and one write serve several requests, so this is
  # the io core's own ceiling rather than the kernel's per-request cost.
  run_step serve-throughput-pipelined 60 "${LOAD_BIN:-$BIN}" bench load "$url/function/echo" \
    --body "$(printf 'p%.0s' $(seq 64))" --pipeline 4 \
    --threads 3 --cores 9-11 --poll spin --connections 96 --rate 100k..400k/50k \
    --duration 2s --warmup 500ms --slo p99=500us --json "$OUT/serve-throughput-pipelined.json"
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  grep -m3 'listening\|workers wait' "$log"
}

# The ceiling of a trivial kernel-TCP server on one core (the io core's
# floor for throughput): the same generator as serve-throughput.
step_echo_ceiling() {
  "$BIN" bench load-echo-server --poll spin --core 15 >"$OUT/echo-15.log" 2>&1 &
  local pid=$!
  local url
  url=$(server_url "$OUT/echo-15.log")
  run_step echo-ceiling 60 "$BIN" bench load "$url/" --body "$(printf 'p%.0s' $(seq 64))" \
    --threads 3 --cores 9-11 --poll spin --connections 96 --rate 60k..300k/20k \
    --duration 2s --warmup 500ms --slo p99=500us --json "$OUT/echo-ceiling.json"
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

# Where the io core's time goes at saturation: perf on the io thread while
# the generator offers more than it sustains.
step_profile() {
  local config="$OUT/echo8.toml" log="$OUT/serve.log" perf=${PERF:-perf}
  printf '[[functions]]\nname = "echo"\nbuiltin = "echo"\nmin_workers = 8\nmax_workers = 8\n' >"$config"
  "$BIN" serve --config "$config" --listen 127.0.0.1:0 --poll spin --io-cores 15 \
    --worker-cores 1-8 >"$log" 2>&1 &
  local pid=$!
  local url tid
  url=$(server_url "$log")
  sleep 1
  tid=$(grep -l 'nocturne-io' /proc/$pid/task/*/comm | head -1 | cut -d/ -f5)
  "$BIN" bench load "$url/function/echo" --body "$(printf 'p%.0s' $(seq 64))" \
    --threads 3 --cores 9-11 --poll spin --connections 96 --rate 150k \
    --duration 5s --warmup 500ms >"$OUT/profile-load.txt" 2>&1 &
  local load=$!
  sleep 2
  "$perf" record -F 4999 -g -t "$tid" -o "$OUT/perf.data" -- sleep 2 >"$OUT/perf-record.txt" 2>&1
  wait "$load"
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "=== profile: io thread $tid; load:"
  grep -E '^(rate|150k)' "$OUT/profile-load.txt" | head -2
  tail -2 "$OUT/perf-record.txt"
  "$perf" report -i "$OUT/perf.data" --no-children --sort sym --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -45
  "$perf" report -i "$OUT/perf.data" --children --sort sym --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -45
}

# The generator from one client core against trivial servers: three
# spinning echo servers (so that no server is the ceiling), 48 connections.
step_generator() {
  local urls=() pids=()
  for core in 4 5 6; do
    "$BIN" bench load-echo-server --poll spin --core "$core" >"$OUT/echo-$core.log" 2>&1 &
    pids+=($!)
  done
  for core in 4 5 6; do
    urls+=("$(server_url "$OUT/echo-$core.log")/")
  done
  run_step generator 60 "$BIN" bench load "${urls[@]}" --threads 1 --cores 1 --poll spin \
    --connections 48 --rate 100k..400k/50k --duration 2s --warmup 500ms --slo p99=1ms \
    --json "$OUT/generator.json"
  kill "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
}

# nocturne vs the baselines on 14 server cores; foo and bar get 6 workers
# each (3 per io core), 12 in all: one spinning worker per worker core.
step_compare() {
  run_step compare 200 "$BIN" bench compare --quick --client-cores 0-1 --client-threads 2 \
    --client-poll spin --connections 32 --io-cores 14-15 --worker-cores 2-13 \
    --nocturne-poll spin \
    --engine-arg=--set=foo.max_workers=6 --engine-arg=--set=bar.max_workers=6 \
    --out "$OUT" --json "$OUT/compare.json" --quiet
}

# Calls forwarded between io loops: `whoami` has one worker (on loop 0, io
# core 14), `echo` one per loop. Each ping-pong opens a connection that the
# kernel gives to one of the two loops, so the whoami p50s fall in two
# groups, local and forwarded; echo's are all local (the reference).
step_loops() {
  local config="$OUT/loops.toml" log="$OUT/loops-serve.log"
  printf '[[functions]]\nname = "whoami"\nbuiltin = "whoami"\nmin_workers = 1\nmax_workers = 1\n[[functions]]\nname = "echo"\nbuiltin = "echo"\nmin_workers = 2\nmax_workers = 2\n' >"$config"
  "$BIN" serve --config "$config" --listen 127.0.0.1:0 --poll spin --io-cores 14,15 \
    --worker-cores 1-13 >"$log" 2>&1 &
  local pid=$!
  local url
  url=$(server_url "$log")
  sleep 1 # the workers' handshakes
  echo "=== loops ($(date +%T))"
  {
    grep 'listening\|function' "$log"
    for f in whoami echo; do
      for i in $(seq 8); do
        printf '%s %s: ' "$f" "$i"
        timeout 20 "${LOAD_BIN:-$BIN}" bench load "$url/function/$f" --pingpong 5000 \
          --cores 0 --rate 100 --duration 100ms --warmup 0s --body p 2>&1 |
          grep -o 'ping-pong baseline.*'
      done
    done
  } >"$OUT/loops.txt" 2>&1
  cat "$OUT/loops.txt"
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

# Delegated wakes (docs/architecture.md, "Delegated wakes on a shared
# core") where they apply: yielding workers on one core, here shared with
# the client as on the 2-core VM; both settings, each chain − floor printed
# by the tool. Workers on cores of their own (every other step) spin and
# have no board, so no other step depends on the setting.
step_delegation() {
  for d in false true; do
    run_step "delegation-$d" 120 "$BIN" bench engine --client-core 1 --io-core 15 \
      --worker-cores 1 --modes spin,adaptive --quick \
      --engine-arg=--worker-poll=yield --engine-arg=--delegate-wakes=$d \
      --json "$OUT/delegation-$d.json"
  done
}

# The adaptive io loop's budget stretched over the gaps between requests
# (`spin_max_us`, docs/configuration.md) on a core of its own, at rates
# whose gaps (250 µs-2 ms) are longer than its 50 µs `spin_us`: off
# (`--spin-max-us 0`) and on (the default), two rounds, a fresh engine
# each. On the 2-core VM it took the chain's p50 at 1375/s from 97-134 µs
# to 43-50 (docs/operations.md, "Low rates").
step_low_rate() {
  local config="$OUT/low-rate.toml" body
  printf '[[functions]]\nname = "foo"\nbuiltin = "foo"\n[[functions]]\nname = "bar"\nbuiltin = "bar"\n' >"$config"
  body=$(printf 'x%.0s' $(seq 64))
  for round in 1 2; do
    for max in 0 2000; do
      local name="low-rate-$max-$round" log="$OUT/low-rate-$max-$round-serve.log"
      "$BIN" serve --config "$config" --listen 127.0.0.1:0 --io-cores 15 --worker-cores 1-13 \
        --spin-max-us "$max" >"$log" 2>&1 &
      local pid=$!
      local url
      url=$(server_url "$log")
      sleep 1 # the workers' handshakes
      TAIL_LINES=16 run_step "$name" 40 "${LOAD_BIN:-$BIN}" bench load "$url/function/foo" \
        --method POST --body "$body" --rate 500,1000,2000,4000 --duration 3s --warmup 500ms \
        --connections 16 --cores 0 --poll spin --json "$OUT/$name.json"
      kill -INT "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    done
  done
}

for step in $STEPS; do
  case $step in
    latency) step_latency ;;
    throughput) step_throughput ;;
    serve-throughput) step_serve_throughput ;;
    generator) step_generator ;;
    compare) step_compare ;;
    echo-ceiling) step_echo_ceiling ;;
    profile) step_profile ;;
    loops) step_loops ;;
    delegation) step_delegation ;;
    low-rate) step_low_rate ;;
    *) echo "host16: unknown step $step" >&2; exit 2 ;;
  esac
done
echo "host16: done in $SECONDS s"
