#!/usr/bin/env bash
# One device call after a decode or Python change: the decode GPU tests with
# sanitizers, the Python GPU tests with the Hopper family on (offline handles),
# then the decode suite tuned and timed through the daemon.
#   OUT=dir bash bench/device/decode_round.sh [max_evals]   (bundle tarball in dist/)
set -u
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
GPU_TEST_FILTER='*dec_*' GPU_TEST_TIMEOUT=200 bash bench/hopper/device_check.sh 2>&1 | grep -v '\.cubin'
root=$PWD
(cd tests/python && PYTHONPATH=$root/build/pydev FLASHCORE_TEST_PACKAGE_DIR=$root/build/pydev \
  FLASHCORE_TORCH_HOPPER=1 FLASHCORE_TEST_OFFLINE_CACHE=$root/build/gpu_handles \
  FLASHCORE_TEST_RESULTS=$OUT/py_overhead.json timeout 200 python3 -m pytest -q -p no:cacheprovider \
  test_torch_gpu.py > $OUT/pytest_gpu.log 2>&1; echo "pytest rc $?")
tail -2 $OUT/pytest_gpu.log; cat $OUT/py_overhead.json 2>/dev/null
TUNE_TIME_BUDGET_MS=${TUNE_TIME_BUDGET_MS:-20000} ROUNDS=${ROUNDS:-11} \
  bash bench/decode/served_suite.sh dist/flashcore-0.1.0-linux-x86_64 $OUT ${1:-16}
