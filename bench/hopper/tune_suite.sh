#!/usr/bin/env bash
# Tunes the Hopper family through the daemon for every suite shape and dtype
# (evolutionary search over gRPC with the CLI, results in the daemon's
# tuning.db), writes each TuningResult as JSON to OUT_DIR/tuned/, then times
# the configs Tune chose beside SDPA (sm90_lab.py --tuned).
#
#   bench/hopper/tune_suite.sh BUNDLE_DIR OUT_DIR [max_evals]
set -uo pipefail
bundle=$(cd "$1" && pwd); out=$2; evals=${3:-12}
mkdir -p "$out/tuned"
work=$(mktemp -d)
"$bundle/bin/flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" --tuning-db "$work/tuning.db" \
  --log-level warn >"$out/tune_daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
cli=("$bundle/bin/flashcore" --address "127.0.0.1:$(cat "$work/port")" --timeout-ms 600000)
# B H KVH S D causal ($SUITE: a subset, same format)
suite=${SUITE:-"1,8,8,512,64,0 16,8,8,512,64,0 4,16,16,2048,64,0 4,16,16,2048,128,0 4,16,16,2048,128,1
2,16,16,8192,128,0 2,16,16,8192,128,1 1,16,16,16384,64,0 1,32,8,8192,128,1 4,16,16,4096,256,0"}
for dtype in ${DTYPES:-fp16 bf16}; do
  for shape in $suite; do
    IFS=, read -r b h kv s d c <<<"$shape"
    args=(--template attention_fwd_sm90 --arch sm_90a --dtype "$dtype" --head-dim "$d" --batch "$b"
          --heads "$h" --kv-heads "$kv" --seq-q "$s" --layout bhsd --searcher evolutionary
          --max-evals "$evals" --time-budget-ms "${TUNE_TIME_BUDGET_MS:-60000}")
    [[ $c == 1 ]] && args+=(--causal)
    tag=${dtype}_${shape//,/_}
    start=$SECONDS
    "${cli[@]}" --json tune "${args[@]}" >"$out/tuned/$tag.json" 2>"$out/tuned/$tag.log"
    echo "tune $tag rc=$? $((SECONDS - start)) s $(python3 -c "import json,sys; r=json.load(open('$out/tuned/$tag.json')); c=r['config']; print(r.get('median_us'), 'us', c)" 2>/dev/null)"
  done
done
kill -TERM $daemon; wait $daemon
