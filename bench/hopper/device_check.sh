#!/usr/bin/env bash
# One device call for the Hopper and decode families: GPU tests from the bundle (fp64
# reference, poisoned outputs), compute-sanitizer on the sm90 S=17 and decode S=1x37 cases, HGMMA/LDL counts in
# the SASS of three served configs. Run from the
# repo root on the GPU box after deploy/bundle.sh:  OUT=dir bash bench/hopper/device_check.sh
set -u
B=dist/flashcore-0.1.0-linux-x86_64/bin
export FLASHCORE_LOG_LEVEL=warn
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
# A daemon from the bundle compiles for the tests (so NVRTC never runs under
# compute-sanitizer, whose interception hides ptxas' report).
work=$(mktemp -d)
$B/flashcored --listen 127.0.0.1:0 --port-file $work/port --cache-dir $work/cache --tuning-db $work/tuning.db --log-level warn \
  > $OUT/daemon.log 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
export FLASHCORE_ADDRESS=127.0.0.1:$(cat $work/port)
timeout ${GPU_TEST_TIMEOUT:-200} $B/flashcore_gpu_tests ${GPU_TEST_FILTER:+--gtest_filter=$GPU_TEST_FILTER} 2>&1 > $OUT/gpu_tests.log; echo "gpu tests rc $?"
grep -E '^\[  (PASSED|FAILED)  \]|FAILED  \]' $OUT/gpu_tests.log | head -20
grep -E '^\[ result' $OUT/gpu_tests.log | grep -E 'sm90_|dec_' | awk '{print $4, $6, $8}' | sort -k2 -g | tail -3
for tool in memcheck racecheck synccheck; do
  timeout ${SANITIZER_TIMEOUT:-60} compute-sanitizer --tool $tool --error-exitcode 9 $B/flashcore_gpu_tests --gtest_filter="${SANITIZER_FILTER:-*sm90_*_S17:*dec_*_S1x37}" > $OUT/san_$tool.log 2>&1
  echo "sanitizer $tool rc $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/san_$tool.log | tail -1) ok=$(grep -cE '^\[       OK' $OUT/san_$tool.log)"
done
python3 - <<'PY'
import sys; sys.path.insert(0,'bench/hopper'); sys.path.insert(0,'bench/lab')
import sm90_lab
for c in [sm90_lab.Cfg('fp16',128,True,128,2,2,True,True,True), sm90_lab.Cfg('bf16',256,False,80,2,2,True,False,True), sm90_lab.Cfg('fp16',64,False,128,3,2,True,True,True)]:
    open(f'/tmp/{c.short()}_{c.d}.cubin','wb').write(sm90_lab.compile_cfg(c)[0])
PY
kill -TERM $daemon; wait $daemon
for f in /tmp/*.cubin; do echo "$f HGMMA=$(cuobjdump -sass $f | grep -c HGMMA) LDL/STL=$(cuobjdump -sass $f | grep -cE 'LDL|STL')"; done
