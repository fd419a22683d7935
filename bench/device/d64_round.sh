#!/usr/bin/env bash
# One device call for issue 11's last tie (D 64, B4 H16 S2048): the Hopper
# family's D 64 configs around the kept one, timed beside SDPA with rotated
# rounds (sm90_lab.py), then ncu of one launch of the kept config with every
# pipe's utilization, the stall reasons per issued instruction and the SASS with
# its per-instruction counters (sass.csv.gz), to find where a consumer warp's
# cycles go. At head_dim 64 a score element costs one MUFU.EX2 (16 a clock per
# SM) and 256 tensor FLOPs (4096 a clock per SM), so the two pipes need equal
# time and only their overlap lifts the kernel above half of either's peak.
#   OUT=dir bash bench/device/d64_round.sh   (repo root; nothing to carry)
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv,noheader
shape=${SHAPE:-4,16,16,2048,64,0}
python3 bench/hopper/sm90_lab.py --bench --dtypes ${DTYPES:-fp16,bf16} --rounds ${ROUNDS:-9} --d 64 \
  --configs "${CONFIGS:-n128s2c2oP n128s2c2o n112s2c2oP n160s2c2oP n192s2c2oP n96s2c2oP n128s3c2oP}" \
  --shapes "$shape" --json $OUT/sweep_d64.json 2>&1 | grep -vE '^compiled'
command -v ncu >/dev/null || { echo "no ncu"; exit 0; }
metrics="regex:sm__pipe_.*cycles_active.avg.pct_of_peak_sustained_active"
metrics+=",regex:sm__inst_executed_pipe_.*avg.pct_of_peak_sustained_active"
metrics+=",regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
timeout 240 ncu --clock-control none -k regex:attention_fwd_sm90 --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SourceCounters \
  --metrics "$metrics" -o $OUT/d64 python3 bench/hopper/launch_once.py --shape "$shape" \
  --configs "${NCU_CONFIG:-n128s2c2oP}" --times 2 > $OUT/ncu_run.txt 2>&1
echo "ncu rc $?"; tail -2 $OUT/ncu_run.txt
ncu -i $OUT/d64.ncu-rep --page details --print-details all > $OUT/details.txt 2>&1
grep -E "pct_of_peak|stalled|Duration" $OUT/details.txt | awk '$NF+0 > 0.05' | cut -c1-140 | head -70
ncu -i $OUT/d64.ncu-rep --page source --csv --print-source sass > $OUT/sass.csv 2>&1
echo "sass: $(wc -l < $OUT/sass.csv) lines"
gzip -f $OUT/sass.csv $OUT/details.txt; rm -f $OUT/d64.ncu-rep
