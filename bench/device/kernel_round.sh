#!/usr/bin/env bash
# One device call after a Hopper kernel change: the A/B against earlier copies
# (ab_round.sh, BASE as there), then from the bundle the Hopper GPU tests with
# sanitizers and the SASS check (device_check.sh) and the RPC GPU tests
# (workers, Tune, Validate, EvaluateSource). Logs go into logs.tgz (the device
# tool returns at most 8 files); summary.txt is the console.
#   OUT=dir BASE="ab_base/kernel_templates ..." bash bench/device/kernel_round.sh
set -u
export PYTHONUNBUFFERED=1
final=$OUT
mkdir -p $final/ab $final/gpu
{
  start=$SECONDS
  OUT=$final/ab bash bench/device/ab_round.sh
  echo "== ab_round $((SECONDS - start)) s"
  tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
  start=$SECONDS
  GPU_TEST_FILTER=${GPU_TEST_FILTER:-'*sm90_*:SM90_Evaluator.*'} GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-150} \
    SANITIZER_TIMEOUT=${SANITIZER_TIMEOUT:-60} OUT=$final/gpu bash bench/hopper/device_check.sh
  echo "== device_check $((SECONDS - start)) s"
  start=$SECONDS
  bash bench/device/rpc_gpu_tests.sh $final/gpu/rpc_gpu_tests.log ${RPC_TIMEOUT:-150}
  echo "== rpc $((SECONDS - start)) s"
} 2>&1 | tee $final/summary.txt
tar czf $final/logs.tgz -C $final ab gpu && rm -rf $final/ab $final/gpu
