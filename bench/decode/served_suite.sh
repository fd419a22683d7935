#!/usr/bin/env bash
# Tunes the decode family through the daemon for every decode bench shape
# (the daemon's Tune on the GPU, evolutionary search over gRPC with the CLI),
# fetches the served handles (--tuned, and the family default) with their
# cubins, then checks and times them beside SDPA (served_bench.py).
#
#   bench/decode/served_suite.sh BUNDLE_DIR OUT_DIR [max_evals]
#   environment: TUNE_TIME_BUDGET_MS (per shape, default 30000)
set -uo pipefail
bundle=$(cd "$1" && pwd); out=$2; evals=${3:-16}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out/decode_handles"
work=$(mktemp -d)
"$bundle/bin/flashcored" --listen 127.0.0.1:0 --port-file "$work/port" --cache-dir "$work/cache" --tuning-db "$work/tuning.db" \
  --log-level warn >"$out/decode_daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.1; done
cli=("$bundle/bin/flashcore" --address "127.0.0.1:$(cat "$work/port")" --timeout-ms 600000)
# B H KVH SQ SK D dtype: decode_lab.py's BENCH.
suite="1,32,8,1,8192,128,bf16 8,32,8,1,4096,128,bf16 32,32,8,1,2048,128,bf16 1,32,8,1,32768,128,bf16
64,32,8,1,1024,128,bf16 16,32,32,1,1024,128,fp16 4,64,8,1,16384,128,bf16 1,32,8,4,8192,128,bf16
8,32,8,4,4096,128,bf16"
for shape in $suite; do
  IFS=, read -r b h kv sq sk d dt <<<"$shape"
  args=(--template attention_decode --arch sm_90a --dtype "$dt" --head-dim "$d" --batch "$b"
        --heads "$h" --kv-heads "$kv" --seq-q "$sq" --seq-k "$sk" --layout bhsd)
  tag=${shape//,/_}
  start=$SECONDS
  "${cli[@]}" --json tune "${args[@]}" --searcher evolutionary --max-evals "$evals" \
    --time-budget-ms "${TUNE_TIME_BUDGET_MS:-30000}" >"$out/decode_handles/$tag.tune.json" \
    2>"$out/decode_handles/$tag.tune.log"
  rc=$?
  "${cli[@]}" --json compile "${args[@]}" --tuned --include-cubin >"$out/decode_handles/$tag.tuned.json" \
    2>>"$out/decode_handles/$tag.tune.log" || echo "compile --tuned $tag failed"
  "${cli[@]}" --json compile "${args[@]}" --include-cubin >"$out/decode_handles/$tag.default.json" \
    2>>"$out/decode_handles/$tag.tune.log" || echo "compile default $tag failed"
  echo "tune $tag rc=$rc $((SECONDS - start)) s $(python3 -c "import json; r=json.load(open('$out/decode_handles/$tag.tune.json')); c=r['config']; print(r.get('median_us'), 'us', r.get('evaluations'), 'evals', {k: c[k] for k in ('block_m','block_n','warps','stages','fused_combine','splits') if k in c})" 2>/dev/null || tail -2 "$out/decode_handles/$tag.tune.log")"
done
kill -TERM $daemon; wait $daemon
python3 "$here/served_bench.py" "$out/decode_handles" --rounds "${ROUNDS:-15}" \
  --json "$out/h200-decode.json" --md "$out/decode_table.md"
