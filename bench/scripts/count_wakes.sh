#!/usr/bin/env bash
# How many futex and sched_yield system calls the engine and its workers
# make per request of the foo→bar chain under open-loop load
# (docs/architecture.md, "Delegated wakes on a shared core": what the wake
# watch costs in wakes).
#
# Usage: bench/scripts/count_wakes.sh BINARY RATE [SERVE_ARG…]
#   BINARY: a release `nocturne`; RATE: requests/s (a whole number);
#   SERVE_ARG: extra `nocturne serve` arguments, e.g. --delegate-wakes false
#
# Placement as `bench compare` on 2 cores: the engine's io loop and its
# workers on core 1, `bench load` (16 connections, 64-byte bodies, 5 s
# after a 1 s warm-up) on core 0. `perf stat` counts the calls of the
# engine and, separately, of its workers for 2 s in the middle of the
# window. Tracing each call slows the loop (an idle one yields hundreds
# of thousands of times a second), so the latencies printed are not the
# engine's: use `bench compare` or `bench load` alone for those.
# Needs perf (with syscall tracepoints: run as root), curl and cores 0
# and 1. About 10 s. The engine is stopped on any exit.
set -euo pipefail
usage="usage: bench/scripts/count_wakes.sh BINARY RATE [SERVE_ARG…]"
if (($# < 2)); then
    echo "$usage" >&2
    exit 2
fi
bin=$1
rate=$2
shift 2
if [[ ! -x $bin || -d $bin ]]; then
    echo "count_wakes: $bin is not an executable file" >&2
    echo "$usage" >&2
    exit 2
fi
if [[ ! $rate =~ ^[1-9][0-9]*$ ]]; then
    echo "count_wakes: RATE must be a whole number of requests/s, not '$rate'" >&2
    echo "$usage" >&2
    exit 2
fi
for program in perf curl; do
    if ! command -v "$program" >/dev/null; then
        echo "count_wakes: needs $program" >&2
        exit 2
    fi
done

dir=$(mktemp -d /tmp/count-wakes.XXXXXX)
engine=
cleanup() {
    if [[ -n $engine ]]; then
        kill -INT "$engine" 2>/dev/null || true
        timeout 10 tail --pid="$engine" -f /dev/null 2>/dev/null || kill -KILL "$engine" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

printf '[[functions]]\nname = "foo"\nbuiltin = "foo"\n[[functions]]\nname = "bar"\nbuiltin = "bar"\n' >"$dir/foobar.toml"
"$bin" serve --config "$dir/foobar.toml" --listen 127.0.0.1:0 --io-cores 1 --worker-cores 1 "$@" \
    >"$dir/serve.log" 2>&1 &
engine=$!
url=
for _ in $(seq 100); do
    kill -0 "$engine" 2>/dev/null || break
    url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$dir/serve.log" | head -1)
    [[ -n $url ]] && curl -sf -o /dev/null "$url/healthz" && break
    url=
    sleep 0.1
done
if [[ -z $url ]]; then
    echo "count_wakes: the engine did not become healthy; its log:" >&2
    cat "$dir/serve.log" >&2
    exit 1
fi
body=$(printf 'x%.0s' $(seq 64))
"$bin" bench load "$url/function/foo" --method POST --body "$body" --rate "$rate" \
    --duration 5s --warmup 1s --connections 16 --cores 0 >"$dir/load.txt" 2>&1 &
load=$!
sleep 2.5
workers=$(pgrep -d, -P "$engine")
events=syscalls:sys_enter_futex,syscalls:sys_enter_sched_yield
perf stat -e "$events" -x, -o "$dir/engine.stat" -p "$engine" -- sleep 2 &
engine_perf=$!
perf stat -e "$events" -x, -o "$dir/workers.stat" -p "$workers" -- sleep 2
wait "$engine_perf"
if ! wait "$load"; then
    echo "count_wakes: bench load failed:" >&2
    cat "$dir/load.txt" >&2
    exit 1
fi
grep -E '^(rate|[0-9.]+k?/s )' "$dir/load.txt"
for who in engine workers; do
    awk -F, -v who="$who" -v rate="$rate" '
        /^#/ || NF < 3 { next }
        { printf "%-8s %-32s %10.0f/s %8.3f per request\n", who, $3, $1 / 2, $1 / 2 / rate }
    ' "$dir/$who.stat"
done
