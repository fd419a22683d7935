#!/usr/bin/env bash
# One device call: Tune a subset of the Hopper suite through the bundled daemon
# (tune_suite.sh), then time the daemon's picks beside SDPA cuDNN and flash in
# one process (sm90_lab.py --only-tuned), interleaved.
#   SUITE="4,16,16,2048,64,0 ..." EVALS=48 TUNE_TIME_BUDGET_MS=45000 OUT=dir \
#     bash bench/hopper/tune_and_time.sh        (repo root, bundle tarball in dist/)
set -u
tar xzf dist/flashcore-0.1.0-linux-x86_64.tar.gz -C dist
bash bench/hopper/tune_suite.sh dist/flashcore-0.1.0-linux-x86_64 "$OUT" "${EVALS:-48}"
ds=$(for s in $SUITE; do echo "$s" | cut -d, -f5; done | sort -u | paste -sd,)
python3 bench/hopper/sm90_lab.py --bench --only-tuned --tuned "$OUT/tuned" --d "$ds" --shapes "$SUITE" \
  --dtypes "$(echo ${DTYPES:-fp16 bf16} | tr " " ,)" --rounds "${ROUNDS:-21}" --json "$OUT/h200-tuned.json"
