#!/usr/bin/env bash
# One device call that compares the Hopper kernel in kernel_templates/ with an
# earlier copy (BASE, a kernel_templates folder) on the suite rows that decide
# issue 11, side by side with SDPA in one process; checks the new kernel against
# fp64; and profiles one D 64 launch of each with ncu.
#   OUT=dir BASE=ab_base/kernel_templates bash bench/device/ab_round.sh   (repo root)
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
lab=bench/hopper/sm90_lab.py
python3 $lab --check --dtypes ${DTYPES:-fp16,bf16} --d 64,128 --configs "${CHECK_CONFIGS:-n128s2c2oP n128s3c2poP}" \
  2>&1 | grep -E '^check|FAIL' | tee $OUT/check.log
python3 $lab --bench --dtypes ${DTYPES:-fp16,bf16} --rounds ${ROUNDS:-11} --d 64 --configs "${D64_CONFIGS:-n128s2c2oP n128s3c2poP}" \
  --baseline "$BASE" --shapes "${D64_SHAPES:-4,16,16,2048,64,0 1,16,16,16384,64,0}" --json $OUT/ab_d64.json \
  2>&1 | grep -vE '^compiled' | tee $OUT/ab_d64.log
python3 $lab --bench --dtypes ${DTYPES:-fp16,bf16} --rounds ${ROUNDS:-11} --d 128 --configs "${D128_CONFIGS:-n128s2c2poP n176s2c2pP}" \
  --baseline "$BASE" --shapes "${D128_SHAPES:-4,16,16,2048,128,0 4,16,16,2048,128,1 2,16,16,8192,128,0}" \
  --json $OUT/ab_d128.json 2>&1 | grep -vE '^compiled' | tee $OUT/ab_d128.log
if [[ -n "${D256_SHAPES:-}" ]]; then
  python3 $lab --bench --dtypes ${DTYPES:-fp16,bf16} --rounds ${ROUNDS:-11} --d 256 --configs "${D256_CONFIGS:-n80s2c2pP}" \
    --baseline "$BASE" --shapes "$D256_SHAPES" --json $OUT/ab_d256.json 2>&1 | grep -vE '^compiled' | tee $OUT/ab_d256.log
fi
if [[ -n "${NCU_SHAPE-4,16,16,2048,64,0}" ]] && command -v ncu >/dev/null; then
  timeout 240 ncu --clock-control none -k regex:attention_fwd_sm90 --launch-skip 0 --launch-count 6 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats python3 bench/hopper/launch_once.py --shape ${NCU_SHAPE:-4,16,16,2048,64,0} \
    --configs "${NCU_CONFIGS:-n128s2c2oP}" --baseline "$BASE" --times 2 > $OUT/ncu.txt 2>&1
  echo "ncu rc $?"
  grep -E 'attention_fwd_sm90|Duration|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc A|No Eligible|Warp Cycles Per Issued|Stall|Pipe' $OUT/ncu.txt | cut -c1-150 | head -60
fi
