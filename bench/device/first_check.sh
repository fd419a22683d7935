#!/usr/bin/env bash
# One device call: the Hopper and decode GPU tests with sanitizers (device_check.sh),
# the RPC layer's GPU tests (workers), Validate through the daemon for a decode and
# a Hopper kernel (the evaluation worker's ABI 2/3 paths), and the Python GPU tests
# with the Hopper family on (offline handle cache made by prepare_gpu_handles.py).
#   OUT=dir bash bench/device/first_check.sh     (from the repo root, bundle tarball in dist/,
#   build/pydev from make_pydev.sh, build/gpu_handles from tests/python/prepare_gpu_handles.py)
set -u
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
B=dist/flashcore-0.1.0-linux-x86_64/bin
GPU_TEST_FILTER=${GPU_TEST_FILTER:-'*sm90_*:*dec_*:SM90_Evaluator.*'} GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-300} \
  bash bench/hopper/device_check.sh
echo "== rpc gpu tests"
bash bench/device/rpc_gpu_tests.sh $OUT/rpc_gpu_tests.log 240
echo "== validate through the daemon"
work=$(mktemp -d)
$B/flashcored --listen 127.0.0.1:0 --port-file $work/port --cache-dir $work/cache --tuning-db $work/tuning.db --log-level warn \
  --worker-binary $B/flashcore_worker > $OUT/validate_daemon.log 2>&1 &
d=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
cli=($B/flashcore --address 127.0.0.1:$(cat $work/port) --timeout-ms 300000)
for args in "--template attention_decode --dtype bf16 --head-dim 128 --batch 8 --heads 32 --kv-heads 8 --seq-q 1 --seq-k 4096" \
            "--template attention_decode --dtype fp16 --head-dim 64 --batch 1 --heads 32 --kv-heads 8 --seq-q 1 --seq-k 33333" \
            "--dtype bf16 --head-dim 128 --batch 2 --heads 32 --kv-heads 8 --seq-q 1 --seq-k 1000" \
            "--template attention_fwd_sm90 --arch sm_90a --dtype fp16 --head-dim 128 --causal --batch 2 --heads 16 --seq-q 1000 --layout bhsd"; do
  echo "validate $args"; timeout 200 "${cli[@]}" validate $args 2>&1 | tail -8
done
kill -TERM $d; wait $d
echo "== python gpu tests (FLASHCORE_TORCH_HOPPER=1, offline handles)"
root=$PWD
(cd tests/python && PYTHONPATH=$root/build/pydev FLASHCORE_TEST_PACKAGE_DIR=$root/build/pydev FLASHCORE_TORCH_HOPPER=1 \
  FLASHCORE_TEST_OFFLINE_CACHE=$root/build/gpu_handles FLASHCORE_TEST_RESULTS=$OUT/py_overhead.json \
  timeout 240 python3 -m pytest -q -p no:cacheprovider test_torch_gpu.py > $OUT/pytest_gpu.log 2>&1; echo "pytest rc $?")
tail -25 $OUT/pytest_gpu.log
cat $OUT/py_overhead.json 2>/dev/null
