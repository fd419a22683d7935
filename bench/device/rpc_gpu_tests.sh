#!/usr/bin/env bash
# The RPC layer's GPU tests from the untarred bundle (workers, Tune, Validate,
# EvaluateSource), their log in LOG, the summary lines on stdout. Two gtest
# shards run side by side (each test starts its own daemon and workers; the
# tests check verdicts and their own consistency, not absolute times).
#   bash bench/device/rpc_gpu_tests.sh LOG [timeout_s]   (repo root, bundle in dist/)
set -u
B=dist/flashcore-0.1.0-linux-x86_64/bin
shards=${RPC_SHARDS:-2}
for ((i = 0; i < shards; ++i)); do
  GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i \
    FLASHCORE_WORKER_BINARY=$B/flashcore_worker FLASHCORE_COMPILE_WORKER_BINARY=$B/flashcore_compile_worker \
    timeout "${2:-200}" $B/flashcore_rpc_tests --gtest_filter='*GpuTest.*' > "$1.$i" 2>&1 &
done
rcs=""
for job in $(jobs -p); do wait "$job"; rcs="$rcs $?"; done
cat "$1".? > "$1"; rm -f "$1".?
echo "rpc gpu rc$rcs"
grep -E '^\[  (PASSED|FAILED)  \]|FAILED  \]|^\[ (evolve|family)' "$1" | cut -c1-300
