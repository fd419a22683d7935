#!/usr/bin/env bash
# Issue 17's hit-latency table on the GPU box's 16 cores (bench/RESULTS.md §4):
# run_hit_latency_bench.sh with the gRPC floor servers, three times, from the
# untarred bundle (flashcored, hit_latency_bench, grpc_floor_server) and
# build/hitkit (make_hitkit.sh: redis-server, redis-cli). Tables in $OUT.
#   OUT=dir bash bench/device/hit_round.sh   (repo root; carry the bundle tarball and build/hitkit)
set -u
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
B=$PWD/dist/flashcore-0.1.0-linux-x86_64/bin
K=$PWD/build/hitkit
export LD_LIBRARY_PATH=$K/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for run in 1 2 3; do
  NO_BUILD=1 BENCH_BIN=$B REDIS_BIN=$K/bin FLASHCORED=$B/flashcored FLOOR=1 \
    timeout 150 bash bench/run_hit_latency_bench.sh "$@" > "$OUT/hit_run$run.md" 2>&1
  echo "run $run rc $?"; uptime
done
cat "$OUT"/hit_run*.md
