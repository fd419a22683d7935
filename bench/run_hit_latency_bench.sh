#!/usr/bin/env bash
# Cache-hit latency over loopback (bench/RESULTS.md §4): builds
# hit_latency_bench and flashcored, starts a scratch redis-server (Debian's
# package) and a flashcored with a scratch cache, each a process of its own on
# a free port, runs the bench against both and stops them. Extra arguments go
# to the bench (--clients 8 --requests 2000 --warmup 200 --head-dim 128
# --arch sm_90a). FLASHCORED=path measures another flashcored binary. FLOOR=1
# also starts grpc_floor_server five times (callback and completion-queue
# API, 0 and 50184 bytes; the completion-queue API beside an unused callback
# service, 50184 bytes) and times them as "gRPC floor" rows. On a machine
# without the build (the GPU box: bench/device/hit_round.sh), NO_BUILD=1 with
# BENCH_BIN (hit_latency_bench and grpc_floor_server), REDIS_BIN (redis-server,
# redis-cli) and FLASHCORED.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="${BUILD_DIR:-build}"
[[ -n "${NO_BUILD:-}" ]] ||
  cmake --build "$build" --target hit_latency_bench grpc_floor_server flashcored -j "${FLASHCORE_JOBS:-2}" >/dev/null
bench_bin="${BENCH_BIN:-$build/bench}"
redis_bin="${REDIS_BIN:+$REDIS_BIN/}"
flashcored="${FLASHCORED:-$build/server/flashcored}"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${redis_bin}redis-server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
redis_pid=$!
"$flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" \
  --tuning-db "$work/tuning.db" --log-level warn 2>"$work/flashcored.log" &
daemon_pid=$!
pids=("$redis_pid" "$daemon_pid")
trap 'kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
floors=()
if [[ -n "${FLOOR:-}" ]]; then
  for api in callback async async+callback; do
    for bytes in 0 50184; do
      [[ $api == async+callback && $bytes == 0 ]] && continue
      "$bench_bin/grpc_floor_server" --api "$api" --bytes "$bytes" --port-file "$work/floor_${api}_$bytes" &
      pids+=($!)
      for _ in $(seq 100); do [ -s "$work/floor_${api}_$bytes" ] && break; sleep 0.05; done
      floors+=(--floor "$api API, $bytes bytes=127.0.0.1:$(cat "$work/floor_${api}_$bytes")")
    done
  done
fi
for _ in $(seq 100); do "${redis_bin}redis-cli" -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
for _ in $(seq 200); do [ -s "$work/port" ] && break; sleep 0.05; done
[ -s "$work/port" ] || { echo "flashcored did not start:" >&2; cat "$work/flashcored.log" >&2; exit 1; }
echo "redis-server $("${redis_bin}redis-server" --version | sed 's/.*v=\([^ ]*\).*/\1/'), $(nproc) CPUs, $(uname -srm)" >&2
"$bench_bin/hit_latency_bench" --redis "redis://127.0.0.1:$port/0" \
  --address "127.0.0.1:$(cat "$work/port")" "${floors[@]}" "$@"
