#!/usr/bin/env bash
# The example evolution loop against the bundled daemon on the GPU box: valid %,
# best time, speed over the served best and evaluations a minute, per generation
# (issue 18's figures for bench/RESULTS.md), on the suite row B4 H16 S2048 D64 fp16.
#   OUT=dir GENERATIONS=10 bash bench/device/evolve_round.sh   (repo root, bundle untarred in dist/)
set -u
B=dist/flashcore-0.1.0-linux-x86_64/bin
work=$(mktemp -d)
$B/flashcored --listen 127.0.0.1:0 --port-file $work/port --cache-dir $work/cache --tuning-db $work/tuning.db \
  --log-level warn --worker-binary $B/flashcore_worker > $OUT/evolve_daemon.log 2>&1 &
d=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
PYTHONPATH=$PWD/build/pydev timeout ${EVOLVE_TIMEOUT:-300} python3 client/python/examples/evolve_loop.py \
  --address 127.0.0.1:$(cat $work/port) --generations ${GENERATIONS:-10} --population ${POPULATION:-8} \
  --batch ${BATCH:-4} --heads 16 --seq-q 2048 --head-dim 64 --dtype fp16 2>&1 | tee $OUT/evolve_loop.log | tail -20
echo "evolve loop rc ${PIPESTATUS[0]}"
kill -TERM $d; wait $d
