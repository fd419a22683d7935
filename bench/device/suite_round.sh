#!/usr/bin/env bash
# One device call for issue 11's table: the Hopper GPU tests with sanitizers and
# the SASS check (device_check.sh), then Tune of every suite row through the
# bundled daemon and the daemon's picks timed beside SDPA cuDNN and flash in one
# process (tune_suite.sh + sm90_lab.py --only-tuned), then the RPC GPU tests.
# Everything but the table and a summary goes into logs.tgz (the device tool
# returns at most 8 files).
#   OUT=dir EVALS=8 TUNE_TIME_BUDGET_MS=10000 bash bench/device/suite_round.sh  (repo root, bundle in dist/)
# SKIP_CHECK=1 leaves out device_check.sh, RPC_TESTS= the RPC GPU tests.
set -u
export PYTHONUNBUFFERED=1
final=$OUT
OUT=$final/work; mkdir -p $OUT
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
{
  if [[ -z "${SKIP_CHECK:-}" ]]; then
    start=$SECONDS
    GPU_TEST_FILTER=${GPU_TEST_FILTER:-'*sm90_*:SM90_Evaluator.*'} GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-150} \
      OUT=$OUT bash bench/hopper/device_check.sh 2>&1 | grep -v '^/tmp/.*cubin HGMMA=0'
    echo "== device_check $((SECONDS - start)) s"
  fi
  start=$SECONDS
  SUITE=${SUITE:-} bash bench/hopper/tune_suite.sh dist/flashcore-0.1.0-linux-x86_64 $OUT ${EVALS:-8}
  echo "== tune_suite $((SECONDS - start)) s"
  start=$SECONDS
  python3 bench/hopper/sm90_lab.py --bench --only-tuned --tuned $OUT/tuned --rounds ${ROUNDS:-11} \
    ${SUITE:+--shapes "$SUITE"} --json $final/h200-latest.json 2>&1 | grep -vE '^compiled'
  echo "== bench $((SECONDS - start)) s"
  if [[ -n "${RPC_TESTS-1}" ]]; then
    start=$SECONDS
    bash bench/device/rpc_gpu_tests.sh $OUT/rpc_gpu_tests.log ${RPC_TIMEOUT:-200}
    echo "== rpc $((SECONDS - start)) s"
  fi
} 2>&1 | tee $final/summary.txt
tar czf $final/logs.tgz -C $OUT . && rm -rf $OUT
