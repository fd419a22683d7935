#!/usr/bin/env bash
# The GPU checks, in one go on a GPU box, from a bundle (deploy/bundle.sh):
#   1. starts flashcored from the bundle on a loopback port,
#   2. runs the GPU tests against it over gRPC (fp64 reference, poisoned outputs),
#      and the RPC layer's GPU tests (Validate and Tune through real workers,
#      a deliberately faulting candidate among them),
#   3. runs compute-sanitizer memcheck, racecheck and synccheck on one
#      representative case per (dtype, head_dim, causal),
#   4. times the cold compile / memory hit / disk hit path over gRPC,
#   5. sweeps tile configs per suite shape (attention_bench) and times PyTorch
#      SDPA's flash and cuDNN backends side by side (compare_sdpa.py).
#
#   bench/run_on_device.sh BUNDLE_DIR OUT_DIR [steps...]   steps: tests rpc sanitize cache perf (default all)
#   environment: FLASHCORE_DAEMON_ARGS (extra daemon flags), FLASHCORE_BENCH_ARGS (attention_bench flags)
#
# Logs and tables land in OUT_DIR; the last lines printed are the summary.
set -uo pipefail
bundle=$(cd "$1" && pwd); out=$2; shift 2
steps=${*:-tests rpc sanitize cache perf}
mkdir -p "$out"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$bundle/bin
summary=()
note() { summary+=("$*"); echo "== $*"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"

work=$(mktemp -d)
# FLASHCORE_DAEMON_ARGS: extra daemon flags, e.g. --templates-dir DIR to check
# a template edit with an existing bundle.
# shellcheck disable=SC2086
"$bin/flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" --tuning-db "$work/tuning.db" \
  --log-level warn ${FLASHCORE_DAEMON_ARGS:-} >"$out/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
[[ -s $work/port ]] || { cat "$out/daemon.log"; echo "daemon did not start"; exit 1; }
export FLASHCORE_ADDRESS=127.0.0.1:$(cat "$work/port")
note "daemon from bundle at $FLASHCORE_ADDRESS"

if [[ " $steps " == *" tests "* ]]; then
  "$bin/flashcore_gpu_tests" 2>&1 | tee "$out/gpu_tests.log" | grep -E '^\[ (result|gpu)|FAILED|PASSED|SKIPPED'
  note "gpu tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/gpu_tests.log" | tr '\n' ' ')"
fi

if [[ " $steps " == *" rpc "* ]]; then
  FLASHCORE_WORKER_BINARY=$bin/flashcore_worker FLASHCORE_COMPILE_WORKER_BINARY=$bin/flashcore_compile_worker \
    "$bin/flashcore_rpc_tests" --gtest_filter='*GpuTest.*' \
    2>&1 | tee "$out/rpc_gpu_tests.log" | grep -E '^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|Failure'
  note "rpc gpu tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/rpc_gpu_tests.log" | tr '\n' ' ')"
fi

if [[ " $steps " == *" sanitize "* ]]; then
  # One case per (dtype, head_dim, causal), plus each Q placement and
  # shared-memory layout at head_dim 64, 96 and 128.
  filter='*/*_S500:*/*_S777_cfg*_swz:*/*_S777_cfg*_pad'
  for tool in memcheck racecheck synccheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin/flashcore_gpu_tests" \
      --gtest_filter="$filter" >"$out/sanitizer_$tool.log" 2>&1
    rc=$?
    note "compute-sanitizer $tool (rc $rc): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer_$tool.log" | tail -1) $(grep -cE '^\[       OK' "$out/sanitizer_$tool.log") tests ok"
  done
fi

if [[ " $steps " == *" cache "* ]] && [[ -x $bin/compile_cache_bench ]]; then
  "$bin/compile_cache_bench" >"$out/compile_cache.md" 2>&1
  note "compile/cache bench rc $?"; tail -12 "$out/compile_cache.md"
fi

if [[ " $steps " == *" perf "* ]]; then
  "$bin/attention_bench" --address "$FLASHCORE_ADDRESS" --json "$out/flashcore.json" \
    ${FLASHCORE_BENCH_ARGS:-} >"$out/attention_bench.log" 2>&1
  note "attention_bench rc $?"; grep best "$out/attention_bench.log"
  PYTHONUNBUFFERED=1 python3 "$here/compare_sdpa.py" "$out/flashcore.json" --out "$out/table.md" \
    --json "$out/sdpa.json" >"$out/compare.log" 2>&1
  note "compare_sdpa rc $?"; cat "$out/table.md"
fi

kill -TERM $daemon; wait $daemon; note "daemon exit code $? after SIGTERM"
printf '%s\n' "${summary[@]}"
