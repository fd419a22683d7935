#!/usr/bin/env bash
# One device call for what was merged without a GPU, in the order PARTS names
# them (default "multi rpc evolve python"):
#   multi     the multi-kernel Evaluate (two SM90_Evaluator tests)
#   gputests  the whole GPU test binary
#   rpc       the RPC GPU tests (two gtest shards side by side)
#   evolve    the example evolution loop on a suite row (issue 18's figures)
#   python    the Python GPU round (issue 15: tests, call overhead, profile)
#   hit       the hit-latency bench on the box's cores (issue 17; carry build/hitkit)
# Each part's summary is appended to $OUT/summary.txt as it finishes, so a call
# cut at its time limit still brings back what ran; logs under $OUT/logs.tgz.
#   OUT=dir bash bench/device/verify_round.sh   (repo root; carry the bundle tarball in dist/,
#   build/pydev from make_pydev.sh and build/gpu_handles)
set -u
export PYTHONUNBUFFERED=1
final=$OUT
OUT=$final/work; mkdir -p $OUT
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
B=dist/flashcore-0.1.0-linux-x86_64/bin

part_multi() {
  FLASHCORE_WORKER=$B/flashcore_worker timeout 90 $B/flashcore_gpu_tests \
    --gtest_filter='SM90_Evaluator.InProcessThreeKernelsTimedInterleavedInOneCall:SM90_Evaluator.FaultingKernelAmongSeveralFailsTheCallNamingIt' \
    > $OUT/gpu_multi.log 2>&1
  echo "gpu multi-kernel tests rc $?"
  grep -E '^\[  (PASSED|FAILED)|FAILED  \]|Failure' $OUT/gpu_multi.log | cut -c1-200 | head -8
}
part_gputests() {
  FLASHCORE_WORKER=$B/flashcore_worker timeout ${GPU_TIMEOUT:-200} $B/flashcore_gpu_tests > $OUT/gpu_tests.log 2>&1
  echo "gpu tests rc $?"
  grep -E '^\[  (PASSED|FAILED|SKIPPED)|FAILED  \]|tests ran' $OUT/gpu_tests.log | cut -c1-200 | head -20
}
part_rpc() {
  bash bench/device/rpc_gpu_tests.sh $OUT/rpc_gpu_tests.log ${RPC_TIMEOUT:-330}
  grep -E '^\[ wrong' $OUT/rpc_gpu_tests.log | cut -c1-200 | head -14
}
part_evolve() {
  OUT=$OUT GENERATIONS=${GENERATIONS:-10} EVOLVE_TIMEOUT=${EVOLVE_TIMEOUT:-150} bash bench/device/evolve_round.sh
}
part_python() {
  OUT=$OUT timeout ${PYTHON_TIMEOUT:-150} bash bench/device/python_round.sh
  cp $OUT/py_overhead_*.json $final/ 2>/dev/null
}
part_hit() {
  OUT=$OUT timeout ${HIT_TIMEOUT:-240} bash bench/device/hit_round.sh > $OUT/hit_round.log 2>&1
  echo "hit round rc $?"
  cat $OUT/hit_run*.md > $final/hit_tables.md 2>/dev/null
}

nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader | tee $final/summary.txt
for part in ${PARTS:-multi rpc evolve python}; do
  start=$SECONDS
  "part_$part" 2>&1 | tee -a $final/summary.txt
  echo "== $part $((SECONDS - start)) s" | tee -a $final/summary.txt
done
cp $OUT/evolve_loop.log $final/ 2>/dev/null
tar czf $final/logs.tgz -C $OUT . && rm -rf $OUT
