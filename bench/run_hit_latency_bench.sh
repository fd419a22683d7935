#!/usr/bin/env bash
# Cache-hit latency over loopback (bench/RESULTS.md §4): builds
# hit_latency_bench, starts a scratch redis-server on a free port (Debian's
# package), runs the bench against it and stops it. Extra arguments go to the
# bench (--clients 8 --requests 2000 --warmup 200 --head-dim 128 --arch sm_90a).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="${BUILD_DIR:-build}"
cmake --build "$build" --target hit_latency_bench -j "${FLASHCORE_JOBS:-2}" >/dev/null
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $(nproc) CPUs, $(uname -srm)" >&2
"$build/bench/hit_latency_bench" --redis "redis://127.0.0.1:$port/0" "$@"
