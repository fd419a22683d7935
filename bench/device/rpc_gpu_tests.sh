#!/usr/bin/env bash
# The RPC layer's GPU tests from the untarred bundle (workers, Tune, Validate,
# EvaluateSource), their log in LOG, the summary lines on stdout.
#   bash bench/device/rpc_gpu_tests.sh LOG [timeout_s]   (repo root, bundle in dist/)
set -u
B=dist/flashcore-0.1.0-linux-x86_64/bin
FLASHCORE_WORKER_BINARY=$B/flashcore_worker FLASHCORE_COMPILE_WORKER_BINARY=$B/flashcore_compile_worker \
  timeout "${2:-200}" $B/flashcore_rpc_tests --gtest_filter='*GpuTest.*' > "$1" 2>&1
echo "rpc gpu rc $?"
grep -E '^\[  (PASSED|FAILED)  \]|FAILED  \]|^\[ (evolve|family)' "$1" | cut -c1-300
