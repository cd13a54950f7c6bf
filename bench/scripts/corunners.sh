#!/usr/bin/env bash
# What shares the client's core, and what it costs a ping-pong round trip, on
# a 2-core machine (docs/benchmarks.md "What shares the client's core").
#
# Usage: bench/scripts/corunners.sh BINARY [ROUNDS]
#   BINARY: a release `nocturne`; ROUNDS: interleaved rounds (default 5).
#
# The client (corunner.c, C, blocking, one keep-alive connection) runs on
# core 0. Each round measures, one after the other:
#   echo-server + {nothing, 1 yield loop, 2 yield loops, 1 busy loop} on core 0
#       against `nocturne bench load-echo-server --poll spin --core 1`;
#   engine echo / engine foo: `nocturne serve --poll spin --io-cores 1
#       --worker-cores 0` (the placement of `bench engine` on 2 cores), whose
#       idle workers yield on core 0 beside the client.
# Needs a C compiler, curl, and cores 0 and 1 free. About 10 s a round.
#
# Every process it starts (servers, co-runner loops) is recorded in `pids`
# as it starts: on any exit — a failed ping, a server that never answers,
# Ctrl-C — the exit trap stops them all, with bounded waits, so that no
# busy loop outlives the script on core 0.
set -euo pipefail
usage="usage: bench/scripts/corunners.sh BINARY [ROUNDS]"
if (($# < 1 || $# > 2)); then
    echo "$usage" >&2
    exit 2
fi
if [[ ! -x $1 || -d $1 ]]; then
    echo "corunners: $1 is not an executable file" >&2
    echo "$usage" >&2
    exit 2
fi
bin=$(realpath "$1")
rounds=${2:-5}
if [[ ! $rounds =~ ^[1-9][0-9]*$ ]]; then
    echo "corunners: ROUNDS must be a positive number, got $rounds" >&2
    exit 2
fi
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d)
pids=()

# Whether process $1 still runs (a zombie, dead but not yet reaped, does not).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${stat##*) } != Z* ]]
}

cleanup() {
    local p _
    for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
    # Up to 5 s to go on SIGTERM, then SIGKILL: never an unbounded wait.
    for _ in $(seq 50); do
        local left=0
        for p in ${pids[@]+"${pids[@]}"}; do if running "$p"; then left=1; fi; done
        ((left)) || break
        sleep 0.1
    done
    for p in ${pids[@]+"${pids[@]}"}; do
        if running "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
# A signal ends the script through its exit trap.
trap 'exit 130' INT
trap 'exit 143' TERM HUP
cc -O2 -o "$work/corunner" "$here/corunners/corunner.c"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -sf -m 1 "$1" >/dev/null && return; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

echo_port=$(port)
"$bin" bench load-echo-server --listen "127.0.0.1:$echo_port" --core 1 --poll spin >"$work/echo.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$echo_port/"

# ping LABEL PORT PATH [co-runner args…]: one measurement with the co-runners running.
ping() {
    local label=$1 p=$2 path=$3
    shift 3
    local co=()
    for spec in "$@"; do
        # shellcheck disable=SC2086
        "$work/corunner" $spec &
        co+=($!)
        pids+=($!)
    done
    sleep 0.2
    printf '%-26s ' "$label"
    "$work/corunner" ping "$p" "$path" 10000
    if ((${#co[@]})); then kill "${co[@]}"; wait "${co[@]}" 2>/dev/null || true; fi
}

engine() {
    local path=$1 p
    p=$(port)
    "$bin" serve --listen "127.0.0.1:$p" --poll spin --io-cores 1 --worker-cores 0 >"$work/serve.log" 2>&1 &
    local e=$!
    pids+=($e)
    wait_http "http://127.0.0.1:$p/healthz"
    ping "engine /function/$path" "$p" "function/$path"
    kill "$e"
    wait "$e" 2>/dev/null || true
}

echo "corunners: $rounds rounds, client on core 0, servers on core 1 (µs)"
for r in $(seq "$rounds"); do
    echo "-- round $r"
    ping "echo-server alone" "$echo_port" x
    ping "echo-server + 1 yield" "$echo_port" x yield
    ping "echo-server + 2 yields" "$echo_port" x yield yield
    ping "echo-server + busy loop" "$echo_port" x busy
    engine echo
    engine foo
done
