#!/usr/bin/env bash
# One device call for the Python parts: the Python GPU tests with the families
# the daemon picks (decode, Hopper; offline handle cache), the fp64 cases with
# the sm80 family named, the call overhead of both families, where
# the per-call time goes (bench/python/profile_call.py, call_parts.py), and record_shapes
# with PyTorch. Logs under $OUT.
#   OUT=dir bash bench/device/python_round.sh   (repo root, bundle untarred in dist/,
#   build/pydev from make_pydev.sh, build/gpu_handles from tests/python/prepare_gpu_handles.py)
set -u
root=$PWD
B=$root/dist/flashcore-0.1.0-linux-x86_64/bin
export PYTHONPATH=$root/build/pydev FLASHCORE_TEST_PACKAGE_DIR=$root/build/pydev PYTHONUNBUFFERED=1
cd tests/python
FLASHCORE_TEST_OFFLINE_CACHE=$root/build/gpu_handles \
  FLASHCORE_TEST_RESULTS=$OUT/py_overhead_auto.json timeout 240 python3 -m pytest -q -p no:cacheprovider \
  test_torch_gpu.py > $OUT/pytest_gpu_auto.log 2>&1
echo "pytest gpu (the daemon's families) rc $?: $(tail -1 $OUT/pytest_gpu_auto.log)"
grep -E "^FAILED|^ERROR" $OUT/pytest_gpu_auto.log | cut -c1-200 | head -12
FLASHCORE_TORCH_HOPPER=0 FLASHCORE_TORCH_DECODE=0 FLASHCORE_TEST_OFFLINE_CACHE=$root/build/gpu_handles \
  FLASHCORE_TEST_RESULTS=$OUT/py_overhead_sm80.json timeout 120 python3 -m pytest -q -p no:cacheprovider \
  test_torch_gpu.py -k "overhead or fp64_reference" > $OUT/pytest_sm80.log 2>&1
echo "pytest sm80 named (fp64 cases, overhead) rc $?: $(tail -1 $OUT/pytest_sm80.log)"
grep -E "^FAILED|^ERROR" $OUT/pytest_sm80.log | cut -c1-200 | head -8
FLASHCORE_DAEMON=$B/flashcored timeout 120 python3 -m pytest -q -p no:cacheprovider test_record_shapes.py \
  > $OUT/pytest_record_shapes.log 2>&1
echo "pytest record_shapes rc $?: $(tail -1 $OUT/pytest_record_shapes.log)"
cd $root
for family in hopper sm80; do
  FLASHCORE_TORCH_HOPPER=$([[ $family == hopper ]] && echo 1 || echo 0) timeout 120 \
    python3 bench/python/profile_call.py --cache build/gpu_handles > $OUT/profile_$family.txt 2>&1
  echo "profile $family rc $?"; head -2 $OUT/profile_$family.txt
done
# What each piece of the short path costs here, beside the whole calls (issue 15).
timeout 120 python3 bench/python/call_parts.py --cache build/gpu_handles --json $OUT/call_parts.json \
  > $OUT/call_parts.txt 2>&1
echo "call_parts rc $?"; grep -v "^  " $OUT/call_parts.txt | head -20
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("py_overhead_*.json")):
    d = json.loads(f.read_text())
    print(f.name, {k: (round(v, 1) if isinstance(v, float) else v) for k, v in d.items()})
PY
