#!/usr/bin/env bash
# One device call for what 2026-12-07's second session merged without a GPU:
# the multi-kernel Evaluate (two SM90_Evaluator tests), the RPC GPU tests
# (TuneGpuTest's finalists in one worker call, TuneWrongGpuTest, the rest),
# the example evolution loop on a suite row (issue 18's figures) and the
# Python round (issue 15). About 8 minutes in all, more than one call allows
# once the RPC tests run long: PARTS picks (default "multi rpc evolve python";
# "gputests" runs the whole GPU test binary);
# logs under $OUT/logs.tgz.
#   OUT=dir bash bench/device/verify_round.sh   (repo root; carry the bundle tarball in dist/,
#   build/pydev from make_pydev.sh and build/gpu_handles)
set -u
export PYTHONUNBUFFERED=1
final=$OUT
OUT=$final/work; mkdir -p $OUT
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
B=dist/flashcore-0.1.0-linux-x86_64/bin
parts=" ${PARTS:-multi rpc evolve python} "
{
  nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
  if [[ $parts == *" multi "* ]]; then
  start=$SECONDS
  FLASHCORE_WORKER=$B/flashcore_worker timeout 90 $B/flashcore_gpu_tests \
    --gtest_filter='SM90_Evaluator.InProcessThreeKernelsTimedInterleavedInOneCall:SM90_Evaluator.FaultingKernelAmongSeveralFailsTheCallNamingIt' \
    > $OUT/gpu_multi.log 2>&1
  echo "gpu multi-kernel tests rc $? $((SECONDS - start)) s"
  grep -E '^\[  (PASSED|FAILED)|FAILED  \]|Failure' $OUT/gpu_multi.log | cut -c1-200 | head -8
  fi
  if [[ $parts == *" gputests "* ]]; then
  start=$SECONDS
  FLASHCORE_WORKER=$B/flashcore_worker timeout ${GPU_TIMEOUT:-200} $B/flashcore_gpu_tests > $OUT/gpu_tests.log 2>&1
  echo "gpu tests rc $? $((SECONDS - start)) s"
  grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|tests ran' $OUT/gpu_tests.log | cut -c1-200 | head -20
  fi
  if [[ $parts == *" rpc "* ]]; then
  start=$SECONDS
  bash bench/device/rpc_gpu_tests.sh $OUT/rpc_gpu_tests.log ${RPC_TIMEOUT:-330}
  grep -E '^\[ wrong' $OUT/rpc_gpu_tests.log | cut -c1-200 | head -14
  echo "== rpc $((SECONDS - start)) s"
  fi
  if [[ $parts == *" evolve "* ]]; then
  start=$SECONDS
  OUT=$OUT GENERATIONS=${GENERATIONS:-10} EVOLVE_TIMEOUT=${EVOLVE_TIMEOUT:-150} bash bench/device/evolve_round.sh
  echo "== evolve $((SECONDS - start)) s"
  fi
  if [[ $parts == *" python "* ]]; then
  start=$SECONDS
  OUT=$OUT timeout 150 bash bench/device/python_round.sh
  echo "== python $((SECONDS - start)) s"
  fi
} 2>&1 | tee $final/summary.txt
cp $OUT/evolve_loop.log $OUT/py_overhead_*.json $final/ 2>/dev/null
tar czf $final/logs.tgz -C $OUT . && rm -rf $OUT
